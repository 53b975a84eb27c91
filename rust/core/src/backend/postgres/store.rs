//! The PostgreSQL store as the engine runs on it: [`PgStore`] puts the
//! write side (commit.rs), the reads (reads.rs) and owner liveness behind
//! the storage seam, with the connections each needs (docs/design.md §8):
//!
//! - one writer connection, on which the writer's group commits run one at
//!   a time (as LMDB's single writer), their statements kept prepared;
//! - a few read connections, so that invocations loading their journals do
//!   not queue behind one another;
//! - per owner, a listener connection that holds the owner's advisory lock
//!   (its liveness: the server frees it when the process dies) and receives
//!   the NOTIFY wake-ups other engines send it.
//!
//! A connection that breaks is dropped and opened again on next use; while
//! the server cannot be reached, commits fail as storage failures (nothing
//! stored, an invocation runs again later from its journal) and a commit
//! whose COMMIT got no answer is reported as of unknown outcome, never
//! retried blind.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use super::commit::PgWriter;
use super::reads::PgReads;
use super::{commit, schema, PgLocation};
use crate::backend::lmdb::Durability;
use crate::backend::{
    Backend, ExecSummary, InvocationData, Lease, Mutation, News, Outcome, OwnerHold, OwnerState, WakeScan,
};
use crate::error::{Error, Result};
use crate::keys::{CallbackEntry, ExecState, OwnerEntry, Timer};
use crate::record::Record;

/// How a PostgreSQL store is opened.
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub durability: Durability,
    /// Read connections (invocations loading journals, lists, polls).
    pub read_connections: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            durability: Durability::Full,
            read_connections: 4,
        }
    }
}

/// A wake-up message names at most this many executions; a group that
/// wakes more of one owner's sends `*` (look at them all).
const MAX_NAMED: usize = 500;

/// How long the listener waits for a message before it looks whether it
/// must stop: a closing engine waits up to this long for it.
const LISTEN_WAIT: Duration = Duration::from_millis(20);

/// The delays between tries to reach a lost server: the first, and the
/// longest (they double).
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

pub struct PgStore {
    location: PgLocation,
    options: PgOptions,
    writer: Mutex<Option<PgWriter>>,
    reads: Box<[Mutex<Option<PgReads>>]>,
    next_read: AtomicUsize,
    /// The owner this process registered, 0 for none: its own wake-ups need
    /// no message.
    me: AtomicU64,
    news: Arc<NewsBox>,
    reconnect: Reconnect,
}

/// Connections opened again after the server was lost, with back-off:
/// while it cannot be reached, tries are spaced 50 ms, doubling to 2 s,
/// and a connection asked for sooner fails at once as the storage failure
/// it is (the invocation that asked runs again later).
#[derive(Default)]
struct Reconnect {
    /// When the next try may be made, and the delay after a failed one.
    next: Mutex<Option<(Instant, Duration)>>,
}

impl Reconnect {
    fn open<T>(&self, connect: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some((at, _)) = *self.next.lock() {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                return Err(Error::StorageFailed {
                    full: false,
                    detail: format!(
                        "the PostgreSQL server cannot be reached (next try in {} ms)",
                        wait.as_millis()
                    ),
                });
            }
        }
        match connect() {
            Ok(value) => {
                *self.next.lock() = None;
                Ok(value)
            }
            Err(err) => {
                let mut next = self.next.lock();
                let delay = next.map_or(FIRST_RECONNECT_DELAY, |(_, delay)| (delay * 2).min(MAX_RECONNECT_DELAY));
                *next = Some((Instant::now() + delay, delay));
                Err(unavailable(err))
            }
        }
    }
}

impl PgStore {
    /// Connects to the store at `location`, creating or upgrading its
    /// schema.
    pub fn open(location: PgLocation, options: PgOptions) -> Result<Arc<PgStore>> {
        schema::ensure(&mut location.connect()?, &location)?;
        let writer = PgWriter::connect(&location)?;
        prepare_writer(&writer, &location, options.durability)?;
        let reads = (0..options.read_connections.max(1)).map(|_| Mutex::new(None)).collect();
        Ok(Arc::new(PgStore {
            location,
            options,
            writer: Mutex::new(Some(writer)),
            reads,
            next_read: AtomicUsize::new(0),
            me: AtomicU64::new(0),
            news: Arc::default(),
            reconnect: Reconnect::default(),
        }))
    }

    pub fn location(&self) -> &PgLocation {
        &self.location
    }

    /// Runs `f` on a read connection: a free one if any, else the next in
    /// turn. A connection that failed is opened again on next use.
    fn read<T>(&self, f: impl FnOnce(&PgReads) -> Result<T>) -> Result<T> {
        let start = self.next_read.fetch_add(1, Ordering::Relaxed);
        let count = self.reads.len();
        let mut slot = (0..count)
            .find_map(|i| self.reads[(start + i) % count].try_lock())
            .unwrap_or_else(|| self.reads[start % count].lock());
        if slot.is_none() {
            *slot = Some(self.reconnect.open(|| PgReads::connect(&self.location))?);
        }
        let reads = slot.as_ref().expect("connected above");
        let answer = f(reads);
        if answer.as_ref().is_err_and(connection_lost) {
            *slot = None;
        }
        answer.map_err(unavailable)
    }

    /// Commits batches in one transaction on the writer connection, then
    /// tells the owners it woke.
    fn commit_on_writer(&self, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
        let mut writer = self.writer.lock();
        if writer.is_none() {
            *writer = Some(self.reconnect.open(|| {
                let writer = PgWriter::connect(&self.location)?;
                prepare_writer(&writer, &self.location, self.options.durability)?;
                Ok(writer)
            })?);
        }
        let connection = writer.as_mut().expect("connected above");
        let answer = connection.commit(group);
        match &answer {
            Ok(results) => self.notify(connection, group, results),
            Err(err) if connection_lost(err) || connection.is_closed() => *writer = None,
            Err(_) => {}
        }
        answer.map_err(|err| match err {
            // The COMMIT was sent and no answer came: the group may be stored.
            Error::Postgres { ref what, .. } if what.starts_with(commit::COMMIT_FAILED) => {
                Error::OutcomeUnknown(format!("{err}; the engine reads the store again before going on"))
            }
            other => unavailable(other),
        })
    }

    /// One message per owner woken by the group (other than this process's
    /// own), and one to every owner when executions were left without one,
    /// sent once the group committed (a statement of its own, and only for
    /// groups that woke another engine: no step's commit pays for it). A
    /// message lost (this process dying now, a listener reconnecting) is
    /// made up for by the owners' polls.
    fn notify(&self, writer: &PgWriter, group: &[Vec<Mutation>], results: &[Result<Vec<Outcome>>]) {
        let me = self.me.load(Ordering::Relaxed);
        let mut woken: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut orphans = false;
        for (batch, result) in group.iter().zip(results) {
            let Ok(outcomes) = result else { continue };
            for (mutation, outcome) in batch.iter().zip(outcomes) {
                let woke = match outcome {
                    Outcome::Woke(Some(woke)) | Outcome::Ended { parent: Some(woke), .. } => Some(woke),
                    Outcome::Created { created: true, .. } => {
                        orphans |= matches!(mutation, Mutation::CreateExecution { owner: None, .. });
                        None
                    }
                    _ => None,
                };
                orphans |= matches!(mutation, Mutation::Reap { .. });
                match woke.map(|woke| (woke.owner, woke.exec_key)) {
                    Some((Some(owner), exec_key)) if owner != me => woken.entry(owner).or_default().push(exec_key),
                    Some((None, _)) => orphans = true,
                    _ => {}
                }
            }
        }
        let mut messages: Vec<(String, String)> = woken
            .into_iter()
            .map(|(owner, keys)| (owner_channel(owner), wake_message(&keys)))
            .collect();
        if orphans {
            messages.push((orphans_channel(&self.location), String::new()));
        }
        if messages.is_empty() {
            return;
        }
        let calls: Vec<String> = (0..messages.len())
            .map(|i| format!("pg_notify(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = messages
            .iter()
            .flat_map(|(channel, payload)| [channel as _, payload as _])
            .collect();
        let _ = writer.execute(&format!("SELECT {}", calls.join(", ")), &params);
    }
}

/// The writer connection's settings: `process` and `none` durability ask the
/// server not to wait for its WAL flush (a server crash may lose the last
/// commits; a crash of this process loses nothing acknowledged).
fn prepare_writer(writer: &PgWriter, location: &PgLocation, durability: Durability) -> Result<()> {
    let synchronous = match durability {
        Durability::Full => "on",
        Durability::Process | Durability::None => "off",
    };
    writer
        .batch_execute(&format!("SET synchronous_commit = {synchronous}"))
        .map_err(location.failed("cannot set up the writer connection"))
}

/// The channel on which `owner` hears of its executions woken elsewhere
/// (owner ids are random 64-bit numbers, so stores sharing a database do
/// not meet).
fn owner_channel(owner: u64) -> String {
    format!("perdure_{owner:016x}")
}

/// The channel on which every owner of the store hears of new orphans
/// (named by a hash of the schema: a channel name is at most 63 bytes).
fn orphans_channel(location: &PgLocation) -> String {
    format!("perdure_orphans_{:08x}", crc32fast::hash(location.schema().as_bytes()))
}

fn wake_message(exec_keys: &[u64]) -> String {
    if exec_keys.len() > MAX_NAMED {
        return "*".into();
    }
    let keys: Vec<String> = exec_keys.iter().map(u64::to_string).collect();
    keys.join(",")
}

/// Whether an error means the connection it came from is gone (closed,
/// broken, the server shutting down), so that it must be opened again.
fn connection_lost(err: &Error) -> bool {
    use postgres::error::SqlState;
    match err {
        Error::Postgres { source, .. } => {
            source.is_closed()
                || match source.code() {
                    None => true,
                    Some(code) => {
                        code.code().starts_with("08")
                            || [
                                SqlState::ADMIN_SHUTDOWN,
                                SqlState::CRASH_SHUTDOWN,
                                SqlState::CANNOT_CONNECT_NOW,
                            ]
                            .contains(code)
                    }
                }
        }
        _ => false,
    }
}

/// An error of a server that cannot be reached, or whose disk is full, as
/// the storage failure it is: nothing of the commit stored, the invocation
/// runs again later. Other errors unchanged.
fn unavailable(err: Error) -> Error {
    use postgres::error::SqlState;
    let full = match &err {
        Error::Postgres { source, .. } => source.code() == Some(&SqlState::DISK_FULL),
        _ => false,
    };
    if full {
        return Error::StorageFailed {
            full: true,
            detail: format!("the PostgreSQL server's disk is full: {err}"),
        };
    }
    if connection_lost(&err) {
        return Error::StorageFailed {
            full: false,
            detail: format!("the PostgreSQL server cannot be reached: {err}"),
        };
    }
    err
}

impl Backend for PgStore {
    /// The group in one transaction. Claims, reaps and cancels, heavy but
    /// rare, share it with the batches of the moment rather than wait for
    /// a transaction of their own.
    fn commit(&self, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
        self.commit_on_writer(group)
    }

    /// Everything is synced at commit (or given to the server's WAL writer,
    /// at `process` durability): nothing is left to flush.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        self.location.shown().to_owned()
    }

    fn exec_key_of(&self, execution_id: &str) -> Result<Option<u64>> {
        self.read(|reads| reads.exec_key_of(execution_id))
    }

    fn execution(&self, exec_key: u64) -> Result<Option<ExecSummary>> {
        self.read(|reads| reads.execution(exec_key))
    }

    fn execution_by_id(&self, execution_id: &str) -> Result<Option<ExecSummary>> {
        self.read(|reads| reads.execution_by_id(execution_id))
    }

    fn load_invocation(&self, exec_key: u64) -> Result<InvocationData> {
        self.read(|reads| reads.load_invocation(exec_key))
    }

    fn journal(&self, exec_key: u64) -> Result<Vec<Record>> {
        self.read(|reads| reads.journal(exec_key))
    }

    fn last_record(&self, exec_key: u64) -> Result<Option<Record>> {
        self.read(|reads| reads.last_record(exec_key))
    }

    fn list(
        &self,
        state: Option<ExecState>,
        function: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExecSummary>, Vec<Error>)> {
        self.read(|reads| reads.list(state, function, limit))
    }

    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        self.read(|reads| reads.callback(callback_id))
    }

    fn lease(&self, exec_key: u64) -> Result<Option<Lease>> {
        self.read(|reads| reads.lease(exec_key))
    }

    fn timers_of(&self, exec_keys: &HashSet<u64>) -> Result<(Vec<Timer>, Vec<u64>)> {
        self.read(|reads| reads.timers_of(exec_keys))
    }

    fn check(&self) -> Result<(usize, Vec<Error>)> {
        self.read(PgReads::check)
    }

    /// Every execution of `owner` that waits to run (see [`WakeScan::Set`]);
    /// there is no counter to move on.
    fn woken_since(&self, _seen: u64, owner: u64) -> Result<(u64, Vec<u64>)> {
        Ok((0, self.read(|reads| reads.woken(owner))?))
    }

    /// A counter value that always differs from `woken_since`'s, so that
    /// every poll looks at the set.
    fn poll_state(&self) -> Result<(u64, bool)> {
        Ok((1, self.read(PgReads::has_orphans)?))
    }

    fn wake_seq(&self) -> Result<u64> {
        Ok(0)
    }

    fn owners(&self) -> Result<Vec<(u64, OwnerEntry)>> {
        self.read(PgReads::owners)
    }

    fn wake_scan(&self) -> WakeScan {
        WakeScan::Set
    }

    fn wait_for_news(&self, timeout: Duration) -> News {
        self.news.wait(timeout)
    }

    fn interrupt_news(&self) {
        self.news.push(|news| news.poll_now = true);
    }

    /// The owner's advisory lock, held by a listener connection of its own
    /// that also receives its wake-up messages.
    fn hold_owner(&self, owner: u64) -> Result<Box<dyn OwnerHold>> {
        let client = listen(&self.location, owner)?;
        self.me.store(owner, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Listener {
            location: self.location.clone(),
            owner,
            news: self.news.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("perdure-listener".into())
            .spawn(move || listener.run(client))?;
        Ok(Box::new(ListenerHold {
            stop,
            thread: Some(thread),
        }))
    }

    fn other_owners(&self, me: u64) -> Result<Vec<OwnerState>> {
        self.read(|reads| reads.other_owners(me))
    }

    /// The server freed the crashed owner's lock with its session.
    fn forget_owner(&self, _owner: u64) {}
}

/// Opens an owner's listener connection: it holds the owner's advisory lock
/// (refused while another live session holds it) and listens on the owner's
/// channel and the store's orphans channel.
fn listen(location: &PgLocation, owner: u64) -> Result<Client> {
    let mut client = location.connect()?;
    let failed = |what: &'static str| location.failed(what);
    // The server, too, must notice a vanished host to end this session and
    // free the lock: probe the client after 5 s of silence.
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; \
             SET tcp_keepalives_count = 5; SET tcp_user_timeout = 10000",
        )
        .map_err(failed("cannot set the listener's keepalives"))?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&(owner as i64)])
        .map_err(failed("cannot take the owner's lock"))?
        .get(0);
    if !locked {
        return Err(Error::InvalidInput(format!(
            "owner {owner:016x} is held by another live session on {}",
            location.shown()
        )));
    }
    client
        .batch_execute(&format!(
            "LISTEN {}; LISTEN {}",
            owner_channel(owner),
            orphans_channel(location)
        ))
        .map_err(failed("cannot listen for wake-ups"))?;
    Ok(client)
}

/// News received and not yet taken by the poller.
#[derive(Default)]
struct NewsBox {
    news: Mutex<News>,
    ready: Condvar,
}

impl NewsBox {
    fn push(&self, add: impl FnOnce(&mut News)) {
        add(&mut self.news.lock());
        self.ready.notify_all();
    }

    /// What came in by `timeout`, as soon as something came.
    fn wait(&self, timeout: Duration) -> News {
        let deadline = Instant::now() + timeout;
        let mut news = self.news.lock();
        while news.woken.is_empty() && !news.orphans && !news.poll_now {
            if self.ready.wait_until(&mut news, deadline).timed_out() {
                break;
            }
        }
        std::mem::take(&mut *news)
    }
}

struct Listener {
    location: PgLocation,
    owner: u64,
    news: Arc<NewsBox>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Receives messages until stopped; a connection lost is opened again
    /// (with growing delays), after which the poller looks at everything,
    /// since messages sent meanwhile are lost.
    fn run(&self, first: Client) {
        let mut client = Some(first);
        let mut delay = FIRST_RECONNECT_DELAY;
        while !self.stop.load(Ordering::SeqCst) {
            let Some(connection) = client.as_mut() else {
                // Slept in slices, so that a closing engine is not held for
                // the whole back-off while the server is away.
                let until = Instant::now() + delay;
                while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(LISTEN_WAIT);
                }
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                if let Ok(again) = listen(&self.location, self.owner) {
                    client = Some(again);
                    delay = FIRST_RECONNECT_DELAY;
                    self.news.push(|news| news.poll_now = true);
                }
                continue;
            };
            let lost = {
                let mut messages = connection.notifications();
                let mut received = messages.timeout_iter(LISTEN_WAIT);
                loop {
                    match received.next() {
                        Ok(Some(message)) => self.hear(message.channel(), message.payload()),
                        Ok(None) => break false,
                        Err(_) => break true,
                    }
                }
            };
            if lost || connection.is_closed() {
                client = None;
            }
        }
    }

    fn hear(&self, channel: &str, payload: &str) {
        if channel == owner_channel(self.owner) {
            let keys: Option<Vec<u64>> = payload.split(',').map(|key| key.parse().ok()).collect();
            match keys {
                Some(keys) => self.news.push(|news| news.woken.extend(keys)),
                None => self.news.push(|news| news.poll_now = true),
            }
        } else {
            self.news.push(|news| news.orphans = true);
        }
    }
}

/// Keeps the listener (and with it the owner's lock) alive; dropping it
/// closes the connection, which frees the lock.
struct ListenerHold {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OwnerHold for ListenerHold {}

impl Drop for ListenerHold {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn refused() -> Result<()> {
        Err(Error::StorageFailed {
            full: false,
            detail: "refused".into(),
        })
    }

    #[test]
    fn a_lost_server_is_tried_again_after_growing_delays() {
        let reconnect = Reconnect::default();
        let tries = Cell::new(0);
        let attempt = || {
            reconnect.open(|| {
                tries.set(tries.get() + 1);
                refused()
            })
        };
        assert!(attempt().is_err());
        assert_eq!(tries.get(), 1);
        // Asked again at once: no try, a storage failure saying when.
        let err = attempt().unwrap_err();
        assert_eq!(tries.get(), 1);
        assert!(
            matches!(&err, Error::StorageFailed { full: false, detail } if detail.contains("next try in")),
            "{err}"
        );
        std::thread::sleep(FIRST_RECONNECT_DELAY);
        assert!(attempt().is_err());
        assert_eq!(tries.get(), 2);
        let (_, delay) = reconnect.next.lock().expect("a failed try sets the next");
        assert_eq!(delay, FIRST_RECONNECT_DELAY * 2);
        std::thread::sleep(delay);
        assert_eq!(reconnect.open(|| Ok(7)).unwrap(), 7);
        assert!(reconnect.next.lock().is_none(), "a success resets the back-off");
    }
}
