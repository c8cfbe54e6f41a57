//! Builds the rmnic kernel module against the cached kernel tree.
//!
//! The module's sources are copied to the cache first, keeping `guest-driver/`'s layout:
//! the module compiles `../abi/src/abi.rs` (the user-space ABI) as one of its Rust modules,
//! and Kbuild writes its objects next to the sources, which must not be the repository.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cache::{Entry, InputHash};
use crate::kernel::{self, Kernel};
use crate::progress;

/// Copies the module's sources (files and subfolders such as `kernel_api/`) into `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for file in fs::read_dir(from)? {
        let file = file?;
        let kind = file.file_type()?;
        if kind.is_dir() {
            copy_tree(&file.path(), &to.join(file.file_name()))?;
        } else if kind.is_file() {
            fs::copy(file.path(), to.join(file.file_name()))?;
        }
    }
    Ok(())
}

/// Builds `rmnic.ko` unless cached; returns its path.
pub fn build(repo: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let module_src = repo.join("guest-driver/module");
    let abi_src = repo.join("guest-driver/abi/src/abi.rs");
    let mut h = InputHash::default();
    h.bytes("kernel", kernel.hash.as_bytes());
    h.tree(&module_src)?;
    h.file("guest-driver/abi/src/abi.rs", &abi_src)?;
    let hash = h.finish();
    let entry = Entry::new("module", &hash);
    let ko = entry.dir.join("module/rmnic.ko");
    if entry.is_complete() {
        eprintln!("==> Driver module {hash}: cached");
        return Ok(ko);
    }
    let start = progress::step(&format!("Building driver module rmnic.ko ({hash})"));
    entry.reset()?;
    let build_dir = entry.dir.join("module");
    fs::create_dir_all(&build_dir)?;
    copy_tree(&module_src, &build_dir)?;
    let abi_dir = entry.dir.join("abi/src");
    fs::create_dir_all(&abi_dir)?;
    fs::copy(&abi_src, abi_dir.join("abi.rs")).context("Cannot copy the ABI source")?;
    progress::run_logged(
        "module make",
        kernel::make_command(&kernel.tree)
            .arg(format!("M={}", build_dir.display()))
            .arg("modules"),
        &entry.dir.join("build.log"),
    )?;
    if !ko.exists() {
        bail!("Module build finished without {}", ko.display());
    }
    entry.mark_complete()?;
    progress::done("driver module", start);
    Ok(ko)
}
