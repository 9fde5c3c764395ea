//! The reference backend: the specification every other backend is tested against.
//!
//! Plain loops, in any [`Float`] (f32 or f64), single-threaded and bit-reproducible. The
//! driver ([`crate::backend::host`]) runs the time loop; the files here are the maths of each
//! cell: [`lstm`], [`gru`], [`rnn`] (forward and backward steps) and [`gemm`].

mod gemm;
mod gru;
mod lstm;
mod rnn;

use crate::backend::host::{self, CellBackward, CellForward, HostKernels, Mat, MatMut};
use crate::backend::{
    check_backward, check_forward, Backend, BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode, RnnPlan,
};
use crate::config::{CellKind, RnnConfig};
use crate::element::Float;
use crate::error::{Error, Result};
use crate::params::ParamLayout;
use crate::shape::SeqShape;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::backend::host::HostReserve;

/// The reference backend. `Reference` implements [`Backend<f32>`] and [`Backend<f64>`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

/// A reference plan: the configuration and a copy of the weights in PyTorch layout.
#[derive(Debug, Clone)]
pub struct ReferencePlan<T> {
    layout: ParamLayout,
    weights: Vec<T>,
    id: u64,
    version: u64,
}

impl<T: Send + Sync> RnnPlan for ReferencePlan<T> {
    fn config(&self) -> &RnnConfig {
        self.layout.config()
    }
}

/// Gives every plan a distinct identity, so a reserve is never used with a plan it was not made
/// by.
pub(crate) fn next_plan_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Checks that `reserve` was filled by the plan `(id, version)`.
pub(crate) fn check_reserve<T>(reserve: &HostReserve<T>, id: u64, version: u64) -> Result<&SeqShape> {
    let shape = reserve.shape.as_ref().ok_or_else(|| Error::Reserve("empty: run forward_training with it before backward".into()))?;
    if reserve.plan_id != id {
        return Err(Error::Reserve("it was filled by a different plan than the one given to backward".into()));
    }
    if reserve.plan_version != version {
        return Err(Error::Reserve(format!(
            "it was filled with version {} of the plan's weights, but the plan is now at version {} \
             (update_plan was called in between); run forward_training again",
            reserve.plan_version, version
        )));
    }
    Ok(shape)
}

impl<T: Float> HostKernels<T> for Reference {
    fn gemm(&self, alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: MatMut<'_, T>) {
        gemm::gemm(alpha, a, b, beta, c);
    }

    fn cell_forward(&self, cell: CellKind, step: CellForward<'_, T>) {
        match cell {
            CellKind::Lstm => lstm::forward(step),
            CellKind::Gru => gru::forward(step),
            CellKind::RnnTanh => rnn::forward(rnn::Act::Tanh, step),
            CellKind::RnnRelu => rnn::forward(rnn::Act::Relu, step),
        }
    }

    fn cell_backward(&self, cell: CellKind, step: CellBackward<'_, T>) {
        match cell {
            CellKind::Lstm => lstm::backward(step),
            CellKind::Gru => gru::backward(step),
            CellKind::RnnTanh => rnn::backward(rnn::Act::Tanh, step),
            CellKind::RnnRelu => rnn::backward(rnn::Act::Relu, step),
        }
    }
}

impl<T: Float> Backend<T> for Reference {
    type Buf = [T];
    type Plan = ReferencePlan<T>;
    type Reserve = HostReserve<T>;

    fn name(&self) -> String {
        format!("reference-{}", std::any::type_name::<T>())
    }

    fn plan(&self, config: &RnnConfig, params: &[T]) -> Result<ReferencePlan<T>> {
        let layout = ParamLayout::new(config);
        layout.check_buffer("params", params.len())?;
        Ok(ReferencePlan { layout, weights: params.to_vec(), id: next_plan_id(), version: 0 })
    }

    fn update_plan(&self, plan: &mut ReferencePlan<T>, params: &[T]) -> Result<()> {
        plan.layout.check_buffer("params", params.len())?;
        plan.weights.copy_from_slice(params);
        plan.version += 1;
        Ok(())
    }

    fn forward_inference(
        &self,
        plan: &ReferencePlan<T>,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
    ) -> Result<()> {
        check_forward(plan.config(), shape, &input, &output)?;
        host::forward(self, &plan.layout, &plan.weights, shape, input.x, input.h0, input.c0, output.y, output.hn, output.cn, None);
        Ok(())
    }

    fn forward_training(
        &self,
        plan: &ReferencePlan<T>,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
        reserve: &mut HostReserve<T>,
    ) -> Result<()> {
        check_forward(plan.config(), shape, &input, &output)?;
        reserve.plan_id = plan.id;
        reserve.plan_version = plan.version;
        host::forward(self, &plan.layout, &plan.weights, shape, input.x, input.h0, input.c0, output.y, output.hn, output.cn, Some(reserve));
        Ok(())
    }

    fn backward(
        &self,
        plan: &ReferencePlan<T>,
        reserve: &HostReserve<T>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        mode: GradMode,
    ) -> Result<()> {
        let shape = check_reserve(reserve, plan.id, plan.version)?;
        check_backward(plan.config(), shape, plan.layout.len(), &grads, &output)?;
        host::backward(
            self,
            &plan.layout,
            &plan.weights,
            reserve,
            grads.dy,
            grads.dhn,
            grads.dcn,
            output.dx,
            output.dh0,
            output.dc0,
            output.dparams,
            mode,
        );
        Ok(())
    }
}
