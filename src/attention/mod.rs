//! Attention of a decoder over an encoder's outputs: the score functions of Luong et al. (2015)
//! and Bahdanau et al. (2015), a softmax masked to each encoder sequence's own length, the
//! context, and Luong's attentional hidden state. [`reference`](mod@reference) is the specification, in plain
//! loops, f32 or f64, forward and backward.
//!
//! # Shapes
//!
//! The conventions of the crate (row-major, time-major), with `S` encoder steps, `Tq` queries
//! (decoder steps), `B` batch, `Hk` the encoder's output size (keys, which are also the values),
//! `Hq` the query size (the decoder's state), `A` the attention size of the concat and additive
//! scores, `O` the size of the attentional hidden state (0: none):
//!
//! - `keys: [S, B, Hk]`: the encoder's outputs; sequence `b` has `lengths[b]` of them, in
//!   `1..=S`, and the rest are padding (never read by a weight).
//! - `queries: [Tq, B, Hq]`: the decoder states that attend (all steps at once under teacher
//!   forcing, or one step, `Tq = 1`).
//! - `weights: [Tq, B, S]`: the attention weights, a softmax over `s < lengths[b]`, exactly 0
//!   past it.
//! - `context: [Tq, B, Hk]`: `c = Σ_s weights[s] · keys[s]`.
//! - `hidden: [Tq, B, O]`: `h̃ = tanh(W_c [c; q])` (Luong's attentional hidden state, the input
//!   of the output layer and, with input feeding, of the next decoder step).
//!
//! # Scores
//!
//! For a query `q` and a key `k` ([`Score`]):
//!
//! | score | formula | parameters, in order |
//! | --- | --- | --- |
//! | [`Dot`](Score::Dot) | `qᵀ k` (`Hq = Hk`) | none |
//! | [`General`](Score::General) | `qᵀ W_a k` | `weight_a [Hq, Hk]` |
//! | [`Concat`](Score::Concat) | `v_aᵀ tanh(W_a [q; k])` | `weight_a [A, Hq + Hk]`, `v_a [A]` |
//! | [`Additive`](Score::Additive) (Bahdanau) | `vᵀ tanh(W₁ k + W₂ q)` | `weight_key [A, Hk]` (`W₁`), `weight_query [A, Hq]` (`W₂`), `v [A]` |
//!
//! then, with an attentional hidden state, `weight_c [O, Hk + Hq]`. The parameters are one flat
//! buffer in that order ([`AttentionConfig::params`]); each matrix is PyTorch's `nn.Linear`
//! weight of the product (`[out, in]`, no bias), so a torch module with those attributes loads
//! them unchanged. Concat and additive compute the same function of different parameter
//! layouts (Luong's one matrix over the concatenation, Bahdanau's two).
//!
//! # Use
//!
//! ```
//! use rnn_kernels::attention::{reference, AttentionConfig, AttentionShape, AttentionUpstream, Score};
//!
//! // Luong's general score with the attentional hidden state, decoder 6, encoder 8 features.
//! let cfg = AttentionConfig::new(Score::General, 6, 8).output_size(6).build()?;
//! let shape = AttentionShape::new(4, 5, vec![5, 3])?; // Tq = 4 queries, S = 5, B = 2
//! let params = vec![0.1; cfg.param_len()];
//! let keys = vec![0.5; 5 * 2 * 8];
//! let queries = vec![0.2; 4 * 2 * 6];
//! let out = reference::forward(&cfg, &shape, &params, &keys, &queries)?;
//! assert_eq!(out.weights[(0 * 2 + 1) * 5 + 3], 0.0); // query 0, sequence 1, key 3: past its length 3
//!
//! let d_hidden = vec![1.0; out.hidden.len()];
//! let up = AttentionUpstream { d_hidden: Some(&d_hidden), ..Default::default() };
//! let grads = reference::backward(&cfg, &shape, &params, &keys, &queries, &out, up)?;
//! assert_eq!(grads.d_params.len(), cfg.param_len());
//! # Ok::<(), rnn_kernels::Error>(())
//! ```

pub mod reference;

/// The keys' side of an attention, computed once for every query that attends over the same
/// keys (a decoder's steps, one call each): the keys with their padding zeroed and their
/// projection (general: `K W_aᵀ`, `[S, B, Hq]`; concat and additive: `K W_kᵀ`, `[S, B, A]`;
/// none for dot). From [`AttentionBackend::attention_memory`]; empty by default (to be filled by
/// [`AttentionBackend::attention_memory_into`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttentionMemory<T> {
    pub(crate) keys: Vec<T>,
    pub(crate) proj: Vec<T>,
    pub(crate) steps: usize,
    pub(crate) lengths: Vec<usize>,
}

impl<T: Copy> AttentionMemory<T> {
    /// The encoder lengths of its sequences.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// The memory of the sequences `rows` (`rows[r]`: the sequence row `r` reads; repeats
    /// allowed): a beam search's hypotheses each attend over their own sequence's keys. An
    /// error naming `rows` for a sequence out of range.
    pub fn gather(&self, rows: &[usize]) -> Result<Self> {
        let b = self.lengths.len();
        if let Some(i) = rows.iter().position(|&r| r >= b) {
            return Err(Error::invalid(format!("rows[{i}]"), format!("a sequence below B = {b}"), rows[i]));
        }
        let pick = |v: &[T]| -> Vec<T> {
            let w = v.len() / (self.steps * b).max(1);
            let mut out = Vec::with_capacity(self.steps * rows.len() * w);
            for s in 0..self.steps {
                for &r in rows {
                    out.extend_from_slice(&v[(s * b + r) * w..(s * b + r + 1) * w]);
                }
            }
            out
        };
        Ok(AttentionMemory {
            keys: pick(&self.keys),
            proj: pick(&self.proj),
            steps: self.steps,
            lengths: rows.iter().map(|&r| self.lengths[r]).collect(),
        })
    }
}

impl<T> AttentionMemory<T> {
    /// Checks that the memory was made for `shape`'s keys (steps and lengths).
    pub(crate) fn check(&self, shape: &AttentionShape) -> Result<()> {
        check_memory_keys(self.steps, &self.lengths, shape)
    }
}

/// The gradients w.r.t. an [`AttentionMemory`], accumulated over the backward calls that read
/// it; [`AttentionBackend::attention_memory_backward`] turns them into the keys' and the
/// parameters' gradients once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttentionMemoryGrads<T> {
    pub(crate) d_keys: Vec<T>,
    pub(crate) d_proj: Vec<T>,
}

impl<T: crate::Float> AttentionMemoryGrads<T> {
    /// Zeros for `memory`.
    pub fn new(memory: &AttentionMemory<T>) -> Self {
        AttentionMemoryGrads { d_keys: vec![T::ZERO; memory.keys.len()], d_proj: vec![T::ZERO; memory.proj.len()] }
    }

    /// Zeros for `memory` in these buffers (the previous step's, in a training loop): what
    /// [`new`](Self::new) makes, without new memory where the buffers hold it.
    pub fn reset(&mut self, memory: &AttentionMemory<T>) {
        for (v, n) in [(&mut self.d_keys, memory.keys.len()), (&mut self.d_proj, memory.proj.len())] {
            v.clear();
            v.resize(n, T::ZERO);
        }
    }
}

/// A backend that computes attention: the host backends, [`Reference`](crate::Reference) (in
/// `T`, its plain-loop products) and [`Cpu`](crate::Cpu) (f32, its ISA's products on its
/// threads); and, with the `cuda` feature, `CudaHost` (f32: cuBLAS products per sequence and
/// fused kernels for the masked softmax and the tanh scores, `kernels/attention.cu`). Each
/// arranges the maths of [`reference`](mod@reference) as products over all the queries of a call
/// at once and is tested against it; results do not depend on the number of threads.
///
/// Two paths: the batched one ([`attention_forward`](Self::attention_forward),
/// [`attention_backward`](Self::attention_backward)) when every query is known (teacher
/// forcing with Luong's attention), and the per-step one when a decoder computes its queries
/// one step at a time: the keys' side once ([`attention_memory`](Self::attention_memory)), each
/// step's queries against it ([`attention_forward_with`](Self::attention_forward_with)), each
/// step's backward adding into [`AttentionMemoryGrads`]
/// ([`attention_backward_with`](Self::attention_backward_with)), and the keys' side's backward
/// once ([`attention_memory_backward`](Self::attention_memory_backward)). The batched path is
/// the per-step one with every query in one call.
pub trait AttentionBackend<T: crate::Float> {
    /// The keys' side of `shape`'s keys (`keys: [S, B, Hk]`; the shape's query count is not
    /// read).
    fn attention_memory(&self, cfg: &AttentionConfig, shape: &AttentionShape, params: &[T], keys: &[T]) -> Result<AttentionMemory<T>>;

    /// The forward pass of `queries: [Tq, B, Hq]` over `memory`: [`reference::forward`]'s
    /// results.
    fn attention_forward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        queries: &[T],
    ) -> Result<AttentionOutput<T>>;

    /// The backward pass of a call of [`attention_forward_with`](Self::attention_forward_with):
    /// the queries' gradients and the parameters' part that does not go through the keys'
    /// side (`d_keys` empty); the keys' side's gradients are added into `d_memory`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<AttentionGrads<T>>;

    /// The keys' side's backward from the accumulated `d_memory`: the keys' gradients
    /// (`[S, B, Hk]`, zero at the padding) and the parameters' part through the keys' side
    /// (`d_queries` empty).
    fn attention_memory_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        d_memory: &AttentionMemoryGrads<T>,
    ) -> Result<AttentionGrads<T>>;

    /// [`attention_memory`](Self::attention_memory) into `memory`, whose buffers (the previous
    /// step's memory, in a training loop) hold the results where they are large enough. A loop
    /// that hands each call its previous results maps no new memory from step to step (on the
    /// CPU backend, fresh buffers of several MB are otherwise mapped and faulted in page by
    /// page at every call). Same results as the allocating call; on an error `memory` is left
    /// as it was. The default makes new buffers.
    fn attention_memory_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        keys: &[T],
        memory: &mut AttentionMemory<T>,
    ) -> Result<()> {
        *memory = self.attention_memory(cfg, shape, params, keys)?;
        Ok(())
    }

    /// [`attention_forward_with`](Self::attention_forward_with) into `out`'s buffers, as
    /// [`attention_memory_into`](Self::attention_memory_into).
    fn attention_forward_with_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        queries: &[T],
        out: &mut AttentionOutput<T>,
    ) -> Result<()> {
        *out = self.attention_forward_with(cfg, shape, params, memory, queries)?;
        Ok(())
    }

    /// [`attention_backward_with`](Self::attention_backward_with) into `grads`' buffers, as
    /// [`attention_memory_into`](Self::attention_memory_into).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_with_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        queries: &[T],
        out: &AttentionOutput<T>,
        up: AttentionUpstream<'_, T>,
        d_memory: &mut AttentionMemoryGrads<T>,
        grads: &mut AttentionGrads<T>,
    ) -> Result<()> {
        *grads = self.attention_backward_with(cfg, shape, params, memory, queries, out, up, d_memory)?;
        Ok(())
    }

    /// [`attention_memory_backward`](Self::attention_memory_backward) into `grads`' buffers, as
    /// [`attention_memory_into`](Self::attention_memory_into).
    fn attention_memory_backward_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        memory: &AttentionMemory<T>,
        d_memory: &AttentionMemoryGrads<T>,
        grads: &mut AttentionGrads<T>,
    ) -> Result<()> {
        *grads = self.attention_memory_backward(cfg, shape, params, memory, d_memory)?;
        Ok(())
    }

    /// The forward pass: [`reference::forward`]'s results.
    fn attention_forward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        keys: &[T],
        queries: &[T],
    ) -> Result<AttentionOutput<T>> {
        check_inputs(cfg, shape, params, keys, queries)?;
        let memory = self.attention_memory(cfg, shape, params, keys)?;
        self.attention_forward_with(cfg, shape, params, &memory, queries)
    }

    /// The backward pass: [`reference::backward`]'s results.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[T],
        keys: &[T],
        queries: &[T],
        out: &AttentionOutput<T>,
        up: AttentionUpstream<'_, T>,
    ) -> Result<AttentionGrads<T>> {
        check_inputs(cfg, shape, params, keys, queries)?;
        check_backward(cfg, shape, out, &up)?;
        let memory = self.attention_memory(cfg, shape, params, keys)?;
        let mut d_memory = AttentionMemoryGrads::new(&memory);
        let mut g = self.attention_backward_with(cfg, shape, params, &memory, queries, out, up, &mut d_memory)?;
        let k = self.attention_memory_backward(cfg, shape, params, &memory, &d_memory)?;
        for (d, x) in g.d_params.iter_mut().zip(&k.d_params) {
            *d += *x;
        }
        g.d_keys = k.d_keys;
        Ok(g)
    }
}

use crate::error::{Error, Result};
use std::ops::Range;

/// The score function of an attention ([module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Score {
    /// Luong's dot: `qᵀ k`.
    Dot,
    /// Luong's general: `qᵀ W_a k`.
    General,
    /// Luong's concat: `v_aᵀ tanh(W_a [q; k])`.
    Concat,
    /// Bahdanau's additive: `vᵀ tanh(W₁ k + W₂ q)`.
    Additive,
}

impl Score {
    /// Every score, in declaration order.
    pub const ALL: [Score; 4] = [Score::Dot, Score::General, Score::Concat, Score::Additive];

    /// The lowercase name (`dot`, `general`, `concat`, `additive`).
    pub fn name(self) -> &'static str {
        match self {
            Score::Dot => "dot",
            Score::General => "general",
            Score::Concat => "concat",
            Score::Additive => "additive",
        }
    }
}

impl std::str::FromStr for Score {
    type Err = Error;

    /// The lowercase name; `bahdanau` is [`Score::Additive`].
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dot" => Ok(Score::Dot),
            "general" => Ok(Score::General),
            "concat" => Ok(Score::Concat),
            "additive" | "bahdanau" => Ok(Score::Additive),
            _ => Err(Error::invalid("score", "one of dot, general, concat, additive (bahdanau)", s)),
        }
    }
}

/// One attention: its score, sizes and whether it has the attentional hidden state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionConfig {
    score: Score,
    query_size: usize,
    key_size: usize,
    attn_size: usize,
    output_size: usize,
}

/// The builder of an [`AttentionConfig`] ([`AttentionConfig::new`]).
#[derive(Debug, Clone)]
pub struct AttentionConfigBuilder(AttentionConfig);

impl AttentionConfigBuilder {
    /// `A`, the width of the concat and additive scores' `tanh` layer.
    pub fn attn_size(mut self, a: usize) -> Self {
        self.0.attn_size = a;
        self
    }

    /// `O`, the size of the attentional hidden state `tanh(W_c [c; q])` (0: none, the default).
    pub fn output_size(mut self, o: usize) -> Self {
        self.0.output_size = o;
        self
    }

    /// The checked configuration: sizes at least 1, `Hq = Hk` for the dot score, `A ≥ 1` for
    /// concat and additive (and 0 for the others); an error naming the argument otherwise.
    pub fn build(self) -> Result<AttentionConfig> {
        let c = self.0;
        if c.query_size == 0 {
            return Err(Error::invalid("query_size", "at least 1", 0));
        }
        if c.key_size == 0 {
            return Err(Error::invalid("key_size", "at least 1", 0));
        }
        if c.score == Score::Dot && c.query_size != c.key_size {
            return Err(Error::invalid("key_size", format!("equal to query_size ({}) for the dot score", c.query_size), c.key_size));
        }
        let wants_a = matches!(c.score, Score::Concat | Score::Additive);
        if wants_a && c.attn_size == 0 {
            return Err(Error::invalid("attn_size", format!("at least 1 for the {} score", c.score.name()), 0));
        }
        if !wants_a && c.attn_size != 0 {
            return Err(Error::invalid("attn_size", format!("0 for the {} score (it has no tanh layer)", c.score.name()), c.attn_size));
        }
        Ok(c)
    }
}

impl AttentionConfig {
    /// An attention of `score` with queries of `query_size` and keys of `key_size` features;
    /// the concat and additive scores also need
    /// [`attn_size`](AttentionConfigBuilder::attn_size). Checked by
    /// [`build`](AttentionConfigBuilder::build).
    #[allow(clippy::new_ret_no_self)] // RnnConfig's pattern: `new` gives the builder
    pub fn new(score: Score, query_size: usize, key_size: usize) -> AttentionConfigBuilder {
        AttentionConfigBuilder(AttentionConfig { score, query_size, key_size, attn_size: 0, output_size: 0 })
    }

    /// The builder of this configuration, to change it.
    pub fn to_builder(&self) -> AttentionConfigBuilder {
        AttentionConfigBuilder(self.clone())
    }

    /// The score function.
    pub fn score(&self) -> Score {
        self.score
    }

    /// `Hq`.
    pub fn query_size(&self) -> usize {
        self.query_size
    }

    /// `Hk`.
    pub fn key_size(&self) -> usize {
        self.key_size
    }

    /// `A` (0 for the dot and general scores).
    pub fn attn_size(&self) -> usize {
        self.attn_size
    }

    /// `O` (0: no attentional hidden state).
    pub fn output_size(&self) -> usize {
        self.output_size
    }

    /// The parameters, in the order of the flat buffer: name and shape.
    pub fn params(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (hq, hk, a) = (self.query_size, self.key_size, self.attn_size);
        let mut p = match self.score {
            Score::Dot => vec![],
            Score::General => vec![("weight_a", vec![hq, hk])],
            Score::Concat => vec![("weight_a", vec![a, hq + hk]), ("v_a", vec![a])],
            Score::Additive => vec![("weight_key", vec![a, hk]), ("weight_query", vec![a, hq]), ("v", vec![a])],
        };
        if self.output_size > 0 {
            p.push(("weight_c", vec![self.output_size, hk + hq]));
        }
        p
    }

    /// The number of parameters.
    pub fn param_len(&self) -> usize {
        self.params().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Where parameter `name` lies in the flat buffer; an error naming `name` if this
    /// configuration has no such parameter.
    pub fn param_range(&self, name: &str) -> Result<Range<usize>> {
        let mut at = 0;
        for (n, s) in self.params() {
            let len = s.iter().product::<usize>();
            if n == name {
                return Ok(at..at + len);
            }
            at += len;
        }
        let names: Vec<&str> = self.params().iter().map(|(n, _)| *n).collect();
        Err(Error::invalid("name", format!("a parameter of this attention ({})", names.join(", ")), name))
    }
}

/// The sizes of one attention call: `Tq` queries over `S` encoder steps, `B` sequences with
/// their encoder lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionShape {
    queries: usize,
    steps: usize,
    lengths: Vec<usize>,
}

impl AttentionShape {
    /// `queries` (`Tq`) decoder steps attending over `steps` (`S`) encoder steps, one encoder
    /// length per sequence (`B` of them), each in `1..=S`; an error naming the argument
    /// otherwise.
    pub fn new(queries: usize, steps: usize, lengths: Vec<usize>) -> Result<Self> {
        if queries == 0 {
            return Err(Error::invalid("queries", "at least 1", 0));
        }
        if steps == 0 {
            return Err(Error::invalid("steps", "at least 1", 0));
        }
        if lengths.is_empty() {
            return Err(Error::invalid("lengths", "one encoder length per sequence (at least one sequence)", "none"));
        }
        if let Some((b, &l)) = lengths.iter().enumerate().find(|(_, &l)| l == 0 || l > steps) {
            return Err(Error::invalid(format!("lengths[{b}]"), format!("an encoder length in 1..={steps}"), l));
        }
        Ok(AttentionShape { queries, steps, lengths })
    }

    /// `Tq`.
    pub fn queries(&self) -> usize {
        self.queries
    }

    /// `S`.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// `B`.
    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// The encoder length of each sequence.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }
}

/// What a forward pass computes ([module docs](self) for the shapes). Empty by default (to be
/// filled by [`AttentionBackend::attention_forward_with_into`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttentionOutput<T> {
    /// `[Tq, B, S]`.
    pub weights: Vec<T>,
    /// `[Tq, B, Hk]`.
    pub context: Vec<T>,
    /// `[Tq, B, O]`; empty without the attentional hidden state.
    pub hidden: Vec<T>,
}

/// The gradients of a backward pass. Empty by default (to be filled by
/// [`AttentionBackend::attention_backward_with_into`] or
/// [`AttentionBackend::attention_memory_backward_into`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttentionGrads<T> {
    /// `[Tq, B, Hq]`.
    pub d_queries: Vec<T>,
    /// `[S, B, Hk]` (0 at the padding).
    pub d_keys: Vec<T>,
    /// The parameters' gradients, in the flat layout.
    pub d_params: Vec<T>,
}

/// The incoming gradients of a backward pass, each optional (absent: zero).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionUpstream<'a, T> {
    /// `[Tq, B, S]`, w.r.t. the weights.
    pub d_weights: Option<&'a [T]>,
    /// `[Tq, B, Hk]`, w.r.t. the context.
    pub d_context: Option<&'a [T]>,
    /// `[Tq, B, O]`, w.r.t. the attentional hidden state.
    pub d_hidden: Option<&'a [T]>,
}

/// The sizes of a call, as the backends' products index them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub(crate) tq: usize,
    pub(crate) s: usize,
    pub(crate) b: usize,
    pub(crate) hq: usize,
    pub(crate) hk: usize,
    pub(crate) a: usize,
    pub(crate) o: usize,
}

impl Dims {
    pub(crate) fn of(cfg: &AttentionConfig, shape: &AttentionShape) -> Self {
        Dims {
            tq: shape.queries(),
            s: shape.steps(),
            b: shape.batch(),
            hq: cfg.query_size(),
            hk: cfg.key_size(),
            a: cfg.attn_size(),
            o: cfg.output_size(),
        }
    }
}

/// Where each parameter matrix lies in the flat buffer, for the backends' products.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Offsets {
    /// General `W_a [Hq, Hk]`.
    pub(crate) w_a: usize,
    /// Concat and additive `W_q [A, Hq]` and `W_k [A, Hk]` (offset, row stride: column blocks
    /// of `W_a [A, Hq + Hk]` for concat), and `v [A]`.
    pub(crate) w_q: (usize, usize),
    pub(crate) w_k: (usize, usize),
    pub(crate) v: usize,
    /// `W_c [O, Hk + Hq]`.
    pub(crate) w_c: usize,
}

impl Offsets {
    pub(crate) fn of(cfg: &AttentionConfig, d: &Dims) -> Result<Self> {
        let at = |n: &str| cfg.param_range(n).map(|r| r.start);
        let mut w = Offsets::default();
        match cfg.score() {
            Score::Dot => {}
            Score::General => w.w_a = at("weight_a")?,
            Score::Concat => {
                let o = at("weight_a")?;
                (w.w_q, w.w_k, w.v) = ((o, d.hq + d.hk), (o + d.hq, d.hq + d.hk), at("v_a")?);
            }
            Score::Additive => (w.w_q, w.w_k, w.v) = ((at("weight_query")?, d.hq), (at("weight_key")?, d.hk), at("v")?),
        }
        if d.o > 0 {
            w.w_c = at("weight_c")?;
        }
        Ok(w)
    }
}

/// The width of a memory's projection (`Hq` general, `A` concat and additive, 0 dot).
pub(crate) fn proj_width(cfg: &AttentionConfig) -> usize {
    match cfg.score() {
        Score::Dot => 0,
        Score::General => cfg.query_size(),
        Score::Concat | Score::Additive => cfg.attn_size(),
    }
}

/// The checks of a call over `memory`: its shape, the parameters', the queries' and the
/// memory's buffers.
pub(crate) fn check_call<T>(
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    memory: &AttentionMemory<T>,
    queries: &[T],
) -> Result<()> {
    memory.check(shape)?;
    check_len("params", params.len(), &[cfg.param_len()])?;
    check_len("queries", queries.len(), &[shape.queries(), shape.batch(), cfg.query_size()])?;
    check_memory(cfg, shape, memory)
}

/// The memory's buffers have this configuration's sizes (a memory of another configuration is
/// an error naming `memory`, before anything is read).
pub(crate) fn check_memory<T>(cfg: &AttentionConfig, shape: &AttentionShape, memory: &AttentionMemory<T>) -> Result<()> {
    check_memory_sizes(cfg, shape, memory.keys.len(), memory.proj.len())
}

/// A memory (of keys of `steps` steps and `lengths`) was made for `shape`'s keys.
pub(crate) fn check_memory_keys(steps: usize, lengths: &[usize], shape: &AttentionShape) -> Result<()> {
    if steps != shape.steps || lengths != shape.lengths {
        return Err(Error::invalid(
            "memory",
            format!("the memory of keys of {} steps and lengths {:?} (the shape's)", shape.steps, shape.lengths),
            format!("one of {steps} steps and lengths {lengths:?}"),
        ));
    }
    Ok(())
}

/// [`check_memory`] on the lengths of a memory's keys and projection.
pub(crate) fn check_memory_sizes(cfg: &AttentionConfig, shape: &AttentionShape, keys: usize, proj: usize) -> Result<()> {
    let sb = shape.steps() * shape.batch();
    if keys != sb * cfg.key_size() || proj != sb * proj_width(cfg) {
        return Err(Error::invalid(
            "memory",
            "the memory of this configuration's keys (attention_memory with the same config)",
            "another configuration's",
        ));
    }
    Ok(())
}

/// Checks that `dm` holds the gradients of `memory`.
pub(crate) fn check_grads<T>(memory: &AttentionMemory<T>, dm: &AttentionMemoryGrads<T>) -> Result<()> {
    check_grads_sizes([memory.keys.len(), memory.proj.len()], [dm.d_keys.len(), dm.d_proj.len()])
}

/// [`check_grads`] on the lengths of a memory's keys and projection and of their gradients.
pub(crate) fn check_grads_sizes(memory: [usize; 2], grads: [usize; 2]) -> Result<()> {
    if memory != grads {
        return Err(Error::invalid("d_memory", "the gradients of this memory (AttentionMemoryGrads::new(memory))", "another memory's"));
    }
    Ok(())
}

/// Checks a buffer's length against its shape.
pub(crate) fn check_len(arg: &str, got: usize, shape: &[usize]) -> Result<()> {
    let want: usize = shape.iter().product();
    if got != want {
        return Err(Error::shape(arg, format!("{shape:?} = {want} elements"), format!("{got} elements")));
    }
    Ok(())
}

/// The checks of a call's inputs (every argument against `cfg` and `shape`).
pub(crate) fn check_inputs<T>(cfg: &AttentionConfig, shape: &AttentionShape, params: &[T], keys: &[T], queries: &[T]) -> Result<()> {
    let (tq, s, b) = (shape.queries, shape.steps, shape.batch());
    check_len("params", params.len(), &[cfg.param_len()])?;
    check_len("keys", keys.len(), &[s, b, cfg.key_size])?;
    check_len("queries", queries.len(), &[tq, b, cfg.query_size])
}

/// The checks of a backward call's saved forward output and incoming gradients.
pub(crate) fn check_backward<T>(
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    out: &AttentionOutput<T>,
    up: &AttentionUpstream<'_, T>,
) -> Result<()> {
    let outs = [out.weights.len(), out.context.len(), out.hidden.len()];
    check_backward_sizes(cfg, shape, outs, [up.d_weights.map(<[T]>::len), up.d_context.map(<[T]>::len), up.d_hidden.map(<[T]>::len)])
}

/// [`check_backward`] on the lengths of the forward's weights, context and hidden state and of
/// their incoming gradients (`None`: not given).
pub(crate) fn check_backward_sizes(cfg: &AttentionConfig, shape: &AttentionShape, out: [usize; 3], up: [Option<usize>; 3]) -> Result<()> {
    let (tq, s, b) = (shape.queries, shape.steps, shape.batch());
    check_len("out.weights", out[0], &[tq, b, s])?;
    check_len("out.context", out[1], &[tq, b, cfg.key_size])?;
    check_len("out.hidden", out[2], &[tq, b, cfg.output_size])?;
    if let Some(d) = up[0] {
        check_len("d_weights", d, &[tq, b, s])?;
    }
    if let Some(d) = up[1] {
        check_len("d_context", d, &[tq, b, cfg.key_size])?;
    }
    if let Some(d) = up[2] {
        if cfg.output_size == 0 {
            return Err(Error::invalid("d_hidden", "None: this attention has no attentional hidden state (output_size 0)", "a buffer"));
        }
        check_len("d_hidden", d, &[tq, b, cfg.output_size])?;
    }
    Ok(())
}
