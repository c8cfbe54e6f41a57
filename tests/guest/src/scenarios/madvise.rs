//! `madvise` and `swap`: MADV_DONTNEED, MADV_FREE, and reclaim forced with MADV_PAGEOUT onto
//! zram swap. The device's writes must never be lost: the driver marks a page dirty when it
//! gives the device a writable translation (docs/driver.md, "Dirty pages").

use anyhow::Result;
use rmnic_abi::Context;
use rmnic_guest::Mapping;

use super::{frame_of, setup};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
const LEN: usize = 4 * PAGE;

/// Whether every page of `m` is out of memory (reclaimed: not present in the page tables).
fn reclaimed(m: &Mapping) -> bool {
    (0..LEN)
        .step_by(PAGE)
        .all(|o| frame_of(m.addr() + o as u64).is_none())
}

/// Forces reclaim of `m` (MADV_PAGEOUT) until its pages are out, at most 4 times; whether
/// they went. Pages the device faulted in were added to the LRU from the driver's fault
/// thread, possibly on another CPU, where they can wait in that CPU's batch, which
/// MADV_PAGEOUT cannot isolate: compaction drains every CPU's batch. A dirty MADV_FREE page is
/// not discarded by the first pass, only made ordinary anonymous memory again; the next pass
/// swaps it out.
fn page_out(m: &Mapping) -> Result<bool> {
    for _ in 0..4 {
        m.advise(libc::MADV_PAGEOUT)?;
        if reclaimed(m) {
            return Ok(true);
        }
        super::write_file("/proc/sys/vm/compact_memory", "1")?;
    }
    Ok(false)
}

/// MADV_DONTNEED and MADV_FREE.
pub fn madvise(dev: &Context, c: &mut Checks) -> Result<()> {
    // DONTNEED drops the pages: the device must read the zero page, not its old frame.
    let buf = Mapping::new(LEN, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    dev.fill(buf.addr(), LEN as u64, 0x7777)??;
    buf.advise(libc::MADV_DONTNEED)?;
    let seen = dev.read64(buf.addr() + PAGE as u64)?;
    c.check(
        "madv-dontneed-zeroes",
        matches!(seen, Ok(0)) && buf.read_u64(PAGE) == 0,
        format!("device reads {seen:?}"),
    );

    // FREE, then the CPU reuses the pages before reclaim: the device sees the new data.
    let buf = Mapping::new(LEN, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    dev.fill(buf.addr(), LEN as u64, 0x8888)??;
    buf.advise(libc::MADV_FREE)?;
    buf.write_u64(0, 0x9999);
    let seen = dev.read64(buf.addr())?;
    c.check(
        "madv-free-reuse",
        matches!(seen, Ok(0x9999)),
        format!("device reads {seen:?}"),
    );

    // FREE cleans the PTEs (through an invalidation); the device then writes. A clean page
    // under MADV_FREE is discarded by reclaim: only the driver's dirty marking saves the data.
    setup::swap()?;
    let buf = Mapping::new(LEN, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    dev.fill(buf.addr(), LEN as u64, 0x1)??;
    buf.advise(libc::MADV_FREE)?;
    dev.fill(buf.addr(), LEN as u64, 0xabab_abab)??;
    let was_reclaimed = page_out(&buf)?;
    let kept = (0..LEN).step_by(8).all(|o| buf.read_u64(o) == 0xabab_abab);
    c.check(
        "madv-free-device-write-survives-reclaim",
        was_reclaimed && kept,
        format!(
            "reclaimed {was_reclaimed}, CPU reads {:#x} after reclaim",
            buf.read_u64(0)
        ),
    );
    Ok(())
}

/// Swap-out and refault on zram.
pub fn swap(dev: &Context, c: &mut Checks) -> Result<()> {
    setup::swap()?;
    // The device reads a page, the kernel swaps it out (invalidation), the device reads again:
    // it must fault it back in and see the same data.
    let mut buf = Mapping::new(LEN, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    buf.bytes_mut().fill(0x42);
    let before = frame_of(buf.addr());
    let first = dev.read64(buf.addr())?;
    let was_reclaimed = page_out(&buf)?;
    let again = dev.read64(buf.addr())?;
    let after = frame_of(buf.addr());
    c.check(
        "swap-out-refault",
        was_reclaimed && first == again && matches!(again, Ok(0x4242_4242_4242_4242)),
        format!(
            "swapped out {was_reclaimed}, device reads {again:?}, frame {before:?} -> {after:?}"
        ),
    );

    // The device writes, the kernel swaps the pages out: the swapped copy must hold the
    // device's data (the page was dirtied for the device, not by the CPU).
    let buf = Mapping::new(LEN, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    dev.fill(buf.addr(), LEN as u64, 0x5eed_0000_5eed)??;
    let was_reclaimed = page_out(&buf)?;
    let kept = (0..LEN)
        .step_by(8)
        .all(|o| buf.read_u64(o) == 0x5eed_0000_5eed);
    c.check(
        "device-write-survives-swap",
        was_reclaimed && kept,
        format!(
            "swapped out {was_reclaimed}, CPU reads {:#x}",
            buf.read_u64(0)
        ),
    );
    Ok(())
}
