//! The cost of the candle adapter: one training step (forward, backward, a plain SGD update of
//! every parameter) through candle against the same step on the library's own API (`Rnn`,
//! `Rnn::update_params`), on one CPU backend (the same pool of threads), alternating the two.
//!
//! ```text
//! cargo run --release -p rnn-kernels-candle --example candle_step                  # both configurations
//! cargo run --release -p rnn-kernels-candle --example candle_step -- --config large --rounds 5 --steps 3 --threads 2
//! ```
//!
//! Configurations: `large`, a 2-layer bidirectional LSTM with I = H = 512, B = 64, T = 100;
//! `small`, a 2-layer bidirectional LSTM with I = H = 64, B = 16, T = 32.
//!
//! A step on each side:
//!
//! - library: `Rnn::forward_training` (one reserve kept across steps), the output gradient
//!   `dy` given, `Rnn::backward`, then `w -= lr·g` on the flat buffer and `update_params`;
//! - candle: `Recurrent::run` (`x` a variable, so that backward computes `dx` as
//!   `Rnn::backward` does), candle's `backward()` from `y` (`dy` all ones: the loss `Σ y`,
//!   no candle op in between) or with `--loss dot` from the loss `Σ y·dy` (`dy` random: a
//!   multiplication and a sum, and their backward, in candle), then `var.set(var - g·lr)` for
//!   every variable (the next call compares the variables with its plan and repacks it).
//!
//! candle runs its element-wise operations of 64 Ki elements or more on a pool of threads of
//! its own, whose threads spin for a while after each operation; with the library's threads on
//! every core, they compete for the cores. `CANDLE_NUM_THREADS=1` runs candle's operations on
//! the calling thread instead (the heavy work is the library's, on its own threads).
//!
//! Each round times `--steps` steps of one side, then of the other (the order alternating from
//! round to round), after one step of each to warm up. It prints each round's times per step,
//! the median of the rounds' ratios (candle / library), the phases of a step on each side (their
//! times, and their minor page faults: the sign of an allocator giving pages back), and
//! the weight check's alternatives: comparing unchanged weights, comparing changed ones and
//! repacking, and always repacking (a gather of the variables into a flat buffer and
//! `update_params`).

use candle_core::{Device, Tensor, Var};
use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{CellKind, Cpu, Params, Rnn, RnnConfig, SeqShape};
use rnn_kernels_candle::{Input, Recurrent};
use std::time::Instant;

const LR: f32 = 1e-3;

struct Setup {
    name: &'static str,
    /// The loss `Σ y·dy` in candle (else `backward()` from `y`, `dy` all ones).
    dot: bool,
    cfg: RnnConfig,
    shape: SeqShape,
    params: Params<f32>,
    x: Vec<f32>,
    dy: Vec<f32>,
}

impl Setup {
    fn new(name: &'static str, i: usize, h: usize, b: usize, t: usize, dot: bool) -> Self {
        let cfg = RnnConfig::new(CellKind::Lstm, i, h).num_layers(2).bidirectional(true).build().unwrap();
        let shape = SeqShape::new(t, b).unwrap();
        let mut rng = SplitMix64::new(5);
        let mut randn = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let x = randn(t * b * i);
        let dy = if dot { randn(t * b * cfg.output_size()) } else { vec![1.0; t * b * cfg.output_size()] };
        Setup { dot, name, params: Params::init_uniform(&cfg, 6).unwrap(), cfg, shape, x, dy }
    }
}

/// The library's side: its stack, the flat weights, one reserve.
struct Direct {
    rnn: Rnn<f32, Cpu>,
    weights: Vec<f32>,
    reserve: rnn_kernels::HostReserve<f32>,
}

/// Seconds of each phase of one step.
#[derive(Default, Clone, Copy)]
struct Phases {
    forward: f64,
    backward: f64,
    update: f64,
    /// Minor page faults in the forward, backward and update phases (the last with the drop of
    /// the step's outputs and gradients).
    faults: [u64; 3],
}

/// The process's minor page faults so far (`minflt` of `/proc/self/stat`; 0 where there is no
/// such file): a fresh page of a heap that the allocator gave back to the system and grows
/// again costs one.
fn minflt() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return 0 };
    // The fields after the command's closing parenthesis: state, ppid, pgrp, session, tty_nr,
    // tpgid, flags, minflt.
    s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().nth(7)).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// Times the phases of a step one after the other, and counts their page faults (the count is
/// read between the phases, outside the times).
struct Meter {
    seconds: Vec<f64>,
    faults: Vec<u64>,
    count: u64,
    since: Instant,
}

impl Meter {
    fn start() -> Self {
        Meter { seconds: Vec::new(), faults: Vec::new(), count: minflt(), since: Instant::now() }
    }

    /// Ends a phase and starts the next.
    fn lap(&mut self) {
        self.seconds.push(self.since.elapsed().as_secs_f64());
        let count = minflt();
        self.faults.push(count - self.count);
        self.count = count;
        self.since = Instant::now();
    }

    /// The three phases (forward, backward, update) that `lap` ended.
    fn phases(self) -> Phases {
        let (s, f) = (&self.seconds, &self.faults);
        Phases { forward: s[0], backward: s[1], update: s[2], faults: [f[0], f[1], f[2]] }
    }
}

impl Phases {
    fn total(&self) -> f64 {
        self.forward + self.backward + self.update
    }
}

impl Direct {
    fn step(&mut self, s: &Setup) -> Phases {
        let mut m = Meter::start();
        let out = self.rnn.forward_training(&s.shape, &s.x, None, None, &mut self.reserve).unwrap();
        std::hint::black_box(&out);
        m.lap();
        let g = self.rnn.backward(&self.reserve, Some(&s.dy), None, None).unwrap();
        m.lap();
        for (w, g) in self.weights.iter_mut().zip(g.dparams.as_ref().unwrap()) {
            *w -= g * LR;
        }
        self.rnn.update_params(&self.weights).unwrap();
        drop((g, out));
        m.lap();
        m.phases()
    }
}

/// candle's side: the module, `x` (a variable: backward computes its gradient, as
/// `Rnn::backward` does) and `dy`.
struct Candle {
    module: Recurrent<f32, Cpu>,
    x: Var,
    dy: Tensor,
}

impl Candle {
    fn step(&self, dot: bool) -> Phases {
        let mut m = Meter::start();
        let out = self.module.run(Input::new(self.x.as_tensor())).unwrap();
        m.lap();
        let grads = if dot { (&out.y * &self.dy).unwrap().sum_all().unwrap().backward() } else { out.y.backward() }.unwrap();
        m.lap();
        for var in self.module.vars() {
            let g = grads.get(&var).unwrap();
            var.set(&(var.as_tensor() - (g * LR as f64).unwrap()).unwrap()).unwrap();
        }
        // The step's graph goes with its outputs and gradients (the reserve back to the pool).
        drop((grads, out));
        m.lap();
        m.phases()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean_phases(v: &[Phases]) -> Phases {
    let n = v.len() as f64;
    Phases {
        forward: v.iter().map(|p| p.forward).sum::<f64>() / n,
        backward: v.iter().map(|p| p.backward).sum::<f64>() / n,
        update: v.iter().map(|p| p.update).sum::<f64>() / n,
        faults: [0, 1, 2].map(|i| v.iter().map(|p| p.faults[i]).sum::<u64>() / v.len().max(1) as u64),
    }
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}

fn run(s: &Setup, cpu: &Cpu, rounds: usize, steps: usize) {
    let (t, b) = (s.shape.steps(), s.shape.batch());
    println!(
        "== {}: 2-layer bidirectional LSTM, I = {}, H = {}, B = {b}, T = {t}, {} parameters; {}",
        s.name,
        s.cfg.input_size(),
        s.cfg.hidden_size(),
        s.params.as_slice().len(),
        if s.dot { "loss Σ y·dy in candle" } else { "backward from y (dy = 1)" }
    );
    let mut direct = Direct {
        rnn: Rnn::from_params(cpu.clone(), &s.params).unwrap(),
        weights: s.params.as_slice().to_vec(),
        reserve: Default::default(),
    };
    let candle = Candle {
        module: Recurrent::new(cpu.clone(), &s.params).unwrap(),
        x: Var::from_slice(&s.x, (t, b, s.cfg.input_size()), &Device::Cpu).unwrap(),
        dy: Tensor::from_slice(&s.dy, (t, b, s.cfg.output_size()), &Device::Cpu).unwrap(),
    };
    direct.step(s);
    candle.step(s.dot);

    let (mut dp, mut cp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut time_direct = |dp: &mut Vec<Phases>| {
            let p: Vec<Phases> = (0..steps).map(|_| direct.step(s)).collect();
            let per = p.iter().map(Phases::total).sum::<f64>() / steps as f64;
            dp.extend(p);
            per
        };
        let time_candle = |cp: &mut Vec<Phases>| {
            let p: Vec<Phases> = (0..steps).map(|_| candle.step(s.dot)).collect();
            let per = p.iter().map(Phases::total).sum::<f64>() / steps as f64;
            cp.extend(p);
            per
        };
        let (d, c) = if round % 2 == 0 {
            let d = time_direct(&mut dp);
            (d, time_candle(&mut cp))
        } else {
            let c = time_candle(&mut cp);
            (time_direct(&mut dp), c)
        };
        println!("round {round}: library {} per step, candle {} per step, ratio {:.4}", ms(d), ms(c), c / d);
        ratios.push(c / d);
    }
    let (d, c) = (mean_phases(&dp), mean_phases(&cp));
    println!("median ratio (candle / library): {:.4}", median(ratios));
    println!(
        "phases, mean per step: library forward {} backward {} update {} | candle forward {} backward {} update {}",
        ms(d.forward),
        ms(d.backward),
        ms(d.update),
        ms(c.forward),
        ms(c.backward),
        ms(c.update)
    );
    println!("minor page faults, mean per step (forward, backward, update): library {:?} | candle {:?}", d.faults, c.faults);

    // The weight check and its alternatives, each the median of 7 (`f` returns the seconds it
    // measured).
    let m = &candle.module;
    let time = |f: &mut dyn FnMut() -> f64| median((0..7).map(|_| f()).collect());
    let timed = |f: &mut dyn FnMut()| {
        let t0 = Instant::now();
        f();
        t0.elapsed().as_secs_f64()
    };
    // The last step changed the weights after its call: the next call would refresh the plan.
    m.sync_weights().unwrap();
    let unchanged = time(&mut || timed(&mut || assert!(!m.sync_weights().unwrap())));
    let vars = m.vars();
    let changed = time(&mut || {
        // Every weight changed: the state after an optimiser step.
        for v in &vars {
            v.set(&(v.as_tensor() + 1e-3).unwrap()).unwrap();
        }
        timed(&mut || assert!(m.sync_weights().unwrap()))
    });
    let specs = m.layout().specs().to_vec();
    let mut flat = vec![0f32; m.layout().len()];
    let mut rnn = Rnn::from_params(cpu.clone(), &s.params).unwrap();
    let repack = time(&mut || {
        timed(&mut || {
            for (spec, v) in specs.iter().zip(&vars) {
                let (st, l) = v.storage_and_layout();
                let candle_core::Storage::Cpu(c) = &*st else { unreachable!() };
                flat[spec.range()].copy_from_slice(&c.as_slice::<f32>().unwrap()[l.start_offset()..l.start_offset() + spec.len()]);
            }
            rnn.update_params(&flat).unwrap();
        })
    });
    println!(
        "weight check per call: unchanged (compare) {}; changed (compare, copy, update_plan) {}; always repacking (gather, update_plan) {}",
        ms(unchanged),
        ms(changed),
        ms(repack)
    );
}

fn main() {
    let mut config = "both".to_string();
    let mut dot = false;
    let (mut rounds, mut steps, mut threads) = (5usize, 0usize, 0usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} takes a value"));
        match a.as_str() {
            "--config" => config = value(),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--steps" => steps = value().parse().expect("--steps N"),
            "--threads" => threads = value().parse().expect("--threads N"),
            "--loss" => {
                dot = match value().as_str() {
                    "dot" => true,
                    "sum" => false,
                    other => panic!("--loss sum|dot, not {other}"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "candle_step [--config small|large|both] [--rounds N] [--steps N per side and round] [--threads N] [--loss sum|dot]"
                );
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let cpu = if threads == 0 { Cpu::new() } else { Cpu::with_threads(threads) }.unwrap();
    println!(
        "backend: {:?}; CANDLE_NUM_THREADS={}",
        cpu,
        std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "(unset: one per core)".into())
    );
    if config == "small" || config == "both" {
        run(&Setup::new("small", 64, 64, 16, 32, dot), &cpu, rounds, if steps == 0 { 50 } else { steps });
    }
    if config == "large" || config == "both" {
        run(&Setup::new("large", 512, 512, 64, 100, dot), &cpu, rounds, if steps == 0 { 2 } else { steps });
    }
}
