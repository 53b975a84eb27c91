//! The Python bindings of perdure-core: type and error conversion only.

mod core;
mod errors;
mod invocation;
mod records;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core::Core>()?;
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
