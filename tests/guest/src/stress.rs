//! `rmnic-guest stress`: the platform reproducer. A time-bounded mix of everything that makes
//! a nested guest leave guest mode (MMIO or port I/O exits to the VMM, interrupts, TLB-flush
//! IPIs, page faults on changing page tables, process creation and exit), run in parallel
//! workers so exits from both vCPUs interleave. With `--device` the exits go through the rmnic
//! device and its driver; without, the same shape of load never touches the device, which
//! separates a platform fault from a device or driver fault.
//!
//! Each worker counts its rounds and checks the data it can check; the run ends with one
//! `STRESS` line per worker and a summary. A crash, stall or triple fault is what the host-side
//! soak (`cargo xtask soak`) looks for; wrong data is reported as a failed worker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rmnic_abi::Context;
use rmnic_guest::{Mapping, PAGE};

/// Port read by the no-device MMIO stand-in: nothing in rmnic-vmm claims it, so every read is
/// a full exit to the VMM's vCPU thread, like a BAR0 access, and reads all-ones.
const UNCLAIMED_PORT: u16 = 0x80;

/// What one worker did.
struct Tally {
    name: &'static str,
    rounds: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            rounds: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
        })
    }

    fn round(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, what: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            if let Ok(mut first) = self.first_error.lock() {
                *first = Some(what.to_string());
            }
        }
    }
}

/// Runs the reproducer for `seconds`; `device` selects the rmnic-backed load.
pub fn run(seconds: u64, device: bool) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    if !device {
        // SAFETY: ioperm only changes this process's (and its threads') I/O permissions.
        if unsafe { libc::ioperm(UNCLAIMED_PORT.into(), 1, 1) } != 0 {
            bail!(
                "ioperm({UNCLAIMED_PORT:#x}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    println!(
        "rmnic-guest: stress for {seconds} s, {} load",
        if device { "device" } else { "no-device" }
    );
    type Worker = fn(&Tally, bool, &AtomicBool) -> Result<()>;
    let workers: [(&'static str, Worker); 5] = [
        ("register-storm", register_storm),
        ("mprotect-toggle", mprotect_toggle),
        ("ops-next-to-toggle", ops_next_to_toggle),
        ("open-close-churn", open_close_churn),
        ("fork-exit-churn", fork_exit_churn),
    ];
    let mut handles = Vec::new();
    let mut tallies = Vec::new();
    for (name, work) in workers {
        let tally = Tally::new(name);
        tallies.push(tally.clone());
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            if let Err(e) = work(&tally, device, &stop) {
                tally.error(format!("{e:#}"));
            }
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let mut ok = true;
    for t in &tallies {
        let rounds = t.rounds.load(Ordering::Relaxed);
        let errors = t.errors.load(Ordering::Relaxed);
        let first = t.first_error.lock().ok().and_then(|f| f.clone());
        let good = errors == 0 && rounds > 0;
        ok &= good;
        println!(
            "STRESS {} {} rounds {rounds} errors {errors}{}",
            t.name,
            if good { "ok" } else { "FAILED" },
            first.map(|f| format!(" first: {f}")).unwrap_or_default()
        );
    }
    println!(
        "rmnic-guest: stress {}",
        if ok { "passed" } else { "FAILED" }
    );
    Ok(ok)
}

/// Device register round trips through the driver (device), or port reads that exit to the
/// VMM (no device): a pure exit storm.
fn register_storm(t: &Tally, device: bool, stop: &AtomicBool) -> Result<()> {
    let dev = if device { Some(Context::open()?) } else { None };
    let mut value = 0u32;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            value = value.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            match &dev {
                Some(dev) => match dev.scratch_round_trip(value) {
                    Ok(back) if back == value => {}
                    Ok(back) => t.error(format!("scratch wrote {value:#x} read {back:#x}")),
                    Err(e) => t.error(e),
                },
                None => {
                    let back = inb(UNCLAIMED_PORT);
                    if back != 0xff {
                        t.error(format!("unclaimed port read {back:#x}"));
                    }
                }
            }
        }
        t.round();
    }
    Ok(())
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `run` granted this process access to `port` with ioperm; reading it has no
    // effect on this process's memory.
    unsafe {
        core::arch::asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack));
    }
    value
}

/// Toggles one page read-only and back, as fast as it can: every call changes page tables and
/// sends a TLB-flush IPI to the other vCPU (and, with a device, an invalidation).
fn mprotect_toggle(t: &Tally, _device: bool, stop: &AtomicBool) -> Result<()> {
    let buf = Mapping::new(2 * PAGE, false)?;
    buf.write_u64(0, 1);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: our own mapping's first page.
        let rc = unsafe {
            libc::mprotect(buf.addr() as *mut _, PAGE, libc::PROT_READ);
            libc::mprotect(
                buf.addr() as *mut _,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            t.error(format!("mprotect: {}", std::io::Error::last_os_error()));
        }
        buf.write_u64(0, buf.read_u64(0).wrapping_add(1));
        // A neighbour access through the CPU keeps the second page's PTE hot too.
        buf.write_u64(PAGE, buf.read_u64(0));
        t.round();
    }
    Ok(())
}

/// Device operations (or CPU stores) on a page whose neighbour another thread of the same
/// process keeps re-protecting: faults, drop-ins and invalidations race in one address space.
fn ops_next_to_toggle(t: &Tally, device: bool, stop: &AtomicBool) -> Result<()> {
    let buf = Mapping::new(4 * PAGE, false)?;
    let dev = if device { Some(Context::open()?) } else { None };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // SAFETY: our own mapping's first page.
        unsafe { libc::mprotect(buf.addr() as *mut _, PAGE, libc::PROT_READ) };
        let off = PAGE + (n as usize % 3) * PAGE;
        match &dev {
            Some(dev) => match dev.write64(buf.addr() + off as u64, n) {
                Ok(Ok(())) if buf.read_u64(off) == n => {}
                Ok(Ok(())) => t.error(format!("device write {n} read back {}", buf.read_u64(off))),
                Ok(Err(e)) => t.error(format!("write64 at +{off:#x}: {e}")),
                Err(e) => t.error(e),
            },
            None => {
                buf.write_u64(off, n);
                if buf.read_u64(off) != n {
                    t.error("CPU store lost");
                }
            }
        }
        // SAFETY: as above.
        unsafe {
            libc::mprotect(
                buf.addr() as *mut _,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        t.round();
    }
    Ok(())
}

/// Opens a context, runs one operation, closes it (device); maps, touches and unmaps memory
/// (no device).
fn open_close_churn(t: &Tally, device: bool, stop: &AtomicBool) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let mut buf = Mapping::new(PAGE, false)?;
        if device {
            match Context::open() {
                Ok(dev) => match dev.fill(buf.addr(), PAGE as u64, 0x5a5a) {
                    Ok(Ok(())) if buf.read_u64(0) == 0x5a5a => {}
                    Ok(Ok(())) => t.error("fill not visible to the CPU"),
                    Ok(Err(e)) => t.error(format!("fill: {e}")),
                    Err(e) => t.error(e),
                },
                Err(e) => t.error(e),
            }
        } else {
            buf.bytes_mut().fill(0x5a);
        }
        buf.unmap();
        t.round();
    }
    Ok(())
}

/// Forks children that touch copy-on-write memory (and, with a device, open a context and
/// leave a command in flight) and exit; the parent reaps them.
fn fork_exit_churn(t: &Tally, device: bool, stop: &AtomicBool) -> Result<()> {
    let buf = Mapping::new(16 * PAGE, false)?;
    buf.write_u64(0, 7);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the child only touches its copy of `buf`, uses the device through ioctls and
        // leaves with _exit, never returning into the parent's code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut ok = buf.read_u64(0) == 7;
            for i in 0..16 {
                buf.write_u64(i * PAGE, i as u64);
            }
            if device {
                ok &= match Context::open() {
                    Ok(dev) => {
                        let cmd = rmnic_abi::Command {
                            opcode: rmnic_abi::opcode::FILL,
                            addr0: buf.addr(),
                            length: (16 * PAGE) as u64,
                            operand0: 3,
                            ..rmnic_abi::Command::default()
                        };
                        dev.submit(std::slice::from_ref(&cmd)).is_ok()
                    }
                    Err(_) => false,
                };
            }
            // SAFETY: terminating the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            t.error(format!("child wait status {status:#x}"));
        }
        if buf.read_u64(0) != 7 {
            t.error("a child's store reached the parent");
        }
        t.round();
    }
    Ok(())
}
