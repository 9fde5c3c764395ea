//! Attention on the host backends (reference and CPU) in products over all the queries at once
//! (`crate::attention::reference` is the specification, in plain loops; this is the same maths
//! arranged for the kernels' GEMMs). For each sequence `b` the queries `Q_b` are the rows
//! `t·B + b` of `queries` and its keys `K_b` the rows `s·B + b`, `s < len_b`, of `keys`: strided
//! views, no copies.
//!
//! Forward: the scores `E_b = Q_b K_bᵀ` (dot), `Q_b (K_b W_aᵀ)ᵀ` (general: `K W_aᵀ` is one
//! product over all keys), or `Σ_a v_a tanh(P_q + P_k)` with `P_q = Q W_qᵀ` and `P_k = K W_kᵀ`
//! each one product (concat, additive); the softmax of each row over its sequence's keys; the
//! context `C_b = α_b K_b`; the hidden state `tanh(C W_c[:, :Hk]ᵀ + Q W_c[:, Hk:]ᵀ)`, two
//! products over all queries. Backward runs the same products transposed.
//!
//! The keys' side (the keys and their projection) is the [`AttentionMemory`], made once for all
//! the calls over the same keys; a call's backward adds the keys' side's gradients into
//! [`AttentionMemoryGrads`], turned into the keys' and weights' gradients once
//! ([`memory_backward`]). The memory's keys are a copy whose padding (steps past each length) is
//! zero, so that a product over all keys reads no padding value (a NaN there would reach the
//! weight gradients through `0·NaN`); every per-sequence product stops at the sequence's length.
//!
//! Speed: the per-sequence products run in parallel, each thread on its own block of steps of
//! every sequence ([`for_blocks_of`]), the concat and additive scores' backward on its own
//! sequences, into buffers added in sequence order afterwards: no sum depends on the thread
//! count. A call's large intermediates (the memory inside a whole [`forward`] or [`backward`],
//! the upstream copies, `dZ`, `dE`) are [`Spare`] buffers kept on the thread between calls,
//! since fresh buffers of several MB are mapped and faulted in page by page at every call. A
//! call's results go into the buffers [`Fresh`] holds (the caller's previous results, with the
//! backend's `_into` calls), and are zeroed or copied on every thread ([`fill`]).

use super::{HostKernels, Mat, MatMut};
use crate::attention::{
    check_backward, check_inputs, check_len, AttentionConfig, AttentionGrads, AttentionMemory, AttentionMemoryGrads, AttentionOutput,
    AttentionShape, AttentionUpstream, Dims, Offsets, Score,
};
use crate::attention::{check_call, check_grads, check_memory};
use crate::element::Float;
use crate::error::Result;
use std::any::Any;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Mutex;

/// The buffers kept on a thread between calls for the intermediates: a call takes one
/// ([`Spare::zeroed`], [`Spare::copy`]) and gives it back when done ([`Spare::give`]), so that
/// the next call writes into memory already mapped instead of faulting in fresh pages (and,
/// with several threads, paying for the other threads' TLB flushes when they are unmapped).
/// At most [`SPARE_MAX`] buffers are kept, the largest ones; a buffer's contents never carry
/// over (each is zeroed or overwritten when taken).
struct Spare;

/// How many buffers [`Spare`] keeps per thread (a whole backward call has at most eight
/// intermediates at once).
const SPARE_MAX: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

impl Spare {
    /// An empty buffer of capacity at least `n`: the smallest kept one that fits, else a new one.
    fn take<T: Float>(n: usize) -> Vec<T> {
        let kept = SPARE.with_borrow_mut(|spare| {
            let fits = |b: &Box<dyn Any>| b.downcast_ref::<Vec<T>>().map(Vec::capacity).filter(|&c| c >= n);
            let best = (0..spare.len()).filter_map(|i| fits(&spare[i]).map(|c| (c, i))).min()?;
            spare.swap_remove(best.1).downcast::<Vec<T>>().ok()
        });
        match kept {
            Some(mut v) => {
                v.clear();
                *v
            }
            None => Vec::with_capacity(n),
        }
    }

    /// `n` zeros, written on `k`'s threads ([`fill`]).
    fn zeroed<T: Float, K: HostKernels<T>>(k: &K, n: usize) -> Vec<T> {
        fill(k, Spare::take(n), n, None)
    }

    /// A copy of `x`, written on `k`'s threads ([`fill`]).
    fn copy<T: Float, K: HostKernels<T>>(k: &K, x: &[T]) -> Vec<T> {
        fill(k, Spare::take(x.len()), x.len(), Some(x))
    }

    /// Keeps `v` for a later call (dropping the smallest buffer past [`SPARE_MAX`]).
    fn give<T: Float>(v: Vec<T>) {
        if v.capacity() == 0 {
            return;
        }
        SPARE.with_borrow_mut(|spare| {
            spare.push(Box::new(v));
            if spare.len() > SPARE_MAX {
                let size = |b: &Box<dyn Any>| b.downcast_ref::<Vec<T>>().map_or(0, |v| v.capacity());
                if let Some(i) = (0..spare.len()).min_by_key(|&i| size(&spare[i])) {
                    spare.swap_remove(i);
                }
            }
        });
    }
}

/// Where a call takes the buffers of what it returns: buffers made beforehand on the thread
/// that called the backend ([`Fresh::kept`]), a plain allocation where the call runs
/// ([`Fresh::none`]: the reference's calls, which run on the caller's thread), or the
/// [`Spare`] buffers (a whole call's memory, given back at its end).
///
/// glibc's malloc serves each thread from an arena of its own. The CPU backend computes on its
/// pool's threads, so an output allocated there and freed by the caller (who owns what a call
/// returns) goes back to the pool thread's arena, which gives the memory back to the system and
/// faults it in again at the next call, flushing both CPUs' page tables: a quarter of the time
/// of an attention training step through the memory API (`examples/attention_bench`, AMD EPYC
/// Zen 4, 2 threads: 118–143 ms a step, 108–110 ms with the outputs made on the caller's
/// thread).
/// Made on the caller's thread, they come from and go back to its arena, as its own arrays do.
pub(crate) enum Fresh<T> {
    /// Empty buffers of at least the capacities of the call's outputs.
    Kept(Vec<Vec<T>>),
    Spare,
}

impl<T: Float> Fresh<T> {
    /// Empty buffers with the capacities `sizes`, made on this thread; a size that overflowed
    /// (`None`) or cannot be reserved is left out (the call allocates it where it runs, and
    /// reports a size too large itself).
    pub(crate) fn kept(sizes: &[Option<usize>]) -> Self {
        let make = |n: usize| {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok().map(|()| v)
        };
        Fresh::Kept(sizes.iter().filter_map(|&n| n.and_then(make)).collect())
    }

    /// Allocations where the call runs.
    pub(crate) fn none() -> Self {
        Fresh::Kept(Vec::new())
    }

    /// The buffers `old` (a previous call's results, in the order of `sizes`), each made to
    /// hold its size on this thread: kept where it does, else grown here (its contents kept
    /// until a call takes it). After a call that failed, [`into_kept`](Self::into_kept) gives
    /// them back unchanged (every call checks its inputs before it takes a buffer).
    pub(crate) fn reusing(old: Vec<Vec<T>>, sizes: &[Option<usize>]) -> Self {
        let grow = |(mut v, n): (Vec<T>, &Option<usize>)| {
            if let Some(n) = *n {
                // A size that cannot be reserved is left to the call, which reports it.
                let _ = v.try_reserve_exact(n.saturating_sub(v.len()));
            }
            v
        };
        Fresh::Kept(old.into_iter().zip(sizes).map(grow).collect())
    }

    /// The buffers no call took, in their order (a taken one is empty).
    pub(crate) fn into_kept(self) -> Vec<Vec<T>> {
        match self {
            Fresh::Kept(bufs) => bufs,
            Fresh::Spare => Vec::new(),
        }
    }

    /// An empty buffer of capacity at least `n`: the smallest kept one that holds it, else a
    /// new one.
    fn take(&mut self, n: usize) -> Vec<T> {
        match self {
            Fresh::Spare => Spare::take(n),
            Fresh::Kept(bufs) => {
                let best = (0..bufs.len()).filter(|&i| bufs[i].capacity() >= n).min_by_key(|&i| bufs[i].capacity());
                // Taken in place, so that the others keep their order (`into_kept`).
                best.map_or_else(|| Vec::with_capacity(n), |i| std::mem::take(&mut bufs[i]))
            }
        }
    }

    /// `n` zeros, written on `k`'s threads ([`fill`]).
    fn zeroed<K: HostKernels<T>>(&mut self, k: &K, n: usize) -> Vec<T> {
        let v = self.take(n);
        fill(k, v, n, None)
    }

    /// A copy of `x`, written on `k`'s threads ([`fill`]).
    fn copy<K: HostKernels<T>>(&mut self, k: &K, x: &[T]) -> Vec<T> {
        let v = self.take(x.len());
        fill(k, v, x.len(), Some(x))
    }
}

/// From how many elements [`fill`] writes on several threads.
const FILL_PARALLEL_MIN: usize = 1 << 16;

/// `v` (emptied) holding `n` values: `src` (`n` long) or zeros, written in blocks on `k`'s
/// threads. A call's outputs are fresh memory, mapped and faulted in by the first write: on one
/// thread that write is a serial stretch of the call that the other threads wait through (with
/// several MB per output, 5–10 % of an attention training step).
fn fill<T: Float, K: HostKernels<T>>(k: &K, mut v: Vec<T>, n: usize, src: Option<&[T]>) -> Vec<T> {
    v.clear();
    v.reserve_exact(n);
    let parts = if n >= FILL_PARALLEL_MIN { k.threads().max(1) } else { 1 };
    let bounds = super::row_bounds(n, parts);
    {
        let blocks = blocks_at(&mut v.spare_capacity_mut()[..n], &bounds, 1);
        let write = |i: usize| {
            if let Some(block) = blocks[i].lock().ok().and_then(|mut b| b.take()) {
                write_block(block, src.map(|s| &s[bounds[i]..bounds[i + 1]]));
            }
        };
        if parts > 1 {
            k.for_blocks(parts, &write);
        }
        // Every block is written once, here if `for_blocks` did not (one part; it runs each
        // part otherwise): `set_len` below relies on it.
        for i in 0..parts {
            write(i);
        }
    }
    // SAFETY: the first `n` elements were written above (every block, by one thread each).
    unsafe { v.set_len(n) };
    v
}

/// Writes `src` (as long as `out`) or zeros into `out`.
fn write_block<T: Float>(out: &mut [MaybeUninit<T>], src: Option<&[T]>) {
    match src {
        Some(s) => {
            for (o, &x) in out.iter_mut().zip(s) {
                o.write(x);
            }
        }
        None => {
            for o in out.iter_mut() {
                o.write(T::ZERO);
            }
        }
    }
}

/// `a·b·c` elements, `None` past `usize`.
fn elements(a: usize, b: usize, c: usize) -> Option<usize> {
    a.checked_mul(b)?.checked_mul(c)
}

/// The sizes of what [`memory`] returns (the keys, their projection).
pub(crate) fn memory_sizes(cfg: &AttentionConfig, shape: &AttentionShape) -> [Option<usize>; 2] {
    let d = Dims::of(cfg, shape);
    [elements(d.s, d.b, d.hk), elements(d.s, d.b, crate::attention::proj_width(cfg))]
}

/// The sizes of what [`forward_with`] and [`forward`] return (weights, context, hidden state).
pub(crate) fn forward_sizes(cfg: &AttentionConfig, shape: &AttentionShape) -> [Option<usize>; 3] {
    let d = Dims::of(cfg, shape);
    [elements(d.tq, d.b, d.s), elements(d.tq, d.b, d.hk), elements(d.tq, d.b, d.o)]
}

/// The sizes of what [`backward_with`] returns (`d_queries`, `d_params`); with `keys`, also the
/// keys' gradient ([`memory_backward`]: `d_keys`, `d_params`; [`backward`]: all three).
pub(crate) fn backward_sizes(cfg: &AttentionConfig, shape: &AttentionShape, queries: bool, keys: bool) -> Vec<Option<usize>> {
    let d = Dims::of(cfg, shape);
    let mut v = vec![Some(cfg.param_len())];
    if queries {
        v.push(elements(d.tq, d.b, d.hq));
    }
    if keys {
        v.push(elements(d.s, d.b, d.hk));
    }
    v
}

/// The parameters and where each matrix lies in them.
struct Params<'a, T> {
    p: &'a [T],
    off: Offsets,
}

impl<T> std::ops::Deref for Params<'_, T> {
    type Target = Offsets;

    fn deref(&self) -> &Offsets {
        &self.off
    }
}

impl<'a, T> Params<'a, T> {
    fn of(cfg: &AttentionConfig, d: &Dims, p: &'a [T]) -> Result<Self> {
        Ok(Params { p, off: Offsets::of(cfg, d)? })
    }

    /// `rows × cols` at `off` with row stride `rs`.
    fn mat(&self, off: usize, rows: usize, cols: usize, rs: usize) -> Mat<'a, T> {
        Mat::strided(&self.p[off..], rows, cols, rs)
    }
}

/// Zeros the padding rows (steps past each sequence's length) of a `[S, B, Hk]` tensor.
fn zero_padding<T: Float>(x: &mut [T], d: &Dims, lengths: &[usize]) {
    for s in 0..d.s {
        for (b, &len) in lengths.iter().enumerate() {
            if s >= len {
                x[(s * d.b + b) * d.hk..(s * d.b + b + 1) * d.hk].fill(T::ZERO);
            }
        }
    }
}

/// The keys' side: the keys with the padding zeroed, and their projection.
pub(crate) fn memory<T: Float, K: HostKernels<T>>(
    k: &K,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    keys: &[T],
    fresh: &mut Fresh<T>,
) -> Result<AttentionMemory<T>> {
    let d = Dims::of(cfg, shape);
    check_len("params", params.len(), &[cfg.param_len()])?;
    check_len("keys", keys.len(), &[d.s, d.b, d.hk])?;
    let w = Params::of(cfg, &d, params)?;
    let mut masked = fresh.copy(k, keys);
    zero_padding(&mut masked, &d, shape.lengths());
    let sb = d.s * d.b;
    let proj = match cfg.score() {
        Score::Dot => Vec::new(),
        Score::General => {
            let mut kp = fresh.zeroed(k, sb * d.hq);
            k.gemm(T::ONE, Mat::new(&masked, sb, d.hk), w.mat(w.w_a, d.hq, d.hk, d.hk).t(), T::ZERO, MatMut::new(&mut kp, sb, d.hq));
            kp
        }
        Score::Concat | Score::Additive => {
            let mut kp = fresh.zeroed(k, sb * d.a);
            k.gemm(T::ONE, Mat::new(&masked, sb, d.hk), w.mat(w.w_k.0, d.a, d.hk, w.w_k.1).t(), T::ZERO, MatMut::new(&mut kp, sb, d.a));
            kp
        }
    };
    Ok(AttentionMemory { keys: masked, proj, steps: d.s, lengths: shape.lengths().to_vec() })
}

fn seq<'a, T>(x: &'a [T], d: &Dims, b: usize, rows: usize, w: usize) -> Mat<'a, T> {
    Mat::strided(&x[b * w..], rows, w, d.b * w)
}

/// Sequence `b`'s rows `steps` of a `[N, B, w]` tensor (as [`seq`] from step `steps.start`).
fn seq_rows<'a, T>(x: &'a [T], d: &Dims, b: usize, steps: &Range<usize>, w: usize) -> Mat<'a, T> {
    Mat::strided(&x[(steps.start * d.b + b) * w..], steps.len(), w, d.b * w)
}

/// Sequence `b`'s columns `keys` of a `[Tq, B, S]` tensor (the weights or their gradient),
/// transposed: `[keys, Tq]`.
fn by_keys<'a, T>(x: &'a [T], d: &Dims, b: usize, keys: &Range<usize>) -> Mat<'a, T> {
    Mat::strided(&x[b * d.s + keys.start..], d.tq, keys.len(), d.b * d.s).t()
}

/// Runs `f(kernels, items, block)` over blocks of consecutive items of `x` (`n` items of equal
/// size: the steps of a `[n, B, w]` tensor, or one buffer per sequence), the blocks in
/// parallel, one per thread: `block` is `x`'s part of the items `items`, which only that block
/// writes, and `kernels` run on the calling thread. Every per-sequence product of a call writes
/// the rows of one step index (a query's or a key's), so it is cut by steps: each block runs
/// every sequence's product over its own steps. The GEMMs' arithmetic
/// per element does not depend on the rows around it, so the cut changes no bit.
fn for_blocks_of<T: Float, K: HostKernels<T>>(k: &K, x: &mut [T], n: usize, f: impl Fn(&K, Range<usize>, &mut [T]) + Sync) {
    let parts = k.threads().min(n).max(1);
    if parts == 1 {
        return f(k, 0..n, x);
    }
    let bounds = super::row_bounds(n, parts);
    let blocks = blocks_at(x, &bounds, x.len() / n);
    let serial = k.serial();
    k.for_blocks(parts, &|i| {
        if let Some(block) = blocks[i].lock().ok().and_then(|mut b| b.take()) {
            f(&serial, bounds[i]..bounds[i + 1], block);
        }
    });
}

/// `x` cut into the blocks of items `bounds[i]..bounds[i + 1]` (`item` elements each), each
/// behind a lock for the one thread that takes it.
fn blocks_at<'a, E>(x: &'a mut [E], bounds: &[usize], item: usize) -> Vec<Mutex<Option<&'a mut [E]>>> {
    let mut rest = x;
    bounds
        .windows(2)
        .map(|w| {
            let (block, tail) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * item);
            rest = tail;
            Mutex::new(Some(block))
        })
        .collect()
}

/// Runs `f(kernels, steps, seqs, block)` over blocks of a `[Tq, B, w]` tensor `x` (a per-query
/// output), in parallel ([`for_blocks_of`]): cut by query steps, each block every sequence's rows
/// of its steps; or, for one query step (a decoder's step, where a cut by steps leaves one block
/// and the products of `1 × S` rows would each be split across the threads), by sequences,
/// each block its sequences' rows. `block` holds the rows `(t, b)`, `t` in `steps`, `b` in
/// `seqs`, step-major: see [`block_mut`] and [`block_seq`].
fn for_query_blocks<T: Float, K: HostKernels<T>>(
    k: &K,
    x: &mut [T],
    d: &Dims,
    f: impl Fn(&K, Range<usize>, Range<usize>, &mut [T]) + Sync,
) {
    if d.tq == 1 && k.threads() > 1 {
        for_blocks_of(k, x, d.b, |k, bs, block| f(k, 0..1, bs, block));
    } else {
        for_blocks_of(k, x, d.tq, |k, ts, block| f(k, ts, 0..d.b, block));
    }
}

/// Sequence `b`'s `rows` rows of a [`for_query_blocks`] block of sequences `seqs`.
fn block_mut<'a, T>(block: &'a mut [T], seqs: &Range<usize>, b: usize, rows: usize, w: usize) -> MatMut<'a, T> {
    MatMut::strided(&mut block[(b - seqs.start) * w..], rows, w, seqs.len() * w)
}

/// The sequence of row `r` of a [`for_query_blocks`] block of sequences `seqs`.
fn block_seq(seqs: &Range<usize>, r: usize) -> usize {
    seqs.start + r % seqs.len()
}

fn seq_mut<'a, T>(x: &'a mut [T], d: &Dims, b: usize, rows: usize, w: usize) -> MatMut<'a, T> {
    MatMut::strided(&mut x[b * w..], rows, w, d.b * w)
}

/// The query side of the concat and additive scores, `P_q = Q W_qᵀ` `[Tq·B, A]` (empty for the
/// others), a [`Spare`] buffer.
fn query_proj<T: Float, K: HostKernels<T>>(k: &K, cfg: &AttentionConfig, d: &Dims, w: &Params<'_, T>, queries: &[T]) -> Vec<T> {
    if !matches!(cfg.score(), Score::Concat | Score::Additive) {
        return Vec::new();
    }
    let tb = d.tq * d.b;
    let mut qp = Spare::zeroed(k, tb * d.a);
    k.gemm(T::ONE, Mat::new(queries, tb, d.hq), w.mat(w.w_q.0, d.a, d.hq, w.w_q.1).t(), T::ZERO, MatMut::new(&mut qp, tb, d.a));
    qp
}

/// A forward call over `memory` ([`crate::attention::reference::forward`]'s results).
pub(crate) fn forward_with<T: Float, K: HostKernels<T>>(
    k: &K,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    memory: &AttentionMemory<T>,
    queries: &[T],
    fresh: &mut Fresh<T>,
) -> Result<AttentionOutput<T>> {
    check_call(cfg, shape, params, memory, queries)?;
    let d = Dims::of(cfg, shape);
    let w = Params::of(cfg, &d, params)?;
    let (keys, kp) = (&memory.keys, &memory.proj);
    let tb = d.tq * d.b;
    let mut out =
        AttentionOutput { weights: fresh.zeroed(k, tb * d.s), context: fresh.zeroed(k, tb * d.hk), hidden: fresh.zeroed(k, tb * d.o) };
    let qp = query_proj(k, cfg, &d, &w, queries);
    let lengths = shape.lengths();
    // The scores and the softmax of each row over its sequence's keys, per block of queries.
    for_query_blocks(k, &mut out.weights, &d, |k, ts, bs, e| {
        for b in bs.clone() {
            let len = lengths[b];
            let eb = MatMut { cols: len, ..block_mut(e, &bs, b, ts.len(), d.s) };
            match cfg.score() {
                Score::Dot => k.gemm(T::ONE, seq_rows(queries, &d, b, &ts, d.hq), seq(keys, &d, b, len, d.hk).t(), T::ZERO, eb),
                Score::General => k.gemm(T::ONE, seq_rows(queries, &d, b, &ts, d.hq), seq(kp, &d, b, len, d.hq).t(), T::ZERO, eb),
                Score::Concat | Score::Additive => tanh_scores(k, &d, &w, (&qp, kp), (b, len), ts.clone(), eb),
            }
        }
        for (r, row) in e.chunks_exact_mut(d.s).enumerate() {
            softmax(&mut row[..lengths[block_seq(&bs, r)]]);
        }
    });
    let weights = &out.weights;
    for_query_blocks(k, &mut out.context, &d, |k, ts, bs, c| {
        for b in bs.clone() {
            let len = lengths[b];
            let alpha = Mat { cols: len, ..seq_rows(weights, &d, b, &ts, d.s) };
            k.gemm(T::ONE, alpha, seq(keys, &d, b, len, d.hk), T::ZERO, block_mut(c, &bs, b, ts.len(), d.hk));
        }
    });
    if d.o > 0 {
        // Z = C W_c[:, :Hk]ᵀ + Q W_c[:, Hk:]ᵀ, then tanh.
        let rs = d.hk + d.hq;
        k.gemm(T::ONE, Mat::new(&out.context, tb, d.hk), w.mat(w.w_c, d.o, d.hk, rs).t(), T::ZERO, MatMut::new(&mut out.hidden, tb, d.o));
        k.gemm(T::ONE, Mat::new(queries, tb, d.hq), w.mat(w.w_c + d.hk, d.o, d.hq, rs).t(), T::ONE, MatMut::new(&mut out.hidden, tb, d.o));
        for_query_blocks(k, &mut out.hidden, &d, |k, _, _, h| k.tanh_in_place(h));
    }
    Spare::give(qp);
    Ok(out)
}

/// `u[s, a] = tanh(P_q[t, b, a] + P_k[s, b, a])` for the keys `s < len` of sequence `b` and
/// query `t`, into `u` (`[len, A]`), with the kernels' `tanh` (the ISA's vector one on the CPU).
fn tanh_layer<T: Float, K: HostKernels<T>>(k: &K, d: &Dims, (qp, kp): (&[T], &[T]), (t, b, len): (usize, usize, usize), u: &mut Vec<T>) {
    u.clear();
    let q = &qp[(t * d.b + b) * d.a..(t * d.b + b + 1) * d.a];
    for s in 0..len {
        let kr = &kp[(s * d.b + b) * d.a..(s * d.b + b + 1) * d.a];
        u.extend(q.iter().zip(kr).map(|(&qa, &ka)| qa + ka));
    }
    k.tanh_in_place(u);
}

/// Concat and additive: `e[t, s] = Σ_a v_a tanh(P_q[t, b, a] + P_k[s, b, a])` for sequence `b`
/// of length `len` and the queries `ts` (`e`'s rows).
fn tanh_scores<T: Float, K: HostKernels<T>>(
    k: &K,
    d: &Dims,
    w: &Params<'_, T>,
    p: (&[T], &[T]),
    (b, len): (usize, usize),
    ts: Range<usize>,
    mut e: MatMut<'_, T>,
) {
    let v = &w.p[w.v..w.v + d.a];
    let mut u = Vec::with_capacity(len * d.a);
    for (i, t) in ts.enumerate() {
        tanh_layer(k, d, p, (t, b, len), &mut u);
        for (s, us) in u.chunks_exact(d.a).enumerate() {
            let mut sum = T::ZERO;
            for (&va, &ua) in v.iter().zip(us) {
                sum += va * ua;
            }
            *e.at_mut(i, s) = sum;
        }
    }
}

/// `x = softmax(x)`, from the largest value so that no exponential overflows.
fn softmax<T: Float>(x: &mut [T]) {
    let max = x.iter().fold(x[0], |m, &e| if e > m { e } else { m });
    let mut sum = T::ZERO;
    for e in x.iter_mut() {
        *e = (*e - max).exp();
        sum += *e;
    }
    for e in x.iter_mut() {
        *e = *e / sum;
    }
}

/// The backward of a call of [`forward_with`]: the queries' gradients and the parameters' part
/// outside the keys' side; the keys' side's gradients added into `dm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_with<T: Float, K: HostKernels<T>>(
    k: &K,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    memory: &AttentionMemory<T>,
    queries: &[T],
    out: &AttentionOutput<T>,
    up: AttentionUpstream<'_, T>,
    dm: &mut AttentionMemoryGrads<T>,
    fresh: &mut Fresh<T>,
) -> Result<AttentionGrads<T>> {
    check_call(cfg, shape, params, memory, queries)?;
    check_backward(cfg, shape, out, &up)?;
    check_grads(memory, dm)?;
    let d = Dims::of(cfg, shape);
    let w = Params::of(cfg, &d, params)?;
    let (keys, kp) = (&memory.keys, &memory.proj);
    let tb = d.tq * d.b;
    let mut g = AttentionGrads { d_queries: fresh.zeroed(k, tb * d.hq), d_keys: Vec::new(), d_params: fresh.zeroed(k, params.len()) };
    let mut dc = match up.d_context {
        Some(v) => Spare::copy(k, v),
        None => Spare::zeroed(k, tb * d.hk),
    };
    if let (Some(dh), true) = (up.d_hidden, d.o > 0) {
        // dZ = dH ⊙ (1 - H²); dW_c += dZᵀ [C, Q]; [dC, dQ] += dZ W_c.
        let mut dz = Spare::take(tb * d.o);
        dz.extend(dh.iter().zip(&out.hidden).map(|(&g, &h)| g * (T::ONE - h * h)));
        let rs = d.hk + d.hq;
        let (dzm, wc) = (Mat::new(&dz, tb, d.o), w.w_c);
        {
            let (_, dw) = g.d_params.split_at_mut(wc);
            k.gemm(T::ONE, dzm.t(), Mat::new(&out.context, tb, d.hk), T::ONE, MatMut::strided(dw, d.o, d.hk, rs));
            k.gemm(T::ONE, dzm.t(), Mat::new(queries, tb, d.hq), T::ONE, MatMut::strided(&mut dw[d.hk..], d.o, d.hq, rs));
        }
        k.gemm(T::ONE, dzm, w.mat(wc, d.o, d.hk, rs), T::ONE, MatMut::new(&mut dc, tb, d.hk));
        k.gemm(T::ONE, dzm, w.mat(wc + d.hk, d.o, d.hq, rs), T::ONE, MatMut::new(&mut g.d_queries, tb, d.hq));
        Spare::give(dz);
    }
    // dα = d_weights + dC K_bᵀ, then the softmax's backward in place (dE), per block of queries.
    let mut de = match up.d_weights {
        Some(v) => Spare::copy(k, v),
        None => Spare::zeroed(k, tb * d.s),
    };
    let (weights, lengths) = (&out.weights, shape.lengths());
    for_query_blocks(k, &mut de, &d, |k, ts, bs, de| {
        for b in bs.clone() {
            let len = lengths[b];
            let dalpha = MatMut { cols: len, ..block_mut(de, &bs, b, ts.len(), d.s) };
            k.gemm(T::ONE, seq_rows(&dc, &d, b, &ts, d.hk), seq(keys, &d, b, len, d.hk).t(), T::ONE, dalpha);
        }
        // The block's rows of the weights: from row (ts.start, bs.start), as many as the block's.
        let alpha = &weights[(ts.start * d.b + bs.start) * d.s..][..de.len()];
        for (r, (der, ar)) in de.chunks_exact_mut(d.s).zip(alpha.chunks_exact(d.s)).enumerate() {
            let len = lengths[block_seq(&bs, r)];
            let mut dot = T::ZERO;
            for (&a, &da) in ar[..len].iter().zip(&der[..len]) {
                dot += a * da;
            }
            for (x, &a) in der[..len].iter_mut().zip(&ar[..len]) {
                *x = a * (*x - dot);
            }
            der[len..].fill(T::ZERO);
        }
    });
    let below = |ss: &Range<usize>, len: usize| ss.start..ss.end.min(len);
    // Per block of keys: dK_b += α_bᵀ dC_b, and for the dot score dK_b += dE_bᵀ Q_b.
    let dot = cfg.score() == Score::Dot;
    for_blocks_of(k, &mut dm.d_keys, d.s, |k, ss, dk| {
        for (b, &len) in lengths.iter().enumerate() {
            let ks = below(&ss, len);
            if ks.is_empty() {
                continue;
            }
            k.gemm(T::ONE, by_keys(weights, &d, b, &ks), seq(&dc, &d, b, d.tq, d.hk), T::ONE, seq_mut(dk, &d, b, ks.len(), d.hk));
            if dot {
                k.gemm(T::ONE, by_keys(&de, &d, b, &ks), seq(queries, &d, b, d.tq, d.hq), T::ONE, seq_mut(dk, &d, b, ks.len(), d.hk));
            }
        }
    });
    // Each score's backward from dE.
    match cfg.score() {
        Score::Dot | Score::General => {
            // dQ_b += dE_b K_b (dot) or dE_b (K W_aᵀ)_b (general), per block of queries.
            let (kk, kw) = if dot { (keys, d.hk) } else { (kp, d.hq) };
            for_query_blocks(k, &mut g.d_queries, &d, |k, ts, bs, dq| {
                for b in bs.clone() {
                    let len = lengths[b];
                    let deb = Mat { cols: len, ..seq_rows(&de, &d, b, &ts, d.s) };
                    k.gemm(T::ONE, deb, seq(kk, &d, b, len, kw), T::ONE, block_mut(dq, &bs, b, ts.len(), d.hq));
                }
            });
            if !dot {
                // d(K W_aᵀ)_b += dE_bᵀ Q_b, per block of keys.
                for_blocks_of(k, &mut dm.d_proj, d.s, |k, ss, dp| {
                    for (b, &len) in lengths.iter().enumerate() {
                        let ks = below(&ss, len);
                        if !ks.is_empty() {
                            k.gemm(
                                T::ONE,
                                by_keys(&de, &d, b, &ks),
                                seq(queries, &d, b, d.tq, d.hq),
                                T::ONE,
                                seq_mut(dp, &d, b, ks.len(), d.hq),
                            );
                        }
                    }
                });
            }
        }
        Score::Concat | Score::Additive => {
            // dP = dE v ⊙ (1 - u²), u = tanh(P_q + P_k): summed over the keys into dP_q, over
            // the queries into dP_k; dv += Σ dE u. Each sequence in parallel into buffers of its
            // own (its rows of dP_q and dP_k, its share of dv), then added in sequence order.
            let qp = query_proj(k, cfg, &d, &w, queries);
            let v = &params[w.v..w.v + d.a];
            let seq_len = (d.tq + d.s + 1) * d.a;
            let mut per_seq = Spare::zeroed(k, d.b * seq_len);
            for_blocks_of(k, &mut per_seq, d.b, |k, bs, block| {
                let mut u = Vec::new();
                for (b, buf) in bs.zip(block.chunks_exact_mut(seq_len)) {
                    let len = lengths[b];
                    let (dq_b, rest) = buf.split_at_mut(d.tq * d.a);
                    let (dk_b, dv_b) = rest.split_at_mut(d.s * d.a);
                    for (t, dq_t) in dq_b.chunks_exact_mut(d.a).enumerate() {
                        tanh_layer(k, &d, (&qp, kp), (t, b, len), &mut u);
                        for ((us, dk_s), &des) in u.chunks_exact(d.a).zip(dk_b.chunks_exact_mut(d.a)).zip(&de[(t * d.b + b) * d.s..]) {
                            for ((((&ua, &va), dva), dqa), dka) in
                                us.iter().zip(v).zip(dv_b.iter_mut()).zip(dq_t.iter_mut()).zip(dk_s.iter_mut())
                            {
                                *dva += des * ua;
                                let dp = des * va * (T::ONE - ua * ua);
                                *dqa += dp;
                                *dka += dp;
                            }
                        }
                    }
                }
            });
            let mut dqp = Spare::zeroed(k, tb * d.a);
            let mut dv = vec![T::ZERO; d.a];
            for (b, buf) in per_seq.chunks_exact(seq_len).enumerate() {
                let (dq_b, rest) = buf.split_at(d.tq * d.a);
                let (dk_b, dv_b) = rest.split_at(d.s * d.a);
                for (t, dq_t) in dq_b.chunks_exact(d.a).enumerate() {
                    dqp[(t * d.b + b) * d.a..][..d.a].copy_from_slice(dq_t);
                }
                for (s, dk_s) in dk_b.chunks_exact(d.a).enumerate().take(lengths[b]) {
                    for (x, &y) in dm.d_proj[(s * d.b + b) * d.a..][..d.a].iter_mut().zip(dk_s) {
                        *x += y;
                    }
                }
                for (x, &y) in dv.iter_mut().zip(dv_b) {
                    *x += y;
                }
            }
            Spare::give(per_seq);
            for (x, dva) in g.d_params[w.v..w.v + d.a].iter_mut().zip(dv) {
                *x += dva;
            }
            let dqpm = Mat::new(&dqp, tb, d.a);
            k.gemm(T::ONE, dqpm, w.mat(w.w_q.0, d.a, d.hq, w.w_q.1), T::ONE, MatMut::new(&mut g.d_queries, tb, d.hq));
            let (_, dw) = g.d_params.split_at_mut(w.w_q.0);
            k.gemm(T::ONE, dqpm.t(), Mat::new(queries, tb, d.hq), T::ONE, MatMut::strided(dw, d.a, d.hq, w.w_q.1));
            Spare::give(qp);
            Spare::give(dqp);
        }
    }
    Spare::give(dc);
    Spare::give(de);
    Ok(g)
}

/// The keys' side's backward: `dK = dm.d_keys + d(proj) W` and the projection weight's
/// gradient `d(proj)ᵀ K` (general: `W_a`; concat, additive: `W_k`), zero at the padding.
pub(crate) fn memory_backward<T: Float, K: HostKernels<T>>(
    k: &K,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    memory: &AttentionMemory<T>,
    dm: &AttentionMemoryGrads<T>,
    fresh: &mut Fresh<T>,
) -> Result<AttentionGrads<T>> {
    memory.check(shape)?;
    check_len("params", params.len(), &[cfg.param_len()])?;
    check_memory(cfg, shape, memory)?;
    check_grads(memory, dm)?;
    let d_keys = fresh.copy(k, &dm.d_keys);
    keys_backward(k, cfg, shape, params, memory, d_keys, &dm.d_proj, fresh)
}

/// [`memory_backward`] (its checks done) into `d_keys`, which holds `dm.d_keys`.
#[allow(clippy::too_many_arguments)]
fn keys_backward<T: Float, K: HostKernels<T>>(
    k: &K,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    memory: &AttentionMemory<T>,
    d_keys: Vec<T>,
    d_proj: &[T],
    fresh: &mut Fresh<T>,
) -> Result<AttentionGrads<T>> {
    let d = Dims::of(cfg, shape);
    let w = Params::of(cfg, &d, params)?;
    let sb = d.s * d.b;
    let mut g = AttentionGrads { d_queries: Vec::new(), d_keys, d_params: fresh.zeroed(k, params.len()) };
    let (off, width, rs) = match cfg.score() {
        Score::Dot => (0, 0, 0),
        Score::General => (w.w_a, d.hq, d.hk),
        Score::Concat | Score::Additive => (w.w_k.0, d.a, w.w_k.1),
    };
    if width > 0 {
        // The projection's rows at the padding are zero (no call writes them).
        let dp = Mat::new(d_proj, sb, width);
        k.gemm(T::ONE, dp, w.mat(off, width, d.hk, rs), T::ONE, MatMut::new(&mut g.d_keys, sb, d.hk));
        let (_, dw) = g.d_params.split_at_mut(off);
        k.gemm(T::ONE, dp.t(), Mat::new(&memory.keys, sb, d.hk), T::ONE, MatMut::strided(dw, width, d.hk, rs));
    }
    // The padding's keys get no gradient (their rows were never read).
    zero_padding(&mut g.d_keys, &d, shape.lengths());
    Ok(g)
}

/// A whole forward call ([`crate::attention::AttentionBackend::attention_forward`]): the
/// memory, then [`forward_with`]; the memory's buffers are kept for the next call ([`Spare`]).
pub(crate) fn forward<T: Float, K: HostKernels<T>>(
    k: &K,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    keys: &[T],
    queries: &[T],
    fresh: &mut Fresh<T>,
) -> Result<AttentionOutput<T>> {
    check_inputs(cfg, shape, params, keys, queries)?;
    let m = memory(k, cfg, shape, params, keys, &mut Fresh::Spare)?;
    let out = forward_with(k, cfg, shape, params, &m, queries, fresh);
    Spare::give(m.keys);
    Spare::give(m.proj);
    out
}

/// A whole backward call ([`crate::attention::AttentionBackend::attention_backward`]): the
/// memory, [`backward_with`] and [`memory_backward`], the keys' gradients written in place and
/// the intermediates' buffers kept for the next call ([`Spare`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float, K: HostKernels<T>>(
    k: &K,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[T],
    keys: &[T],
    queries: &[T],
    out: &AttentionOutput<T>,
    up: AttentionUpstream<'_, T>,
    fresh: &mut Fresh<T>,
) -> Result<AttentionGrads<T>> {
    check_inputs(cfg, shape, params, keys, queries)?;
    check_backward(cfg, shape, out, &up)?;
    let m = memory(k, cfg, shape, params, keys, &mut Fresh::Spare)?;
    let mut dm = AttentionMemoryGrads { d_keys: fresh.zeroed(k, m.keys.len()), d_proj: Spare::zeroed(k, m.proj.len()) };
    let mut g = backward_with(k, cfg, shape, params, &m, queries, out, up, &mut dm, fresh)?;
    let kg = keys_backward(k, cfg, shape, params, &m, dm.d_keys, &dm.d_proj, &mut Fresh::Spare)?;
    for (d, x) in g.d_params.iter_mut().zip(&kg.d_params) {
        *d += *x;
    }
    g.d_keys = kg.d_keys;
    Spare::give(kg.d_params);
    Spare::give(m.keys);
    Spare::give(m.proj);
    Spare::give(dm.d_proj);
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::Fresh;
    use crate::Reference;

    /// A call's outputs are the buffers made before it (no reallocation: they stay in the
    /// caller's arena), each output the smallest one that holds it; past them, new ones.
    #[test]
    fn fresh_outputs_are_the_buffers_made_beforehand() {
        let mut fresh = Fresh::<f32>::kept(&[Some(100), None, Some(10), Some(usize::MAX)]);
        let Fresh::Kept(bufs) = &fresh else { unreachable!("kept") };
        // The size that cannot be reserved and the overflowed one are left out.
        assert_eq!(bufs.len(), 2);
        let ptrs: Vec<*const f32> = bufs.iter().map(|b| b.as_ptr()).collect();
        let k = &Reference;
        let small = fresh.zeroed(k, 7);
        let large = fresh.copy(k, &[1.0; 60]);
        assert_eq!((small.as_ptr(), large.as_ptr()), (ptrs[1], ptrs[0]));
        assert!(small.iter().all(|&x| x == 0.0) && small.len() == 7 && large == vec![1.0; 60]);
        let extra = fresh.zeroed(k, 5);
        assert!(extra.len() == 5 && !ptrs.contains(&extra.as_ptr()));
    }
}
