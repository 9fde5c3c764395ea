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
//! - The f64 reference matches every file at 1e-9 (as the PyTorch fixtures,
//!   `tests/pytorch_parity.rs`), in the metric of the case format, forward, backward and
//!   inference; with Haste's initial layer-norm parameters (gains 1, biases 0) instead of the
//!   file's it misses each one.
//! - The f32 reference and every CPU ISA of this machine match every file at 1e-4, `verify`'s
//!   tolerance for f32 and the gradient tolerance of `tests/cpu.rs`. (Not the f32 reference's
//!   1e-5 of `tests/pytorch_parity.rs`: a layer norm multiplies the rounding of its row by
//!   `1/σ`, which reaches 21 on the three-layer LSTM's cell-state rows of three units; the f32
//!   reference measured 1.7e-5 there, every other file ≤ 4.5e-6.)

mod common;

use common::parity::GRAD_TOL;
use rnn_kernels::testkit::case::{run_case, Case, CaseReport};
use rnn_kernels::{CellKind, Cpu, Isa, Reference, Result};
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

/// The f64 reference matches every case at 1e-9: the training forward, the backward (every
/// input, state and parameter gradient) and the inference forward. At Haste's initial values of
/// the layer-norm parameters (gains 1, biases 0) instead of the file's, it misses each file.
#[test]
fn reference_f64_matches_hastes_equations_at_1e_9() {
    let mut failures = Vec::new();
    for f in case_files() {
        let case = Case::<f64>::load(&f).unwrap();
        let report = run_case(&Reference, &case).unwrap();
        // y, hn, dx, dh0, every parameter gradient, and the inference pass.
        assert!(report.errors.len() >= 6 + case.params.layout().specs().len(), "{}: too few tensors compared", f.display());
        let (worst, err) = report.worst();
        eprintln!("reference f64 {}: max error {err:.2e} in {worst}", f.display());
        if !report.passes(1e-9) {
            failures.push(format!("{}: {err:.3e} in {worst}", f.display()));
        }
        let mut initial = case.clone();
        for spec in case.params.layout().specs() {
            let value = if spec.name.starts_with("weight_ln_") {
                1.0
            } else if spec.name.starts_with("bias_ln_") {
                0.0
            } else {
                continue;
            };
            initial.params.as_mut_slice()[spec.range()].fill(value);
        }
        assert!(!run_case(&Reference, &initial).unwrap().passes(1e-3), "{}: its layer-norm parameters change nothing", f.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The f32 reference and every CPU ISA of this machine (2 threads) match every case at 1e-4.
#[test]
fn f32_backends_match_hastes_equations_at_1e_4() {
    let mut failures = Vec::new();
    for f in case_files() {
        let case = Case::<f32>::load(&f).unwrap();
        let mut runs: Vec<(String, Result<CaseReport>)> = vec![("reference f32".into(), run_case(&Reference, &case))];
        for isa in Isa::available() {
            runs.push((format!("cpu {isa}"), run_case(&Cpu::with_isa(isa, 2).unwrap(), &case)));
        }
        for (label, report) in runs {
            let report = report.unwrap_or_else(|e| panic!("{label} {}: {e}", f.display()));
            let (worst, err) = report.worst();
            eprintln!("{label} {}: max error {err:.2e} in {worst}", f.display());
            if !report.passes(GRAD_TOL) {
                failures.push(format!("{label} {}: {err:.3e} in {worst}, over {GRAD_TOL:e}", f.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
