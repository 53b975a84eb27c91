//! The timer thread: keeps every durable timer of an owning engine in deadline
//! order in memory, and when one falls due, fires it through the writer (which
//! wakes the execution durably) and queues the woken execution.

use parking_lot::{Condvar, Mutex};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Mutation, Outcome};
use crate::clock::Clock;
use crate::keys::{Timer, TimerKind};
use crate::runtime::Finished;
use crate::scheduler::Scheduler;
use crate::writer::Writer;

/// Re-read the clock at least this often, so a wall-clock jump or a test
/// clock that skips ahead is noticed.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// How long an engine must stay idle before a skipping clock jumps.
const SKIP_SETTLE: Duration = Duration::from_millis(2);
/// Timers fired in one commit.
const MAX_FIRE: usize = 8192;

#[derive(Default)]
struct State {
    timers: BTreeSet<Timer>,
    closed: bool,
}

#[derive(Default)]
pub struct Timers {
    state: Mutex<State>,
    changed: Condvar,
}

impl Timers {
    pub fn add(&self, timer: Timer) {
        let mut state = self.state.lock();
        let earliest = state.timers.first().is_none_or(|first| timer < *first);
        state.timers.insert(timer);
        if earliest {
            self.changed.notify_all();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().timers.len()
    }

    /// Re-checks deadlines now (the clock moved).
    pub fn poke(&self) {
        self.changed.notify_all();
    }

    pub fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
    }

    /// Blocks until timers are due; `None` once closed. `idle` says the
    /// engine has nothing queued or running: a skipping clock may then jump
    /// to the next wake-up, once the engine has stayed idle a moment (so an
    /// invocation about to be queued is not overtaken).
    fn next_due(&self, clock: &dyn Clock, idle: &dyn Fn() -> bool) -> Option<Vec<Timer>> {
        let mut state = self.state.lock();
        let mut idle_since: Option<Instant> = None;
        loop {
            if state.closed {
                return None;
            }
            let now = clock.now_ms();
            let mut sleep = match state.timers.first() {
                Some(first) if first.due_ms <= now => break,
                Some(first) => Duration::from_millis(first.due_ms - now).min(MAX_SLEEP),
                None => MAX_SLEEP,
            };
            let next_wake = if clock.skips() {
                state
                    .timers
                    .iter()
                    .find(|t| t.kind == TimerKind::Wake)
                    .map(|t| t.due_ms)
            } else {
                None
            };
            match next_wake {
                Some(due_ms) if idle() => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SKIP_SETTLE {
                        if clock.skip_to(due_ms) {
                            continue;
                        }
                    } else {
                        sleep = sleep.min(SKIP_SETTLE);
                    }
                }
                _ => idle_since = None,
            }
            self.changed.wait_for(&mut state, sleep);
        }
        let now = clock.now_ms();
        let mut due = Vec::new();
        while due.len() < MAX_FIRE && state.timers.first().is_some_and(|first| first.due_ms <= now) {
            due.extend(state.timers.pop_first());
        }
        Some(due)
    }

    pub(crate) fn run(
        &self,
        clock: &dyn Clock,
        writer: &Writer,
        scheduler: &Scheduler,
        owner: u64,
        finished: &Finished,
    ) {
        let idle = || scheduler.is_idle();
        while let Some(due) = self.next_due(clock, &idle) {
            let now_ms = clock.now_ms();
            let batch = due
                .iter()
                .map(|timer| Mutation::FireTimer {
                    timer: timer.clone(),
                    now_ms,
                })
                .collect();
            match writer.submit(batch) {
                Ok(outcomes) => {
                    for outcome in outcomes {
                        match outcome {
                            Outcome::Woke(Some(woken)) if woken.owner == Some(owner) => {
                                scheduler.schedule(woken.exec_key)
                            }
                            Outcome::Rearmed(timer) => self.add(timer),
                            _ => {}
                        }
                    }
                    // An execution timeout may have ended executions: wake
                    // whoever waits for a result (cheap when nobody does).
                    finished.bump();
                }
                Err(_) => {
                    // The store refused the commit (closing, disk trouble): keep
                    // the timers and try again shortly rather than lose a wake-up.
                    for timer in due {
                        self.add(timer);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Shared handles the timer thread needs.
pub(crate) struct TimerContext {
    pub clock: Arc<dyn Clock>,
    pub writer: Arc<Writer>,
    pub scheduler: Arc<Scheduler>,
    pub timers: Arc<Timers>,
    /// Only this owner's executions are queued here when a timer wakes them.
    pub owner: u64,
    pub finished: Arc<Finished>,
}

impl TimerContext {
    pub fn run(&self) {
        self.timers.run(
            self.clock.as_ref(),
            &self.writer,
            &self.scheduler,
            self.owner,
            &self.finished,
        );
    }
}
