//! `perdure._core.Invocation`: one execution's journal, loaded and indexed,
//! answering the Python side's "what happened to operation X" in O(1).

use perdure_core::store::InvocationData;
use perdure_core::{RecordKind, ReplayIndex};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

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
            index: ReplayIndex::build(data.records),
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

    /// The replay fast path: the stored result of an operation that succeeded
    /// and matches the type, sub-type and name asked for; None otherwise (not
    /// recorded, not finished, failed, or a mismatch — `lookup` tells which).
    #[pyo3(signature = (op_id, op_type, sub_type, name = None))]
    fn replay<'py>(
        &self,
        py: Python<'py>,
        op_id: &str,
        op_type: u8,
        sub_type: u8,
        name: Option<&str>,
    ) -> Option<Bound<'py, PyBytes>> {
        let op = self.index.get(op_id)?;
        let matches = op.status == RecordKind::Succeeded
            && op.op_type as u8 == op_type
            && op.sub_type as u8 == sub_type
            && op.name.as_deref().filter(|n| !n.is_empty()) == name.filter(|n| !n.is_empty());
        if !matches {
            return None;
        }
        op.payload.as_deref().map(|bytes| PyBytes::new(py, bytes))
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
            op.sub_type as u8,
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
