//! User-space side of the `/dev/rmnic` ABI: the shared definitions from [`abi`] (the very file
//! the kernel module compiles) plus safe wrappers that issue the ioctls.

#[path = "abi.rs"]
pub mod abi;

pub use abi::{ScratchProbe, VersionInfo, ABI_VERSION, DRIVER_VERSION};

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

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

/// An open handle on the rmnic device.
#[derive(Debug)]
pub struct Device {
    file: File,
}

impl Device {
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
    }
}
