//! PCI for the VMM: bus 0 behind configuration mechanism #1 (ports 0xCF8/0xCFC), a host
//! bridge at 00:00.0, firmware-style BAR placement, and MMIO routing to device BARs.
//!
//! Devices plug in through the seam trait [`rmnic_device::pci::PciDevice`]; this module
//! knows nothing about what a device does.

pub mod bars;
pub mod bus;
pub mod doorbells;
pub mod host_bridge;
pub mod vfio_user;

pub use bars::{assign_bars, BarError, BarInfo, BarPlacement};
pub use bus::{
    ConfigAddress, PciConfigIo, PciError, PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN,
};
pub use host_bridge::HostBridge;
