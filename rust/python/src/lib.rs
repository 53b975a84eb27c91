//! The Python bindings of perdure-core: type and error conversion only.

mod core;
mod errors;
mod invocation;
mod records;

use pyo3::prelude::*;

/// Whether a PostgreSQL store exists at `url` (its schema holds perdure's
/// tables); it is never created here.
#[pyfunction]
fn postgres_store_exists(py: Python<'_>, url: &str) -> PyResult<bool> {
    use errors::IntoPyResult;
    use perdure_core::backend::postgres::{schema, PgLocation};
    py.detach(|| schema::exists(&PgLocation::parse(url)?)).py_err()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core::Core>()?;
    m.add_function(wrap_pyfunction!(postgres_store_exists, m)?)?;
    m.add_class::<core::SkippingClock>()?;
    m.add_class::<invocation::Invocation>()?;
    m.add("FORMAT_VERSION", perdure_core::backend::lmdb::FORMAT_VERSION)?;
    for (name, cell) in [("MISSING", &invocation::MISSING), ("NEW", &invocation::NEW)] {
        let sentinel = cell.get_or_try_init(m.py(), || {
            Ok::<_, PyErr>(m.py().import("builtins")?.getattr("object")?.call0()?.unbind())
        })?;
        m.add(name, sentinel.clone_ref(m.py()))?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
