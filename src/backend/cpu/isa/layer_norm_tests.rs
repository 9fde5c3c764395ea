//! The tests of every ISA's layer-norm row kernels ([`Kernels::layer_norm_rows`],
//! [`Kernels::layer_norm_rows_backward`]), generic over the ISA; [`layer_norm_kernel_tests!`]
//! writes them for one ISA (in its `layer_norm.rs`).
//!
//! Each kernel against the f64 layer norm of the same f32 inputs, for row widths around every
//! lane count and accumulator block (1 … 65), and 1000, 2048, 4096, 4097 (a layer's `4H`), 3
//! rows, four kinds of rows (centred values in ±3, values 20 ± 1 whose mean dwarfs their
//! spread, a constant row (variance 0), values in ±1e-3 whose variance is below `ε`), random
//! `γ = 1 ± 0.5` and `β` in ±0.5, with and without `β`, `x̂` and `rstd`, on sub-slices of
//! larger buffers: the inputs' margins hold NaN (a read outside a slice would show in the
//! results), the outputs' a sentinel that must survive.
//!
//! The tolerance is derived, per element, from the ISA's order of sums
//! ([`Kernels::LN_PARTIAL_SUMS`] `= P`: a term goes through at most `d = ceil(w/P) + log2(P)`
//! roundings in its sum), `u = 2^-24` and the f64 results (see [`forward_bound`] and
//! [`backward_bound`]); it is first order, so it is multiplied by `1 + 1e-3` for the products
//! of error terms it leaves out. The tests print the worst error as a fraction of it.
//!
//! Also: `y` does not depend on which of `x̂` and `rstd` are saved (bit for bit), each row's
//! results do not depend on the rows called with it, a slice of the wrong length panics naming
//! it, and the thread split of the CPU backend (`cpu/mod.rs`) gives every thread count the
//! same bits.
//!
//! The layer-normalised LSTM's kernels ([`Kernels::lstm_ln_output`],
//! [`Kernels::lstm_ln_backward`]): against the host's default (`host/layer_norm.rs`) run in f64
//! on the same inputs, with the criterion of `isa/cell_tests.rs` (the worst of
//! `|y − exact| / max(1e-6, 2e-6·|exact|)` at most 1, or at most 1.25 times the f32 default's),
//! `H` around every lane count and 512, a row inactive (bit-identical to the f32 default there),
//! padded slices as above.

use super::cell_tests::{Padded, OUT_SENTINEL};
use super::Kernels;
use crate::SplitMix64;

/// The tests of one ISA's layer-norm kernels: `layer_norm_kernel_tests!(token)` with `token`
/// an `Option` of the ISA's token (`None`: the tests say they were skipped); an attribute
/// after it goes on every test.
macro_rules! layer_norm_kernel_tests {
    ($isa:expr $(, #[$attr:meta])?) => {
        use $crate::backend::cpu::isa::layer_norm_tests as harness;

        #[test]
        $(#[$attr])?
        fn layer_norm_forward_matches_f64() {
            harness::check_forward($isa);
        }

        #[test]
        $(#[$attr])?
        fn layer_norm_backward_matches_f64() {
            harness::check_backward($isa);
        }

        #[test]
        $(#[$attr])?
        fn layer_norm_split_across_threads_is_bit_identical() {
            harness::check_thread_split($isa);
        }

        #[test]
        $(#[$attr])?
        fn lstm_ln_output_matches_f64() {
            harness::check_lstm_output($isa);
        }

        #[test]
        $(#[$attr])?
        fn lstm_ln_backward_matches_f64() {
            harness::check_lstm_backward($isa);
        }

        #[test]
        #[should_panic(expected = "layer-normalised LSTM backward: `dm` has 5 values, expected 6")]
        $(#[$attr])?
        fn lstm_ln_backward_wrong_dm_panics() {
            harness::wrong_dm_panics($isa);
        }

        #[test]
        #[should_panic(expected = "layer norm: `gamma` has 7 values, expected 8")]
        $(#[$attr])?
        fn layer_norm_wrong_gamma_panics() {
            harness::wrong_gamma_panics($isa);
        }

        #[test]
        #[should_panic(expected = "layer norm backward: `rstd` has 2 values, expected 3")]
        $(#[$attr])?
        fn layer_norm_backward_wrong_rstd_panics() {
            harness::wrong_rstd_panics($isa);
        }
    };
}
pub(crate) use layer_norm_kernel_tests;

/// Row widths: every tail of 4, 8 and 16 lanes and of the 4 accumulators' blocks, and the
/// widths of a layer's `G·H`.
#[cfg(not(miri))]
const WIDTHS: [usize; 18] = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 2048, 4096, 4097];
/// Under Miri (which checks memory accesses, not accuracy), fewer: a tail alone, a chunk and a
/// tail, a block and more.
#[cfg(miri)]
const WIDTHS: [usize; 4] = [1, 9, 17, 71];
const ROWS: usize = 3;
/// `u`, the unit roundoff of f32.
const U: f64 = f32::EPSILON as f64 / 2.0;
/// The first-order bounds' allowance for the products of error terms they leave out (each
/// under `d·u < 1e-4` relative).
const SECOND_ORDER: f64 = 1.0 + 1e-3;
const EPS: f64 = 1e-5;

/// The kinds of rows, by name, each `n` values from `rng`.
#[cfg(not(miri))]
const KINDS: [&str; 4] = ["centred", "offset", "constant", "tiny"];
/// Under Miri, one kind: the memory accesses do not depend on the values.
#[cfg(miri)]
const KINDS: [&str; 1] = ["offset"];

fn row_values(kind: &str, n: usize, rng: &mut SplitMix64) -> Vec<f32> {
    (0..n)
        .map(|_| match kind {
            "centred" => rng.uniform(-3.0, 3.0) as f32,
            "offset" => rng.uniform(19.0, 21.0) as f32,
            "constant" => 0.7,
            "tiny" => rng.uniform(-1e-3, 1e-3) as f32,
            _ => unreachable!(),
        })
        .collect()
}

/// The roundings a term's sum goes through on `K`, for rows of `w` values:
/// `ceil(w/P) + log2(P)`.
fn depth<K: Kernels>(w: usize) -> f64 {
    let p = K::LN_PARTIAL_SUMS;
    assert!(p.is_power_of_two(), "{}: LN_PARTIAL_SUMS = {p} is not a power of two", K::ISA);
    (w.div_ceil(p) + p.trailing_zeros() as usize) as f64
}

/// The f64 layer norm of one row: `(μ, rstd, x̂)`.
fn exact_forward(x: &[f32]) -> (f64, f64, Vec<f64>) {
    let w = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / w;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / w;
    let rstd = 1.0 / (var + EPS).sqrt();
    (mean, rstd, x.iter().map(|&v| (v as f64 - mean) * rstd).collect())
}

/// Bounds of the errors of `(x̂_i, rstd)` of an f32 forward whose sums take `d` roundings, on
/// the row `x` with exact `rstd`, `x̂`.
///
/// `Σx` errs by at most `d·u·Σ|x|`, so `μ` by `δμ = (d + 2)·u·Σ|x|/w` (with the division's
/// rounding). `Σ(x − μ̂)²` is `Σ(x − μ)² + w·δμ²`, its terms rounded at most twice (the
/// subtraction, the square unless fused) and summed with `d` roundings, then `/w` and `+ ε`
/// round once each: `var + ε` errs by `(d + 5)·u` relative, plus `δμ²`. `sqrt` and the division
/// add one rounding each, and the square root halves the rest: `rstd` errs by
/// `ρ = ((d + 5)/2 + 2)·u + (δμ·rstd)²/2` relative. `x̂_i = (x_i − μ̂)·rstd` then errs by
/// `δμ·rstd + |x̂_i|·(ρ + 2u)`.
fn forward_bound(x: &[f32], d: f64, rstd: f64, xhat: &[f64]) -> (Vec<f64>, f64) {
    let w = x.len() as f64;
    let dmu = (d + 2.0) * U * x.iter().map(|&v| (v as f64).abs()).sum::<f64>() / w;
    let rho = ((d + 5.0) / 2.0 + 2.0) * U + (dmu * rstd).powi(2) / 2.0;
    let xhat_tol = xhat.iter().map(|&xh| SECOND_ORDER * (dmu * rstd * (1.0 + rho) + xh.abs() * (rho + 2.0 * U))).collect();
    (xhat_tol, SECOND_ORDER * rho * rstd)
}

/// Checks every ISA's forward against [`exact_forward`]; see the module documentation.
pub(crate) fn check_forward<K: Kernels>(isa: Option<K>) {
    let Some(isa) = isa else {
        crate::testkit::skip_isa(K::ISA.name());
        return;
    };
    let mut rng = SplitMix64::new(0x1a7e_4000 + K::ISA as u64);
    let mut worst = [0.0f64; 3];
    for w in WIDTHS {
        let d = depth::<K>(w);
        for kind in KINDS {
            let x: Vec<f32> = (0..ROWS).flat_map(|_| row_values(kind, w, &mut rng)).collect();
            let gamma: Vec<f32> = (0..w).map(|_| rng.uniform(0.5, 1.5) as f32).collect();
            let beta: Vec<f32> = (0..w).map(|_| rng.uniform(-0.5, 0.5) as f32).collect();
            // y with and without β, as the first call of each gave them.
            let mut first: [Option<Vec<f32>>; 2] = [None, None];
            let mut first_xhat: Option<Vec<f32>> = None;
            for with_beta in [true, false] {
                for (save_xhat, save_rstd) in [(true, true), (true, false), (false, true), (false, false)] {
                    let case = format!("{} w={w} {kind} beta={with_beta} xhat={save_xhat} rstd={save_rstd}", K::ISA);
                    let mut y = Padded::new(&x, OUT_SENTINEL);
                    let (g, b) = (Padded::new(&gamma, f32::NAN), Padded::new(&beta, f32::NAN));
                    let mut xh = Padded::new(&vec![0.0; x.len()], OUT_SENTINEL);
                    let mut rs = Padded::new(&[0.0; ROWS], OUT_SENTINEL);
                    isa.layer_norm_rows(
                        w,
                        y.get_mut(),
                        g.get(),
                        with_beta.then(|| b.get()),
                        save_xhat.then(|| xh.get_mut()),
                        save_rstd.then(|| rs.get_mut()),
                    );
                    y.assert_margins(&format!("{case}: x"));
                    xh.assert_margins(&format!("{case}: xhat"));
                    rs.assert_margins(&format!("{case}: rstd"));
                    for r in 0..ROWS {
                        let row = &x[r * w..(r + 1) * w];
                        let (_, rstd, xhat) = exact_forward(row);
                        let (xhat_tol, rstd_tol) = forward_bound(row, d, rstd, &xhat);
                        for i in 0..w {
                            let (gi, bi) = (gamma[i] as f64, if with_beta { beta[i] as f64 } else { 0.0 });
                            let want = gi * xhat[i] + bi;
                            // γ·x̂ + β: one rounding if fused, two if not.
                            let tol = gi.abs() * xhat_tol[i] + 2.0 * U * (gi * xhat[i]).abs() + 2.0 * U * bi.abs();
                            let got = y.get()[r * w + i] as f64;
                            let e = (got - want).abs() / tol;
                            assert!(e <= 1.0, "{case}: row {r} y[{i}] = {got:e}, f64 {want:e}, tolerance {tol:.3e}");
                            worst[0] = worst[0].max(e);
                            if save_xhat {
                                let got = xh.get()[r * w + i] as f64;
                                let e = (got - xhat[i]).abs() / xhat_tol[i];
                                assert!(e <= 1.0, "{case}: row {r} xhat[{i}] = {got:e}, f64 {:e}, tolerance {:.3e}", xhat[i], xhat_tol[i]);
                                worst[1] = worst[1].max(e);
                            }
                        }
                        if save_rstd {
                            let got = rs.get()[r] as f64;
                            let e = (got - rstd).abs() / rstd_tol;
                            assert!(e <= 1.0, "{case}: row {r} rstd = {got:e}, f64 {rstd:e}, tolerance {rstd_tol:.3e}");
                            worst[2] = worst[2].max(e);
                        }
                    }
                    let slot = &mut first[with_beta as usize];
                    match slot {
                        None => *slot = Some(y.get().to_vec()),
                        Some(y0) => assert!(bits(y0) == bits(y.get()), "{case}: y differs from the call that saved both"),
                    }
                    if save_xhat {
                        match &first_xhat {
                            None => first_xhat = Some(xh.get().to_vec()),
                            Some(x0) => assert!(bits(x0) == bits(xh.get()), "{case}: xhat differs from the first call's"),
                        }
                    }
                }
            }
            // Each row on its own: the same bits as in the call of all rows.
            for r in 0..ROWS {
                let mut y = x[r * w..(r + 1) * w].to_vec();
                isa.layer_norm_rows(w, &mut y, &gamma, Some(&beta), None, None);
                let all = first[1].as_ref().expect("computed above");
                assert!(bits(&y) == bits(&all[r * w..(r + 1) * w]), "{} w={w} {kind}: row {r} alone differs", K::ISA);
            }
        }
    }
    println!("{} layer norm forward, worst error / derived bound: y {:.3}, xhat {:.3}, rstd {:.3}", K::ISA, worst[0], worst[1], worst[2]);
}

/// Bound of the error of an f32 backward `dx_i` whose sums take `d` roundings, from the exact
/// `g = γ⊙dy`, the exact means `mg`, `mgx` and `dx` of the same f32 inputs.
///
/// `g_i` rounds once; `Σg` and `Σg⊙x̂` take `d` roundings (and the product one more unless
/// fused) and the division one: `mean(g)` errs by `δg = (d + 3)·u·Σ|g|/w`, `mean(g⊙x̂)` by
/// `δgx = (d + 3)·u·Σ|g⊙x̂|/w`. Then `(g_i − mg) − x̂_i·mgx` rounds at most three times (the
/// product unless fused) on terms of at most `|g_i| + |mg| + |x̂_i·mgx|`, and `rstd·(…)` once:
/// `|δdx_i| ≤ rstd·(δg + |x̂_i|·δgx + 3u·(|g_i| + |mg| + |x̂_i·mgx|)) + u·|dx_i|`.
fn backward_bound(d: f64, rstd: f64, g: &[f64], xhat: &[f32], (mg, mgx): (f64, f64), dx: &[f64]) -> Vec<f64> {
    let w = g.len() as f64;
    let dg = (d + 3.0) * U * g.iter().map(|v| v.abs()).sum::<f64>() / w;
    let dgx = (d + 3.0) * U * g.iter().zip(xhat).map(|(g, &x)| (g * x as f64).abs()).sum::<f64>() / w;
    (0..g.len())
        .map(|i| {
            let xh = xhat[i] as f64;
            SECOND_ORDER * (rstd * (dg + xh.abs() * dgx + 3.0 * U * (g[i].abs() + mg.abs() + (xh * mgx).abs())) + U * dx[i].abs())
        })
        .collect()
}

/// Checks every ISA's backward against the f64 backward of the same f32 inputs (`x̂` and
/// `rstd` from the ISA's forward); see the module documentation.
pub(crate) fn check_backward<K: Kernels>(isa: Option<K>) {
    let Some(isa) = isa else {
        crate::testkit::skip_isa(K::ISA.name());
        return;
    };
    let mut rng = SplitMix64::new(0x1a7e_b000 + K::ISA as u64);
    let mut worst = 0.0f64;
    for w in WIDTHS {
        let d = depth::<K>(w);
        for kind in KINDS {
            let mut x: Vec<f32> = (0..ROWS).flat_map(|_| row_values(kind, w, &mut rng)).collect();
            let gamma: Vec<f32> = (0..w).map(|_| rng.uniform(0.5, 1.5) as f32).collect();
            let (mut xhat, mut rstd) = (vec![0.0; x.len()], vec![0.0; ROWS]);
            isa.layer_norm_rows(w, &mut x, &gamma, None, Some(&mut xhat), Some(&mut rstd));
            let dy: Vec<f32> = (0..x.len()).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let case = format!("{} w={w} {kind}", K::ISA);
            let ins =
                [Padded::new(&dy, f32::NAN), Padded::new(&gamma, f32::NAN), Padded::new(&xhat, f32::NAN), Padded::new(&rstd, f32::NAN)];
            let mut dx = Padded::new(&vec![0.0; x.len()], OUT_SENTINEL);
            isa.layer_norm_rows_backward(w, ins[0].get(), ins[1].get(), ins[2].get(), ins[3].get(), dx.get_mut());
            dx.assert_margins(&format!("{case}: dx"));
            for r in 0..ROWS {
                let (dy, xhat, rs) = (&dy[r * w..(r + 1) * w], &xhat[r * w..(r + 1) * w], rstd[r] as f64);
                let g: Vec<f64> = (0..w).map(|i| gamma[i] as f64 * dy[i] as f64).collect();
                let mg = g.iter().sum::<f64>() / w as f64;
                let mgx = g.iter().zip(xhat).map(|(g, &x)| g * x as f64).sum::<f64>() / w as f64;
                let want: Vec<f64> = (0..w).map(|i| rs * (g[i] - mg - xhat[i] as f64 * mgx)).collect();
                let tol = backward_bound(d, rs, &g, xhat, (mg, mgx), &want);
                for i in 0..w {
                    let got = dx.get()[r * w + i] as f64;
                    let e = (got - want[i]).abs() / tol[i];
                    assert!(e <= 1.0, "{case}: row {r} dx[{i}] = {got:e}, f64 {:e}, tolerance {:.3e}", want[i], tol[i]);
                    worst = worst.max(e);
                }
            }
        }
    }
    println!("{} layer norm backward, worst error / derived bound: dx {worst:.3}", K::ISA);
}

/// The CPU backend's split of the rows across threads (`cpu::layer_norm_rows`) gives the
/// serial call's bits for 1 to 4 threads, forward and backward, on calls large enough to be
/// split (64 rows of 2048, and an odd 37 rows of 1000).
pub(crate) fn check_thread_split<K: Kernels>(isa: Option<K>) {
    let Some(isa) = isa else {
        crate::testkit::skip_isa(K::ISA.name());
        return;
    };
    let mut rng = SplitMix64::new(0x1a7e_5000);
    let sizes: &[(usize, usize)] = if cfg!(miri) { &[] } else { &[(64, 2048), (37, 1000)] };
    for &(rows, w) in sizes {
        let x: Vec<f32> = (0..rows * w).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
        let dy: Vec<f32> = (0..rows * w).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let gamma: Vec<f32> = (0..w).map(|_| rng.uniform(0.5, 1.5) as f32).collect();
        let beta: Vec<f32> = (0..w).map(|_| rng.uniform(-0.5, 0.5) as f32).collect();
        let run = |threads: usize| {
            crate::backend::cpu::gemm::with_par(threads, |par| {
                let (mut y, mut xhat, mut rstd, mut dx) = (x.clone(), vec![0.0; x.len()], vec![0.0; rows], vec![0.0; x.len()]);
                crate::backend::cpu::layer_norm_rows(isa, par, w, &mut y, &gamma, Some(&beta), Some(&mut xhat), Some(&mut rstd));
                crate::backend::cpu::layer_norm_rows_backward(isa, par, w, &dy, &gamma, &xhat, &rstd, &mut dx);
                [y, xhat, rstd, dx].map(|v| bits(&v))
            })
        };
        let serial = run(1);
        for threads in 2..=4 {
            assert!(run(threads) == serial, "{} rows={rows} w={w}: {threads} threads differ from one", K::ISA);
        }
    }
}

/// A forward call with a `gamma` one value short: must panic before any kernel runs.
pub(crate) fn wrong_gamma_panics<K: Kernels>(isa: Option<K>) {
    let Some(isa) = isa else { panic!("layer norm: `gamma` has 7 values, expected 8 (skipped: this CPU lacks the ISA)") };
    isa.layer_norm_rows(8, &mut [0.0; 16], &[1.0; 7], None, None, None);
}

/// A backward call with one `rstd` short for 3 rows: must panic before any kernel runs.
pub(crate) fn wrong_rstd_panics<K: Kernels>(isa: Option<K>) {
    let Some(isa) = isa else { panic!("layer norm backward: `rstd` has 2 values, expected 3 (skipped: this CPU lacks the ISA)") };
    isa.layer_norm_rows_backward(4, &[0.0; 12], &[1.0; 4], &[0.0; 12], &[1.0; 2], &mut [0.0; 12]);
}

/// Hidden sizes of the LSTM's output kernels: every tail of 4, 8 and 16 lanes, and a layer's.
#[cfg(not(miri))]
const HIDDEN: [usize; 12] = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 512];
/// Under Miri (which checks memory accesses, not accuracy), fewer: a tail alone, a chunk and a
/// tail, two chunks and a tail.
#[cfg(miri)]
const HIDDEN: [usize; 3] = [3, 9, 33];
/// Rows of an LSTM case: the middle one inactive.
const ACTIVE: [bool; 3] = [true, false, true];

/// The worst error of an ISA's LSTM output kernel and of the f32 default, each against the f64
/// default on the same inputs, normalised as `isa/cell_tests.rs` does:
/// `|y − exact| / max(1e-6, 2e-6·|exact|)`.
#[derive(Default)]
struct Worst {
    isa: f64,
    r32: f64,
}

impl Worst {
    fn fold(&mut self, what: &str, got: f32, r32: f32, exact: f64) {
        assert!(!got.is_nan(), "{what}: NaN");
        let norm = |y: f32| (y as f64 - exact).abs() / (2e-6 * exact.abs()).max(1e-6);
        self.isa = self.isa.max(norm(got));
        self.r32 = self.r32.max(norm(r32));
    }
    /// The criterion of `isa/cell_tests.rs`: at most 1, or at most 1.25 times the f32
    /// default's own error (then the conditioning of the maths, not the kernel's).
    fn check(&self, what: &str) {
        println!("{what}: worst {:.3} (f32 default: {:.3})", self.isa, self.r32);
        assert!(self.isa <= 1.0 || self.isa <= 1.25 * self.r32, "{what}: worst error {} (f32 default {})", self.isa, self.r32);
    }
}

fn uniform_vec(rng: &mut SplitMix64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi) as f32).collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// [`Kernels::lstm_ln_output`] against `host::layer_norm::lstm_ln_output` in f64 (and f32),
/// `s` in ±6 (`tanh` saturating), gates in `[0, 1]`.
pub(crate) fn check_lstm_output<K: Kernels>(isa: Option<K>) {
    use crate::backend::host::layer_norm::lstm_ln_output;
    let Some(isa) = isa else {
        crate::testkit::skip_isa(K::ISA.name());
        return;
    };
    let mut rng = SplitMix64::new(0x157e_0000 + K::ISA as u64);
    let mut worst = Worst::default();
    let n = ACTIVE.len();
    for h in HIDDEN {
        let gates = uniform_vec(&mut rng, n * 4 * h, 0.0, 1.0);
        let m0 = uniform_vec(&mut rng, n * h, -6.0, 6.0);
        let pg = Padded::new(&gates, f32::NAN);
        let mut m = Padded::new(&m0, OUT_SENTINEL);
        isa.lstm_ln_output(h, pg.get(), m.get_mut());
        pg.assert_margins("gates");
        m.assert_margins("m");
        let mut r32 = m0.clone();
        lstm_ln_output(h, &gates, &mut r32);
        let mut r64 = widen(&m0);
        lstm_ln_output(h, &widen(&gates), &mut r64);
        for i in 0..n * h {
            worst.fold(&format!("{} H={h} m[{i}]", K::ISA), m.get()[i], r32[i], r64[i]);
        }
    }
    worst.check(&format!("{} lstm_ln_output", K::ISA));
}

/// [`Kernels::lstm_ln_backward`] against `host::layer_norm::lstm_ln_backward` in f64 (and
/// f32), with and without the `o` gradient: `ĉ` in ±3, `γ = 1 ± 0.5`, `β` in ±0.5, gates in
/// `[0, 1]`, `dm` in ±1; `s` on every row, `dŝ` and `d_o` on the active rows; inactive rows
/// bit-identical to the f32 default's (`dŝ = 0`), the other columns of `d_o` untouched.
pub(crate) fn check_lstm_backward<K: Kernels>(isa: Option<K>) {
    use crate::backend::host::layer_norm::{lstm_ln_backward, LstmLnBack};
    let Some(isa) = isa else {
        crate::testkit::skip_isa(K::ISA.name());
        return;
    };
    let mut rng = SplitMix64::new(0x157e_b000 + K::ISA as u64);
    let mut worst: [Worst; 3] = Default::default();
    let n = ACTIVE.len();
    for h in HIDDEN {
        for with_o in [true, false] {
            let case = format!("{} H={h} d_o={with_o}", K::ISA);
            let gamma = uniform_vec(&mut rng, h, 0.5, 1.5);
            let beta = uniform_vec(&mut rng, h, -0.5, 0.5);
            let ln_c = uniform_vec(&mut rng, n * h, -3.0, 3.0);
            let gates = uniform_vec(&mut rng, n * 4 * h, 0.0, 1.0);
            let dm = uniform_vec(&mut rng, n * h, -1.0, 1.0);
            let d_o0 = uniform_vec(&mut rng, n * 4 * h, -1.0, 1.0);
            let ins = [&gamma, &beta, &ln_c, &gates, &dm].map(|v| Padded::new(v, f32::NAN));
            let mut outs = [vec![0.0; n * h], vec![0.0; n * h], d_o0.clone()].map(|v| Padded::new(&v, OUT_SENTINEL));
            let [s, dsh, d_o] = outs.each_mut().map(Padded::get_mut);
            isa.lstm_ln_backward(
                h,
                LstmLnBack {
                    active: &ACTIVE,
                    gamma_c: ins[0].get(),
                    beta_c: ins[1].get(),
                    ln_c: ins[2].get(),
                    gates: ins[3].get(),
                    dm: ins[4].get(),
                    s,
                    dsh,
                    d_o: with_o.then_some(d_o),
                },
            );
            for (p, name) in ins.iter().zip(["gamma_c", "beta_c", "ln_c", "gates", "dm"]).chain(outs.iter().zip(["s", "dsh", "d_o"])) {
                p.assert_margins(&format!("{case}: {name}"));
            }
            let (mut s32, mut dsh32, mut d_o32) = (vec![0.0f32; n * h], vec![0.0f32; n * h], d_o0.clone());
            lstm_ln_backward(
                h,
                LstmLnBack {
                    active: &ACTIVE,
                    gamma_c: &gamma,
                    beta_c: &beta,
                    ln_c: &ln_c,
                    gates: &gates,
                    dm: &dm,
                    s: &mut s32,
                    dsh: &mut dsh32,
                    d_o: with_o.then_some(&mut d_o32[..]),
                },
            );
            let (mut s64, mut dsh64, mut d_o64) = (vec![0.0f64; n * h], vec![0.0f64; n * h], widen(&d_o0));
            let (g64, ga64, b64, l64, dm64) = (widen(&gates), widen(&gamma), widen(&beta), widen(&ln_c), widen(&dm));
            lstm_ln_backward(
                h,
                LstmLnBack {
                    active: &ACTIVE,
                    gamma_c: &ga64,
                    beta_c: &b64,
                    ln_c: &l64,
                    gates: &g64,
                    dm: &dm64,
                    s: &mut s64,
                    dsh: &mut dsh64,
                    d_o: with_o.then_some(&mut d_o64[..]),
                },
            );
            let (s, dsh, d_o) = (outs[0].get(), outs[1].get(), outs[2].get());
            for (b, &act) in ACTIVE.iter().enumerate() {
                for j in 0..h {
                    let r = b * h + j;
                    worst[0].fold(&format!("{case} s[{r}]"), s[r], s32[r], s64[r]);
                    if act {
                        worst[1].fold(&format!("{case} dsh[{r}]"), dsh[r], dsh32[r], dsh64[r]);
                    } else {
                        assert_eq!(dsh[r].to_bits(), dsh32[r].to_bits(), "{case}: inactive row {b}: dsh[{r}]");
                    }
                }
                for j in 0..4 * h {
                    let k = b * 4 * h + j;
                    if act && with_o && j >= 3 * h {
                        worst[2].fold(&format!("{case} d_o[{k}]"), d_o[k], d_o32[k], d_o64[k]);
                    } else {
                        assert_eq!(d_o[k].to_bits(), d_o0[k].to_bits(), "{case}: d_o[{k}] written");
                    }
                }
            }
        }
    }
    for (w, name) in worst.iter().zip(["s", "dsh", "d_o"]) {
        w.check(&format!("{} lstm_ln_backward {name}", K::ISA));
    }
}

pub(crate) fn wrong_dm_panics<K: Kernels>(isa: Option<K>) {
    use crate::backend::host::layer_norm::LstmLnBack;
    let Some(isa) = isa else { panic!("layer-normalised LSTM backward: `dm` has 5 values, expected 6 (skipped: this CPU lacks the ISA)") };
    let (mut s, mut dsh) = ([0.0; 6], [0.0; 6]);
    let r = LstmLnBack {
        active: &[true, true],
        gamma_c: &[1.0; 3],
        beta_c: &[0.0; 3],
        ln_c: &[0.0; 6],
        gates: &[0.5; 24],
        dm: &[0.0; 5],
        s: &mut s,
        dsh: &mut dsh,
        d_o: None,
    };
    isa.lstm_ln_backward(3, r);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `cargo test --release --lib layer_norm_throughput -- --ignored --nocapture`: ns per row of
/// every ISA's layer norm against the host's generic default (`host/layer_norm.rs`, f64 sums),
/// one thread, 64 rows of 2048 (`LN_ROWS_W=rows,w` to change), the best of 15 rounds, the
/// two alternating so that both see the same load: forward as the input side runs it (`β`,
/// `x̂` and `rstd`), as the hidden side does (no `β`), and backward.
#[test]
#[ignore = "timing, run by hand"]
fn layer_norm_throughput() {
    use crate::backend::host::layer_norm as generic;
    let (rows, w) = std::env::var("LN_ROWS_W").ok().map_or((64, 2048), |s| {
        let v: Vec<usize> = s.split(',').map(|x| x.trim().parse().expect("LN_ROWS_W=rows,w")).collect();
        (v[0], v[1])
    });
    let mut rng = SplitMix64::new(7);
    let x0: Vec<f32> = (0..rows * w).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
    let dy: Vec<f32> = (0..rows * w).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let gamma: Vec<f32> = (0..w).map(|_| rng.uniform(0.5, 1.5) as f32).collect();
    let beta: Vec<f32> = (0..w).map(|_| rng.uniform(-0.5, 0.5) as f32).collect();
    let reps = (50_000_000 / (rows * w)).clamp(3, 10_000);
    for isa in super::Isa::available() {
        let chosen = super::Chosen::detect(isa).expect("available");
        // [input side, hidden side, backward] × [generic, ISA]: seconds per call.
        let mut best = [[f64::INFINITY; 2]; 3];
        let (mut x, mut xhat, mut rstd, mut dx) = (x0.clone(), vec![0.0; rows * w], vec![0.0; rows], vec![0.0; rows * w]);
        for round in 0..16 {
            for ours in [false, true] {
                for (pass, slot) in best.iter_mut().enumerate() {
                    let t = std::time::Instant::now();
                    // Each call normalises the previous one's output again: values stay finite
                    // and of the same spread, and no copy is timed.
                    for _ in 0..reps {
                        let beta = (pass == 0).then_some(&beta[..]);
                        match (pass, ours) {
                            (2, false) => generic::layer_norm_rows_backward(w, &dy, &gamma, &xhat, &rstd, &mut dx),
                            (2, true) => {
                                super::with_kernels!(chosen, |k| k.layer_norm_rows_backward(w, &dy, &gamma, &xhat, &rstd, &mut dx))
                            }
                            (_, false) => generic::layer_norm_rows(w, &mut x, &gamma, beta, Some(&mut xhat), Some(&mut rstd)),
                            (_, true) => super::with_kernels!(chosen, |k| k.layer_norm_rows(
                                w,
                                &mut x,
                                &gamma,
                                beta,
                                Some(&mut xhat),
                                Some(&mut rstd)
                            )),
                        }
                    }
                    // Round 0 warms up.
                    if round > 0 {
                        slot[ours as usize] = slot[ours as usize].min(t.elapsed().as_secs_f64() / reps as f64);
                    }
                }
            }
        }
        let ns = best.map(|b| b.map(|s| s * 1e9 / rows as f64));
        println!(
            "{isa} rows={rows} w={w} ns/row (generic default, ratio): forward β,x̂,rstd {:.0} ({:.0}, {:.1}x); forward x̂,rstd {:.0} ({:.0}, {:.1}x); backward {:.0} ({:.0}, {:.1}x)",
            ns[0][1],
            ns[0][0],
            ns[0][0] / ns[0][1],
            ns[1][1],
            ns[1][0],
            ns[1][0] / ns[1][1],
            ns[2][1],
            ns[2][0],
            ns[2][0] / ns[2][1],
        );
    }
}
