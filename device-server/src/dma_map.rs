//! The client's memory as the device sees it: the ranges the client shared with `DMA_MAP`,
//! each mapped from the file descriptor that came with it, assembled into the vm-memory
//! [`GuestRam`] the device model reaches guest memory through.
//!
//! Every device access goes through that `GuestRam`, whose bounds checks (vm-memory's) keep
//! it inside the ranges mapped here: an address the client never mapped, or unmapped since,
//! is a failed DMA for the device, never a stray access in this process. Only ranges the
//! device can use safely become reachable: shared with a descriptor, readable and writable
//! (vm-memory does not check page protections, so a device write into a read-only mapping
//! would kill the server), and sealed against shrinking (a file the client truncates later
//! would turn the next access into SIGBUS). Other ranges are recorded, so their unmap is
//! accepted, but the device cannot reach them: its accesses there fail as DMA errors.

use std::fs::File;
use std::sync::Arc;

use rmnic_device::GuestRam;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

use crate::protocol::{ProtocolError, Result};

/// One `DMA_MAP` request.
#[derive(Debug)]
pub struct DmaMapping {
    /// DMA (guest-physical) address.
    pub address: u64,
    /// Bytes.
    pub size: u64,
    /// The device may read it.
    pub readable: bool,
    /// The device may write it.
    pub writable: bool,
    /// The memory, if the client shared it; `None` means the client would serve accesses with
    /// DMA_READ/DMA_WRITE messages, which this server does not use.
    pub file: Option<File>,
    /// Offset of the range in `file`.
    pub offset: u64,
}

/// A mapped range.
#[derive(Debug)]
struct Mapped {
    address: u64,
    size: u64,
    /// `None` for a range the client did not share a descriptor for: recorded so its unmap
    /// is accepted, but the device cannot reach it.
    region: Option<Arc<GuestRegionMmap>>,
}

/// The client's DMA ranges.
#[derive(Debug, Default)]
pub struct DmaMappings {
    ranges: Vec<Mapped>,
}

/// Most ranges at once (QEMU maps one per RAM section: a handful).
pub const MAX_DMA_MAPS: usize = 1024;

impl DmaMappings {
    /// No ranges.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `mapping`, mapping its file into this process. Refuses empty, wrapping,
    /// overlapping or unmappable ranges.
    pub fn map(&mut self, mapping: DmaMapping) -> Result<()> {
        let end = mapping
            .address
            .checked_add(mapping.size)
            .filter(|_| mapping.size > 0)
            .ok_or_else(|| {
                ProtocolError::Invalid(format!(
                    "DMA_MAP of {:#x} bytes at {:#x} is empty or wraps",
                    mapping.size, mapping.address
                ))
            })?;
        if self.ranges.len() >= MAX_DMA_MAPS {
            return Err(ProtocolError::device(
                libc::ENOSPC,
                format!("more than {MAX_DMA_MAPS} DMA ranges"),
            ));
        }
        if let Some(other) = self
            .ranges
            .iter()
            .find(|r| mapping.address < r.address + r.size && r.address < end)
        {
            return Err(ProtocolError::device(
                libc::EEXIST,
                format!(
                    "DMA_MAP {:#x}..{end:#x} overlaps {:#x}..{:#x}",
                    mapping.address,
                    other.address,
                    other.address + other.size
                ),
            ));
        }
        let region = match mapping.file {
            Some(file) if mapping.readable && mapping.writable => Some(Arc::new(Self::mmap(
                file,
                mapping.offset,
                mapping.address,
                mapping.size,
            )?)),
            // Without a descriptor, or read-only (QEMU's ROM and BIOS ranges): recorded,
            // unreachable.
            _ => None,
        };
        self.ranges.push(Mapped {
            address: mapping.address,
            size: mapping.size,
            region,
        });
        self.ranges.sort_by_key(|r| r.address);
        Ok(())
    }

    fn mmap(file: File, offset: u64, address: u64, size: u64) -> Result<GuestRegionMmap> {
        let len = usize::try_from(size)
            .map_err(|_| ProtocolError::Invalid(format!("DMA range of {size:#x} bytes")))?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(ProtocolError::Invalid(format!(
                "DMA_MAP of {size:#x} bytes at file offset {offset:#x} is beyond the file's \
                 {file_len:#x} bytes"
            )));
        }
        // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own; the result is
        // checked.
        let seals =
            unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(ProtocolError::Invalid(
                "DMA_MAP of a file that is not sealed against shrinking (F_SEAL_SHRINK; \
                 QEMU's memory-backend-memfd seals by default)"
                    .into(),
            ));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let region = MmapRegion::<()>::build(
            Some(FileOffset::new(file, offset)),
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(|e| ProtocolError::device(libc::ENOMEM, format!("mmap of a DMA range: {e}")))?;
        GuestRegionMmap::new(region, GuestAddress(address)).ok_or_else(|| {
            ProtocolError::Invalid(format!("DMA range at {address:#x} wraps the address space"))
        })
    }

    /// Removes the ranges inside `address..address + size`. A range only partly inside is
    /// refused (`EINVAL`), as is a request that matches nothing (`ENOENT`).
    pub fn unmap(&mut self, address: u64, size: u64) -> Result<usize> {
        let end = address.checked_add(size).ok_or_else(|| {
            ProtocolError::Invalid(format!(
                "DMA_UNMAP of {size:#x} bytes at {address:#x} wraps"
            ))
        })?;
        if let Some(partial) = self.ranges.iter().find(|r| {
            let r_end = r.address + r.size;
            let overlaps = r.address < end && address < r_end;
            let inside = address <= r.address && r_end <= end;
            overlaps && !inside
        }) {
            return Err(ProtocolError::Invalid(format!(
                "DMA_UNMAP {address:#x}..{end:#x} cuts the mapped range {:#x}..{:#x}",
                partial.address,
                partial.address + partial.size
            )));
        }
        let before = self.ranges.len();
        self.ranges
            .retain(|r| !(address <= r.address && r.address + r.size <= end));
        let removed = before - self.ranges.len();
        if removed == 0 {
            return Err(ProtocolError::device(
                libc::ENOENT,
                format!("DMA_UNMAP {address:#x}..{end:#x} matches no mapped range"),
            ));
        }
        Ok(removed)
    }

    /// Removes every range.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Number of ranges (shared or not).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no range is mapped.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The shared ranges as guest memory for the device.
    pub fn guest_ram(&self) -> Result<GuestRam> {
        let regions: Vec<Arc<GuestRegionMmap>> = self
            .ranges
            .iter()
            .filter_map(|r| r.region.clone())
            .collect();
        if regions.is_empty() {
            return Ok(GuestRam::new());
        }
        GuestRam::from_arc_regions(regions)
            .map_err(|e| ProtocolError::Invalid(format!("DMA ranges: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    fn memfd(len: usize, fill: u8) -> File {
        let name = std::ffi::CString::new("dma-test").expect("name");
        // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: fd was just created and is owned by nothing else.
        let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.write_all(&vec![fill; len]).expect("fill");
        seal(&file);
        file
    }

    fn seal(file: &File) {
        // SAFETY: F_ADD_SEALS on a memfd we own; the result is checked.
        let rc = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(file),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        };
        assert_eq!(rc, 0, "seal");
    }

    #[test]
    fn unsealed_files_are_refused_and_read_only_ranges_are_unreachable() {
        let mut maps = DmaMappings::new();
        let name = std::ffi::CString::new("unsealed").expect("name");
        // SAFETY: as in `memfd`.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor.
        let unsealed = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        unsealed.set_len(0x1000).expect("size");
        assert_eq!(
            maps.map(mapping(0, 0x1000, Some(unsealed)))
                .map_err(|e| e.errno()),
            Err(libc::EINVAL)
        );
        let mut read_only = mapping(0x1000, 0x1000, Some(memfd(0x1000, 7)));
        read_only.writable = false;
        maps.map(read_only).expect("recorded");
        assert_eq!(maps.len(), 1);
        assert_eq!(maps.guest_ram().expect("ram").num_regions(), 0);
    }

    fn mapping(address: u64, size: u64, file: Option<File>) -> DmaMapping {
        DmaMapping {
            address,
            size,
            readable: true,
            writable: true,
            file,
            offset: 0,
        }
    }

    #[test]
    fn mapped_ranges_become_guest_memory() {
        let mut maps = DmaMappings::new();
        maps.map(mapping(0x10000, 0x2000, Some(memfd(0x2000, 0xaa))))
            .expect("map");
        maps.map(mapping(0x0, 0x1000, Some(memfd(0x1000, 0x55))))
            .expect("map");
        let ram = maps.guest_ram().expect("ram");
        assert_eq!(ram.num_regions(), 2);
        let mut byte = [0u8; 1];
        ram.read_slice(&mut byte, GuestAddress(0x10fff))
            .expect("read");
        assert_eq!(byte[0], 0xaa);
        ram.read_slice(&mut byte, GuestAddress(0x0)).expect("read");
        assert_eq!(byte[0], 0x55);
        assert!(ram.read_slice(&mut byte, GuestAddress(0x2000)).is_err());
        assert!(ram.read_slice(&mut byte, GuestAddress(0x12000)).is_err());
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut maps = DmaMappings::new();
        maps.map(mapping(0x10000, 0x2000, Some(memfd(0x2000, 0))))
            .expect("map");
        let errno = |r: Result<()>| r.map_err(|e| e.errno());
        assert_eq!(
            errno(maps.map(mapping(0x11000, 0x2000, Some(memfd(0x2000, 0))))),
            Err(libc::EEXIST)
        );
        assert_eq!(errno(maps.map(mapping(0x0, 0, None))), Err(libc::EINVAL));
        assert_eq!(
            errno(maps.map(mapping(u64::MAX - 0xfff, 0x2000, None))),
            Err(libc::EINVAL)
        );
        // The file is smaller than the range.
        assert_eq!(
            errno(maps.map(mapping(0x40000, 0x4000, Some(memfd(0x1000, 0))))),
            Err(libc::EINVAL)
        );
        assert_eq!(maps.len(), 1);
    }

    #[test]
    fn unmap_takes_whole_ranges_only() {
        let mut maps = DmaMappings::new();
        maps.map(mapping(0x10000, 0x2000, Some(memfd(0x2000, 0))))
            .expect("map");
        maps.map(mapping(0x20000, 0x1000, None)).expect("map");
        assert_eq!(
            maps.unmap(0x10000, 0x1000).map_err(|e| e.errno()),
            Err(libc::EINVAL)
        );
        assert_eq!(
            maps.unmap(0x30000, 0x1000).map_err(|e| e.errno()),
            Err(libc::ENOENT)
        );
        assert_eq!(maps.unmap(0x0, 0x100000), Ok(2));
        assert!(maps.is_empty());
        assert_eq!(maps.guest_ram().expect("ram").num_regions(), 0);
    }
}
