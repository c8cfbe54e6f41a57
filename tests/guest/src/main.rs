//! `rmnic-guest`: the programs the test guest runs, as subcommands of one static binary.
//!
//! Output lines starting with `CHECK` are read by the host-side integration tests; keep
//! their format (`CHECK <name> ok|FAILED <detail>`) stable.

mod bench;
mod coherence;
mod exit_port;
mod random;
mod remote;
mod remote_changes;
mod remote_fence;
mod scenarios;
mod segments;
mod stress;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use rmnic_abi::Context;

#[derive(Parser)]
#[command(about = "Guest-side programs of the rmnic test bed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks the guest and the driver: CPU count, driver bound, ID, scratch round trip.
    Probe {
        /// Number of CPUs the guest must see.
        #[arg(long)]
        cpus: usize,
    },
    /// Prints the device ID and the driver version, runs a device COPY, munmaps a buffer and
    /// shows the notifier-driven shootdown in the counters.
    Demo,
    /// Runs the coherence checks: every opcode, first-touch faults, munmap, mprotect,
    /// fork/COW, exit with commands in flight, many processes.
    Coherence {
        /// Run only these groups (ops, faults, munmap, mprotect, fork, poll, processes,
        /// teardown).
        #[arg(long)]
        only: Vec<String>,
        /// Leave these groups out.
        #[arg(long)]
        skip: Vec<String>,
    },
    /// Runs the segment checks: processes export ranges of their memory, others attach them
    /// through their own contexts and use them in device commands (permissions, bounds,
    /// slots, exporter munmap/mprotect/fork/exit, removal, leaks).
    Segments {
        /// Run only these scenarios (access, read-only, credentials, limits, munmap,
        /// mprotect, fork, remove, exporter-exit, exporter-close, importer-exit); the leak
        /// check runs always.
        #[arg(long)]
        only: Vec<String>,
    },
    /// The exporting side of segments across two guests (run by the host's two-guest harness,
    /// `rmnic_tests::pair`): exports a mailbox, an 8-page data segment and a read-only segment
    /// to the other guest on the fabric, prints `remote-export: segid --mailbox M --data D
    /// --readonly R` (the importer's arguments), then steps through the scenario with the
    /// importer: checks its writes, munmaps a page, removes the data segment.
    RemoteExport,
    /// The exporting side of the fencing check: exports a mailbox and 4 data pages, waits for
    /// the importer to read them, munmaps a page whose invalidation the importer never
    /// acknowledges (its host plants `--fabric-fault drop-acks`) and checks munmap returned
    /// within the bound.
    FenceExport {
        /// The harness kills the importer after it read: wait for that before the munmap.
        #[arg(long)]
        importer_killed: bool,
    },
    /// The importing side of the fencing check: reads the exporter's pages, then finds every
    /// access refused (SEGMENT_INVALID) once the exporter fenced it, stale translations
    /// included.
    FenceImport {
        /// Segment id of the exporter's mailbox.
        #[arg(long)]
        mailbox: u64,
        /// Segment id of the exporter's data.
        #[arg(long)]
        data: u64,
        /// After reading, ask the harness to kill this guest (a peer that dies).
        #[arg(long)]
        get_killed: bool,
        /// This guest's host plants a partition at the exporter's invalidation: expect
        /// REMOTE_UNREACHABLE rather than SEGMENT_INVALID once cut off.
        #[arg(long)]
        partitioned: bool,
    },
    /// The exporting side of the exporter's page-table changes across two guests (run by the
    /// host's two-guest harness): a forked process exports a mailbox and 3 data pages, prints
    /// `remote-export: segid --mailbox M --data D`, mprotects a page read-only and back, forks
    /// and breaks copy-on-write with its CPU, then exits with its segments exported; the
    /// program checks that the exit released them.
    ChangesExport,
    /// The importing side of the page-table changes: each change of the exporter is seen by
    /// the next access (PERMISSION while read-only, the upgrade, the parent's pages after the
    /// fork, the revocation at the exporter's exit), then detaches.
    ChangesImport {
        /// Segment id of the exporter's mailbox.
        #[arg(long)]
        mailbox: u64,
        /// Segment id of the exporter's data segment.
        #[arg(long)]
        data: u64,
    },
    /// The importing side, on the other guest: attaches the exporter's three segments by the
    /// ids it printed and runs device commands on them (reads, writes, atomics, a page the
    /// exporter unmapped, the removed segment, refusals, leaks).
    RemoteImport {
        /// Segment id of the exporter's mailbox.
        #[arg(long)]
        mailbox: u64,
        /// Segment id of the exporter's data segment.
        #[arg(long)]
        data: u64,
        /// Segment id of the exporter's read-only segment.
        #[arg(long)]
        readonly: u64,
    },
    /// The platform reproducer: parallel workers that make the guest exit to the VMM as often
    /// as they can (register or port I/O storms, mprotect toggling next to device operations,
    /// context open/close churn, fork/exit churn) for a fixed time.
    Stress {
        /// How long to run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The same load shape without touching the rmnic device (port I/O instead of device
        /// registers, CPU stores instead of device operations).
        #[arg(long)]
        no_device: bool,
    },
    /// For the control API test: opens a context, maps two 4-page buffers, munmaps a third
    /// (an invalidation), then copies between the two every 20 ms, so the device's TLB holds
    /// their translations, until a copy fails with a device error (the test injects one from
    /// outside with `fault set dma-error:1`) or `seconds` pass (exit status 1).
    AwaitFault {
        /// Give up after this long.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// For injected device errors (`dma-error`, `parity-error`): runs `copies` device copies
    /// of 16 pages; every copy either succeeds with the right data or fails with a device
    /// error, and the context keeps working after a failure. Exit status 0 when both outcomes
    /// were seen that way.
    DeviceErrors {
        /// Copies to run.
        #[arg(long, default_value_t = 200)]
        copies: u32,
    },
    /// For `stall-invalidate` and `reset:3`: copies on one context until the device stops
    /// answering (a munmap whose invalidation never completes, or a function reset at the
    /// third command), checks that the driver recovered (the munmap returned, the old context
    /// fails cleanly with EIO) and that a new context works with the right data.
    Recover {
        /// `stall` or `reset`.
        #[arg(long)]
        expect: String,
    },
    /// The guest-side benchmarks of `cargo xtask bench` (`bench.rs`): MMIO read, doorbell,
    /// submission, device COPY against memcpy, miss service, shootdowns, exit. One
    /// `BENCH metric unit=U rmnic=X baseline=Y` line per sample.
    Bench {
        /// Samples of each metric.
        #[arg(long, default_value_t = 5)]
        samples: u32,
        /// Largest munmap/mprotect region and the exit's region, in MiB.
        #[arg(long, default_value_t = 1024)]
        max_region_mib: usize,
        /// Device COPY and memcpy buffer size in MiB.
        #[arg(long, default_value_t = 64)]
        copy_mib: usize,
        /// Only these groups: mmio, doorbell, submission, copy, faultahead, peer, shootdown,
        /// exit.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// A device workload for benchmarks: device COPY of `mib` MiB between two buffers of 4 KiB
    /// pages, `rounds` times after a first-touch round. Prints one `BENCH copy-4k ...` line.
    CopyBench {
        /// Buffer size in MiB.
        #[arg(long, default_value_t = 16)]
        mib: usize,
        /// Warm rounds.
        #[arg(long, default_value_t = 8)]
        rounds: u32,
        /// Name printed in the `BENCH` line.
        #[arg(long, default_value = "copy-4k")]
        label: String,
    },
    /// Randomized stress: processes x 2 threads mixing mmap, munmap, mprotect, mremap,
    /// madvise, fork and exit with device operations checked against a CPU-side shadow.
    /// Prints its seed; `--seed` replays the same operation sequences.
    Random {
        /// Seed [default: from the clock].
        #[arg(long)]
        seed: Option<u64>,
        /// Processes.
        #[arg(long, default_value_t = 3)]
        procs: u64,
        /// Operations per thread.
        #[arg(long, default_value_t = 2000)]
        ops: u64,
        /// Time limit per process (a safety net; a replay is exact when the operation count
        /// ends the run).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Exits with `status` (tests that a guest failure reaches the host).
    Fail {
        /// Status to exit with.
        #[arg(long)]
        status: u8,
    },
    /// Ends the VM with `status` through the VMM's exit port (0xF4).
    Exit {
        /// Status the VMM should exit with.
        status: u8,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Probe { cpus } => probe(cpus),
        Command::Demo => demo().map(|()| ExitCode::SUCCESS),
        Command::Coherence { only, skip } => coherence(&only, &skip),
        Command::Segments { only } => segments(&only),
        Command::RemoteExport => remote("remote-export", remote::export),
        Command::FenceExport { importer_killed } => remote("fence-export", |c| {
            remote_fence::export(importer_killed, c).or_else(|e| {
                remote::stopped(c, "fence", "export", &e);
                Ok(())
            })
        }),
        Command::FenceImport {
            mailbox,
            data,
            get_killed,
            partitioned,
        } => remote("fence-import", |c| {
            remote_fence::import(mailbox, data, get_killed, partitioned, c).or_else(|e| {
                remote::stopped(c, "fence", "import", &e);
                Ok(())
            })
        }),
        Command::RemoteImport {
            mailbox,
            data,
            readonly,
        } => remote("remote-import", |c| {
            remote::import(
                remote::Ids {
                    mailbox,
                    data,
                    readonly,
                },
                c,
            )
        }),
        Command::ChangesExport => remote("changes-export", remote_changes::export),
        Command::ChangesImport { mailbox, data } => remote("changes-import", |c| {
            remote_changes::import(remote_changes::Ids { mailbox, data }, c)
        }),
        Command::Stress { seconds, no_device } => {
            start_watchdog();
            stress::run(seconds, !no_device).map(|ok| {
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
        Command::AwaitFault { seconds } => await_fault(seconds).map(|seen| {
            if seen {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Command::DeviceErrors { copies } => device_errors(copies),
        Command::Random {
            seed,
            procs,
            ops,
            seconds,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            random::run(seed, procs, ops, seconds).map(|passed| {
                println!(
                    "CHECK random-shadow {} seed {seed}",
                    if passed { "ok" } else { "FAILED" }
                );
                if passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
        Command::Recover { expect } => recover(&expect),
        Command::Bench {
            samples,
            max_region_mib,
            copy_mib,
            only,
        } => bench::run(&bench::Plan {
            samples,
            max_region_mib,
            copy_mib,
            only,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::CopyBench { mib, rounds, label } => {
            copy_bench(mib, rounds, &label).map(|()| ExitCode::SUCCESS)
        }
        Command::Fail { status } => {
            println!("rmnic-guest: failing on purpose with status {status}");
            Ok(ExitCode::from(status))
        }
        Command::Exit { status } => exit_port::exit(status).map(|()| ExitCode::FAILURE),
    };
    result.unwrap_or_else(|err| {
        eprintln!("rmnic-guest: error: {err:#}");
        ExitCode::FAILURE
    })
}

/// Records named checks and prints them as `CHECK` lines.
#[derive(Default)]
pub struct Checks {
    failed: usize,
    total: usize,
}

impl Checks {
    /// How many checks failed so far.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Records and prints one check.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        self.total += 1;
        if ok {
            println!("CHECK {name} ok {detail}");
        } else {
            self.failed += 1;
            println!("CHECK {name} FAILED {detail}");
        }
    }
}

/// Kernel options the coherence suite needs (`images/kernel/rmnic.config`).
const SUITE_KERNEL_OPTIONS: &[&str] = &[
    "CONFIG_MMU_NOTIFIER",
    "CONFIG_HMM_MIRROR",
    "CONFIG_TRANSPARENT_HUGEPAGE",
    "CONFIG_HUGETLBFS",
    "CONFIG_KSM",
    "CONFIG_COMPACTION",
    "CONFIG_MIGRATION",
    "CONFIG_SWAP",
    "CONFIG_ZRAM",
    "CONFIG_BLK_DEV_RAM",
    "CONFIG_EXT2_FS",
    "CONFIG_MEMCG",
    "CONFIG_MEMORY_FAILURE",
];

fn online_cpus() -> Result<usize> {
    // /sys/devices/system/cpu/online is a range list like "0-1" or "0,2-3".
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .context("Cannot read /sys/devices/system/cpu/online")?;
    let mut count = 0;
    for part in text.trim().split(',') {
        count += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>()? - a.parse::<usize>()? + 1,
            None => 1,
        };
    }
    Ok(count)
}

fn kernel_log() -> String {
    std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn probe(want_cpus: usize) -> Result<ExitCode> {
    let mut checks = Checks::default();
    let cpus = online_cpus()?;
    checks.check(
        "cpus",
        cpus == want_cpus,
        format!("online={cpus} want={want_cpus}"),
    );

    let log = kernel_log();
    let bound = log.contains("rmnic: bound, ") && log.contains("/dev/rmnic registered");
    checks.check("driver-bound", bound, "dmesg shows the probe finished");
    let self_test = log.contains("rmnic: scratch register round-trip ok");
    checks.check(
        "probe-scratch-self-test",
        self_test,
        "dmesg shows probe's scratch test",
    );

    let device = Context::open()?;
    let info = device.version()?;
    println!(
        "DEVICE id={:#010x} version={:#010x} caps={:#010x} pci={:04x}:{:04x} driver={:#08x} abi={}",
        info.device_id,
        info.device_version,
        info.device_caps,
        info.pci_vendor,
        info.pci_device,
        info.driver_version,
        info.abi_version
    );
    checks.check(
        "abi-version",
        info.abi_version == rmnic_abi::ABI_VERSION,
        format!(
            "driver={} user={}",
            info.abi_version,
            rmnic_abi::ABI_VERSION
        ),
    );
    for value in [0xDEAD_BEEF_u32, 0x0000_0001, 0xFFFF_FFFF, 0] {
        let readback = device.scratch_round_trip(value)?;
        checks.check(
            "scratch-round-trip",
            readback == value,
            format!("wrote={value:#010x} read={readback:#010x}"),
        );
    }
    // The kernel has what the coherence suite exercises (docs/coherence-suite.md).
    let config = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let missing: Vec<&str> = SUITE_KERNEL_OPTIONS
        .iter()
        .copied()
        .filter(|option| !config.lines().any(|l| l == format!("{option}=y")))
        .collect();
    checks.check(
        "kernel-config-for-the-suite",
        missing.is_empty(),
        if missing.is_empty() {
            format!("{} options present", SUITE_KERNEL_OPTIONS.len())
        } else {
            format!("missing: {}", missing.join(" "))
        },
    );
    // The guest CLI runs an operation end to end and prints the counters: a FILL of two fresh
    // pages misses once, the default fault-ahead window dropping the second page in with
    // the first.
    let cli = std::process::Command::new("/bin/rmnic")
        .args(["fill", "--len", "8192"])
        .output();
    let (ok, out) = match cli {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
        Err(e) => (false, e.to_string()),
    };
    checks.check(
        "rmnic-cli",
        ok && out.contains("data verified") && out.contains("faults 1 drop-ins"),
        out.trim().replace('\n', " | "),
    );
    println!(
        "probe summary: {} checks, {} failed",
        checks.total, checks.failed
    );
    Ok(if checks.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Seconds the coherence checks may take before the watchdog dumps the kernel's task stacks
/// to the console and ends the VM; a hang then leaves evidence instead of a silent timeout.
const WATCHDOG_SECS: u64 = 120;

fn start_watchdog() {
    start_watchdog_after(WATCHDOG_SECS);
}

/// [`start_watchdog`] with another delay.
fn start_watchdog_after(secs: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        println!("rmnic-guest: watchdog: no result after {secs} s; dumping task stacks");
        let _ = std::fs::write("/proc/sys/kernel/printk", "8");
        let _ = std::fs::write("/proc/sysrq-trigger", "w");
        let _ = std::fs::write("/proc/sysrq-trigger", "t");
        std::thread::sleep(std::time::Duration::from_secs(10));
        let _ = exit_port::exit(124);
    });
}

fn coherence(only: &[String], skip: &[String]) -> Result<ExitCode> {
    start_watchdog();
    let mut checks = Checks::default();
    let result = coherence::run(&mut checks, only, skip);
    println!(
        "coherence summary: {} checks, {} failed",
        checks.total, checks.failed
    );
    result?;
    Ok(if checks.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn segments(only: &[String]) -> Result<ExitCode> {
    start_watchdog();
    let mut checks = Checks::default();
    let result = segments::run(only, &mut checks);
    println!(
        "segments summary: {} checks, {} failed",
        checks.total, checks.failed
    );
    result?;
    Ok(if checks.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One side of the two-guest segment checks (`Command::RemoteExport`, `RemoteImport`, ...): every
/// wait in them is bounded, the watchdog covers a hung system call.
fn remote(name: &str, program: impl FnOnce(&mut Checks) -> Result<()>) -> Result<ExitCode> {
    start_watchdog_after(remote::WATCHDOG_SECS);
    let mut checks = Checks::default();
    let result = program(&mut checks);
    println!(
        "{name} summary: {} checks, {} failed",
        checks.total, checks.failed
    );
    result?;
    Ok(if checks.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// See `Command::CopyBench`.
fn copy_bench(mib: usize, rounds: u32, label: &str) -> Result<()> {
    let len = mib << 20;
    let device = Context::open()?;
    let mut src = rmnic_guest::Mapping::new(len, false)?;
    let mut dst = rmnic_guest::Mapping::new(len, false)?;
    // 4 KiB pages: one page-table walk per page for the oracle, the expensive case.
    src.advise(libc::MADV_NOHUGEPAGE)?;
    dst.advise(libc::MADV_NOHUGEPAGE)?;
    src.bytes_mut().fill(0x3c);
    dst.bytes_mut().fill(0);
    let start = std::time::Instant::now();
    device.copy(dst.addr(), src.addr(), len as u64)??;
    let first = start.elapsed();
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        device.copy(dst.addr(), src.addr(), len as u64)??;
    }
    let warm = start.elapsed();
    anyhow::ensure!(
        dst.bytes().iter().all(|&b| b == 0x3c),
        "copy-bench: wrong data"
    );
    let mib_s = (mib as f64 * f64::from(rounds)) / warm.as_secs_f64();
    println!(
        "BENCH {label} mib={mib} rounds={rounds} first_touch_ms={:.1} warm_mib_s={mib_s:.1}",
        first.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// See `Command::Recover`.
fn recover(expect: &str) -> Result<ExitCode> {
    let check = |name: &str, ok: bool, detail: String| {
        println!("CHECK {name} {} {detail}", if ok { "ok" } else { "FAILED" });
        ok
    };
    let len = 4 * 4096;
    let a = Context::open()?;
    let mut src = rmnic_guest::Mapping::new(len, false)?;
    let dst = rmnic_guest::Mapping::new(len, false)?;
    src.bytes_mut().fill(0x11);
    a.copy(dst.addr(), src.addr(), len as u64)??;
    a.copy(dst.addr(), src.addr(), len as u64)??;
    let gone = rmnic_guest::Mapping::new(len, false)?;
    let third = a.copy(dst.addr(), gone.addr(), len as u64);
    let mut passed = true;
    match expect {
        "stall" => {
            passed &= check(
                "recover-third-copy",
                matches!(third, Ok(Ok(()))),
                format!("{third:?}"),
            );
            // The device holds `gone`'s translations: munmap's invalidation is the one that
            // never completes. The driver must give up, reset the device and return.
            let start = std::time::Instant::now();
            drop(gone);
            passed &= check(
                "recover-munmap-returned",
                true,
                format!("after {:.1} s", start.elapsed().as_secs_f64()),
            );
        }
        "reset" => {
            let errno = third.as_ref().err().and_then(rmnic_abi::Error::errno);
            passed &= check(
                "recover-in-flight-command-failed",
                errno == Some(libc::EIO),
                format!("{third:?}"),
            );
        }
        other => anyhow::bail!("--expect {other}: use stall or reset"),
    }
    let after = a.copy(dst.addr(), src.addr(), len as u64);
    let errno = after.as_ref().err().and_then(rmnic_abi::Error::errno);
    passed &= check(
        "recover-old-context-fails-cleanly",
        errno == Some(libc::EIO),
        format!("{after:?}"),
    );
    let b = Context::open()?;
    src.bytes_mut().fill(0x77);
    let copied = b.copy(dst.addr(), src.addr(), len as u64);
    let data_ok = dst.bytes().iter().all(|&x| x == 0x77);
    passed &= check(
        "recover-new-context-works",
        matches!(copied, Ok(Ok(()))) && data_ok,
        format!(
            "{copied:?}, data {}",
            if data_ok { "matches" } else { "WRONG" }
        ),
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// See `Command::DeviceErrors`.
fn device_errors(copies: u32) -> Result<ExitCode> {
    let device = Context::open()?;
    let len = 16 * 4096;
    let mut src = rmnic_guest::Mapping::new(len, false)?;
    let mut dst = rmnic_guest::Mapping::new(len, false)?;
    let (mut ok, mut failed, mut ok_after_failure) = (0u32, 0u32, 0u32);
    for round in 0..copies {
        // CAST: a byte pattern.
        src.bytes_mut().fill(round as u8);
        dst.bytes_mut().fill(0xff);
        match device.copy(dst.addr(), src.addr(), len as u64)? {
            Ok(()) => {
                if dst.bytes().iter().any(|&b| b != round as u8) {
                    println!(
                        "CHECK device-errors FAILED copy {round} reported success with wrong data"
                    );
                    return Ok(ExitCode::FAILURE);
                }
                ok += 1;
                if failed > 0 {
                    ok_after_failure += 1;
                }
            }
            Err(e) if e.status == rmnic_abi::status::DEVICE_ERROR => failed += 1,
            Err(e) => {
                println!("CHECK device-errors FAILED copy {round}: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let passed = failed > 0 && ok_after_failure > 0;
    println!(
        "CHECK device-errors {} {ok} copies ok, {failed} failed with a device error, {ok_after_failure} ok after a failure",
        if passed { "ok" } else { "FAILED" }
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// See `Command::AwaitFault`. Ok(true) when the injected device error arrived.
fn await_fault(seconds: u64) -> Result<bool> {
    let device = Context::open()?;
    let len = 4 * 4096;
    let mut src = rmnic_guest::Mapping::new(len, false)?;
    let dst = rmnic_guest::Mapping::new(len, false)?;
    src.bytes_mut().fill(0x5a);
    // A buffer the device touches once, then munmapped: one invalidation in the trace.
    let gone = rmnic_guest::Mapping::new(len, false)?;
    device.copy(dst.addr(), gone.addr(), len as u64)??;
    drop(gone);
    device.copy(dst.addr(), src.addr(), len as u64)??;
    println!(
        "rmnic-guest: await-fault: ready, copying {:#x} -> {:#x} every 20 ms",
        src.addr(),
        dst.addr()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut copies = 0u64;
    while std::time::Instant::now() < deadline {
        match device.copy(dst.addr(), src.addr(), len as u64)? {
            Ok(()) => copies += 1,
            Err(e) if e.status == rmnic_abi::status::DEVICE_ERROR => {
                println!(
                    "rmnic-guest: await-fault: injected device error seen after {copies} copies"
                );
                return Ok(true);
            }
            Err(e) => anyhow::bail!("copy failed with something else than a device error: {e}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    println!("rmnic-guest: await-fault: no device error within {seconds} s ({copies} copies)");
    Ok(false)
}

fn demo() -> Result<()> {
    let device = Context::open()?;
    let info = device.version()?;
    println!(
        "rmnic demo: device ID {:#010x} (\"{}\"), spec version {}.{}, PCI {:04x}:{:04x}",
        info.device_id,
        String::from_utf8_lossy(&info.device_id.to_be_bytes()),
        info.device_version >> 16,
        info.device_version & 0xffff,
        info.pci_vendor,
        info.pci_device
    );
    println!(
        "rmnic demo: driver version {}.{}.{}, ABI {}",
        info.driver_version >> 16,
        (info.driver_version >> 8) & 0xff,
        info.driver_version & 0xff,
        info.abi_version
    );

    // A device COPY between two buffers of this process.
    let len = 64 * 1024;
    let mut src = rmnic_guest::Mapping::new(len, false)?;
    let mut dst = rmnic_guest::Mapping::new(len, false)?;
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let before = device.stats()?;
    let start = std::time::Instant::now();
    device.copy(dst.addr(), src.addr(), len as u64)??;
    let first = start.elapsed();
    let start = std::time::Instant::now();
    device.copy(dst.addr(), src.addr(), len as u64)??;
    let second = start.elapsed();
    let ok = dst.bytes()[..] == src.bytes()[..];
    let after_copy = device.stats()?;
    println!(
        "rmnic demo: COPY {len} bytes {:#x} -> {:#x}: data {}; first copy {} faults, {} drop-ins, {:.1} ms; second copy (TLB warm) {:.1} ms",
        src.addr(),
        dst.addr(),
        if ok { "matches" } else { "MISMATCH" },
        after_copy.faults - before.faults,
        after_copy.dropins_4k + after_copy.dropins_2m - before.dropins_4k - before.dropins_2m,
        first.as_secs_f64() * 1e3,
        second.as_secs_f64() * 1e3
    );
    let addr = dst.addr();
    let start = std::time::Instant::now();
    dst.unmap();
    let shootdown = start.elapsed();
    let after_unmap = device.stats()?;
    let status = match device.read64(addr)? {
        Ok(v) => format!("read {v:#x} (STALE!)"),
        Err(e) => format!("failed cleanly: {e}"),
    };
    println!(
        "rmnic demo: munmap of the destination took {:.3} ms and sent {} device invalidation(s) ({} notifier calls); a device read there now {status}",
        shootdown.as_secs_f64() * 1e3,
        after_unmap.invalidations_sent - after_copy.invalidations_sent,
        after_unmap.invalidations_received - after_copy.invalidations_received,
    );
    let s = device.stats()?;
    println!(
        "rmnic demo: counters: submitted {} completed {} faults {} drop-ins {}+{} (4K+2M) aborts {} invalidations received {} sent {} retries {}",
        s.submitted, s.completed, s.faults, s.dropins_4k, s.dropins_2m, s.aborts,
        s.invalidations_received, s.invalidations_sent, s.retries
    );
    if !ok {
        anyhow::bail!("device COPY produced wrong data");
    }
    Ok(())
}
