//! GRU forward step of one row, fused, 16 lanes at a time: `isa/avx2/gru.rs`'s forward (the
//! same code, `gru_forward_chunks!`: the same maths, the same two passes per block of lanes,
//! the same instructions per lane, and `math.rs` gives the AVX2 functions' bits) on registers
//! twice as wide. The forward evaluates 3 exponentials and 3 divisions per lane and is bound by
//! arithmetic, so the width pays; the backward runs near memory speed and stays AVX2. The last
//! `H mod 16` lanes are loaded and stored under a lane mask (masked lanes are not accessed).

use super::lanes::{load, store, Lanes};
use super::math::{sigmoid, tanh};
use crate::backend::cpu::isa::avx2::gru_forward_chunks;
use crate::backend::cpu::isa::rows::FwdRow;
use std::arch::x86_64::*;

/// `hg[k] (+ b_hh[k])` (as AVX2's `hidden_preact`).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn hidden_preact<const TAIL: bool>(hg: &[f32], b_hh: Option<&[f32]>, k: usize, lanes: Lanes) -> __m512 {
    // SAFETY: the caller's precondition.
    unsafe {
        let a = load::<TAIL>(hg, k, lanes);
        b_hh.map_or(a, |b| _mm512_add_ps(a, load::<TAIL>(b, k, lanes)))
    }
}

/// A row's clip threshold (AVX2's `Clip` for the forward: the clamp only).
#[derive(Clone, Copy)]
struct Clip {
    hi: __m512,
    lo: __m512,
}

impl Clip {
    /// The clip of a row whose threshold is `clip`, if `CLIP`.
    ///
    /// # Safety
    /// AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn of<const CLIP: bool>(clip: f64) -> Clip {
        let c = if CLIP { clip as f32 } else { 0.0 };
        Clip { hi: _mm512_set1_ps(c), lo: _mm512_set1_ps(-c) }
    }

    /// `a` clamped to `[-clip, clip]` under `CLIP` (`min(max(a, -clip), clip)`, as AVX2's),
    /// else `a`.
    ///
    /// # Safety
    /// AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn clamp<const CLIP: bool>(self, a: __m512) -> __m512 {
        if CLIP {
            _mm512_min_ps(_mm512_max_ps(a, self.lo), self.hi)
        } else {
            a
        }
    }
}

gru_forward_chunks!("avx512f,avx2,fma", Lanes, Clip, _mm512_add_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_sub_ps, _mm512_set1_ps);
