//! Recurrent (variational) dropout (`RnnConfigBuilder::recurrent_dropout`; Gal and Ghahramani
//! 2016, Keras's `recurrent_dropout`):
//!
//! - central differences on the f64 reference with the masks fixed, for every cell, layers,
//!   both directions, reverse-only, projection, merge by sum, peepholes, layer norm,
//!   batch-first, variable lengths, and with dropout between layers and zoneout;
//! - every CPU ISA against the reference, and the same bits for 1, 2 and 3 threads;
//! - the mask is one per sequence: a unit dropped at one step is dropped at every step (seen
//!   through `W_hh`'s gradient columns), and inference ignores it bit for bit;
//! - a training pass needs the masks (an error naming `masks`); `p` is checked; Cho's GRU is
//!   refused; the torch-module cases of `tests/fixtures/recurrent_dropout/`.

mod common;

use common::fd::sweep;
use common::{F64Problem, Problem};
use rnn_kernels::masks::{MaskKind, MaskSite};
use rnn_kernels::philox::Threshold;
use rnn_kernels::testkit::Problem as TypedProblem;
use rnn_kernels::{CellKind, Direction, Error, Merge, ParamLayout, Reference, RnnConfig, SeqShape};

/// Central differences on the f64 reference, the masks fixed by the problem's stream.
#[test]
fn gradients_match_finite_differences() {
    let shape = SeqShape::with_lengths(4, vec![4, 2, 3]).unwrap();
    let mut configs = Vec::new();
    for cell in CellKind::ALL {
        for (layers, bi) in [(1, false), (2, true)] {
            configs.push(RnnConfig::new(cell, 3, 5).num_layers(layers).bidirectional(bi).recurrent_dropout(0.4).build().unwrap());
        }
    }
    configs
        .push(RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).proj_size(3).bidirectional(true).recurrent_dropout(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 5).peephole(true).recurrent_dropout(0.5).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 5).layer_norm(true).recurrent_dropout(0.3).build().unwrap());
    configs.push(RnnConfig::new(CellKind::Gru, 3, 5).layer_norm(true).recurrent_dropout(0.3).build().unwrap());
    configs.push(
        RnnConfig::new(CellKind::Gru, 3, 5).num_layers(2).bidirectional(true).merge(Merge::Sum).recurrent_dropout(0.2).build().unwrap(),
    );
    configs.push(RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).direction(Direction::Reverse).recurrent_dropout(0.5).build().unwrap());
    configs.push(
        RnnConfig::new(CellKind::Lstm, 3, 5)
            .num_layers(3)
            .dropout(0.3)
            .zoneout(0.2)
            .zoneout_cell(0.2)
            .recurrent_dropout(0.3)
            .build()
            .unwrap(),
    );
    configs.push(RnnConfig::new(CellKind::Gru, 3, 5).batch_first(true).recurrent_dropout(0.3).build().unwrap());
    sweep(&configs, &shape, |k, cfg| Problem::random(cfg, &shape, 500 + k as u64, 1.0));
}

/// Every CPU ISA against the f64 reference with the same masks, and the same bits for 1, 2 and 3
/// threads; inference ignores recurrent dropout (bit-identical to the configuration without).
#[test]
fn cpu_matches_the_reference_and_any_thread_count() {
    let shape = SeqShape::with_lengths(9, vec![9, 4, 7, 9, 2, 9, 9, 5, 9, 9, 1]).unwrap();
    for (cell, proj) in [(CellKind::Lstm, 0), (CellKind::Lstm, 7), (CellKind::Gru, 0), (CellKind::RnnTanh, 0)] {
        let base = || RnnConfig::new(cell, 6, 20).num_layers(2).bidirectional(true).proj_size(proj);
        let p = TypedProblem::<f32>::new(&base().recurrent_dropout(0.35).build().unwrap(), &shape, 5, 3.0);
        let label = format!("{cell} proj {proj}");
        common::masked_cases::cpu_matches_reference(&p, &label, false);
        common::masked_cases::inference_ignores_it(&p, &base().build().unwrap(), &label);
    }
}

/// One mask per sequence: with a single sequence, the columns of `W_hh`'s gradient of the units
/// its mask drops are zero (the dropped unit enters no recurrent product at any step), and the
/// others are not; the mask is the documented one (`RecurrentH`, step 0).
#[test]
fn one_mask_per_sequence() {
    let p_drop = 0.5;
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 16).recurrent_dropout(p_drop).build().unwrap();
    let shape = SeqShape::new(6, 1).unwrap();
    let p = Problem::random(&cfg, &shape, 7, 1.0);
    let g = p.run(Reference);
    let mut dropped = vec![false; 16];
    p.masks()
        .fill_hits(MaskSite::new(0, 0, MaskKind::RecurrentH).unwrap(), 0, 0, Threshold::new("p", p_drop).unwrap(), &mut dropped)
        .unwrap();
    assert!(dropped.iter().any(|&d| d) && dropped.iter().any(|&d| !d), "{dropped:?}");
    let layout = ParamLayout::new(&cfg);
    let w_hh = layout.specs().iter().find(|s| s.name == "weight_hh_l0").unwrap();
    let dw = &g[6][w_hh.offset..w_hh.offset + w_hh.len()];
    for (u, &d) in dropped.iter().enumerate() {
        let col: Vec<f64> = (0..64).map(|r| dw[r * 16 + u]).collect();
        let zero = col.iter().all(|&v| v == 0.0);
        assert_eq!(zero, d, "unit {u}: dropped {d}, column {col:?}");
    }
}

/// A training pass without masks is an error naming `masks`; another offset draws other masks;
/// `p` outside `[0, 1)` and Cho's GRU are refused.
#[test]
fn masks_are_required_and_options_checked() {
    common::masked_cases::masks_required_and_offsets_differ(&RnnConfig::new(CellKind::Gru, 3, 8).recurrent_dropout(0.5).build().unwrap());
    for bad in [1.0, -0.1, f64::NAN, 2.0] {
        let e = RnnConfig::new(CellKind::Gru, 3, 4).recurrent_dropout(bad).build().unwrap_err().to_string();
        assert!(e.contains("recurrent_dropout") && e.contains("[0, 1)"), "{bad}: {e}");
    }
    let e = RnnConfig::new(CellKind::Gru, 3, 4).linear_before_reset(false).recurrent_dropout(0.2).build().unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "recurrent_dropout"), "{e}");
}

/// The torch-module cases of `tests/fixtures/recurrent_dropout/` (written by
/// `make_zoneout_cases.py`: the cells' equations step by step in float64, the recurrent product
/// reading the state times the library's factors, from the script's own Philox; one case with
/// dropout between layers and zoneout too), checked by `common::masked_cases::check`.
#[test]
fn pytorch_with_the_same_masks() {
    common::masked_cases::check("recurrent_dropout", 5, |c| c.recurrent_dropout().is_some());
}
