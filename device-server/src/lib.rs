//! `rmnic-device-server`: the rmnic device model served over vfio-user (QEMU's
//! `docs/interop/vfio-user.rst`), so QEMU's `vfio-user-pci` client (or any vfio-user client)
//! hosts the same device rmnic-vmm hosts in-process.
//!
//! - [`protocol`]: the wire format and its checked parsing;
//! - [`server`]: the connection loop (framing, validation, error replies);
//! - [`backend`]: the seam a device model implements ([`DeviceBackend`]);
//! - [`dma_map`]: the client's shared memory as the device's guest memory;
//! - [`interrupts`]: MSI-X vectors as the client's eventfds;
//! - [`rmnic_function`]: the rmnic model behind that seam.
//!
//! `docs/vfio-user.md` says how to attach it to a QEMU command line, and why this crate
//! implements the server side itself rather than using the `vfio_user` crate's.

pub mod backend;
pub mod client;
pub mod dma_map;
pub mod fabric_link;
pub mod interrupts;
pub mod protocol;
pub mod rmnic_function;
pub mod server;

pub use backend::DeviceBackend;
pub use rmnic_function::RmnicFunction;
pub use server::{Server, ServerError};
