//! Identity page tables for the 64-bit entry: the first 4 GiB mapped with 2 MiB pages,
//! which covers the kernel, zero page, command line and initrd wherever they sit in low
//! RAM. Linux replaces these tables early in `startup_64`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// Bytes mapped by the boot tables.
pub const IDENTITY_MAPPED_BYTES: u64 = 4 << 30;

const PAGE_PRESENT: u64 = 1 << 0;
const PAGE_WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;
const ENTRIES: u64 = 512;
const PD_COUNT: u64 = IDENTITY_MAPPED_BYTES >> 30;

/// Writes PML4, PDPT and page directories; returns the CR3 value.
pub fn write_identity_tables<M: GuestMemoryBackend>(
    mem: &M,
) -> Result<u64, vm_memory::GuestMemoryError> {
    let flags = PAGE_PRESENT | PAGE_WRITABLE;
    mem.write_obj(PDPTE_START | flags, GuestAddress(PML4_START))?;
    for pd in 0..PD_COUNT {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | flags, GuestAddress(PDPTE_START + pd * 8))?;
        for i in 0..ENTRIES {
            let phys = ((pd * ENTRIES + i) << 21) | flags | PAGE_SIZE_2M;
            mem.write_obj(phys, GuestAddress(pd_addr + i * 8))?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the tables like the MMU does for a 2 MiB leaf.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).ok();
        let mask = 0x000f_ffff_ffff_f000;
        let pml4e = read(cr3 + ((va >> 39) & 511) * 8)?;
        if pml4e & PAGE_PRESENT == 0 {
            return None;
        }
        let pdpte = read((pml4e & mask) + ((va >> 30) & 511) * 8)?;
        if pdpte & PAGE_PRESENT == 0 {
            return None;
        }
        let pde = read((pdpte & mask) + ((va >> 21) & 511) * 8)?;
        if pde & PAGE_PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_4g_is_identity_mapped_and_nothing_above() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("test memory");
        let cr3 = write_identity_tables(&mem).expect("tables fit");
        for va in [
            0,
            0x7000,
            0x2_0000,
            0x10_0200,
            0x3fff_f000,
            0xbfff_ffff,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }
}
