//! Loads a bzImage, its initrd and command line with `linux-loader`, and writes the zero
//! page, page tables, GDT/IDT and MP table: everything the 64-bit boot protocol expects
//! to find in memory (Documentation/arch/x86/boot.rst).

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::bootparam::boot_params;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{
    e820_entries, RamRegion, BOOT_GDT_START, BOOT_IDT_START, CMDLINE_START, HIMEM_START,
    KERNEL_64BIT_ENTRY_OFFSET, KERNEL_START, MPTABLE_START, ZERO_PAGE_START,
};
use super::{gdt, mptable, paging};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader ID (boot.rst: type_of_loader 0xFF).
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Boot protocol 2.06 introduced `cmdline_size`; older kernels take 255 bytes.
const OLD_CMDLINE_MAX: usize = 255;
/// Boot protocol 2.03 introduced `initrd_addr_max`; before it the limit was this.
const OLD_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// XLF_KERNEL_64: the kernel has the 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
const PAGE_SIZE: u64 = 0x1000;

/// Errors loading the kernel and building boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image could not be opened.
    #[error("Cannot open kernel {path}")]
    OpenKernel {
        /// Path given.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd could not be opened or read.
    #[error("Cannot read initrd {path}")]
    ReadInitrd {
        /// Path given.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// linux-loader rejected the image.
    #[error("Cannot load bzImage {path}")]
    LoadKernel {
        /// Path given.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The image has no 64-bit entry point.
    #[error("Kernel {0} does not support the 64-bit boot protocol")]
    Not64Bit(PathBuf),
    /// The command line is invalid or too long for this kernel.
    #[error("Invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("Cannot write the command line")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Kernel plus initrd do not fit in low RAM.
    #[error("Initrd of {size} bytes does not fit above the kernel (ends {kernel_end:#x}) below {limit:#x}; give the VM more memory")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// First byte the kernel may still use while decompressing.
        kernel_end: u64,
        /// Highest address the initrd may end at.
        limit: u64,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("Cannot write {what} into guest memory")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The zero page could not be written.
    #[error("Cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    /// The MP table could not be built.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
}

/// What the vCPU setup needs to know about the loaded image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// 64-bit entry point (load address + 0x200).
    pub entry: u64,
    /// Guest-physical address of the zero page (RSI at entry).
    pub zero_page: u64,
    /// CR3 for the identity map.
    pub cr3: u64,
    /// Where the initrd was placed and its size, if any.
    pub initrd: Option<(u64, u64)>,
}

/// Loads `kernel` (and `initrd`) into `mem` laid out as `regions`, with `cmdline`, and
/// writes all boot structures for `num_cpus` vCPUs.
pub fn load_linux<M: GuestMemoryBackend>(
    mem: &M,
    regions: &[RamRegion],
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    num_cpus: u32,
) -> Result<BootInfo, BootError> {
    let mut kernel_file = File::open(kernel).map_err(|source| BootError::OpenKernel {
        path: kernel.to_owned(),
        source,
    })?;
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(KERNEL_START)),
        &mut kernel_file,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| BootError::LoadKernel {
        path: kernel.to_owned(),
        source,
    })?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| BootError::Not64Bit(kernel.to_owned()))?;
    // Packed struct: copy fields out before use.
    let (version, xloadflags, init_size, pref_address) =
        (hdr.version, hdr.xloadflags, hdr.init_size, hdr.pref_address);
    if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Not64Bit(kernel.to_owned()));
    }

    // Command line.
    let cmdline_max = if version >= 0x0206 {
        usize::try_from(hdr.cmdline_size).unwrap_or(OLD_CMDLINE_MAX)
    } else {
        OLD_CMDLINE_MAX
    };
    // Cmdline's capacity counts the terminating NUL.
    let cl =
        Cmdline::try_from(cmdline, cmdline_max.saturating_add(1)).map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(BootError::WriteCmdline)?;

    // Initrd at the top of low RAM, below the kernel's limit, page aligned, and above
    // the area the kernel decompresses into (load address + init_size).
    let low_end = regions.first().map_or(0, RamRegion::end);
    let initrd_max = if version >= 0x0203 {
        u64::from(hdr.initrd_addr_max)
    } else {
        OLD_INITRD_ADDR_MAX
    };
    let initrd_placed = match initrd {
        None => None,
        Some(path) => {
            let read_err = |source| BootError::ReadInitrd {
                path: path.to_owned(),
                source,
            };
            let mut f = File::open(path).map_err(read_err)?;
            let size = f.metadata().map_err(read_err)?.len();
            let limit = low_end.min(initrd_max.saturating_add(1));
            // The kernel runs from its preferred address (or where it was loaded, if
            // higher) and needs init_size bytes there before it reads the memory map.
            let runtime_start = KERNEL_START.max(pref_address);
            let kernel_end = loaded
                .kernel_end
                .max(runtime_start.saturating_add(u64::from(init_size)));
            let addr = limit
                .checked_sub(size)
                .map(|a| a & !(PAGE_SIZE - 1))
                .filter(|a| *a >= kernel_end)
                .ok_or(BootError::InitrdTooLarge {
                    size,
                    kernel_end,
                    limit,
                })?;
            let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge {
                size,
                kernel_end,
                limit,
            })?;
            mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len)
                .map_err(|source| BootError::GuestMemory {
                    what: "initrd",
                    source,
                })?;
            Some((addr, size))
        }
    };

    // Zero page: start from the image's own setup header, then fill in what the loader
    // owns (boot.rst, "Details of header fields").
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = u32::try_from(cmdline_max).unwrap_or(u32::MAX);
    if let Some((addr, size)) = initrd_placed {
        // Both below 3 GiB by construction.
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    let e820 = e820_entries(regions);
    for (slot, entry) in params.e820_table.iter_mut().zip(&e820) {
        *slot = *entry;
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::ZeroPage)?;

    let cr3 = paging::write_identity_tables(mem).map_err(|source| BootError::GuestMemory {
        what: "page tables",
        source,
    })?;
    for (i, entry) in gdt::BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|source| BootError::GuestMemory {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| BootError::GuestMemory {
            what: "IDT",
            source,
        })?;
    let mp = mptable::build(MPTABLE_START, num_cpus)?;
    mem.write_slice(&mp, GuestAddress(MPTABLE_START))
        .map_err(|source| BootError::GuestMemory {
            what: "MP table",
            source,
        })?;

    Ok(BootInfo {
        entry: loaded.kernel_load.0 + KERNEL_64BIT_ENTRY_OFFSET,
        zero_page: ZERO_PAGE_START,
        cr3,
        initrd: initrd_placed,
    })
}
