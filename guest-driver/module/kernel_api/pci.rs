// SPDX-License-Identifier: GPL-2.0

//! A small safe PCI driver abstraction over the C API (Linux 6.12 ships none for Rust).
//!
//! It covers exactly what rmnic needs: registering a driver for an ID table, probe/remove
//! callbacks carrying driver data, enabling the function, claiming its regions and mapping a
//! memory BAR with compile-time-checked register offsets. Shaped after `rust/kernel/pci.rs`
//! of later kernels.

use core::marker::PhantomData;
use core::pin::Pin;

use kernel::bindings;
use kernel::error::{to_result, Result};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::types::{ForeignOwnable, Opaque};

/// `PCI_ANY_ID` for the subvendor/subdevice fields of an ID-table entry.
const PCI_ANY_ID: u32 = !0;

/// Builds an ID-table entry matching `vendor:device` with any subsystem IDs.
pub(crate) const fn device_id(vendor: u32, device: u32) -> bindings::pci_device_id {
    bindings::pci_device_id {
        vendor,
        device,
        subvendor: PCI_ANY_ID,
        subdevice: PCI_ANY_ID,
        class: 0,
        class_mask: 0,
        driver_data: 0,
        override_only: 0,
    }
}

/// The all-zero entry that terminates an ID table.
pub(crate) const ID_TABLE_END: bindings::pci_device_id = device_id(0, 0);

/// What a PCI driver implements.
pub(crate) trait Driver {
    /// Per-device state, owned by the PCI core between probe and remove.
    type Data: ForeignOwnable + Send + Sync;

    /// Binds to `dev`; on error nothing may stay claimed or enabled.
    fn probe(dev: &Device) -> Result<Self::Data>;

    /// Unbinds from `dev`: quiesce the device, then drop `data`.
    fn remove(dev: &Device, data: Self::Data);
}

/// A PCI function, borrowed from the PCI core for the duration of a callback.
///
/// # Invariants
///
/// The wrapped `pci_dev` is valid and bound to this driver while a `&Device` exists.
#[repr(transparent)]
pub(crate) struct Device(Opaque<bindings::pci_dev>);

impl Device {
    /// # Safety
    ///
    /// `ptr` must point to a `pci_dev` that stays valid and bound for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::pci_dev) -> &'a Self {
        // SAFETY: `Device` is `repr(transparent)` over `Opaque<pci_dev>`, which has the layout
        // of `pci_dev`; validity for `'a` is the caller's promise.
        // INVARIANT: the caller guarantees the device is valid and bound for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    pub(crate) fn as_raw(&self) -> *mut bindings::pci_dev {
        self.0.get()
    }

    /// Enables memory decoding and wakes the function (`pci_enable_device_mem`).
    pub(crate) fn enable(&self) -> Result {
        // SAFETY: the type invariant makes `as_raw()` a valid, bound device.
        to_result(unsafe { bindings::pci_enable_device_mem(self.as_raw()) })
    }

    /// Undoes [`Device::enable`].
    pub(crate) fn disable(&self) {
        // SAFETY: the type invariant makes `as_raw()` a valid, bound device.
        unsafe { bindings::pci_disable_device(self.as_raw()) }
    }

    /// Lets the function master the bus (DMA, MSI).
    pub(crate) fn set_master(&self) {
        // SAFETY: the type invariant makes `as_raw()` a valid, bound device.
        unsafe { bindings::pci_set_master(self.as_raw()) }
    }

    /// Claims the memory regions of all BARs under `name`.
    pub(crate) fn request_regions(&self, name: &'static CStr) -> Result {
        // SAFETY: valid device by the type invariant; `name` is a NUL-terminated string that
        // lives forever, as the resource tree keeps the pointer.
        to_result(unsafe { bindings::pci_request_regions(self.as_raw(), name.as_char_ptr()) })
    }

    /// Releases what [`Device::request_regions`] claimed.
    pub(crate) fn release_regions(&self) {
        // SAFETY: the type invariant makes `as_raw()` a valid, bound device.
        unsafe { bindings::pci_release_regions(self.as_raw()) }
    }

    /// Reads a 16-bit configuration register.
    pub(crate) fn config_read16(&self, offset: i32) -> Result<u16> {
        let mut value = 0u16;
        // SAFETY: valid device by the type invariant; `value` is a valid out pointer.
        let rc = unsafe { bindings::pci_read_config_word(self.as_raw(), offset, &mut value) };
        if rc != 0 {
            return Err(EIO);
        }
        Ok(value)
    }

    /// Bus (physical) address where BAR `bar` starts; 0 for an unassigned BAR.
    pub(crate) fn resource_start(&self, bar: i32) -> u64 {
        // SAFETY: `self.as_raw()` is a valid device (type invariant); the helper only reads
        // its resource table.
        unsafe { bindings::pci_resource_start(self.as_raw(), bar) }
    }

    /// Length in bytes of BAR `bar` (0 if absent).
    pub(crate) fn resource_len(&self, bar: i32) -> u64 {
        // SAFETY: valid device by the type invariant; the helper only reads `pdev->resource`.
        unsafe { bindings::pci_resource_len(self.as_raw(), bar) }
    }

    /// Maps memory BAR `bar`, which must be at least `SIZE` bytes long.
    pub(crate) fn iomap<const SIZE: usize>(&self, bar: i32) -> Result<Bar<SIZE>> {
        // CAST: usize to u64 is lossless on 64-bit kernels.
        if self.resource_len(bar) < SIZE as u64 {
            return Err(ENODEV);
        }
        // SAFETY: valid device by the type invariant; a zero `maxlen` maps the whole BAR.
        let addr = unsafe { bindings::pci_iomap(self.as_raw(), bar, 0) };
        if addr.is_null() {
            return Err(ENOMEM);
        }
        // INVARIANT: `addr` maps at least `SIZE` bytes (checked above) of `self`'s BAR.
        Ok(Bar {
            pdev: self.as_raw(),
            addr: addr.cast(),
        })
    }
}

/// A counted reference to a PCI function (`pci_dev_get` / `pci_dev_put`), for code that runs
/// outside the probe/remove callbacks (file operations allocating DMA memory).
///
/// # Invariants
///
/// `pdev` is valid and holds one reference taken in [`DeviceRef::new`].
pub(crate) struct DeviceRef {
    pdev: *mut bindings::pci_dev,
}

// SAFETY: the reference count is atomic and the device may be used from any thread.
unsafe impl Send for DeviceRef {}
// SAFETY: `&DeviceRef` only gives `&Device`, whose methods are thread-safe C calls.
unsafe impl Sync for DeviceRef {}

impl DeviceRef {
    /// Takes a reference on `dev`.
    pub(crate) fn new(dev: &Device) -> Self {
        // SAFETY: `dev` is valid by its type invariant; the reference is dropped in `drop`.
        unsafe { bindings::pci_dev_get(dev.as_raw()) };
        // INVARIANT: reference taken just above.
        Self { pdev: dev.as_raw() }
    }
}

impl core::ops::Deref for DeviceRef {
    type Target = Device;

    fn deref(&self) -> &Device {
        // SAFETY: the reference keeps the structure alive for as long as `self`; callers use it
        // only for operations valid on an unbound device too (DMA allocation, which fails
        // cleanly once the driver let go of the device).
        unsafe { Device::from_raw(self.pdev) }
    }
}

impl Drop for DeviceRef {
    fn drop(&mut self) {
        // SAFETY: drops the reference taken in `new`, exactly once.
        unsafe { bindings::pci_dev_put(self.pdev) }
    }
}

/// A mapped memory BAR of at least `SIZE` bytes. Register offsets are checked against `SIZE`
/// at compile time.
///
/// # Invariants
///
/// `addr` is the `pci_iomap` mapping of a BAR of `pdev` with at least `SIZE` bytes, valid until
/// `Drop` unmaps it. The owner must drop the `Bar` before the device is disabled.
pub(crate) struct Bar<const SIZE: usize> {
    pdev: *mut bindings::pci_dev,
    addr: *mut u8,
}

// SAFETY: MMIO through `ioread32`/`iowrite32` may be issued from any thread; the mapping itself
// is not tied to the thread that created it.
unsafe impl<const SIZE: usize> Send for Bar<SIZE> {}
// SAFETY: every access is a single MMIO instruction on a mapping shared by design; callers
// serialise multi-register sequences with their own locks.
unsafe impl<const SIZE: usize> Sync for Bar<SIZE> {}

impl<const SIZE: usize> Bar<SIZE> {
    /// Reads the 32-bit register at `OFFSET`.
    pub(crate) fn read32<const OFFSET: usize>(&self) -> u32 {
        const { assert!(OFFSET % 4 == 0 && OFFSET + 4 <= SIZE) };
        // SAFETY: by the type invariant `addr..addr + SIZE` is mapped, and the const assertion
        // keeps the aligned 4-byte access inside it.
        unsafe { bindings::ioread32(self.addr.add(OFFSET).cast()) }
    }

    /// Writes the 32-bit register at `OFFSET`.
    pub(crate) fn write32<const OFFSET: usize>(&self, value: u32) {
        const { assert!(OFFSET % 4 == 0 && OFFSET + 4 <= SIZE) };
        // SAFETY: by the type invariant `addr..addr + SIZE` is mapped, and the const assertion
        // keeps the aligned 4-byte access inside it.
        unsafe { bindings::iowrite32(value, self.addr.add(OFFSET).cast()) }
    }
}

impl<const SIZE: usize> Bar<SIZE> {
    /// Reads the 32-bit register at a run-time `offset` (per-context blocks); `EINVAL` if it is
    /// unaligned or outside the BAR.
    pub(crate) fn try_read32(&self, offset: usize) -> Result<u32> {
        check_offset::<SIZE>(offset)?;
        // SAFETY: `check_offset` keeps the aligned 4-byte access inside `addr..addr + SIZE`,
        // which is mapped by the type invariant.
        Ok(unsafe { bindings::ioread32(self.addr.add(offset).cast()) })
    }

    /// Writes the 32-bit register at a run-time `offset`; `EINVAL` if it is unaligned or
    /// outside the BAR.
    pub(crate) fn try_write32(&self, offset: usize, value: u32) -> Result {
        check_offset::<SIZE>(offset)?;
        // SAFETY: as in `try_read32`.
        unsafe { bindings::iowrite32(value, self.addr.add(offset).cast()) };
        Ok(())
    }
}

fn check_offset<const SIZE: usize>(offset: usize) -> Result {
    if offset % 4 != 0 || offset.checked_add(4).is_none_or(|end| end > SIZE) {
        return Err(EINVAL);
    }
    Ok(())
}

impl<const SIZE: usize> Drop for Bar<SIZE> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `addr` came from `pci_iomap` on `pdev`, which is still
        // enabled, and is unmapped exactly once, here.
        unsafe { bindings::pci_iounmap(self.pdev, self.addr.cast()) }
    }
}

/// A registered PCI driver; unregisters on drop.
///
/// # Invariants
///
/// `driver` is registered with the PCI core from `new` until `drop`, and its id table is
/// `'static`.
pub(crate) struct Registration<T: Driver> {
    driver: Pin<KBox<Opaque<bindings::pci_driver>>>,
    _driver_type: PhantomData<T>,
}

// SAFETY: after registration the C structure is only read by the PCI core, which serialises
// probe/remove itself; the registration can be dropped from any thread.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: `&Registration` exposes nothing.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver + 'static> Registration<T> {
    /// Registers `T` for the devices in `ids`, which must end with [`ID_TABLE_END`].
    pub(crate) fn new(
        name: &'static CStr,
        ids: &'static [bindings::pci_device_id],
        module: &'static ThisModule,
    ) -> Result<Self> {
        let terminated = ids
            .last()
            .is_some_and(|last| last.vendor == 0 && last.device == 0);
        if !terminated {
            return Err(EINVAL);
        }
        let driver = KBox::pin(Opaque::<bindings::pci_driver>::uninit(), GFP_KERNEL)?;
        let raw = driver.get();
        // SAFETY: `raw` points to the freshly allocated, pinned and not yet shared structure;
        // zeroing it is a valid starting state for `pci_driver` (every field is an integer,
        // pointer, option of function pointer or plain C struct).
        unsafe {
            core::ptr::write_bytes(raw, 0, 1);
            (*raw).name = name.as_char_ptr();
            (*raw).id_table = ids.as_ptr();
            (*raw).probe = Some(probe_callback::<T>);
            (*raw).remove = Some(remove_callback::<T>);
        }
        // SAFETY: `raw` is a fully initialised `pci_driver` that stays pinned until `drop`
        // unregisters it; `name` and `ids` are `'static`.
        to_result(unsafe {
            bindings::__pci_register_driver(raw, module.as_ptr(), name.as_char_ptr())
        })?;
        // INVARIANT: registration succeeded just above.
        Ok(Self {
            driver,
            _driver_type: PhantomData,
        })
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the driver is registered; unregistering calls `remove`
        // for every bound device before returning, so nothing uses the structure afterwards.
        unsafe { bindings::pci_unregister_driver(self.driver.get()) }
    }
}

unsafe extern "C" fn probe_callback<T: Driver>(
    pdev: *mut bindings::pci_dev,
    _id: *const bindings::pci_device_id,
) -> kernel::ffi::c_int {
    // SAFETY: the PCI core passes a valid device that stays bound until `remove`.
    let dev = unsafe { Device::from_raw(pdev) };
    match T::probe(dev) {
        Ok(data) => {
            // SAFETY: `pdev` is valid; drvdata is ours between probe and remove.
            unsafe { bindings::pci_set_drvdata(pdev, data.into_foreign().cast_mut()) };
            0
        }
        Err(err) => err.to_errno(),
    }
}

unsafe extern "C" fn remove_callback<T: Driver>(pdev: *mut bindings::pci_dev) {
    // SAFETY: the PCI core passes the device it probed successfully, still valid here.
    let dev = unsafe { Device::from_raw(pdev) };
    // SAFETY: `pdev` is valid; probe stored the foreign pointer of `T::Data` in drvdata.
    let ptr = unsafe { bindings::pci_get_drvdata(pdev) };
    // SAFETY: `ptr` came from `into_foreign` in `probe_callback` and is converted back exactly
    // once, here; no borrow of it outlives this call.
    let data = unsafe { T::Data::from_foreign(ptr) };
    T::remove(dev, data);
}
