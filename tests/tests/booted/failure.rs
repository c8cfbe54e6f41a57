//! A guest program that fails must fail the run with its own status, not be swallowed.

use rmnic_tests::launch::run_in;
use rmnic_tests::GuestRun;

use crate::{images, Mode};

#[test]
fn guest_failure_is_reported() {
    check(Mode::Default);
}

#[test]
fn guest_failure_is_reported_in_qemu() {
    check(Mode::Qemu);
}

fn check(mode: Mode) {
    let guest = GuestRun::new(&["fail", "--status", "3"]);
    let outcome = match run_in(mode.host(), &images(), &guest) {
        Ok(outcome) => outcome,
        Err(err) => panic!("boot failed: {err}"),
    };
    assert_eq!(
        outcome.status,
        3,
        "the guest program's status must reach the harness\n--- console tail ---\n{}",
        outcome.tail()
    );
    assert!(outcome.console.contains("failing on purpose with status 3"));
}
