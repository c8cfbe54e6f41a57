//! Device model of the rmnic remote-memory NIC.
//!
//! The crate knows PCI configuration space, MSI-X, the rmnic register map, the device TLB,
//! the command engine, the miss path and the invalidation queue — and nothing about KVM: the
//! VMM reaches it through [`pci::PciDevice`], hands it guest RAM as a vm-memory
//! `GuestMemoryMmap` and an [`interrupt::MsiSink`] to raise interrupts, so every part is
//! testable on the host.
//!
//! Layers, bottom up: [`pci::configuration`] and [`pci::msix`] are generic PCI building
//! blocks; [`regs`] is the BAR0 layout and register blocks as data; [`tlb`], [`commands`],
//! [`fault_ring`] and [`invalidation`] are the device's structures and guest-memory formats,
//! [`segments`] the export table and attachment slots that let one context address another's
//! memory, and [`fabric`] the same across two devices joined by a link;
//! [`engine`] runs commands and invalidations on worker threads through one
//! translate-and-access path; [`rmnic`] ties them into the function the VMM plugs into its
//! bus. [`inject`] and [`events`] are the hooks and the trace for verification.
//!
//! The register-level contract is `docs/device-spec.md`, kept equal to the code by unit tests
//! (`specification_*_match_the_code`).

pub mod addr;
pub mod commands;
pub mod context;
mod control;
pub mod engine;
pub mod error_code;
pub mod events;
pub mod fabric;
pub mod fault_ring;
pub mod inject;
pub mod inline_queue;
pub mod inspect;
pub mod interrupt;
pub mod invalidation;
mod mmio;
pub mod oracle;
pub mod pci;
pub mod regs;
pub mod rmnic;
pub mod segments;
#[cfg(test)]
mod spec_doc;
pub mod stats;
pub mod tlb;

#[cfg(test)]
mod tests;

pub use engine::dma::GuestRam;
pub use mmio::MmioError;
pub use pci::msix::Delivery;
pub use regs::{
    BAR0_INDEX, BAR0_SIZE, CTX_BLOCK_BASE, CTX_BLOCK_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
    NUM_CONTEXTS, REGISTER_WINDOW_SIZE, REG_CAPS, REG_ID, REG_SCRATCH, REG_VERSION, RMNIC_ID_MAGIC,
    RMNIC_SPEC_VERSION, VERSION_MAJOR_MASK, VERSION_MAJOR_SHIFT, VERSION_MINOR_MASK,
    VERSION_MINOR_SHIFT,
};
pub use rmnic::{
    BuildError, RmnicConfig, RmnicDevice, RmnicError, RMNIC_DEVICE_ID, RMNIC_MSIX_VECTORS,
    RMNIC_VENDOR_ID, VECTOR_COMPLETION, VECTOR_ERROR, VECTOR_FAULT, VECTOR_INVALIDATION,
};
pub use tlb::TlbGeometry;
