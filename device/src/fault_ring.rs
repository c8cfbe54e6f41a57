//! The fault ring: a ring of 32-byte fault records in guest memory that the device produces
//! (one per fault that stalls a context) and the driver consumes.
//!
//! Indices are free-running u32s: the device's producer index is `REG_FAULT_HEAD`, the
//! driver's consumer index `REG_FAULT_TAIL`; record `i` lives in slot `i mod size`. The ring
//! holds at most `size` unconsumed records. When it is full, new records wait inside the
//! device, in order, and are written as soon as `REG_FAULT_TAIL` moves.
//!
//! A record's `sequence` field (`index + 1`, modulo 2^32) is written last, with release
//! ordering: a driver polling memory knows record `t` is complete when its sequence reads
//! `t + 1`.

use std::collections::VecDeque;

use vm_memory::GuestAddress;

use crate::addr::VirtAddr;
use crate::engine::dma::{Dma, DmaError};
use crate::error_code::ErrorCode;

/// Size of a fault record.
pub const FAULT_RECORD_SIZE: usize = 32;
/// Fault record field offset: context (u16).
pub const FAULT_REC_CONTEXT: usize = 0;
/// Fault record field offset: ASID (u16).
pub const FAULT_REC_ASID: usize = 2;
/// Fault record field offset: access bits (u8, `FAULT_ACCESS_*`).
pub const FAULT_REC_ACCESS: usize = 4;
/// Fault record field offset: reason (u8, `FAULT_REASON_*`).
pub const FAULT_REC_REASON: usize = 5;
/// Fault record field offset: faulting virtual address (u64).
pub const FAULT_REC_VA: usize = 8;
/// Fault record offset: u8 flags (`FAULT_FLAG_*`, since 1.2).
pub const FAULT_REC_FLAGS: usize = 6;
/// Fault record offset: u8 attachment slot, when `FAULT_FLAG_SEGMENT` is set (since 1.2).
pub const FAULT_REC_SLOT: usize = 7;
/// Fault record flag: the access went through the segment attached at `FAULT_REC_SLOT`;
/// the VA is in the exporter's address space.
pub const FAULT_FLAG_SEGMENT: u8 = 1;
/// Fault record flag: a miss of the fabric's other node on a remote export (since 1.3): no
/// context stalls; the driver resolves the VA in the exporter context's address space, drops
/// it in, and answers `REG_REMOTE_ANSWER` with the tag in `FAULT_REC_COMMAND_ID`.
pub const FAULT_FLAG_REMOTE: u8 = 2;
/// Fault record field offset: command id of the stalled command (u64).
pub const FAULT_REC_COMMAND_ID: usize = 16;
/// Fault record field offset: sequence (u32), `index + 1`, written last.
pub const FAULT_REC_SEQUENCE: usize = 24;
/// Access bit: the access reads.
pub const FAULT_ACCESS_READ: u8 = 1;
/// Access bit: the access writes (atomics read and write: both bits).
pub const FAULT_ACCESS_WRITE: u8 = 2;
/// Reason: no entry for the address.
pub const FAULT_REASON_MISS: u8 = 1;
/// Reason: an entry exists but lacks a needed permission.
pub const FAULT_REASON_PERMISSION: u8 = 2;
/// Smallest fault ring.
pub const FAULT_RING_MIN_SIZE: u32 = 8;
/// Largest fault ring.
pub const FAULT_RING_MAX_SIZE: u32 = 4096;
/// Alignment of the fault ring base.
pub const FAULT_RING_ALIGN: u64 = 4096;

/// One fault, as reported to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// Context that faulted.
    pub ctx: u8,
    /// Its ASID.
    pub asid: u16,
    /// Access bits.
    pub access: u8,
    /// Reason.
    pub reason: u8,
    /// Faulting address.
    pub va: VirtAddr,
    /// Id of the stalled command.
    pub command_id: u64,
    /// The attachment slot when the access went through a segment: `va` is then in the
    /// exporter's address space (since 1.2). For a remote fault, the export index.
    pub segment_slot: Option<u8>,
    /// A remote fault (since 1.3): no context stalls; `ctx` and `asid` are the exporter's,
    /// `command_id` is the tag the driver answers in `REG_REMOTE_ANSWER`.
    pub remote: bool,
}

impl FaultRecord {
    /// The record's bytes with `sequence` (which the device writes last).
    pub fn to_bytes(&self, sequence: u32) -> [u8; FAULT_RECORD_SIZE] {
        let mut bytes = [0u8; FAULT_RECORD_SIZE];
        bytes[FAULT_REC_CONTEXT..FAULT_REC_CONTEXT + 2]
            .copy_from_slice(&u16::from(self.ctx).to_le_bytes());
        bytes[FAULT_REC_ASID..FAULT_REC_ASID + 2].copy_from_slice(&self.asid.to_le_bytes());
        bytes[FAULT_REC_ACCESS] = self.access;
        bytes[FAULT_REC_REASON] = self.reason;
        if let Some(slot) = self.segment_slot {
            bytes[FAULT_REC_FLAGS] = FAULT_FLAG_SEGMENT;
            bytes[FAULT_REC_SLOT] = slot;
        }
        if self.remote {
            bytes[FAULT_REC_FLAGS] |= FAULT_FLAG_REMOTE;
        }
        bytes[FAULT_REC_VA..FAULT_REC_VA + 8].copy_from_slice(&self.va.0.to_le_bytes());
        bytes[FAULT_REC_COMMAND_ID..FAULT_REC_COMMAND_ID + 8]
            .copy_from_slice(&self.command_id.to_le_bytes());
        bytes[FAULT_REC_SEQUENCE..FAULT_REC_SEQUENCE + 4].copy_from_slice(&sequence.to_le_bytes());
        bytes
    }

    /// Parses a record (for drivers and tests): the record and its sequence.
    pub fn from_bytes(bytes: &[u8; FAULT_RECORD_SIZE]) -> (Self, u32) {
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u64_at = |o: usize| {
            let mut field = [0u8; 8];
            field.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(field)
        };
        let mut sequence = [0u8; 4];
        sequence.copy_from_slice(&bytes[FAULT_REC_SEQUENCE..FAULT_REC_SEQUENCE + 4]);
        (
            Self {
                // CAST: the device writes context numbers below 64.
                ctx: u16_at(FAULT_REC_CONTEXT) as u8,
                asid: u16_at(FAULT_REC_ASID),
                access: bytes[FAULT_REC_ACCESS],
                reason: bytes[FAULT_REC_REASON],
                va: VirtAddr(u64_at(FAULT_REC_VA)),
                command_id: u64_at(FAULT_REC_COMMAND_ID),
                segment_slot: (bytes[FAULT_REC_FLAGS] & FAULT_FLAG_SEGMENT != 0)
                    .then_some(bytes[FAULT_REC_SLOT]),
                remote: bytes[FAULT_REC_FLAGS] & FAULT_FLAG_REMOTE != 0,
            },
            u32::from_le_bytes(sequence),
        )
    }
}

/// A validated fault ring location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRingConfig {
    /// Guest-physical base.
    pub base: GuestAddress,
    /// Records.
    pub size: u32,
}

impl FaultRingConfig {
    /// Checks `REG_FAULT_BASE`/`REG_FAULT_SIZE`: `Ok(None)` for size 0 (no ring), an error
    /// for a size that is not a power of two in 8..=4096, an unaligned base, or a ring not
    /// entirely in guest RAM.
    pub fn validate(base: u64, size: u32, dma: &Dma<'_>) -> Result<Option<Self>, ErrorCode> {
        if size == 0 {
            return Ok(None);
        }
        let bad = ErrorCode::FaultRingConfig;
        if !size.is_power_of_two()
            || !(FAULT_RING_MIN_SIZE..=FAULT_RING_MAX_SIZE).contains(&size)
            || base % FAULT_RING_ALIGN != 0
        {
            return Err(bad);
        }
        // CAST: size <= 4096, so the ring is at most 128 KiB.
        let bytes = size as usize * FAULT_RECORD_SIZE;
        dma.admit(GuestAddress(base), bytes, true)
            .map_err(|_| bad)?;
        Ok(Some(Self {
            base: GuestAddress(base),
            size,
        }))
    }

    fn slot(&self, index: u32) -> GuestAddress {
        // CAST: the ring lies in RAM (validated), so base + slot offset does not wrap.
        let slot = u64::from(index & (self.size - 1)) * FAULT_RECORD_SIZE as u64;
        GuestAddress(self.base.0 + slot)
    }
}

/// What became of a posted record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// Written at this free-running index.
    Written(u32),
    /// The ring is full: the record waits for `REG_FAULT_TAIL` to move.
    Queued,
    /// No fault ring is configured.
    NoRing,
}

/// The device side of the fault ring.
#[derive(Debug, Default)]
pub struct FaultRing {
    config: Option<FaultRingConfig>,
    head: u32,
    tail: u32,
    /// Records waiting for room, oldest first.
    waiting: VecDeque<FaultRecord>,
}

impl FaultRing {
    /// Takes a new configuration (at device enable): indices restart at 0, waiting records
    /// are dropped.
    pub fn configure(&mut self, config: Option<FaultRingConfig>) {
        *self = Self {
            config,
            ..Self::default()
        };
    }

    /// The producer index (`REG_FAULT_HEAD`).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The consumer index the driver last wrote.
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Records waiting for room.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn has_room(&self, config: &FaultRingConfig) -> bool {
        self.head.wrapping_sub(self.tail) < config.size
    }

    /// Posts a record: written now if the ring has room and nothing waits before it.
    pub fn post(&mut self, record: FaultRecord, dma: &Dma<'_>) -> Result<Posted, DmaError> {
        let Some(config) = self.config else {
            return Ok(Posted::NoRing);
        };
        if !self.waiting.is_empty() || !self.has_room(&config) {
            self.waiting.push_back(record);
            return Ok(Posted::Queued);
        }
        self.write(&config, &record, dma).map(Posted::Written)
    }

    /// Writes `record` at the head: body first, then the sequence word with release ordering.
    fn write(
        &mut self,
        config: &FaultRingConfig,
        record: &FaultRecord,
        dma: &Dma<'_>,
    ) -> Result<u32, DmaError> {
        let index = self.head;
        let slot = config.slot(index);
        let bytes = record.to_bytes(0);
        dma.write(slot, &bytes[..FAULT_REC_SEQUENCE])?;
        dma.write(
            GuestAddress(slot.0 + FAULT_REC_SEQUENCE as u64 + 4),
            &bytes[FAULT_REC_SEQUENCE + 4..],
        )?;
        dma.store_u32_release(
            GuestAddress(slot.0 + FAULT_REC_SEQUENCE as u64),
            index.wrapping_add(1),
        )?;
        self.head = index.wrapping_add(1);
        Ok(index)
    }

    /// The driver wrote `REG_FAULT_TAIL`. The tail may only move forward, up to the head.
    pub fn set_tail(&mut self, tail: u32) -> Result<(), ErrorCode> {
        if tail.wrapping_sub(self.tail) > self.head.wrapping_sub(self.tail) {
            return Err(ErrorCode::FaultTail);
        }
        self.tail = tail;
        Ok(())
    }

    /// Writes waiting records while there is room; returns (context, index) of each written.
    pub fn drain(&mut self, dma: &Dma<'_>) -> Result<Vec<(FaultRecord, u32)>, DmaError> {
        let mut written = Vec::new();
        let Some(config) = self.config else {
            return Ok(written);
        };
        while self.has_room(&config) {
            let Some(record) = self.waiting.front().copied() else {
                break;
            };
            let index = self.write(&config, &record, dma)?;
            self.waiting.pop_front();
            written.push((record, index));
        }
        Ok(written)
    }

    /// Drops the waiting record of `ctx`, if any (its fault was resolved or aborted). Remote
    /// fault records name the exporting context but do not stall it: they stay.
    pub fn cancel(&mut self, ctx: u8) {
        self.waiting
            .retain(|record| record.ctx != ctx || record.remote);
    }
}

/// Every named value of this module, for the specification drift test.
pub const SPEC_CONSTANTS: [(&str, u64); 20] = [
    ("FAULT_FLAG_REMOTE", FAULT_FLAG_REMOTE as u64),
    ("FAULT_RECORD_SIZE", FAULT_RECORD_SIZE as u64),
    ("FAULT_REC_FLAGS", FAULT_REC_FLAGS as u64),
    ("FAULT_REC_SLOT", FAULT_REC_SLOT as u64),
    ("FAULT_FLAG_SEGMENT", FAULT_FLAG_SEGMENT as u64),
    ("FAULT_REC_CONTEXT", FAULT_REC_CONTEXT as u64),
    ("FAULT_REC_ASID", FAULT_REC_ASID as u64),
    ("FAULT_REC_ACCESS", FAULT_REC_ACCESS as u64),
    ("FAULT_REC_REASON", FAULT_REC_REASON as u64),
    ("FAULT_REC_VA", FAULT_REC_VA as u64),
    ("FAULT_REC_COMMAND_ID", FAULT_REC_COMMAND_ID as u64),
    ("FAULT_REC_SEQUENCE", FAULT_REC_SEQUENCE as u64),
    ("FAULT_ACCESS_READ", FAULT_ACCESS_READ as u64),
    ("FAULT_ACCESS_WRITE", FAULT_ACCESS_WRITE as u64),
    ("FAULT_REASON_MISS", FAULT_REASON_MISS as u64),
    ("FAULT_REASON_PERMISSION", FAULT_REASON_PERMISSION as u64),
    ("FAULT_RING_MIN_SIZE", FAULT_RING_MIN_SIZE as u64),
    ("FAULT_RING_MAX_SIZE", FAULT_RING_MAX_SIZE as u64),
    ("FAULT_RING_ALIGN", FAULT_RING_ALIGN),
    (
        "FAULT_ACCESS_READ_WRITE",
        (FAULT_ACCESS_READ | FAULT_ACCESS_WRITE) as u64,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dma::GuestRam;
    use crate::inject::{DmaPurpose, NoFaults};

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x20000)]).expect("anonymous memory")
    }

    fn record(ctx: u8, va: u64) -> FaultRecord {
        FaultRecord {
            ctx,
            asid: 7,
            access: FAULT_ACCESS_WRITE,
            reason: FAULT_REASON_MISS,
            va: VirtAddr(va),
            command_id: 99,
            segment_slot: (ctx % 2 == 1).then_some(ctx % 8),
            remote: ctx == 2,
        }
    }

    fn read_slot(mem: &GuestRam, base: u64, slot: u64) -> (FaultRecord, u32) {
        let dma = Dma::new(mem, &NoFaults, DmaPurpose::FaultRecord);
        let mut bytes = [0u8; FAULT_RECORD_SIZE];
        dma.read(GuestAddress(base + slot * 32), &mut bytes)
            .expect("inside");
        FaultRecord::from_bytes(&bytes)
    }

    #[test]
    fn configurations_are_validated() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::FaultRecord);
        assert_eq!(FaultRingConfig::validate(0x1000, 0, &dma), Ok(None));
        assert!(FaultRingConfig::validate(0x1000, 8, &dma).is_ok_and(|c| c.is_some()));
        for (base, size) in [
            (0x1000, 4),
            (0x1000, 12),
            (0x1000, 8192),
            (0x1800, 8),
            (0x1f000, 256),
        ] {
            assert_eq!(
                FaultRingConfig::validate(base, size, &dma),
                Err(ErrorCode::FaultRingConfig),
                "base {base:#x} size {size}"
            );
        }
    }

    #[test]
    fn records_are_written_in_order_with_sequence_last_and_wait_when_full() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::FaultRecord);
        let mut ring = FaultRing::default();
        ring.configure(FaultRingConfig::validate(0x2000, 8, &dma).expect("valid"));
        for i in 0..8 {
            assert_eq!(
                ring.post(record(i, u64::from(i) << 12), &dma),
                Ok(Posted::Written(u32::from(i)))
            );
        }
        assert_eq!(ring.post(record(8, 0x8000), &dma), Ok(Posted::Queued));
        assert_eq!(ring.post(record(9, 0x9000), &dma), Ok(Posted::Queued));
        assert_eq!(ring.head(), 8);
        let (first, sequence) = read_slot(&mem, 0x2000, 0);
        assert_eq!((first, sequence), (record(0, 0), 1));

        ring.set_tail(1).expect("forward");
        let written = ring.drain(&dma).expect("dma");
        assert_eq!(written, vec![(record(8, 0x8000), 8)]);
        assert_eq!(read_slot(&mem, 0x2000, 0), (record(8, 0x8000), 9));
        assert_eq!(ring.waiting(), 1);
        ring.cancel(9);
        assert_eq!(ring.waiting(), 0);
    }

    #[test]
    fn the_tail_only_moves_forward_up_to_the_head() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::FaultRecord);
        let mut ring = FaultRing::default();
        ring.configure(FaultRingConfig::validate(0x2000, 8, &dma).expect("valid"));
        ring.post(record(0, 0), &dma).expect("dma");
        ring.post(record(1, 0), &dma).expect("dma");
        assert_eq!(ring.set_tail(3), Err(ErrorCode::FaultTail));
        ring.set_tail(2).expect("up to head");
        assert_eq!(ring.set_tail(1), Err(ErrorCode::FaultTail), "backwards");
        assert_eq!(ring.tail(), 2);
    }

    #[test]
    fn without_a_ring_nothing_is_written() {
        let mem = ram();
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::FaultRecord);
        let mut ring = FaultRing::default();
        assert_eq!(ring.post(record(0, 0), &dma), Ok(Posted::NoRing));
        assert_eq!(ring.drain(&dma), Ok(Vec::new()));
    }
}
