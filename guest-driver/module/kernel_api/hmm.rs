// SPDX-License-Identifier: GPL-2.0

//! Resolving a device TLB miss: a safe `hmm_range_fault` that returns the physical pages behind a
//! user virtual range, without pinning them.
//!
//! `hmm_range_fault` walks (and, with `HMM_PFN_REQ_FAULT`, faults in) the CPU page tables of the
//! notifier's mm and fills one `hmm_pfn` per page. Nothing is pinned (no `get_user_pages`): the
//! result is only a snapshot, and the interval notifier ([`crate::mmu`]) is what keeps it honest.
//! The protocol, from `Documentation/mm/hmm.rst` ("Address space mirroring implementation and
//! API", `driver_populate_range`) and `lib/test_hmm.c` (`dmirror_range_fault`):
//!
//! 1. `mm = notifier.mm().mmget_not_zero()` (the process may have exited: then give up).
//! 2. [`fault_range`] (or [`Faulted::refault`]): allocates the pfn array first, then loops
//!    `seq = mmu_interval_read_begin()`; `mmap_read_lock`; `hmm_range_fault`; `mmap_read_unlock`
//!    while it returns `-EBUSY` (an invalidation collided with the walk), for at most
//!    `HMM_RANGE_DEFAULT_TIMEOUT` (1000 ms) like `test_hmm`, and returns the pfns with the `seq`
//!    that produced them. No driver lock may be held across it: `read_begin` waits for running
//!    invalidations, which take the update lock.
//! 3. Take the update lock (the lock `invalidate` takes around `set_seq`). If
//!    `notifier.read_retry(faulted.seq())` is `true`, drop the lock and go back to step 2
//!    ([`Faulted::refault`] reuses the array). Otherwise program the device from
//!    [`Faulted::entries`] *while still holding the lock*, and only then release it.
//!
//! "The driver->update lock is the same lock that the driver takes inside its invalidate()
//! callback. That lock must be held before calling mmu_interval_read_retry() to avoid any race with
//! a concurrent CPU page table update." (hmm.rst). The entries are plain numbers, so reading them
//! at any time is memory-safe, but they are only *true* between a `false` `read_retry` and the
//! release of the update lock.

use kernel::bindings;
use kernel::error::to_result;
use kernel::ffi::c_ulong;
use kernel::prelude::*;
use kernel::time::{ktime_ms_delta, Ktime};

use crate::mm::{MmUsers, MmapReadGuard};
use crate::mmu::{Handle, Seq};

/// Largest range one [`fault_range`] call resolves: one PMD worth of 4 KiB pages (2 MiB), so the
/// pfn array is at most one page and a miss never turns into an unbounded walk.
pub(crate) const MAX_FAULT_PAGES: usize = 512;

/// `PAGE_SIZE` of the kernel (4 KiB on x86-64).
const PAGE_SIZE: usize = bindings::PAGE_SIZE;
/// `PAGE_SHIFT` of the kernel.
const PAGE_SHIFT: u32 = bindings::PAGE_SHIFT;

/// Output bit: the pfn field is valid and the page is at least readable.
const HMM_PFN_VALID: c_ulong = bindings::hmm_pfn_flags_HMM_PFN_VALID;
/// Output bit: the page may be written (only with `HMM_PFN_VALID`).
const HMM_PFN_WRITE: c_ulong = bindings::hmm_pfn_flags_HMM_PFN_WRITE;
/// Output bit: the page cannot be accessed (poisoned, special, no VMA).
const HMM_PFN_ERROR: c_ulong = bindings::hmm_pfn_flags_HMM_PFN_ERROR;
/// All flag bits; the rest is the page frame number.
const HMM_PFN_FLAGS: c_ulong = bindings::hmm_pfn_flags_HMM_PFN_FLAGS;
/// Input flag: fault the page in so that the output is `HMM_PFN_VALID`.
const HMM_PFN_REQ_FAULT: c_ulong = bindings::hmm_pfn_flags_HMM_PFN_REQ_FAULT;
/// Input flag: fault for write so that the output is `HMM_PFN_WRITE`.
const HMM_PFN_REQ_WRITE: c_ulong = bindings::hmm_pfn_flags_HMM_PFN_REQ_WRITE;

/// The access a device fault needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Fault in readable pages (`HMM_PFN_REQ_FAULT`).
    Read,
    /// Fault in writable pages (`HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE`), breaking COW.
    Write,
}

impl Access {
    fn default_flags(self) -> c_ulong {
        match self {
            Self::Read => HMM_PFN_REQ_FAULT,
            Self::Write => HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE,
        }
    }
}

/// Which pages of a range a walk must fault in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Every page, for the access (`default_flags`).
    All(Access),
    /// The first page for the access, and the pages after it as a prefetch (fault-ahead):
    /// `hmm_range_fault` faults those in the first page's VMA and page table too, and reads
    /// the others as the page tables hold them (valid if present, no error for holes). If the
    /// prefetch cannot be faulted in, only the first page is, and the rest is read as it is:
    /// nothing but the first page makes the walk fail.
    First(Access),
}

/// One decoded `hmm_pfn`: the page behind a virtual page, and the CPU mapping that contains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageEntry {
    va: usize,
    pfn: u64,
    order: u32,
    writable: bool,
}

impl PageEntry {
    /// Decodes the entry for the virtual page at `va`; `None` unless `HMM_PFN_VALID` is set and
    /// `HMM_PFN_ERROR` is not.
    fn decode(va: usize, hmm_pfn: c_ulong) -> Option<Self> {
        if hmm_pfn & HMM_PFN_VALID == 0 || hmm_pfn & HMM_PFN_ERROR != 0 {
            return None;
        }
        // SAFETY: the helper is pure bit arithmetic on its argument (`include/linux/hmm.h`);
        // `HMM_PFN_VALID` was tested as it requires.
        let order = unsafe { bindings::hmm_pfn_to_map_order(hmm_pfn) };
        Some(Self {
            va,
            // CAST: usize to u64 is lossless on 64-bit kernels.
            pfn: (hmm_pfn & !HMM_PFN_FLAGS) as u64,
            order,
            writable: hmm_pfn & HMM_PFN_WRITE != 0,
        })
    }

    /// Marks the page's folio dirty (`set_page_dirty`): the kernel will write it back or swap
    /// it out instead of dropping it. Does not sleep.
    ///
    /// # Safety
    ///
    /// The page must still be mapped where the entry says: call it under the notifier's update
    /// lock after `read_retry` returned false for this entry's sequence (so no invalidation,
    /// hence no unmap, truncate or reclaim of the page, has started since the fault).
    ///
    /// `set_page_dirty` does not sleep for the memory the suite maps: anonymous and shmem
    /// folios only get a flag, hugetlbfs likewise, ext2's `block_dirty_folio` takes spinlocks
    /// and needs truncation held off, which the lock above does. A file system whose
    /// `dirty_folio` sleeps (ext4 with data journalling) would need this call moved out of the
    /// lock, on a page reference (`set_page_dirty_lock`).
    pub(crate) unsafe fn mark_dirty(&self) {
        // SAFETY: `pfn` came from a valid `hmm_range_fault` entry, so it names a struct page;
        // the helper is `pfn_to_page`. The caller guarantees the page is mapped, so it (and its
        // mapping, for a file page) stays alive for the call; `set_page_dirty` takes only
        // spinlocks.
        unsafe {
            let page = bindings::hmm_pfn_to_page(self.pfn as c_ulong);
            bindings::set_page_dirty(page);
        }
    }

    /// The virtual page this entry describes.
    pub(crate) fn va(&self) -> usize {
        self.va
    }

    /// Page frame number of the physical page behind [`PageEntry::va`].
    pub(crate) fn pfn(&self) -> u64 {
        self.pfn
    }

    /// Physical address of that page (what the device TLB caches).
    pub(crate) fn phys_addr(&self) -> u64 {
        self.pfn << PAGE_SHIFT
    }

    /// Whether the CPU mapping allows writes.
    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    /// Order of the CPU mapping containing the page (`hmm_pfn_to_map_order`): 0 for a 4 KiB PTE,
    /// 9 for a 2 MiB PMD (THP), 18 for a 1 GiB PUD.
    pub(crate) fn order(&self) -> u32 {
        self.order
    }

    /// Size in bytes of that CPU mapping (`PAGE_SIZE << order`).
    pub(crate) fn map_size(&self) -> usize {
        PAGE_SIZE << self.order
    }

    /// First virtual address of that CPU mapping (aligned to [`PageEntry::map_size`]). It may lie
    /// outside the faulted range: every page of the mapping has the same flags and order, but
    /// only pages inside the range were checked by the notifier protocol.
    pub(crate) fn map_va(&self) -> usize {
        self.va & !(self.map_size() - 1)
    }

    /// Page frame number at [`PageEntry::map_va`] (a huge mapping is physically contiguous).
    pub(crate) fn map_pfn(&self) -> u64 {
        // CAST: usize to u64 is lossless on 64-bit kernels.
        self.pfn - ((self.va - self.map_va()) >> PAGE_SHIFT) as u64
    }
}

/// The result of [`fault_range`]: one `hmm_pfn` per page of `[start, end)` and the notifier
/// sequence number they were read under.
pub(crate) struct Faulted {
    start: usize,
    want: Want,
    seq: Seq,
    pfns: KVec<c_ulong>,
}

impl Faulted {
    /// The sequence number to pass to `notifier.read_retry` under the update lock.
    pub(crate) fn seq(&self) -> Seq {
        self.seq
    }

    /// First virtual address of the range.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// One past the last virtual address of the range.
    pub(crate) fn end(&self) -> usize {
        self.start + (self.pfns.len() << PAGE_SHIFT)
    }

    /// Number of pages in the range.
    pub(crate) fn pages(&self) -> usize {
        self.pfns.len()
    }

    /// The entry for page `index` of the range (`None` past the end or if not valid; with
    /// `HMM_PFN_REQ_FAULT` a successful fault leaves every page valid).
    pub(crate) fn entry(&self, index: usize) -> Option<PageEntry> {
        let hmm_pfn = *self.pfns.get(index)?;
        PageEntry::decode(self.start + (index << PAGE_SHIFT), hmm_pfn)
    }

    /// The entry for the page containing `va`, if inside the range.
    pub(crate) fn entry_at(&self, va: usize) -> Option<PageEntry> {
        let index = va.checked_sub(self.start)? >> PAGE_SHIFT;
        self.entry(index)
    }

    /// All valid entries, in address order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = PageEntry> + '_ {
        (0..self.pfns.len()).filter_map(|index| self.entry(index))
    }

    /// Faults the same range again after `read_retry` reported a collision (step 2 of the
    /// protocol), reusing the pfn array. Consumes `self` so that an error cannot leave a
    /// half-overwritten array next to a still-current sequence number.
    pub(crate) fn refault(mut self, mm: &MmUsers, notifier: &Handle) -> Result<Self> {
        let end = self.end();
        check_range(mm, notifier, self.start, end)?;
        self.seq = fault_loop(mm, notifier, self.start, end, self.want, &mut self.pfns)?;
        Ok(self)
    }
}

/// Faults in `[start, end)` of `mm` for `access` and returns the pages with the sequence number
/// they are valid under (step 2 of the protocol in the module documentation).
///
/// `start` and `end` must be page-aligned, `start < end`, at most [`MAX_FAULT_PAGES`] pages,
/// inside `notifier`'s interval, and `mm` must be `notifier`'s mm; otherwise `EINVAL`. Sleeps;
/// call it without holding the update lock or `mmap_lock`. Errors are `hmm_range_fault`'s:
/// `EFAULT` (no VMA or no access), `EPERM` (write to a read-only mapping), `EINVAL` (a VMA HMM
/// cannot mirror, e.g. `VM_IO`/`VM_PFNMAP`), `ENOMEM`, and `EBUSY` if invalidations kept
/// colliding for `HMM_RANGE_DEFAULT_TIMEOUT`.
pub(crate) fn fault_range(
    mm: &MmUsers,
    notifier: &Handle,
    start: usize,
    end: usize,
    access: Access,
) -> Result<Faulted> {
    fault(mm, notifier, start, end, Want::All(access))
}

/// [`fault_range`] that must fault in the first page of `[start, end)` for `access` and
/// takes the rest as a prefetch: `hmm_range_fault` faults in, for `access` too, the pages
/// after the first up to the end of its VMA and of its page table (a 2 MiB boundary), and
/// reads the pages beyond as the page tables hold them. A page present comes back valid (with
/// its own write permission), one that is not, or a hole without a VMA, comes back invalid.
/// Nothing but the first page makes the call fail: when the prefetch cannot be faulted in (a
/// page past the end of a file), the first page is faulted in alone and the rest read as it
/// is. The miss path's fault-ahead window.
pub(crate) fn fault_first(
    mm: &MmUsers,
    notifier: &Handle,
    start: usize,
    end: usize,
    access: Access,
) -> Result<Faulted> {
    fault(mm, notifier, start, end, Want::First(access))
}

/// [`fault_range`] and [`fault_first`]: a fresh pfn array, walked for `want`.
fn fault(mm: &MmUsers, notifier: &Handle, start: usize, end: usize, want: Want) -> Result<Faulted> {
    let pages = check_range(mm, notifier, start, end)?;
    // Allocate before anything else: the notifier's update lock must never be held across a
    // sleeping allocation (reclaim invalidates), and we hold no lock here.
    let mut pfns = KVec::from_elem(0, pages, GFP_KERNEL)?;
    let seq = fault_loop(mm, notifier, start, end, want, &mut pfns)?;
    Ok(Faulted {
        start,
        want,
        seq,
        pfns,
    })
}

/// Validates a range against the notifier; returns its length in pages.
fn check_range(mm: &MmUsers, notifier: &Handle, start: usize, end: usize) -> Result<usize> {
    if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
        return Err(EINVAL);
    }
    let pages = (end - start) >> PAGE_SHIFT;
    if pages > MAX_FAULT_PAGES {
        return Err(EINVAL);
    }
    if start < notifier.start() || end > notifier.end() {
        return Err(EINVAL);
    }
    // `hmm_range_fault` walks `notifier->mm` and asserts that *its* mmap lock is held.
    if !mm.is_same(notifier.mm()) {
        return Err(EINVAL);
    }
    Ok(pages)
}

/// The `-EBUSY` retry loop of `hmm.rst` / `test_hmm`; returns the sequence of the successful walk.
fn fault_loop(
    mm: &MmUsers,
    notifier: &Handle,
    start: usize,
    end: usize,
    want: Want,
    pfns: &mut KVec<c_ulong>,
) -> Result<Seq> {
    // `check_range` guarantees this; the C walk would write past the array otherwise.
    if pfns.len() != (end - start) >> PAGE_SHIFT {
        return Err(EINVAL);
    }
    let started = Ktime::ktime_get();
    loop {
        if ktime_ms_delta(Ktime::ktime_get(), started)
            > i64::from(bindings::HMM_RANGE_DEFAULT_TIMEOUT)
        {
            return Err(EBUSY);
        }
        let seq = notifier.read_begin();
        let ret = {
            let mmap = mm.mmap_read_lock();
            let locked = Locked {
                _mmap: &mmap,
                notifier,
                seq,
            };
            match want {
                Want::All(access) => locked.walk(start, pfns, access.default_flags(), 0),
                Want::First(access) => locked.walk_first(start, pfns, access),
            }
        };
        if ret == EBUSY.to_errno() {
            // An invalidation collided with the walk; `read_begin` waits for it to end.
            continue;
        }
        if ret != 0 && notifier.check_retry(seq) {
            // The walk failed while an invalidation ran: what it saw was the page tables
            // in the middle of a change, so the error is no verdict on the address (step 2
            // of the protocol holds for failures as for results). Walk again; an address
            // that is really gone fails again under a stable sequence.
            crate::counters::up(&crate::counters::WALK_ERRORS_RACED);
            continue;
        }
        to_result(ret)?;
        return Ok(seq);
    }
}

/// Per-page request bits a `pfn_flags_mask` lets through.
const REQUEST_MASK: c_ulong = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;

/// What one `hmm_range_fault` needs besides its range: the mmap read lock of the notifier's
/// mm (held for as long as this lives), the notifier and the sequence of the walk.
struct Locked<'a> {
    _mmap: &'a MmapReadGuard<'a>,
    notifier: &'a Handle,
    seq: Seq,
}

impl Locked<'_> {
    /// One `hmm_range_fault` over `pfns.len()` pages from `start`; returns its errno (0 on
    /// success). A page's request is `(pfns[i] & pfn_flags_mask) | default_flags`. The pages
    /// must lie inside the notifier's interval, and the lock must be of the notifier's mm
    /// (`check_range` checks both before any walk).
    fn walk(
        &self,
        start: usize,
        pfns: &mut [c_ulong],
        default_flags: c_ulong,
        pfn_flags_mask: c_ulong,
    ) -> i32 {
        let mut range = bindings::hmm_range {
            notifier: self.notifier.as_raw(),
            notifier_seq: self.seq.raw(),
            start,
            end: start + (pfns.len() << PAGE_SHIFT),
            hmm_pfns: pfns.as_mut_ptr(),
            default_flags,
            pfn_flags_mask,
            dev_private_owner: core::ptr::null_mut(),
        };
        // SAFETY: `range.notifier` is inserted (a `&Handle` exists) and covers `[start, end)`
        // (`check_range`); its mm is alive and read-locked (`_mmap`, taken on that mm after
        // `check_range` compared them); `hmm_pfns` has one initialised slot per page of the
        // range and is exclusively borrowed for the call.
        unsafe { bindings::hmm_range_fault(&mut range) }
    }

    /// [`Want::First`]'s walk of `pfns.len()` pages from `start`; returns its errno.
    fn walk_first(&self, start: usize, pfns: &mut [c_ulong], access: Access) -> i32 {
        // Per-page requests: the first page's, none for the others. The walk overwrites the
        // array, so they are written again on every try.
        pfns.iter_mut().for_each(|p| *p = 0);
        if let Some(first) = pfns.first_mut() {
            *first = access.default_flags();
        }
        let window = self.walk(start, pfns, 0, REQUEST_MASK);
        if window == 0 || window == EBUSY.to_errno() {
            return window;
        }
        // `hmm_vma_fault` faults every page from the first to the end of its VMA and page
        // table in the window, and one that cannot be faulted in (past the end of a file:
        // SIGBUS) fails the whole walk. The window is a prefetch: fault the first page alone,
        // then read the window as the page tables hold it.
        let first = pfns.get_mut(..1).unwrap_or(&mut []);
        let alone = self.walk(start, first, access.default_flags(), 0);
        if alone != 0 {
            return alone;
        }
        crate::counters::up(&crate::counters::WINDOW_FALLBACKS);
        pfns.iter_mut().for_each(|p| *p = 0);
        self.walk(start, pfns, 0, 0)
    }
}
