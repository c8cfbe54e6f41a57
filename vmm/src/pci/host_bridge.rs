//! The host bridge at 00:00.0: a header-type-0 function of class 06/00 with no BARs.
//! Linux's `pci_sanity_check` looks for exactly this before trusting mechanism #1.

use rmnic_device::pci::{BarRegion, PciDevice};

/// Red Hat, Inc. (QEMU's vendor ID for virtual devices).
pub const VENDOR_ID: u16 = 0x1b36;
/// "QEMU PCIe Host bridge" device ID, which Linux binds no quirk to.
pub const DEVICE_ID: u16 = 0x0008;
/// Base class 06 (bridge), subclass 00 (host bridge).
const CLASS_HOST_BRIDGE: u32 = 0x0600;

const NUM_REGS: usize = 64;
/// Command register bits the guest may change: I/O, memory, bus master.
const COMMAND_WRITABLE: u32 = 0x0007;

/// Configuration space of the host bridge: registers plus a parallel mask of writable
/// bits, every write through [`HostBridge::write_config_register`].
pub struct HostBridge {
    registers: [u32; NUM_REGS],
    writable: [u32; NUM_REGS],
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// A host bridge in its reset state.
    pub fn new() -> Self {
        let mut registers = [0u32; NUM_REGS];
        let mut writable = [0u32; NUM_REGS];
        registers[0] = (u32::from(DEVICE_ID) << 16) | u32::from(VENDOR_ID);
        registers[2] = CLASS_HOST_BRIDGE << 16; // revision 0, prog-if 0
        writable[1] = COMMAND_WRITABLE;
        Self {
            registers,
            writable,
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.registers.get(reg).copied().unwrap_or(0)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let (Some(cur), Some(&mask)) = (self.registers.get(reg).copied(), self.writable.get(reg))
        else {
            return;
        };
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        if data.is_empty() || off >= 4 || data.len() > 4 - off {
            return;
        }
        let shift = 8 * off as u32;
        let mut value = 0u32;
        let mut lanes = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << (8 * i);
            lanes |= 0xff << (8 * i);
        }
        let mask = mask & (lanes << shift);
        self.registers[reg] = (cur & !mask) | ((value << shift) & mask);
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}

    fn bar_regions(&self) -> Vec<BarRegion> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_host_bridge() {
        let mut hb = HostBridge::new();
        assert_eq!(hb.read_config_register(0) & 0xffff, u32::from(VENDOR_ID));
        assert_eq!(hb.read_config_register(2) >> 16, 0x0600);
        assert_eq!(
            (hb.read_config_register(3) >> 16) & 0x7f,
            0,
            "header type 0"
        );
    }

    #[test]
    fn only_command_bits_are_writable() {
        let mut hb = HostBridge::new();
        hb.write_config_register(0, 0, &[0, 0, 0, 0]);
        assert_eq!(hb.read_config_register(0) & 0xffff, u32::from(VENDOR_ID));
        hb.write_config_register(1, 0, &[0xff, 0xff]);
        assert_eq!(hb.read_config_register(1), COMMAND_WRITABLE);
        hb.write_config_register(4, 0, &[0xff; 4]);
        assert_eq!(hb.read_config_register(4), 0, "no BARs");
    }

    #[test]
    fn out_of_range_accesses_are_harmless() {
        let mut hb = HostBridge::new();
        assert_eq!(hb.read_config_register(1000), 0);
        hb.write_config_register(1000, 0, &[1]);
        hb.write_config_register(1, 3, &[1, 2]);
        hb.write_config_register(1, 9, &[1]);
        assert_eq!(hb.read_config_register(1), 0);
    }
}
