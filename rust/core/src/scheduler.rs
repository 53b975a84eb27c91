//! The ready queue of an owning engine: which executions should run an
//! invocation now. An execution is queued or running at most once. A wake-up
//! that arrives while it runs is caught by the writer's `EndInvocation` when
//! it commits before the invocation ends, and by `again` when it commits
//! after: the execution is queued once more when it finishes.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Called once for every execution queued, after the queue lock is released.
pub type Dispatch = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct State {
    queue: VecDeque<u64>,
    queued: HashSet<u64>,
    running: HashSet<u64>,
    /// Running executions scheduled again meanwhile.
    again: HashSet<u64>,
    /// Executions whose function this process does not have; left alone.
    parked: HashSet<u64>,
    /// Executions whose last invocation stopped before it could end (its
    /// commit met a full or failing disk, or it was interrupted): when each
    /// runs again.
    delayed: Vec<(Instant, u64)>,
    /// How many invocations of each in a row stopped so; reset by an
    /// invocation that ends.
    stops: HashMap<u64, u32>,
    closed: bool,
}

/// The first delay before an execution whose invocation stopped runs again;
/// it doubles with each stop in a row, up to `MAX_RETRY_DELAY`.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The delay after the `stops`-th stop in a row (from 1).
pub fn retry_delay(stops: u32) -> Duration {
    let doublings = stops.saturating_sub(1).min(16);
    FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

#[derive(Default)]
pub struct Scheduler {
    state: Mutex<State>,
    ready: Condvar,
    /// With an executor: spawns a task that takes one execution off the queue.
    dispatch: Mutex<Option<Dispatch>>,
}

impl Scheduler {
    /// Hands every queued execution (now and later) to `dispatch`.
    pub fn set_dispatch(&self, dispatch: Dispatch) {
        let queued = self.state.lock().queue.len();
        *self.dispatch.lock() = Some(dispatch.clone());
        for _ in 0..queued {
            dispatch();
        }
    }

    /// Drops the dispatcher (and what it holds: the executor, the invoker).
    pub fn clear_dispatch(&self) {
        self.dispatch.lock().take();
    }

    fn dispatched(&self) {
        let dispatch = self.dispatch.lock().clone();
        if let Some(dispatch) = dispatch {
            dispatch();
        }
    }

    pub fn schedule(&self, exec_key: u64) {
        let mut state = self.state.lock();
        if state.closed || state.parked.contains(&exec_key) {
            return;
        }
        if state.running.contains(&exec_key) {
            state.again.insert(exec_key);
            return;
        }
        if state.queued.insert(exec_key) {
            state.queue.push_back(exec_key);
            self.ready.notify_one();
            drop(state);
            self.dispatched();
        }
    }

    /// Queues `exec_key` unless it is queued, running, parked or waiting out
    /// a retry delay: for wake-ups found by looking at the store, which
    /// show an execution as woken until its invocation ends.
    pub fn schedule_idle(&self, exec_key: u64) {
        {
            let state = self.state.lock();
            if state.running.contains(&exec_key) || state.delayed.iter().any(|&(_, key)| key == exec_key) {
                return;
            }
        }
        self.schedule(exec_key);
    }

    /// The next execution to run, or `None` on timeout or close.
    pub fn next(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(exec_key) = state.queue.pop_front() {
                state.queued.remove(&exec_key);
                state.running.insert(exec_key);
                return Some(exec_key);
            }
            if !self.wait_until(&mut state, deadline) {
                return None;
            }
        }
    }

    /// Waits for a signal, or until `deadline` (`None`: none). False,
    /// without waiting, once the deadline has passed.
    fn wait_until(&self, state: &mut MutexGuard<'_, State>, deadline: Option<Instant>) -> bool {
        match deadline {
            Some(deadline) => {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    return false;
                };
                self.ready.wait_for(state, left);
            }
            None => self.ready.wait(state),
        }
        true
    }

    /// The invocation ended; `rerun` queues the execution again at once.
    pub fn finish(&self, exec_key: u64, rerun: bool) {
        let mut state = self.state.lock();
        state.running.remove(&exec_key);
        state.stops.remove(&exec_key);
        let rerun = state.again.remove(&exec_key) || rerun;
        let queued = rerun && !state.closed && state.queued.insert(exec_key);
        if queued {
            state.queue.push_back(exec_key);
            self.ready.notify_one();
        }
        if state.running.is_empty() {
            self.ready.notify_all(); // wakes `close`
        }
        drop(state);
        if queued {
            self.dispatched();
        }
    }

    /// The invocation stopped without ending (a storage failure, an
    /// interrupt): the execution runs again, from its journal, after a delay
    /// that grows with each such stop in a row. Returns the delay.
    pub fn retry_later(&self, exec_key: u64) -> Duration {
        let mut state = self.state.lock();
        state.running.remove(&exec_key);
        state.again.remove(&exec_key);
        let stops = state.stops.entry(exec_key).or_insert(0);
        *stops = stops.saturating_add(1);
        let delay = retry_delay(*stops);
        if !state.closed && !state.parked.contains(&exec_key) {
            state.delayed.push((Instant::now() + delay, exec_key));
        }
        if state.running.is_empty() {
            self.ready.notify_all();
        }
        delay
    }

    /// Queues the executions whose retry delay has passed.
    pub fn release_due(&self) {
        let due: Vec<u64> = {
            let mut state = self.state.lock();
            if state.delayed.is_empty() {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            state.delayed.retain(|&(at, exec_key)| {
                if at <= now {
                    due.push(exec_key);
                    false
                } else {
                    true
                }
            });
            due
        };
        for exec_key in due {
            self.schedule(exec_key);
        }
    }

    /// Executions waiting out a retry delay.
    #[cfg(test)]
    pub fn delayed(&self) -> usize {
        self.state.lock().delayed.len()
    }

    pub fn park(&self, exec_key: u64) {
        let mut state = self.state.lock();
        state.running.remove(&exec_key);
        state.again.remove(&exec_key);
        state.parked.insert(exec_key);
        if state.running.is_empty() {
            self.ready.notify_all();
        }
    }

    /// Nothing queued and nothing running.
    pub fn is_idle(&self) -> bool {
        let state = self.state.lock();
        state.queue.is_empty() && state.running.is_empty()
    }

    pub fn is_running(&self, exec_key: u64) -> bool {
        self.state.lock().running.contains(&exec_key)
    }

    /// Stops handing out work and waits up to `timeout` for running invocations.
    pub fn close(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.state.lock();
        state.closed = true;
        state.queue.clear();
        state.queued.clear();
        state.delayed.clear();
        self.ready.notify_all();
        while !state.running.is_empty() {
            if !self.wait_until(&mut state, deadline) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_millis(0);

    #[test]
    fn queued_once_and_never_while_running() {
        let scheduler = Scheduler::default();
        scheduler.schedule(7);
        scheduler.schedule(7);
        assert_eq!(scheduler.next(NOW), Some(7));
        assert_eq!(scheduler.next(NOW), None);
        scheduler.finish(7, false);
        assert_eq!(scheduler.next(NOW), None);
    }

    #[test]
    fn a_wake_while_running_runs_it_again_after() {
        let scheduler = Scheduler::default();
        scheduler.schedule(7);
        assert_eq!(scheduler.next(NOW), Some(7));
        scheduler.schedule(7); // woken while its invocation runs
        assert_eq!(scheduler.next(NOW), None);
        scheduler.finish(7, false);
        assert_eq!(scheduler.next(NOW), Some(7));
    }

    #[test]
    fn a_stopped_invocation_runs_again_after_a_growing_delay() {
        let scheduler = Scheduler::default();
        scheduler.schedule(7);
        assert_eq!(scheduler.next(NOW), Some(7));
        assert_eq!(scheduler.retry_later(7), FIRST_RETRY_DELAY);
        scheduler.release_due();
        assert_eq!(scheduler.next(NOW), None, "not before its delay");
        std::thread::sleep(FIRST_RETRY_DELAY);
        scheduler.release_due();
        assert_eq!(scheduler.next(NOW), Some(7));
        assert_eq!(scheduler.retry_later(7), FIRST_RETRY_DELAY * 2);
        assert_eq!(scheduler.delayed(), 1);
        assert_eq!(retry_delay(100), MAX_RETRY_DELAY);
        // An invocation that ends resets the delay.
        std::thread::sleep(FIRST_RETRY_DELAY * 2);
        scheduler.release_due();
        assert_eq!(scheduler.next(NOW), Some(7));
        scheduler.finish(7, false);
        scheduler.schedule(7);
        assert_eq!(scheduler.next(NOW), Some(7));
        assert_eq!(scheduler.retry_later(7), FIRST_RETRY_DELAY);
    }

    #[test]
    fn parked_executions_are_left_alone() {
        let scheduler = Scheduler::default();
        scheduler.schedule(7);
        assert_eq!(scheduler.next(NOW), Some(7));
        scheduler.park(7);
        scheduler.schedule(7);
        assert_eq!(scheduler.next(NOW), None);
    }
}
