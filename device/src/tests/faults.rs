//! The fault modes of `docs/fault-injection.md`, each driven through BAR0 and guest memory
//! as the user-facing `--fault` string names it: what the device does under each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::commands::{CommandRecord, Opcode, Status, CMD_FLAG_INTERRUPT};
use crate::events::{EventKind, InjectedFault};
use crate::inject::{injector_named, FaultInjector};
use crate::invalidation::InvalidationDescriptor;
use crate::oracle::page_walk::tests::Tables;
use crate::oracle::page_walk::{PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use crate::oracle::{CheckMode, Oracle};
use crate::regs::*;
use crate::rmnic::{RmnicConfig, VECTOR_COMPLETION, VECTOR_FAULT};
use crate::stats::GlobalCounter;
use crate::tests::harness::{wait_for, Harness};

const RW: u32 = DROPIN_ATTR_READ | DROPIN_ATTR_WRITE;

fn with_injector(injector: Arc<dyn FaultInjector>) -> Harness {
    Harness::with_config(RmnicConfig {
        injector,
        ..RmnicConfig::default()
    })
}

fn with_modes(modes: &str, seed: u64) -> Harness {
    with_injector(injector_named(modes, seed).expect("fault modes"))
}

fn read64(id: u64, va: u64) -> CommandRecord {
    CommandRecord {
        opcode: Opcode::Read64 as u8,
        id,
        addr0: va,
        ..CommandRecord::default()
    }
}

fn nop_with_interrupt(id: u64) -> CommandRecord {
    CommandRecord {
        opcode: Opcode::Nop as u8,
        flags: CMD_FLAG_INTERRUPT,
        id,
        ..CommandRecord::default()
    }
}

/// The faults the device logged as injected, in order.
fn injected(h: &Harness) -> Vec<InjectedFault> {
    h.device
        .event_log()
        .snapshot()
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::FaultInjected { fault, .. } => Some(fault),
            _ => None,
        })
        .collect()
}

fn parity_errors(h: &mut Harness) -> u64 {
    h.read64(REG_STATS_BASE + 8 * GlobalCounter::ParityErrors as u64)
}

/// Statuses of 32 Read64 commands of one context under `modes` and `seed`.
fn statuses(modes: &str, seed: u64) -> Vec<Status> {
    let mut h = with_modes(modes, seed);
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    (1..=32)
        .map(|id| h.run(&mut queue, &read64(id, 0x1010)).status)
        .collect()
}

/// One context's commands run in order on one worker at a time, so the hook call sequence,
/// hence the decisions, depend only on the seed.
#[test]
fn a_seeded_ratio_decides_the_same_under_the_same_seed_and_otherwise_under_another() {
    let first = statuses("dma-error:0.5", 7);
    assert_eq!(first, statuses("dma-error:0.5", 7));
    assert_ne!(first, statuses("dma-error:0.5", 8));
    assert!(first.contains(&Status::Ok) && first.contains(&Status::DeviceError));
}

#[test]
fn spurious_miss_writes_a_fault_record_and_keeps_the_entry() {
    let mut h = with_modes("spurious-miss:2", 0);
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    assert_eq!(h.run(&mut queue, &read64(1, 0x1010)).status, Status::Ok);
    // The second hit is reported as a miss.
    h.submit(&mut queue, &read64(2, 0x1010));
    let record = h.wait_fault(&mut rings);
    assert_eq!((record.ctx, record.va.0), (0, 0x1010));
    h.wait_state(0, CTX_STATE_FAULTED);
    // No drop-in: the entry stayed, so the retried access (the third hit) completes.
    h.resume(0);
    assert_eq!(h.wait_completion(&mut queue).1.status, Status::Ok);
    assert!(injected(&h).contains(&InjectedFault::SpuriousMiss));
}

#[test]
fn duplicate_irq_raises_the_vector_twice_and_lost_irq_not_at_all() {
    let mut h = with_modes("duplicate-irq", 0);
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    h.triggers();
    assert_eq!(h.run(&mut queue, &nop_with_interrupt(1)).status, Status::Ok);
    // Both are raised before the worker moves on; collect until the engine is idle.
    let mut raised = Vec::new();
    wait_for("two completion interrupts", || {
        raised.extend(h.triggers());
        (raised.len() >= 2).then_some(())
    });
    h.wait_idle();
    raised.extend(h.triggers());
    assert_eq!(raised, [VECTOR_COMPLETION, VECTOR_COMPLETION]);
    assert!(injected(&h).contains(&InjectedFault::DuplicateInterrupt));

    let mut h = with_modes("lost-irq", 0);
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    h.triggers();
    assert_eq!(h.run(&mut queue, &nop_with_interrupt(1)).status, Status::Ok);
    h.wait_idle();
    assert!(!h.triggers().contains(&VECTOR_COMPLETION));
    assert!(injected(&h).contains(&InjectedFault::LostInterrupt));
}

#[test]
fn parity_error_fails_the_command_drops_the_entry_and_the_context_goes_on() {
    let mut h = with_modes("parity-error:2", 0);
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    assert_eq!(h.run(&mut queue, &read64(1, 0x1010)).status, Status::Ok);
    let failed = h.run(&mut queue, &read64(2, 0x1010));
    assert_eq!(
        (failed.status, failed.fault_va),
        (Status::DeviceError, 0x1010)
    );
    assert_eq!(h.ctx_state(0), CTX_STATE_ACTIVE);
    assert_eq!(parity_errors(&mut h), 1);
    // The entry is gone: the next access misses, and works once dropped in again.
    h.submit(&mut queue, &read64(3, 0x1010));
    assert_eq!(h.wait_fault(&mut rings).va.0, 0x1010);
    h.drop_in(0, 0x1000, frame, RW);
    h.resume(0);
    assert_eq!(h.wait_completion(&mut queue).1.status, Status::Ok);
    assert!(injected(&h).contains(&InjectedFault::ParityError));
}

#[test]
fn stall_invalidate_never_writes_the_done_word_until_a_reset_which_returns_promptly() {
    let mut h = with_modes("stall-invalidate", 0);
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let first = h.post_invalidation(&mut rings, InvalidationDescriptor::asid(1, 0));
    h.write32(REG_INVQ_TAIL, rings.invq_tail);
    wait_for("the stall", || {
        injected(&h)
            .contains(&InjectedFault::StalledInvalidation)
            .then_some(())
    });
    let second = h.post_invalidation(&mut rings, InvalidationDescriptor::global(0));
    h.write32(REG_INVQ_TAIL, rings.invq_tail);
    // Commands go on meanwhile (the other worker runs them).
    assert_eq!(h.run(&mut queue, &nop_with_interrupt(1)).status, Status::Ok);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        h.read_u64(rings.done),
        0,
        "descriptors {first} and {second}"
    );
    assert_eq!(h.read64(REG_INVQ_DONE_SEQ_LO), 0);

    let start = Instant::now();
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_FLR);
    assert!(start.elapsed() < Duration::from_secs(5), "the reset hung");
    h.wait_idle();
    assert_eq!(h.read_u64(rings.done), 0, "abandoned, not completed");
    assert_eq!(h.read32(REG_DEV_STATUS) & DEV_STATUS_ENABLED, 0);
}

#[test]
fn stale_dropin_reinstalls_an_invalidated_entry_and_the_oracle_reports_it() {
    let inner = injector_named("stale-dropin", 0).expect("mode");
    let oracle = Arc::new(Oracle::new(CheckMode::Full, inner));
    let mut h = with_injector(oracle.clone());
    let mut tables = Tables::in_memory(h.mem.clone());
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let va = 0x7000_0000;
    let frame = h.alloc(4096, 4096);
    tables.map(va, frame, 1, PTE_PRESENT | PTE_WRITABLE | PTE_USER);
    h.drop_in(0, va, frame, RW);
    assert_eq!(h.run(&mut queue, &read64(1, va)).status, Status::Ok);
    assert_eq!(oracle.violation_count(), 0, "{:?}", oracle.violations());

    // munmap: the PTE goes, then the shootdown.
    tables.set(va, 1, 0);
    let range = InvalidationDescriptor::range(1, va, va + 4096, 0).expect("aligned");
    h.invalidate(&mut rings, range);
    assert!(injected(&h).contains(&InjectedFault::StaleDropIn));
    assert!(oracle.violation_count() >= 1, "the re-installed entry");
    // The device still translates the unmapped page: no fault, the access completes.
    assert_eq!(h.run(&mut queue, &read64(2, va)).status, Status::Ok);
    assert!(h.take_fault(&mut rings).is_none());
}

#[test]
fn reset_on_the_nth_command_resets_the_device_without_completing_it() {
    let mut h = with_modes("reset:2", 0);
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    assert_eq!(h.run(&mut queue, &nop_with_interrupt(1)).status, Status::Ok);
    h.submit(&mut queue, &nop_with_interrupt(2));
    wait_for("the device's own reset", || {
        (h.read32(REG_DEV_STATUS) & DEV_STATUS_ENABLED == 0).then_some(())
    });
    h.wait_idle();
    assert_eq!(
        h.used_idx(&queue),
        1,
        "no completion for the command in flight"
    );
    assert_eq!(h.ctx_state(0), CTX_STATE_FREE);
    assert_eq!(h.read32(REG_DEV_CONTROL), 0);
    assert!(injected(&h).contains(&InjectedFault::Reset));
}

#[test]
fn slow_engine_adds_at_least_its_duration_to_an_access() {
    let mut h = with_modes("slow-engine:30ms", 0);
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    let start = Instant::now();
    assert_eq!(h.run(&mut queue, &read64(1, 0x1010)).status, Status::Ok);
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[test]
fn slow_fault_holds_the_fault_interrupt_back_after_the_record() {
    let mut h = with_modes("slow-fault:40ms", 0);
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    h.triggers();
    let start = Instant::now();
    h.submit(&mut queue, &read64(1, 0x1010));
    h.wait_fault(&mut rings);
    wait_for("the fault interrupt", || {
        h.triggers().contains(&VECTOR_FAULT).then_some(())
    });
    assert!(start.elapsed() >= Duration::from_millis(40));
    assert!(injected(&h).contains(&InjectedFault::SlowFaultInterrupt));
}
