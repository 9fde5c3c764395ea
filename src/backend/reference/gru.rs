//! Reference GRU step (PyTorch/cuDNN variant: reset applied after the recurrent matmul).
//!
//! Forward, gates `r, z, n`, with `ai = W_ih x + b_ih` and `ah = W_hh h + b_hh`:
//! `r = σ(ai_r + ah_r)`, `z = σ(ai_z + ah_z)`, `n = tanh(ai_n + r ah_n)`,
//! `h' = (1 - z) n + z h`. `ah_n` is saved (as `extra`) for backward.
//!
//! Backward from `dh'`: `dn = dh' (1 - z)`, `dz = dh' (h - n)`, `dh_direct = dh' z`,
//! `dan = dn (1 - n²)`, `dr = dan ah_n`, `dar = dr r (1 - r)`, `daz = dz z (1 - z)`;
//! input side `[dar, daz, dan]`, hidden side `[dar, daz, dan r]`.

use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

pub(crate) fn forward<T: Float>(s: CellForward<'_, T>) {
    let h = s.hidden;
    let gh = 3 * h;
    for (b, &active) in s.active.iter().enumerate() {
        let gates = &mut s.gates[b * gh..(b + 1) * gh];
        let extra = &mut s.extra[b * h..(b + 1) * h];
        if !active {
            gates.fill(T::ZERO);
            extra.fill(T::ZERO);
            continue;
        }
        let xg = &s.xg[b * gh..(b + 1) * gh];
        let hg = &s.hg[b * gh..(b + 1) * gh];
        let ah = |k: usize| hg[k] + s.b_hh.map_or(T::ZERO, |bh| bh[k]);
        for j in 0..h {
            let r = (xg[j] + ah(j)).sigmoid();
            let z = (xg[h + j] + ah(h + j)).sigmoid();
            let ahn = ah(2 * h + j);
            let n = (xg[2 * h + j] + r * ahn).tanh();
            s.m[b * h + j] = (T::ONE - z) * n + z * s.h_prev[b * h + j];
            gates[j] = r;
            gates[h + j] = z;
            gates[2 * h + j] = n;
            extra[j] = ahn;
        }
    }
}

pub(crate) fn backward<T: Float>(s: CellBackward<'_, T>) {
    let h = s.hidden;
    let gh = 3 * h;
    for (b, &active) in s.active.iter().enumerate() {
        let dgi = &mut s.dgi[b * gh..(b + 1) * gh];
        let dgh = &mut s.dgh[b * gh..(b + 1) * gh];
        let dh_direct = &mut s.dh_direct[b * h..(b + 1) * h];
        if !active {
            dgi.fill(T::ZERO);
            dgh.fill(T::ZERO);
            dh_direct.fill(T::ZERO);
            continue;
        }
        let gates = &s.gates[b * gh..(b + 1) * gh];
        for j in 0..h {
            let (r, z, n) = (gates[j], gates[h + j], gates[2 * h + j]);
            let ahn = s.extra[b * h + j];
            let dh = s.dm[b * h + j];
            let dn = dh * (T::ONE - z);
            let dz = dh * (s.h_prev[b * h + j] - n);
            let dan = dn * (T::ONE - n * n);
            let dr = dan * ahn;
            let dar = dr * r * (T::ONE - r);
            let daz = dz * z * (T::ONE - z);
            dgi[j] = dar;
            dgi[h + j] = daz;
            dgi[2 * h + j] = dan;
            dgh[j] = dar;
            dgh[h + j] = daz;
            dgh[2 * h + j] = dan * r;
            dh_direct[j] = dh * z;
        }
    }
}
