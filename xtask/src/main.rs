//! `cargo xtask`: the project's build orchestration.
//!
//! - `images`: install what is missing, build kernel, driver, guest programs and rmnic-vmm,
//!   pack the initramfs images (heavy steps cached in `~/.cache/rmnic`).
//! - `demo`: `images`, then boot the guest and show the device through the driver; with
//!   `--remote`, two guests sharing a segment over the fabric.
//! - `test`: `images`, then `cargo test --workspace` (unit and integration tests).
//! - `run`: `images`, then boot the guest running any `rmnic-guest` subcommand.
//! - `bench`: the device-model benchmarks (criterion), each against its baseline.
//! - `qemu`: builds QEMU 10.2.2 from Debian's source package, for comparisons.
//! - `soak`: `images`, then many boots of one workload, each classified, none retried: the
//!   platform's failure rate for one configuration.

mod bench;
mod cache;
mod coherence;
mod deps;
mod driver;
mod guest_bench;
mod images;
mod initramfs;
mod kernel;
mod model_bench;
mod programs;
mod progress;
mod qemu;
mod soak;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rmnic_tests::{GuestRun, HostMode, Images};

#[derive(Parser)]
#[command(about = "rmnic build orchestration")]
struct Cli {
    /// How guests run: `direct` (rmnic-vmm on this machine's KVM), `emulated` (rmnic-vmm
    /// inside a QEMU TCG host with SVM), `qemu` (QEMU runs the guest, the device served over
    /// vfio-user by rmnic-device-server) or `auto` (default: `RMNIC_HOST`, else direct where
    /// the CPU has SVM/VMX, qemu elsewhere). `test` and `bench` boot under rmnic-vmm too
    /// (direct where the CPU allows, else emulated) as well as in `qemu` mode.
    #[arg(long, global = true)]
    host: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel, driver, guest programs, rmnic-vmm and initramfs images.
    Images,
    /// Build, boot the guest, load the driver and print the device ID from inside.
    Demo {
        /// Instead: two guests (qemu mode) whose devices are joined by a fabric link; one
        /// exports memory, the other attaches it and runs device commands on it while the
        /// exporter munmaps a page (`rmnic-guest remote-export`, `remote-import`); then the
        /// remote shootdowns and their mean round trip.
        #[arg(long)]
        remote: bool,
    },
    /// Build, then run every unit and integration test.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build, then measure every figure side by side with its baseline in the same run: the
    /// device model on this machine, a guest in qemu mode and under rmnic-vmm, the oracle's
    /// cost. Prints the table and writes BENCHMARKS.md (and JSON with --json).
    Bench {
        /// Also write the rows as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Samples of each guest metric.
        #[arg(long, default_value_t = 5)]
        samples: u32,
        /// A short run: 2 samples, regions up to 64 MiB, 16 MiB copies, criterion's --quick,
        /// one oracle round, qemu mode only. BENCHMARKS.md is left alone.
        #[arg(long)]
        quick: bool,
    },
    /// Build, then boot the guest N times with one workload, classify every boot (no retries)
    /// and print the tally: the platform's failure rate in one configuration.
    Soak {
        /// Boots to make.
        #[arg(long, default_value_t = 30)]
        boots: u32,
        /// What each boot runs.
        #[arg(long, value_enum, default_value = "stress")]
        workload: soak::Workload,
        /// Seconds of load per boot (stress workloads).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// QEMU binary for the emulated host (default: `RMNIC_QEMU`, else the system's).
        #[arg(long)]
        qemu: Option<std::path::PathBuf>,
        /// Firmware directory for that QEMU (`-L`).
        #[arg(long)]
        qemu_data: Option<std::path::PathBuf>,
        /// TCG threading of the emulated host: `multi` or `single`.
        #[arg(long)]
        tcg: Option<String>,
        /// `-cpu` model of the emulated host.
        #[arg(long)]
        host_cpu: Option<String>,
        /// Extra words for the emulated host kernel's command line (e.g. `kvm_amd.vls=0`).
        #[arg(long, allow_hyphen_values = true)]
        host_append: Option<String>,
        /// Extra words for the guest kernel's command line (e.g. `clocksource=tsc`).
        #[arg(long, allow_hyphen_values = true)]
        guest_append: Option<String>,
        /// One more option for whatever hosts the device, as for `run` (e.g.
        /// `--device-arg=--doorbells --device-arg=exit`; repeatable).
        #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
        device_arg: Vec<String>,
    },
    /// Build QEMU 10.2.2 from Debian's source package (cached) and print how to use it as the
    /// emulated host (`RMNIC_QEMU`, `RMNIC_QEMU_DATA`, or `soak --qemu`).
    Qemu,
    /// Build, then run the coherence suite (and the seeded random stress) in one boot with the
    /// oracle on; print one row per scenario group; fail on any failed check or violation.
    Coherence {
        /// Device-TLB fault to inject (repeatable; docs/fault-injection.md).
        #[arg(long, value_name = "MODE")]
        fault: Vec<String>,
        /// Seed of fault injection and of the random stress [default: from the clock].
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// Run only these groups (no random stress then).
        #[arg(long, value_name = "GROUP")]
        only: Vec<String>,
        /// The whole matrix: clean under no faults and every coherent mode, caught under every
        /// planted device bug.
        #[arg(long)]
        all_faults: bool,
    },
    /// Build, then boot the guest running `rmnic-guest <ARGS>`.
    Run {
        /// Guest vCPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Device-TLB fault to inject (repeatable; docs/fault-injection.md).
        #[arg(long, value_name = "MODE")]
        fault: Vec<String>,
        /// Seed of the fault injection's random choices (printed by every run).
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// Leave the device's event trace here (`.json`: open it in ui.perfetto.dev; else text).
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// Serve the control API on this socket while the guest runs (`rmnic-vmm ctl --socket
        /// FILE stats`).
        #[arg(long, value_name = "FILE")]
        api_socket: Option<PathBuf>,
        /// One more option for whatever hosts the device (rmnic-vmm, or rmnic-device-server in
        /// qemu mode), e.g. `--device-arg=--doorbells --device-arg=exit` (repeatable).
        #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
        device_arg: Vec<String>,
        /// Emulated mode: run the guest under `qemu` (QEMU -enable-kvm in the emulated host,
        /// with QEMU's edu device and no rmnic device: the level-1 baseline of `cargo xtask
        /// bench`) instead of `rmnic-vmm`.
        #[arg(long, value_name = "VMM", default_value = "rmnic-vmm", value_parser = ["rmnic-vmm", "qemu"])]
        level1: String,
        /// `rmnic-guest` subcommand and arguments.
        #[arg(required = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask lives one level below the repository root")
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let repo = repo_root()?;
    if let Some(host) = &cli.host {
        // Checked here so a typo fails before any build; the harness (and `cargo test`, a
        // child process) reads the variable.
        host.parse::<HostMode>()?;
        std::env::set_var("RMNIC_HOST", host);
    }
    match cli.command {
        Cmd::Images => {
            deps::ensure()?;
            images::build(&repo)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Qemu => {
            let built = qemu::build()?;
            println!(
                "RMNIC_QEMU={} RMNIC_QEMU_DATA={}",
                built.binary.display(),
                built.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { remote } => {
            if remote && !matches!(cli.host.as_deref(), None | Some("qemu" | "auto")) {
                bail!("demo --remote runs in qemu mode only (the fabric joins two rmnic-device-servers)");
            }
            deps::ensure()?;
            images::build(&repo)?;
            if remote {
                remote_demo()
            } else {
                boot(&["demo".to_string()], 2, Control::default())
            }
        }
        Cmd::Coherence {
            fault,
            seed,
            only,
            all_faults,
        } => {
            deps::ensure()?;
            images::build(&repo)?;
            coherence::run(&fault, seed, &only, all_faults)
        }
        Cmd::Run {
            cpus,
            fault,
            seed,
            trace,
            api_socket,
            device_arg,
            level1,
            args,
        } => {
            deps::ensure()?;
            let out = images::build(&repo)?;
            let level1 = if level1 == "qemu" {
                images::qemu_host_initramfs(&out)?;
                rmnic_tests::Level1::Qemu
            } else {
                rmnic_tests::Level1::RmnicVmm
            };
            let control = Control {
                fault,
                device_args: device_arg,
                seed,
                trace: trace.map(absolute).transpose()?,
                api_socket: api_socket.map(absolute).transpose()?,
                level1,
            };
            boot(&args, cpus, control)
        }
        Cmd::Bench {
            json,
            samples,
            quick,
        } => {
            let json = json.map(absolute).transpose()?;
            bench_command(&repo, cli.host.as_deref(), json, samples, quick)
        }
        Cmd::Soak {
            boots,
            workload,
            seconds,
            qemu,
            qemu_data,
            tcg,
            host_cpu,
            host_append,
            guest_append,
            device_arg,
        } => {
            deps::ensure()?;
            images::build(&repo)?;
            // Flags win over the RMNIC_* variables, which win over the defaults.
            let mut host = rmnic_tests::EmulatedHost::from_env()?;
            if let Some(qemu) = qemu {
                host.qemu = qemu;
            }
            if qemu_data.is_some() {
                host.data_dir = qemu_data;
            }
            if let Some(tcg) = tcg {
                host.tcg = tcg.parse()?;
            }
            if let Some(cpu) = host_cpu {
                host.cpu = cpu;
            }
            if let Some(append) = host_append {
                host.kernel_append = append;
            }
            soak::Soak {
                boots,
                workload,
                seconds,
                host,
                guest_append,
                device_args: device_arg,
            }
            .run()
        }
        Cmd::Test { args } => {
            deps::ensure()?;
            lint(&repo)?;
            let dir = images::build(&repo)?;
            let start = progress::step("cargo test --workspace");
            // Every boot the tests make is classified and logged here; the summary below says
            // how many there were and which failed on the platform's side (none is retried).
            let boot_log =
                std::env::temp_dir().join(format!("rmnic-boots-{}.log", std::process::id()));
            let _ = std::fs::remove_file(&boot_log);
            let mut cargo_test =
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cargo_test
                .current_dir(&repo)
                .env("RMNIC_IMAGES", &dir)
                .env("RMNIC_BOOT_LOG", &boot_log)
                .args(["test", "--workspace"])
                .args(&args);
            let status = cargo_test.status().context("Cannot run cargo test")?;
            progress::done("tests", start);
            let log = std::fs::read_to_string(&boot_log).unwrap_or_default();
            let _ = std::fs::remove_file(&boot_log);
            eprintln!("==> guest boots: {}", rmnic_tests::BootTally::parse(&log));
            if !status.success() {
                bail!("cargo test failed ({status})");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cargo fmt --check` and `cargo clippy -D warnings` over the workspace: host code must be
/// formatted and lint-clean before anything boots.
fn lint(repo: &std::path::Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let start = progress::step("cargo fmt --check, cargo clippy -D warnings");
    progress::run(
        Command::new(&cargo)
            .current_dir(repo)
            .args(["fmt", "--all", "--check"]),
    )?;
    progress::run(Command::new(&cargo).current_dir(repo).args([
        "clippy",
        "--quiet",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    progress::done("lint", start);
    Ok(())
}

/// Fault injection, trace and control API of a `run`.
#[derive(Debug, Default)]
struct Control {
    fault: Vec<String>,
    device_args: Vec<String>,
    seed: Option<u64>,
    trace: Option<PathBuf>,
    api_socket: Option<PathBuf>,
    level1: rmnic_tests::Level1,
}

/// `path` made absolute against the current directory (the harness runs elsewhere).
fn absolute(path: PathBuf) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// `demo --remote`: the two-guest pair of the remote segments test, consoles echoed (each
/// line prefixed with its guest), then a summary from the exporter's fabric line. Exits 0 if
/// both guests did.
fn remote_demo() -> Result<ExitCode> {
    let images = Images::locate()?;
    let mut exporter = GuestRun::new(&["remote-export"]);
    let mut importer = GuestRun::new(&["remote-import"]);
    exporter.echo = true;
    importer.echo = true;
    let start = progress::step(
        "Booting two guests (qemu mode) joined by a fabric link: rmnic-guest remote-export, then remote-import with its segment ids",
    );
    let pair = rmnic_tests::pair::run_pair(&images, exporter, importer)?;
    progress::done(
        &format!(
            "guest runs (exporter status {}, importer status {})",
            pair.exporter.status, pair.importer.status
        ),
        start,
    );
    for (role, outcome) in [("exporter", &pair.exporter), ("importer", &pair.importer)] {
        let checks: Vec<&str> = outcome.lines_with("CHECK ").collect();
        let failed = checks.iter().filter(|l| l.contains(" FAILED ")).count();
        eprintln!("    {role}: {} checks, {failed} failed", checks.len());
    }
    match rmnic_tests::pair::FabricSummary::from_console(&pair.exporter.console) {
        Some(s) => eprintln!(
            "    exporter's device: {} remote shootdown(s), mean round trip {:.1} us (munmap waits for it); {} fence(s); {} remote accesses served",
            s.shootdowns, s.mean_us, s.fences, s.accesses_served
        ),
        None => eprintln!("    the exporter's device server printed no fabric line"),
    }
    let status = if pair.exporter.status != 0 {
        pair.exporter.status
    } else {
        pair.importer.status
    };
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX)))
}

/// Boots the guest running `rmnic-guest <args>`, echoing its console; exits with the guest's
/// status.
fn boot(args: &[String], cpus: u32, control: Control) -> Result<ExitCode> {
    let images = Images::locate()?;
    let mode = HostMode::from_env()?;
    if control.level1 == rmnic_tests::Level1::Qemu && mode != HostMode::Emulated {
        anyhow::bail!(
            "--level1 qemu runs QEMU inside the emulated host; it needs --host emulated (this is {mode} mode)"
        );
    }
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut guest = GuestRun::new(&words);
    guest.cpus = cpus;
    guest.echo = true;
    guest.level1 = control.level1;
    if control.level1 == rmnic_tests::Level1::Qemu {
        guest.qemu_devices = vec!["edu".into()];
    }
    guest
        .device_args
        .extend(control.device_args.iter().cloned());
    for fault in &control.fault {
        guest
            .device_args
            .extend(["--fault".to_string(), fault.clone()]);
    }
    if let Some(seed) = control.seed {
        guest
            .device_args
            .extend(["--seed".to_string(), seed.to_string()]);
    }
    guest.trace = control.trace.clone();
    guest.api_socket = control.api_socket.clone();
    if let Some(path) = &guest.api_socket {
        eprintln!(
            "    control API: rmnic-vmm ctl --socket {} stats (while the guest runs)",
            path.display()
        );
    }
    let start = progress::step(&format!(
        "Booting the guest ({mode} mode, {cpus} vCPUs): rmnic-guest {}",
        args.join(" ")
    ));
    let outcome = rmnic_tests::launch::run_in(mode, &images, &guest)?;
    progress::done(&format!("guest run (status {})", outcome.status), start);
    if let Some(boot) = outcome.vmm_start_to_guest_init() {
        eprintln!(
            "    VMM start to guest init: {}",
            progress::fmt_duration(boot)
        );
    }
    if let Some(path) = &guest.trace {
        eprintln!(
            "    trace: {} ({})",
            path.display(),
            if path.extension().is_some_and(|e| e == "json") {
                "open it in https://ui.perfetto.dev or chrome://tracing"
            } else {
                "text, one event per line"
            }
        );
    }
    Ok(ExitCode::from(
        u8::try_from(outcome.status).unwrap_or(u8::MAX),
    ))
}

/// `cargo xtask bench` (module `bench`).
fn bench_command(
    repo: &std::path::Path,
    host: Option<&str>,
    json: Option<PathBuf>,
    samples: u32,
    quick: bool,
) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut rows = model_bench::rows(repo, quick)?;
    deps::ensure()?;
    images::build(repo)?;
    let images = Images::locate()?;
    let plan = if quick {
        guest_bench::Plan {
            samples: 2,
            max_region_mib: 64,
            copy_mib: 16,
        }
    } else {
        guest_bench::Plan {
            samples,
            max_region_mib: 1024,
            copy_mib: 64,
        }
    };
    let modes: Vec<HostMode> = match host {
        Some(_) => vec![HostMode::from_env()?],
        None if quick => vec![HostMode::Qemu],
        None => {
            let vmm = HostMode::vmm_from_env()?;
            if vmm == HostMode::Qemu {
                vec![HostMode::Qemu]
            } else {
                vec![HostMode::Qemu, vmm]
            }
        }
    };
    let mut failures: Vec<(String, String)> = Vec::new();
    // Figures this machine's modes cannot give (listed in BENCHMARKS.md, not a failure).
    let mut gaps: Vec<(String, String)> = Vec::new();
    for &mode in &modes {
        // Under emulation (rmnic-vmm inside a TCG machine) every miss and MMIO exit costs
        // 5-10 times qemu mode's: smaller figures keep the boot within its timeout.
        let plan = match mode {
            HostMode::Emulated if !quick => guest_bench::Plan {
                samples: samples.min(3),
                max_region_mib: 256,
                copy_mib: 16,
            },
            _ => plan,
        };
        let mut samples = match guest_bench::sample(&images, mode, plan, &[], &[]) {
            Ok(samples) => samples,
            Err(e) => {
                eprintln!("    guest benchmarks in {mode} mode FAILED: {e:#}");
                failures.push((format!("guest figures in {mode} mode"), format!("{e:#}")));
                continue;
            }
        };
        match mode {
            HostMode::Emulated => {
                if let Err(e) = guest_bench::level1_baselines(&images, &mut samples) {
                    eprintln!("    level-1 baselines FAILED: {e:#}");
                    failures.push((
                        "boot, MMIO and footprint baselines (QEMU in the emulated host)".into(),
                        format!("{e:#}"),
                    ));
                }
            }
            HostMode::Direct => gaps.push((
                "boot, MMIO and footprint baselines in direct mode".into(),
                "not built: only the emulated host runs QEMU as the level-1 baseline".into(),
            )),
            HostMode::Qemu => {}
        }
        rows.extend(samples.rows(mode));
        if matches!(mode, HostMode::Emulated | HostMode::Direct) {
            match guest_bench::doorbell_path_rows(&images, mode, plan, &samples) {
                Ok(more) => rows.extend(more),
                Err(e) => {
                    eprintln!("    doorbell path comparison FAILED: {e:#}");
                    failures.push((
                        "doorbells through ioeventfd against MMIO exits".into(),
                        format!("{e:#}"),
                    ));
                }
            }
        }
    }
    match guest_bench::oracle_cost(&images, if quick { 1 } else { 3 }) {
        Ok(more) => rows.extend(more),
        Err(e) => {
            eprintln!("    oracle cost FAILED: {e:#}");
            failures.push(("oracle cost".into(), format!("{e:#}")));
        }
    }
    println!("{}", bench::table(&rows));
    if let Some(path) = &json {
        bench::write_json(path, &rows)?;
        eprintln!("    rows written to {}", path.display());
    }
    if quick {
        eprintln!("    --quick: BENCHMARKS.md left as it was");
    } else {
        let date = progress::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M"]))
            .unwrap_or_default();
        let mut not_measured: Vec<(&str, &str)> = Vec::new();
        for (what, why) in gaps.iter().chain(&failures) {
            not_measured.push((what, why));
        }
        let modes: Vec<String> = modes.iter().map(ToString::to_string).collect();
        let text = bench::markdown(&bench::Report {
            rows: &rows,
            modes: &modes,
            machine: bench::machine(),
            date: date.trim().to_string(),
            command: format!("cargo xtask bench --samples {samples}"),
            not_measured: &not_measured,
        });
        let path = bench::markdown_path(repo);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        eprintln!("    table written to {}", path.display());
    }
    progress::done("cargo xtask bench", started);
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
