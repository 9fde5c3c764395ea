//! Zoneout (`RnnConfigBuilder::zoneout`, `zoneout_cell`; Krueger et al. 2017, Haste's
//! `zoneout`):
//!
//! - a training pass against the cell run one step at a time without zoneout, the masks
//!   applied between the steps by hand from `MaskStream` (the documented layout), and inference
//!   against the same steps with the expectation `z·prev + (1-z)·new`: f64 reference;
//! - central differences on the f64 reference with the masks fixed, for every cell, layers,
//!   both directions, projection, merge by sum, peepholes, layer norm, variable lengths, and
//!   with dropout between layers;
//! - every CPU ISA against the reference, and the same bits for 1, 2 and 3 threads;
//! - a training pass needs the masks (an error naming `masks`); `z` is checked; the cell
//!   state's zoneout is LSTM only.

mod common;

use common::fd::sweep;
use common::{F64Problem, Problem};
use rnn_kernels::masks::{MaskKind, MaskSite, MaskStream};
use rnn_kernels::philox::Threshold;
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::testkit::Problem as TypedProblem;
use rnn_kernels::{CellKind, Direction, Error, Merge, Reference, Rnn, RnnConfig, SeqShape};

/// The mask of `kind` for `row` at step `t` (layer 0, direction 0), `width` units.
fn hits(masks: &MaskStream, kind: MaskKind, z: f64, t: usize, row: usize, width: usize) -> Vec<bool> {
    let mut hit = vec![false; width];
    masks.fill_hits(MaskSite::new(0, 0, kind).unwrap(), t, row, Threshold::new("z", z).unwrap(), &mut hit).unwrap();
    hit
}

/// One layer, one direction, run as `T` one-step inference calls of the cell without zoneout,
/// the zoneout applied between them by hand: with `masks` (a training pass) the zoned-out units
/// keep their previous value, without them the expectation. Returns `y`, `hn`, `cn`. Rows past
/// their length keep their state and output zero.
fn step_by_step(cfg: &RnnConfig, plain: &RnnConfig, p: &Problem, masks: Option<MaskStream>) -> [Vec<f64>; 3] {
    let (t_len, b) = (p.shape.steps(), p.shape.batch());
    let (i_w, hout, h) = (cfg.input_size(), cfg.hidden_out_size(), cfg.hidden_size());
    let lstm = cfg.cell() == CellKind::Lstm;
    let rnn = Rnn::new(Reference, plain, &p.params[..]).unwrap();
    let one = SeqShape::new(1, b).unwrap();
    let (mut hp, mut cp) = (p.h0.clone(), p.c0.clone().unwrap_or_default());
    let mut y = vec![0.0; t_len * b * hout];
    for t in 0..t_len {
        let o = rnn.forward(&one, &p.x[t * b * i_w..(t + 1) * b * i_w], Some(&hp), lstm.then_some(&cp[..])).unwrap();
        for r in 0..b {
            if t >= p.shape.lengths().map_or(t_len, |l| l[r]) {
                continue;
            }
            let blend = |prev: &mut [f64], new: &[f64], kind: MaskKind, z: Option<f64>| match (z, masks.as_ref()) {
                (None, _) => prev.copy_from_slice(new),
                (Some(z), Some(m)) => {
                    for ((v, &n), hit) in prev.iter_mut().zip(new).zip(hits(m, kind, z, t, r, new.len())) {
                        if !hit {
                            *v = n;
                        }
                    }
                }
                (Some(z), None) => prev.iter_mut().zip(new).for_each(|(v, &n)| *v = z * *v + (1.0 - z) * n),
            };
            blend(&mut hp[r * hout..(r + 1) * hout], &o.hn[r * hout..(r + 1) * hout], MaskKind::ZoneoutH, cfg.zoneout());
            if lstm {
                let cn = o.cn.as_ref().unwrap();
                blend(&mut cp[r * h..(r + 1) * h], &cn[r * h..(r + 1) * h], MaskKind::ZoneoutC, cfg.zoneout_cell());
            }
            y[(t * b + r) * hout..(t * b + r + 1) * hout].copy_from_slice(&hp[r * hout..(r + 1) * hout]);
        }
    }
    [y, hp, if lstm { cp } else { Vec::new() }]
}

/// The stack's training pass and inference against [`step_by_step`], for each cell, with and
/// without projection and peepholes, variable lengths.
#[test]
fn the_layer_is_its_steps_with_the_masks_between_them() {
    let shape = SeqShape::with_lengths(7, vec![7, 3, 6, 1, 7]).unwrap();
    let cases: Vec<(RnnConfig, RnnConfig)> = [
        (CellKind::Lstm, 0, false, 0.3, 0.4),
        (CellKind::Lstm, 3, false, 0.5, 0.0),
        (CellKind::Lstm, 0, true, 0.0, 0.25),
        (CellKind::Gru, 0, false, 0.35, 0.0),
        (CellKind::RnnTanh, 0, false, 0.6, 0.0),
        (CellKind::RnnRelu, 0, false, 0.2, 0.0),
    ]
    .into_iter()
    .map(|(cell, proj, peep, zh, zc)| {
        let base = || RnnConfig::new(cell, 4, 6).proj_size(proj).peephole(peep);
        (base().zoneout(zh).zoneout_cell(zc).build().unwrap(), base().build().unwrap())
    })
    .collect();
    for (k, (cfg, plain)) in cases.iter().enumerate() {
        let p = Problem::random(cfg, &shape, 40 + k as u64, 1.0);
        let got = p.run(Reference);
        let want = step_by_step(cfg, plain, &p, Some(p.masks()));
        for (i, name) in ["y", "hn", "cn"].iter().enumerate() {
            assert!(max_error(&got[i], &want[i]) <= 1e-15, "{:?} training {name}: {:.2e}", cfg.options(), max_error(&got[i], &want[i]));
        }
        let got = p.run_inference(Reference);
        let want = step_by_step(cfg, plain, &p, None);
        for (i, name) in ["y", "hn", "cn"].iter().enumerate() {
            assert!(max_error(&got[i], &want[i]) <= 1e-15, "{:?} inference {name}: {:.2e}", cfg.options(), max_error(&got[i], &want[i]));
        }
        // The zoneout did something, in training and in inference.
        let mut q = p.clone();
        q.cfg = plain.clone();
        assert!(max_error(&q.run(Reference)[1], &p.run(Reference)[1]) > 1e-3, "{:?}: training unchanged", cfg.options());
        assert!(
            max_error(&q.run_inference(Reference)[1], &p.run_inference(Reference)[1]) > 1e-3,
            "{:?}: inference unchanged",
            cfg.options()
        );
    }
}

/// Central differences on the f64 reference, the masks fixed by the problem's stream.
#[test]
fn gradients_match_finite_differences() {
    let shape = SeqShape::with_lengths(4, vec![4, 2, 3]).unwrap();
    let mut configs = Vec::new();
    for cell in CellKind::ALL {
        for (layers, bi) in [(1, false), (2, true)] {
            let zc = if cell == CellKind::Lstm { 0.4 } else { 0.0 };
            configs.push(RnnConfig::new(cell, 3, 4).num_layers(layers).bidirectional(bi).zoneout(0.3).zoneout_cell(zc).build().unwrap());
        }
    }
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 4).zoneout_cell(0.5).build().unwrap());
    configs.push(
        RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).proj_size(2).bidirectional(true).zoneout(0.4).zoneout_cell(0.3).build().unwrap(),
    );
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 4).peephole(true).zoneout(0.3).zoneout_cell(0.5).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 4).layer_norm(true).zoneout(0.3).zoneout_cell(0.4).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 4).layer_norm(true).zoneout(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 4).linear_before_reset(false).zoneout(0.4).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 4).num_layers(2).bidirectional(true).merge(Merge::Sum).zoneout(0.2).build().unwrap());
    configs.push(
        RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).direction(Direction::Reverse).zoneout(0.5).zoneout_cell(0.2).build().unwrap(),
    );
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(3).dropout(0.3).zoneout(0.3).zoneout_cell(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 4).batch_first(true).zoneout(0.3).build().unwrap());
    sweep(&configs, &shape, |k, cfg| Problem::random(cfg, &shape, 300 + k as u64, 1.0));
}

/// Every CPU ISA against the f64 reference with the same masks, and the same bits for 1, 2 and 3
/// threads, in training and in inference.
#[test]
fn cpu_matches_the_reference_and_any_thread_count() {
    let shape = SeqShape::with_lengths(9, vec![9, 4, 7, 9, 2, 9, 9, 5, 9, 9, 1]).unwrap();
    for (cell, proj) in [(CellKind::Lstm, 0), (CellKind::Lstm, 7), (CellKind::Gru, 0), (CellKind::RnnRelu, 0)] {
        let zc = if cell == CellKind::Lstm { 0.3 } else { 0.0 };
        let cfg =
            RnnConfig::new(cell, 6, 20).num_layers(2).bidirectional(true).proj_size(proj).zoneout(0.25).zoneout_cell(zc).build().unwrap();
        let p = TypedProblem::<f32>::new(&cfg, &shape, 5, 3.0);
        common::masked_cases::cpu_matches_reference(&p, &format!("{cell} proj {proj}"), true);
    }
}

/// A training pass without masks is an error naming `masks`; another offset draws other masks;
/// `z` outside `[0, 1)` and the cell state's zoneout on a cell without one are refused.
#[test]
fn masks_are_required_and_rates_checked() {
    common::masked_cases::masks_required_and_offsets_differ(&RnnConfig::new(CellKind::Gru, 3, 8).zoneout(0.5).build().unwrap());
    for bad in [1.0, -0.1, f64::NAN, 2.0] {
        let e = RnnConfig::new(CellKind::Gru, 3, 4).zoneout(bad).build().unwrap_err().to_string();
        assert!(e.contains("zoneout") && e.contains("[0, 1)"), "{bad}: {e}");
        let e = RnnConfig::new(CellKind::Lstm, 3, 4).zoneout_cell(bad).build().unwrap_err().to_string();
        assert!(e.contains("zoneout_cell") && e.contains("[0, 1)"), "{bad}: {e}");
    }
    let e = RnnConfig::new(CellKind::Gru, 3, 4).zoneout_cell(0.2).build().unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "zoneout_cell"), "{e}");
}

/// The cases of `tests/fixtures/zoneout/` (written by `make_zoneout_cases.py`: a torch module of
/// the cells' equations run step by step in float64 with the library's masks, computed by the
/// script's own Philox from the documented layout; inference with the expectation), checked by
/// `common::masked_cases::check`.
#[test]
fn pytorch_with_the_same_masks() {
    common::masked_cases::check("zoneout", 5, |c| c.zoneout().is_some());
}
