//! [`Rnn`]: a layer stack bound to a backend and its plan, with host conveniences that allocate
//! the outputs.

use crate::backend::{Backend, BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode, RnnPlan, RnnReserve};
use crate::config::RnnConfig;
use crate::element::Element;
use crate::error::{check_len, try_zeroed, Error, Result};
use crate::masks::MaskStream;
use crate::params::Params;
use crate::shape::SeqShape;
use std::marker::PhantomData;

/// Outputs of a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Output<T> {
    /// `[T, B, D·Hout]`, zero past each sequence's length.
    pub y: Vec<T>,
    /// `[L·D, B, Hout]`.
    pub hn: Vec<T>,
    /// `[L·D, B, H]`, LSTM only.
    pub cn: Option<Vec<T>>,
}

/// Gradients from a backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T> {
    /// `[T, B, I]`.
    pub dx: Vec<T>,
    /// `[L·D, B, Hout]`.
    pub dh0: Vec<T>,
    /// `[L·D, B, H]`, LSTM only.
    pub dc0: Option<Vec<T>>,
    /// Parameter gradients in the flat layout; `None` from
    /// [`Rnn::backward_accumulate`], which adds them into the caller's buffer instead.
    pub dparams: Option<Vec<T>>,
}

/// A layer stack on a backend: the backend and the plan made from the parameters.
///
/// ```
/// use rnn_kernels::{CellKind, Params, Reference, Rnn, RnnConfig, SeqShape};
/// let cfg = RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).build()?;
/// let params = Params::<f64>::init_uniform(&cfg, 7)?;
/// let rnn = Rnn::from_params(Reference, &params)?;
/// let shape = SeqShape::with_lengths(4, vec![4, 2])?; // T = 4, B = 2
/// let x = vec![0.5; 4 * 2 * 3];
/// let out = rnn.forward(&shape, &x, None, None)?;
/// assert_eq!(out.y.len(), 4 * 2 * 5);
/// # Ok::<(), rnn_kernels::Error>(())
/// ```
pub struct Rnn<T: Element, B: Backend<T>> {
    backend: B,
    plan: B::Plan,
    _t: PhantomData<fn() -> T>,
}

impl<T: Element, B: Backend<T>> Rnn<T, B> {
    /// Plans `config` with `params` (flat layout) on `backend`.
    pub fn new(backend: B, config: &RnnConfig, params: &B::Buf) -> Result<Self> {
        let plan = backend.plan(config, params)?;
        Ok(Rnn { backend, plan, _t: PhantomData })
    }
    /// A stack over a plan `backend` made ([`Backend::plan`]), for code that keeps its plans
    /// apart from the backend (a binding whose models share one plan between calls on several
    /// thread counts) and runs this type's conveniences on them.
    pub fn from_plan(backend: B, plan: B::Plan) -> Self {
        Rnn { backend, plan, _t: PhantomData }
    }
    /// The configuration.
    pub fn config(&self) -> &RnnConfig {
        self.plan.config()
    }
    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The plan, for calling the [`Backend`] methods directly on backend buffers.
    pub fn plan(&self) -> &B::Plan {
        &self.plan
    }
    /// Repacks new parameter values (after an optimiser step).
    pub fn update_params(&mut self, params: &B::Buf) -> Result<()> {
        self.backend.update_plan(&mut self.plan, params)
    }
    /// Plans another configuration with `params` on the same backend (to change an option such
    /// as [`dropout`](crate::RnnConfigBuilder::dropout)); on an error the old plan stays.
    pub fn replan(&mut self, config: &RnnConfig, params: &B::Buf) -> Result<()> {
        self.plan = self.backend.plan(config, params)?;
        Ok(())
    }
}

impl<T: Element, B: Backend<T, Buf = [T]>> Rnn<T, B> {
    /// Plans on `backend` from host [`Params`].
    pub fn from_params(backend: B, params: &Params<T>) -> Result<Self> {
        Self::new(backend, params.config(), params.as_slice())
    }

    /// The parameters the plan holds now, read back from the backend
    /// ([`Backend::read_params`]).
    pub fn params(&self) -> Result<Params<T>> {
        let mut v = try_zeroed("params", "the plan's parameters", self.plan.param_len())?;
        self.backend.read_params(&self.plan, &mut v)?;
        Params::from_vec(self.config(), v)
    }

    /// Inference: `x: [T, B, I]`, optional `h0: [L·D, B, Hout]` and `c0: [L·D, B, H]`.
    ///
    /// The outputs (and the backend's workspace) are allocated fallibly: outputs that do not fit
    /// in memory are [`Error::TooLarge`] naming `x`, not an abort.
    pub fn forward(&self, shape: &SeqShape, x: &[T], h0: Option<&[T]>, c0: Option<&[T]>) -> Result<Output<T>> {
        self.run_forward(shape, ForwardInput { x, h0, c0, masks: None }, None)
    }

    /// Training forward: like [`forward`](Self::forward), and fills `reserve` for
    /// [`backward`](Self::backward).
    pub fn forward_training(
        &self,
        shape: &SeqShape,
        x: &[T],
        h0: Option<&[T]>,
        c0: Option<&[T]>,
        reserve: &mut B::Reserve,
    ) -> Result<Output<T>> {
        self.run_forward(shape, ForwardInput { x, h0, c0, masks: None }, Some(reserve))
    }

    /// Training forward with the random masks `masks` (for a configuration with
    /// [`dropout`](crate::RnnConfigBuilder::dropout),
    /// [`zoneout`](crate::RnnConfigBuilder::zoneout),
    /// [`zoneout_cell`](crate::RnnConfigBuilder::zoneout_cell),
    /// [`recurrent_dropout`](crate::RnnConfigBuilder::recurrent_dropout) or
    /// [`input_dropout`](crate::RnnConfigBuilder::input_dropout)): like
    /// [`forward_training`](Self::forward_training), the masks drawn from `masks` (a training
    /// loop keeps one seed and takes a new offset per call: `MaskStream::new(seed, step)`).
    pub fn forward_training_masked(
        &self,
        shape: &SeqShape,
        x: &[T],
        h0: Option<&[T]>,
        c0: Option<&[T]>,
        masks: MaskStream,
        reserve: &mut B::Reserve,
    ) -> Result<Output<T>> {
        self.run_forward(shape, ForwardInput { x, h0, c0, masks: Some(masks) }, Some(reserve))
    }

    /// Allocates the outputs and runs inference, or a training pass filling `reserve`.
    ///
    /// The outputs are allocated fallibly: outputs that do not fit in memory (a long `x` with a
    /// large hidden size asks for `D·Hout / I` times its size) are [`Error::TooLarge`] naming
    /// `x`, not an abort.
    fn run_forward(&self, shape: &SeqShape, input: ForwardInput<'_, [T]>, reserve: Option<&mut B::Reserve>) -> Result<Output<T>> {
        // Check x before allocating outputs sized from `shape`.
        check_len("x", SeqShape::x_dims(self.config()), &shape.x_shape(self.config()), input.x.len())?;
        let cfg = self.config();
        let mut out = Output {
            y: alloc("x", "y", SeqShape::y_dims(cfg), shape.y_shape(cfg))?,
            hn: alloc("x", "hn", "[L·D, B, Hout]", shape.h_shape(cfg))?,
            cn: if cfg.cell().has_cell_state() { Some(alloc("x", "cn", "[L·D, B, H]", shape.c_shape(cfg))?) } else { None },
        };
        let output: ForwardOutput<'_, [T]> = ForwardOutput { y: &mut out.y, hn: Some(&mut out.hn), cn: out.cn.as_deref_mut() };
        match reserve {
            Some(r) => self.backend.forward_training(&self.plan, shape, input, output, r)?,
            None => self.backend.forward_inference(&self.plan, shape, input, output)?,
        }
        Ok(out)
    }

    /// Backpropagation through time; every gradient is freshly computed (parameter gradients
    /// overwrite, see [`GradMode::Overwrite`]). `dy`, `dhn`, `dcn` default to zeros.
    pub fn backward(&self, reserve: &B::Reserve, dy: Option<&[T]>, dhn: Option<&[T]>, dcn: Option<&[T]>) -> Result<Gradients<T>> {
        let mut dparams = try_zeroed("dparams", "the parameter gradients", self.plan.param_len())?;
        let mut g = self.run_backward(reserve, BackwardInput { dy, dhn, dcn }, &mut dparams, GradMode::Overwrite)?;
        g.dparams = Some(dparams);
        Ok(g)
    }

    /// Backpropagation through time that adds the parameter gradients into `dparams` (flat
    /// layout; see [`GradMode::Accumulate`]) and returns `dx`, `dh0`, `dc0`.
    pub fn backward_accumulate(
        &self,
        reserve: &B::Reserve,
        dy: Option<&[T]>,
        dhn: Option<&[T]>,
        dcn: Option<&[T]>,
        dparams: &mut [T],
    ) -> Result<Gradients<T>> {
        self.run_backward(reserve, BackwardInput { dy, dhn, dcn }, dparams, GradMode::Accumulate)
    }

    /// The backward of one decoder step's `reserve` without the parameters' gradients, kept in
    /// `acc` for one product over all the steps ([`Backend::backward_step_deferred`]); `None`
    /// where the backend does not defer.
    fn backward_step_deferred(
        &self,
        reserve: &B::Reserve,
        grads: BackwardInput<'_, [T]>,
        acc: &mut B::StepGrads,
    ) -> Result<Option<Gradients<T>>> {
        let mut g = self.grad_buffers(reserve)?;
        let output: BackwardOutput<'_, [T]> =
            BackwardOutput { dx: Some(&mut g.dx), dh0: Some(&mut g.dh0), dc0: g.dc0.as_deref_mut(), dparams: None };
        Ok(self.backend.backward_step_deferred(&self.plan, reserve, grads, output, acc)?.then_some(g))
    }

    /// `dx`, `dh0`, `dc0` for the backward of `reserve`'s call, zeroed.
    fn grad_buffers(&self, reserve: &B::Reserve) -> Result<Gradients<T>> {
        let shape = reserve.shape().ok_or_else(crate::backend::stack::empty_reserve)?;
        let cfg = self.config();
        Ok(Gradients {
            dx: alloc("reserve", "dx", SeqShape::x_dims(cfg), shape.x_shape(cfg))?,
            dh0: alloc("reserve", "dh0", "[L·D, B, Hout]", shape.h_shape(cfg))?,
            dc0: if cfg.cell().has_cell_state() { Some(alloc("reserve", "dc0", "[L·D, B, H]", shape.c_shape(cfg))?) } else { None },
            dparams: None,
        })
    }

    /// Allocates `dx`, `dh0`, `dc0` and runs backward with the parameter gradients in `dparams`.
    fn run_backward(&self, reserve: &B::Reserve, grads: BackwardInput<'_, [T]>, dparams: &mut [T], mode: GradMode) -> Result<Gradients<T>> {
        let mut g = self.grad_buffers(reserve)?;
        let output: BackwardOutput<'_, [T]> =
            BackwardOutput { dx: Some(&mut g.dx), dh0: Some(&mut g.dh0), dc0: g.dc0.as_deref_mut(), dparams: Some(dparams) };
        self.backend.backward(&self.plan, reserve, grads, output, mode)?;
        Ok(g)
    }
}

/// A decoder run one step at a time ([`Rnn::start_steps`]): the state after the last step and,
/// when training, what each step saved for backward.
pub struct Steps<T: Element, B: Backend<T>> {
    /// Per step, the reserve of its one-step training forward (`None`: an inference run).
    record: Option<Vec<B::Reserve>>,
    /// `[L, B, Hout]`: the hidden state after the last step.
    h: Vec<T>,
    /// `[L, B, H]` (LSTM): the cell state after the last step.
    c: Option<Vec<T>>,
    /// The training run's masks (its step `t` draws those of step `t` of the sequence).
    masks: Option<MaskStream>,
    steps: usize,
    /// `L`, `Hout`, `H`: the widths of the state's blocks.
    widths: [usize; 3],
}

impl<T: Element, B: Backend<T>> Steps<T, B> {
    /// The number of steps run.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The hidden state after the last step, `[L, B, Hout]`.
    pub fn h(&self) -> &[T] {
        &self.h
    }

    /// The cell state after the last step, `[L, B, H]` (LSTM).
    pub fn c(&self) -> Option<&[T]> {
        self.c.as_deref()
    }

    /// Whether this is a training run (its steps keep a record for
    /// [`Rnn::backward_steps`]).
    pub fn training(&self) -> bool {
        self.record.is_some()
    }

    /// The rows `B` of the state (what the next step's `x: [B, I]` has).
    pub fn batch(&self) -> usize {
        let [layers, hout, _] = self.widths;
        self.h.len() / (layers * hout).max(1)
    }

    /// Beam search on an inference run: row `i` of every layer's `[B, ·]` block of the new `h`
    /// (and `c`) is row `rows[i]` of the current one (repeats allowed), so the next step runs
    /// `rows.len()` rows, each from its parent hypothesis's state. Errors, each leaving the run
    /// as it was: a training run names `steps` (see [`state_mut`](Self::state_mut)), no row
    /// names `rows`, a row not below `B` names `rows[i]`; a state that [`state_mut`] left
    /// without whole `[L, B, ·]` blocks names `steps.h` or `steps.c`; a state too large to
    /// allocate is [`Error::TooLarge`] naming `rows`.
    ///
    /// [`state_mut`]: Self::state_mut
    pub fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        if self.training() {
            return Err(Error::invalid("steps", "an inference run (start_steps without training) to reorder", "a training run"));
        }
        if rows.is_empty() {
            return Err(Error::invalid("rows", "at least one row", "no row"));
        }
        let [layers, hout, hidden] = self.widths;
        let b = self.batch();
        if b == 0 || self.h.len() != layers * b * hout {
            return Err(Error::shape("steps.h", "[L, B, Hout] with B ≥ 1", format!("{} elements", self.h.len())));
        }
        if let Some(c) = &self.c {
            check_len("steps.c", "[L, B, H] with the B of steps.h", &[layers, b, hidden], c.len())?;
        }
        if let Some(i) = rows.iter().position(|&r| r >= b) {
            return Err(Error::invalid(format!("rows[{i}]"), format!("a row below the run's B = {b}"), rows[i]));
        }
        let gather = |v: &[T], width: usize, name: &str| -> Result<Vec<T>> {
            let mut out = alloc("rows", name, "[L, rows, ·]", [layers, rows.len(), width])?;
            for (l, block) in out.chunks_exact_mut(rows.len() * width).enumerate() {
                for (dst, &r) in block.chunks_exact_mut(width).zip(rows) {
                    let at = (l * b + r) * width;
                    dst.copy_from_slice(&v[at..at + width]);
                }
            }
            Ok(out)
        };
        let h = gather(&self.h, hout, "h")?;
        let c = self.c.as_deref().map(|c| gather(c, hidden, "c")).transpose()?;
        self.h = h;
        if c.is_some() {
            self.c = c;
        }
        Ok(())
    }

    /// The states, to change between the steps of an inference run: a beam search reorders
    /// the rows of each layer's `[B, ·]` block by the hypotheses' parents, and may change `B`
    /// (the next step's `x` then has the new `B` rows). A training run is an error naming
    /// `steps`: its backward carries each step's state gradient into the step before as the
    /// gradient of the state that step left, so a state changed in between would give the
    /// gradients of another computation.
    pub fn state_mut(&mut self) -> Result<(&mut Vec<T>, Option<&mut Vec<T>>)> {
        if self.training() {
            return Err(Error::invalid(
                "steps",
                "an inference run (start_steps without training) to change the state of",
                "a training run",
            ));
        }
        Ok((&mut self.h, self.c.as_mut()))
    }
}

/// The backward of a decoder's training run, one step at a time from the last
/// ([`Rnn::backward_steps`]): each [`step`](Self::step) takes that step's output gradient, which
/// may depend on the input gradient the later step returned (input feeding, attention over the
/// decoder's own states), and returns the step's input gradient.
pub struct BackwardSteps<'s, T: Element, B: Backend<T>> {
    /// Each step's reserve, borrowed from the run or taken from it.
    record: Record<'s, B::Reserve>,
    /// The next step to walk (`steps` when done: walked in reverse).
    next: usize,
    /// The gradients w.r.t. the state after step `next`: `dh`, `dc`.
    dh: Vec<T>,
    dc: Option<Vec<T>>,
    dparams: Vec<T>,
    /// The steps' input gradients, from the last step back.
    dx: Vec<Vec<T>>,
    /// What the backend keeps for the parameters' gradients, computed once the first step is
    /// walked ([`Backend::backward_step_deferred`]); `deferred` is whether it does (`None`
    /// before the first step walked).
    acc: B::StepGrads,
    deferred: Option<bool>,
}

/// A walk's steps' reserves: borrowed from the run ([`Rnn::backward_steps`]) or taken from it
/// ([`Rnn::take_backward_steps`]).
enum Record<'s, R> {
    Borrowed(&'s [R]),
    Taken(Vec<R>),
}

impl<R> std::ops::Deref for Record<'_, R> {
    type Target = [R];
    fn deref(&self) -> &[R] {
        match self {
            Record::Borrowed(r) => r,
            Record::Taken(r) => r,
        }
    }
}

impl<'s, T: Element, B: Backend<T>> BackwardSteps<'s, T, B> {
    /// The step the next [`step`](Self::step) walks back through, `None` when all are done.
    pub fn next_step(&self) -> Option<usize> {
        self.next.checked_sub(1)
    }
}

impl<T: Element, B: Backend<T, Buf = [T]>> Rnn<T, B> {
    /// Starts a decoder run one step at a time, for a stack whose input at step `t` is computed
    /// from what came out of the steps before it (input feeding, attention, sampling): `batch`
    /// sequences from `h0: [L, B, Hout]` and `c0: [L, B, H]` (zeros when not given). With
    /// `training`, each [`step`](Self::step) keeps what backward needs and
    /// [`backward_steps`](Self::backward_steps) walks them in reverse, taking each step's output
    /// gradient when it gets there; inference keeps only the state. `masks`: those of the
    /// regularisers in training; step `t` draws the masks of step `t` of one call over the
    /// whole sequence with the same stream ([`MaskStream::from_step`]), so teacher forcing
    /// through the steps is that call, dropout between layers and zoneout included.
    ///
    /// Each step's backward is the backend's backward over that step's record without the
    /// parameters' gradients ([`Backend::backward_step_deferred`]); when the first step is
    /// walked (the last), the parameters' gradients are computed from what every step kept,
    /// each weight's as one product over the rows of all the steps, as the backward of a call
    /// over the whole sequence computes them ([`Backend::deferred_param_grads`]; every backend
    /// here defers; one that did not would add each step's products of `B` rows instead). On the reference
    /// the outputs and every gradient, the parameters' included, are then those of one call
    /// over the whole sequence on the same inputs, bit for bit; on the CPU backend too where a
    /// step's products take the whole call's GEMM path (`B` ≥ 6 rows; with fewer, the skinny
    /// path, within f32 rounding) (`tests/decoder_steps.rs`). With 16-bit storage the
    /// parameters' gradients are summed in f32 and rounded once.
    ///
    /// For a forward (unidirectional) stack: a bidirectional or reverse-only one is an error
    /// naming `direction`. The CUDA backend draws the masks on the device (a stream of
    /// supplied masks is refused there, naming `masks`).
    pub fn start_steps(
        &self,
        batch: usize,
        h0: Option<&[T]>,
        c0: Option<&[T]>,
        training: bool,
        masks: Option<MaskStream>,
    ) -> Result<Steps<T, B>> {
        let cfg = self.config();
        if cfg.num_directions() != 1 || cfg.reverse_only() {
            return Err(Error::invalid(
                "direction",
                "forward: the steps of a decoder run forward in time",
                if cfg.reverse_only() { "reverse" } else { "bidirectional" },
            ));
        }
        let shape = SeqShape::new(1, batch)?;
        let h = match h0 {
            Some(h) => {
                check_len("h0", "[L, B, Hout]", &shape.h_shape(cfg), h.len())?;
                h.to_vec()
            }
            None => alloc("batch", "h0", "[L, B, Hout]", shape.h_shape(cfg))?,
        };
        let c = match (cfg.cell().has_cell_state(), c0) {
            (false, _) => None,
            (true, Some(c)) => {
                check_len("c0", "[L, B, H]", &shape.c_shape(cfg), c.len())?;
                Some(c.to_vec())
            }
            (true, None) => Some(alloc("batch", "c0", "[L, B, H]", shape.c_shape(cfg))?),
        };
        Ok(Steps {
            record: training.then(Vec::new),
            h,
            c,
            masks: if training { masks } else { None },
            steps: 0,
            widths: [cfg.num_layers(), cfg.hidden_out_size(), cfg.hidden_size()],
        })
    }

    /// One step of a decoder run: `x: [B, I]`, `B` the rows of the state; returns
    /// `y: [B, Hout]` and moves the state on.
    pub fn step(&self, steps: &mut Steps<T, B>, x: &[T]) -> Result<Vec<T>> {
        let cfg = self.config();
        let rows = cfg.num_layers() * cfg.hidden_out_size();
        let batch = steps.h.len() / rows.max(1);
        if batch == 0 || steps.h.len() != batch * rows {
            return Err(Error::shape("steps.h", "[L, B, Hout] with B ≥ 1", format!("{} elements", steps.h.len())));
        }
        if let Some(first) = steps.record.as_ref().and_then(|r| r.first()).and_then(|r| r.shape()) {
            if first.batch() != batch {
                return Err(Error::invalid(
                    "steps.h",
                    format!("the B = {} of the training run's first step", first.batch()),
                    format!("B = {batch}"),
                ));
            }
        }
        let shape = SeqShape::new(1, batch)?;
        check_len("x", "[B, I]", &[1, batch, cfg.input_size()], x.len())?;
        if let Some(c) = &steps.c {
            check_len("steps.c", "[L, B, H] with the B of steps.h", &shape.c_shape(cfg), c.len())?;
        }
        let masks = steps.masks.as_ref().map(|m| m.from_step(steps.steps)).transpose()?;
        let input = ForwardInput { x, h0: Some(&steps.h), c0: steps.c.as_deref(), masks };
        let out = match steps.record.as_mut() {
            Some(record) => {
                let mut reserve = B::Reserve::default();
                let out = self.run_forward(&shape, input, Some(&mut reserve))?;
                record.push(reserve);
                out
            }
            None => self.run_forward(&shape, input, None)?,
        };
        steps.h = out.hn;
        if out.cn.is_some() {
            steps.c = out.cn;
        }
        steps.steps += 1;
        Ok(out.y)
    }

    /// Starts the backward of a training run's steps from `dhn`, `dcn`, the gradients w.r.t. the
    /// state after the last step (zeros when not given); walk it with
    /// [`BackwardSteps::step`], then [`BackwardSteps::finish`].
    pub fn backward_steps<'s>(&self, steps: &'s Steps<T, B>, dhn: Option<&[T]>, dcn: Option<&[T]>) -> Result<BackwardSteps<'s, T, B>> {
        let record = Self::walkable(steps)?;
        self.start_walk(steps, Record::Borrowed(record), dhn, dcn)
    }

    /// [`backward_steps`](Self::backward_steps) that takes the steps' record out of `steps`
    /// instead of borrowing it, so that the walk can be kept apart from the run (a binding's
    /// object of its own). `steps` stays a training run with the same state and no step kept:
    /// the steps it runs next are a new record whose backward starts from their own last state
    /// (truncated backpropagation through time). On an error `steps` is unchanged.
    pub fn take_backward_steps(
        &self,
        steps: &mut Steps<T, B>,
        dhn: Option<&[T]>,
        dcn: Option<&[T]>,
    ) -> Result<BackwardSteps<'static, T, B>> {
        Self::walkable(steps)?;
        // The checks of the gradients first, on an empty record, so that an error leaves the
        // run as it was.
        let mut walk = self.start_walk(steps, Record::Taken(Vec::new()), dhn, dcn)?;
        let record = std::mem::take(steps.record.as_mut().expect("walkable checked a training run"));
        walk.next = record.len();
        walk.record = Record::Taken(record);
        Ok(walk)
    }

    /// The record of a training run with at least one step.
    fn walkable(steps: &Steps<T, B>) -> Result<&[B::Reserve]> {
        match &steps.record {
            None => Err(Error::invalid("steps", "a training run (start_steps with training)", "an inference run")),
            Some(r) if r.is_empty() => Err(Error::invalid("steps", "a training run with at least one step", "no step")),
            Some(r) => Ok(r),
        }
    }

    /// A walk of `record` from the state gradients `dhn`, `dcn` (checked against `steps`' state).
    fn start_walk<'s>(
        &self,
        steps: &Steps<T, B>,
        record: Record<'s, B::Reserve>,
        dhn: Option<&[T]>,
        dcn: Option<&[T]>,
    ) -> Result<BackwardSteps<'s, T, B>> {
        let state = |v: Option<&[T]>, like: &[T], arg: &str| -> Result<Vec<T>> {
            match v {
                Some(v) => {
                    check_len(arg, "the shape of the state", &[1, 1, like.len()], v.len())?;
                    Ok(v.to_vec())
                }
                None => Ok(vec![T::from_f64(0.0); like.len()]),
            }
        };
        let dh = state(dhn, &steps.h, "dhn")?;
        let dc = match &steps.c {
            Some(c) => Some(state(dcn, c, "dcn")?),
            None => None,
        };
        let dparams = try_zeroed("dparams", "the parameter gradients", self.plan.param_len())?;
        let next = record.len();
        Ok(BackwardSteps { record, next, dh, dc, dparams, dx: Vec::new(), acc: B::StepGrads::default(), deferred: None })
    }
}

impl<T: Element, B: Backend<T, Buf = [T]>> BackwardSteps<'_, T, B> {
    /// Walks back through the next step (the last one first) with `dy: [B, Hout]`, the gradient
    /// w.r.t. that step's output (zeros when not given), and returns `dx: [B, I]`, w.r.t. its
    /// input (the walk keeps it for [`finish`](Self::finish): the slice is that copy, so a
    /// caller copies it where it wants it, once). Walking step 0 (the last walked) also computes
    /// the parameters' gradients (see [`Rnn::start_steps`]); after it, a step is an error. `rnn`
    /// is the model the steps ran on.
    pub fn step(&mut self, rnn: &Rnn<T, B>, dy: Option<&[T]>) -> Result<&[T]> {
        let Some(t) = self.next.checked_sub(1) else {
            return Err(Error::invalid("step", "a step not yet walked back", "every step walked back already"));
        };
        let record = &*self.record;
        let grads = BackwardInput { dy, dhn: Some(&self.dh), dcn: self.dc.as_deref() };
        let accumulate = |dparams: &mut [T]| rnn.backward_accumulate(&record[t], dy, Some(&self.dh), self.dc.as_deref(), dparams);
        let (g, deferred) = match self.deferred {
            Some(false) => (accumulate(&mut self.dparams)?, false),
            _ => match rnn.backward_step_deferred(&record[t], grads, &mut self.acc)? {
                Some(g) => (g, true),
                None if self.deferred.is_none() => (accumulate(&mut self.dparams)?, false),
                None => {
                    return Err(Error::invalid("rnn", "the model the walk's earlier steps ran on", "a model whose backend does not defer"))
                }
            },
        };
        self.deferred = Some(deferred);
        if deferred && t == 0 {
            // Every step is walked: the parameters' gradients, one product per weight.
            let acc = std::mem::take(&mut self.acc);
            rnn.backend.deferred_param_grads(&rnn.plan, record, acc, &mut self.dparams, GradMode::Overwrite)?;
        }
        self.dh = g.dh0;
        if let Some(dc) = g.dc0 {
            self.dc = Some(dc);
        }
        self.next = t;
        self.dx.push(g.dx);
        Ok(self.dx.last().map_or(&[], Vec::as_slice))
    }

    /// The gradients of the whole run once every step was walked back: `dx: [T, B, I]` (every
    /// step's, in step order), `dh0`, `dc0` and the parameters'. An error naming `steps` while a
    /// step is left.
    pub fn finish(self) -> Result<Gradients<T>> {
        if self.next != 0 {
            return Err(Error::invalid("steps", "every step walked back before finish", format!("{} steps left", self.next)));
        }
        let dx = self.dx.into_iter().rev().flatten().collect();
        Ok(Gradients { dx, dh0: self.dh, dc0: self.dc, dparams: Some(self.dparams) })
    }
}

/// A zeroed output buffer `name` of shape `shape` (`dims` in words), sized from the argument
/// `arg`: the element count in checked arithmetic and the allocation fallible, so a size that
/// overflows or does not fit in memory is [`Error::TooLarge`] naming `arg`.
pub(crate) fn alloc<T: Element>(arg: &str, name: &str, dims: &str, shape: [usize; 3]) -> Result<Vec<T>> {
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(n) => try_zeroed(arg, format!("output `{name}`, {dims} = {shape:?}"), n),
        None => Err(Error::TooLarge {
            arg: arg.into(),
            what: format!("output `{name}`, {dims} = {shape:?}"),
            bytes: shape.iter().fold(std::mem::size_of::<T>() as u128, |n, &d| n.saturating_mul(d as u128)),
            reason: "is more elements than an address space holds".into(),
        }),
    }
}
