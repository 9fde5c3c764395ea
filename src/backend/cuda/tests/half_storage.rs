//! f16 and bf16 storage on the host emulation (kernels compiled as C++, cuBLAS's GemmEx
//! emulated with f32 accumulation): every cell, against the f64 reference run on the same
//! 16-bit-rounded inputs, weights and incoming gradients, with the derived tolerances of
//! [`crate::testkit::tolerance`] (DEVELOPERS.md, "f16 and bf16 storage").

use super::super::emulation::{gemm_ex, sgemm, Emulation};
use super::super::exec::GemmArgs;
use super::*;
use crate::testkit::tolerance::{error_ratios, half_storage_bounds, sampled_gains, HalfInputs, OUTPUTS};
use crate::{CellKind, Dtype};

impl<T: Element> Problem<T> {
    /// (y, hn, cn, dx, dh0, dc0, dparams) from the emulated driver with 16-bit storage; also
    /// checks that inference gives training's outputs bit for bit and that Accumulate adds
    /// in f32 and rounds once.
    fn run_storage(&self) -> Vec<Vec<T>> {
        // The persistent path is allowed but must not be taken (it is f32 only).
        let emulation = Emulation::default();
        let exec = emulation.exec().with_storage(T::DTYPE).with_persistent(true);
        let (outs, acc) = self.run_on(&exec, &exec);
        // Accumulate onto the gradients just computed: the f32 accumulator starts at g (the
        // caller's 16-bit values, exactly) and adds the same f32 sum s that rounded to g, so
        // the result round(g + s) is within u·|2g| + |s - g| ≤ 2u·|2g| of 2g. Starting from 0
        // instead (Overwrite's behaviour) gives g, far outside.
        for (i, (&a, &g)) in acc.iter().zip(&outs[6]).enumerate() {
            let (a, g) = (a.to_f64(), g.to_f64());
            assert!((a - 2.0 * g).abs() <= 2.0 * T::DTYPE.unit_roundoff() * (2.0 * g).abs(), "Accumulate: dparams[{i}] = {a}, 2·{g}");
        }
        outs
    }

    /// Checks every output against its bound; returns the error / bound ratio of each.
    fn check_bounds(&self) -> std::result::Result<[f64; 7], String> {
        self.within_bounds(&self.run_storage())
    }

    /// Checks `got` (y, hn, cn, dx, dh0, dc0, dparams) against the f64 reference's within the
    /// derived bounds; returns the error / bound ratio of each.
    pub(super) fn within_bounds(&self, got: &[Vec<T>]) -> std::result::Result<[f64; 7], String> {
        let want = self.run_reference();
        let q = self.to_f64();
        let inputs = HalfInputs::of(&q, T::DTYPE.unit_roundoff());
        let got: Vec<Vec<f64>> = got.iter().map(|v| up(v)).collect();
        let (g_f, g_b) = sampled_gains(&inputs);
        let ln = if self.cfg.layer_norm() { " layer norm" } else { "" };
        eprintln!("{:?} {:?}{ln}: sampled gains forward {g_f:.3}, backward {g_b:.3}", T::DTYPE, self.cfg.cell());
        let ratios = error_ratios(&got, &want, &half_storage_bounds(&inputs, &want));
        if let Some(i) = (0..7).find(|&i| ratios[i].is_nan() || ratios[i] > 1.0) {
            return Err(format!("{:?}: {} error / bound = {:.3e}: {:?} {:?}", T::DTYPE, OUTPUTS[i], ratios[i], self.cfg, self.shape));
        }
        Ok(ratios)
    }
}

/// Runs `check` for f16 and bf16; returns their error / bound ratios.
fn check_both(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> [[f64; 7]; 2] {
    let r16 = Problem::<half::f16>::new(cfg, shape, seed, x_range).check_bounds().unwrap_or_else(|e| panic!("{e}"));
    let rbf = Problem::<half::bf16>::new(cfg, shape, seed, x_range).check_bounds().unwrap_or_else(|e| panic!("{e}"));
    [r16, rbf]
}

/// Every cell (LSTM with and without projection, GRU in both forms, tanh and relu RNN), two layers, both
/// directions, with and without bias, rows of many lengths sharing a step, h0 and c0 given,
/// forward (training and inference), backward to every gradient, Accumulate.
#[test]
fn emulated_half_storage_matches_reference() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 24, 33).num_layers(2).bidirectional(true).proj_size(17).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 19, 26).num_layers(2).bidirectional(true).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 30, 41).num_layers(2).bidirectional(true).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 13, 50).num_layers(2).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 20, 27).bidirectional(true).bias(false).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 7, 37).num_layers(3).bias(false).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 30, 41).num_layers(2).bidirectional(true).linear_before_reset(false).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 7, 37).num_layers(2).linear_before_reset(false).gate_clip(1.0).build().unwrap(),
    ];
    let mut worst = [[0.0f64; 7]; 2];
    for (c, cfg) in configs.iter().enumerate() {
        let shape = SeqShape::with_lengths(9, (0..13).map(|b| 1 + (b * 5) % 9).collect()).unwrap();
        let r = check_both(cfg, &shape, 77 + c as u64, 3.0);
        for (w, r) in worst.iter_mut().zip(&r) {
            for o in 0..7 {
                w[o] = w[o].max(r[o]);
            }
        }
    }
    let f = |w: &[f64; 7]| OUTPUTS.iter().zip(w).map(|(n, r)| format!("{n} {r:.4}")).collect::<Vec<_>>().join(", ");
    println!("worst error/bound, f16: {}", f(&worst[0]));
    println!("worst error/bound, bf16: {}", f(&worst[1]));
}

/// Small random problems of every kind (as the f32 property test), B ≤ 8 with the persistent
/// path allowed (it must not be taken: f32 only), inputs up to ±25 (saturating the gates).
#[test]
fn emulated_half_storage_random_problems() {
    let mut rng = SplitMix64::new(2026);
    for case in 0..40u64 {
        let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        let cell = CellKind::ALL[pick(4)];
        let (i, h) = (1 + pick(11), 2 + pick(10));
        let proj = if cell == CellKind::Lstm && pick(2) == 1 { 1 + pick(h - 1) } else { 0 };
        let cfg = RnnConfig::new(cell, i, h)
            .num_layers(1 + pick(3))
            .bidirectional(pick(2) == 1)
            .bias(pick(4) != 0)
            .proj_size(proj)
            .build()
            .unwrap();
        let t = 1 + pick(6);
        let lengths: Vec<usize> = (0..1 + pick(8)).map(|_| 1 + pick(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        check_both(&cfg, &shape, case, 25.0);
    }
}

/// The host emulation's conversions (kernels/common.cuh, run through util.cu's conversion
/// kernels) are the `half` crate's, bit for bit: every 16-bit value to f32, and f32 values
/// around every rounding boundary, ties, subnormals, overflow, infinities and NaN back.
#[test]
fn emulated_conversions_are_the_half_crates() {
    let emulation = Emulation::default();
    let call = emulation.exec();
    fn conv<S: Element, D: Element>(call: &Exec<'_>, src: &[S]) -> Vec<D> {
        let mut dst = nans::<D>(src.len());
        call.copy(0, view_mut(&mut dst), view(src)).unwrap();
        dst
    }
    let all16: Vec<u16> = (0..=u16::MAX).collect();
    let f16s: Vec<half::f16> = all16.iter().map(|&b| half::f16::from_bits(b)).collect();
    let bf16s: Vec<half::bf16> = all16.iter().map(|&b| half::bf16::from_bits(b)).collect();
    let a: Vec<f32> = conv(&call, &f16s);
    let b: Vec<f32> = conv(&call, &bf16s);
    for k in 0..all16.len() {
        assert_eq!(a[k].to_bits(), f16s[k].to_f32().to_bits(), "f16 {:#06x}", all16[k]);
        assert_eq!(b[k].to_bits(), bf16s[k].to_f32().to_bits(), "bf16 {:#06x}", all16[k]);
    }
    // f32 inputs: each 16-bit value, its neighbours in f32 and the midpoints (ties) to the next
    // value and their neighbours; plus random bit patterns.
    let mut xs: Vec<f32> = Vec::new();
    for k in 0..all16.len() {
        for v in [f16s[k].to_f32(), bf16s[k].to_f32()] {
            let next = f32::from_bits(v.to_bits().wrapping_add(1 << 13));
            let mid = ((v as f64 + next as f64) / 2.0) as f32;
            for w in [v, mid, next] {
                xs.extend([w, f32::from_bits(w.to_bits().wrapping_add(1)), f32::from_bits(w.to_bits().wrapping_sub(1))]);
            }
        }
    }
    let mut rng = SplitMix64::new(5);
    xs.extend((0..100_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    xs.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        65504.0,
        65520.0,
        65519.99,
        6.0e-8,
        2.9e-8,
        3.0e-8,
    ]);
    let g: Vec<half::f16> = conv(&call, &xs);
    let h: Vec<half::bf16> = conv(&call, &xs);
    for (k, &x) in xs.iter().enumerate() {
        let (want16, wantbf) = (half::f16::from_f32_const(x), half::bf16::from_f32_const(x));
        if x.is_nan() {
            assert!(g[k].is_nan() && h[k].is_nan(), "NaN {:#x}", x.to_bits());
        } else {
            assert_eq!(g[k].to_bits(), want16.to_bits(), "f16 of {x:e} ({:#x})", x.to_bits());
            assert_eq!(h[k].to_bits(), wantbf.to_bits(), "bf16 of {x:e} ({:#x})", x.to_bits());
        }
    }
}

/// The emulated GemmEx: 16-bit operands read exactly, an f32 sum (the same as the f32 sgemm of
/// the widened operands, bit for bit), a 16-bit C rounded once from alpha·AB + beta·C in f32.
#[test]
fn emulated_gemm_ex_rounds_once() {
    let (m, k, n) = (7usize, 19usize, 5usize);
    let mut rng = SplitMix64::new(3);
    let mut rand = |len: usize| (0..len).map(|_| half::f16::from_f64(rng.uniform(-2.0, 2.0))).collect::<Vec<_>>();
    let (a, b, c0) = (rand(m * k), rand(k * n), rand(m * n));
    let widen = |v: &[half::f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
    let (aw, bw, cw) = (widen(&a), widen(&b), widen(&c0));
    // f32 C: bit-identical to sgemm on the widened operands.
    let mut c32 = cw.clone();
    let mut c32_ref = cw.clone();
    let g = GemmArgs::new(view(&a).mat(m, k), view(&b).mat(k, n), 0.5, view_mut(&mut c32).mat(m, n)).unwrap();
    // SAFETY: the buffers hold the matrices the arguments describe.
    unsafe { gemm_ex(&g, Dtype::F16, Dtype::F32, 1.5, 0.5) };
    let g = GemmArgs::new(view(&aw).mat(m, k), view(&bw).mat(k, n), 0.5, view_mut(&mut c32_ref).mat(m, n)).unwrap();
    // SAFETY: as above.
    unsafe { sgemm(&g, 1.5, 0.5) };
    assert_eq!(c32, c32_ref);
    // 16-bit C: the f32 result rounded once.
    let mut c16 = c0.clone();
    let g = GemmArgs::new(view(&a).mat(m, k), view(&b).mat(k, n), 0.5, view_mut(&mut c16).mat(m, n)).unwrap();
    // SAFETY: as above.
    unsafe { gemm_ex(&g, Dtype::F16, Dtype::F16, 1.5, 0.5) };
    let want: Vec<u16> = c32_ref.iter().map(|&v| half::f16::from_f32_const(v).to_bits()).collect();
    assert_eq!(c16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
}

/// Problems where every value is a small integer (a relu RNN with weights, biases, inputs and
/// incoming gradients in {-1, 0, 1} or {-2..2}, every state, output and gradient ≤ 256 in
/// magnitude, so exact in f16 and bf16, and every f32 sum exact): the 16-bit path must give
/// the reference's numbers exactly, every output and gradient, with no tolerance. This checks
/// the data flow (which buffer feeds which GEMM, the bias, the lengths, both directions, two
/// layers, `dX` summed over directions, the weight-gradient accumulation and its rounding)
/// where the derived bounds are loose.
#[test]
fn emulated_half_storage_exact_on_integer_problems() {
    let cfg = RnnConfig::new(CellKind::RnnRelu, 3, 4).num_layers(2).bidirectional(true).build().unwrap();
    let shape = SeqShape::with_lengths(4, vec![4, 2, 3]).unwrap();
    let layout = ParamLayout::new(&cfg);
    let sub = RnnConfig::new(CellKind::RnnRelu, 3, 4).bidirectional(true).build().unwrap();
    let mut tried = 0;
    let mut checked = 0;
    for seed in 0..400u64 {
        let mut rng = SplitMix64::new(seed);
        let mut ints = |n: usize, lo: i64, hi: i64| -> Vec<f64> {
            (0..n).map(|_| (lo + (rng.next_u64() % (hi - lo + 1) as u64) as i64) as f64).collect()
        };
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        // Weights: half of them 0, the rest ±1.
        let params: Vec<f64> = ints(layout.len(), -2, 2).into_iter().map(|v| if v.abs() == 2.0 { 0.0 } else { v }).collect();
        let (x, h0) = (ints(n(shape.x_shape(&cfg)), -2, 2), ints(n(shape.h_shape(&cfg)), -1, 1));
        let (dy, dhn) = (ints(n(shape.y_shape(&cfg)), -1, 1), ints(n(shape.h_shape(&cfg)), -1, 1));
        // Every value the reference computes, including the first layer's outputs, ≤ 256.
        let rnn = Rnn::new(Reference, &cfg, &params[..]).unwrap();
        let mut rr = Default::default();
        let o = rnn.forward_training(&shape, &x, Some(&h0), None, &mut rr).unwrap();
        let g = rnn.backward(&rr, Some(&dy), Some(&dhn), None).unwrap();
        let first = Rnn::new(Reference, &sub, &params[..ParamLayout::new(&sub).len()]).unwrap();
        let o1 = first.forward(&shape, &x, Some(&h0[..h0.len() / 2]), None).unwrap();
        let want = [&o.y, &o.hn, &g.dx, &g.dh0, g.dparams.as_ref().unwrap(), &o1.y];
        tried += 1;
        // 2·dparams too (the Accumulate check doubles them).
        if want.iter().any(|v| v.iter().any(|a| a.abs() > 128.0)) || want[0].iter().all(|&a| a == 0.0) {
            continue;
        }
        for which in [Dtype::F16, Dtype::BF16] {
            fn run<T: Element>(cfg: &RnnConfig, shape: &SeqShape, v: [&[f64]; 5]) -> Vec<Vec<f64>> {
                let t = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
                let p = Problem::<T> {
                    layout: ParamLayout::new(cfg),
                    stream: None,
                    p: crate::testkit::Problem {
                        cfg: cfg.clone(),
                        shape: shape.clone(),
                        params: t(v[0]),
                        x: t(v[1]),
                        h0: t(v[2]),
                        c0: None,
                        dy: t(v[3]),
                        dhn: t(v[4]),
                        dcn: None,
                    },
                };
                p.run_storage().iter().map(|o| up(o)).collect()
            }
            let inputs = [&params[..], &x, &h0, &dy, &dhn];
            let got = if which == Dtype::F16 { run::<half::f16>(&cfg, &shape, inputs) } else { run::<half::bf16>(&cfg, &shape, inputs) };
            // run_storage's order: y, hn, cn, dx, dh0, dc0, dparams.
            for (name, i, w) in [("y", 0, want[0]), ("hn", 1, want[1]), ("dx", 3, want[2]), ("dh0", 4, want[3]), ("dparams", 6, want[4])] {
                assert_eq!(&got[i], w, "{which:?} {name}, seed {seed}");
            }
        }
        checked += 1;
        if checked == 8 {
            break;
        }
    }
    assert_eq!(checked, 8, "only {checked} of {tried} draws had every value within ±128");
}

/// The cell options with f16 and bf16 storage (the `_opt` and `_clip` entries' 16-bit
/// instantiations, the 16-bit sum of merged outputs and the batch-first transposes), within the
/// same bounds as the plain cells. Those bounds are derived for the plain cells
/// (`testkit::tolerance`); they do not model the options (e.g. the one more rounding of a
/// 16-bit sum of merged outputs), so this checks that the options stay within them.
#[test]
fn emulated_half_storage_with_options() {
    let lstm = || RnnConfig::new(CellKind::Lstm, 19, 26).num_layers(2);
    let configs = [
        lstm().peephole(true).gate_clip(1.0).build().unwrap(),
        lstm().input_forget(true).proj_size(11).direction(crate::Direction::Reverse).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 30, 41).gate_clip(0.7).batch_first(true).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 20, 27).gate_clip(0.7).bidirectional(true).merge(crate::Merge::Sum).build().unwrap(),
        // Recurrent and input dropout: the 16-bit instantiations of variational_dropout.
        lstm().recurrent_dropout(0.3).input_dropout(0.3).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 30, 41).bidirectional(true).recurrent_dropout(0.4).input_dropout(0.2).build().unwrap(),
        // Zoneout: the 16-bit instantiations of zoneout_forward and zoneout_split.
        lstm().zoneout(0.3).zoneout_cell(0.3).proj_size(11).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 30, 41).bidirectional(true).zoneout(0.4).build().unwrap(),
    ];
    for (c, cfg) in configs.iter().enumerate() {
        let shape = SeqShape::with_lengths(9, (0..13).map(|b| 1 + (b * 5) % 9).collect()).unwrap();
        check_both(cfg, &shape, 177 + c as u64, 3.0);
    }
}

/// Layer-normalised stacks (Haste's LayerNormLSTM and LayerNormGRU) with f16 and bf16 storage:
/// LSTM and GRU, one and two layers, with projection and both directions, merge by sum with
/// batch-first, peepholes with the coupled gate and no bias, reverse-only with
/// recurrent and input dropout, zoneout; mixed lengths, three problems each, within the derived
/// bounds, whose gains for layer norm are measured on the problem
/// (`testkit::tolerance::sampled_gains`: above 1, a layer norm amplifying a relative error).
///
/// Those bounds grow with `L·T` and the gains (squared for the backward); on short sequences
/// they stay below the values they bound, and the test checks that they do (a bound above an
/// output's largest value would pass any result): forward for both types, `dx`, `dh0`, `dc0`
/// for f16. The weight gradients' bound, a worst case over `T·B` terms, is above the gradients
/// themselves with layer norm, so they are checked against the f64 reference within a fixed
/// number of unit roundoffs of their largest value instead ([`LN_DPARAMS_UNITS`]): a check of
/// the data flow (a dropped or doubled term, a wrong type), not a derived rounding bound. No
/// gate clip here: a 16-bit rounding that moves a pre-activation across the clip changes a
/// gradient by a jump, not by rounding (the plain cells' clip is in
/// `emulated_half_storage_with_options`).
#[test]
fn emulated_half_storage_with_layer_norm() {
    let ln = |cell| RnnConfig::new(cell, 11, 23).layer_norm(true);
    let configs = [
        (ln(CellKind::Lstm).build().unwrap(), 3),
        (ln(CellKind::Gru).build().unwrap(), 3),
        (ln(CellKind::Lstm).num_layers(2).build().unwrap(), 2),
        (ln(CellKind::Lstm).bidirectional(true).proj_size(7).build().unwrap(), 2),
        (ln(CellKind::Gru).bidirectional(true).merge(crate::Merge::Sum).batch_first(true).build().unwrap(), 3),
        (ln(CellKind::Lstm).peephole(true).input_forget(true).bias(false).build().unwrap(), 3),
        (ln(CellKind::Gru).direction(crate::Direction::Reverse).recurrent_dropout(0.3).input_dropout(0.2).build().unwrap(), 3),
        (RnnConfig::new(CellKind::Lstm, 19, 26).layer_norm(true).zoneout(0.2).zoneout_cell(0.2).build().unwrap(), 2),
    ];
    let mut worst = [[0.0f64; 7]; 2];
    let (mut largest_gain, mut worst_dparams) = (0.0f64, [0.0f64; 2]);
    for (c, (cfg, t)) in configs.iter().enumerate() {
        for seed in 0..3u64 {
            let shape = SeqShape::with_lengths(*t, (0..5).map(|b| 1 + (b * 2) % t).collect()).unwrap();
            let seed = 700 + 10 * c as u64 + seed;
            let [r16, rbf] = check_both(cfg, &shape, seed, 1.0);
            for o in 0..7 {
                worst[0][o] = worst[0][o].max(r16[o]);
                worst[1][o] = worst[1][o].max(rbf[o]);
            }
            for (k, (ty, checked)) in [(Dtype::F16, 6), (Dtype::BF16, 3)].into_iter().enumerate() {
                let (bounds, want, got, gains) =
                    if ty == Dtype::F16 { ln_case::<half::f16>(cfg, &shape, seed) } else { ln_case::<half::bf16>(cfg, &shape, seed) };
                largest_gain = largest_gain.max(gains.0).max(gains.1);
                let maxabs = |v: &[f64]| v.iter().fold(0.0f64, |m, a| m.max(a.abs()));
                for o in (0..checked).filter(|&o| !want[o].is_empty()) {
                    let m = maxabs(&want[o]);
                    assert!(
                        bounds[o] <= 0.5 * m,
                        "{ty:?} {}: the bound {:.3e} is not below half the largest value {m:.3e} ({cfg:?})",
                        OUTPUTS[o],
                        bounds[o]
                    );
                }
                let m = maxabs(&want[6]);
                let err = got[6].iter().zip(&want[6]).fold(0.0f64, |e, (g, w)| e.max((g - w).abs()));
                let tol = LN_DPARAMS_UNITS * ty.unit_roundoff() * m;
                assert!(err <= tol, "{ty:?} dparams: error {err:.3e} above {LN_DPARAMS_UNITS}·u of the largest, {m:.3e} ({cfg:?})");
                worst_dparams[k] = worst_dparams[k].max(err / m);
            }
        }
    }
    // The measured gains are what these bounds rest on; a layer norm's are above 1 on these
    // problems (the plain cells' premise would not hold).
    assert!(largest_gain > 1.0, "largest sampled gain {largest_gain}");
    for (k, (name, w)) in [("f16", worst[0]), ("bf16", worst[1])].into_iter().enumerate() {
        eprintln!("layer norm, {name}: worst error / bound per output {OUTPUTS:?}: {:?}", w.map(|r| format!("{r:.4}")));
        eprintln!("layer norm, {name}: worst dparams error / largest dparams {:.3e}", worst_dparams[k]);
    }
}

/// The layer-normalised weight gradients' check with 16-bit storage: an error within this many
/// unit roundoffs of the largest gradient (see `emulated_half_storage_with_layer_norm`).
/// Observed: at most 2.2 (f16) and 2.1 (bf16); a term of the `T·B` ≤ 15 of a sum dropped
/// or doubled moves it by far more.
const LN_DPARAMS_UNITS: f64 = 8.0;

/// One layer-normalised problem: the bounds, the f64 reference's outputs, the emulated 16-bit
/// outputs (as f64) and the sampled gains.
type LnCase = ([f64; 7], Vec<Vec<f64>>, Vec<Vec<f64>>, (f64, f64));

/// [`LnCase`] of the problem of `cfg`, `shape`, `seed` in `T`.
fn ln_case<T: Element>(cfg: &RnnConfig, shape: &SeqShape, seed: u64) -> LnCase {
    let p = Problem::<T>::new(cfg, shape, seed, 1.0);
    let got: Vec<Vec<f64>> = p.run_storage().iter().map(|v| up(v)).collect();
    let want = p.run_reference();
    let q = p.to_f64();
    let inputs = HalfInputs::of(&q, T::DTYPE.unit_roundoff());
    (half_storage_bounds(&inputs, &want), want, got, sampled_gains(&inputs))
}
