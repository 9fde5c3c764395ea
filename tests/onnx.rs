//! ONNX import (`rnn_kernels::onnx`) against onnxruntime, and its conversions on their own.
//!
//! - Every model in `tests/fixtures/onnx/` (written with onnxruntime's outputs by
//!   `tests/fixtures/make_onnx_cases.py`) is imported; its configuration must equal the one of
//!   its case file and its parameters must be bit-identical to the ones the script converted
//!   (independently, in numpy); then the f64 reference (on the f32 weights, exactly widened) must
//!   match onnxruntime's `y`, `hn`, `cn` within 1e-5 and the CPU backend within 1e-4, in the
//!   metric of `docs/case-format.md`. onnxruntime computes these operators in f32 only; its own
//!   rounding on these small cases is a few 1e-7 (measured with the plain cells), hence 1e-5. No
//!   case is skipped: an option a backend does not implement fails the test with the
//!   `Unsupported` error naming it.
//! - A hand-built model (its protobuf written here, not by the importer's decoder) whose weights
//!   are tagged by gate shows every permutation and every attribute mapping.
//! - Bad models: unsupported activations and attributes, weights that are not initializers,
//!   wrong dims, external data, truncated files are errors naming what is wrong.

use rnn_kernels::onnx::{self, OnnxStack};
use rnn_kernels::testkit::case::{run_case, Case};
use rnn_kernels::{Backend, CellKind, Cpu, Direction, Element, Reference};
use std::path::{Path, PathBuf};

const REFERENCE_TOL: f64 = 1e-5;
const CPU_TOL: f64 = 1e-4;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx");
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    v.sort();
    assert!(v.len() >= 20, "expected the committed models in {}, found {}", dir.display(), v.len());
    v
}

/// Imports `model`, checks it against its case file, and runs the case on `backend` with the
/// imported parameters. The error says what failed.
fn check_model<T: Element, B: Backend<T, Buf = [T]>>(backend: &B, model: &Path, tol: f64) -> Result<String, String> {
    let stack: OnnxStack<T> = onnx::load_stack(model).map_err(|e| format!("import: {e}"))?;
    if stack.layers.len() == 1 {
        let one = onnx::load_node::<T>(model, None).map_err(|e| format!("load_node: {e}"))?;
        assert_eq!(one.config, stack.config);
        assert_eq!(one.params.as_slice(), stack.params.as_slice());
    }
    let mut case = Case::<T>::load(model.with_extension("safetensors")).map_err(|e| format!("case: {e}"))?;
    if stack.config != case.config {
        return Err(format!("imported configuration {:?} differs from the case's {:?}", stack.config, case.config));
    }
    if let Some(spec) =
        case.params.layout().specs().iter().find(|s| stack.params.as_slice()[s.range()] != case.params.as_slice()[s.range()])
    {
        return Err(format!("imported {} differs from the one converted by make_onnx_cases.py", spec.name));
    }
    assert!(case.forward_only(), "onnxruntime's cases have no gradients");
    case.params = stack.params;
    let report = run_case(backend, &case).map_err(|e| format!("run: {e}"))?;
    // Forward-only: the forward outputs compared, no backward run.
    assert!(report.forward_only);
    let names: Vec<&str> = report.errors.iter().map(|(n, _)| n.as_str()).collect();
    let lstm = case.config.cell() == CellKind::Lstm;
    let want: &[&str] = if lstm {
        &["y", "hn", "cn", "y (inference)", "hn (inference)", "cn (inference)"]
    } else {
        &["y", "hn", "y (inference)", "hn (inference)"]
    };
    assert_eq!(names, want);
    let (worst, err) = report.worst();
    let line = format!("max error {err:.2e} in {worst}");
    if report.passes(tol) {
        Ok(line)
    } else {
        Err(format!("{line}, over {tol:.0e}"))
    }
}

fn check_all<T: Element, B: Backend<T, Buf = [T]>>(backend: &B, label: &str, tol: f64) {
    let mut failed = vec![];
    for m in fixtures() {
        let name = m.file_stem().unwrap().to_string_lossy().into_owned();
        match check_model(backend, &m, tol) {
            Ok(line) => eprintln!("{name} {label}: {line}"),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    assert!(failed.is_empty(), "{label}: {} model(s) failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn reference_matches_onnxruntime_on_every_committed_model() {
    check_all::<f64, _>(&Reference, "reference-f64", REFERENCE_TOL);
}

#[test]
fn cpu_matches_onnxruntime_on_every_committed_model() {
    let cpu = Cpu::new().unwrap();
    check_all::<f32, _>(&cpu, &format!("cpu-{}", cpu.isa()), CPU_TOL);
}

#[test]
fn pytorch_cases_are_not_forward_only() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lstm_l1_uni.safetensors");
    let case = Case::<f64>::load(f).unwrap();
    assert!(!case.forward_only());
    assert_eq!(case.expected_dtype, Some(rnn_kernels::Dtype::F64));
    let report = run_case(&Reference, &case).unwrap();
    assert!(!report.forward_only && report.errors.iter().any(|(n, _)| n == "dx"));
}

#[test]
fn the_committed_models_cover_the_onnx_options() {
    let configs: Vec<_> = fixtures().iter().map(|m| onnx::load_stack::<f32>(m).unwrap().config).collect();
    let has = |f: &dyn Fn(&rnn_kernels::RnnConfig) -> bool| configs.iter().any(f);
    assert!(has(&|c| c.peephole() && c.gate_clip().is_some() && c.input_forget() && c.bidirectional() && c.cell() == CellKind::Lstm));
    assert!(has(&|c| c.cell() == CellKind::Gru && !c.linear_before_reset() && c.gate_clip().is_some()));
    assert!(has(&|c| c.cell() == CellKind::Gru && c.linear_before_reset()));
    assert!(has(&|c| c.cell() == CellKind::Gru && c.direction() == Direction::Reverse));
    assert!(has(&|c| c.cell() == CellKind::Lstm && c.direction() == Direction::Reverse));
    assert!(has(&|c| c.cell() == CellKind::RnnTanh && c.gate_clip().is_some()));
    assert!(has(&|c| c.cell() == CellKind::RnnRelu && c.gate_clip().is_some()));
    assert!(has(&|c| c.batch_first()));
    assert!(has(&|c| c.num_layers() == 2 && c.cell() == CellKind::Lstm && c.bidirectional()));
    assert!(has(&|c| c.num_layers() == 2 && c.cell() == CellKind::Gru));
    let varlen =
        fixtures().iter().filter(|m| Case::<f32>::load(m.with_extension("safetensors")).is_ok_and(|c| c.shape.is_varlen())).count();
    assert!(varlen >= 3, "{varlen} variable-length cases");
}

// ---------------------------------------------------------------------------------------------
// A protobuf writer for hand-built models: the wire format (varints, length-delimited fields,
// 32-bit floats), independent of the importer's decoder.

#[derive(Default, Clone)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }
    fn int(mut self, field: u64, v: i64) -> Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }
    fn float(mut self, field: u64, v: f32) -> Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, field: u64, b: &[u8]) -> Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, field: u64, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(self, field: u64, m: &Pb) -> Self {
        self.bytes(field, &m.0)
    }
}

/// `TensorProto` FLOAT with `raw_data`.
fn tensor(name: &str, dims: &[i64], values: &[f32]) -> Pb {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    dims.iter().fold(Pb::default(), |p, &d| p.int(1, d)).int(2, 1).str(8, name).bytes(9, &raw)
}

enum Attr<'a> {
    Int(i64),
    Float(f32),
    Str(&'a str),
    Strs(&'a [&'a str]),
    Floats(&'a [f32]),
}

fn attribute(name: &str, a: &Attr) -> Pb {
    let p = Pb::default().str(1, name);
    match a {
        Attr::Int(i) => p.int(20, 2).int(3, *i),
        Attr::Float(f) => p.int(20, 1).float(2, *f),
        Attr::Str(s) => p.int(20, 3).str(4, s),
        Attr::Strs(v) => v.iter().fold(p.int(20, 8), |p, s| p.str(9, s)),
        Attr::Floats(v) => v.iter().fold(p.int(20, 6), |p, f| p.float(7, *f)),
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) -> Pb {
    let p = inputs.iter().fold(Pb::default(), |p, i| p.str(1, i));
    let p = outputs.iter().fold(p, |p, o| p.str(2, o)).str(3, name).str(4, op);
    attrs.iter().fold(p, |p, (n, a)| p.msg(5, &attribute(n, a)))
}

/// A `ModelProto` (IR 8, opset 14) with `nodes`, `initializers` and graph inputs `inputs`.
fn model(nodes: &[Pb], initializers: &[Pb], inputs: &[&str]) -> Vec<u8> {
    let g = nodes.iter().fold(Pb::default(), |g, n| g.msg(1, n)).str(2, "g");
    let g = initializers.iter().fold(g, |g, t| g.msg(5, t));
    let g = inputs.iter().fold(g, |g, i| g.msg(11, &Pb::default().str(1, i)));
    let opset = Pb::default().str(1, "").int(2, 14);
    Pb::default().int(1, 8).msg(8, &opset).msg(7, &g).0
}

/// One tagged LSTM direction with H = 1, I = 1: ONNX's gate blocks i, o, f, c hold 1, 2, 3, 4
/// (W), 10..40 (R), 100..103 and 200..203 (B), P's rows i, o, f hold 7, 8, 9; `off` is added
/// to every value of the second direction.
fn tagged_lstm(dirs: usize) -> Vec<Pb> {
    let per = |base: &[f32]| -> Vec<f32> { (0..dirs).flat_map(|d| base.iter().map(move |v| v + 1000.0 * d as f32)).collect() };
    let d = dirs as i64;
    vec![
        tensor("W", &[d, 4, 1], &per(&[1.0, 2.0, 3.0, 4.0])),
        tensor("R", &[d, 4, 1], &per(&[10.0, 20.0, 30.0, 40.0])),
        tensor("B", &[d, 8], &per(&[100.0, 101.0, 102.0, 103.0, 200.0, 201.0, 202.0, 203.0])),
        tensor("P", &[d, 3], &per(&[7.0, 8.0, 9.0])),
    ]
}

#[test]
fn lstm_gates_and_peepholes_are_reordered_and_attributes_mapped() {
    let n = node(
        "LSTM",
        "l",
        &["X", "W", "R", "B", "", "h0", "c0", "P"],
        &["Y", "Y_h", "Y_c"],
        &[
            ("hidden_size", Attr::Int(1)),
            ("direction", Attr::Str("bidirectional")),
            ("clip", Attr::Float(0.5)),
            ("input_forget", Attr::Int(1)),
            ("layout", Attr::Int(1)),
            ("activations", Attr::Strs(&["Sigmoid", "Tanh", "Tanh", "sigmoid", "tanh", "tanh"])),
        ],
    );
    let bytes = model(&[n], &tagged_lstm(2), &["X", "h0", "c0"]);
    let m = onnx::load_node_from_bytes::<f64>(&bytes, "<tagged>", None).unwrap();
    let c = &m.config;
    assert_eq!((c.cell(), c.input_size(), c.hidden_size(), c.num_layers()), (CellKind::Lstm, 1, 1, 1));
    assert_eq!(c.direction(), Direction::Bidirectional);
    assert_eq!(c.gate_clip(), Some(0.5));
    assert!(c.input_forget() && c.peephole() && c.batch_first() && c.bias());
    let p = &m.params;
    // ours i, f, g, o <- ONNX i, o, f, c
    assert_eq!(p.get("weight_ih_l0").unwrap(), [1.0, 3.0, 4.0, 2.0]);
    assert_eq!(p.get("weight_hh_l0").unwrap(), [10.0, 30.0, 40.0, 20.0]);
    assert_eq!(p.get("bias_ih_l0").unwrap(), [100.0, 102.0, 103.0, 101.0]);
    assert_eq!(p.get("bias_hh_l0").unwrap(), [200.0, 202.0, 203.0, 201.0]);
    // ours i, f, o <- ONNX i, o, f
    assert_eq!(p.get("weight_peephole_l0").unwrap(), [7.0, 9.0, 8.0]);
    // ONNX's direction 1 is our reverse direction.
    assert_eq!(p.get("weight_ih_l0_reverse").unwrap(), [1001.0, 1003.0, 1004.0, 1002.0]);
    assert_eq!(p.get("weight_peephole_l0_reverse").unwrap(), [1007.0, 1009.0, 1008.0]);
    assert_eq!(p.get("bias_hh_l0_reverse").unwrap(), [1200.0, 1202.0, 1203.0, 1201.0]);
    assert_eq!(
        (m.x.as_str(), m.initial_h.as_deref(), m.initial_c.as_deref(), m.sequence_lens.as_deref()),
        ("X", Some("h0"), Some("c0"), None)
    );
    assert_eq!((m.y.as_deref(), m.y_h.as_deref(), m.y_c.as_deref()), (Some("Y"), Some("Y_h"), Some("Y_c")));
}

#[test]
fn gru_gates_are_reordered_and_linear_before_reset_defaults_to_cho() {
    let w = tensor("W", &[1, 3, 1], &[1.0, 2.0, 3.0]); // z, r, h
    let r = tensor("R", &[1, 3, 1], &[10.0, 20.0, 30.0]);
    let b = tensor("B", &[1, 6], &[100.0, 101.0, 102.0, 200.0, 201.0, 202.0]);
    for (lbr, want) in [(None, false), (Some(0), false), (Some(1), true)] {
        let mut attrs = vec![("hidden_size", Attr::Int(1)), ("direction", Attr::Str("reverse"))];
        if let Some(v) = lbr {
            attrs.push(("linear_before_reset", Attr::Int(v)));
        }
        let n = node("GRU", "g", &["X", "W", "R", "B", "len"], &["", "Y_h"], &attrs);
        let bytes = model(&[n], &[w.clone(), r.clone(), b.clone()], &["X", "len"]);
        let m = onnx::load_node_from_bytes::<f32>(&bytes, "<gru>", Some("g")).unwrap();
        assert_eq!(m.config.cell(), CellKind::Gru);
        assert_eq!(m.config.linear_before_reset(), want, "linear_before_reset {lbr:?}");
        assert_eq!(m.config.direction(), Direction::Reverse);
        assert_eq!(m.config.num_directions(), 1);
        // ours r, z, n <- ONNX z, r, h; a reverse-only node keeps the unsuffixed names.
        assert_eq!(m.params.get("weight_ih_l0").unwrap(), [2.0, 1.0, 3.0]);
        assert_eq!(m.params.get("weight_hh_l0").unwrap(), [20.0, 10.0, 30.0]);
        assert_eq!(m.params.get("bias_ih_l0").unwrap(), [101.0, 100.0, 102.0]);
        assert_eq!(m.params.get("bias_hh_l0").unwrap(), [201.0, 200.0, 202.0]);
        assert_eq!((m.sequence_lens.as_deref(), m.y.as_deref(), m.y_h.as_deref()), (Some("len"), None, Some("Y_h")));
    }
}

#[test]
fn rnn_activations_pick_the_cell_and_a_missing_bias_is_no_bias() {
    let w = tensor("W", &[1, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let r = tensor("R", &[1, 2, 2], &[7.0, 8.0, 9.0, 10.0]);
    for (act, cell) in [(None, CellKind::RnnTanh), (Some(&["Tanh"]), CellKind::RnnTanh), (Some(&["Relu"]), CellKind::RnnRelu)] {
        let mut attrs = vec![("hidden_size", Attr::Int(2))];
        if let Some(a) = act {
            attrs.push(("activations", Attr::Strs(a)));
        }
        let bytes = model(&[node("RNN", "r", &["X", "W", "R"], &["Y"], &attrs)], &[w.clone(), r.clone()], &["X"]);
        let m = onnx::load_node_from_bytes::<f32>(&bytes, "<rnn>", None).unwrap();
        assert_eq!(m.config.cell(), cell);
        assert!(!m.config.bias());
        assert_eq!((m.config.input_size(), m.config.hidden_size()), (3, 2));
        assert_eq!(m.params.get("weight_ih_l0").unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(m.params.get("weight_hh_l0").unwrap(), [7.0, 8.0, 9.0, 10.0]);
    }
    // Without hidden_size, R's last dimension gives it.
    let bytes = model(&[node("RNN", "r", &["X", "W", "R"], &["Y"], &[])], &[w, r], &["X"]);
    assert_eq!(onnx::load_node_from_bytes::<f32>(&bytes, "<rnn>", None).unwrap().config.hidden_size(), 2);
}

/// The error of importing `bytes`, as text; it must name every one of `words`.
fn import_error(bytes: &[u8], words: &[&str]) -> String {
    let e = onnx::load_node_from_bytes::<f32>(bytes, "<bad>", None).expect_err("a bad model must not import").to_string();
    for w in words {
        assert!(e.contains(w), "the error does not name {w:?}: {e}");
    }
    assert!(e.contains("<bad>"), "the error does not name the file: {e}");
    e
}

fn lstm_with(attrs: &[(&str, Attr)]) -> Vec<u8> {
    let mut all = vec![];
    if !attrs.iter().any(|(n, _)| *n == "hidden_size") {
        all.push(("hidden_size", Attr::Int(1)));
    }
    all.extend(attrs.iter().map(|(n, a)| {
        (
            *n,
            match a {
                Attr::Int(i) => Attr::Int(*i),
                Attr::Float(f) => Attr::Float(*f),
                Attr::Str(s) => Attr::Str(s),
                Attr::Strs(v) => Attr::Strs(v),
                Attr::Floats(v) => Attr::Floats(v),
            },
        )
    }));
    model(&[node("LSTM", "l", &["X", "W", "R", "B"], &["Y"], &all)], &tagged_lstm(1)[..3], &["X"])
}

#[test]
fn nodes_the_library_cannot_run_are_errors_naming_the_attribute() {
    import_error(&lstm_with(&[("activations", Attr::Strs(&["Sigmoid", "Tanh", "Relu"]))]), &["activations", "Relu"]);
    import_error(&lstm_with(&[("activations", Attr::Strs(&["HardSigmoid", "Tanh", "Tanh"]))]), &["activations", "HardSigmoid"]);
    import_error(&lstm_with(&[("activations", Attr::Strs(&["Sigmoid", "Tanh"]))]), &["activations", "3 names per direction"]);
    import_error(&lstm_with(&[("activation_alpha", Attr::Floats(&[0.5]))]), &["activation_alpha", "0.5"]);
    import_error(&lstm_with(&[("activation_beta", Attr::Floats(&[0.5]))]), &["activation_beta"]);
    import_error(&lstm_with(&[("linear_before_reset", Attr::Int(1))]), &["linear_before_reset", "LSTM"]);
    import_error(&lstm_with(&[("unknown_thing", Attr::Int(1))]), &["unknown_thing"]);
    import_error(&lstm_with(&[("direction", Attr::Str("sideways"))]), &["direction", "sideways"]);
    import_error(&lstm_with(&[("clip", Attr::Float(-1.0))]), &["clip", "-1"]);
    import_error(&lstm_with(&[("input_forget", Attr::Int(2))]), &["input_forget", "0 or 1", "2"]);
    import_error(&lstm_with(&[("layout", Attr::Int(1)), ("layout", Attr::Int(0))]), &["layout", "more than once"]);
    import_error(&lstm_with(&[("hidden_size", Attr::Str("one"))]), &["hidden_size", "INT"]);
    // An RNN's two directions with different activations.
    let w = tensor("W", &[2, 1, 1], &[1.0, 2.0]);
    let r = tensor("R", &[2, 1, 1], &[1.0, 2.0]);
    let n = node(
        "RNN",
        "r",
        &["X", "W", "R"],
        &["Y"],
        &[("direction", Attr::Str("bidirectional")), ("activations", Attr::Strs(&["Tanh", "Relu"]))],
    );
    import_error(&model(&[n], &[w, r], &["X"]), &["activations", "Tanh", "Relu"]);
}

#[test]
fn weights_must_be_initializers_of_the_right_dims() {
    let [w, r, b, _] = <[Pb; 4]>::try_from(tagged_lstm(1)).ok().unwrap();
    let lstm = |inputs: &[&str]| node("LSTM", "l", inputs, &["Y"], &[("hidden_size", Attr::Int(1))]);
    // R given at run time.
    import_error(&model(&[lstm(&["X", "W", "R"])], std::slice::from_ref(&w), &["X", "R"]), &["input R", "\"R\"", "graph input"]);
    // R computed by another node.
    let c = node("Constant", "k", &[], &["R"], &[]);
    import_error(&model(&[c, lstm(&["X", "W", "R"])], std::slice::from_ref(&w), &["X"]), &["input R", "output of node", "Constant"]);
    // R nowhere.
    import_error(&model(&[lstm(&["X", "W", "Rx"])], &[w.clone(), r.clone()], &["X"]), &["input R", "\"Rx\"", "no initializer"]);
    // W missing altogether.
    import_error(&model(&[lstm(&["X"])], &[], &["X"]), &["input W", "absent"]);
    // Dims that do not match the data.
    let short = tensor("W", &[1, 4, 2], &[1.0, 2.0, 3.0, 4.0]);
    import_error(&model(&[lstm(&["X", "W", "R"])], &[short, r.clone()], &["X"]), &["W", "8 values", "4 values"]);
    // Dims that do not match hidden_size.
    let wide = tensor("W", &[1, 8, 1], &[0.0; 8]);
    import_error(&model(&[lstm(&["X", "W", "R"])], &[wide, r.clone()], &["X"]), &["W", "[D, G·H, I] = [1, 4, I]", "[1, 8, 1]"]);
    let bad_b = tensor("B", &[1, 4], &[0.0; 4]);
    import_error(&model(&[lstm(&["X", "W", "R", "B"])], &[w.clone(), r.clone(), bad_b], &["X"]), &["B", "[1, 8]", "[1, 4]"]);
    let bad_p = tensor("P", &[1, 2], &[0.0; 2]);
    import_error(
        &model(&[lstm(&["X", "W", "R", "B", "", "", "", "P"])], &[w.clone(), r.clone(), b.clone(), bad_p], &["X"]),
        &["P", "[1, 3]", "[1, 2]"],
    );
    // Negative and overflowing dims.
    let neg = Pb::default().int(1, 1).int(1, -4).int(1, 1).int(2, 1).str(8, "W");
    import_error(&model(&[lstm(&["X", "W", "R"])], &[neg, r.clone()], &["X"]), &["dims of W", "-4"]);
    let huge = Pb::default().int(1, 1 << 40).int(1, 1 << 40).int(1, 1 << 40).int(2, 1).str(8, "W");
    import_error(&model(&[lstm(&["X", "W", "R"])], &[huge, r.clone()], &["X"]), &["dims of W"]);
    // Another element type, external data.
    let ints = Pb::default().int(1, 1).int(1, 4).int(1, 1).int(2, 7).str(8, "W");
    import_error(&model(&[lstm(&["X", "W", "R"])], &[ints, r.clone()], &["X"]), &["data_type of W", "7"]);
    let ext = Pb::default()
        .int(1, 1)
        .int(1, 4)
        .int(1, 1)
        .int(2, 1)
        .str(8, "W")
        .msg(13, &Pb::default().str(1, "location").str(2, "w.bin"))
        .int(14, 1);
    import_error(&model(&[lstm(&["X", "W", "R"])], &[ext, r.clone()], &["X"]), &["W", "external data", "w.bin"]);
    // float_data instead of raw_data is read too.
    let typed =
        [1.0f32, 2.0, 3.0, 4.0].iter().fold(Pb::default().int(1, 1).int(1, 4).int(1, 1).int(2, 1).str(8, "W"), |p, v| p.float(4, *v));
    let m = onnx::load_node_from_bytes::<f32>(&model(&[lstm(&["X", "W", "R"])], &[typed, r], &["X"]), "<typed>", None).unwrap();
    assert_eq!(m.params.get("weight_ih_l0").unwrap(), [1.0, 3.0, 4.0, 2.0]);
}

#[test]
fn bad_files_are_errors_not_panics() {
    let good = std::fs::read(fixtures().into_iter().find(|p| p.ends_with("lstm_all.onnx")).unwrap()).unwrap();
    onnx::load_node_from_bytes::<f32>(&good, "<good>", None).unwrap();
    // Every truncation: an error (the decoder sees a field cut short) or, where the cut falls
    // between fields, a model missing what the node needs; never a panic.
    for n in 0..good.len() {
        let _ = onnx::load_node_from_bytes::<f32>(&good[..n], "<cut>", None);
        let _ = onnx::list_nodes_from_bytes(&good[..n], "<cut>");
    }
    import_error(&good[..good.len() / 2], &["model"]);
    import_error(b"not a protobuf at all \xff\xff\xff", &["model", "ONNX ModelProto"]);
    import_error(&[], &["model.graph"]);
    // A length prefix far beyond the file.
    import_error(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f], &["model"]);
    // Every single-byte change of a good file: no panic.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0xa5;
        let _ = onnx::load_node_from_bytes::<f32>(&b, "<flip>", None);
    }
}

#[test]
fn nodes_are_listed_and_chosen_by_name() {
    let stack = fixtures().into_iter().find(|p| p.ends_with("lstm_stack2_bidirectional.onnx")).unwrap();
    let nodes = onnx::list_nodes(&stack).unwrap();
    assert_eq!(nodes.iter().map(|n| (n.name.as_str(), n.op_type.as_str())).collect::<Vec<_>>(), [("lstm_0", "LSTM"), ("lstm_1", "LSTM")]);
    let e = onnx::load_node::<f32>(&stack, None).unwrap_err().to_string();
    assert!(e.contains("several") && e.contains("lstm_0") && e.contains("lstm_1"), "{e}");
    let e = onnx::load_node::<f32>(&stack, Some("nope")).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("lstm_0"), "{e}");
    let second = onnx::load_node::<f32>(&stack, Some("lstm_1")).unwrap();
    assert_eq!(second.config.input_size(), 2 * second.config.hidden_size());
    let s = onnx::load_stack::<f32>(&stack).unwrap();
    assert_eq!(s.config.num_layers(), 2);
    assert_eq!(s.params.get("weight_ih_l1_reverse").unwrap(), second.params.get("weight_ih_l0_reverse").unwrap());
    let e = onnx::load_node::<f32>(Path::new("no/such/model.onnx"), None).unwrap_err().to_string();
    assert!(e.contains("no/such/model.onnx"), "{e}");
}

#[test]
fn a_stack_must_be_a_chain_of_like_nodes() {
    let [w, r, b, _] = <[Pb; 4]>::try_from(tagged_lstm(1)).ok().unwrap();
    let w1 = tensor("W1", &[1, 4, 1], &[1.0, 2.0, 3.0, 4.0]);
    let r1 = tensor("R1", &[1, 4, 1], &[1.0, 2.0, 3.0, 4.0]);
    let b1 = tensor("B1", &[1, 8], &[0.0; 8]);
    let lstm = |name: &str, x: &str, wn: &str, y: &str, attrs: &[(&str, Attr)]| {
        let mut all = vec![("hidden_size", Attr::Int(1))];
        for (n, a) in attrs {
            all.push((n, if let Attr::Float(f) = a { Attr::Float(*f) } else { Attr::Int(0) }));
        }
        let (r, b) = if wn == "W" { ("R", "B") } else { ("R1", "B1") };
        node("LSTM", name, &[x, wn, r, b], &[y], &all)
    };
    let squeeze = node("Squeeze", "sq", &["Y0"], &["X1"], &[]);
    let inits = [w.clone(), w1.clone(), r.clone(), b.clone(), r1, b1];
    let ok = model(&[lstm("a", "X", "W", "Y0", &[]), squeeze.clone(), lstm("b", "X1", "W1", "Y1", &[])], &inits, &["X"]);
    assert_eq!(onnx::load_stack_from_bytes::<f32>(&ok, "<stack>").unwrap().config.num_layers(), 2);
    // Not chained: the second node reads the graph input.
    let parallel = model(&[lstm("a", "X", "W", "Y0", &[]), lstm("b", "X", "W1", "Y1", &[])], &inits, &["X"]);
    let e = onnx::load_stack_from_bytes::<f32>(&parallel, "<stack>").unwrap_err().to_string();
    assert!(e.contains("input X of node \"b\"") && e.contains("not"), "{e}");
    // Different attributes.
    let unlike = model(
        &[lstm("a", "X", "W", "Y0", &[]), squeeze.clone(), lstm("b", "X1", "W1", "Y1", &[("clip", Attr::Float(2.0))])],
        &inits,
        &["X"],
    );
    let e = onnx::load_stack_from_bytes::<f32>(&unlike, "<stack>").unwrap_err().to_string();
    assert!(e.contains("layer 1") && e.contains("gate_clip"), "{e}");
    // A transpose that is not [0, 2, 1, 3].
    let t = node("Transpose", "t", &["Y0"], &["X1"], &[]);
    let wrong = model(&[lstm("a", "X", "W", "Y0", &[]), t, lstm("b", "X1", "W1", "Y1", &[])], &inits, &["X"]);
    let e = onnx::load_stack_from_bytes::<f32>(&wrong, "<stack>").unwrap_err().to_string();
    assert!(e.contains("Transpose") && e.contains("perm"), "{e}");
    // Layers sharing an initializer.
    let shared =
        model(&[lstm("a", "X", "W", "Y0", &[]), squeeze, node("LSTM", "b", &["X1", "W1", "R", "B1"], &["Y1"], &[])], &inits, &["X"]);
    let e = onnx::load_stack_from_bytes::<f32>(&shared, "<stack>").unwrap_err().to_string();
    assert!(e.contains("initializer \"R\"") && e.contains("\"a\" and \"b\""), "{e}");
}
