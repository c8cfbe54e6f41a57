// SPDX-License-Identifier: GPL-2.0

//! The rmnic driver logic: probe and remove, and the `/dev/rmnic` ioctls. No `unsafe` here;
//! every kernel API goes through the [`crate::pci`] and [`crate::misc`] wrappers.

use core::pin::Pin;

use kernel::c_str;
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::{Arc, SpinLock};
use kernel::types::ScopeGuard;
use kernel::uaccess::UserSlice;

use crate::misc;
use crate::pci;
use crate::regs::{
    BAR0_SIZE, ID_MAGIC, REG_CAPS, REG_ID, REG_SCRATCH, REG_VERSION,
};
use crate::uapi;

/// `PCI_VENDOR_ID` and `PCI_DEVICE_ID` configuration offsets.
const PCI_CFG_VENDOR_ID: i32 = 0x00;
const PCI_CFG_DEVICE_ID: i32 = 0x02;

/// Patterns the probe self-test writes to the scratch register.
const SCRATCH_PATTERNS: [u32; 3] = [0xA5A5_5A5A, 0x1234_5678, 0];

/// The rmnic PCI driver.
pub(crate) struct Rmnic;

/// State shared by the PCI binding and every open file of `/dev/rmnic`.
#[pin_data]
pub(crate) struct Shared {
    /// BAR0, or `None` once the device was removed (open files then get `ENODEV`).
    /// A spinlock, not a mutex: MMIO never sleeps, and the future notifier path must not.
    #[pin]
    bar: SpinLock<Option<pci::Bar<BAR0_SIZE>>>,
    pci_vendor: u16,
    pci_device: u16,
}

/// What the PCI core keeps for a bound device.
pub(crate) struct Bound {
    shared: Arc<Shared>,
    misc: Option<Pin<KBox<misc::Registration<Rmnic>>>>,
}

impl pci::Driver for Rmnic {
    type Data = KBox<Bound>;

    fn probe(dev: &pci::Device) -> Result<KBox<Bound>> {
        dev.enable()?;
        let enabled = ScopeGuard::new(|| dev.disable());
        dev.request_regions(c_str!("rmnic"))?;
        let claimed = ScopeGuard::new(|| dev.release_regions());

        let pci_vendor = dev.config_read16(PCI_CFG_VENDOR_ID)?;
        let pci_device = dev.config_read16(PCI_CFG_DEVICE_ID)?;
        let bar = dev.iomap::<BAR0_SIZE>(0)?;
        let id = bar.read32::<REG_ID>();
        if id != ID_MAGIC {
            pr_err!("rmnic: ID register reads {id:#010x}, expected {ID_MAGIC:#010x}\n");
            return Err(ENODEV);
        }
        let version = bar.read32::<REG_VERSION>();
        pr_info!(
            "rmnic: device {pci_vendor:04x}:{pci_device:04x} ID {id:#010x} spec {}.{}\n",
            version >> 16,
            version & 0xffff
        );
        for pattern in SCRATCH_PATTERNS {
            bar.write32::<REG_SCRATCH>(pattern);
            let readback = bar.read32::<REG_SCRATCH>();
            if readback != pattern {
                pr_err!("rmnic: scratch wrote {pattern:#010x}, read {readback:#010x}\n");
                return Err(EIO);
            }
        }
        pr_info!("rmnic: scratch register round-trip ok\n");
        dev.set_master();

        let shared = Arc::pin_init(
            pin_init!(Shared {
                bar <- new_spinlock!(Some(bar), "rmnic::Shared::bar"),
                pci_vendor,
                pci_device,
            }),
            GFP_KERNEL,
        )?;
        let misc = misc::Registration::<Rmnic>::new(
            c_str!("rmnic"),
            shared.clone(),
            &crate::THIS_MODULE,
        )?;
        let bound = KBox::new(
            Bound {
                shared,
                misc: Some(misc),
            },
            GFP_KERNEL,
        )?;
        claimed.dismiss();
        enabled.dismiss();
        pr_info!("rmnic: bound, /dev/rmnic registered\n");
        Ok(bound)
    }

    fn remove(dev: &pci::Device, mut data: KBox<Bound>) {
        // No new opens from here on; files already open keep `shared` alive and see ENODEV.
        drop(data.misc.take());
        // Unmap outside the spinlock: iounmap may sleep.
        let bar = data.shared.bar.lock().take();
        drop(bar);
        dev.release_regions();
        dev.disable();
        pr_info!("rmnic: removed\n");
    }
}

impl misc::FileOps for Rmnic {
    type Shared = Shared;

    fn ioctl(shared: &Shared, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            uapi::IOC_VERSION => {
                let info = version_info(shared)?;
                let mut writer =
                    UserSlice::new(arg, core::mem::size_of::<uapi::VersionInfo>()).writer();
                writer.write(&info)?;
                Ok(0)
            }
            uapi::IOC_SCRATCH => {
                let (mut reader, mut writer) =
                    UserSlice::new(arg, core::mem::size_of::<uapi::ScratchProbe>())
                        .reader_writer();
                let mut probe: uapi::ScratchProbe = reader.read()?;
                probe.readback = {
                    let guard = shared.bar.lock();
                    let bar = guard.as_ref().ok_or(ENODEV)?;
                    bar.write32::<REG_SCRATCH>(probe.value);
                    bar.read32::<REG_SCRATCH>()
                };
                writer.write(&probe)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}

/// Reads the identification registers; copying to user space happens after the lock is
/// dropped, since it may fault and sleep.
fn version_info(shared: &Shared) -> Result<uapi::VersionInfo> {
    let guard = shared.bar.lock();
    let bar = guard.as_ref().ok_or(ENODEV)?;
    Ok(uapi::VersionInfo {
        abi_version: uapi::ABI_VERSION,
        driver_version: uapi::DRIVER_VERSION,
        pci_vendor: shared.pci_vendor,
        pci_device: shared.pci_device,
        device_id: bar.read32::<REG_ID>(),
        device_version: bar.read32::<REG_VERSION>(),
        device_caps: bar.read32::<REG_CAPS>(),
    })
}
