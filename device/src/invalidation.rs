//! The invalidation queue: a ring of 32-byte descriptors in guest memory the driver produces
//! (`REG_INVQ_TAIL`, whose write is the doorbell) and the device consumes (`REG_INVQ_HEAD`),
//! with completion reported by writing the last completed descriptor's sequence number to a
//! u64 in guest memory (and to `REG_INVQ_DONE_SEQ`).
//!
//! Completion of a descriptor promises: every TLB entry it names is gone, and every access
//! that translated through one of them has finished. The engine keeps that promise by
//! executing descriptors under the TLB's write lock, which waits for every access (each holds
//! the read lock from lookup to end of data movement).

use vm_memory::GuestAddress;

use crate::addr::{VaRange, VirtAddr, PAGE_SIZE_4K};
use crate::engine::dma::Dma;
use crate::error_code::ErrorCode;
use crate::events::InvalidationKind;

/// Size of an invalidation descriptor.
pub const INVQ_DESC_SIZE: usize = 32;
/// Descriptor field offset: kind (u8, `INVQ_KIND_*`).
pub const INVQ_DESC_KIND: usize = 0;
/// Descriptor field offset: flags (u8).
pub const INVQ_DESC_FLAGS: usize = 1;
/// Descriptor field offset: ASID (u16).
pub const INVQ_DESC_ASID: usize = 2;
/// Descriptor field offset: reserved (u32), must be 0.
pub const INVQ_DESC_RESERVED: usize = 4;
/// Descriptor field offset: range start (u64), RANGE only.
pub const INVQ_DESC_START: usize = 8;
/// Descriptor field offset: range end, exclusive (u64), RANGE only.
pub const INVQ_DESC_END: usize = 16;
/// Descriptor field offset: sequence number (u64).
pub const INVQ_DESC_SEQ: usize = 24;
/// Kind: the entries of one ASID overlapping `[start, end)`.
pub const INVQ_KIND_RANGE: u8 = 1;
/// Kind: every entry of one ASID.
pub const INVQ_KIND_ASID: u8 = 2;
/// Kind: every entry.
pub const INVQ_KIND_GLOBAL: u8 = 3;
/// Flag: raise `VECTOR_INVALIDATION` when the descriptor completes.
pub const INVQ_FLAG_INTERRUPT: u8 = 1 << 0;
/// Smallest invalidation queue.
pub const INVQ_MIN_SIZE: u32 = 8;
/// Largest invalidation queue.
pub const INVQ_MAX_SIZE: u32 = 4096;
/// Alignment of the invalidation queue base.
pub const INVQ_ALIGN: u64 = 4096;
/// Alignment of the done word.
pub const INVQ_DONE_ALIGN: u64 = 8;

/// A checked invalidation descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidationDescriptor {
    /// What it removes.
    pub kind: InvalidationKind,
    /// Interrupt on completion.
    pub interrupt: bool,
    /// ASID (0 for GLOBAL).
    pub asid: u16,
    /// The range, for RANGE.
    pub range: Option<VaRange>,
    /// Sequence number.
    pub seq: u64,
}

impl InvalidationDescriptor {
    /// RANGE `[start, end)` of `asid` (`None` if not a non-empty 4 KiB aligned range).
    pub fn range(asid: u16, start: u64, end: u64, seq: u64) -> Option<Self> {
        let range = VaRange::new(VirtAddr(start), VirtAddr(end))?;
        let aligned =
            range.start().is_aligned(PAGE_SIZE_4K) && range.end().is_aligned(PAGE_SIZE_4K);
        aligned.then_some(Self {
            kind: InvalidationKind::Range,
            interrupt: false,
            asid,
            range: Some(range),
            seq,
        })
    }

    /// Every entry of `asid`.
    pub fn asid(asid: u16, seq: u64) -> Self {
        Self {
            kind: InvalidationKind::Asid,
            interrupt: false,
            asid,
            range: None,
            seq,
        }
    }

    /// Every entry.
    pub fn global(seq: u64) -> Self {
        Self {
            kind: InvalidationKind::Global,
            interrupt: false,
            asid: 0,
            range: None,
            seq,
        }
    }

    /// The same descriptor asking for an interrupt on completion.
    pub fn with_interrupt(self) -> Self {
        Self {
            interrupt: true,
            ..self
        }
    }

    /// The descriptor's bytes as the device reads them.
    pub fn to_bytes(&self) -> [u8; INVQ_DESC_SIZE] {
        let mut bytes = [0u8; INVQ_DESC_SIZE];
        bytes[INVQ_DESC_KIND] = match self.kind {
            InvalidationKind::Range => INVQ_KIND_RANGE,
            InvalidationKind::Asid => INVQ_KIND_ASID,
            InvalidationKind::Global => INVQ_KIND_GLOBAL,
        };
        bytes[INVQ_DESC_FLAGS] = if self.interrupt {
            INVQ_FLAG_INTERRUPT
        } else {
            0
        };
        bytes[INVQ_DESC_ASID..INVQ_DESC_ASID + 2].copy_from_slice(&self.asid.to_le_bytes());
        let (start, end) = self
            .range
            .map_or((0, 0), |range| (range.start().0, range.end().0));
        bytes[INVQ_DESC_START..INVQ_DESC_START + 8].copy_from_slice(&start.to_le_bytes());
        bytes[INVQ_DESC_END..INVQ_DESC_END + 8].copy_from_slice(&end.to_le_bytes());
        bytes[INVQ_DESC_SEQ..INVQ_DESC_SEQ + 8].copy_from_slice(&self.seq.to_le_bytes());
        bytes
    }

    /// Decodes and checks a descriptor; `last_seq` is the sequence number of the previous
    /// descriptor (0 before the first), which this one's must exceed.
    pub fn decode(bytes: &[u8; INVQ_DESC_SIZE], last_seq: u64) -> Result<Self, ErrorCode> {
        let u64_at = |o: usize| {
            let mut field = [0u8; 8];
            field.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(field)
        };
        let bad = ErrorCode::InvDescriptor;
        let flags = bytes[INVQ_DESC_FLAGS];
        let asid = u16::from_le_bytes([bytes[INVQ_DESC_ASID], bytes[INVQ_DESC_ASID + 1]]);
        let reserved_set = bytes[INVQ_DESC_RESERVED..INVQ_DESC_START]
            .iter()
            .any(|b| *b != 0);
        if flags & !INVQ_FLAG_INTERRUPT != 0 || reserved_set {
            return Err(bad);
        }
        let (start, end, seq) = (
            u64_at(INVQ_DESC_START),
            u64_at(INVQ_DESC_END),
            u64_at(INVQ_DESC_SEQ),
        );
        let descriptor = match bytes[INVQ_DESC_KIND] {
            INVQ_KIND_RANGE => Self::range(asid, start, end, seq).ok_or(bad)?,
            INVQ_KIND_ASID if start == 0 && end == 0 => Self::asid(asid, seq),
            INVQ_KIND_GLOBAL if start == 0 && end == 0 && asid == 0 => Self::global(seq),
            _ => return Err(bad),
        };
        if seq <= last_seq {
            return Err(ErrorCode::InvSequence);
        }
        Ok(Self {
            interrupt: flags & INVQ_FLAG_INTERRUPT != 0,
            ..descriptor
        })
    }
}

/// A validated invalidation queue location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvqConfig {
    /// Guest-physical base of the descriptor ring.
    pub base: GuestAddress,
    /// Descriptors.
    pub size: u32,
    /// Guest-physical address of the done word.
    pub done: GuestAddress,
}

impl InvqConfig {
    /// Checks the `REG_INVQ_*` configuration: `Ok(None)` for size 0 (no queue); an error for
    /// a size that is not a power of two in 8..=4096, a base not 4 KiB aligned, a done word not
    /// 8-byte aligned, or a ring or done word outside guest RAM.
    pub fn validate(
        base: u64,
        size: u32,
        done: u64,
        dma: &Dma<'_>,
    ) -> Result<Option<Self>, ErrorCode> {
        if size == 0 {
            return Ok(None);
        }
        let bad = ErrorCode::InvqConfig;
        if !size.is_power_of_two()
            || !(INVQ_MIN_SIZE..=INVQ_MAX_SIZE).contains(&size)
            || base % INVQ_ALIGN != 0
            || done % INVQ_DONE_ALIGN != 0
        {
            return Err(bad);
        }
        // CAST: size <= 4096, so the ring is at most 128 KiB.
        let bytes = size as usize * INVQ_DESC_SIZE;
        dma.admit(GuestAddress(base), bytes, false)
            .map_err(|_| bad)?;
        dma.admit(GuestAddress(done), 8, true).map_err(|_| bad)?;
        Ok(Some(Self {
            base: GuestAddress(base),
            size,
            done: GuestAddress(done),
        }))
    }

    /// Address of descriptor `index` (free-running).
    pub fn slot(&self, index: u32) -> GuestAddress {
        // CAST: the ring lies in RAM (validated), so base + slot offset does not wrap.
        let slot = u64::from(index & (self.size - 1)) * INVQ_DESC_SIZE as u64;
        GuestAddress(self.base.0 + slot)
    }
}

/// The device side of the invalidation queue.
#[derive(Debug, Default)]
pub struct InvalidationQueue {
    config: Option<InvqConfig>,
    head: u32,
    tail: u32,
    done_seq: u64,
}

impl InvalidationQueue {
    /// Takes a new configuration (at device enable): indices and the done sequence restart
    /// at 0.
    pub fn configure(&mut self, config: Option<InvqConfig>) {
        *self = Self {
            config,
            ..Self::default()
        };
    }

    /// The configuration.
    pub fn config(&self) -> Option<InvqConfig> {
        self.config
    }

    /// The consumer index (`REG_INVQ_HEAD`).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The producer index the driver last wrote.
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Sequence number of the last completed descriptor (`REG_INVQ_DONE_SEQ`).
    pub fn done_seq(&self) -> u64 {
        self.done_seq
    }

    /// Descriptors submitted and not yet consumed.
    pub fn pending(&self) -> u32 {
        self.tail.wrapping_sub(self.head)
    }

    /// The driver wrote `REG_INVQ_TAIL`: it may only move forward, at most `size` ahead of
    /// the head, and only with a queue configured.
    pub fn set_tail(&mut self, tail: u32) -> Result<(), ErrorCode> {
        let config = self.config.ok_or(ErrorCode::InvqTail)?;
        let ahead = tail.wrapping_sub(self.head);
        if ahead > config.size || ahead < self.pending() {
            return Err(ErrorCode::InvqTail);
        }
        self.tail = tail;
        Ok(())
    }

    /// Consumes the descriptor at the head, which completed with sequence number `seq`.
    pub fn complete_head(&mut self, seq: u64) {
        self.head = self.head.wrapping_add(1);
        self.done_seq = seq;
    }
}

/// Every named value of this module, for the specification drift test.
pub const SPEC_CONSTANTS: [(&str, u64); 17] = [
    ("INVQ_DESC_SIZE", INVQ_DESC_SIZE as u64),
    ("INVQ_DESC_KIND", INVQ_DESC_KIND as u64),
    ("INVQ_DESC_FLAGS", INVQ_DESC_FLAGS as u64),
    ("INVQ_DESC_ASID", INVQ_DESC_ASID as u64),
    ("INVQ_DESC_RESERVED", INVQ_DESC_RESERVED as u64),
    ("INVQ_DESC_START", INVQ_DESC_START as u64),
    ("INVQ_DESC_END", INVQ_DESC_END as u64),
    ("INVQ_DESC_SEQ", INVQ_DESC_SEQ as u64),
    ("INVQ_KIND_RANGE", INVQ_KIND_RANGE as u64),
    ("INVQ_KIND_ASID", INVQ_KIND_ASID as u64),
    ("INVQ_KIND_GLOBAL", INVQ_KIND_GLOBAL as u64),
    ("INVQ_FLAG_INTERRUPT", INVQ_FLAG_INTERRUPT as u64),
    ("INVQ_MIN_SIZE", INVQ_MIN_SIZE as u64),
    ("INVQ_MAX_SIZE", INVQ_MAX_SIZE as u64),
    ("INVQ_ALIGN", INVQ_ALIGN),
    ("INVQ_DONE_ALIGN", INVQ_DONE_ALIGN),
    ("INVQ_SEQ_FIRST_MIN", 1),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dma::GuestRam;
    use crate::inject::{DmaPurpose, NoFaults};

    #[test]
    fn descriptors_round_trip_through_bytes() {
        for descriptor in [
            InvalidationDescriptor::range(3, 0x1000, 0x5000, 7).expect("valid"),
            InvalidationDescriptor::asid(4, 8).with_interrupt(),
            InvalidationDescriptor::global(9),
        ] {
            assert_eq!(
                InvalidationDescriptor::decode(&descriptor.to_bytes(), 6),
                Ok(descriptor)
            );
        }
    }

    #[test]
    fn malformed_descriptors_are_rejected() {
        let good = InvalidationDescriptor::range(3, 0x1000, 0x5000, 7)
            .expect("valid")
            .to_bytes();
        let mut cases = Vec::new();
        for (offset, value) in [
            (INVQ_DESC_KIND, 0u8),
            (INVQ_DESC_KIND, 4),
            (INVQ_DESC_FLAGS, 2),
            (INVQ_DESC_RESERVED + 3, 1),
            (INVQ_DESC_START, 1),
            (INVQ_DESC_END, 0x10),
        ] {
            let mut bytes = good;
            bytes[offset] = value;
            cases.push(bytes);
        }
        let mut reversed = good;
        reversed[INVQ_DESC_START + 1] = 0x60;
        cases.push(reversed);
        let mut asid_with_range = InvalidationDescriptor::asid(1, 7).to_bytes();
        asid_with_range[INVQ_DESC_END + 1] = 0x10;
        cases.push(asid_with_range);
        let mut global_with_asid = InvalidationDescriptor::global(7).to_bytes();
        global_with_asid[INVQ_DESC_ASID] = 1;
        cases.push(global_with_asid);
        for bytes in cases {
            assert_eq!(
                InvalidationDescriptor::decode(&bytes, 0),
                Err(ErrorCode::InvDescriptor),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn sequence_numbers_must_increase() {
        let bytes = InvalidationDescriptor::global(5).to_bytes();
        assert!(InvalidationDescriptor::decode(&bytes, 4).is_ok());
        assert_eq!(
            InvalidationDescriptor::decode(&bytes, 5),
            Err(ErrorCode::InvSequence)
        );
        assert_eq!(
            InvalidationDescriptor::decode(&InvalidationDescriptor::global(0).to_bytes(), 0),
            Err(ErrorCode::InvSequence),
            "the first sequence number is at least 1"
        );
    }

    #[test]
    fn configurations_are_validated() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x20000)]).expect("memory");
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::Invalidation);
        assert_eq!(InvqConfig::validate(0x1000, 0, 0, &dma), Ok(None));
        assert!(InvqConfig::validate(0x1000, 16, 0x8, &dma).is_ok_and(|c| c.is_some()));
        for (base, size, done) in [
            (0x1000, 6, 0),
            (0x1000, 8192, 0),
            (0x1040, 8, 0),
            (0x1000, 8, 4),
            (0x1000, 8, 0x20000),
            (0x1f000, 256, 0),
        ] {
            assert_eq!(
                InvqConfig::validate(base, size, done, &dma),
                Err(ErrorCode::InvqConfig),
                "{base:#x} {size} {done:#x}"
            );
        }
    }

    #[test]
    fn the_tail_moves_forward_at_most_size_ahead_of_the_head() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x20000)]).expect("memory");
        let dma = Dma::new(&mem, &NoFaults, DmaPurpose::Invalidation);
        let mut queue = InvalidationQueue::default();
        assert_eq!(queue.set_tail(1), Err(ErrorCode::InvqTail), "no queue");
        queue.configure(InvqConfig::validate(0x1000, 8, 0, &dma).expect("valid"));
        assert_eq!(queue.set_tail(9), Err(ErrorCode::InvqTail));
        queue.set_tail(8).expect("full");
        assert_eq!(queue.set_tail(7), Err(ErrorCode::InvqTail), "backwards");
        queue.complete_head(3);
        assert_eq!((queue.head(), queue.pending(), queue.done_seq()), (1, 7, 3));
        queue.set_tail(9).expect("one more");
    }
}
