//! # rnn-kernels
//!
//! Compute kernels for recurrent neural networks: vanilla RNN (tanh, relu), LSTM (with optional
//! projection) and GRU; multi-layer and bidirectional stacks; variable-length batches; inference
//! and training with full backpropagation through time. Parameters use PyTorch's names, shapes
//! and gate order, and load from safetensors files written by PyTorch.
//!
//! ## Conventions
//!
//! Stated once here, and used by every function and kernel of the crate.
//!
//! - **Layout.** Every tensor is dense and row-major: the rightmost dimension changes fastest.
//!   Data are time-major, unless the configuration is
//!   [`batch_first`](RnnConfigBuilder::batch_first).
//! - **Sizes.** `T` steps, `B` batch, `I` input features, `H` hidden size, `L` layers,
//!   `D` directions (2 if bidirectional, 1 forward or reverse-only), `G` gates (LSTM 4, GRU 3, RNN 1),
//!   `Hout` = `proj_size` if set, else `H`.
//! - **Tensors of a call.** `x: [T, B, I]`; `y: [T, B, D·Hout]` (a bidirectional layer's output
//!   is the forward direction's `Hout` features, then the reverse direction's; with
//!   [`Merge::Sum`] their sum, `y: [T, B, Hout]`, which is then also the next layer's input);
//!   `h0`, `hn: [L·D, B, Hout]` and `c0`, `cn: [L·D, B, H]`, indexed by `layer·D + direction`.
//!   `dx`, `dy`, `dh0`, … are shaped like `x`, `y`, `h0`, …. **Batch-first**
//!   ([`batch_first`](RnnConfigBuilder::batch_first), PyTorch's `batch_first=True`): `x`, `dx`
//!   are `[B, T, I]` and `y`, `dy` `[B, T, ·]`, the same sizes; the states keep their
//!   `[L·D, B, ·]`. The results are the time-major call's on the same data, bit for bit.
//! - **Directions.** Forward runs steps `0..T`; reverse ([`Direction::Reverse`], ONNX's
//!   `direction="reverse"`: one direction, unsuffixed parameter names) runs `T-1..=0`, each
//!   sequence starting at its own last valid step, exactly as the second half of a
//!   bidirectional layer.
//! - **Gate order.** LSTM `i, f, g, o`; GRU `r, z, n`, with the reset gate applied after the
//!   recurrent matmul (`n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`), exactly as PyTorch.
//!   See [`CellKind`] for the equations.
//! - **Parameters.** One flat buffer in `state_dict()` order, see [`ParamLayout`].
//! - **Variable lengths.** [`SeqShape::with_lengths`]: one length per sequence in `1..=T`, any
//!   order. Outputs past a length are zero; final states are those of the last valid step; the
//!   reverse direction starts at each sequence's own last step: PyTorch's packed sequences.
//!
//! ## Use
//!
//! ```
//! use rnn_kernels::{CellKind, Params, Reference, Rnn, RnnConfig, SeqShape};
//!
//! let cfg = RnnConfig::new(CellKind::Lstm, 8, 16).num_layers(2).bidirectional(true).build()?;
//! let params = Params::<f64>::init_uniform(&cfg, 42)?;
//! let rnn = Rnn::from_params(Reference, &params)?;
//!
//! let shape = SeqShape::with_lengths(5, vec![5, 3, 1])?; // T = 5, B = 3
//! let x = vec![0.1; 5 * 3 * 8];
//! let mut reserve = Default::default();
//! let out = rnn.forward_training(&shape, &x, None, None, &mut reserve)?;
//! assert_eq!(out.y.len(), 5 * 3 * 32);
//!
//! let dy = vec![1.0; out.y.len()];
//! let grads = rnn.backward(&reserve, Some(&dy), None, None)?;
//! let dparams = Params::from_vec(&cfg, grads.dparams.unwrap())?;
//! assert_eq!(dparams.get("weight_hh_l1_reverse")?.len(), 64 * 16);
//! # Ok::<(), rnn_kernels::Error>(())
//! ```
//!
//! ## Backends
//!
//! All computation goes through the [`Backend`] trait, whose shape follows cuDNN's RNN API:
//! [`Backend::plan`] packs the flat parameter buffer once into the backend's own layout
//! ([`Backend::update_plan`] repacks in place after an optimiser step);
//! [`Backend::forward_inference`] keeps nothing, [`Backend::forward_training`] also fills a
//! reserve with what [`Backend::backward`] needs; backward takes `dy`, `dhn`, `dcn` (each
//! optional) and writes `dx`, `dh0`, `dc0` and the parameter gradients (each optional), written
//! or added ([`GradMode`]). Buffers are the backend's own ([`Backend::Buf`]): host slices for
//! the host backends, device memory for CUDA.
//!
//! - [`Reference`] is the specification: plain loops, f32 or f64.
//! - [`Cpu`] (f32) runs the same time loop with fused cell kernels and blocked SGEMMs for the
//!   machine's best [`Isa`], on a team of threads.
//! - `Cuda` and `CudaHost` (feature `cuda`) run it on an NVIDIA GPU, on device buffers
//!   (`CudaBuf`) or host slices, in f32, f16 or bf16 storage.
//!
//! [`Rnn`] binds a configuration and its parameters to a backend and allocates the outputs.
//!
//! ## Features
//!
//! - `cuda`: the CUDA backend (PTX built by `build.rs` with nvcc, the CUDA libraries loaded at
//!   run time).
//! - `testkit`: helpers for this crate's tests, examples and benchmarks (`rnn_kernels::testkit`):
//!   PyTorch case files, the derived tolerances of 16-bit storage, benchmark hooks, a seeded
//!   generator. Not part of the library's API.
//!
//! [`attention`] is a decoder's attention over an encoder's outputs (Luong's dot, general and
//! concat scores, Bahdanau's additive one, a softmax masked to each sequence's length, Luong's
//! attentional hidden state), forward and backward, on the reference, the CPU backend and
//! (f32) the CUDA backend's `CudaHost`.
//!
//! Training a model around the stack (embedding, decoder, optimiser, a character-level
//! language model) is the separate crate `rnn-kernels-nn` (`crates/nn` in the repository).

#![warn(missing_docs)]

pub mod attention;
mod backend;
mod config;
mod element;
mod error;
pub mod masks;
pub mod onnx;
mod params;
pub mod philox;
mod rng;
mod rnn;
mod shape;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use backend::{
    check_backward, check_forward, Backend, BackwardInput, BackwardOutput, Buffer, Cpu, CpuPlan, ForwardInput, ForwardOutput, GradMode,
    HostPlan, HostReserve, HostStepGrads, Isa, Reference, RnnPlan, RnnReserve,
};
/// The CPU backend's plan-time tuner ([`Cpu::set_tuning`]).
pub use backend::{tuning_records, Strategy, TuneRecord, TunedPass, Tuning};
#[cfg(feature = "cuda")]
pub use backend::{BorrowedCudaBuf, Cuda, CudaBuf, CudaElement, CudaHost, CudaPlan, CudaReserve, CudaStepGrads};
#[cfg(feature = "cuda")]
pub use backend::{
    CudaAttentionGrads, CudaAttentionMemory, CudaAttentionMemoryGrads, CudaAttentionOutput, CudaAttentionUpstream, DeviceAttentionGrads,
    DeviceAttentionMemory, DeviceAttentionMemoryGrads, DeviceAttentionOutput, DeviceAttentionUpstream,
};
pub use config::{CellKind, Direction, Merge, RnnConfig, RnnConfigBuilder};
/// The cudarc the CUDA backend is built on, for code that exchanges buffers and streams with it
/// ([`CudaBuf::as_cuda_slice`], raw device pointers and streams) at the same version.
#[cfg(feature = "cuda")]
pub use cudarc;
pub use element::{Dtype, Element, Float};
pub use error::{host_memory_bytes, Error, Result};
/// The 16-bit storage types (the `half` crate's), re-exported: [`Element`]s for parameter
/// files and the CUDA backend's f16/bf16 paths.
pub use half::{bf16, f16};
pub use params::{config_from_metadata, config_metadata, LayerRanges, LoadOptions, ParamKind, ParamLayout, ParamSpec, Params};
/// The seeded generator for the crate's unit tests (outside the crate: `testkit::SplitMix64`).
#[cfg(test)]
pub(crate) use rng::SplitMix64;
pub use rnn::{BackwardSteps, Gradients, Output, Rnn, Steps};
pub use shape::SeqShape;
