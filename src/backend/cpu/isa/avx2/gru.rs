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
//!
//! Gate clipping (`CLIP`, a separate instance of each kernel, chosen once per row): each gate's
//! pre-activation is clamped to `[-clip, clip]` (`min(max(a, -clip), clip)`) before its
//! activation, and backward zeroes the gradient of a gate whose saved activation equals the
//! activation of `±clip` computed here by the same functions ([`Clip`]; the rule of
//! `reference/gru.rs`). Without it the kernels are the instructions they were.

use super::math::{sigmoid, tanh};
use super::{dsigmoid, for_chunks, hidden_preact, load, store, Lanes};
use crate::backend::cpu::isa::rows::{BwdRow, FwdRow};
use std::arch::x86_64::*;

/// A row's clip threshold and the activations of `±clip` (unused, zero, without `CLIP`).
#[derive(Clone, Copy)]
pub(super) struct Clip {
    hi: __m256,
    lo: __m256,
    sigmoid: (__m256, __m256),
    tanh: (__m256, __m256),
}

impl Clip {
    /// The clip of a row whose threshold is `clip`, if `CLIP`.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn of<const CLIP: bool>(clip: f64) -> Clip {
        if !CLIP {
            let z = _mm256_setzero_ps();
            return Clip { hi: z, lo: z, sigmoid: (z, z), tanh: (z, z) };
        }
        let (hi, lo) = (_mm256_set1_ps(clip as f32), _mm256_set1_ps(-(clip as f32)));
        Clip { hi, lo, sigmoid: (sigmoid(lo), sigmoid(hi)), tanh: (tanh(lo), tanh(hi)) }
    }

    /// `a` clamped to `[-clip, clip]` under `CLIP`, else `a`.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn clamp<const CLIP: bool>(self, a: __m256) -> __m256 {
        if CLIP {
            _mm256_min_ps(_mm256_max_ps(a, self.lo), self.hi)
        } else {
            a
        }
    }

    /// `d`, zero in the lanes where `g` equals one of `lim` (a clamped gate), under `CLIP`.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pass<const CLIP: bool>(d: __m256, g: __m256, lim: (__m256, __m256)) -> __m256 {
        if CLIP {
            let clamped = _mm256_or_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(g, lim.0), _mm256_cmp_ps::<_CMP_EQ_OQ>(g, lim.1));
            _mm256_andnot_ps(clamped, d)
        } else {
            d
        }
    }

    /// [`Clip::pass`] through a sigmoid gate.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pass_sigmoid<const CLIP: bool>(self, d: __m256, g: __m256) -> __m256 {
        Self::pass::<CLIP>(d, g, self.sigmoid)
    }

    /// [`Clip::pass`] through a tanh gate.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pass_tanh<const CLIP: bool>(self, d: __m256, g: __m256) -> __m256 {
        Self::pass::<CLIP>(d, g, self.tanh)
    }
}

/// The GRU forward row kernel `forward::<CLIP>` and its chunk kernels on the lanes `$L` of an
/// ISA (`$features`), with that ISA's `load`, `store`, `sigmoid`, `tanh`, `hidden_preact` and
/// clip type `$Clip` in scope, and its vector operations: the same operations per lane in the
/// same order on any width, so each element gets the same bits (`isa/avx512/gru.rs` runs it on
/// 16 lanes).
macro_rules! gru_forward_chunks {
    ($features:literal, $L:ty, $Clip:ty, $add:ident, $fmadd:ident, $mul:ident, $sub:ident, $set1:ident) => {
        /// The GRU forward step of one active row, gates clipped if `CLIP`.
        ///
        /// # Safety
        /// The CPU must support the ISA's features; the row's slices have the lengths
        /// [`FwdRow`] documents for the cell.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn forward<const CLIP: bool>(mut r: FwdRow<'_>) {
            use $crate::backend::cpu::isa::avx2::{for_chunks, BLOCK};
            debug_assert!(r.b_hh.is_none_or(|b| b.len() == r.xg.len()));
            let clip = <$Clip>::of::<CLIP>(r.clip);
            // SAFETY: the slices of `r` are `H` or `G·H` long (the caller's contract), and the
            // chunks lie below H. In blocks of BLOCK lanes, two passes each (see
            // `in_two_passes!`).
            let h = r.hidden;
            let mut j0 = 0;
            while j0 < h {
                let j1 = (j0 + BLOCK).min(h);
                for_chunks!(
                    $L,
                    j0,
                    j1,
                    |j, lanes| gates_chunk::<false, CLIP>(&mut r, j, lanes, clip),
                    gates_chunk::<true, CLIP>(&mut r, j, lanes, clip)
                );
                for_chunks!(
                    $L,
                    j0,
                    j1,
                    |j, lanes| output_chunk::<false, CLIP>(&mut r, j, lanes, clip),
                    output_chunk::<true, CLIP>(&mut r, j, lanes, clip)
                );
                j0 = j1;
            }
        }

        /// `r`, `z` and `ah_n` of lanes `j..j + lanes.n` of a forward row.
        ///
        /// # Safety
        /// The ISA's features; `r`'s slices have their documented lengths; `j + lanes.n ≤ H`,
        /// and `lanes.n` is the whole width unless `TAIL`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn gates_chunk<const TAIL: bool, const CLIP: bool>(r: &mut FwdRow<'_>, j: usize, lanes: $L, clip: $Clip) {
            let h = r.hidden;
            let rg = sigmoid(clip.clamp::<CLIP>($add(load::<TAIL>(r.xg, j, lanes), hidden_preact::<TAIL>(r.hg, r.b_hh, j, lanes))));
            let z = sigmoid(clip.clamp::<CLIP>($add(load::<TAIL>(r.xg, h + j, lanes), hidden_preact::<TAIL>(r.hg, r.b_hh, h + j, lanes))));
            store::<TAIL>(r.gates, j, lanes, rg);
            store::<TAIL>(r.gates, h + j, lanes, z);
            store::<TAIL>(r.extra, j, lanes, hidden_preact::<TAIL>(r.hg, r.b_hh, 2 * h + j, lanes));
        }

        /// `n` and `m` of lanes `j..j + lanes.n` of a forward row, after [`gates_chunk`].
        ///
        /// # Safety
        /// As [`gates_chunk`].
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn output_chunk<const TAIL: bool, const CLIP: bool>(r: &mut FwdRow<'_>, j: usize, lanes: $L, clip: $Clip) {
            let ah_n = load::<TAIL>(r.extra, j, lanes);
            let (h, one) = (r.hidden, $set1(1.0));
            let rg = load::<TAIL>(r.gates, j, lanes);
            let z = load::<TAIL>(r.gates, h + j, lanes);
            let n = tanh(clip.clamp::<CLIP>($fmadd(rg, ah_n, load::<TAIL>(r.xg, 2 * h + j, lanes))));
            let m = $fmadd(z, load::<TAIL>(r.h_prev, j, lanes), $mul($sub(one, z), n));
            store::<TAIL>(r.gates, 2 * h + j, lanes, n);
            store::<TAIL>(r.m, j, lanes, m);
        }
    };
}
pub(crate) use gru_forward_chunks;

gru_forward_chunks!("avx2,fma", Lanes, Clip, _mm256_add_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_sub_ps, _mm256_set1_ps);

/// The GRU backward step of one active row, gates clipped in forward if `CLIP` (safety: as
/// `forward`, for [`BwdRow`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward<const CLIP: bool>(mut r: BwdRow<'_>) {
    let clip = Clip::of::<CLIP>(r.clip);
    // SAFETY: as in forward.
    for_chunks!(
        Lanes,
        0,
        r.hidden,
        |j, lanes| backward_chunk::<false, CLIP>(&mut r, j, lanes, clip),
        backward_chunk::<true, CLIP>(&mut r, j, lanes, clip)
    );
}

/// Lanes `j..j + lanes.n` of a backward row.
///
/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_chunk<const TAIL: bool, const CLIP: bool>(r: &mut BwdRow<'_>, j: usize, lanes: Lanes, clip: Clip) {
    let (h, one) = (r.hidden, _mm256_set1_ps(1.0));
    let dh = load::<TAIL>(r.dm, j, lanes);
    let rg = load::<TAIL>(r.gates, j, lanes);
    let z = load::<TAIL>(r.gates, h + j, lanes);
    let n = load::<TAIL>(r.gates, 2 * h + j, lanes);

    let dn = _mm256_mul_ps(dh, _mm256_sub_ps(one, z));
    let dz = _mm256_mul_ps(dh, _mm256_sub_ps(load::<TAIL>(r.h_prev, j, lanes), n));
    let dan = clip.pass_tanh::<CLIP>(_mm256_mul_ps(dn, _mm256_fnmadd_ps(n, n, one)), n);
    let dar = clip.pass_sigmoid::<CLIP>(dsigmoid(_mm256_mul_ps(dan, load::<TAIL>(r.extra, j, lanes)), rg), rg);
    let daz = clip.pass_sigmoid::<CLIP>(dsigmoid(dz, z), z);
    store::<TAIL>(r.dgi, j, lanes, dar);
    store::<TAIL>(r.dgi, h + j, lanes, daz);
    store::<TAIL>(r.dgi, 2 * h + j, lanes, dan);
    store::<TAIL>(r.dgh, j, lanes, dar);
    store::<TAIL>(r.dgh, h + j, lanes, daz);
    store::<TAIL>(r.dgh, 2 * h + j, lanes, _mm256_mul_ps(dan, rg));
    store::<TAIL>(r.dh_direct, j, lanes, _mm256_mul_ps(dh, z));
}
