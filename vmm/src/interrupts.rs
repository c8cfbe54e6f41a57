//! Interrupt delivery: the KVM GSI routing table and the VMM's implementation of
//! [`rmnic_device::interrupt::MsiSink`].
//!
//! Design: every device MSI-X vector that the guest ever makes deliverable gets its own
//! GSI (allocated from 24 up, above the IOAPIC pins) and its own irqfd (an `EventFd`
//! registered once with KVM_IRQFD for that GSI). `configure(v, Some(msg))` puts an MSI
//! route `gsi -> msg` into the table; `configure(v, None)` takes it out, so a write to the
//! eventfd then delivers nothing; `trigger(v)` writes the eventfd and KVM injects the
//! message without a further exit. KVM_SET_GSI_ROUTING replaces the whole table, so every
//! table set is built from scratch by [`routing_table`]: the default legacy routes (PIC
//! pins for GSI 0..=15, IOAPIC pins for GSI 0..=23, as in KVM's `default_routing`) plus
//! all active MSI routes.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::VmFd;
use rmnic_device::interrupt::{MsiMessage, MsiSink};
use vmm_sys_util::eventfd::EventFd;

/// Pins of the in-kernel IOAPIC; GSIs below this are legacy.
pub const IOAPIC_PINS: u32 = 24;
/// GSIs wired to the two 8259 PICs.
pub const PIC_PINS: u32 = 16;
/// First GSI handed out for MSI routes.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// One past the last GSI KVM accepts in a routing table.
pub const GSI_LIMIT: u32 = KVM_MAX_IRQ_ROUTES as u32;
/// PCI allows at most 2048 MSI-X vectors per function.
pub const MAX_VECTORS_PER_DEVICE: u16 = 2048;

/// Errors setting up interrupt delivery.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// All GSIs up to KVM's limit are in use.
    #[error("No free GSI left for MSI routing (limit {GSI_LIMIT})")]
    GsisExhausted,
    /// KVM_SET_GSI_ROUTING failed.
    #[error("Cannot set the GSI routing table")]
    SetRouting(#[source] std::io::Error),
    /// KVM_IRQFD failed.
    #[error("Cannot register irqfd for GSI {gsi}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// eventfd creation failed.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The routing table does not fit KVM's structure.
    #[error("Routing table of {0} entries is too large")]
    TableTooLarge(usize),
}

/// One entry of the GSI routing table, in VMM terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `gsi` drives `pin` of in-kernel irqchip `chip` (KVM_IRQCHIP_*).
    Irqchip {
        /// Global system interrupt number.
        gsi: u32,
        /// KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE or KVM_IRQCHIP_IOAPIC.
        chip: u32,
        /// Pin on that chip.
        pin: u32,
    },
    /// `gsi` sends an MSI with this message.
    Msi {
        /// Global system interrupt number.
        gsi: u32,
        /// Address/data programmed by the guest.
        message: MsiMessage,
    },
}

/// KVM's default routes: GSI n -> IOAPIC pin n (0..=23) and, for n < 16, PIC pin n % 8.
pub fn legacy_routes() -> Vec<Route> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        routes.push(Route::Irqchip {
            gsi,
            chip: KVM_IRQCHIP_IOAPIC,
            pin: gsi,
        });
        if gsi < PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            routes.push(Route::Irqchip {
                gsi,
                chip,
                pin: gsi % 8,
            });
        }
    }
    routes
}

/// The whole table to hand KVM: legacy routes first, then one MSI route per entry.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<Route> {
    let mut routes = legacy_routes();
    routes.extend(
        msi.iter()
            .map(|(&gsi, &message)| Route::Msi { gsi, message }),
    );
    routes
}

/// Converts routes into KVM's flexible-array structure.
pub fn to_kvm_routing(routes: &[Route]) -> Result<KvmIrqRouting, InterruptError> {
    let mut entries = Vec::with_capacity(routes.len());
    for route in routes {
        let mut e = kvm_irq_routing_entry::default();
        match *route {
            Route::Irqchip { gsi, chip, pin } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
            }
            Route::Msi { gsi, message } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_MSI;
                e.u.msi = kvm_irq_routing_msi {
                    address_lo: message.address as u32,
                    address_hi: (message.address >> 32) as u32,
                    data: message.data,
                    ..Default::default()
                };
            }
        }
        entries.push(e);
    }
    KvmIrqRouting::from_entries(&entries).map_err(|_| InterruptError::TableTooLarge(routes.len()))
}

/// What the router needs from KVM; a fake stands in for it in tests.
pub trait IrqBackend: Send + Sync {
    /// Replaces the whole GSI routing table.
    fn set_routes(&self, routes: &[Route]) -> Result<(), InterruptError>;
    /// Makes writes to `evt` raise `gsi`.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError>;
}

impl IrqBackend for VmFd {
    fn set_routes(&self, routes: &[Route]) -> Result<(), InterruptError> {
        self.set_gsi_routing(&to_kvm_routing(routes)?)
            .map_err(|e| InterruptError::SetRouting(e.into()))
    }

    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        VmFd::register_irqfd(self, evt, gsi).map_err(|e| InterruptError::Irqfd {
            gsi,
            source: e.into(),
        })
    }
}

/// Owner of the VM's GSI space and routing table.
pub struct GsiRouter {
    backend: Arc<dyn IrqBackend>,
    /// Guards the MSI routes and the allocator. Lock order: a [`DeviceMsi`]'s `vectors`
    /// lock, then this one; never the other way round.
    state: Mutex<RouterState>,
}

struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

impl GsiRouter {
    /// A router over `backend`; installs the legacy table right away so the table KVM
    /// holds is always one this router built.
    pub fn new(backend: Arc<dyn IrqBackend>) -> Result<Self, InterruptError> {
        backend.set_routes(&legacy_routes())?;
        Ok(Self {
            backend,
            state: Mutex::new(RouterState {
                next_gsi: FIRST_MSI_GSI,
                msi: BTreeMap::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands out a fresh GSI for MSI use.
    pub fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        let mut st = self.state();
        if st.next_gsi >= GSI_LIMIT {
            return Err(InterruptError::GsisExhausted);
        }
        let gsi = st.next_gsi;
        st.next_gsi += 1;
        Ok(gsi)
    }

    /// Sets (`Some`) or removes (`None`) the MSI route of `gsi` and pushes the whole table.
    pub fn set_msi_route(
        &self,
        gsi: u32,
        message: Option<MsiMessage>,
    ) -> Result<(), InterruptError> {
        let mut st = self.state();
        let changed = match message {
            Some(m) => st.msi.insert(gsi, m) != Some(m),
            None => st.msi.remove(&gsi).is_some(),
        };
        if changed {
            self.backend.set_routes(&routing_table(&st.msi))?;
        }
        Ok(())
    }

    /// Registers `evt` as the irqfd of `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        self.backend.register_irqfd(evt, gsi)
    }
}

/// One device vector's delivery state.
struct VectorRoute {
    gsi: u32,
    evt: EventFd,
    active: bool,
}

/// The [`MsiSink`] handed to one PCI device.
pub struct DeviceMsi {
    name: String,
    router: Arc<GsiRouter>,
    /// Per-vector GSI, irqfd and whether a route is installed. Taken before the router's
    /// lock (see [`GsiRouter`]).
    vectors: Mutex<BTreeMap<u16, VectorRoute>>,
    /// Triggers of vectors without an installed route (guest or device bug), for tests
    /// and diagnostics.
    dropped: AtomicU64,
}

impl DeviceMsi {
    /// A sink for the device called `name` (used in logs).
    pub fn new(name: impl Into<String>, router: Arc<GsiRouter>) -> Self {
        Self {
            name: name.into(),
            router,
            vectors: Mutex::new(BTreeMap::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Triggers that found no installed route.
    pub fn dropped_triggers(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The GSI of `vector`, once it has been configured at least once.
    pub fn gsi_of(&self, vector: u16) -> Option<u32> {
        self.vectors().get(&vector).map(|v| v.gsi)
    }

    fn vectors(&self) -> MutexGuard<'_, BTreeMap<u16, VectorRoute>> {
        self.vectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_configure(
        &self,
        vector: u16,
        message: Option<MsiMessage>,
    ) -> Result<(), InterruptError> {
        let mut vectors = self.vectors();
        let route = match vectors.entry(vector) {
            Entry::Occupied(e) => e.into_mut(),
            // Never routed: nothing to take down.
            Entry::Vacant(_) if message.is_none() => return Ok(()),
            Entry::Vacant(e) => {
                let gsi = self.router.allocate_gsi()?;
                let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
                self.router.register_irqfd(&evt, gsi)?;
                tracing::debug!(device = %self.name, vector, gsi, "MSI vector gets GSI");
                e.insert(VectorRoute {
                    gsi,
                    evt,
                    active: false,
                })
            }
        };
        self.router.set_msi_route(route.gsi, message)?;
        route.active = message.is_some();
        Ok(())
    }
}

impl MsiSink for DeviceMsi {
    fn configure(&self, vector: u16, message: Option<MsiMessage>) {
        if vector >= MAX_VECTORS_PER_DEVICE {
            tracing::warn!(device = %self.name, vector, "MSI-X vector out of range; ignored");
            return;
        }
        if let Err(e) = self.try_configure(vector, message) {
            tracing::error!(device = %self.name, vector, "cannot route MSI vector: {e}");
        }
    }

    fn trigger(&self, vector: u16) {
        let vectors = self.vectors();
        match vectors.get(&vector) {
            Some(route) if route.active => {
                if let Err(e) = route.evt.write(1) {
                    tracing::error!(device = %self.name, vector, "irqfd write failed: {e}");
                }
            }
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device = %self.name, vector, "trigger of an unrouted MSI vector dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what KVM would have been told.
    #[derive(Default)]
    struct FakeKvm {
        tables: Mutex<Vec<Vec<Route>>>,
        irqfds: Mutex<Vec<(EventFd, u32)>>,
    }

    impl IrqBackend for FakeKvm {
        fn set_routes(&self, routes: &[Route]) -> Result<(), InterruptError> {
            self.tables.lock().expect("lock").push(routes.to_vec());
            Ok(())
        }
        fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
            let clone = evt.try_clone().map_err(InterruptError::EventFd)?;
            self.irqfds.lock().expect("lock").push((clone, gsi));
            Ok(())
        }
    }

    impl FakeKvm {
        fn last_table(&self) -> Vec<Route> {
            self.tables
                .lock()
                .expect("lock")
                .last()
                .cloned()
                .unwrap_or_default()
        }
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data,
        }
    }

    fn setup() -> (Arc<FakeKvm>, DeviceMsi) {
        let kvm = Arc::new(FakeKvm::default());
        let router = Arc::new(GsiRouter::new(kvm.clone()).expect("router"));
        (kvm, DeviceMsi::new("test", router))
    }

    fn assert_has_legacy_routes(table: &[Route]) {
        for gsi in 0..IOAPIC_PINS {
            assert!(table.contains(&Route::Irqchip {
                gsi,
                chip: KVM_IRQCHIP_IOAPIC,
                pin: gsi
            }));
        }
        for gsi in 0..PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            assert!(table.contains(&Route::Irqchip {
                gsi,
                chip,
                pin: gsi % 8
            }));
        }
    }

    #[test]
    fn legacy_table_matches_kvm_default_routing() {
        let t = legacy_routes();
        assert_eq!(t.len(), 24 + 16);
        assert_has_legacy_routes(&t);
    }

    #[test]
    fn every_table_set_keeps_legacy_routes() {
        let (kvm, dev) = setup();
        dev.configure(0, Some(msg(0x41)));
        dev.configure(1, Some(msg(0x42)));
        dev.configure(0, None);
        let tables = kvm.tables.lock().expect("lock").clone();
        assert_eq!(tables.len(), 4, "initial + three changes");
        for t in &tables {
            assert_has_legacy_routes(t);
        }
    }

    #[test]
    fn msi_gsis_start_above_ioapic_pins_one_per_vector() {
        let (kvm, dev) = setup();
        dev.configure(3, Some(msg(0x30)));
        dev.configure(0, Some(msg(0x31)));
        assert_eq!(dev.gsi_of(3), Some(24));
        assert_eq!(dev.gsi_of(0), Some(25));
        let t = kvm.last_table();
        assert!(t.contains(&Route::Msi {
            gsi: 24,
            message: msg(0x30)
        }));
        assert!(t.contains(&Route::Msi {
            gsi: 25,
            message: msg(0x31)
        }));
        let irqfds = kvm.irqfds.lock().expect("lock");
        assert_eq!(
            irqfds.iter().map(|(_, g)| *g).collect::<Vec<_>>(),
            vec![24, 25]
        );
    }

    #[test]
    fn reconfiguring_updates_route_in_place_and_keeps_gsi() {
        let (kvm, dev) = setup();
        dev.configure(0, Some(msg(0x30)));
        dev.configure(0, Some(msg(0x55)));
        assert_eq!(dev.gsi_of(0), Some(24));
        let msi: Vec<_> = kvm
            .last_table()
            .into_iter()
            .filter(|r| matches!(r, Route::Msi { .. }))
            .collect();
        assert_eq!(
            msi,
            vec![Route::Msi {
                gsi: 24,
                message: msg(0x55)
            }]
        );
        assert_eq!(
            kvm.irqfds.lock().expect("lock").len(),
            1,
            "irqfd registered once"
        );
    }

    #[test]
    fn unchanged_message_does_not_reset_the_table() {
        let (kvm, dev) = setup();
        dev.configure(0, Some(msg(1)));
        let n = kvm.tables.lock().expect("lock").len();
        dev.configure(0, Some(msg(1)));
        assert_eq!(kvm.tables.lock().expect("lock").len(), n);
    }

    #[test]
    fn trigger_writes_the_vectors_eventfd() {
        let (kvm, dev) = setup();
        dev.configure(2, Some(msg(0x40)));
        dev.trigger(2);
        let irqfds = kvm.irqfds.lock().expect("lock");
        assert_eq!(irqfds[0].0.read().expect("eventfd signalled"), 1);
        assert_eq!(dev.dropped_triggers(), 0);
    }

    #[test]
    fn masked_vector_trigger_is_dropped_and_route_removed() {
        let (kvm, dev) = setup();
        dev.configure(0, Some(msg(0x40)));
        dev.configure(0, None);
        assert!(!kvm
            .last_table()
            .iter()
            .any(|r| matches!(r, Route::Msi { .. })));
        dev.trigger(0);
        dev.trigger(9); // never configured
        assert_eq!(dev.dropped_triggers(), 2);
        assert!(
            kvm.irqfds.lock().expect("lock")[0].0.read().is_err(),
            "no write"
        );
    }

    #[test]
    fn none_for_unknown_vector_allocates_nothing() {
        let (kvm, dev) = setup();
        dev.configure(5, None);
        assert_eq!(dev.gsi_of(5), None);
        assert_eq!(kvm.tables.lock().expect("lock").len(), 1);
    }

    #[test]
    fn out_of_range_vector_is_ignored() {
        let (_kvm, dev) = setup();
        dev.configure(MAX_VECTORS_PER_DEVICE, Some(msg(1)));
        assert_eq!(dev.gsi_of(MAX_VECTORS_PER_DEVICE), None);
    }

    #[test]
    fn kvm_conversion_splits_msi_address() {
        let table = routing_table(&BTreeMap::from([(
            30,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            },
        )]));
        let kvm = to_kvm_routing(&table).expect("fits");
        let entries = kvm.as_slice();
        assert_eq!(entries.len(), table.len());
        let last = entries[entries.len() - 1];
        assert_eq!((last.gsi, last.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was built with type MSI, so `msi` is the initialised member.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
        let first = entries[0];
        assert_eq!(first.type_, KVM_IRQ_ROUTING_IRQCHIP);
        // SAFETY: the entry was built with type IRQCHIP, so `irqchip` is initialised.
        let c = unsafe { first.u.irqchip };
        assert_eq!((c.irqchip, c.pin), (KVM_IRQCHIP_IOAPIC, 0));
    }

    #[test]
    fn gsis_run_out_at_kvm_limit() {
        let kvm = Arc::new(FakeKvm::default());
        let router = GsiRouter::new(kvm).expect("router");
        for _ in FIRST_MSI_GSI..GSI_LIMIT {
            router.allocate_gsi().expect("free gsi");
        }
        assert!(matches!(
            router.allocate_gsi(),
            Err(InterruptError::GsisExhausted)
        ));
    }
}
