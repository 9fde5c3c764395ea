//! Reference GRU step (PyTorch/cuDNN variant: reset applied after the recurrent matmul), for
//! one valid row of the batch (a step with `B = 1`).
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

pub(super) fn forward<T: Float>(s: CellForward<'_, T>) {
    let h = s.hidden;
    let ah = |k: usize| s.hg[k] + s.b_hh.map_or(T::ZERO, |bh| bh[k]);
    for j in 0..h {
        let r = (s.xg[j] + ah(j)).sigmoid();
        let z = (s.xg[h + j] + ah(h + j)).sigmoid();
        let ahn = ah(2 * h + j);
        let n = (s.xg[2 * h + j] + r * ahn).tanh();
        s.m[j] = (T::ONE - z) * n + z * s.h_prev[j];
        s.gates[j] = r;
        s.gates[h + j] = z;
        s.gates[2 * h + j] = n;
        s.extra[j] = ahn;
    }
}

pub(super) fn backward<T: Float>(s: CellBackward<'_, T>) {
    let h = s.hidden;
    for j in 0..h {
        let (r, z, n) = (s.gates[j], s.gates[h + j], s.gates[2 * h + j]);
        let ahn = s.extra[j];
        let dh = s.dm[j];
        let dn = dh * (T::ONE - z);
        let dz = dh * (s.h_prev[j] - n);
        let dan = dn * (T::ONE - n * n);
        let dr = dan * ahn;
        let dar = dr * r * (T::ONE - r);
        let daz = dz * z * (T::ONE - z);
        s.dgi[j] = dar;
        s.dgi[h + j] = daz;
        s.dgi[2 * h + j] = dan;
        s.dgh[j] = dar;
        s.dgh[h + j] = daz;
        s.dgh[2 * h + j] = dan * r;
        s.dh_direct[j] = dh * z;
    }
}
