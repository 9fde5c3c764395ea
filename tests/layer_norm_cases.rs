//! The layer-normalised LSTM and GRU (`RnnConfigBuilder::layer_norm`) against an outside
//! oracle: Haste's `LayerNormLSTM` / `LayerNormGRU` equations.
//!
//! The case files of `tests/fixtures/layer_norm/` are written by
//! `tests/fixtures/make_layer_norm_cases.py`: Haste's own pure-torch definition of each cell
//! (`LayerNormLSTMScript`, `LayerNormGRUScript`) in float64, in Haste's parameter layout with
//! random gains and biases, stacked into 1–3 layers, one or two directions, full and variable
//! lengths, with autograd gradients, then converted to this library's tensor names and gate
//! orders (`docs/case-format.md`). Two files add the project's peephole and clip options on top.
//!
//! - Every file holds a complete case of the option: `layer_norm` set, the layer-norm tensors
//!   with gains away from 1 and biases away from 0, expected outputs and gradients.

use rnn_kernels::testkit::case::Case;
use rnn_kernels::CellKind;
use std::path::PathBuf;

/// The committed case files, sorted.
fn case_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layer_norm");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    files.sort();
    assert_eq!(files.len(), 7, "the layer-norm case files are missing from {}", dir.display());
    files
}

/// Each file reads as a layer-norm case with everything a full check needs, its options are
/// the ones its name says, and the parameters a careless implementation could drop (the
/// layer-norm gains and biases, the LSTM's `bias_hh`, which Haste folds into one bias) are
/// random, so dropping any of them misses the file.
#[test]
fn case_files_are_complete_layer_norm_cases() {
    for f in case_files() {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let case = Case::<f64>::load(&f).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cfg = &case.config;
        assert!(cfg.layer_norm(), "{name}: layer_norm not set");
        let lstm = cfg.cell() == CellKind::Lstm;
        assert_eq!(name.starts_with("lstm_"), lstm, "{name}: cell {}", cfg.cell());
        assert!(lstm || cfg.cell() == CellKind::Gru, "{name}: cell {}", cfg.cell());
        assert_eq!(name.contains("peephole"), cfg.peephole(), "{name}: peephole");
        assert_eq!(name.contains("clip"), cfg.gate_clip().is_some(), "{name}: gate_clip");
        assert_eq!(name.contains("_bi"), cfg.bidirectional(), "{name}: bidirectional");
        assert_eq!(name.contains("varlen"), (0..case.shape.batch()).any(|b| case.shape.length(b) < case.shape.steps()), "{name}: lengths");
        assert!(!case.forward_only(), "{name}: no gradients");
        let needed = [
            ("y", case.y.is_some()),
            ("hn", case.hn.is_some()),
            ("dy", case.dy.is_some()),
            ("dhn", case.dhn.is_some()),
            ("dx", case.dx.is_some()),
            ("dh0", case.dh0.is_some()),
            ("h0", case.h0.is_some()),
            ("grad.*", case.grads.is_some()),
        ];
        for (tensor, present) in needed {
            assert!(present, "{name}: no {tensor}");
        }
        if lstm {
            for (tensor, present) in
                [("c0", case.c0.is_some()), ("cn", case.cn.is_some()), ("dcn", case.dcn.is_some()), ("dc0", case.dc0.is_some())]
            {
                assert!(present, "{name}: no {tensor}");
            }
        }
        let layout = case.params.layout();
        let stems: &[(&str, f64)] = if lstm {
            &[("weight_ln_ih", 1.0), ("weight_ln_hh", 1.0), ("weight_ln_c", 1.0), ("bias_ln_c", 0.0), ("bias_hh", 0.0)]
        } else {
            &[("weight_ln_ih", 1.0), ("weight_ln_hh", 1.0), ("bias_hh", 0.0)]
        };
        for spec in layout.specs() {
            let Some(&(_, default)) = stems.iter().find(|(s, _)| spec.name.starts_with(&format!("{s}_l"))) else { continue };
            let v = case.params.get(&spec.name).unwrap();
            let away = v.iter().map(|x| (x - default).abs()).fold(0.0, f64::max);
            assert!(away > 0.1, "{name}: {} is within {away:e} of {default}", spec.name);
        }
        let gains = layout.specs().iter().filter(|s| s.name.starts_with("weight_ln_")).count();
        assert_eq!(gains, cfg.num_layers() * cfg.num_directions() * if lstm { 3 } else { 2 }, "{name}: layer-norm tensors");
    }
}
