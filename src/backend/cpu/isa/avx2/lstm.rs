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
use super::{dsigmoid, for_chunks, in_two_passes, load, preact, store, two_pass_row_kernels, Lanes};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use std::arch::x86_64::*;

two_pass_row_kernels!("LSTM");

/// The two passes of the LSTM forward on a chunk of lanes (`lanes: L`), for AVX2 and
/// AVX-512 alike: `gates_chunk` (the gates and `c`) and `output_chunk` (`m = o·tanh(c)`, after
/// `gates_chunk`), compiled with `features`, with `fmadd` and `mul` the ISA's intrinsics and
/// `load`, `store`, `preact`, `sigmoid`, `tanh` those of the module invoking it. Both are
/// `unsafe`: the ISA's features, `r`'s slices of their documented lengths, `j + lanes.n ≤ H`,
/// and a whole chunk unless `TAIL`.
macro_rules! lstm_forward_chunks {
    ($features:literal, $L:ty, $fmadd:ident, $mul:ident) => {
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn gates_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, lanes: $L) {
            let h = r.hidden;
            let i = sigmoid(preact::<TAIL>(r.xg, r.hg, r.b_hh, j, lanes));
            let f = sigmoid(preact::<TAIL>(r.xg, r.hg, r.b_hh, h + j, lanes));
            let g = tanh(preact::<TAIL>(r.xg, r.hg, r.b_hh, 2 * h + j, lanes));
            let o = sigmoid(preact::<TAIL>(r.xg, r.hg, r.b_hh, 3 * h + j, lanes));
            let c = $fmadd(f, load::<TAIL>(r.c_prev, j, lanes), $mul(i, g));
            store::<TAIL>(r.c, j, lanes, c);
            store::<TAIL>(r.gates, j, lanes, i);
            store::<TAIL>(r.gates, h + j, lanes, f);
            store::<TAIL>(r.gates, 2 * h + j, lanes, g);
            store::<TAIL>(r.gates, 3 * h + j, lanes, o);
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn output_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, lanes: $L) {
            let o = load::<TAIL>(r.gates, 3 * r.hidden + j, lanes);
            let c = load::<TAIL>(r.c, j, lanes);
            store::<TAIL>(r.m, j, lanes, $mul(o, tanh(c)));
        }
    };
}
pub(crate) use lstm_forward_chunks;

lstm_forward_chunks!("avx2,fma", Lanes, _mm256_fmadd_ps, _mm256_mul_ps);

/// Lanes `j..j + lanes.n` of a backward row.
///
/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk<const TAIL: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes) {
    let h = r.hidden;
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
