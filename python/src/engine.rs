//! The backends behind a `Model`: its plan (shared with the reserves filled with it), the
//! process-wide CPU backends, and the calls of the [`Backend`] trait for each element type.
//!
//! The plan is kept apart from the backend: a CPU plan does not depend on the number of threads,
//! so a call with another thread count takes another [`Cpu`] (one rayon pool per ISA and thread
//! count in the process, [`cpu`]) and the same plan.

use rnn_kernels::{
    Backend, BackwardInput, BackwardOutput, Cpu, CpuPlan, Error, Float, ForwardInput, ForwardOutput, GradMode, HostPlan, HostReserve,
    HostStepGrads, Isa, Reference, Result, RnnConfig, RnnPlan, SeqShape,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Reference,
    Cpu,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            Kind::Cpu => "cpu",
        }
    }
}

/// A plan of one of the backends and element types.
pub(crate) enum Plan {
    Ref32(HostPlan<f32>),
    Ref64(HostPlan<f64>),
    Cpu(CpuPlan),
}

impl Plan {
    /// The configuration the plan was made for.
    pub(crate) fn config(&self) -> &RnnConfig {
        match self {
            Plan::Ref32(p) => p.config(),
            Plan::Ref64(p) => p.config(),
            Plan::Cpu(p) => p.config(),
        }
    }

    /// The backend that made it.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Plan::Ref32(_) | Plan::Ref64(_) => Kind::Reference,
            Plan::Cpu(_) => Kind::Cpu,
        }
    }
}

/// A reserve's buffers, of the element type of the last call that filled it.
#[derive(Default)]
pub(crate) enum Buffers {
    #[default]
    Empty,
    F32(HostReserve<f32>),
    F64(HostReserve<f64>),
}

impl Buffers {
    pub(crate) fn nbytes(&self) -> usize {
        match self {
            Buffers::Empty => 0,
            Buffers::F32(r) => r.nbytes(),
            Buffers::F64(r) => r.nbytes(),
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

fn mismatch(what: &str) -> Error {
    Error::InvalidArgument {
        arg: what.into(),
        expected: "the element type of the model's plan".into(),
        got: "another element type (an internal inconsistency of the bindings)".into(),
    }
}

/// The [`Backend`] calls for one element type: `f32` (reference and CPU) or `f64` (reference).
pub(crate) trait Elem: Float + numpy::Element {
    /// NumPy's name of the dtype.
    const NAME: &'static str;

    fn plan(kind: Kind, cpu: Option<&Cpu>, config: &RnnConfig, params: &[Self]) -> Result<Plan>;
    fn update(plan: &mut Plan, cpu: Option<&Cpu>, params: &[Self]) -> Result<()>;
    fn read(plan: &Plan, cpu: Option<&Cpu>, params: &mut [Self]) -> Result<()>;
    fn forward(
        plan: &Plan,
        cpu: Option<&Cpu>,
        shape: &SeqShape,
        input: ForwardInput<'_, [Self]>,
        output: ForwardOutput<'_, [Self]>,
        reserve: Option<&mut HostReserve<Self>>,
    ) -> Result<()>;
    fn backward(
        plan: &Plan,
        cpu: Option<&Cpu>,
        reserve: &HostReserve<Self>,
        grads: BackwardInput<'_, [Self]>,
        output: BackwardOutput<'_, [Self]>,
        mode: GradMode,
    ) -> Result<()>;
    /// The backward of one decoder step, its parameters' gradients kept in `acc`
    /// (`Backend::backward_step_deferred`; every host backend defers).
    fn backward_step(
        plan: &Plan,
        cpu: Option<&Cpu>,
        reserve: &HostReserve<Self>,
        grads: BackwardInput<'_, [Self]>,
        output: BackwardOutput<'_, [Self]>,
        acc: &mut HostStepGrads<Self>,
    ) -> Result<()>;
    /// The parameters' gradients of the decoder steps walked back into `acc`, written into or
    /// added to `dparams` (`Backend::deferred_param_grads`).
    fn deferred_params(
        plan: &Plan,
        cpu: Option<&Cpu>,
        reserves: &[HostReserve<Self>],
        acc: HostStepGrads<Self>,
        dparams: &mut [Self],
        mode: GradMode,
    ) -> Result<()>;
    /// The buffers as this type's reserve; buffers of another type are dropped for an empty one.
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

fn need_cpu(cpu: Option<&Cpu>) -> Result<&Cpu> {
    cpu.ok_or_else(|| mismatch("threads"))
}

impl Elem for f32 {
    const NAME: &'static str = "float32";

    fn plan(kind: Kind, cpu: Option<&Cpu>, config: &RnnConfig, params: &[f32]) -> Result<Plan> {
        Ok(match kind {
            Kind::Reference => Plan::Ref32(Backend::<f32>::plan(&Reference, config, params)?),
            Kind::Cpu => Plan::Cpu(Backend::<f32>::plan(need_cpu(cpu)?, config, params)?),
        })
    }

    fn update(plan: &mut Plan, cpu: Option<&Cpu>, params: &[f32]) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::update_plan(&Reference, p, params),
            Plan::Cpu(p) => Backend::<f32>::update_plan(need_cpu(cpu)?, p, params),
            Plan::Ref64(_) => Err(mismatch("params")),
        }
    }

    fn read(plan: &Plan, cpu: Option<&Cpu>, params: &mut [f32]) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::read_params(&Reference, p, params),
            Plan::Cpu(p) => Backend::<f32>::read_params(need_cpu(cpu)?, p, params),
            Plan::Ref64(_) => Err(mismatch("params")),
        }
    }

    fn forward(
        plan: &Plan,
        cpu: Option<&Cpu>,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
        reserve: Option<&mut HostReserve<f32>>,
    ) -> Result<()> {
        match (plan, reserve) {
            (Plan::Ref32(p), None) => Backend::<f32>::forward_inference(&Reference, p, shape, input, output),
            (Plan::Ref32(p), Some(r)) => Backend::<f32>::forward_training(&Reference, p, shape, input, output, r),
            (Plan::Cpu(p), None) => Backend::<f32>::forward_inference(need_cpu(cpu)?, p, shape, input, output),
            (Plan::Cpu(p), Some(r)) => Backend::<f32>::forward_training(need_cpu(cpu)?, p, shape, input, output, r),
            (Plan::Ref64(_), _) => Err(mismatch("x")),
        }
    }

    fn backward(
        plan: &Plan,
        cpu: Option<&Cpu>,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::backward(&Reference, p, reserve, grads, output, mode),
            Plan::Cpu(p) => Backend::<f32>::backward(need_cpu(cpu)?, p, reserve, grads, output, mode),
            Plan::Ref64(_) => Err(mismatch("reserve")),
        }
    }

    fn backward_step(
        plan: &Plan,
        cpu: Option<&Cpu>,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        acc: &mut HostStepGrads<f32>,
    ) -> Result<()> {
        deferred(match plan {
            Plan::Ref32(p) => Backend::<f32>::backward_step_deferred(&Reference, p, reserve, grads, output, acc),
            Plan::Cpu(p) => Backend::<f32>::backward_step_deferred(need_cpu(cpu)?, p, reserve, grads, output, acc),
            Plan::Ref64(_) => Err(mismatch("reserve")),
        })
    }

    fn deferred_params(
        plan: &Plan,
        cpu: Option<&Cpu>,
        reserves: &[HostReserve<f32>],
        acc: HostStepGrads<f32>,
        dparams: &mut [f32],
        mode: GradMode,
    ) -> Result<()> {
        match plan {
            Plan::Ref32(p) => Backend::<f32>::deferred_param_grads(&Reference, p, reserves, acc, dparams, mode),
            Plan::Cpu(p) => Backend::<f32>::deferred_param_grads(need_cpu(cpu)?, p, reserves, acc, dparams, mode),
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

    fn plan(kind: Kind, _: Option<&Cpu>, config: &RnnConfig, params: &[f64]) -> Result<Plan> {
        match kind {
            Kind::Reference => Ok(Plan::Ref64(Backend::<f64>::plan(&Reference, config, params)?)),
            Kind::Cpu => Err(mismatch("params")),
        }
    }

    fn update(plan: &mut Plan, _: Option<&Cpu>, params: &[f64]) -> Result<()> {
        match plan {
            Plan::Ref64(p) => Backend::<f64>::update_plan(&Reference, p, params),
            _ => Err(mismatch("params")),
        }
    }

    fn read(plan: &Plan, _: Option<&Cpu>, params: &mut [f64]) -> Result<()> {
        match plan {
            Plan::Ref64(p) => Backend::<f64>::read_params(&Reference, p, params),
            _ => Err(mismatch("params")),
        }
    }

    fn forward(
        plan: &Plan,
        _: Option<&Cpu>,
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

    fn backward(
        plan: &Plan,
        _: Option<&Cpu>,
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
        _: Option<&Cpu>,
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
        _: Option<&Cpu>,
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

/// A model's shared plan as the plan of [`ModelBackend`].
pub(crate) struct ModelPlan(pub(crate) SharedPlan);

impl RnnPlan for ModelPlan {
    fn config(&self) -> &RnnConfig {
        self.0.config()
    }
}

/// A model's backend behind the library's [`Backend`] trait: the calls of [`Elem`] on a plan
/// the model shares, on the CPU backend of a call's thread count, so that the library's code
/// generic over a backend (`Rnn`'s decoder steps) runs on a model's plan as it is.
#[derive(Clone)]
pub(crate) struct ModelBackend {
    pub(crate) kind: Kind,
    /// The CPU backend of the calls; `None` for the reference.
    pub(crate) cpu: Option<Cpu>,
}

impl<T: Elem> Backend<T> for ModelBackend {
    type Buf = [T];
    type Plan = ModelPlan;
    type Reserve = HostReserve<T>;
    type StepGrads = HostStepGrads<T>;

    fn name(&self) -> String {
        self.kind.name().to_string()
    }

    fn plan(&self, config: &RnnConfig, params: &[T]) -> Result<ModelPlan> {
        Ok(ModelPlan(Arc::new(T::plan(self.kind, self.cpu.as_ref(), config, params)?)))
    }

    fn update_plan(&self, plan: &mut ModelPlan, params: &[T]) -> Result<()> {
        match Arc::get_mut(&mut plan.0) {
            Some(p) => T::update(p, self.cpu.as_ref(), params),
            // Shared with a reserve or a run: a new plan, so that they keep their weights.
            None => {
                *plan = Backend::<T>::plan(self, &plan.config().clone(), params)?;
                Ok(())
            }
        }
    }

    fn read_params(&self, plan: &ModelPlan, params: &mut [T]) -> Result<()> {
        T::read(&plan.0, self.cpu.as_ref(), params)
    }

    fn forward_inference(
        &self,
        plan: &ModelPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
    ) -> Result<()> {
        T::forward(&plan.0, self.cpu.as_ref(), shape, input, output, None)
    }

    fn forward_training(
        &self,
        plan: &ModelPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
        reserve: &mut HostReserve<T>,
    ) -> Result<()> {
        T::forward(&plan.0, self.cpu.as_ref(), shape, input, output, Some(reserve))
    }

    fn backward(
        &self,
        plan: &ModelPlan,
        reserve: &HostReserve<T>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        mode: GradMode,
    ) -> Result<()> {
        T::backward(&plan.0, self.cpu.as_ref(), reserve, grads, output, mode)
    }

    fn backward_step_deferred(
        &self,
        plan: &ModelPlan,
        reserve: &HostReserve<T>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        acc: &mut HostStepGrads<T>,
    ) -> Result<bool> {
        T::backward_step(&plan.0, self.cpu.as_ref(), reserve, grads, output, acc).map(|()| true)
    }

    fn deferred_param_grads(
        &self,
        plan: &ModelPlan,
        reserves: &[HostReserve<T>],
        acc: HostStepGrads<T>,
        dparams: &mut [T],
        mode: GradMode,
    ) -> Result<()> {
        T::deferred_params(&plan.0, self.cpu.as_ref(), reserves, acc, dparams, mode)
    }
}
