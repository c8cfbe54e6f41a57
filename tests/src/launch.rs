//! Boots the test guest once and returns what it printed and the status it chose.
//!
//! Direct mode runs `rmnic-vmm` here. Emulated mode runs QEMU (TCG, `-cpu max`, so the
//! emulated CPU has SVM) on the same kernel with the host initramfs, whose init runs
//! `rmnic-vmm` on the nested `/dev/kvm` and forwards its status to QEMU's `isa-debug-exit`
//! (QEMU then exits with `status << 1 | 1`). Either way the caller sees the guest's status.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use crate::emulated::{BadSetting, EmulatedHost};
use crate::host::{BadHostMode, HostMode};
use crate::images::{
    Images, MissingImage, BZIMAGE, DEVICE_SERVER, GUEST_INITRAMFS, HOST_INITRAMFS,
    HOST_QEMU_INITRAMFS, QEMU, QEMU_DATA, VMM,
};
use crate::qemu_host::{qemu_command, DeviceServer};
use crate::verdict::{self, Verdict};

/// Guest kernel command line under rmnic-vmm (host-init uses the same words). `no5lvl`: the
/// guest uses 4-level paging even where the CPU offers LA57, which is what the coherence
/// oracle's page walker reads.
pub const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 quiet loglevel=4 acpi=off no5lvl";

/// Memory of the emulated host; the guest's RAM comes out of it.
const EMULATED_HOST_MEMORY: &str = "3G";
/// Printed by the guest's init when it starts (images/initramfs/guest-init).
const GUEST_INIT_MARKER: &str = "rmnic-guest: init reached";
/// Printed by the emulated host's init right before it starts the guest's VMM
/// (`rmnic-host: starting rmnic-vmm` or `rmnic-host: starting qemu-system-x86_64`).
const HOST_VMM_START_MARKER: &str = "rmnic-host: starting ";
/// Lines of console output an error message carries.
const TAIL_LINES: usize = 40;

/// Serialises boots within one test binary: two emulated hosts on two cores only slow each
/// other down past their timeouts.
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// Separates programs in [`GuestRun::command`].
pub const PROGRAM_SEPARATOR: &str = "+";

/// One guest boot.
#[derive(Clone, Debug)]
pub struct GuestRun {
    /// `rmnic-guest` subcommands and their arguments the guest's init runs, programs separated
    /// by [`PROGRAM_SEPARATOR`] ([`GuestRun::then`]).
    pub command: Vec<String>,
    /// Under rmnic-vmm (direct and emulated modes): run the device model in
    /// `rmnic-device-server` and attach it over vfio-user (`--device vfio-user:SOCKET`)
    /// instead of in rmnic-vmm's process (default: `RMNIC_DEVICE=vfio-user`). `qemu` mode
    /// always does.
    pub out_of_process_device: bool,
    /// Extra options for whatever hosts the device: rmnic-vmm (direct and emulated modes) or
    /// rmnic-device-server (qemu mode, and with `out_of_process_device`), e.g.
    /// `--fault drop-invalidate`.
    pub device_args: Vec<String>,
    /// More QEMU `-device` values for the guest (qemu mode, and emulated mode with
    /// [`Level1::Qemu`]; e.g. `edu`, the MMIO baseline of `cargo xtask bench`).
    pub qemu_devices: Vec<String>,
    /// Emulated mode only: which VMM the emulated host runs the guest under.
    pub level1: Level1,
    /// Guest vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Give up (and kill the VM) after this long.
    pub timeout: Duration,
    /// Echo the console to stdout while it runs (the demo does; tests capture).
    pub echo: bool,
    /// The emulated host's QEMU and kernel settings (emulated mode only); `None` takes them
    /// from the environment when the run starts ([`EmulatedHost::from_env`]).
    pub host: Option<EmulatedHost>,
    /// Extra words for the guest kernel's command line (`RMNIC_GUEST_APPEND`).
    pub guest_append: String,
    /// Serve the device's control API on this Unix socket of this machine while the guest
    /// runs. Direct and qemu modes: the device's host listens on it. Emulated mode: it is the
    /// emulated host's second serial port, relayed inside to rmnic-vmm's socket.
    pub api_socket: Option<PathBuf>,
    /// Write the device's event trace here (`.json`: Chrome/Perfetto JSON, else text). In
    /// emulated mode the emulated host prints it on the console after rmnic-vmm exits and the
    /// harness takes it out.
    pub trace: Option<PathBuf>,
    /// Receives every console line (without its line end) as it arrives, from the guest's
    /// console and the device server alike, for a caller that must react while the guest runs
    /// (`crate::pair` waits for the exporter's segment ids). A receiver that went away is
    /// ignored.
    pub console_tap: Option<Sender<String>>,
    /// Lets another thread end the run early ([`Stop::stop`]): the VM is killed as on a
    /// timeout and the run fails with [`LaunchError::Stopped`].
    pub stop: Option<Stop>,
}

/// The VMM the emulated host runs the guest under ([`GuestRun::level1`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Level1 {
    /// rmnic-vmm with the device: every test and the demo.
    #[default]
    RmnicVmm,
    /// `qemu-system-x86_64 -enable-kvm` with the same guest kernel, initramfs and RAM, and no
    /// rmnic device: the baseline VMM of `cargo xtask bench` (boot time, footprint, MMIO). The
    /// emulated host then boots [`HOST_QEMU_INITRAMFS`], which carries QEMU.
    Qemu,
}

/// Ends a running boot from another thread ([`GuestRun::stop`]).
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A handle nobody has used yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the boot to end: it kills the VM within [`STOP_POLL`].
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How often a boot's wait for its VM looks at [`GuestRun::stop`].
pub const STOP_POLL: Duration = Duration::from_millis(100);

impl GuestRun {
    /// A run of `rmnic-guest <command...>` with 2 vCPUs, 1 GiB (Linux leaves THP off below
    /// 512 MiB of RAM) and the default timeout
    /// (`RMNIC_BOOT_TIMEOUT` seconds, else 300).
    pub fn new(command: &[&str]) -> Self {
        let timeout = std::env::var("RMNIC_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300);
        Self {
            command: command.iter().map(|s| s.to_string()).collect(),
            out_of_process_device: std::env::var("RMNIC_DEVICE").as_deref() == Ok("vfio-user"),
            device_args: Vec::new(),
            qemu_devices: Vec::new(),
            level1: Level1::RmnicVmm,
            cpus: 2,
            memory_mib: 1024,
            timeout: Duration::from_secs(timeout),
            echo: false,
            host: None,
            guest_append: std::env::var("RMNIC_GUEST_APPEND").unwrap_or_default(),
            api_socket: None,
            trace: None,
            console_tap: None,
            stop: None,
        }
    }

    /// Options for the device's host that serve the control API and write the trace (direct
    /// and qemu modes, where that host runs on this machine).
    fn control_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(path) = &self.api_socket {
            args.push("--api-socket".to_string());
            args.push(path.display().to_string());
        }
        if let Some(path) = &self.trace {
            args.push("--trace".to_string());
            args.push(path.display().to_string());
        }
        args
    }

    /// Runs `command` after the programs already named, in the same boot (the guest's init
    /// runs them in order; the boot's status is the first non-zero one).
    pub fn then(mut self, command: &[&str]) -> Self {
        self.command.push(PROGRAM_SEPARATOR.to_string());
        self.command.extend(command.iter().map(|s| s.to_string()));
        self
    }

    /// The guest's command line word: arguments joined by `,`, programs by `+`
    /// (`images/initramfs/guest-init`).
    pub(crate) fn run_word(&self) -> String {
        format!("rmnic_run={}", self.command.join(",")).replace(",+,", "+")
    }
}

/// What a boot produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status the guest chose (the byte written to the exit port) or the VMM's own
    /// failure status.
    pub status: i32,
    /// Everything printed on the console (in emulated mode, the emulated host's lines too).
    pub console: String,
    /// How the guest ran.
    pub mode: HostMode,
    /// Wall time from launch to exit.
    pub elapsed: Duration,
    /// When each `rmnic-host:` / `rmnic-guest:` line arrived, counted from launch.
    pub timeline: Vec<(Duration, String)>,
}

impl Outcome {
    /// Console lines starting with `prefix`.
    pub fn lines_with<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.console.lines().filter(move |l| l.starts_with(prefix))
    }

    /// Time from `rmnic-vmm` starting to the guest's init running: from launch in direct
    /// mode, from the emulated host's "starting rmnic-vmm" line in emulated mode.
    pub fn vmm_start_to_guest_init(&self) -> Option<Duration> {
        let at = |marker: &str| {
            self.timeline
                .iter()
                .find(|(_, line)| line.contains(marker))
                .map(|(t, _)| *t)
        };
        let init = at(GUEST_INIT_MARKER)?;
        let start = match self.mode {
            HostMode::Direct | HostMode::Qemu => Duration::ZERO,
            HostMode::Emulated => at(HOST_VMM_START_MARKER)?,
        };
        init.checked_sub(start)
    }

    /// The last lines of the console, for failure messages.
    pub fn tail(&self) -> String {
        tail(&self.console)
    }
}

/// Why a boot could not produce an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The images are not built.
    #[error(transparent)]
    Images(#[from] MissingImage),
    /// `RMNIC_HOST` is invalid.
    #[error(transparent)]
    HostMode(#[from] BadHostMode),
    /// An emulated-host setting (`RMNIC_QEMU`, `RMNIC_TCG`, ...) is invalid.
    #[error(transparent)]
    HostSetting(#[from] BadSetting),
    /// The VMM or QEMU could not be started.
    #[error("Cannot start {program}")]
    Spawn {
        /// Program that failed to start.
        program: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the VM failed.
    #[error("Waiting for the VM failed")]
    Wait(#[source] std::io::Error),
    /// The VM did not finish in time.
    #[error("Guest did not finish within {seconds} s ({mode} mode); last console lines:\n{tail}")]
    Timeout {
        /// The limit.
        seconds: u64,
        /// Mode it ran in.
        mode: HostMode,
        /// Last console lines.
        tail: String,
        /// The whole console, kept in `failed-boots/` (the tail of a stalled emulated host is
        /// mostly its own watchdog's dump: where the guest got to is further up).
        console: String,
    },
    /// Another thread ended the run ([`GuestRun::stop`]).
    #[error("Guest stopped by the harness ({mode} mode); last console lines:\n{tail}")]
    Stopped {
        /// Mode it ran in.
        mode: HostMode,
        /// Last console lines.
        tail: String,
    },
    /// The trace could not be taken out of the emulated host.
    #[error("trace: {0}")]
    Trace(String),
    /// `rmnic-device-server` did not come up (`qemu` mode).
    #[error("{0}")]
    DeviceServer(String),
    /// The emulated host (or, in `qemu` mode, QEMU) ended without passing on a status (it
    /// crashed or rebooted).
    #[error("QEMU ended with status {code:?} and no guest status; last console lines:\n{tail}")]
    HostFailed {
        /// QEMU's exit code.
        code: Option<i32>,
        /// Last console lines.
        tail: String,
    },
}

/// Boots the guest once in the mode `RMNIC_HOST` or detection picks.
pub fn run(images: &Images, guest: &GuestRun) -> Result<Outcome, LaunchError> {
    let mode = HostMode::from_env()?;
    run_in(mode, images, guest)
}

/// rmnic-vmm's exit status for a guest triple fault (docs/vmm.md).
pub const STATUS_TRIPLE_FAULT: i32 = 0x82;
/// Status `rmnic-guest` ends the VM with when its watchdog finds the checks hung (it dumps
/// the kernel's task stacks to the console first).
pub const STATUS_GUEST_WATCHDOG: i32 = 124;

/// Boots the guest in `mode`. Every boot is classified ([`Verdict`]), recorded in
/// `$RMNIC_BOOT_LOG`, and its whole console kept when it failed. Only the two named platform
/// failures of emulated mode ([`retry_reason`]) are retried, once, printed and counted.
pub fn run_in(mode: HostMode, images: &Images, guest: &GuestRun) -> Result<Outcome, LaunchError> {
    let (verdict, first) = boot_recorded(mode, images, guest, false);
    match retry_reason(mode, verdict, &first) {
        Some(reason) => {
            eprintln!("rmnic: RETRY: {reason}; booting once more (docs/platform.md)");
            boot_recorded(mode, images, guest, true).1
        }
        None => first,
    }
}

/// One boot: classified, recorded in the boot log (marked as a retry when it is one) and, when
/// it failed worse than a guest program's own failure (whose lines are in the console tail a
/// test prints), its whole console kept.
fn boot_recorded(
    mode: HostMode,
    images: &Images,
    guest: &GuestRun,
    retry: bool,
) -> (Verdict, Result<Outcome, LaunchError>) {
    let started = Instant::now();
    let outcome = run_once(mode, images, guest);
    let verdict = record_boot(images, &guest.command, started, retry, &outcome);
    (verdict, outcome)
}

/// Classifies a boot that began at `started`, records it in the boot log (marked as a retry
/// when it is one) and, when it failed worse than a guest program's own failure (whose lines
/// are in the console tail a test prints), keeps its whole console.
pub(crate) fn record_boot(
    images: &Images,
    command: &[String],
    started: Instant,
    retry: bool,
    outcome: &Result<Outcome, LaunchError>,
) -> Verdict {
    let verdict = Verdict::of(outcome);
    verdict::record(verdict, started.elapsed().as_secs_f64(), command, retry);
    if !matches!(verdict, Verdict::Passed | Verdict::GuestFailed) {
        match outcome {
            Ok(outcome) => save_console(images, command, verdict, &outcome.console),
            Err(LaunchError::Timeout { console, .. }) => {
                save_console(images, command, verdict, console)
            }
            Err(LaunchError::HostFailed { tail, .. } | LaunchError::Stopped { tail, .. }) => {
                save_console(images, command, verdict, tail)
            }
            Err(_) => {}
        }
    }
    verdict
}

/// Why a boot should be made again, if it should, in emulated mode only (docs/platform.md):
/// - the emulated host's kernel crashed in KVM's `__svm_vcpu_run`: the signature of QEMU's
///   TCG SVM emulation mixing host and guest state. The guest, the driver and the device
///   cannot reach the emulated host's kernel, and rmnic-vmm only through KVM's checked ioctls
///   (it sets no vCPU state after boot), so this crash is the emulator's;
/// - the guest triple-faulted: the same mix-up seen from the guest's side (the first session's
///   dumps showed the host's RIP and CR3 in the guest's state). The same guest kernel, driver
///   and checks never triple-faulted in qemu mode (100 boots), but a triple fault can also be an
///   rmnic-vmm bug, which is why each one is printed, counted and its console kept.
///
/// Stalls, watchdog ends, timeouts and guest failures are reported as they are.
fn retry_reason(
    mode: HostMode,
    verdict: Verdict,
    outcome: &Result<Outcome, LaunchError>,
) -> Option<String> {
    if mode != HostMode::Emulated {
        return None;
    }
    let console = match (verdict, outcome) {
        (Verdict::TripleFault, Ok(_)) => {
            return Some("the guest triple-faulted in emulated mode".to_string())
        }
        (Verdict::HostCrashed, Ok(o)) => o.console.as_str(),
        (_, Err(LaunchError::HostFailed { tail, .. })) => tail.as_str(),
        _ => return None,
    };
    let crashed_in_vmrun = console
        .lines()
        .any(|l| l.contains("RIP:") && l.contains("__svm_vcpu_run"));
    crashed_in_vmrun.then(|| "the emulated host's kernel crashed in __svm_vcpu_run".to_string())
}

/// Keeps the whole console of a failed boot in `<cache>/failed-boots/` (a test's message
/// shows only the tail) and says where. Best effort.
fn save_console(images: &Images, command: &[String], verdict: Verdict, console: &str) {
    let Some(cache) = images.dir().parent() else {
        return;
    };
    let dir = cache.join("failed-boots");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let program = command.first().map_or("boot", String::as_str);
    let path = dir.join(format!("{stamp}-{program}-{verdict}.log"));
    if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&path, console).is_ok() {
        eprintln!("rmnic: boot {verdict}: whole console in {}", path.display());
    }
}

/// Boots once and returns what happened, without recording it (the soak keeps its own tally).
pub fn run_once(mode: HostMode, images: &Images, guest: &GuestRun) -> Result<Outcome, LaunchError> {
    let _serial = boot_lock();
    boot_unserialised(mode, images, guest)
}

/// Holds off the other boots of this test binary ([`BOOT_LOCK`]) while the guard lives.
pub(crate) fn boot_lock() -> MutexGuard<'static, ()> {
    BOOT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`run_once`] without taking [`BOOT_LOCK`]: for a caller that holds it for several boots
/// that must run at the same time (`crate::pair`).
pub(crate) fn boot_unserialised(
    mode: HostMode,
    images: &Images,
    guest: &GuestRun,
) -> Result<Outcome, LaunchError> {
    let start = Instant::now();
    let console = Arc::new(Mutex::new(Console::default()));
    let mut readers = Vec::new();
    // In `qemu` mode the device runs in its own process, started first; its messages join
    // the console.
    let mut device_server = None;
    let mut cmd = match mode {
        HostMode::Direct if guest.out_of_process_device => {
            images.require(&[DEVICE_SERVER])?;
            let args = [guest.device_args.clone(), guest.control_args()].concat();
            let mut server = DeviceServer::start(images, &args)?;
            readers.extend(capture(server.child(), &console, guest, start));
            let mut cmd = direct_command(images, guest);
            cmd.arg("--device")
                .arg(format!("vfio-user:{}", server.socket().display()));
            device_server = Some(server);
            cmd
        }
        HostMode::Direct => {
            let mut cmd = direct_command(images, guest);
            cmd.args(&guest.device_args).args(guest.control_args());
            cmd
        }
        HostMode::Emulated => {
            let host = match &guest.host {
                Some(host) => host.clone(),
                None => EmulatedHost::from_env()?,
            };
            if guest.level1 == Level1::Qemu {
                images.require(&[HOST_QEMU_INITRAMFS])?;
            }
            emulated_command(images, guest, &host)
        }
        HostMode::Qemu => {
            images.require(&[DEVICE_SERVER, QEMU, QEMU_DATA])?;
            let args = [guest.device_args.clone(), guest.control_args()].concat();
            let mut server = DeviceServer::start(images, &args)?;
            readers.extend(capture(server.child(), &console, guest, start));
            let cmd = qemu_command(images, guest, server.socket());
            device_server = Some(server);
            cmd
        }
    };
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LaunchError::Spawn { program, source })?;
    readers.extend(capture(&mut child, &console, guest, start));
    let waited =
        wait_for_vm(&mut child, guest.timeout, guest.stop.as_ref()).map_err(LaunchError::Wait)?;
    let status = match waited {
        Waited::Exited(status) => status,
        Waited::TimedOut | Waited::Stopped => {
            // Kill errors mean it exited meanwhile; either way it is gone after wait().
            let _ = child.kill();
            let _ = child.wait();
            drop(device_server);
            for reader in readers {
                let _ = reader.join();
            }
            let whole = std::mem::take(&mut lock(&console).text);
            let tail = tail(&whole);
            return Err(if matches!(waited, Waited::Stopped) {
                LaunchError::Stopped { mode, tail }
            } else {
                LaunchError::Timeout {
                    seconds: guest.timeout.as_secs(),
                    mode,
                    tail,
                    console: whole,
                }
            });
        }
    };
    if let Some(server) = &mut device_server {
        server.finish();
    }
    for reader in readers {
        let _ = reader.join();
    }
    let Console {
        text: mut console,
        timeline,
    } = std::mem::take(&mut *lock(&console));
    if mode == HostMode::Emulated {
        if let Some(path) = &guest.trace {
            console = take_trace(&console, path)?;
        }
    }
    let elapsed = start.elapsed();
    let status = match mode {
        HostMode::Direct => status.code().unwrap_or(-1),
        // isa-debug-exit: QEMU exits with (value << 1) | 1 for the guest's exit-port write, and
        // with any other code when the guest never got there. That carries statuses 0..=127,
        // which covers every status the guest's init and programs use (at most 124).
        HostMode::Qemu => match status.code() {
            Some(code) if code % 2 == 1 => code >> 1,
            code => {
                return Err(LaunchError::HostFailed {
                    code,
                    tail: tail(&console),
                })
            }
        },
        // The host's init prints rmnic-vmm's status before passing it to isa-debug-exit, whose
        // 8-bit QEMU exit code ((value << 1) | 1) cannot carry statuses above 127: the console
        // line is the source of truth, the exit code only says the host got that far.
        HostMode::Emulated => match (host_reported_status(&console), status.code()) {
            (Some(reported), Some(code)) if code % 2 == 1 => reported,
            (_, code) => {
                return Err(LaunchError::HostFailed {
                    code,
                    tail: tail(&console),
                })
            }
        },
    };
    Ok(Outcome {
        status,
        console,
        mode,
        elapsed,
        timeline,
    })
}

/// How a wait for the VM ended.
enum Waited {
    /// The VM's process exited.
    Exited(ExitStatus),
    /// The boot's timeout passed first.
    TimedOut,
    /// [`GuestRun::stop`] asked the boot to end.
    Stopped,
}

/// Waits for `child` at most `timeout`, looking at `stop` every [`STOP_POLL`].
fn wait_for_vm(
    child: &mut Child,
    timeout: Duration,
    stop: Option<&Stop>,
) -> std::io::Result<Waited> {
    let Some(stop) = stop else {
        return Ok(child
            .wait_timeout(timeout)?
            .map_or(Waited::TimedOut, Waited::Exited));
    };
    let deadline = Instant::now() + timeout;
    loop {
        if stop.requested() {
            return Ok(Waited::Stopped);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Waited::TimedOut);
        }
        if let Some(status) = child.wait_timeout(left.min(STOP_POLL))? {
            return Ok(Waited::Exited(status));
        }
    }
}

/// Printed by the emulated host's init after the guest's VMM exits
/// (images/initramfs/host-init): `rmnic-host: <VMM> exited with status N`.
const HOST_STATUS_MARKER: (&str, &str) = ("rmnic-host: ", " exited with status ");

/// The guest VMMs the emulated host's init can run ([`GuestRun::level1`]).
const HOST_VMM_NAMES: [&str; 2] = ["rmnic-vmm", "qemu-system-x86_64"];

/// The status the emulated host's init reported for the guest's VMM, if it got that far.
fn host_reported_status(console: &str) -> Option<i32> {
    console
        .lines()
        .rev()
        .find_map(|line| {
            let rest = line.trim().strip_prefix(HOST_STATUS_MARKER.0)?;
            let (vmm, status) = rest.split_once(HOST_STATUS_MARKER.1)?;
            HOST_VMM_NAMES.contains(&vmm).then_some(status)
        })
        .and_then(|rest| rest.trim().parse().ok())
}

fn direct_command(images: &Images, guest: &GuestRun) -> Command {
    let mut cmd = Command::new(images.path(VMM));
    cmd.arg("--kernel")
        .arg(images.path(BZIMAGE))
        .arg("--initrd")
        .arg(images.path(GUEST_INITRAMFS))
        .args(["--cpus", &guest.cpus.to_string()])
        .args(["--memory", &guest.memory_mib.to_string()])
        .arg("--cmdline")
        .arg(format!(
            "{GUEST_CMDLINE} {} {}",
            guest.run_word(),
            guest.guest_append
        ));
    cmd
}

fn emulated_command(images: &Images, guest: &GuestRun, host: &EmulatedHost) -> Command {
    let mut cmd = Command::new(&host.qemu);
    cmd.args(host.machine_args())
        .args(["-smp", "2", "-m", EMULATED_HOST_MEMORY])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args(["-no-reboot", "-nodefaults"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(images.path(BZIMAGE))
        .arg("-initrd")
        .arg(images.path(match guest.level1 {
            Level1::RmnicVmm => HOST_INITRAMFS,
            Level1::Qemu => HOST_QEMU_INITRAMFS,
        }))
        .arg("-append")
        .arg(format!(
            "{HOST_CMDLINE} {} rmnic_cpus={} rmnic_mem={} rmnic_dump={} rmnic_watchdog={} {}{}{}{}",
            guest.run_word(),
            guest.cpus,
            guest.memory_mib,
            host_dump_secs(guest.timeout),
            host_watchdog_secs(guest.timeout),
            guest_append_word(&guest.guest_append),
            if guest.out_of_process_device {
                "rmnic_device=vfio-user ".to_string()
            } else if guest.device_args.is_empty() {
                String::new()
            } else {
                format!(
                    "rmnic_vmm_args={} ",
                    host_init_words(&guest.device_args).join(",")
                )
            },
            match guest.level1 {
                Level1::RmnicVmm => String::new(),
                Level1::Qemu => format!(
                    "rmnic_level1=qemu rmnic_qemu_devices={} ",
                    host_init_words(&guest.qemu_devices).join(",")
                ),
            },
            host.kernel_append
        ));
    if let Some(path) = &guest.api_socket {
        // The emulated host's second serial port (COM2) is the socket; host-init relays it to
        // rmnic-vmm's control socket.
        cmd.arg("-chardev")
            .arg(format!(
                "socket,id=rmnicapi,path={},server=on,wait=off",
                path.display()
            ))
            .args(["-device", "isa-serial,chardev=rmnicapi,index=1"]);
        append_host_word(&mut cmd, "rmnic_api=1");
    }
    if let Some(path) = &guest.trace {
        let format = if path.extension().is_some_and(|e| e == "json") {
            "json"
        } else {
            "text"
        };
        append_host_word(&mut cmd, &format!("rmnic_trace={format}"));
    }
    cmd
}

/// rmnic-vmm options as words for host-init's `rmnic_vmm_args=a,b` (commas become spaces
/// there): a comma-separated `--fault` list becomes one `--fault` per mode, since rmnic-vmm
/// takes `--fault` repeatedly.
fn host_init_words(args: &[String]) -> Vec<String> {
    let mut words = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match (arg.as_str(), iter.clone().next()) {
            ("--fault", Some(modes)) if modes.contains(',') => {
                iter.next();
                for mode in modes.split(',') {
                    words.push("--fault".to_string());
                    words.push(mode.to_string());
                }
            }
            _ => words.push(arg.clone()),
        }
    }
    words
}

/// Adds a word to the emulated host's kernel command line (the last `-append` argument).
fn append_host_word(cmd: &mut Command, word: &str) {
    let args: Vec<std::ffi::OsString> = cmd.get_args().map(ToOwned::to_owned).collect();
    let Some(at) = args.iter().position(|a| a == "-append") else {
        return;
    };
    let mut line = args[at + 1].clone();
    line.push(" ");
    line.push(word);
    let program = cmd.get_program().to_owned();
    let mut fresh = Command::new(program);
    for (i, arg) in args.iter().enumerate() {
        fresh.arg(if i == at + 1 { &line } else { arg });
    }
    *cmd = fresh;
}

/// Prefix of the trace lines the emulated host prints after rmnic-vmm exits.
const TRACE_LINE_PREFIX: &str = "rmnic-trace: ";

/// Writes the trace the emulated host printed to `path` and returns the console without it.
fn take_trace(console: &str, path: &std::path::Path) -> Result<String, LaunchError> {
    let mut trace = String::new();
    let mut rest = String::with_capacity(console.len());
    for line in console.lines() {
        match line.strip_prefix(TRACE_LINE_PREFIX) {
            Some(event) => {
                trace.push_str(event.trim_end_matches('\r'));
                trace.push('\n');
            }
            None => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    if trace.is_empty() {
        return Err(LaunchError::Trace(format!(
            "the emulated host printed no trace; last console lines:\n{}",
            tail(console)
        )));
    }
    std::fs::write(path, trace)
        .map_err(|e| LaunchError::Trace(format!("{}: {e}", path.display())))?;
    Ok(rest)
}

/// The emulated host kernel's command line: a quiet boot (host-init raises the console level
/// to 5 once it runs, so warnings and oops bodies, printed at the default level 4, reach the
/// console while rmnic-vmm runs); `printk.time=1` timestamps the host's lines, which tells them
/// apart from the guest's (whose console rmnic-vmm forwards untimed). `kvm_amd.npt=0`: the
/// emulated host's KVM shadows the guest's page tables instead of using nested paging. With
/// nested paging, QEMU's TCG emulation of SVM mixed the host's and the guest's state at VMRUN
/// and #VMEXIT (stalls, triple faults, host oopses in 16 to 24 % of stress boots); with shadow
/// paging, 50 of 50 stress boots passed, at about 0.8 s more per boot (docs/platform.md).
const HOST_CMDLINE: &str = "console=ttyS0 panic=-1 quiet loglevel=3 printk.time=1 kvm_amd.npt=0";

/// When the emulated host's watchdog kills a stuck rmnic-vmm (status 126): late enough for the
/// guest's own watchdog (120 s after its program starts) to report first, early enough to beat
/// the harness's timeout.
fn host_watchdog_secs(timeout: Duration) -> u64 {
    timeout.as_secs().saturating_sub(30).max(60)
}

/// When the emulated host dumps rmnic-vmm's vCPU states and its own tasks: 110 s (just before
/// the guest's watchdog reports at 120 s into its program), earlier if the host's watchdog
/// comes sooner.
fn host_dump_secs(timeout: Duration) -> u64 {
    host_watchdog_secs(timeout).saturating_sub(20).min(110)
}

/// `rmnic_guest_append=` for host-init (spaces become commas there and back).
fn guest_append_word(append: &str) -> String {
    let words: Vec<&str> = append.split_whitespace().collect();
    if words.is_empty() {
        String::new()
    } else {
        format!("rmnic_guest_append={} ", words.join(","))
    }
}

/// Console text and the arrival times of the marker lines.
#[derive(Default)]
struct Console {
    text: String,
    timeline: Vec<(Duration, String)>,
}

/// Collects stdout and stderr into `console`, echoing lines as they come if `guest.echo`, and
/// handing them to `guest.console_tap`.
fn capture(
    child: &mut Child,
    console: &Arc<Mutex<Console>>,
    guest: &GuestRun,
    start: Instant,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut handles = Vec::new();
    let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as _),
        child.stderr.take().map(|s| Box::new(s) as _),
    ];
    for stream in streams.into_iter().flatten() {
        let console = Arc::clone(console);
        let (echo, tap) = (guest.echo, guest.console_tap.clone());
        handles.push(std::thread::spawn(move || {
            collect(stream, &console, echo, tap.as_ref(), start)
        }));
    }
    handles
}

fn collect(
    stream: impl std::io::Read,
    console: &Mutex<Console>,
    echo: bool,
    tap: Option<&Sender<String>>,
    start: Instant,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).replace('\r', "");
                if echo {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(line.as_bytes());
                    let _ = stdout.flush();
                }
                if let Some(tap) = tap {
                    // The receiver may be gone: nobody is watching any more.
                    let _ = tap.send(line.trim_end_matches('\n').to_string());
                }
                let mut console = lock(console);
                if line.contains("rmnic-host:") || line.contains("rmnic-guest:") {
                    console
                        .timeline
                        .push((start.elapsed(), line.trim_end().to_string()));
                }
                console.text.push_str(&line);
            }
        }
    }
}

fn lock(console: &Mutex<Console>) -> std::sync::MutexGuard<'_, Console> {
    console
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::host_reported_status;

    #[test]
    fn host_dump_comes_before_the_host_watchdog_and_the_harness_timeout() {
        use super::{host_dump_secs, host_watchdog_secs};
        use std::time::Duration;
        for secs in [60, 120, 300, 900] {
            let t = Duration::from_secs(secs);
            assert!(host_dump_secs(t) < host_watchdog_secs(t), "timeout {secs}");
            assert!(host_watchdog_secs(t) <= secs.max(60), "timeout {secs}");
        }
        assert_eq!(host_dump_secs(Duration::from_secs(300)), 110);
        assert_eq!(host_dump_secs(Duration::from_secs(120)), 70);
    }

    #[test]
    fn only_named_platform_failures_are_retried_and_only_in_emulated_mode() {
        use super::{retry_reason, HostMode, LaunchError, Verdict};
        let crash = |tail: &str| -> Result<super::Outcome, LaunchError> {
            Err(LaunchError::HostFailed {
                code: Some(0),
                tail: tail.to_string(),
            })
        };
        let vmrun = "[   22.09] RIP: 0010:__svm_vcpu_run+0xa0/0xa30 [kvm_amd]\n\
                     [   22.10] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(retry_reason(HostMode::Emulated, Verdict::HostCrashed, &crash(vmrun)).is_some());
        assert!(retry_reason(HostMode::Qemu, Verdict::HostCrashed, &crash(vmrun)).is_none());
        assert!(retry_reason(HostMode::Direct, Verdict::HostCrashed, &crash(vmrun)).is_none());
        let elsewhere = "[    3.00] RIP: 0010:some_function+0x10/0x20\n";
        assert!(
            retry_reason(HostMode::Emulated, Verdict::HostCrashed, &crash(elsewhere)).is_none()
        );
        let stall = Ok(super::Outcome {
            status: 126,
            console: "rcu: INFO: rcu_sched self-detected stall on CPU\n".to_string(),
            mode: HostMode::Emulated,
            elapsed: std::time::Duration::from_secs(120),
            timeline: Vec::new(),
        });
        // A stall the watchdog ended is reported, not retried.
        assert!(retry_reason(HostMode::Emulated, Verdict::of(&stall), &stall).is_none());
        let triple_fault = |mode| {
            Ok(super::Outcome {
                status: super::STATUS_TRIPLE_FAULT,
                console: "rmnic-vmm: guest reset (triple fault on vCPU 0)\n".to_string(),
                mode,
                elapsed: std::time::Duration::from_secs(10),
                timeline: Vec::new(),
            })
        };
        assert!(retry_reason(
            HostMode::Emulated,
            Verdict::TripleFault,
            &triple_fault(HostMode::Emulated)
        )
        .is_some());
        assert!(retry_reason(
            HostMode::Direct,
            Verdict::TripleFault,
            &triple_fault(HostMode::Direct)
        )
        .is_none());
    }

    #[test]
    fn the_console_tap_gets_every_line_of_both_streams_as_it_comes() {
        use std::process::{Command, Stdio};
        use std::sync::{mpsc, Arc, Mutex};
        let (sender, lines) = mpsc::channel();
        let mut guest = super::GuestRun::new(&["demo"]);
        guest.console_tap = Some(sender);
        let mut child = Command::new("sh")
            .args(["-c", "echo one; echo two >&2; printf 'three\\r\\n'"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let console = Arc::new(Mutex::new(super::Console::default()));
        let readers = super::capture(&mut child, &console, &guest, std::time::Instant::now());
        drop(guest);
        child.wait().expect("sh exits");
        for reader in readers {
            reader.join().expect("reader thread");
        }
        let mut got: Vec<String> = lines.iter().collect();
        got.sort();
        assert_eq!(got, ["one", "three", "two"]);
        assert_eq!(super::lock(&console).text.lines().count(), 3);
    }

    #[test]
    fn a_stopped_wait_ends_within_the_poll_interval() {
        use super::{wait_for_vm, Stop, Waited, STOP_POLL};
        use std::time::{Duration, Instant};
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let stop = Stop::new();
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                stop.stop();
            })
        };
        let start = Instant::now();
        let waited = wait_for_vm(&mut child, Duration::from_secs(30), Some(&stop));
        let took = start.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        stopper.join().expect("stopper thread");
        assert!(matches!(waited, Ok(Waited::Stopped)));
        assert!(took < Duration::from_millis(50) + 3 * STOP_POLL, "{took:?}");
        let mut quick = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        assert!(matches!(
            wait_for_vm(&mut quick, Duration::from_secs(30), Some(&Stop::new())),
            Ok(Waited::Exited(status)) if status.success()
        ));
    }

    #[test]
    fn programs_of_one_boot_are_joined_with_plus() {
        let run = super::GuestRun::new(&["probe", "--cpus", "2"]).then(&["coherence"]);
        assert_eq!(run.run_word(), "rmnic_run=probe,--cpus,2+coherence");
        assert_eq!(
            super::GuestRun::new(&["fail", "--status", "3"]).run_word(),
            "rmnic_run=fail,--status,3"
        );
    }

    #[test]
    fn host_status_line_carries_statuses_qemu_cannot() {
        let console = "rmnic-vmm: guest reset (triple fault on vCPU 0)\n\
                       rmnic-host: rmnic-vmm exited with status 130\n";
        assert_eq!(host_reported_status(console), Some(130));
        assert_eq!(
            host_reported_status("rmnic-host: starting rmnic-vmm\n"),
            None
        );
        assert_eq!(
            host_reported_status("rmnic-host: qemu-system-x86_64 exited with status 3\n"),
            Some(3)
        );
        assert_eq!(
            host_reported_status("rmnic-host: pair: exited with status 3\n"),
            None
        );
    }
}
