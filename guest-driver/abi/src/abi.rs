//! The `/dev/rmnic` ioctl ABI: numbers and structures, shared word for word by the kernel
//! module (which includes this file with `#[path]`) and user space (through `rmnic-abi`).
//!
//! This file must stay `no_std`-clean and dependency-free: the kernel build compiles it as a
//! module of the driver. Structures are `#[repr(C)]` with explicit padding so the C header
//! (`include/rmnic.h`) and both Rust sides agree byte for byte.

/// Version of this ABI. Bumped on every incompatible change; reported by [`IOC_VERSION`].
pub const ABI_VERSION: u32 = 1;

/// Driver version as `major << 16 | minor << 8 | patch`.
pub const DRIVER_VERSION: u32 = 0x00_01_00;

/// The ioctl "type" byte of every rmnic ioctl (`'r'`).
pub const IOC_TYPE: u32 = b'r' as u32;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Encodes an ioctl number as Linux's `_IOC(dir, type, nr, size)` does (asm-generic layout,
/// which x86 uses).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    // CAST: every ABI structure is far below the 14-bit size limit (checked in tests).
    (dir << IOC_DIRSHIFT)
        | (IOC_TYPE << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// Answer of [`IOC_VERSION`]: who is on the other side of `/dev/rmnic`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionInfo {
    /// [`ABI_VERSION`] of the driver.
    pub abi_version: u32,
    /// [`DRIVER_VERSION`] of the driver.
    pub driver_version: u32,
    /// PCI vendor ID of the bound device.
    pub pci_vendor: u16,
    /// PCI device ID of the bound device.
    pub pci_device: u16,
    /// Value of the device's ID register (BAR0 `REG_ID`).
    pub device_id: u32,
    /// Value of the device's version register (BAR0 `REG_VERSION`).
    pub device_version: u32,
    /// Value of the device's capability register (BAR0 `REG_CAPS`).
    pub device_caps: u32,
}

/// Argument of [`IOC_SCRATCH`]: the driver writes `value` to the device's scratch register and
/// returns what it reads back in `readback`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScratchProbe {
    /// Value to write.
    pub value: u32,
    /// Value read back from the register after the write.
    pub readback: u32,
}

/// `_IOR('r', 0x00, VersionInfo)`: read [`VersionInfo`].
pub const IOC_VERSION: u32 = ioc(IOC_READ, 0x00, core::mem::size_of::<VersionInfo>());

/// `_IOWR('r', 0x01, ScratchProbe)`: write and read back the device scratch register.
pub const IOC_SCRATCH: u32 = ioc(
    IOC_READ | IOC_WRITE,
    0x01,
    core::mem::size_of::<ScratchProbe>(),
);
