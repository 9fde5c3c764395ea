//! The main job: a character-level language model on Tiny Shakespeare.
//!
//! ```text
//! cargo run --release --example charlm                      # 2-layer LSTM, 256 hidden, ~3 minutes
//! cargo run --release --example charlm -- --help
//! ```
//!
//! Trains by truncated BPTT (chunks of 100 characters, state carried, global-norm clipping,
//! Adam) on the first 90% of the corpus, prints the validation loss on the last 10% in nats per
//! character at intervals (on a fixed subset) and at the end (on all of it), and writes 500
//! characters sampled from a prompt. The model, trainer and loop are the `rnn-kernels-nn` crate (`crates/nn`); this file
//! is the command line around them.

use indicatif::{ProgressBar, ProgressStyle};
use rnn_kernels::{Backend, CellKind, Cpu, Reference};
use rnn_kernels_nn::{AdamConfig, Budget, CharLm, CharLmConfig, Progress, Schedule, TrainConfig, Trainer, Vocab};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Tiny Shakespeare (public domain), embedded so the example runs from anywhere.
const CORPUS: &str = include_str!("../data/tinyshakespeare.txt");

const HELP: &str = "\
charlm: train a character-level language model on Tiny Shakespeare, then write text.

USAGE: cargo run --release --example charlm -- [OPTIONS]

Model (ignored with --load, which takes them from the checkpoint):
  --cell lstm|gru|rnn_tanh   recurrent cell                        [lstm]
  --layers N                 recurrent layers                      [2]
  --hidden N                 hidden size                           [256]
  --embedding N              embedding size                        [64]
Training:
  --minutes M                wall-clock budget, evaluations included [3]
  --steps N                  exactly N steps instead (deterministic for a seed)
  --batch N                  parallel streams                      [32]
  --chunk N                  characters per chunk (BPTT length)    [100]
  --lr X                     Adam learning rate                    [0.002]
  --clip X                   global gradient-norm limit            [5]
  --eval-every N             validation (on a subset) every N steps [100]
  --seed N                   initialisation and sampling seed      [1]
Backend:
  --backend cpu|reference|cuda                                     [cpu]
  --threads N                CPU backend threads                   [all cores]
Checkpoints and sampling:
  --save PATH                write the model (safetensors, PyTorch names) at the end
  --load PATH                start from a saved model (continue training, or sample)
  --sample-only              with --load: skip training and evaluation, only sample
  --prompt TEXT              text to start the sample from         [ROMEO:]
  --temperature X            sampling temperature                  [0.8]
  --sample-len N             characters to sample                  [500]
  -h, --help                 this text
";

#[derive(Debug, Clone)]
struct Args {
    cell: Option<CellKind>,
    layers: Option<usize>,
    hidden: Option<usize>,
    embedding: Option<usize>,
    minutes: f64,
    steps: Option<u64>,
    train: TrainConfig,
    eval_every: u64,
    seed: u64,
    backend: String,
    threads: Option<usize>,
    save: Option<String>,
    load: Option<String>,
    sample_only: bool,
    prompt: String,
    temperature: f32,
    sample_len: usize,
}

/// Parses the command line; `Ok(None)` for `--help`.
fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        cell: None,
        layers: None,
        hidden: None,
        embedding: None,
        minutes: 3.0,
        steps: None,
        train: TrainConfig::default(),
        eval_every: 100,
        seed: 1,
        backend: "cpu".into(),
        threads: None,
        save: None,
        load: None,
        sample_only: false,
        prompt: "ROMEO:".into(),
        temperature: 0.8,
        sample_len: 500,
    };
    fn num<T: std::str::FromStr>(flag: &str, v: &str, what: &str, ok: impl Fn(&T) -> bool) -> Result<T, String> {
        v.parse().ok().filter(|x| ok(x)).ok_or_else(|| format!("{flag}: expected {what}, got {v:?}"))
    }
    let pos = |x: &usize| *x > 0;
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        if flag == "--sample-only" {
            a.sample_only = true;
            continue;
        }
        let known = [
            "--cell",
            "--layers",
            "--hidden",
            "--embedding",
            "--minutes",
            "--steps",
            "--batch",
            "--chunk",
            "--lr",
            "--clip",
            "--eval-every",
            "--seed",
            "--backend",
            "--threads",
            "--save",
            "--load",
            "--prompt",
            "--temperature",
            "--sample-len",
        ];
        if !known.contains(&flag.as_str()) {
            return Err(format!("unknown option {flag:?} (see --help)"));
        }
        let v = it.next().ok_or_else(|| format!("{flag}: expected a value, got the end of the command line"))?;
        let f = flag.as_str();
        match f {
            "--cell" => {
                a.cell = Some(match v.as_str() {
                    "lstm" => CellKind::Lstm,
                    "gru" => CellKind::Gru,
                    "rnn_tanh" => CellKind::RnnTanh,
                    _ => return Err(format!("--cell: expected lstm, gru or rnn_tanh, got {v:?}")),
                })
            }
            "--layers" => a.layers = Some(num(f, &v, "a positive integer", pos)?),
            "--hidden" => a.hidden = Some(num(f, &v, "a positive integer", pos)?),
            "--embedding" => a.embedding = Some(num(f, &v, "a positive integer", pos)?),
            "--minutes" => a.minutes = num(f, &v, "a positive number of minutes", |x: &f64| *x > 0.0 && x.is_finite())?,
            "--steps" => a.steps = Some(num(f, &v, "a non-negative integer", |_: &u64| true)?),
            "--batch" => a.train.batch = num(f, &v, "a positive integer", pos)?,
            "--chunk" => a.train.chunk = num(f, &v, "a positive integer", pos)?,
            "--lr" => {
                a.train.adam = AdamConfig { lr: num(f, &v, "a positive number", |x: &f32| *x > 0.0 && x.is_finite())?, ..a.train.adam }
            }
            "--clip" => a.train.clip = num(f, &v, "a positive number", |x: &f32| *x > 0.0 && x.is_finite())?,
            "--eval-every" => a.eval_every = num(f, &v, "a non-negative integer (0: only at the end)", |_: &u64| true)?,
            "--seed" => a.seed = num(f, &v, "a non-negative integer", |_: &u64| true)?,
            "--backend" => {
                if !["cpu", "reference", "cuda"].contains(&v.as_str()) {
                    return Err(format!("--backend: expected cpu, reference or cuda, got {v:?}"));
                }
                a.backend = v
            }
            "--threads" => a.threads = Some(num(f, &v, "a positive integer", pos)?),
            "--save" => a.save = Some(v),
            "--load" => a.load = Some(v),
            "--prompt" => a.prompt = v,
            "--temperature" => a.temperature = num(f, &v, "a positive number", |x: &f32| *x > 0.0 && x.is_finite())?,
            "--sample-len" => a.sample_len = num(f, &v, "a non-negative integer", |_: &usize| true)?,
            _ => unreachable!("every known flag has an arm"),
        }
    }
    if a.sample_only && a.load.is_none() {
        return Err("--sample-only: needs --load PATH (a model to sample from)".into());
    }
    Ok(Some(a))
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.backend.as_str() {
        "cpu" => {
            let cpu = match args.threads {
                Some(n) => Cpu::with_threads(n),
                None => Cpu::new(),
            };
            cpu.map_err(Into::into).and_then(|cpu| {
                println!("backend: cpu ({} ISA, {} threads)", cpu.isa(), cpu.threads());
                run(cpu, &args)
            })
        }
        "reference" => {
            println!("backend: reference (plain loops, single thread)");
            run(Reference, &args)
        }
        // The model's embedding, decoder and optimiser work on host memory, so the stack runs
        // through `CudaHost` (host slices in and out, the layers on the device).
        #[cfg(feature = "cuda")]
        "cuda" => rnn_kernels::CudaHost::new().map_err(Into::into).and_then(|cuda| {
            println!("backend: cuda (host buffers, layers on the GPU)");
            run(cuda, &args)
        }),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(rnn_kernels::Error::BackendUnavailable {
            backend: "cuda".into(),
            reason: "this build has no CUDA backend: rebuild with `--features cuda` (see DEVELOPERS.md), or use --backend cpu".into(),
        }
        .into()),
        other => Err(format!("--backend: expected cpu, reference or cuda, got {other:?}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run<B: Backend<f32, Buf = [f32]>>(backend: B, args: &Args) -> AnyResult<()> {
    let model = match &args.load {
        Some(path) => {
            if args.cell.is_some() || args.layers.is_some() || args.hidden.is_some() || args.embedding.is_some() {
                println!("note: --cell, --layers, --hidden and --embedding are taken from {path}; the values given are ignored");
            }
            let m = CharLm::load(backend, path)?;
            println!("loaded {path}");
            m
        }
        None => {
            let d = CharLmConfig::default();
            let config = CharLmConfig {
                cell: args.cell.unwrap_or(d.cell),
                layers: args.layers.unwrap_or(d.layers),
                hidden: args.hidden.unwrap_or(d.hidden),
                embedding_dim: args.embedding.unwrap_or(d.embedding_dim),
            };
            CharLm::new(backend, Vocab::from_text(CORPUS)?, &config, args.seed)?
        }
    };
    let cfg = model.rnn_config().clone();
    println!(
        "model: embedding {}x{}, {} x {} layer(s) of hidden size {}, decoder {}x{}; {} parameters",
        model.vocab().len(),
        cfg.input_size(),
        cfg.cell(),
        cfg.num_layers(),
        cfg.hidden_size(),
        cfg.output_size(),
        model.vocab().len(),
        model.num_params()
    );

    let model = if args.sample_only {
        model
    } else {
        let ids = model.vocab().encode("corpus", CORPUS)?;
        let split = ids.len() * 9 / 10;
        let (train_ids, val) = (ids[..split].to_vec(), &ids[split..]);
        let t = args.train;
        println!(
            "corpus: {} characters, vocabulary {}; train {} (90%), validation {} (10%)",
            ids.len(),
            model.vocab().len(),
            train_ids.len(),
            val.len()
        );
        println!(
            "training: {} streams x chunks of {} characters (truncated BPTT, state carried), Adam lr {}, clip {}, {}",
            t.batch,
            t.chunk,
            t.adam.lr,
            t.clip,
            match args.steps {
                Some(n) => format!("{n} steps"),
                None => format!("{} min wall clock", args.minutes),
            }
        );
        let budget = match args.steps {
            Some(n) => Budget::Steps(n),
            None => Budget::Time(Duration::from_secs_f64(args.minutes * 60.0)),
        };
        let schedule = Schedule { budget, eval_every: args.eval_every, eval_chars: 20_000, eval_streams: 32 };
        let mut trainer = Trainer::new(model, train_ids, t)?;
        let bar = match budget {
            Budget::Steps(n) => ProgressBar::new(n),
            Budget::Time(d) => ProgressBar::new(d.as_secs()),
        };
        bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")?.progress_chars("=> "));
        let summary = rnn_kernels_nn::train(&mut trainer, val, &schedule, |p| match p {
            Progress::Step { step, loss, chars_per_sec, elapsed } => {
                bar.set_position(match budget {
                    Budget::Steps(_) => step,
                    Budget::Time(_) => elapsed.as_secs(),
                });
                bar.set_message(format!("step {step}  loss {loss:.3}  {chars_per_sec:.0} chars/s"));
            }
            Progress::Eval { step, val_loss, chars, full } => {
                let what = if full { "all" } else { "first" };
                bar.suspend(|| println!("step {step:>5}: validation loss {val_loss:.4} nats/char ({what} {chars} validation characters)"));
            }
        })?;
        bar.finish_and_clear();
        println!(
            "trained {} steps in {:.1} s ({:.0} chars/s); final validation loss {:.4} nats/char ({:.3} bits/char) on all {} validation characters",
            summary.steps,
            summary.elapsed.as_secs_f64(),
            summary.chars_per_sec,
            summary.val_loss,
            summary.val_loss / std::f64::consts::LN_2,
            val.len()
        );
        trainer.into_model()
    };

    if let Some(path) = &args.save {
        model.save(path)?;
        println!("saved {path}");
    }
    let t0 = Instant::now();
    let text = model.sample(&args.prompt, args.sample_len, args.temperature, args.seed)?;
    println!(
        "--- {} characters sampled at temperature {} from {:?} ({:.1} s) ---",
        args.sample_len,
        args.temperature,
        args.prompt,
        t0.elapsed().as_secs_f64()
    );
    println!("{}{}", args.prompt, text);
    Ok(())
}
