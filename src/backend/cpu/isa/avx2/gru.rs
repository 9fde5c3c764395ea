//! GRU step (PyTorch/cuDNN variant: reset applied after the recurrent matmul), forward and
//! backward, fused, 8 lanes at a time. The maths of `reference/gru.rs`, gates `r, z, n`:
//!
//! - forward, `ah = hg + b_hh`: `r = σ(xg_r + ah_r)`, `z = σ(xg_z + ah_z)`,
//!   `n = tanh(xg_n + r·ah_n)` (one FMA), `m = (1 - z)·n + z·h_prev`; `extra = ah_n` is saved;
//! - backward from `dm`: `dn = dm(1 - z)`, `dz = dm(h_prev - n)`, `da_n = dn(1 - n²)`,
//!   `da_r = da_n·ah_n·r(1-r)`, `da_z = dz·z(1-z)`; `dgi = [da_r, da_z, da_n]`,
//!   `dgh = [da_r, da_z, da_n·r]`, `dh_direct = dm·z`.
//!
//! Memory per row and step, in floats: forward reads `xg`, `hg` (`3H` each) and `h_prev` (`H`),
//! writes `gates` (`3H`), `extra` and `m` (`H` each): 12H, each once, plus `b_hh` (`3H`, in L1
//! across rows). Backward reads `gates` (`3H`), `extra`, `h_prev`, `dm` (`H` each), writes
//! `dgi`, `dgh` (`3H` each) and `dh_direct` (`H`): 16H.
//!
//! Forward evaluates 3 exponentials and 3 divisions per 8 lanes and is bound by arithmetic, in
//! two passes per block as the LSTM's; backward has no transcendental and runs at memory speed
//! (the reference's backward loop, auto-vectorised, is close to it).

use super::math::{sigmoid, tanh};
use super::{dsigmoid, for_chunks, hidden_preact, in_two_passes, load, store, two_pass_row_kernels, Lanes};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use std::arch::x86_64::*;

two_pass_row_kernels!("GRU");

/// `r`, `z` and `ah_n` of lanes `j..j + lanes.n` of a forward row.
///
/// # Safety
/// AVX2 and FMA; `r`'s slices have their documented lengths; `j + lanes.n ≤ H`, and
/// `lanes.n = 8` unless `TAIL`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gates_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes) {
    let h = r.hidden;
    let rg = sigmoid(_mm256_add_ps(load::<TAIL>(r.xg, j, lanes), hidden_preact::<TAIL>(r.hg, r.b_hh, j, lanes)));
    let z = sigmoid(_mm256_add_ps(load::<TAIL>(r.xg, h + j, lanes), hidden_preact::<TAIL>(r.hg, r.b_hh, h + j, lanes)));
    store::<TAIL>(r.gates, j, lanes, rg);
    store::<TAIL>(r.gates, h + j, lanes, z);
    store::<TAIL>(r.extra, j, lanes, hidden_preact::<TAIL>(r.hg, r.b_hh, 2 * h + j, lanes));
}

/// `n` and `m` of lanes `j..j + lanes.n` of a forward row, after [`gates_chunk`].
///
/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, lanes: Lanes) {
    let ah_n = load::<TAIL>(r.extra, j, lanes);
    let (h, one) = (r.hidden, _mm256_set1_ps(1.0));
    let rg = load::<TAIL>(r.gates, j, lanes);
    let z = load::<TAIL>(r.gates, h + j, lanes);
    let n = tanh(_mm256_fmadd_ps(rg, ah_n, load::<TAIL>(r.xg, 2 * h + j, lanes)));
    let m = _mm256_fmadd_ps(z, load::<TAIL>(r.h_prev, j, lanes), _mm256_mul_ps(_mm256_sub_ps(one, z), n));
    store::<TAIL>(r.gates, 2 * h + j, lanes, n);
    store::<TAIL>(r.m, j, lanes, m);
}

/// Lanes `j..j + lanes.n` of a backward row.
///
/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk<const TAIL: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes) {
    let (h, one) = (r.hidden, _mm256_set1_ps(1.0));
    let dh = load::<TAIL>(r.dm, j, lanes);
    let rg = load::<TAIL>(r.gates, j, lanes);
    let z = load::<TAIL>(r.gates, h + j, lanes);
    let n = load::<TAIL>(r.gates, 2 * h + j, lanes);

    let dn = _mm256_mul_ps(dh, _mm256_sub_ps(one, z));
    let dz = _mm256_mul_ps(dh, _mm256_sub_ps(load::<TAIL>(r.h_prev, j, lanes), n));
    let dan = _mm256_mul_ps(dn, _mm256_fnmadd_ps(n, n, one));
    let dar = dsigmoid(_mm256_mul_ps(dan, load::<TAIL>(r.extra, j, lanes)), rg);
    let daz = dsigmoid(dz, z);
    store::<TAIL>(r.dgi, j, lanes, dar);
    store::<TAIL>(r.dgi, h + j, lanes, daz);
    store::<TAIL>(r.dgi, 2 * h + j, lanes, dan);
    store::<TAIL>(r.dgh, j, lanes, dar);
    store::<TAIL>(r.dgh, h + j, lanes, daz);
    store::<TAIL>(r.dgh, 2 * h + j, lanes, _mm256_mul_ps(dan, rg));
    store::<TAIL>(r.dh_direct, j, lanes, _mm256_mul_ps(dh, z));
}
