//! Segments (spec §19) through BAR0: an importer's commands on (slot, offset) translate in
//! the exporter's space, fault with the segment's slot, are shot down by the exporter's own
//! invalidations, and stop at revocation, detach, bounds and permissions.

use crate::commands::{CommandRecord, Opcode, Status};
use crate::fault_ring::FAULT_ACCESS_WRITE;
use crate::invalidation::InvalidationDescriptor;
use crate::regs::*;
use crate::segments::*;
use crate::tests::harness::Harness;

/// The exporter: context 1, ASID 11. The importer: context 2, ASID 22.
const EXPORTER: usize = 1;
const IMPORTER: usize = 2;
/// The exporter's segment: 4 pages at this VA, backed by frames at `FRAMES`.
const BASE: u64 = 0x7f00_0000_0000;
const FRAMES: u64 = 0x40_0000;

fn export_offset(index: usize, offset: u64) -> u64 {
    EXPORT_TABLE_BASE + index as u64 * EXPORT_ENTRY_SIZE + offset
}

fn export(h: &mut Harness, index: usize, base: u64, length: u64, writable: bool) -> u32 {
    h.write64(export_offset(index, EXP_BASE_LO), base);
    h.write64(export_offset(index, EXP_LENGTH_LO), length);
    let mut control = EXP_CONTROL_VALID | ((EXPORTER as u32) << 8);
    if writable {
        control |= EXP_CONTROL_WRITABLE;
    }
    h.write32(export_offset(index, EXP_CONTROL), control);
    h.read32(export_offset(index, EXP_CONTROL))
}

fn attach(h: &mut Harness, slot: usize, index: u32, writable: bool) -> u32 {
    let mut value = index | ATTACH_VALID;
    if writable {
        value |= ATTACH_WRITABLE;
    }
    h.ctx_write32(IMPORTER, CTX_ATTACH_BASE + 4 * slot as u64, value);
    h.ctx_read32(IMPORTER, CTX_ATTACH_BASE + 4 * slot as u64)
}

fn seg_op(opcode: Opcode, id: u64, addr0: u64, operand0: u64, flags: u8) -> CommandRecord {
    CommandRecord {
        opcode: opcode as u8,
        id,
        flags,
        addr0,
        operand0,
        ..CommandRecord::default()
    }
}

#[test]
fn an_importer_reads_writes_and_faults_in_the_exporters_space() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    h.open_context(EXPORTER, 11, 16);
    let mut queue = h.open_context(IMPORTER, 22, 16);
    assert_eq!(
        export(&mut h, 5, BASE, 0x4000, true),
        EXP_CONTROL_VALID | EXP_CONTROL_WRITABLE | ((EXPORTER as u32) << 8)
    );
    assert_eq!(
        attach(&mut h, 3, 5, true),
        5 | ATTACH_VALID | ATTACH_WRITABLE
    );

    // Nothing dropped in yet: the importer faults, the record names the slot and the
    // exporter's VA, and the exporter's context takes the drop-in.
    let address = segment_address(3, 0x1010);
    h.submit(
        &mut queue,
        &seg_op(Opcode::Write64, 1, address, 0xfeed, CMD_FLAG_SEGMENT_ADDR0),
    );
    let fault = h.wait_fault(&mut rings);
    assert_eq!(fault.ctx as usize, IMPORTER);
    assert_eq!(fault.asid, 22);
    assert_eq!(fault.segment_slot, Some(3));
    assert_eq!(fault.va.0, BASE + 0x1010);
    assert_eq!(fault.access, FAULT_ACCESS_WRITE);
    let info = h.ctx_read32(IMPORTER, FAULT_INFO);
    assert_eq!(
        info & (FAULT_INFO_SEGMENT | FAULT_INFO_SLOT_MASK),
        FAULT_INFO_SEGMENT | (3 << 24)
    );
    h.map_4k(EXPORTER, BASE, FRAMES, 4);
    h.resume(IMPORTER);
    assert_eq!(h.wait_completion(&mut queue).1.status, Status::Ok);
    assert_eq!(h.read_u64(FRAMES + 0x1010), 0xfeed);

    // A COPY from the segment into the importer's own memory.
    h.map_4k(IMPORTER, 0x10_0000, 0x60_0000, 1);
    h.write_mem(FRAMES + 0x2000, &[7u8; 64]);
    let copy = CommandRecord {
        opcode: Opcode::Copy as u8,
        id: 2,
        flags: CMD_FLAG_SEGMENT_ADDR1,
        addr0: 0x10_0000,
        addr1: segment_address(3, 0x2000),
        length: 64,
        ..CommandRecord::default()
    };
    assert_eq!(h.run(&mut queue, &copy).status, Status::Ok);
    assert_eq!(h.read_mem(0x60_0000, 64), vec![7u8; 64]);

    // The exporter's own RANGE invalidation removes what the importer used.
    h.invalidate(
        &mut rings,
        InvalidationDescriptor::range(11, BASE, BASE + 0x4000, 1).expect("valid"),
    );
    h.submit(
        &mut queue,
        &seg_op(Opcode::Read64, 3, address, 0, CMD_FLAG_SEGMENT_ADDR0),
    );
    let again = h.wait_fault(&mut rings);
    assert_eq!((again.segment_slot, again.va.0), (Some(3), BASE + 0x1010));
    // An aborted segment fault reports the segment address.
    h.abort(IMPORTER, Status::FaultUnresolved as u32);
    let (_, aborted) = h.wait_completion(&mut queue);
    assert_eq!(
        (aborted.status, aborted.fault_va),
        (Status::FaultUnresolved, address)
    );
}

#[test]
fn bounds_permissions_and_empty_slots_complete_with_precise_statuses() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.open_context(EXPORTER, 11, 16);
    let mut queue = h.open_context(IMPORTER, 22, 16);
    export(&mut h, 0, BASE, 0x2000, false);
    // A read-only export refuses a writable attachment.
    assert_eq!(attach(&mut h, 0, 0, true), ATTACH_WRITABLE | ATTACH_ERROR);
    assert_eq!(attach(&mut h, 0, 0, false), ATTACH_VALID);
    h.map_4k(EXPORTER, BASE, FRAMES, 2);
    let cases = [
        (Opcode::Write64, segment_address(0, 8), Status::Permission),
        (
            Opcode::Read64,
            segment_address(0, 0x2000),
            Status::SegmentBounds,
        ),
        (
            Opcode::Read64,
            segment_address(1, 0),
            Status::SegmentInvalid,
        ),
        (
            Opcode::Read64,
            segment_address(0xff, 0),
            Status::SegmentInvalid,
        ),
        (Opcode::Read64, segment_address(0, 0x1ff8), Status::Ok),
    ];
    for (id, (opcode, address, status)) in cases.into_iter().enumerate() {
        let done = h.run(
            &mut queue,
            &seg_op(opcode, id as u64, address, 0, CMD_FLAG_SEGMENT_ADDR0),
        );
        assert_eq!(done.status, status, "{opcode:?} at {address:#x}");
        if status != Status::Ok {
            assert_eq!(done.fault_va, address);
        }
    }
    // A FILL running past the end is refused before it writes anything.
    let fill = CommandRecord {
        opcode: Opcode::Fill as u8,
        flags: CMD_FLAG_SEGMENT_ADDR0,
        addr0: segment_address(0, 0x1000),
        length: 0x1001,
        ..CommandRecord::default()
    };
    assert_eq!(h.run(&mut queue, &fill).status, Status::SegmentBounds);
    // Segment flags on an opcode without that address are invalid arguments.
    let nop = seg_op(Opcode::Nop, 9, 0, 0, CMD_FLAG_SEGMENT_ADDR0);
    assert_eq!(h.run(&mut queue, &nop).status, Status::InvalidArgument);
    let read = seg_op(Opcode::Read64, 10, 0, 0, CMD_FLAG_SEGMENT_ADDR1);
    assert_eq!(h.run(&mut queue, &read).status, Status::InvalidArgument);
}

#[test]
fn revocation_detach_and_the_owners_disable_end_every_importers_access() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    h.open_context(EXPORTER, 11, 16);
    let mut queue = h.open_context(IMPORTER, 22, 16);
    h.map_4k(EXPORTER, BASE, FRAMES, 1);
    let read = seg_op(
        Opcode::Read64,
        1,
        segment_address(0, 0),
        0,
        CMD_FLAG_SEGMENT_ADDR0,
    );

    export(&mut h, 0, BASE, 0x1000, true);
    attach(&mut h, 0, 0, true);
    assert_eq!(h.run(&mut queue, &read).status, Status::Ok);
    // Revocation by the driver.
    h.write32(export_offset(0, EXP_CONTROL), 0);
    assert_eq!(h.run(&mut queue, &read).status, Status::SegmentInvalid);
    assert_eq!(h.ctx_read32(IMPORTER, CTX_ATTACH_BASE) & ATTACH_VALID, 0);
    // A new export in the same entry needs a new attachment.
    export(&mut h, 0, BASE, 0x1000, true);
    assert_eq!(h.run(&mut queue, &read).status, Status::SegmentInvalid);
    attach(&mut h, 0, 0, false);
    assert_eq!(h.run(&mut queue, &read).status, Status::Ok);
    // Detach.
    h.ctx_write32(IMPORTER, CTX_ATTACH_BASE, 0);
    assert_eq!(h.run(&mut queue, &read).status, Status::SegmentInvalid);
    // The owner's disable revokes its exports.
    attach(&mut h, 0, 0, false);
    assert_eq!(h.run(&mut queue, &read).status, Status::Ok);
    h.ctx_write32(EXPORTER, CTX_CONTROL, 0);
    assert_eq!(h.run(&mut queue, &read).status, Status::SegmentInvalid);
    assert_eq!(
        h.read32(export_offset(0, EXP_CONTROL)) & EXP_CONTROL_VALID,
        0
    );
    // An export naming a context that is not enabled is refused.
    let refused = export(&mut h, 1, BASE, 0x1000, true);
    assert_eq!(
        refused & (EXP_CONTROL_VALID | EXP_CONTROL_ERROR),
        EXP_CONTROL_ERROR
    );
}
