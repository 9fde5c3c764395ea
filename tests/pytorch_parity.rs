//! The reference against PyTorch: every case file under `tests/fixtures/` (written by
//! `tests/fixtures/make_cases.py` with PyTorch in float64) must match at 1e-9, in the error
//! metric of the case format; the f32 reference must match at 1e-5.

use rnn_kernels::testkit::case::{run_case, Case};
use rnn_kernels::{CellKind, Reference};
use std::path::PathBuf;

fn case_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

#[test]
fn fixtures_cover_what_they_claim() {
    let cases: Vec<Case<f64>> = case_files().iter().map(|f| Case::load(f).unwrap()).collect();
    assert!(cases.len() >= 20, "expected the committed fixtures, found {}", cases.len());
    let any = |pred: &dyn Fn(&Case<f64>) -> bool| cases.iter().any(pred);
    for cell in CellKind::ALL {
        assert!(any(&|c| c.config.cell() == cell), "no case for {cell}");
        assert!(any(&|c| c.config.cell() == cell && c.config.bidirectional() && c.shape.is_varlen()), "no bidirectional varlen {cell}");
    }
    assert!(any(&|c| c.config.num_layers() >= 3));
    assert!(any(&|c| c.config.proj_size() > 0 && c.config.bidirectional() && c.shape.is_varlen()));
    assert!(any(&|c| !c.config.bias()));
    assert!(any(&|c| c.shape.batch() == 1));
    assert!(any(&|c| c.shape.steps() == 1));
    // Lengths out of order: some sequence longer than the one before it and some shorter.
    assert!(any(&|c| c.shape.lengths().is_some_and(|l| l.windows(2).any(|w| w[0] < w[1]) && l.windows(2).any(|w| w[0] > w[1]))));
    // Every file carries the full set of expected tensors, so nothing is silently skipped.
    for c in &cases {
        assert!(c.y.is_some() && c.hn.is_some() && c.dx.is_some() && c.dh0.is_some() && c.grads.is_some(), "{} lacks tensors", c.source);
        if c.config.cell() == CellKind::Lstm {
            assert!(c.cn.is_some() && c.dc0.is_some(), "{} lacks cn/dc0", c.source);
        }
    }
}

#[test]
fn reference_f64_matches_pytorch_at_1e_9() {
    let mut failures = Vec::new();
    for f in case_files() {
        let case = Case::<f64>::load(&f).unwrap();
        let report = run_case(&Reference, &case).unwrap();
        // y, hn, dx, dh0, every parameter gradient, and the inference pass.
        assert!(report.errors.len() >= 6 + case.params.layout().specs().len(), "{}: too few tensors compared", f.display());
        let (worst, err) = report.worst();
        if !report.passes(1e-9) {
            failures.push(format!("{}: {err:.3e} in {worst}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reference_f32_matches_pytorch_at_1e_5() {
    let mut failures = Vec::new();
    for f in case_files() {
        let case = Case::<f32>::load(&f).unwrap();
        let report = run_case(&Reference, &case).unwrap();
        let (worst, err) = report.worst();
        if !report.passes(1e-5) {
            failures.push(format!("{}: {err:.3e} in {worst}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The comparison must be able to fail: a perturbed parameter is caught.
#[test]
fn parity_detects_a_perturbed_parameter() {
    let f = case_files().into_iter().find(|f| f.ends_with("lstm_l1_uni.safetensors")).expect("lstm_l1_uni fixture");
    let mut case = Case::<f64>::load(&f).unwrap();
    case.params.get_mut("weight_hh_l0").unwrap()[3] += 1e-7;
    let report = run_case(&Reference, &case).unwrap();
    assert!(!report.passes(1e-9), "a 1e-7 change in one weight must show: {:?}", report.worst());
}
