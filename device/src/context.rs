//! One context: the register block the driver programs, the state machine
//! (FREE → ACTIVE ⇄ FAULTED, any enabled state → ERROR, disable → FREE), the command queue,
//! and the command in flight.
//!
//! The transitions themselves need the TLB, the fault ring and the interrupts, so they live
//! with the device's control logic (`control.rs`) and the engine (`engine/worker.rs`); this
//! module holds the state and the checks that need nothing else.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::addr::VirtAddr;
use crate::commands::Command;
use crate::engine::dma::Dma;
use crate::error_code::ErrorCode;
use crate::inline_queue::InlineQueue;
use crate::regs::{
    RegisterBlock, CONTEXT_REGISTERS, CQ_AVAIL_LO, CQ_DESC_LO, CQ_FORMAT, CQ_FORMAT_INLINE,
    CQ_MAX_SIZE, CQ_READY, CQ_READY_BIT, CQ_SIZE, CQ_USED_LO, CTX_ASID, CTX_ASID_MASK, CTX_CONTROL,
    CTX_CONTROL_ENABLE, CTX_STATE_ACTIVE, CTX_STATE_ERROR, CTX_STATE_FAULTED, CTX_STATE_FREE,
    CTX_STATUS_ERROR_SHIFT, FAULT_INFO_REASON_SHIFT, FAULT_INFO_SEGMENT, FAULT_INFO_SLOT_SHIFT,
};

/// A context's state, as `CTX_STATUS` bits 1:0 report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContextState {
    /// Disabled.
    #[default]
    Free,
    /// Executing commands, or waiting for some.
    Active,
    /// Stalled on a fault until the driver resumes or aborts.
    Faulted,
    /// Stopped by an error until the driver disables the context.
    Error,
}

impl ContextState {
    /// The `CTX_STATE_*` value.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Free => CTX_STATE_FREE,
            Self::Active => CTX_STATE_ACTIVE,
            Self::Faulted => CTX_STATE_FAULTED,
            Self::Error => CTX_STATE_ERROR,
        }
    }

    /// Whether drop-ins, resumes and aborts act (ACTIVE or FAULTED).
    pub const fn live(self) -> bool {
        matches!(self, Self::Active | Self::Faulted)
    }
}

/// The access a context is stalled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingFault {
    /// Faulting address.
    pub va: VirtAddr,
    /// `FAULT_ACCESS_*` bits.
    pub access: u8,
    /// The attachment slot when the access went through a segment (`va` is then the
    /// exporter's).
    pub segment_slot: Option<u8>,
    /// What the completion reports if the fault is aborted: `va`, or the segment address.
    pub reported: u64,
    /// `FAULT_REASON_*`.
    pub reason: u8,
}

/// A context's command queue, in the format `CQ_FORMAT` chose (valid while enabled).
#[derive(Debug)]
pub enum CommandQueue {
    /// A virtio split virtqueue (§7.1).
    Split(Queue),
    /// An inline queue (§7.6, since 1.5).
    Inline(InlineQueue),
}

/// The command a context popped and has not completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Head index of its descriptor chain (for the used ring), or its inline slot.
    pub head: u16,
    /// Guest-physical address of its completion record.
    pub completion: GuestAddress,
    /// The command.
    pub command: Command,
    /// Bytes done (COPY, FILL): execution resumes there after a fault.
    pub progress: u64,
    /// Steps retried in a row after a stale remote grant (spec §20).
    pub remote_retries: u8,
}

/// One context.
#[derive(Debug)]
pub struct Context {
    /// Its number (0..64).
    pub index: u8,
    /// Stored registers of its block.
    pub regs: RegisterBlock,
    /// State.
    pub state: ContextState,
    /// Error code while in ERROR.
    pub error: ErrorCode,
    /// ASID latched at enable.
    pub asid: u16,
    /// Whether this context holds `asid` in the device's ASID table.
    pub owns_asid: bool,
    /// The command queue (valid while enabled).
    pub queue: CommandQueue,
    /// The command in flight.
    pub inflight: Option<InFlight>,
    /// The fault it is stalled on (FAULTED only).
    pub fault: Option<PendingFault>,
    /// `FAULT_VA`: address of the pending or last fault.
    pub fault_va: u64,
    /// `FAULT_INFO`: access and reason of the pending or last fault.
    pub fault_info: u32,
}

fn new_split_queue() -> Queue {
    // CAST: CQ_MAX_SIZE is 1024. A power of two, so `new` cannot fail; fall back to the
    // default (size 0, never valid) rather than panic if that ever changed.
    Queue::new(CQ_MAX_SIZE as u16).unwrap_or_default()
}

fn new_queue() -> CommandQueue {
    CommandQueue::Split(new_split_queue())
}

impl Context {
    /// Context `index` after reset.
    pub fn new(index: u8) -> Self {
        Self {
            index,
            regs: RegisterBlock::new(&CONTEXT_REGISTERS),
            state: ContextState::Free,
            error: ErrorCode::QueueConfig,
            asid: 0,
            owns_asid: false,
            queue: new_queue(),
            inflight: None,
            fault: None,
            fault_va: 0,
            fault_info: 0,
        }
    }

    /// Back to reset state (registers included).
    pub fn reset(&mut self) {
        *self = Self::new(self.index);
    }

    /// Back to FREE after a disable: registers keep their values except `CTX_CONTROL`.
    pub fn make_free(&mut self) {
        self.state = ContextState::Free;
        self.owns_asid = false;
        self.queue = new_queue();
        self.inflight = None;
        self.fault = None;
        self.regs.set(CTX_CONTROL, 0);
    }

    /// Whether `CTX_CONTROL.ENABLE` is set (locked registers then ignore writes).
    pub fn enable_bit(&self) -> bool {
        self.regs.value(CTX_CONTROL) & CTX_CONTROL_ENABLE != 0
    }

    /// The ASID programmed in `CTX_ASID`.
    pub fn programmed_asid(&self) -> u16 {
        // CAST: masked to 16 bits.
        (self.regs.value(CTX_ASID) & CTX_ASID_MASK) as u16
    }

    /// `CTX_STATUS`.
    pub fn status(&self) -> u32 {
        let error = if self.state == ContextState::Error {
            u32::from(self.error.code()) << CTX_STATUS_ERROR_SHIFT
        } else {
            0
        };
        self.state.bits() | error
    }

    /// Records the fault the context stalls on in `FAULT_VA`/`FAULT_INFO`.
    pub fn note_fault(&mut self, fault: PendingFault) {
        self.fault = Some(fault);
        self.fault_va = fault.va.0;
        self.fault_info =
            u32::from(fault.access) | (u32::from(fault.reason) << FAULT_INFO_REASON_SHIFT);
        if let Some(slot) = fault.segment_slot {
            self.fault_info |= FAULT_INFO_SEGMENT | (u32::from(slot) << FAULT_INFO_SLOT_SHIFT);
        }
    }

    /// Builds the command queue from the `CQ_*` registers in the format `CQ_FORMAT` names.
    /// A split queue: ready bit set, size a power of two up to 1024, descriptor table
    /// 16-byte, available ring 2-byte and used ring 4-byte aligned (virtio 1.2 §2.7), every
    /// ring entirely in guest RAM. An inline queue: see [`InlineQueue::from_registers`].
    pub fn build_queue(&self, dma: &Dma<'_>) -> Result<CommandQueue, ErrorCode> {
        if self.regs.value(CQ_FORMAT) == CQ_FORMAT_INLINE {
            return InlineQueue::from_registers(&self.regs, dma).map(CommandQueue::Inline);
        }
        self.build_split_queue(dma).map(CommandQueue::Split)
    }

    fn build_split_queue(&self, dma: &Dma<'_>) -> Result<Queue, ErrorCode> {
        let bad = ErrorCode::QueueConfig;
        if self.regs.value(CQ_READY) & CQ_READY_BIT == 0 {
            return Err(bad);
        }
        let size = u16::try_from(self.regs.value(CQ_SIZE)).map_err(|_| bad)?;
        let mut queue = new_split_queue();
        queue.try_set_size(size).map_err(|_| bad)?;
        queue
            .try_set_desc_table_address(GuestAddress(self.regs.value64(CQ_DESC_LO)))
            .map_err(|_| bad)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.regs.value64(CQ_AVAIL_LO)))
            .map_err(|_| bad)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.regs.value64(CQ_USED_LO)))
            .map_err(|_| bad)?;
        queue.set_ready(true);
        if !queue.is_valid(dma) {
            return Err(bad);
        }
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dma::GuestRam;
    use crate::inject::{DmaPurpose, NoFaults};
    use crate::regs::{CQ_DESC_HI, CTX_STATUS_ERROR_MASK, CTX_STATUS_STATE_MASK};

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory")
    }

    fn programmed(size: u32, desc: u64, avail: u64, used: u64, ready: u32) -> Context {
        let mut ctx = Context::new(5);
        for (offset, value) in [
            (CQ_SIZE, size),
            // CAST: the low halves of the test addresses.
            (CQ_DESC_LO, desc as u32),
            (CQ_DESC_HI, (desc >> 32) as u32),
            (CQ_AVAIL_LO, avail as u32),
            (CQ_USED_LO, used as u32),
            (CQ_READY, ready),
        ] {
            ctx.regs.guest_write(offset, value, false);
        }
        ctx
    }

    #[test]
    fn a_valid_queue_configuration_builds() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::CommandQueue);
        let ctx = programmed(64, 0x1000, 0x2000, 0x3000, 1);
        let CommandQueue::Split(queue) = ctx.build_queue(&dma).expect("valid") else {
            panic!("CQ_FORMAT 0 builds a split queue");
        };
        assert_eq!(queue.size(), 64);
        assert!(queue.ready());
        // The same registers with CQ_FORMAT = INLINE describe an inline queue.
        let mut inline = ctx;
        inline.regs.set(CQ_FORMAT, CQ_FORMAT_INLINE);
        assert!(matches!(
            inline.build_queue(&dma),
            Ok(CommandQueue::Inline(_))
        ));
    }

    #[test]
    fn invalid_queue_configurations_are_refused() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::CommandQueue);
        for ctx in [
            programmed(64, 0x1000, 0x2000, 0x3000, 0),
            programmed(0, 0x1000, 0x2000, 0x3000, 1),
            programmed(48, 0x1000, 0x2000, 0x3000, 1),
            programmed(2048, 0x1000, 0x2000, 0x3000, 1),
            programmed(64, 0x1008, 0x2000, 0x3000, 1),
            programmed(64, 0x1000, 0x2001, 0x3000, 1),
            programmed(64, 0x1000, 0x2000, 0x3002, 1),
            programmed(64, 0x1_0000_1000, 0x2000, 0x3000, 1),
            programmed(64, 0x1000, 0x2000, 0xfff8, 1),
        ] {
            assert_eq!(ctx.build_queue(&dma).err(), Some(ErrorCode::QueueConfig));
        }
    }

    #[test]
    fn status_carries_state_and_error_code() {
        let mut ctx = Context::new(0);
        assert_eq!(ctx.status(), CTX_STATE_FREE);
        ctx.state = ContextState::Error;
        ctx.error = ErrorCode::DropIn;
        assert_eq!(ctx.status() & CTX_STATUS_STATE_MASK, CTX_STATE_ERROR);
        assert_eq!(
            (ctx.status() & CTX_STATUS_ERROR_MASK) >> CTX_STATUS_ERROR_SHIFT,
            u32::from(ErrorCode::DropIn.code())
        );
        ctx.state = ContextState::Faulted;
        assert_eq!(
            ctx.status(),
            CTX_STATE_FAULTED,
            "no error code outside ERROR"
        );
    }

    #[test]
    fn make_free_clears_enable_and_the_command_in_flight_but_keeps_registers() {
        let mut ctx = programmed(64, 0x1000, 0x2000, 0x3000, 1);
        ctx.regs.guest_write(CTX_CONTROL, 1, false);
        ctx.state = ContextState::Active;
        ctx.make_free();
        assert!(!ctx.enable_bit());
        assert_eq!(ctx.state, ContextState::Free);
        assert_eq!(ctx.regs.value(CQ_SIZE), 64);
    }
}
