//! The rmnic BAR0 layout and register file, as data: one table of registers (offset, name,
//! reset value, access, writable bits) and one masked write path for every guest write.
//!
//! The constants here are the single source of truth for BAR0; `docs/device-spec.md` carries
//! the same table and a unit test below keeps the two equal.
//!
//! Access rules (all of BAR0): registers are 32 bits; a naturally aligned 8-byte access is
//! split into the two 32-bit registers it covers, low offset first. Any other width or
//! alignment is refused: a read returns all ones, a write is dropped, and the device counts
//! the error. Offsets inside the register window that name no register read as zero and
//! ignore writes (room for later registers, which must keep that reading harmless).

use thiserror::Error;

use crate::mmio::{self, MmioError, MmioWidth};

/// BAR0 is the function's only BAR.
pub const BAR0_INDEX: u8 = 0;
/// Size of BAR0 in bytes (a 64-bit, non-prefetchable memory BAR).
pub const BAR0_SIZE: u64 = 0x4000;
/// BAR0 `[0, REGISTER_WINDOW_SIZE)` holds the register file.
pub const REGISTER_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0x2000;
/// Offset of the MSI-X pending-bit array in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0x3000;
/// Size of the BAR0 windows reserved for the MSI-X table and for the PBA.
pub const MSIX_WINDOW_SIZE: u64 = 0x1000;

// The windows are disjoint, in order, and inside a power-of-two BAR.
const _: () = assert!(
    REGISTER_WINDOW_SIZE <= MSIX_TABLE_OFFSET
        && MSIX_TABLE_OFFSET + MSIX_WINDOW_SIZE <= MSIX_PBA_OFFSET
        && MSIX_PBA_OFFSET + MSIX_WINDOW_SIZE <= BAR0_SIZE
        && BAR0_SIZE.is_power_of_two()
);

/// Identification register: reads [`RMNIC_ID_MAGIC`].
pub const REG_ID: u64 = 0x000;
/// Specification version implemented by the device, see [`RMNIC_SPEC_VERSION`].
pub const REG_VERSION: u64 = 0x004;
/// Scratch register: reads back what was written; no side effect.
pub const REG_SCRATCH: u64 = 0x008;
/// Capability bits (number of contexts, TLB geometry...): reserved, reads 0 in version 0.1.
pub const REG_CAPS: u64 = 0x00c;

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
/// The version of `docs/device-spec.md` the device implements: 0.1.
pub const RMNIC_SPEC_VERSION: u32 = (0 << VERSION_MAJOR_SHIFT) | (1 << VERSION_MINOR_SHIFT);

/// How the guest may change a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Writes are ignored.
    ReadOnly,
    /// Writes set the writable bits to the written value.
    ReadWrite,
    /// Writing 1 to a writable bit clears it; writing 0 leaves it.
    WriteOneToClear,
}

impl Access {
    /// The abbreviation used in the specification's register table.
    pub const fn mnemonic(self) -> &'static str {
        match self {
            Self::ReadOnly => "RO",
            Self::ReadWrite => "RW",
            Self::WriteOneToClear => "W1C",
        }
    }
}

/// One 32-bit register of the register file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterSpec {
    /// Offset in BAR0 (4-byte aligned, inside the register window).
    pub offset: u64,
    /// Name of the `REG_*` constant.
    pub name: &'static str,
    /// Value after reset.
    pub reset: u32,
    /// How writes act.
    pub access: Access,
    /// Bits writes act on (0 for read-only registers).
    pub writable: u32,
    /// One-line meaning, as in the specification.
    pub summary: &'static str,
}

/// The register file, sorted by offset.
pub const REGISTERS: [RegisterSpec; 4] = [
    RegisterSpec {
        offset: REG_ID,
        name: "REG_ID",
        reset: RMNIC_ID_MAGIC,
        access: Access::ReadOnly,
        writable: 0,
        summary: "Identification: \"RMNC\"",
    },
    RegisterSpec {
        offset: REG_VERSION,
        name: "REG_VERSION",
        reset: RMNIC_SPEC_VERSION,
        access: Access::ReadOnly,
        writable: 0,
        summary: "Specification version, major << 16 | minor",
    },
    RegisterSpec {
        offset: REG_SCRATCH,
        name: "REG_SCRATCH",
        reset: 0,
        access: Access::ReadWrite,
        writable: 0xffff_ffff,
        summary: "Scratch: reads back the last value written",
    },
    RegisterSpec {
        offset: REG_CAPS,
        name: "REG_CAPS",
        reset: 0,
        access: Access::ReadOnly,
        writable: 0,
        summary: "Capabilities: reserved, 0",
    },
];

/// Number of registers in the file.
const NUM_REGISTERS: usize = REGISTERS.len();

/// Whether a register table is well formed: sorted, unique, aligned offsets inside the window,
/// and writable bits exactly for the registers whose access uses them.
const fn table_is_valid(table: &[RegisterSpec]) -> bool {
    let mut i = 0;
    while i < table.len() {
        let register = &table[i];
        if register.offset % 4 != 0 || register.offset + 4 > REGISTER_WINDOW_SIZE {
            return false;
        }
        if i > 0 && table[i - 1].offset >= register.offset {
            return false;
        }
        let read_only = matches!(register.access, Access::ReadOnly);
        if read_only != (register.writable == 0) {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(table_is_valid(&REGISTERS), "malformed register table");

/// A guest access the register file refuses.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The access has a width or alignment the register file does not accept.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The access falls past the register window.
    #[error("Register access of {len} bytes at {offset:#x} is past the register window")]
    OutOfRange {
        /// Offset of the access in BAR0.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
}

/// The register values of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterFile {
    /// `values[i]` is the value of `REGISTERS[i]`.
    values: [u32; NUM_REGISTERS],
}

impl Default for RegisterFile {
    fn default() -> Self {
        Self::new()
    }
}

impl RegisterFile {
    /// Every register at its reset value.
    pub fn new() -> Self {
        Self {
            values: REGISTERS.map(|register| register.reset),
        }
    }

    /// Returns every register to its reset value.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// The value of the register at `offset` (0 for offsets that name no register).
    pub fn value(&self, offset: u64) -> u32 {
        index_of(offset).map_or(0, |i| self.values[i])
    }

    /// The guest reads `data.len()` bytes at `offset`; `data` gets all ones if refused.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), RegisterError> {
        match Self::check(offset, data.len()) {
            Ok(width) => {
                let mut dwords = [0; 2];
                for (i, dword) in dwords.iter_mut().take(width.dwords()).enumerate() {
                    *dword = self.value(offset + 4 * i as u64);
                }
                mmio::store_dwords(data, dwords);
                Ok(())
            }
            Err(error) => {
                mmio::fill_all_ones(data);
                Err(error)
            }
        }
    }

    /// The guest writes `data` at `offset`; a refused access changes nothing.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), RegisterError> {
        let width = Self::check(offset, data.len())?;
        let dwords = mmio::load_dwords(data);
        for (i, value) in dwords.iter().take(width.dwords()).enumerate() {
            self.guest_write(offset + 4 * i as u64, *value);
        }
        Ok(())
    }

    /// Checks an access against the width rules and the window.
    fn check(offset: u64, len: usize) -> Result<MmioWidth, RegisterError> {
        let width = MmioWidth::decode(offset, len)?;
        if offset
            .checked_add(width.bytes())
            .is_none_or(|end| end > REGISTER_WINDOW_SIZE)
        {
            return Err(RegisterError::OutOfRange { offset, len });
        }
        Ok(width)
    }

    /// Applies a guest's 32-bit write at `offset`. Offsets that name no register ignore it.
    fn guest_write(&mut self, offset: u64, value: u32) {
        if let Some(i) = index_of(offset) {
            self.values[i] = masked_write(&REGISTERS[i], self.values[i], value);
        }
    }
}

/// The one masked write path: the value a register takes when the guest writes `value` over
/// `old`, as its access type and writable bits say.
fn masked_write(register: &RegisterSpec, old: u32, value: u32) -> u32 {
    match register.access {
        Access::ReadOnly => old,
        Access::ReadWrite => (old & !register.writable) | (value & register.writable),
        Access::WriteOneToClear => old & !(value & register.writable),
    }
}

/// Index in [`REGISTERS`] of the register at `offset`.
fn index_of(offset: u64) -> Option<usize> {
    REGISTERS
        .iter()
        .position(|register| register.offset == offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec_doc::{constant, register_rows, SpecRow};

    fn read32(file: &RegisterFile, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        file.read(offset, &mut data).expect("valid access");
        u32::from_le_bytes(data)
    }

    fn write32(file: &mut RegisterFile, offset: u64, value: u32) {
        file.write(offset, &value.to_le_bytes())
            .expect("valid access");
    }

    #[test]
    fn registers_read_their_reset_values() {
        let file = RegisterFile::new();
        assert_eq!(read32(&file, REG_ID), RMNIC_ID_MAGIC);
        assert_eq!(read32(&file, REG_VERSION), 0x0000_0001);
        assert_eq!(read32(&file, REG_SCRATCH), 0);
        assert_eq!(read32(&file, REG_CAPS), 0);
    }

    #[test]
    fn id_magic_spells_rmnc() {
        assert_eq!(&RMNIC_ID_MAGIC.to_be_bytes(), b"RMNC");
    }

    #[test]
    fn version_fields_decode_to_0_1() {
        let major = (RMNIC_SPEC_VERSION & VERSION_MAJOR_MASK) >> VERSION_MAJOR_SHIFT;
        let minor = (RMNIC_SPEC_VERSION & VERSION_MINOR_MASK) >> VERSION_MINOR_SHIFT;
        assert_eq!((major, minor), (0, 1));
    }

    #[test]
    fn scratch_reads_back_what_was_written() {
        let mut file = RegisterFile::new();
        for value in [0xdead_beef, 0, u32::MAX, 0x1234_5678] {
            write32(&mut file, REG_SCRATCH, value);
            assert_eq!(read32(&file, REG_SCRATCH), value);
        }
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut file = RegisterFile::new();
        for offset in [REG_ID, REG_VERSION, REG_CAPS] {
            let before = read32(&file, offset);
            write32(&mut file, offset, !before);
            assert_eq!(read32(&file, offset), before, "offset {offset:#x}");
        }
    }

    #[test]
    fn qword_access_splits_into_two_registers_low_first() {
        let mut file = RegisterFile::new();
        let mut data = [0u8; 8];
        file.read(REG_ID, &mut data).expect("aligned qword");
        assert_eq!(
            u64::from_le_bytes(data),
            u64::from(RMNIC_ID_MAGIC) | (u64::from(RMNIC_SPEC_VERSION) << 32)
        );
        file.write(REG_SCRATCH, &0xffff_ffff_cafe_f00du64.to_le_bytes())
            .expect("aligned qword");
        assert_eq!(read32(&file, REG_SCRATCH), 0xcafe_f00d);
        assert_eq!(read32(&file, REG_CAPS), 0, "read-only high half unchanged");
    }

    #[test]
    fn unknown_offsets_read_zero_and_ignore_writes() {
        let mut file = RegisterFile::new();
        let before = file.clone();
        write32(&mut file, 0x010, 0xffff_ffff);
        write32(&mut file, 0xffc, 0xffff_ffff);
        assert_eq!(file, before);
        assert_eq!(read32(&file, 0x010), 0);
        assert_eq!(read32(&file, 0xffc), 0);
    }

    #[test]
    fn bad_widths_and_alignment_read_all_ones_and_drop_writes() {
        let mut file = RegisterFile::new();
        for (offset, len) in [
            (REG_SCRATCH, 1),
            (REG_SCRATCH, 2),
            (0x9, 4),
            (0x4, 8),
            (0, 16),
        ] {
            let mut data = vec![0u8; len];
            assert!(matches!(
                file.read(offset, &mut data),
                Err(RegisterError::Mmio(_))
            ));
            assert!(data.iter().all(|byte| *byte == 0xff));
            data.fill(0x55);
            assert!(file.write(offset, &data).is_err());
        }
        assert_eq!(file, RegisterFile::new());
    }

    #[test]
    fn accesses_past_the_window_are_refused() {
        let mut file = RegisterFile::new();
        let mut data = [0u8; 4];
        assert_eq!(
            file.read(REGISTER_WINDOW_SIZE, &mut data),
            Err(RegisterError::OutOfRange {
                offset: REGISTER_WINDOW_SIZE,
                len: 4
            })
        );
        assert_eq!(data, [0xff; 4]);
        assert!(file.write(u64::MAX - 3, &data).is_err());
    }

    #[test]
    fn reset_restores_scratch() {
        let mut file = RegisterFile::new();
        write32(&mut file, REG_SCRATCH, 7);
        file.reset();
        assert_eq!(read32(&file, REG_SCRATCH), 0);
    }

    #[test]
    fn write_one_to_clear_access_clears_only_written_ones() {
        // No W1C register exists yet; exercise the write path with the access type.
        let register = RegisterSpec {
            offset: 0x100,
            name: "REG_TEST",
            reset: 0,
            access: Access::WriteOneToClear,
            writable: 0xff,
            summary: "",
        };
        assert!(table_is_valid(&[register]));
        assert_eq!(
            masked_write(&register, 0x0000_0f0f, 0xffff_0103),
            0x0000_0f0c
        );
        assert_eq!(masked_write(&register, 0x0000_0f0f, 0), 0x0000_0f0f);
    }

    #[test]
    fn read_write_access_keeps_bits_outside_the_writable_mask() {
        let register = RegisterSpec {
            offset: 0x100,
            name: "REG_TEST",
            reset: 0,
            access: Access::ReadWrite,
            writable: 0x0000_ffff,
            summary: "",
        };
        assert_eq!(
            masked_write(&register, 0xabcd_0000, 0x1234_5678),
            0xabcd_5678
        );
    }

    #[test]
    fn malformed_tables_are_detected() {
        let good = REGISTERS[2];
        let mut unaligned = good;
        unaligned.offset = 0x2;
        let mut read_only_with_mask = REGISTERS[0];
        read_only_with_mask.writable = 1;
        assert!(!table_is_valid(&[unaligned]));
        assert!(!table_is_valid(&[read_only_with_mask]));
        assert!(!table_is_valid(&[good, good]), "duplicate offsets");
    }

    #[test]
    fn specification_register_table_matches_the_code() {
        let expected: Vec<SpecRow> = REGISTERS
            .iter()
            .map(|register| SpecRow {
                offset: register.offset,
                name: register.name.to_string(),
                width: "32".to_string(),
                access: register.access.mnemonic().to_string(),
                reset: register.reset,
                writable: register.writable,
            })
            .collect();
        assert_eq!(
            register_rows(),
            expected,
            "docs/device-spec.md register map drifted"
        );
    }

    #[test]
    fn specification_layout_constants_match_the_code() {
        for (name, value) in [
            ("BAR0_SIZE", BAR0_SIZE),
            ("REGISTER_WINDOW_SIZE", REGISTER_WINDOW_SIZE),
            ("MSIX_TABLE_OFFSET", MSIX_TABLE_OFFSET),
            ("MSIX_PBA_OFFSET", MSIX_PBA_OFFSET),
            ("RMNIC_ID_MAGIC", u64::from(RMNIC_ID_MAGIC)),
            ("RMNIC_SPEC_VERSION", u64::from(RMNIC_SPEC_VERSION)),
        ] {
            assert_eq!(constant(name), Some(value), "docs/device-spec.md: {name}");
        }
    }
}
