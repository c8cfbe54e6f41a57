// SPDX-License-Identifier: GPL-2.0

//! The rmnic driver logic: probe and remove, the device-wide state ([`Rmnic`]) every context
//! shares, the interrupt handlers and the `/dev/rmnic` file operations. No `unsafe` here;
//! kernel APIs go through the wrapper modules.

use core::pin::Pin;
use core::sync::atomic::{AtomicU32, Ordering};

use kernel::prelude::*;
use kernel::sync::{Arc, Mutex, SpinLock};
use kernel::time::{ktime_ms_delta, Ktime};
use kernel::types::ScopeGuard;
use kernel::uaccess::UserSlice;
use kernel::str::CString;
use kernel::{c_str, fmt, new_mutex, new_spinlock};

use crate::context::{Context, Mirror, DEBUGFS_COUNTERS};
use crate::counters;
use crate::cred::Credentials;
use crate::hw::Hw;
use crate::segment::Segments;
use crate::debugfs::Dir;
use crate::delay;
use crate::dma::{self, CoherentRing};
use crate::invq::{InvalidationQueue, Target};
use crate::irq::{IrqHandler, IrqReturn, IrqVectors, ThreadReturn, ThreadedIrq};
use crate::misc;
use crate::pci;
use crate::regs::*;
use crate::uapi;
use crate::user_queue::UserQueue;

/// `PCI_VENDOR_ID` and `PCI_DEVICE_ID` configuration offsets.
const PCI_CFG_VENDOR_ID: i32 = 0x00;
const PCI_CFG_DEVICE_ID: i32 = 0x02;
/// Patterns the probe self-test writes to the scratch register.
const SCRATCH_PATTERNS: [u32; 3] = [0xA5A5_5A5A, 0x1234_5678, 0];
/// Fault records in the fault ring.
const FAULT_ENTRIES: u32 = 256;
/// How long closing a context waits for the device to acknowledge the disable.
const DISABLE_WAIT_MS: u32 = 1000;

/// Context table: which device contexts are in use and by which open file.
struct Contexts {
    slots: [Option<Arc<Context>>; MAX_CONTEXTS],
    /// Reserved between `alloc_context` and `enable_context`/`free_context`.
    reserved: u64,
    /// Contexts the device has.
    count: usize,
    next_asid: u16,
}

/// Device-wide state shared by the PCI binding, the interrupt handlers and every context.
#[pin_data]
pub(crate) struct Rmnic {
    /// For DMA allocations made by file operations.
    pdev: pci::DeviceRef,
    #[pin]
    pub(crate) hw: Hw,
    #[pin]
    invq: InvalidationQueue,
    faults: CoherentRing,
    /// Fault ring consumer index and the reset generation it belongs to. A mutex held across
    /// a whole drain: the fault interrupt thread and waiters polling for a lost interrupt may
    /// both drain, never at once.
    #[pin]
    fault_tail: Mutex<(u32, u64)>,
    /// Serialises [`Rmnic::recover`]. Never held while taking the mmap lock or `fault_tail`.
    #[pin]
    recovery: Mutex<()>,

    #[pin]
    contexts: SpinLock<Contexts>,
    /// Exported segments and attachments (`segment.rs`). Taken by ioctls and the fault
    /// thread, never by a notifier; nothing is allocated or dropped under it.
    #[pin]
    segments: SpinLock<Segments>,
    pci_vendor: u16,
    pci_device: u16,
    /// `rmnic/` in debugfs (absent when debugfs is).
    debugfs: Option<Dir>,
}

impl Rmnic {
    /// Creates `rmnic/ctx<index>-asid<asid>/` with the context's counters; `None` if debugfs
    /// is unavailable (best effort, as debugfs is by convention).
    pub(crate) fn debugfs_context_dir(
        &self,
        index: usize,
        asid: u16,
        mirror: &Arc<Mirror>,
    ) -> Option<Dir> {
        let name = CString::try_from_fmt(fmt!("ctx{index}-asid{asid}")).ok()?;
        let mut dir = Dir::new(&name, Some(self.debugfs.as_ref()?))?;
        dir.counters(mirror.clone(), &DEBUGFS_COUNTERS).ok()?;
        Some(dir)
    }

    /// Sends one invalidation and waits for it (see [`InvalidationQueue::wait`]). A blockable
    /// wait that times out, or finds the device reset, recovers the device with a function
    /// reset ([`Rmnic::recover`]): afterwards the device holds no translation at all, so the
    /// invalidation is done either way.
    pub(crate) fn invalidate(&self, target: Target, blockable: bool) -> Result {
        let (seq, generation) = loop {
            match self.invq.submit(&self.hw, target) {
                Err(e) if e == EBUSY && blockable => delay::msleep(1),
                Err(e) if e == EBUSY => return Err(EAGAIN),
                other => break other?,
            }
        };
        match self.invq.wait(&self.hw, seq, generation, blockable) {
            Err(e) if blockable && e == EIO => {
                self.recover(generation, "an invalidation did not complete in time");
                Ok(())
            }
            Err(e) if blockable && e == ENXIO => {
                self.recover(generation, "the device reset itself during an invalidation");
                Ok(())
            }
            other => other,
        }
    }

    /// Whether the device is still enabled; if it was reset behind the driver's back (a
    /// function reset mid-flight), recovers it. Called by waiters that time out.
    pub(crate) fn check_alive(&self) {
        let generation = self.hw.generation();
        match self.hw.read(REG_DEV_STATUS) {
            Ok(status) if status & DEV_STATUS_ENABLED == 0 => {
                self.recover_if_disabled(generation);
            }
            _ => {}
        }
    }

    /// [`Rmnic::recover`] for a device found disabled, unless it is enabled again by the time
    /// the recovery lock is held (another caller's recovery in progress when it was read).
    fn recover_if_disabled(&self, seen: u64) {
        {
            let _serial = self.recovery.lock();
            if self
                .hw
                .read(REG_DEV_STATUS)
                .is_ok_and(|status| status & DEV_STATUS_ENABLED != 0)
            {
                return;
            }
        }
        self.recover(seen, "the device reset itself");
    }

    /// Brings the device back after it stopped answering or reset itself: a function reset
    /// (no more DMA for anything submitted before, an empty TLB), every open context marked
    /// lost (its calls fail with EIO from here on, its waiters are woken), the fault ring and
    /// the invalidation queue reprogrammed, the device enabled again. New contexts work.
    ///
    /// `seen` is the generation the caller saw the problem in: if another caller already
    /// recovered since, nothing is done. May sleep (only the recovery mutex); takes no lock
    /// the miss path holds while it waits for the mmap lock, so a notifier may call it.
    pub(crate) fn recover(&self, seen: u64, why: &str) {
        let _serial = self.recovery.lock();
        if self.hw.generation() != seen {
            return;
        }
        // First: no open context drops anything in or touches its device slot any more.
        let mut lost = 0;
        {
            let table = self.contexts.lock();
            for ctx in table.slots.iter().flatten() {
                ctx.mark_lost();
                lost += 1;
            }
        }
        // A drain in progress sees the new generation and starts over at 0; its writes for
        // the old generation are dropped by `write_in`.
        let programmed = self.invq.reset_device(&self.hw, || {
            self.faults.fill_zero();
            self.program_fault_ring()
        });
        // Waiters of the lost contexts return EIO.
        self.notify_completions();
        counters::up(&counters::RECOVERIES);
        let count = counters::RECOVERIES.load(Ordering::Relaxed);
        match programmed {
            Ok(_) => pr_err!(
                "{why}: device reset and re-enabled (recovery {count}), {lost} open contexts lost\n"
            ),
            Err(e) => pr_err!("{why}: device reset, but re-enabling it failed: {e:?}\n"),
        }
    }

    /// Programs the fault ring registers (base, size, tail 0).
    fn program_fault_ring(&self) -> Result {
        let base = self.faults.dma_addr();
        self.hw.write(REG_FAULT_BASE_LO, base as u32)?;
        self.hw.write(REG_FAULT_BASE_HI, (base >> 32) as u32)?;
        self.hw.write(REG_FAULT_SIZE, FAULT_ENTRIES)?;
        self.hw.write(REG_FAULT_TAIL, 0)
    }

    /// Rings context `ctx`'s command doorbell.
    pub(crate) fn doorbell(&self, ctx: usize) -> Result {
        self.hw.ctx_write(ctx, CQ_DOORBELL, 1)
    }

    /// Writes context `ctx`'s command register.
    pub(crate) fn context_command(&self, ctx: usize, command: u32) -> Result {
        self.hw.ctx_write(ctx, CTX_COMMAND, command)
    }

    /// Installs the `count` records of the drop-in list at bus address `list` for context
    /// `ctx` (device 1.4: one command instead of six register writes per translation).
    /// `programmed` is the count the context's list registers hold (0: none written yet); the
    /// caller serialises calls for one context (its `Mirror::update`). The address never
    /// changes and the count seldom does, and under a VMM every register write is a VM exit,
    /// so only what changed is written: a miss costs the command and the flushing read.
    pub(crate) fn drop_in_list(
        &self,
        ctx: usize,
        list: u64,
        count: usize,
        programmed: &AtomicU32,
    ) -> Result {
        // CAST: count <= DROPIN_LIST_MAX.
        let count = count as u32;
        let last = programmed.load(Ordering::Relaxed);
        if last == 0 {
            self.hw.ctx_write64(ctx, DROPIN_LIST_LO, list)?;
        }
        if last != count {
            self.hw.ctx_write(ctx, DROPIN_LIST_COUNT, count)?;
            programmed.store(count, Ordering::Relaxed);
        }
        self.context_command(ctx, CTX_CMD_DROPIN_LIST)?;
        // The command write may be posted: the read flushes it, so the device has read the
        // list before the caller writes the next one into the same memory (spec §5).
        self.hw.ctx_read(ctx, CTX_STATUS).map(|_| ())
    }

    /// Whether the device takes drop-in lists (`REG_CAPS` bit 10, device 1.4).
    pub(crate) fn has_dropin_lists(&self) -> bool {
        self.hw.read(REG_CAPS).is_ok_and(|caps| caps & CAPS_DROPIN_LIST != 0)
    }

    /// Whether the device has inline queues and user doorbell pages (1.5, `CAPS_INLINE_QUEUE`).
    pub(crate) fn has_inline_queues(&self) -> bool {
        self.hw.read(REG_CAPS).is_ok_and(|caps| caps & CAPS_INLINE_QUEUE != 0)
    }

    /// Physical address of context `ctx`'s user doorbell page.
    fn doorbell_page(&self, ctx: usize) -> u64 {
        self.pdev.resource_start(0) + (UQ_DOORBELL_BASE + ctx * UQ_DOORBELL_STRIDE) as u64
    }

    /// Moves context `ctx` onto `queue` (the caller made sure none of its commands is
    /// outstanding): disable it, program the inline queue, enable it again. The disable drops
    /// the context's TLB entries, which the miss path refills on demand. May sleep.
    pub(crate) fn switch_to_user_queue(&self, ctx: usize, queue: &UserQueue) -> Result {
        let _serial = self.recovery.lock();
        self.hw.ctx_write(ctx, CTX_CONTROL, 0)?;
        if !self.wait_context_free(ctx) {
            return Err(EIO);
        }
        queue.program(&self.hw, ctx)?;
        self.hw.ctx_write(ctx, CTX_CONTROL, CTX_CONTROL_ENABLE)?;
        let status = self.hw.ctx_read(ctx, CTX_STATUS)?;
        if status & CTX_STATUS_STATE_MASK != CTX_STATE_ACTIVE {
            pr_err!("context {ctx}: the inline queue was refused (status {status:#x})\n");
            return Err(EIO);
        }
        Ok(())
    }

    /// Waits (up to `DISABLE_WAIT_MS`) for a disabled context to reach FREE.
    fn wait_context_free(&self, index: usize) -> bool {
        let start = Ktime::ktime_get();
        while ktime_ms_delta(Ktime::ktime_get(), start) < i64::from(DISABLE_WAIT_MS) {
            match self.hw.ctx_read(index, CTX_STATUS) {
                Ok(status) if status & CTX_STATUS_STATE_MASK == CTX_STATE_FREE => return true,
                Ok(_) => delay::msleep(1),
                Err(_) => return false,
            }
        }
        false
    }

    /// Installs a translation in the device TLB for context `ctx`.
    pub(crate) fn drop_in(&self, ctx: usize, va: u64, gpa: u64, attr: u32) -> Result {
        self.hw.ctx_write64(ctx, DROPIN_VA_LO, va)?;
        self.hw.ctx_write64(ctx, DROPIN_GPA_LO, gpa)?;
        self.hw.ctx_write(ctx, DROPIN_ATTR, attr)?;
        self.context_command(ctx, CTX_CMD_DROPIN)
    }

    /// Reserves a free device context and picks its ASID.
    pub(crate) fn alloc_context(&self) -> Result<(usize, u16)> {
        let mut table = self.contexts.lock();
        let count = table.count;
        let index = (0..count)
            .find(|&i| table.slots[i].is_none() && table.reserved & (1 << i) == 0)
            .ok_or(EBUSY)?;
        table.reserved |= 1 << index;
        counters::up(&counters::CONTEXTS_LIVE);
        // ASIDs cycle through 1..=0xffff so traces tell successive users of a slot apart; a
        // disabled context holds no entries, so reuse after wrap-around is harmless.
        let asid = table.next_asid;
        table.next_asid = table.next_asid.checked_add(1).unwrap_or(1);
        Ok((index, asid))
    }

    /// Releases a reservation made by [`Rmnic::alloc_context`].
    pub(crate) fn free_context(&self, index: usize) {
        let mut table = self.contexts.lock();
        table.reserved &= !(1 << index);
        table.slots[index] = None;
        counters::down(&counters::CONTEXTS_LIVE);
    }

    /// Programs and enables the device context of `ctx` and publishes it to the interrupt
    /// handlers.
    pub(crate) fn enable_context(&self, ctx: &Arc<Context>) -> Result {
        // Not while a recovery resets the device: its reset would wipe these registers after
        // they were written, or the new context would miss being marked lost.
        let _serial = self.recovery.lock();
        let index = ctx.index();
        let pgd = ctx.pgd_phys();
        self.hw.ctx_write(index, CTX_ASID, u32::from(ctx.asid()))?;
        self.hw.ctx_write64(index, CTX_PTROOT_LO, pgd)?;
        ctx.queue_mem().program(&self.hw, index)?;
        self.contexts.lock().slots[index] = Some(ctx.clone());
        self.hw.ctx_write(index, CTX_CONTROL, CTX_CONTROL_ENABLE)
    }

    /// Tears a context down: its segments revoked and its attachments detached, no more
    /// drop-ins, disable it on the device (which aborts its commands, drops its TLB entries and
    /// stops touching its rings), then free the slot.
    fn close_context(&self, ctx: &Arc<Context>) {
        let index = ctx.index();
        // One device write per exported segment; each export is dropped outside the lock.
        while let Some(export) = self.segments.lock().revoke_one_of(&self.hw, ctx) {
            drop(export);
        }
        self.segments.lock().detach_all(&self.hw, index);
        ctx.mark_closed();
        if self.hw.ctx_write(index, CTX_CONTROL, 0).is_ok() && !self.wait_context_free(index) {
            pr_err!("context {index} did not stop within {DISABLE_WAIT_MS} ms\n");
        }
        self.free_context(index);
    }

    fn lookup(&self, index: usize, asid: u16) -> Option<Arc<Context>> {
        let table = self.contexts.lock();
        let ctx = table.slots.get(index)?.as_ref()?;
        (ctx.asid() == asid).then(|| ctx.clone())
    }

    /// Drains the fault ring, answering every record. Sleeps (the miss path does); called by
    /// the fault interrupt thread and, as a fallback for a lost interrupt, by waiters.
    pub(crate) fn drain_faults(&self) {
        let mut guard = self.fault_tail.lock();
        let (tail, seen) = &mut *guard;
        loop {
            // After a recovery the device's ring starts over at 0.
            let generation = self.hw.generation();
            if *seen != generation {
                *tail = 0;
                *seen = generation;
            }
            let Ok(head) = self.hw.read(REG_FAULT_HEAD) else {
                return;
            };
            if *tail == head {
                return;
            }
            // The device owns HEAD: never trust it further than the ring holds. After a reset
            // it goes back to 0, and walking from TAIL up to it would take 2^32 steps.
            if head.wrapping_sub(*tail) > FAULT_ENTRIES {
                pr_err!("fault ring head {head} is out of step with tail {}; resynchronising\n", *tail);
                *tail = head;
                let _ = self.hw.write_in(generation, REG_FAULT_TAIL, head);
                return;
            }
            while *tail != head {
                let at = *tail;
                // The device writes the sequence word last, with release ordering; reading it
                // first (acquire) proves the body below is this record's, not a stale one
                // from an earlier lap of the ring. HEAD already promises that; this checks it.
                let sequence = self.faults.load_acquire::<u32>(at, FAULT_REC_SEQUENCE);
                if sequence != Ok(at.wrapping_add(1)) {
                    pr_err!(
                        "fault record {at} has sequence {sequence:?} under head {head}; retrying later\n"
                    );
                    return;
                }
                let record = (
                    self.faults.read::<u16>(at, FAULT_REC_CONTEXT),
                    self.faults.read::<u16>(at, FAULT_REC_ASID),
                    self.faults.read::<u8>(at, FAULT_REC_ACCESS),
                    self.faults.read::<u64>(at, FAULT_REC_VA),
                );
                let flags = self.faults.read::<u8>(at, FAULT_REC_FLAGS).unwrap_or(0);
                let segment = match self.faults.read::<u8>(at, FAULT_REC_SLOT) {
                    Ok(slot) if flags & FAULT_FLAG_SEGMENT != 0 => Some(slot),
                    _ => None,
                };
                let remote_tag = if flags & FAULT_FLAG_REMOTE != 0 {
                    self.faults.read::<u64>(at, FAULT_REC_COMMAND_ID).ok()
                } else {
                    None
                };
                *tail = at.wrapping_add(1);
                if self.hw.write_in(generation, REG_FAULT_TAIL, *tail).is_err() {
                    // Reset meanwhile: the record belongs to a lost context.
                    break;
                }
                let (Ok(index), Ok(asid), Ok(access), Ok(va)) = record else {
                    continue;
                };
                let write = access & FAULT_ACCESS_WRITE != 0;
                if let Some(tag) = remote_tag {
                    // The other node missed on an export of ours: resolve in the exporter's
                    // address space and tell the device; no context of ours stalls.
                    let status = match self.lookup(usize::from(index), asid) {
                        Some(ctx) => ctx.resolve_remote_fault(va, write),
                        None => REMOTE_ANSWER_UNRESOLVED,
                    };
                    let answer = (tag as u32 & 0xffff) | (status << REMOTE_ANSWER_STATUS_SHIFT);
                    let _ = self.hw.write_in(generation, REG_REMOTE_ANSWER, answer);
                    continue;
                }
                match (self.lookup(usize::from(index), asid), segment) {
                    (Some(ctx), None) => ctx.resolve_fault(va, write),
                    (Some(ctx), Some(slot)) => {
                        // The registry lock is released before the owner is used (and maybe
                        // dropped: a closing exporter's last reference).
                        let target = self.segments.lock().fault_target(usize::from(index), slot);
                        match target {
                            Some(t) => {
                                ctx.resolve_segment_fault(&t.owner, t.base, t.length, va, write)
                            }
                            // Revoked or detached: the device completes SEGMENT_INVALID.
                            None => ctx.resume(),
                        }
                    }
                    // The context was closed after the device wrote the record: nothing to
                    // answer, the disable already dropped the stalled command.
                    (None, _) => pr_debug!("fault for closed context {index} asid {asid}\n"),
                }
            }
        }
    }

    fn notify_completions(&self) {
        let table = self.contexts.lock();
        for ctx in table.slots.iter().flatten() {
            ctx.notify_completion();
        }
    }
}

/// Fault vector: wake the thread, which resolves misses (sleeps in `hmm_range_fault`).
struct FaultIrq(Arc<Rmnic>);

impl IrqHandler for FaultIrq {
    fn handle(&self) -> IrqReturn {
        IrqReturn::WakeThread
    }

    fn handle_thread(&self) -> ThreadReturn {
        self.0.drain_faults();
        ThreadReturn::Handled
    }
}

/// Completion vector: wake every waiter (each checks its own used ring). In the thread: the
/// context table's spinlock is taken with interrupts enabled elsewhere, so the hard handler
/// must not take it.
struct CompletionIrq(Arc<Rmnic>);

impl IrqHandler for CompletionIrq {
    fn handle(&self) -> IrqReturn {
        IrqReturn::WakeThread
    }

    fn handle_thread(&self) -> ThreadReturn {
        self.0.notify_completions();
        ThreadReturn::Handled
    }
}

/// Error vector: report.
struct ErrorIrq(Arc<Rmnic>);

impl IrqHandler for ErrorIrq {
    fn handle(&self) -> IrqReturn {
        IrqReturn::WakeThread
    }

    fn handle_thread(&self) -> ThreadReturn {
        let status = self.0.hw.read(REG_DEV_STATUS).unwrap_or(u32::MAX);
        let error = self.0.hw.read(REG_DEV_ERROR).unwrap_or(u32::MAX);
        pr_err!("device error interrupt: status {status:#x} error {error:#x}\n");
        ThreadReturn::Handled
    }
}

/// The rmnic PCI driver.
pub(crate) struct RmnicDriver;

/// `/dev/rmnic`'s file operations: static, because files opened before an unbind still use
/// them when they are closed (see `misc`).
static FOPS: misc::FileOperations<RmnicDriver> = misc::FileOperations::new(&crate::THIS_MODULE);

/// What the PCI core keeps for a bound device. Field order is teardown order.
pub(crate) struct Bound {
    misc: Option<Pin<KBox<misc::Registration<RmnicDriver>>>>,
    /// `rmnic/driver/`: the driver-wide counters (leak accounting, OOM-reaper calls).
    _driver_debugfs: Option<Dir>,
    irqs: Option<(
        ThreadedIrq<FaultIrq>,
        ThreadedIrq<CompletionIrq>,
        ThreadedIrq<ErrorIrq>,
    )>,
    rmnic: Arc<Rmnic>,
}

impl pci::Driver for RmnicDriver {
    type Data = KBox<Bound>;

    fn probe(dev: &pci::Device) -> Result<KBox<Bound>> {
        dev.enable()?;
        let enabled = ScopeGuard::new(|| dev.disable());
        dev.request_regions(c_str!("rmnic"))?;
        let claimed = ScopeGuard::new(|| dev.release_regions());

        let pci_vendor = dev.config_read16(PCI_CFG_VENDOR_ID)?;
        let pci_device = dev.config_read16(PCI_CFG_DEVICE_ID)?;
        let bar = dev.iomap::<BAR0_SIZE>(0)?;
        let id = bar.read32::<REG_ID>();
        if id != ID_MAGIC {
            pr_err!("ID register reads {id:#010x}, expected {ID_MAGIC:#010x}\n");
            return Err(ENODEV);
        }
        let version = bar.read32::<REG_VERSION>();
        pr_info!(
            "rmnic: device {pci_vendor:04x}:{pci_device:04x} ID {id:#010x} spec {}.{}\n",
            version >> 16,
            version & 0xffff
        );
        if version >> 16 != SPEC_MAJOR {
            pr_err!(
                "rmnic: spec major {} unsupported (driver speaks {SPEC_MAJOR})\n",
                version >> 16
            );
            return Err(ENODEV);
        }
        for pattern in SCRATCH_PATTERNS {
            bar.write32::<REG_SCRATCH>(pattern);
            let readback = bar.read32::<REG_SCRATCH>();
            if readback != pattern {
                pr_err!("scratch wrote {pattern:#010x}, read {readback:#010x}\n");
                return Err(EIO);
            }
        }
        pr_info!("scratch register round-trip ok\n");
        let contexts = ((bar.read32::<REG_CAPS>() & CAPS_CONTEXTS_MASK) as usize).min(MAX_CONTEXTS);
        dma::set_dma_mask(dev, 64)?;
        dev.set_master();

        let faults = CoherentRing::alloc(dev, FAULT_ENTRIES, FAULT_RECORD_SIZE)?;
        faults.fill_zero();
        let invq = InvalidationQueue::new(dev)?;
        let rmnic = Arc::pin_init(
            try_pin_init!(Rmnic {
                pdev: pci::DeviceRef::new(dev),
                hw <- Hw::new(bar),
                invq <- invq,
                faults,
                fault_tail <- new_mutex!((0, 0), "rmnic::Rmnic::fault_tail"),
                recovery <- new_mutex!((), "rmnic::Rmnic::recovery"),

                segments <- new_spinlock!(Segments::new()?, "rmnic::Rmnic::segments"),
                contexts <- new_spinlock!(Contexts {
                    slots: [const { None }; MAX_CONTEXTS],
                    reserved: 0,
                    count: contexts,
                    next_asid: 1,
                }, "rmnic::Rmnic::contexts"),
                pci_vendor,
                pci_device,
                debugfs: Dir::new(c_str!("rmnic"), None),
            }? Error),
            GFP_KERNEL,
        )?;
        let reset_target = rmnic.clone();
        let reset = ScopeGuard::new(move || {
            let _ = reset_target.hw.write(REG_DEV_CONTROL, DEV_CONTROL_FLR);
        });
        rmnic.program_fault_ring()?;
        rmnic.invq.program(&rmnic.hw)?;

        let vectors = IrqVectors::alloc_msix(dev, NUM_VECTORS, NUM_VECTORS)?;
        let fault_irq = ThreadedIrq::request(
            &vectors,
            VECTOR_FAULT,
            c_str!("rmnic-fault"),
            FaultIrq(rmnic.clone()),
        )?;
        let completion_irq = ThreadedIrq::request(
            &vectors,
            VECTOR_COMPLETION,
            c_str!("rmnic-completion"),
            CompletionIrq(rmnic.clone()),
        )?;
        let error_irq = ThreadedIrq::request(
            &vectors,
            VECTOR_ERROR,
            c_str!("rmnic-error"),
            ErrorIrq(rmnic.clone()),
        )?;
        drop(vectors);
        rmnic.hw.write(REG_DEV_CONTROL, DEV_CONTROL_ENABLE)?;

        let misc = misc::Registration::<RmnicDriver>::new(c_str!("rmnic"), rmnic.clone(), &FOPS)?;
        let driver_debugfs = rmnic.debugfs.as_ref().and_then(|root| {
            let mut dir = Dir::new(c_str!("driver"), Some(root))?;
            dir.counters(Arc::new((), GFP_KERNEL).ok()?, &counters::DEBUGFS)
                .ok()?;
            Some(dir)
        });
        let bound = KBox::new(
            Bound {
                misc: Some(misc),
                _driver_debugfs: driver_debugfs,
                irqs: Some((fault_irq, completion_irq, error_irq)),
                rmnic,
            },
            GFP_KERNEL,
        )?;
        reset.dismiss();
        claimed.dismiss();
        enabled.dismiss();
        pr_info!("bound, {contexts} contexts, /dev/rmnic registered\n");
        Ok(bound)
    }

    fn remove(dev: &pci::Device, mut data: KBox<Bound>) {
        // No new opens. Files still open keep `Rmnic` alive and see ENODEV from here on.
        drop(data.misc.take());
        // Quiesce: reset the function (it forgets every context, ring and TLB entry), then
        // stop the interrupt handlers, then revoke MMIO and unmap outside the spinlock.
        let _ = data.rmnic.hw.write(REG_DEV_CONTROL, DEV_CONTROL_FLR);
        drop(data.irqs.take());
        let bar = data.rmnic.hw.revoke();
        drop(bar);
        dev.release_regions();
        dev.disable();
        pr_info!("removed\n");
    }
}

impl misc::FileOps for RmnicDriver {
    type Shared = Rmnic;
    type Open = Arc<Context>;

    fn open(shared: &Arc<Rmnic>) -> Result<Arc<Context>> {
        Context::open(shared, &shared.pdev)
    }

    fn release(shared: &Rmnic, ctx: Arc<Context>) {
        shared.close_context(&ctx);
    }

    fn poll(_shared: &Rmnic, ctx: &Arc<Context>, table: &crate::poll::PollTable) -> u32 {
        ctx.poll(table)
    }

    fn mmap(shared: &Rmnic, ctx: &Arc<Context>, vma: &mut crate::vma::Vma<'_>) -> Result {
        ctx.mmap(vma, shared.doorbell_page(ctx.index()))
    }

    fn ioctl(shared: &Rmnic, ctx: &Arc<Context>, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            uapi::IOC_VERSION => {
                let info = version_info(shared)?;
                UserSlice::new(arg, core::mem::size_of::<uapi::VersionInfo>())
                    .writer()
                    .write(&info)?;
                Ok(0)
            }
            uapi::IOC_SCRATCH => {
                let (mut reader, mut writer) =
                    UserSlice::new(arg, core::mem::size_of::<uapi::ScratchProbe>()).reader_writer();
                let mut probe: uapi::ScratchProbe = reader.read()?;
                shared.hw.write(REG_SCRATCH, probe.value)?;
                probe.readback = shared.hw.read(REG_SCRATCH)?;
                writer.write(&probe)?;
                Ok(0)
            }
            uapi::IOC_SUBMIT => submit(ctx, arg),
            uapi::IOC_EXPORT => export(shared, ctx, arg),
            uapi::IOC_REMOVE => {
                let segid: u64 = UserSlice::new(arg, core::mem::size_of::<u64>())
                    .reader()
                    .read()?;
                ctx.check_usable()?;
                let removed = shared.segments.lock().remove(&shared.hw, ctx, segid)?;
                drop(removed);
                Ok(0)
            }
            uapi::IOC_ATTACH => attach(shared, ctx, arg),
            uapi::IOC_DETACH => {
                let slot: u32 = UserSlice::new(arg, core::mem::size_of::<u32>())
                    .reader()
                    .read()?;
                ctx.check_usable()?;
                shared.segments.lock().detach(&shared.hw, ctx.index(), slot)?;
                Ok(0)
            }
            uapi::IOC_FAULT_AHEAD => {
                let pages: u32 = UserSlice::new(arg, core::mem::size_of::<u32>())
                    .reader()
                    .read()?;
                ctx.check_usable()?;
                ctx.set_fault_ahead(pages)?;
                Ok(0)
            }
            uapi::IOC_WAIT => wait(ctx, arg),
            uapi::IOC_USER_WAIT => {
                let arg: uapi::UserWait = UserSlice::new(arg, core::mem::size_of::<uapi::UserWait>())
                    .reader()
                    .read()?;
                ctx.user_wait(arg.head, arg.timeout_ms)?;
                Ok(0)
            }
            uapi::IOC_USER_QUEUE => {
                let layout = ctx.take_user_queue(&shared.pdev)?;
                UserSlice::new(arg, core::mem::size_of::<uapi::UserQueue>())
                    .writer()
                    .write(&layout)?;
                Ok(0)
            }
            uapi::IOC_STATS => {
                UserSlice::new(arg, core::mem::size_of::<uapi::ContextStats>())
                    .writer()
                    .write(&ctx.stats())?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}

/// `RMNIC_IOC_SUBMIT`: copy the commands in (no lock held), queue them.
fn submit(ctx: &Context, arg: usize) -> Result<isize> {
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<uapi::Submit>()).reader_writer();
    let mut req: uapi::Submit = reader.read()?;
    if req.count > uapi::MAX_BATCH {
        return Err(EINVAL);
    }
    let count = req.count as usize;
    let mut commands = KVec::with_capacity(count, GFP_KERNEL)?;
    let mut user = UserSlice::new(
        req.commands as usize,
        count * core::mem::size_of::<uapi::Command>(),
    )
    .reader();
    for _ in 0..count {
        let cmd: uapi::Command = user.read()?;
        if cmd.reserved0 != 0 || cmd.reserved1 != 0 {
            return Err(EINVAL);
        }
        commands.push(cmd, GFP_KERNEL)?;
    }
    req.queued = ctx.submit(&commands)?;
    writer.write(&req)?;
    Ok(0)
}

/// Segments need device 1.2 (`CAPS_SEGMENTS`); without it the ioctls do not exist (ENOTTY).
fn require_segments(shared: &Rmnic) -> Result {
    if shared.hw.read(REG_CAPS)? & CAPS_SEGMENTS == 0 {
        return Err(ENOTTY);
    }
    Ok(())
}

/// `RMNIC_IOC_EXPORT`: the caller exports a range of its own address space.
fn export(shared: &Rmnic, ctx: &Arc<Context>, arg: usize) -> Result<isize> {
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<uapi::SegmentExport>()).reader_writer();
    let mut req: uapi::SegmentExport = reader.read()?;
    require_segments(shared)?;
    ctx.check_usable()?;
    if req.flags & uapi::SEGMENT_REMOTE != 0 {
        require_remote(shared)?;
    }
    let creds = Credentials::current();
    req.segid = shared
        .segments
        .lock()
        .export(&shared.hw, ctx, &req, creds)?;
    writer.write(&req)?;
    Ok(0)
}

/// Remote segments need device 1.3.
fn require_remote(shared: &Rmnic) -> Result {
    if shared.hw.read(REG_VERSION)? & 0xffff < crate::segment::SPEC_MINOR_REMOTE {
        return Err(ENOTTY);
    }
    Ok(())
}

/// `RMNIC_IOC_ATTACH` of a segment of the fabric's other node: a slot is reserved, then the
/// device asks the other node (the register write returns when it answered, within a second),
/// with no lock of ours held meanwhile.
fn attach_remote(shared: &Rmnic, ctx: &Arc<Context>, req: &mut uapi::SegmentAttach) -> Result {
    if req.flags & !(uapi::SEGMENT_WRITABLE | uapi::SEGMENT_REMOTE) != 0 {
        return Err(EINVAL);
    }
    require_remote(shared)?;
    let index = ctx.index();
    let slot = shared.segments.lock().reserve_remote(index)?;
    let register = CTX_ATTACH_BASE + 4 * slot as usize;
    let mut value = ATTACH_VALID | ATTACH_REMOTE;
    if req.flags & uapi::SEGMENT_WRITABLE != 0 {
        value |= ATTACH_WRITABLE;
    }
    let attached = (|| -> Result<u64> {
        shared.hw.ctx_write64(index, CTX_RKEY_LO, req.segid)?;
        shared.hw.ctx_write(index, register, value)?;
        if shared.hw.ctx_read(index, register)? & ATTACH_VALID == 0 {
            // Unknown id, refused permission, or no answer: the device does not say which.
            return Err(ENOENT);
        }
        let lo = shared.hw.ctx_read(index, CTX_RLENGTH_LO)?;
        let hi = shared.hw.ctx_read(index, CTX_RLENGTH_HI)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    })();
    match attached {
        Ok(length) => {
            req.slot = slot;
            req.length = length;
            Ok(())
        }
        Err(e) => {
            shared.segments.lock().release_remote(index, slot);
            Err(e)
        }
    }
}

/// `RMNIC_IOC_ATTACH`: the caller attaches a segment, if its credentials allow.
fn attach(shared: &Rmnic, ctx: &Arc<Context>, arg: usize) -> Result<isize> {
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<uapi::SegmentAttach>()).reader_writer();
    let mut req: uapi::SegmentAttach = reader.read()?;
    require_segments(shared)?;
    ctx.check_usable()?;
    if req.flags & uapi::SEGMENT_REMOTE != 0 {
        attach_remote(shared, ctx, &mut req)?;
        writer.write(&req)?;
        return Ok(0);
    }
    let creds = Credentials::current();
    let (slot, length) = shared
        .segments
        .lock()
        .attach(&shared.hw, ctx.index(), &req, creds)?;
    req.slot = slot;
    req.length = length;
    writer.write(&req)?;
    Ok(0)
}

/// `RMNIC_IOC_WAIT`: collect completions into a kernel buffer, then copy them out.
fn wait(ctx: &Context, arg: usize) -> Result<isize> {
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<uapi::Wait>()).reader_writer();
    let mut req: uapi::Wait = reader.read()?;
    let max = req.max.min(crate::cmdq::SLOTS) as usize;
    let mut out = KVec::with_capacity(max, GFP_KERNEL)?;
    for _ in 0..max {
        out.push(uapi::Completion::default(), GFP_KERNEL)?;
    }
    let count = ctx.wait(&mut out, req.min, req.timeout_ms)? as usize;
    let mut user = UserSlice::new(
        req.completions as usize,
        count * core::mem::size_of::<uapi::Completion>(),
    )
    .writer();
    for done in out.iter().take(count) {
        user.write(done)?;
    }
    req.count = count as u32;
    writer.write(&req)?;
    Ok(0)
}

/// Reads the identification registers.
fn version_info(shared: &Rmnic) -> Result<uapi::VersionInfo> {
    Ok(uapi::VersionInfo {
        abi_version: uapi::ABI_VERSION,
        driver_version: uapi::DRIVER_VERSION,
        pci_vendor: shared.pci_vendor,
        pci_device: shared.pci_device,
        device_id: shared.hw.read(REG_ID)?,
        device_version: shared.hw.read(REG_VERSION)?,
        device_caps: shared.hw.read(REG_CAPS)?,
    })
}
