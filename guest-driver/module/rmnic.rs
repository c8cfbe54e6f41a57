// SPDX-License-Identifier: GPL-2.0

//! rmnic: driver for the rmnic remote-memory NIC, a PCI device that runs memory operations on
//! user virtual addresses through its own TLB.
//!
//! Layout: [`device`] is the driver logic and holds no `unsafe`; [`pci`] and [`misc`] wrap the
//! C APIs Linux 6.12 does not expose to Rust; [`uapi`] is the ioctl ABI shared with user space;
//! [`regs`] the device's register map.

use kernel::bindings;
use kernel::c_str;
use kernel::prelude::*;

mod device;
#[expect(dead_code, reason = "wired up by the context code")]
mod dma;
#[expect(dead_code, reason = "wired up by the context code")]
mod hmm;
#[expect(dead_code, reason = "wired up by the context code")]
mod irq;
mod misc;
#[expect(dead_code, reason = "wired up by the context code")]
mod mm;
#[expect(dead_code, reason = "wired up by the context code")]
mod mmu;
mod pci;
mod regs;
mod uapi;

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
    _driver: pci::Registration<device::Rmnic>,
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
