//! Legacy platform devices on the port-I/O bus: 16550 serial, exit port, i8042 reset.

pub mod exit_port;
pub mod i8042;
pub mod serial;

pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use serial::{Serial, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
