//! `Steps` and `BackwardSteps`: a decoder run one step at a time on a model's plan, and the
//! backward of a training run walked from its last step (the library's `Rnn::start_steps`,
//! `Rnn::step`, `Rnn::backward_steps`, computed here on the model's shared plan).
//!
//! Each step is a one-step forward call from the state the step before left; a training run keeps
//! each step's reserve, and its backward is the backend's backward over each record in reverse
//! without the parameters' gradients (`Backend::backward_step_deferred`), which are computed once
//! the first step is walked, each weight's as one product over all the steps' rows
//! (`Backend::deferred_param_grads`), as `Rnn::backward_steps` does. A run holds the plan it
//! started with, so a later `update_params` of the model does not change the weights of its steps.

use crate::arrays::{array, check_shape, out1, out3, readonly, slice, zeros};
use crate::engine::{self, Elem, SharedPlan};
use crate::errors::{runtime, value, OrPy};
use numpy::ndarray::Array2;
use numpy::PyArray;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rnn_kernels::masks::MaskStream;
use rnn_kernels::{BackwardInput, BackwardOutput, Cpu, ForwardInput, ForwardOutput, HostReserve, HostStepGrads, Isa, RnnConfig, SeqShape};
use std::sync::Mutex;

/// A `[a, b]` array that owns `v` (no copy).
fn out2<'py, T: Elem>(py: Python<'py>, v: Vec<T>, shape: [usize; 2]) -> PyResult<Bound<'py, PyAny>> {
    let a = Array2::from_shape_vec((shape[0], shape[1]), v).map_err(|e| runtime("output", e))?;
    Ok(PyArray::from_owned_array(py, a).into_any())
}

/// The state of a run of one element type.
pub(crate) struct Run<T> {
    /// `[L, B, Hout]`.
    h: Vec<T>,
    /// `[L, B, H]` (LSTM).
    c: Option<Vec<T>>,
    /// Per step, the reserve of its one-step training forward; `None`: an inference run.
    record: Option<Vec<HostReserve<T>>>,
    masks: Option<MaskStream>,
    steps: usize,
    batch: usize,
}

/// A run's state, of the model's element type.
pub(crate) enum AnyRun {
    F32(Run<f32>),
    F64(Run<f64>),
}

/// The backward of a training run, of one element type.
pub(crate) struct Walk<T> {
    record: Vec<HostReserve<T>>,
    /// The next step to walk back through is `next - 1`; 0 when done.
    next: usize,
    dh: Vec<T>,
    dc: Option<Vec<T>>,
    dparams: Vec<T>,
    /// What the steps walked back keep for the parameters' gradients.
    acc: HostStepGrads<T>,
    batch: usize,
    finished: bool,
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
    fn cpu(&self) -> PyResult<Option<Cpu>> {
        self.cpu.map(|(isa, n)| engine::cpu(isa, n).or_py()).transpose()
    }
}

/// A decoder run one step at a time, from ``Model.start_steps``: ``step(x)`` runs the next step
/// (``x: [B, I]`` → ``y: [B, Hout]``) from the state the last one left. ``h`` and ``c`` are
/// copies of that state; ``reorder(rows)`` changes the rows of an inference run's state (beam
/// search). A training run keeps what ``Model.backward_steps`` needs; it holds the weights it
/// started with.
#[pyclass(module = "rnn_kernels._native", frozen)]
pub struct Steps {
    engine: Engine,
    state: Mutex<StepsState>,
}

struct StepsState {
    run: AnyRun,
    /// Whether `Model.backward_steps` took the training run's record.
    walked: bool,
}

impl Steps {
    fn lock(&self) -> std::sync::MutexGuard<'_, StepsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn model(&self) -> u64 {
        self.engine.model
    }

    /// A new run: `batch` rows from `h0`, `c0` (zeros when `None`).
    pub(crate) fn start<T: StepElem>(
        engine: Engine,
        batch: usize,
        h0: Option<&[T]>,
        c0: Option<&[T]>,
        training: bool,
        seed: u64,
        masks: bool,
    ) -> PyResult<Self> {
        let cfg = &engine.config;
        let shape = SeqShape::new(1, batch).or_py()?;
        let h = match h0 {
            Some(h) => h.to_vec(),
            None => zeros("h0", &shape.h_shape(cfg))?,
        };
        let c = match (cfg.cell().has_cell_state(), c0) {
            (false, _) => None,
            (true, Some(c)) => Some(c.to_vec()),
            (true, None) => Some(zeros("c0", &shape.c_shape(cfg))?),
        };
        let run =
            Run { h, c, record: training.then(Vec::new), masks: (training && masks).then(|| MaskStream::new(seed, 0)), steps: 0, batch };
        Ok(Steps { engine, state: Mutex::new(StepsState { run: T::wrap_run(run), walked: false }) })
    }

    fn step_typed<'py, T: StepElem>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let xa = array::<T>(x, "x", "[B, I]")?;
        let batch = {
            let mut st = self.state.try_lock().map_err(|_| runtime("steps", "in use by a call running in another thread"))?;
            T::run(&mut st.run).ok_or_else(|| mismatch("steps"))?.batch
        };
        check_shape(&xa, "x", "[B, I]", &[batch, cfg.input_size()])?;
        let ro = readonly::<T>(&xa, "x")?;
        let x = slice(&ro, "x")?;
        let cpu = self.engine.cpu()?;
        let plan = &self.engine.plan;
        let hout = cfg.hidden_out_size();
        let y = py.detach(|| -> PyResult<Vec<T>> {
            let mut guard = self.lock();
            if guard.walked {
                return Err(runtime(
                    "steps",
                    "its backward was started (Model.backward_steps): a training run takes no step after; start a new run",
                ));
            }
            let run = T::run(&mut guard.run).ok_or_else(|| mismatch("steps"))?;
            if run.batch != batch {
                return Err(runtime("steps", "reordered by another thread during this call"));
            }
            let shape = SeqShape::new(1, batch).or_py()?;
            let mut y = zeros::<T>("y", &[batch, hout])?;
            let mut hn = zeros::<T>("hn", &shape.h_shape(cfg))?;
            let mut cn = match run.c {
                Some(_) => Some(zeros::<T>("cn", &shape.c_shape(cfg))?),
                None => None,
            };
            let masks = run.masks.as_ref().map(|m| m.from_step(run.steps)).transpose().or_py()?;
            let input = ForwardInput { x, h0: Some(&run.h), c0: run.c.as_deref(), masks };
            let output = ForwardOutput { y: &mut y[..], hn: Some(&mut hn[..]), cn: cn.as_deref_mut() };
            match run.record.as_mut() {
                Some(record) => {
                    let mut reserve = HostReserve::<T>::default();
                    T::forward(plan, cpu.as_ref(), &shape, input, output, Some(&mut reserve)).or_py()?;
                    record.push(reserve);
                }
                None => T::forward(plan, cpu.as_ref(), &shape, input, output, None).or_py()?,
            }
            run.h = hn;
            if cn.is_some() {
                run.c = cn;
            }
            run.steps += 1;
            Ok(y)
        })?;
        out2(py, y, [batch, hout])
    }

    fn state_typed<'py, T: StepElem>(&self, py: Python<'py>, cell: bool) -> PyResult<Bound<'py, PyAny>> {
        let cfg = &self.engine.config;
        let (v, batch) = py.detach(|| -> PyResult<_> {
            let mut st = self.lock();
            let run = T::run(&mut st.run).ok_or_else(|| mismatch("steps"))?;
            let v = if cell { run.c.clone() } else { Some(run.h.clone()) };
            Ok((v, run.batch))
        })?;
        let shape = SeqShape::new(1, batch).or_py()?;
        match v {
            None => Ok(py.None().into_bound(py)),
            Some(v) => out3(py, v, if cell { shape.c_shape(cfg) } else { shape.h_shape(cfg) }),
        }
    }

    fn reorder_typed<T: StepElem>(&self, py: Python<'_>, rows: Vec<i64>) -> PyResult<()> {
        let cfg = &self.engine.config;
        if rows.is_empty() {
            return Err(value("rows", "at least 1 row", "an empty sequence"));
        }
        py.detach(|| -> PyResult<()> {
            let mut st = self.lock();
            let run = T::run(&mut st.run).ok_or_else(|| mismatch("steps"))?;
            if run.record.is_some() {
                return Err(value(
                    "steps",
                    "an inference run (start_steps without training) to reorder: the backward of a training run needs the state its steps left",
                    "a training run",
                ));
            }
            let bound = run.batch;
            let mut idx = Vec::with_capacity(rows.len());
            for (i, &r) in rows.iter().enumerate() {
                match usize::try_from(r) {
                    Ok(n) if n < bound => idx.push(n),
                    _ => return Err(value(&format!("rows[{i}]"), format!("a row in 0..{bound} (the run's B)"), r)),
                }
            }
            // Row `i` of every layer's `[B, width]` block becomes row `idx[i]` of the old one.
            let gather = |v: &[T], width: usize| -> Vec<T> {
                let layers = v.len() / (bound * width).max(1);
                let mut out = Vec::with_capacity(layers * idx.len() * width);
                for l in 0..layers {
                    let block = &v[l * bound * width..(l + 1) * bound * width];
                    for &r in &idx {
                        out.extend_from_slice(&block[r * width..(r + 1) * width]);
                    }
                }
                out
            };
            run.h = gather(&run.h, cfg.hidden_out_size());
            if let Some(c) = &run.c {
                run.c = Some(gather(c, cfg.hidden_size()));
            }
            run.batch = idx.len();
            Ok(())
        })
    }

    /// Takes a training run's record for its backward.
    pub(crate) fn walk<T: StepElem>(&self, py: Python<'_>, dhn: Option<&[T]>, dcn: Option<&[T]>) -> PyResult<BackwardSteps> {
        let cfg = &self.engine.config;
        let n_params = cfg.param_count();
        py.detach(|| self.walk_locked(n_params, dhn, dcn))
    }

    fn walk_locked<T: StepElem>(&self, n_params: usize, dhn: Option<&[T]>, dcn: Option<&[T]>) -> PyResult<BackwardSteps> {
        let cfg = &self.engine.config;
        let mut st = self.lock();
        if st.walked {
            return Err(runtime("steps", "its backward was started already (Model.backward_steps takes a training run once)"));
        }
        let run = T::run(&mut st.run).ok_or_else(|| mismatch("steps"))?;
        let record = match run.record.as_mut() {
            None => return Err(value("steps", "a training run (start_steps with training=True)", "an inference run")),
            Some(r) if r.is_empty() => return Err(value("steps", "a training run with at least one step", "no step")),
            Some(r) => std::mem::take(r),
        };
        let shape = SeqShape::new(1, run.batch).or_py()?;
        let dh = match dhn {
            Some(d) => d.to_vec(),
            None => zeros("dhn", &shape.h_shape(cfg))?,
        };
        let dc = match (&run.c, dcn) {
            (None, _) => None,
            (Some(_), Some(d)) => Some(d.to_vec()),
            (Some(_), None) => Some(zeros("dcn", &shape.c_shape(cfg))?),
        };
        let dparams = zeros::<T>("dparams", &[n_params])?;
        let next = record.len();
        let walk = Walk { record, next, dh, dc, dparams, acc: HostStepGrads::default(), batch: run.batch, finished: false };
        st.walked = true;
        Ok(BackwardSteps { engine: self.engine.clone(), state: Mutex::new(T::wrap_walk(walk)) })
    }

    /// The run's B and, for the checks of `backward_steps`, whether it is a training run.
    pub(crate) fn batch(&self, py: Python<'_>) -> usize {
        py.detach(|| self.batch_locked())
    }

    fn batch_locked(&self) -> usize {
        let st = self.lock();
        match &st.run {
            AnyRun::F32(r) => r.batch,
            AnyRun::F64(r) => r.batch,
        }
    }

    fn info(&self) -> (usize, usize, bool) {
        Python::attach(|py| py.detach(|| self.info_locked()))
    }

    fn info_locked(&self) -> (usize, usize, bool) {
        let st = self.lock();
        match &st.run {
            AnyRun::F32(r) => (r.steps, r.batch, r.record.is_some()),
            AnyRun::F64(r) => (r.steps, r.batch, r.record.is_some()),
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
        let cpu = self.engine.cpu()?;
        let plan = &self.engine.plan;
        let dx = py.detach(|| -> PyResult<Vec<T>> {
            let mut st = self.lock();
            let w = T::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?;
            if w.finished {
                return Err(runtime("bsteps", "finished: finish() returned its gradients already"));
            }
            let Some(t) = w.next.checked_sub(1) else {
                return Err(runtime("bsteps", "every step was walked back already: call finish()"));
            };
            let shape = SeqShape::new(1, w.batch).or_py()?;
            let mut dx = zeros::<T>("dx", &[w.batch, cfg.input_size()])?;
            let mut dh0 = zeros::<T>("dh0", &shape.h_shape(cfg))?;
            let mut dc0 = match w.dc {
                Some(_) => Some(zeros::<T>("dc0", &shape.c_shape(cfg))?),
                None => None,
            };
            let grads = BackwardInput { dy: dys, dhn: Some(&w.dh), dcn: w.dc.as_deref() };
            let output: BackwardOutput<'_, [T]> =
                BackwardOutput { dx: Some(&mut dx[..]), dh0: Some(&mut dh0[..]), dc0: dc0.as_deref_mut(), dparams: None };
            T::backward_step(plan, cpu.as_ref(), &w.record[t], grads, output, &mut w.acc).or_py()?;
            if t == 0 {
                // Every step is walked: the parameters' gradients, one product per weight; the
                // records are not needed any more.
                T::deferred_params(plan, cpu.as_ref(), &w.record, std::mem::take(&mut w.acc), &mut w.dparams).or_py()?;
                w.record = Vec::new();
            }
            w.dh = dh0;
            if dc0.is_some() {
                w.dc = dc0;
            }
            w.next = t;
            Ok(dx)
        })?;
        out2(py, dx, [batch, cfg.input_size()])
    }

    fn finish_typed<'py, T: StepElem>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = &self.engine.config;
        let (dh, dc, dp, batch) = {
            let mut st = self.lock();
            let w = T::walk(&mut st).ok_or_else(|| mismatch("bsteps"))?;
            if w.finished {
                return Err(runtime("bsteps", "finished: finish() returned its gradients already"));
            }
            if w.next != 0 {
                return Err(runtime("bsteps", format!("{} steps left to walk back before finish()", w.next)));
            }
            w.finished = true;
            (std::mem::take(&mut w.dh), w.dc.take(), std::mem::take(&mut w.dparams), w.batch)
        };
        let shape = SeqShape::new(1, batch).or_py()?;
        let dh0 = out3(py, dh, shape.h_shape(cfg))?;
        let dc0 = match dc {
            Some(v) => out3(py, v, shape.c_shape(cfg))?,
            None => py.None().into_bound(py),
        };
        PyTuple::new(py, [dh0, dc0, out1(py, dp)])
    }

    fn next(&self) -> Option<usize> {
        let st = self.lock();
        let (next, finished) = match &*st {
            AnyWalk::F32(w) => (w.next, w.finished),
            AnyWalk::F64(w) => (w.next, w.finished),
        };
        if finished {
            None
        } else {
            next.checked_sub(1)
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
