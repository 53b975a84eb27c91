//! Maps core errors to the exception classes of `perdure.errors`, so Python
//! code catches one small hierarchy whatever layer failed.

use perdure_core::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

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

pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| {
        let message = err.to_string();
        let (name, kwargs): (&str, Vec<(&str, Py<PyAny>)>) = match &err {
            Error::CorruptRecord {
                execution_id, sequence, ..
            } => (
                "CorruptRecordError",
                vec![
                    (
                        "execution_id",
                        execution_id
                            .clone()
                            .into_pyobject(py)
                            .map(|o| o.into_any().unbind())
                            .unwrap_or_else(|_| py.None()),
                    ),
                    (
                        "sequence",
                        sequence
                            .into_pyobject(py)
                            .map(|o| o.into_any().unbind())
                            .unwrap_or_else(|_| py.None()),
                    ),
                ],
            ),
            Error::CorruptStore(_) => ("CorruptStoreError", vec![]),
            Error::FormatVersion { .. } => ("StoreVersionError", vec![]),
            Error::StoreAccess { .. } => ("StoreAccessError", vec![]),
            Error::StoreBusy { .. } => ("StoreBusyError", vec![]),
            Error::ExecutionNotFound(_) => ("ExecutionNotFoundError", vec![]),
            Error::ExecutionFinished { .. } => ("ExecutionFinishedError", vec![]),
            Error::ExecutionIdConflict { .. } | Error::InvalidInput(_) => ("ValidationError", vec![]),
            Error::UnknownCallback(_) => ("UnknownCallbackError", vec![]),
            Error::CallbackAlreadyCompleted { .. } => ("CallbackAlreadyCompletedError", vec![]),
            Error::Closed => ("EngineClosedError", vec![]),
            Error::Lmdb(_) | Error::Io(_) => ("StoreError", vec![]),
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
