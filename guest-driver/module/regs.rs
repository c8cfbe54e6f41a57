// SPDX-License-Identifier: GPL-2.0

//! BAR0 register offsets and values of the rmnic device, as the driver uses them.
//!
//! The device model (`device/` crate) is the source of truth; a host-side test
//! (`tests/tests/abi_consistency.rs`) checks that every constant here matches it.

/// Size of BAR0 the driver requires.
pub(crate) const BAR0_SIZE: usize = 0x4000;
/// Identification register: reads [`ID_MAGIC`].
pub(crate) const REG_ID: usize = 0x000;
/// Specification version: `major << 16 | minor`.
pub(crate) const REG_VERSION: usize = 0x004;
/// Read-write scratch register, no side effects.
pub(crate) const REG_SCRATCH: usize = 0x008;
/// Capability register.
pub(crate) const REG_CAPS: usize = 0x00C;

/// Value of [`REG_ID`]: "RMNC".
pub(crate) const ID_MAGIC: u32 = 0x524D_4E43;

/// PCI vendor ID of the device (experimental, not assigned by PCI-SIG).
pub(crate) const PCI_VENDOR_ID: u32 = 0xF1E0;
/// PCI device ID of the device.
pub(crate) const PCI_DEVICE_ID: u32 = 0x0001;
