//! Why the VM stopped, the process exit status for each reason, and the latch that lets
//! the first reason (from any vCPU or device) stop the whole machine.
//!
//! Status table (also in docs/vmm.md): 0..=0x7f are chosen by the guest through the exit
//! port; 0x80 and above are VMM-side reasons, one value each. Status 2 is also what the
//! binary returns for bad arguments, before any guest runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Largest status a guest can pass through the exit port unchanged.
pub const GUEST_STATUS_MAX: u8 = 0x7f;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote `status` (0..=0x7f) to the exit port.
    Guest(u8),
    /// The guest wrote a value above 0x7f to the exit port.
    GuestStatusOutOfRange(u8),
    /// The guest asked for a reset through the i8042 controller (0xFE to port 0x64).
    I8042Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU that shut down.
        vcpu: u32,
    },
    /// KVM reported an internal error (KVM_EXIT_INTERNAL_ERROR).
    KvmInternalError {
        /// The vCPU that stopped.
        vcpu: u32,
        /// KVM's suberror code.
        suberror: u32,
    },
    /// KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY).
    FailEntry {
        /// The vCPU that failed.
        vcpu: u32,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// The `--timeout` expired.
    Timeout(Duration),
    /// Something on the VMM side failed while the guest ran (KVM_RUN error, an exit we
    /// cannot handle, a vCPU thread that panicked).
    VmmError(String),
    /// The guest ended normally, but the coherence oracle saw device accesses through
    /// translations the CPU's page tables no longer had (`--violations fail`, the default).
    CoherenceViolations {
        /// Violations counted.
        count: u64,
        /// The status the guest chose.
        guest_status: u8,
    },
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn status(&self) -> u8 {
        match self {
            ExitReason::Guest(s) => *s & GUEST_STATUS_MAX,
            ExitReason::GuestStatusOutOfRange(_) => 0x80,
            ExitReason::I8042Reset => 0x81,
            ExitReason::TripleFault { .. } => 0x82,
            ExitReason::KvmInternalError { .. } => 0x83,
            ExitReason::FailEntry { .. } => 0x84,
            ExitReason::Timeout(_) => 0x85,
            ExitReason::VmmError(_) => 0x86,
            ExitReason::CoherenceViolations { .. } => 0x87,
        }
    }

    /// A one-line message for stderr, or `None` for a guest-chosen status.
    pub fn message(&self) -> Option<String> {
        match self {
            ExitReason::Guest(_) => None,
            ExitReason::GuestStatusOutOfRange(v) => Some(format!(
                "guest wrote {v:#x} to the exit port; statuses above {GUEST_STATUS_MAX:#x} are reserved"
            )),
            ExitReason::I8042Reset => Some("guest reset (i8042 reset command)".into()),
            ExitReason::TripleFault { vcpu } => {
                Some(format!("guest reset (triple fault on vCPU {vcpu})"))
            }
            ExitReason::KvmInternalError { vcpu, suberror } => Some(format!(
                "KVM internal error on vCPU {vcpu} (suberror {suberror})"
            )),
            ExitReason::FailEntry { vcpu, reason } => Some(format!(
                "KVM failed to enter vCPU {vcpu} (hardware reason {reason:#x})"
            )),
            ExitReason::Timeout(d) => Some(format!("timeout after {} s", d.as_secs())),
            ExitReason::VmmError(e) => Some(format!("VMM error: {e}")),
            ExitReason::CoherenceViolations { count, guest_status } => Some(format!(
                "the coherence oracle found {count} violations (the guest's own status was \
                 {guest_status}; `--violations report` keeps it)"
            )),
        }
    }
}

/// The first stop request wins; later ones are logged and dropped. Readers on the vCPU
/// hot path only load an atomic flag.
#[derive(Default)]
pub struct ExitLatch {
    set: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
}

impl ExitLatch {
    /// A latch with no reason yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reason` if none is recorded yet; returns whether this call won.
    pub fn trigger(&self, reason: ExitReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            tracing::debug!(?reason, "exit already requested; ignoring");
            return false;
        }
        tracing::debug!(?reason, "exit requested");
        *slot = Some(reason);
        // Release pairs with the Acquire in `is_set`: a vCPU that sees the flag also sees
        // the recorded reason.
        self.set.store(true, Ordering::Release);
        self.cond.notify_all();
        true
    }

    /// Whether a stop was requested.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Waits for a reason until `timeout` (forever with `None`); on expiry records
    /// [`ExitReason::Timeout`] itself, so the result is always the reason that won.
    pub fn wait(&self, timeout: Option<Duration>) -> ExitReason {
        self.wait_inner(timeout, None)
    }

    /// [`ExitLatch::wait`], calling `tick` (without the latch's lock held) each time `every`
    /// passes with no reason recorded: the VMM's main thread serves state-dump requests this
    /// way while the guest runs.
    pub fn wait_ticking(
        &self,
        timeout: Option<Duration>,
        every: Duration,
        mut tick: impl FnMut(),
    ) -> ExitReason {
        self.wait_inner(timeout, Some((every, &mut tick)))
    }

    fn wait_inner(
        &self,
        timeout: Option<Duration>,
        mut tick: Option<(Duration, &mut dyn FnMut())>,
    ) -> ExitReason {
        let deadline = timeout.map(|t| (t, Instant::now() + t));
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = slot.as_ref() {
                return reason.clone();
            }
            let mut slice = tick.as_ref().map(|(every, _)| *every);
            if let Some((total, at)) = deadline {
                let now = Instant::now();
                if now >= at {
                    drop(slot);
                    self.trigger(ExitReason::Timeout(total));
                    slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                slice = Some(slice.map_or(at - now, |s| s.min(at - now)));
            }
            slot = match slice {
                None => self.cond.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(slice) => {
                    let (slot, waited) = self
                        .cond
                        .wait_timeout(slot, slice)
                        .unwrap_or_else(|e| e.into_inner());
                    match tick.as_mut() {
                        Some((_, tick)) if waited.timed_out() && slot.is_none() => {
                            drop(slot);
                            tick();
                            self.reason.lock().unwrap_or_else(|e| e.into_inner())
                        }
                        _ => slot,
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn vmm_reasons_have_distinct_statuses_above_guest_range() {
        let reasons = [
            ExitReason::GuestStatusOutOfRange(0xff),
            ExitReason::I8042Reset,
            ExitReason::TripleFault { vcpu: 0 },
            ExitReason::KvmInternalError {
                vcpu: 0,
                suberror: 1,
            },
            ExitReason::FailEntry { vcpu: 0, reason: 0 },
            ExitReason::Timeout(Duration::from_secs(1)),
            ExitReason::VmmError("x".into()),
        ];
        let statuses: HashSet<u8> = reasons.iter().map(ExitReason::status).collect();
        assert_eq!(statuses.len(), reasons.len());
        assert!(statuses.iter().all(|s| *s > GUEST_STATUS_MAX));
        assert!(reasons.iter().all(|r| r.message().is_some()));
    }

    #[test]
    fn guest_status_passes_through() {
        for s in [0, 1, 5, 0x7f] {
            assert_eq!(ExitReason::Guest(s).status(), s);
            assert_eq!(ExitReason::Guest(s).message(), None);
        }
    }

    #[test]
    fn first_trigger_wins() {
        let latch = ExitLatch::new();
        assert!(!latch.is_set());
        assert!(latch.trigger(ExitReason::Guest(3)));
        assert!(!latch.trigger(ExitReason::I8042Reset));
        assert!(latch.is_set());
        assert_eq!(latch.wait(None), ExitReason::Guest(3));
    }

    #[test]
    fn wait_ticking_ticks_until_a_reason_comes_and_still_times_out() {
        let latch = ExitLatch::new();
        let mut ticks = 0;
        let reason = latch.wait_ticking(None, Duration::from_millis(1), || {
            ticks += 1;
            if ticks == 3 {
                latch.trigger(ExitReason::Guest(7));
            }
        });
        assert_eq!(reason, ExitReason::Guest(7));
        assert_eq!(ticks, 3);
        let t = Duration::from_millis(20);
        let mut ticked = false;
        let reason = ExitLatch::new().wait_ticking(Some(t), Duration::from_millis(5), || {
            ticked = true;
        });
        assert_eq!(reason, ExitReason::Timeout(t));
        assert!(ticked);
    }

    #[test]
    fn wait_times_out_with_timeout_reason() {
        let latch = ExitLatch::new();
        let t = Duration::from_millis(20);
        assert_eq!(latch.wait(Some(t)), ExitReason::Timeout(t));
        assert!(latch.is_set());
    }

    #[test]
    fn wait_wakes_on_trigger_from_another_thread() {
        let latch = Arc::new(ExitLatch::new());
        let l2 = latch.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            l2.trigger(ExitReason::Guest(7));
        });
        assert_eq!(
            latch.wait(Some(Duration::from_secs(30))),
            ExitReason::Guest(7)
        );
        t.join().expect("trigger thread");
    }
}
