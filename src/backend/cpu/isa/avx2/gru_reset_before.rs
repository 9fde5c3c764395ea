//! GRU with the reset gate applied before the recurrent matmul (`linear_before_reset = false`),
//! the four parts of its step (`host/gru_reset_before.rs` runs the products between them), 8
//! lanes at a time. The maths of `reference/gru_reset_before.rs`, gates `r, z, n`, clipped if
//! `CLIP` as in `gru.rs` ([`Clip`]):
//!
//! - forward, before the product: `r = σ(xg_r + (hg_r + b_hr))`, `z = σ(xg_z + (hg_z + b_hz))`,
//!   `extra = r·h_prev`; after it: `n = tanh(xg_n + (hg_n + b_hn))`, `m = (1 - z)·n + z·h_prev`;
//! - backward, before the product: `dz = dm(h_prev - n)`, `dn = dm(1 - z)`,
//!   `dgi_z = dz·z(1 - z)`, `dgi_n = dn(1 - n²)`, `dh_direct = dm·z`; after it, from
//!   `du = dgh` (the gradient of `r·h_prev`): `dgi_r = du·h_prev·r(1 - r)`,
//!   `dh_direct += du·r`.
//!
//! Each part is one pass over its row (two transcendentals per chunk before the product, one
//! after it: the PyTorch form's three, split by the product). Memory per row and step, in
//! floats: forward reads `xg`, `hg` (`3H` each), `h_prev` (`H`, twice), writes `gates` (`3H`),
//! `extra`, `m` (`H` each), and reads back `z`; backward reads `gates` (`3H`), `h_prev` (`H`,
//! twice), `dm`, `dgh` (`H` each), writes `dgi` (`3H`) and `dh_direct` (`H`, twice).

use super::gru::Clip;
use super::math::{sigmoid, tanh};
use super::{dsigmoid, for_chunks, hidden_preact, load, store, Lanes};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use std::arch::x86_64::*;

/// `F::<false>` over the whole chunks of a row of `H` values, `F::<true>` over its tail, with
/// the row's [`Clip`] of `CLIP`.
macro_rules! row {
    ($r:ident, $chunk:ident) => {{
        let clip = Clip::of::<CLIP>($r.clip);
        for_chunks!(
            Lanes,
            0,
            $r.hidden,
            |j, lanes| $chunk::<false, CLIP>(&mut $r, j, lanes, clip),
            $chunk::<true, CLIP>(&mut $r, j, lanes, clip)
        );
    }};
}

/// Forward, before the product, of one active row.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the row's slices have the lengths [`FwdRow`] documents
/// for a GRU.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gates<const CLIP: bool>(mut r: FwdRow<'_>) {
    // SAFETY: the slices of `r` are `H` or `3·H` long (the caller's contract), and the chunks
    // lie below H.
    row!(r, gates_chunk)
}

/// Forward, after the product, of one active row (safety: as [`gates`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn output<const CLIP: bool>(mut r: FwdRow<'_>) {
    // SAFETY: as in gates.
    row!(r, output_chunk)
}

/// Backward, before the product, of one active row (safety: as [`gates`], for [`BwdRow`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_output<const CLIP: bool>(mut r: BwdRow<'_>) {
    // SAFETY: as in gates.
    row!(r, backward_output_chunk)
}

/// Backward, after the product, of one active row (safety: as [`backward_output`], and `dgh`
/// has `H` values).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_reset<const CLIP: bool>(mut r: BwdRow<'_>) {
    // SAFETY: as in gates.
    row!(r, backward_reset_chunk)
}

/// # Safety
/// AVX2 and FMA; `r`'s slices have their documented lengths; `j + lanes.n ≤ H`, and
/// `lanes.n = 8` unless `TAIL`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gates_chunk<const TAIL: bool, const CLIP: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes, clip: Clip) {
    let h = r.hidden;
    let rg = sigmoid(clip.clamp::<CLIP>(_mm256_add_ps(load::<TAIL>(r.xg, j, lanes), hidden_preact::<TAIL>(r.hg, r.b_hh, j, lanes))));
    let z = sigmoid(clip.clamp::<CLIP>(_mm256_add_ps(load::<TAIL>(r.xg, h + j, lanes), hidden_preact::<TAIL>(r.hg, r.b_hh, h + j, lanes))));
    store::<TAIL>(r.gates, j, lanes, rg);
    store::<TAIL>(r.gates, h + j, lanes, z);
    store::<TAIL>(r.extra, j, lanes, _mm256_mul_ps(rg, load::<TAIL>(r.h_prev, j, lanes)));
}

/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_chunk<const TAIL: bool, const CLIP: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes, clip: Clip) {
    let (h, one) = (r.hidden, _mm256_set1_ps(1.0));
    let z = load::<TAIL>(r.gates, h + j, lanes);
    let a = _mm256_add_ps(load::<TAIL>(r.xg, 2 * h + j, lanes), hidden_preact::<TAIL>(r.hg, r.b_hh, 2 * h + j, lanes));
    let n = tanh(clip.clamp::<CLIP>(a));
    let m = _mm256_fmadd_ps(z, load::<TAIL>(r.h_prev, j, lanes), _mm256_mul_ps(_mm256_sub_ps(one, z), n));
    store::<TAIL>(r.gates, 2 * h + j, lanes, n);
    store::<TAIL>(r.m, j, lanes, m);
}

/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_output_chunk<const TAIL: bool, const CLIP: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes, clip: Clip) {
    let (h, one) = (r.hidden, _mm256_set1_ps(1.0));
    let dh = load::<TAIL>(r.dm, j, lanes);
    let z = load::<TAIL>(r.gates, h + j, lanes);
    let n = load::<TAIL>(r.gates, 2 * h + j, lanes);
    let dn = _mm256_mul_ps(dh, _mm256_sub_ps(one, z));
    let dz = _mm256_mul_ps(dh, _mm256_sub_ps(load::<TAIL>(r.h_prev, j, lanes), n));
    store::<TAIL>(r.dgi, h + j, lanes, clip.pass_sigmoid::<CLIP>(dsigmoid(dz, z), z));
    store::<TAIL>(r.dgi, 2 * h + j, lanes, clip.pass_tanh::<CLIP>(_mm256_mul_ps(dn, _mm256_fnmadd_ps(n, n, one)), n));
    store::<TAIL>(r.dh_direct, j, lanes, _mm256_mul_ps(dh, z));
}

/// # Safety
/// As [`gates_chunk`], and `dgh` has `H` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_reset_chunk<const TAIL: bool, const CLIP: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes, clip: Clip) {
    let rg = load::<TAIL>(r.gates, j, lanes);
    let du = load::<TAIL>(r.dgh, j, lanes);
    let dr = _mm256_mul_ps(du, load::<TAIL>(r.h_prev, j, lanes));
    store::<TAIL>(r.dgi, j, lanes, clip.pass_sigmoid::<CLIP>(dsigmoid(dr, rg), rg));
    let direct = _mm256_add_ps(load::<TAIL>(r.dh_direct, j, lanes), _mm256_mul_ps(du, rg));
    store::<TAIL>(r.dh_direct, j, lanes, direct);
}
