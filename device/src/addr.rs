//! Typed addresses: user virtual addresses ([`VirtAddr`]) and the page sizes the device TLB maps.
//! Guest-physical addresses are vm-memory's [`GuestAddress`](vm_memory::GuestAddress).
//!
//! Every address that arrives from the guest goes through the checked arithmetic here, so a
//! guest-supplied base + length can never wrap silently.

use std::fmt;

/// Bytes in a small page.
pub const PAGE_SIZE_4K: u64 = 1 << 12;
/// Bytes in a large page.
pub const PAGE_SIZE_2M: u64 = 1 << 21;

/// A user virtual address of the process a context serves. The device never dereferences it:
/// it only translates it through the device TLB.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtAddr(pub u64);

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl VirtAddr {
    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    pub fn checked_add(self, offset: u64) -> Option<Self> {
        self.0.checked_add(offset).map(Self)
    }

    /// The start of the `size` page holding this address.
    pub const fn align_down(self, size: PageSize) -> Self {
        Self(self.0 & !size.mask())
    }

    /// Whether the address is a multiple of `bytes` (a power of two).
    pub const fn is_aligned(self, bytes: u64) -> bool {
        self.0 & (bytes - 1) == 0
    }

    /// Offset of the address within its `size` page.
    pub const fn page_offset(self, size: PageSize) -> u64 {
        self.0 & size.mask()
    }
}

/// The page sizes the device TLB maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
}

impl PageSize {
    /// log2 of the size.
    pub const fn shift(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size2M => 21,
        }
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// `bytes() - 1`.
    pub const fn mask(self) -> u64 {
        self.bytes() - 1
    }
}

/// A half-open range of virtual addresses `[start, end)`, never empty, never wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaRange {
    start: VirtAddr,
    end: VirtAddr,
}

impl VaRange {
    /// `[start, end)`, or `None` if it is empty or reversed.
    pub fn new(start: VirtAddr, end: VirtAddr) -> Option<Self> {
        (start < end).then_some(Self { start, end })
    }

    /// `[start, start + len)`, or `None` if `len` is 0 or the range wraps.
    pub fn from_len(start: VirtAddr, len: u64) -> Option<Self> {
        Self::new(start, start.checked_add(len)?)
    }

    /// First address in the range.
    pub const fn start(self) -> VirtAddr {
        self.start
    }

    /// First address past the range.
    pub const fn end(self) -> VirtAddr {
        self.end
    }

    /// Whether `[base, base + len)` overlaps the range. `len` must not make `base` wrap.
    pub fn overlaps(self, base: VirtAddr, len: u64) -> bool {
        base.0 < self.end.0 && base.0.saturating_add(len) > self.start.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_arithmetic_rounds_down_and_measures_offsets() {
        let va = VirtAddr(0x20_1234);
        assert_eq!(va.align_down(PageSize::Size4K), VirtAddr(0x20_1000));
        assert_eq!(va.align_down(PageSize::Size2M), VirtAddr(0x20_0000));
        assert_eq!(va.page_offset(PageSize::Size4K), 0x234);
        assert_eq!(va.page_offset(PageSize::Size2M), 0x1234);
        assert!(VirtAddr(0x4000).is_aligned(PAGE_SIZE_4K));
        assert!(!VirtAddr(0x4008).is_aligned(PAGE_SIZE_4K));
        assert_eq!(PageSize::Size2M.bytes(), PAGE_SIZE_2M);
    }

    #[test]
    fn checked_add_refuses_to_wrap() {
        assert_eq!(VirtAddr(u64::MAX).checked_add(1), None);
        assert_eq!(VirtAddr(1).checked_add(1), Some(VirtAddr(2)));
    }

    #[test]
    fn ranges_are_half_open_non_empty_and_never_wrap() {
        assert!(VaRange::new(VirtAddr(5), VirtAddr(5)).is_none());
        assert!(VaRange::new(VirtAddr(6), VirtAddr(5)).is_none());
        assert!(VaRange::from_len(VirtAddr(u64::MAX), 1).is_none());
        let range = VaRange::from_len(VirtAddr(0x1000), 0x1000).expect("valid");
        assert!(range.overlaps(VirtAddr(0x1fff), 1));
        assert!(!range.overlaps(VirtAddr(0x2000), 0x1000));
        assert!(!range.overlaps(VirtAddr(0), 0x1000));
        assert!(range.overlaps(VirtAddr(0), 0x1001));
    }
}
