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

/// Two device bugs planted at once, in one boot of the guest's `munmap` and `mprotect` checks
/// (qemu mode): `drop-invalidate` (invalidations acknowledged, entries kept) and
/// `ignore-permission` (a write through a read-only entry). The oracle must report both kinds.
#[test]
fn the_oracle_catches_planted_device_bugs() {
    planted_device_bugs(HostMode::Qemu);
}

/// The same under rmnic-vmm (direct, or emulated where the CPU has no SVM/VMX), where the run
/// must also end with the violation status 0x87 (docs/vmm.md).
#[test]
fn the_oracle_catches_planted_device_bugs_and_rmnic_vmm_fails_the_run() {
    let outcome = planted_device_bugs(crate::Mode::Default.host());
    assert_eq!(outcome.status, 0x87, "violation status\n{}", outcome.tail());
}

fn planted_device_bugs(mode: HostMode) -> Outcome {
    // mprotect first: only the first 16 records are printed, and munmap makes many.
    let mut guest = GuestRun::new(&["coherence", "--only", "mprotect", "--only", "munmap"]);
    guest.device_args = vec!["--fault".into(), "drop-invalidate,ignore-permission".into()];
    let outcome = run_in(mode, &images(), &guest).unwrap_or_else(|e| panic!("boot failed: {e}"));
    let (checked, violations) =
        oracle_summary(&outcome).unwrap_or_else(|| panic!("no oracle summary\n{}", outcome.tail()));
    assert!(checked > 0, "nothing checked\n{}", outcome.tail());
    assert!(
        violations > 0,
        "planted bugs went unnoticed\n{}",
        outcome.tail()
    );
    let records: Vec<&str> = outcome
        .console
        .lines()
        .filter(|l| l.contains("coherence violation at"))
        .collect();
    // drop-invalidate: the device reads a page munmap took away.
    assert!(
        records
            .iter()
            .any(|r| r.contains("do not map it") || r.contains("map it to")),
        "no stale-translation record: {records:#?}\n{}",
        outcome.tail()
    );
    // ignore-permission: the device writes through a read-only entry.
    assert!(
        records.iter().any(|r| r.contains("does not allow writing")),
        "no write-to-read-only record: {records:#?}\n{}",
        outcome.tail()
    );
    outcome
}
