//! Decoding of guest MMIO accesses to BAR0: the widths the device accepts and little-endian
//! packing of the access buffer.
//!
//! Every BAR0 structure (register file, MSI-X table, PBA) accepts the same accesses:
//! 4 or 8 bytes, naturally aligned. One decoder serves them all so the rule is written once.

use thiserror::Error;

/// The access widths BAR0 accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MmioWidth {
    /// 4 bytes at a 4-byte aligned offset.
    Dword,
    /// 8 bytes at an 8-byte aligned offset, handled as two consecutive dwords (low first).
    Qword,
}

/// A guest access BAR0 does not accept.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MmioError {
    /// The access is not 4 or 8 bytes wide.
    #[error("Access of {len} bytes at offset {offset:#x} is neither 4 nor 8 bytes wide")]
    BadWidth {
        /// Offset of the access within its structure.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
    /// The access is not aligned to its own width.
    #[error("Access of {len} bytes at offset {offset:#x} is not naturally aligned")]
    Unaligned {
        /// Offset of the access within its structure.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
}

impl MmioWidth {
    /// Checks an access of `len` bytes at `offset`.
    pub(crate) fn decode(offset: u64, len: usize) -> Result<Self, MmioError> {
        let width = match len {
            4 => Self::Dword,
            8 => Self::Qword,
            _ => return Err(MmioError::BadWidth { offset, len }),
        };
        if offset % width.bytes() != 0 {
            return Err(MmioError::Unaligned { offset, len });
        }
        Ok(width)
    }

    /// The width in bytes.
    pub(crate) fn bytes(self) -> u64 {
        match self {
            Self::Dword => 4,
            Self::Qword => 8,
        }
    }

    /// The number of 32-bit registers the access covers.
    pub(crate) fn dwords(self) -> usize {
        match self {
            Self::Dword => 1,
            Self::Qword => 2,
        }
    }
}

/// Fills `data` with the all-ones pattern a bus returns for an access nobody claims.
pub(crate) fn fill_all_ones(data: &mut [u8]) {
    data.fill(0xff);
}

/// Packs up to two dwords (low first) into `data`, little-endian, truncated to its length.
pub(crate) fn store_dwords(data: &mut [u8], dwords: [u32; 2]) {
    let value = u64::from(dwords[0]) | (u64::from(dwords[1]) << 32);
    let bytes = value.to_le_bytes();
    let len = data.len().min(bytes.len());
    data[..len].copy_from_slice(&bytes[..len]);
}

/// Unpacks up to 8 little-endian bytes into two dwords (low first); missing bytes are zero.
pub(crate) fn load_dwords(data: &[u8]) -> [u32; 2] {
    let mut bytes = [0u8; 8];
    let len = data.len().min(bytes.len());
    bytes[..len].copy_from_slice(&data[..len]);
    let value = u64::from_le_bytes(bytes);
    // CAST: splitting a u64 into its two halves; truncation is the intent.
    [value as u32, (value >> 32) as u32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_dword_and_qword_are_accepted() {
        assert_eq!(MmioWidth::decode(0x4, 4), Ok(MmioWidth::Dword));
        assert_eq!(MmioWidth::decode(0x8, 8), Ok(MmioWidth::Qword));
    }

    #[test]
    fn byte_word_and_odd_widths_are_rejected() {
        for len in [0, 1, 2, 3, 5, 16] {
            assert_eq!(
                MmioWidth::decode(0, len),
                Err(MmioError::BadWidth { offset: 0, len })
            );
        }
    }

    #[test]
    fn misaligned_accesses_are_rejected() {
        assert_eq!(
            MmioWidth::decode(0x2, 4),
            Err(MmioError::Unaligned { offset: 2, len: 4 })
        );
        assert_eq!(
            MmioWidth::decode(0x4, 8),
            Err(MmioError::Unaligned { offset: 4, len: 8 })
        );
    }

    #[test]
    fn dwords_round_trip_through_little_endian_bytes() {
        let mut data = [0u8; 8];
        store_dwords(&mut data, [0x1122_3344, 0x5566_7788]);
        assert_eq!(data, [0x44, 0x33, 0x22, 0x11, 0x88, 0x77, 0x66, 0x55]);
        assert_eq!(load_dwords(&data), [0x1122_3344, 0x5566_7788]);
        let mut short = [0u8; 4];
        store_dwords(&mut short, [0xdead_beef, 0x1234_5678]);
        assert_eq!(load_dwords(&short), [0xdead_beef, 0]);
    }
}
