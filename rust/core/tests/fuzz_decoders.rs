//! Fuzzing every decoder of bytes from disk (issue 9).
//!
//! A small real store is written once with the core's own API (finished,
//! failed, suspended, cancelled and timed executions, a child execution, a
//! callback with both deadlines, wait timers, a compressed payload, a custom
//! sub type label, an owner and a lease). Its keys and values are the seed
//! corpus. Each case damages seeds (bit flips, truncations, extensions,
//! random bytes, all-ones runs where length fields and counters sit), either
//! raw or with the checksum made to match again (a value that passes its
//! checksum must still be decoded safely), and then:
//!
//! * feeds them to every decoder directly (records, keys, sealed values,
//!   execution metadata, callbacks, owners, leases, timers, zstd frames, the
//!   replay index);
//! * writes them into a copy of the store and drives every read and write
//!   path of the core over it: the store's reads, the writer's mutations
//!   (claims, reaps, timers firing, callbacks, appends, cancels, starts) and
//!   an owning runtime starting and closing on it.
//!
//! Nothing may panic (in any thread: a panic hook counts them, including
//! those the writer catches), abort, or make an allocation out of
//! proportion to the bytes read. An error is the right answer to damage.
//!
//! `PERDURE_FUZZ_CASES` sets the number of decoder cases (default 12,000; the
//! store cases are a tenth of it, at least 24); `PROPTEST_RNG_SEED` replays
//! a run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use perdure_core::backend::{Backend, Lease, Mutation};
use perdure_core::clock::ManualClock;
use perdure_core::keys::{
    self, CallbackEntry, CallbackState, ExecMeta, ExecState, OwnerEntry, ParentLink, Timer, TimerKind,
};
use perdure_core::runtime::NewChild;
use perdure_core::writer::Writer;
use perdure_core::{
    sealed, Durability, Error, NewCallback, OpType, Record, RecordKind, ReplayIndex, Runtime, RuntimeOptions, Store,
    StoreOptions, SubType,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

// ---------------------------------------------------------------------------
// Watching for panics and giant allocations.

/// The system allocator, remembering the largest single request per thread.
struct Watching;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `f` and returns what it returned with the largest single allocation
/// this thread made meanwhile.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LARGEST.with(|largest| largest.replace(0));
    let result = f();
    let during = LARGEST.with(|largest| largest.replace(before.max(largest.get())));
    (result, during)
}

/// The most one case may ask for at once: the seed store is a few dozen
/// KiB, so anything near this comes from a length read off the disk.
const ALLOCATION_LIMIT: usize = 64 << 20;

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Counts every panic of the process, in whatever thread, even one that is
/// caught (the writer turns a panicking commit into an error).
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(format!("{name}: {info}"));
            }
            default(info);
        }));
    });
}

/// The panics of this thread, and of the threads the core starts, since
/// the last look (the other tests report their own).
fn take_thread_panics() -> Vec<String> {
    let me = std::thread::current().name().unwrap_or("").to_string();
    let mut panics = PANICS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (mine, others): (Vec<String>, Vec<String>) = panics
        .drain(..)
        .partition(|p| p.starts_with(&me) || p.starts_with("perdure-"));
    *panics = others;
    mine
}

fn cases() -> u32 {
    std::env::var("PERDURE_FUZZ_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(12_000)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // A failure is fixed with a regression test of its own below.
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// The seed corpus: a real store.

const NOW: u64 = 1_790_000_000_000;
const DBS: [&str; 11] = [
    "meta",
    "executions",
    "exec_ids",
    "journal",
    "timers",
    "callbacks",
    "pending",
    "wakes",
    "owners",
    "leases",
    "orphans",
];
const OWNER: u64 = 0x0123_4567_89ab_cdef;

#[derive(Clone, Debug)]
struct Entry {
    db: &'static str,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Entry {
    /// How the value is protected: sealed (checksum over key and value),
    /// a journal record (its own checksum), or not at all.
    fn sealed(&self) -> bool {
        !(self.db == "journal" || (self.db == "meta" && self.key == b"format_version"))
    }
}

struct Corpus {
    _dir: tempfile::TempDir,
    data: Vec<u8>,
    entries: Vec<Entry>,
    execution_ids: Vec<String>,
    callback_ids: Vec<String>,
}

fn options(clock: Arc<ManualClock>, owner: bool) -> RuntimeOptions {
    RuntimeOptions {
        store: store_options(),
        owner,
        poll_interval: Duration::from_millis(1),
        lease_timeout: Duration::from_secs(10),
        clock,
    }
}

fn store_options() -> StoreOptions {
    StoreOptions {
        durability: Durability::None,
        map_size: 4 << 20,
    }
}

fn record(kind: RecordKind, op_type: OpType, sub_type: SubType, op_id: &str) -> Record {
    Record::new(kind, op_type, sub_type, op_id)
}

fn step(kind: RecordKind, op_id: &str, payload: &[u8]) -> Record {
    let mut step = record(kind, OpType::Step, SubType::Step, op_id);
    step.name = Some(format!("step {op_id}"));
    step.attempt = 1;
    step.aux = 3;
    step.payload = Some(payload.to_vec());
    step
}

fn ending(kind: RecordKind, payload: &[u8]) -> Vec<Record> {
    let mut invocation = record(RecordKind::InvocationCompleted, OpType::Execution, SubType::None, "");
    invocation.aux = 12;
    let mut end = record(kind, OpType::Execution, SubType::None, "");
    end.payload = Some(payload.to_vec());
    vec![invocation, end]
}

fn suspend() -> Vec<Record> {
    let mut invocation = record(RecordKind::InvocationCompleted, OpType::Execution, SubType::None, "");
    invocation.aux = 7;
    vec![invocation]
}

fn build_corpus() -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut callback_ids = Vec::new();
    {
        let clock = Arc::new(ManualClock::new(NOW));
        let runtime = Runtime::open(path, options(clock, true)).unwrap();
        let error = br#"{"ErrorType":"ValueError","ErrorMessage":"no stock"}"#;

        let done = runtime
            .start("done", "wf.done", br#"{"order":17}"#.to_vec(), None)
            .unwrap()
            .0;
        let data = runtime.load_invocation(done).unwrap();
        let big = br#"{"line":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#.repeat(40);
        let mut custom = record(RecordKind::Started, OpType::Context, SubType::Custom, "3");
        custom.label = Some("Transfer".into());
        custom.extra = Some("kept".into());
        let records = vec![
            step(RecordKind::Succeeded, "1", b"42"),
            step(RecordKind::Succeeded, "2", &big),
            custom,
        ];
        runtime.append(done, records, vec![], None, None).unwrap();
        runtime
            .end_invocation(
                done,
                data.wake,
                Some(ExecState::Succeeded),
                ending(RecordKind::Succeeded, b"\"ok\""),
                vec![],
            )
            .unwrap();

        let failed = runtime.start("failed", "wf.fail", b"1".to_vec(), None).unwrap().0;
        let data = runtime.load_invocation(failed).unwrap();
        let mut retry = step(RecordKind::Retry, "1", error);
        retry.aux2 = 2000;
        let mut failure = step(RecordKind::Failed, "1", error);
        failure.attempt = 2;
        runtime
            .append(failed, vec![retry, failure], vec![], None, None)
            .unwrap();
        runtime
            .end_invocation(
                failed,
                data.wake,
                Some(ExecState::Failed),
                ending(RecordKind::Failed, error),
                vec![],
            )
            .unwrap();

        let waiting = runtime.start("waiting", "wf.wait", b"null".to_vec(), None).unwrap().0;
        let data = runtime.load_invocation(waiting).unwrap();
        let mut wait = record(RecordKind::Started, OpType::Wait, SubType::Wait, "1");
        wait.aux = 60_000;
        runtime
            .append(waiting, vec![wait], vec![(60_000, "1".into())], None, None)
            .unwrap();
        runtime
            .end_invocation(waiting, data.wake, None, suspend(), vec![])
            .unwrap();

        let asks = runtime.start("asks", "wf.ask", b"[]".to_vec(), None).unwrap().0;
        let data = runtime.load_invocation(asks).unwrap();
        for (op_id, timeout_ms, heartbeat_timeout_ms) in [("1", 3_600_000, 60_000), ("2", 0, 0)] {
            let mut started = record(RecordKind::Started, OpType::Callback, SubType::Callback, op_id);
            started.aux = timeout_ms;
            started.aux2 = heartbeat_timeout_ms;
            let callback = NewCallback {
                op_id: op_id.into(),
                timeout_ms,
                heartbeat_timeout_ms,
            };
            let id = runtime
                .append(asks, vec![started], vec![], Some(callback), None)
                .unwrap();
            callback_ids.push(id.unwrap());
        }
        runtime
            .complete_callback(&callback_ids[1], true, Some(b"\"yes\"".to_vec()))
            .unwrap();
        runtime
            .end_invocation(asks, data.wake, None, suspend(), vec![])
            .unwrap();

        let parent = runtime.start("parent", "wf.parent", b"{}".to_vec(), None).unwrap().0;
        let data = runtime.load_invocation(parent).unwrap();
        let mut invoke = record(RecordKind::Started, OpType::ChainedInvoke, SubType::ChainedInvoke, "1");
        invoke.extra = Some("parent/1".into());
        invoke.payload = Some(b"7".to_vec());
        let child = NewChild {
            execution_id: "parent/1".into(),
            function: "wf.kid".into(),
            input: b"7".to_vec(),
            op_id: "1".into(),
            timeout_ms: Some(30_000),
        };
        runtime.append(parent, vec![invoke], vec![], None, Some(child)).unwrap();
        runtime
            .end_invocation(parent, data.wake, None, suspend(), vec![])
            .unwrap();

        runtime.start("timed", "wf.timed", b"0".to_vec(), Some(1_000)).unwrap();
        runtime.start("cancelled", "wf.done", b"0".to_vec(), None).unwrap();
        runtime.cancel("cancelled", error.to_vec()).unwrap();
        runtime.start("fresh", "wf.done", b"0".to_vec(), None).unwrap();
        runtime.close(Duration::ZERO).unwrap();
    }
    // An engine that died holding a lease: what a crash leaves behind.
    {
        let env = raw_env(path);
        let mut txn = env.write_txn().unwrap();
        let db = |name: &str| -> Database<Bytes, Bytes> { env.open_database(&txn, Some(name)).unwrap().unwrap() };
        let (owners, leases, exec_ids) = (db("owners"), db("leases"), db("exec_ids"));
        let owner_key = OWNER.to_be_bytes();
        let owner = OwnerEntry {
            pid: 4242,
            started_ms: NOW,
            renewed_ms: NOW + 5,
        };
        let waiting = exec_ids.get(&txn, b"waiting").unwrap().unwrap().to_vec();
        let exec_key = sealed::unseal(b"waiting", &waiting).unwrap().to_vec();
        let lease = Lease { owner: OWNER, epoch: 3 };
        owners
            .put(&mut txn, &owner_key, &sealed::seal(&owner_key, &owner.encode()))
            .unwrap();
        leases
            .put(&mut txn, &exec_key, &sealed::seal(&exec_key, &lease.encode()))
            .unwrap();
        txn.commit().unwrap();
    }
    let mut entries = Vec::new();
    {
        let env = raw_env(path);
        let txn = env.read_txn().unwrap();
        for name in DBS {
            let db: Database<Bytes, Bytes> = env.open_database(&txn, Some(name)).unwrap().unwrap();
            for entry in db.iter(&txn).unwrap() {
                let (key, value) = entry.unwrap();
                entries.push(Entry {
                    db: name,
                    key: key.to_vec(),
                    value: value.to_vec(),
                });
            }
        }
    }
    let data = std::fs::read(path.join("data.mdb")).unwrap();
    let execution_ids = [
        "done",
        "failed",
        "waiting",
        "asks",
        "parent",
        "parent/1",
        "timed",
        "cancelled",
        "fresh",
    ];
    Corpus {
        _dir: dir,
        data,
        entries,
        execution_ids: execution_ids.iter().map(|id| id.to_string()).collect(),
        callback_ids,
    }
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(build_corpus)
}

fn raw_env(dir: &Path) -> heed::Env {
    // SAFETY: every runtime and store that used this directory is closed
    // and dropped: this is the only environment open on it.
    unsafe { EnvOpenOptions::new().max_dbs(16).map_size(64 << 20).open(dir) }.unwrap()
}

#[test]
fn the_corpus_covers_every_database() {
    let corpus = corpus();
    for name in DBS {
        assert!(corpus.entries.iter().any(|entry| entry.db == name), "no seed in {name}");
    }
    // The compressed payload is there, so zstd frames are fuzzed too.
    let compressed = corpus
        .entries
        .iter()
        .filter(|entry| entry.db == "journal")
        .any(|entry| entry.value.get(8).is_some_and(|flags| flags & (1 << 6) != 0));
    assert!(compressed, "no record with a zstd payload among the seeds");
}

// ---------------------------------------------------------------------------
// Damage.

#[derive(Clone, Debug)]
enum Edit {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Truncate {
        keep: usize,
    },
    Extend(Vec<u8>),
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// All ones: a maximal varint, a length field or counter at its limit.
    Ones {
        at: usize,
        len: usize,
    },
    Replace(Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        2 => any::<usize>().prop_map(|keep| Edit::Truncate { keep }),
        1 => prop::collection::vec(any::<u8>(), 1..24).prop_map(Edit::Extend),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12)).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Remove { at, len }),
        2 => (any::<usize>(), 1usize..11).prop_map(|(at, len)| Edit::Ones { at, len }),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Edit::Replace),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let len = bytes.len();
    let at = |at: usize| if len == 0 { 0 } else { at % len };
    match edit {
        Edit::Flip { at: i, bit } if len > 0 => bytes[at(*i)] ^= 1 << bit,
        Edit::Set { at: i, byte } if len > 0 => bytes[at(*i)] = *byte,
        Edit::Flip { .. } | Edit::Set { .. } => {}
        Edit::Truncate { keep } => bytes.truncate(keep % (len + 1)),
        Edit::Extend(more) => bytes.extend_from_slice(more),
        Edit::Insert { at: i, bytes: more } => {
            let i = i % (len + 1);
            bytes.splice(i..i, more.iter().copied());
        }
        Edit::Remove { at: i, len: n } => {
            let i = at(*i);
            bytes.drain(i..(i + n).min(len));
        }
        Edit::Ones { at: i, len: n } => {
            let i = at(*i);
            for byte in bytes.iter_mut().skip(i).take(*n) {
                *byte = 0xff;
            }
        }
        Edit::Replace(new) => *bytes = new.clone(),
    }
}

/// Where damage goes, and whether the checksum is made to match again.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The stored bytes, checksum and all: the checksum must catch it.
    Raw,
    /// The payload, then a matching checksum: the decoder must cope.
    Resealed,
    /// The key (the value resealed under it, if it is sealed).
    Key,
    /// The entry is gone.
    Delete,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => Just(Target::Raw),
        5 => Just(Target::Resealed),
        2 => Just(Target::Key),
        1 => Just(Target::Delete),
    ]
}

/// Makes a journal record's own checksum match its (damaged) bytes.
fn fix_record_crc(value: &mut [u8]) {
    if value.len() >= 5 {
        let crc = crc32fast::hash(&value[5..]);
        value[1..5].copy_from_slice(&crc.to_le_bytes());
    }
}

/// `entry` damaged as told; `None` when it is deleted.
fn damage(entry: &Entry, target: Target, edits: &[Edit]) -> Option<Entry> {
    let mut out = entry.clone();
    match target {
        Target::Delete => return None,
        Target::Raw => edits.iter().for_each(|e| apply(&mut out.value, e)),
        Target::Resealed if entry.sealed() => {
            let mut payload =
                sealed::unseal(&entry.key, &entry.value).map_or_else(|_| entry.value.clone(), <[u8]>::to_vec);
            edits.iter().for_each(|e| apply(&mut payload, e));
            out.value = sealed::seal(&entry.key, &payload);
        }
        Target::Resealed => {
            edits.iter().for_each(|e| apply(&mut out.value, e));
            if entry.db == "journal" {
                fix_record_crc(&mut out.value);
            }
        }
        Target::Key => {
            edits.iter().for_each(|e| apply(&mut out.key, e));
            if entry.sealed() {
                let payload = sealed::unseal(&entry.key, &entry.value).unwrap_or(&entry.value);
                out.value = sealed::seal(&out.key, payload);
            }
        }
    }
    Some(out)
}

/// Extremes first: that is where arithmetic on stored numbers breaks.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::from(u32::MAX)),
        Just(i64::MAX as u64),
        Just(NOW),
        0u64..100_000,
        any::<u64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[0-9a-z./-]{1,12}", any::<String>()]
}

/// A well-formed value of any content, sealed as the core seals it: it
/// passes every checksum, so only the decoders and what uses their
/// numbers stand between it and a panic.
fn forged() -> BoxedStrategy<Entry> {
    let meta = (
        1u8..=5,
        number(),
        number(),
        text(),
        text(),
        prop::option::of((number(), text())),
    )
        .prop_map(
            |(state, created_ms, updated_ms, execution_id, function, parent)| ExecMeta {
                state: ExecState::from_u8(state).unwrap(),
                created_ms,
                updated_ms,
                execution_id,
                function,
                parent: parent.map(|(exec_key, op_id)| ParentLink { exec_key, op_id }),
            },
        );
    let callback = (0u8..5, number(), number(), number(), number(), text()).prop_map(
        |(state, exec_key, deadline_ms, heartbeat_timeout_ms, last_heartbeat_ms, op_id)| {
            let state = [
                CallbackState::Pending,
                CallbackState::Succeeded,
                CallbackState::Failed,
                CallbackState::TimedOut,
                CallbackState::Cancelled,
            ][usize::from(state)];
            CallbackEntry {
                state,
                exec_key,
                deadline_ms,
                heartbeat_timeout_ms,
                last_heartbeat_ms,
                op_id,
            }
        },
    );
    let timer = (number(), number(), 1u8..=4, text()).prop_map(|(due_ms, exec_key, kind, subject)| Timer {
        due_ms,
        exec_key,
        kind: [
            TimerKind::Wake,
            TimerKind::CallbackTimeout,
            TimerKind::CallbackHeartbeat,
            TimerKind::ExecutionTimeout,
        ][usize::from(kind - 1)],
        subject,
    });
    let sealed_entry = |db: &'static str, key: Vec<u8>, payload: Vec<u8>| Entry {
        db,
        value: sealed::seal(&key, &payload),
        key,
    };
    let small_key = prop_oneof![1u64..16, number()];
    prop_oneof![
        (small_key.clone(), meta)
            .prop_map(move |(k, m)| sealed_entry("executions", k.to_be_bytes().to_vec(), m.encode()))
            .boxed(),
        (text(), callback)
            .prop_map(move |(id, c)| sealed_entry("callbacks", id.into_bytes(), c.encode()))
            .boxed(),
        (
            prop::sample::select(vec![&b"next_exec_key"[..], b"wake_seq", b"lease_epoch"]),
            number()
        )
            .prop_map(move |(name, n)| sealed_entry("meta", name.to_vec(), n.to_be_bytes().to_vec()))
            .boxed(),
        timer
            .prop_map(move |t| sealed_entry("timers", t.encode(), Vec::new()))
            .boxed(),
        (number(), number(), number(), number())
            .prop_map(move |(owner, pid, started, renewed)| sealed_entry(
                "owners",
                owner.to_be_bytes().to_vec(),
                OwnerEntry {
                    pid: pid as u32,
                    started_ms: started,
                    renewed_ms: renewed
                }
                .encode()
            ))
            .boxed(),
        (small_key.clone(), number(), number())
            .prop_map(move |(k, owner, epoch)| sealed_entry(
                "leases",
                k.to_be_bytes().to_vec(),
                Lease { owner, epoch }.encode().to_vec()
            ))
            .boxed(),
        (small_key.clone(), number())
            .prop_map(move |(k, wake)| sealed_entry("pending", k.to_be_bytes().to_vec(), wake.to_be_bytes().to_vec()))
            .boxed(),
        (number(), small_key.clone())
            .prop_map(move |(wake, k)| sealed_entry("wakes", wake.to_be_bytes().to_vec(), k.to_be_bytes().to_vec()))
            .boxed(),
        (text(), small_key.clone())
            .prop_map(move |(id, k)| sealed_entry("exec_ids", id.into_bytes(), k.to_be_bytes().to_vec()))
            .boxed(),
        (
            small_key,
            prop_oneof![Just(0u32), Just(1), Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()],
            forged_record()
        )
            .prop_map(|(k, seq, r)| Entry {
                db: "journal",
                key: keys::journal_key(k, seq).to_vec(),
                value: r.encode(),
            })
            .boxed(),
    ]
    .boxed()
}

fn forged_record() -> BoxedStrategy<Record> {
    (
        1u8..=7,
        0u8..=5,
        0u8..=11,
        number(),
        text(),
        prop::option::of(text()),
        prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
        (number(), number()),
        prop::option::of(text()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
    )
        .prop_map(
            |(kind, op_type, sub_type, timestamp_ms, op_id, name, attempt, (aux, aux2), extra, payload)| {
                let mut r = Record::new(
                    RecordKind::from_u8(kind).unwrap(),
                    OpType::from_u8(op_type).unwrap(),
                    SubType::from_u8(sub_type).unwrap(),
                    op_id,
                );
                r.timestamp_ms = timestamp_ms;
                r.name = name;
                r.attempt = attempt;
                r.aux = aux;
                r.aux2 = aux2;
                r.extra = extra;
                r.payload = payload;
                r
            },
        )
        .boxed()
}

// ---------------------------------------------------------------------------
// Every decoder, straight.

/// Feeds `key` and `value` to every decoder, whatever database they came
/// from; only a panic or a giant allocation is wrong.
fn decode_everything(key: &[u8], value: &[u8]) {
    let _ = keys::split_journal_key(key);
    let _ = keys::read_u64(key);
    let _ = Timer::decode(key);
    for bytes in [key, value] {
        let _ = Record::decode(bytes);
        let _ = ExecMeta::decode(bytes);
        if let Ok(entry) = CallbackEntry::decode(bytes) {
            let _ = entry.next_deadline();
        }
        let _ = OwnerEntry::decode(bytes);
        let _ = Lease::decode(bytes);
    }
    let _ = sealed::unseal_u64(key, value);
    if let Ok(payload) = sealed::unseal(key, value) {
        let _ = ExecMeta::decode(payload);
        if let Ok(entry) = CallbackEntry::decode(payload) {
            let _ = entry.next_deadline();
        }
        let _ = OwnerEntry::decode(payload);
        let _ = Lease::decode(payload);
    }
}

/// The execution's journal with one record replaced, folded into a replay
/// index; then every operation is looked up, in order and out of it.
fn replay_with(corpus: &Corpus, replaced: &Entry) {
    let Some(prefix) = replaced.key.get(..8) else {
        return;
    };
    let mut records = Vec::new();
    for entry in corpus
        .entries
        .iter()
        .filter(|e| e.db == "journal" && e.key.starts_with(prefix))
    {
        let value = if entry.key == replaced.key {
            &replaced.value
        } else {
            &entry.value
        };
        if let Ok(record) = Record::decode(value) {
            records.push(record);
        }
    }
    let ids: Vec<String> = records.iter().map(|r| r.op_id.clone()).collect();
    let index = ReplayIndex::build(records);
    for id in ids.iter().chain(ids.iter().rev()) {
        let _ = index.get(id);
    }
    let _ = (index.len(), index.is_empty(), index.invocations);
}

/// A record whose payload is the zstd frame given, with a valid checksum.
fn zstd_record(frame: &[u8]) -> Vec<u8> {
    let mut bytes = vec![
        1,
        0,
        0,
        0,
        0,
        RecordKind::Succeeded as u8,
        OpType::Step as u8,
        SubType::Step as u8,
    ];
    bytes.push((1 << 5) | (1 << 6)); // PAYLOAD | PAYLOAD_ZSTD
    bytes.push(0); // timestamp
    bytes.push(1); // op id "1"
    bytes.push(b'1');
    bytes.extend_from_slice(frame);
    fix_record_crc(&mut bytes);
    bytes
}

/// The zstd frame of the seed record with a compressed payload.
fn seed_frame(corpus: &Corpus) -> Vec<u8> {
    let record = corpus
        .entries
        .iter()
        .find(|e| e.db == "journal" && e.value.get(8).is_some_and(|flags| flags & (1 << 6) != 0))
        .expect("a compressed seed");
    // The frame starts at its magic number.
    let magic = [0x28, 0xb5, 0x2f, 0xfd];
    let at = record.value.windows(4).position(|w| w == magic).expect("a zstd frame");
    record.value[at..].to_vec()
}

/// The limit on one allocation while decoding `len` bytes: a zstd block
/// can expand a few bytes to 128 KiB, nothing else grows past its input.
fn decode_limit(len: usize) -> usize {
    (1 << 20) + len.saturating_mul(1 << 18)
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn decoders_never_panic_on_damaged_seeds(
        pick in any::<prop::sample::Index>(),
        target in target(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let corpus = corpus();
        let seed = pick.get(&corpus.entries);
        let Some(damaged) = damage(seed, target, &edits) else { return Ok(()) };
        let ((), largest) = largest_allocation(|| {
            decode_everything(&damaged.key, &damaged.value);
            if damaged.db == "journal" {
                replay_with(corpus, &damaged);
            }
        });
        let limit = decode_limit(damaged.key.len() + damaged.value.len());
        prop_assert!(largest <= limit, "allocated {largest} bytes decoding {damaged:?}");
    }

    #[test]
    fn decoders_never_panic_on_forged_values(entry in forged()) {
        let ((), largest) = largest_allocation(|| {
            decode_everything(&entry.key, &entry.value);
            if entry.db == "journal" {
                replay_with(corpus(), &entry);
            }
        });
        let limit = decode_limit(entry.key.len() + entry.value.len());
        prop_assert!(largest <= limit, "allocated {largest} bytes decoding {entry:?}");
    }

    #[test]
    fn zstd_frames_never_panic(edits in prop::collection::vec(edit(), 1..5)) {
        let mut frame = seed_frame(corpus());
        edits.iter().for_each(|e| apply(&mut frame, e));
        let bytes = zstd_record(&frame);
        let (decoded, largest) = largest_allocation(|| Record::decode(&bytes));
        prop_assert!(largest <= decode_limit(bytes.len()), "allocated {largest} bytes for a frame of {}", frame.len());
        if let Ok(record) = decoded {
            prop_assert!(record.payload.is_some());
        }
    }
}

// ---------------------------------------------------------------------------
// Every path of the core over a damaged store.

#[derive(Clone, Debug)]
enum StoreEdit {
    Damage {
        pick: prop::sample::Index,
        target: Target,
        edits: Vec<Edit>,
    },
    Forge(Entry),
}

fn store_edit() -> impl Strategy<Value = StoreEdit> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), target(), prop::collection::vec(edit(), 1..4))
            .prop_map(|(pick, target, edits)| StoreEdit::Damage { pick, target, edits }),
        2 => forged().prop_map(StoreEdit::Forge),
    ]
}

/// A copy of the seed store with the edits written in (an edit LMDB
/// refuses, such as an empty or oversized key, is left out).
fn damaged_store(corpus: &Corpus, edits: &[StoreEdit]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.mdb"), &corpus.data).unwrap();
    let env = raw_env(dir.path());
    let dbs: Vec<(&str, Database<Bytes, Bytes>)> = {
        // Handles opened in a transaction are kept once it commits.
        let txn = env.write_txn().unwrap();
        let dbs = DBS
            .iter()
            .map(|name| (*name, env.open_database(&txn, Some(name)).unwrap().unwrap()))
            .collect();
        txn.commit().unwrap();
        dbs
    };
    let db_of = |name: &str| dbs.iter().find(|(n, _)| *n == name).unwrap().1;
    for edit in edits {
        let mut txn = env.write_txn().unwrap();
        let (removed, added) = match edit {
            StoreEdit::Damage { pick, target, edits } => {
                let seed = pick.get(&corpus.entries);
                (Some(seed), damage(seed, *target, edits))
            }
            StoreEdit::Forge(entry) => (None, Some(entry.clone())),
        };
        let written = (|| -> heed::Result<()> {
            if let Some(seed) = removed {
                db_of(seed.db).delete(&mut txn, &seed.key)?;
            }
            if let Some(entry) = &added {
                db_of(entry.db).put(&mut txn, &entry.key, &entry.value)?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => txn.commit().unwrap(),
            Err(_) => txn.abort(),
        }
    }
    drop(env);
    dir
}

/// Every read of the store, every mutation of the writer, and an owning
/// runtime starting and closing, over whatever the store holds now.
fn exercise(corpus: &Corpus, dir: &Path, now_ms: u64) {
    let Ok(store) = Store::open(dir, &store_options()) else {
        return;
    };
    let mut exec_keys: HashSet<u64> = (0..16).chain([u64::MAX, u64::from(u32::MAX)]).collect();
    if let Ok((rows, _damaged)) = store.list(None, None, 0) {
        exec_keys.extend(rows.iter().map(|row| row.exec_key));
    }
    let _ = store.list(Some(ExecState::Active), Some("wf.done"), 2);
    let mut execution_ids = corpus.execution_ids.clone();
    execution_ids.push("unknown".into());
    for id in &execution_ids {
        if let Ok(Some(key)) = store.exec_key_of(id) {
            exec_keys.insert(key);
        }
        let _ = store.execution_by_id(id);
    }
    let mut op_ids = Vec::new();
    for &key in &exec_keys {
        let _ = store.execution(key);
        if let Ok(data) = store.load_invocation(key) {
            for id in ["1", "2", "3", "", "1", "9"] {
                if let Some(op) = data.index.get(id) {
                    op_ids.push(op.op_id.clone());
                }
            }
        }
        let _ = store.journal(key);
        let _ = store.last_record(key);
        let _ = store.lease(key);
    }
    let owners = store.owners().unwrap_or_default();
    let _ = store.poll_state();
    let seen = store.wake_seq().unwrap_or(0);
    for owner in owners.iter().map(|(id, _)| *id).chain([0, OWNER]) {
        let _ = store.woken_since(0, owner);
        let _ = store.woken_since(seen, owner);
    }
    let _ = store.woken_since(u64::MAX, OWNER);
    let timers = store
        .timers_of(&exec_keys)
        .map(|(timers, _)| timers)
        .unwrap_or_default();
    let mut callback_ids = corpus.callback_ids.clone();
    callback_ids.extend(timers.iter().map(|t| t.subject.clone()));
    for id in &callback_ids {
        let _ = store.callback(id);
    }

    let writer = Writer::new(store.clone());
    let mut batches: Vec<Vec<Mutation>> = Vec::new();
    for (owner, entry) in &owners {
        batches.push(vec![Mutation::RenewOwner { owner: *owner, now_ms }]);
        batches.push(vec![Mutation::Reap {
            owner: *owner,
            renewed_ms: Some(entry.renewed_ms),
        }]);
    }
    batches.push(vec![Mutation::Reap {
        owner: OWNER,
        renewed_ms: None,
    }]);
    batches.push(vec![Mutation::RegisterOwner {
        owner: 77,
        entry: OwnerEntry {
            pid: 1,
            started_ms: now_ms,
            renewed_ms: now_ms,
        },
    }]);
    batches.push(vec![Mutation::Claim {
        owner: 77,
        max: usize::MAX,
    }]);
    for timer in timers {
        batches.push(vec![Mutation::FireTimer { timer, now_ms }]);
    }
    for id in &callback_ids {
        batches.push(vec![Mutation::Heartbeat {
            callback_id: id.clone(),
            now_ms,
        }]);
        let mut answer = record(RecordKind::Succeeded, OpType::Callback, SubType::Callback, "1");
        answer.timestamp_ms = now_ms;
        batches.push(vec![Mutation::CompleteCallback {
            callback_id: id.clone(),
            state: CallbackState::Succeeded,
            record: answer,
        }]);
    }
    for &exec_key in &exec_keys {
        let lease = store
            .lease(exec_key)
            .ok()
            .flatten()
            .unwrap_or(Lease { owner: 77, epoch: 0 });
        let mut appended = step(RecordKind::Succeeded, "1", b"1");
        appended.timestamp_ms = now_ms;
        batches.push(vec![
            Mutation::Fence { exec_key, lease },
            Mutation::Append {
                exec_key,
                record: appended.clone(),
            },
        ]);
        batches.push(vec![Mutation::EndInvocation {
            exec_key,
            seen_wake: 0,
            final_state: None,
            records: suspend(),
        }]);
        batches.push(vec![Mutation::AddTimer(Timer {
            due_ms: now_ms,
            exec_key,
            kind: TimerKind::Wake,
            subject: "1".into(),
        })]);
        batches.push(vec![Mutation::Cancel {
            exec_key,
            record: appended,
        }]);
    }
    for (id, parent) in [("new", None), ("done", None), ("new/1", Some(1))] {
        let mut started = record(RecordKind::Started, OpType::Execution, SubType::None, "");
        started.timestamp_ms = now_ms;
        started.payload = Some(b"0".to_vec());
        batches.push(vec![Mutation::CreateExecution {
            execution_id: id.into(),
            function: "wf.done".into(),
            started,
            owner: Some(77),
            parent: parent.map(|exec_key| ParentLink {
                exec_key,
                op_id: "1".into(),
            }),
            deadline_ms: Some(now_ms.saturating_add(1)),
        }]);
    }
    for batch in batches {
        let _ = writer.submit(batch);
    }
    writer.close();
    drop(writer);
    drop(store);

    let clock = Arc::new(ManualClock::new(now_ms));
    if let Ok(runtime) = Runtime::open(dir, options(clock, true)) {
        runtime.poke_timers();
        let _ = runtime.next_ready(Duration::from_millis(0));
        let _ = runtime.close(Duration::ZERO);
    }
}

fn clock_value() -> impl Strategy<Value = u64> {
    prop_oneof![Just(NOW), Just(NOW + 3_600_000), Just(u64::MAX), Just(0), any::<u64>()]
}

proptest! {
    #![proptest_config(config((cases() / 10).max(24)))]

    #[test]
    fn the_core_never_panics_on_a_damaged_store(
        edits in prop::collection::vec(store_edit(), 1..4),
        now_ms in clock_value(),
    ) {
        watch_panics();
        let corpus = corpus();
        take_thread_panics();
        let dir = damaged_store(corpus, &edits);
        let ((), largest) = largest_allocation(|| exercise(corpus, dir.path(), now_ms));
        let panics = take_thread_panics();
        prop_assert!(panics.is_empty(), "panicked: {panics:?}");
        prop_assert!(largest <= ALLOCATION_LIMIT, "allocated {largest} bytes at once");
    }
}

// ---------------------------------------------------------------------------
// Regression tests: each fault the fuzzing found, on its own.

/// The seed store with `entries` written in.
fn store_with(entries: &[Entry]) -> tempfile::TempDir {
    let edits: Vec<StoreEdit> = entries.iter().cloned().map(StoreEdit::Forge).collect();
    damaged_store(corpus(), &edits)
}

fn sealed_counter(name: &[u8], value: u64) -> Entry {
    Entry {
        db: "meta",
        key: name.to_vec(),
        value: sealed::seal_u64(name, value),
    }
}

fn exec_key(dir: &Path, id: &str) -> u64 {
    let store = Store::open(dir, &store_options()).unwrap();
    store.exec_key_of(id).unwrap().unwrap()
}

/// A heartbeat deadline past the end of time (last heartbeat plus its
/// timeout overflowed, a panic in debug builds) is the end of time.
#[test]
fn a_heartbeat_deadline_past_the_end_of_time_saturates() {
    watch_panics();
    let entry = CallbackEntry {
        state: CallbackState::Pending,
        exec_key: 4,
        deadline_ms: 0,
        heartbeat_timeout_ms: 1_000,
        last_heartbeat_ms: u64::MAX - 10,
        op_id: "1".into(),
    };
    assert_eq!(entry.next_deadline(), Some((u64::MAX, TimerKind::CallbackHeartbeat)));
    // The same callback read from a store, its heartbeat timer firing.
    let callback_id = corpus().callback_ids[0].clone();
    let asks = exec_key(corpus()._dir.path(), "asks");
    let dir = store_with(&[Entry {
        db: "callbacks",
        key: callback_id.clone().into_bytes(),
        value: sealed::seal(
            callback_id.as_bytes(),
            &CallbackEntry {
                exec_key: asks,
                ..entry
            }
            .encode(),
        ),
    }]);
    let store = Store::open(dir.path(), &store_options()).unwrap();
    let writer = Writer::new(store.clone());
    let timers = store.timers_of(&HashSet::from([asks])).unwrap().0;
    let timer = timers.into_iter().find(|t| t.subject == callback_id).unwrap();
    let rearmed = writer.submit(vec![Mutation::FireTimer { timer, now_ms: NOW }]).unwrap();
    assert!(
        matches!(&rearmed[..], [perdure_core::backend::Outcome::Rearmed(next)] if next.due_ms == u64::MAX),
        "{rearmed:?}"
    );
    writer.close();
    assert_eq!(take_thread_panics(), Vec::<String>::new());
}

/// Every counter at its limit: the next bump is a CorruptStore error
/// naming it (it overflowed before, a panic the writer turned into
/// "commit panicked" in debug builds, and a wrap to 0 in release builds,
/// reusing execution keys and lease epochs).
#[test]
fn a_counter_at_its_limit_is_a_corrupt_store() {
    watch_panics();
    for name in [&b"next_exec_key"[..], b"wake_seq", b"lease_epoch"] {
        let dir = store_with(&[sealed_counter(name, u64::MAX)]);
        let clock = Arc::new(ManualClock::new(NOW));
        let runtime = Runtime::open(dir.path(), options(clock.clone(), false)).unwrap();
        let store = runtime.backend.clone();
        let writer = Writer::new(store.clone());
        let mut started = record(RecordKind::Started, OpType::Execution, SubType::None, "");
        started.timestamp_ms = NOW;
        let outcome = writer.submit(vec![Mutation::CreateExecution {
            execution_id: "new".into(),
            function: "wf.done".into(),
            started,
            owner: None,
            parent: None,
            deadline_ms: None,
        }]);
        let outcome = match name {
            // Creating an execution bumps the key and wake counters; a
            // claim takes a lease epoch.
            b"lease_epoch" => writer.submit(vec![Mutation::Claim { owner: 77, max: 10 }]),
            _ => outcome,
        };
        let name = String::from_utf8_lossy(name).into_owned();
        match outcome {
            Err(Error::CorruptStore(message)) => assert!(message.contains(&name), "{message}"),
            other => panic!("{name} at its limit: {other:?}"),
        }
        // The store is still readable.
        assert!(store.execution_by_id("done").unwrap().is_some());
        writer.close();
        drop(runtime);
    }
    assert_eq!(take_thread_panics(), Vec::<String>::new());
}

/// The poller asks for the wake-ups after the last value it saw: after the
/// largest there are none (`seen + 1` overflowed).
#[test]
fn no_wake_up_comes_after_the_last_wake_value() {
    let dir = store_with(&[]);
    let store = Store::open(dir.path(), &store_options()).unwrap();
    let (now, woken) = store.woken_since(u64::MAX, OWNER).unwrap();
    assert!(woken.is_empty());
    assert_eq!(now, store.wake_seq().unwrap());
}

/// A journal key with the last sequence number (one damaged key) made room
/// for 2^32 operations before reading: an allocation of hundreds of GB,
/// and the process aborted. Now it is a hint, capped, and the gap before
/// it is reported as damage naming the execution.
#[test]
fn a_journal_key_with_the_last_sequence_number_allocates_little() {
    let corpus = corpus();
    let waiting = exec_key(corpus._dir.path(), "waiting");
    let mut last = step(RecordKind::Succeeded, "9", b"9");
    last.timestamp_ms = NOW;
    let dir = store_with(&[Entry {
        db: "journal",
        key: keys::journal_key(waiting, u32::MAX).to_vec(),
        value: last.encode(),
    }]);
    let store = Store::open(dir.path(), &store_options()).unwrap();
    // The gap before it is damage, reported naming the execution; what
    // matters here is that nothing huge was allocated on the way.
    let (loaded, largest) = largest_allocation(|| store.load_invocation(waiting));
    assert!(largest <= ALLOCATION_LIMIT, "allocated {largest} bytes at once");
    assert!(
        matches!(&loaded, Err(Error::CorruptExecution { execution_id, .. }) if execution_id == "waiting"),
        "{:?}",
        loaded.map(|data| data.index.len())
    );
    let (journal, largest) = largest_allocation(|| store.journal(waiting));
    assert!(largest <= ALLOCATION_LIMIT, "allocated {largest} bytes at once");
    assert!(journal.is_err());
    // Nothing can come after it.
    let writer = Writer::new(store.clone());
    let appended = writer.submit(vec![Mutation::Append {
        exec_key: waiting,
        record: last,
    }]);
    assert!(appended.is_err(), "{appended:?}");
    writer.close();
}

/// A zstd frame whose header claims a gigabyte, in a record of a few dozen
/// bytes whose checksum matches: the claim was allocated before decoding.
#[test]
fn a_zstd_frame_claiming_a_gigabyte_allocates_little() {
    let frame = seed_frame(corpus());
    let descriptor = frame[4];
    assert_eq!(
        descriptor & 0x07,
        0,
        "seed frame header {descriptor:02x}: no checksum, no dictionary"
    );
    // The seed frame with its size field replaced by a 4-byte one stating 1 GiB.
    let single_segment = descriptor & 0x20 != 0;
    let window_len = usize::from(!single_segment);
    let size_len = [usize::from(single_segment), 2, 4, 8][usize::from(descriptor >> 6)];
    let blocks = 5 + window_len + size_len;
    let mut forged = frame[..5 + window_len].to_vec();
    forged[4] = (descriptor & 0x3f) | 0x80;
    forged.extend_from_slice(&(1u32 << 30).to_le_bytes());
    forged.extend_from_slice(&frame[blocks..]);
    let bytes = zstd_record(&forged);
    let (decoded, largest) = largest_allocation(|| Record::decode(&bytes));
    let err = decoded.unwrap_err();
    assert!(err.contains("more than its blocks can hold"), "{err}");
    assert!(
        largest < 1 << 20,
        "allocated {largest} bytes for a record of {}",
        bytes.len()
    );
}

/// A replay re-arms the timers its journal asks for: a delay read from a
/// damaged record may be anything. Its deadline saturates (it overflowed:
/// a panic in debug builds, a timer due at once in release builds).
#[test]
fn a_wake_delay_past_the_end_of_time_is_never() {
    watch_panics();
    let dir = store_with(&[]);
    let waiting = exec_key(dir.path(), "waiting");
    let clock = Arc::new(ManualClock::new(NOW));
    let runtime = Runtime::open(dir.path(), options(clock, true)).unwrap();
    let data = runtime.load_invocation(waiting).unwrap();
    runtime
        .end_invocation(waiting, data.wake, None, suspend(), vec![(u64::MAX, "9".into())])
        .unwrap();
    let timers = runtime.backend.timers_of(&HashSet::from([waiting])).unwrap().0;
    let timer = timers.iter().find(|t| t.subject == "9").expect("the timer is stored");
    assert_eq!(timer.due_ms, u64::MAX);
    runtime.close(Duration::ZERO).unwrap();
    assert_eq!(take_thread_panics(), Vec::<String>::new());
}
