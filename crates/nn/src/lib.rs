//! # rnn-kernels-nn
//!
//! Host-side building blocks for training models around the recurrent stack of
//! [`rnn_kernels`], in f32, through its public API.
//!
//! - [`Embedding`]: a lookup table `[V, E]`, forward (gather) and backward (scatter-add).
//! - [`Linear`]: `y = x Wᵀ + b` with PyTorch's `nn.Linear` layout (`weight [out, in]`,
//!   `bias [out]`), forward and backward as GEMMs.
//! - [`softmax_cross_entropy`]: the mean negative log-likelihood of targets under softmaxed
//!   logits, and its gradient.
//! - [`masked_softmax_cross_entropy`] and [`sequence_targets`]: the same over padded sequences,
//!   the steps past each length ignored (PyTorch's `ignore_index`).
//! - [`Adam`] and [`clip_global_norm`]: the optimiser step and gradient clipping over several
//!   parameter tensors at once.
//! - [`Vocab`]: the characters of a corpus and their ids.
//! - [`CharLm`], [`Trainer`], [`train`]: a character-level language model (embedding, a
//!   recurrent stack on any host backend, a softmax decoder), truncated-BPTT training over
//!   parallel streams with carried state, evaluation, sampling, and checkpoints whose names
//!   load into PyTorch (`embedding.weight`, `rnn.weight_ih_l0`, …, `decoder.weight`,
//!   `decoder.bias`).
//! - [`dates`]: a deterministic dataset for sequence-to-sequence training, dates written sixteen
//!   ways people write them (`3rd of March 1999`, `03/03/99`, `Wed, 3 Mar 1999`, …) paired with
//!   ISO `1999-03-03`, and a train/held-out split that shares no date.
//! - [`decode`]: greedy and beam search over a batch (width, length normalisation, end token,
//!   per-sequence stopping; width 1 is greedy), the model one closure per step whose rows carry
//!   their parents, and [`decode::reorder_rows`] to gather a state by them (a decoder's recurrent
//!   state has `rnn_kernels::Steps::reorder`, which gathers each layer's block).
//!
//! Shapes follow [the conventions of `rnn_kernels`](rnn_kernels#conventions): row-major,
//! time-major. `N` below is a number of rows (`T·B` when a time-major `[T, B, ·]` tensor is seen
//! as a matrix). Errors are [`rnn_kernels::Error`]s, naming the argument as the library's do.
//!
//! ## The character-level language model
//!
//! The model: `ids [T, B]` → [`Embedding`] → `x [T, B, E]` → the stack
//! ([`Rnn`](rnn_kernels::Rnn), on any host backend) → `y [T, B, Hout]` → [`Linear`] decoder →
//! `logits [T, B, V]` → softmax.
//!
//! Training cuts the corpus into `B` contiguous streams, one per batch row, and walks them in
//! chunks of `T` characters; each chunk starts from the final state of the previous one (the
//! gradient stops there: truncated BPTT). After the last whole chunk of every stream the
//! streams restart from their beginnings with zero state.
//!
//! A checkpoint is one safetensors file: `embedding.weight [V, E]`, the stack's PyTorch
//! parameters under `rnn.` (`rnn.weight_ih_l0`, …), `decoder.weight [V, Hout]` and
//! `decoder.bias [V]`, which is the `state_dict()` of a PyTorch module with attributes
//! `embedding = nn.Embedding(V, E)`, `rnn = nn.LSTM(E, H, L)` and `decoder = nn.Linear(H, V)`.
//! Its metadata holds the stack's configuration and the vocabulary (`vocab`: the characters in
//! id order).
//!
//! ```
//! use rnn_kernels::{CellKind, Reference};
//! use rnn_kernels_nn::{CharLm, CharLmConfig, TrainConfig, Trainer, Vocab};
//!
//! let text = "to be, or not to be, that is the question. ".repeat(20);
//! let vocab = Vocab::from_text(&text)?;
//! let ids = vocab.encode("text", &text)?;
//! let config = CharLmConfig { cell: CellKind::Lstm, layers: 1, hidden: 16, embedding_dim: 8 };
//! let model = CharLm::new(Reference, vocab, &config, 1)?; // or Cpu::new()?
//! let untrained = model.evaluate(&ids, 4, 20)?; // nats per character
//! let mut trainer = Trainer::new(model, ids.clone(), TrainConfig { batch: 4, chunk: 20, ..TrainConfig::default() })?;
//! for _ in 0..40 {
//!     trainer.step()?;
//! }
//! let model = trainer.into_model();
//! assert!(model.evaluate(&ids, 4, 20)? < untrained);
//! let more = model.sample("to be", 30, 0.8, 7)?;
//! assert_eq!(more.chars().count(), 30);
//! # Ok::<(), rnn_kernels::Error>(())
//! ```

#![warn(missing_docs)]

mod charlm;
mod checkpoint;
pub mod dates;
pub mod decode;
mod error;
mod layers;
mod optim;
mod rng;
mod vocab;

pub use charlm::{train, Budget, CharLm, CharLmConfig, Progress, SaveFailed, Schedule, TrainConfig, TrainSummary, Trainer};
pub use checkpoint::check_save_path;
pub use dates::DatePair;
pub use layers::{masked_softmax_cross_entropy, sequence_targets, softmax_cross_entropy, Embedding, Linear};
pub use optim::{clip_global_norm, Adam, AdamConfig, CosineSchedule, Decay};
pub use vocab::Vocab;
