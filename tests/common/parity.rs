//! The f32 parity harness shared by the optimised backends' tests (CPU, CUDA): one random
//! problem in f32, run on a backend and on the f64 reference, compared tensor by tensor.
#![allow(dead_code)]

use proptest::prelude::*;
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::testkit::OUTPUTS;
use rnn_kernels::{CellKind, RnnConfig};
use std::path::PathBuf;

/// Forward outputs.
pub const FWD_TOL: f64 = 1e-5;
/// Gradients.
pub const GRAD_TOL: f64 = 1e-4;

/// One problem in f32 (`Problem::new`, `run`, `run_inference`, `run_reference`).
pub type Problem = rnn_kernels::testkit::Problem<f32>;

pub use rnn_kernels::testkit::up;

/// Largest errors of `got` against the reference's `want`: (name, error, tolerance) for each
/// output, forward outputs at [`FWD_TOL`], gradients at [`GRAD_TOL`].
pub fn errors(got: &[Vec<f32>], want: &[Vec<f64>]) -> Vec<(&'static str, f64, f64)> {
    OUTPUTS
        .iter()
        .zip(got.iter().zip(want))
        .enumerate()
        .map(|(i, (name, (g, w)))| (*name, max_error(&up(g), w), if i < 3 { FWD_TOL } else { GRAD_TOL }))
        .collect()
}

/// Random configurations: every cell, sizes 1..20, 1..3 layers, both directions, with and
/// without bias, LSTM projections.
pub fn config() -> impl Strategy<Value = RnnConfig> {
    (0usize..4, 1usize..20, 1usize..20, 1usize..4, any::<bool>(), any::<bool>(), 0usize..6).prop_map(|(c, i, h, l, bi, bias, p)| {
        let cell = CellKind::ALL[c];
        let proj = if cell == CellKind::Lstm && h > 1 { p.min(h - 1) } else { 0 };
        RnnConfig::new(cell, i, h).num_layers(l).bidirectional(bi).bias(bias).proj_size(proj).build().unwrap()
    })
}

/// Every PyTorch case file under tests/fixtures (of this checkout, or of the one
/// `RNN_KERNELS_FIXTURES_DIR` names: a test binary built here and run elsewhere, `.ci/gpu.sh`).
pub fn case_files() -> Vec<PathBuf> {
    let dir = match std::env::var_os("RNN_KERNELS_FIXTURES_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    };
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    files.sort();
    assert!(files.len() >= 20, "the PyTorch fixtures are missing");
    files
}
