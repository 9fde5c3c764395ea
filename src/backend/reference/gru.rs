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
//!
//! Gate clipping (ONNX `clip`, as onnxruntime's `deep_cpu_gru.cc` applies it, in both GRU
//! forms): each gate's whole pre-activation (`ai_r + ah_r`, `ai_z + ah_z`, `ai_n + r ah_n`) is
//! clamped to `[-clip, clip]` before its activation. Backward passes no gradient through a
//! clamped pre-activation. It knows which were clamped without saving anything more: a clamped
//! gate's saved activation is exactly the activation of `±clip` ([`ClipLimits`], computed by
//! the same function in the same precision), so a saved gate equal to one of those two values
//! counts as clamped. A pre-activation within rounding of the threshold (whose activation rounds
//! to the same value) therefore counts as clamped too, as does one exactly at `±clip` (the
//! derivative of the clamp there is taken as 0); where the activation saturates to that value
//! the true derivative is 0 anyway. Without clipping (`clip = 0`) none of this runs.

pub(super) use super::lstm::{clamp, threshold};
use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

/// The activations of `±clip`: a saved gate equal to one of them was clamped in forward.
#[derive(Clone, Copy)]
pub(super) struct ClipLimits<T> {
    sigmoid: (T, T),
    tanh: (T, T),
}

impl<T: Float> ClipLimits<T> {
    /// The limits of a step's `clip` (none without clipping).
    pub(super) fn of(clip: f64) -> Option<Self> {
        threshold::<T>(clip).map(|c| ClipLimits { sigmoid: ((-c).sigmoid(), c.sigmoid()), tanh: ((-c).tanh(), c.tanh()) })
    }
}

/// `d`, or 0 where the saved gate `g` (activated by the function whose limits are `lim`) was
/// clamped.
#[inline]
pub(super) fn unclamped<T: Float>(d: T, g: T, lim: Option<(T, T)>) -> T {
    match lim {
        Some((lo, hi)) if g == lo || g == hi => T::ZERO,
        _ => d,
    }
}

/// The sigmoid limits of `lim`, if any.
pub(super) fn sigmoid_limits<T: Float>(lim: Option<ClipLimits<T>>) -> Option<(T, T)> {
    lim.map(|l| l.sigmoid)
}

/// The tanh limits of `lim`, if any.
pub(super) fn tanh_limits<T: Float>(lim: Option<ClipLimits<T>>) -> Option<(T, T)> {
    lim.map(|l| l.tanh)
}

pub(super) fn forward<T: Float>(s: CellForward<'_, T>) {
    let h = s.hidden;
    let c = threshold::<T>(s.clip);
    let ah = |k: usize| s.hg[k] + s.b_hh.map_or(T::ZERO, |bh| bh[k]);
    for j in 0..h {
        let r = clamp(s.xg[j] + ah(j), c).sigmoid();
        let z = clamp(s.xg[h + j] + ah(h + j), c).sigmoid();
        let ahn = ah(2 * h + j);
        let n = clamp(s.xg[2 * h + j] + r * ahn, c).tanh();
        s.m[j] = (T::ONE - z) * n + z * s.h_prev[j];
        s.gates[j] = r;
        s.gates[h + j] = z;
        s.gates[2 * h + j] = n;
        s.extra[j] = ahn;
    }
}

pub(super) fn backward<T: Float>(s: CellBackward<'_, T>) {
    let h = s.hidden;
    let lim = ClipLimits::<T>::of(s.clip);
    let (sig, th) = (sigmoid_limits(lim), tanh_limits(lim));
    for j in 0..h {
        let (r, z, n) = (s.gates[j], s.gates[h + j], s.gates[2 * h + j]);
        let ahn = s.extra[j];
        let dh = s.dm[j];
        let dn = dh * (T::ONE - z);
        let dz = dh * (s.h_prev[j] - n);
        let dan = unclamped(dn * (T::ONE - n * n), n, th);
        let dr = dan * ahn;
        let dar = unclamped(dr * r * (T::ONE - r), r, sig);
        let daz = unclamped(dz * z * (T::ONE - z), z, sig);
        s.dgi[j] = dar;
        s.dgi[h + j] = daz;
        s.dgi[2 * h + j] = dan;
        s.dgh[j] = dar;
        s.dgh[h + j] = daz;
        s.dgh[2 * h + j] = dan * r;
        s.dh_direct[j] = dh * z;
    }
}
