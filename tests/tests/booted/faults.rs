//! Fault modes whose documented outcome is "the driver copes" (docs/fault-injection.md), each
//! shown in a booted guest with the real driver, and the device bug `stale-dropin` the oracle
//! must catch (the run then ends with rmnic-vmm's violation status, 0x87).
//!
//! Each boot writes a text trace; the test checks that every mode it turned on was injected
//! at least once (a mode that never fired would prove nothing).

use std::path::{Path, PathBuf};

use rmnic_tests::launch::run_in;
use rmnic_tests::{GuestRun, Outcome};

use crate::oracle::oracle_summary;
use crate::{images, program_status, Mode};

/// rmnic-vmm's exit status when the oracle found violations (docs/vmm.md).
const STATUS_VIOLATIONS: i32 = 0x87;

fn trace_path(tag: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "rmnic-faults-{tag}-{}-{stamp}.txt",
        std::process::id()
    ))
}

/// How many `injected fault` events of kind `kind` (e.g. `SpuriousMiss`) the trace holds.
fn injected(trace: &Path, kind: &str) -> usize {
    std::fs::read_to_string(trace)
        .unwrap_or_else(|e| panic!("{}: {e}", trace.display()))
        .lines()
        .filter(|l| l.contains("injected fault") && l.trim_end().ends_with(kind))
        .count()
}

/// Asserts the trace shows every mode of `kinds` injected at least once.
fn assert_injected(trace: &Path, kinds: &[&str]) {
    for kind in kinds {
        assert!(
            injected(trace, kind) > 0,
            "no {kind} was injected ({})",
            trace.display()
        );
    }
}

fn boot(mode: Mode, command: &[&str], faults: &str, tag: &str) -> (Outcome, PathBuf) {
    let mut guest = GuestRun::new(command);
    guest.device_args = vec![
        "--fault".into(),
        faults.into(),
        "--seed".into(),
        "42".into(),
    ];
    let trace = trace_path(tag);
    guest.trace = Some(trace.clone());
    let outcome =
        run_in(mode.host(), &images(), &guest).unwrap_or_else(|e| panic!("boot failed: {e}"));
    (outcome, trace)
}

/// More misses (spurious ones, evictions), slow accesses, fault interrupts held back,
/// duplicated and lost interrupts: the coherence checks still pass and the oracle finds
/// nothing.
#[test]
fn coherence_holds_under_misses_delays_and_interrupt_faults() {
    // Not the `faults` group: it counts faults per page, which extra misses change by design.
    let command = [
        "coherence",
        "--only",
        "ops",
        "--only",
        "munmap",
        "--only",
        "mprotect",
        "--only",
        "fork",
    ];
    let faults = "spurious-miss:0.05,evict:0.05,slow-engine:50us,slow-fault:2ms,\
                  duplicate-irq:0.5,lost-irq:0.2";
    let (outcome, trace) = boot(Mode::Qemu, &command, faults, "coherent");
    assert_eq!(
        program_status(&outcome, &command),
        Some(0),
        "coherence checks under {faults}\n{}",
        outcome.tail()
    );
    let (checked, violations) =
        oracle_summary(&outcome).unwrap_or_else(|| panic!("no oracle summary\n{}", outcome.tail()));
    assert!(
        checked > 0 && violations == 0,
        "{checked} checked, {violations} violations\n{}",
        outcome.tail()
    );
    assert_injected(
        &trace,
        &[
            "SpuriousMiss",
            "Eviction",
            "SlowAccess",
            "SlowFaultInterrupt",
            "DuplicateInterrupt",
            "LostInterrupt",
        ],
    );
    let _ = std::fs::remove_file(&trace);
}

/// A DMA error on a command or a parity error on the TLB entry it hits: that command fails with
/// a device error, the entry is dropped, later commands of the same context succeed with the
/// right data.
#[test]
fn dma_and_parity_errors_fail_one_command_and_the_context_goes_on() {
    let command = ["device-errors", "--copies", "200"];
    let (outcome, trace) = boot(
        Mode::Qemu,
        &command,
        "parity-error:0.02,dma-error:0.01",
        "errors",
    );
    assert_eq!(
        program_status(&outcome, &command),
        Some(0),
        "{}",
        outcome.tail()
    );
    assert!(
        outcome.console.contains("CHECK device-errors ok"),
        "{}",
        outcome.tail()
    );
    assert_injected(&trace, &["ParityError", "DataDmaError"]);
    let _ = std::fs::remove_file(&trace);
}

/// `stale-dropin`: the device re-installs a translation an invalidation just removed. Under
/// rmnic-vmm the oracle must report it, with the context's last device events, and the run
/// must end with status 0x87.
#[test]
fn a_stale_drop_in_is_caught_and_fails_the_run_under_rmnic_vmm() {
    let command = ["coherence", "--only", "munmap"];
    let (outcome, trace) = boot(Mode::Default, &command, "stale-dropin", "stale");
    assert_eq!(
        outcome.status,
        STATUS_VIOLATIONS,
        "expected the violation status\n{}",
        outcome.tail()
    );
    let (_, violations) =
        oracle_summary(&outcome).unwrap_or_else(|| panic!("no oracle summary\n{}", outcome.tail()));
    assert!(violations > 0, "{}", outcome.tail());
    assert!(
        outcome.console.contains("coherence violation at")
            && outcome.console.contains("device events before it"),
        "no violation record with its events\n{}",
        outcome.tail()
    );
    assert!(
        injected(&trace, "StaleDropIn") > 0,
        "no stale drop-in was injected"
    );
    let _ = std::fs::remove_file(&trace);
}

/// Asserts every `CHECK recover-*` line of the `recover` program passed.
fn assert_recovered(outcome: &Outcome, command: &[&str], what: &str) {
    assert_eq!(
        program_status(outcome, command),
        Some(0),
        "{what}: the driver did not recover\n{}",
        outcome.tail()
    );
    let failed: Vec<&str> = outcome
        .console
        .lines()
        .filter(|l| l.starts_with("CHECK recover-") && l.contains(" FAILED"))
        .collect();
    assert!(failed.is_empty(), "{what}: {failed:#?}\n{}", outcome.tail());
    assert!(
        outcome.console.contains("device reset and re-enabled"),
        "{what}: the driver's recovery message is missing\n{}",
        outcome.tail()
    );
}

/// `stall-invalidate`: an invalidation never completes. The driver's notifier gives up after
/// its bound (5 s), resets the device (which then holds no translation) and returns, so munmap
/// returns; the old context fails with EIO; a new context works.
#[test]
fn a_stalled_invalidation_is_recovered_by_a_device_reset() {
    let command = ["recover", "--expect", "stall"];
    let (outcome, trace) = boot(Mode::Qemu, &command, "stall-invalidate:1", "stall");
    assert_recovered(&outcome, &command, "stall-invalidate");
    assert!(
        injected(&trace, "StalledInvalidation") > 0,
        "no stall was injected"
    );
    let _ = std::fs::remove_file(&trace);
}

/// `reset:3`: the device resets itself when the third command starts. The waiting process gets
/// EIO for it (no hang), the driver re-enables the device, a new context works.
#[test]
fn a_device_reset_mid_flight_fails_the_command_and_the_driver_recovers() {
    let command = ["recover", "--expect", "reset"];
    let (outcome, trace) = boot(Mode::Qemu, &command, "reset:3", "reset");
    assert_recovered(&outcome, &command, "reset");
    assert!(injected(&trace, "Reset") > 0, "no reset was injected");
    let _ = std::fs::remove_file(&trace);
}
