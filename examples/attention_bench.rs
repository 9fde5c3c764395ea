//! Times one attention forward + backward on a host backend and prints one JSON line, in the
//! format of `benches/attention.py`'s PyTorch peer, which runs the two side by side.
//!
//! ```text
//! cargo run --release --example attention_bench -- [--score general] [--batch 64] [--queries 50]
//!     [--steps 50] [--hidden 512] [--output 512] [--threads 2] [--reps 10] [--warmup 2]
//!     [--backend cpu|reference] [--varlen]
//! ```
//!
//! Queries and keys are `--hidden` wide (`Hq = Hk = H`; the concat and additive scores take
//! `A = H`), the attentional hidden state `--output` wide (0: none). One rep is the forward
//! pass and the backward pass from `d_context` and `d_hidden` (all ones), the way a training
//! step runs them. `--varlen`: encoder lengths spread over `1..=S` instead of all `S`.

use rnn_kernels::attention::{AttentionBackend, AttentionConfig, AttentionShape, AttentionUpstream, Score};
use rnn_kernels::{Cpu, Reference};
use std::time::Instant;

struct Args {
    score: Score,
    batch: usize,
    queries: usize,
    steps: usize,
    hidden: usize,
    output: usize,
    threads: usize,
    reps: usize,
    warmup: usize,
    backend: String,
    varlen: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        score: Score::General,
        batch: 64,
        queries: 50,
        steps: 50,
        hidden: 512,
        output: 512,
        threads: 2,
        reps: 10,
        warmup: 2,
        backend: "cpu".into(),
        varlen: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--varlen" {
            a.varlen = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag}: a value is missing"))?;
        let num = || value.parse::<usize>().map_err(|_| format!("{flag}: a whole number, got {value:?}"));
        match flag.as_str() {
            "--score" => a.score = value.parse().map_err(|e: rnn_kernels::Error| e.to_string())?,
            "--batch" => a.batch = num()?,
            "--queries" => a.queries = num()?,
            "--steps" => a.steps = num()?,
            "--hidden" => a.hidden = num()?,
            "--output" => a.output = num()?,
            "--threads" => a.threads = num()?,
            "--reps" => a.reps = num()?.max(1),
            "--warmup" => a.warmup = num()?,
            "--backend" => a.backend = value,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn run<B: AttentionBackend<f32>>(backend: &B, a: &Args) -> Result<f64, rnn_kernels::Error> {
    let mut cfg = AttentionConfig::new(a.score, a.hidden, a.hidden).output_size(a.output);
    if matches!(a.score, Score::Concat | Score::Additive) {
        cfg = cfg.attn_size(a.hidden);
    }
    let cfg = cfg.build()?;
    let lengths = (0..a.batch).map(|b| if a.varlen { 1 + (b * 7919) % a.steps } else { a.steps }).collect();
    let shape = AttentionShape::new(a.queries, a.steps, lengths)?;
    let mut rng = rnn_kernels::testkit::SplitMix64::new(1);
    let mut fill = |n: usize, r: f64| (0..n).map(|_| rng.uniform(-r, r) as f32).collect::<Vec<f32>>();
    let params = fill(cfg.param_len(), 1.0 / (a.hidden as f64).sqrt());
    let keys = fill(a.steps * a.batch * a.hidden, 1.0);
    let queries = fill(a.queries * a.batch * a.hidden, 1.0);
    let d_context = vec![1.0f32; a.queries * a.batch * a.hidden];
    let d_hidden = vec![1.0f32; a.queries * a.batch * a.output];
    let mut times = Vec::new();
    for rep in 0..a.warmup + a.reps {
        let t = Instant::now();
        let out = backend.attention_forward(&cfg, &shape, &params, &keys, &queries)?;
        let up = AttentionUpstream { d_weights: None, d_context: Some(&d_context), d_hidden: (a.output > 0).then_some(&d_hidden[..]) };
        let g = backend.attention_backward(&cfg, &shape, &params, &keys, &queries, &out, up)?;
        std::hint::black_box(&g);
        if rep >= a.warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("attention_bench: {e}");
            std::process::exit(2);
        }
    };
    let result = match a.backend.as_str() {
        "cpu" => Cpu::with_threads(a.threads).and_then(|cpu| run(&cpu, &a)),
        "reference" => run(&Reference, &a),
        other => {
            eprintln!("attention_bench: --backend cpu or reference, got {other:?}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(ms) => println!(
            "{{\"impl\":\"rnn-kernels-{}\",\"config\":\"attn-{}-b{}-tq{}-s{}-h{}-o{}{}\",\"threads\":{},\"median_ms\":{:.4}}}",
            a.backend,
            a.score.name(),
            a.batch,
            a.queries,
            a.steps,
            a.hidden,
            a.output,
            if a.varlen { "-varlen" } else { "" },
            a.threads,
            ms
        ),
        Err(e) => {
            eprintln!("attention_bench: {e}");
            std::process::exit(1);
        }
    }
}
