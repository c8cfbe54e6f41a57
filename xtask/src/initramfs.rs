//! Packs initramfs archives (newc cpio) for the guest and for the emulated host.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::progress;

/// Debian `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";

/// A staging directory that becomes an archive.
pub struct Staging {
    root: PathBuf,
}

impl Staging {
    /// A fresh staging tree at `root` with the usual mount points and busybox.
    pub fn new(root: &Path, init: &Path) -> Result<Self> {
        if root.exists() {
            fs::remove_dir_all(root)?;
        }
        for dir in ["bin", "dev", "proc", "sys", "tmp", "lib/modules", "mnt"] {
            fs::create_dir_all(root.join(dir))?;
        }
        let staging = Self {
            root: root.to_path_buf(),
        };
        staging.add(Path::new(BUSYBOX), "bin/busybox", 0o755)?;
        staging.add(init, "init", 0o755)?;
        Ok(staging)
    }

    /// A fresh, empty staging tree at `root`: the second half of an archive that is
    /// appended to a complete one (the kernel unpacks concatenated newc archives in order).
    pub fn appendix(root: &Path) -> Result<Self> {
        if root.exists() {
            fs::remove_dir_all(root)?;
        }
        fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Copies `src` to `dest` (relative to the archive root) with `mode`.
    pub fn add(&self, src: &Path, dest: &str, mode: u32) -> Result<()> {
        let target = self.root.join(dest);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(src, &target)
            .with_context(|| format!("Cannot copy {} into the initramfs", src.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Copies one of our programs without its debug sections (`objcopy --strip-debug`).
    ///
    /// The release profile keeps line tables for backtraces, which makes our binaries 4 to 6
    /// times larger (rmnic-vmm 16 MiB instead of 2.7). Every byte of an initramfs is copied
    /// and unpacked by a kernel running under TCG (and, for the guest's, under the emulated
    /// host's shadow paging), so the bytes cost boot time: about 1.5 s per boot here.
    /// Symbols stay, so a panic's backtrace still names functions; the unstripped binaries
    /// stay in `target/` for `addr2line`.
    pub fn add_program(&self, src: &Path, dest: &str) -> Result<()> {
        let target = self.root.join(dest);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(src)
            .arg(&target)
            .status()
            .context("Cannot run objcopy (Debian package binutils)")?;
        if !status.success() {
            bail!("objcopy --strip-debug {} failed: {status}", src.display());
        }
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Copies one of our dynamically linked programs (debug sections stripped, see
    /// [`Self::add_program`]) and every library `ldd` names for it.
    pub fn add_dynamic(&self, program: &Path, dest: &str) -> Result<()> {
        self.add_program(program, dest)?;
        let listing = progress::output(Command::new("ldd").arg(program))?;
        for lib in shared_libraries(&listing) {
            let rel = lib.trim_start_matches('/');
            self.add(Path::new(&lib), rel, 0o755)?;
        }
        Ok(())
    }

    /// Writes the archive to `out`.
    pub fn pack(&self, out: &Path) -> Result<()> {
        let tmp = out.with_extension("cpio.tmp");
        let script = format!(
            "find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible > '{}'",
            tmp.display()
        );
        let status = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(&self.root)
            .status()
            .context("Cannot run cpio")?;
        if !status.success() {
            bail!("Packing {} failed: {status}", out.display());
        }
        fs::rename(&tmp, out)?;
        Ok(())
    }
}

/// Absolute library paths in `ldd` output (`name => /path (addr)` and `/path (addr)` lines).
pub fn shared_libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::shared_libraries;

    #[test]
    fn ldd_output_yields_loader_and_libraries_but_not_vdso() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            shared_libraries(ldd),
            vec![
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
