//! The core without Python: journal, writer, wake-ups, callbacks, timers, map growth.

use std::sync::Arc;
use std::time::Duration;

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use perdure_core::clock::ManualClock;
use perdure_core::keys::ExecState;
use perdure_core::{
    Durability, Error, NewCallback, OpType, Record, RecordKind, Runtime, RuntimeOptions, Store, StoreOptions, SubType,
};

fn options(clock: Arc<ManualClock>, map_size: usize) -> RuntimeOptions {
    RuntimeOptions {
        store: StoreOptions {
            durability: Durability::None,
            map_size,
        },
        owner: true,
        poll_interval: Duration::from_millis(5),
        lease_timeout: Duration::from_secs(10),
        clock,
    }
}

fn open(dir: &std::path::Path) -> (Runtime, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    (Runtime::open(dir, options(clock.clone(), 1 << 20)).unwrap(), clock)
}

fn step_record(op_id: &str, payload: &[u8]) -> Record {
    let mut record = Record::new(RecordKind::Succeeded, OpType::Step, SubType::Step, op_id);
    record.payload = Some(payload.to_vec());
    record
}

#[test]
fn start_append_and_suspend() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _clock) = open(dir.path());
    let (exec, created) = runtime.start("e-1", "wf", b"{}".to_vec(), None).unwrap();
    assert!(created);
    assert_eq!(
        runtime.start("e-1", "wf", b"ignored".to_vec(), None).unwrap(),
        (exec, false)
    );
    assert!(matches!(
        runtime.start("e-1", "other", vec![], None),
        Err(Error::ExecutionIdConflict { .. })
    ));

    assert_eq!(runtime.next_ready(Duration::from_secs(1)).unwrap(), Some(exec));
    let loaded = runtime.load_invocation(exec).unwrap();
    assert!(loaded.index.is_empty(), "only the ExecutionStarted record so far");
    assert_eq!(loaded.index.input.as_deref(), Some(&b"{}"[..]));
    runtime
        .append(exec, vec![step_record("1", b"42")], vec![], None, None)
        .unwrap();
    let rerun = runtime.end_invocation(exec, loaded.wake, None, vec![], vec![]).unwrap();
    assert!(!rerun, "nothing woke the execution while it ran");
    runtime.finish(exec, false).unwrap();

    let journal = runtime.backend.journal(exec).unwrap();
    assert_eq!(journal.len(), 2);
    assert_eq!(journal[1].payload.as_deref(), Some(&b"42"[..]));
    assert!(
        runtime
            .backend
            .woken_since(0, runtime.owner_id().unwrap())
            .unwrap()
            .1
            .is_empty(),
        "a suspended execution is not pending"
    );
}

#[test]
fn a_wake_during_an_invocation_makes_it_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _clock) = open(dir.path());
    let (exec, _) = runtime.start("e-1", "wf", vec![], None).unwrap();
    runtime.next_ready(Duration::from_secs(1)).unwrap();
    let loaded = runtime.load_invocation(exec).unwrap();
    let mut started = Record::new(RecordKind::Started, OpType::Callback, SubType::Callback, "1");
    started.aux = 0;
    let callback = NewCallback {
        op_id: "1".into(),
        timeout_ms: 0,
        heartbeat_timeout_ms: 0,
    };
    let callback_id = runtime
        .append(exec, vec![started], vec![], Some(callback), None)
        .unwrap()
        .unwrap();
    assert_eq!(callback_id.len(), 32);
    // Answered before the invocation ends: the invocation did not see it.
    runtime
        .complete_callback(&callback_id, true, Some(b"\"yes\"".to_vec()))
        .unwrap();
    assert!(runtime.end_invocation(exec, loaded.wake, None, vec![], vec![]).unwrap());
    assert!(matches!(
        runtime.complete_callback(&callback_id, true, None),
        Err(Error::CallbackAlreadyCompleted { state: "succeeded", .. })
    ));
    assert!(matches!(
        runtime.complete_callback("nope", true, None),
        Err(Error::UnknownCallback(_))
    ));
    let journal = runtime.backend.journal(exec).unwrap();
    assert_eq!(journal.last().unwrap().kind, RecordKind::Succeeded);
    assert_eq!(journal.last().unwrap().op_type, OpType::Callback);
}

#[test]
fn timers_fire_by_the_clock_and_time_out_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, clock) = open(dir.path());
    let (exec, _) = runtime.start("e-1", "wf", vec![], None).unwrap();
    assert_eq!(runtime.next_ready(Duration::from_secs(1)).unwrap(), Some(exec));
    let loaded = runtime.load_invocation(exec).unwrap();
    let started = Record::new(RecordKind::Started, OpType::Callback, SubType::Callback, "1");
    let callback = NewCallback {
        op_id: "1".into(),
        timeout_ms: 60_000,
        heartbeat_timeout_ms: 0,
    };
    let callback_id = runtime
        .append(exec, vec![started], vec![], Some(callback), None)
        .unwrap()
        .unwrap();
    assert!(!runtime.end_invocation(exec, loaded.wake, None, vec![], vec![]).unwrap());
    runtime.finish(exec, false).unwrap();
    assert_eq!(runtime.pending_timers(), 1);

    assert_eq!(
        runtime.next_ready(Duration::from_millis(50)).unwrap(),
        None,
        "not due yet"
    );
    clock.set(1_000_000 + 60_000);
    runtime.poke_timers();
    assert_eq!(runtime.next_ready(Duration::from_secs(5)).unwrap(), Some(exec));
    let journal = runtime.backend.journal(exec).unwrap();
    let last = journal.last().unwrap();
    assert_eq!(
        (last.kind, last.op_type, last.op_id.as_str()),
        (RecordKind::TimedOut, OpType::Callback, "1")
    );
    assert!(matches!(
        runtime.complete_callback(&callback_id, true, None),
        Err(Error::CallbackAlreadyCompleted { state: "timed out", .. })
    ));
}

#[test]
fn timers_and_pending_work_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let exec;
    {
        let (runtime, _clock) = open(dir.path());
        exec = runtime.start("e-1", "wf", vec![], None).unwrap().0;
        runtime.next_ready(Duration::from_secs(1)).unwrap();
        let loaded = runtime.load_invocation(exec).unwrap();
        let wait = Record::new(RecordKind::Started, OpType::Wait, SubType::Wait, "1");
        runtime
            .end_invocation(exec, loaded.wake, None, vec![wait], vec![(500, "1".into())])
            .unwrap();
        runtime.start("e-2", "wf", vec![], None).unwrap();
        runtime.close(Duration::from_secs(1)).unwrap();
    }
    let clock = Arc::new(ManualClock::new(1_000_000 + 500));
    let runtime = Runtime::open(dir.path(), options(clock, 1 << 20)).unwrap();
    let mut woken = vec![
        runtime.next_ready(Duration::from_secs(5)).unwrap().unwrap(),
        runtime.next_ready(Duration::from_secs(5)).unwrap().unwrap(),
    ];
    woken.sort();
    assert_eq!(
        woken,
        vec![exec, exec + 1],
        "the due timer and the never-run execution both resume"
    );
}

#[test]
fn owners_share_a_store_and_each_execution_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let (first, clock) = open(dir.path());
    let second = Runtime::open(dir.path(), options(clock.clone(), 1 << 20)).unwrap();
    assert_ne!(first.owner_id(), second.owner_id());
    let (exec, _) = first.start("e-1", "wf", vec![], None).unwrap();
    assert_eq!(first.next_ready(Duration::from_secs(1)).unwrap(), Some(exec));
    first.load_invocation(exec).unwrap();
    second.load_invocation(exec).unwrap();
    assert!(
        matches!(
            second.append(exec, vec![step_record("1", b"1")], vec![], None, None),
            Err(Error::LeaseLost { ref execution_id }) if execution_id == "e-1"
        ),
        "only the lease holder writes an invocation's records"
    );
    first
        .append(exec, vec![step_record("1", b"1")], vec![], None, None)
        .unwrap();
    assert_eq!(
        second.backend.lease(exec).unwrap().map(|lease| lease.owner),
        first.owner_id()
    );

    // The first owner leaves: the second claims the active execution it ran
    // and runs it, since it waits to run (it never finished its invocation).
    first.close(Duration::from_secs(1)).unwrap();
    assert_eq!(second.next_ready(Duration::from_secs(5)).unwrap(), Some(exec));
    assert_eq!(
        second.backend.lease(exec).unwrap().map(|lease| lease.owner),
        second.owner_id()
    );
    second.load_invocation(exec).unwrap();
    second
        .append(exec, vec![step_record("2", b"2")], vec![], None, None)
        .unwrap();
    assert_eq!(
        second.backend.journal(exec).unwrap().len(),
        3,
        "nothing lost in the hand-over"
    );

    let client = Runtime::open(
        dir.path(),
        RuntimeOptions {
            owner: false,
            ..options(clock, 1 << 20)
        },
    )
    .unwrap();
    assert_eq!(client.owner_id(), None);
    assert_eq!(client.backend.list(None, None, 0).unwrap().0.len(), 1);
}

#[test]
fn group_commit_keeps_every_append_of_every_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _clock) = open(dir.path());
    let runtime = Arc::new(runtime);
    let execs: Vec<u64> = (0..8)
        .map(|i| runtime.start(&format!("e-{i}"), "wf", vec![], None).unwrap().0)
        .collect();
    for &exec in &execs {
        runtime.load_invocation(exec).unwrap();
    }
    let threads: Vec<_> = execs
        .iter()
        .map(|&exec| {
            let runtime = runtime.clone();
            std::thread::spawn(move || {
                for step in 0..200 {
                    let op_id = (step + 1).to_string();
                    runtime
                        .append(exec, vec![step_record(&op_id, op_id.as_bytes())], vec![], None, None)
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    for exec in execs {
        let journal = runtime.backend.journal(exec).unwrap();
        assert_eq!(journal.len(), 201);
        for (index, record) in journal.iter().enumerate().skip(1) {
            assert_eq!(record.op_id, index.to_string(), "appends of one caller stay in order");
        }
    }
}

#[test]
fn the_map_grows_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1));
    let options = options(clock, 64 << 10);
    let store = Store::open(dir.path(), &options.store).unwrap();
    let runtime = Runtime::on(store.clone(), options).unwrap();
    let before = store.map_size();
    let (exec, _) = runtime.start("e-1", "wf", vec![], None).unwrap();
    runtime.load_invocation(exec).unwrap();
    // Incompressible payloads, several times the initial map.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for step in 0..64 {
        let payload: Vec<u8> = (0..8192)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        runtime
            .append(exec, vec![step_record(&step.to_string(), &payload)], vec![], None, None)
            .unwrap();
    }
    assert!(store.map_size() > before);
    assert_eq!(runtime.backend.journal(exec).unwrap().len(), 65);
}

#[test]
fn cancelled_execution_takes_no_more_records() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _clock) = open(dir.path());
    let (exec, _) = runtime.start("e-1", "wf", vec![], None).unwrap();
    runtime.cancel("e-1", b"{}".to_vec()).unwrap();
    assert!(matches!(
        runtime.append(exec, vec![step_record("1", b"1")], vec![], None, None),
        Err(Error::ExecutionFinished {
            status: "CANCELLED",
            ..
        })
    ));
    let summary = runtime.backend.execution(exec).unwrap().unwrap();
    assert_eq!(summary.meta.state, ExecState::Cancelled);
    assert!(matches!(
        runtime.cancel("missing", vec![]),
        Err(Error::ExecutionNotFound(_))
    ));
}

/// Rewrites the values of `db` (those whose key `which` picks) without the
/// 4-byte checksum trailer of format 5, as a store of format 4 or older has them.
fn strip_checksums(txn: &mut heed::RwTxn, db: Database<Bytes, Bytes>, which: impl Fn(&[u8]) -> bool) {
    let entries: Vec<(Vec<u8>, Vec<u8>)> = db
        .iter(txn)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|(key, _)| which(key))
        .map(|(key, value)| (key.to_vec(), value[..value.len() - 4].to_vec()))
        .collect();
    for (key, value) in entries {
        db.put(txn, &key, &value).unwrap();
    }
}

fn raw_env(dir: &std::path::Path) -> heed::Env {
    // SAFETY: the runtime that used this directory is closed and dropped.
    unsafe { EnvOpenOptions::new().max_dbs(16).open(dir) }.unwrap()
}

#[test]
fn corrupt_records_are_reported_with_execution_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, other) = {
        let (runtime, _clock) = open(dir.path());
        let exec = runtime.start("bad", "wf", vec![], None).unwrap().0;
        let other = runtime.start("good", "wf", vec![], None).unwrap().0;
        runtime.load_invocation(exec).unwrap();
        runtime
            .append(exec, vec![step_record("1", b"12345")], vec![], None, None)
            .unwrap();
        runtime.close(Duration::from_secs(1)).unwrap();
        (exec, other)
    };
    {
        let env = raw_env(dir.path());
        let mut txn = env.write_txn().unwrap();
        let journal: Database<Bytes, Bytes> = env.open_database(&txn, Some("journal")).unwrap().unwrap();
        let mut key = exec.to_be_bytes().to_vec();
        key.extend_from_slice(&1u32.to_be_bytes());
        let mut value = journal.get(&txn, &key).unwrap().unwrap().to_vec();
        *value.last_mut().unwrap() ^= 0x01;
        journal.put(&mut txn, &key, &value).unwrap();
        txn.commit().unwrap();
    }
    let (runtime, _clock) = open(dir.path());
    match runtime.backend.journal(exec) {
        Err(Error::CorruptRecord {
            execution_id,
            sequence,
            reason,
        }) => {
            assert_eq!((execution_id.as_str(), sequence), ("bad", 1));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a corrupt record error, got {other:?}"),
    }
    assert_eq!(runtime.backend.journal(other).unwrap().len(), 1);
}

#[test]
fn a_newer_format_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (runtime, _clock) = open(dir.path());
        runtime.close(Duration::from_secs(1)).unwrap();
    }
    {
        let env = raw_env(dir.path());
        let mut txn = env.write_txn().unwrap();
        let meta: Database<Bytes, Bytes> = env.open_database(&txn, Some("meta")).unwrap().unwrap();
        meta.put(&mut txn, b"format_version", &99u32.to_be_bytes()).unwrap();
        txn.commit().unwrap();
    }
    let clock = Arc::new(ManualClock::new(1));
    match Runtime::open(dir.path(), options(clock, 1 << 20)) {
        Err(Error::FormatVersion {
            found: 99,
            supported: perdure_core::backend::lmdb::FORMAT_VERSION,
            ..
        }) => {}
        Err(other) => panic!("expected a format version error, got {other:?}"),
        Ok(_) => panic!("expected a format version error, got a runtime"),
    }
    let env = raw_env(dir.path());
    let txn = env.read_txn().unwrap();
    let meta: Database<Bytes, Bytes> = env.open_database(&txn, Some("meta")).unwrap().unwrap();
    assert_eq!(
        meta.get(&txn, b"format_version").unwrap(),
        Some(&99u32.to_be_bytes()[..])
    );
}

/// A format-1 store (one owner, no leases, no wake index) is upgraded when
/// opened: its active executions are claimed and its pending ones run.
#[test]
fn a_format_1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let exec = {
        let (runtime, _clock) = open(dir.path());
        let (exec, _) = runtime.start("e-1", "wf", vec![], None).unwrap();
        runtime.close(Duration::from_secs(1)).unwrap();
        exec
    };
    {
        let env = raw_env(dir.path());
        let mut txn = env.write_txn().unwrap();
        for name in ["wakes", "owners", "leases", "orphans"] {
            let db: Database<Bytes, Bytes> = env.open_database(&txn, Some(name)).unwrap().unwrap();
            db.clear(&mut txn).unwrap();
        }
        // Format 1 values had no checksum trailer.
        for name in ["executions", "exec_ids", "callbacks", "pending", "timers"] {
            let db: Database<Bytes, Bytes> = env.open_database(&txn, Some(name)).unwrap().unwrap();
            strip_checksums(&mut txn, db, |_| true);
        }
        let meta: Database<Bytes, Bytes> = env.open_database(&txn, Some("meta")).unwrap().unwrap();
        strip_checksums(&mut txn, meta, |key| key != b"format_version");
        meta.delete(&mut txn, b"lease_epoch").unwrap(); // format 5's
        meta.put(&mut txn, b"format_version", &1u32.to_be_bytes()).unwrap();
        txn.commit().unwrap();
    }
    let (runtime, _clock) = open(dir.path());
    assert_eq!(runtime.next_ready(Duration::from_secs(5)).unwrap(), Some(exec));
    assert_eq!(
        runtime.backend.lease(exec).unwrap().map(|lease| lease.owner),
        runtime.owner_id()
    );
    runtime.close(Duration::from_secs(1)).unwrap();
    drop(runtime);
    let env = raw_env(dir.path());
    let txn = env.read_txn().unwrap();
    let meta: Database<Bytes, Bytes> = env.open_database(&txn, Some("meta")).unwrap().unwrap();
    assert_eq!(
        meta.get(&txn, b"format_version").unwrap(),
        Some(&perdure_core::backend::lmdb::FORMAT_VERSION.to_be_bytes()[..])
    );
    let wakes: Database<Bytes, Bytes> = env.open_database(&txn, Some("wakes")).unwrap().unwrap();
    assert_eq!(wakes.len(&txn).unwrap(), 1, "the pending wake-up is indexed");
}

/// An owner that others took for hung loses its leases; its late writes are
/// refused, and what it starts before registering again is left for others.
/// An engine that judges others by a 1 ms lease, so it reaps every other
/// owner whose renewal stands still between two of its looks (100 ms apart;
/// they renew every lease timeout / 4), and claims `exec`.
fn reaper_of(dir: &std::path::Path, clock: Arc<ManualClock>, exec: u64) -> Runtime {
    std::thread::sleep(Duration::from_millis(10));
    let eager = Runtime::open(
        dir,
        RuntimeOptions {
            lease_timeout: Duration::from_millis(1),
            ..options(clock, 1 << 20)
        },
    )
    .unwrap();
    assert_eq!(eager.next_ready(Duration::from_secs(5)).unwrap(), Some(exec));
    eager
}

#[test]
fn a_reaped_owner_is_fenced_and_takes_no_new_leases() {
    let dir = tempfile::tempdir().unwrap();
    let (slow, clock) = open(dir.path());
    let (exec, _) = slow.start("e-1", "wf", vec![], None).unwrap();
    let eager = reaper_of(dir.path(), clock, exec);
    assert_eq!(
        eager.backend.lease(exec).unwrap().map(|lease| lease.owner),
        eager.owner_id()
    );
    slow.load_invocation(exec).unwrap();
    assert!(matches!(
        slow.append(exec, vec![step_record("1", b"1")], vec![], None, None),
        Err(Error::LeaseLost { .. })
    ));
    let (later, _) = slow.start("e-2", "wf", vec![], None).unwrap();
    assert_eq!(eager.next_ready(Duration::from_secs(5)).unwrap(), Some(later));
    assert_eq!(
        eager.backend.lease(later).unwrap().map(|lease| lease.owner),
        eager.owner_id()
    );
}

fn child_of(runtime: &Runtime, parent: u64, op_id: &str, timeout_ms: Option<u64>) -> u64 {
    let mut started = Record::new(
        RecordKind::Started,
        OpType::ChainedInvoke,
        SubType::ChainedInvoke,
        op_id,
    );
    started.extra = Some(format!("p/{op_id}"));
    let child = perdure_core::runtime::NewChild {
        execution_id: format!("p/{op_id}"),
        function: "kid".into(),
        input: b"7".to_vec(),
        op_id: op_id.into(),
        timeout_ms,
    };
    runtime.load_invocation(parent).unwrap();
    runtime
        .append(parent, vec![started], vec![], None, Some(child))
        .unwrap();
    runtime.backend.exec_key_of(&format!("p/{op_id}")).unwrap().unwrap()
}

fn kinds(runtime: &Runtime, exec: u64) -> Vec<(RecordKind, OpType)> {
    let journal = runtime.backend.journal(exec).unwrap();
    journal.iter().map(|r| (r.kind, r.op_type)).collect()
}

#[test]
fn a_child_reports_its_result_to_the_parent_and_wakes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _clock) = open(dir.path());
    let (parent, _) = runtime.start("p", "wf", vec![], None).unwrap();
    let child = child_of(&runtime, parent, "1", None);
    // The parent suspends, having seen its own start.
    let seen = runtime.load_invocation(parent).unwrap().wake;
    assert!(!runtime.end_invocation(parent, seen, None, vec![], vec![]).unwrap());
    let mut done = Record::new(RecordKind::Succeeded, OpType::Execution, SubType::None, "");
    done.payload = Some(b"14".to_vec());
    runtime.load_invocation(child).unwrap();
    runtime
        .end_invocation(child, 1, Some(ExecState::Succeeded), vec![done], vec![])
        .unwrap();
    let journal = runtime.backend.journal(parent).unwrap();
    let reported = journal.last().unwrap();
    assert_eq!(
        (reported.kind, reported.op_type, reported.op_id.as_str()),
        (RecordKind::Succeeded, OpType::ChainedInvoke, "1")
    );
    assert_eq!(reported.payload.as_deref(), Some(&b"14"[..]));
    assert_eq!(reported.extra.as_deref(), Some("p/1"));
    assert!(
        runtime.backend.execution(parent).unwrap().unwrap().pending,
        "the parent was woken"
    );
    // A second child under the same id is refused.
    let mut again = Record::new(RecordKind::Started, OpType::ChainedInvoke, SubType::ChainedInvoke, "1");
    again.extra = Some("p/1".into());
    let duplicate = perdure_core::runtime::NewChild {
        execution_id: "p/1".into(),
        function: "kid".into(),
        input: vec![],
        op_id: "2".into(),
        timeout_ms: None,
    };
    runtime.load_invocation(parent).unwrap();
    assert!(matches!(
        runtime.append(parent, vec![again], vec![], None, Some(duplicate)),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn stopping_a_parent_cancels_its_waits_and_stops_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _clock) = open(dir.path());
    let (parent, _) = runtime.start("p", "wf", vec![], None).unwrap();
    let child = child_of(&runtime, parent, "1", None);
    let mut wait = Record::new(RecordKind::Started, OpType::Wait, SubType::Wait, "1");
    wait.aux = 60_000;
    runtime.load_invocation(child).unwrap();
    runtime
        .append(child, vec![wait], vec![(60_000, "1".into())], None, None)
        .unwrap();
    runtime.cancel("p", br#"{"ErrorMessage":"stop"}"#.to_vec()).unwrap();
    assert_eq!(
        kinds(&runtime, parent).last(),
        Some(&(RecordKind::Cancelled, OpType::Execution))
    );
    assert_eq!(
        kinds(&runtime, child)[2..],
        [
            (RecordKind::Cancelled, OpType::Wait),
            (RecordKind::Cancelled, OpType::Execution)
        ]
    );
    let child_meta = runtime.backend.execution(child).unwrap().unwrap().meta;
    assert_eq!(child_meta.state, ExecState::Cancelled);
    // The stopped child did not report back to the stopped parent.
    assert_eq!(kinds(&runtime, parent).len(), 3);
}

#[test]
fn an_execution_times_out_and_its_parent_hears_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, clock) = open(dir.path());
    let (parent, _) = runtime.start("p", "wf", vec![], Some(10_000)).unwrap();
    let child = child_of(&runtime, parent, "1", Some(500));
    clock.set(1_000_000 + 600);
    runtime.poke_timers();
    let summary = runtime
        .wait_finished(child, Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(summary.meta.state, ExecState::TimedOut);
    let reported = runtime.backend.last_record(parent).unwrap().unwrap();
    assert_eq!(
        (reported.kind, reported.op_type),
        (RecordKind::TimedOut, OpType::ChainedInvoke)
    );
    assert!(String::from_utf8_lossy(reported.payload.as_deref().unwrap()).contains("timed out after 0.5 seconds"));
    assert_eq!(
        runtime.backend.execution(parent).unwrap().unwrap().meta.state,
        ExecState::Active
    );
    clock.set(1_000_000 + 10_000);
    runtime.poke_timers();
    let summary = runtime
        .wait_finished(parent, Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(summary.meta.state, ExecState::TimedOut);
}

#[test]
fn deferred_commits_answer_through_their_callback() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _clock) = open(dir.path());
    let (exec, _) = runtime.start("e-1", "wf", vec![], None).unwrap();
    runtime.load_invocation(exec).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    for op in 1..=50 {
        let sender = sender.clone();
        runtime.append_later(
            exec,
            vec![step_record(&op.to_string(), b"1")],
            vec![],
            None,
            None,
            Box::new(move |answer| sender.send(answer.is_ok()).unwrap()),
        );
    }
    let answers: Vec<bool> = (0..50)
        .map(|_| receiver.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    assert!(answers.iter().all(|ok| *ok));
    assert_eq!(runtime.backend.journal(exec).unwrap().len(), 51);
    runtime.cancel("e-1", b"{}".to_vec()).unwrap();
    runtime.append_later(
        exec,
        vec![step_record("51", b"1")],
        vec![],
        None,
        None,
        Box::new(move |answer| {
            sender
                .send(matches!(answer, Err(Error::ExecutionFinished { .. })))
                .unwrap()
        }),
    );
    assert!(
        receiver.recv_timeout(Duration::from_secs(5)).unwrap(),
        "a finished execution refuses later appends"
    );
}

/// An owner reaped as hung registers again under the same id and claims
/// back an execution another engine ran meanwhile: an invocation it loaded
/// before is fenced off by the lease epoch, though the owner id matches.
#[test]
fn a_reclaimed_execution_fences_the_invocation_from_before() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let slow = Runtime::open(
        dir.path(),
        RuntimeOptions {
            lease_timeout: Duration::from_secs(2),
            ..options(clock.clone(), 1 << 20)
        },
    )
    .unwrap();
    let (exec, _) = slow.start("e-1", "wf", vec![], None).unwrap();
    let before = slow.load_invocation(exec).unwrap();
    let eager = reaper_of(dir.path(), clock, exec);
    eager.load_invocation(exec).unwrap();
    eager
        .append(exec, vec![step_record("1", b"eager")], vec![], None, None)
        .unwrap();
    eager.close(Duration::from_secs(1)).unwrap();
    // `slow` learns it was reaped, registers again and claims the orphan.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.backend.lease(exec).unwrap().map(|lease| lease.owner) != slow.owner_id() {
        assert!(
            std::time::Instant::now() < deadline,
            "slow never claimed the execution back"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(
        slow.backend.lease(exec).unwrap(),
        before.lease,
        "a new grant, a new epoch"
    );
    assert!(matches!(
        slow.append(exec, vec![step_record("1", b"stale")], vec![], None, None),
        Err(Error::LeaseLost { .. })
    ));
    // A fresh invocation sees what `eager` wrote, and may write.
    let fresh = slow.load_invocation(exec).unwrap();
    assert!(fresh.index.get("1").is_some());
    slow.append(exec, vec![step_record("2", b"2")], vec![], None, None)
        .unwrap();
    let journal = slow.backend.journal(exec).unwrap();
    let payloads: Vec<_> = journal.iter().filter_map(|r| r.payload.clone()).collect();
    assert!(!payloads.contains(&b"stale".to_vec()));
    assert_eq!(journal.len(), 3);
}

/// A flipped bit in an execution's metadata names that execution; the
/// others are listed, claimed and run as before.
#[test]
fn damaged_metadata_names_its_execution_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = {
        let (runtime, _clock) = open(dir.path());
        let bad = runtime.start("bad", "wf", vec![], None).unwrap().0;
        let good = runtime.start("good", "wf", vec![], None).unwrap().0;
        runtime.close(Duration::from_secs(1)).unwrap();
        (bad, good)
    };
    {
        let env = raw_env(dir.path());
        let mut txn = env.write_txn().unwrap();
        let executions: Database<Bytes, Bytes> = env.open_database(&txn, Some("executions")).unwrap().unwrap();
        let mut value = executions.get(&txn, &bad.to_be_bytes()).unwrap().unwrap().to_vec();
        value[1] ^= 0x04; // the state byte: ACTIVE (1) would read as 5 (TIMED_OUT)
        executions.put(&mut txn, &bad.to_be_bytes(), &value).unwrap();
        txn.commit().unwrap();
    }
    let (runtime, _clock) = open(dir.path());
    let (rows, damaged) = runtime.backend.list(None, None, 0).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.meta.execution_id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert!(matches!(
        damaged.as_slice(),
        [Error::CorruptExecution { execution_id, what: "metadata", .. }] if execution_id == "bad"
    ));
    assert!(matches!(
        runtime.backend.execution_by_id("bad"),
        Err(Error::CorruptExecution { ref execution_id, .. }) if execution_id == "bad"
    ));
    assert!(matches!(
        runtime.load_invocation(bad),
        Err(Error::CorruptExecution { .. })
    ));
    // The good one was claimed and runs.
    assert_eq!(runtime.next_ready(Duration::from_secs(5)).unwrap(), Some(good));
    runtime.load_invocation(good).unwrap();
    runtime
        .append(good, vec![step_record("1", b"1")], vec![], None, None)
        .unwrap();
    assert_eq!(runtime.backend.journal(good).unwrap().len(), 2);
}
