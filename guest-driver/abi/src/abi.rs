//! The `/dev/rmnic` ioctl ABI: numbers and structures, shared word for word by the kernel
//! module (which includes this file with `#[path]`) and user space (through `rmnic-abi`).
//!
//! This file must stay `no_std`-clean and dependency-free: the kernel build compiles it as a
//! module of the driver. Structures are `#[repr(C)]` with explicit padding so the C header
//! (`include/rmnic.h`) and both Rust sides agree byte for byte.

/// Version of this ABI. Bumped on every incompatible change; reported by [`IOC_VERSION`].
pub const ABI_VERSION: u32 = 6;

/// Driver version as `major << 16 | minor << 8 | patch`.
pub const DRIVER_VERSION: u32 = 0x00_06_00;

/// The ioctl "type" byte of every rmnic ioctl (`'r'`).
pub const IOC_TYPE: u32 = b'r' as u32;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Encodes an ioctl number as Linux's `_IOC(dir, type, nr, size)` does (asm-generic layout,
/// which x86 uses).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    // CAST: every ABI structure is far below the 14-bit size limit (checked in tests).
    (dir << IOC_DIRSHIFT)
        | (IOC_TYPE << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// Answer of [`IOC_VERSION`]: who is on the other side of `/dev/rmnic`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionInfo {
    /// [`ABI_VERSION`] of the driver.
    pub abi_version: u32,
    /// [`DRIVER_VERSION`] of the driver.
    pub driver_version: u32,
    /// PCI vendor ID of the bound device.
    pub pci_vendor: u16,
    /// PCI device ID of the bound device.
    pub pci_device: u16,
    /// Value of the device's ID register (BAR0 `REG_ID`).
    pub device_id: u32,
    /// Value of the device's version register (BAR0 `REG_VERSION`).
    pub device_version: u32,
    /// Value of the device's capability register (BAR0 `REG_CAPS`).
    pub device_caps: u32,
}

/// Argument of [`IOC_SCRATCH`]: the driver writes `value` to the device's scratch register and
/// returns what it reads back in `readback`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScratchProbe {
    /// Value to write.
    pub value: u32,
    /// Value read back from the register after the write.
    pub readback: u32,
}

/// `_IOR('r', 0x00, VersionInfo)`: read [`VersionInfo`].
pub const IOC_VERSION: u32 = ioc(IOC_READ, 0x00, core::mem::size_of::<VersionInfo>());

/// `_IOWR('r', 0x01, ScratchProbe)`: write and read back the device scratch register.
pub const IOC_SCRATCH: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x01,
    core::mem::size_of::<ScratchProbe>(),
);

/// Command opcodes (the device's, see docs/device-spec.md).
pub mod opcode {
    /// Does nothing; completes OK.
    pub const NOP: u8 = 0;
    /// Copies `length` bytes from `addr1` to `addr0`.
    pub const COPY: u8 = 1;
    /// Fills `length` bytes at `addr0` with the 64-bit pattern `operand0`.
    pub const FILL: u8 = 2;
    /// Reads the 64-bit word at `addr0` into `result`.
    pub const READ64: u8 = 3;
    /// Writes `operand0` to the 64-bit word at `addr0`.
    pub const WRITE64: u8 = 4;
    /// Adds `operand0` to the word at `addr0`; `result` is the old value.
    pub const FETCH_ADD: u8 = 5;
    /// If the word at `addr0` equals `operand0`, stores `operand1`; `result` is the old value.
    pub const CAS: u8 = 6;
    /// Stores `operand0` at `addr0`; `result` is the old value.
    pub const SWAP: u8 = 7;
    /// Completes after every earlier command of the context.
    pub const FENCE: u8 = 8;
}

/// Completion statuses (the device's, see docs/device-spec.md).
pub mod status {
    /// The command completed.
    pub const OK: u32 = 0;
    /// An address was not mapped (or not accessible at all) in the process.
    pub const FAULT_UNRESOLVED: u32 = 1;
    /// The mapping exists but forbids the access (write to read-only memory).
    pub const PERMISSION: u32 = 2;
    /// The device failed (bad descriptor, DMA error).
    pub const DEVICE_ERROR: u32 = 3;
    /// Unknown opcode.
    pub const INVALID_OPCODE: u32 = 4;
    /// The context was torn down before the command ran.
    pub const ABORTED: u32 = 5;
    /// A 64-bit operation on an address that is not 8-byte aligned.
    pub const ALIGNMENT: u32 = 6;
    /// A reserved field or flag is set, a length exceeds 1 GiB, or a range wraps.
    pub const INVALID_ARGUMENT: u32 = 7;
    /// A segment address names a slot with no valid attachment: never attached, detached,
    /// or its segment was removed or its exporter is gone (device 1.2).
    pub const SEGMENT_INVALID: u32 = 8;
    /// A segment address (or the range from it) lies outside the attached segment (device
    /// 1.2). A write through a read-only attachment completes [`PERMISSION`].
    pub const SEGMENT_BOUNDS: u32 = 9;
    /// The remote segment's guest did not answer in time, or answered nonsense (device 1.3).
    pub const REMOTE_UNREACHABLE: u32 = 10;
}

/// Command flag: raise a completion interrupt (the driver sets it itself when a waiter
/// sleeps; user space may leave it clear).
pub const CMD_FLAG_INTERRUPT: u8 = 1;

/// One device command, as user space submits it (same layout as the device's command).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// One of [`opcode`].
    pub opcode: u8,
    /// [`CMD_FLAG_INTERRUPT`] or 0.
    pub flags: u8,
    /// Must be zero.
    pub reserved0: u16,
    /// Must be zero.
    pub reserved1: u32,
    /// Caller's tag, echoed in the completion.
    pub id: u64,
    /// Destination (or the only) user virtual address.
    pub addr0: u64,
    /// Source user virtual address (COPY).
    pub addr1: u64,
    /// Length in bytes (COPY, FILL).
    pub length: u64,
    /// Pattern, value, addend or compare value.
    pub operand0: u64,
    /// Swap value (CAS).
    pub operand1: u64,
}

/// One completion, as user space receives it (same layout as the device's record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// The command's `id`.
    pub id: u64,
    /// One of [`status`].
    pub status: u32,
    /// Zero.
    pub reserved: u32,
    /// READ64 value, or the old value for atomics.
    pub result: u64,
    /// Faulting user address when `status` is not OK.
    pub fault_va: u64,
}

/// Argument of [`IOC_SUBMIT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Submit {
    /// User pointer to an array of [`Command`].
    pub commands: u64,
    /// Number of commands in the array (at most [`MAX_BATCH`]).
    pub count: u32,
    /// Out: how many were queued (all of them, or fewer when the queue is full).
    pub queued: u32,
}

/// Argument of [`IOC_WAIT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wait {
    /// User pointer to an array of [`Completion`] to fill.
    pub completions: u64,
    /// Room in the array.
    pub max: u32,
    /// Block until at least this many completions are available (0: do not block).
    pub min: u32,
    /// Give up blocking after this many milliseconds (0: wait until `min` arrive).
    pub timeout_ms: u32,
    /// Out: completions written.
    pub count: u32,
}

/// Per-context counters ([`IOC_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Completions delivered.
    pub completed: u64,
    /// Fault records received for this context.
    pub faults: u64,
    /// Translations dropped into the device TLB (4 KiB).
    pub dropins_4k: u64,
    /// Translations dropped into the device TLB (2 MiB).
    pub dropins_2m: u64,
    /// Faults answered with an abort (unresolvable address).
    pub aborts: u64,
    /// Notifier invalidations received for this context's address space.
    pub invalidations_received: u64,
    /// Device invalidations sent for them (ranges that held device entries).
    pub invalidations_sent: u64,
    /// Miss-handling retries (an invalidation raced with the fault).
    pub retries: u64,
    /// Device ASID of the context.
    pub asid: u32,
    /// Device context number.
    pub context: u32,
}

/// Largest batch one [`IOC_SUBMIT`] accepts.
pub const MAX_BATCH: u32 = 256;

/// `_IOWR('r', 0x02, Submit)`: queue commands.
pub const IOC_SUBMIT: u32 = ioc(IOC_READ | IOC_WRITE, 0x02, core::mem::size_of::<Submit>());
/// `_IOWR('r', 0x03, Wait)`: collect completions.
pub const IOC_WAIT: u32 = ioc(IOC_READ | IOC_WRITE, 0x03, core::mem::size_of::<Wait>());
/// `_IOR('r', 0x04, ContextStats)`: read this context's counters.
pub const IOC_STATS: u32 = ioc(IOC_READ, 0x04, core::mem::size_of::<ContextStats>());

// ---------------------------------------------------------------------------------------------
// Segments (ABI 3, device 1.2): XPMEM-style sharing of a range of one process's address space
// with other processes, without pinning (docs/segments.md).
// ---------------------------------------------------------------------------------------------

/// Permission bits of a segment ([`SegmentExport::permit_mode`]): the read and write bits of a
/// file mode, checked against the importer's effective uid and gid as a file's mode would be
/// (owner bits when the euid is the exporter's, else group bits when the egid is the
/// exporter's, else the other bits). Root gets no exemption.
pub mod permit {
    /// The exporter's user may attach for reading.
    pub const OWNER_READ: u32 = 0o400;
    /// The exporter's user may attach for writing.
    pub const OWNER_WRITE: u32 = 0o200;
    /// The exporter's group may attach for reading.
    pub const GROUP_READ: u32 = 0o040;
    /// The exporter's group may attach for writing.
    pub const GROUP_WRITE: u32 = 0o020;
    /// Anyone may attach for reading.
    pub const OTHER_READ: u32 = 0o004;
    /// Anyone may attach for writing.
    pub const OTHER_WRITE: u32 = 0o002;
    /// Every bit the driver accepts.
    pub const ALL: u32 = 0o666;
}

/// Segment flag ([`SegmentExport::flags`], [`SegmentAttach::flags`]): the segment may be
/// written through (export), or the attachment wants to write (attach).
pub const SEGMENT_WRITABLE: u32 = 1;

/// Segment flag (ABI 4, device 1.3): export — processes of the other guest on the fabric may
/// attach the segment too, by its segment id (only the `permit::OTHER_*` bits apply to them:
/// their credentials mean nothing here); attach — `segid` is a segment id of the other guest,
/// learnt out of band.
pub const SEGMENT_REMOTE: u32 = 2;

/// Argument of [`IOC_EXPORT`]: make `[va, va + length)` of the caller's address space a
/// segment other processes can attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentExport {
    /// Start, page aligned.
    pub va: u64,
    /// Length in bytes, a non-zero multiple of the page size.
    pub length: u64,
    /// [`SEGMENT_WRITABLE`] or 0 (read-only segment).
    pub flags: u32,
    /// [`permit`] bits.
    pub permit_mode: u32,
    /// Out: the segment id importers name.
    pub segid: u64,
}

/// Argument of [`IOC_ATTACH`]: attach segment `segid` to the caller's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentAttach {
    /// The segment id the exporter got from [`IOC_EXPORT`].
    pub segid: u64,
    /// [`SEGMENT_WRITABLE`] to write through the attachment, or 0 to only read.
    pub flags: u32,
    /// Out: the attachment slot commands name (see [`segment_address`]).
    pub slot: u32,
    /// Out: the segment's length in bytes.
    pub length: u64,
}

// The kernel copies these to and from user memory byte for byte: no padding anywhere.
const _: () = assert!(core::mem::size_of::<SegmentExport>() == 32);
const _: () = assert!(core::mem::size_of::<SegmentAttach>() == 24);

/// Command flag: `addr0` is a segment address ([`segment_address`]), not a VA of the caller.
pub const CMD_FLAG_SEGMENT_ADDR0: u8 = 2;
/// Command flag: `addr1` is a segment address ([`segment_address`]), not a VA of the caller.
pub const CMD_FLAG_SEGMENT_ADDR1: u8 = 4;

/// Attachment slots per context.
pub const MAX_ATTACHMENTS: u32 = 8;

/// Bits of a segment address that hold the offset into the segment.
pub const SEGMENT_OFFSET_MASK: u64 = (1 << 56) - 1;

/// The segment address of byte `offset` of the segment attached at `slot`: the slot in bits
/// 63:56, the offset in bits 55:0.
pub const fn segment_address(slot: u32, offset: u64) -> u64 {
    ((slot as u64) << 56) | (offset & SEGMENT_OFFSET_MASK)
}

/// `_IOWR('r', 0x05, SegmentExport)`: export a segment.
pub const IOC_EXPORT: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x05,
    core::mem::size_of::<SegmentExport>(),
);
/// `_IOW('r', 0x06, u64)`: remove a segment the caller's context exported; importers' next
/// accesses complete [`status::SEGMENT_INVALID`].
pub const IOC_REMOVE: u32 = ioc(IOC_WRITE, 0x06, core::mem::size_of::<u64>());
/// `_IOWR('r', 0x07, SegmentAttach)`: attach a segment.
pub const IOC_ATTACH: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x07,
    core::mem::size_of::<SegmentAttach>(),
);
/// `_IOW('r', 0x08, u32)`: detach the attachment at a slot.
pub const IOC_DETACH: u32 = ioc(IOC_WRITE, 0x08, core::mem::size_of::<u32>());

/// Sets the context's fault-ahead window (ABI 5): on a device miss the driver faults in the
/// missing page and drops in, with it, the pages after it (up to this many pages in all)
/// that the CPU page tables already map. Argument: pointer to a `u32` in
/// 1..=[`MAX_FAULT_AHEAD`]; 1 turns fault-ahead off. A context starts at
/// [`DEFAULT_FAULT_AHEAD`].
pub const IOC_FAULT_AHEAD: u32 = ioc(IOC_WRITE, 0x09, core::mem::size_of::<u32>());
/// Largest fault-ahead window, in pages (one 2 MiB page worth of 4 KiB pages).
pub const MAX_FAULT_AHEAD: u32 = 512;
/// The fault-ahead window a context starts with, in pages.
pub const DEFAULT_FAULT_AHEAD: u32 = 16;

// ---------------------------------------------------------------------------------------------
// User-level submission (ABI 6, device 1.5): the process posts commands into a queue it maps
// and rings its context's own doorbell page, with no system call (docs/driver.md).
// ---------------------------------------------------------------------------------------------

/// Answer of [`IOC_USER_QUEUE`]: the layout of the context's user queue.
///
/// `mmap(NULL, map_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, USER_QUEUE_MMAP_OFFSET)`
/// maps the queue: `slots` command slots of `slot_size` bytes at offset 0 (slot *i* holds a
/// [`Command`]), `slots` [`Completion`]s at `completions_offset` (slot *i*'s completion at
/// `completions_offset + i × 32`), and at `indices_offset` the producer's `u32` tail (+0) and
/// the device's `u32` head (+4), both free-running counts of commands. `mmap(NULL, 4096,
/// PROT_WRITE, MAP_SHARED, fd, doorbell_offset)` maps the doorbell page: a 32-bit write at its
/// offset 0 rings the context's doorbell. To post: write the command into slot `tail % slots`,
/// store `tail + 1` with release ordering, write the doorbell. A command is done when the
/// head (read with acquire ordering) has passed it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserQueue {
    /// Command slots (a power of two).
    pub slots: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Offset of the completion array in the queue mapping.
    pub completions_offset: u32,
    /// Offset of the index block (tail, head) in the queue mapping.
    pub indices_offset: u32,
    /// Length to map at [`USER_QUEUE_MMAP_OFFSET`].
    pub map_length: u64,
    /// The `mmap` offset of the doorbell page ([`USER_DOORBELL_MMAP_OFFSET`]).
    pub doorbell_offset: u64,
}

const _: () = assert!(core::mem::size_of::<UserQueue>() == 32);

/// `_IOR('r', 0x0a, UserQueue)`: hands the context's command queue to the calling process
/// (device 1.5, `CAPS_INLINE_QUEUE`; else `ENOTTY`) and returns its layout. The context must
/// have no command of [`IOC_SUBMIT`] outstanding (`EBUSY`); from then on [`IOC_SUBMIT`] and
/// [`IOC_WAIT`] fail with `EINVAL`, and the process posts through the mapped queue. Calling it
/// again returns the same layout. Only the process that opened the context may call it or map
/// the queue (`EPERM`); the mappings are not inherited across `fork` (`VM_DONTCOPY`).
pub const IOC_USER_QUEUE: u32 = ioc(IOC_READ, 0x0a, core::mem::size_of::<UserQueue>());
/// `mmap` offset of the user queue.
pub const USER_QUEUE_MMAP_OFFSET: u64 = 0;
/// `mmap` offset of the context's doorbell page.
pub const USER_DOORBELL_MMAP_OFFSET: u64 = 1 << 20;
/// Command slots of a user queue.
pub const USER_QUEUE_SLOTS: u32 = 256;
/// Bytes per user queue slot.
pub const USER_SLOT_SIZE: u32 = 64;
/// Offset of the tail in the index block.
pub const USER_TAIL_OFFSET: u32 = 0;
/// Offset of the head in the index block.
pub const USER_HEAD_OFFSET: u32 = 4;

/// Argument of [`IOC_USER_WAIT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserWait {
    /// Return once the queue's head has reached this count (free-running, compared with
    /// wrap-around).
    pub head: u32,
    /// Give up with `EAGAIN` after this long (0: no limit).
    pub timeout_ms: u32,
}

const _: () = assert!(core::mem::size_of::<UserWait>() == 8);

/// `_IOW('r', 0x0b, UserWait)`: sleeps until the user queue's head reaches a count. The slow
/// path of a process that polls its head: while it sleeps the driver drains the fault ring
/// every 10 ms itself, so a lost fault interrupt delays the process instead of stalling it
/// (a context whose queue the kernel owns gets the same from `IOC_WAIT`). `EINVAL` without a
/// user queue.
pub const IOC_USER_WAIT: u32 = ioc(IOC_WRITE, 0x0b, core::mem::size_of::<UserWait>());
