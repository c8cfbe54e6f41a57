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

/// A new file `name` on the test file system, `file_len` bytes long, mapped shared and
/// writable over `map_len` bytes: its path, the open file and the mapping's address.
fn mapped_file(
    name: &str,
    file_len: usize,
    map_len: usize,
) -> Result<(String, std::fs::File, u64)> {
    let path = format!("{}/{name}", setup::FILE_MOUNT);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.set_len(file_len as u64)?;
    let addr = mmap(
        0,
        map_len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        file.as_raw_fd(),
        0,
    )?;
    Ok((path, file, addr))
}

/// Device writes to a shared file mapping, writeback, truncate.
pub fn run(dev: &Context, c: &mut Checks) -> Result<()> {
    setup::file_system()?;
    let (path, file, addr) = mapped_file("shared", LEN, LEN)?;
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
    miss_next_to_end_of_file(dev, c)
}

/// A mapping longer than its file: the device's misses on the file's pages must succeed
/// although the pages after the end of the file cannot be faulted in (the CPU gets SIGBUS
/// there), and a miss past the end must fail. The fault-ahead window of a miss reaches past
/// the end of the file: it may take what is there, never make the miss itself fail.
fn miss_next_to_end_of_file(dev: &Context, c: &mut Checks) -> Result<()> {
    let len = 8 * PAGE;
    let (path, file, addr) = mapped_file("short", 2 * PAGE, len)?;
    file.write_all_at(&0x5407_7f11_e000_0001u64.to_le_bytes(), 0)?;
    file.write_all_at(&0x5407_7f11_e000_0002u64.to_le_bytes(), PAGE as u64)?;
    let read = dev.read64(addr)?;
    let written = dev.write64(addr + PAGE as u64 + 8, 0x77)?;
    let beyond = dev.read64(addr + 2 * PAGE as u64)?;
    let mut back = [0u8; 8];
    file.read_exact_at(&mut back, PAGE as u64 + 8)?;
    c.check(
        "file-miss-next-to-end-of-file",
        matches!(read, Ok(0x5407_7f11_e000_0001))
            && written.is_ok()
            && u64::from_le_bytes(back) == 0x77
            && status_of(&beyond) == status::FAULT_UNRESOLVED,
        format!(
            "2-page file in an 8-page mapping: read of page 0 {read:?}, write to page 1 \
             {written:?} (file holds {:#x}), read past the end {beyond:?}",
            u64::from_le_bytes(back)
        ),
    );
    munmap(addr, len)?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(())
}
