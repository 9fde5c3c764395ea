//! Attention on the host emulation (`driver/attention.rs` with kernels/attention.cu compiled as
//! C++, the GEMMs with cuBLAS's conventions, fresh memory NaN), through the same host-slice code
//! as `CudaHost` ([`Stage`]), against the f64 reference (`crate::attention::reference`) on the
//! same f32-rounded inputs:
//!
//! - every score, with and without the attentional hidden state (`O = 0`, `O > 0`), variable
//!   encoder lengths (1, full and between), `Tq = 1` and `Tq > 1`: the forward (weights,
//!   context, hidden) at 1e-5 and the backward (`d_queries`, `d_keys`, `d_params`) at 1e-4
//!   (`max_error`, the CPU backend's f32 tolerances), with every incoming gradient and with
//!   each alone;
//! - the per-step path (the memory once, one call per decoder step, the memory's backward once)
//!   against the reference over all the steps;
//! - NaN in the keys' padding changes no bit of any result, and the keys' gradient is exactly 0
//!   there; weights exactly 0 past each length;
//! - a memory of another configuration or other keys, and gradients of another memory, are
//!   errors naming the argument;
//! - a call issues the same GEMMs and kernels for one sequence as for five (the per-sequence
//!   products are one strided-batched GEMM each).

use super::super::buffer::{DevBuf, View};
use super::super::driver::attention::{self, Stage};
use super::super::emulation::Emulation;
use super::super::exec::{Exec, Target};
use crate::attention::{
    reference, AttentionBackend, AttentionConfig, AttentionGrads, AttentionMemory, AttentionMemoryGrads, AttentionOutput, AttentionShape,
    AttentionUpstream, Score,
};
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::testkit::case::max_error;
use crate::testkit::SplitMix64;

const FWD_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

/// The emulation as the stage of host-slice calls: buffers are NaN-filled host memory, so an
/// output element the driver does not write shows.
impl Stage for Emulation {
    type Buf = DevBuf;

    fn up(&self, host: &[f32]) -> Result<DevBuf> {
        let b = self.alloc(Dtype::F32, host.len())?;
        // SAFETY: the buffer holds host.len() f32 (host memory on the emulation).
        unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), b.view().ptr as *mut f32, host.len()) };
        Ok(b)
    }

    fn out(&self, n: usize) -> Result<DevBuf> {
        self.alloc(Dtype::F32, n)
    }

    fn view(&self, b: &DevBuf) -> View {
        b.view()
    }

    fn run(&self, f: &mut dyn FnMut(&Exec<'_>) -> Result<()>) -> Result<()> {
        f(&self.exec())
    }

    fn down(&self, b: &DevBuf, host: &mut [f32]) -> Result<()> {
        assert_eq!(b.len(), host.len());
        // SAFETY: as up's.
        unsafe { std::ptr::copy_nonoverlapping(b.view().ptr as *const f32, host.as_mut_ptr(), host.len()) };
        Ok(())
    }
}

/// The driver's attention on the emulation, as `CudaHost`'s on the device.
#[derive(Default)]
struct Emulated(Emulation);

impl AttentionBackend<f32> for Emulated {
    fn attention_memory(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        keys: &[f32],
    ) -> Result<AttentionMemory<f32>> {
        attention::memory(&self.0, cfg, shape, params, keys)
    }

    fn attention_forward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
    ) -> Result<AttentionOutput<f32>> {
        attention::forward_with(&self.0, cfg, shape, params, memory, queries)
    }

    fn attention_backward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
        out: &AttentionOutput<f32>,
        up: AttentionUpstream<'_, f32>,
        d_memory: &mut AttentionMemoryGrads<f32>,
    ) -> Result<AttentionGrads<f32>> {
        attention::backward_with(&self.0, cfg, shape, params, memory, queries, out, up, d_memory)
    }

    fn attention_memory_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        d_memory: &AttentionMemoryGrads<f32>,
    ) -> Result<AttentionGrads<f32>> {
        attention::memory_backward(&self.0, cfg, shape, params, memory, d_memory)
    }
}

/// Values in `[-r, r]` that f32 holds exactly, as f64 and f32.
fn uniform(rng: &mut SplitMix64, n: usize, r: f64) -> (Vec<f64>, Vec<f32>) {
    let v: Vec<f32> = (0..n).map(|_| rng.uniform(-r, r) as f32).collect();
    (v.iter().map(|&x| x as f64).collect(), v)
}

/// A random problem in f32 and the same values in f64.
struct Problem {
    cfg: AttentionConfig,
    shape: AttentionShape,
    p64: [Vec<f64>; 6],
    p32: [Vec<f32>; 6],
}

const PARAMS: usize = 0;
const KEYS: usize = 1;
const QUERIES: usize = 2;
const D_WEIGHTS: usize = 3;
const D_CONTEXT: usize = 4;
const D_HIDDEN: usize = 5;

/// Which incoming gradients a backward gets.
#[derive(Clone, Copy, Debug)]
struct Incoming {
    weights: bool,
    context: bool,
    hidden: bool,
}

const ALL: Incoming = Incoming { weights: true, context: true, hidden: true };

impl Problem {
    fn new(cfg: &AttentionConfig, shape: &AttentionShape, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let (tq, s, b) = (shape.queries(), shape.steps(), shape.batch());
        let sizes = [
            cfg.param_len(),
            s * b * cfg.key_size(),
            tq * b * cfg.query_size(),
            tq * b * s,
            tq * b * cfg.key_size(),
            tq * b * cfg.output_size(),
        ];
        let ranges = [0.8, 1.0, 1.0, 1.0, 1.0, 1.0];
        let (mut p64, mut p32): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for (n, r) in sizes.into_iter().zip(ranges) {
            let (a, b) = uniform(&mut rng, n, r);
            p64.push(a);
            p32.push(b);
        }
        Problem { cfg: cfg.clone(), shape: shape.clone(), p64: p64.try_into().unwrap(), p32: p32.try_into().unwrap() }
    }

    fn up<'a, T>(&self, v: &'a [Vec<T>; 6], which: Incoming) -> AttentionUpstream<'a, T> {
        AttentionUpstream {
            d_weights: which.weights.then_some(&v[D_WEIGHTS][..]),
            d_context: which.context.then_some(&v[D_CONTEXT][..]),
            d_hidden: (which.hidden && self.cfg.output_size() > 0).then_some(&v[D_HIDDEN][..]),
        }
    }

    /// The reference's forward and backward in f64: `[weights, context, hidden, d_queries,
    /// d_keys, d_params]`.
    fn reference(&self, which: Incoming) -> Vec<Vec<f64>> {
        let p = &self.p64;
        let o = reference::forward(&self.cfg, &self.shape, &p[PARAMS], &p[KEYS], &p[QUERIES]).unwrap();
        let g = reference::backward(&self.cfg, &self.shape, &p[PARAMS], &p[KEYS], &p[QUERIES], &o, self.up(p, which)).unwrap();
        vec![o.weights, o.context, o.hidden, g.d_queries, g.d_keys, g.d_params]
    }

    /// The batched path on the emulation, keys as given.
    fn batched(&self, keys: &[f32], which: Incoming) -> Vec<Vec<f32>> {
        let (e, p) = (Emulated::default(), &self.p32);
        let o = e.attention_forward(&self.cfg, &self.shape, &p[PARAMS], keys, &p[QUERIES]).unwrap();
        let g = e.attention_backward(&self.cfg, &self.shape, &p[PARAMS], keys, &p[QUERIES], &o, self.up(p, which)).unwrap();
        vec![o.weights, o.context, o.hidden, g.d_queries, g.d_keys, g.d_params]
    }

    /// The per-step path on the emulation: the memory once, one call per decoder step (`Tq = 1`)
    /// over it, the memory's backward once; the results of the steps joined.
    fn per_step(&self) -> Vec<Vec<f32>> {
        let (e, p, cfg) = (Emulated::default(), &self.p32, &self.cfg);
        let (tq, b, s) = (self.shape.queries(), self.shape.batch(), self.shape.steps());
        let step = AttentionShape::new(1, s, self.shape.lengths().to_vec()).unwrap();
        let memory = e.attention_memory(cfg, &step, &p[PARAMS], &p[KEYS]).unwrap();
        let mut dm = AttentionMemoryGrads::new(&memory);
        let mut r: Vec<Vec<f32>> = vec![Vec::new(); 6];
        r[5] = vec![0.0; cfg.param_len()];
        let rows = |v: &[f32], t: usize, w: usize| v[t * b * w..(t + 1) * b * w].to_vec();
        for t in 0..tq {
            let (hq, hk, o) = (cfg.query_size(), cfg.key_size(), cfg.output_size());
            let q = rows(&p[QUERIES], t, hq);
            let out = e.attention_forward_with(cfg, &step, &p[PARAMS], &memory, &q).unwrap();
            let (dw, dc, dh) = (rows(&p[D_WEIGHTS], t, s), rows(&p[D_CONTEXT], t, hk), rows(&p[D_HIDDEN], t, o));
            let up = AttentionUpstream { d_weights: Some(&dw[..]), d_context: Some(&dc[..]), d_hidden: (o > 0).then_some(&dh[..]) };
            let g = e.attention_backward_with(cfg, &step, &p[PARAMS], &memory, &q, &out, up, &mut dm).unwrap();
            assert!(g.d_keys.is_empty());
            r[0].extend(out.weights);
            r[1].extend(out.context);
            r[2].extend(out.hidden);
            r[3].extend(g.d_queries);
            r[5].iter_mut().zip(&g.d_params).for_each(|(a, x)| *a += x);
        }
        let k = e.attention_memory_backward(cfg, &step, &p[PARAMS], &memory, &dm).unwrap();
        assert!(k.d_queries.is_empty());
        r[4] = k.d_keys;
        r[5].iter_mut().zip(&k.d_params).for_each(|(a, x)| *a += x);
        r
    }

    /// The keys with NaN in every padding row.
    fn nan_padded_keys(&self) -> Vec<f32> {
        let (b, hk) = (self.shape.batch(), self.cfg.key_size());
        let mut keys = self.p32[KEYS].clone();
        for s in 0..self.shape.steps() {
            for (bi, &len) in self.shape.lengths().iter().enumerate() {
                if s >= len {
                    keys[(s * b + bi) * hk..(s * b + bi + 1) * hk].fill(f32::NAN);
                }
            }
        }
        keys
    }
}

const PARTS: [&str; 6] = ["weights", "context", "hidden", "d_queries", "d_keys", "d_params"];

/// The worst error of each part against the reference, asserting the tolerances.
fn compare(what: &str, got: &[Vec<f32>], want: &[Vec<f64>]) -> f64 {
    let mut worst = 0.0f64;
    for k in 0..6 {
        let want32: Vec<f32> = want[k].iter().map(|&x| x as f32).collect();
        let e = max_error(&got[k], &want32);
        let tol = if k < 3 { FWD_TOL } else { GRAD_TOL };
        assert!(e < tol, "{what}: {} error {e:.2e} (tolerance {tol:.0e})", PARTS[k]);
        worst = worst.max(e);
    }
    worst
}

/// Every score, with and without the attentional hidden state.
fn configs() -> Vec<AttentionConfig> {
    let mut v = Vec::new();
    for o in [0, 3] {
        v.push(AttentionConfig::new(Score::Dot, 5, 5).output_size(o).build().unwrap());
        v.push(AttentionConfig::new(Score::General, 4, 6).output_size(o).build().unwrap());
        v.push(AttentionConfig::new(Score::Concat, 3, 5).attn_size(4).output_size(o).build().unwrap());
        v.push(AttentionConfig::new(Score::Additive, 6, 2).attn_size(5).output_size(o).build().unwrap());
    }
    v
}

/// Variable lengths (1, full, between), one decoder step, more decoder steps than encoder steps.
fn shapes() -> Vec<AttentionShape> {
    vec![
        AttentionShape::new(3, 5, vec![5, 2, 1, 4]).unwrap(),
        AttentionShape::new(1, 4, vec![4, 1, 3]).unwrap(),
        AttentionShape::new(1, 3, vec![3]).unwrap(),
        AttentionShape::new(6, 2, vec![1, 2]).unwrap(),
        AttentionShape::new(4, 7, vec![7, 7]).unwrap(),
    ]
}

#[test]
fn every_score_matches_the_reference() {
    let mut worst = 0.0f64;
    for (c, cfg) in configs().iter().enumerate() {
        for (s, shape) in shapes().iter().enumerate() {
            let p = Problem::new(cfg, shape, 300 + 10 * c as u64 + s as u64);
            let what = format!("{} O={} {shape:?}", cfg.score().name(), cfg.output_size());
            worst = worst.max(compare(&what, &p.batched(&p.p32[KEYS], ALL), &p.reference(ALL)));
            // Each incoming gradient alone (the others absent: zero).
            for which in [
                Incoming { weights: true, context: false, hidden: false },
                Incoming { weights: false, context: true, hidden: false },
                Incoming { weights: false, context: false, hidden: true },
            ] {
                worst = worst.max(compare(&format!("{what} {which:?}"), &p.batched(&p.p32[KEYS], which), &p.reference(which)));
            }
        }
    }
    eprintln!("attention on the emulation against the f64 reference: worst error {worst:.2e}");
}

#[test]
fn the_per_step_path_matches_the_reference() {
    for (c, cfg) in configs().iter().enumerate() {
        for (s, shape) in shapes().iter().enumerate() {
            let p = Problem::new(cfg, shape, 700 + 10 * c as u64 + s as u64);
            let what = format!("per step: {} O={} {shape:?}", cfg.score().name(), cfg.output_size());
            compare(&what, &p.per_step(), &p.reference(ALL));
        }
    }
}

/// NaN in the keys' padding changes no bit of any result; the keys' gradient is exactly 0 there
/// and the weights exactly 0 past each length.
#[test]
fn the_keys_padding_is_never_read() {
    for (c, cfg) in configs().iter().enumerate() {
        let shape = AttentionShape::new(3, 5, vec![5, 2, 1, 4]).unwrap();
        let p = Problem::new(cfg, &shape, 900 + c as u64);
        let clean = p.batched(&p.p32[KEYS], ALL);
        let padded = p.batched(&p.nan_padded_keys(), ALL);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for k in 0..6 {
            assert_eq!(bits(&padded[k]), bits(&clean[k]), "{}: {} changed by NaN padding", cfg.score().name(), PARTS[k]);
            assert!(clean[k].iter().all(|v| v.is_finite()), "{}: {} not finite", cfg.score().name(), PARTS[k]);
        }
        let (b, s, hk) = (shape.batch(), shape.steps(), cfg.key_size());
        for (bi, &len) in shape.lengths().iter().enumerate() {
            for si in 0..s {
                let dk = &clean[4][(si * b + bi) * hk..(si * b + bi + 1) * hk];
                assert_eq!(dk.iter().all(|&v| v == 0.0), si >= len, "d_keys at step {si} of sequence {bi} (length {len})");
            }
            for t in 0..shape.queries() {
                let row = &clean[0][(t * b + bi) * s..(t * b + bi + 1) * s];
                assert!(row[len..].iter().all(|&w| w == 0.0) && row[..len].iter().all(|&w| w > 0.0), "weights of sequence {bi}");
            }
        }
    }
}

/// A memory made for another configuration or other keys, and gradients of another memory, are
/// errors naming the argument, before anything runs.
#[test]
fn a_foreign_memory_is_refused() {
    let e = Emulated::default();
    let general = AttentionConfig::new(Score::General, 4, 6).build().unwrap();
    let additive = AttentionConfig::new(Score::Additive, 4, 6).attn_size(3).build().unwrap();
    let shape = AttentionShape::new(2, 3, vec![3, 1]).unwrap();
    let p = Problem::new(&general, &shape, 5);
    let memory = e.attention_memory(&general, &shape, &p.p32[PARAMS], &p.p32[KEYS]).unwrap();
    let named = |r: Result<AttentionOutput<f32>>, arg: &str| match r {
        Err(Error::InvalidArgument { arg: a, .. } | Error::Shape { arg: a, .. }) => assert_eq!(a, arg),
        other => panic!("expected an error naming {arg}, got {other:?}"),
    };
    let params = vec![0.1f32; additive.param_len()];
    named(e.attention_forward_with(&additive, &shape, &params, &memory, &p.p32[QUERIES]), "memory");
    let other = AttentionShape::new(2, 3, vec![2, 1]).unwrap();
    named(e.attention_forward_with(&general, &other, &p.p32[PARAMS], &memory, &p.p32[QUERIES]), "memory");
    named(e.attention_forward_with(&general, &shape, &p.p32[PARAMS][1..], &memory, &p.p32[QUERIES]), "params");
    let out = e.attention_forward_with(&general, &shape, &p.p32[PARAMS], &memory, &p.p32[QUERIES]).unwrap();
    let small = AttentionMemory { keys: vec![0.0; 3], proj: Vec::new(), steps: 3, lengths: vec![3, 1] };
    let mut dm = AttentionMemoryGrads::new(&small);
    let r = e.attention_backward_with(&general, &shape, &p.p32[PARAMS], &memory, &p.p32[QUERIES], &out, p.up(&p.p32, ALL), &mut dm);
    assert!(matches!(r, Err(Error::InvalidArgument { ref arg, .. }) if arg == "d_memory"), "{r:?}");
}

/// The device-buffer calls (`Cuda::attention_*` on `CudaBuf`s; here the same functions on the
/// emulation's buffers): the memory made once and kept on the target, one forward and backward
/// per decoder step with the memory's gradients accumulated on the target, the memory's backward
/// once: every result the host-slice calls' bits; bad buffers are errors naming them.
#[test]
fn the_device_buffer_calls_are_the_host_calls() {
    use super::super::driver::attention::{backward_on, forward_on, memory_backward_on, memory_on};
    use super::super::driver::attention::{DeviceAttentionMemoryGrads, DeviceAttentionUpstream};
    let st = Emulation::default();
    let down = |b: &DevBuf| {
        let mut v = vec![0.0; b.len()];
        st.down(b, &mut v).unwrap();
        v
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for cfg in configs() {
        let shape = AttentionShape::new(3, 5, vec![5, 2, 4]).unwrap();
        let p = Problem::new(&cfg, &shape, 17);
        let want = p.per_step();
        let (tq, b, s) = (shape.queries(), shape.batch(), shape.steps());
        let (hq, hk, o) = (cfg.query_size(), cfg.key_size(), cfg.output_size());
        let step = AttentionShape::new(1, s, shape.lengths().to_vec()).unwrap();
        let (params, keys) = (st.up(&p.p32[PARAMS]).unwrap(), st.up(&p.p32[KEYS]).unwrap());
        let memory = memory_on(&st, &cfg, &step, &params, &keys).unwrap();
        let zeros = |b: &DevBuf| st.up(&vec![0.0; b.len()]).unwrap();
        let mut dm = DeviceAttentionMemoryGrads { d_keys: zeros(&memory.keys), d_proj: zeros(&memory.proj) };
        let mut got: Vec<Vec<f32>> = vec![Vec::new(); 6];
        got[5] = vec![0.0; cfg.param_len()];
        let rows = |v: &[f32], t: usize, w: usize| st.up(&v[t * b * w..(t + 1) * b * w]).unwrap();
        for t in 0..tq {
            let q = rows(&p.p32[QUERIES], t, hq);
            let out = forward_on(&st, &cfg, &step, &params, &memory, &q).unwrap();
            let (dw, dc, dh) = (rows(&p.p32[D_WEIGHTS], t, s), rows(&p.p32[D_CONTEXT], t, hk), rows(&p.p32[D_HIDDEN], t, o));
            let up = DeviceAttentionUpstream { d_weights: Some(&dw), d_context: Some(&dc), d_hidden: (o > 0).then_some(&dh) };
            let g = backward_on(&st, &cfg, &step, &params, &memory, &q, &out, up, &mut dm).unwrap();
            assert!(g.d_keys.is_none());
            got[0].extend(down(&out.weights));
            got[1].extend(down(&out.context));
            got[2].extend(down(&out.hidden));
            got[3].extend(down(g.d_queries.as_ref().unwrap()));
            got[5].iter_mut().zip(down(&g.d_params)).for_each(|(a, x)| *a += x);
        }
        let k = memory_backward_on(&st, &cfg, &step, &params, &memory, &dm).unwrap();
        assert!(k.d_queries.is_none());
        got[4] = down(k.d_keys.as_ref().unwrap());
        got[5].iter_mut().zip(down(&k.d_params)).for_each(|(a, x)| *a += x);
        for (i, part) in PARTS.iter().enumerate() {
            assert_eq!(bits(&got[i]), bits(&want[i]), "{cfg:?}: {part}");
        }

        // A beam search's memory (`gather_on`): the host memory's gather, bit for bit, and a
        // forward over it the host-slice forward's.
        use super::super::driver::attention::gather_on;
        let pick = [2, 0, 0, 1, 2];
        let gathered = gather_on(&st, &memory, &pick).unwrap();
        let host_memory = Emulated::default().attention_memory(&cfg, &step, &p.p32[PARAMS], &p.p32[KEYS]).unwrap();
        let host_gathered = host_memory.gather(&pick).unwrap();
        assert_eq!(gathered.lengths(), host_gathered.lengths());
        assert_eq!(bits(&down(&gathered.keys)), bits(&host_gathered.keys), "{cfg:?}: gathered keys");
        assert_eq!(bits(&down(&gathered.proj)), bits(&host_gathered.proj), "{cfg:?}: gathered projection");
        let beams = AttentionShape::new(1, s, host_gathered.lengths().to_vec()).unwrap();
        let q5: Vec<f32> = (0..pick.len() * hq).map(|i| p.p32[QUERIES][i % p.p32[QUERIES].len()]).collect();
        let out = forward_on(&st, &cfg, &beams, &params, &gathered, &st.up(&q5).unwrap()).unwrap();
        let host_out = Emulated::default().attention_forward_with(&cfg, &beams, &p.p32[PARAMS], &host_gathered, &q5).unwrap();
        assert_eq!(bits(&down(&out.context)), bits(&host_out.context), "{cfg:?}: context over the gathered memory");
        assert!(matches!(gather_on(&st, &memory, &[0, 3]), Err(Error::InvalidArgument { ref arg, .. }) if arg == "rows[1]"));

        // Bad buffers, named.
        let named = |e: Error, arg: &str| match e {
            Error::InvalidArgument { arg: a, .. } | Error::Shape { arg: a, .. } => assert_eq!(a, arg, "{cfg:?}"),
            other => panic!("expected an error naming {arg}, got {other:?}"),
        };
        let short = st.up(&p.p32[KEYS][1..]).unwrap();
        named(memory_on(&st, &cfg, &step, &params, &short).err().unwrap(), "keys");
        let q = rows(&p.p32[QUERIES], 0, hq);
        let other = AttentionShape::new(1, s, vec![5, 1, 4]).unwrap();
        named(forward_on(&st, &cfg, &other, &params, &memory, &q).err().unwrap(), "memory");
        named(forward_on(&st, &cfg, &step, &params, &memory, &short).err().unwrap(), "queries");
        let out = forward_on(&st, &cfg, &step, &params, &memory, &q).unwrap();
        let dh = st.up(&vec![0.0; b * o + 1]).unwrap();
        let up = DeviceAttentionUpstream { d_weights: None, d_context: None, d_hidden: Some(&dh) };
        named(backward_on(&st, &cfg, &step, &params, &memory, &q, &out, up, &mut dm).err().unwrap(), "d_hidden");
        let up = DeviceAttentionUpstream { d_weights: None, d_context: None, d_hidden: None };
        let mut foreign = DeviceAttentionMemoryGrads { d_keys: st.up(&[0.0; 3]).unwrap(), d_proj: zeros(&memory.proj) };
        named(backward_on(&st, &cfg, &step, &params, &memory, &q, &out, up, &mut foreign).err().unwrap(), "d_memory");
    }
}

/// A larger problem (long encoder sequences, wider sizes), each score with products over hundreds
/// of terms: the same tolerances.
#[test]
fn a_larger_problem_matches_the_reference() {
    let shape = AttentionShape::new(4, 300, vec![300, 1, 129, 257]).unwrap();
    for cfg in [
        AttentionConfig::new(Score::Dot, 48, 48).output_size(32).build().unwrap(),
        AttentionConfig::new(Score::General, 64, 96).output_size(32).build().unwrap(),
        AttentionConfig::new(Score::Concat, 64, 96).attn_size(48).build().unwrap(),
        AttentionConfig::new(Score::Additive, 64, 96).attn_size(48).output_size(32).build().unwrap(),
    ] {
        let p = Problem::new(&cfg, &shape, 77);
        let worst = compare(&format!("{} larger", cfg.score().name()), &p.batched(&p.p32[KEYS], ALL), &p.reference(ALL));
        eprintln!("{} on [Tq 4, S 300, B 4]: worst error {worst:.2e}", cfg.score().name());
    }
}

/// The per-sequence products are one strided-batched GEMM each: a call issues as many GEMMs for
/// five sequences as for one, and the same kernels.
#[test]
fn the_sequences_products_are_one_gemm_each_whatever_the_batch() {
    for cfg in configs() {
        let issued = |lengths: Vec<usize>| {
            let shape = AttentionShape::new(3, 5, lengths).unwrap();
            let p = Problem::new(&cfg, &shape, 1100);
            let e = Emulated::default();
            let o = e.attention_forward(&cfg, &shape, &p.p32[PARAMS], &p.p32[KEYS], &p.p32[QUERIES]).unwrap();
            e.attention_backward(&cfg, &shape, &p.p32[PARAMS], &p.p32[KEYS], &p.p32[QUERIES], &o, p.up(&p.p32, ALL)).unwrap();
            e.0.issued.take().into_iter().map(|(_, k)| k).collect::<Vec<_>>()
        };
        let (one, five) = (issued(vec![4]), issued(vec![5, 2, 1, 4, 3]));
        assert_eq!(one, five, "{}: the work issued for B = 1 and B = 5", cfg.score().name());
        assert!(one.iter().any(Option::is_none), "{}: no GEMM issued", cfg.score().name());
    }
}
