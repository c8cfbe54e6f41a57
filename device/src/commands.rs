//! Command and completion records of the per-context command queues: opcodes, statuses, byte
//! layouts, and the decoding that turns 56 untrusted bytes into a checked [`Command`].
//!
//! Layouts are little-endian with explicit offsets (no bitfields, no `repr(C)` structs read
//! from guest memory): each field is read with `from_le_bytes` at its `CMD_OFF_*` offset.

use crate::addr::VirtAddr;

/// Size of a command record (the chain's first, device-readable descriptor holds at least this).
pub const COMMAND_SIZE: usize = 56;
/// Size of a completion record (the chain's second, device-writable descriptor).
pub const COMPLETION_SIZE: usize = 32;
/// Command field offset: opcode (u8).
pub const CMD_OFF_OPCODE: usize = 0;
/// Command field offset: flags (u8).
pub const CMD_OFF_FLAGS: usize = 1;
/// Command field offset: reserved (u16 at 2, u32 at 4), must be 0.
pub const CMD_OFF_RESERVED: usize = 2;
/// Command field offset: command id (u64), copied to the completion.
pub const CMD_OFF_ID: usize = 8;
/// Command field offset: addr0 (u64): destination, or the 64-bit word of READ64/WRITE64/atomics.
pub const CMD_OFF_ADDR0: usize = 16;
/// Command field offset: addr1 (u64): COPY's source.
pub const CMD_OFF_ADDR1: usize = 24;
/// Command field offset: length in bytes (u64), COPY and FILL.
pub const CMD_OFF_LENGTH: usize = 32;
/// Command field offset: operand0 (u64): pattern, value, addend, or CAS's expected value.
pub const CMD_OFF_OPERAND0: usize = 40;
/// Command field offset: operand1 (u64): CAS's new value.
pub const CMD_OFF_OPERAND1: usize = 48;
/// Command flag: raise `VECTOR_COMPLETION` when the command completes.
pub const CMD_FLAG_INTERRUPT: u8 = 1 << 0;
pub use crate::segments::{CMD_FLAG_SEGMENT_ADDR0, CMD_FLAG_SEGMENT_ADDR1};
/// Largest COPY or FILL length: 1 GiB.
pub const CMD_MAX_LENGTH: u64 = 1 << 30;
/// Completion field offset: command id (u64).
pub const CPL_OFF_ID: usize = 0;
/// Completion field offset: status (u32).
pub const CPL_OFF_STATUS: usize = 8;
/// Completion field offset: reserved (u32), written 0.
pub const CPL_OFF_RESERVED: usize = 12;
/// Completion field offset: result (u64): READ64's value, the old value of atomics.
pub const CPL_OFF_RESULT: usize = 16;
/// Completion field offset: fault VA (u64) for FAULT_UNRESOLVED, PERMISSION, DEVICE_ERROR.
pub const CPL_OFF_FAULT_VA: usize = 24;

/// Command opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// No operation.
    Nop = 0,
    /// Copy `length` bytes from addr1 to addr0.
    Copy = 1,
    /// Fill `length` bytes at addr0 with the 64-bit pattern operand0.
    Fill = 2,
    /// Read the 64-bit word at addr0 into the completion's result.
    Read64 = 3,
    /// Write operand0 to the 64-bit word at addr0.
    Write64 = 4,
    /// Atomically add operand0 to the word at addr0; result = old value.
    FetchAdd = 5,
    /// Atomically replace the word at addr0 by operand1 if it equals operand0; result = old.
    Cas = 6,
    /// Atomically replace the word at addr0 by operand0; result = old value.
    Swap = 7,
    /// Complete after every earlier command of the context.
    Fence = 8,
}

impl Opcode {
    /// The opcode of `byte`, if it names one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Nop,
            1 => Self::Copy,
            2 => Self::Fill,
            3 => Self::Read64,
            4 => Self::Write64,
            5 => Self::FetchAdd,
            6 => Self::Cas,
            7 => Self::Swap,
            8 => Self::Fence,
            _ => return None,
        })
    }
}

/// Completion statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The command completed.
    Ok = 0,
    /// A translation fault the driver aborted as unresolvable (or no fault ring is configured).
    FaultUnresolved = 1,
    /// The driver aborted a fault as a permission violation.
    Permission = 2,
    /// A DMA to guest memory failed (address outside guest RAM or an injected error).
    DeviceError = 3,
    /// The opcode is not defined.
    InvalidOpcode = 4,
    /// The command was aborted by disabling its context.
    Aborted = 5,
    /// A 64-bit operation on an address that is not 8-byte aligned.
    Alignment = 6,
    /// A reserved field or flag is set, a length exceeds 1 GiB, or a range wraps.
    InvalidArgument = 7,
    /// A segment address names a slot with no valid attachment (since 1.2).
    SegmentInvalid = 8,
    /// A segment address's range leaves its segment (since 1.2).
    SegmentBounds = 9,
    /// A remote segment's node did not answer, or answered nonsense (since 1.3).
    RemoteUnreachable = 10,
}

impl Status {
    /// The status a driver's ABORT may name in `CTX_COMMAND` bits 15:8.
    pub fn from_abort_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::FaultUnresolved),
            2 => Some(Self::Permission),
            _ => None,
        }
    }
}

/// What a command does, with its operands checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// NOP.
    Nop,
    /// FENCE.
    Fence,
    /// COPY `len` bytes from `src` to `dst`.
    Copy {
        /// Destination.
        dst: VirtAddr,
        /// Source.
        src: VirtAddr,
        /// Bytes, at most [`CMD_MAX_LENGTH`]; neither range wraps.
        len: u64,
    },
    /// FILL `len` bytes at `dst` with `pattern` (byte `i` of the range gets byte `i % 8` of
    /// the little-endian pattern).
    Fill {
        /// Destination.
        dst: VirtAddr,
        /// Bytes, at most [`CMD_MAX_LENGTH`]; the range does not wrap.
        len: u64,
        /// The pattern.
        pattern: u64,
    },
    /// READ64.
    Read64 {
        /// 8-byte aligned address.
        addr: VirtAddr,
    },
    /// WRITE64.
    Write64 {
        /// 8-byte aligned address.
        addr: VirtAddr,
        /// Value written.
        value: u64,
    },
    /// FETCH_ADD.
    FetchAdd {
        /// 8-byte aligned address.
        addr: VirtAddr,
        /// Added (wrapping).
        addend: u64,
    },
    /// CAS.
    Cas {
        /// 8-byte aligned address.
        addr: VirtAddr,
        /// Compared with the word.
        expected: u64,
        /// Stored if the word equals `expected`.
        new: u64,
    },
    /// SWAP.
    Swap {
        /// 8-byte aligned address.
        addr: VirtAddr,
        /// Stored.
        value: u64,
    },
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The driver's id, copied into the completion.
    pub id: u64,
    /// Raise `VECTOR_COMPLETION` on completion.
    pub interrupt: bool,
    /// The operation.
    pub op: Operation,
    /// Which addresses are segment addresses (spec §19): the command's
    /// `CMD_FLAG_SEGMENT_ADDR0` / `CMD_FLAG_SEGMENT_ADDR1` bits, as [`SegmentAddressing`].
    pub segments: SegmentAddressing,
}

/// Which of a command's addresses name (attachment slot, offset) rather than a VA of the
/// context's own address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentAddressing {
    /// addr0 (destination, or the 64-bit word) is a segment address.
    pub addr0: bool,
    /// addr1 (COPY's source) is a segment address.
    pub addr1: bool,
}

impl SegmentAddressing {
    /// Whether any address is a segment address.
    pub fn any(self) -> bool {
        self.addr0 || self.addr1
    }
}

/// A command that cannot execute: it completes at once with `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The driver's id.
    pub id: u64,
    /// Whether to interrupt on completion (as the command asked, when its flags are readable).
    pub interrupt: bool,
    /// Why it cannot execute.
    pub status: Status,
}

fn u64_at(bytes: &[u8; COMMAND_SIZE], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(field)
}

/// Decodes and checks a command record. Checks run in this order: opcode (INVALID_OPCODE),
/// flags and reserved fields (INVALID_ARGUMENT), lengths and wrapping (INVALID_ARGUMENT),
/// alignment of 64-bit operations (ALIGNMENT).
pub fn decode(bytes: &[u8; COMMAND_SIZE]) -> Result<Command, Rejected> {
    let id = u64_at(bytes, CMD_OFF_ID);
    let flags = bytes[CMD_OFF_FLAGS];
    let interrupt = flags & CMD_FLAG_INTERRUPT != 0;
    let reject = |status| Rejected {
        id,
        interrupt,
        status,
    };
    let opcode = Opcode::from_byte(bytes[CMD_OFF_OPCODE]).ok_or(reject(Status::InvalidOpcode))?;
    let reserved_set = bytes[CMD_OFF_RESERVED..CMD_OFF_ID].iter().any(|b| *b != 0);
    let known = CMD_FLAG_INTERRUPT | CMD_FLAG_SEGMENT_ADDR0 | CMD_FLAG_SEGMENT_ADDR1;
    if flags & !known != 0 || reserved_set {
        return Err(reject(Status::InvalidArgument));
    }
    let segments = SegmentAddressing {
        addr0: flags & CMD_FLAG_SEGMENT_ADDR0 != 0,
        addr1: flags & CMD_FLAG_SEGMENT_ADDR1 != 0,
    };
    // addr1 is used by COPY only, and NOP and FENCE use no address.
    let addresses_used = match opcode {
        Opcode::Nop | Opcode::Fence => (false, false),
        Opcode::Copy => (true, true),
        _ => (true, false),
    };
    if (segments.addr0 && !addresses_used.0) || (segments.addr1 && !addresses_used.1) {
        return Err(reject(Status::InvalidArgument));
    }
    let addr0 = VirtAddr(u64_at(bytes, CMD_OFF_ADDR0));
    let addr1 = VirtAddr(u64_at(bytes, CMD_OFF_ADDR1));
    let len = u64_at(bytes, CMD_OFF_LENGTH);
    let operand0 = u64_at(bytes, CMD_OFF_OPERAND0);
    let operand1 = u64_at(bytes, CMD_OFF_OPERAND1);
    // A segment address's range is checked against its segment when it executes.
    let range_ok = |start: VirtAddr, segment: bool| {
        len <= CMD_MAX_LENGTH && (segment || start.checked_add(len).is_some())
    };
    let aligned = |addr: VirtAddr| {
        if addr.is_aligned(8) {
            Ok(addr)
        } else {
            Err(reject(Status::Alignment))
        }
    };
    let op = match opcode {
        Opcode::Nop => Operation::Nop,
        Opcode::Fence => Operation::Fence,
        Opcode::Copy => {
            if !range_ok(addr0, segments.addr0) || !range_ok(addr1, segments.addr1) {
                return Err(reject(Status::InvalidArgument));
            }
            Operation::Copy {
                dst: addr0,
                src: addr1,
                len,
            }
        }
        Opcode::Fill => {
            if !range_ok(addr0, segments.addr0) {
                return Err(reject(Status::InvalidArgument));
            }
            Operation::Fill {
                dst: addr0,
                len,
                pattern: operand0,
            }
        }
        Opcode::Read64 => Operation::Read64 {
            addr: aligned(addr0)?,
        },
        Opcode::Write64 => Operation::Write64 {
            addr: aligned(addr0)?,
            value: operand0,
        },
        Opcode::FetchAdd => Operation::FetchAdd {
            addr: aligned(addr0)?,
            addend: operand0,
        },
        Opcode::Cas => Operation::Cas {
            addr: aligned(addr0)?,
            expected: operand0,
            new: operand1,
        },
        Opcode::Swap => Operation::Swap {
            addr: aligned(addr0)?,
            value: operand0,
        },
    };
    Ok(Command {
        id,
        interrupt,
        op,
        segments,
    })
}

/// The fields of a command record, for drivers and tests that build one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandRecord {
    /// Opcode byte.
    pub opcode: u8,
    /// Flags byte.
    pub flags: u8,
    /// Command id.
    pub id: u64,
    /// addr0.
    pub addr0: u64,
    /// addr1.
    pub addr1: u64,
    /// length.
    pub length: u64,
    /// operand0.
    pub operand0: u64,
    /// operand1.
    pub operand1: u64,
}

impl CommandRecord {
    /// The record's bytes as the device reads them.
    pub fn to_bytes(&self) -> [u8; COMMAND_SIZE] {
        let mut bytes = [0u8; COMMAND_SIZE];
        bytes[CMD_OFF_OPCODE] = self.opcode;
        bytes[CMD_OFF_FLAGS] = self.flags;
        for (offset, value) in [
            (CMD_OFF_ID, self.id),
            (CMD_OFF_ADDR0, self.addr0),
            (CMD_OFF_ADDR1, self.addr1),
            (CMD_OFF_LENGTH, self.length),
            (CMD_OFF_OPERAND0, self.operand0),
            (CMD_OFF_OPERAND1, self.operand1),
        ] {
            bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }
}

/// A completion record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The command's id.
    pub id: u64,
    /// Outcome.
    pub status: Status,
    /// READ64's value, or the old value of an atomic; 0 otherwise.
    pub result: u64,
    /// The address that faulted or failed, for FAULT_UNRESOLVED, PERMISSION and
    /// DEVICE_ERROR; 0 otherwise.
    pub fault_va: u64,
}

impl Completion {
    /// The record's bytes as the device writes them.
    pub fn to_bytes(&self) -> [u8; COMPLETION_SIZE] {
        let mut bytes = [0u8; COMPLETION_SIZE];
        bytes[CPL_OFF_ID..CPL_OFF_ID + 8].copy_from_slice(&self.id.to_le_bytes());
        bytes[CPL_OFF_STATUS..CPL_OFF_STATUS + 4]
            .copy_from_slice(&(self.status as u32).to_le_bytes());
        bytes[CPL_OFF_RESULT..CPL_OFF_RESULT + 8].copy_from_slice(&self.result.to_le_bytes());
        bytes[CPL_OFF_FAULT_VA..CPL_OFF_FAULT_VA + 8].copy_from_slice(&self.fault_va.to_le_bytes());
        bytes
    }

    /// Parses a completion record (for drivers and tests); `None` for an unknown status.
    pub fn from_bytes(bytes: &[u8; COMPLETION_SIZE]) -> Option<Self> {
        let u64_at = |offset: usize| {
            let mut field = [0u8; 8];
            field.copy_from_slice(&bytes[offset..offset + 8]);
            u64::from_le_bytes(field)
        };
        let mut status = [0u8; 4];
        status.copy_from_slice(&bytes[CPL_OFF_STATUS..CPL_OFF_STATUS + 4]);
        let status = match u32::from_le_bytes(status) {
            0 => Status::Ok,
            1 => Status::FaultUnresolved,
            2 => Status::Permission,
            3 => Status::DeviceError,
            4 => Status::InvalidOpcode,
            5 => Status::Aborted,
            6 => Status::Alignment,
            7 => Status::InvalidArgument,
            8 => Status::SegmentInvalid,
            9 => Status::SegmentBounds,
            10 => Status::RemoteUnreachable,
            _ => return None,
        };
        Some(Self {
            id: u64_at(CPL_OFF_ID),
            status,
            result: u64_at(CPL_OFF_RESULT),
            fault_va: u64_at(CPL_OFF_FAULT_VA),
        })
    }
}

/// Every named value of this module, for the specification drift test.
pub const SPEC_CONSTANTS: [(&str, u64); 41] = [
    (
        "STATUS_REMOTE_UNREACHABLE",
        Status::RemoteUnreachable as u64,
    ),
    ("CMD_FLAG_SEGMENT_ADDR0", CMD_FLAG_SEGMENT_ADDR0 as u64),
    ("CMD_FLAG_SEGMENT_ADDR1", CMD_FLAG_SEGMENT_ADDR1 as u64),
    ("STATUS_SEGMENT_INVALID", Status::SegmentInvalid as u64),
    ("STATUS_SEGMENT_BOUNDS", Status::SegmentBounds as u64),
    ("COMMAND_SIZE", COMMAND_SIZE as u64),
    ("COMPLETION_SIZE", COMPLETION_SIZE as u64),
    ("CMD_OFF_OPCODE", CMD_OFF_OPCODE as u64),
    ("CMD_OFF_FLAGS", CMD_OFF_FLAGS as u64),
    ("CMD_OFF_RESERVED", CMD_OFF_RESERVED as u64),
    ("CMD_OFF_ID", CMD_OFF_ID as u64),
    ("CMD_OFF_ADDR0", CMD_OFF_ADDR0 as u64),
    ("CMD_OFF_ADDR1", CMD_OFF_ADDR1 as u64),
    ("CMD_OFF_LENGTH", CMD_OFF_LENGTH as u64),
    ("CMD_OFF_OPERAND0", CMD_OFF_OPERAND0 as u64),
    ("CMD_OFF_OPERAND1", CMD_OFF_OPERAND1 as u64),
    ("CMD_FLAG_INTERRUPT", CMD_FLAG_INTERRUPT as u64),
    ("CMD_MAX_LENGTH", CMD_MAX_LENGTH),
    ("CPL_OFF_ID", CPL_OFF_ID as u64),
    ("CPL_OFF_STATUS", CPL_OFF_STATUS as u64),
    ("CPL_OFF_RESERVED", CPL_OFF_RESERVED as u64),
    ("CPL_OFF_RESULT", CPL_OFF_RESULT as u64),
    ("CPL_OFF_FAULT_VA", CPL_OFF_FAULT_VA as u64),
    ("OP_NOP", Opcode::Nop as u64),
    ("OP_COPY", Opcode::Copy as u64),
    ("OP_FILL", Opcode::Fill as u64),
    ("OP_READ64", Opcode::Read64 as u64),
    ("OP_WRITE64", Opcode::Write64 as u64),
    ("OP_FETCH_ADD", Opcode::FetchAdd as u64),
    ("OP_CAS", Opcode::Cas as u64),
    ("OP_SWAP", Opcode::Swap as u64),
    ("OP_FENCE", Opcode::Fence as u64),
    ("STATUS_OK", Status::Ok as u64),
    ("STATUS_FAULT_UNRESOLVED", Status::FaultUnresolved as u64),
    ("STATUS_PERMISSION", Status::Permission as u64),
    ("STATUS_DEVICE_ERROR", Status::DeviceError as u64),
    ("STATUS_INVALID_OPCODE", Status::InvalidOpcode as u64),
    ("STATUS_ABORTED", Status::Aborted as u64),
    ("STATUS_ALIGNMENT", Status::Alignment as u64),
    ("STATUS_INVALID_ARGUMENT", Status::InvalidArgument as u64),
    ("COMPLETION_USED_LEN", COMPLETION_SIZE as u64),
];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(opcode: Opcode) -> CommandRecord {
        CommandRecord {
            opcode: opcode as u8,
            flags: CMD_FLAG_INTERRUPT,
            id: 0x1234,
            addr0: 0x1000,
            addr1: 0x2000,
            length: 0x3000,
            operand0: 5,
            operand1: 6,
        }
    }

    #[test]
    fn every_opcode_decodes_with_its_operands() {
        let copy = decode(&record(Opcode::Copy).to_bytes()).expect("valid");
        assert_eq!(copy.id, 0x1234);
        assert!(copy.interrupt);
        assert_eq!(
            copy.op,
            Operation::Copy {
                dst: VirtAddr(0x1000),
                src: VirtAddr(0x2000),
                len: 0x3000
            }
        );
        assert_eq!(
            decode(&record(Opcode::Cas).to_bytes()).map(|c| c.op),
            Ok(Operation::Cas {
                addr: VirtAddr(0x1000),
                expected: 5,
                new: 6
            })
        );
        for opcode in 0..=8 {
            let mut rec = record(Opcode::Nop);
            rec.opcode = opcode;
            assert!(decode(&rec.to_bytes()).is_ok(), "opcode {opcode}");
        }
    }

    #[test]
    fn unknown_opcodes_are_rejected_with_invalid_opcode() {
        let mut rec = record(Opcode::Nop);
        rec.opcode = 9;
        let rejected = decode(&rec.to_bytes()).expect_err("unknown");
        assert_eq!(rejected.status, Status::InvalidOpcode);
        assert_eq!(rejected.id, 0x1234);
        assert!(rejected.interrupt);
    }

    #[test]
    fn reserved_bits_and_unknown_flags_are_invalid_arguments() {
        let mut bytes = record(Opcode::Nop).to_bytes();
        bytes[5] = 1;
        assert_eq!(
            decode(&bytes).map_err(|r| r.status),
            Err(Status::InvalidArgument)
        );
        let mut rec = record(Opcode::Nop);
        rec.flags = 0x81;
        assert_eq!(
            decode(&rec.to_bytes()).map_err(|r| r.status),
            Err(Status::InvalidArgument)
        );
    }

    #[test]
    fn lengths_over_1_gib_and_wrapping_ranges_are_invalid_arguments() {
        let mut rec = record(Opcode::Fill);
        rec.length = CMD_MAX_LENGTH + 1;
        assert_eq!(
            decode(&rec.to_bytes()).map_err(|r| r.status),
            Err(Status::InvalidArgument)
        );
        rec.length = CMD_MAX_LENGTH;
        assert!(decode(&rec.to_bytes()).is_ok());
        let mut rec = record(Opcode::Copy);
        rec.addr1 = u64::MAX - 0xfff;
        assert_eq!(
            decode(&rec.to_bytes()).map_err(|r| r.status),
            Err(Status::InvalidArgument)
        );
    }

    #[test]
    fn misaligned_64_bit_operations_are_alignment_errors() {
        for opcode in [
            Opcode::Read64,
            Opcode::Write64,
            Opcode::FetchAdd,
            Opcode::Cas,
            Opcode::Swap,
        ] {
            let mut rec = record(opcode);
            rec.addr0 = 0x1004;
            assert_eq!(
                decode(&rec.to_bytes()).map_err(|r| r.status),
                Err(Status::Alignment),
                "{opcode:?}"
            );
        }
    }

    #[test]
    fn completion_records_round_trip() {
        let completion = Completion {
            id: 9,
            status: Status::Permission,
            result: 0xdead,
            fault_va: 0x7000,
        };
        let bytes = completion.to_bytes();
        assert_eq!(bytes[8], 2);
        assert_eq!(Completion::from_bytes(&bytes), Some(completion));
        let mut bad = bytes;
        bad[8] = 99;
        assert_eq!(Completion::from_bytes(&bad), None);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), COMMAND_SIZE)) {
            let mut record = [0u8; COMMAND_SIZE];
            record.copy_from_slice(&bytes);
            let _ = decode(&record);
        }
    }
}
