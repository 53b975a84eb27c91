//! The storage seam: what the engine asks of a store, and the one language
//! it writes in. Every write is a batch of [`Mutation`]s that a backend
//! commits all-or-nothing, in groups that share one durable commit (the
//! writer's group commit, `crate::writer`); every read is one of the
//! [`Backend`] questions below, each answered from one consistent snapshot.
//! LMDB ([`lmdb`]) is the one implementation today; the runtime, the
//! scheduler, the timers and the bindings know only this trait.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::keys::{self, CallbackEntry, CallbackState, ExecMeta, ExecState, OwnerEntry, ParentLink, Timer};
use crate::record::Record;
use crate::replay::ReplayIndex;

mod apply;
pub mod lmdb;
pub mod postgres;

/// The records of one journal as a store hands them out, checked in order:
/// sequence numbers must count 0, 1, 2, ... with no gap (a record read under
/// the wrong number would replay the wrong operation), and every record must
/// decode. Both backends read journals through it.
pub(crate) struct JournalOrder<'a> {
    execution_id: &'a str,
    expected: u32,
}

impl<'a> JournalOrder<'a> {
    pub(crate) fn new(execution_id: &'a str) -> Self {
        JournalOrder {
            execution_id,
            expected: 0,
        }
    }

    /// The record stored under `sequence`, if it is the next one and decodes.
    pub(crate) fn next(&mut self, sequence: u32, bytes: &[u8]) -> Result<Record> {
        if sequence != self.expected {
            return Err(bad_journal(
                self.execution_id,
                format!("record {sequence} follows record {}", i64::from(self.expected) - 1),
            ));
        }
        let record = Record::decode(bytes).map_err(|reason| Error::CorruptRecord {
            execution_id: self.execution_id.to_string(),
            sequence,
            reason,
        })?;
        self.expected = self.expected.saturating_add(1);
        Ok(record)
    }
}

/// A journal whose keys or rows are not what perdure writes, naming the execution.
pub(crate) fn bad_journal(execution_id: &str, reason: String) -> Error {
    Error::CorruptExecution {
        execution_id: execution_id.to_string(),
        what: "journal",
        reason,
    }
}

/// A store the engine runs on: commits groups of batches and answers the
/// reads of the runtime, the poller and the bindings.
pub trait Backend: Send + Sync {
    /// Commits `group` as one durable unit (at the store's durability):
    /// each batch's preconditions are checked before any of its mutations
    /// is applied, and a batch whose check fails changes nothing and gets
    /// its refusal as its answer while the rest of the group commits. The
    /// outer error is a failure of the whole group (nothing of it stored):
    /// a storage failure (a full or failing disk) comes back as
    /// `Error::StorageFailed`, and the writer then retries each batch alone.
    fn commit(&self, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>>;

    /// Flushes what was committed without a sync (`process` durability).
    fn sync(&self) -> Result<()>;
    /// Where the store is, for messages: a path (never a password).
    fn describe(&self) -> String;

    fn exec_key_of(&self, execution_id: &str) -> Result<Option<u64>>;
    fn execution(&self, exec_key: u64) -> Result<Option<ExecSummary>>;
    fn execution_by_id(&self, execution_id: &str) -> Result<Option<ExecSummary>>;
    /// Everything an invocation of `exec_key` needs, from one snapshot.
    fn load_invocation(&self, exec_key: u64) -> Result<InvocationData>;
    fn journal(&self, exec_key: u64) -> Result<Vec<Record>>;
    /// The last record of a journal: the outcome of a finished execution.
    fn last_record(&self, exec_key: u64) -> Result<Option<Record>>;
    /// Executions in start order, filtered; `limit` 0 means no limit. Those
    /// whose metadata is damaged come back apart, each as its error.
    fn list(
        &self,
        state: Option<ExecState>,
        function: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExecSummary>, Vec<Error>)>;
    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>>;
    /// The engine that runs an execution, and under which grant, if any.
    fn lease(&self, exec_key: u64) -> Result<Option<Lease>>;
    /// The durable timers of the given executions, and apart the executions
    /// whose timers are damaged (to run now).
    fn timers_of(&self, exec_keys: &HashSet<u64>) -> Result<(Vec<Timer>, Vec<u64>)>;
    /// Reads and checks every stored entry: (entries read, damage found).
    fn check(&self) -> Result<(usize, Vec<Error>)>;

    // The poller's questions.
    /// The wake counter now, and the executions of `owner` woken after `seen`.
    fn woken_since(&self, seen: u64, owner: u64) -> Result<(u64, Vec<u64>)>;
    /// The wake counter, and whether an active execution waits to be claimed.
    fn poll_state(&self) -> Result<(u64, bool)>;
    /// The wake counter: wake-ups after it are news.
    fn wake_seq(&self) -> Result<u64>;
    /// The registered engines, by owner id.
    fn owners(&self) -> Result<Vec<(u64, OwnerEntry)>>;
    /// How the poller learns of wake-ups: `Since` a counter value (a store
    /// whose counter values commit in order), or as the whole `Set` of
    /// waiting executions each time (one where they may not).
    fn wake_scan(&self) -> WakeScan {
        WakeScan::Since
    }
    /// Waits up to `timeout` for news from other processes about this
    /// owner's executions. A store without a way to push news sleeps out the
    /// timeout and reports nothing: the poll finds what others wrote.
    fn wait_for_news(&self, timeout: Duration) -> News {
        std::thread::sleep(timeout);
        News::default()
    }
    /// Ends a `wait_for_news` in progress (the engine is closing).
    fn interrupt_news(&self) {}

    // Owner liveness: how a crashed engine is told from a live one without
    // waiting for its lease to time out.
    /// Marks `owner` alive for as long as the returned hold lives.
    fn hold_owner(&self, owner: u64) -> Result<Box<dyn OwnerHold>>;
    /// The registered owners other than `me`: whether each crashed (its
    /// hold was released without a goodbye) and its last renewal as stored.
    /// Whether one is hung is for the caller to judge, by watching that
    /// renewal stand still on its own clock: hosts' clocks never meet.
    fn other_owners(&self, me: u64) -> Result<Vec<OwnerState>>;
    /// Clears what a crashed owner left of its hold, once it is reaped.
    fn forget_owner(&self, owner: u64);
}

/// What keeps an owner marked alive; dropping it releases the mark.
pub trait OwnerHold: Send {}

/// An owner as another sees it: one that `crashed` is reaped at once; one
/// whose `renewed_ms` stands still for the lease timeout is reaped unless it
/// renewed meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerState {
    pub owner: u64,
    pub crashed: bool,
    pub renewed_ms: u64,
}

/// See [`Backend::wake_scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeScan {
    Since,
    Set,
}

/// What other processes told this owner while it waited.
#[derive(Debug, Default)]
pub struct News {
    /// Its executions woken (by a callback answered elsewhere, a child that
    /// ended, a cancel).
    pub woken: Vec<u64>,
    /// Executions without an owner appeared (started by a process that does
    /// not run executions, or left by an engine that closed).
    pub orphans: bool,
    /// Some news may have been lost (a listener that reconnected, a message
    /// too long to name every execution): poll at once.
    pub poll_now: bool,
}

/// What an invocation needs, read in one transaction.
pub struct InvocationData {
    pub exec_key: u64,
    pub meta: ExecMeta,
    pub index: ReplayIndex,
    /// The pending-index value seen; a wake-up after it changes this value.
    pub wake: u64,
    /// Who held the execution's lease in this snapshot: the invocation's
    /// writes are fenced by exactly this grant.
    pub lease: Option<Lease>,
}

/// One row of `list`.
#[derive(Clone, Debug)]
pub struct ExecSummary {
    pub exec_key: u64,
    pub meta: ExecMeta,
    pub pending: bool,
}

/// A grant of an execution to an owner. The epoch is new with every grant
/// (a store-wide counter), so an owner that lost an execution and claimed
/// it again does not pass the fence of an invocation from before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: u64,
    pub epoch: u64,
}

impl Lease {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.owner.to_be_bytes());
        out[8..].copy_from_slice(&self.epoch.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Lease, String> {
        match bytes.len() {
            16 => Ok(Lease {
                owner: keys::read_u64(bytes).ok_or("bad lease")?,
                epoch: keys::read_u64(&bytes[8..]).ok_or("bad lease")?,
            }),
            n => Err(format!("lease of {n} bytes, expected 16")),
        }
    }
}

#[derive(Debug)]
pub enum Mutation {
    /// Creates the execution unless its id exists (then reports the existing one).
    CreateExecution {
        execution_id: String,
        function: String,
        started: Record,
        /// The engine that will run it; `None` leaves it for any engine to claim.
        owner: Option<u64>,
        /// A child execution's parent operation (then the id must be new).
        parent: Option<ParentLink>,
        /// When the execution times out, if it does.
        deadline_ms: Option<u64>,
    },
    /// Refuses the batch unless the execution's lease is still the grant
    /// the invocation started under: put first in every batch an invocation
    /// writes, it fences off a stale owner, and a stale invocation of an
    /// owner that lost the execution and claimed it again.
    Fence {
        exec_key: u64,
        lease: Lease,
    },
    RegisterOwner {
        owner: u64,
        entry: OwnerEntry,
    },
    /// Renews an owner's lease; refused if the owner was reaped meanwhile.
    RenewOwner {
        owner: u64,
        now_ms: u64,
    },
    /// Removes an owner (dead, stale or closing) and leaves its active
    /// executions for others to claim. With `renewed_ms`, only if the owner
    /// has not renewed since that moment.
    Reap {
        owner: u64,
        renewed_ms: Option<u64>,
    },
    /// Leases up to `max` unclaimed active executions to `owner`.
    Claim {
        owner: u64,
        max: usize,
    },
    Append {
        exec_key: u64,
        record: Record,
    },
    AddTimer(Timer),
    CreateCallback {
        callback_id: String,
        entry: CallbackEntry,
    },
    /// Completes a pending callback (success or failure) and wakes its
    /// execution. A `record` without operation id gets the callback's.
    CompleteCallback {
        callback_id: String,
        state: CallbackState,
        record: Record,
    },
    Heartbeat {
        callback_id: String,
        now_ms: u64,
    },
    FireTimer {
        timer: Timer,
        now_ms: u64,
    },
    /// Ends an invocation: `final_state` finishes the execution, `None` suspends it.
    EndInvocation {
        exec_key: u64,
        seen_wake: u64,
        final_state: Option<ExecState>,
        records: Vec<Record>,
    },
    Cancel {
        exec_key: u64,
        record: Record,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Created {
        exec_key: u64,
        created: bool,
        /// The new execution's timeout timer.
        timer: Option<Timer>,
    },
    /// The execution that became runnable, if any.
    Woke(Option<Woken>),
    /// Executions leased by a claim, each with whether it waits to run.
    Claimed(Vec<(u64, bool)>),
    /// Whether a wake-up arrived during the invocation, so it must run
    /// again; and the parent an ended child execution woke.
    Ended {
        rerun: bool,
        parent: Option<Woken>,
    },
    /// A timer fired early (its deadline moved) and this one replaces it.
    Rearmed(Timer),
}

/// An execution made runnable, and the engine that runs it (if any).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Woken {
    pub exec_key: u64,
    pub owner: Option<u64>,
}
