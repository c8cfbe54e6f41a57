//! PCI function plumbing: configuration space, BARs, capabilities, MSI-X.
//!
//! [`PciDevice`] is the seam to the VMM's bus; [`configuration`] and [`msix`] are the
//! building blocks a function uses to implement it.

pub mod configuration;
pub mod msix;

/// The dword index of the first capability with ID `id` in a 256-byte configuration space read
/// through `read_dword` (dword index → value): the list from the capability pointer, ended by
/// an offset below 0x40 (the header) or past the space, and after 48 hops (a list with a loop).
/// Hosts of a function they reach only through its configuration space use it (a vfio-user
/// server programming MSI-X, a VMM emulating it for an out-of-process function).
pub fn find_capability(mut read_dword: impl FnMut(usize) -> u32, id: u8) -> Option<usize> {
    let pointer = read_dword(configuration::CAPABILITY_POINTER_OFFSET / 4);
    let mut offset = (pointer & 0xfc) as usize;
    for _ in 0..48 {
        if !(0x40..=0xfc).contains(&offset) {
            return None;
        }
        let header = read_dword(offset / 4);
        if header & 0xff == u32::from(id) {
            return Some(offset / 4);
        }
        offset = ((header >> 8) & 0xfc) as usize;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_capability;

    #[test]
    fn capability_walk_finds_msix_and_stops_on_loops() {
        let mut config = [0u32; 64];
        let link = |config: &mut [u32; 64], at: usize, id: u8, next: u8| {
            config[at / 4] = u32::from(id) | (u32::from(next) << 8);
        };
        config[0x34 / 4] = 0x40;
        link(&mut config, 0x40, 0x05, 0x50); // MSI
        link(&mut config, 0x50, 0x11, 0x00); // MSI-X
        assert_eq!(find_capability(|r| config[r], 0x11), Some(0x50 / 4));
        link(&mut config, 0x40, 0x05, 0x40); // a loop
        assert_eq!(find_capability(|r| config[r], 0x11), None);
        config[0x34 / 4] = 0x10; // into the header
        assert_eq!(find_capability(|r| config[r], 0x05), None);
    }
}

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

    /// Doorbells: registers a write to which has one effect whatever its value and width,
    /// and returns nothing a vCPU must wait for. A host may deliver such writes out of band
    /// (KVM's ioeventfd: the vCPU does not leave the kernel) as a later
    /// [`PciDevice::write_bar`] of any value. None by default.
    fn doorbells(&self) -> Vec<Doorbell> {
        Vec::new()
    }
}

/// A doorbell register ([`PciDevice::doorbells`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doorbell {
    /// Memory BAR holding it.
    pub bar: u8,
    /// Byte offset within the BAR.
    pub offset: u64,
}
