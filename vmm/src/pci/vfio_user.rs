//! A PCI function whose device model runs in another process, reached over vfio-user
//! (`rmnic-vmm --device vfio-user:SOCKET`): `rmnic-device-server`, or any other vfio-user
//! server (an RTL co-simulation, say).
//!
//! This side plays the part QEMU's `vfio-user-pci` plays: it forwards configuration space and
//! BAR accesses to the server, but emulates what belongs to the host itself:
//! - the BAR registers (sizing and placement; the server only ever sees BAR offsets);
//! - the MSI-X capability's control word, table and PBA, with the device crate's [`Msix`]
//!   building block and the VMM's usual [`MsiSink`]. The server signals one eventfd per
//!   vector, a thread here raises the vector in the local [`Msix`], which applies the guest's
//!   masking and routes the message through KVM like the in-process device's.
//!
//! Guest RAM is shared with the server once, at attach (`DMA_MAP` of the memfd behind every
//! RAM region): the server then reaches guest memory directly.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rmnic_device::interrupt::MsiSink;
use rmnic_device::pci::msix::{
    Msix, MSIX_CAPABILITY_ID, MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK,
    MSIX_CONTROL_TABLE_SIZE_MASK,
};
use rmnic_device::pci::{find_capability, BarRegion, PciDevice};
use rmnic_device_server::client::{Client, ClientError};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// Why an out-of-process function could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum VfioUserError {
    /// Talking to the server failed.
    #[error("vfio-user device at {socket}: {source}")]
    Client {
        /// The socket.
        socket: String,
        /// What failed.
        #[source]
        source: ClientError,
    },
    /// The server describes something this VMM cannot host.
    #[error("vfio-user device at {socket}: {reason}")]
    Unsupported {
        /// The socket.
        socket: String,
        /// What is missing.
        reason: String,
    },
    /// Setting up the interrupt eventfds or their thread failed.
    #[error("vfio-user device interrupts: {0}")]
    Interrupts(#[source] std::io::Error),
}

/// BAR register type bits of a 64-bit memory BAR.
const BAR_MEM64: u32 = 0b100;
/// Most eventfds one `SET_IRQS` message carries.
const FDS_PER_MESSAGE: usize = 16;
/// Bytes of one MSI-X table entry.
const MSIX_ENTRY_SIZE: u64 = 16;

/// The out-of-process PCI function.
pub struct VfioUserFunction {
    client: Client,
    socket: String,
    /// BAR0's size (a power of two); BAR0 is a 64-bit memory BAR (BAR1 its high half).
    bar0_size: u64,
    /// BAR0 and BAR1 as the guest or firmware programmed them.
    bar_registers: [u32; 2],
    /// Whether the command register enables memory decoding (forwarded, and kept here).
    memory_enabled: bool,
    /// Dword index of the MSI-X capability's first register.
    msix_reg: usize,
    /// That register as the server reports it (capability ID, next pointer, table size).
    msix_header: u32,
    /// The guest's enable and function-mask bits.
    msix_control: u16,
    /// BAR0 offsets of the MSI-X table and PBA.
    table_offset: u64,
    pba_offset: u64,
    /// The MSI-X state the guest sees.
    msix: Arc<Mutex<Msix>>,
    /// Relays the server's eventfds into `msix`.
    relay: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
}

impl VfioUserFunction {
    /// Connects to the server at `socket`, shares `memory` with it and sets up its MSI-X
    /// vectors to be delivered through `sink`.
    pub fn attach(
        socket: &Path,
        memory: &GuestMemory,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, VfioUserError> {
        let name = socket.display().to_string();
        let client_err = |source| VfioUserError::Client {
            socket: name.clone(),
            source,
        };
        let unsupported = |reason: String| VfioUserError::Unsupported {
            socket: name.clone(),
            reason,
        };
        let mut client = Client::connect(socket).map_err(client_err)?;
        let info = client.device_info().map_err(client_err)?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 || info.num_regions <= 7 || info.num_irqs <= 2 {
            return Err(unsupported(format!(
                "not a PCI device (flags {:#x}, {} regions, {} interrupt indexes)",
                info.flags, info.num_regions, info.num_irqs
            )));
        }
        let bar0_size = client.region_info(0).map_err(client_err)?.size;
        // BAR0 is emulated here as a 64-bit BAR whose size mask fits its low register.
        if !bar0_size.is_power_of_two() || !(4096..=1 << 31).contains(&bar0_size) {
            return Err(unsupported(format!("BAR0 of {bar0_size:#x} bytes")));
        }
        let config_size = client
            .region_info(VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(client_err)?
            .size;
        if config_size < 256 {
            return Err(unsupported(format!(
                "configuration space of {config_size} bytes"
            )));
        }

        // Guest RAM for the device's DMA: every region's part of the memfd.
        for region in memory.iter() {
            let Some(file_offset) = region.file_offset() else {
                return Err(unsupported(
                    "guest RAM is not file-backed, so it cannot be shared".into(),
                ));
            };
            client
                .dma_map(
                    file_offset.file().as_raw_fd(),
                    file_offset.start(),
                    region.start_addr().0,
                    region.len(),
                )
                .map_err(client_err)?;
        }

        // The MSI-X capability: where the table and PBA are, how many vectors.
        let mut config = [0u8; 256];
        client
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut config)
            .map_err(client_err)?;
        let dword = |reg: usize| {
            u32::from_le_bytes([
                config[reg * 4],
                config[reg * 4 + 1],
                config[reg * 4 + 2],
                config[reg * 4 + 3],
            ])
        };
        let msix_reg = find_capability(dword, MSIX_CAPABILITY_ID)
            // The capability is 12 bytes: it must end inside the 256 read.
            .filter(|reg| reg * 4 + 12 <= config.len())
            .ok_or_else(|| unsupported("no MSI-X capability".into()))?;
        let msix_header = dword(msix_reg);
        // CAST: message control is the high half.
        let vectors = ((msix_header >> 16) as u16 & MSIX_CONTROL_TABLE_SIZE_MASK) + 1;
        let table = dword(msix_reg + 1);
        let pba = dword(msix_reg + 2);
        if table & 0x7 != 0 || pba & 0x7 != 0 {
            return Err(unsupported(
                "the MSI-X table and PBA must be in BAR0".into(),
            ));
        }
        let table_offset = u64::from(table & !0x7);
        let pba_offset = u64::from(pba & !0x7);
        let msix = Msix::new(vectors, sink).map_err(|e| unsupported(e.to_string()))?;
        let msix = Arc::new(Mutex::new(msix));

        let eventfds = (0..vectors)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VfioUserError::Interrupts)?;
        let raw: Vec<RawFd> = eventfds.iter().map(AsRawFd::as_raw_fd).collect();
        for (i, chunk) in raw.chunks(FDS_PER_MESSAGE).enumerate() {
            // CAST: at most 2048 vectors.
            let start = (i * FDS_PER_MESSAGE) as u32;
            client
                .set_irqs(
                    VFIO_PCI_MSIX_IRQ_INDEX,
                    VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                    start,
                    chunk.len() as u32,
                    chunk,
                )
                .map_err(client_err)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VfioUserError::Interrupts)?);
        let relay = spawn_relay(eventfds, msix.clone(), stop.clone(), wake.clone())
            .map_err(VfioUserError::Interrupts)?;
        tracing::info!(socket = %name, bar0_size, vectors, "vfio-user device attached");
        Ok(Self {
            client,
            socket: name,
            bar0_size,
            bar_registers: [BAR_MEM64, 0],
            memory_enabled: false,
            msix_reg,
            msix_header,
            msix_control: 0,
            table_offset,
            pba_offset,
            msix,
            relay: Some(relay),
            stop,
            wake,
        })
    }

    fn msix(&self) -> MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bar0_base(&self) -> u64 {
        (u64::from(self.bar_registers[1]) << 32) | u64::from(self.bar_registers[0] & !0xf)
    }

    fn remote_config_read(&mut self, reg: usize) -> u32 {
        let mut bytes = [0u8; 4];
        // CAST: reg < 64.
        match self
            .client
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, (reg * 4) as u64, &mut bytes)
        {
            Ok(()) => u32::from_le_bytes(bytes),
            Err(e) => {
                tracing::error!(socket = %self.socket, reg, "config read failed: {e}");
                u32::MAX
            }
        }
    }

    /// Which window of BAR0 an access at `offset` falls in.
    fn window(&self, offset: u64) -> Window {
        let vectors = u64::from(self.msix().vectors());
        if (self.table_offset..self.table_offset + vectors * MSIX_ENTRY_SIZE).contains(&offset) {
            Window::Table(offset - self.table_offset)
        } else if (self.pba_offset..self.pba_offset + vectors.div_ceil(64) * 8).contains(&offset) {
            Window::Pba(offset - self.pba_offset)
        } else {
            Window::Device
        }
    }
}

enum Window {
    Table(u64),
    Pba(u64),
    Device,
}

impl PciDevice for VfioUserFunction {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        match reg {
            4 | 5 => self.bar_registers[reg - 4],
            6..=9 => 0,
            r if r == self.msix_reg => {
                (self.msix_header & 0x3fff_ffff) | (u32::from(self.msix_control) << 16)
            }
            _ => self.remote_config_read(reg),
        }
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        // CAST: offset is 0..=3 (the bus splits accesses by dword).
        let at = offset as usize;
        if at + data.len() > 4 {
            return;
        }
        match reg {
            4 | 5 => {
                let mut current = self.bar_registers[reg - 4].to_le_bytes();
                current[at..at + data.len()].copy_from_slice(data);
                let written = u32::from_le_bytes(current);
                self.bar_registers[reg - 4] = if reg == 4 {
                    // CAST: BAR0 is smaller than 4 GiB.
                    (written & !((self.bar0_size - 1) as u32) & !0xf) | BAR_MEM64
                } else {
                    written
                };
            }
            6..=9 => {}
            r if r == self.msix_reg => {
                // Only the control word's enable and mask bits are the guest's to write.
                let mut dword = (u32::from(self.msix_control) << 16).to_le_bytes();
                dword[at..at + data.len()].copy_from_slice(data);
                let control = u16::from_le_bytes([dword[2], dword[3]]);
                self.msix_control = control & (MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
                let control = self.msix_control;
                self.msix().set_control(control);
            }
            _ => {
                if reg == 1 && at == 0 {
                    let command = data[0];
                    self.memory_enabled = command & 0x2 != 0;
                    self.msix().set_bus_master(command & 0x4 != 0);
                }
                // CAST: reg < 64.
                if let Err(e) = self.client.region_write(
                    VFIO_PCI_CONFIG_REGION_INDEX,
                    (reg * 4) as u64 + offset,
                    data,
                ) {
                    tracing::error!(socket = %self.socket, reg, "config write failed: {e}");
                }
            }
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != 0
            || offset
                .checked_add(data.len() as u64)
                .is_none_or(|e| e > self.bar0_size)
        {
            data.fill(0xff);
            return;
        }
        let result = match self.window(offset) {
            Window::Table(at) => self.msix().read_table(at, data).map_err(|e| e.to_string()),
            Window::Pba(at) => self.msix().read_pba(at, data).map_err(|e| e.to_string()),
            Window::Device => self
                .client
                .region_read(0, offset, data)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            data.fill(0xff);
            tracing::warn!(socket = %self.socket, offset, "BAR0 read failed: {e}");
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0
            || offset
                .checked_add(data.len() as u64)
                .is_none_or(|e| e > self.bar0_size)
        {
            return;
        }
        let result = match self.window(offset) {
            Window::Table(at) => self.msix().write_table(at, data).map_err(|e| e.to_string()),
            Window::Pba(_) => Ok(()),
            Window::Device => self
                .client
                .region_write(0, offset, data)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(socket = %self.socket, offset, "BAR0 write failed: {e}");
        }
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        if !self.memory_enabled || self.bar0_base() == 0 {
            return Vec::new();
        }
        vec![BarRegion {
            index: 0,
            base: self.bar0_base(),
            size: self.bar0_size,
        }]
    }
}

impl Drop for VfioUserFunction {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
    }
}

/// Waits on the server's eventfds and raises each signalled vector in `msix`.
fn spawn_relay(
    eventfds: Vec<EventFd>,
    msix: Arc<Mutex<Msix>>,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
) -> std::io::Result<JoinHandle<()>> {
    let epoll = Epoll::new()?;
    for (vector, fd) in eventfds.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, vector as u64),
        )?;
    }
    let wake_token = eventfds.len() as u64;
    epoll.ctl(
        ControlOperation::Add,
        wake.as_raw_fd(),
        EpollEvent::new(EventSet::IN, wake_token),
    )?;
    std::thread::Builder::new()
        .name("vfio-user-irq".into())
        .spawn(move || {
            let mut events = vec![EpollEvent::default(); eventfds.len() + 1];
            while !stop.load(Ordering::Acquire) {
                let ready = match epoll.wait(1000, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("vfio-user interrupt relay: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                for event in &events[..ready] {
                    let token = event.data();
                    let Some(fd) = eventfds.get(token as usize) else {
                        continue;
                    };
                    if fd.read().is_ok() {
                        // CAST: token < vectors <= 2048.
                        let vector = token as u16;
                        let delivery = msix.lock().unwrap_or_else(|e| e.into_inner()).raise(vector);
                        if let Err(e) = delivery {
                            tracing::warn!(vector, "vfio-user vector: {e}");
                        }
                    }
                }
            }
        })
}
