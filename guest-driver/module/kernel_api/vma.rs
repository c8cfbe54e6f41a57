// SPDX-License-Identifier: GPL-2.0

//! The `struct vm_area_struct` a file's `mmap` receives: what the driver may read of it and the
//! two ways it fills it (device-visible coherent memory, one page of a device's BAR).
//!
//! A [`Vma`] exists only inside the `mmap` callback (`misc::FileOps::mmap`): the kernel holds
//! the mmap lock for writing and has not linked the area into the address space yet, so the
//! driver is its only user.

use core::marker::PhantomData;

use kernel::bindings;
use kernel::error::to_result;
use kernel::prelude::*;

use crate::mm::Mm;

/// x86 page-table bit PCD (cache disable). With Linux's PAT layout, PCD alone selects entry 2,
/// UC- (uncached, overridable by MTRR WC): what `pgprot_noncached` gives and what `ioremap`
/// of a BAR uses, so the user mapping agrees with the kernel's own mapping of the BAR.
const X86_PAGE_PCD: bindings::pgprotval_t = 1 << 4;
/// x86 page-table bits that select the cache mode (PWT, PCD, PAT for 4 KiB pages).
const X86_PAGE_CACHE_MASK: bindings::pgprotval_t = (1 << 3) | (1 << 4) | (1 << 7);

/// An area being mapped by a file's `mmap`.
///
/// # Invariants
///
/// `ptr` points at the area the running `mmap` callback was given; the callback does not
/// return while `self` exists (the lifetime ties it to the callback's frame).
pub(crate) struct Vma<'a> {
    ptr: *mut bindings::vm_area_struct,
    _callback: PhantomData<&'a mut bindings::vm_area_struct>,
}

impl Vma<'_> {
    /// Wraps the area of a running `mmap` callback.
    ///
    /// # Safety
    ///
    /// `ptr` is the `vma` argument of the running `file_operations::mmap` call, and the
    /// returned value must not outlive that call.
    pub(crate) unsafe fn from_raw(ptr: *mut bindings::vm_area_struct) -> Self {
        // INVARIANT: by the caller's contract.
        Self {
            ptr,
            _callback: PhantomData,
        }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: `ptr` is valid during the callback (type invariant); the bounds are set
        // before `mmap` is called and not changed by anyone else meanwhile.
        let (start, end) = unsafe {
            let bounds = (*self.ptr).__bindgen_anon_1.__bindgen_anon_1;
            (bounds.vm_start, bounds.vm_end)
        };
        (end - start) as usize
    }

    /// The offset `mmap` was given, in bytes.
    pub(crate) fn offset(&self) -> u64 {
        // SAFETY: as in `len`.
        let pgoff = unsafe { (*self.ptr).vm_pgoff };
        (pgoff as u64) << bindings::PAGE_SHIFT
    }

    /// Whether the area belongs to the address space `mm`.
    pub(crate) fn is_in(&self, mm: &Mm) -> bool {
        // SAFETY: as in `len`; `vm_mm` is set when the area is allocated.
        let owner = unsafe { (*self.ptr).vm_mm };
        core::ptr::eq(owner, mm.as_raw())
    }

    /// Whether the mapping is shared (`MAP_SHARED`): the process's stores reach the mapped
    /// memory itself, never a private copy.
    pub(crate) fn shared(&self) -> bool {
        // SAFETY: as in `len`.
        let flags = unsafe { (*self.ptr).__bindgen_anon_2.vm_flags };
        flags & bindings::VM_SHARED as bindings::vm_flags_t != 0
    }

    /// The mapping is not inherited across `fork` (`VM_DONTCOPY`) and stays out of core dumps.
    pub(crate) fn set_not_inherited(&mut self) {
        // SAFETY: the area is not linked into its address space yet (`__mmap_region` calls the
        // file's `mmap` before `vma_iter_store`) and the mmap lock is held for writing, so no
        // one else reads the flags: writing them directly is what `vm_flags_init` does for such
        // areas (`vm_flags_set` is an inline function Rust cannot call in 6.12).
        unsafe {
            (*self.ptr).__bindgen_anon_2.__vm_flags |=
                (bindings::VM_DONTCOPY | bindings::VM_DONTDUMP) as bindings::vm_flags_t;
        }
    }

    /// Maps the whole area onto device memory at physical address `phys` (page aligned),
    /// uncached (UC-), as `io_remap_pfn_range` does; `EINVAL` unless the area is exactly
    /// `len` bytes. The file offset plays no part (it only chose what to map).
    pub(crate) fn map_io_uncached(&mut self, phys: u64, len: usize) -> Result {
        if self.len() != len || phys % kernel::page::PAGE_SIZE as u64 != 0 {
            return Err(EINVAL);
        }
        // SAFETY: as in `set_not_inherited`: nobody else reads the protection or the bounds.
        let (start, prot) = unsafe {
            let prot = &mut (*self.ptr).vm_page_prot.pgprot;
            *prot = (*prot & !X86_PAGE_CACHE_MASK) | X86_PAGE_PCD;
            (
                (*self.ptr).__bindgen_anon_1.__bindgen_anon_1.vm_start,
                (*self.ptr).vm_page_prot,
            )
        };
        // SAFETY: `ptr` is the area of the running `mmap` (type invariant) and `[start,
        // start + len)` is all of it; `remap_pfn_range` maps page frames with no struct page
        // (a BAR) and marks the area VM_IO | VM_PFNMAP (never pinned, never part of a core
        // dump); on x86 it is what `io_remap_pfn_range` does for unencrypted device memory.
        to_result(unsafe {
            bindings::remap_pfn_range(
                self.ptr,
                start,
                (phys >> bindings::PAGE_SHIFT) as _,
                len as _,
                prot,
            )
        })
    }

    /// The raw area, for [`crate::dma::CoherentBuffer::map_into`].
    pub(crate) fn as_raw(&mut self) -> *mut bindings::vm_area_struct {
        self.ptr
    }
}
