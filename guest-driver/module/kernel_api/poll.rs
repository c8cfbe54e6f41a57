// SPDX-License-Identifier: GPL-2.0

//! `poll()` support: a wait queue a file's poll callback registers with the poll table, and the
//! poll table handle the callback receives (6.12 has no Rust abstraction for either).

use kernel::bindings;
use kernel::c_str;
use kernel::prelude::*;
use kernel::types::Opaque;

/// `POLLIN | POLLRDNORM`: data (completions) can be read.
pub(crate) const READABLE: u32 = 0x0001 | 0x0040;
/// `POLLERR`: the context is lost (the device was reset under it); calls fail with EIO.
pub(crate) const ERROR: u32 = 0x0008;
/// `TASK_NORMAL` (`TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE`): wake any sleeper.
const TASK_NORMAL: u32 = 0x1 | 0x2;

/// Lockdep class of every [`PollQueue`]'s internal spinlock.
struct ClassKey(Opaque<bindings::lock_class_key>);
// SAFETY: lockdep synchronises access to its keys itself.
unsafe impl Sync for ClassKey {}
static POLL_QUEUE_KEY: ClassKey = ClassKey(Opaque::uninit());

/// A wait queue pollers sleep on.
///
/// # Invariants
///
/// `wq` is initialised by `__init_waitqueue_head` and pinned.
#[pin_data]
pub(crate) struct PollQueue {
    #[pin]
    wq: Opaque<bindings::wait_queue_head>,
}

// SAFETY: the wait queue has its own spinlock; every operation on it is thread-safe.
unsafe impl Send for PollQueue {}
// SAFETY: as above.
unsafe impl Sync for PollQueue {}

impl PollQueue {
    /// An empty wait queue.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid, pinned memory for a `wait_queue_head`; the name and the
            // class key are `'static` as lockdep keeps the pointers.
            // INVARIANT: initialised here and pinned by `pin_init!`.
            wq <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_waitqueue_head(
                    slot,
                    c_str!("rmnic::PollQueue").as_char_ptr(),
                    POLL_QUEUE_KEY.0.get(),
                )
            }),
        })
    }

    /// Wakes every poller. Any context.
    pub(crate) fn wake(&self) {
        // SAFETY: `wq` is initialised by the type invariant; a null key wakes everyone.
        unsafe { bindings::__wake_up(self.wq.get(), TASK_NORMAL, 1, core::ptr::null_mut()) };
    }
}

/// The poll table of one `poll()` call, valid for the duration of the file's poll callback.
pub(crate) struct PollTable {
    file: *mut bindings::file,
    table: *mut bindings::poll_table_struct,
}

impl PollTable {
    /// # Safety
    ///
    /// `file` and `table` must be the arguments of a running `file_operations.poll` call.
    pub(crate) unsafe fn from_raw(
        file: *mut bindings::file,
        table: *mut bindings::poll_table_struct,
    ) -> Self {
        Self { file, table }
    }

    /// Registers `queue`, which must outlive the open file (it is unregistered when the poll
    /// or the epoll item that registered it goes away, both before the file is released).
    pub(crate) fn register(&self, queue: &PollQueue) {
        // SAFETY: `file` and `table` are valid for this poll call (constructor contract);
        // `queue.wq` is initialised and pinned by its type invariant.
        unsafe { bindings::poll_wait(self.file, queue.wq.get(), self.table) };
    }
}
