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
        Saved {
            gates: tb * self.gate_width(),
            extra: if self.is_gru() { tb * self.hidden } else { 0 },
            c: if self.is_lstm() { tb * self.hidden } else { 0 },
            m: if self.projected() { tb * self.hidden } else { 0 },
            h: tb * self.hidden_out,
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
}

impl<M> Saved<M> {
    /// The five buffers, in a fixed order (gates, extra, c, m, h).
    // The CUDA driver's views of a reserve; the host driver reads the fields by name.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn each(&self) -> [&M; 5] {
        [&self.gates, &self.extra, &self.c, &self.m, &self.h]
    }

    /// The five buffers, mutably, in the order of [`each`](Self::each).
    pub fn each_mut(&mut self) -> [&mut M; 5] {
        [&mut self.gates, &mut self.extra, &mut self.c, &mut self.m, &mut self.h]
    }

    /// Each buffer through `f`, called in the order of [`each`](Self::each): e.g. element
    /// counts to buffers, or buffers to views of them.
    pub fn map<N>(self, mut f: impl FnMut(M) -> N) -> Saved<N> {
        Saved { gates: f(self.gates), extra: f(self.extra), c: f(self.c), m: f(self.m), h: f(self.h) }
    }

    /// The five buffers, borrowed mutably, as one `Saved` (then [`map`](Self::map) them to
    /// views).
    pub fn as_mut(&mut self) -> Saved<&mut M> {
        Saved { gates: &mut self.gates, extra: &mut self.extra, c: &mut self.c, m: &mut self.m, h: &mut self.h }
    }
}

impl Saved<usize> {
    /// Pairs each buffer of `bufs` with its element count.
    pub fn zip<'a, M>(&self, bufs: &'a mut Saved<M>) -> [(&'a mut M, usize); 5] {
        let [g, e, c, m, h] = bufs.each_mut();
        [(g, self.gates), (e, self.extra), (c, self.c), (m, self.m), (h, self.h)]
    }
}
