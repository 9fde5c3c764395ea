//! AArch64 NEON kernels of the CPU backend: the fused per-step cell functions of
//! [`crate::backend::host`], four f32 lanes at a time, and the SGEMM tiles.
//!
//! - `math.rs`: `exp`, `sigmoid`, `tanh` on `float32x4_t` (method and measured accuracy there);
//! - `lstm.rs`, `gru.rs`, `rnn.rs`: forward and backward step of each cell;
//! - `sgemm.rs`: the 6×16 tile of the blocked SGEMM (`cpu/sgemm.rs`) for every product of six
//!   rows or more; `sgemm_skinny.rs`: fewer rows against a packed weight (`cpu/packed.rs`).
//!
//! Layout (see [`CellForward`]): row-major `[B, G·H]` gate blocks, gate `k` of row `b` at
//! `b·G·H + k·H`. Every kernel walks each row once, four hidden units `j` at a time, loading
//! lanes `j..j+4` of each gate block and of the `[B, H]` states, and storing every output of
//! those units before moving on: one pass over memory per step, each input read once, each
//! output written once; `b_hh` (`G·H`) is re-read per row from cache. The forward kernels are
//! bound by their activations (LSTM: five `exp`-based ones and five `fdiv` per unit, against
//! 15 floats of traffic), the backward ones (a few multiplies per float moved) and RNN relu
//! by memory.
//!
//! Any `H`: when `H` is not a multiple of four, the last `H % 4` units of a row are loaded lane
//! by lane into a zero vector and stored back lane by lane (`load`/`store` below), and go
//! through the same vector code as the rest: a unit's result never depends on its position,
//! and nothing outside the slices is read or written.
//!
//! The cell algebra keeps the reference's operation order and uses no FMA, so the only
//! differences from [`crate::backend::Reference`] come from `sigmoid` and `tanh` (≤ 3e-7 abs):
//! the backward kernels of GRU and both RNNs, which use no transcendental, are bit-identical
//! to the reference, and LSTM backward differs only through `tanh(c)`. Inactive rows are
//! handled exactly as the reference does (zero gates and gradients, `c = c_prev`, `dc`
//! unchanged, `m` untouched), so they are bit-identical too.
//!
//! Measured under qemu-aarch64 against the f32 reference (all cells, `B` in 1..=5, `H` in
//! {1, 3, 4, 5, 7, 8, 9, 17}, pre-activations and states uniform in ±25, output gradients in
//! ±1, with and without `b_hh`, inactive rows), largest errors over active rows, absolute where
//! `|want| ≤ 0.5` and relative above. The tests now run the ISA-neutral harness of
//! `cpu/cell_tests.rs` (the one AVX2 runs: f64 as the judge, inactive rows bit-equal to the f32
//! reference, guard zones, extremes, position independence), which prints its own figures:
//!
//! | cell | forward abs / rel | backward abs / rel |
//! |---|---|---|
//! | LSTM | 6.0e-8 / 1.6e-7 | 1.0e-7 / 3.5e-7 |
//! | GRU | 6.0e-8 / 1.4e-7 | 0 (bit-identical) |
//! | RNN tanh | 3.0e-8 / 9.8e-8 | 0 (bit-identical) |
//! | RNN relu | 0 (bit-identical) | 0 (bit-identical) |
//!
//! Safety: the entry points are `unsafe` only because they need NEON; they check every slice
//! length they use (a panic on a mismatch, which would be a driver bug) before the pointer
//! loops, which then stay inside those lengths by construction.

mod gru;
mod lstm;
mod math;
mod rnn;
pub(crate) mod sgemm;
mod sgemm_skinny;

use crate::backend::host::{CellBackward, CellForward};
use crate::config::CellKind;
use core::arch::aarch64::*;

/// The fused forward step of `cell`.
///
/// # Safety
/// The CPU must support NEON.
pub(crate) unsafe fn cell_forward(cell: CellKind, step: CellForward<'_, f32>) {
    debug_assert!(std::arch::is_aarch64_feature_detected!("neon"));
    // SAFETY: NEON, guaranteed by the caller, is all the cell kernels need; they check the
    // slice lengths themselves.
    unsafe {
        match cell {
            CellKind::Lstm => lstm::forward(step),
            CellKind::Gru => gru::forward(step),
            CellKind::RnnTanh => rnn::forward::<false>(step),
            CellKind::RnnRelu => rnn::forward::<true>(step),
        }
    }
}

/// The fused backward step of `cell`.
///
/// # Safety
/// The CPU must support NEON.
pub(crate) unsafe fn cell_backward(cell: CellKind, step: CellBackward<'_, f32>) {
    debug_assert!(std::arch::is_aarch64_feature_detected!("neon"));
    // SAFETY: NEON, guaranteed by the caller, is all the cell kernels need; they check the
    // slice lengths themselves.
    unsafe {
        match cell {
            CellKind::Lstm => lstm::backward(step),
            CellKind::Gru => gru::backward(step),
            CellKind::RnnTanh => rnn::backward::<false>(step),
            CellKind::RnnRelu => rnn::backward::<true>(step),
        }
    }
}

/// Panics unless the slice `name` has `want` elements: the driver sizes every buffer, so a
/// mismatch is a bug there, caught before any pointer arithmetic relies on the length.
#[track_caller]
fn check_len(name: &str, len: usize, want: usize) {
    assert!(len == want, "neon cell kernel: `{name}` has {len} elements, expected {want}");
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

/// The cell tests' entry points: the ISA-neutral harness (`cpu/cell_tests.rs`) on these kernels.
#[cfg(test)]
mod tests {
    use super::{cell_backward, cell_forward};
    use crate::backend::cpu::cell_tests::{self, CellIsa};
    use crate::backend::host::CellForward;
    use crate::config::CellKind;

    const NEON: CellIsa = CellIsa {
        name: "NEON",
        supported: || std::arch::is_aarch64_feature_detected!("neon"),
        forward: cell_forward,
        backward: cell_backward,
    };

    /// Largest differences from the f32 reference kernel on active rows: absolute where
    /// `|reference| ≤ 0.5`, relative above.
    pub(super) struct Worst {
        pub(super) abs: f64,
        pub(super) rel: f64,
    }

    /// The forward kernel of `cell` against the reference in f32 and f64, every shape.
    pub(super) fn forward_matches_reference(cell: CellKind) -> Worst {
        let (abs, rel) = cell_tests::check_cases(&NEON, cell, true, false);
        println!("{cell} forward vs the f32 reference: abs {abs:.2e}, rel {rel:.2e}");
        Worst { abs, rel }
    }

    /// The backward kernel of `cell` against the reference in f32 and f64, every shape.
    pub(super) fn backward_matches_reference(cell: CellKind) -> Worst {
        let (abs, rel) = cell_tests::check_cases(&NEON, cell, false, true);
        println!("{cell} backward vs the f32 reference: abs {abs:.2e}, rel {rel:.2e}");
        Worst { abs, rel }
    }

    /// Equal inputs give bit-equal results at every position in the vectors.
    pub(super) fn results_do_not_depend_on_position(cell: CellKind) {
        cell_tests::results_do_not_depend_on_position(&NEON, cell);
    }

    #[test]
    fn extremes_match_reference() {
        for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh, CellKind::RnnRelu] {
            cell_tests::check_extremes(&NEON, cell);
        }
    }

    /// A slice of the wrong length is refused before any pointer arithmetic.
    #[test]
    #[should_panic(expected = "neon cell kernel: `xg` has 31 elements, expected 32")]
    fn wrong_lengths_panic() {
        let (xg, hg) = (vec![0.0; 31], vec![0.0; 32]);
        let (mut gates, mut c, mut m, state) = (vec![0.0; 32], vec![0.0; 8], vec![0.0; 8], vec![0.0; 8]);
        let step = CellForward {
            active: &[true, true],
            hidden: 4,
            xg: &xg,
            hg: &hg,
            b_hh: None,
            h_prev: &state,
            c_prev: &state,
            gates: &mut gates,
            extra: &mut [],
            c: &mut c,
            m: &mut m,
        };
        assert!(std::arch::is_aarch64_feature_detected!("neon"));
        // SAFETY: NEON was detected.
        unsafe { cell_forward(CellKind::Lstm, step) };
    }
}
