//! Integration test of the driver's coherence guarantees: boots the real guest with the real
//! driver and runs `rmnic-guest coherence` (every check in one boot, ~10 s each through the
//! emulated host), then asserts on each named check so a failure names what broke.

use rmnic_tests::{run, GuestRun, Images};

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
    "mprotect-restored",
    "fork-cow-parent-sees-device-write",
    "fork-cow-child-keeps-its-copy",
    "exit-with-commands-in-flight",
    "no-context-leaked",
    "many-processes",
    "poll-reports-completion",
    "unload-refused-while-open",
    "unbind-with-open-context",
    "rebind-works",
];

/// Guest kernel option that poisons freed kmalloc objects (the driver allocates with kmalloc).
const SLAB_POISONING: &str = "slub_debug=P,kmalloc-*";

#[test]
fn device_stays_coherent_with_cpu_page_tables() {
    let images = Images::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut guest = GuestRun::new(&["coherence"]);
    // Slab poisoning for the driver's allocations: a use after free then oopses (status 121)
    // instead of reading stale bytes. It caught `/dev/rmnic`'s file operations being freed on
    // unbind while files stayed open (`teardown` group; docs/platform.md).
    guest.guest_append = format!("{} {SLAB_POISONING}", guest.guest_append);
    let outcome = run(&images, &guest).unwrap_or_else(|e| panic!("boot failed: {e}"));
    let lines: Vec<&str> = outcome.lines_with("CHECK ").collect();
    let mut problems = Vec::new();
    for name in CHECKS {
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
    assert!(
        problems.is_empty() && outcome.status == 0,
        "status {}; problems:\n{}\n--- console tail ---\n{}",
        outcome.status,
        problems.join("\n"),
        outcome.tail()
    );
}
