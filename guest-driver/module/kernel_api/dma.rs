// SPDX-License-Identifier: GPL-2.0

//! Coherent DMA memory shared with the device: its fault ring, invalidation queue and command
//! rings (virtio split-ring layout) live in guest RAM allocated here.
//!
//! [`CoherentBuffer`] wraps `dma_alloc_coherent`/`dma_free_coherent`: a CPU mapping plus the bus
//! address the device is told ([`CoherentBuffer::dma_addr`]). The device reads and writes this
//! memory at any time, so the CPU side never forms Rust references to it: every access is a
//! single, naturally aligned atomic load or store of a [`Slot`] (`u8`/`u16`/`u32`/`u64`),
//! bounds-checked at run time, little-endian in memory (as virtio and the rmnic spec define).
//! [`CoherentRing`] adds fixed-size entries indexed modulo a power-of-two ring size, for
//! free-running producer/consumer indices.
//!
//! # Ordering
//!
//! - Publish with [`CoherentBuffer::store_release`]: fill an entry with plain
//!   [`CoherentBuffer::write`]s, then release-store the index or flag the device polls; the
//!   device cannot see the flag before the entry. (On x86-64 coherent DMA needs only this
//!   compiler ordering, which is what the kernel's `dma_wmb()` is there.)
//! - Consume with [`CoherentBuffer::load_acquire`]: acquire-load the device's index or valid
//!   flag, then read the entry (`dma_rmb()` in C).
//! - A doorbell after a ring update needs nothing extra: `iowrite32`/`writel` are ordered after
//!   earlier writes to coherent memory (`Documentation/memory-barriers.txt`, "KERNEL I/O BARRIER
//!   EFFECTS").
//!
//! The owner must stop the device from accessing a buffer before dropping it (in `remove`, after
//! quiescing the device): freed memory returns to the page allocator.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use kernel::bindings;
use kernel::error::to_result;
use kernel::prelude::*;

use crate::pci;

/// Tells the DMA layer which addresses the device can generate
/// (`dma_set_mask_and_coherent(dev, DMA_BIT_MASK(bits))`), for streaming and coherent mappings.
/// `bits` must be 1..=64; `EIO` if the platform cannot satisfy it.
pub(crate) fn set_dma_mask(dev: &pci::Device, bits: u32) -> Result {
    let mask = match bits {
        64 => u64::MAX,
        1..=63 => (1u64 << bits) - 1,
        _ => return Err(EINVAL),
    };
    // SAFETY: `dev.as_raw()` is a valid, bound device (`pci::Device` invariant), so its embedded
    // `struct device` is valid.
    to_result(unsafe {
        bindings::dma_set_mask_and_coherent(bindings::pci_dev_to_dev(dev.as_raw()), mask)
    })
}

/// A value that can live in a DMA slot: `u8`, `u16`, `u32` or `u64`.
pub(crate) trait Slot: Copy {
    /// Loads from `ptr` with `order`, converting from little-endian.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for an access of `size_of::<Self>()` bytes, aligned to it, and only
    /// ever accessed atomically by the CPU.
    unsafe fn load(ptr: *mut u8, order: Ordering) -> Self;

    /// Stores `self` to `ptr` with `order`, converting to little-endian.
    ///
    /// # Safety
    ///
    /// As for [`Slot::load`].
    unsafe fn store(self, ptr: *mut u8, order: Ordering);
}

macro_rules! impl_slot {
    ($($ty:ty => $atomic:ty),*) => {$(
        impl Slot for $ty {
            unsafe fn load(ptr: *mut u8, order: Ordering) -> Self {
                // SAFETY: valid, aligned and atomically accessed, by the caller's contract.
                let atomic = unsafe { <$atomic>::from_ptr(ptr.cast()) };
                <$ty>::from_le(atomic.load(order))
            }

            unsafe fn store(self, ptr: *mut u8, order: Ordering) {
                // SAFETY: valid, aligned and atomically accessed, by the caller's contract.
                let atomic = unsafe { <$atomic>::from_ptr(ptr.cast()) };
                atomic.store(self.to_le(), order)
            }
        }
    )*};
}

impl_slot!(u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64);

/// A coherent DMA allocation of a PCI function.
///
/// # Invariants
///
/// `cpu` is the CPU address and `dma` the bus address of a `dma_alloc_coherent` allocation of
/// `alloc_len` bytes (a multiple of `PAGE_SIZE`, at least `len`) on `dev`, freed in `drop`; `dev`
/// holds a `get_device` reference. The CPU side only accesses the memory through atomic
/// [`Slot`] operations.
pub(crate) struct CoherentBuffer {
    dev: *mut bindings::device,
    cpu: NonNull<u8>,
    dma: bindings::dma_addr_t,
    len: usize,
    alloc_len: usize,
}

// SAFETY: the memory is not tied to a thread; `dma_free_coherent` may run on any task in process
// context.
unsafe impl Send for CoherentBuffer {}
// SAFETY: every access through `&CoherentBuffer` is a single atomic operation.
unsafe impl Sync for CoherentBuffer {}

impl CoherentBuffer {
    /// Allocates `len` bytes of zeroed coherent memory for `dev` (`dma_alloc_coherent`, which
    /// zeroes). Sleeps. Set the DMA mask first ([`set_dma_mask`]).
    pub(crate) fn alloc(dev: &pci::Device, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        let alloc_len = len
            .checked_next_multiple_of(bindings::PAGE_SIZE)
            .ok_or(EINVAL)?;
        // SAFETY: `dev.as_raw()` is a valid, bound device (`pci::Device` invariant).
        let device = unsafe { bindings::pci_dev_to_dev(dev.as_raw()) };
        let mut dma: bindings::dma_addr_t = 0;
        // SAFETY: `device` is valid; `dma` is a valid out pointer; GFP_KERNEL as we may sleep.
        let cpu = unsafe {
            bindings::dma_alloc_coherent(device, alloc_len, &mut dma, bindings::GFP_KERNEL)
        };
        let cpu = NonNull::new(cpu.cast::<u8>()).ok_or(ENOMEM)?;
        // SAFETY: `device` is valid; the reference keeps it allocated until `drop` frees the
        // memory with it.
        unsafe { bindings::get_device(device) };
        crate::counters::up(&crate::counters::DMA_BUFFERS_LIVE);
        // INVARIANT: allocated just above with `alloc_len >= len`, page-multiple; reference taken.
        Ok(Self {
            dev: device,
            cpu,
            dma,
            len,
            alloc_len,
        })
    }

    /// Maps the whole buffer into `vma` from its start (`dma_mmap_coherent`), for a device
    /// queue a process drives itself. Fails with `ENXIO` if the area is longer than the
    /// buffer (rounded up to pages) or its offset is not 0.
    pub(crate) fn map_into(&self, vma: &mut crate::vma::Vma<'_>) -> Result {
        if vma.offset() != 0 {
            return Err(ENXIO);
        }
        // SAFETY: `dev`, `cpu` and `dma` describe a live `dma_alloc_coherent` allocation of
        // `alloc_len` bytes (type invariant); `vma.as_raw()` is the area of the running `mmap`
        // call. The mapping (remap_pfn_range, VM_IO | VM_PFNMAP) holds no page references: the
        // owner keeps the buffer until the file is released, which the mapping's file
        // reference delays until the area is unmapped.
        to_result(unsafe {
            bindings::dma_mmap_attrs(
                self.dev,
                vma.as_raw(),
                self.cpu.as_ptr().cast(),
                self.dma,
                self.alloc_len,
                0,
            )
        })
    }

    /// Usable length in bytes (as requested).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bus address of the first byte: what the device is programmed with.
    pub(crate) fn dma_addr(&self) -> u64 {
        self.dma
    }

    /// Pointer to a `size`-byte slot at `offset`, or `EINVAL` if it is out of bounds or not
    /// naturally aligned.
    fn slot_ptr(&self, offset: usize, size: usize) -> Result<*mut u8> {
        let end = offset.checked_add(size).ok_or(EINVAL)?;
        if end > self.len || offset % size != 0 {
            return Err(EINVAL);
        }
        // SAFETY: `offset + size <= len <= alloc_len`, so the result stays inside the allocation.
        Ok(unsafe { self.cpu.as_ptr().add(offset) })
    }

    fn load<S: Slot>(&self, offset: usize, order: Ordering) -> Result<S> {
        let ptr = self.slot_ptr(offset, core::mem::size_of::<S>())?;
        // SAFETY: `slot_ptr` checked bounds and natural alignment (the allocation is page
        // aligned); the CPU only accesses this memory atomically (type invariant).
        Ok(unsafe { S::load(ptr, order) })
    }

    fn store<S: Slot>(&self, offset: usize, value: S, order: Ordering) -> Result {
        let ptr = self.slot_ptr(offset, core::mem::size_of::<S>())?;
        // SAFETY: as in `load`.
        unsafe { value.store(ptr, order) };
        Ok(())
    }

    /// Reads the slot at `offset` (no ordering against other slots).
    pub(crate) fn read<S: Slot>(&self, offset: usize) -> Result<S> {
        self.load(offset, Ordering::Relaxed)
    }

    /// Writes the slot at `offset` (no ordering against other slots).
    pub(crate) fn write<S: Slot>(&self, offset: usize, value: S) -> Result {
        self.store(offset, value, Ordering::Relaxed)
    }

    /// Reads the slot at `offset`; later reads of this buffer are not performed before it (use
    /// it for the device's index or valid flag, then read the entry).
    pub(crate) fn load_acquire<S: Slot>(&self, offset: usize) -> Result<S> {
        self.load(offset, Ordering::Acquire)
    }

    /// Writes the slot at `offset` after every earlier write to this buffer is visible (use it to
    /// publish an index or valid flag after filling the entry).
    pub(crate) fn store_release<S: Slot>(&self, offset: usize, value: S) -> Result {
        self.store(offset, value, Ordering::Release)
    }

    /// Zeroes the whole allocation (one 64-bit store per slot, then a release fence). Only
    /// meaningful while the device is not using the buffer (before handing it over or after
    /// reset).
    pub(crate) fn fill_zero(&self) {
        let slots = self.alloc_len / core::mem::size_of::<u64>();
        for index in 0..slots {
            // SAFETY: `index * 8 + 8 <= alloc_len`, inside the page-aligned allocation, so the
            // slot is valid and 8-byte aligned; all CPU accesses are atomic (type invariant).
            unsafe { 0u64.store(self.cpu.as_ptr().add(index * 8), Ordering::Relaxed) };
        }
        core::sync::atomic::fence(Ordering::Release);
    }
}

impl Drop for CoherentBuffer {
    fn drop(&mut self) {
        // SAFETY: by the type invariant this is the allocation made on `dev` with these
        // addresses and size, freed exactly once; the owner stopped the device from using it.
        unsafe {
            bindings::dma_free_coherent(
                self.dev,
                self.alloc_len,
                self.cpu.as_ptr().cast(),
                self.dma,
            )
        };
        // SAFETY: drops the reference taken in `alloc`, exactly once.
        unsafe { bindings::put_device(self.dev) };
        crate::counters::down(&crate::counters::DMA_BUFFERS_LIVE);
    }
}

/// A ring of `entries` fixed-size entries in coherent memory; indices are free-running and
/// taken modulo `entries` (a power of two), as in virtio split rings.
pub(crate) struct CoherentRing {
    buf: CoherentBuffer,
    entries: u32,
    entry_size: usize,
}

impl CoherentRing {
    /// Allocates a zeroed ring of `entries` (a power of two) entries of `entry_size` bytes
    /// (a multiple of 8, so every entry is 8-byte aligned).
    pub(crate) fn alloc(dev: &pci::Device, entries: u32, entry_size: usize) -> Result<Self> {
        if !entries.is_power_of_two() || entry_size == 0 || entry_size % 8 != 0 {
            return Err(EINVAL);
        }
        // CAST: u32 to usize is lossless on 64-bit kernels.
        let len = (entries as usize).checked_mul(entry_size).ok_or(EINVAL)?;
        let buf = CoherentBuffer::alloc(dev, len)?;
        Ok(Self {
            buf,
            entries,
            entry_size,
        })
    }

    /// Number of entries (a power of two).
    pub(crate) fn entries(&self) -> u32 {
        self.entries
    }

    /// Size of one entry in bytes.
    pub(crate) fn entry_size(&self) -> usize {
        self.entry_size
    }

    /// Bus address of entry 0.
    pub(crate) fn dma_addr(&self) -> u64 {
        self.buf.dma_addr()
    }

    /// The underlying buffer.
    pub(crate) fn buffer(&self) -> &CoherentBuffer {
        &self.buf
    }

    /// Byte offset of `field` in entry `index mod entries`; `EINVAL` if a `size`-byte field does
    /// not fit in an entry.
    fn offset(&self, index: u32, field: usize, size: usize) -> Result<usize> {
        if field.checked_add(size).ok_or(EINVAL)? > self.entry_size {
            return Err(EINVAL);
        }
        // CAST: u32 to usize is lossless on 64-bit kernels.
        let slot = (index & (self.entries - 1)) as usize;
        // Cannot overflow: `slot * entry_size + field < entries * entry_size`, checked in `alloc`.
        Ok(slot * self.entry_size + field)
    }

    /// Reads `field` of entry `index`.
    pub(crate) fn read<S: Slot>(&self, index: u32, field: usize) -> Result<S> {
        self.buf
            .read(self.offset(index, field, core::mem::size_of::<S>())?)
    }

    /// Writes `field` of entry `index`.
    pub(crate) fn write<S: Slot>(&self, index: u32, field: usize, value: S) -> Result {
        self.buf
            .write(self.offset(index, field, core::mem::size_of::<S>())?, value)
    }

    /// Acquire-reads `field` of entry `index` (e.g. the valid flag the device sets last).
    pub(crate) fn load_acquire<S: Slot>(&self, index: u32, field: usize) -> Result<S> {
        self.buf
            .load_acquire(self.offset(index, field, core::mem::size_of::<S>())?)
    }

    /// Release-writes `field` of entry `index` (e.g. a flag the device polls, written last).
    pub(crate) fn store_release<S: Slot>(&self, index: u32, field: usize, value: S) -> Result {
        self.buf
            .store_release(self.offset(index, field, core::mem::size_of::<S>())?, value)
    }

    /// Zeroes every entry; see [`CoherentBuffer::fill_zero`].
    pub(crate) fn fill_zero(&self) {
        self.buf.fill_zero()
    }
}
