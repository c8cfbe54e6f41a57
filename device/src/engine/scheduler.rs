//! The engine's run queue: jobs (one per context, one for the invalidation queue) that worker
//! threads take in FIFO order.
//!
//! A job is never run by two workers at once — that is what keeps a context's commands in
//! order. Each job is Idle, Queued, Running, or Running-and-rescheduled: a doorbell for a
//! running job marks it so the worker that finishes it queues it again instead of losing the
//! wake-up.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::regs::NUM_CONTEXTS;

/// Work for a worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Execute commands of a context.
    Context(u8),
    /// Execute invalidation descriptors.
    Invalidations,
}

impl Job {
    fn slot(self) -> usize {
        match self {
            Self::Context(ctx) => usize::from(ctx),
            Self::Invalidations => NUM_CONTEXTS,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum JobState {
    #[default]
    Idle,
    Queued,
    Running,
    RunningAgain,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Job>,
    jobs: [JobState; NUM_CONTEXTS + 1],
    shutdown: bool,
}

/// The run queue.
#[derive(Debug)]
pub struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                jobs: [JobState::Idle; NUM_CONTEXTS + 1],
                shutdown: false,
            }),
            wake: Condvar::new(),
        }
    }
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields, consistent at every unlock.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Asks for `job` to run (a doorbell, a resume, an enable).
    pub fn schedule(&self, job: Job) {
        let mut state = self.lock();
        let slot = job.slot();
        match state.jobs[slot] {
            JobState::Idle => {
                state.jobs[slot] = JobState::Queued;
                state.queue.push_back(job);
                self.wake.notify_one();
            }
            JobState::Running => state.jobs[slot] = JobState::RunningAgain,
            JobState::Queued | JobState::RunningAgain => {}
        }
    }

    /// The next job, waiting for one; `None` once shut down.
    pub fn next(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if state.shutdown {
                return None;
            }
            if let Some(job) = state.queue.pop_front() {
                state.jobs[job.slot()] = JobState::Running;
                return Some(job);
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    /// A worker finished a run of `job`; `more` says it stopped with work left (its budget ran
    /// out), so it goes to the back of the queue.
    pub fn finished(&self, job: Job, more: bool) {
        let mut state = self.lock();
        let slot = job.slot();
        if more || state.jobs[slot] == JobState::RunningAgain {
            state.jobs[slot] = JobState::Queued;
            state.queue.push_back(job);
            self.wake.notify_one();
        } else {
            state.jobs[slot] = JobState::Idle;
        }
    }

    /// Stops the workers: `next` returns `None` from now on.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.wake.notify_all();
    }

    /// Whether no job is queued or running (tests use it to wait for quiescence).
    pub fn idle(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() && state.jobs.iter().all(|job| *job == JobState::Idle)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_job_is_queued_once_however_often_it_is_scheduled() {
        let scheduler = Scheduler::default();
        scheduler.schedule(Job::Context(3));
        scheduler.schedule(Job::Context(3));
        scheduler.schedule(Job::Invalidations);
        assert_eq!(scheduler.next(), Some(Job::Context(3)));
        assert_eq!(scheduler.next(), Some(Job::Invalidations));
        assert!(!scheduler.idle());
        scheduler.finished(Job::Context(3), false);
        scheduler.finished(Job::Invalidations, false);
        assert!(scheduler.idle());
    }

    #[test]
    fn a_doorbell_during_a_run_requeues_the_job_when_it_finishes() {
        let scheduler = Scheduler::default();
        scheduler.schedule(Job::Context(1));
        let job = scheduler.next().expect("queued");
        scheduler.schedule(Job::Context(1));
        // Not queued a second time while running: no other worker can take it.
        scheduler.schedule(Job::Context(2));
        assert_eq!(scheduler.next(), Some(Job::Context(2)));
        scheduler.finished(job, false);
        assert_eq!(scheduler.next(), Some(Job::Context(1)));
    }

    #[test]
    fn a_job_with_budget_left_over_goes_to_the_back() {
        let scheduler = Scheduler::default();
        scheduler.schedule(Job::Context(1));
        scheduler.schedule(Job::Context(2));
        let first = scheduler.next().expect("queued");
        scheduler.finished(first, true);
        assert_eq!(scheduler.next(), Some(Job::Context(2)));
        assert_eq!(scheduler.next(), Some(Job::Context(1)));
    }

    #[test]
    fn shutdown_wakes_waiting_workers() {
        let scheduler = Arc::new(Scheduler::default());
        let waiter = {
            let scheduler = scheduler.clone();
            std::thread::spawn(move || scheduler.next())
        };
        std::thread::sleep(std::time::Duration::from_millis(10));
        scheduler.shutdown();
        assert_eq!(waiter.join().expect("no panic"), None);
    }
}
