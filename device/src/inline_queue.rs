//! The inline command queue (`CQ_FORMAT` = INLINE, spec §7.6, since 1.5): the queue a
//! process can own, for user-level submission.
//!
//! A split virtqueue (§7.1) names the guest-physical addresses of each command and its
//! completion in its descriptors; whoever writes descriptors can make the device read and
//! write any guest memory, so only the kernel may. An inline queue carries no address per
//! command: the command records sit in fixed slots, each completion goes to the completion
//! slot of the same index, and the only value the producer writes besides commands is its
//! tail. The driver programs the three areas once; after that a process may map them and
//! post commands without a system call. Everything the process writes is untrusted: a tail
//! that runs more than `CQ_SIZE` ahead of the device is an error of the context, and a
//! command record is decoded and checked like any other (§7.2).

use vm_memory::GuestAddress;

use crate::commands::{COMMAND_SIZE, COMPLETION_SIZE};
use crate::engine::dma::Dma;
use crate::error_code::ErrorCode;
use crate::regs::{
    RegisterBlock, CQ_AVAIL_LO, CQ_DESC_LO, CQ_MAX_SIZE, CQ_READY, CQ_READY_BIT, CQ_SIZE,
    CQ_USED_LO, INLINE_HEAD_OFFSET, INLINE_SLOT_SIZE, INLINE_TAIL_OFFSET,
};

/// Bytes of an inline queue's index block (tail and head).
const INDEX_BLOCK_SIZE: u64 = 8;

/// A context's inline queue, valid while the context is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineQueue {
    /// `CQ_SIZE` slots of [`INLINE_SLOT_SIZE`] bytes.
    slots: GuestAddress,
    /// `CQ_SIZE` completion records.
    completions: GuestAddress,
    /// The index block: tail (producer) and head (device).
    indices: GuestAddress,
    /// Slots, a power of two in 1..=1024.
    size: u32,
    /// Commands taken from the queue (free-running).
    next: u32,
    /// Commands completed (free-running): the head the device publishes.
    completed: u32,
}

/// A command taken from the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineCommand {
    /// Its slot.
    pub slot: u16,
    /// The command record's bytes.
    pub record: [u8; COMMAND_SIZE],
    /// Where its completion record goes.
    pub completion: GuestAddress,
}

impl InlineQueue {
    /// The queue the `CQ_*` registers describe: ready bit set, size a power of two up to
    /// 1024, slots 64-byte, completions 32-byte and the index block 8-byte aligned, all of it
    /// in guest RAM. Anything else is `ERR_QUEUE_CONFIG`.
    pub fn from_registers(regs: &RegisterBlock, dma: &Dma<'_>) -> Result<Self, ErrorCode> {
        let bad = ErrorCode::QueueConfig;
        if regs.value(CQ_READY) & CQ_READY_BIT == 0 {
            return Err(bad);
        }
        let size = regs.value(CQ_SIZE);
        if !size.is_power_of_two() || size > CQ_MAX_SIZE {
            return Err(bad);
        }
        let areas = [
            (
                regs.value64(CQ_DESC_LO),
                INLINE_SLOT_SIZE * u64::from(size),
                64,
            ),
            // CAST: COMPLETION_SIZE is 32.
            (
                regs.value64(CQ_USED_LO),
                COMPLETION_SIZE as u64 * u64::from(size),
                32,
            ),
            (regs.value64(CQ_AVAIL_LO), INDEX_BLOCK_SIZE, 8),
        ];
        for (gpa, len, align) in areas {
            let len = usize::try_from(len).map_err(|_| bad)?;
            if gpa % align != 0
                || !vm_memory::GuestMemoryBackend::check_range(dma.memory(), GuestAddress(gpa), len)
            {
                return Err(bad);
            }
        }
        Ok(Self {
            slots: GuestAddress(areas[0].0),
            completions: GuestAddress(areas[1].0),
            indices: GuestAddress(areas[2].0),
            size,
            next: 0,
            completed: 0,
        })
    }

    /// Takes the next command if the producer's tail is ahead of the device. A tail more than
    /// `CQ_SIZE` ahead is `ERR_AVAIL_INDEX`; a failed read of the queue is `ERR_QUEUE_DMA`.
    pub fn pop(&mut self, dma: &Dma<'_>) -> Result<Option<InlineCommand>, ErrorCode> {
        let tail = dma
            .with_atomic::<std::sync::atomic::AtomicU32, _>(
                offset(self.indices, INLINE_TAIL_OFFSET),
                |word| u32::from_le(word.load(std::sync::atomic::Ordering::Acquire)),
            )
            .map_err(|_| ErrorCode::QueueDma)?;
        let pending = tail.wrapping_sub(self.next);
        if pending == 0 {
            return Ok(None);
        }
        // The device has taken `next - completed` (at most one) that are not complete yet;
        // the producer may not reuse their slots, so more than `size` pending is a lie.
        if pending > self.size {
            return Err(ErrorCode::AvailIndex);
        }
        let slot = self.next % self.size;
        let mut record = [0u8; COMMAND_SIZE];
        dma.read(
            offset(self.slots, u64::from(slot) * INLINE_SLOT_SIZE),
            &mut record,
        )
        .map_err(|_| ErrorCode::QueueDma)?;
        self.next = self.next.wrapping_add(1);
        Ok(Some(InlineCommand {
            // CAST: slot < size <= 1024.
            slot: slot as u16,
            record,
            // CAST: COMPLETION_SIZE is 32.
            completion: offset(self.completions, u64::from(slot) * COMPLETION_SIZE as u64),
        }))
    }

    /// Publishes one more completion: the head moves on, with release ordering, after the
    /// completion record was written.
    pub fn publish(&mut self, dma: &Dma<'_>) -> Result<(), ErrorCode> {
        let head = self.completed.wrapping_add(1);
        dma.store_u32_release(offset(self.indices, INLINE_HEAD_OFFSET), head)
            .map_err(|_| ErrorCode::QueueDma)?;
        self.completed = head;
        Ok(())
    }
}

fn offset(base: GuestAddress, by: u64) -> GuestAddress {
    GuestAddress(base.0.wrapping_add(by))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dma::GuestRam;
    use crate::inject::{DmaPurpose, NoFaults};
    use crate::regs::{CONTEXT_REGISTERS, CQ_AVAIL_HI, CQ_DESC_HI, CQ_USED_HI};
    use vm_memory::{Bytes, GuestMemoryBackend};

    const SLOTS: u64 = 0x1000;
    const COMPLETIONS: u64 = 0x2000;
    const INDICES: u64 = 0x3000;

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory")
    }

    fn regs(size: u32, slots: u64, completions: u64, indices: u64) -> RegisterBlock {
        let mut regs = RegisterBlock::new(&CONTEXT_REGISTERS);
        for (reg, value) in [
            (CQ_DESC_LO, slots as u32),
            (CQ_DESC_HI, (slots >> 32) as u32),
            (CQ_USED_LO, completions as u32),
            (CQ_USED_HI, (completions >> 32) as u32),
            (CQ_AVAIL_LO, indices as u32),
            (CQ_AVAIL_HI, (indices >> 32) as u32),
            (CQ_SIZE, size),
            (CQ_READY, CQ_READY_BIT),
        ] {
            regs.set(reg, value);
        }
        regs
    }

    fn queue(mem: &GuestRam, size: u32) -> InlineQueue {
        let dma = Dma::new(mem, &NoFaults, DmaPurpose::CommandQueue);
        InlineQueue::from_registers(&regs(size, SLOTS, COMPLETIONS, INDICES), &dma)
            .expect("valid queue")
    }

    #[test]
    fn commands_come_from_slots_in_order_and_completions_go_to_the_same_slot() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::CommandQueue);
        let mut q = queue(&mem, 4);
        assert_eq!(q.pop(&dma), Ok(None), "tail 0: nothing to do");
        for slot in 0..4u64 {
            mem.write_obj(0xc0de_0000 + slot, GuestAddress(SLOTS + slot * 64 + 8))
                .expect("write id");
        }
        mem.write_obj(2u32, GuestAddress(INDICES)).expect("tail");
        for expected in 0..2u16 {
            let cmd = q.pop(&dma).expect("pop").expect("a command");
            assert_eq!(cmd.slot, expected);
            assert_eq!(
                u64::from_le_bytes(cmd.record[8..16].try_into().expect("8 bytes")),
                0xc0de_0000 + u64::from(expected)
            );
            assert_eq!(
                cmd.completion,
                GuestAddress(COMPLETIONS + u64::from(expected) * 32)
            );
            q.publish(&dma).expect("publish");
            let head: u32 = mem.read_obj(GuestAddress(INDICES + 4)).expect("head");
            assert_eq!(head, u32::from(expected) + 1);
        }
        assert_eq!(q.pop(&dma), Ok(None));
        // Free-running indices wrap around the slots.
        mem.write_obj(5u32, GuestAddress(INDICES)).expect("tail");
        let slots: Vec<u16> = (0..3)
            .map(|_| q.pop(&dma).expect("pop").expect("a command").slot)
            .collect();
        assert_eq!(slots, [2, 3, 0]);
    }

    #[test]
    fn a_tail_too_far_ahead_is_an_avail_index_error() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::CommandQueue);
        let mut q = queue(&mem, 4);
        mem.write_obj(5u32, GuestAddress(INDICES)).expect("tail");
        assert_eq!(q.pop(&dma), Err(ErrorCode::AvailIndex));
        // A tail behind the device (wrapped: "4 billion ahead") is refused alike.
        mem.write_obj(u32::MAX, GuestAddress(INDICES))
            .expect("tail");
        assert_eq!(q.pop(&dma), Err(ErrorCode::AvailIndex));
    }

    #[test]
    fn bad_configurations_are_queue_config_errors() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::CommandQueue);
        let bad = [
            regs(3, SLOTS, COMPLETIONS, INDICES),      // not a power of two
            regs(2048, SLOTS, COMPLETIONS, INDICES),   // too large
            regs(0, SLOTS, COMPLETIONS, INDICES),      // empty
            regs(4, SLOTS + 32, COMPLETIONS, INDICES), // slots not 64-byte aligned
            regs(4, SLOTS, COMPLETIONS + 16, INDICES), // completions not 32-byte aligned
            regs(4, SLOTS, COMPLETIONS, INDICES + 4),  // index block not 8-byte aligned
            regs(1024, 0xf000, COMPLETIONS, INDICES),  // slots leave RAM
            regs(4, SLOTS, COMPLETIONS, u64::MAX - 7), // index block outside RAM
        ];
        for (i, regs) in bad.iter().enumerate() {
            assert_eq!(
                InlineQueue::from_registers(regs, &dma),
                Err(ErrorCode::QueueConfig),
                "case {i}"
            );
        }
        let mut not_ready = regs(4, SLOTS, COMPLETIONS, INDICES);
        not_ready.set(CQ_READY, 0);
        assert_eq!(
            InlineQueue::from_registers(&not_ready, &dma),
            Err(ErrorCode::QueueConfig)
        );
        assert!(GuestMemoryBackend::check_range(
            &mem,
            GuestAddress(SLOTS),
            64 * 4
        ));
    }
}
