//! The f32 parity harness shared by the optimised backends' tests (CPU, CUDA): one random
//! problem in f32, run on a backend and on the f64 reference, compared tensor by tensor.
#![allow(dead_code)]

use proptest::prelude::*;
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{Backend, CellKind, Params, Reference, Rnn, RnnConfig, SeqShape};
use std::path::PathBuf;

/// Forward outputs.
pub const FWD_TOL: f64 = 1e-5;
/// Gradients.
pub const GRAD_TOL: f64 = 1e-4;

/// One problem in f32, and the same numbers in f64 for the reference.
pub struct Problem {
    pub cfg: RnnConfig,
    pub shape: SeqShape,
    pub params: Vec<f32>,
    pub x: Vec<f32>,
    pub h0: Vec<f32>,
    pub c0: Option<Vec<f32>>,
    pub dy: Vec<f32>,
    pub dhn: Vec<f32>,
    pub dcn: Option<Vec<f32>>,
}

pub fn up(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

impl Problem {
    /// Inputs uniform in ±`x_range` (±25 saturates every gate), parameters PyTorch-initialised.
    pub fn new(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> Problem {
        let mut rng = SplitMix64::new(seed);
        let mut u = |n: usize, r: f64| (0..n).map(|_| rng.uniform(-r, r) as f32).collect::<Vec<f32>>();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let lstm = cfg.cell().has_cell_state();
        Problem {
            x: u(n(shape.x_shape(cfg)), x_range),
            h0: u(n(shape.h_shape(cfg)), 1.0),
            c0: lstm.then(|| u(n(shape.c_shape(cfg)), 2.0)),
            dy: u(n(shape.y_shape(cfg)), 1.0),
            dhn: u(n(shape.h_shape(cfg)), 1.0),
            dcn: lstm.then(|| u(n(shape.c_shape(cfg)), 1.0)),
            params: Params::<f32>::init_uniform(cfg, seed ^ 0xabc).into_vec(),
            cfg: cfg.clone(),
            shape: shape.clone(),
        }
    }

    /// Forward (training) and backward on `backend`: (y, hn, cn, dx, dh0, dc0, dparams).
    pub fn run_f32<B: Backend<f32, Buf = [f32]>>(&self, backend: B) -> Vec<Vec<f32>> {
        let rnn = Rnn::new(backend, &self.cfg, &self.params[..]).unwrap();
        let mut reserve = Default::default();
        let o = rnn.forward_training(&self.shape, &self.x, Some(&self.h0), self.c0.as_deref(), &mut reserve).unwrap();
        let g = rnn.backward(&reserve, Some(&self.dy), Some(&self.dhn), self.dcn.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
    }

    /// Forward in inference mode on `backend`: (y, hn, cn).
    pub fn run_inference_f32<B: Backend<f32, Buf = [f32]>>(&self, backend: B) -> Vec<Vec<f32>> {
        let rnn = Rnn::new(backend, &self.cfg, &self.params[..]).unwrap();
        let o = rnn.forward(&self.shape, &self.x, Some(&self.h0), self.c0.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default()]
    }

    pub fn run_reference(&self) -> Vec<Vec<f64>> {
        let rnn = Rnn::new(Reference, &self.cfg, &up(&self.params)[..]).unwrap();
        let mut reserve = Default::default();
        let c0 = self.c0.as_deref().map(up);
        let o = rnn.forward_training(&self.shape, &up(&self.x), Some(&up(&self.h0)), c0.as_deref(), &mut reserve).unwrap();
        let dcn = self.dcn.as_deref().map(up);
        let g = rnn.backward(&reserve, Some(&up(&self.dy)), Some(&up(&self.dhn)), dcn.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
    }

    /// Largest errors of `got` against the reference: (forward, gradients), with names.
    pub fn errors(&self, got: &[Vec<f32>], want: &[Vec<f64>]) -> Vec<(&'static str, f64, f64)> {
        const NAMES: [&str; 7] = ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"];
        NAMES
            .iter()
            .zip(got.iter().zip(want))
            .enumerate()
            .map(|(i, (name, (g, w)))| (*name, max_error(&up(g), w), if i < 3 { FWD_TOL } else { GRAD_TOL }))
            .collect()
    }
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
