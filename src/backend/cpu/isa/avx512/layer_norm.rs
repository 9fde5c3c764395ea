//! Layer norm of one row, forward and backward, 16 lanes at a time with AVX-512F: the passes
//! and the order of `isa/avx2/layer_norm.rs` (its `row_sum!`: 4 accumulators, the last partial
//! chunk into the fourth) on registers twice as wide, then `(a0 + a1) + (a2 + a3)` and the 16
//! lanes by halves (`hi256 + lo256`, then AVX2's 128-bit steps). A term goes through at most
//! `ceil(w/64) + 6` additions (70 at `w = 4096`). The last `w mod 16` values are loaded and
//! stored under a lane mask (masked lanes are not accessed, and load as 0).

use super::lanes::{load, store, Lanes};
use crate::backend::cpu::isa::avx2::{for_chunks, row_sum};
use std::arch::x86_64::*;

/// Accumulators per sum (fixed by `row_sum!`).
const ACC: usize = 4;
/// See [`Kernels::LN_PARTIAL_SUMS`](crate::backend::cpu::isa::Kernels::LN_PARTIAL_SUMS).
#[cfg(test)]
pub(super) const PARTIAL_SUMS: usize = ACC * Lanes::N;
/// `ε`, added to the variance.
const EPS: f32 = 1e-5;

/// The sum of the accumulators' lanes: `(a0 + a1) + (a2 + a3)`, then the lanes by halves.
///
/// # Safety
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn reduce(a: [__m512; ACC]) -> f32 {
    let v = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    let v = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
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
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sum_chunk<const TAIL: bool>(acc: __m512, x: &[f32], k: usize, lanes: Lanes) -> __m512 {
    // SAFETY: the caller's contract.
    _mm512_add_ps(acc, unsafe { load::<TAIL>(x, k, lanes) })
}

/// `acc + (x[k..] − mean)²`, 0 in the lanes off the row.
///
/// # Safety
/// As [`load`].
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn square_chunk<const TAIL: bool>(acc: __m512, x: &[f32], mean: __m512, k: usize, lanes: Lanes) -> __m512 {
    // SAFETY: the caller's contract.
    let v = unsafe { load::<TAIL>(x, k, lanes) };
    let d = if TAIL { _mm512_maskz_sub_ps(lanes.mask, v, mean) } else { _mm512_sub_ps(v, mean) };
    _mm512_fmadd_ps(d, d, acc)
}

/// `(acc.0 + g, acc.1 + g⊙x̂)` with `g = γ⊙dy` on the chunk at `k`.
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn grad_chunk<const TAIL: bool>(
    acc: (__m512, __m512),
    dy: &[f32],
    gamma: &[f32],
    xhat: &[f32],
    k: usize,
    lanes: Lanes,
) -> (__m512, __m512) {
    // SAFETY: the caller's contract.
    let (g, xh) = unsafe { (_mm512_mul_ps(load::<TAIL>(gamma, k, lanes), load::<TAIL>(dy, k, lanes)), load::<TAIL>(xhat, k, lanes)) };
    (_mm512_add_ps(acc.0, g), _mm512_fmadd_ps(g, xh, acc.1))
}

/// The forward's last pass on the chunk at `k` (as AVX2's `output_chunk`).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn output_chunk<const TAIL: bool>(
    x: &mut [f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    xhat: &mut Option<&mut [f32]>,
    (mean, rstd): (__m512, __m512),
    k: usize,
    lanes: Lanes,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let xh = _mm512_mul_ps(_mm512_sub_ps(load::<TAIL>(x, k, lanes), mean), rstd);
        if let Some(xhat) = xhat.as_deref_mut() {
            store::<TAIL>(xhat, k, lanes, xh);
        }
        let g = load::<TAIL>(gamma, k, lanes);
        let y = match beta {
            Some(b) => _mm512_fmadd_ps(g, xh, load::<TAIL>(b, k, lanes)),
            None => _mm512_mul_ps(g, xh),
        };
        store::<TAIL>(x, k, lanes, y);
    }
}

/// `dx` on the chunk at `k` (as AVX2's `dx_chunk`).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dx_chunk<const TAIL: bool>(
    (dy, gamma, xhat, dx): (&[f32], &[f32], &[f32], &mut [f32]),
    (mg, mgx, rstd): (__m512, __m512, __m512),
    k: usize,
    lanes: Lanes,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let g = _mm512_mul_ps(load::<TAIL>(gamma, k, lanes), load::<TAIL>(dy, k, lanes));
        let t = _mm512_fnmadd_ps(load::<TAIL>(xhat, k, lanes), mgx, _mm512_sub_ps(g, mg));
        store::<TAIL>(dx, k, lanes, _mm512_mul_ps(rstd, t));
    }
}

/// Layer norm of the row `x` in place; returns `rstd`. See
/// [`Kernels::layer_norm_row`](crate::backend::cpu::isa::Kernels::layer_norm_row).
///
/// # Safety
/// AVX-512F, AVX2 and FMA; `x` is not empty, and `gamma`, `beta` and `xhat` (if given) have
/// `x.len()` values.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn forward(x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, mut xhat: Option<&mut [f32]>) -> f32 {
    let w = x.len();
    debug_assert!(w > 0 && gamma.len() == w && beta.is_none_or(|b| b.len() == w) && xhat.as_ref().is_none_or(|s| s.len() == w));
    // SAFETY (every chunk below): the chunks lie in `0..w`, and every slice has `w` values.
    let mean = unsafe { reduce(row_sum!(Lanes, w, _mm512_setzero_ps(), sum_chunk(x))) } / w as f32;
    let sq = unsafe { reduce(row_sum!(Lanes, w, _mm512_setzero_ps(), square_chunk(x, _mm512_set1_ps(mean)))) };
    let rstd = 1.0 / (sq / w as f32 + EPS).sqrt();
    let stats = (_mm512_set1_ps(mean), _mm512_set1_ps(rstd));
    for_chunks!(Lanes, 0, w, |k, lanes| unsafe { output_chunk::<false>(x, gamma, beta, &mut xhat, stats, k, lanes) }, unsafe {
        output_chunk::<true>(x, gamma, beta, &mut xhat, stats, k, lanes)
    });
    rstd
}

/// The backward of [`forward`] on one row. See
/// [`Kernels::layer_norm_row_backward`](crate::backend::cpu::isa::Kernels::layer_norm_row_backward).
///
/// # Safety
/// AVX-512F, AVX2 and FMA; `dy` is not empty, and `gamma`, `xhat` and `dx` have `dy.len()`
/// values.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn backward(dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
    let w = dy.len();
    debug_assert!(w > 0 && gamma.len() == w && xhat.len() == w && dx.len() == w);
    let zero = (_mm512_setzero_ps(), _mm512_setzero_ps());
    // SAFETY (every chunk below): as in forward.
    let acc = unsafe { row_sum!(Lanes, w, zero, grad_chunk(dy, gamma, xhat)) };
    let (sg, sgx) = unsafe { (reduce(acc.map(|a| a.0)), reduce(acc.map(|a| a.1))) };
    let means = (_mm512_set1_ps(sg / w as f32), _mm512_set1_ps(sgx / w as f32), _mm512_set1_ps(rstd));
    for_chunks!(Lanes, 0, w, |k, lanes| unsafe { dx_chunk::<false>((dy, gamma, xhat, dx), means, k, lanes) }, unsafe {
        dx_chunk::<true>((dy, gamma, xhat, dx), means, k, lanes)
    });
}

#[cfg(test)]
mod tests {
    crate::backend::cpu::isa::layer_norm_tests::layer_norm_kernel_tests!(super::super::Avx512::detect(), #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]);
}
