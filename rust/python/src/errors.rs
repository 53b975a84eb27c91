//! Maps core errors to the exception classes of `perdure.errors`, so Python
//! code catches one small hierarchy whatever layer failed.

use perdure_core::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use pyo3::IntoPyObjectExt;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module = ERRORS.get_or_try_init(py, || Ok::<_, PyErr>(py.import("perdure.errors")?.unbind()))?;
    Ok(module.bind(py).getattr(name)?.cast_into()?)
}

/// Builds `perdure.errors.<name>(message, **kwargs)` as a `PyErr`.
pub fn perdure_error(py: Python<'_>, name: &str, message: String, kwargs: &[(&str, Py<PyAny>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = class(py, name)?;
        let kw = PyDict::new(py);
        for (key, value) in kwargs {
            kw.set_item(key, value)?;
        }
        Ok(PyErr::from_value(cls.call((message,), Some(&kw))?))
    };
    build().unwrap_or_else(|err| err)
}

fn obj<'py, T: IntoPyObject<'py>>(py: Python<'py>, value: T) -> Py<PyAny> {
    value.into_py_any(py).unwrap_or_else(|_| py.None())
}

pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| {
        let message = err.to_string();
        let (name, kwargs): (&str, Vec<(&str, Py<PyAny>)>) = match &err {
            Error::CorruptRecord {
                execution_id, sequence, ..
            } => (
                "CorruptRecordError",
                vec![("execution_id", obj(py, execution_id)), ("sequence", obj(py, sequence))],
            ),
            Error::CorruptStore(_) => ("CorruptStoreError", vec![]),
            Error::CorruptFile { path, .. } => {
                ("CorruptStoreError", vec![("path", obj(py, path.display().to_string()))])
            }
            Error::CorruptExecution { execution_id, .. } => (
                "CorruptStoreError",
                vec![("execution_id", obj(py, execution_id.clone()))],
            ),
            Error::FormatVersion { path, found, supported } => (
                "StoreVersionError",
                vec![
                    ("path", obj(py, path.display().to_string())),
                    ("found", obj(py, found)),
                    ("supported", obj(py, supported)),
                ],
            ),
            Error::SchemaVersion {
                location,
                found,
                supported,
            } => (
                "StoreVersionError",
                vec![
                    ("path", obj(py, location)),
                    ("found", obj(py, found)),
                    ("supported", obj(py, supported)),
                ],
            ),
            Error::StoreAccess { path, .. } => {
                ("StoreAccessError", vec![("path", obj(py, path.display().to_string()))])
            }
            Error::LeaseLost { execution_id } => {
                ("LeaseLostError", vec![("execution_id", obj(py, execution_id.clone()))])
            }
            Error::ExecutionNotFound(_) => ("ExecutionNotFoundError", vec![]),
            Error::ExecutionFinished { .. } => ("ExecutionFinishedError", vec![]),
            Error::ExecutionIdConflict { .. } | Error::InvalidInput(_) => ("ValidationError", vec![]),
            Error::UnknownCallback(_) => ("UnknownCallbackError", vec![]),
            Error::CallbackAlreadyCompleted { .. } => ("CallbackAlreadyCompletedError", vec![]),
            Error::Closed => ("EngineClosedError", vec![]),
            Error::StorageFailed { full: true, .. } => ("StoreFullError", vec![("storage_failed", obj(py, true))]),
            Error::StorageFailed { full: false, .. } | Error::OutcomeUnknown(_) => {
                ("StoreError", vec![("storage_failed", obj(py, true))])
            }
            Error::Lmdb(_) | Error::Io(_) | Error::Postgres { .. } => ("StoreError", vec![]),
        };
        perdure_error(py, name, message, &kwargs)
    })
}

pub trait IntoPyResult<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
