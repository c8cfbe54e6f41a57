//! `file`: a MAP_SHARED file on ext2 on a RAM disk (a real block file system): the device's
//! writes reach the file, writeback write-protects the pages (through the notifier) and a later
//! device write dirties them again, truncate takes the pages away.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use anyhow::Result;
use rmnic_abi::{status, Context};

use super::{mmap, munmap, setup, status_of};
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;
const LEN: usize = 4 * PAGE;

fn file_holds(file: &std::fs::File, value: u64) -> Result<bool> {
    let mut bytes = vec![0u8; LEN];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes.chunks(8).all(|w| w == value.to_le_bytes()))
}

/// Device writes to a shared file mapping, writeback, truncate.
pub fn run(dev: &Context, c: &mut Checks) -> Result<()> {
    setup::file_system()?;
    let path = format!("{}/shared", setup::FILE_MOUNT);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.set_len(LEN as u64)?;
    let addr = mmap(
        0,
        LEN,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        file.as_raw_fd(),
        0,
    )?;
    // A second descriptor reads what the file system holds, not what the mapping shows.
    let reader = std::fs::File::open(&path)?;

    dev.fill(addr, LEN as u64, 0xf11e_0001)??;
    file.sync_all()?;
    let reached = file_holds(&reader, 0xf11e_0001)?;
    c.check(
        "file-shared-device-write-reaches-file",
        reached,
        "device fill, fsync, read(2) through another descriptor",
    );

    // Writeback cleaned and write-protected the pages (an invalidation removed the device's
    // writable entries). The device writes again: it must fault, dirty the page again, and
    // the next fsync must carry the new data.
    let before = dev.stats()?;
    dev.fill(addr, LEN as u64, 0xf11e_0002)??;
    let after = dev.stats()?;
    file.sync_all()?;
    let redirtied = file_holds(&reader, 0xf11e_0002)?;
    c.check(
        "file-writeback-redirty",
        redirtied && after.faults > before.faults,
        format!(
            "{} new device faults after writeback, file holds the new data: {redirtied}",
            after.faults - before.faults
        ),
    );

    // Truncate: the pages leave the mapping (the CPU would get SIGBUS); the device must fail
    // cleanly. Extending the file again gives fresh zero pages.
    file.set_len(0)?;
    let gone = dev.read64(addr + PAGE as u64)?;
    file.set_len(LEN as u64)?;
    let fresh = dev.read64(addr + PAGE as u64)?;
    c.check(
        "file-truncate",
        status_of(&gone) == status::FAULT_UNRESOLVED && matches!(fresh, Ok(0)),
        format!("after truncate {gone:?}, after extending {fresh:?}"),
    );
    munmap(addr, LEN)?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(())
}
