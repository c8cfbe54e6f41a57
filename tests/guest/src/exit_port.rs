//! Ends the VM through the exit port at I/O 0xF4: rmnic-vmm exits with the byte written,
//! QEMU's `isa-debug-exit` (the emulated host) with `byte << 1 | 1`.

use anyhow::{bail, Result};

/// I/O port of the exit device.
const EXIT_PORT: u16 = 0xF4;

/// Writes `status` to the exit port. Returns only if the VM did not stop.
pub fn exit(status: u8) -> Result<()> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(EXIT_PORT.into(), 1, 1) } != 0 {
        bail!("ioperm(0xF4) failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: ioperm above granted access to exactly this port; the write has no effect on
    // this process's memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") EXIT_PORT, in("al") status, options(nomem, nostack));
    }
    // The VMM stops the vCPUs asynchronously; give it a moment before declaring failure.
    std::thread::sleep(std::time::Duration::from_secs(5));
    bail!("the exit port did not stop the VM")
}
