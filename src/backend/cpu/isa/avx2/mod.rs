//! x86-64 AVX2+FMA kernels of the CPU backend: the fused per-step cell kernels, forward and
//! backward, for every cell, in f32, and the SGEMM register tiles.
//!
//! - `math.rs`: `exp`, `sigmoid`, `tanh` on 8 lanes, with their measured accuracy.
//! - `lstm.rs`, `gru.rs`, `rnn.rs` (tanh and relu): one forward and one backward kernel each
//!   (`gru_reset_before.rs`: the four parts of the GRU with the reset gate before the matmul),
//!   on one row of a step (`isa/rows.rs` cuts a step into rows and handles inactive rows),
//!   computing exactly the maths of the reference kernels in `backend/reference/`.
//! - `layer_norm.rs`: layer norm of one row, forward and backward (the per-row sums in a fixed
//!   order), and the layer-normalised LSTM's output `o⊙tanh(s)` and its backward pre-pass.
//! - `sgemm.rs`: the blocked SGEMM's 6×16 tile for every product of six rows or more;
//!   `sgemm_skinny.rs`: fewer rows against a packed weight (see `gemm/packed.rs`).
//!
//! Each kernel makes one pass over memory per step: every input value is read from memory once
//! and every output written once, row by row (a row of `[B, G·H]` is `G` runs of `H` values,
//! read as parallel streams). A row is cut into chunks of 8 lanes; the last `H mod 8` values
//! are loaded and stored with `vmaskmovps` under a lane mask, so they go through the very same
//! instructions as the others and a value's result never depends on its position or on `H`.
//! The LSTM and GRU forward kernels work in blocks of 256 lanes, each in two short passes (the
//! gates, then the outputs from the gates just stored, still in L1), which turns one long
//! dependency chain per chunk into independent ones.
//!
//! Bounds: the kernels are given rows of checked lengths (`isa/rows.rs`); only the 8-lane
//! loads and stores of [`load`] and [`store`] use raw pointers, at offsets `j + lane < H`
//! inside a row (`debug_assert!`ed).
//!
//! Accuracy: against the reference kernel run in f64 on random inputs in ±25, every output
//! buffer is within 1e-6 (abs) or 2e-6 (rel), or, where the maths is ill-conditioned, no
//! further than the f32 reference kernel itself (the test allows 1.25 times its error). Example:
//! GRU's `n = tanh(a_n + r·ah_n)` with `|ah_n|` up to 50 turns a one-ulp difference in `r` into
//! 3e-6 in `n`, for any f32 code. The worst cases are printed by the ISA-neutral harness
//! (`isa/cell_tests.rs`); the maths functions' errors are in `math.rs`.
//!
//! Speed: the forward kernels of LSTM, GRU and RNN tanh, bound by their transcendental
//! functions, run many times faster than the reference loops; where there is no transcendental
//! function (every backward but LSTM's, RNN relu forward) the reference loops auto-vectorise and
//! both run at the speed of the caches (`cargo test --release --lib cell_throughput -- --ignored
//! --nocapture` measures every ISA against the reference).

mod gru;
mod gru_reset_before;
mod layer_norm;
mod lstm;
pub(crate) mod math;
mod rnn;
mod sgemm;
mod sgemm_skinny;

pub(crate) use gru::gru_forward_chunks;
pub(crate) use layer_norm::row_sum;
pub(crate) use lstm::lstm_forward_chunks;

use super::rows::{BwdRow, FwdRow};
use super::Isa;
use std::arch::x86_64::*;

super::simd_isa! {
    /// The AVX2+FMA ISA's token: made only where both were detected.
    Avx2 = Isa::Avx2, detected: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Benchmark hooks for `testkit::bench`: the AVX2 cell kernels alone.
#[cfg(any(test, feature = "testkit"))]
pub(crate) mod hooks {
    use super::super::Kernels;
    use super::Avx2;
    use crate::backend::host::{CellBackward, CellForward};
    use crate::config::CellKind;

    /// Whether this CPU can run these kernels.
    pub(crate) fn is_supported() -> bool {
        Avx2::detect().is_some()
    }

    /// The AVX2 forward step of `cell`; panics if the CPU lacks AVX2 or FMA.
    pub(crate) fn cell_forward_checked(cell: CellKind, step: CellForward<'_, f32>) {
        Avx2::detect().expect("the AVX2 kernels need AVX2 and FMA, which this CPU lacks").cell_forward(cell, step)
    }

    /// The AVX2 backward step of `cell`; panics if the CPU lacks AVX2 or FMA.
    pub(crate) fn cell_backward_checked(cell: CellKind, step: CellBackward<'_, f32>) {
        Avx2::detect().expect("the AVX2 kernels need AVX2 and FMA, which this CPU lacks").cell_backward(cell, step)
    }
}

/// Lanes per block of a forward row (a multiple of 8 and of 16; see [`in_two_passes!`]).
pub(crate) const BLOCK: usize = 256;

/// The lanes of one chunk of a row: `n` values from the chunk's start, under `mask` (lane `k`
/// on iff `k < n`). Only a row's tail chunk has `n < 8`.
#[derive(Clone, Copy)]
struct Lanes {
    n: usize,
    mask: __m256i,
}

impl Lanes {
    /// Lanes in a whole chunk.
    const N: usize = 8;

    /// The first `n` lanes, `n` in `1..=8`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn first(n: usize) -> Lanes {
        debug_assert!((1..=8).contains(&n));
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        Lanes { n, mask }
    }
}

/// `for_chunks!(L, start, end, |j, lanes| full, tail)` runs `full` for each whole chunk of
/// `L::N` lanes `j = start, start + N, …` of `start..end`, then `tail` for the rest
/// (`end - j < N` lanes), if any, with `lanes: L` (`L::first(n)`: AVX2's 8 lanes, or
/// AVX-512's 16). A macro rather than a function taking a closure, so that the body is
/// compiled with the caller's target features.
macro_rules! for_chunks {
    ($L:ty, $start:expr, $end:expr, |$j:ident, $lanes:ident| $full:expr, $tail:expr) => {{
        let end: usize = $end;
        let all = <$L>::first(<$L>::N);
        let mut $j: usize = $start;
        while $j + <$L>::N <= end {
            let $lanes = all;
            $full;
            $j += <$L>::N;
        }
        if $j < end {
            let $lanes = <$L>::first(end - $j);
            $tail;
        }
    }};
}
pub(crate) use for_chunks;

/// Runs a forward row `r` in blocks of [`BLOCK`] lanes, each in two passes of chunks of `L`:
/// `gates(r, j, lanes)` (the gates, stored), then `outputs(r, j, lanes)` (the outputs, from
/// the gates just stored, still in L1), each generic over `TAIL`. In one pass each chunk of
/// the LSTM forward would be a chain σ → c → tanh(c) some 150 cycles deep, more than the
/// out-of-order window hides; split, the chunks of each pass are independent and overlap.
macro_rules! in_two_passes {
    ($L:ty, $r:ident, $gates:ident, $outputs:ident) => {{
        use $crate::backend::cpu::isa::avx2::{for_chunks, BLOCK};
        let h = $r.hidden;
        let mut j0 = 0;
        while j0 < h {
            let j1 = (j0 + BLOCK).min(h);
            for_chunks!($L, j0, j1, |j, lanes| $gates::<false>(&mut $r, j, lanes), $gates::<true>(&mut $r, j, lanes));
            for_chunks!($L, j0, j1, |j, lanes| $outputs::<false>(&mut $r, j, lanes), $outputs::<true>(&mut $r, j, lanes));
            j0 = j1;
        }
    }};
}
pub(crate) use in_two_passes;

/// The row kernels `forward` and `backward` of an LSTM or GRU module from its chunk kernels:
/// forward [`in_two_passes!`] (`gates_chunk`, then `output_chunk`), backward in one pass
/// (`backward_chunk`). `$cell` names the cell in their docs.
macro_rules! two_pass_row_kernels {
    ($cell:literal) => {
        #[doc = concat!("The ", $cell, " forward step of one active row.")]
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA; the row's slices have the lengths [`FwdRow`]
        /// documents for the cell.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn forward(mut r: FwdRow<'_>) {
            debug_assert!(r.b_hh.is_none_or(|b| b.len() == r.xg.len()));
            // SAFETY: the slices of `r` are `H` or `G·H` long (the caller's contract), and the
            // chunks lie below H.
            in_two_passes!(Lanes, r, gates_chunk, output_chunk);
        }

        #[doc = concat!("The ", $cell, " backward step of one active row (safety: as `forward`, for [`BwdRow`]).")]
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn backward(mut r: BwdRow<'_>) {
            // SAFETY: as in forward.
            for_chunks!(Lanes, 0, r.hidden, |j, lanes| backward_chunk::<false>(&mut r, j, lanes), backward_chunk::<true>(&mut r, j, lanes));
        }
    };
}
use two_pass_row_kernels;

/// `s[at..at + lanes.n]` in the low lanes; under `TAIL` the other lanes are 0 and their memory
/// is not touched.
///
/// # Safety
/// The CPU must support AVX2; `at + lanes.n <= s.len()`, and `lanes.n == 8` unless `TAIL`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load<const TAIL: bool>(s: &[f32], at: usize, lanes: Lanes) -> __m256 {
    debug_assert!(at + lanes.n <= s.len() && (TAIL || lanes.n == 8));
    // SAFETY: the lanes read, at..at + lanes.n, are inside `s` (the caller's precondition);
    // vmaskmovps does not access masked-off lanes, nor fault on them.
    unsafe {
        let p = s.as_ptr().add(at);
        if TAIL {
            _mm256_maskload_ps(p, lanes.mask)
        } else {
            _mm256_loadu_ps(p)
        }
    }
}

/// Writes the low `lanes.n` lanes of `v` to `s[at..at + lanes.n]`, and nothing else.
///
/// # Safety
/// As [`load`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store<const TAIL: bool>(s: &mut [f32], at: usize, lanes: Lanes, v: __m256) {
    debug_assert!(at + lanes.n <= s.len() && (TAIL || lanes.n == 8));
    // SAFETY: as in load: only at..at + lanes.n, inside `s`, is written.
    unsafe {
        let p = s.as_mut_ptr().add(at);
        if TAIL {
            _mm256_maskstore_ps(p, lanes.mask, v)
        } else {
            _mm256_storeu_ps(p, v)
        }
    }
}

/// `xg[k] + hg[k] + b_hh[k]` for the chunk at `k`, summed in the reference's order.
///
/// # Safety
/// As [`load`], for each slice (`b_hh` with the same offset).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn preact<const TAIL: bool>(xg: &[f32], hg: &[f32], b_hh: Option<&[f32]>, k: usize, lanes: Lanes) -> __m256 {
    let a = _mm256_add_ps(load::<TAIL>(xg, k, lanes), load::<TAIL>(hg, k, lanes));
    match b_hh {
        Some(b) => _mm256_add_ps(a, load::<TAIL>(b, k, lanes)),
        None => a,
    }
}

/// `hg[k] + b_hh[k]` for the chunk at `k`.
///
/// # Safety
/// As [`preact`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hidden_preact<const TAIL: bool>(hg: &[f32], b_hh: Option<&[f32]>, k: usize, lanes: Lanes) -> __m256 {
    let a = load::<TAIL>(hg, k, lanes);
    match b_hh {
        Some(b) => _mm256_add_ps(a, load::<TAIL>(b, k, lanes)),
        None => a,
    }
}

/// `d·s·(1 - s)`: a gradient through a sigmoid `s`, in the reference's order.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dsigmoid(d: __m256, s: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_mul_ps(d, s), _mm256_sub_ps(_mm256_set1_ps(1.0), s))
}

#[cfg(test)]
mod tests {
    crate::backend::cpu::isa::cell_tests::cell_kernel_tests!(super::Avx2::detect(), exact: [], #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]);
}
