//! The GRU's options: the reset gate before the recurrent matmul (`linear_before_reset(false)`,
//! Cho et al. 2014, ONNX `linear_before_reset = 0`, Keras `reset_after = False`) and gate
//! clipping (`gate_clip`, ONNX `clip`), in both GRU forms.
//!
//! - The f64 reference's backward against finite differences (the machinery of
//!   `tests/gradcheck.rs`: the fourth-order central difference, relative error below 1e-6 with
//!   a floor of 1e-3) for each option and both together, 1 to 3 layers, both directions,
//!   with and without bias, full and variable lengths. Clipping makes the loss piecewise
//!   smooth (as relu), so clipped problems take relu's step, `h = 1e-5`.
//! - A second oracle for the reset-before form, without PyTorch: the equations written out as
//!   an f64 loop here, against the reference's forward.
//! - PyTorch as a third oracle: case files of `tests/fixtures/gru_options/`, forward and
//!   gradients.
//! - Every CPU ISA of this machine against the f64 reference (the property test of
//!   `tests/cpu.rs`, its tolerances), forward and backward, for each option; and bit-identical
//!   results for any thread count.

// `!(e <= worst)` on purpose: a NaN error must count as a failure, not be skipped.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::fd::{self, central_difference, rel_err, H};

use common::parity::{errors, Problem as F32Problem, GRAD_TOL};
use common::{describe, F64Problem, Problem};
use proptest::prelude::*;
use rnn_kernels::testkit::case::{run_case, Case};
use rnn_kernels::{CellKind, Cpu, Params, Reference, Rnn, RnnConfig, SeqShape};

/// The GRU configurations of the sweep with `clip` (0: none) and the reset gate before
/// (`!lbr`) or after the matmul.
fn gru_configs(lbr: bool, clip: f64) -> Vec<RnnConfig> {
    let mut out = Vec::new();
    for layers in 1..=3 {
        for bidirectional in [false, true] {
            for bias in [true, false] {
                let b = RnnConfig::new(CellKind::Gru, 3, 5).num_layers(layers).bidirectional(bidirectional).bias(bias);
                out.push(b.linear_before_reset(lbr).gate_clip(clip).build().unwrap());
            }
        }
    }
    out
}

/// Every variant: reset before, clip (after), both.
const VARIANTS: [(bool, f64); 3] = [(false, 0.0), (true, 0.9), (false, 0.9)];

fn sweep(shape: &SeqShape, seed: u64) {
    for (lbr, clip) in VARIANTS {
        fd::sweep(&gru_configs(lbr, clip), shape, |k, cfg| Problem::random(cfg, shape, seed + k as u64, 1.5));
    }
}

#[test]
fn gradients_match_finite_differences_full_length() {
    sweep(&SeqShape::new(4, 3).unwrap(), 1000);
}

#[test]
fn gradients_match_finite_differences_variable_lengths() {
    sweep(&SeqShape::with_lengths(5, vec![5, 2, 4]).unwrap(), 2000);
}

/// The clipped problems of the sweep really clip: with the same values and no threshold the
/// outputs differ (and the gradient check above then covers the clamped pre-activations).
#[test]
fn the_clipped_problems_clip() {
    let shape = SeqShape::new(4, 3).unwrap();
    for lbr in [true, false] {
        let cfg = RnnConfig::new(CellKind::Gru, 3, 5).linear_before_reset(lbr).gate_clip(0.9).build().unwrap();
        let p = Problem::random(&cfg, &shape, 1000, 1.5);
        let q = Problem { cfg: RnnConfig::new(CellKind::Gru, 3, 5).linear_before_reset(lbr).build().unwrap(), ..p.clone() };
        assert_ne!(p.run_inference(Reference)[0], q.run_inference(Reference)[0]);
    }
}

/// A wrong gradient is caught: the reset-before form's backward run on the PyTorch form's
/// forward (the same parameters, other maths) fails the check.
#[test]
fn gradcheck_detects_the_other_form() {
    let shape = SeqShape::new(3, 2).unwrap();
    let cho = RnnConfig::new(CellKind::Gru, 3, 5).linear_before_reset(false).build().unwrap();
    let torch = RnnConfig::new(CellKind::Gru, 3, 5).build().unwrap();
    let p = Problem::random(&cho, &shape, 7, 1.5);
    let rnn = Rnn::new(Reference, &cho, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    rnn.forward_training(&p.shape, &p.x, Some(&p.h0), None, &mut reserve).unwrap();
    let g = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), None).unwrap();
    // The loss of the PyTorch form at the same values: its gradient is not the reset-before one.
    let q = Problem { cfg: torch, ..p.clone() };
    let i = 0;
    let mut at = |d: f64| {
        let mut q = q.clone();
        q.x[i] += d;
        q.loss()
    };
    let n = central_difference(H, &mut at);
    assert!(rel_err(g.dx[i], n) > 1e-3, "the two forms' gradients agree: {} vs {n}", g.dx[i]);
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// The reset-before GRU written out: one layer, forward direction, `y` and `hn`, with
/// `clip` (0: none) applied to each gate's whole pre-activation.
fn cho_gru(p: &Problem, clip: f64) -> (Vec<f64>, Vec<f64>) {
    let (i_n, hn) = (p.cfg.input_size(), p.cfg.hidden_size());
    let (t_len, b_len) = (p.shape.steps(), p.shape.batch());
    let params = Params::from_vec(&p.cfg, p.params.clone()).unwrap();
    let w_ih = params.get("weight_ih_l0").unwrap();
    let w_hh = params.get("weight_hh_l0").unwrap();
    let b_ih = params.get("bias_ih_l0").unwrap();
    let b_hh = params.get("bias_hh_l0").unwrap();
    let clamp = |v: f64| if clip > 0.0 { v.clamp(-clip, clip) } else { v };
    let dot = |w: &[f64], row: usize, v: &[f64]| (0..v.len()).map(|k| w[row * v.len() + k] * v[k]).sum::<f64>();
    let mut y = vec![0.0; t_len * b_len * hn];
    let mut h_out = vec![0.0; b_len * hn];
    for b in 0..b_len {
        let mut h: Vec<f64> = p.h0[b * hn..(b + 1) * hn].to_vec();
        for t in 0..p.shape.lengths().map_or(t_len, |l| l[b]) {
            let x = &p.x[(t * b_len + b) * i_n..(t * b_len + b + 1) * i_n];
            let gate = |g: usize, j: usize, hv: &[f64]| {
                let row = g * hn + j;
                dot(w_ih, row, x) + b_ih[row] + dot(w_hh, row, hv) + b_hh[row]
            };
            let r: Vec<f64> = (0..hn).map(|j| sigmoid(clamp(gate(0, j, &h)))).collect();
            let z: Vec<f64> = (0..hn).map(|j| sigmoid(clamp(gate(1, j, &h)))).collect();
            let rh: Vec<f64> = (0..hn).map(|j| r[j] * h[j]).collect();
            let n: Vec<f64> = (0..hn).map(|j| clamp(gate(2, j, &rh)).tanh()).collect();
            h = (0..hn).map(|j| (1.0 - z[j]) * n[j] + z[j] * h[j]).collect();
            y[(t * b_len + b) * hn..(t * b_len + b + 1) * hn].copy_from_slice(&h);
        }
        h_out[b * hn..(b + 1) * hn].copy_from_slice(&h);
    }
    (y, h_out)
}

#[test]
fn reference_matches_the_equations_written_out() {
    let shape = SeqShape::with_lengths(6, vec![6, 3, 1, 5]).unwrap();
    for clip in [0.0, 0.7] {
        let cfg = RnnConfig::new(CellKind::Gru, 4, 7).linear_before_reset(false).gate_clip(clip).build().unwrap();
        let p = Problem::random(&cfg, &shape, 31, 1.5);
        let got = p.run_inference(Reference);
        let (y, hn) = cho_gru(&p, clip);
        for (name, a, b) in [("y", &got[0], &y), ("hn", &got[1], &hn)] {
            let err = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err <= 1e-13, "clip {clip}: {name} differs by {err:e}");
        }
        // And the written-out PyTorch form is not what it computes.
        let torch = RnnConfig::new(CellKind::Gru, 4, 7).gate_clip(clip).build().unwrap();
        assert_ne!(Problem { cfg: torch, ..p.clone() }.run_inference(Reference)[0], got[0]);
    }
}

/// The PyTorch-built case files of `tests/fixtures/gru_options/` (written by
/// `tests/fixtures/make_gru_options_cases.py`: its own step loop over `torch.nn.GRU`'s
/// parameters, autograd for the gradients), in the reference (f64, 1e-9, as
/// `tests/pytorch_parity.rs`) and on every CPU ISA (1e-4, as `tests/cpu.rs`). Each file's
/// option matters: without it the reference misses the file.
#[test]
fn pytorch_cases_of_the_gru_options() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gru_options");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 4, "the GRU options' case files are missing");
    let mut failures = Vec::new();
    for f in &files {
        let case = Case::<f64>::load(f).unwrap();
        assert!(case.config.gate_clip().is_some() || !case.config.linear_before_reset(), "{}: no option", f.display());
        let report = run_case(&Reference, &case).unwrap();
        if !report.passes(1e-9) {
            failures.push(format!("reference {}: {:?}", f.display(), report.worst()));
        }
        // Without its options the same values miss the file.
        let plain = RnnConfig::new(CellKind::Gru, case.config.input_size(), case.config.hidden_size())
            .num_layers(case.config.num_layers())
            .bidirectional(case.config.bidirectional())
            .build()
            .unwrap();
        let params = Params::from_vec(&plain, case.params.as_slice().to_vec()).unwrap();
        let other = Case { config: plain, params, ..case.clone() };
        assert!(!run_case(&Reference, &other).unwrap().passes(1e-3), "{}: its options change nothing", f.display());
        let case32 = Case::<f32>::load(f).unwrap();
        for isa in rnn_kernels::testkit::isas() {
            let report = run_case(&Cpu::with_isa(isa, 2).unwrap(), &case32).unwrap();
            if !report.passes(GRAD_TOL) {
                failures.push(format!("{isa} {}: {:?}", f.display(), report.worst()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The GRU configurations of the property test: sizes 1..20, 1..3 layers, both directions,
/// with and without bias, each option.
fn gru_config() -> impl Strategy<Value = RnnConfig> {
    (0usize..3, 1usize..20, 1usize..20, 1usize..4, any::<bool>(), any::<bool>()).prop_map(|(v, i, h, l, bi, bias)| {
        let (lbr, clip) = VARIANTS[v];
        RnnConfig::new(CellKind::Gru, i, h)
            .num_layers(l)
            .bidirectional(bi)
            .bias(bias)
            .linear_before_reset(lbr)
            .gate_clip(clip)
            .build()
            .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(rnn_kernels::testkit::proptest_cases(48)))]

    /// Every ISA of this machine (or the one RNN_KERNELS_ISA forces: `testkit::isas`), 2 threads, against the f64 reference (as `tests/cpu.rs`).
    #[test]
    fn cpu_matches_reference(cfg in gru_config(), t in 1usize..7, lens in prop::collection::vec(1usize..7, 1..6), seed in any::<u64>()) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = F32Problem::new(&cfg, &shape, seed, 25.0);
        // Ill-conditioned at f32 (a pre-activation at a kink, a layer norm amplifying rounding): no
        // parity to check (testkit::conditioning).
        prop_assume!(p.conditioning().is_good_for_f32());
        let want = p.run_reference();
        for isa in rnn_kernels::testkit::isas() {
            let got = p.run(Cpu::with_isa(isa, 2).unwrap());
            for (name, err, tol) in errors(&got, &want) {
                prop_assert!(err <= tol, "{isa}: {name} error {err:.3e} > {tol:e}: {} {:?}", describe(&cfg, &shape), cfg.options());
            }
        }
    }
}

/// Bit-identical results for 1, 2 and 3 threads, for each option: 37 rows (the GEMMs split
/// across threads) and 200 rows (the time loops cut into blocks of rows), and inference equal
/// to the training forward.
#[test]
fn results_are_bit_identical_for_any_thread_count() {
    for (lbr, clip) in VARIANTS {
        for (hidden, batch, steps) in [(130, 37, 9), (24, 200, 5)] {
            let cfg =
                RnnConfig::new(CellKind::Gru, 40, hidden).bidirectional(true).linear_before_reset(lbr).gate_clip(clip).build().unwrap();
            let shape = SeqShape::with_lengths(steps, (0..batch).map(|b| 1 + (b * 5) % steps).collect()).unwrap();
            let p = F32Problem::new(&cfg, &shape, 77, 3.0);
            let want = p.run_reference();
            for isa in rnn_kernels::testkit::isas() {
                let one = p.run(Cpu::with_isa(isa, 1).unwrap());
                let ctx = format!("{isa} {}: {:?}", describe(&cfg, &shape), cfg.options());
                for threads in [2, 3] {
                    assert!(one == p.run(Cpu::with_isa(isa, threads).unwrap()), "{ctx}: {threads} threads differ from 1");
                    let inf = p.run_inference(Cpu::with_isa(isa, threads).unwrap());
                    assert!(inf[..2] == one[..2], "{ctx}: inference on {threads} threads differs from the training forward");
                }
                for (name, err, tol) in errors(&one, &want) {
                    assert!(err <= tol, "{ctx}: {name} error {err:.3e}");
                }
            }
        }
    }
}
