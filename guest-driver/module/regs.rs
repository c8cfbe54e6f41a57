// SPDX-License-Identifier: GPL-2.0

//! The rmnic device interface as the driver uses it: BAR0 register offsets and fields, and the
//! layouts of the structures the device reads and writes in guest memory.
//!
//! The device model (`device/` crate) and `docs/device-spec.md` are the source of truth; a
//! host-side test (`tests/tests/abi_consistency.rs`) checks every `pub(crate) const` here
//! against the device model's constants of the same name.

/// Size of BAR0 the driver requires (device 1.5: the register windows and, from
/// [`UQ_DOORBELL_BASE`], one user doorbell page per context).
pub(crate) const BAR0_SIZE: usize = 0x8_0000;
/// Context 0's user doorbell page (device 1.5): context `i`'s at
/// `UQ_DOORBELL_BASE + i * UQ_DOORBELL_STRIDE`, mapped into the context's process.
pub(crate) const UQ_DOORBELL_BASE: usize = 0x4_0000;
/// Distance between user doorbell pages (one page each).
pub(crate) const UQ_DOORBELL_STRIDE: usize = 0x1000;

// --- Global registers.
/// Identification register: reads [`ID_MAGIC`].
pub(crate) const REG_ID: usize = 0x000;
/// Specification version: `major << 16 | minor`.
pub(crate) const REG_VERSION: usize = 0x004;
/// Read-write scratch register, no side effects.
pub(crate) const REG_SCRATCH: usize = 0x008;
/// Capabilities: number of contexts, 2 MiB support, vectors.
pub(crate) const REG_CAPS: usize = 0x00C;
/// Device status: enabled, error latched.
pub(crate) const REG_DEV_STATUS: usize = 0x014;
/// First device error code (write 1 to clear).
pub(crate) const REG_DEV_ERROR: usize = 0x018;
/// Device control: enable, function-level reset.
pub(crate) const REG_DEV_CONTROL: usize = 0x01C;
/// Fault ring base (low half; high half at +4).
pub(crate) const REG_FAULT_BASE_LO: usize = 0x040;
/// Fault ring base, high half.
pub(crate) const REG_FAULT_BASE_HI: usize = 0x044;
/// Fault ring size in records.
pub(crate) const REG_FAULT_SIZE: usize = 0x048;
/// Fault ring producer index (device).
pub(crate) const REG_FAULT_HEAD: usize = 0x04C;
/// Fault ring consumer index (driver).
pub(crate) const REG_FAULT_TAIL: usize = 0x050;
/// Invalidation queue base, low half.
pub(crate) const REG_INVQ_BASE_LO: usize = 0x060;
/// Invalidation queue base, high half.
pub(crate) const REG_INVQ_BASE_HI: usize = 0x064;
/// Invalidation queue size in descriptors.
pub(crate) const REG_INVQ_SIZE: usize = 0x068;
/// Invalidation queue producer index (driver); writing it is the doorbell.
pub(crate) const REG_INVQ_TAIL: usize = 0x06C;
/// Invalidation queue consumer index (device).
pub(crate) const REG_INVQ_HEAD: usize = 0x070;
/// Where the device writes the last completed invalidation sequence, low half.
pub(crate) const REG_INVQ_DONE_ADDR_LO: usize = 0x078;
/// Same, high half.
pub(crate) const REG_INVQ_DONE_ADDR_HI: usize = 0x07C;

/// `DEV_CONTROL.ENABLE`.
pub(crate) const DEV_CONTROL_ENABLE: u32 = 1 << 0;
/// `DEV_CONTROL.FLR`: write 1 to reset the whole function.
pub(crate) const DEV_CONTROL_FLR: u32 = 1 << 1;

/// `DEV_STATUS.ENABLED`: the device is enabled (clear after a function reset).
pub(crate) const DEV_STATUS_ENABLED: u32 = 1 << 0;

/// `CAPS[7:0]`: number of contexts.
pub(crate) const CAPS_CONTEXTS_MASK: u32 = 0xff;
/// `REG_CAPS` bit 9: segments (export table, attachment slots; device 1.2).
pub(crate) const CAPS_SEGMENTS: u32 = 1 << 9;
/// `REG_CAPS` bit 10: drop-in lists (`CTX_CMD_DROPIN_LIST`; device 1.4).
pub(crate) const CAPS_DROPIN_LIST: u32 = 1 << 10;
/// `REG_CAPS` bit 11: inline command queues and user doorbell pages (device 1.5).
pub(crate) const CAPS_INLINE_QUEUE: u32 = 1 << 11;

// --- Per-context register blocks.
/// Offset of context 0's register block.
pub(crate) const CTX_BLOCK_BASE: usize = 0x4000;
/// Size of one context register block.
pub(crate) const CTX_BLOCK_SIZE: usize = 0x100;
/// Number of context blocks BAR0 has room for.
pub(crate) const MAX_CONTEXTS: usize = 64;

/// Context control: enable.
pub(crate) const CTX_CONTROL: usize = 0x00;
/// Context status: state and error code.
pub(crate) const CTX_STATUS: usize = 0x04;
/// Context ASID (writable while disabled).
pub(crate) const CTX_ASID: usize = 0x08;
/// Page-table root (for the verification oracle), low half.
pub(crate) const CTX_PTROOT_LO: usize = 0x10;
/// Page-table root, high half.
pub(crate) const CTX_PTROOT_HI: usize = 0x14;
/// Command queue descriptor table, low half.
pub(crate) const CQ_DESC_LO: usize = 0x20;
/// Command queue descriptor table, high half.
pub(crate) const CQ_DESC_HI: usize = 0x24;
/// Command queue available ring, low half.
pub(crate) const CQ_AVAIL_LO: usize = 0x28;
/// Command queue available ring, high half.
pub(crate) const CQ_AVAIL_HI: usize = 0x2C;
/// Command queue used ring, low half.
pub(crate) const CQ_USED_LO: usize = 0x30;
/// Command queue used ring, high half.
pub(crate) const CQ_USED_HI: usize = 0x34;
/// Command queue size in descriptors.
pub(crate) const CQ_SIZE: usize = 0x38;
/// Command queue ready.
pub(crate) const CQ_READY: usize = 0x3C;
/// Command queue doorbell.
pub(crate) const CQ_DOORBELL: usize = 0x40;
/// Drop-in virtual address, low half.
pub(crate) const DROPIN_VA_LO: usize = 0x48;
/// Drop-in virtual address, high half.
pub(crate) const DROPIN_VA_HI: usize = 0x4C;
/// Drop-in guest-physical address, low half.
pub(crate) const DROPIN_GPA_LO: usize = 0x50;
/// Drop-in guest-physical address, high half.
pub(crate) const DROPIN_GPA_HI: usize = 0x54;
/// Drop-in attributes.
pub(crate) const DROPIN_ATTR: usize = 0x58;
/// Context command: drop-in, resume, abort.
pub(crate) const CTX_COMMAND: usize = 0x5C;
/// Drop-in list address, low half (device 1.4).
pub(crate) const DROPIN_LIST_LO: usize = 0x70;
/// Drop-in list address, high half (device 1.4).
pub(crate) const DROPIN_LIST_HI: usize = 0x74;
/// Records in the drop-in list (device 1.4).
pub(crate) const DROPIN_LIST_COUNT: usize = 0x78;
/// Command queue format (device 1.5): [`CQ_FORMAT_INLINE`] for a user queue.
pub(crate) const CQ_FORMAT: usize = 0x7C;
/// `CQ_FORMAT`: split virtqueue (the reset value; a driver writes it anyway, since a context
/// slot keeps its registers from one owner to the next).
pub(crate) const CQ_FORMAT_SPLIT: u32 = 0;
/// `CQ_FORMAT`: inline queue (slots, completions, index block; device 1.5).
pub(crate) const CQ_FORMAT_INLINE: u32 = 1;
/// Bytes per inline queue slot.
pub(crate) const INLINE_SLOT_SIZE: usize = 64;

/// `CTX_CONTROL.ENABLE`.
pub(crate) const CTX_CONTROL_ENABLE: u32 = 1;
/// `CTX_STATUS[1:0]`: state.
pub(crate) const CTX_STATUS_STATE_MASK: u32 = 0x3;
/// State: disabled.
pub(crate) const CTX_STATE_FREE: u32 = 0;
/// `CTX_STATUS` state ACTIVE.
pub(crate) const CTX_STATE_ACTIVE: u32 = 1;

/// `DROPIN_ATTR`: readable.
pub(crate) const DROPIN_ATTR_READ: u32 = 1 << 0;
/// `DROPIN_ATTR`: writable.
pub(crate) const DROPIN_ATTR_WRITE: u32 = 1 << 1;
/// `DROPIN_ATTR`: 2 MiB page.
pub(crate) const DROPIN_ATTR_2M: u32 = 1 << 2;

/// `CTX_COMMAND`: install the drop-in registers' translation.
pub(crate) const CTX_CMD_DROPIN: u32 = 1;
/// `CTX_COMMAND`: leave FAULTED and retry the stalled access.
pub(crate) const CTX_CMD_RESUME: u32 = 2;
/// `CTX_COMMAND`: fail the stalled command; status in bits 15:8.
pub(crate) const CTX_CMD_ABORT: u32 = 3;
/// `CTX_COMMAND`: install every record of the drop-in list (device 1.4).
pub(crate) const CTX_CMD_DROPIN_LIST: u32 = 4;
/// Most records in one drop-in list.
pub(crate) const DROPIN_LIST_MAX: usize = 512;
/// Bytes per drop-in list record: `u64` VA | attributes, `u64` frame address.
pub(crate) const DROPIN_RECORD_SIZE: usize = 16;
/// `CTX_COMMAND[15:8]`: abort status shift.
pub(crate) const CTX_CMD_ABORT_STATUS_SHIFT: u32 = 8;

// --- Fault record (32 bytes).
/// Fault record size.
pub(crate) const FAULT_RECORD_SIZE: usize = 32;
/// u16 context number.
pub(crate) const FAULT_REC_CONTEXT: usize = 0;
/// u16 ASID.
pub(crate) const FAULT_REC_ASID: usize = 2;
/// u8 access bitmask: 1 read, 2 write (3 for atomics).
pub(crate) const FAULT_REC_ACCESS: usize = 4;
/// u64 faulting virtual address.
pub(crate) const FAULT_REC_VA: usize = 8;
/// Fault record: u8 flags (device 1.2).
pub(crate) const FAULT_REC_FLAGS: usize = 6;
/// Fault record: u8 attachment slot of a segment fault.
pub(crate) const FAULT_REC_SLOT: usize = 7;
/// Fault record flag: a segment access; the VA is the exporter's.
pub(crate) const FAULT_FLAG_SEGMENT: u8 = 1;
/// Fault record flag: a remote fault (device 1.3): the fabric's other node missed on an export
/// of this device; answer in `REG_REMOTE_ANSWER` with the tag in the command id field.
pub(crate) const FAULT_FLAG_REMOTE: u8 = 2;
/// Fault record: u64 command id (the tag of a remote fault).
pub(crate) const FAULT_REC_COMMAND_ID: usize = 16;
/// Fault record: u32 sequence, (ring index + 1) mod 2^32, written last.
pub(crate) const FAULT_REC_SEQUENCE: usize = 24;
/// Fault access bit: write.
pub(crate) const FAULT_ACCESS_WRITE: u8 = 2;

// --- Invalidation descriptor (32 bytes).
/// Invalidation descriptor size.
pub(crate) const INVQ_DESC_SIZE: usize = 32;
/// u8 kind.
pub(crate) const INVQ_DESC_KIND: usize = 0;
/// u8 flags.
pub(crate) const INVQ_DESC_FLAGS: usize = 1;
/// u16 ASID.
pub(crate) const INVQ_DESC_ASID: usize = 2;
/// u64 start VA.
pub(crate) const INVQ_DESC_START: usize = 8;
/// u64 end VA (exclusive).
pub(crate) const INVQ_DESC_END: usize = 16;
/// u64 sequence number.
pub(crate) const INVQ_DESC_SEQ: usize = 24;
/// Kind: range of one ASID.
pub(crate) const INVQ_KIND_RANGE: u8 = 1;
/// Kind: every entry of one ASID.
pub(crate) const INVQ_KIND_ASID: u8 = 2;

// --- Commands: virtio split ring of (command, completion) descriptor pairs.
/// Device-readable command size.
pub(crate) const COMMAND_SIZE: usize = 56;
/// Device-writable completion record size.
pub(crate) const COMPLETION_SIZE: usize = 32;
/// Virtio descriptor flag: chain continues.
pub(crate) const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Virtio descriptor flag: device writes this buffer.
pub(crate) const VIRTQ_DESC_F_WRITE: u16 = 2;

/// MSI-X vector: fault records.
pub(crate) const VECTOR_FAULT: u32 = 0;
/// MSI-X vector: command completions.
pub(crate) const VECTOR_COMPLETION: u32 = 1;
/// MSI-X vector: invalidation completions.
pub(crate) const VECTOR_INVALIDATION: u32 = 2;
/// MSI-X vector: errors.
pub(crate) const VECTOR_ERROR: u32 = 3;
/// Vectors the device has.
pub(crate) const NUM_VECTORS: u32 = 4;

/// Value of [`REG_ID`]: "RMNC".
pub(crate) const ID_MAGIC: u32 = 0x524D_4E43;
/// Specification major version the driver speaks.
pub(crate) const SPEC_MAJOR: u32 = 1;

/// PCI vendor ID of the device (experimental, not assigned by PCI-SIG).
pub(crate) const PCI_VENDOR_ID: u32 = 0xF1E0;
/// PCI device ID of the device.
pub(crate) const PCI_DEVICE_ID: u32 = 0x0001;

// --- Segments (device 1.2, spec §19).
/// BAR0 offset of export table entry 0.
pub(crate) const EXPORT_TABLE_BASE: usize = 0x1000;
/// Bytes per export table entry.
pub(crate) const EXPORT_ENTRY_SIZE: usize = 0x20;
/// Export table entries.
pub(crate) const NUM_EXPORTS: usize = 64;
/// Export entry: control (valid, writable, owner context, error).
pub(crate) const EXP_CONTROL: usize = 0x00;
/// Export entry: base VA, low half.
pub(crate) const EXP_BASE_LO: usize = 0x08;
/// Export entry: base VA, high half.
pub(crate) const EXP_BASE_HI: usize = 0x0c;
/// Export entry: length, low half.
pub(crate) const EXP_LENGTH_LO: usize = 0x10;
/// Export entry: length, high half.
pub(crate) const EXP_LENGTH_HI: usize = 0x14;
/// `EXP_CONTROL` bit 0: valid.
pub(crate) const EXP_CONTROL_VALID: u32 = 1;
/// `EXP_CONTROL` bit 1: importers may write.
pub(crate) const EXP_CONTROL_WRITABLE: u32 = 2;
/// `EXP_CONTROL` bits 15:8: owner context.
pub(crate) const EXP_CONTROL_OWNER_SHIFT: u32 = 8;
/// Context block offset of attachment slot 0 (`+ 4 * slot`).
pub(crate) const CTX_ATTACH_BASE: usize = 0xc0;
/// Attachment slots per context.
pub(crate) const NUM_ATTACHMENTS: usize = 8;
/// `CTX_ATTACH` bit 8: valid.
pub(crate) const ATTACH_VALID: u32 = 1 << 8;
/// `CTX_ATTACH` bit 9: writable.
pub(crate) const ATTACH_WRITABLE: u32 = 1 << 9;
/// Export entry: remote key, low half (device 1.3).
pub(crate) const EXP_KEY_LO: usize = 0x18;
/// Export entry: remote key, high half.
pub(crate) const EXP_KEY_HI: usize = 0x1c;
/// `EXP_CONTROL` bit 2: the fabric's other node may attach it by its key.
pub(crate) const EXP_CONTROL_REMOTE: u32 = 1 << 2;
/// `CTX_ATTACH` bit 10: attach the other node's export whose key is in `CTX_RKEY`.
pub(crate) const ATTACH_REMOTE: u32 = 1 << 10;
/// Context block: key of the next remote attachment, low half.
pub(crate) const CTX_RKEY_LO: usize = 0xe0;
/// Context block: key, high half.
pub(crate) const CTX_RKEY_HI: usize = 0xe4;
/// Context block (RO): length the last remote attachment got, low half.
pub(crate) const CTX_RLENGTH_LO: usize = 0xe8;
/// Context block (RO): length, high half.
pub(crate) const CTX_RLENGTH_HI: usize = 0xec;
/// Answer to a remote fault record: bits 15:0 tag, bits 23:16 status.
pub(crate) const REG_REMOTE_ANSWER: usize = 0x090;
/// `REG_REMOTE_ANSWER` status field.
pub(crate) const REMOTE_ANSWER_STATUS_SHIFT: u32 = 16;
/// `REG_REMOTE_ANSWER` status: resolved (dropped in).
pub(crate) const REMOTE_ANSWER_RESOLVED: u32 = 0;
/// `REG_REMOTE_ANSWER` status: cannot be mapped.
pub(crate) const REMOTE_ANSWER_UNRESOLVED: u32 = 1;
/// `REG_REMOTE_ANSWER` status: mapped without the permission asked.
pub(crate) const REMOTE_ANSWER_PERMISSION: u32 = 2;
