//! `oom`: a process with a device context killed by the OOM killer, and its memory reaped
//! through the OOM reaper's path (`__oom_reap_task_mm`, which `process_mrelease(2)` runs on
//! demand): non-blockable invalidations, which the driver must answer without sleeping.

use anyhow::Result;
use rmnic_abi::Context;
use rmnic_guest::Mapping;

use super::{driver_counter, setup, wait};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;

/// Forks a child that opens a context, lets the device touch `mib` MiB, says so on a pipe and
/// then runs `then` (it never returns normally). Returns (pid, pidfd).
fn child_with_context(mib: usize, then: fn()) -> Result<(i32, i32)> {
    let mut pipe = [0i32; 2];
    // SAFETY: a pipe into a local array.
    anyhow::ensure!(unsafe { libc::pipe(pipe.as_mut_ptr()) } == 0, "pipe failed");
    // SAFETY: the child only runs the code below and exits.
    let pid = unsafe { libc::fork() };
    anyhow::ensure!(pid >= 0, "fork failed");
    if pid == 0 {
        let ready = (|| -> Result<Context> {
            let dev = Context::open()?;
            let buf = Mapping::new(mib << 20, false)?;
            dev.fill(buf.addr(), (mib << 20) as u64, 0x00ff)??;
            std::mem::forget(buf);
            Ok(dev)
        })();
        let byte: u8 = if ready.is_ok() { 1 } else { 0 };
        // SAFETY: one byte from a local into our pipe.
        unsafe { libc::write(pipe[1], (&byte as *const u8).cast(), 1) };
        std::mem::forget(ready);
        then();
        // SAFETY: end of the child.
        unsafe { libc::_exit(3) };
    }
    let mut byte = 0u8;
    // SAFETY: one byte into a local.
    unsafe { libc::read(pipe[0], (&mut byte as *mut u8).cast(), 1) };
    // SAFETY: closing our pipe.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    anyhow::ensure!(byte == 1, "the child could not set up its context");
    // SAFETY: pidfd_open of our child; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    anyhow::ensure!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    Ok((pid, pidfd))
}

fn sleep_forever() {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Allocates and touches memory until the OOM killer ends the process.
fn eat_memory() {
    let mut kept = Vec::new();
    loop {
        match Mapping::new(4 << 20, false) {
            Ok(mut m) => {
                m.bytes_mut().iter_mut().step_by(PAGE).for_each(|b| *b = 1);
                kept.push(m);
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// Kill with SIGKILL, then reap its memory at once with process_mrelease (the OOM reaper's
/// function): the notifier is called with non-blockable ranges. Retried a few times because
/// the child may finish exiting before the reap starts (then there is nothing to reap).
fn mrelease(c: &mut Checks) -> Result<()> {
    let before = driver_counter("nonblocking_invalidations")?;
    let mut attempts = 0;
    let mut reaped = false;
    while attempts < 10 && !reaped {
        attempts += 1;
        let (pid, pidfd) = child_with_context(16, sleep_forever)?;
        // SAFETY: signalling and reaping our own child through its pidfd.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, 0, 0);
            reaped = libc::syscall(libc::SYS_process_mrelease, pidfd, 0) == 0;
            libc::close(pidfd);
        }
        wait(pid)?;
        reaped &= driver_counter("nonblocking_invalidations")? > before;
    }
    let after = driver_counter("nonblocking_invalidations")?;
    let deferred = driver_counter("nonblocking_deferred")?;
    c.check(
        "mrelease-nonblocking-invalidation",
        reaped,
        format!(
            "{} non-blockable invalidations ({deferred} answered \"not now\" in all), {attempts} attempts",
            after - before
        ),
    );
    Ok(())
}

/// A real OOM kill: the child lives in a memory cgroup of 48 MiB and allocates until the
/// kernel kills it.
fn oom_kill(c: &mut Checks) -> Result<()> {
    setup::memory_cgroup("48M")?;
    let (pid, pidfd) = child_with_context(4, || {
        // Into the cgroup, then allocate.
        let _ = std::fs::write(
            format!("{}/cgroup.procs", setup::OOM_CGROUP),
            std::process::id().to_string(),
        );
        eat_memory();
    })?;
    let status = wait(pid)?;
    // SAFETY: closing our pidfd.
    unsafe { libc::close(pidfd) };
    let events =
        std::fs::read_to_string(format!("{}/memory.events", setup::OOM_CGROUP)).unwrap_or_default();
    let kills = events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    c.check(
        "oom-kill-with-context",
        status == 128 + libc::SIGKILL && kills > 0,
        format!("child ended with {status}, memory cgroup OOM kills {kills}"),
    );
    Ok(())
}

/// Both scenarios, each announced on the console (a boot that stalls in this group then says
/// in which).
pub fn run(c: &mut Checks) -> Result<()> {
    println!("rmnic-guest: oom: process_mrelease of a child with a context");
    mrelease(c)?;
    println!("rmnic-guest: oom: OOM kill in a 48 MiB memory cgroup without swap");
    oom_kill(c)
}
