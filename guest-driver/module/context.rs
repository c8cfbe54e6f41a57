// SPDX-License-Identifier: GPL-2.0

//! A device context: one open file of `/dev/rmnic`, bound to the opener's address space.
//!
//! Coherence lives here. [`Mirror`] is what the mmu interval notifier calls back into: on every
//! change to the process's page tables it sends the device one range invalidation (or one
//! ASID-wide flush on exit) and waits for it to complete before returning, so the kernel never
//! reuses a page the device can still reach. The miss path ([`Context::resolve_fault`]) fills
//! the device TLB with `hmm_range_fault` inside the `read_begin` / `read_retry` protocol, holding
//! [`Mirror::update`] (the lock the notifier takes) across the retry check and the drop-in.
//! Nothing is pinned: coherence comes from the notifier alone.
//!
//! Lock order: `Context::queue` → `Rmnic::fault_tail` → `Mirror::update` → `Hw::bar` (MMIO).
//! No spinlock is held across an allocation or a sleep; the two mutexes are never taken by the
//! notifier.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{Arc, CondVar, CondVarTimeoutResult, Mutex, SpinLock};
use kernel::time::msecs_to_jiffies;
use kernel::{new_condvar, new_mutex, new_spinlock};

use kernel::c_str;
use kernel::str::CStr;

use crate::cmdq::{CommandQueue, Indices, SLOTS};
use crate::dma::CoherentBuffer;
use crate::debugfs::Dir;
use crate::device::Rmnic;
use crate::hmm::{self, Access};
use crate::invq::Target;
use crate::mm::{MmRef, MmUsers};
use crate::mmu::{Event, Handle, IntervalCallbacks, IntervalNotifier, Range, Seq};
use crate::pci;
use crate::poll::{self, PollQueue, PollTable};
use crate::regs::*;
use crate::uapi;
use crate::user_queue::UserQueue;
use crate::vma::Vma;

/// Miss-path retries before a fault is aborted (each retry means an invalidation raced it).
const MAX_FAULT_RETRIES: u32 = 16;
/// Page size and the 2 MiB huge page size.
const PAGE: u64 = 4096;
const HUGE_PAGE: u64 = 2 << 20;

/// Counters of one context (`RMNIC_IOC_STATS`, and debugfs `rmnic/ctx<N>-asid<A>/`).
#[derive(Default)]
pub(crate) struct Stats {
    submitted: AtomicU64,
    completed: AtomicU64,
    faults: AtomicU64,
    dropins_4k: AtomicU64,
    dropins_2m: AtomicU64,
    aborts: AtomicU64,
    invalidations_received: AtomicU64,
    invalidations_sent: AtomicU64,
    retries: AtomicU64,
}

/// The debugfs files of a context's counters.
pub(crate) const DEBUGFS_COUNTERS: [(&CStr, fn(&Mirror) -> &AtomicU64); 9] = [
    (c_str!("submitted"), |m| &m.stats.submitted),
    (c_str!("completed"), |m| &m.stats.completed),
    (c_str!("faults"), |m| &m.stats.faults),
    (c_str!("dropins_4k"), |m| &m.stats.dropins_4k),
    (c_str!("dropins_2m"), |m| &m.stats.dropins_2m),
    (c_str!("aborts"), |m| &m.stats.aborts),
    (c_str!("invalidations_received"), |m| &m.stats.invalidations_received),
    (c_str!("invalidations_sent"), |m| &m.stats.invalidations_sent),
    (c_str!("retries"), |m| &m.stats.retries),
];

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the device may hold for this context, as far as the driver knows.
pub(crate) struct Coverage {
    /// Union of every dropped-in translation since the last ASID flush: `[lo, hi)`, empty when
    /// `lo >= hi`. Invalidations outside it need not reach the device.
    lo: u64,
    hi: u64,
    /// The address space is gone (notifier release) or the file is closing: no more drop-ins.
    dead: bool,
    /// The file is closing: the device slot may be handed to another context, so nothing may
    /// be written to it on this context's behalf any more.
    closed: bool,
}

/// The part of a context the notifier and the miss path share.
#[pin_data]
pub(crate) struct Mirror {
    rmnic: Arc<Rmnic>,
    /// Device context number.
    pub(crate) index: usize,
    /// Device ASID.
    pub(crate) asid: u16,
    /// The notifier's update lock. A spinlock: non-blockable invalidations must not sleep.
    #[pin]
    update: SpinLock<Coverage>,
    stats: Stats,
}

impl IntervalCallbacks for Arc<Mirror> {
    fn invalidate(&self, range: &Range<'_>, cur_seq: Seq, notifier: &Handle) -> bool {
        bump(&self.stats.invalidations_received);
        let blockable = range.is_blockable();
        if !blockable {
            crate::counters::up(&crate::counters::NONBLOCKING_INVALIDATIONS);
        }
        let target = {
            let mut cov = self.update.lock();
            notifier.set_seq(cur_seq);
            if cov.dead {
                // Already flushed (release) or being torn down: nothing to shoot down.
                return true;
            }
            if range.event() == Event::Release {
                // Process exit: one ASID-wide flush instead of one invalidation per VMA.
                cov.dead = true;
                if cov.lo >= cov.hi {
                    return true;
                }
                cov.lo = u64::MAX;
                cov.hi = 0;
                Target::Asid(self.asid)
            } else {
                let start = (range.start() as u64).max(cov.lo);
                let end = (range.end() as u64).min(cov.hi);
                if start >= end {
                    return true;
                }
                Target::Range {
                    asid: self.asid,
                    start: start & !(PAGE - 1),
                    end: end.next_multiple_of(PAGE),
                }
            }
        };
        // Outside the lock: waiting for the device may sleep. A fault that raced us sees the
        // new sequence in `read_retry` and retries; `read_begin` blocks until we return.
        match self.rmnic.invalidate(target, blockable) {
            Ok(()) => {
                bump(&self.stats.invalidations_sent);
                true
            }
            Err(e) if e == EAGAIN && !blockable => {
                crate::counters::up(&crate::counters::NONBLOCKING_DEFERRED);
                false
            }
            Err(e) => {
                // The device is gone or dead: it holds no translations anymore.
                pr_err!(
                    "rmnic: context {}: invalidation failed: {e:?}\n",
                    self.index
                );
                true
            }
        }
    }
}

/// Queue state of a context, under `Context::queue`.
struct QueueState {
    indices: Indices,
}

/// An open `/dev/rmnic` file.
/// The device context is disabled by `Rmnic::close_context` before the last reference goes;
/// dropping the notifier then waits for any running callback.
#[pin_data]
pub(crate) struct Context {
    mirror: Arc<Mirror>,
    /// Keeps the mm struct (and its page-table root) allocated; not the address space.
    mm: MmRef,
    notifier: IntervalNotifier<Arc<Mirror>>,
    queue_mem: CommandQueue,
    /// Where the miss path writes drop-in lists (device 1.4), used only under the mirror's
    /// update lock; None when the device has no drop-in lists (one DROPIN per translation).
    dropin_list: Option<CoherentBuffer>,
    /// The record count the device's list registers of this context hold (0: address and
    /// count not written yet), so a miss writes only what changed; under `Mirror::update`.
    dropin_list_programmed: AtomicU32,
    /// Fault-ahead window in pages (`RMNIC_IOC_FAULT_AHEAD`): 1..=`MAX_FAULT_AHEAD`.
    fault_ahead: AtomicU32,
    #[pin]
    queue: Mutex<QueueState>,
    /// Woken by the completion interrupt.
    #[pin]
    completed: CondVar,
    /// Same, for `poll()`.
    #[pin]
    pollers: PollQueue,
    /// The queue the process drives itself once it asked for it (`RMNIC_IOC_USER_QUEUE`);
    /// from then on the kernel queue above is unused. A spinlock of its own: `mmap` reads it
    /// under the mmap lock, which must not nest inside `queue` (waiters hold `queue` while
    /// the miss path takes the mmap lock).
    #[pin]
    user_queue: SpinLock<Option<Arc<UserQueue>>>,
    /// `rmnic/ctx<N>-asid<A>/` in debugfs: this context's counters.
    _debugfs: Option<Dir>,
    /// The device was reset under this context (`Rmnic::recover`): its commands are gone and
    /// every later call fails with EIO; the process may open a new context.
    lost: AtomicBool,
}

impl Context {
    /// Opens a context for the current process: device context and ASID, command queue,
    /// notifier over the whole address space, page-table root for the oracle. May sleep.
    pub(crate) fn open(rmnic: &Arc<Rmnic>, dev: &pci::Device) -> Result<Arc<Self>> {
        let users = MmUsers::current()?;
        let (index, asid) = rmnic.alloc_context()?;
        let guard = kernel::types::ScopeGuard::new(|| rmnic.free_context(index));
        let mirror = Arc::pin_init(
            pin_init!(Mirror {
                rmnic: rmnic.clone(),
                index,
                asid,
                update <- new_spinlock!(Coverage { lo: u64::MAX, hi: 0, dead: false, closed: false },
                                        "rmnic::Mirror::update"),
                stats: Stats::default(),
            }),
            GFP_KERNEL,
        )?;
        let queue_mem = CommandQueue::new(dev)?;
        let dropin_list = if rmnic.has_dropin_lists() {
            Some(CoherentBuffer::alloc(dev, DROPIN_LIST_MAX * DROPIN_RECORD_SIZE)?)
        } else {
            None
        };
        let debugfs = rmnic.debugfs_context_dir(index, asid, &mirror);
        let notifier = IntervalNotifier::insert_all(&users, mirror.clone())?;
        let mm = users.grab();
        let ctx = Arc::pin_init(
            pin_init!(Context {
                mirror,
                mm,
                notifier,
                queue_mem,
                dropin_list,
                dropin_list_programmed: AtomicU32::new(0),
                fault_ahead: AtomicU32::new(uapi::DEFAULT_FAULT_AHEAD),
                queue <- new_mutex!(QueueState { indices: Indices { submitted: 0, collected: 0 } },
                                    "rmnic::Context::queue"),
                completed <- new_condvar!("rmnic::Context::completed"),
                pollers <- PollQueue::new(),
                user_queue <- new_spinlock!(None, "rmnic::Context::user_queue"),
                _debugfs: debugfs,
                lost: AtomicBool::new(false),
            }),
            GFP_KERNEL,
        )?;
        drop(users);
        rmnic.enable_context(&ctx)?;
        guard.dismiss();
        Ok(ctx)
    }

    /// Device context number.
    pub(crate) fn index(&self) -> usize {
        self.mirror.index
    }

    /// Device ASID.
    pub(crate) fn asid(&self) -> u16 {
        self.mirror.asid
    }

    /// Physical address of the process's top-level page table.
    pub(crate) fn pgd_phys(&self) -> u64 {
        self.mm.pgd_phys()
    }

    /// The command queue memory (for programming the device).
    pub(crate) fn queue_mem(&self) -> &CommandQueue {
        &self.queue_mem
    }

    /// `RMNIC_IOC_FAULT_AHEAD`: the miss path's window, in pages (1: a miss resolves only its
    /// own page).
    pub(crate) fn set_fault_ahead(&self, pages: u32) -> Result {
        if !(1..=uapi::MAX_FAULT_AHEAD).contains(&pages) {
            return Err(EINVAL);
        }
        self.fault_ahead.store(pages, Ordering::Relaxed);
        Ok(())
    }

    /// Marks the context closing: the miss path stops touching the device slot from here on.
    pub(crate) fn mark_closed(&self) {
        let mut cov = self.mirror.update.lock();
        cov.dead = true;
        cov.closed = true;
    }

    /// Marks the context lost to a device reset: no more drop-ins, no more writes to its
    /// device slot (the reset freed it), and every call from now on fails with EIO.
    pub(crate) fn mark_lost(&self) {
        let mut cov = self.mirror.update.lock();
        cov.dead = true;
        cov.closed = true;
        self.lost.store(true, Ordering::Release);
    }

    fn check_lost(&self) -> Result {
        if self.lost.load(Ordering::Acquire) {
            return Err(EIO);
        }
        Ok(())
    }

    /// Wakes waiters and pollers (completion interrupt).
    pub(crate) fn notify_completion(&self) {
        self.completed.notify_all();
        self.pollers.wake();
    }

    /// `poll()`: readable when completions wait to be collected.
    pub(crate) fn poll(&self, table: &PollTable) -> u32 {
        table.register(&self.pollers);
        if self.lost.load(Ordering::Acquire) {
            return poll::ERROR | poll::READABLE;
        }
        let q = self.queue.lock();
        if self.queue_mem.ready(&q.indices) > 0 {
            poll::READABLE
        } else {
            0
        }
    }

    /// Checks that the caller is the process the context is bound to.
    fn check_caller(&self) -> Result {
        let users = MmUsers::current()?;
        if !users.is_same(&self.mm) {
            return Err(EPERM);
        }
        Ok(())
    }

    /// The kernel queue is the process's no more (`RMNIC_IOC_USER_QUEUE`): `EINVAL`.
    fn check_kernel_queue(&self) -> Result {
        if self.user_queue.lock().is_some() {
            return Err(EINVAL);
        }
        Ok(())
    }

    /// `RMNIC_IOC_USER_QUEUE`: hands the context's queue to the calling process (once; a
    /// second call reports the same layout). Refused with `EBUSY` while commands it submitted
    /// through the kernel are outstanding. May sleep.
    pub(crate) fn take_user_queue(&self, dev: &pci::Device) -> Result<uapi::UserQueue> {
        self.check_caller()?;
        self.check_lost()?;
        if !self.mirror.rmnic.has_inline_queues() {
            return Err(ENOTTY);
        }
        if self.user_queue.lock().is_some() {
            return Ok(UserQueue::layout());
        }
        // Allocated before any lock is taken: allocation may sleep and reclaim.
        let queue = Arc::new(UserQueue::new(dev)?, GFP_KERNEL)?;
        // Under the queue lock no kernel submission can slip in between the check and the
        // switch.
        let q = self.queue.lock();
        if self.user_queue.lock().is_some() {
            return Ok(UserQueue::layout());
        }
        if q.indices.submitted != q.indices.collected {
            return Err(EBUSY);
        }
        self.mirror
            .rmnic
            .switch_to_user_queue(self.mirror.index, &queue)?;
        *self.user_queue.lock() = Some(queue);
        drop(q);
        Ok(UserQueue::layout())
    }

    /// `RMNIC_IOC_USER_WAIT`: sleeps until the user queue's head reaches `target`, or
    /// `timeout_ms` passes (`EAGAIN`; 0: no limit). Every 10 ms without a wake-up it drains the fault
    /// ring itself, as `wait` does: the process's commands make no completion interrupt, and
    /// a lost fault interrupt would otherwise stall the context until the next one.
    /// Interruptible.
    pub(crate) fn user_wait(&self, target: u32, timeout_ms: u32) -> Result {
        self.check_caller()?;
        let queue = self.user_queue.lock().clone().ok_or(EINVAL)?;
        let start = kernel::time::Ktime::ktime_get();
        // The condition variable needs a mutex; `queue` is otherwise unused once the process
        // owns its queue.
        let mut q = self.queue.lock();
        loop {
            self.check_lost()?;
            if (queue.head()?.wrapping_sub(target) as i32) >= 0 {
                return Ok(());
            }
            if timeout_ms != 0 {
                let waited = kernel::time::ktime_ms_delta(kernel::time::Ktime::ktime_get(), start);
                if waited >= i64::from(timeout_ms) {
                    return Err(EAGAIN);
                }
            }
            self.sleep_or_drain(&mut q)?;
        }
    }

    /// `mmap` of the context's file: the user queue at `USER_QUEUE_MMAP_OFFSET`, or the
    /// context's own doorbell page (physical address `doorbell`) at
    /// `USER_DOORBELL_MMAP_OFFSET`. Only shared mappings of the process the context serves,
    /// never inherited by a child. Runs under the mmap lock: takes only `user_queue`.
    pub(crate) fn mmap(&self, vma: &mut Vma<'_>, doorbell: u64) -> Result {
        self.check_lost()?;
        if !vma.is_in(&self.mm) {
            return Err(EPERM);
        }
        if !vma.shared() {
            return Err(EINVAL);
        }
        let queue = self.user_queue.lock().clone().ok_or(EINVAL)?;
        vma.set_not_inherited();
        match vma.offset() {
            uapi::USER_QUEUE_MMAP_OFFSET => queue.map_into(vma),
            uapi::USER_DOORBELL_MMAP_OFFSET if vma.len() == kernel::page::PAGE_SIZE => {
                vma.map_io_uncached(doorbell, kernel::page::PAGE_SIZE)
            }
            _ => Err(EINVAL),
        }
    }

    /// `RMNIC_IOC_SUBMIT`: queues commands (already copied from user space); returns how many
    /// fit.
    pub(crate) fn submit(&self, commands: &[uapi::Command]) -> Result<u32> {
        self.check_caller()?;
        self.check_lost()?;
        self.check_kernel_queue()?;
        let mut queued = 0;
        {
            let mut q = self.queue.lock();
            for cmd in commands {
                let in_flight = q.indices.submitted.wrapping_sub(q.indices.collected);
                if in_flight >= SLOTS {
                    break;
                }
                self.queue_mem.push(&mut q.indices, cmd)?;
                queued += 1;
            }
        }
        if queued > 0 {
            self.mirror.rmnic.doorbell(self.mirror.index)?;
            self.mirror
                .stats
                .submitted
                .fetch_add(u64::from(queued), Ordering::Relaxed);
        }
        Ok(queued)
    }

    /// `RMNIC_IOC_WAIT`: collects up to `out.len()` completions, sleeping until `min` are
    /// ready or `timeout_ms` passes (0: no limit). Interruptible.
    pub(crate) fn wait(
        &self,
        out: &mut [uapi::Completion],
        min: u32,
        timeout_ms: u32,
    ) -> Result<u32> {
        self.check_kernel_queue()?;
        let min = min.min(out.len() as u32);
        let mut q = self.queue.lock();
        let start = kernel::time::Ktime::ktime_get();
        loop {
            self.check_lost()?;
            if self.queue_mem.ready(&q.indices) >= min {
                break;
            }
            if timeout_ms != 0 {
                let waited = kernel::time::ktime_ms_delta(kernel::time::Ktime::ktime_get(), start);
                if waited >= i64::from(timeout_ms) {
                    break;
                }
            }
            self.sleep_or_drain(&mut q)?;
        }
        let ready = self.queue_mem.ready(&q.indices).min(out.len() as u32);
        for slot in out.iter_mut().take(ready as usize) {
            *slot = self.queue_mem.pop(&mut q.indices)?;
        }
        self.mirror
            .stats
            .completed
            .fetch_add(u64::from(ready), Ordering::Relaxed);
        Ok(ready)
    }

    /// One sleep of a waiter (`wait`, `user_wait`) on the completion interrupt, at most 10 ms:
    /// waking up periodically even without an interrupt makes a lost completion or fault
    /// interrupt delay a waiter by 10 ms instead of hanging it, because a waiter that timed
    /// out checks the device and drains the fault ring itself. Interruptible.
    fn sleep_or_drain(&self, q: &mut Guard<'_, QueueState, MutexBackend>) -> Result {
        match self
            .completed
            .wait_interruptible_timeout(q, msecs_to_jiffies(10))
        {
            CondVarTimeoutResult::Signal { .. } => Err(ERESTARTSYS),
            CondVarTimeoutResult::Timeout => {
                // Lost interrupts, or a device that reset itself under us.
                self.mirror.rmnic.check_alive();
                self.mirror.rmnic.drain_faults();
                Ok(())
            }
            CondVarTimeoutResult::Woken { .. } => Ok(()),
        }
    }

    /// `RMNIC_IOC_STATS`.
    pub(crate) fn stats(&self) -> uapi::ContextStats {
        let s = &self.mirror.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        uapi::ContextStats {
            submitted: get(&s.submitted),
            completed: get(&s.completed),
            faults: get(&s.faults),
            dropins_4k: get(&s.dropins_4k),
            dropins_2m: get(&s.dropins_2m),
            aborts: get(&s.aborts),
            invalidations_received: get(&s.invalidations_received),
            invalidations_sent: get(&s.invalidations_sent),
            retries: get(&s.retries),
            asid: u32::from(self.mirror.asid),
            context: self.mirror.index as u32,
        }
    }

    /// Answers one device fault of this context at `va` (miss path). Runs in the fault
    /// interrupt thread; sleeps.
    pub(crate) fn resolve_fault(&self, va: u64, write: bool) {
        bump(&self.mirror.stats.faults);
        let filled = self.fill(va, write);
        if let Err(e) = &filled {
            if *e != EFAULT && *e != EPERM && *e != EACCES {
                // A mapped page the miss path could not resolve: the command fails although
                // the CPU would have succeeded. Never expected; say why.
                pr_err!(
                    "rmnic: context {}: miss at {va:#x} ({}) aborted: {e:?}\n",
                    self.mirror.index,
                    if write { "write" } else { "read" }
                );
            }
        }
        self.answer(filled);
    }

    /// Answers one device fault of this context (the importer) on a segment: the VA is in
    /// the address space of `owner`, the exporter, which gets the drop-in (its ASID is the
    /// one the device looked up); this context is then resumed. `[base, base + length)` is
    /// the segment, which the device already checked the VA against; checked again here.
    pub(crate) fn resolve_segment_fault(
        &self,
        owner: &Context,
        base: u64,
        length: u64,
        va: u64,
        write: bool,
    ) {
        bump(&self.mirror.stats.faults);
        crate::counters::up(&crate::counters::SEGMENT_FAULTS);
        let inside = va.checked_sub(base).is_some_and(|offset| offset < length);
        let filled = if inside {
            owner.fill(va, write)
        } else {
            Err(EFAULT)
        };
        self.answer(filled);
    }

    /// Resolves a remote fault of the fabric's other node on this context's export: the
    /// translation of `va` is dropped in under this context's ASID (the device looks it up
    /// again), and the answer for `REG_REMOTE_ANSWER` is returned. No context stalls.
    pub(crate) fn resolve_remote_fault(&self, va: u64, write: bool) -> u32 {
        crate::counters::up(&crate::counters::SEGMENT_FAULTS);
        match self.fill(va, write) {
            Ok(()) => REMOTE_ANSWER_RESOLVED,
            Err(e) if e == EPERM || e == EACCES => REMOTE_ANSWER_PERMISSION,
            Err(_) => REMOTE_ANSWER_UNRESOLVED,
        }
    }

    /// Resumes this context without a fill: its segment fault named a slot the driver already
    /// revoked or detached, so the device's retry completes the command SEGMENT_INVALID.
    pub(crate) fn resume(&self) {
        bump(&self.mirror.stats.faults);
        self.answer(Ok(()));
    }

    /// Checks that the caller is the context's process and the context was not lost to a
    /// device reset (segment ioctls).
    pub(crate) fn check_usable(&self) -> Result {
        self.check_caller()?;
        self.check_lost()
    }

    /// Resumes this context after a successful fill, or aborts its stalled command with the
    /// status the error calls for: `EPERM`/`EACCES` → PERMISSION, anything else →
    /// FAULT_UNRESOLVED.
    fn answer(&self, filled: Result) {
        let mirror = &self.mirror;
        let command = match filled {
            Ok(()) => CTX_CMD_RESUME,
            Err(e) => {
                let status = if e == EPERM || e == EACCES {
                    uapi::status::PERMISSION
                } else {
                    uapi::status::FAULT_UNRESOLVED
                };
                bump(&mirror.stats.aborts);
                CTX_CMD_ABORT | (status << CTX_CMD_ABORT_STATUS_SHIFT)
            }
        };
        // Under the update lock and only while the context is alive: once closed, its device
        // slot may already belong to another process's context.
        let cov = mirror.update.lock();
        if cov.closed {
            return;
        }
        let _ = mirror.rmnic.context_command(mirror.index, command);
        drop(cov);
    }

    /// Drops the translation of `va` in this context's address space into the device, under
    /// this context's ASID (the miss path proper; `answer` then resumes the stalled context,
    /// which is this one or an importer of its segment). With a fault-ahead window of more
    /// than one page, the pages after `va` in the window that the CPU page tables already map
    /// go in with it (nothing else is faulted), in one drop-in list when the device takes
    /// lists.
    fn fill(&self, va: u64, write: bool) -> Result {
        let mirror = &self.mirror;
        // The address space may be exiting: then there is nothing to map.
        let users = self.mm.mmget_not_zero().ok_or(EFAULT)?;
        let page = (va & !(PAGE - 1)) as usize;
        let access = if write { Access::Write } else { Access::Read };
        let window = self.fault_ahead.load(Ordering::Relaxed).max(1) as usize;
        // Inside the notifier's interval (the whole address space) and `MAX_FAULT_PAGES`.
        let end = page
            .saturating_add(window.min(hmm::MAX_FAULT_PAGES) * PAGE as usize)
            .min(self.notifier.end());
        for _ in 0..MAX_FAULT_RETRIES {
            let result = if end > page + PAGE as usize {
                hmm::fault_first(&users, &self.notifier, page, end, access)
            } else {
                hmm::fault_range(&users, &self.notifier, page, page + PAGE as usize, access)
            };
            let faulted = match result {
                Ok(faulted) => faulted,
                Err(e) if e == EBUSY => {
                    bump(&mirror.stats.retries);
                    continue;
                }
                Err(e) => {
                    // The verdict an aborted command reports: cross-checked against the VMA,
                    // since a refusal where the CPU would succeed is a miss-path bug.
                    if (e == EFAULT || e == EPERM)
                        && users.mmap_read_lock().anon_vma_allows(page, write)
                    {
                        pr_err!(
                            "rmnic: context {}: the walk refused the {} miss at {va:#x} ({e:?}) although its anonymous VMA allows it\n",
                            mirror.index,
                            if write { "write" } else { "read" }
                        );
                    }
                    return Err(e);
                }
            };
            // Step 3 of the hmm.rst protocol: under the update lock, check the sequence and
            // program the device before dropping the lock. The walk's result means nothing
            // until the sequence check passed: an invalidation that raced it (a fork's
            // write-protect, a THP split) can leave the first page read-only or invalid in
            // the array although the CPU mapping allows the access, so that verdict waits.
            let mut cov = mirror.update.lock();
            if self.notifier.read_retry(faulted.seq()) {
                drop(cov);
                bump(&mirror.stats.retries);
                continue;
            }
            if cov.dead {
                return Err(EFAULT);
            }
            // A successful walk under an unchanged sequence faulted the first page in for
            // `access`: anything else is a broken promise of `hmm_range_fault`; say so.
            if !faulted.entry(0).is_some_and(|e| !write || e.writable()) {
                drop(cov);
                pr_err!(
                    "rmnic: context {}: the walk of {va:#x} succeeded without the page\n",
                    mirror.index
                );
                return Err(EFAULT);
            }
            let mut listed = 0;
            // The next address not yet covered (a 2 MiB entry covers the pages after it).
            let mut next = page as u64;
            for index in 0..faulted.pages() {
                let at = page as u64 + index as u64 * PAGE;
                if at < next {
                    continue;
                }
                let Some(entry) = faulted.entry(index) else {
                    continue;
                };
                let huge = entry.map_size() as u64 >= HUGE_PAGE;
                // The 2 MiB page around `at` (a 1 GiB mapping is dropped in 2 MiB at a time).
                let (entry_va, entry_pa, size) = if huge {
                    let base = at & !(HUGE_PAGE - 1);
                    (base, entry.phys_addr() - (at - base), HUGE_PAGE)
                } else {
                    (at, entry.phys_addr(), PAGE)
                };
                let mut attr = DROPIN_ATTR_READ;
                // Only a write miss gets writable translations, and only where the CPU
                // mapping allows writes: a read-only neighbour stays read-only (COW).
                if write && entry.writable() {
                    attr |= DROPIN_ATTR_WRITE;
                    // The kernel must learn that the device may dirty the page: a PTE can be
                    // writable and clean (after MADV_FREE, after a read swap-in), and then
                    // nothing else would tell reclaim or writeback. The kernel cleans a page
                    // only after an invalidation removed the entry, and a later write faults
                    // again and marks it again (docs/driver.md, "Dirty pages").
                    // SAFETY: under `Mirror::update` with `read_retry` false: no invalidation
                    // of this page has started since `hmm_range_fault`, and unmap, truncate
                    // and reclaim all start with one, which waits for this lock: the page is
                    // still mapped, and a file page's mapping cannot be truncated meanwhile.
                    unsafe { entry.mark_dirty() };
                    crate::counters::up(&crate::counters::PAGES_DIRTIED);
                }
                if huge {
                    attr |= DROPIN_ATTR_2M;
                }
                match &self.dropin_list {
                    Some(list) if listed < DROPIN_LIST_MAX => {
                        let record = listed * DROPIN_RECORD_SIZE;
                        list.write::<u64>(record, entry_va | u64::from(attr))?;
                        list.write::<u64>(record + 8, entry_pa)?;
                        listed += 1;
                    }
                    _ => mirror
                        .rmnic
                        .drop_in(mirror.index, entry_va, entry_pa, attr)?,
                }
                cov.lo = cov.lo.min(entry_va);
                cov.hi = cov.hi.max(entry_va + size);
                bump(if huge {
                    &mirror.stats.dropins_2m
                } else {
                    &mirror.stats.dropins_4k
                });
                next = entry_va + size;
            }
            if let (Some(list), true) = (&self.dropin_list, listed > 0) {
                mirror
                    .rmnic
                    .drop_in_list(
                        mirror.index,
                        list.dma_addr(),
                        listed,
                        &self.dropin_list_programmed,
                    )?;
            }
            return Ok(());
        }
        Err(EBUSY)
    }
}
