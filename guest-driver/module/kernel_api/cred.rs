// SPDX-License-Identifier: GPL-2.0

//! The calling task's effective credentials, for the segment permission check.
//!
//! Linux 6.12 has no Rust abstraction for `struct cred`, and `current_euid()` is a macro over
//! `current->cred`, a field of `task_struct`, whose bindgen layout is not to be trusted here
//! (`/work/shared/platform.md`). The project's kernel patch adds two helpers that evaluate the
//! macros in C (`rust/helpers/cred.c`).

use kernel::bindings;

/// Effective user and group ids, as the kernel-internal values (initial user namespace), so
/// that ids compare correctly between tasks in different namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// Effective uid.
    pub(crate) euid: u32,
    /// Effective gid.
    pub(crate) egid: u32,
}

impl Credentials {
    /// The calling task's. Process context.
    pub(crate) fn current() -> Self {
        // SAFETY: the helpers read the current task's own credentials, which cannot change
        // under it (`current_cred()` needs no lock for the task itself) and take no argument.
        let (euid, egid) = unsafe {
            (
                bindings::current_euid_raw(),
                bindings::current_egid_raw(),
            )
        };
        Self { euid, egid }
    }
}
