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

//!
//! Gate clipping (`CLIP`, a separate instance of each kernel, chosen once per row): each gate's
//! pre-activation is clamped to `[-clip, clip]` before its activation, and backward zeroes the
//! gradient of a gate whose saved activation equals the activation of `±clip` computed here by
//! the same functions ([`Clip`]; the rule of `reference/gru.rs`). Without it the kernels are
//! the instructions they were.

use super::math::{sigmoid, tanh};
use super::{for_each_vector, load, store};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use core::arch::aarch64::*;

/// A row's clip threshold and the activations of `±clip` (unused, zero, without `CLIP`).
#[derive(Clone, Copy)]
pub(super) struct Clip {
    hi: float32x4_t,
    lo: float32x4_t,
    sigmoid: (float32x4_t, float32x4_t),
    tanh: (float32x4_t, float32x4_t),
}

impl Clip {
    /// The clip of a row whose threshold is `clip`, if `CLIP`.
    ///
    /// # Safety
    /// The CPU supports NEON.
    #[inline(always)]
    pub(super) unsafe fn of<const CLIP: bool>(clip: f64) -> Clip {
        // SAFETY: NEON, the caller's contract.
        unsafe {
            if !CLIP {
                let z = vdupq_n_f32(0.0);
                return Clip { hi: z, lo: z, sigmoid: (z, z), tanh: (z, z) };
            }
            let (hi, lo) = (vdupq_n_f32(clip as f32), vdupq_n_f32(-(clip as f32)));
            Clip { hi, lo, sigmoid: (sigmoid(lo), sigmoid(hi)), tanh: (tanh(lo), tanh(hi)) }
        }
    }

    /// `a` clamped to `[-clip, clip]` under `CLIP`, else `a`.
    ///
    /// # Safety
    /// NEON.
    #[inline(always)]
    pub(super) unsafe fn clamp<const CLIP: bool>(self, a: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe {
            if CLIP {
                vminq_f32(vmaxq_f32(a, self.lo), self.hi)
            } else {
                a
            }
        }
    }

    /// `d`, zero in the lanes where `g` equals one of `lim` (a clamped gate), under `CLIP`.
    #[inline(always)]
    unsafe fn pass<const CLIP: bool>(d: float32x4_t, g: float32x4_t, lim: (float32x4_t, float32x4_t)) -> float32x4_t {
        // SAFETY: NEON.
        unsafe {
            if CLIP {
                let clamped = vorrq_u32(vceqq_f32(g, lim.0), vceqq_f32(g, lim.1));
                vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(d), clamped))
            } else {
                d
            }
        }
    }

    /// [`Clip::pass`] through a sigmoid gate.
    ///
    /// # Safety
    /// NEON.
    #[inline(always)]
    pub(super) unsafe fn pass_sigmoid<const CLIP: bool>(self, d: float32x4_t, g: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { Self::pass::<CLIP>(d, g, self.sigmoid) }
    }

    /// [`Clip::pass`] through a tanh gate.
    ///
    /// # Safety
    /// NEON.
    #[inline(always)]
    pub(super) unsafe fn pass_tanh<const CLIP: bool>(self, d: float32x4_t, g: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { Self::pass::<CLIP>(d, g, self.tanh) }
    }
}

/// The forward step of one active row.
///
/// # Safety
/// The CPU supports NEON; the row's slices have the lengths [`FwdRow`] documents for a GRU.
#[target_feature(enable = "neon")]
pub(super) unsafe fn forward<const CLIP: bool>(FwdRow { hidden: h, xg, hg, b_hh, clip, h_prev, gates, extra, m, .. }: FwdRow<'_>) {
    // SAFETY: NEON, the caller's contract.
    let clip = unsafe { Clip::of::<CLIP>(clip) };
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
        let r = sigmoid(clip.clamp::<CLIP>(vaddq_f32(load(xg, j, n), ah(0))));
        let z = sigmoid(clip.clamp::<CLIP>(vaddq_f32(load(xg, h + j, n), ah(1))));
        let ahn = ah(2);
        let nn = tanh(clip.clamp::<CLIP>(vaddq_f32(load(xg, 2 * h + j, n), vmulq_f32(r, ahn))));
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
pub(super) unsafe fn backward<const CLIP: bool>(
    BwdRow { hidden: h, clip, gates, extra: ahn, h_prev, dm, dgi, dgh, dh_direct, .. }: BwdRow<'_>,
) {
    // SAFETY: NEON, the caller's contract.
    let clip = unsafe { Clip::of::<CLIP>(clip) };
    // SAFETY: as in forward: j + n <= h bounds every lane used.
    for_each_vector(h, |j, n| unsafe {
        let one = vdupq_n_f32(1.0);
        let r = load(gates, j, n);
        let z = load(gates, h + j, n);
        let nn = load(gates, 2 * h + j, n);
        let dh = load(dm, j, n);
        let dn = vmulq_f32(dh, vsubq_f32(one, z));
        let dz = vmulq_f32(dh, vsubq_f32(load(h_prev, j, n), nn));
        let dan = clip.pass_tanh::<CLIP>(vmulq_f32(dn, vsubq_f32(one, vmulq_f32(nn, nn))), nn);
        let dr = vmulq_f32(dan, load(ahn, j, n));
        let dar = clip.pass_sigmoid::<CLIP>(vmulq_f32(vmulq_f32(dr, r), vsubq_f32(one, r)), r);
        let daz = clip.pass_sigmoid::<CLIP>(vmulq_f32(vmulq_f32(dz, z), vsubq_f32(one, z)), z);
        store(dgi, j, n, dar);
        store(dgi, h + j, n, daz);
        store(dgi, 2 * h + j, n, dan);
        store(dgh, j, n, dar);
        store(dgh, h + j, n, daz);
        store(dgh, 2 * h + j, n, vmulq_f32(dan, r));
        store(dh_direct, j, n, vmulq_f32(dh, z));
    });
}
