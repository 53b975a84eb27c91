//! The group-commit writer: one commit at a time holds LMDB's write
//! transaction and takes the batches of every caller that arrived while the
//! previous commit was syncing, so one fsync is shared by everything in flight.
//!
//! A batch is atomic: all its preconditions are checked before any of its
//! mutations is applied, and a batch whose check fails changes nothing while
//! the rest of the group commits.

use parking_lot::{Condvar, Mutex};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use heed::{MdbError, RwTxn};

use crate::backend::lmdb::{self as store, Dbs, Lease, Store, META_LEASE_EPOCH, META_NEXT_EXEC, META_WAKE_SEQ};
use crate::error::{Error, Result};
use crate::keys::{self, CallbackEntry, CallbackState, ExecMeta, ExecState, OwnerEntry, ParentLink, Timer, TimerKind};
use crate::record::{OpType, Record, RecordKind, SubType};
use crate::sealed;

/// The most batches committed in one transaction; bounds a commit's latency.
const MAX_GROUP: usize = 4096;

#[derive(Debug)]
pub enum Mutation {
    /// Creates the execution unless its id exists (then reports the existing one).
    CreateExecution {
        execution_id: String,
        function: String,
        started: Record,
        /// The engine that will run it; `None` leaves it for any engine to claim.
        owner: Option<u64>,
        /// A child execution's parent operation (then the id must be new).
        parent: Option<ParentLink>,
        /// When the execution times out, if it does.
        deadline_ms: Option<u64>,
    },
    /// Refuses the batch unless the execution's lease is still the grant
    /// the invocation started under: put first in every batch an invocation
    /// writes, it fences off a stale owner, and a stale invocation of an
    /// owner that lost the execution and claimed it again.
    Fence {
        exec_key: u64,
        lease: Lease,
    },
    RegisterOwner {
        owner: u64,
        entry: OwnerEntry,
    },
    /// Renews an owner's lease; refused if the owner was reaped meanwhile.
    RenewOwner {
        owner: u64,
        now_ms: u64,
    },
    /// Removes an owner (dead, stale or closing) and leaves its active
    /// executions for others to claim. With `renewed_ms`, only if the owner
    /// has not renewed since that moment.
    Reap {
        owner: u64,
        renewed_ms: Option<u64>,
    },
    /// Leases up to `max` unclaimed active executions to `owner`.
    Claim {
        owner: u64,
        max: usize,
    },
    Append {
        exec_key: u64,
        record: Record,
    },
    AddTimer(Timer),
    CreateCallback {
        callback_id: String,
        entry: CallbackEntry,
    },
    /// Completes a pending callback (success or failure) and wakes its execution.
    CompleteCallback {
        callback_id: String,
        state: CallbackState,
        record: Record,
    },
    Heartbeat {
        callback_id: String,
        now_ms: u64,
    },
    FireTimer {
        timer: Timer,
        now_ms: u64,
    },
    /// Ends an invocation: `final_state` finishes the execution, `None` suspends it.
    EndInvocation {
        exec_key: u64,
        seen_wake: u64,
        final_state: Option<ExecState>,
        records: Vec<Record>,
    },
    Cancel {
        exec_key: u64,
        record: Record,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Created {
        exec_key: u64,
        created: bool,
        /// The new execution's timeout timer.
        timer: Option<Timer>,
    },
    /// The execution that became runnable, if any.
    Woke(Option<Woken>),
    /// Executions leased by a claim, each with whether it waits to run.
    Claimed(Vec<(u64, bool)>),
    /// Whether a wake-up arrived during the invocation, so it must run
    /// again; and the parent an ended child execution woke.
    Ended {
        rerun: bool,
        parent: Option<Woken>,
    },
    /// A timer fired early (its deadline moved) and this one replaces it.
    Rearmed(Timer),
}

/// An execution made runnable, and the engine that runs it (if any).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Woken {
    pub exec_key: u64,
    pub owner: Option<u64>,
}

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
    store: Arc<Store>,
    queue: Mutex<Queue>,
    /// Signalled when the writer goes idle; `close` waits on it.
    idle: Condvar,
    later: Arc<Later>,
    delivery: Mutex<Option<Delivery>>,
}

impl Writer {
    pub fn new(store: Arc<Store>) -> Writer {
        Writer {
            store,
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
        let answers = catch_unwind(AssertUnwindSafe(|| commit_batches(&self.store, &batches))).unwrap_or_else(|_| {
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

/// Commits batches in one transaction; after a storage failure of the whole
/// group, retries each batch alone, so one bad batch cannot fail the others.
fn commit_batches(store: &Store, batches: &[Vec<Mutation>]) -> Vec<Result<Vec<Outcome>>> {
    match try_commit(store, batches) {
        Ok(answers) => answers,
        Err(_) if batches.len() > 1 => batches
            .iter()
            .map(|batch| commit_batches(store, std::slice::from_ref(batch)).remove(0))
            .collect(),
        Err(err) => vec![Err(err)],
    }
}

/// A commit of a group. A storage failure (a full or failing disk) comes
/// back as `Error::StorageFailed`: LMDB aborted the transaction, so nothing
/// of the group is stored, and the next commit starts from the last one
/// that succeeded (the writer keeps no state of its own beyond the store).
fn try_commit(store: &Store, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
    commit_group(store, group).map_err(|err| store.classify_failure(err))
}

fn commit_group(store: &Store, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
    loop {
        let guard = store.gate().read();
        let mut txn = match store.env.write_txn() {
            Ok(txn) => txn,
            Err(heed::Error::Mdb(MdbError::MapResized)) => {
                drop(guard);
                store.adopt_map_size()?;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        // A data.mdb truncated under the map would kill the process at the
        // first page read past its end: refuse to write instead.
        let applied: Result<Vec<_>> = store.txn_bounds().and_then(|_bounds| {
            group
                .iter()
                .map(|batch| apply_batch(&mut txn, &store.dbs, batch))
                .collect()
        });
        let outcome = applied.and_then(|results| Ok(txn.commit().map(|()| results)?));
        drop(guard);
        match outcome {
            Err(Error::Lmdb(heed::Error::Mdb(MdbError::MapFull))) => {
                store.grow_map().map_err(|err| Error::StorageFailed {
                    full: true,
                    detail: format!("the store's disk is full: its map is full and cannot grow: {err}"),
                })?
            }
            Err(Error::Lmdb(heed::Error::Mdb(MdbError::MapResized))) => store.adopt_map_size()?,
            other => return other.map_err(|err| store.file_error(err)),
        }
    }
}

/// Checks then applies one batch. The outer `Result` is a storage failure
/// (aborts the group); the inner one is this batch's own answer.
fn apply_batch(txn: &mut RwTxn, dbs: &Dbs, batch: &[Mutation]) -> Result<Result<Vec<Outcome>>> {
    for mutation in batch {
        match check(txn, dbs, mutation) {
            Ok(()) => {}
            Err(err @ Error::Lmdb(_)) => return Err(err),
            Err(refused) => return Ok(Err(refused)),
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for mutation in batch {
        outcomes.push(apply(txn, dbs, mutation)?);
    }
    Ok(Ok(outcomes))
}

fn active_meta(txn: &RwTxn, dbs: &Dbs, exec_key: u64) -> Result<ExecMeta> {
    let meta = store::meta_in(txn, dbs, exec_key)?
        .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
    if meta.state.is_terminal() {
        return Err(Error::ExecutionFinished {
            execution_id: meta.execution_id,
            status: meta.state.name(),
        });
    }
    Ok(meta)
}

fn pending_callback(txn: &RwTxn, dbs: &Dbs, callback_id: &str) -> Result<CallbackEntry> {
    let entry = store::callback_in(txn, dbs, callback_id)?.ok_or_else(|| Error::UnknownCallback(callback_id.into()))?;
    if entry.state != CallbackState::Pending {
        return Err(Error::CallbackAlreadyCompleted {
            callback_id: callback_id.into(),
            state: entry.state.name(),
        });
    }
    active_meta(txn, dbs, entry.exec_key)?;
    Ok(entry)
}

fn check(txn: &RwTxn, dbs: &Dbs, mutation: &Mutation) -> Result<()> {
    match mutation {
        Mutation::CreateExecution {
            execution_id,
            function,
            parent,
            ..
        } => {
            if let Some(exec_key) = store::exec_key_in(txn, dbs, execution_id)? {
                if parent.is_some() {
                    return Err(Error::InvalidInput(format!(
                        "cannot start child execution {execution_id:?}: an execution with that id exists"
                    )));
                }
                let existing = store::meta_in(txn, dbs, exec_key)?
                    .map(|meta| meta.function)
                    .unwrap_or_default();
                if &existing != function {
                    return Err(Error::ExecutionIdConflict {
                        execution_id: execution_id.clone(),
                        existing,
                        requested: function.clone(),
                    });
                }
            }
            Ok(())
        }
        Mutation::Append { exec_key, .. }
        | Mutation::EndInvocation { exec_key, .. }
        | Mutation::Cancel { exec_key, .. } => active_meta(txn, dbs, *exec_key).map(drop),
        Mutation::Fence { exec_key, lease } => {
            if store::lease_in(txn, dbs, *exec_key)? == Some(*lease) {
                return Ok(());
            }
            let meta = active_meta(txn, dbs, *exec_key)?;
            Err(Error::LeaseLost {
                execution_id: meta.execution_id,
            })
        }
        Mutation::RenewOwner { owner, .. } => match dbs.owners.get(txn, &owner.to_be_bytes())? {
            Some(_) => Ok(()),
            None => Err(Error::LeaseLost {
                execution_id: String::new(),
            }),
        },
        Mutation::RegisterOwner { .. } | Mutation::Reap { .. } | Mutation::Claim { .. } => Ok(()),
        Mutation::CreateCallback { callback_id, entry } => {
            active_meta(txn, dbs, entry.exec_key)?;
            if dbs.callbacks.get(txn, callback_id.as_bytes())?.is_some() {
                return Err(Error::InvalidInput(format!(
                    "callback id {callback_id:?} already exists"
                )));
            }
            Ok(())
        }
        Mutation::CompleteCallback { callback_id, .. } | Mutation::Heartbeat { callback_id, .. } => {
            pending_callback(txn, dbs, callback_id).map(drop)
        }
        Mutation::AddTimer(_) | Mutation::FireTimer { .. } => Ok(()),
    }
}

fn apply(txn: &mut RwTxn, dbs: &Dbs, mutation: &Mutation) -> Result<Outcome> {
    match mutation {
        Mutation::CreateExecution {
            execution_id,
            function,
            started,
            owner,
            parent,
            deadline_ms,
        } => {
            if let Some(exec_key) = store::exec_key_in(txn, dbs, execution_id)? {
                return Ok(Outcome::Created {
                    exec_key,
                    created: false,
                    timer: None,
                });
            }
            let exec_key = bump_counter(txn, dbs, META_NEXT_EXEC)?;
            let meta = ExecMeta {
                state: ExecState::Active,
                created_ms: started.timestamp_ms,
                updated_ms: started.timestamp_ms,
                execution_id: execution_id.clone(),
                function: function.clone(),
                parent: parent.clone(),
            };
            let key = keys::exec_key_bytes(exec_key);
            put_sealed(txn, dbs.exec_ids, execution_id.as_bytes(), &key)?;
            put_sealed(txn, dbs.executions, &key, &meta.encode())?;
            append(txn, dbs, exec_key, started)?;
            // An owner reaped meanwhile (thought hung, or closing) must not
            // take new leases: nobody would ever reap them again.
            match owner {
                Some(owner) if dbs.owners.get(txn, &owner.to_be_bytes())?.is_some() => {
                    grant(txn, dbs, exec_key, *owner)?
                }
                _ => put_sealed(txn, dbs.orphans, &key, &[])?,
            }
            wake(txn, dbs, exec_key)?;
            let timer = deadline_ms.map(|due_ms| Timer {
                due_ms,
                exec_key,
                kind: TimerKind::ExecutionTimeout,
                subject: String::new(),
            });
            if let Some(timer) = &timer {
                put_timer(txn, dbs, timer)?;
            }
            Ok(Outcome::Created {
                exec_key,
                created: true,
                timer,
            })
        }
        Mutation::Append { exec_key, record } => {
            append(txn, dbs, *exec_key, record)?;
            Ok(Outcome::Done)
        }
        Mutation::Fence { .. } => Ok(Outcome::Done),
        Mutation::RegisterOwner { owner, entry } => {
            put_sealed(txn, dbs.owners, &owner.to_be_bytes(), &entry.encode())?;
            Ok(Outcome::Done)
        }
        Mutation::RenewOwner { owner, now_ms } => {
            let key = owner.to_be_bytes();
            if let Some(bytes) = dbs.owners.get(txn, &key)? {
                let mut entry = store::decode_owner(&key, bytes)?;
                entry.renewed_ms = *now_ms;
                put_sealed(txn, dbs.owners, &key, &entry.encode())?;
            }
            Ok(Outcome::Done)
        }
        Mutation::Reap { owner, renewed_ms } => reap(txn, dbs, *owner, *renewed_ms),
        Mutation::Claim { owner, max } => claim(txn, dbs, *owner, *max),
        Mutation::AddTimer(timer) => {
            put_timer(txn, dbs, timer)?;
            Ok(Outcome::Done)
        }
        Mutation::CreateCallback { callback_id, entry } => {
            put_sealed(txn, dbs.callbacks, callback_id.as_bytes(), &entry.encode())?;
            if let Some((due_ms, kind)) = entry.next_deadline() {
                let timer = Timer {
                    due_ms,
                    exec_key: entry.exec_key,
                    kind,
                    subject: callback_id.clone(),
                };
                put_timer(txn, dbs, &timer)?;
            }
            Ok(Outcome::Done)
        }
        Mutation::CompleteCallback {
            callback_id,
            state,
            record,
        } => {
            let entry = pending_callback(txn, dbs, callback_id)?;
            finish_callback(txn, dbs, callback_id, entry, *state, record)
        }
        Mutation::Heartbeat { callback_id, now_ms } => {
            // The armed timer fires at the old deadline, finds it moved and re-arms.
            let mut entry = pending_callback(txn, dbs, callback_id)?;
            entry.last_heartbeat_ms = *now_ms;
            put_sealed(txn, dbs.callbacks, callback_id.as_bytes(), &entry.encode())?;
            Ok(Outcome::Done)
        }
        Mutation::FireTimer { timer, now_ms } => fire_timer(txn, dbs, timer, *now_ms),
        Mutation::EndInvocation {
            exec_key,
            seen_wake,
            final_state,
            records,
        } => {
            for record in records {
                append(txn, dbs, *exec_key, record)?;
            }
            if let (Some(state), Some(last)) = (final_state, records.last()) {
                let parent = finish(txn, dbs, *exec_key, *state, last)?;
                return Ok(Outcome::Ended { rerun: false, parent });
            }
            let rerun = match pending_wake(txn, dbs, *exec_key)? {
                Some(wake) if wake != *seen_wake => true,
                Some(_) => {
                    clear_pending(txn, dbs, *exec_key)?;
                    false
                }
                None => false,
            };
            Ok(Outcome::Ended { rerun, parent: None })
        }
        Mutation::Cancel { exec_key, record } => {
            Ok(Outcome::Woke(stop(txn, dbs, *exec_key, ExecState::Cancelled, record)?))
        }
    }
}

fn fire_timer(txn: &mut RwTxn, dbs: &Dbs, timer: &Timer, now_ms: u64) -> Result<Outcome> {
    if !dbs.timers.delete(txn, &timer.encode())? {
        return Ok(Outcome::Woke(None)); // already fired (by this or another process)
    }
    let active = store::meta_in(txn, dbs, timer.exec_key)?.is_some_and(|meta| !meta.state.is_terminal());
    if !active {
        return Ok(Outcome::Woke(None));
    }
    match timer.kind {
        TimerKind::Wake => Ok(Outcome::Woke(Some(wake(txn, dbs, timer.exec_key)?))),
        TimerKind::ExecutionTimeout => {
            let mut record = Record::new(RecordKind::TimedOut, OpType::Execution, SubType::None, "");
            record.timestamp_ms = now_ms;
            let started_ms = store::meta_in(txn, dbs, timer.exec_key)?.map_or(now_ms, |meta| meta.created_ms);
            record.payload = Some(timeout_error(timer.due_ms.saturating_sub(started_ms)));
            Ok(Outcome::Woke(stop(
                txn,
                dbs,
                timer.exec_key,
                ExecState::TimedOut,
                &record,
            )?))
        }
        TimerKind::CallbackTimeout | TimerKind::CallbackHeartbeat => {
            let Some(entry) = store::callback_in(txn, dbs, &timer.subject)? else {
                return Ok(Outcome::Woke(None));
            };
            let expired = match entry.next_deadline() {
                Some((due_ms, _)) => entry.state == CallbackState::Pending && due_ms <= now_ms,
                None => false,
            };
            if !expired {
                // A heartbeat moved the deadline: arm a timer for the new one.
                return match (entry.state, entry.next_deadline()) {
                    (CallbackState::Pending, Some((due_ms, kind))) => {
                        let next = Timer {
                            due_ms,
                            exec_key: timer.exec_key,
                            kind,
                            subject: timer.subject.clone(),
                        };
                        put_timer(txn, dbs, &next)?;
                        Ok(Outcome::Rearmed(next))
                    }
                    _ => Ok(Outcome::Woke(None)),
                };
            }
            let mut record = Record::new(
                RecordKind::TimedOut,
                OpType::Callback,
                SubType::Callback,
                entry.op_id.clone(),
            );
            record.timestamp_ms = now_ms;
            record.aux = u64::from(timer.kind == TimerKind::CallbackHeartbeat);
            finish_callback(txn, dbs, &timer.subject, entry, CallbackState::TimedOut, &record)
        }
    }
}

fn finish_callback(
    txn: &mut RwTxn,
    dbs: &Dbs,
    callback_id: &str,
    mut entry: CallbackEntry,
    state: CallbackState,
    record: &Record,
) -> Result<Outcome> {
    entry.state = state;
    put_sealed(txn, dbs.callbacks, callback_id.as_bytes(), &entry.encode())?;
    append(txn, dbs, entry.exec_key, record)?;
    Ok(Outcome::Woke(Some(wake(txn, dbs, entry.exec_key)?)))
}

/// Appends after the execution's last record; one B-tree lookup, independent
/// of the journal's length in practice.
fn append(txn: &mut RwTxn, dbs: &Dbs, exec_key: u64, record: &Record) -> Result<()> {
    let upper = keys::journal_key(exec_key, u32::MAX);
    let seq = match dbs.journal.get_lower_than_or_equal_to(txn, &upper)? {
        // A damaged last key is an error, never a reason to start again at 0
        // (which would overwrite the first record).
        Some((key, _)) if key.starts_with(&keys::exec_key_bytes(exec_key)) => {
            let execution_id = || {
                store::meta_in(txn, dbs, exec_key)
                    .ok()
                    .flatten()
                    .map_or_else(|| format!("<execution key {exec_key}>"), |meta| meta.execution_id)
            };
            let Some((_, seq)) = keys::split_journal_key(key) else {
                let reason = format!("key {key:02x?} of {} bytes is not a journal key (12 bytes)", key.len());
                return Err(store::bad_journal_key(&execution_id(), reason));
            };
            seq.checked_add(1).ok_or_else(|| {
                store::bad_journal_key(
                    &execution_id(),
                    format!("record {seq} is past the journal length limit"),
                )
            })?
        }
        _ => 0,
    };
    dbs.journal
        .put(txn, &keys::journal_key(exec_key, seq), &record.encode())?;
    Ok(())
}

/// Marks the execution runnable with a fresh wake value, indexed by value
/// so that engines read only the wake-ups they have not seen.
fn wake(txn: &mut RwTxn, dbs: &Dbs, exec_key: u64) -> Result<Woken> {
    clear_pending(txn, dbs, exec_key)?;
    let seq = bump_counter(txn, dbs, META_WAKE_SEQ)?;
    let key = keys::exec_key_bytes(exec_key);
    put_sealed(txn, dbs.pending, &key, &seq.to_be_bytes())?;
    put_sealed(txn, dbs.wakes, &seq.to_be_bytes(), &key)?;
    Ok(Woken {
        exec_key,
        owner: store::lease_in(txn, dbs, exec_key)?.map(|lease| lease.owner),
    })
}

fn pending_wake(txn: &RwTxn, dbs: &Dbs, exec_key: u64) -> Result<Option<u64>> {
    match dbs.pending.get(txn, &keys::exec_key_bytes(exec_key))? {
        Some(value) => sealed::unseal_u64(&keys::exec_key_bytes(exec_key), value)
            .map(Some)
            .map_err(|reason| {
                store::damaged_execution(txn, dbs, &keys::exec_key_bytes(exec_key), "wake-up entry", reason)
            }),
        None => Ok(None),
    }
}

fn clear_pending(txn: &mut RwTxn, dbs: &Dbs, exec_key: u64) -> Result<()> {
    if let Some(wake) = pending_wake(txn, dbs, exec_key)? {
        dbs.wakes.delete(txn, &wake.to_be_bytes())?;
        dbs.pending.delete(txn, &keys::exec_key_bytes(exec_key))?;
    }
    Ok(())
}

/// Ends an execution whose final record (`last`) is appended: its final
/// state, and no wake-up, lease or claim left. A child execution reports
/// its outcome to its parent's operation and wakes the parent (returned).
fn finish(txn: &mut RwTxn, dbs: &Dbs, exec_key: u64, state: ExecState, last: &Record) -> Result<Option<Woken>> {
    let meta = set_state(txn, dbs, exec_key, state, last.timestamp_ms)?;
    clear_pending(txn, dbs, exec_key)?;
    let key = keys::exec_key_bytes(exec_key);
    dbs.leases.delete(txn, &key)?;
    dbs.orphans.delete(txn, &key)?;
    let Some(parent) = meta.parent else {
        return Ok(None);
    };
    let parent_active = store::meta_in(txn, dbs, parent.exec_key)?.is_some_and(|meta| !meta.state.is_terminal());
    if !parent_active {
        return Ok(None); // a cancelled parent stopped its children itself
    }
    let kind = match state {
        ExecState::Succeeded => RecordKind::Succeeded,
        ExecState::Failed => RecordKind::Failed,
        ExecState::TimedOut => RecordKind::TimedOut,
        ExecState::Cancelled | ExecState::Active => RecordKind::Cancelled,
    };
    let mut record = Record::new(kind, OpType::ChainedInvoke, SubType::ChainedInvoke, parent.op_id);
    record.timestamp_ms = last.timestamp_ms;
    record.payload = last.payload.clone();
    record.extra = Some(meta.execution_id);
    append(txn, dbs, parent.exec_key, &record)?;
    Ok(Some(wake(txn, dbs, parent.exec_key)?))
}

/// Stops an active execution from outside (cancelled, or timed out): its
/// waits are cancelled, its running child executions stopped, then `record`
/// ends it. Returns the parent it woke, if it is a child.
fn stop(txn: &mut RwTxn, dbs: &Dbs, exec_key: u64, state: ExecState, record: &Record) -> Result<Option<Woken>> {
    let Some(meta) = store::meta_in(txn, dbs, exec_key)? else {
        return Ok(None);
    };
    if meta.state.is_terminal() {
        return Ok(None);
    }
    // Operations still open: the last record of each decides.
    let mut open: Vec<(String, Record)> = Vec::new();
    let mut position: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    store::visit_journal(txn, dbs, exec_key, &meta.execution_id, |r| {
        if matches!(r.op_type, OpType::Wait | OpType::ChainedInvoke) {
            match position.get(&r.op_id) {
                Some(&at) => open[at].1 = r,
                None => {
                    position.insert(r.op_id.clone(), open.len());
                    open.push((r.op_id.clone(), r));
                }
            }
        }
    })?;
    // Mark the execution ended first, so its children do not report back.
    set_state(txn, dbs, exec_key, state, record.timestamp_ms)?;
    for (op_id, last) in open {
        if last.kind != RecordKind::Started {
            continue;
        }
        match last.op_type {
            OpType::Wait => {
                let mut cancelled = Record::new(RecordKind::Cancelled, OpType::Wait, last.sub_type, op_id);
                cancelled.timestamp_ms = record.timestamp_ms;
                cancelled.name = last.name;
                cancelled.aux = last.aux;
                cancelled.payload = record.payload.clone();
                append(txn, dbs, exec_key, &cancelled)?;
            }
            _ => {
                let child = match &last.extra {
                    Some(child_id) => store::exec_key_in(txn, dbs, child_id)?,
                    None => None,
                };
                if let Some(child) = child {
                    let mut stopped = Record::new(RecordKind::Cancelled, OpType::Execution, SubType::None, "");
                    stopped.timestamp_ms = record.timestamp_ms;
                    stopped.payload = Some(PARENT_STOPPED.to_vec());
                    stop(txn, dbs, child, ExecState::Cancelled, &stopped)?;
                }
            }
        }
    }
    append(txn, dbs, exec_key, record)?;
    finish(txn, dbs, exec_key, state, record)
}

/// The error of an execution stopped because its parent ended.
const PARENT_STOPPED: &[u8] =
    br#"{"ErrorType":"ParentStopped","ErrorMessage":"Execution stopped because its parent execution ended"}"#;

/// The error of an execution that ran past its timeout.
fn timeout_error(timeout_ms: u64) -> Vec<u8> {
    let seconds = timeout_ms as f64 / 1000.0;
    format!(r#"{{"ErrorType":"Execution.Timeout","ErrorMessage":"Execution timed out after {seconds} seconds."}}"#)
        .into_bytes()
}

fn reap(txn: &mut RwTxn, dbs: &Dbs, owner: u64, renewed_ms: Option<u64>) -> Result<Outcome> {
    let owner_key = owner.to_be_bytes();
    match dbs.owners.get(txn, &owner_key)? {
        Some(bytes) => {
            let entry = store::decode_owner(&owner_key, bytes)?;
            if renewed_ms.is_some_and(|seen| seen != entry.renewed_ms) {
                return Ok(Outcome::Done); // it renewed after all: alive
            }
            dbs.owners.delete(txn, &owner_key)?;
        }
        // Reaped already by another engine. An owner releasing itself still
        // sweeps: it may hold leases taken before it learned it was reaped.
        None if renewed_ms.is_some() => return Ok(Outcome::Done),
        None => {}
    }
    // One pass over the leases: a reap is rare, and an index by owner would
    // cost a write on every execution start and end.
    // A damaged lease is released too: whoever it named, nobody can prove
    // they hold it, and the next claim grants the execution afresh.
    let mut orphaned = Vec::new();
    for entry in dbs.leases.iter(txn)? {
        let (key, value) = entry?;
        let holder = sealed::unseal(key, value)
            .and_then(Lease::decode)
            .map(|lease| lease.owner);
        if holder.map_or(true, |holder| holder == owner) {
            orphaned.push(key.to_vec());
        }
    }
    for exec_key in orphaned {
        dbs.leases.delete(txn, &exec_key)?;
        put_sealed(txn, dbs.orphans, &exec_key, &[])?;
    }
    Ok(Outcome::Done)
}

fn claim(txn: &mut RwTxn, dbs: &Dbs, owner: u64, max: usize) -> Result<Outcome> {
    let mut taken = Vec::new();
    for entry in dbs.orphans.iter(txn)?.take(max) {
        let (key, value) = entry?;
        let exec_key = keys::read_u64(key).filter(|_| key.len() == 8);
        taken.push((key.to_vec(), exec_key.filter(|_| sealed::unseal(key, value).is_ok())));
    }
    let mut claimed = Vec::with_capacity(taken.len());
    for (key, exec_key) in taken {
        dbs.orphans.delete(txn, &key)?;
        // An execution whose entries are damaged is not run (its damage is
        // reported when it is read); the others are claimed as usual.
        let Some(exec_key) = exec_key else { continue };
        let Ok(Some(meta)) = store::meta_in(txn, dbs, exec_key) else {
            continue;
        };
        let Ok(pending) = pending_wake(txn, dbs, exec_key) else {
            continue;
        };
        if !meta.state.is_terminal() {
            grant(txn, dbs, exec_key, owner)?;
            claimed.push((exec_key, pending.is_some()));
        }
    }
    Ok(Outcome::Claimed(claimed))
}

/// Leases an execution to `owner` under a new epoch.
fn grant(txn: &mut RwTxn, dbs: &Dbs, exec_key: u64, owner: u64) -> Result<()> {
    let epoch = bump_counter(txn, dbs, META_LEASE_EPOCH)?;
    put_sealed(
        txn,
        dbs.leases,
        &keys::exec_key_bytes(exec_key),
        &Lease { owner, epoch }.encode(),
    )
}

fn put_sealed(txn: &mut RwTxn, db: store::Db, key: &[u8], payload: &[u8]) -> Result<()> {
    db.put(txn, key, &sealed::seal(key, payload))?;
    Ok(())
}

fn put_timer(txn: &mut RwTxn, dbs: &Dbs, timer: &Timer) -> Result<()> {
    put_sealed(txn, dbs.timers, &timer.encode(), &[])
}

fn set_state(txn: &mut RwTxn, dbs: &Dbs, exec_key: u64, state: ExecState, updated_ms: u64) -> Result<ExecMeta> {
    let mut meta = store::meta_in(txn, dbs, exec_key)?
        .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
    meta.state = state;
    meta.updated_ms = updated_ms.max(meta.updated_ms);
    put_sealed(txn, dbs.executions, &keys::exec_key_bytes(exec_key), &meta.encode())?;
    Ok(meta)
}

fn bump_counter(txn: &mut RwTxn, dbs: &Dbs, name: &[u8]) -> Result<u64> {
    // A counter at its limit was never written by a store in use: its
    // value is damaged, and wrapping would reuse keys and epochs.
    let next = store::counter_in(txn, dbs, name)?
        .checked_add(1)
        .ok_or_else(|| Error::CorruptStore(format!("counter {} is at its limit", String::from_utf8_lossy(name))))?;
    put_sealed(txn, dbs.meta, name, &next.to_be_bytes())?;
    Ok(next)
}
