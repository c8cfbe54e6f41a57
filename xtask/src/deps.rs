//! Installs what the build needs on a fresh machine: Debian packages and bindgen.
//!
//! Versions come from ../shared/platform.md: Debian's rustc-web (1.96) builds kernel Rust,
//! because the rustup toolchain has no rust-src; Debian's bindgen (0.60) is older than the
//! kernel's minimum (0.65.1), so bindgen-cli comes from crates.io.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

use crate::progress;

/// Debian packages the images need, with what each is for.
const PACKAGES: &[(&str, &str)] = &[
    ("linux-source-6.12", "guest/host kernel source"),
    ("rustc-web", "rustc for kernel Rust (Debian 1.96)"),
    ("rust-web-src", "Rust library source for kernel Rust"),
    ("libclang-dev", "libclang for bindgen"),
    ("flex", "kernel build"),
    ("bison", "kernel build"),
    ("bc", "kernel build"),
    ("lz4", "kernel build (CONFIG_KERNEL_LZ4)"),
    ("libelf-dev", "kernel build (objtool)"),
    ("libssl-dev", "kernel build (certs)"),
    ("cpio", "initramfs packing"),
    (
        "binutils",
        "objcopy: debug sections out of the initramfs programs",
    ),
    ("patch", "applying the project kernel patches"),
    ("xz-utils", "kernel source unpacking"),
    ("busybox-static", "initramfs userland"),
    (
        "qemu-system-x86",
        "emulated host (QEMU 7.2 TCG with nested SVM; docs/platform.md says why this one)",
    ),
];

/// bindgen-cli version known to work with Linux 6.12 here.
pub const BINDGEN_VERSION: &str = "0.73.2";

/// The Debian rustc that kernel Rust must be built with.
pub const KERNEL_RUSTC: &str = "/usr/bin/rustc";

/// Path of the bindgen binary the kernel build uses.
pub fn bindgen_path() -> PathBuf {
    cargo_home().join("bin/bindgen")
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

/// `$HOME`, or `/root` when unset (CI runs as root).
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn missing_packages(packages: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    packages
        .iter()
        .filter(|(name, _)| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", name])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|(name, _)| *name)
        .collect()
}

/// `apt-get <args>`, through sudo unless root, non-interactive.
fn apt(args: &[&str]) -> Command {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Installs those of `packages` that are missing; a no-op when all are present.
pub fn install(packages: &[(&'static str, &'static str)]) -> Result<()> {
    let missing = missing_packages(packages);
    if !missing.is_empty() {
        let start = progress::step(&format!(
            "Installing Debian packages: {}",
            missing.join(" ")
        ));
        progress::run(apt(&["update", "-qq"]).arg("-o=Dpkg::Use-Pty=0"))?;
        let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
        install.args(&missing);
        progress::run(&mut install)?;
        progress::done("packages", start);
    }
    Ok(())
}

/// Installs missing Debian packages and bindgen-cli; a no-op when all are present.
pub fn ensure() -> Result<()> {
    install(PACKAGES)?;
    let bindgen = bindgen_path();
    let have = Command::new(&bindgen)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BINDGEN_VERSION))
        .unwrap_or(false);
    if !have {
        let start = progress::step(&format!(
            "Installing bindgen-cli {BINDGEN_VERSION} (cargo install; about 2 minutes)"
        ));
        progress::run(Command::new("cargo").args([
            "install",
            "--locked",
            "--version",
            BINDGEN_VERSION,
            "bindgen-cli",
        ]))?;
        progress::done("bindgen-cli", start);
    }
    if !std::path::Path::new(KERNEL_RUSTC).exists() {
        bail!("{KERNEL_RUSTC} missing after installing rustc-web");
    }
    Ok(())
}

fn is_root() -> bool {
    progress::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid == "0")
}
