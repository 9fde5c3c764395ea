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
use rnn_kernels::{Backend, CellKind, Cpu, Reference, RnnConfig};
use rnn_kernels_nn::{
    check_save_path, AdamConfig, Budget, CharLm, CharLmConfig, CosineSchedule, Progress, Schedule, TrainConfig, Trainer, Vocab,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Tiny Shakespeare (public domain), embedded so the example runs from anywhere.
const CORPUS: &str = include_str!("../data/tinyshakespeare.txt");

/// The most `--layers`.
const MAX_LAYERS: usize = 1000;
/// The most `--threads`.
const MAX_THREADS: usize = 1024;
/// The most `--minutes` (about two years).
const MAX_MINUTES: f64 = 1e6;
/// The most `--sample-len`.
const MAX_SAMPLE_LEN: usize = 1_000_000;

const HELP: &str = "\
charlm: train a character-level language model on Tiny Shakespeare, then write text.

USAGE: cargo run --release --example charlm -- [OPTIONS]

Model (ignored with --load, which takes them from the checkpoint):
  --cell lstm|gru|rnn_tanh   recurrent cell                        [lstm]
  --layers N                 recurrent layers, 1 to 1000           [2]
  --hidden N                 hidden size                           [256]
  --embedding N              embedding size                        [64]
Training:
  --minutes M                wall-clock budget, evaluations included, above 0 and at most 1e6 [3]
  --steps N                  exactly N steps instead (deterministic for a seed)
  --batch N                  parallel streams                      [32]
  --chunk N                  characters per chunk (BPTT length)    [100]
                             (batch x chunk + 1 at most the 1,003,854 training characters)
  --lr X                     Adam learning rate, positive (the peak with --lr-schedule cosine) [0.002]
  --lr-schedule constant|cosine  cosine: from --lr down to --min-lr over the budget [constant]
  --min-lr X                 the cosine's final rate, 0 to --lr    [0]
  --warmup N                 steps of linear warm-up of the cosine [0]
  --weight-decay X           decoupled weight decay (AdamW) on the weight matrices, >= 0 [0]
  --dropout P                dropout between the recurrent layers in training, in [0, 1) [0]
  --zoneout Z                zoneout of the hidden state in training, in [0, 1) [0]
  --zoneout-cell Z           zoneout of the LSTM cell state in training, in [0, 1) [0]
  --recurrent-dropout P      recurrent (variational) dropout in training, in [0, 1) [0]
  --input-dropout P          variational dropout of each layer's input in training, in [0, 1) [0]
  --clip X                   global gradient-norm limit, positive  [5]
  --eval-every N             validation (on a subset) every N steps, 0: only at the end [100]
  --seed N                   initialisation and sampling seed      [1]
Backend:
  --backend cpu|reference|cuda                                     [cpu]
  --threads N                CPU backend threads, 1 to 1024        [all cores]
Checkpoints and sampling:
  --save PATH                write the model (safetensors, PyTorch names) at the end, atomically;
                             its directory must exist and be writable (checked before training);
                             if writing fails, the model is kept in the current or the temporary
                             directory and the error says where
  --load PATH                start from a saved model (continue training, or sample)
  --sample-only              with --load: skip training and evaluation, only sample
  --prompt TEXT              text to start the sample from, characters of the vocabulary [ROMEO:]
  --temperature X            sampling temperature, positive        [0.8]
  --sample-len N             characters to sample, at most 1,000,000 [500]
  -h, --help                 this text

Every argument is checked before training starts, the sizes included: on Linux, a model whose
training needs more than the machine's memory (its weights, gradients and Adam's moments, 16
bytes per parameter, and the activations of one step) is refused with an error.
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
    cosine: bool,
    min_lr: f32,
    warmup: u64,
}

/// Why the command failed: an argument, found before any work was done (exit status 2), or
/// something while working (exit status 1).
#[derive(Debug)]
enum Failure {
    Usage(String),
    Run(Box<dyn std::error::Error>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) => write!(f, "{m}"),
            Failure::Run(e) => write!(f, "{e}"),
        }
    }
}

impl<E: Into<Box<dyn std::error::Error>>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Run(e.into())
    }
}

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::Usage(e.to_string())
}

/// Parses the command line and checks each value on its own; `Ok(None)` for `--help`.
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
        cosine: false,
        min_lr: 0.0,
        warmup: 0,
    };
    fn num<T: std::str::FromStr>(flag: &str, v: &str, what: &str, ok: impl Fn(&T) -> bool) -> Result<T, String> {
        v.parse().ok().filter(|x| ok(x)).ok_or_else(|| format!("{flag}: expected {what}, got {v:?}"))
    }
    let pos = |x: &usize| *x > 0;
    let positive = |x: &f32| *x > 0.0 && x.is_finite();
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
            "--lr-schedule",
            "--min-lr",
            "--warmup",
            "--weight-decay",
            "--dropout",
            "--zoneout",
            "--zoneout-cell",
            "--recurrent-dropout",
            "--input-dropout",
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
            "--layers" => a.layers = Some(num(f, &v, &format!("an integer from 1 to {MAX_LAYERS}"), |x| (1..=MAX_LAYERS).contains(x))?),
            "--hidden" => a.hidden = Some(num(f, &v, "a positive integer", pos)?),
            "--embedding" => a.embedding = Some(num(f, &v, "a positive integer", pos)?),
            "--minutes" => {
                a.minutes = num(f, &v, &format!("a number of minutes above 0 and at most {MAX_MINUTES:e}"), |x: &f64| {
                    *x > 0.0 && *x <= MAX_MINUTES
                })?
            }
            "--steps" => a.steps = Some(num(f, &v, "a non-negative integer", |_: &u64| true)?),
            "--batch" => a.train.batch = num(f, &v, "a positive integer", pos)?,
            "--chunk" => a.train.chunk = num(f, &v, "a positive integer", pos)?,
            "--lr" => a.train.adam = AdamConfig { lr: num(f, &v, "a positive finite number", positive)?, ..a.train.adam },
            "--clip" => a.train.clip = num(f, &v, "a positive finite number", positive)?,
            "--lr-schedule" => {
                a.cosine = match v.as_str() {
                    "constant" => false,
                    "cosine" => true,
                    _ => return Err(format!("--lr-schedule: expected constant or cosine, got {v:?}")),
                }
            }
            "--min-lr" => a.min_lr = num(f, &v, "a non-negative finite number", |x: &f32| *x >= 0.0 && x.is_finite())?,
            "--warmup" => a.warmup = num(f, &v, "a non-negative integer", |_: &u64| true)?,
            "--dropout" => a.train.dropout = num(f, &v, "a probability in [0, 1)", |x: &f64| (0.0..1.0).contains(x))?,
            "--zoneout" => a.train.zoneout = num(f, &v, "a probability in [0, 1)", |x: &f64| (0.0..1.0).contains(x))?,
            "--zoneout-cell" => a.train.zoneout_cell = num(f, &v, "a probability in [0, 1)", |x: &f64| (0.0..1.0).contains(x))?,
            "--recurrent-dropout" => a.train.recurrent_dropout = num(f, &v, "a probability in [0, 1)", |x: &f64| (0.0..1.0).contains(x))?,
            "--input-dropout" => a.train.input_dropout = num(f, &v, "a probability in [0, 1)", |x: &f64| (0.0..1.0).contains(x))?,
            "--weight-decay" => {
                a.train.adam = AdamConfig {
                    weight_decay: num(f, &v, "a non-negative finite number", |x: &f32| *x >= 0.0 && x.is_finite())?,
                    ..a.train.adam
                }
            }
            "--eval-every" => a.eval_every = num(f, &v, "a non-negative integer (0: only at the end)", |_: &u64| true)?,
            "--seed" => a.seed = num(f, &v, "a non-negative integer", |_: &u64| true)?,
            "--backend" => {
                if !["cpu", "reference", "cuda"].contains(&v.as_str()) {
                    return Err(format!("--backend: expected cpu, reference or cuda, got {v:?}"));
                }
                a.backend = v
            }
            "--threads" => a.threads = Some(num(f, &v, &format!("an integer from 1 to {MAX_THREADS}"), |x| (1..=MAX_THREADS).contains(x))?),
            "--save" => a.save = Some(v),
            "--load" => a.load = Some(v),
            "--prompt" => {
                if v.is_empty() {
                    return Err("--prompt: expected at least one character, got an empty string".into());
                }
                a.prompt = v
            }
            "--temperature" => a.temperature = num(f, &v, "a positive finite number", positive)?,
            "--sample-len" => {
                a.sample_len = num(f, &v, &format!("an integer from 0 to {MAX_SAMPLE_LEN} (characters)"), |x: &usize| *x <= MAX_SAMPLE_LEN)?
            }
            _ => unreachable!("every known flag has an arm"),
        }
    }
    if a.min_lr > a.train.adam.lr {
        return Err(format!("--min-lr: expected at most --lr = {}, got {}", a.train.adam.lr, a.min_lr));
    }
    if a.sample_only && a.load.is_none() {
        return Err("--sample-only: needs --load PATH (a model to sample from)".into());
    }
    Ok(Some(a))
}

/// Where a model that cannot be saved where asked is kept: the current directory, else the
/// temporary one.
fn fallback_dirs() -> Vec<PathBuf> {
    std::env::current_dir().into_iter().chain([std::env::temp_dir()]).collect()
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// A lower bound on the memory training needs, in bytes: the parameters of the embedding, the
/// stack and the decoder, each with its gradient and Adam's two moments (16 bytes), and per step
/// the gates the forward pass keeps for the backward pass and the logits with their gradient.
/// Computed in f64 from the sizes alone, so no size overflows it.
fn training_bytes(cfg: &RnnConfig, vocab: usize, train: &TrainConfig) -> (f64, f64) {
    let [e, h, g, l, v, hout] =
        [cfg.input_size(), cfg.hidden_size(), cfg.gates(), cfg.num_layers(), vocab, cfg.hidden_out_size()].map(|x| x as f64);
    // Layer 0 reads the embedding, the others the layer below; each has two biases.
    let stack = g * h * (e + hout + 2.0) + (l - 1.0) * g * h * (hout + hout + 2.0);
    let params = stack + v * e + v * hout + v;
    let rows = train.batch as f64 * train.chunk as f64;
    (params, 16.0 * params + 4.0 * rows * (l * g * h + 2.0 * v))
}

/// Checks that training a model of `cfg` over `vocab` characters fits in memory.
fn check_memory(a: &Args, cfg: &RnnConfig, vocab: usize) -> Result<(), Failure> {
    let (params, bytes) = training_bytes(cfg, vocab, &a.train);
    match rnn_kernels::host_memory_bytes().map(u128::from) {
        Some(total) if bytes > total as f64 => Err(usage(format!(
            "--layers {}, --hidden {}, --embedding {}, --batch {}, --chunk {}: expected sizes whose training fits in this machine's \
             memory ({}, RAM and swap, /proc/meminfo), got sizes that need at least {} ({params:.0} parameters at 16 bytes each for \
             the weights, gradients and Adam's moments, and one step's activations){}",
            cfg.num_layers(),
            cfg.hidden_size(),
            cfg.input_size(),
            a.train.batch,
            a.train.chunk,
            gib(total as f64),
            gib(bytes),
            if a.load.is_some() { " (the model sizes are those of --load)" } else { "" }
        ))),
        _ => Ok(()),
    }
}

/// Checks `--batch` and `--chunk` against the training text, `n` characters.
fn check_batch(a: &Args, n: usize) -> Result<(), Failure> {
    let (b, t) = (a.train.batch, a.train.chunk);
    match b.checked_mul(t).and_then(|x| x.checked_add(1)) {
        Some(need) if need <= n => Ok(()),
        _ => Err(usage(format!(
            "--batch {b}, --chunk {t}: expected batch x chunk + 1 at most the {n} training characters, got {}",
            (b as u128) * (t as u128) + 1
        ))),
    }
}

/// Checks `--prompt` against the vocabulary: the character that is not in it, and where.
fn check_prompt(a: &Args, vocab: &Vocab) -> Result<(), Failure> {
    vocab.encode("--prompt", &a.prompt).map(drop).map_err(usage)
}

/// The whole command: parse, check every argument, train, save, sample.
fn cli(argv: impl IntoIterator<Item = String>) -> Result<(), Failure> {
    let args = match parse(argv).map_err(Failure::Usage)? {
        Some(a) => a,
        None => {
            print!("{HELP}");
            return Ok(());
        }
    };
    match args.backend.as_str() {
        "cpu" => {
            let cpu = match args.threads {
                Some(n) => Cpu::with_threads(n),
                None => Cpu::new(),
            }?;
            println!("backend: cpu ({} ISA, {} threads)", cpu.isa(), cpu.threads());
            run(cpu, &args)
        }
        "reference" => {
            println!("backend: reference (plain loops, single thread)");
            run(Reference, &args)
        }
        // The model's embedding, decoder and optimiser work on host memory, so the stack runs
        // through `CudaHost` (host slices in and out, the layers on the device).
        #[cfg(feature = "cuda")]
        "cuda" => {
            let cuda = rnn_kernels::CudaHost::new()?;
            println!("backend: cuda (host buffers, layers on the GPU)");
            run(cuda, &args)
        }
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(rnn_kernels::Error::BackendUnavailable {
            backend: "cuda".into(),
            reason: "this build has no CUDA backend: rebuild with `--features cuda` (see DEVELOPERS.md), or use --backend cpu".into(),
        }
        .into()),
        other => Err(usage(format!("--backend: expected cpu, reference or cuda, got {other:?}"))),
    }
}

fn main() -> ExitCode {
    match cli(std::env::args().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Failure::Usage(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run<B: Backend<f32, Buf = [f32]>>(backend: B, args: &Args) -> Result<(), Failure> {
    // Every argument is checked before the model is built and before training: a mistake found
    // after three minutes of training would cost them (and, for --save, the model).
    if let Some(path) = &args.save {
        check_save_path("--save", path).map_err(usage)?;
    }
    let train_chars = CORPUS.chars().count() * 9 / 10;
    if !args.sample_only {
        check_batch(args, train_chars)?;
    }
    let model = match &args.load {
        Some(path) => {
            if args.cell.is_some() || args.layers.is_some() || args.hidden.is_some() || args.embedding.is_some() {
                println!("note: --cell, --layers, --hidden and --embedding are taken from {path}; the values given are ignored");
            }
            let m = CharLm::load(backend, path)?;
            check_prompt(args, m.vocab())?;
            if !args.sample_only {
                check_memory(args, m.rnn_config(), m.vocab().len())?;
            }
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
            let vocab = Vocab::from_text(CORPUS)?;
            check_prompt(args, &vocab)?;
            let cfg = RnnConfig::new(config.cell, config.embedding_dim, config.hidden).num_layers(config.layers).build().map_err(|e| {
                usage(format!("--layers {}, --hidden {}, --embedding {}: {e}", config.layers, config.hidden, config.embedding_dim))
            })?;
            check_memory(args, &cfg, vocab.len())?;
            CharLm::new(backend, vocab, &config, args.seed)?
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
        let t = TrainConfig { mask_seed: args.seed, ..args.train };
        let budget = match args.steps {
            Some(n) => Budget::Steps(n),
            None => Budget::Time(Duration::from_secs_f64(args.minutes * 60.0)),
        };
        let lr = if args.cosine { Some(CosineSchedule::new(t.adam.lr, args.min_lr, args.warmup)?) } else { None };
        let schedule = Schedule { budget, eval_every: args.eval_every, eval_chars: 20_000, eval_streams: 32, lr };
        let mut trainer = Trainer::new(model, train_ids, t)?;
        println!(
            "corpus: {} characters, vocabulary {}; train {} (90%), validation {} (10%)",
            ids.len(),
            trainer.model().vocab().len(),
            split,
            val.len()
        );
        println!(
            "training: {} streams x chunks of {} characters (truncated BPTT, state carried), {} lr {}{}, clip {}, {}{}{}",
            t.batch,
            t.chunk,
            if t.adam.weight_decay > 0.0 { format!("AdamW (weight decay {})", t.adam.weight_decay) } else { "Adam".into() },
            t.adam.lr,
            if args.cosine { format!(" (cosine to {}, {} warm-up steps)", args.min_lr, args.warmup) } else { String::new() },
            t.clip,
            if t.dropout > 0.0 { format!("dropout {} between layers, ", t.dropout) } else { String::new() },
            match (t.zoneout, t.zoneout_cell) {
                (h, c) if h > 0.0 || c > 0.0 => format!("zoneout h {h} c {c}, "),
                _ => String::new(),
            } + &if t.recurrent_dropout > 0.0 { format!("recurrent dropout {}, ", t.recurrent_dropout) } else { String::new() }
                + &if t.input_dropout > 0.0 { format!("input dropout {}, ", t.input_dropout) } else { String::new() },
            match args.steps {
                Some(n) => format!("{n} steps"),
                None => format!("{} min wall clock", args.minutes),
            }
        );
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
        // Written atomically; if that fails, the error says where the model was kept instead.
        model.save_or_keep(path, &fallback_dirs())?;
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
