//! # rnn-kernels-candle
//!
//! [candle](https://github.com/huggingface/candle) modules over the recurrent stack of
//! `rnn-kernels`: [`LSTM`], [`GRU`] and [`RNN`] (and [`Recurrent`] for any configuration the
//! library runs), on candle tensors on the CPU. The forward pass is the library's; candle's
//! `backward()` runs the library's fused backpropagation through time, and the results are
//! those of the library's own API ([`rnn_kernels::Rnn`]) bit for bit on the same backend.
//!
//! - **Parameters** are candle [`Var`](candle_core::Var)s under PyTorch's names and shapes
//!   (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, `weight_hr_l0` with a
//!   projection, `…_reverse` for the second direction), in `state_dict()` order
//!   ([`Recurrent::named_vars`]). They load from a safetensors file written by PyTorch or the
//!   library ([`Recurrent::load_safetensors`]), from candle's tensors
//!   ([`Recurrent::from_tensors`], e.g. `candle_core::safetensors::load`), or share existing
//!   variables ([`Recurrent::from_vars`], e.g. a `VarMap`'s). `f32` on the
//!   [`Cpu`] backend (the default); `f32` or `f64` on
//!   [`Reference`](rnn_kernels::Reference).
//! - **Calls** ([`Recurrent::run`] with an [`Input`], or candle's [`Module`](candle_core::Module),
//!   which gives `y`): `x: [T, B, I]` (`[B, T, I]` batch-first), optional `h0`, `c0` and
//!   sequence lengths; outputs `y`, `h_n`, `c_n` ([`Output`]). Gradients flow to `x`, `h0`,
//!   `c0` (those that candle tracks) and to every parameter.
//! - **Threads**: the module runs on the backend it is given; a [`Cpu`] is
//!   cheap to clone and its clones share one pool of threads. [`shared_cpu`] is one such
//!   backend for the whole process (a thread per core), so that modules made without a
//!   backend of their own do not each start a pool (`Cpu::new()` does).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rnn_kernels::{CellKind, RnnConfig};
//! use rnn_kernels_candle::{Input, LSTM};
//!
//! let cfg = RnnConfig::new(CellKind::Lstm, 8, 16).num_layers(2).bidirectional(true).build()?;
//! let lstm = LSTM::<f32>::init(rnn_kernels_candle::shared_cpu()?, &cfg, 42)?;
//! let x = Tensor::randn(0f32, 1.0, (5, 3, 8), &Device::Cpu)?; // [T, B, I]
//! let out = lstm.run(Input::new(&x).lengths(&[5, 3, 4]))?;
//! assert_eq!(out.y.dims(), &[5, 3, 32]);
//!
//! let loss = out.y.sqr()?.sum_all()?;
//! let grads = loss.backward()?;
//! for (name, var) in lstm.named_vars() {
//!     let g = grads.get(var).expect("every parameter has a gradient");
//!     var.set(&(var.as_tensor() - (g * 0.01)?)?)?; // plain SGD; the next call sees it
//! #   let _ = name;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## How a call enters candle's graph
//!
//! A training call runs the library's forward pass at once, into a reserve, and adds a few
//! custom ops to candle's graph: one per input that candle tracks (every variable, and `x`,
//! `h0`, `c0` if tracked), chained by one-element tensors, then one op per output. In candle's
//! backward the output ops keep their gradients, the op at the end of the chain runs the
//! library's backward once over the reserve, and each input's op returns its gradient; a
//! parameter's is a view of the one flat gradient the library wrote, not a copy. The outputs
//! are the library's buffers, handed to candle without a copy.
//!
//! ## Weights: when the plan is refreshed
//!
//! The library packs the weights into a plan ([`rnn_kernels::Backend::plan`]); candle variables
//! carry no version, so before each call the module compares every variable, bit for bit, with
//! the copy of the weights its plan was made from, and repacks only when one changed. The
//! identity of a variable's storage would be cheaper but is wrong: `Var::set` (which candle's
//! optimisers use) writes into the same storage. The comparison reads the weights once, block
//! by block, and copies the blocks that changed: for the 10.5 M parameters of a 2-layer
//! bidirectional LSTM with H = 512, about 2 ms when nothing changed against about 10 ms for a
//! repack (two cores); after an optimiser step it costs what a repack does, since the
//! comparison stops at each changed block. Repacking on every call would cost the 10 ms also
//! when nothing changed (inference, several calls between optimiser steps).
//! `examples/candle_step.rs` measures both.
//!
//! A training call holds the plan its forward pass used until candle drops its graph, and
//! backward runs with that plan: if the weights change between a call and its backward, the
//! backward still gives the gradients of the weights the forward pass ran with. A refresh
//! repacks the plan in place when no call holds it (the usual loop: each step's graph is
//! dropped before the next step), and builds a new plan when one does ([`PlanStats`]).
//!
//! ## Threads: the library's pool and candle's
//!
//! candle runs its own element-wise operations of 64 Ki elements or more on a pool of threads
//! of its own, which spin for a while after each operation. With the library's threads on
//! every core too, the two pools compete for the cores: a loss computed in candle over a
//! large `y` can then slow the library's calls that follow it. `CANDLE_NUM_THREADS=1` (read
//! by candle at its first parallel operation) runs candle's operations on the calling thread;
//! the recurrent stack, the heavy part, still runs on the library's threads.
//!
//! ## Reserves
//!
//! A training call takes a reserve (the activations backward needs) from the module's pool and
//! gives it back when candle drops the call's graph, so a training loop reuses one reserve
//! instead of allocating and faulting in the activations at every step. The pool keeps as many
//! reserves as calls were alive at once at most ([`Recurrent::pooled_reserves`],
//! [`Recurrent::clear_reserves`]).

#![warn(missing_docs)]

mod element;
mod graph;
mod module;
mod pool;

pub use element::CandleFloat;
pub use module::{Input, Output, PlanStats, Recurrent};

use rnn_kernels::{Backend, CellKind, Cpu, LoadOptions, Params, RnnConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

/// The CPU backend shared by the whole process: a clone of one [`Cpu`] (the best ISA, or
/// `RNN_KERNELS_ISA`, and a thread per core), made at the first call. Modules given it run on
/// one pool of threads; a module given `Cpu::new()` gets a pool of its own.
pub fn shared_cpu() -> candle_core::Result<Cpu> {
    static CPU: OnceLock<Result<Cpu, String>> = OnceLock::new();
    CPU.get_or_init(|| Cpu::new().map_err(|e| e.to_string())).clone().map_err(candle_core::Error::msg)
}

macro_rules! cell_module {
    ($(#[$doc:meta])* $name:ident, $what:literal, $($cell:path),+) => {
        $(#[$doc])*
        ///
        /// A [`Recurrent`] whose configuration has this cell; it dereferences to it for the
        /// calls and the variables.
        #[allow(clippy::upper_case_acronyms)]
        pub struct $name<T: CandleFloat = f32, B: Backend<T, Buf = [T]> = rnn_kernels::Cpu>(Recurrent<T, B>);

        impl<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static> $name<T, B> {
            fn check(config: &RnnConfig) -> candle_core::Result<()> {
                if !matches!(config.cell(), $($cell)|+) {
                    candle_core::bail!("{}: a configuration of {} expected, got {}", stringify!($name), $what, config.cell())
                }
                Ok(())
            }

            /// See [`Recurrent::new`].
            pub fn new(backend: B, params: &Params<T>) -> candle_core::Result<Self> {
                Self::check(params.config())?;
                Recurrent::new(backend, params).map(Self)
            }

            /// See [`Recurrent::init`].
            pub fn init(backend: B, config: &RnnConfig, seed: u64) -> candle_core::Result<Self> {
                Self::check(config)?;
                Recurrent::init(backend, config, seed).map(Self)
            }

            /// See [`Recurrent::load_safetensors`].
            pub fn load_safetensors(backend: B, config: &RnnConfig, path: impl AsRef<Path>, options: &LoadOptions) -> candle_core::Result<Self> {
                Self::check(config)?;
                Recurrent::load_safetensors(backend, config, path, options).map(Self)
            }

            /// See [`Recurrent::from_tensors`].
            pub fn from_tensors(
                backend: B,
                config: &RnnConfig,
                tensors: &HashMap<String, candle_core::Tensor>,
                options: &LoadOptions,
            ) -> candle_core::Result<Self> {
                Self::check(config)?;
                Recurrent::from_tensors(backend, config, tensors, options).map(Self)
            }

            /// See [`Recurrent::from_vars`].
            pub fn from_vars(
                backend: B,
                config: &RnnConfig,
                vars: &HashMap<String, candle_core::Var>,
                options: &LoadOptions,
            ) -> candle_core::Result<Self> {
                Self::check(config)?;
                Recurrent::from_vars(backend, config, vars, options).map(Self)
            }

            /// See [`Recurrent::with_mask_seed`].
            pub fn with_mask_seed(self, seed: u64) -> Self {
                Self(self.0.with_mask_seed(seed))
            }

            /// The general module.
            pub fn into_inner(self) -> Recurrent<T, B> {
                self.0
            }
        }

        impl<T: CandleFloat, B: Backend<T, Buf = [T]>> std::ops::Deref for $name<T, B> {
            type Target = Recurrent<T, B>;
            fn deref(&self) -> &Recurrent<T, B> {
                &self.0
            }
        }

        impl<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static> candle_core::Module for $name<T, B> {
            /// A training call on `x` from zero states; `y`.
            fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
                candle_core::Module::forward(&self.0, x)
            }
        }
    };
}

cell_module!(
    /// An LSTM stack (`torch.nn.LSTM`): layers, directions, projection (`proj_size`) and the
    /// library's LSTM options as the configuration says.
    LSTM,
    "lstm",
    CellKind::Lstm
);
cell_module!(
    /// A GRU stack (`torch.nn.GRU`).
    GRU,
    "gru",
    CellKind::Gru
);
cell_module!(
    /// An Elman RNN stack with tanh or relu (`torch.nn.RNN`).
    RNN,
    "rnn_tanh or rnn_relu",
    CellKind::RnnTanh,
    CellKind::RnnRelu
);

impl<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static> candle_core::Module for Recurrent<T, B> {
    /// A training call on `x` from zero states; `y`.
    fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        Ok(self.run(Input::new(x))?.y)
    }
}
