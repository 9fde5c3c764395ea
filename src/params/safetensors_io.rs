//! Loading and saving [`Params`] as safetensors, under PyTorch's names.
//!
//! A file written by `safetensors.torch.save_file(lstm.state_dict(), path)` loads as it is;
//! a file saved here loads into `torch.nn.LSTM` with `load_state_dict(load_file(path))`.

use super::{ParamLayout, Params};
use crate::config::{CellKind, RnnConfig};
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView, View};
use std::borrow::Cow;
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

/// Converts a tensor view to `T`, accepting F32 and F64 data.
pub(crate) fn view_to_vec<T: Element>(view: &TensorView<'_>, name: &str, source: &str) -> Result<Vec<T>> {
    let data = view.data();
    let out = match view.dtype() {
        StDtype::F32 => data.chunks_exact(4).map(|b| T::from_f64(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)).collect(),
        StDtype::F64 => {
            data.chunks_exact(8).map(|b| T::from_f64(f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))).collect()
        }
        other => {
            return Err(Error::invalid(format!("{name} in {source}"), "dtype F32 or F64", format!("{other:?}")));
        }
    };
    Ok(out)
}

/// Reads an I64 tensor (e.g. `lengths`).
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

/// Reads an [`RnnConfig`] from a file's string metadata (the keys of `shared/case-format.md`
/// and of [`Params::save_safetensors`]: `cell`, `input_size`, `hidden_size`, `num_layers`,
/// `bidirectional`, `proj_size`, and optionally `bias`, default `true`).
pub fn config_from_metadata(meta: &HashMap<String, String>, source: &str) -> Result<RnnConfig> {
    let get = |key: &str| meta.get(key).ok_or_else(|| Error::invalid(format!("metadata `{key}` of {source}"), "present", "missing"));
    let num = |key: &str| -> Result<usize> {
        let v = get(key)?;
        v.trim().parse().map_err(|_| Error::invalid(format!("metadata `{key}` of {source}"), "an unsigned integer", format!("{v:?}")))
    };
    let flag = |key: &str, default: Option<bool>| -> Result<bool> {
        match (meta.get(key).map(|s| s.trim().to_ascii_lowercase()), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(Error::invalid(format!("metadata `{key}` of {source}"), "present", "missing")),
            (Some(v), _) => match v.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(Error::invalid(format!("metadata `{key}` of {source}"), "true or false", format!("{v:?}"))),
            },
        }
    };
    let cell: CellKind = get("cell")?.parse()?;
    let proj = if meta.contains_key("proj_size") { num("proj_size")? } else { 0 };
    RnnConfig::new(cell, num("input_size")?, num("hidden_size")?)
        .num_layers(num("num_layers")?)
        .bidirectional(flag("bidirectional", None)?)
        .bias(flag("bias", Some(true))?)
        .proj_size(proj)
        .build()
}

/// The metadata [`Params::save_safetensors`] writes for `config`.
pub(crate) fn config_metadata(config: &RnnConfig) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("format".to_string(), "pt".to_string());
    m.insert("cell".to_string(), config.cell().name().to_string());
    m.insert("input_size".to_string(), config.input_size().to_string());
    m.insert("hidden_size".to_string(), config.hidden_size().to_string());
    m.insert("num_layers".to_string(), config.num_layers().to_string());
    m.insert("bidirectional".to_string(), config.bidirectional().to_string());
    m.insert("bias".to_string(), config.bias().to_string());
    m.insert("proj_size".to_string(), config.proj_size().to_string());
    m
}

struct OwnedView {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &OwnedView {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn st_dtype(d: Dtype) -> StDtype {
    match d {
        Dtype::F32 => StDtype::F32,
        Dtype::F64 => StDtype::F64,
    }
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
        let layout = ParamLayout::new(config);
        if !options.allow_unexpected {
            for name in st.names() {
                if let Some(rest) = name.strip_prefix(options.prefix.as_str()) {
                    if layout.find(rest).is_none() {
                        return Err(Error::UnexpectedTensor {
                            name: name.to_string(),
                            source_desc: source.to_string(),
                            expected: layout.names(),
                        });
                    }
                }
            }
        }
        let mut data = vec![T::from_f64(0.0); layout.len()];
        for spec in layout.specs() {
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
            let values: Vec<T> = view_to_vec(&view, &full, source)?;
            data[spec.range()].copy_from_slice(&values);
        }
        Ok(Params { layout, data })
    }

    /// The parameters as safetensors bytes, under PyTorch's names, in `T`'s dtype, with the
    /// configuration in the metadata.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let views = self.owned_views();
        safetensors::tensor::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), Some(config_metadata(self.config())))
            .map_err(|e| st_error("<bytes>", e))
    }

    /// Saves the parameters as a safetensors file (see
    /// [`to_safetensors_bytes`](Self::to_safetensors_bytes)).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let views = self.owned_views();
        safetensors::tensor::serialize_to_file(views.iter().map(|(n, v)| (n.as_str(), v)), Some(config_metadata(self.config())), path)
            .map_err(|e| st_error(&path.display().to_string(), e))
    }

    fn owned_views(&self) -> Vec<(String, OwnedView)> {
        self.layout
            .specs()
            .iter()
            .map(|spec| {
                let mut bytes = Vec::with_capacity(spec.len() * T::DTYPE.size());
                for &v in &self.data[spec.range()] {
                    v.write_le(&mut bytes);
                }
                (spec.name.clone(), OwnedView { dtype: st_dtype(T::DTYPE), shape: spec.shape.clone(), bytes })
            })
            .collect()
    }
}
