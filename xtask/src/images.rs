//! Assembles the boot artifacts into the images directory the harness reads
//! (`rmnic_tests::images`): kernel, guest initramfs, emulated-host initramfs, rmnic-vmm.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rmnic_tests::images::{
    BZIMAGE, DEVICE_SERVER, GUEST_INITRAMFS, HOST_INITRAMFS, HOST_QEMU_INITRAMFS, QEMU, QEMU_DATA,
    VMM,
};
use rmnic_tests::Images;

use crate::initramfs::Staging;
use crate::{cache, driver, kernel, programs, progress};

/// Builds everything (cached where heavy) and returns the images directory.
pub fn build(repo: &Path) -> Result<PathBuf> {
    let total = std::time::Instant::now();
    let kernel = kernel::build(repo)?;
    let module = driver::build(repo, &kernel)?;
    let guest_program = programs::build_guest(repo)?;
    let (vmm, device_server) = programs::build_vmm(repo)?;
    // QEMU with a vfio-user client, for the `qemu` host mode (cached; about 5 minutes once).
    let qemu = crate::qemu::build()?;

    let out = Images::default_dir();
    fs::create_dir_all(&out).with_context(|| format!("Cannot create {}", out.display()))?;
    let start = progress::step("Packing initramfs images");
    let work = cache::root().join("staging");

    let guest = Staging::new(
        &work.join("guest"),
        &repo.join("images/initramfs/guest-init"),
    )?;
    guest.add(&module, "lib/modules/rmnic.ko", 0o644)?;
    guest.add_program(&guest_program, "bin/rmnic-guest")?;
    guest.add_program(&guest_program.with_file_name("rmnic"), "bin/rmnic")?;
    guest.pack(&out.join(GUEST_INITRAMFS))?;

    fs::copy(&kernel.bzimage, out.join(BZIMAGE)).context("Cannot copy bzImage")?;
    fs::copy(&vmm, out.join(VMM)).context("Cannot copy rmnic-vmm")?;
    fs::copy(&device_server, out.join(DEVICE_SERVER)).context("Cannot copy rmnic-device-server")?;
    link(&qemu.binary, &out.join(QEMU))?;
    link(&qemu.data_dir, &out.join(QEMU_DATA))?;

    let host = Staging::new(&work.join("host"), &repo.join("images/initramfs/host-init"))?;
    host.add_dynamic(&vmm, "bin/rmnic-vmm")?;
    host.add_dynamic(&device_server, "bin/rmnic-device-server")?;
    host.add_program(&guest_program, "bin/rmnic-guest")?;
    host.add(&kernel.bzimage, "guest/bzImage", 0o644)?;
    for module in &kernel.kvm_modules {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .context("KVM module path has no file name")?;
        host.add(module, &format!("lib/modules/{name}"), 0o644)?;
    }
    host.add(&out.join(GUEST_INITRAMFS), "guest/initramfs.cpio", 0o644)?;
    host.pack(&out.join(HOST_INITRAMFS))?;
    progress::done("initramfs images", start);

    eprintln!(
        "==> Images ready in {} ({} total)",
        out.display(),
        progress::fmt_duration(total.elapsed())
    );
    for name in [BZIMAGE, GUEST_INITRAMFS, HOST_INITRAMFS, VMM, DEVICE_SERVER] {
        let path = out.join(name);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "    {:<24} {:>8} KiB  {}",
            name,
            size / 1024,
            path.display()
        );
    }
    eprintln!("    kernel tree: {}", kernel.tree.display());
    Ok(out)
}

/// Points the symlink `at` to `target`, replacing what was there.
fn link(target: &Path, at: &Path) -> Result<()> {
    if at.symlink_metadata().is_ok() {
        fs::remove_file(at).with_context(|| format!("Cannot replace {}", at.display()))?;
    }
    std::os::unix::fs::symlink(target, at)
        .with_context(|| format!("Cannot link {} to {}", at.display(), target.display()))
}

/// Firmware QEMU loads for a `-kernel` boot with `-nodefaults` (SeaBIOS, the option ROM that
/// loads the kernel, the TPR patching ROM of KVM guests).
const QEMU_FIRMWARE: [&str; 4] = [
    "bios-256k.bin",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "kvmvapic.bin",
];

/// Writes [`HOST_QEMU_INITRAMFS`] into the images directory `out`: the emulated host's
/// initramfs with QEMU (debug sections stripped), its libraries and its firmware appended, so
/// that host-init can run the guest under QEMU -enable-kvm (`rmnic_level1=qemu`), the
/// level-1 baseline of `cargo xtask bench`. Only the bench needs it, so only the bench
/// writes it: it makes the emulated host's initramfs about 47 MiB larger (75 MiB in all).
pub fn qemu_host_initramfs(out: &Path) -> Result<PathBuf> {
    let start = progress::step("Packing the emulated host's initramfs with QEMU");
    let (qemu, data) = (out.join(QEMU), out.join(QEMU_DATA));
    let appendix = Staging::appendix(&cache::root().join("staging/host-qemu"))?;
    appendix.add_dynamic(&qemu, "bin/qemu-system-x86_64")?;
    for firmware in QEMU_FIRMWARE {
        appendix.add(
            &data.join(firmware),
            &format!("share/qemu/{firmware}"),
            0o644,
        )?;
    }
    let part = cache::root().join("staging/host-qemu.cpio");
    appendix.pack(&part)?;
    let target = out.join(HOST_QEMU_INITRAMFS);
    let mut whole = fs::read(out.join(HOST_INITRAMFS)).context("Cannot read the host initramfs")?;
    whole.extend(fs::read(&part).context("Cannot read the QEMU part of the initramfs")?);
    fs::write(&target, &whole).with_context(|| format!("Cannot write {}", target.display()))?;
    progress::done(
        &format!("host initramfs with QEMU ({} KiB)", whole.len() / 1024),
        start,
    );
    Ok(target)
}
