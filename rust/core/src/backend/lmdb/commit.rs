//! The LMDB backend's commit: one write transaction per group of batches,
//! each batch checked in full before any of it is applied (the shared
//! check-then-apply of `backend::apply`, run over [`Txn`], this store's
//! [`TxnView`]), so that a refused batch changes nothing while the rest of
//! the group commits. What each mutation writes is docs/format.md §5.

use heed::{MdbError, RoTxn, RwTxn, WithoutTls};

use super::{self as store, Dbs, Store, META_LEASE_EPOCH, META_NEXT_EXEC, META_WAKE_SEQ};
use crate::backend::apply::{apply_batch, Counter, TxnView};
use crate::backend::{Lease, Mutation, Outcome};
use crate::error::{Error, Result};
use crate::keys::{self, CallbackEntry, ExecMeta, OwnerEntry, Timer};
use crate::record::Record;
use crate::sealed;

/// A commit of a group. A storage failure (a full or failing disk) comes
/// back as `Error::StorageFailed`: LMDB aborted the transaction, so nothing
/// of the group is stored, and the next commit starts from the last one
/// that succeeded (the writer keeps no state of its own beyond the store).
pub(super) fn try_commit(store: &Store, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
    commit_group(store, group).map_err(|err| store.classify_failure(err))
}

fn commit_group(store: &Store, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
    loop {
        let guard = store.gate().read();
        let mut txn = match store.env.write_txn() {
            Ok(txn) => txn,
            Err(heed::Error::Mdb(MdbError::MapResized)) => {
                drop(guard);
                store.adopt_map_size()?;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        // A data.mdb truncated under the map would kill the process at the
        // first page read past its end: refuse to write instead.
        let applied: Result<Vec<_>> = store.txn_bounds().and_then(|_bounds| {
            let mut view = Txn {
                txn: &mut txn,
                dbs: store.dbs,
            };
            group.iter().map(|batch| apply_batch(&mut view, batch)).collect()
        });
        let outcome = applied.and_then(|results| Ok(txn.commit().map(|()| results)?));
        drop(guard);
        match outcome {
            Err(Error::Lmdb(heed::Error::Mdb(MdbError::MapFull))) => {
                store.grow_map().map_err(|err| Error::StorageFailed {
                    full: true,
                    detail: format!("the store's disk is full: its map is full and cannot grow: {err}"),
                })?
            }
            Err(Error::Lmdb(heed::Error::Mdb(MdbError::MapResized))) => store.adopt_map_size()?,
            other => return other.map_err(|err| store.file_error(err)),
        }
    }
}

/// A write transaction seen by check-then-apply: every entry is the sealed
/// value of docs/format.md under its database's key.
struct Txn<'a, 'e> {
    txn: &'a mut RwTxn<'e>,
    dbs: Dbs,
}

impl Txn<'_, '_> {
    fn ro(&self) -> &RoTxn<'_, WithoutTls> {
        self.txn
    }
}

fn put_sealed(txn: &mut RwTxn, db: store::Db, key: &[u8], payload: &[u8]) -> Result<()> {
    db.put(txn, key, &sealed::seal(key, payload))?;
    Ok(())
}

impl TxnView for Txn<'_, '_> {
    fn aborts(err: &Error) -> bool {
        matches!(err, Error::Lmdb(_))
    }

    fn exec_key(&self, execution_id: &str) -> Result<Option<u64>> {
        store::exec_key_in(self.ro(), &self.dbs, execution_id)
    }

    fn put_exec_id(&mut self, execution_id: &str, exec_key: u64) -> Result<()> {
        let key = keys::exec_key_bytes(exec_key);
        put_sealed(self.txn, self.dbs.exec_ids, execution_id.as_bytes(), &key)
    }

    fn meta(&self, exec_key: u64) -> Result<Option<ExecMeta>> {
        store::meta_in(self.ro(), &self.dbs, exec_key)
    }

    fn put_meta(&mut self, exec_key: u64, meta: &ExecMeta) -> Result<()> {
        let key = keys::exec_key_bytes(exec_key);
        put_sealed(self.txn, self.dbs.executions, &key, &meta.encode())
    }

    /// One B-tree lookup, independent of the journal's length in practice.
    fn next_seq(&self, exec_key: u64) -> Result<u32> {
        let upper = keys::journal_key(exec_key, u32::MAX);
        let seq = match self.dbs.journal.get_lower_than_or_equal_to(self.ro(), &upper)? {
            // A damaged last key is an error, never a reason to start again at 0
            // (which would overwrite the first record).
            Some((key, _)) if key.starts_with(&keys::exec_key_bytes(exec_key)) => {
                let execution_id = || {
                    self.meta(exec_key)
                        .ok()
                        .flatten()
                        .map_or_else(|| format!("<execution key {exec_key}>"), |meta| meta.execution_id)
                };
                let Some((_, seq)) = keys::split_journal_key(key) else {
                    let reason = format!("key {key:02x?} of {} bytes is not a journal key (12 bytes)", key.len());
                    return Err(crate::backend::bad_journal(&execution_id(), reason));
                };
                seq.checked_add(1).ok_or_else(|| {
                    crate::backend::bad_journal(
                        &execution_id(),
                        format!("record {seq} is past the journal length limit"),
                    )
                })?
            }
            _ => 0,
        };
        Ok(seq)
    }

    fn put_record(&mut self, exec_key: u64, seq: u32, record: &Record) -> Result<()> {
        self.dbs
            .journal
            .put(self.txn, &keys::journal_key(exec_key, seq), &record.encode())?;
        Ok(())
    }

    fn visit_journal(&self, exec_key: u64, execution_id: &str, visit: &mut dyn FnMut(Record)) -> Result<()> {
        store::visit_journal(self.ro(), &self.dbs, exec_key, execution_id, visit)
    }

    fn pending_wake(&self, exec_key: u64) -> Result<Option<u64>> {
        match self.dbs.pending.get(self.ro(), &keys::exec_key_bytes(exec_key))? {
            Some(value) => sealed::unseal_u64(&keys::exec_key_bytes(exec_key), value)
                .map(Some)
                .map_err(|reason| {
                    store::damaged_execution(
                        self.ro(),
                        &self.dbs,
                        &keys::exec_key_bytes(exec_key),
                        "wake-up entry",
                        reason,
                    )
                }),
            None => Ok(None),
        }
    }

    fn put_pending(&mut self, exec_key: u64, wake: u64) -> Result<()> {
        let key = keys::exec_key_bytes(exec_key);
        put_sealed(self.txn, self.dbs.pending, &key, &wake.to_be_bytes())?;
        put_sealed(self.txn, self.dbs.wakes, &wake.to_be_bytes(), &key)
    }

    fn delete_pending(&mut self, exec_key: u64, wake: u64) -> Result<()> {
        self.dbs.wakes.delete(self.txn, &wake.to_be_bytes())?;
        self.dbs.pending.delete(self.txn, &keys::exec_key_bytes(exec_key))?;
        Ok(())
    }

    fn lease(&self, exec_key: u64) -> Result<Option<Lease>> {
        store::lease_in(self.ro(), &self.dbs, exec_key)
    }

    fn put_lease(&mut self, exec_key: u64, lease: Lease) -> Result<()> {
        put_sealed(
            self.txn,
            self.dbs.leases,
            &keys::exec_key_bytes(exec_key),
            &lease.encode(),
        )
    }

    fn delete_lease(&mut self, exec_key: u64) -> Result<()> {
        self.dbs.leases.delete(self.txn, &keys::exec_key_bytes(exec_key))?;
        Ok(())
    }

    fn release_leases(&mut self, owner: u64) -> Result<()> {
        // One pass over the leases: a reap is rare, and an index by owner would
        // cost a write on every execution start and end.
        // A damaged lease is released too: whoever it named, nobody can prove
        // they hold it, and the next claim grants the execution afresh.
        let mut orphaned = Vec::new();
        for entry in self.dbs.leases.iter(self.ro())? {
            let (key, value) = entry?;
            let holder = sealed::unseal(key, value)
                .and_then(Lease::decode)
                .map(|lease| lease.owner);
            if holder.map_or(true, |holder| holder == owner) {
                orphaned.push(key.to_vec());
            }
        }
        for exec_key in orphaned {
            self.dbs.leases.delete(self.txn, &exec_key)?;
            put_sealed(self.txn, self.dbs.orphans, &exec_key, &[])?;
        }
        Ok(())
    }

    fn put_orphan(&mut self, exec_key: u64) -> Result<()> {
        put_sealed(self.txn, self.dbs.orphans, &keys::exec_key_bytes(exec_key), &[])
    }

    fn delete_orphan(&mut self, exec_key: u64) -> Result<()> {
        self.dbs.orphans.delete(self.txn, &keys::exec_key_bytes(exec_key))?;
        Ok(())
    }

    fn take_orphans(&mut self, max: usize) -> Result<Vec<Option<u64>>> {
        let mut taken = Vec::new();
        for entry in self.dbs.orphans.iter(self.ro())?.take(max) {
            let (key, value) = entry?;
            let exec_key = keys::read_u64(key).filter(|_| key.len() == 8);
            taken.push((key.to_vec(), exec_key.filter(|_| sealed::unseal(key, value).is_ok())));
        }
        let mut exec_keys = Vec::with_capacity(taken.len());
        for (key, exec_key) in taken {
            self.dbs.orphans.delete(self.txn, &key)?;
            exec_keys.push(exec_key);
        }
        Ok(exec_keys)
    }

    fn has_owner(&self, owner: u64) -> Result<bool> {
        Ok(self.dbs.owners.get(self.ro(), &owner.to_be_bytes())?.is_some())
    }

    fn owner(&self, owner: u64) -> Result<Option<OwnerEntry>> {
        let key = owner.to_be_bytes();
        match self.dbs.owners.get(self.ro(), &key)? {
            Some(bytes) => store::decode_owner(&key, bytes).map(Some),
            None => Ok(None),
        }
    }

    fn put_owner(&mut self, owner: u64, entry: &OwnerEntry) -> Result<()> {
        put_sealed(self.txn, self.dbs.owners, &owner.to_be_bytes(), &entry.encode())
    }

    fn delete_owner(&mut self, owner: u64) -> Result<()> {
        self.dbs.owners.delete(self.txn, &owner.to_be_bytes())?;
        Ok(())
    }

    fn has_callback(&self, callback_id: &str) -> Result<bool> {
        Ok(self.dbs.callbacks.get(self.ro(), callback_id.as_bytes())?.is_some())
    }

    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        store::callback_in(self.ro(), &self.dbs, callback_id)
    }

    fn put_callback(&mut self, callback_id: &str, entry: &CallbackEntry) -> Result<()> {
        put_sealed(self.txn, self.dbs.callbacks, callback_id.as_bytes(), &entry.encode())
    }

    fn put_timer(&mut self, timer: &Timer) -> Result<()> {
        put_sealed(self.txn, self.dbs.timers, &timer.encode(), &[])
    }

    fn delete_timer(&mut self, timer: &Timer) -> Result<bool> {
        Ok(self.dbs.timers.delete(self.txn, &timer.encode())?)
    }

    fn bump(&mut self, counter: Counter) -> Result<u64> {
        let name = match counter {
            Counter::NextExec => META_NEXT_EXEC,
            Counter::WakeSeq => META_WAKE_SEQ,
            Counter::LeaseEpoch => META_LEASE_EPOCH,
        };
        // A counter at its limit was never written by a store in use: its
        // value is damaged, and wrapping would reuse keys and epochs.
        let next = store::counter_in(self.ro(), &self.dbs, name)?
            .checked_add(1)
            .ok_or_else(|| Error::CorruptStore(format!("counter {} is at its limit", String::from_utf8_lossy(name))))?;
        put_sealed(self.txn, self.dbs.meta, name, &next.to_be_bytes())?;
        Ok(next)
    }
}
