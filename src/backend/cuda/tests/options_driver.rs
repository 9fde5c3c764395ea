//! The driver with the cell options (peepholes, gate clip, coupled input-forget; reverse-only
//! stacks, bidirectional outputs merged by sum; batch-first `x`, `y`; dropout between layers)
//! on the host emulation
//! against the f64 reference, and the persistent kernels declining the cell options.

use super::super::driver::{backward, forward, BackwardViews, CudaReserve, ForwardViews, SavedViews};
use super::super::emulation::Emulation;
use super::{nans, up, view, view_mut, Problem, WithPaths};
use crate::backend::GradMode;
use crate::error::Error;
use crate::testkit::case::max_error;
use crate::{CellKind, Direction, Merge, RnnConfig, SeqShape};
use proptest::prelude::*;

impl Problem<f32> {
    /// The emulated driver with the options (persistent kernels allowed, which the options
    /// decline) against the reference: outputs at 1e-5, gradients at 1e-4, Accumulate twice
    /// the gradients, inference the training forward's bits (`run_on`).
    pub(super) fn check_with_options(&self) -> std::result::Result<(), String> {
        self.check_with_options_chunked(0)
    }

    /// [`check_with_options`](Self::check_with_options) with the layer wavefront's chunk forced
    /// to `k` steps (0: the automatic one).
    pub(super) fn check_with_options_chunked(&self, k: usize) -> std::result::Result<(), String> {
        let want = self.run_reference();
        let want_inference = self.to_f64().run_inference(crate::backend::Reference);
        let emulation = Emulation::default();
        for persistent in [false, true] {
            let exec = emulation.exec().with_persistent(persistent).with_wavefront_chunk(k);
            let (got, acc) = self.run_on(&exec, &exec);
            // Inference (which differs from training with the regularisers: zoneout's expectation).
            let inferred = self.forward_on(&exec, None);
            for (i, name) in ["y", "hn", "cn"].iter().enumerate() {
                let err = max_error(&up(&inferred[i]), &want_inference[i]);
                if err > 1e-5 {
                    return Err(format!(
                        "persistent={persistent}: inference {name} error {err:.3e} > 1e-5: {:?} {:?}",
                        self.cfg, self.shape
                    ));
                }
            }
            for (i, name) in ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"].iter().enumerate() {
                let err = max_error(&up(&got[i]), &want[i]);
                let tol = if i < 3 { 1e-5 } else { 1e-4 };
                if err > tol {
                    return Err(format!("persistent={persistent}: {name} error {err:.3e} > {tol:e}: {:?} {:?}", self.cfg, self.shape));
                }
            }
            let twice: Vec<f32> = got[6].iter().map(|g| 2.0 * g).collect();
            if max_error(&acc, &twice) > 1e-6 {
                return Err(format!("Accumulate: {:?}", self.cfg));
            }
        }
        Ok(())
    }
}

/// A configuration with options: LSTM peepholes, input_forget (with or without projection),
/// the GRU with the reset gate before the recurrent matmul, the gate clip for every cell (0.5 clips most gates, 2 some, 0 none); forward, reverse-only
/// or bidirectional stacks, the last merged by concatenation or by sum; time-major or
/// batch-first; dropout between layers (0, 0.3, 0.7); recurrent and input dropout; zoneout of
/// `h` (and of the LSTM's `c`).
fn option_config() -> impl Strategy<Value = RnnConfig> {
    (
        0usize..4,
        1usize..9,
        1usize..9,
        1usize..4,
        0usize..4,
        any::<bool>(),
        0usize..4,
        (any::<bool>(), 0usize..3, any::<bool>(), any::<bool>(), 0usize..3, 0usize..16),
    )
        .prop_map(|(c, i, h, l, dir, bias, p, (peephole, clip, input_forget, batch_first, dropout, var))| {
            let cell = CellKind::ALL[c];
            let lstm = cell == CellKind::Lstm;
            let proj = if lstm && h > 1 { p.min(h - 1) } else { 0 };
            let (direction, merge) = [
                (Direction::Forward, Merge::Concat),
                (Direction::Reverse, Merge::Concat),
                (Direction::Bidirectional, Merge::Concat),
                (Direction::Bidirectional, Merge::Sum),
            ][dir];
            let b = RnnConfig::new(cell, i, h).num_layers(l).direction(direction).merge(merge).batch_first(batch_first);
            let b = b.bias(bias).proj_size(proj).gate_clip([0.0, 0.5, 2.0][clip]).dropout([0.0, 0.3, 0.7][dropout]);
            let b = if lstm { b.peephole(peephole).input_forget(input_forget) } else { b };
            // The GRU: with the reset gate before the recurrent matmul when `peephole` is drawn.
            let b = if cell == CellKind::Gru { b.linear_before_reset(!peephole) } else { b };
            // Recurrent (not with Cho's GRU) and input dropout.
            let cho = cell == CellKind::Gru && peephole;
            let b = b.recurrent_dropout(if var & 1 == 1 && !cho { 0.3 } else { 0.0 }).input_dropout(if var & 2 == 2 { 0.4 } else { 0.0 });
            // Zoneout of h, and of the LSTM's c.
            let b = b.zoneout(if var & 4 == 4 { 0.3 } else { 0.0 });
            let b = if lstm { b.zoneout_cell(if var & 8 == 8 { 0.4 } else { 0.0 }) } else { b };
            b.build().unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every cell with its options on the emulated driver against the reference: layers,
    /// directions, bias, projection, variable lengths, inputs up to ±5.
    #[test]
    fn emulated_driver_with_options_matches_reference(cfg in option_config(), t in 1usize..6, lens in prop::collection::vec(1usize..6, 1..5), seed in any::<u64>()) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = Problem::<f32>::new(&cfg, &shape, seed, 5.0);
        // Ill-conditioned at f32 (a pre-activation at a kink, a layer norm amplifying rounding): no
        // parity to check (testkit::conditioning).
        prop_assume!(p.conditioning().is_good_for_f32());
        let r = p.check_with_options();
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// Each option on its own, on sizes where the GEMMs are not tiny (two layers: for a forward
/// stack the layer wavefront runs too); reverse-only and merge by sum with every cell, the GRU
/// and RNN ones on the persistent kernels too (batch 6 ≤ 8; `check_with_options` runs with them
/// allowed, and on the emulation they take every layer they can).
#[test]
fn emulated_driver_each_option_matches_reference() {
    let lstm = || RnnConfig::new(CellKind::Lstm, 11, 23).num_layers(2);
    let reverse = |cell| RnnConfig::new(cell, 11, 23).num_layers(2).direction(Direction::Reverse).build().unwrap();
    let sum = |cell| RnnConfig::new(cell, 11, 23).num_layers(2).bidirectional(true).merge(Merge::Sum).build().unwrap();
    let configs = [
        reverse(CellKind::Lstm),
        reverse(CellKind::Gru),
        reverse(CellKind::RnnTanh),
        sum(CellKind::Lstm),
        sum(CellKind::Gru),
        sum(CellKind::RnnRelu),
        lstm().direction(Direction::Reverse).proj_size(7).peephole(true).gate_clip(1.0).build().unwrap(),
        lstm().bidirectional(true).merge(Merge::Sum).proj_size(7).input_forget(true).build().unwrap(),
        lstm().batch_first(true).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 11, 23).num_layers(2).bidirectional(true).batch_first(true).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 11, 23).direction(Direction::Reverse).batch_first(true).build().unwrap(),
        lstm().peephole(true).build().unwrap(),
        lstm().gate_clip(0.7).build().unwrap(),
        lstm().input_forget(true).build().unwrap(),
        lstm().peephole(true).gate_clip(1.0).input_forget(true).bidirectional(true).proj_size(9).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 11, 23).num_layers(2).gate_clip(0.7).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 11, 23).num_layers(2).gate_clip(0.7).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 11, 23).num_layers(2).gate_clip(0.7).build().unwrap(),
    ];
    for cfg in &configs {
        let shape = SeqShape::with_lengths(8, (0..6).map(|b| 8 - b).collect()).unwrap();
        Problem::<f32>::new(cfg, &shape, 41, 3.0).check_with_options().unwrap();
    }
}

/// Recurrent and input (variational) dropout on the emulated driver against the reference (the
/// same masks): every cell, projection, reverse-only, bidirectional (concatenated and summed),
/// batch-first, variable lengths, with dropout between layers, on the layer wavefront (chunks
/// of 3 and 2 steps) and layer by layer, and required persistent kernels naming the option.
#[test]
fn emulated_variational_dropout_matches_reference() {
    let base = |cell| RnnConfig::new(cell, 11, 23).num_layers(2);
    let configs = [
        base(CellKind::Lstm).recurrent_dropout(0.3).build().unwrap(),
        base(CellKind::Lstm).input_dropout(0.4).build().unwrap(),
        base(CellKind::Lstm).proj_size(7).recurrent_dropout(0.3).input_dropout(0.3).dropout(0.3).build().unwrap(),
        base(CellKind::Gru).bidirectional(true).recurrent_dropout(0.5).input_dropout(0.2).build().unwrap(),
        base(CellKind::Gru).linear_before_reset(false).input_dropout(0.3).build().unwrap(),
        base(CellKind::RnnTanh).direction(Direction::Reverse).recurrent_dropout(0.3).input_dropout(0.3).build().unwrap(),
        base(CellKind::RnnRelu).bidirectional(true).merge(Merge::Sum).recurrent_dropout(0.2).input_dropout(0.3).build().unwrap(),
        base(CellKind::Lstm).batch_first(true).recurrent_dropout(0.3).input_dropout(0.3).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 11, 23).num_layers(3).dropout(0.3).recurrent_dropout(0.3).input_dropout(0.3).build().unwrap(),
    ];
    for cfg in &configs {
        let shape = SeqShape::with_lengths(8, (0..6).map(|b| 8 - b).collect()).unwrap();
        for k in [0, 3, 2] {
            Problem::<f32>::new(cfg, &shape, 43, 3.0).check_with_options_chunked(k).unwrap_or_else(|e| panic!("chunk {k}: {e}"));
        }
        // Without the masks applied the results differ (the masks are used).
        let mut plain = Problem::<f32>::new(cfg, &shape, 43, 3.0);
        plain.p.cfg = cfg.to_builder().recurrent_dropout(0.0).input_dropout(0.0).build().unwrap();
        let want = Problem::<f32>::new(cfg, &shape, 43, 3.0).run_reference();
        assert!(max_error(&plain.run_reference()[0], &want[0]) > 1e-3, "{cfg:?}: the masks changed nothing");
    }
    // The persistent kernels, required, name the option.
    let cfg = RnnConfig::new(CellKind::Gru, 3, 5).recurrent_dropout(0.3).build().unwrap();
    let shape = SeqShape::new(2, 2).unwrap();
    let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0);
    let emulation = Emulation::default();
    let required = emulation.exec().with_persistent(true).with_persistent_required(true);
    let mut reserve = CudaReserve::default();
    reserve.recurrent_dropout = crate::backend::host::variational_dropout::VariationalDropout::recurrent(&cfg, Some(&p.masks())).unwrap();
    let mut y = nans::<f32>(p.dy.len());
    let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
    let e = forward(&required, p.weights(), &shape, io, Some(&mut reserve)).unwrap_err();
    assert!(matches!(&e, Error::Unsupported { option, .. } if option == "recurrent_dropout"), "{e:?}");
}

/// Zoneout of `h` and of the LSTM's `c` on the emulated driver against the reference (the same
/// masks in training, the expectation in inference): every cell, projection, peepholes, layer
/// norm, Cho's GRU, reverse-only, bidirectional (concatenated and summed), batch-first, variable
/// lengths, with dropout between layers and recurrent and input dropout, on the layer wavefront
/// (chunks of 3 and 2 steps) and layer by layer; the masks change the results; required
/// persistent kernels name the option.
#[test]
fn emulated_zoneout_matches_reference() {
    let base = |cell| RnnConfig::new(cell, 11, 23).num_layers(2);
    let configs = [
        base(CellKind::Lstm).zoneout(0.3).build().unwrap(),
        base(CellKind::Lstm).zoneout_cell(0.4).build().unwrap(),
        base(CellKind::Lstm).zoneout(0.2).zoneout_cell(0.5).peephole(true).build().unwrap(),
        base(CellKind::Lstm).proj_size(7).zoneout(0.3).zoneout_cell(0.3).dropout(0.3).build().unwrap(),
        base(CellKind::Lstm).layer_norm(true).zoneout(0.3).zoneout_cell(0.3).build().unwrap(),
        base(CellKind::Gru).bidirectional(true).zoneout(0.5).build().unwrap(),
        base(CellKind::Gru).linear_before_reset(false).zoneout(0.3).input_dropout(0.2).build().unwrap(),
        base(CellKind::Gru).layer_norm(true).zoneout(0.3).build().unwrap(),
        base(CellKind::RnnTanh).direction(Direction::Reverse).zoneout(0.3).build().unwrap(),
        base(CellKind::RnnRelu).bidirectional(true).merge(Merge::Sum).zoneout(0.2).recurrent_dropout(0.3).build().unwrap(),
        base(CellKind::Lstm).batch_first(true).zoneout(0.3).zoneout_cell(0.2).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 11, 23)
            .num_layers(3)
            .dropout(0.3)
            .recurrent_dropout(0.3)
            .input_dropout(0.3)
            .zoneout(0.2)
            .zoneout_cell(0.2)
            .build()
            .unwrap(),
    ];
    for cfg in &configs {
        let shape = SeqShape::with_lengths(8, (0..6).map(|b| 8 - b).collect()).unwrap();
        for k in [0, 3, 2] {
            Problem::<f32>::new(cfg, &shape, 47, 3.0).check_with_options_chunked(k).unwrap_or_else(|e| panic!("chunk {k}: {e}"));
        }
        // Without zoneout the results differ, in training and in inference.
        let mut plain = Problem::<f32>::new(cfg, &shape, 47, 3.0);
        plain.p.cfg = cfg.to_builder().zoneout(0.0).zoneout_cell(0.0).build().unwrap();
        let p = Problem::<f32>::new(cfg, &shape, 47, 3.0);
        let (want, want_inference) = (p.run_reference(), p.to_f64().run_inference(crate::backend::Reference));
        let plain_inference = plain.to_f64().run_inference(crate::backend::Reference);
        let idx = if cfg.zoneout().is_some() { 0 } else { 2 };
        assert!(max_error(&plain.run_reference()[idx], &want[idx]) > 1e-3, "{cfg:?}: the masks changed nothing");
        assert!(max_error(&plain_inference[idx], &want_inference[idx]) > 1e-3, "{cfg:?}: the expectation changed nothing");
    }
    // The persistent kernels, required, name the option (forward: inference and training).
    for (option, cfg) in [
        ("zoneout", RnnConfig::new(CellKind::Gru, 3, 5).zoneout(0.3).build().unwrap()),
        ("zoneout_cell", RnnConfig::new(CellKind::Lstm, 3, 5).zoneout_cell(0.3).build().unwrap()),
    ] {
        let shape = SeqShape::new(2, 2).unwrap();
        let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0);
        let emulation = Emulation::default();
        let required = emulation.exec().with_persistent(true).with_persistent_required(true);
        let named = |e: Error| matches!(&e, Error::Unsupported { option: o, .. } if o == option);
        let mut y = nans::<f32>(p.dy.len());
        let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
        assert!(named(forward(&required, p.weights(), &shape, io, None).unwrap_err()), "{option}: inference");
        let mut reserve = CudaReserve::default();
        reserve.zoneout = crate::backend::host::zoneout::Zoneout::for_pass(&cfg, &shape, true, Some(&p.masks())).unwrap();
        let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
        assert!(named(forward(&required, p.weights(), &shape, io, Some(&mut reserve)).unwrap_err()), "{option}: training");
        let mut reserve = CudaReserve::default();
        p.forward_on(&emulation.exec(), Some(&mut reserve));
        let mut dx = nans::<f32>(p.x.len());
        let g = BackwardViews { dx: Some(view_mut(&mut dx)), ..p.incoming(GradMode::Overwrite) };
        assert!(named(backward(&required, p.weights(), &shape, &SavedViews::new(&reserve), g).unwrap_err()), "{option}: backward");
    }
}

/// Dropout between layers inside the layer wavefront against the reference: chunks of 3 steps
/// (not dividing T = 8) and of 2, a 3-layer forward stack of every cell (LSTM with projection
/// too), variable lengths; at the tolerances of `check_with_options` (the persistent kernels,
/// where they take the layers, keep the layer-by-layer order). `wavefront.rs` has the same runs
/// bit for bit against the layer-by-layer order.
#[test]
fn emulated_wavefront_with_dropout_matches_reference() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 11, 23).num_layers(3).dropout(0.3).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 11, 23).num_layers(3).proj_size(7).dropout(0.5).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 11, 23).num_layers(3).dropout(0.3).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 11, 23).num_layers(3).dropout(0.7).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 11, 23).num_layers(2).dropout(0.3).build().unwrap(),
    ];
    for cfg in &configs {
        let shape = SeqShape::with_lengths(8, (0..6).map(|b| 8 - b).collect()).unwrap();
        for k in [3, 2] {
            Problem::<f32>::new(cfg, &shape, 43, 3.0).check_with_options_chunked(k).unwrap();
        }
    }
}

/// The persistent kernels decline every option: required, forward and backward fail with
/// `Error::Unsupported` naming it (not a silent fallback, not a wrong result).
#[test]
fn emulated_persistent_required_names_the_option() {
    let cases = [
        ("peephole", RnnConfig::new(CellKind::Lstm, 3, 5).peephole(true).build().unwrap()),
        ("gate_clip", RnnConfig::new(CellKind::Gru, 3, 5).gate_clip(1.0).build().unwrap()),
        ("gate_clip", RnnConfig::new(CellKind::RnnTanh, 3, 5).gate_clip(1.0).build().unwrap()),
        ("input_forget", RnnConfig::new(CellKind::Lstm, 3, 5).input_forget(true).build().unwrap()),
        ("linear_before_reset=false", RnnConfig::new(CellKind::Gru, 3, 5).linear_before_reset(false).build().unwrap()),
    ];
    for (option, cfg) in cases {
        let shape = SeqShape::new(2, 2).unwrap();
        let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0);
        let emulation = Emulation::default();
        let required = emulation.exec().with_persistent(true).with_persistent_required(true);
        let named = |e: Error| matches!(&e, Error::Unsupported { option: o, .. } if o == option) && e.to_string().contains("persistent");
        let mut y = nans::<f32>(p.dy.len());
        let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
        let e = forward(&required, p.weights(), &shape, io, None).unwrap_err();
        assert!(named(e), "{option}: forward");
        let mut reserve = CudaReserve::default();
        p.forward_on(&emulation.exec(), Some(&mut reserve));
        let mut dx = nans::<f32>(p.x.len());
        let g = BackwardViews { dx: Some(view_mut(&mut dx)), ..p.incoming(GradMode::Overwrite) };
        let e = backward(&required, p.weights(), &shape, &SavedViews::new(&reserve), g).unwrap_err();
        assert!(named(e), "{option}: backward");
    }
}

/// The plan's option check takes every regulariser: dropout between layers, recurrent and input
/// dropout, zoneout of `h` and `c`.
#[test]
fn plan_takes_every_regulariser() {
    let base = || RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2);
    let taken = base().dropout(0.3).recurrent_dropout(0.2).input_dropout(0.2).zoneout(0.1).zoneout_cell(0.1).build().unwrap();
    crate::backend::check_options("cuda", &taken, super::super::OPTIONS).unwrap();
}

/// A decoder's training steps continue a sequence's masks (`MaskStream::from_step`): dropout
/// between layers and zoneout of `h` and `c` drawn by the kernels at the sequence's step. A call
/// over steps `k..T` with the stream continued at `k` matches the reference's call with the
/// same stream (outputs and every gradient, Accumulate), differs from one with the stream
/// started at 0 (the offset is used), and its outputs are the last `T - k` steps of one call
/// over the whole sequence from the state at `k` (bit for bit the reference's split; here within
/// the f32 tolerances).
#[test]
fn emulated_steps_continue_the_sequences_masks() {
    use crate::backend::Reference;
    use crate::Rnn;
    let configs = [
        RnnConfig::new(CellKind::Lstm, 11, 23).num_layers(3).dropout(0.3).zoneout(0.2).zoneout_cell(0.3).proj_size(7).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 9, 17).num_layers(2).dropout(0.4).zoneout(0.3).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 6, 13).num_layers(2).dropout(0.5).build().unwrap(),
    ];
    for (c, cfg) in configs.iter().enumerate() {
        let (t, k, b) = (7usize, 3usize, 5usize);
        let whole = SeqShape::new(t, b).unwrap();
        let tail = SeqShape::new(t - k, b).unwrap();
        let stream = crate::masks::MaskStream::new(41 + c as u64, 2);
        let full = Problem::<f32>::new(cfg, &whole, 500 + c as u64, 2.0).to_f64();
        let rnn = Rnn::new(Reference, cfg, &full.params[..]).unwrap();
        // The reference: the whole sequence in one call, and its first k steps (the state at k).
        let mut r = Default::default();
        let all = rnn.forward_training_masked(&whole, &full.x, Some(&full.h0), full.c0.as_deref(), stream.clone(), &mut r).unwrap();
        let head = SeqShape::new(k, b).unwrap();
        let xk = |x: &[f64]| x[..k * b * cfg.input_size()].to_vec();
        let first = rnn.forward_training_masked(&head, &xk(&full.x), Some(&full.h0), full.c0.as_deref(), stream.clone(), &mut r).unwrap();
        // The tail problem: steps k.. of x, from the state at k, with the stream continued at k.
        let mut p = Problem::<f32>::new(cfg, &tail, 600 + c as u64, 2.0);
        p.p.params = full.params.iter().map(|&v| v as f32).collect();
        p.p.x = full.x[k * b * cfg.input_size()..].iter().map(|&v| v as f32).collect();
        p.p.h0 = first.hn.iter().map(|&v| v as f32).collect();
        p.p.c0 = first.cn.as_ref().map(|c| c.iter().map(|&v| v as f32).collect());
        let continued = stream.from_step(k).unwrap();
        let p = p.with_masks(continued.clone());
        let emulation = Emulation::default();
        let exec = emulation.exec();
        let (got, acc) = p.run_on(&exec, &exec);
        // The reference's call over the tail with the same stream.
        let q = p.to_f64();
        let mut reserve = Default::default();
        let o = rnn.forward_training_masked(&tail, &q.x, Some(&q.h0), q.c0.as_deref(), continued, &mut reserve).unwrap();
        let g = rnn.backward(&reserve, Some(&q.dy), Some(&q.dhn), q.dcn.as_deref()).unwrap();
        let want =
            [o.y.clone(), o.hn.clone(), o.cn.clone().unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()];
        for (i, name) in ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"].iter().enumerate() {
            let err = max_error(&up(&got[i]), &want[i]);
            let tol = if i < 3 { 1e-5 } else { 1e-4 };
            assert!(err <= tol, "{cfg:?}: {name} error {err:.3e} > {tol:e}");
        }
        let twice: Vec<f32> = got[6].iter().map(|g| 2.0 * g).collect();
        assert!(max_error(&acc, &twice) <= 1e-6, "{cfg:?}: Accumulate");
        // The tail's outputs are the last steps of the whole call (from the same state).
        let tail_of_all = &all.y[k * b * cfg.output_size()..];
        assert!(max_error(&up(&got[0]), tail_of_all) <= 1e-5, "{cfg:?}: the tail is not the whole call's last steps");
        // The stream started at 0 instead draws other masks.
        let restarted = Problem::<f32> { stream: Some(stream.clone()), ..p };
        let (other, _) = restarted.run_on(&exec, &exec);
        assert!(max_error(&up(&other[0]), tail_of_all) > 1e-3, "{cfg:?}: the stream's first step changed nothing");
    }
}

/// A continued stream whose steps reach 2^31 is an error naming `masks` before any work (the
/// kernels take the step as a signed 32-bit integer).
#[test]
fn emulated_continued_stream_checks_its_steps() {
    let cfg = RnnConfig::new(CellKind::Gru, 3, 4).zoneout(0.3).build().unwrap();
    let shape = SeqShape::new(2, 2).unwrap();
    let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0).with_masks(crate::masks::MaskStream::new(1, 0).from_step((1 << 31) - 1).unwrap());
    let mut reserve = CudaReserve::default();
    reserve.zoneout = crate::backend::host::zoneout::Zoneout::for_pass(&cfg, &shape, true, Some(&p.masks())).unwrap();
    let mut y = nans::<f32>(p.dy.len());
    let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
    let e = forward(&Emulation::default().exec(), p.weights(), &shape, io, Some(&mut reserve)).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { .. }) && e.to_string().contains("MaskStream::from_step"), "{e}");
}
