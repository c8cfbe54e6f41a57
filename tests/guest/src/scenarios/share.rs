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
    miss_under_unrelated_munmaps(c)
}

/// A device miss on a page that stays mapped must be resolved however busy the rest of the
/// address space is. Two threads, one pinned to each CPU (so one shares a CPU with whatever
/// task resolves the miss), unmap and map again a page inside a region the context's device
/// translations span, as fast as they can: every munmap is an invalidation of the
/// whole-address-space notifier that sends a device invalidation and sleeps until it is done,
/// and every one waits for the mmap lock the miss path's walk holds. Meanwhile the device
/// reads another page of the region 200 times, each after MADV_DONTNEED: every read must miss
/// and read zero. A miss path that gives up after a number of raced walks fails some of them
/// with FAULT_UNRESOLVED.
fn miss_under_unrelated_munmaps(c: &mut Checks) -> Result<()> {
    const READS: u64 = 200;
    const REGION: usize = 64 * PAGE;
    let region = mmap(
        0,
        REGION,
        libc::PROT_READ,
        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
        -1,
        0,
    )?;
    let target = region;
    let dev = Context::open()?;
    // The device's translations span the region: its first and last pages.
    dev.read64(region)??;
    dev.read64(region + (REGION - PAGE) as u64)??;
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..2usize)
        .map(|cpu| {
            let stop = stop.clone();
            let hole = region + ((16 + 16 * cpu) * PAGE) as u64;
            std::thread::spawn(move || -> Result<u64> {
                pin_to_cpu(cpu);
                let mut unmapped = 0;
                while !stop.load(Ordering::Relaxed) {
                    munmap(hole, PAGE)?;
                    mmap(
                        hole,
                        PAGE,
                        libc::PROT_READ,
                        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_FIXED,
                        -1,
                        0,
                    )?;
                    unmapped += 1;
                }
                Ok(unmapped)
            })
        })
        .collect();
    let before = dev.stats()?;
    let (mut zero, mut failed, mut first_failure) = (0u64, 0u64, None);
    for _ in 0..READS {
        // SAFETY: our own mapping; DONTNEED drops its page, the next access faults anew.
        unsafe { libc::madvise(target as *mut libc::c_void, PAGE, libc::MADV_DONTNEED) };
        match dev.read64(target)? {
            Ok(0) => zero += 1,
            other => {
                failed += 1;
                first_failure.get_or_insert(format!("{other:?}"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let unmapped: u64 = churners
        .into_iter()
        .map(|t| match t.join() {
            Ok(Ok(n)) => n,
            _ => 0,
        })
        .sum();
    let after = dev.stats()?;
    munmap(region, REGION)?;
    c.check(
        "miss-under-unrelated-munmaps",
        failed == 0 && zero == READS && unmapped > 0,
        format!(
            "{zero}/{READS} device reads of a zapped page read zero while two threads made \
             {unmapped} munmaps in the region ({} miss-path retries, {} device invalidations); \
             first failure: {}",
            after.retries - before.retries,
            after.invalidations_sent - before.invalidations_sent,
            first_failure.as_deref().unwrap_or("none")
        ),
    );
    Ok(())
}

/// Pins the calling thread to `cpu` (best effort: a guest with fewer CPUs runs it anywhere).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the call
    // reads it for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
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
