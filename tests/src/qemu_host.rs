//! The third way to run the guest: QEMU boots it directly (TCG here, KVM where the CPU has
//! hardware virtualization), and the rmnic device lives in its own process,
//! `rmnic-device-server`, attached through QEMU's `vfio-user-pci` client. No nested
//! virtualization is involved (docs/vfio-user.md).
//!
//! The QEMU is the one `cargo xtask images` builds (Debian bookworm's 7.2 has no vfio-user
//! client); the images directory links to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::images::{Images, BZIMAGE, DEVICE_SERVER, GUEST_INITRAMFS, QEMU, QEMU_DATA};
use crate::launch::{GuestRun, LaunchError};

/// The device server of one boot: its process and the directory of its socket, both gone
/// when this is dropped.
pub struct DeviceServer {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

/// How long the server may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

impl DeviceServer {
    /// Starts `rmnic-device-server` on a fresh socket and waits for the socket to appear. Its
    /// output pipes are left for the harness to read into the console ([`Self::child`]).
    pub fn start(images: &Images, args: &[String]) -> Result<Self, LaunchError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("rmnic-qemu-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| LaunchError::Spawn {
            program: format!("mkdir {}", dir.display()),
            source,
        })?;
        let socket = dir.join("rmnic.sock");
        let program = images.path(DEVICE_SERVER);
        let child = Command::new(&program)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let mut server = Self { child, dir, socket };
        let start = Instant::now();
        while !server.socket.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(LaunchError::DeviceServer(format!(
                    "rmnic-device-server exited with {status} before listening"
                )));
            }
            if start.elapsed() > SOCKET_WAIT {
                return Err(LaunchError::DeviceServer(format!(
                    "rmnic-device-server did not create {} within {} s",
                    server.socket.display(),
                    SOCKET_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// The socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server process (to take its output pipes).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits briefly for the server to exit after its client left (it serves one client),
    /// then stops it.
    pub fn finish(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DeviceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The guest kernel's command line in QEMU: rmnic-vmm's words (4-level paging, `no5lvl`)
/// without `acpi=off`, because QEMU's firmware describes the CPUs in ACPI tables (with
/// `acpi=off` the guest saw one CPU).
pub const QEMU_GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 quiet loglevel=4 no5lvl";

/// Whether QEMU should use KVM: only where `/dev/kvm` can boot Linux (the CPU has SVM or
/// VMX), the same test that picks direct mode.
fn kvm_usable() -> bool {
    crate::host::hardware_virtualization()
}

/// The QEMU command line: the guest kernel and initramfs, guest RAM in a shared memfd (the
/// device server maps it for DMA), the device over vfio-user, `isa-debug-exit` at the
/// guest's exit port.
pub fn qemu_command(images: &Images, guest: &GuestRun, socket: &Path) -> Command {
    let mut cmd = Command::new(images.path(QEMU));
    let accel = if kvm_usable() {
        "kvm"
    } else {
        "tcg,thread=multi"
    };
    let memory = format!("{}M", guest.memory_mib);
    // JSON string escaping for the path (a TMPDIR may hold `"` or `\`).
    let path = socket
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let device =
        format!(r#"{{"driver":"vfio-user-pci","socket":{{"path":"{path}","type":"unix"}}}}"#);
    cmd.arg("-L")
        .arg(images.path(QEMU_DATA))
        .args(["-accel", accel])
        .args(["-M", "q35,memory-backend=ram"])
        .args(["-cpu", "max"])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=ram,size={memory},share=on"),
        ])
        .args(["-m", &memory])
        .args(["-smp", &guest.cpus.to_string()])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args(["-no-reboot", "-nodefaults"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-device", &device]);
    for extra in &guest.qemu_devices {
        cmd.args(["-device", extra]);
    }
    cmd.arg("-kernel")
        .arg(images.path(BZIMAGE))
        .arg("-initrd")
        .arg(images.path(GUEST_INITRAMFS))
        .arg("-append")
        .arg(format!(
            "{QEMU_GUEST_CMDLINE} {} {}",
            guest.run_word(),
            guest.guest_append
        ));
    cmd
}
