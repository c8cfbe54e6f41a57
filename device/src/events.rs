//! A bounded log of what the device did (MMIO writes, doorbells, TLB hits, misses and fills,
//! invalidations, fault records, completions, interrupts, state changes), for a trace exporter
//! and for tests.
//!
//! The log is a ring: when full, the oldest event is dropped and counted. Every event carries a
//! sequence number from one device-wide counter, so a reader that polls with
//! [`EventLog::read_since`] learns exactly how many events it missed. Event classes can be
//! masked off (hits are the hot path; reads of MMIO registers are off by default).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::addr::{PageSize, VirtAddr};
use crate::commands::Status;
use crate::pci::msix::Delivery;

/// Event class: guest MMIO writes.
pub const EVENT_MMIO_WRITE: u32 = 1 << 0;
/// Event class: guest MMIO reads of the register windows.
pub const EVENT_MMIO_READ: u32 = 1 << 1;
/// Event class: command-queue and invalidation-queue doorbells.
pub const EVENT_DOORBELL: u32 = 1 << 2;
/// Event class: TLB hits.
pub const EVENT_HIT: u32 = 1 << 3;
/// Event class: TLB misses and permission misses.
pub const EVENT_MISS: u32 = 1 << 4;
/// Event class: fills, discarded drop-ins and evictions.
pub const EVENT_FILL: u32 = 1 << 5;
/// Event class: invalidations executed and completed.
pub const EVENT_INVALIDATION: u32 = 1 << 6;
/// Event class: fault records.
pub const EVENT_FAULT: u32 = 1 << 7;
/// Event class: command completions.
pub const EVENT_COMPLETION: u32 = 1 << 8;
/// Event class: interrupts raised.
pub const EVENT_INTERRUPT: u32 = 1 << 9;
/// Event class: context and device state changes, errors, resets.
pub const EVENT_STATE: u32 = 1 << 10;
/// Event class: faults injected by a fault mode (`docs/fault-injection.md`).
pub const EVENT_INJECTED: u32 = 1 << 11;
/// Event class: coherence violations the oracle found (recorded by the oracle, not the device).
pub const EVENT_VIOLATION: u32 = 1 << 12;
/// Every class.
pub const EVENT_ALL: u32 = (1 << 13) - 1;
/// A lean log for long runs: no TLB hits, no register writes or reads, no interrupts (most of
/// the events); markers, misses, drop-ins, invalidations, completions, state changes, injected
/// faults and violations stay.
pub const EVENT_LEAN: u32 =
    EVENT_ALL & !(EVENT_HIT | EVENT_MMIO_WRITE | EVENT_MMIO_READ | EVENT_INTERRUPT);
/// The classes logged unless the VMM says otherwise: all but MMIO reads.
pub const EVENT_DEFAULT: u32 = EVENT_ALL & !EVENT_MMIO_READ;
/// Default capacity of the log in events.
pub const EVENT_LOG_DEFAULT_CAPACITY: usize = 4096;

/// Kinds of invalidation, as in the invalidation descriptor's `kind` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationKind {
    /// An ASID's VA range.
    Range,
    /// Everything of one ASID.
    Asid,
    /// Everything.
    Global,
}

/// Which fault a fault mode injected (one per mode of `docs/fault-injection.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedFault {
    /// `drop-invalidate`: a descriptor reported complete without removing anything.
    DroppedInvalidation,
    /// `delay-invalidate`: a descriptor waited before it executed.
    DelayedInvalidation,
    /// `stall-invalidate`: a descriptor that will not complete before a function reset.
    StalledInvalidation,
    /// `stale-dropin`: a remembered drop-in re-installed after an invalidation removed it.
    StaleDropIn,
    /// `evict`: a TLB hit evicted its entry and took the miss path.
    Eviction,
    /// `spurious-miss`: a TLB hit reported as a miss, the entry kept.
    SpuriousMiss,
    /// `parity-error`: a TLB hit found its entry corrupt; the entry is dropped.
    ParityError,
    /// `ignore-permission`: an entry used for an access its permissions do not allow.
    IgnoredPermission,
    /// `dma-error`: a data DMA failed.
    DataDmaError,
    /// `slow-engine`: an access was slowed down.
    SlowAccess,
    /// `slow-fault`: a fault interrupt was held back after its record was written.
    SlowFaultInterrupt,
    /// `lost-irq`: an interrupt was not raised.
    LostInterrupt,
    /// `duplicate-irq`: an interrupt was raised a second time.
    DuplicateInterrupt,
    /// `reset`: the device reset itself when a command started.
    Reset,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The guest wrote a 32-bit register (BAR0 offset).
    MmioWrite {
        /// BAR0 offset.
        offset: u64,
        /// Value written.
        value: u32,
    },
    /// The guest read a 32-bit register (BAR0 offset).
    MmioRead {
        /// BAR0 offset.
        offset: u64,
        /// Value read.
        value: u32,
    },
    /// A context's command doorbell.
    Doorbell {
        /// Context.
        ctx: u8,
    },
    /// The invalidation queue's doorbell.
    InvalidationDoorbell {
        /// New producer index.
        tail: u32,
    },
    /// A translation hit.
    Hit {
        /// Context.
        ctx: u8,
        /// ASID.
        asid: u16,
        /// Address looked up.
        va: VirtAddr,
        /// Translated guest-physical address.
        gpa: u64,
        /// Fill that created the entry.
        fill_id: u64,
    },
    /// A lookup without a usable translation.
    Miss {
        /// Context.
        ctx: u8,
        /// ASID.
        asid: u16,
        /// Address looked up.
        va: VirtAddr,
        /// Access bits (`FAULT_ACCESS_*`).
        access: u8,
        /// `FAULT_REASON_*`.
        reason: u8,
    },
    /// A drop-in installed an entry.
    Fill {
        /// Context.
        ctx: u8,
        /// ASID.
        asid: u16,
        /// Page base.
        va: VirtAddr,
        /// Frame base.
        gpa: u64,
        /// Page size.
        size: PageSize,
        /// Permission bits.
        perms: u8,
        /// The new entry's fill id.
        fill_id: u64,
    },
    /// A drop-in was discarded (context not ACTIVE or FAULTED).
    DropInDiscarded {
        /// Context.
        ctx: u8,
        /// Requested page.
        va: VirtAddr,
    },
    /// An export became valid (spec §19).
    Export {
        /// Export table index.
        index: u8,
        /// The exporting context.
        owner: u8,
        /// First VA.
        base: u64,
        /// Length in bytes.
        length: u64,
        /// Whether importers may write.
        writable: bool,
    },
    /// An export was revoked (by the driver, or by disabling its owner), with its attachments.
    ExportRevoked {
        /// Export table index.
        index: u8,
        /// Attachments that went with it.
        attachments: u32,
    },
    /// A fill evicted an entry (capacity) — not an invalidation.
    Eviction {
        /// ASID of the evicted entry.
        asid: u16,
        /// Its page base.
        va: VirtAddr,
        /// Its fill id.
        fill_id: u64,
    },
    /// An invalidation descriptor executed.
    Invalidation {
        /// Kind.
        kind: InvalidationKind,
        /// ASID (0 for global).
        asid: u16,
        /// Range start (0 unless RANGE).
        start: u64,
        /// Range end (0 unless RANGE).
        end: u64,
        /// The descriptor's sequence number.
        seq: u64,
        /// Entries removed.
        removed: u64,
        /// Whether fault injection dropped it (reported complete, nothing removed).
        dropped: bool,
    },
    /// Invalidation descriptors up to `seq` are complete and the done word was written.
    InvalidationComplete {
        /// Sequence number written.
        seq: u64,
    },
    /// A fault record was written to the fault ring.
    FaultRecord {
        /// Context.
        ctx: u8,
        /// Faulting address.
        va: VirtAddr,
        /// The record's free-running ring index.
        index: u32,
    },
    /// A command completed.
    Completion {
        /// Context.
        ctx: u8,
        /// Command id.
        id: u64,
        /// Status.
        status: Status,
    },
    /// An interrupt was raised: `None` if fault injection lost it, else what MSI-X did.
    Interrupt {
        /// Vector.
        vector: u16,
        /// Outcome.
        delivery: Option<Delivery>,
    },
    /// A context changed state (`CTX_STATE_*`), with the error code for ERROR.
    ContextState {
        /// Context.
        ctx: u8,
        /// New state.
        state: u32,
        /// Error code (0 unless ERROR).
        error: u16,
    },
    /// A device error was latched.
    DeviceError {
        /// Error code.
        code: u16,
    },
    /// The device was reset (function-level reset through `REG_DEV_CONTROL`, or by the VMM).
    Reset,
    /// A fault mode injected `fault` (for context `ctx` when it concerns one).
    FaultInjected {
        /// Context concerned, if any.
        ctx: Option<u8>,
        /// What was injected.
        fault: InjectedFault,
    },
    /// Software wrote the scratch register (`REG_SCRATCH`): a marker of its own phases.
    Marker {
        /// The value written.
        value: u32,
    },
    /// The coherence oracle found an access or a drop-in the CPU's page tables do not allow.
    Violation {
        /// Context.
        ctx: u8,
        /// ASID.
        asid: u16,
        /// Virtual address.
        va: VirtAddr,
        /// Guest-physical address the device used.
        gpa: u64,
        /// A write (else a read), or a writable drop-in.
        write: bool,
    },
}

impl EventKind {
    /// The context the event belongs to, if it belongs to one.
    pub fn context(&self) -> Option<u8> {
        match *self {
            Self::Doorbell { ctx }
            | Self::Hit { ctx, .. }
            | Self::Miss { ctx, .. }
            | Self::Fill { ctx, .. }
            | Self::DropInDiscarded { ctx, .. }
            | Self::FaultRecord { ctx, .. }
            | Self::Completion { ctx, .. }
            | Self::ContextState { ctx, .. }
            | Self::Violation { ctx, .. } => Some(ctx),
            Self::Export { owner, .. } => Some(owner),
            Self::FaultInjected { ctx, .. } => ctx,
            _ => None,
        }
    }

    /// Whether the event concerns context `ctx` with ASID `asid`: its own events, and evictions
    /// and invalidations of the ASID's entries.
    pub fn concerns(&self, ctx: u8, asid: u16) -> bool {
        match *self {
            Self::Eviction { asid: a, .. } => a == asid,
            Self::Invalidation { kind, asid: a, .. } => {
                kind == InvalidationKind::Global || a == asid
            }
            _ => self.context() == Some(ctx),
        }
    }

    /// The class bit the event belongs to.
    pub fn class(&self) -> u32 {
        match self {
            Self::MmioWrite { .. } => EVENT_MMIO_WRITE,
            Self::MmioRead { .. } => EVENT_MMIO_READ,
            Self::Doorbell { .. } | Self::InvalidationDoorbell { .. } => EVENT_DOORBELL,
            Self::Hit { .. } => EVENT_HIT,
            Self::Miss { .. } => EVENT_MISS,
            Self::Fill { .. } | Self::DropInDiscarded { .. } | Self::Eviction { .. } => EVENT_FILL,
            Self::Invalidation { .. } | Self::InvalidationComplete { .. } => EVENT_INVALIDATION,
            Self::FaultRecord { .. } => EVENT_FAULT,
            Self::Completion { .. } => EVENT_COMPLETION,
            Self::Interrupt { .. } => EVENT_INTERRUPT,
            Self::ContextState { .. } | Self::DeviceError { .. } | Self::Reset => EVENT_STATE,
            Self::Export { .. } | Self::ExportRevoked { .. } => EVENT_STATE,
            Self::FaultInjected { .. } => EVENT_INJECTED,
            Self::Violation { .. } => EVENT_VIOLATION,
            Self::Marker { .. } => EVENT_STATE,
        }
    }
}

impl EventKind {
    /// A short name of the kind (a trace viewer's slice name).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MmioWrite { .. } => "mmio write",
            Self::MmioRead { .. } => "mmio read",
            Self::Doorbell { .. } => "doorbell",
            Self::InvalidationDoorbell { .. } => "invalidation doorbell",
            Self::Hit { .. } => "hit",
            Self::Miss { .. } => "miss",
            Self::Fill { .. } => "drop-in",
            Self::DropInDiscarded { .. } => "drop-in discarded",
            Self::Export { .. } => "export",
            Self::ExportRevoked { .. } => "export revoked",
            Self::Eviction { .. } => "eviction",
            Self::Invalidation { dropped: true, .. } => "invalidation dropped",
            Self::Invalidation { .. } => "invalidation",
            Self::InvalidationComplete { .. } => "invalidation done",
            Self::FaultRecord { .. } => "fault record",
            Self::Completion { .. } => "completion",
            Self::Interrupt { .. } => "interrupt",
            Self::ContextState { .. } => "context state",
            Self::DeviceError { .. } => "device error",
            Self::Reset => "reset",
            Self::FaultInjected { .. } => "injected fault",
            Self::Violation { .. } => "COHERENCE VIOLATION",
            Self::Marker { .. } => "marker",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name();
        match *self {
            Self::MmioWrite { offset, value } | Self::MmioRead { offset, value } => {
                write!(f, "{name} BAR0+{offset:#x} = {value:#x}")
            }
            Self::Doorbell { ctx } => write!(f, "{name} ctx {ctx}"),
            Self::InvalidationDoorbell { tail } => write!(f, "{name} tail {tail}"),
            Self::Hit {
                ctx,
                asid,
                va,
                gpa,
                fill_id,
            } => write!(
                f,
                "{name} ctx {ctx} asid {asid} va {va} -> {gpa:#x} (fill {fill_id})"
            ),
            Self::Miss {
                ctx,
                asid,
                va,
                access,
                reason,
            } => write!(
                f,
                "{name} ctx {ctx} asid {asid} va {va} access {access:#x} reason {reason}"
            ),
            Self::Fill {
                ctx,
                asid,
                va,
                gpa,
                size,
                perms,
                fill_id,
            } => write!(
                f,
                "{name} ctx {ctx} asid {asid} va {va} -> {gpa:#x} size {:#x} perms {perms:#x} \
                 (fill {fill_id})",
                size.bytes()
            ),
            Self::DropInDiscarded { ctx, va } => write!(f, "{name} ctx {ctx} va {va}"),
            Self::Export {
                index,
                owner,
                base,
                length,
                writable,
            } => write!(
                f,
                "{name} #{index} ctx {owner} [{base:#x}, +{length:#x}) {}",
                if writable { "rw" } else { "ro" }
            ),
            Self::ExportRevoked { index, attachments } => {
                write!(f, "{name} #{index} ({attachments} attachments)")
            }
            Self::Eviction { asid, va, fill_id } => {
                write!(f, "{name} asid {asid} va {va} (fill {fill_id})")
            }
            Self::Invalidation {
                kind,
                asid,
                start,
                end,
                seq,
                removed,
                ..
            } => match kind {
                InvalidationKind::Range => write!(
                    f,
                    "{name} #{seq} asid {asid} [{start:#x}, {end:#x}) removed {removed}"
                ),
                InvalidationKind::Asid => {
                    write!(f, "{name} #{seq} asid {asid} (all) removed {removed}")
                }
                InvalidationKind::Global => write!(f, "{name} #{seq} global removed {removed}"),
            },
            Self::InvalidationComplete { seq } => write!(f, "{name} up to #{seq}"),
            Self::FaultRecord { ctx, va, index } => {
                write!(f, "{name} ctx {ctx} va {va} (record {index})")
            }
            Self::Completion { ctx, id, status } => {
                write!(f, "{name} ctx {ctx} command {id} {status:?}")
            }
            Self::Interrupt { vector, delivery } => match delivery {
                Some(delivery) => write!(f, "{name} vector {vector} {delivery:?}"),
                None => write!(f, "{name} vector {vector} lost (injected)"),
            },
            Self::ContextState { ctx, state, error } => {
                write!(f, "{name} ctx {ctx} -> {state} (error {error})")
            }
            Self::DeviceError { code } => write!(f, "{name} code {code}"),
            Self::Reset => f.write_str(name),
            Self::Violation {
                ctx,
                asid,
                va,
                gpa,
                write,
            } => write!(
                f,
                "{name} ctx {ctx} asid {asid} {} va {va} through {gpa:#x}",
                if write { "write" } else { "read" }
            ),
            Self::Marker { value } => write!(f, "{name} {value:#x}"),
            Self::FaultInjected { ctx, fault } => match ctx {
                Some(ctx) => write!(f, "{name} ctx {ctx}: {fault:?}"),
                None => write!(f, "{name}: {fault:?}"),
            },
        }
    }
}

impl std::fmt::Display for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Worker(n) => write!(f, "worker {n}"),
            Self::Mmio => f.write_str("mmio"),
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>14.9} s  #{:<8} {:<9} {}",
            self.time_ns as f64 / 1e9,
            self.seq,
            self.recorder.to_string(),
            self.kind
        )
    }
}

/// The thread that recorded an event: a trace shows each worker's work on its own track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recorder {
    /// Device worker `n` (the engine: accesses, fault records, invalidations, completions).
    Worker(u8),
    /// Any other thread: a vCPU's or the vfio-user server's MMIO path, or the host.
    Mmio,
}

thread_local! {
    /// What [`EventLog::record`] stamps on events this thread records.
    static RECORDER: Cell<Recorder> = const { Cell::new(Recorder::Mmio) };
}

/// Marks the calling thread as device worker `n` for the events it records from now on.
pub fn set_worker_thread(n: u8) {
    RECORDER.with(|r| r.set(Recorder::Worker(n)));
}

/// One logged event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Device-wide sequence number, from 1, without gaps among recorded events.
    pub seq: u64,
    /// Nanoseconds since the log was created (monotonic clock), taken under the log's lock so
    /// that times never decrease along `seq`.
    pub time_ns: u64,
    /// The thread that recorded it.
    pub recorder: Recorder,
    /// What happened.
    pub kind: EventKind,
}

/// Events read by [`EventLog::read_since`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// Events after the requested sequence number still in the log, oldest first.
    pub events: Vec<Event>,
    /// Events after the requested sequence number the log had to drop before this read.
    pub lost: u64,
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    next_seq: u64,
}

/// The bounded event log.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<Ring>,
    mask: AtomicU32,
    started: Instant,
}

impl EventLog {
    /// A log holding at most `capacity` events (at least 1), recording the classes in `mask`.
    pub fn new(capacity: usize, mask: u32) -> Self {
        let capacity = capacity.max(1);
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity),
                capacity,
                next_seq: 1,
            }),
            mask: AtomicU32::new(mask),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // The ring stays consistent even if a holder panicked mid-push.
        self.ring
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Whether events of `class` are recorded.
    pub fn enabled(&self, class: u32) -> bool {
        self.mask.load(Ordering::Relaxed) & class != 0
    }

    /// Records `kind` if its class is enabled.
    pub fn record(&self, kind: EventKind) {
        if !self.enabled(kind.class()) {
            return;
        }
        let recorder = RECORDER.with(Cell::get);
        let mut ring = self.lock();
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        let seq = ring.next_seq;
        ring.next_seq += 1;
        // CAST: u64 nanoseconds cover 584 years of uptime.
        let time_ns = self.started.elapsed().as_nanos() as u64;
        ring.events.push_back(Event {
            seq,
            time_ns,
            recorder,
            kind,
        });
    }

    /// Sets the recorded classes (`EVENT_*` bits).
    pub fn set_mask(&self, mask: u32) {
        self.mask.store(mask, Ordering::Relaxed);
    }

    /// The recorded classes.
    pub fn mask(&self) -> u32 {
        self.mask.load(Ordering::Relaxed)
    }

    /// The newest `n` events that pass `keep`, oldest first (walks the ring from its end under
    /// the lock; copies only what it returns).
    pub fn newest_matching(&self, n: usize, keep: impl Fn(&Event) -> bool) -> Vec<Event> {
        let ring = self.lock();
        let mut found: Vec<Event> = ring
            .events
            .iter()
            .rev()
            .filter(|e| keep(e))
            .take(n)
            .copied()
            .collect();
        found.reverse();
        found
    }

    /// Every event still in the log, oldest first.
    pub fn snapshot(&self) -> Vec<Event> {
        self.lock().events.iter().copied().collect()
    }

    /// Events with a sequence number above `after`, and how many of those were dropped.
    pub fn read_since(&self, after: u64) -> EventBatch {
        let ring = self.lock();
        let oldest = ring.events.front().map_or(ring.next_seq, |event| event.seq);
        EventBatch {
            events: ring
                .events
                .iter()
                .filter(|event| event.seq > after)
                .copied()
                .collect(),
            lost: oldest.saturating_sub(after.saturating_add(1)),
        }
    }

    /// Sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Forgets every event (sequence numbers keep counting).
    pub fn clear(&self) {
        self.lock().events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doorbell(ctx: u8) -> EventKind {
        EventKind::Doorbell { ctx }
    }

    #[test]
    fn events_get_consecutive_sequence_numbers() {
        let log = EventLog::new(8, EVENT_ALL);
        log.record(doorbell(1));
        log.record(EventKind::Reset);
        let events = log.snapshot();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].seq, events[1].seq), (1, 2));
        assert_eq!(events[1].kind, EventKind::Reset);
    }

    #[test]
    fn a_full_log_drops_the_oldest_and_readers_learn_how_many_they_lost() {
        let log = EventLog::new(3, EVENT_ALL);
        for ctx in 0..5 {
            log.record(doorbell(ctx));
        }
        let batch = log.read_since(0);
        assert_eq!(batch.lost, 2);
        assert_eq!(
            batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let batch = log.read_since(4);
        assert_eq!(batch.lost, 0);
        assert_eq!(batch.events.len(), 1);
        assert_eq!(log.read_since(5), EventBatch::default());
    }

    #[test]
    fn masked_classes_are_not_recorded() {
        let log = EventLog::new(8, EVENT_DEFAULT);
        log.record(EventKind::MmioRead {
            offset: 0,
            value: 0,
        });
        assert!(log.snapshot().is_empty());
        log.set_mask(EVENT_ALL & !EVENT_DOORBELL);
        log.record(doorbell(0));
        log.record(EventKind::MmioRead {
            offset: 0,
            value: 0,
        });
        assert_eq!(log.snapshot().len(), 1);
        assert_eq!(log.mask(), EVENT_ALL & !EVENT_DOORBELL);
    }

    #[test]
    fn events_carry_increasing_times_and_their_recording_thread() {
        let log = std::sync::Arc::new(EventLog::new(8, EVENT_ALL));
        log.record(doorbell(0));
        let worker_log = log.clone();
        std::thread::spawn(move || {
            set_worker_thread(3);
            worker_log.record(EventKind::Reset);
        })
        .join()
        .expect("worker thread");
        log.record(doorbell(1));
        let events = log.snapshot();
        let recorders: Vec<Recorder> = events.iter().map(|e| e.recorder).collect();
        assert_eq!(
            recorders,
            [Recorder::Mmio, Recorder::Worker(3), Recorder::Mmio]
        );
        assert!(events.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    }

    #[test]
    fn clear_keeps_counting() {
        let log = EventLog::new(4, EVENT_ALL);
        log.record(EventKind::Reset);
        log.clear();
        assert!(log.snapshot().is_empty());
        log.record(EventKind::Reset);
        assert_eq!(log.snapshot()[0].seq, 2);
        assert_eq!(log.next_seq(), 3);
    }

    #[test]
    fn every_kind_has_exactly_one_class_bit() {
        let kinds = [
            EventKind::MmioWrite {
                offset: 0,
                value: 0,
            },
            doorbell(0),
            EventKind::Interrupt {
                vector: 0,
                delivery: None,
            },
            EventKind::DeviceError { code: 1 },
            EventKind::InvalidationComplete { seq: 1 },
            EventKind::FaultInjected {
                ctx: None,
                fault: InjectedFault::Reset,
            },
        ];
        for kind in kinds {
            assert!(kind.class().is_power_of_two());
            assert_eq!(kind.class() & EVENT_ALL, kind.class());
        }
    }
}
