//! A tiny fake driver for the device-level tests: guest RAM, a bump allocator, the probe and
//! bring-up sequences of the specification, command submission on a virtqueue, fault-ring
//! and invalidation-queue handling — all through BAR0 and guest memory, as a driver would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::commands::{CommandRecord, Completion, COMMAND_SIZE, COMPLETION_SIZE};
use crate::engine::dma::GuestRam;
use crate::fault_ring::{FaultRecord, FAULT_RECORD_SIZE};
use crate::interrupt::testing::{RecordingSink, SinkEvent};
use crate::invalidation::{InvalidationDescriptor, INVQ_DESC_SIZE};
use crate::pci::configuration::{COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE};
use crate::pci::msix::MSIX_CONTROL_ENABLE;
use crate::pci::PciDevice;
use crate::regs::*;
use crate::rmnic::{RmnicConfig, RmnicDevice, RMNIC_MSIX_VECTORS};

/// Guest RAM of the tests.
pub(crate) const RAM_SIZE: u64 = 64 << 20;
/// Where the bump allocator starts (below: free for tests to use directly).
const ALLOC_BASE: u64 = 0x10_0000;
/// How long a test waits for the device before failing.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
/// Configuration-space register of the MSI-X capability (at 0x40).
const MSIX_CAP_REG: usize = 0x40 / 4;

/// Polls `done` until it returns `Some` or [`TIMEOUT`] passes.
pub(crate) fn wait_for<T>(what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Fault ring and invalidation queue of the fake driver.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rings {
    pub(crate) fault_base: u64,
    pub(crate) fault_size: u32,
    pub(crate) fault_tail: u32,
    pub(crate) invq_base: u64,
    pub(crate) invq_size: u32,
    pub(crate) invq_tail: u32,
    pub(crate) done: u64,
    pub(crate) next_seq: u64,
}

/// One context's virtqueue as the fake driver keeps it.
#[derive(Clone, Debug)]
pub(crate) struct CommandQueue {
    pub(crate) ctx: usize,
    pub(crate) size: u16,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    /// Command record and completion buffers, one pair per slot.
    pub(crate) buffers: u64,
    pub(crate) avail_idx: u16,
    pub(crate) used_idx: u16,
}

/// The device with guest RAM, an interrupt recorder and the fake driver state.
pub(crate) struct Harness {
    pub(crate) device: RmnicDevice,
    pub(crate) mem: GuestRam,
    pub(crate) sink: Arc<RecordingSink>,
    next_alloc: u64,
}

impl Harness {
    /// A probed device (BAR0 decoding, bus mastering, MSI-X on with every vector unmasked).
    pub(crate) fn new() -> Self {
        Self::with_config(RmnicConfig::default())
    }

    pub(crate) fn with_config(config: RmnicConfig) -> Self {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
            .expect("anonymous guest RAM");
        let sink = Arc::new(RecordingSink::default());
        let mut device =
            RmnicDevice::with_memory(mem.clone(), config, sink.clone()).expect("device");
        device.set_bar_address(0, 0xe000_0000).expect("aligned");
        device.write_config_register(
            1,
            0,
            &u32::from(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).to_le_bytes(),
        );
        for vector in 0..u64::from(RMNIC_MSIX_VECTORS) {
            let entry = MSIX_TABLE_OFFSET + vector * 16;
            device.write_bar(0, entry, &0xfee0_0000u64.to_le_bytes());
            // CAST: vector < 4.
            device.write_bar(0, entry + 8, &(0x40 + vector as u32).to_le_bytes());
            device.write_bar(0, entry + 12, &0u32.to_le_bytes());
        }
        device.write_config_register(MSIX_CAP_REG, 2, &MSIX_CONTROL_ENABLE.to_le_bytes());
        sink.take();
        Self {
            device,
            mem,
            sink,
            next_alloc: ALLOC_BASE,
        }
    }

    /// `size` zeroed bytes of guest RAM aligned to `align`.
    pub(crate) fn alloc(&mut self, size: u64, align: u64) -> u64 {
        let base = self.next_alloc.next_multiple_of(align);
        self.next_alloc = base + size;
        assert!(self.next_alloc <= RAM_SIZE, "test guest RAM exhausted");
        base
    }

    pub(crate) fn read32(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.device.read_bar(0, offset, &mut data);
        u32::from_le_bytes(data)
    }

    pub(crate) fn read64(&mut self, offset: u64) -> u64 {
        let mut data = [0u8; 8];
        self.device.read_bar(0, offset, &mut data);
        u64::from_le_bytes(data)
    }

    pub(crate) fn write32(&mut self, offset: u64, value: u32) {
        self.device.write_bar(0, offset, &value.to_le_bytes());
    }

    pub(crate) fn write64(&mut self, offset: u64, value: u64) {
        self.device.write_bar(0, offset, &value.to_le_bytes());
    }

    pub(crate) fn ctx_offset(ctx: usize, offset: u64) -> u64 {
        CTX_BLOCK_BASE + ctx as u64 * CTX_BLOCK_SIZE + offset
    }

    pub(crate) fn ctx_read32(&mut self, ctx: usize, offset: u64) -> u32 {
        self.read32(Self::ctx_offset(ctx, offset))
    }

    pub(crate) fn ctx_write32(&mut self, ctx: usize, offset: u64, value: u32) {
        self.write32(Self::ctx_offset(ctx, offset), value);
    }

    pub(crate) fn ctx_write64(&mut self, ctx: usize, offset: u64, value: u64) {
        self.write64(Self::ctx_offset(ctx, offset), value);
    }

    pub(crate) fn ctx_state(&mut self, ctx: usize) -> u32 {
        self.ctx_read32(ctx, CTX_STATUS) & CTX_STATUS_STATE_MASK
    }

    pub(crate) fn ctx_error(&mut self, ctx: usize) -> u32 {
        (self.ctx_read32(ctx, CTX_STATUS) & CTX_STATUS_ERROR_MASK) >> CTX_STATUS_ERROR_SHIFT
    }

    pub(crate) fn write_mem(&self, gpa: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .expect("test address in RAM");
    }

    pub(crate) fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.mem
            .read_slice(&mut bytes, GuestAddress(gpa))
            .expect("test address in RAM");
        bytes
    }

    pub(crate) fn read_u64(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).expect("in RAM")
    }

    /// The triggers recorded since the last call.
    pub(crate) fn triggers(&self) -> Vec<u16> {
        self.sink
            .take()
            .into_iter()
            .filter_map(|event| match event {
                SinkEvent::Trigger(vector) => Some(vector),
                SinkEvent::Configure(..) => None,
            })
            .collect()
    }

    /// Programs the rings (sizes 0 = none) without enabling the device.
    pub(crate) fn program_rings(&mut self, fault_size: u32, invq_size: u32) -> Rings {
        let fault_base = self.alloc(
            u64::from(fault_size.max(1)) * FAULT_RECORD_SIZE as u64,
            4096,
        );
        let invq_base = self.alloc(u64::from(invq_size.max(1)) * INVQ_DESC_SIZE as u64, 4096);
        let done = self.alloc(8, 8);
        self.write64(REG_FAULT_BASE_LO, fault_base);
        self.write32(REG_FAULT_SIZE, fault_size);
        self.write64(REG_INVQ_BASE_LO, invq_base);
        self.write32(REG_INVQ_SIZE, invq_size);
        self.write64(REG_INVQ_DONE_ADDR_LO, done);
        Rings {
            fault_base,
            fault_size,
            fault_tail: 0,
            invq_base,
            invq_size,
            invq_tail: 0,
            done,
            next_seq: 1,
        }
    }

    /// Sequence 16.1: rings programmed, device enabled.
    pub(crate) fn bring_up(&mut self, fault_size: u32, invq_size: u32) -> Rings {
        let rings = self.program_rings(fault_size, invq_size);
        self.write32(REG_DEV_CONTROL, DEV_CONTROL_ENABLE);
        assert_eq!(
            self.read32(REG_DEV_STATUS),
            DEV_STATUS_ENABLED,
            "device enabled"
        );
        rings
    }

    /// Programs context `ctx`'s queue registers (size `size`) without enabling it.
    pub(crate) fn program_context(&mut self, ctx: usize, asid: u16, size: u16) -> CommandQueue {
        let n = u64::from(size);
        let desc = self.alloc(16 * n, 16);
        let avail = self.alloc(6 + 2 * n, 2);
        let used = self.alloc(6 + 8 * n, 4);
        let buffers = self.alloc(n * 128, 64);
        self.ctx_write32(ctx, CTX_ASID, u32::from(asid));
        self.ctx_write64(ctx, CTX_PTROOT_LO, 0x1000);
        self.ctx_write64(ctx, CQ_DESC_LO, desc);
        self.ctx_write64(ctx, CQ_AVAIL_LO, avail);
        self.ctx_write64(ctx, CQ_USED_LO, used);
        self.ctx_write32(ctx, CQ_SIZE, u32::from(size));
        self.ctx_write32(ctx, CQ_READY, 1);
        CommandQueue {
            ctx,
            size,
            desc,
            avail,
            used,
            buffers,
            avail_idx: 0,
            used_idx: 0,
        }
    }

    /// Sequence 16.2: queue programmed, context enabled and ACTIVE.
    pub(crate) fn open_context(&mut self, ctx: usize, asid: u16, size: u16) -> CommandQueue {
        let queue = self.program_context(ctx, asid, size);
        self.ctx_write32(ctx, CTX_CONTROL, CTX_CONTROL_ENABLE);
        assert_eq!(
            self.ctx_state(ctx),
            CTX_STATE_ACTIVE,
            "context {ctx} active"
        );
        queue
    }

    /// Writes a chain at the next slot and publishes it, without ringing the doorbell.
    /// Returns the completion buffer's GPA.
    pub(crate) fn post(&mut self, queue: &mut CommandQueue, record: &CommandRecord) -> u64 {
        // Chains use descriptor pairs (2p, 2p + 1); tests keep at most size / 2 in flight.
        let pairs = (queue.size / 2).max(1);
        let slot = 2 * (queue.avail_idx % pairs);
        let pair = u64::from(slot / 2);
        let command = queue.buffers + pair * 128;
        let completion = command + 64;
        self.write_mem(command, &record.to_bytes());
        self.write_mem(completion, &[0xee; COMPLETION_SIZE]);
        self.write_descriptor(queue, slot, command, COMMAND_SIZE as u32, 1, slot + 1);
        self.write_descriptor(queue, slot + 1, completion, COMPLETION_SIZE as u32, 2, 0);
        self.publish(queue, slot);
        completion
    }

    /// Writes descriptor `index`: address, length, flags, next.
    pub(crate) fn write_descriptor(
        &self,
        queue: &CommandQueue,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.write_mem(queue.desc + 16 * u64::from(index), &bytes);
    }

    /// Puts `head` in the available ring and moves its index.
    pub(crate) fn publish(&self, queue: &mut CommandQueue, head: u16) {
        let entry = queue.avail + 4 + 2 * u64::from(queue.avail_idx % queue.size);
        self.write_mem(entry, &head.to_le_bytes());
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        self.write_mem(queue.avail + 2, &queue.avail_idx.to_le_bytes());
    }

    pub(crate) fn doorbell(&mut self, queue: &CommandQueue) {
        self.ctx_write32(queue.ctx, CQ_DOORBELL, 1);
    }

    /// Posts `record`, rings the doorbell, returns the completion buffer.
    pub(crate) fn submit(&mut self, queue: &mut CommandQueue, record: &CommandRecord) -> u64 {
        let completion = self.post(queue, record);
        self.doorbell(queue);
        completion
    }

    /// The device's used index of `queue`.
    pub(crate) fn used_idx(&self, queue: &CommandQueue) -> u16 {
        let bytes = self.read_mem(queue.used + 2, 2);
        u16::from_le_bytes([bytes[0], bytes[1]])
    }

    /// Waits for the next used element and returns (its head, the completion it names).
    pub(crate) fn wait_completion(&mut self, queue: &mut CommandQueue) -> (u16, Completion) {
        let index = queue.used_idx;
        wait_for("a used element", || {
            (self.used_idx(queue) != index).then_some(())
        });
        let element = queue.used + 4 + 8 * u64::from(index % queue.size);
        let bytes = self.read_mem(element, 8);
        let head = u16::from_le_bytes([bytes[0], bytes[1]]);
        let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        assert_eq!(len, COMPLETION_SIZE as u32, "used len");
        queue.used_idx = index.wrapping_add(1);
        let completion = queue.buffers + u64::from(head / 2) * 128 + 64;
        let mut record = [0u8; COMPLETION_SIZE];
        record.copy_from_slice(&self.read_mem(completion, COMPLETION_SIZE));
        (
            head,
            Completion::from_bytes(&record).expect("a defined status"),
        )
    }

    /// Submits `record` and waits for its completion.
    pub(crate) fn run(&mut self, queue: &mut CommandQueue, record: &CommandRecord) -> Completion {
        self.submit(queue, record);
        self.wait_completion(queue).1
    }

    /// Drops in a translation for `ctx`.
    pub(crate) fn drop_in(&mut self, ctx: usize, va: u64, gpa: u64, attr: u32) {
        self.ctx_write64(ctx, DROPIN_VA_LO, va);
        self.ctx_write64(ctx, DROPIN_GPA_LO, gpa);
        self.ctx_write32(ctx, DROPIN_ATTR, attr);
        self.ctx_write32(ctx, CTX_COMMAND, CTX_CMD_DROPIN);
    }

    /// Drops in `pages` 4 KiB read-write pages from `va` onto `gpa`.
    pub(crate) fn map_4k(&mut self, ctx: usize, va: u64, gpa: u64, pages: u64) {
        for page in 0..pages {
            self.drop_in(
                ctx,
                va + page * 4096,
                gpa + page * 4096,
                DROPIN_ATTR_READ | DROPIN_ATTR_WRITE,
            );
        }
    }

    pub(crate) fn resume(&mut self, ctx: usize) {
        self.ctx_write32(ctx, CTX_COMMAND, CTX_CMD_RESUME);
    }

    pub(crate) fn abort(&mut self, ctx: usize, status: u32) {
        self.ctx_write32(
            ctx,
            CTX_COMMAND,
            CTX_CMD_ABORT | (status << CTX_CMD_ABORT_STATUS_SHIFT),
        );
    }

    /// The next fault record if its sequence says it is complete; consumes it.
    pub(crate) fn take_fault(&mut self, rings: &mut Rings) -> Option<FaultRecord> {
        let slot = u64::from(rings.fault_tail % rings.fault_size);
        let mut bytes = [0u8; FAULT_RECORD_SIZE];
        bytes.copy_from_slice(&self.read_mem(rings.fault_base + slot * 32, FAULT_RECORD_SIZE));
        let (record, sequence) = FaultRecord::from_bytes(&bytes);
        if sequence != rings.fault_tail.wrapping_add(1) {
            return None;
        }
        rings.fault_tail = rings.fault_tail.wrapping_add(1);
        self.write32(REG_FAULT_TAIL, rings.fault_tail);
        Some(record)
    }

    /// Waits for the next fault record.
    pub(crate) fn wait_fault(&mut self, rings: &mut Rings) -> FaultRecord {
        let start = Instant::now();
        loop {
            if let Some(record) = self.take_fault(rings) {
                return record;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for a fault record"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Writes `descriptor` (its sequence replaced by the next one) without the doorbell.
    pub(crate) fn post_invalidation(
        &mut self,
        rings: &mut Rings,
        descriptor: InvalidationDescriptor,
    ) -> u64 {
        let seq = rings.next_seq;
        rings.next_seq += 1;
        let descriptor = InvalidationDescriptor { seq, ..descriptor };
        let slot = u64::from(rings.invq_tail % rings.invq_size);
        self.write_mem(rings.invq_base + slot * 32, &descriptor.to_bytes());
        rings.invq_tail = rings.invq_tail.wrapping_add(1);
        seq
    }

    /// Posts `descriptor`, rings the doorbell, waits for the done word to reach it.
    pub(crate) fn invalidate(&mut self, rings: &mut Rings, descriptor: InvalidationDescriptor) {
        let seq = self.post_invalidation(rings, descriptor);
        self.write32(REG_INVQ_TAIL, rings.invq_tail);
        self.wait_done(rings, seq);
    }

    pub(crate) fn wait_done(&self, rings: &Rings, seq: u64) {
        wait_for("the invalidation done word", || {
            (self.read_u64(rings.done) >= seq).then_some(())
        });
    }

    /// Waits until context `ctx` is in `state`.
    pub(crate) fn wait_state(&mut self, ctx: usize, state: u32) {
        let start = Instant::now();
        while self.ctx_state(ctx) != state {
            assert!(
                start.elapsed() < TIMEOUT,
                "context {ctx} never reached state {state}"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Waits until the engine has nothing queued or running.
    pub(crate) fn wait_idle(&self) {
        wait_for("an idle engine", || self.device.engine_idle().then_some(()));
    }
}
