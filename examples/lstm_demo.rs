//! A first look: a 2-layer bidirectional LSTM on a variable-length batch, forward and backward
//! through the reference backend, its shapes, and a finite-difference check of its gradients.
//!
//! ```text
//! cargo run --release --example lstm_demo
//! ```
//!
//! Exits non-zero if the gradient check fails.

use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{CellKind, Params, Reference, Rnn, RnnConfig, SeqShape};
use std::process::ExitCode;

fn main() -> Result<ExitCode, rnn_kernels::Error> {
    let cfg = RnnConfig::new(CellKind::Lstm, 8, 16).num_layers(2).bidirectional(true).build()?;
    let params = Params::<f64>::init_uniform(&cfg, 2024)?;
    let rnn = Rnn::from_params(Reference, &params)?;

    // T = 12 steps, B = 4 sequences of lengths 12, 5, 9, 1 (unsorted; PyTorch packed semantics).
    let shape = SeqShape::with_lengths(12, vec![12, 5, 9, 1])?;
    let mut rng = SplitMix64::new(7);
    let mut randn = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
    let x = randn(shape.x_shape(&cfg).iter().product());

    let mut reserve = Default::default();
    let out = rnn.forward_training(&shape, &x, None, None, &mut reserve)?;
    let dy = randn(out.y.len());
    let dhn = randn(out.hn.len());
    let grads = rnn.backward(&reserve, Some(&dy), Some(&dhn), None)?;

    println!("LSTM: input {}, hidden {}, {} layers, bidirectional", cfg.input_size(), cfg.hidden_size(), cfg.num_layers());
    println!("batch: T = {}, B = {}, lengths {:?}", shape.steps(), shape.batch(), shape.lengths().unwrap());
    println!("x  {:?}   y  {:?}", shape.x_shape(&cfg), shape.y_shape(&cfg));
    println!("hn {:?}   cn {:?}", shape.h_shape(&cfg), shape.c_shape(&cfg));
    println!("dx {:?}   dh0 {:?}   dc0 {:?}", shape.x_shape(&cfg), shape.h_shape(&cfg), shape.c_shape(&cfg));
    println!("parameters ({} values) and their gradients, PyTorch names:", params.layout().len());
    for spec in params.layout().specs() {
        println!("  {:<24} {:?}", spec.name, spec.shape);
    }

    // L = Σ y·dy + Σ hn·dhn; its gradient is what backward computed.
    let loss = |p: &[f64], x: &[f64]| -> Result<f64, rnn_kernels::Error> {
        let o = Rnn::new(Reference, &cfg, p)?.forward(&shape, x, None, None)?;
        Ok(o.y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>() + o.hn.iter().zip(&dhn).map(|(a, b)| a * b).sum::<f64>())
    };
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    println!("gradient check (central differences, h = {h:e}):");
    let dparams = grads.dparams.as_ref().expect("backward returns parameter gradients");
    let mut probe = |what: String, analytic: f64, numeric: f64| {
        let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-3);
        worst = worst.max(rel);
        println!("  {what:<28} analytic {analytic:+.9e}  numeric {numeric:+.9e}  rel err {rel:.1e}");
    };
    for name in ["weight_ih_l0", "weight_hh_l0_reverse", "bias_hh_l1", "weight_hh_l1_reverse"] {
        let spec = params.layout().find(name).expect("a parameter of this LSTM");
        for k in [0, spec.len() / 2, spec.len() - 1] {
            let i = spec.offset + k;
            let (mut pp, mut pm) = (params.as_slice().to_vec(), params.as_slice().to_vec());
            pp[i] += h;
            pm[i] -= h;
            probe(format!("{name}[{k}]"), dparams[i], (loss(&pp, &x)? - loss(&pm, &x)?) / (2.0 * h));
        }
    }
    for i in [0, x.len() / 3, x.len() - 1] {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += h;
        xm[i] -= h;
        probe(format!("x[{i}]"), grads.dx[i], (loss(params.as_slice(), &xp)? - loss(params.as_slice(), &xm)?) / (2.0 * h));
    }
    let ok = worst < 1e-6;
    println!("largest relative error {worst:.2e}: {}", if ok { "ok" } else { "FAIL" });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
