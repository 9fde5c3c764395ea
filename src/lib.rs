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
//!   Data are time-major.
//! - **Sizes.** `T` steps, `B` batch, `I` input features, `H` hidden size, `L` layers,
//!   `D` directions (2 if bidirectional), `G` gates (LSTM 4, GRU 3, RNN 1),
//!   `Hout` = `proj_size` if set, else `H`.
//! - **Tensors of a call.** `x: [T, B, I]`; `y: [T, B, D·Hout]` (a bidirectional layer's output
//!   is the forward direction's `Hout` features, then the reverse direction's);
//!   `h0`, `hn: [L·D, B, Hout]` and `c0`, `cn: [L·D, B, H]`, indexed by `layer·D + direction`.
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
//! let params = Params::<f64>::init_uniform(&cfg, 42);
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
//! All computation goes through the [`Backend`] trait. [`Reference`] is the specification:
//! plain loops, f32 or f64. Optimised CPU and CUDA backends implement the same trait and are
//! tested against it.
//!
//! ## Training around the stack
//!
//! [`nn`] has host-side pieces for a model around the stack (embedding, linear layer with
//! softmax cross-entropy, Adam, global-norm clipping) and a character-level language model
//! built from them, with truncated-BPTT training, sampling and PyTorch-compatible checkpoints:
//! the `charlm` example is a command line around it.

#![warn(missing_docs)]

pub mod backend;
#[doc(hidden)]
pub mod bench_support;
pub mod case;
mod config;
mod element;
mod error;
pub mod nn;
mod params;
mod rng;
mod rnn;
mod shape;
pub mod tolerance;

pub use backend::{
    Backend, BackwardInput, BackwardOutput, Buffer, Cpu, ForwardInput, ForwardOutput, GradMode, Isa, Reference, RnnPlan, RnnReserve,
};
#[cfg(feature = "cuda")]
pub use backend::{Cuda, CudaBuf, CudaHost};
pub use config::{CellKind, RnnConfig, RnnConfigBuilder};
/// The cudarc the CUDA backend is built on, for code that exchanges buffers and streams with it
/// ([`CudaBuf::as_cuda_slice`], raw device pointers and streams) at the same version.
#[cfg(feature = "cuda")]
pub use cudarc;
pub use element::{Dtype, Element, Float};
pub use error::{Error, Result};
/// The 16-bit storage types (the `half` crate's), re-exported: [`Element`]s for parameter
/// files and the CUDA backend's f16/bf16 paths.
pub use half::{bf16, f16};
pub use params::{config_from_metadata, LayerRanges, LoadOptions, ParamKind, ParamLayout, ParamSpec, Params};
pub use rng::SplitMix64;
pub use rnn::{Gradients, Output, Rnn};
pub use shape::SeqShape;
