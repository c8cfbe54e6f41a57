//! The coherence suite's scenarios beyond the first groups (docs/coherence-suite.md): every
//! kind of page-table change the kernel makes, each checked through the CPU, with the host's
//! oracle watching every device access.
//!
//! One module per theme; each group function takes the shared context and records `CHECK`
//! lines. Set-up the scenarios need from the kernel (swap on zram, ext2 on a RAM disk,
//! hugetlb pages, KSM, a memory cgroup) is in [`setup`], done once per boot.

pub mod file;
pub mod madvise;
pub mod memory;
pub mod oom;
pub mod protect;
pub mod remap;
pub mod scale;
pub mod setup;
pub mod share;
pub mod user_queue;

use anyhow::{bail, Result};
use rmnic_abi::status;

/// The status a device operation ended with (OK for success).
pub fn status_of<T>(r: &std::result::Result<T, rmnic_abi::CommandError>) -> u32 {
    match r {
        Ok(_) => status::OK,
        Err(e) => e.status,
    }
}

/// `n` FILL commands, one per page from `addr` (ids 0..n, each page filled with its index):
/// a batch to leave in flight.
pub fn page_fills(addr: u64, n: u64) -> Vec<rmnic_abi::Command> {
    (0..n)
        .map(|i| rmnic_abi::Command {
            opcode: rmnic_abi::opcode::FILL,
            id: i,
            addr0: addr + i * rmnic_guest::PAGE as u64,
            length: rmnic_guest::PAGE as u64,
            operand0: i,
            ..rmnic_abi::Command::default()
        })
        .collect()
}

/// `mmap` with the arguments given; the pointer as an address.
pub fn mmap(addr: u64, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> Result<u64> {
    // SAFETY: the caller chooses the flags; with MAP_FIXED it names a range it owns. The
    // result is checked.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, fd, offset) };
    if p == libc::MAP_FAILED {
        bail!("mmap failed: {}", std::io::Error::last_os_error());
    }
    Ok(p as u64)
}

/// `munmap` of a range this process mapped.
pub fn munmap(addr: u64, len: usize) -> Result<()> {
    // SAFETY: the caller owns the range.
    if unsafe { libc::munmap(addr as *mut libc::c_void, len) } != 0 {
        bail!("munmap failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the u64 at `addr` (volatile: the device writes behind the compiler's back).
pub fn peek(addr: u64) -> u64 {
    // SAFETY: callers pass an 8-byte aligned address of a mapping they own and keep mapped.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Writes the u64 at `addr`.
pub fn poke(addr: u64, value: u64) {
    // SAFETY: as in `peek`, on a writable mapping.
    unsafe { (addr as *mut u64).write_volatile(value) }
}

/// Runs `child` in a forked process and returns its exit status (or 128 + signal).
pub fn in_child(child: impl FnOnce() -> i32) -> Result<i32> {
    // SAFETY: the child runs `child` and exits with `_exit`. The suite's groups fork from a
    // single thread. `random` forks from one of its threads: glibc keeps malloc usable in the
    // child, and the child's work (open, ioctl, exit) takes no lock another thread could hold;
    // it prints nothing (stdout's lock could be held by a sibling).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without running the parent's destructors twice.
        unsafe { libc::_exit(code) };
    }
    wait(pid)
}

/// Waits for child `pid`: its exit status, or 128 + the signal that killed it.
pub fn wait(pid: i32) -> Result<i32> {
    let mut wstatus = 0;
    // SAFETY: waiting for our own child into a local.
    if unsafe { libc::waitpid(pid, &mut wstatus, 0) } != pid {
        bail!("waitpid failed: {}", std::io::Error::last_os_error());
    }
    Ok(if libc::WIFEXITED(wstatus) {
        libc::WEXITSTATUS(wstatus)
    } else {
        128 + libc::WTERMSIG(wstatus)
    })
}

/// The physical frame behind `addr` (from /proc/self/pagemap; the guest runs as root), if
/// present.
pub fn frame_of(addr: u64) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open("/proc/self/pagemap").ok()?;
    f.seek(SeekFrom::Start(addr / 4096 * 8)).ok()?;
    let mut entry = [0u8; 8];
    f.read_exact(&mut entry).ok()?;
    let entry = u64::from_le_bytes(entry);
    (entry >> 63 == 1).then_some(entry & ((1 << 55) - 1))
}

/// A driver-wide counter (`/sys/kernel/debug/rmnic/driver/NAME`).
pub fn driver_counter(name: &str) -> Result<u64> {
    let path = format!("/sys/kernel/debug/rmnic/driver/{name}");
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    Ok(text.trim().parse()?)
}

/// Writes `value` to a sysfs, procfs or cgroup file.
pub fn write_file(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| anyhow::anyhow!("{path} <- {value}: {e}"))
}

/// Runs a busybox command; its output on failure.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
