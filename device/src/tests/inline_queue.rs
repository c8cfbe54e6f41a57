//! Sequence 16.7 (user-level submission): an inline queue (§7.6) and the context's user
//! doorbell page (§3), replayed through BAR0 and guest memory as a process and its driver
//! would use them.

use crate::commands::{CommandRecord, Completion, Opcode, Status, COMPLETION_SIZE};
use crate::error_code::ErrorCode;
use crate::fault_ring::FAULT_ACCESS_READ;
use crate::pci::PciDevice;
use crate::regs::*;
use crate::tests::harness::Harness;
use crate::tests::sequences::copy;

const RW: u32 = DROPIN_ATTR_READ | DROPIN_ATTR_WRITE;

/// One context's inline queue as a process sees it.
struct Inline {
    ctx: usize,
    size: u32,
    slots: u64,
    completions: u64,
    indices: u64,
    tail: u32,
}

impl Inline {
    /// Sequence 16.7 step 1: the areas allocated and zeroed, the registers programmed with
    /// `CQ_FORMAT` = INLINE, the context enabled.
    fn open(h: &mut Harness, ctx: usize, asid: u16, size: u32) -> Self {
        let n = u64::from(size);
        let slots = h.alloc(INLINE_SLOT_SIZE * n, 64);
        let completions = h.alloc(COMPLETION_SIZE as u64 * n, 32);
        let indices = h.alloc(8, 8);
        h.ctx_write32(ctx, CTX_ASID, u32::from(asid));
        h.ctx_write64(ctx, CQ_DESC_LO, slots);
        h.ctx_write64(ctx, CQ_USED_LO, completions);
        h.ctx_write64(ctx, CQ_AVAIL_LO, indices);
        h.ctx_write32(ctx, CQ_SIZE, size);
        h.ctx_write32(ctx, CQ_READY, CQ_READY_BIT);
        h.ctx_write32(ctx, CQ_FORMAT, CQ_FORMAT_INLINE);
        h.ctx_write32(ctx, CTX_CONTROL, CTX_CONTROL_ENABLE);
        assert_eq!(h.ctx_state(ctx), CTX_STATE_ACTIVE, "inline context active");
        Self {
            ctx,
            size,
            slots,
            completions,
            indices,
            tail: 0,
        }
    }

    /// Step 3: the record into slot `tail mod n`, then the tail; no doorbell.
    fn post(&mut self, h: &Harness, record: &CommandRecord) -> u32 {
        let slot = self.tail % self.size;
        h.write_mem(
            self.slots + u64::from(slot) * INLINE_SLOT_SIZE,
            &record.to_bytes(),
        );
        self.tail = self.tail.wrapping_add(1);
        h.write_mem(self.indices, &self.tail.to_le_bytes());
        slot
    }

    /// `UQ_DOORBELL` on the context's own page.
    fn ring(&self, h: &mut Harness) {
        // CAST: ctx < 64.
        let page = UQ_DOORBELL_BASE + self.ctx as u64 * UQ_DOORBELL_STRIDE;
        h.write32(page, 1);
    }

    fn head(&self, h: &Harness) -> u32 {
        let bytes = h.read_mem(self.indices + INLINE_HEAD_OFFSET, 4);
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// Polls the head until it has passed `done` commands, then reads `slot`'s completion.
    fn wait(&self, h: &mut Harness, done: u32, slot: u32) -> Completion {
        let start = std::time::Instant::now();
        // The head may already be past `done` (later commands completed too).
        while (self.head(h).wrapping_sub(done) as i32) < 0 {
            assert!(
                start.elapsed() < crate::tests::harness::TIMEOUT,
                "head {} (want {done}), context state {} error {}, device error {:#x}",
                self.head(h),
                h.ctx_state(self.ctx),
                h.ctx_error(self.ctx),
                h.read32(REG_DEV_ERROR)
            );
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let mut record = [0u8; COMPLETION_SIZE];
        record.copy_from_slice(&h.read_mem(
            self.completions + u64::from(slot) * COMPLETION_SIZE as u64,
            COMPLETION_SIZE,
        ));
        Completion::from_bytes(&record).expect("a defined status")
    }
}

#[test]
fn commands_posted_in_an_inline_queue_run_and_complete_in_their_slots() {
    let mut h = Harness::new();
    let mut rings = h.bring_up(64, 64);
    let mut q = Inline::open(&mut h, 5, 77, 4);
    let (src, dst) = (h.alloc(8192, 4096), h.alloc(8192, 4096));
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    h.write_mem(src, &data);
    // The source is mapped, the destination's second page is not: the command misses there,
    // the driver resolves the fault, the command resumes, as for a split queue.
    h.map_4k(5, 0x10_0000, src, 2);
    h.drop_in(5, 0x20_0000, dst, RW);
    let slot = q.post(&h, &copy(0xabc, 0x20_0000, 0x10_0000, 8192));
    q.ring(&mut h);
    let fault = h.wait_fault(&mut rings);
    assert_eq!(
        (fault.ctx, fault.va.0, fault.command_id),
        (5, 0x20_1000, 0xabc)
    );
    assert_ne!(fault.access & !FAULT_ACCESS_READ, 0, "a write miss");
    h.drop_in(5, 0x20_1000, dst + 4096, RW);
    h.resume(5);
    let done = q.wait(&mut h, 1, slot);
    assert_eq!((done.id, done.status), (0xabc, Status::Ok));
    assert_eq!(h.read_mem(dst, 8192), data);
    // Several at once, around the end of the slots: in order, each in its own slot.
    let slots: Vec<u32> = (0..4)
        .map(|i| q.post(&h, &copy(100 + i, 0x20_0000 + i * 8, 0x10_0000 + i * 8, 8)))
        .collect();
    assert_eq!(slots, [1, 2, 3, 0]);
    q.ring(&mut h);
    for (i, slot) in slots.iter().enumerate() {
        // CAST: i < 4.
        let done = q.wait(&mut h, 2 + i as u32, *slot);
        assert_eq!((done.id, done.status), (100 + i as u64, Status::Ok));
    }
    // The ordinary doorbell register works on an inline queue too.
    let slot = q.post(&h, &copy(7, 0x20_0000, 0x10_0000, 8));
    h.ctx_write32(5, CQ_DOORBELL, 1);
    assert_eq!(q.wait(&mut h, 6, slot).status, Status::Ok);
}

#[test]
fn a_process_tail_too_far_ahead_stops_only_its_context() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut q = Inline::open(&mut h, 2, 9, 4);
    let mut other = h.open_context(3, 10, 16);
    // A tail 5 ahead of the device with 4 slots: ERR_AVAIL_INDEX, nothing executed.
    h.write_mem(q.indices, &5u32.to_le_bytes());
    q.tail = 5;
    q.ring(&mut h);
    h.wait_state(2, CTX_STATE_ERROR);
    assert_eq!(h.ctx_error(2), u32::from(ErrorCode::AvailIndex.code()));
    assert_eq!(q.head(&h), 0);
    // The other context, and the device, carry on.
    let nop = CommandRecord {
        opcode: Opcode::Nop as u8,
        id: 1,
        ..CommandRecord::default()
    };
    assert_eq!(h.run(&mut other, &nop).status, Status::Ok);
    assert_eq!(h.read32(REG_DEV_ERROR), 0);
}

#[test]
fn a_doorbell_page_rings_only_its_own_context_and_holds_nothing_else() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let mut q = Inline::open(&mut h, 1, 4, 2);
    // The engine looks at a context once when it is enabled: let that pass first.
    h.wait_idle();
    let nop = CommandRecord {
        opcode: Opcode::Nop as u8,
        id: 9,
        ..CommandRecord::default()
    };
    q.post(&h, &nop);
    // Context 2's page, and the rest of context 1's page: no effect.
    h.write32(UQ_DOORBELL_BASE + 2 * UQ_DOORBELL_STRIDE, 1);
    h.write32(UQ_DOORBELL_BASE + UQ_DOORBELL_STRIDE + 8, 1);
    h.wait_idle();
    assert_eq!(q.head(&h), 0, "no doorbell of context 1 was rung");
    assert_eq!(h.read32(UQ_DOORBELL_BASE + UQ_DOORBELL_STRIDE), 0);
    q.ring(&mut h);
    assert_eq!(q.wait(&mut h, 1, 0).status, Status::Ok);
    // Every doorbell page is offered to the host's fast path (ioeventfd in rmnic-vmm).
    let bells = h.device.doorbells();
    for ctx in 0..NUM_CONTEXTS as u64 {
        assert!(bells
            .iter()
            .any(|b| b.offset == UQ_DOORBELL_BASE + ctx * UQ_DOORBELL_STRIDE));
    }
}

#[test]
fn cq_format_is_locked_while_the_context_runs() {
    let mut h = Harness::new();
    h.bring_up(64, 64);
    let q = Inline::open(&mut h, 0, 1, 2);
    h.ctx_write32(q.ctx, CQ_FORMAT, CQ_FORMAT_SPLIT);
    assert_eq!(h.ctx_read32(q.ctx, CQ_FORMAT), CQ_FORMAT_INLINE);
    h.ctx_write32(q.ctx, CTX_CONTROL, 0);
    h.ctx_write32(q.ctx, CQ_FORMAT, 0xffff_ffff);
    assert_eq!(
        h.ctx_read32(q.ctx, CQ_FORMAT),
        CQ_FORMAT_INLINE,
        "bit 0 only"
    );
}
