//! Segments across two guests (device 1.3, spec §20; `docs/fabric.md`): `rmnic-guest
//! remote-export` on one guest and `remote-import` on the other, their devices' servers joined
//! by a fabric link (`rmnic_tests::pair`: two VMs side by side in qemu mode, or both
//! inside one emulated host under rmnic-vmm). Every named check of both programs must
//! pass, with no kernel complaint and no oracle violation on either device, and the exporter's
//! munmap must have been shot down on the importer's device without fencing it; also with the
//! importer's host acknowledging late (`--fabric-fault delay-acks:MS`, below the fencing
//! bound), where the exporter must wait for it rather than fence it.
//!
//! `changes-export`/`changes-import` cover the exporter's other page-table changes across the
//! two guests (mprotect both ways, fork/COW, exit without removing its segments); the fencing
//! pair (`fence-export`/`fence-import`) an importer that never acknowledges.

use rmnic_tests::pair::{run_pair_in, FabricSummary, PairOutcome, IDS_LINE_PREFIX};
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
    let (pair, mut problems) = remote_pair(mode, GuestRun::new(&IMPORTER));
    match FabricSummary::from_console(&pair.exporter.console) {
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

/// How late the importer's host acknowledges invalidations in the delay test: below the
/// exporter's fencing bound (`INVALIDATE_ACK_TIMEOUT`, 50 ms), so it must be waited for. Under
/// rmnic-vmm inside the emulated host the round trip itself takes 4-14 ms (docs/fabric.md),
/// so the delay there is smaller, to keep delay plus round trip well below the bound.
const fn ack_delay_ms(mode: Mode) -> u64 {
    match mode {
        Mode::Qemu => 20,
        Mode::Default => 10,
    }
}

/// The importer's host acknowledges every invalidation late ([`ack_delay_ms`];
/// `--fabric-fault delay-acks:MS`): the pair passes as without the delay, the exporter fences
/// no one, and its shootdowns' mean round trip is at least the delay. That last figure checks
/// that the exporter's munmap really waited for the late acknowledgement (it returns only
/// once acknowledged); it is not a performance figure.
#[test]
fn a_late_acknowledgement_within_the_bound_is_waited_for_not_fenced() {
    late_acknowledgements(Mode::Qemu);
}

/// The same with both guests under rmnic-vmm (inside one emulated host here).
#[test]
fn a_late_acknowledgement_within_the_bound_is_waited_for_under_rmnic_vmm() {
    late_acknowledgements(Mode::Default);
}

fn late_acknowledgements(mode: Mode) {
    let delay_ms = ack_delay_ms(mode);
    let mut importer = GuestRun::new(&IMPORTER);
    importer.device_args = vec!["--fabric-fault".into(), format!("delay-acks:{delay_ms}")];
    let (pair, mut problems) = remote_pair(mode, importer);
    // CAST: display and comparison only.
    let delay_us = (delay_ms * 1000) as f64;
    match FabricSummary::from_console(&pair.exporter.console) {
        Some(s)
            if s.peer == Some(2) && s.shootdowns >= 1 && s.fences == 0 && s.mean_us >= delay_us =>
        {
            eprintln!(
                "acknowledgements {delay_ms} ms late: {} remote shootdowns, mean round trip {:.1} us, no fence",
                s.shootdowns, s.mean_us
            );
        }
        other => problems.push(format!(
            "exporter's fabric line: want peer 2, at least 1 remote shootdown with a mean round trip of at least {delay_us:.0} us, and 0 fences; got {other:?}"
        )),
    }
    let munmap = pair
        .exporter
        .lines_with("CHECK remote-export-munmap-invalidates")
        .next()
        .unwrap_or("(no munmap line)");
    eprintln!("{munmap}");
    assert!(problems.is_empty(), "{}", report(&pair, &problems));
}

/// Runs the remote-export/remote-import pair, `importer` being the importer's run (its
/// command and device options); what is wrong with either guest ([`guest_problems`]), the
/// fabric line left to the caller.
fn remote_pair(mode: Mode, importer: GuestRun) -> (PairOutcome, Vec<String>) {
    let pair = run_pair_in(mode.host(), &images(), GuestRun::new(&EXPORTER), importer)
        .unwrap_or_else(|e| panic!("pair failed: {e}"));
    let problems = pair_problems(
        &pair,
        &EXPORTER,
        EXPORTER_CHECKS,
        IMPORTER_CHECKS,
        "remote-",
    );
    (pair, problems)
}

/// What is wrong with either guest of `pair` ([`guest_problems`]); `prefix` starts every
/// check name of both programs.
fn pair_problems(
    pair: &PairOutcome,
    exporter_command: &[&str],
    exporter_checks: &[&str],
    importer_checks: &[&str],
    prefix: &str,
) -> Vec<String> {
    let importer_command: Vec<&str> = pair.importer_command.iter().map(String::as_str).collect();
    let mut problems = Vec::new();
    guest_problems(
        "exporter",
        &pair.exporter,
        exporter_checks,
        exporter_command,
        prefix,
        &mut problems,
    );
    guest_problems(
        "importer",
        &pair.importer,
        importer_checks,
        &importer_command,
        prefix,
        &mut problems,
    );
    problems
}

/// Adds what is wrong with one guest of the pair to `problems`: a check not ok (or a stop line
/// of the program's own, a check named with `prefix` that is not in the lists), a kernel
/// complaint, an oracle violation, a non-zero status.
fn guest_problems(
    role: &str,
    outcome: &Outcome,
    expected: &[&str],
    command: &[&str],
    prefix: &str,
    problems: &mut Vec<String>,
) {
    // A program that stopped early prints a FAILED line of its own, not in the lists.
    problems.extend(
        outcome
            .lines_with(&format!("CHECK {prefix}"))
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
    let (path, source) = guest_source("remote.rs");
    assert_eq!(
        check_names(&source, "remote-"),
        sorted(&[EXPORTER_CHECKS, IMPORTER_CHECKS].concat()),
        "{path} and this test's lists differ"
    );
    assert!(
        source.contains(&format!("{IDS_LINE_PREFIX:?}")),
        "{path} does not print the line the harness waits for ({IDS_LINE_PREFIX:?})"
    );
    // The changes pair prints its ids through the same constant.
    let (path, source) = guest_source("remote_changes.rs");
    assert_eq!(
        check_names(&source, "changes-"),
        sorted(&[CHANGES_EXPORTER_CHECKS, CHANGES_IMPORTER_CHECKS].concat()),
        "{path} and this test's lists differ"
    );
    assert!(
        source.contains("{IDS_LINE_PREFIX}--mailbox {} --data {}"),
        "{path} does not print the line the harness waits for ({IDS_LINE_PREFIX:?})"
    );
}

/// The path and text of guest program source `file`.
fn guest_source(file: &str) -> (String, String) {
    let path = format!("{}/guest/src/{file}", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).expect("the guest program is in the repository");
    (path, source)
}

/// The check names in `source` that start with `prefix`, sorted, once each. Check names are
/// whole literals of lowercase words and dashes; the ids line and names built with format!
/// (a program's stop line) are not.
fn check_names<'a>(source: &'a str, prefix: &str) -> Vec<&'a str> {
    let names: Vec<&str> = source
        .match_indices(&format!("\"{prefix}"))
        .filter_map(|(at, _)| source[at + 1..].split('"').next())
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
        .collect();
    sorted(&names)
}

/// `names` sorted, once each.
fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names.dedup();
    names
}

/// The exporter's side of the page-table changes pair.
pub const CHANGES_EXPORTER: [&str; 1] = ["changes-export"];

/// Every check the changes exporter must report as passed: its exporting process's, then the
/// program's after that process exited.
const CHANGES_EXPORTER_CHECKS: &[&str] = &[
    "changes-export-segments",
    "changes-export-sees-importer-write",
    "changes-export-mprotect-invalidates",
    "changes-export-readonly-unchanged",
    "changes-export-upgrade-landed",
    "changes-export-fork-invalidates",
    "changes-export-fork-parent-sees-importer",
    "changes-export-fork-child-keeps-old",
    "changes-export-exporter-exited",
    "changes-export-exit-releases",
];

/// Every check the changes importer must report as passed.
const CHANGES_IMPORTER_CHECKS: &[&str] = &[
    "changes-import-attach",
    "changes-import-write",
    "changes-import-mprotect-write-permission",
    "changes-import-mprotect-upgrade",
    "changes-import-write-before-fork",
    "changes-import-fork-writes",
    "changes-import-exporter-exit-revokes",
    "changes-import-detach",
    "changes-import-no-leaks",
];

/// The exporter's page-table changes, each seen by the other guest's next access: mprotect
/// read-only (PERMISSION) and back (the write lands), fork/COW (the importer's writes reach
/// the parent's pages, the child keeps the old ones), and the exporter's exit with its
/// segments exported (revoked, or its host gone; the importer detaches cleanly). Every check
/// ok, no oracle violation on either device, and on the exporter's fabric line no fence and at
/// least 2 remote shootdowns (mprotect and fork each shoot down).
#[test]
fn the_exporters_page_table_changes_reach_the_other_guest() {
    changes(Mode::Qemu);
}

/// The same with both guests under rmnic-vmm (inside one emulated host here).
#[test]
fn the_exporters_page_table_changes_reach_the_other_guest_under_rmnic_vmm() {
    changes(Mode::Default);
}

fn changes(mode: Mode) {
    let pair = run_pair_in(
        mode.host(),
        &images(),
        GuestRun::new(&CHANGES_EXPORTER),
        GuestRun::new(&["changes-import"]),
    )
    .unwrap_or_else(|e| panic!("pair failed: {e}"));
    let mut problems = pair_problems(
        &pair,
        &CHANGES_EXPORTER,
        CHANGES_EXPORTER_CHECKS,
        CHANGES_IMPORTER_CHECKS,
        "changes-",
    );
    match FabricSummary::from_console(&pair.exporter.console) {
        Some(s) if s.peer == Some(2) && s.shootdowns >= 2 && s.fences == 0 => eprintln!(
            "page-table changes: {} remote shootdowns, mean round trip {:.1} us; {} remote accesses served",
            s.shootdowns, s.mean_us, s.accesses_served
        ),
        other => problems.push(format!(
            "exporter's fabric line: want peer 2, at least 2 remote shootdowns and 0 fences, got {other:?}"
        )),
    }
    // Which end the importer saw at the exporter's exit: revoked, or the host already gone.
    if let Some(line) = pair
        .importer
        .lines_with("CHECK changes-import-exporter-exit-revokes")
        .next()
    {
        eprintln!("{line}");
    }
    assert!(problems.is_empty(), "{}", report(&pair, &problems));
}

/// The fencing pair with the importer's host cut off by a planted partition at the exporter's
/// first forwarded invalidation (both nodes live on, nothing gets through): the exporter
/// fences within the bound, and the importer's accesses time out (REMOTE_UNREACHABLE), its
/// stale translations included.
#[test]
fn a_partition_fences_the_importer_and_cuts_it_off() {
    partition(Mode::Qemu);
}

/// The same with both guests under rmnic-vmm (inside one emulated host here).
#[test]
fn a_partition_fences_the_importer_and_cuts_it_off_under_rmnic_vmm() {
    partition(Mode::Default);
}

fn partition(mode: Mode) {
    let mut importer = GuestRun::new(&["fence-import", "--partitioned"]);
    importer.device_args = vec!["--fabric-fault".into(), "partition-on-invalidate".into()];
    fence_pair(mode, importer, "partition");
}

/// Every check of the fencing pair.
const FENCE_CHECKS: [&str; 6] = [
    "fence-export-munmap-bounded",
    "fence-export-removed",
    "fence-import-read",
    "fence-import-fenced",
    "fence-import-nothing-stale",
    "fence-import-no-leaks",
];

/// An importer that never acknowledges (its host plants `--fabric-fault drop-acks`): the
/// exporter's munmap returns within the bound, the importer is fenced (the exporter's fabric
/// line counts it, with no shootdown acknowledged), every later access of the importer is
/// refused, and neither oracle sees a violation.
#[test]
fn a_silent_importer_is_fenced_and_reads_nothing_stale() {
    let mut importer = GuestRun::new(&["fence-import"]);
    importer.device_args = vec!["--fabric-fault".into(), "drop-acks".into()];
    fence_pair(Mode::Qemu, importer, "silent importer");
}

/// The same with both guests under rmnic-vmm (inside one emulated host here).
#[test]
fn a_silent_importer_is_fenced_and_reads_nothing_stale_under_rmnic_vmm() {
    let mut importer = GuestRun::new(&["fence-import"]);
    importer.device_args = vec!["--fabric-fault".into(), "drop-acks".into()];
    fence_pair(Mode::Default, importer, "silent importer, rmnic-vmm");
}

/// Runs the fencing pair with `importer` in `mode` and checks it (`what` names the case).
fn fence_pair(mode: Mode, importer: GuestRun, what: &str) {
    let pair = run_pair_in(
        mode.host(),
        &images(),
        GuestRun::new(&["fence-export"]),
        importer,
    )
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
            eprintln!("fencing ({what}): the exporter fenced its importer ({s:?})");
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

/// An importer that dies (the harness kills its VM and device host once it read the
/// exporter's pages): the exporter's munmap still returns within the bound, the importer is
/// fenced (its link is down), and the exporter goes on to remove its segments cleanly.
#[test]
fn a_killed_importer_is_fenced_and_the_exporter_goes_on() {
    killed_importer(Mode::Qemu);
}

/// The same with both guests under rmnic-vmm (inside one emulated host here, whose init kills
/// the importer's rmnic-vmm on the same line).
#[test]
fn a_killed_importer_is_fenced_and_the_exporter_goes_on_under_rmnic_vmm() {
    killed_importer(Mode::Default);
}

fn killed_importer(mode: Mode) {
    let pair = run_pair_in(
        mode.host(),
        &images(),
        GuestRun::new(&["fence-export", "--importer-killed"]),
        GuestRun::new(&["fence-import", "--get-killed"]),
    )
    .unwrap_or_else(|e| panic!("pair failed: {e}"));
    let mut problems = Vec::new();
    for check in ["fence-export-munmap-bounded", "fence-export-removed"] {
        if !pair
            .exporter
            .lines_with(&format!("CHECK {check} ok"))
            .any(|_| true)
        {
            problems.push(format!("exporter: {check} not ok"));
        }
    }
    if !pair.importer.console.contains("CHECK fence-import-read ok") {
        problems.push("importer: fence-import-read not ok before the kill".to_string());
    }
    if pair.importer.status != rmnic_tests::pair::KILLED_STATUS {
        problems.push(format!(
            "importer: status {}, not killed by the harness",
            pair.importer.status
        ));
    }
    if pair.exporter.status != 0 || !pair.exporter.console.contains(", 0 violations") {
        problems.push(format!(
            "exporter: status {}, or oracle violations (or no summary)",
            pair.exporter.status
        ));
    }
    match FabricSummary::from_console(&pair.exporter.console) {
        Some(s) if s.fences == 1 && s.shootdowns == 0 => {
            eprintln!("killed peer: the exporter fenced it ({s:?})");
        }
        other => problems.push(format!(
            "exporter's fabric line: want 1 fence and 0 shootdowns, got {other:?}"
        )),
    }
    eprintln!(
        "{}",
        pair.exporter
            .lines_with("CHECK fence-export-munmap-bounded")
            .next()
            .unwrap_or("(no munmap line)")
    );
    assert!(problems.is_empty(), "{}", report(&pair, &problems));
}
