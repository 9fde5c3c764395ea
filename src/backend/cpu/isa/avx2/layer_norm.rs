//! Layer norm of one row, forward and backward, 8 lanes at a time with AVX2+FMA.
//!
//! Forward (`x ← γ⊙x̂ + β`, `x̂ = (x − μ)·rstd`, `rstd = 1/sqrt(var + ε)`) in three passes over
//! the row, which stays in L1 (a row of `4H = 2048` values is 8 KiB): `Σx`, then `Σ(x − μ)²`
//! (two passes, as the definition: no `Σx² − (Σx)²/w` cancellation), then `x̂` and the output.
//! Backward (`dx = rstd·(g − mean(g) − x̂⊙mean(g⊙x̂))`, `g = γ⊙dy`) in two: `Σg` and `Σg⊙x̂`
//! together, then `dx`.
//!
//! Summation order, fixed for a given `w` (so a row's result never depends on the rows around
//! it or on the thread that runs it): 4 accumulators of 8 lanes; blocks of 32 values put chunk
//! `k` of 8 into accumulator `k`, the whole chunks after the last block go into accumulators
//! 0, 1, 2 and the last partial chunk (loaded under a lane mask, the other lanes 0) into 3;
//! then `(a0 + a1) + (a2 + a3)`, and the 8 lanes by halves (`hi128 + lo128`, `movehl`, one
//! shuffle). The scalar kernels (`isa/scalar.rs`) sum in the same order. In f32: a term goes
//! through at most `ceil(w/32) + 5` additions (129 at `w = 4096`), against `w` for one running
//! sum; `isa/layer_norm_tests.rs` derives its tolerance from that.
//!
//! Also the layer-normalised LSTM's pointwise kernels ([`lstm_output`]: `m = o⊙tanh(s)`;
//! [`lstm_backward`]: its backward pre-pass), with the vector `tanh` of `math.rs`.
//!
//! Bounds: only [`load`] and [`store`] (`avx2/mod.rs`) touch memory, at offsets inside the row
//! (the caller's contract: every slice has `w` values).

use super::math::{tanh, tanh_sech2};
use super::{load, store, Lanes};
use crate::backend::cpu::isa::LstmLnBackRow;
use std::arch::x86_64::*;

/// Accumulators per sum: 4 independent chains of adds, so that an add's latency does not
/// bound a sum (`row_sum!` is written for 4).
const ACC: usize = 4;
/// See [`Kernels::LN_PARTIAL_SUMS`](crate::backend::cpu::isa::Kernels::LN_PARTIAL_SUMS).
#[cfg(test)]
pub(super) const PARTIAL_SUMS: usize = ACC * Lanes::N;
/// `ε`, added to the variance.
const EPS: f32 = 1e-5;

/// `row_sum!(L, w, zero, chunk(args…))`: the 4 accumulators after folding
/// `acc = chunk::<TAIL>(acc, args…, k, lanes)` over the chunks `k` of `L::N` lanes of `0..w`,
/// in the order of the module documentation (`zero`: an accumulator's start). A macro, as
/// `for_chunks!`, so that the body is compiled with the caller's target features; AVX-512
/// (`avx512/layer_norm.rs`) runs it on 16 lanes.
macro_rules! row_sum {
    ($L:ty, $w:expr, $zero:expr, $chunk:ident($($arg:expr),*)) => {{
        const N: usize = <$L>::N;
        let w: usize = $w;
        let all = <$L>::first(N);
        let mut acc = [$zero; 4];
        let mut k = 0;
        while k + 4 * N <= w {
            acc[0] = $chunk::<false>(acc[0], $($arg,)* k, all);
            acc[1] = $chunk::<false>(acc[1], $($arg,)* k + N, all);
            acc[2] = $chunk::<false>(acc[2], $($arg,)* k + 2 * N, all);
            acc[3] = $chunk::<false>(acc[3], $($arg,)* k + 3 * N, all);
            k += 4 * N;
        }
        if k + N <= w {
            acc[0] = $chunk::<false>(acc[0], $($arg,)* k, all);
            k += N;
            if k + N <= w {
                acc[1] = $chunk::<false>(acc[1], $($arg,)* k, all);
                k += N;
                if k + N <= w {
                    acc[2] = $chunk::<false>(acc[2], $($arg,)* k, all);
                    k += N;
                }
            }
        }
        if k < w {
            acc[3] = $chunk::<true>(acc[3], $($arg,)* k, <$L>::first(w - k));
        }
        acc
    }};
}
pub(crate) use row_sum;

/// The sum of the accumulators' lanes: `(a0 + a1) + (a2 + a3)`, then the lanes by halves.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce(a: [__m256; ACC]) -> f32 {
    let v = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    let v = _mm_add_ss(v, _mm_shuffle_ps::<0b01>(v, v));
    _mm_cvtss_f32(v)
}

/// `acc + x[k..]`.
///
/// # Safety
/// As [`load`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_chunk<const TAIL: bool>(acc: __m256, x: &[f32], k: usize, lanes: Lanes) -> __m256 {
    // SAFETY: the caller's contract.
    _mm256_add_ps(acc, unsafe { load::<TAIL>(x, k, lanes) })
}

/// `acc + (x[k..] − mean)²`, 0 in the lanes off the row.
///
/// # Safety
/// As [`load`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn square_chunk<const TAIL: bool>(acc: __m256, x: &[f32], mean: __m256, k: usize, lanes: Lanes) -> __m256 {
    // SAFETY: the caller's contract.
    let mut d = _mm256_sub_ps(unsafe { load::<TAIL>(x, k, lanes) }, mean);
    if TAIL {
        d = _mm256_and_ps(d, _mm256_castsi256_ps(lanes.mask));
    }
    _mm256_fmadd_ps(d, d, acc)
}

/// `(acc.0 + g, acc.1 + g⊙x̂)` with `g = γ⊙dy` on the chunk at `k`.
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_chunk<const TAIL: bool>(
    acc: (__m256, __m256),
    dy: &[f32],
    gamma: &[f32],
    xhat: &[f32],
    k: usize,
    lanes: Lanes,
) -> (__m256, __m256) {
    // SAFETY: the caller's contract.
    let (g, xh) = unsafe { (_mm256_mul_ps(load::<TAIL>(gamma, k, lanes), load::<TAIL>(dy, k, lanes)), load::<TAIL>(xhat, k, lanes)) };
    (_mm256_add_ps(acc.0, g), _mm256_fmadd_ps(g, xh, acc.1))
}

/// The forward's last pass on the chunk at `k`: `x̂ = (x − μ)·rstd` (into `xhat` if given),
/// `x = γ⊙x̂ + β` (one FMA; `γ⊙x̂` without `beta`).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_chunk<const TAIL: bool>(
    x: &mut [f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    xhat: &mut Option<&mut [f32]>,
    (mean, rstd): (__m256, __m256),
    k: usize,
    lanes: Lanes,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let xh = _mm256_mul_ps(_mm256_sub_ps(load::<TAIL>(x, k, lanes), mean), rstd);
        if let Some(xhat) = xhat.as_deref_mut() {
            store::<TAIL>(xhat, k, lanes, xh);
        }
        let g = load::<TAIL>(gamma, k, lanes);
        let y = match beta {
            Some(b) => _mm256_fmadd_ps(g, xh, load::<TAIL>(b, k, lanes)),
            None => _mm256_mul_ps(g, xh),
        };
        store::<TAIL>(x, k, lanes, y);
    }
}

/// `dx = rstd·((g − mean(g)) − x̂⊙mean(g⊙x̂))` on the chunk at `k` (the last product fused).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dx_chunk<const TAIL: bool>(
    (dy, gamma, xhat, dx): (&[f32], &[f32], &[f32], &mut [f32]),
    (mg, mgx, rstd): (__m256, __m256, __m256),
    k: usize,
    lanes: Lanes,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let g = _mm256_mul_ps(load::<TAIL>(gamma, k, lanes), load::<TAIL>(dy, k, lanes));
        let t = _mm256_fnmadd_ps(load::<TAIL>(xhat, k, lanes), mgx, _mm256_sub_ps(g, mg));
        store::<TAIL>(dx, k, lanes, _mm256_mul_ps(rstd, t));
    }
}

/// Layer norm of the row `x` in place; returns `rstd`. See
/// [`Kernels::layer_norm_row`](crate::backend::cpu::isa::Kernels::layer_norm_row).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` is not empty, and `gamma`, `beta` and `xhat` (if
/// given) have `x.len()` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward(x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, mut xhat: Option<&mut [f32]>) -> f32 {
    let w = x.len();
    debug_assert!(w > 0 && gamma.len() == w && beta.is_none_or(|b| b.len() == w) && xhat.as_ref().is_none_or(|s| s.len() == w));
    // SAFETY (every chunk below): the chunks lie in `0..w`, and every slice has `w` values.
    let mean = unsafe { reduce(row_sum!(Lanes, w, _mm256_setzero_ps(), sum_chunk(x))) } / w as f32;
    let sq = unsafe { reduce(row_sum!(Lanes, w, _mm256_setzero_ps(), square_chunk(x, _mm256_set1_ps(mean)))) };
    let rstd = 1.0 / (sq / w as f32 + EPS).sqrt();
    let stats = (_mm256_set1_ps(mean), _mm256_set1_ps(rstd));
    super::for_chunks!(Lanes, 0, w, |k, lanes| unsafe { output_chunk::<false>(x, gamma, beta, &mut xhat, stats, k, lanes) }, unsafe {
        output_chunk::<true>(x, gamma, beta, &mut xhat, stats, k, lanes)
    });
    rstd
}

/// The backward of [`forward`] on one row. See
/// [`Kernels::layer_norm_row_backward`](crate::backend::cpu::isa::Kernels::layer_norm_row_backward).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `dy` is not empty, and `gamma`, `xhat` and `dx` have
/// `dy.len()` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward(dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
    let w = dy.len();
    debug_assert!(w > 0 && gamma.len() == w && xhat.len() == w && dx.len() == w);
    let zero = (_mm256_setzero_ps(), _mm256_setzero_ps());
    // SAFETY (every chunk below): as in forward.
    let acc = unsafe { row_sum!(Lanes, w, zero, grad_chunk(dy, gamma, xhat)) };
    let (sg, sgx) = unsafe { (reduce(acc.map(|a| a.0)), reduce(acc.map(|a| a.1))) };
    let means = (_mm256_set1_ps(sg / w as f32), _mm256_set1_ps(sgx / w as f32), _mm256_set1_ps(rstd));
    super::for_chunks!(Lanes, 0, w, |k, lanes| unsafe { dx_chunk::<false>((dy, gamma, xhat, dx), means, k, lanes) }, unsafe {
        dx_chunk::<true>((dy, gamma, xhat, dx), means, k, lanes)
    });
}

/// `m ← o⊙tanh(m)` on the chunk at `k`.
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn lstm_output_chunk<const TAIL: bool>(o: &[f32], m: &mut [f32], k: usize, lanes: Lanes) {
    // SAFETY: the caller's contract.
    unsafe { store::<TAIL>(m, k, lanes, _mm256_mul_ps(load::<TAIL>(o, k, lanes), tanh(load::<TAIL>(m, k, lanes)))) }
}

/// The layer-normalised LSTM's output on one row. See
/// [`Kernels::lstm_ln_output_row`](crate::backend::cpu::isa::Kernels::lstm_ln_output_row).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `m` is not empty and `o` has `m.len()` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn lstm_output(o: &[f32], m: &mut [f32]) {
    debug_assert!(!m.is_empty() && o.len() == m.len());
    // SAFETY (every chunk): the chunks lie in `0..m.len()`, and both slices have that length.
    super::for_chunks!(Lanes, 0, m.len(), |k, lanes| unsafe { lstm_output_chunk::<false>(o, m, k, lanes) }, unsafe {
        lstm_output_chunk::<true>(o, m, k, lanes)
    });
}

/// The backward pre-pass on the chunk at `k`: `s = γ⊙ĉ + β` (one FMA, as [`output_chunk`]),
/// `τ = tanh(s)`, `dŝ = (dm⊙o)⊙(1 − τ²)`, and `d_o = ((dm⊙τ)⊙o)⊙(1 − o)` if asked; `1 − τ²`
/// from `tanh_sech2`, accurate where it is small (the layer norm's backward multiplies `dŝ`
/// by `rstd`, up to 316, so `1 − τ·τ`'s cancellation error would be amplified).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn lstm_backward_chunk<const TAIL: bool>(r: &mut LstmLnBackRow<'_>, k: usize, lanes: Lanes) {
    // SAFETY: the caller's contract.
    unsafe {
        let one = _mm256_set1_ps(1.0);
        let s = _mm256_fmadd_ps(load::<TAIL>(r.gamma, k, lanes), load::<TAIL>(r.ln_c, k, lanes), load::<TAIL>(r.beta, k, lanes));
        store::<TAIL>(r.s, k, lanes, s);
        let (tau, sech2) = tanh_sech2(s);
        let (o, dm) = (load::<TAIL>(r.o, k, lanes), load::<TAIL>(r.dm, k, lanes));
        if let Some(d_o) = r.d_o.as_deref_mut() {
            store::<TAIL>(d_o, k, lanes, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dm, tau), o), _mm256_sub_ps(one, o)));
        }
        store::<TAIL>(r.dsh, k, lanes, _mm256_mul_ps(_mm256_mul_ps(dm, o), sech2));
    }
}

/// The layer-normalised LSTM's backward pre-pass on one active row. See
/// [`Kernels::lstm_ln_backward_row`](crate::backend::cpu::isa::Kernels::lstm_ln_backward_row).
///
/// # Safety
/// The CPU must support AVX2 and FMA; every slice of `r` has `r.o.len() ≥ 1` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn lstm_backward(mut r: LstmLnBackRow<'_>) {
    let h = r.o.len();
    debug_assert!(h > 0 && [r.gamma.len(), r.beta.len(), r.ln_c.len(), r.dm.len(), r.s.len(), r.dsh.len()].iter().all(|&l| l == h));
    debug_assert!(r.d_o.as_ref().is_none_or(|d| d.len() == h));
    // SAFETY (every chunk): the chunks lie in `0..h`, and every slice has `h` values.
    super::for_chunks!(Lanes, 0, h, |k, lanes| unsafe { lstm_backward_chunk::<false>(&mut r, k, lanes) }, unsafe {
        lstm_backward_chunk::<true>(&mut r, k, lanes)
    });
}

#[cfg(test)]
mod tests {
    crate::backend::cpu::isa::layer_norm_tests::layer_norm_kernel_tests!(super::super::Avx2::detect(), #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]);
}
