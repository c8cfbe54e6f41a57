//! Worker threads: take jobs from the run queue and execute commands of a context (popping
//! them from its virtio queue, stepping them, writing completions, stalling on faults) or
//! descriptors of the invalidation queue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;

use crate::addr::PageSize;
use crate::commands::{
    decode, Command, Completion, Operation, Status, COMMAND_SIZE, COMPLETION_SIZE,
};
use crate::context::{CommandQueue, Context, ContextState, InFlight, PendingFault};
use crate::engine::access::Miss;
use crate::engine::dma::Dma;
use crate::engine::exec::Step;
use crate::engine::scheduler::Job;
use crate::engine::{lock, Shared};
use crate::error_code::ErrorCode;
use crate::events::{EventKind, InjectedFault, InvalidationKind};
use crate::fault_ring::{FaultRecord, Posted};
use crate::inject::{DmaPurpose, InvalidationVerdict};
use crate::invalidation::{InvalidationDescriptor, INVQ_DESC_SIZE};
use crate::regs::CTX_PTROOT_LO;
use crate::rmnic::{VECTOR_COMPLETION, VECTOR_FAULT, VECTOR_INVALIDATION};
use crate::stats::{ContextCounter, GlobalCounter};
use crate::tlb::{Perms, TlbFill};

/// Steps a context may take before yielding its worker to other jobs.
const STEP_BUDGET: usize = 64;
/// Invalidation descriptors executed per batch (one done-word write per batch).
const INVALIDATION_BATCH: usize = 64;

/// The body of a worker thread: runs jobs until the scheduler shuts down.
pub(crate) fn run_worker(shared: Arc<Shared>) {
    while let Some(job) = shared.scheduler.next() {
        let more = match job {
            Job::Context(ctx) => shared.run_context(ctx),
            Job::Invalidations => shared.run_invalidations(),
        };
        shared.scheduler.finished(job, more);
    }
}

impl Shared {
    /// Runs context `index` for up to [`STEP_BUDGET`] steps; true if it has work left.
    pub(crate) fn run_context(&self, index: u8) -> bool {
        let Some(slot) = self.contexts.get(usize::from(index)) else {
            return false;
        };
        for _ in 0..STEP_BUDGET {
            let mut ctx = lock(slot);
            if !self.running() || ctx.state != ContextState::Active {
                return false;
            }
            let Some(mut inflight) = ctx.inflight else {
                match self.pop_command(&mut ctx) {
                    Ok(true) if ctx.inflight.is_some() && self.injector.reset_on_command(index) => {
                        // The reset takes every context lock, this one too: let it go first.
                        // This worker does not wait for itself: the reset waits only for locks.
                        drop(ctx);
                        self.injected(Some(index), InjectedFault::Reset);
                        self.function_reset();
                        return false;
                    }
                    Ok(true) => continue,
                    Ok(false) => return false,
                    Err(code) => {
                        self.context_error(&mut ctx, code);
                        return false;
                    }
                }
            };
            let asid = ctx.asid;
            let pt_root = ctx.regs.value64(CTX_PTROOT_LO);
            match self.step(index, asid, pt_root, &mut inflight) {
                Step::Progress => ctx.inflight = Some(inflight),
                Step::Complete(completion) => {
                    ctx.inflight = None;
                    if let Err(code) = self.complete(&mut ctx, &inflight, completion) {
                        self.context_error(&mut ctx, code);
                        return false;
                    }
                }
                Step::Fault(miss) => {
                    ctx.inflight = Some(inflight);
                    let delay = self.injector.fault_interrupt_delay(index);
                    let (more, raise) =
                        self.enter_fault(&mut ctx, inflight.command.id, miss, delay);
                    if raise {
                        // Read under the context lock, which a reset takes to announce.
                        let generation = self.resets.generation();
                        drop(ctx);
                        self.raise_fault_late(slot, index, delay, generation);
                    }
                    return more;
                }
            }
        }
        true
    }

    /// Pops the next command of `ctx` into its in-flight slot (or completes it at once if it
    /// cannot execute). Ok(false) when the queue is empty.
    fn pop_command(&self, ctx: &mut Context) -> Result<bool, ErrorCode> {
        let dma = self.dma(DmaPurpose::CommandQueue);
        let popped = match &mut ctx.queue {
            CommandQueue::Split(queue) => Self::pop_split(queue, &dma)?,
            CommandQueue::Inline(queue) => queue
                .pop(&dma)?
                .map(|cmd| (cmd.slot, cmd.completion, cmd.record)),
        };
        let Some((head, completion, bytes)) = popped else {
            return Ok(false);
        };
        self.start_command(ctx, head, completion, &bytes)?;
        Ok(true)
    }

    /// The next descriptor chain of a split queue: (head, completion address, command
    /// record), or None when the available ring is empty.
    fn pop_split(
        queue: &mut Queue,
        dma: &Dma<'_>,
    ) -> Result<Option<(u16, GuestAddress, [u8; COMMAND_SIZE])>, ErrorCode> {
        let next_avail = queue.next_avail();
        let avail = queue
            .avail_idx(dma, std::sync::atomic::Ordering::Acquire)
            .map_err(|_| ErrorCode::QueueDma)?;
        if avail.0 == next_avail {
            return Ok(None);
        }
        let chain = {
            let mut iter = queue.iter(dma).map_err(|error| match error {
                virtio_queue::Error::InvalidAvailRingIndex => ErrorCode::AvailIndex,
                _ => ErrorCode::QueueDma,
            })?;
            // The index moved, so a missing element means its read failed.
            iter.next().ok_or(ErrorCode::QueueDma)?
        };
        let head = chain.head_index();
        let mut descriptors = chain;
        let first = descriptors.next().ok_or(ErrorCode::DescriptorChain)?;
        // CAST: u32 fits usize.
        if first.is_write_only() || (first.len() as usize) < COMMAND_SIZE || !first.has_next() {
            return Err(ErrorCode::DescriptorChain);
        }
        let second = descriptors.next().ok_or(ErrorCode::DescriptorChain)?;
        if !second.is_write_only() || (second.len() as usize) < COMPLETION_SIZE || second.has_next()
        {
            return Err(ErrorCode::DescriptorChain);
        }
        let mut bytes = [0u8; COMMAND_SIZE];
        dma.read(first.addr(), &mut bytes)
            .map_err(|_| ErrorCode::QueueDma)?;
        Ok(Some((head, second.addr(), bytes)))
    }

    /// Decodes a popped command record into the context's in-flight slot, or completes it at
    /// once when it cannot execute (§7.2's checks).
    fn start_command(
        &self,
        ctx: &mut Context,
        head: u16,
        completion: GuestAddress,
        bytes: &[u8; COMMAND_SIZE],
    ) -> Result<(), ErrorCode> {
        match decode(bytes) {
            Ok(command) => {
                ctx.inflight = Some(InFlight {
                    head,
                    completion,
                    command,
                    progress: 0,
                    remote_retries: 0,
                });
            }
            Err(rejected) => {
                let inflight = InFlight {
                    head,
                    completion,
                    command: Command {
                        id: rejected.id,
                        interrupt: rejected.interrupt,
                        op: Operation::Nop,
                        segments: Default::default(),
                    },
                    progress: 0,
                    remote_retries: 0,
                };
                let completion = Completion {
                    id: rejected.id,
                    status: rejected.status,
                    result: 0,
                    fault_va: 0,
                };
                self.complete(ctx, &inflight, completion)?;
            }
        }
        Ok(())
    }

    /// Writes `completion` for `inflight`, then publishes it in the used ring (release
    /// ordering: the record is visible first), then interrupts if the command asked.
    pub(crate) fn complete(
        &self,
        ctx: &mut Context,
        inflight: &InFlight,
        completion: Completion,
    ) -> Result<(), ErrorCode> {
        self.dma(DmaPurpose::Completion)
            .write(inflight.completion, &completion.to_bytes())
            .map_err(|_| ErrorCode::QueueDma)?;
        let dma = self.dma(DmaPurpose::CommandQueue);
        match &mut ctx.queue {
            CommandQueue::Split(queue) => {
                // CAST: the completion record is 32 bytes.
                let used_len = COMPLETION_SIZE as u32;
                queue
                    .add_used(&dma, inflight.head, used_len)
                    .map_err(|_| ErrorCode::QueueDma)?;
            }
            CommandQueue::Inline(queue) => queue.publish(&dma)?,
        }
        self.stats.count(GlobalCounter::CommandsCompleted, 1);
        if completion.status == Status::DeviceError {
            self.stats.count(GlobalCounter::Errors, 1);
        }
        if let Some(stats) = self.ctx_stats(ctx.index) {
            stats.count(ContextCounter::CommandsCompleted, 1);
        }
        self.events.record(EventKind::Completion {
            ctx: ctx.index,
            id: completion.id,
            status: completion.status,
        });
        if inflight.command.interrupt {
            self.raise(VECTOR_COMPLETION);
        }
        Ok(())
    }

    /// The command in flight missed a translation: report it and stall the context. Without
    /// a fault ring the command fails at once with FAULT_UNRESOLVED. Returns whether the
    /// context has work left, and whether the caller must raise the fault interrupt after
    /// `irq_delay` (fault injection) once it has let go of the context lock.
    fn enter_fault(
        &self,
        ctx: &mut Context,
        command_id: u64,
        miss: Miss,
        irq_delay: Duration,
    ) -> (bool, bool) {
        let record = FaultRecord {
            ctx: ctx.index,
            asid: ctx.asid,
            access: miss.access,
            reason: miss.reason,
            va: miss.va,
            command_id,
            segment_slot: miss.segment_slot,
            remote: false,
        };
        let posted = lock(&self.fault_ring).post(record, &self.dma(DmaPurpose::FaultRecord));
        if posted == Ok(Posted::NoRing) {
            let Some(inflight) = ctx.inflight.take() else {
                return (true, false);
            };
            let completion = Completion {
                id: command_id,
                status: Status::FaultUnresolved,
                result: 0,
                fault_va: miss.reported,
            };
            if let Err(code) = self.complete(ctx, &inflight, completion) {
                self.context_error(ctx, code);
                return (false, false);
            }
            return (true, false);
        }
        ctx.state = ContextState::Faulted;
        ctx.note_fault(PendingFault {
            va: miss.va,
            access: miss.access,
            reason: miss.reason,
            segment_slot: miss.segment_slot,
            reported: miss.reported,
        });
        self.stats.count(GlobalCounter::Faults, 1);
        if let Some(stats) = self.ctx_stats(ctx.index) {
            stats.count(ContextCounter::Faults, 1);
        }
        self.note_state(ctx);
        match posted {
            Ok(Posted::Written(index)) => {
                self.events.record(EventKind::FaultRecord {
                    ctx: ctx.index,
                    va: miss.va,
                    index,
                });
                if !irq_delay.is_zero() {
                    self.injected(Some(ctx.index), InjectedFault::SlowFaultInterrupt);
                    return (false, true);
                }
                self.raise(VECTOR_FAULT);
            }
            Ok(Posted::Queued | Posted::NoRing) => {}
            Err(_) => self.device_error(ErrorCode::Dma),
        }
        (false, false)
    }

    /// Raises the fault interrupt of context `index` (in `slot`) `delay` after its record
    /// was written (fault injection: `slow-fault`). Sleeps with no lock held; raises under
    /// the context lock unless a reset came after `generation`, so a reset's promise of no
    /// further interrupt holds.
    fn raise_fault_late(&self, slot: &Mutex<Context>, index: u8, delay: Duration, generation: u64) {
        std::thread::sleep(delay);
        let _ctx = lock(slot);
        if self.resets.generation() == generation {
            self.raise(VECTOR_FAULT);
        } else {
            tracing::debug!(
                ctx = index,
                "rmnic: late fault interrupt dropped by a reset"
            );
        }
    }

    /// Executes up to [`INVALIDATION_BATCH`] invalidation descriptors, then writes the done
    /// word once. True if descriptors are left.
    pub(crate) fn run_invalidations(&self) -> bool {
        let mut queue = lock(&self.invq);
        if !self.running() {
            return false;
        }
        let Some(config) = queue.config() else {
            return false;
        };
        let dma = self.dma(DmaPurpose::Invalidation);
        let mut completed = None;
        let mut interrupt = false;
        let mut error = None;
        let mut stalled = false;
        for _ in 0..INVALIDATION_BATCH {
            if queue.pending() == 0 {
                break;
            }
            let mut bytes = [0u8; INVQ_DESC_SIZE];
            if dma.read(config.slot(queue.head()), &mut bytes).is_err() {
                error = Some(ErrorCode::Dma);
                break;
            }
            let descriptor = match InvalidationDescriptor::decode(&bytes, queue.done_seq()) {
                Ok(descriptor) => descriptor,
                Err(code) => {
                    error = Some(code);
                    break;
                }
            };
            let verdict = self.injector.invalidation(&descriptor);
            match verdict {
                InvalidationVerdict::Perform => {}
                InvalidationVerdict::Drop => {
                    self.injected(None, InjectedFault::DroppedInvalidation)
                }
                InvalidationVerdict::Delay(delay) => {
                    self.injected(None, InjectedFault::DelayedInvalidation);
                    // Holds the invalidation queue lock: a reset waits for the delay.
                    std::thread::sleep(delay);
                }
                InvalidationVerdict::Stall => {
                    self.injected(None, InjectedFault::StalledInvalidation);
                    stalled = true;
                    break;
                }
            }
            let dropped = verdict == InvalidationVerdict::Drop;
            let removed = if dropped {
                0
            } else {
                let removed = self.execute(&descriptor);
                self.install_stale(&descriptor);
                // The fabric's other node drops what it caches of the range (or is fenced)
                // before this descriptor completes.
                self.forward_invalidation(&descriptor);
                removed
            };
            let counter = match descriptor.kind {
                InvalidationKind::Range => GlobalCounter::InvalRange,
                InvalidationKind::Asid => GlobalCounter::InvalAsid,
                InvalidationKind::Global => GlobalCounter::InvalGlobal,
            };
            self.stats.count(counter, 1);
            let (start, end) = descriptor
                .range
                .map_or((0, 0), |range| (range.start().0, range.end().0));
            self.events.record(EventKind::Invalidation {
                kind: descriptor.kind,
                asid: descriptor.asid,
                start,
                end,
                seq: descriptor.seq,
                removed,
                dropped,
            });
            queue.complete_head(descriptor.seq);
            completed = Some(descriptor.seq);
            interrupt |= descriptor.interrupt;
        }
        if let Some(seq) = completed {
            // The TLB write locks taken above waited for every access through the removed
            // entries, so the promise holds when the driver sees this word.
            if dma.store_u64_release(config.done, seq).is_err() {
                error = error.or(Some(ErrorCode::Dma));
            } else {
                self.events.record(EventKind::InvalidationComplete { seq });
                if interrupt {
                    self.raise(VECTOR_INVALIDATION);
                }
            }
        }
        let more = error.is_none() && !stalled && queue.pending() > 0;
        // Read under the queue lock, which a reset takes to announce.
        let generation = self.resets.generation();
        drop(queue);
        drop(dma);
        if let Some(code) = error {
            self.device_error(code);
        }
        if stalled && error.is_none() {
            // The stalled descriptor keeps the head: this job stays running, so later
            // descriptors wait behind it. Blocks with no lock and no memory snapshot held
            // (a reset and a memory map change proceed) until a reset abandons the queue.
            self.resets.wait_past(generation);
        }
        more
    }

    /// Fault injection (`stale-dropin`): installs again what the injector says a drop-in
    /// racing with `descriptor` would have left behind, before its completion is reported.
    /// Caller holds the invalidation queue lock (taken before the TLB's).
    fn install_stale(&self, descriptor: &InvalidationDescriptor) {
        for stale in self.injector.stale_dropins(descriptor) {
            let sizes = [PageSize::Size4K, PageSize::Size2M];
            let Some(size) = sizes.into_iter().find(|size| size.bytes() == stale.size) else {
                continue;
            };
            let perms = if stale.writable {
                Perms::READ_WRITE
            } else {
                Perms::READ
            };
            self.injected(Some(stale.ctx), InjectedFault::StaleDropIn);
            self.install(
                TlbFill {
                    asid: stale.asid,
                    va: stale.va,
                    size,
                    gpa: stale.gpa,
                    perms,
                    ctx: stale.ctx,
                },
                stale.pt_root,
            );
        }
    }

    /// Removes what `descriptor` names; returns how many entries.
    fn execute(&self, descriptor: &InvalidationDescriptor) -> u64 {
        let mut tlb = self.tlb_write();
        let mut removed = self.on_removed();
        let count = match descriptor.kind {
            InvalidationKind::Range => descriptor.range.map_or(0, |range| {
                tlb.invalidate_range(descriptor.asid, range, &mut removed)
            }),
            InvalidationKind::Asid => tlb.invalidate_asid(descriptor.asid, &mut removed),
            InvalidationKind::Global => tlb.invalidate_all(&mut removed),
        };
        // CAST: at most 2^19 entries.
        count as u64
    }
}
