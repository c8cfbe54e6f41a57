//! Firmware-style BAR placement: size every memory BAR through configuration space (write
//! all ones, read the mask back, restore), pack them into the 32-bit MMIO window aligned to
//! their size, and program the chosen addresses back through configuration space.
//!
//! 64-bit BARs are placed below 4 GiB as well (high dword 0); I/O BARs are left
//! unassigned (the window is for memory only; rmnic has none).

use rmnic_device::pci::PciDevice;

const BAR0_REG: usize = 4;
const BAR_COUNT: u8 = 6;
const BAR_IO_SPACE: u32 = 1;
const BAR_MEM_TYPE_MASK: u32 = 0b110;
const BAR_MEM_TYPE_64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 1 << 3;
const BAR_MEM_ADDR_MASK: u32 = !0xf;
/// Page granularity keeps every BAR mappable on its own (e.g. by VFIO or `mmap`).
const MIN_BAR_ALIGN: u64 = 0x1000;

/// Errors placing BARs.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarError {
    /// The window has no room left for this BAR.
    #[error("No room for BAR {index} of 00:{slot:02x}.0 ({size:#x} bytes) in the MMIO window [{start:#x}, {end:#x})")]
    WindowFull {
        /// Slot of the device.
        slot: u8,
        /// BAR index.
        index: u8,
        /// BAR size.
        size: u64,
        /// Window start.
        start: u64,
        /// Window end.
        end: u64,
    },
}

/// A memory BAR as discovered by sizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// Device slot on bus 0.
    pub slot: u8,
    /// BAR index (low half for 64-bit BARs).
    pub index: u8,
    /// Size in bytes (power of two).
    pub size: u64,
    /// Whether the BAR spans two registers.
    pub is_64bit: bool,
    /// Prefetchable bit, kept as the device reports it.
    pub prefetchable: bool,
}

/// Where a BAR was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarPlacement {
    /// The BAR.
    pub bar: BarInfo,
    /// Assigned guest-physical base.
    pub base: u64,
}

/// Sizes the memory BARs of `dev` in `slot` through its configuration registers, leaving
/// every BAR register as it found it.
pub fn probe_bars(slot: u8, dev: &mut dyn PciDevice) -> Vec<BarInfo> {
    let mut bars = Vec::new();
    let mut index = 0u8;
    while index < BAR_COUNT {
        let reg = BAR0_REG + usize::from(index);
        let orig = dev.read_config_register(reg);
        if orig & BAR_IO_SPACE != 0 {
            tracing::debug!("00:{slot:02x}.0 BAR {index} is an I/O BAR; left unassigned");
            index += 1;
            continue;
        }
        let is_64bit = orig & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64 && index + 1 < BAR_COUNT;
        dev.write_config_register(reg, 0, &u32::MAX.to_le_bytes());
        let lo = dev.read_config_register(reg);
        dev.write_config_register(reg, 0, &orig.to_le_bytes());
        let hi = if is_64bit {
            let orig_hi = dev.read_config_register(reg + 1);
            dev.write_config_register(reg + 1, 0, &u32::MAX.to_le_bytes());
            let hi = dev.read_config_register(reg + 1);
            dev.write_config_register(reg + 1, 0, &orig_hi.to_le_bytes());
            hi
        } else {
            // A 32-bit BAR's upper address bits are all fixed at zero.
            u32::MAX
        };
        let mask = (u64::from(hi) << 32) | u64::from(lo & BAR_MEM_ADDR_MASK);
        if lo & BAR_MEM_ADDR_MASK != 0 {
            let size = (!mask).wrapping_add(1);
            if size.is_power_of_two() {
                bars.push(BarInfo {
                    slot,
                    index,
                    size,
                    is_64bit,
                    prefetchable: orig & BAR_PREFETCHABLE != 0,
                });
            } else {
                tracing::warn!("00:{slot:02x}.0 BAR {index} has a malformed size mask {mask:#x}");
            }
        }
        index += if is_64bit { 2 } else { 1 };
    }
    bars
}

/// Packs `bars` into `[start, end)`: largest first, each aligned to its size (at least a
/// page), so no two overlap and none leaves the window.
pub fn assign_bars(bars: &[BarInfo], start: u64, end: u64) -> Result<Vec<BarPlacement>, BarError> {
    let mut order: Vec<BarInfo> = bars.to_vec();
    order.sort_by(|a, b| {
        b.size
            .cmp(&a.size)
            .then(a.slot.cmp(&b.slot))
            .then(a.index.cmp(&b.index))
    });
    let mut cursor = start;
    let mut placed = Vec::with_capacity(order.len());
    for bar in order {
        let full = BarError::WindowFull {
            slot: bar.slot,
            index: bar.index,
            size: bar.size,
            start,
            end,
        };
        let align = bar.size.max(MIN_BAR_ALIGN);
        let base = cursor
            .checked_add(align - 1)
            .map(|c| c & !(align - 1))
            .ok_or_else(|| full.clone())?;
        let next = base.checked_add(align).ok_or_else(|| full.clone())?;
        if next > end {
            return Err(full);
        }
        placed.push(BarPlacement { bar, base });
        cursor = next;
    }
    Ok(placed)
}

/// Writes a placement into the BAR register(s), keeping the read-only type bits.
pub fn program_bar(dev: &mut dyn PciDevice, p: &BarPlacement) {
    let reg = BAR0_REG + usize::from(p.bar.index);
    dev.write_config_register(reg, 0, &(p.base as u32).to_le_bytes());
    if p.bar.is_64bit {
        dev.write_config_register(reg + 1, 0, &((p.base >> 32) as u32).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::{e820_entries, ram_regions, E820_RAM, PCI_MMIO_END, PCI_MMIO_START};
    use rmnic_device::pci::BarRegion;

    /// Config space with BARs that answer size probes like hardware: writable bits are
    /// the address bits above the size, the type bits are read-only.
    struct SizedBars {
        regs: [u32; 64],
        /// (register, writable mask, read-only type bits)
        bars: Vec<(usize, u32, u32)>,
    }

    impl SizedBars {
        fn new(bars: Vec<(usize, u32, u32)>) -> Self {
            let mut regs = [0u32; 64];
            for (reg, _, ty) in &bars {
                regs[*reg] = *ty;
            }
            Self { regs, bars }
        }
    }

    impl PciDevice for SizedBars {
        fn read_config_register(&mut self, reg: usize) -> u32 {
            self.regs.get(reg).copied().unwrap_or(0)
        }
        fn write_config_register(&mut self, reg: usize, _offset: u64, data: &[u8]) {
            let v = u32::from_le_bytes(data.try_into().expect("dword writes in test"));
            if let Some((_, mask, ty)) = self.bars.iter().find(|b| b.0 == reg) {
                self.regs[reg] = (v & mask) | ty;
            }
        }
        fn read_bar(&mut self, _: u8, _: u64, _: &mut [u8]) {}
        fn write_bar(&mut self, _: u8, _: u64, _: &[u8]) {}
        fn bar_regions(&self) -> Vec<BarRegion> {
            Vec::new()
        }
    }

    fn bar(slot: u8, index: u8, size: u64) -> BarInfo {
        BarInfo {
            slot,
            index,
            size,
            is_64bit: false,
            prefetchable: false,
        }
    }

    #[test]
    fn probe_finds_32bit_and_64bit_bars_and_restores_them() {
        // BAR0: 32-bit 4 KiB; BAR2/3: 64-bit prefetchable 1 MiB; BAR4: I/O.
        let mut dev = SizedBars::new(vec![
            (4, 0xffff_f000, 0),
            (6, 0xfff0_0000, 0b1100),
            (7, 0xffff_ffff, 0),
            (8, 0xffff_fffc, 1),
        ]);
        let before = dev.regs;
        let bars = probe_bars(1, &mut dev);
        assert_eq!(
            bars,
            vec![
                bar(1, 0, 0x1000),
                BarInfo {
                    slot: 1,
                    index: 2,
                    size: 0x10_0000,
                    is_64bit: true,
                    prefetchable: true
                }
            ]
        );
        assert_eq!(dev.regs, before, "size probe must not move a BAR");
    }

    #[test]
    fn unimplemented_bars_are_skipped() {
        let mut dev = SizedBars::new(vec![]);
        assert!(probe_bars(0, &mut dev).is_empty());
    }

    #[test]
    fn placements_are_size_aligned_disjoint_and_inside_window() {
        let bars = [
            bar(1, 0, 0x1000),
            bar(1, 1, 0x10_0000),
            bar(2, 0, 0x100),
            bar(2, 2, 0x400_0000),
            bar(3, 0, 0x2000),
        ];
        let placed = assign_bars(&bars, PCI_MMIO_START, PCI_MMIO_END).expect("fits");
        assert_eq!(placed.len(), bars.len());
        for p in &placed {
            let align = p.bar.size.max(MIN_BAR_ALIGN);
            assert_eq!(p.base % align, 0, "{p:?} aligned");
            assert!(p.base >= PCI_MMIO_START && p.base + p.bar.size <= PCI_MMIO_END);
        }
        for (i, a) in placed.iter().enumerate() {
            for b in &placed[i + 1..] {
                assert!(
                    a.base + a.bar.size <= b.base || b.base + b.bar.size <= a.base,
                    "{a:?} overlaps {b:?}"
                );
            }
        }
    }

    #[test]
    fn placements_stay_out_of_ram() {
        let placed = assign_bars(
            &[bar(1, 0, 0x1000), bar(1, 2, 0x100_0000)],
            PCI_MMIO_START,
            PCI_MMIO_END,
        )
        .expect("fits");
        for mem in [512 << 20, 3u64 << 30, 6u64 << 30] {
            for e in e820_entries(&ram_regions(mem)) {
                let (addr, size, ty) = (e.addr, e.size, e.r#type);
                if ty != E820_RAM {
                    continue;
                }
                for p in &placed {
                    assert!(
                        p.base + p.bar.size <= addr || addr + size <= p.base,
                        "BAR {p:?} inside RAM {addr:#x}+{size:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn window_exhaustion_is_an_error() {
        let err = assign_bars(&[bar(1, 0, 0x2000), bar(1, 1, 0x2000)], 0x1000, 0x5000)
            .expect_err("only one fits after alignment");
        assert!(matches!(err, BarError::WindowFull { .. }));
    }

    #[test]
    fn programming_a_64bit_bar_writes_both_halves() {
        let mut dev = SizedBars::new(vec![(4, 0xfff0_0000, 0b100), (5, 0xffff_ffff, 0)]);
        let bars = probe_bars(1, &mut dev);
        let placed = assign_bars(&bars, PCI_MMIO_START, PCI_MMIO_END).expect("fits");
        program_bar(&mut dev, &placed[0]);
        assert_eq!(dev.regs[4], 0xc000_0000 | 0b100);
        assert_eq!(dev.regs[5], 0);
    }
}
