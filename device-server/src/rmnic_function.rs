//! The rmnic device model as a vfio-user backend: the same [`RmnicDevice`] rmnic-vmm hosts
//! (engine, TLB, fault ring, invalidation queue, event log, fault-injection hooks), with its
//! guest memory made of the client's DMA ranges and its MSI-X vectors signalled through the
//! client's eventfds.
//!
//! MSI-X belongs to the host here, as it does under Linux's vfio-pci: the client (QEMU)
//! emulates the MSI-X table and capability the guest sees and hands one eventfd per vector
//! with `DEVICE_SET_IRQS`; this backend then programs the device's own table (message data =
//! vector number, unmasked) and enables MSI-X, so every vector the device raises reaches its
//! eventfd. Client writes to the MSI-X capability's control word and to the table and PBA
//! are dropped, as vfio-pci drops them, so they cannot undo that.

use std::sync::Arc;

use rmnic_device::pci::msix::{MSIX_CAPABILITY_ID, MSIX_CONTROL_ENABLE};
use rmnic_device::pci::{find_capability, PciDevice};
use rmnic_device::{
    RmnicConfig, RmnicDevice, BAR0_INDEX, BAR0_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
    RMNIC_MSIX_VECTORS,
};
use tracing::debug;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

use crate::backend::{DeviceBackend, IrqDescription, IrqRequest, RegionDescription};
use crate::dma_map::{DmaMapping, DmaMappings};
use crate::interrupts::EventfdSink;
use crate::protocol::{ProtocolError, Result};

/// Bytes of PCI configuration space the device implements.
pub const CONFIG_SPACE_SIZE: u64 = 256;

/// Bytes of one MSI-X table entry.
const MSIX_ENTRY_SIZE: u64 = 16;
/// Message address programmed into the device's table: the x86 LAPIC window. The client
/// never sees it; only the vector number in the data matters.
const MSIX_HOST_ADDRESS: u32 = 0xfee0_0000;

/// The rmnic device behind a vfio-user socket.
pub struct RmnicFunction {
    device: RmnicDevice,
    maps: DmaMappings,
    sink: Arc<EventfdSink>,
    /// Configuration register (dword index) holding the MSI-X capability's first dword.
    msix_reg: usize,
    /// The client's eventfd for uncorrectable-error reports (`VFIO_PCI_ERR_IRQ_INDEX`). The
    /// rmnic function reports its errors in `REG_DEV_ERROR` and the error vector, never
    /// through PCI error recovery, so it is kept (QEMU warns when the index has no vector)
    /// and never signalled.
    err_eventfd: Option<std::fs::File>,
}

impl RmnicFunction {
    /// A read-only view of the device, for a control API.
    pub fn inspector(&self) -> rmnic_device::inspect::DeviceInspector {
        self.device.inspector()
    }

    /// A device in reset state built from `config`, with no memory and no eventfds yet.
    pub fn new(config: RmnicConfig) -> std::result::Result<Self, rmnic_device::BuildError> {
        let sink = Arc::new(EventfdSink::new(RMNIC_MSIX_VECTORS));
        let device = RmnicDevice::with_memory(rmnic_device::GuestRam::new(), config, sink.clone())?;
        let mut function = Self {
            device,
            maps: DmaMappings::new(),
            sink,
            msix_reg: 0,
            err_eventfd: None,
        };
        let device = &mut function.device;
        function.msix_reg =
            find_capability(|reg| device.read_config_register(reg), MSIX_CAPABILITY_ID)
                .expect("the rmnic function has an MSI-X capability");
        Ok(function)
    }

    /// The device model (for the oracle, traces and tests).
    pub fn device(&self) -> &RmnicDevice {
        &self.device
    }

    /// The device model, mutable.
    pub fn device_mut(&mut self) -> &mut RmnicDevice {
        &mut self.device
    }

    /// Number of DMA ranges the client has mapped.
    pub fn dma_ranges(&self) -> usize {
        self.maps.len()
    }

    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            // CAST: at < CONFIG_SPACE_SIZE (checked by the server).
            let reg = self.device.read_config_register((at / 4) as usize);
            *byte = reg.to_le_bytes()[(at % 4) as usize];
        }
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) {
        // Split into pieces the device takes: 1, 2 or 4 bytes inside one dword.
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let in_dword = (at % 4) as usize;
            let mut len = (4 - in_dword).min(rest.len());
            if len == 3 {
                len = 2;
            }
            if !in_dword.is_multiple_of(len) {
                len = 1;
            }
            // CAST: at < CONFIG_SPACE_SIZE.
            let reg = (at / 4) as usize;
            if reg == self.msix_reg {
                debug!("dropped a client write to the MSI-X capability header/control");
            } else {
                self.device
                    .write_config_register(reg, in_dword as u64, &rest[..len]);
            }
            at += len as u64;
            rest = &rest[len..];
        }
    }

    fn bar_access_is_msix(offset: u64, len: u64) -> bool {
        let table =
            MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + u64::from(RMNIC_MSIX_VECTORS) * MSIX_ENTRY_SIZE;
        let pba = MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + 8;
        let end = offset + len;
        let overlaps = |r: &std::ops::Range<u64>| offset < r.end && r.start < end;
        overlaps(&table) || overlaps(&pba)
    }

    /// Programs table entry `vector` of the device: message data = vector, masked or not.
    fn program_vector(&self, vector: u16, masked: bool) {
        let mut entry = [0u8; 16];
        entry[0..4].copy_from_slice(&MSIX_HOST_ADDRESS.to_le_bytes());
        entry[8..12].copy_from_slice(&u32::from(vector).to_le_bytes());
        entry[12..16].copy_from_slice(&u32::from(masked).to_le_bytes());
        let mut msix = self.device.msix();
        for (i, dword) in entry.chunks(4).enumerate() {
            let offset = u64::from(vector) * MSIX_ENTRY_SIZE + 4 * i as u64;
            // The offset is inside the table: vector < RMNIC_MSIX_VECTORS.
            let _ = msix.write_table(offset, dword);
        }
    }

    fn set_msix(&mut self, request: IrqRequest) -> Result<()> {
        let data = request.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = request.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if action != VFIO_IRQ_SET_ACTION_TRIGGER {
            return Err(ProtocolError::device(
                libc::EINVAL,
                "MSI-X vectors cannot be masked through DEVICE_SET_IRQS (as with vfio-pci)",
            ));
        }
        let start = request.start as usize;
        let count = request.count as usize;
        match data {
            VFIO_IRQ_SET_DATA_NONE if count == 0 => {
                self.sink.disconnect_all();
                for v in 0..RMNIC_MSIX_VECTORS {
                    self.program_vector(v, true);
                }
                self.device.msix().set_control(0);
            }
            VFIO_IRQ_SET_DATA_NONE => {
                // Loopback trigger: signal the vectors now.
                for v in start..start + count {
                    self.sink.signal(v);
                }
            }
            VFIO_IRQ_SET_DATA_EVENTFD if request.eventfds.is_empty() => {
                self.sink.disconnect(start, count);
                for v in start..start + count {
                    // CAST: v < RMNIC_MSIX_VECTORS (checked by the server).
                    self.program_vector(v as u16, true);
                }
            }
            VFIO_IRQ_SET_DATA_EVENTFD => {
                self.sink.connect(start, request.eventfds);
                for v in start..start + count {
                    // CAST: v < RMNIC_MSIX_VECTORS (checked by the server).
                    self.program_vector(v as u16, false);
                }
                self.device.msix().set_control(MSIX_CONTROL_ENABLE);
            }
            _ => {
                return Err(ProtocolError::device(
                    libc::ENOTSUP,
                    format!("DEVICE_SET_IRQS data type {data:#x}"),
                ))
            }
        }
        Ok(())
    }

    fn update_memory(&mut self) -> Result<()> {
        let ram = self.maps.guest_ram()?;
        self.device.set_memory(ram);
        Ok(())
    }
}

impl DeviceBackend for RmnicFunction {
    fn regions(&self) -> Vec<RegionDescription> {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| match index {
                i if i == u32::from(BAR0_INDEX) => RegionDescription {
                    size: BAR0_SIZE,
                    flags: rw,
                },
                VFIO_PCI_CONFIG_REGION_INDEX => RegionDescription {
                    size: CONFIG_SPACE_SIZE,
                    flags: rw,
                },
                _ => RegionDescription { size: 0, flags: 0 },
            })
            .collect()
    }

    fn irqs(&self) -> Vec<IrqDescription> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| match index {
                VFIO_PCI_MSIX_IRQ_INDEX => IrqDescription {
                    count: u32::from(RMNIC_MSIX_VECTORS),
                    flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
                },
                VFIO_PCI_ERR_IRQ_INDEX => IrqDescription {
                    count: 1,
                    flags: VFIO_IRQ_INFO_EVENTFD,
                },
                _ => IrqDescription { count: 0, flags: 0 },
            })
            .collect()
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_read(offset, data),
            r if r == u32::from(BAR0_INDEX) => {
                for (i, chunk) in data.chunks_mut(8).enumerate() {
                    self.device
                        .read_bar(BAR0_INDEX, offset + 8 * i as u64, chunk);
                }
            }
            _ => data.fill(0xff),
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_write(offset, data),
            r if r == u32::from(BAR0_INDEX) => {
                if Self::bar_access_is_msix(offset, data.len() as u64) {
                    debug!(offset, "dropped a client write to the MSI-X table or PBA");
                    return Ok(());
                }
                for (i, chunk) in data.chunks(8).enumerate() {
                    self.device
                        .write_bar(BAR0_INDEX, offset + 8 * i as u64, chunk);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dma_map(&mut self, mapping: DmaMapping) -> Result<()> {
        if mapping.file.is_none() {
            debug!(
                address = mapping.address,
                size = mapping.size,
                "DMA range without a file descriptor: the device cannot reach it"
            );
        }
        self.maps.map(mapping)?;
        self.update_memory()
    }

    fn dma_unmap(&mut self, range: Option<(u64, u64)>) -> Result<()> {
        match range {
            None => self.maps.clear(),
            Some((address, size)) => {
                self.maps.unmap(address, size)?;
            }
        }
        self.update_memory()
    }

    fn set_irqs(&mut self, request: IrqRequest) -> Result<()> {
        if request.index == VFIO_PCI_MSIX_IRQ_INDEX {
            return self.set_msix(request);
        }
        if request.index == VFIO_PCI_ERR_IRQ_INDEX {
            self.err_eventfd = request.eventfds.into_iter().next();
            return Ok(());
        }
        // The other indexes have no vectors: only "disable everything" is meaningful.
        if request.count == 0 {
            return Ok(());
        }
        Err(ProtocolError::device(
            libc::EINVAL,
            format!("interrupt index {} has no vectors", request.index),
        ))
    }

    fn reset(&mut self) -> Result<()> {
        self.sink.disconnect_all();
        self.err_eventfd = None;
        self.device.reset();
        Ok(())
    }
}
