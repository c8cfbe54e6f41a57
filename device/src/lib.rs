//! Device model of the rmnic remote-memory NIC.
//!
//! The crate knows PCI configuration space, MSI-X and the rmnic register file, and
//! nothing about KVM: the VMM reaches it through [`pci::PciDevice`] and hands it an
//! [`interrupt::MsiSink`] to raise interrupts, so every part is unit-testable on the host.
//!
//! Layers, bottom up: [`pci::configuration`] and [`pci::msix`] are generic PCI building
//! blocks; [`regs`] is the rmnic BAR0 layout and register file; [`rmnic`] ties them into the
//! function the VMM plugs into its bus. The register-level contract is
//! `docs/device-spec.md`, kept equal to [`regs`] and [`rmnic`] by unit tests.

pub mod interrupt;
mod mmio;
pub mod pci;
pub mod regs;
pub mod rmnic;
#[cfg(test)]
mod spec_doc;

pub use mmio::MmioError;
pub use pci::msix::Delivery;
pub use regs::{
    BAR0_INDEX, BAR0_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, REGISTER_WINDOW_SIZE, REG_CAPS,
    REG_ID, REG_SCRATCH, REG_VERSION, RMNIC_ID_MAGIC, RMNIC_SPEC_VERSION, VERSION_MAJOR_MASK,
    VERSION_MAJOR_SHIFT, VERSION_MINOR_MASK, VERSION_MINOR_SHIFT,
};
pub use rmnic::{
    RmnicDevice, RmnicError, RMNIC_DEVICE_ID, RMNIC_MSIX_VECTORS, RMNIC_VENDOR_ID,
    VECTOR_COMPLETION, VECTOR_ERROR, VECTOR_FAULT, VECTOR_INVALIDATION,
};
