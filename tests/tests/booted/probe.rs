//! The skeleton's guest-side promises: both vCPUs online, the driver bound, the ID register
//! seen through /dev/rmnic equal to the device model's constant, the scratch register
//! round-tripping, the guest CLI running an operation.

use rmnic_tests::Outcome;

use crate::{program_status, shared_boot, shared_boot_of, Boot, Mode};

/// The guest program and its arguments.
pub const COMMAND: [&str; 3] = ["probe", "--cpus", "2"];

#[test]
fn boot_and_probe() {
    check(Mode::Default);
}

#[test]
fn boot_and_probe_in_qemu() {
    check(Mode::Qemu);
}

/// rmnic-vmm with the device model in `rmnic-device-server` (`--device vfio-user:SOCKET`):
/// the same checks, including a device FILL whose faults are served through the vfio-user
/// interrupt relay and DMA into the shared guest RAM.
#[test]
fn boot_and_probe_with_the_device_out_of_process() {
    let outcome = shared_boot_of(Mode::Default, Boot::Failure);
    assert!(
        outcome.console.contains("rmnic-device-server"),
        "the device did not run in rmnic-device-server\n{}",
        outcome.tail()
    );
    check_outcome(outcome);
}

fn check(mode: Mode) {
    check_outcome(shared_boot(mode));
}

fn check_outcome(outcome: &Outcome) {
    let checks: Vec<&str> = outcome
        .lines_with("CHECK ")
        .filter(|l| {
            PROBE_CHECKS
                .iter()
                .any(|name| l.starts_with(&format!("CHECK {name} ")))
        })
        .collect();
    let failed: Vec<&&str> = checks.iter().filter(|l| l.contains(" FAILED ")).collect();
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:#?}\n--- console tail ---\n{}",
        outcome.tail()
    );
    for name in PROBE_CHECKS {
        assert!(
            checks
                .iter()
                .any(|l| l.starts_with(&format!("CHECK {name} ok"))),
            "guest did not report check {name}\n--- console tail ---\n{}",
            outcome.tail()
        );
    }
    let device_line = outcome
        .lines_with("DEVICE ")
        .next()
        .unwrap_or_else(|| panic!("no DEVICE line\n{}", outcome.tail()));
    let want_id = format!("id={:#010x}", rmnic_device::RMNIC_ID_MAGIC);
    assert!(
        device_line.contains(&want_id),
        "{device_line} does not carry {want_id}"
    );
    let want_pci = format!(
        "pci={:04x}:{:04x}",
        rmnic_device::RMNIC_VENDOR_ID,
        rmnic_device::RMNIC_DEVICE_ID
    );
    assert!(
        device_line.contains(&want_pci),
        "{device_line} does not carry {want_pci}"
    );
    assert_eq!(
        program_status(outcome, &COMMAND),
        Some(0),
        "probe's exit status\n--- console tail ---\n{}",
        outcome.tail()
    );
}

/// Every check `rmnic-guest probe` must report as passed.
const PROBE_CHECKS: &[&str] = &[
    "cpus",
    "driver-bound",
    "probe-scratch-self-test",
    "abi-version",
    "scratch-round-trip",
    "kernel-config-for-the-suite",
    "rmnic-cli",
];
