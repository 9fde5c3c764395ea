//! Criterion benchmarks: every backend × cell × phase (forward inference, forward training,
//! backward), plus the fused cell kernels alone in GB/s.
//!
//! ```text
//! cargo bench --bench rnn                   # everything
//! cargo bench --bench rnn -- forward_inference/reference
//! ```
//!
//! Throughput of the layer benches is in GEMM FLOPs (criterion prints it as "elem/s"):
//! `2·G·H·(I+H)·B·T` per layer-direction for a forward pass, twice that for backward. The
//! reference (plain loops) is the baseline every optimised backend is compared with; it only
//! runs the small configurations, where its timings are meaningful. Host backends run on host
//! memory and need no synchronisation; the CUDA backend will synchronise inside the timed
//! closure before it returns.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rnn_kernels::testkit::bench::CellStep;
use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{
    Backend, BackwardInput, BackwardOutput, CellKind, Cpu, ForwardInput, ForwardOutput, GradMode, Isa, Params, Reference, RnnConfig,
    SeqShape,
};
use std::hint::black_box;

/// (cell, I, H, B, T): small configurations that every backend runs.
const SMALL: &[(CellKind, usize, usize, usize, usize)] = &[
    (CellKind::Lstm, 64, 64, 1, 50),
    (CellKind::Lstm, 128, 128, 16, 20),
    (CellKind::Gru, 128, 128, 16, 20),
    (CellKind::RnnTanh, 128, 128, 16, 20),
    (CellKind::RnnRelu, 128, 128, 16, 20),
];

fn forward_flops(cfg: &RnnConfig, shape: &SeqShape) -> u64 {
    let (g, h) = (cfg.gates(), cfg.hidden_size());
    (0..cfg.num_layers())
        .map(|l| 2 * g * h * (cfg.layer_input_size(l) + h) * shape.batch() * shape.steps() * cfg.num_directions())
        .sum::<usize>() as u64
}

struct Problem {
    cfg: RnnConfig,
    shape: SeqShape,
    params: Params<f32>,
    x: Vec<f32>,
    dy: Vec<f32>,
}

impl Problem {
    fn new(&(cell, i, h, b, t): &(CellKind, usize, usize, usize, usize)) -> Self {
        let cfg = RnnConfig::new(cell, i, h).build().unwrap();
        let shape = SeqShape::new(t, b).unwrap();
        let mut rng = SplitMix64::new(3);
        let mut randn = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let x = randn(t * b * i);
        let dy = randn(t * b * cfg.output_size());
        Problem { params: Params::init_uniform(&cfg, 4).unwrap(), cfg, shape, x, dy }
    }
    fn id(&self) -> String {
        let c = &self.cfg;
        format!("{}-i{}-h{}-b{}-t{}", c.cell(), c.input_size(), c.hidden_size(), self.shape.batch(), self.shape.steps())
    }
}

/// Benches the three phases of one host backend over the small configurations.
fn bench_host<B: Backend<f32, Buf = [f32]>>(c: &mut Criterion, name: &str, backend: &B) {
    for p in SMALL.iter().map(Problem::new) {
        let plan = backend.plan(&p.cfg, p.params.as_slice()).unwrap();
        let (ys, hs, cs) = (p.shape.y_shape(&p.cfg), p.shape.h_shape(&p.cfg), p.shape.c_shape(&p.cfg));
        let mut y = vec![0.0; ys.iter().product()];
        let mut hn = vec![0.0; hs.iter().product()];
        let mut cn = p.cfg.cell().has_cell_state().then(|| vec![0.0; cs.iter().product()]);
        let mut reserve = B::Reserve::default();
        let flops = forward_flops(&p.cfg, &p.shape);

        let mut g = c.benchmark_group(format!("forward_inference/{name}"));
        g.throughput(Throughput::Elements(flops));
        g.bench_function(BenchmarkId::from_parameter(p.id()), |bch| {
            bch.iter(|| {
                backend
                    .forward_inference(
                        &plan,
                        &p.shape,
                        ForwardInput { x: &p.x, h0: None, c0: None, masks: None },
                        ForwardOutput { y: &mut y, hn: Some(&mut hn), cn: cn.as_deref_mut() },
                    )
                    .unwrap();
                black_box(&y);
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("forward_training/{name}"));
        g.throughput(Throughput::Elements(flops));
        g.bench_function(BenchmarkId::from_parameter(p.id()), |bch| {
            bch.iter(|| {
                backend
                    .forward_training(
                        &plan,
                        &p.shape,
                        ForwardInput { x: &p.x, h0: None, c0: None, masks: None },
                        ForwardOutput { y: &mut y, hn: Some(&mut hn), cn: cn.as_deref_mut() },
                        &mut reserve,
                    )
                    .unwrap();
                black_box(&y);
            })
        });
        g.finish();

        let mut dx = vec![0.0; p.x.len()];
        let mut dparams = vec![0.0; p.params.layout().len()];
        let mut g = c.benchmark_group(format!("backward/{name}"));
        g.throughput(Throughput::Elements(2 * flops));
        g.bench_function(BenchmarkId::from_parameter(p.id()), |bch| {
            bch.iter(|| {
                backend
                    .backward(
                        &plan,
                        &reserve,
                        BackwardInput { dy: Some(&p.dy), dhn: None, dcn: None },
                        BackwardOutput { dx: Some(&mut dx), dh0: None, dc0: None, dparams: Some(&mut dparams) },
                        GradMode::Overwrite,
                    )
                    .unwrap();
                black_box(&dparams);
            })
        });
        g.finish();
    }
}

fn layers(c: &mut Criterion) {
    bench_host(c, "reference", &Reference);
    for isa in Isa::available() {
        let cpu = Cpu::with_isa(isa, 2).unwrap();
        bench_host(c, &format!("cpu-{isa}-2threads"), &cpu);
    }
}

/// The fused pointwise kernels alone, in GB/s of the buffers each step reads and writes; the
/// reference's scalar loops are the baseline for the per-ISA kernels of the CPU backend.
fn cell_kernels(c: &mut Criterion) {
    for cell in CellKind::ALL {
        for (b, h) in [(1, 1024), (64, 512)] {
            let mut step = CellStep::new(cell, b, h);
            let id = format!("{cell}-b{b}-h{h}");
            let mut g = c.benchmark_group(format!("cell_forward/{cell}"));
            g.throughput(Throughput::Bytes(step.forward_bytes()));
            g.bench_function(BenchmarkId::new("scalar-reference", &id), |bch| bch.iter(|| step.forward_reference()));
            if CellStep::avx2_available() {
                g.bench_function(BenchmarkId::new("avx2", &id), |bch| bch.iter(|| step.forward_avx2()));
            }
            g.finish();
            let mut g = c.benchmark_group(format!("cell_backward/{cell}"));
            g.throughput(Throughput::Bytes(step.backward_bytes()));
            g.bench_function(BenchmarkId::new("scalar-reference", &id), |bch| bch.iter(|| step.backward_reference()));
            if CellStep::avx2_available() {
                g.bench_function(BenchmarkId::new("avx2", &id), |bch| bch.iter(|| step.backward_avx2()));
            }
            g.finish();
        }
    }
}

criterion_group!(benches, layers, cell_kernels);
criterion_main!(benches);
