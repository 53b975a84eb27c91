//! The group-commit writer: one commit at a time is in progress, and it
//! takes the batches of every caller that arrived while the previous commit
//! was syncing, so one durable commit (one fsync on LMDB) is shared by
//! everything in flight. The backend commits each group
//! ([`Backend::commit`]); the writer only queues, hands the lead on and
//! answers callers, whatever the store.
//!
//! A batch is atomic: all its preconditions are checked before any of its
//! mutations is applied, and a batch whose check fails changes nothing while
//! the rest of the group commits.

use parking_lot::{Condvar, Mutex};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::backend::{Backend, Mutation, Outcome};
use crate::error::{Error, Result};

/// The most batches committed in one transaction; bounds a commit's latency.
const MAX_GROUP: usize = 4096;

/// Where a waiting caller learns its fate: its answer, or that it must lead
/// the next commit. One per caller, so a commit wakes exactly the callers it
/// answered and hands leadership to one more, never the whole crowd.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    Lead,
    Answered(Result<Vec<Outcome>>),
}

impl Slot {
    fn set(&self, state: SlotState) {
        *self.state.lock() = state;
        self.ready.notify_one();
    }

    /// Blocks until told; `None` means: lead the next commit.
    fn wait(&self) -> Option<Result<Vec<Outcome>>> {
        let mut state = self.state.lock();
        loop {
            match std::mem::take(&mut *state) {
                SlotState::Waiting => self.ready.wait(&mut state),
                SlotState::Lead => return None,
                SlotState::Answered(answer) => return Some(answer),
            }
        }
    }
}

/// Batches waiting for a commit.
#[derive(Default)]
struct Queue {
    waiting: Vec<(Vec<Mutation>, Arc<Slot>)>,
    /// A leader holds the commit (committing or about to).
    leading: bool,
    closed: bool,
}

/// Called with a batch's answer once it committed, by `submit_later`.
pub type Done = Box<dyn FnOnce(Result<Vec<Outcome>>) + Send>;
/// Runs the delivery of a group's answers (the bindings take the GIL once
/// for the whole group here, rather than once per answer).
pub type Delivery = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// Batches of callers that cannot wait (an event loop), committed by one
/// thread of their own.
#[derive(Default)]
struct Later {
    state: Mutex<LaterState>,
    ready: Condvar,
}

#[derive(Default)]
struct LaterState {
    batches: Vec<(Vec<Mutation>, Done)>,
    thread: Option<std::thread::JoinHandle<()>>,
    closed: bool,
}

/// Group commit without a dedicated thread: the first caller to find no
/// leader commits every batch queued so far, its own included, then answers
/// each waiter and makes the oldest remaining waiter the next leader. An
/// uncontended caller commits in its own thread, with no hand-off at all.
/// Callers that cannot block use `submit_later`.
pub struct Writer {
    backend: Arc<dyn Backend>,
    queue: Mutex<Queue>,
    /// Signalled when the writer goes idle; `close` waits on it.
    idle: Condvar,
    later: Arc<Later>,
    delivery: Mutex<Option<Delivery>>,
}

impl Writer {
    pub fn new(backend: Arc<dyn Backend>) -> Writer {
        Writer {
            backend,
            queue: Mutex::new(Queue::default()),
            idle: Condvar::new(),
            later: Arc::default(),
            delivery: Mutex::new(None),
        }
    }

    /// How `submit_later` answers are delivered (default: called as they are).
    pub fn set_delivery(&self, delivery: Delivery) {
        *self.delivery.lock() = Some(delivery);
    }

    /// Queues `batch` for the commit thread and returns at once; `done` gets
    /// the answer once the batch is durable. Batches queued while a commit
    /// is syncing share the next one, with each other and with blocking
    /// callers.
    pub fn submit_later(self: &Arc<Self>, batch: Vec<Mutation>, done: Done) {
        let mut state = self.later.state.lock();
        if state.closed {
            drop(state);
            done(Err(Error::Closed));
            return;
        }
        state.batches.push((batch, done));
        if state.thread.is_none() {
            let writer = Arc::downgrade(self);
            let later = self.later.clone();
            let spawned = std::thread::Builder::new()
                .name("perdure-commits".into())
                .spawn(move || commit_later(&later, &writer));
            match spawned {
                Ok(thread) => state.thread = Some(thread),
                Err(err) => {
                    let message = err.to_string();
                    let waiting = std::mem::take(&mut state.batches);
                    drop(state);
                    for (_, done) in waiting {
                        done(Err(Error::Io(std::io::Error::other(message.clone()))));
                    }
                    return;
                }
            }
        }
        self.later.ready.notify_one();
    }

    /// Commits several batches as one caller: each gets its own answer.
    fn submit_group(&self, batches: Vec<Vec<Mutation>>) -> Vec<Result<Vec<Outcome>>> {
        let slots: Vec<Arc<Slot>> = batches.iter().map(|_| Arc::new(Slot::default())).collect();
        let lead = {
            let mut queue = self.queue.lock();
            if queue.closed {
                return slots.iter().map(|_| Err(Error::Closed)).collect();
            }
            queue.waiting.extend(batches.into_iter().zip(slots.iter().cloned()));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            self.lead();
        }
        // Answers come in queue order, and the lead passes to the oldest
        // waiter: when one of these slots is told to lead, those before it
        // are answered already, so waiting on them in order never stalls.
        slots
            .iter()
            .map(|slot| loop {
                match slot.wait() {
                    Some(answer) => break answer,
                    None => self.lead(),
                }
            })
            .collect()
    }

    /// Commits `batch` and blocks until it is durable at the store's durability.
    pub fn submit(&self, batch: Vec<Mutation>) -> Result<Vec<Outcome>> {
        let slot = Arc::new(Slot::default());
        {
            let mut queue = self.queue.lock();
            if queue.closed {
                return Err(Error::Closed);
            }
            queue.waiting.push((batch, slot.clone()));
            if queue.leading {
                drop(queue);
                if let Some(answer) = slot.wait() {
                    return answer;
                }
            } else {
                queue.leading = true;
            }
        }
        // A leader's own batch is the oldest queued, so its commit answers it.
        self.lead();
        slot.wait()
            .unwrap_or_else(|| Err(Error::Io(std::io::Error::other("group commit lost an answer"))))
    }

    /// Commits what is queued (the leader's own batch is among it), answers
    /// every caller in the group and passes the lead on.
    fn lead(&self) {
        let group: Vec<(Vec<Mutation>, Arc<Slot>)> = {
            let mut queue = self.queue.lock();
            let take = queue.waiting.len().min(MAX_GROUP);
            queue.waiting.drain(..take).collect()
        };
        let (batches, slots): (Vec<Vec<Mutation>>, Vec<Arc<Slot>>) = group.into_iter().unzip();
        let answers =
            catch_unwind(AssertUnwindSafe(|| commit_batches(&*self.backend, &batches))).unwrap_or_else(|_| {
                batches
                    .iter()
                    .map(|_| Err(Error::Io(std::io::Error::other("commit panicked"))))
                    .collect()
            });
        for (slot, answer) in slots.iter().zip(answers) {
            slot.set(SlotState::Answered(answer));
        }
        let mut queue = self.queue.lock();
        match queue.waiting.first() {
            Some((_, next)) => next.set(SlotState::Lead),
            None => {
                queue.leading = false;
                self.idle.notify_all();
            }
        }
    }

    /// Refuses new batches and waits for the commit in progress (and for
    /// the batches queued for later, which are committed first).
    pub fn close(&self) {
        let thread = {
            let mut state = self.later.state.lock();
            state.closed = true;
            self.later.ready.notify_all();
            state.thread.take()
        };
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        let mut queue = self.queue.lock();
        queue.closed = true;
        while queue.leading || !queue.waiting.is_empty() {
            self.idle.wait(&mut queue);
        }
    }
}

/// The commit thread of `submit_later`: takes every queued batch, commits
/// them as one group and delivers the answers, until the writer closes.
fn commit_later(later: &Later, writer: &std::sync::Weak<Writer>) {
    loop {
        let taken = {
            let mut state = later.state.lock();
            while state.batches.is_empty() && !state.closed {
                later.ready.wait(&mut state);
            }
            if state.batches.is_empty() {
                return;
            }
            let take = state.batches.len().min(MAX_GROUP);
            state.batches.drain(..take).collect::<Vec<_>>()
        };
        let (batches, dones): (Vec<_>, Vec<_>) = taken.into_iter().unzip();
        let (answers, delivery) = match writer.upgrade() {
            Some(writer) => (writer.submit_group(batches), writer.delivery.lock().clone()),
            None => (batches.iter().map(|_| Err(Error::Closed)).collect(), None),
        };
        let mut pairs: Vec<(Done, Result<Vec<Outcome>>)> = dones.into_iter().zip(answers).collect();
        let mut deliver = || {
            for (done, answer) in pairs.drain(..) {
                done(answer);
            }
        };
        match delivery {
            Some(delivery) => delivery(&mut deliver),
            None => deliver(),
        }
    }
}

/// Commits batches as one group; after a failure of the whole group (a
/// storage failure), retries each batch alone, so one bad batch cannot
/// fail the others. Not after a commit of unknown outcome: the group may be
/// stored, and a batch committed twice would append its records twice.
fn commit_batches(backend: &dyn Backend, batches: &[Vec<Mutation>]) -> Vec<Result<Vec<Outcome>>> {
    match backend.commit(batches) {
        Ok(answers) => answers,
        Err(Error::OutcomeUnknown(detail)) => batches
            .iter()
            .map(|_| Err(Error::OutcomeUnknown(detail.clone())))
            .collect(),
        Err(_) if batches.len() > 1 => batches
            .iter()
            .map(|batch| commit_batches(backend, std::slice::from_ref(batch)).remove(0))
            .collect(),
        Err(err) => vec![Err(err)],
    }
}
