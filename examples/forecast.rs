//! Time-series forecasting with a GRU: one step ahead on a generated noisy multi-sine series.
//!
//! ```text
//! cargo run --release --example forecast
//! ```
//!
//! The series is `sin(2πt/20) + 0.5·sin(2πt/7.3 + 1) + 0.3·sin(2πt/53)` plus Gaussian noise of
//! standard deviation 0.1, 6,000 points: the first 5,000 train, the last 1,000 test. A 1-layer
//! GRU (hidden 32) reads the series and a linear layer predicts the next value at every step;
//! training minimises the mean squared error on random windows of 60 steps (the first 10 only
//! warm the state up) with Adam and gradient clipping from `rnn_kernels_nn`.
//!
//! It prints the test RMSE next to the naive forecast "the next value is the last one", and the
//! noise floor (0.1: no forecast can beat the noise), and exits non-zero if the GRU does not beat
//! the naive forecast.

use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{CellKind, Cpu, Params, Rnn, RnnConfig, SeqShape};
use rnn_kernels_nn::{clip_global_norm, Adam, AdamConfig, Linear};
use std::f64::consts::PI;
use std::process::ExitCode;
use std::time::Instant;

const NOISE: f64 = 0.1;

fn series(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|t| {
            let t = t as f64;
            let clean = (2.0 * PI * t / 20.0).sin() + 0.5 * (2.0 * PI * t / 7.3 + 1.0).sin() + 0.3 * (2.0 * PI * t / 53.0).sin();
            (clean + NOISE * rng.normal()) as f32
        })
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, rnn_kernels::Error> {
    let start = Instant::now();
    let (n, n_train) = (6_000, 5_000);
    let data = series(n, 42);
    let (hidden, window, warmup, batch, steps) = (32, 60, 10, 32, 600);

    let cfg = RnnConfig::new(CellKind::Gru, 1, hidden).build()?;
    let mut params = Params::<f32>::init_uniform(&cfg, 1)?;
    let mut rnn = Rnn::from_params(Cpu::new()?, &params)?;
    let mut head = Linear::new(hidden, 1, 2)?;
    let mut adam = Adam::new(&[params.as_slice().len(), hidden, 1], AdamConfig { lr: 5e-3, ..AdamConfig::default() })?;
    let mut rng = SplitMix64::new(3);
    let shape = SeqShape::new(window, batch)?;
    let mut reserve = Default::default();
    println!("GRU(1 -> {hidden}) + Linear({hidden} -> 1); {n_train} training points, {} test points", n - n_train);

    for step in 1..=steps {
        // x [T, B, 1]: windows starting at random points of the training part; targets the next values.
        let starts: Vec<usize> = (0..batch).map(|_| rng.below((n_train - window - 1) as u64) as usize).collect();
        let mut x = vec![0.0; window * batch];
        let mut target = vec![0.0; window * batch];
        for t in 0..window {
            for (b, &s) in starts.iter().enumerate() {
                x[t * batch + b] = data[s + t];
                target[t * batch + b] = data[s + t + 1];
            }
        }
        let out = rnn.forward_training(&shape, &x, None, None, &mut reserve)?;
        let mut pred = vec![0.0; window * batch];
        head.forward(&out.y, &mut pred)?;
        // Mean squared error over the steps after the warm-up; its gradient.
        let count = ((window - warmup) * batch) as f32;
        let mut dpred = vec![0.0; pred.len()];
        let mut mse = 0.0;
        for i in warmup * batch..pred.len() {
            let e = pred[i] - target[i];
            mse += e * e / count;
            dpred[i] = 2.0 * e / count;
        }
        let (mut dw, mut db, mut dy) = (vec![0.0; hidden], vec![0.0; 1], vec![0.0; out.y.len()]);
        head.backward(&out.y, &dpred, Some(&mut dy), &mut dw, &mut db)?;
        let mut dparams = rnn.backward(&reserve, Some(&dy), None, None)?.dparams.unwrap_or_default();
        clip_global_norm(&mut [&mut dparams, &mut dw, &mut db], 1.0)?;
        adam.step(&mut [params.as_mut_slice(), &mut head.weight, &mut head.bias], &[&dparams, &dw, &db])?;
        rnn.update_params(params.as_slice())?;
        if step % 150 == 0 {
            println!("step {step:>4}: training RMSE {:.4}", mse.sqrt());
        }
    }

    // Test: one pass over the whole series (B = 1), scoring the one-step forecasts of the test
    // part; the training part before it warms the state up.
    let out = rnn.forward(&SeqShape::new(n - 1, 1)?, &data[..n - 1], None, None)?;
    let mut pred = vec![0.0; n - 1];
    head.forward(&out.y, &mut pred)?;
    let rmse = |f: &dyn Fn(usize) -> f32| {
        let sq: f64 = (n_train..n - 1).map(|t| ((f(t) - data[t + 1]) as f64).powi(2)).sum();
        (sq / (n - 1 - n_train) as f64).sqrt()
    };
    let (gru, naive) = (rmse(&|t| pred[t]), rmse(&|t| data[t]));
    println!("test RMSE, one step ahead, {} points:", n - 1 - n_train);
    println!("  GRU                       {gru:.4}");
    println!("  naive (last value)        {naive:.4}");
    println!("  noise floor               {NOISE:.4}");
    let ok = gru < naive;
    println!(
        "GRU / naive = {:.2}: {} ({:.1} s)",
        gru / naive,
        if ok { "the GRU beats the naive forecast" } else { "FAIL: the GRU does not beat the naive forecast" },
        start.elapsed().as_secs_f64()
    );
    Ok(ok)
}
