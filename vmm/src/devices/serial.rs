//! COM1: a 16550A UART at I/O 0x3F8, IRQ 4, from `vm_superio::Serial`. Output goes to a
//! writer (the VMM's stdout by default); input can be fed from the host with
//! [`Serial::enqueue_input`].

use std::io::{self, Write};
use std::time::Instant;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// First port of COM1.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// COM1 decodes eight ports.
pub const SERIAL_PORT_LEN: u64 = 8;
/// ISA IRQ (and GSI) of COM1.
pub const SERIAL_IRQ: u32 = 4;

/// Raises the UART's interrupt by writing an eventfd registered with KVM as an irqfd.
pub struct IrqTrigger(EventFd);

impl IrqTrigger {
    /// Wraps an eventfd already (or later) registered as the irqfd of `SERIAL_IRQ`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The serial device on the PIO bus.
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
    /// When the device was created, until the guest's first register write: a boot-time
    /// mark (kernel decompressed and console up), logged once at info level.
    created: Option<Instant>,
}

impl Serial {
    /// A UART raising `irq` and writing transmitted bytes to `out`.
    pub fn new(irq: IrqTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(irq, out),
            created: Some(Instant::now()),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are bytes; wider reads are not something a 16550 decodes.
        let value = match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => self.uart.read(off),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            if let Some(created) = self.created.take() {
                tracing::info!(
                    "guest's first serial write {:?} after the UART was created (VM build)",
                    created.elapsed()
                );
            }
            if let Err(e) = self.uart.write(off, *value) {
                tracing::warn!("serial write at offset {off}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Capture, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let trigger = IrqTrigger::new(evt.try_clone().expect("clone eventfd"));
        let cap = Capture::default();
        (Serial::new(trigger, Box::new(cap.clone())), cap, evt)
    }

    #[test]
    fn transmitted_bytes_reach_the_writer_and_raise_thre_irq() {
        let (mut s, cap, evt) = serial();
        s.write(1, &[0x02]); // IER: THR empty interrupt
        let _ = evt.read();
        let mut iir = [0u8];
        s.read(2, &mut iir); // reading IIR acknowledges the pending THRE interrupt
        s.write(0, b"h");
        s.write(0, b"i");
        assert_eq!(cap.0.lock().expect("lock").as_slice(), b"hi");
        assert!(evt.read().is_ok(), "THRE interrupt raised");
    }

    #[test]
    fn input_is_readable_from_rbr() {
        let (mut s, _cap, _evt) = serial();
        assert_eq!(s.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        s.read(0, &mut rbr);
        assert_eq!(rbr, *b"x");
    }

    #[test]
    fn wide_reads_return_all_ones() {
        let (mut s, _cap, _evt) = serial();
        let mut data = [0u8; 4];
        s.read(0, &mut data);
        assert_eq!(data, [0xff; 4]);
    }
}
