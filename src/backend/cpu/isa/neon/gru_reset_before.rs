//! NEON GRU with the reset gate applied before the recurrent matmul
//! (`linear_before_reset = false`): the four parts of its step (`host/gru_reset_before.rs` runs
//! the products between them), four units at a time. The maths of
//! `reference/gru_reset_before.rs` in its operation order, gates `r, z, n`, clipped if `CLIP`
//! as in `gru.rs` ([`Clip`]):
//!
//! - forward, before the product: `r = σ(xg_r + (hg_r + b_hr))`, `z = σ(xg_z + (hg_z + b_hz))`,
//!   `extra = r·h_prev`; after it: `n = tanh(xg_n + (hg_n + b_hn))`, `m = (1 - z)·n + z·h_prev`;
//! - backward, before the product: `dz = dm(h_prev - n)`, `dn = dm(1 - z)`,
//!   `dgi_z = dz·z(1 - z)`, `dgi_n = dn(1 - n²)`, `dh_direct = dm·z`; after it, from
//!   `du = dgh` (the gradient of `r·h_prev`): `dgi_r = du·h_prev·r(1 - r)`,
//!   `dh_direct += du·r`.

use super::gru::Clip;
use super::math::{sigmoid, tanh};
use super::{for_each_vector, load, store};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use core::arch::aarch64::*;

/// `hg[k] + b_hh[k]` for the vector at `k` of `n` lanes.
///
/// # Safety
/// NEON; `k + n` within `hg` (and `b_hh`), `1 <= n <= 4`.
#[inline(always)]
unsafe fn hidden(hg: &[f32], b_hh: Option<&[f32]>, k: usize, n: usize) -> float32x4_t {
    // SAFETY: the caller's contract.
    unsafe {
        let a = load(hg, k, n);
        match b_hh {
            Some(b) => vaddq_f32(a, load(b, k, n)),
            None => a,
        }
    }
}

/// Forward, before the product, of one active row.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`FwdRow`] documents for a GRU.
#[target_feature(enable = "neon")]
pub(super) unsafe fn gates<const CLIP: bool>(FwdRow { hidden: h, xg, hg, b_hh, clip, h_prev, gates, extra, .. }: FwdRow<'_>) {
    // SAFETY: NEON; j + n <= h bounds every lane used, in the h- and 3h-long rows.
    let clip = unsafe { Clip::of::<CLIP>(clip) };
    for_each_vector(h, |j, n| unsafe {
        let r = sigmoid(clip.clamp::<CLIP>(vaddq_f32(load(xg, j, n), hidden(hg, b_hh, j, n))));
        let z = sigmoid(clip.clamp::<CLIP>(vaddq_f32(load(xg, h + j, n), hidden(hg, b_hh, h + j, n))));
        store(gates, j, n, r);
        store(gates, h + j, n, z);
        store(extra, j, n, vmulq_f32(r, load(h_prev, j, n)));
    });
}

/// Forward, after the product, of one active row (safety: as [`gates`]).
#[target_feature(enable = "neon")]
pub(super) unsafe fn output<const CLIP: bool>(FwdRow { hidden: h, xg, hg, b_hh, clip, h_prev, gates, m, .. }: FwdRow<'_>) {
    // SAFETY: as in gates.
    let clip = unsafe { Clip::of::<CLIP>(clip) };
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let z = load(gates, h + j, n);
        let nn = tanh(clip.clamp::<CLIP>(vaddq_f32(load(xg, 2 * h + j, n), hidden(hg, b_hh, 2 * h + j, n))));
        let hn = vaddq_f32(vmulq_f32(vsubq_f32(one, z), nn), vmulq_f32(z, load(h_prev, j, n)));
        store(m, j, n, hn);
        store(gates, 2 * h + j, n, nn);
    });
}

/// Backward, before the product, of one active row (safety: as [`gates`], for [`BwdRow`]).
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward_output<const CLIP: bool>(BwdRow { hidden: h, clip, gates, h_prev, dm, dgi, dh_direct, .. }: BwdRow<'_>) {
    // SAFETY: as in gates.
    let clip = unsafe { Clip::of::<CLIP>(clip) };
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let z = load(gates, h + j, n);
        let nn = load(gates, 2 * h + j, n);
        let dh = load(dm, j, n);
        let dn = vmulq_f32(dh, vsubq_f32(one, z));
        let dz = vmulq_f32(dh, vsubq_f32(load(h_prev, j, n), nn));
        store(dgi, h + j, n, clip.pass_sigmoid::<CLIP>(vmulq_f32(vmulq_f32(dz, z), vsubq_f32(one, z)), z));
        store(dgi, 2 * h + j, n, clip.pass_tanh::<CLIP>(vmulq_f32(dn, vsubq_f32(one, vmulq_f32(nn, nn))), nn));
        store(dh_direct, j, n, vmulq_f32(dh, z));
    });
}

/// Backward, after the product, of one active row (safety: as [`backward_output`], and `dgh`
/// has `H` values).
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward_reset<const CLIP: bool>(BwdRow { hidden: h, clip, gates, h_prev, dgi, dgh, dh_direct, .. }: BwdRow<'_>) {
    // SAFETY: as in gates.
    let clip = unsafe { Clip::of::<CLIP>(clip) };
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let r = load(gates, j, n);
        let du = load(dgh, j, n);
        let dr = vmulq_f32(du, load(h_prev, j, n));
        store(dgi, j, n, clip.pass_sigmoid::<CLIP>(vmulq_f32(vmulq_f32(dr, r), vsubq_f32(one, r)), r));
        store(dh_direct, j, n, vaddq_f32(load(dh_direct, j, n), vmulq_f32(du, r)));
    });
}
