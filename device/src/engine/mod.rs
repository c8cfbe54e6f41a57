//! The engine: device state shared between the MMIO paths (vCPU threads, through the VMM) and
//! the worker threads that execute commands and invalidations.
//!
//! # Lock order
//!
//! Locks are taken in this order and never the other way (a thread holding a later lock never
//! waits for an earlier one):
//!
//! 1. `contexts[i]` — ascending `i` when several are needed (only reset and device disable);
//! 1. (b) `segments` — read by accesses through a segment for the whole access, like the TLB;
//!    written by export and attachment register writes and context disables;
//! 2. `asids`;
//! 3. `fault_ring`;
//! 4. `invq`;
//! 4. (b) `fabric.exporter` — the remote exports and their grants (an invalidation forwards
//!    under `invq`; an access from the peer holds it for its whole access);
//! 5. `global`;
//! 6. `tlb` (read by accesses, write by fills, invalidations and flushes);
//! 7. `msix`;
//! 8. leaves: the event log, the scheduler and the reset signal.
//!
//! A worker holds its context's lock for one step of a command (at most one access of at most
//! [`access::ACCESS_MAX_BYTES`] bytes), so MMIO on that context waits at most that long.
//! The TLB read lock is held from lookup to the end of the access's data movement: an
//! invalidation, which takes the write lock, therefore completes only after every access that
//! used an entry it removed.

pub mod access;
pub mod dma;
mod exec;
pub(crate) mod reset_signal;
pub(crate) mod scheduler;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::context::{Context, ContextState};
use crate::error_code::ErrorCode;
use crate::events::{EventKind, EventLog, InjectedFault};
use crate::fabric::Fabric;
use crate::fault_ring::FaultRing;
use crate::inject::{DmaPurpose, FaultInjector};
use crate::invalidation::InvalidationQueue;
use crate::pci::msix::Msix;
use crate::regs::{
    RegisterBlock, DEV_CONTROL_ENABLE, GLOBAL_REGISTERS, NUM_CONTEXTS, REG_DEV_CONTROL,
    REG_DEV_ERROR,
};
use crate::rmnic::VECTOR_ERROR;
use crate::segments::SegmentTable;
use crate::stats::{ContextCounter, ContextStats, GlobalCounter, GlobalStats};
use crate::tlb::{DeviceTlb, Removal, TlbEntry};

use self::dma::{Dma, GuestRam};
use self::reset_signal::ResetSignal;
use self::scheduler::{Job, Scheduler};

pub(crate) use self::worker::run_worker;

/// Locks a mutex; a panic on another thread while holding it is a bug in the device model,
/// and the state it guards is still the best information there is, so poison is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// State shared by the MMIO paths and the workers. Field order is lock order.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Guest RAM as the host maps it now. rmnic-vmm sets it once; a vfio-user server
    /// replaces it as the client maps and unmaps DMA regions ([`Shared::set_memory`]).
    pub(crate) mem: RwLock<Arc<GuestRam>>,
    /// Oracle and fault-injection hooks.
    pub(crate) injector: Arc<dyn FaultInjector>,
    /// Lock 1: the contexts.
    pub(crate) contexts: Vec<Mutex<Context>>,
    /// Lock 1b: the export table and the attachment slots (spec §19).
    pub(crate) segments: RwLock<SegmentTable>,
    /// Lock 2: ASID → owning context, for the enabled contexts.
    pub(crate) asids: Mutex<HashMap<u16, u8>>,
    /// Lock 3: the fault ring.
    pub(crate) fault_ring: Mutex<FaultRing>,
    /// Lock 4: the invalidation queue.
    pub(crate) invq: Mutex<InvalidationQueue>,
    /// Lock 5: the global registers (including the `REG_DEV_ERROR` latch).
    pub(crate) global: Mutex<RegisterBlock>,
    /// Lock 6: the device TLB.
    pub(crate) tlb: RwLock<DeviceTlb>,
    /// Lock 7: MSI-X table, PBA and enable state.
    pub(crate) msix: Mutex<Msix>,
    /// Remote segments (spec §20): the link, the exporter's grants (lock 4b), the remote TLB
    /// (leaf).
    pub(crate) fabric: Fabric,
    /// The event log (leaf lock).
    pub(crate) events: Arc<EventLog>,
    /// The run queue (leaf lock).
    pub(crate) scheduler: Scheduler,
    /// Function resets counted (leaf lock), announced by the reset while it holds every
    /// other lock.
    pub(crate) resets: ResetSignal,
    /// Global counters.
    pub(crate) stats: GlobalStats,
    /// Per-context counters.
    pub(crate) ctx_stats: Vec<ContextStats>,
    /// `DEV_CONTROL.ENABLE && DEV_ERROR == 0`, mirrored for the workers; written with
    /// `global` held.
    pub(crate) running: AtomicBool,
    /// Guest accesses refused since construction.
    pub(crate) access_errors: AtomicU64,
}

impl Shared {
    /// Device state after reset.
    pub(crate) fn new(
        mem: GuestRam,
        tlb: DeviceTlb,
        msix: Msix,
        events: Arc<EventLog>,
        injector: Arc<dyn FaultInjector>,
    ) -> Self {
        Self {
            mem: RwLock::new(Arc::new(mem)),
            injector,
            // CAST: NUM_CONTEXTS <= 255 (checked in regs.rs).
            contexts: (0..NUM_CONTEXTS)
                .map(|i| Mutex::new(Context::new(i as u8)))
                .collect(),
            segments: RwLock::new(SegmentTable::default()),
            fabric: Fabric::default(),
            asids: Mutex::new(HashMap::new()),
            fault_ring: Mutex::new(FaultRing::default()),
            invq: Mutex::new(InvalidationQueue::default()),
            global: Mutex::new(RegisterBlock::new(&GLOBAL_REGISTERS)),
            tlb: RwLock::new(tlb),
            msix: Mutex::new(msix),
            events,
            scheduler: Scheduler::default(),
            resets: ResetSignal::default(),
            stats: GlobalStats::default(),
            ctx_stats: (0..NUM_CONTEXTS).map(|_| ContextStats::default()).collect(),
            running: AtomicBool::new(false),
            access_errors: AtomicU64::new(0),
        }
    }

    /// DMA for `purpose`.
    pub(crate) fn dma(&self, purpose: DmaPurpose) -> Dma<'_> {
        Dma::snapshot(self.memory(), &*self.injector, purpose)
    }

    /// The current memory map.
    pub(crate) fn memory(&self) -> Arc<GuestRam> {
        self.mem
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Replaces the memory map and waits until no access through the old one is left: after
    /// it returns the device touches only `mem` (what a vfio-user DMA unmap requires before
    /// its reply). The wait lasts as long as the oldest snapshot: a worker holds one for a
    /// command step, including the completion interrupt it raises, and for an invalidation
    /// batch, including any delay a fault injector adds.
    pub(crate) fn set_memory(&self, mem: GuestRam) {
        let old = std::mem::replace(
            &mut *self
                .mem
                .write()
                .unwrap_or_else(|poison| poison.into_inner()),
            Arc::new(mem),
        );
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(_) => return,
                Err(still_used) => {
                    old = still_used;
                    std::thread::yield_now();
                }
            }
        }
    }

    /// The TLB for lookups.
    pub(crate) fn tlb_read(&self) -> RwLockReadGuard<'_, DeviceTlb> {
        self.tlb.read().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The TLB for changes.
    pub(crate) fn tlb_write(&self) -> RwLockWriteGuard<'_, DeviceTlb> {
        self.tlb
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The segment table for lookups (held by an access through a segment until it ends).
    pub(crate) fn segments_read(&self) -> RwLockReadGuard<'_, SegmentTable> {
        self.segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The segment table for changes: returns once no access through a segment is running.
    pub(crate) fn segments_write(&self) -> RwLockWriteGuard<'_, SegmentTable> {
        self.segments
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The counters of context `ctx` (context numbers come from the device, never the guest).
    pub(crate) fn ctx_stats(&self, ctx: u8) -> Option<&ContextStats> {
        self.ctx_stats.get(usize::from(ctx))
    }

    /// Whether the engine may run (device enabled, no device error).
    pub(crate) fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Recomputes [`Shared::running`] from the global registers (caller holds `global`).
    pub(crate) fn update_running(&self, global: &RegisterBlock) {
        let running = global.value(REG_DEV_CONTROL) & DEV_CONTROL_ENABLE != 0
            && global.value(REG_DEV_ERROR) == 0;
        self.running.store(running, Ordering::Release);
    }

    /// Raises `vector`, unless fault injection loses it (or raises it twice). Never call
    /// with the TLB locked.
    pub(crate) fn raise(&self, vector: u16) {
        if !self.injector.interrupt(vector) {
            self.injected(None, InjectedFault::LostInterrupt);
            self.events.record(EventKind::Interrupt {
                vector,
                delivery: None,
            });
            return;
        }
        // The vector numbers are the device's constants, all below the table size.
        let delivery = lock(&self.msix).raise(vector).ok();
        self.events
            .record(EventKind::Interrupt { vector, delivery });
        if self.injector.duplicate_interrupt(vector) {
            self.injected(None, InjectedFault::DuplicateInterrupt);
            let delivery = lock(&self.msix).raise(vector).ok();
            self.events
                .record(EventKind::Interrupt { vector, delivery });
        }
    }

    /// Records that fault injection injected `fault` (for `ctx`).
    pub(crate) fn injected(&self, ctx: Option<u8>, fault: InjectedFault) {
        self.events.record(EventKind::FaultInjected { ctx, fault });
    }

    /// The callback TLB removals report to: statistics and the event log.
    pub(crate) fn on_removed(&self) -> impl FnMut(&TlbEntry, Removal) + '_ {
        move |entry, why| match why {
            Removal::Invalidated => {
                self.stats.count(GlobalCounter::EntriesRemoved, 1);
                if let Some(stats) = self.ctx_stats(entry.fill.ctx) {
                    stats.count(ContextCounter::InvalidatedEntries, 1);
                }
            }
            Removal::Evicted => self.events.record(EventKind::Eviction {
                asid: entry.fill.asid,
                va: entry.fill.va,
                fill_id: entry.fill_id,
            }),
            Removal::Replaced => {}
        }
    }

    /// Latches a device error: the first code stays in `REG_DEV_ERROR`, the engine stops, the
    /// whole TLB is flushed (an invalidation that could not execute must not leave stale
    /// entries usable later), and `VECTOR_ERROR` fires. Caller holds no TLB lock.
    pub(crate) fn device_error(&self, code: ErrorCode) {
        {
            let mut global = lock(&self.global);
            if global.value(REG_DEV_ERROR) == 0 {
                global.set(REG_DEV_ERROR, u32::from(code.code()));
            }
            self.update_running(&global);
            let mut tlb = self.tlb_write();
            tlb.invalidate_all(&mut self.on_removed());
        }
        self.stats.count(GlobalCounter::Errors, 1);
        self.events
            .record(EventKind::DeviceError { code: code.code() });
        tracing::warn!("rmnic: device error {code:?}");
        self.raise(VECTOR_ERROR);
    }

    /// Puts a context into ERROR with `code` and raises `VECTOR_ERROR`. Its command in flight
    /// stays unfinished (no completion) until the driver disables the context.
    pub(crate) fn context_error(&self, ctx: &mut Context, code: ErrorCode) {
        ctx.state = ContextState::Error;
        ctx.error = code;
        ctx.fault = None;
        lock(&self.fault_ring).cancel(ctx.index);
        self.stats.count(GlobalCounter::Errors, 1);
        self.events.record(EventKind::ContextState {
            ctx: ctx.index,
            state: ctx.state.bits(),
            error: code.code(),
        });
        tracing::debug!(ctx = ctx.index, "rmnic: context error {code:?}");
        self.raise(VECTOR_ERROR);
    }

    /// Records a context state change in the event log.
    pub(crate) fn note_state(&self, ctx: &Context) {
        self.events.record(EventKind::ContextState {
            ctx: ctx.index,
            state: ctx.state.bits(),
            error: 0,
        });
    }

    /// Schedules every ACTIVE context and the invalidation queue (after the engine restarts).
    pub(crate) fn kick_all(&self) {
        for (i, ctx) in self.contexts.iter().enumerate() {
            if lock(ctx).state == ContextState::Active {
                // CAST: i < NUM_CONTEXTS <= 255.
                self.scheduler.schedule(Job::Context(i as u8));
            }
        }
        self.scheduler.schedule(Job::Invalidations);
    }
}
