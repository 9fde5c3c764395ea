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

/// Which way each layer runs over the sequence.
///
/// PyTorch has `bidirectional=False|True`; ONNX's `direction` attribute has all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Steps `0..T` (PyTorch's default, ONNX `forward`).
    #[default]
    Forward,
    /// Steps `T-1..=0` only (ONNX `reverse`): one direction, whose parameters keep the
    /// unsuffixed names; each sequence starts at its own last valid step.
    Reverse,
    /// Both, outputs merged by [`Merge`] (PyTorch `bidirectional=True`, ONNX `bidirectional`).
    Bidirectional,
}

impl Direction {
    /// The name in case files and ONNX: `forward`, `reverse`, `bidirectional`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
            Direction::Bidirectional => "bidirectional",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Direction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "forward" => Ok(Direction::Forward),
            "reverse" => Ok(Direction::Reverse),
            "bidirectional" => Ok(Direction::Bidirectional),
            other => Err(Error::invalid("direction", "one of forward, reverse, bidirectional", format!("{other:?}"))),
        }
    }
}

/// How a bidirectional layer's two outputs are combined into its output (and the next layer's
/// input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Merge {
    /// `[forward, reverse]` side by side: `2·Hout` features (PyTorch, cuDNN, ONNX; Keras
    /// `merge_mode="concat"`).
    #[default]
    Concat,
    /// `forward + reverse`: `Hout` features (Keras `merge_mode="sum"`).
    Sum,
}

impl Merge {
    /// The name in case files: `concat`, `sum`.
    pub fn name(self) -> &'static str {
        match self {
            Merge::Concat => "concat",
            Merge::Sum => "sum",
        }
    }
}

impl fmt::Display for Merge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Merge {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "concat" => Ok(Merge::Concat),
            "sum" => Ok(Merge::Sum),
            other => Err(Error::invalid("merge", "one of concat, sum", format!("{other:?}"))),
        }
    }
}

/// A validated description of a stack of recurrent layers, as `torch.nn.LSTM(...)` takes it.
///
/// Built with [`RnnConfig::new`] and the builder methods, then [`RnnConfigBuilder::build`], which
/// checks every value. Sizes: `I = input_size`, `H = hidden_size`, `L = num_layers`,
/// `D = 2` if bidirectional else `1`, `Hout = proj_size` if it is set, else `H`.
///
/// Besides PyTorch's arguments, the cell options of ONNX, Keras and cuDNN (each documented on
/// its builder method): [`direction`](RnnConfigBuilder::direction) (reverse-only),
/// [`merge`](RnnConfigBuilder::merge), [`peephole`](RnnConfigBuilder::peephole),
/// [`gate_clip`](RnnConfigBuilder::gate_clip), [`input_forget`](RnnConfigBuilder::input_forget),
/// [`linear_before_reset`](RnnConfigBuilder::linear_before_reset),
/// [`layer_norm`](RnnConfigBuilder::layer_norm) and
/// [`batch_first`](RnnConfigBuilder::batch_first). A backend that does not implement an option
/// a configuration sets refuses the plan with [`Error::Unsupported`] naming it; no backend
/// ignores one.
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
    direction: Direction,
    bias: bool,
    proj_size: usize,
    merge: Merge,
    peephole: bool,
    /// `f64::to_bits` of the clip threshold (0 for none), so that the configuration stays `Eq`
    /// and `Hash`.
    gate_clip_bits: u64,
    input_forget: bool,
    linear_before_reset: bool,
    layer_norm: bool,
    batch_first: bool,
    /// `f64::to_bits` of the dropout probability between layers (0 for none).
    dropout_bits: u64,
    /// `f64::to_bits` of the zoneout probability of the hidden state (0 for none).
    zoneout_bits: u64,
    /// `f64::to_bits` of the zoneout probability of an LSTM's cell state (0 for none).
    zoneout_cell_bits: u64,
    /// `f64::to_bits` of the recurrent (variational) dropout probability (0 for none).
    recurrent_dropout_bits: u64,
    /// `f64::to_bits` of the variational dropout probability of every layer's input (0 for
    /// none).
    input_dropout_bits: u64,
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
        RnnConfigBuilder {
            cfg: RnnConfig {
                cell,
                input_size,
                hidden_size,
                num_layers: 1,
                direction: Direction::Forward,
                bias: true,
                proj_size: 0,
                merge: Merge::Concat,
                peephole: false,
                gate_clip_bits: 0,
                input_forget: false,
                linear_before_reset: true,
                layer_norm: false,
                batch_first: false,
                dropout_bits: 0,
                zoneout_bits: 0,
                zoneout_cell_bits: 0,
                recurrent_dropout_bits: 0,
                input_dropout_bits: 0,
            },
        }
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
    /// Whether each layer runs a forward and a reverse direction, outputs merged by
    /// [`merge`](Self::merge).
    pub fn bidirectional(&self) -> bool {
        self.direction == Direction::Bidirectional
    }
    /// Which way the layers run.
    pub fn direction(&self) -> Direction {
        self.direction
    }
    /// Whether the single direction of a unidirectional stack is the reverse one.
    pub fn reverse_only(&self) -> bool {
        self.direction == Direction::Reverse
    }
    /// How a bidirectional layer's outputs are combined (always [`Merge::Concat`] for one
    /// direction, where there is nothing to merge).
    pub fn merge(&self) -> Merge {
        self.merge
    }
    /// LSTM peepholes: tensors `weight_peephole_l{k}` `[3, H]`, rows `i, f, o`.
    pub fn peephole(&self) -> bool {
        self.peephole
    }
    /// The gate pre-activation clip threshold, `None` for no clipping.
    pub fn gate_clip(&self) -> Option<f64> {
        let c = f64::from_bits(self.gate_clip_bits);
        (c > 0.0).then_some(c)
    }
    /// LSTM coupled input-forget gate (`f = 1 - i`).
    pub fn input_forget(&self) -> bool {
        self.input_forget
    }
    /// GRU: whether the reset gate multiplies the recurrent matmul's result (`true`, PyTorch and
    /// cuDNN) or its input (`false`, Cho et al. 2014). Always `true` for other cells.
    pub fn linear_before_reset(&self) -> bool {
        self.linear_before_reset
    }
    /// Layer-normalised LSTM or GRU (Haste's `LayerNormLSTM`, `LayerNormGRU`): see
    /// [`RnnConfigBuilder::layer_norm`].
    pub fn layer_norm(&self) -> bool {
        self.layer_norm
    }
    /// Whether `x`, `y` (and `dx`, `dy`) are `[B, T, ·]` instead of `[T, B, ·]`; states stay
    /// `[L·D, B, ·]`.
    pub fn batch_first(&self) -> bool {
        self.batch_first
    }
    /// The dropout probability on the output of every layer but the last in a training pass,
    /// `None` for none: see [`RnnConfigBuilder::dropout`].
    pub fn dropout(&self) -> Option<f64> {
        let p = f64::from_bits(self.dropout_bits);
        (p > 0.0).then_some(p)
    }
    /// The zoneout probability of the hidden state, `None` for none: see
    /// [`RnnConfigBuilder::zoneout`].
    pub fn zoneout(&self) -> Option<f64> {
        let z = f64::from_bits(self.zoneout_bits);
        (z > 0.0).then_some(z)
    }
    /// The zoneout probability of an LSTM's cell state, `None` for none: see
    /// [`RnnConfigBuilder::zoneout_cell`].
    pub fn zoneout_cell(&self) -> Option<f64> {
        let z = f64::from_bits(self.zoneout_cell_bits);
        (z > 0.0).then_some(z)
    }
    /// The recurrent (variational) dropout probability, `None` for none: see
    /// [`RnnConfigBuilder::recurrent_dropout`].
    pub fn recurrent_dropout(&self) -> Option<f64> {
        let p = f64::from_bits(self.recurrent_dropout_bits);
        (p > 0.0).then_some(p)
    }
    /// The variational dropout probability of every layer's input, `None` for none: see
    /// [`RnnConfigBuilder::input_dropout`].
    pub fn input_dropout(&self) -> Option<f64> {
        let p = f64::from_bits(self.input_dropout_bits);
        (p > 0.0).then_some(p)
    }
    /// The options of this configuration that differ from PyTorch's plain cells, by their
    /// names in case files (`direction=reverse`, `merge=sum`, `peephole`, `gate_clip`,
    /// `input_forget`, `linear_before_reset=false`, `layer_norm`, `batch_first`, `dropout`,
    /// `zoneout`, `zoneout_cell`, `recurrent_dropout`, `input_dropout`): what a backend checks against the
    /// options it implements.
    pub fn options(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.direction == Direction::Reverse {
            v.push("direction=reverse");
        }
        if self.merge == Merge::Sum {
            v.push("merge=sum");
        }
        if self.peephole {
            v.push("peephole");
        }
        if self.gate_clip().is_some() {
            v.push("gate_clip");
        }
        if self.input_forget {
            v.push("input_forget");
        }
        if !self.linear_before_reset {
            v.push("linear_before_reset=false");
        }
        if self.layer_norm {
            v.push("layer_norm");
        }
        if self.batch_first {
            v.push("batch_first");
        }
        if self.dropout().is_some() {
            v.push("dropout");
        }
        if self.zoneout().is_some() {
            v.push("zoneout");
        }
        if self.zoneout_cell().is_some() {
            v.push("zoneout_cell");
        }
        if self.recurrent_dropout().is_some() {
            v.push("recurrent_dropout");
        }
        if self.input_dropout().is_some() {
            v.push("input_dropout");
        }
        v
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
        if self.bidirectional() {
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
    /// The features per step of the output `y` (and of every layer's output): `D·Hout`, or
    /// `Hout` with [`Merge::Sum`].
    pub fn output_size(&self) -> usize {
        match self.merge {
            Merge::Concat => self.num_directions() * self.hidden_out_size(),
            Merge::Sum => self.hidden_out_size(),
        }
    }
    /// Input features of layer `layer`: `I` for layer 0, [`output_size`](Self::output_size)
    /// above.
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
    /// Bidirectional layers, outputs concatenated forward then reverse (default false): the same
    /// as [`direction`](Self::direction) `Bidirectional` (`true`) or `Forward` (`false`).
    pub fn bidirectional(mut self, yes: bool) -> Self {
        self.cfg.direction = if yes { Direction::Bidirectional } else { Direction::Forward };
        self
    }
    /// Which way the layers run (default [`Direction::Forward`]); ONNX's `direction`.
    pub fn direction(mut self, d: Direction) -> Self {
        self.cfg.direction = d;
        self
    }
    /// How bidirectional outputs are combined (default [`Merge::Concat`]); Keras `merge_mode`.
    /// [`Merge::Sum`] needs [`Direction::Bidirectional`].
    pub fn merge(mut self, m: Merge) -> Self {
        self.cfg.merge = m;
        self
    }
    /// LSTM peephole connections (default false; ONNX's `P` input): `i` and `f` add
    /// `p_i ⊙ c_{t-1}`, `p_f ⊙ c_{t-1}` to their pre-activations, `o` adds `p_o ⊙ c_t`, with the
    /// per-unit weights of the tensor `weight_peephole_l{k}` `[3, H]` (rows `i, f, o`). As in
    /// onnxruntime, the peephole terms are added after the biases and before any clip.
    pub fn peephole(mut self, yes: bool) -> Self {
        self.cfg.peephole = yes;
        self
    }
    /// Clips every gate pre-activation to `[-clip, clip]` before its activation, as
    /// onnxruntime applies ONNX's `clip` attribute (default 0: none). Any cell. Must be finite
    /// and not negative.
    ///
    /// The clipped value is the whole pre-activation (input and recurrent parts, both biases,
    /// and an LSTM's peephole term); the clip is converted to the element type first (f32:
    /// `clip as f32`). With [`input_forget`](Self::input_forget), `f = 1 - i` is not clipped
    /// again. Backward: the gradient through the clamp is zero where it was active. Backward
    /// reads the saved activations, not the pre-activations, so a gate counts as clipped when
    /// its saved activation equals the activation of `clip` or `-clip` (computed by the same
    /// kernel, in the same type): a pre-activation exactly at `±clip` counts as clipped, and so
    /// does one just inside whose activation rounds to the same value.
    pub fn gate_clip(mut self, clip: f64) -> Self {
        // -0.0 is 0: no clipping.
        self.cfg.gate_clip_bits = if clip == 0.0 { 0 } else { clip.to_bits() };
        self
    }
    /// Dropout between layers with probability `p` (default 0: none), PyTorch's `dropout`
    /// argument of `nn.LSTM`/`GRU`/`RNN`: in a training pass
    /// ([`forward_training`](crate::Backend::forward_training)), each element of the output of
    /// every layer but the last is zeroed with probability `p` before the next layer reads it,
    /// and the others are scaled by `1/(1-p)`; inference ignores it, and `y` (the last layer's
    /// output) and `hn`, `cn` are never dropped. The masks come from the call's
    /// [`ForwardInput::masks`](crate::ForwardInput::masks) ([`MaskStream`](crate::masks::MaskStream),
    /// kind [`LayerOutput`](crate::masks::MaskKind::LayerOutput), direction 0, the layer whose
    /// output is dropped, units `0..D·Hout` of each row), and backward regenerates them: the
    /// reserve keeps the stream, not the masks. `p` must be in `[0, 1)`. With one layer it has
    /// no effect (as in PyTorch).
    pub fn dropout(mut self, p: f64) -> Self {
        // -0.0 is 0: no dropout.
        self.cfg.dropout_bits = if p == 0.0 { 0 } else { p.to_bits() };
        self
    }
    /// Zoneout of the hidden state with probability `z` (default 0: none; Krueger et al. 2017,
    /// Haste's `zoneout`): in a training pass ([`forward_training`](crate::Backend::forward_training)),
    /// each unit of each row's new hidden state keeps its previous value with probability `z`
    /// at every step, `h_t = h_{t-1}` where zoned out, else the cell's `h_t`; in inference, the
    /// expectation `h_t = z·h_{t-1} + (1-z)·h_t`. The zoned state is what the next step reads,
    /// what the layer outputs, and `hn`; every layer and direction has its own masks. The masks come
    /// from the call's [`ForwardInput::masks`](crate::ForwardInput::masks)
    /// ([`MaskStream`](crate::masks::MaskStream), kind
    /// [`ZoneoutH`](crate::masks::MaskKind::ZoneoutH), the layer and direction, units
    /// `0..Hout`), and backward regenerates them. Rows past their length keep their state as
    /// always (no mask is drawn for them). `z` must be in `[0, 1)`.
    pub fn zoneout(mut self, z: f64) -> Self {
        self.cfg.zoneout_bits = if z == 0.0 { 0 } else { z.to_bits() };
        self
    }
    /// Zoneout of an LSTM's cell state with probability `z` (default 0: none): as
    /// [`zoneout`](Self::zoneout), with masks of kind
    /// [`ZoneoutC`](crate::masks::MaskKind::ZoneoutC) over units `0..H`, on `c`: `c_t = c_{t-1}`
    /// where zoned out. The hidden state is computed from the cell's new `c` before zoneout,
    /// `o ⊙ tanh(c_new)` (Krueger et al.), and the zoned `c_t` is what the next step reads and
    /// `cn`. LSTM only; `z` in `[0, 1)`.
    pub fn zoneout_cell(mut self, z: f64) -> Self {
        self.cfg.zoneout_cell_bits = if z == 0.0 { 0 } else { z.to_bits() };
        self
    }
    /// Recurrent (variational) dropout with probability `p` (default 0: none; Gal and
    /// Ghahramani 2016, Keras's `recurrent_dropout` with its default one mask for all gates): in
    /// a training pass, the hidden state that enters the recurrent product is
    /// `h_{t-1} ⊙ m / (1-p)`, with one mask `m` per sequence, layer and direction, the same at
    /// every step, so `W_hh` sees the dropped state while the state itself (the output, `hn`,
    /// and a GRU's `z ⊙ h_{t-1}` term) is not dropped; inference ignores it. The masks come from
    /// the call's [`ForwardInput::masks`](crate::ForwardInput::masks) (kind
    /// [`RecurrentH`](crate::masks::MaskKind::RecurrentH), step 0, the layer and direction,
    /// units `0..Hout`), and backward regenerates them. Not with a GRU whose reset gate comes
    /// before the matmul (`linear_before_reset(false)`). `p` in `[0, 1)`.
    pub fn recurrent_dropout(mut self, p: f64) -> Self {
        self.cfg.recurrent_dropout_bits = if p == 0.0 { 0 } else { p.to_bits() };
        self
    }
    /// Variational dropout of every layer's input with probability `p` (default 0: none; Gal
    /// and Ghahramani 2016, Keras's `dropout` argument of `LSTM`/`GRU`/`SimpleRNN`): in a
    /// training pass, layer `l` (and each of its directions) reads its input as `x_t ⊙ m / (1-p)`,
    /// with one mask `m` per sequence, layer and direction over the input's features, the same
    /// at every step. The first layer's input is `x`; a later layer's is the layer below's
    /// output (after [`dropout`](Self::dropout) between layers, when both are set). Only
    /// `W_ih`'s product sees the dropped input; inference ignores it. The masks come from the
    /// call's [`ForwardInput::masks`](crate::ForwardInput::masks) (kind
    /// [`LayerInput`](crate::masks::MaskKind::LayerInput), step 0, the layer and direction,
    /// units `0..` the layer's input size), and backward regenerates them. `p` in `[0, 1)`.
    pub fn input_dropout(mut self, p: f64) -> Self {
        self.cfg.input_dropout_bits = if p == 0.0 { 0 } else { p.to_bits() };
        self
    }
    /// LSTM coupled input and forget gates (default false; ONNX `input_forget`): `f = 1 - i`;
    /// the forget gate's weights, biases and peephole weights stay in the layout, are not read
    /// and get zero gradients, and the input gate's gradient gains the path through `f`.
    pub fn input_forget(mut self, yes: bool) -> Self {
        self.cfg.input_forget = yes;
        self
    }
    /// GRU only (default true, PyTorch and cuDNN): `false` applies the reset gate before the
    /// recurrent matmul, `n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)` (Cho et al. 2014,
    /// ONNX `linear_before_reset=0`, Keras `reset_after=False`).
    pub fn linear_before_reset(mut self, yes: bool) -> Self {
        self.cfg.linear_before_reset = yes;
        self
    }
    /// Layer normalisation inside an LSTM or GRU cell, with Haste's semantics (`LayerNormLSTM`,
    /// `LayerNormGRU`; default false). Each layer-direction gains gains (and, for the LSTM's cell
    /// state, a bias) that [`ParamLayout`](crate::ParamLayout) names `weight_ln_ih_l{k}`,
    /// `weight_ln_hh_l{k}` (`[G·H]`) and, LSTM only, `weight_ln_c_l{k}`, `bias_ln_c_l{k}` (`[H]`).
    ///
    /// With `LN(v; γ, β) = γ ⊙ (v - mean(v)) / sqrt(var(v) + 1e-5) + β` over a row `v` (the
    /// biased variance, ε = 1e-5 as in Haste and `torch.nn.LayerNorm`):
    ///
    /// - the input and recurrent products are normalised each over its whole row of `G·H`
    ///   values (all gates together), gain only, before their biases: the gate pre-activations
    ///   are `LN(W_ih x; γ_ih) + b_ih + LN(W_hh h_{t-1}; γ_hh) + b_hh` (GRU: the `n` gate's
    ///   recurrent part `LN(W_hh h; γ_hh)_n + b_hn` is what the reset gate multiplies);
    /// - LSTM: the cell state is normalised before the output activation,
    ///   `h = o ⊙ tanh(LN(c_t; γ_c, β_c))`; the recurrence carries the raw `c_t`, and a peephole
    ///   on `o` reads the raw `c_t` too.
    ///
    /// The other options apply on top: peepholes are added to the normalised pre-activations,
    /// then the clip. Not for the RNN cells, nor the GRU with the reset gate before the recurrent
    /// matmul ([`linear_before_reset`](Self::linear_before_reset) false), which Haste does not
    /// define. [`Params::init_uniform`](crate::Params::init_uniform) sets the gains to 1 and the
    /// bias to 0, as Haste and `torch.nn.LayerNorm` do.
    pub fn layer_norm(mut self, yes: bool) -> Self {
        self.cfg.layer_norm = yes;
        self
    }
    /// `x` and `y` batch-major, `[B, T, ·]` (PyTorch `batch_first=True`; default false).
    pub fn batch_first(mut self, yes: bool) -> Self {
        self.cfg.batch_first = yes;
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
        if c.merge == Merge::Sum && c.direction != Direction::Bidirectional {
            return Err(Error::invalid("merge", format!("concat for a {} stack (sum merges two directions)", c.direction), "sum"));
        }
        if c.peephole && c.cell != CellKind::Lstm {
            return Err(Error::invalid("peephole", format!("false for cell {} (peepholes are LSTM only)", c.cell), true));
        }
        if c.input_forget && c.cell != CellKind::Lstm {
            return Err(Error::invalid("input_forget", format!("false for cell {} (it couples an LSTM's gates)", c.cell), true));
        }
        if !c.linear_before_reset && c.cell != CellKind::Gru {
            return Err(Error::invalid("linear_before_reset", format!("true for cell {} (the option is GRU only)", c.cell), false));
        }
        if c.layer_norm && !matches!(c.cell, CellKind::Lstm | CellKind::Gru) {
            return Err(Error::invalid("layer_norm", format!("false for cell {} (layer normalisation is for LSTM and GRU)", c.cell), true));
        }
        if c.layer_norm && !c.linear_before_reset {
            return Err(Error::invalid(
                "layer_norm",
                "false with linear_before_reset=false (the layer-normalised GRU applies the reset gate after the recurrent matmul)",
                true,
            ));
        }
        let clip = f64::from_bits(c.gate_clip_bits);
        if !(clip.is_finite() && clip >= 0.0) {
            return Err(Error::invalid("gate_clip", "a finite threshold, 0 (none) or more", clip));
        }
        let p = f64::from_bits(c.dropout_bits);
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("dropout", "a probability in [0, 1)", p));
        }
        for (name, bits) in [
            ("zoneout", c.zoneout_bits),
            ("zoneout_cell", c.zoneout_cell_bits),
            ("recurrent_dropout", c.recurrent_dropout_bits),
            ("input_dropout", c.input_dropout_bits),
        ] {
            let z = f64::from_bits(bits);
            if !(0.0..1.0).contains(&z) {
                return Err(Error::invalid(name, "a probability in [0, 1)", z));
            }
        }
        if c.recurrent_dropout_bits != 0 && !c.linear_before_reset {
            return Err(Error::invalid(
                "recurrent_dropout",
                "0 with linear_before_reset=false (its recurrent product is of r ⊙ h_prev)",
                f64::from_bits(c.recurrent_dropout_bits),
            ));
        }
        if c.zoneout_cell_bits != 0 && c.cell != CellKind::Lstm {
            return Err(Error::invalid(
                "zoneout_cell",
                format!("0 for cell {} (the cell state is an LSTM's)", c.cell),
                f64::from_bits(c.zoneout_cell_bits),
            ));
        }
        if c.num_layers > RnnConfig::MAX_NUM_LAYERS {
            let tensors = (c.num_layers as u128) * (c.num_directions() as u128) * (crate::params::ParamKind::ALL.len() as u128);
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
        let out_w = if self.merge == Merge::Sum { hout } else { d.saturating_mul(hout) };
        let gh = g * h;
        // Per layer-direction: the tensors that do not depend on the layer's input width.
        let recurrent = gh.saturating_mul(hout).saturating_add(if self.bias { 2 * gh } else { 0 }).saturating_add(if self.proj_size > 0 {
            hout.saturating_mul(h)
        } else {
            0
        });
        let recurrent = recurrent.saturating_add(if self.peephole { 3 * h } else { 0 });
        let recurrent =
            recurrent.saturating_add(if self.layer_norm { 2 * gh + if self.cell == CellKind::Lstm { 2 * h } else { 0 } } else { 0 });
        let first = gh.saturating_mul(i).saturating_add(recurrent);
        let upper = gh.saturating_mul(out_w).saturating_add(recurrent);
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
