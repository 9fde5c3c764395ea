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
//! With options (peepholes, clip, input_forget: the maths of `reference/lstm.rs`'s
//! `forward_options` and `backward_options`), a row takes [`forward_options`] and
//! [`backward_options`] instead, chosen once per step by `rows.rs`; they test the options once
//! per chunk (the same for every chunk of a row), and the plain kernels above are untouched.
//! The peephole terms are FMAs, the clamp is `max(-clip, min(clip, a))` (NaN stays NaN), and a
//! saved activation counts as clipped where it equals `sigmoid` or `tanh` of `±clip` computed
//! by this module's own functions, which is what the forward stored for a clamped value.
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
/// and a whole chunk unless `TAIL`. Also `gates_chunk_options`, the gates with the row's
/// options (`r.peephole` of `3·H` values, if any; `set1`, `min`, `max`, `sub` the ISA's
/// intrinsics).
macro_rules! lstm_forward_chunks {
    ($features:literal, $L:ty, $fmadd:ident, $mul:ident, $set1:ident, $min:ident, $max:ident, $sub:ident) => {
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
        unsafe fn gates_chunk_options<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, lanes: $L) {
            let h = r.hidden;
            let clip = r.clip as f32;
            let (hi, lo) = ($set1(clip), $set1(-clip));
            let clipped = r.clip > 0.0;
            let cp = load::<TAIL>(r.c_prev, j, lanes);
            let mut ai = preact::<TAIL>(r.xg, r.hg, r.b_hh, j, lanes);
            let mut af = preact::<TAIL>(r.xg, r.hg, r.b_hh, h + j, lanes);
            let mut ag = preact::<TAIL>(r.xg, r.hg, r.b_hh, 2 * h + j, lanes);
            let mut ao = preact::<TAIL>(r.xg, r.hg, r.b_hh, 3 * h + j, lanes);
            if let Some(p) = r.peephole {
                ai = $fmadd(load::<TAIL>(p, j, lanes), cp, ai);
                af = $fmadd(load::<TAIL>(p, h + j, lanes), cp, af);
            }
            if clipped {
                ai = $max(lo, $min(hi, ai));
                af = $max(lo, $min(hi, af));
                ag = $max(lo, $min(hi, ag));
            }
            let i = sigmoid(ai);
            let f = if r.input_forget { $sub($set1(1.0), i) } else { sigmoid(af) };
            let g = tanh(ag);
            let c = $fmadd(f, cp, $mul(i, g));
            if let Some(p) = r.peephole {
                ao = $fmadd(load::<TAIL>(p, 2 * h + j, lanes), c, ao);
            }
            if clipped {
                ao = $max(lo, $min(hi, ao));
            }
            let o = sigmoid(ao);
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

lstm_forward_chunks!("avx2,fma", Lanes, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_min_ps, _mm256_max_ps, _mm256_sub_ps);

/// The forward step of one active row with options (see the module docs).
///
/// # Safety
/// As `forward`, and `r.peephole`, if any, has `3·H` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward_options(mut r: FwdRow<'_>) {
    debug_assert!(r.peephole.is_none_or(|p| p.len() == 3 * r.hidden));
    // SAFETY: as in forward; the peephole rows are `H` long at 0, H and 2H.
    in_two_passes!(Lanes, r, gates_chunk_options, output_chunk);
}

/// The backward step of one active row with options (see the module docs).
///
/// # Safety
/// As `backward`, and `r.peephole`, if any, has `3·H` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_options(mut r: BwdRow<'_>) {
    debug_assert!(r.peephole.is_none_or(|p| p.len() == 3 * r.hidden));
    let clip = Clipped::new(r.clip);
    // SAFETY: as in forward_options.
    for_chunks!(
        Lanes,
        0,
        r.hidden,
        |j, lanes| backward_chunk_options::<false>(&mut r, j, lanes, &clip),
        backward_chunk_options::<true>(&mut r, j, lanes, &clip)
    );
}

/// The activations a clamped pre-activation gives: `σ(±clip)`, `tanh(±clip)` (none without
/// a clip), by this module's functions.
struct Clipped {
    on: bool,
    sigmoid: [__m256; 2],
    tanh: [__m256; 2],
}

impl Clipped {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn new(clip: f64) -> Clipped {
        let (hi, lo) = (_mm256_set1_ps(clip as f32), _mm256_set1_ps(-clip as f32));
        // SAFETY: the caller has AVX2 and FMA (this function's features).
        unsafe { Clipped { on: clip > 0.0, sigmoid: [sigmoid(hi), sigmoid(lo)], tanh: [tanh(hi), tanh(lo)] } }
    }
}

/// `d` where the saved activation `s` is neither of `values`, else 0.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn unclipped(on: bool, d: __m256, s: __m256, values: [__m256; 2]) -> __m256 {
    if !on {
        return d;
    }
    let hit = _mm256_or_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(s, values[0]), _mm256_cmp_ps::<_CMP_EQ_OQ>(s, values[1]));
    _mm256_andnot_ps(hit, d)
}

/// Lanes `j..j + lanes.n` of a backward row with options.
///
/// # Safety
/// As [`backward_chunk`], and `r.peephole`, if any, has `3·H` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk_options<const TAIL: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes, clip: &Clipped) {
    let h = r.hidden;
    let one = _mm256_set1_ps(1.0);
    let zero = _mm256_setzero_ps();
    let i = load::<TAIL>(r.gates, j, lanes);
    let f = load::<TAIL>(r.gates, h + j, lanes);
    let g = load::<TAIL>(r.gates, 2 * h + j, lanes);
    let o = load::<TAIL>(r.gates, 3 * h + j, lanes);
    let cp = load::<TAIL>(r.c_prev, j, lanes);
    let tc = tanh(load::<TAIL>(r.c, j, lanes));
    let dm = load::<TAIL>(r.dm, j, lanes);
    let p = |k: usize| r.peephole.map_or(zero, |p| load::<TAIL>(p, k * h + j, lanes));

    let ao = unclipped(clip.on, dsigmoid(_mm256_mul_ps(dm, tc), o), o, clip.sigmoid);
    let mut dc = _mm256_fmadd_ps(_mm256_mul_ps(dm, o), _mm256_fnmadd_ps(tc, tc, one), load::<TAIL>(r.dc, j, lanes));
    if r.peephole.is_some() {
        dc = _mm256_fmadd_ps(ao, p(2), dc);
    }
    let df = _mm256_mul_ps(dc, cp);
    let mut di = _mm256_mul_ps(dc, g);
    if r.input_forget {
        di = _mm256_sub_ps(di, df);
    }
    let ai = unclipped(clip.on, dsigmoid(di, i), i, clip.sigmoid);
    let af = if r.input_forget { zero } else { unclipped(clip.on, dsigmoid(df, f), f, clip.sigmoid) };
    let ag = unclipped(clip.on, _mm256_mul_ps(_mm256_mul_ps(dc, i), _mm256_fnmadd_ps(g, g, one)), g, clip.tanh);
    let mut dc_prev = _mm256_mul_ps(dc, f);
    if r.peephole.is_some() {
        dc_prev = _mm256_fmadd_ps(ai, p(0), _mm256_fmadd_ps(af, p(1), dc_prev));
    }
    store::<TAIL>(r.dc, j, lanes, dc_prev);
    for (k, v) in [ai, af, ag, ao].into_iter().enumerate() {
        store::<TAIL>(r.dgi, k * h + j, lanes, v);
        store::<TAIL>(r.dgh, k * h + j, lanes, v);
    }
}

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
