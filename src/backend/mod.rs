//! The [`Backend`] trait: one interface through which every implementation runs a layer stack.
//!
//! The shape of the API follows cuDNN's RNN API, which framework authors know:
//!
//! 1. [`Backend::plan`] takes a [`RnnConfig`] and the flat parameter buffer
//!    ([`ParamLayout`](crate::ParamLayout) order) and returns a plan: the weights packed once into
//!    the backend's own layout, reused by every call. [`Backend::update_plan`] repacks in place
//!    after an optimiser step.
//! 2. [`Backend::forward_inference`] keeps nothing; [`Backend::forward_training`] also fills a
//!    reserve with the activations backward needs. A reserve can be reused across calls: its
//!    buffers are resized, not reallocated, when shapes repeat.
//! 3. [`Backend::backward`] is full backpropagation through time from `dy`, `dhn`, `dcn` (each
//!    optional) to `dx`, `dh0`, `dc0` and the parameter gradients (each optional), with
//!    parameter gradients either written or added ([`GradMode`]).
//!
//! Buffers are the backend's own ([`Backend::Buf`]): host slices `[T]` for the reference and CPU
//! backends, device memory for CUDA, so a backend can keep a whole stack on its device. Every
//! buffer is a dense row-major tensor whose shape is given in [the crate docs](crate#conventions)
//! (`x`, `y`, `dx`, `dy` time-major, or batch-first with
//! [`batch_first`](crate::RnnConfigBuilder::batch_first)).
//!
//! Extension points: new cells ([`CellKind`](crate::CellKind) is non-exhaustive), storage types
//! (`Backend<T>` is generic over the element; f16/bf16 storage is a new `impl`), and options in
//! [`RnnConfig`]'s builder, all without changing these signatures.

pub(crate) mod cell;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod host;
pub(crate) mod reference;
pub(crate) mod stack;

use crate::config::RnnConfig;
use crate::element::Element;
use crate::error::Result;
use crate::masks::MaskStream;
use crate::shape::SeqShape;

pub use cpu::{tuning_records, Cpu, CpuPlan, Isa, Strategy, TuneRecord, TunedPass, Tuning};
#[cfg(feature = "cuda")]
pub use cuda::{BorrowedCudaBuf, Cuda, CudaBuf, CudaElement, CudaHost, CudaPlan, CudaReserve, CudaStepGrads};
#[cfg(feature = "cuda")]
pub use cuda::{
    CudaAttentionGrads, CudaAttentionMemory, CudaAttentionMemoryGrads, CudaAttentionOutput, CudaAttentionUpstream, DeviceAttentionGrads,
    DeviceAttentionMemory, DeviceAttentionMemoryGrads, DeviceAttentionOutput, DeviceAttentionUpstream,
};
pub use host::{HostPlan, HostReserve, HostStepGrads};
pub use reference::Reference;

/// A buffer of elements in the memory a backend computes on.
pub trait Buffer {
    /// Number of elements.
    fn len(&self) -> usize;
    /// Whether it holds no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Buffer for [T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
}

/// What a plan must tell about itself.
pub trait RnnPlan: Send + Sync {
    /// The configuration the plan was made for.
    fn config(&self) -> &RnnConfig;

    /// The number of elements of the flat parameter buffer (and of a parameter gradient): the
    /// [`ParamLayout`](crate::ParamLayout) length of [`config`](Self::config). A plan that keeps
    /// its layout answers from it; the default counts from the configuration.
    fn param_len(&self) -> usize {
        self.config().param_count()
    }
}

/// What a reserve must tell about itself.
pub trait RnnReserve: Send + Default {
    /// The shape of the training call that filled it; `None` while empty.
    fn shape(&self) -> Option<&SeqShape>;
}

/// Inputs of a forward call. `h0` and `c0` default to zeros when `None`.
#[derive(Debug)]
pub struct ForwardInput<'a, B: ?Sized> {
    /// `x: [T, B, I]`, or `[B, T, I]` batch-first.
    pub x: &'a B,
    /// `h0: [L·D, B, Hout]`, or zeros.
    pub h0: Option<&'a B>,
    /// `c0: [L·D, B, H]` (LSTM only), or zeros.
    pub c0: Option<&'a B>,
    /// The random masks of a training pass (dropout between layers, zoneout, recurrent and input
    /// dropout:
    /// [`RnnConfigBuilder::dropout`](crate::RnnConfigBuilder::dropout),
    /// [`zoneout`](crate::RnnConfigBuilder::zoneout),
    /// [`recurrent_dropout`](crate::RnnConfigBuilder::recurrent_dropout),
    /// [`input_dropout`](crate::RnnConfigBuilder::input_dropout)): a stream drawn from a
    /// seed and a per-call offset. Required by a training pass of a configuration with any of
    /// them (an error naming `masks` otherwise); ignored by inference and by configurations
    /// without.
    pub masks: Option<MaskStream>,
}

/// Outputs of a forward call, all overwritten.
#[derive(Debug)]
pub struct ForwardOutput<'a, B: ?Sized> {
    /// `y: [T, B, D·Hout]` (`Hout` wide with merge by sum), or `[B, T, ·]` batch-first; zero
    /// past each sequence's length.
    pub y: &'a mut B,
    /// `hn: [L·D, B, Hout]`, taken at each sequence's last valid step; skipped when `None`.
    pub hn: Option<&'a mut B>,
    /// `cn: [L·D, B, H]` (LSTM only); skipped when `None`.
    pub cn: Option<&'a mut B>,
}

/// Upstream gradients of a backward call; `None` means zeros.
#[derive(Debug)]
pub struct BackwardInput<'a, B: ?Sized> {
    /// `dy`, shaped like `y`. Entries past a sequence's length are ignored (the output there is
    /// a constant zero).
    pub dy: Option<&'a B>,
    /// `dhn: [L·D, B, Hout]`.
    pub dhn: Option<&'a B>,
    /// `dcn: [L·D, B, H]` (LSTM only).
    pub dcn: Option<&'a B>,
}

/// Outputs of a backward call; each is skipped when `None` (and its work with it where
/// possible).
#[derive(Debug)]
pub struct BackwardOutput<'a, B: ?Sized> {
    /// `dx`, shaped like `x`; overwritten.
    pub dx: Option<&'a mut B>,
    /// `dh0: [L·D, B, Hout]`, overwritten.
    pub dh0: Option<&'a mut B>,
    /// `dc0: [L·D, B, H]` (LSTM only), overwritten.
    pub dc0: Option<&'a mut B>,
    /// Parameter gradients in the flat [`ParamLayout`](crate::ParamLayout); written or added
    /// according to [`GradMode`].
    pub dparams: Option<&'a mut B>,
}

/// Whether [`Backend::backward`] writes or adds the parameter gradients.
///
/// `dx`, `dh0` and `dc0` are always overwritten: they belong to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradMode {
    /// `dparams = grad` (cuDNN's `CUDNN_WGRAD_MODE_SET`).
    #[default]
    Overwrite,
    /// `dparams += grad` (cuDNN's `CUDNN_WGRAD_MODE_ADD`): for gradient accumulation over
    /// micro-batches and for truncated BPTT, where each chunk's gradients add up.
    Accumulate,
}

/// An implementation of the layer stack for element type `T`.
///
/// Every method validates its arguments (lengths of all buffers against the configuration and
/// [`SeqShape`]; a reserve against the plan) and returns an error naming the wrong argument,
/// the expected and the given value; nothing a caller passes makes it panic or write outside the
/// buffers it was given.
pub trait Backend<T: Element>: Send + Sync {
    /// A buffer of `T` in this backend's memory: `[T]` on the host.
    type Buf: ?Sized + Buffer;
    /// Packed weights and whatever else the backend prepares once per configuration.
    type Plan: RnnPlan;
    /// Activations saved by [`forward_training`](Self::forward_training) for
    /// [`backward`](Self::backward). `Default` gives an empty reserve to be filled.
    type Reserve: RnnReserve;
    /// What [`backward_step_deferred`](Self::backward_step_deferred) keeps of a decoder's steps
    /// for their parameters' gradients (`()` where the backend does not defer them). `Default`
    /// gives an empty one.
    type StepGrads: Default + Send;

    /// A short name for reports, e.g. `reference-f64`.
    fn name(&self) -> String;

    /// Packs `params` (flat [`ParamLayout`](crate::ParamLayout) order) for `config`.
    fn plan(&self, config: &RnnConfig, params: &Self::Buf) -> Result<Self::Plan>;

    /// Repacks new values of the same parameters into `plan`, reusing its memory. A reserve
    /// made before this call can no longer be used for backward.
    fn update_plan(&self, plan: &mut Self::Plan, params: &Self::Buf) -> Result<()>;

    /// Copies the plan's parameters into `params` (flat [`ParamLayout`](crate::ParamLayout)
    /// order), so that a caller that hands its weights to the plan need not keep a copy of its own.
    fn read_params(&self, plan: &Self::Plan, params: &mut Self::Buf) -> Result<()>;

    /// Forward pass that keeps nothing.
    fn forward_inference(
        &self,
        plan: &Self::Plan,
        shape: &SeqShape,
        input: ForwardInput<'_, Self::Buf>,
        output: ForwardOutput<'_, Self::Buf>,
    ) -> Result<()>;

    /// Forward pass that also fills `reserve` with what [`backward`](Self::backward) needs
    /// (including a copy of `x`, `h0` and `c0`, so backward does not take them again).
    fn forward_training(
        &self,
        plan: &Self::Plan,
        shape: &SeqShape,
        input: ForwardInput<'_, Self::Buf>,
        output: ForwardOutput<'_, Self::Buf>,
        reserve: &mut Self::Reserve,
    ) -> Result<()>;

    /// Backpropagation through time over the call that filled `reserve`, with the weights of
    /// `plan` (which must be the plan, unchanged, that the forward pass used).
    fn backward(
        &self,
        plan: &Self::Plan,
        reserve: &Self::Reserve,
        grads: BackwardInput<'_, Self::Buf>,
        output: BackwardOutput<'_, Self::Buf>,
        mode: GradMode,
    ) -> Result<()>;

    /// The backward of one step of a decoder run ([`Rnn::backward_steps`](crate::Rnn::backward_steps)):
    /// `reserve` the one-step reserve (`T = 1`) of a forward stack, walked back from the last
    /// step. Writes `dx`, `dh0`, `dc0` as [`backward`](Self::backward) does, but not the
    /// parameters' gradients (`output.dparams` must be `None`): it keeps in `acc` what they
    /// are computed from, and [`deferred_param_grads`](Self::deferred_param_grads) computes
    /// them once every step is walked, each weight's as one product over all the steps' rows.
    ///
    /// Returns `Ok(false)`, having done nothing, where the backend does not defer (the caller
    /// then walks the step with [`backward`](Self::backward) and [`GradMode::Accumulate`]).
    fn backward_step_deferred(
        &self,
        plan: &Self::Plan,
        reserve: &Self::Reserve,
        grads: BackwardInput<'_, Self::Buf>,
        output: BackwardOutput<'_, Self::Buf>,
        acc: &mut Self::StepGrads,
    ) -> Result<bool> {
        let _ = (plan, reserve, grads, output, acc);
        Ok(false)
    }

    /// The parameters' gradients of a decoder's steps walked back with
    /// [`backward_step_deferred`](Self::backward_step_deferred): `reserves` the steps'
    /// reserves in step order, `acc` what their backward kept; written or added into
    /// `dparams` by `mode`. The weight gradients are the products over all the steps' rows
    /// that the backward of one call over the whole sequence computes.
    fn deferred_param_grads(
        &self,
        plan: &Self::Plan,
        reserves: &[Self::Reserve],
        acc: Self::StepGrads,
        dparams: &mut Self::Buf,
        mode: GradMode,
    ) -> Result<()> {
        let _ = (plan, reserves, acc, dparams, mode);
        Err(crate::Error::Unsupported {
            backend: self.name(),
            option: "deferred parameter gradients".into(),
            reason: "this backend computes a decoder step's parameter gradients with the step (backward_step_deferred returns false)"
                .into(),
        })
    }
}

/// Refuses a configuration whose options (by the names of [`RnnConfig::options`]) are not
/// all in `supported`: [`Error::Unsupported`](crate::Error::Unsupported) naming the first one
/// `backend` lacks. Every backend calls it in `plan`, so that no option is ever ignored.
pub(crate) fn check_options(backend: &str, config: &RnnConfig, supported: &[&str]) -> Result<()> {
    match config.options().into_iter().find(|o| !supported.contains(o)) {
        None => Ok(()),
        Some(option) => Err(crate::Error::Unsupported {
            backend: backend.to_string(),
            option: option.to_string(),
            reason: format!(
                "this backend implements {} of the cell options; the reference backend is the specification of them all",
                if supported.is_empty() { "none".to_string() } else { supported.join(", ") }
            ),
        }),
    }
}

/// Checks the buffers of a forward call against `config` and `shape`. Public for code that
/// checks a call before choosing a backend (the C ABI's device-pointer entry points).
pub fn check_forward<B: ?Sized + Buffer>(
    config: &RnnConfig,
    shape: &SeqShape,
    input: &ForwardInput<'_, B>,
    output: &ForwardOutput<'_, B>,
) -> Result<()> {
    use crate::shape::Tensor;
    shape.check_buffers(
        config,
        &[
            ("x", Tensor::X, Some(input.x.len())),
            ("h0", Tensor::H, input.h0.map(|b| b.len())),
            ("c0", Tensor::C, input.c0.map(|b| b.len())),
            ("y", Tensor::Y, Some(output.y.len())),
            ("hn", Tensor::H, output.hn.as_deref().map(|b| b.len())),
            ("cn", Tensor::C, output.cn.as_deref().map(|b| b.len())),
        ],
    )
}

/// Checks the buffers of a backward call against `config`, the reserve's `shape` and the
/// parameter count. Public like [`check_forward`].
pub fn check_backward<B: ?Sized + Buffer>(
    config: &RnnConfig,
    shape: &SeqShape,
    param_len: usize,
    grads: &BackwardInput<'_, B>,
    output: &BackwardOutput<'_, B>,
) -> Result<()> {
    use crate::shape::Tensor;
    shape.check_buffers(
        config,
        &[
            ("dy", Tensor::Y, grads.dy.map(|b| b.len())),
            ("dhn", Tensor::H, grads.dhn.map(|b| b.len())),
            ("dcn", Tensor::C, grads.dcn.map(|b| b.len())),
            ("dx", Tensor::X, output.dx.as_deref().map(|b| b.len())),
            ("dh0", Tensor::H, output.dh0.as_deref().map(|b| b.len())),
            ("dc0", Tensor::C, output.dc0.as_deref().map(|b| b.len())),
        ],
    )?;
    if let Some(dp) = output.dparams.as_deref() {
        if dp.len() != param_len {
            return Err(crate::Error::shape(
                "dparams",
                format!("the flat parameter layout: {param_len} elements"),
                format!("{} elements", dp.len()),
            ));
        }
    }
    Ok(())
}
