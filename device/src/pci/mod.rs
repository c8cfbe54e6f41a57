//! PCI function plumbing: configuration space, BARs, capabilities, MSI-X.
//!
//! [`PciDevice`] is the seam to the VMM's bus; [`configuration`] and [`msix`] are the
//! building blocks a function uses to implement it.

pub mod configuration;
pub mod msix;

/// A memory BAR as currently decoded by the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// BAR index (0..=5; a 64-bit BAR is named by its low half).
    pub index: u8,
    /// Guest-physical base address programmed by the guest or the firmware.
    pub base: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// The seam between a PCI function and the bus that hosts it. Offsets, never absolute
/// addresses: the bus resolves a guest-physical address to (BAR, offset) itself.
pub trait PciDevice: Send {
    /// Reads the 32-bit configuration register number `reg` (byte offset `reg * 4`).
    fn read_config_register(&mut self, reg: usize) -> u32;

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..=3) within register `reg`.
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]);

    /// Reads `data.len()` bytes at `offset` within memory BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` within memory BAR `bar`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);

    /// The memory BARs the function decodes right now: empty while memory-space decoding
    /// is disabled in the command register.
    fn bar_regions(&self) -> Vec<BarRegion>;
}
