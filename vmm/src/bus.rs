//! Address-range dispatch for port I/O and MMIO exits: half-open ranges mapped to devices.
//!
//! The idea follows Firecracker's `vstate/bus.rs`: a sorted map from range start to
//! device, overlapping insertions refused, lookups by the greatest start not above the
//! address. An access is claimed only when it lies wholly inside one range; anything else
//! is the caller's "unclaimed" case (reads all ones, writes dropped).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range of length zero names no address.
    #[error("Bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Start of the rejected range.
        base: u64,
    },
    /// `base + len` does not fit in 64 bits.
    #[error("Bus range {base:#x}+{len:#x} overflows the address space")]
    Overflow {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The new range shares at least one address with a range already on the bus.
    #[error("Bus range {new} overlaps {existing}")]
    Overlap {
        /// The range being inserted.
        new: BusRange,
        /// The range already present.
        existing: BusRange,
    },
}

/// A half-open address range `[base, end)` of non-zero length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusRange {
    base: u64,
    end: u64,
}

impl BusRange {
    /// Builds `[base, base + len)`, rejecting zero length and arithmetic overflow.
    pub fn new(base: u64, len: u64) -> Result<Self, BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        Ok(Self { base, end })
    }

    /// First address of the range.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        self.end - self.base
    }

    /// Always false: zero-length ranges cannot be built.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the ranges share an address.
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base < other.end && other.base < self.end
    }

    /// Offset of an access of `len` bytes at `addr` if it lies wholly inside the range.
    pub fn offset_of(&self, addr: u64, len: usize) -> Option<u64> {
        let last = addr.checked_add(u64::try_from(len).ok()?)?;
        (addr >= self.base && last <= self.end && len > 0).then(|| addr - self.base)
    }
}

impl std::fmt::Display for BusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.base, self.end)
    }
}

/// A device reachable through a [`Bus`]. Offsets are relative to the range it was
/// inserted at, so the same device type can sit at any base.
pub trait BusDevice: Send {
    /// Fills `data` from the device at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Hands `data` to the device at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared, lockable bus device.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Maps non-overlapping ranges to devices. Built once before the vCPUs start, then read
/// concurrently by every vCPU thread; each device has its own lock (one vCPU at a time per
/// device, never two device locks held at once).
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (BusRange, SharedBusDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `range`.
    pub fn insert(&mut self, range: BusRange, device: SharedBusDevice) -> Result<(), BusError> {
        // Only the neighbours on either side can overlap a range when none overlap each other.
        let before = self.devices.range(..=range.base).next_back();
        let after = self.devices.range(range.base..).next();
        for (_, (existing, _)) in before.into_iter().chain(after) {
            if existing.overlaps(&range) {
                return Err(BusError::Overlap {
                    new: range,
                    existing: *existing,
                });
            }
        }
        self.devices.insert(range.base, (range, device));
        Ok(())
    }

    /// The device and offset for an access of `len` bytes at `addr`.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, &SharedBusDevice)> {
        let (_, (range, device)) = self.devices.range(..=addr).next_back()?;
        range.offset_of(addr, len).map(|off| (off, device))
    }

    /// Dispatches a read; false when no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; false when no device claims the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a panic in one vCPU thread must not
/// turn every later access into a second panic.
fn lock(device: &SharedBusDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    fn range(base: u64, len: u64) -> BusRange {
        BusRange::new(base, len).expect("valid test range")
    }

    #[test]
    fn zero_length_range_is_rejected() {
        assert_eq!(
            BusRange::new(0x10, 0),
            Err(BusError::ZeroLength { base: 0x10 })
        );
    }

    #[test]
    fn range_ending_past_u64_max_is_rejected() {
        assert!(matches!(
            BusRange::new(u64::MAX, 2),
            Err(BusError::Overflow { .. })
        ));
        // Ending exactly at 2^64 - 1 + 1 overflows too; the last byte must be representable
        // as an exclusive end.
        assert!(BusRange::new(u64::MAX - 1, 1).is_ok());
    }

    #[test]
    fn overlapping_insertions_are_refused_on_both_sides() {
        let mut bus = Bus::new();
        bus.insert(range(0x100, 0x10), probe())
            .expect("first insert");
        for (base, len) in [
            (0xf8, 0x9),
            (0x10f, 1),
            (0x100, 0x10),
            (0x104, 2),
            (0, 0x1000),
        ] {
            assert!(
                matches!(
                    bus.insert(range(base, len), probe()),
                    Err(BusError::Overlap { .. })
                ),
                "{base:#x}+{len:#x} must overlap"
            );
        }
        // Touching ranges do not overlap (half-open).
        bus.insert(range(0xf0, 0x10), probe())
            .expect("adjacent below");
        bus.insert(range(0x110, 0x10), probe())
            .expect("adjacent above");
    }

    #[test]
    fn dispatch_passes_offset_relative_to_base() {
        let mut bus = Bus::new();
        let dev = probe();
        bus.insert(range(0x3f8, 8), dev.clone()).expect("insert");
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f9, &[0xab]));
        assert_eq!(dev.lock().expect("lock").last_write, Some((1, vec![0xab])));
    }

    #[test]
    fn access_straddling_a_range_end_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(range(0x1000, 0x10), probe()).expect("insert");
        let mut data = [0u8; 4];
        assert!(bus.read(0x100c, &mut data), "last dword inside");
        assert!(!bus.read(0x100d, &mut data), "crosses the end");
        assert!(!bus.read(0xffe, &mut data), "starts before the base");
        assert!(!bus.write(0x1010, &[1]), "first address past the end");
        assert!(
            !bus.read(u64::MAX - 1, &mut data),
            "wraps the address space"
        );
    }

    #[test]
    fn empty_bus_claims_nothing() {
        let bus = Bus::new();
        assert!(!bus.read(0, &mut [0u8; 1]));
        assert!(!bus.write(u64::MAX, &[0]));
    }
}
