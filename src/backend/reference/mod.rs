//! The reference backend: the specification every other backend is tested against.
//!
//! Plain loops, in any [`Float`] (f32 or f64), single-threaded and bit-reproducible. The
//! driver ([`crate::backend::host`]) runs the time loop; the files here are the maths of each
//! cell on one row of the batch: `lstm.rs`, `gru.rs`, `rnn.rs` (forward and backward steps;
//! `gru_reset_before.rs` the GRU with the reset gate before the recurrent matmul),
//! the masking of rows past their length around them (`step.rs`), and `gemm.rs`. Layer norm is
//! the driver's (`host/layer_norm.rs`, the arithmetic of the specification), around these
//! cells.

mod gemm;
pub(crate) mod gru;
pub(crate) mod gru_reset_before;
mod lstm;
mod rnn;
mod step;

use crate::backend::cell::Cell;
use crate::backend::host::{self, CellBackward, CellForward, ChoPart, HostKernels, Mat, MatMut};
use crate::backend::{Backend, BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode};
use crate::config::{CellKind, RnnConfig};
use crate::element::Float;
use crate::error::Result;
use crate::shape::SeqShape;

use crate::backend::host::HostStepGrads;
pub use crate::backend::host::{HostPlan, HostReserve};

use crate::attention::{
    AttentionBackend, AttentionConfig, AttentionGrads, AttentionMemory, AttentionMemoryGrads, AttentionOutput, AttentionShape,
    AttentionUpstream,
};
use crate::backend::host::attention::Fresh;

impl<T: Float> AttentionBackend<T> for Reference {
    fn attention_memory(&self, cfg: &AttentionConfig, shape: &AttentionShape, params: &[T], keys: &[T]) -> Result<AttentionMemory<T>> {
        let k = self;
        host::attention::memory(k, cfg, shape, params, keys, &mut Fresh::none())
    }

    fn attention_forward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        queries: &[T],
    ) -> Result<AttentionOutput<T>> {
        let k = self;
        host::attention::forward_with(k, cfg, shape, params, memory, queries, &mut Fresh::none())
    }

    fn attention_backward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        queries: &[T],
        out: &AttentionOutput<T>,
        up: AttentionUpstream<'_, T>,
        d_memory: &mut AttentionMemoryGrads<T>,
    ) -> Result<AttentionGrads<T>> {
        let k = self;
        host::attention::backward_with(k, cfg, shape, params, memory, queries, out, up, d_memory, &mut Fresh::none())
    }

    fn attention_memory_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        d_memory: &AttentionMemoryGrads<T>,
    ) -> Result<AttentionGrads<T>> {
        let k = self;
        host::attention::memory_backward(k, cfg, shape, params, memory, d_memory, &mut Fresh::none())
    }
}

/// The reference backend. `Reference` implements [`Backend<f32>`] and [`Backend<f64>`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

/// The cell options ([`RnnConfig::options`]) this backend implements; `plan` refuses the others.
pub(crate) const OPTIONS: &[&str] = &[
    // The host driver's (`backend::host`).
    "direction=reverse",
    "merge=sum",
    "batch_first",
    "dropout",
    "zoneout",
    "zoneout_cell",
    "recurrent_dropout",
    "input_dropout",
    // The cell kernels'.
    "peephole",
    "gate_clip",
    "input_forget",
    "linear_before_reset=false",
    "layer_norm",
];

/// Rows of a block of the weight gradients' sums (see `HostKernels::weight_grad_rows`).
const WEIGHT_GRAD_ROWS: usize = 64;

/// The maths of `cell` on one valid row: its forward and backward steps.
type Maths<T> = (fn(CellForward<'_, T>), fn(CellBackward<'_, T>));

/// Each cell's [`Maths`].
fn maths<T: Float>(cell: CellKind) -> Maths<T> {
    match cell {
        CellKind::Lstm => (lstm::forward, lstm::backward),
        CellKind::Gru => (gru::forward, gru::backward),
        CellKind::RnnTanh => (|s| rnn::forward(rnn::Act::Tanh, s), |s| rnn::backward(rnn::Act::Tanh, s)),
        CellKind::RnnRelu => (|s| rnn::forward(rnn::Act::Relu, s), |s| rnn::backward(rnn::Act::Relu, s)),
    }
}

impl<T: Float> HostKernels<T> for Reference {
    fn gemm(&self, alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: MatMut<'_, T>) {
        gemm::gemm(alpha, a, b, beta, c);
    }

    fn cell_forward(&self, cell: CellKind, s: CellForward<'_, T>) {
        step::forward(s, maths(cell).0)
    }

    fn cell_backward(&self, cell: CellKind, s: CellBackward<'_, T>) {
        step::backward(s, maths(cell).1)
    }

    fn gru_reset_before_forward(&self, _: &Cell, part: ChoPart, s: CellForward<'_, T>) {
        gru_reset_before::forward(part, s)
    }

    fn gru_reset_before_backward(&self, _: &Cell, part: ChoPart, s: CellBackward<'_, T>) {
        gru_reset_before::backward(part, s)
    }

    /// Short blocks: the reference's GEMM is one sum over `k` in order, so a block is its
    /// longest chain of roundings.
    fn weight_grad_rows(&self) -> usize {
        WEIGHT_GRAD_ROWS
    }

    fn serial(&self) -> Self {
        Reference
    }
}

impl<T: Float> Backend<T> for Reference {
    type Buf = [T];
    type Plan = HostPlan<T>;
    type Reserve = HostReserve<T>;
    type StepGrads = HostStepGrads<T>;

    fn name(&self) -> String {
        format!("reference-{}", std::any::type_name::<T>())
    }

    fn plan(&self, config: &RnnConfig, params: &[T]) -> Result<HostPlan<T>> {
        crate::backend::check_options(&Backend::<T>::name(self), config, OPTIONS)?;
        HostPlan::new(config, params)
    }

    fn update_plan(&self, plan: &mut HostPlan<T>, params: &[T]) -> Result<()> {
        plan.update(params)
    }

    fn read_params(&self, plan: &HostPlan<T>, params: &mut [T]) -> Result<()> {
        plan.read(params)
    }

    fn forward_inference(
        &self,
        plan: &HostPlan<T>,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
    ) -> Result<()> {
        host::run_forward(self, plan, shape, input, output, None)
    }

    fn forward_training(
        &self,
        plan: &HostPlan<T>,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
        reserve: &mut HostReserve<T>,
    ) -> Result<()> {
        host::run_forward(self, plan, shape, input, output, Some(reserve))
    }

    fn backward(
        &self,
        plan: &HostPlan<T>,
        reserve: &HostReserve<T>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        mode: GradMode,
    ) -> Result<()> {
        host::run_backward(self, plan, reserve, grads, output, mode)
    }

    fn backward_step_deferred(
        &self,
        plan: &HostPlan<T>,
        reserve: &HostReserve<T>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        acc: &mut HostStepGrads<T>,
    ) -> Result<bool> {
        host::run_backward_step(self, plan, reserve, grads, output, acc).map(|()| true)
    }

    fn deferred_param_grads(
        &self,
        plan: &HostPlan<T>,
        reserves: &[HostReserve<T>],
        acc: HostStepGrads<T>,
        dparams: &mut [T],
        mode: GradMode,
    ) -> Result<()> {
        host::run_deferred_params(self, plan, reserves, acc, dparams, mode)
    }
}
