//! ONNX import: the parameters and attributes of an ONNX `LSTM`, `GRU` or `RNN` node (opsets
//! 7 to 22 of the default domain) as an [`RnnConfig`] and [`Params`].
//!
//! ```no_run
//! use rnn_kernels::{onnx, Cpu, Rnn};
//! let node = onnx::load_node::<f32>("model.onnx", None)?; // the file's one recurrent node
//! let rnn = Rnn::<f32, _>::new(Cpu::new()?, &node.config, node.params.as_slice())?;
//! # Ok::<(), rnn_kernels::Error>(())
//! ```
//!
//! # What is read, and how it maps
//!
//! | ONNX | here |
//! | --- | --- |
//! | `LSTM`, `GRU`, `RNN` with `activations` `Tanh` (default) / `Relu` | [`CellKind::Lstm`], [`CellKind::Gru`], [`CellKind::RnnTanh`] / [`CellKind::RnnRelu`] |
//! | `hidden_size` (or, when absent, `R`'s last dimension) | `hidden_size`; `input_size` is `W`'s last dimension |
//! | `direction` `forward` / `reverse` / `bidirectional` | [`Direction`] (ONNX's direction 0 of `bidirectional` is the forward one, names without `_reverse`) |
//! | `clip` (> 0) | [`gate_clip`](crate::RnnConfigBuilder::gate_clip) |
//! | `input_forget` (LSTM) | [`input_forget`](crate::RnnConfigBuilder::input_forget) |
//! | `linear_before_reset` (GRU; ONNX's default 0 is Cho's GRU) | [`linear_before_reset`](crate::RnnConfigBuilder::linear_before_reset) `= (attribute != 0)` |
//! | `layout` (opset 14; 1 = batch-major `X`, `Y`) | [`batch_first`](crate::RnnConfigBuilder::batch_first) |
//! | `W [D, G·H, I]` | `weight_ih_l0[_reverse]` `[G·H, I]`, gate blocks reordered |
//! | `R [D, G·H, H]` | `weight_hh_l0[_reverse]` `[G·H, H]`, reordered |
//! | `B [D, 2·G·H]` (`Wb` then `Rb`) | `bias_ih_l0`, `bias_hh_l0`, reordered; **absent `B` gives `bias = false`** (the same function as ONNX's zeros, without zero tensors) |
//! | `P [D, 3·H]` (LSTM, rows `i, o, f`) | `weight_peephole_l0` `[3, H]`, rows `i, f, o` |
//!
//! Gate orders: ONNX's LSTM blocks are `i, o, f, c`, ours (PyTorch's) `i, f, g, o`; ONNX's GRU
//! blocks are `z, r, h`, ours `r, z, n`. The values are converted exactly to `f64`, then
//! rounded once to the element type asked for (`FLOAT`, `DOUBLE`, `FLOAT16` and `BFLOAT16`
//! initializers are read, from `raw_data` or the typed field).
//!
//! The node's `sequence_lens`, `initial_h`, `initial_c` are run-time inputs; their names are in
//! [`OnnxRnn`] (ONNX's `initial_h [D, B, H]` is our `h0 [D, B, H]` as it is with `layout = 0`;
//! with `layout = 1` ONNX has `[B, D, H]` and our states stay `[D, B, H]`; ONNX's
//! `Y [T, D, B, H]` is our `y [T, B, D·H]` after moving the `D` axis next to `H`).
//!
//! A two-layer (or deeper) stack in ONNX is a chain of nodes with a `Transpose` (perm
//! `[0, 2, 1, 3]`, time-major only) and a `Reshape` or `Squeeze` between them;
//! [`load_stack`] reads such a chain into one multi-layer configuration.
//!
//! # Errors
//!
//! Everything the library cannot run is an error, never ignored: another activation (naming
//! `activations` and the value), `activation_alpha`/`activation_beta`, an unknown attribute, a
//! weight that is a graph input or computed by another node rather than an initializer (naming
//! the input), tensors stored in external files or in segments. A file that is not a valid ONNX
//! model, or whose tensors' `dims` do not match their data or the node's attributes, is an error
//! naming the tensor or field, the expected and the given value. Nothing is allocated from an
//! unchecked field: protobuf lengths are checked against the file by the decoder, and every
//! tensor's element count against its data before it is converted, so reading a file allocates
//! at most a small multiple of its size.

mod proto;

use crate::config::{CellKind, Direction, RnnConfig};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::params::Params;
use prost::Message;
use proto::{attribute_type as at, data_type as dt, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use std::path::Path;

/// The operator types this importer reads.
pub const RECURRENT_OPS: [&str; 3] = ["LSTM", "GRU", "RNN"];

/// One recurrent node of a model, as listed by [`list_nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxNode {
    /// The node's `name` (may be empty).
    pub name: String,
    /// `LSTM`, `GRU` or `RNN`.
    pub op_type: String,
    /// Its position in the graph's node list.
    pub index: usize,
}

/// One imported node: the configuration, the parameters, and the names of its other inputs
/// and outputs in the graph (`None` where ONNX's optional input or output is absent).
#[derive(Debug, Clone)]
pub struct OnnxRnn<T = f32> {
    /// The node's name.
    pub node: String,
    /// `LSTM`, `GRU` or `RNN`.
    pub op_type: String,
    /// One layer, with the node's options.
    pub config: RnnConfig,
    /// The converted `W`, `R`, `B`, `P`.
    pub params: Params<T>,
    /// The input `X`.
    pub x: String,
    /// The optional input `sequence_lens` (`[B]`, int32): our per-sequence lengths.
    pub sequence_lens: Option<String>,
    /// The optional input `initial_h`: our `h0`.
    pub initial_h: Option<String>,
    /// The optional input `initial_c` (LSTM): our `c0`.
    pub initial_c: Option<String>,
    /// The optional output `Y`.
    pub y: Option<String>,
    /// The optional output `Y_h`: our `hn`.
    pub y_h: Option<String>,
    /// The optional output `Y_c` (LSTM): our `cn`.
    pub y_c: Option<String>,
}

/// A chain of recurrent nodes read as one layer stack by [`load_stack`].
#[derive(Debug, Clone)]
pub struct OnnxStack<T = f32> {
    /// `num_layers` = the number of nodes, with their common options.
    pub config: RnnConfig,
    /// Every layer's parameters, in the layout of `config`.
    pub params: Params<T>,
    /// The nodes, first layer first (each with its own one-layer configuration and parameters).
    pub layers: Vec<OnnxRnn<T>>,
}

/// The recurrent nodes (`LSTM`, `GRU`, `RNN` of the default domain) of an `.onnx` file, in
/// graph order.
pub fn list_nodes(path: impl AsRef<Path>) -> Result<Vec<OnnxNode>> {
    let (bytes, source) = read(path.as_ref())?;
    list_nodes_from_bytes(&bytes, &source)
}

/// [`list_nodes`] of a model in memory; `source` names it in errors.
pub fn list_nodes_from_bytes(bytes: &[u8], source: &str) -> Result<Vec<OnnxNode>> {
    let model = decode(bytes).map_err(|e| e.in_file(source))?;
    Ok(recurrent_nodes(graph(&model).map_err(|e| e.in_file(source))?))
}

/// Reads the recurrent node called `node` of an `.onnx` file, or, with `None`, the file's only
/// one (an error lists them when there are several). Values are converted to `T`.
pub fn load_node<T: Element>(path: impl AsRef<Path>, node: Option<&str>) -> Result<OnnxRnn<T>> {
    let (bytes, source) = read(path.as_ref())?;
    load_node_from_bytes(&bytes, &source, node)
}

/// [`load_node`] of a model in memory; `source` names it in errors.
pub fn load_node_from_bytes<T: Element>(bytes: &[u8], source: &str, node: Option<&str>) -> Result<OnnxRnn<T>> {
    let inner = || -> Result<OnnxRnn<T>> {
        let model = decode(bytes)?;
        let graph = graph(&model)?;
        let nodes = recurrent_nodes(graph);
        let chosen = match node {
            None => match nodes.as_slice() {
                [one] => one.index,
                [] => return Err(Error::invalid("node", "a file with an LSTM, GRU or RNN node", "none in the graph")),
                many => {
                    return Err(Error::invalid(
                        "node",
                        "a node name, since the file has several recurrent nodes",
                        format!("None; the nodes are {}", describe(many)),
                    ))
                }
            },
            Some(name) => match nodes.iter().filter(|n| n.name == name).collect::<Vec<_>>().as_slice() {
                [one] => one.index,
                [] => return Err(Error::invalid("node", format!("one of the recurrent nodes {}", describe(&nodes)), format!("{name:?}"))),
                _ => {
                    return Err(Error::invalid("node", "a name that only one recurrent node has", format!("{name:?}, which several have")))
                }
            },
        };
        convert(graph, &graph.node[chosen])
    };
    inner().map_err(|e| e.in_file(source))
}

/// Reads every recurrent node of an `.onnx` file as one layer stack: the nodes, in graph order,
/// must form a chain (each one's `X` computed from the previous one's `Y` through `Transpose`,
/// `Reshape`, `Squeeze` or `Identity` nodes only, a `Transpose` having perm `[0, 2, 1, 3]` and
/// only with `layout = 0`), of one operator with the same attributes and the same optional
/// `B`/`P`, and each one's input size the previous one's output size.
pub fn load_stack<T: Element>(path: impl AsRef<Path>) -> Result<OnnxStack<T>> {
    let (bytes, source) = read(path.as_ref())?;
    load_stack_from_bytes(&bytes, &source)
}

/// [`load_stack`] of a model in memory; `source` names it in errors.
pub fn load_stack_from_bytes<T: Element>(bytes: &[u8], source: &str) -> Result<OnnxStack<T>> {
    let inner = || -> Result<OnnxStack<T>> {
        let model = decode(bytes)?;
        let graph = graph(&model)?;
        let nodes = recurrent_nodes(graph);
        if nodes.is_empty() {
            return Err(Error::invalid("node", "a file with an LSTM, GRU or RNN node", "none in the graph"));
        }
        // Each layer has its own weights: a shared initializer would make the stack's parameters
        // a multiple of the file's size (and is no layer stack any framework exports).
        let mut owner: Vec<(&str, usize)> = vec![];
        for n in &nodes {
            let node = &graph.node[n.index];
            for w in [1, 2, 3, 7].iter().filter_map(|&k| node.input.get(k)).filter(|s| !s.is_empty()) {
                if let Some(&(_, other)) = owner.iter().find(|(o, by)| o == w && *by != n.index) {
                    return Err(Error::invalid(
                        format!("initializer {w:?}"),
                        "the weights of one layer of the stack",
                        format!("an input of the nodes {:?} and {:?}", graph.node[other].name, node.name),
                    ));
                }
                owner.push((w, n.index));
            }
        }
        let layers = nodes.iter().map(|n| convert::<T>(graph, &graph.node[n.index])).collect::<Result<Vec<_>>>()?;
        let first = &layers[0];
        let config = first.config.to_builder().num_layers(layers.len()).build()?;
        for (k, pair) in layers.windows(2).enumerate() {
            let (prev, next) = (&pair[0], &pair[1]);
            let name = |l: &OnnxRnn<T>| format!("node {:?} ({})", l.node, l.op_type);
            if summary(&next.config) != summary(&first.config) {
                return Err(Error::invalid(
                    format!("layer {} ({})", k + 1, name(next)),
                    format!("the operator, attributes and optional inputs of the first layer: {}", summary(&first.config)),
                    summary(&next.config),
                ));
            }
            if next.config.input_size() != config.output_size() {
                return Err(Error::shape(
                    format!("W of {}", name(next)),
                    format!("input size {} (the output width of the layer below)", config.output_size()),
                    format!("input size {}", next.config.input_size()),
                ));
            }
            check_chain(graph, prev, next, config.batch_first(), config.num_directions())?;
        }
        let mut params = Params::<T>::zeros(&config)?;
        for (k, l) in layers.iter().enumerate() {
            for d in 0..config.num_directions() {
                let (to, from) = (params.layout().layer(k, d).clone(), l.params.layout().layer(0, d).clone());
                let pairs = [
                    (Some(to.w_ih), Some(from.w_ih)),
                    (Some(to.w_hh), Some(from.w_hh)),
                    (to.b_ih, from.b_ih),
                    (to.b_hh, from.b_hh),
                    (to.w_hr, from.w_hr),
                    (to.peephole, from.peephole),
                ];
                for (t, f) in pairs {
                    if let (Some(t), Some(f)) = (t, f) {
                        params.as_mut_slice()[t].copy_from_slice(&l.params.as_slice()[f]);
                    }
                }
            }
        }
        Ok(OnnxStack { config, params, layers })
    };
    inner().map_err(|e| e.in_file(source))
}

fn read(path: &Path) -> Result<(Vec<u8>, String)> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: source.clone(), source: e })?;
    Ok((bytes, source))
}

fn decode(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::decode(bytes).map_err(|e| Error::invalid("model", "an ONNX ModelProto (protobuf)", format!("a decoding error: {e}")))
}

fn graph(model: &ModelProto) -> Result<&GraphProto> {
    model.graph.as_ref().ok_or_else(|| Error::invalid("model.graph", "a graph", "none"))
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

fn recurrent_nodes(graph: &GraphProto) -> Vec<OnnxNode> {
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_default_domain(&n.domain) && RECURRENT_OPS.contains(&n.op_type.as_str()))
        .map(|(index, n)| OnnxNode { name: n.name.clone(), op_type: n.op_type.clone(), index })
        .collect()
}

fn describe(nodes: &[OnnxNode]) -> String {
    let v: Vec<String> = nodes.iter().map(|n| format!("{:?} ({})", n.name, n.op_type)).collect();
    format!("[{}]", v.join(", "))
}

/// The cell, hidden size and options of a configuration in one line: what the layers of a
/// stack must share (and the error message says when they do not).
fn summary(c: &RnnConfig) -> String {
    format!(
        "{} hidden_size {} direction {} bias {} gate_clip {} options [{}]",
        c.cell(),
        c.hidden_size(),
        c.direction(),
        c.bias(),
        c.gate_clip().unwrap_or(0.0),
        c.options().join(", ")
    )
}

/// The attributes of a recurrent node, each checked for its type.
#[derive(Debug, Default)]
struct Attrs {
    hidden_size: Option<i64>,
    direction: Option<String>,
    clip: Option<f32>,
    input_forget: Option<i64>,
    linear_before_reset: Option<i64>,
    layout: Option<i64>,
    activations: Option<Vec<String>>,
}

/// Reads the node's attributes: every one must be one this operator has, of its type.
fn attrs(node: &NodeProto) -> Result<Attrs> {
    let mut a = Attrs::default();
    let op = node.op_type.as_str();
    let mut seen: Vec<&str> = vec![];
    for attr in &node.attribute {
        let name = attr.name.as_str();
        let arg = || format!("attribute `{name}`");
        if seen.contains(&name) {
            return Err(Error::invalid(arg(), "given once", "given more than once"));
        }
        seen.push(name);
        if !attr.ref_attr_name.is_empty() {
            return Err(Error::invalid(arg(), "a value", format!("a reference to the function attribute {:?}", attr.ref_attr_name)));
        }
        match (name, op) {
            ("hidden_size", _) => a.hidden_size = Some(int(attr)?),
            ("direction", _) => a.direction = Some(string(attr)?),
            ("clip", _) => a.clip = Some(float(attr)?),
            ("input_forget", "LSTM") => a.input_forget = Some(int(attr)?),
            ("linear_before_reset", "GRU") => a.linear_before_reset = Some(int(attr)?),
            ("layout", _) => a.layout = Some(int(attr)?),
            ("activations", _) => a.activations = Some(strings(attr)?),
            ("activation_alpha" | "activation_beta", _) => {
                let given = if attr.floats.is_empty() { format!("{}", attr.f) } else { format!("{:?}", attr.floats) };
                return Err(Error::Unsupported {
                    backend: "onnx import".into(),
                    option: name.into(),
                    reason: format!(
                        "the activations this library runs (Sigmoid, Tanh, Relu) take no alpha or beta; the node gives {given}"
                    ),
                });
            }
            _ => {
                return Err(Error::Unsupported {
                    backend: "onnx import".into(),
                    option: name.into(),
                    reason: format!("not an attribute of ONNX's {op} that this importer reads"),
                })
            }
        }
    }
    Ok(a)
}

fn check_type(attr: &AttributeProto, want: i32, word: &str) -> Result<()> {
    // Type 0 (UNDEFINED) is what files written before the field existed have.
    if attr.r#type == want || attr.r#type == 0 {
        Ok(())
    } else {
        Err(Error::invalid(format!("attribute `{}`", attr.name), format!("of type {word}"), format!("type {}", attr.r#type)))
    }
}

fn int(attr: &AttributeProto) -> Result<i64> {
    check_type(attr, at::INT, "INT")?;
    Ok(attr.i)
}

fn float(attr: &AttributeProto) -> Result<f32> {
    check_type(attr, at::FLOAT, "FLOAT")?;
    Ok(attr.f)
}

fn utf8(name: &str, s: &[u8]) -> Result<String> {
    String::from_utf8(s.to_vec()).map_err(|_| Error::invalid(format!("attribute `{name}`"), "UTF-8 text", format!("bytes {s:?}")))
}

fn string(attr: &AttributeProto) -> Result<String> {
    check_type(attr, at::STRING, "STRING")?;
    utf8(&attr.name, &attr.s)
}

fn strings(attr: &AttributeProto) -> Result<Vec<String>> {
    check_type(attr, at::STRINGS, "STRINGS")?;
    attr.strings.iter().map(|s| utf8(&attr.name, s)).collect()
}

/// A 0/1 flag attribute.
fn flag(name: &str, v: Option<i64>, default: bool) -> Result<bool> {
    match v {
        None => Ok(default),
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        Some(other) => Err(Error::invalid(format!("attribute `{name}`"), "0 or 1", other)),
    }
}

/// The cell of `op` with `activations` (ONNX's default when absent), or an error naming
/// `activations` and the value.
fn cell_of(op: &str, activations: Option<&[String]>, dirs: usize) -> Result<CellKind> {
    let (per_dir, default): (usize, &[&str]) = match op {
        "LSTM" => (3, &["sigmoid", "tanh", "tanh"]),
        "GRU" => (2, &["sigmoid", "tanh"]),
        _ => (1, &["tanh"]),
    };
    let Some(given) = activations else {
        return Ok(match op {
            "LSTM" => CellKind::Lstm,
            "GRU" => CellKind::Gru,
            _ => CellKind::RnnTanh,
        });
    };
    let unsupported = |reason: String| Error::Unsupported { backend: "onnx import".into(), option: "activations".into(), reason };
    // onnxruntime accepts one direction's list for both directions of a bidirectional node.
    if given.len() != per_dir && given.len() != per_dir * dirs {
        return Err(Error::invalid(
            "attribute `activations`",
            format!("{per_dir} names per direction ({} for {dirs} direction(s))", per_dir * dirs),
            format!("{given:?}"),
        ));
    }
    let lower: Vec<String> = given.iter().map(|s| s.to_ascii_lowercase()).collect();
    if op == "RNN" {
        let f = lower[0].as_str();
        if lower.iter().any(|g| g != f) {
            return Err(unsupported(format!("both directions must use the same activation, got {given:?}")));
        }
        return match f {
            "tanh" => Ok(CellKind::RnnTanh),
            "relu" => Ok(CellKind::RnnRelu),
            _ => Err(unsupported(format!("RNN runs Tanh or Relu, got {given:?}"))),
        };
    }
    if lower.chunks(per_dir).any(|c| c != default) {
        return Err(unsupported(format!("{op} runs only the default activations {default:?} (per direction), got {given:?}")));
    }
    Ok(if op == "LSTM" { CellKind::Lstm } else { CellKind::Gru })
}

/// A node input that must be a constant: the initializer of that name, or an error saying
/// what it is instead.
fn initializer<'g>(graph: &'g GraphProto, node: &NodeProto, role: &str, name: &str) -> Result<&'g TensorProto> {
    let arg = || format!("input {role} of node {:?} ({:?})", node.name, name);
    let mut found = graph.initializer.iter().filter(|t| t.name == name);
    if let Some(t) = found.next() {
        if found.next().is_some() {
            return Err(Error::invalid(arg(), "one initializer of that name", "several"));
        }
        return Ok(t);
    }
    if graph.input.iter().any(|i| i.name == name) {
        return Err(Error::invalid(
            arg(),
            "an initializer (the importer reads weights stored in the file)",
            "a graph input, given at run time: save the model with its weights as initializers",
        ));
    }
    if let Some(p) = graph.node.iter().find(|n| n.output.iter().any(|o| o == name)) {
        return Err(Error::invalid(
            arg(),
            "an initializer (the importer reads weights stored in the file)",
            format!("the output of node {:?} ({}): fold the constants of the model first", p.name, p.op_type),
        ));
    }
    Err(Error::invalid(arg(), "an initializer of the graph", "no initializer, input or node output of that name"))
}

/// The tensor's dims, checked: each at least 0, their product in `usize`.
fn dims(t: &TensorProto, what: &str) -> Result<(Vec<usize>, usize)> {
    let mut out = Vec::with_capacity(t.dims.len().min(8));
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| Error::invalid(format!("dims of {what}"), "sizes at least 0", format!("{:?}", t.dims)))?;
        n = n
            .checked_mul(d)
            .ok_or_else(|| Error::invalid(format!("dims of {what}"), "an element count that fits in memory", format!("{:?}", t.dims)))?;
        out.push(d);
    }
    Ok((out, n))
}

/// The values of a floating-point tensor, in row-major order, as `f64`; the data must hold
/// exactly the dims' element count.
fn values(t: &TensorProto, what: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    if t.data_location == proto::DATA_LOCATION_EXTERNAL || !t.external_data.is_empty() {
        let loc = t.external_data.iter().find(|e| e.key == "location").map_or("?", |e| e.value.as_str());
        return Err(Error::invalid(
            what,
            "values stored in the model file",
            format!("external data in {loc:?}: save the model with onnx.save(model, path, save_as_external_data=False)"),
        ));
    }
    if t.segment.is_some() {
        return Err(Error::invalid(what, "one whole tensor", "a segment of a tensor"));
    }
    let (shape, n) = dims(t, what)?;
    let count_err = |got: usize, field: &str| {
        Error::shape(what.to_string(), format!("{n} values for dims {:?}", t.dims), format!("{got} values in {field}"))
    };
    let raw = |size: usize| -> Result<&[u8]> {
        if !t.raw_data.len().is_multiple_of(size) || t.raw_data.len() / size != n {
            return Err(count_err(t.raw_data.len() / size, &format!("raw_data ({} bytes)", t.raw_data.len())));
        }
        Ok(&t.raw_data)
    };
    let has_raw = !t.raw_data.is_empty() || n == 0;
    let v: Vec<f64> = match t.data_type {
        dt::FLOAT if has_raw => raw(4)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
        dt::FLOAT => {
            if t.float_data.len() != n {
                return Err(count_err(t.float_data.len(), "float_data"));
            }
            t.float_data.iter().map(|&v| v as f64).collect()
        }
        dt::DOUBLE if has_raw => raw(8)?.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
        dt::DOUBLE => {
            if t.double_data.len() != n {
                return Err(count_err(t.double_data.len(), "double_data"));
            }
            t.double_data.clone()
        }
        dt::FLOAT16 | dt::BFLOAT16 => {
            let conv = |bits: u16| {
                if t.data_type == dt::FLOAT16 {
                    half::f16::from_bits(bits).to_f64()
                } else {
                    half::bf16::from_bits(bits).to_f64()
                }
            };
            if has_raw {
                raw(2)?.chunks_exact(2).map(|b| conv(u16::from_le_bytes([b[0], b[1]]))).collect()
            } else {
                // 16-bit values are stored one per int32_data entry, in its low 16 bits.
                if t.int32_data.len() != n {
                    return Err(count_err(t.int32_data.len(), "int32_data"));
                }
                t.int32_data.iter().map(|&v| conv(v as u16)).collect()
            }
        }
        other => {
            return Err(Error::invalid(format!("data_type of {what}"), "FLOAT (1), DOUBLE (11), FLOAT16 (10) or BFLOAT16 (16)", other))
        }
    };
    Ok((shape, v))
}

/// Our gate block `g` is ONNX's block `perm[g]`.
const LSTM_GATES: [usize; 4] = [0, 2, 3, 1]; // ours i f g o <- ONNX i o f c
const GRU_GATES: [usize; 3] = [1, 0, 2]; // ours r z n <- ONNX z r h
const RNN_GATES: [usize; 1] = [0];
const PEEPHOLE_ROWS: [usize; 3] = [0, 2, 1]; // ours i f o <- ONNX i o f

/// Copies the `[perm.len()·rows, cols]` matrix `src` (ONNX's block order) into `dst` in our
/// block order, rounding to `T`.
fn permute_blocks<T: Element>(dst: &mut [T], src: &[f64], perm: &[usize], rows: usize, cols: usize) {
    let block = rows * cols;
    for (g, &o) in perm.iter().enumerate() {
        for (d, s) in dst[g * block..(g + 1) * block].iter_mut().zip(&src[o * block..(o + 1) * block]) {
            *d = T::from_f64(*s);
        }
    }
}

fn convert<T: Element>(graph: &GraphProto, node: &NodeProto) -> Result<OnnxRnn<T>> {
    let op = node.op_type.as_str();
    let label = format!("node {:?} ({op})", node.name);
    let inner = || -> Result<OnnxRnn<T>> {
        let max_inputs = if op == "LSTM" { 8 } else { 6 };
        if node.input.len() > max_inputs {
            return Err(Error::invalid("inputs", format!("at most {max_inputs} for {op}"), node.input.len()));
        }
        let input = |k: usize| node.input.get(k).filter(|s| !s.is_empty()).cloned();
        let output = |k: usize| node.output.get(k).filter(|s| !s.is_empty()).cloned();
        let a = attrs(node)?;
        let direction = match a.direction.as_deref() {
            None | Some("forward") => Direction::Forward,
            Some("reverse") => Direction::Reverse,
            Some("bidirectional") => Direction::Bidirectional,
            Some(other) => return Err(Error::invalid("attribute `direction`", "forward, reverse or bidirectional", format!("{other:?}"))),
        };
        let dirs = if direction == Direction::Bidirectional { 2 } else { 1 };
        let cell = cell_of(op, a.activations.as_deref(), dirs)?;
        let gates = cell.gates();
        let clip = match a.clip {
            None => 0.0,
            Some(c) if c.is_finite() && c > 0.0 => c as f64,
            Some(c) => return Err(Error::invalid("attribute `clip`", "a finite number greater than 0", c)),
        };
        let input_forget = flag("input_forget", a.input_forget, false)?;
        // ONNX's default is 0: Cho's GRU, the reset gate applied before the recurrent matmul.
        let linear_before_reset = flag("linear_before_reset", a.linear_before_reset, false)?;
        let batch_first = flag("layout", a.layout, false)?;

        let x = input(0).ok_or_else(|| Error::invalid("input X", "present", "absent"))?;
        let w_name = input(1).ok_or_else(|| Error::invalid("input W", "present", "absent"))?;
        let r_name = input(2).ok_or_else(|| Error::invalid("input R", "present", "absent"))?;
        let (w_shape, w) = values(initializer(graph, node, "W", &w_name)?, &format!("W ({w_name:?})"))?;
        let (r_shape, r) = values(initializer(graph, node, "R", &r_name)?, &format!("R ({r_name:?})"))?;
        if r_shape.len() != 3 {
            return Err(Error::shape(format!("R ({r_name:?})"), "rank 3, [D, G·H, H]", format!("{r_shape:?}")));
        }
        let hidden = match a.hidden_size {
            None => r_shape[2],
            Some(h) => {
                usize::try_from(h).ok().filter(|&h| h > 0).ok_or_else(|| Error::invalid("attribute `hidden_size`", "at least 1", h))?
            }
        };
        let gh =
            gates.checked_mul(hidden).ok_or_else(|| Error::invalid("attribute `hidden_size`", "a size that fits in memory", hidden))?;
        if w_shape.len() != 3 || w_shape[0] != dirs || w_shape[1] != gh {
            return Err(Error::shape(format!("W ({w_name:?})"), format!("[D, G·H, I] = [{dirs}, {gh}, I]"), format!("{w_shape:?}")));
        }
        let input_size = w_shape[2];
        if r_shape != [dirs, gh, hidden] {
            return Err(Error::shape(format!("R ({r_name:?})"), format!("[D, G·H, H] = {:?}", [dirs, gh, hidden]), format!("{r_shape:?}")));
        }
        let b = match input(3) {
            None => None,
            Some(name) => {
                let (shape, v) = values(initializer(graph, node, "B", &name)?, &format!("B ({name:?})"))?;
                if shape != [dirs, 2 * gh] {
                    return Err(Error::shape(format!("B ({name:?})"), format!("[D, 2·G·H] = {:?}", [dirs, 2 * gh]), format!("{shape:?}")));
                }
                Some(v)
            }
        };
        let p = match input(7) {
            None => None,
            Some(name) => {
                let (shape, v) = values(initializer(graph, node, "P", &name)?, &format!("P ({name:?})"))?;
                if shape != [dirs, 3 * hidden] {
                    return Err(Error::shape(
                        format!("P ({name:?})"),
                        format!("[D, 3·H] = {:?}", [dirs, 3 * hidden]),
                        format!("{shape:?}"),
                    ));
                }
                Some(v)
            }
        };
        let config = RnnConfig::new(cell, input_size, hidden)
            .direction(direction)
            .bias(b.is_some())
            .peephole(p.is_some())
            .gate_clip(clip)
            .input_forget(input_forget)
            .linear_before_reset(cell != CellKind::Gru || linear_before_reset)
            .batch_first(batch_first)
            .build()?;
        let perm: &[usize] = match cell {
            CellKind::Lstm => &LSTM_GATES,
            CellKind::Gru => &GRU_GATES,
            _ => &RNN_GATES,
        };
        let mut params = Params::<T>::zeros(&config)?;
        for d in 0..dirs {
            let ranges = params.layout().layer(0, d).clone();
            let data = params.as_mut_slice();
            permute_blocks(&mut data[ranges.w_ih], &w[d * gh * input_size..(d + 1) * gh * input_size], perm, hidden, input_size);
            permute_blocks(&mut data[ranges.w_hh], &r[d * gh * hidden..(d + 1) * gh * hidden], perm, hidden, hidden);
            if let (Some(b), Some(bi), Some(bh)) = (&b, ranges.b_ih, ranges.b_hh) {
                let bd = &b[d * 2 * gh..(d + 1) * 2 * gh];
                permute_blocks(&mut data[bi], &bd[..gh], perm, hidden, 1);
                permute_blocks(&mut data[bh], &bd[gh..], perm, hidden, 1);
            }
            if let (Some(p), Some(pr)) = (&p, ranges.peephole) {
                permute_blocks(&mut data[pr], &p[d * 3 * hidden..(d + 1) * 3 * hidden], &PEEPHOLE_ROWS, hidden, 1);
            }
        }
        Ok(OnnxRnn {
            node: node.name.clone(),
            op_type: op.to_string(),
            config,
            params,
            x,
            sequence_lens: input(4),
            initial_h: input(5),
            initial_c: if op == "LSTM" { input(6) } else { None },
            y: output(0),
            y_h: output(1),
            y_c: if op == "LSTM" { output(2) } else { None },
        })
    };
    inner().map_err(|e| match e {
        Error::InvalidArgument { arg, expected, got } => Error::InvalidArgument { arg: format!("{label}: {arg}"), expected, got },
        Error::Shape { arg, expected, got } => Error::Shape { arg: format!("{label}: {arg}"), expected, got },
        Error::Unsupported { backend, option, reason } => Error::Unsupported { backend, option, reason: format!("{label}: {reason}") },
        other => other,
    })
}

/// The ops allowed between two chained recurrent nodes.
const GLUE_OPS: [&str; 4] = ["Transpose", "Reshape", "Squeeze", "Identity"];

/// Checks that `next`'s `X` is computed from `prev`'s `Y` through glue ops only.
fn check_chain<T>(graph: &GraphProto, prev: &OnnxRnn<T>, next: &OnnxRnn<T>, batch_first: bool, dirs: usize) -> Result<()> {
    let arg = || format!("input X of node {:?}", next.node);
    let Some(y) = &prev.y else {
        return Err(Error::invalid(arg(), format!("computed from output Y of node {:?}", prev.node), "that node has no output Y"));
    };
    // Names reachable from `y` through glue, with whether a transpose was on the way.
    let mut reach: Vec<(String, bool)> = vec![(y.clone(), false)];
    for n in &graph.node {
        if !is_default_domain(&n.domain) || !GLUE_OPS.contains(&n.op_type.as_str()) {
            continue;
        }
        let Some(from) = n.input.first().and_then(|i| reach.iter().find(|(r, _)| r == i)).cloned() else { continue };
        let mut transposed = from.1;
        if n.op_type == "Transpose" {
            let perm = n.attribute.iter().find(|a| a.name == "perm").map(|a| a.ints.clone()).unwrap_or_default();
            if batch_first || perm != [0, 2, 1, 3] {
                return Err(Error::invalid(
                    format!("Transpose node {:?} between {:?} and {:?}", n.name, prev.node, next.node),
                    if batch_first {
                        "no Transpose: with layout = 1, Y [B, T, D, H] is reshaped as it is".to_string()
                    } else {
                        "perm [0, 2, 1, 3] (Y [T, D, B, H] to [T, B, D, H])".to_string()
                    },
                    format!("perm {perm:?}"),
                ));
            }
            transposed = true;
        }
        if let Some(o) = n.output.first() {
            reach.push((o.clone(), transposed));
        }
    }
    match reach.iter().find(|(r, _)| *r == next.x) {
        None => Err(Error::invalid(
            arg(),
            format!("computed from output Y of node {:?} through {GLUE_OPS:?} only (a chained layer stack)", prev.node),
            format!("{:?}, which is not", next.x),
        )),
        Some((_, false)) if !batch_first && dirs == 2 => Err(Error::invalid(
            arg(),
            "Y [T, 2, B, H] transposed with perm [0, 2, 1, 3] before the reshape to [T, B, 2·H]",
            "no Transpose on the way",
        )),
        Some(_) => Ok(()),
    }
}
