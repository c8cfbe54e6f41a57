// SPDX-License-Identifier: GPL-2.0

//! The BAR0 accessor every part of the driver shares (device, contexts, invalidation queue),
//! in a file of its own so that those modules do not import each other in circles.

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::SpinLock;

use crate::pci;
use crate::regs::*;

// `Hw::ctx_write64` relies on every pair it is given having its high half right after the
// low one.
const _: () = assert!(
    CTX_PTROOT_HI == CTX_PTROOT_LO + 4
        && CQ_DESC_HI == CQ_DESC_LO + 4
        && CQ_AVAIL_HI == CQ_AVAIL_LO + 4
        && CQ_USED_HI == CQ_USED_LO + 4
        && DROPIN_VA_HI == DROPIN_VA_LO + 4
        && DROPIN_GPA_HI == DROPIN_GPA_LO + 4
        && DROPIN_LIST_HI == DROPIN_LIST_LO + 4
        && CTX_RKEY_HI == CTX_RKEY_LO + 4
);

/// MMIO access to BAR0, revocable: after remove, every access fails with `ENODEV`.
#[pin_data]
pub(crate) struct Hw {
    /// A spinlock, not a mutex: MMIO never sleeps and the notifier may not sleep.
    #[pin]
    bar: SpinLock<Option<pci::Bar<BAR0_SIZE>>>,
    /// Function resets the driver made ([`Hw::reset_function`]); changed under `bar`, so a
    /// write made "in generation g" ([`Hw::write_in`]) never reaches the device after a reset.
    generation: AtomicU64,
}

impl Hw {
    /// An accessor of `bar`, reset generation 0.
    pub(crate) fn new(bar: pci::Bar<BAR0_SIZE>) -> impl PinInit<Self> {
        pin_init!(Self {
            bar <- kernel::new_spinlock!(Some(bar), "rmnic::Hw::bar"),
            generation: AtomicU64::new(0),
        })
    }

    /// Takes the mapping away: every later access fails with `ENODEV`. The caller unmaps it
    /// (outside the spinlock).
    pub(crate) fn revoke(&self) -> Option<pci::Bar<BAR0_SIZE>> {
        self.bar.lock().take()
    }

    /// The current reset generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Resets the function (`DEV_CONTROL.FLR`) and starts a new generation; returns it. After
    /// the write returns the device performs no DMA for anything submitted before, holds no
    /// TLB entry and every context is FREE (docs/device-spec.md, reset behaviour).
    pub(crate) fn reset_function(&self) -> Result<u64> {
        let bar = self.bar.lock();
        bar.as_ref().ok_or(ENODEV)?.try_write32(REG_DEV_CONTROL, DEV_CONTROL_FLR)?;
        Ok(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Writes a global register only if no reset happened since `generation` (a stale index
    /// must not reach a device that was reset and reprogrammed meanwhile).
    pub(crate) fn write_in(&self, generation: u64, offset: usize, value: u32) -> Result {
        let bar = self.bar.lock();
        if self.generation() != generation {
            return Err(EAGAIN);
        }
        bar.as_ref().ok_or(ENODEV)?.try_write32(offset, value)
    }

    /// Reads a global register.
    pub(crate) fn read(&self, offset: usize) -> Result<u32> {
        self.bar.lock().as_ref().ok_or(ENODEV)?.try_read32(offset)
    }

    /// Writes a global register.
    pub(crate) fn write(&self, offset: usize, value: u32) -> Result {
        self.bar
            .lock()
            .as_ref()
            .ok_or(ENODEV)?
            .try_write32(offset, value)
    }

    fn ctx_offset(ctx: usize, offset: usize) -> Result<usize> {
        if ctx >= MAX_CONTEXTS || offset >= CTX_BLOCK_SIZE {
            return Err(EINVAL);
        }
        Ok(CTX_BLOCK_BASE + ctx * CTX_BLOCK_SIZE + offset)
    }

    /// Reads register `offset` of context `ctx`'s block.
    pub(crate) fn ctx_read(&self, ctx: usize, offset: usize) -> Result<u32> {
        self.read(Self::ctx_offset(ctx, offset)?)
    }

    /// Writes register `offset` of context `ctx`'s block.
    pub(crate) fn ctx_write(&self, ctx: usize, offset: usize, value: u32) -> Result {
        self.write(Self::ctx_offset(ctx, offset)?, value)
    }

    /// Writes a 64-bit value to the LO/HI register pair of context `ctx` whose low half is at
    /// `lo` (the high half follows at `lo + 4`, spec §3.1), low half first.
    pub(crate) fn ctx_write64(&self, ctx: usize, lo: usize, value: u64) -> Result {
        self.ctx_write(ctx, lo, value as u32)?;
        self.ctx_write(ctx, lo + 4, (value >> 32) as u32)
    }
}

