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
//! server breaks by failing one, run again here. The group's writes are
//! held and sent as one statement just before COMMIT (pending.rs, phase 2
//! of §4.3), so a group costs a handful of round trips whatever its size.
//! Fewer still, pipelined (link.rs): BEGIN goes with the group's first
//! statement (the lock, the lookups of the ids and callbacks it names, in
//! one round trip), the writes with COMMIT; so two round trips in all,
//! plus one per counter bumped and per row, callback or owner first met
//! on the way.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

mod link;
mod pending;
mod prepared;

use futures_util::future::{join, join3};
use postgres::types::{ToSql, Type};
use postgres::{Row, Statement};

use super::reads::{
    callback_row, exec_key_from, exec_row, journal_row, key_param, owner_row, sequence_from, ExecRow, CALLBACK_COLUMNS,
    EXEC_COLUMNS, OWNER_COLUMNS,
};
use super::PgLocation;
use crate::backend::apply::{apply_batch, Counter, TxnView};
use crate::backend::{JournalOrder, Lease, Mutation, Outcome};
use crate::error::{Error, Result};
use crate::keys::{CallbackEntry, ExecMeta, ExecState, OwnerEntry, Timer};
use crate::record::Record;
use link::Link;
use pending::{CallbackColumns, Change, MetaColumns, Pending, TimerRow};
use prepared::Prepared;

/// A connection that commits groups of batches, each in one transaction:
/// each batch's answer, or the error that failed the whole group (nothing
/// of it is stored then; a failure of the COMMIT itself leaves the group's
/// fate unknown, to be resolved by reading, never by retrying blind). A
/// group the server rolled back for a deadlock with another group is run
/// again, a few times.
///
/// The statements it runs are kept prepared (unless made
/// [`PgWriter::unprepared`]): after the first groups, the server neither
/// parses nor plans them again.
pub struct PgWriter {
    link: Link,
    location: PgLocation,
    prepared: Prepared,
}

impl PgWriter {
    /// A writer over a new connection to the store at `location` (used by
    /// nothing else: its prepared statements are the writer's).
    pub fn connect(location: &PgLocation) -> Result<PgWriter> {
        Ok(PgWriter {
            link: Link::connect(location)?,
            location: location.clone(),
            prepared: Prepared::kept(),
        })
    }

    /// A writer whose statements go as text each time (nothing is kept on
    /// the connection from one group to the next).
    pub fn unprepared(location: &PgLocation) -> Result<PgWriter> {
        Ok(PgWriter {
            prepared: Prepared::none(),
            ..PgWriter::connect(location)?
        })
    }

    /// Commits a group of batches in one transaction (as the type says).
    pub fn commit(&mut self, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
        let mut tries = 1;
        loop {
            match try_group(&self.link, &self.location, &mut self.prepared, group) {
                Err(err) if tries < MAX_TRIES && rolled_back_to_retry(&err) => tries += 1,
                other => return other,
            }
        }
    }

    /// Runs `sql`, statements of the caller's own between groups (not in a
    /// group's transaction), sent as text.
    pub fn batch_execute(&self, sql: &str) -> std::result::Result<(), postgres::Error> {
        self.link.block_on(self.link.client().batch_execute(sql))
    }

    /// Runs a statement of the caller's own between groups: how many rows
    /// it changed.
    pub fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> std::result::Result<u64, postgres::Error> {
        self.link.block_on(self.link.client().execute(sql, params))
    }

    /// Whether the connection is gone (to be opened again).
    pub fn is_closed(&self) -> bool {
        self.link.client().is_closed()
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

fn try_group(
    link: &Link,
    location: &PgLocation,
    prepared: &mut Prepared,
    group: &[Vec<Mutation>],
) -> Result<Vec<Result<Vec<Outcome>>>> {
    let mut view = PgTxn {
        link,
        open: Cell::new(false),
        location,
        prepared: RefCell::new(prepared),
        ids: HashMap::new(),
        known_ids: RefCell::new(HashMap::new()),
        rows: RefCell::new(HashMap::new()),
        callbacks: RefCell::new(HashMap::new()),
        owners: RefCell::new(HashSet::new()),
        pending: Pending::default(),
    };
    let answer = (|| {
        view.lock_rows(group)?;
        // No savepoint per batch: apply_batch checks a whole batch before it
        // writes anything, so a refused batch has written nothing to undo (and
        // what it read and locked stays true for the batches after it).
        let mut results: Vec<Result<Vec<Outcome>>> = Vec::with_capacity(group.len());
        for batch in group {
            results.push(apply_batch(&mut view, batch)?);
        }
        view.commit()?;
        Ok(results)
    })();
    if answer.is_err() && view.open.get() {
        // Whatever this answers, the connection is fit for the next group
        // or closed (and opened again by its user).
        let _ = link.block_on(link.client().batch_execute("ROLLBACK"));
    }
    answer
}

/// Runs `first` then `then`, pipelined: `then` is sent only once `first`
/// was (a statement is sent whole when its future is first polled, or not
/// at all: an error before, say a parameter that cannot be encoded, ends
/// it at once), so that a statement never runs where the one before it
/// was not sent. `None` for `then`: `first` failed so, and `then` was not
/// run.
async fn pipelined<T, E, B: Future>(
    first: impl Future<Output = std::result::Result<T, E>>,
    then: impl FnOnce() -> B,
) -> (std::result::Result<T, E>, Option<B::Output>) {
    let mut first = pin!(first);
    match std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await {
        Poll::Ready(Err(err)) => (Err(err), None),
        Poll::Ready(Ok(value)) => (Ok(value), Some(then().await)),
        Poll::Pending => {
            let (first, then) = join(first, then()).await;
            (first, Some(then))
        }
    }
}

/// One transaction seen by check-then-apply. Its getters take `&self`, a
/// statement needs the transaction mutably: hence the cells (never
/// borrowed across a call out).
///
/// Writes are held in `pending` and sent together by [`PgTxn::flush`]
/// just before COMMIT; every read answers as if they were sent: the rows
/// and callbacks the group wrote are answered from the caches below, a
/// journal from the stored records then the pending ones, and a statement
/// the server must run over rows the group may have written (taking the
/// orphans, releasing leases: rare, never a step's path) flushes first.
struct PgTxn<'a> {
    link: &'a Link,
    /// Whether BEGIN was sent (and COMMIT not yet): it goes with the
    /// group's first statement, pipelined.
    open: Cell<bool>,
    location: &'a PgLocation,
    prepared: RefCell<&'a mut Prepared>,
    /// Execution ids given to new keys whose row `put_meta` has not yet
    /// made (the row needs both).
    ids: HashMap<u64, String>,
    /// Execution ids looked up or created: `None`, known absent (looked up
    /// for a creation, whose insert would meet the row another commit made
    /// meanwhile and fail the group, to be run again).
    known_ids: RefCell<HashMap<String, Option<u64>>>,
    /// The `executions` rows read (and so locked) as the group has left
    /// them: nobody else can change a locked row, so a batch's checks and
    /// writes read each once. `None`: no such row.
    rows: RefCell<HashMap<u64, Option<ExecRow>>>,
    /// The callbacks read (locked) or written, as the group has left them.
    callbacks: RefCell<HashMap<String, CallbackSlot>>,
    /// Owners found registered (their rows locked).
    owners: RefCell<HashSet<u64>>,
    pending: Pending,
}

/// A callback as the group has left it.
struct CallbackSlot {
    row: CallbackRow,
    /// Whether the server holds a row for it (a write is then an update).
    stored: bool,
}

enum CallbackRow {
    Absent,
    Entry(CallbackEntry),
    /// Why the stored row is no callback entry.
    Damaged(String),
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

param!(
    i16 => Type::INT2,
    i32 => Type::INT4,
    i64 => Type::INT8,
    &str => Type::TEXT,
    String => Type::TEXT,
    Vec<u8> => Type::BYTEA,
    Vec<i64> => Type::INT8_ARRAY,
    Vec<Option<i64>> => Type::INT8_ARRAY,
    Vec<i32> => Type::INT4_ARRAY,
    Vec<i16> => Type::INT2_ARRAY,
    Vec<bool> => Type::BOOL_ARRAY,
    Vec<String> => Type::TEXT_ARRAY,
    Vec<Option<String>> => Type::TEXT_ARRAY,
    Vec<Vec<u8>> => Type::BYTEA_ARRAY,
);

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

fn timer_row(timer: &Timer) -> Result<TimerRow> {
    Ok((
        saturating(timer.due_ms),
        key(timer.exec_key)?,
        timer.kind as i16,
        timer.subject.clone(),
    ))
}

fn meta_columns(meta: &ExecMeta) -> MetaColumns {
    MetaColumns {
        function: meta.function.clone(),
        state: meta.state as i16,
        created_ms: saturating(meta.created_ms),
        updated_ms: saturating(meta.updated_ms),
        parent_key: meta.parent.as_ref().map(|parent| saturating(parent.exec_key)),
        parent_op: meta.parent.as_ref().map(|parent| parent.op_id.clone()),
    }
}

impl PgTxn<'_> {
    fn s(&self) -> &str {
        self.location.schema()
    }

    fn failed(&self, what: &str) -> impl FnOnce(postgres::Error) -> Error {
        self.location.failed(what)
    }

    /// The statement for `sql`, prepared if it is new (outside the
    /// pipelines: the statements of one are sent in the order given).
    fn statement(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)], what: &str) -> Result<Option<Statement>> {
        let mut prepared = self.prepared.borrow_mut();
        self.link
            .block_on(prepared.statement(self.link.client(), sql, params))
            .map_err(self.failed(what))
    }

    /// Runs `reads` in the group's transaction: if it is not yet open, the
    /// BEGIN that opens it goes with them, pipelined. Reads only: were the
    /// BEGIN refused, they would have run outside any transaction (a write
    /// there would stay).
    fn read<T, F: Future<Output = Result<T>>>(&self, reads: impl FnOnce() -> F) -> Result<T> {
        if self.open.get() {
            return self.link.block_on(reads());
        }
        self.open.set(true);
        let begin = self.link.client().batch_execute("BEGIN");
        let (began, read) = self.link.block_on(pipelined(begin, reads));
        began.map_err(self.failed("cannot begin a commit"))?;
        read.unwrap_or_else(|| unreachable!("run once BEGIN was sent"))
    }

    /// Opens the group's transaction if it is not yet (a round trip of
    /// its own: see [`PgTxn::read`]).
    fn open(&self) -> Result<()> {
        if !self.open.get() {
            self.open.set(true);
            self.link
                .block_on(self.link.client().batch_execute("BEGIN"))
                .map_err(self.failed("cannot begin a commit"))?;
        }
        Ok(())
    }

    fn query(&self, sql: &str, params: &[&dyn Param], what: &str) -> Result<Vec<Row>> {
        let params = typed(params);
        let statement = self.statement(sql, &params, what)?;
        self.read(|| async {
            prepared::query(self.link.client(), statement.as_ref(), sql, &params)
                .await
                .map_err(self.failed(what))
        })
    }

    fn execute(&self, sql: &str, params: &[&dyn Param], what: &str) -> Result<u64> {
        let params = typed(params);
        let statement = self.statement(sql, &params, what)?;
        self.open()?;
        self.link
            .block_on(prepared::execute(self.link.client(), statement.as_ref(), sql, &params))
            .map_err(self.failed(what))
    }

    /// Sends every pending write, in one statement.
    fn flush(&mut self) -> Result<()> {
        let Some((sql, params)) = self.pending.take_statement(self.location.schema()) else {
            return Ok(());
        };
        let params = pending::typed(&params);
        let what = "cannot write a group";
        let statement = self.statement(&sql, &params, what)?;
        self.open()?;
        self.link
            .block_on(prepared::execute(self.link.client(), statement.as_ref(), &sql, &params))
            .map_err(self.failed(what))?;
        self.flushed();
        Ok(())
    }

    /// The callbacks written are stored now (a write is an update).
    fn flushed(&mut self) {
        for slot in self.callbacks.get_mut().values_mut() {
            if matches!(slot.row, CallbackRow::Entry(_)) {
                slot.stored = true;
            }
        }
    }

    /// Sends every pending write and COMMIT, pipelined. A write the server
    /// refused aborts the transaction, whose COMMIT then rolls back: the
    /// write's error, the group not stored. A COMMIT that failed or got no
    /// answer (the connection lost), after writes that did not fail at the
    /// server: [`COMMIT_FAILED`], the group's fate unknown. Nothing sent
    /// (a group that neither read nor wrote): nothing to commit.
    fn commit(&mut self) -> Result<()> {
        let write = self.pending.take_statement(self.location.schema());
        if write.is_none() && !self.open.get() {
            return Ok(());
        }
        let params = write.as_ref().map(|(_, params)| pending::typed(params));
        let what = "cannot write a group";
        let statement = match (&write, &params) {
            (Some((sql, _)), Some(params)) => self.statement(sql, params, what)?,
            _ => None,
        };
        self.open()?;
        let client = self.link.client();
        let writes = async {
            match (&write, &params) {
                (Some((sql, _)), Some(params)) => prepared::execute(client, statement.as_ref(), sql, params)
                    .await
                    .map(drop),
                _ => Ok(()),
            }
        };
        let (written, committed) = self.link.block_on(pipelined(writes, || client.batch_execute("COMMIT")));
        let Some(committed) = committed else {
            // Neither the writes nor COMMIT sent: the transaction is open,
            // to be rolled back.
            return written.map_err(self.failed(what));
        };
        self.open.set(false);
        match written {
            Err(err) if err.as_db_error().is_some() => Err(self.failed(what)(err)),
            Err(err) => Err(self.failed(COMMIT_FAILED)(committed.err().unwrap_or(err))),
            Ok(()) => committed.map_err(self.failed(COMMIT_FAILED)),
        }
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

    /// Changes the execution's row, read (and locked) first if it is not
    /// yet, as `f` says: `f` changes the row as reads will see it and
    /// says which columns to write. No row: nothing is written (as an
    /// UPDATE that finds no row).
    fn change(&mut self, exec_key: u64, f: impl FnOnce(&mut ExecRow, &mut Change)) -> Result<()> {
        key(exec_key)?;
        self.row(exec_key, |_| Ok(()))?;
        if let Some(Some(row)) = self.rows.get_mut().get_mut(&exec_key) {
            f(row, self.pending.executions.entry(exec_key).or_default());
        }
        Ok(())
    }

    /// Locks and reads, in one statement and in key order, the rows of the
    /// executions the group's mutations name: two groups then lock those
    /// rows in the same order (rows found only on the way, a parent, a
    /// callback's execution, a child, are locked when read). Then the
    /// execution ids the group creates and the callbacks it names, one
    /// statement each, all three pipelined (with BEGIN).
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
        keys.sort_unstable();
        keys.dedup();
        let mut ids: Vec<String> = group
            .iter()
            .flatten()
            .filter_map(|mutation| match mutation {
                Mutation::CreateExecution { execution_id, .. } => Some(execution_id.clone()),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        // Only the callbacks the group creates are taken as absent when not
        // found (an insert meets one made meanwhile, and the group runs again).
        let mut created = HashSet::new();
        let mut callback_ids: Vec<String> = group
            .iter()
            .flatten()
            .filter_map(|mutation| match mutation {
                Mutation::CreateCallback { callback_id, .. } => {
                    created.insert(callback_id.clone());
                    Some(callback_id.clone())
                }
                Mutation::CompleteCallback { callback_id, .. } | Mutation::Heartbeat { callback_id, .. } => {
                    Some(callback_id.clone())
                }
                _ => None,
            })
            .collect();
        callback_ids.sort_unstable();
        callback_ids.dedup();

        let s = self.s();
        let reads = [
            (!keys.is_empty()).then(|| {
                (
                    format!(
                        "SELECT {EXEC_COLUMNS} FROM {s}.executions WHERE exec_key = ANY($1) ORDER BY exec_key \
                         FOR NO KEY UPDATE"
                    ),
                    typed(&[&keys]),
                    "cannot lock executions",
                )
            }),
            (!ids.is_empty()).then(|| {
                (
                    format!("SELECT exec_key, execution_id FROM {s}.executions WHERE execution_id = ANY($1)"),
                    typed(&[&ids]),
                    "cannot look up execution ids",
                )
            }),
            (!callback_ids.is_empty()).then(|| {
                (
                    format!(
                        "SELECT {CALLBACK_COLUMNS}, callback_id FROM {s}.callbacks WHERE callback_id = ANY($1) \
                         ORDER BY callback_id FOR UPDATE"
                    ),
                    typed(&[&callback_ids]),
                    "cannot lock callbacks",
                )
            }),
        ];
        if reads.iter().all(Option::is_none) {
            return Ok(());
        }
        let mut statements = Vec::with_capacity(reads.len());
        for read in &reads {
            statements.push(match read {
                Some((sql, params, what)) => self.statement(sql, params, what)?,
                None => None,
            });
        }
        let (reads, statements) = (&reads, &statements);
        let run = |i: usize| async move {
            match &reads[i] {
                Some((sql, params, what)) => prepared::query(self.link.client(), statements[i].as_ref(), sql, params)
                    .await
                    .map(Some)
                    .map_err(self.failed(what)),
                None => Ok(None),
            }
        };
        let (locked, known, callbacks) = self.read(|| async {
            // Polled, so sent, in this order.
            Ok(join3(run(0), run(1), run(2)).await)
        })?;

        if let Some(found) = locked? {
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
        }
        if let Some(found) = known? {
            let mut known = self.known_ids.borrow_mut();
            for id in ids {
                known.insert(id, None);
            }
            for row in &found {
                let id: String = row.get(1);
                let exec_key = exec_key_from(row.get(0), &id)?;
                known.insert(id, Some(exec_key));
            }
        }
        if let Some(found) = callbacks? {
            let mut slots = self.callbacks.borrow_mut();
            for id in created {
                slots.insert(
                    id,
                    CallbackSlot {
                        row: CallbackRow::Absent,
                        stored: false,
                    },
                );
            }
            for row in &found {
                slots.insert(row.get("callback_id"), stored_callback(row));
            }
        }
        Ok(())
    }

    /// The callback as the group has left it: read and locked the first time.
    fn callback_slot<T>(&self, callback_id: &str, f: impl FnOnce(&CallbackSlot) -> T) -> Result<T> {
        if let Some(slot) = self.callbacks.borrow().get(callback_id) {
            return Ok(f(slot));
        }
        let sql = format!(
            "SELECT {CALLBACK_COLUMNS} FROM {}.callbacks WHERE callback_id = $1 FOR UPDATE",
            self.s()
        );
        let rows = self.query(&sql, &[&callback_id], "cannot read a callback")?;
        let slot = match rows.first() {
            Some(row) => stored_callback(row),
            None => CallbackSlot {
                row: CallbackRow::Absent,
                stored: false,
            },
        };
        let value = f(&slot);
        // Not found: asked again next time (another commit may make it).
        if slot.stored {
            self.callbacks.borrow_mut().insert(callback_id.to_string(), slot);
        }
        Ok(value)
    }
}

/// A stored callback row (columns [`CALLBACK_COLUMNS`]).
fn stored_callback(row: &Row) -> CallbackSlot {
    CallbackSlot {
        row: match callback_row(row) {
            Ok(entry) => CallbackRow::Entry(entry),
            Err(reason) => CallbackRow::Damaged(reason),
        },
        stored: true,
    }
}

impl TxnView for PgTxn<'_> {
    /// A server or connection error, or a storage failure: the transaction
    /// is gone or cannot be trusted, so the whole group fails.
    fn aborts(err: &Error) -> bool {
        matches!(err, Error::Postgres { .. } | Error::StorageFailed { .. })
    }

    fn exec_key(&self, execution_id: &str) -> Result<Option<u64>> {
        if let Some((&exec_key, _)) = self.ids.iter().find(|(_, id)| id.as_str() == execution_id) {
            return Ok(Some(exec_key));
        }
        if let Some(&known) = self.known_ids.borrow().get(execution_id) {
            return Ok(known);
        }
        let sql = format!("SELECT exec_key FROM {}.executions WHERE execution_id = $1", self.s());
        let rows = self.query(&sql, &[&execution_id], "cannot look up an execution id")?;
        let found = rows
            .first()
            .map(|row| exec_key_from(row.get(0), execution_id))
            .transpose()?;
        // Not found: asked again next time (another commit may make it).
        if let Some(exec_key) = found {
            self.known_ids
                .borrow_mut()
                .insert(execution_id.to_string(), Some(exec_key));
        }
        Ok(found)
    }

    /// Kept until `put_meta` makes the row: a new execution's key comes
    /// first, its row with its metadata.
    fn put_exec_id(&mut self, execution_id: &str, exec_key: u64) -> Result<()> {
        self.ids.insert(exec_key, execution_id.to_string());
        Ok(())
    }

    fn meta(&self, exec_key: u64) -> Result<Option<ExecMeta>> {
        self.row(exec_key, |row| Ok(row.map(|row| row.meta.clone())))
    }

    /// A key just given to an execution id has no row: it is made, with the
    /// table's defaults for all but the metadata (the writes that follow
    /// set them). Any other key's row is updated.
    fn put_meta(&mut self, exec_key: u64, meta: &ExecMeta) -> Result<()> {
        key(exec_key)?;
        if let Some(execution_id) = self.ids.remove(&exec_key) {
            self.known_ids.get_mut().insert(execution_id.clone(), Some(exec_key));
            let row = ExecRow {
                exec_key,
                meta: ExecMeta {
                    execution_id: execution_id.clone(),
                    ..meta.clone()
                },
                wake: None,
                lease: None,
                next_seq: 0,
            };
            self.rows.get_mut().insert(exec_key, Some(row));
            let change = self.pending.executions.entry(exec_key).or_default();
            change.new = Some(execution_id);
            change.meta = Some(meta_columns(meta));
            return Ok(());
        }
        self.change(exec_key, |row, change| {
            // The stored id stays: the metadata's columns do not hold it.
            row.meta = ExecMeta {
                execution_id: std::mem::take(&mut row.meta.execution_id),
                ..meta.clone()
            };
            // Only an active execution is leased (as `exec_row` reads it).
            if row.meta.state != ExecState::Active {
                row.lease = None;
            }
            change.meta = Some(meta_columns(meta));
        })
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
        self.pending.journal.push((key, at, record.encode()));
        self.change(exec_key, |row, change| {
            row.next_seq = next;
            change.next_seq = Some(next);
        })
    }

    /// The records stored, then those pending (their sequence numbers
    /// follow on), checked in order alike.
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
        for (_, seq, bytes) in self.pending.journal.iter().filter(|(k, _, _)| *k == key) {
            visit(order.next(sequence_from(*seq, execution_id)?, bytes)?);
        }
        Ok(())
    }

    fn pending_wake(&self, exec_key: u64) -> Result<Option<u64>> {
        self.row(exec_key, |row| Ok(row.and_then(|row| row.wake)))
    }

    fn put_pending(&mut self, exec_key: u64, wake: u64) -> Result<()> {
        self.change(exec_key, |row, change| {
            row.wake = Some(wake);
            change.wake = Some(Some(saturating(wake)));
        })
    }

    fn delete_pending(&mut self, exec_key: u64, _wake: u64) -> Result<()> {
        self.change(exec_key, |row, change| {
            row.wake = None;
            change.wake = Some(None);
        })
    }

    fn lease(&self, exec_key: u64) -> Result<Option<Lease>> {
        self.row(exec_key, |row| Ok(row.and_then(|row| row.lease)))
    }

    fn put_lease(&mut self, exec_key: u64, lease: Lease) -> Result<()> {
        self.change(exec_key, |row, change| {
            // Only an active execution is leased (as `exec_row` reads it).
            row.lease = (row.meta.state == ExecState::Active).then_some(lease);
            // Owner ids are random u64s stored bit for bit.
            change.owner = Some(Some(lease.owner as i64));
            change.epoch = Some(saturating(lease.epoch));
        })
    }

    /// No owner: an active execution is then an orphan, a finished one
    /// simply unleased.
    fn delete_lease(&mut self, exec_key: u64) -> Result<()> {
        self.change(exec_key, |row, change| {
            row.lease = None;
            change.owner = Some(None);
        })
    }

    /// A lease with a negative epoch is one no perdure writes: released too.
    /// Over the rows as the group left them: pending writes are sent first.
    fn release_leases(&mut self, owner: u64) -> Result<()> {
        self.flush()?;
        let sql = format!(
            "UPDATE {}.executions SET owner_id = NULL WHERE state = 1 AND owner_id IS NOT NULL \
             AND (owner_id = $1 OR lease_epoch < 0)",
            self.s()
        );
        self.rows.get_mut().clear();
        self.execute(&sql, &[&(owner as i64)], "cannot release leases")
            .map(drop)
    }

    fn put_orphan(&mut self, exec_key: u64) -> Result<()> {
        self.delete_lease(exec_key)
    }

    /// An orphan is an active row without owner: check-then-apply removes
    /// the mark only from an execution it has just finished (no longer
    /// active) or granted (owned), so there is nothing to write.
    fn delete_orphan(&mut self, _exec_key: u64) -> Result<()> {
        Ok(())
    }

    /// Orphans in key order, locked; those another commit holds are left to
    /// it. Each stays an orphan until the claim grants it. Over the rows as
    /// the group left them: pending writes are sent first.
    fn take_orphans(&mut self, max: usize) -> Result<Vec<Option<u64>>> {
        self.flush()?;
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

    /// An owner found is remembered (its row is locked, and only this
    /// group's own writes change it); one not found is asked again.
    fn has_owner(&self, owner: u64) -> Result<bool> {
        if self.owners.borrow().contains(&owner) {
            return Ok(true);
        }
        let sql = format!("SELECT 1 FROM {}.owners WHERE owner_id = $1 FOR UPDATE", self.s());
        let found = !self.query(&sql, &[&(owner as i64)], "cannot read an owner")?.is_empty();
        if found {
            self.owners.borrow_mut().insert(owner);
        }
        Ok(found)
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
        let id = owner as i64;
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
            &[&id, &pid, &started, &renewed],
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
                &[&id, &pid, &started, &renewed],
                "cannot register an owner",
            )?;
        }
        self.owners.get_mut().insert(owner);
        Ok(())
    }

    fn delete_owner(&mut self, owner: u64) -> Result<()> {
        self.owners.get_mut().remove(&owner);
        let sql = format!("DELETE FROM {}.owners WHERE owner_id = $1", self.s());
        self.execute(&sql, &[&(owner as i64)], "cannot delete an owner")
            .map(drop)
    }

    fn has_callback(&self, callback_id: &str) -> Result<bool> {
        self.callback_slot(callback_id, |slot| !matches!(slot.row, CallbackRow::Absent))
    }

    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        self.callback_slot(callback_id, |slot| match &slot.row {
            CallbackRow::Absent => Ok(None),
            CallbackRow::Entry(entry) => Ok(Some(entry.clone())),
            CallbackRow::Damaged(reason) => Err(Error::CorruptStore(format!("callback {callback_id:?}: {reason}"))),
        })?
    }

    /// An update of a stored row, or an insert when there is none.
    fn put_callback(&mut self, callback_id: &str, entry: &CallbackEntry) -> Result<()> {
        let columns = CallbackColumns {
            exec_key: key(entry.exec_key)?,
            op_id: entry.op_id.clone(),
            state: entry.state as i16,
            deadline_ms: saturating(entry.deadline_ms),
            heartbeat_timeout_ms: saturating(entry.heartbeat_timeout_ms),
            last_heartbeat_ms: saturating(entry.last_heartbeat_ms),
        };
        let stored = self.callback_slot(callback_id, |slot| slot.stored)?;
        self.callbacks.get_mut().insert(
            callback_id.to_string(),
            CallbackSlot {
                row: CallbackRow::Entry(entry.clone()),
                stored,
            },
        );
        self.pending
            .callbacks
            .insert(callback_id.to_string(), (columns, stored));
        Ok(())
    }

    fn put_timer(&mut self, timer: &Timer) -> Result<()> {
        let row = timer_row(timer)?;
        self.pending.timers.insert(row);
        Ok(())
    }

    /// A timer the group added is taken back; one stored is deleted now
    /// (the answer is needed at once; firing a timer is not a step's path).
    fn delete_timer(&mut self, timer: &Timer) -> Result<bool> {
        let row = timer_row(timer)?;
        let was_pending = self.pending.timers.remove(&row);
        let sql = format!(
            "DELETE FROM {}.timers WHERE due_ms = $1 AND exec_key = $2 AND kind = $3 AND subject = $4",
            self.s()
        );
        let deleted = self.execute(&sql, &[&row.0, &row.1, &row.2, &row.3], "cannot delete a timer")?;
        Ok(was_pending || deleted > 0)
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
