//! The time of a decoder's training step through the step API on the CPU backend
//! (`Rnn::start_steps`, `step`, `backward_steps`), with teacher forcing: the forward steps, the
//! backward walk (each step's backward and the parameters' gradients), and, for scale, one call
//! over the whole sequence (forward and backward) on the same inputs. Rounds alternate the two;
//! each line is the median over rounds.
//!
//! ```text
//! cargo run --release --example decoder_cost -- [--cell lstm|gru] [--layers 1] [--input 256]
//!     [--hidden 256] [--batch 32] [--steps 30] [--rounds 15] [--threads N]
//! ```

use rnn_kernels::masks::MaskStream;
use rnn_kernels::{CellKind, Cpu, Params, Rnn, RnnConfig, SeqShape};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name}: expected a number")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cell = match args.iter().position(|a| a == "--cell").and_then(|i| args.get(i + 1)).map(String::as_str) {
        None | Some("lstm") => CellKind::Lstm,
        Some("gru") => CellKind::Gru,
        Some(c) => return Err(format!("--cell: expected lstm or gru, got {c}").into()),
    };
    let (layers, input, hidden) = (arg(&args, "--layers", 1)?, arg(&args, "--input", 256)?, arg(&args, "--hidden", 256)?);
    let (batch, steps, rounds) = (arg(&args, "--batch", 32)?, arg(&args, "--steps", 30)?, arg(&args, "--rounds", 15)?);
    let threads = arg(&args, "--threads", std::thread::available_parallelism().map_or(1, |n| n.get()))?;
    let cfg = RnnConfig::new(cell, input, hidden).num_layers(layers).build()?;
    let cpu = Cpu::with_threads(threads)?;
    let isa = cpu.isa();
    let rnn = Rnn::new(cpu, &cfg, &Params::<f32>::init_uniform(&cfg, 1)?.into_vec()[..])?;
    let x: Vec<f32> = (0..steps * batch * input).map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5).collect();
    let dy: Vec<f32> = (0..steps * batch * hidden).map(|i| ((i * 104729 % 1000) as f32 / 1000.0) - 0.5).collect();
    let shape = SeqShape::new(steps, batch)?;
    let (mut fwd, mut bwd, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let mut reserve = Default::default();
    for round in 0..=rounds {
        let t0 = Instant::now();
        let mut run = rnn.start_steps(batch, None, None, true, Some(MaskStream::new(0, 0)))?;
        for xt in x.chunks(batch * input) {
            rnn.step(&mut run, xt)?;
        }
        let t1 = Instant::now();
        let mut back = rnn.backward_steps(&run, None, None)?;
        while let Some(t) = back.next_step() {
            back.step(&rnn, Some(&dy[t * batch * hidden..(t + 1) * batch * hidden]))?;
        }
        let g = back.finish()?;
        let t2 = Instant::now();
        std::hint::black_box(g);
        let t3 = Instant::now();
        rnn.forward_training(&shape, &x, None, None, &mut reserve)?;
        let g = rnn.backward(&reserve, Some(&dy), None, None)?;
        let t4 = Instant::now();
        std::hint::black_box(g);
        // Round 0 warms up (and tunes).
        if round > 0 {
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
            whole.push((t4 - t3).as_secs_f64() * 1e3);
        }
    }
    println!(
        "{cell:?} layers {layers} input {input} hidden {hidden} batch {batch} steps {steps}, {isa:?}, {threads} threads, {rounds} rounds: \
         steps forward {:.3} ms, steps backward {:.3} ms, whole call forward+backward {:.3} ms",
        median(fwd),
        median(bwd),
        median(whole)
    );
    Ok(())
}
