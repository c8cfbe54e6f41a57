//! One test per specified error path (§14): device errors, context errors, command errors,
//! and the fault-injection hooks that produce DMA errors, lost interrupts and forced
//! evictions.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::commands::{CommandRecord, Opcode, Status};
use crate::error_code::ErrorCode;
use crate::inject::{DmaAccess, DmaPurpose, DmaVerdict, FaultInjector};
use crate::invalidation::{InvalidationDescriptor, INVQ_DESC_KIND};
use crate::regs::*;
use crate::rmnic::{RmnicConfig, RmnicDevice, VECTOR_COMPLETION, VECTOR_ERROR};
use crate::tests::harness::Harness;

const RW: u32 = DROPIN_ATTR_READ | DROPIN_ATTR_WRITE;

fn op(opcode: u8, id: u64, addr0: u64) -> CommandRecord {
    CommandRecord {
        opcode,
        id,
        addr0,
        ..CommandRecord::default()
    }
}

fn dev_error(h: &mut Harness) -> u32 {
    h.read32(REG_DEV_ERROR)
}

#[test]
fn bad_fault_ring_configuration_keeps_the_device_disabled_with_err_fault_ring_config() {
    let mut h = Harness::new();
    h.program_rings(12, 64);
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
    assert_eq!(h.read32(REG_DEV_CONTROL), 0);
    assert_eq!(h.read32(REG_DEV_STATUS), DEV_STATUS_ERROR);
    assert_eq!(
        dev_error(&mut h),
        u32::from(ErrorCode::FaultRingConfig.code())
    );
    assert!(h.triggers().contains(&VECTOR_ERROR));
    // Fix, clear, enable.
    h.write32(REG_FAULT_SIZE, 16);
    h.write32(REG_DEV_ERROR, DEV_ERROR_CODE_MASK);
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
    assert_eq!(h.read32(REG_DEV_STATUS), DEV_STATUS_ENABLED);
}

#[test]
fn bad_invalidation_queue_configuration_is_err_invq_config() {
    let mut h = Harness::new();
    h.program_rings(64, 64);
    h.write64(REG_INVQ_DONE_ADDR_LO, 0x1004);
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
    assert_eq!(dev_error(&mut h), u32::from(ErrorCode::InvqConfig.code()));
    assert_eq!(h.read32(REG_DEV_STATUS) & DEV_STATUS_ENABLED, 0);
}

#[test]
fn a_malformed_invalidation_descriptor_stops_the_queue_and_empties_the_tlb() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    h.open_context(0, 1, 16);
    let frame = h.alloc(0x4000, 4096);
    h.map_4k(0, 0x1000, frame, 4);
    let seq = h.post_invalidation(&mut rings, InvalidationDescriptor::asid(7, 0));
    // Corrupt the kind.
    h.write_mem(rings.invq_base + INVQ_DESC_KIND as u64, &[9]);
    h.write32(REG_INVQ_TAIL, rings.invq_tail);
    crate::tests::harness::wait_for("a device error", || {
        (h.device.register(REG_DEV_ERROR) != 0).then_some(())
    });
    assert_eq!(
        dev_error(&mut h),
        u32::from(ErrorCode::InvDescriptor.code())
    );
    assert_eq!(
        h.read32(REG_INVQ_HEAD),
        0,
        "the queue stops at the bad descriptor"
    );
    assert!(h.device.tlb_entries().is_empty());
    // Rewrite it, clear the error: the queue continues.
    let fixed = InvalidationDescriptor::asid(7, seq);
    h.write_mem(rings.invq_base, &fixed.to_bytes());
    h.write32(REG_DEV_ERROR, DEV_ERROR_CODE_MASK);
    h.wait_done(&rings, seq);
    assert_eq!(h.read32(REG_DEV_STATUS), DEV_STATUS_ENABLED);
}

#[test]
fn a_sequence_number_that_does_not_increase_is_err_inv_sequence() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    h.invalidate(&mut rings, InvalidationDescriptor::global(0));
    rings.next_seq = 1;
    h.post_invalidation(&mut rings, InvalidationDescriptor::global(0));
    h.write32(REG_INVQ_TAIL, rings.invq_tail);
    crate::tests::harness::wait_for("a device error", || {
        (h.device.register(REG_DEV_ERROR) != 0).then_some(())
    });
    assert_eq!(dev_error(&mut h), u32::from(ErrorCode::InvSequence.code()));
}

#[test]
fn an_invalidation_tail_past_the_queue_size_is_err_invq_tail() {
    let mut h = Harness::new();
    h.bring_up(64, 8);
    h.write32(REG_INVQ_TAIL, 9);
    assert_eq!(dev_error(&mut h), u32::from(ErrorCode::InvqTail.code()));
}

#[test]
fn an_invalidation_doorbell_without_a_queue_is_err_invq_tail() {
    let mut h = Harness::new();
    h.bring_up(64, 0);
    h.write32(REG_INVQ_TAIL, 1);
    assert_eq!(dev_error(&mut h), u32::from(ErrorCode::InvqTail.code()));
}

#[test]
fn a_fault_tail_past_the_head_is_err_fault_tail() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.write32(REG_FAULT_TAIL, 1);
    assert_eq!(dev_error(&mut h), u32::from(ErrorCode::FaultTail.code()));
}

#[test]
fn tail_writes_while_the_device_is_disabled_have_no_effect() {
    let mut h = Harness::new();
    h.write32(REG_FAULT_TAIL, 5);
    h.write32(REG_INVQ_TAIL, 5);
    assert_eq!(dev_error(&mut h), 0);
}

/// Fails every DMA of one purpose while armed.
#[derive(Debug)]
struct FailDma {
    purpose: DmaPurpose,
    armed: AtomicBool,
}

impl FailDma {
    fn new(purpose: DmaPurpose) -> Arc<Self> {
        Arc::new(Self {
            purpose,
            armed: AtomicBool::new(true),
        })
    }
}

impl FaultInjector for FailDma {
    fn dma(&self, access: &DmaAccess) -> DmaVerdict {
        if access.purpose == self.purpose && self.armed.load(Ordering::SeqCst) {
            DmaVerdict::Fail
        } else {
            DmaVerdict::Proceed
        }
    }
}

fn with_injector(injector: Arc<dyn FaultInjector>) -> Harness {
    Harness::with_config(RmnicConfig {
        injector,
        ..RmnicConfig::default()
    })
}

#[test]
fn a_fault_ring_the_device_cannot_write_is_refused_at_enable() {
    let mut h = with_injector(FailDma::new(DmaPurpose::FaultRecord));
    h.program_rings(64, 64);
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
    assert_eq!(
        dev_error(&mut h),
        u32::from(ErrorCode::FaultRingConfig.code())
    );
}

#[test]
fn a_failed_fault_record_dma_after_enable_latches_err_dma() {
    let injector = FailDma::new(DmaPurpose::FaultRecord);
    injector.armed.store(false, Ordering::SeqCst);
    let mut h = with_injector(injector.clone());
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    injector.armed.store(true, Ordering::SeqCst);
    h.submit(&mut queue, &op(Opcode::Read64 as u8, 1, 0x1000));
    crate::tests::harness::wait_for("a device error", || {
        (h.device.register(REG_DEV_ERROR) != 0).then_some(())
    });
    assert_eq!(dev_error(&mut h), u32::from(ErrorCode::Dma.code()));
}

#[test]
fn a_failed_data_dma_completes_the_command_with_device_error() {
    let injector = FailDma::new(DmaPurpose::Data);
    let mut h = with_injector(injector.clone());
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    let completion = h.run(&mut queue, &op(Opcode::Read64 as u8, 1, 0x1010));
    assert_eq!(
        (completion.status, completion.fault_va),
        (Status::DeviceError, 0x1010)
    );
    assert_eq!(h.ctx_state(0), CTX_STATE_ACTIVE);
    injector.armed.store(false, Ordering::SeqCst);
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Read64 as u8, 2, 0x1010))
            .status,
        Status::Ok
    );
}

/// The user-facing `dma-error:2` mode: every second data DMA fails; each such command
/// completes with DEVICE_ERROR and the next one works.
#[test]
fn dma_error_mode_fails_every_nth_command_and_the_context_goes_on() {
    let injector = crate::inject::injector_named("dma-error:2", 0).expect("mode");
    let mut h = with_injector(injector);
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    let statuses: Vec<Status> = (1..=4)
        .map(|id| {
            h.run(&mut queue, &op(Opcode::Read64 as u8, id, 0x1010))
                .status
        })
        .collect();
    assert_eq!(
        statuses,
        [
            Status::Ok,
            Status::DeviceError,
            Status::Ok,
            Status::DeviceError
        ]
    );
    assert_eq!(h.ctx_state(0), CTX_STATE_ACTIVE);
}

#[test]
fn a_failed_completion_write_is_err_queue_dma() {
    let mut h = with_injector(FailDma::new(DmaPurpose::Completion));
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    h.submit(&mut queue, &op(Opcode::Nop as u8, 1, 0));
    h.wait_state(0, CTX_STATE_ERROR);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::QueueDma.code()));
    assert!(h.triggers().contains(&VECTOR_ERROR));
}

#[test]
fn an_invalid_queue_configuration_is_err_queue_config() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.program_context(0, 1, 16);
    h.ctx_write32(0, CQ_SIZE, 24);
    h.ctx_write32(0, CTX_CONTROL, CTX_CONTROL_ENABLE);
    assert_eq!(h.ctx_state(0), CTX_STATE_ERROR);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::QueueConfig.code()));
    // ERROR is left by disabling, which clears the code.
    h.ctx_write32(0, CTX_CONTROL, 0);
    assert_eq!(h.ctx_read32(0, CTX_STATUS), CTX_STATE_FREE);
}

#[test]
fn a_queue_that_is_not_ready_is_err_queue_config() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.program_context(0, 1, 16);
    h.ctx_write32(0, CQ_READY, 0);
    h.ctx_write32(0, CTX_CONTROL, CTX_CONTROL_ENABLE);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::QueueConfig.code()));
}

#[test]
fn a_second_context_with_the_same_asid_is_err_asid_in_use() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.open_context(0, 5, 16);
    h.program_context(1, 5, 16);
    h.ctx_write32(1, CTX_CONTROL, CTX_CONTROL_ENABLE);
    assert_eq!(h.ctx_error(1), u32::from(ErrorCode::AsidInUse.code()));
    // Disabling the refused context must not release the owner's ASID.
    h.ctx_write32(1, CTX_CONTROL, 0);
    h.program_context(2, 5, 16);
    h.ctx_write32(2, CTX_CONTROL, CTX_CONTROL_ENABLE);
    assert_eq!(h.ctx_error(2), u32::from(ErrorCode::AsidInUse.code()));
}

#[test]
fn an_available_index_too_far_ahead_is_err_avail_index() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let queue = h.open_context(0, 1, 16);
    h.write_mem(queue.avail + 2, &100u16.to_le_bytes());
    h.doorbell(&queue);
    h.wait_state(0, CTX_STATE_ERROR);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::AvailIndex.code()));
}

#[test]
fn malformed_descriptor_chains_are_err_descriptor_chain() {
    // (first flags, first len, second flags, second len): each breaks one rule.
    let cases: [(u16, u32, u16, u32); 5] = [
        (0, 56, 2, 32), // first without NEXT: a one-descriptor chain
        (3, 56, 2, 32), // first device-writable
        (1, 40, 2, 32), // command too short
        (1, 56, 0, 32), // completion device-readable
        (1, 56, 3, 32), // three descriptors
    ];
    for (i, (flags0, len0, flags1, len1)) in cases.into_iter().enumerate() {
        let mut h = Harness::new();
        h.bring_up(64, 64);
        let mut queue = h.open_context(0, 1, 16);
        let buffer = h.alloc(128, 64);
        h.write_descriptor(&queue, 0, buffer, len0, flags0, 1);
        h.write_descriptor(&queue, 1, buffer + 64, len1, flags1, 2);
        h.write_descriptor(&queue, 2, buffer + 96, 32, 2, 0);
        h.publish(&mut queue, 0);
        h.doorbell(&queue);
        h.wait_state(0, CTX_STATE_ERROR);
        assert_eq!(
            h.ctx_error(0),
            u32::from(ErrorCode::DescriptorChain.code()),
            "case {i}"
        );
    }
}

#[test]
fn a_looping_chain_is_err_descriptor_chain_not_a_hang() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 4);
    let buffer = h.alloc(128, 64);
    h.write_descriptor(&queue, 0, buffer, 56, 1, 1);
    h.write_descriptor(&queue, 1, buffer + 64, 32, 3, 0);
    h.publish(&mut queue, 0);
    h.doorbell(&queue);
    h.wait_state(0, CTX_STATE_ERROR);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::DescriptorChain.code()));
}

#[test]
fn bad_drop_ins_are_err_dropin() {
    let cases: [(u64, u64, u32); 4] = [
        (0x1000, 0x2000, 0),                           // no permission
        (0x1800, 0x2000, RW),                          // VA unaligned
        (0x20_0000, 0x1000, RW | DROPIN_ATTR_2M),      // frame not 2 MiB aligned
        (0x1000, crate::tests::harness::RAM_SIZE, RW), // frame outside guest RAM
    ];
    for (va, gpa, attr) in cases {
        let mut h = Harness::new();
        h.bring_up(64, 64);
        h.open_context(0, 1, 16);
        h.drop_in(0, va, gpa, attr);
        assert_eq!(h.ctx_state(0), CTX_STATE_ERROR, "{va:#x} {gpa:#x} {attr}");
        assert_eq!(h.ctx_error(0), u32::from(ErrorCode::DropIn.code()));
        assert!(h.device.tlb_entries().is_empty());
    }
}

#[test]
fn undefined_context_commands_are_err_context_command() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.open_context(0, 1, 16);
    h.ctx_write32(0, CTX_COMMAND, 0x7f);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::ContextCommand.code()));
}

#[test]
fn an_abort_with_an_undefined_status_is_err_context_command() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(1, 2, 16);
    h.submit(&mut queue, &op(Opcode::Read64 as u8, 1, 0x1000));
    h.wait_fault(&mut rings);
    h.abort(1, 5);
    assert_eq!(h.ctx_error(1), u32::from(ErrorCode::ContextCommand.code()));
}

#[test]
fn command_errors_complete_with_their_status_and_the_context_goes_on() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    assert_eq!(
        h.run(&mut queue, &op(42, 1, 0)).status,
        Status::InvalidOpcode
    );
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Read64 as u8, 2, 0x1004))
            .status,
        Status::Alignment
    );
    let too_long = CommandRecord {
        opcode: Opcode::Fill as u8,
        id: 3,
        addr0: 0x1000,
        length: (1 << 30) + 1,
        ..CommandRecord::default()
    };
    assert_eq!(h.run(&mut queue, &too_long).status, Status::InvalidArgument);
    let reserved = CommandRecord {
        flags: 0x80,
        ..op(Opcode::Nop as u8, 4, 0)
    };
    assert_eq!(h.run(&mut queue, &reserved).status, Status::InvalidArgument);
    assert_eq!(
        h.run(&mut queue, &op(Opcode::Read64 as u8, 5, 0x1008))
            .status,
        Status::Ok
    );
}

#[test]
fn a_device_without_guest_ram_refuses_rings_and_never_panics() {
    let sink = Arc::new(crate::interrupt::testing::RecordingSink::default());
    let mut h = Harness::new();
    // Swap in a memory-less device behind the same probe steps.
    h.device = RmnicDevice::new(sink);
    h.device.set_bar_address(0, 0xe000_0000).expect("aligned");
    use crate::pci::PciDevice;
    h.device.write_config_register(1, 0, &6u32.to_le_bytes());
    h.program_rings(64, 64);
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
    assert_eq!(
        dev_error(&mut h),
        u32::from(ErrorCode::FaultRingConfig.code())
    );
    h.write32(REG_FAULT_SIZE, 0);
    h.write32(REG_INVQ_SIZE, 0);
    h.write32(REG_DEV_ERROR, DEV_ERROR_CODE_MASK);
    h.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
    assert_eq!(h.read32(REG_DEV_STATUS), DEV_STATUS_ENABLED);
    h.program_context(0, 1, 16);
    h.ctx_write32(0, CTX_CONTROL, CTX_CONTROL_ENABLE);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::QueueConfig.code()));
}

#[derive(Debug, Default)]
struct LoseInterrupts {
    lost: AtomicUsize,
}

impl FaultInjector for LoseInterrupts {
    fn interrupt(&self, _vector: u16) -> bool {
        self.lost.fetch_add(1, Ordering::SeqCst);
        false
    }
}

#[test]
fn lost_interrupts_leave_the_used_ring_pollable() {
    let injector = Arc::new(LoseInterrupts::default());
    let mut h = with_injector(injector.clone());
    h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let record = CommandRecord {
        flags: crate::commands::CMD_FLAG_INTERRUPT,
        ..op(Opcode::Nop as u8, 1, 0)
    };
    assert_eq!(h.run(&mut queue, &record).status, Status::Ok);
    h.wait_idle();
    assert!(!h.triggers().contains(&VECTOR_COMPLETION));
    assert_eq!(injector.lost.load(Ordering::SeqCst), 1);
}

#[derive(Debug, Default)]
struct EvictOnce {
    done: AtomicBool,
}

impl FaultInjector for EvictOnce {
    fn evict_on_hit(&self, _ctx: u8, _va: crate::addr::VirtAddr) -> bool {
        !self.done.swap(true, Ordering::SeqCst)
    }
}

#[test]
fn a_forced_eviction_turns_a_hit_into_a_fault() {
    let mut h = with_injector(Arc::new(EvictOnce::default()));
    let mut rings = h.bring_up(64, 64);
    let mut queue = h.open_context(0, 1, 16);
    let frame = h.alloc(4096, 4096);
    h.drop_in(0, 0x1000, frame, RW);
    h.submit(&mut queue, &op(Opcode::Read64 as u8, 1, 0x1000));
    let record = h.wait_fault(&mut rings);
    assert_eq!(record.va.0, 0x1000);
    assert!(h.device.tlb_entries().is_empty());
    h.drop_in(0, 0x1000, frame, RW);
    h.resume(0);
    assert_eq!(h.wait_completion(&mut queue).1.status, Status::Ok);
}

/// Writes `records` (VA | attributes, frame) as a drop-in list and issues DROPIN_LIST for
/// context 0 with `count` records at `list`.
fn drop_in_list(h: &mut Harness, list: u64, records: &[(u64, u64)], count: u32) {
    for (i, (va_attr, gpa)) in records.iter().enumerate() {
        let at = list + i as u64 * DROPIN_RECORD_SIZE;
        h.write_mem(at, &va_attr.to_le_bytes());
        h.write_mem(at + 8, &gpa.to_le_bytes());
    }
    h.ctx_write64(0, DROPIN_LIST_LO, list);
    h.ctx_write32(0, DROPIN_LIST_COUNT, count);
    h.ctx_write32(0, CTX_COMMAND, CTX_CMD_DROPIN_LIST);
}

#[test]
fn a_drop_in_list_installs_every_record_as_separate_drop_ins_would() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.open_context(0, 7, 16);
    let list = h.alloc(4096, 4096);
    let frames = h.alloc(3 * 4096, 4096);
    let huge = h.alloc(2 << 20, 2 << 20);
    let records = [
        (0x10_0000 | u64::from(RW), frames),
        (0x10_1000 | u64::from(DROPIN_ATTR_READ), frames + 0x1000),
        (0x20_0000 | u64::from(RW | DROPIN_ATTR_2M), huge),
    ];
    drop_in_list(&mut h, list, &records, 3);
    assert_eq!(h.ctx_state(0), CTX_STATE_ACTIVE);
    let mut entries: Vec<_> = h
        .device
        .tlb_entries()
        .into_iter()
        .map(|e| (e.fill.asid, e.fill.va.0, e.fill.gpa.0, e.fill.size.bytes()))
        .collect();
    entries.sort_unstable();
    assert_eq!(
        entries,
        [
            (7, 0x10_0000, frames, 4096),
            (7, 0x10_1000, frames + 0x1000, 4096),
            (7, 0x20_0000, huge, 2 << 20)
        ]
    );
}

#[test]
fn bad_drop_in_lists_are_err_dropin_and_stop_at_the_bad_record() {
    // (list address offset, count, second record's VA | attributes)
    let cases: [(u64, u32, u64); 4] = [
        (0, 0, 0x11_0000 | u64::from(RW)),        // no records
        (0, 513, 0x11_0000 | u64::from(RW)),      // more than DROPIN_LIST_MAX
        (8, 2, 0x11_0000 | u64::from(RW)),        // list not 16-byte aligned
        (0, 2, 0x11_0000 | 0x10 | u64::from(RW)), // reserved attribute bits
    ];
    for (offset, count, second) in cases {
        let mut h = Harness::new();
        h.bring_up(64, 64);
        h.open_context(0, 1, 16);
        let list = h.alloc(16384, 4096) + offset;
        let frame = h.alloc(2 * 4096, 4096);
        drop_in_list(
            &mut h,
            list,
            &[(0x10_0000 | u64::from(RW), frame), (second, frame + 0x1000)],
            count,
        );
        assert_eq!(
            h.ctx_state(0),
            CTX_STATE_ERROR,
            "{offset} {count} {second:#x}"
        );
        assert_eq!(h.ctx_error(0), u32::from(ErrorCode::DropIn.code()));
        // STAT_FILLS: drop-ins installed.
        let fills = h.read64(REG_STATS_BASE + 0x10);
        let good_first = count == 2 && offset == 0;
        // The good first record went in before the bad second one stopped the list;
        // otherwise nothing was read, so nothing went in.
        assert_eq!(fills, u64::from(good_first), "{offset} {count} {second:#x}");
    }
    // A list outside guest RAM.
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.open_context(0, 1, 16);
    h.ctx_write64(0, DROPIN_LIST_LO, crate::tests::harness::RAM_SIZE);
    h.ctx_write32(0, DROPIN_LIST_COUNT, 1);
    h.ctx_write32(0, CTX_COMMAND, CTX_CMD_DROPIN_LIST);
    assert_eq!(h.ctx_error(0), u32::from(ErrorCode::DropIn.code()));
}
