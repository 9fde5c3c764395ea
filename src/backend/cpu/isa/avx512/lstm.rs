//! LSTM forward step of one row, fused, 16 lanes at a time: `isa/avx2/lstm.rs`'s forward (the
//! same code, `lstm_forward_chunks!` and `in_two_passes!`: the same maths, the same two passes
//! per block of 256 lanes, the same instructions per lane, and `math.rs` gives the AVX2
//! functions' bits) on registers twice as wide. The forward evaluates 5 exponentials and 5
//! divisions per lane and is bound by arithmetic, so the width pays; the backward runs near
//! memory speed and stays AVX2. The last `H mod 16` lanes are loaded and stored under a lane
//! mask (masked lanes are not accessed).

use super::lanes::{load, store, Lanes};
use super::math::{sigmoid, tanh};
use crate::backend::cpu::isa::avx2::{in_two_passes, lstm_forward_chunks};
use crate::backend::cpu::isa::rows::FwdRow;
use std::arch::x86_64::*;

/// `xg[k] + hg[k] (+ b_hh[k])`, in that order (as AVX2's `preact`).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn preact<const TAIL: bool>(xg: &[f32], hg: &[f32], b_hh: Option<&[f32]>, k: usize, lanes: Lanes) -> __m512 {
    // SAFETY: the caller's precondition.
    unsafe {
        let a = _mm512_add_ps(load::<TAIL>(xg, k, lanes), load::<TAIL>(hg, k, lanes));
        b_hh.map_or(a, |b| _mm512_add_ps(a, load::<TAIL>(b, k, lanes)))
    }
}

lstm_forward_chunks!(
    "avx512f,avx2,fma",
    Lanes,
    _mm512_fmadd_ps,
    _mm512_mul_ps,
    _mm512_set1_ps,
    _mm512_min_ps,
    _mm512_max_ps,
    _mm512_sub_ps
);

/// The forward step of one active row.
///
/// # Safety
/// AVX-512F, AVX2 and FMA; the row's slices have the lengths [`FwdRow`] documents for an LSTM.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn forward(mut r: FwdRow<'_>) {
    // SAFETY: the chunks lie below H, in rows of the lengths the caller vouched for.
    unsafe { in_two_passes!(Lanes, r, gates_chunk, output_chunk) }
}

/// The forward step of one active row with options (peepholes, clip, input_forget: AVX2's
/// `forward_options` on 16 lanes).
///
/// # Safety
/// As [`forward`], and `r.peephole`, if any, has `3·H` values.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn forward_options(mut r: FwdRow<'_>) {
    // SAFETY: as in forward; the peephole rows are `H` long at 0, H and 2H.
    unsafe { in_two_passes!(Lanes, r, gates_chunk_options, output_chunk) }
}
