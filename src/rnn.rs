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

    /// Allocates `dx`, `dh0`, `dc0` and runs backward with the parameter gradients in `dparams`.
    fn run_backward(&self, reserve: &B::Reserve, grads: BackwardInput<'_, [T]>, dparams: &mut [T], mode: GradMode) -> Result<Gradients<T>> {
        let shape = reserve.shape().ok_or_else(crate::backend::stack::empty_reserve)?;
        let cfg = self.config();
        let mut g = Gradients {
            dx: alloc("reserve", "dx", SeqShape::x_dims(cfg), shape.x_shape(cfg))?,
            dh0: alloc("reserve", "dh0", "[L·D, B, Hout]", shape.h_shape(cfg))?,
            dc0: if cfg.cell().has_cell_state() { Some(alloc("reserve", "dc0", "[L·D, B, H]", shape.c_shape(cfg))?) } else { None },
            dparams: None,
        };
        let output: BackwardOutput<'_, [T]> =
            BackwardOutput { dx: Some(&mut g.dx), dh0: Some(&mut g.dh0), dc0: g.dc0.as_deref_mut(), dparams: Some(dparams) };
        self.backend.backward(&self.plan, reserve, grads, output, mode)?;
        Ok(g)
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
