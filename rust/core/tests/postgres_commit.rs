//! The write side of the PostgreSQL store against a real server: the same
//! groups of mutations committed through the LMDB store and through
//! a `PgWriter` give the same answers, batch by batch, and leave stores
//! that answer every read question alike (the same journal bytes,
//! executions, leases, callbacks, timers, owners and lists).

mod common;

use std::collections::HashSet;

use perdure_core::backend::postgres::commit::PgWriter;
use perdure_core::backend::postgres::reads::PgReads;
use perdure_core::backend::postgres::PgLocation;
use perdure_core::backend::{Backend, Lease, Mutation, Outcome};
use perdure_core::keys::{CallbackEntry, CallbackState, ExecState, OwnerEntry, ParentLink, Timer, TimerKind};
use perdure_core::{Durability, OpType, Record, RecordKind, Result, Store, StoreOptions, SubType};
use postgres::Client;

const A: u64 = 0xA1;
/// An owner id with its top bit set: stored bit for bit as a negative bigint.
const B: u64 = 0xF000_0000_0000_00B2;
/// Owner registrations before the first lease: PostgreSQL gives each one an
/// epoch from the sequence that lease epochs come from, LMDB does not.
const REGISTRATIONS_FIRST: u64 = 2;

/// What a group's builder may ask of the store it will be committed to.
trait Look {
    fn lease(&self, exec_key: u64) -> Lease {
        self.lease_of(exec_key).unwrap()
    }
    fn lease_of(&self, exec_key: u64) -> Option<Lease>;
    fn wake(&self, exec_key: u64) -> u64;
    fn timers(&self) -> Vec<Timer>;
}

struct Lmdb<'a>(&'a Store);
struct Pg<'a>(&'a PgReads);

impl Look for Lmdb<'_> {
    fn lease_of(&self, exec_key: u64) -> Option<Lease> {
        self.0.lease(exec_key).unwrap()
    }
    fn wake(&self, exec_key: u64) -> u64 {
        self.0.load_invocation(exec_key).map_or(0, |invocation| invocation.wake)
    }
    fn timers(&self) -> Vec<Timer> {
        self.0.timers_of(&(1..=16).collect()).unwrap().0
    }
}

impl Look for Pg<'_> {
    fn lease_of(&self, exec_key: u64) -> Option<Lease> {
        self.0.lease(exec_key).unwrap()
    }
    fn wake(&self, exec_key: u64) -> u64 {
        self.0.load_invocation(exec_key).map_or(0, |invocation| invocation.wake)
    }
    fn timers(&self) -> Vec<Timer> {
        self.0.timers_of(&(1..=16).collect()).unwrap().0
    }
}

struct Both {
    lmdb: std::sync::Arc<Store>,
    _dir: tempfile::TempDir,
    /// Statements kept prepared; the tests on PostgreSQL alone commit
    /// through a writer that keeps none.
    writer: PgWriter,
    reads: PgReads,
}

/// A batch's answer, comparable across stores (errors by their message).
fn answer(result: &Result<Vec<Outcome>>) -> std::result::Result<Vec<String>, String> {
    match result {
        Ok(outcomes) => Ok(outcomes.iter().map(|o| format!("{o:?}")).collect()),
        Err(err) => Err(err.to_string()),
    }
}

impl Both {
    /// Commits the group `build` makes for each store on both; asserts the
    /// answers are the same and returns them.
    fn commit(&mut self, build: impl Fn(&dyn Look) -> Vec<Vec<Mutation>>) -> Vec<Result<Vec<Outcome>>> {
        let on_lmdb = self.lmdb.commit(&build(&Lmdb(&self.lmdb))).unwrap();
        let on_pg = self.writer.commit(&build(&Pg(&self.reads))).unwrap();
        let (lmdb, pg): (Vec<_>, Vec<_>) = (on_lmdb.iter().map(answer).collect(), on_pg.iter().map(answer).collect());
        assert_eq!(lmdb, pg);
        on_pg
    }

    /// Every read question, asked of both stores, answered alike.
    fn compare(&self, callback_ids: &[&str]) {
        self.compare_with(callback_ids, Some(REGISTRATIONS_FIRST));
    }

    /// As `compare`; lease epochs on PostgreSQL are LMDB's plus
    /// `epochs_ahead`, or (None) not compared: registrations take epochs
    /// from the same sequence there.
    fn compare_with(&self, callback_ids: &[&str], epochs_ahead: Option<u64>) {
        let (lmdb_all, lmdb_damaged) = self.lmdb.list(None, None, 0).unwrap();
        let (pg_all, pg_damaged) = self.reads.list(None, None, 0).unwrap();
        assert!(lmdb_damaged.is_empty() && pg_damaged.is_empty());
        assert_eq!(format!("{lmdb_all:?}"), format!("{pg_all:?}"));
        let keys: Vec<u64> = lmdb_all.iter().map(|s| s.exec_key).collect();
        for state in [
            None,
            Some(ExecState::Active),
            Some(ExecState::Succeeded),
            Some(ExecState::Cancelled),
        ] {
            for (function, limit) in [(None, 0), (Some("wf"), 0), (None, 2)] {
                let lmdb = self.lmdb.list(state, function, limit).unwrap().0;
                let pg = self.reads.list(state, function, limit).unwrap().0;
                assert_eq!(format!("{lmdb:?}"), format!("{pg:?}"));
            }
        }
        for &key in &keys {
            let summary = self.lmdb.execution(key).unwrap();
            let id = summary.as_ref().unwrap().meta.execution_id.clone();
            assert_eq!(
                format!("{summary:?}"),
                format!("{:?}", self.reads.execution(key).unwrap())
            );
            assert_eq!(
                self.lmdb.exec_key_of(&id).unwrap(),
                self.reads.exec_key_of(&id).unwrap()
            );
            assert_eq!(
                format!("{:?}", self.lmdb.execution_by_id(&id).unwrap()),
                format!("{:?}", self.reads.execution_by_id(&id).unwrap())
            );
            let (lmdb_journal, pg_journal) = (self.lmdb.journal(key).unwrap(), self.reads.journal(key).unwrap());
            assert_eq!(lmdb_journal, pg_journal, "journal of {id}");
            let bytes = |journal: &[Record]| journal.iter().map(Record::encode).collect::<Vec<_>>();
            assert_eq!(bytes(&lmdb_journal), bytes(&pg_journal));
            assert_eq!(
                self.lmdb.last_record(key).unwrap(),
                self.reads.last_record(key).unwrap()
            );
            let (lmdb_lease, pg_lease) = (self.lmdb.lease(key).unwrap(), self.reads.lease(key).unwrap());
            match epochs_ahead {
                Some(ahead) => assert_eq!(
                    lmdb_lease.map(|l| Lease {
                        owner: l.owner,
                        epoch: l.epoch + ahead
                    }),
                    pg_lease,
                    "lease of {id}"
                ),
                None => assert_eq!(lmdb_lease.map(|l| l.owner), pg_lease.map(|l| l.owner), "lease of {id}"),
            }
            let (lmdb_inv, pg_inv) = (
                self.lmdb.load_invocation(key).unwrap(),
                self.reads.load_invocation(key).unwrap(),
            );
            assert_eq!(lmdb_inv.wake, pg_inv.wake);
            assert_eq!(format!("{:?}", lmdb_inv.meta), format!("{:?}", pg_inv.meta));
        }
        let set: HashSet<u64> = keys.iter().copied().collect();
        assert_eq!(self.lmdb.timers_of(&set).unwrap(), self.reads.timers_of(&set).unwrap());
        for id in callback_ids {
            let lmdb: Option<CallbackEntry> = self.lmdb.callback(id).unwrap();
            assert_eq!(format!("{lmdb:?}"), format!("{:?}", self.reads.callback(id).unwrap()));
        }
        assert_eq!(self.lmdb.wake_seq().unwrap(), self.reads.wake_seq().unwrap());
        assert_eq!(self.lmdb.owners().unwrap(), self.reads.owners().unwrap());
    }
}

fn started(payload: &[u8]) -> Record {
    let mut record = Record::new(RecordKind::Started, OpType::Execution, SubType::None, "");
    record.payload = Some(payload.to_vec());
    record.timestamp_ms = 1_000;
    record
}

fn step(op_id: &str, payload: &[u8]) -> Record {
    let mut record = Record::new(RecordKind::Succeeded, OpType::Step, SubType::Step, op_id);
    record.payload = Some(payload.to_vec());
    record.timestamp_ms = 2_000;
    record
}

fn create(
    id: &str,
    function: &str,
    owner: Option<u64>,
    parent: Option<ParentLink>,
    deadline_ms: Option<u64>,
) -> Mutation {
    Mutation::CreateExecution {
        execution_id: id.into(),
        function: function.into(),
        started: started(id.as_bytes()),
        owner,
        parent,
        deadline_ms,
    }
}

fn fence(look: &dyn Look, exec_key: u64) -> Mutation {
    Mutation::Fence {
        exec_key,
        lease: look.lease(exec_key),
    }
}

fn owner_entry(pid: u32, renewed_ms: u64) -> OwnerEntry {
    OwnerEntry {
        pid,
        started_ms: 1_000,
        renewed_ms,
    }
}

fn callback(exec_key: u64, op_id: &str, deadline_ms: u64, heartbeat_timeout_ms: u64) -> CallbackEntry {
    CallbackEntry {
        state: CallbackState::Pending,
        exec_key,
        deadline_ms,
        heartbeat_timeout_ms,
        last_heartbeat_ms: 2_000,
        op_id: op_id.into(),
    }
}

fn open() -> Option<(Both, common::Scratch)> {
    let scratch = common::store()?;
    let dir = tempfile::tempdir().unwrap();
    let lmdb = Store::open(
        dir.path(),
        &StoreOptions {
            durability: Durability::None,
            map_size: 4 << 20,
        },
    )
    .unwrap();
    let both = Both {
        lmdb,
        _dir: dir,
        writer: PgWriter::connect(&scratch.location).unwrap(),
        reads: PgReads::connect(&scratch.location).unwrap(),
    };
    Some((both, scratch))
}

#[test]
fn the_same_groups_give_the_same_answers_and_the_same_stores() {
    let Some((mut both, _scratch)) = open() else {
        return;
    };
    // Owners.
    both.commit(|_| {
        vec![
            vec![Mutation::RegisterOwner {
                owner: A,
                entry: owner_entry(11, 1_000),
            }],
            vec![Mutation::RegisterOwner {
                owner: B,
                entry: owner_entry(22, 1_000),
            }],
        ]
    });
    // Executions with and without owner, a child, a repeated start, a conflict.
    let created = both.commit(|_| {
        vec![
            vec![create("e1", "wf", Some(A), None, Some(50_000))],
            vec![create("e2", "other", None, None, None)],
            vec![create("e3", "wf", Some(B), None, None)],
            vec![create(
                "c1",
                "wf",
                Some(A),
                Some(ParentLink {
                    exec_key: 1,
                    op_id: "child".into(),
                }),
                None,
            )],
            vec![create("e1", "wf", Some(A), None, None)],
            vec![create("e1", "other", Some(A), None, None)],
            vec![create("e5", "wf", Some(A), None, Some(9_000))],
            vec![create("e6", "wf", Some(0x77), None, None)], // an owner never registered: orphan
        ]
    });
    assert!(
        matches!(created[0], Ok(ref o) if o[0] == Outcome::Created { exec_key: 1, created: true, timer: Some(Timer { due_ms: 50_000, exec_key: 1, kind: TimerKind::ExecutionTimeout, subject: String::new() }) })
    );
    assert!(matches!(created[4], Ok(ref o) if matches!(o[0], Outcome::Created { exec_key: 1, created: false, .. })));
    assert!(created[5].is_err());
    both.compare(&[]);

    // Fenced appends, a refused fence with a stale epoch, callbacks, a timer.
    let results = both.commit(|look| {
        let stale = Lease {
            owner: A,
            epoch: look.lease(1).epoch - 1,
        };
        vec![
            // Several records of one execution in a batch, then in the next batch.
            vec![
                fence(look, 1),
                Mutation::Append {
                    exec_key: 1,
                    record: step("s1", b"one"),
                },
                Mutation::Append {
                    exec_key: 1,
                    record: step("s1b", b"one b"),
                },
                Mutation::Append {
                    exec_key: 1,
                    record: Record::new(RecordKind::Started, OpType::Wait, SubType::Wait, "sleep"),
                },
                Mutation::AddTimer(Timer {
                    due_ms: 5_000,
                    exec_key: 1,
                    kind: TimerKind::Wake,
                    subject: "sleep".into(),
                }),
            ],
            vec![
                Mutation::Fence {
                    exec_key: 1,
                    lease: stale,
                },
                Mutation::Append {
                    exec_key: 1,
                    record: step("stale", b"never"),
                },
            ],
            vec![
                fence(look, 3),
                Mutation::Append {
                    exec_key: 3,
                    record: Record::new(RecordKind::Started, OpType::Callback, SubType::Callback, "wait1"),
                },
                Mutation::CreateCallback {
                    callback_id: "cb1".into(),
                    entry: callback(3, "wait1", 90_000, 1_000),
                },
            ],
            vec![
                fence(look, 1),
                Mutation::Append {
                    exec_key: 1,
                    record: step("s1c", b"one c"),
                },
                Mutation::CreateCallback {
                    callback_id: "cb2".into(),
                    entry: callback(1, "wait2", 0, 0),
                },
            ],
            // Refused by its last mutation: its append must not be stored.
            vec![
                fence(look, 1),
                Mutation::Append {
                    exec_key: 1,
                    record: step("lost", b"never"),
                },
                Mutation::CreateCallback {
                    callback_id: "cb1".into(),
                    entry: callback(1, "again", 0, 0),
                },
            ],
        ]
    });
    assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok());
    assert!(results[1].is_err() && results[4].is_err());
    both.compare(&["cb1", "cb2"]);

    // Heartbeat, completions, timers fired (once), a rearm.
    let mut completed = Record::new(RecordKind::Succeeded, OpType::Callback, SubType::Callback, "wait2");
    completed.payload = Some(b"answer".to_vec());
    let results = both.commit(|_| {
        vec![
            vec![Mutation::Heartbeat {
                callback_id: "cb1".into(),
                now_ms: 2_500,
            }],
            vec![Mutation::CompleteCallback {
                callback_id: "cb2".into(),
                state: CallbackState::Succeeded,
                record: completed.clone(),
            }],
            vec![Mutation::CompleteCallback {
                callback_id: "cb2".into(),
                state: CallbackState::Failed,
                record: completed.clone(),
            }],
            vec![Mutation::Heartbeat {
                callback_id: "nope".into(),
                now_ms: 2_600,
            }],
            vec![Mutation::FireTimer {
                timer: Timer {
                    due_ms: 5_000,
                    exec_key: 1,
                    kind: TimerKind::Wake,
                    subject: "sleep".into(),
                },
                now_ms: 5_000,
            }],
            vec![Mutation::FireTimer {
                timer: Timer {
                    due_ms: 5_000,
                    exec_key: 1,
                    kind: TimerKind::Wake,
                    subject: "sleep".into(),
                },
                now_ms: 5_001,
            }],
            vec![Mutation::FireTimer {
                timer: Timer {
                    due_ms: 3_000,
                    exec_key: 3,
                    kind: TimerKind::CallbackHeartbeat,
                    subject: "cb1".into(),
                },
                now_ms: 3_000,
            }],
        ]
    });
    assert!(results[2].is_err() && results[3].is_err());
    assert!(
        matches!(results[6], Ok(ref o) if matches!(o[0], Outcome::Rearmed(_))),
        "{:?}",
        results[6]
    );
    both.compare(&["cb1", "cb2"]);

    // End of invocations: a rerun, a suspend, a child finishing into its parent.
    let mut done = Record::new(RecordKind::Succeeded, OpType::Execution, SubType::None, "");
    done.payload = Some(b"child result".to_vec());
    done.timestamp_ms = 6_000;
    let results = both.commit(|look| {
        vec![
            vec![
                fence(look, 3),
                Mutation::EndInvocation {
                    exec_key: 3,
                    seen_wake: 0,
                    final_state: None,
                    records: vec![],
                },
            ],
            vec![
                fence(look, 2 + 3),
                Mutation::EndInvocation {
                    exec_key: 5,
                    seen_wake: look.wake(5),
                    final_state: None,
                    records: vec![step("s5", b"five")],
                },
            ],
            vec![
                fence(look, 4),
                Mutation::EndInvocation {
                    exec_key: 4,
                    seen_wake: look.wake(4),
                    final_state: Some(ExecState::Succeeded),
                    records: vec![done.clone()],
                },
            ],
        ]
    });
    assert!(matches!(results[0], Ok(ref o) if o[1] == Outcome::Ended { rerun: true, parent: None }));
    assert!(matches!(results[2], Ok(ref o) if matches!(o[1], Outcome::Ended { parent: Some(_), .. })));
    both.compare(&["cb1", "cb2"]);

    // Owners: renew, a reap refused by a renewal seen, a reap, a claim of orphans.
    let results = both.commit(|_| {
        vec![
            vec![Mutation::RenewOwner {
                owner: A,
                now_ms: 7_000,
            }],
            vec![Mutation::Reap {
                owner: A,
                renewed_ms: Some(1_000),
            }],
            vec![Mutation::Reap {
                owner: B,
                renewed_ms: Some(1_000),
            }],
            vec![Mutation::RenewOwner {
                owner: B,
                now_ms: 7_000,
            }],
        ]
    });
    assert!(results[3].is_err(), "a reaped owner cannot renew");
    both.compare(&["cb1", "cb2"]);
    let results = both.commit(|_| {
        vec![
            vec![Mutation::Claim { owner: A, max: 2 }],
            vec![Mutation::Claim { owner: A, max: 10 }],
        ]
    });
    let claimed: Vec<u64> = results
        .iter()
        .flat_map(|r| match r.as_ref().unwrap().first() {
            Some(Outcome::Claimed(keys)) => keys.iter().map(|(key, _)| *key).collect::<Vec<u64>>(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(claimed, vec![2, 3, 6]);
    both.compare(&["cb1", "cb2"]);

    // Cancel (with its open wait), a timeout, then writes to finished executions refused.
    let mut cancelled = Record::new(RecordKind::Cancelled, OpType::Execution, SubType::None, "");
    cancelled.timestamp_ms = 8_000;
    let results = both.commit(|look| {
        vec![
            vec![Mutation::Cancel {
                exec_key: 3,
                record: cancelled.clone(),
            }],
            vec![Mutation::Cancel {
                exec_key: 1,
                record: cancelled.clone(),
            }],
            vec![Mutation::FireTimer {
                timer: Timer {
                    due_ms: 9_000,
                    exec_key: 5,
                    kind: TimerKind::ExecutionTimeout,
                    subject: String::new(),
                },
                now_ms: 9_000,
            }],
            vec![
                fence(look, 2),
                Mutation::Append {
                    exec_key: 2,
                    record: step("s2", b"two"),
                },
            ],
            vec![Mutation::Append {
                exec_key: 1,
                record: step("late", b"never"),
            }],
            vec![Mutation::RegisterOwner {
                owner: B,
                entry: owner_entry(33, 9_000),
            }],
        ]
    });
    assert!(results[..4].iter().all(|r| r.is_ok()), "{results:?}");
    assert!(results[4].is_err());
    both.compare(&["cb1", "cb2"]);
}

/// A group's writes are sent together just before its COMMIT: every read
/// within the group (a journal, a callback, a timer, a row, the orphans, the
/// leases) must answer as if each write had been made at once.
#[test]
fn reads_within_a_group_see_the_groups_own_writes() {
    let Some((mut both, _scratch)) = open() else {
        return;
    };
    both.commit(|_| {
        vec![vec![Mutation::RegisterOwner {
            owner: A,
            entry: owner_entry(11, 1_000),
        }]]
    });
    // New executions used within their own group: appended to, one with a
    // child started and finished into it, one finished, one created orphan
    // and claimed, a callback made on one and answered, a timer made and fired.
    let mut child_done = Record::new(RecordKind::Succeeded, OpType::Execution, SubType::None, "");
    child_done.payload = Some(b"from the child".to_vec());
    child_done.timestamp_ms = 3_000;
    let mut completed = Record::new(RecordKind::Succeeded, OpType::Callback, SubType::Callback, "cbop");
    completed.payload = Some(b"answer".to_vec());
    let wake_timer = Timer {
        due_ms: 4_000,
        exec_key: 1,
        kind: TimerKind::Wake,
        subject: "nap".into(),
    };
    let results = both.commit(|_| {
        vec![
            vec![create("p", "wf", Some(A), None, None)],
            vec![
                Mutation::Append {
                    exec_key: 1,
                    record: step("s1", b"one"),
                },
                Mutation::Append {
                    exec_key: 1,
                    record: Record::new(
                        RecordKind::Started,
                        OpType::ChainedInvoke,
                        SubType::ChainedInvoke,
                        "kid",
                    ),
                },
            ],
            vec![create(
                "kid",
                "wf",
                Some(A),
                Some(ParentLink {
                    exec_key: 1,
                    op_id: "kid".into(),
                }),
                None,
            )],
            vec![Mutation::EndInvocation {
                exec_key: 2,
                seen_wake: 0,
                final_state: Some(ExecState::Succeeded),
                records: vec![step("k1", b"kid step"), child_done.clone()],
            }],
            vec![create("lonely", "other", None, None, Some(60_000))],
            vec![Mutation::Claim { owner: A, max: 5 }],
            vec![
                Mutation::Append {
                    exec_key: 1,
                    record: Record::new(RecordKind::Started, OpType::Callback, SubType::Callback, "cbop"),
                },
                Mutation::CreateCallback {
                    callback_id: "cb".into(),
                    entry: callback(1, "cbop", 0, 500),
                },
            ],
            vec![Mutation::Heartbeat {
                callback_id: "cb".into(),
                now_ms: 2_700,
            }],
            vec![Mutation::CompleteCallback {
                callback_id: "cb".into(),
                state: CallbackState::Succeeded,
                record: completed.clone(),
            }],
            vec![Mutation::CompleteCallback {
                callback_id: "cb".into(),
                state: CallbackState::Failed,
                record: completed.clone(),
            }],
            vec![Mutation::AddTimer(wake_timer.clone())],
            vec![Mutation::FireTimer {
                timer: wake_timer.clone(),
                now_ms: 4_000,
            }],
            vec![Mutation::FireTimer {
                timer: wake_timer.clone(),
                now_ms: 4_001,
            }],
            // Made and removed within the group: a timer added twice, fired once.
            vec![
                Mutation::AddTimer(Timer {
                    subject: "twice".into(),
                    ..wake_timer.clone()
                }),
                Mutation::AddTimer(Timer {
                    subject: "twice".into(),
                    ..wake_timer.clone()
                }),
            ],
            vec![Mutation::FireTimer {
                timer: Timer {
                    subject: "twice".into(),
                    ..wake_timer.clone()
                },
                now_ms: 4_000,
            }],
        ]
    });
    assert!(
        matches!(results[3], Ok(ref o) if matches!(o[0], Outcome::Ended { parent: Some(_), .. })),
        "{results:?}"
    );
    assert!(
        matches!(results[5], Ok(ref o) if o[0] == Outcome::Claimed(vec![(3, true)])),
        "{results:?}"
    );
    assert!(results[8].is_ok() && results[9].is_err(), "{results:?}");
    assert!(matches!(results[11], Ok(ref o) if o[0] != Outcome::Woke(None)));
    assert!(matches!(results[12], Ok(ref o) if o[0] == Outcome::Woke(None)));
    both.compare_with(&["cb"], None);

    // A callback with a heartbeat made and timed out, a wait opened and
    // then cancelled with its execution, leases (one granted in the group)
    // released by a reap and claimed again: all within one group, over
    // rows the group has written.
    let mut cancelled = Record::new(RecordKind::Cancelled, OpType::Execution, SubType::None, "");
    cancelled.timestamp_ms = 9_000;
    let results = both.commit(|look| {
        vec![
            vec![
                fence(look, 3),
                Mutation::Append {
                    exec_key: 3,
                    record: Record::new(RecordKind::Started, OpType::Callback, SubType::Callback, "hb"),
                },
                Mutation::CreateCallback {
                    callback_id: "hb".into(),
                    entry: callback(3, "hb", 0, 100),
                },
            ],
            vec![Mutation::FireTimer {
                timer: Timer {
                    due_ms: 2_100,
                    exec_key: 3,
                    kind: TimerKind::CallbackHeartbeat,
                    subject: "hb".into(),
                },
                now_ms: 5_000,
            }],
            vec![
                fence(look, 1),
                Mutation::Append {
                    exec_key: 1,
                    record: Record::new(RecordKind::Started, OpType::Wait, SubType::Wait, "w"),
                },
                Mutation::Append {
                    exec_key: 1,
                    record: step("s2", b"two"),
                },
                Mutation::Cancel {
                    exec_key: 1,
                    record: cancelled.clone(),
                },
            ],
            vec![create("late", "wf", Some(A), None, None)],
            vec![Mutation::Reap {
                owner: A,
                renewed_ms: None,
            }],
            vec![fence(look, 3)],
            vec![Mutation::Claim { owner: A, max: 5 }],
        ]
    });
    assert!(results[..5].iter().all(|r| r.is_ok()), "{results:?}");
    assert!(results[5].is_err(), "the reap took the lease: {results:?}");
    assert!(
        matches!(results[6], Ok(ref o) if o[0] == Outcome::Claimed(vec![(3, true), (4, true)])),
        "{results:?}"
    );
    both.compare_with(&["cb", "hb"], None);
    let journal = both.reads.journal(1).unwrap();
    assert!(
        journal
            .iter()
            .any(|r| r.kind == RecordKind::Cancelled && r.op_type == OpType::Wait && r.op_id == "w"),
        "the wait opened in the group was cancelled: {journal:?}"
    );
}

/// Creates executions "x1" (leased to A) and "x2", "x3" (orphans) on PostgreSQL alone.
fn pg_only() -> Option<(PgWriter, PgReads, common::Scratch)> {
    let scratch = common::store()?;
    let mut client = PgWriter::unprepared(&scratch.location).unwrap();
    let reads = PgReads::connect(&scratch.location).unwrap();
    let results = client
        .commit(&[
            vec![Mutation::RegisterOwner {
                owner: A,
                entry: owner_entry(11, 1_000),
            }],
            vec![create("x1", "wf", Some(A), None, None)],
            vec![create("x2", "wf", None, None, None)],
            vec![create("x3", "wf", None, None, None)],
        ])
        .unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    Some((client, reads, scratch))
}

#[test]
fn a_group_failed_by_the_server_stores_nothing_of_any_batch() {
    let Some((mut client, reads, scratch)) = pg_only() else {
        return;
    };
    let schema = scratch.location.schema().to_string();
    // A constraint of the test's own makes the server fail the second batch's write.
    client
        .batch_execute(&format!("ALTER TABLE {schema}.timers ADD CHECK (due_ms < 100000)"))
        .unwrap();
    let lease = reads.lease(1).unwrap().unwrap();
    let wake_before = reads.wake_seq().unwrap();
    let failed = client.commit(&[
        vec![
            Mutation::Fence { exec_key: 1, lease },
            Mutation::Append {
                exec_key: 1,
                record: step("s1", b"one"),
            },
        ],
        vec![Mutation::CreateCallback {
            callback_id: "cb".into(),
            entry: callback(2, "wait", 0, 0),
        }],
        vec![Mutation::AddTimer(Timer {
            due_ms: 200_000,
            exec_key: 1,
            kind: TimerKind::Wake,
            subject: String::new(),
        })],
    ]);
    assert!(
        // The write's own error (its COMMIT, pipelined, rolled back): a
        // failure before commit, not a commit of unknown outcome.
        matches!(failed, Err(perdure_core::Error::Postgres { ref what, .. }) if what.starts_with("cannot write a group")),
        "{failed:?}"
    );
    assert_eq!(reads.journal(1).unwrap().len(), 1, "only the start record");
    assert!(reads.callback("cb").unwrap().is_none());
    assert_eq!(reads.wake_seq().unwrap(), wake_before);
    // The connection is fit for the next group.
    let results = client
        .commit(&[vec![
            Mutation::Fence { exec_key: 1, lease },
            Mutation::Append {
                exec_key: 1,
                record: step("s1", b"one"),
            },
        ]])
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(reads.journal(1).unwrap().len(), 2);
}

#[test]
fn a_writer_whose_group_the_server_failed_commits_the_next() {
    let Some((_unprepared, reads, scratch)) = pg_only() else {
        return;
    };
    let schema = scratch.location.schema().to_string();
    let mut writer = PgWriter::connect(&scratch.location).unwrap();
    let lease = reads.lease(1).unwrap().unwrap();
    let append = |op_id: &str, due_ms: u64| {
        vec![
            Mutation::Fence { exec_key: 1, lease },
            Mutation::Append {
                exec_key: 1,
                record: step(op_id, b"one"),
            },
            Mutation::AddTimer(Timer {
                due_ms,
                exec_key: 1,
                kind: TimerKind::Wake,
                subject: op_id.into(),
            }),
        ]
    };
    // Its statements prepared by a first group, then one of them failed.
    assert!(writer.commit(&[append("s1", 1_000)]).unwrap()[0].is_ok());
    scratch
        .client()
        .batch_execute(&format!("ALTER TABLE {schema}.timers ADD CHECK (due_ms < 100000)"))
        .unwrap();
    let failed = writer.commit(&[append("s2", 200_000)]);
    assert!(
        // The write's own error (its COMMIT, pipelined, rolled back): a
        // failure before commit, not a commit of unknown outcome.
        matches!(failed, Err(perdure_core::Error::Postgres { ref what, .. }) if what.starts_with("cannot write a group")),
        "{failed:?}"
    );
    assert_eq!(reads.journal(1).unwrap().len(), 2);
    assert!(writer.commit(&[append("s2", 2_000)]).unwrap()[0].is_ok());
    let journal = reads.journal(1).unwrap();
    assert_eq!(journal.len(), 3);
    assert_eq!(journal[2].op_id, "s2");
}

/// Waits until a session waits on a lock in a statement naming `schema`.
fn until_blocked(client: &mut Client, schema: &str) {
    for _ in 0..2_000 {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND datname = current_database() AND strpos(query, $1) > 0",
                &[&schema],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("no session ever waited on a lock");
}

#[test]
fn a_fence_checks_the_lease_as_committed_by_a_claim_it_waited_for() {
    let Some((_client, reads, scratch)) = pg_only() else {
        return;
    };
    let schema = scratch.location.schema().to_string();
    let lease = reads.lease(1).unwrap().unwrap();
    // Another host moves the lease of x1 (as its claim would), holding the row meanwhile.
    let mut other = scratch.client();
    let mut moving = other.transaction().unwrap();
    moving
        .execute(
            &format!(
                "UPDATE {schema}.executions SET owner_id = $1, lease_epoch = nextval('{schema}.lease_epoch') \
                 WHERE exec_key = 1"
            ),
            &[&(B as i64)],
        )
        .unwrap();
    let writer = commit_elsewhere(
        &scratch.location,
        vec![vec![
            Mutation::Fence { exec_key: 1, lease },
            Mutation::Append {
                exec_key: 1,
                record: step("stale", b"never"),
            },
        ]],
    );
    until_blocked(&mut scratch.client(), &schema);
    moving.commit().unwrap();
    let results = writer.join().unwrap().unwrap();
    assert!(
        matches!(results[0], Err(perdure_core::Error::LeaseLost { .. })),
        "{results:?}"
    );
    assert_eq!(reads.journal(1).unwrap().len(), 1);
    assert_eq!(reads.lease(1).unwrap().unwrap().owner, B);
}

#[test]
fn a_claim_skips_orphans_another_commit_holds() {
    let Some((mut client, reads, scratch)) = pg_only() else {
        return;
    };
    let schema = scratch.location.schema().to_string();
    let mut other = scratch.client();
    let mut holding = other.transaction().unwrap();
    holding
        .execute(
            &format!("SELECT 1 FROM {schema}.executions WHERE exec_key = 2 FOR NO KEY UPDATE"),
            &[],
        )
        .unwrap();
    let results = client.commit(&[vec![Mutation::Claim { owner: A, max: 10 }]]).unwrap();
    assert_eq!(results[0].as_ref().unwrap(), &vec![Outcome::Claimed(vec![(3, true)])]);
    holding.commit().unwrap();
    assert!(reads.lease(2).unwrap().is_none(), "x2 is still an orphan");
    assert_eq!(reads.lease(3).unwrap().unwrap().owner, A);
    let results = client.commit(&[vec![Mutation::Claim { owner: A, max: 10 }]]).unwrap();
    assert_eq!(results[0].as_ref().unwrap(), &vec![Outcome::Claimed(vec![(2, true)])]);
}

#[test]
fn a_group_failed_to_break_a_deadlock_is_run_again() {
    let Some((_client, reads, scratch)) = pg_only() else {
        return;
    };
    let schema = scratch.location.schema().to_string();
    let lease = reads.lease(1).unwrap().unwrap();
    // Another session holds x2's row, then asks for x1's, which the group
    // holds while it waits for x2's: a deadlock. This session waits long
    // before looking for one, so the server breaks it by failing the group.
    let mut other = scratch.client();
    other.batch_execute("SET deadlock_timeout = '60s'").unwrap();
    let mut holding = other.transaction().unwrap();
    holding
        .execute(
            &format!("SELECT 1 FROM {schema}.executions WHERE exec_key = 2 FOR NO KEY UPDATE"),
            &[],
        )
        .unwrap();
    let writer = commit_elsewhere(
        &scratch.location,
        vec![vec![
            Mutation::Fence { exec_key: 1, lease },
            Mutation::Append {
                exec_key: 1,
                record: step("s1", b"one"),
            },
            Mutation::Append {
                exec_key: 2,
                record: step("s1", b"two"),
            },
        ]],
    );
    until_blocked(&mut scratch.client(), &schema);
    holding
        .execute(
            &format!("SELECT 1 FROM {schema}.executions WHERE exec_key = 1 FOR NO KEY UPDATE"),
            &[],
        )
        .unwrap();
    holding.commit().unwrap();
    let results = writer.join().unwrap().unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(reads.journal(1).unwrap().len(), 2);
    assert_eq!(reads.journal(2).unwrap().len(), 2);
}

#[test]
fn an_execution_another_session_creates_meanwhile_is_found_not_duplicated() {
    let Some((_client, reads, scratch)) = pg_only() else {
        return;
    };
    let schema = scratch.location.schema().to_string();
    // Another host's commit inserts "dup" and has not committed yet.
    let mut other = scratch.client();
    let mut creating = other.transaction().unwrap();
    let key: i64 = creating
        .query_one(
            &format!(
                "INSERT INTO {schema}.executions (execution_id, function, state, created_ms, updated_ms) \
                 VALUES ('dup', 'wf', 1, 0, 0) RETURNING exec_key"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    creating
        .execute(
            &format!("INSERT INTO {schema}.journal VALUES ($1, 0, $2)"),
            &[&key, &started(b"dup").encode()],
        )
        .unwrap();
    let writer = commit_elsewhere(
        &scratch.location,
        vec![
            vec![create("dup", "wf", Some(A), None, None)],
            vec![create("other", "wf", Some(A), None, None)],
        ],
    );
    until_blocked(&mut scratch.client(), &schema);
    creating.commit().unwrap();
    let results = writer.join().unwrap().unwrap();
    let outcomes: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
    assert!(
        matches!(outcomes[0][0], Outcome::Created { exec_key, created: false, .. } if exec_key == key as u64),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[1][0], Outcome::Created { created: true, .. }));
    assert_eq!(reads.journal(key as u64).unwrap().len(), 1);
    assert_eq!(reads.list(None, None, 0).unwrap().0.len(), 5);
}

/// Commits `group` on a thread of its own, over a connection of its own
/// (to be blocked by a transaction the test holds open).
fn commit_elsewhere(location: &PgLocation, group: Vec<Vec<Mutation>>) -> std::thread::JoinHandle<GroupResults> {
    let location = location.clone();
    std::thread::spawn(move || PgWriter::unprepared(&location)?.commit(&group))
}

type GroupResults = Result<Vec<Result<Vec<Outcome>>>>;

/// A small deterministic generator (xorshift), so a failing seed can be rerun.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One mutation drawn from the whole language, over a few executions,
/// owners and callbacks, often invalid on purpose (unknown keys, stale
/// leases, finished executions, callbacks answered twice).
fn random_mutation(dice: &mut Dice, look: &dyn Look, now_ms: u64) -> Mutation {
    let owners = [A, B];
    let owner = owners[dice.below(2) as usize];
    let exec_key = 1 + dice.below(6);
    let callback_id = format!("k{}", dice.below(4));
    let mut record = step(&format!("op{}", dice.below(5)), b"x");
    record.timestamp_ms = now_ms;
    match dice.below(15) {
        0 => Mutation::RegisterOwner {
            owner,
            entry: owner_entry(7, now_ms),
        },
        1 => Mutation::RenewOwner { owner, now_ms },
        2 => Mutation::Reap {
            owner,
            renewed_ms: dice.chance(50).then_some(now_ms - dice.below(2) * 100),
        },
        3 => Mutation::Claim {
            owner,
            max: 1 + dice.below(3) as usize,
        },
        4 | 5 => {
            let parent = dice.chance(30).then(|| ParentLink {
                exec_key: 1 + dice.below(4),
                op_id: format!("child{}", dice.below(3)),
            });
            Mutation::CreateExecution {
                execution_id: format!("r{}", dice.below(8)),
                function: ["wf", "other"][dice.below(2) as usize].into(),
                started: started(b"in"),
                owner: dice.chance(70).then_some(owner),
                parent,
                deadline_ms: dice.chance(30).then_some(now_ms + dice.below(3) * 500),
            }
        }
        6 => match look.lease_of(exec_key) {
            Some(lease) if dice.chance(80) => Mutation::Fence { exec_key, lease },
            Some(lease) => Mutation::Fence {
                exec_key,
                lease: Lease {
                    owner: lease.owner,
                    epoch: lease.epoch.saturating_sub(1),
                },
            },
            None => Mutation::Fence {
                exec_key,
                lease: Lease { owner, epoch: 1 << 40 },
            },
        },
        7 => Mutation::Append { exec_key, record },
        8 => {
            let kind = if dice.chance(50) {
                OpType::Wait
            } else {
                OpType::Callback
            };
            let sub = if kind == OpType::Wait {
                SubType::Wait
            } else {
                SubType::Callback
            };
            let mut opened = Record::new(RecordKind::Started, kind, sub, format!("w{}", dice.below(3)));
            opened.timestamp_ms = now_ms;
            Mutation::Append {
                exec_key,
                record: opened,
            }
        }
        9 => Mutation::AddTimer(Timer {
            due_ms: now_ms + dice.below(3) * 100,
            exec_key,
            kind: TimerKind::Wake,
            subject: format!("t{}", dice.below(2)),
        }),
        10 => Mutation::CreateCallback {
            callback_id,
            entry: CallbackEntry {
                last_heartbeat_ms: now_ms,
                ..callback(exec_key, "cbop", dice.below(2) * (now_ms + 300), dice.below(2) * 200)
            },
        },
        11 => Mutation::CompleteCallback {
            callback_id,
            state: [CallbackState::Succeeded, CallbackState::Failed][dice.below(2) as usize],
            record: Record::new(RecordKind::Succeeded, OpType::Callback, SubType::Callback, "cbop"),
        },
        12 => {
            let timers = look.timers();
            if timers.is_empty() || dice.chance(20) {
                Mutation::Heartbeat { callback_id, now_ms }
            } else {
                Mutation::FireTimer {
                    timer: timers[dice.below(timers.len() as u64) as usize].clone(),
                    now_ms: now_ms + dice.below(2) * 1_000,
                }
            }
        }
        13 => {
            let mut last = Record::new(
                [RecordKind::Succeeded, RecordKind::Failed][dice.below(2) as usize],
                OpType::Execution,
                SubType::None,
                "",
            );
            last.timestamp_ms = now_ms;
            let finish = dice.chance(40);
            let mut records = vec![record; dice.below(3) as usize];
            if finish {
                records.push(last);
            }
            Mutation::EndInvocation {
                exec_key,
                seen_wake: if dice.chance(70) { look.wake(exec_key) } else { 0 },
                final_state: finish.then_some(ExecState::Succeeded),
                records,
            }
        }
        _ => {
            let mut cancelled = Record::new(RecordKind::Cancelled, OpType::Execution, SubType::None, "");
            cancelled.timestamp_ms = now_ms;
            Mutation::Cancel {
                exec_key,
                record: cancelled,
            }
        }
    }
}

#[test]
fn random_groups_give_the_same_answers_and_the_same_stores() {
    for seed in 1..=16u64 {
        let Some((mut both, _scratch)) = open() else {
            return;
        };
        let mut now_ms = 10_000;
        for group in 0..14u64 {
            now_ms += 250;
            // The same draws for both stores: the builder runs once per store.
            let state = seed * 7_919 + group * 104_729;
            let results = both.commit(|look| {
                let mut dice = Dice(state);
                let batches = 1 + dice.below(4);
                (0..batches)
                    .map(|_| {
                        let size = 1 + dice.below(3);
                        (0..size).map(|_| random_mutation(&mut dice, look, now_ms)).collect()
                    })
                    .collect()
            });
            assert!(!results.is_empty());
            both.compare_with(&["k0", "k1", "k2", "k3"], None);
        }
    }
}
