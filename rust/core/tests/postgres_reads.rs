//! The read side of the PostgreSQL store against a real server: executions
//! built by the runtime on LMDB, their journal bytes copied verbatim into
//! the schema v1 tables, read back with the same answers; and rows no
//! perdure writes reported as damage naming their execution.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use perdure_core::backend::postgres::reads::PgReads;
use perdure_core::backend::{Backend, ExecSummary, InvocationData, Lease};
use perdure_core::clock::ManualClock;
use perdure_core::keys::{CallbackEntry, ExecState, OwnerEntry, Timer};
use perdure_core::{
    Durability, Error, NewCallback, OpType, Record, RecordKind, Runtime, RuntimeOptions, StoreOptions, SubType,
};
use postgres::Client;

fn open(dir: &std::path::Path) -> Runtime {
    let options = RuntimeOptions {
        store: StoreOptions {
            durability: Durability::None,
            map_size: 1 << 20,
        },
        owner: true,
        poll_interval: Duration::from_millis(5),
        lease_timeout: Duration::from_secs(10),
        clock: Arc::new(ManualClock::new(1_000_000)),
    };
    Runtime::open(dir, options).unwrap()
}

fn step(op_id: &str, payload: &[u8]) -> Record {
    let mut record = Record::new(RecordKind::Succeeded, OpType::Step, SubType::Step, op_id);
    record.payload = Some(payload.to_vec());
    record
}

fn callback_started(op_id: &str) -> Record {
    Record::new(RecordKind::Started, OpType::Callback, SubType::Callback, op_id)
}

/// Everything the LMDB store answers about a set of executions.
struct Answers {
    ids: Vec<(String, u64)>,
    summaries: Vec<ExecSummary>,
    leases: Vec<Option<Lease>>,
    invocations: Vec<InvocationData>,
    journals: Vec<Vec<Record>>,
    last: Vec<Option<Record>>,
    callbacks: Vec<(String, CallbackEntry)>,
    timers: (Vec<Timer>, Vec<u64>),
    wake_seq: u64,
    owners: Vec<(u64, OwnerEntry)>,
    lists: Vec<Vec<ExecSummary>>,
}

fn list_queries() -> Vec<(Option<ExecState>, Option<&'static str>, usize)> {
    vec![
        (None, None, 0),
        (None, None, 2),
        (Some(ExecState::Active), None, 0),
        (Some(ExecState::Succeeded), None, 0),
        (Some(ExecState::Failed), None, 0),
        (None, Some("other"), 0),
        (Some(ExecState::Active), Some("wf"), 1),
        (None, Some("absent"), 0),
    ]
}

fn ask(backend: &dyn Backend, callback_ids: &[String]) -> Answers {
    let (all, damaged) = backend.list(None, None, 0).unwrap();
    assert!(damaged.is_empty());
    let keys: Vec<u64> = all.iter().map(|s| s.exec_key).collect();
    let key_set: HashSet<u64> = keys.iter().copied().collect();
    Answers {
        ids: all
            .iter()
            .map(|s| {
                (
                    s.meta.execution_id.clone(),
                    backend.exec_key_of(&s.meta.execution_id).unwrap().unwrap(),
                )
            })
            .collect(),
        summaries: keys.iter().map(|&k| backend.execution(k).unwrap().unwrap()).collect(),
        leases: keys.iter().map(|&k| backend.lease(k).unwrap()).collect(),
        invocations: keys.iter().map(|&k| backend.load_invocation(k).unwrap()).collect(),
        journals: keys.iter().map(|&k| backend.journal(k).unwrap()).collect(),
        last: keys.iter().map(|&k| backend.last_record(k).unwrap()).collect(),
        callbacks: callback_ids
            .iter()
            .map(|id| (id.clone(), backend.callback(id).unwrap().unwrap()))
            .collect(),
        timers: backend.timers_of(&key_set).unwrap(),
        wake_seq: backend.wake_seq().unwrap(),
        owners: backend.owners().unwrap(),
        lists: list_queries()
            .into_iter()
            .map(|(state, function, limit)| {
                let (rows, damaged) = backend.list(state, function, limit).unwrap();
                assert!(damaged.is_empty());
                rows
            })
            .collect(),
    }
}

fn same_summary(pg: &ExecSummary, lmdb: &ExecSummary) {
    assert_eq!(
        (pg.exec_key, &pg.meta, pg.pending),
        (lmdb.exec_key, &lmdb.meta, lmdb.pending)
    );
}

fn same_summaries(pg: &[ExecSummary], lmdb: &[ExecSummary]) {
    assert_eq!(pg.len(), lmdb.len());
    for (pg, lmdb) in pg.iter().zip(lmdb) {
        same_summary(pg, lmdb);
    }
}

/// Builds, on LMDB, executions in every shape the read side maps: finished
/// (succeeded, failed), suspended on a callback with its timeout timer,
/// suspended on a wait timer, woken by a completed callback, fresh with an
/// execution timeout. Returns the callback ids.
fn build(runtime: &Runtime) -> Vec<String> {
    let mut callback_ids = Vec::new();
    // Executions become ready in start order; each is run at once.
    let ready = |_exec: u64| runtime.next_ready(Duration::from_secs(1)).unwrap().unwrap();

    let (done, _) = runtime.start("done", "wf", b"{\"n\":1}".to_vec(), None).unwrap();
    assert_eq!(ready(done), done);
    let loaded = runtime.load_invocation(done).unwrap();
    runtime
        .append(done, vec![step("1", b"41"), step("2", b"42")], vec![], None, None)
        .unwrap();
    let mut outcome = Record::new(RecordKind::Succeeded, OpType::Execution, SubType::None, "");
    outcome.payload = Some(b"42".to_vec());
    runtime
        .end_invocation(done, loaded.wake, Some(ExecState::Succeeded), vec![outcome], vec![])
        .unwrap();
    runtime.finish(done, false).unwrap();

    let (failed, _) = runtime.start("failed", "other", vec![], None).unwrap();
    assert_eq!(ready(failed), failed);
    let loaded = runtime.load_invocation(failed).unwrap();
    let mut outcome = Record::new(RecordKind::Failed, OpType::Execution, SubType::None, "");
    outcome.payload = Some(b"\"boom\"".to_vec());
    runtime
        .end_invocation(failed, loaded.wake, Some(ExecState::Failed), vec![outcome], vec![])
        .unwrap();
    runtime.finish(failed, false).unwrap();

    let (waiting, _) = runtime.start("waiting", "wf", vec![], None).unwrap();
    assert_eq!(ready(waiting), waiting);
    let loaded = runtime.load_invocation(waiting).unwrap();
    let callback = NewCallback {
        op_id: "cb".into(),
        timeout_ms: 60_000,
        heartbeat_timeout_ms: 5_000,
    };
    let id = runtime
        .append(
            waiting,
            vec![step("1", b"1"), callback_started("cb")],
            vec![],
            Some(callback),
            None,
        )
        .unwrap()
        .unwrap();
    callback_ids.push(id);
    assert!(!runtime
        .end_invocation(waiting, loaded.wake, None, vec![], vec![])
        .unwrap());
    runtime.finish(waiting, false).unwrap();

    let (sleeping, _) = runtime.start("sleeping", "other", vec![], None).unwrap();
    assert_eq!(ready(sleeping), sleeping);
    let loaded = runtime.load_invocation(sleeping).unwrap();
    let wait = Record::new(RecordKind::Started, OpType::Wait, SubType::Wait, "w");
    runtime
        .append(sleeping, vec![wait], vec![(5_000, "w".into())], None, None)
        .unwrap();
    assert!(!runtime
        .end_invocation(sleeping, loaded.wake, None, vec![], vec![])
        .unwrap());
    runtime.finish(sleeping, false).unwrap();

    let (woken, _) = runtime.start("woken", "wf", vec![], None).unwrap();
    assert_eq!(ready(woken), woken);
    let loaded = runtime.load_invocation(woken).unwrap();
    let callback = NewCallback {
        op_id: "cb".into(),
        timeout_ms: 0,
        heartbeat_timeout_ms: 0,
    };
    let id = runtime
        .append(woken, vec![callback_started("cb")], vec![], Some(callback), None)
        .unwrap()
        .unwrap();
    assert!(!runtime
        .end_invocation(woken, loaded.wake, None, vec![], vec![])
        .unwrap());
    runtime.finish(woken, false).unwrap();
    runtime.complete_callback(&id, true, Some(b"\"yes\"".to_vec())).unwrap();
    callback_ids.push(id);

    // Fresh: pending since its creation, with its own timeout timer.
    runtime.start("fresh", "wf", b"[]".to_vec(), Some(30_000)).unwrap();
    callback_ids
}

fn ms_param(ms: u64) -> i64 {
    i64::try_from(ms).unwrap()
}

/// Writes the LMDB store's answers as schema v1 rows (journals apart, from
/// the raw bytes).
fn copy_rows(client: &mut Client, s: &str, lmdb: &Answers) {
    for (i, summary) in lmdb.summaries.iter().enumerate() {
        let meta = &summary.meta;
        let lease = lmdb.leases[i];
        let wake = summary.pending.then(|| ms_param(lmdb.invocations[i].wake));
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.executions (exec_key, execution_id, function, state, created_ms, updated_ms, \
                     parent_key, parent_op, owner_id, lease_epoch, next_seq, wake) OVERRIDING SYSTEM VALUE \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ),
                &[
                    &ms_param(summary.exec_key),
                    &meta.execution_id,
                    &meta.function,
                    &(meta.state as i16),
                    &ms_param(meta.created_ms),
                    &ms_param(meta.updated_ms),
                    &meta.parent.as_ref().map(|p| ms_param(p.exec_key)),
                    &meta.parent.as_ref().map(|p| p.op_id.clone()),
                    &lease.map(|l| l.owner as i64),
                    &lease.map_or(0, |l| ms_param(l.epoch)),
                    &(lmdb.journals[i].len() as i32),
                    &wake,
                ],
            )
            .unwrap();
    }
    for (id, entry) in &lmdb.callbacks {
        client
            .execute(
                &format!("INSERT INTO {s}.callbacks VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                &[
                    id,
                    &ms_param(entry.exec_key),
                    &entry.op_id,
                    &(entry.state as i16),
                    &ms_param(entry.deadline_ms),
                    &ms_param(entry.heartbeat_timeout_ms),
                    &ms_param(entry.last_heartbeat_ms),
                ],
            )
            .unwrap();
    }
    for timer in &lmdb.timers.0 {
        client
            .execute(
                &format!("INSERT INTO {s}.timers VALUES ($1, $2, $3, $4)"),
                &[
                    &ms_param(timer.due_ms),
                    &ms_param(timer.exec_key),
                    &(timer.kind as i16),
                    &timer.subject,
                ],
            )
            .unwrap();
    }
    for (owner, entry) in &lmdb.owners {
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.owners VALUES ($1, 1, 'host', $2, \
                     'epoch'::timestamptz + $3::float8 * interval '1 millisecond', \
                     'epoch'::timestamptz + $4::float8 * interval '1 millisecond')"
                ),
                &[
                    &(*owner as i64),
                    &i64::from(entry.pid),
                    &(entry.started_ms as f64),
                    &(entry.renewed_ms as f64),
                ],
            )
            .unwrap();
    }
    if lmdb.wake_seq > 0 {
        client
            .execute(
                &format!("SELECT setval('{s}.wake_seq', $1)"),
                &[&ms_param(lmdb.wake_seq)],
            )
            .unwrap();
    }
}

/// Copies every LMDB journal value, byte for byte, into the journal table.
fn copy_journals(client: &mut Client, s: &str, dir: &std::path::Path) -> usize {
    // SAFETY: the runtime that used this directory is closed and dropped.
    let env = unsafe { EnvOpenOptions::new().max_dbs(16).open(dir) }.unwrap();
    let txn = env.read_txn().unwrap();
    let journal: Database<Bytes, Bytes> = env.open_database(&txn, Some("journal")).unwrap().unwrap();
    let mut copied = 0;
    for entry in journal.iter(&txn).unwrap() {
        let (key, value) = entry.unwrap();
        let exec_key = i64::from_be_bytes(key[..8].try_into().unwrap());
        let seq = i32::try_from(u32::from_be_bytes(key[8..12].try_into().unwrap())).unwrap();
        client
            .execute(
                &format!("INSERT INTO {s}.journal VALUES ($1, $2, $3)"),
                &[&exec_key, &seq, &value],
            )
            .unwrap();
        copied += 1;
    }
    copied
}

#[test]
fn rows_copied_from_lmdb_read_back_the_same() {
    let Some(scratch) = common::store() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (lmdb, callback_ids) = {
        let runtime = open(dir.path());
        let callback_ids = build(&runtime);
        let answers = ask(runtime.backend.as_ref(), &callback_ids);
        runtime.close(Duration::from_secs(1)).unwrap();
        (answers, callback_ids)
    };
    // The scenario covers what it claims to.
    assert_eq!(lmdb.summaries.len(), 6);
    assert!(lmdb.summaries.iter().any(|s| s.pending) && lmdb.summaries.iter().any(|s| !s.pending));
    assert!(lmdb.leases.iter().any(Option::is_some) && lmdb.leases.iter().any(Option::is_none));
    assert!(lmdb.timers.0.len() >= 3, "{:?}", lmdb.timers);
    assert_eq!(lmdb.owners.len(), 1);
    assert!(lmdb.wake_seq > 0);
    assert!(lmdb.invocations.iter().any(|i| i.wake > 0));

    let s = scratch.location.schema().to_owned();
    let mut client = scratch.client();
    copy_rows(&mut client, &s, &lmdb);
    let records = copy_journals(&mut client, &s, dir.path());
    assert_eq!(records, lmdb.journals.iter().map(Vec::len).sum::<usize>());

    let reads = PgReads::connect(&scratch.location).unwrap();
    for (id, key) in &lmdb.ids {
        assert_eq!(reads.exec_key_of(id).unwrap(), Some(*key), "{id}");
        same_summary(
            &reads.execution_by_id(id).unwrap().unwrap(),
            &reads.execution(*key).unwrap().unwrap(),
        );
    }
    for (i, lmdb_summary) in lmdb.summaries.iter().enumerate() {
        let key = lmdb_summary.exec_key;
        same_summary(&reads.execution(key).unwrap().unwrap(), lmdb_summary);
        assert_eq!(reads.lease(key).unwrap(), lmdb.leases[i]);
        assert_eq!(reads.journal(key).unwrap(), lmdb.journals[i]);
        assert_eq!(reads.last_record(key).unwrap(), lmdb.last[i]);
        let pg = reads.load_invocation(key).unwrap();
        let want = &lmdb.invocations[i];
        assert_eq!(
            (pg.exec_key, &pg.meta, pg.wake, pg.lease),
            (want.exec_key, &want.meta, want.wake, want.lease)
        );
        assert_eq!(
            (&pg.index.input, pg.index.invocations, pg.index.len()),
            (&want.index.input, want.index.invocations, want.index.len())
        );
        for record in &lmdb.journals[i] {
            assert_eq!(pg.index.get(&record.op_id), want.index.get(&record.op_id));
        }
    }
    for (id, entry) in &lmdb.callbacks {
        assert_eq!(reads.callback(id).unwrap().as_ref(), Some(entry));
    }
    let keys: HashSet<u64> = lmdb.summaries.iter().map(|s| s.exec_key).collect();
    assert_eq!(reads.timers_of(&keys).unwrap(), lmdb.timers);
    assert_eq!(reads.wake_seq().unwrap(), lmdb.wake_seq);
    assert_eq!(reads.owners().unwrap(), lmdb.owners);
    for ((state, function, limit), want) in list_queries().into_iter().zip(&lmdb.lists) {
        let (rows, damaged) = reads.list(state, function, limit).unwrap();
        assert!(damaged.is_empty());
        same_summaries(&rows, want);
    }
    // What is not there is not found, the same way.
    let unknown = keys.iter().max().unwrap() + 100;
    assert_eq!(reads.exec_key_of("nope").unwrap(), None);
    assert!(reads.execution(unknown).unwrap().is_none());
    assert!(reads.execution(u64::MAX).unwrap().is_none());
    assert_eq!(reads.lease(unknown).unwrap(), None);
    assert_eq!(reads.last_record(unknown).unwrap(), None);
    assert!(matches!(reads.journal(unknown), Err(Error::CorruptStore(_))));
    assert!(matches!(reads.load_invocation(unknown), Err(Error::CorruptStore(_))));
    assert_eq!(reads.callback(&"0".repeat(32)).unwrap(), None);
    let only_one: HashSet<u64> = [lmdb.timers.0[0].exec_key].into();
    let (timers, damaged) = reads.timers_of(&only_one).unwrap();
    assert!(damaged.is_empty());
    assert!(!timers.is_empty() && timers.iter().all(|t| t.exec_key == lmdb.timers.0[0].exec_key));
    drop(callback_ids);
}

/// An execution row with the given columns (exec_key, id, (state,
/// created_ms), owner_id, wake), its lease epoch 7.
fn insert_exec(
    client: &mut Client,
    s: &str,
    key: i64,
    id: &str,
    (state, created): (i16, i64),
    owner: Option<i64>,
    wake: Option<i64>,
) {
    client
        .execute(
            &format!(
                "INSERT INTO {s}.executions (exec_key, execution_id, function, state, created_ms, updated_ms, \
                 owner_id, lease_epoch, wake) OVERRIDING SYSTEM VALUE VALUES ($1, $2, 'wf', $3, $4, $4, $5, 7, $6)"
            ),
            &[&key, &id, &state, &created, &owner, &wake],
        )
        .unwrap();
}

fn insert_record(client: &mut Client, s: &str, key: i64, seq: i32, bytes: &[u8]) {
    client
        .execute(
            &format!("INSERT INTO {s}.journal VALUES ($1, $2, $3)"),
            &[&key, &seq, &bytes],
        )
        .unwrap();
}

fn started(id: &str) -> Vec<u8> {
    let mut record = Record::new(RecordKind::Started, OpType::Execution, SubType::None, "");
    record.extra = Some(id.to_owned());
    record.payload = Some(b"{}".to_vec());
    record.encode()
}

#[test]
fn rows_no_perdure_writes_are_damage_naming_the_execution() {
    let Some(scratch) = common::store() else { return };
    let s = scratch.location.schema().to_owned();
    let mut client = scratch.client();
    // 1: fine, leased to an owner id with the top bit set (stored bit for bit).
    let owner = 0xfedc_ba98_7654_3210_u64;
    insert_exec(&mut client, &s, 1, "good", (1, 10), Some(owner as i64), Some(3));
    insert_record(&mut client, &s, 1, 0, &started("good"));
    insert_record(&mut client, &s, 1, 1, &step("1", b"x").encode());
    // 2: a record that does not decode.
    insert_exec(&mut client, &s, 2, "garbled", (1, 10), None, None);
    insert_record(&mut client, &s, 2, 0, &started("garbled"));
    let mut bytes = step("1", b"12345").encode();
    *bytes.last_mut().unwrap() ^= 1;
    insert_record(&mut client, &s, 2, 1, &bytes);
    // (More after it: a read that stops mid-stream leaves the connection fit.)
    for seq in 2..500 {
        insert_record(&mut client, &s, 2, seq, &step(&seq.to_string(), b"x").encode());
    }
    // 3: a gap in the journal.
    insert_exec(&mut client, &s, 3, "gap", (1, 10), None, None);
    insert_record(&mut client, &s, 3, 0, &started("gap"));
    insert_record(&mut client, &s, 3, 2, &step("1", b"x").encode());
    // 4: a negative time; 5: a negative wake-up value.
    insert_exec(&mut client, &s, 4, "before-1970", (1, -5), None, None);
    insert_exec(&mut client, &s, 5, "bad-wake", (1, 10), None, Some(-1));
    // 6: finished, its owner column left set: no lease.
    insert_exec(&mut client, &s, 6, "finished", (2, 10), Some(42), None);
    // 7: a child.
    insert_exec(&mut client, &s, 7, "good/2", (1, 11), None, None);
    client
        .execute(
            &format!("UPDATE {s}.executions SET parent_key = 1, parent_op = '2' WHERE exec_key = 7"),
            &[],
        )
        .unwrap();

    let reads = PgReads::connect(&scratch.location).unwrap();
    let good = reads.execution(1).unwrap().unwrap();
    assert!(good.pending);
    assert_eq!(reads.lease(1).unwrap(), Some(Lease { owner, epoch: 7 }));
    let loaded = reads.load_invocation(1).unwrap();
    assert_eq!((loaded.wake, loaded.index.len()), (3, 1));
    assert_eq!(reads.journal(1).unwrap().len(), 2);

    match reads.journal(2) {
        Err(Error::CorruptRecord {
            execution_id, sequence, ..
        }) => assert_eq!((execution_id.as_str(), sequence), ("garbled", 1)),
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    assert!(matches!(
        reads.load_invocation(2),
        Err(Error::CorruptRecord { sequence: 1, .. })
    ));
    assert_eq!(reads.journal(1).unwrap().len(), 2);
    assert_eq!(reads.last_record(2).unwrap().unwrap().op_id, "499");
    match reads.journal(3) {
        Err(Error::CorruptExecution {
            execution_id,
            what: "journal",
            reason,
        }) => {
            assert_eq!(execution_id, "gap");
            assert!(reason.contains("record 2 follows record 0"), "{reason}");
        }
        other => panic!("expected a damaged journal, got {other:?}"),
    }
    for (key, id) in [(4, "before-1970"), (5, "bad-wake")] {
        match reads.execution(key) {
            Err(Error::CorruptExecution { execution_id, .. }) => assert_eq!(execution_id, id),
            other => panic!("expected a damaged execution, got {other:?}"),
        }
        assert!(matches!(reads.execution_by_id(id), Err(Error::CorruptExecution { .. })));
    }
    assert_eq!(reads.lease(6).unwrap(), None);
    let child = reads.execution(7).unwrap().unwrap();
    let parent = child.meta.parent.unwrap();
    assert_eq!((parent.exec_key, parent.op_id.as_str()), (1, "2"));

    // The damaged rows come apart; they do not count towards the limit.
    let (rows, damaged) = reads.list(None, None, 0).unwrap();
    let listed: Vec<u64> = rows.iter().map(|r| r.exec_key).collect();
    assert_eq!(listed, [1, 2, 3, 6, 7]);
    assert_eq!(damaged.len(), 2);
    let (rows, damaged) = reads.list(None, None, 4).unwrap();
    assert_eq!(rows.iter().map(|r| r.exec_key).collect::<Vec<_>>(), [1, 2, 3, 6]);
    assert_eq!(damaged.len(), 2);
    let (rows, _) = reads.list(Some(ExecState::Succeeded), None, 0).unwrap();
    assert_eq!(rows.iter().map(|r| r.exec_key).collect::<Vec<_>>(), [6]);

    // A timer with a negative due time is not armed; its execution runs now.
    client
        .batch_execute(&format!(
            "INSERT INTO {s}.timers VALUES (100, 1, 1, 'w'), (-1, 3, 1, 'x'), (50, 2, 4, ''), (60, 6, 1, 'y')"
        ))
        .unwrap();
    let (timers, damaged) = reads.timers_of(&[1, 2, 3].into()).unwrap();
    assert_eq!(
        timers.iter().map(|t| (t.due_ms, t.exec_key)).collect::<Vec<_>>(),
        [(50, 2), (100, 1)]
    );
    assert_eq!(damaged, [3]);

    client
        .batch_execute(&format!(
            "INSERT INTO {s}.callbacks VALUES ('a', 1, 'cb', 0, -1, 0, 5), ('b', 1, 'cb', 1, 0, 0, 5)"
        ))
        .unwrap();
    assert!(matches!(reads.callback("a"), Err(Error::CorruptStore(text)) if text.contains("\"a\"")));
    assert_eq!(reads.callback("b").unwrap().unwrap().last_heartbeat_ms, 5);

    assert_eq!(reads.wake_seq().unwrap(), 0);
    client.execute(&format!("SELECT nextval('{s}.wake_seq')"), &[]).unwrap();
    assert_eq!(reads.wake_seq().unwrap(), 1);

    // Owners in unsigned order of their ids; a pid out of range is damage.
    client
        .batch_execute(&format!(
            "INSERT INTO {s}.owners VALUES (-2, 1, 'h', 7, 'epoch'::timestamptz + interval '1.5 seconds', \
             'epoch'::timestamptz + interval '2.25 seconds'), (5, 1, 'h', 8, now(), now())"
        ))
        .unwrap();
    let owners = reads.owners().unwrap();
    assert_eq!(owners.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [5, u64::MAX - 1]);
    assert_eq!(
        owners[1].1,
        OwnerEntry {
            pid: 7,
            started_ms: 1_500,
            renewed_ms: 2_250
        }
    );
    client
        .batch_execute(&format!(
            "UPDATE {s}.owners SET pid = 1::bigint << 40 WHERE owner_id = 5"
        ))
        .unwrap();
    assert!(matches!(reads.owners(), Err(Error::CorruptStore(_))));
}

/// An invocation's metadata, wake-up value and journal come from one
/// snapshot: a writer that appends a record and moves the wake-up value in
/// one transaction is seen whole or not at all, however the reads and the
/// commits interleave.
#[test]
fn an_invocation_is_loaded_from_one_snapshot() {
    let Some(scratch) = common::store() else { return };
    let s = scratch.location.schema().to_owned();
    let mut client = scratch.client();
    insert_exec(&mut client, &s, 1, "busy", (1, 10), Some(9), Some(0));
    insert_record(&mut client, &s, 1, 0, &started("busy"));
    const WRITES: i64 = 400;
    let writer = {
        let mut client = scratch.client();
        let s = s.clone();
        std::thread::spawn(move || {
            for n in 1..=WRITES {
                let mut txn = client.transaction().unwrap();
                let record = step(&n.to_string(), b"x").encode();
                txn.execute(
                    &format!("INSERT INTO {s}.journal VALUES (1, $1, $2)"),
                    &[&(n as i32), &record],
                )
                .unwrap();
                txn.execute(
                    &format!("UPDATE {s}.executions SET wake = $1, next_seq = $2 WHERE exec_key = 1"),
                    &[&n, &(n as i32 + 1)],
                )
                .unwrap();
                txn.commit().unwrap();
            }
        })
    };
    let reads = PgReads::connect(&scratch.location).unwrap();
    let mut seen = HashSet::new();
    loop {
        let done = writer.is_finished();
        let loaded = reads.load_invocation(1).unwrap();
        // Every step record is one operation: as many as the wake-up value.
        assert_eq!(loaded.index.len() as u64, loaded.wake, "a torn read");
        seen.insert(loaded.wake);
        if done {
            break;
        }
    }
    writer.join().unwrap();
    assert!(seen.contains(&(WRITES as u64)));
}
