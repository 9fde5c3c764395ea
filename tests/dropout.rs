//! Dropout between layers (`RnnConfigBuilder::dropout`, PyTorch's `dropout` of `nn.LSTM`):
//!
//! - the stack against the same layers run one at a time with the masks applied between them by
//!   hand from `MaskStream` (the documented layout): forward and backward, on the f64 reference;
//! - central differences on the f64 reference with the masks fixed, for every cell, 2–3 layers,
//!   both directions, projection, merge by sum, layer norm, variable lengths;
//! - every CPU ISA against the reference, and the same bits for 1, 2 and 3 threads;
//! - inference ignores it; a training pass needs the masks (an error naming `masks`); other
//!   offsets draw other masks; `p` is checked.

mod common;

use common::fd::sweep;
use common::{F64Problem, Problem};
use rnn_kernels::masks::{MaskKind, MaskSite, MaskStream};
use rnn_kernels::philox::Threshold;
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::testkit::Problem as TypedProblem;
use rnn_kernels::{CellKind, Cpu, Direction, Error, Merge, ParamLayout, Reference, Rnn, RnnConfig, SeqShape};

/// Layer `layer`'s parameters of the stack `cfg` as the parameters of `one` (a one-layer
/// configuration of that layer's sizes and options).
fn layer_params(cfg: &RnnConfig, params: &[f64], layer: usize, one: &RnnConfig) -> Vec<f64> {
    let (stack, single) = (ParamLayout::new(cfg), ParamLayout::new(one));
    let mut out = vec![0.0; single.len()];
    for s in single.specs() {
        let src = stack.specs().iter().find(|t| t.layer == layer && t.direction == s.direction && t.kind == s.kind).unwrap();
        out[s.offset..s.offset + s.len()].copy_from_slice(&params[src.offset..src.offset + src.len()]);
    }
    out
}

/// Rows `[l·D, (l+1)·D)` of a state `[L·D, B, W]`.
fn state_rows(v: &[f64], l: usize, dirs: usize, per_layer_dir: usize) -> &[f64] {
    &v[l * dirs * per_layer_dir..(l + 1) * dirs * per_layer_dir]
}

/// `v` (`[T, B, W]`) times the dropout factors of layer `layer` drawn from `masks`.
fn drop(v: &mut [f64], masks: &MaskStream, p: f64, layer: usize, batch: usize, width: usize) {
    let site = MaskSite::new(layer, 0, MaskKind::LayerOutput).unwrap();
    let t = Threshold::new("p", p).unwrap();
    let mut f = vec![0.0; width];
    for (i, row) in v.chunks_mut(width).enumerate() {
        masks.fill_factors(site, i / batch, i % batch, t, 1.0 / (1.0 - p), &mut f).unwrap();
        row.iter_mut().zip(&f).for_each(|(x, f)| *x *= f);
    }
}

/// The stack against its layers one at a time with the masks applied between them by hand:
/// `y`, `hn`, `cn` of the training pass, then backward's `dx`, `dh0`, `dc0` and every parameter
/// gradient, through the dropped outputs. Three layers, so that both a dropped output's
/// forward and its gradient pass through a middle layer; variable lengths.
#[test]
fn the_stack_is_its_layers_with_the_masks_between_them() {
    let shape = SeqShape::with_lengths(6, vec![6, 3, 5, 1]).unwrap();
    for (cell, bi, proj) in [(CellKind::Lstm, false, 0), (CellKind::Lstm, true, 3), (CellKind::Gru, true, 0), (CellKind::RnnTanh, false, 0)]
    {
        let p_drop = 0.4;
        let cfg = RnnConfig::new(cell, 5, 7).num_layers(3).bidirectional(bi).proj_size(proj).dropout(p_drop).build().unwrap();
        let p = Problem::random(&cfg, &shape, 11, 1.0);
        let masks = p.masks();
        let got = p.run(Reference);

        let (dirs, b) = (cfg.num_directions(), shape.batch());
        let (hout, h, w) = (cfg.hidden_out_size(), cfg.hidden_size(), cfg.output_size());
        let lstm = cell == CellKind::Lstm;
        let rnn_of = |l: usize| {
            let one = RnnConfig::new(cell, cfg.layer_input_size(l), 7).bidirectional(bi).proj_size(proj).build().unwrap();
            let params = layer_params(&cfg, &p.params, l, &one);
            (Rnn::new(Reference, &one, &params[..]).unwrap(), one)
        };
        // Forward, layer by layer.
        let mut input = p.x.clone();
        let (mut hn, mut cn, mut reserves, mut inputs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for l in 0..3 {
            let (rnn, _) = rnn_of(l);
            let mut reserve = Default::default();
            let c0 = p.c0.as_deref().map(|c| state_rows(c, l, dirs, b * h));
            let o = rnn.forward_training(&shape, &input, Some(state_rows(&p.h0, l, dirs, b * hout)), c0, &mut reserve).unwrap();
            hn.extend_from_slice(&o.hn);
            cn.extend(o.cn.unwrap_or_default());
            reserves.push((rnn, reserve));
            inputs.push(input);
            input = o.y;
            if l < 2 {
                drop(&mut input, &masks, p_drop, l, b, w);
            }
        }
        let y = input;
        assert_eq!((max_error(&got[0], &y), max_error(&got[1], &hn)), (0.0, 0.0), "y, hn: {cell} bi {bi} proj {proj}");
        if lstm {
            assert_eq!(max_error(&got[2], &cn), 0.0, "cn: {cell}");
        }
        // Backward, from the last layer down, the gradient of a dropped output through its
        // masks.
        let mut d_out = p.dy.clone();
        let (mut dh0, mut dc0, mut dparams) = (vec![Vec::new(); 3], vec![Vec::new(); 3], vec![Vec::new(); 3]);
        let mut dx = Vec::new();
        for l in (0..3).rev() {
            let (rnn, reserve) = &reserves[l];
            let dcn = p.dcn.as_deref().map(|c| state_rows(c, l, dirs, b * h));
            let g = rnn.backward(reserve, Some(&d_out), Some(state_rows(&p.dhn, l, dirs, b * hout)), dcn).unwrap();
            dh0[l] = g.dh0;
            dc0[l] = g.dc0.unwrap_or_default();
            dparams[l] = g.dparams.unwrap();
            d_out = g.dx;
            if l > 0 {
                drop(&mut d_out, &masks, p_drop, l - 1, b, w);
            } else {
                dx = d_out.clone();
            }
        }
        assert!(max_error(&got[3], &dx) <= 1e-13, "dx: {}", max_error(&got[3], &dx));
        assert!(max_error(&got[4], &dh0.concat()) <= 1e-13, "dh0");
        if lstm {
            assert!(max_error(&got[5], &dc0.concat()) <= 1e-13, "dc0");
        }
        // Each layer's gradients at their place in the stack's layout.
        for (l, dp) in dparams.iter().enumerate() {
            let (_, one) = rnn_of(l);
            let single = ParamLayout::new(&one);
            for s in single.specs() {
                let t = ParamLayout::new(&cfg)
                    .specs()
                    .iter()
                    .find(|t| t.layer == l && t.direction == s.direction && t.kind == s.kind)
                    .unwrap()
                    .clone();
                let e = max_error(&got[6][t.offset..t.offset + t.len()], &dp[s.offset..s.offset + s.len()]);
                assert!(e <= 1e-13, "{}: {e:.2e}", t.name);
            }
        }
        // The masks did something: the same problem without dropout differs.
        let mut plain = p.clone();
        plain.cfg = RnnConfig::new(cell, 5, 7).num_layers(3).bidirectional(bi).proj_size(proj).build().unwrap();
        assert!(max_error(&plain.run(Reference)[0], &got[0]) > 1e-3, "{cell}: dropout changed nothing");
    }
}

/// Central differences on the f64 reference, the masks fixed by the problem's stream.
#[test]
fn gradients_match_finite_differences() {
    let shape = SeqShape::with_lengths(4, vec![4, 2, 3]).unwrap();
    let mut configs = Vec::new();
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh, CellKind::RnnRelu] {
        for (layers, bi) in [(2, false), (3, true)] {
            configs.push(RnnConfig::new(cell, 3, 4).num_layers(layers).bidirectional(bi).dropout(0.3).build().unwrap());
        }
    }
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).proj_size(2).bidirectional(true).dropout(0.5).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 4).num_layers(2).bidirectional(true).merge(Merge::Sum).dropout(0.2).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).direction(Direction::Reverse).dropout(0.6).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).layer_norm(true).peephole(true).dropout(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 4).num_layers(2).batch_first(true).dropout(0.3).build().unwrap());
    sweep(&configs, &shape, |k, cfg| Problem::random(cfg, &shape, 100 + k as u64, 1.0));
}

/// Every CPU ISA against the f64 reference with the same masks, and the same bits for 1, 2 and 3
/// threads; inference ignores dropout (bit-identical to the configuration without it).
#[test]
fn cpu_matches_the_reference_and_any_thread_count() {
    let shape = SeqShape::with_lengths(9, vec![9, 4, 7, 9, 2, 9, 9]).unwrap();
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnRelu] {
        let base = || RnnConfig::new(cell, 6, 20).num_layers(3).bidirectional(true);
        let p = TypedProblem::<f32>::new(&base().dropout(0.35).build().unwrap(), &shape, 5, 3.0);
        common::masked_cases::cpu_matches_reference(&p, &cell.to_string(), false);
        common::masked_cases::inference_ignores_it(&p, &base().build().unwrap(), &cell.to_string());
    }
}

/// A training pass without masks is an error naming `masks` (also with one layer, where dropout
/// has no effect, none are needed); another offset draws other masks, the same offset the same.
#[test]
fn masks_are_required_and_offsets_differ() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 8).num_layers(2).dropout(0.5).build().unwrap();
    let shape = SeqShape::new(5, 4).unwrap();
    let p = TypedProblem::<f32>::new(&cfg, &shape, 1, 1.0);
    let rnn = Rnn::new(Cpu::with_threads(1).unwrap(), &cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    let e = rnn.forward_training(&shape, &p.x, None, None, &mut reserve).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "masks"), "{e}");
    assert!(e.to_string().contains("0.5"), "{e}");
    let run = |offset: u64| {
        let mut reserve = Default::default();
        rnn.forward_training_masked(&shape, &p.x, None, None, MaskStream::new(9, offset), &mut reserve).unwrap().y
    };
    assert_eq!(run(0), run(0));
    assert_ne!(run(0), run(1));
    let one = RnnConfig::new(CellKind::Lstm, 3, 8).dropout(0.5).build().unwrap();
    let rnn = Rnn::new(Reference, &one, &TypedProblem::<f64>::new(&one, &shape, 1, 1.0).params[..]).unwrap();
    let mut reserve = Default::default();
    rnn.forward_training(&shape, &vec![0.1; 5 * 4 * 3], None, None, &mut reserve).unwrap();
    for bad in [1.0, -0.1, f64::NAN, 2.0] {
        let e = RnnConfig::new(CellKind::Gru, 3, 4).num_layers(2).dropout(bad).build().unwrap_err().to_string();
        assert!(e.contains("dropout") && e.contains("[0, 1)"), "{bad}: {e}");
    }
}

/// PyTorch with the same masks: the cases of `tests/fixtures/dropout/` (written by
/// `make_dropout_cases.py`: PyTorch's layers one at a time in float64 with the library's masks
/// between them, computed by the script's own Philox from the documented layout; inference by
/// the stack module in eval mode), checked by `common::masked_cases::check`.
#[test]
fn pytorch_with_the_same_masks() {
    common::masked_cases::check("dropout", 5, |c| c.dropout().is_some());
}
