//! The vfio-user server: accepts a client on a Unix socket, reads its messages, checks each
//! against the protocol and the backend's regions and interrupt indexes, calls the backend,
//! and replies.
//!
//! What the client sends cannot crash the server: sizes are checked before anything is
//! allocated or read, every request is read whole before it is answered (so a refused request
//! leaves the stream in step), and every refusal is an error reply with an errno. A message
//! whose header is unusable (size smaller than the header or beyond [`MAX_MESSAGE`]) cannot be
//! skipped safely: the server answers it with an error and closes the connection. A client that
//! stalls in the middle of a message holds only its own connection (one client at a time); one
//! that stops reading replies loses its connection after [`REPLY_WRITE_TIMEOUT`].

use std::fs::File;
use std::io::{Read, Write};
use std::mem::size_of;
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK,
};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::backend::{DeviceBackend, IrqDescription, IrqRequest, RegionDescription};
use crate::dma_map::{DmaMapping, MAX_DMA_MAPS};
use crate::protocol::{
    parse, parse_version, Capabilities, Command, DeviceInfo, DmaMap, DmaUnmap, Header, IrqInfo,
    IrqSet, ProtocolError, RegionAccess, RegionInfo, Result, VersionBody, VersionCapabilities,
    DMA_READ, DMA_WRITE, FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, HEADER_SIZE, MAX_DATA_XFER,
    MAX_MESSAGE, MAX_MSG_FDS, UNMAP_ALL, UNMAP_GET_DIRTY, VERSION_MAJOR, VERSION_MINOR,
};

/// How long one reply may wait for the client to read it.
const REPLY_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why serving stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket path is taken.
    #[error("{0} exists; remove it or pick another socket path")]
    PathExists(PathBuf),
    /// Binding or accepting failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The connection failed (other than by the client closing it).
    #[error("connection: {0}")]
    Connection(#[source] std::io::Error),
}

/// A vfio-user server for one device.
pub struct Server<B: DeviceBackend> {
    listener: UnixListener,
    path: PathBuf,
    backend: B,
    /// Statistics of the current or last connection.
    stats: ConnectionStats,
}

/// What one connection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Requests handled.
    pub requests: u64,
    /// Requests refused with an error reply.
    pub errors: u64,
}

impl<B: DeviceBackend> Server<B> {
    /// Listens on `path` (which must not exist) for clients of `backend`.
    pub fn bind(path: &Path, backend: B) -> std::result::Result<Self, ServerError> {
        if path.exists() {
            return Err(ServerError::PathExists(path.to_path_buf()));
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            backend,
            stats: ConnectionStats::default(),
        })
    }

    /// The backend (for tests and for a host that inspects the device).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The statistics of the current or last connection.
    pub fn stats(&self) -> ConnectionStats {
        self.stats
    }

    /// The backend, mutable (tests raise interrupts through it between connections).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Waits for the next client.
    pub fn accept(&self) -> std::result::Result<UnixStream, ServerError> {
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|source| ServerError::Socket {
                path: self.path.clone(),
                source,
            })?;
        info!("vfio-user client connected");
        Ok(stream)
    }

    /// Accepts one client and serves it until it disconnects or its connection fails; the
    /// backend is then reset and its DMA ranges dropped, ready for the next client. Only a
    /// failure to accept is an error: whatever a client does to its own connection ends that
    /// connection, not the server.
    pub fn serve_one(&mut self) -> std::result::Result<ConnectionStats, ServerError> {
        let stream = self.accept()?;
        // A client that stops reading its replies must not wedge the server.
        if let Err(e) = stream.set_write_timeout(Some(REPLY_WRITE_TIMEOUT)) {
            warn!("cannot set the reply timeout: {e}");
        }
        if let Err(e) = self.serve_stream(stream) {
            warn!("vfio-user connection ended: {e}");
        }
        self.backend.disconnected();
        info!(
            requests = self.stats.requests,
            errors = self.stats.errors,
            "vfio-user client gone"
        );
        Ok(self.stats)
    }

    /// Serves a connected client until it disconnects, leaving the backend as the client left
    /// it.
    pub fn serve_stream(&mut self, mut stream: UnixStream) -> std::result::Result<(), ServerError> {
        self.stats = ConnectionStats::default();
        loop {
            let Some((header, fds)) = receive_header(&stream)? else {
                return Ok(());
            };
            self.stats.requests += 1;
            let size = header.message_size as usize;
            if !(HEADER_SIZE..=MAX_MESSAGE).contains(&size) {
                self.stats.errors += 1;
                warn!(
                    size,
                    "vfio-user message size out of range; closing the connection"
                );
                send(&stream, &header.error_reply(libc::EINVAL), &[])?;
                return Ok(());
            }
            let mut body = vec![0u8; size - HEADER_SIZE];
            match stream.read_exact(&mut body) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    warn!("vfio-user client closed the connection inside a message");
                    return Ok(());
                }
                Err(e) => return Err(ServerError::Connection(e)),
            }
            let reply = if header.flags & FLAG_TYPE_MASK != FLAG_TYPE_COMMAND {
                Err(ProtocolError::Invalid(format!(
                    "message type {} is not a command",
                    header.flags & FLAG_TYPE_MASK
                )))
            } else {
                self.handle(&header, &body, fds)
            };
            match reply {
                Ok(reply_body) => {
                    if !header.no_reply() {
                        send(&stream, &header.reply(reply_body.len()), &reply_body)?;
                    }
                }
                Err(error) => {
                    self.stats.errors += 1;
                    debug!(command = header.command, %error, "vfio-user request refused");
                    if !header.no_reply() {
                        send(&stream, &header.error_reply(error.errno()), &[])?;
                    } else {
                        warn!(command = header.command, %error, "refused a no-reply request");
                    }
                }
            }
            stream.flush().map_err(ServerError::Connection)?;
        }
    }

    /// Handles one request; `Ok` carries the reply's body.
    fn handle(&mut self, header: &Header, body: &[u8], mut fds: Vec<File>) -> Result<Vec<u8>> {
        let command =
            Command::from_wire(header.command).ok_or(ProtocolError::Unsupported(header.command))?;
        match command {
            Command::Version => {
                let (version, caps) = parse_version(body)?;
                info!(
                    major = version.major,
                    minor = version.minor,
                    ?caps,
                    "vfio-user version"
                );
                let mut reply = VersionBody {
                    major: VERSION_MAJOR,
                    minor: VERSION_MINOR,
                }
                .as_slice()
                .to_vec();
                let ours = VersionCapabilities {
                    capabilities: Capabilities {
                        // CAST: small constants.
                        max_msg_fds: MAX_MSG_FDS as u32,
                        max_data_xfer_size: MAX_DATA_XFER as u32,
                        pgsizes: Some(4096),
                        max_dma_maps: Some(MAX_DMA_MAPS as u32),
                    },
                };
                let json = serde_json::to_vec(&ours)
                    .map_err(|e| ProtocolError::device(libc::EIO, e.to_string()))?;
                reply.extend_from_slice(&json);
                reply.push(0);
                Ok(reply)
            }
            Command::DmaMap => {
                let map: DmaMap = parse("DMA_MAP", body, true)?;
                if map.flags & !(DMA_READ | DMA_WRITE) != 0 {
                    return Err(ProtocolError::Invalid(format!(
                        "DMA_MAP flags {:#x}",
                        map.flags
                    )));
                }
                if fds.len() > 1 {
                    return Err(ProtocolError::Invalid(format!(
                        "DMA_MAP with {} file descriptors",
                        fds.len()
                    )));
                }
                self.backend.dma_map(DmaMapping {
                    address: map.address,
                    size: map.size,
                    readable: map.flags & DMA_READ != 0,
                    writable: map.flags & DMA_WRITE != 0,
                    file: fds.pop(),
                    offset: map.offset,
                })?;
                Ok(Vec::new())
            }
            Command::DmaUnmap => {
                let unmap: DmaUnmap = parse("DMA_UNMAP", body, true)?;
                if unmap.flags & UNMAP_GET_DIRTY != 0 {
                    return Err(ProtocolError::device(
                        libc::ENOTSUP,
                        "dirty-page tracking is not supported",
                    ));
                }
                if unmap.flags & !(UNMAP_ALL | UNMAP_GET_DIRTY) != 0 {
                    return Err(ProtocolError::Invalid(format!(
                        "DMA_UNMAP flags {:#x}",
                        unmap.flags
                    )));
                }
                if unmap.flags & UNMAP_ALL != 0 {
                    if unmap.address != 0 || unmap.size != 0 {
                        return Err(ProtocolError::Invalid(
                            "DMA_UNMAP_ALL with an address or size".into(),
                        ));
                    }
                    self.backend.dma_unmap(None)?;
                } else {
                    self.backend.dma_unmap(Some((unmap.address, unmap.size)))?;
                }
                Ok(unmap.as_slice().to_vec())
            }
            Command::DeviceGetInfo => {
                let _: DeviceInfo = parse("DEVICE_GET_INFO", body, false)?;
                let info = DeviceInfo {
                    // CAST: 16 bytes.
                    argsz: size_of::<DeviceInfo>() as u32,
                    flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
                    // CAST: a handful of regions and indexes.
                    num_regions: self.backend.regions().len() as u32,
                    num_irqs: self.backend.irqs().len() as u32,
                };
                Ok(info.as_slice().to_vec())
            }
            Command::DeviceGetRegionInfo => {
                let request: RegionInfo = parse("DEVICE_GET_REGION_INFO", body, false)?;
                let region = self.region(request.index)?;
                let info = RegionInfo {
                    // CAST: 32 bytes.
                    argsz: size_of::<RegionInfo>() as u32,
                    flags: region.flags,
                    index: request.index,
                    cap_offset: 0,
                    size: region.size,
                    offset: 0,
                };
                Ok(info.as_slice().to_vec())
            }
            Command::DeviceGetIrqInfo => {
                let request: IrqInfo = parse("DEVICE_GET_IRQ_INFO", body, false)?;
                let irq = self.irq(request.index)?;
                let info = IrqInfo {
                    // CAST: 16 bytes.
                    argsz: size_of::<IrqInfo>() as u32,
                    flags: irq.flags,
                    index: request.index,
                    count: irq.count,
                };
                Ok(info.as_slice().to_vec())
            }
            Command::DeviceSetIrqs => {
                let set: IrqSet = parse("DEVICE_SET_IRQS", body, false)?;
                let irq = self.irq(set.index)?;
                let data = set.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
                let action = set.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
                if data.count_ones() != 1 || action.count_ones() != 1 {
                    return Err(ProtocolError::Invalid(format!(
                        "DEVICE_SET_IRQS flags {:#x}",
                        set.flags
                    )));
                }
                let disable_all = data == VFIO_IRQ_SET_DATA_NONE && set.count == 0;
                let end = set.start.checked_add(set.count);
                if !disable_all && end.is_none_or(|end| end > irq.count) {
                    return Err(ProtocolError::Invalid(format!(
                        "DEVICE_SET_IRQS vectors {}+{} of index {} ({} vectors)",
                        set.start, set.count, set.index, irq.count
                    )));
                }
                match data {
                    // QEMU sends a run of vectors without eventfds (its "-1") to disconnect
                    // them: no descriptors at all is allowed, a partial set is not.
                    VFIO_IRQ_SET_DATA_EVENTFD
                        if !fds.is_empty() && fds.len() != set.count as usize =>
                    {
                        return Err(ProtocolError::Invalid(format!(
                            "DEVICE_SET_IRQS for {} vectors carries {} eventfds",
                            set.count,
                            fds.len()
                        )));
                    }
                    VFIO_IRQ_SET_DATA_BOOL => {
                        return Err(ProtocolError::device(
                            libc::ENOTSUP,
                            "DEVICE_SET_IRQS with boolean data is not supported",
                        ));
                    }
                    _ => {}
                }
                if data != VFIO_IRQ_SET_DATA_EVENTFD {
                    fds.clear();
                }
                self.backend.set_irqs(IrqRequest {
                    index: set.index,
                    flags: set.flags,
                    start: set.start,
                    count: set.count,
                    eventfds: fds,
                })?;
                Ok(Vec::new())
            }
            Command::RegionRead => {
                let access: RegionAccess = parse("REGION_READ", body, true)?;
                self.check_access(&access)?;
                let mut data = vec![0u8; access.count as usize];
                self.backend
                    .region_read(access.region, access.offset, &mut data)?;
                let mut reply = access.as_slice().to_vec();
                reply.extend_from_slice(&data);
                Ok(reply)
            }
            Command::RegionWrite => {
                let access: RegionAccess = parse("REGION_WRITE", body, false)?;
                let data = &body[size_of::<RegionAccess>()..];
                if data.len() != access.count as usize {
                    return Err(ProtocolError::Invalid(format!(
                        "REGION_WRITE of {} bytes carries {}",
                        access.count,
                        data.len()
                    )));
                }
                self.check_access(&access)?;
                self.backend
                    .region_write(access.region, access.offset, data)?;
                Ok(access.as_slice().to_vec())
            }
            Command::DeviceReset => {
                if !body.is_empty() {
                    return Err(ProtocolError::BadLength {
                        command: "DEVICE_RESET",
                        got: body.len(),
                        expected: 0,
                    });
                }
                self.backend.reset()?;
                Ok(Vec::new())
            }
            Command::DeviceGetRegionIoFds
            | Command::DmaRead
            | Command::DmaWrite
            | Command::DirtyPages
            | Command::DeviceFeature
            | Command::MigrationDataRead
            | Command::MigrationDataWrite => Err(ProtocolError::Unsupported(header.command)),
        }
    }

    /// The backend's region `index`, or the error reply for a client that named none.
    fn region(&self, index: u32) -> Result<RegionDescription> {
        self.backend
            .regions()
            .get(index as usize)
            .copied()
            .ok_or_else(|| ProtocolError::Invalid(format!("no region {index}")))
    }

    /// The backend's interrupt index `index`, or the error reply for a client that named none.
    fn irq(&self, index: u32) -> Result<IrqDescription> {
        self.backend
            .irqs()
            .get(index as usize)
            .copied()
            .ok_or_else(|| ProtocolError::Invalid(format!("no interrupt index {index}")))
    }

    /// A region access must name a region and stay inside it, and move at most
    /// [`MAX_DATA_XFER`] bytes.
    fn check_access(&self, access: &RegionAccess) -> Result<()> {
        let region = self.region(access.region)?;
        if access.count as usize > MAX_DATA_XFER {
            return Err(ProtocolError::Invalid(format!(
                "region access of {} bytes (at most {MAX_DATA_XFER})",
                access.count
            )));
        }
        if access.count == 0
            || access
                .offset
                .checked_add(u64::from(access.count))
                .is_none_or(|end| end > region.size)
        {
            return Err(ProtocolError::Invalid(format!(
                "region {} access of {} bytes at {:#x} outside its {:#x} bytes",
                access.region, access.count, access.offset, region.size
            )));
        }
        Ok(())
    }
}

impl<B: DeviceBackend> Drop for Server<B> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads the next header and the file descriptors that came with it; `None` when the client
/// closed the connection between messages.
fn receive_header(
    stream: &UnixStream,
) -> std::result::Result<Option<(Header, Vec<File>)>, ServerError> {
    let mut header = Header::default();
    let mut raw_fds = [0; MAX_MSG_FDS];
    let bytes = header.as_mut_slice();
    let mut iov = [libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    }];
    // SAFETY: the iovec points at `header`, a plain-integer struct that any bytes may fill,
    // and lives until the call returns; `raw_fds` has room for MAX_MSG_FDS descriptors.
    let received = unsafe { stream.recv_with_fds(&mut iov, &mut raw_fds) };
    let (got, nfds) = match received {
        Ok(counts) => counts,
        Err(e) if e.errno() == libc::ECONNRESET => return Ok(None),
        Err(e) => {
            return Err(ServerError::Connection(std::io::Error::from_raw_os_error(
                e.errno(),
            )))
        }
    };
    let fds: Vec<File> = raw_fds[..nfds.min(MAX_MSG_FDS)]
        .iter()
        // SAFETY: the kernel just installed these descriptors for us; nothing else owns them.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    let mut stream = stream;
    let rest = &mut header.as_mut_slice()[got..];
    match stream.read_exact(rest) {
        Ok(()) => Ok(Some((header, fds))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            warn!("vfio-user client closed the connection inside a header");
            Ok(None)
        }
        Err(e) => Err(ServerError::Connection(e)),
    }
}

/// Sends `header` and `body` as one message.
fn send(stream: &UnixStream, header: &Header, body: &[u8]) -> std::result::Result<(), ServerError> {
    let mut message = Vec::with_capacity(HEADER_SIZE + body.len());
    message.extend_from_slice(header.as_slice());
    message.extend_from_slice(body);
    let mut stream = stream;
    stream.write_all(&message).map_err(ServerError::Connection)
}
