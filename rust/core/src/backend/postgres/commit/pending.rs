//! A group's writes held until just before its COMMIT, then sent as one
//! statement whatever the group's size (phase 2 of SCALE-OUT.md §4.3): each
//! table's rows go as array parameters, `unnest`ed by the server, one
//! data-modifying CTE per table and kind. Several changes to one
//! `executions` row within the group are merged into one row update.
//!
//! The parts of the statement never touch the same row twice (new and
//! existing executions, new and stored callbacks are kept apart), which is
//! what lets them run as siblings in one statement.

use std::collections::{BTreeMap, BTreeSet};

use postgres::types::{ToSql, Type};

use super::Param;

/// What a group changes in one `executions` row, column by column (`None`:
/// left as it is).
#[derive(Default)]
pub(super) struct Change {
    /// The execution id of a row to insert (a new execution); the columns
    /// not set then take the table's defaults.
    pub(super) new: Option<String>,
    pub(super) meta: Option<MetaColumns>,
    pub(super) next_seq: Option<i32>,
    pub(super) wake: Option<Option<i64>>,
    pub(super) owner: Option<Option<i64>>,
    pub(super) epoch: Option<i64>,
}

/// The columns an execution's metadata is stored in.
#[derive(Clone)]
pub(super) struct MetaColumns {
    pub(super) function: String,
    pub(super) state: i16,
    pub(super) created_ms: i64,
    pub(super) updated_ms: i64,
    pub(super) parent_key: Option<i64>,
    pub(super) parent_op: Option<String>,
}

/// A `timers` row: due_ms, exec_key, kind, subject.
pub(super) type TimerRow = (i64, i64, i16, String);

/// A `callbacks` row's columns after its id.
#[derive(Clone)]
pub(super) struct CallbackColumns {
    pub(super) exec_key: i64,
    pub(super) op_id: String,
    pub(super) state: i16,
    pub(super) deadline_ms: i64,
    pub(super) heartbeat_timeout_ms: i64,
    pub(super) last_heartbeat_ms: i64,
}

/// The writes not yet sent.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) executions: BTreeMap<u64, Change>,
    /// exec_key, seq, the record's bytes.
    pub(super) journal: Vec<(i64, i32, Vec<u8>)>,
    pub(super) timers: BTreeSet<TimerRow>,
    /// Each callback written, and whether its row is stored (an update)
    /// or not yet (an insert).
    pub(super) callbacks: BTreeMap<String, (CallbackColumns, bool)>,
}

/// A statement being built: its SQL parts and their parameters, numbered
/// across the whole statement.
struct Builder {
    params: Vec<Box<dyn Param>>,
    parts: Vec<String>,
}

impl Builder {
    /// `value` as the next parameter, cast to `sql_type` in the text.
    fn arg<T: Param + 'static>(&mut self, value: T, sql_type: &str) -> String {
        self.params.push(Box::new(value));
        format!("${}::{sql_type}", self.params.len())
    }
}

/// The columns of one `unnest`: each array parameter and the name its
/// elements take.
#[derive(Default)]
struct Unnest {
    args: Vec<String>,
    names: Vec<String>,
}

impl Unnest {
    fn column<T: Param + 'static>(&mut self, b: &mut Builder, values: T, sql_type: &str, name: &str) {
        self.args.push(b.arg(values, sql_type));
        self.names.push(name.to_string());
    }

    fn from(&self) -> String {
        format!("unnest({}) AS v({})", self.args.join(", "), self.names.join(", "))
    }
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.executions.is_empty() && self.journal.is_empty() && self.timers.is_empty() && self.callbacks.is_empty()
    }

    /// The one statement that writes everything pending, with its
    /// parameters, and leaves nothing pending; `None` if there is nothing.
    pub(super) fn take_statement(&mut self, s: &str) -> Option<(String, Vec<Box<dyn Param>>)> {
        if self.is_empty() {
            return None;
        }
        let mut b = Builder {
            params: Vec::new(),
            parts: Vec::new(),
        };
        let executions = std::mem::take(&mut self.executions);
        let (inserted, updated): (Vec<_>, Vec<_>) = executions.into_iter().partition(|(_, c)| c.new.is_some());
        insert_executions(&mut b, s, inserted);
        update_executions(&mut b, s, updated);
        insert_journal(&mut b, s, std::mem::take(&mut self.journal));
        insert_timers(&mut b, s, std::mem::take(&mut self.timers));
        write_callbacks(&mut b, s, std::mem::take(&mut self.callbacks));
        let (last, siblings) = b.parts.split_last().expect("something is pending");
        let sql = if siblings.is_empty() {
            last.clone()
        } else {
            let with: Vec<String> = siblings
                .iter()
                .enumerate()
                .map(|(i, part)| format!("w{i} AS ({part})"))
                .collect();
            format!("WITH {} {last}", with.join(", "))
        };
        Some((sql, b.params))
    }
}

/// The statement's parameters with their types, as `query_typed` takes them.
pub(super) fn typed(params: &[Box<dyn Param>]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|param| (param.as_ref() as &(dyn ToSql + Sync), param.sql_type()))
        .collect()
}

fn insert_executions(b: &mut Builder, s: &str, rows: Vec<(u64, Change)>) {
    if rows.is_empty() {
        return;
    }
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    let mut meta = Metas::default();
    let (mut owners, mut epochs, mut seqs, mut wakes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (exec_key, change) in rows {
        keys.push(exec_key as i64);
        ids.push(change.new.unwrap_or_default());
        meta.push(change.meta);
        owners.push(change.owner.flatten());
        // The table's defaults for what the group did not set.
        epochs.push(change.epoch.unwrap_or(0));
        seqs.push(change.next_seq.unwrap_or(0));
        wakes.push(change.wake.flatten());
    }
    let mut u = Unnest::default();
    u.column(b, keys, "bigint[]", "k");
    u.column(b, ids, "text[]", "execution_id");
    meta.columns(b, &mut u);
    u.column(b, owners, "bigint[]", "owner_id");
    u.column(b, epochs, "bigint[]", "lease_epoch");
    u.column(b, seqs, "int4[]", "next_seq");
    u.column(b, wakes, "bigint[]", "wake");
    b.parts.push(format!(
        "INSERT INTO {s}.executions (exec_key, execution_id, function, state, created_ms, updated_ms, \
         parent_key, parent_op, owner_id, lease_epoch, next_seq, wake) OVERRIDING SYSTEM VALUE \
         SELECT k, execution_id, function, state, created_ms, updated_ms, parent_key, parent_op, \
         owner_id, lease_epoch, next_seq, wake FROM {}",
        u.from()
    ));
}

/// The metadata columns of several rows, as arrays.
#[derive(Default)]
struct Metas {
    set: Vec<bool>,
    function: Vec<String>,
    state: Vec<i16>,
    created_ms: Vec<i64>,
    updated_ms: Vec<i64>,
    parent_key: Vec<Option<i64>>,
    parent_op: Vec<Option<String>>,
}

impl Metas {
    fn push(&mut self, meta: Option<MetaColumns>) {
        self.set.push(meta.is_some());
        let meta = meta.unwrap_or(MetaColumns {
            function: String::new(),
            state: 0,
            created_ms: 0,
            updated_ms: 0,
            parent_key: None,
            parent_op: None,
        });
        self.function.push(meta.function);
        self.state.push(meta.state);
        self.created_ms.push(meta.created_ms);
        self.updated_ms.push(meta.updated_ms);
        self.parent_key.push(meta.parent_key);
        self.parent_op.push(meta.parent_op);
    }

    fn columns(self, b: &mut Builder, u: &mut Unnest) {
        u.column(b, self.function, "text[]", "function");
        u.column(b, self.state, "int2[]", "state");
        u.column(b, self.created_ms, "bigint[]", "created_ms");
        u.column(b, self.updated_ms, "bigint[]", "updated_ms");
        u.column(b, self.parent_key, "bigint[]", "parent_key");
        u.column(b, self.parent_op, "text[]", "parent_op");
    }
}

/// The SET clauses of the columns `names` when `set` says which rows change
/// them: none, no clause; all, the new values; some, a flag array says.
fn assign(b: &mut Builder, u: &mut Unnest, sets: &mut Vec<String>, set: Vec<bool>, names: &[&str], flag: &str) {
    if !set.iter().any(|&s| s) {
        return;
    }
    if set.iter().all(|&s| s) {
        sets.extend(names.iter().map(|name| format!("{name} = v.{name}")));
        return;
    }
    u.column(b, set, "bool[]", flag);
    sets.extend(
        names
            .iter()
            .map(|name| format!("{name} = CASE WHEN v.{flag} THEN v.{name} ELSE e.{name} END")),
    );
}

fn update_executions(b: &mut Builder, s: &str, rows: Vec<(u64, Change)>) {
    if rows.is_empty() {
        return;
    }
    let mut keys = Vec::new();
    let mut meta = Metas::default();
    let (mut seq_set, mut seqs) = (Vec::new(), Vec::new());
    let (mut wake_set, mut wakes) = (Vec::new(), Vec::new());
    let (mut owner_set, mut owners) = (Vec::new(), Vec::new());
    let (mut epoch_set, mut epochs) = (Vec::new(), Vec::new());
    for (exec_key, change) in rows {
        keys.push(exec_key as i64);
        meta.push(change.meta);
        seq_set.push(change.next_seq.is_some());
        seqs.push(change.next_seq.unwrap_or(0));
        wake_set.push(change.wake.is_some());
        wakes.push(change.wake.flatten());
        owner_set.push(change.owner.is_some());
        owners.push(change.owner.flatten());
        epoch_set.push(change.epoch.is_some());
        epochs.push(change.epoch.unwrap_or(0));
    }
    let mut u = Unnest::default();
    let mut sets = Vec::new();
    u.column(b, keys, "bigint[]", "k");
    if meta.set.iter().any(|&s| s) {
        let set = std::mem::take(&mut meta.set);
        meta.columns(b, &mut u);
        let names = [
            "function",
            "state",
            "created_ms",
            "updated_ms",
            "parent_key",
            "parent_op",
        ];
        assign(b, &mut u, &mut sets, set, &names, "set_meta");
    }
    // Each column (group) goes only where some row changes it.
    if seq_set.iter().any(|&s| s) {
        u.column(b, seqs, "int4[]", "next_seq");
        assign(b, &mut u, &mut sets, seq_set, &["next_seq"], "set_seq");
    }
    if wake_set.iter().any(|&s| s) {
        u.column(b, wakes, "bigint[]", "wake");
        assign(b, &mut u, &mut sets, wake_set, &["wake"], "set_wake");
    }
    if owner_set.iter().any(|&s| s) {
        u.column(b, owners, "bigint[]", "owner_id");
        assign(b, &mut u, &mut sets, owner_set, &["owner_id"], "set_owner");
    }
    if epoch_set.iter().any(|&s| s) {
        u.column(b, epochs, "bigint[]", "lease_epoch");
        assign(b, &mut u, &mut sets, epoch_set, &["lease_epoch"], "set_epoch");
    }
    if sets.is_empty() {
        return;
    }
    b.parts.push(format!(
        "UPDATE {s}.executions e SET {} FROM {} WHERE e.exec_key = v.k",
        sets.join(", "),
        u.from()
    ));
}

fn insert_journal(b: &mut Builder, s: &str, rows: Vec<(i64, i32, Vec<u8>)>) {
    if rows.is_empty() {
        return;
    }
    let mut u = Unnest::default();
    let (mut keys, mut seqs, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for (key, seq, record) in rows {
        keys.push(key);
        seqs.push(seq);
        records.push(record);
    }
    u.column(b, keys, "bigint[]", "k");
    u.column(b, seqs, "int4[]", "seq");
    u.column(b, records, "bytea[]", "record");
    b.parts.push(format!(
        "INSERT INTO {s}.journal (exec_key, seq, record) SELECT k, seq, record FROM {}",
        u.from()
    ));
}

fn insert_timers(b: &mut Builder, s: &str, rows: BTreeSet<TimerRow>) {
    if rows.is_empty() {
        return;
    }
    let mut u = Unnest::default();
    let (mut due, mut keys, mut kinds, mut subjects) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (due_ms, key, kind, subject) in rows {
        due.push(due_ms);
        keys.push(key);
        kinds.push(kind);
        subjects.push(subject);
    }
    u.column(b, due, "bigint[]", "due_ms");
    u.column(b, keys, "bigint[]", "k");
    u.column(b, kinds, "int2[]", "kind");
    u.column(b, subjects, "text[]", "subject");
    b.parts.push(format!(
        "INSERT INTO {s}.timers (due_ms, exec_key, kind, subject) SELECT due_ms, k, kind, subject FROM {} \
         ON CONFLICT DO NOTHING",
        u.from()
    ));
}

/// New callbacks are inserted, never upserted: one another commit created
/// after this group checked it absent fails the group (run again) rather
/// than being overwritten.
fn write_callbacks(b: &mut Builder, s: &str, rows: BTreeMap<String, (CallbackColumns, bool)>) {
    let (stored, new): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, (_, stored))| *stored);
    for (rows, update) in [(new, false), (stored, true)] {
        if rows.is_empty() {
            continue;
        }
        let mut ids = Vec::new();
        let mut keys = Vec::new();
        let mut op_ids = Vec::new();
        let mut states = Vec::new();
        let mut deadlines = Vec::new();
        let mut heartbeat_timeouts = Vec::new();
        let mut last_heartbeats = Vec::new();
        for (id, (c, _)) in rows {
            ids.push(id);
            keys.push(c.exec_key);
            op_ids.push(c.op_id);
            states.push(c.state);
            deadlines.push(c.deadline_ms);
            heartbeat_timeouts.push(c.heartbeat_timeout_ms);
            last_heartbeats.push(c.last_heartbeat_ms);
        }
        let mut u = Unnest::default();
        u.column(b, ids, "text[]", "id");
        u.column(b, keys, "bigint[]", "exec_key");
        u.column(b, op_ids, "text[]", "op_id");
        u.column(b, states, "int2[]", "state");
        u.column(b, deadlines, "bigint[]", "deadline_ms");
        u.column(b, heartbeat_timeouts, "bigint[]", "heartbeat_timeout_ms");
        u.column(b, last_heartbeats, "bigint[]", "last_heartbeat_ms");
        b.parts.push(if update {
            format!(
                "UPDATE {s}.callbacks c SET exec_key = v.exec_key, op_id = v.op_id, state = v.state, \
                 deadline_ms = v.deadline_ms, heartbeat_timeout_ms = v.heartbeat_timeout_ms, \
                 last_heartbeat_ms = v.last_heartbeat_ms FROM {} WHERE c.callback_id = v.id",
                u.from()
            )
        } else {
            format!(
                "INSERT INTO {s}.callbacks (callback_id, exec_key, op_id, state, deadline_ms, \
                 heartbeat_timeout_ms, last_heartbeat_ms) SELECT id, exec_key, op_id, state, deadline_ms, \
                 heartbeat_timeout_ms, last_heartbeat_ms FROM {}",
                u.from()
            )
        });
    }
}
