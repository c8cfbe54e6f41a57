//! `large`, `asid`, `leaks`: one invalidation of a range much larger than the TLB, the miss
//! path's fault-ahead window, more processes over time than the device has contexts, and
//! everything the driver allocates back to its baseline.

use anyhow::Result;
use rmnic_abi::{status, Context};
use rmnic_guest::Mapping;

use super::{driver_counter, in_child, status_of};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;

/// munmap of 4096 pages (16 MiB, four times the TLB) in one call.
pub fn large(dev: &Context, c: &mut Checks) -> Result<()> {
    const PAGES: usize = 4096;
    let mut buf = Mapping::new(PAGES * PAGE, false)?;
    buf.advise(libc::MADV_NOHUGEPAGE)?;
    dev.fill(buf.addr(), (PAGES * PAGE) as u64, 0x1a)??;
    let addr = buf.addr();
    let before = dev.stats()?;
    buf.unmap();
    let after = dev.stats()?;
    let first = dev.read64(addr)?;
    let last = dev.read64(addr + ((PAGES - 1) * PAGE) as u64)?;
    let sent = after.invalidations_sent - before.invalidations_sent;
    c.check(
        "large-range-invalidate",
        sent == 1
            && status_of(&first) == status::FAULT_UNRESOLVED
            && status_of(&last) == status::FAULT_UNRESOLVED,
        format!("{sent} invalidation(s) for 4096 pages; afterwards {first:?} / {last:?}"),
    );
    fault_ahead(c)
}

/// The fault-ahead window (`RMNIC_IOC_FAULT_AHEAD`): out-of-range windows are refused; a
/// device read of 64 CPU-mapped pages misses once per page with the window off and once per
/// 16 pages with 16 (at most a quarter as often, with device-TLB evictions injected); a window skips a page the CPU has not mapped (a hole) and takes the
/// mapped pages after it; and the neighbours it dropped in are shot down with the rest (a
/// munmap, then every device access of them fails).
fn fault_ahead(c: &mut Checks) -> Result<()> {
    const PAGES: usize = 64;
    let dev = Context::open()?;
    let refused = [0u32, rmnic_abi::abi::MAX_FAULT_AHEAD + 1]
        .map(|w| dev.set_fault_ahead(w).err().and_then(|e| e.errno()));
    let mut misses = Vec::new();
    for window in [1u32, 16] {
        let dev = Context::open()?;
        dev.set_fault_ahead(window)?;
        let mut buf = Mapping::aligned(PAGES * PAGE, 2 << 20)?;
        buf.advise(libc::MADV_NOHUGEPAGE)?;
        buf.bytes_mut().fill(0x42);
        let before = dev.stats()?.faults;
        for page in 0..PAGES {
            dev.read64(buf.addr() + (page * PAGE) as u64)??;
        }
        misses.push(dev.stats()?.faults - before);
    }
    c.check(
        "large-fault-ahead-window",
        // Exact without fault injection (64 and 4); injected evictions add misses to both.
        refused == [Some(libc::EINVAL); 2] && misses[0] >= PAGES as u64 && misses[1] * 4 <= misses[0],
        format!(
            "windows 0 and 513 refused: {refused:?}; misses over {PAGES} mapped pages: window 1 {}, window 16 {}",
            misses[0], misses[1]
        ),
    );
    // A hole: 8 mapped pages, one unmapped, 8 mapped; window 16 from the first page.
    let dev = Context::open()?;
    dev.set_fault_ahead(16)?;
    let mut region = Mapping::aligned(17 * PAGE, 2 << 20)?;
    region.advise(libc::MADV_NOHUGEPAGE)?;
    region.bytes_mut().fill(7);
    let hole = region.addr() + (8 * PAGE) as u64;
    super::munmap(hole, PAGE)?;
    let before = dev.stats()?;
    dev.read64(region.addr())??;
    let after_first = dev.stats()?;
    let in_hole = dev.read64(hole)?;
    dev.read64(hole + PAGE as u64)??;
    let after = dev.stats()?;
    let ahead = after_first.dropins_4k - before.dropins_4k;
    // Each miss of the first read drops in the window's 15 mapped pages (an injected eviction
    // can make the read miss again, and drop them in again).
    let first_misses = after_first.faults - before.faults;
    let later_misses = after.faults - after_first.faults;
    // munmap of the whole region: the neighbours dropped in ahead must go too.
    let base = region.addr();
    region.unmap();
    let mut gone = Vec::new();
    for page in (0..17u64).filter(|p| *p != 8) {
        gone.push(status_of(&dev.read64(base + page * PAGE as u64)?));
    }
    c.check(
        "large-fault-ahead-skips-holes",
        first_misses >= 1
            && ahead == 15 * first_misses
            && status_of(&in_hole) == status::FAULT_UNRESOLVED
            // The hole; injected evictions may add the page after it.
            && later_misses >= 1
            && gone.iter().all(|s| *s == status::FAULT_UNRESOLVED),
        format!(
            "the first read missed {first_misses} time(s) and dropped in {ahead} page(s) (want 15 per miss: the window of 16 but the hole); hole {in_hole:?}; {later_misses} later miss(es) (want 1, the hole: the page after it was dropped in ahead, unless evicted); after munmap: {gone:?}"
        ),
    );
    Ok(())
}

/// 100 processes one after the other, each with a context and a device write: more than the
/// device's 64 contexts over time.
pub fn asid(c: &mut Checks) -> Result<()> {
    let mut failed = 0;
    let mut asids = std::collections::BTreeSet::new();
    for i in 0..100u64 {
        let status = in_child(move || {
            let Ok(dev) = Context::open() else { return 2 };
            let Ok(buf) = Mapping::new(PAGE, false) else {
                return 3;
            };
            match dev.write64(buf.addr(), i) {
                Ok(Ok(())) if buf.read_u64(0) == i => {
                    // The ASID, for the parent to count distinct ones.
                    dev.stats().map_or(4, |s| (s.asid % 200) as i32 + 10)
                }
                _ => 1,
            }
        })?;
        if status >= 10 {
            asids.insert(status);
        } else {
            failed += 1;
        }
    }
    let live = driver_counter("contexts_live")?;
    c.check(
        "asid-pressure",
        failed == 0 && asids.len() > 64,
        format!("100 processes, {failed} failed, {} distinct ASIDs (mod 200), {live} contexts live after", asids.len()),
    );
    Ok(())
}

/// Baseline of the driver's live objects, taken before the suite opens anything.
#[derive(Clone, Copy, Debug)]
pub struct Baseline {
    contexts: u64,
    notifiers: u64,
    dma_buffers: u64,
}

impl Baseline {
    /// Reads the counters now.
    pub fn take() -> Result<Self> {
        Ok(Self {
            contexts: driver_counter("contexts_live")?,
            notifiers: driver_counter("notifiers_live")?,
            dma_buffers: driver_counter("dma_buffers_live")?,
        })
    }
}

/// Everything the suite opened is closed: contexts (and their ASIDs), notifiers, DMA buffers
/// are back to the baseline.
pub fn leaks(baseline: Baseline, c: &mut Checks) -> Result<()> {
    // Contexts of killed children are released by their exit; give the last ones a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let now = loop {
        let now = Baseline::take()?;
        if (now.contexts, now.notifiers, now.dma_buffers)
            == (baseline.contexts, baseline.notifiers, baseline.dma_buffers)
            || std::time::Instant::now() > deadline
        {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    c.check(
        "no-leaks",
        (now.contexts, now.notifiers, now.dma_buffers)
            == (baseline.contexts, baseline.notifiers, baseline.dma_buffers),
        format!("baseline {baseline:?}, now {now:?}"),
    );
    Ok(())
}

/// Closing the file (not exiting) with commands in flight: the close aborts them on the
/// device, frees the context, and the process goes on with a new one.
pub fn close_in_flight(c: &mut Checks) -> Result<()> {
    let buf = Mapping::new(64 * PAGE, false)?;
    let mut closed = 0;
    for _ in 0..20 {
        let dev = Context::open()?;
        let cmds = super::page_fills(buf.addr(), 64);
        dev.submit(&cmds)?;
        drop(dev);
        closed += 1;
    }
    let dev = Context::open()?;
    let after = dev.write64(buf.addr(), 0xc105e)?;
    c.check(
        "close-with-commands-in-flight",
        closed == 20 && after.is_ok() && buf.read_u64(0) == 0xc105e,
        format!("{closed} contexts closed with 64 commands queued; a new one writes: {after:?}"),
    );
    Ok(())
}
