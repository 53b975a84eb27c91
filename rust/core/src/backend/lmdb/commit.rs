//! The LMDB backend's commit: one write transaction per group of batches,
//! each batch checked in full before any of it is applied (`apply_batch`),
//! so that a refused batch changes nothing while the rest of the group
//! commits. What each mutation writes is docs/format.md §5.

use heed::{MdbError, RwTxn};

use super::{self as store, Dbs, Store, META_LEASE_EPOCH, META_NEXT_EXEC, META_WAKE_SEQ};
use crate::backend::{Lease, Mutation, Outcome, Woken};
use crate::error::{Error, Result};
use crate::keys::{self, CallbackEntry, CallbackState, ExecMeta, ExecState, Timer, TimerKind};
use crate::record::{OpType, Record, RecordKind, SubType};
use crate::sealed;

/// A commit of a group. A storage failure (a full or failing disk) comes
/// back as `Error::StorageFailed`: LMDB aborted the transaction, so nothing
/// of the group is stored, and the next commit starts from the last one
/// that succeeded (the writer keeps no state of its own beyond the store).
pub(super) fn try_commit(store: &Store, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
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
