//! Builds the rmnic kernel: Debian's linux-source-6.12 + the project patches + tinyconfig
//! merged with `images/kernel/rmnic.config`, with Rust, using Debian's rustc.
//!
//! The result is cached under `kernel/<hash>` keyed by the fragment, the patches, the source
//! package version and the toolchain versions; the build tree stays there because the driver
//! module is built against it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::cache::{Entry, InputHash};
use crate::{deps, progress};

/// Bump when the build recipe below changes in a way the inputs do not show.
const RECIPE_VERSION: &str = "kernel-recipe-1";

/// Source tarball installed by `linux-source-6.12`.
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// Directory the tarball unpacks to.
const SOURCE_DIR: &str = "linux-source-6.12";

/// A built kernel tree.
pub struct Kernel {
    /// Build tree (modules are built against it with `make -C`).
    pub tree: PathBuf,
    /// The bootable image.
    pub bzimage: PathBuf,
    /// KVM's modules (`irqbypass.ko`, `kvm.ko`, `kvm-amd.ko`, in load order), for the
    /// emulated host, which loads them once
    /// its TSC calibration is final (`images/initramfs/host-init` says why).
    pub kvm_modules: Vec<PathBuf>,
    /// Cache key of this build.
    pub hash: String,
}

/// Environment every kernel `make` runs with: Debian's rustc for both target and host Rust
/// (proc macros built by one rustc cannot be loaded by another), bindgen from cargo.
pub fn make_command(tree: &Path) -> Command {
    let mut cmd = Command::new("make");
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.current_dir(tree)
        .env("PATH", format!("/usr/bin:/bin:{path}"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .arg(format!("RUSTC={}", deps::KERNEL_RUSTC))
        .arg(format!("HOSTRUSTC={}", deps::KERNEL_RUSTC))
        .arg(format!("BINDGEN={}", deps::bindgen_path().display()));
    cmd
}

fn tool_version(cmd: &str, arg: &str) -> String {
    progress::output(Command::new(cmd).arg(arg)).unwrap_or_else(|_| format!("{cmd}: missing"))
}

/// Hash of everything that shapes the kernel.
fn input_hash(repo: &Path) -> Result<String> {
    let mut h = InputHash::default();
    h.bytes("recipe", RECIPE_VERSION.as_bytes());
    h.file(
        "images/kernel/rmnic.config",
        &repo.join("images/kernel/rmnic.config"),
    )?;
    h.tree(&repo.join("images/kernel/patches"))?;
    h.bytes(
        "linux-source",
        progress::output(Command::new("dpkg-query").args([
            "-W",
            "-f=${Version}",
            "linux-source-6.12",
        ]))?
        .as_bytes(),
    );
    h.bytes(
        "rustc",
        tool_version(deps::KERNEL_RUSTC, "--version").as_bytes(),
    );
    h.bytes(
        "bindgen",
        tool_version(&deps::bindgen_path().to_string_lossy(), "--version").as_bytes(),
    );
    h.bytes("gcc", tool_version("gcc", "--version").as_bytes());
    Ok(h.finish())
}

/// Builds the kernel unless a complete build with the same inputs is cached.
pub fn build(repo: &Path) -> Result<Kernel> {
    let hash = input_hash(repo)?;
    let entry = Entry::new("kernel", &hash);
    let tree = entry.dir.join(SOURCE_DIR);
    let kernel = Kernel {
        bzimage: tree.join("arch/x86/boot/bzImage"),
        kvm_modules: vec![
            tree.join("virt/lib/irqbypass.ko"),
            tree.join("arch/x86/kvm/kvm.ko"),
            tree.join("arch/x86/kvm/kvm-amd.ko"),
        ],
        tree,
        hash: hash.clone(),
    };
    if entry.is_complete() {
        eprintln!("==> Kernel {hash}: cached at {}", kernel.tree.display());
        return Ok(kernel);
    }
    let start = progress::step(&format!(
        "Building kernel {hash} (Linux 6.12 + Rust; about 6 to 8 minutes on 2 cores)"
    ));
    entry.reset()?;
    progress::run(
        Command::new("tar")
            .args(["xf", SOURCE_TARBALL, "-C"])
            .arg(&entry.dir),
    )?;
    let mut patches: Vec<PathBuf> = fs::read_dir(repo.join("images/kernel/patches"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    patches.sort();
    for patch in patches
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
    {
        eprintln!("    applying {}", patch.display());
        progress::run(
            Command::new("patch")
                .args(["-p1", "--quiet", "--forward", "-i"])
                .arg(patch)
                .current_dir(&kernel.tree),
        )?;
    }
    configure(repo, &kernel.tree, &entry.dir)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    progress::run_logged(
        "kernel make",
        // The default target: vmlinux, bzImage, the Rust crates and Module.symvers, all of
        // which out-of-tree modules build against.
        make_command(&kernel.tree).arg(format!("-j{jobs}")),
        &entry.dir.join("build.log"),
    )?;
    for artifact in std::iter::once(&kernel.bzimage).chain(&kernel.kvm_modules) {
        if !artifact.exists() {
            bail!("Kernel build finished without {}", artifact.display());
        }
    }
    entry.mark_complete()?;
    progress::done("kernel", start);
    Ok(kernel)
}

/// `make tinyconfig`, merge the fragment, `olddefconfig`, then check that Kconfig kept every
/// option the fragment asks for (a silently dropped option is how tests end up testing
/// nothing).
fn configure(repo: &Path, tree: &Path, logdir: &Path) -> Result<()> {
    let fragment = repo.join("images/kernel/rmnic.config");
    progress::run_logged(
        "tinyconfig",
        make_command(tree).arg("tinyconfig"),
        &logdir.join("config.log"),
    )?;
    progress::run_logged(
        "merge_config",
        Command::new("scripts/kconfig/merge_config.sh")
            .current_dir(tree)
            .args(["-m", ".config"])
            .arg(&fragment),
        &logdir.join("merge.log"),
    )?;
    progress::run_logged(
        "olddefconfig",
        make_command(tree).arg("olddefconfig"),
        &logdir.join("olddefconfig.log"),
    )?;
    let config = fs::read_to_string(tree.join(".config"))?;
    let wanted = fs::read_to_string(&fragment)?;
    let missing = check_config(&wanted, &config);
    if !missing.is_empty() {
        bail!(
            "Kconfig dropped options the fragment requires (unmet dependencies?):\n  {}",
            missing.join("\n  ")
        );
    }
    Ok(())
}

/// Fragment lines not honoured by `config`: `CONFIG_X=v` must appear verbatim, `CONFIG_X=n`
/// must not appear as set.
pub fn check_config(fragment: &str, config: &str) -> Vec<String> {
    let lines: std::collections::HashSet<&str> = config.lines().collect();
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter(|l| match l.split_once('=') {
            Some((key, "n")) => lines.iter().any(|c| c.starts_with(&format!("{key}="))),
            _ => !lines.contains(l),
        })
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_config;

    #[test]
    fn dropped_and_unwanted_options_are_reported() {
        let fragment = "# c\nCONFIG_A=y\nCONFIG_B=y\nCONFIG_C=n\nCONFIG_D=n\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n";
        assert_eq!(
            check_config(fragment, config),
            vec!["CONFIG_B=y", "CONFIG_C=n"]
        );
    }
}
