//! Shared pieces of the guest programs (`rmnic-guest`, `rmnic`): process memory the device
//! operates on.

use std::ptr::NonNull;

use anyhow::{bail, Context as _, Result};

/// Page size of the guest.
pub const PAGE: usize = 4096;

/// An anonymous private (or shared) mapping, unmapped on drop unless already unmapped.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    mapped: bool,
}

impl Mapping {
    /// Maps `len` bytes read-write; `shared` makes it MAP_SHARED (survives fork as one copy).
    pub fn new(len: usize, shared: bool) -> Result<Self> {
        let flags = libc::MAP_ANONYMOUS
            | if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        // SAFETY: anonymous mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap({len}) failed: {}", std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(Self {
            ptr,
            len,
            mapped: true,
        })
    }

    /// A mapping of `len` bytes whose start is aligned to `align` (a power of two).
    pub fn aligned(len: usize, align: usize) -> Result<Self> {
        let raw = Self::new(len + align, false)?;
        let base = raw.addr();
        let start = base.next_multiple_of(align as u64);
        let head = (start - base) as usize;
        let tail = align - head;
        // Trim the excess so the kept part is exactly [start, start + len).
        // SAFETY: both ranges lie inside `raw`'s mapping, which we own.
        unsafe {
            if head > 0 {
                libc::munmap(raw.ptr.as_ptr().cast(), head);
            }
            if tail > 0 {
                libc::munmap(raw.ptr.as_ptr().add(head + len).cast(), tail);
            }
        }
        std::mem::forget(raw);
        Ok(Self {
            // SAFETY: `start` is inside the original mapping, hence non-null.
            ptr: unsafe { NonNull::new_unchecked(start as *mut u8) },
            len,
            mapped: true,
        })
    }

    /// Start address as the device sees it.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// CPU view of the mapping.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: mapped for `len` bytes while `self` lives; the device writes only between CPU
        // accesses (a command has completed before the CPU looks).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Mutable CPU view of the mapping.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only CPU view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Reads the u64 at byte `offset` (volatile: the device writes behind the compiler's back).
    pub fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: in bounds and 8-byte aligned (callers pass multiples of 8).
        unsafe { self.ptr.as_ptr().add(offset).cast::<u64>().read_volatile() }
    }

    /// Writes the u64 at byte `offset`.
    pub fn write_u64(&self, offset: usize, value: u64) {
        // SAFETY: as in `read_u64`.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<u64>()
                .write_volatile(value)
        }
    }

    /// mprotect over the whole mapping.
    pub fn protect(&self, prot: i32) -> Result<()> {
        // SAFETY: our own mapping.
        if unsafe { libc::mprotect(self.ptr.as_ptr().cast(), self.len, prot) } != 0 {
            bail!("mprotect failed: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// mprotect of `len` bytes from byte `offset` (whole pages inside the mapping).
    pub fn protect_range(&self, offset: usize, len: usize, prot: i32) -> Result<()> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len);
        if !inside || !offset.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            bail!(
                "mprotect of [{offset:#x}, +{len:#x}) is not whole pages of a {:#x}-byte mapping",
                self.len
            );
        }
        // SAFETY: whole pages of our own mapping (checked above); the CPU reaches them only
        // through `read_u64`/`write_u64` and the byte views, whose callers keep off pages they
        // made inaccessible.
        if unsafe { libc::mprotect(self.ptr.as_ptr().add(offset).cast(), len, prot) } != 0 {
            bail!("mprotect failed: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// madvise over the whole mapping.
    pub fn advise(&self, advice: i32) -> Result<()> {
        // SAFETY: our own mapping.
        if unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, advice) } != 0 {
            bail!(
                "madvise({advice}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// munmap now (later accesses through the device must fail cleanly).
    pub fn unmap(&mut self) {
        if self.mapped {
            // SAFETY: our own mapping, unmapped once.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            self.mapped = false;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.unmap();
    }
}
