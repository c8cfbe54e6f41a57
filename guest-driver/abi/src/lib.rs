//! User-space side of the `/dev/rmnic` ABI: the shared definitions from [`abi`] (the very file
//! the kernel module compiles) plus a safe API over the ioctls: open a context
//! ([`Context::open`]), run device operations on this process's memory ([`Context::copy`],
//! [`Context::fill`], [`Context::fetch_add`], ... or batches with [`Context::submit`] and
//! [`Context::wait`]), read counters ([`Context::stats`]), share memory with other processes
//! as segments ([`Context::export`], [`Context::attach`], then the `_seg` operations or
//! [`command`] with [`Address::Segment`]), and with processes of the other guest on the fabric
//! ([`Context::export_remote`], [`Context::attach_remote`]).

#[path = "abi.rs"]
pub mod abi;
mod user_queue;

pub use user_queue::UserQueue;

pub use abi::{
    opcode, permit, segment_address, status, Command, Completion, ContextStats, ScratchProbe,
    VersionInfo, ABI_VERSION, DRIVER_VERSION, MAX_ATTACHMENTS, MAX_BATCH, SEGMENT_OFFSET_MASK,
};

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

/// How long [`Context::execute`] waits for a completion before reporting `ETIMEDOUT`.
pub const EXECUTE_TIMEOUT_MS: u32 = 30_000;

/// Default path of the rmnic misc device.
pub const DEVICE_PATH: &str = "/dev/rmnic";

/// Errors from talking to `/dev/rmnic`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device node could not be opened.
    #[error("Cannot open {path}")]
    Open {
        /// Path that was opened.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping part of the context's file failed.
    #[error("Cannot map {what}")]
    Mmap {
        /// What was mapped.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An ioctl failed.
    #[error("ioctl {name} failed")]
    Ioctl {
        /// Name of the ioctl.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The errno the open, ioctl or `poll` failed with (`None` if the error carries none), so
    /// callers can tell EACCES from EPERM, ENOENT, ENOSPC, EINVAL.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Open { source, .. } | Self::Ioctl { source, .. } | Self::Mmap { source, .. } => {
                source.raw_os_error()
            }
        }
    }
}

/// A device context: an open file of the rmnic device, bound to the opening process's address
/// space. Commands name that process's virtual addresses; the driver keeps the device TLB
/// coherent with its page tables.
#[derive(Debug)]
pub struct Context {
    pub(crate) file: File,
}

impl AsRawFd for Context {
    /// The context's file, for `poll`/`epoll` (and `mmap`, see [`UserQueue`]).
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// A command that completed with a status other than OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Command {id} failed: {} at {fault_va:#x}", status_name(*status))]
pub struct CommandError {
    /// The command's id.
    pub id: u64,
    /// Device status (see [`status`]).
    pub status: u32,
    /// Faulting address, if any.
    pub fault_va: u64,
}

impl CommandError {
    /// The errno user space conventionally maps this status to: EFAULT for an address with
    /// nothing behind it (unmapped, or beyond the end of an attached segment), EPERM for a
    /// permission fault, ENXIO ("no such device or address") for a segment address whose slot
    /// holds no valid attachment (never attached, detached, segment removed, exporter gone),
    /// EHOSTUNREACH for a remote segment whose guest did not answer, EINVAL for a malformed
    /// command, ECANCELED for an aborted one, EIO otherwise.
    pub fn errno(&self) -> i32 {
        match self.status {
            status::FAULT_UNRESOLVED | status::SEGMENT_BOUNDS => libc::EFAULT,
            status::PERMISSION => libc::EPERM,
            status::SEGMENT_INVALID => libc::ENXIO,
            status::REMOTE_UNREACHABLE => libc::EHOSTUNREACH,
            status::ALIGNMENT | status::INVALID_OPCODE | status::INVALID_ARGUMENT => libc::EINVAL,
            status::ABORTED => libc::ECANCELED,
            _ => libc::EIO,
        }
    }
}

/// Human name of a completion status.
pub fn status_name(status: u32) -> &'static str {
    match status {
        status::OK => "ok",
        status::FAULT_UNRESOLVED => "translation fault unresolved",
        status::PERMISSION => "permission denied",
        status::DEVICE_ERROR => "device error",
        status::INVALID_OPCODE => "invalid opcode",
        status::ABORTED => "aborted",
        status::ALIGNMENT => "misaligned",
        status::INVALID_ARGUMENT => "invalid argument",
        status::SEGMENT_INVALID => "no valid segment attachment",
        status::SEGMENT_BOUNDS => "beyond the segment",
        status::REMOTE_UNREACHABLE => "remote segment's guest unreachable",
        _ => "unknown status",
    }
}

/// [`abi::SegmentExport::flags`] or [`abi::SegmentAttach::flags`] for a segment (or an
/// attachment) that is `writable` and, with `remote`, shared with the other guest on the fabric.
fn segment_flags(writable: bool, remote: bool) -> u32 {
    let mut flags = 0;
    if writable {
        flags |= abi::SEGMENT_WRITABLE;
    }
    if remote {
        flags |= abi::SEGMENT_REMOTE;
    }
    flags
}

/// An address a command names: a virtual address of the calling process, or a segment address
/// ([`segment_address`], [`Attachment::address`]) resolved in the exporter's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    /// A virtual address of the process that owns the context.
    Local(u64),
    /// A segment address: attachment slot in bits 63:56, offset into the segment below.
    Segment(u64),
}

impl Address {
    /// The value that goes in the command's address field.
    pub fn value(self) -> u64 {
        match self {
            Self::Local(va) | Self::Segment(va) => va,
        }
    }

    fn is_segment(self) -> bool {
        matches!(self, Self::Segment(_))
    }
}

/// A command of `opcode` on `addr0` (and `addr1`, the source of a COPY; otherwise unused)
/// with the segment flags the two addresses need. Length and operands are left zero for the
/// caller to set (`Command { length, ..command(...) }`); the id is zero.
pub fn command(opcode: u8, addr0: Address, addr1: Address) -> Command {
    let mut flags = 0;
    if addr0.is_segment() {
        flags |= abi::CMD_FLAG_SEGMENT_ADDR0;
    }
    if addr1.is_segment() {
        flags |= abi::CMD_FLAG_SEGMENT_ADDR1;
    }
    Command {
        opcode,
        flags,
        addr0: addr0.value(),
        addr1: addr1.value(),
        ..Command::default()
    }
}

/// A segment attached to a context ([`Context::attach`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The attachment slot (below [`MAX_ATTACHMENTS`]).
    pub slot: u32,
    /// The segment's length in bytes.
    pub length: u64,
}

impl Attachment {
    /// The segment address of byte `offset` of the segment (not checked against its length:
    /// the device answers [`status::SEGMENT_BOUNDS`]).
    pub fn address(&self, offset: u64) -> u64 {
        segment_address(self.slot, offset)
    }
}

impl Context {
    /// Opens [`DEVICE_PATH`].
    pub fn open() -> Result<Self, Error> {
        Self::open_path(Path::new(DEVICE_PATH))
    }

    /// Opens the device node at `path`.
    pub fn open_path(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self { file })
    }

    /// Asks the driver who it is and which device it drives.
    pub fn version(&self) -> Result<VersionInfo, Error> {
        let mut info = VersionInfo::default();
        self.ioctl("RMNIC_IOC_VERSION", abi::IOC_VERSION, &mut info)?;
        Ok(info)
    }

    /// Writes `value` to the device scratch register and returns what the driver read back.
    pub fn scratch_round_trip(&self, value: u32) -> Result<u32, Error> {
        let mut probe = ScratchProbe { value, readback: 0 };
        self.ioctl("RMNIC_IOC_SCRATCH", abi::IOC_SCRATCH, &mut probe)?;
        Ok(probe.readback)
    }

    /// Queues `commands`; returns how many the device queue accepted.
    pub fn submit(&self, commands: &[Command]) -> Result<usize, Error> {
        let mut arg = abi::Submit {
            commands: commands.as_ptr() as u64,
            count: u32::try_from(commands.len()).unwrap_or(u32::MAX),
            queued: 0,
        };
        self.ioctl("RMNIC_IOC_SUBMIT", abi::IOC_SUBMIT, &mut arg)?;
        Ok(arg.queued as usize)
    }

    /// Collects up to `out.len()` completions, blocking until at least `min` are there or
    /// `timeout_ms` passed (0: no limit). Returns how many were written.
    pub fn wait(&self, out: &mut [Completion], min: u32, timeout_ms: u32) -> Result<usize, Error> {
        let mut arg = abi::Wait {
            completions: out.as_mut_ptr() as u64,
            max: u32::try_from(out.len()).unwrap_or(u32::MAX),
            min,
            timeout_ms,
            count: 0,
        };
        self.ioctl("RMNIC_IOC_WAIT", abi::IOC_WAIT, &mut arg)?;
        Ok(arg.count as usize)
    }

    /// Waits up to `timeout_ms` for completions to collect, with `poll(2)` on the context's
    /// file; returns whether some are ready.
    pub fn poll_ready(&self, timeout_ms: i32) -> Result<bool, Error> {
        let mut fd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
        if rc < 0 {
            return Err(Error::Ioctl {
                name: "poll",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(rc > 0 && fd.revents & libc::POLLIN != 0)
    }

    /// Takes the context's command queue into this process (ABI 6, device 1.5): commands are
    /// then posted through the returned [`UserQueue`] with no system call, and
    /// [`Self::submit`] and [`Self::wait`] fail with `EINVAL` for the rest of the context's
    /// life. `ENOTTY` on a device without inline queues, `EBUSY` while commands submitted with
    /// [`Self::submit`] are outstanding.
    pub fn user_queue(&self) -> Result<UserQueue<'_>, Error> {
        UserQueue::open(self)
    }

    /// This context's counters.
    pub fn stats(&self) -> Result<ContextStats, Error> {
        let mut stats = ContextStats::default();
        self.ioctl("RMNIC_IOC_STATS", abi::IOC_STATS, &mut stats)?;
        Ok(stats)
    }

    /// Runs one command to completion (giving up after [`EXECUTE_TIMEOUT_MS`]) and returns its
    /// completion record.
    pub fn execute(&self, command: Command) -> Result<Result<Completion, CommandError>, Error> {
        let queued = self.submit(std::slice::from_ref(&command))?;
        if queued != 1 {
            return Err(Error::Ioctl {
                name: "RMNIC_IOC_SUBMIT",
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            });
        }
        let mut out = [Completion::default()];
        let n = self.wait(&mut out, 1, EXECUTE_TIMEOUT_MS)?;
        if n != 1 {
            return Err(Error::Ioctl {
                name: "RMNIC_IOC_WAIT",
                source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            });
        }
        let done = out[0];
        Ok(if done.status == status::OK {
            Ok(done)
        } else {
            Err(CommandError {
                id: done.id,
                status: done.status,
                fault_va: done.fault_va,
            })
        })
    }

    /// Device COPY of `len` bytes from `src` to `dst` (addresses in this process).
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<Result<(), CommandError>, Error> {
        self.copy_between(Address::Local(dst), Address::Local(src), len)
    }

    /// Device FILL of `len` bytes at `dst` with `pattern`.
    pub fn fill(
        &self,
        dst: u64,
        len: u64,
        pattern: u64,
    ) -> Result<Result<(), CommandError>, Error> {
        self.fill_at(Address::Local(dst), len, pattern)
    }

    /// Device 64-bit read at `addr`.
    pub fn read64(&self, addr: u64) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::READ64, Address::Local(addr), 0, 0)
    }

    /// Device 64-bit write of `value` at `addr`.
    pub fn write64(&self, addr: u64, value: u64) -> Result<Result<(), CommandError>, Error> {
        Ok(self
            .word_op(opcode::WRITE64, Address::Local(addr), value, 0)?
            .map(|_| ()))
    }

    /// Device atomic fetch-and-add; returns the old value.
    pub fn fetch_add(&self, addr: u64, addend: u64) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::FETCH_ADD, Address::Local(addr), addend, 0)
    }

    /// Device atomic compare-and-swap; returns the old value.
    pub fn cas(
        &self,
        addr: u64,
        expect: u64,
        new: u64,
    ) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::CAS, Address::Local(addr), expect, new)
    }

    /// Device atomic swap; returns the old value.
    pub fn swap(&self, addr: u64, value: u64) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::SWAP, Address::Local(addr), value, 0)
    }

    /// Device fence: completes after every earlier command of this context.
    pub fn fence(&self) -> Result<Result<(), CommandError>, Error> {
        Ok(self
            .word_op(opcode::FENCE, Address::Local(0), 0, 0)?
            .map(|_| ()))
    }

    /// Exports `[va, va + length)` of this process as a segment other contexts can attach
    /// with the [`permit`] bits `permit_mode`; `writable: false` makes a read-only segment.
    /// Returns the segment id. The driver checks the arguments (EINVAL: unaligned, empty,
    /// wrapping or beyond user space, bad mode bits; ENOSPC: the device's export table is
    /// full).
    pub fn export(
        &self,
        va: u64,
        length: u64,
        writable: bool,
        permit_mode: u32,
    ) -> Result<u64, Error> {
        self.export_flags(va, length, segment_flags(writable, false), permit_mode)
    }

    /// Exports `[va, va + length)` as [`Context::export`] does, and to the other guest on the
    /// fabric too ([`abi::SEGMENT_REMOTE`]): its processes attach the segment with
    /// [`Context::attach_remote`] and this segment id, and only the [`permit`]`::OTHER_*` bits
    /// apply to them (EINVAL without [`permit::OTHER_READ`], or without
    /// [`permit::OTHER_WRITE`] when `writable`).
    pub fn export_remote(
        &self,
        va: u64,
        length: u64,
        writable: bool,
        permit_mode: u32,
    ) -> Result<u64, Error> {
        self.export_flags(va, length, segment_flags(writable, true), permit_mode)
    }

    fn export_flags(
        &self,
        va: u64,
        length: u64,
        flags: u32,
        permit_mode: u32,
    ) -> Result<u64, Error> {
        let mut arg = abi::SegmentExport {
            va,
            length,
            flags,
            permit_mode,
            segid: 0,
        };
        self.ioctl("RMNIC_IOC_EXPORT", abi::IOC_EXPORT, &mut arg)?;
        Ok(arg.segid)
    }

    /// Removes segment `segid`, which this context exported (else ENOENT); importers' next
    /// accesses through it complete [`status::SEGMENT_INVALID`].
    pub fn remove_segment(&self, segid: u64) -> Result<(), Error> {
        let mut arg = segid;
        self.ioctl("RMNIC_IOC_REMOVE", abi::IOC_REMOVE, &mut arg)
    }

    /// Attaches segment `segid` to this context, for reading and, with `writable`, writing.
    /// Errors: ENOENT (no such segment), EACCES (the segment's mode refuses this process's
    /// credentials), EPERM (`writable` on a read-only segment), ENOSPC (every slot in use).
    pub fn attach(&self, segid: u64, writable: bool) -> Result<Attachment, Error> {
        self.attach_flags(segid, segment_flags(writable, false))
    }

    /// Attaches segment `segid` of the other guest on the fabric (exported there with
    /// [`Context::export_remote`]; the id is learnt out of band). Errors as for
    /// [`Context::attach`], checked by the exporting guest against the segment's
    /// [`permit`]`::OTHER_*` bits; commands through the attachment may also complete
    /// [`status::REMOTE_UNREACHABLE`].
    pub fn attach_remote(&self, segid: u64, writable: bool) -> Result<Attachment, Error> {
        self.attach_flags(segid, segment_flags(writable, true))
    }

    fn attach_flags(&self, segid: u64, flags: u32) -> Result<Attachment, Error> {
        let mut arg = abi::SegmentAttach {
            segid,
            flags,
            ..abi::SegmentAttach::default()
        };
        self.ioctl("RMNIC_IOC_ATTACH", abi::IOC_ATTACH, &mut arg)?;
        Ok(Attachment {
            slot: arg.slot,
            length: arg.length,
        })
    }

    /// Detaches the attachment at `slot` (EINVAL: no such slot; ENOENT: the slot is empty).
    /// A slot whose segment was revoked stays occupied until detached.
    pub fn detach(&self, slot: u32) -> Result<(), Error> {
        let mut arg = slot;
        self.ioctl("RMNIC_IOC_DETACH", abi::IOC_DETACH, &mut arg)
    }

    /// Sets this context's fault-ahead window to `pages` (1..=`MAX_FAULT_AHEAD`; 1: off;
    /// EINVAL otherwise).
    pub fn set_fault_ahead(&self, pages: u32) -> Result<(), Error> {
        let mut arg = pages;
        self.ioctl("RMNIC_IOC_FAULT_AHEAD", abi::IOC_FAULT_AHEAD, &mut arg)
    }

    /// Device COPY of `len` bytes from segment address `src` to `dst` in this process.
    pub fn copy_from_segment(
        &self,
        dst: u64,
        src: u64,
        len: u64,
    ) -> Result<Result<(), CommandError>, Error> {
        self.copy_between(Address::Local(dst), Address::Segment(src), len)
    }

    /// Device COPY of `len` bytes from `src` in this process to segment address `dst`.
    pub fn copy_to_segment(
        &self,
        dst: u64,
        src: u64,
        len: u64,
    ) -> Result<Result<(), CommandError>, Error> {
        self.copy_between(Address::Segment(dst), Address::Local(src), len)
    }

    /// Device FILL of `len` bytes at segment address `dst` with `pattern`.
    pub fn fill_seg(
        &self,
        dst: u64,
        len: u64,
        pattern: u64,
    ) -> Result<Result<(), CommandError>, Error> {
        self.fill_at(Address::Segment(dst), len, pattern)
    }

    /// Device 64-bit read at segment address `addr`.
    pub fn read64_seg(&self, addr: u64) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::READ64, Address::Segment(addr), 0, 0)
    }

    /// Device 64-bit write of `value` at segment address `addr`.
    pub fn write64_seg(&self, addr: u64, value: u64) -> Result<Result<(), CommandError>, Error> {
        Ok(self
            .word_op(opcode::WRITE64, Address::Segment(addr), value, 0)?
            .map(|_| ()))
    }

    /// Device atomic fetch-and-add at segment address `addr`; returns the old value.
    pub fn fetch_add_seg(
        &self,
        addr: u64,
        addend: u64,
    ) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::FETCH_ADD, Address::Segment(addr), addend, 0)
    }

    /// Device atomic compare-and-swap at segment address `addr`; returns the old value.
    pub fn cas_seg(
        &self,
        addr: u64,
        expect: u64,
        new: u64,
    ) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::CAS, Address::Segment(addr), expect, new)
    }

    /// Device COPY of `len` bytes between any two addresses.
    pub fn copy_between(
        &self,
        dst: Address,
        src: Address,
        len: u64,
    ) -> Result<Result<(), CommandError>, Error> {
        let cmd = Command {
            length: len,
            ..command(opcode::COPY, dst, src)
        };
        Ok(self.execute(cmd)?.map(|_| ()))
    }

    /// Device FILL of `len` bytes at any address with `pattern`.
    pub fn fill_at(
        &self,
        dst: Address,
        len: u64,
        pattern: u64,
    ) -> Result<Result<(), CommandError>, Error> {
        let cmd = Command {
            length: len,
            operand0: pattern,
            ..command(opcode::FILL, dst, Address::Local(0))
        };
        Ok(self.execute(cmd)?.map(|_| ()))
    }

    /// A one-word command (READ64, WRITE64, the atomics, FENCE) at any address; returns the
    /// completion's result.
    pub fn word_op(
        &self,
        op: u8,
        addr: Address,
        operand0: u64,
        operand1: u64,
    ) -> Result<Result<u64, CommandError>, Error> {
        let cmd = Command {
            operand0,
            operand1,
            ..command(op, addr, Address::Local(0))
        };
        Ok(self.execute(cmd)?.map(|c| c.result))
    }

    pub(crate) fn ioctl<T>(
        &self,
        name: &'static str,
        request: u32,
        arg: &mut T,
    ) -> Result<(), Error> {
        // SAFETY: `request` encodes the size of `T` (see `abi`), so the driver reads and writes
        // at most `size_of::<T>()` bytes through the pointer, which is valid and exclusive for
        // the duration of the call.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::Ioctl::from(request),
                std::ptr::from_mut(arg),
            )
        };
        if rc < 0 {
            return Err(Error::Ioctl {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::abi;

    #[test]
    fn ioctl_numbers_match_linux_encoding() {
        // _IOR('r', 0, 24-byte struct) and _IOWR('r', 1, 8-byte struct), computed by hand from
        // include/uapi/asm-generic/ioctl.h.
        assert_eq!(std::mem::size_of::<abi::VersionInfo>(), 24);
        assert_eq!(abi::IOC_VERSION, 0x8018_7200);
        assert_eq!(std::mem::size_of::<abi::ScratchProbe>(), 8);
        assert_eq!(abi::IOC_SCRATCH, 0xc008_7201);
        assert_eq!(std::mem::size_of::<abi::Command>(), 56);
        assert_eq!(std::mem::size_of::<abi::Completion>(), 32);
        assert_eq!(std::mem::size_of::<abi::Submit>(), 16);
        assert_eq!(abi::IOC_SUBMIT, 0xc010_7202);
        assert_eq!(std::mem::size_of::<abi::Wait>(), 24);
        assert_eq!(abi::IOC_WAIT, 0xc018_7203);
        assert_eq!(std::mem::size_of::<abi::ContextStats>(), 80);
        assert_eq!(abi::IOC_STATS, 0x8050_7204);
        // _IOWR('r', 5, 32), _IOW('r', 6, 8), _IOWR('r', 7, 24), _IOW('r', 8, 4).
        assert_eq!(std::mem::size_of::<abi::SegmentExport>(), 32);
        assert_eq!(abi::IOC_EXPORT, 0xc020_7205);
        assert_eq!(abi::IOC_REMOVE, 0x4008_7206);
        assert_eq!(std::mem::size_of::<abi::SegmentAttach>(), 24);
        assert_eq!(abi::IOC_ATTACH, 0xc018_7207);
        assert_eq!(abi::IOC_DETACH, 0x4004_7208);
        // _IOW('r', 9, 4).
        assert_eq!(abi::IOC_FAULT_AHEAD, 0x4004_7209);
    }

    #[test]
    fn command_sets_the_segment_flag_of_each_segment_address() {
        use super::{command, opcode, Address};
        let both = command(
            opcode::COPY,
            Address::Segment(abi::segment_address(2, 8)),
            Address::Segment(abi::segment_address(3, 16)),
        );
        assert_eq!(
            both.flags,
            abi::CMD_FLAG_SEGMENT_ADDR0 | abi::CMD_FLAG_SEGMENT_ADDR1
        );
        assert_eq!((both.addr0, both.addr1), (2 << 56 | 8, 3 << 56 | 16));
        let from_segment = command(
            opcode::COPY,
            Address::Local(0x1000),
            Address::Segment(abi::segment_address(1, 0)),
        );
        assert_eq!(from_segment.flags, abi::CMD_FLAG_SEGMENT_ADDR1);
        let local = command(opcode::READ64, Address::Local(0x2000), Address::Local(0));
        assert_eq!(local.flags, 0);
    }

    #[test]
    fn attachment_address_puts_the_slot_above_the_offset() {
        let att = super::Attachment {
            slot: 7,
            length: 4096,
        };
        assert_eq!(att.address(0x123), 0x0700_0000_0000_0123);
        // The offset is masked to 56 bits: it cannot spill into the slot.
        assert_eq!(att.address(u64::MAX) >> 56, 7);
    }

    #[test]
    fn segment_statuses_have_names_and_errnos() {
        use super::{status, status_name, CommandError};
        let err = |status| CommandError {
            id: 0,
            status,
            fault_va: 0,
        };
        assert_eq!(err(status::SEGMENT_INVALID).errno(), libc::ENXIO);
        assert_eq!(err(status::SEGMENT_BOUNDS).errno(), libc::EFAULT);
        assert_ne!(status_name(status::SEGMENT_INVALID), "unknown status");
        assert_ne!(status_name(status::SEGMENT_BOUNDS), "unknown status");
        assert_eq!(err(status::REMOTE_UNREACHABLE).errno(), libc::EHOSTUNREACH);
        assert_ne!(status_name(status::REMOTE_UNREACHABLE), "unknown status");
    }

    #[test]
    fn remote_segments_set_the_remote_flag_next_to_writable() {
        use super::segment_flags;
        assert_eq!(segment_flags(false, false), 0);
        assert_eq!(segment_flags(true, false), abi::SEGMENT_WRITABLE);
        assert_eq!(segment_flags(false, true), abi::SEGMENT_REMOTE);
        assert_eq!(
            segment_flags(true, true),
            abi::SEGMENT_WRITABLE | abi::SEGMENT_REMOTE
        );
    }
}
