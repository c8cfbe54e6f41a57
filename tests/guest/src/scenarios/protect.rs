//! `protect`: permissions taken away completely and given back, and granted where there were
//! none (an upgrade must not leave the device stuck on a read-only entry).

use anyhow::Result;
use rmnic_abi::{status, Context};
use rmnic_guest::Mapping;

use super::status_of;
use crate::Checks;

const PAGE: usize = rmnic_guest::PAGE;

/// PROT_NONE and back; read-only then writable.
pub fn run(dev: &Context, c: &mut Checks) -> Result<()> {
    let buf = Mapping::new(2 * PAGE, false)?;
    dev.write64(buf.addr(), 0x10)??;
    buf.protect(libc::PROT_NONE)?;
    let none_read = dev.read64(buf.addr())?;
    let none_write = dev.write64(buf.addr(), 0x11)?;
    buf.protect(libc::PROT_READ | libc::PROT_WRITE)?;
    let back = dev.write64(buf.addr(), 0x12)?;
    c.check(
        "mprotect-none-and-back",
        status_of(&none_read) != status::OK
            && status_of(&none_write) != status::OK
            && back.is_ok()
            && buf.read_u64(0) == 0x12,
        format!(
            "PROT_NONE read status {}, write status {}; restored write {back:?}, CPU reads {:#x}",
            status_of(&none_read),
            status_of(&none_write),
            buf.read_u64(0)
        ),
    );

    // A read-only mapping: the device reads (a read-only entry is cached), the process makes
    // it writable, the device writes: the driver must take the permission miss and upgrade.
    let ro = Mapping::new(PAGE, false)?;
    ro.write_u64(0, 0x20);
    ro.protect(libc::PROT_READ)?;
    let read = dev.read64(ro.addr())?;
    let denied = dev.write64(ro.addr(), 0x21)?;
    ro.protect(libc::PROT_READ | libc::PROT_WRITE)?;
    let upgraded = dev.write64(ro.addr(), 0x22)?;
    c.check(
        "permission-upgrade",
        matches!(read, Ok(0x20))
            && status_of(&denied) == status::PERMISSION
            && upgraded.is_ok()
            && ro.read_u64(0) == 0x22,
        format!(
            "read {read:?}, write while read-only status {}, after upgrade {upgraded:?}, CPU reads {:#x}",
            status_of(&denied),
            ro.read_u64(0)
        ),
    );
    Ok(())
}
