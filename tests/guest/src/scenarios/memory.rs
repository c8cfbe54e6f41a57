//! `thp`, `hugetlb`, `ksm`, `migrate`: large pages split and collapsed, hugetlbfs, KSM merging
//! pages under the device, compaction moving frames the device has translations for.

use anyhow::Result;
use rmnic_abi::{status, Context};
use rmnic_guest::Mapping;

use super::{frame_of, mmap, munmap, setup, status_of};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
const HUGE: usize = 2 << 20;
/// `MADV_COLLAPSE` (Linux 6.1), not in every libc crate release.
const MADV_COLLAPSE: i32 = 25;
/// `MADV_SOFT_OFFLINE`: migrate the pages' contents to new frames and retire the old ones.
const MADV_SOFT_OFFLINE: i32 = 101;

/// Whether `m` starts on a huge page (its first frame is 2 MiB aligned and the 512 frames are
/// consecutive).
fn is_huge(addr: u64) -> bool {
    let first = frame_of(addr);
    let last = frame_of(addr + (HUGE - PAGE) as u64);
    matches!((first, last), (Some(f), Some(l)) if f % 512 == 0 && l == f + 511)
}

fn huge_buffer(value: u64, dev: &Context) -> Result<Option<Mapping>> {
    let buf = Mapping::aligned(HUGE, HUGE)?;
    buf.advise(libc::MADV_HUGEPAGE)?;
    dev.fill(buf.addr(), HUGE as u64, value)??;
    Ok(is_huge(buf.addr()).then_some(buf))
}

/// A 2 MiB entry, then the THP is split by mprotect or munmap of one 4 KiB page; collapse.
pub fn thp(dev: &Context, c: &mut Checks) -> Result<()> {
    match huge_buffer(0x7470_0001, dev)? {
        Some(buf) => {
            buf_protect_page(&buf, 1, libc::PROT_READ)?;
            let denied = dev.write64(buf.addr() + PAGE as u64, 1)?;
            let neighbour = dev.write64(buf.addr() + 2 * PAGE as u64, 2)?;
            c.check(
                "thp-split-by-mprotect",
                status_of(&denied) == status::PERMISSION
                    && buf.read_u64(PAGE) == 0x7470_0001
                    && neighbour.is_ok()
                    && buf.read_u64(2 * PAGE) == 2,
                format!(
                    "write to the read-only 4 KiB page status {}, neighbour {neighbour:?}",
                    status_of(&denied)
                ),
            );
        }
        None => c.check(
            "thp-split-by-mprotect",
            false,
            "no transparent huge page was made",
        ),
    }
    match huge_buffer(0x7470_0002, dev)? {
        Some(buf) => {
            munmap(buf.addr() + PAGE as u64, PAGE)?;
            let hole = dev.read64(buf.addr() + PAGE as u64)?;
            let left = dev.read64(buf.addr())?;
            let right = dev.read64(buf.addr() + 2 * PAGE as u64)?;
            c.check(
                "thp-split-by-munmap",
                status_of(&hole) == status::FAULT_UNRESOLVED
                    && matches!(left, Ok(0x7470_0002))
                    && matches!(right, Ok(0x7470_0002)),
                format!("hole {hole:?}, left {left:?}, right {right:?}"),
            );
        }
        None => c.check(
            "thp-split-by-munmap",
            false,
            "no transparent huge page was made",
        ),
    }

    // Small pages the device has read, then MADV_COLLAPSE makes one huge page of them (an
    // invalidation of the range): the device must see the same data through the new page.
    let mut buf = Mapping::aligned(HUGE, HUGE)?;
    for (i, chunk) in buf.bytes_mut().chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i as u64).to_le_bytes());
    }
    let small = !is_huge(buf.addr());
    let before = dev.read64(buf.addr() + 8 * 1000)?;
    buf.advise(MADV_COLLAPSE)?;
    let huge = is_huge(buf.addr());
    let after = dev.read64(buf.addr() + 8 * 1000)?;
    let last = dev.read64(buf.addr() + (HUGE - 8) as u64)?;
    c.check(
        "thp-collapse",
        small
            && huge
            && matches!(before, Ok(1000))
            && matches!(after, Ok(1000))
            && matches!(last, Ok(v) if v == (HUGE / 8 - 1) as u64),
        format!("small pages before {small}, huge after {huge}, device reads {after:?} / {last:?}"),
    );
    Ok(())
}

fn buf_protect_page(buf: &Mapping, page: usize, prot: i32) -> Result<()> {
    // SAFETY: one page inside our own mapping.
    let r = unsafe {
        libc::mprotect(
            (buf.addr() + (page * PAGE) as u64) as *mut libc::c_void,
            PAGE,
            prot,
        )
    };
    anyhow::ensure!(r == 0, "mprotect: {}", std::io::Error::last_os_error());
    Ok(())
}

/// A hugetlbfs page (MAP_HUGETLB).
pub fn hugetlb(dev: &Context, c: &mut Checks) -> Result<()> {
    setup::hugetlb(2)?;
    let addr = mmap(
        0,
        HUGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_HUGETLB,
        -1,
        0,
    )?;
    let filled = dev.fill(addr, HUGE as u64, 0x4875_6765)?;
    let cpu = super::peek(addr + (HUGE / 2) as u64);
    munmap(addr, HUGE)?;
    let gone = dev.read64(addr)?;
    c.check(
        "hugetlb-read-write",
        filled.is_ok() && cpu == 0x4875_6765 && status_of(&gone) == status::FAULT_UNRESOLVED,
        format!("fill {filled:?}, CPU reads {cpu:#x}, after munmap {gone:?}"),
    );
    Ok(())
}

/// KSM merges two identical buffers into shared read-only frames; a device write to one must
/// break the sharing (COW) and leave the other alone.
pub fn ksm(dev: &Context, c: &mut Checks) -> Result<()> {
    setup::ksm()?;
    let pages = 4;
    let mut a = Mapping::new(pages * PAGE, false)?;
    let mut b = Mapping::new(pages * PAGE, false)?;
    a.advise(libc::MADV_NOHUGEPAGE)?;
    b.advise(libc::MADV_NOHUGEPAGE)?;
    a.bytes_mut().fill(0x6b);
    b.bytes_mut().fill(0x6b);
    a.advise(libc::MADV_MERGEABLE)?;
    b.advise(libc::MADV_MERGEABLE)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let merged = loop {
        if frame_of(a.addr()).is_some() && frame_of(a.addr()) == frame_of(b.addr()) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let b_before = dev.read64(b.addr())?;
    let wrote = dev.write64(a.addr(), 0xa)?;
    let b_after = dev.read64(b.addr())?;
    c.check(
        "ksm-merge-then-device-write",
        merged
            && wrote.is_ok()
            && a.read_u64(0) == 0xa
            && b.read_u64(0) == 0x6b6b_6b6b_6b6b_6b6b
            && b_before == b_after
            && frame_of(a.addr()) != frame_of(b.addr()),
        format!(
            "merged {merged}, device write {wrote:?}, A reads {:#x}, B reads {:#x} (device {b_after:?})",
            a.read_u64(0),
            b.read_u64(0)
        ),
    );
    let _ = a.advise(libc::MADV_UNMERGEABLE);
    let _ = b.advise(libc::MADV_UNMERGEABLE);
    Ok(())
}

/// Compaction moves frames the device has translations for (a migration invalidates them
/// first); the device must follow. Whether the kernel moves any of ours is its choice: the
/// check reports how many moved and requires the data to be right either way.
pub fn migrate(dev: &Context, c: &mut Checks) -> Result<()> {
    const PAGES: usize = 1024;
    let mut buf = Mapping::new(PAGES * PAGE, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    for (i, chunk) in buf.bytes_mut().chunks_mut(PAGE).enumerate() {
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    let mut check = vec![0u64; PAGES];
    for (p, slot) in check.iter_mut().enumerate() {
        *slot = dev
            .read64(buf.addr() + (p * PAGE) as u64)?
            .unwrap_or(u64::MAX);
    }
    let before: Vec<Option<u64>> = (0..PAGES)
        .map(|p| frame_of(buf.addr() + (p * PAGE) as u64))
        .collect();
    super::write_file("/proc/sys/vm/compact_memory", "1")?;
    let after: Vec<Option<u64>> = (0..PAGES)
        .map(|p| frame_of(buf.addr() + (p * PAGE) as u64))
        .collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let mut right = 0;
    for p in 0..PAGES {
        if matches!(dev.read64(buf.addr() + (p * PAGE) as u64)?, Ok(v) if v == p as u64) {
            right += 1;
        }
    }
    c.check(
        "compaction-under-device-use",
        right == PAGES && check.iter().enumerate().all(|(p, v)| *v == p as u64),
        format!("{moved} of {PAGES} frames moved by compaction, {right} read right afterwards"),
    );

    // A migration the kernel cannot decline: soft offline moves every page's contents to a
    // new frame (migration entries, an invalidation) and retires the old frame. The device
    // must read the data from the new frames and its writes must land there.
    const MOVED: usize = 16;
    let mut buf = Mapping::new(MOVED * PAGE, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    for (i, chunk) in buf.bytes_mut().chunks_mut(PAGE).enumerate() {
        chunk[..8].copy_from_slice(&(0x50f7_0000 + i as u64).to_le_bytes());
    }
    for p in 0..MOVED {
        dev.read64(buf.addr() + (p * PAGE) as u64)?.ok();
    }
    let before: Vec<Option<u64>> = (0..MOVED)
        .map(|p| frame_of(buf.addr() + (p * PAGE) as u64))
        .collect();
    buf.advise(MADV_SOFT_OFFLINE)?;
    let after: Vec<Option<u64>> = (0..MOVED)
        .map(|p| frame_of(buf.addr() + (p * PAGE) as u64))
        .collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let mut right = 0;
    for p in 0..MOVED {
        if matches!(dev.read64(buf.addr() + (p * PAGE) as u64)?, Ok(v) if v == 0x50f7_0000 + p as u64)
        {
            right += 1;
        }
    }
    let wrote = dev.write64(buf.addr(), 0x5eed)?;
    c.check(
        "soft-offline-migration-under-device",
        moved == MOVED && right == MOVED && wrote.is_ok() && buf.read_u64(0) == 0x5eed,
        format!("{moved} of {MOVED} frames moved, {right} read right through the device, then write {wrote:?}"),
    );
    Ok(())
}
