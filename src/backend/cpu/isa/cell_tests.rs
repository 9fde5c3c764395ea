//! The parity harness of every ISA's fused cell kernels, generic over the ISA's [`Kernels`]
//! (through their checked entry points, so the length checks and the row split of `rows.rs`
//! are tested with them); [`cell_kernel_tests!`] writes the tests of one ISA.
//!
//! Each fused kernel against the reference kernel in f32 and in f64, on random inputs in ±25
//! (so gates saturate) and output gradients in ±1 (see [`GRAD_RANGE`]), `B` in `1..=5`, `H` in
//! {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 300} (every tail of 4, 8 and 16 lanes; 300: a whole
//! block of 256 lanes, then one with a tail), with and without `b_hh`, with inactive rows, on
//! sub-slices of larger buffers whose margins hold sentinels. Also: saturated and NaN inputs
//! ([`check_extremes`]), a unit's result not depending on its position in the vectors
//! ([`results_do_not_depend_on_position`]), and a slice of the wrong length refused.
//!
//! Criteria:
//! - active rows, per cell and output buffer over all cases: the worst error against the f64
//!   reference, normalised as `|y - exact| / max(1e-6, 2e-6·|exact|)`, is at most 1, or at most
//!   1.25 times that of the f32 reference kernel (whose own error is then the conditioning of
//!   the maths, not of a kernel). A direct comparison with the f32 reference can show up to 2.4
//!   where the reference is the less accurate of the two (GRU's `1 - n·n` against an
//!   `fnmadd`), so f64 is the judge; where an ISA computes without approximation, bit
//!   identity with the f32 reference can be required (`exact` in [`cell_kernel_tests!`]);
//! - inactive rows: bit-identical to the f32 reference kernel (`c = c_prev`, zeros, `dc`
//!   unchanged, `m` untouched);
//! - the margins around every slice, inputs included, are intact; inputs' margins hold NaN so
//!   that a read outside a slice would show in the results.

use super::Kernels;
use crate::backend::host::{CellBackward, CellForward, HostKernels};
use crate::backend::Reference;
use crate::config::CellKind;
use crate::element::Float;
use crate::SplitMix64;
use std::collections::BTreeMap;

/// The tests of one ISA's cell kernels: `cell_kernel_tests!(token, exact: [(cell, forward), …])`
/// with `token` an `Option` of the ISA's token (`None`: the tests say they were skipped), and
/// the (cell, pass) pairs whose every output must be bit-identical to the f32 reference; an
/// attribute after them goes on every test (the SIMD ISAs': not run under Miri).
macro_rules! cell_kernel_tests {
    (@cells $isa:expr, $exact:tt, $attr:tt, $($test:ident: $cell:ident),*) => {
        $(
            $crate::backend::cpu::isa::cell_tests::cell_kernel_tests!(@one $isa, $exact, $attr, $test: $cell);
        )*
    };
    (@one $isa:expr, $exact:tt, [$($attr:meta)?], $test:ident: $cell:ident) => {
        #[test]
        $(#[$attr])?
        fn $test() {
            harness::check_cell($isa, CellKind::$cell, &$exact);
        }
    };
    ($isa:expr, exact: [$($exact:expr),* $(,)?] $(, #[$attr:meta])?) => {
        use $crate::backend::cpu::isa::cell_tests as harness;
        use $crate::config::CellKind;

        $crate::backend::cpu::isa::cell_tests::cell_kernel_tests!(@cells $isa, [$($exact),*], [$($attr)?], lstm_matches_reference: Lstm, gru_matches_reference: Gru, rnn_tanh_matches_reference: RnnTanh, rnn_relu_matches_reference: RnnRelu);

        #[test]
        #[should_panic(expected = "Lstm cell kernel: `hg` has 31 values, expected 32")]
        $(#[$attr])?
        fn wrong_length_panics() {
            harness::wrong_length_panics($isa);
        }
    };
}
pub(crate) use cell_kernel_tests;

/// Every check of `cell` on `isa`: forward and backward against the reference (bit-identical
/// for the `(cell, forward)` pairs in `exact`), position independence, and extreme inputs.
pub(crate) fn check_cell<K: Kernels>(isa: Option<K>, cell: CellKind, exact: &[(CellKind, bool)]) {
    let Some(isa) = isa else {
        crate::testkit::skip_isa(K::ISA.name());
        return;
    };
    for forward in [true, false] {
        let (abs, rel) = check_cases(isa, cell, forward, !forward);
        let pass = if forward { "forward" } else { "backward" };
        println!("{} {cell:?} {pass} vs the f32 reference: abs {abs:.2e}, rel {rel:.2e}", K::ISA);
        if exact.contains(&(cell, forward)) {
            assert_eq!((abs, rel), (0.0, 0.0), "{} {cell:?} {pass} has no approximation: it must be bit-identical", K::ISA);
        }
    }
    results_do_not_depend_on_position(isa, cell);
    check_extremes(isa, cell);
}

/// An LSTM step whose `hg` is one value short: must panic before any kernel runs.
pub(crate) fn wrong_length_panics<K: Kernels>(isa: Option<K>) {
    let Some(isa) = isa else { panic!("Lstm cell kernel: `hg` has 31 values, expected 32 (skipped: this CPU lacks the ISA)") };
    let (xg, hg, bh) = (vec![0.0; 32], vec![0.0; 31], vec![0.0; 32]);
    let (mut gates, mut c, mut m, c_prev) = (vec![0.0; 32], vec![0.0; 8], vec![0.0; 8], vec![0.0; 8]);
    let ins: [&[f32]; 5] = [&xg, &hg, &bh, &[], &c_prev];
    isa.cell_forward(CellKind::Lstm, fwd_step(&[true], 8, true, ins, [&mut gates, &mut [], &mut c, &mut m]));
}

/// A forward step from its inputs `[xg, hg, b_hh, h_prev, c_prev]` (`b_hh` given if `bias`) and
/// outputs `[gates, extra, c, m]`.
fn fwd_step<'a, T>(active: &'a [bool], h: usize, bias: bool, ins: [&'a [T]; 5], outs: [&'a mut [T]; 4]) -> CellForward<'a, T> {
    let [xg, hg, b_hh, h_prev, c_prev] = ins;
    let [gates, extra, c, m] = outs;
    CellForward {
        active,
        hidden: h,
        xg,
        hg,
        b_hh: bias.then_some(b_hh),
        peephole: None,
        clip: 0.0,
        input_forget: false,
        h_prev,
        c_prev,
        gates,
        extra,
        c,
        m,
    }
}

/// A backward step from its inputs `[gates, extra, c, c_prev, h_prev, dm]` and outputs
/// `[dc, dgi, dgh, dh_direct]`.
fn bwd_step<'a, T>(active: &'a [bool], h: usize, ins: [&'a [T]; 6], outs: [&'a mut [T]; 4]) -> CellBackward<'a, T> {
    let [gates, extra, c, c_prev, h_prev, dm] = ins;
    let [dc, dgi, dgh, dh_direct] = outs;
    CellBackward {
        active,
        hidden: h,
        peephole: None,
        clip: 0.0,
        input_forget: false,
        gates,
        extra,
        c,
        c_prev,
        h_prev,
        dm,
        dc,
        dgi,
        dgh,
        dh_direct,
    }
}

/// The reference forward step in `T` from `ins` (as [`fwd_step`]), its outputs starting as
/// `outs`.
fn reference_forward<T: Float>(
    cell: CellKind,
    (active, h, bias): (&[bool], usize, bool),
    ins: &[Vec<T>; 5],
    mut outs: [Vec<T>; 4],
) -> [Vec<T>; 4] {
    let step = fwd_step(active, h, bias, ins.each_ref().map(|v| &v[..]), outs.each_mut().map(|v| &mut v[..]));
    <Reference as HostKernels<T>>::cell_forward(&Reference, cell, step);
    outs
}

/// The reference backward step in `T`, as [`reference_forward`].
fn reference_backward<T: Float>(cell: CellKind, (active, h): (&[bool], usize), ins: &[Vec<T>; 6], mut outs: [Vec<T>; 4]) -> [Vec<T>; 4] {
    let step = bwd_step(active, h, ins.each_ref().map(|v| &v[..]), outs.each_mut().map(|v| &mut v[..]));
    <Reference as HostKernels<T>>::cell_backward(&Reference, cell, step);
    outs
}

#[cfg(not(miri))]
const HIDDEN: [usize; 12] = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 300];
/// Under Miri (which checks the kernels' memory accesses, not their accuracy), fewer sizes: one
/// lane, a 4-lane body with a tail, and 17 (16 plus a tail).
#[cfg(miri)]
const HIDDEN: [usize; 3] = [1, 5, 17];
/// Batches `1..=MAX_BATCH` (fewer under Miri).
const MAX_BATCH: usize = if cfg!(miri) { 2 } else { 5 };
/// The range of the output gradients `dm`, `dc` given to backward. Backward is linear in them,
/// so they set the scale of its errors: at ±1 the absolute floor of the criterion (1e-6) means
/// what it says. LSTM's `dc += dm·o·(1 - tanh²(c))` amplifies a one-ulp difference of `tanh(c)`
/// near ±1 by `2|dm|`: at ±25 it would ask of `tanh` 2e-8 absolute, a third of an ulp of 1
/// (the NEON `tanh`, 3e-7 at worst, then shows 1.3 against f64 where the f32 reference shows 0.65).
const GRAD_RANGE: f64 = 1.0;
pub(super) const PAD: usize = 11;
/// What an output's margins hold: a value no kernel writes.
pub(super) const OUT_SENTINEL: f32 = -7777.25;

/// `len` values with `PAD` margins of `pad` on both sides.
pub(super) struct Padded {
    data: Vec<f32>,
    len: usize,
    pad: f32,
}

impl Padded {
    pub(super) fn new(vals: &[f32], pad: f32) -> Padded {
        let mut data = vec![pad; vals.len() + 2 * PAD];
        data[PAD..PAD + vals.len()].copy_from_slice(vals);
        Padded { data, len: vals.len(), pad }
    }
    pub(super) fn get(&self) -> &[f32] {
        &self.data[PAD..PAD + self.len]
    }
    pub(super) fn get_mut(&mut self) -> &mut [f32] {
        &mut self.data[PAD..PAD + self.len]
    }
    pub(super) fn assert_margins(&self, what: &str) {
        let margins = self.data[..PAD].iter().chain(&self.data[PAD + self.len..]);
        assert!(margins.into_iter().all(|v| v.to_bits() == self.pad.to_bits()), "{what}: written outside its slice");
    }
}

fn rand_vec(rng: &mut SplitMix64, n: usize, r: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-r, r) as f32).collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Some rows inactive: for `B ≥ 2` at least one of each.
fn rand_active(rng: &mut SplitMix64, batch: usize) -> Vec<bool> {
    let mut a: Vec<bool> = (0..batch).map(|_| rng.next_f64() < 0.7).collect();
    if batch >= 2 {
        let off = rng.below(batch as u64) as usize;
        a[off] = false;
        a[(off + 1) % batch] = true;
    } else {
        a[0] = true;
    }
    a
}

/// Worst normalised errors on one output buffer, over all cases: ours and the f32
/// reference's against f64, and ours against the f32 reference (for information).
#[derive(Default, Debug, Clone, Copy)]
struct Worst {
    vs_f64: f64,
    ref_vs_f64: f64,
    vs_f32: f64,
    /// Ours against the f32 reference: absolute where `|reference| ≤ 0.5`, relative above.
    abs_vs_f32: f64,
    rel_vs_f32: f64,
}

/// Worst errors per output buffer (`"forward gates"`, …).
type Errors = BTreeMap<&'static str, Worst>;

/// One output buffer of a case: ours, the f32 reference's and the f64 reference's values.
struct Results<'a> {
    got: &'a [f32],
    r32: &'a [f32],
    r64: &'a [f64],
}

/// Folds the errors of `got` (and of the f32 reference `r32`) against `r64` on active rows
/// into `errs[key]`, and asserts bit-equality with `r32` on inactive rows; `width` values per
/// row (0: a buffer the cell does not use).
fn compare(errs: &mut Errors, key: &'static str, what: &str, (width, active): (usize, &[bool]), res: Results<'_>) {
    let Results { got, r32, r64 } = res;
    if width == 0 {
        return;
    }
    let norm = |y: f32, x: f64| (y as f64 - x).abs() / (2e-6 * x.abs()).max(1e-6);
    let w = errs.entry(key).or_default();
    for (b, &a) in active.iter().enumerate() {
        let row = b * width..(b + 1) * width;
        if a {
            for ((&y, &r), &x) in got[row.clone()].iter().zip(&r32[row.clone()]).zip(&r64[row]) {
                assert!(!y.is_nan(), "{what}: NaN in row {b}");
                w.vs_f64 = w.vs_f64.max(norm(y, x));
                w.ref_vs_f64 = w.ref_vs_f64.max(norm(r, x));
                w.vs_f32 = w.vs_f32.max(norm(y, r as f64));
                let err = (y as f64 - r as f64).abs();
                if r.abs() <= 0.5 {
                    w.abs_vs_f32 = w.abs_vs_f32.max(err);
                } else {
                    w.rel_vs_f32 = w.rel_vs_f32.max(err / r.abs() as f64);
                }
            }
        } else {
            for (j, (&y, &r)) in got[row.clone()].iter().zip(&r32[row]).enumerate() {
                assert_eq!(y.to_bits(), r.to_bits(), "{what}: inactive row {b}, index {j}: {y} vs reference {r}");
            }
        }
    }
}

/// One forward parity case, its errors folded into `errs`.
fn forward_case<K: Kernels>(isa: K, errs: &mut Errors, cell: CellKind, (batch, h, bias): (usize, usize, bool), seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let g = cell.gates();
    let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
    let active = rand_active(&mut rng, batch);
    let ins = [batch * g * h, batch * g * h, g * h, batch * h, if lstm { batch * h } else { 0 }].map(|n| rand_vec(&mut rng, n, 25.0));
    // Outputs start with values of their own, so that untouched memory shows.
    let outs0 =
        [batch * g * h, if gru { batch * h } else { 0 }, if lstm { batch * h } else { 0 }, batch * h].map(|n| rand_vec(&mut rng, n, 1.0));

    // The ISA's kernel, on padded sub-slices.
    let padded_ins = ins.each_ref().map(|v| Padded::new(v, f32::NAN));
    let mut outs = outs0.each_ref().map(|v| Padded::new(v, OUT_SENTINEL));
    isa.cell_forward(cell, fwd_step(&active, h, bias, padded_ins.each_ref().map(Padded::get), outs.each_mut().map(Padded::get_mut)));
    for (p, name) in padded_ins.iter().zip(["xg", "hg", "b_hh", "h_prev", "c_prev"]) {
        p.assert_margins(name);
    }
    for (p, name) in outs.iter().zip(["gates", "extra", "c", "m"]) {
        p.assert_margins(name);
    }

    // The reference in f32, and in f64 from the same values.
    let r32 = reference_forward(cell, (&active, h, bias), &ins, outs0.clone());
    let r64 = reference_forward(cell, (&active, h, bias), &ins.each_ref().map(|v| to64(v)), outs0.each_ref().map(|v| to64(v)));

    let widths = [g * h, if gru { h } else { 0 }, if lstm { h } else { 0 }, h];
    for (i, (key, buf)) in
        [("forward gates", "gates"), ("forward extra", "extra"), ("forward c", "c"), ("forward m", "m")].into_iter().enumerate()
    {
        let what = format!("{cell:?} forward B={batch} H={h} bias={bias}: {buf}");
        compare(errs, key, &what, (widths[i], &active), Results { got: outs[i].get(), r32: &r32[i], r64: &r64[i] });
    }
}

/// One backward parity case, from the saved values of a reference forward step; its errors
/// folded into `errs`.
fn backward_case<K: Kernels>(isa: K, errs: &mut Errors, cell: CellKind, (batch, h): (usize, usize), seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let g = cell.gates();
    let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
    let (bh_lstm, bh_gru) = (if lstm { batch * h } else { 0 }, if gru { batch * h } else { 0 });
    let active = rand_active(&mut rng, batch);
    let fwd_ins = [batch * g * h, batch * g * h, g * h, bh_gru, bh_lstm].map(|n| rand_vec(&mut rng, n, 25.0));
    let [gates, extra, c, _] =
        reference_forward(cell, (&active, h, true), &fwd_ins, [batch * g * h, bh_gru, bh_lstm, batch * h].map(|n| vec![0.0; n]));
    let [_, _, _, h_prev, c_prev] = fwd_ins;
    let dm = rand_vec(&mut rng, batch * h, GRAD_RANGE);
    let dc0 = rand_vec(&mut rng, bh_lstm, GRAD_RANGE);
    let outs0 = [dc0, rand_vec(&mut rng, batch * g * h, 1.0), rand_vec(&mut rng, batch * g * h, 1.0), rand_vec(&mut rng, batch * h, 1.0)];
    let ins = [gates, extra, c, c_prev, h_prev, dm];

    let padded_ins = ins.each_ref().map(|v| Padded::new(v, f32::NAN));
    let mut outs = outs0.each_ref().map(|v| Padded::new(v, OUT_SENTINEL));
    isa.cell_backward(cell, bwd_step(&active, h, padded_ins.each_ref().map(Padded::get), outs.each_mut().map(Padded::get_mut)));
    for (p, name) in padded_ins.iter().zip(["gates", "extra", "c", "c_prev", "h_prev", "dm"]) {
        p.assert_margins(name);
    }
    for (p, name) in outs.iter().zip(["dc", "dgi", "dgh", "dh_direct"]) {
        p.assert_margins(name);
    }

    let r32 = reference_backward(cell, (&active, h), &ins, outs0.clone());
    let r64 = reference_backward(cell, (&active, h), &ins.each_ref().map(|v| to64(v)), outs0.each_ref().map(|v| to64(v)));

    let widths = [if lstm { h } else { 0 }, g * h, g * h, h];
    let keys = [("backward dc", "dc"), ("backward dgi", "dgi"), ("backward dgh", "dgh"), ("backward dh_direct", "dh_direct")];
    for (i, (key, buf)) in keys.into_iter().enumerate() {
        let what = format!("{cell:?} backward B={batch} H={h}: {buf}");
        compare(errs, key, &what, (widths[i], &active), Results { got: outs[i].get(), r32: &r32[i], r64: &r64[i] });
    }
}

/// Every forward case of `cell` (`forward`), every backward case (`backward`), or both, on
/// `isa`; the seeds are the same whichever are run. Returns the largest differences from the
/// f32 reference kernel over every output buffer, `(absolute where |reference| ≤ 0.5,
/// relative above)`, for the callers that assert more (bit-identity where no approximation is
/// involved).
fn check_cases<K: Kernels>(isa: K, cell: CellKind, forward: bool, backward: bool) -> (f64, f64) {
    let mut errs = Errors::new();
    let mut seed = 0x5eed_0000 + cell as u64 * 1000;
    for batch in 1..=MAX_BATCH {
        for h in HIDDEN {
            for bias in [true, false] {
                seed += 1;
                if forward {
                    forward_case(isa, &mut errs, cell, (batch, h, bias), seed);
                }
            }
            seed += 1;
            if backward {
                backward_case(isa, &mut errs, cell, (batch, h), seed);
            }
        }
    }
    let name = K::ISA;
    for (buf, w) in &errs {
        println!(
            "{name} {cell:?} {buf}: normalised error vs f64 {:.3} (f32 reference: {:.3}); vs the f32 reference {:.3}",
            w.vs_f64, w.ref_vs_f64, w.vs_f32
        );
        assert!(
            w.vs_f64 <= 1.0 || w.vs_f64 <= 1.25 * w.ref_vs_f64,
            "{name} {cell:?} {buf}: normalised error {:.3} against f64, the f32 reference's {:.3}",
            w.vs_f64,
            w.ref_vs_f64
        );
    }
    errs.values().fold((0.0, 0.0), |(a, r), w| (w.abs_vs_f32.max(a), w.rel_vs_f32.max(r)))
}

/// The forward step of `cell` on one row, `xg` given, the rest fixed; `[gates, extra, c, m]`
/// from `isa` (or the f32 reference with `None`).
fn forward_one_row<K: Kernels>(isa: Option<K>, cell: CellKind, h: usize, xg: &[f32]) -> [Vec<f32>; 4] {
    let gh = cell.gates() * h;
    let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
    let (hg, state) = (vec![0.0; gh], vec![0.5; h]);
    let mut outs = [gh, if gru { h } else { 0 }, if lstm { h } else { 0 }, h].map(|n| vec![9.0; n]);
    let ins: [&[f32]; 5] = [xg, &hg, &[], &state, if lstm { &state[..] } else { &[] }];
    let step = fwd_step(&[true], h, false, ins, outs.each_mut().map(|v| &mut v[..]));
    match isa {
        Some(isa) => isa.cell_forward(cell, step),
        None => <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, step),
    }
    outs
}

/// Saturated and special inputs: ±100 pre-activations give finite outputs equal to the
/// reference's, and a NaN pre-activation gives NaN in its own lane only.
fn check_extremes<K: Kernels>(isa: K, cell: CellKind) {
    let h = 11;
    let gh = cell.gates() * h;
    let xg: Vec<f32> = (0..gh).map(|k| [100.0, -100.0, 0.0, -0.0, 1e30, -1e30][k % 6]).collect();
    let mut xg_nan = xg.clone();
    xg_nan[5] = f32::NAN;
    let name = K::ISA;
    for xg in [xg, xg_nan] {
        let (ours, theirs) = (forward_one_row(Some(isa), cell, h, &xg), forward_one_row(None::<K>, cell, h, &xg));
        for (buf, (o, t)) in ["gates", "extra", "c", "m"].iter().zip(ours.iter().zip(&theirs)) {
            for (k, (&a, &b)) in o.iter().zip(t).enumerate() {
                assert_eq!(a.is_nan(), b.is_nan(), "{name} {cell:?} {buf}[{k}]: {a} vs reference {b}");
                assert!(a.is_nan() || (a - b).abs() <= 1e-6 * b.abs().max(1.0), "{name} {cell:?} {buf}[{k}]: {a} vs reference {b}");
            }
        }
    }
}

/// Units 0, 4, 8 (vector bodies of 4 lanes, and the tail of `H = 9` for 4 and 8 lanes) and 16
/// (the tail of `H = 17` past a vector of 8 or 16) get the same inputs in every gate and state;
/// their outputs must be bit-identical, forward and backward.
fn results_do_not_depend_on_position<K: Kernels>(isa: K, cell: CellKind) {
    let (h, rows) = (17, 2);
    let g = cell.gates();
    let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
    let mut rng = SplitMix64::new(77);
    const SAME: [usize; 3] = [4, 8, 16];
    // In every H-long block (a gate of a row, or a row of a state), units 4, 8, 16 := unit 0.
    let mut vec_with_copies = |n: usize, r: f64| {
        let mut v = rand_vec(&mut rng, n, r);
        for block in v.chunks_exact_mut(h) {
            SAME.iter().for_each(|&u| block[u] = block[0]);
        }
        v
    };
    let active = vec![true; rows];
    let (bh_lstm, bh_gru) = (if lstm { rows * h } else { 0 }, if gru { rows * h } else { 0 });
    let ins = [rows * g * h, rows * g * h, g * h, rows * h, bh_lstm].map(|n| vec_with_copies(n, 25.0));
    let dm = vec_with_copies(rows * h, 1.0);
    let mut dc = vec_with_copies(bh_lstm, 1.0);
    let mut fwd = [rows * g * h, bh_gru, bh_lstm, rows * h].map(|n| vec![0.0; n]);
    isa.cell_forward(cell, fwd_step(&active, h, true, ins.each_ref().map(|v| &v[..]), fwd.each_mut().map(|v| &mut v[..])));
    let mut bwd = [rows * g * h, rows * g * h, rows * h].map(|n| vec![0.0; n]);
    let [dgi, dgh, dh_direct] = &mut bwd;
    let h_prev: &[f32] = if gru { &ins[3] } else { &[] };
    isa.cell_backward(cell, bwd_step(&active, h, [&fwd[0], &fwd[1], &fwd[2], &ins[4], h_prev, &dm], [&mut dc, dgi, dgh, dh_direct]));
    let outs = [("gates", &fwd[0]), ("extra", &fwd[1]), ("c", &fwd[2]), ("m", &fwd[3]), ("dc", &dc)];
    let outs = outs.into_iter().chain(["dgi", "dgh", "dh_direct"].into_iter().zip(&bwd));
    for (buf, v) in outs {
        for (b, block) in v.chunks_exact(h).enumerate() {
            for &u in &SAME {
                assert_eq!(block[u].to_bits(), block[0].to_bits(), "{} {cell:?} {buf}, block {b}: unit {u} differs from unit 0", K::ISA);
            }
        }
    }
}

/// `cargo test --release --lib cell_throughput -- --ignored --nocapture`: GB/s of every cell's
/// forward and backward step on every ISA this CPU has, against the reference kernels, one
/// thread, B = 64, H = 512 (or `CELL_BH=B,H`), bytes counted as `testkit::bench` counts them
/// (each buffer once, in or out).
#[test]
#[ignore = "timing, run by hand"]
fn cell_throughput() {
    let (b, h) = std::env::var("CELL_BH").ok().map_or((64, 512), |s| {
        let v: Vec<usize> = s.split(',').map(|x| x.trim().parse().expect("CELL_BH=B,H")).collect();
        (v[0], v[1])
    });
    for isa in super::Isa::available() {
        let chosen = super::Chosen::detect(isa).expect("available");
        for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh, CellKind::RnnRelu] {
            super::with_kernels!(chosen, |k| throughput(k, cell, b, h));
        }
    }
}

/// Prints the GB/s of `isa`'s forward and backward step of `cell` and the reference's, the
/// best of 15 rounds, the two alternating so that both see the same load.
fn throughput<K: Kernels>(isa: K, cell: CellKind, b: usize, h: usize) {
    let gh = cell.gates() * h;
    let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
    let (bh_lstm, bh_gru) = (if lstm { b * h } else { 0 }, if gru { b * h } else { 0 });
    let v = |n: usize, s: f32| (0..n).map(|i| s * (((i * 7919) % 1000) as f32 / 500.0 - 1.0)).collect::<Vec<f32>>();
    let active = vec![true; b];
    let fwd_ins = [v(b * gh, 2.0), v(b * gh, 1.5), v(gh, 0.1), v(bh_gru, 0.5), v(bh_lstm, 0.5)];
    let mut fwd = [b * gh, bh_gru, bh_lstm, b * h].map(|n| vec![0.0; n]);
    let (dm, mut bwd) = (v(b * h, 1.0), [v(bh_lstm, 0.3), vec![0.0; b * gh], vec![0.0; b * gh], vec![0.0; b * h]]);
    let fwd_bytes = (fwd_ins.iter().chain(&fwd).map(Vec::len).sum::<usize>() * 4) as f64;
    // gates, extra, c, c_prev, dm, dc (in and out), dgi, dgh, and GRU's h_prev and dh_direct.
    let bwd_bytes = ((b * gh + bh_gru + 2 * bh_lstm + b * h + 2 * bh_lstm + 2 * b * gh + 2 * bh_gru) * 4) as f64;
    let reps = (100_000_000 / fwd_bytes as usize).clamp(5, 20_000);
    let mut best = [f64::INFINITY; 4];
    for round in 0..16 {
        for (slot, ours) in [(0, false), (1, true)] {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                let step = fwd_step(&active, h, true, fwd_ins.each_ref().map(|x| &x[..]), fwd.each_mut().map(|x| &mut x[..]));
                match ours {
                    true => isa.cell_forward(cell, step),
                    false => <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, step),
                }
            }
            let f = t.elapsed().as_secs_f64() / reps as f64;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                let ins = [&fwd[0][..], &fwd[1], &fwd[2], &fwd_ins[4], &fwd_ins[3], &dm];
                let step = bwd_step(&active, h, ins, bwd.each_mut().map(|x| &mut x[..]));
                match ours {
                    true => isa.cell_backward(cell, step),
                    false => <Reference as HostKernels<f32>>::cell_backward(&Reference, cell, step),
                }
            }
            // Round 0 warms up.
            if round > 0 {
                best[slot] = best[slot].min(f);
                best[slot + 2] = best[slot + 2].min(t.elapsed().as_secs_f64() / reps as f64);
            }
        }
    }
    let gbps = best.map(|s| s.recip() * 1e-9);
    println!(
        "{} {cell:?} B={b} H={h}: forward {:.1} GB/s (reference {:.2}, {:.1}x); backward {:.1} GB/s (reference {:.2}, {:.1}x)",
        K::ISA,
        fwd_bytes * gbps[1],
        fwd_bytes * gbps[0],
        best[0] / best[1],
        bwd_bytes * gbps[3],
        bwd_bytes * gbps[2],
        best[2] / best[3]
    );
}
