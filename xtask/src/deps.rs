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
    ("libelf-dev", "kernel build (objtool)"),
    ("libssl-dev", "kernel build (certs)"),
    ("cpio", "initramfs packing"),
    ("patch", "applying the project kernel patches"),
    ("xz-utils", "kernel source unpacking"),
    ("busybox-static", "initramfs userland"),
];

/// The emulated host's QEMU: `qemu-system-x86` from Debian's bookworm-backports (10.0), not
/// bookworm's 7.2, whose TCG emulation of SVM crashed and stalled nested guests
/// (docs/platform.md has the soak numbers behind this choice).
const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU_SUITE: &str = "bookworm-backports";
/// Oldest QEMU major version accepted for the emulated host.
pub const QEMU_MIN_MAJOR: u32 = 10;
/// Debian's archive and the suites apt resolves the backports install against (its
/// dependencies come from bookworm itself). A separate source list and list directory, so the
/// machine's own apt configuration is left as it is.
const QEMU_APT_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
";

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

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
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

/// Major version of the `qemu-system-x86_64` on PATH, if there is one.
pub fn qemu_major() -> Option<u32> {
    let out = progress::output(Command::new("qemu-system-x86_64").arg("--version")).ok()?;
    parse_qemu_major(&out)
}

/// `QEMU emulator version 10.0.2 (Debian ...)` -> 10.
fn parse_qemu_major(version: &str) -> Option<u32> {
    let rest = version.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

/// Installs `qemu-system-x86` from bookworm-backports unless a new enough QEMU is there.
fn ensure_qemu() -> Result<()> {
    if qemu_major().is_some_and(|major| major >= QEMU_MIN_MAJOR) {
        return Ok(());
    }
    let start = progress::step(&format!(
        "Installing {QEMU_PACKAGE} from {QEMU_SUITE} (QEMU {QEMU_MIN_MAJOR}.x for the emulated host)"
    ));
    let dir = crate::cache::root().join("apt");
    let lists = dir.join("lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    let sources = dir.join("sources.list");
    std::fs::write(&sources, QEMU_APT_SOURCES)?;
    let options = [
        format!("-o=Dir::Etc::SourceList={}", sources.display()),
        "-o=Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("-o=Dir::State::Lists={}", lists.display()),
        "-o=Dpkg::Use-Pty=0".to_string(),
    ];
    progress::run(apt(&["update", "-qq"]).args(&options))?;
    progress::run(
        apt(&[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "-t",
            QEMU_SUITE,
        ])
        .args(&options)
        .arg(QEMU_PACKAGE),
    )?;
    match qemu_major() {
        Some(major) if major >= QEMU_MIN_MAJOR => {}
        other => bail!(
            "{QEMU_PACKAGE} from {QEMU_SUITE} installed, but qemu-system-x86_64 reports major version {other:?}, not >= {QEMU_MIN_MAJOR}"
        ),
    }
    progress::done(QEMU_PACKAGE, start);
    Ok(())
}

/// Installs missing Debian packages, QEMU and bindgen-cli; a no-op when all are present.
pub fn ensure() -> Result<()> {
    let missing = missing_packages();
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
    ensure_qemu()?;
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

#[cfg(test)]
mod tests {
    use super::parse_qemu_major;

    #[test]
    fn qemu_major_version_is_read_from_its_version_banner() {
        let banner = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                      Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers";
        assert_eq!(parse_qemu_major(banner), Some(10));
        assert_eq!(
            parse_qemu_major("QEMU emulator version 7.2.19 (Debian)"),
            Some(7)
        );
        assert_eq!(parse_qemu_major("not qemu"), None);
    }
}
