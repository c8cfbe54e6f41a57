// SPDX-License-Identifier: GPL-2.0

//! rmnic: driver for the rmnic remote-memory NIC, a PCI device that runs memory operations on
//! user virtual addresses through its own TLB.
//!
//! Layout: the driver logic holds no `unsafe`: [`device`] (probe, remove, interrupts, file
//! operations), [`context`] (a context bound to a process: the notifier callback and the miss
//! path), [`cmdq`] (command rings), [`invq`] (the invalidation queue), [`hw`] (the BAR0
//! accessor every part shares), [`counters`] (driver-wide counters), [`segment`] (segments:
//! exports, attachments, their permission checks and revocation). The wrappers around the C
//! APIs Linux 6.12 does not expose to Rust are in [`kernel_api`]: `pci`, `misc`, `irq`, `dma`,
//! `mm`, `mmu` (interval notifier), `hmm` (`hmm_range_fault`), `delay`, `debugfs`, `poll`,
//! `cred` (the caller's effective ids).
//! [`uapi`] is the ioctl ABI shared with user space; [`regs`] the device's register map.

use kernel::bindings;
use kernel::c_str;
use kernel::prelude::*;

mod cmdq;
mod context;
mod counters;
mod device;
mod hw;
mod invq;
mod segment;
mod kernel_api;
#[allow(dead_code, reason = "the register map mirrors the spec")]
mod regs;
mod uapi;
mod user_queue;

// The wrappers keep their short paths (`crate::pci`, ...) for the driver logic.
use kernel_api::{cred, debugfs, delay, dma, hmm, irq, misc, mm, mmu, pci, poll, vma};

#[cfg(not(CONFIG_MMU_NOTIFIER))]
compile_error!("rmnic needs CONFIG_MMU_NOTIFIER (select it with CONFIG_RMNIC_TESTBED)");

module! {
    type: RmnicModule,
    name: "rmnic",
    author: "rmnic developers",
    description: "rmnic remote-memory NIC driver",
    license: "GPL",
}

/// PCI IDs this driver binds to.
static ID_TABLE: [bindings::pci_device_id; 2] = [
    pci::device_id(regs::PCI_VENDOR_ID, regs::PCI_DEVICE_ID),
    pci::ID_TABLE_END,
];

struct RmnicModule {
    _driver: pci::Registration<device::RmnicDriver>,
}

impl kernel::Module for RmnicModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        pr_info!(
            "rmnic: driver {}.{}.{} (ABI {}) loading\n",
            uapi::DRIVER_VERSION >> 16,
            (uapi::DRIVER_VERSION >> 8) & 0xff,
            uapi::DRIVER_VERSION & 0xff,
            uapi::ABI_VERSION
        );
        let driver = pci::Registration::new(c_str!("rmnic"), &ID_TABLE, module)?;
        Ok(Self { _driver: driver })
    }
}
