//! The coherence suite's verdicts (docs/coherence-suite.md): the planted device bugs must make
//! it fail with violations named, and the seeded random stress must pass and name its seed.
//! The whole suite's clean runs (no faults, both modes; evictions and slow invalidations) are
//! in coherence.rs.

use rmnic_tests::coherence_report;
use rmnic_tests::{GuestRun, HostMode};

use crate::images;

/// Groups the detection runs use: enough page-table changes for every planted bug to show,
/// and none that would let a stale device write reach a page the kernel reused for itself
/// (swap, files, reclaim), which could crash the guest instead of failing its checks.
const DETECTION_GROUPS: [&str; 4] = ["munmap", "mprotect", "remap", "protect"];

fn detection(fault: &str) {
    let only: Vec<String> = DETECTION_GROUPS.iter().map(ToString::to_string).collect();
    let mut words = vec!["coherence".to_string()];
    for g in &only {
        words.extend(["--only".to_string(), g.clone()]);
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut guest = GuestRun::new(&words);
    guest.device_args = vec!["--fault".into(), fault.into(), "--seed".into(), "1".into()];
    let report = coherence_report::run(HostMode::Qemu, &images(), guest)
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    let table = report.table();
    assert!(!report.clean(), "{fault}: the suite passed\n{table}");
    let violations: u64 = report.rows.iter().map(|r| r.violations).sum();
    assert!(
        report.violations_total.is_some_and(|v| v > 0) && violations > 0,
        "{fault}: no violation reported\n{table}\n{}",
        report.outcome.tail()
    );
    assert!(
        report.outcome.console.contains("coherence violation at"),
        "{fault}: violations not named\n{}",
        report.outcome.tail()
    );
    eprintln!("{fault}:\n{table}");
}

#[test]
fn the_suite_fails_with_violations_under_drop_invalidate() {
    detection("drop-invalidate");
}

#[test]
fn the_suite_fails_with_violations_under_ignore_permission() {
    detection("ignore-permission");
}

#[test]
fn the_suite_fails_with_violations_under_stale_dropin() {
    detection("stale-dropin");
}

/// Three processes x two threads, 1000 operations each, checked against a CPU shadow; the run
/// names its seed so a failure can be replayed.
#[test]
fn the_seeded_random_stress_passes() {
    let guest = GuestRun::new(&["random", "--seed", "20261130", "--ops", "1000"]);
    let outcome = rmnic_tests::launch::run_in(HostMode::Qemu, &images(), &guest)
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    if !outcome
        .console
        .contains("CHECK random-shadow ok seed 20261130")
    {
        // The whole console: a mismatch names the process, thread and operation.
        let path = std::env::temp_dir().join("rmnic-random-stress-failure.log");
        let _ = std::fs::write(&path, &outcome.console);
        panic!(
            "the random stress failed; whole console in {}\n{}",
            path.display(),
            outcome.tail()
        );
    }
    assert_eq!(outcome.status, 0, "{}", outcome.tail());
}
