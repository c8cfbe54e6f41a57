//! The control logic behind the register windows: what reads of live registers return and
//! what writes do (enable, reset, doorbells, drop-ins, resume, abort, ring indices).
//!
//! Every guest write first goes through the register block's one masked write path; the side
//! effect then acts on the old and new values. Every check of a guest value that fails puts
//! the context or the device into its error state (`ErrorCode`), never panics.

use std::collections::hash_map::Entry;
use std::sync::MutexGuard;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::addr::{PageSize, VirtAddr};
use crate::commands::{Completion, Status};
use crate::context::{Context, ContextState};
use crate::engine::scheduler::Job;
use crate::engine::{lock, Shared};
use crate::error_code::ErrorCode;
use crate::events::{EventKind, EVENT_MMIO_READ};
use crate::fabric::{REMOTE_ANSWER_STATUS_SHIFT, REMOTE_ANSWER_TAG_MASK};
use crate::fault_ring::FaultRingConfig;
use crate::inject::{DmaPurpose, DropIn};
use crate::invalidation::InvqConfig;
use crate::mmio::{self, MmioWidth};
use crate::regs::{
    check_access, RegisterError, CONTEXT_REGISTERS, CQ_DOORBELL, CTX_BLOCK_BASE, CTX_BLOCK_SIZE,
    CTX_CMD_ABORT, CTX_CMD_ABORT_STATUS_MASK, CTX_CMD_ABORT_STATUS_SHIFT, CTX_CMD_DROPIN,
    CTX_CMD_DROPIN_LIST, CTX_CMD_RESUME, CTX_COMMAND, CTX_COMMAND_OP_MASK, CTX_CONTROL,
    CTX_CONTROL_ENABLE, CTX_PTROOT_LO, CTX_STATS_BASE, CTX_STATUS, DEV_CONTROL_ENABLE,
    DEV_CONTROL_FLR, DEV_STATUS_ENABLED, DEV_STATUS_ERROR, DROPIN_ATTR, DROPIN_ATTR_2M,
    DROPIN_ATTR_READ, DROPIN_ATTR_WRITE, DROPIN_GPA_LO, DROPIN_LIST_COUNT, DROPIN_LIST_LO,
    DROPIN_LIST_MAX, DROPIN_RECORD_SIZE, DROPIN_VA_LO, FAULT_INFO, FAULT_VA_HI, FAULT_VA_LO,
    GLOBAL_REGISTERS, REGISTER_WINDOW_SIZE, REG_DEV_CONTROL, REG_DEV_ERROR, REG_DEV_STATUS,
    REG_FAULT_BASE_LO, REG_FAULT_HEAD, REG_FAULT_SIZE, REG_FAULT_TAIL, REG_INVQ_BASE_LO,
    REG_INVQ_DONE_ADDR_LO, REG_INVQ_DONE_SEQ_HI, REG_INVQ_DONE_SEQ_LO, REG_INVQ_HEAD,
    REG_INVQ_SIZE, REG_INVQ_TAIL, REG_REMOTE_ANSWER, REG_SCRATCH, REG_STATS_BASE, REG_TLB_GEOMETRY,
    TLB_GEOMETRY_SETS_SHIFT, TLB_GEOMETRY_WAYS_SHIFT,
};
use crate::rmnic::VECTOR_FAULT;
use crate::segments::{
    ExportChange, OwnerState, CTX_ATTACH_BASE, CTX_RKEY_LO, CTX_RLENGTH_HI, EXPORT_ENTRY_SIZE,
    EXPORT_TABLE_BASE, NUM_ATTACHMENTS,
};
use crate::stats::{self, ContextCounter, GlobalCounter, CONTEXT_COUNTERS, GLOBAL_COUNTERS};
use crate::tlb::{Perms, TlbFill};

/// A register window of BAR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Window {
    /// The global registers.
    Global,
    /// Context `i`'s block.
    Context(usize),
    /// Export table entry `i` (spec §19).
    Export(usize),
}

impl Window {
    fn size(self) -> u64 {
        match self {
            Self::Global => REGISTER_WINDOW_SIZE,
            Self::Context(_) => CTX_BLOCK_SIZE,
            Self::Export(_) => EXPORT_ENTRY_SIZE,
        }
    }

    /// BAR0 offset of `offset` in this window, for the event log.
    fn bar_offset(self, offset: u64) -> u64 {
        match self {
            Self::Global => offset,
            // CAST: i < NUM_CONTEXTS.
            Self::Context(i) => CTX_BLOCK_BASE + i as u64 * CTX_BLOCK_SIZE + offset,
            // CAST: i < NUM_EXPORTS.
            Self::Export(i) => EXPORT_TABLE_BASE + i as u64 * EXPORT_ENTRY_SIZE + offset,
        }
    }
}

/// The attachment slot whose `CTX_ATTACH` register is at `offset` of a context block.
fn attachment_slot(offset: u64) -> Option<usize> {
    let relative = offset.checked_sub(CTX_ATTACH_BASE)?;
    // CAST: below 4 × NUM_ATTACHMENTS.
    (relative % 4 == 0 && relative < 4 * NUM_ATTACHMENTS as u64).then_some((relative / 4) as usize)
}

fn split(value: u64) -> [u32; 2] {
    // CAST: splitting a u64 into its halves.
    [value as u32, (value >> 32) as u32]
}

impl Shared {
    /// The guest reads `data.len()` bytes at `offset` in `window`; all ones if refused.
    pub(crate) fn read_window(
        &self,
        window: Window,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), RegisterError> {
        let width = match check_access(offset, data.len(), window.size()) {
            Ok(width) => width,
            Err(error) => {
                mmio::fill_all_ones(data);
                return Err(error);
            }
        };
        let dwords = match width {
            MmioWidth::Dword => [self.read_dword(window, offset), 0],
            MmioWidth::Qword => split(self.read_qword(window, offset)),
        };
        if self.events.enabled(EVENT_MMIO_READ) {
            for (i, value) in dwords.iter().take(width.dwords()).enumerate() {
                self.events.record(EventKind::MmioRead {
                    offset: window.bar_offset(offset + 4 * i as u64),
                    value: *value,
                });
            }
        }
        mmio::store_dwords(data, dwords);
        Ok(())
    }

    /// The guest writes `data` at `offset` in `window`; dropped if refused.
    pub(crate) fn write_window(
        &self,
        window: Window,
        offset: u64,
        data: &[u8],
    ) -> Result<(), RegisterError> {
        let width = check_access(offset, data.len(), window.size())?;
        for (i, value) in mmio::load_dwords(data)
            .iter()
            .take(width.dwords())
            .enumerate()
        {
            let offset = offset + 4 * i as u64;
            self.events.record(EventKind::MmioWrite {
                offset: window.bar_offset(offset),
                value: *value,
            });
            match window {
                Window::Global => self.write_global(offset, *value),
                Window::Context(ctx) => match attachment_slot(offset) {
                    Some(slot) => self.write_attachment(ctx, slot, *value),
                    None if (CTX_RKEY_LO..=CTX_RLENGTH_HI).contains(&offset) => {
                        self.segments_write().write_remote_key(ctx, offset, *value)
                    }
                    None => self.write_context(ctx, offset, *value),
                },
                Window::Export(index) => self.write_export(index, offset, *value),
            }
        }
        Ok(())
    }

    /// A 64-bit read: one snapshot for counters and the live 64-bit registers.
    fn read_qword(&self, window: Window, offset: u64) -> u64 {
        let counters = match window {
            Window::Global => &GLOBAL_COUNTERS[..],
            Window::Context(_) => &CONTEXT_COUNTERS[..],
            Window::Export(_) => &[][..],
        };
        if let Some((index, false)) = stats::locate(counters, offset) {
            return self.counter(window, index);
        }
        match (window, offset) {
            (Window::Global, REG_INVQ_DONE_SEQ_LO) => lock(&self.invq).done_seq(),
            (Window::Context(i), FAULT_VA_LO) => {
                self.contexts.get(i).map_or(0, |ctx| lock(ctx).fault_va)
            }
            _ => {
                u64::from(self.read_dword(window, offset))
                    | (u64::from(self.read_dword(window, offset + 4)) << 32)
            }
        }
    }

    fn counter(&self, window: Window, index: usize) -> u64 {
        match window {
            Window::Global => self.stats.get(index),
            Window::Context(i) => self.ctx_stats.get(i).map_or(0, |s| s.get(index)),
            Window::Export(_) => 0,
        }
    }

    fn read_dword(&self, window: Window, offset: u64) -> u32 {
        match (window, attachment_slot(offset)) {
            (Window::Export(index), _) => return self.segments_read().read_export(index, offset),
            (Window::Context(ctx), Some(slot)) => {
                return self.segments_read().read_attachment(ctx, slot)
            }
            (Window::Context(ctx), None) if (CTX_RKEY_LO..=CTX_RLENGTH_HI).contains(&offset) => {
                return self.segments_read().read_remote_key(ctx, offset)
            }
            _ => {}
        }
        let (table, stats_base, counters) = match window {
            Window::Export(_) => return 0,
            Window::Global => (&GLOBAL_REGISTERS[..], REG_STATS_BASE, &GLOBAL_COUNTERS[..]),
            Window::Context(_) => (
                &CONTEXT_REGISTERS[..],
                CTX_STATS_BASE,
                &CONTEXT_COUNTERS[..],
            ),
        };
        if offset >= stats_base {
            return match stats::locate(counters, offset) {
                Some((index, high)) => split(self.counter(window, index))[usize::from(high)],
                None => 0,
            };
        }
        let Some(spec) = table.iter().find(|spec| spec.offset == offset) else {
            return 0;
        };
        match window {
            Window::Global if spec.live => self.live_global(offset),
            Window::Global => lock(&self.global).value(offset),
            Window::Export(_) => 0,
            Window::Context(i) => {
                let Some(slot) = self.contexts.get(i) else {
                    return 0;
                };
                let ctx = lock(slot);
                match offset {
                    CTX_STATUS => ctx.status(),
                    FAULT_VA_LO => split(ctx.fault_va)[0],
                    FAULT_VA_HI => split(ctx.fault_va)[1],
                    FAULT_INFO => ctx.fault_info,
                    _ => ctx.regs.value(offset),
                }
            }
        }
    }

    fn live_global(&self, offset: u64) -> u32 {
        match offset {
            REG_TLB_GEOMETRY => {
                let geometry = self.tlb_read().geometry();
                (geometry.sets() << TLB_GEOMETRY_SETS_SHIFT)
                    | (geometry.ways() << TLB_GEOMETRY_WAYS_SHIFT)
            }
            REG_DEV_STATUS => {
                let global = lock(&self.global);
                let mut status = 0;
                if global.value(REG_DEV_CONTROL) & DEV_CONTROL_ENABLE != 0 {
                    status |= DEV_STATUS_ENABLED;
                }
                if global.value(REG_DEV_ERROR) != 0 {
                    status |= DEV_STATUS_ERROR;
                }
                status
            }
            REG_FAULT_HEAD => lock(&self.fault_ring).head(),
            REG_INVQ_HEAD => lock(&self.invq).head(),
            REG_INVQ_DONE_SEQ_LO => split(lock(&self.invq).done_seq())[0],
            REG_INVQ_DONE_SEQ_HI => split(lock(&self.invq).done_seq())[1],
            _ => 0,
        }
    }

    fn device_enabled(&self) -> bool {
        lock(&self.global).value(REG_DEV_CONTROL) & DEV_CONTROL_ENABLE != 0
    }

    // --- Global registers ----------------------------------------------------------------

    fn write_global(&self, offset: u64, value: u32) {
        match offset {
            REG_DEV_CONTROL => self.write_dev_control(value),
            REG_DEV_ERROR => self.write_dev_error(value),
            REG_FAULT_TAIL => self.write_fault_tail(value),
            REG_INVQ_TAIL => self.write_invq_tail(value),
            REG_REMOTE_ANSWER => {
                // CAST: masked fields of 16 and 8 bits.
                let tag = (value & REMOTE_ANSWER_TAG_MASK) as u16;
                let status = (value >> REMOTE_ANSWER_STATUS_SHIFT) as u8;
                self.fabric.answer(tag, status);
            }
            REG_SCRATCH => {
                // The scratch register has no effect, so software uses it to mark its phases
                // in traces: a marker event survives when MMIO writes are not logged.
                self.events.record(EventKind::Marker { value });
                let mut global = lock(&self.global);
                let enabled = global.value(REG_DEV_CONTROL) & DEV_CONTROL_ENABLE != 0;
                global.guest_write(offset, value, enabled);
            }
            _ => {
                let mut global = lock(&self.global);
                let enabled = global.value(REG_DEV_CONTROL) & DEV_CONTROL_ENABLE != 0;
                global.guest_write(offset, value, enabled);
            }
        }
    }

    fn write_dev_control(&self, value: u32) {
        let Some(written) = lock(&self.global).guest_write(REG_DEV_CONTROL, value, false) else {
            return;
        };
        if written.new & DEV_CONTROL_FLR != 0 {
            self.function_reset();
            return;
        }
        let was = written.old & DEV_CONTROL_ENABLE != 0;
        let now = written.new & DEV_CONTROL_ENABLE != 0;
        if !was && now {
            self.enable_device(written.old);
        } else if was && !now {
            self.disable_device();
        }
    }

    /// DEV_CONTROL.ENABLE 0 → 1: latch and check the fault ring and invalidation queue.
    fn enable_device(&self, old_control: u32) {
        let error = {
            let mut fault_ring = lock(&self.fault_ring);
            let mut invq = lock(&self.invq);
            let mut global = lock(&self.global);
            let fault_config = FaultRingConfig::validate(
                global.value64(REG_FAULT_BASE_LO),
                global.value(REG_FAULT_SIZE),
                &self.dma(DmaPurpose::FaultRecord),
            );
            let invq_config = InvqConfig::validate(
                global.value64(REG_INVQ_BASE_LO),
                global.value(REG_INVQ_SIZE),
                global.value64(REG_INVQ_DONE_ADDR_LO),
                &self.dma(DmaPurpose::Invalidation),
            );
            match (fault_config, invq_config) {
                (Ok(fault_config), Ok(invq_config)) => {
                    fault_ring.configure(fault_config);
                    invq.configure(invq_config);
                    global.set(REG_FAULT_TAIL, 0);
                    global.set(REG_INVQ_TAIL, 0);
                    self.update_running(&global);
                    None
                }
                (Err(code), _) | (_, Err(code)) => {
                    global.set(REG_DEV_CONTROL, old_control);
                    Some(code)
                }
            }
        };
        if let Some(code) = error {
            self.device_error(code);
        }
    }

    /// DEV_CONTROL.ENABLE 1 → 0: disable every context (aborting commands in flight), drop
    /// the rings' configuration, empty the TLB.
    fn disable_device(&self) {
        let mut contexts: Vec<MutexGuard<'_, Context>> = self.contexts.iter().map(lock).collect();
        for ctx in &mut contexts {
            if ctx.state != ContextState::Free || ctx.enable_bit() {
                self.disable_context(ctx);
            }
        }
        lock(&self.fault_ring).configure(None);
        lock(&self.invq).configure(None);
        self.update_running(&lock(&self.global));
        self.tlb_write().invalidate_all(&mut self.on_removed());
    }

    /// DEV_CONTROL.RESET: back to reset state without writing guest memory. Waits for the
    /// step each worker is in (at most one access) by taking every lock. Also called by a
    /// worker (fault injection: `reset:N`) that holds none of them; a worker stalled on an
    /// invalidation (`stall-invalidate`) holds none either, and wakes on the announcement.
    pub(crate) fn function_reset(&self) {
        let mut contexts: Vec<MutexGuard<'_, Context>> = self.contexts.iter().map(lock).collect();
        let mut segments = self.segments_write();
        let mut asids = lock(&self.asids);
        let mut fault_ring = lock(&self.fault_ring);
        let mut invq = lock(&self.invq);
        let mut exporter = self.fabric.exporter_write();
        let mut global = lock(&self.global);
        let mut tlb = self.tlb_write();
        for ctx in &mut contexts {
            ctx.reset();
        }
        *exporter = crate::fabric::ExporterState::default();
        self.fabric.reset_leaves();
        segments.reset();
        asids.clear();
        fault_ring.configure(None);
        invq.configure(None);
        global.reset();
        self.update_running(&global);
        tlb.invalidate_all(&mut |_, _| {});
        self.stats.reset();
        for stats in &self.ctx_stats {
            stats.reset();
        }
        // Announced with every lock held: work that read the generation under one of them
        // either finished before this reset or sees it.
        self.resets.announce();
        self.events.record(EventKind::Reset);
    }

    fn write_dev_error(&self, value: u32) {
        let cleared = {
            let mut global = lock(&self.global);
            let written = global.guest_write(REG_DEV_ERROR, value, false);
            self.update_running(&global);
            written.is_some_and(|w| w.old != 0 && w.new == 0)
        };
        if cleared && self.running() {
            self.kick_all();
        }
    }

    fn write_fault_tail(&self, value: u32) {
        let mut fault_ring = lock(&self.fault_ring);
        {
            let mut global = lock(&self.global);
            global.guest_write(REG_FAULT_TAIL, value, false);
            if global.value(REG_DEV_CONTROL) & DEV_CONTROL_ENABLE == 0 {
                return;
            }
        }
        if let Err(code) = fault_ring.set_tail(value) {
            drop(fault_ring);
            self.device_error(code);
            return;
        }
        let written = fault_ring.drain(&self.dma(DmaPurpose::FaultRecord));
        drop(fault_ring);
        match written {
            Ok(records) => {
                for (record, index) in records {
                    self.events.record(EventKind::FaultRecord {
                        ctx: record.ctx,
                        va: record.va,
                        index,
                    });
                    self.raise(VECTOR_FAULT);
                }
            }
            Err(_) => self.device_error(ErrorCode::Dma),
        }
    }

    fn write_invq_tail(&self, value: u32) {
        let mut invq = lock(&self.invq);
        {
            let mut global = lock(&self.global);
            global.guest_write(REG_INVQ_TAIL, value, false);
            if global.value(REG_DEV_CONTROL) & DEV_CONTROL_ENABLE == 0 {
                return;
            }
        }
        let result = invq.set_tail(value);
        drop(invq);
        match result {
            Ok(()) => {
                self.events
                    .record(EventKind::InvalidationDoorbell { tail: value });
                self.scheduler.schedule(Job::Invalidations);
            }
            Err(code) => self.device_error(code),
        }
    }

    // --- Segments (spec §19) -------------------------------------------------------------

    /// A write to export table entry `index`. Setting VALID checks the owner context named in
    /// the value, whose lock comes before the segment table's.
    fn write_export(&self, index: usize, offset: u64, value: u32) {
        let owner = self.segments_read().owner_to_check(index, offset, value);
        let owner_ctx = owner
            .and_then(|owner| self.contexts.get(usize::from(owner)))
            .map(lock);
        let state = owner_ctx.as_ref().map(|ctx| OwnerState {
            live: ctx.state.live() && ctx.owns_asid,
            asid: ctx.asid,
            pt_root: ctx.regs.value64(CTX_PTROOT_LO),
        });
        let change = self
            .segments_write()
            .write_export(index, offset, value, state);
        drop(owner_ctx);
        match change {
            ExportChange::None => {}
            ExportChange::Installed(export) => {
                self.events.record(EventKind::Export {
                    // CAST: index < NUM_EXPORTS (64).
                    index: index as u8,
                    owner: export.owner,
                    base: export.base,
                    length: export.length,
                    writable: export.writable,
                });
                self.fabric_export_installed(index, &export);
            }
            ExportChange::Revoked(attachments) => {
                self.record_revocation(index, attachments);
                self.fabric_export_revoked(index);
            }
        }
    }

    /// A write to `CTX_ATTACH` of `slot` in context `ctx`. A remote attachment asks the
    /// fabric's other node first, with no lock held during the round trip.
    fn write_attachment(&self, ctx: usize, slot: usize, value: u32) {
        let request = self.segments_read().remote_attach_request(ctx, slot, value);
        match request {
            Some((key, write)) => {
                let granted = self.remote_attach(key, write);
                self.segments_write()
                    .attach_remote(ctx, slot, value, granted);
            }
            None => {
                let detached = self.segments_write().write_attachment(ctx, slot, value);
                if let Some((export, generation)) = detached {
                    self.remote_detach(export, generation);
                }
            }
        }
    }

    fn record_revocation(&self, index: usize, attachments: usize) {
        self.events.record(EventKind::ExportRevoked {
            // CAST: index < NUM_EXPORTS (64).
            index: index as u8,
            attachments: u32::try_from(attachments).unwrap_or(u32::MAX),
        });
    }

    // --- Context registers ---------------------------------------------------------------

    fn write_context(&self, index: usize, offset: u64, value: u32) {
        let Some(slot) = self.contexts.get(index) else {
            return;
        };
        let mut ctx = lock(slot);
        let enabled = ctx.enable_bit();
        let Some(written) = ctx.regs.guest_write(offset, value, enabled) else {
            return;
        };
        match offset {
            CTX_CONTROL => {
                let was = written.old & CTX_CONTROL_ENABLE != 0;
                let now = written.new & CTX_CONTROL_ENABLE != 0;
                if !was && now {
                    if self.device_enabled() {
                        self.enable_context(&mut ctx);
                    } else {
                        // Contexts cannot be enabled while the device is disabled.
                        ctx.regs.set(CTX_CONTROL, written.old);
                    }
                } else if was && !now {
                    self.disable_context(&mut ctx);
                }
            }
            CQ_DOORBELL => {
                self.events.record(EventKind::Doorbell { ctx: ctx.index });
                if ctx.state == ContextState::Active && self.running() {
                    self.scheduler.schedule(Job::Context(ctx.index));
                }
            }
            CTX_COMMAND => self.context_command(&mut ctx, written.value),
            _ => {}
        }
    }

    /// CTX_CONTROL.ENABLE 0 → 1.
    fn enable_context(&self, ctx: &mut Context) {
        let queue = match ctx.build_queue(&self.dma(DmaPurpose::CommandQueue)) {
            Ok(queue) => queue,
            Err(code) => {
                self.context_error(ctx, code);
                return;
            }
        };
        let asid = ctx.programmed_asid();
        let taken = match lock(&self.asids).entry(asid) {
            Entry::Occupied(_) => true,
            Entry::Vacant(slot) => {
                slot.insert(ctx.index);
                false
            }
        };
        if taken {
            self.context_error(ctx, ErrorCode::AsidInUse);
            return;
        }
        ctx.asid = asid;
        ctx.owns_asid = true;
        ctx.queue = queue;
        ctx.inflight = None;
        ctx.fault = None;
        ctx.state = ContextState::Active;
        self.note_state(ctx);
        self.scheduler.schedule(Job::Context(ctx.index));
    }

    /// CTX_CONTROL.ENABLE 1 → 0: the command in flight completes ABORTED (unless the context
    /// is in ERROR), a waiting fault record is dropped, the context's TLB entries are flushed.
    pub(crate) fn disable_context(&self, ctx: &mut Context) {
        if ctx.state.live() {
            if let Some(inflight) = ctx.inflight.take() {
                let completion = Completion {
                    id: inflight.command.id,
                    status: Status::Aborted,
                    result: 0,
                    fault_va: 0,
                };
                self.count_abort(ctx.index);
                // The context is going away: a failed completion write changes nothing more.
                let _ = self.complete(ctx, &inflight, completion);
            }
        }
        if ctx.owns_asid {
            lock(&self.asids).remove(&ctx.asid);
        }
        lock(&self.fault_ring).cancel(ctx.index);
        // Its exports go (importers' next accesses complete SEGMENT_INVALID) before its ASID's
        // entries, and its attachments with them; once this lock is released no access
        // through them is running.
        let disabled = self.segments_write().context_disabled(ctx.index);
        for (index, attachments) in disabled.revoked {
            self.record_revocation(index, attachments);
            self.fabric_export_revoked(index);
        }
        for (export, generation) in disabled.detached {
            self.remote_detach(export, generation);
        }
        if ctx.owns_asid {
            self.tlb_write()
                .invalidate_asid(ctx.asid, &mut self.on_removed());
        }
        ctx.make_free();
        self.note_state(ctx);
    }

    fn count_abort(&self, ctx: u8) {
        self.stats.count(GlobalCounter::Aborts, 1);
        if let Some(stats) = self.ctx_stats(ctx) {
            stats.count(ContextCounter::Aborts, 1);
        }
    }

    fn context_command(&self, ctx: &mut Context, value: u32) {
        let op = value & CTX_COMMAND_OP_MASK;
        if !ctx.state.live() {
            // FREE or ERROR: commands are ignored; drop-ins are discarded.
            if op == CTX_CMD_DROPIN {
                self.events.record(EventKind::DropInDiscarded {
                    ctx: ctx.index,
                    va: VirtAddr(ctx.regs.value64(DROPIN_VA_LO)),
                });
            }
            return;
        }
        match op {
            CTX_CMD_DROPIN => self.drop_in(ctx),
            CTX_CMD_DROPIN_LIST => self.drop_in_list(ctx),
            CTX_CMD_RESUME if ctx.state == ContextState::Faulted => self.resume(ctx, None),
            CTX_CMD_ABORT if ctx.state == ContextState::Faulted => {
                let code = (value & CTX_CMD_ABORT_STATUS_MASK) >> CTX_CMD_ABORT_STATUS_SHIFT;
                match Status::from_abort_code(code) {
                    Some(status) => self.resume(ctx, Some(status)),
                    None => self.context_error(ctx, ErrorCode::ContextCommand),
                }
            }
            // RESUME and ABORT of a context that is not FAULTED are ignored.
            CTX_CMD_RESUME | CTX_CMD_ABORT => {}
            _ => self.context_error(ctx, ErrorCode::ContextCommand),
        }
    }

    /// CTX_COMMAND DROPIN: installs the entry the `DROPIN_*` registers describe, tagged
    /// with the context's ASID. Atomic against every access and invalidation (TLB write lock).
    fn drop_in(&self, ctx: &mut Context) {
        let va = VirtAddr(ctx.regs.value64(DROPIN_VA_LO));
        let gpa = ctx.regs.value64(DROPIN_GPA_LO);
        let attr = ctx.regs.value(DROPIN_ATTR);
        self.drop_in_one(ctx, va, gpa, attr);
    }

    /// CTX_COMMAND DROPIN_LIST (since 1.4): installs the records of the list at
    /// `DROPIN_LIST_*` in order, each as DROPIN would; a list that cannot be read, a count
    /// outside 1..=`DROPIN_LIST_MAX` or a bad record is a DROPIN error of the context (the
    /// records before a bad one stay installed, as separate DROPINs would have).
    fn drop_in_list(&self, ctx: &mut Context) {
        let addr = ctx.regs.value64(DROPIN_LIST_LO);
        let count = ctx.regs.value(DROPIN_LIST_COUNT);
        if count == 0 || count > DROPIN_LIST_MAX || addr % DROPIN_RECORD_SIZE != 0 {
            self.context_error(ctx, ErrorCode::DropIn);
            return;
        }
        // CAST: at most DROPIN_LIST_MAX * 16 bytes.
        let mut list = vec![0u8; count as usize * DROPIN_RECORD_SIZE as usize];
        if self
            .dma(DmaPurpose::DropInList)
            .read(GuestAddress(addr), &mut list)
            .is_err()
        {
            self.context_error(ctx, ErrorCode::DropIn);
            return;
        }
        for record in list.chunks_exact(DROPIN_RECORD_SIZE as usize) {
            let word = |at: usize| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&record[at..at + 8]);
                u64::from_le_bytes(bytes)
            };
            let (va_attr, gpa) = (word(0), word(8));
            // CAST: bits 11:0.
            let attr = (va_attr & 0xfff) as u32;
            if attr & !(DROPIN_ATTR_READ | DROPIN_ATTR_WRITE | DROPIN_ATTR_2M) != 0 {
                self.context_error(ctx, ErrorCode::DropIn);
                return;
            }
            if !self.drop_in_one(ctx, VirtAddr(va_attr & !0xfff), gpa, attr) {
                return;
            }
        }
    }

    /// One drop-in of `va` to `gpa` with `attr` (DROPIN and each DROPIN_LIST record); false
    /// when it was refused (the context is then in ERROR).
    fn drop_in_one(&self, ctx: &mut Context, va: VirtAddr, gpa: u64, attr: u32) -> bool {
        let size = if attr & DROPIN_ATTR_2M != 0 {
            PageSize::Size2M
        } else {
            PageSize::Size4K
        };
        // CAST: the permission bits are bits 1:0.
        let perms = Perms::from_bits((attr & 0x3) as u8);
        // CAST: page sizes fit usize.
        let in_ram = GuestMemoryBackend::check_range(
            &*self.memory(),
            GuestAddress(gpa),
            size.bytes() as usize,
        );
        if perms == Perms::NONE || !va.is_aligned(size.bytes()) || gpa & size.mask() != 0 || !in_ram
        {
            self.context_error(ctx, ErrorCode::DropIn);
            return false;
        }
        let fill = TlbFill {
            asid: ctx.asid,
            va,
            size,
            gpa: GuestAddress(gpa),
            perms,
            ctx: ctx.index,
        };
        self.install(fill, ctx.regs.value64(CTX_PTROOT_LO));
        true
    }

    /// Installs `fill` (for a context whose page tables are rooted at `pt_root`), reports it
    /// to the drop-in hook, counts and logs it; returns its fill id. The one path of every
    /// entry into the TLB: drop-ins, and stale drop-ins injected after an invalidation.
    pub(crate) fn install(&self, fill: TlbFill, pt_root: u64) -> u64 {
        let fill_id = self.tlb_write().insert(fill, &mut self.on_removed());
        self.injector.dropped_in(
            &DropIn {
                ctx: fill.ctx,
                asid: fill.asid,
                va: fill.va,
                gpa: fill.gpa,
                size: fill.size.bytes(),
                writable: fill.perms.allows(Perms::WRITE),
                fill_id,
                pt_root,
            },
            &self.memory(),
        );
        self.stats.count(GlobalCounter::Fills, 1);
        if let Some(stats) = self.ctx_stats(fill.ctx) {
            stats.count(ContextCounter::Fills, 1);
        }
        self.events.record(EventKind::Fill {
            ctx: fill.ctx,
            asid: fill.asid,
            va: fill.va,
            gpa: fill.gpa.0,
            size: fill.size,
            perms: fill.perms.bits(),
            fill_id,
        });
        fill_id
    }

    /// RESUME (`abort` None) or ABORT with a status: leaves FAULTED.
    fn resume(&self, ctx: &mut Context, abort: Option<Status>) {
        lock(&self.fault_ring).cancel(ctx.index);
        let fault_va = ctx.fault.map_or(0, |fault| fault.reported);
        ctx.fault = None;
        ctx.state = ContextState::Active;
        if let Some(status) = abort {
            if let Some(inflight) = ctx.inflight.take() {
                self.count_abort(ctx.index);
                let completion = Completion {
                    id: inflight.command.id,
                    status,
                    result: 0,
                    fault_va,
                };
                if let Err(code) = self.complete(ctx, &inflight, completion) {
                    self.context_error(ctx, code);
                    return;
                }
            }
        }
        self.note_state(ctx);
        if self.running() {
            self.scheduler.schedule(Job::Context(ctx.index));
        }
    }
}
