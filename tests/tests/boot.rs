//! Integration tests that boot the real guest kernel with the real driver under rmnic-vmm
//! (directly or through the emulated host) and check what the guest reports.

use rmnic_tests::{run, GuestRun, Images};

fn images() -> Images {
    match Images::locate() {
        Ok(images) => images,
        Err(err) => panic!("{err}"),
    }
}

/// One boot covers the skeleton's guest-side promises: both vCPUs online, the driver bound,
/// the ID register seen through /dev/rmnic equal to the device model's constant, the scratch
/// register round-tripping, and the guest's status coming out of the VMM.
#[test]
fn boot_and_probe() {
    let guest = GuestRun::new(&["probe", "--cpus", "2"]);
    let outcome = match run(&images(), &guest) {
        Ok(outcome) => outcome,
        Err(err) => panic!("boot failed: {err}"),
    };
    eprintln!(
        "boot_and_probe: {} mode, {:.1} s in all, rmnic-vmm start to guest init {:?}, status {}",
        outcome.mode,
        outcome.elapsed.as_secs_f64(),
        outcome.vmm_start_to_guest_init(),
        outcome.status
    );
    let checks: Vec<&str> = outcome.lines_with("CHECK ").collect();
    let failed: Vec<&&str> = checks.iter().filter(|l| l.contains(" FAILED ")).collect();
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:#?}\n--- console tail ---\n{}",
        outcome.tail()
    );
    for name in [
        "cpus",
        "driver-bound",
        "probe-scratch-self-test",
        "abi-version",
        "scratch-round-trip",
    ] {
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
        outcome.status,
        0,
        "guest exit status\n--- console tail ---\n{}",
        outcome.tail()
    );
}

/// A guest program that fails must fail the run with its own status, not be swallowed.
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
