//! Exit port: a write of status N to I/O port 0xF4 stops the VM with process status N.
//!
//! Same port as QEMU's `isa-debug-exit`, but the status is passed through unchanged
//! rather than as `(N << 1) | 1`.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitLatch, ExitReason, GUEST_STATUS_MAX};

/// I/O port of the exit device.
pub const EXIT_PORT: u16 = 0xf4;
/// Ports claimed: one, 0xF4 (wider writes at 0xF4 are accepted and use their low byte).
pub const EXIT_PORT_LEN: u64 = 1;

/// The exit-port device.
pub struct ExitPort {
    latch: Arc<ExitLatch>,
}

impl ExitPort {
    /// An exit port that reports to `latch`.
    pub fn new(latch: Arc<ExitLatch>) -> Self {
        Self { latch }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // The bus only hands over accesses inside the claimed range, so `data` is one
        // byte; take the low byte anyway should the range ever grow.
        let Some(&value) = data.first() else { return };
        let reason = if value <= GUEST_STATUS_MAX {
            ExitReason::Guest(value)
        } else {
            ExitReason::GuestStatusOutOfRange(value)
        };
        self.latch.trigger(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stops_with_guest_status() {
        let latch = Arc::new(ExitLatch::new());
        ExitPort::new(latch.clone()).write(0, &[5]);
        assert_eq!(latch.wait(None), ExitReason::Guest(5));
    }

    #[test]
    fn status_above_7f_is_reported_as_out_of_range() {
        let latch = Arc::new(ExitLatch::new());
        ExitPort::new(latch.clone()).write(0, &[0x90]);
        assert_eq!(latch.wait(None), ExitReason::GuestStatusOutOfRange(0x90));
    }

    #[test]
    fn read_returns_all_ones_and_does_not_stop() {
        let latch = Arc::new(ExitLatch::new());
        let mut data = [0u8; 1];
        ExitPort::new(latch.clone()).read(0, &mut data);
        assert_eq!(data, [0xff]);
        assert!(!latch.is_set());
    }
}
