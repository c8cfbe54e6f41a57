//! The rmnic BAR0 layout and register blocks, as data: one table of global registers, one
//! table of per-context registers (offset, name, reset value, access, writable bits), and one
//! masked write path for every guest write.
//!
//! The constants here are the single source of truth for BAR0; `docs/device-spec.md` carries
//! the same tables and the unit tests below keep the two equal.
//!
//! Access rules (all of BAR0): registers are 32 bits; a naturally aligned 8-byte access is
//! split into the two 32-bit registers it covers, low offset first (except that an 8-byte read
//! of a 64-bit counter is one atomic snapshot). Any other width or alignment is refused: a read
//! returns all ones, a write is dropped, and the device counts the error. Offsets inside a
//! register window that name no register read as zero and ignore writes.
//!
//! Register values that the device computes (status, producer indices, counters) are marked
//! `live`: the table gives their reset value and access, the device supplies the value.

use thiserror::Error;

use crate::mmio::{MmioError, MmioWidth};

/// BAR0 is the function's only BAR.
pub const BAR0_INDEX: u8 = 0;
/// Size of BAR0 in bytes (a 64-bit, non-prefetchable memory BAR): the register windows
/// (32 KiB, all that 1.0 to 1.4 had) and, since 1.5, the user doorbell pages.
pub const BAR0_SIZE: u64 = 0x8_0000;
/// BAR0 `[0, REGISTER_WINDOW_SIZE)` holds the global registers.
pub const REGISTER_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0x2000;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0x3000;
/// Size of the BAR0 windows reserved for the MSI-X table and for the PBA.
pub const MSIX_WINDOW_SIZE: u64 = 0x1000;
/// Offset of context 0's register block in BAR0.
pub const CTX_BLOCK_BASE: u64 = 0x4000;
/// Size of one context register block; context `i` is at `CTX_BLOCK_BASE + i × CTX_BLOCK_SIZE`.
pub const CTX_BLOCK_SIZE: u64 = 0x100;
/// Number of contexts (and of context register blocks).
pub const NUM_CONTEXTS: usize = 64;
/// Offset of context 0's user doorbell page (since 1.5): a page of its own per context, so
/// the driver can map it into the context's process without exposing any other register.
pub const UQ_DOORBELL_BASE: u64 = 0x4_0000;
/// Distance between user doorbell pages: context `i`'s page is at
/// `UQ_DOORBELL_BASE + i × UQ_DOORBELL_STRIDE`; a write at its offset 0 (`UQ_DOORBELL`) rings
/// the context's doorbell exactly as `CQ_DOORBELL` does.
pub const UQ_DOORBELL_STRIDE: u64 = 0x1000;

// The windows are disjoint, in order, and inside a power-of-two BAR.
const _: () = assert!(
    REGISTER_WINDOW_SIZE <= MSIX_TABLE_OFFSET
        && MSIX_TABLE_OFFSET + MSIX_WINDOW_SIZE <= MSIX_PBA_OFFSET
        && MSIX_PBA_OFFSET + MSIX_WINDOW_SIZE <= CTX_BLOCK_BASE
        && CTX_BLOCK_BASE + NUM_CONTEXTS as u64 * CTX_BLOCK_SIZE <= UQ_DOORBELL_BASE
        && UQ_DOORBELL_BASE + NUM_CONTEXTS as u64 * UQ_DOORBELL_STRIDE <= BAR0_SIZE
        && BAR0_SIZE.is_power_of_two()
        && NUM_CONTEXTS <= 255
);

// --- Global registers -------------------------------------------------------------------

/// Identification register: reads [`RMNIC_ID_MAGIC`].
pub const REG_ID: u64 = 0x000;
/// Specification version implemented by the device, see [`RMNIC_SPEC_VERSION`].
pub const REG_VERSION: u64 = 0x004;
/// Scratch register: reads back what was written; no side effect.
pub const REG_SCRATCH: u64 = 0x008;
/// Capabilities: number of contexts, 2 MiB pages, number of MSI-X vectors.
pub const REG_CAPS: u64 = 0x00c;
/// TLB geometry: sets and ways.
pub const REG_TLB_GEOMETRY: u64 = 0x010;
/// Device status: enabled, error.
pub const REG_DEV_STATUS: u64 = 0x014;
/// First device-level error code (write 1 to clear).
pub const REG_DEV_ERROR: u64 = 0x018;
/// Device control: enable, reset.
pub const REG_DEV_CONTROL: u64 = 0x01c;
/// Fault ring base, guest-physical, low half.
pub const REG_FAULT_BASE_LO: u64 = 0x040;
/// Fault ring base, high half.
pub const REG_FAULT_BASE_HI: u64 = 0x044;
/// Fault ring size in records (0 = no fault ring).
pub const REG_FAULT_SIZE: u64 = 0x048;
/// Fault ring producer index (device).
pub const REG_FAULT_HEAD: u64 = 0x04c;
/// Fault ring consumer index (driver).
pub const REG_FAULT_TAIL: u64 = 0x050;
/// Invalidation queue base, guest-physical, low half.
pub const REG_INVQ_BASE_LO: u64 = 0x060;
/// Invalidation queue base, high half.
pub const REG_INVQ_BASE_HI: u64 = 0x064;
/// Invalidation queue size in descriptors (0 = no queue).
pub const REG_INVQ_SIZE: u64 = 0x068;
/// Invalidation queue producer index (driver); a write is the doorbell.
pub const REG_INVQ_TAIL: u64 = 0x06c;
/// Invalidation queue consumer index (device).
pub const REG_INVQ_HEAD: u64 = 0x070;
/// Guest-physical address of the completion sequence word, low half.
pub const REG_INVQ_DONE_ADDR_LO: u64 = 0x078;
/// Completion sequence word address, high half.
pub const REG_INVQ_DONE_ADDR_HI: u64 = 0x07c;
/// Sequence number of the last completed invalidation descriptor, low half.
pub const REG_INVQ_DONE_SEQ_LO: u64 = 0x080;
/// Last completed sequence number, high half.
pub const REG_INVQ_DONE_SEQ_HI: u64 = 0x084;
/// Remote fault answer (since 1.3, spec §20): bits 15:0 the record's tag, bits 23:16 the
/// status (`REMOTE_ANSWER_*`).
pub const REG_REMOTE_ANSWER: u64 = 0x090;
/// First global statistics counter (64-bit counters, see `stats::GLOBAL_COUNTERS`).
pub const REG_STATS_BASE: u64 = 0x100;

/// [`REG_ID`]'s value: "RMNC" in ASCII, most significant byte first.
pub const RMNIC_ID_MAGIC: u32 = 0x524d_4e43;
/// [`REG_VERSION`] field: major version.
pub const VERSION_MAJOR_SHIFT: u32 = 16;
/// [`REG_VERSION`] field mask: major version.
pub const VERSION_MAJOR_MASK: u32 = 0xffff << VERSION_MAJOR_SHIFT;
/// [`REG_VERSION`] field: minor version.
pub const VERSION_MINOR_SHIFT: u32 = 0;
/// [`REG_VERSION`] field mask: minor version.
pub const VERSION_MINOR_MASK: u32 = 0xffff << VERSION_MINOR_SHIFT;
/// The version of `docs/device-spec.md` the device implements: 1.5.
pub const RMNIC_SPEC_VERSION: u32 = (1 << VERSION_MAJOR_SHIFT) | (5 << VERSION_MINOR_SHIFT);

/// [`REG_CAPS`] field: number of contexts.
pub const CAPS_CONTEXTS_SHIFT: u32 = 0;
/// [`REG_CAPS`] field mask: number of contexts.
pub const CAPS_CONTEXTS_MASK: u32 = 0xff << CAPS_CONTEXTS_SHIFT;
/// [`REG_CAPS`] bit: 2 MiB pages are supported.
pub const CAPS_HUGE_PAGES: u32 = 1 << 8;
/// [`REG_CAPS`] bit 9: segments (export table, attachment slots; since 1.2).
pub const CAPS_SEGMENTS: u32 = 1 << 9;
/// [`REG_CAPS`] bit 10: drop-in lists (`CTX_CMD_DROPIN_LIST`; since 1.4).
pub const CAPS_DROPIN_LIST: u32 = 1 << 10;
/// [`REG_CAPS`] bit 11: inline command queues and user doorbell pages (`CQ_FORMAT`; since 1.5).
pub const CAPS_INLINE_QUEUE: u32 = 1 << 11;
/// [`REG_CAPS`] field: number of MSI-X vectors.
pub const CAPS_VECTORS_SHIFT: u32 = 16;
/// [`REG_CAPS`] field mask: number of MSI-X vectors.
pub const CAPS_VECTORS_MASK: u32 = 0xff << CAPS_VECTORS_SHIFT;
/// [`REG_CAPS`]'s value.
pub const RMNIC_CAPS: u32 = ((NUM_CONTEXTS as u32) << CAPS_CONTEXTS_SHIFT)
    | CAPS_HUGE_PAGES
    | CAPS_SEGMENTS
    | CAPS_DROPIN_LIST
    | CAPS_INLINE_QUEUE
    | ((crate::rmnic::RMNIC_MSIX_VECTORS as u32) << CAPS_VECTORS_SHIFT);

/// [`REG_TLB_GEOMETRY`] field: number of sets.
pub const TLB_GEOMETRY_SETS_SHIFT: u32 = 0;
/// [`REG_TLB_GEOMETRY`] field mask: number of sets.
pub const TLB_GEOMETRY_SETS_MASK: u32 = 0xffff << TLB_GEOMETRY_SETS_SHIFT;
/// [`REG_TLB_GEOMETRY`] field: number of ways.
pub const TLB_GEOMETRY_WAYS_SHIFT: u32 = 16;
/// [`REG_TLB_GEOMETRY`] field mask: number of ways.
pub const TLB_GEOMETRY_WAYS_MASK: u32 = 0xff << TLB_GEOMETRY_WAYS_SHIFT;
/// [`REG_TLB_GEOMETRY`]'s value with the default geometry (256 sets × 4 ways).
pub const TLB_GEOMETRY_DEFAULT: u32 =
    (256 << TLB_GEOMETRY_SETS_SHIFT) | (4 << TLB_GEOMETRY_WAYS_SHIFT);

/// [`REG_DEV_STATUS`] bit: the device is enabled.
pub const DEV_STATUS_ENABLED: u32 = 1 << 0;
/// [`REG_DEV_STATUS`] bit: a device error is latched in [`REG_DEV_ERROR`].
pub const DEV_STATUS_ERROR: u32 = 1 << 1;
/// [`REG_DEV_ERROR`] field mask: the error code.
pub const DEV_ERROR_CODE_MASK: u32 = 0xffff;
/// [`REG_DEV_CONTROL`] bit: enable.
pub const DEV_CONTROL_ENABLE: u32 = 1 << 0;
/// [`REG_DEV_CONTROL`] bit: writing 1 resets the device; reads 0.
pub const DEV_CONTROL_FLR: u32 = 1 << 1;

// --- Context registers (offsets relative to the context's block) --------------------------

/// Context control: enable.
pub const CTX_CONTROL: u64 = 0x00;
/// Context status: state and error code.
pub const CTX_STATUS: u64 = 0x04;
/// Address-space identifier the context's TLB entries carry.
pub const CTX_ASID: u64 = 0x08;
/// Page-table root (guest-physical), low half; for the verification oracle only.
pub const CTX_PTROOT_LO: u64 = 0x10;
/// Page-table root, high half.
pub const CTX_PTROOT_HI: u64 = 0x14;
/// Command queue descriptor table, guest-physical, low half.
pub const CQ_DESC_LO: u64 = 0x20;
/// Command queue descriptor table, high half.
pub const CQ_DESC_HI: u64 = 0x24;
/// Command queue available ring, low half.
pub const CQ_AVAIL_LO: u64 = 0x28;
/// Command queue available ring, high half.
pub const CQ_AVAIL_HI: u64 = 0x2c;
/// Command queue used ring, low half.
pub const CQ_USED_LO: u64 = 0x30;
/// Command queue used ring, high half.
pub const CQ_USED_HI: u64 = 0x34;
/// Command queue size in descriptors.
pub const CQ_SIZE: u64 = 0x38;
/// Command queue ready.
pub const CQ_READY: u64 = 0x3c;
/// Command queue doorbell.
pub const CQ_DOORBELL: u64 = 0x40;
/// Drop-in virtual address, low half.
pub const DROPIN_VA_LO: u64 = 0x48;
/// Drop-in virtual address, high half.
pub const DROPIN_VA_HI: u64 = 0x4c;
/// Drop-in guest-physical frame, low half.
pub const DROPIN_GPA_LO: u64 = 0x50;
/// Drop-in guest-physical frame, high half.
pub const DROPIN_GPA_HI: u64 = 0x54;
/// Drop-in attributes.
pub const DROPIN_ATTR: u64 = 0x58;
/// Context command: DROPIN, RESUME, ABORT.
pub const CTX_COMMAND: u64 = 0x5c;
/// Address of the pending or last fault, low half.
pub const FAULT_VA_LO: u64 = 0x60;
/// Address of the pending or last fault, high half.
pub const FAULT_VA_HI: u64 = 0x64;
/// Access type and reason of the pending or last fault.
pub const FAULT_INFO: u64 = 0x68;
/// Guest-physical address of a drop-in list, low half (since 1.4; `CTX_CMD_DROPIN_LIST`).
pub const DROPIN_LIST_LO: u64 = 0x70;
/// Guest-physical address of a drop-in list, high half (since 1.4).
pub const DROPIN_LIST_HI: u64 = 0x74;
/// Records in the drop-in list: 1..=[`DROPIN_LIST_MAX`] (since 1.4).
pub const DROPIN_LIST_COUNT: u64 = 0x78;
/// Command queue format (since 1.5): [`CQ_FORMAT_SPLIT`] or [`CQ_FORMAT_INLINE`].
pub const CQ_FORMAT: u64 = 0x7c;
/// First per-context statistics counter (see `stats::CONTEXT_COUNTERS`).
pub const CTX_STATS_BASE: u64 = 0x80;

/// [`CTX_CONTROL`] bit: enable.
pub const CTX_CONTROL_ENABLE: u32 = 1 << 0;
/// [`CTX_STATUS`] field mask: state (see `CTX_STATE_*`).
pub const CTX_STATUS_STATE_MASK: u32 = 0x3;
/// [`CTX_STATUS`] field: error code.
pub const CTX_STATUS_ERROR_SHIFT: u32 = 8;
/// [`CTX_STATUS`] field mask: error code.
pub const CTX_STATUS_ERROR_MASK: u32 = 0xff << CTX_STATUS_ERROR_SHIFT;
/// Context state: disabled.
pub const CTX_STATE_FREE: u32 = 0;
/// Context state: executing or waiting for commands.
pub const CTX_STATE_ACTIVE: u32 = 1;
/// Context state: stalled on a fault the driver must resolve.
pub const CTX_STATE_FAULTED: u32 = 2;
/// Context state: stopped by an error.
pub const CTX_STATE_ERROR: u32 = 3;
/// [`CTX_ASID`] field mask.
pub const CTX_ASID_MASK: u32 = 0xffff;
/// [`CQ_READY`] bit.
pub const CQ_READY_BIT: u32 = 1 << 0;
/// Largest command queue size.
pub const CQ_MAX_SIZE: u32 = 1024;
/// [`CQ_FORMAT`] value: a virtio split virtqueue of descriptor chains (the reset value).
pub const CQ_FORMAT_SPLIT: u32 = 0;
/// [`CQ_FORMAT`] value (since 1.5): an inline queue: `CQ_DESC` holds `CQ_SIZE` slots of
/// [`INLINE_SLOT_SIZE`] bytes (the command record, then 8 ignored bytes), `CQ_USED` holds
/// `CQ_SIZE` completion records (slot `i`'s at `i × COMPLETION_SIZE`), and `CQ_AVAIL` is the
/// index block: the producer's `u32` tail at +0 and the device's `u32` head at +4, both
/// free-running counts of commands. No guest-physical address is written per command, so a
/// process may own the queue.
pub const CQ_FORMAT_INLINE: u32 = 1;
/// Bytes per inline queue slot (64-byte aligned slots).
pub const INLINE_SLOT_SIZE: u64 = 64;
/// Offset of the producer's tail in an inline queue's index block.
pub const INLINE_TAIL_OFFSET: u64 = 0;
/// Offset of the device's head in an inline queue's index block.
pub const INLINE_HEAD_OFFSET: u64 = 4;
/// [`DROPIN_ATTR`] bit: readable.
pub const DROPIN_ATTR_READ: u32 = 1 << 0;
/// [`DROPIN_ATTR`] bit: writable.
pub const DROPIN_ATTR_WRITE: u32 = 1 << 1;
/// [`DROPIN_ATTR`] bit: 2 MiB page (else 4 KiB).
pub const DROPIN_ATTR_2M: u32 = 1 << 2;
/// [`CTX_COMMAND`] field mask: the command.
pub const CTX_COMMAND_OP_MASK: u32 = 0xff;
/// [`CTX_COMMAND`] field: ABORT's completion status.
pub const CTX_CMD_ABORT_STATUS_SHIFT: u32 = 8;
/// [`CTX_COMMAND`] field mask: ABORT's completion status.
pub const CTX_CMD_ABORT_STATUS_MASK: u32 = 0xff << CTX_CMD_ABORT_STATUS_SHIFT;
/// [`CTX_COMMAND`] command: install the drop-in described by the `DROPIN_*` registers.
pub const CTX_CMD_DROPIN: u32 = 1;
/// [`CTX_COMMAND`] command: leave FAULTED and retry the stalled access.
pub const CTX_CMD_RESUME: u32 = 2;
/// [`CTX_COMMAND`] command: fail the stalled command with the status in bits 15:8.
pub const CTX_CMD_ABORT: u32 = 3;
/// [`CTX_COMMAND`] command (since 1.4): install every drop-in of the list at
/// [`DROPIN_LIST_LO`] ([`DROPIN_LIST_COUNT`] records of [`DROPIN_RECORD_SIZE`] bytes), in order,
/// each as DROPIN would.
pub const CTX_CMD_DROPIN_LIST: u32 = 4;
/// Most records one `CTX_CMD_DROPIN_LIST` installs.
pub const DROPIN_LIST_MAX: u32 = 512;
/// Bytes of a drop-in list record: `u64` VA with the `DROPIN_ATTR` bits in bits 11:0 (the
/// rest of those bits zero), then `u64` frame address; little-endian; the list is 16-byte
/// aligned.
pub const DROPIN_RECORD_SIZE: u64 = 16;
/// [`FAULT_INFO`] field mask: access type (`FAULT_ACCESS_*` bits).
pub const FAULT_INFO_ACCESS_MASK: u32 = 0xff;
/// [`FAULT_INFO`] field: reason (`FAULT_REASON_*`).
pub const FAULT_INFO_REASON_SHIFT: u32 = 8;
/// [`FAULT_INFO`] field mask: reason.
pub const FAULT_INFO_REASON_MASK: u32 = 0xff << FAULT_INFO_REASON_SHIFT;
/// [`FAULT_INFO`] bit 16: the fault is on a segment access (since 1.2).
pub const FAULT_INFO_SEGMENT: u32 = 1 << 16;
/// [`FAULT_INFO`] field: the attachment slot of a segment fault (bits 31:24).
pub const FAULT_INFO_SLOT_SHIFT: u32 = 24;
/// [`FAULT_INFO`] field mask: the attachment slot.
pub const FAULT_INFO_SLOT_MASK: u32 = 0xff << FAULT_INFO_SLOT_SHIFT;

/// How the guest may change a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Writes are ignored.
    ReadOnly,
    /// Writes set the writable bits to the written value.
    ReadWrite,
    /// Like [`Access::ReadWrite`] while the device (global registers) or the context (context
    /// registers) is disabled; writes while it is enabled are ignored.
    ReadWriteLocked,
    /// Writing 1 to a writable bit clears it; writing 0 leaves it.
    WriteOneToClear,
    /// Reads 0; a write triggers an action with the written value's writable bits.
    WriteOnly,
}

impl Access {
    /// The abbreviation used in the specification's register tables.
    pub const fn mnemonic(self) -> &'static str {
        match self {
            Self::ReadOnly => "RO",
            Self::ReadWrite => "RW",
            Self::ReadWriteLocked => "RWL",
            Self::WriteOneToClear => "W1C",
            Self::WriteOnly => "WO",
        }
    }
}

/// One 32-bit register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterSpec {
    /// Offset in its window (BAR0 for global registers, the block for context registers).
    pub offset: u64,
    /// Name of the `REG_*` / `CTX_*` constant.
    pub name: &'static str,
    /// Value after reset.
    pub reset: u32,
    /// How writes act.
    pub access: Access,
    /// Bits writes act on (0 for read-only registers).
    pub writable: u32,
    /// The device computes the value (status, producer index); the table value is the reset.
    pub live: bool,
    /// One-line meaning, as in the specification.
    pub summary: &'static str,
}

const fn reg(
    offset: u64,
    name: &'static str,
    reset: u32,
    access: Access,
    writable: u32,
    summary: &'static str,
) -> RegisterSpec {
    RegisterSpec {
        offset,
        name,
        reset,
        access,
        writable,
        live: false,
        summary,
    }
}

const fn live(offset: u64, name: &'static str, reset: u32, summary: &'static str) -> RegisterSpec {
    RegisterSpec {
        offset,
        name,
        reset,
        access: Access::ReadOnly,
        writable: 0,
        live: true,
        summary,
    }
}

use Access::{ReadOnly as RO, ReadWrite as RW, ReadWriteLocked as RWL, WriteOneToClear as W1C};

/// The global registers, sorted by offset.
#[rustfmt::skip]
pub const GLOBAL_REGISTERS: [RegisterSpec; 23] = [
    reg(REG_ID, "REG_ID", RMNIC_ID_MAGIC, RO, 0, "Identification: \"RMNC\""),
    reg(REG_VERSION, "REG_VERSION", RMNIC_SPEC_VERSION, RO, 0, "Specification version"),
    reg(REG_SCRATCH, "REG_SCRATCH", 0, RW, 0xffff_ffff, "Scratch"),
    reg(REG_CAPS, "REG_CAPS", RMNIC_CAPS, RO, 0, "Capabilities"),
    live(REG_TLB_GEOMETRY, "REG_TLB_GEOMETRY", TLB_GEOMETRY_DEFAULT, "TLB sets and ways"),
    live(REG_DEV_STATUS, "REG_DEV_STATUS", 0, "Device status"),
    reg(REG_DEV_ERROR, "REG_DEV_ERROR", 0, W1C, DEV_ERROR_CODE_MASK, "First device error"),
    reg(REG_DEV_CONTROL, "REG_DEV_CONTROL", 0, RW, 0x3, "Enable, reset"),
    reg(REG_FAULT_BASE_LO, "REG_FAULT_BASE_LO", 0, RWL, 0xffff_ffff, "Fault ring base low"),
    reg(REG_FAULT_BASE_HI, "REG_FAULT_BASE_HI", 0, RWL, 0xffff_ffff, "Fault ring base high"),
    reg(REG_FAULT_SIZE, "REG_FAULT_SIZE", 0, RWL, 0xffff_ffff, "Fault ring records"),
    live(REG_FAULT_HEAD, "REG_FAULT_HEAD", 0, "Fault ring producer index"),
    reg(REG_FAULT_TAIL, "REG_FAULT_TAIL", 0, RW, 0xffff_ffff, "Fault ring consumer index"),
    reg(REG_INVQ_BASE_LO, "REG_INVQ_BASE_LO", 0, RWL, 0xffff_ffff, "Invalidation queue base low"),
    reg(REG_INVQ_BASE_HI, "REG_INVQ_BASE_HI", 0, RWL, 0xffff_ffff, "Invalidation queue base high"),
    reg(REG_INVQ_SIZE, "REG_INVQ_SIZE", 0, RWL, 0xffff_ffff, "Invalidation queue descriptors"),
    reg(REG_INVQ_TAIL, "REG_INVQ_TAIL", 0, RW, 0xffff_ffff, "Invalidation producer index"),
    live(REG_INVQ_HEAD, "REG_INVQ_HEAD", 0, "Invalidation consumer index"),
    reg(REG_INVQ_DONE_ADDR_LO, "REG_INVQ_DONE_ADDR_LO", 0, RWL, 0xffff_ffff, "Done word low"),
    reg(REG_INVQ_DONE_ADDR_HI, "REG_INVQ_DONE_ADDR_HI", 0, RWL, 0xffff_ffff, "Done word high"),
    live(REG_INVQ_DONE_SEQ_LO, "REG_INVQ_DONE_SEQ_LO", 0, "Last done sequence low"),
    live(REG_INVQ_DONE_SEQ_HI, "REG_INVQ_DONE_SEQ_HI", 0, "Last done sequence high"),
    reg(REG_REMOTE_ANSWER, "REG_REMOTE_ANSWER", 0, Access::WriteOnly, 0x00ff_ffff, "Remote fault answer"),
];

/// The per-context registers, sorted by block offset.
#[rustfmt::skip]
pub const CONTEXT_REGISTERS: [RegisterSpec; 27] = [
    reg(CTX_CONTROL, "CTX_CONTROL", 0, RW, CTX_CONTROL_ENABLE, "Enable"),
    live(CTX_STATUS, "CTX_STATUS", 0, "State and error code"),
    reg(CTX_ASID, "CTX_ASID", 0, RWL, CTX_ASID_MASK, "ASID"),
    reg(CTX_PTROOT_LO, "CTX_PTROOT_LO", 0, RW, 0xffff_ffff, "Page-table root low"),
    reg(CTX_PTROOT_HI, "CTX_PTROOT_HI", 0, RW, 0xffff_ffff, "Page-table root high"),
    reg(CQ_DESC_LO, "CQ_DESC_LO", 0, RWL, 0xffff_ffff, "Descriptor table low"),
    reg(CQ_DESC_HI, "CQ_DESC_HI", 0, RWL, 0xffff_ffff, "Descriptor table high"),
    reg(CQ_AVAIL_LO, "CQ_AVAIL_LO", 0, RWL, 0xffff_ffff, "Available ring low"),
    reg(CQ_AVAIL_HI, "CQ_AVAIL_HI", 0, RWL, 0xffff_ffff, "Available ring high"),
    reg(CQ_USED_LO, "CQ_USED_LO", 0, RWL, 0xffff_ffff, "Used ring low"),
    reg(CQ_USED_HI, "CQ_USED_HI", 0, RWL, 0xffff_ffff, "Used ring high"),
    reg(CQ_SIZE, "CQ_SIZE", 0, RWL, 0xffff_ffff, "Queue size"),
    reg(CQ_READY, "CQ_READY", 0, RWL, CQ_READY_BIT, "Queue ready"),
    reg(CQ_DOORBELL, "CQ_DOORBELL", 0, Access::WriteOnly, 0xffff_ffff, "Doorbell"),
    reg(DROPIN_VA_LO, "DROPIN_VA_LO", 0, RW, 0xffff_ffff, "Drop-in VA low"),
    reg(DROPIN_VA_HI, "DROPIN_VA_HI", 0, RW, 0xffff_ffff, "Drop-in VA high"),
    reg(DROPIN_GPA_LO, "DROPIN_GPA_LO", 0, RW, 0xffff_ffff, "Drop-in frame low"),
    reg(DROPIN_GPA_HI, "DROPIN_GPA_HI", 0, RW, 0xffff_ffff, "Drop-in frame high"),
    reg(DROPIN_ATTR, "DROPIN_ATTR", 0, RW, 0x7, "Drop-in attributes"),
    reg(CTX_COMMAND, "CTX_COMMAND", 0, Access::WriteOnly, 0xffff, "Context command"),
    live(FAULT_VA_LO, "FAULT_VA_LO", 0, "Fault address low"),
    live(FAULT_VA_HI, "FAULT_VA_HI", 0, "Fault address high"),
    live(FAULT_INFO, "FAULT_INFO", 0, "Fault access and reason"),
    reg(DROPIN_LIST_LO, "DROPIN_LIST_LO", 0, RW, 0xffff_fff0, "Drop-in list low"),
    reg(DROPIN_LIST_HI, "DROPIN_LIST_HI", 0, RW, 0xffff_ffff, "Drop-in list high"),
    reg(DROPIN_LIST_COUNT, "DROPIN_LIST_COUNT", 0, RW, 0xffff, "Drop-in list records"),
    reg(CQ_FORMAT, "CQ_FORMAT", 0, RWL, 0x1, "Command queue format"),
];

/// Whether a register table is well formed: sorted, unique, aligned offsets inside `window`,
/// writable bits exactly for the registers whose access uses them, live registers read-only.
const fn table_is_valid(table: &[RegisterSpec], window: u64) -> bool {
    let mut i = 0;
    while i < table.len() {
        let register = &table[i];
        if register.offset % 4 != 0 || register.offset + 4 > window {
            return false;
        }
        if i > 0 && table[i - 1].offset >= register.offset {
            return false;
        }
        let read_only = matches!(register.access, Access::ReadOnly);
        if read_only != (register.writable == 0) {
            return false;
        }
        if register.live && !read_only {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(
    table_is_valid(&GLOBAL_REGISTERS, REG_STATS_BASE),
    "malformed global register table"
);
const _: () = assert!(
    table_is_valid(&CONTEXT_REGISTERS, CTX_STATS_BASE),
    "malformed context register table"
);

/// A guest access a register window refuses.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The access has a width or alignment the register file does not accept.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The access falls past the register window.
    #[error("Register access of {len} bytes at {offset:#x} is past the register window")]
    OutOfRange {
        /// Offset of the access in its window.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
}

/// Checks an access of `len` bytes at `offset` against the width rules and a window of
/// `window` bytes.
pub(crate) fn check_access(
    offset: u64,
    len: usize,
    window: u64,
) -> Result<MmioWidth, RegisterError> {
    let width = MmioWidth::decode(offset, len)?;
    if offset
        .checked_add(width.bytes())
        .is_none_or(|end| end > window)
    {
        return Err(RegisterError::OutOfRange { offset, len });
    }
    Ok(width)
}

/// What a guest write did to a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The register.
    pub spec: &'static RegisterSpec,
    /// Its value before the write.
    pub old: u32,
    /// Its value after the write.
    pub new: u32,
    /// The written value restricted to the writable bits (what a write-only register acts on).
    pub value: u32,
}

/// The stored values of one register block (the global registers or one context's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterBlock {
    table: &'static [RegisterSpec],
    /// `values[i]` is the value of `table[i]` (unused for live and write-only registers).
    values: Vec<u32>,
}

impl RegisterBlock {
    /// Every register of `table` at its reset value.
    pub fn new(table: &'static [RegisterSpec]) -> Self {
        Self {
            table,
            values: table.iter().map(|register| register.reset).collect(),
        }
    }

    /// Returns every register to its reset value.
    pub fn reset(&mut self) {
        for (value, register) in self.values.iter_mut().zip(self.table) {
            *value = register.reset;
        }
    }

    /// The register at `offset`.
    pub fn spec(&self, offset: u64) -> Option<&'static RegisterSpec> {
        let table: &'static [RegisterSpec] = self.table;
        table.iter().find(|register| register.offset == offset)
    }

    fn index_of(&self, offset: u64) -> Option<usize> {
        self.table
            .iter()
            .position(|register| register.offset == offset)
    }

    /// The stored value of the register at `offset` (0 for offsets that name no register and
    /// for write-only registers).
    pub fn value(&self, offset: u64) -> u32 {
        match self.index_of(offset) {
            Some(i) if self.table[i].access != Access::WriteOnly => self.values[i],
            _ => 0,
        }
    }

    /// The stored 64-bit value of a LO/HI register pair at `offset_lo`.
    pub fn value64(&self, offset_lo: u64) -> u64 {
        u64::from(self.value(offset_lo)) | (u64::from(self.value(offset_lo + 4)) << 32)
    }

    /// Sets a register as the hardware does, bypassing the write mask (for error latches).
    pub fn set(&mut self, offset: u64, value: u32) {
        if let Some(i) = self.index_of(offset) {
            self.values[i] = value;
        }
    }

    /// The one masked write path: the guest writes `value` at `offset`. `enabled` says whether
    /// the block's owner is enabled (locked registers then ignore the write). Returns what
    /// changed, or `None` for offsets naming no register and for ignored writes.
    pub fn guest_write(&mut self, offset: u64, value: u32, enabled: bool) -> Option<Written> {
        let i = self.index_of(offset)?;
        let table: &'static [RegisterSpec] = self.table;
        let spec = &table[i];
        if spec.access == Access::ReadWriteLocked && enabled {
            return None;
        }
        let old = self.values[i];
        let new = masked_write(spec, old, value);
        self.values[i] = new;
        Some(Written {
            spec,
            old,
            new,
            value: value & spec.writable,
        })
    }
}

/// The value a register takes when the guest writes `value` over `old`, as its access type
/// and writable bits say.
fn masked_write(register: &RegisterSpec, old: u32, value: u32) -> u32 {
    match register.access {
        Access::ReadOnly | Access::WriteOnly => old,
        Access::ReadWrite | Access::ReadWriteLocked => {
            (old & !register.writable) | (value & register.writable)
        }
        Access::WriteOneToClear => old & !(value & register.writable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec_doc::{register_rows, SpecRow};

    #[test]
    fn blocks_read_their_reset_values() {
        let block = RegisterBlock::new(&GLOBAL_REGISTERS);
        assert_eq!(block.value(REG_ID), RMNIC_ID_MAGIC);
        assert_eq!(block.value(REG_VERSION), 0x0001_0005);
        assert_eq!(block.value(REG_SCRATCH), 0);
        assert_eq!(block.value(REG_CAPS), 0x0004_0F40);
        let context = RegisterBlock::new(&CONTEXT_REGISTERS);
        assert_eq!(context.value(CTX_CONTROL), 0);
    }

    #[test]
    fn id_magic_spells_rmnc() {
        assert_eq!(&RMNIC_ID_MAGIC.to_be_bytes(), b"RMNC");
    }

    #[test]
    fn version_fields_decode_to_1_5() {
        let major = (RMNIC_SPEC_VERSION & VERSION_MAJOR_MASK) >> VERSION_MAJOR_SHIFT;
        let minor = (RMNIC_SPEC_VERSION & VERSION_MINOR_MASK) >> VERSION_MINOR_SHIFT;
        assert_eq!((major, minor), (1, 5));
    }

    #[test]
    fn caps_advertise_64_contexts_huge_pages_and_4_vectors() {
        assert_eq!(RMNIC_CAPS & CAPS_CONTEXTS_MASK, 64);
        assert_ne!(RMNIC_CAPS & CAPS_HUGE_PAGES, 0);
        assert_eq!((RMNIC_CAPS & CAPS_VECTORS_MASK) >> CAPS_VECTORS_SHIFT, 4);
    }

    #[test]
    fn scratch_reads_back_what_was_written() {
        let mut block = RegisterBlock::new(&GLOBAL_REGISTERS);
        for value in [0xdead_beef, 0, u32::MAX, 0x1234_5678] {
            block.guest_write(REG_SCRATCH, value, false);
            assert_eq!(block.value(REG_SCRATCH), value);
        }
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut block = RegisterBlock::new(&GLOBAL_REGISTERS);
        for offset in [REG_ID, REG_VERSION, REG_CAPS] {
            let before = block.value(offset);
            block.guest_write(offset, !before, false);
            assert_eq!(block.value(offset), before, "offset {offset:#x}");
        }
    }

    #[test]
    fn locked_registers_ignore_writes_while_enabled() {
        let mut block = RegisterBlock::new(&CONTEXT_REGISTERS);
        assert!(block.guest_write(CTX_ASID, 7, true).is_none());
        assert_eq!(block.value(CTX_ASID), 0);
        let written = block
            .guest_write(CTX_ASID, 0x1_0007, false)
            .expect("unlocked");
        assert_eq!((written.old, written.new), (0, 7));
        assert_eq!(block.value(CTX_ASID), 7);
        // Unlocked registers take writes either way.
        assert!(block.guest_write(DROPIN_VA_LO, 0x1000, true).is_some());
    }

    #[test]
    fn write_only_registers_read_zero_and_report_the_written_value() {
        let mut block = RegisterBlock::new(&CONTEXT_REGISTERS);
        let written = block
            .guest_write(CTX_COMMAND, 0xdead_0203, true)
            .expect("a register");
        assert_eq!(written.value, 0x0203);
        assert_eq!(block.value(CTX_COMMAND), 0);
    }

    #[test]
    fn write_one_to_clear_clears_only_written_ones() {
        let mut block = RegisterBlock::new(&GLOBAL_REGISTERS);
        block.set(REG_DEV_ERROR, 0x0000_0f0f);
        block.guest_write(REG_DEV_ERROR, 0xffff_0103, true);
        assert_eq!(block.value(REG_DEV_ERROR), 0x0000_0e0c);
        block.guest_write(REG_DEV_ERROR, 0, true);
        assert_eq!(block.value(REG_DEV_ERROR), 0x0000_0e0c);
    }

    #[test]
    fn read_write_keeps_bits_outside_the_writable_mask() {
        let mut block = RegisterBlock::new(&CONTEXT_REGISTERS);
        block.guest_write(DROPIN_ATTR, 0xffff_fff5, false);
        assert_eq!(block.value(DROPIN_ATTR), 0x5);
    }

    #[test]
    fn unknown_offsets_read_zero_and_ignore_writes() {
        let mut block = RegisterBlock::new(&GLOBAL_REGISTERS);
        let before = block.clone();
        assert!(block.guest_write(0x020, u32::MAX, false).is_none());
        assert!(block.guest_write(0x0fc, u32::MAX, false).is_none());
        assert_eq!(block, before);
        assert_eq!(block.value(0x020), 0);
    }

    #[test]
    fn reset_restores_every_register() {
        let mut block = RegisterBlock::new(&GLOBAL_REGISTERS);
        block.guest_write(REG_SCRATCH, 7, false);
        block.guest_write(REG_FAULT_SIZE, 8, false);
        block.reset();
        assert_eq!(block, RegisterBlock::new(&GLOBAL_REGISTERS));
    }

    #[test]
    fn access_checks_refuse_bad_widths_alignment_and_range() {
        assert!(check_access(0x8, 4, 0x100).is_ok());
        assert!(matches!(
            check_access(0x8, 2, 0x100),
            Err(RegisterError::Mmio(_))
        ));
        assert!(matches!(
            check_access(0x4, 8, 0x100),
            Err(RegisterError::Mmio(_))
        ));
        assert_eq!(
            check_access(0x100, 4, 0x100),
            Err(RegisterError::OutOfRange {
                offset: 0x100,
                len: 4
            })
        );
        assert!(check_access(u64::MAX - 3, 4, u64::MAX).is_err());
    }

    #[test]
    fn malformed_tables_are_detected() {
        let good = GLOBAL_REGISTERS[2];
        let mut unaligned = good;
        unaligned.offset = 0x2;
        let mut read_only_with_mask = GLOBAL_REGISTERS[0];
        read_only_with_mask.writable = 1;
        let mut writable_live = good;
        writable_live.live = true;
        assert!(table_is_valid(&[good], 0x100));
        assert!(!table_is_valid(&[unaligned], 0x100));
        assert!(!table_is_valid(&[read_only_with_mask], 0x100));
        assert!(!table_is_valid(&[writable_live], 0x100));
        assert!(!table_is_valid(&[good, good], 0x100), "duplicate offsets");
        assert!(!table_is_valid(&[good], 0x8), "past the window");
    }

    fn rows(table: &[RegisterSpec]) -> Vec<SpecRow> {
        table
            .iter()
            .map(|register| SpecRow {
                offset: register.offset,
                name: register.name.to_string(),
                width: "32".to_string(),
                access: register.access.mnemonic().to_string(),
                reset: register.reset,
                writable: register.writable,
            })
            .collect()
    }

    #[test]
    fn specification_register_tables_match_the_code() {
        assert_eq!(
            register_rows(false),
            rows(&GLOBAL_REGISTERS),
            "docs/device-spec.md global register map drifted"
        );
        assert_eq!(
            register_rows(true),
            rows(&CONTEXT_REGISTERS),
            "docs/device-spec.md context register map drifted"
        );
    }
}
