//! The one description of a recurrent cell that every backend's time loop and kernels read: its
//! kind and its options, with the sizes they imply. A new option (peepholes, clipping, layer
//! normalisation, a dropout mask) is a field here, read by one code path per backend, instead of
//! a new argument threaded through every driver and kernel.

use crate::config::{CellKind, RnnConfig};

/// A cell of a stack: kind and options, the same for every layer and direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cell {
    /// LSTM, GRU, RNN tanh or relu.
    pub kind: CellKind,
    /// `H`, the width of each gate (and of an LSTM's cell state).
    pub hidden: usize,
    /// `Hout`: `proj_size` for an LSTM with projection, else `H`.
    pub hidden_out: usize,
    /// Whether the stack has biases (`b_ih`, `b_hh`).
    pub bias: bool,
    /// LSTM peepholes (`weight_peephole`, `[3, H]`, rows `i, f, o`).
    pub peephole: bool,
    /// Gate pre-activation clip threshold; 0 for none.
    pub clip: f64,
    /// LSTM coupled input-forget gate, `f = 1 - i`.
    pub input_forget: bool,
    /// GRU: reset gate applied after the recurrent matmul (PyTorch, cuDNN) if true, before it
    /// (Cho) if false. True for the other cells.
    pub linear_before_reset: bool,
    /// Layer-normalised LSTM or GRU (Haste's semantics; see
    /// [`RnnConfigBuilder::layer_norm`](crate::RnnConfigBuilder::layer_norm)).
    pub layer_norm: bool,
    /// LSTM with zoneout of the cell state: a training pass saves the cell's new `c` before
    /// zoneout (`c_new`) beside the zoned one.
    pub zoneout_cell: bool,
}

impl Cell {
    /// The cell of `config`.
    pub fn of(config: &RnnConfig) -> Cell {
        Cell {
            kind: config.cell(),
            hidden: config.hidden_size(),
            hidden_out: config.hidden_out_size(),
            bias: config.bias(),
            peephole: config.peephole(),
            clip: config.gate_clip().unwrap_or(0.0),
            input_forget: config.input_forget(),
            linear_before_reset: config.linear_before_reset(),
            layer_norm: config.layer_norm(),
            zoneout_cell: config.zoneout_cell().is_some(),
        }
    }

    /// `G`: 4 for an LSTM, 3 for a GRU, 1 for an RNN.
    pub fn gates(&self) -> usize {
        self.kind.gates()
    }

    /// `G·H`: the width of a step's gate pre-activations.
    pub fn gate_width(&self) -> usize {
        self.gates() * self.hidden
    }

    /// An LSTM: it carries a cell state `c` beside `h`.
    pub fn is_lstm(&self) -> bool {
        self.kind == CellKind::Lstm
    }

    /// A GRU: it saves `W_hn h_prev + b_hn` (the recurrent part of its new gate) for backward.
    pub fn is_gru(&self) -> bool {
        self.kind == CellKind::Gru
    }

    /// An LSTM with projection: `h = W_hr · m`, with `m = o ⊙ tanh(c)` saved for backward.
    pub fn projected(&self) -> bool {
        self.hidden_out != self.hidden
    }

    /// Element counts of what a training pass saves for one layer-direction over `t` steps of `b`
    /// rows (zero for what this cell does not save).
    pub fn saved_sizes(&self, t: usize, b: usize) -> Saved<usize> {
        let tb = t * b;
        let (ln, ln_c) = (self.layer_norm, self.layer_norm && self.is_lstm());
        Saved {
            gates: tb * self.gate_width(),
            extra: if self.is_gru() { tb * self.hidden } else { 0 },
            c: if self.is_lstm() { tb * self.hidden } else { 0 },
            m: if self.projected() { tb * self.hidden } else { 0 },
            h: tb * self.hidden_out,
            ln_x: if ln { tb * self.gate_width() } else { 0 },
            ln_h: if ln { tb * self.gate_width() } else { 0 },
            ln_c: if ln_c { tb * self.hidden } else { 0 },
            rstd_x: if ln { tb } else { 0 },
            rstd_h: if ln { tb } else { 0 },
            rstd_c: if ln_c { tb } else { 0 },
            c_new: if self.zoneout_cell { tb * self.hidden } else { 0 },
        }
    }
}

/// What a training forward pass saves for one layer-direction, each `[T, B, *]` in time order
/// whatever the direction. `M` is a backend's buffer (a host `Vec`, a device allocation), or
/// `usize` for the element counts ([`Cell::saved_sizes`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Saved<M> {
    /// `[T, B, G·H]`: activated gates.
    pub gates: M,
    /// `[T, B, H]`: GRU's `W_hn h_prev + b_hn` (with the reset gate before the recurrent
    /// matmul, `r ⊙ h_prev`: the operand of `W_hn`'s weight gradient); empty for other cells.
    pub extra: M,
    /// `[T, B, H]`: LSTM cell state after each step; empty for other cells.
    pub c: M,
    /// `[T, B, H]`: LSTM's `o·tanh(c)` before the projection; empty without projection.
    pub m: M,
    /// `[T, B, Hout]`: hidden state after each step (kept, not zeroed, past a length).
    pub h: M,
    /// `[T, B, G·H]` (layer norm): the input product `W_ih x` normalised, `(v - mean) · rstd`,
    /// before its gain.
    pub ln_x: M,
    /// `[T, B, G·H]` (layer norm): the recurrent product `W_hh h_prev` normalised, before its
    /// gain.
    pub ln_h: M,
    /// `[T, B, H]` (layer-normalised LSTM): the cell state normalised, before its gain and bias.
    pub ln_c: M,
    /// `[T, B]` (layer norm): `1 / sqrt(var + ε)` of each row of the input product.
    pub rstd_x: M,
    /// `[T, B]` (layer norm): the same of the recurrent product.
    pub rstd_h: M,
    /// `[T, B]` (layer-normalised LSTM): the same of the cell state.
    pub rstd_c: M,
    /// `[T, B, H]` (LSTM with zoneout of the cell state): the cell's new `c` before zoneout
    /// (`c` holds the zoned one, which the next step reads).
    pub c_new: M,
}

/// The number of buffers of a [`Saved`].
pub(crate) const SAVED_BUFFERS: usize = 12;

impl<M> Saved<M> {
    /// The buffers, in a fixed order (gates, extra, c, m, h, ln_x, ln_h, ln_c, rstd_x, rstd_h,
    /// rstd_c, c_new).
    // The CUDA driver's views of a reserve and the host reserve's size; the host driver reads
    // the fields by name.
    pub fn each(&self) -> [&M; SAVED_BUFFERS] {
        [
            &self.gates,
            &self.extra,
            &self.c,
            &self.m,
            &self.h,
            &self.ln_x,
            &self.ln_h,
            &self.ln_c,
            &self.rstd_x,
            &self.rstd_h,
            &self.rstd_c,
            &self.c_new,
        ]
    }

    /// The buffers, mutably, in the order of [`each`](Self::each).
    pub fn each_mut(&mut self) -> [&mut M; SAVED_BUFFERS] {
        [
            &mut self.gates,
            &mut self.extra,
            &mut self.c,
            &mut self.m,
            &mut self.h,
            &mut self.ln_x,
            &mut self.ln_h,
            &mut self.ln_c,
            &mut self.rstd_x,
            &mut self.rstd_h,
            &mut self.rstd_c,
            &mut self.c_new,
        ]
    }

    /// The buffers of an array in the order of [`each`](Self::each).
    pub fn from_array(a: [M; SAVED_BUFFERS]) -> Saved<M> {
        let [gates, extra, c, m, h, ln_x, ln_h, ln_c, rstd_x, rstd_h, rstd_c, c_new] = a;
        Saved { gates, extra, c, m, h, ln_x, ln_h, ln_c, rstd_x, rstd_h, rstd_c, c_new }
    }

    /// The buffers as an array in the order of [`each`](Self::each).
    pub fn into_array(self) -> [M; SAVED_BUFFERS] {
        let Saved { gates, extra, c, m, h, ln_x, ln_h, ln_c, rstd_x, rstd_h, rstd_c, c_new } = self;
        [gates, extra, c, m, h, ln_x, ln_h, ln_c, rstd_x, rstd_h, rstd_c, c_new]
    }

    /// Each buffer through `f`, called in the order of [`each`](Self::each): e.g. element
    /// counts to buffers, or buffers to views of them.
    pub fn map<N>(self, f: impl FnMut(M) -> N) -> Saved<N> {
        Saved::from_array(self.into_array().map(f))
    }

    /// The buffers, borrowed mutably, as one `Saved` (then [`map`](Self::map) them to views).
    pub fn as_mut(&mut self) -> Saved<&mut M> {
        Saved::from_array(self.each_mut())
    }
}

impl Saved<usize> {
    /// Pairs each buffer of `bufs` with its element count.
    pub fn zip<'a, M>(&self, bufs: &'a mut Saved<M>) -> [(&'a mut M, usize); SAVED_BUFFERS] {
        let mut n = self.into_array().into_iter();
        bufs.each_mut().map(|b| (b, n.next().unwrap_or(0)))
    }
}
