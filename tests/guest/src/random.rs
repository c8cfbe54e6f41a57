//! `rmnic-guest random --seed N`: several processes, each with two threads, each thread with
//! its own device context and its own slots of memory, mixing mmap, munmap, mprotect, mremap,
//! madvise, fork and exit with device reads, writes and fills, every result checked against a
//! CPU-side shadow of what each page must hold.
//!
//! Every choice comes from a XorShift stream seeded from (seed, process, thread), so a seed
//! replays the same operation sequence; the run stops after `--ops` operations per thread (or
//! `--seconds`, a safety net: the line says which). The first mismatch is printed with its
//! operation number.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use rand_core::{Rng, SeedableRng};
use rand_xorshift::XorShiftRng;
use rmnic_abi::{status, Context};

use crate::scenarios::{in_child, mmap, munmap, peek, poke};

const PAGE: u64 = 4096;
const SLOTS: usize = 6;
const MAX_PAGES: u64 = 8;

/// What one page must hold (its first word), or that it is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Value(u64),
}

#[derive(Clone, Debug)]
struct Slot {
    addr: u64,
    pages: u64,
    writable: bool,
    shadow: Vec<Expect>,
}

/// One thread's state.
struct Worker {
    rng: XorShiftRng,
    dev: Context,
    slots: Vec<Option<Slot>>,
    ops: u64,
    /// Ranges whose pages were taken away, kept reserved until the thread ends.
    holes: Vec<(u64, usize)>,
}

/// Outcome of one thread.
#[derive(Debug, Default)]
struct Tally {
    ops: u64,
    mismatch: Option<String>,
    stats: Option<rmnic_abi::ContextStats>,
}

impl Worker {
    fn pick(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn map(&mut self, i: usize) -> Result<()> {
        let pages = 1 + self.pick(MAX_PAGES);
        let addr = mmap(
            0,
            (pages * PAGE) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            -1,
            0,
        )?;
        let mut shadow = Vec::new();
        for p in 0..pages {
            let v = self.rng.next_u64() | 1;
            poke(addr + p * PAGE, v);
            shadow.push(Expect::Value(v));
        }
        self.slots[i] = Some(Slot {
            addr,
            pages,
            writable: true,
            shadow,
        });
        Ok(())
    }

    fn fail(&self, what: String) -> Option<String> {
        Some(format!("op {}: {what}", self.ops))
    }

    /// One random operation; `Some(description)` on a mismatch.
    fn step(&mut self) -> Result<Option<String>> {
        self.ops += 1;
        let i = self.pick(SLOTS as u64) as usize;
        let Some(slot) = self.slots[i].clone() else {
            self.map(i)?;
            return Ok(None);
        };
        let p = self.pick(slot.pages);
        let addr = slot.addr + p * PAGE;
        let Expect::Value(want) = slot.shadow[p as usize];
        Ok(match self.pick(12) {
            // Device read against the shadow.
            0..=3 => match self.dev.read64(addr)? {
                Ok(v) if v == want => None,
                other => self.fail(format!(
                    "device read {addr:#x} gave {other:?}, shadow {want:#x}"
                )),
            },
            // Device write: allowed only if writable.
            4 | 5 => {
                let v = self.rng.next_u64() | 1;
                match (self.dev.write64(addr, v)?, slot.writable) {
                    (Ok(()), true) if peek(addr) == v => {
                        if let Some(s) = self.slots[i].as_mut() {
                            s.shadow[p as usize] = Expect::Value(v);
                        }
                        None
                    }
                    (Err(e), false) if e.status == status::PERMISSION && peek(addr) == want => None,
                    (other, w) => self.fail(format!(
                        "device write {addr:#x} (writable {w}) gave {other:?}, CPU reads {:#x}",
                        peek(addr)
                    )),
                }
            }
            // CPU write (when writable).
            6 if slot.writable => {
                let v = self.rng.next_u64() | 1;
                poke(addr, v);
                if let Some(s) = self.slots[i].as_mut() {
                    s.shadow[p as usize] = Expect::Value(v);
                }
                None
            }
            // mprotect the slot read-only or back.
            6 | 7 => {
                let writable = !slot.writable;
                let prot = if writable {
                    libc::PROT_READ | libc::PROT_WRITE
                } else {
                    libc::PROT_READ
                };
                // SAFETY: our slot's mapping.
                unsafe {
                    libc::mprotect(
                        slot.addr as *mut libc::c_void,
                        (slot.pages * PAGE) as usize,
                        prot,
                    )
                };
                if let Some(s) = self.slots[i].as_mut() {
                    s.writable = writable;
                }
                None
            }
            // The slot's pages go away (replaced by an inaccessible reservation, so the other
            // thread's mmap cannot take the addresses meanwhile); the device must fail there.
            8 => {
                let len = (slot.pages * PAGE) as usize;
                mmap(
                    slot.addr,
                    len,
                    libc::PROT_NONE,
                    libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_FIXED,
                    -1,
                    0,
                )?;
                self.slots[i] = None;
                self.holes.push((slot.addr, len));
                match self.dev.read64(slot.addr)? {
                    Err(e) if e.status == status::FAULT_UNRESOLVED => None,
                    other => self.fail(format!(
                        "device read of removed {:#x} gave {other:?}",
                        slot.addr
                    )),
                }
            }
            // mremap to a new place, keeping the old range mapped but empty (DONTUNMAP, so the
            // other thread cannot reuse the addresses): the old one must read zeros, the new
            // one hold the data.
            9 => {
                let len = (slot.pages * PAGE) as usize;
                // SAFETY: our slot's private anonymous mapping, moved anywhere.
                let new = unsafe {
                    libc::mremap(
                        slot.addr as *mut libc::c_void,
                        len,
                        len,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP,
                        std::ptr::null_mut::<libc::c_void>(),
                    )
                };
                if new == libc::MAP_FAILED {
                    anyhow::bail!("mremap: {}", std::io::Error::last_os_error());
                }
                let new = new as u64;
                if let Some(s) = self.slots[i].as_mut() {
                    s.addr = new;
                }
                self.holes.push((slot.addr, len));
                match (self.dev.read64(new + p * PAGE)?, self.dev.read64(addr)?) {
                    (Ok(v), Ok(0)) if v == want => None,
                    (at_new, at_old) => self.fail(format!(
                        "after mremap the device read {at_new:?} at the new address (shadow \
                         {want:#x}) and {at_old:?} at the old one (must be 0)"
                    )),
                }
            }
            // MADV_DONTNEED: private anonymous pages read back as zero.
            10 => {
                // SAFETY: our slot's mapping.
                unsafe {
                    libc::madvise(
                        slot.addr as *mut libc::c_void,
                        (slot.pages * PAGE) as usize,
                        libc::MADV_DONTNEED,
                    )
                };
                if let Some(s) = self.slots[i].as_mut() {
                    s.shadow.iter_mut().for_each(|e| *e = Expect::Value(0));
                }
                match self.dev.read64(addr)? {
                    Ok(0) => None,
                    other => self.fail(format!("device read after MADV_DONTNEED gave {other:?}")),
                }
            }
            // fork: the child checks the slot through its own context and exits; the parent's
            // next operations must still see the parent's data (COW).
            _ => {
                // Child statuses: 0 right, 1 wrong value, 2 no context, 3 the read failed.
                let status = in_child(|| {
                    let Ok(dev) = Context::open() else { return 2 };
                    match dev.read64(addr) {
                        Ok(Ok(v)) if v == want => 0,
                        Ok(Ok(_)) => 1,
                        _ => 3,
                    }
                })?;
                match status {
                    0 => None,
                    1 => self.fail(format!("forked child read a wrong value at {addr:#x}")),
                    2 => self.fail("forked child could not open a context".to_string()),
                    s => self.fail(format!(
                        "forked child's read at {addr:#x} failed (status {s})"
                    )),
                }
            }
        })
    }
}

fn run_thread(seed: u64, process: u64, thread: u64, ops: u64, stop: &AtomicBool) -> Result<Tally> {
    let mut worker = Worker {
        rng: XorShiftRng::seed_from_u64(seed ^ (process << 32) ^ (thread << 48) ^ 0x9e37_79b9),
        dev: Context::open()?,
        slots: vec![None; SLOTS],
        ops: 0,
        holes: Vec::new(),
    };
    let mut tally = Tally::default();
    while worker.ops < ops && !stop.load(Ordering::Relaxed) {
        if let Some(mismatch) = worker.step()? {
            tally.mismatch = Some(format!("process {process} thread {thread} {mismatch}"));
            break;
        }
    }
    tally.ops = worker.ops;
    // The context's miss-path counters: how hard the run pushed the retry protocol.
    tally.stats = worker.dev.stats().ok();
    for slot in worker.slots.iter().flatten() {
        munmap(slot.addr, (slot.pages * PAGE) as usize)?;
    }
    for (addr, len) in &worker.holes {
        munmap(*addr, *len)?;
    }
    Ok(tally)
}

/// One process: two threads; exit status 0 when both finished without a mismatch.
fn run_process(seed: u64, process: u64, ops: u64, seconds: u64) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || run_thread(seed, process, t, ops, &stop))
        })
        .collect();
    let mut status = 0;
    let mut total = 0;
    for (thread, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(tally)) => {
                total += tally.ops;
                if let Some(s) = tally.stats {
                    println!(
                        "rmnic-guest: random: process {process} thread {thread}: {} faults, {} retries, {} aborts, {} invalidations",
                        s.faults, s.retries, s.aborts, s.invalidations_received
                    );
                }
                if let Some(m) = tally.mismatch {
                    println!("rmnic-guest: random: MISMATCH {m}");
                    status = 1;
                }
            }
            Ok(Err(e)) => {
                println!("rmnic-guest: random: process {process}: error: {e:#}");
                status = 2;
            }
            Err(_) => {
                println!("rmnic-guest: random: process {process}: a thread panicked");
                status = 3;
            }
        }
    }
    let timed_out = stop.load(Ordering::Relaxed);
    drop(timer);
    println!(
        "rmnic-guest: random: process {process}: {total} operations{}",
        if timed_out {
            " (stopped by the time limit)"
        } else {
            ""
        }
    );
    status
}

/// Runs `procs` processes; returns whether all passed.
pub fn run(seed: u64, procs: u64, ops: u64, seconds: u64) -> Result<bool> {
    crate::coherence::mark_with_own_context("random");
    println!("rmnic-guest: random: seed {seed} (replay: random --seed {seed}), {procs} processes x 2 threads, {ops} operations each, at most {seconds} s");
    let mut pids = Vec::new();
    for process in 0..procs {
        // SAFETY: the child runs `run_process` (its own threads) and exits.
        let pid = unsafe { libc::fork() };
        anyhow::ensure!(pid >= 0, "fork failed");
        if pid == 0 {
            let status = run_process(seed, process, ops, seconds);
            // SAFETY: ends the child.
            unsafe { libc::_exit(status) };
        }
        pids.push(pid);
    }
    let mut passed = true;
    for pid in pids {
        passed &= crate::scenarios::wait(pid)? == 0;
    }
    // How often the miss path's page-table walk failed while an invalidation raced it (the
    // driver walks again rather than fail the command).
    if let Ok(raced) = crate::scenarios::driver_counter("walk_errors_raced") {
        println!("rmnic-guest: random: {raced} miss-path walk errors raced an invalidation and were walked again");
    }
    Ok(passed)
}
