//! Reference LSTM step, forward and backward, for one row of the batch at a time.
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

pub(crate) fn forward<T: Float>(s: CellForward<'_, T>) {
    let h = s.hidden;
    let gh = 4 * h;
    for (b, &active) in s.active.iter().enumerate() {
        let gates = &mut s.gates[b * gh..(b + 1) * gh];
        let c_prev = &s.c_prev[b * h..(b + 1) * h];
        let c = &mut s.c[b * h..(b + 1) * h];
        if !active {
            gates.fill(T::ZERO);
            c.copy_from_slice(c_prev);
            continue;
        }
        let xg = &s.xg[b * gh..(b + 1) * gh];
        let hg = &s.hg[b * gh..(b + 1) * gh];
        let pre = |k: usize| xg[k] + hg[k] + s.b_hh.map_or(T::ZERO, |bh| bh[k]);
        for j in 0..h {
            let i = pre(j).sigmoid();
            let f = pre(h + j).sigmoid();
            let g = pre(2 * h + j).tanh();
            let o = pre(3 * h + j).sigmoid();
            let cj = f * c_prev[j] + i * g;
            c[j] = cj;
            s.m[b * h + j] = o * cj.tanh();
            gates[j] = i;
            gates[h + j] = f;
            gates[2 * h + j] = g;
            gates[3 * h + j] = o;
        }
    }
}

pub(crate) fn backward<T: Float>(s: CellBackward<'_, T>) {
    let h = s.hidden;
    let gh = 4 * h;
    for (b, &active) in s.active.iter().enumerate() {
        let dgi = &mut s.dgi[b * gh..(b + 1) * gh];
        let dgh = &mut s.dgh[b * gh..(b + 1) * gh];
        s.dh_direct[b * h..(b + 1) * h].fill(T::ZERO);
        if !active {
            dgi.fill(T::ZERO);
            dgh.fill(T::ZERO);
            continue;
        }
        let gates = &s.gates[b * gh..(b + 1) * gh];
        for j in 0..h {
            let (i, f, g, o) = (gates[j], gates[h + j], gates[2 * h + j], gates[3 * h + j]);
            let tc = s.c[b * h + j].tanh();
            let dm = s.dm[b * h + j];
            let d_o = dm * tc;
            let dc = s.dc[b * h + j] + dm * o * (T::ONE - tc * tc);
            let di = dc * g;
            let dg = dc * i;
            let df = dc * s.c_prev[b * h + j];
            s.dc[b * h + j] = dc * f;
            dgi[j] = di * i * (T::ONE - i);
            dgi[h + j] = df * f * (T::ONE - f);
            dgi[2 * h + j] = dg * (T::ONE - g * g);
            dgi[3 * h + j] = d_o * o * (T::ONE - o);
        }
        dgh.copy_from_slice(dgi);
    }
}
