//! The write side of the PostgreSQL store: a group of batches committed in
//! one transaction, each batch checked then applied by the shared
//! check-then-apply (`backend::apply`) over [`PgTxn`], this store's
//! [`TxnView`] of the schema v1 rows (schema.rs, docs/format.md §8).
//!
//! Every `executions` row the group reads is locked (`FOR NO KEY UPDATE`)
//! when first read and stays locked to the commit, as are the callback and
//! owner rows it reads: what a batch's check saw (a lease, a state, a
//! callback's state) cannot change under it before its writes commit, which
//! is the argument LMDB's single writer makes, made by row locks. A refused
//! batch leaves nothing behind while the rest of the group commits: the
//! shared check-then-apply refuses before a batch's first write.
//!
//! The rows of the executions the group names are locked and read first, in
//! one statement and in key order (phase 1 of SCALE-OUT.md §4.3); a row
//! found only on the way (a parent, a callback's execution, a child) is
//! locked when read, so two groups may still meet in a deadlock, which the
//! server breaks by failing one, run again here. Writes are one statement
//! each for now: the array-parameter phase 2 of §4.3 (one statement per
//! table for the whole group) is to come.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::{Client, Row, Transaction};

use super::reads::{
    callback_row, exec_key_from, exec_row, journal_row, key_param, owner_row, sequence_from, ExecRow, CALLBACK_COLUMNS,
    EXEC_COLUMNS, OWNER_COLUMNS,
};
use super::PgLocation;
use crate::backend::apply::{apply_batch, Counter, TxnView};
use crate::backend::{JournalOrder, Lease, Mutation, Outcome};
use crate::error::{Error, Result};
use crate::keys::{CallbackEntry, ExecMeta, OwnerEntry, Timer};
use crate::record::Record;

/// Commits a group of batches in one transaction: each batch's answer, or
/// the error that failed the whole group (nothing of it is stored then; a
/// failure of the COMMIT itself leaves the group's fate unknown, to be
/// resolved by reading, never by retrying blind). A group the server rolled
/// back for a deadlock with another group is run again, a few times.
pub fn commit_group(
    client: &mut Client,
    location: &PgLocation,
    group: &[Vec<Mutation>],
) -> Result<Vec<Result<Vec<Outcome>>>> {
    let mut tries = 1;
    loop {
        match try_group(client, location, group) {
            Err(err) if tries < MAX_TRIES && rolled_back_to_retry(&err) => tries += 1,
            other => return other,
        }
    }
}

/// What a failed COMMIT's error says first: the group may or may not be
/// stored (the store tells it apart from a failure before COMMIT).
pub(super) const COMMIT_FAILED: &str = "cannot commit (the group may or may not be stored)";

/// How many times a group that met a deadlock is run before its error is
/// returned.
const MAX_TRIES: u32 = 8;

/// Whether the server ended the group's transaction for a reason that
/// running it again may not meet: a deadlock with another group (which
/// locked the same rows in another order), a serialization failure, or a
/// row another transaction inserted meanwhile under the same key (an
/// execution id, a callback id, an owner: checked absent, then taken by a
/// commit that was not yet visible; run again, the check sees it). The
/// server answered, so nothing of the group is stored.
fn rolled_back_to_retry(err: &Error) -> bool {
    use postgres::error::SqlState;
    match err {
        Error::Postgres { source, .. } => matches!(
            source.code(),
            Some(&SqlState::T_R_DEADLOCK_DETECTED | &SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::UNIQUE_VIOLATION)
        ),
        _ => false,
    }
}

fn try_group(client: &mut Client, location: &PgLocation, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
    let txn = client.transaction().map_err(location.failed("cannot begin a commit"))?;
    let mut view = PgTxn {
        txn: RefCell::new(txn),
        location,
        ids: HashMap::new(),
        rows: RefCell::new(HashMap::new()),
    };
    view.lock_rows(group)?;
    // No savepoint per batch: apply_batch checks a whole batch before it
    // writes anything, so a refused batch has written nothing to undo (and
    // what it read and locked stays true for the batches after it).
    let mut results: Vec<Result<Vec<Outcome>>> = Vec::with_capacity(group.len());
    for batch in group {
        results.push(apply_batch(&mut view, batch)?);
    }
    view.txn.into_inner().commit().map_err(location.failed(COMMIT_FAILED))?;
    Ok(results)
}

/// One transaction seen by check-then-apply. Its getters take `&self`, a
/// statement needs the transaction mutably: hence the cell (never borrowed
/// across a call out).
struct PgTxn<'a, 'c> {
    txn: RefCell<Transaction<'c>>,
    location: &'a PgLocation,
    /// Execution ids given to new keys whose row `put_meta` has not yet
    /// inserted (the row needs both).
    ids: HashMap<u64, String>,
    /// The `executions` rows read (and so locked) and not written since:
    /// nobody else can change a locked row, so a batch's checks and writes
    /// read each once. `None`: no such row.
    rows: RefCell<HashMap<u64, Option<ExecRow>>>,
}

/// A statement parameter with its SQL type, so that a statement goes to
/// the server in one round trip (no separate prepare).
trait Param: ToSql + Sync {
    fn sql_type(&self) -> Type;
}

macro_rules! param {
    ($($t:ty => $sql:expr),* $(,)?) => {$(
        impl Param for $t {
            fn sql_type(&self) -> Type {
                $sql
            }
        }
        impl Param for Option<$t> {
            fn sql_type(&self) -> Type {
                $sql
            }
        }
    )*};
}

param!(i16 => Type::INT2, i32 => Type::INT4, i64 => Type::INT8, &str => Type::TEXT, String => Type::TEXT, Vec<u8> => Type::BYTEA, Vec<i64> => Type::INT8_ARRAY);

fn typed<'p>(params: &[&'p dyn Param]) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|&param| (param as &(dyn ToSql + Sync), param.sql_type()))
        .collect()
}

/// A u64 stored as bigint where the value is a time or duration: at most
/// i64::MAX (about 292 million years of ms).
fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An exec key as a bigint; one at or above 2^63 is no execution's.
fn key(exec_key: u64) -> Result<i64> {
    key_param(exec_key).ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} is out of range")))
}

impl PgTxn<'_, '_> {
    fn s(&self) -> &str {
        self.location.schema()
    }

    fn failed(&self, what: &str) -> impl FnOnce(postgres::Error) -> Error {
        self.location.failed(what)
    }

    fn query(&self, sql: &str, params: &[&dyn Param], what: &str) -> Result<Vec<Row>> {
        self.txn
            .borrow_mut()
            .query_typed(sql, &typed(params))
            .map_err(self.failed(what))
    }

    fn execute(&self, sql: &str, params: &[&dyn Param], what: &str) -> Result<u64> {
        let mut txn = self.txn.borrow_mut();
        txn.execute_typed(sql, &typed(params)).map_err(self.failed(what))
    }

    /// What `f` makes of the execution's row, locked to the commit.
    fn row<T>(&self, exec_key: u64, f: impl FnOnce(Option<&ExecRow>) -> Result<T>) -> Result<T> {
        if let Some(row) = self.rows.borrow().get(&exec_key) {
            return f(row.as_ref());
        }
        let Some(key) = key_param(exec_key) else {
            return f(None);
        };
        let sql = format!(
            "SELECT {EXEC_COLUMNS} FROM {}.executions WHERE exec_key = $1 FOR NO KEY UPDATE",
            self.s()
        );
        let rows = self.query(&sql, &[&key], "cannot read an execution")?;
        let row = rows.first().map(exec_row).transpose()?;
        let value = f(row.as_ref());
        self.rows.borrow_mut().insert(exec_key, row);
        value
    }

    /// Locks and reads, in one statement and in key order, the rows of the
    /// executions the group's mutations name: two groups then lock those
    /// rows in the same order (rows found only on the way, a parent, a
    /// callback's execution, a child, are locked when read).
    fn lock_rows(&self, group: &[Vec<Mutation>]) -> Result<()> {
        let mut keys: Vec<i64> = group
            .iter()
            .flatten()
            .filter_map(|mutation| match mutation {
                Mutation::Fence { exec_key, .. }
                | Mutation::Append { exec_key, .. }
                | Mutation::EndInvocation { exec_key, .. }
                | Mutation::Cancel { exec_key, .. } => Some(*exec_key),
                Mutation::CreateCallback { entry, .. } => Some(entry.exec_key),
                Mutation::FireTimer { timer, .. } => Some(timer.exec_key),
                _ => None,
            })
            .filter_map(key_param)
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        let sql = format!(
            "SELECT {EXEC_COLUMNS} FROM {}.executions WHERE exec_key = ANY($1) ORDER BY exec_key FOR NO KEY UPDATE",
            self.s()
        );
        let found = self.query(&sql, &[&keys], "cannot lock executions")?;
        let mut rows = self.rows.borrow_mut();
        for &key in &keys {
            rows.insert(key as u64, None);
        }
        for row in &found {
            // A damaged row is read again, and reported, where it is used.
            let key: i64 = row.get(0);
            match exec_row(row) {
                Ok(parsed) => rows.insert(key as u64, Some(parsed)),
                Err(_) => rows.remove(&(key as u64)),
            };
        }
        Ok(())
    }

    /// Forgets a row read before a write to it.
    fn written(&self, exec_key: u64) {
        self.rows.borrow_mut().remove(&exec_key);
    }

    fn update_execution(&self, exec_key: u64, set: &str, params: &[&dyn Param]) -> Result<()> {
        let key = key(exec_key)?;
        self.written(exec_key);
        let sql = format!("UPDATE {}.executions SET {set} WHERE exec_key = $1", self.s());
        let mut all: Vec<&dyn Param> = vec![&key];
        all.extend_from_slice(params);
        self.execute(&sql, &all, "cannot update an execution").map(drop)
    }
}

impl TxnView for PgTxn<'_, '_> {
    /// A server or connection error, or a storage failure: the transaction
    /// is gone or cannot be trusted, so the whole group fails.
    fn aborts(err: &Error) -> bool {
        matches!(err, Error::Postgres { .. } | Error::StorageFailed { .. })
    }

    fn exec_key(&self, execution_id: &str) -> Result<Option<u64>> {
        if let Some((&exec_key, _)) = self.ids.iter().find(|(_, id)| id.as_str() == execution_id) {
            return Ok(Some(exec_key));
        }
        let sql = format!("SELECT exec_key FROM {}.executions WHERE execution_id = $1", self.s());
        let rows = self.query(&sql, &[&execution_id], "cannot look up an execution id")?;
        rows.first()
            .map(|row| exec_key_from(row.get(0), execution_id))
            .transpose()
    }

    /// Kept until `put_meta` inserts the row: a new execution's key comes
    /// first, its row with its metadata.
    fn put_exec_id(&mut self, execution_id: &str, exec_key: u64) -> Result<()> {
        self.ids.insert(exec_key, execution_id.to_string());
        Ok(())
    }

    fn meta(&self, exec_key: u64) -> Result<Option<ExecMeta>> {
        self.row(exec_key, |row| Ok(row.map(|row| row.meta.clone())))
    }

    fn put_meta(&mut self, exec_key: u64, meta: &ExecMeta) -> Result<()> {
        let key = key(exec_key)?;
        self.written(exec_key);
        let execution_id = self.ids.remove(&exec_key).unwrap_or_else(|| meta.execution_id.clone());
        let parent_key = meta.parent.as_ref().map(|parent| saturating(parent.exec_key));
        let parent_op = meta.parent.as_ref().map(|parent| parent.op_id.as_str());
        let sql = format!(
            "INSERT INTO {}.executions (exec_key, execution_id, function, state, created_ms, updated_ms, \
             parent_key, parent_op) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (exec_key) DO UPDATE SET function = $3, state = $4, created_ms = $5, updated_ms = $6, \
             parent_key = $7, parent_op = $8",
            self.s()
        );
        self.execute(
            &sql,
            &[
                &key,
                &execution_id,
                &meta.function,
                &(meta.state as i16),
                &saturating(meta.created_ms),
                &saturating(meta.updated_ms),
                &parent_key,
                &parent_op,
            ],
            "cannot write an execution",
        )
        .map(drop)
    }

    /// The row's count; a row without it, 0 (as an LMDB journal without keys).
    fn next_seq(&self, exec_key: u64) -> Result<u32> {
        self.row(exec_key, |row| match row {
            Some(row) => sequence_from(row.next_seq, &row.meta.execution_id),
            None => Ok(0),
        })
    }

    fn put_record(&mut self, exec_key: u64, seq: u32, record: &Record) -> Result<()> {
        let key = key(exec_key)?;
        let too_long = || Error::corrupt_store(format!("execution key {exec_key}: record {seq} is past the limit"));
        let at = i32::try_from(seq).map_err(|_| too_long())?;
        let next = at.checked_add(1).ok_or_else(too_long)?;
        let sql = format!(
            "WITH j AS (INSERT INTO {s}.journal (exec_key, seq, record) VALUES ($1, $2, $3)) \
             UPDATE {s}.executions SET next_seq = $4 WHERE exec_key = $1",
            s = self.s()
        );
        let updated = self.execute(&sql, &[&key, &at, &record.encode(), &next], "cannot append a record")?;
        // The statement changed the row's count and nothing else: a row read
        // before is kept, counted on, rather than read again by the next
        // append (a batch of appends to one execution reads its row once).
        let mut rows = self.rows.borrow_mut();
        match rows.get_mut(&exec_key) {
            Some(Some(row)) if updated == 1 => row.next_seq = next,
            _ => drop(rows.remove(&exec_key)),
        }
        Ok(())
    }

    fn visit_journal(&self, exec_key: u64, execution_id: &str, visit: &mut dyn FnMut(Record)) -> Result<()> {
        let key = key(exec_key)?;
        let sql = format!(
            "SELECT seq, record FROM {}.journal WHERE exec_key = $1 ORDER BY seq",
            self.s()
        );
        let rows = self.query(&sql, &[&key], "cannot read a journal")?;
        let mut order = JournalOrder::new(execution_id);
        for row in &rows {
            visit(journal_row(&mut order, row, execution_id)?);
        }
        Ok(())
    }

    fn pending_wake(&self, exec_key: u64) -> Result<Option<u64>> {
        self.row(exec_key, |row| Ok(row.and_then(|row| row.wake)))
    }

    fn put_pending(&mut self, exec_key: u64, wake: u64) -> Result<()> {
        self.update_execution(exec_key, "wake = $2", &[&saturating(wake)])
    }

    fn delete_pending(&mut self, exec_key: u64, _wake: u64) -> Result<()> {
        self.update_execution(exec_key, "wake = NULL", &[])
    }

    fn lease(&self, exec_key: u64) -> Result<Option<Lease>> {
        self.row(exec_key, |row| Ok(row.and_then(|row| row.lease)))
    }

    fn put_lease(&mut self, exec_key: u64, lease: Lease) -> Result<()> {
        // Owner ids are random u64s stored bit for bit.
        let owner = lease.owner as i64;
        self.update_execution(
            exec_key,
            "owner_id = $2, lease_epoch = $3",
            &[&owner, &saturating(lease.epoch)],
        )
    }

    /// No owner: an active execution is then an orphan, a finished one
    /// simply unleased.
    fn delete_lease(&mut self, exec_key: u64) -> Result<()> {
        self.update_execution(exec_key, "owner_id = NULL", &[])
    }

    /// A lease with a negative epoch is one no perdure writes: released too.
    fn release_leases(&mut self, owner: u64) -> Result<()> {
        let sql = format!(
            "UPDATE {}.executions SET owner_id = NULL WHERE state = 1 AND owner_id IS NOT NULL \
             AND (owner_id = $1 OR lease_epoch < 0)",
            self.s()
        );
        self.rows.borrow_mut().clear();
        self.execute(&sql, &[&(owner as i64)], "cannot release leases")
            .map(drop)
    }

    fn put_orphan(&mut self, exec_key: u64) -> Result<()> {
        self.update_execution(exec_key, "owner_id = NULL", &[])
    }

    /// An orphan is an active row without owner: check-then-apply removes
    /// the mark only from an execution it has just finished (no longer
    /// active) or granted (owned), so there is nothing to write.
    fn delete_orphan(&mut self, _exec_key: u64) -> Result<()> {
        Ok(())
    }

    /// Orphans in key order, locked; those another commit holds are left to
    /// it. Each stays an orphan until the claim grants it.
    fn take_orphans(&mut self, max: usize) -> Result<Vec<Option<u64>>> {
        let sql = format!(
            "SELECT exec_key FROM {}.executions WHERE state = 1 AND owner_id IS NULL \
             ORDER BY exec_key LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED",
            self.s()
        );
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self.query(&sql, &[&limit], "cannot take orphans")?;
        Ok(rows
            .iter()
            .map(|row| u64::try_from(row.get::<_, i64>(0)).ok())
            .collect())
    }

    fn has_owner(&self, owner: u64) -> Result<bool> {
        let sql = format!("SELECT 1 FROM {}.owners WHERE owner_id = $1 FOR UPDATE", self.s());
        Ok(!self.query(&sql, &[&(owner as i64)], "cannot read an owner")?.is_empty())
    }

    fn owner(&self, owner: u64) -> Result<Option<OwnerEntry>> {
        let sql = format!(
            "SELECT {OWNER_COLUMNS} FROM {}.owners WHERE owner_id = $1 FOR UPDATE",
            self.s()
        );
        let rows = self.query(&sql, &[&(owner as i64)], "cannot read an owner")?;
        rows.first()
            .map(|row| {
                owner_row(row).map_err(|reason| Error::CorruptStore(format!("owner entry {owner:016x}: {reason}")))
            })
            .transpose()
    }

    /// Times in ms are stored as timestamps (exact: they hold µs). A new
    /// registration (a row not there, or started at another time) gets a new
    /// epoch from the store-wide `lease_epoch` sequence, as `liveness` gives
    /// one; a renewal keeps it. The mutation names no host: ''.
    fn put_owner(&mut self, owner: u64, entry: &OwnerEntry) -> Result<()> {
        let s = self.s();
        let owner = owner as i64;
        let pid = i64::from(entry.pid);
        let (started, renewed) = (saturating(entry.started_ms), saturating(entry.renewed_ms));
        let at = |n: usize| format!("(to_timestamp(0) + ${n}::bigint * interval '1 millisecond')");
        let updated = self.execute(
            &format!(
                "UPDATE {s}.owners SET pid = $2, epoch = CASE WHEN started_at = {started} THEN epoch \
                 ELSE nextval('{s}.lease_epoch') END, started_at = {started}, renewed_at = {renewed} \
                 WHERE owner_id = $1",
                started = at(3),
                renewed = at(4)
            ),
            &[&owner, &pid, &started, &renewed],
            "cannot write an owner",
        )?;
        if updated == 0 {
            self.execute(
                &format!(
                    "INSERT INTO {s}.owners (owner_id, epoch, host, pid, started_at, renewed_at) \
                     VALUES ($1, nextval('{s}.lease_epoch'), '', $2, {}, {})",
                    at(3),
                    at(4)
                ),
                &[&owner, &pid, &started, &renewed],
                "cannot register an owner",
            )?;
        }
        Ok(())
    }

    fn delete_owner(&mut self, owner: u64) -> Result<()> {
        let sql = format!("DELETE FROM {}.owners WHERE owner_id = $1", self.s());
        self.execute(&sql, &[&(owner as i64)], "cannot delete an owner")
            .map(drop)
    }

    fn has_callback(&self, callback_id: &str) -> Result<bool> {
        let sql = format!("SELECT 1 FROM {}.callbacks WHERE callback_id = $1 FOR UPDATE", self.s());
        Ok(!self.query(&sql, &[&callback_id], "cannot read a callback")?.is_empty())
    }

    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        let sql = format!(
            "SELECT {CALLBACK_COLUMNS} FROM {}.callbacks WHERE callback_id = $1 FOR UPDATE",
            self.s()
        );
        let rows = self.query(&sql, &[&callback_id], "cannot read a callback")?;
        rows.first()
            .map(|row| {
                callback_row(row).map_err(|reason| Error::CorruptStore(format!("callback {callback_id:?}: {reason}")))
            })
            .transpose()
    }

    /// An update, or an insert when there is no row: never an upsert, so
    /// that a callback another commit created after this one checked it
    /// absent fails this group (run again) rather than being overwritten.
    fn put_callback(&mut self, callback_id: &str, entry: &CallbackEntry) -> Result<()> {
        let s = self.s();
        let exec_key = key(entry.exec_key)?;
        let state = entry.state as i16;
        let (deadline, heartbeat, last) = (
            saturating(entry.deadline_ms),
            saturating(entry.heartbeat_timeout_ms),
            saturating(entry.last_heartbeat_ms),
        );
        let params: [&dyn Param; 7] = [
            &callback_id,
            &exec_key,
            &entry.op_id,
            &state,
            &deadline,
            &heartbeat,
            &last,
        ];
        let updated = self.execute(
            &format!(
                "UPDATE {s}.callbacks SET exec_key = $2, op_id = $3, state = $4, deadline_ms = $5, \
                 heartbeat_timeout_ms = $6, last_heartbeat_ms = $7 WHERE callback_id = $1"
            ),
            &params,
            "cannot write a callback",
        )?;
        if updated == 0 {
            self.execute(
                &format!(
                    "INSERT INTO {s}.callbacks (callback_id, exec_key, op_id, state, deadline_ms, \
                     heartbeat_timeout_ms, last_heartbeat_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ),
                &params,
                "cannot write a callback",
            )?;
        }
        Ok(())
    }

    fn put_timer(&mut self, timer: &Timer) -> Result<()> {
        let sql = format!(
            "INSERT INTO {}.timers (due_ms, exec_key, kind, subject) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            self.s()
        );
        self.execute(
            &sql,
            &[
                &saturating(timer.due_ms),
                &key(timer.exec_key)?,
                &(timer.kind as i16),
                &timer.subject,
            ],
            "cannot write a timer",
        )
        .map(drop)
    }

    fn delete_timer(&mut self, timer: &Timer) -> Result<bool> {
        let sql = format!(
            "DELETE FROM {}.timers WHERE due_ms = $1 AND exec_key = $2 AND kind = $3 AND subject = $4",
            self.s()
        );
        let deleted = self.execute(
            &sql,
            &[
                &saturating(timer.due_ms),
                &key(timer.exec_key)?,
                &(timer.kind as i16),
                &timer.subject,
            ],
            "cannot delete a timer",
        )?;
        Ok(deleted > 0)
    }

    /// The next value of the counter's sequence (1 first, as LMDB's
    /// counters). A value handed out by a transaction that does not commit
    /// is not given again: keys and wake values may skip, never repeat.
    fn bump(&mut self, counter: Counter) -> Result<u64> {
        let name = match counter {
            Counter::NextExec => "executions_exec_key_seq",
            Counter::WakeSeq => "wake_seq",
            Counter::LeaseEpoch => "lease_epoch",
        };
        let sql = format!("SELECT nextval('{}.{name}')", self.s());
        let rows = self.query(&sql, &[], "cannot bump a counter")?;
        let value: i64 = rows
            .first()
            .map(|row| row.get(0))
            .ok_or_else(|| Error::corrupt_store(format!("counter {name} gave no value")))?;
        u64::try_from(value).map_err(|_| Error::CorruptStore(format!("counter {name}: {value} is negative")))
    }
}
