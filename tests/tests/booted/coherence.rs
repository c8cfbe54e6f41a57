//! The driver's coherence guarantees: `rmnic-guest coherence` runs every check in the shared
//! boot (with slab poisoning), and the test asserts on each named check so a failure names
//! what broke.

use rmnic_tests::launch::run_in;
use rmnic_tests::{GuestRun, HostMode, Outcome};

use crate::{program_status, shared_boot, Mode};

/// Every check the guest program must report as passed.
const CHECKS: &[&str] = &[
    "op-fill",
    "op-copy",
    "op-write64",
    "op-read64",
    "op-fetch-add",
    "op-cas",
    "op-swap",
    "op-fence",
    "op-alignment",
    "op-batch",
    "fault-once-per-page",
    "fault-once-per-2m-page",
    "debugfs-counters",
    "munmap-shootdown",
    "munmap-access-fails",
    "munmap-remap-sees-new-page",
    "mprotect-write-denied",
    "mprotect-read-allowed",
    "mprotect-write-after-read-denied",
    "mprotect-restored",
    "fork-cow-parent-sees-device-write",
    "fork-cow-child-keeps-its-copy",
    "exit-with-commands-in-flight",
    "no-context-leaked",
    "many-processes",
    "poll-reports-completion",
    "mremap-move",
    "mremap-dontunmap",
    "madv-dontneed-zeroes",
    "madv-free-reuse",
    "madv-free-device-write-survives-reclaim",
    "swap-out-refault",
    "device-write-survives-swap",
    "mprotect-none-and-back",
    "permission-upgrade",
    "fork-both-write-child-context",
    "shared-anon-across-fork",
    "munmap-while-device-busy",
    "two-contexts-one-mm",
    "file-shared-device-write-reaches-file",
    "file-writeback-redirty",
    "file-truncate",
    "file-miss-next-to-end-of-file",
    "thp-split-by-mprotect",
    "thp-split-by-munmap",
    "thp-collapse",
    "hugetlb-read-write",
    "ksm-merge-then-device-write",
    "compaction-under-device-use",
    "soft-offline-migration-under-device",
    "large-range-invalidate",
    "large-fault-ahead-window",
    "large-fault-ahead-skips-holes",
    "asid-pressure",
    "close-with-commands-in-flight",
    "mrelease-nonblocking-invalidation",
    "oom-kill-with-context",
    "unload-refused-while-open",
    "unbind-with-open-context",
    "rebind-works",
    "no-leaks",
    "dmesg-clean",
];

/// The guest program and its arguments.
pub const COMMAND: [&str; 1] = ["coherence"];

/// The suite's command in `host` mode: the whole suite in every mode (60 s through the
/// emulated host, 11 s in qemu mode).
pub fn command_for(_host: HostMode) -> Vec<&'static str> {
    COMMAND.to_vec()
}

#[test]
fn device_stays_coherent_with_cpu_page_tables() {
    check(Mode::Default);
}

#[test]
fn device_stays_coherent_with_cpu_page_tables_in_qemu() {
    check(Mode::Qemu);
}

/// The device stays coherent when it misbehaves in ways hardware may (docs/fault-injection.md):
/// every 7th TLB hit evicted (more misses) and every invalidation 20 ms slow (the notifier
/// waits). Every check must still pass, with no oracle violation.
///
/// The `faults` group is left out: it counts faults, which evictions raise on purpose.
#[test]
fn device_stays_coherent_under_evictions_and_slow_invalidations_in_qemu() {
    let command = ["coherence", "--skip", "faults"];
    let mut guest = GuestRun::new(&command);
    guest.device_args = vec!["--fault".into(), "evict:7,delay-invalidate:20".into()];
    let outcome = run_in(HostMode::Qemu, &crate::images(), &guest)
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    let counting = [
        "fault-once-per-page",
        "fault-once-per-2m-page",
        "debugfs-counters",
    ];
    let expected: Vec<&str> = CHECKS
        .iter()
        .copied()
        .filter(|c| !counting.contains(c))
        .collect();
    check_outcome(&outcome, &expected, &command);
}

fn check(mode: Mode) {
    let host = mode.host();
    check_outcome(shared_boot(mode), CHECKS, &command_for(host));
}

/// Asserts that every check in `expected` reported ok, the console carries no kernel
/// complaint, the oracle checked accesses and found no violation, and `command` and the boot
/// exited 0.
pub fn check_outcome(outcome: &Outcome, expected: &[&str], command: &[&str]) {
    let problems = outcome_problems(outcome, expected, true);
    let status = program_status(outcome, command);
    assert!(
        problems.is_empty() && status == Some(0) && outcome.status == 0,
        "coherence exited with {status:?}, the boot with {}; problems:\n{}\n--- console tail ---\n{}",
        outcome.status,
        problems.join("\n"),
        outcome.tail()
    );
}

/// What is wrong with `outcome`: checks of `expected` not reported ok, kernel complaints on
/// the console, an oracle that found violations, or none at all (or, with `oracle_busy`, one
/// that checked no access).
pub fn outcome_problems(outcome: &Outcome, expected: &[&str], oracle_busy: bool) -> Vec<String> {
    let lines: Vec<&str> = outcome.lines_with("CHECK ").collect();
    let mut problems = Vec::new();
    for name in expected {
        let prefix = format!("CHECK {name} ");
        match lines.iter().find(|l| l.starts_with(&prefix)) {
            Some(line) if line.starts_with(&format!("{prefix}ok")) => {}
            Some(line) => problems.push(line.to_string()),
            None => problems.push(format!("{name}: not reported")),
        }
    }
    // The guest's init scans dmesg for WARNING/BUG/Oops/lockdep reports and turns any into
    // status 121; the console carries them too.
    let lines: Vec<&str> = outcome.console.lines().collect();
    for marker in [
        "WARNING:",
        "BUG:",
        "Oops",
        "circular locking",
        "inconsistent lock state",
    ] {
        if let Some(at) = lines.iter().position(|l| l.contains(marker)) {
            // The report itself, not just the console's tail, so the failure can be read.
            let report = lines[at.saturating_sub(2)..(at + 30).min(lines.len())].join("\n");
            problems.push(format!("kernel log contains {marker:?}:\n{report}"));
        }
    }
    // The oracle checked the device's accesses against the page tables, and found nothing.
    match crate::oracle::oracle_summary(outcome) {
        Some((checked, 0)) if checked > 0 || !oracle_busy => {}
        Some((checked, violations)) => problems.push(format!(
            "oracle: {checked} accesses checked, {violations} coherence violations"
        )),
        None => problems.push("no oracle summary on the console".to_string()),
    }
    problems
}
