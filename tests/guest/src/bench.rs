//! `rmnic-guest bench`: the guest-side figures of `cargo xtask bench` (issue 12), each measured
//! side by side with its baseline in the same process, alternating, so drift in the (emulated)
//! machine hits both alike.
//!
//! Every sample is one line, `BENCH <metric> unit=<unit> rmnic=<value> baseline=<value>`;
//! figures that are counts, not timings, are `BENCHINFO <metric> <key>=<value>...` lines. The
//! harness (`xtask/src/bench.rs`) takes medians, minimums and maximums. Nothing is asserted
//! here except that the device did what was asked (wrong data or a failed command is an
//! error, not a figure).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rmnic_abi::abi::{opcode, Completion, MAX_BATCH};
use rmnic_abi::{command, Address, Context};
use rmnic_guest::{Mapping, PAGE};

/// 2 MiB: a transparent huge page.
const HUGE: usize = 2 << 20;

/// BAR0 offsets this program reads and writes (docs/device-spec.md §4, §5, §6).
mod bar0 {
    /// `REG_ID`: read-only, no side effect.
    pub const ID: usize = 0x000;
    /// `REG_SCRATCH`: read-write, no side effect: the "ordinary" MMIO write.
    pub const SCRATCH: usize = 0x008;
    /// `STAT_INVAL_RANGE`, `STAT_INVAL_ASID`, `STAT_INVAL_GLOBAL`: 64-bit counters.
    pub const STAT_INVAL: [usize; 3] = [0x118, 0x120, 0x128];
    /// Context block *i* at `CTX_BLOCK_BASE + i * CTX_BLOCK_SIZE`.
    pub const CTX_BLOCK_BASE: usize = 0x4000;
    /// Size of a context block.
    pub const CTX_BLOCK_SIZE: usize = 0x100;
    /// `CQ_DOORBELL` within a context block.
    pub const CQ_DOORBELL: usize = 0x40;
}

/// QEMU's `edu` device (`-device edu`), the baseline of the MMIO read: vendor and device id,
/// and its identification register (read-only, no side effect).
const EDU_ID: (&str, &str) = ("0x1234", "0x11e8");

/// What to measure and how often.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Samples of each metric.
    pub samples: u32,
    /// Largest shootdown region in MiB (1024 for the 1 GiB; the guest needs the RAM).
    pub max_region_mib: usize,
    /// Device COPY and memcpy buffer size in MiB.
    pub copy_mib: usize,
    /// Only these groups (`mmio`, `doorbell`, `submission`, `copy`, `shootdown`, `exit`);
    /// empty: all.
    pub only: Vec<String>,
}

impl Plan {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

/// Runs every guest-side benchmark of `plan`.
pub fn run(plan: &Plan) -> Result<()> {
    let edu = find_device(EDU_ID).map(|dir| Bar::open(&dir)).transpose()?;
    let Ok(rmnic_dir) = device_dir_of_driver("rmnic") else {
        // No rmnic device: this is the baseline VMM's boot (QEMU in the emulated host, whose
        // MMIO reads are compared with rmnic-vmm's in another boot).
        ensure!(
            plan.only == ["mmio"],
            "no rmnic device: only `--only mmio` can run (edu's reads alone)"
        );
        let edu = edu.context("no rmnic device and no edu device: nothing to measure")?;
        return mmio_baseline(plan, &edu);
    };
    let rmnic = Bar::open(&rmnic_dir)?;
    const GROUPS: [&str; 8] = [
        "mmio",
        "doorbell",
        "submission",
        "copy",
        "faultahead",
        "peer",
        "shootdown",
        "exit",
    ];
    if let Some(bad) = plan.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        bail!("--only {bad}: the groups are {}", GROUPS.join(", "));
    }
    if plan.wants("mmio") {
        mmio_read(plan, &rmnic, edu.as_ref())?;
    }
    if plan.wants("doorbell") {
        doorbell(plan, &rmnic)?;
    }
    if plan.wants("submission") {
        submission(plan)?;
    }
    if plan.wants("copy") {
        copy_and_misses(plan)?;
    }
    if plan.wants("faultahead") {
        fault_ahead(plan)?;
    }
    if plan.wants("peer") {
        peer_device(plan)?;
    }
    if plan.wants("shootdown") {
        shootdowns(plan, &rmnic)?;
    }
    if plan.wants("exit") {
        exit(plan, &rmnic)?;
    }
    Ok(())
}

fn sample(metric: &str, unit: &str, rmnic: f64, baseline: Option<f64>) {
    let baseline = baseline.map_or_else(|| "none".to_string(), |b| format!("{b:.3}"));
    println!("BENCH {metric} unit={unit} rmnic={rmnic:.3} baseline={baseline}");
}

fn per(elapsed: Duration, count: usize) -> f64 {
    // CAST: counts far below 2^52.
    elapsed.as_secs_f64() * 1e9 / count as f64
}

/// Register reads per MMIO sample.
const MMIO_READS: usize = 2000;

/// MMIO reads: rmnic's `REG_ID` against edu's identification register, ns per read.
fn mmio_read(plan: &Plan, rmnic: &Bar, edu: Option<&Bar>) -> Result<()> {
    ensure!(
        rmnic.read32(bar0::ID) == 0x524d_4e43,
        "BAR0 REG_ID through resource0 is not RMNC"
    );
    for _ in 0..plan.samples {
        let ours = timed(MMIO_READS, || {
            rmnic.read32(bar0::ID);
        });
        let theirs = edu.map(|edu| {
            timed(MMIO_READS, || {
                edu.read32(0);
            })
        });
        sample("mmio-read", "ns", ours, theirs);
    }
    Ok(())
}

/// MMIO reads of edu's identification register alone, ns per read: `BENCHBASE` lines, the
/// baseline of `mmio-read` measured in a boot of its own (another VMM, no rmnic device).
fn mmio_baseline(plan: &Plan, edu: &Bar) -> Result<()> {
    for _ in 0..plan.samples {
        let theirs = timed(MMIO_READS, || {
            edu.read32(0);
        });
        println!("BENCHBASE mmio-read unit=ns baseline={theirs:.3}");
    }
    Ok(())
}

/// Doorbell writes (the context's `CQ_DOORBELL`, nothing queued) against an ordinary MMIO
/// write (`REG_SCRATCH`), ns per write.
fn doorbell(plan: &Plan, rmnic: &Bar) -> Result<()> {
    const WRITES: usize = 2000;
    let device = Context::open()?;
    let ctx = device.stats()?.context as usize;
    let doorbell = bar0::CTX_BLOCK_BASE + ctx * bar0::CTX_BLOCK_SIZE + bar0::CQ_DOORBELL;
    for _ in 0..plan.samples {
        let ours = timed(WRITES, || rmnic.write32(doorbell, 1));
        let theirs = timed(WRITES, || rmnic.write32(bar0::SCRATCH, 0x5a5a));
        sample("doorbell", "ns", ours, Some(theirs));
    }
    // The context still works after the doorbells rang on an empty ring.
    let buf = Mapping::new(PAGE, false)?;
    device.write64(buf.addr(), 7)??;
    ensure!(buf.read_u64(0) == 7, "doorbell: the context broke");
    Ok(())
}

/// Runs `f` `count` times; ns per call.
fn timed(count: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..count {
        f();
    }
    per(start.elapsed(), count)
}

/// Cost per command (NOP) submitted in batches of 1, 16 and 256 and waited for, against a bare
/// ioctl of the same file that touches no device register (`RMNIC_IOC_STATS`), ns.
fn submission(plan: &Plan) -> Result<()> {
    const COMMANDS: usize = 2048;
    let device = Context::open()?;
    // User-level submission (ABI 6): a second context whose queue this process drives itself.
    let user_ctx = Context::open()?;
    let mut user = user_ctx.user_queue()?;
    for _ in 0..plan.samples {
        for batch in [1usize, 16, 256] {
            let start = Instant::now();
            let mut done = 0;
            while done < COMMANDS {
                run_batch(&device, batch)?;
                done += batch;
            }
            let ours = per(start.elapsed(), done);
            let syscall = timed(COMMANDS / 4, || {
                let _ = device.stats();
            });
            sample(&format!("submit-batch-{batch}"), "ns", ours, Some(syscall));
            let start = Instant::now();
            let mut done = 0;
            while done < COMMANDS {
                run_user_batch(&mut user, batch)?;
                done += batch;
            }
            let mine = per(start.elapsed(), done);
            sample(
                &format!("user-submit-batch-{batch}"),
                "ns",
                mine,
                Some(ours),
            );
        }
    }
    Ok(())
}

/// Posts `batch` NOPs in the process's own queue, rings once, waits for the head to pass
/// them (no system call), and checks every completion.
fn run_user_batch(queue: &mut rmnic_abi::UserQueue<'_>, batch: usize) -> Result<()> {
    // CAST: batches are at most 256, the queue's slots.
    let first = queue.tail();
    for i in 0..batch {
        let nop = command(opcode::NOP, Address::Local(0), Address::Local(0));
        let nop = rmnic_abi::Command {
            id: u64::from(first) + i as u64,
            ..nop
        };
        ensure!(
            queue.post(&nop).is_some(),
            "user queue full with {i} of {batch} posted"
        );
    }
    queue.ring();
    queue.wait_head(queue.tail(), Duration::from_secs(10))?;
    for n in first..queue.tail() {
        let done = queue.completion(n);
        ensure!(
            done.status == 0 && done.id == u64::from(n),
            "user queue: NOP {n} completed {done:?}"
        );
    }
    Ok(())
}

/// Submits `batch` NOPs (in as many submissions as the queue needs) and waits for all.
fn run_batch(device: &Context, batch: usize) -> Result<()> {
    debug_assert!(batch <= MAX_BATCH as usize);
    let nops = vec![command(opcode::NOP, Address::Local(0), Address::Local(0)); batch];
    run_all(device, &nops, 10_000)
}

/// Queues `commands` as the ring takes them and waits for every completion, each wait at
/// most `timeout_ms`; any status but OK is an error.
fn run_all(device: &Context, commands: &[rmnic_abi::abi::Command], timeout_ms: u32) -> Result<()> {
    let mut out = vec![Completion::default(); commands.len()];
    let (mut queued, mut completed) = (0, 0);
    while completed < commands.len() {
        if queued < commands.len() {
            queued += device.submit(&commands[queued..])?;
        }
        // CAST: at most the ring's size.
        let outstanding = (queued - completed) as u32;
        let n = device.wait(&mut out[completed..], outstanding.min(1), timeout_ms)?;
        ensure!(
            n > 0 || outstanding == 0,
            "no completion within {timeout_ms} ms"
        );
        for (done, sent) in out[completed..completed + n]
            .iter()
            .zip(&commands[completed..])
        {
            ensure!(
                done.status == 0,
                "opcode {} failed: status {}",
                sent.opcode,
                done.status
            );
        }
        completed += n;
    }
    Ok(())
}

/// Device COPY of `len` bytes in commands of at most [`COPY_CHUNK`] (each command must
/// complete within the driver's wait bound; a first touch of 4 KiB pages under emulation
/// takes milliseconds per miss), queued together and waited for.
fn copy_chunked(device: &Context, dst: u64, src: u64, len: usize) -> Result<()> {
    let copies: Vec<_> = (0..len)
        .step_by(COPY_CHUNK)
        .map(|off| {
            (
                dst + off as u64,
                src + off as u64,
                COPY_CHUNK.min(len - off),
            )
        })
        .collect();
    copy_all(device, &copies)
}

/// Device COPYs `(dst, src, len)`, queued as the ring allows and all waited for.
fn copy_all(device: &Context, copies: &[(u64, u64, usize)]) -> Result<()> {
    let commands: Vec<_> = copies
        .iter()
        .map(|&(dst, src, len)| rmnic_abi::abi::Command {
            length: len as u64,
            ..command(opcode::COPY, Address::Local(dst), Address::Local(src))
        })
        .collect();
    run_all(device, &commands, rmnic_abi::EXECUTE_TIMEOUT_MS)
}

/// Largest COPY command of [`copy_chunked`].
const COPY_CHUNK: usize = 2 << 20;

/// A buffer of `len` bytes in 4 KiB or 2 MiB pages (THP, madvised), CPU-touched.
fn buffer(len: usize, huge: bool, byte: u8) -> Result<Mapping> {
    let mut map = Mapping::aligned(len, HUGE)?;
    map.advise(if huge {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    })?;
    map.bytes_mut().fill(byte);
    Ok(map)
}

/// Device COPY against memcpy (MiB/s) for 4 KiB and 2 MiB pages, with the first copy's
/// misses per 2 MiB in the notes; then the miss service ([`miss_service`]).
fn copy_and_misses(plan: &Plan) -> Result<()> {
    let len = plan.copy_mib << 20;
    // CAST: MiB counts.
    let mib = plan.copy_mib as f64;
    for (label, huge) in [("4k", false), ("2m", true)] {
        for _ in 0..plan.samples {
            let src = buffer(len, huge, 0x3c)?;
            let dst = buffer(len, huge, 0)?;
            let device = Context::open()?;
            let before = device.stats()?;
            let start = Instant::now();
            copy_chunked(&device, dst.addr(), src.addr(), len)?;
            let first = start.elapsed();
            let after = device.stats()?;
            ensure!(dst.bytes().iter().all(|&b| b == 0x3c), "copy: wrong data");
            let misses = after.faults - before.faults;
            let start = Instant::now();
            copy_chunked(&device, dst.addr(), src.addr(), len)?;
            let warm = start.elapsed();
            let mut cpu_dst = buffer(len, huge, 0)?;
            let start = Instant::now();
            cpu_dst.bytes_mut().copy_from_slice(src.bytes());
            let memcpy = start.elapsed();
            ensure!(cpu_dst.bytes()[len - 1] == 0x3c, "memcpy: wrong data");
            sample(
                &format!("copy-{label}"),
                "MiB/s",
                mib / warm.as_secs_f64(),
                Some(mib / memcpy.as_secs_f64()),
            );
            println!(
                "BENCHINFO copy-{label} misses={misses} misses_per_2m={:.2} dropins_4k={} dropins_2m={} first_touch_ms={:.2}",
                // CAST: counts.
                misses as f64 / (2 * len / HUGE) as f64,
                after.dropins_4k - before.dropins_4k,
                after.dropins_2m - before.dropins_2m,
                first.as_secs_f64() * 1000.0
            );
        }
    }
    for _ in 0..plan.samples {
        miss_service()?;
    }
    Ok(())
}

/// The miss service, per device TLB miss (fault record, interrupt, resolve, drop-in, resume),
/// µs: one-word device reads, one per page, of CPU-populated pages the device has never seen
/// (each a miss; fault-ahead off), minus the same reads again (all hits), over the misses;
/// against the CPU's own first touch of a fresh 4 KiB page (a minor fault). For 4 KiB pages
/// (512 of them) and 2 MiB pages (16).
fn miss_service() -> Result<()> {
    let fresh = Mapping::aligned(2 << 20, HUGE)?;
    fresh.advise(libc::MADV_NOHUGEPAGE)?;
    let start = Instant::now();
    for page in (0..2 << 20).step_by(PAGE) {
        fresh.write_u64(page, 1);
    }
    let cpu_fault = per(start.elapsed(), (2 << 20) / PAGE) / 1000.0;
    for (label, huge, len, step) in [
        ("4k", false, 2usize << 20, PAGE),
        ("2m", true, 32usize << 20, HUGE),
    ] {
        let buf = buffer(len, huge, 9)?;
        let device = Context::open()?;
        device.set_fault_ahead(1)?;
        let read_all = || -> Result<Duration> {
            let start = Instant::now();
            for off in (0..len).step_by(step) {
                device.read64(buf.addr() + off as u64)??;
            }
            Ok(start.elapsed())
        };
        let before = device.stats()?.faults;
        let first = read_all()?;
        let misses = device.stats()?.faults - before;
        let warm = read_all()?;
        ensure!(misses > 0, "miss service: no miss");
        // CAST: counts.
        let per_miss = first.saturating_sub(warm).as_secs_f64() * 1e6 / misses as f64;
        sample(
            &format!("miss-service-{label}"),
            "us",
            per_miss,
            Some(cpu_fault),
        );
        println!("BENCHINFO miss-service-{label} misses={misses}");
    }
    Ok(())
}

/// Fault-ahead windows: the first-touch device COPY of `copy_mib` MiB of 4 KiB pages (CPU
/// populated) with a window of 16 and 64 pages, each against a window of 1 (off) in the same
/// sample, ms; misses per 2 MiB for each window.
fn fault_ahead(plan: &Plan) -> Result<()> {
    let len = plan.copy_mib << 20;
    for _ in 0..plan.samples {
        let mut first_touch = Vec::new();
        let mut per_2m = Vec::new();
        for window in [1u32, 16, 64] {
            let src = buffer(len, false, 0x5a)?;
            let dst = buffer(len, false, 0)?;
            let device = Context::open()?;
            device.set_fault_ahead(window)?;
            let start = Instant::now();
            copy_chunked(&device, dst.addr(), src.addr(), len)?;
            let elapsed = start.elapsed();
            ensure!(
                dst.bytes().iter().all(|&b| b == 0x5a),
                "fault-ahead copy: wrong data"
            );
            let stats = device.stats()?;
            // CAST: counts.
            per_2m.push(stats.faults as f64 / (2 * len / HUGE) as f64);
            first_touch.push(elapsed.as_secs_f64() * 1e3);
        }
        for (i, window) in [16, 64].iter().enumerate() {
            sample(
                &format!("fault-ahead-{window}"),
                "ms",
                first_touch[i + 1],
                Some(first_touch[0]),
            );
            println!(
                "BENCHINFO fault-ahead-{window} misses_per_2m={:.1} off_misses_per_2m={:.1}",
                per_2m[i + 1],
                per_2m[0]
            );
        }
    }
    Ok(())
}

/// Linux's reference mirror device (`lib/test_hmm.c`): its user ABI (`test_hmm_uapi.h`).
mod dmirror {
    /// `struct hmm_dmirror_cmd`.
    #[repr(C)]
    #[derive(Default)]
    pub struct Cmd {
        pub addr: u64,
        pub ptr: u64,
        pub npages: u64,
        pub cpages: u64,
        pub faults: u64,
    }
    /// `_IOWR('H', 0x00, struct hmm_dmirror_cmd)`: the device reads `npages` at `addr` (its
    /// mirror of the process's page tables, faulting through `hmm_range_fault` on a miss, 64
    /// pages per walk) into `ptr`.
    pub const READ: u64 = 0xc028_4800;
    /// `_IOWR('H', 0x01, ...)`: the device writes `npages` at `addr` from `ptr`.
    pub const WRITE: u64 = 0xc028_4801;
    /// The first mirror device.
    pub const PATH: &str = "/dev/hmm_dmirror0";
}

/// One dmirror READ or WRITE of `len` bytes at `addr` through the bounce buffer `ptr`.
fn dmirror_op(fd: &std::fs::File, op: u64, addr: u64, ptr: u64, len: usize) -> Result<u64> {
    let mut cmd = dmirror::Cmd {
        addr,
        ptr,
        npages: (len / PAGE) as u64,
        ..dmirror::Cmd::default()
    };
    // SAFETY: a valid `hmm_dmirror_cmd` for the call; `addr` and `ptr` name `len` bytes of
    // this process's mappings, which the caller keeps alive.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), op as _, &mut cmd) };
    ensure!(
        rc == 0 && cmd.cpages == cmd.npages,
        "dmirror ioctl {op:#x}: rc {rc} ({}), {} of {} pages",
        std::io::Error::last_os_error(),
        cmd.cpages,
        cmd.npages
    );
    Ok(cmd.faults)
}

/// The peer device: Linux's dmirror and rmnic in the same guest, doing the same first-touch
/// reads and writes of CPU-populated 4 KiB pages and the same munmap of what they mirror,
/// each with no other device open. µs per page (reads, writes) and per munmap. rmnic runs
/// with a fault-ahead window of 64 pages, dmirror's walk per miss. Skipped (with a line
/// saying so) when the kernel has no dmirror.
fn peer_device(plan: &Plan) -> Result<()> {
    const CHUNK: usize = 64 * PAGE;
    let len = plan.copy_mib << 20;
    let pages = (len / PAGE) as f64;
    if !Path::new(dmirror::PATH).exists() {
        println!("BENCHINFO peer-read-first-touch dmirror_missing=1");
        return Ok(());
    }
    for _ in 0..plan.samples {
        // dmirror.
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dmirror::PATH)?;
        let bounce = buffer(len, false, 0)?;
        let mut region = buffer(len, false, 0x33)?;
        let start = Instant::now();
        let read_faults = dmirror_op(&fd, dmirror::READ, region.addr(), bounce.addr(), len)?;
        let their_read = start.elapsed();
        ensure!(bounce.bytes()[len - 1] == 0x33, "dmirror read: wrong data");
        let start = Instant::now();
        region.unmap();
        let their_munmap = start.elapsed();
        let target = buffer(len, false, 0)?;
        let start = Instant::now();
        let write_faults = dmirror_op(&fd, dmirror::WRITE, target.addr(), bounce.addr(), len)?;
        let their_write = start.elapsed();
        ensure!(target.bytes()[len - 1] == 0x33, "dmirror write: wrong data");
        drop((fd, target));
        // rmnic: the same reads (into one small device-cached buffer) and writes.
        let device = Context::open()?;
        device.set_fault_ahead(64)?;
        let small = buffer(CHUNK, false, 0x44)?;
        device.fill(small.addr(), CHUNK as u64, 0x4444_4444_4444_4444)??;
        let mut region = buffer(len, false, 0x33)?;
        let reads: Vec<_> = (0..len)
            .step_by(CHUNK)
            .map(|off| (small.addr(), region.addr() + off as u64, CHUNK))
            .collect();
        let before = device.stats()?.faults;
        let start = Instant::now();
        copy_all(&device, &reads)?;
        let our_read = start.elapsed();
        let our_read_faults = device.stats()?.faults - before;
        let start = Instant::now();
        region.unmap();
        let our_munmap = start.elapsed();
        let target = buffer(len, false, 0)?;
        let writes: Vec<_> = (0..len)
            .step_by(CHUNK)
            .map(|off| (target.addr() + off as u64, small.addr(), CHUNK))
            .collect();
        let start = Instant::now();
        copy_all(&device, &writes)?;
        let our_write = start.elapsed();
        ensure!(
            // The reads left the region's bytes in `small`.
            target.bytes().iter().all(|&b| b == 0x33),
            "rmnic write: wrong data: {:?} at the start, {:?} at the end",
            &target.bytes()[..8],
            &target.bytes()[len - 8..]
        );
        let us_per_page = |d: Duration| d.as_secs_f64() * 1e6 / pages;
        sample(
            "peer-read-first-touch",
            "us",
            us_per_page(our_read),
            Some(us_per_page(their_read)),
        );
        sample(
            "peer-write-first-touch",
            "us",
            us_per_page(our_write),
            Some(us_per_page(their_write)),
        );
        sample(
            "peer-munmap",
            "us",
            our_munmap.as_secs_f64() * 1e6,
            Some(their_munmap.as_secs_f64() * 1e6),
        );
        println!(
            "BENCHINFO peer-read-first-touch rmnic_misses={our_read_faults} dmirror_faults={read_faults} pages={pages}"
        );
        println!("BENCHINFO peer-write-first-touch dmirror_faults={write_faults}");
    }
    Ok(())
}

/// The device's invalidation descriptors so far (RANGE + ASID + GLOBAL).
fn invalidations(rmnic: &Bar) -> u64 {
    bar0::STAT_INVAL.iter().map(|&off| rmnic.read64(off)).sum()
}

/// munmap and mprotect of regions whose translations the device cached (a device FILL over
/// the whole region first) against the same calls on a process with no device context, µs;
/// device invalidations per call.
fn shootdowns(plan: &Plan, rmnic: &Bar) -> Result<()> {
    let sizes: Vec<usize> = [4 << 10, 2 << 20, 64 << 20, 1 << 30]
        .into_iter()
        .filter(|&s| s <= plan.max_region_mib << 20)
        .collect();
    for &size in &sizes {
        let label = size_label(size);
        let huge = size >= HUGE;
        let samples = if size >= 1 << 30 {
            plan.samples.min(3)
        } else {
            plan.samples
        };
        for _ in 0..samples {
            for call in ["munmap", "mprotect"] {
                // Baseline first: no device context open in this process.
                let mut plain = buffer(size, huge, 1)?;
                let baseline = page_table_change(call, &mut plain)?;
                drop(plain);
                let device = Context::open()?;
                let mut cached = buffer(size, huge, 1)?;
                device.fill(cached.addr(), size as u64, 0x77)??;
                let before = (device.stats()?, invalidations(rmnic));
                let ours = page_table_change(call, &mut cached)?;
                let after = (device.stats()?, invalidations(rmnic));
                // The mprotected region's munmap is not part of the figures.
                drop(cached);
                sample(
                    &format!("shootdown-{call}-{label}"),
                    "us",
                    ours.as_secs_f64() * 1e6,
                    Some(baseline.as_secs_f64() * 1e6),
                );
                println!(
                    "BENCHINFO shootdown-{call}-{label} notifier_calls={} driver_invalidations={} device_descriptors={}",
                    after.0.invalidations_received - before.0.invalidations_received,
                    after.0.invalidations_sent - before.0.invalidations_sent,
                    after.1 - before.1
                );
            }
        }
    }
    Ok(())
}

/// Times `call` (munmap, or mprotect to read-only) on the whole of `map`.
fn page_table_change(call: &str, map: &mut Mapping) -> Result<Duration> {
    let start = Instant::now();
    match call {
        "munmap" => map.unmap(),
        _ => map.protect(libc::PROT_READ)?,
    }
    Ok(start.elapsed())
}

fn size_label(size: usize) -> String {
    if size >= 1 << 30 {
        format!("{}g", size >> 30)
    } else if size >= 1 << 20 {
        format!("{}m", size >> 20)
    } else {
        format!("{}k", size >> 10)
    }
}

/// Process exit after the device cached the largest region (2 MiB pages): exit time (from the
/// parent's go to its waitpid's return) against a child with no context, ms; device
/// invalidation descriptors the exit caused.
fn exit(plan: &Plan, rmnic: &Bar) -> Result<()> {
    let size = (plan.max_region_mib << 20).max(HUGE);
    for _ in 0..plan.samples.min(3) {
        let (baseline, _) = child_exit(size, false, rmnic)?;
        let (ours, descriptors) = child_exit(size, true, rmnic)?;
        sample(
            &format!("exit-{}", size_label(size)),
            "ms",
            ours.as_secs_f64() * 1e3,
            Some(baseline.as_secs_f64() * 1e3),
        );
        println!(
            "BENCHINFO exit-{} device_descriptors={descriptors}",
            size_label(size)
        );
    }
    Ok(())
}

/// Forks a child that maps `size` bytes of 2 MiB pages, touches them (with the device, when
/// `with_device`), tells the parent, and exits; the time from its word to waitpid's return,
/// and the device's invalidation descriptors over that time.
fn child_exit(size: usize, with_device: bool, rmnic: &Bar) -> Result<(Duration, u64)> {
    // Two pipes: the child says it is ready, and exits only when the parent says go, so the
    // parent's counters are read before the exit can start.
    let (mut ready, mut go) = ([0i32; 2], [0i32; 2]);
    ensure!(
        // SAFETY: valid two-int arrays.
        unsafe { libc::pipe(ready.as_mut_ptr()) == 0 && libc::pipe(go.as_mut_ptr()) == 0 },
        "pipe failed"
    );
    // SAFETY: the child only maps, touches, talks over the pipes and exits.
    let pid = unsafe { libc::fork() };
    ensure!(pid >= 0, "fork failed");
    if pid == 0 {
        let status = (|| -> Result<()> {
            let map = buffer(size, true, 1)?;
            let device = if with_device {
                let device = Context::open()?;
                device.fill(map.addr(), size as u64, 0x55)??;
                Some(device)
            } else {
                None
            };
            let mut byte = [1u8];
            // SAFETY: one byte from and into valid buffers, on our pipe ends.
            unsafe {
                libc::write(ready[1], byte.as_ptr().cast(), 1);
                libc::read(go[0], byte.as_mut_ptr().cast(), 1);
            }
            std::mem::forget(map);
            std::mem::forget(device);
            Ok(())
        })();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(i32::from(status.is_err())) };
    }
    // SAFETY: closing our copies of the child's ends.
    unsafe {
        libc::close(ready[1]);
        libc::close(go[0]);
    }
    let mut byte = [0u8];
    // SAFETY: reads one byte into a valid buffer.
    let n = unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) };
    let before = invalidations(rmnic);
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: one byte from a valid buffer; then waits for our own child.
    let waited = unsafe {
        libc::write(go[1], byte.as_ptr().cast(), 1);
        libc::waitpid(pid, &mut status, 0)
    };
    let elapsed = start.elapsed();
    let descriptors = invalidations(rmnic) - before;
    // SAFETY: closing our ends.
    unsafe {
        libc::close(ready[0]);
        libc::close(go[1]);
    }
    ensure!(
        n == 1 && waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "exit child failed (read {n}, status {status:#x})"
    );
    Ok((elapsed, descriptors))
}

/// BAR0 of a PCI device, mapped from its sysfs `resource0`.
struct Bar {
    ptr: NonNull<u8>,
    len: usize,
}

impl Bar {
    fn open(device_dir: &Path) -> Result<Self> {
        let path = device_dir.join("resource0");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let len = usize::try_from(file.metadata()?.len())?;
        ensure!(len >= 0x100, "{}: BAR too small", path.display());
        // SAFETY: maps the BAR file shared; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).context("mmap returned null")?,
            len,
        })
    }

    fn read32(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= self.len);
        // SAFETY: in bounds of the mapping (asserted), 4-byte aligned MMIO.
        unsafe { self.ptr.as_ptr().add(offset).cast::<u32>().read_volatile() }
    }

    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }

    fn write32(&self, offset: usize, value: u32) {
        assert!(offset + 4 <= self.len);
        // SAFETY: in bounds of the mapping (asserted), 4-byte aligned MMIO.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: unmaps what `open` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The sysfs directory of the device bound to `driver`.
fn device_dir_of_driver(driver: &str) -> Result<PathBuf> {
    let dir = Path::new("/sys/bus/pci/drivers").join(driver);
    std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("0000:"))
        .map(|e| Path::new("/sys/bus/pci/devices").join(e.file_name()))
        .with_context(|| format!("no device bound to {driver}"))
}

/// The sysfs directory of the first PCI device with `(vendor, device)` ids, if any.
fn find_device((vendor, device): (&str, &str)) -> Option<PathBuf> {
    std::fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|dir| {
            let id = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            id("vendor").trim() == vendor && id("device").trim() == device
        })
}
