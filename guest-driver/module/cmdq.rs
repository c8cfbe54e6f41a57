// SPDX-License-Identifier: GPL-2.0

//! A context's command queue: a virtio split ring (descriptor table, available ring, used
//! ring) in coherent DMA memory, where each command is a chain of two descriptors: the
//! device-readable command and the device-writable completion record.
//!
//! Slot `s` always uses descriptors `2s` and `2s + 1` and its own command and completion
//! buffers, and the device completes a context's commands in order, so slots are reused
//! round-robin and "submitted - collected < SLOTS" is the only bookkeeping needed.

use crate::hw::Hw;
use crate::dma::CoherentBuffer;
use crate::pci;
use crate::regs::*;
use crate::uapi;
use kernel::prelude::*;

/// Descriptors in the ring (two per command).
pub(crate) const QUEUE_SIZE: u32 = 256;
/// Commands that can be in flight.
pub(crate) const SLOTS: u32 = QUEUE_SIZE / 2;

// Layout of the coherent buffer (virtio 1.x split ring alignment: 16 / 2 / 4 bytes).
const DESC_OFFSET: usize = 0;
const AVAIL_OFFSET: usize = 16 * QUEUE_SIZE as usize; // 4096
const USED_OFFSET: usize = AVAIL_OFFSET + 4096;
const COMMANDS_OFFSET: usize = USED_OFFSET + 4096;
const COMPLETIONS_OFFSET: usize = COMMANDS_OFFSET + COMMAND_SIZE * SLOTS as usize;
const BUFFER_SIZE: usize = COMPLETIONS_OFFSET + COMPLETION_SIZE * SLOTS as usize;

/// Producer/consumer indices, guarded by the owning context's queue lock.
pub(crate) struct Indices {
    /// Commands made available (free-running).
    pub(crate) submitted: u32,
    /// Completions handed to user space (free-running).
    pub(crate) collected: u32,
}

/// The ring memory of one context.
pub(crate) struct CommandQueue {
    mem: CoherentBuffer,
}

impl CommandQueue {
    /// Allocates and zeroes the ring. May sleep.
    pub(crate) fn new(dev: &pci::Device) -> Result<Self> {
        let mem = CoherentBuffer::alloc(dev, BUFFER_SIZE)?;
        mem.fill_zero();
        Ok(Self { mem })
    }

    /// Programs context `ctx`'s queue registers.
    pub(crate) fn program(&self, hw: &Hw, ctx: usize) -> Result {
        let base = self.mem.dma_addr();
        let desc = base + DESC_OFFSET as u64;
        let avail = base + AVAIL_OFFSET as u64;
        let used = base + USED_OFFSET as u64;
        hw.ctx_write64(ctx, CQ_DESC_LO, desc)?;
        hw.ctx_write64(ctx, CQ_AVAIL_LO, avail)?;
        hw.ctx_write64(ctx, CQ_USED_LO, used)?;
        hw.ctx_write(ctx, CQ_SIZE, QUEUE_SIZE)?;
        // A context's registers outlive it: the slot's previous owner may have left an inline
        // queue's format behind (device 1.5; an older device ignores the write).
        hw.ctx_write(ctx, CQ_FORMAT, CQ_FORMAT_SPLIT)?;
        hw.ctx_write(ctx, CQ_READY, 1)
    }

    /// Writes `cmd` into the next slot and makes it available (no doorbell). The caller
    /// checked there is room.
    pub(crate) fn push(&self, idx: &mut Indices, cmd: &uapi::Command) -> Result {
        let slot = (idx.submitted % SLOTS) as usize;
        let cmd_off = COMMANDS_OFFSET + slot * COMMAND_SIZE;
        let comp_off = COMPLETIONS_OFFSET + slot * COMPLETION_SIZE;
        let m = &self.mem;
        m.write::<u8>(cmd_off, cmd.opcode)?;
        // Every command asks for a completion interrupt: waiters sleep on it.
        m.write::<u8>(cmd_off + 1, cmd.flags | uapi::CMD_FLAG_INTERRUPT)?;
        m.write::<u16>(cmd_off + 2, 0)?;
        m.write::<u32>(cmd_off + 4, 0)?;
        m.write::<u64>(cmd_off + 8, cmd.id)?;
        m.write::<u64>(cmd_off + 16, cmd.addr0)?;
        m.write::<u64>(cmd_off + 24, cmd.addr1)?;
        m.write::<u64>(cmd_off + 32, cmd.length)?;
        m.write::<u64>(cmd_off + 40, cmd.operand0)?;
        m.write::<u64>(cmd_off + 48, cmd.operand1)?;
        m.write::<u32>(comp_off + 8, u32::MAX)?;

        let head = 2 * slot;
        let base = m.dma_addr();
        let desc = |i: usize| DESC_OFFSET + 16 * i;
        m.write::<u64>(desc(head), base + cmd_off as u64)?;
        m.write::<u32>(desc(head) + 8, COMMAND_SIZE as u32)?;
        m.write::<u16>(desc(head) + 12, VIRTQ_DESC_F_NEXT)?;
        m.write::<u16>(desc(head) + 14, (head + 1) as u16)?;
        m.write::<u64>(desc(head + 1), base + comp_off as u64)?;
        m.write::<u32>(desc(head + 1) + 8, COMPLETION_SIZE as u32)?;
        m.write::<u16>(desc(head + 1) + 12, VIRTQ_DESC_F_WRITE)?;
        m.write::<u16>(desc(head + 1) + 14, 0)?;

        let avail_slot = (idx.submitted % QUEUE_SIZE) as usize;
        m.write::<u16>(AVAIL_OFFSET + 4 + 2 * avail_slot, head as u16)?;
        idx.submitted = idx.submitted.wrapping_add(1);
        // Release: descriptors and command are visible before the index that publishes them.
        m.store_release::<u16>(AVAIL_OFFSET + 2, idx.submitted as u16)
    }

    /// Completions the device has produced that were not collected yet.
    pub(crate) fn ready(&self, idx: &Indices) -> u32 {
        let used = self.mem.load_acquire::<u16>(USED_OFFSET + 2).unwrap_or(0);
        u32::from(used.wrapping_sub(idx.collected as u16))
    }

    /// Takes the oldest uncollected completion; `ready()` must be non-zero.
    pub(crate) fn pop(&self, idx: &mut Indices) -> Result<uapi::Completion> {
        let used_slot = (idx.collected % QUEUE_SIZE) as usize;
        let elem = USED_OFFSET + 4 + 8 * used_slot;
        let head = self.mem.read::<u32>(elem)? as usize;
        if head % 2 != 0 || head >= QUEUE_SIZE as usize {
            return Err(EIO);
        }
        let comp_off = COMPLETIONS_OFFSET + (head / 2) * COMPLETION_SIZE;
        let m = &self.mem;
        let done = uapi::Completion {
            id: m.read::<u64>(comp_off)?,
            status: m.read::<u32>(comp_off + 8)?,
            reserved: 0,
            result: m.read::<u64>(comp_off + 16)?,
            fault_va: m.read::<u64>(comp_off + 24)?,
        };
        idx.collected = idx.collected.wrapping_add(1);
        Ok(done)
    }
}
