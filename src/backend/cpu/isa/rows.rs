//! A cell step, row by row, for every ISA: the length checks the kernels rely on, the inactive
//! rows (handled here exactly as the reference handles them), and the active rows, each handed
//! to the ISA's kernel of the cell ([`Kernels::lstm_forward`], …).
//!
//! Bounds: [`forward`] and [`backward`] assert once per step that every slice the cell uses has
//! its documented length (`[B, G·H]`, `[B, H]`, `[G·H]`, overflow checked), then cut each row by
//! safe slicing, so a kernel is given rows of exactly the lengths [`CellForward`] and
//! [`CellBackward`] document for one row and needs no check of its own (only `debug_assert!`s on its raw loads and stores).
//! Slices a cell does not use are neither checked nor read.

use super::Kernels;
use crate::backend::host::{CellBackward, CellForward, ChoPart};
use crate::config::CellKind;

/// One active row of a forward step: a [`CellForward`] of one row (`active` is `[true]` and
/// not read), `G` gates of `H = hidden` units. A slice the cell does not use is empty.
pub(crate) type FwdRow<'a> = CellForward<'a, f32>;

/// One active row of a backward step, as [`FwdRow`].
pub(crate) type BwdRow<'a> = CellBackward<'a, f32>;

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

/// The row kernels of one cell on the ISA of `K`, forward and backward.
struct RowKernels<K> {
    forward: unsafe fn(K, FwdRow<'_>),
    backward: unsafe fn(K, BwdRow<'_>),
}

impl<K: Kernels> RowKernels<K> {
    /// The kernels of `cell`: with `options` (an LSTM's peepholes, clip or input_forget, an
    /// RNN's clip: see [`has_options`]) the options kernels, else the plain ones. Chosen once
    /// per step, so the plain cells' kernels see no option.
    fn of(cell: CellKind, options: bool) -> Self {
        match (cell, options) {
            (CellKind::Lstm, true) => return RowKernels { forward: K::lstm_forward_options, backward: K::lstm_backward_options },
            (CellKind::RnnTanh, true) => {
                return RowKernels { forward: K::rnn_forward_clipped::<false>, backward: K::rnn_backward_clipped::<false> }
            }
            (CellKind::RnnRelu, true) => {
                return RowKernels { forward: K::rnn_forward_clipped::<true>, backward: K::rnn_backward_clipped::<true> }
            }
            _ => {}
        }
        match cell {
            CellKind::Lstm => RowKernels { forward: K::lstm_forward, backward: K::lstm_backward },
            CellKind::Gru => RowKernels { forward: K::gru_forward, backward: K::gru_backward },
            CellKind::RnnTanh => RowKernels { forward: K::rnn_forward::<false>, backward: K::rnn_backward::<false> },
            CellKind::RnnRelu => RowKernels { forward: K::rnn_forward::<true>, backward: K::rnn_backward::<true> },
        }
    }
}

/// Whether a step of `cell` takes the options kernels ([`Kernels::lstm_forward_options`],
/// [`Kernels::rnn_forward_clipped`], …).
fn has_options(cell: CellKind, peephole: Option<&[f32]>, clip: f64, input_forget: bool) -> bool {
    match cell {
        CellKind::Lstm => peephole.is_some() || clip > 0.0 || input_forget,
        CellKind::RnnTanh | CellKind::RnnRelu => clip > 0.0,
        CellKind::Gru => false,
    }
}

/// Panics unless each `lens[i]` is `rows·widths[i]`, for the buffers a cell uses (width > 0).
fn check_lens<const N: usize>(cell: CellKind, rows: usize, names: [&str; N], lens: [usize; N], widths: [usize; N]) {
    for ((name, len), width) in names.into_iter().zip(lens).zip(widths) {
        let Some(want) = rows.checked_mul(width) else { panic!("{cell:?} cell kernel: B = {rows} rows of {width} overflow usize") };
        assert!(width == 0 || len == want, "{cell:?} cell kernel: `{name}` has {len} values, expected {want}");
    }
}

/// Panics unless `peephole`, if any, belongs to an LSTM and has `3·H` values.
fn check_peephole(cell: CellKind, hidden: usize, peephole: Option<&[f32]>) {
    if let Some(p) = peephole {
        assert!(cell == CellKind::Lstm, "{cell:?} cell kernel: peephole weights are an LSTM's");
        let want = hidden.checked_mul(3).unwrap_or_else(|| panic!("{cell:?} cell kernel: H = {hidden} overflows usize"));
        assert!(p.len() == want, "{cell:?} cell kernel: `peephole` has {} values, expected {want}", p.len());
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
    let CellForward { active, hidden, xg, hg, b_hh, peephole, clip, input_forget, h_prev, c_prev, gates, extra, c, m } = s;
    let Widths { g, h, c: wc, x } = Widths::of(cell, hidden);
    let names = ["xg", "hg", "h_prev", "c_prev", "gates", "extra", "c", "m"];
    let lens = [xg.len(), hg.len(), h_prev.len(), c_prev.len(), gates.len(), extra.len(), c.len(), m.len()];
    check_lens(cell, active.len(), names, lens, [g, g, x, wc, g, x, wc, h]);
    check_lens(cell, 1, ["b_hh"], [b_hh.map_or(g, <[f32]>::len)], [g]);
    check_peephole(cell, hidden, peephole);
    let kernels = RowKernels::<K>::of(cell, has_options(cell, peephole, clip, input_forget));
    for (b, &on) in active.iter().enumerate() {
        let [xg, hg, h_prev, c_prev] = [(xg, g), (hg, g), (h_prev, x), (c_prev, wc)].map(|(s, w)| row(s, b, w));
        let [gates, extra, c, m] = [(&mut *gates, g), (&mut *extra, x), (&mut *c, wc), (&mut *m, h)].map(|(s, w)| row_mut(s, b, w));
        let r = FwdRow { active: &[true], hidden: h, xg, hg, b_hh, peephole, clip, input_forget, h_prev, c_prev, gates, extra, c, m };
        if !on {
            // As the reference: no gates, the cell state kept; `m` is the driver's to keep.
            r.gates.fill(0.0);
            r.extra.fill(0.0);
            r.c.copy_from_slice(r.c_prev);
            continue;
        }
        // SAFETY: every slice of `r` was cut at the width CellForward documents for `cell`,
        // from a buffer of B such rows (checked above), and b_hh has G·H values; `k` proves
        // its ISA.
        unsafe { (kernels.forward)(k, r) }
    }
}

/// The backward step of `cell` with `k`'s kernels; panics as [`forward`].
pub(crate) fn backward<K: Kernels>(k: K, cell: CellKind, s: CellBackward<'_, f32>) {
    let CellBackward { active, hidden, peephole, clip, input_forget, gates, extra, c, c_prev, h_prev, dm, dc, dgi, dgh, dh_direct } = s;
    let Widths { g, h, c: wc, x } = Widths::of(cell, hidden);
    let names = ["gates", "extra", "c", "c_prev", "h_prev", "dm", "dc", "dgi", "dgh", "dh_direct"];
    let lens = [gates.len(), extra.len(), c.len(), c_prev.len(), h_prev.len(), dm.len(), dc.len(), dgi.len(), dgh.len(), dh_direct.len()];
    check_lens(cell, active.len(), names, lens, [g, x, wc, wc, x, h, wc, g, g, h]);
    check_peephole(cell, hidden, peephole);
    let kernels = RowKernels::<K>::of(cell, has_options(cell, peephole, clip, input_forget));
    for (b, &on) in active.iter().enumerate() {
        let ins = [(gates, g), (extra, x), (c, wc), (c_prev, wc), (h_prev, x), (dm, h)];
        let [gates, extra, c, c_prev, h_prev, dm] = ins.map(|(s, w)| row(s, b, w));
        let [dc, dgi, dgh, dh_direct] =
            [(&mut *dc, wc), (&mut *dgi, g), (&mut *dgh, g), (&mut *dh_direct, h)].map(|(s, w)| row_mut(s, b, w));
        let r = BwdRow {
            active: &[true],
            hidden: h,
            peephole,
            clip,
            input_forget,
            gates,
            extra,
            c,
            c_prev,
            h_prev,
            dm,
            dc,
            dgi,
            dgh,
            dh_direct,
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
        // SAFETY: as in forward, for CellBackward.
        unsafe { (kernels.backward)(k, r) }
    }
}

/// Part `part` of a forward step of the GRU with the reset gate before the recurrent matmul
/// (`host/gru_reset_before.rs`) with `k`'s kernels ([`Kernels::gru_reset_before_gates`],
/// [`Kernels::gru_reset_before_output`]); panics as [`forward`]. Inactive rows as the
/// reference's: zero gates and `extra` in the first part, untouched in the second.
pub(crate) fn gru_reset_before_forward<K: Kernels>(k: K, part: ChoPart, s: CellForward<'_, f32>) {
    let cell = CellKind::Gru;
    let CellForward { active, hidden, xg, hg, b_hh, peephole, clip, input_forget, h_prev, c_prev, gates, extra, c, m } = s;
    let Widths { g, h, .. } = Widths::of(cell, hidden);
    let names = ["xg", "hg", "h_prev", "gates", "extra", "m"];
    check_lens(cell, active.len(), names, [xg.len(), hg.len(), h_prev.len(), gates.len(), extra.len(), m.len()], [g, g, h, g, h, h]);
    check_lens(cell, 1, ["b_hh"], [b_hh.map_or(g, <[f32]>::len)], [g]);
    let kernel = match part {
        ChoPart::BeforeProduct => K::gru_reset_before_gates,
        ChoPart::AfterProduct => K::gru_reset_before_output,
    };
    for (b, &on) in active.iter().enumerate() {
        let [xg, hg, h_prev] = [(xg, g), (hg, g), (h_prev, h)].map(|(s, w)| row(s, b, w));
        let [gates, extra, m] = [(&mut *gates, g), (&mut *extra, h), (&mut *m, h)].map(|(s, w)| row_mut(s, b, w));
        let r =
            FwdRow { active: &[true], hidden: h, xg, hg, b_hh, peephole, clip, input_forget, h_prev, c_prev, gates, extra, c: &mut [], m };
        match (on, part) {
            (true, _) => {
                // SAFETY: every slice of `r` the GRU uses was cut at its documented width from
                // a buffer of B such rows (checked above), and b_hh has G·H values; `k` proves
                // its ISA.
                unsafe { kernel(k, r) }
            }
            (false, ChoPart::BeforeProduct) => {
                r.gates.fill(0.0);
                r.extra.fill(0.0);
            }
            (false, ChoPart::AfterProduct) => {}
        }
    }
    debug_assert!(c.is_empty());
}

/// Part `part` of a backward step of the GRU with the reset gate before the recurrent matmul
/// with `k`'s kernels ([`Kernels::gru_reset_before_backward_output`],
/// [`Kernels::gru_reset_before_backward_reset`]; `dgh` is `[B, H]`, the gradient of
/// `r ⊙ h_prev`, in the second part and empty in the first); panics as [`forward`]. Inactive
/// rows as the reference's: zero `dgi` and `dh_direct` in the first part, untouched in the
/// second.
pub(crate) fn gru_reset_before_backward<K: Kernels>(k: K, part: ChoPart, s: CellBackward<'_, f32>) {
    let cell = CellKind::Gru;
    let CellBackward { active, hidden, peephole, clip, input_forget, gates, extra, c, c_prev, h_prev, dm, dc, dgi, dgh, dh_direct } = s;
    let Widths { g, h, .. } = Widths::of(cell, hidden);
    let (kernel, du): (unsafe fn(K, BwdRow<'_>), usize) = match part {
        ChoPart::BeforeProduct => (K::gru_reset_before_backward_output, 0),
        ChoPart::AfterProduct => (K::gru_reset_before_backward_reset, h),
    };
    let names = ["gates", "h_prev", "dm", "dgi", "dgh", "dh_direct"];
    let lens = [gates.len(), h_prev.len(), dm.len(), dgi.len(), dgh.len(), dh_direct.len()];
    check_lens(cell, active.len(), names, lens, [g, h, h, g, du, h]);
    assert!(du > 0 || dgh.is_empty(), "GRU cell kernel: `dgh` must be empty before the product");
    for (b, &on) in active.iter().enumerate() {
        let [gates, h_prev, dm] = [(gates, g), (h_prev, h), (dm, h)].map(|(s, w)| row(s, b, w));
        let [dgi, dgh, dh_direct] = [(&mut *dgi, g), (&mut *dgh, du), (&mut *dh_direct, h)].map(|(s, w)| row_mut(s, b, w));
        let r = BwdRow {
            active: &[true],
            hidden: h,
            peephole,
            clip,
            input_forget,
            gates,
            extra: &[],
            c: &[],
            c_prev: &[],
            h_prev,
            dm,
            dc: &mut [],
            dgi,
            dgh,
            dh_direct,
        };
        match (on, part) {
            (true, _) => {
                // SAFETY: as in gru_reset_before_forward, for CellBackward.
                unsafe { kernel(k, r) }
            }
            (false, ChoPart::BeforeProduct) => {
                r.dgi.fill(0.0);
                r.dh_direct.fill(0.0);
            }
            (false, ChoPart::AfterProduct) => {}
        }
    }
    debug_assert!(extra.len() == active.len() * h && c.is_empty() && c_prev.is_empty() && dc.is_empty());
}
