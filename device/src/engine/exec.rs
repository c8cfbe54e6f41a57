//! Command execution: one step of the command in flight, through the translate-and-access path.
//!
//! A step is one access. COPY and FILL take as many steps as their length needs (each at most
//! `ACCESS_MAX_BYTES`, possibly spanning pages), remembering their progress in the command in flight so a
//! fault stalls them mid-way and RESUME continues where they stopped. The 64-bit operations
//! are one step each, performed with host atomics on the guest's memory (8-byte aligned, so
//! never crossing a page), hence atomic against the vCPUs.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::addr::VirtAddr;
use crate::commands::{Completion, Operation, Status};
use crate::context::InFlight;
use crate::engine::access::{Miss, Need, Outcome, Translator};
use crate::engine::Shared;
use crate::fabric::importer::{remote_chunk, RemoteFailure};
use crate::segments::{RemoteTarget, Resolved, SegmentRefusal, SEGMENT_OFFSET_MASK};
use rmnic_fabric::protocol::Op;

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
        if let Some(step) = self.remote_step(ctx, asid, pt_root, inflight) {
            return step;
        }
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
                Ok(Resolved::Local(space, va)) => Ok(need.at(va, Some(space))),
                // `remote_step` runs remote addresses; the slot changed in between.
                Ok(Resolved::Remote(_)) => Err(completion(inflight, Status::SegmentInvalid, 0, at)),
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
                inflight.remote_retries = 0;
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

/// One address of a command with a remote segment address among its addresses.
enum Side {
    /// The context's own VA (after progress).
    Own(Need),
    /// A segment of the fabric's other node, at this offset (after progress); the segment
    /// address of that byte for completions.
    Remote(RemoteTarget, u64),
}

/// Most times a step retries a stale remote grant before the command fails.
const REMOTE_RETRIES: u8 = 8;

impl Shared {
    /// Executes one step of a command that names a remote segment (spec §20), or None when it
    /// names none (the local path runs). Addresses are resolved under the segment table's lock,
    /// which is released before the network round trips: the exporter checks every access
    /// itself, and holding it would stall the peer's revocations behind this step.
    fn remote_step(
        &self,
        ctx: u8,
        asid: u16,
        pt_root: u64,
        inflight: &mut InFlight,
    ) -> Option<Step> {
        let seg = inflight.command.segments;
        if !seg.any() {
            return None;
        }
        let progress = inflight.progress;
        let (remaining, addr0, addr1) = match inflight.command.op {
            Operation::Copy { dst, src, len } => (len.saturating_sub(progress), dst, Some(src)),
            Operation::Fill { dst, len, .. } => (len.saturating_sub(progress), dst, None),
            Operation::Read64 { addr }
            | Operation::Write64 { addr, .. }
            | Operation::FetchAdd { addr, .. }
            | Operation::Cas { addr, .. }
            | Operation::Swap { addr, .. } => (8, addr, None),
            Operation::Nop | Operation::Fence => return None,
        };
        let writes0 = !matches!(inflight.command.op, Operation::Read64 { .. });
        // Resolve both sides; a local segment on either side keeps the local path.
        let sides = {
            let table = self.segments_read();
            let side = |addr: VirtAddr, segment: bool, write: bool| -> Result<Option<Side>, Step> {
                if !segment {
                    let need = if write {
                        Need::write(addr)
                    } else {
                        Need::read(addr)
                    };
                    return Ok(addr
                        .checked_add(progress)
                        .map(|va| Side::Own(need.at(va, None))));
                }
                let base = addr.0 & !SEGMENT_OFFSET_MASK;
                let Some(offset) = (addr.0 & SEGMENT_OFFSET_MASK).checked_add(progress) else {
                    return Err(completion(inflight, Status::SegmentBounds, 0, addr.0));
                };
                match table.resolve(ctx, base | offset, remaining.max(1), write) {
                    Ok(Resolved::Remote(target)) => Ok(Some(Side::Remote(target, base | offset))),
                    // A local segment, or a refusal the local path reports.
                    Ok(Resolved::Local(..)) | Err(_) => Ok(None),
                }
            };
            let first = match side(addr0, seg.addr0, writes0) {
                Ok(first) => first,
                Err(step) => return Some(step),
            };
            let second = match addr1.map(|a| side(a, seg.addr1, false)) {
                None => None,
                Some(Ok(second)) => second,
                Some(Err(step)) => return Some(step),
            };
            (first, second, addr1.is_some())
        };
        let translator = Translator::new(self, ctx, asid, pt_root);
        let result = match sides {
            (Some(Side::Remote(target, at)), None, false) => {
                return Some(self.remote_single(inflight, &target, at, remaining));
            }
            (Some(Side::Own(dst)), Some(Side::Remote(src, at)), true) => {
                // COPY from the remote segment into the context's own memory.
                let chunk = remote_chunk(src.offset, remaining);
                // CAST: chunk <= ACCESS_MAX_BYTES.
                match self.remote_access(&src, src.offset, Op::Read { len: chunk as u32 }) {
                    Ok(done) => {
                        let outcome = translator.access(&[dst], chunk, |dma, t, off, bytes| {
                            // CAST: offsets within one chunk of at most ACCESS_MAX_BYTES.
                            let (off, bytes) = (off as usize, bytes as usize);
                            dma.write(t[0].gpa, &done.data[off..off + bytes])
                        });
                        Ok(outcome)
                    }
                    Err(failure) => Err((failure, at)),
                }
            }
            (Some(Side::Remote(dst, at)), Some(Side::Own(src)), true) => {
                // COPY from the context's own memory into the remote segment.
                let chunk = remote_chunk(dst.offset, remaining);
                // CAST: chunk <= ACCESS_MAX_BYTES.
                let mut buffer = vec![0u8; chunk as usize];
                let outcome = translator.access(&[src], chunk, |dma, t, off, bytes| {
                    // CAST: as above.
                    let (off, bytes) = (off as usize, bytes as usize);
                    dma.read(t[0].gpa, &mut buffer[off..off + bytes])
                });
                match outcome {
                    Outcome::Done { bytes, .. } => {
                        // CAST: bytes <= chunk.
                        buffer.truncate(bytes as usize);
                        match self.remote_access(&dst, dst.offset, Op::Write { data: buffer }) {
                            Ok(_) => Ok(Outcome::Done { bytes, value: () }),
                            Err(failure) => Err((failure, at)),
                        }
                    }
                    other => Ok(other),
                }
            }
            (Some(Side::Remote(..)), Some(Side::Remote(..)), _) => {
                // Both sides remote: not supported (one access names one page of one node).
                return Some(completion(inflight, Status::InvalidArgument, 0, 0));
            }
            // No remote side (or one next to a local segment): the local path.
            _ => return None,
        };
        let len = progress.saturating_add(remaining);
        Some(match result {
            Ok(outcome) => self.advance(inflight, len, outcome),
            Err((failure, at)) => self.remote_failed(inflight, failure, at),
        })
    }

    /// A command whose only address is remote: FILL, or a 64-bit operation.
    fn remote_single(
        &self,
        inflight: &mut InFlight,
        target: &RemoteTarget,
        at: u64,
        remaining: u64,
    ) -> Step {
        let op = match inflight.command.op {
            Operation::Fill { pattern, .. } => {
                let chunk = remote_chunk(target.offset, remaining);
                let phase = inflight.progress;
                // CAST: chunk <= ACCESS_MAX_BYTES; a remainder below 8.
                let data = (0..chunk)
                    .map(|i| pattern.to_le_bytes()[((phase + i) % 8) as usize])
                    .collect();
                Op::Write { data }
            }
            Operation::Read64 { .. } => Op::Read64,
            Operation::Write64 { value, .. } => Op::Write64 { value },
            Operation::FetchAdd { addend, .. } => Op::FetchAdd { addend },
            Operation::Cas { expected, new, .. } => Op::Cas { expected, new },
            Operation::Swap { value, .. } => Op::Swap { value },
            // COPY with one remote side is handled by the caller.
            _ => return completion(inflight, Status::InvalidArgument, 0, 0),
        };
        let fill = matches!(op, Op::Write { .. });
        let bytes = u64::from(op.len());
        match self.remote_access(target, target.offset, op) {
            Ok(done) if fill => {
                inflight.progress = inflight.progress.saturating_add(bytes);
                if let Operation::Fill { len, .. } = inflight.command.op {
                    if inflight.progress < len {
                        return Step::Progress;
                    }
                }
                completion(inflight, Status::Ok, done.value, 0)
            }
            Ok(done) => completion(inflight, Status::Ok, done.value, 0),
            Err(failure) => self.remote_failed(inflight, failure, at),
        }
    }

    /// A remote access failed: the command completes with its status, or the step is
    /// retried after a stale grant (at most [`REMOTE_RETRIES`] times in a row).
    fn remote_failed(&self, inflight: &mut InFlight, failure: RemoteFailure, at: u64) -> Step {
        match failure {
            RemoteFailure::Status(status) => completion(inflight, status, 0, at),
            RemoteFailure::Retry if inflight.remote_retries < REMOTE_RETRIES => {
                inflight.remote_retries += 1;
                Step::Progress
            }
            RemoteFailure::Retry => completion(inflight, Status::FaultUnresolved, 0, at),
        }
    }
}
