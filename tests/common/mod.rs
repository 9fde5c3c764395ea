//! Shared helpers for the integration tests: random problems and the scalar loss whose
//! gradients backward computes.
#![allow(dead_code)]

pub mod fd;
pub mod masked_cases;
pub mod parity;
pub mod tempdir;

use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{CellKind, Params, Reference, RnnConfig, SeqShape};

/// A random problem in f64 (the testkit's), made by [`F64Problem::random`].
pub type Problem = rnn_kernels::testkit::Problem<f64>;

fn normals(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| scale * rng.normal()).collect()
}

/// The f64 problems of the gradient, variable-length and truncated-BPTT tests.
pub trait F64Problem {
    /// Parameters uniform in ±`param_scale`/sqrt(H), everything else normal (`h0`, `c0` with
    /// standard deviation 0.5).
    fn random(cfg: &RnnConfig, shape: &SeqShape, seed: u64, param_scale: f64) -> Self;
    /// `L = Σ y·dy + Σ hn·dhn + Σ cn·dcn`, by an f64 reference inference pass (a training
    /// pass, with the problem's masks, for a configuration with dropout, zoneout, recurrent or
    /// input dropout).
    fn loss(&self) -> f64;
}

impl F64Problem for Problem {
    fn random(cfg: &RnnConfig, shape: &SeqShape, seed: u64, param_scale: f64) -> Problem {
        let mut rng = SplitMix64::new(seed);
        let mut params = Params::<f64>::init_uniform(cfg, seed ^ 0x5eed).unwrap().into_vec();
        for p in &mut params {
            *p *= param_scale;
        }
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let lstm = cfg.cell().has_cell_state();
        Problem {
            x: normals(&mut rng, n(shape.x_shape(cfg)), 1.0),
            h0: normals(&mut rng, n(shape.h_shape(cfg)), 0.5),
            c0: lstm.then(|| normals(&mut rng, n(shape.c_shape(cfg)), 0.5)),
            dy: normals(&mut rng, n(shape.y_shape(cfg)), 1.0),
            dhn: normals(&mut rng, n(shape.h_shape(cfg)), 1.0),
            dcn: lstm.then(|| normals(&mut rng, n(shape.c_shape(cfg)), 1.0)),
            params,
            cfg: cfg.clone(),
            shape: shape.clone(),
        }
    }

    fn loss(&self) -> f64 {
        let c = &self.cfg;
        let masked = c.dropout().is_some()
            || c.zoneout().is_some()
            || c.zoneout_cell().is_some()
            || c.recurrent_dropout().is_some()
            || c.input_dropout().is_some();
        let y = if masked { self.run_training_forward(Reference) } else { self.run_inference(Reference) };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        dot(&y[0], &self.dy) + dot(&y[1], &self.dhn) + self.dcn.as_ref().map_or(0.0, |dcn| dot(&y[2], dcn))
    }
}

/// Every configuration the gradient and parity tests sweep: each cell, 1 to 3 layers, both
/// directions, with and without bias, and LSTM with projection. Sizes are deliberately not
/// multiples of 4 or 8.
pub fn sweep_configs(input: usize, hidden: usize, proj: usize) -> Vec<RnnConfig> {
    let mut out = Vec::new();
    for cell in CellKind::ALL {
        for layers in 1..=3 {
            for bidirectional in [false, true] {
                for bias in [true, false] {
                    let projs: &[usize] = if cell == CellKind::Lstm { &[0, proj] } else { &[0] };
                    for &p in projs {
                        out.push(
                            RnnConfig::new(cell, input, hidden)
                                .num_layers(layers)
                                .bidirectional(bidirectional)
                                .bias(bias)
                                .proj_size(p)
                                .build()
                                .unwrap(),
                        );
                    }
                }
            }
        }
    }
    out
}

/// A readable name for a configuration in failure messages.
pub fn describe(cfg: &RnnConfig, shape: &SeqShape) -> String {
    format!(
        "{} I={} H={} L={} bidir={} bias={} proj={} T={} B={} lengths={:?}",
        cfg.cell(),
        cfg.input_size(),
        cfg.hidden_size(),
        cfg.num_layers(),
        cfg.bidirectional(),
        cfg.bias(),
        cfg.proj_size(),
        shape.steps(),
        shape.batch(),
        shape.lengths()
    )
}
