//! A guest program that fails must fail the run with its own status, not be swallowed.

use crate::{shared_boot_of, Boot, Mode};

/// The failing program and its arguments.
pub const COMMAND: [&str; 3] = ["fail", "--status", "3"];

#[test]
fn guest_failure_is_reported() {
    check(Mode::Default);
}

#[test]
fn guest_failure_is_reported_in_qemu() {
    check(Mode::Qemu);
}

fn check(mode: Mode) {
    let outcome = shared_boot_of(mode, Boot::Failure);
    assert_eq!(
        outcome.status,
        3,
        "the guest program's status must reach the harness\n--- console tail ---\n{}",
        outcome.tail()
    );
    assert!(outcome.console.contains("failing on purpose with status 3"));
}
