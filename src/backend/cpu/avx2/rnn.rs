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
//! Memory per row and step, in floats: forward reads `xg`, `hg` and writes `gates`, `m` (`H`
//! each): 4H; backward reads `gates`, `dm` and writes `dgi`, `dgh`, `dh_direct`: 5H. The cost
//! is memory, plus one exponential and one division per 8 lanes for tanh forward.

use super::math::tanh;
use super::{for_chunks, load, preact, store, Lanes};
use crate::backend::host::{CellBackward, CellForward};
use std::arch::x86_64::*;

/// The `RELU` argument of [`forward`] and [`backward`] for a tanh RNN.
pub(super) const TANH: bool = false;
/// The `RELU` argument of [`forward`] and [`backward`] for a relu RNN.
pub(super) const RELU: bool = true;

/// The forward step, with relu if `RELU`, else tanh.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the slices an RNN uses have the lengths [`CellForward`]
/// documents (as `cell_forward` checks).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward<const RELU: bool>(s: CellForward<'_, f32>) {
    let h = s.hidden;
    for (b, &active) in s.active.iter().enumerate() {
        let row = b * h..(b + 1) * h;
        let gates = &mut s.gates[row.clone()];
        if !active {
            gates.fill(0.0);
            continue;
        }
        let (xg, hg, m) = (&s.xg[row.clone()], &s.hg[row.clone()], &mut s.m[row]);
        debug_assert!(s.b_hh.is_none_or(|b| b.len() == h));
        // SAFETY: every slice here is `H` long (rows of slices checked by cell_forward, and
        // b_hh itself), and for_chunks keeps j + lanes.n ≤ H.
        for_chunks!(
            0,
            h,
            |j, lanes| forward_chunk::<false, RELU>(xg, hg, s.b_hh, gates, m, j, lanes),
            forward_chunk::<true, RELU>(xg, hg, s.b_hh, gates, m, j, lanes)
        );
    }
}

/// Lanes `j..j + lanes.n` of a forward row; every slice is `[H]`.
///
/// # Safety
/// AVX2 and FMA; `j + lanes.n ≤ H`, and `lanes.n = 8` unless `TAIL`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_chunk<const TAIL: bool, const RELU: bool>(
    xg: &[f32],
    hg: &[f32],
    b_hh: Option<&[f32]>,
    gates: &mut [f32],
    m: &mut [f32],
    j: usize,
    lanes: Lanes,
) {
    let a = preact::<TAIL>(xg, hg, b_hh, j, lanes);
    let v = if RELU { _mm256_max_ps(_mm256_setzero_ps(), a) } else { tanh(a) };
    store::<TAIL>(gates, j, lanes, v);
    store::<TAIL>(m, j, lanes, v);
}

/// The backward step, with relu if `RELU`, else tanh.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the slices an RNN uses have the lengths
/// [`CellBackward`] documents (as `cell_backward` checks).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward<const RELU: bool>(s: CellBackward<'_, f32>) {
    let h = s.hidden;
    for (b, &active) in s.active.iter().enumerate() {
        let row = b * h..(b + 1) * h;
        let dgi = &mut s.dgi[row.clone()];
        let dgh = &mut s.dgh[row.clone()];
        s.dh_direct[row.clone()].fill(0.0);
        if !active {
            dgi.fill(0.0);
            dgh.fill(0.0);
            continue;
        }
        let (v, dm) = (&s.gates[row.clone()], &s.dm[row]);
        // SAFETY: as in forward.
        for_chunks!(
            0,
            h,
            |j, lanes| backward_chunk::<false, RELU>(v, dm, dgi, dgh, j, lanes),
            backward_chunk::<true, RELU>(v, dm, dgi, dgh, j, lanes)
        );
    }
}

/// Lanes `j..j + lanes.n` of a backward row; every slice is `[H]`.
///
/// # Safety
/// As [`forward_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk<const TAIL: bool, const RELU: bool>(
    v: &[f32],
    dm: &[f32],
    dgi: &mut [f32],
    dgh: &mut [f32],
    j: usize,
    lanes: Lanes,
) {
    let one = _mm256_set1_ps(1.0);
    let v = load::<TAIL>(v, j, lanes);
    let d = if RELU { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, _mm256_setzero_ps()), one) } else { _mm256_fnmadd_ps(v, v, one) };
    let dg = _mm256_mul_ps(load::<TAIL>(dm, j, lanes), d);
    store::<TAIL>(dgi, j, lanes, dg);
    store::<TAIL>(dgh, j, lanes, dg);
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_cell, check_extremes};
    use crate::config::CellKind;

    #[test]
    fn tanh_matches_reference() {
        check_cell(CellKind::RnnTanh);
    }

    #[test]
    fn relu_matches_reference() {
        check_cell(CellKind::RnnRelu);
    }

    #[test]
    fn extremes() {
        check_extremes(CellKind::RnnTanh);
        check_extremes(CellKind::RnnRelu);
    }
}
