//! NEON Elman RNN step, forward and backward (maths of `reference/rnn.rs`); `RELU` picks the
//! activation at compile time (`false`: tanh).
//!
//! Forward: `h' = act((xg + hg) + b_hh)`, written to both `gates` and `m`. Traffic per row:
//! reads `xg`, `hg` (`H` each), writes `gates`, `m` (`H` each).
//!
//! Backward: `da = dm·act'` from the saved output, `tanh' = 1 - h'²`, `relu' = [h' > 0]`;
//! `dgi = dgh = da`, `dh_direct = 0`. Reads `gates`, `dm`, writes `dgi`, `dgh`, `dh_direct`
//! (`H` each). The reference's operation order: bit-identical.
//!
//! With a clip, [`forward_clipped`] and [`backward_clipped`] (chosen once per step by
//! `rows.rs`): `a` clamped to `[-clip, clip]` before the activation, the gradient zero where
//! the saved output equals the activation of `±clip` (see `lstm.rs`).

use super::lstm::unclipped;
use super::math::tanh;
use super::{for_each_vector, load, store};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use core::arch::aarch64::*;

/// The forward step of one active row, relu if `RELU`, else tanh.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`FwdRow`] documents for an RNN.
#[target_feature(enable = "neon")]
pub(super) unsafe fn forward<const RELU: bool>(FwdRow { hidden: h, xg, hg, b_hh, gates, m, .. }: FwdRow<'_>) {
    // SAFETY: j + n <= h, the length of every row and of b_hh.
    for_each_vector(h, |j, n| unsafe {
        let mut a = vaddq_f32(load(xg, j, n), load(hg, j, n));
        if let Some(bh) = b_hh {
            a = vaddq_f32(a, load(bh, j, n));
        }
        let v = if RELU {
            // As the reference: a < 0 ? 0 : a, which keeps -0 and NaN.
            let zero = vdupq_n_f32(0.0);
            vbslq_f32(vcltq_f32(a, zero), zero, a)
        } else {
            tanh(a)
        };
        store(gates, j, n, v);
        store(m, j, n, v);
    });
}

/// The backward step of one active row, relu if `RELU`, else tanh.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`BwdRow`] documents for an RNN.
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward<const RELU: bool>(BwdRow { hidden: h, gates: v, dm, dgi, dgh, .. }: BwdRow<'_>) {
    // SAFETY: j + n <= h, the length of every row.
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let v = load(v, j, n);
        let d = if RELU {
            // [v > 0] as 1.0 or 0.0, multiplied like the reference (so dm = inf gives NaN at 0).
            vbslq_f32(vcgtq_f32(v, vdupq_n_f32(0.0)), one, vdupq_n_f32(0.0))
        } else {
            vsubq_f32(one, vmulq_f32(v, v))
        };
        let da = vmulq_f32(load(dm, j, n), d);
        store(dgi, j, n, da);
        store(dgh, j, n, da);
    });
}

/// The activation of a clipped pre-activation: relu if `RELU`, else tanh.
///
/// # Safety
/// The CPU supports NEON.
#[inline(always)]
unsafe fn act<const RELU: bool>(a: float32x4_t) -> float32x4_t {
    // SAFETY: NEON, the caller's contract.
    unsafe {
        if RELU {
            let zero = vdupq_n_f32(0.0);
            vbslq_f32(vcltq_f32(a, zero), zero, a)
        } else {
            tanh(a)
        }
    }
}

/// The forward step of one active row with a clip, relu if `RELU`, else tanh.
///
/// # Safety
/// As [`forward`].
#[target_feature(enable = "neon")]
pub(super) unsafe fn forward_clipped<const RELU: bool>(FwdRow { hidden: h, xg, hg, b_hh, clip, gates, m, .. }: FwdRow<'_>) {
    let (hi, lo) = (vdupq_n_f32(clip as f32), vdupq_n_f32(-clip as f32));
    // SAFETY: as in forward.
    for_each_vector(h, |j, n| unsafe {
        let mut a = vaddq_f32(load(xg, j, n), load(hg, j, n));
        if let Some(bh) = b_hh {
            a = vaddq_f32(a, load(bh, j, n));
        }
        let v = act::<RELU>(vmaxq_f32(lo, vminq_f32(hi, a)));
        store(gates, j, n, v);
        store(m, j, n, v);
    });
}

/// The backward step of one active row with a clip, relu if `RELU`, else tanh.
///
/// # Safety
/// As [`backward`].
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward_clipped<const RELU: bool>(BwdRow { hidden: h, clip, gates: v, dm, dgi, dgh, .. }: BwdRow<'_>) {
    let values = Some([act::<RELU>(vdupq_n_f32(clip as f32)), act::<RELU>(vdupq_n_f32(-clip as f32))]);
    // SAFETY: as in forward.
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let v = load(v, j, n);
        let d = if RELU { vbslq_f32(vcgtq_f32(v, vdupq_n_f32(0.0)), one, vdupq_n_f32(0.0)) } else { vsubq_f32(one, vmulq_f32(v, v)) };
        let da = unclipped(vmulq_f32(load(dm, j, n), d), v, values);
        store(dgi, j, n, da);
        store(dgh, j, n, da);
    });
}
