//! Interrupts to the client: one eventfd per MSI-X vector, handed over by the client with
//! `DEVICE_SET_IRQS`; the device model's [`MsiSink`] signals them.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use rmnic_device::interrupt::MsiSink;
use tracing::warn;

/// The eventfds of the MSI-X vectors.
#[derive(Debug)]
pub struct EventfdSink {
    vectors: Mutex<Vec<Option<File>>>,
}

impl EventfdSink {
    /// `vectors` vectors, none connected.
    pub fn new(vectors: u16) -> Self {
        Self {
            vectors: Mutex::new((0..vectors).map(|_| None).collect()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<File>>> {
        self.vectors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects vectors `start..` to `eventfds`, in order. The caller checked the range.
    ///
    /// Each descriptor is made non-blocking first: a client may hand over a pipe, or an eventfd
    /// it has filled up, and a blocking write would stall the device's worker (and with it
    /// every later unmap) for good. A signal that finds the descriptor full is dropped; a full
    /// eventfd is signalled already.
    pub fn connect(&self, start: usize, eventfds: Vec<File>) {
        let mut slots = self.slots();
        for (slot, fd) in slots.iter_mut().skip(start).zip(eventfds) {
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            // SAFETY: F_GETFL/F_SETFL on a descriptor we own; the results are checked.
            let nonblocking = unsafe {
                let flags = libc::fcntl(raw, libc::F_GETFL);
                flags >= 0 && libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
            };
            if nonblocking {
                *slot = Some(fd);
            } else {
                warn!("MSI-X eventfd cannot be made non-blocking; vector left unconnected");
                *slot = None;
            }
        }
    }

    /// Disconnects vectors `start..start + count`.
    pub fn disconnect(&self, start: usize, count: usize) {
        for slot in self.slots().iter_mut().skip(start).take(count) {
            *slot = None;
        }
    }

    /// Disconnects every vector.
    pub fn disconnect_all(&self) {
        self.slots().iter_mut().for_each(|slot| *slot = None);
    }

    /// Whether `vector` has an eventfd.
    pub fn connected(&self, vector: usize) -> bool {
        self.slots().get(vector).is_some_and(Option::is_some)
    }

    /// Signals `vector`'s eventfd, if it has one.
    pub fn signal(&self, vector: usize) {
        if let Some(Some(fd)) = self.slots().get(vector) {
            let mut fd = fd;
            match fd.write(&1u64.to_ne_bytes()) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => warn!(vector, "MSI-X eventfd write failed: {e}"),
            }
        }
    }
}

impl MsiSink for EventfdSink {
    fn trigger(&self, vector: u16) {
        self.signal(usize::from(vector));
    }
}
