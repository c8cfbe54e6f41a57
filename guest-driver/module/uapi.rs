// SPDX-License-Identifier: GPL-2.0

//! The user-space ABI as the kernel sees it: the shared definitions, compiled from the same
//! file the `rmnic-abi` crate uses, plus the marker traits that allow copying them to and from
//! user memory.

// The shared file is written for a library crate (`pub` items); here it is a private module.
#[path = "../abi/src/abi.rs"]
#[allow(dead_code, unreachable_pub)]
mod abi;

pub(crate) use abi::*;

use kernel::types::{AsBytes, FromBytes};

// SAFETY: `VersionInfo` is `repr(C)` with only integer fields and no padding (24 bytes, checked
// by `rmnic-abi`'s tests), so every byte is initialised and any byte pattern is valid.
unsafe impl AsBytes for VersionInfo {}
// SAFETY: as above: `repr(C)`, integer fields only, no padding.
unsafe impl FromBytes for VersionInfo {}
// SAFETY: `ScratchProbe` is `repr(C)` with two `u32` fields and no padding.
unsafe impl AsBytes for ScratchProbe {}
// SAFETY: as above.
unsafe impl FromBytes for ScratchProbe {}
// SAFETY: `Command` is `repr(C)`, 56 bytes of integers with no padding (checked by rmnic-abi's
// tests); any byte pattern is a valid value.
unsafe impl FromBytes for Command {}
// SAFETY: `Completion` is `repr(C)`, 32 bytes of integers with no padding.
unsafe impl AsBytes for Completion {}
// SAFETY: `Submit` is `repr(C)`, 16 bytes of integers with no padding.
unsafe impl FromBytes for Submit {}
// SAFETY: as above.
unsafe impl AsBytes for Submit {}
// SAFETY: `Wait` is `repr(C)`, 24 bytes of integers with no padding.
unsafe impl FromBytes for Wait {}
// SAFETY: as above.
unsafe impl AsBytes for Wait {}
// SAFETY: `ContextStats` is `repr(C)`, 80 bytes of integers with no padding.
unsafe impl AsBytes for ContextStats {}
// SAFETY: `SegmentExport` is `repr(C)`, 32 bytes of integers (u64, u64, u32, u32, u64) with no
// padding (checked by rmnic-abi's tests); any byte pattern is a valid value.
unsafe impl FromBytes for SegmentExport {}
// SAFETY: as above.
unsafe impl AsBytes for SegmentExport {}
// SAFETY: `SegmentAttach` is `repr(C)`, 24 bytes of integers (u64, u32, u32, u64) with no
// padding; any byte pattern is a valid value.
unsafe impl FromBytes for SegmentAttach {}
// SAFETY: as above.
unsafe impl AsBytes for SegmentAttach {}
// SAFETY: `UserQueue` is `repr(C)`, 32 bytes of integers (4 × u32, 2 × u64) with no padding
// (checked by the shared file's const assertion).
unsafe impl AsBytes for UserQueue {}
// SAFETY: `UserWait` is `repr(C)`, two `u32` with no padding; any byte pattern is valid.
unsafe impl FromBytes for UserWait {}
