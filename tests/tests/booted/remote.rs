//! Segments across two guests (device 1.3, spec §20; `docs/fabric.md`): `rmnic-guest
//! remote-export` on one guest and `remote-import` on the other, their devices' servers joined
//! by a fabric link (`rmnic_tests::pair`, qemu mode). Every named check of both programs must
//! pass, with no kernel complaint and no oracle violation on either device, and the exporter's
//! munmap must have been shot down on the importer's device without fencing it.

use rmnic_tests::pair::{run_pair, run_pair_in, FabricSummary, PairOutcome, IDS_LINE_PREFIX};
use rmnic_tests::{GuestRun, Outcome};

use crate::{coherence::outcome_problems, images, program_status, Mode};

/// The exporter's guest program.
pub const EXPORTER: [&str; 1] = ["remote-export"];
/// The importer's guest program (the harness appends the exporter's ids).
pub const IMPORTER: [&str; 1] = ["remote-import"];

/// Every check the exporter must report as passed.
const EXPORTER_CHECKS: &[&str] = &[
    "remote-export-needs-other-bits",
    "remote-export-segments",
    "remote-export-importer-writes-landed",
    "remote-export-munmap-invalidates",
    "remote-export-remove",
    "remote-export-importer-done",
    "remote-export-no-leaks",
];

/// Every check the importer must report as passed.
const IMPORTER_CHECKS: &[&str] = &[
    "remote-import-attach",
    "remote-import-unknown-segid-enoent",
    "remote-import-read64",
    "remote-import-copy-out",
    "remote-import-write64",
    "remote-import-fetch-add",
    "remote-import-cas",
    "remote-import-copy-in",
    "remote-import-fill",
    "remote-import-readonly-attach-writable-refused",
    "remote-import-readonly-write-permission",
    "remote-import-munmap-fault",
    "remote-import-removed-invalid",
    "remote-import-attach-removed-enoent",
    "remote-import-exporter-finished",
    "remote-import-detach",
    "remote-import-no-leaks",
];

#[test]
fn segments_are_shared_between_two_guests_over_the_fabric() {
    shared(Mode::Qemu);
}

/// The same pair under rmnic-vmm: in emulated mode both guests run inside one emulated host,
/// each with its own rmnic-vmm, the two joined by a Unix socket in that host.
#[test]
fn segments_are_shared_between_two_guests_under_rmnic_vmm() {
    shared(Mode::Default);
}

fn shared(mode: Mode) {
    let pair = run_pair_in(
        mode.host(),
        &images(),
        GuestRun::new(&EXPORTER),
        GuestRun::new(&IMPORTER),
    )
    .unwrap_or_else(|e| panic!("pair failed: {e}"));
    let importer_command: Vec<&str> = pair.importer_command.iter().map(String::as_str).collect();
    let mut problems = Vec::new();
    guest_problems(
        "exporter",
        &pair.exporter,
        EXPORTER_CHECKS,
        &EXPORTER,
        &mut problems,
    );
    guest_problems(
        "importer",
        &pair.importer,
        IMPORTER_CHECKS,
        &importer_command,
        &mut problems,
    );
    let fabric = FabricSummary::from_console(&pair.exporter.console);
    match fabric {
        Some(s) if s.peer == Some(2) && s.shootdowns >= 1 && s.fences == 0 => eprintln!(
            "remote segments: {} remote shootdowns, mean round trip {:.1} us; {} remote accesses served",
            s.shootdowns, s.mean_us, s.accesses_served
        ),
        other => problems.push(format!(
            "exporter's fabric line: want peer 2, at least 1 remote shootdown and 0 fences, got {other:?}"
        )),
    }
    assert!(problems.is_empty(), "{}", report(&pair, &problems));
}

/// Adds what is wrong with one guest of the pair to `problems`: a check not ok (or a stop line
/// of the program's own), a kernel complaint, an oracle violation, a non-zero status.
fn guest_problems(
    role: &str,
    outcome: &Outcome,
    expected: &[&str],
    command: &[&str],
    problems: &mut Vec<String>,
) {
    // A program that stopped early prints a FAILED line of its own, not in the lists.
    problems.extend(
        outcome
            .lines_with("CHECK remote-")
            .filter(|l| l.contains(" FAILED "))
            .map(|l| format!("{role}: {l}")),
    );
    // The exporter runs no command of its own: its oracle may have checked only the
    // importer's accesses, so no minimum count.
    problems.extend(
        outcome_problems(outcome, expected, false)
            .into_iter()
            .map(|p| format!("{role}: {p}")),
    );
    let status = program_status(outcome, command);
    if status != Some(0) || outcome.status != 0 {
        problems.push(format!(
            "{role}: program exited with {status:?}, the boot with {}",
            outcome.status
        ));
    }
}

/// The problems and both consoles' tails.
fn report(pair: &PairOutcome, problems: &[String]) -> String {
    format!(
        "problems:\n{}\n--- exporter console tail ---\n{}\n--- importer console tail ({}) ---\n{}",
        problems.join("\n"),
        pair.exporter.tail(),
        pair.importer_command.join(" "),
        pair.importer.tail()
    )
}

/// The lists above are the programs': a check added to (or renamed in) a guest program and
/// not here would go unasserted. Also: the line the harness waits for is the one the exporter
/// prints. Reads the program's source; boots nothing.
#[test]
fn the_expected_checks_are_the_programs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/guest/src/remote.rs");
    let source = std::fs::read_to_string(path).expect("the guest program is in the repository");
    // Check names are whole literals of lowercase words and dashes; the ids line and names
    // built with format! are not.
    let mut in_program: Vec<&str> = source
        .match_indices("\"remote-")
        .filter_map(|(at, _)| source[at + 1..].split('"').next())
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
        .collect();
    in_program.sort_unstable();
    in_program.dedup();
    let mut expected = [EXPORTER_CHECKS, IMPORTER_CHECKS].concat();
    expected.sort_unstable();
    assert_eq!(in_program, expected, "{path} and this test's lists differ");
    assert!(
        source.contains(&format!("{IDS_LINE_PREFIX:?}")),
        "{path} does not print the line the harness waits for ({IDS_LINE_PREFIX:?})"
    );
}

/// Every check of the fencing pair.
const FENCE_CHECKS: [&str; 5] = [
    "fence-export-munmap-bounded",
    "fence-export-removed",
    "fence-import-read",
    "fence-import-fenced",
    "fence-import-nothing-stale",
];

/// An importer that never acknowledges (its host plants `--fabric-fault drop-acks`): the
/// exporter's munmap returns within the bound, the importer is fenced (the exporter's fabric
/// line counts it, with no shootdown acknowledged), every later access of the importer is
/// refused, and neither oracle sees a violation.
#[test]
fn a_silent_importer_is_fenced_and_reads_nothing_stale() {
    let mut importer = GuestRun::new(&["fence-import"]);
    importer.device_args = vec!["--fabric-fault".into(), "drop-acks".into()];
    let pair = run_pair(&images(), GuestRun::new(&["fence-export"]), importer)
        .unwrap_or_else(|e| panic!("pair failed: {e}"));
    let mut problems = Vec::new();
    for (role, outcome) in [("exporter", &pair.exporter), ("importer", &pair.importer)] {
        let prefix = if role == "exporter" {
            "fence-export-"
        } else {
            "fence-import-"
        };
        for check in FENCE_CHECKS.iter().filter(|c| c.starts_with(prefix)) {
            let ok = outcome
                .lines_with(&format!("CHECK {check} "))
                .any(|l| l.starts_with(&format!("CHECK {check} ok")));
            if !ok {
                problems.push(format!("{role}: {check} not ok"));
            }
        }
        if outcome.status != 0 {
            problems.push(format!("{role}: status {}", outcome.status));
        }
        if !outcome.console.contains(", 0 violations") {
            problems.push(format!(
                "{role}: the oracle reported violations (or no summary)"
            ));
        }
    }
    match FabricSummary::from_console(&pair.exporter.console) {
        Some(s) if s.fences == 1 && s.shootdowns == 0 => {
            eprintln!("fencing: the exporter fenced its silent importer ({s:?})");
        }
        other => problems.push(format!(
            "exporter's fabric line: want 1 fence and 0 shootdowns, got {other:?}"
        )),
    }
    let munmap = pair
        .exporter
        .lines_with("CHECK fence-export-munmap-bounded")
        .next()
        .unwrap_or("(no munmap line)");
    eprintln!("{munmap}");
    assert!(problems.is_empty(), "{}", report(&pair, &problems));
}
