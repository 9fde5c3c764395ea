//! `rnn_kernels._native`: the Python extension module of the `rnn_kernels` package.
//!
//! The NumPy API over the library: `Config` (a validated configuration), `Model` (its
//! parameters planned on the reference or the CPU backend: inference, a training forward pass
//! and backpropagation through time), `Reserve` (what a training forward pass keeps for
//! backward), and the safetensors files of the library and of PyTorch. The package's Python
//! code (`python/rnn_kernels/`) re-exports it and adds the PyTorch layer.
//!
//! Arrays are NumPy's, C-contiguous, of the model's dtype and of the exact shapes of the
//! library's conventions; inputs are read in place and outputs are handed to NumPy without a
//! copy. The GIL is released during every computation. No input makes the module panic: every
//! argument is checked, and the library's errors become Python exceptions with its messages
//! (see `errors`).

mod arrays;
mod attention;
mod config;
mod engine;
mod errors;
mod model;
mod steps;

use crate::arrays::{array, check_shape, readonly, slice};
use crate::config::Config;
use crate::errors::{type_error, value, OrPy};
use crate::model::{Model, Reserve};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use rnn_kernels::{Isa, Params, RnnConfig};
use std::path::PathBuf;

/// The backends this build has.
pub(crate) fn backends() -> Vec<&'static str> {
    let mut v = vec!["reference", "cpu"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// The CPU backend's ISAs this machine supports, best last.
#[pyfunction]
fn available_isas() -> Vec<&'static str> {
    Isa::available().into_iter().map(Isa::name).collect()
}

/// The ISA a CPU model uses when given none: ``RNN_KERNELS_ISA`` if set, else the best one.
#[pyfunction]
fn default_isa() -> PyResult<&'static str> {
    Isa::from_env().map(Isa::name).or_py()
}

/// The backends of this build: ``["reference", "cpu"]``, and ``"cuda"`` in a build with
/// CUDA.
#[pyfunction(name = "backends")]
fn py_backends() -> Vec<&'static str> {
    backends()
}

/// ``(config, params)`` from a safetensors file written by the library (``save_safetensors``)
/// or by PyTorch's ``save_file(state_dict)`` with the library's metadata; ``params`` flat, in
/// ``dtype`` (``"float32"`` or ``"float64"``) whatever the file's.
#[pyfunction]
#[pyo3(signature = (path, dtype="float32"))]
fn load_safetensors<'py>(py: Python<'py>, path: PathBuf, dtype: &str) -> PyResult<(Config, Bound<'py, PyAny>)> {
    fn load<T: engine::Elem>(py: Python<'_>, path: &std::path::Path) -> PyResult<(RnnConfig, Vec<T>)> {
        let p = py.detach(|| Params::<T>::load(path)).or_py()?;
        Ok((p.config().clone(), p.into_vec()))
    }
    match dtype {
        "float32" => {
            let (c, v) = load::<f32>(py, &path)?;
            Ok((Config::new_from(c), arrays::out1(py, v)))
        }
        "float64" => {
            let (c, v) = load::<f64>(py, &path)?;
            Ok((Config::new_from(c), arrays::out1(py, v)))
        }
        other => Err(value("dtype", "\"float32\" or \"float64\"", format!("{other:?}"))),
    }
}

/// Writes ``params`` (flat, float32 or float64, ``config.param_count`` elements) to a
/// safetensors file under PyTorch's names, with the configuration in its metadata.
#[pyfunction]
fn save_safetensors(py: Python<'_>, path: PathBuf, config: PyRef<'_, Config>, params: &Bound<'_, PyAny>) -> PyResult<()> {
    fn save<T: engine::Elem>(py: Python<'_>, path: &std::path::Path, cfg: &RnnConfig, params: &Bound<'_, PyAny>) -> PyResult<()> {
        let a = array::<T>(params, "params", "[param_count]")?;
        check_shape(&a, "params", "[param_count]", &[cfg.param_count()])?;
        let ro = readonly::<T>(&a, "params")?;
        let p = slice(&ro, "params")?;
        py.detach(|| Params::from_vec(cfg, p.to_vec())?.save_safetensors(path)).or_py()
    }
    let cfg = config.inner.clone();
    let Ok(a) = params.cast::<PyUntypedArray>() else {
        return Err(type_error("params", "a 1-D numpy.ndarray of float32 or float64", "another type"));
    };
    let dt = a.dtype();
    if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        save::<f64>(py, &path, &cfg, params)
    } else {
        save::<f32>(py, &path, &cfg, params)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Config>()?;
    m.add_class::<Model>()?;
    m.add_class::<Reserve>()?;
    m.add_class::<steps::Steps>()?;
    m.add_class::<steps::BackwardSteps>()?;
    m.add_class::<attention::AttentionConfig>()?;
    m.add_class::<attention::Attention>()?;
    m.add_class::<attention::AttentionMemory>()?;
    m.add_class::<attention::AttentionSaved>()?;
    m.add_function(wrap_pyfunction!(available_isas, m)?)?;
    m.add_function(wrap_pyfunction!(default_isa, m)?)?;
    m.add_function(wrap_pyfunction!(py_backends, m)?)?;
    m.add_function(wrap_pyfunction!(load_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(save_safetensors, m)?)?;
    Ok(())
}
