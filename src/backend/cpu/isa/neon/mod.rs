//! AArch64 NEON kernels of the CPU backend: the fused per-step cell kernels, one row of a step
//! at a time (`isa/rows.rs` cuts a step into rows and handles inactive rows), four f32 lanes at
//! a time, and the SGEMM tiles.
//!
//! - `math.rs`: `exp`, `sigmoid`, `tanh` on `float32x4_t` (method and measured accuracy there);
//! - `lstm.rs`, `gru.rs`, `rnn.rs`: forward and backward step of each cell (`gru_reset_before.rs`:
//!   the four parts of the GRU with the reset gate before the matmul);
//! - `layer_norm.rs`: layer norm of one row, forward and backward (the per-row sums in a fixed
//!   order), and the layer-normalised LSTM's output `o⊙tanh(s)` and its backward pre-pass;
//! - `sgemm.rs`: the 6×16 tile of the blocked SGEMM (`gemm/sgemm.rs`) for every product of six
//!   rows or more; `sgemm_skinny.rs`: fewer rows against a packed weight (`gemm/packed.rs`).
//!
//! Layout (see [`FwdRow`]): a row of `G` gate blocks of `H` units, gate `k` at `k·H`. Every
//! kernel walks its row once, four hidden units `j` at a time, loading lanes `j..j+4` of each
//! gate block and of the `[H]` states, and storing every output of those units before moving
//! on: one pass over memory per step, each input read once, each output written once; `b_hh`
//! (`G·H`) is re-read per row from cache. The forward kernels are bound by their activations
//! (LSTM: five `exp`-based ones and five `fdiv` per unit, against 15 floats of traffic), the
//! backward ones (a few multiplies per float moved) and RNN relu by memory.
//!
//! Any `H`: when `H` is not a multiple of four, the last `H % 4` units of a row are loaded lane
//! by lane into a zero vector and stored back lane by lane (`load`/`store` below), and go
//! through the same vector code as the rest: a unit's result never depends on its position,
//! and nothing outside the slices is read or written.
//!
//! The cell algebra keeps the reference's operation order and uses no FMA, so the only
//! differences from [`crate::backend::Reference`] come from `sigmoid` and `tanh` (≤ 3e-7 abs):
//! the backward kernels of GRU and both RNNs, which use no transcendental, are bit-identical
//! to the reference, as is RNN relu forward (the tests assert it), and LSTM backward differs
//! only through `tanh(c)`. The ISA-neutral harness (`isa/cell_tests.rs`: f64 as the judge,
//! inactive rows bit-equal to the f32 reference, guard zones, extremes, position independence)
//! prints the largest differences it measures under qemu; against the f32 reference (absolute
//! where `|want| ≤ 0.5`, relative above):
//!
//! | cell | forward abs / rel | backward abs / rel |
//! |---|---|---|
//! | LSTM | 6.0e-8 / 1.6e-7 | 1.0e-7 / 3.5e-7 |
//! | GRU | 6.0e-8 / 1.4e-7 | 0 (bit-identical) |
//! | RNN tanh | 3.0e-8 / 9.8e-8 | 0 (bit-identical) |
//! | RNN relu | 0 (bit-identical) | 0 (bit-identical) |
//!
//! Safety: the kernels are `unsafe` because they need NEON (proven by the [`Neon`] token) and
//! rows of the lengths `isa/rows.rs` checks; the pointer loops stay inside those lengths by
//! construction.

mod gru;
mod gru_reset_before;
mod layer_norm;
mod lstm;
mod math;
mod rnn;
mod sgemm;
mod sgemm_skinny;

use super::rows::{BwdRow, FwdRow};
use super::Isa;
use core::arch::aarch64::*;

super::simd_isa! {
    /// The NEON ISA's token: made only where NEON was detected.
    Neon = Isa::Neon, detected: std::arch::is_aarch64_feature_detected!("neon")
}

/// Runs `body(j, n)` over the units `0..h` of a row: `n = 4` for each full vector, then once
/// `n = h % 4` for the tail. Inlined, so `load`/`store` see a constant `n` in the main loop.
#[inline(always)]
fn for_each_vector(h: usize, mut body: impl FnMut(usize, usize)) {
    let full = h - h % 4;
    let mut j = 0;
    while j < full {
        body(j, 4);
        j += 4;
    }
    if j < h {
        body(j, h - j);
    }
}

/// Lanes `at..at + n` of `src`, zero-padded to four when `n < 4`.
///
/// # Safety
/// `1 <= n <= 4`, `at + n <= src.len()`, and the CPU supports NEON.
#[inline(always)]
unsafe fn load(src: &[f32], at: usize, n: usize) -> float32x4_t {
    debug_assert!((1..=4).contains(&n) && at + n <= src.len());
    // SAFETY: by the contract, `p .. p + n` lies in `src`, and only those floats are read.
    unsafe {
        let p = src.as_ptr().add(at);
        if n == 4 {
            return vld1q_f32(p);
        }
        // The tail, lane by lane (no memcpy call, no read past `src`).
        let mut v = vld1q_lane_f32::<0>(p, vdupq_n_f32(0.0));
        if n > 1 {
            v = vld1q_lane_f32::<1>(p.add(1), v);
        }
        if n > 2 {
            v = vld1q_lane_f32::<2>(p.add(2), v);
        }
        v
    }
}

/// Stores the first `n` lanes of `v` to `dst[at..at + n]`.
///
/// # Safety
/// `1 <= n <= 4`, `at + n <= dst.len()`, and the CPU supports NEON.
#[inline(always)]
unsafe fn store(dst: &mut [f32], at: usize, n: usize, v: float32x4_t) {
    debug_assert!((1..=4).contains(&n) && at + n <= dst.len());
    // SAFETY: by the contract, `p .. p + n` lies in `dst`, and only those floats are written.
    unsafe {
        let p = dst.as_mut_ptr().add(at);
        if n == 4 {
            vst1q_f32(p, v);
            return;
        }
        vst1q_lane_f32::<0>(p, v);
        if n > 1 {
            vst1q_lane_f32::<1>(p.add(1), v);
        }
        if n > 2 {
            vst1q_lane_f32::<2>(p.add(2), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::CellKind::{Gru, RnnRelu, RnnTanh};
    // No approximation in these: they must be bit-identical to the reference.
    crate::backend::cpu::isa::cell_tests::cell_kernel_tests!(super::Neon::detect(), exact: [(RnnRelu, true), (Gru, false), (RnnTanh, false), (RnnRelu, false)], #[cfg_attr(miri, ignore = "SIMD intrinsics: NEON code is not run under Miri")]);
}
