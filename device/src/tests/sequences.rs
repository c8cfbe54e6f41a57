//! The specification's worked sequences (§16) and the behaviours of §5, §10 and §11, replayed
//! through BAR0 and guest memory.

use crate::commands::{CommandRecord, Opcode, Status, CMD_FLAG_INTERRUPT};
use crate::events::EventKind;
use crate::fault_ring::{
    FAULT_ACCESS_READ, FAULT_ACCESS_WRITE, FAULT_REASON_MISS, FAULT_REASON_PERMISSION,
};
use crate::invalidation::InvalidationDescriptor;
use crate::regs::*;
use crate::rmnic::{VECTOR_COMPLETION, VECTOR_FAULT, VECTOR_INVALIDATION};
use crate::stats::{ContextCounter, GlobalCounter, CONTEXT_COUNTERS, GLOBAL_COUNTERS};
use crate::tests::harness::Harness;

const RW: u32 = DROPIN_ATTR_READ | DROPIN_ATTR_WRITE;
const HUGE_RW: u32 = RW | DROPIN_ATTR_2M;

/// A COPY record of `length` bytes from `src` to `dst`.
pub(crate) fn copy(id: u64, dst: u64, src: u64, length: u64) -> CommandRecord {
    CommandRecord {
        opcode: Opcode::Copy as u8,
        id,
        addr0: dst,
        addr1: src,
        length,
        ..CommandRecord::default()
    }
}

fn op(opcode: Opcode, id: u64, addr0: u64, operand0: u64, operand1: u64) -> CommandRecord {
    CommandRecord {
        opcode: opcode as u8,
        id,
        addr0,
        operand0,
        operand1,
        ..CommandRecord::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn bring_up_reports_identity_capabilities_geometry_and_enabled() {
    let mut h = Harness::new();
    assert_eq!(h.read32(REG_ID), RMNIC_ID_MAGIC);
    assert_eq!(h.read32(REG_VERSION), 0x0001_0005);
    assert_eq!(h.read32(REG_CAPS), 0x0004_0F40);
    assert_eq!(h.read32(REG_TLB_GEOMETRY), 0x0004_0100);
    assert_eq!(h.read32(REG_DEV_STATUS), 0);
    h.bring_up(64, 64);
    assert_eq!(h.read32(REG_DEV_CONTROL), DEV_CONTROL_ENABLE);
    let queue = h.open_context(3, 42, 16);
    assert_eq!(h.ctx_read32(queue.ctx, CTX_ASID), 42);
}

#[test]
fn copy_through_4k_mappings_moves_the_data_and_interrupts_when_asked() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let (src, dst) = (h.alloc(0x4000, 4096), h.alloc(0x4000, 4096));
    let data = pattern(0x3000, 7);
    h.write_mem(src + 0x800, &data);
    h.map_4k(0, 0x7000_0000, src, 4);
    h.map_4k(0, 0x9000_0000, dst, 4);
    let mut record = copy(11, 0x9000_0100, 0x7000_0800, 0x3000);
    record.flags = CMD_FLAG_INTERRUPT;
    let completion = h.run(&mut queue, &record);
    assert_eq!(completion.id, 11);
    assert_eq!(completion.status, Status::Ok);
    assert_eq!(h.read_mem(dst + 0x100, 0x3000), data);
    h.wait_idle();
    assert_eq!(h.triggers(), vec![VECTOR_COMPLETION]);
    // Pages crossed: source 4, destination 4 -> at least 4 accesses of two translations.
    assert!(h.device.counter(GlobalCounter::Hits) >= 8);
    assert_eq!(h.device.counter(GlobalCounter::Fills), 8);
}

#[test]
fn copy_through_2m_mappings_and_fill_with_pattern_phase() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(1, 2, 16);
    let src = h.alloc(2 << 20, 2 << 20);
    let dst = h.alloc(2 << 20, 2 << 20);
    let data = pattern(300_000, 3);
    h.write_mem(src + 12345, &data);
    h.drop_in(1, 0x4000_0000, src, HUGE_RW);
    h.drop_in(1, 0x8000_0000, dst, HUGE_RW);
    let completion = h.run(&mut queue, &copy(1, 0x8000_0010, 0x4000_3039, 300_000));
    assert_eq!(completion.status, Status::Ok);
    assert_eq!(h.read_mem(dst + 0x10, 300_000), data);

    let fill = CommandRecord {
        opcode: Opcode::Fill as u8,
        id: 2,
        addr0: 0x8000_0003,
        length: 21,
        operand0: 0x0807_0605_0403_0201,
        ..CommandRecord::default()
    };
    assert_eq!(h.run(&mut queue, &fill).status, Status::Ok);
    let filled = h.read_mem(dst + 3, 21);
    let expected: Vec<u8> = (0..21).map(|i| (i % 8 + 1) as u8).collect();
    assert_eq!(filled, expected);
}

#[test]
fn word_operations_return_old_values_and_are_visible_in_memory() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(2, 3, 16);
    let page = h.alloc(4096, 4096);
    h.map_4k(2, 0x10_0000, page, 1);
    let va = 0x10_0040;
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Write64, 1, va, 40, 0)).status,
        Status::Ok
    );
    assert_eq!(h.read_u64(page + 0x40), 40);
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Read64, 2, va, 0, 0)).result,
        40
    );
    assert_eq!(
        h.run(&mut queue, &op(Opcode::FetchAdd, 3, va, 2, 0)).result,
        40
    );
    let failed_cas = h.run(&mut queue, &op(Opcode::Cas, 4, va, 7, 99));
    assert_eq!((failed_cas.status, failed_cas.result), (Status::Ok, 42));
    assert_eq!(
        h.read_u64(page + 0x40),
        42,
        "CAS with a wrong expected value stores nothing"
    );
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Cas, 5, va, 42, 99)).result,
        42
    );
    assert_eq!(h.run(&mut queue, &op(Opcode::Swap, 6, va, 5, 0)).result, 99);
    assert_eq!(h.read_u64(page + 0x40), 5);
}

#[test]
fn commands_complete_in_submission_order_with_nop_and_fence() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(4, 4, 32);
    let page = h.alloc(4096, 4096);
    h.map_4k(4, 0x5000, page, 1);
    for id in 0..12u64 {
        let record = match id % 3 {
            0 => op(Opcode::Nop, id, 0, 0, 0),
            1 => op(Opcode::FetchAdd, id, 0x5000, 1, 0),
            _ => op(Opcode::Fence, id, 0, 0, 0),
        };
        h.post(&mut queue, &record);
    }
    h.doorbell(&queue);
    for id in 0..12u64 {
        let (_, completion) = h.wait_completion(&mut queue);
        assert_eq!((completion.id, completion.status), (id, Status::Ok));
    }
    assert_eq!(h.read_u64(page), 4);
}

#[test]
fn a_miss_writes_a_fault_record_and_drop_in_plus_resume_completes_the_command() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(5, 9, 16);
    let (src, dst) = (h.alloc(0x2000, 4096), h.alloc(0x2000, 4096));
    let data = pattern(0x2000, 1);
    h.write_mem(src, &data);
    h.submit(&mut queue, &copy(77, 0xb000_0000, 0xa000_0000, 0x2000));

    // Sequence 16.4: the source misses first.
    let record = h.wait_fault(&mut rings);
    assert_eq!(
        (
            record.ctx,
            record.asid,
            record.access,
            record.reason,
            record.va.0,
            record.command_id
        ),
        (5, 9, FAULT_ACCESS_READ, FAULT_REASON_MISS, 0xa000_0000, 77)
    );
    assert_eq!(h.ctx_state(5), CTX_STATE_FAULTED);
    assert_eq!(h.read64(Harness::ctx_offset(5, FAULT_VA_LO)), 0xa000_0000);
    assert_eq!(
        h.ctx_read32(5, FAULT_INFO),
        u32::from(FAULT_ACCESS_READ) | u32::from(FAULT_REASON_MISS) << 8
    );
    assert_eq!(h.read32(REG_FAULT_HEAD), 1);
    assert!(h.triggers().contains(&VECTOR_FAULT));
    h.map_4k(5, 0xa000_0000, src, 2);
    h.resume(5);

    // Then the destination.
    let record = h.wait_fault(&mut rings);
    assert_eq!(
        (record.va.0, record.access),
        (0xb000_0000, FAULT_ACCESS_WRITE)
    );
    h.map_4k(5, 0xb000_0000, dst, 2);
    h.resume(5);

    let (_, completion) = h.wait_completion(&mut queue);
    assert_eq!((completion.id, completion.status), (77, Status::Ok));
    assert_eq!(h.read_mem(dst, 0x2000), data);
    assert_eq!(h.ctx_state(5), CTX_STATE_ACTIVE);
    assert_eq!(h.device.counter(GlobalCounter::Faults), 2);
    assert_eq!(h.device.context_counter(5, ContextCounter::Faults), 2);
}

#[test]
fn a_read_only_entry_raises_a_permission_fault_for_writes() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(6, 6, 16);
    let page = h.alloc(4096, 4096);
    h.drop_in(6, 0x3000, page, DROPIN_ATTR_READ);
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Read64, 1, 0x3008, 0, 0))
            .status,
        Status::Ok
    );
    h.submit(&mut queue, &op(Opcode::FetchAdd, 2, 0x3008, 1, 0));
    let record = h.wait_fault(&mut rings);
    assert_eq!(record.reason, FAULT_REASON_PERMISSION);
    assert_eq!(record.access, FAULT_ACCESS_READ | FAULT_ACCESS_WRITE);
    // A writable drop-in replaces the read-only entry.
    h.drop_in(6, 0x3000, page, RW);
    h.resume(6);
    assert_eq!(h.wait_completion(&mut queue).1.status, Status::Ok);
    assert_eq!(h.read_u64(page + 8), 1);
}

#[test]
fn abort_fails_the_stalled_command_and_the_context_goes_on() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(7, 7, 16);
    h.post(&mut queue, &op(Opcode::Read64, 1, 0xdead_0000, 0, 0));
    h.post(&mut queue, &op(Opcode::Nop, 2, 0, 0, 0));
    h.doorbell(&queue);
    h.wait_fault(&mut rings);
    h.abort(7, Status::Permission as u32);
    let (_, first) = h.wait_completion(&mut queue);
    assert_eq!(
        (first.id, first.status, first.fault_va),
        (1, Status::Permission, 0xdead_0000)
    );
    let (_, second) = h.wait_completion(&mut queue);
    assert_eq!((second.id, second.status), (2, Status::Ok));
    assert_eq!(h.device.counter(GlobalCounter::Aborts), 1);
}

#[test]
fn resume_and_abort_are_ignored_unless_faulted() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(8, 8, 16);
    h.resume(8);
    h.abort(8, 9);
    assert_eq!(h.ctx_state(8), CTX_STATE_ACTIVE);
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Nop, 1, 0, 0, 0)).status,
        Status::Ok
    );
}

#[test]
fn a_full_fault_ring_holds_records_until_the_tail_moves() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(8, 64);
    let mut queues = Vec::new();
    for ctx in 0..9 {
        // CAST: ctx < 9.
        let mut queue = h.open_context(ctx, 100 + ctx as u16, 4);
        h.submit(
            &mut queue,
            &op(Opcode::Read64, ctx as u64, 0x1000 * (ctx as u64 + 1), 0, 0),
        );
        queues.push(queue);
    }
    for ctx in 0..9 {
        h.wait_state(ctx, CTX_STATE_FAULTED);
    }
    assert_eq!(
        h.read32(REG_FAULT_HEAD),
        8,
        "the ninth record waits for room"
    );
    let first = h.wait_fault(&mut rings);
    // Consuming one record (FAULT_TAIL write inside take_fault) lets the ninth in.
    assert_eq!(h.read32(REG_FAULT_HEAD), 9);
    let mut seen = vec![first.ctx];
    for _ in 0..8 {
        seen.push(h.wait_fault(&mut rings).ctx);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..9).collect::<Vec<u8>>());
}

#[test]
fn without_a_fault_ring_misses_complete_with_fault_unresolved() {
    let mut h = Harness::new();
    h.bring_up(0, 64);
    let mut queue = h.open_context(9, 9, 16);
    let completion = h.run(&mut queue, &op(Opcode::Write64, 5, 0x4_0000, 1, 0));
    assert_eq!(
        (completion.status, completion.fault_va),
        (Status::FaultUnresolved, 0x4_0000)
    );
    assert_eq!(h.ctx_state(9), CTX_STATE_ACTIVE);
}

#[test]
fn range_asid_and_global_invalidations_remove_what_they_name() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    h.open_context(0, 1, 16);
    h.open_context(1, 2, 16);
    let frames = h.alloc(0x10_0000, 4096);
    h.map_4k(0, 0x1000_0000, frames, 16);
    h.map_4k(1, 0x1000_0000, frames, 16);
    let count = |h: &Harness, asid: u16| {
        h.device
            .tlb_entries()
            .iter()
            .filter(|e| e.fill.asid == asid)
            .count()
    };
    let range = InvalidationDescriptor::range(1, 0x1000_4000, 0x1000_8000, 0).expect("valid");
    h.invalidate(&mut rings, range.with_interrupt());
    assert_eq!((count(&h, 1), count(&h, 2)), (12, 16));
    assert_eq!(h.read64(REG_INVQ_DONE_SEQ_LO), 1);
    assert_eq!(h.read32(REG_INVQ_HEAD), 1);
    h.wait_idle();
    assert!(h.triggers().contains(&VECTOR_INVALIDATION));

    h.invalidate(&mut rings, InvalidationDescriptor::asid(2, 0));
    assert_eq!((count(&h, 1), count(&h, 2)), (12, 0));
    h.invalidate(&mut rings, InvalidationDescriptor::global(0));
    assert!(h.device.tlb_entries().is_empty());
    assert_eq!(h.device.counter(GlobalCounter::EntriesRemoved), 32);
    assert_eq!(
        h.device
            .context_counter(0, ContextCounter::InvalidatedEntries),
        16
    );
    assert_eq!(
        (
            h.device.counter(GlobalCounter::InvalRange),
            h.device.counter(GlobalCounter::InvalAsid),
            h.device.counter(GlobalCounter::InvalGlobal)
        ),
        (1, 1, 1)
    );
}

#[test]
fn one_doorbell_carries_a_batch_and_the_done_word_names_its_last_descriptor() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 16);
    h.open_context(0, 1, 16);
    let frames = h.alloc(0x10_0000, 4096);
    h.map_4k(0, 0, frames, 10);
    let mut last = 0;
    for page in 0..10u64 {
        let descriptor =
            InvalidationDescriptor::range(1, page << 12, (page + 1) << 12, 0).expect("valid");
        last = h.post_invalidation(&mut rings, descriptor);
    }
    h.write32(REG_INVQ_TAIL, rings.invq_tail);
    h.wait_done(&rings, last);
    assert_eq!(h.read_u64(rings.done), 10);
    assert!(h.device.tlb_entries().is_empty());
    assert_eq!(h.read32(REG_INVQ_HEAD), 10);
}

#[test]
fn a_drop_in_executed_before_a_pending_invalidation_of_its_range_is_removed_by_it() {
    // §10.3: an invalidation removes the entries present when it executes.
    use crate::inject::{FaultInjector, InvalidationVerdict};
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Debug)]
    struct Slow;
    impl FaultInjector for Slow {
        fn invalidation(&self, _: &InvalidationDescriptor) -> InvalidationVerdict {
            InvalidationVerdict::Delay(Duration::from_millis(250))
        }
    }
    let mut h = Harness::with_config(crate::RmnicConfig {
        injector: Arc::new(Slow),
        ..crate::RmnicConfig::default()
    });
    let mut rings = h.bring_up(64, 64);
    h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    let descriptor = InvalidationDescriptor::range(1, 0x5000, 0x6000, 0).expect("valid");
    let seq = h.post_invalidation(&mut rings, descriptor);
    h.write32(REG_INVQ_TAIL, rings.invq_tail);
    // The descriptor is submitted and delayed; the drop-in executes first.
    h.drop_in(0, 0x5000, frame, RW);
    h.wait_done(&rings, seq);
    assert!(h.device.tlb_entries().is_empty());
    // A drop-in after completion stays: the device does not track provenance.
    h.drop_in(0, 0x5000, frame, RW);
    assert_eq!(h.device.tlb_entries().len(), 1);
}

#[test]
fn drop_ins_for_a_free_context_are_discarded_and_prefetch_is_accepted() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let frame = h.alloc(4096, 4096);
    h.program_context(3, 3, 16);
    h.drop_in(3, 0x1000, frame, RW);
    assert!(h.device.tlb_entries().is_empty());
    assert!(h
        .device
        .event_log()
        .snapshot()
        .iter()
        .any(|e| matches!(e.kind, EventKind::DropInDiscarded { ctx: 3, .. })));
    h.ctx_write32(3, CTX_CONTROL, CTX_CONTROL_ENABLE);
    h.drop_in(3, 0x1000, frame, RW);
    assert_eq!(h.device.tlb_entries().len(), 1, "prefetch while ACTIVE");
}

#[test]
fn disabling_a_context_aborts_its_command_and_flushes_its_asid() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(10, 10, 16);
    h.open_context(11, 11, 16);
    let frame = h.alloc(0x4000, 4096);
    h.map_4k(10, 0x1000, frame, 2);
    h.map_4k(11, 0x1000, frame, 2);
    h.submit(&mut queue, &op(Opcode::Read64, 5, 0x9000, 0, 0));
    h.wait_fault(&mut rings);
    h.ctx_write32(10, CTX_CONTROL, 0);
    assert_eq!(h.ctx_read32(10, CTX_STATUS), CTX_STATE_FREE);
    let (_, completion) = h.wait_completion(&mut queue);
    assert_eq!((completion.id, completion.status), (5, Status::Aborted));
    let entries = h.device.tlb_entries();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.fill.asid == 11));
    // The ASID is free again: another context may take it.
    h.open_context(12, 10, 16);
}

#[test]
fn function_reset_stops_everything_without_writing_guest_memory() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.map_4k(0, 0x1000, frame, 1);
    h.write32(REG_SCRATCH, 5);
    let completion = h.submit(&mut queue, &op(Opcode::Read64, 1, 0x8000, 0, 0));
    h.wait_fault(&mut rings);
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_FLR);
    assert_eq!(
        h.read_mem(completion, 8),
        vec![0xee; 8],
        "no completion written"
    );
    assert_eq!(h.used_idx(&queue), 0);
    assert_eq!(h.read32(REG_DEV_CONTROL), 0);
    assert_eq!(h.read32(REG_SCRATCH), 0);
    assert_eq!(h.read32(REG_FAULT_SIZE), 0);
    assert_eq!(h.ctx_read32(0, CTX_STATUS), CTX_STATE_FREE);
    assert_eq!(h.ctx_read32(0, CQ_SIZE), 0);
    assert!(h.device.tlb_entries().is_empty());
    assert_eq!(h.read64(REG_STATS_BASE + 0x38), 0, "counters restart");
    assert!(h.device.msix().enabled(), "MSI-X state survives");
}

#[test]
fn disabling_the_device_aborts_every_context_and_empties_the_tlb() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.map_4k(0, 0x1000, frame, 1);
    h.submit(&mut queue, &op(Opcode::Read64, 1, 0x8000, 0, 0));
    h.wait_fault(&mut rings);
    h.write32(REG_DEV_CONTROL, 0);
    assert_eq!(h.wait_completion(&mut queue).1.status, Status::Aborted);
    assert_eq!(h.read32(REG_DEV_STATUS), 0);
    assert_eq!(h.ctx_state(0), CTX_STATE_FREE);
    assert!(h.device.tlb_entries().is_empty());
    // Contexts cannot be enabled while the device is disabled.
    h.ctx_write32(0, CTX_CONTROL, CTX_CONTROL_ENABLE);
    assert_eq!(h.ctx_read32(0, CTX_CONTROL), 0);
}

#[test]
fn locked_registers_ignore_writes_while_enabled() {
    let mut h = Harness::new();
    let rings = h.bring_up(64, 64);
    h.write32(REG_FAULT_SIZE, 16);
    assert_eq!(h.read32(REG_FAULT_SIZE), rings.fault_size);
    let queue = h.open_context(0, 1, 16);
    h.ctx_write32(0, CTX_ASID, 99);
    h.ctx_write32(0, CQ_SIZE, 2);
    assert_eq!(h.ctx_read32(0, CTX_ASID), 1);
    assert_eq!(h.ctx_read32(0, CQ_SIZE), u32::from(queue.size));
}

#[test]
fn counters_read_through_bar0_with_one_snapshot_per_qword() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(2, 2, 16);
    let frame = h.alloc(4096, 4096);
    h.map_4k(2, 0x1000, frame, 1);
    for id in 0..3 {
        h.run(&mut queue, &op(Opcode::Read64, id, 0x1000, 0, 0));
    }
    let hits = GLOBAL_COUNTERS[GlobalCounter::Hits as usize].offset;
    let fills = GLOBAL_COUNTERS[GlobalCounter::Fills as usize].offset;
    assert_eq!(h.read64(hits), 3);
    assert_eq!(h.read32(hits), 3);
    assert_eq!(h.read32(hits + 4), 0);
    assert_eq!(h.read64(fills), 1);
    let completed = CONTEXT_COUNTERS[ContextCounter::CommandsCompleted as usize].offset;
    assert_eq!(h.read64(Harness::ctx_offset(2, completed)), 3);
    assert_eq!(h.read64(Harness::ctx_offset(3, completed)), 0);
}

#[test]
fn the_event_log_traces_a_miss_from_doorbell_to_completion() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    // The run that enabling the context scheduled must not pick the command up early.
    h.wait_idle();
    let log = h.device.event_log();
    log.clear();
    h.submit(&mut queue, &op(Opcode::Write64, 3, 0x2000, 9, 0));
    h.wait_fault(&mut rings);
    h.drop_in(0, 0x2000, frame, RW);
    h.resume(0);
    h.wait_completion(&mut queue);
    let kinds: Vec<&str> = log
        .snapshot()
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::Doorbell { .. } => Some("doorbell"),
            EventKind::Miss { .. } => Some("miss"),
            EventKind::FaultRecord { .. } => Some("fault"),
            EventKind::Fill { .. } => Some("fill"),
            EventKind::Hit { .. } => Some("hit"),
            EventKind::Completion { .. } => Some("completion"),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["doorbell", "miss", "fault", "fill", "hit", "completion"]
    );
}

#[test]
fn a_copy_stops_at_the_first_missing_page_and_keeps_the_bytes_before_it() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let (src, dst) = (h.alloc(0x4000, 4096), h.alloc(0x4000, 4096));
    let data = pattern(0x4000, 5);
    h.write_mem(src, &data);
    h.map_4k(0, 0x10_0000, src, 4);
    // Destination pages 0, 1 and 3 mapped; page 2 missing.
    h.map_4k(0, 0x20_0000, dst, 2);
    h.map_4k(0, 0x20_3000, dst + 0x3000, 1);
    h.submit(&mut queue, &copy(9, 0x20_0000, 0x10_0000, 0x4000));
    let record = h.wait_fault(&mut rings);
    assert_eq!(
        (record.va.0, record.access),
        (0x20_2000, FAULT_ACCESS_WRITE)
    );
    h.abort(0, Status::FaultUnresolved as u32);
    let (_, completion) = h.wait_completion(&mut queue);
    assert_eq!(
        (completion.status, completion.fault_va),
        (Status::FaultUnresolved, 0x20_2000)
    );
    assert_eq!(h.read_mem(dst, 0x2000), data[..0x2000].to_vec());
    assert_eq!(
        h.read_mem(dst + 0x3000, 16),
        vec![0; 16],
        "nothing after the fault"
    );
}

#[test]
fn an_indirect_descriptor_table_carries_a_command() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let (table, command, completion) = (h.alloc(32, 16), h.alloc(64, 8), h.alloc(32, 8));
    h.write_mem(command, &op(Opcode::Nop, 0x55, 0, 0, 0).to_bytes());
    let mut entries = [0u8; 32];
    for (i, (addr, len, flags, next)) in [(command, 56u32, 1u16, 1u16), (completion, 32, 2, 0)]
        .into_iter()
        .enumerate()
    {
        let entry = &mut entries[16 * i..16 * (i + 1)];
        entry[0..8].copy_from_slice(&addr.to_le_bytes());
        entry[8..12].copy_from_slice(&len.to_le_bytes());
        entry[12..14].copy_from_slice(&flags.to_le_bytes());
        entry[14..16].copy_from_slice(&next.to_le_bytes());
    }
    h.write_mem(table, &entries);
    // VIRTQ_DESC_F_INDIRECT = 4.
    h.write_descriptor(&queue, 0, table, 32, 4, 0);
    h.publish(&mut queue, 0);
    h.doorbell(&queue);
    crate::tests::harness::wait_for("the used element", || {
        (h.used_idx(&queue) == 1).then_some(())
    });
    let mut record = [0u8; 32];
    record.copy_from_slice(&h.read_mem(completion, 32));
    let completion = crate::commands::Completion::from_bytes(&record).expect("status");
    assert_eq!((completion.id, completion.status), (0x55, Status::Ok));
}
