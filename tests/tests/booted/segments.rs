//! Segments (XPMEM-style sharing of memory between processes of one guest): `rmnic-guest
//! segments` in a boot of its own per mode, with slab poisoning; every named check must pass,
//! with no kernel complaint and no oracle violation.

use rmnic_tests::launch::run_in;
use rmnic_tests::GuestRun;

use crate::{images, Mode, SLAB_POISONING};

/// The guest program and its arguments.
pub const COMMAND: [&str; 1] = ["segments"];

/// Every check the guest program must report as passed.
const CHECKS: &[&str] = &[
    "segment-export-attach",
    "segment-importer-copy-out",
    "segment-importer-read64",
    "segment-importer-write64",
    "segment-importer-fill",
    "segment-importer-copy-in",
    "segment-importer-fetch-add",
    "segment-importer-cas",
    "segment-readonly-attach-writable-eperm",
    "segment-readonly-write-permission",
    "segment-readonly-read-works",
    "segment-credentials-owner-only",
    "segment-credentials-other-read",
    "segment-credentials-group-bits",
    "segment-bounds",
    "segment-unattached-slot-invalid",
    "segment-attach-unknown-enoent",
    "segment-export-invalid",
    "segment-detach-errors",
    "segment-slots-full",
    "segment-export-table-full",
    "segment-munmap-fault",
    "segment-munmap-remap-new-data",
    "segment-mprotect-write-denied",
    "segment-mprotect-upgrade",
    "segment-fork-cow-exporter-sees-write",
    "segment-fork-cow-child-keeps-old",
    "segment-fork-device-write-breaks-cow",
    "segment-remove-invalidates",
    "segment-remove-errors",
    "segment-remove-detach-works",
    "segment-exporter-exit-invalidates",
    "segment-exporter-exit-revocations",
    "segment-exporter-close-invalidates",
    "segment-importer-exit-exporter-intact",
    "segment-importer-exit-new-attach",
    "segment-no-leaks",
];

#[test]
fn segments_are_shared_between_processes() {
    check(Mode::Default);
}

#[test]
fn segments_are_shared_between_processes_in_qemu() {
    check(Mode::Qemu);
}

fn check(mode: Mode) {
    let mut guest = GuestRun::new(&COMMAND);
    guest.guest_append = format!("{} {SLAB_POISONING}", guest.guest_append);
    let outcome =
        run_in(mode.host(), &images(), &guest).unwrap_or_else(|e| panic!("boot failed: {e}"));
    // A scenario that stopped early prints a FAILED line of its own, not in CHECKS.
    let failed: Vec<&str> = outcome
        .lines_with("CHECK segment-")
        .filter(|l| l.contains(" FAILED "))
        .collect();
    assert!(
        failed.is_empty(),
        "segment checks failed:\n{}\n--- console tail ---\n{}",
        failed.join("\n"),
        outcome.tail()
    );
    crate::coherence::check_outcome(&outcome, CHECKS, &COMMAND);
}

/// The list above is the program's: a check added to (or renamed in) the guest program and
/// not here would go unasserted. Reads the names from the program's source; boots nothing.
#[test]
fn the_expected_checks_are_the_programs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/guest/src/segments.rs");
    let source = std::fs::read_to_string(path).expect("the guest program is in the repository");
    let mut in_program: Vec<&str> = source
        .match_indices("\"segment-")
        .filter_map(|(at, _)| source[at + 1..].split('"').next())
        .filter(|name| !name.contains('{'))
        .collect();
    in_program.sort_unstable();
    in_program.dedup();
    let mut expected = CHECKS.to_vec();
    expected.sort_unstable();
    assert_eq!(in_program, expected, "{path} and this test's CHECKS differ");
}

/// The oracle checks importers' accesses against the *exporter's* page tables: with the
/// device dropping the exporter's invalidations (a planted bug), the importer's reads after
/// the exporter's munmap and mprotect go through stale entries, and the run must fail with
/// violations named.
#[test]
fn a_dropped_exporter_invalidation_is_caught_on_the_importers_access() {
    let mut guest = GuestRun::new(&["segments", "--only", "munmap", "--only", "mprotect"]);
    guest.device_args = vec![
        "--fault".into(),
        "drop-invalidate".into(),
        "--seed".into(),
        "1".into(),
    ];
    let outcome =
        run_in(Mode::Qemu.host(), &images(), &guest).unwrap_or_else(|e| panic!("boot failed: {e}"));
    let failed = outcome
        .lines_with("CHECK segment-")
        .filter(|l| l.contains(" FAILED "))
        .count();
    assert!(
        failed > 0 && outcome.status != 0,
        "the segment checks passed under drop-invalidate\n{}",
        outcome.tail()
    );
    let violations = outcome
        .lines_with("rmnic-device-server: oracle")
        .find_map(|line| {
            line.split(", ")
                .find_map(|part| part.strip_suffix(" violations"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        });
    assert!(
        violations.is_some_and(|v| v > 0) && outcome.console.contains("coherence violation at"),
        "no violation named under drop-invalidate (oracle summary: {violations:?})\n{}",
        outcome.tail()
    );
}
