//! The cost of the cell options on the CPU backend: each option against the plain cell on the
//! same problem, timed side by side in one process, the variants alternating within each round
//! (so that a slow spell of the machine hits them all), medians over the rounds, as ratios to
//! the plain cell.
//!
//! ```text
//! cargo run --release --example options_bench -- [--cell lstm|rnn_tanh|rnn_relu] [--input 512] \
//!     [--hidden 512] [--batch 64] [--steps 100] [--threads 2] [--rounds 7]
//! ```
//!
//! Prints one line per variant: inference and train (a training forward plus the full backward)
//! medians in ms and their ratios to the plain cell. `RNN_KERNELS_ISA` forces the ISA.

use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{CellKind, Cpu, Params, Rnn, RnnConfig, SeqShape};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut cell, mut input, mut hidden, mut batch, mut steps, mut threads, mut rounds) = (CellKind::Lstm, 512, 512, 64, 100, 2, 7);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--cell" => cell = v().parse().expect("--cell"),
            "--input" => input = v().parse().expect("--input"),
            "--hidden" => hidden = v().parse().expect("--hidden"),
            "--batch" => batch = v().parse().expect("--batch"),
            "--steps" => steps = v().parse().expect("--steps"),
            "--threads" => threads = v().parse().expect("--threads"),
            "--rounds" => rounds = v().parse().expect("--rounds"),
            other => panic!("unknown argument {other:?}"),
        }
    }
    let base = RnnConfig::new(cell, input, hidden);
    let mut variants: Vec<(&str, RnnConfig)> = vec![("plain", base.clone().build().unwrap())];
    variants.push(("gate_clip", base.clone().gate_clip(3.0).build().unwrap()));
    if cell == CellKind::Lstm {
        variants.push(("peephole", base.clone().peephole(true).build().unwrap()));
        variants.push(("input_forget", base.clone().input_forget(true).build().unwrap()));
        variants.push(("all three", base.clone().peephole(true).gate_clip(3.0).input_forget(true).build().unwrap()));
    }
    let shape = SeqShape::new(steps, batch).unwrap();
    let mut rng = SplitMix64::new(1);
    let n = |s: [usize; 3]| s.iter().product::<usize>();
    let x: Vec<f32> = (0..n(shape.x_shape(&variants[0].1))).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let dy: Vec<f32> = (0..n(shape.y_shape(&variants[0].1))).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let rnns: Vec<Rnn<f32, Cpu>> = variants
        .iter()
        .map(|(_, cfg)| {
            let p = Params::<f32>::init_uniform(cfg, 7).unwrap();
            Rnn::new(Cpu::with_threads(threads).unwrap(), cfg, p.as_slice()).unwrap()
        })
        .collect();
    let mut times = vec![[Vec::new(), Vec::new()]; rnns.len()];
    for round in 0..=rounds {
        for (k, rnn) in rnns.iter().enumerate() {
            let t0 = Instant::now();
            std::hint::black_box(rnn.forward(&shape, &x, None, None).unwrap());
            let t1 = Instant::now();
            let mut reserve = Default::default();
            rnn.forward_training(&shape, &x, None, None, &mut reserve).unwrap();
            std::hint::black_box(rnn.backward(&reserve, Some(&dy), None, None).unwrap());
            let t2 = Instant::now();
            // Round 0 warms up.
            if round > 0 {
                times[k][0].push((t1 - t0).as_secs_f64() * 1e3);
                times[k][1].push((t2 - t1).as_secs_f64() * 1e3);
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let plain = [median(&times[0][0]), median(&times[0][1])];
    println!("{cell}-{input}-{hidden}-{batch}-{steps}, {threads} threads, {rounds} rounds, median ms (ratio to plain)");
    println!("{:<14} {:>20} {:>20}", "variant", "inference", "train");
    for ((name, _), t) in variants.iter().zip(&times) {
        let (i, tr) = (median(&t[0]), median(&t[1]));
        println!("{name:<14} {:>11.1} ({:>5.3}) {:>11.1} ({:>5.3})", i, i / plain[0], tr, tr / plain[1]);
    }
}
