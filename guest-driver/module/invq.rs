// SPDX-License-Identifier: GPL-2.0

//! The device's invalidation queue: the driver produces descriptors, the device consumes
//! them and writes the sequence number of the last completed one to a word in memory, which
//! the driver polls (no VM exit, no interrupt needed).
//!
//! One queue serves every context. Descriptors complete in order, so "done >= my sequence"
//! means mine completed, and completion means the device holds no entry for the range and no
//! access through such an entry is still running (docs/device-spec.md).

use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::SpinLock;
use kernel::time::{ktime_ms_delta, Ktime};

use crate::delay;
use crate::hw::Hw;
use crate::dma::{CoherentBuffer, CoherentRing};
use crate::pci;
use crate::regs::*;

/// Descriptors in the queue.
const ENTRIES: u32 = 256;
/// Busy-wait budget of a non-blockable wait, in microseconds: the device worker finishes an
/// invalidation in microseconds unless the host is overloaded, and the OOM reaper retries.
const ATOMIC_WAIT_US: u32 = 20_000;
/// Give up a blockable wait after this long: the device is then considered hung and the
/// caller recovers it with a function reset (`Rmnic::recover`). A healthy device answers in
/// microseconds, a slow emulated host in milliseconds.
const BLOCKING_WAIT_MS: u32 = 5_000;

/// What to invalidate.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// Entries of `asid` overlapping `[start, end)`.
    Range { asid: u16, start: u64, end: u64 },
    /// Every entry of `asid`.
    Asid(u16),
}

/// Producer state, under `InvalidationQueue::state`.
struct Producer {
    tail: u32,
    next_seq: u64,
}

/// The invalidation queue.
#[pin_data]
pub(crate) struct InvalidationQueue {
    ring: CoherentRing,
    done: CoherentBuffer,
    /// Held while writing a descriptor and ringing the doorbell so descriptors and doorbells
    /// reach the device in sequence order. A spinlock: the notifier may be non-blockable.
    #[pin]
    state: SpinLock<Producer>,
}

impl InvalidationQueue {
    /// Allocates the queue (may sleep); [`InvalidationQueue::program`] tells the device.
    pub(crate) fn new(dev: &pci::Device) -> Result<impl PinInit<Self, Error>> {
        let ring = CoherentRing::alloc(dev, ENTRIES, INVQ_DESC_SIZE)?;
        let done = CoherentBuffer::alloc(dev, 8)?;
        ring.fill_zero();
        done.fill_zero();
        Ok(try_pin_init!(Self {
            ring,
            done,
            state <- new_spinlock!(Producer { tail: 0, next_seq: 1 }, "rmnic::InvalidationQueue"),
        }? Error))
    }

    /// Programs the queue registers.
    pub(crate) fn program(&self, hw: &Hw) -> Result {
        let base = self.ring.dma_addr();
        let done = self.done.dma_addr();
        hw.write(REG_INVQ_BASE_LO, base as u32)?;
        hw.write(REG_INVQ_BASE_HI, (base >> 32) as u32)?;
        hw.write(REG_INVQ_SIZE, ENTRIES)?;
        hw.write(REG_INVQ_DONE_ADDR_LO, done as u32)?;
        hw.write(REG_INVQ_DONE_ADDR_HI, (done >> 32) as u32)?;
        hw.write(REG_INVQ_TAIL, 0)
    }

    /// Resets the device (`Hw::reset_function`) and reprograms it while no descriptor can be
    /// queued: the producer index goes back to 0 with the device's, `reprogram` sets up the
    /// rest (the fault ring), then the queue is programmed and the device enabled. Returns the
    /// new generation. Never sleeps.
    pub(crate) fn reset_device(&self, hw: &Hw, reprogram: impl FnOnce() -> Result) -> Result<u64> {
        let mut state = self.state.lock();
        let generation = hw.reset_function()?;
        state.tail = 0;
        self.ring.fill_zero();
        reprogram()?;
        self.program(hw)?;
        hw.write(REG_DEV_CONTROL, DEV_CONTROL_ENABLE)?;
        Ok(generation)
    }

    /// Queues one invalidation and rings the doorbell; returns its sequence number and the
    /// reset generation it was queued in. Never sleeps. `EBUSY` if the queue is full.
    pub(crate) fn submit(&self, hw: &Hw, target: Target) -> Result<(u64, u64)> {
        let mut state = self.state.lock();
        let generation = hw.generation();
        let head = hw.read(REG_INVQ_HEAD)?;
        if state.tail.wrapping_sub(head) >= ENTRIES {
            return Err(EBUSY);
        }
        let (kind, asid, start, end) = match target {
            Target::Range { asid, start, end } => (INVQ_KIND_RANGE, asid, start, end),
            Target::Asid(asid) => (INVQ_KIND_ASID, asid, 0, 0),
        };
        let seq = state.next_seq;
        let index = state.tail;
        self.ring.write::<u8>(index, INVQ_DESC_KIND, kind)?;
        self.ring.write::<u8>(index, INVQ_DESC_FLAGS, 0)?;
        self.ring.write::<u16>(index, INVQ_DESC_ASID, asid)?;
        self.ring.write::<u64>(index, INVQ_DESC_START, start)?;
        self.ring.write::<u64>(index, INVQ_DESC_END, end)?;
        // Release: the descriptor is complete in memory before the doorbell below (MMIO writes
        // are ordered after earlier stores on x86; the release documents the requirement).
        self.ring.store_release::<u64>(index, INVQ_DESC_SEQ, seq)?;
        state.tail = state.tail.wrapping_add(1);
        state.next_seq += 1;
        hw.write(REG_INVQ_TAIL, state.tail)?;
        Ok((seq, generation))
    }

    fn completed(&self, seq: u64) -> bool {
        self.done
            .load_acquire::<u64>(0)
            .is_ok_and(|done| done >= seq)
    }

    /// Waits for `seq` (queued in reset generation `generation`) to complete; a reset since
    /// also ends the wait, as the reset device holds no translation. Blockable waits sleep
    /// between polls and look at `DEV_STATUS` (`ENXIO`: the device reset itself) and give up
    /// after [`BLOCKING_WAIT_MS`] (`EIO`); non-blockable ones busy-wait up to
    /// [`ATOMIC_WAIT_US`] and report `EAGAIN` past that.
    pub(crate) fn wait(&self, hw: &Hw, seq: u64, generation: u64, blockable: bool) -> Result {
        let done = || self.completed(seq) || hw.generation() != generation;
        if blockable {
            // A short spin first: the device usually answers within microseconds.
            for _ in 0..200 {
                if done() {
                    return Ok(());
                }
                delay::udelay(1);
            }
            // msleep(1) sleeps at least a jiffy (10 ms at HZ=100): bound the wait by time, not
            // by iterations.
            let start = Ktime::ktime_get();
            while ktime_ms_delta(Ktime::ktime_get(), start) < i64::from(BLOCKING_WAIT_MS) {
                if done() {
                    return Ok(());
                }
                if hw
                    .read(REG_DEV_STATUS)
                    .is_ok_and(|status| status & DEV_STATUS_ENABLED == 0)
                {
                    return if done() { Ok(()) } else { Err(ENXIO) };
                }
                delay::msleep(1);
            }
            if done() {
                return Ok(());
            }
            pr_err!("invalidation {seq} did not complete in {BLOCKING_WAIT_MS} ms\n");
            Err(EIO)
        } else {
            for _ in 0..ATOMIC_WAIT_US {
                if done() {
                    return Ok(());
                }
                delay::udelay(1);
            }
            Err(EAGAIN)
        }
    }
}
