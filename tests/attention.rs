//! The attention reference (`rnn_kernels::attention::reference`): central differences for
//! every score, with and without the attentional hidden state, variable encoder lengths and a
//! single decoder step; PyTorch parity on the case files of `tests/fixtures/attention/`
//! (`make_attention_cases.py`: a torch module with batched matmuls and `masked_fill`, float64,
//! autograd); the masking (padding never read, weights exactly 0 past a length); the host
//! backends' batched products (`AttentionBackend`: the reference backend in f64, every CPU ISA
//! in f32) against the reference, the same bits for 1, 2 and 3 threads; bad input.

use rnn_kernels::attention::{
    reference, AttentionBackend, AttentionConfig, AttentionGrads, AttentionMemoryGrads, AttentionOutput, AttentionShape, AttentionUpstream,
    Score,
};
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{Cpu, Error, Isa, Reference};
use safetensors::SafeTensors;
use std::collections::HashMap;

fn uniform(rng: &mut SplitMix64, n: usize, r: f64) -> Vec<f64> {
    (0..n).map(|_| rng.uniform(-r, r)).collect()
}

/// A random problem: parameters, keys, queries and incoming gradients.
struct Problem {
    cfg: AttentionConfig,
    shape: AttentionShape,
    params: Vec<f64>,
    keys: Vec<f64>,
    queries: Vec<f64>,
    d_weights: Vec<f64>,
    d_context: Vec<f64>,
    d_hidden: Vec<f64>,
}

impl Problem {
    fn new(cfg: &AttentionConfig, shape: &AttentionShape, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let (tq, s, b) = (shape.queries(), shape.steps(), shape.batch());
        Problem {
            cfg: cfg.clone(),
            shape: shape.clone(),
            params: uniform(&mut rng, cfg.param_len(), 0.8),
            keys: uniform(&mut rng, s * b * cfg.key_size(), 1.0),
            queries: uniform(&mut rng, tq * b * cfg.query_size(), 1.0),
            d_weights: uniform(&mut rng, tq * b * s, 1.0),
            d_context: uniform(&mut rng, tq * b * cfg.key_size(), 1.0),
            d_hidden: uniform(&mut rng, tq * b * cfg.output_size(), 1.0),
        }
    }

    fn upstream(&self) -> AttentionUpstream<'_, f64> {
        AttentionUpstream {
            d_weights: Some(&self.d_weights),
            d_context: Some(&self.d_context),
            d_hidden: (self.cfg.output_size() > 0).then_some(&self.d_hidden[..]),
        }
    }

    /// `Σ dW·weights + Σ dC·context + Σ dH·hidden` at the given inputs.
    fn loss(&self, params: &[f64], keys: &[f64], queries: &[f64]) -> f64 {
        let o = reference::forward(&self.cfg, &self.shape, params, keys, queries).unwrap();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        dot(&o.weights, &self.d_weights) + dot(&o.context, &self.d_context) + dot(&o.hidden, &self.d_hidden)
    }

    /// The worst relative error of the analytic gradients against central differences in every
    /// coordinate of the queries, the keys and the parameters.
    fn gradcheck(&self) -> f64 {
        let out = reference::forward(&self.cfg, &self.shape, &self.params, &self.keys, &self.queries).unwrap();
        let g = reference::backward(&self.cfg, &self.shape, &self.params, &self.keys, &self.queries, &out, self.upstream()).unwrap();
        let eps = 1e-6;
        let mut worst = 0.0f64;
        let mut check = |which: usize, analytic: &[f64]| {
            for i in 0..analytic.len() {
                let mut v = [self.queries.clone(), self.keys.clone(), self.params.clone()];
                v[which][i] += eps;
                let up = self.loss(&v[2], &v[1], &v[0]);
                v[which][i] -= 2.0 * eps;
                let down = self.loss(&v[2], &v[1], &v[0]);
                let numeric = (up - down) / (2.0 * eps);
                worst = worst.max((numeric - analytic[i]).abs() / numeric.abs().max(1.0));
            }
        };
        check(0, &g.d_queries);
        check(1, &g.d_keys);
        check(2, &g.d_params);
        worst
    }
}

/// Every score, with and without the attentional hidden state, at several shapes.
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

#[test]
fn reference_matches_central_differences() {
    let shapes = [
        AttentionShape::new(3, 5, vec![5, 2, 1, 4]).unwrap(),
        // One decoder step (the per-step path's shape), every sequence full.
        AttentionShape::new(1, 4, vec![4, 4]).unwrap(),
        // More decoder steps than encoder steps.
        AttentionShape::new(6, 2, vec![1, 2]).unwrap(),
    ];
    let mut worst = 0.0f64;
    for (c, cfg) in configs().iter().enumerate() {
        for (s, shape) in shapes.iter().enumerate() {
            let err = Problem::new(cfg, shape, 100 + 10 * c as u64 + s as u64).gradcheck();
            assert!(err < 1e-7, "{cfg:?} {shape:?}: gradient error {err:.3e}");
            worst = worst.max(err);
        }
    }
    eprintln!("attention reference against central differences: worst {worst:.2e}");
}

/// The weights of each query are a softmax over the sequence's own keys: they sum to 1, are
/// exactly 0 past its length; the padding keys are never read (changing them changes no bit of
/// any output) and get exactly zero gradients.
#[test]
fn masking_reads_only_each_sequences_keys() {
    for cfg in configs() {
        let shape = AttentionShape::new(3, 5, vec![5, 2, 1, 4]).unwrap();
        let p = Problem::new(&cfg, &shape, 7);
        let out = reference::forward(&p.cfg, &shape, &p.params, &p.keys, &p.queries).unwrap();
        let (s, b, hk) = (shape.steps(), shape.batch(), cfg.key_size());
        for t in 0..shape.queries() {
            for (bi, &len) in shape.lengths().iter().enumerate() {
                let row = &out.weights[(t * b + bi) * s..(t * b + bi + 1) * s];
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{cfg:?}: weights sum to {}", row.iter().sum::<f64>());
                assert!(row[len..].iter().all(|&w| w == 0.0), "{cfg:?}: a weight past the length");
                assert!(row[..len].iter().all(|&w| w > 0.0), "{cfg:?}: a zero weight within the length");
            }
        }
        let mut keys = p.keys.clone();
        for si in 0..s {
            for (bi, &len) in shape.lengths().iter().enumerate() {
                if si >= len {
                    keys[(si * b + bi) * hk..(si * b + bi + 1) * hk].fill(f64::NAN);
                }
            }
        }
        let padded = reference::forward(&p.cfg, &shape, &p.params, &keys, &p.queries).unwrap();
        assert_eq!(bits(&padded.weights), bits(&out.weights), "{cfg:?}");
        assert_eq!(bits(&padded.context), bits(&out.context), "{cfg:?}");
        assert_eq!(bits(&padded.hidden), bits(&out.hidden), "{cfg:?}");
        let g = reference::backward(&p.cfg, &shape, &p.params, &keys, &p.queries, &padded, p.upstream()).unwrap();
        assert!(g.d_queries.iter().chain(&g.d_params).all(|v| v.is_finite()), "{cfg:?}: a padding key reached a gradient");
        for si in 0..s {
            for (bi, &len) in shape.lengths().iter().enumerate() {
                let dk = &g.d_keys[(si * b + bi) * hk..(si * b + bi + 1) * hk];
                assert_eq!(dk.iter().all(|&v| v == 0.0), si >= len, "{cfg:?}: d_keys at step {si} of sequence {bi} (length {len})");
            }
        }
    }
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A case file of `tests/fixtures/attention/`.
struct AttentionCase {
    name: String,
    cfg: AttentionConfig,
    shape: AttentionShape,
    tensors: HashMap<String, Vec<f64>>,
}

impl AttentionCase {
    fn load(path: &std::path::Path) -> AttentionCase {
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["kind"], "attention");
        let num = |k: &str| meta[k].parse::<usize>().unwrap();
        let score: Score = meta["score"].parse().unwrap();
        let cfg = AttentionConfig::new(score, num("query_size"), num("key_size"))
            .attn_size(num("attn_size"))
            .output_size(num("output_size"))
            .build()
            .unwrap();
        let lengths: Vec<usize> = meta["lengths"].split(',').map(|l| l.parse().unwrap()).collect();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F64, "{name}");
            let v: Vec<f64> = view.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            tensors.insert(name, v);
        }
        let (b, hq) = (lengths.len(), cfg.query_size());
        let tq = tensors["queries"].len() / (b * hq);
        let s = tensors["keys"].len() / (b * cfg.key_size());
        let shape = AttentionShape::new(tq, s, lengths).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        AttentionCase { name, cfg, shape, tensors }
    }

    /// The flat parameters (from `prefix<name>`), in the configuration's order, each checked
    /// against its shape.
    fn params(&self, prefix: &str) -> Vec<f64> {
        let mut flat = Vec::new();
        for (n, shape) in self.cfg.params() {
            let t = &self.tensors[&format!("{prefix}{n}")];
            assert_eq!(t.len(), shape.iter().product::<usize>(), "{}: {prefix}{n}", self.name);
            flat.extend_from_slice(t);
        }
        assert_eq!(self.tensors.keys().filter(|k| k.starts_with(prefix)).count(), self.cfg.params().len(), "{}: {prefix}*", self.name);
        flat
    }

    fn get(&self, name: &str) -> Option<&[f64]> {
        self.tensors.get(name).map(|v| &v[..])
    }

    /// The forward outputs and the gradients of the reference in `T` on the case's inputs.
    fn run<T: rnn_kernels::Float>(&self, shape: &AttentionShape) -> (AttentionOutput<f64>, [Vec<f64>; 3]) {
        let down = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let up = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let (params, keys, queries) = (down(&self.params("param.")), down(&self.tensors["keys"]), down(&self.tensors["queries"]));
        let out = reference::forward(&self.cfg, shape, &params, &keys, &queries).unwrap();
        let d = [self.get("d_weights").map(down), self.get("d_context").map(down), self.get("d_hidden").map(down)];
        let upstream = AttentionUpstream { d_weights: d[0].as_deref(), d_context: d[1].as_deref(), d_hidden: d[2].as_deref() };
        let g = reference::backward(&self.cfg, shape, &params, &keys, &queries, &out, upstream).unwrap();
        let out64 = AttentionOutput { weights: up(&out.weights), context: up(&out.context), hidden: up(&out.hidden) };
        (out64, [up(&g.d_queries), up(&g.d_keys), up(&g.d_params)])
    }

    /// The worst error of the reference in `T` against the file, every output and gradient.
    fn worst_error<T: rnn_kernels::Float>(&self, shape: &AttentionShape) -> f64 {
        let (out, grads) = self.run::<T>(shape);
        let empty = Vec::new();
        let pairs = [
            ("weights", &out.weights, &self.tensors["weights"]),
            ("context", &out.context, &self.tensors["context"]),
            ("hidden", &out.hidden, self.tensors.get("hidden").unwrap_or(&empty)),
            ("grad.queries", &grads[0], &self.tensors["grad.queries"]),
            ("grad.keys", &grads[1], &self.tensors["grad.keys"]),
        ];
        let want_params = self.params("grad.param.");
        let mut worst = max_error(&grads[2], &want_params);
        for (name, got, want) in pairs {
            let e = max_error(got, want);
            assert!(e.is_finite(), "{}: {name} has another length", self.name);
            worst = worst.max(e);
        }
        worst
    }
}

fn cases() -> Vec<AttentionCase> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attention");
    let mut paths: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    paths.sort();
    let cases: Vec<AttentionCase> = paths.iter().map(|p| AttentionCase::load(p)).collect();
    // Every score is covered, with and without the attentional hidden state.
    for score in Score::ALL {
        assert!(cases.iter().any(|c| c.cfg.score() == score), "no case of the {} score", score.name());
    }
    assert!(cases.iter().any(|c| c.cfg.output_size() > 0) && cases.iter().any(|c| c.cfg.output_size() == 0));
    cases
}

/// The reference in f64 matches PyTorch's autograd at 1e-9 on every output and gradient, and in
/// f32 at 1e-5; with every sequence's full length instead of its own (the mask ignored) it
/// does not.
#[test]
fn reference_matches_pytorch_cases() {
    for case in cases() {
        let e64 = case.worst_error::<f64>(&case.shape);
        assert!(e64 < 1e-9, "{}: f64 error {e64:.3e}", case.name);
        let e32 = case.worst_error::<f32>(&case.shape);
        assert!(e32 < 1e-5, "{}: f32 error {e32:.3e}", case.name);
        eprintln!("{}: f64 {e64:.1e}, f32 {e32:.1e}", case.name);
        if case.shape.lengths().iter().any(|&l| l < case.shape.steps()) {
            let full = AttentionShape::new(case.shape.queries(), case.shape.steps(), vec![case.shape.steps(); case.shape.batch()]).unwrap();
            assert!(case.worst_error::<f64>(&full) > 1e-3, "{}: the mask changed nothing", case.name);
        }
    }
}

#[test]
fn bad_input_is_an_error_naming_the_argument() {
    let named = |r: Result<AttentionConfig, Error>, arg: &str| {
        let e = r.unwrap_err();
        assert!(e.to_string().contains(&format!("`{arg}`")), "{e}");
    };
    named(AttentionConfig::new(Score::Dot, 4, 5).build(), "key_size");
    named(AttentionConfig::new(Score::Concat, 4, 5).build(), "attn_size");
    named(AttentionConfig::new(Score::General, 4, 5).attn_size(3).build(), "attn_size");
    named(AttentionConfig::new(Score::Additive, 0, 5).attn_size(3).build(), "query_size");
    named(AttentionConfig::new(Score::General, 4, 0).build(), "key_size");
    for (lengths, arg) in [(vec![3, 0], "lengths[1]"), (vec![4, 6], "lengths[1]"), (vec![], "lengths")] {
        let e = AttentionShape::new(2, 5, lengths).unwrap_err();
        assert!(e.to_string().contains(&format!("`{arg}`")), "{e}");
    }
    assert!(AttentionShape::new(0, 5, vec![1]).unwrap_err().to_string().contains("`queries`"));
    assert!(AttentionShape::new(2, 0, vec![1]).unwrap_err().to_string().contains("`steps`"));
    assert!("luong".parse::<Score>().unwrap_err().to_string().contains("`score`"));
    assert_eq!("bahdanau".parse::<Score>().unwrap(), Score::Additive);

    let cfg = AttentionConfig::new(Score::General, 4, 6).build().unwrap();
    let shape = AttentionShape::new(3, 5, vec![5, 2]).unwrap();
    let p = Problem::new(&cfg, &shape, 1);
    let f =
        |params: &[f64], keys: &[f64], queries: &[f64]| reference::forward(&cfg, &shape, params, keys, queries).unwrap_err().to_string();
    assert!(f(&p.params[1..], &p.keys, &p.queries).contains("`params`"));
    assert!(f(&p.params, &p.keys[1..], &p.queries).contains("`keys`"));
    assert!(f(&p.params, &p.keys, &p.queries[1..]).contains("`queries`"));
    let out = reference::forward(&cfg, &shape, &p.params, &p.keys, &p.queries).unwrap();
    let b = |out: &AttentionOutput<f64>, up: AttentionUpstream<'_, f64>| {
        reference::backward(&cfg, &shape, &p.params, &p.keys, &p.queries, out, up).unwrap_err().to_string()
    };
    let short = &p.d_context[1..];
    assert!(b(&out, AttentionUpstream { d_context: Some(short), ..Default::default() }).contains("`d_context`"));
    assert!(b(&out, AttentionUpstream { d_weights: Some(short), ..Default::default() }).contains("`d_weights`"));
    assert!(b(&out, AttentionUpstream { d_hidden: Some(&p.d_context), ..Default::default() }).contains("`d_hidden`"));
    let cut = AttentionOutput { weights: out.weights[1..].to_vec(), ..out.clone() };
    assert!(b(&cut, AttentionUpstream::default()).contains("`out.weights`"));
    assert!(cfg.param_range("v").unwrap_err().to_string().contains("`name`"));

    // A memory of another configuration (keys 3 wide, not 6) on the host backends: an error
    // naming `memory` from each call over it, nothing read past its buffers.
    let other = AttentionConfig::new(Score::General, 4, 3).build().unwrap();
    let po = Problem::new(&other, &shape, 2);
    let mem = Reference.attention_memory(&other, &shape, &po.params, &po.keys).unwrap();
    let dm = AttentionMemoryGrads::new(&mem);
    let e = Reference.attention_forward_with(&cfg, &shape, &p.params, &mem, &p.queries).unwrap_err();
    assert!(e.to_string().contains("`memory`"), "{e}");
    let e = Reference.attention_memory_backward(&cfg, &shape, &p.params, &mem, &dm).unwrap_err();
    assert!(e.to_string().contains("`memory`"), "{e}");
    let down = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let cpu = Cpu::new().unwrap();
    let mem = cpu.attention_memory(&other, &shape, &down(&po.params), &down(&po.keys)).unwrap();
    let e = cpu.attention_forward_with(&cfg, &shape, &down(&p.params), &mem, &down(&p.queries)).unwrap_err();
    assert!(e.to_string().contains("`memory`"), "{e}");
}

/// The reference's outputs and gradients in f64 on a problem.
fn spec(p: &Problem) -> (AttentionOutput<f64>, AttentionGrads<f64>) {
    let out = reference::forward(&p.cfg, &p.shape, &p.params, &p.keys, &p.queries).unwrap();
    let g = reference::backward(&p.cfg, &p.shape, &p.params, &p.keys, &p.queries, &out, p.upstream()).unwrap();
    (out, g)
}

/// A backend's outputs and gradients in `T` on a problem (its values rounded to `T`), as f64.
fn on_backend<T: rnn_kernels::Float, B: AttentionBackend<T>>(backend: &B, p: &Problem) -> Vec<Vec<f64>> {
    let down = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    let up = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
    let (params, keys, queries) = (down(&p.params), down(&p.keys), down(&p.queries));
    let out = backend.attention_forward(&p.cfg, &p.shape, &params, &keys, &queries).unwrap();
    let (dw, dc, dh) = (down(&p.d_weights), down(&p.d_context), down(&p.d_hidden));
    let upstream = AttentionUpstream { d_weights: Some(&dw), d_context: Some(&dc), d_hidden: (p.cfg.output_size() > 0).then_some(&dh[..]) };
    let g = backend.attention_backward(&p.cfg, &p.shape, &params, &keys, &queries, &out, upstream).unwrap();
    vec![up(&out.weights), up(&out.context), up(&out.hidden), up(&g.d_queries), up(&g.d_keys), up(&g.d_params)]
}

const PARTS: [&str; 6] = ["weights", "context", "hidden", "d_queries", "d_keys", "d_params"];

/// The host backends' batched products against the reference: the reference backend in f64
/// at 1e-12 (the same maths, summed in another order), every CPU ISA in f32 at 1e-5 (outputs)
/// and 1e-4 (gradients), with the same bits for 1, 2 and 3 threads; shapes with variable
/// lengths, one query, more queries than keys, and a batch large enough for the products'
/// tiles.
#[test]
fn host_backends_match_the_reference() {
    let shapes = [
        AttentionShape::new(3, 5, vec![5, 2, 1, 4]).unwrap(),
        AttentionShape::new(1, 4, vec![4, 4]).unwrap(),
        AttentionShape::new(6, 2, vec![1, 2]).unwrap(),
        AttentionShape::new(9, 13, (0..21).map(|b| 1 + (b * 7) % 13).collect()).unwrap(),
        // One query step (a decoder's): cut by sequences across the threads.
        AttentionShape::new(1, 13, (0..21).map(|b| 1 + (b * 5) % 13).collect()).unwrap(),
    ];
    let mut worst = [0.0f64; 2];
    for (c, cfg) in configs().iter().enumerate() {
        for (s, shape) in shapes.iter().enumerate() {
            let p = Problem::new(cfg, shape, 300 + 10 * c as u64 + s as u64);
            let (out, g) = spec(&p);
            let want = [out.weights, out.context, out.hidden, g.d_queries, g.d_keys, g.d_params];
            let got = on_backend::<f64, _>(&Reference, &p);
            for k in 0..6 {
                let e = max_error(&got[k], &want[k]);
                assert!(e < 1e-12, "reference backend, {cfg:?} {shape:?}: {} error {e:.2e}", PARTS[k]);
                worst[0] = worst[0].max(e);
            }
            for isa in Isa::available() {
                let one = on_backend::<f32, _>(&Cpu::with_isa(isa, 1).unwrap(), &p);
                for k in 0..6 {
                    let e = max_error(&one[k], &want[k]);
                    let tol = if k < 3 { 1e-5 } else { 1e-4 };
                    assert!(e < tol, "cpu {isa:?}, {cfg:?} {shape:?}: {} error {e:.2e}", PARTS[k]);
                    worst[1] = worst[1].max(e);
                }
                for threads in [2, 3] {
                    let many = on_backend::<f32, _>(&Cpu::with_isa(isa, threads).unwrap(), &p);
                    assert_eq!(bits(&many.concat()), bits(&one.concat()), "cpu {isa:?}, {threads} threads, {cfg:?} {shape:?}");
                }
            }
        }
    }
    eprintln!("host backends against the reference: f64 {:.1e}, f32 {:.1e}", worst[0], worst[1]);
}

/// On the host backends too the padding keys are never read: NaN there changes no bit of any
/// output or gradient, and their gradients are exactly zero.
#[test]
fn host_backends_read_no_padding() {
    for cfg in configs() {
        let shape = AttentionShape::new(3, 5, vec![5, 2, 1, 4]).unwrap();
        let p = Problem::new(&cfg, &shape, 17);
        let mut padded = Problem::new(&cfg, &shape, 17);
        let (s, b, hk) = (shape.steps(), shape.batch(), cfg.key_size());
        for si in 0..s {
            for (bi, &len) in shape.lengths().iter().enumerate() {
                if si >= len {
                    padded.keys[(si * b + bi) * hk..(si * b + bi + 1) * hk].fill(f64::NAN);
                }
            }
        }
        let (clean, nan) = (on_backend::<f64, _>(&Reference, &p), on_backend::<f64, _>(&Reference, &padded));
        assert_eq!(bits(&nan.concat()), bits(&clean.concat()), "reference backend, {cfg:?}");
        let cpu = Cpu::new().unwrap();
        let (clean, nan) = (on_backend::<f32, _>(&cpu, &p), on_backend::<f32, _>(&cpu, &padded));
        assert_eq!(bits(&nan.concat()), bits(&clean.concat()), "cpu, {cfg:?}");
    }
}

/// The per-step path (the keys' side once, then one query per call, the backward of each call
/// adding into the memory's gradients, the keys' side's backward once) gives the batched
/// path's outputs and gradients: on the reference backend in f64 at 1e-12, on the CPU backend
/// in f32 at the f32 tolerances; a memory of other keys is an error naming `memory`.
#[test]
fn the_per_step_path_is_the_batched_one() {
    fn per_step<T: rnn_kernels::Float, B: AttentionBackend<T>>(backend: &B, p: &Problem) -> Vec<Vec<f64>> {
        let down = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let up = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let (cfg, shape) = (&p.cfg, &p.shape);
        let (b, hq, hk, s, o) = (shape.batch(), cfg.query_size(), cfg.key_size(), shape.steps(), cfg.output_size());
        let (params, keys) = (down(&p.params), down(&p.keys));
        let one = AttentionShape::new(1, s, shape.lengths().to_vec()).unwrap();
        let memory = backend.attention_memory(cfg, &one, &params, &keys).unwrap();
        let mut d_memory = rnn_kernels::attention::AttentionMemoryGrads::new(&memory);
        let (mut outs, mut dq) = (vec![Vec::new(); 3], Vec::new());
        let mut d_params = vec![0.0; params.len()];
        for t in 0..shape.queries() {
            let q = down(&p.queries[t * b * hq..(t + 1) * b * hq]);
            let out = backend.attention_forward_with(cfg, &one, &params, &memory, &q).unwrap();
            let (dw, dc, dh) = (
                down(&p.d_weights[t * b * s..(t + 1) * b * s]),
                down(&p.d_context[t * b * hk..(t + 1) * b * hk]),
                down(&p.d_hidden[t * b * o..(t + 1) * b * o]),
            );
            let upstream = AttentionUpstream { d_weights: Some(&dw), d_context: Some(&dc), d_hidden: (o > 0).then_some(&dh[..]) };
            let g = backend.attention_backward_with(cfg, &one, &params, &memory, &q, &out, upstream, &mut d_memory).unwrap();
            outs[0].extend(up(&out.weights));
            outs[1].extend(up(&out.context));
            outs[2].extend(up(&out.hidden));
            dq.extend(up(&g.d_queries));
            for (d, x) in d_params.iter_mut().zip(up(&g.d_params)) {
                *d += x;
            }
        }
        let k = backend.attention_memory_backward(cfg, &one, &params, &memory, &d_memory).unwrap();
        for (d, x) in d_params.iter_mut().zip(up(&k.d_params)) {
            *d += x;
        }
        let other = AttentionShape::new(1, s, vec![1; b]).unwrap();
        let e = backend.attention_forward_with(cfg, &other, &params, &memory, &down(&p.queries[..b * hq])).unwrap_err();
        assert!(e.to_string().contains("`memory`"), "{e}");
        let [w, c, h] = [outs[0].clone(), outs[1].clone(), outs[2].clone()];
        vec![w, c, h, dq, up(&k.d_keys), d_params]
    }
    for (c, cfg) in configs().iter().enumerate() {
        let shape = AttentionShape::new(4, 6, vec![6, 2, 5]).unwrap();
        let p = Problem::new(cfg, &shape, 500 + c as u64);
        let (want64, got64) = (on_backend::<f64, _>(&Reference, &p), per_step::<f64, _>(&Reference, &p));
        let cpu = Cpu::new().unwrap();
        let (want32, got32) = (on_backend::<f32, _>(&cpu, &p), per_step::<f32, _>(&cpu, &p));
        for k in 0..6 {
            let e = max_error(&got64[k], &want64[k]);
            assert!(e < 1e-12, "reference backend, {cfg:?}: {} error {e:.2e}", PARTS[k]);
            let e = max_error(&got32[k], &want32[k]);
            assert!(e < if k < 3 { 1e-5 } else { 1e-4 }, "cpu, {cfg:?}: {} error {e:.2e}", PARTS[k]);
        }
    }
}

/// The `_into` calls (the memory, forward, backward and the memory's backward into the
/// previous step's results) give the allocating calls' results bit for bit (which on the CPU
/// backend are the `_into` calls into empty results), on every CPU ISA in f32 with 1 and 2
/// threads: into the previous step's results (whose buffers the CPU backend writes in place:
/// the same addresses, no new memory) and into a larger problem's (whose stale values must
/// not show). A bad input is an error naming the argument that leaves the results as they
/// were, on the CPU backend and through the trait's defaults (the reference backend, f64).
#[test]
fn the_into_calls_give_the_allocating_calls_results_in_the_callers_buffers() {
    #[derive(Debug, Default, PartialEq)]
    struct Step<T> {
        memory: rnn_kernels::attention::AttentionMemory<T>,
        out: AttentionOutput<T>,
        dm: AttentionMemoryGrads<T>,
        g: AttentionGrads<T>,
        k: AttentionGrads<T>,
    }
    fn allocating<T: rnn_kernels::Float, B: AttentionBackend<T>>(backend: &B, p: &Problem) -> Step<T> {
        let down = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let (params, keys, queries, dc) = (down(&p.params), down(&p.keys), down(&p.queries), down(&p.d_context));
        let up = AttentionUpstream { d_weights: None, d_context: Some(&dc), d_hidden: None };
        let memory = backend.attention_memory(&p.cfg, &p.shape, &params, &keys).unwrap();
        let out = backend.attention_forward_with(&p.cfg, &p.shape, &params, &memory, &queries).unwrap();
        let mut dm = AttentionMemoryGrads::new(&memory);
        let g = backend.attention_backward_with(&p.cfg, &p.shape, &params, &memory, &queries, &out, up, &mut dm).unwrap();
        let k = backend.attention_memory_backward(&p.cfg, &p.shape, &params, &memory, &dm).unwrap();
        Step { memory, out, dm, g, k }
    }
    fn into<T: rnn_kernels::Float, B: AttentionBackend<T>>(backend: &B, p: &Problem, s: &mut Step<T>) {
        let down = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let (params, keys, queries, dc) = (down(&p.params), down(&p.keys), down(&p.queries), down(&p.d_context));
        let up = AttentionUpstream { d_weights: None, d_context: Some(&dc), d_hidden: None };
        backend.attention_memory_into(&p.cfg, &p.shape, &params, &keys, &mut s.memory).unwrap();
        backend.attention_forward_with_into(&p.cfg, &p.shape, &params, &s.memory, &queries, &mut s.out).unwrap();
        s.dm.reset(&s.memory);
        backend.attention_backward_with_into(&p.cfg, &p.shape, &params, &s.memory, &queries, &s.out, up, &mut s.dm, &mut s.g).unwrap();
        backend.attention_memory_backward_into(&p.cfg, &p.shape, &params, &s.memory, &s.dm, &mut s.k).unwrap();
    }
    /// Where the results' data lie (in order of address: two results of a call may trade
    /// buffers).
    fn addresses<T>(s: &Step<T>) -> Vec<*const T> {
        let (o, g, k) = (&s.out, &s.g, &s.k);
        let mut at: Vec<*const T> = [&o.weights, &o.context, &o.hidden, &g.d_queries, &g.d_params, &k.d_keys, &k.d_params]
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| v.as_ptr())
            .collect();
        at.sort();
        at
    }
    /// A bad input to each call: an error naming it, and nothing changed.
    fn refuses<T: rnn_kernels::Float, B: AttentionBackend<T>>(backend: &B, p: &Problem, s: &mut Step<T>) {
        let down = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let (params, keys, queries) = (down(&p.params), down(&p.keys), down(&p.queries));
        let before = format!("{s:?}");
        let long = [&params[..], &[T::ZERO]].concat();
        let e = backend.attention_memory_into(&p.cfg, &p.shape, &long, &keys, &mut s.memory).unwrap_err();
        assert!(e.to_string().contains("params"), "{e}");
        let e = backend.attention_forward_with_into(&p.cfg, &p.shape, &params, &s.memory, &queries[1..], &mut s.out).unwrap_err();
        assert!(e.to_string().contains("queries"), "{e}");
        let up = AttentionUpstream { d_weights: None, d_context: Some(&queries[1..]), d_hidden: None };
        let e = backend
            .attention_backward_with_into(&p.cfg, &p.shape, &params, &s.memory, &queries, &s.out, up, &mut s.dm, &mut s.g)
            .unwrap_err();
        assert!(e.to_string().contains("d_context"), "{e}");
        let e = backend.attention_memory_backward_into(&p.cfg, &p.shape, &long, &s.memory, &s.dm, &mut s.k).unwrap_err();
        assert!(e.to_string().contains("params"), "{e}");
        assert_eq!(format!("{s:?}"), before, "an error changed the results");
    }
    let configs = configs();
    let (small, large) = (
        AttentionShape::new(4, 6, vec![6, 2, 5]).unwrap(),
        AttentionShape::new(9, 13, (0..21).map(|b| 1 + (b * 7) % 13).collect()).unwrap(),
    );
    for (c, cfg) in configs.iter().enumerate() {
        let (p, big) = (Problem::new(cfg, &small, 700 + c as u64), Problem::new(cfg, &large, 800 + c as u64));
        let mut s = Step::<f64>::default();
        into(&Reference, &p, &mut s);
        refuses(&Reference, &p, &mut s);
        for isa in Isa::available() {
            for threads in [1, 2] {
                let cpu = Cpu::with_isa(isa, threads).unwrap();
                let ctx = format!("cpu {isa:?}, {threads} threads, {cfg:?}");
                let want = allocating::<f32, _>(&cpu, &p);
                let mut s = Step::default();
                into(&cpu, &p, &mut s);
                let at = addresses(&s);
                into(&cpu, &p, &mut s);
                assert_eq!(s, want, "{ctx}: into the previous results");
                assert_eq!(addresses(&s), at, "{ctx}: the previous results' buffers were not reused");
                let mut s = Step::default();
                into(&cpu, &big, &mut s);
                into(&cpu, &p, &mut s);
                assert_eq!(s, want, "{ctx}: into a larger problem's results");
                refuses(&cpu, &p, &mut s);
            }
        }
    }
}
