//! The boot artifacts `cargo xtask images` produces, found in `$RMNIC_IMAGES` (default
//! `~/.cache/rmnic/images`).

use std::path::{Path, PathBuf};

/// File names inside the images directory (xtask writes them, the harness reads them).
pub const BZIMAGE: &str = "bzImage";
/// The guest's initramfs (driver, guest programs, busybox).
pub const GUEST_INITRAMFS: &str = "guest-initramfs.cpio";
/// The emulated host's initramfs (rmnic-vmm, the guest kernel and initramfs).
pub const HOST_INITRAMFS: &str = "host-initramfs.cpio";
/// The emulated host's initramfs with QEMU (and its libraries and firmware) added, to run
/// the guest under QEMU -enable-kvm: the level-1 baseline of `cargo xtask bench`, which
/// writes it (`images::Level1::Qemu`).
pub const HOST_QEMU_INITRAMFS: &str = "host-initramfs-with-qemu.cpio";
/// The rmnic-vmm binary matching the images.
pub const VMM: &str = "rmnic-vmm";
/// The vfio-user device server matching the images (`qemu` mode).
pub const DEVICE_SERVER: &str = "rmnic-device-server";
/// Link to the QEMU with a vfio-user client that `cargo xtask images` builds (`qemu` mode).
pub const QEMU: &str = "qemu-system-x86_64";
/// Link to that QEMU's firmware directory (`-L`).
pub const QEMU_DATA: &str = "qemu-data";

/// Missing images.
#[derive(Debug, thiserror::Error)]
#[error("{path} is missing: run `cargo xtask images` (or set RMNIC_IMAGES)")]
pub struct MissingImage {
    /// The missing file.
    pub path: PathBuf,
}

/// A directory holding a complete set of images.
#[derive(Clone, Debug)]
pub struct Images {
    dir: PathBuf,
}

impl Images {
    /// Default location: `$RMNIC_IMAGES`, else `$RMNIC_CACHE/images`, else
    /// `~/.cache/rmnic/images`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("RMNIC_IMAGES") {
            return PathBuf::from(dir);
        }
        if let Some(cache) = std::env::var_os("RMNIC_CACHE") {
            return PathBuf::from(cache).join("images");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".cache/rmnic/images")
    }

    /// The images in [`Images::default_dir`], checked to exist.
    pub fn locate() -> Result<Self, MissingImage> {
        Self::at(&Self::default_dir())
    }

    /// The images in `dir`, checked to exist.
    pub fn at(dir: &Path) -> Result<Self, MissingImage> {
        for name in [BZIMAGE, GUEST_INITRAMFS, HOST_INITRAMFS, VMM] {
            let path = dir.join(name);
            if !path.exists() {
                return Err(MissingImage { path });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Checks that the optional artifacts `names` exist too.
    pub fn require(&self, names: &[&str]) -> Result<(), MissingImage> {
        for name in names {
            let path = self.dir.join(name);
            if !path.exists() {
                return Err(MissingImage { path });
            }
        }
        Ok(())
    }

    /// The images directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of one image file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
