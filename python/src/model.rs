//! `Model` (a configuration's plan on a backend) and `Reserve` (what a training forward pass
//! keeps for backward).
//!
//! A model keeps its plan behind an `Arc` that every reserve it fills shares until the reserve
//! is released: `update_params` repacks the plan in place when nothing else holds it, and
//! otherwise builds a new plan (copy on write), so that a reserve always backpropagates through
//! the weights its forward pass used. All computation runs with the GIL released; the locks are
//! only ever taken without it.

use crate::arrays::{array, check_shape, out1, out3, readonly, slice, tuple, zeros};
use crate::config::Config;
use crate::engine::{self, Buffers, Ctx, Elem, Kind, Plan, SharedPlan};
use crate::errors::{runtime, type_error, value, OrPy};
use crate::steps::{dispatch, BackwardSteps, Engine, Flavour, StepKind, Steps};
use numpy::{PyArray3, PyArrayMethods};
use numpy::{PyArrayDescrMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rnn_kernels::masks::{required_sites, MaskKind, MaskSite, MaskStream, SuppliedMasks};
use rnn_kernels::{BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode, Isa, RnnConfig, SeqShape};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The element type of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => <f32 as Elem>::NAME,
            Dtype::F64 => <f64 as Elem>::NAME,
        }
    }
}

/// What a training forward pass keeps for ``Model.backward``. ``Reserve()`` makes an empty one;
/// ``forward_training(..., reserve=r)`` refills ``r`` (reusing its memory) when it is not
/// ``in_use``.
///
/// A filled reserve holds the weights its forward pass was computed with (a later
/// ``update_params`` of the model does not change them) until ``release()``, which keeps its
/// buffers for the next ``forward_training``.
#[pyclass(module = "rnn_kernels._native", frozen)]
#[derive(Default)]
pub struct Reserve {
    state: RwLock<ReserveState>,
}

#[derive(Default)]
struct ReserveState {
    /// The model that filled it (its id).
    model: u64,
    /// The plan of the forward pass that filled it; `None` while empty or released.
    plan: Option<SharedPlan>,
    /// Whether a forward pass ever filled it (to tell an empty reserve from a released one).
    filled: bool,
    buffers: Buffers,
}

impl Reserve {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ReserveState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ReserveState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Reserve {
    #[new]
    fn py_new() -> Self {
        Reserve::default()
    }

    /// Whether a forward pass filled it and it was not released since.
    #[getter]
    fn in_use(&self, py: Python<'_>) -> bool {
        py.detach(|| self.read().plan.is_some())
    }

    /// The bytes of memory its buffers hold, device memory for a ``cuda`` model's (the weights it
    /// holds while in use not counted).
    #[getter]
    fn nbytes(&self, py: Python<'_>) -> usize {
        py.detach(|| self.read().buffers.nbytes())
    }

    /// Drops its hold on the weights it was computed with; keeps its buffers for reuse.
    fn release(&self, py: Python<'_>) {
        py.detach(|| self.write().plan = None)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (in_use, nbytes) = py.detach(|| {
            let s = self.read();
            (s.plan.is_some(), s.buffers.nbytes())
        });
        format!("Reserve(in_use={}, nbytes={nbytes})", if in_use { "True" } else { "False" })
    }
}

/// A configuration's parameters planned on a backend: the reference (``float32`` or
/// ``float64``), the CPU backend (``float32``), or, in a build with CUDA (``"cuda" in
/// backends()``), the GPU (``float32``: the weights and a training pass's reserve stay in device
/// memory; each call uploads its arrays and downloads its results).
///
/// ``params``: a 1-D C-contiguous array of ``config.param_count`` elements (the layout of
/// ``config.param_specs()``); its dtype is the model's. ``threads`` (CPU): the default thread
/// count of its calls, all cores when ``None``; every model with the same ISA and thread count
/// shares one pool of threads. ``isa`` (CPU): ``"avx2"``, ``"avx512"``, ``"amx"``, ``"neon"`` or
/// ``"scalar"``; ``None`` for ``default_isa()``.
#[pyclass(module = "rnn_kernels._native", frozen)]
pub struct Model {
    id: u64,
    config: RnnConfig,
    kind: Kind,
    dtype: Dtype,
    isa: Option<Isa>,
    threads: usize,
    state: Mutex<ModelState>,
}

struct ModelState {
    plan: SharedPlan,
    /// Plans built by `update_params` because a reserve (or a running call) held the current one.
    generation: u64,
    /// `update_params` calls.
    updates: u64,
}

/// The reserve of a training call: an existing one, or a new one.
enum TrainingReserve<'a> {
    Existing(&'a Reserve),
    New,
}

/// What a forward call returns before it becomes Python objects.
struct Outputs<T> {
    y: Vec<T>,
    hn: Vec<T>,
    cn: Option<Vec<T>>,
    /// A new reserve's state (training without a given reserve).
    reserve: Option<ReserveState>,
}

/// What a backward call returns before it becomes Python objects.
type Grads<T> = (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>);

static NEXT_MODEL: AtomicU64 = AtomicU64::new(1);

/// A seed for the masks of a training call that was given none: from the standard library's
/// per-process random keys and a counter, different on every call.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A training call's masks and reserve: drawn from `seed` (a fresh one when `None`) or the
/// caller's `supplied` ones; `reserve` to refill, or `None` for a new one.
pub(crate) struct Training<'a, 'py> {
    seed: Option<u64>,
    reserve: Option<&'a Bound<'py, Reserve>>,
    supplied: Option<SuppliedMasks>,
}

/// A mask of `Model.mask_sites`: `(layer, direction, kind, (steps, rows, units))`.
type MaskSiteTuple = (usize, usize, &'static str, (usize, usize, usize));

/// The name of a mask kind in Python: the option it belongs to.
fn kind_name(k: MaskKind) -> &'static str {
    match k {
        MaskKind::LayerOutput => "dropout",
        MaskKind::RecurrentH => "recurrent_dropout",
        MaskKind::LayerInput => "input_dropout",
        MaskKind::ZoneoutH => "zoneout",
        MaskKind::ZoneoutC => "zoneout_cell",
    }
}

/// The shape of `mask_sites` and `read_masks`: at least one step and one sequence.
fn mask_shape(steps: i64, batch: i64) -> PyResult<SeqShape> {
    let steps = usize::try_from(steps).ok().filter(|&s| s > 0).ok_or_else(|| value("steps", "at least 1", steps))?;
    let batch = usize::try_from(batch).ok().filter(|&b| b > 0).ok_or_else(|| value("batch", "at least 1", batch))?;
    SeqShape::new(steps, batch).or_py()
}

/// The `masks` argument: a dict `{(layer, direction, kind): bool array [steps, rows, units]}`
/// (a `TypeError` naming `masks` for another type, a `ValueError` for a bad key or array).
fn parse_masks(obj: &Bound<'_, PyAny>) -> PyResult<SuppliedMasks> {
    const WANT: &str = "a dict {(layer, direction, kind): numpy.ndarray of dtype bool with shape [steps, rows, units]}";
    let type_name = |o: &Bound<'_, PyAny>| o.get_type().name().map_or_else(|_| "an object".to_string(), |n| format!("a {n}"));
    let dict = obj.cast::<PyDict>().map_err(|_| type_error("masks", WANT, type_name(obj)))?;
    let mut out = SuppliedMasks::new();
    for (key, hits) in dict.iter() {
        let (layer, direction, kind): (usize, usize, String) = key
            .extract()
            .map_err(|_| type_error("masks", "keys (layer, direction, kind) of two ints and a str", format!("the key {key}")))?;
        let kind = MaskKind::ALL.into_iter().find(|&k| kind_name(k) == kind).ok_or_else(|| {
            value("masks", "kinds dropout, recurrent_dropout, input_dropout, zoneout or zoneout_cell", format!("the kind {kind:?}"))
        })?;
        let site = MaskSite::new(layer, direction, kind)
            .map_err(|e| value("masks", "keys of a layer and a direction of the stack", format!("{key}: {e}")))?;
        let arr = hits.cast::<PyArray3<bool>>().map_err(|_| {
            type_error("masks", format!("{key}: a numpy.ndarray of dtype bool with shape [steps, rows, units]"), type_name(&hits))
        })?;
        let ro = arr.try_readonly().map_err(|e| runtime("masks", format!("{key} cannot be read: {e}")))?;
        let s = ro.shape().to_vec();
        let flat = ro
            .as_slice()
            .map_err(|_| value("masks", format!("{key}: a C-contiguous array"), format!("an array of shape {}", tuple(&s))))?;
        out.insert(site, s[0], s[1], s[2], flat).map_err(|e| value("masks", format!("{key}: a mask of its kind's extent"), e))?;
    }
    Ok(out)
}

/// Whether a training pass of `cfg` draws random masks.
fn needs_masks(cfg: &RnnConfig) -> bool {
    cfg.dropout().is_some()
        || cfg.zoneout().is_some()
        || cfg.zoneout_cell().is_some()
        || cfg.recurrent_dropout().is_some()
        || cfg.input_dropout().is_some()
}

/// A seed argument: an int in `[-2^63, 2^64)`, a negative one taken as its 64-bit two's
/// complement (so that NumPy's and PyTorch's signed 64-bit seeds are all valid).
fn parse_seed(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    if !obj.is_instance_of::<pyo3::types::PyInt>() && !obj.hasattr("__index__")? {
        let t = obj.get_type().name().map_or_else(|_| "an object".to_string(), |n| n.to_string());
        return Err(type_error("seed", "an int", format!("a {t}")));
    }
    if let Ok(s) = obj.extract::<u64>() {
        return Ok(s);
    }
    match obj.extract::<i64>() {
        Ok(s) => Ok(s as u64),
        Err(_) => Err(value("seed", "an int in [-2**63, 2**64)", obj.str().map_or_else(|_| "another int".to_string(), |s| s.to_string()))),
    }
}

/// A thread count argument.
fn thread_count(arg: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).ok().filter(|&n| n >= 1).ok_or_else(|| value(arg, "at least 1 thread", v))
}

/// The call's shape from `x`'s steps and batch and the optional `lengths`.
fn seq_shape(lengths: Option<&Bound<'_, PyAny>>, steps: usize, batch: usize) -> PyResult<SeqShape> {
    let Some(obj) = lengths.filter(|l| !l.is_none()) else {
        return SeqShape::new(steps, batch).or_py();
    };
    let expected = || format!("a 1-D sequence of B = {batch} ints (one per sequence of `x`) in 1..={steps}");
    let given: Vec<i64> = match obj.cast::<PyUntypedArray>() {
        Ok(a) => {
            if a.ndim() != 1 || !matches!(a.dtype().kind(), b'i' | b'u') {
                return Err(type_error("lengths", expected(), format!("an array of dtype {} with shape {}", a.dtype(), tuple(a.shape()))));
            }
            a.call_method0("tolist")?.extract().map_err(|_| type_error("lengths", expected(), "an array that is not of ints"))?
        }
        Err(_) if obj.is_instance_of::<pyo3::types::PyString>() => return Err(type_error("lengths", expected(), "a str")),
        Err(_) => obj.extract().map_err(|_| {
            let t = obj.get_type().name().map_or_else(|_| "an object".to_string(), |n| n.to_string());
            type_error("lengths", expected(), format!("a {t} that is not a sequence of ints"))
        })?,
    };
    if given.len() != batch {
        return Err(value("lengths", expected(), format!("{} lengths", given.len())));
    }
    let mut lengths = Vec::with_capacity(batch);
    for (b, &n) in given.iter().enumerate() {
        match usize::try_from(n) {
            Ok(n) if (1..=steps).contains(&n) => lengths.push(n),
            _ => return Err(value(&format!("lengths[{b}]"), format!("a length in 1..={steps} (the steps of `x`)"), n)),
        }
    }
    if lengths.iter().all(|&n| n == steps) {
        SeqShape::new(steps, batch).or_py()
    } else {
        SeqShape::with_lengths(steps, lengths).or_py()
    }
}

/// An optional state argument (`h0`, `c0`, `dhn`, `dcn`), checked against its shape.
fn state_arg<'py, T: Elem>(
    obj: Option<&Bound<'py, PyAny>>,
    arg: &str,
    dims: &str,
    want: [usize; 3],
) -> PyResult<Option<PyReadonlyArrayDyn<'py, T>>> {
    match obj.filter(|o| !o.is_none()) {
        None => Ok(None),
        Some(o) => {
            let a = array::<T>(o, arg, dims)?;
            check_shape(&a, arg, dims, &want)?;
            Ok(Some(readonly::<T>(&a, arg)?))
        }
    }
}

/// `Some(slice)` of an optional borrowed array.
fn opt_slice<'a, T: Elem>(a: &'a Option<PyReadonlyArrayDyn<'_, T>>, arg: &str) -> PyResult<Option<&'a [T]>> {
    a.as_ref().map(|a| slice(a, arg)).transpose()
}

/// A cell state argument given to a cell without one.
fn no_cell_state(arg: &str, cfg: &RnnConfig) -> PyErr {
    value(arg, format!("None: a {} has no cell state (only an LSTM has one)", cfg.cell().name()), "an array")
}

impl Model {
    fn state(&self) -> std::sync::MutexGuard<'_, ModelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current plan (shared: the caller computes with it without the lock).
    fn plan(&self) -> SharedPlan {
        self.state().plan.clone()
    }

    /// The element type and backend of its decoder steps.
    fn flavour(&self) -> Flavour {
        Flavour::of(self.kind, self.dtype.name())
    }

    /// The backend of a call: the CPU backend of the model's ISA on `threads` threads (the
    /// call's, else the model's), the reference, or the CUDA device.
    fn ctx_for(&self, threads: Option<i64>) -> PyResult<Ctx> {
        let threads = threads.map(|t| thread_count("threads", t)).transpose()?;
        Model::ctx_of(self.kind, self.isa, threads.unwrap_or(self.threads))
    }

    fn ctx_of(kind: Kind, isa: Option<Isa>, threads: usize) -> PyResult<Ctx> {
        match (kind, isa) {
            (Kind::Cpu, Some(isa)) => engine::cpu(isa, threads).or_py().map(Ctx::Cpu),
            (Kind::Cpu, None) => Err(runtime("isa", "missing for the cpu backend (an internal inconsistency of the bindings)")),
            (Kind::Reference, _) => Ok(Ctx::Reference),
            #[cfg(feature = "cuda")]
            (Kind::Cuda, _) => engine::cuda().or_py().map(Ctx::Cuda),
        }
    }

    fn steps_engine(&self, threads: Option<i64>) -> PyResult<Engine> {
        let threads = threads.map(|t| thread_count("threads", t)).transpose()?;
        Ok(Engine {
            model: self.id,
            config: self.config.clone(),
            plan: self.plan(),
            ctx: Model::ctx_of(self.kind, self.isa, threads.unwrap_or(self.threads))?,
            dtype: self.dtype.name(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn start_steps_typed<K: StepKind>(
        &self,
        py: Python<'_>,
        batch: usize,
        h0: Option<&Bound<'_, PyAny>>,
        c0: Option<&Bound<'_, PyAny>>,
        training: bool,
        seed: Option<u64>,
        supplied: Option<SuppliedMasks>,
        threads: Option<i64>,
    ) -> PyResult<Steps> {
        let cfg = &self.config;
        if cfg.num_directions() != 1 || cfg.reverse_only() {
            return Err(value(
                "config",
                "a forward (unidirectional) stack: the steps of a decoder run forward in time",
                if cfg.reverse_only() { "a reverse-only stack" } else { "a bidirectional stack" },
            ));
        }
        if batch == 0 {
            return Err(value("batch", "at least 1 row", 0));
        }
        let shape = SeqShape::new(1, batch).or_py()?;
        let h0 = state_arg::<K::T>(h0, "h0", "[L, B, Hout]", shape.h_shape(cfg))?;
        if !cfg.cell().has_cell_state() && c0.is_some_and(|c| !c.is_none()) {
            return Err(no_cell_state("c0", cfg));
        }
        let c0 = state_arg::<K::T>(c0, "c0", "[L, B, H]", shape.c_shape(cfg))?;
        let (h0s, c0s) = (opt_slice(&h0, "h0")?, opt_slice(&c0, "c0")?);
        let engine = self.steps_engine(threads)?;
        let masks = match supplied {
            Some(m) => Some(MaskStream::supplied(m)),
            None => needs_masks(cfg).then(|| MaskStream::new(seed.unwrap_or_else(fresh_seed), 0)),
        };
        py.detach(|| Steps::start::<K>(engine, batch, h0s, c0s, training, masks))
    }

    fn backward_steps_typed<K: StepKind>(
        &self,
        py: Python<'_>,
        steps: &Steps,
        dhn: Option<&Bound<'_, PyAny>>,
        dcn: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<BackwardSteps> {
        let cfg = &self.config;
        if steps.model() != self.id {
            return Err(value("steps", "a run started by this model (Model.start_steps)", "a run of another Model"));
        }
        let shape = SeqShape::new(1, steps.batch(py)).or_py()?;
        let dhn = state_arg::<K::T>(dhn, "dhn", "[L, B, Hout]", shape.h_shape(cfg))?;
        if !cfg.cell().has_cell_state() && dcn.is_some_and(|c| !c.is_none()) {
            return Err(no_cell_state("dcn", cfg));
        }
        let dcn = state_arg::<K::T>(dcn, "dcn", "[L, B, H]", shape.c_shape(cfg))?;
        steps.walk::<K>(py, opt_slice(&dhn, "dhn")?, opt_slice(&dcn, "dcn")?)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_typed<'py, T: Elem>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        threads: Option<i64>,
        training: Option<Training<'_, 'py>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = &self.config;
        let x_dims = if cfg.batch_first() { "[B, T, I]" } else { "[T, B, I]" };
        let xa = array::<T>(x, "x", x_dims)?;
        let s = xa.shape();
        if s.len() != 3 || s[2] != cfg.input_size() || s[0] == 0 || s[1] == 0 {
            return Err(value(
                "x",
                format!("shape {x_dims} with I = {} (the config's input_size) and T, B at least 1", cfg.input_size()),
                format!("shape {}", tuple(s)),
            ));
        }
        let (steps, batch) = if cfg.batch_first() { (s[1], s[0]) } else { (s[0], s[1]) };
        let shape = seq_shape(lengths, steps, batch)?;
        let h0 = state_arg::<T>(h0, "h0", "[L·D, B, Hout]", shape.h_shape(cfg))?;
        let has_c = cfg.cell().has_cell_state();
        if !has_c && c0.is_some_and(|c| !c.is_none()) {
            return Err(no_cell_state("c0", cfg));
        }
        let c0 = state_arg::<T>(c0, "c0", "[L·D, B, H]", shape.c_shape(cfg))?;
        let x_ro = readonly::<T>(&xa, "x")?;
        let (x, h0s, c0s) = (slice(&x_ro, "x")?, opt_slice(&h0, "h0")?, opt_slice(&c0, "c0")?);
        let ctx = self.ctx_for(threads)?;
        // The reserve given to a training call (`Some(None)`: none, a new one is returned).
        let given = training.as_ref().map(|t| t.reserve);
        let (masks, reserve) = match training {
            None => (None, None),
            Some(Training { seed, reserve, supplied }) => {
                let masks = match supplied {
                    Some(m) => Some(MaskStream::supplied(m)),
                    None => needs_masks(cfg).then(|| MaskStream::new(seed.unwrap_or_else(fresh_seed), 0)),
                };
                (masks, Some(reserve.map_or(TrainingReserve::New, |r| TrainingReserve::Existing(r.get()))))
            }
        };
        let (y_shape, h_shape, c_shape) = (shape.y_shape(cfg), shape.h_shape(cfg), shape.c_shape(cfg));
        let out = py.detach(|| -> PyResult<Outputs<T>> {
            let plan = self.plan();
            let mut o = Outputs {
                y: zeros("y", &y_shape)?,
                hn: zeros("hn", &h_shape)?,
                cn: if has_c { Some(zeros("cn", &c_shape)?) } else { None },
                reserve: None,
            };
            let input = ForwardInput { x, h0: h0s, c0: c0s, masks };
            let output = ForwardOutput { y: &mut o.y[..], hn: Some(&mut o.hn[..]), cn: o.cn.as_deref_mut() };
            match reserve {
                None => T::forward(&plan, &ctx, &shape, input, output, None).or_py()?,
                Some(TrainingReserve::Existing(r)) => {
                    let mut st = r.write();
                    if st.plan.is_some() {
                        return Err(runtime(
                            "reserve",
                            "in use: it holds a forward pass not released yet (call reserve.release() when done with its backward, or pass reserve=None for a new one)",
                        ));
                    }
                    T::forward(&plan, &ctx, &shape, input, output, Some(&mut st.buffers)).or_py()?;
                    st.model = self.id;
                    st.plan = Some(plan.clone());
                    st.filled = true;
                }
                Some(TrainingReserve::New) => {
                    let mut st = ReserveState::default();
                    T::forward(&plan, &ctx, &shape, input, output, Some(&mut st.buffers)).or_py()?;
                    st.model = self.id;
                    st.plan = Some(plan.clone());
                    st.filled = true;
                    o.reserve = Some(st);
                }
            }
            Ok(o)
        })?;
        let y = out3(py, out.y, y_shape)?;
        let hn = out3(py, out.hn, h_shape)?;
        let cn = match out.cn {
            Some(c) => out3(py, c, c_shape)?,
            None => py.None().into_bound(py),
        };
        match given {
            None => PyTuple::new(py, [y, hn, cn]),
            Some(given) => {
                let r = match (given, out.reserve) {
                    (Some(r), _) => r.clone().into_any(),
                    (None, Some(st)) => Bound::new(py, Reserve { state: RwLock::new(st) })?.into_any(),
                    (None, None) => return Err(runtime("reserve", "no reserve was filled (an internal inconsistency of the bindings)")),
                };
                PyTuple::new(py, [y, hn, cn, r])
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_typed<'py, T: Elem>(
        &self,
        py: Python<'py>,
        reserve: &Bound<'py, Reserve>,
        dy: Option<&Bound<'py, PyAny>>,
        dhn: Option<&Bound<'py, PyAny>>,
        dcn: Option<&Bound<'py, PyAny>>,
        need: (bool, bool, bool),
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = &self.config;
        let r = reserve.get();
        // The shape and plan of the call that filled the reserve, to check the gradients
        // against; taken again (and compared) under the lock of the computation.
        let (shape, plan) = {
            let st = r.state.try_read().map_err(|_| runtime("reserve", "in use by a call running in another thread"))?;
            match &st.plan {
                None if !st.filled => return Err(runtime("reserve", "empty: fill it with forward_training first")),
                None => return Err(runtime("reserve", "released: its forward pass is gone; run forward_training again")),
                Some(_) if st.model != self.id => {
                    return Err(runtime("reserve", "filled by another Model: call backward on the model whose forward_training filled it"))
                }
                Some(p) => {
                    let shape = st
                        .buffers
                        .shape_of::<T>()
                        .ok_or_else(|| runtime("reserve", format!("not filled by a {} forward pass", T::NAME)))?;
                    (shape.clone(), p.clone())
                }
            }
        };
        let y_dims = if cfg.batch_first() { "[B, T, D·Hout]" } else { "[T, B, D·Hout]" };
        let (x_shape, y_shape, h_shape, c_shape) = (shape.x_shape(cfg), shape.y_shape(cfg), shape.h_shape(cfg), shape.c_shape(cfg));
        let dy = state_arg::<T>(dy, "dy", y_dims, y_shape)?;
        let dhn = state_arg::<T>(dhn, "dhn", "[L·D, B, Hout]", h_shape)?;
        let has_c = cfg.cell().has_cell_state();
        if !has_c && dcn.is_some_and(|c| !c.is_none()) {
            return Err(no_cell_state("dcn", cfg));
        }
        let dcn = state_arg::<T>(dcn, "dcn", "[L·D, B, H]", c_shape)?;
        let (dys, dhns, dcns) = (opt_slice(&dy, "dy")?, opt_slice(&dhn, "dhn")?, opt_slice(&dcn, "dcn")?);
        let ctx = self.ctx_for(threads)?;
        let (need_dx, need_dstate, need_dparams) = need;
        let n_params = cfg.param_count();
        let grads = py.detach(|| -> PyResult<Grads<T>> {
            let st = r.read();
            if !st.plan.as_ref().is_some_and(|p| Arc::ptr_eq(p, &plan)) {
                return Err(runtime("reserve", "released or refilled by another thread during this call"));
            }
            if st.buffers.shape_of::<T>().is_none() {
                return Err(runtime("reserve", format!("not filled by a {} forward pass", T::NAME)));
            }
            let mut dx = if need_dx { Some(zeros::<T>("dx", &x_shape)?) } else { None };
            let mut dh0 = if need_dstate { Some(zeros::<T>("dh0", &h_shape)?) } else { None };
            let mut dc0 = if need_dstate && has_c { Some(zeros::<T>("dc0", &c_shape)?) } else { None };
            let mut dp = if need_dparams { Some(zeros::<T>("dparams", &[n_params])?) } else { None };
            let output =
                BackwardOutput { dx: dx.as_deref_mut(), dh0: dh0.as_deref_mut(), dc0: dc0.as_deref_mut(), dparams: dp.as_deref_mut() };
            T::backward(&plan, &ctx, &st.buffers, BackwardInput { dy: dys, dhn: dhns, dcn: dcns }, output, GradMode::Overwrite).or_py()?;
            Ok((dx, dh0, dc0, dp))
        })?;
        let none = || py.None().into_bound(py);
        let (dx, dh0, dc0, dp) = grads;
        let dx = dx.map_or_else(|| Ok(none()), |v| out3(py, v, x_shape))?;
        let dh0 = dh0.map_or_else(|| Ok(none()), |v| out3(py, v, h_shape))?;
        let dc0 = dc0.map_or_else(|| Ok(none()), |v| out3(py, v, c_shape))?;
        let dp = dp.map_or_else(none, |v| out1(py, v));
        PyTuple::new(py, [dx, dh0, dc0, dp])
    }

    fn update_typed<T: Elem>(&self, py: Python<'_>, params: &Bound<'_, PyAny>) -> PyResult<()> {
        let n = self.config.param_count();
        let a = array::<T>(params, "params", "[param_count]")?;
        check_shape(&a, "params", "[param_count]", &[n])?;
        let ro = readonly::<T>(&a, "params")?;
        let p = slice(&ro, "params")?;
        let ctx = self.ctx_for(None)?;
        py.detach(|| -> PyResult<()> {
            let mut st = self.state();
            match Arc::get_mut(&mut st.plan) {
                Some(plan) => T::update(plan, &ctx, p).or_py()?,
                None => {
                    let plan = T::plan(&ctx, &self.config, p).or_py()?;
                    st.plan = Arc::new(plan);
                    st.generation += 1;
                }
            }
            st.updates += 1;
            Ok(())
        })
    }

    fn params_typed<'py, T: Elem>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let ctx = self.ctx_for(None)?;
        let n = self.config.param_count();
        let v = py.detach(|| -> PyResult<Vec<T>> {
            let plan = self.plan();
            let mut v = zeros::<T>("params", &[n])?;
            T::read(&plan, &ctx, &mut v).or_py()?;
            Ok(v)
        })?;
        Ok(out1(py, v))
    }

    fn new_typed<T: Elem>(
        py: Python<'_>,
        config: &RnnConfig,
        a: &Bound<'_, PyUntypedArray>,
        kind: Kind,
        isa: Option<Isa>,
        threads: usize,
    ) -> PyResult<(Plan, Dtype)> {
        let n = config.param_count();
        check_shape(a, "params", "[param_count]", &[n])?;
        let ro = readonly::<T>(a, "params")?;
        let p = slice(&ro, "params")?;
        let ctx = Model::ctx_of(kind, isa, threads)?;
        let plan = py.detach(|| T::plan(&ctx, config, p)).or_py()?;
        let dtype = if T::NAME == <f32 as Elem>::NAME { Dtype::F32 } else { Dtype::F64 };
        Ok((plan, dtype))
    }
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (config, params, backend="cpu", threads=None, isa=None))]
    fn py_new(
        py: Python<'_>,
        config: PyRef<'_, Config>,
        params: &Bound<'_, PyAny>,
        backend: &str,
        threads: Option<i64>,
        isa: Option<&str>,
    ) -> PyResult<Self> {
        let kind = match backend {
            "reference" => Kind::Reference,
            "cpu" => Kind::Cpu,
            #[cfg(feature = "cuda")]
            "cuda" => Kind::Cuda,
            #[cfg(not(feature = "cuda"))]
            "cuda" => {
                return Err(value(
                    "backend",
                    format!("one of {:?} (this build of rnn_kernels has no CUDA backend)", crate::backends()),
                    "\"cuda\"",
                ))
            }
            other => return Err(value("backend", format!("one of {:?}", crate::backends()), format!("{other:?}"))),
        };
        let threads = match threads {
            Some(t) => thread_count("threads", t)?,
            None if kind == Kind::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get()),
            None => 1,
        };
        let isa = match (kind, isa) {
            (Kind::Cpu, None) => Some(Isa::from_env().or_py()?),
            (Kind::Cpu, Some(name)) => {
                let isa: Isa = name.parse().or_py()?;
                if !isa.is_supported() {
                    let have: Vec<&str> = Isa::available().into_iter().map(Isa::name).collect();
                    return Err(value("isa", format!("an ISA this CPU supports: {}", have.join(", ")), format!("{name:?}")));
                }
                Some(isa)
            }
            (_, None) => None,
            (_, Some(name)) => return Err(value("isa", "None: only the cpu backend has ISAs", format!("{name:?}"))),
        };
        let cfg = config.inner.clone();
        let dims = "[param_count]";
        let Ok(a) = params.cast::<PyUntypedArray>() else {
            return Err(type_error("params", format!("a 1-D numpy.ndarray of float32 or float64 with shape {dims}"), "another type"));
        };
        let dt = a.dtype();
        let (plan, dtype) = if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
            let a = array::<f32>(params, "params", dims)?;
            Model::new_typed::<f32>(py, &cfg, &a, kind, isa, threads)?
        } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
            if kind != Kind::Reference {
                return Err(type_error(
                    "params",
                    format!("dtype float32 for backend \"{}\" (float64 runs on backend \"reference\")", kind.name()),
                    "dtype float64",
                ));
            }
            let a = array::<f64>(params, "params", dims)?;
            Model::new_typed::<f64>(py, &cfg, &a, kind, isa, threads)?
        } else {
            return Err(type_error("params", "dtype float32 or float64 (float64: backend \"reference\" only)", format!("dtype {dt}")));
        };
        Ok(Model {
            id: NEXT_MODEL.fetch_add(1, Ordering::Relaxed),
            config: cfg,
            kind,
            dtype,
            isa,
            threads,
            state: Mutex::new(ModelState { plan: Arc::new(plan), generation: 0, updates: 0 }),
        })
    }

    /// The configuration.
    #[getter]
    fn config(&self) -> Config {
        Config::new_from(self.config.clone())
    }
    /// ``"float32"`` or ``"float64"``.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }
    /// ``"reference"``, ``"cpu"`` or ``"cuda"``.
    #[getter]
    fn backend(&self) -> &'static str {
        self.kind.name()
    }
    /// The CPU backend's ISA (``"avx2"``, …); ``None`` for the reference backend.
    #[getter]
    fn isa(&self) -> Option<&'static str> {
        self.isa.map(Isa::name)
    }
    /// The default thread count of its calls (1 for the reference backend, which runs on the
    /// calling thread).
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }
    /// How many times ``update_params`` built a new plan because a reserve in use (or a call
    /// running in another thread) held the current one; an update in place leaves it.
    #[getter]
    fn plan_generation(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.state().generation)
    }
    /// How many times ``update_params`` was called.
    #[getter]
    fn param_version(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.state().updates)
    }

    /// Replaces the weights with ``params`` (same dtype and length as the model's). Repacks the
    /// plan in place when no reserve in use holds it; otherwise builds a new plan, so that the
    /// reserves in use keep the weights they were computed with.
    fn update_params(&self, py: Python<'_>, params: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.dtype {
            Dtype::F32 => self.update_typed::<f32>(py, params),
            Dtype::F64 => self.update_typed::<f64>(py, params),
        }
    }

    /// A copy of the current weights, flat (the layout of ``config.param_specs()``).
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.dtype {
            Dtype::F32 => self.params_typed::<f32>(py),
            Dtype::F64 => self.params_typed::<f64>(py),
        }
    }

    /// Inference: ``(y, hn, cn)``, ``cn`` ``None`` but for an LSTM.
    #[pyo3(signature = (x, lengths=None, h0=None, c0=None, threads=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        match self.dtype {
            Dtype::F32 => self.forward_typed::<f32>(py, x, lengths, h0, c0, threads, None),
            Dtype::F64 => self.forward_typed::<f64>(py, x, lengths, h0, c0, threads, None),
        }
    }

    /// A training forward pass: ``(y, hn, cn, reserve)``. ``reserve``: one not in use, refilled
    /// reusing its memory, or ``None`` for a new one. ``seed``: the seed of the random masks of a
    /// configuration with ``dropout``, ``zoneout``, ``zoneout_cell``, ``recurrent_dropout`` or
    /// ``input_dropout`` (one stream for all of them; the same seed gives the same masks);
    /// ``None`` draws a fresh one per call; ignored without these options. ``masks``: the
    /// caller's masks instead (not with ``seed``): a dict ``{(layer, direction, kind): hits}``
    /// as ``read_masks`` returns, ``hits`` a C-contiguous bool array ``[steps, rows, units]``,
    /// ``True`` where the unit is dropped (for zoneout, kept at its previous value), each mask
    /// of ``mask_sites`` there with at least its sizes; the kept units are still scaled by
    /// ``1/(1-p)``.
    #[pyo3(signature = (x, lengths=None, h0=None, c0=None, seed=None, reserve=None, threads=None, masks=None))]
    #[allow(clippy::too_many_arguments)]
    fn forward_training<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        seed: Option<&Bound<'py, PyAny>>,
        reserve: Option<&Bound<'py, Reserve>>,
        threads: Option<i64>,
        masks: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let seed = seed.filter(|s| !s.is_none()).map(parse_seed).transpose()?;
        let supplied = masks.filter(|m| !m.is_none()).map(parse_masks).transpose()?;
        if seed.is_some() && supplied.is_some() {
            return Err(value("masks", "None when a seed is given (the masks are drawn from the seed or supplied, not both)", "a dict"));
        }
        let training = Training { seed, reserve, supplied };
        match self.dtype {
            Dtype::F32 => self.forward_typed::<f32>(py, x, lengths, h0, c0, threads, Some(training)),
            Dtype::F64 => self.forward_typed::<f64>(py, x, lengths, h0, c0, threads, Some(training)),
        }
    }

    /// The masks a training pass over ``steps`` steps of ``batch`` sequences reads: a list of
    /// ``(layer, direction, kind, (steps, rows, units))``, ``kind`` the option's name
    /// (``"dropout"`` between layers, ``"recurrent_dropout"``, ``"input_dropout"``,
    /// ``"zoneout"``, ``"zoneout_cell"``; ``steps`` 1 for the per-sequence kinds, recurrent and
    /// input dropout).
    fn mask_sites(&self, steps: i64, batch: i64) -> PyResult<Vec<MaskSiteTuple>> {
        let shape = mask_shape(steps, batch)?;
        Ok(required_sites(&self.config, &shape)
            .into_iter()
            .map(|m| (m.site.layer(), m.site.direction(), kind_name(m.site.kind()), (m.steps, m.rows, m.units)))
            .collect())
    }

    /// The masks a training pass over ``steps`` steps of ``batch`` sequences draws from ``seed``
    /// (``forward_training(..., seed=seed)``'s): a dict ``{(layer, direction, kind): hits}``,
    /// ``hits`` a bool array ``[steps, rows, units]`` (see ``mask_sites``), to inspect or to
    /// pass back as ``masks``.
    fn read_masks<'py>(&self, py: Python<'py>, steps: i64, batch: i64, seed: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let shape = mask_shape(steps, batch)?;
        let seed = parse_seed(seed)?;
        let drawn = py.detach(|| SuppliedMasks::drawn(&MaskStream::new(seed, 0), &self.config, &shape)).or_py()?;
        let out = PyDict::new(py);
        for need in required_sites(&self.config, &shape) {
            let Some((s, r, u, hits)) = drawn.get(need.site) else { continue };
            let a = numpy::ndarray::Array3::from_shape_vec((s, r, u), hits).map_err(|e| runtime("masks", e))?;
            let key = (need.site.layer(), need.site.direction(), kind_name(need.site.kind()));
            out.set_item(key, numpy::PyArray::from_owned_array(py, a))?;
        }
        Ok(out)
    }

    /// Backpropagation through time over the forward pass that filled ``reserve``, with the
    /// weights it was computed with: ``(dx, dh0, dc0, dparams)``, each ``None`` where not asked
    /// for (``dc0`` also for cells without a cell state). ``dy``, ``dhn``, ``dcn`` default to
    /// zeros; ``dparams`` is flat, written (not added to).
    #[pyo3(signature = (reserve, dy=None, dhn=None, dcn=None, need_dx=true, need_dstate=true, need_dparams=true, threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        reserve: &Bound<'py, Reserve>,
        dy: Option<&Bound<'py, PyAny>>,
        dhn: Option<&Bound<'py, PyAny>>,
        dcn: Option<&Bound<'py, PyAny>>,
        need_dx: bool,
        need_dstate: bool,
        need_dparams: bool,
        threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let need = (need_dx, need_dstate, need_dparams);
        match self.dtype {
            Dtype::F32 => self.backward_typed::<f32>(py, reserve, dy, dhn, dcn, need, threads),
            Dtype::F64 => self.backward_typed::<f64>(py, reserve, dy, dhn, dcn, need, threads),
        }
    }

    /// Starts a decoder run one step at a time (a forward, unidirectional stack): ``batch`` rows
    /// from ``h0: [L, B, Hout]`` and ``c0: [L, B, H]`` (zeros when ``None``). ``training``: each
    /// step keeps what ``backward_steps`` needs; ``seed``: the masks' seed of a configuration
    /// with dropout or zoneout (step ``t`` draws those of step ``t`` of one ``forward_training``
    /// over the sequence with that seed); ``masks``: the caller's instead (as
    /// ``forward_training``'s, for the whole sequence: step ``t`` reads their step ``t``).
    /// ``threads``: the run's thread count (CPU). The run holds the current weights: a later
    /// ``update_params`` does not change its steps.
    #[pyo3(signature = (batch, h0=None, c0=None, training=false, seed=None, threads=None, masks=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_steps(
        &self,
        py: Python<'_>,
        batch: i64,
        h0: Option<&Bound<'_, PyAny>>,
        c0: Option<&Bound<'_, PyAny>>,
        training: bool,
        seed: Option<&Bound<'_, PyAny>>,
        threads: Option<i64>,
        masks: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Steps> {
        let batch = usize::try_from(batch).map_err(|_| value("batch", "at least 1 row", batch))?;
        let seed = seed.filter(|s| !s.is_none()).map(parse_seed).transpose()?;
        let supplied = masks.filter(|m| !m.is_none()).map(parse_masks).transpose()?;
        if seed.is_some() && supplied.is_some() {
            return Err(value("masks", "None when a seed is given (the masks are drawn from the seed or supplied, not both)", "a dict"));
        }
        dispatch!(self.flavour(), K => self.start_steps_typed::<K>(py, batch, h0, c0, training, seed, supplied, threads))
    }

    /// Starts the backward of a training run of steps from ``dhn``, ``dcn``, the gradients
    /// w.r.t. the state after its last step (zeros when ``None``): walk it with
    /// ``bsteps.step(dy)`` from the last step back, then ``bsteps.finish()``. The walk takes the
    /// steps run since the last ``backward_steps`` of the run; the run goes on from its state,
    /// and its next steps are a new record (truncated backpropagation through time).
    #[pyo3(signature = (steps, dhn=None, dcn=None))]
    fn backward_steps(
        &self,
        py: Python<'_>,
        steps: &Bound<'_, Steps>,
        dhn: Option<&Bound<'_, PyAny>>,
        dcn: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<BackwardSteps> {
        dispatch!(self.flavour(), K => self.backward_steps_typed::<K>(py, steps.get(), dhn, dcn))
    }

    /// Pickles (and deep-copies) as ``Model(config, params(), backend, threads, isa)``.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let m = slf.get();
        let args = (Config::new_from(m.config.clone()), m.params(py)?, m.kind.name(), m.threads, m.isa.map(Isa::name));
        Ok((slf.get_type().into_any(), args.into_pyobject(py)?))
    }

    fn __repr__(&self) -> String {
        let c = Config::new_from(self.config.clone());
        let isa = self.isa.map_or(String::new(), |i| format!(", isa='{}', threads={}", i.name(), self.threads));
        format!("Model({}, dtype='{}', backend='{}'{isa})", c.__repr__(), self.dtype.name(), self.kind.name())
    }
}
