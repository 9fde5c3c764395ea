//! `Config`: a validated [`RnnConfig`], with `torch.nn.LSTM`'s arguments.

use crate::errors::{value, OrPy};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rnn_kernels::{config_from_metadata, config_metadata, CellKind, Direction, Merge, ParamLayout, RnnConfig};
use std::collections::HashMap;

/// The configuration of a stack of recurrent layers, as ``torch.nn.LSTM`` (``GRU``, ``RNN``)
/// takes it.
///
/// ``mode``: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"`` (PyTorch's ``mode``
/// strings, ``"LSTM"``, ``"RNN_TANH"``, … are accepted too). ``dropout``: the probability of
/// dropout on the output of every layer but the last in a training pass, with the library's own
/// masks (drawn from the ``seed`` of ``Model.forward_training``).
///
/// The library's cell options, keyword-only (each refused for a cell it does not apply to):
///
/// - ``direction``: ``"forward"``, ``"bidirectional"`` or ``"reverse"`` (ONNX's ``direction``;
///   a reverse-only stack has one direction, its tensors unsuffixed). ``bidirectional=True`` is
///   ``direction="bidirectional"``; giving both, they must agree.
/// - ``merge``: ``"concat"`` (PyTorch) or ``"sum"`` (Keras ``merge_mode="sum"``: ``y`` has
///   ``Hout`` features), bidirectional only.
/// - ``peephole`` (LSTM, ONNX's ``P``): tensors ``weight_peephole_l{k}`` ``[3, H]``, rows
///   ``i, f, o``.
/// - ``gate_clip``: every gate pre-activation clipped to ``[-gate_clip, gate_clip]`` (ONNX's
///   ``clip``), ``None`` for none; a positive finite float.
/// - ``input_forget`` (LSTM, ONNX's ``input_forget``): ``f = 1 - i``.
/// - ``linear_before_reset`` (GRU): ``True`` (PyTorch, cuDNN) applies the reset gate after the
///   recurrent matmul, ``False`` before it (Cho et al. 2014, Keras ``reset_after=False``).
/// - ``layer_norm`` (LSTM, GRU): Haste's layer-normalised cells, with tensors
///   ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` ``[G·H]`` and, LSTM, ``weight_ln_c_l{k}``,
///   ``bias_ln_c_l{k}`` ``[H]``.
/// - ``zoneout``, ``zoneout_cell`` (LSTM): zoneout of ``h`` (``c``) with this probability in a
///   training pass, ``z·prev + (1-z)·new`` in inference.
/// - ``recurrent_dropout``, ``input_dropout``: variational dropout (one mask per sequence, the
///   same at every step) of the state entering the recurrent product, of every layer's input;
///   training only.
///
/// The probabilities are in ``[0, 1)``; the masks of a training pass all come from the ``seed`` of
/// ``Model.forward_training``.
///
/// Immutable, comparable and hashable; it pickles (through its metadata, the keys of the
/// library's safetensors files).
#[pyclass(module = "rnn_kernels._native", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Config {
    pub(crate) inner: RnnConfig,
}

/// A float as Python's ``repr`` writes it (``2.0``, not ``2``).
fn float(v: f64) -> String {
    let s = format!("{v}");
    if s.contains(['.', 'e', 'i', 'N']) {
        s
    } else {
        s + ".0"
    }
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

/// ``direction`` (a string or ``None``) and ``bidirectional`` (a bool or ``None``), which must
/// agree when both are given.
fn parse_direction(direction: Option<&str>, bidirectional: Option<bool>) -> PyResult<Direction> {
    let Some(name) = direction else {
        return Ok(if bidirectional == Some(true) { Direction::Bidirectional } else { Direction::Forward });
    };
    let d = match name.to_ascii_lowercase().as_str() {
        "forward" => Direction::Forward,
        "bidirectional" => Direction::Bidirectional,
        "reverse" => Direction::Reverse,
        _ => return Err(value("direction", "one of \"forward\", \"bidirectional\", \"reverse\"", format!("{name:?}"))),
    };
    match bidirectional {
        Some(b) if b != (d == Direction::Bidirectional) => Err(value(
            "bidirectional",
            format!("{} (or no value) with direction={:?}, which it contradicts", !b, d.name()),
            if b { "True" } else { "False" },
        )),
        _ => Ok(d),
    }
}

/// ``"concat"`` or ``"sum"``.
fn parse_merge(merge: &str) -> PyResult<Merge> {
    match merge.to_ascii_lowercase().as_str() {
        "concat" => Ok(Merge::Concat),
        "sum" => Ok(Merge::Sum),
        _ => Err(value("merge", "one of \"concat\", \"sum\"", format!("{merge:?}"))),
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
    #[pyo3(signature = (
        mode, input_size, hidden_size, num_layers=1, bias=true, batch_first=false, bidirectional=None, proj_size=0, dropout=0.0,
        *, direction=None, merge="concat", peephole=false, gate_clip=None, input_forget=false, linear_before_reset=true,
        layer_norm=false, zoneout=0.0, zoneout_cell=0.0, recurrent_dropout=0.0, input_dropout=0.0
    ))]
    #[pyo3(text_signature = "(mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, bidirectional=False, \
        proj_size=0, dropout=0.0, *, direction=None, merge=\"concat\", peephole=False, gate_clip=None, input_forget=False, \
        linear_before_reset=True, layer_norm=False, zoneout=0.0, zoneout_cell=0.0, recurrent_dropout=0.0, input_dropout=0.0)")]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        mode: &str,
        input_size: i64,
        hidden_size: i64,
        num_layers: i64,
        bias: bool,
        batch_first: bool,
        bidirectional: Option<bool>,
        proj_size: i64,
        dropout: f64,
        direction: Option<&str>,
        merge: &str,
        peephole: bool,
        gate_clip: Option<f64>,
        input_forget: bool,
        linear_before_reset: bool,
        layer_norm: bool,
        zoneout: f64,
        zoneout_cell: f64,
        recurrent_dropout: f64,
        input_dropout: f64,
    ) -> PyResult<Self> {
        let cell = parse_mode(mode)?;
        let direction = parse_direction(direction, bidirectional)?;
        let merge = parse_merge(merge)?;
        let gate_clip = match gate_clip {
            None => 0.0,
            Some(c) if c.is_finite() && c > 0.0 => c,
            Some(c) => return Err(value("gate_clip", "a positive finite threshold, or None for no clipping", c)),
        };
        let inner = RnnConfig::new(cell, size("input_size", input_size)?, size("hidden_size", hidden_size)?)
            .num_layers(size("num_layers", num_layers)?)
            .bias(bias)
            .batch_first(batch_first)
            .direction(direction)
            .proj_size(size("proj_size", proj_size)?)
            .dropout(dropout)
            .merge(merge)
            .peephole(peephole)
            .gate_clip(gate_clip)
            .input_forget(input_forget)
            .linear_before_reset(linear_before_reset)
            .layer_norm(layer_norm)
            .zoneout(zoneout)
            .zoneout_cell(zoneout_cell)
            .recurrent_dropout(recurrent_dropout)
            .input_dropout(input_dropout)
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
    /// ``"forward"``, ``"bidirectional"`` or ``"reverse"``.
    #[getter]
    fn direction(&self) -> &'static str {
        self.inner.direction().name()
    }
    /// ``"concat"`` or ``"sum"``: how a bidirectional layer's two outputs are combined.
    #[getter]
    fn merge(&self) -> &'static str {
        self.inner.merge().name()
    }
    /// LSTM peepholes (tensors ``weight_peephole_l{k}``).
    #[getter]
    fn peephole(&self) -> bool {
        self.inner.peephole()
    }
    /// The gate pre-activation clip threshold, ``None`` for none.
    #[getter]
    fn gate_clip(&self) -> Option<f64> {
        self.inner.gate_clip()
    }
    /// LSTM coupled input and forget gates (``f = 1 - i``).
    #[getter]
    fn input_forget(&self) -> bool {
        self.inner.input_forget()
    }
    /// GRU: whether the reset gate applies after the recurrent matmul (``True``, PyTorch) or
    /// before it (``False``); ``True`` for the other cells.
    #[getter]
    fn linear_before_reset(&self) -> bool {
        self.inner.linear_before_reset()
    }
    /// Layer-normalised LSTM or GRU (Haste's semantics).
    #[getter]
    fn layer_norm(&self) -> bool {
        self.inner.layer_norm()
    }
    /// The zoneout probability of the hidden state, 0.0 for none.
    #[getter]
    fn zoneout(&self) -> f64 {
        self.inner.zoneout().unwrap_or(0.0)
    }
    /// The zoneout probability of an LSTM's cell state, 0.0 for none.
    #[getter]
    fn zoneout_cell(&self) -> f64 {
        self.inner.zoneout_cell().unwrap_or(0.0)
    }
    /// The recurrent (variational) dropout probability (training only), 0.0 for none.
    #[getter]
    fn recurrent_dropout(&self) -> f64 {
        self.inner.recurrent_dropout().unwrap_or(0.0)
    }
    /// The variational dropout probability of every layer's input (training only), 0.0 for none.
    #[getter]
    fn input_dropout(&self) -> f64 {
        self.inner.input_dropout().unwrap_or(0.0)
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
    /// The options beyond ``torch.nn``'s plain cells that the configuration sets, by the library's
    /// names (``"direction=reverse"``, ``"merge=sum"``, ``"peephole"``, ``"gate_clip"``,
    /// ``"linear_before_reset=false"``, ``"layer_norm"``, ``"zoneout"``, …); ``batch_first`` and
    /// ``dropout`` are among them when set.
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
        match c.direction() {
            Direction::Forward => {}
            Direction::Bidirectional => s += ", bidirectional=True",
            Direction::Reverse => s += ", direction='reverse'",
        }
        if c.proj_size() > 0 {
            s += &format!(", proj_size={}", c.proj_size());
        }
        if let Some(p) = c.dropout() {
            s += &format!(", dropout={}", float(p));
        }
        if c.merge() != Merge::Concat {
            s += &format!(", merge='{}'", c.merge().name());
        }
        for (name, set) in [("peephole", c.peephole()), ("input_forget", c.input_forget()), ("layer_norm", c.layer_norm())] {
            if set {
                s += &format!(", {name}=True");
            }
        }
        if !c.linear_before_reset() {
            s += ", linear_before_reset=False";
        }
        for (name, v) in [
            ("gate_clip", c.gate_clip()),
            ("zoneout", c.zoneout()),
            ("zoneout_cell", c.zoneout_cell()),
            ("recurrent_dropout", c.recurrent_dropout()),
            ("input_dropout", c.input_dropout()),
        ] {
            if let Some(v) = v {
                s += &format!(", {name}={}", float(v));
            }
        }
        s + ")"
    }
}
