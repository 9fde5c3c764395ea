//! `AttentionConfig`, `Attention`, `AttentionMemory` and `AttentionSaved`: the library's
//! attention (`rnn_kernels::attention`) over NumPy arrays, on the reference (float32, float64),
//! the CPU backend (float32) or, in a build with CUDA, the GPU (float32, `CudaHost`: each call
//! uploads its arrays and downloads its results).
//!
//! Shapes are the library's (time-major): `keys: [S, B, Hk]` (the encoder's outputs, sequence
//! `b` `lengths[b]` of them), `queries: [Tq, B, Hq]`, `weights: [Tq, B, S]` (0 past each
//! length), `context: [Tq, B, Hk]`, `hidden: [Tq, B, O]` (`tanh(W_c [c; q])`).

use crate::arrays::{array, check_shape, out1, out3, readonly, slice, tuple};
use crate::engine::{self, Ctx, Elem, Kind};
use crate::errors::{runtime, type_error, value, OrPy};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rnn_kernels::attention::{
    AttentionBackend, AttentionConfig as Cfg, AttentionMemory as Mem, AttentionMemoryGrads, AttentionOutput, AttentionShape,
    AttentionUpstream, Score,
};
use rnn_kernels::{Isa, Reference};
use std::sync::atomic::{AtomicU64, Ordering};

/// An attention's score function and sizes: ``score`` one of ``"dot"``, ``"general"``,
/// ``"concat"``, ``"additive"`` (``"bahdanau"``); ``attn_size`` (A) the width of the concat and
/// additive scores' ``tanh`` layer; ``output_size`` (O) the width of the attentional hidden state
/// ``tanh(W_c [c; q])``, ``None`` or 0 for none.
#[pyclass(module = "rnn_kernels._native", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct AttentionConfig {
    pub(crate) inner: Cfg,
}

fn size(arg: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| value(arg, "a size of at least 0", v))
}

#[pymethods]
impl AttentionConfig {
    #[new]
    #[pyo3(signature = (score, query_size, key_size, attn_size=None, output_size=None))]
    fn py_new(score: &str, query_size: i64, key_size: i64, attn_size: Option<i64>, output_size: Option<i64>) -> PyResult<Self> {
        let score: Score = score.to_ascii_lowercase().parse().or_py()?;
        let mut b = Cfg::new(score, size("query_size", query_size)?, size("key_size", key_size)?);
        if let Some(a) = attn_size {
            b = b.attn_size(size("attn_size", a)?);
        }
        if let Some(o) = output_size {
            b = b.output_size(size("output_size", o)?);
        }
        Ok(AttentionConfig { inner: b.build().or_py()? })
    }

    #[getter]
    fn score(&self) -> &'static str {
        self.inner.score().name()
    }
    #[getter]
    fn query_size(&self) -> usize {
        self.inner.query_size()
    }
    #[getter]
    fn key_size(&self) -> usize {
        self.inner.key_size()
    }
    #[getter]
    fn attn_size(&self) -> usize {
        self.inner.attn_size()
    }
    /// O (0: no attentional hidden state).
    #[getter]
    fn output_size(&self) -> usize {
        self.inner.output_size()
    }
    /// The length of the flat parameter buffer.
    #[getter]
    fn param_count(&self) -> usize {
        self.inner.param_len()
    }

    /// ``(name, shape, offset)`` of every parameter tensor in the flat buffer, in order
    /// (``weight_a``, ``v_a``, ``weight_key``, ``weight_query``, ``v``, ``weight_c``, as the score
    /// has them); each matrix is ``torch.nn.Linear``'s ``[out, in]`` weight, no bias.
    fn param_specs<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyTuple>, usize)>> {
        let mut at = 0;
        let mut v = Vec::new();
        for (name, shape) in self.inner.params() {
            v.push((name.to_string(), PyTuple::new(py, &shape)?, at));
            at += shape.iter().product::<usize>();
        }
        Ok(v)
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "AttentionConfig('{}', query_size={}, key_size={}, attn_size={}, output_size={})",
            c.score().name(),
            c.query_size(),
            c.key_size(),
            c.attn_size(),
            c.output_size()
        )
    }
}

enum AnyParams {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

enum AnyMem {
    F32(Mem<f32>),
    F64(Mem<f64>),
}

/// What a backward needs of its forward pass: the forward's outputs (the library's backward
/// reads only them besides the memory, the queries and the parameters), and a copy of the
/// queries, to check that the backward is given the same ones.
struct Saved<T> {
    out: AttentionOutput<T>,
    queries: Vec<T>,
}

enum AnySaved {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

/// The element types of an attention and its backends.
trait AttElem: Elem {
    fn params(p: &AnyParams) -> Option<&[Self]>;
    fn wrap_params(v: Vec<Self>) -> AnyParams;
    fn mem(m: &AnyMem) -> Option<&Mem<Self>>;
    fn wrap_mem(m: Mem<Self>) -> AnyMem;
    fn saved(s: &AnySaved) -> Option<&Saved<Self>>;
    fn wrap_saved(s: Saved<Self>) -> AnySaved;
    fn backend(ctx: &Ctx) -> PyResult<&dyn AttentionBackend<Self>>;
}

impl AttElem for f32 {
    fn params(p: &AnyParams) -> Option<&[f32]> {
        match p {
            AnyParams::F32(v) => Some(v),
            AnyParams::F64(_) => None,
        }
    }
    fn wrap_params(v: Vec<f32>) -> AnyParams {
        AnyParams::F32(v)
    }
    fn mem(m: &AnyMem) -> Option<&Mem<f32>> {
        match m {
            AnyMem::F32(m) => Some(m),
            AnyMem::F64(_) => None,
        }
    }
    fn wrap_mem(m: Mem<f32>) -> AnyMem {
        AnyMem::F32(m)
    }
    fn saved(s: &AnySaved) -> Option<&Saved<f32>> {
        match s {
            AnySaved::F32(s) => Some(s),
            AnySaved::F64(_) => None,
        }
    }
    fn wrap_saved(s: Saved<f32>) -> AnySaved {
        AnySaved::F32(s)
    }
    fn backend(ctx: &Ctx) -> PyResult<&dyn AttentionBackend<f32>> {
        Ok(match ctx {
            Ctx::Cpu(c) => c,
            Ctx::Reference => &Reference,
            #[cfg(feature = "cuda")]
            Ctx::Cuda(c) => c,
        })
    }
}

impl AttElem for f64 {
    fn params(p: &AnyParams) -> Option<&[f64]> {
        match p {
            AnyParams::F64(v) => Some(v),
            AnyParams::F32(_) => None,
        }
    }
    fn wrap_params(v: Vec<f64>) -> AnyParams {
        AnyParams::F64(v)
    }
    fn mem(m: &AnyMem) -> Option<&Mem<f64>> {
        match m {
            AnyMem::F64(m) => Some(m),
            AnyMem::F32(_) => None,
        }
    }
    fn wrap_mem(m: Mem<f64>) -> AnyMem {
        AnyMem::F64(m)
    }
    fn saved(s: &AnySaved) -> Option<&Saved<f64>> {
        match s {
            AnySaved::F64(s) => Some(s),
            AnySaved::F32(_) => None,
        }
    }
    fn wrap_saved(s: Saved<f64>) -> AnySaved {
        AnySaved::F64(s)
    }
    fn backend(ctx: &Ctx) -> PyResult<&dyn AttentionBackend<f64>> {
        match ctx {
            Ctx::Reference => Ok(&Reference),
            _ => Err(runtime("params", "float64 on a backend other than the reference (an internal inconsistency of the bindings)")),
        }
    }
}

fn mismatch(arg: &str) -> PyErr {
    runtime(arg, "of another element type (an internal inconsistency of the bindings)")
}

static NEXT_ATTENTION: AtomicU64 = AtomicU64::new(1);
static NEXT_MEMORY: AtomicU64 = AtomicU64::new(1);

/// The keys' side of an attention (``Attention.memory``): the encoder's outputs with their
/// lengths, and their projection, computed once for every query that attends over them.
#[pyclass(module = "rnn_kernels._native", frozen)]
pub struct AttentionMemory {
    /// Its own identity (a memory never changes), for the saved states of its forward passes.
    id: u64,
    attention: u64,
    steps: usize,
    batch: usize,
    lengths: Vec<usize>,
    mem: AnyMem,
}

#[pymethods]
impl AttentionMemory {
    /// The encoder steps S.
    #[getter]
    fn steps(&self) -> usize {
        self.steps
    }
    /// The sequences B.
    #[getter]
    fn batch_size(&self) -> usize {
        self.batch
    }
    /// The encoder length of each sequence.
    #[getter]
    fn lengths(&self) -> Vec<usize> {
        self.lengths.clone()
    }
    /// The memory of the sequences ``rows`` (row ``i`` reads sequence ``rows[i]``, each in
    /// ``0..B``, repeats allowed): a beam search's hypotheses each attend over their own
    /// sequence's keys (with ``Steps.reorder`` of the decoder's state).
    fn gather(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<AttentionMemory> {
        let rows: Vec<i64> = match rows.cast::<PyUntypedArray>() {
            Ok(a) => {
                a.call_method0("tolist")?.extract().map_err(|_| value("rows", "a 1-D sequence of ints", "an array that is not of ints"))?
            }
            Err(_) => rows.extract().map_err(|_| value("rows", "a 1-D sequence of ints", "another object"))?,
        };
        if rows.is_empty() {
            return Err(value("rows", "at least 1 row", "an empty sequence"));
        }
        let mut idx = Vec::with_capacity(rows.len());
        for (i, &r) in rows.iter().enumerate() {
            match usize::try_from(r) {
                Ok(n) if n < self.batch => idx.push(n),
                _ => return Err(value(&format!("rows[{i}]"), format!("a sequence in 0..{} (the memory's B)", self.batch), r)),
            }
        }
        let mem = py.detach(|| -> PyResult<AnyMem> {
            Ok(match &self.mem {
                AnyMem::F32(m) => AnyMem::F32(m.gather(&idx).or_py()?),
                AnyMem::F64(m) => AnyMem::F64(m.gather(&idx).or_py()?),
            })
        })?;
        let lengths = idx.iter().map(|&r| self.lengths[r]).collect();
        Ok(AttentionMemory { id: next_memory(), attention: self.attention, steps: self.steps, batch: idx.len(), lengths, mem })
    }

    fn __repr__(&self) -> String {
        format!("AttentionMemory(steps={}, batch_size={}, lengths={:?})", self.steps, self.batch, self.lengths)
    }
}

fn next_memory() -> u64 {
    NEXT_MEMORY.fetch_add(1, Ordering::Relaxed)
}

/// What ``Attention.forward_training`` keeps for ``Attention.backward(..., saved=...)``: the
/// forward pass's outputs (copies: changing the arrays it returned does not change them) and
/// its queries, with the identity of its attention and memory. Opaque and immutable: a backward
/// only reads it, so it serves any number of backward calls (e.g. of several upstream
/// gradients), each exactly as the first; it is freed with its last reference.
///
/// A backward checks that it is given this state's Attention (``TypeError`` for another dtype,
/// ``ValueError`` for another object), its memory object (not merely an equal one) and
/// queries of the same shape and values (bit for bit), each error naming the argument.
#[pyclass(module = "rnn_kernels._native", frozen)]
pub struct AttentionSaved {
    attention: u64,
    memory: u64,
    /// `[Tq, B, Hq]`.
    queries: [usize; 3],
    data: AnySaved,
}

impl AttentionSaved {
    fn dtype(&self) -> &'static str {
        match self.data {
            AnySaved::F32(_) => <f32 as Elem>::NAME,
            AnySaved::F64(_) => <f64 as Elem>::NAME,
        }
    }
}

#[pymethods]
impl AttentionSaved {
    /// ``"float32"`` or ``"float64"``: the dtype of its forward pass.
    #[getter(dtype)]
    fn py_dtype(&self) -> &'static str {
        self.dtype()
    }
    /// The shape ``(Tq, B, Hq)`` of its forward pass's queries.
    #[getter]
    fn queries_shape(&self) -> (usize, usize, usize) {
        let [t, b, h] = self.queries;
        (t, b, h)
    }
    /// The bytes it holds (its outputs and its copy of the queries).
    #[getter]
    fn nbytes(&self) -> usize {
        fn n<T>(s: &Saved<T>) -> usize {
            (s.out.weights.len() + s.out.context.len() + s.out.hidden.len() + s.queries.len()) * std::mem::size_of::<T>()
        }
        match &self.data {
            AnySaved::F32(s) => n(s),
            AnySaved::F64(s) => n(s),
        }
    }

    fn __repr__(&self) -> String {
        format!("AttentionSaved(dtype='{}', queries_shape={:?}, nbytes={})", self.dtype(), self.queries_shape(), self.nbytes())
    }
}

/// An attention's parameters on a backend: ``"reference"`` (``float32`` or ``float64``),
/// ``"cpu"`` (``float32``) or, in a build with CUDA, ``"cuda"`` (``float32``). ``params``: a 1-D C-contiguous array of ``config.param_count``
/// elements (copied). ``threads`` (CPU): all cores when ``None``.
#[pyclass(module = "rnn_kernels._native", frozen)]
pub struct Attention {
    id: u64,
    config: Cfg,
    kind: Kind,
    cpu: Option<(Isa, usize)>,
    params: AnyParams,
}

/// The lengths argument: one per sequence in `1..=steps`, all `steps` when `None`.
fn lengths_arg(obj: Option<&Bound<'_, PyAny>>, steps: usize, batch: usize) -> PyResult<Vec<usize>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(vec![steps; batch]);
    };
    let expected = || format!("a 1-D sequence of B = {batch} ints (one per sequence of `keys`) in 1..={steps}");
    let given: Vec<i64> = match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.call_method0("tolist")?.extract().map_err(|_| type_error("lengths", expected(), "an array that is not 1-D of ints"))?,
        Err(_) => obj.extract().map_err(|_| type_error("lengths", expected(), "another object"))?,
    };
    if given.len() != batch {
        return Err(value("lengths", expected(), format!("{} lengths", given.len())));
    }
    given
        .iter()
        .enumerate()
        .map(|(b, &n)| match usize::try_from(n) {
            Ok(n) if (1..=steps).contains(&n) => Ok(n),
            _ => Err(value(&format!("lengths[{b}]"), format!("an encoder length in 1..={steps}"), n)),
        })
        .collect()
}

/// A 3-D input of the attention's dtype: its shape checked for `last` as the last dimension
/// (and `batch` as the second when given).
fn input3<'py, T: Elem>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    dims: &str,
    batch: Option<usize>,
    last: usize,
) -> PyResult<(numpy::PyReadonlyArrayDyn<'py, T>, [usize; 3])> {
    let a = array::<T>(obj, arg, dims)?;
    let s = a.shape().to_vec();
    let ok = s.len() == 3 && s[0] >= 1 && s[1] >= 1 && s[2] == last && batch.is_none_or(|b| s[1] == b);
    if !ok {
        let b = batch.map_or("B ≥ 1".to_string(), |b| format!("B = {b}"));
        return Err(value(arg, format!("shape {dims} with {b} and last dimension {last}"), format!("shape {}", tuple(&s))));
    }
    Ok((readonly::<T>(&a, arg)?, [s[0], s[1], s[2]]))
}

impl Attention {
    /// The backend of a call (`threads`: the call's, else the attention's, on the CPU).
    fn ctx(&self, threads: Option<i64>) -> PyResult<Ctx> {
        let threads = match threads {
            Some(t) => Some(usize::try_from(t).ok().filter(|&n| n >= 1).ok_or_else(|| value("threads", "at least 1 thread", t))?),
            None => None,
        };
        match (self.kind, self.cpu) {
            (Kind::Cpu, Some((isa, n))) => engine::cpu(isa, threads.unwrap_or(n)).or_py().map(Ctx::Cpu),
            (Kind::Cpu, None) => Err(runtime("threads", "missing for the cpu backend (an internal inconsistency of the bindings)")),
            (Kind::Reference, _) => Ok(Ctx::Reference),
            #[cfg(feature = "cuda")]
            (Kind::Cuda, _) => engine::cuda().or_py().map(Ctx::Cuda),
        }
    }

    fn memory_typed<T: AttElem>(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        lengths: Option<&Bound<'_, PyAny>>,
        threads: Option<i64>,
    ) -> PyResult<AttentionMemory> {
        let (k, [s, b, _]) = input3::<T>(keys, "keys", "[S, B, Hk]", None, self.config.key_size())?;
        let lengths = lengths_arg(lengths, s, b)?;
        let shape = AttentionShape::new(1, s, lengths.clone()).or_py()?;
        let ks = slice(&k, "keys")?;
        let p = T::params(&self.params).ok_or_else(|| mismatch("params"))?;
        let ctx = self.ctx(threads)?;
        let mem = py.detach(|| T::backend(&ctx)?.attention_memory(&self.config, &shape, p, ks).or_py())?;
        Ok(AttentionMemory { id: next_memory(), attention: self.id, steps: s, batch: b, lengths, mem: T::wrap_mem(mem) })
    }

    /// The memory and the shape of a call of `queries`.
    fn call_parts<'a, T: AttElem>(&self, memory: &'a AttentionMemory, tq: usize) -> PyResult<(&'a Mem<T>, AttentionShape)> {
        if memory.attention != self.id {
            return Err(value("memory", "a memory made by this Attention (att.memory(keys, lengths))", "one of another Attention"));
        }
        let m = T::mem(&memory.mem).ok_or_else(|| mismatch("memory"))?;
        Ok((m, AttentionShape::new(tq, memory.steps, memory.lengths.clone()).or_py()?))
    }

    /// The forward pass: `(hidden, context, weights)`, and with `save` its saved state last.
    fn forward_typed<'py, T: AttElem>(
        &self,
        py: Python<'py>,
        memory: &AttentionMemory,
        queries: &Bound<'py, PyAny>,
        threads: Option<i64>,
        save: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = &self.config;
        let (q, qshape @ [tq, b, _]) = input3::<T>(queries, "queries", "[Tq, B, Hq]", Some(memory.batch), cfg.query_size())?;
        let (m, shape) = self.call_parts::<T>(memory, tq)?;
        let qs = slice(&q, "queries")?;
        let p = T::params(&self.params).ok_or_else(|| mismatch("params"))?;
        let ctx = self.ctx(threads)?;
        let (out, saved) = py.detach(|| -> PyResult<_> {
            let out = T::backend(&ctx)?.attention_forward_with(cfg, &shape, p, m, qs).or_py()?;
            // Copies: the arrays returned are the caller's to change.
            let saved = save.then(|| Saved { out: out.clone(), queries: qs.to_vec() });
            Ok((out, saved))
        })?;
        let hidden = if cfg.output_size() > 0 { out3(py, out.hidden, [tq, b, cfg.output_size()])? } else { py.None().into_bound(py) };
        let context = out3(py, out.context, [tq, b, cfg.key_size()])?;
        let weights = out3(py, out.weights, [tq, b, memory.steps])?;
        match saved {
            None => PyTuple::new(py, [hidden, context, weights]),
            Some(data) => {
                let saved = AttentionSaved { attention: self.id, memory: memory.id, queries: qshape, data: T::wrap_saved(data) };
                PyTuple::new(py, [hidden, context, weights, Bound::new(py, saved)?.into_any()])
            }
        }
    }

    /// The outputs kept in `saved` after checking that it is the state of a forward pass of this
    /// attention over `memory` with these queries.
    fn saved_out<'a, T: AttElem>(
        &self,
        saved: &'a AttentionSaved,
        memory: &AttentionMemory,
        qshape: [usize; 3],
        qs: &[T],
    ) -> PyResult<&'a AttentionOutput<T>> {
        let Some(data) = T::saved(&saved.data) else {
            return Err(type_error(
                "saved",
                format!("the saved state of a {} forward pass (this Attention's dtype)", T::NAME),
                format!("one of a {} forward pass", saved.dtype()),
            ));
        };
        if saved.attention != self.id {
            return Err(value(
                "saved",
                "the saved state of a forward_training of this Attention",
                "one of another Attention (call backward on the Attention that saved it)",
            ));
        }
        if saved.memory != memory.id {
            return Err(value(
                "memory",
                "the memory object of the forward_training that saved `saved`",
                "another memory (an equal one made again is another memory: pass the same object)",
            ));
        }
        if saved.queries != qshape {
            return Err(value(
                "queries",
                format!("shape {} (the queries of the forward_training that saved `saved`)", tuple(&saved.queries)),
                format!("shape {}", tuple(&qshape)),
            ));
        }
        let same = data.queries.iter().zip(qs).all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits());
        if !same {
            return Err(value(
                "queries",
                "the queries of the forward_training that saved `saved`, bit for bit",
                "queries of the same shape with other values",
            ));
        }
        Ok(&data.out)
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_typed<'py, T: AttElem>(
        &self,
        py: Python<'py>,
        memory: &AttentionMemory,
        queries: &Bound<'py, PyAny>,
        d_hidden: Option<&Bound<'py, PyAny>>,
        d_context: Option<&Bound<'py, PyAny>>,
        d_weights: Option<&Bound<'py, PyAny>>,
        threads: Option<i64>,
        saved: Option<&AttentionSaved>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = &self.config;
        let (q, qshape @ [tq, b, _]) = input3::<T>(queries, "queries", "[Tq, B, Hq]", Some(memory.batch), cfg.query_size())?;
        let (m, shape) = self.call_parts::<T>(memory, tq)?;
        let qs = slice(&q, "queries")?;
        let saved = saved.map(|s| self.saved_out::<T>(s, memory, qshape, qs)).transpose()?;
        let grad = |obj: Option<&Bound<'py, PyAny>>,
                    arg: &str,
                    dims: &str,
                    want: [usize; 3]|
         -> PyResult<Option<numpy::PyReadonlyArrayDyn<'py, T>>> {
            match obj.filter(|o| !o.is_none()) {
                None => Ok(None),
                Some(o) => {
                    let a = array::<T>(o, arg, dims)?;
                    check_shape(&a, arg, dims, &want)?;
                    Ok(Some(readonly::<T>(&a, arg)?))
                }
            }
        };
        if cfg.output_size() == 0 && d_hidden.is_some_and(|d| !d.is_none()) {
            return Err(value("d_hidden", "None: this attention has no attentional hidden state (output_size 0)", "an array"));
        }
        let dh = grad(d_hidden, "d_hidden", "[Tq, B, O]", [tq, b, cfg.output_size()])?;
        let dc = grad(d_context, "d_context", "[Tq, B, Hk]", [tq, b, cfg.key_size()])?;
        let dw = grad(d_weights, "d_weights", "[Tq, B, S]", [tq, b, memory.steps])?;
        let sl = |a: &'_ Option<numpy::PyReadonlyArrayDyn<'py, T>>, arg: &str| {
            a.as_ref().map(|a| slice(a, arg)).transpose().map(|o| o.map(|s| s.to_vec()))
        };
        let (dh, dc, dw) = (sl(&dh, "d_hidden")?, sl(&dc, "d_context")?, sl(&dw, "d_weights")?);
        let p = T::params(&self.params).ok_or_else(|| mismatch("params"))?;
        let ctx = self.ctx(threads)?;
        let (dq, dk, dp) = py.detach(|| -> PyResult<(Vec<T>, Vec<T>, Vec<T>)> {
            let be = T::backend(&ctx)?;
            // The forward's outputs: saved by forward_training, or recomputed.
            let recomputed: AttentionOutput<T>;
            let out = match saved {
                Some(out) => out,
                None => {
                    recomputed = be.attention_forward_with(cfg, &shape, p, m, qs).or_py()?;
                    &recomputed
                }
            };
            let up = AttentionUpstream { d_weights: dw.as_deref(), d_context: dc.as_deref(), d_hidden: dh.as_deref() };
            let mut d_memory = AttentionMemoryGrads::new(m);
            let mut g = be.attention_backward_with(cfg, &shape, p, m, qs, out, up, &mut d_memory).or_py()?;
            let k = be.attention_memory_backward(cfg, &shape, p, m, &d_memory).or_py()?;
            for (d, x) in g.d_params.iter_mut().zip(&k.d_params) {
                *d += *x;
            }
            Ok((g.d_queries, k.d_keys, g.d_params))
        })?;
        let dq = out3(py, dq, [tq, b, cfg.query_size()])?;
        let dk = out3(py, dk, [memory.steps, b, cfg.key_size()])?;
        PyTuple::new(py, [dq, dk, out1(py, dp)])
    }
}

macro_rules! dispatch {
    ($self:ident, $f:ident, $($a:expr),*) => {
        match &$self.params {
            AnyParams::F32(_) => $self.$f::<f32>($($a),*),
            AnyParams::F64(_) => $self.$f::<f64>($($a),*),
        }
    };
}

#[pymethods]
impl Attention {
    #[new]
    #[pyo3(signature = (config, params, backend="cpu", threads=None))]
    fn py_new(
        py: Python<'_>,
        config: PyRef<'_, AttentionConfig>,
        params: &Bound<'_, PyAny>,
        backend: &str,
        threads: Option<i64>,
    ) -> PyResult<Self> {
        let kind = match backend {
            "reference" => Kind::Reference,
            "cpu" => Kind::Cpu,
            #[cfg(feature = "cuda")]
            "cuda" => Kind::Cuda,
            other => return Err(value("backend", format!("one of {:?}", crate::backends()), format!("{other:?}"))),
        };
        let cfg = config.inner.clone();
        let n = cfg.param_len();
        let dims = "[param_count]";
        let Ok(a) = params.cast::<PyUntypedArray>() else {
            return Err(type_error("params", format!("a 1-D numpy.ndarray of float32 or float64 with shape {dims}"), "another type"));
        };
        let dt = a.dtype();
        fn copy<T: AttElem>(params: &Bound<'_, PyAny>, n: usize) -> PyResult<AnyParams> {
            let a = array::<T>(params, "params", "[param_count]")?;
            check_shape(&a, "params", "[param_count]", &[n])?;
            let ro = readonly::<T>(&a, "params")?;
            Ok(T::wrap_params(slice(&ro, "params")?.to_vec()))
        }
        let p = if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
            copy::<f32>(params, n)?
        } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
            if kind != Kind::Reference {
                return Err(type_error(
                    "params",
                    format!("dtype float32 for backend \"{}\" (float64 runs on backend \"reference\")", kind.name()),
                    "dtype float64",
                ));
            }
            copy::<f64>(params, n)?
        } else {
            return Err(type_error("params", "dtype float32 or float64 (float64: backend \"reference\" only)", format!("dtype {dt}")));
        };
        let cpu = match kind {
            Kind::Cpu => {
                let threads = match threads {
                    Some(t) => usize::try_from(t).ok().filter(|&n| n >= 1).ok_or_else(|| value("threads", "at least 1 thread", t))?,
                    None => std::thread::available_parallelism().map_or(1, |n| n.get()),
                };
                Some((Isa::from_env().or_py()?, threads))
            }
            _ => None,
        };
        #[cfg(feature = "cuda")]
        if kind == Kind::Cuda {
            // Opens the device now, so that a machine without one fails here, naming what is missing.
            engine::cuda().or_py()?;
        }
        Ok(Attention { id: NEXT_ATTENTION.fetch_add(1, Ordering::Relaxed), config: cfg, kind, cpu, params: p })
    }

    /// The configuration.
    #[getter]
    fn config(&self) -> AttentionConfig {
        AttentionConfig { inner: self.config.clone() }
    }
    /// ``"float32"`` or ``"float64"``.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.params {
            AnyParams::F32(_) => <f32 as Elem>::NAME,
            AnyParams::F64(_) => <f64 as Elem>::NAME,
        }
    }
    /// ``"reference"``, ``"cpu"`` or ``"cuda"``.
    #[getter]
    fn backend(&self) -> &'static str {
        self.kind.name()
    }

    /// The keys' side: ``keys: [S, B, Hk]`` (the encoder's outputs, time-major), ``lengths``
    /// one encoder length per sequence in ``1..=S`` (all S when ``None``); the keys past a
    /// length are never read.
    #[pyo3(signature = (keys, lengths=None, threads=None))]
    fn memory(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        lengths: Option<&Bound<'_, PyAny>>,
        threads: Option<i64>,
    ) -> PyResult<AttentionMemory> {
        dispatch!(self, memory_typed, py, keys, lengths, threads)
    }

    /// ``queries: [Tq, B, Hq]`` attending over ``memory``: ``(hidden, context, weights)``,
    /// ``hidden: [Tq, B, O]`` the attentional hidden state ``tanh(W_c [c; q])`` (``None`` when
    /// ``output_size`` is 0), ``context: [Tq, B, Hk]``, ``weights: [Tq, B, S]`` (the masked
    /// softmax, exactly 0 past each length). Keeps nothing: ``forward_training`` for a
    /// backward.
    #[pyo3(signature = (memory, queries, threads=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        memory: PyRef<'py, AttentionMemory>,
        queries: &Bound<'py, PyAny>,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        dispatch!(self, forward_typed, py, &memory, queries, threads, false)
    }

    /// A training forward pass: ``forward``'s outputs, the same values bit for bit, and what
    /// the backward needs of it: ``(hidden, context, weights, saved)``, ``saved`` an
    /// ``AttentionSaved`` for ``backward(memory, queries, ..., saved=saved)``, which then does
    /// not recompute the forward (cuDNN's reserve space). ``saved`` holds copies of the
    /// outputs and the queries (``saved.nbytes``).
    #[pyo3(signature = (memory, queries, threads=None))]
    fn forward_training<'py>(
        &self,
        py: Python<'py>,
        memory: PyRef<'py, AttentionMemory>,
        queries: &Bound<'py, PyAny>,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        dispatch!(self, forward_typed, py, &memory, queries, threads, true)
    }

    /// The backward of ``forward(memory, queries)`` from the gradients w.r.t. its outputs (each
    /// zeros when ``None``): ``(d_queries [Tq, B, Hq], d_keys [S, B, Hk] (0 past each length),
    /// d_params)``, the parameter gradients through both the queries' and the keys' side.
    ///
    /// ``saved``: the state of ``forward_training(memory, queries)``, whose outputs it uses
    /// instead of recomputing the forward (the same gradients, bit for bit, as without it when
    /// both forward passes run with the same ``threads``); it must come from
    /// this Attention (``TypeError`` for another dtype, ``ValueError`` for another object), with
    /// this ``memory`` object and these ``queries`` (same shape and values; ``ValueError``
    /// naming the argument). A backward does not change it: it may serve several. ``None``
    /// recomputes the forward.
    #[pyo3(signature = (memory, queries, d_hidden=None, d_context=None, d_weights=None, threads=None, saved=None))]
    #[allow(clippy::too_many_arguments)]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        memory: PyRef<'py, AttentionMemory>,
        queries: &Bound<'py, PyAny>,
        d_hidden: Option<&Bound<'py, PyAny>>,
        d_context: Option<&Bound<'py, PyAny>>,
        d_weights: Option<&Bound<'py, PyAny>>,
        threads: Option<i64>,
        saved: Option<PyRef<'py, AttentionSaved>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        dispatch!(self, backward_typed, py, &memory, queries, d_hidden, d_context, d_weights, threads, saved.as_deref())
    }

    /// A copy of the parameters, flat.
    fn params<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.params {
            AnyParams::F32(v) => out1(py, v.clone()),
            AnyParams::F64(v) => out1(py, v.clone()),
        }
    }

    fn __repr__(&self) -> String {
        format!("Attention({}, dtype='{}', backend='{}')", self.config().__repr__(), self.dtype(), self.kind.name())
    }
}
