//! `Steps` and `BackwardSteps`: a decoder run one step at a time on a model's plan, and the
//! backward of a training run walked from its last step: the library's `Rnn::start_steps`,
//! `Rnn::step`, `Steps::reorder` and `Rnn::take_backward_steps` on the model's shared plan
//! (`engine::ModelBackend`), so the steps compute what the Rust API's do.
//!
//! A run holds the plan it started with, so a later `update_params` of the model does not
//! change the weights of its steps; its walk takes the run's record (each step's reserve) and
//! computes the parameters' gradients once the first step is walked back, each weight's as one
//! product over all the steps' rows.

use crate::arrays::{array, check_shape, out1, out3, readonly, slice};
use crate::engine::{self, Elem, ModelBackend, ModelPlan, SharedPlan};
use crate::errors::{runtime, value, OrPy};
use numpy::ndarray::Array2;
use numpy::PyArray;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rnn_kernels::masks::MaskStream;
use rnn_kernels::{Isa, Rnn, RnnConfig, SeqShape};
use std::sync::Mutex;

/// A `[a, b]` array that owns `v` (no copy).
fn out2<'py, T: Elem>(py: Python<'py>, v: Vec<T>, shape: [usize; 2]) -> PyResult<Bound<'py, PyAny>> {
    let a = Array2::from_shape_vec((shape[0], shape[1]), v).map_err(|e| runtime("output", e))?;
    Ok(PyArray::from_owned_array(py, a).into_any())
}

/// A run of one element type: the library's.
type Run<T> = rnn_kernels::Steps<T, ModelBackend>;

/// A run's state, of the model's element type.
pub(crate) enum AnyRun {
    F32(Run<f32>),
    F64(Run<f64>),
}

/// The backward of a training run, of one element type.
pub(crate) struct Walk<T: Elem> {
    /// The library's walk; `None` once `finish` returned its gradients.
    walk: Option<rnn_kernels::BackwardSteps<'static, T, ModelBackend>>,
    batch: usize,
}

pub(crate) enum AnyWalk {
    F32(Walk<f32>),
    F64(Walk<f64>),
}

/// The element types of the runs.
pub(crate) trait StepElem: Elem {
    fn run(r: &mut AnyRun) -> Option<&mut Run<Self>>;
    fn wrap_run(r: Run<Self>) -> AnyRun;
    fn walk(w: &mut AnyWalk) -> Option<&mut Walk<Self>>;
    fn wrap_walk(w: Walk<Self>) -> AnyWalk;
}

impl StepElem for f32 {
    fn run(r: &mut AnyRun) -> Option<&mut Run<f32>> {
        match r {
            AnyRun::F32(r) => Some(r),
            AnyRun::F64(_) => None,
        }
    }
    fn wrap_run(r: Run<f32>) -> AnyRun {
        AnyRun::F32(r)
    }
    fn walk(w: &mut AnyWalk) -> Option<&mut Walk<f32>> {
        match w {
            AnyWalk::F32(w) => Some(w),
            AnyWalk::F64(_) => None,
        }
    }
    fn wrap_walk(w: Walk<f32>) -> AnyWalk {
        AnyWalk::F32(w)
    }
}

impl StepElem for f64 {
    fn run(r: &mut AnyRun) -> Option<&mut Run<f64>> {
        match r {
            AnyRun::F64(r) => Some(r),
            AnyRun::F32(_) => None,
        }
    }
    fn wrap_run(r: Run<f64>) -> AnyRun {
        AnyRun::F64(r)
    }
    fn walk(w: &mut AnyWalk) -> Option<&mut Walk<f64>> {
        match w {
            AnyWalk::F64(w) => Some(w),
            AnyWalk::F32(_) => None,
        }
    }
    fn wrap_walk(w: Walk<f64>) -> AnyWalk {
        AnyWalk::F64(w)
    }
}

fn mismatch(arg: &str) -> PyErr {
    runtime(arg, "of another element type (an internal inconsistency of the bindings)")
}

/// What a run computes with: the model's plan when it started, and its CPU backend.
#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) model: u64,
    pub(crate) config: RnnConfig,
    pub(crate) plan: SharedPlan,
    /// The CPU backend's ISA and thread count; `None` for the reference backend.
    pub(crate) cpu: Option<(Isa, usize)>,
    pub(crate) dtype: &'static str,
}

impl Engine {
    /// The library's stack on the run's plan.
    fn rnn<T: Elem>(&self) -> PyResult<Rnn<T, ModelBackend>> {
        let cpu = self.cpu.map(|(isa, n)| engine::cpu(isa, n).or_py()).transpose()?;
        Ok(Rnn::from_plan(ModelBackend { kind: self.plan.kind(), cpu }, ModelPlan(self.plan.clone())))
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
    pub(crate) fn start<T: StepElem>(
        engine: Engine,
        batch: usize,
        h0: Option<&[T]>,
        c0: Option<&[T]>,
        training: bool,
        masks: Option<MaskStream>,
    ) -> PyResult<Self> {
        let masks = masks.filter(|_| training);
        let run = engine.rnn::<T>()?.start_steps(batch, h0, c0, training, masks).or_py()?;
        Ok(Steps { engine, state: Mutex::new(T::wrap_run(run)) })
    }

    fn step_typed<'py, T: StepElem>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let xa = array::<T>(x, "x", "[B, I]")?;
        let batch = {
            let mut st = self.state.try_lock().map_err(|_| runtime("steps", "in use by a call running in another thread"))?;
            T::run(&mut st).ok_or_else(|| mismatch("steps"))?.batch()
        };
        check_shape(&xa, "x", "[B, I]", &[batch, cfg.input_size()])?;
        let ro = readonly::<T>(&xa, "x")?;
        let x = slice(&ro, "x")?;
        let y = py.detach(|| -> PyResult<Vec<T>> {
            let rnn = self.engine.rnn::<T>()?;
            let mut guard = self.lock();
            let run = T::run(&mut guard).ok_or_else(|| mismatch("steps"))?;
            if run.batch() != batch {
                return Err(runtime("steps", "reordered by another thread during this call"));
            }
            rnn.step(run, x).or_py()
        })?;
        out2(py, y, [batch, cfg.hidden_out_size()])
    }

    fn state_typed<'py, T: StepElem>(&self, py: Python<'py>, cell: bool) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let (v, batch) = py.detach(|| -> PyResult<_> {
            let mut st = self.lock();
            let run = T::run(&mut st).ok_or_else(|| mismatch("steps"))?;
            let v = if cell { run.c().map(<[T]>::to_vec) } else { Some(run.h().to_vec()) };
            Ok((v, run.batch()))
        })?;
        let shape = SeqShape::new(1, batch).or_py()?;
        match v {
            None => Ok(py.None().into_bound(py)),
            Some(v) => out3(py, v, if cell { shape.c_shape(cfg) } else { shape.h_shape(cfg) }),
        }
    }

    fn reorder_typed<T: StepElem>(&self, py: Python<'_>, rows: Vec<i64>) -> PyResult<()> {
        if rows.is_empty() {
            return Err(value("rows", "at least 1 row", "an empty sequence"));
        }
        py.detach(|| -> PyResult<()> {
            let mut st = self.lock();
            let run = T::run(&mut st).ok_or_else(|| mismatch("steps"))?;
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
    pub(crate) fn walk<T: StepElem>(&self, py: Python<'_>, dhn: Option<&[T]>, dcn: Option<&[T]>) -> PyResult<BackwardSteps> {
        py.detach(|| self.walk_locked(dhn, dcn))
    }

    fn walk_locked<T: StepElem>(&self, dhn: Option<&[T]>, dcn: Option<&[T]>) -> PyResult<BackwardSteps> {
        let rnn = self.engine.rnn::<T>()?;
        let mut st = self.lock();
        let run = T::run(&mut st).ok_or_else(|| mismatch("steps"))?;
        let batch = run.batch();
        let walk = rnn.take_backward_steps(run, dhn, dcn).or_py()?;
        Ok(BackwardSteps { engine: self.engine.clone(), state: Mutex::new(T::wrap_walk(Walk { walk: Some(walk), batch })) })
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
        }
    }
}

#[pymethods]
impl Steps {
    /// Runs the next step: ``x: [B, I]`` (the model's dtype) → ``y: [B, Hout]``; moves the state
    /// on.
    fn step<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self.engine.dtype {
            "float64" => self.step_typed::<f64>(py, x),
            _ => self.step_typed::<f32>(py, x),
        }
    }

    /// A copy of the hidden state after the last step, ``[L, B, Hout]``.
    #[getter]
    fn h<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.engine.dtype {
            "float64" => self.state_typed::<f64>(py, false),
            _ => self.state_typed::<f32>(py, false),
        }
    }

    /// A copy of the cell state after the last step, ``[L, B, H]`` (LSTM; ``None`` otherwise).
    #[getter]
    fn c<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.engine.dtype {
            "float64" => self.state_typed::<f64>(py, true),
            _ => self.state_typed::<f32>(py, true),
        }
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
        match self.engine.dtype {
            "float64" => self.reorder_typed::<f64>(py, rows),
            _ => self.reorder_typed::<f32>(py, rows),
        }
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

    fn step_typed<'py, T: StepElem>(&self, py: Python<'py>, dy: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let hout = cfg.hidden_out_size();
        let batch = {
            let mut st = self.state.try_lock().map_err(|_| runtime("bsteps", "in use by a call running in another thread"))?;
            T::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?.batch
        };
        let dy = match dy.filter(|d| !d.is_none()) {
            None => None,
            Some(d) => {
                let a = array::<T>(d, "dy", "[B, Hout]")?;
                check_shape(&a, "dy", "[B, Hout]", &[batch, hout])?;
                Some(readonly::<T>(&a, "dy")?)
            }
        };
        let dys = dy.as_ref().map(|a| slice(a, "dy")).transpose()?;
        let dx = py.detach(|| -> PyResult<Vec<T>> {
            let rnn = self.engine.rnn::<T>()?;
            let mut st = self.lock();
            let w = T::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?;
            let Some(walk) = w.walk.as_mut() else {
                return Err(runtime("bsteps", "finished: finish() returned its gradients already"));
            };
            if walk.next_step().is_none() {
                return Err(runtime("bsteps", "every step was walked back already: call finish()"));
            }
            walk.step(&rnn, dys).map(<[T]>::to_vec).or_py()
        })?;
        out2(py, dx, [batch, cfg.input_size()])
    }

    fn finish_typed<'py, T: StepElem>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = &self.engine.config;
        let (g, batch) = py.detach(|| -> PyResult<_> {
            let mut st = self.lock();
            let w = T::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?;
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
        match self.engine.dtype {
            "float64" => self.step_typed::<f64>(py, dy),
            _ => self.step_typed::<f32>(py, dy),
        }
    }

    /// ``(dh0, dc0, dparams)`` once every step was walked back (``dc0`` ``None`` but for an
    /// LSTM; ``dparams`` flat).
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match self.engine.dtype {
            "float64" => self.finish_typed::<f64>(py),
            _ => self.finish_typed::<f32>(py),
        }
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
