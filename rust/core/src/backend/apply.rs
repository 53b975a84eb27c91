//! Check then apply: what each `Mutation` checks and writes, once for every
//! backend. A backend runs it over a [`TxnView`] of its own transaction (LMDB
//! over its write transaction); a batch's preconditions are all checked before
//! any of its mutations is applied, so a refused batch changes nothing. What
//! each mutation writes is docs/format.md §5.

use crate::backend::{Lease, Mutation, Outcome, Woken};
use crate::error::{Error, Result};
use crate::keys::{CallbackEntry, CallbackState, ExecMeta, ExecState, OwnerEntry, Timer, TimerKind};
use crate::record::{OpType, Record, RecordKind, SubType};

/// The store-wide counters a commit bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    /// The last execution key handed out.
    NextExec,
    /// The last wake-up value (see docs/design.md §8, "waking up").
    WakeSeq,
    /// The last lease epoch granted.
    LeaseEpoch,
}

/// One write transaction as check-then-apply sees it: the entries a batch's
/// preconditions read and its effects write, by meaning rather than by
/// database. Reads see the transaction's own writes. Values a backend finds
/// damaged come back as the error naming them.
pub(crate) trait TxnView {
    /// Whether an error from this view fails the whole group (a storage
    /// failure), rather than refusing one batch.
    fn aborts(err: &Error) -> bool;

    fn exec_key(&self, execution_id: &str) -> Result<Option<u64>>;
    fn put_exec_id(&mut self, execution_id: &str, exec_key: u64) -> Result<()>;
    fn meta(&self, exec_key: u64) -> Result<Option<ExecMeta>>;
    fn put_meta(&mut self, exec_key: u64, meta: &ExecMeta) -> Result<()>;

    /// The sequence number the execution's next record takes (one past its
    /// last; a damaged last key is an error, never a restart at 0).
    fn next_seq(&self, exec_key: u64) -> Result<u32>;
    fn put_record(&mut self, exec_key: u64, seq: u32, record: &Record) -> Result<()>;
    /// The execution's records in order, every key checked.
    fn visit_journal(&self, exec_key: u64, execution_id: &str, visit: &mut dyn FnMut(Record)) -> Result<()>;

    /// The wake-up value of a runnable execution.
    fn pending_wake(&self, exec_key: u64) -> Result<Option<u64>>;
    /// Marks the execution runnable under wake value `wake` (indexed by value).
    fn put_pending(&mut self, exec_key: u64, wake: u64) -> Result<()>;
    /// Removes the execution's wake-up `wake` and its index entry.
    fn delete_pending(&mut self, exec_key: u64, wake: u64) -> Result<()>;

    fn lease(&self, exec_key: u64) -> Result<Option<Lease>>;
    fn put_lease(&mut self, exec_key: u64, lease: Lease) -> Result<()>;
    fn delete_lease(&mut self, exec_key: u64) -> Result<()>;
    /// Turns every lease `owner` holds, and every damaged lease (nobody can
    /// prove they hold it), into an orphan.
    fn release_leases(&mut self, owner: u64) -> Result<()>;
    fn put_orphan(&mut self, exec_key: u64) -> Result<()>;
    fn delete_orphan(&mut self, exec_key: u64) -> Result<()>;
    /// Removes up to `max` orphans, returning each one's execution key
    /// (`None` for a damaged entry, removed all the same).
    fn take_orphans(&mut self, max: usize) -> Result<Vec<Option<u64>>>;

    /// Whether `owner` is registered (whatever the state of its entry).
    fn has_owner(&self, owner: u64) -> Result<bool>;
    fn owner(&self, owner: u64) -> Result<Option<OwnerEntry>>;
    fn put_owner(&mut self, owner: u64, entry: &OwnerEntry) -> Result<()>;
    fn delete_owner(&mut self, owner: u64) -> Result<()>;

    /// Whether a callback with this id exists (whatever the state of its entry).
    fn has_callback(&self, callback_id: &str) -> Result<bool>;
    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>>;
    fn put_callback(&mut self, callback_id: &str, entry: &CallbackEntry) -> Result<()>;

    fn put_timer(&mut self, timer: &Timer) -> Result<()>;
    /// Deletes a timer; false if it was gone (fired already).
    fn delete_timer(&mut self, timer: &Timer) -> Result<bool>;

    /// Adds one to a counter and returns the new value.
    fn bump(&mut self, counter: Counter) -> Result<u64>;
}

/// Checks then applies one batch. The outer `Result` is a storage failure
/// (aborts the group); the inner one is this batch's own answer.
pub(crate) fn apply_batch<V: TxnView>(view: &mut V, batch: &[Mutation]) -> Result<Result<Vec<Outcome>>> {
    for mutation in batch {
        match check(view, mutation) {
            Ok(()) => {}
            Err(err) if V::aborts(&err) => return Err(err),
            Err(refused) => return Ok(Err(refused)),
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for mutation in batch {
        outcomes.push(apply(view, mutation)?);
    }
    Ok(Ok(outcomes))
}

fn active_meta<V: TxnView>(view: &V, exec_key: u64) -> Result<ExecMeta> {
    let meta = view
        .meta(exec_key)?
        .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
    if meta.state.is_terminal() {
        return Err(Error::ExecutionFinished {
            execution_id: meta.execution_id,
            status: meta.state.name(),
        });
    }
    Ok(meta)
}

fn pending_callback<V: TxnView>(view: &V, callback_id: &str) -> Result<CallbackEntry> {
    let entry = view
        .callback(callback_id)?
        .ok_or_else(|| Error::UnknownCallback(callback_id.into()))?;
    if entry.state != CallbackState::Pending {
        return Err(Error::CallbackAlreadyCompleted {
            callback_id: callback_id.into(),
            state: entry.state.name(),
        });
    }
    active_meta(view, entry.exec_key)?;
    Ok(entry)
}

fn check<V: TxnView>(view: &V, mutation: &Mutation) -> Result<()> {
    match mutation {
        Mutation::CreateExecution {
            execution_id,
            function,
            parent,
            ..
        } => {
            if let Some(exec_key) = view.exec_key(execution_id)? {
                if parent.is_some() {
                    return Err(Error::InvalidInput(format!(
                        "cannot start child execution {execution_id:?}: an execution with that id exists"
                    )));
                }
                let existing = view.meta(exec_key)?.map(|meta| meta.function).unwrap_or_default();
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
        | Mutation::Cancel { exec_key, .. } => active_meta(view, *exec_key).map(drop),
        Mutation::Fence { exec_key, lease } => {
            if view.lease(*exec_key)? == Some(*lease) {
                return Ok(());
            }
            let meta = active_meta(view, *exec_key)?;
            Err(Error::LeaseLost {
                execution_id: meta.execution_id,
            })
        }
        Mutation::RenewOwner { owner, .. } => match view.has_owner(*owner)? {
            true => Ok(()),
            false => Err(Error::LeaseLost {
                execution_id: String::new(),
            }),
        },
        Mutation::RegisterOwner { .. } | Mutation::Reap { .. } | Mutation::Claim { .. } => Ok(()),
        Mutation::CreateCallback { callback_id, entry } => {
            active_meta(view, entry.exec_key)?;
            if view.has_callback(callback_id)? {
                return Err(Error::InvalidInput(format!(
                    "callback id {callback_id:?} already exists"
                )));
            }
            Ok(())
        }
        Mutation::CompleteCallback { callback_id, .. } | Mutation::Heartbeat { callback_id, .. } => {
            pending_callback(view, callback_id).map(drop)
        }
        Mutation::AddTimer(_) | Mutation::FireTimer { .. } => Ok(()),
    }
}

fn apply<V: TxnView>(view: &mut V, mutation: &Mutation) -> Result<Outcome> {
    match mutation {
        Mutation::CreateExecution {
            execution_id,
            function,
            started,
            owner,
            parent,
            deadline_ms,
        } => {
            if let Some(exec_key) = view.exec_key(execution_id)? {
                return Ok(Outcome::Created {
                    exec_key,
                    created: false,
                    timer: None,
                });
            }
            let exec_key = view.bump(Counter::NextExec)?;
            let meta = ExecMeta {
                state: ExecState::Active,
                created_ms: started.timestamp_ms,
                updated_ms: started.timestamp_ms,
                execution_id: execution_id.clone(),
                function: function.clone(),
                parent: parent.clone(),
            };
            view.put_exec_id(execution_id, exec_key)?;
            view.put_meta(exec_key, &meta)?;
            append(view, exec_key, started)?;
            // An owner reaped meanwhile (thought hung, or closing) must not
            // take new leases: nobody would ever reap them again.
            match owner {
                Some(owner) if view.has_owner(*owner)? => grant(view, exec_key, *owner)?,
                _ => view.put_orphan(exec_key)?,
            }
            wake(view, exec_key)?;
            let timer = deadline_ms.map(|due_ms| Timer {
                due_ms,
                exec_key,
                kind: TimerKind::ExecutionTimeout,
                subject: String::new(),
            });
            if let Some(timer) = &timer {
                view.put_timer(timer)?;
            }
            Ok(Outcome::Created {
                exec_key,
                created: true,
                timer,
            })
        }
        Mutation::Append { exec_key, record } => {
            append(view, *exec_key, record)?;
            Ok(Outcome::Done)
        }
        Mutation::Fence { .. } => Ok(Outcome::Done),
        Mutation::RegisterOwner { owner, entry } => {
            view.put_owner(*owner, entry)?;
            Ok(Outcome::Done)
        }
        Mutation::RenewOwner { owner, now_ms } => {
            if let Some(mut entry) = view.owner(*owner)? {
                entry.renewed_ms = *now_ms;
                view.put_owner(*owner, &entry)?;
            }
            Ok(Outcome::Done)
        }
        Mutation::Reap { owner, renewed_ms } => reap(view, *owner, *renewed_ms),
        Mutation::Claim { owner, max } => claim(view, *owner, *max),
        Mutation::AddTimer(timer) => {
            view.put_timer(timer)?;
            Ok(Outcome::Done)
        }
        Mutation::CreateCallback { callback_id, entry } => {
            view.put_callback(callback_id, entry)?;
            if let Some((due_ms, kind)) = entry.next_deadline() {
                let timer = Timer {
                    due_ms,
                    exec_key: entry.exec_key,
                    kind,
                    subject: callback_id.clone(),
                };
                view.put_timer(&timer)?;
            }
            Ok(Outcome::Done)
        }
        Mutation::CompleteCallback {
            callback_id,
            state,
            record,
        } => {
            let entry = pending_callback(view, callback_id)?;
            finish_callback(view, callback_id, entry, *state, record)
        }
        Mutation::Heartbeat { callback_id, now_ms } => {
            // The armed timer fires at the old deadline, finds it moved and re-arms.
            let mut entry = pending_callback(view, callback_id)?;
            entry.last_heartbeat_ms = *now_ms;
            view.put_callback(callback_id, &entry)?;
            Ok(Outcome::Done)
        }
        Mutation::FireTimer { timer, now_ms } => fire_timer(view, timer, *now_ms),
        Mutation::EndInvocation {
            exec_key,
            seen_wake,
            final_state,
            records,
        } => {
            for record in records {
                append(view, *exec_key, record)?;
            }
            if let (Some(state), Some(last)) = (final_state, records.last()) {
                let parent = finish(view, *exec_key, *state, last)?;
                return Ok(Outcome::Ended { rerun: false, parent });
            }
            let rerun = match view.pending_wake(*exec_key)? {
                Some(wake) if wake != *seen_wake => true,
                Some(_) => {
                    clear_pending(view, *exec_key)?;
                    false
                }
                None => false,
            };
            Ok(Outcome::Ended { rerun, parent: None })
        }
        Mutation::Cancel { exec_key, record } => {
            Ok(Outcome::Woke(stop(view, *exec_key, ExecState::Cancelled, record)?))
        }
    }
}

fn fire_timer<V: TxnView>(view: &mut V, timer: &Timer, now_ms: u64) -> Result<Outcome> {
    if !view.delete_timer(timer)? {
        return Ok(Outcome::Woke(None)); // already fired (by this or another process)
    }
    let active = view.meta(timer.exec_key)?.is_some_and(|meta| !meta.state.is_terminal());
    if !active {
        return Ok(Outcome::Woke(None));
    }
    match timer.kind {
        TimerKind::Wake => Ok(Outcome::Woke(Some(wake(view, timer.exec_key)?))),
        TimerKind::ExecutionTimeout => {
            let mut record = Record::new(RecordKind::TimedOut, OpType::Execution, SubType::None, "");
            record.timestamp_ms = now_ms;
            let started_ms = view.meta(timer.exec_key)?.map_or(now_ms, |meta| meta.created_ms);
            record.payload = Some(timeout_error(timer.due_ms.saturating_sub(started_ms)));
            Ok(Outcome::Woke(stop(view, timer.exec_key, ExecState::TimedOut, &record)?))
        }
        TimerKind::CallbackTimeout | TimerKind::CallbackHeartbeat => {
            let Some(entry) = view.callback(&timer.subject)? else {
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
                        view.put_timer(&next)?;
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
            finish_callback(view, &timer.subject, entry, CallbackState::TimedOut, &record)
        }
    }
}

fn finish_callback<V: TxnView>(
    view: &mut V,
    callback_id: &str,
    mut entry: CallbackEntry,
    state: CallbackState,
    record: &Record,
) -> Result<Outcome> {
    entry.state = state;
    view.put_callback(callback_id, &entry)?;
    if record.op_id.is_empty() {
        // The answer names the callback, not its operation: read here, in
        // the commit, rather than by the caller before it.
        let mut record = record.clone();
        record.op_id.clone_from(&entry.op_id);
        append(view, entry.exec_key, &record)?;
    } else {
        append(view, entry.exec_key, record)?;
    }
    Ok(Outcome::Woke(Some(wake(view, entry.exec_key)?)))
}

/// Appends after the execution's last record.
fn append<V: TxnView>(view: &mut V, exec_key: u64, record: &Record) -> Result<()> {
    let seq = view.next_seq(exec_key)?;
    view.put_record(exec_key, seq, record)
}

/// Marks the execution runnable with a fresh wake value, indexed by value
/// so that engines read only the wake-ups they have not seen.
fn wake<V: TxnView>(view: &mut V, exec_key: u64) -> Result<Woken> {
    clear_pending(view, exec_key)?;
    let seq = view.bump(Counter::WakeSeq)?;
    view.put_pending(exec_key, seq)?;
    Ok(Woken {
        exec_key,
        owner: view.lease(exec_key)?.map(|lease| lease.owner),
    })
}

fn clear_pending<V: TxnView>(view: &mut V, exec_key: u64) -> Result<()> {
    if let Some(wake) = view.pending_wake(exec_key)? {
        view.delete_pending(exec_key, wake)?;
    }
    Ok(())
}

/// Ends an execution whose final record (`last`) is appended: its final
/// state, and no wake-up, lease or claim left. A child execution reports
/// its outcome to its parent's operation and wakes the parent (returned).
fn finish<V: TxnView>(view: &mut V, exec_key: u64, state: ExecState, last: &Record) -> Result<Option<Woken>> {
    let meta = set_state(view, exec_key, state, last.timestamp_ms)?;
    clear_pending(view, exec_key)?;
    view.delete_lease(exec_key)?;
    view.delete_orphan(exec_key)?;
    let Some(parent) = meta.parent else {
        return Ok(None);
    };
    let parent_active = view
        .meta(parent.exec_key)?
        .is_some_and(|meta| !meta.state.is_terminal());
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
    append(view, parent.exec_key, &record)?;
    Ok(Some(wake(view, parent.exec_key)?))
}

/// Stops an active execution from outside (cancelled, or timed out): its
/// waits are cancelled, its running child executions stopped, then `record`
/// ends it. Returns the parent it woke, if it is a child.
fn stop<V: TxnView>(view: &mut V, exec_key: u64, state: ExecState, record: &Record) -> Result<Option<Woken>> {
    let Some(meta) = view.meta(exec_key)? else {
        return Ok(None);
    };
    if meta.state.is_terminal() {
        return Ok(None);
    }
    // Operations still open: the last record of each decides.
    let mut open: Vec<(String, Record)> = Vec::new();
    let mut position: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    view.visit_journal(exec_key, &meta.execution_id, &mut |r| {
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
    set_state(view, exec_key, state, record.timestamp_ms)?;
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
                append(view, exec_key, &cancelled)?;
            }
            _ => {
                let child = match &last.extra {
                    Some(child_id) => view.exec_key(child_id)?,
                    None => None,
                };
                if let Some(child) = child {
                    let mut stopped = Record::new(RecordKind::Cancelled, OpType::Execution, SubType::None, "");
                    stopped.timestamp_ms = record.timestamp_ms;
                    stopped.payload = Some(PARENT_STOPPED.to_vec());
                    stop(view, child, ExecState::Cancelled, &stopped)?;
                }
            }
        }
    }
    append(view, exec_key, record)?;
    finish(view, exec_key, state, record)
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

fn reap<V: TxnView>(view: &mut V, owner: u64, renewed_ms: Option<u64>) -> Result<Outcome> {
    match view.owner(owner)? {
        Some(entry) => {
            if renewed_ms.is_some_and(|seen| seen != entry.renewed_ms) {
                return Ok(Outcome::Done); // it renewed after all: alive
            }
            view.delete_owner(owner)?;
        }
        // Reaped already by another engine. An owner releasing itself still
        // sweeps: it may hold leases taken before it learned it was reaped.
        None if renewed_ms.is_some() => return Ok(Outcome::Done),
        None => {}
    }
    view.release_leases(owner)?;
    Ok(Outcome::Done)
}

fn claim<V: TxnView>(view: &mut V, owner: u64, max: usize) -> Result<Outcome> {
    let taken = view.take_orphans(max)?;
    let mut claimed = Vec::with_capacity(taken.len());
    for exec_key in taken {
        // An execution whose entries are damaged is not run (its damage is
        // reported when it is read); the others are claimed as usual.
        let Some(exec_key) = exec_key else { continue };
        let Ok(Some(meta)) = view.meta(exec_key) else {
            continue;
        };
        let Ok(pending) = view.pending_wake(exec_key) else {
            continue;
        };
        if !meta.state.is_terminal() {
            grant(view, exec_key, owner)?;
            claimed.push((exec_key, pending.is_some()));
        }
    }
    Ok(Outcome::Claimed(claimed))
}

/// Leases an execution to `owner` under a new epoch.
fn grant<V: TxnView>(view: &mut V, exec_key: u64, owner: u64) -> Result<()> {
    let epoch = view.bump(Counter::LeaseEpoch)?;
    view.put_lease(exec_key, Lease { owner, epoch })
}

fn set_state<V: TxnView>(view: &mut V, exec_key: u64, state: ExecState, updated_ms: u64) -> Result<ExecMeta> {
    let mut meta = view
        .meta(exec_key)?
        .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
    meta.state = state;
    meta.updated_ms = updated_ms.max(meta.updated_ms);
    view.put_meta(exec_key, &meta)?;
    Ok(meta)
}
