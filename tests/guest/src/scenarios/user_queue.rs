//! User-level submission (ABI 6, device 1.5), part of the `ops` group: a process takes its
//! context's queue, posts commands and rings its own doorbell page with no system call, and
//! everything the kernel promises still holds: misses are resolved behind its back, an
//! unmapped page fails the command, the kernel path is closed to it, and a forked child
//! inherits neither the mapping nor the right to take the queue.

use std::time::Duration;

use anyhow::Result;
use rmnic_abi::{opcode, status, Command, Context};
use rmnic_guest::Mapping;

use super::{in_child, peek};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
/// How long a check waits for the device's head (first touches take milliseconds each under
/// emulation).
const WAIT: Duration = Duration::from_secs(30);

fn copy(id: u64, dst: u64, src: u64, len: usize) -> Command {
    Command {
        opcode: opcode::COPY,
        id,
        addr0: dst,
        addr1: src,
        length: len as u64,
        ..Command::default()
    }
}

/// The `user-queue-*` checks, each on a fresh context of its own.
pub fn checks(c: &mut Checks) -> Result<()> {
    let dev = Context::open()?;
    let mut q = match dev.user_queue() {
        Ok(q) => q,
        Err(e) => {
            c.check(
                "user-queue-copy",
                false,
                format!("RMNIC_IOC_USER_QUEUE or mmap failed: {e:#}"),
            );
            return Ok(());
        }
    };
    let layout = q.layout();

    // A first-touch COPY of two pages: the device misses, the driver resolves it unseen.
    let mut src = Mapping::new(2 * PAGE, false)?;
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = (i * 13 + 5) as u8;
    }
    let mut dst = Mapping::new(2 * PAGE, false)?;
    dst.bytes_mut().fill(0);
    let before = dev.stats()?;
    let slot = q.post(&copy(1, dst.addr(), src.addr(), 2 * PAGE));
    q.ring();
    q.wait_head(1, WAIT)?;
    let done = slot.map(|s| q.completion(s));
    let faults = dev.stats()?.faults - before.faults;
    c.check(
        "user-queue-copy",
        done.is_some_and(|d| d.id == 1 && d.status == status::OK)
            && dst.bytes() == src.bytes()
            && faults >= 1
            && layout.slots == rmnic_abi::abi::USER_QUEUE_SLOTS,
        format!("slot {slot:?}, completion {done:?}, {faults} device miss(es) resolved by the driver, {} slots", layout.slots),
    );

    // More commands than slots, posted as slots free: in order, each exactly once.
    let word = Mapping::new(PAGE, false)?;
    word.write_u64(0, 0);
    let total = layout.slots + 44;
    let first = q.tail();
    let mut posted = 0;
    let mut in_order = true;
    let mut checked = 0;
    while checked < total {
        while posted < total {
            let add = Command {
                opcode: opcode::FETCH_ADD,
                id: 100 + u64::from(posted),
                addr0: word.addr(),
                operand0: 1,
                ..Command::default()
            };
            if q.post(&add).is_none() {
                break;
            }
            posted += 1;
        }
        q.ring();
        q.wait_head(first + checked + 1, WAIT)?;
        // Read every completion the head passed before its slot is reused.
        while checked < posted && q.head().wrapping_sub(first) > checked {
            let d = q.completion(first + checked);
            in_order &= d.id == 100 + u64::from(checked) && d.status == status::OK;
            checked += 1;
        }
    }
    c.check(
        "user-queue-batch",
        in_order && word.read_u64(0) == u64::from(total),
        format!(
            "{total} FETCH_ADDs through {} slots: word {}, completions in order: {in_order}",
            layout.slots,
            word.read_u64(0)
        ),
    );

    // The kernel path is closed once the process owns the queue.
    let nop = Command::default();
    let refused = dev.submit(&[nop]).err().and_then(|e| e.errno());
    // An unmapped destination: the command fails with FAULT_UNRESOLVED at that address.
    let gone = dst.addr();
    dst.unmap();
    let slot = q.post(&copy(2, gone, src.addr(), PAGE));
    q.ring();
    q.wait_head(q.tail(), WAIT)?;
    let failed = slot.map(|s| q.completion(s));
    c.check(
        "user-queue-faults-and-owns-the-context",
        refused == Some(libc::EINVAL)
            && failed.is_some_and(|d| d.status == status::FAULT_UNRESOLVED && d.fault_va == gone),
        format!(
            "kernel submit: errno {refused:?} (want EINVAL); COPY to an unmapped page: {failed:?}"
        ),
    );

    // A forked child has no mapping (VM_DONTCOPY: touching it is SIGSEGV) and may not take
    // the queue of its parent's context (EPERM).
    let addr = q.mapping_addr() as u64;
    let touched = in_child(move || {
        let _ = peek(addr);
        0
    })?;
    let took = in_child(|| match dev.user_queue() {
        Err(e) if e.errno() == Some(libc::EPERM) => 0,
        Err(_) => 2,
        Ok(_) => 1,
    })?;
    // Nor may it map the queue through the file it inherited.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dev);
    let len = layout.map_length as usize;
    let mapped = in_child(move || {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a new shared mapping of the inherited file; the kernel picks the address.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        match (p == libc::MAP_FAILED, errno) {
            (true, Some(libc::EPERM)) => 0,
            (true, _) => 2,
            (false, _) => 1,
        }
    })?;
    c.check(
        "user-queue-not-inherited",
        touched == 128 + libc::SIGSEGV && took == 0 && mapped == 0,
        format!("child touching the queue: status {touched} (want SIGSEGV, 139); child taking the queue: {took}, child mapping it: {mapped} (want 0, EPERM, for both)"),
    );
    drop(q);
    Ok(())
}
