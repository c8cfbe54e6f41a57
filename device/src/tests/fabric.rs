//! Remote segments (spec §20) between two devices joined by an in-process link: an importer on
//! device B reads, writes and runs atomics on memory device A exports; A's misses go to its
//! (fake) driver as remote fault records; A's invalidations reach B's remote TLB before they
//! complete, or fence B within the bound; revocation ends B's access.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rmnic_fabric::protocol::{Message, NodeId};

use crate::commands::{CommandRecord, Opcode, Status};
use crate::fabric::{
    FabricPort, PortError, REMOTE_ANSWER_RESOLVED, REMOTE_ANSWER_STATUS_SHIFT,
    REMOTE_ANSWER_UNRESOLVED,
};
use crate::fault_ring::FaultRecord;
use crate::invalidation::InvalidationDescriptor;
use crate::regs::*;
use crate::rmnic::FabricEndpoint;
use crate::segments::*;
use crate::stats::GlobalCounter;
use crate::tests::harness::{CommandQueue, Harness, Rings};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
/// A's exporting context and B's importing context.
const EXPORTER: usize = 1;
const IMPORTER: usize = 2;
const BASE: u64 = 0x7f00_0000_0000;
const FRAMES: u64 = 0x40_0000;
const KEY: u64 = 0x5e6_0001;

/// One end of an in-process link: requests are served by the other device on a thread of
/// their own (as a VMM's link would), replies come back through a channel.
#[derive(Debug)]
struct Loopback {
    me: NodeId,
    peer: NodeId,
    other: FabricEndpoint,
    /// Planted link fault: invalidations are lost.
    drop_invalidations: AtomicBool,
}

impl FabricPort for Loopback {
    fn peer(&self) -> NodeId {
        self.peer
    }

    fn request(&self, request: Message, timeout: Duration) -> Result<Message, PortError> {
        if self.drop_invalidations.load(Ordering::Relaxed)
            && matches!(request, Message::Invalidate { .. })
        {
            std::thread::sleep(timeout);
            return Err(PortError::Timeout(timeout));
        }
        let (tx, rx) = mpsc::channel();
        let (other, me) = (self.other.clone(), self.me);
        std::thread::spawn(move || {
            let _ = tx.send(other.serve(me, request));
        });
        match rx.recv_timeout(timeout) {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(PortError::Down("no answer".into())),
            Err(_) => Err(PortError::Timeout(timeout)),
        }
    }

    fn send(&self, message: Message) -> Result<(), PortError> {
        let (other, me) = (self.other.clone(), self.me);
        std::thread::spawn(move || {
            let _ = other.serve(me, message);
        });
        Ok(())
    }
}

struct Pair {
    a: Harness,
    b: Harness,
    a_rings: Rings,
    b_queue: CommandQueue,
    a_port: Arc<Loopback>,
}

fn export_offset(index: usize, offset: u64) -> u64 {
    EXPORT_TABLE_BASE + index as u64 * EXPORT_ENTRY_SIZE + offset
}

/// A exports 4 pages (2 dropped in) with KEY; B attaches slot 0, writable.
fn pair() -> Pair {
    let mut a = Harness::new();
    let mut b = Harness::new();
    let a_port = Arc::new(Loopback {
        me: A,
        peer: B,
        other: b.device.fabric_endpoint(),
        drop_invalidations: AtomicBool::new(false),
    });
    let b_port = Arc::new(Loopback {
        me: B,
        peer: A,
        other: a.device.fabric_endpoint(),
        drop_invalidations: AtomicBool::new(false),
    });
    a.device.connect_fabric(Some(a_port.clone()));
    b.device.connect_fabric(Some(b_port));
    let a_rings = a.bring_up(64, 64);
    b.bring_up(64, 64);
    a.open_context(EXPORTER, 11, 16);
    let b_queue = b.open_context(IMPORTER, 22, 16);
    a.map_4k(EXPORTER, BASE, FRAMES, 2);
    a.write64(export_offset(0, EXP_BASE_LO), BASE);
    a.write64(export_offset(0, EXP_LENGTH_LO), 0x4000);
    a.write64(export_offset(0, EXP_KEY_LO), KEY);
    let control =
        EXP_CONTROL_VALID | EXP_CONTROL_WRITABLE | EXP_CONTROL_REMOTE | ((EXPORTER as u32) << 8);
    a.write32(export_offset(0, EXP_CONTROL), control);
    assert_eq!(a.read32(export_offset(0, EXP_CONTROL)), control);
    b.ctx_write64(IMPORTER, CTX_RKEY_LO, KEY);
    b.ctx_write32(
        IMPORTER,
        CTX_ATTACH_BASE,
        ATTACH_VALID | ATTACH_WRITABLE | ATTACH_REMOTE,
    );
    assert_eq!(
        b.ctx_read32(IMPORTER, CTX_ATTACH_BASE),
        ATTACH_VALID | ATTACH_WRITABLE | ATTACH_REMOTE
    );
    assert_eq!(b.ctx_read32(IMPORTER, CTX_RLENGTH_LO), 0x4000);
    Pair {
        a,
        b,
        a_rings,
        b_queue,
        a_port,
    }
}

fn seg(opcode: Opcode, id: u64, offset: u64, operand0: u64) -> CommandRecord {
    CommandRecord {
        opcode: opcode as u8,
        id,
        flags: CMD_FLAG_SEGMENT_ADDR0,
        addr0: segment_address(0, offset),
        operand0,
        ..CommandRecord::default()
    }
}

/// A's fake driver answers the next remote fault record: drops `frame` in for its VA (or
/// answers unresolved when `frame` is None).
fn answer_remote_fault(p: &mut Pair, frame: Option<u64>) -> FaultRecord {
    let record = p.a.wait_fault(&mut p.a_rings);
    assert!(record.remote, "a remote fault record: {record:?}");
    assert_eq!(
        (record.ctx as usize, record.segment_slot),
        (EXPORTER, Some(0))
    );
    // CAST: the tag is 16 bits.
    let tag = record.command_id as u32;
    let status = match frame {
        Some(gpa) => {
            p.a.drop_in(
                EXPORTER,
                record.va.0 & !0xfff,
                gpa,
                DROPIN_ATTR_READ | DROPIN_ATTR_WRITE,
            );
            REMOTE_ANSWER_RESOLVED
        }
        None => REMOTE_ANSWER_UNRESOLVED,
    };
    p.a.write32(
        REG_REMOTE_ANSWER,
        tag | (u32::from(status) << REMOTE_ANSWER_STATUS_SHIFT),
    );
    record
}

#[test]
fn an_importer_on_another_device_reads_writes_and_runs_atomics() {
    let mut p = pair();
    p.a.write_mem(FRAMES + 0x10, &0x1111_u64.to_le_bytes());
    let read = p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 1, 0x10, 0));
    assert_eq!((read.status, read.result), (Status::Ok, 0x1111));
    let write =
        p.b.run(&mut p.b_queue, &seg(Opcode::Write64, 2, 0x1008, 0x2222));
    assert_eq!(write.status, Status::Ok);
    assert_eq!(p.a.read_u64(FRAMES + 0x1008), 0x2222);
    let add = p.b.run(&mut p.b_queue, &seg(Opcode::FetchAdd, 3, 0x10, 5));
    assert_eq!((add.status, add.result), (Status::Ok, 0x1111));
    assert_eq!(p.a.read_u64(FRAMES + 0x10), 0x1116);
    // COPY out of the remote segment, across its first page boundary, into B's memory.
    p.b.map_4k(IMPORTER, 0x10_0000, 0x60_0000, 2);
    let pattern: Vec<u8> = (0..0x1800u32).map(|i| (i * 7) as u8).collect();
    p.a.write_mem(FRAMES + 0x800, &pattern);
    let copy = CommandRecord {
        opcode: Opcode::Copy as u8,
        id: 4,
        flags: CMD_FLAG_SEGMENT_ADDR1,
        addr0: 0x10_0000,
        addr1: segment_address(0, 0x800),
        length: 0x1800,
        ..CommandRecord::default()
    };
    assert_eq!(p.b.run(&mut p.b_queue, &copy).status, Status::Ok);
    assert_eq!(p.b.read_mem(0x60_0000, 0x1800), pattern);
    // And back into the segment.
    let back = CommandRecord {
        flags: CMD_FLAG_SEGMENT_ADDR0,
        addr0: segment_address(0, 0x100),
        addr1: 0x10_0000,
        length: 0x100,
        id: 5,
        ..copy
    };
    assert_eq!(p.b.run(&mut p.b_queue, &back).status, Status::Ok);
    assert_eq!(
        p.a.read_mem(FRAMES + 0x100, 0x100),
        pattern[..0x100].to_vec()
    );
    assert!(p.a.device.counter(GlobalCounter::RemoteAccesses) >= 6);

    // Page 2 is not in A's TLB: A's driver resolves it through a remote fault record.
    p.b.submit(&mut p.b_queue, &seg(Opcode::Write64, 6, 0x2000, 0x3333));
    let record = answer_remote_fault(&mut p, Some(FRAMES + 0x2000));
    assert_eq!(record.va.0, BASE + 0x2000);
    assert_eq!(p.b.wait_completion(&mut p.b_queue).1.status, Status::Ok);
    assert_eq!(p.a.read_u64(FRAMES + 0x2000), 0x3333);
    // Page 3 cannot be resolved: B's command fails with the segment address.
    p.b.submit(&mut p.b_queue, &seg(Opcode::Read64, 7, 0x3000, 0));
    answer_remote_fault(&mut p, None);
    let failed = p.b.wait_completion(&mut p.b_queue).1;
    assert_eq!(
        (failed.status, failed.fault_va),
        (Status::FaultUnresolved, segment_address(0, 0x3000))
    );
    // Bounds are B's own check.
    let beyond = p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 8, 0x4000, 0));
    assert_eq!(beyond.status, Status::SegmentBounds);
}

#[test]
fn the_exporters_invalidation_waits_for_the_importers_remote_tlb() {
    let mut p = pair();
    let read = p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 1, 0, 0));
    assert_eq!(read.status, Status::Ok);
    let b_endpoint = p.b.device.fabric_endpoint();
    assert_eq!(b_endpoint.remote_tlb_entries(), 1);
    p.a.invalidate(
        &mut p.a_rings,
        InvalidationDescriptor::range(11, BASE, BASE + 0x1000, 1).expect("valid"),
    );
    // When the exporter's invalidation completed, the importer's cache was already empty.
    assert_eq!(b_endpoint.remote_tlb_entries(), 0);
    assert_eq!(p.a.device.counter(GlobalCounter::RemoteShootdowns), 1);
    let nanos = p.a.device.counter(GlobalCounter::RemoteShootdownNanos);
    eprintln!("remote shootdown round trip (in-process link): {nanos} ns");
    assert!(nanos > 0);
    // An invalidation of a range B holds nothing of needs no round trip.
    p.a.invalidate(
        &mut p.a_rings,
        InvalidationDescriptor::range(11, BASE + 0x1000, BASE + 0x2000, 2).expect("valid"),
    );
    assert_eq!(p.a.device.counter(GlobalCounter::RemoteShootdowns), 1);
    // B's next access of page 0 needs A's driver again (A's entry went too).
    p.b.submit(&mut p.b_queue, &seg(Opcode::Read64, 2, 8, 0));
    answer_remote_fault(&mut p, Some(FRAMES));
    assert_eq!(p.b.wait_completion(&mut p.b_queue).1.status, Status::Ok);
}

#[test]
fn an_importer_that_does_not_acknowledge_is_fenced_within_the_bound() {
    let mut p = pair();
    assert_eq!(
        p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 1, 0, 0))
            .status,
        Status::Ok
    );
    p.a_port.drop_invalidations.store(true, Ordering::Relaxed);
    let start = Instant::now();
    p.a.invalidate(
        &mut p.a_rings,
        InvalidationDescriptor::range(11, BASE, BASE + 0x1000, 1).expect("valid"),
    );
    eprintln!(
        "invalidation with a silent importer completed in {:?}",
        start.elapsed()
    );
    assert_eq!(p.a.device.counter(GlobalCounter::Fences), 1);
    assert_eq!(p.a.device.counter(GlobalCounter::RemoteShootdowns), 0);
    // B still caches page 0, but A refuses every access of a fenced peer.
    let refused = p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 2, 0x1000, 0));
    assert_eq!(refused.status, Status::SegmentInvalid);
    let stale = p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 3, 0, 0));
    assert_eq!(stale.status, Status::SegmentInvalid);
}

#[test]
fn revoking_the_export_ends_the_remote_attachment() {
    let mut p = pair();
    assert_eq!(
        p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 1, 0, 0))
            .status,
        Status::Ok
    );
    p.a.write32(export_offset(0, EXP_CONTROL), 0);
    // The revocation reaches B asynchronously; its attachment then reads invalid.
    let start = Instant::now();
    while p.b.ctx_read32(IMPORTER, CTX_ATTACH_BASE) & ATTACH_VALID != 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "never revoked");
        std::thread::sleep(Duration::from_millis(1));
    }
    let after = p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 2, 0, 0));
    assert_eq!(after.status, Status::SegmentInvalid);
    // An unknown key is refused with ERROR.
    p.b.ctx_write64(IMPORTER, CTX_RKEY_LO, KEY + 1);
    p.b.ctx_write32(IMPORTER, CTX_ATTACH_BASE + 4, ATTACH_VALID | ATTACH_REMOTE);
    assert_eq!(
        p.b.ctx_read32(IMPORTER, CTX_ATTACH_BASE + 4) & (ATTACH_VALID | ATTACH_ERROR),
        ATTACH_ERROR
    );
}

#[test]
fn a_lost_link_fences_an_attached_importer_and_invalidates_remote_attachments() {
    let mut p = pair();
    assert_eq!(
        p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 1, 0, 0))
            .status,
        Status::Ok
    );
    // The exporter's side: B is attached, so it is fenced.
    assert!(p.a.device.fabric_endpoint().link_lost(B));
    assert_eq!(p.a.device.counter(GlobalCounter::Fences), 1);
    // An invalidation now has no one to wait for.
    p.a.invalidate(
        &mut p.a_rings,
        InvalidationDescriptor::range(11, BASE, BASE + 0x1000, 1).expect("valid"),
    );
    assert_eq!(p.a.device.counter(GlobalCounter::RemoteShootdowns), 0);
    // The importer's side: its remote attachment is invalid, its cache empty.
    let b_endpoint = p.b.device.fabric_endpoint();
    assert!(!b_endpoint.link_lost(A));
    assert_eq!(b_endpoint.remote_tlb_entries(), 0);
    assert_eq!(b_endpoint.peer(), None);
    assert_eq!(p.b.ctx_read32(IMPORTER, CTX_ATTACH_BASE) & ATTACH_VALID, 0);
    let after = p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 2, 0, 0));
    assert_eq!(after.status, Status::SegmentInvalid);
}

#[test]
fn detaching_the_last_remote_attachment_releases_the_importers_grants() {
    let mut p = pair();
    assert_eq!(
        p.b.run(&mut p.b_queue, &seg(Opcode::Read64, 1, 0, 0))
            .status,
        Status::Ok
    );
    let a_endpoint = p.a.device.fabric_endpoint();
    assert!(a_endpoint.peer_attached(B));
    p.b.ctx_write32(IMPORTER, CTX_ATTACH_BASE, 0);
    let start = Instant::now();
    while a_endpoint.peer_attached(B) {
        assert!(start.elapsed() < Duration::from_secs(5), "never detached");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(p.b.device.fabric_endpoint().remote_tlb_entries(), 0);
    // Nothing is forwarded to a node that holds nothing any more.
    p.a.invalidate(
        &mut p.a_rings,
        InvalidationDescriptor::range(11, BASE, BASE + 0x1000, 1).expect("valid"),
    );
    assert_eq!(p.a.device.counter(GlobalCounter::RemoteShootdowns), 0);
    assert_eq!(p.a.device.counter(GlobalCounter::Fences), 0);
}
