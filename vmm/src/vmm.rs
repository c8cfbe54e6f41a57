//! The wiring: builds a VM from a [`VmConfig`] (memory, irqchip, devices, PCI, boot
//! structures, vCPUs), runs one thread per vCPU, and stops them all on the first exit
//! reason.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rmnic_control::{ApiServer, DeviceControl, FaultSwitch};
use rmnic_device::events::{EventLog, EVENT_DEFAULT, EVENT_LEAN};
use rmnic_device::oracle::{CheckMode, Oracle};
use rmnic_device::{RmnicConfig, RmnicDevice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::layout::{ram_regions, RamRegion, PCI_MMIO_END, PCI_MMIO_START};
use crate::boot::{load_linux, BootError};
use crate::bus::{Bus, BusError, BusRange, SharedBusDevice};
use crate::config::{ConfigError, DeviceSource, DoorbellPath, VmConfig};
use crate::devices::exit_port::{ExitPort, EXIT_PORT, EXIT_PORT_LEN};
use crate::devices::i8042::{I8042, I8042_COMMAND_PORT, I8042_COMMAND_PORT_LEN};
use crate::devices::serial::IrqTrigger;
use crate::devices::{Serial, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use crate::exit::{ExitLatch, ExitReason};
use crate::interrupts::{DeviceMsi, GsiRouter, InterruptError, IrqBackend};
use crate::memory::{create_guest_ram, GuestRam, MemoryError};
use crate::pci::bars::{probe_bars, program_bar};
use crate::pci::doorbells::{DoorbellError, DoorbellRelay, IoEventRegistry};
use crate::pci::vfio_user::{VfioUserError, VfioUserFunction};
use crate::pci::{
    assign_bars, BarError, BarPlacement, HostBridge, PciConfigIo, PciError, PciRoot,
    PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN,
};
use crate::vstate::{dump, CpuTemplate, Vcpu, VcpuError, VcpuExitContext, Vm, VmError};

/// PCI slot of the host bridge.
pub const HOST_BRIDGE_SLOT: u8 = 0;
/// PCI slot of the rmnic function (00:01.0).
pub const RMNIC_SLOT: u8 = 1;
/// How long the VMM waits for vCPU threads to leave KVM_RUN after a stop.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a vCPU that has not stopped yet is signalled again.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Errors building or starting the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The rmnic device model could not be built.
    #[error("Cannot build the rmnic device")]
    Device(#[from] rmnic_device::rmnic::BuildError),
    /// The control API could not start.
    #[error(transparent)]
    Api(#[from] rmnic_control::server::ServerError),
    /// The out-of-process device could not be attached.
    #[error(transparent)]
    VfioUser(#[from] VfioUserError),
    /// KVM VM setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initrd or boot tables.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Interrupt routing.
    #[error(transparent)]
    Interrupts(#[from] InterruptError),
    /// The doorbell relay (ioeventfd) could not start.
    #[error(transparent)]
    Doorbells(#[from] DoorbellError),
    /// Device placement on the port or MMIO bus.
    #[error("Cannot place {0} on the bus")]
    Bus(&'static str, #[source] BusError),
    /// PCI slot assignment.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// BAR placement.
    #[error(transparent)]
    Bar(#[from] BarError),
    /// A vCPU thread could not be started.
    #[error("Cannot start the thread of vCPU {0}")]
    Thread(u8, #[source] std::io::Error),
    /// The vCPU kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    Signal(#[source] std::io::Error),
}

/// A VM ready to run.
pub struct Vmm {
    config: VmConfig,
    vm: Vm,
    vcpus: Vec<Vcpu>,
    ctx: VcpuExitContext,
    serial: Arc<Mutex<Serial>>,
    bars: Vec<BarPlacement>,
    built_at: Instant,
    /// The coherence oracle on the in-process device, if it checks anything.
    oracle: Option<Arc<Oracle>>,
    /// The control API, while the VM runs.
    api: Option<ApiServer>,
    /// The in-process device's event log, for `--trace`.
    events: Option<Arc<EventLog>>,
    /// The in-process device's fabric side, for the end-of-run summary.
    fabric: Option<rmnic_device::rmnic::FabricEndpoint>,
    /// The in-process device's doorbells through ioeventfd (`--doorbells ioeventfd`).
    doorbells: Option<Arc<DoorbellRelay>>,
    /// Kept alive for as long as vCPUs may run: KVM's memory slots point into it. Last
    /// field, so it is unmapped only after the VM and vCPU fds are closed.
    ram: GuestRam,
}

impl Vmm {
    /// Builds the VM described by `config`; the guest's serial output goes to `serial_out`.
    pub fn new(config: &VmConfig, serial_out: Box<dyn Write + Send>) -> Result<Self, VmmError> {
        let started = Instant::now();
        config.validate()?;
        let vm = Vm::new()?;
        vm.check_vcpu_count(config.cpus)?;

        let regions = ram_regions(config.memory_bytes());
        let ram = create_guest_ram(&regions)?;
        vm.register_memory(&ram.memory)?;
        vm.setup_irqchip()?;
        let backend: Arc<dyn IrqBackend> = vm.fd().clone();
        let router = Arc::new(GsiRouter::new(backend)?);
        let latch = Arc::new(ExitLatch::new());

        // Legacy devices on the port bus.
        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
        router.register_irqfd(&serial_evt, SERIAL_IRQ)?;
        let serial = Arc::new(Mutex::new(Serial::new(
            IrqTrigger::new(serial_evt),
            serial_out,
        )));
        let mut pio = Bus::new();
        let mut place = |name: &'static str, base: u16, len: u64, dev: SharedBusDevice| {
            BusRange::new(u64::from(base), len)
                .and_then(|r| pio.insert(r, dev))
                .map_err(|e| VmmError::Bus(name, e))
        };
        place("serial", SERIAL_PORT_BASE, SERIAL_PORT_LEN, serial.clone())?;
        place(
            "i8042",
            I8042_COMMAND_PORT,
            I8042_COMMAND_PORT_LEN,
            Arc::new(Mutex::new(I8042::new(latch.clone()))),
        )?;
        place(
            "exit port",
            EXIT_PORT,
            EXIT_PORT_LEN,
            Arc::new(Mutex::new(ExitPort::new(latch.clone()))),
        )?;

        // PCI: host bridge and rmnic, BARs placed as firmware would.
        let mut pci = PciRoot::new();
        pci.add_device(HOST_BRIDGE_SLOT, Arc::new(Mutex::new(HostBridge::new())))?;
        let msi = Arc::new(DeviceMsi::new("rmnic 00:01.0", router.clone()));
        let faults =
            Arc::new(FaultSwitch::new(&config.fault, config.seed).map_err(ConfigError::Fault)?);
        if config.fault != "none" {
            eprintln!(
                "rmnic-vmm: injecting {} with seed {} (replay: --seed {})",
                config.fault, config.seed, config.seed
            );
        }
        let oracle = (config.coherence_check != CheckMode::Off)
            .then(|| Arc::new(Oracle::new(config.coherence_check, faults.clone())));
        let mut device_config = RmnicConfig {
            tlb: config.tlb_geometry()?,
            workers: config.device_workers,
            ..RmnicConfig::default()
        };
        if config.trace.is_some() || config.api_socket.is_some() {
            // A trace is read after the fact: keep more than the default few thousand events.
            device_config.event_log_capacity = rmnic_control::trace::TRACE_EVENTS;
        }
        device_config.event_mask = if config.trace_lean {
            EVENT_LEAN
        } else {
            EVENT_DEFAULT
        };
        device_config.injector = match &oracle {
            Some(oracle) => oracle.clone(),
            None => faults.clone(),
        };
        let mut api = None;
        let mut events = None;
        let mut fabric = None;
        let mut doorbells = None;
        match &config.device {
            DeviceSource::InProcess => {
                let rmnic = RmnicDevice::with_memory(ram.memory.clone(), device_config, msi)?;
                let inspector = rmnic.inspector();
                if let Some(oracle) = &oracle {
                    oracle.watch_events(inspector.event_log());
                }
                events = Some(inspector.event_log());
                if config.fabric.enabled() {
                    let endpoint = rmnic.fabric_endpoint();
                    // The link comes up on its own thread; it lives as long as the process.
                    let _ = rmnic_device_server::fabric_link::start(
                        &config.fabric,
                        endpoint.clone(),
                        "rmnic-vmm",
                    );
                    fabric = Some(endpoint);
                }
                if let Some(path) = &config.api_socket {
                    let control = DeviceControl::new(inspector, oracle.clone(), faults.clone());
                    api = Some(ApiServer::start(path, control)?);
                    eprintln!("rmnic-vmm: control API on {}", path.display());
                }
                let rmnic: Arc<Mutex<RmnicDevice>> = Arc::new(Mutex::new(rmnic));
                if config.doorbells == DoorbellPath::Ioeventfd {
                    let registry: Arc<dyn IoEventRegistry> = vm.fd().clone();
                    if let Some(relay) = DoorbellRelay::start(rmnic.clone(), registry)? {
                        let relay = Arc::new(relay);
                        let watcher = relay.clone();
                        pci.watch_bars(RMNIC_SLOT, Arc::new(move || watcher.bars_changed()));
                        doorbells = Some(relay);
                    }
                }
                pci.add_device(RMNIC_SLOT, rmnic)?;
            }
            DeviceSource::VfioUser(socket) => {
                let function = VfioUserFunction::attach(socket, &ram.memory, msi)?;
                pci.add_device(RMNIC_SLOT, Arc::new(Mutex::new(function)))?;
            }
        }
        let bars = place_bars(&pci)?;
        let pci = Arc::new(pci);
        place(
            "PCI config ports",
            PCI_CONFIG_PORT,
            PCI_CONFIG_PORT_LEN,
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        )?;

        let boot = load_linux(
            &ram.memory,
            &regions,
            &config.kernel,
            config.initrd.as_deref(),
            &config.cmdline,
            u32::from(config.cpus),
        )?;
        tracing::debug!(?boot, "kernel loaded");

        let cpu = CpuTemplate {
            supported_cpuid: vm.supported_cpuid()?,
            tsc_deadline: vm.has_tsc_deadline_timer(),
        };
        let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
        for id in 0..config.cpus {
            let vcpu = Vcpu::new(&vm, id)?;
            vcpu.configure(&cpu, config.cpus, (id == 0).then_some(&boot))?;
            vcpus.push(vcpu);
        }

        tracing::info!(
            cpus = config.cpus,
            memory_mib = config.memory_mib,
            "VM built in {:?}",
            started.elapsed()
        );
        Ok(Self {
            config: config.clone(),
            ram,
            vm,
            vcpus,
            ctx: VcpuExitContext {
                pio: Arc::new(pio),
                mmio: Arc::new(Bus::new()),
                pci,
                latch,
            },
            serial,
            bars,
            built_at: started,
            api,
            events,
            fabric,
            doorbells,
            oracle: match config.device {
                DeviceSource::InProcess => oracle,
                DeviceSource::VfioUser(_) => None,
            },
        })
    }

    /// Where the firmware pass put each BAR.
    pub fn bar_placements(&self) -> &[BarPlacement] {
        &self.bars
    }

    /// The guest's RAM regions.
    pub fn ram_regions(&self) -> Vec<RamRegion> {
        ram_regions(self.config.memory_bytes())
    }

    /// Runs the guest until it stops; returns why.
    pub fn run(self) -> Result<ExitReason, VmmError> {
        let oracle = self.oracle.clone();
        let violations_fail = self.config.violations_fail;
        install_kick_handler()?;
        dump::install().map_err(VmmError::Signal)?;
        let latch = self.ctx.latch.clone();
        let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus {
            let id = vcpu.id();
            let ctx = self.ctx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu.run(ctx));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    latch.trigger(ExitReason::VmmError(format!("vCPU {id} thread: {e}")));
                    stop_vcpus(&threads);
                    return Err(VmmError::Thread(id, e));
                }
            }
        }
        if self.config.serial_input {
            spawn_stdin_forwarder(self.serial.clone(), latch.clone());
        }
        let run_start = Instant::now();
        let reason = latch.wait_ticking(self.config.timeout, DUMP_POLL, || {
            serve_dump_request(&threads)
        });
        tracing::info!(
            "guest stopped after {:?} ({:?} since VMM start): {reason:?}",
            run_start.elapsed(),
            self.built_at.elapsed()
        );
        if stop_vcpus(&threads) {
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a vCPU thread panicked");
                }
            }
        } else {
            // Some vCPU is stuck in KVM_RUN: keep its memory mapped rather than unmap it
            // under a running guest, and let process exit clean up.
            tracing::error!("vCPU threads did not stop within {STOP_GRACE:?}");
            std::mem::forget(self.ram);
            std::mem::forget(self.vm);
        }
        let _ = std::io::stdout().flush();
        drop(self.api);
        if let Some(relay) = &self.doorbells {
            eprintln!(
                "rmnic-vmm: doorbells: {} delivered through ioeventfd ({} registered at the end)",
                relay.delivered(),
                relay.registered()
            );
        }
        if let Some(endpoint) = &self.fabric {
            eprintln!(
                "rmnic-vmm: {}",
                rmnic_device_server::fabric_link::summary(&self.config.fabric, endpoint)
            );
        }
        if let (Some(path), Some(events)) = (&self.config.trace, &self.events) {
            match rmnic_control::trace::write(path, events) {
                Ok(count) => eprintln!(
                    "rmnic-vmm: {count} device events written to {}",
                    path.display()
                ),
                Err(e) => eprintln!("rmnic-vmm: trace {}: {e}", path.display()),
            }
        }
        Ok(oracle_verdict(oracle.as_deref(), violations_fail, reason))
    }
}

/// Prints the oracle's summary and violations; with `--violations fail`, a normal guest exit
/// becomes [`ExitReason::CoherenceViolations`] when there were any.
fn oracle_verdict(
    oracle: Option<&Oracle>,
    violations_fail: bool,
    reason: ExitReason,
) -> ExitReason {
    let Some(oracle) = oracle else {
        return reason;
    };
    for line in oracle.report() {
        eprintln!("rmnic-vmm: {line}");
    }
    let count = oracle.violation_count();
    match reason {
        ExitReason::Guest(guest_status) if count > 0 && violations_fail => {
            ExitReason::CoherenceViolations {
                count,
                guest_status,
            }
        }
        other => other,
    }
}

/// Builds and runs the VM described by `config`, serial output to `serial_out`.
pub fn run_vm(
    config: &VmConfig,
    serial_out: Box<dyn Write + Send>,
) -> Result<ExitReason, VmmError> {
    Vmm::new(config, serial_out)?.run()
}

/// The firmware pass: size every memory BAR of every function, place them in the 32-bit
/// window, program them and turn memory decoding on.
fn place_bars(pci: &PciRoot) -> Result<Vec<BarPlacement>, VmmError> {
    let mut found = Vec::new();
    for slot in pci.occupied_slots() {
        if let Some(dev) = pci.device(slot) {
            let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
            found.extend(probe_bars(slot, &mut *dev));
        }
    }
    let placed = assign_bars(&found, PCI_MMIO_START, PCI_MMIO_END)?;
    for p in &placed {
        if let Some(dev) = pci.device(p.bar.slot) {
            program_bar(&mut *dev.lock().unwrap_or_else(|e| e.into_inner()), p);
        }
        tracing::info!(
            "PCI 00:{:02x}.0 BAR {} -> {:#x} ({:#x} bytes{})",
            p.bar.slot,
            p.bar.index,
            p.base,
            p.bar.size,
            if p.bar.is_64bit { ", 64-bit" } else { "" }
        );
    }
    for slot in pci.occupied_slots() {
        pci.enable_memory_decoding(slot);
    }
    Ok(placed)
}

/// How often the main thread looks for a state-dump request while the guest runs.
const DUMP_POLL: Duration = Duration::from_millis(100);

/// Serves a pending `kill -USR1` state-dump request by kicking every vCPU thread out of
/// KVM_RUN (see [`dump`]).
fn serve_dump_request(threads: &[JoinHandle<()>]) {
    if dump::take_request() {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            if let Err(e) = t.kill(kick_signal()) {
                tracing::debug!("kick for a state dump failed: {e}");
            }
        }
    }
}

/// The signal used to knock vCPU threads out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

fn install_kick_handler() -> Result<(), VmmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| VmmError::Signal(e.into()));
    });
    result
}

/// Signals every vCPU thread until all have left their loop (they check the latch after
/// each exit); true if they all did within [`STOP_GRACE`]. Repeating the signal covers the
/// race where one lands just before a thread re-enters KVM_RUN.
fn stop_vcpus(threads: &[JoinHandle<()>]) -> bool {
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let mut running = 0;
        for t in threads.iter().filter(|t| !t.is_finished()) {
            running += 1;
            if let Err(e) = t.kill(kick_signal()) {
                tracing::debug!("kick failed: {e}");
            }
        }
        if running == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(KICK_INTERVAL);
    }
}

/// Copies stdin into the serial receive FIFO until EOF or the VM stops.
fn spawn_stdin_forwarder(serial: Arc<Mutex<Serial>>, latch: Arc<ExitLatch>) {
    let spawned = std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            while !latch.is_set() {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() && !latch.is_set() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no serial input: {e}");
    }
}
