//! A store opened for use: the writer, and for an engine that runs executions
//! its lease, the ready queue, the timer thread and the poller that notices
//! what other processes wrote (a callback completed from the CLI, say) and
//! takes over the executions of engines that died.

use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::lmdb::{Store, StoreOptions};
use crate::backend::postgres::{self, PgLocation, PgOptions, PgStore};
use crate::backend::{Backend, ExecSummary, InvocationData, Lease, Mutation, Outcome, OwnerHold, WakeScan};
use crate::clock::{system_ms, Clock, SystemClock};
use crate::error::{Error, Result};
use crate::executor::{Executor, WorkerWrapper};
use crate::keys::{CallbackEntry, CallbackState, ExecState, OwnerEntry, ParentLink, Timer, TimerKind};
use crate::record::{OpType, Record, RecordKind, SubType};
use crate::scheduler::Scheduler;
use crate::timers::{TimerContext, Timers};
use crate::writer::{Delivery, Done, Writer};

pub struct RuntimeOptions {
    pub store: StoreOptions,
    /// Run executions (register as an owner, timers, ready queue), or only
    /// read and complete callbacks, as the CLI does.
    pub owner: bool,
    /// How often the owner looks for wake-ups written by other processes.
    pub poll_interval: Duration,
    /// How long an owner may go without renewing its lease (a hung process)
    /// before other owners take its executions. A crashed owner is noticed
    /// at once, through its lock, whatever this is.
    pub lease_timeout: Duration,
    pub clock: Arc<dyn Clock>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            store: StoreOptions::default(),
            owner: true,
            poll_interval: Duration::from_millis(5),
            lease_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A callback to register together with an append.
pub struct NewCallback {
    pub op_id: String,
    pub timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

/// A child execution to start together with an append (`ctx.invoke`).
pub struct NewChild {
    pub execution_id: String,
    pub function: String,
    pub input: Vec<u8>,
    /// The parent's operation that waits for it.
    pub op_id: String,
    pub timeout_ms: Option<u64>,
}

/// Runs one invocation of an execution (the bindings call into Python).
pub type Invoker = Arc<dyn Fn(u64) + Send + Sync>;

struct Owner {
    /// This engine's id in the owners database and in every lease it holds.
    id: u64,
    leases: Arc<Leases>,
    /// Released on close, so another engine may take over at once.
    lock: Mutex<Option<Box<dyn OwnerHold>>>,
    scheduler: Arc<Scheduler>,
    timers: Arc<Timers>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    executor: Mutex<Option<Arc<Executor>>>,
    /// The lease each running invocation was loaded under: its writes are
    /// fenced by that grant, not by whatever this engine holds now.
    invocations: Mutex<HashMap<u64, Lease>>,
}

pub struct Runtime {
    pub backend: Arc<dyn Backend>,
    writer: Arc<Writer>,
    clock: Arc<dyn Clock>,
    owner: Option<Owner>,
    /// Bumped when an execution of this process finishes; wakes `wait_finished`.
    finished: Arc<Finished>,
    /// Set by `close`: a `wait_finished` still waiting then is answered
    /// `Error::Closed`, not left to wait on a store nobody runs.
    closed: AtomicBool,
}

/// Counts executions finished by this process, so `wait_finished` wakes at once.
#[derive(Default)]
pub(crate) struct Finished {
    count: Mutex<u64>,
    signal: Condvar,
    /// Executions whose last invocation stopped on a storage failure: the
    /// failure, and the value of `stall_seq` when it happened.
    stalls: Mutex<Stalls>,
}

#[derive(Default)]
struct Stalls {
    seq: u64,
    by_exec: HashMap<u64, (u64, bool, String)>,
}

impl Finished {
    pub(crate) fn bump(&self) {
        *self.count.lock() += 1;
        self.signal.notify_all();
    }
}

impl Runtime {
    /// Opens the LMDB store at `path` (see [`Runtime::on`]).
    pub fn open(path: &Path, options: RuntimeOptions) -> Result<Runtime> {
        let store = Store::open(path, &options.store)?;
        Runtime::on(store, options)
    }

    /// Opens the store `location` names: a `postgresql://` URL (see
    /// [`PgLocation::parse`]) or an LMDB directory.
    pub fn open_location(location: &str, options: RuntimeOptions) -> Result<Runtime> {
        if postgres::is_url(location) {
            let pg = PgOptions {
                durability: options.store.durability,
                ..PgOptions::default()
            };
            let store = PgStore::open(PgLocation::parse(location)?, pg)?;
            Runtime::on(store, options)
        } else {
            Runtime::open(Path::new(location), options)
        }
    }

    /// Runs on an opened store (`options.store` is the LMDB store's options,
    /// used only by [`Runtime::open`]).
    pub fn on(backend: Arc<dyn Backend>, options: RuntimeOptions) -> Result<Runtime> {
        let writer = Arc::new(Writer::new(backend.clone()));
        let mut runtime = Runtime {
            backend,
            writer,
            clock: options.clock,
            owner: None,
            finished: Arc::default(),
            closed: AtomicBool::new(false),
        };
        if options.owner {
            runtime.owner = Some(runtime.start_owner(options.poll_interval, options.lease_timeout)?);
        }
        Ok(runtime)
    }

    /// Registers this engine as an owner, takes over what dead owners left,
    /// then starts the timer and poller threads.
    fn start_owner(&self, poll_interval: Duration, lease_timeout: Duration) -> Result<Owner> {
        let id = new_owner_id()?;
        let lock = self.backend.hold_owner(id)?;
        let now = system_ms();
        let entry = OwnerEntry {
            pid: std::process::id(),
            started_ms: now,
            renewed_ms: now,
        };
        self.writer.submit(vec![Mutation::RegisterOwner { owner: id, entry }])?;
        let scheduler = Arc::new(Scheduler::default());
        let timers = Arc::new(Timers::default());
        let leases = Arc::new(Leases {
            id,
            backend: self.backend.clone(),
            writer: self.writer.clone(),
            scheduler: scheduler.clone(),
            timers: timers.clone(),
            lease_timeout,
            watched: Mutex::default(),
            last_look: Mutex::default(),
        });
        // Wake-ups after this value reach the poller; claims cover those before.
        let seen = self.backend.wake_seq()?;
        leases.reap_dead()?;
        leases.claim(usize::MAX)?;
        let stop = Arc::new(AtomicBool::new(false));
        let timer_context = TimerContext {
            clock: self.clock.clone(),
            writer: self.writer.clone(),
            scheduler: scheduler.clone(),
            timers: timers.clone(),
            owner: id,
            finished: self.finished.clone(),
        };
        let timer_thread = std::thread::Builder::new()
            .name("perdure-timers".into())
            .spawn(move || timer_context.run())?;
        let poller = Poller {
            leases: leases.clone(),
            stop: stop.clone(),
        };
        let poller_thread = std::thread::Builder::new()
            .name("perdure-poller".into())
            .spawn(move || poller.run(seen, poll_interval))?;
        Ok(Owner {
            id,
            leases,
            lock: Mutex::new(Some(lock)),
            scheduler,
            timers,
            stop,
            threads: Mutex::new(vec![timer_thread, poller_thread]),
            executor: Mutex::new(None),
            invocations: Mutex::default(),
        })
    }

    /// This engine's owner id, when it runs executions.
    pub fn owner_id(&self) -> Option<u64> {
        self.owner.as_ref().map(|owner| owner.id)
    }

    pub fn is_owner(&self) -> bool {
        self.owner.is_some()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn owner(&self) -> Result<&Owner> {
        self.owner
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("this store handle does not run executions".into()))
    }

    /// Commits a batch and acts on what it did: arms timers, queues woken
    /// executions, signals finished ones.
    fn submit(&self, batch: Vec<Mutation>) -> Result<Vec<Outcome>> {
        let after = AfterCommit::of(&batch);
        let outcomes = self.writer.submit(batch)?;
        after.settle(&self.settler(), &outcomes);
        Ok(outcomes)
    }

    /// `submit` for callers that cannot block: `done` gets the outcomes (on
    /// the commit thread) once the batch is durable and acted on.
    fn submit_later(&self, batch: Vec<Mutation>, done: Done) {
        let after = AfterCommit::of(&batch);
        let settler = self.settler();
        self.writer.submit_later(
            batch,
            Box::new(move |answer| {
                if let Ok(outcomes) = &answer {
                    after.settle(&settler, outcomes);
                }
                done(answer);
            }),
        );
    }

    fn settler(&self) -> Settler {
        Settler {
            owner: self
                .owner
                .as_ref()
                .map(|owner| (owner.id, owner.timers.clone(), owner.scheduler.clone())),
            finished: self.finished.clone(),
        }
    }

    /// How answers of `submit_later` reach their callers (see `Writer::set_delivery`).
    pub fn set_delivery(&self, delivery: Delivery) {
        self.writer.set_delivery(delivery);
    }

    /// Starts an execution, or finds the one with this id. Returns (key,
    /// created). With `timeout_ms` it ends TIMED_OUT if still active then.
    pub fn start(
        &self,
        execution_id: &str,
        function: &str,
        input: Vec<u8>,
        timeout_ms: Option<u64>,
    ) -> Result<(u64, bool)> {
        let now = self.now_ms();
        let create = self.create_execution(execution_id, function, input, now, timeout_ms, None)?;
        let outcomes = self.submit(vec![create])?;
        match outcomes.first() {
            Some(Outcome::Created { exec_key, created, .. }) => Ok((*exec_key, *created)),
            _ => Err(Error::corrupt_store("create execution returned no key")),
        }
    }

    fn create_execution(
        &self,
        execution_id: &str,
        function: &str,
        input: Vec<u8>,
        now: u64,
        timeout_ms: Option<u64>,
        parent: Option<ParentLink>,
    ) -> Result<Mutation> {
        if execution_id.is_empty() || execution_id.len() > 1024 {
            return Err(Error::InvalidInput("execution id must be 1 to 1024 bytes".into()));
        }
        if timeout_ms == Some(0) {
            return Err(Error::InvalidInput("execution timeout must be positive".into()));
        }
        let mut started = Record::new(RecordKind::Started, OpType::Execution, SubType::None, "");
        started.timestamp_ms = now;
        started.name = Some(function.to_string());
        started.extra = Some(execution_id.to_string());
        started.payload = Some(input);
        started.aux = timeout_ms.unwrap_or(0);
        Ok(Mutation::CreateExecution {
            execution_id: execution_id.to_string(),
            function: function.to_string(),
            started,
            owner: self.owner_id(),
            parent,
            deadline_ms: timeout_ms.map(|t| now.saturating_add(t)),
        })
    }

    /// Appends records (stamped now) and arms wake timers `delay_ms` after that
    /// same stamp, in one commit, so a record and its timer agree exactly;
    /// `callback` registers a new callback and returns its unguessable id.
    pub fn append(
        &self,
        exec_key: u64,
        records: Vec<Record>,
        wake_at: Vec<(u64, String)>,
        callback: Option<NewCallback>,
        child: Option<NewChild>,
    ) -> Result<Option<String>> {
        let (batch, callback_id) = self.append_batch(exec_key, records, wake_at, callback, child)?;
        self.submit(batch)?;
        Ok(callback_id)
    }

    /// `append` without blocking: `done` gets the new callback id (or the
    /// error) once the records are durable.
    pub fn append_later(
        &self,
        exec_key: u64,
        records: Vec<Record>,
        wake_at: Vec<(u64, String)>,
        callback: Option<NewCallback>,
        child: Option<NewChild>,
        done: Box<dyn FnOnce(Result<Option<String>>) + Send>,
    ) {
        match self.append_batch(exec_key, records, wake_at, callback, child) {
            Ok((batch, callback_id)) => {
                self.submit_later(batch, Box::new(move |answer| done(answer.map(|_| callback_id))))
            }
            Err(err) => done(Err(err)),
        }
    }

    fn append_batch(
        &self,
        exec_key: u64,
        mut records: Vec<Record>,
        wake_at: Vec<(u64, String)>,
        callback: Option<NewCallback>,
        child: Option<NewChild>,
    ) -> Result<(Vec<Mutation>, Option<String>)> {
        let now = self.now_ms();
        let mut batch = Vec::with_capacity(records.len() + wake_at.len() + 3);
        batch.extend(self.fence(exec_key));
        let mut callback_id = None;
        if let Some(callback) = callback {
            let id = new_callback_id()?;
            let entry = CallbackEntry {
                state: CallbackState::Pending,
                exec_key,
                deadline_ms: if callback.timeout_ms == 0 {
                    0
                } else {
                    now.saturating_add(callback.timeout_ms)
                },
                heartbeat_timeout_ms: callback.heartbeat_timeout_ms,
                last_heartbeat_ms: now,
                op_id: callback.op_id,
            };
            batch.push(Mutation::CreateCallback {
                callback_id: id.clone(),
                entry,
            });
            // The CallbackStarted record carries the id so replay finds it.
            for record in records
                .iter_mut()
                .filter(|r| r.op_type == OpType::Callback && r.kind == RecordKind::Started)
            {
                record.extra = Some(id.clone());
            }
            callback_id = Some(id);
        }
        for mut record in records {
            record.timestamp_ms = now;
            batch.push(Mutation::Append { exec_key, record });
        }
        batch.extend(wake_timers(exec_key, now, wake_at));
        if let Some(child) = child {
            let parent = ParentLink {
                exec_key,
                op_id: child.op_id,
            };
            batch.push(self.create_execution(
                &child.execution_id,
                &child.function,
                child.input,
                now,
                child.timeout_ms,
                Some(parent),
            )?);
        }
        Ok((batch, callback_id))
    }

    /// Loads what an invocation needs, and remembers the lease it runs
    /// under for the fence of its writes.
    pub fn load_invocation(&self, exec_key: u64) -> Result<InvocationData> {
        let data = self.backend.load_invocation(exec_key)?;
        if let Some(owner) = &self.owner {
            // Its last invocation stopped on a failed commit, which may have
            // been stored after all (a COMMIT without answer) with timers
            // this engine never armed: arm what the store holds (a timer
            // armed twice fires once; the second finds it gone).
            if self.finished.stalls.lock().by_exec.contains_key(&exec_key) {
                let (timers, _) = self.backend.timers_of(&HashSet::from([exec_key]))?;
                for timer in timers {
                    owner.timers.add(timer);
                }
            }
            let lease = data.lease.filter(|lease| lease.owner == owner.id);
            let mut invocations = owner.invocations.lock();
            match lease {
                Some(lease) => invocations.insert(exec_key, lease),
                None => invocations.remove(&exec_key),
            };
        }
        Ok(data)
    }

    /// The check that puts an invocation's writes behind the lease it was
    /// loaded under. An invocation loaded without this engine's lease gets
    /// epoch 0, which no grant has: its writes are refused.
    fn fence(&self, exec_key: u64) -> Option<Mutation> {
        let owner = self.owner.as_ref()?;
        let lease = owner.invocations.lock().get(&exec_key).copied().unwrap_or(Lease {
            owner: owner.id,
            epoch: 0,
        });
        Some(Mutation::Fence { exec_key, lease })
    }

    /// Ends an invocation. Returns whether the execution must run again now.
    pub fn end_invocation(
        &self,
        exec_key: u64,
        seen_wake: u64,
        final_state: Option<ExecState>,
        records: Vec<Record>,
        wake_at: Vec<(u64, String)>,
    ) -> Result<bool> {
        let batch = self.end_batch(exec_key, seen_wake, final_state, records, wake_at);
        Ok(reran(&self.submit(batch)?))
    }

    /// `end_invocation` without blocking: `done` gets whether to run again.
    pub fn end_invocation_later(
        &self,
        exec_key: u64,
        seen_wake: u64,
        final_state: Option<ExecState>,
        records: Vec<Record>,
        wake_at: Vec<(u64, String)>,
        done: Box<dyn FnOnce(Result<bool>) + Send>,
    ) {
        let batch = self.end_batch(exec_key, seen_wake, final_state, records, wake_at);
        self.submit_later(
            batch,
            Box::new(move |answer| done(answer.map(|outcomes| reran(&outcomes)))),
        );
    }

    fn end_batch(
        &self,
        exec_key: u64,
        seen_wake: u64,
        final_state: Option<ExecState>,
        mut records: Vec<Record>,
        wake_at: Vec<(u64, String)>,
    ) -> Vec<Mutation> {
        let now = self.now_ms();
        let mut batch: Vec<Mutation> = self.fence(exec_key).into_iter().collect();
        batch.extend(wake_timers(exec_key, now, wake_at));
        for record in &mut records {
            record.timestamp_ms = now;
        }
        batch.push(Mutation::EndInvocation {
            exec_key,
            seen_wake,
            final_state,
            records,
        });
        batch
    }

    /// Completes a callback from anywhere; wakes its execution.
    pub fn complete_callback(&self, callback_id: &str, success: bool, payload: Option<Vec<u8>>) -> Result<()> {
        let kind = if success {
            RecordKind::Succeeded
        } else {
            RecordKind::Failed
        };
        // The operation id is the callback's, filled in by the commit: no
        // read before it (one round trip less on a server).
        let mut record = Record::new(kind, OpType::Callback, SubType::Callback, "");
        record.timestamp_ms = self.now_ms();
        record.payload = payload;
        let state = if success {
            CallbackState::Succeeded
        } else {
            CallbackState::Failed
        };
        self.submit(vec![Mutation::CompleteCallback {
            callback_id: callback_id.to_string(),
            state,
            record,
        }])?;
        Ok(())
    }

    pub fn heartbeat(&self, callback_id: &str) -> Result<()> {
        let now_ms = self.now_ms();
        self.submit(vec![Mutation::Heartbeat {
            callback_id: callback_id.to_string(),
            now_ms,
        }])?;
        Ok(())
    }

    /// Cancels an active execution; its pending callbacks and timers lapse.
    pub fn cancel(&self, execution_id: &str, error_payload: Vec<u8>) -> Result<()> {
        let exec_key = self
            .backend
            .exec_key_of(execution_id)?
            .ok_or_else(|| Error::ExecutionNotFound(execution_id.into()))?;
        let mut record = Record::new(RecordKind::Cancelled, OpType::Execution, SubType::None, "");
        record.timestamp_ms = self.now_ms();
        record.payload = Some(error_payload);
        self.submit(vec![Mutation::Cancel { exec_key, record }])?;
        Ok(())
    }

    /// Runs invocations on a work-stealing pool of `workers` threads: every
    /// execution that becomes runnable is handed to `invoke` on one of them.
    pub fn start_executor(&self, workers: usize, run_worker: WorkerWrapper, invoke: Invoker) -> Result<()> {
        let owner = self.owner()?;
        let mut slot = owner.executor.lock();
        if slot.is_some() {
            return Err(Error::InvalidInput("the executor is already running".into()));
        }
        let executor = Arc::new(Executor::new(workers, run_worker)?);
        let scheduler = Arc::downgrade(&owner.scheduler);
        let pool = Arc::downgrade(&executor);
        owner.scheduler.set_dispatch(Arc::new(move || {
            let (scheduler, invoke) = (scheduler.clone(), invoke.clone());
            if let Some(pool) = pool.upgrade() {
                pool.spawn(Box::new(move || {
                    let exec_key = scheduler.upgrade().and_then(|s| s.next(Duration::ZERO));
                    if let Some(exec_key) = exec_key {
                        invoke(exec_key);
                    }
                }));
            }
        }));
        *slot = Some(executor);
        Ok(())
    }

    /// The executor, once started.
    pub fn executor(&self) -> Option<Arc<Executor>> {
        self.owner.as_ref()?.executor.lock().clone()
    }

    pub fn next_ready(&self, timeout: Duration) -> Result<Option<u64>> {
        Ok(self.owner()?.scheduler.next(timeout))
    }

    pub fn finish(&self, exec_key: u64, rerun: bool) -> Result<()> {
        let owner = self.owner()?;
        owner.invocations.lock().remove(&exec_key);
        self.finished.stalls.lock().by_exec.remove(&exec_key);
        owner.scheduler.finish(exec_key, rerun);
        // A skipping clock jumps once the engine is idle: tell the timer
        // thread now rather than at its next look.
        if self.clock.skips() && owner.scheduler.is_idle() {
            owner.timers.poke();
        }
        Ok(())
    }

    /// Ends an invocation that stopped without ending: its commit met a full
    /// or failing disk (`failure`: whether the disk is full, and the error),
    /// or it was interrupted (`None`). Nothing is written; the execution
    /// stays where its journal ends and runs again after a delay (50 ms,
    /// doubling with each such stop in a row up to 5 s). A storage failure
    /// is reported to whoever waits for the execution's result meanwhile.
    /// Returns the delay.
    pub fn retry_later(&self, exec_key: u64, failure: Option<(bool, String)>) -> Result<Duration> {
        let owner = self.owner()?;
        owner.invocations.lock().remove(&exec_key);
        if let Some((full, detail)) = failure {
            let mut stalls = self.finished.stalls.lock();
            stalls.seq += 1;
            let seq = stalls.seq;
            stalls.by_exec.insert(exec_key, (seq, full, detail));
            drop(stalls);
            self.finished.bump();
        }
        Ok(owner.scheduler.retry_later(exec_key))
    }

    /// Where storage failures stand: a value to give `stalled_since`.
    pub fn stall_seq(&self) -> u64 {
        self.finished.stalls.lock().seq
    }

    /// The storage failure that stopped the execution's last invocation,
    /// if it stopped so after `seq` (from `stall_seq`) and has not ended
    /// an invocation since.
    pub fn stalled_since(&self, exec_key: u64, seq: u64) -> Option<Error> {
        let stalls = self.finished.stalls.lock();
        match stalls.by_exec.get(&exec_key) {
            Some((at, full, detail)) if *at > seq => Some(Error::StorageFailed {
                full: *full,
                detail: detail.clone(),
            }),
            _ => None,
        }
    }

    /// Leaves an execution alone: this process cannot run its function.
    pub fn park(&self, exec_key: u64) -> Result<()> {
        self.owner()?.scheduler.park(exec_key);
        Ok(())
    }

    pub fn is_running(&self, exec_key: u64) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|owner| owner.scheduler.is_running(exec_key))
    }

    pub fn pending_timers(&self) -> usize {
        self.owner.as_ref().map_or(0, |owner| owner.timers.len())
    }

    /// Re-checks timer deadlines now; for clocks that jump.
    pub fn poke_timers(&self) {
        if let Some(owner) = &self.owner {
            owner.timers.poke();
        }
    }

    /// Blocks until the execution is finished or `timeout` passes. An
    /// invocation of it that stops on a storage failure meanwhile ends the
    /// wait with that failure (the execution runs again later).
    pub fn wait_finished(&self, exec_key: u64, timeout: Option<Duration>) -> Result<Option<ExecSummary>> {
        // A timeout beyond what an Instant can hold is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let (count, signal) = (&self.finished.count, &self.finished.signal);
        let since = self.stall_seq();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            let seen = *count.lock();
            let summary = self
                .backend
                .execution(exec_key)?
                .ok_or_else(|| Error::corrupt_store("execution vanished"))?;
            if summary.meta.state != ExecState::Active {
                return Ok(Some(summary));
            }
            if let Some(failure) = self.stalled_since(exec_key, since) {
                return Err(failure);
            }
            // Executions finished by other processes are seen by polling.
            let mut slice = Duration::from_millis(50);
            if let Some(deadline) = deadline {
                match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => slice = slice.min(left),
                    _ => return Ok(None),
                }
            }
            let mut guard = count.lock();
            if *guard == seen {
                signal.wait_for(&mut guard, slice);
            }
        }
    }

    /// Stops the owner's threads (waiting up to `timeout` for running
    /// invocations), commits what is queued and syncs the store.
    pub fn close(&self, timeout: Duration) -> Result<bool> {
        let mut drained = true;
        if let Some(owner) = &self.owner {
            drained = owner.scheduler.close(timeout);
            owner.scheduler.clear_dispatch();
            let executor = owner.executor.lock().take();
            if let Some(executor) = executor {
                // Only no-op dispatch tasks can be left once the scheduler closed.
                executor.shutdown(Duration::from_millis(200));
            }
            owner.stop.store(true, Ordering::SeqCst);
            self.backend.interrupt_news();
            owner.timers.close();
            let threads = std::mem::take(&mut *owner.threads.lock());
            for thread in threads {
                let _ = thread.join();
            }
            if owner.lock.lock().is_some() {
                // Leave this engine's active executions to the others now,
                // rather than after they notice that it is gone.
                let _ = owner.leases.release();
            }
        }
        // Executions that finished while running invocations drained were
        // seen; whoever still waits for one now hears that the engine closed.
        self.closed.store(true, Ordering::SeqCst);
        self.finished.bump();
        self.writer.close();
        self.backend.sync()?;
        if let Some(owner) = &self.owner {
            owner.lock.lock().take();
        }
        Ok(drained)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.close(Duration::from_secs(0));
    }
}

/// Claims at most this many unowned executions per look, so that several
/// engines share the executions of one that died.
const CLAIM_CHUNK: usize = 4096;

/// How often an owner looks at the other owners for crashed or hung ones:
/// a crash is taken over within about this long.
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

/// This engine's part in sharing a store: the lease it renews, reaping dead
/// owners and claiming the executions nobody runs.
struct Leases {
    id: u64,
    backend: Arc<dyn Backend>,
    writer: Arc<Writer>,
    scheduler: Arc<Scheduler>,
    timers: Arc<Timers>,
    lease_timeout: Duration,
    /// Each other owner's last renewal seen, and since when it stands still.
    watched: Mutex<HashMap<u64, (u64, Instant)>>,
    /// When this engine last looked at the others.
    last_look: Mutex<Option<Instant>>,
}

impl Leases {
    /// Reaps every other owner that crashed (its hold is gone) or whose
    /// renewal has stood still for the lease timeout, as this engine's own
    /// clock measures it (so hosts' clocks never meet); their executions
    /// become claimable.
    fn reap_dead(&self) -> Result<()> {
        let others = self.backend.other_owners(self.id)?;
        let now = Instant::now();
        let dead: Vec<(u64, bool, Option<u64>)> = {
            let mut watched = self.watched.lock();
            // A judge that did not look for a while (its own process was
            // stopped, or starved) saw nothing stand still: it watches afresh.
            let last_look = self.last_look.lock().replace(now);
            let stalled_after = (self.lease_timeout / 2).max(LIVENESS_EVERY * 2);
            if last_look.is_some_and(|at| now.duration_since(at) > stalled_after) {
                watched.clear();
            }
            watched.retain(|owner, _| others.iter().any(|other| other.owner == *owner));
            others
                .iter()
                .filter_map(|other| {
                    if other.crashed {
                        return Some((other.owner, true, None));
                    }
                    let seen = watched.entry(other.owner).or_insert((other.renewed_ms, now));
                    if seen.0 != other.renewed_ms {
                        *seen = (other.renewed_ms, now);
                    }
                    let hung = now.duration_since(seen.1) >= self.lease_timeout;
                    hung.then_some((other.owner, false, Some(other.renewed_ms)))
                })
                .collect()
        };
        let reaped = !dead.is_empty();
        for (owner, crashed, renewed_ms) in dead {
            self.writer.submit(vec![Mutation::Reap { owner, renewed_ms }])?;
            if crashed {
                self.backend.forget_owner(owner);
            }
        }
        // What the dead left is claimed now, not at the next poll.
        if reaped {
            self.claim(usize::MAX)?;
        }
        Ok(())
    }

    /// Claims up to `chunks` chunks of unowned executions (stopping when
    /// none are left), then arms their timers in one pass over the timers
    /// database and queues those waiting to run.
    fn claim(&self, chunks: usize) -> Result<()> {
        let mut claimed = Vec::new();
        for _ in 0..chunks {
            let outcomes = self.writer.submit(vec![Mutation::Claim {
                owner: self.id,
                max: CLAIM_CHUNK,
            }])?;
            let Some(Outcome::Claimed(chunk)) = outcomes.into_iter().next() else {
                break;
            };
            let exhausted = chunk.len() < CLAIM_CHUNK;
            claimed.extend(chunk);
            if exhausted {
                break;
            }
        }
        if claimed.is_empty() {
            return Ok(());
        }
        let keys: HashSet<u64> = claimed.iter().map(|(exec_key, _)| *exec_key).collect();
        let (timers, damaged) = self.backend.timers_of(&keys)?;
        for timer in timers {
            self.timers.add(timer);
        }
        for (exec_key, pending) in claimed {
            if pending {
                self.scheduler.schedule(exec_key);
            }
        }
        // An execution with a damaged timer runs now rather than never.
        for exec_key in damaged {
            self.scheduler.schedule(exec_key);
        }
        Ok(())
    }

    /// Renews this engine's lease. If others reaped it meanwhile (it looked
    /// hung), it registers again: its old leases are gone, and every write
    /// under them is refused, but it can claim work afresh.
    fn renew(&self) -> Result<()> {
        let now_ms = system_ms();
        match self
            .writer
            .submit(vec![Mutation::RenewOwner { owner: self.id, now_ms }])
        {
            Err(Error::LeaseLost { .. }) => {
                let entry = OwnerEntry {
                    pid: std::process::id(),
                    started_ms: now_ms,
                    renewed_ms: now_ms,
                };
                self.writer
                    .submit(vec![Mutation::RegisterOwner { owner: self.id, entry }])?;
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Gives up this engine's lease and leaves its executions to others.
    fn release(&self) -> Result<()> {
        self.writer.submit(vec![Mutation::Reap {
            owner: self.id,
            renewed_ms: None,
        }])?;
        Ok(())
    }
}

/// Watches the store's wake counter; when another process woke one of this
/// engine's executions, queues the executions woken since the last look (the
/// scheduler ignores those already queued, and runs a running one again when
/// it finishes). Also renews the lease, reaps dead owners and claims orphans.
struct Poller {
    leases: Arc<Leases>,
    stop: Arc<AtomicBool>,
}

impl Poller {
    fn run(&self, mut seen: u64, interval: Duration) {
        let leases = &self.leases;
        // Renewals keep a schedule of their own, four per lease timeout,
        // whatever the poll interval: others judge this engine by them.
        let renew_every = (leases.lease_timeout / 4).max(Duration::from_millis(5));
        let mut next_renewal = Instant::now() + renew_every;
        let mut next_poll = Instant::now() + interval;
        let mut next_liveness = Instant::now() + LIVENESS_EVERY;
        while !self.stop.load(Ordering::SeqCst) {
            // Between polls, news pushed by other processes (a store that
            // has a way to push it) is acted on as soon as it comes.
            let wake_at = next_poll.min(next_liveness).min(next_renewal);
            let news = leases
                .backend
                .wait_for_news(wake_at.saturating_duration_since(Instant::now()));
            for exec_key in news.woken {
                leases.scheduler.schedule(exec_key);
            }
            if news.orphans {
                let _ = leases.claim(1);
            }
            // Executions whose invocation stopped (a full disk, an interrupt)
            // run again once their delay passed (looked at least every
            // LIVENESS_EVERY, however long the poll interval).
            leases.scheduler.release_due();
            let now = Instant::now();
            // An error here is transient (a commit refused while closing, a
            // full disk, a server restarting): tried again soon.
            if now >= next_renewal {
                next_renewal = match leases.renew() {
                    Ok(()) => now + renew_every,
                    Err(_) => now + LIVENESS_EVERY.min(renew_every),
                };
            }
            if now >= next_liveness {
                next_liveness = now + LIVENESS_EVERY;
                let _ = leases.reap_dead();
            }
            if now < next_poll && !news.poll_now {
                continue;
            }
            next_poll = now + interval;
            let Ok((current, orphans)) = leases.backend.poll_state() else {
                continue;
            };
            if orphans {
                let _ = leases.claim(1);
            }
            if current == seen {
                continue;
            }
            if let Ok((now_seen, woken)) = leases.backend.woken_since(seen, leases.id) {
                seen = now_seen;
                let scan = leases.backend.wake_scan();
                for exec_key in woken {
                    match scan {
                        WakeScan::Since => leases.scheduler.schedule(exec_key),
                        // The whole set comes back at every poll: one that
                        // runs, waits or is queued already is left alone (a
                        // wake-up during its run reruns it at its end).
                        WakeScan::Set => leases.scheduler.schedule_idle(exec_key),
                    }
                }
            }
        }
    }
}

/// Whether an ended invocation must run again (a wake-up came meanwhile).
fn reran(outcomes: &[Outcome]) -> bool {
    matches!(outcomes.last(), Some(Outcome::Ended { rerun: true, .. }))
}

/// What a committed batch asks of this engine: timers to arm in memory, and
/// whether executions ended (so `wait_finished` looks again).
struct AfterCommit {
    new_timers: Vec<Timer>,
    finishes: bool,
}

/// The parts of an engine that act on commits; cloned into `submit_later`.
struct Settler {
    owner: Option<(u64, Arc<Timers>, Arc<Scheduler>)>,
    finished: Arc<Finished>,
}

impl AfterCommit {
    fn of(batch: &[Mutation]) -> AfterCommit {
        let mut new_timers = Vec::new();
        let mut finishes = false;
        for mutation in batch {
            match mutation {
                Mutation::AddTimer(timer) => new_timers.push(timer.clone()),
                Mutation::CreateCallback { callback_id, entry } => {
                    if let Some((due_ms, kind)) = entry.next_deadline() {
                        new_timers.push(Timer {
                            due_ms,
                            exec_key: entry.exec_key,
                            kind,
                            subject: callback_id.clone(),
                        });
                    }
                }
                Mutation::EndInvocation {
                    final_state: Some(_), ..
                }
                | Mutation::Cancel { .. } => finishes = true,
                _ => {}
            }
        }
        AfterCommit { new_timers, finishes }
    }

    fn settle(self, settler: &Settler, outcomes: &[Outcome]) {
        if let Some((owner, timers, scheduler)) = &settler.owner {
            for timer in self.new_timers {
                timers.add(timer);
            }
            for outcome in outcomes {
                match outcome {
                    Outcome::Woke(Some(woken))
                    | Outcome::Ended {
                        parent: Some(woken), ..
                    } if woken.owner == Some(*owner) => scheduler.schedule(woken.exec_key),
                    Outcome::Created {
                        exec_key,
                        created: true,
                        timer,
                    } => {
                        if let Some(timer) = timer {
                            timers.add(timer.clone());
                        }
                        scheduler.schedule(*exec_key);
                    }
                    _ => {}
                }
            }
        }
        if self.finishes {
            settler.finished.bump();
        }
    }
}

/// Wake timers `delay_ms` after the commit stamp `now`.
fn wake_timers(exec_key: u64, now: u64, wake_at: Vec<(u64, String)>) -> impl Iterator<Item = Mutation> {
    wake_at.into_iter().map(move |(delay_ms, op_id)| {
        Mutation::AddTimer(Timer {
            due_ms: now.saturating_add(delay_ms),
            exec_key,
            kind: TimerKind::Wake,
            subject: op_id,
        })
    })
}

/// A random, non-zero owner id.
fn new_owner_id() -> Result<u64> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|err| Error::Io(std::io::Error::other(err.to_string())))?;
        let id = u64::from_be_bytes(bytes);
        if id != 0 {
            return Ok(id);
        }
    }
}

/// 128 random bits from the OS, hex-encoded: unguessable and URL-safe.
fn new_callback_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| Error::Io(std::io::Error::other(err.to_string())))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
