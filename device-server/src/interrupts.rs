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
    pub fn connect(&self, start: usize, eventfds: Vec<File>) {
        let mut slots = self.slots();
        for (slot, fd) in slots.iter_mut().skip(start).zip(eventfds) {
            *slot = Some(fd);
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
            if let Err(e) = fd.write_all(&1u64.to_ne_bytes()) {
                warn!(vector, "MSI-X eventfd write failed: {e}");
            }
        }
    }
}

impl MsiSink for EventfdSink {
    fn trigger(&self, vector: u16) {
        self.signal(usize::from(vector));
    }
}
