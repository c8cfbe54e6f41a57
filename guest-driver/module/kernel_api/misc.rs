// SPDX-License-Identifier: GPL-2.0

//! A small safe misc-device abstraction (Linux 6.12 ships none for Rust).
//!
//! A [`Registration`] owns a `struct miscdevice` and an `Arc<T::Shared>`; the
//! `file_operations` live in a [`FileOperations`] static. Every open file holds its own
//! reference to the shared state plus the per-file state [`FileOps::open`] returned, so a file
//! that outlives the registration (the device was unbound while user space kept `/dev/rmnic`
//! open) still points at live memory; the driver then answers `ENODEV`.
//!
//! Why the table is static: `misc_open` points the open file's `f_op` at it, and the VFS reads
//! `f_op` (`->release`, then `->owner` for the module reference) when the file is closed, which
//! can be long after the device was unbound and its `Registration` freed. The table therefore
//! has to live as long as the module, which every open file pins through `owner`. (It used to
//! sit inside the `Registration`: closing a file after an unbind read freed memory.)

use core::marker::{PhantomData, PhantomPinned};
use core::mem::offset_of;
use core::pin::Pin;

use kernel::bindings;
use kernel::error::{to_result, Result};
use kernel::ffi::{c_int, c_long, c_uint, c_ulong};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;
use kernel::types::{ForeignOwnable, Opaque};

use crate::poll::PollTable;
use crate::vma::Vma;

/// `MISC_DYNAMIC_MINOR`: let the misc core pick the minor number.
const MISC_DYNAMIC_MINOR: c_int = 255;

/// File operations of a misc device.
pub(crate) trait FileOps {
    /// State every open file of the device shares.
    type Shared: Send + Sync + 'static;
    /// State of one open file (ioctls on one file may run concurrently).
    type Open: Send + Sync + 'static;

    /// Opens a file for the current task. May sleep.
    fn open(shared: &Arc<Self::Shared>) -> Result<Self::Open>;

    /// Handles `ioctl(fd, cmd, arg)`; `arg` is a user-space pointer for pointer-taking ioctls.
    fn ioctl(shared: &Self::Shared, file: &Self::Open, cmd: u32, arg: usize) -> Result<isize>;

    /// The last reference to the file is gone (close or process exit). May sleep.
    fn release(shared: &Self::Shared, file: Self::Open);

    /// `poll()`: registers the file's wait queues with `table` and returns the ready mask.
    fn poll(_shared: &Self::Shared, _file: &Self::Open, _table: &PollTable) -> u32 {
        0
    }

    /// `mmap()`: fills `vma` or refuses (the default: `ENODEV`, the file cannot be mapped).
    /// Runs with the mmap lock held for writing: must not take a lock that is ever held while
    /// the mmap lock is taken.
    fn mmap(_shared: &Self::Shared, _file: &Self::Open, _vma: &mut Vma<'_>) -> Result {
        Err(ENODEV)
    }
}

/// What `private_data` of an open file owns.
struct OpenFile<T: FileOps> {
    shared: Arc<T::Shared>,
    open: T::Open,
}

/// The `file_operations` of misc devices of type `T`, to be kept in a `static` (see the module
/// documentation for why it must outlive every registration).
///
/// # Invariants
///
/// `table.owner` is the module that contains `T`'s code, and every callback is the trampoline
/// for `T` below.
pub(crate) struct FileOperations<T: FileOps> {
    table: bindings::file_operations,
    _ops: PhantomData<T>,
}

// SAFETY: the table is never written after construction (the misc core and the VFS only read
// it), and it holds only function pointers and the module pointer.
unsafe impl<T: FileOps> Sync for FileOperations<T> {}

impl<T: FileOps + 'static> FileOperations<T> {
    /// The table for `T`, whose open files pin `module` (pass the driver's own `THIS_MODULE`).
    pub(crate) const fn new(module: &'static ThisModule) -> Self {
        // INVARIANT: `module` is the caller's module; the callbacks are `T`'s trampolines.
        Self {
            table: bindings::file_operations {
                owner: module.as_ptr(),
                open: Some(open_callback::<T>),
                release: Some(release_callback::<T>),
                unlocked_ioctl: Some(ioctl_callback::<T>),
                poll: Some(poll_callback::<T>),
                mmap: Some(mmap_callback::<T>),
                // SAFETY: all-zero is a valid `file_operations`: null pointers and `None`
                // callbacks for everything not set above.
                ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
            },
            _ops: PhantomData,
        }
    }
}

/// A registered misc device; deregisters on drop.
///
/// # Invariants
///
/// `misc` is registered with the misc core from `new` until `drop`; its `fops` points at a
/// `'static` [`FileOperations<T>`], and `misc` stays pinned at the same address for that whole
/// time.
#[repr(C)]
pub(crate) struct Registration<T: FileOps> {
    misc: Opaque<bindings::miscdevice>,
    shared: Arc<T::Shared>,
    _pinned: PhantomPinned,
}

// SAFETY: the C structure is only read by the misc core after registration, and `shared` is
// `Send + Sync`.
unsafe impl<T: FileOps> Send for Registration<T> {}
// SAFETY: `&Registration` only hands out `&T::Shared`, which is `Sync`.
unsafe impl<T: FileOps> Sync for Registration<T> {}

impl<T: FileOps + 'static> Registration<T> {
    /// Registers `/dev/<name>` with the file operations `fops`; its open files share `shared`.
    pub(crate) fn new(
        name: &'static CStr,
        shared: Arc<T::Shared>,
        fops: &'static FileOperations<T>,
    ) -> Result<Pin<KBox<Self>>> {
        let reg = KBox::pin(
            Self {
                misc: Opaque::uninit(),
                shared,
                _pinned: PhantomPinned,
            },
            GFP_KERNEL,
        )?;
        let misc = reg.misc.get();
        // SAFETY: the structure is freshly allocated, pinned and not yet shared; all-zero is a
        // valid `miscdevice` (null pointers, empty list head that `misc_register` initialises).
        unsafe {
            core::ptr::write_bytes(misc, 0, 1);
            (*misc).minor = MISC_DYNAMIC_MINOR;
            (*misc).name = name.as_char_ptr();
            (*misc).fops = &fops.table;
            (*misc).mode = 0o666;
        }
        // SAFETY: `misc` is fully initialised and stays pinned until `drop` deregisters it;
        // `fops` is `'static`.
        to_result(unsafe { bindings::misc_register(misc) })?;
        // INVARIANT: registered just above; the box is pinned; `fops` is `'static`.
        Ok(reg)
    }
}

impl<T: FileOps> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered by the type invariant. After `misc_deregister` no new open can
        // reach `misc`; files already open hold their own `Arc`, never touch `misc` again, and
        // their `f_op` is the `'static` table, not part of `self`.
        unsafe { bindings::misc_deregister(self.misc.get()) }
    }
}

unsafe extern "C" fn open_callback<T: FileOps + 'static>(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: `misc_open` stores the `miscdevice` it matched in `private_data` before calling
    // us, and that `miscdevice` is the `misc` field of a live, registered `Registration<T>`
    // (the misc core holds `misc_mtx` across open, so deregistration cannot race).
    let reg = unsafe {
        let misc = (*file).private_data.cast::<u8>();
        &*misc
            .sub(offset_of!(Registration<T>, misc))
            .cast::<Registration<T>>()
    };
    let shared = reg.shared.clone();
    let open = match T::open(&shared) {
        Ok(open) => open,
        Err(err) => return err.to_errno(),
    };
    let state = match KBox::new(OpenFile::<T> { shared, open }, GFP_KERNEL) {
        Ok(state) => state,
        Err(_) => return ENOMEM.to_errno(),
    };
    // SAFETY: `file` is valid during open; the pointer is converted back in `release`.
    unsafe { (*file).private_data = state.into_foreign().cast_mut() };
    0
}

unsafe extern "C" fn release_callback<T: FileOps + 'static>(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: `open_callback` stored a `KBox<OpenFile<T>>` foreign pointer; release runs once
    // per open file after every other file operation finished.
    let state = unsafe { KBox::<OpenFile<T>>::from_foreign((*file).private_data) };
    let OpenFile { shared, open } = KBox::into_inner(state);
    T::release(&shared, open);
    0
}

unsafe extern "C" fn ioctl_callback<T: FileOps + 'static>(
    file: *mut bindings::file,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    // SAFETY: `open_callback` stored a `KBox<OpenFile<T>>` foreign pointer that `release` has
    // not reclaimed yet (release cannot run while a file operation is in progress).
    let state = unsafe { KBox::<OpenFile<T>>::borrow((*file).private_data) };
    match T::ioctl(&state.shared, &state.open, cmd, arg) {
        Ok(ret) => ret,
        Err(err) => err.to_errno() as c_long,
    }
}

unsafe extern "C" fn poll_callback<T: FileOps + 'static>(
    file: *mut bindings::file,
    table: *mut bindings::poll_table_struct,
) -> bindings::__poll_t {
    // SAFETY: `open_callback` stored a `KBox<OpenFile<T>>` foreign pointer that `release` has
    // not reclaimed yet (release cannot run while a file operation is in progress).
    let state = unsafe { KBox::<OpenFile<T>>::borrow((*file).private_data) };
    // SAFETY: these are the arguments of this running poll call.
    let table = unsafe { PollTable::from_raw(file, table) };
    T::poll(&state.shared, &state.open, &table)
}

unsafe extern "C" fn mmap_callback<T: FileOps + 'static>(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> c_int {
    // SAFETY: `open_callback` stored a `KBox<OpenFile<T>>` foreign pointer that `release` has
    // not reclaimed yet (release cannot run while a file operation is in progress).
    let state = unsafe { KBox::<OpenFile<T>>::borrow((*file).private_data) };
    // SAFETY: `vma` is the area of this running mmap call, and `area` does not outlive it.
    let mut area = unsafe { Vma::from_raw(vma) };
    match T::mmap(&state.shared, &state.open, &mut area) {
        Ok(()) => 0,
        Err(err) => err.to_errno(),
    }
}
