//! [`SeqShape`]: the steps, batch and per-sequence lengths of one call, and the tensor shapes
//! that follow from it.

use crate::config::RnnConfig;
use crate::error::{check_len, Error, Result};

/// Steps `T`, batch `B`, and optionally one length per sequence.
///
/// `T·B` is at most `isize::MAX` (no buffer holds more elements); the sizes of a call's tensors
/// (`T·B·I`, …) are checked against its buffers when it is made.
///
/// With lengths, sequence `b` has `lengths[b]` valid steps (`1..=T`, any order, no sorting
/// needed). This is PyTorch's packed-sequence semantics: outputs past a sequence's length are
/// zero, its final states are those of its last valid step, and the reverse direction starts at
/// its own last valid step.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeqShape {
    steps: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
}

impl SeqShape {
    /// All `batch` sequences have `steps` steps.
    pub fn new(steps: usize, batch: usize) -> Result<Self> {
        if steps == 0 {
            return Err(Error::invalid("steps", "must be at least 1", steps));
        }
        if batch == 0 {
            return Err(Error::invalid("batch", "must be at least 1", batch));
        }
        // `T·B` rows of at least one element each: more than `isize::MAX` cannot be a buffer,
        // and a product that wraps around could match a short one.
        if steps.checked_mul(batch).is_none_or(|rows| rows > isize::MAX as usize) {
            return Err(Error::invalid(
                "steps, batch",
                format!("steps·batch at most {} (isize::MAX, the most elements a buffer holds)", isize::MAX),
                format!("steps {steps}, batch {batch}"),
            ));
        }
        Ok(SeqShape { steps, batch, lengths: None })
    }

    /// Sequence `b` has `lengths[b]` valid steps out of `steps`; `B = lengths.len()`.
    pub fn with_lengths(steps: usize, lengths: Vec<usize>) -> Result<Self> {
        let mut s = SeqShape::new(steps, lengths.len().max(1))?;
        if lengths.is_empty() {
            return Err(Error::invalid("lengths", "one length per sequence, at least one sequence", "an empty list"));
        }
        for (b, &len) in lengths.iter().enumerate() {
            if len == 0 || len > steps {
                return Err(Error::invalid(format!("lengths[{b}]"), format!("must be in 1..={steps} (steps)"), len));
            }
        }
        s.batch = lengths.len();
        s.lengths = Some(lengths);
        Ok(s)
    }

    /// `T`.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// The per-sequence lengths, if given.
    pub fn lengths(&self) -> Option<&[usize]> {
        self.lengths.as_deref()
    }
    /// Valid steps of sequence `b` (`T` when no lengths were given).
    #[inline]
    pub fn length(&self, b: usize) -> usize {
        match &self.lengths {
            Some(l) => l[b],
            None => self.steps,
        }
    }
    /// Whether step `t` of sequence `b` is valid.
    #[inline]
    pub fn is_active(&self, t: usize, b: usize) -> bool {
        t < self.length(b)
    }
    /// Whether some sequence is shorter than `T`.
    pub fn is_varlen(&self) -> bool {
        self.lengths.as_ref().is_some_and(|l| l.iter().any(|&n| n != self.steps))
    }

    /// `[T, B, I]`, or `[B, T, I]` with [`batch_first`](crate::RnnConfigBuilder::batch_first);
    /// also the shape of `dx`.
    pub fn x_shape(&self, cfg: &RnnConfig) -> [usize; 3] {
        self.seq_major(cfg, cfg.input_size())
    }
    /// `[T, B, D·Hout]` (`[T, B, Hout]` with [`Merge::Sum`](crate::Merge::Sum)), or
    /// `[B, T, ·]` with [`batch_first`](crate::RnnConfigBuilder::batch_first); also the shape of
    /// `dy`.
    pub fn y_shape(&self, cfg: &RnnConfig) -> [usize; 3] {
        self.seq_major(cfg, cfg.output_size())
    }
    /// `x`'s shape in words, as errors name it: `[T, B, I]` or `[B, T, I]`.
    pub(crate) fn x_dims(cfg: &RnnConfig) -> &'static str {
        if cfg.batch_first() {
            "[B, T, I]"
        } else {
            "[T, B, I]"
        }
    }
    /// `y`'s shape in words.
    pub(crate) fn y_dims(cfg: &RnnConfig) -> &'static str {
        match (cfg.batch_first(), cfg.output_size() == cfg.hidden_out_size()) {
            (false, false) => "[T, B, D·Hout]",
            (false, true) => "[T, B, Hout]",
            (true, false) => "[B, T, D·Hout]",
            (true, true) => "[B, T, Hout]",
        }
    }
    /// `[T, B, w]`, or `[B, T, w]` batch-first.
    fn seq_major(&self, cfg: &RnnConfig, w: usize) -> [usize; 3] {
        if cfg.batch_first() {
            [self.batch, self.steps, w]
        } else {
            [self.steps, self.batch, w]
        }
    }
    /// `[L·D, B, Hout]`, the shape of `h0` and `hn`.
    pub fn h_shape(&self, cfg: &RnnConfig) -> [usize; 3] {
        [cfg.num_layers() * cfg.num_directions(), self.batch, cfg.hidden_out_size()]
    }
    /// `[L·D, B, H]`, the shape of `c0` and `cn` (LSTM only).
    pub fn c_shape(&self, cfg: &RnnConfig) -> [usize; 3] {
        [cfg.num_layers() * cfg.num_directions(), self.batch, cfg.hidden_size()]
    }

    /// Checks the element counts of a call's buffers; `None` means the buffer was not given.
    /// A cell state for a cell without one is an error, too.
    pub(crate) fn check_buffers(&self, cfg: &RnnConfig, bufs: &[(&str, Tensor, Option<usize>)]) -> Result<()> {
        for &(arg, kind, len) in bufs {
            let Some(len) = len else { continue };
            let (dims, shape) = match kind {
                Tensor::X => (Self::x_dims(cfg), self.x_shape(cfg)),
                Tensor::Y => (Self::y_dims(cfg), self.y_shape(cfg)),
                Tensor::H => ("[L·D, B, Hout]", self.h_shape(cfg)),
                Tensor::C => {
                    if !cfg.cell().has_cell_state() {
                        return Err(Error::invalid(
                            arg,
                            format!("not given: cell {} has no cell state", cfg.cell()),
                            format!("a buffer ({len} elements)"),
                        ));
                    }
                    ("[L·D, B, H]", self.c_shape(cfg))
                }
            };
            check_len(arg, dims, &shape, len)?;
        }
        Ok(())
    }
}

/// Which of the call tensors a buffer is, for [`SeqShape::check_buffers`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tensor {
    X,
    Y,
    H,
    C,
}
