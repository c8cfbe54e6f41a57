//! Doorbells delivered out of band: each doorbell register a PCI function names
//! ([`PciDevice::doorbells`]) gets an eventfd that KVM signals on a guest write to its
//! address (ioeventfd), so the vCPU never leaves the kernel for it; a relay thread turns each
//! signal into the device's register write. The rest of the BAR still exits to user space.
//!
//! Registrations follow the BAR: when the guest moves it or turns memory decoding off
//! ([`DoorbellRelay::bars_changed`], called by the bus after every configuration write), the
//! old addresses are released before the new ones are taken, so a write to an address the
//! function no longer decodes is never swallowed.
//!
//! Several writes before the relay wakes collapse into one delivery. That is the register's
//! meaning ("look at the ring"), not a loss: the device reads the ring's index from memory.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use rmnic_device::pci::{BarRegion, Doorbell};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::bus::SharedPciDevice;

/// Where ioeventfds are registered: KVM's VM, or a fake in tests.
pub trait IoEventRegistry: Send + Sync {
    /// Signal `fd` on every guest write to the MMIO address `addr`, whatever its value.
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
    /// Undo [`IoEventRegistry::register`] of `fd` at `addr`.
    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
}

impl IoEventRegistry for VmFd {
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Errors setting a relay up.
#[derive(Debug, thiserror::Error)]
pub enum DoorbellError {
    /// An eventfd, the epoll set or the relay thread could not be created.
    #[error("Cannot set up the doorbell relay: {0}")]
    Setup(#[source] std::io::Error),
}

/// One doorbell: its register, its eventfd, and the address it is registered at.
struct Bell {
    doorbell: Doorbell,
    fd: EventFd,
    registered_at: Mutex<Option<u64>>,
}

/// What the relay thread shares with its owner.
struct Bells {
    bells: Vec<Bell>,
    /// Deliveries made (one per wake of a signalled eventfd).
    delivered: AtomicU64,
    stopping: AtomicBool,
}

/// The doorbells of one PCI function, relayed from eventfds to its registers; the thread
/// stops when this is dropped.
pub struct DoorbellRelay {
    shared: Arc<Bells>,
    device: SharedPciDevice,
    /// Serialises [`DoorbellRelay::bars_changed`]: the last call leaves the registrations of
    /// the BARs as they are then.
    moving: Mutex<()>,
    registry: Arc<dyn IoEventRegistry>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// epoll data of the stop eventfd (doorbells use their index).
const STOP: u64 = u64::MAX;

impl DoorbellRelay {
    /// A relay for `device`'s doorbells, its thread started; nothing is registered until
    /// [`DoorbellRelay::bars_changed`] learns where the BARs are. None when the device names
    /// no doorbell.
    pub fn start(
        device: SharedPciDevice,
        registry: Arc<dyn IoEventRegistry>,
    ) -> Result<Option<Self>, DoorbellError> {
        let doorbells = device.lock().unwrap_or_else(|e| e.into_inner()).doorbells();
        if doorbells.is_empty() {
            return Ok(None);
        }
        let bells = doorbells
            .into_iter()
            .map(|doorbell| {
                Ok(Bell {
                    doorbell,
                    fd: EventFd::new(libc::EFD_NONBLOCK)?,
                    registered_at: Mutex::new(None),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(DoorbellError::Setup)?;
        let epoll = Epoll::new().map_err(DoorbellError::Setup)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(DoorbellError::Setup)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP),
            )
            .map_err(DoorbellError::Setup)?;
        for (i, bell) in bells.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    bell.fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, i as u64),
                )
                .map_err(DoorbellError::Setup)?;
        }
        let shared = Arc::new(Bells {
            bells,
            delivered: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let relayed = device.clone();
        let thread = std::thread::Builder::new()
            .name("rmnic-doorbells".into())
            .spawn(move || worker.relay(&epoll, &relayed))
            .map_err(DoorbellError::Setup)?;
        Ok(Some(Self {
            shared,
            device,
            moving: Mutex::new(()),
            registry,
            stop,
            thread: Some(thread),
        }))
    }
}

impl Bells {
    /// The relay thread: waits for signalled eventfds and writes their registers.
    fn relay(&self, epoll: &Epoll, device: &SharedPciDevice) {
        let mut events = vec![EpollEvent::default(); self.bells.len() + 1];
        while !self.stopping.load(Ordering::Acquire) {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("doorbell relay: epoll failed ({e}); doorbells stop");
                    return;
                }
            };
            for event in &events[..n] {
                let Some(bell) = usize::try_from(event.data())
                    .ok()
                    .and_then(|i| self.bells.get(i))
                else {
                    continue;
                };
                // Reset the count first: a write after this read signals again.
                if bell.fd.read().is_ok() {
                    device.lock().unwrap_or_else(|e| e.into_inner()).write_bar(
                        bell.doorbell.bar,
                        bell.doorbell.offset,
                        &1u32.to_le_bytes(),
                    );
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl DoorbellRelay {
    /// Moves the registrations to where the function's decoded BARs put the doorbells now; a
    /// doorbell whose BAR is not decoded is not registered at all.
    pub fn bars_changed(&self) {
        let _serial = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        let regions: Vec<BarRegion> = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_regions();
        for bell in &self.shared.bells {
            let want = regions
                .iter()
                .find(|r| r.index == bell.doorbell.bar && bell.doorbell.offset < r.size)
                .and_then(|r| r.base.checked_add(bell.doorbell.offset));
            let mut at = bell.registered_at.lock().unwrap_or_else(|e| e.into_inner());
            if *at == want {
                continue;
            }
            if let Some(old) = at.take() {
                if let Err(e) = self.registry.unregister(&bell.fd, old) {
                    tracing::warn!("doorbell at {old:#x}: unregister failed ({e})");
                }
            }
            if let Some(new) = want {
                match self.registry.register(&bell.fd, new) {
                    Ok(()) => *at = Some(new),
                    // The write then exits to user space as any other: slower, still right.
                    Err(e) => tracing::warn!("doorbell at {new:#x}: ioeventfd refused ({e})"),
                }
            }
        }
    }

    /// Doorbells registered right now.
    pub fn registered(&self) -> usize {
        self.shared
            .bells
            .iter()
            .filter(|b| {
                b.registered_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
            })
            .count()
    }

    /// Deliveries made so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }
}

impl Drop for DoorbellRelay {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Registrations die with the eventfds, but KVM keeps them until unregistered.
        for bell in &self.shared.bells {
            if let Some(at) = bell
                .registered_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                let _ = self.registry.unregister(&bell.fd, at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rmnic_device::pci::PciDevice;

    use super::*;

    /// A function with two doorbells in BAR 0, whose BAR the test moves.
    struct Function {
        regions: Vec<BarRegion>,
        writes: Arc<Mutex<Vec<u64>>>,
    }

    impl PciDevice for Function {
        fn read_config_register(&mut self, _: usize) -> u32 {
            0
        }
        fn write_config_register(&mut self, _: usize, _: u64, _: &[u8]) {}
        fn read_bar(&mut self, _: u8, _: u64, _: &mut [u8]) {}
        fn write_bar(&mut self, _: u8, offset: u64, _: &[u8]) {
            self.writes.lock().expect("lock").push(offset);
        }
        fn bar_regions(&self) -> Vec<BarRegion> {
            self.regions.clone()
        }
        fn doorbells(&self) -> Vec<Doorbell> {
            [0x40, 0x140]
                .map(|offset| Doorbell { bar: 0, offset })
                .to_vec()
        }
    }

    /// KVM's registrations, kept as (address, a clone of the eventfd).
    #[derive(Default)]
    struct Registry(Mutex<Vec<(u64, EventFd)>>);

    impl Registry {
        fn addresses(&self) -> Vec<u64> {
            let mut a: Vec<u64> = self
                .0
                .lock()
                .expect("lock")
                .iter()
                .map(|(a, _)| *a)
                .collect();
            a.sort_unstable();
            a
        }
    }

    impl IoEventRegistry for Registry {
        fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
            let mut list = self.0.lock().expect("lock");
            if list.iter().any(|(a, _)| *a == addr) {
                return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
            }
            list.push((addr, fd.try_clone()?));
            Ok(())
        }
        fn unregister(&self, _: &EventFd, addr: u64) -> std::io::Result<()> {
            let mut list = self.0.lock().expect("lock");
            let before = list.len();
            list.retain(|(a, _)| *a != addr);
            if list.len() == before {
                return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
            }
            Ok(())
        }
    }

    /// The function, the registry, the relay and the function's register writes.
    type Setup = (
        Arc<Mutex<Function>>,
        Arc<Registry>,
        DoorbellRelay,
        Arc<Mutex<Vec<u64>>>,
    );

    fn setup() -> Setup {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let function = Arc::new(Mutex::new(Function {
            regions: Vec::new(),
            writes: writes.clone(),
        }));
        let registry = Arc::new(Registry::default());
        let relay = DoorbellRelay::start(function.clone(), registry.clone())
            .expect("relay")
            .expect("the function has doorbells");
        (function, registry, relay, writes)
    }

    fn place(function: &Mutex<Function>, base: Option<u64>) {
        function.lock().expect("lock").regions = base
            .map(|base| BarRegion {
                index: 0,
                base,
                size: 0x1000,
            })
            .into_iter()
            .collect();
    }

    #[test]
    fn registrations_follow_the_bar_and_go_while_it_is_not_decoded() {
        let (function, registry, relay, _) = setup();
        relay.bars_changed();
        assert!(registry.addresses().is_empty(), "nothing before decoding");
        place(&function, Some(0x1000_0000));
        relay.bars_changed();
        assert_eq!(registry.addresses(), [0x1000_0040, 0x1000_0140]);
        relay.bars_changed();
        assert_eq!(
            relay.registered(),
            2,
            "unchanged BAR: nothing re-registered"
        );
        place(&function, Some(0x2000_0000));
        relay.bars_changed();
        assert_eq!(registry.addresses(), [0x2000_0040, 0x2000_0140]);
        place(&function, None);
        relay.bars_changed();
        assert!(
            registry.addresses().is_empty(),
            "decoding off: all released"
        );
        place(&function, Some(0x3000_0000));
        relay.bars_changed();
        drop(relay);
        assert!(registry.addresses().is_empty(), "dropped: all released");
    }

    #[test]
    fn a_signalled_eventfd_rings_its_register() {
        let (function, registry, relay, writes) = setup();
        place(&function, Some(0x1000_0000));
        relay.bars_changed();
        let second = registry
            .0
            .lock()
            .expect("lock")
            .iter()
            .find(|(a, _)| *a == 0x1000_0140)
            .map(|(_, fd)| fd.try_clone().expect("dup"))
            .expect("registered");
        second.write(1).expect("signal");
        let start = Instant::now();
        while writes.lock().expect("lock").is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "never delivered");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*writes.lock().expect("lock"), [0x140]);
        assert_eq!(relay.delivered(), 1);
    }

    #[test]
    fn a_function_without_doorbells_gets_no_relay() {
        struct Plain;
        impl PciDevice for Plain {
            fn read_config_register(&mut self, _: usize) -> u32 {
                0
            }
            fn write_config_register(&mut self, _: usize, _: u64, _: &[u8]) {}
            fn read_bar(&mut self, _: u8, _: u64, _: &mut [u8]) {}
            fn write_bar(&mut self, _: u8, _: u64, _: &[u8]) {}
            fn bar_regions(&self) -> Vec<BarRegion> {
                Vec::new()
            }
        }
        let relay =
            DoorbellRelay::start(Arc::new(Mutex::new(Plain)), Arc::new(Registry::default()))
                .expect("relay");
        assert!(relay.is_none());
    }
}
