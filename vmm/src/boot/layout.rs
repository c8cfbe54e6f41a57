//! The guest-physical memory map: fixed addresses of boot structures, where RAM is, the
//! 32-bit PCI MMIO hole, and the e820 table that tells Linux about it.
//!
//! ```text
//! 0x0000_0500  GDT                 0x0000_0520  IDT (empty)
//! 0x0000_7000  zero page           0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, then PDPT (0xA000) and 4 PDs (0xB000..0xF000): identity map of 4 GiB
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA .. 0x10_0000: reserved (MP table at 0xF_0000)
//! 0x0010_0000  kernel (protected-mode part of the bzImage), 64-bit entry at +0x200
//!  ...         initrd at the top of low RAM
//! 0xC000_0000  .. 0xFEC0_0000 PCI MMIO window (not RAM), then IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 3 GiB of the total, if any
//! ```

use linux_loader::loader::bootparam::boot_e820_entry;

/// GDT for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT: interrupts stay off until the kernel installs its own.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Start of the extended BIOS data area; from here to 1 MiB is reserved.
pub const EBDA_START: u64 = 0x9_fc00;
/// MP floating pointer and configuration table (in the BIOS area Linux scans).
pub const MPTABLE_START: u64 = 0xf_0000;
/// End of the BIOS area / start of high memory.
pub const HIMEM_START: u64 = 0x10_0000;
/// Where the bzImage's protected-mode kernel is loaded.
pub const KERNEL_START: u64 = HIMEM_START;
/// Offset of the 64-bit entry point from the load address (Linux boot protocol 2.12+).
pub const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// RAM below 4 GiB stops here; the rest of the 32-bit space is the PCI/APIC hole.
pub const LOW_RAM_END: u64 = 0xc000_0000;
/// 32-bit PCI MMIO window for BARs, `[start, end)`.
pub const PCI_MMIO_START: u64 = 0xc000_0000;
/// End of the PCI MMIO window: the IOAPIC sits right above it.
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
/// IOAPIC MMIO base (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Where RAM resumes above the hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// KVM's three-page TSS region (needed on Intel), in the hole below 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (needed on Intel), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// A RAM region: guest-physical start and length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RamRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Splits `mem_bytes` of RAM around the 32-bit hole: up to 3 GiB low, the rest at 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<RamRegion> {
    let low = mem_bytes.min(LOW_RAM_END);
    let mut regions = vec![RamRegion { start: 0, len: low }];
    if mem_bytes > low {
        regions.push(RamRegion {
            start: HIGH_RAM_START,
            len: mem_bytes - low,
        });
    }
    regions
}

/// The e820 map handed to Linux for `regions` (as built by [`ram_regions`]): the BIOS
/// area and everything in the hole are never RAM.
pub fn e820_entries(regions: &[RamRegion]) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, size: u64, r#type: u32| boot_e820_entry { addr, size, r#type };
    let mut out = Vec::new();
    for r in regions {
        if r.start < HIMEM_START {
            out.push(entry(r.start, EBDA_START - r.start, E820_RAM));
            out.push(entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED));
            if r.end() > HIMEM_START {
                out.push(entry(HIMEM_START, r.end() - HIMEM_START, E820_RAM));
            }
        } else {
            out.push(entry(r.start, r.len, E820_RAM));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_memory_is_one_low_region() {
        assert_eq!(
            ram_regions(512 * MIB),
            vec![RamRegion {
                start: 0,
                len: 512 * MIB
            }]
        );
    }

    #[test]
    fn memory_above_3g_resumes_at_4g() {
        let r = ram_regions(5 * 1024 * MIB);
        assert_eq!(r[0].end(), LOW_RAM_END);
        assert_eq!(r[1].start, HIGH_RAM_START);
        assert_eq!(r[0].len + r[1].len, 5 * 1024 * MIB);
    }

    #[test]
    fn e820_never_marks_bios_area_or_pci_hole_as_ram() {
        for mem in [64 * MIB, 3 * 1024 * MIB, 8 * 1024 * MIB] {
            for e in e820_entries(&ram_regions(mem)) {
                let (addr, size, ty) = (e.addr, e.size, e.r#type);
                if ty != E820_RAM {
                    continue;
                }
                let end = addr + size;
                assert!(
                    end <= PCI_MMIO_START || addr >= HIGH_RAM_START,
                    "RAM {addr:#x}..{end:#x} in the hole"
                );
                assert!(
                    end <= EBDA_START || addr >= HIMEM_START,
                    "RAM {addr:#x}..{end:#x} in the BIOS area"
                );
            }
        }
    }

    #[test]
    fn e820_ram_adds_up_to_memory_minus_bios_area() {
        let mem = 4 * 1024 * MIB;
        let ram: u64 = e820_entries(&ram_regions(mem))
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn fixed_boot_structures_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 4 * 0x1000),
            (CMDLINE_START, 0x1000),
            (MPTABLE_START, 0x1_0000),
            (KERNEL_START, 1),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} vs {b:x?}");
            }
        }
        const {
            assert!(BOOT_STACK_POINTER < PML4_START);
            assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
        }
    }
}
