//! Times one configuration on one backend and prints one JSON line, the same format as
//! `benches/peers.py` prints for PyTorch and onnxruntime, so `benches/compare.py` can put them
//! side by side.
//!
//! ```text
//! cargo run --release --example bench -- --backend cpu --cell lstm --input 512 --hidden 512 \
//!     --batch 64 --steps 100 [--layers 1] [--bidirectional] --mode inference|train --threads 2 \
//!     [--reps N] [--warmup N] [cell options]
//! ```
//!
//! Cell options (each as the builder method of `RnnConfig` it sets): `--peephole`, `--clip X`
//! (`gate_clip`), `--input-forget`, `--cho` (`linear_before_reset(false)`), `--layer-norm`,
//! `--direction forward|reverse|bidirectional`, `--merge concat|sum`, `--batch-first`, `--dropout P`
//! (dropout between layers), `--zoneout Z`, `--zoneout-cell Z`, `--recurrent-dropout P`, `--input-dropout P` (a `train`
//! pass draws each rep's masks from `MaskStream::new(7, rep)`). Each adds a suffix to the `config`
//! name (`-rev`, `-sum`, `-peep`, `-clipX`, `-if`, `-cho`, `-ln`, `-bf`, `-dropP`, `-zoZ`, `-zocZ`,
//! `-rdropP`, `-idropP`, in that order, as
//! `benches/peers.py` names them) and the line gains `"options"` (the configuration's option
//! names); a plain configuration's line is unchanged.
//!
//! GFLOP counts only the GEMMs: per layer and direction `2·G·H·(In + Hout)·B·T` for inference
//! (plus `2·Hout·H·B·T` for an LSTM projection), three times that for `train` (forward in
//! training mode plus the full backward). The median over `--reps` timed runs is reported, after
//! `--warmup` untimed ones. `--threads` sets the CPU backend's thread count (the reference is
//! single-threaded); `RNN_KERNELS_ISA` forces the CPU backend's ISA. `--tune auto|off` sets the
//! CPU backend's tuner (default: `RNN_KERNELS_TUNE`, else `auto`): with `auto` the first
//! (warm-up) call of each pass tunes, and the choices are printed to stderr.

use rnn_kernels::masks::MaskStream;
use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{tuning_records, Tuning};
use rnn_kernels::{
    Backend, BackwardInput, BackwardOutput, CellKind, Cpu, Direction, Element, ForwardInput, ForwardOutput, GradMode, Merge, Params,
    Reference, RnnConfig, SeqShape,
};
use std::borrow::BorrowMut;
use std::process::ExitCode;
use std::time::Instant;

struct Args {
    backend: String,
    cell: CellKind,
    input: usize,
    hidden: usize,
    batch: usize,
    steps: usize,
    layers: usize,
    bidirectional: bool,
    proj: usize,
    train: bool,
    threads: usize,
    reps: usize,
    warmup: usize,
    /// Storage type of the CUDA backend: f32, f16 or bf16.
    dtype: String,
    /// `--tune`: the CPU backend's tuning (`None`: `RNN_KERNELS_TUNE`'s).
    tune: Option<Tuning>,
    /// `--direction` (overrides `--bidirectional` when given).
    direction: Option<Direction>,
    merge: Merge,
    peephole: bool,
    /// `--clip`: the gate clip threshold, 0 for none.
    clip: f64,
    input_forget: bool,
    /// `--cho`: GRU with `linear_before_reset(false)`.
    cho: bool,
    layer_norm: bool,
    batch_first: bool,
    /// `--dropout`: the probability of the dropout between layers, 0 for none.
    dropout: f64,
    /// `--zoneout`, `--zoneout-cell`: the zoneout probabilities of `h` and `c`, 0 for none.
    zoneout: f64,
    zoneout_cell: f64,
    /// `--recurrent-dropout`: the recurrent (variational) dropout probability, 0 for none.
    recurrent_dropout: f64,
    /// `--input-dropout`: the variational dropout probability of the layers' inputs, 0 for none.
    input_dropout: f64,
}

const USAGE: &str = "usage: bench --backend reference|cpu|cuda --cell lstm|gru|rnn_tanh|rnn_relu --input I --hidden H \
--batch B --steps T [--layers L (1 to 1000)] [--bidirectional] [--proj P] --mode inference|train [--threads N (1 to 1024)] \
[--reps N (1 to 1000000)] [--warmup N (0 to 1000000)] [--dtype f32|f16|bf16 (cpu, cuda)] [--tune auto|off (cpu)]
[--peephole] [--clip X] [--input-forget] [--cho] [--layer-norm] [--direction forward|reverse|bidirectional] [--merge concat|sum] [--batch-first] [--dropout P] [--zoneout Z] [--zoneout-cell Z] [--recurrent-dropout P] [--input-dropout P]
Sizes whose buffers need more than the machine's memory (RAM and swap, on Linux) are refused before anything is allocated.";

/// The most `--layers`, `--threads`, and `--reps` or `--warmup`.
const MAX_LAYERS: usize = 1000;
const MAX_THREADS: usize = 1024;
const MAX_REPS: usize = 1_000_000;

fn parse() -> Result<Args, String> {
    let mut a = Args {
        backend: "cpu".into(),
        cell: CellKind::Lstm,
        input: 0,
        hidden: 0,
        batch: 0,
        steps: 0,
        layers: 1,
        bidirectional: false,
        proj: 0,
        train: false,
        threads: 1,
        reps: 5,
        warmup: 1,
        dtype: "f32".into(),
        tune: None,
        direction: None,
        merge: Merge::Concat,
        peephole: false,
        clip: 0.0,
        input_forget: false,
        cho: false,
        layer_norm: false,
        batch_first: false,
        dropout: 0.0,
        zoneout: 0.0,
        zoneout_cell: 0.0,
        recurrent_dropout: 0.0,
        input_dropout: 0.0,
    };
    let mut it = std::env::args().skip(1);
    let num = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or(format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: expected an unsigned integer, got {v:?}"))
    };
    let within = |flag: &str, v: Option<String>, lo: usize, hi: usize| -> Result<usize, String> {
        let n = num(flag, v)?;
        if (lo..=hi).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{flag}: expected an integer from {lo} to {hi}, got {n}"))
        }
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--backend" => a.backend = it.next().ok_or("--backend needs a value")?,
            "--cell" => a.cell = it.next().ok_or("--cell needs a value")?.parse().map_err(|e| format!("{e}"))?,
            "--input" => a.input = num("--input", it.next())?,
            "--hidden" => a.hidden = num("--hidden", it.next())?,
            "--batch" => a.batch = num("--batch", it.next())?,
            "--steps" => a.steps = num("--steps", it.next())?,
            "--layers" => a.layers = within("--layers", it.next(), 1, MAX_LAYERS)?,
            "--proj" => a.proj = num("--proj", it.next())?,
            "--bidirectional" => a.bidirectional = true,
            "--threads" => a.threads = within("--threads", it.next(), 1, MAX_THREADS)?,
            "--reps" => a.reps = within("--reps", it.next(), 1, MAX_REPS)?,
            "--warmup" => a.warmup = within("--warmup", it.next(), 0, MAX_REPS)?,
            "--dtype" => a.dtype = it.next().ok_or("--dtype needs a value")?,
            "--tune" => {
                a.tune = Some(match it.next().as_deref() {
                    Some("auto") => Tuning::Auto,
                    Some("off") => Tuning::Off,
                    v => return Err(format!("--tune: expected auto or off, got {v:?}")),
                })
            }
            "--peephole" => a.peephole = true,
            "--input-forget" => a.input_forget = true,
            "--cho" => a.cho = true,
            "--layer-norm" => a.layer_norm = true,
            "--batch-first" => a.batch_first = true,
            "--dropout" | "--zoneout" | "--zoneout-cell" | "--recurrent-dropout" | "--input-dropout" => {
                let v = it.next().ok_or(format!("{flag} needs a value"))?;
                let p = v.parse().map_err(|_| format!("{flag}: expected a probability (0 for none), got {v:?}"))?;
                match flag.as_str() {
                    "--dropout" => a.dropout = p,
                    "--zoneout" => a.zoneout = p,
                    "--zoneout-cell" => a.zoneout_cell = p,
                    "--recurrent-dropout" => a.recurrent_dropout = p,
                    _ => a.input_dropout = p,
                }
            }
            "--clip" => {
                let v = it.next().ok_or("--clip needs a value")?;
                a.clip = v.parse().map_err(|_| format!("--clip: expected a number (0 for none), got {v:?}"))?;
            }
            "--direction" => {
                a.direction = Some(it.next().ok_or("--direction needs a value")?.parse().map_err(|e| format!("--direction: {e}"))?)
            }
            "--merge" => a.merge = it.next().ok_or("--merge needs a value")?.parse().map_err(|e| format!("--merge: {e}"))?,
            "--mode" => {
                a.train = match it.next().as_deref() {
                    Some("inference") => false,
                    Some("train") => true,
                    other => return Err(format!("--mode: expected inference or train, got {other:?}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if !matches!(a.dtype.as_str(), "f32" | "f16" | "bf16") || (a.dtype != "f32" && a.backend == "reference") {
        return Err(format!("--dtype: f32, or f16/bf16 with --backend cpu or cuda; got {:?} with {:?}", a.dtype, a.backend));
    }
    if a.input == 0 || a.hidden == 0 || a.batch == 0 || a.steps == 0 {
        return Err(format!(
            "--input, --hidden, --batch and --steps: expected each given and at least 1, got {}, {}, {}, {}\n{USAGE}",
            a.input, a.hidden, a.batch, a.steps
        ));
    }
    Ok(a)
}

/// Refuses sizes whose host buffers alone need more than the machine's memory: a lower bound
/// (the parameters and their gradient, `x`, `y`, `dy`, `dx`, `h_n`, `c_n`; on the CUDA backend
/// the host copies of the parameters, `x` and `dy`), computed in f64 so no size overflows it.
fn check_memory(a: &Args, cfg: &RnnConfig, shape: &SeqShape) -> Result<(), rnn_kernels::Error> {
    let n = |s: [usize; 3]| s.iter().map(|&d| d as f64).product::<f64>();
    let p = rnn_kernels::ParamLayout::new(cfg).len() as f64;
    let (x, y, h, c) = (n(shape.x_shape(cfg)), n(shape.y_shape(cfg)), n(shape.h_shape(cfg)), n(shape.c_shape(cfg)));
    let elem = if a.dtype == "f32" { 4.0 } else { 2.0 };
    let bytes = elem * if a.backend == "cuda" { p + x + y } else { 2.0 * (p + x + y) + h + c };
    match rnn_kernels::host_memory_bytes().map(u128::from) {
        Some(total) if bytes > total as f64 => Err(rnn_kernels::Error::TooLarge {
            arg: "--input, --hidden, --layers, --batch, --steps".into(),
            what: format!(
                "the host buffers of input {}, hidden {}, {} layer(s), batch {}, {} steps: {p:.0} parameters, {x:.0} inputs, {y:.0} outputs",
                a.input, a.hidden, a.layers, a.batch, a.steps
            ),
            bytes: bytes as u128,
            reason: format!("is more than this machine's memory ({total} bytes, RAM and swap, /proc/meminfo)"),
        }),
        _ => Ok(()),
    }
}

/// `n` values of `f`, or zeros, allocated fallibly: an allocation the allocator refuses is an
/// error naming the buffer, not an abort.
fn try_vec_with<T>(what: &str, n: usize, f: impl FnMut() -> T) -> Result<Vec<T>, rnn_kernels::Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| rnn_kernels::Error::TooLarge {
        arg: "--input, --hidden, --layers, --batch, --steps".into(),
        what: format!("{what}: {n} values"),
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
        reason: format!("could not be allocated ({e})"),
    })?;
    v.extend(std::iter::repeat_with(f).take(n));
    Ok(v)
}

/// `Params::init_uniform`'s values (the same generator and bits), in a fallibly allocated buffer.
fn init_params<T: Element>(cfg: &RnnConfig, seed: u64) -> Result<Params<T>, rnn_kernels::Error> {
    let k = 1.0 / (cfg.hidden_size() as f64).sqrt();
    let mut rng = SplitMix64::new(seed);
    let data = try_vec_with("parameters", rnn_kernels::ParamLayout::new(cfg).len(), || T::from_f64(rng.uniform(-k, k)))?;
    Params::from_vec(cfg, data)
}

/// The number of elements of a `[T, B, ·]` shape, or an error if it does not fit in `usize`.
fn count(s: [usize; 3]) -> Result<usize, rnn_kernels::Error> {
    s.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| rnn_kernels::Error::TooLarge {
        arg: "--input, --hidden, --batch, --steps".into(),
        what: format!("a buffer of shape {s:?}"),
        bytes: s.iter().map(|&d| d as u128).product::<u128>().saturating_mul(4),
        reason: "does not fit in the address space".into(),
    })
}

/// GEMM FLOPs of one inference pass.
fn gemm_flops(cfg: &RnnConfig, shape: &SeqShape) -> f64 {
    let (g, h, hout) = (cfg.gates() as f64, cfg.hidden_size() as f64, cfg.hidden_out_size() as f64);
    let bt = (shape.batch() * shape.steps()) as f64;
    let mut f = 0.0;
    for l in 0..cfg.num_layers() {
        let per_dir =
            2.0 * g * h * (cfg.layer_input_size(l) as f64 + hout) * bt + if cfg.proj_size() > 0 { 2.0 * hout * h * bt } else { 0.0 };
        f += per_dir * cfg.num_directions() as f64;
    }
    f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The buffers of the timed calls, in the backend's memory (`V`: a host `Vec`, a device buffer).
struct Bufs<V> {
    x: V,
    dy: V,
    y: V,
    hn: V,
    cn: Option<V>,
    dx: V,
    dparams: V,
}

/// The timed loop on any backend: per-rep milliseconds. `sync` waits for the work the backend
/// has queued (nothing to wait for on the host; the device is synchronised before each clock
/// stop).
fn time_loop<T: Element, B: Backend<T>, V: BorrowMut<B::Buf>>(
    backend: &B,
    plan: &B::Plan,
    shape: &SeqShape,
    bufs: &mut Bufs<V>,
    a: &Args,
    sync: impl Fn() -> Result<(), rnn_kernels::Error>,
) -> Result<Vec<f64>, rnn_kernels::Error> {
    let mut reserve = B::Reserve::default();
    let mut times = try_vec_with("--reps timings", a.reps, || 0.0)?;
    times.clear();
    sync()?;
    for rep in 0..a.warmup + a.reps {
        let t0 = Instant::now();
        let masks = (a.train && [a.dropout, a.zoneout, a.zoneout_cell, a.recurrent_dropout, a.input_dropout].iter().any(|&p| p > 0.0))
            .then(|| MaskStream::new(7, rep as u64));
        let input = ForwardInput { x: bufs.x.borrow(), h0: None, c0: None, masks };
        let output = ForwardOutput { y: bufs.y.borrow_mut(), hn: Some(bufs.hn.borrow_mut()), cn: bufs.cn.as_mut().map(|c| c.borrow_mut()) };
        if a.train {
            backend.forward_training(plan, shape, input, output, &mut reserve)?;
            backend.backward(
                plan,
                &reserve,
                BackwardInput { dy: Some(bufs.dy.borrow()), dhn: None, dcn: None },
                BackwardOutput { dx: Some(bufs.dx.borrow_mut()), dh0: None, dc0: None, dparams: Some(bufs.dparams.borrow_mut()) },
                GradMode::Overwrite,
            )?;
        } else {
            backend.forward_inference(plan, shape, input, output)?;
        }
        sync()?;
        std::hint::black_box(&*bufs);
        if rep >= a.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}

/// Runs the timed loop on a host backend in storage type `T`; returns per-rep milliseconds.
fn time_host<T: Element, B: Backend<T, Buf = [T]>>(
    backend: &B,
    cfg: &RnnConfig,
    shape: &SeqShape,
    a: &Args,
) -> Result<Vec<f64>, rnn_kernels::Error> {
    let params = init_params::<T>(cfg, 1)?;
    let plan = backend.plan(cfg, params.as_slice())?;
    let mut rng = SplitMix64::new(2);
    let mut randn = |what: &str, n: usize| try_vec_with(what, n, || T::from_f64(rng.normal()));
    let x = randn("x", count(shape.x_shape(cfg))?)?;
    let dy = randn("dy", count(shape.y_shape(cfg))?)?;
    let zeros = |what: &str, n: usize| try_vec_with(what, n, T::default);
    let mut bufs = Bufs {
        dx: zeros("dx", x.len())?,
        x,
        dy,
        y: zeros("y", count(shape.y_shape(cfg))?)?,
        hn: zeros("h_n", count(shape.h_shape(cfg))?)?,
        cn: cfg.cell().has_cell_state().then(|| zeros("c_n", count(shape.c_shape(cfg))?)).transpose()?,
        dparams: zeros("dparams", params.layout().len())?,
    };
    time_loop(backend, &plan, shape, &mut bufs, a, || Ok(()))
}

/// The CUDA backend timed on device buffers: inputs uploaded once, nothing copied back inside
/// the timed loop, and the device synchronised before each clock stop.
#[cfg(feature = "cuda")]
mod cuda_bench {
    use super::{count, init_params, time_loop, try_vec_with, Args, Bufs};
    use rnn_kernels::testkit::SplitMix64;
    use rnn_kernels::{Backend, Cuda, CudaElement, RnnConfig, SeqShape};

    /// Times `a.dtype` storage.
    pub fn time(cuda: &Cuda, cfg: &RnnConfig, shape: &SeqShape, a: &Args) -> Result<Vec<f64>, rnn_kernels::Error> {
        match a.dtype.as_str() {
            "f16" => time_as::<rnn_kernels::f16>(cuda, cfg, shape, a),
            "bf16" => time_as::<rnn_kernels::bf16>(cuda, cfg, shape, a),
            _ => time_as::<f32>(cuda, cfg, shape, a),
        }
    }

    fn time_as<T: CudaElement>(cuda: &Cuda, cfg: &RnnConfig, shape: &SeqShape, a: &Args) -> Result<Vec<f64>, rnn_kernels::Error> {
        let params = init_params::<T>(cfg, 1)?;
        let plan = cuda.plan(cfg, &cuda.upload(params.as_slice())?)?;
        let mut rng = SplitMix64::new(2);
        let mut randn = |what: &str, n: usize| try_vec_with(what, n, || T::from_f64(rng.normal()));
        let mut bufs = Bufs {
            x: cuda.upload(&randn("x", count(shape.x_shape(cfg))?)?)?,
            dy: cuda.upload(&randn("dy", count(shape.y_shape(cfg))?)?)?,
            y: cuda.zeros::<T>(count(shape.y_shape(cfg))?)?,
            hn: cuda.zeros(count(shape.h_shape(cfg))?)?,
            cn: cfg.cell().has_cell_state().then(|| cuda.zeros(count(shape.c_shape(cfg))?)).transpose()?,
            dx: cuda.zeros(count(shape.x_shape(cfg))?)?,
            dparams: cuda.zeros(params.layout().len())?,
        };
        time_loop(cuda, &plan, shape, &mut bufs, a, || cuda.synchronize())
    }
}

/// The configuration of the flags; the cell options' values are checked by `build`.
fn config(a: &Args) -> Result<RnnConfig, rnn_kernels::Error> {
    let direction = a.direction.unwrap_or(if a.bidirectional { Direction::Bidirectional } else { Direction::Forward });
    RnnConfig::new(a.cell, a.input, a.hidden)
        .num_layers(a.layers)
        .direction(direction)
        .proj_size(a.proj)
        .merge(a.merge)
        .peephole(a.peephole)
        .gate_clip(a.clip)
        .input_forget(a.input_forget)
        .linear_before_reset(!a.cho)
        .layer_norm(a.layer_norm)
        .batch_first(a.batch_first)
        .dropout(a.dropout)
        .zoneout(a.zoneout)
        .zoneout_cell(a.zoneout_cell)
        .recurrent_dropout(a.recurrent_dropout)
        .input_dropout(a.input_dropout)
        .build()
}

/// The `config` name's suffixes of the cell options, in `benches/peers.py`'s order.
fn option_suffix(cfg: &RnnConfig) -> String {
    let mut s = String::new();
    if cfg.reverse_only() {
        s += "-rev";
    }
    if cfg.merge() == Merge::Sum {
        s += "-sum";
    }
    if cfg.peephole() {
        s += "-peep";
    }
    if let Some(clip) = cfg.gate_clip() {
        s += &format!("-clip{clip}");
    }
    if cfg.input_forget() {
        s += "-if";
    }
    if !cfg.linear_before_reset() {
        s += "-cho";
    }
    if cfg.layer_norm() {
        s += "-ln";
    }
    if cfg.batch_first() {
        s += "-bf";
    }
    if let Some(p) = cfg.dropout() {
        s += &format!("-drop{p}");
    }
    if let Some(z) = cfg.zoneout() {
        s += &format!("-zo{z}");
    }
    if let Some(z) = cfg.zoneout_cell() {
        s += &format!("-zoc{z}");
    }
    if let Some(p) = cfg.recurrent_dropout() {
        s += &format!("-rdrop{p}");
    }
    if let Some(p) = cfg.input_dropout() {
        s += &format!("-idrop{p}");
    }
    s
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(m) => {
            eprintln!("{m}");
            return ExitCode::from(2);
        }
    };
    let cfg = match config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = || -> Result<(String, Option<String>, Vec<f64>, f64), rnn_kernels::Error> {
        // `parse` checked each at least 1: what SeqShape refuses is a T·B no buffer holds.
        let shape = SeqShape::new(a.steps, a.batch).map_err(|e| rnn_kernels::Error::InvalidArgument {
            arg: "--steps, --batch".into(),
            expected: format!("a number of rows steps·batch that fits in memory ({e})"),
            got: format!("--steps {}, --batch {}", a.steps, a.batch),
        })?;
        check_memory(&a, &cfg, &shape)?;
        let flops = gemm_flops(&cfg, &shape) * if a.train { 3.0 } else { 1.0 };
        match a.backend.as_str() {
            "reference" => Ok(("rnn-kernels-reference".into(), None, time_host::<f32, _>(&Reference, &cfg, &shape, &a)?, flops)),
            "cpu" => {
                let mut cpu = Cpu::with_threads(a.threads)?;
                if let Some(t) = a.tune {
                    cpu.set_tuning(t)?;
                }
                let isa = cpu.isa().to_string();
                let times = match a.dtype.as_str() {
                    "f16" => time_host::<rnn_kernels::f16, _>(&cpu, &cfg, &shape, &a)?,
                    "bf16" => time_host::<rnn_kernels::bf16, _>(&cpu, &cfg, &shape, &a)?,
                    _ => time_host::<f32, _>(&cpu, &cfg, &shape, &a)?,
                };
                for r in tuning_records() {
                    let trials: Vec<String> = r.trials.iter().map(|(s, t)| format!("{s}: {:.3} ms", t * 1e3)).collect();
                    eprintln!(
                        "tuned {:?} batch {} in {:.1} ms ({} steps a trial): {} [{}]",
                        r.pass,
                        r.batch,
                        r.seconds * 1e3,
                        r.trial_steps,
                        r.chosen,
                        trials.join("; ")
                    );
                }
                Ok(("rnn-kernels-cpu".into(), Some(isa), times, flops))
            }
            #[cfg(feature = "cuda")]
            "cuda" => {
                let cuda = rnn_kernels::Cuda::new()?;
                let name = cuda.device_name().to_string();
                Ok(("rnn-kernels-cuda".into(), Some(name), cuda_bench::time(&cuda, &cfg, &shape, &a)?, flops))
            }
            #[cfg(not(feature = "cuda"))]
            "cuda" => Err(rnn_kernels::Error::BackendUnavailable {
                backend: a.backend.clone(),
                reason: "this binary was built without the `cuda` feature: cargo run --release --features cuda --example bench".into(),
            }),
            other => Err(rnn_kernels::Error::InvalidArgument {
                arg: "--backend".into(),
                expected: "one of reference, cpu, cuda".into(),
                got: format!("{other:?}"),
            }),
        }
    };
    match run() {
        Ok((imp, isa, times, flops)) => {
            let med = median(times);
            let mut config = format!("{}-i{}-h{}-b{}-t{}", a.cell, a.input, a.hidden, a.batch, a.steps);
            if a.layers > 1 {
                config += &format!("-l{}", a.layers);
            }
            if cfg.bidirectional() {
                config += "-bi";
            }
            if a.proj > 0 {
                config += &format!("-p{}", a.proj);
            }
            config += &option_suffix(&cfg);
            let names = cfg.options();
            let options = if names.is_empty() { String::new() } else { format!(",\"options\":\"{}\"", names.join(",")) };
            let isa = isa.map(|i| format!(",\"isa\":\"{i}\"")).unwrap_or_default();
            println!(
                "{{\"impl\":\"{imp}\",\"config\":\"{config}\",\"cell\":\"{}\",\"input\":{},\"hidden\":{},\"batch\":{},\"steps\":{},\"layers\":{},\"bidirectional\":{}{options},\"mode\":\"{}\",\"threads\":{}{isa},\"dtype\":\"{}\",\"median_ms\":{:.4},\"gflops\":{:.3}}}",
                a.cell,
                a.input,
                a.hidden,
                a.batch,
                a.steps,
                a.layers,
                cfg.bidirectional(),
                if a.train { "train" } else { "inference" },
                a.threads,
                a.dtype,
                med,
                flops / (med * 1e-3) / 1e9
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
