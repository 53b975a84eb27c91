//! `perdure._core.Core`: one opened store. Every call that may block (a
//! commit, a read, waiting for work) releases the GIL.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use perdure_core::backend::lmdb::DEFAULT_MAP_SIZE;
use perdure_core::backend::ExecSummary;
use perdure_core::clock::{Clock, SkippingClock as CoreSkippingClock};
use perdure_core::executor::{Executor, WorkerWrapper};
use perdure_core::keys::ExecState;
use perdure_core::runtime::{Invoker, NewChild};
use perdure_core::{Durability, NewCallback, Runtime, RuntimeOptions, StoreOptions};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::IntoPyObjectExt;

use crate::errors::{to_py, IntoPyResult};
use crate::invocation::Invocation;
use crate::records::{invalid, record_to_py, records_from, RecordIn};

/// What one function of a batch gave: (returned normally, value or exception).
type Outcome = (bool, Py<PyAny>);

#[pyclass(frozen, weakref, module = "perdure._core")]
pub struct Core {
    runtime: Arc<Runtime>,
}

/// A store dropped without `close()` (the engine was collected, or the
/// interpreter exits) is closed here, with the GIL released: its threads
/// take the GIL to leave their Python thread state, so joining them while
/// holding it would hang the process.
impl Drop for Core {
    fn drop(&mut self) {
        let runtime = &self.runtime;
        // Nobody is left to hear of a failure here; every write acknowledged
        // before is already as durable as the engine's durability promised.
        let _ = Python::attach(|py| py.detach(|| runtime.close(Duration::ZERO)));
    }
}

/// The clock behind `perdure.testing.TimeSkippingClock`: shared by the
/// engines given it, moved by the test or skipped ahead when they are idle.
#[pyclass(frozen, module = "perdure._core")]
pub struct SkippingClock {
    clock: Arc<CoreSkippingClock>,
}

#[pymethods]
impl SkippingClock {
    #[new]
    #[pyo3(signature = (start_ms, auto_skip = true))]
    fn new(start_ms: u64, auto_skip: bool) -> Self {
        SkippingClock {
            clock: Arc::new(CoreSkippingClock::new(start_ms, auto_skip)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Moves time forward; returns the new now.
    fn advance(&self, ms: u64) -> u64 {
        self.clock.advance(ms)
    }

    #[getter]
    fn auto_skip(&self) -> bool {
        self.clock.auto_skip()
    }

    #[setter]
    fn set_auto_skip(&self, on: bool) {
        self.clock.set_auto_skip(on);
    }
}

/// A child execution as Python passes it: (execution_id, function, input, op_id, timeout_ms).
type ChildIn = (String, String, Vec<u8>, String, Option<u64>);

/// (exec_key, execution_id, function, state, pending, created_ms, updated_ms)
fn summary_to_py<'py>(py: Python<'py>, summary: &ExecSummary) -> PyResult<Bound<'py, PyTuple>> {
    (
        summary.exec_key,
        summary.meta.execution_id.as_str(),
        summary.meta.function.as_str(),
        summary.meta.state.name(),
        summary.pending,
        summary.meta.created_ms,
        summary.meta.updated_ms,
    )
        .into_pyobject(py)
}

fn final_state(py: Python<'_>, name: Option<&str>) -> PyResult<Option<ExecState>> {
    match name {
        None => Ok(None),
        Some("SUCCEEDED") => Ok(Some(ExecState::Succeeded)),
        Some("FAILED") => Ok(Some(ExecState::Failed)),
        Some("TIMED_OUT") => Ok(Some(ExecState::TimedOut)),
        Some(other) => Err(invalid(py, format!("{other:?} is not a final state"))),
    }
}

fn seconds(py: Python<'_>, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value.max(0.0)).map_err(|_| invalid(py, format!("bad timeout {value}")))
}

fn new_callback((op_id, timeout_ms, heartbeat_timeout_ms): (String, u64, u64)) -> NewCallback {
    NewCallback {
        op_id,
        timeout_ms,
        heartbeat_timeout_ms,
    }
}

fn new_child((execution_id, function, input, op_id, timeout_ms): ChildIn) -> NewChild {
    NewChild {
        execution_id,
        function,
        input,
        op_id,
        timeout_ms,
    }
}

/// Hands a deferred commit's answer to Python: `on_done(True, value)` or
/// `on_done(False, exception)`. Errors inside `on_done` are shown, not lost.
fn answer_to<T>(on_done: Py<PyAny>, answer: perdure_core::Result<T>)
where
    T: for<'py> IntoPyObject<'py>,
{
    Python::attach(|py| {
        let called = match answer {
            Ok(value) => value.into_py_any(py).and_then(|value| on_done.call1(py, (true, value))),
            Err(err) => on_done.call1(py, (false, to_py(err).into_value(py))),
        };
        if let Err(err) = called {
            err.write_unraisable(py, None);
        }
    });
}

/// Wraps each executor worker's life in one Python thread state; the
/// worker holds the GIL only while it runs Python.
fn python_worker() -> WorkerWrapper {
    Arc::new(|body: &mut (dyn FnMut() + Send)| Python::attach(|py| py.detach(&mut *body)))
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (
        path, *, durability = "full", owner = true, map_size = DEFAULT_MAP_SIZE, poll_interval = 0.005,
        lease_timeout = 10.0, clock = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: String,
        durability: &str,
        owner: bool,
        map_size: usize,
        poll_interval: f64,
        lease_timeout: f64,
        clock: Option<PyRef<'_, SkippingClock>>,
    ) -> PyResult<Self> {
        let durability = Durability::parse(durability).py_err()?;
        let mut options = RuntimeOptions {
            store: StoreOptions { durability, map_size },
            owner,
            poll_interval: seconds(py, poll_interval)?,
            lease_timeout: seconds(py, lease_timeout)?,
            ..RuntimeOptions::default()
        };
        if let Some(clock) = clock {
            options.clock = clock.clock.clone();
        }
        let runtime = py.detach(|| Runtime::open_location(&path, options)).py_err()?;
        // Answers to an event loop's commits are delivered under one GIL hold
        // per group commit, not one per answer.
        runtime.set_delivery(Arc::new(|deliver: &mut dyn FnMut()| Python::attach(|_py| deliver())));
        Ok(Core {
            runtime: Arc::new(runtime),
        })
    }

    #[getter]
    fn path(&self) -> String {
        self.runtime.backend.describe()
    }

    #[getter]
    fn owner(&self) -> bool {
        self.runtime.is_owner()
    }

    /// This engine's id among the engines sharing the store (None: not an owner).
    #[getter]
    fn owner_id(&self) -> Option<u64> {
        self.runtime.owner_id()
    }

    /// Reads every stored entry and checks it: (entries read, the damage
    /// found as messages). A damaged file raises CorruptStoreError.
    fn check(&self, py: Python<'_>) -> PyResult<(usize, Vec<String>)> {
        let (entries, damaged) = py.detach(|| self.runtime.backend.check()).py_err()?;
        Ok((entries, damaged.iter().map(ToString::to_string).collect()))
    }

    /// The owner id of the engine that runs an execution, if any.
    fn lease(&self, py: Python<'_>, exec_key: u64) -> PyResult<Option<u64>> {
        let lease = py.detach(|| self.runtime.backend.lease(exec_key)).py_err()?;
        Ok(lease.map(|lease| lease.owner))
    }

    #[getter]
    fn pending_timers(&self) -> usize {
        self.runtime.pending_timers()
    }

    fn now_ms(&self) -> u64 {
        self.runtime.now_ms()
    }

    /// Re-checks timer deadlines now (a test clock moved).
    fn poke_timers(&self) {
        self.runtime.poke_timers();
    }

    #[pyo3(signature = (execution_id, function, input, timeout_ms = None))]
    fn start(
        &self,
        py: Python<'_>,
        execution_id: String,
        function: String,
        input: Vec<u8>,
        timeout_ms: Option<u64>,
    ) -> PyResult<(u64, bool)> {
        py.detach(|| self.runtime.start(&execution_id, &function, input, timeout_ms))
            .py_err()
    }

    /// Loads an execution's journal and builds its replay index.
    fn load(&self, py: Python<'_>, exec_key: u64) -> PyResult<Invocation> {
        let data = py.detach(|| self.runtime.load_invocation(exec_key)).py_err()?;
        Ok(py.detach(|| Invocation::new(data)))
    }

    /// Appends records in one commit; `callback` registers a callback (its
    /// new id is returned), `child` starts a child execution linked to the
    /// appending operation.
    #[pyo3(signature = (exec_key, records, wake_at = Vec::new(), callback = None, child = None))]
    fn append(
        &self,
        py: Python<'_>,
        exec_key: u64,
        records: Vec<RecordIn>,
        wake_at: Vec<(u64, String)>,
        callback: Option<(String, u64, u64)>,
        child: Option<ChildIn>,
    ) -> PyResult<Option<String>> {
        let records = records_from(py, records)?;
        let (callback, child) = (callback.map(new_callback), child.map(new_child));
        py.detach(|| self.runtime.append(exec_key, records, wake_at, callback, child))
            .py_err()
    }

    /// `append` for an event loop: returns at once; `on_done(ok, value)` is
    /// called from the commit thread with the new callback id, or the error.
    #[pyo3(signature = (exec_key, records, wake_at, callback, child, on_done))]
    #[allow(clippy::too_many_arguments)]
    fn append_async(
        &self,
        py: Python<'_>,
        exec_key: u64,
        records: Vec<RecordIn>,
        wake_at: Vec<(u64, String)>,
        callback: Option<(String, u64, u64)>,
        child: Option<ChildIn>,
        on_done: Py<PyAny>,
    ) -> PyResult<()> {
        let records = records_from(py, records)?;
        let (callback, child) = (callback.map(new_callback), child.map(new_child));
        let done = Box::new(move |answer: perdure_core::Result<Option<String>>| answer_to(on_done, answer));
        py.detach(|| {
            self.runtime
                .append_later(exec_key, records, wake_at, callback, child, done)
        });
        Ok(())
    }

    /// `end_invocation` for an event loop: `on_done(ok, rerun_or_error)`.
    #[pyo3(signature = (exec_key, seen_wake, final_state, records, wake_at, on_done))]
    #[allow(clippy::too_many_arguments)]
    fn end_invocation_async(
        &self,
        py: Python<'_>,
        exec_key: u64,
        seen_wake: u64,
        final_state: Option<&str>,
        records: Vec<RecordIn>,
        wake_at: Vec<(u64, String)>,
        on_done: Py<PyAny>,
    ) -> PyResult<()> {
        let state = self::final_state(py, final_state)?;
        let records = records_from(py, records)?;
        let done = Box::new(move |answer: perdure_core::Result<bool>| answer_to(on_done, answer));
        py.detach(|| {
            self.runtime
                .end_invocation_later(exec_key, seen_wake, state, records, wake_at, done)
        });
        Ok(())
    }

    #[pyo3(signature = (exec_key, seen_wake, final_state, records, wake_at = Vec::new()))]
    fn end_invocation(
        &self,
        py: Python<'_>,
        exec_key: u64,
        seen_wake: u64,
        final_state: Option<&str>,
        records: Vec<RecordIn>,
        wake_at: Vec<(u64, String)>,
    ) -> PyResult<bool> {
        let state = self::final_state(py, final_state)?;
        let records = records_from(py, records)?;
        py.detach(|| {
            self.runtime
                .end_invocation(exec_key, seen_wake, state, records, wake_at)
        })
        .py_err()
    }

    #[pyo3(signature = (callback_id, success, payload = None))]
    fn complete_callback(
        &self,
        py: Python<'_>,
        callback_id: String,
        success: bool,
        payload: Option<Vec<u8>>,
    ) -> PyResult<()> {
        py.detach(|| self.runtime.complete_callback(&callback_id, success, payload))
            .py_err()
    }

    fn heartbeat(&self, py: Python<'_>, callback_id: String) -> PyResult<()> {
        py.detach(|| self.runtime.heartbeat(&callback_id)).py_err()
    }

    fn cancel(&self, py: Python<'_>, execution_id: String, error_payload: Vec<u8>) -> PyResult<()> {
        py.detach(|| self.runtime.cancel(&execution_id, error_payload)).py_err()
    }

    /// Runs invocations on the Rust work-stealing pool: `invoke(exec_key)` is
    /// called on one of `workers` threads for every runnable execution. Each
    /// worker keeps one Python thread state for its life and holds the GIL
    /// only while Python runs.
    fn start_executor(&self, workers: usize, invoke: Py<PyAny>) -> PyResult<()> {
        let run_worker = python_worker();
        let invoker: Invoker = Arc::new(move |exec_key: u64| {
            Python::attach(|py| {
                if let Err(err) = invoke.call1(py, (exec_key,)) {
                    // `invoke` handles its own errors; anything left is a bug to show, not to hide.
                    err.write_unraisable(py, None);
                }
            })
        });
        self.runtime.start_executor(workers, run_worker, invoker).py_err()
    }

    /// Calls every function in `funcs` (no arguments) on the executor, at most
    /// `max_concurrency` at a time, and returns `(ok, value)` for each in
    /// order: the return value, or the exception it raised. The calling worker
    /// helps run them meanwhile, so nested batches never run out of threads.
    /// Without an executor (a store opened without owning it, as replay
    /// verification does) a pool of `max_concurrency` threads serves this call.
    fn run_batch(&self, py: Python<'_>, funcs: Vec<Py<PyAny>>, max_concurrency: usize) -> PyResult<Vec<Outcome>> {
        let count = funcs.len();
        let call = |py: Python<'_>, func: &Py<PyAny>| match func.call0(py) {
            Ok(value) => (true, value),
            Err(err) => (false, err.into_value(py).into_any()),
        };
        let executor = match self.runtime.executor() {
            Some(executor) => executor,
            None if count <= 1 || max_concurrency <= 1 => {
                return Ok(funcs.iter().map(|func| call(py, func)).collect());
            }
            None => {
                let threads = max_concurrency.min(count);
                Arc::new(py.detach(|| Executor::new(threads, python_worker())).py_err()?)
            }
        };
        let funcs = Arc::new(funcs);
        let results: Arc<Mutex<Vec<Option<Outcome>>>> = Arc::new(Mutex::new((0..count).map(|_| None).collect()));
        let next = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        // A few runner tasks each take the next function until none is left:
        // that is what bounds the concurrency.
        for _ in 0..max_concurrency.clamp(1, count.max(1)) {
            let (funcs, results, next, finished) = (funcs.clone(), results.clone(), next.clone(), finished.clone());
            executor.spawn(Box::new(move || loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(func) = funcs.get(index) else { break };
                let outcome = Python::attach(|py| call(py, func));
                results.lock()[index] = Some(outcome);
                finished.fetch_add(1, Ordering::SeqCst);
            }));
        }
        py.detach(|| {
            executor.help_until(&|| finished.load(Ordering::SeqCst) == count);
            // A pool made for this call stops here, without the GIL: its
            // workers take the GIL once more to leave their thread state.
            drop(executor);
        });
        let mut results = results.lock();
        Ok(results
            .iter_mut()
            .map(|slot| slot.take().unwrap_or_else(|| (false, py.None())))
            .collect())
    }

    fn finish(&self, exec_key: u64, rerun: bool) -> PyResult<()> {
        self.runtime.finish(exec_key, rerun).py_err()
    }

    /// Ends an invocation that stopped without ending (a storage failure:
    /// `full` says whether the disk is full; an interrupt: `full` is None):
    /// the execution runs again after a growing delay, returned in seconds.
    #[pyo3(signature = (exec_key, full = None, detail = String::new()))]
    fn retry_later(&self, exec_key: u64, full: Option<bool>, detail: String) -> PyResult<f64> {
        let failure = full.map(|full| (full, detail));
        let delay = self.runtime.retry_later(exec_key, failure).py_err()?;
        Ok(delay.as_secs_f64())
    }

    /// A value for `check_stalled`: where storage failures stand now.
    fn stall_seq(&self) -> u64 {
        self.runtime.stall_seq()
    }

    /// Raises the storage failure (StoreFullError or StoreError) that
    /// stopped the execution's last invocation after `seq`, if any.
    fn check_stalled(&self, exec_key: u64, seq: u64) -> PyResult<()> {
        match self.runtime.stalled_since(exec_key, seq) {
            Some(failure) => Err(failure).py_err(),
            None => Ok(()),
        }
    }

    fn park(&self, exec_key: u64) -> PyResult<()> {
        self.runtime.park(exec_key).py_err()
    }

    fn is_running(&self, exec_key: u64) -> bool {
        self.runtime.is_running(exec_key)
    }

    fn execution<'py>(&self, py: Python<'py>, execution_id: String) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let summary = py
            .detach(|| self.runtime.backend.execution_by_id(&execution_id))
            .py_err()?;
        summary.map(|s| summary_to_py(py, &s)).transpose()
    }

    fn execution_by_key<'py>(&self, py: Python<'py>, exec_key: u64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let summary = py.detach(|| self.runtime.backend.execution(exec_key)).py_err()?;
        summary.map(|s| summary_to_py(py, &s)).transpose()
    }

    #[pyo3(signature = (state = None, function = None, limit = 0))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        state: Option<String>,
        function: Option<String>,
        limit: usize,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let state = match state.as_deref() {
            None => None,
            Some("ACTIVE") => Some(ExecState::Active),
            Some("SUCCEEDED") => Some(ExecState::Succeeded),
            Some("FAILED") => Some(ExecState::Failed),
            Some("CANCELLED") => Some(ExecState::Cancelled),
            Some("TIMED_OUT") => Some(ExecState::TimedOut),
            Some(other) => return Err(invalid(py, format!("unknown execution state {other:?}"))),
        };
        let (rows, damaged) = py
            .detach(|| self.runtime.backend.list(state, function.as_deref(), limit))
            .py_err()?;
        if !damaged.is_empty() {
            // Listed apart so one damaged execution does not hide the others;
            // each is named where operators look.
            let logger = py.import("logging")?.call_method1("getLogger", ("perdure",))?;
            for err in damaged {
                logger.call_method1("warning", ("perdure: not listed: %s", err.to_string()))?;
            }
        }
        rows.iter().map(|row| summary_to_py(py, row)).collect()
    }

    fn journal<'py>(&self, py: Python<'py>, exec_key: u64) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let records = py.detach(|| self.runtime.backend.journal(exec_key)).py_err()?;
        records.iter().map(|record| record_to_py(py, record)).collect()
    }

    fn last_record<'py>(&self, py: Python<'py>, exec_key: u64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let record = py.detach(|| self.runtime.backend.last_record(exec_key)).py_err()?;
        record.map(|r| record_to_py(py, &r)).transpose()
    }

    /// Blocks (GIL released) until the execution finishes; `None` on timeout.
    #[pyo3(signature = (exec_key, timeout = None))]
    fn wait_finished<'py>(
        &self,
        py: Python<'py>,
        exec_key: u64,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let timeout = timeout.map(|t| seconds(py, t)).transpose()?;
        let summary = py.detach(|| self.runtime.wait_finished(exec_key, timeout)).py_err()?;
        summary.map(|s| summary_to_py(py, &s)).transpose()
    }

    /// Stops the engine's threads, waiting up to `timeout` seconds for running
    /// invocations; returns whether they all ended.
    #[pyo3(signature = (timeout = 10.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = seconds(py, timeout)?;
        py.detach(|| self.runtime.close(timeout)).py_err()
    }
}
