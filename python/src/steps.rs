//! `Steps` and `BackwardSteps`: a decoder run one step at a time on a model's plan, and the
//! backward of a training run walked from its last step: the library's `Rnn::start_steps`,
//! `Rnn::step`, `Steps::reorder` and `Rnn::take_backward_steps` on the model's shared plan
//! (`engine::ModelBackend`; `engine::CudaModelBackend` on the GPU), so the steps compute what
//! the Rust API's do.
//!
//! A run holds the plan it started with, so a later `update_params` of the model does not
//! change the weights of its steps; its walk takes the run's record (each step's reserve) and
//! computes the parameters' gradients once the first step is walked back, each weight's as one
//! product over all the steps' rows.

use crate::arrays::{array, check_shape, out1, out3, readonly, slice};
#[cfg(feature = "cuda")]
use crate::engine::CudaModelBackend;
use crate::engine::{Ctx, Elem, Kind, ModelBackend, ModelPlan, SharedPlan};
use crate::errors::{runtime, value, OrPy};
use numpy::ndarray::Array2;
use numpy::PyArray;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rnn_kernels::masks::MaskStream;
use rnn_kernels::{Backend, Rnn, RnnConfig, SeqShape};
use std::sync::Mutex;

/// A `[a, b]` array that owns `v` (no copy).
fn out2<'py, T: Elem>(py: Python<'py>, v: Vec<T>, shape: [usize; 2]) -> PyResult<Bound<'py, PyAny>> {
    let a = Array2::from_shape_vec((shape[0], shape[1]), v).map_err(|e| runtime("output", e))?;
    Ok(PyArray::from_owned_array(py, a).into_any())
}

/// A run of one element type on one backend: the library's.
type Run<K> = rnn_kernels::Steps<<K as StepKind>::T, <K as StepKind>::B>;

/// A run's state, of the model's element type and backend.
pub(crate) enum AnyRun {
    F32(Run<Host32>),
    F64(Run<Host64>),
    #[cfg(feature = "cuda")]
    Cuda(Run<Cuda32>),
}

/// The backward of a training run, of one element type and backend.
pub(crate) struct Walk<K: StepKind> {
    /// The library's walk; `None` once `finish` returned its gradients.
    walk: Option<rnn_kernels::BackwardSteps<'static, K::T, K::B>>,
    batch: usize,
}

pub(crate) enum AnyWalk {
    F32(Walk<Host32>),
    F64(Walk<Host64>),
    #[cfg(feature = "cuda")]
    Cuda(Walk<Cuda32>),
}

/// The element type and backend of a run: `float32` or `float64` on a host backend
/// ([`ModelBackend`]), or `float32` on the GPU ([`CudaModelBackend`]).
pub(crate) trait StepKind: Sized + 'static {
    type T: Elem;
    type B: Backend<Self::T, Buf = [Self::T], Plan = ModelPlan>;
    /// The backend of the run's calls.
    fn backend(ctx: &Ctx) -> PyResult<Self::B>;
    fn run(r: &mut AnyRun) -> Option<&mut Run<Self>>;
    fn wrap_run(r: Run<Self>) -> AnyRun;
    fn walk(w: &mut AnyWalk) -> Option<&mut Walk<Self>>;
    fn wrap_walk(w: Walk<Self>) -> AnyWalk;
}

/// `float32` on the reference or the CPU backend.
pub(crate) struct Host32;
/// `float64` on the reference.
pub(crate) struct Host64;
/// `float32` on the GPU.
#[cfg(feature = "cuda")]
pub(crate) struct Cuda32;

/// The step kind of a run or model, named `K` in `$call`: `dispatch!(flavour, K => f::<K>())`.
macro_rules! dispatch {
    ($flavour:expr, $k:ident => $call:expr) => {
        match $flavour {
            $crate::steps::Flavour::Host32 => {
                type $k = $crate::steps::Host32;
                $call
            }
            $crate::steps::Flavour::Host64 => {
                type $k = $crate::steps::Host64;
                $call
            }
            #[cfg(feature = "cuda")]
            $crate::steps::Flavour::Cuda32 => {
                type $k = $crate::steps::Cuda32;
                $call
            }
        }
    };
}
pub(crate) use dispatch;

/// Which [`StepKind`] a run has, from its element type and backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    Host32,
    Host64,
    #[cfg(feature = "cuda")]
    Cuda32,
}

impl Flavour {
    pub(crate) fn of(kind: Kind, dtype: &str) -> Flavour {
        match (kind, dtype) {
            #[cfg(feature = "cuda")]
            (Kind::Cuda, _) => Flavour::Cuda32,
            (_, "float64") => Flavour::Host64,
            _ => Flavour::Host32,
        }
    }
}

/// The arms of a [`StepKind`] impl that pick its own variant of [`AnyRun`] and [`AnyWalk`].
macro_rules! step_kind_variants {
    ($variant:ident) => {
        fn run(r: &mut AnyRun) -> Option<&mut Run<Self>> {
            match r {
                AnyRun::$variant(r) => Some(r),
                #[allow(unreachable_patterns)]
                _ => None,
            }
        }
        fn wrap_run(r: Run<Self>) -> AnyRun {
            AnyRun::$variant(r)
        }
        fn walk(w: &mut AnyWalk) -> Option<&mut Walk<Self>> {
            match w {
                AnyWalk::$variant(w) => Some(w),
                #[allow(unreachable_patterns)]
                _ => None,
            }
        }
        fn wrap_walk(w: Walk<Self>) -> AnyWalk {
            AnyWalk::$variant(w)
        }
    };
}

/// The [`StepKind`] of an element type on the host backends ([`ModelBackend`]).
macro_rules! host_step_kind {
    ($kind:ident, $t:ty, $variant:ident) => {
        impl StepKind for $kind {
            type T = $t;
            type B = ModelBackend;
            fn backend(ctx: &Ctx) -> PyResult<ModelBackend> {
                Ok(ModelBackend { ctx: ctx.clone() })
            }
            step_kind_variants!($variant);
        }
    };
}

host_step_kind!(Host32, f32, F32);
host_step_kind!(Host64, f64, F64);

#[cfg(feature = "cuda")]
impl StepKind for Cuda32 {
    type T = f32;
    type B = CudaModelBackend;
    fn backend(ctx: &Ctx) -> PyResult<CudaModelBackend> {
        match ctx {
            Ctx::Cuda(c) => Ok(CudaModelBackend(c.clone())),
            _ => Err(mismatch("steps")),
        }
    }
    step_kind_variants!(Cuda);
}

fn mismatch(arg: &str) -> PyErr {
    runtime(arg, "of another element type or backend (an internal inconsistency of the bindings)")
}

/// What a run computes with: the model's plan when it started, and its backend.
#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) model: u64,
    pub(crate) config: RnnConfig,
    pub(crate) plan: SharedPlan,
    /// The backend of the calls: the reference, the CPU backend of the run's ISA and thread
    /// count, or the GPU.
    pub(crate) ctx: Ctx,
    pub(crate) dtype: &'static str,
}

impl Engine {
    /// The library's stack on the run's plan.
    fn rnn<K: StepKind>(&self) -> PyResult<Rnn<K::T, K::B>> {
        Ok(Rnn::from_plan(K::backend(&self.ctx)?, ModelPlan(self.plan.clone())))
    }

    /// The run's step kind.
    pub(crate) fn flavour(&self) -> Flavour {
        Flavour::of(self.plan.kind(), self.dtype)
    }
}

/// A decoder run one step at a time, from ``Model.start_steps``: ``step(x)`` runs the next step
/// (``x: [B, I]`` → ``y: [B, Hout]``) from the state the last one left. ``h`` and ``c`` are
/// copies of that state; ``reorder(rows)`` changes the rows of an inference run's state (beam
/// search). A training run keeps what ``Model.backward_steps`` needs, which takes the steps run
/// since the last ``backward_steps`` (truncated backpropagation through time: the run goes on from
/// its state). A run holds the weights it started with.
#[pyclass(module = "rnn_kernels._native", frozen)]
pub struct Steps {
    engine: Engine,
    state: Mutex<AnyRun>,
}

impl Steps {
    fn lock(&self) -> std::sync::MutexGuard<'_, AnyRun> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn model(&self) -> u64 {
        self.engine.model
    }

    /// A new run: `batch` rows from `h0`, `c0` (zeros when `None`); a training run reads its
    /// masks from `masks` (step `t` those of step `t` of one call), `None` without any.
    pub(crate) fn start<K: StepKind>(
        engine: Engine,
        batch: usize,
        h0: Option<&[K::T]>,
        c0: Option<&[K::T]>,
        training: bool,
        masks: Option<MaskStream>,
    ) -> PyResult<Self> {
        let masks = masks.filter(|_| training);
        let run = engine.rnn::<K>()?.start_steps(batch, h0, c0, training, masks).or_py()?;
        Ok(Steps { engine, state: Mutex::new(K::wrap_run(run)) })
    }

    fn step_typed<'py, K: StepKind>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let xa = array::<K::T>(x, "x", "[B, I]")?;
        let batch = {
            let mut st = self.state.try_lock().map_err(|_| runtime("steps", "in use by a call running in another thread"))?;
            K::run(&mut st).ok_or_else(|| mismatch("steps"))?.batch()
        };
        check_shape(&xa, "x", "[B, I]", &[batch, cfg.input_size()])?;
        let ro = readonly::<K::T>(&xa, "x")?;
        let x = slice(&ro, "x")?;
        let y = py.detach(|| -> PyResult<Vec<K::T>> {
            let rnn = self.engine.rnn::<K>()?;
            let mut guard = self.lock();
            let run = K::run(&mut guard).ok_or_else(|| mismatch("steps"))?;
            if run.batch() != batch {
                return Err(runtime("steps", "reordered by another thread during this call"));
            }
            rnn.step(run, x).or_py()
        })?;
        out2(py, y, [batch, cfg.hidden_out_size()])
    }

    fn state_typed<'py, K: StepKind>(&self, py: Python<'py>, cell: bool) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let (v, batch) = py.detach(|| -> PyResult<_> {
            let mut st = self.lock();
            let run = K::run(&mut st).ok_or_else(|| mismatch("steps"))?;
            let v = if cell { run.c().map(<[K::T]>::to_vec) } else { Some(run.h().to_vec()) };
            Ok((v, run.batch()))
        })?;
        let shape = SeqShape::new(1, batch).or_py()?;
        match v {
            None => Ok(py.None().into_bound(py)),
            Some(v) => out3(py, v, if cell { shape.c_shape(cfg) } else { shape.h_shape(cfg) }),
        }
    }

    fn reorder_typed<K: StepKind>(&self, py: Python<'_>, rows: Vec<i64>) -> PyResult<()> {
        if rows.is_empty() {
            return Err(value("rows", "at least 1 row", "an empty sequence"));
        }
        py.detach(|| -> PyResult<()> {
            let mut st = self.lock();
            let run = K::run(&mut st).ok_or_else(|| mismatch("steps"))?;
            let bound = run.batch();
            let mut idx = Vec::with_capacity(rows.len());
            for (i, &r) in rows.iter().enumerate() {
                match usize::try_from(r) {
                    Ok(n) => idx.push(n),
                    Err(_) => return Err(value(&format!("rows[{i}]"), format!("a row in 0..{bound} (the run's B)"), r)),
                }
            }
            run.reorder(&idx).or_py()
        })
    }

    /// Takes a training run's record (the steps since the last walk) for its backward.
    pub(crate) fn walk<K: StepKind>(&self, py: Python<'_>, dhn: Option<&[K::T]>, dcn: Option<&[K::T]>) -> PyResult<BackwardSteps> {
        py.detach(|| self.walk_locked::<K>(dhn, dcn))
    }

    fn walk_locked<K: StepKind>(&self, dhn: Option<&[K::T]>, dcn: Option<&[K::T]>) -> PyResult<BackwardSteps> {
        let rnn = self.engine.rnn::<K>()?;
        let mut st = self.lock();
        let run = K::run(&mut st).ok_or_else(|| mismatch("steps"))?;
        let batch = run.batch();
        let walk = rnn.take_backward_steps(run, dhn, dcn).or_py()?;
        Ok(BackwardSteps { engine: self.engine.clone(), state: Mutex::new(K::wrap_walk(Walk { walk: Some(walk), batch })) })
    }

    /// The run's B, for the checks of `backward_steps`.
    pub(crate) fn batch(&self, py: Python<'_>) -> usize {
        py.detach(|| self.info_locked().1)
    }

    fn info(&self) -> (usize, usize, bool) {
        Python::attach(|py| py.detach(|| self.info_locked()))
    }

    /// The steps run, the run's B and whether it is a training run.
    fn info_locked(&self) -> (usize, usize, bool) {
        let st = self.lock();
        match &*st {
            AnyRun::F32(r) => (r.steps(), r.batch(), r.training()),
            AnyRun::F64(r) => (r.steps(), r.batch(), r.training()),
            #[cfg(feature = "cuda")]
            AnyRun::Cuda(r) => (r.steps(), r.batch(), r.training()),
        }
    }
}

#[pymethods]
impl Steps {
    /// Runs the next step: ``x: [B, I]`` (the model's dtype) → ``y: [B, Hout]``; moves the state
    /// on.
    fn step<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        dispatch!(self.engine.flavour(), K => self.step_typed::<K>(py, x))
    }

    /// A copy of the hidden state after the last step, ``[L, B, Hout]``.
    #[getter]
    fn h<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dispatch!(self.engine.flavour(), K => self.state_typed::<K>(py, false))
    }

    /// A copy of the cell state after the last step, ``[L, B, H]`` (LSTM; ``None`` otherwise).
    #[getter]
    fn c<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dispatch!(self.engine.flavour(), K => self.state_typed::<K>(py, true))
    }

    /// The index of the next step (the number of steps run).
    #[getter]
    fn next_step(&self) -> usize {
        self.info().0
    }

    /// The run's B (the rows of its state).
    #[getter]
    fn batch_size(&self) -> usize {
        self.info().1
    }

    /// Whether each step keeps what ``Model.backward_steps`` needs.
    #[getter]
    fn training(&self) -> bool {
        self.info().2
    }

    /// Beam search on an inference run: row ``i`` of the new ``h`` (and ``c``) of every layer
    /// is row ``rows[i]`` of the current one (each in ``0..B``); ``len(rows)`` is the new B (the
    /// next ``x`` has that many rows). A training run is refused (a ``ValueError`` naming
    /// ``steps``). Nothing changes on an error.
    fn reorder(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let rows: Vec<i64> = match rows.cast::<numpy::PyUntypedArray>() {
            Ok(a) => {
                a.call_method0("tolist")?.extract().map_err(|_| value("rows", "a 1-D sequence of ints", "an array that is not of ints"))?
            }
            Err(_) => rows.extract().map_err(|_| value("rows", "a 1-D sequence of ints", "another object"))?,
        };
        dispatch!(self.engine.flavour(), K => self.reorder_typed::<K>(py, rows))
    }

    fn __repr__(&self) -> String {
        let (steps, batch, training) = self.info();
        format!("Steps(next_step={steps}, batch_size={batch}, training={})", if training { "True" } else { "False" })
    }
}

/// The backward of a training run of steps, from ``Model.backward_steps``: ``step(dy)`` walks
/// back through the next step (the last one first) and returns its ``dx: [B, I]``; ``finish()``
/// returns ``(dh0, dc0, dparams)`` once every step was walked back.
#[pyclass(module = "rnn_kernels._native", frozen)]
pub struct BackwardSteps {
    engine: Engine,
    state: Mutex<AnyWalk>,
}

impl BackwardSteps {
    fn lock(&self) -> std::sync::MutexGuard<'_, AnyWalk> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn step_typed<'py, K: StepKind>(&self, py: Python<'py>, dy: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let hout = cfg.hidden_out_size();
        let batch = {
            let mut st = self.state.try_lock().map_err(|_| runtime("bsteps", "in use by a call running in another thread"))?;
            K::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?.batch
        };
        let dy = match dy.filter(|d| !d.is_none()) {
            None => None,
            Some(d) => {
                let a = array::<K::T>(d, "dy", "[B, Hout]")?;
                check_shape(&a, "dy", "[B, Hout]", &[batch, hout])?;
                Some(readonly::<K::T>(&a, "dy")?)
            }
        };
        let dys = dy.as_ref().map(|a| slice(a, "dy")).transpose()?;
        let dx = py.detach(|| -> PyResult<Vec<K::T>> {
            let rnn = self.engine.rnn::<K>()?;
            let mut st = self.lock();
            let w = K::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?;
            let Some(walk) = w.walk.as_mut() else {
                return Err(runtime("bsteps", "finished: finish() returned its gradients already"));
            };
            if walk.next_step().is_none() {
                return Err(runtime("bsteps", "every step was walked back already: call finish()"));
            }
            walk.step(&rnn, dys).map(<[K::T]>::to_vec).or_py()
        })?;
        out2(py, dx, [batch, cfg.input_size()])
    }

    fn finish_typed<'py, K: StepKind>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = &self.engine.config;
        let (g, batch) = py.detach(|| -> PyResult<_> {
            let mut st = self.lock();
            let w = K::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?;
            match w.walk.as_ref().map(|walk| walk.next_step()) {
                None => return Err(runtime("bsteps", "finished: finish() returned its gradients already")),
                Some(Some(t)) => return Err(runtime("bsteps", format!("{} steps left to walk back before finish()", t + 1))),
                Some(None) => {}
            }
            let walk = w.walk.take().expect("matched above");
            Ok((walk.finish().or_py()?, w.batch))
        })?;
        let shape = SeqShape::new(1, batch).or_py()?;
        let dh0 = out3(py, g.dh0, shape.h_shape(cfg))?;
        let dc0 = match g.dc0 {
            Some(v) => out3(py, v, shape.c_shape(cfg))?,
            None => py.None().into_bound(py),
        };
        let dparams =
            g.dparams.ok_or_else(|| runtime("bsteps", "finished without the parameters' gradients (an internal inconsistency)"))?;
        PyTuple::new(py, [dh0, dc0, out1(py, dparams)])
    }

    fn next(&self) -> Option<usize> {
        let st = self.lock();
        match &*st {
            AnyWalk::F32(w) => w.walk.as_ref().and_then(|w| w.next_step()),
            AnyWalk::F64(w) => w.walk.as_ref().and_then(|w| w.next_step()),
            #[cfg(feature = "cuda")]
            AnyWalk::Cuda(w) => w.walk.as_ref().and_then(|w| w.next_step()),
        }
    }
}

#[pymethods]
impl BackwardSteps {
    /// Walks back through the next step with ``dy: [B, Hout]``, the gradient w.r.t. that step's
    /// output (zeros when ``None``); returns ``dx: [B, I]``, w.r.t. its input. Walking the
    /// first step (the last walked) also computes the parameters' gradients, each weight's as
    /// one product over all the steps.
    #[pyo3(signature = (dy=None))]
    fn step<'py>(&self, py: Python<'py>, dy: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        dispatch!(self.engine.flavour(), K => self.step_typed::<K>(py, dy))
    }

    /// ``(dh0, dc0, dparams)`` once every step was walked back (``dc0`` ``None`` but for an
    /// LSTM; ``dparams`` flat).
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        dispatch!(self.engine.flavour(), K => self.finish_typed::<K>(py))
    }

    /// The step the next ``step`` walks back through; ``None`` when all are done.
    #[getter]
    fn next_step(&self) -> Option<usize> {
        self.next()
    }

    fn __repr__(&self) -> String {
        format!("BackwardSteps(next_step={})", self.next().map_or("None".to_string(), |n| n.to_string()))
    }
}
