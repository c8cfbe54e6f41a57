//! Statistics counters, global and per context: 64-bit, read-only through BAR0, updated with
//! relaxed atomics on the engine's paths (no lock on the hot path).
//!
//! The counter tables here give each counter its name and BAR0 offset; the specification's
//! counter tables are checked against them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::regs::{CTX_STATS_BASE, REG_STATS_BASE};

/// One 64-bit counter as the specification lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterSpec {
    /// Offset of the low half (BAR0 offset for global counters, block offset for context ones).
    pub offset: u64,
    /// Name in the specification.
    pub name: &'static str,
    /// One-line meaning.
    pub summary: &'static str,
}

/// The global counters, in BAR0 order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum GlobalCounter {
    /// Translations that hit the TLB.
    Hits,
    /// Lookups that found no usable translation (absent or lacking a permission).
    Misses,
    /// Drop-ins installed.
    Fills,
    /// RANGE invalidation descriptors executed.
    InvalRange,
    /// ASID invalidation descriptors executed.
    InvalAsid,
    /// GLOBAL invalidation descriptors executed.
    InvalGlobal,
    /// Entries removed by invalidations and context flushes.
    EntriesRemoved,
    /// Faults raised (a context entered FAULTED).
    Faults,
    /// Commands failed by a driver ABORT or by disabling their context.
    Aborts,
    /// Errors: contexts entering ERROR, device errors, commands completed with DEVICE_ERROR.
    Errors,
    /// Completion records written.
    CommandsCompleted,
    /// TLB entries found corrupt on a hit (dropped; the command failed with DEVICE_ERROR).
    ParityErrors,
    /// Invalidations forwarded to the fabric's other node and acknowledged in time.
    RemoteShootdowns,
    /// Their round trips, summed, in nanoseconds.
    RemoteShootdownNanos,
    /// Peers fenced (an acknowledgement missed its bound, or the link was down).
    Fences,
    /// Accesses of the fabric's other node served on this device's memory.
    RemoteAccesses,
}

/// Number of global counters.
pub const GLOBAL_COUNTER_COUNT: usize = 16;

/// The global counters' layout: `REG_STATS_BASE + 8 × index`.
pub const GLOBAL_COUNTERS: [CounterSpec; GLOBAL_COUNTER_COUNT] = [
    global(0, "STAT_HITS", "Translations that hit the TLB"),
    global(1, "STAT_MISSES", "Lookups without a usable translation"),
    global(2, "STAT_FILLS", "Drop-ins installed"),
    global(
        3,
        "STAT_INVAL_RANGE",
        "RANGE invalidation descriptors executed",
    ),
    global(
        4,
        "STAT_INVAL_ASID",
        "ASID invalidation descriptors executed",
    ),
    global(
        5,
        "STAT_INVAL_GLOBAL",
        "GLOBAL invalidation descriptors executed",
    ),
    global(
        6,
        "STAT_ENTRIES_REMOVED",
        "Entries removed by invalidations and context flushes",
    ),
    global(7, "STAT_FAULTS", "Faults raised"),
    global(
        8,
        "STAT_ABORTS",
        "Commands failed by ABORT or context disable",
    ),
    global(
        9,
        "STAT_ERRORS",
        "Context errors, device errors, DEVICE_ERROR completions",
    ),
    global(10, "STAT_COMMANDS_COMPLETED", "Completion records written"),
    global(
        11,
        "STAT_PARITY_ERRORS",
        "TLB entries found corrupt on a hit",
    ),
    global(
        12,
        "STAT_REMOTE_SHOOTDOWNS",
        "Invalidations forwarded to the peer and acknowledged",
    ),
    global(
        13,
        "STAT_REMOTE_SHOOTDOWN_NS",
        "Their round trips, summed, in nanoseconds",
    ),
    global(14, "STAT_FENCES", "Peers fenced"),
    global(
        15,
        "STAT_REMOTE_ACCESSES",
        "Accesses of the peer served on this device's memory",
    ),
];

const fn global(index: u64, name: &'static str, summary: &'static str) -> CounterSpec {
    CounterSpec {
        offset: REG_STATS_BASE + 8 * index,
        name,
        summary,
    }
}

/// The per-context counters, in block order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ContextCounter {
    /// Translations of this context that hit.
    Hits,
    /// Lookups of this context without a usable translation.
    Misses,
    /// Drop-ins installed through this context.
    Fills,
    /// Faults this context raised.
    Faults,
    /// Commands of this context failed by ABORT or disable.
    Aborts,
    /// Completion records written for this context.
    CommandsCompleted,
    /// Entries filled through this context that invalidations or flushes removed.
    InvalidatedEntries,
}

/// Number of per-context counters.
pub const CONTEXT_COUNTER_COUNT: usize = 7;

/// The per-context counters' layout: block offset `CTX_STATS_BASE + 8 × index`.
pub const CONTEXT_COUNTERS: [CounterSpec; CONTEXT_COUNTER_COUNT] = [
    context(0, "CTX_STAT_HITS", "Translations that hit"),
    context(1, "CTX_STAT_MISSES", "Lookups without a usable translation"),
    context(2, "CTX_STAT_FILLS", "Drop-ins installed"),
    context(3, "CTX_STAT_FAULTS", "Faults raised"),
    context(4, "CTX_STAT_ABORTS", "Commands failed by ABORT or disable"),
    context(
        5,
        "CTX_STAT_COMMANDS_COMPLETED",
        "Completion records written",
    ),
    context(
        6,
        "CTX_STAT_INVALIDATED_ENTRIES",
        "Own entries removed by invalidations",
    ),
];

const fn context(index: u64, name: &'static str, summary: &'static str) -> CounterSpec {
    CounterSpec {
        offset: CTX_STATS_BASE + 8 * index,
        name,
        summary,
    }
}

/// A bank of `N` relaxed 64-bit counters.
#[derive(Debug)]
pub struct Counters<const N: usize> {
    values: [AtomicU64; N],
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl<const N: usize> Counters<N> {
    /// Adds `n` to counter `index` (wrapping, as a hardware counter does).
    pub fn add(&self, index: usize, n: u64) {
        if let Some(counter) = self.values.get(index) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The value of counter `index` (0 if it does not exist).
    pub fn get(&self, index: usize) -> u64 {
        self.values
            .get(index)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// Sets every counter to 0.
    pub fn reset(&self) {
        for counter in &self.values {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// The global counters.
pub type GlobalStats = Counters<GLOBAL_COUNTER_COUNT>;
/// The counters of one context.
pub type ContextStats = Counters<CONTEXT_COUNTER_COUNT>;

impl GlobalStats {
    /// Adds `n` to `counter`.
    pub fn count(&self, counter: GlobalCounter, n: u64) {
        self.add(counter as usize, n);
    }

    /// The value of `counter`.
    pub fn value(&self, counter: GlobalCounter) -> u64 {
        self.get(counter as usize)
    }
}

impl ContextStats {
    /// Adds `n` to `counter`.
    pub fn count(&self, counter: ContextCounter, n: u64) {
        self.add(counter as usize, n);
    }

    /// The value of `counter`.
    pub fn value(&self, counter: ContextCounter) -> u64 {
        self.get(counter as usize)
    }
}

/// The counter whose 64-bit value holds `offset` in `table`: (index, high half?).
pub fn locate(table: &[CounterSpec], offset: u64) -> Option<(usize, bool)> {
    table.iter().enumerate().find_map(|(i, spec)| {
        if offset == spec.offset {
            Some((i, false))
        } else if offset == spec.offset + 4 {
            Some((i, true))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_consecutive_qwords_in_enum_order() {
        for (i, spec) in GLOBAL_COUNTERS.iter().enumerate() {
            assert_eq!(spec.offset, REG_STATS_BASE + 8 * i as u64);
        }
        assert_eq!(
            GlobalCounter::RemoteAccesses as usize,
            GLOBAL_COUNTER_COUNT - 1
        );
        assert_eq!(
            ContextCounter::InvalidatedEntries as usize,
            CONTEXT_COUNTER_COUNT - 1
        );
        assert_eq!(GLOBAL_COUNTERS[7].name, "STAT_FAULTS");
        assert_eq!(CONTEXT_COUNTERS[5].name, "CTX_STAT_COMMANDS_COMPLETED");
    }

    #[test]
    fn counters_add_read_and_reset() {
        let stats = GlobalStats::default();
        stats.count(GlobalCounter::Hits, 3);
        stats.count(GlobalCounter::Hits, 4);
        assert_eq!(stats.value(GlobalCounter::Hits), 7);
        assert_eq!(stats.get(99), 0);
        stats.add(99, 1);
        stats.reset();
        assert_eq!(stats.value(GlobalCounter::Hits), 0);
    }

    #[test]
    fn locate_finds_both_halves() {
        assert_eq!(
            locate(&GLOBAL_COUNTERS, REG_STATS_BASE + 8),
            Some((1, false))
        );
        assert_eq!(
            locate(&GLOBAL_COUNTERS, REG_STATS_BASE + 12),
            Some((1, true))
        );
        assert_eq!(locate(&GLOBAL_COUNTERS, REG_STATS_BASE + 8 * 16), None);
        assert_eq!(
            locate(&CONTEXT_COUNTERS, CTX_STATS_BASE + 4),
            Some((0, true))
        );
    }
}
