//! Times one configuration on one backend and prints one JSON line, the same format as
//! `benches/peers.py` prints for PyTorch and onnxruntime, so `benches/compare.py` can put them
//! side by side.
//!
//! ```text
//! cargo run --release --example bench -- --backend cpu --cell lstm --input 512 --hidden 512 \
//!     --batch 64 --steps 100 [--layers 1] [--bidirectional] --mode inference|train --threads 2 \
//!     [--reps N] [--warmup N]
//! ```
//!
//! GFLOP counts only the GEMMs: per layer and direction `2·G·H·(In + Hout)·B·T` for inference
//! (plus `2·Hout·H·B·T` for an LSTM projection), three times that for `train` (forward in
//! training mode plus the full backward). The median over `--reps` timed runs is reported, after
//! `--warmup` untimed ones. `--threads` sets the CPU backend's thread count (the reference is
//! single-threaded); `RNN_KERNELS_ISA` forces the CPU backend's ISA.

use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{
    Backend, BackwardInput, BackwardOutput, CellKind, Cpu, Element, ForwardInput, ForwardOutput, GradMode, Params, Reference, RnnConfig,
    SeqShape,
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
}

const USAGE: &str = "usage: bench --backend reference|cpu|cuda --cell lstm|gru|rnn_tanh|rnn_relu --input I --hidden H \
--batch B --steps T [--layers L] [--bidirectional] [--proj P] --mode inference|train [--threads N] [--reps N] [--warmup N] \
[--dtype f32|f16|bf16 (cuda)]";

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
    };
    let mut it = std::env::args().skip(1);
    let num = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or(format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: expected an unsigned integer, got {v:?}"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--backend" => a.backend = it.next().ok_or("--backend needs a value")?,
            "--cell" => a.cell = it.next().ok_or("--cell needs a value")?.parse().map_err(|e| format!("{e}"))?,
            "--input" => a.input = num("--input", it.next())?,
            "--hidden" => a.hidden = num("--hidden", it.next())?,
            "--batch" => a.batch = num("--batch", it.next())?,
            "--steps" => a.steps = num("--steps", it.next())?,
            "--layers" => a.layers = num("--layers", it.next())?,
            "--proj" => a.proj = num("--proj", it.next())?,
            "--bidirectional" => a.bidirectional = true,
            "--threads" => a.threads = num("--threads", it.next())?,
            "--reps" => a.reps = num("--reps", it.next())?.max(1),
            "--warmup" => a.warmup = num("--warmup", it.next())?,
            "--dtype" => a.dtype = it.next().ok_or("--dtype needs a value")?,
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
    if !matches!(a.dtype.as_str(), "f32" | "f16" | "bf16") || (a.dtype != "f32" && a.backend != "cuda") {
        return Err(format!("--dtype: f32, or f16/bf16 with --backend cuda; got {:?} with {:?}", a.dtype, a.backend));
    }
    if a.input == 0 || a.hidden == 0 || a.batch == 0 || a.steps == 0 {
        return Err(format!("--input, --hidden, --batch and --steps are required\n{USAGE}"));
    }
    Ok(a)
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
    let mut times = Vec::with_capacity(a.reps);
    sync()?;
    for rep in 0..a.warmup + a.reps {
        let t0 = Instant::now();
        let input = ForwardInput { x: bufs.x.borrow(), h0: None, c0: None };
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

/// Runs the timed loop on a host backend in f32; returns per-rep milliseconds.
fn time_host<B: Backend<f32, Buf = [f32]>>(
    backend: &B,
    cfg: &RnnConfig,
    shape: &SeqShape,
    a: &Args,
) -> Result<Vec<f64>, rnn_kernels::Error> {
    let params = Params::<f32>::init_uniform(cfg, 1)?;
    let plan = backend.plan(cfg, params.as_slice())?;
    let mut rng = SplitMix64::new(2);
    let mut randn = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    let n = |s: [usize; 3]| s.iter().product::<usize>();
    let x = randn(n(shape.x_shape(cfg)));
    let dy = randn(n(shape.y_shape(cfg)));
    let mut bufs = Bufs {
        dx: vec![0.0; x.len()],
        x,
        dy,
        y: vec![0.0; n(shape.y_shape(cfg))],
        hn: vec![0.0; n(shape.h_shape(cfg))],
        cn: cfg.cell().has_cell_state().then(|| vec![0.0; n(shape.c_shape(cfg))]),
        dparams: vec![0.0; params.layout().len()],
    };
    time_loop(backend, &plan, shape, &mut bufs, a, || Ok(()))
}

/// The CUDA backend timed on device buffers: inputs uploaded once, nothing copied back inside
/// the timed loop, and the device synchronised before each clock stop.
#[cfg(feature = "cuda")]
mod cuda_bench {
    use super::{time_loop, Args, Bufs};
    use rnn_kernels::testkit::SplitMix64;
    use rnn_kernels::{Backend, Cuda, CudaElement, Params, RnnConfig, SeqShape};

    /// Times `a.dtype` storage.
    pub fn time(cuda: &Cuda, cfg: &RnnConfig, shape: &SeqShape, a: &Args) -> Result<Vec<f64>, rnn_kernels::Error> {
        match a.dtype.as_str() {
            "f16" => time_as::<rnn_kernels::f16>(cuda, cfg, shape, a),
            "bf16" => time_as::<rnn_kernels::bf16>(cuda, cfg, shape, a),
            _ => time_as::<f32>(cuda, cfg, shape, a),
        }
    }

    fn time_as<T: CudaElement>(cuda: &Cuda, cfg: &RnnConfig, shape: &SeqShape, a: &Args) -> Result<Vec<f64>, rnn_kernels::Error> {
        let params = Params::<T>::init_uniform(cfg, 1)?;
        let plan = cuda.plan(cfg, &cuda.upload(params.as_slice())?)?;
        let mut rng = SplitMix64::new(2);
        let mut randn = |n: usize| (0..n).map(|_| T::from_f64(rng.normal())).collect::<Vec<T>>();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let mut bufs = Bufs {
            x: cuda.upload(&randn(n(shape.x_shape(cfg))))?,
            dy: cuda.upload(&randn(n(shape.y_shape(cfg))))?,
            y: cuda.zeros::<T>(n(shape.y_shape(cfg)))?,
            hn: cuda.zeros(n(shape.h_shape(cfg)))?,
            cn: cfg.cell().has_cell_state().then(|| cuda.zeros(n(shape.c_shape(cfg)))).transpose()?,
            dx: cuda.zeros(n(shape.x_shape(cfg)))?,
            dparams: cuda.zeros(params.layout().len())?,
        };
        time_loop(cuda, &plan, shape, &mut bufs, a, || cuda.synchronize())
    }
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(m) => {
            eprintln!("{m}");
            return ExitCode::from(2);
        }
    };
    let run = || -> Result<(String, Option<String>, Vec<f64>, f64), rnn_kernels::Error> {
        let cfg =
            RnnConfig::new(a.cell, a.input, a.hidden).num_layers(a.layers).bidirectional(a.bidirectional).proj_size(a.proj).build()?;
        let shape = SeqShape::new(a.steps, a.batch)?;
        let flops = gemm_flops(&cfg, &shape) * if a.train { 3.0 } else { 1.0 };
        match a.backend.as_str() {
            "reference" => Ok(("rnn-kernels-reference".into(), None, time_host(&Reference, &cfg, &shape, &a)?, flops)),
            "cpu" => {
                let cpu = Cpu::with_threads(a.threads)?;
                let isa = cpu.isa().to_string();
                Ok(("rnn-kernels-cpu".into(), Some(isa), time_host(&cpu, &cfg, &shape, &a)?, flops))
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
            if a.bidirectional {
                config += "-bi";
            }
            if a.proj > 0 {
                config += &format!("-p{}", a.proj);
            }
            let isa = isa.map(|i| format!(",\"isa\":\"{i}\"")).unwrap_or_default();
            println!(
                "{{\"impl\":\"{imp}\",\"config\":\"{config}\",\"cell\":\"{}\",\"input\":{},\"hidden\":{},\"batch\":{},\"steps\":{},\"layers\":{},\"bidirectional\":{},\"mode\":\"{}\",\"threads\":{}{isa},\"dtype\":\"{}\",\"median_ms\":{:.4},\"gflops\":{:.3}}}",
                a.cell,
                a.input,
                a.hidden,
                a.batch,
                a.steps,
                a.layers,
                a.bidirectional,
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
