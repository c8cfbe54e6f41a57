//! A vfio-user client: what rmnic-vmm uses to attach an out-of-process device
//! (`--device vfio-user:SOCKET`).
//!
//! rust-vmm's `vfio_user::Client` is not used here because it trusts its server: it reads an
//! error reply to a region read as if it were data (and then waits for bytes that never come)
//! and ignores error replies to DMA maps and interrupt set-up. This one checks every reply
//! (message id, command, size bounds, error flag) and turns a bad one into an error.

use std::io::{Read, Write};
use std::mem::size_of;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::protocol::{
    Capabilities, DeviceInfo, DmaMap, Header, IrqInfo, IrqSet, RegionAccess, RegionInfo,
    VersionBody, VersionCapabilities, DMA_READ, DMA_WRITE, FLAG_ERROR, FLAG_TYPE_MASK,
    FLAG_TYPE_REPLY, HEADER_SIZE, MAX_DATA_XFER, MAX_MESSAGE, MAX_MSG_FDS, VERSION_MAJOR,
};

/// Why a request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket failed or closed.
    #[error("vfio-user socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the request.
    #[error("vfio-user server refused command {command}: errno {errno}")]
    Refused {
        /// Command number.
        command: u16,
        /// errno from the reply.
        errno: u32,
    },
    /// The reply does not fit the request.
    #[error("vfio-user server sent a bad reply to command {command}: {reason}")]
    BadReply {
        /// Command number.
        command: u16,
        /// What was wrong.
        reason: String,
    },
}

/// Result of one request.
pub type Result<T> = std::result::Result<T, ClientError>;

/// How long the server may take to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a vfio-user server.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u16,
    /// Set after an I/O error or a bad reply: the stream may hold part of a reply, so every
    /// later request fails at once instead of reading stale bytes.
    broken: bool,
}

impl Client {
    /// Connects to `path` and negotiates the version.
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut client = Self {
            stream,
            next_id: 0,
            broken: false,
        };
        client.negotiate()?;
        Ok(client)
    }

    fn negotiate(&mut self) -> Result<()> {
        let mut body = VersionBody {
            major: VERSION_MAJOR,
            minor: 0,
        }
        .as_slice()
        .to_vec();
        let caps = VersionCapabilities {
            capabilities: Capabilities {
                // CAST: small constants.
                max_msg_fds: MAX_MSG_FDS as u32,
                max_data_xfer_size: MAX_DATA_XFER as u32,
                pgsizes: Some(4096),
                max_dma_maps: None,
            },
        };
        body.extend_from_slice(
            &serde_json::to_vec(&caps).map_err(|e| ClientError::BadReply {
                command: 1,
                reason: e.to_string(),
            })?,
        );
        body.push(0);
        let reply = self.request(1, &body, &[])?;
        let version: VersionBody = read_struct(1, &reply)?;
        if version.major != VERSION_MAJOR {
            return Err(ClientError::BadReply {
                command: 1,
                reason: format!("server speaks {}.{}", version.major, version.minor),
            });
        }
        Ok(())
    }

    /// Sends one request and returns the reply's body.
    fn request(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> Result<Vec<u8>> {
        if self.broken {
            return Err(ClientError::BadReply {
                command,
                reason: "the connection failed earlier".into(),
            });
        }
        let result = self.exchange(command, body, fds);
        if matches!(
            result,
            Err(ClientError::Io(_)) | Err(ClientError::BadReply { .. })
        ) {
            self.broken = true;
        }
        result
    }

    fn exchange(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> Result<Vec<u8>> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = Header {
            message_id: id,
            command,
            // CAST: bodies are bounded by MAX_DATA_XFER plus a small header.
            message_size: (HEADER_SIZE + body.len()) as u32,
            flags: 0,
            error: 0,
        };
        let mut message = header.as_slice().to_vec();
        message.extend_from_slice(body);
        if fds.is_empty() {
            self.stream.write_all(&message)?;
        } else {
            let sent = self
                .stream
                .send_with_fds(&[&message[..]], fds)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
            if sent < message.len() {
                self.stream.write_all(&message[sent..])?;
            }
        }
        let mut reply = Header::default();
        self.stream.read_exact(reply.as_mut_slice())?;
        let bad = |reason: String| ClientError::BadReply { command, reason };
        if reply.message_id != id {
            return Err(bad(format!(
                "reply id {} to request {id}",
                reply.message_id
            )));
        }
        if reply.flags & FLAG_TYPE_MASK != FLAG_TYPE_REPLY {
            return Err(bad(format!(
                "message type {}",
                reply.flags & FLAG_TYPE_MASK
            )));
        }
        let size = reply.message_size as usize;
        if !(HEADER_SIZE..=MAX_MESSAGE).contains(&size) {
            return Err(bad(format!("reply of {size} bytes")));
        }
        let mut body = vec![0u8; size - HEADER_SIZE];
        self.stream.read_exact(&mut body)?;
        if reply.flags & FLAG_ERROR != 0 {
            return Err(ClientError::Refused {
                command,
                errno: reply.error,
            });
        }
        Ok(body)
    }

    /// Device flags, region count and interrupt index count.
    pub fn device_info(&mut self) -> Result<DeviceInfo> {
        let request = DeviceInfo {
            // CAST: 16 bytes.
            argsz: size_of::<DeviceInfo>() as u32,
            ..Default::default()
        };
        let reply = self.request(4, request.as_slice(), &[])?;
        read_struct(4, &reply)
    }

    /// Region `index`'s size and flags.
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfo> {
        let request = RegionInfo {
            // CAST: 32 bytes.
            argsz: size_of::<RegionInfo>() as u32,
            index,
            ..Default::default()
        };
        let reply = self.request(5, request.as_slice(), &[])?;
        read_struct(5, &reply)
    }

    /// Interrupt index `index`'s vector count and flags.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo> {
        let request = IrqInfo {
            // CAST: 16 bytes.
            argsz: size_of::<IrqInfo>() as u32,
            index,
            ..Default::default()
        };
        let reply = self.request(7, request.as_slice(), &[])?;
        read_struct(7, &reply)
    }

    /// Reads `data.len()` bytes of region `region` at `offset`.
    pub fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let access = RegionAccess {
            offset,
            region,
            // CAST: callers read at most a page.
            count: data.len() as u32,
        };
        let reply = self.request(9, access.as_slice(), &[])?;
        let payload = reply.get(size_of::<RegionAccess>()..).unwrap_or_default();
        if payload.len() != data.len() {
            return Err(ClientError::BadReply {
                command: 9,
                reason: format!("{} bytes for a read of {}", payload.len(), data.len()),
            });
        }
        data.copy_from_slice(payload);
        Ok(())
    }

    /// Writes `data` to region `region` at `offset`.
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let access = RegionAccess {
            offset,
            region,
            // CAST: callers write at most a page.
            count: data.len() as u32,
        };
        let mut body = access.as_slice().to_vec();
        body.extend_from_slice(data);
        self.request(10, &body, &[])?;
        Ok(())
    }

    /// Shares `size` bytes of `fd` from `offset` as DMA addresses `address..`.
    pub fn dma_map(&mut self, fd: RawFd, offset: u64, address: u64, size: u64) -> Result<()> {
        let map = DmaMap {
            // CAST: 32 bytes.
            argsz: size_of::<DmaMap>() as u32,
            flags: DMA_READ | DMA_WRITE,
            offset,
            address,
            size,
        };
        self.request(2, map.as_slice(), &[fd])?;
        Ok(())
    }

    /// Sets interrupt signalling: `fds` are one eventfd per vector from `start`, or none.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[RawFd],
    ) -> Result<()> {
        let set = IrqSet {
            // CAST: 20 bytes.
            argsz: size_of::<IrqSet>() as u32,
            flags,
            index,
            start,
            count,
        };
        self.request(8, set.as_slice(), fds)?;
        Ok(())
    }

    /// Resets the device.
    pub fn reset(&mut self) -> Result<()> {
        self.request(13, &[], &[])?;
        Ok(())
    }
}

fn read_struct<T: ByteValued + Default>(command: u16, body: &[u8]) -> Result<T> {
    crate::protocol::parse("reply", body, false).map_err(|e| ClientError::BadReply {
        command,
        reason: e.to_string(),
    })
}
