//! Function resets counted, for work that must notice a reset it did not wait in: a stalled
//! invalidation (fault injection) blocks here until a reset abandons it, and a fault
//! interrupt held back by fault injection is dropped if a reset came in between.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    /// Function resets since construction.
    generation: u64,
    /// The device is going away: nobody waits any more.
    closed: bool,
}

/// Counts function resets and wakes whoever waits for the next one.
#[derive(Debug, Default)]
pub(crate) struct ResetSignal {
    state: Mutex<State>,
    changed: Condvar,
}

impl ResetSignal {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Two plain fields, consistent at every unlock.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Resets so far. Read it while holding a lock the reset takes (a context's, the
    /// invalidation queue's) to know which reset the work one is doing belongs to.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A function reset happened: wakes every waiter.
    pub(crate) fn announce(&self) {
        self.lock().generation += 1;
        self.changed.notify_all();
    }

    /// The device is being dropped: wakes every waiter for good.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Blocks (without spinning) until a reset after `generation`, or until closed.
    pub(crate) fn wait_past(&self, generation: u64) {
        let mut state = self.lock();
        while state.generation == generation && !state.closed {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_waiter_wakes_on_the_next_reset_and_on_close() {
        let signal = Arc::new(ResetSignal::default());
        let generation = signal.generation();
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || signal.wait_past(generation))
        };
        std::thread::sleep(Duration::from_millis(10));
        signal.announce();
        waiter.join().expect("no panic");
        let generation = signal.generation();
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || signal.wait_past(generation))
        };
        signal.close();
        waiter.join().expect("no panic");
    }
}
