//! How one training call enters candle's graph: the custom ops and the state they share.
//!
//! candle's custom ops take at most three inputs and give one output, and its backward keeps a
//! gradient per tensor of the graph. A call has up to `P + 3` inputs (every parameter, `x`,
//! `h0`, `c0`) and three outputs (`y`, `hn`, `cn`), so it enters the graph as a chain of small
//! ops around one [`Call`] that they share:
//!
//! ```text
//! token ─ Tie(w_0) ─ Tie(w_1) ─ … ─ Tie(x) ─ Tie(h0) ─ Run ─┬─ Out(y)
//!                                                           ├─ Out(hn)
//!                                                           └─ Out(cn)
//! ```
//!
//! Every arrow is a one-element tensor (a "token") that only orders the graph. The forward pass
//! has already run when the chain is built; each `Out` hands its output to candle without a copy.
//! candle's backward walks the graph from the loss in reverse topological order, so it reaches
//! the ops in this order:
//!
//! 1. each `Out` whose output the loss depends on keeps its output's gradient in the call;
//! 2. `Run` runs the library's fused backward once, over the call's reserve and with the plan
//!    its forward pass used, from the gradients the `Out`s kept (`None`, zeros, for the others),
//!    and keeps the results;
//! 3. each `Tie`, from the last to the first, returns its input's gradient: a parameter's is a
//!    view of the one flat parameter gradient (no copy), `x`'s, `h0`'s and `c0`'s are the
//!    tensors backward wrote. The first `Tie` (the last to run) drops what is left.
//!
//! Only tensors that candle tracks (variables, and results of tracked ops) get a `Tie`; the
//! others are plain data of the call, and backward skips their gradients.

use crate::element::CandleFloat;
use crate::pool::Pool;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor};
use rnn_kernels::{Backend, BackwardInput, BackwardOutput, GradMode};
use std::sync::{Arc, Mutex, MutexGuard};

/// Which output an [`Out`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Y = 0,
    Hn = 1,
    Cn = 2,
}

/// Which input a [`Tie`] attaches.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// A parameter: `len` elements at `offset` of the flat layout, of shape `shape`.
    Param {
        offset: usize,
        len: usize,
        shape: Vec<usize>,
    },
    X,
    H0,
    C0,
}

/// What a backward pass computed, for the `Tie`s to hand out.
struct Results {
    /// The flat parameter gradient, one tensor, which the `Tie`s cut into views.
    dparams: Tensor,
    dx: Option<Tensor>,
    dh0: Option<Tensor>,
    dc0: Option<Tensor>,
}

/// The state of one training call, shared by its ops (and dropped with the last of them, when
/// candle drops the graph): the plan its forward pass used, its reserve, its outputs until candle
/// takes them, and in backward the gradients on their way through.
pub(crate) struct Call<T: CandleFloat, B: Backend<T, Buf = [T]>> {
    backend: Arc<B>,
    /// The plan of the forward pass, held so that backward runs with the same weights: the module
    /// updates a plan in place only when nothing else holds it.
    plan: Arc<B::Plan>,
    /// Filled by the forward pass; back to `pool` when the call is dropped.
    reserve: Mutex<Option<B::Reserve>>,
    pool: Arc<Pool<B::Reserve>>,
    /// The outputs' shapes (candle's dims: `y` batch-first for a batch-first configuration).
    shapes: [Vec<usize>; 3],
    /// The outputs until each `Out` takes its own.
    outputs: Mutex<[Option<Vec<T>>; 3]>,
    /// The gradients of `y`, `hn`, `cn` that the `Out`s keep for `Run`, in one backward pass.
    upstream: Mutex<[Option<Tensor>; 3]>,
    /// Whether backward computes `dx`, `dh0`, `dc0` (the input has a `Tie`).
    wants: [bool; 3],
    /// `x`'s, `h0`'s and `c0`'s dims.
    input_dims: [Vec<usize>; 3],
    results: Mutex<Option<Results>>,
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    // A panic in another op of the call cannot leave this state half-written in a way that
    // matters: every field is replaced whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn err(e: rnn_kernels::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// A one-element zero of `T`, the value (and gradient) of every token.
pub(crate) fn token<T: CandleFloat>() -> candle_core::Result<Tensor> {
    Tensor::zeros(1, T::dtype(), &Device::Cpu)
}

/// The elements of a contiguous CPU tensor, and the guard that keeps them readable.
pub(crate) struct Data<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> Data<'a> {
    /// `t`'s elements; `t` must be contiguous (the caller makes it so).
    pub(crate) fn of(t: &'a Tensor) -> candle_core::Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        if !layout.is_contiguous() {
            candle_core::bail!("rnn-kernels-candle: internal error, a non-contiguous tensor reached the kernels")
        }
        Ok(Data { guard, start: layout.start_offset(), len: layout.shape().elem_count() })
    }

    /// The elements as `T`.
    pub(crate) fn slice<T: CandleFloat>(&self) -> candle_core::Result<&[T]> {
        match &*self.guard {
            candle_core::Storage::Cpu(s) => Ok(&T::slice(s)?[self.start..self.start + self.len]),
            _ => candle_core::bail!("rnn-kernels-candle runs on the CPU device only"),
        }
    }
}

impl<T: CandleFloat, B: Backend<T, Buf = [T]>> Call<T, B> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        backend: Arc<B>,
        plan: Arc<B::Plan>,
        reserve: B::Reserve,
        pool: Arc<Pool<B::Reserve>>,
        outputs: [Option<Vec<T>>; 3],
        shapes: [Vec<usize>; 3],
        wants: [bool; 3],
        input_dims: [Vec<usize>; 3],
    ) -> Self {
        Call {
            backend,
            plan,
            reserve: Mutex::new(Some(reserve)),
            pool,
            shapes,
            outputs: Mutex::new(outputs),
            upstream: Mutex::new([None, None, None]),
            wants,
            input_dims,
            results: Mutex::new(None),
        }
    }

    /// The library's backward over this call, from the kept upstream gradients.
    fn backward(&self) -> candle_core::Result<Results> {
        let upstream = std::mem::take(&mut *lock(&self.upstream));
        // candle's gradients may be views (a broadcast of a scalar loss's gradient): the
        // kernels read dense buffers.
        let upstream: Vec<Option<Tensor>> =
            upstream.into_iter().map(|g| g.map(|g| g.contiguous()).transpose()).collect::<candle_core::Result<_>>()?;
        let data: Vec<Option<Data<'_>>> =
            upstream.iter().map(|g| g.as_ref().map(Data::of).transpose()).collect::<candle_core::Result<_>>()?;
        let slices: Vec<Option<&[T]>> =
            data.iter().map(|d| d.as_ref().map(|d| d.slice::<T>()).transpose()).collect::<candle_core::Result<_>>()?;

        let n = |dims: &[usize]| dims.iter().product::<usize>();
        let mut dparams = vec![T::ZERO; rnn_kernels::RnnPlan::param_len(&*self.plan)];
        let mut dx = self.wants[0].then(|| vec![T::ZERO; n(&self.input_dims[0])]);
        let mut dh0 = self.wants[1].then(|| vec![T::ZERO; n(&self.input_dims[1])]);
        let mut dc0 = self.wants[2].then(|| vec![T::ZERO; n(&self.input_dims[2])]);
        {
            let reserve = lock(&self.reserve);
            let reserve = reserve.as_ref().expect("the reserve leaves the call only when it is dropped");
            self.backend
                .backward(
                    &self.plan,
                    reserve,
                    BackwardInput { dy: slices[0], dhn: slices[1], dcn: slices[2] },
                    BackwardOutput { dx: dx.as_deref_mut(), dh0: dh0.as_deref_mut(), dc0: dc0.as_deref_mut(), dparams: Some(&mut dparams) },
                    GradMode::Overwrite,
                )
                .map_err(err)?;
        }
        let tensor = |v: Option<Vec<T>>, dims: &[usize]| v.map(|v| Tensor::from_vec(v, dims, &Device::Cpu)).transpose();
        Ok(Results {
            dparams: Tensor::from_vec(dparams, rnn_kernels::RnnPlan::param_len(&*self.plan), &Device::Cpu)?,
            dx: tensor(dx, &self.input_dims[0])?,
            dh0: tensor(dh0, &self.input_dims[1])?,
            dc0: tensor(dc0, &self.input_dims[2])?,
        })
    }
}

impl<T: CandleFloat, B: Backend<T, Buf = [T]>> Drop for Call<T, B> {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.reserve).take() {
            self.pool.put(r);
        }
    }
}

/// The shape check of every op's one-element token argument.
fn check_token(l: &Layout) -> candle_core::Result<()> {
    if l.shape().elem_count() != 1 {
        candle_core::bail!("rnn-kernels-candle: internal error, a token of {:?}", l.shape())
    }
    Ok(())
}

fn zero_storage<T: CandleFloat>() -> (CpuStorage, Shape) {
    (T::to_cpu_storage_owned(vec![T::ZERO]), Shape::from(1))
}

/// Attaches one input of the call to the chain: `token' = Tie(token, input)`.
pub(crate) struct Tie<T: CandleFloat, B: Backend<T, Buf = [T]>> {
    pub(crate) call: Arc<Call<T, B>>,
    pub(crate) slot: Slot,
    /// The first `Tie` of the chain: its token is not tracked, and it is the last to run in
    /// backward.
    pub(crate) first: bool,
}

impl<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static> CustomOp2 for Tie<T, B> {
    fn name(&self) -> &'static str {
        "rnn-kernels-tie"
    }

    fn cpu_fwd(&self, _: &CpuStorage, l1: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        check_token(l1)?;
        Ok(zero_storage::<T>())
    }

    fn bwd(&self, _token: &Tensor, input: &Tensor, _res: &Tensor, _grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut results = lock(&self.call.results);
        let Some(r) = results.as_mut() else {
            candle_core::bail!("rnn-kernels-candle: internal error, an input's gradient was asked for before the call's backward ran")
        };
        let g = match &self.slot {
            Slot::Param { offset, len, shape } => Some(r.dparams.narrow(0, *offset, *len)?.reshape(shape.as_slice())?),
            Slot::X => r.dx.take(),
            Slot::H0 => r.dh0.take(),
            Slot::C0 => r.dc0.take(),
        };
        let Some(g) = g else { candle_core::bail!("rnn-kernels-candle: internal error, an input's gradient was asked for twice") };
        debug_assert_eq!(g.dims(), input.dims());
        if self.first {
            *results = None;
            return Ok((None, Some(g)));
        }
        Ok((Some(token::<T>()?), Some(g)))
    }
}

/// The end of the chain: its backward runs the call's backward. `token' = Run(token)`.
pub(crate) struct Run<T: CandleFloat, B: Backend<T, Buf = [T]>> {
    pub(crate) call: Arc<Call<T, B>>,
}

impl<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static> CustomOp1 for Run<T, B> {
    fn name(&self) -> &'static str {
        "rnn-kernels-run"
    }

    fn cpu_fwd(&self, _: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        check_token(l)?;
        Ok(zero_storage::<T>())
    }

    fn bwd(&self, _token: &Tensor, _res: &Tensor, _grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let r = self.call.backward()?;
        *lock(&self.call.results) = Some(r);
        Ok(Some(token::<T>()?))
    }
}

/// One output of the call: `y = Out(token)`, its values those of the forward pass.
pub(crate) struct Out<T: CandleFloat, B: Backend<T, Buf = [T]>> {
    pub(crate) call: Arc<Call<T, B>>,
    pub(crate) which: Which,
}

impl<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static> CustomOp1 for Out<T, B> {
    fn name(&self) -> &'static str {
        "rnn-kernels-out"
    }

    fn cpu_fwd(&self, _: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        check_token(l)?;
        let i = self.which as usize;
        let Some(v) = lock(&self.call.outputs)[i].take() else {
            candle_core::bail!("rnn-kernels-candle: internal error, output {:?} taken twice", self.which)
        };
        Ok((T::to_cpu_storage_owned(v), Shape::from(self.call.shapes[i].as_slice())))
    }

    fn bwd(&self, _token: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        lock(&self.call.upstream)[self.which as usize] = Some(grad.clone());
        Ok(Some(token::<T>()?))
    }
}

/// The dtype check of the tensors a call takes.
pub(crate) fn check_dtype<T: CandleFloat>(name: &str, t: &Tensor) -> candle_core::Result<()> {
    if t.dtype() != T::dtype() {
        candle_core::bail!("{name}: dtype {:?}, the module's, expected; got {:?}", T::dtype(), t.dtype())
    }
    if !matches!(t.device(), Device::Cpu) {
        candle_core::bail!("{name}: a tensor on the CPU device expected (rnn-kernels-candle runs on the CPU)")
    }
    Ok(())
}
