//! The device TLB: an ASID-tagged, set-associative cache of user-VA → guest-physical
//! translations of 4 KiB and 2 MiB pages, filled only by the driver's drop-ins.
//!
//! Like the IOTLB contract of vm-memory's `iommu.rs`, the driver must remove an entry (through
//! the invalidation queue) before the mapping it caches is restricted or removed; the device
//! never walks page tables itself.
//!
//! Layout: `sets × ways` slots, set `s` in `slots[s * ways .. (s + 1) * ways]`. A 4 KiB page and
//! a 2 MiB page index different sets (the 2 MiB index is salted), so a lookup probes at most
//! two sets, and skips the 2 MiB probe while no 2 MiB entry is present.
//!
//! Replacement: not-recently-used with a clock hand per set. A hit sets the entry's referenced
//! bit (an atomic, so lookups work through `&self` under a read lock). A fill takes a free way
//! if there is one; otherwise the hand sweeps, clearing referenced bits, and evicts the first
//! unreferenced way — but never the way filled last in that set, so an access that needs two
//! translations in one set (COPY) can always hold both when `ways >= 2`.
//!
//! Invalidation cost: two ordered indexes keyed by (ASID, page base) list the entries present,
//! so removing a VA range or an ASID costs O(log E + k) for k entries removed, whatever the
//! range's size, and a global flush costs O(E) for E entries present.
//!
//! No two entries of one ASID overlap: a fill first removes every entry of its ASID that
//! overlaps the new page (of either size). Lookups are therefore unambiguous.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use vm_memory::GuestAddress;

use crate::addr::{PageSize, VaRange, VirtAddr};

/// Largest number of sets (it must fit the 16-bit field of `REG_TLB_GEOMETRY`).
pub const TLB_MAX_SETS: u32 = 32768;
/// Largest associativity.
pub const TLB_MAX_WAYS: u32 = 16;
/// Smallest associativity: two, so COPY can hold its source and destination pages in one set.
pub const TLB_MIN_WAYS: u32 = 2;
/// Default number of sets.
pub const TLB_DEFAULT_SETS: u32 = 256;
/// Default associativity.
pub const TLB_DEFAULT_WAYS: u32 = 4;

/// A TLB geometry the device cannot have.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum TlbError {
    /// The set count is not a power of two in `1..=TLB_MAX_SETS`.
    #[error("A TLB cannot have {sets} sets: a power of two up to {TLB_MAX_SETS} is needed")]
    BadSets {
        /// The set count asked for.
        sets: u32,
    },
    /// The associativity is outside `TLB_MIN_WAYS..=TLB_MAX_WAYS`.
    #[error("A TLB cannot have {ways} ways: {TLB_MIN_WAYS}..={TLB_MAX_WAYS} are allowed")]
    BadWays {
        /// The way count asked for.
        ways: u32,
    },
}

/// Shape of the device TLB, fixed when the VMM creates the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbGeometry {
    sets: u32,
    ways: u32,
}

impl Default for TlbGeometry {
    fn default() -> Self {
        Self {
            sets: TLB_DEFAULT_SETS,
            ways: TLB_DEFAULT_WAYS,
        }
    }
}

impl TlbGeometry {
    /// `sets × ways`, checked against the limits.
    pub fn new(sets: u32, ways: u32) -> Result<Self, TlbError> {
        if sets == 0 || sets > TLB_MAX_SETS || !sets.is_power_of_two() {
            return Err(TlbError::BadSets { sets });
        }
        if !(TLB_MIN_WAYS..=TLB_MAX_WAYS).contains(&ways) {
            return Err(TlbError::BadWays { ways });
        }
        Ok(Self { sets, ways })
    }

    /// Number of sets.
    pub fn sets(self) -> u32 {
        self.sets
    }

    /// Number of ways per set.
    pub fn ways(self) -> u32 {
        self.ways
    }

    /// Total number of entries.
    pub fn entries(self) -> usize {
        // CAST: at most 32768 × 16 entries.
        (self.sets * self.ways) as usize
    }
}

/// Access permissions of a mapping, as bits (`PERM_READ`, `PERM_WRITE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Perms(u8);

impl Perms {
    /// Readable.
    pub const READ: Self = Self(1);
    /// Writable.
    pub const WRITE: Self = Self(2);
    /// Readable and writable.
    pub const READ_WRITE: Self = Self(3);
    /// No access.
    pub const NONE: Self = Self(0);

    /// From bits (only bits 0 and 1 count).
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & 3)
    }

    /// The bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every permission in `needed` is granted.
    pub const fn allows(self, needed: Self) -> bool {
        self.0 & needed.0 == needed.0
    }
}

/// One translation, as the driver drops it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbFill {
    /// Address space the entry belongs to.
    pub asid: u16,
    /// Page base (aligned to `size`).
    pub va: VirtAddr,
    /// Page size.
    pub size: PageSize,
    /// Guest-physical frame base (aligned to `size`).
    pub gpa: GuestAddress,
    /// Permissions.
    pub perms: Perms,
    /// Context whose drop-in filled the entry (for statistics only; lookups match the ASID).
    pub ctx: u8,
}

/// One valid TLB entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    /// The translation.
    pub fill: TlbFill,
    /// Unique, increasing number of the fill that created the entry (for oracles and tests).
    pub fill_id: u64,
}

/// A successful lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the looked-up byte.
    pub gpa: GuestAddress,
    /// Bytes from the looked-up address to the end of its page.
    pub page_remaining: u64,
    /// Permissions of the page.
    pub perms: Perms,
    /// Size of the page.
    pub size: PageSize,
    /// Slot of the entry, for [`DeviceTlb::evict`].
    pub slot: u32,
    /// The fill that created the entry.
    pub fill_id: u64,
}

/// Why an entry left the TLB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// A fill of an overlapping page of the same ASID replaced it.
    Replaced,
    /// A fill needed its way.
    Evicted,
    /// An invalidation removed it.
    Invalidated,
}

/// Bookkeeping of one set.
#[derive(Clone, Copy, Debug, Default)]
struct SetState {
    /// Next way the clock hand looks at.
    hand: u8,
    /// Way filled last (never the victim of the next fill).
    last: u8,
}

/// Index key: (ASID, page base).
type Key = (u16, u64);

/// The device TLB. Mutation needs `&mut` (the device holds it in an `RwLock`); lookups take
/// `&self`.
#[derive(Debug)]
pub struct DeviceTlb {
    geometry: TlbGeometry,
    /// `sets × ways` slots.
    slots: Vec<Option<TlbEntry>>,
    /// Referenced bit per slot (set by hits).
    referenced: Vec<AtomicBool>,
    sets: Vec<SetState>,
    /// 4 KiB entries present, by (ASID, page base) → slot.
    index_4k: BTreeMap<Key, u32>,
    /// 2 MiB entries present, by (ASID, page base) → slot.
    index_2m: BTreeMap<Key, u32>,
    /// Next fill id.
    next_fill_id: u64,
    /// Scratch list of slots to remove, kept to avoid an allocation per invalidation.
    scratch: Vec<u32>,
}

impl DeviceTlb {
    /// An empty TLB of the given shape.
    pub fn new(geometry: TlbGeometry) -> Self {
        let entries = geometry.entries();
        Self {
            geometry,
            slots: vec![None; entries],
            referenced: (0..entries).map(|_| AtomicBool::new(false)).collect(),
            // CAST: sets <= TLB_MAX_SETS.
            sets: vec![SetState::default(); geometry.sets as usize],
            index_4k: BTreeMap::new(),
            index_2m: BTreeMap::new(),
            next_fill_id: 1,
            scratch: Vec::new(),
        }
    }

    /// The shape.
    pub fn geometry(&self) -> TlbGeometry {
        self.geometry
    }

    /// Number of valid entries.
    pub fn len(&self) -> usize {
        self.index_4k.len() + self.index_2m.len()
    }

    /// Whether no entry is valid.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every valid entry, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = &TlbEntry> {
        self.slots.iter().flatten()
    }

    /// The set `va`'s `size` page of `asid` lives in.
    fn set_of(&self, asid: u16, va: VirtAddr, size: PageSize) -> usize {
        let page = va.0 >> size.shift();
        // Spread ASIDs over the sets, and keep 2 MiB pages off the sets of the 4 KiB pages
        // that share their low page-number bits.
        let salt = match size {
            PageSize::Size4K => 0,
            PageSize::Size2M => 0x5bd1_e995,
        };
        let hash = page ^ (u64::from(asid).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) ^ salt;
        // CAST: masked to the set count.
        (hash & u64::from(self.geometry.sets - 1)) as usize
    }

    /// Slots of `set`.
    fn ways_of(&self, set: usize) -> std::ops::Range<usize> {
        // CAST: ways <= TLB_MAX_WAYS.
        let ways = self.geometry.ways as usize;
        set * ways..(set + 1) * ways
    }

    /// Looks `va` up for `asid`. A hit marks the entry referenced.
    pub fn lookup(&self, asid: u16, va: VirtAddr) -> Option<Translation> {
        self.probe(asid, va, PageSize::Size4K).or_else(|| {
            if self.index_2m.is_empty() {
                None
            } else {
                self.probe(asid, va, PageSize::Size2M)
            }
        })
    }

    fn probe(&self, asid: u16, va: VirtAddr, size: PageSize) -> Option<Translation> {
        let base = va.align_down(size);
        let set = self.set_of(asid, va, size);
        for slot in self.ways_of(set) {
            let Some(entry) = &self.slots[slot] else {
                continue;
            };
            let fill = &entry.fill;
            if fill.asid == asid && fill.size == size && fill.va == base {
                let referenced = &self.referenced[slot];
                // Read first: no cache-line write on the common already-referenced hit.
                if !referenced.load(Ordering::Relaxed) {
                    referenced.store(true, Ordering::Relaxed);
                }
                let offset = va.page_offset(size);
                return Some(Translation {
                    // No overflow: the frame base is aligned to `size` and was checked at fill.
                    gpa: GuestAddress(fill.gpa.0 | offset),
                    page_remaining: size.bytes() - offset,
                    perms: fill.perms,
                    size,
                    // CAST: slot < entries <= 2^19.
                    slot: slot as u32,
                    fill_id: entry.fill_id,
                });
            }
        }
        None
    }

    /// Installs `fill`, first removing every overlapping entry of its ASID. Reports each
    /// entry that leaves to `removed`. Returns the new entry's fill id.
    pub fn insert(&mut self, fill: TlbFill, removed: &mut dyn FnMut(&TlbEntry, Removal)) -> u64 {
        // The page at the top of the address space ends at 2^64: `[va, u64::MAX)` still holds
        // the base of every page it overlaps.
        let end = fill
            .va
            .checked_add(fill.size.bytes())
            .unwrap_or(VirtAddr(u64::MAX));
        if let Some(range) = VaRange::new(fill.va, end) {
            self.remove_range(fill.asid, range, Removal::Replaced, removed);
        }

        let set = self.set_of(fill.asid, fill.va, fill.size);
        let victim = self.victim(set);
        let slot = self.ways_of(set).start + victim;
        if self.slots[slot].is_some() {
            // CAST: slot < entries <= 2^19.
            self.remove_slot(slot as u32, Removal::Evicted, removed);
        }
        let fill_id = self.next_fill_id;
        self.next_fill_id += 1;
        self.slots[slot] = Some(TlbEntry { fill, fill_id });
        self.referenced[slot].store(false, Ordering::Relaxed);
        // CAST: victim < ways <= 16.
        self.sets[set].last = victim as u8;
        // CAST: slot < entries <= 2^19.
        self.index_mut(fill.size)
            .insert((fill.asid, fill.va.0), slot as u32);
        fill_id
    }

    /// The way of `set` a fill takes: a free one, else the clock's choice.
    fn victim(&mut self, set: usize) -> usize {
        let base = self.ways_of(set).start;
        // CAST: ways <= 16.
        let ways = self.geometry.ways as usize;
        if let Some(free) = (0..ways).find(|way| self.slots[base + way].is_none()) {
            return free;
        }
        let state = &mut self.sets[set];
        let last = usize::from(state.last);
        // Two sweeps always find an unreferenced way other than `last`: the first clears bits.
        for _ in 0..2 * ways {
            let way = usize::from(state.hand);
            // CAST: (way + 1) % ways < 16.
            state.hand = ((way + 1) % ways) as u8;
            if way == last {
                continue;
            }
            if !self.referenced[base + way].swap(false, Ordering::Relaxed) {
                return way;
            }
        }
        (last + 1) % ways
    }

    fn index_mut(&mut self, size: PageSize) -> &mut BTreeMap<Key, u32> {
        match size {
            PageSize::Size4K => &mut self.index_4k,
            PageSize::Size2M => &mut self.index_2m,
        }
    }

    /// Removes the entry in `slot`.
    fn remove_slot(
        &mut self,
        slot: u32,
        why: Removal,
        removed: &mut dyn FnMut(&TlbEntry, Removal),
    ) {
        // CAST: slot came from this TLB's slot range.
        let index = slot as usize;
        if let Some(entry) = self.slots[index].take() {
            self.referenced[index].store(false, Ordering::Relaxed);
            let key = (entry.fill.asid, entry.fill.va.0);
            self.index_mut(entry.fill.size).remove(&key);
            removed(&entry, why);
        }
    }

    /// Removes the entry in `slot` if it still holds fill `fill_id` (a forced eviction).
    pub fn evict(&mut self, slot: u32, fill_id: u64, removed: &mut dyn FnMut(&TlbEntry, Removal)) {
        let holds = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|entry| entry.fill_id == fill_id);
        if holds {
            self.remove_slot(slot, Removal::Evicted, removed);
        }
    }

    /// Removes every entry of `asid` overlapping `range`; returns how many.
    pub fn invalidate_range(
        &mut self,
        asid: u16,
        range: VaRange,
        removed: &mut dyn FnMut(&TlbEntry, Removal),
    ) -> usize {
        self.remove_range(asid, range, Removal::Invalidated, removed)
    }

    fn remove_range(
        &mut self,
        asid: u16,
        range: VaRange,
        why: Removal,
        removed: &mut dyn FnMut(&TlbEntry, Removal),
    ) -> usize {
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        let end = (asid, range.end().0);
        // A page overlaps `[start, end)` iff its base is in `[align_down(start, size), end)`.
        let start_4k = (asid, range.start().align_down(PageSize::Size4K).0);
        slots.extend(
            self.index_4k
                .range((Bound::Included(start_4k), Bound::Excluded(end)))
                .map(|(_, slot)| *slot),
        );
        let start_2m = (asid, range.start().align_down(PageSize::Size2M).0);
        slots.extend(
            self.index_2m
                .range((Bound::Included(start_2m), Bound::Excluded(end)))
                .map(|(_, slot)| *slot),
        );
        let count = slots.len();
        for slot in &slots {
            self.remove_slot(*slot, why, removed);
        }
        self.scratch = slots;
        count
    }

    /// Removes every entry of `asid`; returns how many.
    pub fn invalidate_asid(
        &mut self,
        asid: u16,
        removed: &mut dyn FnMut(&TlbEntry, Removal),
    ) -> usize {
        // Every page base is below u64::MAX, so this range names every entry of `asid`.
        match VaRange::new(VirtAddr(0), VirtAddr(u64::MAX)) {
            Some(all) => self.remove_range(asid, all, Removal::Invalidated, removed),
            None => 0,
        }
    }

    /// Removes every entry; returns how many.
    pub fn invalidate_all(&mut self, removed: &mut dyn FnMut(&TlbEntry, Removal)) -> usize {
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        slots.extend(self.index_4k.values().chain(self.index_2m.values()));
        let count = slots.len();
        for slot in &slots {
            self.remove_slot(*slot, Removal::Invalidated, removed);
        }
        self.scratch = slots;
        count
    }

    /// Checks the internal invariants (tests only): indexes and slots agree, no overlap.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let valid = self.slots.iter().flatten().count();
        assert_eq!(valid, self.len(), "index and slots disagree on the count");
        for (slot, entry) in self.slots.iter().enumerate() {
            let Some(entry) = entry else { continue };
            let fill = &entry.fill;
            let set = self.set_of(fill.asid, fill.va, fill.size);
            assert!(self.ways_of(set).contains(&slot), "entry in the wrong set");
            let index = match fill.size {
                PageSize::Size4K => &self.index_4k,
                PageSize::Size2M => &self.index_2m,
            };
            assert_eq!(index.get(&(fill.asid, fill.va.0)), Some(&(slot as u32)));
            if fill.size == PageSize::Size4K {
                let huge = (fill.asid, fill.va.align_down(PageSize::Size2M).0);
                assert!(!self.index_2m.contains_key(&huge), "4 KiB inside 2 MiB");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn geometry(sets: u32, ways: u32) -> TlbGeometry {
        TlbGeometry::new(sets, ways).expect("valid geometry")
    }

    fn fill(asid: u16, va: u64, size: PageSize, gpa: u64, perms: Perms) -> TlbFill {
        TlbFill {
            asid,
            va: VirtAddr(va),
            size,
            gpa: GuestAddress(gpa),
            perms,
            ctx: 0,
        }
    }

    fn ignore(_: &TlbEntry, _: Removal) {}

    #[test]
    fn geometry_limits_are_enforced() {
        assert_eq!(TlbGeometry::new(0, 4), Err(TlbError::BadSets { sets: 0 }));
        assert_eq!(TlbGeometry::new(3, 4), Err(TlbError::BadSets { sets: 3 }));
        assert_eq!(
            TlbGeometry::new(65536, 4),
            Err(TlbError::BadSets { sets: 65536 })
        );
        assert_eq!(TlbGeometry::new(16, 1), Err(TlbError::BadWays { ways: 1 }));
        assert_eq!(
            TlbGeometry::new(16, 17),
            Err(TlbError::BadWays { ways: 17 })
        );
        assert_eq!(TlbGeometry::default().entries(), 1024);
        assert_eq!(geometry(32768, 16).entries(), 1 << 19);
    }

    #[test]
    fn a_filled_4k_page_hits_with_offset_and_other_asids_miss() {
        let mut tlb = DeviceTlb::new(TlbGeometry::default());
        tlb.insert(
            fill(1, 0x7000, PageSize::Size4K, 0x20_0000, Perms::READ),
            &mut ignore,
        );
        let hit = tlb.lookup(1, VirtAddr(0x7123)).expect("hit");
        assert_eq!(hit.gpa, GuestAddress(0x20_0123));
        assert_eq!(hit.page_remaining, 0x1000 - 0x123);
        assert_eq!(hit.perms, Perms::READ);
        assert!(tlb.lookup(2, VirtAddr(0x7123)).is_none());
        assert!(tlb.lookup(1, VirtAddr(0x8000)).is_none());
        assert!(tlb.lookup(1, VirtAddr(0x6fff)).is_none());
    }

    #[test]
    fn a_2m_page_covers_its_whole_range() {
        let mut tlb = DeviceTlb::new(TlbGeometry::default());
        tlb.insert(
            fill(
                3,
                0x4020_0000,
                PageSize::Size2M,
                0x8000_0000,
                Perms::READ_WRITE,
            ),
            &mut ignore,
        );
        let hit = tlb
            .lookup(3, VirtAddr(0x403f_fff8))
            .expect("hit at the end");
        assert_eq!(hit.gpa, GuestAddress(0x801f_fff8));
        assert_eq!(hit.page_remaining, 8);
        assert_eq!(hit.size, PageSize::Size2M);
        assert!(tlb.lookup(3, VirtAddr(0x4040_0000)).is_none());
    }

    #[test]
    fn a_fill_replaces_overlapping_entries_of_its_asid_only() {
        let mut tlb = DeviceTlb::new(TlbGeometry::default());
        for page in 0..4 {
            tlb.insert(
                fill(
                    1,
                    0x20_0000 + page * 0x1000,
                    PageSize::Size4K,
                    0x1000,
                    Perms::READ,
                ),
                &mut ignore,
            );
        }
        tlb.insert(
            fill(2, 0x20_0000, PageSize::Size4K, 0x1000, Perms::READ),
            &mut ignore,
        );
        let mut replaced = 0;
        tlb.insert(
            fill(1, 0x20_0000, PageSize::Size2M, 0x40_0000, Perms::READ),
            &mut |_, why| {
                assert_eq!(why, Removal::Replaced);
                replaced += 1;
            },
        );
        assert_eq!(replaced, 4);
        assert_eq!(tlb.len(), 2);
        // And a 4 KiB fill inside the 2 MiB page replaces the 2 MiB page.
        let mut replaced = 0;
        tlb.insert(
            fill(1, 0x30_0000, PageSize::Size4K, 0x5000, Perms::READ_WRITE),
            &mut |_, _| replaced += 1,
        );
        assert_eq!(replaced, 1);
        assert!(tlb.lookup(1, VirtAddr(0x20_0000)).is_none());
        assert!(tlb.lookup(2, VirtAddr(0x20_0000)).is_some());
        tlb.check_invariants();
    }

    #[test]
    fn a_fill_never_evicts_the_entry_filled_last_in_its_set() {
        // One set, two ways: the COPY pattern (source filled, then destination) must leave both.
        let mut tlb = DeviceTlb::new(geometry(1, 2));
        tlb.insert(
            fill(1, 0x1000, PageSize::Size4K, 0x1000, Perms::READ),
            &mut ignore,
        );
        tlb.insert(
            fill(1, 0x2000, PageSize::Size4K, 0x2000, Perms::READ),
            &mut ignore,
        );
        assert!(tlb.lookup(1, VirtAddr(0x1000)).is_some());
        assert!(tlb.lookup(1, VirtAddr(0x2000)).is_some());
        // Source of the next chunk: evicts one of them, never the one filled last (0x2000).
        let mut evicted = Vec::new();
        tlb.insert(
            fill(1, 0x3000, PageSize::Size4K, 0x3000, Perms::READ),
            &mut |entry, why| evicted.push((entry.fill.va, why)),
        );
        assert_eq!(evicted, vec![(VirtAddr(0x1000), Removal::Evicted)]);
        tlb.insert(
            fill(1, 0x4000, PageSize::Size4K, 0x4000, Perms::READ),
            &mut ignore,
        );
        assert!(tlb.lookup(1, VirtAddr(0x3000)).is_some());
        assert!(tlb.lookup(1, VirtAddr(0x4000)).is_some());
    }

    #[test]
    fn replacement_prefers_unreferenced_ways() {
        let mut tlb = DeviceTlb::new(geometry(1, 4));
        for page in 1..=4 {
            tlb.insert(
                fill(1, page * 0x1000, PageSize::Size4K, 0, Perms::READ),
                &mut ignore,
            );
        }
        // Reference pages 1, 2, 4; page 3 is the only cold one.
        for page in [1, 2, 4] {
            assert!(tlb.lookup(1, VirtAddr(page * 0x1000)).is_some());
        }
        let mut evicted = Vec::new();
        tlb.insert(
            fill(1, 0x9000, PageSize::Size4K, 0, Perms::READ),
            &mut |entry, _| evicted.push(entry.fill.va),
        );
        assert_eq!(evicted, vec![VirtAddr(0x3000)]);
    }

    #[test]
    fn range_invalidation_removes_exactly_the_overlapping_entries() {
        let mut tlb = DeviceTlb::new(TlbGeometry::default());
        tlb.insert(
            fill(1, 0x0000_1000, PageSize::Size4K, 0, Perms::READ),
            &mut ignore,
        );
        tlb.insert(
            fill(1, 0x0000_2000, PageSize::Size4K, 0, Perms::READ),
            &mut ignore,
        );
        tlb.insert(
            fill(1, 0x0020_0000, PageSize::Size2M, 0, Perms::READ),
            &mut ignore,
        );
        tlb.insert(
            fill(2, 0x0000_1000, PageSize::Size4K, 0, Perms::READ),
            &mut ignore,
        );
        // [0x2000, 0x30_0000): the second 4 KiB page and the 2 MiB page (overlap at its start).
        let range = VaRange::new(VirtAddr(0x2000), VirtAddr(0x30_0000)).expect("valid");
        assert_eq!(tlb.invalidate_range(1, range, &mut ignore), 2);
        assert!(tlb.lookup(1, VirtAddr(0x1000)).is_some());
        assert!(tlb.lookup(1, VirtAddr(0x2000)).is_none());
        assert!(tlb.lookup(1, VirtAddr(0x20_0000)).is_none());
        assert!(tlb.lookup(2, VirtAddr(0x1000)).is_some());
        // A range starting inside a 2 MiB page removes it.
        tlb.insert(
            fill(1, 0x0020_0000, PageSize::Size2M, 0, Perms::READ),
            &mut ignore,
        );
        let inside = VaRange::new(VirtAddr(0x3f_f000), VirtAddr(0x40_0000)).expect("valid");
        assert_eq!(tlb.invalidate_range(1, inside, &mut ignore), 1);
        tlb.check_invariants();
    }

    #[test]
    fn asid_and_global_invalidation_remove_everything_they_name() {
        let mut tlb = DeviceTlb::new(TlbGeometry::default());
        for asid in 1..=3 {
            for page in 0..10 {
                tlb.insert(
                    fill(asid, page << 12, PageSize::Size4K, 0, Perms::READ),
                    &mut ignore,
                );
            }
        }
        tlb.insert(
            fill(2, u64::MAX - 0xfff, PageSize::Size4K, 0, Perms::READ),
            &mut ignore,
        );
        assert_eq!(tlb.invalidate_asid(2, &mut ignore), 11);
        assert_eq!(tlb.len(), 20);
        assert_eq!(tlb.invalidate_all(&mut ignore), 20);
        assert!(tlb.is_empty());
        tlb.check_invariants();
    }

    #[test]
    fn eviction_by_fill_id_ignores_a_slot_that_was_refilled() {
        let mut tlb = DeviceTlb::new(TlbGeometry::default());
        tlb.insert(
            fill(1, 0x1000, PageSize::Size4K, 0, Perms::READ),
            &mut ignore,
        );
        let hit = tlb.lookup(1, VirtAddr(0x1000)).expect("hit");
        tlb.evict(hit.slot, hit.fill_id + 1, &mut ignore);
        assert!(tlb.lookup(1, VirtAddr(0x1000)).is_some());
        tlb.evict(hit.slot, hit.fill_id, &mut ignore);
        assert!(tlb.lookup(1, VirtAddr(0x1000)).is_none());
    }

    #[test]
    fn the_top_page_of_the_address_space_can_be_filled_and_invalidated() {
        let mut tlb = DeviceTlb::new(TlbGeometry::default());
        tlb.insert(
            fill(1, u64::MAX - PAGE_2M_MASK, PageSize::Size2M, 0, Perms::READ),
            &mut ignore,
        );
        assert!(tlb.lookup(1, VirtAddr(u64::MAX)).is_some());
        let top = VaRange::new(VirtAddr(u64::MAX - 0xfff), VirtAddr(u64::MAX)).expect("valid");
        assert_eq!(tlb.invalidate_range(1, top, &mut ignore), 1);
    }

    const PAGE_2M_MASK: u64 = PageSize::Size2M.mask();

    /// Operations of the random TLB test.
    #[derive(Clone, Debug)]
    enum Op {
        Fill {
            asid: u16,
            page: u64,
            huge: bool,
            frame: u64,
            perms: u8,
        },
        Lookup {
            asid: u16,
            va: u64,
        },
        InvalidateRange {
            asid: u16,
            start_page: u64,
            pages: u64,
        },
        InvalidateAsid {
            asid: u16,
        },
        InvalidateAll,
    }

    /// VAs fall in a 16 MiB window so fills, lookups and ranges collide often.
    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..3, 0u64..4096, any::<bool>(), 0u64..64, 1u8..4).prop_map(
                |(asid, page, huge, frame, perms)| Op::Fill { asid, page, huge, frame, perms }
            ),
            6 => (0u16..3, 0u64..(16 << 20)).prop_map(|(asid, va)| Op::Lookup { asid, va }),
            2 => (0u16..3, 0u64..4096, 1u64..2048).prop_map(|(asid, start_page, pages)| {
                Op::InvalidateRange { asid, start_page, pages }
            }),
            1 => (0u16..3).prop_map(|asid| Op::InvalidateAsid { asid }),
            1 => Just(Op::InvalidateAll),
        ]
    }

    /// The reference: every translation dropped in and not removed since, without capacity.
    #[derive(Default)]
    struct Model {
        pages: HashMap<(u16, u64, PageSize), (u64, Perms)>,
    }

    impl Model {
        fn remove_overlapping(&mut self, asid: u16, start: u64, end: u64) {
            self.pages.retain(|(a, base, size), _| {
                !(*a == asid && *base < end && base + size.bytes() > start)
            });
        }

        fn lookup(&self, asid: u16, va: u64) -> Option<(u64, Perms)> {
            [PageSize::Size4K, PageSize::Size2M]
                .iter()
                .find_map(|size| {
                    let base = va & !size.mask();
                    self.pages
                        .get(&(asid, base, *size))
                        .map(|(frame, perms)| (frame + (va - base), *perms))
                })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every hit agrees with the reference, and after an invalidation no lookup in the
        /// invalidated range hits until a new fill there.
        #[test]
        fn tlb_agrees_with_a_capacity_free_reference_model(
            ops in proptest::collection::vec(op(), 1..400),
            small in any::<bool>(),
        ) {
            let geometry = if small { geometry(4, 2) } else { geometry(64, 4) };
            let mut tlb = DeviceTlb::new(geometry);
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Fill { asid, page, huge, frame, perms } => {
                        let size = if huge { PageSize::Size2M } else { PageSize::Size4K };
                        let va = (page << 12) & !size.mask();
                        let gpa = frame << 21;
                        let perms = Perms::from_bits(perms);
                        let mut evicted = Vec::new();
                        tlb.insert(fill(asid, va, size, gpa, perms), &mut |entry, why| {
                            if why == Removal::Evicted {
                                evicted.push(entry.fill);
                            }
                        });
                        model.remove_overlapping(asid, va, va + size.bytes());
                        for gone in evicted {
                            model.pages.remove(&(gone.asid, gone.va.0, gone.size));
                        }
                        model.pages.insert((asid, va, size), (gpa, perms));
                    }
                    Op::Lookup { asid, va } => {
                        let got = tlb.lookup(asid, VirtAddr(va)).map(|t| (t.gpa.0, t.perms));
                        prop_assert_eq!(got, model.lookup(asid, va), "lookup {:#x}", va);
                    }
                    Op::InvalidateRange { asid, start_page, pages } => {
                        let start = start_page << 12;
                        let end = start + (pages << 12);
                        let range = VaRange::new(VirtAddr(start), VirtAddr(end)).expect("valid");
                        tlb.invalidate_range(asid, range, &mut ignore);
                        model.remove_overlapping(asid, start, end);
                        for va in (start..end).step_by(0x1000) {
                            prop_assert!(tlb.lookup(asid, VirtAddr(va)).is_none());
                        }
                    }
                    Op::InvalidateAsid { asid } => {
                        tlb.invalidate_asid(asid, &mut ignore);
                        model.pages.retain(|(a, _, _), _| *a != asid);
                        prop_assert!(tlb.entries().all(|e| e.fill.asid != asid));
                    }
                    Op::InvalidateAll => {
                        tlb.invalidate_all(&mut ignore);
                        model.pages.clear();
                        prop_assert!(tlb.is_empty());
                    }
                }
                tlb.check_invariants();
                prop_assert!(tlb.len() <= geometry.entries());
                prop_assert_eq!(tlb.len(), model.pages.len());
            }
        }
    }
}
