//! What the forward and backward time loops share: one layer-direction of a call (where it sits,
//! its sizes and weights) and the cutting of its buffers into the blocks of batch rows that run
//! their steps on their own.

use super::{HostKernels, HostPlan, Mat, MatMut, Weight, WeightOp};
use crate::backend::cell::Saved;
use crate::backend::stack::LayerDims;
use crate::config::Merge;
use crate::element::Float;
use crate::params::LayerRanges;
use crate::shape::SeqShape;
use std::ops::Range;
use std::sync::Mutex;

/// One layer-direction of a call: where it sits in the stack, its sizes and its weights.
pub(super) struct Direction<'a, T> {
    /// The layer's sizes and its cell.
    pub dims: LayerDims,
    /// `l·D + d`: its index among the stack's layer-directions (in `h0`, `hn`, the reserve, and
    /// for [`WeightOp`](super::WeightOp)).
    pub ld: usize,
    /// It runs its steps from `T-1` down to 0: the second direction of a bidirectional layer,
    /// or the only one of a reverse-only stack.
    pub reverse: bool,
    /// The first of its `Hout` columns in a row of the layer output: `d·Hout` with concatenated
    /// directions, 0 with [`Merge::Sum`](crate::Merge::Sum).
    pub col: usize,
    /// Its output is added onto the columns the layer's first direction wrote (the second
    /// direction with [`Merge::Sum`](crate::Merge::Sum)), instead of written.
    pub accumulate: bool,
    /// The call's shape: `T`, `B` and the lengths.
    pub shape: &'a SeqShape,
    /// Where its tensors are in the flat parameter layout (for the gradients).
    pub ranges: &'a LayerRanges,
    /// Its weights, views into the plan's copy.
    pub w: DirWeights<'a, T>,
}

// Copy without `T: Copy`: every field is a reference or plain sizes.
impl<T> Clone for Direction<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Direction<'_, T> {}

impl<'a, T> Direction<'a, T> {
    /// Layer `l`, direction `d` of `plan` for a call of `shape`.
    pub fn new(plan: &'a HostPlan<T>, shape: &'a SeqShape, l: usize, d: usize) -> Self {
        let cfg = plan.layout.config();
        let ranges = plan.layout.layer(l, d);
        let dims = LayerDims::new(cfg, shape, l);
        let sum = cfg.merge() == Merge::Sum;
        Direction {
            dims,
            ld: l * dims.dirs + d,
            reverse: d == 1 || cfg.reverse_only(),
            col: if sum { 0 } else { d * dims.hout },
            accumulate: sum && d == 1,
            shape,
            ranges,
            w: DirWeights::new(ranges, &plan.weights),
        }
    }

    /// The reverse direction: it runs its steps from `T-1` down to 0.
    pub fn reverse(&self) -> bool {
        self.reverse
    }

    /// Its block of `len` elements in a per-layer-direction buffer (`h0`, `hn`: `[L·D, B, *]`).
    pub fn block<'b, U>(&self, buf: Option<&'b [U]>, len: usize) -> Option<&'b [U]> {
        buf.map(|b| &b[self.ld * len..(self.ld + 1) * len])
    }

    /// [`block`](Self::block), mutable.
    pub fn block_mut<'b, U>(&self, buf: &'b mut Option<&mut [U]>, len: usize) -> Option<&'b mut [U]> {
        buf.as_deref_mut().map(|b| &mut b[self.ld * len..(self.ld + 1) * len])
    }
}

impl<'a, T: Float> Direction<'a, T> {
    /// `c = a · W^T`: a forward product with the direction's weight `which` (`a: [n, In]` for
    /// `W_ih`, `[n, Hout]` for `W_hh`, `[n, H]` for `W_hr`; `c: [n, W's rows]`).
    pub fn forward_product<K: HostKernels<T>>(&self, k: &K, which: Weight, a: &[T], c: &mut [T]) {
        self.product(k, WeightOp::fwd(which, self.ld), a, T::ZERO, c);
    }

    /// `c = a · W + beta·c`: a backward product with the direction's weight `which`
    /// (`a: [n, W's rows]`, `c: [n, W's columns]`).
    pub fn backward_product<K: HostKernels<T>>(&self, k: &K, which: Weight, a: &[T], beta: T, c: &mut [T]) {
        self.product(k, WeightOp::bwd(which, self.ld), a, beta, c);
    }

    /// `c = a · W_ih^T` for rows of `a` given as a strided view (`[n, In]`; the rows of one
    /// step of a batch-first `x`, `T·I` apart), `c: [n, G·H]` dense.
    pub fn project_view<K: HostKernels<T>>(&self, k: &K, a: Mat<'_, T>, c: &mut [T]) {
        let op = WeightOp::fwd(Weight::Ih, self.ld);
        let b = self.weight_view(op);
        k.weight_gemm(op, a, b, T::ZERO, MatMut::new(c, a.rows, b.cols));
    }

    fn product<K: HostKernels<T>>(&self, k: &K, op: WeightOp, a: &[T], beta: T, c: &mut [T]) {
        let b = self.weight_view(op);
        let n = a.len() / b.rows;
        k.weight_gemm(op, Mat::new(a, n, b.rows), b, beta, MatMut::new(c, n, b.cols));
    }

    /// The right-hand operand of `op`: `W^T` or `W`.
    fn weight_view(&self, op: WeightOp) -> Mat<'a, T> {
        let (dm, w) = (&self.dims, &self.w);
        let rz = 2 * dm.h * dm.hout;
        let weight = match op.weight {
            Weight::Ih => Mat::new(w.w_ih, dm.gh, dm.input),
            Weight::Hh => Mat::new(w.w_hh, dm.gh, dm.hout),
            // Only a projected LSTM's loops ask for W_hr.
            Weight::Hr => Mat::new(w.w_hr.unwrap_or_default(), dm.hout, dm.h),
            // Only a GRU's loops ask for these (`G·H = 3·H` rows).
            Weight::HhGates => Mat::new(&w.w_hh[..rz], 2 * dm.h, dm.hout),
            Weight::HhNew => Mat::new(&w.w_hh[rz..], dm.h, dm.hout),
        };
        if op.transposed {
            weight.t()
        } else {
            weight
        }
    }

    /// `c = a · W^T + beta·c` (`op.transposed`) or `a · W + beta·c` on views: for operands that
    /// are column blocks of wider buffers (the two recurrent products of a GRU with the reset
    /// gate before the matmul).
    pub fn product_views<K: HostKernels<T>>(&self, k: &K, op: WeightOp, a: Mat<'_, T>, beta: T, c: MatMut<'_, T>) {
        k.weight_gemm(op, a, self.weight_view(op), beta, c);
    }
}

/// The weights of one layer-direction, in PyTorch layout.
pub(super) struct DirWeights<'w, T> {
    /// `[G·H, In]`.
    pub w_ih: &'w [T],
    /// `[G·H, Hout]`.
    pub w_hh: &'w [T],
    /// `[G·H]`, when the stack has biases.
    pub b_ih: Option<&'w [T]>,
    /// `[G·H]`, when the stack has biases.
    pub b_hh: Option<&'w [T]>,
    /// `[Hout, H]`, an LSTM with projection.
    pub w_hr: Option<&'w [T]>,
    /// `[3, H]`, an LSTM with peepholes.
    pub peephole: Option<&'w [T]>,
    /// Layer norm: `[G·H]` the gains of the input and of the recurrent products, and
    /// (LSTM) `[H]` the gain and bias of the cell state's; empty without layer norm.
    pub ln_ih: &'w [T],
    pub ln_hh: &'w [T],
    pub ln_c_weight: &'w [T],
    pub ln_c_bias: &'w [T],
}

impl<T> Clone for DirWeights<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DirWeights<'_, T> {}

impl<'w, T> DirWeights<'w, T> {
    fn new(lr: &LayerRanges, w: &'w [T]) -> Self {
        DirWeights {
            w_ih: &w[lr.w_ih.clone()],
            w_hh: &w[lr.w_hh.clone()],
            b_ih: lr.b_ih.clone().map(|r| &w[r]),
            b_hh: lr.b_hh.clone().map(|r| &w[r]),
            w_hr: lr.w_hr.clone().map(|r| &w[r]),
            peephole: lr.peephole.clone().map(|r| &w[r]),
            ln_ih: lr.ln_ih.clone().map_or(&[], |r| &w[r]),
            ln_hh: lr.ln_hh.clone().map_or(&[], |r| &w[r]),
            ln_c_weight: lr.ln_c_weight.clone().map_or(&[], |r| &w[r]),
            ln_c_bias: lr.ln_c_bias.clone().map_or(&[], |r| &w[r]),
        }
    }
}

/// Rows `rows` of `src: [B, w]`, or `n·w` zeros where it is `None` (the initial state and the
/// final state's gradient of a block of rows).
pub(super) fn rows_or_zeros<T: Float>(src: Option<&[T]>, rows: Range<usize>, w: usize) -> Vec<T> {
    src.map_or_else(|| vec![T::ZERO; rows.len() * w], |s| s[rows.start * w..rows.end * w].to_vec())
}

/// Splits `s` (rows of equal length, possibly none) at row boundaries into `bounds.len() - 1`
/// consecutive blocks of rows `bounds[i]..bounds[i+1]`.
pub(super) fn split_rows<'a, T>(s: &'a [T], rows: usize, bounds: &[usize]) -> Vec<&'a [T]> {
    let w = s.len().checked_div(rows).unwrap_or(0);
    bounds.windows(2).map(|r| &s[r[0] * w..r[1] * w]).collect()
}

/// [`split_rows`], mutable.
pub(super) fn split_rows_mut<'a, T>(mut s: &'a mut [T], rows: usize, bounds: &[usize]) -> Vec<&'a mut [T]> {
    let w = s.len().checked_div(rows).unwrap_or(0);
    let mut out = Vec::with_capacity(bounds.len());
    for r in bounds.windows(2) {
        let (head, tail) = std::mem::take(&mut s).split_at_mut((r[1] - r[0]) * w);
        out.push(head);
        s = tail;
    }
    out
}

/// Cuts `buf` (`[steps, B, w]`, or empty) into its blocks of rows `bounds`: `[block][step]`.
pub(super) fn cut_rows<'a, T>(buf: &'a mut [T], steps: usize, bounds: &[usize]) -> Vec<Vec<&'a mut [T]>> {
    let parts = bounds.len() - 1;
    let mut out: Vec<Vec<&'a mut [T]>> = (0..parts).map(|_| Vec::with_capacity(steps)).collect();
    if buf.is_empty() || steps == 0 {
        out.iter_mut().for_each(|o| o.resize_with(steps, Default::default));
        return out;
    }
    let step_len = buf.len() / steps;
    for slab in buf.chunks_exact_mut(step_len) {
        for (o, blk) in out.iter_mut().zip(split_rows_mut(slab, bounds[parts], bounds)) {
            o.push(blk);
        }
    }
    out
}

/// Cuts the steps `steps` of `s` (each buffer `[T, B, w]`, `w` from `widths`) into blocks of
/// rows `bounds`: `[block][step]`.
pub(super) fn cut_saved<'a, T>(
    s: &'a mut Saved<Vec<T>>,
    widths: Saved<usize>,
    steps: Range<usize>,
    bounds: &[usize],
) -> Vec<Vec<Saved<&'a mut [T]>>> {
    let (n, bl) = (steps.len(), bounds[bounds.len() - 1]);
    let mut cuts = widths.zip(s).map(|(v, w)| cut_rows(&mut v[steps.start * bl * w..steps.end * bl * w], n, bounds).into_iter());
    (1..bounds.len())
        .map(|_| {
            let mut fields = cuts.each_mut().map(|blocks| blocks.next().unwrap_or_default().into_iter());
            (0..n).map(|_| Saved::from_array(fields.each_mut().map(|f| f.next().unwrap_or_default()))).collect()
        })
        .collect()
}

/// Work for the blocks of one `for_blocks` call, each taken once by the block's thread.
pub(super) struct BlockWork<W>(Vec<Mutex<Option<W>>>);

impl<W> BlockWork<W> {
    pub fn new(work: impl IntoIterator<Item = W>) -> Self {
        BlockWork(work.into_iter().map(|w| Mutex::new(Some(w))).collect())
    }

    /// The number of blocks.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Takes the work of block `i`.
    pub fn take(&self, i: usize) -> Option<W> {
        self.0[i].lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Puts `w` as the work (or the result) of block `i`.
    pub fn put(&self, i: usize, w: W) {
        *self.0[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    }
}
