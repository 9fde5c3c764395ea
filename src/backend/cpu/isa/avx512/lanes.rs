//! The lanes of one AVX-512 chunk of a row and their masked loads and stores, shared by the
//! row kernels (`lstm.rs`, `layer_norm.rs`).

use super::sgemm::lanes;
use std::arch::x86_64::*;

/// The lanes of one chunk of a row: `n` values from the chunk's start, under `mask`.
#[derive(Clone, Copy)]
pub(super) struct Lanes {
    pub(super) n: usize,
    pub(super) mask: __mmask16,
}

impl Lanes {
    /// Lanes in a whole chunk.
    pub(super) const N: usize = 16;

    /// The first `n` lanes, `n` in `1..=16`.
    pub(super) fn first(n: usize) -> Lanes {
        Lanes { n, mask: lanes(n) }
    }
}

/// `s[at..at + lanes.n]`, the other lanes 0 and not read (all 16 unless `TAIL`).
///
/// # Safety
/// AVX-512F; `at + lanes.n ≤ s.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn load<const TAIL: bool>(s: &[f32], at: usize, lanes: Lanes) -> __m512 {
    debug_assert!(at + lanes.n <= s.len() && (TAIL || lanes.n == 16));
    // SAFETY: the caller's precondition; masked-off lanes are not accessed.
    unsafe {
        if TAIL {
            _mm512_maskz_loadu_ps(lanes.mask, s.as_ptr().add(at))
        } else {
            _mm512_loadu_ps(s.as_ptr().add(at))
        }
    }
}

/// Stores the lanes of `v` at `s[at..at + lanes.n]` (all 16 unless `TAIL`), and nothing else.
///
/// # Safety
/// As [`load`].
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn store<const TAIL: bool>(s: &mut [f32], at: usize, lanes: Lanes, v: __m512) {
    debug_assert!(at + lanes.n <= s.len() && (TAIL || lanes.n == 16));
    // SAFETY: as in load.
    unsafe {
        if TAIL {
            _mm512_mask_storeu_ps(s.as_mut_ptr().add(at), lanes.mask, v)
        } else {
            _mm512_storeu_ps(s.as_mut_ptr().add(at), v)
        }
    }
}
