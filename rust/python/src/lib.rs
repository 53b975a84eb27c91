//! The Python bindings of perdure-core: type and error conversion only.

mod core;
mod errors;
mod invocation;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core::Core>()?;
    m.add_class::<invocation::Invocation>()?;
    m.add("FORMAT_VERSION", perdure_core::store::FORMAT_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
