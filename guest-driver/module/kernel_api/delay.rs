// SPDX-License-Identifier: GPL-2.0

//! Sleeping and busy-waiting, for polling device-written memory (6.12 has no Rust delay API).

use kernel::bindings;

/// Sleeps for at least `ms` milliseconds. Process context only.
pub(crate) fn msleep(ms: u32) {
    // SAFETY: `msleep` has no preconditions beyond process context, which callers document.
    unsafe { bindings::msleep(ms) }
}

/// Busy-waits for `us` microseconds; allowed in atomic context.
pub(crate) fn udelay(us: u32) {
    // CAST: u32 to usize is lossless on 64-bit kernels.
    // SAFETY: `__udelay` only spins; it is safe in any context.
    unsafe { bindings::__udelay(us as usize) }
}
