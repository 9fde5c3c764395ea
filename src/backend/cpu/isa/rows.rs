//! A cell step, row by row, for every ISA: the length checks the kernels rely on, the inactive
//! rows (handled here exactly as the reference handles them), and the active rows, each handed
//! to the ISA's kernel of the cell ([`Kernels::lstm_forward`], …).
//!
//! Bounds: [`forward`] and [`backward`] assert once per step that every slice the cell uses has
//! its documented length (`[B, G·H]`, `[B, H]`, `[G·H]`, overflow checked), then cut each row by
//! safe slicing, so a kernel is given rows of exactly the lengths [`FwdRow`] and [`BwdRow`]
//! document and needs no check of its own (only `debug_assert!`s on its raw loads and stores).
//! Slices a cell does not use are neither checked nor read.

use super::Kernels;
use crate::backend::host::{CellBackward, CellForward};
use crate::config::CellKind;

/// One active row of a forward step: `G` gates of `H = h` units. A slice the cell does not use
/// is empty.
pub(crate) struct FwdRow<'a> {
    pub h: usize,
    /// `[G·H]`: `W_ih x + b_ih`.
    pub xg: &'a [f32],
    /// `[G·H]`: `W_hh h_prev`.
    pub hg: &'a [f32],
    /// `[G·H]`, if the stack has biases.
    pub b_hh: Option<&'a [f32]>,
    /// `[H]`, GRU.
    pub h_prev: &'a [f32],
    /// `[H]`, LSTM.
    pub c_prev: &'a [f32],
    /// `[G·H]` out: the activated gates (RNN: the new hidden state).
    pub gates: &'a mut [f32],
    /// `[H]` out, GRU: `W_hn h_prev + b_hn`.
    pub extra: &'a mut [f32],
    /// `[H]` out, LSTM: the new cell state.
    pub c: &'a mut [f32],
    /// `[H]` out: the new hidden output.
    pub m: &'a mut [f32],
}

/// One active row of a backward step (see [`CellBackward`] for what each buffer holds).
pub(crate) struct BwdRow<'a> {
    pub h: usize,
    /// `[G·H]`: the gates saved by forward.
    pub gates: &'a [f32],
    /// `[H]`, GRU.
    pub extra: &'a [f32],
    /// `[H]`, LSTM.
    pub c: &'a [f32],
    /// `[H]`, LSTM.
    pub c_prev: &'a [f32],
    /// `[H]`, GRU.
    pub h_prev: &'a [f32],
    /// `[H]`: the gradient of the hidden output.
    pub dm: &'a [f32],
    /// `[H]` in/out, LSTM: the gradient of `c`, replaced by that of `c_prev`.
    pub dc: &'a mut [f32],
    /// `[G·H]` out.
    pub dgi: &'a mut [f32],
    /// `[G·H]` out.
    pub dgh: &'a mut [f32],
    /// `[H]` out, written by GRU only (zeroed here for the others).
    pub dh_direct: &'a mut [f32],
}

/// Values per row of a step's buffers: `g = G·H`, `h = H`, `c = H` for an LSTM's cell-state
/// buffers (else 0: not used), `x = H` for a GRU's `h_prev` and `extra` (else 0).
#[derive(Clone, Copy)]
struct Widths {
    g: usize,
    h: usize,
    c: usize,
    x: usize,
}

impl Widths {
    fn of(cell: CellKind, hidden: usize) -> Widths {
        let g = cell.gates().checked_mul(hidden).unwrap_or_else(|| panic!("{cell:?} cell kernel: H = {hidden} overflows usize"));
        let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
        Widths { g, h: hidden, c: if lstm { hidden } else { 0 }, x: if gru { hidden } else { 0 } }
    }
}

/// Panics unless each `lens[i]` is `rows·widths[i]`, for the buffers a cell uses (width > 0).
fn check_lens<const N: usize>(cell: CellKind, rows: usize, names: [&str; N], lens: [usize; N], widths: [usize; N]) {
    for ((name, len), width) in names.into_iter().zip(lens).zip(widths) {
        let Some(want) = rows.checked_mul(width) else { panic!("{cell:?} cell kernel: B = {rows} rows of {width} overflow usize") };
        assert!(width == 0 || len == want, "{cell:?} cell kernel: `{name}` has {len} values, expected {want}");
    }
}

/// Row `b` of `s`, rows `w` wide.
fn row(s: &[f32], b: usize, w: usize) -> &[f32] {
    &s[b * w..(b + 1) * w]
}

fn row_mut(s: &mut [f32], b: usize, w: usize) -> &mut [f32] {
    &mut s[b * w..(b + 1) * w]
}

/// The forward step of `cell` with `k`'s kernels; panics if a slice `cell` uses does not have
/// its documented length.
pub(crate) fn forward<K: Kernels>(k: K, cell: CellKind, s: CellForward<'_, f32>) {
    let CellForward { active, hidden, xg, hg, b_hh, h_prev, c_prev, gates, extra, c, m } = s;
    let Widths { g, h, c: wc, x } = Widths::of(cell, hidden);
    let names = ["xg", "hg", "h_prev", "c_prev", "gates", "extra", "c", "m"];
    let lens = [xg.len(), hg.len(), h_prev.len(), c_prev.len(), gates.len(), extra.len(), c.len(), m.len()];
    check_lens(cell, active.len(), names, lens, [g, g, x, wc, g, x, wc, h]);
    check_lens(cell, 1, ["b_hh"], [b_hh.map_or(g, <[f32]>::len)], [g]);
    for (b, &on) in active.iter().enumerate() {
        let r = FwdRow {
            h,
            xg: row(xg, b, g),
            hg: row(hg, b, g),
            b_hh,
            h_prev: row(h_prev, b, x),
            c_prev: row(c_prev, b, wc),
            gates: row_mut(gates, b, g),
            extra: row_mut(extra, b, x),
            c: row_mut(c, b, wc),
            m: row_mut(m, b, h),
        };
        if !on {
            // As the reference: no gates, the cell state kept; `m` is the driver's to keep.
            r.gates.fill(0.0);
            r.extra.fill(0.0);
            r.c.copy_from_slice(r.c_prev);
            continue;
        }
        // SAFETY: every slice of `r` was cut at the width FwdRow documents for `cell`, from a
        // buffer of B such rows (checked above), and b_hh has G·H values; `k` proves its ISA.
        unsafe {
            match cell {
                CellKind::Lstm => k.lstm_forward(r),
                CellKind::Gru => k.gru_forward(r),
                CellKind::RnnTanh => k.rnn_forward::<false>(r),
                CellKind::RnnRelu => k.rnn_forward::<true>(r),
            }
        }
    }
}

/// The backward step of `cell` with `k`'s kernels; panics as [`forward`].
pub(crate) fn backward<K: Kernels>(k: K, cell: CellKind, s: CellBackward<'_, f32>) {
    let CellBackward { active, hidden, gates, extra, c, c_prev, h_prev, dm, dc, dgi, dgh, dh_direct } = s;
    let Widths { g, h, c: wc, x } = Widths::of(cell, hidden);
    let names = ["gates", "extra", "c", "c_prev", "h_prev", "dm", "dc", "dgi", "dgh", "dh_direct"];
    let lens = [gates.len(), extra.len(), c.len(), c_prev.len(), h_prev.len(), dm.len(), dc.len(), dgi.len(), dgh.len(), dh_direct.len()];
    check_lens(cell, active.len(), names, lens, [g, x, wc, wc, x, h, wc, g, g, h]);
    for (b, &on) in active.iter().enumerate() {
        let r = BwdRow {
            h,
            gates: row(gates, b, g),
            extra: row(extra, b, x),
            c: row(c, b, wc),
            c_prev: row(c_prev, b, wc),
            h_prev: row(h_prev, b, x),
            dm: row(dm, b, h),
            dc: row_mut(dc, b, wc),
            dgi: row_mut(dgi, b, g),
            dgh: row_mut(dgh, b, g),
            dh_direct: row_mut(dh_direct, b, h),
        };
        // Only a GRU has a path from h_prev to h outside W_hh.
        if !on || cell != CellKind::Gru {
            r.dh_direct.fill(0.0);
        }
        if !on {
            // As the reference: no gradients; `dc` passes through unchanged.
            r.dgi.fill(0.0);
            r.dgh.fill(0.0);
            continue;
        }
        // SAFETY: as in forward, for BwdRow.
        unsafe {
            match cell {
                CellKind::Lstm => k.lstm_backward(r),
                CellKind::Gru => k.gru_backward(r),
                CellKind::RnnTanh => k.rnn_backward::<false>(r),
                CellKind::RnnRelu => k.rnn_backward::<true>(r),
            }
        }
    }
}
