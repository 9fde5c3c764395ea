//! Parameters: PyTorch's names, shapes and order; loading PyTorch `state_dict()` files and
//! reproducing PyTorch's forward pass from them; save/load round trips; initialisation; casts.
//!
//! The files in `tests/fixtures/state_dict/` are written by `tests/fixtures/make_state_dicts.py`:
//! `<name>.safetensors` is exactly `safetensors.torch.save_file(module.state_dict(), path)`, and
//! `<name>.expect.safetensors` holds an input `x` and PyTorch's `y`, `hn` (and `cn`) for it,
//! computed with a zero initial state.

mod common;

use common::tempdir::TempDir;

use rnn_kernels::{Backend, CellKind, Element, LoadOptions, ParamKind, ParamLayout, Params, Reference, Rnn, RnnConfig, SeqShape};
use safetensors::tensor::Dtype as StDtype;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state_dict").join(name)
}

/// A tensor read with the plain safetensors crate, widened to f64.
#[derive(Debug, Clone)]
struct Tensor {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// Every tensor of a safetensors file, by name, and its metadata.
fn read_all(bytes: &[u8]) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        let data = match v.dtype() {
            StDtype::F64 => v.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
            StDtype::F32 => v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            StDtype::F16 => v.data().chunks_exact(2).map(|b| rnn_kernels::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
            StDtype::BF16 => v.data().chunks_exact(2).map(|b| rnn_kernels::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        out.insert(name, Tensor { dtype: v.dtype(), shape: v.shape().to_vec(), data });
    }
    (out, meta.metadata().clone().unwrap_or_default())
}

fn read_file(path: &Path) -> HashMap<String, Tensor> {
    read_all(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).0
}

/// `(name, shape)` pairs, for comparing layouts.
fn names_shapes(layout: &ParamLayout) -> Vec<(String, Vec<usize>)> {
    layout.specs().iter().map(|s| (s.name.clone(), s.shape.clone())).collect()
}

fn expected(list: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
    list.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
}

/// Checks the parts of a layout that follow from its specs: offsets contiguous in order, total
/// length, per-layer ranges, and that `find` returns each spec.
fn check_layout_consistency(layout: &ParamLayout) {
    let mut offset = 0;
    for s in layout.specs() {
        assert_eq!(s.offset, offset, "{}: offset", s.name);
        assert_eq!(s.len(), s.shape.iter().product::<usize>());
        offset += s.len();
        assert_eq!(layout.find(&s.name), Some(s));
        let lr = layout.layer(s.layer, s.direction);
        let r = match s.kind {
            ParamKind::WeightIh => Some(lr.w_ih.clone()),
            ParamKind::WeightHh => Some(lr.w_hh.clone()),
            ParamKind::BiasIh => lr.b_ih.clone(),
            ParamKind::BiasHh => lr.b_hh.clone(),
            ParamKind::WeightHr => lr.w_hr.clone(),
            ParamKind::WeightPeephole => lr.peephole.clone(),
            other => panic!("{}: a kind this test does not know: {other:?}", s.name),
        };
        assert_eq!(r, Some(s.range()), "{}: layer ranges", s.name);
        let suffix = if s.direction == 1 { "_reverse" } else { "" };
        assert!(s.name.ends_with(&format!("_l{}{suffix}", s.layer)), "{}: layer/direction", s.name);
    }
    assert_eq!(layout.len(), offset);
}

/// The file's tensors, as `(name, shape)`, must be exactly the layout's (order aside: a
/// safetensors file does not keep the insertion order).
fn check_layout_against_file(layout: &ParamLayout, file: &HashMap<String, Tensor>, prefix: &str) {
    let mut want: Vec<_> = names_shapes(layout).into_iter().map(|(n, s)| (format!("{prefix}{n}"), s)).collect();
    let mut got: Vec<_> = file.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the PyTorch file's tensors differ from the layout");
}

// ---------------------------------------------------------------------------------------------
// Layout = PyTorch state_dict()
// ---------------------------------------------------------------------------------------------

#[test]
fn layout_lstm_bidirectional_projection_is_pytorch_state_dict() {
    // torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2): G·H = 20, P = 2,
    // layer 1 input D·P = 4.
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).bidirectional(true).proj_size(2).build().unwrap();
    let layout = ParamLayout::new(&cfg);
    let want = expected(&[
        ("weight_ih_l0", &[20, 3]),
        ("weight_hh_l0", &[20, 2]),
        ("bias_ih_l0", &[20]),
        ("bias_hh_l0", &[20]),
        ("weight_hr_l0", &[2, 5]),
        ("weight_ih_l0_reverse", &[20, 3]),
        ("weight_hh_l0_reverse", &[20, 2]),
        ("bias_ih_l0_reverse", &[20]),
        ("bias_hh_l0_reverse", &[20]),
        ("weight_hr_l0_reverse", &[2, 5]),
        ("weight_ih_l1", &[20, 4]),
        ("weight_hh_l1", &[20, 2]),
        ("bias_ih_l1", &[20]),
        ("bias_hh_l1", &[20]),
        ("weight_hr_l1", &[2, 5]),
        ("weight_ih_l1_reverse", &[20, 4]),
        ("weight_hh_l1_reverse", &[20, 2]),
        ("bias_ih_l1_reverse", &[20]),
        ("bias_hh_l1_reverse", &[20]),
        ("weight_hr_l1_reverse", &[2, 5]),
    ]);
    assert_eq!(names_shapes(&layout), want);
    assert_eq!(layout.len(), 2 * (20 * 3 + 20 * 2 + 40 + 10) + 2 * (20 * 4 + 20 * 2 + 40 + 10));
    check_layout_consistency(&layout);
    check_layout_against_file(&layout, &read_file(&fixture("lstm_l2_bi_proj.safetensors")), "");
    let s = &layout.specs()[11];
    assert_eq!((s.layer, s.direction, s.kind), (1, 0, ParamKind::WeightHh));
    let s = &layout.specs()[9];
    assert_eq!((s.layer, s.direction, s.kind), (0, 1, ParamKind::WeightHr));
}

#[test]
fn layout_gru_without_bias_is_pytorch_state_dict() {
    // torch.nn.GRU(4, 3, num_layers=2, bidirectional=True, bias=False): G·H = 9.
    let cfg = RnnConfig::new(CellKind::Gru, 4, 3).num_layers(2).bidirectional(true).bias(false).build().unwrap();
    let layout = ParamLayout::new(&cfg);
    let want = expected(&[
        ("weight_ih_l0", &[9, 4]),
        ("weight_hh_l0", &[9, 3]),
        ("weight_ih_l0_reverse", &[9, 4]),
        ("weight_hh_l0_reverse", &[9, 3]),
        ("weight_ih_l1", &[9, 6]),
        ("weight_hh_l1", &[9, 3]),
        ("weight_ih_l1_reverse", &[9, 6]),
        ("weight_hh_l1_reverse", &[9, 3]),
    ]);
    assert_eq!(names_shapes(&layout), want);
    check_layout_consistency(&layout);
    check_layout_against_file(&layout, &read_file(&fixture("gru_l2_bi_nobias.safetensors")), "");
    for d in 0..2 {
        let lr = layout.layer(1, d);
        assert!(lr.b_ih.is_none() && lr.b_hh.is_none() && lr.w_hr.is_none());
    }
}

#[test]
fn layout_rnn_is_pytorch_state_dict() {
    // torch.nn.RNN(3, 4, num_layers=2) and torch.nn.RNN(2, 3, nonlinearity='relu'): G = 1.
    let cfg = RnnConfig::new(CellKind::RnnTanh, 3, 4).num_layers(2).build().unwrap();
    let layout = ParamLayout::new(&cfg);
    let want = expected(&[
        ("weight_ih_l0", &[4, 3]),
        ("weight_hh_l0", &[4, 4]),
        ("bias_ih_l0", &[4]),
        ("bias_hh_l0", &[4]),
        ("weight_ih_l1", &[4, 4]),
        ("weight_hh_l1", &[4, 4]),
        ("bias_ih_l1", &[4]),
        ("bias_hh_l1", &[4]),
    ]);
    assert_eq!(names_shapes(&layout), want);
    check_layout_consistency(&layout);
    check_layout_against_file(&layout, &read_file(&fixture("rnn_tanh_l2.safetensors")), "");

    let cfg = RnnConfig::new(CellKind::RnnRelu, 2, 3).build().unwrap();
    let layout = ParamLayout::new(&cfg);
    let want = expected(&[("weight_ih_l0", &[3, 2]), ("weight_hh_l0", &[3, 3]), ("bias_ih_l0", &[3]), ("bias_hh_l0", &[3])]);
    assert_eq!(names_shapes(&layout), want);
    check_layout_consistency(&layout);
    check_layout_against_file(&layout, &read_file(&fixture("rnn_relu.safetensors")), "");

    // The cell does not change an RNN's names or shapes, and the layouts of other configs differ.
    let tanh = ParamLayout::new(&RnnConfig::new(CellKind::RnnTanh, 2, 3).build().unwrap());
    assert_eq!(names_shapes(&tanh), names_shapes(&layout));
    let lstm = ParamLayout::new(&RnnConfig::new(CellKind::Lstm, 2, 3).build().unwrap());
    assert_eq!(lstm.specs()[0].shape, vec![12, 2]);
}

// ---------------------------------------------------------------------------------------------
// PyTorch state_dict files: load, and reproduce PyTorch's forward pass
// ---------------------------------------------------------------------------------------------

struct Fixture {
    name: &'static str,
    cfg: RnnConfig,
    prefix: &'static str,
    /// The parameters were saved (and PyTorch computed) in float32.
    f32: bool,
}

fn fixtures() -> Vec<Fixture> {
    let b = RnnConfig::new;
    vec![
        Fixture {
            name: "lstm_l2_bi_proj",
            cfg: b(CellKind::Lstm, 3, 5).num_layers(2).bidirectional(true).proj_size(2).build().unwrap(),
            prefix: "",
            f32: false,
        },
        Fixture {
            name: "gru_l2_bi_nobias",
            cfg: b(CellKind::Gru, 4, 3).num_layers(2).bidirectional(true).bias(false).build().unwrap(),
            prefix: "",
            f32: false,
        },
        Fixture { name: "rnn_relu", cfg: b(CellKind::RnnRelu, 2, 3).build().unwrap(), prefix: "", f32: false },
        Fixture { name: "rnn_tanh_l2", cfg: b(CellKind::RnnTanh, 3, 4).num_layers(2).build().unwrap(), prefix: "", f32: false },
        Fixture { name: "lstm_bi_f32", cfg: b(CellKind::Lstm, 4, 6).bidirectional(true).build().unwrap(), prefix: "", f32: true },
        Fixture { name: "model_with_lstm", cfg: b(CellKind::Lstm, 3, 4).build().unwrap(), prefix: "rnn.", f32: false },
    ]
}

/// `max_i |a_i - b_i| / max(1, |b_i|)`, infinite on NaN or a length mismatch.
fn max_err(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).map(|(&a, &b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) })
}

/// Runs forward on the fixture's expect-file input and returns `(y, hn, cn)` as f64.
fn run_forward<T: rnn_kernels::Float>(params: &Params<T>, x: &Tensor) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>)
where
    Reference: Backend<T, Buf = [T]>,
{
    let (steps, batch) = (x.shape[0], x.shape[1]);
    let shape = SeqShape::new(steps, batch).unwrap();
    let rnn = Rnn::from_params(Reference, params).unwrap();
    let xs: Vec<T> = x.data.iter().map(|&v| T::from_f64(v)).collect();
    let out = rnn.forward(&shape, &xs, None, None).unwrap();
    let w = |v: &[T]| v.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    (w(&out.y), w(&out.hn), out.cn.as_deref().map(w))
}

fn compare(what: &str, got: &(Vec<f64>, Vec<f64>, Option<Vec<f64>>), want: &HashMap<String, Tensor>, tol: f64) {
    let (y, hn, cn) = got;
    eprintln!(
        "{what}: max error y {:.1e}, hn {:.1e}, cn {}",
        max_err(y, &want["y"].data),
        max_err(hn, &want["hn"].data),
        cn.as_ref().map_or("-".into(), |c| format!("{:.1e}", max_err(c, &want["cn"].data)))
    );
    let e = max_err(y, &want["y"].data);
    assert!(e <= tol, "{what}: y differs from PyTorch's by {e:e} (tolerance {tol:e})");
    let e = max_err(hn, &want["hn"].data);
    assert!(e <= tol, "{what}: hn differs from PyTorch's by {e:e} (tolerance {tol:e})");
    match (cn, want.get("cn")) {
        (Some(cn), Some(w)) => {
            let e = max_err(cn, &w.data);
            assert!(e <= tol, "{what}: cn differs from PyTorch's by {e:e} (tolerance {tol:e})");
        }
        (None, None) => {}
        _ => panic!("{what}: cn present on one side only"),
    }
    // The comparison is not vacuous.
    assert!(want["y"].data.iter().any(|v| v.abs() > 1e-3), "{what}: PyTorch's y is all (near) zero");
}

#[test]
fn pytorch_state_dicts_load_and_reproduce_forward() {
    for f in fixtures() {
        let path = fixture(&format!("{}.safetensors", f.name));
        let file = read_file(&path);
        let expect = read_file(&fixture(&format!("{}.expect.safetensors", f.name)));
        let opts = LoadOptions { prefix: f.prefix.to_string(), allow_unexpected: !f.prefix.is_empty() };
        let dtype = if f.f32 { StDtype::F32 } else { StDtype::F64 };
        assert!(file.values().all(|t| t.dtype == dtype), "{}: fixture dtype", f.name);

        // Every tensor loads into its place, bit for bit (f32 widens exactly to f64).
        let p64 = Params::<f64>::load_safetensors_with(&path, &f.cfg, &opts).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        check_layout_against_file(p64.layout(), &file, f.prefix);
        for s in p64.layout().specs() {
            let want = &file[&format!("{}{}", f.prefix, s.name)].data;
            assert_eq!(p64.get(&s.name).unwrap(), &want[..], "{}: {}", f.name, s.name);
        }
        // And into f32, rounded to nearest.
        let p32 = Params::<f32>::load_safetensors_with(&path, &f.cfg, &opts).unwrap();
        assert_eq!(p32, p64.cast::<f32>(), "{}: f32 load", f.name);

        if f.f32 {
            compare(f.name, &run_forward(&p32, &expect["x"]), &expect, 1e-5);
            // f64 compute on the f32 weights: PyTorch's f32 rounding is all that differs.
            compare(&format!("{} (f64 compute)", f.name), &run_forward(&p64, &expect["x"]), &expect, 1e-5);
        } else {
            compare(f.name, &run_forward(&p64, &expect["x"]), &expect, 1e-12);
            compare(&format!("{} (f32 compute)", f.name), &run_forward(&p32, &expect["x"]), &expect, 1e-4);
        }
    }
}

/// The forward comparison is able to fail: perturbed weights or a swapped direction do not match.
#[test]
fn forward_comparison_detects_wrong_weights() {
    let f = &fixtures()[0];
    let path = fixture(&format!("{}.safetensors", f.name));
    let expect = read_file(&fixture(&format!("{}.expect.safetensors", f.name)));
    let good = Params::<f64>::load_safetensors(&path, &f.cfg).unwrap();
    let want_y = &expect["y"].data;
    assert!(max_err(&run_forward(&good, &expect["x"]).0, want_y) <= 1e-12);
    for name in ["weight_hr_l1_reverse", "bias_hh_l0", "weight_ih_l1"] {
        let mut p = good.clone();
        p.get_mut(name).unwrap()[1] += 1e-6;
        let e = max_err(&run_forward(&p, &expect["x"]).0, want_y);
        assert!(e > 1e-10, "perturbing {name} by 1e-6 changed y by only {e:e}");
    }
    // Swap the two directions of layer 0.
    let mut p = good.clone();
    for stem in ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"] {
        let fwd = p.get(&format!("{stem}_l0")).unwrap().to_vec();
        let rev = p.get(&format!("{stem}_l0_reverse")).unwrap().to_vec();
        p.get_mut(&format!("{stem}_l0")).unwrap().copy_from_slice(&rev);
        p.get_mut(&format!("{stem}_l0_reverse")).unwrap().copy_from_slice(&fwd);
    }
    assert!(max_err(&run_forward(&p, &expect["x"]).0, want_y) > 1e-3);
}

#[test]
fn submodule_state_dict_needs_prefix() {
    let f = fixtures().into_iter().find(|f| f.prefix == "rnn.").unwrap();
    let path = fixture(&format!("{}.safetensors", f.name));
    let file = read_file(&path);
    assert!(file.contains_key("embed.weight") && file.contains_key("head.bias") && file.contains_key("rnn.weight_ih_l0"));

    // Strict, no prefix: fails on the first tensor it does not know, whichever it is.
    let e = Params::<f64>::load_safetensors(&path, &f.cfg).unwrap_err().to_string();
    assert!(e.contains("unexpected tensor"), "{e}");
    assert!(file.keys().any(|k| e.contains(&format!("`{k}`"))), "the message names none of the file's tensors: {e}");
    assert!(e.contains(&path.display().to_string()), "{e}");

    // No prefix, other tensors allowed: the parameters are not found under their bare names.
    let lenient = LoadOptions { prefix: String::new(), allow_unexpected: true };
    let e = Params::<f64>::load_safetensors_with(&path, &f.cfg, &lenient).unwrap_err().to_string();
    assert!(e.contains("`weight_ih_l0`") && e.contains("missing"), "{e}");

    // Prefix "rnn." with allow_unexpected: loads, and equals the prefixed tensors.
    let opts = LoadOptions { prefix: "rnn.".into(), allow_unexpected: true };
    let p = Params::<f64>::load_safetensors_with(&path, &f.cfg, &opts).unwrap();
    assert_eq!(p.get("weight_hh_l0").unwrap(), &file["rnn.weight_hh_l0"].data[..]);

    // Prefix "rnn." strict: like PyTorch's `module.rnn.load_state_dict(strict=True)` on the
    // `rnn.`-prefixed keys, tensors outside the prefix are not this module's business...
    let strict_prefixed = LoadOptions { prefix: "rnn.".into(), allow_unexpected: false };
    assert_eq!(Params::<f64>::load_safetensors_with(&path, &f.cfg, &strict_prefixed).unwrap(), p);
    // ... but an unknown tensor under the prefix is an error, naming it.
    let mut st: Vec<(String, Tensor)> = file.clone().into_iter().collect();
    st.push(("rnn.weight_ih_l1".into(), file["rnn.weight_ih_l0"].clone()));
    let bytes = serialize(&st, None);
    let e = Params::<f64>::from_safetensors_bytes(&bytes, &f.cfg, &strict_prefixed, "<extra>").unwrap_err().to_string();
    assert!(e.contains("`rnn.weight_ih_l1`") && e.contains("unexpected"), "{e}");
    assert!(Params::<f64>::from_safetensors_bytes(&bytes, &f.cfg, &opts, "<extra>").is_ok());
    // A missing tensor is named with its prefix.
    let st: Vec<(String, Tensor)> = file.clone().into_iter().filter(|(n, _)| n != "rnn.bias_hh_l0").collect();
    let e = Params::<f64>::from_safetensors_bytes(&serialize(&st, None), &f.cfg, &opts, "<less>").unwrap_err().to_string();
    assert!(e.contains("`rnn.bias_hh_l0`") && e.contains("missing"), "{e}");
}

fn serialize(tensors: &[(String, Tensor)], meta: Option<HashMap<String, String>>) -> Vec<u8> {
    let bytes: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b = match t.dtype {
                StDtype::F64 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                StDtype::F32 => t.data.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
                StDtype::F16 => t.data.iter().flat_map(|&v| <rnn_kernels::f16 as Element>::from_f64(v).to_le_bytes()).collect(),
                StDtype::BF16 => t.data.iter().flat_map(|&v| <rnn_kernels::bf16 as Element>::from_f64(v).to_le_bytes()).collect(),
                d => panic!("{d:?}"),
            };
            (n.clone(), t.dtype, t.shape.clone(), b)
        })
        .collect();
    let views: Vec<_> =
        bytes.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::tensor::serialize(views, meta).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Save / load round trips
// ---------------------------------------------------------------------------------------------

fn round_trip_configs() -> Vec<RnnConfig> {
    vec![
        RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).bidirectional(true).proj_size(2).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 4, 3).num_layers(3).bias(false).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 2, 6).bidirectional(true).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 1, 1).build().unwrap(),
    ]
}

fn bits<T: rnn_kernels::Element>(p: &Params<T>) -> Vec<u64> {
    p.as_slice().iter().map(|v| v.to_f64().to_bits()).collect()
}

fn round_trip<T: rnn_kernels::Element>(dir: &TempDir, cfg: &RnnConfig, seed: u64) {
    let what = format!("{} {}", cfg.cell(), std::any::type_name::<T>());
    let mut p = Params::<T>::init_uniform(cfg, seed).unwrap();
    // Values that are awkward to serialise: signed zero, subnormal-ish, extremes.
    let specials = [-0.0, 1e-300, -1e300, f64::MIN_POSITIVE, 1.0 / 3.0];
    for (v, s) in p.as_mut_slice().iter_mut().zip(specials) {
        *v = T::from_f64(s);
    }

    // In memory.
    let bytes = p.to_safetensors_bytes().unwrap();
    let q = Params::<T>::from_safetensors_bytes(&bytes, cfg, &LoadOptions::default(), "<mem>").unwrap();
    assert_eq!(bits(&q), bits(&p), "{what}: bytes round trip");
    assert_eq!(q.config(), cfg);

    // What the bytes are: PyTorch's names and shapes, T's dtype, the config as metadata.
    let (tensors, meta) = read_all(&bytes);
    assert_eq!(tensors.len(), p.layout().specs().len());
    let dtype = match T::DTYPE {
        rnn_kernels::Dtype::F32 => StDtype::F32,
        rnn_kernels::Dtype::F16 => StDtype::F16,
        rnn_kernels::Dtype::BF16 => StDtype::BF16,
        _ => StDtype::F64,
    };
    for s in p.layout().specs() {
        let t = &tensors[&s.name];
        assert_eq!((t.dtype, &t.shape), (dtype, &s.shape), "{what}: {}", s.name);
        let want: Vec<u64> = p.get(&s.name).unwrap().iter().map(|v| v.to_f64().to_bits()).collect();
        let got: Vec<u64> = t.data.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "{what}: {} data", s.name);
    }
    assert_eq!(rnn_kernels::config_from_metadata(&meta, "<mem>").unwrap(), *cfg, "{what}: metadata");
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"), "{what}: format metadata for safetensors.torch");

    // Through a file: load_safetensors with the config, and Params::load from the metadata.
    let path = dir.path(&format!("{}_{}_{seed}.safetensors", cfg.cell(), std::any::type_name::<T>()));
    p.save_safetensors(&path).unwrap();
    let q = Params::<T>::load_safetensors(&path, cfg).unwrap();
    assert_eq!(bits(&q), bits(&p), "{what}: file round trip");
    let q = Params::<T>::load(&path).unwrap();
    assert_eq!(bits(&q), bits(&p), "{what}: Params::load");
    assert_eq!(q.config(), cfg, "{what}: Params::load config");
    // Same content in the file as in memory (byte order of the JSON header aside).
    let (ft, fm) = read_all(&std::fs::read(&path).unwrap());
    assert_eq!(fm, meta);
    assert_eq!(ft.keys().collect::<std::collections::BTreeSet<_>>(), tensors.keys().collect());
    // Saving again over the same path replaces it.
    let p2 = Params::<T>::init_uniform(cfg, seed + 1).unwrap();
    p2.save_safetensors(&path).unwrap();
    assert_eq!(bits(&Params::<T>::load(&path).unwrap()), bits(&p2), "{what}: overwrite");
}

#[test]
fn save_load_round_trip_is_bit_identical() {
    let dir = TempDir::new("params_io");
    for (i, cfg) in round_trip_configs().iter().enumerate() {
        round_trip::<f64>(&dir, cfg, 100 + i as u64);
        round_trip::<f32>(&dir, cfg, 200 + i as u64);
        round_trip::<rnn_kernels::f16>(&dir, cfg, 300 + i as u64);
        round_trip::<rnn_kernels::bf16>(&dir, cfg, 400 + i as u64);
    }
}

#[test]
fn cross_precision_loads() {
    let cfg = &round_trip_configs()[0];
    let p64 = Params::<f64>::init_uniform(cfg, 5).unwrap();
    // f64 file into f32: rounded to nearest, same as cast.
    let q = Params::<f32>::from_safetensors_bytes(&p64.to_safetensors_bytes().unwrap(), cfg, &LoadOptions::default(), "<m>").unwrap();
    assert_eq!(q, p64.cast::<f32>());
    // f32 file into f64: exact.
    let p32 = p64.cast::<f32>();
    let q = Params::<f64>::from_safetensors_bytes(&p32.to_safetensors_bytes().unwrap(), cfg, &LoadOptions::default(), "<m>").unwrap();
    assert_eq!(q, p32.cast::<f64>());
}

/// A PyTorch file saved back from Rust has the same tensors and values.
#[test]
fn pytorch_file_resaved_from_rust_is_unchanged() {
    for f in fixtures().into_iter().filter(|f| f.prefix.is_empty()) {
        let path = fixture(&format!("{}.safetensors", f.name));
        let file = read_file(&path);
        let bytes = if f.f32 {
            Params::<f32>::load_safetensors(&path, &f.cfg).unwrap().to_safetensors_bytes().unwrap()
        } else {
            Params::<f64>::load_safetensors(&path, &f.cfg).unwrap().to_safetensors_bytes().unwrap()
        };
        let (again, _) = read_all(&bytes);
        assert_eq!(again.len(), file.len(), "{}", f.name);
        for (name, t) in &file {
            let a = &again[name];
            assert_eq!((a.dtype, &a.shape), (t.dtype, &t.shape), "{}: {name}", f.name);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.data), bits(&t.data), "{}: {name}", f.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// init_uniform, get / get_mut, from_vec, cast
// ---------------------------------------------------------------------------------------------

#[test]
fn init_uniform_is_seeded_bounded_and_centred() {
    let cfg = RnnConfig::new(CellKind::Lstm, 16, 25).num_layers(2).bidirectional(true).proj_size(7).build().unwrap();
    let k = 1.0 / 25f64.sqrt(); // 0.2
    let a = Params::<f64>::init_uniform(&cfg, 42).unwrap();
    let n = a.as_slice().len();
    assert_eq!(n, ParamLayout::new(&cfg).len());

    // Deterministic for a seed; the f32 version is the f64 one rounded.
    assert_eq!(bits(&a), bits(&Params::<f64>::init_uniform(&cfg, 42).unwrap()));
    assert_eq!(Params::<f32>::init_uniform(&cfg, 42).unwrap(), a.cast::<f32>());
    // Different across seeds: (almost) every element differs.
    for seed in [43, 0, u64::MAX] {
        let b = Params::<f64>::init_uniform(&cfg, seed).unwrap();
        let same = a.as_slice().iter().zip(b.as_slice()).filter(|(x, y)| x == y).count();
        assert!(same <= n / 1000, "seeds 42 and {seed}: {same} of {n} equal elements");
    }

    for p in [Params::<f64>::init_uniform(&cfg, 42).unwrap(), Params::<f64>::init_uniform(&cfg, 7).unwrap()] {
        let v = p.as_slice();
        // Within ±1/sqrt(H), everywhere.
        assert!(v.iter().all(|x| x.abs() <= k && x.is_finite()), "an element outside ±{k}");
        // Mean near 0: sd of U(-k, k) is k/sqrt(3); allow 5 standard errors.
        let mean = v.iter().sum::<f64>() / n as f64;
        let se = k / 3f64.sqrt() / (n as f64).sqrt();
        assert!(mean.abs() < 5.0 * se, "mean {mean} (standard error {se})");
        // The variance is that of U(-k, k), so the range is used, not just bounded.
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((var / (k * k / 3.0) - 1.0).abs() < 0.05, "variance {var}, want {}", k * k / 3.0);
        // Every tensor, weights and biases alike, spans most of the range.
        for s in p.layout().specs() {
            let t = p.get(&s.name).unwrap();
            let (lo, hi) = t.iter().fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            assert!(lo < -0.5 * k && hi > 0.5 * k, "{}: range [{lo}, {hi}] of ±{k}", s.name);
        }
    }

    // The bound follows H, not Hout or the input size.
    let small = RnnConfig::new(CellKind::Gru, 100, 4).build().unwrap();
    let p = Params::<f64>::init_uniform(&small, 1).unwrap();
    assert!(p.as_slice().iter().all(|x| x.abs() <= 0.5));
    assert!(p.max_abs() > 0.45, "max {} should come near 1/sqrt(4) = 0.5", p.max_abs());
}

#[test]
fn get_get_mut_and_from_vec_address_the_flat_buffer() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).bidirectional(true).proj_size(2).build().unwrap();
    let layout = ParamLayout::new(&cfg);
    let flat: Vec<f64> = (0..layout.len()).map(|i| i as f64).collect();
    let mut p = Params::from_vec(&cfg, flat.clone()).unwrap();
    for s in layout.specs() {
        assert_eq!(p.get(&s.name).unwrap(), &flat[s.range()], "{}", s.name);
    }
    p.get_mut("weight_hr_l1_reverse").unwrap().fill(-1.0);
    let s = layout.find("weight_hr_l1_reverse").unwrap();
    assert_eq!(s.range().end, layout.len(), "the last tensor of the stack");
    for (i, &v) in p.as_slice().iter().enumerate() {
        assert_eq!(v, if s.range().contains(&i) { -1.0 } else { i as f64 });
    }
    assert_eq!(Params::<f64>::zeros(&cfg).unwrap().as_slice(), vec![0.0; layout.len()].as_slice());
    assert_eq!(p.clone().into_vec().len(), layout.len());
    // The saved file carries the change.
    let q = Params::<f64>::from_safetensors_bytes(&p.to_safetensors_bytes().unwrap(), &cfg, &LoadOptions::default(), "<m>").unwrap();
    assert_eq!(q.get("weight_hr_l1_reverse").unwrap(), &[-1.0; 10][..]);
    assert_eq!(q, p);
}

#[test]
fn cast_between_f64_and_f32() {
    let cfg = RnnConfig::new(CellKind::Gru, 3, 4).num_layers(2).build().unwrap();
    let mut p = Params::<f64>::init_uniform(&cfg, 9).unwrap();
    p.as_mut_slice()[0] = 0.1; // not representable in f32
    let q = p.cast::<f32>();
    assert_eq!(q.config(), p.config());
    assert_eq!(q.layout(), p.layout());
    for (a, b) in p.as_slice().iter().zip(q.as_slice()) {
        assert_eq!(*b, *a as f32, "rounded to nearest");
    }
    assert_ne!(q.as_slice()[0] as f64, 0.1);
    // f32 -> f64 -> f32 is exact; f64 -> f32 -> f64 is within f32 rounding.
    assert_eq!(q.cast::<f64>().cast::<f32>(), q);
    let back = q.cast::<f64>();
    for (a, b) in p.as_slice().iter().zip(back.as_slice()) {
        assert!((a - b).abs() <= a.abs() * f32::EPSILON as f64);
    }
    // Casting to the same type is the identity.
    assert_eq!(p.cast::<f64>(), p);
    // Forward with the cast parameters stays close to f64.
    let shape = SeqShape::new(3, 2).unwrap();
    let x: Vec<f64> = (0..18).map(|i| (i as f64 * 0.37).sin()).collect();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let y64 = Rnn::from_params(Reference, &p).unwrap().forward(&shape, &x, None, None).unwrap().y;
    let y32 = Rnn::from_params(Reference, &q).unwrap().forward(&shape, &x32, None, None).unwrap().y;
    let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
    assert!(max_err(&y32, &y64) < 1e-5);
}

/// Writes a Rust-saved parameter file, and the Rust forward pass on it, for
/// `tests/fixtures/check_torch_load.py` (run by hand: it needs PyTorch). Only when
/// `RNN_KERNELS_EXPORT_DIR` is set; otherwise does nothing.
#[test]
fn export_for_torch_check() {
    let Some(dir) = std::env::var_os("RNN_KERNELS_EXPORT_DIR") else { return };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let configs = [
        ("lstm_l2_bi_proj", RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).bidirectional(true).proj_size(2).build().unwrap()),
        ("gru_l2_bi_nobias", RnnConfig::new(CellKind::Gru, 4, 3).num_layers(2).bidirectional(true).bias(false).build().unwrap()),
        ("rnn_relu_l1", RnnConfig::new(CellKind::RnnRelu, 2, 3).build().unwrap()),
    ];
    for (name, cfg) in configs {
        let p = Params::<f64>::init_uniform(&cfg, 2024).unwrap();
        p.save_safetensors(dir.join(format!("{name}.safetensors"))).unwrap();
        p.cast::<f32>().save_safetensors(dir.join(format!("{name}_f32.safetensors"))).unwrap();
        let shape = SeqShape::new(4, 2).unwrap();
        let x: Vec<f64> = (0..4 * 2 * cfg.input_size()).map(|i| (i as f64 * 0.61).cos()).collect();
        let out = Rnn::from_params(Reference, &p).unwrap().forward(&shape, &x, None, None).unwrap();
        let t = |data: Vec<f64>, shape: [usize; 3]| Tensor { dtype: StDtype::F64, shape: shape.to_vec(), data };
        let mut io = vec![
            ("x".to_string(), t(x, shape.x_shape(&cfg))),
            ("y".to_string(), t(out.y, shape.y_shape(&cfg))),
            ("hn".to_string(), t(out.hn, shape.h_shape(&cfg))),
        ];
        if let Some(cn) = out.cn {
            io.push(("cn".to_string(), t(cn, shape.c_shape(&cfg))));
        }
        std::fs::write(dir.join(format!("{name}.io.safetensors")), serialize(&io, None)).unwrap();
    }
}

/// A PyTorch state_dict saved in bf16 or f16 (`model.half()` / `.bfloat16()`) loads into an f32
/// or f64 model exactly (every 16-bit value is an f32), and into the other 16-bit type or from
/// f32 rounded once to nearest even, as PyTorch's `.to(dtype)` does.
#[test]
fn half_state_dicts_load_with_conversion() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).bidirectional(true).proj_size(2).build().unwrap();
    let p = Params::<f64>::init_uniform(&cfg, 9).unwrap();
    for dtype in [StDtype::F16, StDtype::BF16, StDtype::F32] {
        let tensors: Vec<(String, Tensor)> = p
            .layout()
            .specs()
            .iter()
            .map(|s| (s.name.clone(), Tensor { dtype, shape: s.shape.clone(), data: p.get(&s.name).unwrap().to_vec() }))
            .collect();
        let bytes = serialize(&tensors, None);
        let (stored, _) = read_all(&bytes);
        let opts = LoadOptions::default();
        // The values in the file (rounded to its dtype), in the flat layout.
        let file: Vec<f64> = p.layout().specs().iter().flat_map(|s| stored[&s.name].data.clone()).collect();
        let q32 = Params::<f32>::from_safetensors_bytes(&bytes, &cfg, &opts, "<mem>").unwrap();
        assert!(q32.as_slice().iter().zip(&file).all(|(a, b)| *a as f64 == *b), "{dtype:?} into f32: exact");
        let q64 = Params::<f64>::from_safetensors_bytes(&bytes, &cfg, &opts, "<mem>").unwrap();
        assert_eq!(q64.as_slice(), &file[..], "{dtype:?} into f64: exact");
        let q16 = Params::<rnn_kernels::f16>::from_safetensors_bytes(&bytes, &cfg, &opts, "<mem>").unwrap();
        // The file's values are all f32 values, so an f32-to-16-bit rounding is the one rounding
        // (`half`'s own f64 conversions misround some values just past a midpoint).
        assert!(file.iter().all(|&v| v as f32 as f64 == v));
        let want16: Vec<u16> = file.iter().map(|&v| rnn_kernels::f16::from_f32(v as f32).to_bits()).collect();
        assert_eq!(q16.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want16, "{dtype:?} into f16");
        let qb = Params::<rnn_kernels::bf16>::from_safetensors_bytes(&bytes, &cfg, &opts, "<mem>").unwrap();
        let wantb: Vec<u16> = file.iter().map(|&v| rnn_kernels::bf16::from_f32(v as f32).to_bits()).collect();
        assert_eq!(qb.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), wantb, "{dtype:?} into bf16");
        if dtype != StDtype::F32 {
            // The file's 16-bit values are not all f32-exact by accident: the f64 originals differ.
            assert!(file.iter().zip(p.as_slice()).any(|(a, b)| a != b), "{dtype:?}: rounded");
        }
    }
}

/// `Rnn::params` (through `Backend::read_params`) gives back exactly the parameters the plan was
/// made with, and after `update_params` the new ones, on the reference and on every ISA of the
/// CPU backend; a buffer of the wrong length is an error naming `params`.
#[test]
fn plans_give_their_parameters_back() {
    use rnn_kernels::{Cpu, Isa};
    let cfg = RnnConfig::new(CellKind::Lstm, 5, 7).num_layers(2).bidirectional(true).proj_size(3).build().unwrap();
    let first = Params::<f32>::init_uniform(&cfg, 11).unwrap();
    let second = Params::<f32>::init_uniform(&cfg, 12).unwrap();
    fn check<B: Backend<f32, Buf = [f32]>>(backend: B, first: &Params<f32>, second: &Params<f32>) {
        let mut rnn = Rnn::from_params(backend, first).unwrap();
        assert_eq!(rnn.params().unwrap().as_slice(), first.as_slice());
        rnn.update_params(second.as_slice()).unwrap();
        assert_eq!(rnn.params().unwrap().as_slice(), second.as_slice());
        let mut short = vec![0.0; second.as_slice().len() - 1];
        let err = rnn.backend().read_params(rnn.plan(), &mut short).unwrap_err().to_string();
        assert!(err.contains("params"), "{err}");
    }
    check(Reference, &first, &second);
    for isa in Isa::available() {
        check(Cpu::with_isa(isa, 2).unwrap(), &first, &second);
    }
}
