//! `perdure._core.Invocation`: one execution's journal, loaded and indexed,
//! answering the Python side's "what happened to operation X" in O(1).

use jiter::PythonParse;
use perdure_core::backend::InvocationData;
use perdure_core::{OpType, RecordKind, ReplayIndex, SubType};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple};

use crate::records::sub_type_to_py;

/// The first byte of a payload that uses perdure's extended JSON types.
const EXTENDED_MARKER: u8 = b'~';

/// Returned by `replay_step` when there is nothing to replay; exported as
/// `perdure._core.MISSING` (None is a valid step result).
pub static MISSING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Returned by `replay_step` when the journal has no such operation at all:
/// new work, so the caller need not look it up again. `perdure._core.NEW`.
pub static NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn sentinel<'py>(py: Python<'py>, cell: &PyOnceLock<Py<PyAny>>) -> Bound<'py, PyAny> {
    cell.get(py)
        .map_or_else(|| py.None().into_bound(py), |m| m.bind(py).clone())
}

#[pyclass(frozen, module = "perdure._core")]
pub struct Invocation {
    #[pyo3(get)]
    exec_key: u64,
    #[pyo3(get)]
    execution_id: String,
    #[pyo3(get)]
    function: String,
    /// The wake value seen when loading; passed back to `end_invocation`.
    #[pyo3(get)]
    wake: u64,
    #[pyo3(get)]
    created_ms: u64,
    index: ReplayIndex,
}

impl Invocation {
    pub fn new(data: InvocationData) -> Self {
        Invocation {
            exec_key: data.exec_key,
            execution_id: data.meta.execution_id,
            function: data.meta.function,
            wake: data.wake,
            created_ms: data.meta.created_ms,
            index: data.index,
        }
    }
}

#[pymethods]
impl Invocation {
    /// The execution's input payload.
    #[getter]
    fn input<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.index.input.as_deref().map(|bytes| PyBytes::new(py, bytes))
    }

    /// How many operations the journal holds.
    #[getter]
    fn op_count(&self) -> usize {
        self.index.len()
    }

    #[getter]
    fn invocations(&self) -> u32 {
        self.index.invocations
    }

    /// The replay fast path of `ctx.step`: the stored result of a step that
    /// succeeded under this name, decoded straight from its JSON; `MISSING`
    /// otherwise (not recorded, not finished, failed, a mismatch, or a payload
    /// that needs perdure's extended-type decoding) — the slow path then
    /// looks at the operation with `lookup` and says why; `NEW` when the
    /// journal does not hold the operation.
    #[pyo3(signature = (op_id, name = None))]
    fn replay_step<'py>(&self, py: Python<'py>, op_id: &str, name: Option<&str>) -> Bound<'py, PyAny> {
        let missing = || sentinel(py, &MISSING);
        let Some(op) = self.index.get(op_id) else {
            return sentinel(py, &NEW);
        };
        let matches = op.status == RecordKind::Succeeded
            && op.op_type == OpType::Step
            && op.sub_type == SubType::Step
            && op.name.as_deref().filter(|n| !n.is_empty()) == name.filter(|n| !n.is_empty());
        match op.payload.as_deref() {
            Some(json) if matches && json.first() != Some(&EXTENDED_MARKER) => PythonParse::default()
                .python_parse(py, json)
                .unwrap_or_else(|_| missing()),
            _ => missing(),
        }
    }

    /// (op_type, sub_type, name, status, attempt, aux, aux2, timestamp_ms,
    /// extra, payload, start_aux, started_ms) of a recorded operation, or None.
    fn lookup<'py>(&self, py: Python<'py>, op_id: &str) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(op) = self.index.get(op_id) else {
            return Ok(None);
        };
        let payload = op.payload.as_deref().map(|bytes| PyBytes::new(py, bytes));
        (
            op.op_type as u8,
            sub_type_to_py(py, op.sub_type, op.label.as_deref())?,
            op.name.as_deref(),
            op.status as u8,
            op.attempt,
            op.aux,
            op.aux2,
            op.timestamp_ms,
            op.extra.as_deref(),
            payload,
            op.start_aux,
            op.started_ms,
        )
            .into_pyobject(py)
            .map(Some)
    }
}
