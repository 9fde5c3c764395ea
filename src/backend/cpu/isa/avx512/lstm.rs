//! LSTM forward step of one row, fused, 16 lanes at a time: `isa/avx2/lstm.rs`'s forward (same maths, same two
//! passes per block of 256 lanes, the same instructions per lane, and `math.rs` gives the AVX2
//! functions' bits) on registers twice as wide. The forward evaluates 5 exponentials and 5
//! divisions per lane and is bound by arithmetic, so the width pays; the backward runs near
//! memory speed and stays AVX2. The last `H mod 16` lanes are loaded and stored under a lane
//! mask (masked lanes are not accessed).

use super::math::{sigmoid, tanh};
use crate::backend::cpu::isa::rows::FwdRow;
use std::arch::x86_64::*;

/// Lanes per block of a forward row (a multiple of 16).
const BLOCK: usize = 256;

/// `s[at..at + 16]`, or under `TAIL` the lanes of `k` (the others 0 and not read).
///
/// # Safety
/// AVX-512F; the lanes read lie inside `s`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn load<const TAIL: bool>(s: &[f32], at: usize, k: __mmask16) -> __m512 {
    debug_assert!(at + if TAIL { k.count_ones() as usize } else { 16 } <= s.len());
    // SAFETY: the caller's precondition; masked-off lanes are not accessed.
    unsafe {
        if TAIL {
            _mm512_maskz_loadu_ps(k, s.as_ptr().add(at))
        } else {
            _mm512_loadu_ps(s.as_ptr().add(at))
        }
    }
}

/// Stores `v` at `s[at..at + 16]`, or under `TAIL` its lanes of `k`.
///
/// # Safety
/// As [`load`].
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn store<const TAIL: bool>(s: &mut [f32], at: usize, k: __mmask16, v: __m512) {
    debug_assert!(at + if TAIL { k.count_ones() as usize } else { 16 } <= s.len());
    // SAFETY: as in load.
    unsafe {
        if TAIL {
            _mm512_mask_storeu_ps(s.as_mut_ptr().add(at), k, v)
        } else {
            _mm512_storeu_ps(s.as_mut_ptr().add(at), v)
        }
    }
}

/// `xg[k] + hg[k] (+ b_hh[k])`, in that order (as AVX2's `preact`).
///
/// # Safety
/// As [`load`], for each slice.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn preact<const TAIL: bool>(r: &FwdRow<'_>, at: usize, k: __mmask16) -> __m512 {
    // SAFETY: the caller's precondition.
    unsafe {
        let a = _mm512_add_ps(load::<TAIL>(r.xg, at, k), load::<TAIL>(r.hg, at, k));
        match r.b_hh {
            Some(b) => _mm512_add_ps(a, load::<TAIL>(b, at, k)),
            None => a,
        }
    }
}

/// The gates and `c` of the 16 lanes (or the lanes of `k`) from `j`.
///
/// # Safety
/// AVX-512F; `r`'s slices have their documented lengths; the lanes lie below `r.h`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gates_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, k: __mmask16) {
    let h = r.h;
    // SAFETY: every offset below is a lane of a `[4H]` or `[H]` row (the caller's precondition).
    unsafe {
        let i = sigmoid(preact::<TAIL>(r, j, k));
        let f = sigmoid(preact::<TAIL>(r, h + j, k));
        let g = tanh(preact::<TAIL>(r, 2 * h + j, k));
        let o = sigmoid(preact::<TAIL>(r, 3 * h + j, k));
        let c = _mm512_fmadd_ps(f, load::<TAIL>(r.c_prev, j, k), _mm512_mul_ps(i, g));
        store::<TAIL>(r.c, j, k, c);
        store::<TAIL>(r.gates, j, k, i);
        store::<TAIL>(r.gates, h + j, k, f);
        store::<TAIL>(r.gates, 2 * h + j, k, g);
        store::<TAIL>(r.gates, 3 * h + j, k, o);
    }
}

/// `m = o·tanh(c)` of the lanes from `j`, after [`gates_chunk`].
///
/// # Safety
/// As [`gates_chunk`].
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn output_chunk<const TAIL: bool>(r: &mut FwdRow<'_>, j: usize, k: __mmask16) {
    // SAFETY: as in gates_chunk.
    unsafe {
        let o = load::<TAIL>(r.gates, 3 * r.h + j, k);
        let c = load::<TAIL>(r.c, j, k);
        store::<TAIL>(r.m, j, k, _mm512_mul_ps(o, tanh(c)));
    }
}

/// The forward step of one active row.
///
/// # Safety
/// AVX-512F, AVX2 and FMA; the row's slices have the lengths [`FwdRow`] documents for an LSTM.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn forward(mut r: FwdRow<'_>) {
    let h = r.h;
    let mut j0 = 0;
    while j0 < h {
        let j1 = (j0 + BLOCK).min(h);
        let full = (j1 - j0) / 16 * 16;
        let tail = j1 - j0 - full;
        let k: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
        // SAFETY (both passes): the lanes lie below j1 ≤ H, in rows of the lengths the
        // caller vouched for.
        unsafe {
            for j in (j0..j0 + full).step_by(16) {
                gates_chunk::<false>(&mut r, j, 0xffff);
            }
            if tail > 0 {
                gates_chunk::<true>(&mut r, j0 + full, k);
            }
            for j in (j0..j0 + full).step_by(16) {
                output_chunk::<false>(&mut r, j, 0xffff);
            }
            if tail > 0 {
                output_chunk::<true>(&mut r, j0 + full, k);
            }
        }
        j0 = j1;
    }
}
