//! The coherence oracle (device/src/oracle): on in every boot, it must find no violation in
//! the coherence checks, and it must find them when the device is made incoherent on purpose
//! (`--fault drop-invalidate`: invalidations acknowledged, entries kept).

use rmnic_tests::launch::run_in;
use rmnic_tests::{GuestRun, HostMode, Outcome};

use crate::images;

/// The oracle's summary line (`... N translated accesses checked, ... M violations`), as
/// (checked, violations).
pub fn oracle_summary(outcome: &Outcome) -> Option<(u64, u64)> {
    let line = outcome
        .console
        .lines()
        .find(|l| l.contains("oracle (") && l.contains("violations"))?;
    let number_before = |word: &str| {
        let at = line.find(word)?;
        line[..at].split_whitespace().last()?.parse::<u64>().ok()
    };
    Some((
        number_before(" translated accesses checked")?,
        number_before(" violations")?,
    ))
}

/// Boots the guest's coherence `group` in qemu mode with the device running `--fault fault`.
fn with_fault(group: &str, fault: &str) -> Outcome {
    let mut guest = GuestRun::new(&["coherence", "--only", group]);
    guest.device_args = vec!["--fault".into(), fault.into()];
    run_in(HostMode::Qemu, &images(), &guest).unwrap_or_else(|e| panic!("boot failed: {e}"))
}

#[test]
fn the_oracle_catches_a_device_that_writes_through_read_only_entries() {
    let outcome = with_fault("mprotect", "ignore-permission");
    let (_, violations) =
        oracle_summary(&outcome).unwrap_or_else(|| panic!("no oracle summary\n{}", outcome.tail()));
    assert!(
        violations > 0,
        "writes through read-only entries went unnoticed\n{}",
        outcome.tail()
    );
    assert!(
        outcome
            .console
            .lines()
            .any(|l| l.contains("coherence violation at") && l.contains("does not allow writing")),
        "no write-to-read-only record\n{}",
        outcome.tail()
    );
}

#[test]
fn the_oracle_catches_a_device_that_drops_invalidations() {
    let outcome = with_fault("munmap", "drop-invalidate");
    let (checked, violations) =
        oracle_summary(&outcome).unwrap_or_else(|| panic!("no oracle summary\n{}", outcome.tail()));
    assert!(checked > 0, "nothing checked\n{}", outcome.tail());
    assert!(
        violations > 0,
        "dropped invalidations went unnoticed\n{}",
        outcome.tail()
    );
    let record = outcome
        .console
        .lines()
        .find(|l| l.contains("coherence violation at"))
        .unwrap_or_else(|| panic!("no violation record\n{}", outcome.tail()));
    assert!(
        record.contains("do not map it") || record.contains("map it to"),
        "{record}"
    );
}
