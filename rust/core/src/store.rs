//! The LMDB environment of one store directory: opening (format check, owner-only
//! files), the named databases, the map that grows by itself, and every read.
//! All writes go through [`crate::writer`].

use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};

use crate::error::{Error, Result};
use crate::keys::{self, CallbackEntry, ExecMeta, ExecState, OwnerEntry, Timer};
use crate::record::Record;
use crate::replay::ReplayIndex;

/// The on-disk format this build reads and writes (see `docs/format.md`).
pub const FORMAT_VERSION: u32 = 4;
/// Format 2 added leases and the index of wake-ups by value; format 3 the
/// parent link of child executions and execution timeout timers; format 4
/// custom sub type labels on records. Formats 3 and 4 only add to what may be
/// written, so older stores need no conversion. They are upgraded in place
/// when opened.
const FORMAT_WITHOUT_LEASES: u32 = 1;
const FORMAT_WITHOUT_CHILDREN: u32 = 2;
const FORMAT_WITHOUT_LABELS: u32 = 3;
pub const DEFAULT_MAP_SIZE: usize = 256 << 20;

pub(crate) const META_FORMAT: &[u8] = b"format_version";
pub(crate) const META_NEXT_EXEC: &[u8] = b"next_exec_key";
pub(crate) const META_WAKE_SEQ: &[u8] = b"wake_seq";

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

#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    pub meta: Database<Bytes, Bytes>,
    pub executions: Database<Bytes, Bytes>,
    pub exec_ids: Database<Bytes, Bytes>,
    pub journal: Database<Bytes, Bytes>,
    pub timers: Database<Bytes, Bytes>,
    pub callbacks: Database<Bytes, Bytes>,
    pub pending: Database<Bytes, Bytes>,
    /// Wake value -> execution key: the wake-ups after a value, in order.
    pub wakes: Database<Bytes, Bytes>,
    /// Owner id -> [`keys::OwnerEntry`]: the engines running executions.
    pub owners: Database<Bytes, Bytes>,
    /// Execution key -> owner id: who runs each active execution.
    pub leases: Database<Bytes, Bytes>,
    /// Execution key -> nothing: active executions no engine runs yet.
    pub orphans: Database<Bytes, Bytes>,
}

/// What an invocation needs, read in one transaction.
pub struct InvocationData {
    pub exec_key: u64,
    pub meta: ExecMeta,
    pub index: ReplayIndex,
    /// The pending-index value seen; a wake-up after it changes this value.
    pub wake: u64,
}

/// One row of `list`.
#[derive(Clone, Debug)]
pub struct ExecSummary {
    pub exec_key: u64,
    pub meta: ExecMeta,
    pub pending: bool,
}

pub struct Store {
    pub(crate) env: Env<WithoutTls>,
    pub(crate) dbs: Dbs,
    path: PathBuf,
    durability: Durability,
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
        let access = |source: std::io::Error| Error::StoreAccess {
            path: path.to_path_buf(),
            source,
        };
        let page = page_size();
        let existing = fs::metadata(path.join("data.mdb"))
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
        let env = unsafe { env_options.flags(flags).open(path) }.map_err(|err| match err {
            heed::Error::Io(io) => access(io),
            heed::Error::Mdb(MdbError::Other(code)) if code == libc::EACCES || code == libc::EROFS => {
                access(std::io::Error::from_raw_os_error(code))
            }
            other => Error::Lmdb(other),
        })?;
        for file in ["data.mdb", "lock.mdb"] {
            // LMDB creates files with 0600 but keeps the mode of older files; be sure.
            let _ = fs::set_permissions(path.join(file), fs::Permissions::from_mode(0o600));
        }
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
                if found == FORMAT_WITHOUT_LEASES {
                    upgrade_from_v1(&mut txn, &dbs)?;
                } else if found == FORMAT_WITHOUT_CHILDREN || found == FORMAT_WITHOUT_LABELS {
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
        Ok(Store {
            env,
            dbs,
            path: path.to_path_buf(),
            durability: options.durability,
            gate: RwLock::new(()),
        })
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
                    let result = f(&txn, &self.dbs);
                    drop(txn);
                    drop(guard);
                    return result;
                }
                Err(heed::Error::Mdb(MdbError::MapResized)) => {
                    drop(guard);
                    self.adopt_map_size()?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    pub(crate) fn gate(&self) -> &RwLock<()> {
        &self.gate
    }

    /// Another process grew the map: take its size (no transaction may be open).
    pub(crate) fn adopt_map_size(&self) -> Result<()> {
        let _exclusive = self.gate.write();
        // SAFETY: the exclusive gate guarantees no transaction is open in this process.
        unsafe { self.env.resize(0) }?;
        Ok(())
    }

    /// Doubles the map after MDB_MAP_FULL; called by the writer with no transaction open.
    pub(crate) fn grow_map(&self) -> Result<()> {
        let _exclusive = self.gate.write();
        let current = self.env.info().map_size;
        let new_size = round_up(current.saturating_mul(2), page_size());
        // SAFETY: the exclusive gate guarantees no transaction is open in this process.
        unsafe { self.env.resize(new_size) }?;
        Ok(())
    }

    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    /// Flushes everything written with `process` durability to the disk.
    pub fn sync(&self) -> Result<()> {
        if self.durability == Durability::Process {
            self.env.force_sync()?;
        }
        Ok(())
    }

    pub fn exec_key_of(&self, execution_id: &str) -> Result<Option<u64>> {
        self.read(|txn, dbs| exec_key_in(txn, dbs, execution_id))
    }

    pub fn execution(&self, exec_key: u64) -> Result<Option<ExecSummary>> {
        self.read(|txn, dbs| summary_in(txn, dbs, exec_key))
    }

    pub fn execution_by_id(&self, execution_id: &str) -> Result<Option<ExecSummary>> {
        self.read(|txn, dbs| match exec_key_in(txn, dbs, execution_id)? {
            Some(exec_key) => summary_in(txn, dbs, exec_key),
            None => Ok(None),
        })
    }

    /// Everything an invocation of `exec_key` needs, from one snapshot.
    pub fn load_invocation(&self, exec_key: u64) -> Result<InvocationData> {
        self.read(|txn, dbs| {
            let meta = meta_in(txn, dbs, exec_key)?
                .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
            let wake = dbs
                .pending
                .get(txn, &keys::exec_key_bytes(exec_key))?
                .and_then(keys::read_u64)
                .unwrap_or(0);
            // Records go straight from the cursor into the index, never all
            // into a list first: a long journal is held in memory once.
            let mut index = ReplayIndex::with_capacity(journal_len_in(txn, dbs, exec_key)?);
            visit_journal(txn, dbs, exec_key, &meta.execution_id, |record| index.add(record))?;
            Ok(InvocationData {
                exec_key,
                meta,
                index,
                wake,
            })
        })
    }

    pub fn journal(&self, exec_key: u64) -> Result<Vec<Record>> {
        self.read(|txn, dbs| {
            let meta = meta_in(txn, dbs, exec_key)?
                .ok_or_else(|| Error::corrupt_store(format!("execution key {exec_key} has no metadata")))?;
            journal_in(txn, dbs, exec_key, &meta.execution_id)
        })
    }

    /// The last record of a journal: the outcome of a finished execution.
    pub fn last_record(&self, exec_key: u64) -> Result<Option<Record>> {
        self.read(|txn, dbs| {
            let upper = keys::journal_key(exec_key, u32::MAX);
            match dbs.journal.get_lower_than_or_equal_to(txn, &upper)? {
                Some((key, value)) if keys::split_journal_key(key).map(|(e, _)| e) == Some(exec_key) => {
                    let (_, seq) = keys::split_journal_key(key).unwrap_or_default();
                    let execution_id = meta_in(txn, dbs, exec_key)?.map(|m| m.execution_id).unwrap_or_default();
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
    pub fn list(&self, state: Option<ExecState>, function: Option<&str>, limit: usize) -> Result<Vec<ExecSummary>> {
        self.read(|txn, dbs| {
            let mut rows = Vec::new();
            for entry in dbs.executions.iter(txn)? {
                let (key, value) = entry?;
                let exec_key = keys::read_u64(key).ok_or_else(|| Error::corrupt_store("bad execution key"))?;
                let meta = ExecMeta::decode(value).map_err(Error::CorruptStore)?;
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
            Ok(rows)
        })
    }

    /// The wake counter now, and the executions of `owner` woken after `seen`,
    /// from one snapshot: a wake with a value at or below `seen` was already
    /// looked at. Reads only the wake-ups after `seen`, however many wait.
    pub fn woken_since(&self, seen: u64, owner: u64) -> Result<(u64, Vec<u64>)> {
        self.read(|txn, dbs| {
            let now = dbs.meta.get(txn, META_WAKE_SEQ)?.and_then(keys::read_u64).unwrap_or(0);
            let mut woken = Vec::new();
            let from = (seen + 1).to_be_bytes();
            for entry in dbs.wakes.range(txn, &(Bound::Included(&from[..]), Bound::Unbounded))? {
                let (_, value) = entry?;
                let exec_key = keys::read_u64(value).ok_or_else(|| Error::corrupt_store("bad wakes entry"))?;
                if lease_in(txn, dbs, exec_key)? == Some(owner) {
                    woken.push(exec_key);
                }
            }
            Ok((now, woken))
        })
    }

    /// The running engines, by owner id.
    pub fn owners(&self) -> Result<Vec<(u64, OwnerEntry)>> {
        self.read(|txn, dbs| {
            let mut owners = Vec::new();
            for entry in dbs.owners.iter(txn)? {
                let (key, value) = entry?;
                let owner = keys::read_u64(key).ok_or_else(|| Error::corrupt_store("bad owner key"))?;
                owners.push((owner, OwnerEntry::decode(value).map_err(Error::CorruptStore)?));
            }
            Ok(owners)
        })
    }

    /// What the poller looks at every few milliseconds, in one read: the
    /// wake counter, and whether some active execution waits to be claimed.
    pub fn poll_state(&self) -> Result<(u64, bool)> {
        self.read(|txn, dbs| {
            let wake_seq = dbs.meta.get(txn, META_WAKE_SEQ)?.and_then(keys::read_u64).unwrap_or(0);
            Ok((wake_seq, dbs.orphans.first(txn)?.is_some()))
        })
    }

    /// The engine that runs an execution, if any.
    pub fn lease(&self, exec_key: u64) -> Result<Option<u64>> {
        self.read(|txn, dbs| lease_in(txn, dbs, exec_key))
    }

    /// The durable timers of the given executions, in one pass over the
    /// timers database (it is ordered by deadline, not by execution).
    pub fn timers_of(&self, exec_keys: &HashSet<u64>) -> Result<Vec<Timer>> {
        self.read(|txn, dbs| {
            let mut timers = Vec::new();
            for entry in dbs.timers.iter(txn)? {
                let (key, _) = entry?;
                let timer = Timer::decode(key).ok_or_else(|| Error::corrupt_store("bad timer key"))?;
                if exec_keys.contains(&timer.exec_key) {
                    timers.push(timer);
                }
            }
            Ok(timers)
        })
    }

    /// Bumped by every wake-up; lets an engine notice other processes' writes cheaply.
    pub fn wake_seq(&self) -> Result<u64> {
        self.read(|txn, dbs| Ok(dbs.meta.get(txn, META_WAKE_SEQ)?.and_then(keys::read_u64).unwrap_or(0)))
    }

    pub fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        self.read(|txn, dbs| callback_in(txn, dbs, callback_id))
    }
}

pub(crate) fn lease_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64) -> Result<Option<u64>> {
    Ok(dbs
        .leases
        .get(txn, &keys::exec_key_bytes(exec_key))?
        .and_then(keys::read_u64))
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
    dbs.meta.put(txn, META_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
    Ok(())
}

pub(crate) fn exec_key_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, execution_id: &str) -> Result<Option<u64>> {
    match dbs.exec_ids.get(txn, execution_id.as_bytes())? {
        Some(bytes) => Ok(Some(
            keys::read_u64(bytes).ok_or_else(|| Error::corrupt_store("bad exec id entry"))?,
        )),
        None => Ok(None),
    }
}

pub(crate) fn meta_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64) -> Result<Option<ExecMeta>> {
    match dbs.executions.get(txn, &keys::exec_key_bytes(exec_key))? {
        Some(bytes) => Ok(Some(ExecMeta::decode(bytes).map_err(Error::CorruptStore)?)),
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
    match dbs.callbacks.get(txn, callback_id.as_bytes())? {
        Some(bytes) => Ok(Some(CallbackEntry::decode(bytes).map_err(Error::CorruptStore)?)),
        None => Ok(None),
    }
}

fn journal_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64, execution_id: &str) -> Result<Vec<Record>> {
    let mut records = Vec::with_capacity(journal_len_in(txn, dbs, exec_key)?);
    visit_journal(txn, dbs, exec_key, execution_id, |record| records.push(record))?;
    Ok(records)
}

/// Decodes an execution's records in order; a corrupt one stops the walk
/// with an error naming the execution and the sequence number.
pub(crate) fn visit_journal(
    txn: &RoTxn<WithoutTls>,
    dbs: &Dbs,
    exec_key: u64,
    execution_id: &str,
    mut visit: impl FnMut(Record),
) -> Result<()> {
    for entry in dbs.journal.prefix_iter(txn, &keys::exec_key_bytes(exec_key))? {
        let (key, value) = entry?;
        let sequence = keys::split_journal_key(key).map_or(0, |(_, seq)| seq);
        let record = Record::decode(value).map_err(|reason| Error::CorruptRecord {
            execution_id: execution_id.to_string(),
            sequence,
            reason,
        })?;
        visit(record);
    }
    Ok(())
}

/// How many records the journal holds: one past its last sequence number.
fn journal_len_in(txn: &RoTxn<WithoutTls>, dbs: &Dbs, exec_key: u64) -> Result<usize> {
    let upper = keys::journal_key(exec_key, u32::MAX);
    Ok(match dbs.journal.get_lower_than_or_equal_to(txn, &upper)? {
        Some((key, _)) => match keys::split_journal_key(key) {
            Some((exec, seq)) if exec == exec_key => seq as usize + 1,
            _ => 0,
        },
        None => 0,
    })
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
        other => Error::Lmdb(other),
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

fn round_up(value: usize, multiple: usize) -> usize {
    value.div_ceil(multiple) * multiple
}
