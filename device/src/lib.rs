//! Device model of the rmnic remote-memory NIC.
//!
//! The crate knows PCI configuration space, MSI-X and the rmnic register file, and
//! nothing about KVM: the VMM reaches it through [`pci::PciDevice`] and hands it an
//! [`interrupt::MsiSink`] to raise interrupts, so every part is unit-testable on the host.

pub mod interrupt;
pub mod pci;
