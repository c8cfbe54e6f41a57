//! Guest RAM: one memfd sized to the whole RAM, mapped shared as one `vm-memory` region
//! per [`RamRegion`]. File-backed (not anonymous) so that later work can hand the same
//! pages to another process or device model.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::boot::layout::RamRegion;

/// The guest memory type used throughout the VMM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("Cannot create the guest memory file")]
    Memfd(#[source] std::io::Error),
    /// ftruncate of the memfd failed.
    #[error("Cannot size the guest memory file to {0} bytes")]
    Resize(u64, #[source] std::io::Error),
    /// mmap or region bookkeeping failed.
    #[error("Cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// A region does not fit the host's address width.
    #[error("Guest memory region {0:#x}+{1:#x} is too large for this host")]
    TooLarge(u64, u64),
}

/// Guest RAM and the file that backs it.
pub struct GuestRam {
    /// The mapped regions.
    pub memory: GuestMemory,
    /// The memfd holding every region back to back (offset 0 = first region).
    pub file: Arc<File>,
}

/// Creates memfd-backed RAM for `regions`.
pub fn create_guest_ram(regions: &[RamRegion]) -> Result<GuestRam, MemoryError> {
    let file = Arc::new(memfd(c"rmnic-guest-ram")?);
    let total: u64 = regions.iter().map(|r| r.len).sum();
    file.set_len(total)
        .map_err(|e| MemoryError::Resize(total, e))?;
    // Sealed at its size: a process it is shared with (a vfio-user device server) can rely
    // on the mapping staying valid, and refuses files that are not sealed.
    // SAFETY: F_ADD_SEALS on the memfd just created (with MFD_ALLOW_SEALING); checked.
    let sealed = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&*file),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    if sealed != 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    let mut offset = 0u64;
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let len = usize::try_from(r.len).map_err(|_| MemoryError::TooLarge(r.start, r.len))?;
        let fo = FileOffset::from_arc(file.clone(), offset);
        mapped.push(
            GuestRegionMmap::from_range(GuestAddress(r.start), len, Some(fo))
                .map_err(MemoryError::Map)?,
        );
        offset += r.len;
    }
    let memory = GuestMemoryMmap::from_regions(mapped)
        .map_err(|e| MemoryError::Map(vm_memory::mmap::FromRangesError::Collection(e)))?;
    Ok(GuestRam { memory, file })
}

/// An anonymous, close-on-exec memory file.
fn memfd(name: &CStr) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the flags
    // are valid for memfd_create and the result is checked before use.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::ram_regions;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_file_backed_and_shared() {
        let ram = create_guest_ram(&ram_regions(4 << 20)).expect("ram");
        ram.memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .expect("write");
        // The write is visible through the file: the mapping is shared, not private.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&*ram.file, &mut buf, 0x1000).expect("pread");
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert!(ram.memory.iter().all(|r| r.file_offset().is_some()));
    }

    #[test]
    fn regions_follow_the_layout() {
        let regions = [
            RamRegion {
                start: 0,
                len: 1 << 20,
            },
            RamRegion {
                start: 1 << 32,
                len: 1 << 20,
            },
        ];
        let ram = create_guest_ram(&regions).expect("ram");
        assert_eq!(ram.memory.num_regions(), 2);
        assert!(ram.memory.address_in_range(GuestAddress((1 << 32) + 5)));
        assert!(!ram.memory.address_in_range(GuestAddress(2 << 20)));
    }
}
