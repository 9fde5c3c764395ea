//! Loading and saving [`Params`] as safetensors, under PyTorch's names.
//!
//! A file written by `safetensors.torch.save_file(lstm.state_dict(), path)` loads as it is;
//! a file saved here loads into `torch.nn.LSTM` with `load_state_dict(load_file(path))`.

use super::{ParamLayout, ParamSpec, Params};
use crate::config::{CellKind, Direction, Merge, RnnConfig};
use crate::element::{Dtype, Element};
#[cfg(any(test, feature = "testkit"))]
use crate::error::try_vec;
use crate::error::{try_zeroed, Error, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// How [`Params::load_safetensors_with`] matches a file's tensors to parameter names.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Prepended to every parameter name, e.g. `"rnn."` for the `rnn` submodule of a larger
    /// model's `state_dict()`.
    pub prefix: String,
    /// If false (the default, like PyTorch's `strict=True`), a tensor in the file under the
    /// prefix that is not a parameter of the configuration is an error. If true, other tensors
    /// are ignored.
    pub allow_unexpected: bool,
}

/// Converts a tensor view to `T`, accepting F32, F64, F16 and BF16 data: each value is
/// converted exactly to f64, then rounded once to `T` (so a bf16 or f16 PyTorch state_dict loads
/// into an f32 model exactly, and an f32 file into an f16 model rounds to nearest even).
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn view_to_vec<T: Element>(view: &TensorView<'_>, name: &str, source: &str) -> Result<Vec<T>> {
    check_float_dtype(view, name, source)?;
    // The view's elements are in the file (the safetensors parser checks every tensor's shape
    // against its bytes): at most half as many as the file has bytes.
    let mut out = try_vec(&format!("{name} in {source}"), "the tensor's values", view.shape().iter().product(), T::from_f64(0.0))?;
    view_into(view, &mut out, name, source)?;
    Ok(out)
}

/// Checks that a tensor holds floating-point values this crate converts: F32, F64, F16, BF16.
pub(crate) fn check_float_dtype(view: &TensorView<'_>, name: &str, source: &str) -> Result<()> {
    match view.dtype() {
        StDtype::F32 | StDtype::F64 | StDtype::F16 | StDtype::BF16 => Ok(()),
        other => Err(Error::invalid(format!("{name} in {source}"), "dtype F32, F64, F16 or BF16", format!("{other:?}"))),
    }
}

/// A tensor view converted like `view_to_vec` into `out`, which holds as many elements as the view: the loader's path
/// from the file's bytes to the flat buffer, without a copy in between.
pub(crate) fn view_into<T: Element>(view: &TensorView<'_>, out: &mut [T], name: &str, source: &str) -> Result<()> {
    let data = view.data();
    match view.dtype() {
        StDtype::F32 => decode(data, out, |b| f32::from_le_bytes(b) as f64),
        StDtype::F64 => decode(data, out, f64::from_le_bytes),
        StDtype::F16 => decode(data, out, |b| half::f16::from_le_bytes(b).to_f64()),
        StDtype::BF16 => decode(data, out, |b| half::bf16::from_le_bytes(b).to_f64()),
        _ => check_float_dtype(view, name, source)?,
    }
    Ok(())
}

/// `out[i] = T::from_f64(f(value i of data))`, values of `N` little-endian bytes.
fn decode<T: Element, const N: usize>(data: &[u8], out: &mut [T], f: impl Fn([u8; N]) -> f64) {
    for (o, b) in out.iter_mut().zip(data.chunks_exact(N)) {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(b);
        *o = T::from_f64(f(bytes));
    }
}

/// The little-endian bytes of `values`, as safetensors stores them.
pub(crate) fn le_bytes<T: Element>(values: &[T]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * T::DTYPE.size());
    for &v in values {
        v.write_le(&mut bytes);
    }
    bytes
}

/// [`serialize_sorted`], checked with the reference parser before anyone else reads it.
pub(crate) fn serialize_checked(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    dtype: Dtype,
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes = serialize_sorted(tensors, dtype, metadata);
    SafeTensors::deserialize(&bytes).map_err(|e| st_error("<bytes>", e))?;
    Ok(bytes)
}

/// Reads an I64 tensor (e.g. `lengths`).
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn view_to_i64(view: &TensorView<'_>, name: &str, source: &str) -> Result<Vec<i64>> {
    match view.dtype() {
        StDtype::I64 => {
            Ok(view.data().chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect())
        }
        StDtype::I32 => Ok(view.data().chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect()),
        other => Err(Error::invalid(format!("{name} in {source}"), "dtype I64 or I32", format!("{other:?}"))),
    }
}

pub(crate) fn st_error(path: &str, e: impl std::fmt::Display) -> Error {
    Error::SafeTensors { path: path.to_string(), message: e.to_string() }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// Reads an [`RnnConfig`] from a file's string metadata (the keys of `docs/case-format.md`
/// and of [`Params::save_safetensors`]: `cell`, `input_size`, `hidden_size`, `num_layers`,
/// `bidirectional`, `proj_size`, and optionally `bias`, default `true`; the cell options
/// `direction` (which, when present, decides over `bidirectional`), `merge`, `peephole`,
/// `gate_clip`, `input_forget`, `linear_before_reset`, `layer_norm`, `batch_first` and `dropout`, each with the default
/// of [`RnnConfig::new`]).
pub fn config_from_metadata(meta: &HashMap<String, String>, source: &str) -> Result<RnnConfig> {
    config_from_metadata_inner(meta).map_err(|e| e.in_file(source))
}

fn config_from_metadata_inner(meta: &HashMap<String, String>) -> Result<RnnConfig> {
    let get = |key: &str| {
        meta.get(key).ok_or_else(|| {
            Error::invalid(
                format!("metadata[{key:?}]"),
                "present (the file has no rnn-kernels configuration in its metadata; for a PyTorch state_dict file, \
                 give the configuration: Params::load_safetensors(path, &config))",
                "missing",
            )
        })
    };
    let num = |key: &str| -> Result<usize> {
        let v = get(key)?;
        v.trim().parse().map_err(|_| Error::invalid(format!("metadata[{key:?}]"), "an unsigned integer", format!("{v:?}")))
    };
    let flag = |key: &str, default: Option<bool>| -> Result<bool> {
        match (meta.get(key).map(|s| s.trim().to_ascii_lowercase()), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => get(key).map(|_| false),
            (Some(v), _) => match v.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(Error::invalid(format!("metadata[{key:?}]"), "true or false", format!("{v:?}"))),
            },
        }
    };
    let cell: CellKind = get("cell")?.parse()?;
    let proj = if meta.contains_key("proj_size") { num("proj_size")? } else { 0 };
    let parsed = |key: &str| -> Result<Option<&str>> { Ok(meta.get(key).map(|v| v.trim())) };
    let in_meta = |key: &str, e: Error| match e {
        Error::InvalidArgument { expected, got, .. } => Error::invalid(format!("metadata[{key:?}]"), expected, got),
        e => e,
    };
    let direction = match parsed("direction")? {
        Some(v) => v.parse::<Direction>().map_err(|e| in_meta("direction", e))?,
        None if flag("bidirectional", None)? => Direction::Bidirectional,
        None => Direction::Forward,
    };
    let merge = match parsed("merge")? {
        Some(v) => v.parse::<Merge>().map_err(|e| in_meta("merge", e))?,
        None => Merge::Concat,
    };
    let gate_clip = match parsed("gate_clip")? {
        Some(v) => {
            v.parse::<f64>().map_err(|_| Error::invalid("metadata[\"gate_clip\"]", "a number (0 for no clipping)", format!("{v:?}")))?
        }
        None => 0.0,
    };
    let dropout = match parsed("dropout")? {
        Some(v) => v.parse::<f64>().map_err(|_| Error::invalid("metadata[\"dropout\"]", "a probability in [0, 1)", format!("{v:?}")))?,
        None => 0.0,
    };
    let rate = |key: &str| -> Result<f64> {
        match parsed(key)? {
            Some(v) => {
                v.parse::<f64>().map_err(|_| Error::invalid(format!("metadata[\"{key}\"]"), "a probability in [0, 1)", format!("{v:?}")))
            }
            None => Ok(0.0),
        }
    };
    let (zoneout, zoneout_cell, recurrent_dropout) = (rate("zoneout")?, rate("zoneout_cell")?, rate("recurrent_dropout")?);
    let input_dropout = rate("input_dropout")?;
    RnnConfig::new(cell, num("input_size")?, num("hidden_size")?)
        .num_layers(num("num_layers")?)
        .direction(direction)
        .bias(flag("bias", Some(true))?)
        .proj_size(proj)
        .merge(merge)
        .peephole(flag("peephole", Some(false))?)
        .gate_clip(gate_clip)
        .input_forget(flag("input_forget", Some(false))?)
        .linear_before_reset(flag("linear_before_reset", Some(true))?)
        .layer_norm(flag("layer_norm", Some(false))?)
        .batch_first(flag("batch_first", Some(false))?)
        .dropout(dropout)
        .zoneout(zoneout)
        .zoneout_cell(zoneout_cell)
        .recurrent_dropout(recurrent_dropout)
        .input_dropout(input_dropout)
        .build()
}

/// The metadata [`Params::save_safetensors`] writes for `config`.
pub fn config_metadata(config: &RnnConfig) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("format".to_string(), "pt".to_string());
    m.insert("cell".to_string(), config.cell().name().to_string());
    m.insert("input_size".to_string(), config.input_size().to_string());
    m.insert("hidden_size".to_string(), config.hidden_size().to_string());
    m.insert("num_layers".to_string(), config.num_layers().to_string());
    m.insert("bidirectional".to_string(), config.bidirectional().to_string());
    m.insert("bias".to_string(), config.bias().to_string());
    m.insert("proj_size".to_string(), config.proj_size().to_string());
    // The options, only where they differ from the defaults, so that files of plain cells
    // stay as they were.
    if config.direction() != Direction::Forward {
        m.insert("direction".to_string(), config.direction().name().to_string());
    }
    if config.merge() != Merge::Concat {
        m.insert("merge".to_string(), config.merge().name().to_string());
    }
    if config.peephole() {
        m.insert("peephole".to_string(), "true".to_string());
    }
    if let Some(clip) = config.gate_clip() {
        m.insert("gate_clip".to_string(), clip.to_string());
    }
    if config.input_forget() {
        m.insert("input_forget".to_string(), "true".to_string());
    }
    if let Some(p) = config.dropout() {
        m.insert("dropout".to_string(), p.to_string());
    }
    if let Some(z) = config.zoneout() {
        m.insert("zoneout".to_string(), z.to_string());
    }
    if let Some(z) = config.zoneout_cell() {
        m.insert("zoneout_cell".to_string(), z.to_string());
    }
    if let Some(p) = config.recurrent_dropout() {
        m.insert("recurrent_dropout".to_string(), p.to_string());
    }
    if let Some(p) = config.input_dropout() {
        m.insert("input_dropout".to_string(), p.to_string());
    }
    if !config.linear_before_reset() {
        m.insert("linear_before_reset".to_string(), "false".to_string());
    }
    if config.layer_norm() {
        m.insert("layer_norm".to_string(), "true".to_string());
    }
    if config.batch_first() {
        m.insert("batch_first".to_string(), "true".to_string());
    }
    m
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
    }
}

/// Serialises tensors `(name, shape, little-endian bytes)` in the given order, with `metadata`
/// in sorted key order, so the same parameters always give the same bytes (the safetensors
/// crate writes its metadata map in hash order). Format: an 8-byte little-endian header length,
/// the JSON header padded with spaces to a multiple of 8, then the data.
pub(crate) fn serialize_sorted(tensors: &[(String, Vec<usize>, Vec<u8>)], dtype: Dtype, metadata: &HashMap<String, String>) -> Vec<u8> {
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let meta: Vec<String> = keys.iter().map(|k| format!("{}:{}", json_str(k), json_str(&metadata[*k]))).collect();
    let mut header = format!("{{\"__metadata__\":{{{}}}", meta.join(","));
    let mut offset = 0usize;
    for (name, shape, bytes) in tensors {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header += &format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_str(name),
            dtype_name(dtype),
            dims.join(","),
            offset,
            offset + bytes.len()
        );
        offset += bytes.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    out
}

impl<T: Element> Params<T> {
    /// Loads the parameters of `config` from a safetensors file, strictly: every parameter must
    /// be present with its PyTorch shape, and no other tensor may be in the file.
    pub fn load_safetensors(path: impl AsRef<Path>, config: &RnnConfig) -> Result<Self> {
        Self::load_safetensors_with(path, config, &LoadOptions::default())
    }

    /// Loads the parameters of `config` from a safetensors file, with a name prefix and
    /// strictness from `options`.
    pub fn load_safetensors_with(path: impl AsRef<Path>, config: &RnnConfig, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Self::from_safetensors_bytes(&bytes, config, options, &path.display().to_string())
    }

    /// Loads a file saved by [`save_safetensors`](Self::save_safetensors), taking the
    /// configuration from its metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let desc = path.display().to_string();
        let bytes = read_file(path)?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| st_error(&desc, e))?;
        let map = meta.metadata().clone().unwrap_or_default();
        let config = config_from_metadata(&map, &desc)?;
        Self::from_safetensors_bytes(&bytes, &config, &LoadOptions::default(), &desc)
    }

    /// Like [`load_safetensors_with`](Self::load_safetensors_with), from bytes in memory;
    /// `source` names them in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], config: &RnnConfig, options: &LoadOptions, source: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| st_error(source, e))?;
        Self::from_safetensors(&st, config, options, source)
    }

    pub(crate) fn from_safetensors(st: &SafeTensors<'_>, config: &RnnConfig, options: &LoadOptions, source: &str) -> Result<Self> {
        // Everything is checked against the file before anything sized from the configuration
        // is allocated: the configuration may come from the file's own metadata, and only the
        // tensors present bound what it may ask for.
        if !options.allow_unexpected {
            for name in st.names() {
                if let Some(rest) = name.strip_prefix(options.prefix.as_str()) {
                    if !ParamLayout::is_param_name(config, rest) {
                        return Err(Error::UnexpectedTensor {
                            name: name.to_string(),
                            source_desc: source.to_string(),
                            expected: ParamLayout::names_of(config),
                        });
                    }
                }
            }
        }
        let view_of = |spec: &ParamSpec| -> Result<(String, TensorView<'_>)> {
            let full = format!("{}{}", options.prefix, spec.name);
            let view = st.tensor(&full).map_err(|_| Error::MissingTensor {
                name: full.clone(),
                shape: spec.shape.clone(),
                source_desc: source.to_string(),
            })?;
            if view.shape() != spec.shape.as_slice() {
                return Err(Error::shape(
                    format!("{full} in {source}"),
                    format!("shape {:?}", spec.shape),
                    format!("shape {:?}", view.shape()),
                ));
            }
            check_float_dtype(&view, &full, source)?;
            Ok((full, view))
        };
        for spec in ParamLayout::specs_of(config) {
            view_of(&spec)?;
        }
        // Every parameter is in the file, in at least 2 bytes per value: the layout has at most
        // as many entries as the file has tensors, the buffer at most 4 times the file's bytes.
        let layout = ParamLayout::new(config);
        let mut data = try_zeroed(&format!("parameters in {source}"), format!("{} parameters", layout.len()), layout.len())?;
        for spec in layout.specs() {
            let (full, view) = view_of(spec)?;
            view_into(&view, &mut data[spec.range()], &full, source)?;
        }
        Ok(Params { layout, data })
    }

    /// The parameters as safetensors bytes, under PyTorch's names, in `T`'s dtype, with the
    /// configuration in the metadata. The same parameters always give the same bytes.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let tensors: Vec<_> =
            self.layout.specs().iter().map(|spec| (spec.name.clone(), spec.shape.clone(), le_bytes(&self.data[spec.range()]))).collect();
        serialize_checked(&tensors, T::DTYPE, &config_metadata(self.config()))
    }

    /// Saves the parameters as a safetensors file (see
    /// [`to_safetensors_bytes`](Self::to_safetensors_bytes)).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes()?;
        std::fs::write(path, bytes).map_err(|source| Error::Io { path: path.display().to_string(), source })
    }
}
