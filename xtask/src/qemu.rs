//! Builds a newer QEMU than Debian bookworm packages: the `qemu` host mode's QEMU, for its
//! `vfio-user-pci` client (QEMU 10.1 and later; part of the default x86_64 build on Linux, and
//! every `cargo xtask test` proves it is there by booting through it). `cargo xtask images`
//! builds it (cached); `cargo xtask qemu` builds it alone and prints how to use it as the
//! emulated host for comparisons (`cargo xtask soak --qemu ...`). Not the default emulated
//! host: over the soak runs in docs/platform.md, 10.2.2 failed about as often as bookworm's
//! 7.2 (the same host/guest state mix-up in its SVM emulation) and booted the nested guest 1
//! to 1.5 s slower, so the packaged 7.2 stays there.
//!
//! The source is Debian's `qemu` source package from sid (fetched with a separate apt
//! configuration, the machine's sources stay as they are), built for x86_64 system emulation
//! only, without docs, UIs or tools. Cached under `qemu/<hash>`, keyed by the package version,
//! the configure flags and the toolchain.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache::{Entry, InputHash};
use crate::progress;

/// Bump when the recipe below changes in a way the inputs do not show.
const RECIPE_VERSION: &str = "qemu-recipe-1";
/// Debian source package version built.
pub const QEMU_SOURCE_VERSION: &str = "1:10.2.2+ds-1";
/// Upstream version (directory the orig tarball unpacks to is `qemu-<this>`).
const QEMU_UPSTREAM: &str = "10.2.2";
/// meson QEMU 10.2 asks for (bookworm's 1.0 is too old), from PyPI into a venv.
const MESON_VERSION: &str = "1.9.0";
/// Python package QEMU's configure insists on installing into its venv.
const PYCOTAP_VERSION: &str = "1.3.1";

/// Debian packages the build needs beyond the kernel's (flex, bison, ...).
pub const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("ninja-build", "QEMU build"),
    ("pkg-config", "QEMU build"),
    ("python3-venv", "QEMU's configure (meson from PyPI)"),
    ("libglib2.0-dev", "QEMU build"),
    ("libpixman-1-dev", "QEMU build"),
    ("zlib1g-dev", "QEMU build"),
    ("libfdt-dev", "QEMU build (device trees)"),
    ("device-tree-compiler", "QEMU build (pc-bios device trees)"),
    ("seabios", "firmware of the emulated host"),
    (
        "qemu-system-data",
        "option ROMs of the emulated host (linuxboot_dma.bin, kvmvapic.bin)",
    ),
];

/// Everything else off: the emulated host has a serial console and nothing more.
const CONFIGURE_FLAGS: &[&str] = &[
    "--target-list=x86_64-softmmu",
    "--disable-docs",
    "--disable-werror",
    "--disable-user",
    "--disable-gtk",
    "--disable-sdl",
    "--disable-vnc",
    "--disable-spice",
    "--disable-opengl",
    "--disable-xen",
    "--disable-curses",
    "--disable-brlapi",
    "--disable-libusb",
    "--disable-usb-redir",
    "--disable-capstone",
    "--disable-guest-agent",
    "--disable-tools",
    "--disable-install-blobs",
];

/// sid's source list: only deb-src, only for this package.
const SID_SOURCES: &str =
    "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main\n";

/// Firmware and option ROMs the q35 emulated host loads, linked into the build's data dir from
/// Debian's seabios and qemu-system-data (the DFSG source package carries no binary blobs).
const FIRMWARE: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/seabios/bios.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/multiboot_dma.bin",
];

/// A built QEMU.
pub struct Qemu {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// Its data directory (`-L`): keymaps plus the firmware links above.
    pub data_dir: PathBuf,
}

fn input_hash() -> String {
    let mut h = InputHash::default();
    h.bytes("recipe", RECIPE_VERSION.as_bytes());
    h.bytes("source", QEMU_SOURCE_VERSION.as_bytes());
    h.bytes("configure", CONFIGURE_FLAGS.join(" ").as_bytes());
    h.bytes("meson", MESON_VERSION.as_bytes());
    let cc = progress::output(Command::new("gcc").arg("--version")).unwrap_or_default();
    h.bytes("cc", cc.lines().next().unwrap_or("").as_bytes());
    h.finish()
}

/// The cached build, building it first if needed (about 5 minutes on 2 cores).
pub fn build() -> Result<Qemu> {
    crate::deps::install(BUILD_PACKAGES)?;
    let hash = input_hash();
    let entry = Entry::new("qemu", &hash);
    let install = entry.dir.join("install");
    let qemu = Qemu {
        binary: install.join("bin/qemu-system-x86_64"),
        data_dir: install.join("share/qemu"),
    };
    if entry.is_complete() {
        eprintln!(
            "==> QEMU {QEMU_UPSTREAM} {hash}: cached at {}",
            install.display()
        );
        return Ok(qemu);
    }
    let start = progress::step(&format!(
        "Building QEMU {QEMU_UPSTREAM} from Debian's source package {QEMU_SOURCE_VERSION} \
         ({hash}; about 5 minutes on 2 cores)"
    ));
    entry.reset()?;
    let src = fetch_source(&entry.dir)?;
    // The DFSG tarball has no firmware blobs; unpacking the edk2 images would fail on them.
    let meson_build = src.join("meson.build");
    let text = fs::read_to_string(&meson_build)?;
    let patched = text.replace(
        "    unpack_edk2_blobs = bzip2.found()",
        "    unpack_edk2_blobs = false",
    );
    if patched == text {
        bail!(
            "{}: the edk2 unpacking line to turn off is not there",
            meson_build.display()
        );
    }
    fs::write(&meson_build, patched)?;

    let venv = entry.dir.join("venv");
    progress::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    progress::run_logged(
        "pip install meson",
        Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            &format!("meson=={MESON_VERSION}"),
            &format!("pycotap=={PYCOTAP_VERSION}"),
        ]),
        &entry.dir.join("pip.log"),
    )?;
    let build = src.join("build");
    fs::create_dir_all(&build)?;
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    progress::run_logged(
        "QEMU configure",
        Command::new("../configure")
            .current_dir(&build)
            .env("PATH", &path)
            .arg(format!("--prefix={}", install.display()))
            .arg(format!("--python={}", venv.join("bin/python3").display()))
            .args(CONFIGURE_FLAGS),
        &entry.dir.join("configure.log"),
    )?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    progress::run_logged(
        "QEMU ninja",
        Command::new("ninja")
            .current_dir(&build)
            .env("PATH", &path)
            .arg(format!("-j{jobs}"))
            .arg("install"),
        &entry.dir.join("build.log"),
    )?;
    for firmware in FIRMWARE {
        let from = Path::new(firmware);
        let name = from.file_name().context("firmware path without a name")?;
        if !from.exists() {
            bail!("{firmware} is missing (packages seabios and qemu-system-data)");
        }
        let to = qemu.data_dir.join(name);
        let _ = fs::remove_file(&to);
        std::os::unix::fs::symlink(from, &to)
            .with_context(|| format!("Cannot link {}", to.display()))?;
    }
    let version = progress::output(Command::new(&qemu.binary).arg("--version"))?;
    if !version.contains(QEMU_UPSTREAM) {
        bail!("built QEMU reports {version:?}, not {QEMU_UPSTREAM}");
    }
    // The build tree is 1 GiB and only needed to build: keep the install.
    let _ = fs::remove_dir_all(&src);
    entry.mark_complete()?;
    progress::done("QEMU", start);
    Ok(qemu)
}

/// Downloads (apt verifies it against Debian's signed release files) and unpacks the source
/// package; returns the source directory.
fn fetch_source(dir: &Path) -> Result<PathBuf> {
    let apt = dir.join("apt");
    let lists = apt.join("lists");
    fs::create_dir_all(lists.join("partial"))?;
    let sources = apt.join("sources.list");
    fs::write(&sources, SID_SOURCES)?;
    let options = [
        format!("-o=Dir::Etc::SourceList={}", sources.display()),
        "-o=Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("-o=Dir::State::Lists={}", lists.display()),
        // apt's sandbox user cannot write into a root-owned cache directory.
        "-o=APT::Sandbox::User=root".to_string(),
    ];
    progress::run(
        Command::new("apt-get")
            .args(&options)
            .args(["update", "-qq"]),
    )?;
    progress::run(
        Command::new("apt-get")
            .current_dir(dir)
            .args(&options)
            .args(["source", "--download-only", "-qq"])
            .arg(format!("qemu={QEMU_SOURCE_VERSION}")),
    )
    .with_context(|| {
        format!("Cannot download Debian's qemu source package {QEMU_SOURCE_VERSION} from sid")
    })?;
    let upstream = QEMU_SOURCE_VERSION
        .split_once(':')
        .map_or(QEMU_SOURCE_VERSION, |(_, v)| v);
    let orig = upstream.rsplit_once('-').map_or(upstream, |(v, _)| v);
    let tarball = dir.join(format!("qemu_{orig}.orig.tar.xz"));
    progress::run(
        Command::new("tar")
            .arg("xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir),
    )?;
    let _ = fs::remove_file(&tarball);
    let src = dir.join(format!("qemu-{QEMU_UPSTREAM}"));
    if !src.join("configure").exists() {
        bail!("{} did not unpack to {}", tarball.display(), src.display());
    }
    Ok(src)
}
