//! What one boot came to, in the terms the platform work counts: did the guest finish and
//! pass, fail its own checks, or did the platform fail under it (a triple fault, a stall, a
//! crash of the emulated host, a timeout)? Every boot the harness makes is classified here and,
//! when `RMNIC_BOOT_LOG` names a file, recorded there, so `cargo xtask test` can say how many
//! boots it made and which of them failed on the platform's side.

use std::fmt;
use std::io::Write;

use crate::launch::{LaunchError, Outcome, STATUS_GUEST_WATCHDOG, STATUS_TRIPLE_FAULT};

/// rmnic-vmm status the emulated host's init reports when its own watchdog killed a stuck
/// rmnic-vmm (images/initramfs/host-init).
pub const STATUS_HOST_WATCHDOG: i32 = 126;
/// Guest status when the guest's init found kernel warnings in dmesg (guest-init).
pub const STATUS_KERNEL_WARNING: i32 = 121;

/// Console text that means a CPU stopped making progress even if the run later finished.
const STALL_MARKERS: &[&str] = &[
    "self-detected stall on CPU",
    "rcu_sched detected stalls",
    "rcu: INFO: rcu_sched",
    "timer wakeup didn't happen",
    "watchdog: BUG: soft lockup",
    "blocked for more than",
];
/// Console text of a kernel crash.
const CRASH_MARKERS: &[&str] = &["BUG: ", "Oops", "general protection fault", "Kernel panic"];

/// The class of one boot's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Status 0, no stall or crash report on the console.
    Passed,
    /// The guest program reported failure (a product result, not a platform one).
    GuestFailed,
    /// The guest's kernel reported a warning or crashed (its init found the report in dmesg,
    /// or the console shows the guest's oops even though the run then hung).
    KernelWarning,
    /// A CPU stalled (RCU stall, soft lockup, hung task) although the run finished.
    Stall,
    /// The guest's watchdog found the checks hung and ended the VM.
    GuestWatchdog,
    /// The emulated host's watchdog killed a stuck rmnic-vmm.
    HostWatchdog,
    /// rmnic-vmm saw the guest triple-fault.
    TripleFault,
    /// The emulated host's kernel crashed (oops or panic on its console, or QEMU ended
    /// without a guest status).
    HostCrashed,
    /// The harness's boot timeout expired.
    Timeout,
    /// The VM could not be started at all.
    LaunchFailed,
}

impl Verdict {
    /// A failure of the test platform rather than of the guest's own checks.
    pub fn is_platform_failure(self) -> bool {
        !matches!(self, Self::Passed | Self::GuestFailed | Self::KernelWarning)
    }

    /// Classifies a boot result. `host_lines` tells the emulated host's kernel lines from the
    /// guest's: the host kernel prints a `[seconds]` timestamp (`printk.time=1` on its command
    /// line), the guest kernel does not.
    pub fn of(result: &Result<Outcome, LaunchError>) -> Self {
        match result {
            // Stopped: the harness gave up waiting for something the guest should have printed.
            Err(LaunchError::Timeout { .. } | LaunchError::Stopped { .. }) => Self::Timeout,
            // QEMU that stops before the host kernel printed a line never ran a host: a bad
            // QEMU binary or option, not a crash.
            Err(LaunchError::HostFailed { tail, .. }) if !host_started(tail) => Self::LaunchFailed,
            Err(LaunchError::HostFailed { .. }) => Self::HostCrashed,
            Err(_) => Self::LaunchFailed,
            Ok(outcome) => {
                if host_crash_line(&outcome.console).is_some() {
                    return Self::HostCrashed;
                }
                // A crash of the guest's own kernel is a product failure even when the guest
                // then hangs and a watchdog ends the run.
                if guest_crash_line(&outcome.console).is_some() {
                    return Self::KernelWarning;
                }
                match outcome.status {
                    STATUS_TRIPLE_FAULT => Self::TripleFault,
                    STATUS_GUEST_WATCHDOG => Self::GuestWatchdog,
                    STATUS_HOST_WATCHDOG => Self::HostWatchdog,
                    _ if stall_line(&outcome.console).is_some() => Self::Stall,
                    0 => Self::Passed,
                    STATUS_KERNEL_WARNING => Self::KernelWarning,
                    _ => Self::GuestFailed,
                }
            }
        }
    }

    /// Every verdict.
    pub const ALL: [Verdict; 10] = [
        Self::Passed,
        Self::GuestFailed,
        Self::KernelWarning,
        Self::Stall,
        Self::GuestWatchdog,
        Self::HostWatchdog,
        Self::TripleFault,
        Self::HostCrashed,
        Self::Timeout,
        Self::LaunchFailed,
    ];

    /// The verdict a [`Verdict::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }

    /// Short name for tables and the boot log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::GuestFailed => "guest-failed",
            Self::KernelWarning => "kernel-warning",
            Self::Stall => "stall",
            Self::GuestWatchdog => "guest-watchdog",
            Self::HostWatchdog => "host-watchdog",
            Self::TripleFault => "triple-fault",
            Self::HostCrashed => "host-crashed",
            Self::Timeout => "timeout",
            Self::LaunchFailed => "launch-failed",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the emulated host's kernel or init printed anything.
fn host_started(console: &str) -> bool {
    console
        .lines()
        .any(|l| l.trim_start().starts_with('[') || l.contains("rmnic-host:"))
}

/// The first console line reporting a stall, if any.
pub fn stall_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| STALL_MARKERS.iter().any(|m| l.contains(m)))
}

/// The first crash report of the guest's kernel (an untimed line), if any.
pub fn guest_crash_line(console: &str) -> Option<&str> {
    console.lines().find(|l| {
        !l.trim_start().starts_with('[')
            && CRASH_MARKERS.iter().any(|m| l.contains(m))
            && !STALL_MARKERS.iter().any(|m| l.contains(m))
    })
}

/// The first crash report of the emulated host's kernel (a timestamped line), if any.
pub fn host_crash_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| l.trim_start().starts_with('[') && CRASH_MARKERS.iter().any(|m| l.contains(m)))
}

/// Word in a boot-log line that marks a boot made because the one before it was retried.
pub const RETRY_MARK: &str = "(retry)";

/// Appends one line about a boot to `$RMNIC_BOOT_LOG` (if set): `<verdict> <seconds>
/// [(retry)] <command>`. Best effort: a log that cannot be written must not fail a test.
pub fn record(verdict: Verdict, seconds: f64, command: &[String], retry: bool) {
    let Some(path) = std::env::var_os("RMNIC_BOOT_LOG") else {
        return;
    };
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let mark = if retry { " (retry)" } else { "" };
        let _ = writeln!(file, "{verdict} {seconds:.1}{mark} {}", command.join(" "));
    }
}

/// Boots counted from a boot log: how many, and the platform failures among them by verdict.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootTally {
    /// Boots made.
    pub boots: usize,
    /// Boots made again because the one before had failed on the platform's side.
    pub retries: usize,
    /// Boots whose verdict was a platform failure, by verdict name.
    pub platform_failures: Vec<(String, usize)>,
}

impl BootTally {
    /// Reads the lines [`record`] wrote.
    pub fn parse(log: &str) -> Self {
        let mut tally = Self::default();
        for line in log.lines() {
            let mut words = line.split_whitespace();
            let (Some(verdict), Some(_secs)) = (words.next(), words.next()) else {
                continue;
            };
            tally.boots += 1;
            if words.next() == Some(RETRY_MARK) {
                tally.retries += 1;
            }
            // A word this code never writes counts as a failure rather than vanish.
            if Verdict::from_name(verdict).is_none_or(Verdict::is_platform_failure) {
                match tally
                    .platform_failures
                    .iter_mut()
                    .find(|(v, _)| v == verdict)
                {
                    Some((_, n)) => *n += 1,
                    None => tally.platform_failures.push((verdict.to_string(), 1)),
                }
            }
        }
        tally
    }
}

impl fmt::Display for BootTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let retried = match self.retries {
            0 => "none retried".to_string(),
            n => format!("{n} retried"),
        };
        write!(
            f,
            "{} boots, {retried}, {} platform failures",
            self.boots,
            self.platform_failures.iter().map(|(_, n)| n).sum::<usize>()
        )?;
        if !self.platform_failures.is_empty() {
            let list: Vec<String> = self
                .platform_failures
                .iter()
                .map(|(v, n)| format!("{n} {v}"))
                .collect();
            write!(f, " ({})", list.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostMode;
    use std::time::Duration;

    fn outcome(status: i32, console: &str) -> Result<Outcome, LaunchError> {
        Ok(Outcome {
            status,
            console: console.to_string(),
            mode: HostMode::Emulated,
            elapsed: Duration::from_secs(1),
            timeline: Vec::new(),
        })
    }

    #[test]
    fn statuses_and_console_reports_map_to_verdicts() {
        assert_eq!(Verdict::of(&outcome(0, "ok\n")), Verdict::Passed);
        assert_eq!(Verdict::of(&outcome(1, "")), Verdict::GuestFailed);
        assert_eq!(Verdict::of(&outcome(121, "")), Verdict::KernelWarning);
        assert_eq!(Verdict::of(&outcome(0x82, "")), Verdict::TripleFault);
        assert_eq!(Verdict::of(&outcome(124, "")), Verdict::GuestWatchdog);
        assert_eq!(Verdict::of(&outcome(126, "")), Verdict::HostWatchdog);
        let stalled = "rcu: INFO: rcu_sched self-detected stall on CPU\n";
        assert_eq!(Verdict::of(&outcome(0, stalled)), Verdict::Stall);
        let soft_lockup = "watchdog: BUG: soft lockup - CPU#1 stuck for 22s!\n";
        assert_eq!(Verdict::of(&outcome(0, soft_lockup)), Verdict::Stall);
        // A crash line without the host's timestamp is the guest's: the guest's init turns it
        // into a kernel-warning status itself.
        assert_eq!(
            Verdict::of(&outcome(121, "BUG: unable to handle\n")),
            Verdict::KernelWarning
        );
        // The guest oopsed, hung, and the host's watchdog ended the run: still the guest's
        // failure (the old driver's use-after-free on unbind looked exactly like this).
        let guest_oops_then_hang = "Oops: general protection fault: 0000 [#1] SMP\n\
                                    RIP: 0010:0x6b6b6b6b6b6b6b6b\n";
        assert_eq!(
            Verdict::of(&outcome(126, guest_oops_then_hang)),
            Verdict::KernelWarning
        );
        let host_oops = "[   41.000001] BUG: TASK stack guard page was hit at 0000\n";
        assert_eq!(Verdict::of(&outcome(0, host_oops)), Verdict::HostCrashed);
        let timeout = Err(LaunchError::Timeout {
            seconds: 1,
            mode: HostMode::Emulated,
            tail: String::new(),
            console: String::new(),
        });
        assert_eq!(Verdict::of(&timeout), Verdict::Timeout);
        let qemu_refused = Err(LaunchError::HostFailed {
            code: Some(1),
            tail: "qemu-system-x86_64: fatal: could not load module for type 'tcg-accel-ops'"
                .to_string(),
        });
        assert_eq!(Verdict::of(&qemu_refused), Verdict::LaunchFailed);
        let host_died = Err(LaunchError::HostFailed {
            code: Some(0),
            tail: "[    3.1] Kernel panic - not syncing: Fatal exception".to_string(),
        });
        assert_eq!(Verdict::of(&host_died), Verdict::HostCrashed);
        assert!(Verdict::Timeout.is_platform_failure());
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_name(v.name()), Some(v));
        }
        assert!(!Verdict::GuestFailed.is_platform_failure());
    }

    #[test]
    fn boot_log_tally_counts_boots_and_platform_failures() {
        let log = "passed 12.0 probe --cpus 2\n\
                   triple-fault 10.1 coherence\n\
                   passed 19.9 coherence\n\
                   guest-failed 3.0 fail --status 3\n";
        let tally = BootTally::parse(log);
        assert_eq!(tally.boots, 4);
        assert_eq!(
            tally.platform_failures,
            vec![("triple-fault".to_string(), 1)]
        );
        assert_eq!(
            tally.to_string(),
            "4 boots, none retried, 1 platform failures (1 triple-fault)"
        );
        let retried = BootTally::parse(
            "host-crashed 22.4 coherence\npassed 12.0 (retry) probe --cpus 2 + coherence\n",
        );
        assert_eq!(retried.retries, 1);
        assert_eq!(
            retried.to_string(),
            "2 boots, 1 retried, 1 platform failures (1 host-crashed)"
        );
    }
}
