// SPDX-License-Identifier: GPL-2.0

//! A safe `mmu_interval_notifier`: the callback that keeps the device TLB coherent with the CPU
//! page tables of one process.
//!
//! This is the pattern of `lib/test_hmm.c` (and `Documentation/mm/hmm.rst`, "Address space
//! mirroring implementation and API"): one [`IntervalNotifier`] per open context, usually spanning
//! the whole user address space ([`IntervalNotifier::insert_all`]). Whenever the kernel is about
//! to change page-table entries in the interval, it calls [`IntervalCallbacks::invalidate`]; on
//! return the device must no longer use any translation in the range. A device TLB fill uses the
//! sequence protocol: [`Handle::read_begin`] before walking the page tables (see
//! [`crate::hmm::fault_range`]), then [`Handle::read_retry`] under the driver's *update lock*
//! right before programming the device; the invalidate callback calls [`Handle::set_seq`] under
//! that same lock.
//!
//! # Callback context (read this before writing an `invalidate`)
//!
//! - It runs in the task changing the mapping (munmap, mprotect, page reclaim, migration, THP
//!   split, fork's COW write-protect, `exit_mmap`), often with that mm's `mmap_lock` held (for
//!   read or write) and with page locks held. It must never take `mmap_lock` and never wait for
//!   anything that may itself need `mmap_lock` or a page fault of this mm.
//! - It may be called with a *non-blockable* range ([`Range::is_blockable`] is false), e.g. from
//!   the OOM reaper. Then it must not sleep: take the update lock with a try-lock (6.12 Rust's
//!   `Mutex` has none, so use a `SpinLock`), and return `false` only if the work would have to
//!   sleep. Any other `false` is a bug (`mn_itree_release` warns on it).
//! - It must not allocate memory with a sleeping allocation (`GFP_KERNEL`) while holding the
//!   update lock, and nothing else may hold the update lock across such an allocation: lockdep
//!   primes the notifier against `fs_reclaim` (reclaim itself invalidates), so that is a
//!   reported deadlock. Allocate before taking the lock (as [`crate::hmm`] does).
//! - It must call [`Handle::set_seq`] with the `cur_seq` it was given, under the update lock,
//!   before returning `true` (`include/linux/mmu_notifier.h`, `mmu_interval_set_seq`). The
//!   wrapper checks this after the callback returns and, if it was forgotten, warns once and sets
//!   the sequence late (which leaves a window in which a racing fill may be accepted).
//! - On process exit `exit_mmap` calls it once more with [`Event::Release`] over `[0, ULONG_MAX)`
//!   (blockable): the address space is gone and the device must drop every translation for it.
//!   This is the interval-notifier equivalent of the classic `mmu_notifier_ops::release`, which is
//!   why this module does not wrap the classic notifier.
//! - Concurrent invalidations of the same mm may run on several CPUs at once.
//!
//! Removal ([`IntervalNotifier`]'s `Drop`) waits for running callbacks to finish, so it must not
//! run inside a callback nor while holding the update lock.

use core::marker::PhantomPinned;
use core::mem::offset_of;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::bindings;
use kernel::error::to_result;
use kernel::ffi::{c_ulong, c_void};
use kernel::prelude::*;
use kernel::types::Opaque;

use crate::mm::{Mm, MmUsers};

/// What an interval notifier's owner implements.
pub(crate) trait IntervalCallbacks: Send + Sync {
    /// The CPU page tables in `range` are about to change: stop the device from using any
    /// translation that overlaps it before returning.
    ///
    /// Call `notifier.set_seq(cur_seq)` under the update lock (the lock the fill path holds
    /// around [`Handle::read_retry`]) before returning `true`. Return `false` only when
    /// `range.is_blockable()` is false and the work would need to sleep. See the module
    /// documentation for the context this runs in.
    fn invalidate(&self, range: &Range<'_>, cur_seq: Seq, notifier: &Handle) -> bool;
}

/// A notifier sequence number (`mmu_interval_read_begin`'s result or an invalidation's
/// `cur_seq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seq(c_ulong);

impl Seq {
    /// The raw value, for the `hmm_range` structure.
    pub(crate) fn raw(self) -> c_ulong {
        self.0
    }
}

/// Why the kernel invalidates a range (`enum mmu_notifier_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// munmap, or mremap moving the range away.
    Unmap,
    /// Page-table entries cleared for another reason (madvise, page replaced, reclaim, ...).
    Clear,
    /// mprotect: protection changed for the whole range.
    ProtectionVma,
    /// Read/write permission of some pages changed.
    ProtectionPage,
    /// Soft-dirty accounting; the mapping itself is unchanged.
    SoftDirty,
    /// The mm is being torn down (`exit_mmap`); the range is no longer accessible at all.
    Release,
    /// Pages migrated (`migrate_vma_collect`); compare [`Range::owner`] for device-private pages.
    Migrate,
    /// Exclusive device access to the pages ends.
    Exclusive,
    /// A value this driver does not know (a newer kernel); treat it like [`Event::Clear`].
    Other(u32),
}

impl Event {
    fn from_raw(event: bindings::mmu_notifier_event) -> Self {
        match event {
            bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP => Self::Unmap,
            bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR => Self::Clear,
            bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA => Self::ProtectionVma,
            bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_PAGE => Self::ProtectionPage,
            bindings::mmu_notifier_event_MMU_NOTIFY_SOFT_DIRTY => Self::SoftDirty,
            bindings::mmu_notifier_event_MMU_NOTIFY_RELEASE => Self::Release,
            bindings::mmu_notifier_event_MMU_NOTIFY_MIGRATE => Self::Migrate,
            bindings::mmu_notifier_event_MMU_NOTIFY_EXCLUSIVE => Self::Exclusive,
            other => Self::Other(other),
        }
    }
}

/// The range being invalidated (`struct mmu_notifier_range`), valid during the callback.
pub(crate) struct Range<'a> {
    raw: &'a bindings::mmu_notifier_range,
}

impl Range<'_> {
    /// First address of the range.
    pub(crate) fn start(&self) -> usize {
        self.raw.start
    }

    /// One past the last address of the range (half-open; `usize::MAX` for [`Event::Release`]).
    pub(crate) fn end(&self) -> usize {
        self.raw.end
    }

    /// Why the range is invalidated.
    pub(crate) fn event(&self) -> Event {
        Event::from_raw(self.raw.event)
    }

    /// Whether the callback may sleep (`mmu_notifier_range_blockable`). False e.g. from the OOM
    /// reaper.
    pub(crate) fn is_blockable(&self) -> bool {
        // SAFETY: `raw` is a valid range for the lifetime of `self`; the helper only reads
        // `flags`.
        unsafe { bindings::mmu_notifier_range_blockable(self.raw) }
    }

    /// The `owner` cookie of a [`Event::Migrate`] or [`Event::Exclusive`] invalidation, for
    /// comparison only (never dereferenced).
    pub(crate) fn owner(&self) -> *const c_void {
        self.raw.owner
    }
}

/// An inserted `struct mmu_interval_notifier`, as the callbacks and the fill path see it.
///
/// # Invariants
///
/// While a `&Handle` exists the wrapped notifier is inserted into the interval tree of its mm
/// (between a successful `mmu_interval_notifier_insert` and `mmu_interval_notifier_remove`), so
/// `mm` holds an `mm_count` reference taken by the insert.
#[repr(transparent)]
pub(crate) struct Handle(Opaque<bindings::mmu_interval_notifier>);

// SAFETY: the sequence functions are designed to be called from any thread (they use the
// subscription spinlock, `READ_ONCE`/`WRITE_ONCE` and the caller's own lock).
unsafe impl Sync for Handle {}

impl Handle {
    /// # Safety
    ///
    /// `ptr` must point to a notifier that stays inserted for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::mmu_interval_notifier) -> &'a Self {
        // SAFETY: `Handle` is `repr(transparent)` over `Opaque<mmu_interval_notifier>`.
        // INVARIANT: the caller guarantees the notifier is inserted for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    /// The raw pointer, for [`crate::hmm`].
    pub(crate) fn as_raw(&self) -> *mut bindings::mmu_interval_notifier {
        self.0.get()
    }

    /// The address space this notifier watches.
    pub(crate) fn mm(&self) -> &Mm {
        // SAFETY: `mm` was set by the insert and is not written again while inserted.
        let mm = unsafe { (*self.as_raw()).mm };
        // SAFETY: the insert took an `mm_count` reference that lasts until removal, which cannot
        // happen while `&self` exists (type invariant).
        unsafe { Mm::from_raw(mm) }
    }

    /// First address covered by the interval.
    pub(crate) fn start(&self) -> usize {
        // SAFETY: written by the insert and constant while inserted (type invariant).
        unsafe { (*self.as_raw()).interval_tree.start }
    }

    /// One past the last address covered (the C structure stores the inclusive last address).
    pub(crate) fn end(&self) -> usize {
        // SAFETY: written by the insert and constant while inserted (type invariant).
        let last = unsafe { (*self.as_raw()).interval_tree.last };
        last.saturating_add(1)
    }

    /// Begins a read-side critical section (`mmu_interval_read_begin`).
    ///
    /// Sleeps while an invalidation of this interval is in progress, so never call it with the
    /// update lock held, nor from a callback.
    pub(crate) fn read_begin(&self) -> Seq {
        // SAFETY: inserted by the type invariant.
        Seq(unsafe { bindings::mmu_interval_read_begin(self.as_raw()) })
    }

    /// Ends a read-side critical section (`mmu_interval_read_retry`): `true` if an invalidation
    /// collided with it and the fill must be redone.
    ///
    /// Must be called with the update lock held (the one `invalidate` holds around
    /// [`Handle::set_seq`]); keep the lock until the device has been programmed.
    pub(crate) fn read_retry(&self, seq: Seq) -> bool {
        // SAFETY: inserted by the type invariant; the helper compares one field.
        unsafe { bindings::mmu_interval_read_retry(self.as_raw(), seq.0) }
    }

    /// A lockless hint (`mmu_interval_check_retry`): `true` means a collision already happened
    /// and [`Handle::read_retry`] will say so; `false` proves nothing.
    pub(crate) fn check_retry(&self, seq: Seq) -> bool {
        // SAFETY: inserted by the type invariant; the helper does one `READ_ONCE`.
        unsafe { bindings::mmu_interval_check_retry(self.as_raw(), seq.0) }
    }

    /// Records an invalidation (`mmu_interval_set_seq`). Call it from
    /// [`IntervalCallbacks::invalidate`] with its `cur_seq`, under the update lock.
    pub(crate) fn set_seq(&self, cur_seq: Seq) {
        // SAFETY: inserted by the type invariant; the helper does one `WRITE_ONCE`.
        unsafe { bindings::mmu_interval_set_seq(self.as_raw(), cur_seq.0) }
    }
}

/// The heap part of an [`IntervalNotifier`]: the C structure and the owner's data, at a fixed
/// address while inserted.
#[repr(C)]
struct Inner<T> {
    handle: Handle,
    data: T,
    _pinned: PhantomPinned,
}

/// A registered `mmu_interval_notifier` carrying `T`; removed on drop.
///
/// # Invariants
///
/// `inner.handle` is inserted into the interval tree of an mm, with `ops` set to
/// `OpsTable::<T>::OPS`, from construction until `drop`; `inner` stays pinned for that time.
pub(crate) struct IntervalNotifier<T: IntervalCallbacks> {
    inner: Pin<KBox<Inner<T>>>,
}

// SAFETY: dropping (removal) may happen on any thread; the data moves with it, hence `T: Send`.
unsafe impl<T: IntervalCallbacks> Send for IntervalNotifier<T> {}
// SAFETY: `&IntervalNotifier` gives out `&Handle` (`Sync`) and `&T` (`T: Sync`).
unsafe impl<T: IntervalCallbacks> Sync for IntervalNotifier<T> {}

/// `ULONG_MAX & PAGE_MASK`: the length `lib/test_hmm.c` uses to watch the whole address space.
/// (`TASK_SIZE` is not a constant on x86-64 with 5-level paging, and addresses above it are never
/// mapped, so watching them costs nothing.)
const WHOLE_ADDRESS_SPACE: usize = usize::MAX & !(bindings::PAGE_SIZE - 1);

impl<T: IntervalCallbacks> IntervalNotifier<T> {
    /// Watches `[start, start + length)` of `mm` (`mmu_interval_notifier_insert`).
    ///
    /// Sleeps and allocates; takes `mm`'s mmap lock for writing on the first insert into that mm,
    /// so the caller must not hold it. Per the C documentation the notifier may only enter the
    /// interval tree when a running invalidation ends: establish translations only through the
    /// [`Handle::read_begin`] / [`Handle::read_retry`] protocol, never before it.
    pub(crate) fn insert(mm: &MmUsers, start: usize, length: usize, data: T) -> Result<Self> {
        if length == 0 || start.checked_add(length - 1).is_none() {
            return Err(EINVAL);
        }
        let inner = KBox::pin(
            Inner {
                // All-zero (bindgen's `Default`) is a valid starting state: null pointers, zero
                // integers, unlinked nodes; the insert initialises every field it uses.
                handle: Handle(Opaque::new(bindings::mmu_interval_notifier::default())),
                data,
                _pinned: PhantomPinned,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: the notifier is pinned in its box and not yet shared; `mm` holds an `mm_users`
        // reference as the insert requires (it WARNs on `mm_users == 0`); `OPS` is `'static`.
        to_result(unsafe {
            bindings::mmu_interval_notifier_insert(
                inner.handle.as_raw(),
                mm.as_raw(),
                start,
                length,
                &OpsTable::<T>::OPS,
            )
        })?;
        crate::counters::up(&crate::counters::NOTIFIERS_LIVE);
        // INVARIANT: inserted just above; the box is pinned until `drop` removes it.
        Ok(Self { inner })
    }

    /// Watches the whole user address space of `mm`, like `lib/test_hmm.c` does.
    pub(crate) fn insert_all(mm: &MmUsers, data: T) -> Result<Self> {
        Self::insert(mm, 0, WHOLE_ADDRESS_SPACE, data)
    }

    /// The owner's data, as the callback sees it.
    pub(crate) fn data(&self) -> &T {
        &self.inner.data
    }
}

impl<T: IntervalCallbacks> core::ops::Deref for IntervalNotifier<T> {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.inner.handle
    }
}

impl<T: IntervalCallbacks> Drop for IntervalNotifier<T> {
    fn drop(&mut self) {
        // SAFETY: inserted by the type invariant and removed exactly once, here. When it returns
        // no callback runs or will run, so the box (and `data`) may be freed afterwards; the mm
        // reference the insert took is dropped by the C side.
        unsafe { bindings::mmu_interval_notifier_remove(self.inner.handle.as_raw()) };
        crate::counters::down(&crate::counters::NOTIFIERS_LIVE);
    }
}

/// The per-`T` operations table, a promoted `'static` constant.
struct OpsTable<T>(core::marker::PhantomData<T>);

impl<T: IntervalCallbacks> OpsTable<T> {
    const OPS: bindings::mmu_interval_notifier_ops = bindings::mmu_interval_notifier_ops {
        invalidate: Some(invalidate_callback::<T>),
    };
}

/// Set once the "invalidate forgot set_seq" warning was printed.
static FORGOT_SET_SEQ_WARNED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn invalidate_callback<T: IntervalCallbacks>(
    interval_sub: *mut bindings::mmu_interval_notifier,
    range: *const bindings::mmu_notifier_range,
    cur_seq: c_ulong,
) -> bool {
    // SAFETY: the core only calls `ops->invalidate` on inserted notifiers, and removal waits for
    // running callbacks, so the notifier stays inserted for this call.
    let handle = unsafe { Handle::from_raw(interval_sub) };
    // SAFETY: every notifier using `OpsTable::<T>::OPS` is the `handle` field of an
    // `Inner<T>` (see `IntervalNotifier::insert`), alive while inserted.
    let inner = unsafe {
        &*interval_sub
            .cast::<u8>()
            .sub(offset_of!(Inner<T>, handle))
            .cast::<Inner<T>>()
    };
    // SAFETY: the core passes a valid, unmodified range for the duration of the call.
    let range = Range {
        raw: unsafe { &*range },
    };
    let cur_seq = Seq(cur_seq);
    let done = inner.data.invalidate(&range, cur_seq, handle);
    if done && handle.check_retry(cur_seq) {
        // The callback reported success without recording the invalidation: a fill racing with
        // it could pass `read_retry` and program a stale translation. Record it now, late.
        if !FORGOT_SET_SEQ_WARNED.swap(true, Ordering::Relaxed) {
            pr_warn!("interval notifier returned true without set_seq\n");
        }
        handle.set_seq(cur_seq);
    }
    done
}
