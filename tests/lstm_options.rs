//! The LSTM options (peepholes, gate clip, coupled input-forget gate) and the Elman RNN's gate
//! clip: finite-difference checks of the f64 reference's backward for every option and their
//! combinations (1 and 2 layers, both directions, projection, variable lengths), every CPU ISA
//! of this machine against the reference (forward and backward), and bit-identical CPU results
//! for any thread count.
//!
//! Finite differences as `tests/gradcheck.rs`: the fourth-order central difference, relative
//! error `|a - n| / max(|a|, |n|, 1e-3)` below 1e-6. A clip makes the loss piecewise smooth (a
//! kink where a pre-activation crosses `±clip`), so clipped cells take the step of the relu
//! cell, `h = 1e-5`: a stencil then straddles a kink only if a pre-activation lies within
//! `2e-5` of `±clip`. One still does, now and then (a bias moves every step's pre-activation
//! of its unit): where the central difference of a kinked problem misses, the fourth-order
//! one-sided differences `(-25 L(0) + 48 L(±k) - 36 L(±2k) + 16 L(±3k) - 3 L(±4k)) / ±12k`
//! with `k = 1e-4` are taken too (rounding error about `11·2^-53·|L| / k`, near 1e-10 here), and
//! the best of the three must pass: a kink lies on one side only, and the other side's
//! difference is that of a smooth function. Every clipped problem is also checked to clip
//! something (its outputs differ from the unclipped cell's), so that the clipped path is the
//! one checked.
//!
//! CPU tolerances: those of `tests/cpu.rs` (forward 1e-5, gradients 1e-4).

// `!(e <= worst)` on purpose: a NaN error must count as a failure, not be skipped.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::fd;

use common::parity::{errors, Problem as F32Problem};
use common::{describe, F64Problem, Problem};
use proptest::prelude::*;
use rnn_kernels::{CellKind, Cpu, Isa, Reference, Rnn, RnnConfig, SeqShape};

/// The clip of the finite-difference problems: most pre-activations lie within ±2.
const CLIP: f64 = 0.8;

/// The options of a configuration, for messages.
fn options(cfg: &RnnConfig) -> String {
    format!("options {:?}", cfg.options())
}

/// The same problem without the clip gives other outputs: the clip is active somewhere.
fn assert_clips(p: &Problem) {
    let Some(_) = p.cfg.gate_clip() else { return };
    let plain = p.cfg.to_builder().gate_clip(0.0).build().unwrap();
    let mut q = p.clone();
    q.cfg = plain;
    assert!(p.run_inference(Reference) != q.run_inference(Reference), "nothing clipped: {}", options(&p.cfg));
}

/// Every combination of the LSTM options (7), 1 and 2 layers, both directions, with and
/// without projection; and the RNNs with a clip, 1 and 2 layers, both directions.
fn option_configs() -> Vec<RnnConfig> {
    let mut out = Vec::new();
    for layers in 1..=2 {
        for bidirectional in [false, true] {
            for combo in 1..8u32 {
                for proj in [0, 3] {
                    let (peephole, clip, input_forget) = (combo & 1 != 0, combo & 2 != 0, combo & 4 != 0);
                    let b = RnnConfig::new(CellKind::Lstm, 3, 5)
                        .num_layers(layers)
                        .bidirectional(bidirectional)
                        .proj_size(proj)
                        .peephole(peephole)
                        .input_forget(input_forget)
                        .gate_clip(if clip { CLIP } else { 0.0 });
                    out.push(b.build().unwrap());
                }
            }
            for cell in [CellKind::RnnTanh, CellKind::RnnRelu] {
                out.push(RnnConfig::new(cell, 3, 5).num_layers(layers).bidirectional(bidirectional).gate_clip(CLIP).build().unwrap());
            }
        }
    }
    out
}

fn sweep(shape: &SeqShape, seed: u64) {
    fd::sweep(&option_configs(), shape, |k, cfg| {
        let p = Problem::random(cfg, shape, seed + k as u64, 1.5);
        assert_clips(&p);
        p
    });
}

#[test]
fn option_gradients_match_finite_differences_full_length() {
    sweep(&SeqShape::new(4, 2).unwrap(), 1600);
}

#[test]
fn option_gradients_match_finite_differences_variable_lengths() {
    // Unsorted, with a full-length and a length-1 sequence.
    sweep(&SeqShape::with_lengths(5, vec![3, 5, 1]).unwrap(), 1700);
}

/// input_forget ignores the forget gate's weights, biases and peepholes: their gradients are
/// zero, and changing them changes nothing.
#[test]
fn input_forget_ignores_the_forget_gate() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 4).peephole(true).input_forget(true).bidirectional(true).build().unwrap();
    let shape = SeqShape::with_lengths(4, vec![4, 2]).unwrap();
    let p = Problem::random(&cfg, &shape, 5, 1.5);
    let rnn = Rnn::new(Reference, &p.cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    rnn.forward_training(&p.shape, &p.x, Some(&p.h0), p.c0.as_deref(), &mut reserve).unwrap();
    let g = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), p.dcn.as_deref()).unwrap();
    let dp = g.dparams.unwrap();
    let h = 4;
    let layout = rnn_kernels::ParamLayout::new(&cfg);
    let mut q = p.clone();
    for s in layout.specs() {
        let r = s.range();
        // The forget gate's rows: rows h..2h of the [4H, *] tensors, row 1 of the [3, H] peephole.
        let cols = r.len() / if s.name.starts_with("weight_peephole") { 3 } else { 4 * h };
        let rows = if s.name.starts_with("weight_peephole") { 1..2 } else { h..2 * h };
        for i in rows.start * cols..rows.end * cols {
            assert_eq!(dp[r.start + i], 0.0, "{}[{i}]", s.name);
            q.params[r.start + i] += 1.0;
        }
    }
    assert!(q.run_inference(Reference) == p.run_inference(Reference), "the forget gate's parameters changed the result");
}

/// `nearest_kink` is the distance of the closest pre-activation to a kink: one step of one
/// unit, whose pre-activations are written out here (relu: `|a|`, and `clip - a` under a clip;
/// LSTM: each gate's `clip - |a|`).
#[test]
fn nearest_kink_is_the_distance_of_the_closest_pre_activation() {
    let set = |p: &mut F32Problem, name: &str, v: &[f32]| {
        let layout = rnn_kernels::ParamLayout::new(&p.cfg);
        let r = layout.specs().iter().find(|s| s.name == name).unwrap().range();
        p.params[r].copy_from_slice(v);
    };
    let shape = SeqShape::new(1, 1).unwrap();
    // relu: a = 0.5·2 + 0.25 + 0.5·(-1) + (-0.125) = 0.625.
    for (clip, want) in [(0.0, 0.625), (0.75, 0.125), (2.0, 0.625)] {
        let cfg = RnnConfig::new(CellKind::RnnRelu, 1, 1).gate_clip(clip).build().unwrap();
        let mut p = F32Problem::new(&cfg, &shape, 1, 1.0);
        (p.x[0], p.h0[0]) = (2.0, -1.0);
        for (name, v) in [("weight_ih_l0", 0.5), ("bias_ih_l0", 0.25), ("weight_hh_l0", 0.5), ("bias_hh_l0", -0.125)] {
            set(&mut p, name, &[v]);
        }
        assert_eq!(p.nearest_kink(), want, "relu, clip {clip}");
    }
    // LSTM, clip 1: gates i, f, g, o with a = x·w_ih (h0 and the biases zero, no peepholes).
    let cfg = RnnConfig::new(CellKind::Lstm, 1, 1).gate_clip(1.0).build().unwrap();
    let mut p = F32Problem::new(&cfg, &shape, 1, 1.0);
    (p.x[0], p.h0[0]) = (1.0, 0.0);
    set(&mut p, "weight_ih_l0", &[0.5, -1.375, 3.0, -0.0625]);
    for name in ["bias_ih_l0", "bias_hh_l0"] {
        set(&mut p, name, &[0.0; 4]);
    }
    assert_eq!(p.nearest_kink(), 0.375);
    // Without a clip and without relu there is no kink.
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 4).build().unwrap();
    assert_eq!(F32Problem::new(&cfg, &shape, 1, 25.0).nearest_kink(), f64::INFINITY);
}

/// A problem drawn by `cpu_options_match_reference` whose f64 pre-activation lies 3.9e-8 below
/// a clip of 0.5: scalar, AVX2 and AVX-512 (x86-64) and scalar (AArch64) clamp it, the f64
/// reference does not, and the gradients differ by 1e-2 to 2e-1 where the forward agrees to
/// 1e-7. `nearest_kink` finds it, and the reference's gradients do jump there (moving the clip
/// by 1e-7 below that pre-activation changes them by more than 1e-3), so the property tests
/// draw such a problem again instead of comparing across the kink; the same problem with the
/// clip moved away from that pre-activation is compared as usual.
#[test]
fn a_problem_at_a_clip_kink_is_found_and_one_away_from_it_agrees() {
    let shape = SeqShape::with_lengths(6, vec![1, 1, 4]).unwrap();
    let problem = |clip| {
        let cfg = RnnConfig::new(CellKind::RnnRelu, 6, 13).num_layers(2).bidirectional(true).gate_clip(clip).build().unwrap();
        F32Problem::new(&cfg, &shape, 13963146259749210966, 25.0)
    };
    let at = problem(0.5);
    let d = at.nearest_kink();
    assert!(d < 1e-7, "nearest kink {d:e}");
    let (above, below) = (at.run_reference(), problem(0.5 - 1e-7).run_reference());
    let jump = (3..7).map(|i| rnn_kernels::testkit::case::max_error(&above[i], &below[i])).fold(0.0, f64::max);
    assert!(jump > 1e-3, "the reference's gradients across the kink differ by {jump:e} only");
    let away = problem(0.5 + 1e-3);
    assert!(away.conditioning().is_good_for_f32());
    for isa in Isa::available() {
        for (name, err, tol) in errors(&away.run(Cpu::with_isa(isa, 2).unwrap()), &away.run_reference()) {
            assert!(err <= tol, "{isa}: {name} error {err:.3e} > {tol:e}");
        }
    }
}

/// Random option configurations: LSTM with any combination of the options (at least one),
/// RNN tanh and relu with a clip; sizes 1..20, 1..3 layers, both directions, with and without
/// bias, LSTM projections.
fn option_config() -> impl Strategy<Value = RnnConfig> {
    (0usize..3, 1usize..20, 1usize..20, 1usize..4, any::<bool>(), any::<bool>(), 0usize..6, 1u32..8, 0usize..3).prop_map(
        |(c, i, h, l, bi, bias, p, combo, clip)| {
            let cell = [CellKind::Lstm, CellKind::RnnTanh, CellKind::RnnRelu][c];
            let clip = [0.5, 1.0, 3.0][clip];
            let b = RnnConfig::new(cell, i, h).num_layers(l).bidirectional(bi).bias(bias);
            if cell == CellKind::Lstm {
                let proj = if h > 1 { p.min(h - 1) } else { 0 };
                b.proj_size(proj).peephole(combo & 1 != 0).input_forget(combo & 4 != 0).gate_clip(if combo & 2 != 0 { clip } else { 0.0 })
            } else {
                b.gate_clip(clip)
            }
            .build()
            .unwrap()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(rnn_kernels::testkit::proptest_cases(64)))]

    /// Every ISA of this machine, 2 threads, against the f64 reference, forward and backward.
    #[test]
    fn cpu_options_match_reference(cfg in option_config(), t in 1usize..7, lens in prop::collection::vec(1usize..7, 1..6), seed in any::<u64>(), x_range in prop::sample::select(vec![1.0, 3.0, 25.0])) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = F32Problem::new(&cfg, &shape, seed, x_range);
        // Ill-conditioned at f32 (a pre-activation at a kink, a layer norm amplifying rounding): no
        // parity to check (testkit::conditioning).
        prop_assume!(p.conditioning().is_good_for_f32());
        let want = p.run_reference();
        for isa in Isa::available() {
            let got = p.run(Cpu::with_isa(isa, 2).unwrap());
            for (name, err, tol) in errors(&got, &want) {
                prop_assert!(err <= tol, "{isa}: {name} error {err:.3e} > {tol:e}: {} {}", describe(&cfg, &shape), options(&cfg));
            }
            let inferred = p.run_inference(Cpu::with_isa(isa, 2).unwrap());
            for (i, name) in ["y", "hn", "cn"].iter().enumerate() {
                prop_assert!(inferred[i] == got[i], "{isa}: inference {name} differs from the training forward's");
            }
        }
    }
}

/// Large enough that the GEMMs, the cell steps and the time loop split across threads.
#[test]
fn options_are_bit_identical_for_any_thread_count() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 20, 64)
            .num_layers(2)
            .bidirectional(true)
            .peephole(true)
            .gate_clip(2.0)
            .input_forget(true)
            .build()
            .unwrap(),
        RnnConfig::new(CellKind::Lstm, 32, 48).bidirectional(true).proj_size(20).peephole(true).gate_clip(1.5).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 33, 100).num_layers(2).gate_clip(1.0).build().unwrap(),
    ];
    // 37 rows of 9 steps for each; and 161 rows (the time loop cut into blocks of rows) for the
    // first.
    let cases = configs.iter().map(|c| (c, 9, 37)).chain([(&configs[0], 5, 161)]);
    for (cfg, steps, batch) in cases {
        let shape = SeqShape::with_lengths(steps, (0..batch).map(|b| 1 + (b * 5) % steps).collect()).unwrap();
        let p = F32Problem::new(cfg, &shape, 77, 3.0);
        let want = p.run_reference();
        for isa in Isa::available() {
            let one = p.run(Cpu::with_isa(isa, 1).unwrap());
            for threads in [2, 3] {
                let many = p.run(Cpu::with_isa(isa, threads).unwrap());
                assert!(one == many, "{isa}, {threads} threads differ from 1 thread: {} {}", describe(cfg, &shape), options(cfg));
            }
            for (name, err, tol) in errors(&one, &want) {
                assert!(err <= tol, "{isa}: {name} error {err:.3e}: {} {}", describe(cfg, &shape), options(cfg));
            }
        }
    }
}
