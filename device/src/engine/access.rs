//! The one translate-and-access path: every guest-memory access the engine makes on behalf of
//! a command (a user VA) goes through `Translator::access`.
//!
//! One access follows one or two VAs (COPY needs a source and a destination) for at most
//! [`ACCESS_MAX_BYTES`], translating each page as it reaches it and moving the data chunk by
//! chunk (a chunk never crosses a page of either side). It holds the TLB read lock from the
//! first lookup until its last chunk has moved, so an invalidation (write lock) cannot
//! complete while an access that used a removed entry is still running. This is also where
//! the oracle ([`FaultInjector::translated`], once per chunk) and forced evictions hook in.
//!
//! [`FaultInjector::translated`]: crate::inject::FaultInjector::translated

use std::time::Duration;

use vm_memory::GuestAddress;

use crate::addr::{PageSize, VirtAddr};
use crate::engine::dma::{Dma, DmaError};
use crate::engine::Shared;
use crate::events::{EventKind, InjectedFault, EVENT_HIT};
use crate::fault_ring::{
    FAULT_ACCESS_READ, FAULT_ACCESS_WRITE, FAULT_REASON_MISS, FAULT_REASON_PERMISSION,
};
use crate::inject::{DmaPurpose, TranslatedAccess};
use crate::segments::{segment_address, SegmentSpace};
use crate::stats::{ContextCounter, GlobalCounter};
use crate::tlb::{Perms, Translation};

/// Most bytes one access moves. Bounds how long an invalidation waits for accesses in flight
/// and how long MMIO to a busy context waits.
pub const ACCESS_MAX_BYTES: u64 = 64 * 1024;

/// Placeholder for unused translation slots.
const NO_TRANSLATION: Translation = Translation {
    gpa: GuestAddress(0),
    page_remaining: 0,
    perms: Perms::NONE,
    size: PageSize::Size4K,
    slot: 0,
    fill_id: 0,
};

/// One address an access needs translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// The address.
    pub va: VirtAddr,
    /// `FAULT_ACCESS_*` bits it needs.
    pub access: u8,
    /// The exporter's address space when `va` was reached through a segment (spec §19);
    /// None for the context's own.
    pub segment: Option<SegmentSpace>,
}

impl Need {
    /// A read of `va`.
    pub fn read(va: VirtAddr) -> Self {
        Self {
            va,
            access: FAULT_ACCESS_READ,
            segment: None,
        }
    }

    /// A write of `va`.
    pub fn write(va: VirtAddr) -> Self {
        Self {
            va,
            access: FAULT_ACCESS_WRITE,
            segment: None,
        }
    }

    /// A read-modify-write of `va` (atomics).
    pub fn read_write(va: VirtAddr) -> Self {
        Self {
            va,
            access: FAULT_ACCESS_READ | FAULT_ACCESS_WRITE,
            segment: None,
        }
    }

    /// The same need, of `va` in the exporter's space `segment` (None: the context's own).
    pub fn at(self, va: VirtAddr, segment: Option<SegmentSpace>) -> Self {
        Self {
            va,
            segment,
            ..self
        }
    }

    /// Whether the need writes.
    pub fn writes(self) -> bool {
        self.access & FAULT_ACCESS_WRITE != 0
    }

    fn perms(self) -> Perms {
        Perms::from_bits(self.access)
    }

    /// The address a completion reports for `va` of this need: `va` itself in the context's
    /// own space, the segment address in a segment.
    pub fn reported(self, va: VirtAddr) -> u64 {
        match self.segment {
            None => va.0,
            Some(space) => segment_address(space.slot, va.0.wrapping_sub(space.base)),
        }
    }
}

/// A lookup that found no usable translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Miss {
    /// The address (in the exporter's space for a segment access).
    pub va: VirtAddr,
    /// `FAULT_ACCESS_*` bits the access needed.
    pub access: u8,
    /// `FAULT_REASON_*`.
    pub reason: u8,
    /// The attachment slot when the address was reached through a segment.
    pub segment_slot: Option<u8>,
    /// What a completion reports if the fault is aborted ([`Need::reported`]).
    pub reported: u64,
}

/// What an access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// The data moved: `bytes` of it (at least 1 when asked for at least 1).
    Done {
        /// Bytes moved.
        bytes: u64,
        /// What the data movement returned.
        value: R,
    },
    /// A translation was missing or lacked a permission; nothing moved.
    Miss(Miss),
    /// The entry translating `va` was found corrupt (fault injection: `parity-error`) and
    /// dropped; earlier chunks of the access may have moved.
    ParityError {
        /// The address whose entry was corrupt, as a completion reports it.
        va: u64,
    },
    /// The DMA failed at the translated address of `va`; nothing is known to have moved.
    DmaFailed {
        /// The address whose translation the failed DMA used, as a completion reports it.
        va: u64,
    },
}

/// Translates and accesses on behalf of one context.
#[derive(Clone, Copy)]
pub(crate) struct Translator<'a> {
    shared: &'a Shared,
    ctx: u8,
    asid: u16,
    pt_root: u64,
}

impl<'a> Translator<'a> {
    /// Accesses for context `ctx`, whose entries carry `asid` and whose page tables (for the
    /// oracle hook) are rooted at `pt_root`.
    pub(crate) fn new(shared: &'a Shared, ctx: u8, asid: u16, pt_root: u64) -> Self {
        Self {
            shared,
            ctx,
            asid,
            pt_root,
        }
    }

    /// One access: translates every address of `needs` (at most 2, each advancing with the
    /// access), and moves the data page by page — calling `body` with the translations, the
    /// offset reached and the bytes to move, clipped to the end of each page — until
    /// `max_bytes` or [`ACCESS_MAX_BYTES`] are moved or a translation is missing. Each chunk is
    /// reported to the oracle hook. All of it happens under one TLB read section.
    ///
    /// A translation missing at offset 0 is a [`Outcome::Miss`]; one missing further on ends
    /// the access early (the next access reports it).
    ///
    /// Fault injection can slow each chunk down (`slow-engine`): the device waits after the
    /// TLB read section, holding only the caller's context lock, so invalidations do not
    /// wait for the delay but MMIO to this context (and a reset) does, as for any step.
    pub(crate) fn access<R>(
        &self,
        needs: &[Need],
        max_bytes: u64,
        body: impl FnMut(&Dma<'_>, &[Translation], u64, u64) -> Result<R, DmaError>,
    ) -> Outcome<R> {
        let mut delay = Duration::ZERO;
        let outcome = self.translate_and_move(needs, max_bytes, body, &mut delay);
        if !delay.is_zero() {
            self.shared
                .injected(Some(self.ctx), InjectedFault::SlowAccess);
            std::thread::sleep(delay);
        }
        outcome
    }

    /// [`Translator::access`] up to the delay fault injection adds, which it sums in `delay`.
    fn translate_and_move<R>(
        &self,
        needs: &[Need],
        max_bytes: u64,
        mut body: impl FnMut(&Dma<'_>, &[Translation], u64, u64) -> Result<R, DmaError>,
        delay: &mut Duration,
    ) -> Outcome<R> {
        debug_assert!(
            !needs.is_empty() && needs.len() <= 2,
            "an access translates one or two addresses"
        );
        let shared = self.shared;
        let limit = max_bytes.min(ACCESS_MAX_BYTES);
        let dma = shared.dma(DmaPurpose::Data);
        let log_hits = shared.events.enabled(EVENT_HIT);
        let tlb = shared.tlb_read();
        let mut done = 0;
        let mut hits = 0;
        let mut last = None;
        loop {
            let mut translations = [NO_TRANSLATION; 2];
            let mut bytes = limit - done;
            let mut stop = None;
            for (slot, need) in translations.iter_mut().zip(needs) {
                // Decoding checked that no range wraps; a wrap ends the access all the same.
                let Some(va) = need.va.checked_add(done) else {
                    stop = Some((Stop::Miss(FAULT_REASON_MISS), *need));
                    break;
                };
                let at = Need { va, ..*need };
                match tlb
                    .lookup(need.segment.map_or(self.asid, |s| s.asid), va)
                    .map(|hit| self.judge(hit, *need, va))
                {
                    None => stop = Some((Stop::Miss(FAULT_REASON_MISS), at)),
                    Some(Err(why)) => stop = Some((why, at)),
                    Some(Ok(hit)) => {
                        bytes = bytes.min(hit.page_remaining);
                        *slot = hit;
                    }
                }
                if stop.is_some() {
                    break;
                }
            }
            if let Some((why, at)) = stop {
                drop(tlb);
                self.count_hits(hits);
                match why {
                    Stop::Miss(_) => {}
                    Stop::Spurious => shared.injected(Some(self.ctx), InjectedFault::SpuriousMiss),
                    Stop::Evict(hit) => {
                        shared.injected(Some(self.ctx), InjectedFault::Eviction);
                        shared
                            .tlb_write()
                            .evict(hit.slot, hit.fill_id, &mut shared.on_removed());
                    }
                    Stop::Parity(hit) => {
                        shared.injected(Some(self.ctx), InjectedFault::ParityError);
                        shared.stats.count(GlobalCounter::ParityErrors, 1);
                        shared
                            .tlb_write()
                            .evict(hit.slot, hit.fill_id, &mut shared.on_removed());
                        return Outcome::ParityError {
                            va: at.reported(at.va),
                        };
                    }
                }
                if let Some(value) = last.take() {
                    // Progress was made; the next access meets the missing translation.
                    return Outcome::Done { bytes: done, value };
                }
                let reason = match why {
                    Stop::Miss(reason) => reason,
                    Stop::Evict(_) | Stop::Spurious | Stop::Parity(_) => FAULT_REASON_MISS,
                };
                return Outcome::Miss(self.miss(at, reason));
            }
            let used = &translations[..needs.len()];
            let value = match body(&dma, used, done, bytes) {
                Ok(value) => value,
                Err(error) => {
                    drop(tlb);
                    self.count_hits(hits);
                    if matches!(error, DmaError::Injected { .. }) {
                        shared.injected(Some(self.ctx), InjectedFault::DataDmaError);
                    }
                    return Outcome::DmaFailed {
                        va: failed_va(&error, needs, used, done),
                    };
                }
            };
            for (need, hit) in needs.iter().zip(used) {
                let va = VirtAddr(need.va.0.wrapping_add(done));
                let (asid, pt_root) = need
                    .segment
                    .map_or((self.asid, self.pt_root), |s| (s.asid, s.pt_root));
                shared.injector.translated(
                    &TranslatedAccess {
                        ctx: self.ctx,
                        asid,
                        va,
                        gpa: hit.gpa,
                        len: bytes,
                        access: need.access,
                        fill_id: hit.fill_id,
                        pt_root,
                    },
                    dma.memory(),
                );
                *delay += shared.injector.access_delay(self.ctx);
                if log_hits {
                    shared.events.record(EventKind::Hit {
                        ctx: self.ctx,
                        asid,
                        va,
                        gpa: hit.gpa.0,
                        fill_id: hit.fill_id,
                    });
                }
            }
            // CAST: at most 2 translations.
            hits += needs.len() as u64;
            done += bytes;
            if done >= limit || bytes == 0 {
                drop(tlb);
                self.count_hits(hits);
                return Outcome::Done { bytes: done, value };
            }
            last = Some(value);
        }
    }

    /// What fault injection makes of a TLB hit for `need` at `va`: the translation to use,
    /// or why the access stops. A permission the entry lacks is a miss unless ignored.
    fn judge(&self, hit: Translation, need: Need, va: VirtAddr) -> Result<Translation, Stop> {
        let shared = self.shared;
        let injector = &*shared.injector;
        if !hit.perms.allows(need.perms()) {
            if !injector.ignore_permission(self.ctx, va) {
                return Err(Stop::Miss(FAULT_REASON_PERMISSION));
            }
            shared.injected(Some(self.ctx), InjectedFault::IgnoredPermission);
        }
        if injector.parity_error(self.ctx, va) {
            return Err(Stop::Parity(hit));
        }
        if injector.evict_on_hit(self.ctx, va) {
            return Err(Stop::Evict(hit));
        }
        if injector.spurious_miss(self.ctx, va) {
            return Err(Stop::Spurious);
        }
        Ok(hit)
    }

    fn count_hits(&self, hits: u64) {
        if hits == 0 {
            return;
        }
        self.shared.stats.count(GlobalCounter::Hits, hits);
        if let Some(stats) = self.shared.ctx_stats(self.ctx) {
            stats.count(ContextCounter::Hits, hits);
        }
    }

    fn miss(&self, need: Need, reason: u8) -> Miss {
        let shared = self.shared;
        shared.stats.count(GlobalCounter::Misses, 1);
        if let Some(stats) = shared.ctx_stats(self.ctx) {
            stats.count(ContextCounter::Misses, 1);
        }
        shared.events.record(EventKind::Miss {
            ctx: self.ctx,
            asid: need.segment.map_or(self.asid, |s| s.asid),
            va: need.va,
            access: need.access,
            reason,
        });
        Miss {
            va: need.va,
            access: need.access,
            reason,
            segment_slot: need.segment.map(|s| s.slot),
            reported: need.reported(need.va),
        }
    }
}

/// Why an access stopped translating.
#[derive(Clone, Copy)]
enum Stop {
    /// No usable entry (`FAULT_REASON_*`).
    Miss(u8),
    /// Fault injection evicts the entry that hit.
    Evict(Translation),
    /// Fault injection reports the hit as a miss and keeps the entry.
    Spurious,
    /// Fault injection finds the entry that hit corrupt: it is dropped, the access fails.
    Parity(Translation),
}

/// The address whose translation a failed DMA used (the first one if it cannot be told), at
/// offset `done` of the access, as a completion reports it.
fn failed_va(error: &DmaError, needs: &[Need], used: &[Translation], done: u64) -> u64 {
    let gpa = match error {
        DmaError::OutsideRam { gpa, .. } | DmaError::Injected { gpa, .. } => *gpa,
        DmaError::Misaligned { gpa } => *gpa,
    };
    let need = used
        .iter()
        .zip(needs)
        .find(|(hit, _)| hit.gpa.0 <= gpa && gpa < hit.gpa.0.saturating_add(hit.page_remaining))
        .map_or(needs.first(), |(_, need)| Some(need));
    need.map_or(0, |need| {
        need.reported(VirtAddr(need.va.0.wrapping_add(done)))
    })
}
