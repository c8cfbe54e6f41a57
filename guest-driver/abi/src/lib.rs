//! User-space side of the `/dev/rmnic` ABI: the shared definitions from [`abi`] (the very file
//! the kernel module compiles) plus a safe API over the ioctls: open a context
//! ([`Context::open`]), run device operations on this process's memory ([`Context::copy`],
//! [`Context::fill`], [`Context::fetch_add`], ... or batches with [`Context::submit`] and
//! [`Context::wait`]), read counters ([`Context::stats`]).

#[path = "abi.rs"]
pub mod abi;

pub use abi::{
    opcode, status, Command, Completion, ContextStats, ScratchProbe, VersionInfo, ABI_VERSION,
    DRIVER_VERSION, MAX_BATCH,
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

/// A device context: an open file of the rmnic device, bound to the opening process's address
/// space. Commands name that process's virtual addresses; the driver keeps the device TLB
/// coherent with its page tables.
#[derive(Debug)]
pub struct Context {
    file: File,
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
    /// The errno user space conventionally maps this status to (EFAULT for an unmapped
    /// address, EPERM for a permission fault, EIO otherwise).
    pub fn errno(&self) -> i32 {
        match self.status {
            status::FAULT_UNRESOLVED => libc::EFAULT,
            status::PERMISSION => libc::EPERM,
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
        _ => "unknown status",
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
        let cmd = Command {
            opcode: opcode::COPY,
            addr0: dst,
            addr1: src,
            length: len,
            ..Command::default()
        };
        Ok(self.execute(cmd)?.map(|_| ()))
    }

    /// Device FILL of `len` bytes at `dst` with `pattern`.
    pub fn fill(
        &self,
        dst: u64,
        len: u64,
        pattern: u64,
    ) -> Result<Result<(), CommandError>, Error> {
        let cmd = Command {
            opcode: opcode::FILL,
            addr0: dst,
            length: len,
            operand0: pattern,
            ..Command::default()
        };
        Ok(self.execute(cmd)?.map(|_| ()))
    }

    /// Device 64-bit read at `addr`.
    pub fn read64(&self, addr: u64) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::READ64, addr, 0, 0)
    }

    /// Device 64-bit write of `value` at `addr`.
    pub fn write64(&self, addr: u64, value: u64) -> Result<Result<(), CommandError>, Error> {
        Ok(self.word_op(opcode::WRITE64, addr, value, 0)?.map(|_| ()))
    }

    /// Device atomic fetch-and-add; returns the old value.
    pub fn fetch_add(&self, addr: u64, addend: u64) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::FETCH_ADD, addr, addend, 0)
    }

    /// Device atomic compare-and-swap; returns the old value.
    pub fn cas(
        &self,
        addr: u64,
        expect: u64,
        new: u64,
    ) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::CAS, addr, expect, new)
    }

    /// Device atomic swap; returns the old value.
    pub fn swap(&self, addr: u64, value: u64) -> Result<Result<u64, CommandError>, Error> {
        self.word_op(opcode::SWAP, addr, value, 0)
    }

    /// Device fence: completes after every earlier command of this context.
    pub fn fence(&self) -> Result<Result<(), CommandError>, Error> {
        Ok(self.word_op(opcode::FENCE, 0, 0, 0)?.map(|_| ()))
    }

    fn word_op(
        &self,
        op: u8,
        addr: u64,
        operand0: u64,
        operand1: u64,
    ) -> Result<Result<u64, CommandError>, Error> {
        let cmd = Command {
            opcode: op,
            addr0: addr,
            operand0,
            operand1,
            ..Command::default()
        };
        Ok(self.execute(cmd)?.map(|c| c.result))
    }

    fn ioctl<T>(&self, name: &'static str, request: u32, arg: &mut T) -> Result<(), Error> {
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
    }
}
