//! Journal records to and from the tuples the Python side builds and reads.

use perdure_core::{OpType, Record, RecordKind, SubType};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::errors::perdure_error;

/// A record as Python passes it: (kind, op_type, sub_type, op_id, name,
/// attempt, aux, aux2, extra, payload). The timestamp is stamped on commit.
pub type RecordIn = (
    u8,
    u8,
    SubTypeIn,
    String,
    Option<String>,
    u32,
    u64,
    u64,
    Option<String>,
    Option<Vec<u8>>,
);

/// A sub type as Python passes it: a built-in code, or a label of the
/// user's own (`sub_type=` in a config), which becomes Custom.
#[derive(FromPyObject)]
pub enum SubTypeIn {
    Code(u8),
    Label(String),
}

pub fn invalid(py: Python<'_>, message: String) -> PyErr {
    perdure_error(py, "ValidationError", message, &[])
}

fn record_from(py: Python<'_>, item: RecordIn) -> PyResult<Record> {
    let (kind, op_type, sub_type, op_id, name, attempt, aux, aux2, extra, payload) = item;
    let kind = RecordKind::from_u8(kind).ok_or_else(|| invalid(py, format!("unknown record kind {kind}")))?;
    let op_type = OpType::from_u8(op_type).ok_or_else(|| invalid(py, format!("unknown op type {op_type}")))?;
    let (sub_type, label) = match sub_type {
        SubTypeIn::Code(code) => match SubType::from_u8(code) {
            Some(SubType::Custom) | None => return Err(invalid(py, format!("unknown sub type {code}"))),
            Some(sub_type) => (sub_type, None),
        },
        SubTypeIn::Label(label) => SubType::from_label(&label).map_err(|message| invalid(py, message))?,
    };
    let mut record = Record::new(kind, op_type, sub_type, op_id);
    record.label = label;
    record.name = name;
    record.attempt = attempt;
    record.aux = aux;
    record.aux2 = aux2;
    record.extra = extra;
    record.payload = payload;
    Ok(record)
}

pub fn records_from(py: Python<'_>, items: Vec<RecordIn>) -> PyResult<Vec<Record>> {
    items.into_iter().map(|item| record_from(py, item)).collect()
}

/// A built-in sub type as its code, a Custom one as its label: what the
/// Python side compares with what it asks for now.
pub fn sub_type_to_py<'py>(py: Python<'py>, sub_type: SubType, label: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    match label {
        Some(label) => label.into_bound_py_any(py),
        None => (sub_type as u8).into_bound_py_any(py),
    }
}

/// (kind, op_type, sub_type, op_id, name, attempt, aux, aux2, extra, payload, timestamp_ms)
pub fn record_to_py<'py>(py: Python<'py>, record: &Record) -> PyResult<Bound<'py, PyTuple>> {
    let payload = record.payload.as_deref().map(|bytes| PyBytes::new(py, bytes));
    (
        record.kind as u8,
        record.op_type as u8,
        sub_type_to_py(py, record.sub_type, record.label.as_deref())?,
        record.op_id.as_str(),
        record.name.as_deref(),
        record.attempt,
        record.aux,
        record.aux2,
        record.extra.as_deref(),
        payload,
        record.timestamp_ms,
    )
        .into_pyobject(py)
}
