//! The seam between the protocol and a device model: what a server asks of the device it
//! serves. [`crate::rmnic_function::RmnicFunction`] implements it for the rmnic model; an
//! RTL co-simulation or another model implements the same trait and gets the same server.
//!
//! The server has already checked every request against the protocol and against the
//! regions and interrupt indexes the backend describes (index in range, access inside the
//! region and at most [`crate::protocol::MAX_DATA_XFER`] bytes, eventfd count equal to the
//! vector count), so a backend sees only well-formed requests, but values inside them (what
//! is written, which DMA ranges) are still the client's and must be treated as untrusted.

use std::fs::File;

use crate::dma_map::DmaMapping;
use crate::protocol::Result;

/// One region as the client sees it (`DEVICE_GET_REGION_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionDescription {
    /// Size in bytes; 0 for a region the device does not implement.
    pub size: u64,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
}

/// One interrupt index as the client sees it (`DEVICE_GET_IRQ_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqDescription {
    /// Vectors; 0 for an index the device does not implement.
    pub count: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
}

/// A `DEVICE_SET_IRQS` request, checked by the server.
#[derive(Debug)]
pub struct IrqRequest {
    /// Interrupt index (`VFIO_PCI_*_IRQ_INDEX`).
    pub index: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// First vector.
    pub start: u32,
    /// Vectors.
    pub count: u32,
    /// One eventfd per vector for `VFIO_IRQ_SET_DATA_EVENTFD`, or none to disconnect the
    /// vectors; empty for the other data types.
    pub eventfds: Vec<File>,
}

/// A device model behind a vfio-user socket, in the shape of a VFIO PCI device: regions
/// indexed as `VFIO_PCI_*_REGION_INDEX` (BARs 0 to 5, ROM, configuration space, VGA) and
/// interrupt indexes as `VFIO_PCI_*_IRQ_INDEX`.
pub trait DeviceBackend {
    /// Every region, by index (the server reports `len()` regions).
    fn regions(&self) -> Vec<RegionDescription>;

    /// Every interrupt index, by index.
    fn irqs(&self) -> Vec<IrqDescription>;

    /// Reads `data.len()` bytes at `offset` of region `region`.
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()>;

    /// Writes `data` at `offset` of region `region`.
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()>;

    /// The client shares a range of its memory for DMA.
    fn dma_map(&mut self, mapping: DmaMapping) -> Result<()>;

    /// The client takes back the ranges inside `address..address + size` (every range when
    /// `None`). The device must not touch them after this returns.
    fn dma_unmap(&mut self, range: Option<(u64, u64)>) -> Result<()>;

    /// Sets up, triggers or tears down interrupt signalling.
    fn set_irqs(&mut self, request: IrqRequest) -> Result<()>;

    /// Resets the device.
    fn reset(&mut self) -> Result<()>;

    /// The client went away: drop its memory and eventfds, reset, be ready for the next.
    fn disconnected(&mut self) {
        let _ = self.dma_unmap(None);
        let _ = self.reset();
    }
}
