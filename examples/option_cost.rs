//! The cost of the cell options on the CPU backend, each against its plain stack in the same
//! run: reverse-only, batch-first and the cell's own options (peephole, gate_clip, input_forget
//! for an LSTM; gate_clip and linear_before_reset=false for a GRU; gate_clip for an RNN) against
//! the forward time-major stack, merge by sum against the concatenating bidirectional stack.
//! Options a cell does not have are left out of its table. The variants run in turn, round after round,
//! so that a change of the machine's load touches them alike; the table gives each variant's
//! median time and the median over rounds of its ratio to its baseline. Training reuses one
//! reserve per variant across its calls, as a training loop does.
//!
//! ```text
//! cargo run --release --example option_cost -- [--cells lstm,gru] [--input 512] [--hidden 512]
//!     [--batch 64] [--steps 100] [--rounds 7] [--threads N] [--modes inference,train]
//!     [--variants forward,direction=reverse,batch_first,bidirectional,merge=sum,peephole,
//!      gate_clip,input_forget,linear_before_reset=false]
//! ```
//!
//! A variant whose baseline is not among `--variants` is compared with itself.

use rnn_kernels::{CellKind, Cpu, Direction, HostReserve, Merge, Params, Rnn, RnnConfig, SeqShape};

/// The CPU backend's reserve.
type Reserve = HostReserve<f32>;
use std::time::Instant;

struct Args {
    cells: Vec<CellKind>,
    input: usize,
    hidden: usize,
    batch: usize,
    steps: usize,
    rounds: usize,
    threads: usize,
    modes: Vec<bool>,
    /// The variants to run (all when empty).
    only: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        cells: vec![CellKind::Lstm, CellKind::Gru],
        input: 512,
        hidden: 512,
        batch: 64,
        steps: 100,
        rounds: 7,
        threads: 0,
        modes: vec![false, true],
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag}: a value is missing"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--cells" => a.cells = value.split(',').map(|c| c.parse::<CellKind>().map_err(|e| e.to_string())).collect::<Result<_, _>>()?,
            "--input" => a.input = num()?,
            "--hidden" => a.hidden = num()?,
            "--batch" => a.batch = num()?,
            "--steps" => a.steps = num()?,
            "--rounds" => a.rounds = num()?,
            "--threads" => a.threads = num()?,
            "--variants" => a.only = value.split(',').map(String::from).collect(),
            "--modes" => {
                a.modes = value
                    .split(',')
                    .map(|m| match m {
                        "inference" => Ok(false),
                        "train" => Ok(true),
                        _ => Err(format!("--modes: inference, train; got {m:?}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Nanoseconds the threads of this process have run on a CPU (the sum of Linux's
/// `/proc/self/task/*/schedstat`), or `None` where that is not available.
fn process_cpu_ns() -> Option<u64> {
    let mut sum = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        sum += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// One timed call: inference, or a training forward and its backward. With `--threads 1` (no
/// helper threads spinning) its time is the process's time on a CPU, which other programs
/// sharing the machine do not lengthen as they lengthen wall time; else wall time.
///
/// Training reuses the variant's `reserve` from call to call, as a training loop does (the
/// reserve keeps the saved activations and lends backward its buffers): a fresh one per call
/// would time the first touch of its tens of megabytes, not the kernels.
fn time_one(
    rnn: &Rnn<f32, Cpu>,
    (shape, x, dy): (&SeqShape, &[f32], &[f32]),
    reserve: &mut Reserve,
    train: bool,
    cpu_time: bool,
) -> Result<f64, rnn_kernels::Error> {
    let start = Instant::now();
    let cpu0 = process_cpu_ns().filter(|_| cpu_time);
    if train {
        rnn.forward_training(shape, x, None, None, reserve)?;
        rnn.backward(reserve, Some(dy), None, None)?;
    } else {
        rnn.forward(shape, x, None, None)?;
    }
    Ok(match (cpu0, process_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e6,
        _ => start.elapsed().as_secs_f64() * 1e3,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let cpu = if a.threads == 0 { Cpu::new()? } else { Cpu::with_threads(a.threads)? };
    let shape = SeqShape::new(a.steps, a.batch)?;
    let cpu_time = a.threads == 1 && process_cpu_ns().is_some();
    println!(
        "cpu isa {}, {} rounds, T={} B={} I={} H={}, {}",
        cpu.isa(),
        a.rounds,
        a.steps,
        a.batch,
        a.input,
        a.hidden,
        if cpu_time { "CPU time" } else { "wall time" }
    );
    println!("| config | mode | variant | baseline | median ms | ratio to baseline (median of rounds) |");
    println!("| --- | --- | --- | --- | ---: | ---: |");
    for &cell in &a.cells {
        let base = || RnnConfig::new(cell, a.input, a.hidden);
        // (name, configuration, index of its baseline)
        let mut variants: Vec<(&str, RnnConfig, usize)> = vec![
            ("forward", base().build()?, 0),
            ("direction=reverse", base().direction(Direction::Reverse).build()?, 0),
            ("batch_first", base().batch_first(true).build()?, 0),
            ("bidirectional", base().bidirectional(true).build()?, 3),
            ("merge=sum", base().bidirectional(true).merge(Merge::Sum).build()?, 3),
        ];
        // The cell's own options (a configuration that does not build is an option the cell
        // does not have). The clip threshold is one that clamps some gates of this problem.
        let cell_options = [
            ("peephole", base().peephole(true)),
            ("gate_clip", base().gate_clip(3.0)),
            ("input_forget", base().input_forget(true)),
            ("linear_before_reset=false", base().linear_before_reset(false)),
            ("layer_norm", base().layer_norm(true)),
        ];
        variants.extend(cell_options.into_iter().filter_map(|(name, b)| b.build().ok().map(|cfg| (name, cfg, 0))));
        let variants: Vec<(&str, RnnConfig, usize)> = {
            let keep = |name: &str| a.only.is_empty() || a.only.iter().any(|o| o == name);
            let kept: Vec<&str> = variants.iter().map(|v| v.0).filter(|n| keep(n)).collect();
            let index = |name: &str| kept.iter().position(|k| *k == name);
            variants
                .iter()
                .filter(|v| keep(v.0))
                .map(|(name, cfg, b)| (*name, cfg.clone(), index(variants[*b].0).unwrap_or_else(|| index(name).unwrap_or(0))))
                .collect()
        };
        let rnns = variants
            .iter()
            .map(|(_, cfg, _)| Rnn::new(cpu.clone(), cfg, Params::<f32>::init_uniform(cfg, 1)?.as_slice()))
            .collect::<Result<Vec<_>, _>>()?;
        let x: Vec<f32> = (0..a.steps * a.batch * a.input).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        for &train in &a.modes {
            let dys: Vec<Vec<f32>> = variants.iter().map(|(_, cfg, _)| vec![0.01; a.steps * a.batch * cfg.output_size()]).collect();
            // One reserve per variant, kept across its calls; one warm-up call each.
            let mut reserves: Vec<Reserve> = variants.iter().map(|_| Default::default()).collect();
            for ((rnn, dy), reserve) in rnns.iter().zip(&dys).zip(&mut reserves) {
                time_one(rnn, (&shape, &x, dy), reserve, train, cpu_time)?;
            }
            let mut times = vec![Vec::new(); variants.len()];
            for _ in 0..a.rounds {
                for (i, ((rnn, dy), reserve)) in rnns.iter().zip(&dys).zip(&mut reserves).enumerate() {
                    times[i].push(time_one(rnn, (&shape, &x, dy), reserve, train, cpu_time)?);
                }
            }
            let mode = if train { "train" } else { "inference" };
            for (i, (name, _, b)) in variants.iter().enumerate() {
                let ratio = median(times[i].iter().zip(&times[*b]).map(|(t, base)| t / base).collect());
                println!(
                    "| {cell}-{}-{}-{}-{} | {mode} | {name} | {} | {:.1} | {ratio:.3} |",
                    a.input,
                    a.hidden,
                    a.batch,
                    a.steps,
                    variants[*b].0,
                    median(times[i].clone())
                );
            }
        }
    }
    Ok(())
}
