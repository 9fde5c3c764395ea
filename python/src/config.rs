//! `Config`: a validated [`RnnConfig`], with `torch.nn.LSTM`'s arguments.

use crate::errors::{value, OrPy};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rnn_kernels::{config_from_metadata, config_metadata, CellKind, ParamLayout, RnnConfig};
use std::collections::HashMap;

/// The configuration of a stack of recurrent layers, as ``torch.nn.LSTM`` (``GRU``, ``RNN``)
/// takes it.
///
/// ``mode``: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"`` (PyTorch's ``mode``
/// strings, ``"LSTM"``, ``"RNN_TANH"``, … are accepted too). ``dropout``: the probability of
/// dropout on the output of every layer but the last in a training pass, with the library's own
/// masks (drawn from the ``seed`` of ``Model.forward_training``).
///
/// Immutable, comparable and hashable; it pickles (through its metadata, the keys of the
/// library's safetensors files).
#[pyclass(module = "rnn_kernels._native", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Config {
    pub(crate) inner: RnnConfig,
}

/// A size argument: a non-negative int (PyO3 has already refused what is not an int).
fn size(arg: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| value(arg, "a non-negative integer", v))
}

/// PyTorch's mode strings and the library's cell names.
fn parse_mode(mode: &str) -> PyResult<CellKind> {
    match mode.to_ascii_lowercase().as_str() {
        "lstm" => Ok(CellKind::Lstm),
        "gru" => Ok(CellKind::Gru),
        "rnn_tanh" => Ok(CellKind::RnnTanh),
        "rnn_relu" => Ok(CellKind::RnnRelu),
        _ => Err(value("mode", "one of \"lstm\", \"gru\", \"rnn_tanh\", \"rnn_relu\"", format!("{mode:?}"))),
    }
}

impl Config {
    pub(crate) fn new_from(inner: RnnConfig) -> Self {
        Config { inner }
    }
}

#[pymethods]
impl Config {
    #[new]
    #[pyo3(signature = (mode, input_size, hidden_size, num_layers=1, bias=true, batch_first=false, bidirectional=false, proj_size=0, dropout=0.0))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        mode: &str,
        input_size: i64,
        hidden_size: i64,
        num_layers: i64,
        bias: bool,
        batch_first: bool,
        bidirectional: bool,
        proj_size: i64,
        dropout: f64,
    ) -> PyResult<Self> {
        let cell = parse_mode(mode)?;
        let inner = RnnConfig::new(cell, size("input_size", input_size)?, size("hidden_size", hidden_size)?)
            .num_layers(size("num_layers", num_layers)?)
            .bias(bias)
            .batch_first(batch_first)
            .bidirectional(bidirectional)
            .proj_size(size("proj_size", proj_size)?)
            .dropout(dropout)
            .build()
            .or_py()?;
        Ok(Config { inner })
    }

    /// ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.cell().name()
    }
    /// ``I``.
    #[getter]
    fn input_size(&self) -> usize {
        self.inner.input_size()
    }
    /// ``H``.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }
    /// ``L``.
    #[getter]
    fn num_layers(&self) -> usize {
        self.inner.num_layers()
    }
    #[getter]
    fn bias(&self) -> bool {
        self.inner.bias()
    }
    /// Whether ``x`` and ``y`` are ``[B, T, ·]`` (the states stay ``[L·D, B, ·]``).
    #[getter]
    fn batch_first(&self) -> bool {
        self.inner.batch_first()
    }
    #[getter]
    fn bidirectional(&self) -> bool {
        self.inner.bidirectional()
    }
    /// The LSTM projection size, 0 for none.
    #[getter]
    fn proj_size(&self) -> usize {
        self.inner.proj_size()
    }
    /// The dropout probability between layers (training only), 0.0 for none.
    #[getter]
    fn dropout(&self) -> f64 {
        self.inner.dropout().unwrap_or(0.0)
    }
    /// ``D``: 2 if bidirectional, else 1.
    #[getter]
    fn num_directions(&self) -> usize {
        self.inner.num_directions()
    }
    /// The last dimension of ``y``: ``D·Hout``.
    #[getter]
    fn output_size(&self) -> usize {
        self.inner.output_size()
    }
    /// The last dimension of ``h0``/``hn``: ``Hout`` (``proj_size`` if set, else ``H``).
    #[getter]
    fn state_size(&self) -> usize {
        self.inner.hidden_out_size()
    }
    /// The number of parameters: the length of the flat parameter (and gradient) buffer.
    #[getter]
    fn param_count(&self) -> usize {
        self.inner.param_count()
    }
    /// The options beyond ``torch.nn``'s plain cells that the configuration sets (a file written
    /// by the library may set more than this constructor can: ``peephole``, ``layer_norm``, …),
    /// by the library's names; ``batch_first`` and ``dropout`` are among them when set.
    #[getter]
    fn options(&self) -> Vec<&'static str> {
        self.inner.options()
    }

    /// ``(name, shape, offset)`` of every parameter tensor in the flat buffer, in the order of
    /// PyTorch's ``state_dict()``, under PyTorch's names (``weight_ih_l0``,
    /// ``weight_hh_l0_reverse``, ``weight_hr_l0``, …).
    fn param_specs<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyTuple>, usize)>> {
        ParamLayout::new(&self.inner).specs().iter().map(|s| Ok((s.name.clone(), PyTuple::new(py, &s.shape)?, s.offset))).collect()
    }

    /// The configuration as the string metadata of the library's safetensors files.
    fn metadata(&self) -> HashMap<String, String> {
        config_metadata(&self.inner)
    }

    /// A configuration from the string metadata of a safetensors file (the inverse of
    /// ``metadata()``).
    #[staticmethod]
    fn from_metadata(metadata: HashMap<String, String>) -> PyResult<Self> {
        config_from_metadata(&metadata, "metadata").or_py().map(Config::new_from)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyDict>,))> {
        let py = slf.py();
        let from_metadata = slf.get_type().getattr("from_metadata")?;
        let meta = PyDict::new(py);
        for (k, v) in config_metadata(&slf.get().inner) {
            meta.set_item(k, v)?;
        }
        Ok((from_metadata, (meta,)))
    }

    pub(crate) fn __repr__(&self) -> String {
        let c = &self.inner;
        let mut s = format!("Config(mode='{}', input_size={}, hidden_size={}", c.cell().name(), c.input_size(), c.hidden_size());
        if c.num_layers() != 1 {
            s += &format!(", num_layers={}", c.num_layers());
        }
        if !c.bias() {
            s += ", bias=False";
        }
        if c.batch_first() {
            s += ", batch_first=True";
        }
        if c.bidirectional() {
            s += ", bidirectional=True";
        }
        if c.proj_size() > 0 {
            s += &format!(", proj_size={}", c.proj_size());
        }
        if let Some(p) = c.dropout() {
            s += &format!(", dropout={p}");
        }
        let extra: Vec<&str> = c.options().into_iter().filter(|o| !matches!(*o, "batch_first" | "dropout")).collect();
        if !extra.is_empty() {
            s += &format!(", options=[{}]", extra.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(", "));
        }
        s + ")"
    }
}
