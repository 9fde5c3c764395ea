//! One step of a cell over the batch, row by row: the masking of rows past their length, written
//! once for every cell, around the cell's maths on one valid row ([`RowForward`],
//! [`RowBackward`]).
//!
//! A row past its length (inactive) keeps its cell state and gets zero gates, zero GRU `extra`
//! and zero gradients; its incoming `dc` passes through unchanged.

use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

/// One valid row of a forward step ([`CellForward`] cut to row `b`). Widths use `G` gates and
/// hidden size `H`.
pub(super) struct RowForward<'a, T> {
    /// `H`.
    pub hidden: usize,
    /// `[G·H]`: `W_ih x + b_ih`.
    pub xg: &'a [T],
    /// `[G·H]`: `W_hh h_prev`, without bias.
    pub hg: &'a [T],
    /// `[G·H]`: `b_hh`, if the stack has biases.
    pub b_hh: Option<&'a [T]>,
    /// `[Hout]`: the previous hidden state.
    pub h_prev: &'a [T],
    /// `[H]` (LSTM; empty otherwise): the previous cell state.
    pub c_prev: &'a [T],
    /// `[G·H]` out: activated gates.
    pub gates: &'a mut [T],
    /// `[H]` out (GRU; empty otherwise): `W_hn h_prev + b_hn`.
    pub extra: &'a mut [T],
    /// `[H]` out (LSTM; empty otherwise): the new cell state.
    pub c: &'a mut [T],
    /// `[H]` out: the new hidden output before any projection.
    pub m: &'a mut [T],
}

/// One valid row of a backward step ([`CellBackward`] cut to row `b`).
pub(super) struct RowBackward<'a, T> {
    /// `H`.
    pub hidden: usize,
    /// `[G·H]`: the saved gates.
    pub gates: &'a [T],
    /// `[H]` (GRU; empty otherwise): the saved `W_hn h_prev + b_hn`.
    pub extra: &'a [T],
    /// `[H]` (LSTM; empty otherwise): the saved new cell state.
    pub c: &'a [T],
    /// `[H]` (LSTM; empty otherwise): the previous cell state.
    pub c_prev: &'a [T],
    /// `[H]` (GRU; empty otherwise): the previous hidden state.
    pub h_prev: &'a [T],
    /// `[H]`: the gradient w.r.t. `m`.
    pub dm: &'a [T],
    /// `[H]` in/out (LSTM; empty otherwise): the gradient w.r.t. the new cell state, replaced
    /// by the gradient w.r.t. `c_prev`.
    pub dc: &'a mut [T],
    /// `[G·H]` out: the gradient w.r.t. the input-side pre-activations.
    pub dgi: &'a mut [T],
    /// `[G·H]` out: the gradient w.r.t. the hidden-side pre-activations.
    pub dgh: &'a mut [T],
    /// `[H]` out: the part of `dh_prev` that does not go through `W_hh`; zero when the cell
    /// leaves it.
    pub dh_direct: &'a mut [T],
}

/// Row `b` of `s: [B, w]` (`rows = B`; an empty `s` gives empty rows).
fn row<T>(s: &[T], b: usize, rows: usize) -> &[T] {
    let w = s.len() / rows;
    &s[b * w..(b + 1) * w]
}

/// [`row`], mutable.
fn row_mut<T>(s: &mut [T], b: usize, rows: usize) -> &mut [T] {
    let w = s.len() / rows;
    &mut s[b * w..(b + 1) * w]
}

/// Runs `cell` on every valid row of `s`; masks the others.
pub(super) fn forward<T: Float>(s: CellForward<'_, T>, cell: impl Fn(RowForward<'_, T>)) {
    let n = s.active.len();
    for (b, &active) in s.active.iter().enumerate() {
        let r = RowForward {
            hidden: s.hidden,
            xg: row(s.xg, b, n),
            hg: row(s.hg, b, n),
            b_hh: s.b_hh,
            h_prev: row(s.h_prev, b, n),
            c_prev: row(s.c_prev, b, n),
            gates: row_mut(s.gates, b, n),
            extra: row_mut(s.extra, b, n),
            c: row_mut(s.c, b, n),
            m: row_mut(s.m, b, n),
        };
        if active {
            cell(r);
        } else {
            r.gates.fill(T::ZERO);
            r.extra.fill(T::ZERO);
            r.c.copy_from_slice(r.c_prev);
        }
    }
}

/// Runs `cell` on every valid row of `s`; masks the others.
pub(super) fn backward<T: Float>(s: CellBackward<'_, T>, cell: impl Fn(RowBackward<'_, T>)) {
    let n = s.active.len();
    for (b, &active) in s.active.iter().enumerate() {
        let r = RowBackward {
            hidden: s.hidden,
            gates: row(s.gates, b, n),
            extra: row(s.extra, b, n),
            c: row(s.c, b, n),
            c_prev: row(s.c_prev, b, n),
            h_prev: row(s.h_prev, b, n),
            dm: row(s.dm, b, n),
            dc: row_mut(s.dc, b, n),
            dgi: row_mut(s.dgi, b, n),
            dgh: row_mut(s.dgh, b, n),
            dh_direct: row_mut(s.dh_direct, b, n),
        };
        r.dh_direct.fill(T::ZERO);
        if active {
            cell(r);
        } else {
            r.dgi.fill(T::ZERO);
            r.dgh.fill(T::ZERO);
        }
    }
}
