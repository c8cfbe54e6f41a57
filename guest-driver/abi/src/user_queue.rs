//! User-level submission (ABI 6, device 1.5): the context's command queue and doorbell page
//! mapped into this process, so that posting a command and learning it completed take no
//! system call ([`crate::Context::user_queue`]).
//!
//! The queue is shared with the device: commands are written with volatile stores, the tail
//! is published with a release store after them, the head is read with an acquire load before
//! the completion record it covers. The kernel still resolves the device's misses and keeps
//! its TLB coherent; the process only sees completions.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::abi::{self, Command, Completion};
use crate::{Context, Error};

/// A context's user queue, mapped. Unmapped on drop; the context stays in user-queue mode
/// (its kernel submission path refuses with `EINVAL`) until it is closed.
#[derive(Debug)]
pub struct UserQueue<'a> {
    ctx: &'a Context,
    layout: abi::UserQueue,
    queue: *mut u8,
    doorbell: *mut u32,
    /// Commands posted (the tail this process publishes).
    tail: u32,
}

/// One mapping of the context's file.
fn map(ctx: &Context, len: usize, offset: u64, what: &'static str) -> Result<*mut u8, Error> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset).map_err(|_| Error::Mmap {
        what,
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: a new shared mapping of the context's file; the kernel checks length and
    // offset, and nothing else in this process is at the address it picks.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            ctx.file.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::Mmap {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ptr.cast())
}

impl<'a> UserQueue<'a> {
    /// Asks the driver for the context's queue (`RMNIC_IOC_USER_QUEUE`) and maps it and the
    /// doorbell page.
    pub(crate) fn open(ctx: &'a Context) -> Result<Self, Error> {
        let mut layout = abi::UserQueue::default();
        ctx.ioctl("RMNIC_IOC_USER_QUEUE", abi::IOC_USER_QUEUE, &mut layout)?;
        let len = usize::try_from(layout.map_length).unwrap_or(usize::MAX);
        let queue = map(ctx, len, abi::USER_QUEUE_MMAP_OFFSET, "the user queue")?;
        let doorbell = match map(ctx, PAGE, layout.doorbell_offset, "the doorbell page") {
            Ok(ptr) => ptr.cast(),
            Err(e) => {
                // SAFETY: mapped just above with this length, not used since.
                unsafe { libc::munmap(queue.cast(), len) };
                return Err(e);
            }
        };
        Ok(Self {
            ctx,
            layout,
            queue,
            doorbell,
            tail: 0,
        })
    }

    /// The queue's layout as the driver reported it.
    pub fn layout(&self) -> abi::UserQueue {
        self.layout
    }

    /// Where the queue is mapped in this process (for checks that a child does not inherit
    /// it).
    pub fn mapping_addr(&self) -> usize {
        self.queue as usize
    }

    /// Commands posted so far (free-running).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    fn index(&self, offset: u32) -> &AtomicU32 {
        // SAFETY: `offset` is the tail or head word of the index block inside the mapping
        // (4-byte aligned, the layout the driver reported), which lives as long as `self`;
        // the device accesses it atomically too.
        unsafe {
            AtomicU32::from_ptr(
                self.queue
                    .add((self.layout.indices_offset + offset) as usize)
                    .cast(),
            )
        }
    }

    /// Commands the device has completed (free-running).
    pub fn head(&self) -> u32 {
        self.index(abi::USER_HEAD_OFFSET).load(Ordering::Acquire)
    }

    /// Slots free for [`Self::post`].
    pub fn free(&self) -> u32 {
        self.layout.slots - self.tail.wrapping_sub(self.head())
    }

    /// Writes `command` into the next slot and publishes it (no doorbell: ring once for a
    /// batch with [`Self::ring`]). Returns its slot, or None when every slot is taken.
    pub fn post(&mut self, command: &Command) -> Option<u32> {
        if self.free() == 0 {
            return None;
        }
        let slot = self.tail % self.layout.slots;
        // SAFETY: slot < slots, so the record lies inside the mapping; slots are 64-byte
        // aligned and the device reads the slot only after the tail below covers it.
        unsafe {
            let at = self.queue.add((slot * self.layout.slot_size) as usize);
            std::ptr::write_volatile(at.cast::<Command>(), *command);
        }
        self.tail = self.tail.wrapping_add(1);
        self.index(abi::USER_TAIL_OFFSET)
            .store(self.tail, Ordering::Release);
        Some(slot)
    }

    /// Rings the context's doorbell: the device looks at the tail.
    pub fn ring(&self) {
        // SAFETY: `doorbell` is the mapped doorbell page; a 32-bit store at its offset 0 is
        // the doorbell (its value is ignored).
        unsafe { std::ptr::write_volatile(self.doorbell, 1) };
    }

    /// The completion record of `slot` (valid once the head has passed the command).
    pub fn completion(&self, slot: u32) -> Completion {
        let slot = slot % self.layout.slots;
        // SAFETY: the completion of a slot < slots lies inside the mapping, 32-byte aligned.
        unsafe {
            let at = self
                .queue
                .add(self.layout.completions_offset as usize + slot as usize * 32);
            std::ptr::read_volatile(at.cast::<Completion>())
        }
    }

    /// Waits until the head reaches `count` commands, or fails with `ETIMEDOUT` after
    /// `timeout`. It polls the head (yielding the CPU now and then) while the head moves; after
    /// [`STALL_BEFORE_SLEEP`] without progress it sleeps in the driver (`RMNIC_IOC_USER_WAIT`),
    /// which drains the fault ring itself meanwhile: a lost fault interrupt then costs
    /// milliseconds instead of stalling the queue.
    pub fn wait_head(&self, count: u32, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let mut last = self.head();
        let mut moved = start;
        let mut spins = 0u32;
        while (count.wrapping_sub(self.head()) as i32) > 0 {
            spins += 1;
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let left = timeout.saturating_sub(now - start);
            if left.is_zero() {
                return Err(Error::Ioctl {
                    name: "user queue head",
                    source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
                });
            }
            let head = self.head();
            if head != last {
                (last, moved) = (head, now);
            }
            if now - moved < STALL_BEFORE_SLEEP {
                std::thread::yield_now();
                continue;
            }
            let mut arg = abi::UserWait {
                head: count,
                // At least 1 ms: 0 would mean no limit.
                timeout_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1),
            };
            match self
                .ctx
                .ioctl("RMNIC_IOC_USER_WAIT", abi::IOC_USER_WAIT, &mut arg)
            {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EAGAIN) => {}
                Err(e) => return Err(e),
            }
            moved = Instant::now();
        }
        Ok(())
    }
}

/// How long [`UserQueue::wait_head`] polls a head that does not move before it sleeps in the
/// driver.
pub const STALL_BEFORE_SLEEP: Duration = Duration::from_millis(5);

/// The doorbell mapping's length.
const PAGE: usize = 4096;

impl Drop for UserQueue<'_> {
    fn drop(&mut self) {
        let len = usize::try_from(self.layout.map_length).unwrap_or(usize::MAX);
        // SAFETY: both were mapped in `open` with these lengths and are not used after this.
        unsafe {
            libc::munmap(self.queue.cast(), len);
            libc::munmap(self.doorbell.cast(), PAGE);
        }
    }
}
