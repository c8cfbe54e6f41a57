//! What the scenarios need from the kernel, set up once per boot: swap on zram, ext2 on the
//! `brd` RAM disk, hugetlb pages, KSM scanning fast, a memory cgroup. Each returns an error
//! that names the missing piece (a kernel built without it, a busybox without the tool).

use std::sync::OnceLock;

use anyhow::{anyhow, Result};

use super::{run, write_file};

/// Where the RAM disk's file system is mounted.
pub const FILE_MOUNT: &str = "/mnt/rmnic";
/// The memory cgroup the OOM scenario runs its victim in.
pub const OOM_CGROUP: &str = "/sys/fs/cgroup/rmnic-oom";

fn once(cell: &'static OnceLock<Result<(), String>>, f: impl FnOnce() -> Result<()>) -> Result<()> {
    cell.get_or_init(|| f().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// 64 MiB of swap on /dev/zram0 (compressed RAM), so reclaim can swap anonymous pages out.
pub fn swap() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    once(&DONE, || {
        write_file("/sys/block/zram0/disksize", "64M")?;
        run("mkswap", &["/dev/zram0"])?;
        run("swapon", &["/dev/zram0"])
    })
}

/// An ext2 file system on /dev/ram0 at [`FILE_MOUNT`]: a real block file system with
/// writeback, for MAP_SHARED file mappings.
pub fn file_system() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    once(&DONE, || {
        run("mke2fs", &["-q", "/dev/ram0"])?;
        std::fs::create_dir_all(FILE_MOUNT)?;
        run("mount", &["-t", "ext2", "/dev/ram0", FILE_MOUNT])
    })
}

/// `n` 2 MiB hugetlb pages in the pool.
pub fn hugetlb(n: u32) -> Result<()> {
    write_file("/proc/sys/vm/nr_hugepages", &n.to_string())?;
    let got: u32 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")?
        .trim()
        .parse()?;
    if got < n {
        anyhow::bail!("only {got} of {n} hugetlb pages could be reserved");
    }
    Ok(())
}

/// KSM scanning every 10 ms, 1000 pages at a time.
pub fn ksm() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    once(&DONE, || {
        write_file("/sys/kernel/mm/ksm/pages_to_scan", "1000")?;
        write_file("/sys/kernel/mm/ksm/sleep_millisecs", "10")?;
        write_file("/sys/kernel/mm/ksm/run", "1")
    })
}

/// A cgroup v2 memory cgroup at [`OOM_CGROUP`] limited to `max` bytes and no swap.
pub fn memory_cgroup(max: &str) -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    once(&DONE, || {
        std::fs::create_dir_all("/sys/fs/cgroup")?;
        if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            run("mount", &["-t", "cgroup2", "none", "/sys/fs/cgroup"])?;
        }
        write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory")?;
        std::fs::create_dir_all(OOM_CGROUP)?;
        Ok(())
    })?;
    write_file(&format!("{OOM_CGROUP}/memory.max"), max)?;
    // No swap for the cgroup: its OOM must come at `max`, not after the child has filled the
    // zram swap with its (very compressible) pages, which thrashed for minutes in emulated
    // mode (two boots timed out inside the `oom` group on 2026-11-30). Without swap
    // accounting the file is missing: then swap goes off for everyone.
    if write_file(&format!("{OOM_CGROUP}/memory.swap.max"), "0").is_err() {
        run("swapoff", &["-a"])?;
    }
    Ok(())
}
