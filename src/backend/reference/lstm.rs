//! Reference LSTM step, forward and backward, for one valid row of the batch (a step with
//! `B = 1`).
//!
//! Forward, gates in PyTorch order `i, f, g, o`, with `a = W_ih x + b_ih + W_hh h + b_hh`:
//! `i = σ(a_i)`, `f = σ(a_f)`, `g = tanh(a_g)`, `o = σ(a_o)`, `c' = f c + i g`,
//! `m = o tanh(c')` (then `h' = m`, or `h' = W_hr m` with a projection, done by the driver).
//!
//! Backward from `dm` and the incoming `dc'`:
//! `do = dm tanh(c')`, `dc' += dm o (1 - tanh²(c'))`, `di = dc' g`, `dg = dc' i`, `df = dc' c`,
//! `dc = dc' f`; the pre-activation gradients multiply by `σ' = s (1 - s)` and
//! `tanh' = 1 - g²`, taken from the saved activations.

use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

pub(super) fn forward<T: Float>(r: CellForward<'_, T>) {
    let h = r.hidden;
    let pre = |k: usize| r.xg[k] + r.hg[k] + r.b_hh.map_or(T::ZERO, |bh| bh[k]);
    for j in 0..h {
        let i = pre(j).sigmoid();
        let f = pre(h + j).sigmoid();
        let g = pre(2 * h + j).tanh();
        let o = pre(3 * h + j).sigmoid();
        let cj = f * r.c_prev[j] + i * g;
        r.c[j] = cj;
        r.m[j] = o * cj.tanh();
        r.gates[j] = i;
        r.gates[h + j] = f;
        r.gates[2 * h + j] = g;
        r.gates[3 * h + j] = o;
    }
}

pub(super) fn backward<T: Float>(r: CellBackward<'_, T>) {
    let h = r.hidden;
    for j in 0..h {
        let (i, f, g, o) = (r.gates[j], r.gates[h + j], r.gates[2 * h + j], r.gates[3 * h + j]);
        let tc = r.c[j].tanh();
        let dm = r.dm[j];
        let d_o = dm * tc;
        let dc = r.dc[j] + dm * o * (T::ONE - tc * tc);
        let di = dc * g;
        let dg = dc * i;
        let df = dc * r.c_prev[j];
        r.dc[j] = dc * f;
        r.dgi[j] = di * i * (T::ONE - i);
        r.dgi[h + j] = df * f * (T::ONE - f);
        r.dgi[2 * h + j] = dg * (T::ONE - g * g);
        r.dgi[3 * h + j] = d_o * o * (T::ONE - o);
    }
    r.dgh.copy_from_slice(r.dgi);
}
