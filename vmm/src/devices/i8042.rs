//! i8042 keyboard controller, reduced to what Linux needs for `reboot=k`: the CPU reset
//! command (0xFE written to port 0x64) stops the VM. Wraps `vm_superio::I8042Device`.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::exit::{ExitLatch, ExitReason};

/// First port of the controller (data port 0x60; command/status is 0x64).
pub const I8042_PORT_BASE: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

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
        // Status 0 tells Linux the input buffer is empty, so its reset loop writes at once.
        let value = u8::try_from(offset).map_or(0xff, |o| self.0.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            // Infallible trigger.
            let _ = self.0.write(offset, *value);
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
        dev.write(4, &[0x20]);
        assert!(!latch.is_set(), "other commands are ignored");
        dev.write(4, &[0xfe]);
        assert_eq!(latch.wait(None), ExitReason::I8042Reset);
    }

    #[test]
    fn reset_value_on_data_port_is_ignored() {
        let latch = Arc::new(ExitLatch::new());
        I8042::new(latch.clone()).write(0, &[0xfe]);
        assert!(!latch.is_set());
    }
}
