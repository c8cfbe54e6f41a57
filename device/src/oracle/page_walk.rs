//! The CPU's translation of a virtual address, read from the guest's own page tables: x86-64
//! 4-level paging (PML4, PDPT, PD, PT) with 4 KiB, 2 MiB and 1 GiB leaves.
//!
//! Each entry is read with one 8-byte atomic load, as the CPU's page walker reads it, so an
//! entry the guest kernel is rewriting is seen either before or after the change, never torn.
//! Table addresses come from guest memory and are untrusted: a table outside guest RAM ends
//! the walk with [`Walk::OutsideRam`], never an access elsewhere.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use crate::engine::dma::GuestRam;

/// Entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Entry bit: user-accessible.
pub const PTE_USER: u64 = 1 << 2;
/// Entry bit: accessed.
pub const PTE_ACCESSED: u64 = 1 << 5;
/// Entry bit: dirty (leaf entries).
pub const PTE_DIRTY: u64 = 1 << 6;
/// Entry bit: page size (a leaf at the PDPT or PD level).
pub const PTE_HUGE: u64 = 1 << 7;
/// Physical-address bits of an entry (bits 51:12).
pub const PTE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// A present leaf: the page the CPU would use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Guest-physical address of the page.
    pub page: u64,
    /// Page size in bytes (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
    /// The leaf's accessed bit.
    pub accessed: bool,
    /// The leaf's dirty bit.
    pub dirty: bool,
    /// The leaf entry itself.
    pub entry: u64,
}

impl Leaf {
    /// The guest-physical address `va` translates to through this leaf.
    pub fn translate(&self, va: u64) -> u64 {
        self.page | (va & (self.size - 1))
    }
}

/// The outcome of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// A present leaf maps the address.
    Mapped(Leaf),
    /// The entry at `level` (4 = PML4 ... 1 = PT) is not present.
    NotPresent {
        /// Level of the entry.
        level: u8,
        /// The entry.
        entry: u64,
    },
    /// The table at `level` lies outside guest RAM.
    OutsideRam {
        /// Level of the table.
        level: u8,
        /// Its guest-physical address.
        table: u64,
    },
}

/// Walks the tables rooted at `root` (a CR3 value; its low 12 bits are ignored) for `va`.
pub fn walk(mem: &GuestRam, root: u64, va: u64) -> Walk {
    let mut table = root & PTE_ADDRESS;
    let mut writable = true;
    let mut user = true;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (va >> shift) & 0x1ff;
        let address = table + index * 8;
        let entry: u64 = match mem.load(GuestAddress(address), Ordering::Acquire) {
            Ok(entry) => entry,
            Err(_) => return Walk::OutsideRam { level, table },
        };
        if entry & PTE_PRESENT == 0 {
            return Walk::NotPresent { level, entry };
        }
        writable &= entry & PTE_WRITABLE != 0;
        user &= entry & PTE_USER != 0;
        let leaf = level == 1 || ((level == 2 || level == 3) && entry & PTE_HUGE != 0);
        if leaf {
            let size = 1u64 << shift;
            return Walk::Mapped(Leaf {
                page: entry & PTE_ADDRESS & !(size - 1),
                size,
                writable,
                user,
                accessed: entry & PTE_ACCESSED != 0,
                dirty: entry & PTE_DIRTY != 0,
                entry,
            });
        }
        table = entry & PTE_ADDRESS;
    }
    // The loop returns at level 1 at the latest.
    Walk::NotPresent { level: 0, entry: 0 }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Guest RAM with page tables built by hand.
    pub(crate) struct Tables {
        pub(crate) mem: GuestRam,
        pub(crate) root: u64,
        next: u64,
    }

    const FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

    impl Tables {
        pub(crate) fn new() -> Self {
            let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x80_0000)]).expect("guest RAM");
            Self::in_memory(mem)
        }

        /// Tables in `mem` (shared with its other clones), root at 0x1000, tables from
        /// 0x2000 up: the low RAM a device-level test harness leaves free.
        pub(crate) fn in_memory(mem: GuestRam) -> Self {
            Self {
                mem,
                root: 0x1000,
                next: 0x2000,
            }
        }

        fn entry_address(&mut self, va: u64, level: u8) -> u64 {
            let mut table = self.root;
            for l in (level + 1..=4).rev() {
                let shift = 12 + 9 * u32::from(l - 1);
                let at = table + ((va >> shift) & 0x1ff) * 8;
                let entry: u64 = self.mem.read_obj(GuestAddress(at)).expect("table");
                table = if entry & PTE_PRESENT == 0 {
                    let fresh = self.next;
                    self.next += 0x1000;
                    self.mem
                        .write_obj(fresh | FLAGS, GuestAddress(at))
                        .expect("table");
                    fresh
                } else {
                    entry & PTE_ADDRESS
                };
            }
            let shift = 12 + 9 * u32::from(level - 1);
            table + ((va >> shift) & 0x1ff) * 8
        }

        /// Maps `va` to `page` with a leaf at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB).
        pub(crate) fn map(&mut self, va: u64, page: u64, level: u8, extra: u64) {
            let at = self.entry_address(va, level);
            let huge = if level > 1 { PTE_HUGE } else { 0 };
            self.mem
                .write_obj(page | huge | extra, GuestAddress(at))
                .expect("leaf");
        }

        /// Rewrites the leaf of `va` at `level` to `value`.
        pub(crate) fn set(&mut self, va: u64, level: u8, value: u64) {
            let at = self.entry_address(va, level);
            self.mem.write_obj(value, GuestAddress(at)).expect("leaf");
        }
    }

    #[test]
    fn leaves_of_every_size_translate() {
        let mut t = Tables::new();
        t.map(0x7f00_0000_1000, 0x40_0000, 1, FLAGS | PTE_DIRTY);
        t.map(0x7f00_0020_0000, 0x60_0000, 2, PTE_PRESENT | PTE_USER);
        t.map(0x7f40_0000_0000, 0x4000_0000, 3, FLAGS);
        match walk(&t.mem, t.root, 0x7f00_0000_1abc) {
            Walk::Mapped(leaf) => {
                assert_eq!((leaf.page, leaf.size), (0x40_0000, 0x1000));
                assert!(leaf.writable && leaf.user && leaf.dirty);
                assert_eq!(leaf.translate(0x7f00_0000_1abc), 0x40_0abc);
            }
            other => panic!("{other:?}"),
        }
        match walk(&t.mem, t.root | 0x18, 0x7f00_0021_2345) {
            Walk::Mapped(leaf) => {
                assert_eq!((leaf.page, leaf.size), (0x60_0000, 0x20_0000));
                assert!(!leaf.writable, "read-only leaf");
                assert_eq!(leaf.translate(0x7f00_0021_2345), 0x61_2345);
            }
            other => panic!("{other:?}"),
        }
        match walk(&t.mem, t.root, 0x7f40_1234_5678) {
            Walk::Mapped(leaf) => assert_eq!(
                (leaf.size, leaf.translate(0x7f40_1234_5678)),
                (0x4000_0000, 0x5234_5678)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_entries_and_tables_outside_ram_end_the_walk() {
        let mut t = Tables::new();
        t.map(0x1000, 0x40_0000, 1, FLAGS);
        assert!(matches!(
            walk(&t.mem, t.root, 0x2000),
            Walk::NotPresent { level: 1, .. }
        ));
        assert!(matches!(
            walk(&t.mem, t.root, 0x7f00_0000_0000),
            Walk::NotPresent { level: 4, .. }
        ));
        // A PT pointer the guest aimed outside its RAM.
        t.set(0x1000, 2, 0x9000_0000 | FLAGS);
        assert!(matches!(
            walk(&t.mem, t.root, 0x1000),
            Walk::OutsideRam {
                level: 1,
                table: 0x9000_0000
            }
        ));
        assert!(matches!(
            walk(&t.mem, 0xffff_f000, 0x1000),
            Walk::OutsideRam { level: 4, .. }
        ));
    }

    #[test]
    fn a_read_only_level_above_makes_the_leaf_read_only() {
        let mut t = Tables::new();
        t.map(0x1000, 0x40_0000, 1, FLAGS);
        let pd_entry_at = t.entry_address(0x1000, 2);
        let pd: u64 = t.mem.read_obj(GuestAddress(pd_entry_at)).expect("pd");
        t.set(0x1000, 2, pd & !PTE_WRITABLE);
        match walk(&t.mem, t.root, 0x1000) {
            Walk::Mapped(leaf) => assert!(!leaf.writable),
            other => panic!("{other:?}"),
        }
    }
}
