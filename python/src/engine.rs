//! The backends behind a `Model`: its plan (shared with the reserves filled with it), the
//! process-wide CPU backends and CUDA device, and the calls of the [`Backend`] trait for each
//! element type.
//!
//! The plan is kept apart from the backend: a CPU plan does not depend on the number of threads,
//! so a call with another thread count takes another [`Cpu`] (one rayon pool per ISA and thread
//! count in the process, [`cpu`]) and the same plan. A CUDA plan (feature `cuda`) holds its
//! weights on the device; its calls take NumPy's host arrays through [`CudaHost`], which uploads
//! the inputs and downloads the outputs, and its reserves stay on the device.

use rnn_kernels::{
    Backend, BackwardInput, BackwardOutput, Cpu, CpuPlan, Error, Float, ForwardInput, ForwardOutput, GradMode, HostPlan, HostReserve,
    HostStepGrads, Isa, Reference, Result, RnnConfig, RnnPlan, RnnReserve, SeqShape,
};
#[cfg(feature = "cuda")]
use rnn_kernels::{CudaHost, CudaPlan, CudaReserve, CudaStepGrads};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Reference,
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            Kind::Cpu => "cpu",
            #[cfg(feature = "cuda")]
            Kind::Cuda => "cuda",
        }
    }
}

/// The backend a call runs on: the reference, the CPU backend of the call's ISA and thread
/// count, or the CUDA device.
#[derive(Clone)]
pub(crate) enum Ctx {
    Reference,
    Cpu(Cpu),
    #[cfg(feature = "cuda")]
    Cuda(CudaHost),
}

impl Ctx {
    fn cpu(&self) -> Result<&Cpu> {
        match self {
            Ctx::Cpu(c) => Ok(c),
            _ => Err(mismatch("threads")),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Result<&CudaHost> {
        match self {
            Ctx::Cuda(c) => Ok(c),
            _ => Err(mismatch("backend")),
        }
    }

    /// The backend's kind.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Ctx::Reference => Kind::Reference,
            Ctx::Cpu(_) => Kind::Cpu,
            #[cfg(feature = "cuda")]
            Ctx::Cuda(_) => Kind::Cuda,
        }
    }
}

/// A plan of one of the backends and element types.
pub(crate) enum Plan {
    Ref32(HostPlan<f32>),
    Ref64(HostPlan<f64>),
    Cpu(CpuPlan),
    #[cfg(feature = "cuda")]
    Cuda(CudaPlan),
}

impl Plan {
    /// The configuration the plan was made for.
    pub(crate) fn config(&self) -> &RnnConfig {
        match self {
            Plan::Ref32(p) => p.config(),
            Plan::Ref64(p) => p.config(),
            Plan::Cpu(p) => p.config(),
            #[cfg(feature = "cuda")]
            Plan::Cuda(p) => p.config(),
        }
    }

    /// The backend that made it.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Plan::Ref32(_) | Plan::Ref64(_) => Kind::Reference,
            Plan::Cpu(_) => Kind::Cpu,
            #[cfg(feature = "cuda")]
            Plan::Cuda(_) => Kind::Cuda,
        }
    }
}

/// A reserve's buffers, of the backend and element type of the last call that filled it.
#[derive(Default)]
pub(crate) enum Buffers {
    #[default]
    Empty,
    F32(HostReserve<f32>),
    F64(HostReserve<f64>),
    /// On the device (f32 storage).
    #[cfg(feature = "cuda")]
    Cuda(CudaReserve),
}

impl Buffers {
    /// The bytes its buffers hold (device memory for a CUDA reserve).
    pub(crate) fn nbytes(&self) -> usize {
        match self {
            Buffers::Empty => 0,
            Buffers::F32(r) => r.nbytes(),
            Buffers::F64(r) => r.nbytes(),
            #[cfg(feature = "cuda")]
            Buffers::Cuda(r) => r.nbytes(),
        }
    }

    /// The shape of the training call that filled it with `T`'s buffers; `None` while empty or
    /// filled with another type's.
    pub(crate) fn shape_of<T: Elem>(&self) -> Option<&SeqShape> {
        match self {
            #[cfg(feature = "cuda")]
            Buffers::Cuda(r) if T::NAME == <f32 as Elem>::NAME => r.shape(),
            _ => T::reserve_ref(self).and_then(|r| r.shape()),
        }
    }
}

/// The CPU backend for `isa` on `threads` threads: one per pair in the process, made at first
/// use, so that every model with the same thread count shares one pool of threads.
pub(crate) fn cpu(isa: Isa, threads: usize) -> Result<Cpu> {
    static CPUS: Mutex<Option<HashMap<(Isa, usize), Cpu>>> = Mutex::new(None);
    let mut cpus = CPUS.lock().unwrap_or_else(|e| e.into_inner());
    let cpus = cpus.get_or_insert_with(HashMap::new);
    if let Some(c) = cpus.get(&(isa, threads)) {
        return Ok(c.clone());
    }
    let c = Cpu::with_isa(isa, threads)?;
    cpus.insert((isa, threads), c.clone());
    Ok(c)
}

/// The CUDA backend on host arrays, on the device `RNN_KERNELS_CUDA_DEVICE` names (0 by
/// default), opened at first use and shared by every model; an error that says what is missing
/// where there is no GPU or driver.
#[cfg(feature = "cuda")]
pub(crate) fn cuda() -> Result<CudaHost> {
    static DEVICE: Mutex<Option<CudaHost>> = Mutex::new(None);
    let mut dev = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = dev.as_ref() {
        return Ok(d.clone());
    }
    let d = CudaHost::new()?;
    *dev = Some(d.clone());
    Ok(d)
}

fn mismatch(what: &str) -> Error {
    Error::InvalidArgument {
        arg: what.into(),
        expected: "the element type and backend of the model's plan".into(),
        got: "another element type or backend (an internal inconsistency of the bindings)".into(),
    }
}

/// The CUDA reserve of `b`, made empty when `b` holds another backend's or type's.
#[cfg(feature = "cuda")]
fn cuda_reserve_mut(b: &mut Buffers) -> &mut CudaReserve {
    if !matches!(b, Buffers::Cuda(_)) {
        *b = Buffers::Cuda(CudaReserve::default());
    }
    match b {
        Buffers::Cuda(r) => r,
        _ => unreachable!("set just above"),
    }
}

/// The [`Backend`] calls for one element type: `f32` (every backend) or `f64` (the reference).
pub(crate) trait Elem: Float + numpy::Element {
    /// NumPy's name of the dtype.
    const NAME: &'static str;

    fn plan(ctx: &Ctx, config: &RnnConfig, params: &[Self]) -> Result<Plan>;
    fn update(plan: &mut Plan, ctx: &Ctx, params: &[Self]) -> Result<()>;
    fn read(plan: &Plan, ctx: &Ctx, params: &mut [Self]) -> Result<()>;

    /// A forward pass on the plan's backend: inference, or training into `reserve` (made the
    /// backend's and type's first).
    fn forward(
        plan: &Plan,
        ctx: &Ctx,
        shape: &SeqShape,
        input: ForwardInput<'_, [Self]>,
        output: ForwardOutput<'_, [Self]>,
        reserve: Option<&mut Buffers>,
    ) -> Result<()> {
        Self::forward_host(plan, ctx, shape, input, output, reserve.map(Self::reserve_mut))
    }

    /// The backward of the pass that filled `reserve`.
    fn backward(
        plan: &Plan,
        ctx: &Ctx,
        reserve: &Buffers,
        grads: BackwardInput<'_, [Self]>,
        output: BackwardOutput<'_, [Self]>,
        mode: GradMode,
    ) -> Result<()> {
        let r = Self::reserve_ref(reserve).ok_or_else(|| mismatch("reserve"))?;
        Self::backward_host(plan, ctx, r, grads, output, mode)
    }

    /// [`forward`](Self::forward) on a host backend's plan.
    fn forward_host(
        plan: &Plan,
        ctx: &Ctx,
        shape: &SeqShape,
        input: ForwardInput<'_, [Self]>,
        output: ForwardOutput<'_, [Self]>,
        reserve: Option<&mut HostReserve<Self>>,
    ) -> Result<()>;
    /// [`backward`](Self::backward) on a host backend's plan.
    fn backward_host(
        plan: &Plan,
        ctx: &Ctx,
        reserve: &HostReserve<Self>,
        grads: BackwardInput<'_, [Self]>,
        output: BackwardOutput<'_, [Self]>,
        mode: GradMode,
    ) -> Result<()>;
    /// The backward of one decoder step, its parameters' gradients kept in `acc`
    /// (`Backend::backward_step_deferred`; every host backend defers).
    fn backward_step(
        plan: &Plan,
        ctx: &Ctx,
        reserve: &HostReserve<Self>,
        grads: BackwardInput<'_, [Self]>,
        output: BackwardOutput<'_, [Self]>,
        acc: &mut HostStepGrads<Self>,
    ) -> Result<()>;
    /// The parameters' gradients of the decoder steps walked back into `acc`, written into or
    /// added to `dparams` (`Backend::deferred_param_grads`).
    fn deferred_params(
        plan: &Plan,
        ctx: &Ctx,
        reserves: &[HostReserve<Self>],
        acc: HostStepGrads<Self>,
        dparams: &mut [Self],
        mode: GradMode,
    ) -> Result<()>;
    /// The buffers as this type's host reserve; other buffers are dropped for an empty one.
    fn reserve_mut(b: &mut Buffers) -> &mut HostReserve<Self>;
    fn reserve_ref(b: &Buffers) -> Option<&HostReserve<Self>>;
}

/// A host backend's deferred step: it always defers (`false` would leave the step not walked).
fn deferred(walked: Result<bool>) -> Result<()> {
    match walked? {
        true => Ok(()),
        false => Err(Error::InvalidArgument {
            arg: "backend".into(),
            expected: "a host backend, which defers a decoder step's parameter gradients".into(),
            got: "one that does not (an internal inconsistency of the bindings)".into(),
        }),
    }
}

impl Elem for f32 {
    const NAME: &'static str = "float32";

    fn plan(ctx: &Ctx, config: &RnnConfig, params: &[f32]) -> Result<Plan> {
        Ok(match ctx {
            Ctx::Reference => Plan::Ref32(Backend::<f32>::plan(&Reference, config, params)?),
            Ctx::Cpu(c) => Plan::Cpu(Backend::<f32>::plan(c, config, params)?),
            #[cfg(feature = "cuda")]
            Ctx::Cuda(c) => Plan::Cuda(Backend::<f32>::plan(c, config, params)?),
        })
    }

    fn update(plan: &mut Plan, ctx: &Ctx, params: &[f32]) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::update_plan(&Reference, p, params),
            Plan::Cpu(p) => Backend::<f32>::update_plan(ctx.cpu()?, p, params),
            #[cfg(feature = "cuda")]
            Plan::Cuda(p) => Backend::<f32>::update_plan(ctx.cuda()?, p, params),
            Plan::Ref64(_) => Err(mismatch("params")),
        }
    }

    fn read(plan: &Plan, ctx: &Ctx, params: &mut [f32]) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::read_params(&Reference, p, params),
            Plan::Cpu(p) => Backend::<f32>::read_params(ctx.cpu()?, p, params),
            #[cfg(feature = "cuda")]
            Plan::Cuda(p) => Backend::<f32>::read_params(ctx.cuda()?, p, params),
            Plan::Ref64(_) => Err(mismatch("params")),
        }
    }

    fn forward(
        plan: &Plan,
        ctx: &Ctx,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
        reserve: Option<&mut Buffers>,
    ) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Plan::Cuda(p) = plan {
            let c = ctx.cuda()?;
            return match reserve {
                None => Backend::<f32>::forward_inference(c, p, shape, input, output),
                Some(b) => Backend::<f32>::forward_training(c, p, shape, input, output, cuda_reserve_mut(b)),
            };
        }
        Self::forward_host(plan, ctx, shape, input, output, reserve.map(Self::reserve_mut))
    }

    fn backward(
        plan: &Plan,
        ctx: &Ctx,
        reserve: &Buffers,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Plan::Cuda(p) = plan {
            let Buffers::Cuda(r) = reserve else { return Err(mismatch("reserve")) };
            return Backend::<f32>::backward(ctx.cuda()?, p, r, grads, output, mode);
        }
        let r = Self::reserve_ref(reserve).ok_or_else(|| mismatch("reserve"))?;
        Self::backward_host(plan, ctx, r, grads, output, mode)
    }

    fn forward_host(
        plan: &Plan,
        ctx: &Ctx,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
        reserve: Option<&mut HostReserve<f32>>,
    ) -> Result<()> {
        match (plan, reserve) {
            (Plan::Ref32(p), None) => Backend::<f32>::forward_inference(&Reference, p, shape, input, output),
            (Plan::Ref32(p), Some(r)) => Backend::<f32>::forward_training(&Reference, p, shape, input, output, r),
            (Plan::Cpu(p), None) => Backend::<f32>::forward_inference(ctx.cpu()?, p, shape, input, output),
            (Plan::Cpu(p), Some(r)) => Backend::<f32>::forward_training(ctx.cpu()?, p, shape, input, output, r),
            #[cfg(feature = "cuda")]
            (Plan::Cuda(_), _) => Err(mismatch("reserve")),
            (Plan::Ref64(_), _) => Err(mismatch("x")),
        }
    }

    fn backward_host(
        plan: &Plan,
        ctx: &Ctx,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::backward(&Reference, p, reserve, grads, output, mode),
            Plan::Cpu(p) => Backend::<f32>::backward(ctx.cpu()?, p, reserve, grads, output, mode),
            #[cfg(feature = "cuda")]
            Plan::Cuda(_) => Err(mismatch("reserve")),
            Plan::Ref64(_) => Err(mismatch("reserve")),
        }
    }

    fn backward_step(
        plan: &Plan,
        ctx: &Ctx,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        acc: &mut HostStepGrads<f32>,
    ) -> Result<()> {
        deferred(match plan {
            Plan::Ref32(p) => Backend::<f32>::backward_step_deferred(&Reference, p, reserve, grads, output, acc),
            Plan::Cpu(p) => Backend::<f32>::backward_step_deferred(ctx.cpu()?, p, reserve, grads, output, acc),
            #[cfg(feature = "cuda")]
            Plan::Cuda(_) => Err(mismatch("reserve")),
            Plan::Ref64(_) => Err(mismatch("reserve")),
        })
    }

    fn deferred_params(
        plan: &Plan,
        ctx: &Ctx,
        reserves: &[HostReserve<f32>],
        acc: HostStepGrads<f32>,
        dparams: &mut [f32],
        mode: GradMode,
    ) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::deferred_param_grads(&Reference, p, reserves, acc, dparams, mode),
            Plan::Cpu(p) => Backend::<f32>::deferred_param_grads(ctx.cpu()?, p, reserves, acc, dparams, mode),
            #[cfg(feature = "cuda")]
            Plan::Cuda(_) => Err(mismatch("reserve")),
            Plan::Ref64(_) => Err(mismatch("reserve")),
        }
    }

    fn reserve_mut(b: &mut Buffers) -> &mut HostReserve<f32> {
        if !matches!(b, Buffers::F32(_)) {
            *b = Buffers::F32(HostReserve::default());
        }
        match b {
            Buffers::F32(r) => r,
            _ => unreachable!("set just above"),
        }
    }

    fn reserve_ref(b: &Buffers) -> Option<&HostReserve<f32>> {
        match b {
            Buffers::F32(r) => Some(r),
            _ => None,
        }
    }
}

impl Elem for f64 {
    const NAME: &'static str = "float64";

    fn plan(ctx: &Ctx, config: &RnnConfig, params: &[f64]) -> Result<Plan> {
        match ctx {
            Ctx::Reference => Ok(Plan::Ref64(Backend::<f64>::plan(&Reference, config, params)?)),
            _ => Err(mismatch("params")),
        }
    }

    fn update(plan: &mut Plan, _: &Ctx, params: &[f64]) -> Result<()> {
        match plan {
            Plan::Ref64(p) => Backend::<f64>::update_plan(&Reference, p, params),
            _ => Err(mismatch("params")),
        }
    }

    fn read(plan: &Plan, _: &Ctx, params: &mut [f64]) -> Result<()> {
        match plan {
            Plan::Ref64(p) => Backend::<f64>::read_params(&Reference, p, params),
            _ => Err(mismatch("params")),
        }
    }

    fn forward_host(
        plan: &Plan,
        _: &Ctx,
        shape: &SeqShape,
        input: ForwardInput<'_, [f64]>,
        output: ForwardOutput<'_, [f64]>,
        reserve: Option<&mut HostReserve<f64>>,
    ) -> Result<()> {
        match (plan, reserve) {
            (Plan::Ref64(p), None) => Backend::<f64>::forward_inference(&Reference, p, shape, input, output),
            (Plan::Ref64(p), Some(r)) => Backend::<f64>::forward_training(&Reference, p, shape, input, output, r),
            _ => Err(mismatch("x")),
        }
    }

    fn backward_host(
        plan: &Plan,
        _: &Ctx,
        reserve: &HostReserve<f64>,
        grads: BackwardInput<'_, [f64]>,
        output: BackwardOutput<'_, [f64]>,
        mode: GradMode,
    ) -> Result<()> {
        match plan {
            Plan::Ref64(p) => Backend::<f64>::backward(&Reference, p, reserve, grads, output, mode),
            _ => Err(mismatch("reserve")),
        }
    }

    fn backward_step(
        plan: &Plan,
        _: &Ctx,
        reserve: &HostReserve<f64>,
        grads: BackwardInput<'_, [f64]>,
        output: BackwardOutput<'_, [f64]>,
        acc: &mut HostStepGrads<f64>,
    ) -> Result<()> {
        deferred(match plan {
            Plan::Ref64(p) => Backend::<f64>::backward_step_deferred(&Reference, p, reserve, grads, output, acc),
            _ => Err(mismatch("reserve")),
        })
    }

    fn deferred_params(
        plan: &Plan,
        _: &Ctx,
        reserves: &[HostReserve<f64>],
        acc: HostStepGrads<f64>,
        dparams: &mut [f64],
        mode: GradMode,
    ) -> Result<()> {
        match plan {
            Plan::Ref64(p) => Backend::<f64>::deferred_param_grads(&Reference, p, reserves, acc, dparams, mode),
            _ => Err(mismatch("reserve")),
        }
    }

    fn reserve_mut(b: &mut Buffers) -> &mut HostReserve<f64> {
        if !matches!(b, Buffers::F64(_)) {
            *b = Buffers::F64(HostReserve::default());
        }
        match b {
            Buffers::F64(r) => r,
            _ => unreachable!("set just above"),
        }
    }

    fn reserve_ref(b: &Buffers) -> Option<&HostReserve<f64>> {
        match b {
            Buffers::F64(r) => Some(r),
            _ => None,
        }
    }
}

/// A plan shared by a model and the reserves filled with it: a reserve keeps the weights it was
/// computed with until it is released.
pub(crate) type SharedPlan = Arc<Plan>;

/// A model's shared plan as the plan of [`ModelBackend`] and [`CudaModelBackend`].
pub(crate) struct ModelPlan(pub(crate) SharedPlan);

impl RnnPlan for ModelPlan {
    fn config(&self) -> &RnnConfig {
        self.0.config()
    }
}

/// A new plan in place of `plan` when a reserve or a run shares it (so that they keep their
/// weights); `plan`'s own repacked otherwise.
fn update_shared(plan: &mut ModelPlan, update: impl FnOnce(&mut Plan) -> Result<()>, fresh: impl FnOnce() -> Result<Plan>) -> Result<()> {
    match Arc::get_mut(&mut plan.0) {
        Some(p) => update(p),
        None => {
            *plan = ModelPlan(Arc::new(fresh()?));
            Ok(())
        }
    }
}

/// A model's host backend behind the library's [`Backend`] trait: the calls of [`Elem`] on a
/// plan the model shares, on the CPU backend of a call's thread count, so that the library's
/// code generic over a backend (`Rnn`'s decoder steps) runs on a model's plan as it is.
#[derive(Clone)]
pub(crate) struct ModelBackend {
    /// The reference or the CPU backend of the calls.
    pub(crate) ctx: Ctx,
}

impl<T: Elem> Backend<T> for ModelBackend {
    type Buf = [T];
    type Plan = ModelPlan;
    type Reserve = HostReserve<T>;
    type StepGrads = HostStepGrads<T>;

    fn name(&self) -> String {
        self.ctx.kind().name().to_string()
    }

    fn plan(&self, config: &RnnConfig, params: &[T]) -> Result<ModelPlan> {
        Ok(ModelPlan(Arc::new(T::plan(&self.ctx, config, params)?)))
    }

    fn update_plan(&self, plan: &mut ModelPlan, params: &[T]) -> Result<()> {
        let cfg = plan.config().clone();
        update_shared(plan, |p| T::update(p, &self.ctx, params), || T::plan(&self.ctx, &cfg, params))
    }

    fn read_params(&self, plan: &ModelPlan, params: &mut [T]) -> Result<()> {
        T::read(&plan.0, &self.ctx, params)
    }

    fn forward_inference(
        &self,
        plan: &ModelPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
    ) -> Result<()> {
        T::forward_host(&plan.0, &self.ctx, shape, input, output, None)
    }

    fn forward_training(
        &self,
        plan: &ModelPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
        reserve: &mut HostReserve<T>,
    ) -> Result<()> {
        T::forward_host(&plan.0, &self.ctx, shape, input, output, Some(reserve))
    }

    fn backward(
        &self,
        plan: &ModelPlan,
        reserve: &HostReserve<T>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        mode: GradMode,
    ) -> Result<()> {
        T::backward_host(&plan.0, &self.ctx, reserve, grads, output, mode)
    }

    fn backward_step_deferred(
        &self,
        plan: &ModelPlan,
        reserve: &HostReserve<T>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        acc: &mut HostStepGrads<T>,
    ) -> Result<bool> {
        T::backward_step(&plan.0, &self.ctx, reserve, grads, output, acc).map(|()| true)
    }

    fn deferred_param_grads(
        &self,
        plan: &ModelPlan,
        reserves: &[HostReserve<T>],
        acc: HostStepGrads<T>,
        dparams: &mut [T],
        mode: GradMode,
    ) -> Result<()> {
        T::deferred_params(&plan.0, &self.ctx, reserves, acc, dparams, mode)
    }
}

/// A model's CUDA backend (f32) behind the library's [`Backend`] trait, as [`ModelBackend`] is
/// for the host ones: [`CudaHost`]'s calls on the model's shared plan, their reserves and
/// decoder steps' gradients on the device.
#[cfg(feature = "cuda")]
#[derive(Clone)]
pub(crate) struct CudaModelBackend(pub(crate) CudaHost);

#[cfg(feature = "cuda")]
impl CudaModelBackend {
    fn plan_of(plan: &ModelPlan) -> Result<&CudaPlan> {
        match &*plan.0 {
            Plan::Cuda(p) => Ok(p),
            _ => Err(mismatch("plan")),
        }
    }
}

#[cfg(feature = "cuda")]
impl Backend<f32> for CudaModelBackend {
    type Buf = [f32];
    type Plan = ModelPlan;
    type Reserve = CudaReserve;
    type StepGrads = CudaStepGrads;

    fn name(&self) -> String {
        Kind::Cuda.name().to_string()
    }

    fn plan(&self, config: &RnnConfig, params: &[f32]) -> Result<ModelPlan> {
        Ok(ModelPlan(Arc::new(Plan::Cuda(Backend::<f32>::plan(&self.0, config, params)?))))
    }

    fn update_plan(&self, plan: &mut ModelPlan, params: &[f32]) -> Result<()> {
        let ctx = Ctx::Cuda(self.0.clone());
        let cfg = plan.config().clone();
        update_shared(plan, |p| f32::update(p, &ctx, params), || f32::plan(&ctx, &cfg, params))
    }

    fn read_params(&self, plan: &ModelPlan, params: &mut [f32]) -> Result<()> {
        Backend::<f32>::read_params(&self.0, Self::plan_of(plan)?, params)
    }

    fn forward_inference(
        &self,
        plan: &ModelPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
    ) -> Result<()> {
        Backend::<f32>::forward_inference(&self.0, Self::plan_of(plan)?, shape, input, output)
    }

    fn forward_training(
        &self,
        plan: &ModelPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
        reserve: &mut CudaReserve,
    ) -> Result<()> {
        Backend::<f32>::forward_training(&self.0, Self::plan_of(plan)?, shape, input, output, reserve)
    }

    fn backward(
        &self,
        plan: &ModelPlan,
        reserve: &CudaReserve,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        Backend::<f32>::backward(&self.0, Self::plan_of(plan)?, reserve, grads, output, mode)
    }

    fn backward_step_deferred(
        &self,
        plan: &ModelPlan,
        reserve: &CudaReserve,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        acc: &mut CudaStepGrads,
    ) -> Result<bool> {
        Backend::<f32>::backward_step_deferred(&self.0, Self::plan_of(plan)?, reserve, grads, output, acc)
    }

    fn deferred_param_grads(
        &self,
        plan: &ModelPlan,
        reserves: &[CudaReserve],
        acc: CudaStepGrads,
        dparams: &mut [f32],
        mode: GradMode,
    ) -> Result<()> {
        Backend::<f32>::deferred_param_grads(&self.0, Self::plan_of(plan)?, reserves, acc, dparams, mode)
    }
}
