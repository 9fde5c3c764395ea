//! Layer norm of one row, forward and backward, 4 lanes at a time with NEON: the passes of
//! `isa/avx2/layer_norm.rs` (forward: `Σx`, `Σ(x − μ)²`, then `x̂` and `γ⊙x̂ + β`; backward:
//! `Σg` and `Σg⊙x̂` together, then `dx`), with FMA (`vfmaq_f32`).
//!
//! Summation order, fixed for a given `w`: 4 accumulators of 4 lanes; blocks of 16 values put
//! chunk `k` of 4 into accumulator `k`, the whole chunks after the last block go into
//! accumulators 0, 1, 2 and the last partial chunk (zero-padded) into 3; then
//! `(a0 + a1) + (a2 + a3)` and the 4 lanes by halves (`low + high`, then the pair). A term goes
//! through at most `ceil(w/16) + 4` additions (260 at `w = 4096`).
//!
//! Also the layer-normalised LSTM's pointwise kernels ([`lstm_output`]: `m = o⊙tanh(s)`;
//! [`lstm_backward`]: its backward pre-pass), with the vector `tanh` of `math.rs`.
//!
//! Bounds: only `load` and `store` (`neon/mod.rs`) touch memory, at offsets inside the row
//! (the caller's contract: every slice has `w` values).

use super::math::{tanh, tanh_sech2};
use super::{for_each_vector, load, store};
use crate::backend::cpu::isa::LstmLnBackRow;
use core::arch::aarch64::*;

/// Lanes of a vector.
const LANES: usize = 4;
/// Accumulators per sum.
const ACC: usize = 4;
/// See [`Kernels::LN_PARTIAL_SUMS`](crate::backend::cpu::isa::Kernels::LN_PARTIAL_SUMS).
#[cfg(test)]
pub(super) const PARTIAL_SUMS: usize = ACC * LANES;
/// `ε`, added to the variance.
const EPS: f32 = 1e-5;

/// The accumulators after folding `acc = chunk(acc, k, n)` over the chunks `k` of `n ≤ 4`
/// lanes of `0..w`, in the order of the module documentation.
#[inline(always)]
fn row_sum<A: Copy>(w: usize, zero: A, mut chunk: impl FnMut(A, usize, usize) -> A) -> [A; ACC] {
    let mut acc = [zero; ACC];
    let mut k = 0;
    while k + ACC * LANES <= w {
        acc[0] = chunk(acc[0], k, LANES);
        acc[1] = chunk(acc[1], k + LANES, LANES);
        acc[2] = chunk(acc[2], k + 2 * LANES, LANES);
        acc[3] = chunk(acc[3], k + 3 * LANES, LANES);
        k += ACC * LANES;
    }
    if k + LANES <= w {
        acc[0] = chunk(acc[0], k, LANES);
        k += LANES;
        if k + LANES <= w {
            acc[1] = chunk(acc[1], k, LANES);
            k += LANES;
            if k + LANES <= w {
                acc[2] = chunk(acc[2], k, LANES);
                k += LANES;
            }
        }
    }
    if k < w {
        acc[3] = chunk(acc[3], k, w - k);
    }
    acc
}

/// The sum of the accumulators' lanes: `(a0 + a1) + (a2 + a3)`, then the lanes by halves.
///
/// # Safety
/// The CPU supports NEON.
#[inline(always)]
unsafe fn reduce(a: [float32x4_t; ACC]) -> f32 {
    // SAFETY: NEON, the caller's contract.
    unsafe {
        let v = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
        let v = vadd_f32(vget_low_f32(v), vget_high_f32(v));
        vget_lane_f32::<0>(vpadd_f32(v, v))
    }
}

/// The lanes `0..n` of a vector all ones, the others zero.
///
/// # Safety
/// The CPU supports NEON.
#[inline(always)]
unsafe fn first_lanes(n: usize) -> uint32x4_t {
    // SAFETY: NEON, the caller's contract.
    unsafe {
        let index = vld1q_u32([0u32, 1, 2, 3].as_ptr());
        vcltq_u32(index, vdupq_n_u32(n as u32))
    }
}

/// Layer norm of the row `x` in place; returns `rstd`. See
/// [`Kernels::layer_norm_row`](crate::backend::cpu::isa::Kernels::layer_norm_row).
///
/// # Safety
/// The CPU supports NEON; `x` is not empty, and `gamma`, `beta` and `xhat` (if given) have
/// `x.len()` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn forward(x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, mut xhat: Option<&mut [f32]>) -> f32 {
    let w = x.len();
    debug_assert!(w > 0 && gamma.len() == w && beta.is_none_or(|b| b.len() == w) && xhat.as_ref().is_none_or(|s| s.len() == w));
    // SAFETY (every load and store below): `k + n ≤ w`, and every slice has `w` values.
    let zero = vdupq_n_f32(0.0);
    let mean = unsafe { reduce(row_sum(w, zero, |acc, k, n| vaddq_f32(acc, load(x, k, n)))) } / w as f32;
    let vmean = vdupq_n_f32(mean);
    let sq = unsafe {
        reduce(row_sum(w, zero, |acc, k, n| {
            let mut d = vsubq_f32(load(x, k, n), vmean);
            if n < LANES {
                // The padding lanes loaded 0, which is not 0 − μ.
                d = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(d), first_lanes(n)));
            }
            vfmaq_f32(acc, d, d)
        }))
    };
    let rstd = 1.0 / (sq / w as f32 + EPS).sqrt();
    let vrstd = vdupq_n_f32(rstd);
    for_each_vector(w, |k, n| unsafe {
        let xh = vmulq_f32(vsubq_f32(load(x, k, n), vmean), vrstd);
        if let Some(xhat) = xhat.as_deref_mut() {
            store(xhat, k, n, xh);
        }
        let g = load(gamma, k, n);
        let y = match beta {
            Some(b) => vfmaq_f32(load(b, k, n), g, xh),
            None => vmulq_f32(g, xh),
        };
        store(x, k, n, y);
    });
    rstd
}

/// The backward of [`forward`] on one row. See
/// [`Kernels::layer_norm_row_backward`](crate::backend::cpu::isa::Kernels::layer_norm_row_backward).
///
/// # Safety
/// The CPU supports NEON; `dy` is not empty, and `gamma`, `xhat` and `dx` have `dy.len()`
/// values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward(dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
    let w = dy.len();
    debug_assert!(w > 0 && gamma.len() == w && xhat.len() == w && dx.len() == w);
    let zero = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    // SAFETY (every load and store below): as in forward.
    let acc = row_sum(w, zero, |(s, sx), k, n| unsafe {
        let g = vmulq_f32(load(gamma, k, n), load(dy, k, n));
        (vaddq_f32(s, g), vfmaq_f32(sx, g, load(xhat, k, n)))
    });
    let (sg, sgx) = unsafe { (reduce(acc.map(|a| a.0)), reduce(acc.map(|a| a.1))) };
    let (mg, mgx, vrstd) = (vdupq_n_f32(sg / w as f32), vdupq_n_f32(sgx / w as f32), vdupq_n_f32(rstd));
    for_each_vector(w, |k, n| unsafe {
        let g = vmulq_f32(load(gamma, k, n), load(dy, k, n));
        let t = vfmsq_f32(vsubq_f32(g, mg), load(xhat, k, n), mgx);
        store(dx, k, n, vmulq_f32(vrstd, t));
    });
}

/// The layer-normalised LSTM's output on one row: `m ← o⊙tanh(m)`. See
/// [`Kernels::lstm_ln_output_row`](crate::backend::cpu::isa::Kernels::lstm_ln_output_row).
///
/// # Safety
/// The CPU supports NEON; `m` is not empty and `o` has `m.len()` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn lstm_output(o: &[f32], m: &mut [f32]) {
    debug_assert!(!m.is_empty() && o.len() == m.len());
    // SAFETY (every load and store): `k + n ≤ m.len()`, and both slices have that length.
    for_each_vector(m.len(), |k, n| unsafe { store(m, k, n, vmulq_f32(load(o, k, n), tanh(load(m, k, n)))) });
}

/// The layer-normalised LSTM's backward pre-pass on one active row: `s = γ⊙ĉ + β` (one FMA,
/// as [`forward`]), `τ = tanh(s)`, `dŝ = (dm⊙o)⊙(1 − τ²)`, and `d_o = ((dm⊙τ)⊙o)⊙(1 − o)` if
/// asked; `1 − τ²` from `tanh_sech2`, accurate where it is small (the layer norm's backward
/// multiplies `dŝ` by `rstd`, up to 316). See
/// [`Kernels::lstm_ln_backward_row`](crate::backend::cpu::isa::Kernels::lstm_ln_backward_row).
///
/// # Safety
/// The CPU supports NEON; every slice of `r` has `r.o.len() ≥ 1` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn lstm_backward(r: LstmLnBackRow<'_>) {
    let h = r.o.len();
    debug_assert!(h > 0 && [r.gamma.len(), r.beta.len(), r.ln_c.len(), r.dm.len(), r.s.len(), r.dsh.len()].iter().all(|&l| l == h));
    debug_assert!(r.d_o.as_ref().is_none_or(|d| d.len() == h));
    let LstmLnBackRow { gamma, beta, ln_c, o, dm, s, dsh, mut d_o } = r;
    let one = vdupq_n_f32(1.0);
    // SAFETY (every load and store): `k + n ≤ h`, and every slice has `h` values.
    for_each_vector(h, |k, n| unsafe {
        let sv = vfmaq_f32(load(beta, k, n), load(gamma, k, n), load(ln_c, k, n));
        store(s, k, n, sv);
        let (tau, sech2) = tanh_sech2(sv);
        let (ov, dmv) = (load(o, k, n), load(dm, k, n));
        if let Some(d_o) = d_o.as_deref_mut() {
            store(d_o, k, n, vmulq_f32(vmulq_f32(vmulq_f32(dmv, tau), ov), vsubq_f32(one, ov)));
        }
        store(dsh, k, n, vmulq_f32(vmulq_f32(dmv, ov), sech2));
    });
}

#[cfg(test)]
mod tests {
    crate::backend::cpu::isa::layer_norm_tests::layer_norm_kernel_tests!(super::super::Neon::detect(), #[cfg_attr(miri, ignore = "SIMD intrinsics: NEON code is not run under Miri")]);
}
