// SPDX-License-Identifier: GPL-2.0

//! Counted references to a process address space (`struct mm_struct`) and its mmap lock.
//!
//! Linux 6.12 has no Rust abstraction for `mm_struct`. rmnic needs one to attach an interval
//! notifier to the opening process ([`crate::mmu`]), to resolve device TLB misses with
//! `hmm_range_fault` ([`crate::hmm`]) and to give the device's verification oracle the page-table
//! root. An `mm_struct` has two reference counts (see `Documentation/mm/active_mm.rst` and
//! `include/linux/sched/mm.h`), and this module gives each its own type:
//!
//! - [`MmRef`] holds `mm_count` (`mmgrab`/`mmdrop`): the *structure* stays allocated, but the
//!   address space may already be torn down (`exit_mmap` ran once `mm_users` hit zero). Cheap, may
//!   be held for as long as a file stays open.
//! - [`MmUsers`] holds `mm_users` (`mmget`/`mmput`): the *address space* (VMAs, page tables)
//!   stays alive. Needed for `mmu_interval_notifier_insert` and `hmm_range_fault`; hold it only
//!   for the duration of an operation, since it keeps an exited process's memory around. Its drop
//!   may run `exit_mmap` and therefore sleeps.
//!
//! The mm of the calling task is found with the exported `get_task_mm(get_current())`, never by
//! reading `task_struct` fields: bindgen's `task_struct` layout is not reliable (see
//! `/work/shared/platform.md`).

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::bindings;
use kernel::ffi::c_ulong;
use kernel::prelude::*;
use kernel::types::Opaque;

/// A `struct mm_struct`, borrowed from one of the owning references below.
///
/// # Invariants
///
/// While a `&Mm` exists the wrapped `mm_struct` is allocated: its owner holds at least an
/// `mm_count` reference for the whole borrow.
#[repr(transparent)]
pub(crate) struct Mm(Opaque<bindings::mm_struct>);

// SAFETY: `mm_struct` is built for concurrent use: every field the methods below touch is either
// immutable after creation (`pgd`) or protected by the kernel's own locks and atomics.
unsafe impl Sync for Mm {}

impl Mm {
    /// Borrows an `Mm` from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to an `mm_struct` on which the caller holds an `mm_count` (or
    /// `mm_users`) reference for all of `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::mm_struct) -> &'a Self {
        // SAFETY: `Mm` is `repr(transparent)` over `Opaque<mm_struct>`, which has the layout of
        // `mm_struct`.
        // INVARIANT: the caller keeps the structure allocated for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    /// The raw pointer, for the other wrapper modules of this crate.
    pub(crate) fn as_raw(&self) -> *mut bindings::mm_struct {
        self.0.get()
    }

    /// Whether `self` and `other` are the same address space.
    pub(crate) fn is_same(&self, other: &Mm) -> bool {
        core::ptr::eq(self.as_raw(), other.as_raw())
    }

    /// Physical address of the top-level page table (`__pa(mm->pgd)`), for the device's
    /// verification oracle.
    ///
    /// The page-table root stays allocated until the last `mm_count` reference is dropped
    /// (`__mmdrop` frees it), so it is valid for as long as the `&Mm` is; after `exit_mmap` it no
    /// longer maps anything.
    pub(crate) fn pgd_phys(&self) -> u64 {
        // SAFETY: by the type invariant the `mm_struct` is allocated, and with it `mm->pgd`; the
        // helper only converts that pointer.
        unsafe { bindings::mm_pgd_phys(self.as_raw()) }
    }

    /// Takes an `mm_count` reference (`mmgrab`): keeps the structure, not the address space.
    pub(crate) fn grab(&self) -> MmRef {
        // SAFETY: the structure is allocated by the type invariant, so its counter may be raised.
        unsafe { bindings::mmgrab(self.as_raw()) };
        // INVARIANT: the `mmgrab` above is the reference the new `MmRef` owns.
        MmRef {
            mm: self.non_null(),
        }
    }

    /// Takes an `mm_users` reference unless the address space is already gone
    /// (`mmget_not_zero`). `None` means the process has exited (or is exiting) its mm.
    pub(crate) fn mmget_not_zero(&self) -> Option<MmUsers> {
        // SAFETY: the structure is allocated by the type invariant; the helper is an
        // `atomic_inc_not_zero` on `mm_users`.
        if unsafe { bindings::mmget_not_zero(self.as_raw()) } {
            // INVARIANT: the successful `mmget_not_zero` is the reference `MmUsers` owns.
            Some(MmUsers {
                mm: self.non_null(),
            })
        } else {
            None
        }
    }

    fn non_null(&self) -> NonNull<Mm> {
        NonNull::from(self)
    }
}

/// An `mm_count` reference (`mmgrab`): the `mm_struct` stays allocated until drop, whatever the
/// process does. It does *not* keep VMAs or page tables; use [`Mm::mmget_not_zero`] to reach
/// those.
///
/// # Invariants
///
/// `mm` points to an `mm_struct` on which this value owns one `mm_count` reference.
pub(crate) struct MmRef {
    mm: NonNull<Mm>,
}

// SAFETY: the reference count is atomic and may be dropped from any thread (`mmdrop` does not
// sleep); `Mm` is `Sync`.
unsafe impl Send for MmRef {}
// SAFETY: `&MmRef` only gives out `&Mm`, which is `Sync`.
unsafe impl Sync for MmRef {}

impl MmRef {
    /// The address space of the calling task, or `ESRCH` for a kernel thread or a task whose mm
    /// is already gone. Process context only: may sleep (`mmput`).
    pub(crate) fn current() -> Result<Self> {
        let users = MmUsers::current()?;
        Ok(users.grab())
    }
}

impl core::ops::Deref for MmRef {
    type Target = Mm;

    fn deref(&self) -> &Mm {
        // SAFETY: by the type invariant the structure is allocated while `self` exists.
        unsafe { self.mm.as_ref() }
    }
}

impl Clone for MmRef {
    fn clone(&self) -> Self {
        self.grab()
    }
}

impl Drop for MmRef {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own one `mm_count` reference, released exactly once.
        unsafe { bindings::mmdrop(self.mm.as_ref().as_raw()) };
    }
}

/// An `mm_users` reference (`mmget`): VMAs and page tables stay alive until drop.
///
/// Dropping it may be the last `mmput`, which runs `exit_mmap`: drop only where sleeping is
/// allowed, and never under a lock the mm's notifiers take.
///
/// # Invariants
///
/// `mm` points to an `mm_struct` on which this value owns one `mm_users` reference.
pub(crate) struct MmUsers {
    mm: NonNull<Mm>,
}

// SAFETY: `mmput` may be called from any task in process context; `Mm` is `Sync`.
unsafe impl Send for MmUsers {}
// SAFETY: `&MmUsers` gives out `&Mm` and read locks, both usable from any thread.
unsafe impl Sync for MmUsers {}

impl MmUsers {
    /// The address space of the calling task (`get_task_mm(current)`), or `ESRCH` for a kernel
    /// thread or a task whose mm is already gone.
    pub(crate) fn current() -> Result<Self> {
        // SAFETY: `get_current` returns the running task, which is valid for this call;
        // `get_task_mm` takes `task_lock` and returns the mm with `mm_users` raised, or NULL.
        let mm = unsafe { bindings::get_task_mm(bindings::get_current()) };
        let mm = NonNull::new(mm.cast::<Mm>()).ok_or(ESRCH)?;
        // INVARIANT: `get_task_mm` raised `mm_users` for us.
        Ok(Self { mm })
    }

    /// Takes the mmap lock for reading (`mmap_read_lock`); sleeps until it is available.
    ///
    /// Never call it while holding a lock an mmu notifier callback takes: the write side is held
    /// across invalidations (munmap, mprotect), which would deadlock on that lock.
    pub(crate) fn mmap_read_lock(&self) -> MmapReadGuard<'_> {
        // SAFETY: the address space is alive by the type invariant; `mmap_lock` is initialised
        // for the whole life of the structure.
        unsafe { bindings::mmap_read_lock(self.as_raw()) };
        // INVARIANT: the read lock was taken just above.
        MmapReadGuard {
            mm: self,
            _not_send: PhantomData,
        }
    }
}

impl core::ops::Deref for MmUsers {
    type Target = Mm;

    fn deref(&self) -> &Mm {
        // SAFETY: by the type invariant the structure is allocated (`mm_users` implies a share of
        // `mm_count`) while `self` exists.
        unsafe { self.mm.as_ref() }
    }
}

impl Drop for MmUsers {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own one `mm_users` reference, released exactly once.
        unsafe { bindings::mmput(self.mm.as_ref().as_raw()) };
    }
}

/// The mmap lock of an address space, held for reading; released on drop.
///
/// Not `Send`: an rwsem must be released by the task that took it (lockdep checks this).
///
/// # Invariants
///
/// The current task holds `mm->mmap_lock` for reading until drop.
pub(crate) struct MmapReadGuard<'a> {
    mm: &'a MmUsers,
    _not_send: PhantomData<*mut ()>,
}

impl MmapReadGuard<'_> {
    /// Whether an anonymous VMA (no file: nothing like a hole or an end of file can refuse a
    /// page) covers `addr` and its flags allow a read (and a write, if `write`) that
    /// `hmm_range_fault` can mirror (not `VM_IO`/`VM_PFNMAP`). A cross-check for a miss the
    /// walk refused, not a substitute for the walk.
    pub(crate) fn anon_vma_allows(&self, addr: usize, write: bool) -> bool {
        // SAFETY: the read lock is held by the type invariant, which keeps the VMA tree and
        // the VMA `find_vma` returns alive and unchanged until the guard drops (after this
        // call); `addr` is any value.
        let vma = unsafe { bindings::find_vma(self.mm.as_raw(), addr as c_ulong) };
        if vma.is_null() {
            return false;
        }
        // SAFETY: non-null, alive under the read lock (above); `vm_start`, `vm_flags` and
        // `vm_file` do not change without the write lock.
        let (start, flags, file) = unsafe {
            (
                (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_start,
                (*vma).__bindgen_anon_2.vm_flags,
                (*vma).vm_file,
            )
        };
        let need = if write {
            bindings::VM_READ | bindings::VM_WRITE
        } else {
            bindings::VM_READ
        } as bindings::vm_flags_t;
        let refuse = (bindings::VM_IO | bindings::VM_PFNMAP) as bindings::vm_flags_t;
        file.is_null() && start as usize <= addr && flags & need == need && flags & refuse == 0
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant this task holds the read lock, released exactly once.
        unsafe { bindings::mmap_read_unlock(self.mm.as_raw()) };
    }
}
