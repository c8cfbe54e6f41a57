//! The fault modes a host's `--fault` names, one small injector each. Each documents the
//! hardware fault it models; `docs/fault-injection.md` gives the device and driver outcomes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::chance::Chance;
use super::{DmaAccess, DmaPurpose, DmaVerdict, DropIn, FaultInjector, InvalidationVerdict};
use crate::addr::VirtAddr;
use crate::engine::dma::GuestRam;
use crate::events::InvalidationKind;
use crate::invalidation::InvalidationDescriptor;

/// `drop-invalidate[:RATE]`: invalidations are reported complete while the entries they
/// name stay in the TLB: a device that acknowledges shootdowns without doing them. The
/// driver believes the device coherent; only the oracle can tell.
#[derive(Debug)]
pub struct DropInvalidations(pub Chance);

impl FaultInjector for DropInvalidations {
    fn invalidation(&self, _descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        if self.0.fires() {
            InvalidationVerdict::Drop
        } else {
            InvalidationVerdict::Perform
        }
    }
}

/// `ignore-permission`: the device uses an entry for an access its permissions do not allow
/// (a write through a read-only entry) instead of taking the permission miss. The CPU's PTE
/// does not allow it either, so the oracle must report it.
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnorePermissions;

impl FaultInjector for IgnorePermissions {
    fn ignore_permission(&self, _ctx: u8, _va: VirtAddr) -> bool {
        true
    }
}

/// `evict:RATE`: TLB hits evict their entry and take the miss path instead (capacity
/// pressure, or a TLB that drops entries early). More misses, still coherent.
#[derive(Debug)]
pub struct EvictOnHit(pub Chance);

impl FaultInjector for EvictOnHit {
    fn evict_on_hit(&self, _ctx: u8, _va: VirtAddr) -> bool {
        self.0.fires()
    }
}

/// `spurious-miss[:RATE]`: a TLB hit reported as a miss while the entry stays (a lookup
/// that loses a race with its own fill, a tag compare glitch). The driver resolves the
/// fault and drops the same translation in again, replacing the entry. More misses, still
/// coherent.
#[derive(Debug)]
pub struct SpuriousMiss(pub Chance);

impl FaultInjector for SpuriousMiss {
    fn spurious_miss(&self, _ctx: u8, _va: VirtAddr) -> bool {
        self.0.fires()
    }
}

/// `parity-error[:RATE]`: a TLB hit finds its entry corrupt (a parity or ECC error in the
/// TLB array). The device drops the entry and fails the command that used it with
/// DEVICE_ERROR; the context goes on, and the next access to the page misses.
#[derive(Debug)]
pub struct ParityError(pub Chance);

impl FaultInjector for ParityError {
    fn parity_error(&self, _ctx: u8, _va: VirtAddr) -> bool {
        self.0.fires()
    }
}

/// `dma-error:RATE`: data DMAs (the bytes a command moves at a translated address) fail, as
/// a bus error would. That command completes with DEVICE_ERROR; the context goes on.
#[derive(Debug)]
pub struct DataDmaError(pub Chance);

impl FaultInjector for DataDmaError {
    fn dma(&self, access: &DmaAccess) -> DmaVerdict {
        if access.purpose == DmaPurpose::Data && self.0.fires() {
            DmaVerdict::Fail
        } else {
            DmaVerdict::Proceed
        }
    }
}

/// `lost-irq[:RATE]`: interrupts are not raised (a lost MSI write). Interrupts are hints:
/// the driver's polling fallback finds the work.
#[derive(Debug)]
pub struct LostInterrupts(pub Chance);

impl FaultInjector for LostInterrupts {
    fn interrupt(&self, _vector: u16) -> bool {
        !self.0.fires()
    }
}

/// `duplicate-irq[:RATE]`: interrupts are raised twice (a retried MSI write). Harmless to a
/// driver that reads the authoritative state in memory and registers.
#[derive(Debug)]
pub struct DuplicateInterrupts(pub Chance);

impl FaultInjector for DuplicateInterrupts {
    fn duplicate_interrupt(&self, _vector: u16) -> bool {
        self.0.fires()
    }
}

/// `delay-invalidate:DURATION`: every invalidation waits DURATION before it executes (a slow
/// invalidation engine). Still coherent; the driver's notifier waits longer.
#[derive(Clone, Copy, Debug)]
pub struct DelayInvalidations(pub Duration);

impl FaultInjector for DelayInvalidations {
    fn invalidation(&self, _descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        InvalidationVerdict::Delay(self.0)
    }
}

/// `slow-engine:DURATION`: every chunk of a translated access (the data moved through one
/// page) takes DURATION longer (a slow data path or a congested bus). Commands take longer;
/// invalidations do not wait for the delay (it is taken after the TLB read section).
#[derive(Clone, Copy, Debug)]
pub struct SlowEngine(pub Duration);

impl FaultInjector for SlowEngine {
    fn access_delay(&self, _ctx: u8) -> Duration {
        self.0
    }
}

/// `slow-fault:DURATION`: the fault interrupt comes DURATION after the fault record is
/// written (a slow interrupt path), widening the window between a fault record and the
/// drop-in that resolves it, where invalidations can race with the driver's page walk.
#[derive(Clone, Copy, Debug)]
pub struct SlowFaultInterrupts(pub Duration);

impl FaultInjector for SlowFaultInterrupts {
    fn fault_interrupt_delay(&self, _ctx: u8) -> Duration {
        self.0
    }
}

/// `stall-invalidate[:N]`: the N-th invalidation descriptor never completes (a hung
/// invalidation engine): it and every later one wait, nothing is written to the done word,
/// until a function reset abandons them.
#[derive(Debug)]
pub struct StallInvalidation {
    /// Which descriptor stalls, from 1.
    pub nth: u64,
    seen: AtomicU64,
}

impl StallInvalidation {
    /// Stalls the `nth` descriptor (from 1).
    pub fn new(nth: u64) -> Self {
        Self {
            nth,
            seen: AtomicU64::new(0),
        }
    }
}

impl FaultInjector for StallInvalidation {
    fn invalidation(&self, _descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        if self.seen.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == self.nth {
            InvalidationVerdict::Stall
        } else {
            InvalidationVerdict::Perform
        }
    }
}

/// `reset:N`: when the engine starts its N-th command the device performs a function reset
/// on its own (a firmware watchdog or an internal error that resets the function). Commands
/// in flight get no completion; every context is FREE; `DEV_STATUS` no longer reads ENABLED.
#[derive(Debug)]
pub struct ResetOnCommand {
    /// Which command triggers it, from 1.
    pub nth: u64,
    started: AtomicU64,
}

impl ResetOnCommand {
    /// Resets when the `nth` command (from 1) starts.
    pub fn new(nth: u64) -> Self {
        Self {
            nth,
            started: AtomicU64::new(0),
        }
    }
}

impl FaultInjector for ResetOnCommand {
    fn reset_on_command(&self, _ctx: u8) -> bool {
        self.started.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == self.nth
    }
}

/// Drop-ins a [`StaleDropIns`] remembers.
const STALE_DROPINS_REMEMBERED: usize = 256;

/// `stale-dropin`: a device bug: the drop-in path races past an invalidation of the same
/// range, so translations dropped in before the invalidation are installed again after it
/// removed them and before its completion is reported. The driver cannot tell; the oracle
/// must report the re-installed translations once the CPU's page tables no longer name them.
///
/// It remembers the last [`STALE_DROPINS_REMEMBERED`] drop-ins and re-installs each at most
/// once: a re-installed translation is forgotten, and its own drop-in report is not
/// remembered again.
#[derive(Debug, Default)]
pub struct StaleDropIns {
    state: Mutex<StaleState>,
}

#[derive(Debug, Default)]
struct StaleState {
    /// The last drop-ins, oldest first.
    remembered: VecDeque<DropIn>,
    /// Translations handed out for re-installation whose drop-in report is still to come.
    echoes: Vec<(u16, VirtAddr)>,
}

impl StaleDropIns {
    fn state(&self) -> std::sync::MutexGuard<'_, StaleState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Whether `descriptor` removes the entry `dropin` installed.
fn removes(descriptor: &InvalidationDescriptor, dropin: &DropIn) -> bool {
    match descriptor.kind {
        InvalidationKind::Global => true,
        InvalidationKind::Asid => dropin.asid == descriptor.asid,
        InvalidationKind::Range => {
            dropin.asid == descriptor.asid
                && descriptor.range.is_some_and(|range| {
                    dropin.va.0 < range.end().0
                        && dropin.va.0.saturating_add(dropin.size) > range.start().0
                })
        }
    }
}

impl FaultInjector for StaleDropIns {
    fn dropped_in(&self, dropin: &DropIn, _memory: &GuestRam) {
        let mut state = self.state();
        let key = (dropin.asid, dropin.va);
        if let Some(echo) = state.echoes.iter().position(|e| *e == key) {
            state.echoes.swap_remove(echo);
            return;
        }
        if state.remembered.len() == STALE_DROPINS_REMEMBERED {
            state.remembered.pop_front();
        }
        state.remembered.push_back(*dropin);
    }

    fn stale_dropins(&self, descriptor: &InvalidationDescriptor) -> Vec<DropIn> {
        let mut state = self.state();
        let (stale, kept): (Vec<DropIn>, Vec<DropIn>) = state
            .remembered
            .drain(..)
            .partition(|dropin| removes(descriptor, dropin));
        state.remembered = kept.into();
        state.echoes.extend(stale.iter().map(|d| (d.asid, d.va)));
        stale
    }
}
