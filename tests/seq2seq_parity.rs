//! An encoder–decoder with attention against PyTorch: the case files of
//! `tests/fixtures/seq2seq/` (`make_seq2seq_cases.py`: a torch `nn.GRU` bidirectional encoder
//! over variable-length sources, an `nn.LSTM` decoder run step by step with Luong's input
//! feeding, attention of each score, a linear output layer and a cross-entropy over targets
//! that end at different decoder steps, float64, autograd) rebuilt with the library: the
//! encoder through `Rnn::forward_training`/`backward`, the decoder through `start_steps`,
//! `step` and `backward_steps`, the attention through `AttentionBackend`'s per-step path (the
//! keys' side once, one call per decoder step, `attention_memory_backward` at the end); the
//! output layer is written here, in `T`, and the loss is the nn crate's
//! `masked_softmax_cross_entropy` (f32 and f64).
//!
//! On the reference backend in f64 the loss, the outputs (encoder outputs, decoder states,
//! attentional states, attention weights, logits) and every gradient (each parameter, the
//! encoder's and the decoder's inputs) match the file at 1e-9 (the error of the case format,
//! `|a - b| / max(1, |b|)`); every CPU ISA in f32 matches the f64 reference within the f32
//! tolerances of the backends' parity tests (1e-5 for the loss and outputs, 1e-4 for the
//! gradients). The comparison can fail: the encoder lengths ignored, or one parameter moved
//! by 1e-6, are caught.

use rnn_kernels::attention::{AttentionBackend, AttentionConfig, AttentionMemoryGrads, AttentionShape, AttentionUpstream, Score};
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::{Backend, CellKind, Cpu, Float, Isa, LoadOptions, Params, Reference, Rnn, RnnConfig, SeqShape};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Forward outputs and the loss, f32 against the f64 reference.
const FWD_TOL: f64 = 1e-5;
/// Gradients, f32 against the f64 reference.
const GRAD_TOL: f64 = 1e-4;

/// One case file: the model's configurations and parameters, the inputs, and every tensor of
/// the file by name.
struct Case {
    name: String,
    enc_cfg: RnnConfig,
    dec_cfg: RnnConfig,
    att_cfg: AttentionConfig,
    /// Flat parameters (the library's layouts): encoder, decoder, attention, `out.weight`,
    /// `out.bias`.
    params: [Vec<f64>; 5],
    /// `[S, B, I]`, `[Tdec, B, E]`.
    enc_x: Vec<f64>,
    dec_x: Vec<f64>,
    /// The encoder lengths.
    lengths: Vec<usize>,
    /// `[Tdec, B]`: `None` past each target length.
    targets: Vec<Option<usize>>,
    steps: usize,
    vocab: usize,
    tensors: HashMap<String, Vec<f64>>,
    /// The parameters' names in the file, each with where it lies: (part of `params`, range).
    param_names: Vec<(String, usize, std::ops::Range<usize>)>,
}

impl Case {
    fn load(path: &Path) -> Case {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["kind"], "seq2seq", "{name}");
        let num = |k: &str| meta[k].parse::<usize>().unwrap_or_else(|_| panic!("{name}: metadata {k}"));
        let list = |k: &str| meta[k].split(',').map(|l| l.parse::<usize>().unwrap()).collect::<Vec<usize>>();
        let (i, he, e, hd, o, v) =
            (num("input_size"), num("encoder_hidden"), num("target_input_size"), num("decoder_hidden"), num("output_size"), num("vocab"));
        assert_eq!(hd, 2 * he, "{name}: the decoder's first state is the encoder's two final states");
        let score: Score = meta["score"].parse().unwrap();
        let enc_cfg = RnnConfig::new(CellKind::Gru, i, he).bidirectional(true).build().unwrap();
        let dec_cfg = RnnConfig::new(CellKind::Lstm, e + o, hd).build().unwrap();
        let att_cfg = AttentionConfig::new(score, hd, 2 * he).attn_size(num("attn_size")).output_size(o).build().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        let mut targets_i64 = Vec::new();
        for (n, view) in st.tensors() {
            if n == "targets" {
                assert_eq!(view.dtype(), safetensors::Dtype::I64, "{name}: targets");
                targets_i64 = view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                continue;
            }
            assert_eq!(view.dtype(), safetensors::Dtype::F64, "{name}: {n}");
            tensors.insert(n, view.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f64>>());
        }
        let (lengths, target_lengths) = (list("lengths"), list("target_lengths"));
        let b = lengths.len();
        assert_eq!(target_lengths.len(), b, "{name}");
        let steps = targets_i64.len() / b;
        // The targets: a class below V within each target length, PyTorch's ignore_index past it.
        let targets: Vec<Option<usize>> = targets_i64
            .iter()
            .enumerate()
            .map(|(k, &t)| {
                let within = k / b < target_lengths[k % b];
                assert_eq!(within, t != -100, "{name}: targets[{k}] = {t}, target length {}", target_lengths[k % b]);
                within.then(|| usize::try_from(t).ok().filter(|&t| t < v).expect("a class below V"))
            })
            .collect();
        let rnn_params = |cfg: &RnnConfig, prefix: &str| {
            let opts = LoadOptions { prefix: prefix.into(), allow_unexpected: true };
            Params::<f64>::from_safetensors_bytes(&bytes, cfg, &opts, &name).unwrap()
        };
        let (enc, dec) = (rnn_params(&enc_cfg, "encoder."), rnn_params(&dec_cfg, "decoder."));
        let mut param_names = Vec::new();
        for (part, p, prefix) in [(0, &enc, "encoder."), (1, &dec, "decoder.")] {
            for spec in p.layout().specs() {
                param_names.push((format!("{prefix}{}", spec.name), part, spec.range()));
            }
        }
        let mut att = Vec::new();
        for (n, shape) in att_cfg.params() {
            let t = &tensors[&format!("attention.{n}")];
            assert_eq!(t.len(), shape.iter().product::<usize>(), "{name}: attention.{n}");
            param_names.push((format!("attention.{n}"), 2, att.len()..att.len() + t.len()));
            att.extend_from_slice(t);
        }
        let (out_w, out_b) = (tensors["out.weight"].clone(), tensors["out.bias"].clone());
        assert_eq!((out_w.len(), out_b.len()), (v * o, v), "{name}: out");
        param_names.push(("out.weight".into(), 3, 0..v * o));
        param_names.push(("out.bias".into(), 4, 0..v));
        // Every tensor of the file is an input, a parameter, or compared (an output or a gradient).
        let params = [enc.into_vec(), dec.into_vec(), att, out_w, out_b];
        Case {
            enc_x: tensors["enc_x"].clone(),
            dec_x: tensors["dec_x"].clone(),
            name,
            enc_cfg,
            dec_cfg,
            att_cfg,
            params,
            lengths,
            targets,
            steps,
            vocab: v,
            tensors,
            param_names,
        }
    }

    /// The flat parameters with `f` applied (a rounding to `T`).
    fn params_as<T>(&self, f: impl Fn(&[f64]) -> Vec<T>) -> [Vec<T>; 5] {
        [f(&self.params[0]), f(&self.params[1]), f(&self.params[2]), f(&self.params[3]), f(&self.params[4])]
    }
}

fn cases() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seq2seq");
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    paths.sort();
    let cases: Vec<Case> = paths.iter().map(|p| Case::load(p)).collect();
    for score in Score::ALL {
        assert!(cases.iter().any(|c| c.att_cfg.score() == score), "no case of the {} score", score.name());
    }
    for c in &cases {
        // Encoder lengths and target lengths that differ within the batch.
        let b = c.lengths.len();
        assert!(c.lengths.iter().any(|&l| l < c.lengths[0]) || c.lengths.iter().any(|&l| l > c.lengths[0]), "{}", c.name);
        let ends: Vec<usize> = (0..b).map(|r| (0..c.steps).filter(|t| c.targets[t * b + r].is_some()).count()).collect();
        assert!(ends.iter().any(|&n| n < c.steps) && ends.contains(&c.steps), "{}: target lengths {ends:?}", c.name);
    }
    cases
}

/// What a run of the model computes, in f64: the loss, the outputs and the gradients under
/// the file's names.
struct Run {
    values: BTreeMap<String, Vec<f64>>,
}

fn up<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// `y[r] = W x[r] + b` for each row of `x: [N, in]`, `W: [out, in]`.
fn linear<T: Float>(w: &[T], b: &[T], x: &[T], n_in: usize) -> Vec<T> {
    let n_out = b.len();
    x.chunks(n_in)
        .flat_map(|row| (0..n_out).map(move |o| row.iter().zip(&w[o * n_in..(o + 1) * n_in]).fold(b[o], |s, (&a, &c)| s + a * c)))
        .collect()
}

/// The model of the case on `backend` in `T`, with the encoder lengths `lengths`: forward over
/// every decoder step, the loss, and backward through the steps in reverse.
fn run<T: Float, B: Backend<T, Buf = [T]> + AttentionBackend<T> + Clone>(
    backend: &B,
    case: &Case,
    params: &[Vec<T>; 5],
    lengths: &[usize],
) -> Run {
    let down = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    let [enc_p, dec_p, att_p, out_w, out_b] = params;
    let (att_cfg, v, tdec) = (&case.att_cfg, case.vocab, case.steps);
    let (b, he, hd) = (lengths.len(), case.enc_cfg.hidden_size(), case.dec_cfg.hidden_size());
    let (e, o) = (case.dec_cfg.input_size() - att_cfg.output_size(), att_cfg.output_size());
    let s = case.enc_x.len() / (b * case.enc_cfg.input_size());
    let (enc_x, dec_x) = (down(&case.enc_x), down(&case.dec_x));

    // The encoder over the sources, each to its own length.
    let enc = Rnn::new(backend.clone(), &case.enc_cfg, &enc_p[..]).unwrap();
    let shape = SeqShape::with_lengths(s, lengths.to_vec()).unwrap();
    let mut reserve = Default::default();
    let enc_out = enc.forward_training(&shape, &enc_x, None, None, &mut reserve).unwrap();
    let keys = enc_out.y;
    // hn [2, B, He] → the decoder's h0 [1, B, Hd]: each row the forward then the reverse state.
    let mut h0 = vec![T::ZERO; b * hd];
    for r in 0..b {
        h0[r * hd..r * hd + he].copy_from_slice(&enc_out.hn[r * he..(r + 1) * he]);
        h0[r * hd + he..(r + 1) * hd].copy_from_slice(&enc_out.hn[(b + r) * he..(b + r + 1) * he]);
    }

    // The decoder one step at a time, attention over the keys' side computed once.
    let att_shape = AttentionShape::new(1, s, lengths.to_vec()).unwrap();
    let memory = backend.attention_memory(att_cfg, &att_shape, att_p, &keys).unwrap();
    let dec = Rnn::new(backend.clone(), &case.dec_cfg, &dec_p[..]).unwrap();
    let mut steps = dec.start_steps(b, Some(&h0), None, true, None).unwrap();
    let mut feed = vec![T::ZERO; b * o];
    let (mut queries, mut atts, mut logits) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..tdec {
        // x_t = [dec_x[t]; h̃_{t-1}].
        let x: Vec<T> = (0..b)
            .flat_map(|r| dec_x[(t * b + r) * e..(t * b + r + 1) * e].iter().chain(&feed[r * o..(r + 1) * o]).copied().collect::<Vec<T>>())
            .collect();
        let h = dec.step(&mut steps, &x).unwrap();
        let att = backend.attention_forward_with(att_cfg, &att_shape, att_p, &memory, &h).unwrap();
        logits.extend(linear(out_w, out_b, &att.hidden, o));
        feed = att.hidden.clone();
        queries.push(h);
        atts.push(att);
    }
    // The nn crate's masked cross-entropy (PyTorch's `cross_entropy` with `ignore_index`).
    let mut dlogits = vec![T::ZERO; logits.len()];
    let (loss, _) = rnn_kernels_nn::masked_softmax_cross_entropy(&logits, &case.targets, Some(&mut dlogits)).unwrap();

    // Backward from the last step: each step's attentional state gets the output layer's
    // gradient and the next step's input gradient (input feeding).
    let (mut d_out_w, mut d_out_b, mut d_att) = (vec![T::ZERO; out_w.len()], vec![T::ZERO; v], vec![T::ZERO; att_p.len()]);
    let mut d_dec_x = vec![T::ZERO; dec_x.len()];
    let mut d_memory = AttentionMemoryGrads::new(&memory);
    let mut back = dec.backward_steps(&steps, None, None).unwrap();
    let mut d_feed = vec![T::ZERO; b * o];
    while let Some(t) = back.next_step() {
        let att = &atts[t];
        let mut d_hidden = d_feed.clone();
        for r in 0..b {
            for j in 0..v {
                let g = dlogits[(t * b + r) * v + j];
                d_out_b[j] += g;
                for k in 0..o {
                    d_out_w[j * o + k] += g * att.hidden[r * o + k];
                    d_hidden[r * o + k] += g * out_w[j * o + k];
                }
            }
        }
        let upstream = AttentionUpstream { d_weights: None, d_context: None, d_hidden: Some(&d_hidden) };
        let ga = backend.attention_backward_with(att_cfg, &att_shape, att_p, &memory, &queries[t], att, upstream, &mut d_memory).unwrap();
        for (d, &x) in d_att.iter_mut().zip(&ga.d_params) {
            *d += x;
        }
        let dx = back.step(&dec, Some(&ga.d_queries)).unwrap();
        // dx_t = [d dec_x[t]; d h̃_{t-1}].
        for r in 0..b {
            d_dec_x[(t * b + r) * e..(t * b + r + 1) * e].copy_from_slice(&dx[r * (e + o)..r * (e + o) + e]);
            d_feed[r * o..(r + 1) * o].copy_from_slice(&dx[r * (e + o) + e..(r + 1) * (e + o)]);
        }
    }
    let dec_g = back.finish().unwrap();
    let gk = backend.attention_memory_backward(att_cfg, &att_shape, att_p, &memory, &d_memory).unwrap();
    for (d, &x) in d_att.iter_mut().zip(&gk.d_params) {
        *d += x;
    }
    // The decoder's h0 was the encoder's final states: its gradient is theirs.
    let mut dhn = vec![T::ZERO; 2 * b * he];
    for r in 0..b {
        dhn[r * he..(r + 1) * he].copy_from_slice(&dec_g.dh0[r * hd..r * hd + he]);
        dhn[(b + r) * he..(b + r + 1) * he].copy_from_slice(&dec_g.dh0[r * hd + he..(r + 1) * hd]);
    }
    let enc_g = enc.backward(&reserve, Some(&gk.d_keys), Some(&dhn), None).unwrap();

    let mut values = BTreeMap::new();
    values.insert("loss".to_string(), vec![loss]);
    values.insert("keys".into(), up(&keys));
    values.insert("queries".into(), up(&queries.concat()));
    values.insert("hidden".into(), atts.iter().flat_map(|a| up(&a.hidden)).collect());
    values.insert("weights".into(), atts.iter().flat_map(|a| up(&a.weights)).collect());
    values.insert("logits".into(), up(&logits));
    values.insert("grad.enc_x".into(), up(&enc_g.dx));
    values.insert("grad.dec_x".into(), up(&d_dec_x));
    let grads = [enc_g.dparams.unwrap(), dec_g.dparams.unwrap(), d_att, d_out_w, d_out_b];
    for (n, part, range) in &case.param_names {
        values.insert(format!("grad.{n}"), up(&grads[*part][range.clone()]));
    }
    Run { values }
}

/// The worst error of `got` against `want` over every tensor, with its name; `want` must have
/// every tensor `got` has.
fn worst(got: &Run, want: &BTreeMap<String, Vec<f64>>, filter: impl Fn(&str) -> bool) -> (String, f64) {
    let mut w = (String::new(), 0.0f64);
    for (n, g) in got.values.iter().filter(|(n, _)| filter(n)) {
        let e = max_error(g, want.get(n).unwrap_or_else(|| panic!("{n} is not in the file")));
        if e > w.1 || e.is_nan() {
            w = (n.clone(), e);
        }
    }
    w
}

fn file_values(case: &Case) -> BTreeMap<String, Vec<f64>> {
    case.tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The reference in f64 gives the file's loss, outputs and every gradient at 1e-9; every
/// tensor of the file is an input, a parameter or compared.
#[test]
fn reference_matches_pytorch_at_1e_9() {
    for case in cases() {
        let got = run::<f64, _>(&Reference, &case, &case.params_as(<[f64]>::to_vec), &case.lengths);
        for n in case.tensors.keys() {
            let known = ["enc_x", "dec_x"].contains(&n.as_str()) || case.param_names.iter().any(|(p, _, _)| p == n);
            assert!(known || got.values.contains_key(n), "{}: {n} is not compared", case.name);
        }
        assert_eq!(got.values.len(), 8 + case.param_names.len(), "{}", case.name);
        let (name, e) = worst(&got, &file_values(&case), |_| true);
        assert!(e < 1e-9, "{}: {name} error {e:.3e}", case.name);
        eprintln!("{} (reference, f64): worst {e:.1e} ({name}), loss {:.6}", case.name, got.values["loss"][0]);
    }
}

/// The comparison can fail: with every source read to its full length (the encoder lengths
/// ignored) the outputs and gradients differ; with one parameter of the encoder's reverse
/// direction moved by 1e-6, the gradients differ by more than 1e-9.
#[test]
fn the_comparison_catches_lengths_and_a_perturbed_parameter() {
    for case in cases() {
        let want = file_values(&case);
        let full = vec![case.enc_x.len() / (case.lengths.len() * case.enc_cfg.input_size()); case.lengths.len()];
        let got = run::<f64, _>(&Reference, &case, &case.params_as(<[f64]>::to_vec), &full);
        let (name, e) = worst(&got, &want, |_| true);
        assert!(e > 1e-3, "{}: the encoder lengths changed nothing ({name} {e:.1e})", case.name);
        let mut params = case.params_as(<[f64]>::to_vec);
        let (_, part, range) = case.param_names.iter().find(|(n, _, _)| n == "encoder.weight_hh_l0_reverse").unwrap();
        params[*part][range.start + 4] += 1e-6;
        let got = run::<f64, _>(&Reference, &case, &params, &case.lengths);
        let (name, e) = worst(&got, &want, |n| n.starts_with("grad."));
        assert!(e > 1e-9, "{}: a perturbed parameter passed ({name} {e:.1e})", case.name);
    }
}

/// Every CPU ISA in f32, on one and two threads, against the reference in f64 on the case's
/// values: the loss and the outputs at 1e-5, every gradient at 1e-4.
#[test]
fn cpu_isas_match_the_reference() {
    let mut worst_seen = [0.0f64; 2];
    for case in cases() {
        let want = run::<f64, _>(&Reference, &case, &case.params_as(<[f64]>::to_vec), &case.lengths).values;
        let params = case.params_as(|v| v.iter().map(|&x| x as f32).collect::<Vec<f32>>());
        for (isa, threads) in Isa::available().into_iter().flat_map(|isa| [(isa, 1), (isa, 2)]) {
            let got = run::<f32, _>(&Cpu::with_isa(isa, threads).unwrap(), &case, &params, &case.lengths);
            let (name, e) = worst(&got, &want, |n| !n.starts_with("grad."));
            assert!(e < FWD_TOL, "{} on cpu {isa:?}, {threads} threads: {name} error {e:.2e}", case.name);
            worst_seen[0] = worst_seen[0].max(e);
            let (name, e) = worst(&got, &want, |n| n.starts_with("grad."));
            assert!(e < GRAD_TOL, "{} on cpu {isa:?}, {threads} threads: {name} error {e:.2e}", case.name);
            worst_seen[1] = worst_seen[1].max(e);
        }
    }
    eprintln!("cpu {:?} (f32) against the reference: outputs {:.1e}, gradients {:.1e}", Isa::available(), worst_seen[0], worst_seen[1]);
}
