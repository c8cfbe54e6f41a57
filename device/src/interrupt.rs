//! The seam through which the device raises message-signalled interrupts.
//!
//! The device owns the MSI-X table and the masking/pending logic (they are guest-visible
//! device state); the VMM owns delivery (KVM GSI routing and irqfds). The device tells the
//! VMM when a vector's message changes so the VMM can route it ahead of time, and triggers
//! a vector only when the PCI rules say the message may be sent.

/// An MSI message as programmed by the guest into an MSI-X table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (the guest's LAPIC address window on x86).
    pub address: u64,
    /// Message data (vector and delivery mode on x86).
    pub data: u32,
}

/// Delivers the device's MSI-X vectors. Implemented by the VMM.
///
/// Both methods are called with the device's MSI-X lock held, either from a vCPU thread
/// inside an MMIO access (with the VMM's device lock held too) or from one of the device's
/// worker threads (without it): an implementation must not call back into the device, and
/// should not block for long (an irqfd write or a routing-table update is fine).
pub trait MsiSink: Send + Sync {
    /// The message for `vector` changed, or the vector became deliverable (`Some`) or
    /// undeliverable because it or the whole function is masked or MSI-X is off (`None`).
    fn configure(&self, _vector: u16, _message: Option<MsiMessage>) {}

    /// Sends `vector`'s message now. Called only for an enabled, unmasked vector whose last
    /// `configure` call carried `Some`.
    fn trigger(&self, vector: u16);
}

/// A sink that records every call, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use super::{MsiMessage, MsiSink};

    /// One call made to a [`RecordingSink`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum SinkEvent {
        /// `configure(vector, message)`.
        Configure(u16, Option<MsiMessage>),
        /// `trigger(vector)`.
        Trigger(u16),
    }

    /// Records the calls it receives, in order.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingSink {
        events: Mutex<Vec<SinkEvent>>,
    }

    impl RecordingSink {
        /// The calls so far.
        pub(crate) fn events(&self) -> Vec<SinkEvent> {
            self.lock().clone()
        }

        /// The calls so far, forgetting them.
        pub(crate) fn take(&self) -> Vec<SinkEvent> {
            std::mem::take(&mut *self.lock())
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SinkEvent>> {
            // A test that panicked while holding the lock has failed already.
            self.events
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
        }
    }

    impl MsiSink for RecordingSink {
        fn configure(&self, vector: u16, message: Option<MsiMessage>) {
            self.lock().push(SinkEvent::Configure(vector, message));
        }

        fn trigger(&self, vector: u16) {
            self.lock().push(SinkEvent::Trigger(vector));
        }
    }
}
