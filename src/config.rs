//! What a stack of recurrent layers is: [`CellKind`] and [`RnnConfig`].

use crate::error::{Error, Result};
use crate::params::ParamKind;
use std::fmt;
use std::str::FromStr;

/// The recurrent cell of every layer in a stack.
///
/// Gate order and equations follow PyTorch (`torch.nn.RNN`, `LSTM`, `GRU`); with `x` the layer
/// input, `h` the previous hidden state and `σ` the logistic sigmoid:
///
/// - [`RnnTanh`](CellKind::RnnTanh): `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`; one gate.
/// - [`RnnRelu`](CellKind::RnnRelu): `h' = relu(W_ih x + b_ih + W_hh h + b_hh)`; one gate.
/// - [`Lstm`](CellKind::Lstm): gates `i, f, g, o` in that order:
///   `i = σ(..), f = σ(..), g = tanh(..), o = σ(..)`, `c' = f c + i g`, `h' = o tanh(c')`,
///   and with a projection `h' = W_hr (o tanh(c'))`.
/// - [`Gru`](CellKind::Gru): gates `r, z, n` in that order: `r = σ(..)`, `z = σ(..)`,
///   `n = tanh(W_in x + b_in + r (W_hn h + b_hn))` (the reset gate is applied *after* the
///   recurrent matmul, as in PyTorch and cuDNN), `h' = (1 - z) n + z h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CellKind {
    /// Elman RNN with tanh.
    RnnTanh,
    /// Elman RNN with relu.
    RnnRelu,
    /// Long short-term memory.
    Lstm,
    /// Gated recurrent unit, PyTorch/cuDNN variant.
    Gru,
}

impl CellKind {
    /// Every cell, for tests and tools that iterate over them.
    pub const ALL: [CellKind; 4] = [CellKind::RnnTanh, CellKind::RnnRelu, CellKind::Lstm, CellKind::Gru];

    /// Number of gates `G`: the weight matrices have `G·H` rows.
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Whether the cell carries a cell state `c` besides `h`.
    pub fn has_cell_state(self) -> bool {
        matches!(self, CellKind::Lstm)
    }

    /// The name used in case files and on command lines: `rnn_tanh`, `rnn_relu`, `lstm`, `gru`.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh => "rnn_tanh",
            CellKind::RnnRelu => "rnn_relu",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }
}

impl fmt::Display for CellKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CellKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rnn_tanh" | "rnn" | "tanh" => Ok(CellKind::RnnTanh),
            "rnn_relu" | "relu" => Ok(CellKind::RnnRelu),
            "lstm" => Ok(CellKind::Lstm),
            "gru" => Ok(CellKind::Gru),
            other => Err(Error::invalid("cell", "one of rnn_tanh, rnn_relu, lstm, gru", format!("{other:?}"))),
        }
    }
}

/// A validated description of a stack of recurrent layers, as `torch.nn.LSTM(...)` takes it.
///
/// Built with [`RnnConfig::new`] and the builder methods, then [`RnnConfigBuilder::build`], which
/// checks every value. Sizes: `I = input_size`, `H = hidden_size`, `L = num_layers`,
/// `D = 2` if bidirectional else `1`, `Hout = proj_size` if it is set, else `H`.
///
/// ```
/// use rnn_kernels::{CellKind, RnnConfig};
/// let cfg = RnnConfig::new(CellKind::Lstm, 32, 64).num_layers(2).bidirectional(true).build()?;
/// assert_eq!(cfg.output_size(), 128); // D·Hout
/// # Ok::<(), rnn_kernels::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RnnConfig {
    cell: CellKind,
    input_size: usize,
    hidden_size: usize,
    num_layers: usize,
    bidirectional: bool,
    bias: bool,
    proj_size: usize,
}

/// Builder for [`RnnConfig`]; defaults as in PyTorch: one layer, unidirectional, with bias, no
/// projection.
#[derive(Debug, Clone)]
#[must_use = "call .build() to get an RnnConfig"]
pub struct RnnConfigBuilder {
    cfg: RnnConfig,
}

impl RnnConfig {
    /// Starts a configuration with PyTorch's defaults for everything else.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(cell: CellKind, input_size: usize, hidden_size: usize) -> RnnConfigBuilder {
        RnnConfigBuilder { cfg: RnnConfig { cell, input_size, hidden_size, num_layers: 1, bidirectional: false, bias: true, proj_size: 0 } }
    }

    /// The cell.
    pub fn cell(&self) -> CellKind {
        self.cell
    }
    /// `I`, features per step of the input.
    pub fn input_size(&self) -> usize {
        self.input_size
    }
    /// `H`, size of the cell's hidden (and for LSTM, cell) state.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    /// `L`.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }
    /// Whether each layer runs a forward and a reverse direction, outputs concatenated.
    pub fn bidirectional(&self) -> bool {
        self.bidirectional
    }
    /// Whether the layers have `bias_ih` and `bias_hh`.
    pub fn bias(&self) -> bool {
        self.bias
    }
    /// LSTM projection size, 0 for none.
    pub fn proj_size(&self) -> usize {
        self.proj_size
    }
    /// `D`: 2 if bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }
    /// `G`, gates per cell.
    pub fn gates(&self) -> usize {
        self.cell.gates()
    }
    /// `Hout`: the size of `h` (and of each direction's output): `proj_size` if set, else `H`.
    pub fn hidden_out_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }
    /// `D·Hout`, the features per step of the output `y`.
    pub fn output_size(&self) -> usize {
        self.num_directions() * self.hidden_out_size()
    }
    /// Input features of layer `layer`: `I` for layer 0, `D·Hout` above.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.output_size()
        }
    }
    /// The number of parameters: the length of the flat buffer of
    /// [`ParamLayout`](crate::ParamLayout), counted without building the layout. It fits in
    /// `usize` (and in `f64` in one allocation): [`RnnConfigBuilder::build`] checks it.
    pub fn param_count(&self) -> usize {
        let per_layer =
            |l: usize| -> usize { ParamKind::ALL.iter().filter_map(|k| k.shape(self, l)).map(|s| s.iter().product::<usize>()).sum() };
        // Every layer above the first has the same tensors.
        let upper = if self.num_layers > 1 { (self.num_layers - 1) * per_layer(1) } else { 0 };
        self.num_directions() * (per_layer(0) + upper)
    }
    /// Returns a builder starting from this configuration.
    pub fn to_builder(&self) -> RnnConfigBuilder {
        RnnConfigBuilder { cfg: self.clone() }
    }
}

impl RnnConfigBuilder {
    /// Number of stacked layers (default 1).
    pub fn num_layers(mut self, n: usize) -> Self {
        self.cfg.num_layers = n;
        self
    }
    /// Bidirectional layers, outputs concatenated forward then reverse (default false).
    pub fn bidirectional(mut self, yes: bool) -> Self {
        self.cfg.bidirectional = yes;
        self
    }
    /// Whether layers have biases (default true).
    pub fn bias(mut self, yes: bool) -> Self {
        self.cfg.bias = yes;
        self
    }
    /// LSTM projection size (PyTorch's `proj_size`), 0 for none (default 0).
    pub fn proj_size(mut self, p: usize) -> Self {
        self.cfg.proj_size = p;
        self
    }
    /// Checks every value and returns the configuration.
    ///
    /// Besides each value's range, the sizes together are bounded: `num_layers` is at most
    /// [`RnnConfig::MAX_NUM_LAYERS`], and the parameters in `f64` must fit in one allocation
    /// (`isize::MAX` bytes), so that every size derived from the configuration fits in `usize`.
    /// More layers than the limit is [`Error::TooLarge`] naming `num_layers`; parameters beyond
    /// one allocation are [`Error::InvalidArgument`] naming `hidden_size`, `input_size` or
    /// `num_layers`, whichever makes them so. Whether the memory is there is known only when it is allocated:
    /// [`Params::zeros`](crate::Params::zeros) and the other allocating calls return
    /// [`Error::TooLarge`] when it is not.
    pub fn build(self) -> Result<RnnConfig> {
        let c = self.cfg;
        if c.input_size == 0 {
            return Err(Error::invalid("input_size", "must be at least 1", c.input_size));
        }
        if c.hidden_size == 0 {
            return Err(Error::invalid("hidden_size", "must be at least 1", c.hidden_size));
        }
        if c.num_layers == 0 {
            return Err(Error::invalid("num_layers", "must be at least 1", c.num_layers));
        }
        if c.proj_size > 0 && c.cell != CellKind::Lstm {
            return Err(Error::invalid("proj_size", format!("must be 0 for cell {} (projection is LSTM only)", c.cell), c.proj_size));
        }
        if c.proj_size >= c.hidden_size && c.proj_size > 0 {
            return Err(Error::invalid("proj_size", format!("must be smaller than hidden_size = {}", c.hidden_size), c.proj_size));
        }
        if c.num_layers > RnnConfig::MAX_NUM_LAYERS {
            let tensors = (c.num_layers as u128) * (c.num_directions() as u128) * 5;
            return Err(Error::TooLarge {
                arg: "num_layers".into(),
                what: format!(
                    "the parameter layout of num_layers {}, {} direction(s): one entry per tensor",
                    c.num_layers,
                    c.num_directions()
                ),
                bytes: tensors.saturating_mul(std::mem::size_of::<crate::params::ParamSpec>() as u128),
                reason: format!("is more than the documented limit of {} layers (RnnConfig::MAX_NUM_LAYERS)", RnnConfig::MAX_NUM_LAYERS),
            });
        }
        c.check_param_bytes()?;
        Ok(c)
    }
}

impl RnnConfig {
    /// The largest `num_layers` [`RnnConfigBuilder::build`] accepts: the parameter layout
    /// ([`ParamLayout`](crate::ParamLayout)) keeps an entry per tensor, so its memory (and the
    /// time to build it) is bounded by this, whatever the other sizes.
    pub const MAX_NUM_LAYERS: usize = 1 << 16;

    /// The largest parameter buffer a configuration may describe, in bytes: the parameters
    /// of every element type (up to 8 bytes, `f64`) must fit in one allocation, at most
    /// `isize::MAX` bytes.
    const MAX_PARAM_BYTES: u128 = isize::MAX as u128;

    /// Checks, in exact arithmetic, that the parameters in `f64` fit in one allocation, so that
    /// every size derived from the configuration (a tensor's elements, a layer's, the total)
    /// fits in `usize` without overflow; the error names the argument that makes it too large.
    fn check_param_bytes(&self) -> Result<()> {
        let (g, h, i) = (self.cell.gates() as u128, self.hidden_size as u128, self.input_size as u128);
        let (d, l, hout) = (self.num_directions() as u128, self.num_layers as u128, self.hidden_out_size() as u128);
        let gh = g * h;
        // Per layer-direction: the tensors that do not depend on the layer's input width.
        let recurrent = gh.saturating_mul(hout).saturating_add(if self.bias { 2 * gh } else { 0 }).saturating_add(if self.proj_size > 0 {
            hout.saturating_mul(h)
        } else {
            0
        });
        let first = gh.saturating_mul(i).saturating_add(recurrent);
        let upper = gh.saturating_mul(d.saturating_mul(hout)).saturating_add(recurrent);
        let total = d.saturating_mul(first.saturating_add(l.saturating_sub(1).saturating_mul(upper)));
        let bytes = |n: u128| n.saturating_mul(8);
        if bytes(total) <= Self::MAX_PARAM_BYTES {
            return Ok(());
        }
        // The argument that makes it too large: the hidden size if the recurrent tensors alone
        // are, else the input size if the first layer is, else the number of layers.
        let arg = if bytes(recurrent) > Self::MAX_PARAM_BYTES || (l > 1 && bytes(d.saturating_mul(upper)) > Self::MAX_PARAM_BYTES) {
            "hidden_size"
        } else if bytes(d.saturating_mul(first)) > Self::MAX_PARAM_BYTES {
            "input_size"
        } else {
            "num_layers"
        };
        Err(Error::InvalidArgument {
            arg: arg.into(),
            expected: format!(
                "sizes whose parameter count fits in memory: their bytes in f64 at most {} (isize::MAX, the largest allocation)",
                Self::MAX_PARAM_BYTES
            ),
            got: format!(
                "{} parameters ({} bytes in f64) for input_size {}, hidden_size {}, num_layers {}, {} direction(s){}",
                if total == u128::MAX { "2^128 or more".to_string() } else { total.to_string() },
                if bytes(total) == u128::MAX { "2^128 or more".to_string() } else { bytes(total).to_string() },
                self.input_size,
                self.hidden_size,
                self.num_layers,
                d,
                if self.proj_size > 0 { format!(", proj_size {}", self.proj_size) } else { String::new() }
            ),
        })
    }
}
