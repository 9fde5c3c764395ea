//! LSTM step, forward and backward, fused, 8 lanes at a time. The maths of
//! `reference/lstm.rs`, gates `i, f, g, o`:
//!
//! - forward, `a = xg + hg + b_hh`: `i = σ(a_i)`, `f = σ(a_f)`, `g = tanh(a_g)`, `o = σ(a_o)`,
//!   `c = f·c_prev + i·g` (one FMA), `m = o·tanh(c)`;
//! - backward from `dm` and `dc'`: `tc = tanh(c)`, `dc' += dm·o·(1 - tc²)`,
//!   `dgi = dgh = [dc'·g·i(1-i), dc'·c_prev·f(1-f), dc'·i·(1-g²), dm·tc·o(1-o)]`,
//!   `dc = dc'·f`; `dh_direct = 0`.
//!
//! Memory per row and step, in floats: forward reads `xg`, `hg` (`4H` each) and `c_prev` (`H`),
//! writes `gates` (`4H`), `c` and `m` (`H` each): 15H, each once, plus `b_hh` (`4H`), which
//! stays in L1 across the rows. Backward reads `gates` (`4H`), `c`, `c_prev`, `dm`, `dc` (`H`
//! each), writes `dgi`, `dgh` (`4H` each), `dc` and `dh_direct` (`H` each): 18H.
//!
//! Forward evaluates 5 exponentials and 5 divisions per 8 lanes (3 σ, 2 tanh), about 180
//! instructions, and is bound by arithmetic, not memory: hence the two passes per block (see
//! [`forward`]). Backward evaluates one tanh per 8 lanes and runs near memory speed.

use super::math::{sigmoid, tanh};
use super::{dsigmoid, for_chunks, load, preact, store, Lanes};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use std::arch::x86_64::*;

/// Lanes per block of a forward row (a multiple of 8).
const BLOCK: usize = 256;

/// The forward step of one active row.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the row's slices have the lengths [`FwdRow`] documents
/// for an LSTM.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward(mut r: FwdRow<'_>) {
    let h = r.h;
    debug_assert!(r.b_hh.is_none_or(|b| b.len() == 4 * h));
    // Two passes per block: the gates and c, then m = o·tanh(c) from the o and c just
    // stored (in L1). In one pass each chunk would be a chain σ → c → tanh(c) some 150
    // cycles deep, more than the out-of-order window hides; split, the chunks of each pass
    // are independent and overlap.
    let mut j0 = 0;
    while j0 < h {
        let j1 = (j0 + BLOCK).min(h);
        // SAFETY: the slices of `r` are `H` or `4H` long (the caller's contract), and
        // for_chunks keeps j + lanes.n ≤ j1 ≤ H.
        for_chunks!(j0, j1, |j, lanes| gates_chunk::<false>(&mut r, j, lanes), gates_chunk::<true>(&mut r, j, lanes));
        // SAFETY: as above.
        for_chunks!(j0, j1, |j, lanes| output_chunk::<false>(&mut r, j, lanes), output_chunk::<true>(&mut r, j, lanes));
        j0 = j1;
    }
}

/// The gates and `c` of lanes `j..j + lanes.n` of a forward row.
///
/// # Safety
/// AVX2 and FMA; `r`'s slices have their documented lengths; `j + lanes.n ≤ r.h`, and
/// `lanes.n = 8` unless `TAIL`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gates_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes) {
    let h = r.h;
    let i = sigmoid(preact::<TAIL>(r.xg, r.hg, r.b_hh, j, lanes));
    let f = sigmoid(preact::<TAIL>(r.xg, r.hg, r.b_hh, h + j, lanes));
    let g = tanh(preact::<TAIL>(r.xg, r.hg, r.b_hh, 2 * h + j, lanes));
    let o = sigmoid(preact::<TAIL>(r.xg, r.hg, r.b_hh, 3 * h + j, lanes));
    let c = _mm256_fmadd_ps(f, load::<TAIL>(r.c_prev, j, lanes), _mm256_mul_ps(i, g));
    store::<TAIL>(r.c, j, lanes, c);
    store::<TAIL>(r.gates, j, lanes, i);
    store::<TAIL>(r.gates, h + j, lanes, f);
    store::<TAIL>(r.gates, 2 * h + j, lanes, g);
    store::<TAIL>(r.gates, 3 * h + j, lanes, o);
}

/// `m = o·tanh(c)` of lanes `j..j + lanes.n` of a forward row, after [`gates_chunk`].
///
/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes) {
    let o = load::<TAIL>(r.gates, 3 * r.h + j, lanes);
    let c = load::<TAIL>(r.c, j, lanes);
    store::<TAIL>(r.m, j, lanes, _mm256_mul_ps(o, tanh(c)));
}

/// The backward step of one active row.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the row's slices have the lengths [`BwdRow`] documents
/// for an LSTM.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward(mut r: BwdRow<'_>) {
    // SAFETY: as in forward.
    for_chunks!(0, r.h, |j, lanes| backward_chunk::<false>(&mut r, j, lanes), backward_chunk::<true>(&mut r, j, lanes));
}

/// Lanes `j..j + lanes.n` of a backward row.
///
/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk<const TAIL: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes) {
    let h = r.h;
    let one = _mm256_set1_ps(1.0);
    let i = load::<TAIL>(r.gates, j, lanes);
    let f = load::<TAIL>(r.gates, h + j, lanes);
    let g = load::<TAIL>(r.gates, 2 * h + j, lanes);
    let o = load::<TAIL>(r.gates, 3 * h + j, lanes);
    let tc = tanh(load::<TAIL>(r.c, j, lanes));
    let dm = load::<TAIL>(r.dm, j, lanes);

    let d_o = _mm256_mul_ps(dm, tc);
    let dc = _mm256_fmadd_ps(_mm256_mul_ps(dm, o), _mm256_fnmadd_ps(tc, tc, one), load::<TAIL>(r.dc, j, lanes));
    let di = _mm256_mul_ps(dc, g);
    let dg = _mm256_mul_ps(dc, i);
    let df = _mm256_mul_ps(dc, load::<TAIL>(r.c_prev, j, lanes));
    store::<TAIL>(r.dc, j, lanes, _mm256_mul_ps(dc, f));

    // σ' = s(1 - s) and tanh' = 1 - t², from the saved activations.
    let ai = dsigmoid(di, i);
    let af = dsigmoid(df, f);
    let ag = _mm256_mul_ps(dg, _mm256_fnmadd_ps(g, g, one));
    let ao = dsigmoid(d_o, o);
    for (k, v) in [ai, af, ag, ao].into_iter().enumerate() {
        store::<TAIL>(r.dgi, k * h + j, lanes, v);
        store::<TAIL>(r.dgh, k * h + j, lanes, v);
    }
}
