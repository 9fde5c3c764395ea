//! NEON LSTM step, forward and backward (maths of `reference/lstm.rs`, gates `i, f, g, o`).
//!
//! Forward, per row and per four units `j`: `a_k = (xg_k + hg_k) + b_hh_k` for the four gates,
//! `i, f, o = σ(a)`, `g = tanh(a_g)`, `c = f·c_prev + i·g`, `m = o·tanh(c)`. Traffic per row:
//! reads `xg`, `hg` (`4H` each), `c_prev` (`H`), writes `gates` (`4H`), `c`, `m` (`H` each).
//!
//! Backward, with `tc = tanh(c)` recomputed (cheaper than saving it): `do = dm·tc`,
//! `dc += dm·o·(1 - tc²)`, then `di = dc·g`, `dg = dc·i`, `df = dc·c_prev`, `dc_prev = dc·f`,
//! times `σ' = s(1 - s)` or `tanh' = 1 - g²`. Reads `gates` (`4H`), `c`, `c_prev`, `dm`, `dc`
//! (`H` each), writes `dgi`, `dgh` (`4H` each, equal), `dc`, `dh_direct` (`H`, zero).
//!
//! With options (peepholes, clip, input_forget), a row takes [`forward_options`] and
//! [`backward_options`] (chosen once per step by `rows.rs`), the maths of `reference/lstm.rs`'s
//! `forward_options` and `backward_options` in its operation order (no FMA); the options are
//! tested once per vector, the same for the whole row. The clamp is `max(-clip, min(clip, a))`,
//! and a saved activation counts as clipped where it equals this module's `sigmoid` or `tanh`
//! of `±clip`.

use super::math::{sigmoid, tanh};
use super::{for_each_vector, load, store};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use core::arch::aarch64::*;

/// The forward step of one active row.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`FwdRow`] documents for an LSTM.
#[target_feature(enable = "neon")]
pub(super) unsafe fn forward(FwdRow { hidden: h, xg, hg, b_hh, c_prev, gates, c, m, .. }: FwdRow<'_>) {
    // SAFETY: j + n <= h, so lanes k·h + j .. k·h + j + n (k < 4) lie in the 4h-long
    // rows and in b_hh, and lanes j .. j + n in the h-long ones.
    for_each_vector(h, |j, n| unsafe {
        let pre = |k: usize| {
            let a = vaddq_f32(load(xg, k * h + j, n), load(hg, k * h + j, n));
            match b_hh {
                Some(bh) => vaddq_f32(a, load(bh, k * h + j, n)),
                None => a,
            }
        };
        let i = sigmoid(pre(0));
        let f = sigmoid(pre(1));
        let g = tanh(pre(2));
        let o = sigmoid(pre(3));
        let cn = vaddq_f32(vmulq_f32(f, load(c_prev, j, n)), vmulq_f32(i, g));
        store(c, j, n, cn);
        store(m, j, n, vmulq_f32(o, tanh(cn)));
        store(gates, j, n, i);
        store(gates, h + j, n, f);
        store(gates, 2 * h + j, n, g);
        store(gates, 3 * h + j, n, o);
    });
}

/// The backward step of one active row.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`BwdRow`] documents for an LSTM.
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward(BwdRow { hidden: h, gates, c, c_prev, dm, dc, dgi, dgh, .. }: BwdRow<'_>) {
    // SAFETY: as in forward: j + n <= h bounds every lane used.
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let i = load(gates, j, n);
        let f = load(gates, h + j, n);
        let g = load(gates, 2 * h + j, n);
        let o = load(gates, 3 * h + j, n);
        let tc = tanh(load(c, j, n));
        let dmv = load(dm, j, n);
        let d_o = vmulq_f32(dmv, tc);
        let dcv = vaddq_f32(load(dc, j, n), vmulq_f32(vmulq_f32(dmv, o), vsubq_f32(one, vmulq_f32(tc, tc))));
        let di = vmulq_f32(dcv, g);
        let dg = vmulq_f32(dcv, i);
        let df = vmulq_f32(dcv, load(c_prev, j, n));
        store(dc, j, n, vmulq_f32(dcv, f));
        let dai = vmulq_f32(vmulq_f32(di, i), vsubq_f32(one, i));
        let daf = vmulq_f32(vmulq_f32(df, f), vsubq_f32(one, f));
        let dag = vmulq_f32(dg, vsubq_f32(one, vmulq_f32(g, g)));
        let dao = vmulq_f32(vmulq_f32(d_o, o), vsubq_f32(one, o));
        for (k, v) in [dai, daf, dag, dao].into_iter().enumerate() {
            store(dgi, k * h + j, n, v);
            store(dgh, k * h + j, n, v);
        }
    });
}

/// The forward step of one active row with options.
///
/// # Safety
/// As [`forward`], and `peephole`, if any, has `3·H` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn forward_options(
    FwdRow { hidden: h, xg, hg, b_hh, peephole, clip, input_forget, c_prev, gates, c, m, .. }: FwdRow<'_>,
) {
    let clipped = clip > 0.0;
    let (hi, lo) = (vdupq_n_f32(clip as f32), vdupq_n_f32(-clip as f32));
    // SAFETY: as in forward; the peephole rows are `H` long at 0, H and 2H.
    for_each_vector(h, |j, n| unsafe {
        let pre = |k: usize| {
            let a = vaddq_f32(load(xg, k * h + j, n), load(hg, k * h + j, n));
            match b_hh {
                Some(bh) => vaddq_f32(a, load(bh, k * h + j, n)),
                None => a,
            }
        };
        let clamp = |a: float32x4_t| if clipped { vmaxq_f32(lo, vminq_f32(hi, a)) } else { a };
        let peep = |a: float32x4_t, k: usize, cv: float32x4_t| match peephole {
            Some(p) => vaddq_f32(a, vmulq_f32(load(p, k * h + j, n), cv)),
            None => a,
        };
        let cp = load(c_prev, j, n);
        let i = sigmoid(clamp(peep(pre(0), 0, cp)));
        let f = if input_forget { vsubq_f32(vdupq_n_f32(1.0), i) } else { sigmoid(clamp(peep(pre(1), 1, cp))) };
        let g = tanh(clamp(pre(2)));
        let cn = vaddq_f32(vmulq_f32(f, cp), vmulq_f32(i, g));
        let o = sigmoid(clamp(peep(pre(3), 2, cn)));
        store(c, j, n, cn);
        store(m, j, n, vmulq_f32(o, tanh(cn)));
        store(gates, j, n, i);
        store(gates, h + j, n, f);
        store(gates, 2 * h + j, n, g);
        store(gates, 3 * h + j, n, o);
    });
}

/// `d` where the saved activation `s` is neither of `values` (the activations of `±clip`), or
/// where there is no clip (`values` is `None`); else 0.
///
/// # Safety
/// The CPU supports NEON.
#[inline(always)]
pub(super) unsafe fn unclipped(d: float32x4_t, s: float32x4_t, values: Option<[float32x4_t; 2]>) -> float32x4_t {
    match values {
        // SAFETY: NEON, the caller's contract.
        Some([a, b]) => unsafe { vbslq_f32(vorrq_u32(vceqq_f32(s, a), vceqq_f32(s, b)), vdupq_n_f32(0.0), d) },
        None => d,
    }
}

/// The backward step of one active row with options.
///
/// # Safety
/// As [`backward`], and `peephole`, if any, has `3·H` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward_options(
    BwdRow { hidden: h, peephole, clip, input_forget, gates, c, c_prev, dm, dc, dgi, dgh, .. }: BwdRow<'_>,
) {
    let (hi, lo) = (vdupq_n_f32(clip as f32), vdupq_n_f32(-clip as f32));
    let sig = (clip > 0.0).then(|| [sigmoid(hi), sigmoid(lo)]);
    let tnh = (clip > 0.0).then(|| [tanh(hi), tanh(lo)]);
    // SAFETY: as in forward_options.
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let p = |k: usize| peephole.map(|p| load(p, k * h + j, n));
        let i = load(gates, j, n);
        let f = load(gates, h + j, n);
        let g = load(gates, 2 * h + j, n);
        let o = load(gates, 3 * h + j, n);
        let cp = load(c_prev, j, n);
        let tc = tanh(load(c, j, n));
        let dmv = load(dm, j, n);
        let dao = unclipped(vmulq_f32(vmulq_f32(vmulq_f32(dmv, tc), o), vsubq_f32(one, o)), o, sig);
        let mut dcv = vaddq_f32(load(dc, j, n), vmulq_f32(vmulq_f32(dmv, o), vsubq_f32(one, vmulq_f32(tc, tc))));
        if let Some(po) = p(2) {
            dcv = vaddq_f32(dcv, vmulq_f32(dao, po));
        }
        let df = vmulq_f32(dcv, cp);
        let di = if input_forget { vsubq_f32(vmulq_f32(dcv, g), df) } else { vmulq_f32(dcv, g) };
        let dai = unclipped(vmulq_f32(vmulq_f32(di, i), vsubq_f32(one, i)), i, sig);
        let daf = if input_forget { vdupq_n_f32(0.0) } else { unclipped(vmulq_f32(vmulq_f32(df, f), vsubq_f32(one, f)), f, sig) };
        let dag = unclipped(vmulq_f32(vmulq_f32(dcv, i), vsubq_f32(one, vmulq_f32(g, g))), g, tnh);
        let mut dc_prev = vmulq_f32(dcv, f);
        if let (Some(pi), Some(pf)) = (p(0), p(1)) {
            dc_prev = vaddq_f32(vaddq_f32(dc_prev, vmulq_f32(dai, pi)), vmulq_f32(daf, pf));
        }
        store(dc, j, n, dc_prev);
        for (k, v) in [dai, daf, dag, dao].into_iter().enumerate() {
            store(dgi, k * h + j, n, v);
            store(dgh, k * h + j, n, v);
        }
    });
}
