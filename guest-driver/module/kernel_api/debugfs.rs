// SPDX-License-Identifier: GPL-2.0

//! Read-only debugfs counters (6.12 has no Rust debugfs API): a directory that exposes
//! `AtomicU64` counters of an owner it keeps alive, removed with its files on drop.

use core::any::Any;
use core::sync::atomic::AtomicU64;

use kernel::bindings;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

/// Mode of every counter file: read-only for root.
const MODE: u16 = 0o400;

/// A debugfs directory.
///
/// # Invariants
///
/// `dentry` is a directory created by `debugfs_create_dir` and not yet removed; every counter
/// file in it points into an object `_owners` keeps alive.
pub(crate) struct Dir {
    dentry: *mut bindings::dentry,
    _owners: KVec<Arc<dyn Any + Send + Sync>>,
}

// SAFETY: debugfs calls are thread-safe; the owners are `Send + Sync`.
unsafe impl Send for Dir {}
// SAFETY: `&Dir` exposes nothing mutable.
unsafe impl Sync for Dir {}

fn is_err(ptr: *mut bindings::dentry) -> bool {
    // ERR_PTR values are the top 4095 addresses.
    ptr.is_null() || (ptr as usize) >= usize::MAX - 4094
}

impl Dir {
    /// Creates `name` under `parent` (the debugfs root when `None`). `None` when debugfs is
    /// unavailable: debugfs is best effort by kernel convention.
    pub(crate) fn new(name: &CStr, parent: Option<&Dir>) -> Option<Self> {
        let parent = parent.map_or(core::ptr::null_mut(), |p| p.dentry);
        // SAFETY: `name` is NUL-terminated (debugfs copies it); `parent` is null or a live
        // directory by `Dir`'s invariant.
        let dentry = unsafe { bindings::debugfs_create_dir(name.as_char_ptr(), parent) };
        if is_err(dentry) {
            return None;
        }
        // INVARIANT: created just above; no files yet.
        Some(Self {
            dentry,
            _owners: KVec::new(),
        })
    }

    /// Exposes `counters` of `owner` as read-only files; the directory keeps `owner` alive.
    pub(crate) fn counters<T: Send + Sync + 'static>(
        &mut self,
        owner: Arc<T>,
        counters: &[(&'static CStr, fn(&T) -> &AtomicU64)],
    ) -> Result {
        for (name, field) in counters {
            let value = field(&owner).as_ptr();
            // SAFETY: the directory is live (invariant); `value` points into `owner`, which is
            // stored below and outlives the file (files go before the owners in `drop`); an
            // aligned u64 load of an `AtomicU64` is a plain atomic read on 64-bit kernels.
            unsafe { bindings::debugfs_create_u64(name.as_char_ptr(), MODE, self.dentry, value) };
        }
        // INVARIANT: the owner of the files just created is kept.
        self._owners.push(owner, GFP_KERNEL)?;
        Ok(())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: live directory by the invariant; `debugfs_remove` removes it recursively and
        // waits for readers, so the owners (dropped after this) are no longer referenced.
        unsafe { bindings::debugfs_remove(self.dentry) };
    }
}
