//! Guest-side coherence checks: every device operation through the real driver, and the page
//! table changes (munmap, mprotect, fork/COW, exit, THP) the driver must shoot down.
//!
//! Each check prints `CHECK <name> ok|FAILED <detail>`; the host-side test asserts on them.

use anyhow::{bail, Result};
use rmnic_abi::{opcode, status, Command, Completion, Context, ContextStats};
use rmnic_guest::Mapping;

use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
const HUGE: usize = 2 << 20;

fn delta(after: &ContextStats, before: &ContextStats) -> (u64, u64, u64, u64) {
    (
        after.faults - before.faults,
        after.dropins_4k - before.dropins_4k,
        after.dropins_2m - before.dropins_2m,
        after.invalidations_sent - before.invalidations_sent,
    )
}

use crate::scenarios::status_of;

/// Every opcode produces the right data.
fn ops(dev: &Context, c: &mut Checks) -> Result<()> {
    let mut src = Mapping::new(16 * PAGE, false)?;
    let dst = Mapping::new(16 * PAGE, false)?;
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    dev.fill(dst.addr(), (16 * PAGE) as u64, 0x0123_4567_89ab_cdef)??;
    let filled = dst
        .bytes()
        .chunks(8)
        .all(|w| w == 0x0123_4567_89ab_cdef_u64.to_le_bytes());
    c.check("op-fill", filled, "64 KiB pattern fill");

    dev.copy(dst.addr() + 100, src.addr() + 5, 40_000)??;
    let copied = dst.bytes()[100..40_100] == src.bytes()[5..40_005];
    let pattern = 0x0123_4567_89ab_cdef_u64.to_le_bytes();
    let edges_kept =
        dst.bytes()[99] == pattern[99 % 8] && dst.bytes()[40_100] == pattern[40_100 % 8];
    c.check(
        "op-copy",
        copied && edges_kept,
        "unaligned 40000-byte copy across pages",
    );

    dev.write64(dst.addr() + 8, 0xdead_beef_cafe_f00d)??;
    c.check(
        "op-write64",
        dst.read_u64(8) == 0xdead_beef_cafe_f00d,
        "CPU sees device write",
    );
    dst.write_u64(16, 0x1111_2222_3333_4444);
    let read = dev.read64(dst.addr() + 16)??;
    c.check(
        "op-read64",
        read == 0x1111_2222_3333_4444,
        format!("read {read:#x}"),
    );

    dst.write_u64(24, 40);
    let old = dev.fetch_add(dst.addr() + 24, 2)??;
    c.check(
        "op-fetch-add",
        old == 40 && dst.read_u64(24) == 42,
        format!("old {old} new {}", dst.read_u64(24)),
    );

    let old = dev.cas(dst.addr() + 24, 42, 7)??;
    let hit = old == 42 && dst.read_u64(24) == 7;
    let old2 = dev.cas(dst.addr() + 24, 42, 9)??;
    let miss = old2 == 7 && dst.read_u64(24) == 7;
    c.check(
        "op-cas",
        hit && miss,
        format!("success old {old}, failure old {old2}"),
    );

    let old = dev.swap(dst.addr() + 24, 99)??;
    c.check(
        "op-swap",
        old == 7 && dst.read_u64(24) == 99,
        format!("old {old}"),
    );

    dev.fence()??;
    c.check("op-fence", true, "fence completed");

    let misaligned = dev.read64(dst.addr() + 3)?;
    c.check(
        "op-alignment",
        status_of(&misaligned) == status::ALIGNMENT,
        format!("status {}", status_of(&misaligned)),
    );

    // A batch: 64 FETCH_ADDs on one word, one submit, completions in order.
    dst.write_u64(32, 0);
    let batch: Vec<Command> = (0..64)
        .map(|i| Command {
            opcode: opcode::FETCH_ADD,
            id: 1000 + i,
            addr0: dst.addr() + 32,
            operand0: 1,
            ..Command::default()
        })
        .collect();
    let queued = dev.submit(&batch)?;
    let mut done = vec![Completion::default(); 64];
    let mut got = 0;
    while got < queued {
        got += dev.wait(&mut done[got..], 1, 5000)?;
    }
    let in_order = done
        .iter()
        .enumerate()
        .all(|(i, d)| d.id == 1000 + i as u64 && d.status == 0);
    c.check(
        "op-batch",
        queued == 64 && in_order && dst.read_u64(32) == 64,
        format!("queued {queued}, word {}", dst.read_u64(32)),
    );
    crate::scenarios::user_queue::checks(c)
}

/// First touch of a fresh buffer drops every page in once, in at most one miss per page
/// (fewer with fault-ahead: pages the first miss's fault mapped go in with it), and a second
/// pass misses nothing; 2 MiB pages fault once.
fn faults(dev: &Context, c: &mut Checks) -> Result<()> {
    let buf = Mapping::new(16 * PAGE, false)?;
    let before = dev.stats()?;
    dev.fill(buf.addr(), (16 * PAGE) as u64, 0x5a5a)??;
    let first = dev.stats()?;
    dev.fill(buf.addr(), (16 * PAGE) as u64, 0xa5a5)??;
    let second = dev.stats()?;
    let (f1, d1, _, _) = delta(&first, &before);
    let (f2, _, _, _) = delta(&second, &first);
    c.check(
        "fault-once-per-page",
        (1..=16).contains(&f1) && d1 == 16 && f2 == 0,
        format!("first pass {f1} faults / {d1} drop-ins, second pass {f2} faults"),
    );

    // The same counters in debugfs (init mounts it at /sys/kernel/debug).
    let s = dev.stats()?;
    let path = format!(
        "/sys/kernel/debug/rmnic/ctx{}-asid{}/faults",
        s.context, s.asid
    );
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    c.check(
        "debugfs-counters",
        text.trim().parse::<u64>().ok() == Some(s.faults),
        format!("{path}: {:?}, ioctl: {}", text.trim(), s.faults),
    );

    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let mut huge = Mapping::aligned(2 * HUGE, HUGE)?;
    huge.advise(libc::MADV_HUGEPAGE)?;
    huge.bytes_mut()[0] = 1;
    huge.bytes_mut()[HUGE] = 1;
    let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let anon_huge = smaps
        .lines()
        .find(|l| l.starts_with("AnonHugePages:"))
        .unwrap_or("AnonHugePages: ?")
        .to_string();
    let before = dev.stats()?;
    dev.fill(huge.addr(), (2 * HUGE) as u64, 0x77)??;
    let after = dev.stats()?;
    let (f, d4, d2, _) = delta(&after, &before);
    c.check(
        "fault-once-per-2m-page",
        f == 2 && d2 == 2 && d4 == 0,
        format!(
            "{f} faults, {d2} 2 MiB / {d4} 4 KiB drop-ins ({}; {anon_huge})",
            thp.trim()
        ),
    );
    Ok(())
}

/// munmap after device use: the next device access fails cleanly and never reads the old page.
fn munmap(dev: &Context, c: &mut Checks) -> Result<()> {
    let mut buf = Mapping::new(4 * PAGE, false)?;
    dev.fill(buf.addr(), (4 * PAGE) as u64, 0x4242)??;
    let addr = buf.addr();
    let before = dev.stats()?;
    buf.unmap();
    let after = dev.stats()?;
    let res = dev.read64(addr)?;
    c.check(
        "munmap-shootdown",
        after.invalidations_sent > before.invalidations_sent,
        format!(
            "{} invalidations sent",
            after.invalidations_sent - before.invalidations_sent
        ),
    );
    c.check(
        "munmap-access-fails",
        status_of(&res) == status::FAULT_UNRESOLVED,
        format!("status {} ({:?})", status_of(&res), res),
    );

    // Map something new at the same address: the device must see the new page.
    // SAFETY: MAP_FIXED over an address range we just unmapped and own.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("MAP_FIXED remap failed");
    }
    // SAFETY: just mapped, 8-byte aligned.
    unsafe { (p as *mut u64).write_volatile(0x600d_600d) };
    let seen = dev.read64(addr)?;
    c.check(
        "munmap-remap-sees-new-page",
        matches!(seen, Ok(0x600d_600d)),
        format!("{seen:?}"),
    );
    // SAFETY: unmapping what we mapped above.
    unsafe { libc::munmap(p, PAGE) };
    Ok(())
}

/// mprotect read-only: device writes fail with a permission status, reads still work.
fn mprotect(dev: &Context, c: &mut Checks) -> Result<()> {
    let buf = Mapping::new(2 * PAGE, false)?;
    dev.write64(buf.addr(), 5)??;
    buf.protect(libc::PROT_READ)?;
    let write = dev.write64(buf.addr(), 6)?;
    let read = dev.read64(buf.addr())?;
    c.check(
        "mprotect-write-denied",
        status_of(&write) == status::PERMISSION && buf.read_u64(0) == 5,
        format!(
            "write status {}, value {}",
            status_of(&write),
            buf.read_u64(0)
        ),
    );
    c.check(
        "mprotect-read-allowed",
        matches!(read, Ok(5)),
        format!("{read:?}"),
    );
    // The read left a read-only entry in the device TLB: a write must still be refused, not
    // go through it.
    let through_read_only = dev.write64(buf.addr(), 8)?;
    c.check(
        "mprotect-write-after-read-denied",
        status_of(&through_read_only) == status::PERMISSION && buf.read_u64(0) == 5,
        format!(
            "write status {}, value {}",
            status_of(&through_read_only),
            buf.read_u64(0)
        ),
    );
    buf.protect(libc::PROT_READ | libc::PROT_WRITE)?;
    let again = dev.write64(buf.addr(), 7)?;
    c.check(
        "mprotect-restored",
        again.is_ok() && buf.read_u64(0) == 7,
        format!("{again:?}"),
    );
    Ok(())
}

/// fork + copy-on-write: the parent's device writes land in the parent's pages; the child
/// keeps its own copy.
fn fork_cow(dev: &Context, c: &mut Checks) -> Result<()> {
    let buf = Mapping::new(PAGE, false)?;
    dev.write64(buf.addr(), 0xaaaa)??; // device TLB now holds a writable entry
    let mut pipe = [0i32; 2];
    // SAFETY: plain pipe creation into a 2-element array.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        bail!("pipe failed");
    }
    // SAFETY: the child only uses async-signal-safe calls (read, volatile memory access, _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut byte = 0u8;
        // SAFETY: reading one byte into a local.
        unsafe { libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) };
        let mine = buf.read_u64(0);
        // SAFETY: terminating the child.
        unsafe { libc::_exit(if mine == 0xaaaa { 0 } else { 1 }) };
    }
    if pid < 0 {
        bail!("fork failed");
    }
    let res = dev.write64(buf.addr(), 0xbbbb)?;
    // SAFETY: writing one byte from a local to our pipe.
    unsafe { libc::write(pipe[1], (&1u8 as *const u8).cast(), 1) };
    let mut wstatus = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut wstatus, 0) };
    let child_ok = libc::WIFEXITED(wstatus) && libc::WEXITSTATUS(wstatus) == 0;
    c.check(
        "fork-cow-parent-sees-device-write",
        res.is_ok() && buf.read_u64(0) == 0xbbbb,
        format!("{res:?}, parent reads {:#x}", buf.read_u64(0)),
    );
    c.check(
        "fork-cow-child-keeps-its-copy",
        child_ok,
        format!("child wait status {wstatus:#x}"),
    );
    // SAFETY: closing our pipe fds.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    Ok(())
}

/// Runs `f` in `n` forked children at once; returns how many exited 0.
fn in_children(n: usize, f: impl Fn(usize) -> bool) -> usize {
    let mut pids = Vec::new();
    for i in 0..n {
        // SAFETY: the child runs `f` and exits without returning into the parent's code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = f(i);
            // SAFETY: terminating the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        pids.push(pid);
    }
    pids.into_iter()
        .filter(|&pid| {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            pid > 0
                && unsafe { libc::waitpid(pid, &mut status, 0) } == pid
                && libc::WIFEXITED(status)
                && libc::WEXITSTATUS(status) == 0
        })
        .count()
}

/// Process exit with commands in flight leaves no leaked context; many processes at once.
fn processes(c: &mut Checks) -> Result<()> {
    // 80 short-lived processes (more than the device's 64 contexts): each queues 64 FILLs and
    // exits without waiting. A leaked context would make the later ones fail to open.
    let ok = (0..8)
        .map(|_| {
            in_children(10, |_| {
                let Ok(dev) = Context::open() else {
                    return false;
                };
                let Ok(buf) = Mapping::new(64 * PAGE, false) else {
                    return false;
                };
                let cmds = crate::scenarios::page_fills(buf.addr(), 64);
                dev.submit(&cmds).is_ok()
            })
        })
        .sum::<usize>();
    c.check(
        "exit-with-commands-in-flight",
        ok == 80,
        format!("{ok}/80 processes opened and submitted"),
    );
    let dev = Context::open();
    c.check(
        "no-context-leaked",
        dev.is_ok(),
        format!("open after 80 exits: {:?}", dev.as_ref().err()),
    );

    // 8 processes with a context each, at once, plus cross-process atomics on shared memory.
    let shared = Mapping::new(PAGE, true)?;
    shared.write_u64(0, 0);
    let ok = in_children(8, |i| {
        let Ok(dev) = Context::open() else {
            return false;
        };
        let Ok(buf) = Mapping::new(8 * PAGE, false) else {
            return false;
        };
        let pattern = 0x1000 + i as u64;
        if !matches!(dev.fill(buf.addr(), (8 * PAGE) as u64, pattern), Ok(Ok(()))) {
            return false;
        }
        if !(0..8 * PAGE / 8).all(|w| buf.read_u64(w * 8) == pattern) {
            return false;
        }
        (0..50).all(|_| matches!(dev.fetch_add(shared.addr(), 1), Ok(Ok(_))))
    });
    c.check(
        "many-processes",
        ok == 8 && shared.read_u64(0) == 400,
        format!(
            "{ok}/8 children ok, shared counter {} (want 400)",
            shared.read_u64(0)
        ),
    );
    Ok(())
}

/// `poll()` on a context reports completions.
fn poll(dev: &Context, c: &mut Checks) -> Result<()> {
    let buf = Mapping::new(PAGE, false)?;
    let idle = dev.poll_ready(0)?;
    let cmd = Command {
        opcode: opcode::WRITE64,
        id: 77,
        addr0: buf.addr(),
        operand0: 9,
        ..Command::default()
    };
    dev.submit(std::slice::from_ref(&cmd))?;
    let ready = dev.poll_ready(10_000)?;
    let mut out = [Completion::default()];
    let got = dev.wait(&mut out, 0, 0)?;
    c.check(
        "poll-reports-completion",
        !idle && ready && got == 1 && out[0].id == 77 && buf.read_u64(0) == 9,
        format!("idle {idle}, ready {ready}, collected {got}"),
    );
    Ok(())
}

/// Driver teardown with a context open: unload is refused; unbinding the device makes the open
/// context fail cleanly with ENODEV; rebinding brings a working device back.
fn teardown(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let rmmod = std::process::Command::new("rmmod").arg("rmnic").output()?;
    c.check(
        "unload-refused-while-open",
        !rmmod.status.success() && dev.version().is_ok(),
        String::from_utf8_lossy(&rmmod.stderr).trim().to_string(),
    );
    let driver = std::path::Path::new("/sys/bus/pci/drivers/rmnic");
    let bdf = std::fs::read_dir(driver)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("0000:"))
        .ok_or_else(|| anyhow::anyhow!("no device bound to rmnic"))?;
    std::fs::write(driver.join("unbind"), &bdf)?;
    let after = dev.version();
    let enodev = matches!(&after, Err(rmnic_abi::Error::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::ENODEV));
    drop(dev);
    c.check("unbind-with-open-context", enodev, format!("{after:?}"));
    std::fs::write(driver.join("bind"), &bdf)?;
    let again = Context::open().and_then(|d| {
        let buf = Mapping::new(PAGE, false).map_err(|e| rmnic_abi::Error::Ioctl {
            name: "mmap",
            source: std::io::Error::other(e.to_string()),
        })?;
        d.write64(buf.addr(), 3)
            .map(|r| r.is_ok() && buf.read_u64(0) == 3)
    });
    c.check(
        "rebind-works",
        matches!(again, Ok(true)),
        format!("{again:?}"),
    );
    Ok(())
}

/// The `processes` workload with the CPU doing the device's work: tells a fault of the test
/// platform (nested emulation) apart from a fault of the device or driver.
pub fn cpu_only_processes(c: &mut Checks) -> Result<()> {
    let ok = (0..8)
        .map(|_| {
            in_children(10, |i| {
                let Ok(mut buf) = Mapping::new(64 * PAGE, false) else {
                    return false;
                };
                buf.bytes_mut().fill(i as u8);
                true
            })
        })
        .sum::<usize>();
    let shared = Mapping::new(PAGE, true)?;
    let ok2 = in_children(8, |i| {
        let Ok(mut buf) = Mapping::new(8 * PAGE, false) else {
            return false;
        };
        buf.bytes_mut().fill(i as u8);
        // SAFETY: 8-byte aligned word in a shared mapping that outlives the children.
        let word = unsafe { &*(shared.addr() as *const std::sync::atomic::AtomicU64) };
        for _ in 0..50 {
            word.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        true
    });
    c.check(
        "cpu-only-processes",
        ok == 80 && ok2 == 8 && shared.read_u64(0) == 400,
        format!("{ok}/80, {ok2}/8, counter {}", shared.read_u64(0)),
    );
    Ok(())
}

/// Check groups, in the order they run.
pub const GROUPS: &[&str] = &[
    "ops",
    "faults",
    "munmap",
    "mprotect",
    "fork",
    "poll",
    "processes",
    "remap",
    "madvise",
    "swap",
    "protect",
    "share",
    "threads",
    "contexts",
    "file",
    "thp",
    "hugetlb",
    "ksm",
    "migrate",
    "large",
    "asid",
    "close",
    "oom",
    "teardown",
    "leaks",
];

/// Value the suite writes to the device's scratch register when group `index` (in [`GROUPS`])
/// starts: the write is in the device's event log, so a trace tells the groups apart
/// (`cargo xtask coherence` attributes device operations and violations to groups with it).
pub const GROUP_MARKER: u32 = 0x5c00_0000;

/// Runs the check groups named in `only` (all when empty), less those in `skip`.
pub fn run(c: &mut Checks, only: &[String], skip: &[String]) -> Result<()> {
    let wanted =
        |g: &str| (only.is_empty() || only.iter().any(|o| o == g)) && !skip.iter().any(|s| s == g);
    let baseline = crate::scenarios::scale::Baseline::take()?;
    let dev = Context::open()?;
    let groups: Vec<&str> = if only.is_empty() {
        GROUPS.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    let groups: Vec<&str> = groups.into_iter().filter(|g| wanted(g)).collect();
    use crate::scenarios as sc;
    for group in groups {
        if group == "teardown" || group == "leaks" {
            // Run last, after the context is closed (below).
            continue;
        }
        mark(&dev, group);
        match group {
            "ops" => ops(&dev, c)?,
            "faults" => faults(&dev, c)?,
            "munmap" => munmap(&dev, c)?,
            "mprotect" => mprotect(&dev, c)?,
            "fork" => fork_cow(&dev, c)?,
            "poll" => poll(&dev, c)?,
            "processes" => processes(c)?,
            "cpu-only" => cpu_only_processes(c)?,
            "remap" => sc::remap::run(&dev, c)?,
            "madvise" => sc::madvise::madvise(&dev, c)?,
            "swap" => sc::madvise::swap(&dev, c)?,
            "protect" => sc::protect::run(&dev, c)?,
            "share" => sc::share::share(&dev, c)?,
            "threads" => sc::share::threads(c)?,
            "contexts" => sc::share::contexts(&dev, c)?,
            "file" => sc::file::run(&dev, c)?,
            "thp" => sc::memory::thp(&dev, c)?,
            "hugetlb" => sc::memory::hugetlb(&dev, c)?,
            "ksm" => sc::memory::ksm(&dev, c)?,
            "migrate" => sc::memory::migrate(&dev, c)?,
            "large" => sc::scale::large(&dev, c)?,
            "asid" => sc::scale::asid(c)?,
            "close" => sc::scale::close_in_flight(c)?,
            "oom" => sc::oom::run(c)?,
            "teardown" | "leaks" => {}
            other => bail!("unknown check group {other}"),
        }
    }
    let s = dev.stats()?;
    println!(
        "rmnic-guest: counters: submitted {} completed {} faults {} drop-ins {}+{} aborts {} invalidations received {} sent {} retries {}",
        s.submitted, s.completed, s.faults, s.dropins_4k, s.dropins_2m, s.aborts,
        s.invalidations_received, s.invalidations_sent, s.retries
    );
    drop(dev);
    // Last: it unbinds and rebinds the device under every other context's feet.
    if wanted("teardown") {
        mark_with_own_context("teardown");
        teardown(c)?;
    }
    if wanted("leaks") {
        mark_with_own_context("leaks");
        crate::scenarios::scale::leaks(baseline, c)?;
    }
    mark_with_own_context("dmesg");
    dmesg_clean(c);
    Ok(())
}

/// Kernel log lines that mean the kernel found something wrong (a warning, a bug, a lockdep
/// report, a sleep in atomic context), whatever the checks saw.
const KERNEL_COMPLAINTS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "possible circular locking",
    "inconsistent lock state",
    "possible recursive locking",
    "sleeping function called from invalid context",
    "INFO: task",
    "general protection fault",
];

/// The kernel log has none of [`KERNEL_COMPLAINTS`].
fn dmesg_clean(c: &mut Checks) {
    let log = crate::kernel_log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| KERNEL_COMPLAINTS.iter().any(|k| l.contains(k)))
        .take(5)
        .collect();
    c.check(
        "dmesg-clean",
        bad.is_empty(),
        if bad.is_empty() {
            "no warning, BUG, lockdep or sleep-in-atomic report".to_string()
        } else {
            bad.join(" | ")
        },
    );
}

/// Announces group `name` on the console and in the device's event log (scratch register).
pub fn mark(dev: &Context, name: &str) {
    // Groups first, then the parts outside GROUPS that have rows of their own.
    let index = GROUPS
        .iter()
        .chain(["dmesg", "random"].iter())
        .position(|g| *g == name)
        .unwrap_or(0xff);
    // CAST: fewer than 255 names.
    let marker = GROUP_MARKER | index as u32;
    println!("rmnic-guest: coherence group {name} (marker {marker:#x})");
    let _ = dev.scratch_round_trip(marker);
}

/// [`mark`] through a context of its own, closed at once (for groups that run without one).
pub fn mark_with_own_context(name: &str) {
    match Context::open() {
        Ok(dev) => mark(&dev, name),
        Err(_) => println!("rmnic-guest: coherence group {name} (no marker: no context)"),
    }
}
