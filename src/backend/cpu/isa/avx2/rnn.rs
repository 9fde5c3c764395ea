//! Elman RNN step, tanh or relu, forward and backward, fused, 8 lanes at a time. The maths of
//! `reference/rnn.rs`:
//!
//! - forward: `h' = act(xg + hg + b_hh)`, written to both `gates` and `m`;
//! - backward: `dgi = dgh = dm·act'`, with `tanh' = 1 - h'²` and `relu' = [h' > 0]` taken from
//!   the saved output; `dh_direct = 0`.
//!
//! `relu` is `max(0, a)` with the constant first, so that a NaN `a` stays NaN and `-0` stays
//! `-0`, as in the reference; `relu'` multiplies `dm` by exactly 1 or 0, as the reference does.
//!
//! With a clip (`r.clip > 0`), a row takes [`forward_clipped`] and [`backward_clipped`]
//! (chosen once per step by `rows.rs`): the pre-activation is clamped to `[-clip, clip]`
//! (`max(-clip, min(clip, a))`) before the activation, and the gradient is zero where the saved
//! output equals the activation of `clip` or `-clip` (see `lstm.rs`).
//!
//! Memory per row and step, in floats: forward reads `xg`, `hg` and writes `gates`, `m` (`H`
//! each): 4H; backward reads `gates`, `dm` and writes `dgi`, `dgh`, `dh_direct`: 5H. The cost
//! is memory, plus one exponential and one division per 8 lanes for tanh forward.

use super::lstm::unclipped;
use super::math::tanh;
use super::{for_chunks, load, preact, store, Lanes};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use std::arch::x86_64::*;

/// The forward step of one active row, with relu if `RELU`, else tanh.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the row's slices have the lengths [`FwdRow`] documents
/// for an RNN.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward<const RELU: bool>(mut r: FwdRow<'_>) {
    debug_assert!(r.b_hh.is_none_or(|b| b.len() == r.hidden));
    let h = r.hidden;
    // SAFETY: every slice here is `H` long (the caller's contract), and for_chunks keeps
    // j + lanes.n ≤ H.
    for_chunks!(Lanes, 0, h, |j, lanes| forward_chunk::<false, RELU>(&mut r, j, lanes), forward_chunk::<true, RELU>(&mut r, j, lanes));
}

/// Lanes `j..j + lanes.n` of a forward row; every slice is `[H]`.
///
/// # Safety
/// AVX2 and FMA; `j + lanes.n ≤ H`, and `lanes.n = 8` unless `TAIL`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_chunk<const TAIL: bool, const RELU: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes) {
    let a = preact::<TAIL>(r.xg, r.hg, r.b_hh, j, lanes);
    let v = if RELU { _mm256_max_ps(_mm256_setzero_ps(), a) } else { tanh(a) };
    store::<TAIL>(r.gates, j, lanes, v);
    store::<TAIL>(r.m, j, lanes, v);
}

/// The backward step of one active row, with relu if `RELU`, else tanh.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the row's slices have the lengths [`BwdRow`] documents
/// for an RNN.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward<const RELU: bool>(mut r: BwdRow<'_>) {
    // SAFETY: as in forward.
    unsafe {
        let h = r.hidden;
        for_chunks!(Lanes, 0, h, |j, lanes| backward_chunk::<false, RELU>(&mut r, j, lanes), backward_chunk::<true, RELU>(&mut r, j, lanes))
    }
}

/// Lanes `j..j + lanes.n` of a backward row; every slice is `[H]` (safety: as
/// [`forward_chunk`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk<const TAIL: bool, const RELU: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes) {
    let one = _mm256_set1_ps(1.0);
    let v = load::<TAIL>(r.gates, j, lanes);
    let d = if RELU { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_setzero_ps()), one) } else { _mm256_fnmadd_ps(v, v, one) };
    let dg = _mm256_mul_ps(load::<TAIL>(r.dm, j, lanes), d);
    store::<TAIL>(r.dgi, j, lanes, dg);
    store::<TAIL>(r.dgh, j, lanes, dg);
}

/// The forward step of one active row with a clip, relu if `RELU`, else tanh.
///
/// # Safety
/// As [`forward`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward_clipped<const RELU: bool>(mut r: FwdRow<'_>) {
    let h = r.hidden;
    let clip = r.clip as f32;
    let (hi, lo) = (_mm256_set1_ps(clip), _mm256_set1_ps(-clip));
    // SAFETY: as in forward.
    for_chunks!(
        Lanes,
        0,
        h,
        |j, lanes| forward_chunk_clipped::<false, RELU>(&mut r, j, lanes, hi, lo),
        forward_chunk_clipped::<true, RELU>(&mut r, j, lanes, hi, lo)
    );
}

/// [`forward_chunk`] with the clamp to `[lo, hi]`.
///
/// # Safety
/// As [`forward_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_chunk_clipped<const TAIL: bool, const RELU: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes, hi: __m256, lo: __m256) {
    let a = _mm256_max_ps(lo, _mm256_min_ps(hi, preact::<TAIL>(r.xg, r.hg, r.b_hh, j, lanes)));
    let v = if RELU { _mm256_max_ps(_mm256_setzero_ps(), a) } else { tanh(a) };
    store::<TAIL>(r.gates, j, lanes, v);
    store::<TAIL>(r.m, j, lanes, v);
}

/// The backward step of one active row with a clip, relu if `RELU`, else tanh.
///
/// # Safety
/// As [`backward`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_clipped<const RELU: bool>(mut r: BwdRow<'_>) {
    let (hi, lo) = (_mm256_set1_ps(r.clip as f32), _mm256_set1_ps(-r.clip as f32));
    let act = |a: __m256| if RELU { _mm256_max_ps(_mm256_setzero_ps(), a) } else { tanh(a) };
    let values = [act(hi), act(lo)];
    let h = r.hidden;
    // SAFETY: as in forward.
    for_chunks!(
        Lanes,
        0,
        h,
        |j, lanes| backward_chunk_clipped::<false, RELU>(&mut r, j, lanes, values),
        backward_chunk_clipped::<true, RELU>(&mut r, j, lanes, values)
    );
}

/// [`backward_chunk`], zero where the saved output is one of `values`.
///
/// # Safety
/// As [`forward_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk_clipped<const TAIL: bool, const RELU: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes, values: [__m256; 2]) {
    let one = _mm256_set1_ps(1.0);
    let v = load::<TAIL>(r.gates, j, lanes);
    let d = if RELU { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_setzero_ps()), one) } else { _mm256_fnmadd_ps(v, v, one) };
    let dg = unclipped(true, _mm256_mul_ps(load::<TAIL>(r.dm, j, lanes), d), v, values);
    store::<TAIL>(r.dgi, j, lanes, dg);
    store::<TAIL>(r.dgh, j, lanes, dg);
}
