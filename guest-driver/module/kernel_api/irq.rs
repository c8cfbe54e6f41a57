// SPDX-License-Identifier: GPL-2.0

//! MSI-X vectors and threaded interrupt handlers for a PCI function (Linux 6.12 has no Rust IRQ
//! abstraction).
//!
//! [`IrqVectors`] allocates MSI-X vectors (`pci_alloc_irq_vectors` with `PCI_IRQ_MSIX`) and frees
//! them when the last user is gone; [`ThreadedIrq`] registers a handler pair on one vector
//! (`request_threaded_irq`) and unregisters it on drop (`free_irq`, which waits for running
//! handlers). Each registration holds a reference to its vectors, so vectors can never be freed
//! under a live handler.
//!
//! # Handler context
//!
//! - [`IrqHandler::handle`] runs in hard-interrupt context with interrupts disabled on its CPU:
//!   no sleeping, no `Mutex`, no `GFP_KERNEL`. 6.12's Rust `SpinLock::lock` is a plain
//!   `spin_lock`, so a `SpinLock` taken here must never be taken elsewhere with interrupts
//!   enabled (lockdep reports it as an IRQ-unsafe lock). Keep it to reading and acknowledging
//!   device status (MMIO, atomics) and return [`IrqReturn::WakeThread`] for the real work.
//! - [`IrqHandler::handle_thread`] runs in a dedicated kernel thread after the hard handler
//!   returned `WakeThread`: it may sleep, take mutexes and allocate. One instance per vector runs
//!   at a time; a new `WakeThread` while it runs makes it run once more.
//!
//! Ordering: the function must be enabled (and bus mastering on, which MSI delivery needs) before
//! [`IrqVectors::alloc_msix`]; every [`ThreadedIrq`] and [`IrqVectors`] must be dropped in
//! `remove`, after the device stopped raising interrupts and before it is disabled.

use kernel::bindings;
use kernel::error::to_result;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

use crate::pci;

/// What a hard interrupt handler reports (`irqreturn_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IrqReturn {
    /// The interrupt was not from this device (`IRQ_NONE`); counted by the spurious detector.
    None,
    /// Fully handled in hard-interrupt context (`IRQ_HANDLED`).
    Handled,
    /// Acknowledged; run [`IrqHandler::handle_thread`] (`IRQ_WAKE_THREAD`).
    WakeThread,
}

impl IrqReturn {
    fn to_raw(self) -> bindings::irqreturn_t {
        match self {
            Self::None => bindings::irqreturn_IRQ_NONE,
            Self::Handled => bindings::irqreturn_IRQ_HANDLED,
            Self::WakeThread => bindings::irqreturn_IRQ_WAKE_THREAD,
        }
    }
}

/// What a threaded handler reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThreadReturn {
    /// Nothing was done (`IRQ_NONE`).
    None,
    /// The work was done (`IRQ_HANDLED`).
    Handled,
}

impl ThreadReturn {
    fn to_raw(self) -> bindings::irqreturn_t {
        match self {
            Self::None => bindings::irqreturn_IRQ_NONE,
            Self::Handled => bindings::irqreturn_IRQ_HANDLED,
        }
    }
}

/// A handler pair for one interrupt vector. See the module documentation for the contexts.
pub(crate) trait IrqHandler: Send + Sync {
    /// Hard-interrupt half: must not sleep.
    fn handle(&self) -> IrqReturn;

    /// Thread half, run after [`IrqHandler::handle`] returned [`IrqReturn::WakeThread`]; may
    /// sleep.
    fn handle_thread(&self) -> ThreadReturn {
        ThreadReturn::None
    }
}

/// The shared part of [`IrqVectors`].
///
/// # Invariants
///
/// `pdev` holds a `pci_dev_get` reference and `count` MSI-X vectors allocated on it, released in
/// `drop`.
struct VectorsInner {
    pdev: *mut bindings::pci_dev,
    count: u32,
}

// SAFETY: `pci_irq_vector` and `pci_free_irq_vectors` may be called from any task in process
// context; the pointer is only used through them.
unsafe impl Send for VectorsInner {}
// SAFETY: `&VectorsInner` only allows `pci_irq_vector`, a lookup safe to run concurrently.
unsafe impl Sync for VectorsInner {}

impl Drop for VectorsInner {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the vectors were allocated on `pdev`; every
        // `ThreadedIrq` holds a reference to `self`, so no handler is registered any more.
        unsafe { bindings::pci_free_irq_vectors(self.pdev) };
        // SAFETY: drops the reference taken in `alloc_msix`, exactly once.
        unsafe { bindings::pci_dev_put(self.pdev) };
    }
}

/// MSI-X vectors of a PCI function; freed when this and every [`ThreadedIrq`] on them are dropped.
#[derive(Clone)]
pub(crate) struct IrqVectors {
    inner: Arc<VectorsInner>,
}

impl IrqVectors {
    /// Allocates between `min` and `max` MSI-X vectors (`pci_alloc_irq_vectors`, MSI-X only, no
    /// fallback to MSI or INTx). `ENOSPC` if fewer than `min` are available.
    pub(crate) fn alloc_msix(dev: &pci::Device, min: u32, max: u32) -> Result<Self> {
        if min == 0 || min > max {
            return Err(EINVAL);
        }
        let pdev = dev.as_raw();
        // SAFETY: `pdev` is a valid, bound device (`pci::Device` invariant).
        let count =
            unsafe { bindings::pci_alloc_irq_vectors(pdev, min, max, bindings::PCI_IRQ_MSIX) };
        to_result(count)?;
        // SAFETY: `pdev` is valid; the reference keeps the structure alive for `VectorsInner`.
        unsafe { bindings::pci_dev_get(pdev) };
        // CAST: `count` is positive (checked by `to_result`) and at most `max`, a `u32`.
        let count = count as u32;
        // INVARIANT: `count` vectors allocated on `pdev`, and a reference to it taken above.
        let inner = VectorsInner { pdev, count };
        // If this allocation fails, `inner` is dropped, which frees the vectors and the reference.
        let inner = Arc::new(inner, GFP_KERNEL)?;
        Ok(Self { inner })
    }

    /// Number of vectors allocated.
    pub(crate) fn count(&self) -> u32 {
        self.inner.count
    }

    /// Linux IRQ number of vector `index` (`pci_irq_vector`); `EINVAL` if out of range.
    pub(crate) fn vector(&self, index: u32) -> Result<u32> {
        if index >= self.inner.count {
            return Err(EINVAL);
        }
        // SAFETY: the vectors are allocated on `pdev` while `self` exists (type invariant).
        let irq = unsafe { bindings::pci_irq_vector(self.inner.pdev, index) };
        to_result(irq)?;
        // CAST: non-negative, checked just above.
        Ok(irq as u32)
    }
}

/// A handler registered on one vector; unregistered (waiting for running handlers) on drop.
///
/// # Invariants
///
/// `request_threaded_irq(irq, .., dev_id = &*data)` succeeded and `free_irq` has not been called;
/// `_vectors` keeps the vector allocated.
pub(crate) struct ThreadedIrq<T: IrqHandler> {
    irq: u32,
    data: KBox<T>,
    _vectors: IrqVectors,
}

impl<T: IrqHandler> ThreadedIrq<T> {
    /// Registers `data` as the handler pair of vector `index` under `name` (shown in
    /// `/proc/interrupts`). Sleeps. The handler may run before this returns.
    pub(crate) fn request(
        vectors: &IrqVectors,
        index: u32,
        name: &'static CStr,
        data: T,
    ) -> Result<Self> {
        let irq = vectors.vector(index)?;
        let data = KBox::new(data, GFP_KERNEL)?;
        let dev_id = core::ptr::from_ref::<T>(&data).cast_mut().cast::<c_void>();
        // SAFETY: `irq` is a vector of `vectors`, kept allocated by the clone stored below;
        // `dev_id` points into a heap allocation that stays put until `drop` frees the IRQ;
        // `name` is `'static` as `/proc/interrupts` keeps the pointer. No flags: MSI-X vectors
        // are edge-triggered and not shared, so neither `IRQF_SHARED` nor `IRQF_ONESHOT` is
        // needed with a primary handler.
        to_result(unsafe {
            bindings::request_threaded_irq(
                irq,
                Some(hard_handler::<T>),
                Some(thread_handler::<T>),
                0,
                name.as_char_ptr(),
                dev_id,
            )
        })?;
        // INVARIANT: registered just above with `dev_id == &*data`.
        Ok(Self {
            irq,
            data,
            _vectors: vectors.clone(),
        })
    }

    /// The Linux IRQ number.
    pub(crate) fn irq(&self) -> u32 {
        self.irq
    }

    /// The handler data.
    pub(crate) fn data(&self) -> &T {
        &self.data
    }

    /// Waits until no hard handler of this IRQ is running (`synchronize_irq`). Sleeps.
    pub(crate) fn synchronize(&self) {
        // SAFETY: `irq` is registered by the type invariant.
        unsafe { bindings::synchronize_irq(self.irq) }
    }
}

impl<T: IrqHandler> Drop for ThreadedIrq<T> {
    fn drop(&mut self) {
        let dev_id = core::ptr::from_ref::<T>(&self.data)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: registered with this `dev_id` by the type invariant, freed exactly once.
        // `free_irq` waits for running hard and thread handlers and stops the thread, so `data`
        // is unused once it returns (and is then freed by the field drop).
        unsafe { bindings::free_irq(self.irq, dev_id) };
    }
}

unsafe extern "C" fn hard_handler<T: IrqHandler>(
    _irq: c_int,
    dev_id: *mut c_void,
) -> bindings::irqreturn_t {
    // SAFETY: `dev_id` is the `&*data` of a registered `ThreadedIrq<T>`, alive until `free_irq`
    // returns, which waits for this handler.
    let data = unsafe { &*dev_id.cast::<T>() };
    data.handle().to_raw()
}

unsafe extern "C" fn thread_handler<T: IrqHandler>(
    _irq: c_int,
    dev_id: *mut c_void,
) -> bindings::irqreturn_t {
    // SAFETY: as in `hard_handler`: `free_irq` stops the thread before `data` is freed.
    let data = unsafe { &*dev_id.cast::<T>() };
    data.handle_thread().to_raw()
}
