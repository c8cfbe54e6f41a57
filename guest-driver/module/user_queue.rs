// SPDX-License-Identifier: GPL-2.0

//! A context's user queue (ABI 6, device 1.5): the inline command queue (device spec §7.6) a
//! process maps and drives itself, posting commands and ringing its context's own doorbell
//! page with no system call, like GRU's context window or an RDMA queue pair.
//!
//! The queue carries no guest-physical address per command (the slots, completions and index
//! block sit at addresses the driver programs once), so nothing the process writes can point
//! the device at another process's memory: every address in a command is a VA of this
//! context, translated through TLB entries only the driver installs. The kernel keeps the
//! miss path and the invalidations; the process never sees them.

use crate::dma::CoherentBuffer;
use crate::hw::Hw;
use crate::pci;
use crate::regs::*;
use crate::uapi;
use crate::vma::Vma;
use kernel::prelude::*;

/// Slots of a user queue.
const SLOTS: u32 = uapi::USER_QUEUE_SLOTS;
/// Completion array: right after the slots.
const COMPLETIONS_OFFSET: usize = INLINE_SLOT_SIZE * SLOTS as usize;
/// Index block (tail, head): right after the completions, on a cache line of its own.
const INDICES_OFFSET: usize = COMPLETIONS_OFFSET + COMPLETION_SIZE * SLOTS as usize;
const BUFFER_SIZE: usize = INDICES_OFFSET + 64;

// The device's alignment rules (64-byte slots, 32-byte completions, 8-byte index block) and
// the ABI's description of the layout.
const _: () = assert!(
    uapi::USER_SLOT_SIZE as usize == INLINE_SLOT_SIZE
        && COMPLETIONS_OFFSET % 32 == 0
        && INDICES_OFFSET % 64 == 0
        && SLOTS.is_power_of_two()
);

/// The queue memory of one context, shared by the device and the process.
pub(crate) struct UserQueue {
    mem: CoherentBuffer,
}

impl UserQueue {
    /// Allocates the queue, zeroed (both indices start at 0). May sleep.
    pub(crate) fn new(dev: &pci::Device) -> Result<Self> {
        let mem = CoherentBuffer::alloc(dev, BUFFER_SIZE)?;
        mem.fill_zero();
        Ok(Self { mem })
    }

    /// Programs context `ctx`'s queue registers for this queue, `CQ_FORMAT` = inline. The
    /// context must be disabled (the registers are locked while it runs).
    pub(crate) fn program(&self, hw: &Hw, ctx: usize) -> Result {
        let base = self.mem.dma_addr();
        hw.ctx_write64(ctx, CQ_DESC_LO, base)?;
        hw.ctx_write64(ctx, CQ_USED_LO, base + COMPLETIONS_OFFSET as u64)?;
        hw.ctx_write64(ctx, CQ_AVAIL_LO, base + INDICES_OFFSET as u64)?;
        hw.ctx_write(ctx, CQ_SIZE, SLOTS)?;
        hw.ctx_write(ctx, CQ_FORMAT, CQ_FORMAT_INLINE)?;
        hw.ctx_write(ctx, CQ_READY, 1)
    }

    /// The layout `RMNIC_IOC_USER_QUEUE` reports.
    pub(crate) fn layout() -> uapi::UserQueue {
        uapi::UserQueue {
            slots: SLOTS,
            slot_size: uapi::USER_SLOT_SIZE,
            completions_offset: COMPLETIONS_OFFSET as u32,
            indices_offset: INDICES_OFFSET as u32,
            map_length: BUFFER_SIZE.next_multiple_of(kernel::page::PAGE_SIZE) as u64,
            doorbell_offset: uapi::USER_DOORBELL_MMAP_OFFSET,
        }
    }

    /// Commands the device has completed (the head it publishes, free-running).
    pub(crate) fn head(&self) -> Result<u32> {
        self.mem
            .load_acquire::<u32>(INDICES_OFFSET + uapi::USER_HEAD_OFFSET as usize)
    }

    /// Maps the queue into `vma` (offset 0, at most the whole queue).
    pub(crate) fn map_into(&self, vma: &mut Vma<'_>) -> Result {
        self.mem.map_into(vma)
    }
}
