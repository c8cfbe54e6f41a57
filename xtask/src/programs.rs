//! Builds the project's own binaries that go into the images: `rmnic-vmm` (for the emulated
//! host) and the static guest programs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::progress;

/// Target triple of everything we build (x86-64 guests only).
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Release build of `rmnic-vmm` and `rmnic-device-server`; returns both binaries.
pub fn build_vmm(repo: &Path) -> Result<(PathBuf, PathBuf)> {
    let start = progress::step("Building rmnic-vmm and rmnic-device-server (release)");
    progress::run(Command::new(cargo()).current_dir(repo).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "rmnic-vmm",
        "-p",
        "rmnic-device-server",
    ]))?;
    progress::done("rmnic-vmm and rmnic-device-server", start);
    Ok((
        repo.join("target/release/rmnic-vmm"),
        repo.join("target/release/rmnic-device-server"),
    ))
}

/// Static release build of the guest programs (`rmnic-guest`, and `rmnic` beside it): the
/// guest initramfs has no C library. A separate target directory keeps the static flags from invalidating the host
/// build.
pub fn build_guest(repo: &Path) -> Result<PathBuf> {
    let start = progress::step("Building guest programs (static)");
    let target_dir = repo.join("target/guest");
    progress::run(
        Command::new(cargo())
            .current_dir(repo)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "rmnic-guest",
                "--target",
                TARGET,
            ])
            .arg("--target-dir")
            .arg(&target_dir),
    )?;
    progress::done("guest programs", start);
    Ok(target_dir.join(TARGET).join("release/rmnic-guest"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}
