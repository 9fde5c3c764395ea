//! The CPU backend against the f64 reference, for every ISA this machine has: a property test
//! over random configurations, every PyTorch fixture, bit-identical results for any thread
//! count, and the ISA choice.
//!
//! Tolerances (error metric of `shared/case-format.md`): forward outputs 1e-5, gradients 1e-4.

mod common;

use common::describe;
use proptest::prelude::*;
use rnn_kernels::case::{max_error, run_case, Case};
use rnn_kernels::{Backend, CellKind, Cpu, Isa, Params, Reference, Rnn, RnnConfig, SeqShape, SplitMix64};
use std::path::PathBuf;

const FWD_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

/// One problem in f32, and the same numbers in f64 for the reference.
struct Problem {
    cfg: RnnConfig,
    shape: SeqShape,
    params: Vec<f32>,
    x: Vec<f32>,
    h0: Vec<f32>,
    c0: Option<Vec<f32>>,
    dy: Vec<f32>,
    dhn: Vec<f32>,
    dcn: Option<Vec<f32>>,
}

fn up(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

impl Problem {
    /// Inputs uniform in ±`x_range` (±25 saturates every gate), parameters PyTorch-initialised.
    fn new(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> Problem {
        let mut rng = SplitMix64::new(seed);
        let mut u = |n: usize, r: f64| (0..n).map(|_| rng.uniform(-r, r) as f32).collect::<Vec<f32>>();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let lstm = cfg.cell().has_cell_state();
        Problem {
            x: u(n(shape.x_shape(cfg)), x_range),
            h0: u(n(shape.h_shape(cfg)), 1.0),
            c0: lstm.then(|| u(n(shape.c_shape(cfg)), 2.0)),
            dy: u(n(shape.y_shape(cfg)), 1.0),
            dhn: u(n(shape.h_shape(cfg)), 1.0),
            dcn: lstm.then(|| u(n(shape.c_shape(cfg)), 1.0)),
            params: Params::<f32>::init_uniform(cfg, seed ^ 0xabc).into_vec(),
            cfg: cfg.clone(),
            shape: shape.clone(),
        }
    }

    /// Forward (training) and backward on `backend`: (y, hn, cn, dx, dh0, dc0, dparams).
    fn run_f32<B: Backend<f32, Buf = [f32]>>(&self, backend: B) -> Vec<Vec<f32>> {
        let rnn = Rnn::new(backend, &self.cfg, &self.params[..]).unwrap();
        let mut reserve = Default::default();
        let o = rnn.forward_training(&self.shape, &self.x, Some(&self.h0), self.c0.as_deref(), &mut reserve).unwrap();
        let g = rnn.backward(&reserve, Some(&self.dy), Some(&self.dhn), self.dcn.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
    }

    fn run_reference(&self) -> Vec<Vec<f64>> {
        let rnn = Rnn::new(Reference, &self.cfg, &up(&self.params)[..]).unwrap();
        let mut reserve = Default::default();
        let c0 = self.c0.as_deref().map(up);
        let o = rnn.forward_training(&self.shape, &up(&self.x), Some(&up(&self.h0)), c0.as_deref(), &mut reserve).unwrap();
        let dcn = self.dcn.as_deref().map(up);
        let g = rnn.backward(&reserve, Some(&up(&self.dy)), Some(&up(&self.dhn)), dcn.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
    }

    /// Largest errors of `got` against the reference: (forward, gradients), with names.
    fn errors(&self, got: &[Vec<f32>], want: &[Vec<f64>]) -> Vec<(&'static str, f64, f64)> {
        const NAMES: [&str; 7] = ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"];
        NAMES
            .iter()
            .zip(got.iter().zip(want))
            .enumerate()
            .map(|(i, (name, (g, w)))| (*name, max_error(&up(g), w), if i < 3 { FWD_TOL } else { GRAD_TOL }))
            .collect()
    }
}

fn config() -> impl Strategy<Value = RnnConfig> {
    (0usize..4, 1usize..20, 1usize..20, 1usize..4, any::<bool>(), any::<bool>(), 0usize..6).prop_map(|(c, i, h, l, bi, bias, p)| {
        let cell = CellKind::ALL[c];
        let proj = if cell == CellKind::Lstm && h > 1 { p.min(h - 1) } else { 0 };
        RnnConfig::new(cell, i, h).num_layers(l).bidirectional(bi).bias(bias).proj_size(proj).build().unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every ISA of this machine, 2 threads, against the f64 reference.
    #[test]
    fn cpu_matches_reference(cfg in config(), t in 1usize..7, lens in prop::collection::vec(1usize..7, 1..6), seed in any::<u64>()) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = Problem::new(&cfg, &shape, seed, 25.0);
        let want = p.run_reference();
        for isa in Isa::available() {
            let got = p.run_f32(Cpu::with_isa(isa, 2).unwrap());
            for (name, err, tol) in p.errors(&got, &want) {
                prop_assert!(err <= tol, "{isa}: {name} error {err:.3e} > {tol:e}: {}", describe(&cfg, &shape));
            }
        }
    }
}

fn case_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    files.sort();
    assert!(files.len() >= 20, "the PyTorch fixtures are missing");
    files
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    let mut failures = Vec::new();
    for isa in Isa::available() {
        let cpu = Cpu::with_isa(isa, 2).unwrap();
        for f in case_files() {
            let case = Case::<f32>::load(&f).unwrap();
            let report = run_case(&cpu, &case).unwrap();
            if !report.passes(GRAD_TOL) {
                failures.push(format!("{isa} {}: {:?}", f.display(), report.worst()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Large enough that the GEMMs split across threads (by rows and by columns).
#[test]
fn results_are_bit_identical_for_any_thread_count() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 64, 96).num_layers(2).bidirectional(true).proj_size(40).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 70, 130).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 33, 200).num_layers(2).build().unwrap(),
    ];
    // 37 rows of 9 steps; and 20 steps, which the input projection takes in two chunks
    // (`ceil(512 / 37)` = 14 steps), with enough gate values per step (37·4·128) for the cell
    // kernels to be split across threads.
    let long = RnnConfig::new(CellKind::Lstm, 50, 128).bidirectional(true).build().unwrap();
    let cases = configs.iter().map(|c| (c, 9)).chain([(&long, 20)]);
    for (cfg, steps) in cases {
        let shape = SeqShape::with_lengths(steps, (0..37).map(|b| 1 + (b * 5) % steps).collect()).unwrap();
        let p = Problem::new(cfg, &shape, 77, 3.0);
        for isa in Isa::available() {
            let one = p.run_f32(Cpu::with_isa(isa, 1).unwrap());
            for threads in [2, 3] {
                let many = p.run_f32(Cpu::with_isa(isa, threads).unwrap());
                assert!(one == many, "{isa}, {threads} threads differ from 1 thread: {}", describe(cfg, &shape));
            }
            // And still right.
            for (name, err, tol) in p.errors(&one, &p.run_reference()) {
                assert!(err <= tol, "{isa}: {name} error {err:.3e}: {}", describe(cfg, &shape));
            }
        }
    }
}

#[test]
fn isa_choice() {
    let available = Isa::available();
    assert_eq!(available[0], Isa::Scalar);
    assert_eq!(Isa::best(), *available.last().unwrap());
    #[cfg(target_arch = "x86_64")]
    {
        let e = Cpu::with_isa(Isa::Neon, 1).unwrap_err().to_string();
        assert!(e.contains("`isa`") && e.contains("neon"), "{e}");
    }
    #[cfg(target_arch = "aarch64")]
    {
        let e = Cpu::with_isa(Isa::Avx2, 1).unwrap_err().to_string();
        assert!(e.contains("`isa`") && e.contains("avx2"), "{e}");
    }
    assert!(Cpu::with_isa(Isa::Scalar, 0).unwrap_err().to_string().contains("`threads`"));
    assert!("sse9".parse::<Isa>().unwrap_err().to_string().contains("\"sse9\""));
    // A forced ISA is really the one used, and an unusable one is an error, not a fallback.
    match std::env::var("RNN_KERNELS_ISA") {
        Ok(forced) => match forced.parse::<Isa>() {
            Ok(isa) if isa.is_supported() => assert_eq!(Cpu::new().unwrap().isa(), isa),
            _ => assert!(Cpu::new().unwrap_err().to_string().contains("RNN_KERNELS_ISA")),
        },
        Err(_) => assert_eq!(Cpu::new().unwrap().isa(), Isa::best()),
    }
    eprintln!("ISAs on this machine: {available:?}; default {}", Isa::best());
}
