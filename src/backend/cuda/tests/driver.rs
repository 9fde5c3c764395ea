//! The driver (f32) on the host emulation against the f64 reference: the same parity checks
//! as the CUDA tests, runnable without a GPU; and the exact output bits, pinned.

use super::super::emulation::Emulation;
use super::super::kernels::PERSISTENT_MAX_BATCH;
use super::*;
use crate::backend::GradMode;
use crate::error::Error;
use crate::testkit::case::max_error;
use crate::CellKind;
use proptest::prelude::*;

impl Problem<f32> {
    /// (y, hn, cn, dx, dh0, dc0, dparams) from the emulated driver; also checks that
    /// inference gives training's outputs bit for bit, and that Accumulate adds. With
    /// `persistent`, GRU and RNN layers with B ≤ 8 must run kernels/persistent_cell.cu
    /// forward, and every layer with B ≤ 8 but an LSTM with projection must run
    /// kernels/persistent_backward.cu.
    fn run_emulated(&self, persistent: bool) -> Vec<Vec<f32>> {
        let (cfg, shape) = (&self.cfg, &self.shape);
        let small = shape.batch() <= PERSISTENT_MAX_BATCH;
        let emulation = Emulation::default();
        let required = persistent && cfg.cell() != CellKind::Lstm && small;
        let fwd = emulation.exec().with_persistent(persistent).with_persistent_required(required);
        let bwd_required = persistent && small && cfg.proj_size() == 0;
        let bwd = emulation.exec().with_persistent(persistent).with_persistent_required(bwd_required);
        let (outs, acc) = self.run_on(&fwd, &bwd);
        // Accumulate onto the gradients just computed: twice them (up to rounding).
        let twice: Vec<f32> = outs[6].iter().map(|g| 2.0 * g).collect();
        assert!(max_error(&acc, &twice) <= 1e-6, "Accumulate");
        outs
    }

    /// One training forward (per step), then its backward twice, per step and through
    /// kernels/persistent_backward.cu (required): (dx, dh0, dc0, dparams) of each, Overwrite
    /// into NaN-filled buffers, then dparams again with Accumulate onto the first result.
    fn backward_per_step_and_persistent(&self) -> [Vec<Vec<f32>>; 2] {
        let emulation = Emulation::default();
        let mut reserve = CudaReserve::default();
        self.forward_on(&emulation.exec(), Some(&mut reserve));
        [false, true].map(|persistent| {
            let exec = emulation.exec().with_persistent(persistent).with_persistent_required(persistent);
            let [dx, dh0, dc0, dp] = self.backward_on(&exec, &reserve);
            let acc = self.accumulate_on(&exec, &reserve, &dp);
            vec![dx, dh0, dc0, dp, acc]
        })
    }

    /// The per-step path and the persistent one against the reference.
    fn check(&self) -> std::result::Result<(), String> {
        let want = self.run_reference();
        for persistent in [false, true] {
            let got = self.run_emulated(persistent);
            for (i, name) in ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"].iter().enumerate() {
                let err = max_error(&up(&got[i]), &want[i]);
                let tol = if i < 3 { 1e-5 } else { 1e-4 };
                if err > tol {
                    return Err(format!("persistent={persistent}: {name} error {err:.3e} > {tol:e}: {:?} {:?}", self.cfg, self.shape));
                }
            }
        }
        Ok(())
    }
}

fn config() -> impl Strategy<Value = RnnConfig> {
    (0usize..4, 1usize..12, 1usize..12, 1usize..4, any::<bool>(), any::<bool>(), 0usize..6).prop_map(|(c, i, h, l, bi, bias, p)| {
        let cell = CellKind::ALL[c];
        let proj = if cell == CellKind::Lstm && h > 1 { p.min(h - 1) } else { 0 };
        RnnConfig::new(cell, i, h).num_layers(l).bidirectional(bi).bias(bias).proj_size(proj).build().unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The CUDA tests' property test, on the emulation: every cell, layers, directions,
    /// bias, projection, variable lengths, inputs up to ±25.
    #[test]
    fn emulated_driver_matches_reference(cfg in config(), t in 1usize..7, lens in prop::collection::vec(1usize..7, 1..6), seed in any::<u64>()) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = Problem::<f32>::new(&cfg, &shape, seed, 25.0);
        // Ill-conditioned at f32 (a pre-activation at a kink, a layer norm amplifying rounding): no
        // parity to check (testkit::conditioning).
        prop_assume!(p.conditioning().is_good_for_f32());
        let r = p.check();
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// The emulated driver's exact output bits, pinned in `tests/fixtures/bit_pins.txt` (lines
/// `cuda-emulation …`; see tests/bit_pins.rs): the per-step and persistent paths, the layer
/// wavefront (the unidirectional multi-layer problem), projection, bidirectional stacks and
/// variable lengths. `RNN_KERNELS_WRITE_BIT_PINS=1` rewrites these lines.
#[test]
fn emulated_outputs_match_pinned_bits() {
    let fnv1a = |v: &[f32]| crate::testkit::pins::fnv1a(v.iter().map(|x| x.to_bits() as u64));
    let problems = [
        (
            "lstm_proj_l2_bi_varlen",
            RnnConfig::new(CellKind::Lstm, 13, 24).num_layers(2).bidirectional(true).proj_size(10).build().unwrap(),
            7,
            vec![7, 3, 5, 1, 6],
        ),
        ("lstm_l3_uni_b4", RnnConfig::new(CellKind::Lstm, 9, 21).num_layers(3).build().unwrap(), 11, vec![11, 4, 9, 1]),
        ("gru_l2_uni_b37", RnnConfig::new(CellKind::Gru, 9, 33).num_layers(2).build().unwrap(), 20, (0..37).map(|b| 20 - b % 7).collect()),
        ("gru_l2_bi_b3", RnnConfig::new(CellKind::Gru, 7, 37).num_layers(2).bidirectional(true).build().unwrap(), 9, vec![9, 2, 6]),
        ("rnn_relu_l2_bi_b1", RnnConfig::new(CellKind::RnnRelu, 17, 40).num_layers(2).bidirectional(true).build().unwrap(), 5, vec![5]),
        (
            "rnn_tanh_l1_nobias_b20",
            RnnConfig::new(CellKind::RnnTanh, 33, 50).bias(false).build().unwrap(),
            6,
            (0..20).map(|b| 6 - b % 3).collect(),
        ),
    ];
    let mut got = std::collections::BTreeMap::new();
    for (i, (name, cfg, t, lengths)) in problems.into_iter().enumerate() {
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = Problem::<f32>::new(&cfg, &shape, 900 + i as u64, 3.0);
        for persistent in [false, true] {
            let outs = p.run_emulated(persistent);
            let line = ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"]
                .iter()
                .zip(&outs)
                .map(|(k, v)| format!("{k}={:016x}", fnv1a(v)))
                .collect::<Vec<_>>()
                .join(" ");
            got.insert(format!("cuda-emulation{} {name}", if persistent { "-persistent" } else { "" }), line);
        }
    }
    crate::testkit::pins::check(&got);
}

/// Sizes where the GEMMs are not tiny and rows of many lengths share a step.
#[test]
fn emulated_driver_matches_reference_larger() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 24, 33).num_layers(2).bidirectional(true).proj_size(17).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 30, 41).num_layers(2).bidirectional(true).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 13, 50).num_layers(2).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 20, 27).bidirectional(true).bias(false).build().unwrap(),
    ];
    for cfg in &configs {
        let shape = SeqShape::with_lengths(9, (0..13).map(|b| 1 + (b * 5) % 9).collect()).unwrap();
        Problem::<f32>::new(cfg, &shape, 77, 3.0).check().unwrap();
    }
}

/// kernels/persistent_cell.cu on the emulation: GRU and RNN, B = 1..4, both directions, two
/// layers, H not a multiple of 32, mixed lengths (rows past their length in both
/// directions), with and without bias; `check` requires the persistent path to be taken.
#[test]
fn emulated_persistent_cell_matches_reference() {
    for (c, cell) in [CellKind::Gru, CellKind::RnnTanh, CellKind::RnnRelu].into_iter().enumerate() {
        for b in 1..=4 {
            let cfg = RnnConfig::new(cell, 7, 37).num_layers(2).bidirectional(true).bias(b % 2 == 1).build().unwrap();
            let shape = SeqShape::with_lengths(11, (0..b).map(|i| 11 - (i * 4) % 11).collect()).unwrap();
            Problem::<f32>::new(&cfg, &shape, 100 + (c * 8 + b) as u64, 3.0).check().unwrap();
        }
    }
}

/// kernels/persistent_backward.cu on the emulation against the per-step backward, from the
/// same saved forward: LSTM (no projection), GRU, RNN tanh and relu; one and two directions,
/// two layers, B = 1..4 and 8, mixed lengths (rows past their length in both directions),
/// h0/c0 and dhn/dcn given, with and without bias, Overwrite and Accumulate.
///
/// Tolerance 0 (bit for bit): both paths compute dG with the same f32 expressions
/// (cells.cuh), and on the emulation the persistent kernel sums dh_prev = Σ_r dG_h·W_hh
/// in the host sgemm's order (r ascending from 0, unfused products, the direct part added
/// last), so every value, and hence every weight-gradient GEMM, is the same. On the device
/// the sums are reordered (lanes, shuffles; cuBLAS's tiling): tests/cuda.rs compares with
/// the gradient tolerance there. `check` also compares both paths with the f64 reference.
#[test]
fn emulated_persistent_backward_matches_per_step() {
    for (c, cell) in CellKind::ALL.into_iter().enumerate() {
        for (b, bi) in [(1, true), (2, false), (3, true), (4, true), (8, false)] {
            let cfg = RnnConfig::new(cell, 6, 19).num_layers(2).bidirectional(bi).bias(b % 2 == 1).build().unwrap();
            let shape = SeqShape::with_lengths(9, (0..b).map(|i| 9 - (i * 4) % 9).collect()).unwrap();
            let p = Problem::<f32>::new(&cfg, &shape, 300 + (c * 16 + b) as u64, 3.0);
            let [per_step, persistent] = p.backward_per_step_and_persistent();
            for (i, name) in ["dx", "dh0", "dc0", "dparams", "dparams (Accumulate)"].iter().enumerate() {
                let same = per_step[i].iter().zip(&persistent[i]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same && per_step[i].len() == persistent[i].len(),
                    "{cell:?} B={b} bidirectional={bi}: {name} differs: max error {:.3e}",
                    max_error(&up(&persistent[i]), &up(&per_step[i]))
                );
            }
            p.check().unwrap();
        }
    }
}

/// A required persistent backward that cannot be taken (an LSTM with projection; B > 8) is
/// an error, not a silent fallback.
#[test]
fn emulated_persistent_backward_required_is_an_error() {
    let lstm_proj = RnnConfig::new(CellKind::Lstm, 3, 5).proj_size(2).build().unwrap();
    let gru = RnnConfig::new(CellKind::Gru, 3, 5).build().unwrap();
    for (cfg, b) in [(lstm_proj, 2), (gru, 9)] {
        let shape = SeqShape::new(2, b).unwrap();
        let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0);
        let emulation = Emulation::default();
        let mut reserve = CudaReserve::default();
        p.forward_on(&emulation.exec(), Some(&mut reserve));
        let exec = emulation.exec().with_persistent(true).with_persistent_required(true);
        let mut dx = nans::<f32>(p.x.len());
        let g = BackwardViews { dhn: None, dcn: None, dx: Some(view_mut(&mut dx)), ..p.incoming(GradMode::Overwrite) };
        let e = backward(&exec, p.weights(), &shape, &SavedViews::new(&reserve), g).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("persistent backward"), "{e}");
    }
}

/// A required persistent path that cannot be taken is an error, not a silent fallback.
#[test]
fn emulated_persistent_required_is_an_error() {
    let cfg = RnnConfig::new(CellKind::Gru, 3, 5).build().unwrap();
    let shape = SeqShape::new(2, 9).unwrap(); // B = 9 > 8
    let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0);
    let emulation = Emulation::default();
    let exec = emulation.exec().with_persistent(true).with_persistent_required(true);
    let mut y = nans::<f32>(p.dy.len());
    let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
    let e = forward(&exec, p.weights(), &shape, io, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("persistent"), "{e}");
}

/// Optional inputs and outputs left out: zeros in, nothing written, the rest unchanged.
#[test]
fn emulated_driver_optional_buffers() {
    let cfg = RnnConfig::new(CellKind::Lstm, 4, 6).num_layers(2).bidirectional(true).build().unwrap();
    let shape = SeqShape::with_lengths(5, vec![5, 2, 4]).unwrap();
    let p = Problem::<f32>::new(&cfg, &shape, 3, 2.0);
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let mut y = nans::<f32>(p.dy.len());
    let mut reserve = CudaReserve::default();
    let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
    forward(&exec, p.weights(), &shape, io, Some(&mut reserve)).unwrap();
    let rnn = Rnn::new(Reference, &cfg, &up(&p.params)[..]).unwrap();
    let mut rr = Default::default();
    let o = rnn.forward_training(&shape, &up(&p.x), None, None, &mut rr).unwrap();
    assert!(max_error(&up(&y), &o.y) <= 1e-5);
    let mut dx = nans::<f32>(p.x.len());
    let g = BackwardViews { dy: None, dhn: None, dcn: None, dx: Some(view_mut(&mut dx)), ..p.incoming(GradMode::Overwrite) };
    backward(&exec, p.weights(), &shape, &SavedViews::new(&reserve), g).unwrap();
    let g = rnn.backward(&rr, None, None, None).unwrap();
    assert!(max_error(&up(&dx), &g.dx) <= 1e-4);
}
