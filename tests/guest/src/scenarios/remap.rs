//! `remap`: mremap moves a range the device holds translations for.

use anyhow::Result;
use rmnic_abi::{status, Context};

use super::{mmap, munmap, peek, poke, status_of};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
const LEN: usize = 4 * PAGE;

fn anon(len: usize) -> Result<u64> {
    mmap(
        0,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
        -1,
        0,
    )
}

fn mremap(old: u64, len: usize, new: u64, flags: i32) -> Result<u64> {
    // SAFETY: `old` is a mapping of ours; with MREMAP_FIXED `new` is a range we reserved.
    let p = unsafe {
        libc::mremap(
            old as *mut libc::c_void,
            len,
            len,
            flags,
            new as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        anyhow::bail!("mremap failed: {}", std::io::Error::last_os_error());
    }
    Ok(p as u64)
}

/// mremap to a new address, and MREMAP_DONTUNMAP.
pub fn run(dev: &Context, c: &mut Checks) -> Result<()> {
    // Move: the old range's translations are invalidated; the device finds the data at the new
    // address and nothing at the old one.
    let old = anon(LEN)?;
    dev.fill(old, LEN as u64, 0x1111_2222_3333_4444)??;
    let target = anon(LEN)?;
    let new = mremap(old, LEN, target, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED)?;
    let at_old = dev.read64(old)?;
    let at_new = dev.read64(new + PAGE as u64)?;
    c.check(
        "mremap-move",
        status_of(&at_old) == status::FAULT_UNRESOLVED
            && matches!(at_new, Ok(0x1111_2222_3333_4444)),
        format!("old VA {at_old:?}, new VA {at_new:?}"),
    );
    munmap(new, LEN)?;

    // MREMAP_DONTUNMAP: the pages move, the old range stays mapped but empty (anonymous:
    // zero-filled on the next touch). The device must see zeros there, the data at the new one.
    let old = anon(LEN)?;
    dev.fill(old, LEN as u64, 0x5555)??;
    let new = mremap(old, LEN, 0, libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP)?;
    let at_old = dev.read64(old)?;
    let at_new = dev.read64(new)?;
    poke(old + 8, 7);
    let cpu_old = peek(old + 8);
    c.check(
        "mremap-dontunmap",
        matches!(at_old, Ok(0)) && matches!(at_new, Ok(0x5555)) && cpu_old == 7,
        format!("old VA {at_old:?}, new VA {at_new:?}"),
    );
    munmap(old, LEN)?;
    munmap(new, LEN)?;
    Ok(())
}
