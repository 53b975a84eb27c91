//! The LMDB environment of one store directory: opening (format check, owner-only
//! files), the named databases, the map that grows by itself, and every read;
//! its [`Backend`] implementation. The writer's group commit lands in
//! `commit`: one LMDB write transaction per group.

use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::ops::Bound;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};

mod commit;
mod lock;

use self::lock::OwnerLock;
use super::{
    bad_journal, Backend, ExecSummary, InvocationData, JournalOrder, Lease, Mutation, Outcome, OwnerHold, OwnerState,
};
use crate::error::{Error, Result};
use crate::files::{self, DataFile};
use crate::keys::{self, CallbackEntry, ExecMeta, ExecState, OwnerEntry, Timer};
use crate::mapped::{Bounds, Mapped};
use crate::record::Record;
use crate::replay::ReplayIndex;
use crate::sealed;

/// The on-disk format this build reads and writes (see `docs/format.md`).
pub const FORMAT_VERSION: u32 = 5;
/// Format 2 added leases and the index of wake-ups by value; format 3 the
/// parent link of child executions and execution timeout timers; format 4
/// custom sub type labels on records; format 5 checksums on every value
/// besides journal records (see [`crate::sealed`]) and an epoch in every
/// lease. Formats 3 and 4 only add to what may be written; a store of
/// format 4 or older has its values sealed. They are upgraded in place
/// when opened.
const FORMAT_WITHOUT_LEASES: u32 = 1;
const FORMAT_WITHOUT_CHECKSUMS: u32 = 4;
pub const DEFAULT_MAP_SIZE: usize = 256 << 20;

pub(crate) const META_FORMAT: &[u8] = b"format_version";
pub(crate) const META_NEXT_EXEC: &[u8] = b"next_exec_key";
pub(crate) const META_WAKE_SEQ: &[u8] = b"wake_seq";
pub(crate) const META_LEASE_EPOCH: &[u8] = b"lease_epoch";

/// How far a commit must get before an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    Full,
    /// Written to the OS on every commit, fsynced on close: survives the
    /// process being killed, not the machine.
    Process,
    /// No sync at all, not even on close: for tests and scratch stores.
    None,
}

impl Durability {
    pub fn parse(text: &str) -> Result<Durability> {
        match text {
            "full" => Ok(Durability::Full),
            "process" => Ok(Durability::Process),
            "none" => Ok(Durability::None),
            other => Err(Error::InvalidInput(format!(
                "durability must be 'full', 'process' or 'none', not {other:?}"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub durability: Durability,
    pub map_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Full,
            map_size: DEFAULT_MAP_SIZE,
        }
    }
}

/// Every database: raw bytes, checked to lie inside the file when read.
pub(crate) type Db = Database<Mapped, Mapped>;

#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    pub meta: Db,
    pub executions: Db,
    pub exec_ids: Db,
    pub journal: Db,
    pub timers: Db,
    pub callbacks: Db,
    pub pending: Db,
    /// Wake value -> execution key: the wake-ups after a value, in order.
    pub wakes: Db,
    /// Owner id -> [`keys::OwnerEntry`]: the engines running executions.
    pub owners: Db,
    /// Execution key -> owner id: who runs each active execution.
    pub leases: Db,
    /// Execution key -> nothing: active executions no engine runs yet.
    pub orphans: Db,
}

pub struct Store {
    pub(crate) env: Env<WithoutTls>,
    pub(crate) dbs: Dbs,
    path: PathBuf,
    durability: Durability,
    /// `data.mdb`, to notice a file truncated under the map before LMDB
    /// reads past its end.
    data: DataFile,
    page_size: u64,
    /// Where LMDB mapped data.mdb (0: unknown); set again after each resize.
    map_start: AtomicUsize,
    /// Read and write transactions hold it shared; resizing the map holds it
    /// exclusively, because LMDB may only resize with no transaction open.
    gate: RwLock<()>,
}

/// One `Env` per path per process, as LMDB requires; engines and clients in
/// the same process share it.
static OPEN_STORES: Mutex<Option<HashMap<PathBuf, Weak<Store>>>> = Mutex::new(None);

impl Store {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Arc<Store>> {
        let access = |source: std::io::Error| Error::StoreAccess {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() && !path.is_dir() {
            return Err(access(std::io::Error::other("exists and is not a directory")));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(access)?;
        let canonical = path.canonicalize().map_err(access)?;
        let mut registry = OPEN_STORES.lock();
        let registry = registry.get_or_insert_with(HashMap::new);
        if let Some(store) = registry.get(&canonical).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let store = Arc::new(Store::open_env(&canonical, options)?);
        registry.retain(|_, weak| weak.strong_count() > 0);
        registry.insert(canonical, Arc::downgrade(&store));
        Ok(store)
    }

    fn open_env(path: &Path, options: &StoreOptions) -> Result<Store> {
        // Who owns the directory and its files, then what data.mdb says of
        // itself: both before LMDB opens (and maps) anything.
        files::check_dir(path)?;
        files::check_files(path)?;
        files::check_data(path)?;
        // LMDB creates its files with 0600 but keeps the mode of older files:
        // tighten them, now. Not once LMDB has them open: closing any other
        // descriptor of lock.mdb would drop this process's fcntl locks on it,
        // and the next process would take the store for unused and reset the
        // lock file under the running writers.
        for file in [files::DATA, files::LOCK] {
            files::make_private(&path.join(file))?;
        }
        let page = page_size();
        let existing = fs::metadata(path.join(files::DATA))
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let map_size = round_up(options.map_size.max(existing.saturating_mul(2)).max(page), page);
        let flags = match options.durability {
            Durability::Full => EnvFlags::empty(),
            Durability::Process | Durability::None => EnvFlags::NO_SYNC,
        };
        let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
        env_options.map_size(map_size).max_dbs(16).max_readers(1024);
        // SAFETY: the registry above guarantees one Env per path in this process,
        // and perdure never modifies the files behind LMDB's back.
        let env = unsafe { env_options.flags(flags).open(path) }.map_err(|err| map_open_error(path, err))?;
        let dbs = Store::open_dbs(&env, path).map_err(|err| corrupt_lmdb(path, err))?;
        // From now on an empty or missing data.mdb is damage, not a new store
        // (a store from before the marker gets it here, once found valid).
        files::write_marker(path)?;
        let data = DataFile::open(path)?;
        let page_size = u64::from(env.stat().page_size);
        Ok(Store {
            env,
            dbs,
            path: path.to_path_buf(),
            durability: options.durability,
            data,
            page_size,
            map_start: AtomicUsize::new(0),
            gate: RwLock::new(()),
        })
        .inspect(Store::find_map)
    }

    /// Opens the named databases, checks the format and upgrades an older one.
    fn open_dbs(env: &Env<WithoutTls>, path: &Path) -> Result<Dbs> {
        let mut txn = env.write_txn().map_err(|err| map_open_error(path, err))?;
        let dbs = Dbs {
            meta: env.create_database(&mut txn, Some("meta"))?,
            executions: env.create_database(&mut txn, Some("executions"))?,
            exec_ids: env.create_database(&mut txn, Some("exec_ids"))?,
            journal: env.create_database(&mut txn, Some("journal"))?,
            timers: env.create_database(&mut txn, Some("timers"))?,
            callbacks: env.create_database(&mut txn, Some("callbacks"))?,
            pending: env.create_database(&mut txn, Some("pending"))?,
            wakes: env.create_database(&mut txn, Some("wakes"))?,
            owners: env.create_database(&mut txn, Some("owners"))?,
            leases: env.create_database(&mut txn, Some("leases"))?,
            orphans: env.create_database(&mut txn, Some("orphans"))?,
        };
        match dbs.meta.get(&txn, META_FORMAT)? {
            None => dbs.meta.put(&mut txn, META_FORMAT, &FORMAT_VERSION.to_be_bytes())?,
            Some(bytes) => {
                let found = bytes
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::corrupt_store("format_version is not 4 bytes"))?;
                if (FORMAT_WITHOUT_LEASES..=FORMAT_WITHOUT_CHECKSUMS).contains(&found) {
                    refuse_live_owners(&txn, &dbs, path, found)?;
                    if found == FORMAT_WITHOUT_LEASES {
                        upgrade_from_v1(&mut txn, &dbs)?;
                    }
                    seal_values(&mut txn, &dbs)?;
                    dbs.meta.put(&mut txn, META_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
                } else if found != FORMAT_VERSION {
                    return Err(Error::FormatVersion {
                        path: path.to_path_buf(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
        }
        txn.commit().map_err(|err| map_open_error(path, err))?;
        Ok(dbs)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Runs `f` in a read transaction, adopting a map grown by another process.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&RoTxn<WithoutTls>, &Dbs) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        loop {
            let guard = self.gate.read();
            match self.env.read_txn() {
                Ok(txn) => {
                    let f = f.take().expect("read closure runs once");
                    let result = self.txn_bounds().and_then(|_bounds| f(&txn, &self.dbs));
                    drop(txn);
                    drop(guard);
                    return result.map_err(|err| match err {
                        // A read transaction goes bad only after LMDB met a
                        // damaged page in it.
                        Error::Lmdb(heed::Error::Mdb(MdbError::BadTxn)) => Error::CorruptFile {
                            path: self.data.path.clone(),
                            reason: "LMDB gave up on a damaged page".into(),
                        },
                        other => self.file_error(other),
                    });
                }
                Err(heed::Error::Mdb(MdbError::MapResized)) => {
                    drop(guard);
                    self.adopt_map_size()?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Errs, naming `data.mdb`, when the file is shorter than the pages its
    /// newest meta page counts: it was truncated under the map, and reading
    /// past its end would kill the process (SIGBUS). Call with a transaction
    /// open (after which LMDB reads no newer meta page).
    fn check_data_len(&self, info: &heed::EnvInfo) -> Result<u64> {
        let pages = (info.last_page_number as u64).saturating_add(1);
        self.data.check_len(pages.saturating_mul(self.page_size))
    }

    /// Checks the file's length (see [`Store::check_data_len`]) and bounds
    /// every key and value this thread reads until the guard drops to the
    /// part of the map the file backs (see [`crate::mapped`]).
    pub(crate) fn txn_bounds(&self) -> Result<Bounds> {
        let info = self.env.info();
        let len = self.check_data_len(&info)?;
        let map_start = self.map_start.load(Ordering::Acquire);
        Ok(Bounds::set(map_start, info.map_size, len))
    }

    /// Looks up where the map is, after opening and after each resize.
    fn find_map(&self) {
        let start = crate::mapped::map_start_of(&self.data.path, self.env.info().map_size).unwrap_or(0);
        self.map_start.store(start, Ordering::Release);
    }

    /// LMDB's own findings of a damaged file, as the error naming the file.
    pub(crate) fn file_error(&self, err: Error) -> Error {
        corrupt_lmdb(&self.path, err)
    }

    pub(crate) fn gate(&self) -> &RwLock<()> {
        &self.gate
    }

    /// Another process grew the map: take its size (no transaction may be open).
    pub(crate) fn adopt_map_size(&self) -> Result<()> {
        let _exclusive = self.gate.write();
        // SAFETY: the exclusive gate guarantees no transaction is open in this process.
        unsafe { self.env.resize(0) }?;
        self.find_map();
        Ok(())
    }

    /// Doubles the map after MDB_MAP_FULL; called by the writer with no transaction open.
    pub(crate) fn grow_map(&self) -> Result<()> {
        let _exclusive = self.gate.write();
        let current = self.env.info().map_size;
        let new_size = round_up(current.saturating_mul(2), page_size());
        // SAFETY: the exclusive gate guarantees no transaction is open in this process.
        unsafe { self.env.resize(new_size) }?;
        self.find_map();
        Ok(())
    }

    /// A failed write's error, as a storage failure when it is one. LMDB
    /// reports a write cut short (the disk filled up in the middle of it)
    /// as EIO: an EIO while the store's file system has next to no space
    /// left is taken for a full disk.
    pub(crate) fn classify_failure(&self, err: Error) -> Error {
        match err.classify_storage() {
            Error::StorageFailed { full: false, detail } => match free_space(&self.path) {
                Some(free) if free < LOW_SPACE => Error::StorageFailed {
                    full: true,
                    detail: format!("the store's disk is full ({free} bytes free): {detail}"),
                },
                _ => Error::StorageFailed { full: false, detail },
            },
            other => other,
        }
    }

    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }
}

impl Backend for Store {
    /// One write transaction for the group (see `lmdb/commit.rs`).
    fn commit(&self, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
        commit::try_commit(self, group)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    /// The owner's lock file under `owners/`, held while the engine lives.
    fn hold_owner(&self, owner: u64) -> Result<Box<dyn OwnerHold>> {
        Ok(Box::new(OwnerLock::acquire(&self.path, owner)?))
    }

    /// Crashed: its lock file is free.
    fn other_owners(&self, me: u64) -> Result<Vec<OwnerState>> {
        Ok(self
            .owners()?
            .into_iter()
            .filter(|(owner, _)| *owner != me)
            .map(|(owner, entry)| OwnerState {
                owner,
                crashed: !OwnerLock::is_held(&self.path, owner),
                renewed_ms: entry.renewed_ms,
            })
            .collect())
    }

    fn forget_owner(&self, owner: u64) {
        OwnerLock::remove_stale(&self.path, owner);
    }

    /// Flushes everything written with `process` durability to the disk.
    fn sync(&self) -> Result<()> {
        if self.durability == Durability::Process {
            self.env.force_sync()?;
        }
        Ok(())
    }

    fn exec_key_of(&self, execution_id: &str) -> Result<Option<u64>> {
        self.read(|txn, dbs| exec_key_in(txn, dbs, execution_id))
    }

    fn execution(&self, exec_key: u64) -> Result<Option<ExecSummary>> {
        self.read(|txn, dbs| summary_in(txn, dbs, exec_key))
    }

    fn execution_by_id(&self, execution_id: &str) -> Result<Option<ExecSummary>> {
        self.read(|txn, dbs| match exec_key_in(txn, dbs, execution_id)? {
            Some(exec_key) => summary_in(txn, dbs, exec_key),
            None => Ok(None),
        })
    }

    /// Everything an invocation of `exec_key` needs, from one snapshot.
    fn load_invocation(&self, exec_key: u64) -> Result<InvocationData> {
        self.read(|txn, dbs| {
            let meta = meta_in(txn, dbs, exec_key)?
                .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
            let wake = pending_in(txn, dbs, exec_key, &meta.execution_id)?.unwrap_or(0);
            let lease = lease_in(txn, dbs, exec_key)?;
            // Records go straight from the cursor into the index, never all
            // into a list first: a long journal is held in memory once.
            let mut index = ReplayIndex::with_capacity(journal_capacity_in(txn, dbs, exec_key)?);
            visit_journal(txn, dbs, exec_key, &meta.execution_id, |record| index.add(record))?;
            Ok(InvocationData {
                exec_key,
                meta,
                index,
                wake,
                lease,
            })
        })
    }

    fn journal(&self, exec_key: u64) -> Result<Vec<Record>> {
        self.read(|txn, dbs| {
            let meta = meta_in(txn, dbs, exec_key)?
                .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
            journal_in(txn, dbs, exec_key, &meta.execution_id)
        })
    }

    /// The last record of a journal: the outcome of a finished execution.
    fn last_record(&self, exec_key: u64) -> Result<Option<Record>> {
        self.read(|txn, dbs| {
            let upper = keys::journal_key(exec_key, u32::MAX);
            match dbs.journal.get_lower_than_or_equal_to(txn, &upper)? {
                Some((key, value)) if key.starts_with(&keys::exec_key_bytes(exec_key)) => {
                    let execution_id = meta_in(txn, dbs, exec_key)?.map(|m| m.execution_id).unwrap_or_default();
                    let seq = journal_sequence(key, exec_key, &execution_id)?;
                    Record::decode(value).map(Some).map_err(|reason| Error::CorruptRecord {
                        execution_id,
                        sequence: seq,
                        reason,
                    })
                }
                _ => Ok(None),
            }
        })
    }

    /// Executions in start order, filtered; `limit` 0 means no limit.
    /// Executions whose metadata is damaged are not listed but returned
    /// apart, each as the error naming it: one damaged value does not hide
    /// the others.
    fn list(
        &self,
        state: Option<ExecState>,
        function: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExecSummary>, Vec<Error>)> {
        self.read(|txn, dbs| {
            let mut rows = Vec::new();
            let mut damaged = Vec::new();
            for entry in dbs.executions.iter(txn)? {
                let (key, value) = entry?;
                let meta = match keys::read_u64(key)
                    .filter(|_| key.len() == 8)
                    .ok_or_else(|| "bad execution key".to_string())
                    .and_then(|exec_key| decode_meta(key, value).map(|meta| (exec_key, meta)))
                {
                    Ok(found) => found,
                    Err(reason) => {
                        damaged.push(damaged_execution(txn, dbs, key, "metadata", reason));
                        continue;
                    }
                };
                let (exec_key, meta) = meta;
                if state.is_some_and(|s| s != meta.state) || function.is_some_and(|f| f != meta.function) {
                    continue;
                }
                let pending = dbs.pending.get(txn, key)?.is_some();
                rows.push(ExecSummary {
                    exec_key,
                    meta,
                    pending,
                });
                if limit != 0 && rows.len() == limit {
                    break;
                }
            }
            Ok((rows, damaged))
        })
    }

    /// The wake counter now, and the executions of `owner` woken after `seen`,
    /// from one snapshot: a wake with a value at or below `seen` was already
    /// looked at. Reads only the wake-ups after `seen`, however many wait.
    fn woken_since(&self, seen: u64, owner: u64) -> Result<(u64, Vec<u64>)> {
        self.read(|txn, dbs| {
            let now = counter_in(txn, dbs, META_WAKE_SEQ)?;
            let mut woken = Vec::new();
            // Nothing comes after the last wake value.
            let Some(from) = seen.checked_add(1).map(u64::to_be_bytes) else {
                return Ok((now, woken));
            };
            for entry in dbs.wakes.range(txn, &(Bound::Included(&from[..]), Bound::Unbounded))? {
                let (key, value) = entry?;
                // A damaged wake-up is skipped: the execution it names cannot
                // be trusted, and the others must still be woken.
                let Ok(exec_key) = sealed::unseal_u64(key, value) else {
                    continue;
                };
                if lease_in(txn, dbs, exec_key).ok().flatten().map(|lease| lease.owner) == Some(owner) {
                    woken.push(exec_key);
                }
            }
            Ok((now, woken))
        })
    }

    /// The running engines, by owner id.
    fn owners(&self) -> Result<Vec<(u64, OwnerEntry)>> {
        self.read(|txn, dbs| {
            let mut owners = Vec::new();
            for entry in dbs.owners.iter(txn)? {
                let (key, value) = entry?;
                let owner = keys::read_u64(key).ok_or_else(|| Error::corrupt_store("bad owner key"))?;
                owners.push((owner, decode_owner(key, value)?));
            }
            Ok(owners)
        })
    }

    /// What the poller looks at every few milliseconds, in one read: the
    /// wake counter, and whether some active execution waits to be claimed.
    fn poll_state(&self) -> Result<(u64, bool)> {
        self.read(|txn, dbs| {
            let wake_seq = counter_in(txn, dbs, META_WAKE_SEQ)?;
            Ok((wake_seq, dbs.orphans.first(txn)?.is_some()))
        })
    }

    /// The engine that runs an execution, and under which grant, if any.
    fn lease(&self, exec_key: u64) -> Result<Option<Lease>> {
        self.read(|txn, dbs| lease_in(txn, dbs, exec_key))
    }

    /// The durable timers of the given executions, in one pass over the
    /// timers database (it is ordered by deadline, not by execution). A
    /// damaged timer is not armed; its execution is returned apart, so the
    /// caller can run it now (a replay re-arms what it still waits for).
    fn timers_of(&self, exec_keys: &HashSet<u64>) -> Result<(Vec<Timer>, Vec<u64>)> {
        self.read(|txn, dbs| {
            let mut timers = Vec::new();
            let mut damaged = Vec::new();
            for entry in dbs.timers.iter(txn)? {
                let (key, value) = entry?;
                let timer = sealed::unseal(key, value).ok().and_then(|_| Timer::decode(key));
                match timer {
                    Some(timer) if exec_keys.contains(&timer.exec_key) => timers.push(timer),
                    Some(_) => {}
                    None => damaged
                        .extend(keys::read_u64(key.get(8..).unwrap_or_default()).filter(|k| exec_keys.contains(k))),
                }
            }
            Ok((timers, damaged))
        })
    }

    /// Bumped by every wake-up; lets an engine notice other processes' writes cheaply.
    fn wake_seq(&self) -> Result<u64> {
        self.read(|txn, dbs| counter_in(txn, dbs, META_WAKE_SEQ))
    }

    /// Reads every entry of every database, checks every checksum, every
    /// journal key and record: what `perdure check` runs (in a child process,
    /// since a damaged B-tree page can still crash LMDB itself). Returns the
    /// damaged values found, each as the error naming it; an error of LMDB
    /// (the file itself is damaged) ends the walk. `entries` counts what was
    /// read.
    fn check(&self) -> Result<(usize, Vec<Error>)> {
        self.read(|txn, dbs| {
            let mut entries = 0;
            let mut damaged = Vec::new();
            let sealed_dbs = [
                ("executions", dbs.executions),
                ("exec_ids", dbs.exec_ids),
                ("timers", dbs.timers),
                ("callbacks", dbs.callbacks),
                ("pending", dbs.pending),
                ("wakes", dbs.wakes),
                ("owners", dbs.owners),
                ("leases", dbs.leases),
                ("orphans", dbs.orphans),
            ];
            for (name, db) in sealed_dbs {
                for entry in db.iter(txn)? {
                    let (key, value) = entry?;
                    entries += 1;
                    if let Err(reason) = sealed::unseal(key, value) {
                        damaged.push(Error::CorruptStore(format!("{name} entry {key:02x?}: {reason}")));
                    }
                }
            }
            for entry in dbs.meta.iter(txn)? {
                let (key, value) = entry?;
                entries += 1;
                if key != META_FORMAT {
                    if let Err(reason) = sealed::unseal(key, value) {
                        let name = String::from_utf8_lossy(key);
                        damaged.push(Error::CorruptStore(format!("counter {name}: {reason}")));
                    }
                }
            }
            // Every journal, execution by execution, with its keys checked.
            let mut exec_keys = Vec::new();
            for entry in dbs.journal.iter(txn)? {
                let (key, _) = entry?;
                entries += 1;
                let Some(exec_key) = keys::read_u64(key) else {
                    damaged.push(Error::CorruptStore(format!("journal key {key:02x?} is too short")));
                    continue;
                };
                if exec_keys.last() != Some(&exec_key) {
                    exec_keys.push(exec_key);
                }
            }
            for exec_key in exec_keys {
                let execution_id = match meta_in(txn, dbs, exec_key) {
                    Ok(Some(meta)) => meta.execution_id,
                    Ok(None) => format!("<execution key {exec_key}>"),
                    Err(err @ Error::Lmdb(_)) => return Err(err),
                    Err(_) => format!("<execution key {exec_key}>"),
                };
                match visit_journal(txn, dbs, exec_key, &execution_id, |_| {}) {
                    Ok(()) => {}
                    Err(err @ Error::Lmdb(_)) => return Err(err),
                    Err(err) => damaged.push(err),
                }
            }
            Ok((entries, damaged))
        })
    }

    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        self.read(|txn, dbs| callback_in(txn, dbs, callback_id))
    }
}

pub(crate) fn lease_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64) -> Result<Option<Lease>> {
    let key = keys::exec_key_bytes(exec_key);
    match dbs.leases.get(txn, &key)? {
        Some(value) => sealed::unseal(&key, value)
            .and_then(Lease::decode)
            .map(Some)
            .map_err(|reason| damaged_execution(txn, dbs, &key, "lease", reason)),
        None => Ok(None),
    }
}

/// The wake-up value of a runnable execution.
pub(crate) fn pending_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64, execution_id: &str) -> Result<Option<u64>> {
    let key = keys::exec_key_bytes(exec_key);
    match dbs.pending.get(txn, &key)? {
        Some(value) => sealed::unseal_u64(&key, value)
            .map(Some)
            .map_err(|reason| Error::CorruptExecution {
                execution_id: execution_id.to_string(),
                what: "wake-up entry",
                reason,
            }),
        None => Ok(None),
    }
}

/// A counter of the meta database (0 before its first bump).
pub(crate) fn counter_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, name: &[u8]) -> Result<u64> {
    match dbs.meta.get(txn, name)? {
        Some(value) => sealed::unseal_u64(name, value)
            .map_err(|reason| Error::CorruptStore(format!("counter {}: {reason}", String::from_utf8_lossy(name)))),
        None => Ok(0),
    }
}

fn decode_meta(key: &[u8], value: &[u8]) -> Result<ExecMeta, String> {
    ExecMeta::decode(sealed::unseal(key, value)?)
}

pub(crate) fn decode_owner(key: &[u8], value: &[u8]) -> Result<OwnerEntry> {
    sealed::unseal(key, value)
        .and_then(OwnerEntry::decode)
        .map_err(|reason| Error::CorruptStore(format!("owner entry {key:02x?}: {reason}")))
}

/// The error for a damaged value of the execution stored under `exec_key`,
/// named by its id when the id index still knows it (a scan, but only on
/// this error path: the metadata that holds the id cannot be trusted).
pub(crate) fn damaged_execution(
    txn: &RoTxn<WithoutTls>,
    dbs: &Dbs,
    exec_key: &[u8],
    what: &'static str,
    reason: String,
) -> Error {
    let execution_id = keys::read_u64(exec_key)
        .and_then(|wanted| {
            dbs.exec_ids.iter(txn).ok()?.flatten().find_map(|(id, value)| {
                (sealed::unseal_u64(id, value).ok() == Some(wanted)).then(|| String::from_utf8_lossy(id).into_owned())
            })
        })
        .unwrap_or_else(|| format!("<execution key {}>", keys::read_u64(exec_key).unwrap_or(0)));
    Error::CorruptExecution {
        execution_id,
        what,
        reason,
    }
}

/// Format 1 had one owner per store and no index of wake-ups: index every
/// pending wake-up, and leave every active execution for the next engine to
/// claim.
fn upgrade_from_v1(txn: &mut RwTxn, dbs: &Dbs) -> Result<()> {
    let mut wakes = Vec::new();
    for entry in dbs.pending.iter(txn)? {
        let (key, value) = entry?;
        wakes.push((value.to_vec(), key.to_vec()));
    }
    for (wake, exec_key) in wakes {
        dbs.wakes.put(txn, &wake, &exec_key)?;
    }
    let mut active = Vec::new();
    for entry in dbs.executions.iter(txn)? {
        let (key, value) = entry?;
        if ExecMeta::decode(value).map_err(Error::CorruptStore)?.state == ExecState::Active {
            active.push(key.to_vec());
        }
    }
    for exec_key in active {
        dbs.orphans.put(txn, &exec_key, &[])?;
    }
    Ok(())
}

/// An engine of an older perdure still running on the store would read the
/// upgraded values as garbage: refuse to upgrade under it.
fn refuse_live_owners(txn: &RoTxn<WithoutTls>, dbs: &Dbs, path: &Path, found: u32) -> Result<()> {
    for entry in dbs.owners.iter(txn)? {
        let (key, _) = entry?;
        if let Some(owner) = keys::read_u64(key) {
            if OwnerLock::is_held(path, owner) {
                return Err(Error::StoreAccess {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(format!(
                        "the store (format {found}) is in use by an older perdure; close it before \
                         opening the store with this version, which upgrades it to format {FORMAT_VERSION}"
                    )),
                });
            }
        }
    }
    Ok(())
}

/// Format 5: every value other than journal records gets its checksum, and
/// leases their epoch. Leases of older formats have no epoch to carry over,
/// and their owners are gone (see `refuse_live_owners`): their executions
/// are left for the next engine to claim, under a fresh grant.
fn seal_values(txn: &mut RwTxn, dbs: &Dbs) -> Result<()> {
    let mut leased = Vec::new();
    for entry in dbs.leases.iter(txn)? {
        leased.push(entry?.0.to_vec());
    }
    for exec_key in leased {
        dbs.leases.delete(txn, &exec_key)?;
        dbs.orphans.put(txn, &exec_key, &[])?;
    }
    dbs.owners.clear(txn)?;
    for db in [
        dbs.executions,
        dbs.exec_ids,
        dbs.callbacks,
        dbs.pending,
        dbs.wakes,
        dbs.orphans,
        dbs.timers,
    ] {
        let mut entries = Vec::new();
        for entry in db.iter(txn)? {
            let (key, value) = entry?;
            entries.push((key.to_vec(), value.to_vec()));
        }
        for (key, value) in entries {
            db.put(txn, &key, &sealed::seal(&key, &value))?;
        }
    }
    for counter in [META_NEXT_EXEC, META_WAKE_SEQ] {
        if let Some(value) = dbs.meta.get(txn, counter)? {
            let value = value.to_vec();
            dbs.meta.put(txn, counter, &sealed::seal(counter, &value))?;
        }
    }
    Ok(())
}

pub(crate) fn exec_key_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, execution_id: &str) -> Result<Option<u64>> {
    let key = execution_id.as_bytes();
    match dbs.exec_ids.get(txn, key)? {
        Some(value) => sealed::unseal_u64(key, value)
            .map(Some)
            .map_err(|reason| Error::CorruptExecution {
                execution_id: execution_id.to_string(),
                what: "id index entry",
                reason,
            }),
        None => Ok(None),
    }
}

pub(crate) fn meta_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64) -> Result<Option<ExecMeta>> {
    let key = keys::exec_key_bytes(exec_key);
    match dbs.executions.get(txn, &key)? {
        Some(value) => decode_meta(&key, value)
            .map(Some)
            .map_err(|reason| damaged_execution(txn, dbs, &key, "metadata", reason)),
        None => Ok(None),
    }
}

fn summary_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64) -> Result<Option<ExecSummary>> {
    let Some(meta) = meta_in(txn, dbs, exec_key)? else {
        return Ok(None);
    };
    let pending = dbs.pending.get(txn, &keys::exec_key_bytes(exec_key))?.is_some();
    Ok(Some(ExecSummary {
        exec_key,
        meta,
        pending,
    }))
}

pub(crate) fn callback_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, callback_id: &str) -> Result<Option<CallbackEntry>> {
    let key = callback_id.as_bytes();
    match dbs.callbacks.get(txn, key)? {
        Some(value) => sealed::unseal(key, value)
            .and_then(CallbackEntry::decode)
            .map(Some)
            .map_err(|reason| Error::CorruptStore(format!("callback {callback_id:?}: {reason}"))),
        None => Ok(None),
    }
}

fn journal_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64, execution_id: &str) -> Result<Vec<Record>> {
    let mut records = Vec::with_capacity(journal_capacity_in(txn, dbs, exec_key)?);
    visit_journal(txn, dbs, exec_key, execution_id, |record| records.push(record))?;
    Ok(records)
}

/// Decodes an execution's records in order; a corrupt one stops the walk
/// with an error naming the execution and the sequence number. The keys
/// must count 0, 1, 2, ... with no gap: a damaged key is reported, never
/// believed (a record read under the wrong sequence number would replay
/// the wrong operation).
pub(crate) fn visit_journal(
    txn: &RoTxn<WithoutTls>,
    dbs: &Dbs,
    exec_key: u64,
    execution_id: &str,
    mut visit: impl FnMut(Record),
) -> Result<()> {
    let mut order = JournalOrder::new(execution_id);
    for entry in dbs.journal.prefix_iter(txn, &keys::exec_key_bytes(exec_key))? {
        let (key, value) = entry?;
        let sequence = journal_sequence(key, exec_key, execution_id)?;
        visit(order.next(sequence, value)?);
    }
    Ok(())
}

/// The sequence number of a journal key of `exec_key`, or the error naming
/// the execution when the key is malformed.
pub(crate) fn journal_sequence(key: &[u8], exec_key: u64, execution_id: &str) -> Result<u32> {
    match keys::split_journal_key(key) {
        Some((exec, sequence)) if exec == exec_key => Ok(sequence),
        _ => Err(bad_journal(
            execution_id,
            format!("key {key:02x?} of {} bytes is not a journal key (12 bytes)", key.len()),
        )),
    }
}

/// How many records to make room for before reading a journal: one past
/// its last sequence number, but never more than a bound, since the key it
/// is read from may be damaged (the walk checks every key; a vector grows).
fn journal_capacity_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64) -> Result<usize> {
    const MAX_PREALLOCATED: usize = 1 << 16;
    let upper = keys::journal_key(exec_key, u32::MAX);
    Ok(match dbs.journal.get_lower_than_or_equal_to(txn, &upper)? {
        Some((key, _)) => match keys::split_journal_key(key) {
            Some((exec, seq)) if exec == exec_key => (seq as usize).saturating_add(1).min(MAX_PREALLOCATED),
            _ => 0,
        },
        None => 0,
    })
}

/// LMDB's errors that mean a damaged `data.mdb`, as [`Error::CorruptFile`].
fn corrupt_lmdb(dir: &Path, err: Error) -> Error {
    match err {
        Error::Lmdb(heed::Error::Decoding(reason)) => Error::CorruptFile {
            path: dir.join(files::DATA),
            reason: reason.to_string(),
        },
        Error::Lmdb(heed::Error::Mdb(
            code @ (MdbError::Invalid
            | MdbError::VersionMismatch
            | MdbError::Corrupted
            | MdbError::PageNotFound
            | MdbError::Incompatible),
        )) => Error::CorruptFile {
            path: dir.join(files::DATA),
            reason: format!("LMDB reports {code}"),
        },
        other => other,
    }
}

fn map_open_error(path: &Path, err: heed::Error) -> Error {
    match err {
        heed::Error::Mdb(MdbError::Other(code)) if code == libc::EACCES || code == libc::EROFS => Error::StoreAccess {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(code),
        },
        heed::Error::Io(io) => Error::StoreAccess {
            path: path.to_path_buf(),
            source: io,
        },
        other => corrupt_lmdb(path, Error::Lmdb(other)),
    }
}

/// Below this much free space, an EIO on a write is taken for a full disk.
const LOW_SPACE: u64 = 16 << 20;

/// Bytes free for unprivileged writers on the file system holding `path`.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `stats` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded and filled it.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::useless_conversion)] // u64 on 64-bit Linux, narrower elsewhere
    Some(u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

fn round_up(value: usize, multiple: usize) -> usize {
    value.div_ceil(multiple) * multiple
}
