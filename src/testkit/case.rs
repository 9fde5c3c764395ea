//! PyTorch reference case files (`docs/case-format.md`): one safetensors file holding a
//! layer stack's parameters, inputs, upstream gradients, and PyTorch's outputs and gradients.
//!
//! [`Case::load`] reads one; [`run_case`] runs it on a backend and compares every output and
//! gradient with the metric of the format, `max_i |a_i - b_i| / max(1, |b_i|)`. A case
//! without upstream and expected gradients is forward-only ([`Case::forward_only`]): only its
//! `y`, `hn`, `cn` are compared. A case whose metadata sets a cell option the backend does not
//! implement fails with [`Error::Unsupported`] naming it (from the
//! backend's `plan`), never run as the plain cell.

use crate::backend::{Backend, BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode};
use crate::config::RnnConfig;
use crate::element::{Dtype, Element};
use crate::error::{try_zeroed, Error, Result};
use crate::masks::MaskStream;
use crate::params::{config_from_metadata, read_file, st_error, view_to_i64, view_to_vec, LoadOptions, Params};
use crate::shape::SeqShape;
use safetensors::SafeTensors;
use std::path::Path;

/// One case file, converted to `T`.
#[derive(Debug, Clone)]
pub struct Case<T> {
    /// The file it was read from.
    pub source: String,
    /// The layer stack.
    pub config: RnnConfig,
    /// Steps, batch and lengths.
    pub shape: SeqShape,
    /// The parameters.
    pub params: Params<T>,
    /// `x: [T, B, I]`.
    pub x: Vec<T>,
    /// `h0: [L·D, B, Hout]`, if in the file.
    pub h0: Option<Vec<T>>,
    /// `c0: [L·D, B, H]`, if in the file.
    pub c0: Option<Vec<T>>,
    /// PyTorch's `y`.
    pub y: Option<Vec<T>>,
    /// PyTorch's `hn`.
    pub hn: Option<Vec<T>>,
    /// PyTorch's `cn`.
    pub cn: Option<Vec<T>>,
    /// Upstream `dy`.
    pub dy: Option<Vec<T>>,
    /// Upstream `dhn`.
    pub dhn: Option<Vec<T>>,
    /// Upstream `dcn`.
    pub dcn: Option<Vec<T>>,
    /// PyTorch's `dx`.
    pub dx: Option<Vec<T>>,
    /// PyTorch's `dh0`.
    pub dh0: Option<Vec<T>>,
    /// PyTorch's `dc0`.
    pub dc0: Option<Vec<T>>,
    /// PyTorch's parameter gradients (`grad.<name>`), if all are in the file.
    pub grads: Option<Params<T>>,
    /// The element type of `y` in the file: what the oracle computed in (`F32` for
    /// onnxruntime's cases, `F64` for PyTorch's), which sets the tolerance a reference in f64
    /// can be held to.
    pub expected_dtype: Option<Dtype>,
    /// The masks of the training pass (metadata `mask_seed`, `mask_offset`: a case with
    /// dropout), if in the file.
    pub masks: Option<MaskStream>,
    /// The inference outputs `y`, `hn`, `cn` (`y_inference`, …) where they differ from the
    /// training pass's (dropout), if in the file.
    pub inference: [Option<Vec<T>>; 3],
}

impl<T: Element> Case<T> {
    /// Reads a case file, checking every tensor's shape against the metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let source = path.display().to_string();
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes, &source)
    }

    /// Reads a case from bytes in memory; `source` names them in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| st_error(source, e))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| st_error(source, e))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let config = config_from_metadata(&meta, source)?;
        let meta_num = |k: &str| -> Result<usize> {
            let v = meta.get(k).ok_or_else(|| Error::invalid(format!("metadata `{k}` of {source}"), "present", "missing"))?;
            v.parse().map_err(|_| Error::invalid(format!("metadata `{k}` of {source}"), "an unsigned integer", format!("{v:?}")))
        };
        let (steps, batch) = (meta_num("steps")?, meta_num("batch")?);
        // Every tensor's shape is checked before it is converted, and the parameters against the
        // file before their buffer is allocated: what the metadata asks for is allocated only
        // where the file holds it.
        let shape = match st.tensor("lengths") {
            Ok(v) => {
                if v.shape() != [batch] {
                    return Err(Error::shape(
                        format!("lengths in {source}"),
                        format!("shape [B] = [{batch}]"),
                        format!("shape {:?}", v.shape()),
                    ));
                }
                let lengths = view_to_i64(&v, "lengths", source)?;
                let lengths = lengths
                    .iter()
                    .enumerate()
                    .map(|(b, &n)| {
                        usize::try_from(n).map_err(|_| Error::invalid(format!("lengths[{b}] in {source}"), format!("in 1..={steps}"), n))
                    })
                    .collect::<Result<Vec<_>>>()?;
                SeqShape::with_lengths(steps, lengths).map_err(|e| e.in_file(source))?
            }
            Err(_) => SeqShape::new(steps, batch).map_err(|e| e.in_file(source))?,
        };
        let tensor = |name: &str, want: &[usize]| -> Result<Option<Vec<T>>> {
            match st.tensor(name) {
                Err(_) => Ok(None),
                Ok(v) => {
                    if v.shape() != want {
                        return Err(Error::shape(
                            format!("{name} in {source}"),
                            format!("shape {want:?}"),
                            format!("shape {:?}", v.shape()),
                        ));
                    }
                    Ok(Some(view_to_vec(&v, name, source)?))
                }
            }
        };
        let (xs, ys, hs, cs) = (x_shape(&shape, &config), y_shape(&shape, &config), shape.h_shape(&config), shape.c_shape(&config));
        let expected_dtype = st.tensor("y").ok().and_then(|v| match v.dtype() {
            safetensors::Dtype::F64 => Some(Dtype::F64),
            safetensors::Dtype::F32 => Some(Dtype::F32),
            safetensors::Dtype::F16 => Some(Dtype::F16),
            safetensors::Dtype::BF16 => Some(Dtype::BF16),
            _ => None,
        });
        let x =
            tensor("x", &xs)?.ok_or_else(|| Error::MissingTensor { name: "x".into(), shape: xs.to_vec(), source_desc: source.into() })?;
        let params = Params::from_safetensors(&st, &config, &LoadOptions { prefix: String::new(), allow_unexpected: true }, source)?;
        let grads = if params.layout().specs().iter().all(|s| st.tensor(&format!("grad.{}", s.name)).is_ok()) {
            Some(Params::from_safetensors(&st, &config, &LoadOptions { prefix: "grad.".into(), allow_unexpected: true }, source)?)
        } else {
            None
        };
        let mask_key = |k: &str| -> Result<Option<u64>> {
            meta.get(k)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| Error::invalid(format!("metadata `{k}` of {source}"), "an unsigned 64-bit integer", format!("{v:?}")))
                })
                .transpose()
        };
        let masks = match (mask_key("mask_seed")?, mask_key("mask_offset")?) {
            (Some(seed), offset) => Some(MaskStream::new(seed, offset.unwrap_or(0))),
            (None, Some(_)) => {
                return Err(Error::invalid(format!("metadata `mask_seed` of {source}"), "present with `mask_offset`", "missing"))
            }
            (None, None) => None,
        };
        Ok(Case {
            masks,
            inference: [tensor("y_inference", &ys)?, tensor("hn_inference", &hs)?, tensor("cn_inference", &cs)?],
            source: source.to_string(),
            shape: shape.clone(),
            params,
            x,
            h0: tensor("h0", &hs)?,
            c0: tensor("c0", &cs)?,
            y: tensor("y", &ys)?,
            hn: tensor("hn", &hs)?,
            cn: tensor("cn", &cs)?,
            dy: tensor("dy", &ys)?,
            dhn: tensor("dhn", &hs)?,
            dcn: tensor("dcn", &cs)?,
            dx: tensor("dx", &xs)?,
            dh0: tensor("dh0", &hs)?,
            dc0: tensor("dc0", &cs)?,
            grads,
            expected_dtype,
            config,
        })
    }

    /// Whether the case has neither upstream gradients (`dy`, `dhn`, `dcn`) nor expected
    /// gradients (`dx`, `dh0`, `dc0`, `grad.*`): then [`run_case`] runs and compares the forward
    /// passes only.
    pub fn forward_only(&self) -> bool {
        [&self.dy, &self.dhn, &self.dcn, &self.dx, &self.dh0, &self.dc0].iter().all(|t| t.is_none()) && self.grads.is_none()
    }
}

/// The shape of `x` in a case file: `[T, B, I]`, or `[B, T, I]` with `batch_first`.
fn x_shape(shape: &SeqShape, cfg: &RnnConfig) -> [usize; 3] {
    order(shape, cfg, cfg.input_size())
}

/// The shape of `y` in a case file: `[T, B, out]`, or `[B, T, out]` with `batch_first`.
fn y_shape(shape: &SeqShape, cfg: &RnnConfig) -> [usize; 3] {
    order(shape, cfg, cfg.output_size())
}

fn order(shape: &SeqShape, cfg: &RnnConfig, features: usize) -> [usize; 3] {
    if cfg.batch_first() {
        [shape.batch(), shape.steps(), features]
    } else {
        [shape.steps(), shape.batch(), features]
    }
}

/// The error of `a` against the expected `b`: `max_i |a_i - b_i| / max(1, |b_i|)`; infinite
/// when a value is NaN or the lengths differ.
pub fn max_error<T: Element>(a: &[T], b: &[T]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0.0, |m: f64, (&a, &b)| {
        let (a, b) = (a.to_f64(), b.to_f64());
        let e = (a - b).abs() / b.abs().max(1.0);
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    })
}

/// The errors of one run of a case: one entry per compared tensor.
#[derive(Debug, Clone, Default)]
pub struct CaseReport {
    /// `(tensor name, error)` for every tensor compared.
    pub errors: Vec<(String, f64)>,
    /// Whether the case was forward-only (no backward was run).
    pub forward_only: bool,
}

impl CaseReport {
    /// The largest error and its tensor (`("", 0)` when nothing was compared).
    pub fn worst(&self) -> (&str, f64) {
        self.errors.iter().fold(("", 0.0), |w, (n, e)| if *e > w.1 || (e.is_nan() && !w.1.is_nan()) { (n.as_str(), *e) } else { w })
    }
    /// Whether every error is at most `tol`.
    pub fn passes(&self, tol: f64) -> bool {
        !self.errors.is_empty() && self.errors.iter().all(|(_, e)| *e <= tol)
    }
}

/// Runs `case` on `backend`: training forward, backward with the case's upstream gradients
/// (not for a [forward-only](Case::forward_only) case), and inference forward; compares
/// everything the file has.
pub fn run_case<T: Element, B: Backend<T, Buf = [T]>>(backend: &B, case: &Case<T>) -> Result<CaseReport> {
    let cfg = &case.config;
    let shape = &case.shape;
    // Outputs sized from the file's metadata, allocated fallibly (a few KB of `x` with a large
    // hidden size can ask for more than there is).
    let zeros = |name: &str, s: [usize; 3]| crate::rnn::alloc::<T>("case", name, "a call tensor", s);
    let lstm = cfg.cell().has_cell_state();
    let plan = backend.plan(cfg, case.params.as_slice())?;
    let mut y = zeros("y", y_shape(shape, cfg))?;
    let mut hn = zeros("hn", shape.h_shape(cfg))?;
    let mut cn = if lstm { Some(zeros("cn", shape.c_shape(cfg))?) } else { None };
    let input = || ForwardInput {
        x: &case.x[..],
        h0: case.h0.as_deref(),
        c0: if lstm { case.c0.as_deref() } else { None },
        masks: case.masks.clone(),
    };
    let mut reserve = B::Reserve::default();
    backend.forward_training(&plan, shape, input(), ForwardOutput { y: &mut y, hn: Some(&mut hn), cn: cn.as_deref_mut() }, &mut reserve)?;

    let mut report = CaseReport { forward_only: case.forward_only(), ..CaseReport::default() };
    let mut cmp = |name: &str, got: Option<&[T]>, want: Option<&[T]>| {
        if let (Some(g), Some(w)) = (got, want) {
            report.errors.push((name.to_string(), max_error(g, w)));
        }
    };
    cmp("y", Some(&y), case.y.as_deref());
    cmp("hn", Some(&hn), case.hn.as_deref());
    cmp("cn", cn.as_deref(), case.cn.as_deref());

    if !report.forward_only {
        backward_and_compare(backend, case, &plan, &reserve, &mut cmp)?;
    }

    // Inference must give the same outputs as training, or with dropout the file's inference
    // outputs (dropout off).
    let (mut yi, mut hi) = (zeros("y", y_shape(shape, cfg))?, zeros("hn", shape.h_shape(cfg))?);
    let mut ci = if lstm { Some(zeros("cn", shape.c_shape(cfg))?) } else { None };
    backend.forward_inference(&plan, shape, input(), ForwardOutput { y: &mut yi, hn: Some(&mut hi), cn: ci.as_deref_mut() })?;
    let dropped = cfg.dropout().is_some() && cfg.num_layers() > 1;
    let [y_inf, hn_inf, cn_inf] = &case.inference;
    fn want<'a, T>(dropped: bool, inf: &'a Option<Vec<T>>, train: &'a Option<Vec<T>>) -> Option<&'a [T]> {
        if dropped {
            inf.as_deref()
        } else {
            inf.as_deref().or(train.as_deref())
        }
    }
    let want = |inf, train| want(dropped, inf, train);
    cmp("y (inference)", Some(&yi), want(y_inf, &case.y));
    cmp("hn (inference)", Some(&hi), want(hn_inf, &case.hn));
    cmp("cn (inference)", ci.as_deref(), want(cn_inf, &case.cn));
    Ok(report)
}

/// The backward pass of [`run_case`] with the case's upstream gradients (zeros where absent),
/// compared with the gradients the file has.
fn backward_and_compare<T: Element, B: Backend<T, Buf = [T]>>(
    backend: &B,
    case: &Case<T>,
    plan: &B::Plan,
    reserve: &B::Reserve,
    cmp: &mut impl FnMut(&str, Option<&[T]>, Option<&[T]>),
) -> Result<()> {
    let (cfg, shape) = (&case.config, &case.shape);
    let zeros = |name: &str, s: [usize; 3]| crate::rnn::alloc::<T>("case", name, "a call tensor", s);
    let lstm = cfg.cell().has_cell_state();
    let mut dx = zeros("dx", x_shape(shape, cfg))?;
    let mut dh0 = zeros("dh0", shape.h_shape(cfg))?;
    let mut dc0 = if lstm { Some(zeros("dc0", shape.c_shape(cfg))?) } else { None };
    let mut dparams = try_zeroed("case", "the parameter gradients", case.params.layout().len())?;
    backend.backward(
        plan,
        reserve,
        BackwardInput { dy: case.dy.as_deref(), dhn: case.dhn.as_deref(), dcn: if lstm { case.dcn.as_deref() } else { None } },
        BackwardOutput { dx: Some(&mut dx), dh0: Some(&mut dh0), dc0: dc0.as_deref_mut(), dparams: Some(&mut dparams) },
        GradMode::Overwrite,
    )?;
    cmp("dx", Some(&dx), case.dx.as_deref());
    cmp("dh0", Some(&dh0), case.dh0.as_deref());
    cmp("dc0", dc0.as_deref(), case.dc0.as_deref());
    if let Some(grads) = &case.grads {
        for spec in grads.layout().specs() {
            cmp(&format!("grad.{}", spec.name), Some(&dparams[spec.range()]), Some(&grads.as_slice()[spec.range()]));
        }
    }

    Ok(())
}
