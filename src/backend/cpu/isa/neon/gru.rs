//! NEON GRU step, forward and backward (maths of `reference/gru.rs`, gates `r, z, n`, reset
//! applied after the recurrent matmul as in PyTorch and cuDNN).
//!
//! Forward, per row and per four units `j`, with `ah = hg + b_hh`: `r = σ(xg_r + ah_r)`,
//! `z = σ(xg_z + ah_z)`, `n = tanh(xg_n + r·ah_n)`, `h' = (1 - z)·n + z·h_prev`; `ah_n` is
//! saved as `extra`. Traffic per row: reads `xg`, `hg` (`3H` each), `h_prev` (`H`), writes
//! `gates` (`3H`), `extra`, `m` (`H` each).
//!
//! Backward: `dn = dh(1 - z)`, `dz = dh(h_prev - n)`, `dan = dn(1 - n²)`, `dar = dan·ah_n·r(1 - r)`,
//! `daz = dz·z(1 - z)`; `dgi = [dar, daz, dan]`, `dgh = [dar, daz, dan·r]`, `dh_direct = dh·z`.
//! Reads `gates` (`3H`), `extra`, `h_prev`, `dm` (`H` each), writes `dgi`, `dgh` (`3H` each),
//! `dh_direct` (`H`). No transcendental and the reference's operation order: bit-identical.

use super::math::{sigmoid, tanh};
use super::{for_each_vector, load, store};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use core::arch::aarch64::*;

/// The forward step of one active row.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`FwdRow`] documents for a GRU.
#[target_feature(enable = "neon")]
pub(super) unsafe fn forward(FwdRow { hidden: h, xg, hg, b_hh, h_prev, gates, extra, m, .. }: FwdRow<'_>) {
    // SAFETY: j + n <= h, so lanes k·h + j .. k·h + j + n (k < 3) lie in the 3h-long
    // rows and in b_hh, and lanes j .. j + n in the h-long ones.
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let ah = |k: usize| {
            let a = load(hg, k * h + j, n);
            match b_hh {
                Some(bh) => vaddq_f32(a, load(bh, k * h + j, n)),
                None => a,
            }
        };
        let r = sigmoid(vaddq_f32(load(xg, j, n), ah(0)));
        let z = sigmoid(vaddq_f32(load(xg, h + j, n), ah(1)));
        let ahn = ah(2);
        let nn = tanh(vaddq_f32(load(xg, 2 * h + j, n), vmulq_f32(r, ahn)));
        let hn = vaddq_f32(vmulq_f32(vsubq_f32(one, z), nn), vmulq_f32(z, load(h_prev, j, n)));
        store(m, j, n, hn);
        store(gates, j, n, r);
        store(gates, h + j, n, z);
        store(gates, 2 * h + j, n, nn);
        store(extra, j, n, ahn);
    });
}

/// The backward step of one active row.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`BwdRow`] documents for a GRU.
#[target_feature(enable = "neon")]
pub(super) unsafe fn backward(BwdRow { hidden: h, gates, extra: ahn, h_prev, dm, dgi, dgh, dh_direct, .. }: BwdRow<'_>) {
    // SAFETY: as in forward: j + n <= h bounds every lane used.
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let r = load(gates, j, n);
        let z = load(gates, h + j, n);
        let nn = load(gates, 2 * h + j, n);
        let dh = load(dm, j, n);
        let dn = vmulq_f32(dh, vsubq_f32(one, z));
        let dz = vmulq_f32(dh, vsubq_f32(load(h_prev, j, n), nn));
        let dan = vmulq_f32(dn, vsubq_f32(one, vmulq_f32(nn, nn)));
        let dr = vmulq_f32(dan, load(ahn, j, n));
        let dar = vmulq_f32(vmulq_f32(dr, r), vsubq_f32(one, r));
        let daz = vmulq_f32(vmulq_f32(dz, z), vsubq_f32(one, z));
        store(dgi, j, n, dar);
        store(dgi, h + j, n, daz);
        store(dgi, 2 * h + j, n, dan);
        store(dgh, j, n, dar);
        store(dgh, h + j, n, daz);
        store(dgh, 2 * h + j, n, vmulq_f32(dan, r));
        store(dh_direct, j, n, vmulq_f32(dh, z));
    });
}
