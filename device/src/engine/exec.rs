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
    pub(crate) fn step(&self, ctx: u8, asid: u16, pt_root: u64, inflight: &mut InFlight) -> Step {
        let translator = Translator::new(self, ctx, asid, pt_root);
        let progress = inflight.progress;
        match inflight.command.op {
            Operation::Nop | Operation::Fence => completion(inflight, Status::Ok, 0, 0),
            Operation::Copy { dst, src, len } => {
                let (Some(src), Some(dst)) = (src.checked_add(progress), dst.checked_add(progress))
                else {
                    // Decoding checked that neither range wraps; stay total anyway.
                    return completion(inflight, Status::InvalidArgument, 0, 0);
                };
                if progress >= len {
                    return completion(inflight, Status::Ok, 0, 0);
                }
                let outcome = translator.access(
                    &[Need::read(src), Need::write(dst)],
                    len - progress,
                    |dma, at, _, bytes| {
                        // CAST: bytes <= ACCESS_MAX_BYTES.
                        dma.copy(at[0].gpa, at[1].gpa, bytes as usize)
                    },
                );
                self.advance(inflight, len, outcome)
            }
            Operation::Fill { dst, len, pattern } => {
                let Some(dst) = dst.checked_add(progress) else {
                    return completion(inflight, Status::InvalidArgument, 0, 0);
                };
                if progress >= len {
                    return completion(inflight, Status::Ok, 0, 0);
                }
                let outcome = translator.access(
                    &[Need::write(dst)],
                    len - progress,
                    |dma, at, offset, bytes| {
                        // CAST: a remainder below 8, and bytes <= ACCESS_MAX_BYTES.
                        let phase = (progress.wrapping_add(offset) % 8) as usize;
                        dma.fill(at[0].gpa, bytes as usize, pattern.to_le_bytes(), phase)
                    },
                );
                self.advance(inflight, len, outcome)
            }
            Operation::Read64 { addr } => word(inflight, &translator, Need::read(addr), |w| {
                w.load(Ordering::SeqCst)
            }),
            Operation::Write64 { addr, value } => {
                word(inflight, &translator, Need::write(addr), |w| {
                    w.store(value, Ordering::SeqCst);
                    0
                })
            }
            Operation::FetchAdd { addr, addend } => {
                word(inflight, &translator, Need::read_write(addr), |w| {
                    w.fetch_add(addend, Ordering::SeqCst)
                })
            }
            Operation::Cas {
                addr,
                expected,
                new,
            } => word(inflight, &translator, Need::read_write(addr), |w| {
                match w.compare_exchange(expected, new, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(old) | Err(old) => old,
                }
            }),
            Operation::Swap { addr, value } => {
                word(inflight, &translator, Need::read_write(addr), |w| {
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
                completion(inflight, Status::DeviceError, 0, va.0)
            }
        }
    }
}

/// Executes a 64-bit operation: one access of 8 bytes (one chunk: the word never crosses a
/// page).
fn word(
    inflight: &InFlight,
    translator: &Translator<'_>,
    need: Need,
    op: impl Fn(&AtomicU64) -> u64,
) -> Step {
    let outcome = translator.access(&[need], 8, |dma, at, _, _| {
        dma.with_atomic::<AtomicU64, _>(at[0].gpa, &op)
    });
    match outcome {
        Outcome::Done { value, .. } => completion(inflight, Status::Ok, value, 0),
        Outcome::Miss(miss) => Step::Fault(miss),
        Outcome::DmaFailed { va } | Outcome::ParityError { va } => {
            completion(inflight, Status::DeviceError, 0, va.0)
        }
    }
}
