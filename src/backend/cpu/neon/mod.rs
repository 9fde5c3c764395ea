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
//! Measured under qemu-aarch64 against the f32 reference (tests `*_matches_reference`: all
//! cells, `B` in 1..=5, `H` in {1, 3, 4, 5, 7, 8, 9, 17}, pre-activations and states uniform
//! in ±25, output gradients in ±1, with and without `b_hh`, inactive rows), largest errors
//! over active rows, absolute where `|want| ≤ 0.5` and relative above; the tests assert
//! 1e-6 abs or 2e-6 rel on every element and bit-equality on inactive rows:
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

/// The parity harness every cell file's tests run: each kernel against the reference kernel on
/// random inputs, inactive rows bit-exact, and guard zones around every buffer to catch writes
/// outside the slices.
#[cfg(test)]
mod tests {
    use super::{cell_backward, cell_forward};
    use crate::backend::host::{CellBackward, CellForward, HostKernels};
    use crate::backend::Reference;
    use crate::config::CellKind;
    use crate::SplitMix64;

    /// Guard elements on each side of every buffer, and their value.
    const PAD: usize = 9;
    const SENTINEL: f32 = -1234.567;
    const HIDDEN: [usize; 8] = [1, 3, 4, 5, 7, 8, 9, 17];
    /// The range of forward inputs (pre-activations and states): ±25 saturates every gate.
    const RANGE: f64 = 25.0;
    /// The range of the output gradients `dm`, `dc` given to backward. Backward is linear in
    /// them, so they set the scale of its errors: at ±1 the absolute bound below means what it
    /// says. (LSTM's `dc += dm·o·(1 - tanh²(c))` amplifies a 1-ulp difference of `tanh(c)` near
    /// ±1 by `2|dm|`, which at ±25 would exceed 1e-6 for any two f32 tanh implementations.)
    const GRAD_RANGE: f64 = 1.0;

    /// A buffer with `PAD` sentinels on each side; the kernels see only the middle.
    #[derive(Clone)]
    struct Guarded(Vec<f32>);

    impl Guarded {
        fn new(len: usize, mut fill: impl FnMut() -> f32) -> Guarded {
            let mut v = vec![SENTINEL; len + 2 * PAD];
            v[PAD..PAD + len].iter_mut().for_each(|x| *x = fill());
            Guarded(v)
        }
        fn random(len: usize, rng: &mut SplitMix64) -> Guarded {
            Guarded::uniform(len, RANGE, rng)
        }
        fn uniform(len: usize, range: f64, rng: &mut SplitMix64) -> Guarded {
            Guarded::new(len, || rng.uniform(-range, range) as f32)
        }
        fn sentinel(len: usize) -> Guarded {
            Guarded::new(len, || SENTINEL)
        }
        fn get(&self) -> &[f32] {
            &self.0[PAD..self.0.len() - PAD]
        }
        fn get_mut(&mut self) -> &mut [f32] {
            let n = self.0.len();
            &mut self.0[PAD..n - PAD]
        }
        fn assert_guards(&self, what: &str) {
            let n = self.0.len();
            for (i, x) in self.0[..PAD].iter().chain(&self.0[n - PAD..]).enumerate() {
                assert_eq!(x.to_bits(), SENTINEL.to_bits(), "{what}: guard element {i} was overwritten");
            }
        }
    }

    /// Largest errors seen on active rows: abs where `|want| ≤ 0.5`, rel above.
    #[derive(Default)]
    pub(super) struct Worst {
        pub(super) abs: f64,
        pub(super) rel: f64,
    }

    /// Compares `got` with `want` row by row (`row` elements each): bit-exact on inactive rows,
    /// within 1e-6 abs or 2e-6 rel on active ones.
    fn compare(what: &str, got: &[f32], want: &[f32], row: usize, active: &[bool], worst: &mut Worst) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let b = i / row.max(1);
            if !active[b] {
                assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}] (inactive row {b}): {g:e} vs {w:e}");
                continue;
            }
            let err = (g as f64 - w as f64).abs();
            assert!(err <= 1e-6f64.max(2e-6 * (w as f64).abs()), "{what}[{i}] (row {b}): {g:e} vs reference {w:e}, error {err:e}");
            if (w as f64).abs() <= 0.5 {
                worst.abs = worst.abs.max(err);
            } else {
                worst.rel = worst.rel.max(err / (w as f64).abs());
            }
        }
    }

    /// The random inputs of one step, and the reference's forward outputs for them.
    struct Step {
        cell: CellKind,
        h: usize,
        active: Vec<bool>,
        xg: Guarded,
        hg: Guarded,
        b_hh: Option<Guarded>,
        h_prev: Guarded,
        c_prev: Guarded,
    }

    /// `[gates, extra, c, m]` after a forward step with `forward`.
    type FwdOut = [Guarded; 4];
    /// `[dc, dgi, dgh, dh_direct]` after a backward step.
    type BwdOut = [Guarded; 4];

    impl Step {
        fn random(cell: CellKind, rows: usize, h: usize, bias: bool, seed: u64) -> Step {
            let mut rng = SplitMix64::new(seed);
            let gh = cell.gates() * h;
            // About one row in four inactive; the first row of a multi-row batch always is, so
            // every batch size above 1 covers both kinds.
            let active = (0..rows).map(|b| !(rows > 1 && b == 0) && rng.below(4) != 0).collect();
            let lstm = cell == CellKind::Lstm;
            Step {
                cell,
                h,
                active,
                xg: Guarded::random(rows * gh, &mut rng),
                hg: Guarded::random(rows * gh, &mut rng),
                b_hh: bias.then(|| Guarded::random(gh, &mut rng)),
                h_prev: Guarded::random(rows * h, &mut rng),
                c_prev: Guarded::random(if lstm { rows * h } else { 0 }, &mut rng),
            }
        }

        fn rows(&self) -> usize {
            self.active.len()
        }

        fn forward(&self, f: impl FnOnce(CellKind, CellForward<'_, f32>)) -> FwdOut {
            let (rows, h) = (self.rows(), self.h);
            let gru = self.cell == CellKind::Gru;
            let lstm = self.cell == CellKind::Lstm;
            let mut out = [
                Guarded::sentinel(rows * self.cell.gates() * h),
                Guarded::sentinel(if gru { rows * h } else { 0 }),
                Guarded::sentinel(if lstm { rows * h } else { 0 }),
                Guarded::sentinel(rows * h),
            ];
            let [gates, extra, c, m] = &mut out;
            f(
                self.cell,
                CellForward {
                    active: &self.active,
                    hidden: h,
                    xg: self.xg.get(),
                    hg: self.hg.get(),
                    b_hh: self.b_hh.as_ref().map(Guarded::get),
                    h_prev: self.h_prev.get(),
                    c_prev: self.c_prev.get(),
                    gates: gates.get_mut(),
                    extra: extra.get_mut(),
                    c: c.get_mut(),
                    m: m.get_mut(),
                },
            );
            out
        }

        /// A backward step from the saved values `saved` (the reference's forward outputs) and
        /// random output gradients.
        fn backward(&self, saved: &FwdOut, seed: u64, f: impl FnOnce(CellKind, CellBackward<'_, f32>)) -> BwdOut {
            let (rows, h) = (self.rows(), self.h);
            let lstm = self.cell == CellKind::Lstm;
            let gru = self.cell == CellKind::Gru;
            let mut rng = SplitMix64::new(seed);
            let dm = Guarded::uniform(rows * h, GRAD_RANGE, &mut rng);
            let gh = rows * self.cell.gates() * h;
            let mut out = [
                Guarded::uniform(if lstm { rows * h } else { 0 }, GRAD_RANGE, &mut rng),
                Guarded::sentinel(gh),
                Guarded::sentinel(gh),
                Guarded::sentinel(rows * h),
            ];
            let [dc, dgi, dgh, dh_direct] = &mut out;
            let empty = Guarded::sentinel(0);
            f(
                self.cell,
                CellBackward {
                    active: &self.active,
                    hidden: h,
                    gates: saved[0].get(),
                    extra: saved[1].get(),
                    c: saved[2].get(),
                    c_prev: self.c_prev.get(),
                    h_prev: if gru { self.h_prev.get() } else { empty.get() },
                    dm: dm.get(),
                    dc: dc.get_mut(),
                    dgi: dgi.get_mut(),
                    dgh: dgh.get_mut(),
                    dh_direct: dh_direct.get_mut(),
                },
            );
            out
        }
    }

    fn reference_forward(cell: CellKind, s: CellForward<'_, f32>) {
        <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, s)
    }

    fn reference_backward(cell: CellKind, s: CellBackward<'_, f32>) {
        <Reference as HostKernels<f32>>::cell_backward(&Reference, cell, s)
    }

    fn neon_forward(cell: CellKind, s: CellForward<'_, f32>) {
        assert!(std::arch::is_aarch64_feature_detected!("neon"));
        // SAFETY: NEON was detected.
        unsafe { cell_forward(cell, s) }
    }

    fn neon_backward(cell: CellKind, s: CellBackward<'_, f32>) {
        assert!(std::arch::is_aarch64_feature_detected!("neon"));
        // SAFETY: NEON was detected.
        unsafe { cell_backward(cell, s) }
    }

    /// Every shape of the sweep: batch 1..=5, every hidden size, with and without `b_hh`.
    fn shapes() -> impl Iterator<Item = (usize, usize, bool)> {
        (1..=5).flat_map(|rows| HIDDEN.into_iter().flat_map(move |h| [false, true].map(|bias| (rows, h, bias))))
    }

    /// The NEON forward kernel of `cell` against the reference on every shape; returns the
    /// largest errors.
    pub(super) fn forward_matches_reference(cell: CellKind) -> Worst {
        let mut worst = Worst::default();
        for (k, (rows, h, bias)) in shapes().enumerate() {
            let step = Step::random(cell, rows, h, bias, 1000 + k as u64);
            let want = step.forward(reference_forward);
            let got = step.forward(neon_forward);
            let what = |name: &str| format!("{cell} forward B={rows} H={h} bias={bias}: {name}");
            let g = cell.gates() * h;
            for (i, (name, row)) in [("gates", g), ("extra", h), ("c", h), ("m", h)].into_iter().enumerate() {
                got[i].assert_guards(&what(name));
                compare(&what(name), got[i].get(), want[i].get(), row, &step.active, &mut worst);
            }
        }
        println!("{cell} forward vs reference: abs {:.2e}, rel {:.2e}", worst.abs, worst.rel);
        worst
    }

    /// The NEON backward kernel of `cell` against the reference on every shape, from the same
    /// saved forward values; returns the largest errors.
    pub(super) fn backward_matches_reference(cell: CellKind) -> Worst {
        let mut worst = Worst::default();
        for (k, (rows, h, bias)) in shapes().enumerate() {
            let step = Step::random(cell, rows, h, bias, 2000 + k as u64);
            let saved = step.forward(reference_forward);
            let want = step.backward(&saved, 3000 + k as u64, reference_backward);
            let got = step.backward(&saved, 3000 + k as u64, neon_backward);
            let what = |name: &str| format!("{cell} backward B={rows} H={h} bias={bias}: {name}");
            let g = cell.gates() * h;
            for (i, (name, row)) in [("dc", h), ("dgi", g), ("dgh", g), ("dh_direct", h)].into_iter().enumerate() {
                got[i].assert_guards(&what(name));
                compare(&what(name), got[i].get(), want[i].get(), row, &step.active, &mut worst);
            }
        }
        println!("{cell} backward vs reference: abs {:.2e}, rel {:.2e}", worst.abs, worst.rel);
        worst
    }

    /// Units 0 (vector body), 4 (vector body) and 8 (tail, `H = 9`) get the same inputs in every
    /// gate and state; their outputs must be bit-identical in both directions.
    pub(super) fn results_do_not_depend_on_position(cell: CellKind) {
        let h = 9;
        let g = cell.gates();
        let mut step = Step::random(cell, 2, h, true, 77);
        step.active = vec![true, true];
        // In every H-long block (a gate of a row, or a row of a state), units 4 and 8 := unit 0.
        let copy_unit = |v: &mut Guarded| {
            for block in v.get_mut().chunks_exact_mut(h) {
                block[4] = block[0];
                block[8] = block[0];
            }
        };
        copy_unit(&mut step.xg);
        copy_unit(&mut step.hg);
        copy_unit(step.b_hh.as_mut().unwrap());
        copy_unit(&mut step.h_prev);
        copy_unit(&mut step.c_prev);
        let same = |what: &str, v: &[f32]| {
            for block in 0..v.len() / h {
                let u0 = v[block * h].to_bits();
                assert!(
                    v[block * h + 4].to_bits() == u0 && v[block * h + 8].to_bits() == u0,
                    "{cell} {what}: unit results differ by position"
                );
            }
        };
        let fwd = step.forward(neon_forward);
        for (name, out) in ["gates", "extra", "c", "m"].iter().zip(&fwd) {
            same(name, out.get());
        }
        // Backward from the NEON forward's saved values, with equal gradients at 0, 4, 8.
        let mut rng = SplitMix64::new(5);
        let mut dm = Guarded::random(2 * h, &mut rng);
        let mut dc = Guarded::random(if cell == CellKind::Lstm { 2 * h } else { 0 }, &mut rng);
        copy_unit(&mut dm);
        copy_unit(&mut dc);
        let (mut dgi, mut dgh, mut dh_direct) = (Guarded::sentinel(2 * g * h), Guarded::sentinel(2 * g * h), Guarded::sentinel(2 * h));
        let gru = cell == CellKind::Gru;
        let empty = Guarded::sentinel(0);
        neon_backward(
            cell,
            CellBackward {
                active: &step.active,
                hidden: h,
                gates: fwd[0].get(),
                extra: fwd[1].get(),
                c: fwd[2].get(),
                c_prev: step.c_prev.get(),
                h_prev: if gru { step.h_prev.get() } else { empty.get() },
                dm: dm.get(),
                dc: dc.get_mut(),
                dgi: dgi.get_mut(),
                dgh: dgh.get_mut(),
                dh_direct: dh_direct.get_mut(),
            },
        );
        for (name, out) in [("dc", &dc), ("dgi", &dgi), ("dgh", &dgh), ("dh_direct", &dh_direct)] {
            same(name, out.get());
        }
    }

    /// A slice of the wrong length is refused before any pointer arithmetic.
    #[test]
    #[should_panic(expected = "neon cell kernel: `xg` has 31 elements, expected 32")]
    fn wrong_lengths_panic() {
        let mut step = Step::random(CellKind::Lstm, 2, 4, false, 1);
        step.xg = Guarded::sentinel(31);
        step.forward(neon_forward);
    }
}
