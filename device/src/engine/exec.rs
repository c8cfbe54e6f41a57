//! Command execution: one step of the command in flight, through the translate-and-access path.
//!
//! A step is one access. COPY and FILL take as many steps as their length needs (each at most
//! `ACCESS_MAX_BYTES`, possibly spanning pages), remembering their progress in the command in flight so a
//! fault stalls them mid-way and RESUME continues where they stopped. The 64-bit operations
//! are one step each, performed with host atomics on the guest's memory (8-byte aligned, so
//! never crossing a page), hence atomic against the vCPUs.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::commands::{Completion, Operation, Status};
use crate::context::InFlight;
use crate::engine::access::{Miss, Need, Outcome, Translator};
use crate::engine::Shared;
use crate::segments::{SegmentRefusal, SEGMENT_OFFSET_MASK};

// Guest words are little-endian and the atomics operate on host words in place.
#[cfg(not(target_endian = "little"))]
compile_error!(
    "the rmnic device model performs guest atomics with host atomics: little-endian hosts only"
);

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Part of the command is done; more steps follow.
    Progress,
    /// The command is finished with this completion.
    Complete(Completion),
    /// A translation is missing: the context stalls.
    Fault(Miss),
}

fn completion(inflight: &InFlight, status: Status, result: u64, fault_va: u64) -> Step {
    Step::Complete(Completion {
        id: inflight.command.id,
        status,
        result,
        fault_va,
    })
}

impl Shared {
    /// Executes one step of `inflight` for context `ctx` with ASID `asid`, whose page tables
    /// are rooted at `pt_root` (reported to the oracle hook).
    ///
    /// A command with segment addresses holds the segment table for reading from resolving
    /// them to the end of its access, so revoking an export or detaching a slot (which take
    /// it for writing) returns only once no access through it is running.
    pub(crate) fn step(&self, ctx: u8, asid: u16, pt_root: u64, inflight: &mut InFlight) -> Step {
        let segments = inflight
            .command
            .segments
            .any()
            .then(|| self.segments_read());
        let translator = Translator::new(self, ctx, asid, pt_root);
        let progress = inflight.progress;
        let seg = inflight.command.segments;
        // Resolves `need` (whose address is the command's, before `progress`) for `remaining`
        // bytes: a VA of the context's own, or a segment address resolved in its exporter's
        // space; a refusal completes the command.
        let resolve = |need: Need, segment: bool, remaining: u64| -> Result<Need, Step> {
            let Some(table) = segments.as_ref().filter(|_| segment) else {
                return need
                    .va
                    .checked_add(progress)
                    // Decoding checked that no range wraps; stay total anyway.
                    .map(|va| need.at(va, None))
                    .ok_or_else(|| completion(inflight, Status::InvalidArgument, 0, 0));
            };
            let address = need.va.0;
            let offset = (address & SEGMENT_OFFSET_MASK).checked_add(progress);
            let at = offset.map_or(address, |o| (address & !SEGMENT_OFFSET_MASK) | o);
            let resolved = offset.ok_or(SegmentRefusal::Bounds).and_then(|o| {
                table.resolve(
                    ctx,
                    (address & !SEGMENT_OFFSET_MASK) | o,
                    remaining,
                    need.writes(),
                )
            });
            match resolved {
                Ok((space, va)) => Ok(need.at(va, Some(space))),
                Err(refusal) => {
                    let status = match refusal {
                        SegmentRefusal::Invalid => Status::SegmentInvalid,
                        SegmentRefusal::Bounds => Status::SegmentBounds,
                        SegmentRefusal::Permission => Status::Permission,
                    };
                    Err(completion(inflight, status, 0, at))
                }
            }
        };
        match inflight.command.op {
            Operation::Nop | Operation::Fence => completion(inflight, Status::Ok, 0, 0),
            Operation::Copy { dst, src, len } => {
                if progress >= len {
                    return completion(inflight, Status::Ok, 0, 0);
                }
                let remaining = len - progress;
                let needs = resolve(Need::read(src), seg.addr1, remaining)
                    .and_then(|src| Ok([src, resolve(Need::write(dst), seg.addr0, remaining)?]));
                let needs = match needs {
                    Ok(needs) => needs,
                    Err(step) => return step,
                };
                let outcome = translator.access(&needs, remaining, |dma, at, _, bytes| {
                    // CAST: bytes <= ACCESS_MAX_BYTES.
                    dma.copy(at[0].gpa, at[1].gpa, bytes as usize)
                });
                self.advance(inflight, len, outcome)
            }
            Operation::Fill { dst, len, pattern } => {
                if progress >= len {
                    return completion(inflight, Status::Ok, 0, 0);
                }
                let remaining = len - progress;
                let need = match resolve(Need::write(dst), seg.addr0, remaining) {
                    Ok(need) => need,
                    Err(step) => return step,
                };
                let outcome = translator.access(&[need], remaining, |dma, at, offset, bytes| {
                    // CAST: a remainder below 8, and bytes <= ACCESS_MAX_BYTES.
                    let phase = (progress.wrapping_add(offset) % 8) as usize;
                    dma.fill(at[0].gpa, bytes as usize, pattern.to_le_bytes(), phase)
                });
                self.advance(inflight, len, outcome)
            }
            Operation::Read64 { addr } => {
                let need = resolve(Need::read(addr), seg.addr0, 8);
                word(inflight, &translator, need, |w| w.load(Ordering::SeqCst))
            }
            Operation::Write64 { addr, value } => {
                let need = resolve(Need::write(addr), seg.addr0, 8);
                word(inflight, &translator, need, |w| {
                    w.store(value, Ordering::SeqCst);
                    0
                })
            }
            Operation::FetchAdd { addr, addend } => {
                let need = resolve(Need::read_write(addr), seg.addr0, 8);
                word(inflight, &translator, need, |w| {
                    w.fetch_add(addend, Ordering::SeqCst)
                })
            }
            Operation::Cas {
                addr,
                expected,
                new,
            } => {
                let need = resolve(Need::read_write(addr), seg.addr0, 8);
                word(inflight, &translator, need, |w| {
                    match w.compare_exchange(expected, new, Ordering::SeqCst, Ordering::SeqCst) {
                        Ok(old) | Err(old) => old,
                    }
                })
            }
            Operation::Swap { addr, value } => {
                let need = resolve(Need::read_write(addr), seg.addr0, 8);
                word(inflight, &translator, need, |w| {
                    w.swap(value, Ordering::SeqCst)
                })
            }
        }
    }

    /// Applies the outcome of one COPY or FILL access.
    fn advance(&self, inflight: &mut InFlight, len: u64, outcome: Outcome<()>) -> Step {
        match outcome {
            Outcome::Done { bytes, .. } => {
                inflight.progress = inflight.progress.saturating_add(bytes);
                if inflight.progress >= len {
                    completion(inflight, Status::Ok, 0, 0)
                } else {
                    Step::Progress
                }
            }
            Outcome::Miss(miss) => Step::Fault(miss),
            Outcome::DmaFailed { va } | Outcome::ParityError { va } => {
                completion(inflight, Status::DeviceError, 0, va)
            }
        }
    }
}

/// Executes a 64-bit operation: one access of 8 bytes (one chunk: the word never crosses a
/// page), unless resolving its address already completed the command.
fn word(
    inflight: &InFlight,
    translator: &Translator<'_>,
    need: Result<Need, Step>,
    op: impl Fn(&AtomicU64) -> u64,
) -> Step {
    let need = match need {
        Ok(need) => need,
        Err(step) => return step,
    };
    let outcome = translator.access(&[need], 8, |dma, at, _, _| {
        dma.with_atomic::<AtomicU64, _>(at[0].gpa, &op)
    });
    match outcome {
        Outcome::Done { value, .. } => completion(inflight, Status::Ok, value, 0),
        Outcome::Miss(miss) => Step::Fault(miss),
        Outcome::DmaFailed { va } | Outcome::ParityError { va } => {
            completion(inflight, Status::DeviceError, 0, va)
        }
    }
}
