//! The coherence oracle: checks every translated device access against the CPU's page tables
//! as they are at that moment. rmnic-vmm and rmnic-device-server install it (`--coherence-check`).
//!
//! It sits on the device's single translate-and-access path through the
//! [`FaultInjector::translated`] hook, which reports each chunk of an access after the data
//! moved and before the TLB read section ends: the device's entry is still in use, so no
//! invalidation of it can have completed, so the kernel cannot have changed the PTE yet (it
//! changes a PTE only after the mmu-notifier invalidation returned, and the driver returns only
//! once the device reports the invalidation done). The PTE must therefore still map the frame
//! the device used, present, and writable for a write. Anything else is a coherence violation:
//! the device used a translation the CPU no longer has.
//!
//! Other hooks pass through to an inner injector, so fault injection composes with the oracle.

pub mod page_walk;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::addr::VirtAddr;
use crate::engine::dma::GuestRam;
use crate::events::{Event, EventKind, EventLog};
use crate::fault_ring::{FAULT_ACCESS_READ, FAULT_ACCESS_WRITE};
use crate::inject::{
    DmaAccess, DmaVerdict, DropIn, FaultInjector, InvalidationVerdict, TranslatedAccess,
};
use crate::invalidation::InvalidationDescriptor;

use self::page_walk::{walk, Walk};

/// How much the oracle checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckMode {
    /// Nothing.
    Off,
    /// Every translated access.
    Full,
    /// One translated access in N (N >= 1).
    Sample(u64),
}

impl std::str::FromStr for CheckMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "full" => Ok(Self::Full),
            _ => match s.strip_prefix("sample:").map(str::parse::<u64>) {
                Some(Ok(n)) if n >= 1 => Ok(Self::Sample(n)),
                _ => Err(format!(
                    "'{s}' is not a check mode: use off, full or sample:N (N >= 1)"
                )),
            },
        }
    }
}

/// What was wrong with an access or a drop-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrong {
    /// A drop-in of a larger page than the CPU's page tables map there.
    LargerThanCpuPage {
        /// The CPU's page size there.
        cpu_page: u64,
    },
    /// The page tables map the address elsewhere.
    OtherFrame {
        /// The guest-physical address the PTE gives now.
        now: u64,
    },
    /// The page tables do not map the address.
    NotMapped(Walk),
    /// A write through a PTE that does not allow writing.
    WriteToReadOnly,
}

/// Where a violation was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A translated access (`access.len` bytes).
    Access,
    /// A drop-in being installed (`access.len` = page size, `access.access` = what the entry
    /// allows).
    DropIn,
}

/// Events of the violating context kept with a violation (the newest ones before it).
pub const VIOLATION_EVENTS: usize = 8;

/// One coherence violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The access (or the drop-in, see `seen`), as the device reported it.
    pub access: TranslatedAccess,
    /// An access or a drop-in.
    pub seen: Seen,
    /// What the page tables say.
    pub wrong: Wrong,
    /// Time since the oracle started.
    pub at: Duration,
    /// The last [`VIOLATION_EVENTS`] device events of the context before the violation, oldest
    /// first (empty unless the host gave the oracle the device's log, [`Oracle::watch_events`]).
    pub recent_events: Vec<Event>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.access;
        let kind = match (self.seen, a.access & FAULT_ACCESS_WRITE != 0) {
            (Seen::DropIn, true) => "read-write drop-in",
            (Seen::DropIn, false) => "read-only drop-in",
            (Seen::Access, true) => "write",
            (Seen::Access, false) => "read",
        };
        write!(
            f,
            "coherence violation at {:.6} s: context {} ASID {} {kind} of {} bytes at VA {:#x} \
             through frame {:#x} (fill {}): ",
            self.at.as_secs_f64(),
            a.ctx,
            a.asid,
            a.len,
            a.va.0,
            a.gpa.0,
            a.fill_id
        )?;
        match self.wrong {
            Wrong::OtherFrame { now } => write!(f, "the page tables map it to {now:#x} now"),
            Wrong::NotMapped(Walk::NotPresent { level, entry }) => write!(
                f,
                "the page tables do not map it (level {level} entry {entry:#x})"
            ),
            Wrong::NotMapped(Walk::OutsideRam { level, table }) => {
                write!(f, "the level {level} table {table:#x} is outside guest RAM")
            }
            Wrong::NotMapped(Walk::Mapped(_)) => write!(f, "unmapped"),
            Wrong::WriteToReadOnly => write!(f, "the PTE does not allow writing"),
            Wrong::LargerThanCpuPage { cpu_page } => {
                write!(
                    f,
                    "the CPU maps that address with a {cpu_page:#x}-byte page"
                )
            }
        }
    }
}

/// Violations kept in full; later ones are only counted.
pub const KEPT_VIOLATIONS: usize = 64;
/// Violations a host prints at the end of a run ([`Oracle::report`]).
pub const PRINTED_VIOLATIONS: usize = 16;

/// The oracle, an injector that checks and passes every other hook to `inner`.
#[derive(Debug)]
pub struct Oracle {
    mode: CheckMode,
    inner: Arc<dyn FaultInjector>,
    started: Instant,
    seen: AtomicU64,
    checked: AtomicU64,
    unregistered: AtomicU64,
    violations: AtomicU64,
    clean_writes: AtomicU64,
    kept: Mutex<Vec<Violation>>,
    events: OnceLock<Arc<EventLog>>,
}

impl Oracle {
    /// An oracle checking as `mode` says, passing the fault-injection hooks to `inner`.
    pub fn new(mode: CheckMode, inner: Arc<dyn FaultInjector>) -> Self {
        Self {
            mode,
            inner,
            started: Instant::now(),
            seen: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            unregistered: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            clean_writes: AtomicU64::new(0),
            kept: Mutex::new(Vec::new()),
            events: OnceLock::new(),
        }
    }

    /// Gives the oracle the device's event log, so each violation keeps the context's last
    /// events. The device is built with the oracle as its injector, so this comes after.
    pub fn watch_events(&self, log: Arc<EventLog>) {
        let _ = self.events.set(log);
    }

    /// Checked device writes through a writable CPU leaf whose dirty bit was clear (counted,
    /// not violations: docs/oracle.md, "Accessed and dirty bits").
    pub fn clean_pte_writes(&self) -> u64 {
        self.clean_writes.load(Ordering::Relaxed)
    }

    /// Violations found so far.
    pub fn violation_count(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    /// The first [`KEPT_VIOLATIONS`] violations.
    pub fn violations(&self) -> Vec<Violation> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Accesses checked (contexts without a registered page-table root are not).
    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// One line for the end of a run.
    pub fn summary(&self) -> String {
        format!(
            "oracle ({:?}): {} translated accesses checked, {} skipped (no page-table root), \
             {} violations, {} writes through clean PTEs",
            self.mode,
            self.checked(),
            self.unregistered.load(Ordering::Relaxed),
            self.violation_count(),
            self.clean_pte_writes()
        )
    }

    /// What a host prints at the end of a run: the summary, then the first
    /// [`PRINTED_VIOLATIONS`] violations.
    pub fn report(&self) -> Vec<String> {
        let mut lines = vec![self.summary()];
        for violation in self.violations().iter().take(PRINTED_VIOLATIONS) {
            lines.push(violation.to_string());
            if !violation.recent_events.is_empty() {
                lines.push(format!(
                    "  the context's last {} device events before it:",
                    violation.recent_events.len()
                ));
                lines.extend(violation.recent_events.iter().map(|e| format!("    {e}")));
            }
        }
        lines
    }

    fn check(&self, access: &TranslatedAccess, seen: Seen, memory: &GuestRam) {
        if access.pt_root == 0 {
            self.unregistered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.checked.fetch_add(1, Ordering::Relaxed);
        let wrong = match walk(memory, access.pt_root, access.va.0) {
            Walk::Mapped(leaf) if seen == Seen::DropIn && access.len > leaf.size => {
                Some(Wrong::LargerThanCpuPage {
                    cpu_page: leaf.size,
                })
            }
            Walk::Mapped(leaf) if leaf.translate(access.va.0) != access.gpa.0 => {
                Some(Wrong::OtherFrame {
                    now: leaf.translate(access.va.0),
                })
            }
            Walk::Mapped(leaf) if access.access & FAULT_ACCESS_WRITE != 0 && !leaf.writable => {
                Some(Wrong::WriteToReadOnly)
            }
            Walk::Mapped(leaf) => {
                if seen == Seen::Access && access.access & FAULT_ACCESS_WRITE != 0 && !leaf.dirty {
                    self.clean_writes.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            other => Some(Wrong::NotMapped(other)),
        };
        if let Some(wrong) = wrong {
            self.violations.fetch_add(1, Ordering::Relaxed);
            {
                // The context's events only for the violations that are kept (taken before
                // this violation's own event is logged).
                let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() < KEPT_VIOLATIONS {
                    kept.push(Violation {
                        access: *access,
                        seen,
                        wrong,
                        at: self.started.elapsed(),
                        recent_events: self.recent_events(access.ctx, access.asid),
                    });
                }
            }
            if let Some(log) = self.events.get() {
                log.record(EventKind::Violation {
                    ctx: access.ctx,
                    asid: access.asid,
                    va: access.va,
                    gpa: access.gpa.0,
                    write: access.access & FAULT_ACCESS_WRITE != 0,
                });
            }
        }
    }
}

impl Oracle {
    /// The context's newest events in the device log.
    fn recent_events(&self, ctx: u8, asid: u16) -> Vec<Event> {
        let Some(log) = self.events.get() else {
            return Vec::new();
        };
        log.newest_matching(VIOLATION_EVENTS, |e| e.kind.concerns(ctx, asid))
    }
}

impl FaultInjector for Oracle {
    fn dma(&self, access: &DmaAccess) -> DmaVerdict {
        self.inner.dma(access)
    }

    fn translated(&self, access: &TranslatedAccess, memory: &GuestRam) {
        self.inner.translated(access, memory);
        let check = match self.mode {
            CheckMode::Off => false,
            CheckMode::Full => true,
            CheckMode::Sample(n) => self.seen.fetch_add(1, Ordering::Relaxed) % n == 0,
        };
        if check {
            self.check(access, Seen::Access, memory);
        }
    }

    /// Drop-ins are few (one per fault) and are always checked unless the oracle is off.
    fn dropped_in(&self, dropin: &DropIn, memory: &GuestRam) {
        self.inner.dropped_in(dropin, memory);
        if self.mode == CheckMode::Off {
            return;
        }
        let as_access = TranslatedAccess {
            ctx: dropin.ctx,
            asid: dropin.asid,
            va: dropin.va,
            gpa: dropin.gpa,
            len: dropin.size,
            access: if dropin.writable {
                FAULT_ACCESS_WRITE
            } else {
                FAULT_ACCESS_READ
            },
            fill_id: dropin.fill_id,
            pt_root: dropin.pt_root,
        };
        self.check(&as_access, Seen::DropIn, memory);
    }

    fn evict_on_hit(&self, ctx: u8, va: VirtAddr) -> bool {
        self.inner.evict_on_hit(ctx, va)
    }

    fn spurious_miss(&self, ctx: u8, va: VirtAddr) -> bool {
        self.inner.spurious_miss(ctx, va)
    }

    fn parity_error(&self, ctx: u8, va: VirtAddr) -> bool {
        self.inner.parity_error(ctx, va)
    }

    fn ignore_permission(&self, ctx: u8, va: VirtAddr) -> bool {
        self.inner.ignore_permission(ctx, va)
    }

    fn access_delay(&self, ctx: u8) -> Duration {
        self.inner.access_delay(ctx)
    }

    fn invalidation(&self, descriptor: &InvalidationDescriptor) -> InvalidationVerdict {
        self.inner.invalidation(descriptor)
    }

    fn stale_dropins(&self, descriptor: &InvalidationDescriptor) -> Vec<DropIn> {
        self.inner.stale_dropins(descriptor)
    }

    fn reset_on_command(&self, ctx: u8) -> bool {
        self.inner.reset_on_command(ctx)
    }

    fn interrupt(&self, vector: u16) -> bool {
        self.inner.interrupt(vector)
    }

    fn duplicate_interrupt(&self, vector: u16) -> bool {
        self.inner.duplicate_interrupt(vector)
    }

    fn fault_interrupt_delay(&self, ctx: u8) -> Duration {
        self.inner.fault_interrupt_delay(ctx)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::page_walk::tests::Tables;
    use super::page_walk::{PTE_PRESENT, PTE_USER, PTE_WRITABLE};
    use super::*;
    use crate::inject::NoFaults;

    fn access(tables: &Tables, va: u64, gpa: u64, write: bool) -> TranslatedAccess {
        TranslatedAccess {
            ctx: 1,
            asid: 7,
            va: VirtAddr(va),
            gpa: GuestAddress(gpa),
            len: 8,
            access: if write {
                FAULT_ACCESS_WRITE
            } else {
                FAULT_ACCESS_READ
            },
            fill_id: 3,
            pt_root: tables.root,
        }
    }

    #[test]
    fn coherent_accesses_pass_and_planted_incoherence_is_caught() {
        let mut t = Tables::new();
        let rw = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
        t.map(0x7000_0000, 0x40_0000, 1, rw);
        t.map(0x7000_1000, 0x41_0000, 1, PTE_PRESENT | PTE_USER);
        let oracle = Oracle::new(CheckMode::Full, Arc::new(NoFaults));
        oracle.translated(&access(&t, 0x7000_0010, 0x40_0010, true), &t.mem);
        oracle.translated(&access(&t, 0x7000_1010, 0x41_0010, false), &t.mem);
        assert_eq!(oracle.violation_count(), 0);
        assert_eq!(oracle.checked(), 2);

        // Planted: the device writes a read-only page, uses a frame the PTE no longer names,
        // and uses a page that is no longer mapped.
        oracle.translated(&access(&t, 0x7000_1010, 0x41_0010, true), &t.mem);
        t.set(0x7000_0000, 1, 0x50_0000 | rw);
        oracle.translated(&access(&t, 0x7000_0010, 0x40_0010, false), &t.mem);
        t.set(0x7000_0000, 1, 0);
        oracle.translated(&access(&t, 0x7000_0010, 0x40_0010, false), &t.mem);
        assert_eq!(oracle.violation_count(), 3);
        let found: Vec<Wrong> = oracle.violations().iter().map(|v| v.wrong).collect();
        assert_eq!(found[0], Wrong::WriteToReadOnly);
        assert_eq!(found[1], Wrong::OtherFrame { now: 0x50_0010 });
        assert!(matches!(
            found[2],
            Wrong::NotMapped(Walk::NotPresent { level: 1, .. })
        ));
        let line = oracle.violations()[1].to_string();
        assert!(
            line.contains("VA 0x70000010") && line.contains("0x500010"),
            "{line}"
        );
    }

    #[test]
    fn a_violation_keeps_the_contexts_last_events_and_enters_the_log() {
        use crate::events::{EventLog, EVENT_ALL};
        let mut t = Tables::new();
        t.map(0x7000_0000, 0x40_0000, 1, PTE_PRESENT | PTE_USER);
        let oracle = Oracle::new(CheckMode::Full, Arc::new(NoFaults));
        let log = Arc::new(EventLog::new(64, EVENT_ALL));
        oracle.watch_events(log.clone());
        log.record(EventKind::Doorbell { ctx: 1 });
        log.record(EventKind::Doorbell { ctx: 2 });
        oracle.translated(&access(&t, 0x7000_0010, 0x40_0010, true), &t.mem);
        let violation = &oracle.violations()[0];
        assert_eq!(
            violation
                .recent_events
                .iter()
                .map(|e| e.kind)
                .collect::<Vec<_>>(),
            [EventKind::Doorbell { ctx: 1 }],
            "only context 1's events"
        );
        assert!(log.snapshot().iter().any(|e| matches!(
            e.kind,
            EventKind::Violation {
                ctx: 1,
                write: true,
                ..
            }
        )));
        assert!(oracle
            .report()
            .iter()
            .any(|l| l.contains("device events before it")));
    }

    #[test]
    fn drop_ins_are_checked_when_installed() {
        let mut t = Tables::new();
        let rw = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
        t.map(0x7000_0000, 0x40_0000, 1, rw);
        t.map(0x7000_1000, 0x41_0000, 1, PTE_PRESENT | PTE_USER);
        let oracle = Oracle::new(CheckMode::Sample(1000), Arc::new(NoFaults));
        let dropin = |va: u64, gpa: u64, size: u64, writable: bool| DropIn {
            ctx: 0,
            asid: 1,
            va: VirtAddr(va),
            gpa: GuestAddress(gpa),
            size,
            writable,
            fill_id: 9,
            pt_root: t.root,
        };
        oracle.dropped_in(&dropin(0x7000_0000, 0x40_0000, 0x1000, true), &t.mem);
        oracle.dropped_in(&dropin(0x7000_1000, 0x41_0000, 0x1000, false), &t.mem);
        assert_eq!(oracle.violation_count(), 0, "{:?}", oracle.violations());
        // Planted: a stale frame, a writable entry for a read-only PTE, a 2 MiB entry where
        // the CPU has 4 KiB pages.
        oracle.dropped_in(&dropin(0x7000_0000, 0x50_0000, 0x1000, true), &t.mem);
        oracle.dropped_in(&dropin(0x7000_1000, 0x41_0000, 0x1000, true), &t.mem);
        oracle.dropped_in(&dropin(0x7000_0000, 0x40_0000, 0x20_0000, false), &t.mem);
        let found: Vec<Wrong> = oracle.violations().iter().map(|v| v.wrong).collect();
        assert_eq!(
            found,
            [
                Wrong::OtherFrame { now: 0x40_0000 },
                Wrong::WriteToReadOnly,
                Wrong::LargerThanCpuPage { cpu_page: 0x1000 }
            ]
        );
        assert!(oracle.violations()[1]
            .to_string()
            .contains("read-write drop-in"));
    }

    #[test]
    fn modes_decide_what_is_checked() {
        let t = Tables::new();
        let unmapped = access(&t, 0x1234_5000, 0x40_0000, false);
        let off = Oracle::new(CheckMode::Off, Arc::new(NoFaults));
        off.translated(&unmapped, &t.mem);
        assert_eq!((off.checked(), off.violation_count()), (0, 0));
        let sampled = Oracle::new(CheckMode::Sample(4), Arc::new(NoFaults));
        for _ in 0..8 {
            sampled.translated(&unmapped, &t.mem);
        }
        assert_eq!((sampled.checked(), sampled.violation_count()), (2, 2));
        let mut no_root = unmapped;
        no_root.pt_root = 0;
        let full = Oracle::new(CheckMode::Full, Arc::new(NoFaults));
        full.translated(&no_root, &t.mem);
        assert_eq!((full.checked(), full.violation_count()), (0, 0));
        assert!(full.summary().contains("1 skipped"));
        assert_eq!("sample:10".parse(), Ok(CheckMode::Sample(10)));
        assert!("sample:0".parse::<CheckMode>().is_err());
        assert!("bogus".parse::<CheckMode>().is_err());
    }
}
