// SPDX-License-Identifier: GPL-2.0

//! Safe wrappers of the C APIs Linux 6.12 does not expose to Rust, one small module per API.
//! Every `unsafe` call of the driver lives here, each with its `// SAFETY:` justification;
//! the driver logic (the parent module's other files) uses only these wrappers.

#[allow(dead_code, reason = "complete wrapper API")]
pub(crate) mod debugfs;
pub(crate) mod cred;
pub(crate) mod delay;
#[allow(dead_code, reason = "complete wrapper API")]
pub(crate) mod dma;
#[allow(dead_code, reason = "complete wrapper API")]
pub(crate) mod hmm;
#[allow(dead_code, reason = "complete wrapper API")]
pub(crate) mod irq;
pub(crate) mod misc;
#[allow(dead_code, reason = "complete wrapper API")]
pub(crate) mod mm;
#[allow(dead_code, reason = "complete wrapper API")]
pub(crate) mod mmu;
pub(crate) mod pci;
pub(crate) mod poll;
pub(crate) mod vma;
