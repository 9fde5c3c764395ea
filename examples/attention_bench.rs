//! Times one attention forward + backward on a backend and prints one JSON line, in the format
//! of `benches/attention.py`'s PyTorch peer, which runs the two side by side.
//!
//! ```text
//! cargo run --release --example attention_bench -- [--score general] [--batch 64] [--queries 50]
//!     [--steps 50] [--hidden 512] [--output 512] [--threads 2] [--reps 10] [--warmup 2]
//!     [--backend cpu|reference|cuda] [--varlen] [--alloc]
//! ```
//!
//! Queries and keys are `--hidden` wide (`Hq = Hk = H`; the concat and additive scores take
//! `A = H`), the attentional hidden state `--output` wide (0: none). One rep is the keys'
//! memory, the forward pass, the backward pass from `d_context` and `d_hidden` (all ones) and
//! the memory's backward, the way a training step runs them (the memory made once per rep, as
//! PyTorch's autograd keeps `K W_aᵀ` for the backward). `--varlen`: encoder lengths spread over `1..=S` instead of all `S`.
//!
//! On the host backends each rep writes into the previous rep's results (the `_into` calls,
//! as a training loop that keeps its buffers from step to step); `--alloc` makes every result
//! anew instead (`attention_memory`, `attention_forward_with`, ...), as a loop that drops them.
//!
//! `--backend cuda` (built with `--features cuda`) runs on device buffers, as a decoder that
//! stays on the GPU does: the inputs uploaded once, then per rep the keys' memory, the forward,
//! the backward and the memory's backward (`Cuda::attention_*`), timed to a
//! `Cuda::synchronize` (the peer: `benches/attention.py --device cuda`).

use rnn_kernels::attention::{
    AttentionBackend, AttentionConfig, AttentionGrads, AttentionMemoryGrads, AttentionShape, AttentionUpstream, Score,
};
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
    alloc: bool,
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
        alloc: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--varlen" || flag == "--alloc" {
            a.varlen |= flag == "--varlen";
            a.alloc |= flag == "--alloc";
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

/// The problem of a run: the configuration, the shape and the inputs.
struct Problem {
    cfg: AttentionConfig,
    shape: AttentionShape,
    params: Vec<f32>,
    keys: Vec<f32>,
    queries: Vec<f32>,
    d_context: Vec<f32>,
    d_hidden: Vec<f32>,
}

fn problem(a: &Args) -> Result<Problem, rnn_kernels::Error> {
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
    Ok(Problem { cfg, shape, params, keys, queries, d_context, d_hidden })
}

/// The median over `a.reps` reps (after `a.warmup`) of `rep`'s time in ms.
fn median_ms(a: &Args, mut rep: impl FnMut() -> Result<(), rnn_kernels::Error>) -> Result<f64, rnn_kernels::Error> {
    let mut times = Vec::new();
    for r in 0..a.warmup + a.reps {
        let t = Instant::now();
        rep()?;
        if r >= a.warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A rep: the keys' memory, forward, backward and the memory's backward, as a training step
/// runs them (the memory made once, not again for the backward), into the previous rep's
/// results (or, with `--alloc`, into new ones).
fn run<B: AttentionBackend<f32>>(backend: &B, a: &Args) -> Result<f64, rnn_kernels::Error> {
    let p = problem(a)?;
    if !a.alloc {
        let (mut memory, mut out, mut dm) = Default::default();
        let (mut g, mut k) = (AttentionGrads::default(), AttentionGrads::default());
        return median_ms(a, || {
            backend.attention_memory_into(&p.cfg, &p.shape, &p.params, &p.keys, &mut memory)?;
            backend.attention_forward_with_into(&p.cfg, &p.shape, &p.params, &memory, &p.queries, &mut out)?;
            AttentionMemoryGrads::reset(&mut dm, &memory);
            let d_hidden = (a.output > 0).then_some(&p.d_hidden[..]);
            let up = AttentionUpstream { d_weights: None, d_context: Some(&p.d_context), d_hidden };
            backend.attention_backward_with_into(&p.cfg, &p.shape, &p.params, &memory, &p.queries, &out, up, &mut dm, &mut g)?;
            backend.attention_memory_backward_into(&p.cfg, &p.shape, &p.params, &memory, &dm, &mut k)?;
            std::hint::black_box((&g, &k));
            Ok(())
        });
    }
    median_ms(a, || {
        let memory = backend.attention_memory(&p.cfg, &p.shape, &p.params, &p.keys)?;
        let out = backend.attention_forward_with(&p.cfg, &p.shape, &p.params, &memory, &p.queries)?;
        let mut dm = AttentionMemoryGrads::new(&memory);
        let d_hidden = (a.output > 0).then_some(&p.d_hidden[..]);
        let up = AttentionUpstream { d_weights: None, d_context: Some(&p.d_context), d_hidden };
        let g = backend.attention_backward_with(&p.cfg, &p.shape, &p.params, &memory, &p.queries, &out, up, &mut dm)?;
        let k = backend.attention_memory_backward(&p.cfg, &p.shape, &p.params, &memory, &dm)?;
        std::hint::black_box((&g, &k));
        Ok(())
    })
}

/// A rep on device buffers: the keys' memory, forward, backward and the memory's backward.
#[cfg(feature = "cuda")]
fn run_cuda(a: &Args) -> Result<f64, rnn_kernels::Error> {
    use rnn_kernels::CudaAttentionUpstream;
    let cuda = rnn_kernels::Cuda::new()?;
    let p = problem(a)?;
    let (params, keys, queries) = (cuda.upload(&p.params)?, cuda.upload(&p.keys)?, cuda.upload(&p.queries)?);
    let (d_context, d_hidden) = (cuda.upload(&p.d_context)?, cuda.upload(&p.d_hidden)?);
    median_ms(a, || {
        let memory = cuda.attention_memory(&p.cfg, &p.shape, &params, &keys)?;
        let out = cuda.attention_forward_with(&p.cfg, &p.shape, &params, &memory, &queries)?;
        let mut dm = cuda.attention_memory_grads(&memory)?;
        let up = CudaAttentionUpstream { d_weights: None, d_context: Some(&d_context), d_hidden: (a.output > 0).then_some(&d_hidden) };
        let g = cuda.attention_backward_with(&p.cfg, &p.shape, &params, &memory, &queries, &out, up, &mut dm)?;
        let k = cuda.attention_memory_backward(&p.cfg, &p.shape, &params, &memory, &dm)?;
        cuda.synchronize()?;
        std::hint::black_box((&g, &k));
        Ok(())
    })
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &Args) -> Result<f64, rnn_kernels::Error> {
    Err(rnn_kernels::Error::InvalidArgument {
        arg: "--backend".into(),
        expected: "cpu or reference (cuda: build with --features cuda)".into(),
        got: "cuda".into(),
    })
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
        "cuda" => run_cuda(&a),
        other => {
            eprintln!("attention_bench: --backend cpu, reference or cuda, got {other:?}");
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
