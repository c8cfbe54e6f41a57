//! The control API of a running rmnic device: one JSON request per line on a Unix socket, one
//! JSON response per line back (like Cloud Hypervisor's API socket, without HTTP).
//!
//! Both hosts of the device model serve it: rmnic-vmm (`--api-socket`) and rmnic-device-server
//! (`--api-socket`). `rmnic-vmm ctl` is the client; in the emulated host mode a relay in the
//! emulated host carries the same lines over a serial port (docs/vmm.md, "Control API").
//!
//! - [`protocol`]: the requests and responses.
//! - [`fault_switch`]: the injector a host installs so faults can be set and cleared at run time.
//! - [`handler`]: executes requests against the device, its oracle and its fault switch.
//! - [`server`] and [`client`]: the socket ends. [`relay`]: the serial-port relay.
//! - [`trace`]: the event log as Chrome/Perfetto trace JSON and as text.

pub mod client;
pub mod fault_switch;
pub mod handler;
pub mod protocol;
pub mod relay;
pub mod server;
pub mod trace;

pub use client::Client;
pub use fault_switch::FaultSwitch;
pub use handler::DeviceControl;
pub use protocol::{Request, Response};
pub use server::ApiServer;
