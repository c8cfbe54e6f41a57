//! i8042 keyboard controller, reduced to what Linux needs for `reboot=k`: the CPU reset
//! command (0xFE written to port 0x64) stops the VM. Wraps `vm_superio::I8042Device`.
//!
//! Only the command/status port 0x64 is claimed. Port 0x61 (between the data port and
//! this one) belongs to KVM's in-kernel PIT speaker logic, which Linux's PIT-based TSC
//! calibration polls, and the data port 0x60 stays unclaimed (reads all ones).
//!
//! The status register reads 0x01: output buffer full, input buffer empty. Linux's
//! reboot path only waits for "input buffer empty" before writing 0xFE, so it resets at
//! once; Linux's i8042 driver drains the "full" output buffer, gives up after 16 bytes
//! and reports "No controller found" within a millisecond. (With status 0, which
//! `vm_superio` returns, the driver instead waits for a CTR byte that never comes: about
//! 2 s of boot time.)

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::exit::{ExitLatch, ExitReason};

/// Command (write) / status (read) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// One port.
pub const I8042_COMMAND_PORT_LEN: u64 = 1;
/// `vm_superio` numbers registers from the data port: 0x64 is its offset 4.
const COMMAND_OFFSET: u8 = 4;
/// Status register value: OBF (bit 0) set, IBF (bit 1) clear.
const STATUS_NO_CONTROLLER: u8 = 0x01;

/// Turns the controller's reset request into a VM stop.
pub struct ResetTrigger(Arc<ExitLatch>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.trigger(ExitReason::I8042Reset);
        Ok(())
    }
}

/// The i8042 device on the PIO bus.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// A controller whose reset command reports to `latch`.
    pub fn new(latch: Arc<ExitLatch>) -> Self {
        Self(I8042Device::new(ResetTrigger(latch)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == 0 {
            STATUS_NO_CONTROLLER
        } else {
            0xff
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, [value]) = (offset, data) {
            // The trigger is infallible.
            let _ = self.0.write(COMMAND_OFFSET, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_on_port_64_stops_the_vm() {
        let latch = Arc::new(ExitLatch::new());
        let mut dev = I8042::new(latch.clone());
        dev.write(0, &[0x20]);
        assert!(!latch.is_set(), "other commands are ignored");
        let mut status = [0xffu8];
        dev.read(0, &mut status);
        assert_eq!(
            status[0] & 0x02,
            0,
            "input buffer empty: Linux's kb_wait passes"
        );
        assert_eq!(
            status[0] & 0x01,
            1,
            "output buffer full: Linux's i8042 probe gives up"
        );
        dev.write(0, &[0xfe]);
        assert_eq!(latch.wait(None), ExitReason::I8042Reset);
    }

    #[test]
    fn wide_reset_write_is_ignored() {
        let latch = Arc::new(ExitLatch::new());
        I8042::new(latch.clone()).write(0, &[0xfe, 0]);
        assert!(!latch.is_set());
    }
}
