// SPDX-License-Identifier: GPL-2.0

//! Driver-wide counters, in debugfs as `rmnic/driver/<name>`: what is alive now (for leak
//! accounting: back to the baseline once every file is closed) and events no single context
//! outlives (a process killed by the OOM killer takes its context's counters with it).

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::c_str;
use kernel::str::CStr;

/// Device contexts reserved or in use (one per open `/dev/rmnic` file, each with its ASID).
pub(crate) static CONTEXTS_LIVE: AtomicU64 = AtomicU64::new(0);
/// mmu interval notifiers registered and not yet removed.
pub(crate) static NOTIFIERS_LIVE: AtomicU64 = AtomicU64::new(0);
/// Coherent DMA buffers allocated and not yet freed (rings, done words).
pub(crate) static DMA_BUFFERS_LIVE: AtomicU64 = AtomicU64::new(0);
/// Notifier calls with a non-blockable range (the OOM reaper's).
pub(crate) static NONBLOCKING_INVALIDATIONS: AtomicU64 = AtomicU64::new(0);
/// Of those, how many answered "not now" (the device did not finish within the busy-wait).
pub(crate) static NONBLOCKING_DEFERRED: AtomicU64 = AtomicU64::new(0);
/// Pages marked dirty because the device got a writable translation of them.
pub(crate) static PAGES_DIRTIED: AtomicU64 = AtomicU64::new(0);
/// `hmm_range_fault` errors not taken as a verdict because an invalidation raced the walk
/// (the miss path walked again).
pub(crate) static WALK_ERRORS_RACED: AtomicU64 = AtomicU64::new(0);
/// Misses whose fault-ahead window could not be faulted in as a whole (a page past the end of
/// a file): the faulting page was faulted in alone and the window read as it was.
pub(crate) static WINDOW_FALLBACKS: AtomicU64 = AtomicU64::new(0);
/// Device recoveries (function resets after a hang or a self-reset).
pub(crate) static RECOVERIES: AtomicU64 = AtomicU64::new(0);

/// Segments exported and not yet removed (by `IOC_REMOVE`, or by the exporter's close or exit).
pub(crate) static SEGMENTS_LIVE: AtomicU64 = AtomicU64::new(0);
/// Attachment slots taken and not yet freed (detach or importer close; a revoked attachment
/// keeps its slot until then).
pub(crate) static ATTACHMENTS_LIVE: AtomicU64 = AtomicU64::new(0);
/// Attachments torn down because their segment went away (removal, exporter close or exit):
/// one per importer attachment, however many VMAs the segment spans.
pub(crate) static SEGMENT_REVOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Device misses on segment addresses, resolved in the exporter's address space.
pub(crate) static SEGMENT_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Adds one.
pub(crate) fn up(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Takes one away.
pub(crate) fn down(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

/// The debugfs files (`rmnic/driver/`); the owner argument is unused: the counters are static.
pub(crate) const DEBUGFS: [(&CStr, fn(&()) -> &AtomicU64); 13] = [
    (c_str!("contexts_live"), |_| &CONTEXTS_LIVE),
    (c_str!("notifiers_live"), |_| &NOTIFIERS_LIVE),
    (c_str!("dma_buffers_live"), |_| &DMA_BUFFERS_LIVE),
    (c_str!("nonblocking_invalidations"), |_| &NONBLOCKING_INVALIDATIONS),
    (c_str!("nonblocking_deferred"), |_| &NONBLOCKING_DEFERRED),
    (c_str!("pages_dirtied"), |_| &PAGES_DIRTIED),
    (c_str!("walk_errors_raced"), |_| &WALK_ERRORS_RACED),
    (c_str!("window_fallbacks"), |_| &WINDOW_FALLBACKS),
    (c_str!("recoveries"), |_| &RECOVERIES),
    (c_str!("segments_live"), |_| &SEGMENTS_LIVE),
    (c_str!("attachments_live"), |_| &ATTACHMENTS_LIVE),
    (c_str!("segment_revocations"), |_| &SEGMENT_REVOCATIONS),
    (c_str!("segment_faults"), |_| &SEGMENT_FAULTS),
];
