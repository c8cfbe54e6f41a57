//! A guest program that fails must fail the run with its own status, not be swallowed.

use rmnic_tests::{run, GuestRun};

use crate::images;

#[test]
fn guest_failure_is_reported() {
    let guest = GuestRun::new(&["fail", "--status", "3"]);
    let outcome = match run(&images(), &guest) {
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
