//! What the step-kernel tests (`options.rs`, `gru_reset_before.rs`, `layer_norm.rs`) share: the
//! kernels' pointer arguments, random inputs, the f64 activations of their oracles, central
//! differences, and the comparison.

use crate::backend::cell::Cell;
use crate::testkit::case::max_error;
use crate::testkit::SplitMix64;

/// The device address the emulated kernels take for `v`.
pub(super) fn addr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

/// [`addr`] of a buffer the kernel writes.
pub(super) fn addr_mut<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// `n` values uniform in `[-r, r)`.
pub(super) fn random(rng: &mut SplitMix64, n: usize, r: f64) -> Vec<f32> {
    random_in(rng, n, -r, r)
}

/// `n` values uniform in `[lo, hi)`.
pub(super) fn random_in(rng: &mut SplitMix64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi) as f32).collect()
}

/// `v` in f64.
pub(super) fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

/// The gate clip (none when `clip` is 0).
pub(super) fn clamp(a: f64, clip: f64) -> f64 {
    if clip > 0.0 {
        a.clamp(-clip, clip)
    } else {
        a
    }
}

pub(super) fn sigmoid(a: f64) -> f64 {
    1.0 / (1.0 + (-a).exp())
}

/// `∂f/∂x_k` for every k, by central differences in f64.
pub(super) fn gradient(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let eps = 1e-6;
    (0..x.len())
        .map(|k| {
            let mut p = x.to_vec();
            p[k] = x[k] + eps;
            let up = f(&p);
            p[k] = x[k] - eps;
            (up - f(&p)) / (2.0 * eps)
        })
        .collect()
}

/// `got` within `tol` of `want` (`max_error`), else a panic naming `what` and both.
pub(super) fn check(what: &str, got: &[f32], want: &[f64], tol: f64) {
    let err = max_error(&wide(got), want);
    assert!(err <= tol, "{what}: error {err:.3e} > {tol:e}\n got {got:?}\nwant {want:?}");
}

/// The LSTM options of a step case.
#[derive(Clone, Copy, Debug)]
pub(super) struct LstmOpts {
    pub peephole: bool,
    pub clip: f64,
    pub input_forget: bool,
}

impl LstmOpts {
    /// Every combination: peepholes or not, clip 1.5 or none, coupled input-forget or not.
    pub fn all() -> impl Iterator<Item = LstmOpts> {
        (0..8u32).map(|mask| LstmOpts { peephole: mask & 1 != 0, clip: if mask & 2 != 0 { 1.5 } else { 0.0 }, input_forget: mask & 4 != 0 })
    }

    /// No option on.
    pub fn plain(self) -> bool {
        !self.peephole && self.clip == 0.0 && !self.input_forget
    }

    /// An LSTM cell of `h` units with these options (and layer norm if `layer_norm`), for the
    /// driver's argument mapping.
    pub fn cell(self, h: usize, layer_norm: bool) -> Cell {
        let cfg = crate::RnnConfig::new(crate::CellKind::Lstm, 1, h)
            .peephole(self.peephole)
            .gate_clip(self.clip)
            .input_forget(self.input_forget)
            .layer_norm(layer_norm)
            .build()
            .expect("a valid LSTM configuration");
        Cell::of(&cfg)
    }
}
