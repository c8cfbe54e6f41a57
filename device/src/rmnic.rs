//! The rmnic PCI function: identity, BAR0 (global registers, MSI-X table and PBA, context
//! register blocks) and MSI-X, behind the [`PciDevice`] seam; the device's engine runs on
//! worker threads the function owns.
//!
//! Guest-facing paths never panic: a refused access reads all ones or drops the write, is
//! counted in [`RmnicDevice::access_errors`], and is logged (at `warn` when the count reaches
//! a power of two, at `debug` otherwise, so a misbehaving guest cannot flood the log).

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;

use thiserror::Error;
use tracing::{debug, warn};

use crate::control::Window;
use crate::engine::dma::GuestRam;
use crate::engine::{lock, run_worker, Shared};
use crate::events::{EventLog, EVENT_DEFAULT, EVENT_LOG_DEFAULT_CAPACITY};
use crate::inject::{FaultInjector, NoFaults};
use crate::interrupt::MsiSink;
use crate::mmio::{self, MmioError, MmioWidth};
use crate::pci::configuration::{
    BarConfig, BarKind, ConfigurationError, ConfigurationSpace, PciIdentity, COMMAND_OFFSET,
};
use crate::pci::msix::{Delivery, Msix, MsixCapability, MsixError, MSIX_CAPABILITY_ID};
use crate::pci::{BarRegion, Doorbell, PciDevice};
use crate::regs::{
    RegisterError, BAR0_INDEX, BAR0_SIZE, CQ_DOORBELL, CTX_BLOCK_BASE, CTX_BLOCK_SIZE,
    MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, MSIX_WINDOW_SIZE, NUM_CONTEXTS, REGISTER_WINDOW_SIZE,
    UQ_DOORBELL_BASE, UQ_DOORBELL_STRIDE,
};
use crate::segments::{EXPORT_ENTRY_SIZE, EXPORT_TABLE_BASE, NUM_EXPORTS};
use crate::stats::{ContextCounter, GlobalCounter};
use crate::tlb::{DeviceTlb, TlbEntry, TlbGeometry};

/// PCI vendor ID of rmnic. Experimental: NOT assigned to this project by PCI-SIG (it sits in
/// a range no member holds today); to be replaced by an assigned ID before any silicon.
pub const RMNIC_VENDOR_ID: u16 = 0xf1e0;
/// PCI device ID of rmnic. Experimental, like [`RMNIC_VENDOR_ID`].
pub const RMNIC_DEVICE_ID: u16 = 0x0001;
/// PCI revision ID.
pub const RMNIC_REVISION_ID: u8 = 1;
/// PCI base class: network controller.
pub const RMNIC_CLASS_CODE: u8 = 0x02;
/// PCI sub-class: other network controller.
pub const RMNIC_SUBCLASS: u8 = 0x80;
/// PCI programming interface: none defined.
pub const RMNIC_PROG_IF: u8 = 0x00;

/// Number of MSI-X vectors.
pub const RMNIC_MSIX_VECTORS: u16 = 4;
/// MSI-X vector: a fault record was written to the fault ring.
pub const VECTOR_FAULT: u16 = 0;
/// MSI-X vector: a command that asked for it completed.
pub const VECTOR_COMPLETION: u16 = 1;
/// MSI-X vector: an invalidation descriptor that asked for it completed.
pub const VECTOR_INVALIDATION: u16 = 2;
/// MSI-X vector: a context or the device entered an error state.
pub const VECTOR_ERROR: u16 = 3;

// The table and PBA fit their BAR0 windows.
const _: () = assert!(
    RMNIC_MSIX_VECTORS as u64 * crate::pci::msix::MSIX_ENTRY_SIZE <= MSIX_WINDOW_SIZE
        && (RMNIC_MSIX_VECTORS as u64).div_ceil(64) * 8 <= MSIX_WINDOW_SIZE
);

/// The configuration-space identity of rmnic.
pub const RMNIC_IDENTITY: PciIdentity = PciIdentity {
    vendor_id: RMNIC_VENDOR_ID,
    device_id: RMNIC_DEVICE_ID,
    revision_id: RMNIC_REVISION_ID,
    class_code: RMNIC_CLASS_CODE,
    subclass: RMNIC_SUBCLASS,
    prog_if: RMNIC_PROG_IF,
    subsystem_vendor_id: RMNIC_VENDOR_ID,
    subsystem_id: RMNIC_DEVICE_ID,
    // MSI-X only: no INTx pin.
    interrupt_pin: 0,
};

/// Default number of worker threads.
pub const DEFAULT_WORKERS: usize = 2;
/// Most worker threads a device may have.
pub const MAX_WORKERS: usize = 16;

/// How the VMM builds the device: fixed for the device's life.
#[derive(Clone, Debug)]
pub struct RmnicConfig {
    /// Shape of the device TLB (reported in `REG_TLB_GEOMETRY`).
    pub tlb: TlbGeometry,
    /// Worker threads executing commands and invalidations (1..=16).
    pub workers: usize,
    /// Capacity of the event log.
    pub event_log_capacity: usize,
    /// Event classes logged (`events::EVENT_*`).
    pub event_mask: u32,
    /// Oracle and fault-injection hooks.
    pub injector: Arc<dyn FaultInjector>,
}

impl Default for RmnicConfig {
    fn default() -> Self {
        Self {
            tlb: TlbGeometry::default(),
            workers: DEFAULT_WORKERS,
            event_log_capacity: EVENT_LOG_DEFAULT_CAPACITY,
            event_mask: EVENT_DEFAULT,
            injector: Arc::new(NoFaults),
        }
    }
}

/// Why the device could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The worker count is outside 1..=MAX_WORKERS.
    #[error("A device cannot have {workers} worker threads: 1..={MAX_WORKERS} are allowed")]
    BadWorkerCount {
        /// The count asked for.
        workers: usize,
    },
    /// A worker thread could not be started.
    #[error("Cannot start an rmnic worker thread")]
    Spawn(#[source] std::io::Error),
}

/// A guest access the function refuses.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum RmnicError {
    /// Refused by the configuration space.
    #[error(transparent)]
    Configuration(#[from] ConfigurationError),
    /// Refused by a register window.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// Refused by the MSI-X table or PBA.
    #[error(transparent)]
    Msix(#[from] MsixError),
    /// A width or alignment BAR0 does not accept.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// An access to a BAR the function does not implement.
    #[error("Access of {len} bytes at {offset:#x} in BAR {bar}, which is not implemented")]
    BarNotImplemented {
        /// The BAR index.
        bar: u8,
        /// Offset of the access.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
    /// An access past the end of BAR0.
    #[error("Access of {len} bytes at {offset:#x} is past the end of BAR0")]
    Bar0OutOfRange {
        /// Offset of the access.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
    /// A BAR access while memory-space decoding is off.
    #[error("Access at {offset:#x} in BAR {bar} while memory decoding is disabled")]
    MemoryDecodingDisabled {
        /// The BAR index.
        bar: u8,
        /// Offset of the access.
        offset: u64,
    },
}

/// The parts of BAR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bar0Window {
    /// The global registers, at BAR0 offset 0.
    Registers,
    /// Unassigned: reads 0, ignores writes.
    Reserved,
    /// The MSI-X table; offset relative to its start.
    MsixTable(u64),
    /// The MSI-X PBA; offset relative to its start.
    MsixPba(u64),
    /// A context's register block: (context, offset in the block).
    Context(usize, u64),
    /// An export table entry: (index, offset in the entry).
    Export(usize, u64),
    /// A context's user doorbell page (since 1.5): (context, offset in the page).
    UserDoorbell(usize, u64),
}

impl Bar0Window {
    /// The window holding `offset`. Accesses are at most 8 bytes and naturally aligned, and
    /// windows 256-byte aligned, so an accepted access never straddles two windows.
    fn of(offset: u64) -> Self {
        if offset < REGISTER_WINDOW_SIZE {
            Self::Registers
        } else if let Some(relative) = offset
            .checked_sub(EXPORT_TABLE_BASE)
            // CAST: NUM_EXPORTS is 64.
            .filter(|relative| *relative < NUM_EXPORTS as u64 * EXPORT_ENTRY_SIZE)
        {
            // CAST: relative / EXPORT_ENTRY_SIZE < NUM_EXPORTS.
            Self::Export(
                (relative / EXPORT_ENTRY_SIZE) as usize,
                relative % EXPORT_ENTRY_SIZE,
            )
        } else if let Some(relative) = offset
            .checked_sub(MSIX_TABLE_OFFSET)
            .filter(|relative| *relative < MSIX_WINDOW_SIZE)
        {
            Self::MsixTable(relative)
        } else if let Some(relative) = offset
            .checked_sub(MSIX_PBA_OFFSET)
            .filter(|relative| *relative < MSIX_WINDOW_SIZE)
        {
            Self::MsixPba(relative)
        } else if let Some(relative) = offset
            .checked_sub(CTX_BLOCK_BASE)
            // CAST: NUM_CONTEXTS is 64.
            .filter(|relative| *relative < NUM_CONTEXTS as u64 * CTX_BLOCK_SIZE)
        {
            // CAST: relative / CTX_BLOCK_SIZE < NUM_CONTEXTS.
            Self::Context(
                (relative / CTX_BLOCK_SIZE) as usize,
                relative % CTX_BLOCK_SIZE,
            )
        } else if let Some(relative) = offset
            .checked_sub(UQ_DOORBELL_BASE)
            // CAST: NUM_CONTEXTS is 64.
            .filter(|relative| *relative < NUM_CONTEXTS as u64 * UQ_DOORBELL_STRIDE)
        {
            // CAST: relative / UQ_DOORBELL_STRIDE < NUM_CONTEXTS.
            Self::UserDoorbell(
                (relative / UQ_DOORBELL_STRIDE) as usize,
                relative % UQ_DOORBELL_STRIDE,
            )
        } else {
            Self::Reserved
        }
    }
}

/// A device's fabric side, as the host's link threads reach it (spec §20): cheap to clone,
/// usable from any thread.
#[derive(Clone, Debug)]
pub struct FabricEndpoint(Arc<Shared>);

impl FabricEndpoint {
    /// Answers a message the fabric's other node `peer` sent (a request, an invalidation, a
    /// revocation); None when it needs no answer. May block: a `Translate` that misses waits
    /// for this device's driver (at most 4 s), so the host must not call it on the
    /// thread that delivers replies to this device's own requests.
    pub fn serve(
        &self,
        peer: rmnic_fabric::protocol::NodeId,
        message: rmnic_fabric::protocol::Message,
    ) -> Option<rmnic_fabric::protocol::Message> {
        use rmnic_fabric::protocol::Message;
        match message {
            Message::Invalidate { .. } | Message::Revoke { .. } => {
                self.0.serve_as_importer(peer, message)
            }
            other => self.0.serve_as_exporter(peer, other),
        }
    }

    /// The link to `peer` went down: as exporter, a peer still attached is fenced (its grants
    /// go, every later request of it is refused); as importer, the remote TLB is emptied and
    /// every remote attachment becomes invalid (commands on it complete SEGMENT_INVALID); the
    /// port is disconnected. Returns whether the peer was fenced.
    pub fn link_lost(&self, peer: rmnic_fabric::protocol::NodeId) -> bool {
        let shared = &self.0;
        shared.fabric.set_port(None);
        let attached = shared.fabric.exporter_read().grants.is_attached(peer);
        if attached {
            shared.fence(peer);
        }
        shared.fabric.remote_tlb().clear();
        shared.segments_write().revoke_all_remote();
        attached
    }

    /// Whether `peer` holds an attachment to one of this device's exports (inspection).
    pub fn peer_attached(&self, peer: rmnic_fabric::protocol::NodeId) -> bool {
        self.0.fabric.exporter_read().grants.is_attached(peer)
    }

    /// Cached grants of the other node (for tests and inspection).
    pub fn remote_tlb_entries(&self) -> usize {
        self.0.fabric.remote_tlb().len()
    }

    /// The node at the other end of the link, while linked.
    pub fn peer(&self) -> Option<rmnic_fabric::protocol::NodeId> {
        self.0.fabric.port().map(|port| port.peer())
    }

    /// The node of the last link connected, even after it was lost.
    pub fn linked_peer(&self) -> Option<rmnic_fabric::protocol::NodeId> {
        self.0.fabric.linked_peer()
    }

    /// Connects the link (None disconnects): what [`RmnicDevice::connect_fabric`] does, from
    /// the host's link thread.
    pub fn connect(&self, port: Option<Arc<dyn crate::fabric::FabricPort>>) {
        self.0.fabric.set_port(port);
    }

    /// What the fabric did since the device was created (not cleared by resets).
    pub fn totals(&self) -> crate::fabric::FabricCounts {
        self.0.fabric.totals.snapshot()
    }
}

/// The rmnic PCI function.
///
/// Dropping it stops and joins its worker threads (after the step each is in, at most one
/// access).
#[derive(Debug)]
pub struct RmnicDevice {
    /// Configuration space: identity, BAR0, the MSI-X capability.
    config: ConfigurationSpace,
    /// Configuration register holding MSI-X message control (in its high half).
    msix_control_reg: usize,
    /// State shared with the worker threads.
    shared: Arc<Shared>,
    /// The worker threads.
    workers: Vec<JoinHandle<()>>,
}

impl RmnicDevice {
    /// A function in reset state that raises interrupts through `msi`, with no guest RAM
    /// (every DMA fails: commands complete with DEVICE_ERROR, ring configurations are
    /// refused) and the default [`RmnicConfig`]. BAR0 is at address 0 until the guest or
    /// [`set_bar_address`](Self::set_bar_address) places it.
    ///
    /// # Panics
    ///
    /// If the operating system refuses to start the worker threads.
    pub fn new(msi: Arc<dyn MsiSink>) -> Self {
        // The configuration is the default one; only thread creation can fail.
        Self::with_memory(GuestRam::new(), RmnicConfig::default(), msi)
            .expect("the host can start the rmnic worker threads")
    }

    /// A function in reset state that reaches guest RAM through `memory` (the VMM's guest
    /// memory; the device accesses nothing outside it) and raises interrupts through `msi`.
    pub fn with_memory(
        memory: GuestRam,
        config: RmnicConfig,
        msi: Arc<dyn MsiSink>,
    ) -> Result<Self, BuildError> {
        if !(1..=MAX_WORKERS).contains(&config.workers) {
            return Err(BuildError::BadWorkerCount {
                workers: config.workers,
            });
        }
        let mut space = ConfigurationSpace::new(RMNIC_IDENTITY);
        // The layout is constant; `constructing_the_device_succeeds` runs these paths.
        space
            .add_bar(BarConfig {
                index: BAR0_INDEX,
                size: BAR0_SIZE,
                kind: BarKind::Memory64,
                prefetchable: false,
            })
            .expect("BAR0 layout is valid");
        let capability = MsixCapability {
            vectors: RMNIC_MSIX_VECTORS,
            table_bar: BAR0_INDEX,
            // CAST: both offsets are below BAR0_SIZE (512 KiB), checked at compile time.
            table_offset: MSIX_TABLE_OFFSET as u32,
            pba_bar: BAR0_INDEX,
            pba_offset: MSIX_PBA_OFFSET as u32,
        };
        let msix_offset = space
            .add_capability(
                MSIX_CAPABILITY_ID,
                &capability.registers(),
                &MsixCapability::writable_bits(),
            )
            .expect("MSI-X capability fits an empty capability space");
        let msix = Msix::new(RMNIC_MSIX_VECTORS, msi).expect("vector count is in 1..=2048");
        let events = Arc::new(EventLog::new(config.event_log_capacity, config.event_mask));
        let shared = Arc::new(Shared::new(
            memory,
            DeviceTlb::new(config.tlb),
            msix,
            events,
            config.injector,
        ));
        let mut device = Self {
            config: space,
            msix_control_reg: msix_offset / 4,
            shared,
            workers: Vec::with_capacity(config.workers),
        };
        for i in 0..config.workers {
            let shared = device.shared.clone();
            let worker = std::thread::Builder::new()
                .name(format!("rmnic-worker-{i}"))
                .spawn(move || {
                    // CAST: i < MAX_WORKERS (16).
                    crate::events::set_worker_thread(i as u8);
                    run_worker(shared)
                })
                // Dropping `device` stops the workers already started.
                .map_err(BuildError::Spawn)?;
            device.workers.push(worker);
        }
        Ok(device)
    }

    /// Returns the function to its power-on state: decoders off, BAR0 at 0, MSI-X disabled
    /// with every vector masked and no pending bits, the device reset as by
    /// `REG_DEV_CONTROL.RESET`. The VMM standing in for firmware places BAR0 again afterwards.
    pub fn reset(&mut self) {
        self.config.reset();
        lock(&self.shared.msix).reset();
        self.shared.function_reset();
    }

    /// Replaces the guest memory the device reaches (a vfio-user server does as its client
    /// maps and unmaps DMA regions). Returns once no device access through the old map is
    /// left, so the caller may then let the old memory go.
    pub fn set_memory(&self, memory: GuestRam) {
        self.shared.set_memory(memory);
    }

    /// The guest memory the device reaches now.
    pub fn memory(&self) -> Arc<GuestRam> {
        self.shared.memory()
    }

    /// Raises `vector` (one of the `VECTOR_*` constants) as the MSI-X state allows.
    pub fn raise(&mut self, vector: u16) -> Result<Delivery, MsixError> {
        lock(&self.shared.msix).raise(vector)
    }

    /// Places BAR `index` at `address`, as firmware would before the guest boots.
    pub fn set_bar_address(&mut self, index: u8, address: u64) -> Result<(), ConfigurationError> {
        self.config.set_bar_address(index, address)
    }

    /// Every BAR the function implements, at its address, whether decoding is on or not.
    pub fn bars(&self) -> Vec<BarRegion> {
        self.config.bars()
    }

    /// Guest accesses refused since construction.
    pub fn access_errors(&self) -> u64 {
        self.shared.access_errors.load(Ordering::Relaxed)
    }

    /// The configuration space, for inspection.
    pub fn configuration(&self) -> &ConfigurationSpace {
        &self.config
    }

    /// The MSI-X state, for inspection. Hold the guard briefly: the workers raise
    /// interrupts through it.
    pub fn msix(&self) -> MutexGuard<'_, Msix> {
        lock(&self.shared.msix)
    }

    /// The value a 32-bit guest read of BAR0 `offset` in the register window or a context
    /// block would return, without the decoding checks (for the VMM and tests).
    pub fn register(&self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        let result = match Bar0Window::of(offset) {
            Bar0Window::Registers => self.shared.read_window(Window::Global, offset, &mut data),
            Bar0Window::Context(ctx, relative) => {
                self.shared
                    .read_window(Window::Context(ctx), relative, &mut data)
            }
            Bar0Window::Export(index, relative) => {
                self.shared
                    .read_window(Window::Export(index), relative, &mut data)
            }
            _ => return 0,
        };
        result.map_or(u32::MAX, |()| u32::from_le_bytes(data))
    }

    /// Connects the fabric link (spec §20): remote attachments and forwarded invalidations go
    /// through `port` from now on. None disconnects.
    pub fn connect_fabric(&self, port: Option<Arc<dyn crate::fabric::FabricPort>>) {
        self.shared.fabric.set_port(port);
    }

    /// The handle the host's link threads answer the peer's messages with.
    pub fn fabric_endpoint(&self) -> FabricEndpoint {
        FabricEndpoint(self.shared.clone())
    }

    /// The event log; a trace exporter may keep the handle and read it from any thread.
    pub fn event_log(&self) -> Arc<EventLog> {
        self.shared.events.clone()
    }

    /// A read-only view of the device for a host's control thread (see [`DeviceInspector`]).
    pub fn inspector(&self) -> crate::inspect::DeviceInspector {
        crate::inspect::DeviceInspector::new(self.shared.clone())
    }

    /// A global statistics counter.
    pub fn counter(&self, counter: GlobalCounter) -> u64 {
        self.shared.stats.value(counter)
    }

    /// A statistics counter of context `ctx` (0 for a context that does not exist).
    pub fn context_counter(&self, ctx: usize, counter: ContextCounter) -> u64 {
        self.shared
            .ctx_stats
            .get(ctx)
            .map_or(0, |stats| stats.value(counter))
    }

    /// A copy of every valid TLB entry (for an oracle or a debugger).
    pub fn tlb_entries(&self) -> Vec<TlbEntry> {
        self.shared.tlb_read().entries().copied().collect()
    }

    /// Whether the engine has no job queued or running (for tests).
    pub fn engine_idle(&self) -> bool {
        self.shared.scheduler.idle()
    }

    /// Counts and logs a refused guest access.
    fn record(&self, error: RmnicError) {
        let count = self
            .shared
            .access_errors
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if count.is_power_of_two() {
            warn!(count, "rmnic: refused guest access: {error}");
        } else {
            debug!(count, "rmnic: refused guest access: {error}");
        }
    }

    /// Checks that a BAR access may reach BAR0 at all.
    fn check_bar_access(&self, bar: u8, offset: u64, len: usize) -> Result<(), RmnicError> {
        if bar != BAR0_INDEX {
            return Err(RmnicError::BarNotImplemented { bar, offset, len });
        }
        if !self.config.memory_space_enabled() {
            return Err(RmnicError::MemoryDecodingDisabled { bar, offset });
        }
        let width = MmioWidth::decode(offset, len)?;
        if offset
            .checked_add(width.bytes())
            .is_none_or(|end| end > BAR0_SIZE)
        {
            return Err(RmnicError::Bar0OutOfRange { offset, len });
        }
        Ok(())
    }

    fn read_bar0(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), RmnicError> {
        if let Err(error) = self.check_bar_access(bar, offset, data.len()) {
            mmio::fill_all_ones(data);
            return Err(error);
        }
        match Bar0Window::of(offset) {
            Bar0Window::Registers => self.shared.read_window(Window::Global, offset, data)?,
            Bar0Window::Context(ctx, relative) => {
                self.shared
                    .read_window(Window::Context(ctx), relative, data)?;
            }
            Bar0Window::Export(index, relative) => {
                self.shared
                    .read_window(Window::Export(index), relative, data)?;
            }
            // A doorbell page has only the write-only `UQ_DOORBELL`.
            Bar0Window::Reserved | Bar0Window::UserDoorbell(..) => data.fill(0),
            Bar0Window::MsixTable(relative) => self.msix().read_table(relative, data)?,
            Bar0Window::MsixPba(relative) => self.msix().read_pba(relative, data)?,
        }
        Ok(())
    }

    fn write_bar0(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), RmnicError> {
        self.check_bar_access(bar, offset, data.len())?;
        match Bar0Window::of(offset) {
            Bar0Window::Registers => self.shared.write_window(Window::Global, offset, data)?,
            Bar0Window::Context(ctx, relative) => {
                self.shared
                    .write_window(Window::Context(ctx), relative, data)?;
            }
            Bar0Window::Export(index, relative) => {
                self.shared
                    .write_window(Window::Export(index), relative, data)?;
            }
            // `UQ_DOORBELL` is the context's `CQ_DOORBELL` seen through its own page; the rest
            // of the page is reserved.
            Bar0Window::UserDoorbell(ctx, 0) => {
                self.shared
                    .write_window(Window::Context(ctx), CQ_DOORBELL, data)?;
            }
            Bar0Window::Reserved | Bar0Window::UserDoorbell(..) => {}
            Bar0Window::MsixTable(relative) => self.msix().write_table(relative, data)?,
            Bar0Window::MsixPba(relative) => self.msix().write_pba(relative, data)?,
        }
        Ok(())
    }
}

impl Drop for RmnicDevice {
    fn drop(&mut self) {
        self.shared.scheduler.shutdown();
        // A worker stalled by fault injection waits for a reset that will not come.
        self.shared.resets.close();
        for worker in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = worker.join();
        }
    }
}

impl PciDevice for RmnicDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        match self.config.read_register(reg) {
            Ok(value) => value,
            Err(error) => {
                self.record(error.into());
                u32::MAX
            }
        }
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        if let Err(error) = self.config.write_register(reg, offset, data) {
            self.record(error.into());
            return;
        }
        // The configuration space holds the guest-visible bits; MSI-X mirrors the ones it
        // acts on after every write that may have changed them.
        if reg == self.msix_control_reg {
            if let Ok(value) = self.config.read_register(reg) {
                self.msix()
                    .set_control(MsixCapability::message_control(value));
            }
        }
        if reg == COMMAND_OFFSET / 4 {
            let bus_master = self.config.bus_master_enabled();
            self.msix().set_bus_master(bus_master);
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if let Err(error) = self.read_bar0(bar, offset, data) {
            self.record(error);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if let Err(error) = self.write_bar0(bar, offset, data) {
            self.record(error);
        }
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    /// Every context's `CQ_DOORBELL` and its user doorbell page's `UQ_DOORBELL` (spec §5: any
    /// write makes the engine look at the ring; the write's value is ignored and nothing is
    /// returned to the writer).
    fn doorbells(&self) -> Vec<Doorbell> {
        let contexts = 0..crate::regs::NUM_CONTEXTS as u64;
        let registers = contexts.clone().map(|ctx| Doorbell {
            bar: 0,
            offset: crate::regs::CTX_BLOCK_BASE
                + ctx * crate::regs::CTX_BLOCK_SIZE
                + crate::regs::CQ_DOORBELL,
        });
        let pages = contexts.map(|ctx| Doorbell {
            bar: 0,
            offset: UQ_DOORBELL_BASE + ctx * UQ_DOORBELL_STRIDE,
        });
        registers.chain(pages).collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::interrupt::testing::{RecordingSink, SinkEvent};
    use crate::interrupt::MsiMessage;
    use crate::pci::configuration::{
        BAR_MEMORY_64BIT, CAPABILITY_POINTER_OFFSET, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE,
        STATUS_CAPABILITIES_LIST,
    };
    use crate::pci::msix::{MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK};
    use crate::regs::{REG_ID, REG_SCRATCH, REG_VERSION, RMNIC_ID_MAGIC, RMNIC_SPEC_VERSION};

    const BAR0_ADDRESS: u64 = 0x1_0000_0000;

    fn device() -> (RmnicDevice, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::default());
        (RmnicDevice::new(sink.clone()), sink)
    }

    fn config_write32(device: &mut RmnicDevice, reg: usize, value: u32) {
        device.write_config_register(reg, 0, &value.to_le_bytes());
    }

    fn bar_read32(device: &mut RmnicDevice, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        device.read_bar(0, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn bar_write32(device: &mut RmnicDevice, offset: u64, value: u32) {
        device.write_bar(0, offset, &value.to_le_bytes());
    }

    /// What a driver's probe does: place BAR0, enable memory decoding and bus mastering.
    fn probed() -> (RmnicDevice, Arc<RecordingSink>) {
        let (mut device, sink) = device();
        device
            .set_bar_address(0, BAR0_ADDRESS)
            .expect("aligned 64-bit address");
        config_write32(
            &mut device,
            1,
            u32::from(COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER),
        );
        (device, sink)
    }

    /// Finds the MSI-X capability by walking the list as a guest does.
    fn find_msix(device: &mut RmnicDevice) -> Option<usize> {
        if device.read_config_register(1) >> 16 & u32::from(STATUS_CAPABILITIES_LIST) == 0 {
            return None;
        }
        let mut offset =
            (device.read_config_register(CAPABILITY_POINTER_OFFSET / 4) & 0xfc) as usize;
        for _ in 0..48 {
            if offset == 0 {
                return None;
            }
            let header = device.read_config_register(offset / 4);
            if header & 0xff == u32::from(MSIX_CAPABILITY_ID) {
                return Some(offset);
            }
            offset = (header >> 8 & 0xfc) as usize;
        }
        None
    }

    #[test]
    fn constructing_the_device_succeeds() {
        let (device, sink) = device();
        assert_eq!(device.access_errors(), 0);
        assert!(sink.events().is_empty());
    }

    #[test]
    fn configuration_space_carries_rmnic_identity() {
        let (mut device, _) = device();
        assert_eq!(device.read_config_register(0), 0x0001_f1e0);
        assert_eq!(device.read_config_register(2), 0x0280_0001);
        assert_eq!(device.read_config_register(11), 0x0001_f1e0);
        assert_eq!(
            device.read_config_register(15) >> 8 & 0xff,
            0,
            "no INTx pin"
        );
    }

    #[test]
    fn bar0_is_a_512_kib_64_bit_memory_bar() {
        let (mut device, _) = device();
        assert_eq!(device.read_config_register(4), BAR_MEMORY_64BIT);
        config_write32(&mut device, 4, u32::MAX);
        config_write32(&mut device, 5, u32::MAX);
        assert_eq!(
            device.read_config_register(4),
            0xfff8_0000 | BAR_MEMORY_64BIT
        );
        assert_eq!(device.read_config_register(5), u32::MAX);
        for reg in 6..10 {
            config_write32(&mut device, reg, u32::MAX);
            assert_eq!(
                device.read_config_register(reg),
                0,
                "BAR {} unused",
                reg - 4
            );
        }
    }

    #[test]
    fn bar0_sizing_probe_with_decoding_on_does_not_move_it() {
        let (mut device, _) = probed();
        let (low, high) = (
            device.read_config_register(4),
            device.read_config_register(5),
        );
        config_write32(&mut device, 4, u32::MAX);
        config_write32(&mut device, 5, u32::MAX);
        assert_eq!(device.bar_regions()[0].base, BAR0_ADDRESS);
        config_write32(&mut device, 4, low);
        config_write32(&mut device, 5, high);
        assert_eq!(
            device.bar_regions(),
            vec![BarRegion {
                index: 0,
                base: BAR0_ADDRESS,
                size: BAR0_SIZE
            }]
        );
    }

    #[test]
    fn memory_space_enable_gates_bar_regions_and_bar_accesses() {
        let (mut device, _) = device();
        device.set_bar_address(0, BAR0_ADDRESS).expect("aligned");
        assert!(device.bar_regions().is_empty());
        assert_eq!(bar_read32(&mut device, REG_ID), u32::MAX);
        assert_eq!(device.access_errors(), 1);
        config_write32(&mut device, 1, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(device.bar_regions().len(), 1);
        assert_eq!(bar_read32(&mut device, REG_ID), RMNIC_ID_MAGIC);
    }

    #[test]
    fn capability_list_walk_finds_msix_with_table_and_pba_in_bar0() {
        let (mut device, _) = device();
        let offset = find_msix(&mut device).expect("MSI-X capability present");
        let reg = offset / 4;
        let control = device.read_config_register(reg) >> 16;
        assert_eq!(control & 0x7ff, u32::from(RMNIC_MSIX_VECTORS - 1));
        assert_eq!(device.read_config_register(reg + 1), 0x2000, "table, BIR 0");
        assert_eq!(device.read_config_register(reg + 2), 0x3000, "PBA, BIR 0");
    }

    #[test]
    fn msix_message_control_accepts_only_enable_and_function_mask() {
        let (mut device, _) = device();
        let reg = find_msix(&mut device).expect("present") / 4;
        let before = device.read_config_register(reg);
        device.write_config_register(reg, 2, &0xffffu16.to_le_bytes());
        assert_eq!(
            device.read_config_register(reg),
            before | 0xc000_0000,
            "table size and header read-only"
        );
        assert!(device.msix().enabled() && device.msix().function_masked());
    }

    #[test]
    fn register_file_reads_reset_values_through_bar0() {
        let (mut device, _) = probed();
        assert_eq!(bar_read32(&mut device, REG_ID), RMNIC_ID_MAGIC);
        assert_eq!(bar_read32(&mut device, REG_VERSION), RMNIC_SPEC_VERSION);
        assert_eq!(bar_read32(&mut device, REG_SCRATCH), 0);
    }

    #[test]
    fn scratch_round_trips_and_reserved_window_reads_zero() {
        let (mut device, _) = probed();
        bar_write32(&mut device, REG_SCRATCH, 0x1234_5678);
        assert_eq!(bar_read32(&mut device, REG_SCRATCH), 0x1234_5678);
        bar_write32(&mut device, 0x1800, 0xffff_ffff);
        assert_eq!(bar_read32(&mut device, 0x1800), 0);
        assert_eq!(device.access_errors(), 0);
    }

    #[test]
    fn illegal_bar_accesses_read_all_ones_drop_writes_and_count() {
        let (mut device, sink) = probed();
        let cases: [(u8, u64, usize); 7] = [
            (0, REG_SCRATCH, 1),
            (0, REG_SCRATCH, 2),
            (0, REG_SCRATCH + 2, 4),
            (0, BAR0_SIZE, 4),
            (0, u64::MAX - 7, 8),
            (0, MSIX_TABLE_OFFSET + 0x40, 4),
            (1, 0, 4),
        ];
        for (bar, offset, len) in cases {
            let mut data = vec![0u8; len];
            device.read_bar(bar, offset, &mut data);
            assert!(
                data.iter().all(|b| *b == 0xff),
                "bar {bar} offset {offset:#x}"
            );
            device.write_bar(bar, offset, &vec![0x55; len]);
        }
        device.write_bar(0, MSIX_PBA_OFFSET, &[0xff; 8]);
        assert_eq!(device.access_errors(), 2 * cases.len() as u64 + 1);
        assert_eq!(bar_read32(&mut device, REG_SCRATCH), 0);
        assert!(!device.msix().is_pending(0));
        assert!(sink.events().is_empty());
    }

    #[test]
    fn illegal_config_accesses_read_all_ones_and_count() {
        let (mut device, _) = device();
        assert_eq!(device.read_config_register(64), u32::MAX);
        device.write_config_register(1, 3, &[1, 2]);
        device.write_config_register(1000, 0, &[1]);
        assert_eq!(device.access_errors(), 3);
        assert_eq!(device.read_config_register(1) & 0xffff, 0);
    }

    /// Programs `vector` through BAR0 with data `0x30 + vector`, leaving it masked.
    fn program_vector(device: &mut RmnicDevice, vector: u16) {
        let entry = MSIX_TABLE_OFFSET + u64::from(vector) * 16;
        device.write_bar(0, entry, &0xfee0_0000u64.to_le_bytes());
        bar_write32(device, entry + 8, 0x30 + u32::from(vector));
    }

    fn message(vector: u16) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data: 0x30 + u32::from(vector),
        }
    }

    fn set_msix_control(device: &mut RmnicDevice, control: u16) {
        let reg = find_msix(device).expect("present") / 4;
        device.write_config_register(reg, 2, &control.to_le_bytes());
    }

    #[test]
    fn raised_vector_is_pending_while_masked_and_delivered_on_unmask() {
        let (mut device, sink) = probed();
        program_vector(&mut device, VECTOR_COMPLETION);
        set_msix_control(&mut device, MSIX_CONTROL_ENABLE);
        assert_eq!(device.raise(VECTOR_COMPLETION), Ok(Delivery::Pending));
        let mut pba = [0u8; 8];
        device.read_bar(0, MSIX_PBA_OFFSET, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1 << VECTOR_COMPLETION);

        bar_write32(
            &mut device,
            MSIX_TABLE_OFFSET + u64::from(VECTOR_COMPLETION) * 16 + 12,
            0,
        );
        assert_eq!(
            sink.take(),
            vec![
                SinkEvent::Configure(VECTOR_COMPLETION, Some(message(VECTOR_COMPLETION))),
                SinkEvent::Trigger(VECTOR_COMPLETION),
            ]
        );
        device.read_bar(0, MSIX_PBA_OFFSET, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
        assert_eq!(device.raise(VECTOR_COMPLETION), Ok(Delivery::Sent));
    }

    #[test]
    fn function_mask_through_config_space_holds_vectors_pending() {
        let (mut device, sink) = probed();
        program_vector(&mut device, VECTOR_ERROR);
        bar_write32(&mut device, MSIX_TABLE_OFFSET + 3 * 16 + 12, 0);
        set_msix_control(
            &mut device,
            MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK,
        );
        assert_eq!(device.raise(VECTOR_ERROR), Ok(Delivery::Pending));
        assert!(sink.take().is_empty());
        set_msix_control(&mut device, MSIX_CONTROL_ENABLE);
        assert_eq!(
            sink.take(),
            vec![
                SinkEvent::Configure(VECTOR_ERROR, Some(message(VECTOR_ERROR))),
                SinkEvent::Trigger(VECTOR_ERROR),
            ]
        );
    }

    #[test]
    fn clearing_bus_master_withdraws_routes_and_drops_interrupts() {
        let (mut device, sink) = probed();
        program_vector(&mut device, VECTOR_FAULT);
        bar_write32(&mut device, MSIX_TABLE_OFFSET + 12, 0);
        set_msix_control(&mut device, MSIX_CONTROL_ENABLE);
        sink.take();
        config_write32(&mut device, 1, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(sink.take(), vec![SinkEvent::Configure(VECTOR_FAULT, None)]);
        assert_eq!(device.raise(VECTOR_FAULT), Ok(Delivery::Dropped));
    }

    #[test]
    fn raise_before_msix_enable_is_dropped() {
        let (mut device, sink) = probed();
        assert_eq!(device.raise(VECTOR_INVALIDATION), Ok(Delivery::Dropped));
        assert!(sink.events().is_empty());
        assert!(matches!(
            device.raise(RMNIC_MSIX_VECTORS),
            Err(MsixError::VectorOutOfRange { .. })
        ));
    }

    #[test]
    fn reset_returns_to_power_on_state() {
        let (mut device, sink) = probed();
        bar_write32(&mut device, REG_SCRATCH, 9);
        program_vector(&mut device, 0);
        bar_write32(&mut device, MSIX_TABLE_OFFSET + 12, 0);
        set_msix_control(&mut device, MSIX_CONTROL_ENABLE);
        sink.take();
        device.reset();
        assert_eq!(sink.take(), vec![SinkEvent::Configure(0, None)]);
        assert!(device.bar_regions().is_empty());
        assert_eq!(device.bars()[0].base, 0);
        assert_eq!(device.register(REG_SCRATCH), 0);
        assert!(!device.msix().enabled());
    }

    proptest! {
        #[test]
        fn random_config_writes_never_panic_nor_change_read_only_bits(
            writes in proptest::collection::vec(
                (0usize..66, 0u64..5, proptest::collection::vec(any::<u8>(), 0..6)),
                1..64,
            )
        ) {
            let (mut device, _) = device();
            for (reg, offset, data) in writes {
                let before: Vec<u32> = (0..64).map(|r| device.read_config_register(r)).collect();
                device.write_config_register(reg, offset, &data);
                for (r, old) in before.iter().enumerate() {
                    let new = device.read_config_register(r);
                    let config = device.configuration();
                    let read_only = !config.writable_bits(r) & !config.write_1_to_clear_bits(r);
                    prop_assert_eq!(old & read_only, new & read_only, "register {}", r);
                }
            }
        }

        #[test]
        fn random_bar_accesses_never_panic(
            accesses in proptest::collection::vec(
                (0u8..3, 0u64..0x8010, 0usize..10, any::<u64>(), any::<bool>()),
                1..128,
            )
        ) {
            let (mut device, _) = probed();
            set_msix_control(&mut device, MSIX_CONTROL_ENABLE);
            for (bar, offset, len, value, write) in accesses {
                let bytes = value.to_le_bytes();
                if write {
                    device.write_bar(bar, offset, &bytes[..len.min(8)]);
                } else {
                    let mut data = vec![0u8; len];
                    device.read_bar(bar, offset, &mut data);
                }
                let _ = device.raise((value % 4) as u16);
            }
            prop_assert_eq!(device.register(REG_ID), RMNIC_ID_MAGIC);
        }
    }
}
