//! `share`, `threads`, `contexts`: several users of one address space or one page: fork with
//! both sides writing, MAP_SHARED memory across fork, munmap racing device operations on
//! another thread, two device contexts on one mm.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use rmnic_abi::{status, Context};
use rmnic_guest::Mapping;

use super::{in_child, mmap, munmap, status_of};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;

/// fork with COW where both sides write, the child through its own context; MAP_SHARED
/// anonymous memory across fork.
pub fn share(dev: &Context, c: &mut Checks) -> Result<()> {
    let buf = Mapping::new(PAGE, false)?;
    dev.write64(buf.addr(), 0xa0)??;
    let addr = buf.addr();
    let child = in_child(|| {
        // The child writes through its own context; its COW copy must get the data, the
        // parent's page must not.
        let Ok(mine) = Context::open() else { return 2 };
        let wrote = matches!(mine.write64(addr, 0xc0), Ok(Ok(())));
        let cpu = super::peek(addr);
        if wrote && cpu == 0xc0 {
            0
        } else {
            1
        }
    })?;
    let parent = dev.write64(buf.addr(), 0xb0)?;
    c.check(
        "fork-both-write-child-context",
        child == 0 && parent.is_ok() && buf.read_u64(0) == 0xb0,
        format!(
            "child status {child}, parent write {parent:?}, parent reads {:#x}",
            buf.read_u64(0)
        ),
    );

    let shared = Mapping::new(PAGE, true)?;
    dev.write64(shared.addr(), 1)??;
    let addr = shared.addr();
    let child = in_child(|| {
        let Ok(mine) = Context::open() else { return 2 };
        match mine.write64(addr, 0x5ba2ed) {
            Ok(Ok(())) => 0,
            _ => 1,
        }
    })?;
    let seen = dev.read64(shared.addr())?;
    c.check(
        "shared-anon-across-fork",
        child == 0 && shared.read_u64(0) == 0x5ba2ed && matches!(seen, Ok(0x5ba2ed)),
        format!(
            "child status {child}, parent CPU reads {:#x}, parent device reads {seen:?}",
            shared.read_u64(0)
        ),
    );
    Ok(())
}

/// munmap while another thread keeps the device busy on the same range.
pub fn threads(c: &mut Checks) -> Result<()> {
    const PAGES: usize = 64;
    let base = mmap(
        0,
        PAGES * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
        -1,
        0,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, gone, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    // Every page holds its own index: a stale translation would return another page's value
    // or an old one after the remap below.
    for p in 0..PAGES {
        super::poke(base + (p * PAGE) as u64, p as u64);
    }
    let worker = {
        let (stop, ok, gone, wrong) = (stop.clone(), ok.clone(), gone.clone(), wrong.clone());
        std::thread::spawn(move || -> Result<()> {
            let dev = Context::open()?;
            let mut p = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let index = p % PAGES as u64;
                let addr = base + index * PAGE as u64;
                // The second half is replaced by fresh pages: zero, then 0xdead.
                let fresh = index >= (PAGES / 2) as u64;
                match dev.read64(addr)? {
                    Ok(v) if v == index || (fresh && (v == 0 || v == 0xdead)) => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(_) => wrong.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.status == status::FAULT_UNRESOLVED => {
                        gone.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => wrong.fetch_add(1, Ordering::Relaxed),
                };
                p += 1;
            }
            Ok(())
        })
    };
    // Let it run, pull the second half away, put new pages (a different value) there.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let half = base + (PAGES / 2 * PAGE) as u64;
    munmap(half, PAGES / 2 * PAGE)?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    mmap(
        half,
        PAGES / 2 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_FIXED,
        -1,
        0,
    )?;
    for p in PAGES / 2..PAGES {
        super::poke(base + (p * PAGE) as u64, 0xdead);
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let joined = worker.join();
    munmap(base, PAGES * PAGE)?;
    let (ok, gone, wrong) = (
        ok.load(Ordering::Relaxed),
        gone.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    c.check(
        "munmap-while-device-busy",
        matches!(joined, Ok(Ok(()))) && wrong == 0 && ok > 0,
        format!("{ok} reads right, {gone} failed cleanly while unmapped, {wrong} wrong"),
    );
    Ok(())
}

/// Two contexts on one mm: an invalidation must reach both.
pub fn contexts(dev: &Context, c: &mut Checks) -> Result<()> {
    let second = Context::open()?;
    let mut buf = Mapping::new(2 * PAGE, false)?;
    dev.write64(buf.addr(), 0x1)??;
    let through_second = second.read64(buf.addr())?;
    let before = (dev.stats()?, second.stats()?);
    let addr = buf.addr();
    buf.unmap();
    let after = (dev.stats()?, second.stats()?);
    let (first_now, second_now) = (dev.read64(addr)?, second.read64(addr)?);
    c.check(
        "two-contexts-one-mm",
        matches!(through_second, Ok(1))
            && after.0.invalidations_sent > before.0.invalidations_sent
            && after.1.invalidations_sent > before.1.invalidations_sent
            && status_of(&first_now) == status::FAULT_UNRESOLVED
            && status_of(&second_now) == status::FAULT_UNRESOLVED,
        format!(
            "second context read {through_second:?}; after munmap: {first_now:?} / {second_now:?}"
        ),
    );
    Ok(())
}
