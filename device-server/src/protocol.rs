//! The vfio-user wire format (QEMU's `docs/interop/vfio-user.rst`): message header, the
//! request bodies this server understands, and their parsing.
//!
//! Every body is parsed from bytes the client sent, so every parser checks the length it is
//! given and returns [`ProtocolError`] (an errno for the error reply) instead of trusting a
//! size field. The `vfio_user` crate has the same structures, but private, and its server
//! trusts them: see `docs/vfio-user.md` for why this crate has its own.

use std::mem::size_of;

use thiserror::Error;
use vm_memory::ByteValued;

/// Protocol version this server speaks.
pub const VERSION_MAJOR: u16 = 0;
/// Minor version of the reply. QEMU's client (10.1 and later) sends 0.0 and refuses a server
/// whose minor version is above its own; rust-vmm's client sends 0.1 and accepts 0.0.
pub const VERSION_MINOR: u16 = 0;

/// Largest message this server accepts or sends (header included): the data of one region
/// access of at most [`MAX_DATA_XFER`] bytes plus its header, with room to spare.
pub const MAX_MESSAGE: usize = MAX_DATA_XFER + 4096;
/// Largest region read or write, announced as `max_data_xfer_size`.
pub const MAX_DATA_XFER: usize = 1 << 20;
/// Most file descriptors one message may carry, announced as `max_msg_fds`.
pub const MAX_MSG_FDS: usize = 16;

/// Message types in the low nibble of [`Header::flags`].
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// A command (client to server).
pub const FLAG_TYPE_COMMAND: u32 = 0;
/// A reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// The sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error in [`Header::error`].
pub const FLAG_ERROR: u32 = 1 << 5;

/// Commands, by their wire number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Version and capability negotiation.
    Version,
    /// Map a range of the client's memory for DMA.
    DmaMap,
    /// Unmap DMA ranges.
    DmaUnmap,
    /// Device flags and region and interrupt counts.
    DeviceGetInfo,
    /// One region's size, flags and capabilities.
    DeviceGetRegionInfo,
    /// File descriptors for region I/O (ioeventfds).
    DeviceGetRegionIoFds,
    /// One interrupt index's count and flags.
    DeviceGetIrqInfo,
    /// Set up interrupt signalling (eventfds).
    DeviceSetIrqs,
    /// Read from a region.
    RegionRead,
    /// Write to a region.
    RegionWrite,
    /// Server-initiated DMA read (server to client).
    DmaRead,
    /// Server-initiated DMA write (server to client).
    DmaWrite,
    /// Reset the device.
    DeviceReset,
    /// Dirty-page tracking for migration.
    DirtyPages,
    /// Device features (migration).
    DeviceFeature,
    /// Migration data.
    MigrationDataRead,
    /// Migration data.
    MigrationDataWrite,
}

impl Command {
    /// The command numbered `n`, if there is one.
    pub fn from_wire(n: u16) -> Option<Self> {
        Some(match n {
            1 => Self::Version,
            2 => Self::DmaMap,
            3 => Self::DmaUnmap,
            4 => Self::DeviceGetInfo,
            5 => Self::DeviceGetRegionInfo,
            6 => Self::DeviceGetRegionIoFds,
            7 => Self::DeviceGetIrqInfo,
            8 => Self::DeviceSetIrqs,
            9 => Self::RegionRead,
            10 => Self::RegionWrite,
            11 => Self::DmaRead,
            12 => Self::DmaWrite,
            13 => Self::DeviceReset,
            14 => Self::DirtyPages,
            15 => Self::DeviceFeature,
            16 => Self::MigrationDataRead,
            17 => Self::MigrationDataWrite,
            _ => return None,
        })
    }
}

/// A request the server cannot carry out, with the errno its error reply carries.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The body is shorter or longer than its command requires.
    #[error("{command} body of {got} bytes, expected {expected}")]
    BadLength {
        /// Command name.
        command: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes required (minimum, for bodies with trailing data).
        expected: usize,
    },
    /// A field has a value the protocol or this device does not allow.
    #[error("{0}")]
    Invalid(String),
    /// A command this server does not implement.
    #[error("command {0} is not supported by this server")]
    Unsupported(u16),
    /// The device refused the request.
    #[error("{message}")]
    Device {
        /// errno for the reply.
        errno: i32,
        /// What happened.
        message: String,
    },
}

impl ProtocolError {
    /// The errno carried by the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            Self::BadLength { .. } | Self::Invalid(_) => libc::EINVAL,
            Self::Unsupported(_) => libc::ENOTSUP,
            Self::Device { errno, .. } => *errno,
        }
    }

    /// A device-side failure with `errno`.
    pub fn device(errno: i32, message: impl Into<String>) -> Self {
        Self::Device {
            errno,
            message: message.into(),
        }
    }
}

/// Result of handling one request.
pub type Result<T> = std::result::Result<T, ProtocolError>;

/// The header every message starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Matches a reply to its command.
    pub message_id: u16,
    /// [`Command`] number.
    pub command: u16,
    /// Size of the whole message, header included.
    pub message_size: u32,
    /// Type, no-reply and error flags.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

/// Size of [`Header`] on the wire.
pub const HEADER_SIZE: usize = size_of::<Header>();

impl Header {
    /// The header of the reply to `self` for a message of `body` bytes after the header.
    pub fn reply(&self, body: usize) -> Self {
        Self {
            message_id: self.message_id,
            command: self.command,
            // CAST: replies are bounded by MAX_MESSAGE (checked by the sender).
            message_size: (HEADER_SIZE + body) as u32,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
    }

    /// The error reply to `self`.
    pub fn error_reply(&self, errno: i32) -> Self {
        Self {
            message_id: self.message_id,
            command: self.command,
            // CAST: an error reply is the header alone.
            message_size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            // CAST: errno values are small and positive.
            error: errno as u32,
        }
    }

    /// Whether the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }
}

/// `VERSION` body before the JSON capabilities.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VersionBody {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

/// `DMA_MAP` body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaMap {
    /// Size of this structure.
    pub argsz: u32,
    /// [`DMA_READ`] and [`DMA_WRITE`].
    pub flags: u32,
    /// Offset into the file descriptor that came with the message.
    pub offset: u64,
    /// DMA (guest-physical) address of the range.
    pub address: u64,
    /// Bytes.
    pub size: u64,
}

/// The device may read the range.
pub const DMA_READ: u32 = 1 << 0;
/// The device may write the range.
pub const DMA_WRITE: u32 = 1 << 1;

/// `DMA_UNMAP` body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaUnmap {
    /// Size of this structure (plus a dirty bitmap, which this server does not support).
    pub argsz: u32,
    /// [`UNMAP_GET_DIRTY`], [`UNMAP_ALL`].
    pub flags: u32,
    /// DMA address.
    pub address: u64,
    /// Bytes.
    pub size: u64,
}

/// Return a dirty-page bitmap with the unmap (migration; not supported).
pub const UNMAP_GET_DIRTY: u32 = 1 << 1;
/// Unmap everything (address and size must be 0).
pub const UNMAP_ALL: u32 = 1 << 2;

/// `DEVICE_GET_INFO` body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceInfo {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Regions.
    pub num_regions: u32,
    /// Interrupt indexes.
    pub num_irqs: u32,
}

/// `DEVICE_GET_REGION_INFO` body (`struct vfio_region_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionInfo {
    /// Size the client can receive (request) or needs (reply).
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability, 0 if none.
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// Offset to mmap the region's file descriptor at.
    pub offset: u64,
}

/// `DEVICE_GET_IRQ_INFO` body (`struct vfio_irq_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IrqInfo {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// Vectors in it.
    pub count: u32,
}

/// `DEVICE_SET_IRQS` body (`struct vfio_irq_set` without its data).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IrqSet {
    /// Size of this structure plus its data.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// Interrupt index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Vectors.
    pub count: u32,
}

/// `REGION_READ` and `REGION_WRITE` body before the data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes.
    pub count: u32,
}

// SAFETY: each is a repr(C) struct of integers without padding (sizes asserted below), so
// every byte pattern is a valid value.
unsafe impl ByteValued for Header {}
// SAFETY: as above.
unsafe impl ByteValued for VersionBody {}
// SAFETY: as above.
unsafe impl ByteValued for DmaMap {}
// SAFETY: as above.
unsafe impl ByteValued for DmaUnmap {}
// SAFETY: as above.
unsafe impl ByteValued for DeviceInfo {}
// SAFETY: as above.
unsafe impl ByteValued for RegionInfo {}
// SAFETY: as above.
unsafe impl ByteValued for IrqInfo {}
// SAFETY: as above.
unsafe impl ByteValued for IrqSet {}
// SAFETY: as above.
unsafe impl ByteValued for RegionAccess {}

const _: () = {
    assert!(size_of::<Header>() == 16);
    assert!(size_of::<VersionBody>() == 4);
    assert!(size_of::<DmaMap>() == 32);
    assert!(size_of::<DmaUnmap>() == 24);
    assert!(size_of::<DeviceInfo>() == 16);
    assert!(size_of::<RegionInfo>() == 32);
    assert!(size_of::<IrqInfo>() == 16);
    assert!(size_of::<IrqSet>() == 20);
    assert!(size_of::<RegionAccess>() == 16);
};

/// Reads a `T` from the start of `body`, which must hold at least `size_of::<T>()` bytes
/// (exactly that many when `exact`).
pub fn parse<T: ByteValued + Default>(
    command: &'static str,
    body: &[u8],
    exact: bool,
) -> Result<T> {
    let need = size_of::<T>();
    if body.len() < need || (exact && body.len() != need) {
        return Err(ProtocolError::BadLength {
            command,
            got: body.len(),
            expected: need,
        });
    }
    // `from_slice` cannot fail for a slice of exactly size_of::<T>() bytes, but a T read
    // through it may be unaligned, so copy.
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(&body[..need]);
    Ok(value)
}

/// Capabilities exchanged in `VERSION` (JSON). Unknown keys from the client are ignored.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct VersionCapabilities {
    /// The capabilities object.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// The `capabilities` object of `VERSION`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Capabilities {
    /// Most file descriptors per message.
    #[serde(default = "default_max_msg_fds")]
    pub max_msg_fds: u32,
    /// Largest region access or DMA transfer.
    #[serde(default = "default_max_data_xfer_size")]
    pub max_data_xfer_size: u32,
    /// Page sizes DMA mappings may use.
    #[serde(default = "default_pgsizes", skip_serializing_if = "Option::is_none")]
    pub pgsizes: Option<u64>,
    /// Most DMA mappings at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dma_maps: Option<u32>,
}

fn default_max_msg_fds() -> u32 {
    1
}

fn default_max_data_xfer_size() -> u32 {
    1 << 20
}

fn default_pgsizes() -> Option<u64> {
    Some(4096)
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            max_msg_fds: default_max_msg_fds(),
            max_data_xfer_size: default_max_data_xfer_size(),
            pgsizes: default_pgsizes(),
            max_dma_maps: None,
        }
    }
}

/// Parses a `VERSION` body: major, minor, then NUL-terminated JSON (which may be absent).
pub fn parse_version(body: &[u8]) -> Result<(VersionBody, VersionCapabilities)> {
    let version: VersionBody = parse("VERSION", body, false)?;
    if version.major != VERSION_MAJOR {
        return Err(ProtocolError::device(
            libc::ENOTSUP,
            format!(
                "client speaks vfio-user {}.{}, this server {VERSION_MAJOR}.{VERSION_MINOR}",
                version.major, version.minor
            ),
        ));
    }
    let json = &body[size_of::<VersionBody>()..];
    let json = match json.iter().position(|&b| b == 0) {
        Some(end) => &json[..end],
        None if json.is_empty() => json,
        None => {
            return Err(ProtocolError::Invalid(
                "VERSION capabilities are not NUL-terminated".into(),
            ))
        }
    };
    let caps = if json.is_empty() {
        VersionCapabilities::default()
    } else {
        serde_json::from_slice(json)
            .map_err(|e| ProtocolError::Invalid(format!("VERSION capabilities: {e}")))?
    };
    Ok((version, caps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_their_wire_numbers() {
        for n in 1..=17u16 {
            assert!(Command::from_wire(n).is_some(), "{n}");
        }
        assert_eq!(Command::from_wire(0), None);
        assert_eq!(Command::from_wire(18), None);
        assert_eq!(Command::from_wire(9), Some(Command::RegionRead));
    }

    #[test]
    fn parse_checks_lengths() {
        let body = [0u8; 20];
        assert!(parse::<IrqSet>("SET_IRQS", &body, true).is_ok());
        assert!(parse::<IrqSet>("SET_IRQS", &body[..19], false).is_err());
        assert!(parse::<IrqInfo>("GET_IRQ_INFO", &body, true).is_err());
        assert!(parse::<IrqInfo>("GET_IRQ_INFO", &body, false).is_ok());
    }

    #[test]
    fn version_needs_matching_major_and_terminated_json() {
        let mut body = vec![0, 0, 1, 0];
        body.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":8,\"unknown\":1}}\0");
        let (v, caps) = parse_version(&body).expect("valid");
        assert_eq!((v.major, v.minor), (0, 1));
        assert_eq!(caps.capabilities.max_msg_fds, 8);

        let unterminated = [0, 0, 1, 0, b'{'];
        assert_eq!(
            parse_version(&unterminated).err().map(|e| e.errno()),
            Some(libc::EINVAL)
        );
        let wrong_major = [1, 0, 0, 0];
        assert_eq!(
            parse_version(&wrong_major).err().map(|e| e.errno()),
            Some(libc::ENOTSUP)
        );
        assert!(parse_version(&[0, 0]).is_err());
        assert!(parse_version(&[0, 0, 1, 0, b'x', 0]).is_err());
        assert!(parse_version(&[0, 0, 1, 0]).is_ok());
    }
}
