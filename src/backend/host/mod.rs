//! The host driver: the time loop, layers, directions and variable lengths, written once for
//! every backend that computes on host memory. A backend supplies its kernels through
//! `HostKernels`: the GEMM and the per-step pointwise cell functions.
//!
//! Structure (as in haste and cuDNN): for each layer and direction,
//!
//! - forward: `XG[T·B, G·H] = X[T·B, In] · W_ih^T + b_ih` for all steps in one GEMM, then per
//!   step `HG[B, G·H] = h_prev · W_hh^T`, the fused cell kernel, and for an LSTM with projection
//!   `h = m · W_hr^T`;
//! - backward: per step (in reverse processing order) the cell backward kernel gives the
//!   gradients of the input-side and hidden-side pre-activations `dGi`, `dGh`, and
//!   `dh_prev = dGh · W_hh`; after the loop, `dW_ih += dGi^T X`, `dW_hh += dGh^T H_prev`,
//!   `db_* += Σ dG*`, `dX += dGi · W_ih` are big GEMMs over all steps (the weight gradients
//!   of a long sequence in blocks of steps summed in f64, `HostKernels::weight_grad_rows`).
//!
//! Batch rows never interact within a layer, so a backend may cut the time loop into blocks of
//! rows (`HostKernels::row_blocks`) that run their steps in parallel, each on its own; the
//! input projection (per chunk of steps) and the weight gradients stay GEMMs over all rows.
//!
//! Variable lengths are handled by masking: at step `t`, sequence `b` is active iff
//! `t < len[b]`. An inactive row keeps its state (so final states are those of the last valid
//! step, and the reverse direction starts each sequence at its own last step) and outputs zero;
//! in backward its gradients pass through unchanged.
//!
//! With layer norm (Haste's `LayerNormLSTM`/`LayerNormGRU`), the input projection is
//! `XG = LN(X · W_ih^T; γ_ih, b_ih)` (the bias as the normalisation's β), each step's recurrent
//! product `HG = γ_hh ⊙ normalise(h_prev · W_hh^T)` before the cell kernel, which adds `b_hh`
//! as always; an LSTM's output is `m = o ⊙ tanh(LN(c; γ_c, β_c))` (`layer_norm::lstm_output`),
//! its recurrence carrying the raw `c`. Backward keeps, per step, the gradient w.r.t. the raw
//! recurrent product (`LNback(dGh)`, the left factor of `dW_hh`) and, LSTM, w.r.t. the cell
//! state's normalised output; after the loop `LNback(dGi)` is the left factor of `dW_ih` and
//! `dX`, taken in chunks of rows that also sum, while each row is in cache, the input side's
//! gain and bias gradients and, where `dGh` is `dGi` (LSTM, Cho's GRU), the recurrent side's
//! (`layer_norm::RowPartials`: fixed chunks, summed in f64 in order); the other gains' and
//! biases' gradients are column sums in row order (`col_sums`).
//!
//! Directions and layouts come from the configuration: a direction runs in reverse when it is
//! the second of a bidirectional layer or the only one of a reverse-only stack
//! (`direction::Direction::reverse`); with merge by sum the second direction adds its output
//! onto the first's (`y = y_fwd + y_rev`, in that order) and both read the same `dy`. With a
//! batch-first `x` the input projection of an inference pass reads each step's rows in place
//! (`T·I` apart), a training pass keeps its time-major copy of `x` in the reserve (the copy it
//! made anyway, transposed), the last layer writes the rows of `y` in place, and backward copies
//! `dy` in and `dx` out transposed (copies it made anyway); the layers between stay time-major.
//!
//! The files: `forward` and `backward` are the two time loops, each readable alone;
//! `direction` is what they share (one layer-direction of a call: its sizes, cell and weights,
//! and the cutting of its buffers into blocks of rows); `reserve` is what a training pass keeps
//! for backward; `peephole` the peephole weights' gradient after the backward loop;
//! `layer_norm` the layer-normalised cells (the row normalisation and its backward, the
//! LSTM's normalised cell output around the cell kernels); `mat` the strided matrix views of the GEMMs. The sizes, the step order and the
//! stamps that tie a reserve to its plan are `backend::stack`'s, the same as
//! the CUDA driver's; the cell (kind and options) is `backend::cell::Cell`, which the loops hand whole to
//! the kernels (`HostKernels::cell_step_forward`).

pub(crate) mod attention;
mod backward;
mod col_sums;
mod direction;
pub(crate) mod dropout;
mod forward;
mod gru_reset_before;
pub(crate) mod layer_norm;
mod mat;
mod peephole;
mod reserve;
pub(crate) mod variational_dropout;
pub(crate) mod zoneout;

pub use backward::HostStepGrads;
#[cfg(feature = "cuda")]
pub(crate) use backward::{check_decoder_step, check_deferred_steps};
pub(crate) use backward::{run_backward, run_backward_step, run_deferred_params};
pub(crate) use forward::run_forward;
pub(crate) use mat::{Mat, MatMut};
pub use reserve::HostReserve;

use crate::backend::cell::Cell;
use crate::backend::stack::PlanStamp;
use crate::backend::RnnPlan;
use crate::config::{CellKind, RnnConfig};
use crate::element::{Element, Float};
use crate::error::Result;
use crate::params::ParamLayout;
use direction::{split_rows, split_rows_mut};

/// The plan of a host backend: the parameters' layout, built once here and read by every call,
/// a copy of the weights in that layout, and a stamp so that a reserve is only ever used with
/// the weights that filled it. A clone is a new plan with a stamp of its own.
///
/// The copy of the weights is the plan's own: [`Backend::plan`](crate::Backend::plan) and
/// [`Backend::update_plan`](crate::Backend::update_plan) borrow the caller's buffer only for
/// the call.
#[derive(Debug, Clone)]
pub struct HostPlan<T> {
    pub(crate) layout: ParamLayout,
    pub(crate) weights: Vec<T>,
    pub(crate) stamp: PlanStamp,
}

impl<T: Element> HostPlan<T> {
    /// Copies `params` (flat layout of `config`).
    pub(crate) fn new(config: &RnnConfig, params: &[T]) -> Result<Self> {
        let layout = ParamLayout::new(config);
        layout.check_buffer("params", params.len())?;
        Ok(HostPlan { layout, weights: params.to_vec(), stamp: PlanStamp::new() })
    }

    /// Replaces the weights with new values of the same parameters.
    pub(crate) fn update(&mut self, params: &[T]) -> Result<()> {
        self.layout.check_buffer("params", params.len())?;
        self.weights.copy_from_slice(params);
        self.stamp.bump();
        Ok(())
    }

    /// Copies the weights into `params` (flat layout).
    pub(crate) fn read(&self, params: &mut [T]) -> Result<()>
    where
        T: Copy,
    {
        self.layout.check_buffer("params", params.len())?;
        params.copy_from_slice(&self.weights);
        Ok(())
    }
}

impl<T: Send + Sync> RnnPlan for HostPlan<T> {
    fn config(&self) -> &RnnConfig {
        self.layout.config()
    }

    fn param_len(&self) -> usize {
        self.layout.len()
    }
}

/// One step of a cell's forward pointwise kernel, for all `B` rows.
///
/// Shapes use `G` gates, hidden size `H`; every slice is row-major.
pub(crate) struct CellForward<'a, T> {
    /// `[B]`: which rows are valid at this step.
    pub active: &'a [bool],
    /// `H`.
    pub hidden: usize,
    /// `[B, G·H]`: `W_ih x + b_ih` for this step.
    pub xg: &'a [T],
    /// `[B, G·H]`: `W_hh h_prev`, without bias.
    pub hg: &'a [T],
    /// `[G·H]`: `b_hh`, if the stack has biases.
    pub b_hh: Option<&'a [T]>,
    /// `[3·H]`: LSTM peephole weights, rows `i, f, o`, if the cell has peepholes.
    pub peephole: Option<&'a [T]>,
    /// Gate pre-activation clip threshold (`[-clip, clip]` before each activation); 0 for none.
    pub clip: f64,
    /// LSTM coupled input-forget gate: `f = 1 - i`.
    pub input_forget: bool,
    /// `[B, Hout]`: previous hidden state (read by GRU only, whose `Hout = H`).
    pub h_prev: &'a [T],
    /// `[B, H]`: previous cell state (LSTM only; empty otherwise).
    pub c_prev: &'a [T],
    /// `[B, G·H]` out: activated gates (RNN: the new hidden state). Zero on inactive rows.
    pub gates: &'a mut [T],
    /// `[B, H]` out (GRU only; empty otherwise): `W_hn h_prev + b_hn`; with the reset gate
    /// before the recurrent matmul (`linear_before_reset = false`), `r ⊙ h_prev`. Zero on
    /// inactive rows.
    pub extra: &'a mut [T],
    /// `[B, H]` out (LSTM only; empty otherwise): new cell state; `c_prev` on inactive rows.
    pub c: &'a mut [T],
    /// `[B, H]` out: the cell's new hidden output before any projection (LSTM: `o·tanh(c)`).
    /// Unspecified on inactive rows: the driver keeps their state.
    pub m: &'a mut [T],
}

/// One step of a cell's backward pointwise kernel, for all `B` rows.
pub(crate) struct CellBackward<'a, T> {
    /// `[B]`: which rows are valid at this step.
    pub active: &'a [bool],
    /// `H`.
    pub hidden: usize,
    /// `[3·H]`: LSTM peephole weights, rows `i, f, o`, if the cell has peepholes.
    pub peephole: Option<&'a [T]>,
    /// Gate pre-activation clip threshold of the forward pass; 0 for none.
    pub clip: f64,
    /// LSTM coupled input-forget gate: `f = 1 - i`.
    pub input_forget: bool,
    /// `[B, G·H]`: gates saved by forward.
    pub gates: &'a [T],
    /// `[B, H]`: GRU's saved `W_hn h_prev + b_hn` (`r ⊙ h_prev` with the reset gate before the
    /// recurrent matmul; empty otherwise).
    pub extra: &'a [T],
    /// `[B, H]`: LSTM's saved new cell state (empty otherwise).
    pub c: &'a [T],
    /// `[B, H]`: LSTM's previous cell state (empty otherwise).
    pub c_prev: &'a [T],
    /// `[B, H]`: GRU's previous hidden state (empty otherwise).
    pub h_prev: &'a [T],
    /// `[B, H]`: gradient of the loss w.r.t. `m`, the cell's hidden output.
    pub dm: &'a [T],
    /// `[B, H]` in/out (LSTM only; empty otherwise): gradient w.r.t. the new cell state coming
    /// from later steps; replaced by the gradient w.r.t. `c_prev`. Unchanged on inactive rows.
    pub dc: &'a mut [T],
    /// `[B, G·H]` out: gradient w.r.t. the input-side pre-activations (`W_ih x + b_ih`).
    /// Zero on inactive rows.
    pub dgi: &'a mut [T],
    /// `[B, G·H]` out: gradient w.r.t. the hidden-side pre-activations (`W_hh h + b_hh`).
    /// Equal to `dgi` except for GRU's `n` gate. Zero on inactive rows. In the second part of a
    /// step of the GRU with the reset gate before the recurrent matmul
    /// ([`ChoPart::AfterProduct`]) instead an input, `[B, H]`: the gradient w.r.t. `r ⊙ h_prev`
    /// (empty in its first part).
    pub dgh: &'a mut [T],
    /// `[B, H]` out: the part of `dh_prev` that does not go through `W_hh` (GRU: `z·dh`; zero
    /// for the others). Unspecified on inactive rows.
    pub dh_direct: &'a mut [T],
}

/// The part of a step of the GRU with the reset gate before the recurrent matmul
/// (`linear_before_reset = false`) that a kernel call computes: the step has a second product
/// in its middle, `(r ⊙ h_prev) · W_hn^T` forward, `dA_n · W_hn` backward, which the driver
/// runs between the two parts (`host/gru_reset_before.rs`; the maths is
/// `reference/gru_reset_before.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChoPart {
    /// Forward: `r`, `z` and `extra = r ⊙ h_prev`, from `hg`'s `r, z` columns. Backward: the
    /// `z` and `n` gradients (`dgi`'s `z, n` columns) and `dh_direct = z·dh`.
    BeforeProduct,
    /// Forward: `n` and the new state, from `hg`'s `n` columns (`(r ⊙ h_prev)·W_hn^T`).
    /// Backward: from `dgh = d(r ⊙ h_prev)`, the `r` gradient (`dgi`'s `r` columns) and
    /// `dh_direct += r ⊙ dgh`.
    AfterProduct,
}

/// Row boundaries splitting `rows` into `parts` near-equal blocks.
pub(crate) fn row_bounds(rows: usize, parts: usize) -> Vec<usize> {
    (0..=parts).map(|i| i * rows / parts).collect()
}

/// Implements `split_rows` for a step struct: its `read` and `write` fields (`[B, *]` slices)
/// are cut at the same row boundaries, its `copy` fields are the same in every block. A field
/// left out of the lists is a compile error (the struct literal misses it).
macro_rules! impl_split_rows {
    ($step:ident { read: [$($r:ident),*], write: [$($w:ident),*], copy: [$($c:ident),*] }) => {
        impl<'a, T> $step<'a, T> {
            /// The step's rows cut at `bounds` (see [`row_bounds`]): each block is a step of
            /// its own.
            pub(crate) fn split_rows(self, bounds: &[usize]) -> Vec<$step<'a, T>> {
                let b = self.active.len();
                $(let mut $r = split_rows(self.$r, b, bounds).into_iter();)*
                $(let mut $w = split_rows_mut(self.$w, b, bounds).into_iter();)*
                (1..bounds.len())
                    .map(|_| $step {
                        $($r: $r.next().unwrap_or_default(),)*
                        $($w: $w.next().unwrap_or_default(),)*
                        $($c: self.$c,)*
                    })
                    .collect()
            }
        }
    };
}

impl_split_rows!(CellForward {
    read: [active, xg, hg, h_prev, c_prev],
    write: [gates, extra, c, m],
    copy: [hidden, b_hh, peephole, clip, input_forget]
});
impl_split_rows!(CellBackward {
    read: [active, gates, extra, c, c_prev, h_prev, dm],
    write: [dc, dgi, dgh, dh_direct],
    copy: [hidden, peephole, clip, input_forget]
});

/// One of the weights of a layer-direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weight {
    /// `weight_ih`, `[G·H, In]`.
    Ih = 0,
    /// `weight_hh`, `[G·H, Hout]`.
    Hh = 1,
    /// `weight_hr`, `[Hout, H]`.
    Hr = 2,
    /// `weight_hh`'s rows of the `r` and `z` gates, `[2·H, Hout]` (a GRU with the reset gate
    /// before the recurrent matmul).
    HhGates = 3,
    /// `weight_hh`'s rows of the `n` gate, `[H, Hout]` (as [`Weight::HhGates`]).
    HhNew = 4,
}

/// A product with a weight: `A · W^T` (`transposed`, the forward products) or `A · W` (the
/// backward ones), for the layer-direction `ld = layer·D + direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WeightOp {
    pub weight: Weight,
    pub ld: usize,
    pub transposed: bool,
}

impl WeightOp {
    pub(crate) fn fwd(weight: Weight, ld: usize) -> Self {
        WeightOp { weight, ld, transposed: true }
    }
    pub(crate) fn bwd(weight: Weight, ld: usize) -> Self {
        WeightOp { weight, ld, transposed: false }
    }
}

/// A pass of the time loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Forward,
    Backward,
}

/// The kernels a host backend provides to the driver.
pub(crate) trait HostKernels<T: Float>: Send + Sync {
    /// `C = alpha·A·B + beta·C`; with `beta = 0`, `C` is not read.
    fn gemm(&self, alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: MatMut<'_, T>);
    /// [`gemm`](Self::gemm) for a weight gradient (`dGᵀ·X` summed over steps). A backend
    /// whose plan rounds its products' operands (the CPU backend's bf16 products) rounds both
    /// operands here too; the default is [`gemm`](Self::gemm).
    fn weight_grad_gemm(&self, alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: MatMut<'_, T>) {
        self.gemm(alpha, a, b, beta, c)
    }
    /// `C = A·B + beta·C` where `B` is the weight product `op`, given as the view `b`
    /// (`W^T` or `W` of the PyTorch-layout weight). A backend may use a packed copy instead.
    fn weight_gemm(&self, op: WeightOp, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: MatMut<'_, T>) {
        let _ = op;
        self.gemm(T::ONE, a, b, beta, c)
    }
    /// The fused forward pointwise step of `cell`.
    fn cell_forward(&self, cell: CellKind, step: CellForward<'_, T>);
    /// The fused backward pointwise step of `cell`.
    fn cell_backward(&self, cell: CellKind, step: CellBackward<'_, T>);

    /// The forward pointwise step of the whole cell description (kind and options), which is
    /// what the time loop calls. The default runs [`cell_forward`](Self::cell_forward) on the
    /// kind; a backend whose kernels read a cell option overrides it.
    fn cell_step_forward(&self, cell: &Cell, step: CellForward<'_, T>) {
        self.cell_forward(cell.kind, step)
    }
    /// The backward counterpart of [`cell_step_forward`](Self::cell_step_forward).
    fn cell_step_backward(&self, cell: &Cell, step: CellBackward<'_, T>) {
        self.cell_backward(cell.kind, step)
    }

    /// Part `part` of a forward step of the GRU with the reset gate before the recurrent
    /// matmul (`cell.linear_before_reset` false).
    fn gru_reset_before_forward(&self, cell: &Cell, part: ChoPart, step: CellForward<'_, T>);
    /// Part `part` of a backward step of the GRU with the reset gate before the recurrent
    /// matmul.
    fn gru_reset_before_backward(&self, cell: &Cell, part: ChoPart, step: CellBackward<'_, T>);

    /// Layer-normalises each row (`w` wide; `x.len() / w` rows) of `x` in place:
    /// `x ← γ⊙x̂ + β` (no β when `beta` is None), with `x̂ = (x − μ)·rstd`,
    /// `rstd = 1/sqrt(var + 1e-5)` (biased variance, two passes); `xhat` (same length as `x`)
    /// and `rstd` (one per row) saved when given. Default: `layer_norm::layer_norm_rows`, f64
    /// sums in index order.
    fn layer_norm_rows(&self, w: usize, x: &mut [T], gamma: &[T], beta: Option<&[T]>, xhat: Option<&mut [T]>, rstd: Option<&mut [T]>) {
        layer_norm::layer_norm_rows(w, x, gamma, beta, xhat, rstd)
    }
    /// Backward of [`layer_norm_rows`](Self::layer_norm_rows) for each row:
    /// `dx = rstd·(g − mean(g) − x̂·mean(g⊙x̂))`, `g = γ⊙dy`. Default:
    /// `layer_norm::layer_norm_rows_backward`.
    fn layer_norm_rows_backward(&self, w: usize, dy: &[T], gamma: &[T], xhat: &[T], rstd: &[T], dx: &mut [T]) {
        layer_norm::layer_norm_rows_backward(w, dy, gamma, xhat, rstd, dx)
    }

    /// The layer-normalised LSTM's output on `[n, H]` rows: `m ← o⊙tanh(m)`, `m` holding
    /// `s = γ_c⊙ĉ + β_c`, `o` the last gate of each row of `gates` (`[n, 4·H]`). Default:
    /// `layer_norm::lstm_ln_output`.
    fn lstm_ln_output(&self, h: usize, gates: &[T], m: &mut [T]) {
        layer_norm::lstm_ln_output(h, gates, m)
    }
    /// The pointwise pre-pass of the layer-normalised LSTM's backward step (see
    /// `layer_norm::LstmLnBack`): `s`, `dŝ` and, if asked, the `o` gradient. Default:
    /// `layer_norm::lstm_ln_backward`.
    fn lstm_ln_backward(&self, h: usize, rows: layer_norm::LstmLnBack<'_, T>) {
        layer_norm::lstm_ln_backward(h, rows)
    }

    /// How the time loop of `pass` over `rows` batch rows is cut into blocks of rows that run
    /// their steps on their own, in parallel (see [`for_blocks`](Self::for_blocks)): the
    /// bounds, `[0, …, rows]`. Rows never interact within a layer, so a backend may cut them
    /// wherever the per-row arithmetic of its kernels does not depend on the cut. Default: one
    /// block.
    fn row_blocks(&self, rows: usize, pass: Pass) -> Vec<usize> {
        let _ = pass;
        vec![0, rows]
    }

    /// `x ← tanh(x)` (attention's hidden state): `T::tanh` here, the ISA's vector `tanh` on
    /// the CPU backend.
    fn tanh_in_place(&self, x: &mut [T]) {
        for v in x.iter_mut() {
            *v = v.tanh();
        }
    }

    /// Runs `f(i)` for every `i < parts`, in parallel where the backend can. Inside `f`, use
    /// the kernels of [`serial`](Self::serial).
    fn for_blocks(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..parts).for_each(f)
    }

    /// [`for_blocks`](Self::for_blocks) for a few long parts (a layer-direction's whole time
    /// loop each): a backend whose threads start late may wait for them first, so that each
    /// part runs on a thread of its own. Default: `for_blocks`.
    fn for_long_blocks(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        self.for_blocks(parts, f)
    }

    /// Whether a bidirectional layer with concatenated outputs runs its two directions at once,
    /// each on one thread ([`for_blocks`](Self::for_blocks) with the kernels of
    /// [`serial`](Self::serial)), instead of one after the other on all threads. Either way
    /// gives the same bits. Default: no.
    fn parallel_directions(&self) -> bool {
        false
    }

    /// How many threads [`for_blocks`](Self::for_blocks) runs its parts on at once: at most
    /// this many parts are handed to it. Default: one.
    fn threads(&self) -> usize {
        1
    }

    /// Rows of a block of the weight gradients' sums over steps: up to this many rows
    /// (`T·B`), a weight gradient is one GEMM adding onto the caller's buffer; past it, blocks
    /// of this many rows are summed each on its own and added in f64 (see
    /// `backward::add_weight_grad`), so that the rounding error of a long sequence's weight
    /// gradients is that of one block. A constant of the backend: the blocks never depend on
    /// the thread count.
    fn weight_grad_rows(&self) -> usize;

    /// These kernels running on the calling thread alone, for use inside
    /// [`for_blocks`](Self::for_blocks).
    fn serial(&self) -> Self
    where
        Self: Sized;
}
