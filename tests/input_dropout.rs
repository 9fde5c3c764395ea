//! Variational dropout of the layers' inputs (`RnnConfigBuilder::input_dropout`; Gal and
//! Ghahramani 2016, Keras's `dropout` argument of a recurrent layer):
//!
//! - central differences on the f64 reference with the masks fixed, for every cell, layers,
//!   both directions, reverse-only, projection, merge by sum, peepholes, layer norm, Cho's GRU,
//!   batch-first, variable lengths, and with dropout between layers, recurrent dropout and
//!   zoneout;
//! - every CPU ISA against the reference, and the same bits for 1, 2 and 3 threads; inference
//!   ignores it bit for bit;
//! - the documented mask: one layer with input dropout is, bit for bit, the layer without it
//!   run on `x ⊙ f` (`f` the factors of kind `LayerInput`, step 0, for each sequence), with
//!   `dx` the plain layer's times `f`;
//! - a training pass needs the masks (an error naming `masks`); `p` is checked; the
//!   torch-module cases of `tests/fixtures/input_dropout/`.

mod common;

use common::fd::sweep;
use common::{F64Problem, Problem};
use rnn_kernels::masks::{MaskKind, MaskSite};
use rnn_kernels::philox::Threshold;
use rnn_kernels::testkit::Problem as TypedProblem;
use rnn_kernels::{CellKind, Cpu, Direction, Merge, Reference, RnnConfig, SeqShape};

/// Central differences on the f64 reference, the masks fixed by the problem's stream.
#[test]
fn gradients_match_finite_differences() {
    let shape = SeqShape::with_lengths(4, vec![4, 2, 3]).unwrap();
    let mut configs = Vec::new();
    for cell in CellKind::ALL {
        for (layers, bi) in [(1, false), (2, true)] {
            configs.push(RnnConfig::new(cell, 3, 5).num_layers(layers).bidirectional(bi).input_dropout(0.4).build().unwrap());
        }
    }
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).proj_size(3).bidirectional(true).input_dropout(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 5).peephole(true).input_dropout(0.5).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 5).layer_norm(true).input_dropout(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 5).layer_norm(true).input_dropout(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 5).num_layers(2).linear_before_reset(false).input_dropout(0.3).build().unwrap());
    configs
        .push(RnnConfig::new(CellKind::Gru, 3, 5).num_layers(2).bidirectional(true).merge(Merge::Sum).input_dropout(0.2).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).direction(Direction::Reverse).input_dropout(0.5).build().unwrap());
    configs.push(
        RnnConfig::new(CellKind::Lstm, 3, 5)
            .num_layers(3)
            .dropout(0.3)
            .zoneout(0.2)
            .zoneout_cell(0.2)
            .recurrent_dropout(0.3)
            .input_dropout(0.3)
            .build()
            .unwrap(),
    );
    configs.push(RnnConfig::new(CellKind::Gru, 3, 5).num_layers(2).batch_first(true).input_dropout(0.3).build().unwrap());
    sweep(&configs, &shape, |k, cfg| Problem::random(cfg, &shape, 700 + k as u64, 1.0));
}

/// Every CPU ISA against the f64 reference with the same masks, and the same bits for 1, 2 and 3
/// threads; inference ignores input dropout (bit-identical to the configuration without).
#[test]
fn cpu_matches_the_reference_and_any_thread_count() {
    let shape = SeqShape::with_lengths(9, vec![9, 4, 7, 9, 2, 9, 9, 5, 9, 9, 1]).unwrap();
    for (cell, proj, batch_first) in
        [(CellKind::Lstm, 0, false), (CellKind::Lstm, 7, true), (CellKind::Gru, 0, false), (CellKind::RnnTanh, 0, true)]
    {
        let base = || RnnConfig::new(cell, 6, 20).num_layers(2).bidirectional(true).proj_size(proj).batch_first(batch_first);
        let p = TypedProblem::<f32>::new(&base().input_dropout(0.35).build().unwrap(), &shape, 5, 3.0);
        let label = format!("{cell} proj {proj} batch_first {batch_first}");
        common::masked_cases::cpu_matches_reference(&p, &label, false);
        common::masked_cases::inference_ignores_it(&p, &base().build().unwrap(), &label);
    }
}

/// The documented mask, one per sequence: a layer with input dropout equals, bit for bit on the
/// f64 reference and on the CPU backend, the same layer without it run on `x ⊙ f`, with `f` the
/// factors of kind `LayerInput`, step 0, layer 0, direction 0, row `b` (the same at every step);
/// its `dx` is the plain layer's times `f`, and every other output and gradient is the plain
/// layer's.
#[test]
fn the_input_is_dropped_by_one_mask_per_sequence() {
    let p_drop = 0.4;
    let shape = SeqShape::with_lengths(5, vec![5, 3, 4]).unwrap();
    for cell in CellKind::ALL {
        let (input, batch) = (7, shape.batch());
        let cfg = RnnConfig::new(cell, input, 6).input_dropout(p_drop).build().unwrap();
        let p = Problem::random(&cfg, &shape, 17, 1.0);
        let site = MaskSite::new(0, 0, MaskKind::LayerInput).unwrap();
        let t = Threshold::new("p", p_drop).unwrap();
        let mut f = vec![0.0f64; batch * input];
        for (b, row) in f.chunks_mut(input).enumerate() {
            p.masks().fill_factors(site, 0, b, t, 1.0 / (1.0 - p_drop), row).unwrap();
        }
        assert!(f.contains(&0.0) && f.iter().any(|&v| v > 1.0), "{f:?}");
        let mut plain = p.clone();
        plain.cfg = RnnConfig::new(cell, input, 6).build().unwrap();
        for (i, v) in plain.x.iter_mut().enumerate() {
            *v *= f[i % (batch * input)];
        }
        let (got, want) = (p.run(Reference), plain.run(Reference));
        let mut want_dx = want[3].clone();
        for (i, v) in want_dx.iter_mut().enumerate() {
            *v *= f[i % (batch * input)];
        }
        for i in [0, 1, 2, 4, 5, 6] {
            assert_eq!(got[i], want[i], "{cell}: output {i}");
        }
        assert_eq!(got[3], want_dx, "{cell}: dx");
        // The same on the CPU backend, in f32 (the factors rounded to f32, as the library does).
        let f32s: Vec<f32> = f.iter().map(|&v| if v == 0.0 { 0.0 } else { 1.0 / (1.0 - p_drop) as f32 }).collect();
        let p32 = to_f32(&p);
        let mut plain32 = p32.clone();
        plain32.cfg = plain.cfg.clone();
        for (i, v) in plain32.x.iter_mut().enumerate() {
            *v *= f32s[i % (batch * input)];
        }
        let (got, want) = (p32.run(Cpu::with_threads(2).unwrap()), plain32.run(Cpu::with_threads(2).unwrap()));
        for i in [0, 1, 2, 4, 5, 6] {
            assert_eq!(got[i], want[i], "{cell} cpu: output {i}");
        }
        let want_dx: Vec<f32> = want[3].iter().enumerate().map(|(i, &v)| v * f32s[i % (batch * input)]).collect();
        assert_eq!(got[3], want_dx, "{cell} cpu: dx");
    }
}

/// The f64 problem in f32.
fn to_f32(p: &Problem) -> TypedProblem<f32> {
    let d = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    TypedProblem {
        cfg: p.cfg.clone(),
        shape: p.shape.clone(),
        params: d(&p.params),
        x: d(&p.x),
        h0: d(&p.h0),
        c0: p.c0.as_deref().map(d),
        dy: d(&p.dy),
        dhn: d(&p.dhn),
        dcn: p.dcn.as_deref().map(d),
    }
}

/// A training pass without masks is an error naming `masks`; another offset draws other masks;
/// `p` outside `[0, 1)` is refused.
#[test]
fn masks_are_required_and_options_checked() {
    common::masked_cases::masks_required_and_offsets_differ(&RnnConfig::new(CellKind::Gru, 3, 8).input_dropout(0.5).build().unwrap());
    for bad in [1.0, -0.1, f64::NAN, 2.0] {
        let e = RnnConfig::new(CellKind::Gru, 3, 4).input_dropout(bad).build().unwrap_err().to_string();
        assert!(e.contains("input_dropout") && e.contains("[0, 1)"), "{bad}: {e}");
    }
}

/// The torch-module cases of `tests/fixtures/input_dropout/` (written by
/// `make_zoneout_cases.py`: the cells' equations step by step in float64, each layer's input
/// projection reading the input times the library's factors, from the script's own Philox; one
/// case with dropout between layers, recurrent dropout and zoneout too), checked by
/// `common::masked_cases::check`.
#[test]
fn pytorch_with_the_same_masks() {
    common::masked_cases::check("input_dropout", 5, |c| c.input_dropout().is_some());
}
