//! MSI-X: the capability's configuration registers, and the table and pending-bit array (PBA)
//! the function exposes in a memory BAR.
//!
//! Semantics follow the PCI Local Bus Specification 3.0, section 6.8.2:
//! - every vector starts masked after reset, with a zero message;
//! - a vector fires only while MSI-X is enabled; while the vector or the whole function is
//!   masked the event is remembered in the vector's pending bit instead, and the message is
//!   sent (and the bit cleared) once both masks are clear;
//! - with MSI-X disabled, or bus mastering off (section 6.2.2: a function without Bus Master
//!   Enable may not issue memory writes, and an MSI-X message is one), events are dropped;
//! - the PBA is read-only; table entries are accessed as aligned dwords or qwords.
//!
//! Pending bits set before MSI-X was disabled survive the disable and are delivered once the
//! vector is deliverable again: the specification leaves this open, and losing an interrupt
//! is the worse failure.
//!
//! The VMM learns of every change in a vector's deliverability or message through
//! [`MsiSink::configure`], so it can keep its interrupt routes ahead of [`MsiSink::trigger`].

use std::fmt;
use std::sync::Arc;

use thiserror::Error;
use tracing::debug;

use crate::interrupt::{MsiMessage, MsiSink};
use crate::mmio::{self, MmioError, MmioWidth};

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask (every vector masked, whatever its own mask bit).
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control: table size minus one.
pub const MSIX_CONTROL_TABLE_SIZE_MASK: u16 = 0x07ff;
/// Table offset / PBA offset registers: BAR indicator in bits 2:0.
pub const MSIX_BIR_MASK: u32 = 0b111;
/// Most vectors a function may have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Size of one table entry in bytes.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector control: the vector is masked.
pub const MSIX_VECTOR_CONTROL_MASKED: u32 = 1;

/// Dwords of a table entry: message address low, message address high, data, vector control.
const ENTRY_DWORDS: usize = 4;
/// Bits the guest may change in each entry dword. The address's bits 1:0 are reserved (the
/// address is dword aligned); the vector control's bits 31:1 are reserved.
const ENTRY_WRITABLE: [u32; ENTRY_DWORDS] = [
    0xffff_fffc,
    0xffff_ffff,
    0xffff_ffff,
    MSIX_VECTOR_CONTROL_MASKED,
];
/// An entry after reset: zero message, masked.
const ENTRY_RESET: [u32; ENTRY_DWORDS] = [0, 0, 0, MSIX_VECTOR_CONTROL_MASKED];
/// Bytes per PBA qword.
const PBA_QWORD_BYTES: u64 = 8;

/// Errors of MSI-X table and PBA accesses and of raising vectors.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MsixError {
    /// The access has a width or alignment the structures do not accept.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The access falls outside the table.
    #[error(
        "MSI-X table access of {len} bytes at {offset:#x} is outside the {table_bytes}-byte table"
    )]
    TableOutOfRange {
        /// Offset of the access within the table.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
        /// Size of the table in bytes.
        table_bytes: u64,
    },
    /// The access falls outside the PBA.
    #[error("MSI-X PBA access of {len} bytes at {offset:#x} is outside the {pba_bytes}-byte PBA")]
    PbaOutOfRange {
        /// Offset of the access within the PBA.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
        /// Size of the PBA in bytes.
        pba_bytes: u64,
    },
    /// The guest wrote to the read-only PBA.
    #[error("MSI-X PBA write of {len} bytes at {offset:#x} dropped: the PBA is read-only")]
    PbaReadOnly {
        /// Offset of the access within the PBA.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
    /// The device raised a vector the table does not have.
    #[error("MSI-X vector {vector} does not exist; the table has {vectors}")]
    VectorOutOfRange {
        /// The vector raised.
        vector: u16,
        /// The number of vectors.
        vectors: u16,
    },
    /// A table with no vectors or more than 2048.
    #[error("An MSI-X table cannot have {vectors} vectors")]
    BadVectorCount {
        /// The number of vectors asked for.
        vectors: u16,
    },
}

/// Where the MSI-X table and PBA live; encodes the capability's configuration registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Number of vectors, 1..=2048.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table within its BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA within its BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixCapability {
    /// The capability's three registers as placed in configuration space (bits 15:0 of the
    /// first, ID and next pointer, are filled in by the configuration space).
    pub fn registers(&self) -> [u32; 3] {
        let table_size = self.vectors.saturating_sub(1) & MSIX_CONTROL_TABLE_SIZE_MASK;
        [
            u32::from(table_size) << 16,
            (self.table_offset & !MSIX_BIR_MASK) | (u32::from(self.table_bar) & MSIX_BIR_MASK),
            (self.pba_offset & !MSIX_BIR_MASK) | (u32::from(self.pba_bar) & MSIX_BIR_MASK),
        ]
    }

    /// The bits the guest may change: message control's enable and function mask only.
    pub fn writable_bits() -> [u32; 3] {
        [
            u32::from(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK) << 16,
            0,
            0,
        ]
    }

    /// Extracts message control from the capability's first register.
    pub fn message_control(first_register: u32) -> u16 {
        // CAST: message control is the high half of the first register.
        (first_register >> 16) as u16
    }
}

/// What became of a raised vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The message was handed to the sink.
    Sent,
    /// The vector or the function is masked; the pending bit is set.
    Pending,
    /// MSI-X is disabled or bus mastering is off; nothing was recorded.
    Dropped,
}

/// MSI-X table, PBA and enable state of one function.
pub struct Msix {
    /// One entry per vector, as the dwords the guest reads.
    entries: Vec<[u32; ENTRY_DWORDS]>,
    /// Pending bits, 64 vectors per qword.
    pending: Vec<u64>,
    /// Message control's MSI-X enable.
    enabled: bool,
    /// Message control's function mask.
    function_masked: bool,
    /// The command register's bus master enable.
    bus_master: bool,
    /// What the sink was last told per vector, so it hears of changes only.
    announced: Vec<Option<MsiMessage>>,
    /// Where messages go.
    sink: Arc<dyn MsiSink>,
}

impl fmt::Debug for Msix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msix")
            .field("entries", &self.entries)
            .field("pending", &self.pending)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .field("bus_master", &self.bus_master)
            .finish_non_exhaustive()
    }
}

impl Msix {
    /// A table of `vectors` entries in reset state (all masked, MSI-X disabled).
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::BadVectorCount { vectors });
        }
        let count = usize::from(vectors);
        Ok(Self {
            entries: vec![ENTRY_RESET; count],
            pending: vec![0; count.div_ceil(64)],
            enabled: false,
            function_masked: false,
            bus_master: false,
            announced: vec![None; count],
            sink,
        })
    }

    /// Number of vectors in the table.
    pub fn vectors(&self) -> u16 {
        // CAST: `new` bounds the count by MSIX_MAX_VECTORS.
        self.entries.len() as u16
    }

    /// Size of the table in bytes.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.vectors()) * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes.
    pub fn pba_bytes(&self) -> u64 {
        // CAST: at most 32 qwords.
        self.pending.len() as u64 * PBA_QWORD_BYTES
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the whole function is masked.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector`'s pending bit is set (false for a vector that does not exist).
    pub fn is_pending(&self, vector: u16) -> bool {
        let (qword, bit) = pending_position(vector);
        self.pending.get(qword).is_some_and(|q| q & bit != 0)
    }

    /// Takes the guest's new message control (enable and function mask bits).
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & MSIX_CONTROL_ENABLE != 0;
        let function_masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) != (self.enabled, self.function_masked) {
            self.enabled = enabled;
            self.function_masked = function_masked;
            self.sync_all();
        }
    }

    /// Takes the command register's bus master enable.
    pub fn set_bus_master(&mut self, bus_master: bool) {
        if bus_master != self.bus_master {
            self.bus_master = bus_master;
            self.sync_all();
        }
    }

    /// Returns to reset state: entries zeroed and masked, no pending bits, MSI-X disabled.
    pub fn reset(&mut self) {
        self.entries.fill(ENTRY_RESET);
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
        self.bus_master = false;
        self.sync_all();
    }

    /// The device signals `vector`: send it, remember it as pending, or drop it, as the
    /// enable and mask state say.
    pub fn raise(&mut self, vector: u16) -> Result<Delivery, MsixError> {
        let entry = self
            .entries
            .get(usize::from(vector))
            .ok_or(MsixError::VectorOutOfRange {
                vector,
                vectors: self.vectors(),
            })?;
        if !self.enabled || !self.bus_master {
            debug!(
                vector,
                "MSI-X vector dropped: MSI-X or bus mastering disabled"
            );
            return Ok(Delivery::Dropped);
        }
        if self.function_masked || entry[3] & MSIX_VECTOR_CONTROL_MASKED != 0 {
            let (qword, bit) = pending_position(vector);
            self.pending[qword] |= bit;
            return Ok(Delivery::Pending);
        }
        self.sink.trigger(vector);
        Ok(Delivery::Sent)
    }

    /// The guest reads the table at `offset`; `data` gets all ones if the access is refused.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        let result = self
            .locate_table(offset, data.len())
            .map(|(vector, dword, width)| {
                let entry = &self.entries[vector];
                match width {
                    MmioWidth::Dword => [entry[dword], 0],
                    MmioWidth::Qword => [entry[dword], entry[dword + 1]],
                }
            });
        store_or_all_ones(data, result)
    }

    /// The guest writes the table at `offset`; a refused access changes nothing.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        let (vector, first, width) = self.locate_table(offset, data.len())?;
        let values = mmio::load_dwords(data);
        let entry = &mut self.entries[vector];
        for (i, value) in values.iter().take(width.dwords()).enumerate() {
            let dword = first + i;
            let writable = ENTRY_WRITABLE[dword];
            entry[dword] = (entry[dword] & !writable) | (value & writable);
        }
        // CAST: vector < entries.len() <= MSIX_MAX_VECTORS.
        self.sync(vector as u16);
        Ok(())
    }

    /// The guest reads the PBA at `offset`; `data` gets all ones if the access is refused.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        let result = self.locate_pba(offset, data.len()).map(|(qword, width)| {
            let value = self.pending[qword];
            // CAST: splitting a pending qword into dwords.
            let (low, high) = (value as u32, (value >> 32) as u32);
            match width {
                MmioWidth::Qword => [low, high],
                MmioWidth::Dword if offset % PBA_QWORD_BYTES == 0 => [low, 0],
                MmioWidth::Dword => [high, 0],
            }
        });
        store_or_all_ones(data, result)
    }

    /// The guest writes the PBA: always refused, the PBA is read-only.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        self.locate_pba(offset, data.len())?;
        Err(MsixError::PbaReadOnly {
            offset,
            len: data.len(),
        })
    }

    /// Checks a table access; returns (vector, first dword, width).
    fn locate_table(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<(usize, usize, MmioWidth), MsixError> {
        let width = MmioWidth::decode(offset, len)?;
        let table_bytes = self.table_bytes();
        let out_of_range = MsixError::TableOutOfRange {
            offset,
            len,
            table_bytes,
        };
        if offset
            .checked_add(width.bytes())
            .is_none_or(|end| end > table_bytes)
        {
            return Err(out_of_range);
        }
        let vector = usize::try_from(offset / MSIX_ENTRY_SIZE).map_err(|_| out_of_range)?;
        // CAST: a value below 4.
        let dword = (offset % MSIX_ENTRY_SIZE / 4) as usize;
        Ok((vector, dword, width))
    }

    /// Checks a PBA access; returns (qword index, width).
    fn locate_pba(&self, offset: u64, len: usize) -> Result<(usize, MmioWidth), MsixError> {
        let width = MmioWidth::decode(offset, len)?;
        let pba_bytes = self.pba_bytes();
        let out_of_range = MsixError::PbaOutOfRange {
            offset,
            len,
            pba_bytes,
        };
        if offset
            .checked_add(width.bytes())
            .is_none_or(|end| end > pba_bytes)
        {
            return Err(out_of_range);
        }
        let qword = usize::try_from(offset / PBA_QWORD_BYTES).map_err(|_| out_of_range)?;
        Ok((qword, width))
    }

    /// Brings every vector's announced route and pending delivery up to date.
    fn sync_all(&mut self) {
        for vector in 0..self.vectors() {
            self.sync(vector);
        }
    }

    /// Tells the sink if `vector`'s deliverability or message changed, then delivers its
    /// pending event if it is deliverable now. Configure comes first: the sink may only be
    /// triggered for a vector whose last configuration carried a message.
    fn sync(&mut self, vector: u16) {
        let index = usize::from(vector);
        let entry = self.entries[index];
        let deliverable = self.enabled
            && self.bus_master
            && !self.function_masked
            && entry[3] & MSIX_VECTOR_CONTROL_MASKED == 0;
        let wanted = deliverable.then(|| MsiMessage {
            address: u64::from(entry[0]) | (u64::from(entry[1]) << 32),
            data: entry[2],
        });
        if self.announced[index] != wanted {
            self.announced[index] = wanted;
            self.sink.configure(vector, wanted);
        }
        let (qword, bit) = pending_position(vector);
        if deliverable && self.pending[qword] & bit != 0 {
            self.pending[qword] &= !bit;
            self.sink.trigger(vector);
        }
    }
}

/// The PBA qword and bit of `vector`.
fn pending_position(vector: u16) -> (usize, u64) {
    (usize::from(vector / 64), 1 << (vector % 64))
}

/// Stores a read's result, or all ones if it was refused.
fn store_or_all_ones(
    data: &mut [u8],
    result: Result<[u32; 2], MsixError>,
) -> Result<(), MsixError> {
    match result {
        Ok(dwords) => {
            mmio::store_dwords(data, dwords);
            Ok(())
        }
        Err(error) => {
            mmio::fill_all_ones(data);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::interrupt::testing::{RecordingSink, SinkEvent};

    const ADDRESS: u64 = 0xfee0_1000;

    fn msix(vectors: u16) -> (Msix, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::default());
        let msix = Msix::new(vectors, sink.clone()).expect("valid vector count");
        (msix, sink)
    }

    fn read32(msix: &Msix, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        msix.read_table(offset, &mut data).expect("valid access");
        u32::from_le_bytes(data)
    }

    fn write32(msix: &mut Msix, offset: u64, value: u32) {
        msix.write_table(offset, &value.to_le_bytes())
            .expect("valid access");
    }

    /// Programs `vector`'s message (address `ADDRESS`, data `0x40 + vector`), left masked.
    fn program(msix: &mut Msix, vector: u16) {
        let base = u64::from(vector) * MSIX_ENTRY_SIZE;
        msix.write_table(base, &ADDRESS.to_le_bytes())
            .expect("qword write");
        write32(msix, base + 8, 0x40 + u32::from(vector));
    }

    fn unmask(msix: &mut Msix, vector: u16) {
        write32(msix, u64::from(vector) * MSIX_ENTRY_SIZE + 12, 0);
    }

    fn mask(msix: &mut Msix, vector: u16) {
        write32(
            msix,
            u64::from(vector) * MSIX_ENTRY_SIZE + 12,
            MSIX_VECTOR_CONTROL_MASKED,
        );
    }

    /// MSI-X enabled, bus mastering on, nothing masked at function level.
    fn enable(msix: &mut Msix) {
        msix.set_bus_master(true);
        msix.set_control(MSIX_CONTROL_ENABLE);
    }

    fn message(vector: u16) -> MsiMessage {
        MsiMessage {
            address: ADDRESS,
            data: 0x40 + u32::from(vector),
        }
    }

    #[test]
    fn capability_registers_encode_size_offsets_and_bars() {
        let capability = MsixCapability {
            vectors: 4,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        };
        assert_eq!(capability.registers(), [0x0003_0000, 0x2000, 0x3000]);
        assert_eq!(MsixCapability::writable_bits()[0], 0xc000_0000);
        assert_eq!(MsixCapability::message_control(0x8003_0011), 0x8003);
    }

    #[test]
    fn vector_counts_outside_1_to_2048_are_refused() {
        let sink: Arc<dyn MsiSink> = Arc::new(RecordingSink::default());
        for vectors in [0, 2049] {
            assert!(matches!(
                Msix::new(vectors, sink.clone()),
                Err(MsixError::BadVectorCount { .. })
            ));
        }
    }

    #[test]
    fn vectors_start_masked_with_zero_message() {
        let (msix, _) = msix(4);
        for vector in 0..4 {
            let base = vector * MSIX_ENTRY_SIZE;
            assert_eq!(read32(&msix, base), 0);
            assert_eq!(read32(&msix, base + 4), 0);
            assert_eq!(read32(&msix, base + 8), 0);
            assert_eq!(read32(&msix, base + 12), MSIX_VECTOR_CONTROL_MASKED);
        }
    }

    #[test]
    fn table_entries_read_back_what_was_written_as_dwords_and_qwords() {
        let (mut msix, _) = msix(4);
        write32(&mut msix, 0x10, 0xfee0_0004);
        write32(&mut msix, 0x14, 0x1);
        write32(&mut msix, 0x18, 0x4021);
        let mut qword = [0u8; 8];
        msix.read_table(0x10, &mut qword).expect("qword read");
        assert_eq!(u64::from_le_bytes(qword), 0x1_fee0_0004);
        msix.write_table(0x18, &0x0000_0000_0000_4022u64.to_le_bytes())
            .expect("qword write of data and control");
        assert_eq!(read32(&msix, 0x18), 0x4022);
        assert_eq!(read32(&msix, 0x1c), 0, "unmasked by the qword write");
    }

    #[test]
    fn reserved_entry_bits_read_zero() {
        let (mut msix, _) = msix(1);
        write32(&mut msix, 0, 0xffff_ffff);
        write32(&mut msix, 12, 0xffff_ffff);
        assert_eq!(read32(&msix, 0), 0xffff_fffc);
        assert_eq!(read32(&msix, 12), MSIX_VECTOR_CONTROL_MASKED);
    }

    #[test]
    fn bad_table_accesses_read_all_ones_and_drop_writes() {
        let (mut msix, sink) = msix(4);
        let before = format!("{msix:?}");
        for (offset, len) in [(0, 1), (0, 2), (2, 4), (4, 8), (0x40, 4), (0x38, 16)] {
            let mut data = vec![0u8; len];
            assert!(msix.read_table(offset, &mut data).is_err());
            assert!(data.iter().all(|b| *b == 0xff), "offset {offset} len {len}");
            assert!(msix.write_table(offset, &data).is_err());
        }
        assert!(msix.read_table(u64::MAX - 3, &mut [0; 4]).is_err());
        assert_eq!(format!("{msix:?}"), before);
        assert!(sink.events().is_empty());
    }

    #[test]
    fn raising_an_enabled_unmasked_vector_sends_it() {
        let (mut msix, sink) = msix(4);
        program(&mut msix, 1);
        enable(&mut msix);
        unmask(&mut msix, 1);
        assert_eq!(msix.raise(1), Ok(Delivery::Sent));
        assert_eq!(
            sink.events(),
            vec![
                SinkEvent::Configure(1, Some(message(1))),
                SinkEvent::Trigger(1)
            ]
        );
    }

    #[test]
    fn raising_a_masked_vector_sets_pending_and_unmask_delivers_it() {
        let (mut msix, sink) = msix(4);
        program(&mut msix, 2);
        enable(&mut msix);
        assert_eq!(msix.raise(2), Ok(Delivery::Pending));
        assert!(msix.is_pending(2));
        let mut pba = [0u8; 8];
        msix.read_pba(0, &mut pba).expect("qword read");
        assert_eq!(u64::from_le_bytes(pba), 0b100);
        assert!(sink.events().is_empty());

        unmask(&mut msix, 2);
        assert!(!msix.is_pending(2));
        assert_eq!(
            sink.events(),
            vec![
                SinkEvent::Configure(2, Some(message(2))),
                SinkEvent::Trigger(2)
            ]
        );
    }

    #[test]
    fn function_mask_holds_every_vector_pending_until_cleared() {
        let (mut msix, sink) = msix(4);
        for vector in [0, 3] {
            program(&mut msix, vector);
            unmask(&mut msix, vector);
        }
        enable(&mut msix);
        sink.take();
        msix.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        assert_eq!(
            sink.take(),
            vec![SinkEvent::Configure(0, None), SinkEvent::Configure(3, None)]
        );
        assert_eq!(msix.raise(0), Ok(Delivery::Pending));
        assert_eq!(msix.raise(3), Ok(Delivery::Pending));
        assert!(sink.take().is_empty());

        msix.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(
            sink.take(),
            vec![
                SinkEvent::Configure(0, Some(message(0))),
                SinkEvent::Trigger(0),
                SinkEvent::Configure(3, Some(message(3))),
                SinkEvent::Trigger(3),
            ]
        );
        assert!(!msix.is_pending(0) && !msix.is_pending(3));
    }

    #[test]
    fn disabled_msix_drops_events_without_pending_bits() {
        let (mut msix, sink) = msix(4);
        program(&mut msix, 0);
        unmask(&mut msix, 0);
        msix.set_bus_master(true);
        assert_eq!(msix.raise(0), Ok(Delivery::Dropped));
        assert!(!msix.is_pending(0));
        msix.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(
            sink.events(),
            vec![SinkEvent::Configure(0, Some(message(0)))],
            "enabling routes the vector but sends nothing"
        );
    }

    #[test]
    fn bus_master_off_drops_events() {
        let (mut msix, sink) = msix(1);
        program(&mut msix, 0);
        unmask(&mut msix, 0);
        msix.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(msix.raise(0), Ok(Delivery::Dropped));
        assert!(sink.events().is_empty());
        msix.set_bus_master(true);
        assert_eq!(
            sink.events(),
            vec![SinkEvent::Configure(0, Some(message(0)))]
        );
    }

    #[test]
    fn masking_a_vector_withdraws_its_route() {
        let (mut msix, sink) = msix(2);
        program(&mut msix, 1);
        enable(&mut msix);
        unmask(&mut msix, 1);
        sink.take();
        mask(&mut msix, 1);
        assert_eq!(sink.take(), vec![SinkEvent::Configure(1, None)]);
    }

    #[test]
    fn reprogramming_an_unmasked_vector_announces_the_new_message() {
        let (mut msix, sink) = msix(1);
        program(&mut msix, 0);
        enable(&mut msix);
        unmask(&mut msix, 0);
        sink.take();
        write32(&mut msix, 8, 0x77);
        assert_eq!(
            sink.take(),
            vec![SinkEvent::Configure(
                0,
                Some(MsiMessage {
                    address: ADDRESS,
                    data: 0x77
                })
            )]
        );
        write32(&mut msix, 8, 0x77);
        assert!(
            sink.take().is_empty(),
            "an unchanged message is not announced"
        );
    }

    #[test]
    fn pending_bits_survive_disable_and_fire_when_deliverable_again() {
        let (mut msix, sink) = msix(1);
        program(&mut msix, 0);
        enable(&mut msix);
        assert_eq!(msix.raise(0), Ok(Delivery::Pending));
        msix.set_control(0);
        assert!(msix.is_pending(0));
        unmask(&mut msix, 0);
        assert!(sink.take().is_empty());
        msix.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(
            sink.take(),
            vec![
                SinkEvent::Configure(0, Some(message(0))),
                SinkEvent::Trigger(0)
            ]
        );
    }

    #[test]
    fn pba_is_read_only() {
        let (mut msix, _) = msix(4);
        enable(&mut msix);
        msix.raise(3).expect("vector exists");
        assert_eq!(
            msix.write_pba(0, &0u64.to_le_bytes()),
            Err(MsixError::PbaReadOnly { offset: 0, len: 8 })
        );
        assert!(msix.is_pending(3));
    }

    #[test]
    fn pba_reads_each_dword_of_a_qword() {
        let (mut msix, _) = msix(100);
        enable(&mut msix);
        for vector in [1, 33, 64, 99] {
            msix.raise(vector).expect("vector exists");
        }
        let read = |offset| {
            let mut data = [0u8; 4];
            msix.read_pba(offset, &mut data).expect("dword read");
            u32::from_le_bytes(data)
        };
        assert_eq!(read(0), 0b10);
        assert_eq!(read(4), 0b10);
        assert_eq!(read(8), 1);
        assert_eq!(read(12), 1 << 3);
        let mut data = [0u8; 4];
        assert!(msix.read_pba(16, &mut data).is_err());
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn raising_a_vector_past_the_table_is_an_error() {
        let (mut msix, _) = msix(4);
        assert_eq!(
            msix.raise(4),
            Err(MsixError::VectorOutOfRange {
                vector: 4,
                vectors: 4
            })
        );
    }

    #[test]
    fn reset_masks_vectors_clears_pending_and_withdraws_routes() {
        let (mut msix, sink) = msix(2);
        program(&mut msix, 0);
        enable(&mut msix);
        unmask(&mut msix, 0);
        mask(&mut msix, 0);
        msix.raise(0).expect("vector exists");
        unmask(&mut msix, 0);
        mask(&mut msix, 0);
        msix.raise(0).expect("vector exists");
        unmask(&mut msix, 1);
        sink.take();
        msix.reset();
        assert_eq!(sink.take(), vec![SinkEvent::Configure(1, None)]);
        assert!(!msix.enabled() && !msix.is_pending(0));
        assert_eq!(read32(&msix, 12), MSIX_VECTOR_CONTROL_MASKED);
        assert_eq!(read32(&msix, 0), 0);
    }

    proptest! {
        #[test]
        fn random_table_and_pba_accesses_never_panic_and_keep_trigger_contract(
            ops in proptest::collection::vec(
                (0u8..6, 0u64..0x60, 0usize..10, any::<u64>()),
                1..128,
            )
        ) {
            let (mut msix, sink) = msix(5);
            for (kind, offset, len, value) in ops {
                let bytes = value.to_le_bytes();
                let data = &bytes[..len.min(8)];
                let mut buffer = vec![0u8; len];
                match kind {
                    0 => { let _ = msix.write_table(offset, data); }
                    1 => { let _ = msix.read_table(offset, &mut buffer); }
                    2 => { let _ = msix.read_pba(offset, &mut buffer); }
                    3 => { let _ = msix.write_pba(offset, data); }
                    4 => msix.set_control(value as u16),
                    _ => { let _ = msix.raise((value % 6) as u16); msix.set_bus_master(value & 1 == 0); }
                }
            }
            // Every trigger follows a configure that carried a message for that vector.
            let mut routed = [false; 5];
            for event in sink.events() {
                match event {
                    SinkEvent::Configure(v, m) => routed[usize::from(v)] = m.is_some(),
                    SinkEvent::Trigger(v) => prop_assert!(routed[usize::from(v)], "vector {}", v),
                }
            }
        }
    }
}
