//! The read side of the PostgreSQL store: the [`Backend`] questions,
//! answered from the schema v1 tables (schema.rs, docs/format.md §8) with the
//! same types and the same meaning as the LMDB store (docs/format.md §2).
//!
//! An `executions` row folds together what LMDB keeps apart: the metadata,
//! the id index, the lease (`owner_id`, `lease_epoch` of an ACTIVE row), the
//! orphan mark (an ACTIVE row without owner) and the pending wake-up
//! (`wake`, NULL when not runnable). Journal rows hold the very bytes of
//! LMDB journal values and are decoded by the same record decoder.
//!
//! Rows carry no checksum, but a value no perdure writes (a negative key or
//! time, an unknown state or kind, a gap in a journal) is reported as the
//! damage it is, naming the execution, never believed and never a panic.
//!
//! [`Backend`]: crate::backend::Backend

use std::collections::HashSet;

use parking_lot::Mutex;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, Row, Statement, Transaction};

use super::PgLocation;
use crate::backend::{bad_journal, ExecSummary, InvocationData, JournalOrder, Lease, OwnerState};
use crate::error::{Error, Result};
use crate::keys::{CallbackEntry, CallbackState, ExecMeta, ExecState, OwnerEntry, ParentLink, Timer, TimerKind};
use crate::record::Record;
use crate::replay::ReplayIndex;

/// The columns of `executions` that [`exec_row`] reads, in its order.
pub(super) const EXEC_COLUMNS: &str =
    "exec_key, execution_id, function, state, created_ms, updated_ms, parent_key, parent_op, owner_id, lease_epoch, wake, next_seq";

/// The columns of `callbacks` that [`callback_row`] reads, in its order.
pub(super) const CALLBACK_COLUMNS: &str =
    "exec_key, op_id, state, deadline_ms, heartbeat_timeout_ms, last_heartbeat_ms";

/// The columns of `owners` that [`owner_row`] reads, in its order (times in
/// ms since the Unix epoch).
pub(super) const OWNER_COLUMNS: &str = "owner_id, pid, floor(extract(epoch FROM started_at) * 1000)::bigint, \
     floor(extract(epoch FROM renewed_at) * 1000)::bigint";

/// How many records to make room for before reading a journal, at most
/// (the count comes from the rows, but a vector grows past it anyway).
const MAX_PREALLOCATED: usize = 1 << 16;

/// The SQL of every question, with the schema's name filled in.
struct Sql {
    exec_key_of: String,
    execution: String,
    execution_by_id: String,
    journal: String,
    execution_and_journal: String,
    last_record: String,
    list: String,
    callback: String,
    timers_of: String,
    wake_seq: String,
    owners: String,
    woken: String,
    orphans: String,
    other_owners: String,
}

impl Sql {
    fn new(s: &str) -> Sql {
        Sql {
            exec_key_of: format!("SELECT exec_key FROM {s}.executions WHERE execution_id = $1"),
            execution: format!("SELECT {EXEC_COLUMNS} FROM {s}.executions WHERE exec_key = $1"),
            execution_by_id: format!("SELECT {EXEC_COLUMNS} FROM {s}.executions WHERE execution_id = $1"),
            journal: format!("SELECT seq, record FROM {s}.journal WHERE exec_key = $1 ORDER BY seq"),
            // The row and its whole journal as two arrays, in one statement:
            // one round trip, one snapshot, one message (rows cost more to
            // send and receive than the records they hold), and no sort on
            // the server: the records are put in order here, and their
            // numbers checked.
            execution_and_journal: format!(
                "SELECT {EXEC_COLUMNS}, j.seqs, j.records FROM {s}.executions e, \
                 LATERAL (SELECT array_agg(seq) AS seqs, array_agg(record) AS records \
                          FROM {s}.journal WHERE exec_key = e.exec_key) j \
                 WHERE e.exec_key = $1"
            ),
            last_record: format!(
                "SELECT j.seq, j.record, e.execution_id FROM {s}.journal j \
                 LEFT JOIN {s}.executions e ON e.exec_key = j.exec_key \
                 WHERE j.exec_key = $1 ORDER BY j.seq DESC LIMIT 1"
            ),
            // Keyset pages in start order: a damaged row does not count
            // towards the limit, so a short page is followed by the next.
            list: format!(
                "SELECT {EXEC_COLUMNS} FROM {s}.executions \
                 WHERE exec_key > $1 AND ($2::smallint IS NULL OR state = $2) \
                 AND ($3::text IS NULL OR function = $3) ORDER BY exec_key LIMIT $4"
            ),
            callback: format!("SELECT {CALLBACK_COLUMNS} FROM {s}.callbacks WHERE callback_id = $1"),
            // LMDB's order: the key's bytes, the subject compared as bytes.
            timers_of: format!(
                "SELECT due_ms, exec_key, kind, subject FROM {s}.timers WHERE exec_key = ANY($1) \
                 ORDER BY due_ms, exec_key, kind, subject COLLATE \"C\""
            ),
            wake_seq: format!("SELECT last_value, is_called FROM {s}.wake_seq"),
            owners: format!("SELECT {OWNER_COLUMNS} FROM {s}.owners"),
            woken: format!("SELECT exec_key FROM {s}.executions WHERE owner_id = $1 AND wake IS NOT NULL"),
            orphans: format!("SELECT EXISTS (SELECT 1 FROM {s}.executions WHERE state = 1 AND owner_id IS NULL)"),
            // Crashed: the owner's session lock is free (pg_locks shows a
            // bigint advisory key as its two 32-bit halves).
            other_owners: format!(
                "SELECT o.owner_id, floor(extract(epoch FROM o.renewed_at) * 1000)::bigint, \
                 NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND l.classid::bigint = ((o.owner_id >> 32) & 4294967295) \
                     AND l.objid::bigint = (o.owner_id & 4294967295) AND l.objsubid = 1) \
                 FROM {s}.owners o WHERE o.owner_id <> $1"
            ),
        }
    }
}

/// Every question, prepared once on the connection: a read is then one
/// round trip per statement.
struct Statements {
    exec_key_of: Statement,
    execution: Statement,
    execution_by_id: Statement,
    journal: Statement,
    execution_and_journal: Statement,
    last_record: Statement,
    list: Statement,
    callback: Statement,
    timers_of: Statement,
    wake_seq: Statement,
    owners: Statement,
    woken: Statement,
    orphans: Statement,
    other_owners: Statement,
}

impl Statements {
    fn prepare(client: &mut Client, sql: &Sql) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            exec_key_of: client.prepare(&sql.exec_key_of)?,
            execution: client.prepare(&sql.execution)?,
            execution_by_id: client.prepare(&sql.execution_by_id)?,
            journal: client.prepare(&sql.journal)?,
            execution_and_journal: client.prepare(&sql.execution_and_journal)?,
            last_record: client.prepare(&sql.last_record)?,
            list: client.prepare(&sql.list)?,
            callback: client.prepare(&sql.callback)?,
            timers_of: client.prepare(&sql.timers_of)?,
            wake_seq: client.prepare(&sql.wake_seq)?,
            owners: client.prepare(&sql.owners)?,
            woken: client.prepare(&sql.woken)?,
            orphans: client.prepare(&sql.orphans)?,
            other_owners: client.prepare(&sql.other_owners)?,
        })
    }
}

/// One connection that answers the read questions of a PostgreSQL store.
pub struct PgReads {
    client: Mutex<Client>,
    location: PgLocation,
    sql: Statements,
}

/// An `executions` row, read and checked.
pub(super) struct ExecRow {
    pub(super) exec_key: u64,
    pub(super) meta: ExecMeta,
    pub(super) wake: Option<u64>,
    pub(super) lease: Option<Lease>,
    /// How many records the journal holds, as the row says.
    pub(super) next_seq: i32,
}

impl ExecRow {
    /// How many records to make room for before reading the journal: the
    /// row's count, bounded (it may be wrong; a vector grows anyway).
    fn capacity(&self) -> usize {
        usize::try_from(self.next_seq).unwrap_or(0).min(MAX_PREALLOCATED)
    }

    fn summary(self) -> ExecSummary {
        ExecSummary {
            exec_key: self.exec_key,
            pending: self.wake.is_some(),
            meta: self.meta,
        }
    }
}

impl PgReads {
    /// A new connection to the store at `location` (its tables must exist:
    /// see `schema::ensure`).
    pub fn connect(location: &PgLocation) -> Result<PgReads> {
        PgReads::new(location.connect()?, location.clone())
    }

    /// Reads through `client`, a connection to the store at `location`,
    /// once every question is prepared on it.
    pub fn new(mut client: Client, location: PgLocation) -> Result<PgReads> {
        let sql = Statements::prepare(&mut client, &Sql::new(location.schema()))
            .map_err(location.failed("cannot prepare the store's reads"))?;
        Ok(PgReads {
            client: Mutex::new(client),
            sql,
            location,
        })
    }

    fn failed(&self, what: &str) -> impl FnOnce(postgres::Error) -> Error {
        self.location.failed(what)
    }

    /// Runs `f` in a read-only REPEATABLE READ transaction: every statement
    /// in it sees the same snapshot, as an LMDB read transaction does.
    fn snapshot<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut client = self.client.lock();
        let mut txn = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(self.failed("cannot begin a read"))?;
        let value = f(&mut txn)?;
        txn.commit().map_err(self.failed("cannot end a read"))?;
        Ok(value)
    }

    /// The one row (or none) a prepared question answers, outside any
    /// snapshot.
    fn row(&self, statement: &Statement, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Option<Row>> {
        self.client
            .lock()
            .query_opt(statement, params)
            .map_err(self.failed(what))
    }

    /// Every row a prepared question answers, outside any snapshot.
    fn rows(&self, statement: &Statement, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<Vec<Row>> {
        self.client.lock().query(statement, params).map_err(self.failed(what))
    }

    pub fn exec_key_of(&self, execution_id: &str) -> Result<Option<u64>> {
        let row = self.row(
            &self.sql.exec_key_of,
            &[&execution_id],
            "cannot look up an execution id",
        )?;
        row.map(|row| exec_key_from(row.get(0), execution_id)).transpose()
    }

    pub fn execution(&self, exec_key: u64) -> Result<Option<ExecSummary>> {
        let Some(key) = key_param(exec_key) else {
            return Ok(None);
        };
        let row = self.row(&self.sql.execution, &[&key], "cannot read an execution")?;
        Ok(row.map(|row| exec_row(&row)).transpose()?.map(ExecRow::summary))
    }

    pub fn execution_by_id(&self, execution_id: &str) -> Result<Option<ExecSummary>> {
        let row = self.row(&self.sql.execution_by_id, &[&execution_id], "cannot read an execution")?;
        Ok(row.map(|row| exec_row(&row)).transpose()?.map(ExecRow::summary))
    }

    /// Everything an invocation of `exec_key` needs, from one snapshot: the
    /// metadata, the wake-up value seen (0 when not pending), the lease its
    /// writes will be fenced by, and the journal's replay index.
    pub fn load_invocation(&self, exec_key: u64) -> Result<InvocationData> {
        let (row, index) = self.execution_with_journal(
            exec_key,
            |row| ReplayIndex::with_capacity(row.capacity()),
            ReplayIndex::add,
        )?;
        Ok(InvocationData {
            exec_key,
            index,
            wake: row.wake.unwrap_or(0),
            lease: row.lease,
            meta: row.meta,
        })
    }

    pub fn journal(&self, exec_key: u64) -> Result<Vec<Record>> {
        let (_, records) =
            self.execution_with_journal(exec_key, |row| Vec::with_capacity(row.capacity()), Vec::push)?;
        Ok(records)
    }

    /// An execution's row and its journal, read in one statement: `start`
    /// makes what the records go into from the row, `add` puts each in, in
    /// order (checked by [`JournalOrder`] as the rows arrive: a long journal
    /// is held in memory once, as records).
    fn execution_with_journal<T>(
        &self,
        exec_key: u64,
        start: impl FnOnce(&ExecRow) -> T,
        mut add: impl FnMut(&mut T, Record),
    ) -> Result<(ExecRow, T)> {
        let key = key_param(exec_key).ok_or_else(|| no_metadata(exec_key))?;
        let row = self
            .client
            .lock()
            .query_opt(&self.sql.execution_and_journal, &[&key])
            .map_err(self.failed("cannot read an execution and its journal"))?
            .ok_or_else(|| no_metadata(exec_key))?;
        let head = exec_row(&row)?;
        let execution_id = head.meta.execution_id.as_str();
        let seqs: Vec<i32> = row.get::<_, Option<Vec<i32>>>(12).unwrap_or_default();
        let records: Vec<&[u8]> = row.get::<_, Option<Vec<&[u8]>>>(13).unwrap_or_default();
        if seqs.len() != records.len() {
            return Err(bad_journal(execution_id, "record and sequence counts differ".into()));
        }
        let mut journal: Vec<(i32, &[u8])> = seqs.into_iter().zip(records).collect();
        if !journal.is_sorted_by_key(|(seq, _)| *seq) {
            journal.sort_unstable_by_key(|(seq, _)| *seq);
        }
        let mut into = start(&head);
        let mut order = JournalOrder::new(execution_id);
        for (seq, bytes) in journal {
            add(&mut into, order.next(sequence_from(seq, execution_id)?, bytes)?);
        }
        Ok((head, into))
    }

    /// The last record of a journal: the outcome of a finished execution.
    pub fn last_record(&self, exec_key: u64) -> Result<Option<Record>> {
        let Some(key) = key_param(exec_key) else {
            return Ok(None);
        };
        let Some(row) = self.row(&self.sql.last_record, &[&key], "cannot read a journal")? else {
            return Ok(None);
        };
        let execution_id: Option<String> = row.get(2);
        let execution_id = execution_id.unwrap_or_default();
        let sequence = sequence_from(row.get(0), &execution_id)?;
        Record::decode(row.get::<_, &[u8]>(1))
            .map(Some)
            .map_err(|reason| Error::CorruptRecord {
                execution_id,
                sequence,
                reason,
            })
    }

    /// Executions in start order, filtered; `limit` 0 means no limit. Rows
    /// that hold values no perdure writes are not listed but returned apart,
    /// each as the error naming its execution.
    pub fn list(
        &self,
        state: Option<ExecState>,
        function: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExecSummary>, Vec<Error>)> {
        let state = state.map(|state| state as i16);
        self.snapshot(|txn| {
            let mut rows = Vec::new();
            let mut damaged = Vec::new();
            let mut after: i64 = 0;
            loop {
                let wanted = (limit != 0).then(|| i64::try_from(limit - rows.len()).unwrap_or(i64::MAX));
                let page = txn
                    .query(&self.sql.list, &[&after, &state, &function, &wanted])
                    .map_err(self.failed("cannot list executions"))?;
                let full = wanted.is_some_and(|wanted| page.len() as i64 == wanted);
                for row in &page {
                    after = row.get(0);
                    match exec_row(row) {
                        Ok(found) => rows.push(found.summary()),
                        Err(err) => damaged.push(err),
                    }
                }
                // Done: everything was asked for, the rows ran out, or the
                // limit is met.
                if !full || rows.len() == limit {
                    return Ok((rows, damaged));
                }
            }
        })
    }

    pub fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        let row = self.row(&self.sql.callback, &[&callback_id], "cannot read a callback")?;
        row.map(|row| {
            callback_row(&row).map_err(|reason| Error::CorruptStore(format!("callback {callback_id:?}: {reason}")))
        })
        .transpose()
    }

    /// The engine that runs an execution, and under which grant, if any.
    pub fn lease(&self, exec_key: u64) -> Result<Option<Lease>> {
        let Some(key) = key_param(exec_key) else {
            return Ok(None);
        };
        let row = self.row(&self.sql.execution, &[&key], "cannot read a lease")?;
        Ok(row.map(|row| exec_row(&row)).transpose()?.and_then(|row| row.lease))
    }

    /// The durable timers of the given executions, in deadline order; apart,
    /// the executions with a timer no perdure writes (to run now: a replay
    /// re-arms what it still waits for).
    pub fn timers_of(&self, exec_keys: &HashSet<u64>) -> Result<(Vec<Timer>, Vec<u64>)> {
        let keys: Vec<i64> = exec_keys.iter().filter_map(|&key| key_param(key)).collect();
        let found = self.rows(&self.sql.timers_of, &[&keys], "cannot read timers")?;
        let mut timers = Vec::new();
        let mut damaged = Vec::new();
        for row in &found {
            let exec_key: i64 = row.get(1);
            let kind: i16 = row.get(2);
            let timer = u64::try_from(row.get::<_, i64>(0)).ok().and_then(|due_ms| {
                Some(Timer {
                    due_ms,
                    exec_key: u64::try_from(exec_key).ok()?,
                    kind: TimerKind::from_u8(u8::try_from(kind).ok()?)?,
                    subject: row.get(3),
                })
            });
            match timer {
                Some(timer) => timers.push(timer),
                // Only keys of the set were asked for, so the key is one of them.
                None => damaged.extend(u64::try_from(exec_key).ok()),
            }
        }
        Ok((timers, damaged))
    }

    /// The wake counter: the last value the `wake_seq` sequence gave, 0
    /// before its first (as LMDB's `meta/wake_seq`).
    pub fn wake_seq(&self) -> Result<u64> {
        let row = self
            .client
            .lock()
            .query_one(&self.sql.wake_seq, &[])
            .map_err(self.failed("cannot read the wake counter"))?;
        let (value, called): (i64, bool) = (row.get(0), row.get(1));
        match (called, u64::try_from(value)) {
            (false, _) => Ok(0),
            (true, Ok(value)) => Ok(value),
            (true, Err(_)) => Err(Error::CorruptStore(format!("counter wake_seq: {value} is negative"))),
        }
    }

    /// The registered engines, by owner id (in the unsigned order of LMDB's
    /// keys). Times are the server's, in ms since the Unix epoch.
    pub fn owners(&self) -> Result<Vec<(u64, OwnerEntry)>> {
        let found = self.rows(&self.sql.owners, &[], "cannot read the owners")?;
        let mut owners = Vec::with_capacity(found.len());
        for row in &found {
            // Owner ids are random u64s stored bit for bit.
            let owner = row.get::<_, i64>(0) as u64;
            let entry =
                owner_row(row).map_err(|reason| Error::CorruptStore(format!("owner entry {owner:016x}: {reason}")))?;
            owners.push((owner, entry));
        }
        owners.sort_unstable_by_key(|(owner, _)| *owner);
        Ok(owners)
    }

    /// Every execution leased to `owner` that waits to run. A set, not the
    /// wake-ups after a counter value: sequence values are handed out when
    /// asked for, not in commit order, so a cursor over them could pass a
    /// wake-up that commits late.
    pub fn woken(&self, owner: u64) -> Result<Vec<u64>> {
        let found = self.rows(&self.sql.woken, &[&(owner as i64)], "cannot read wake-ups")?;
        Ok(found
            .iter()
            .filter_map(|row| u64::try_from(row.get::<_, i64>(0)).ok())
            .collect())
    }

    /// Whether some active execution has no owner.
    pub fn has_orphans(&self) -> Result<bool> {
        let row = self
            .client
            .lock()
            .query_one(&self.sql.orphans, &[])
            .map_err(self.failed("cannot look for orphans"))?;
        Ok(row.get(0))
    }

    /// The owners other than `me`, each with whether its session lock is
    /// free (it crashed) and its last renewal.
    pub fn other_owners(&self, me: u64) -> Result<Vec<OwnerState>> {
        let found = self.rows(&self.sql.other_owners, &[&(me as i64)], "cannot read the owners")?;
        Ok(found
            .iter()
            .map(|row| OwnerState {
                owner: row.get::<_, i64>(0) as u64,
                renewed_ms: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                crashed: row.get(2),
            })
            .collect())
    }

    /// Reads every row and checks it as the engine would: (rows read, the
    /// damage found, each naming what it is in).
    pub fn check(&self) -> Result<(usize, Vec<Error>)> {
        let s = self.location.schema();
        self.snapshot(|txn| {
            let mut entries = 0;
            let mut damaged = Vec::new();
            let executions = txn
                .query(
                    &format!("SELECT {EXEC_COLUMNS} FROM {s}.executions ORDER BY exec_key"),
                    &[],
                )
                .map_err(self.failed("cannot read executions"))?;
            for row in &executions {
                entries += 1;
                match exec_row(row) {
                    Ok(found) => {
                        let mut records = 0usize;
                        match self.visit_journal_in(txn, found.exec_key, &found.meta.execution_id, |_| records += 1) {
                            Ok(()) => entries += records,
                            Err(err @ Error::Postgres { .. }) => return Err(err),
                            Err(err) => damaged.push(err),
                        }
                    }
                    Err(err) => damaged.push(err),
                }
            }
            let callbacks = txn
                .query(
                    &format!("SELECT callback_id, {CALLBACK_COLUMNS} FROM {s}.callbacks"),
                    &[],
                )
                .map_err(self.failed("cannot read callbacks"))?;
            for row in &callbacks {
                entries += 1;
                let id: String = row.get(0);
                if let Err(reason) = callback_fields(row, 1) {
                    damaged.push(Error::CorruptStore(format!("callback {id:?}: {reason}")));
                }
            }
            let orphan_journal: i64 = txn
                .query_one(
                    &format!(
                        "SELECT count(DISTINCT j.exec_key) FROM {s}.journal j \
                         LEFT JOIN {s}.executions e ON e.exec_key = j.exec_key WHERE e.exec_key IS NULL"
                    ),
                    &[],
                )
                .map_err(self.failed("cannot read journals"))?
                .get(0);
            if orphan_journal > 0 {
                damaged.push(Error::CorruptStore(format!(
                    "{orphan_journal} journals belong to no execution"
                )));
            }
            Ok((entries, damaged))
        })
    }

    /// Decodes an execution's records in order, as the rows arrive (a long
    /// journal is held in memory once, as records); a record that does not
    /// decode stops the walk with the error naming the execution and the
    /// sequence number. Sequence numbers must count 0, 1, 2, ... with no
    /// gap: a record read under the wrong number would replay the wrong
    /// operation.
    fn visit_journal_in(
        &self,
        txn: &mut Transaction<'_>,
        exec_key: u64,
        execution_id: &str,
        mut visit: impl FnMut(Record),
    ) -> Result<()> {
        let Some(key) = key_param(exec_key) else {
            return Ok(());
        };
        let mut rows = txn
            .query_raw(&self.sql.journal, [key])
            .map_err(self.failed("cannot read a journal"))?;
        let mut order = JournalOrder::new(execution_id);
        while let Some(row) = rows.next().map_err(self.failed("cannot read a journal"))? {
            visit(journal_row(&mut order, &row, execution_id)?);
        }
        Ok(())
    }
}

/// An exec key as the bigint it is stored as; `None` for one no execution
/// can have (at or above 2^63), which is then simply not found.
pub(super) fn key_param(exec_key: u64) -> Option<i64> {
    i64::try_from(exec_key).ok()
}

pub(super) fn no_metadata(exec_key: u64) -> Error {
    Error::corrupt_store(format!("execution key {exec_key} has no metadata"))
}

pub(super) fn exec_key_from(value: i64, execution_id: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::CorruptExecution {
        execution_id: execution_id.to_string(),
        what: "id index entry",
        reason: format!("execution key {value} is negative"),
    })
}

pub(super) fn sequence_from(value: i32, execution_id: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| bad_journal(execution_id, format!("sequence number {value} is negative")))
}

/// A journal row (`seq, record`) as the record it holds, checked to come
/// next in `order`.
pub(super) fn journal_row(order: &mut JournalOrder<'_>, row: &Row, execution_id: &str) -> Result<Record> {
    let sequence = sequence_from(row.get(0), execution_id)?;
    order.next(sequence, row.get::<_, &[u8]>(1))
}

/// A stored number perdure holds as u64, or why it cannot be one.
fn unsigned(value: i64, what: &str) -> Result<u64, String> {
    u64::try_from(value).map_err(|_| format!("{what} {value} is negative"))
}

/// An `executions` row (columns [`EXEC_COLUMNS`]) as LMDB's values would
/// hold it; a value no perdure writes is the execution's damage.
pub(super) fn exec_row(row: &Row) -> Result<ExecRow> {
    let execution_id: String = row.get(1);
    let damaged = |what: &'static str| {
        let execution_id = execution_id.clone();
        move |reason: String| Error::CorruptExecution {
            execution_id,
            what,
            reason,
        }
    };
    let exec_key = exec_key_from(row.get(0), &execution_id)?;
    let meta = exec_meta(row, &execution_id).map_err(damaged("metadata"))?;
    let wake = row
        .get::<_, Option<i64>>(10)
        .map(|wake| unsigned(wake, "wake-up value"))
        .transpose()
        .map_err(damaged("wake-up entry"))?;
    let owner: Option<i64> = row.get(8);
    let lease = match owner {
        // Only an active execution is leased: a finished one keeps no grant.
        Some(owner) if meta.state == ExecState::Active => Some(Lease {
            owner: owner as u64,
            epoch: unsigned(row.get(9), "lease epoch").map_err(damaged("lease"))?,
        }),
        _ => None,
    };
    Ok(ExecRow {
        exec_key,
        meta,
        wake,
        lease,
        next_seq: row.get(11),
    })
}

fn exec_meta(row: &Row, execution_id: &str) -> Result<ExecMeta, String> {
    let state: i16 = row.get(3);
    let state = u8::try_from(state)
        .ok()
        .and_then(ExecState::from_u8)
        .ok_or_else(|| format!("unknown execution state {state}"))?;
    let parent = match (row.get::<_, Option<i64>>(6), row.get::<_, Option<String>>(7)) {
        (Some(parent_key), Some(op_id)) => Some(ParentLink {
            exec_key: unsigned(parent_key, "parent execution key")?,
            op_id,
        }),
        (None, None) => None,
        _ => return Err("a parent key without its operation, or the reverse".into()),
    };
    Ok(ExecMeta {
        state,
        created_ms: unsigned(row.get(4), "created_ms")?,
        updated_ms: unsigned(row.get(5), "updated_ms")?,
        execution_id: execution_id.to_string(),
        function: row.get(2),
        parent,
    })
}

pub(super) fn callback_row(row: &Row) -> Result<CallbackEntry, String> {
    callback_fields(row, 0)
}

/// The callback whose [`CALLBACK_COLUMNS`] start at column `at`.
fn callback_fields(row: &Row, at: usize) -> Result<CallbackEntry, String> {
    let state: i16 = row.get(at + 2);
    Ok(CallbackEntry {
        state: u8::try_from(state)
            .ok()
            .and_then(CallbackState::from_u8)
            .ok_or_else(|| format!("unknown callback state {state}"))?,
        exec_key: unsigned(row.get(at), "execution key")?,
        deadline_ms: unsigned(row.get(at + 3), "deadline_ms")?,
        heartbeat_timeout_ms: unsigned(row.get(at + 4), "heartbeat_timeout_ms")?,
        last_heartbeat_ms: unsigned(row.get(at + 5), "last_heartbeat_ms")?,
        op_id: row.get(at + 1),
    })
}

pub(super) fn owner_row(row: &Row) -> Result<OwnerEntry, String> {
    let pid: i64 = row.get(1);
    Ok(OwnerEntry {
        pid: u32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?,
        started_ms: unsigned(row.get(2), "started_at (ms)")?,
        renewed_ms: unsigned(row.get(3), "renewed_at (ms)")?,
    })
}
