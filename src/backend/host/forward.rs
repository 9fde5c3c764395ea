//! The forward time loop: layers in order, each direction's input projection for a chunk of
//! steps at once, then its steps one by one. See the [module docs](super).

use super::direction::{cut_rows, cut_saved, rows_or_zeros, split_rows_mut, BlockWork, Direction};
use super::dropout::Dropout;
use super::reserve::try_fit_len;
use super::variational_dropout::{self, VariationalDropout};
use super::zoneout::{self, Zoneout};
use super::{gru_reset_before, layer_norm, CellForward, HostKernels, HostPlan, HostReserve, Mat, Pass, Weight};
use crate::backend::cell::Saved;
use crate::backend::{check_forward, ForwardInput, ForwardOutput};
use crate::config::Merge;
use crate::element::Float;
use crate::error::{try_zeroed, Result};
use crate::shape::SeqShape;
use std::ops::Range;

/// A host backend's whole forward call with kernels `k`: validates the buffers against `plan`
/// and `shape` (see [`ForwardInput`] and [`ForwardOutput`] for their shapes), then runs the
/// stack. With `save` (a training pass), stamps it with the plan and the shape and fills it for
/// [`run_backward`](super::run_backward).
pub(crate) fn run_forward<T: Float, K: HostKernels<T>>(
    k: &K,
    plan: &HostPlan<T>,
    shape: &SeqShape,
    input: ForwardInput<'_, [T]>,
    output: ForwardOutput<'_, [T]>,
    save: Option<&mut HostReserve<T>>,
) -> Result<()> {
    let cfg = plan.layout.config();
    check_forward(cfg, shape, &input, &output)?;
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let layer_out = shape.steps() * shape.batch() * cfg.output_size();
    let (hlen, clen) = (shape.batch() * cfg.hidden_out_size(), shape.batch() * cfg.hidden_size());
    let ForwardOutput { y, mut hn, mut cn } = output;
    let batch_first = cfg.batch_first();

    // The outputs of the layers but the last (which writes `y`): kept in the reserve for
    // backward, else two buffers that take turns being read and written.
    let mut alternating: Vec<Vec<T>> = Vec::new();
    // Dropout between layers: training passes only.
    let masks = input.masks.as_ref();
    if let (Some(m), true) = (masks, save.is_some()) {
        m.check_for(cfg, shape)?;
    }
    let dropout = if save.is_some() { Dropout::for_training(cfg, masks)? } else { None };
    // Zoneout: the masks of a training pass, the expectation in inference.
    let zoneout = Zoneout::for_pass(cfg, shape, save.is_some(), masks)?;
    let (recurrent_dropout, input_dropout) = match save {
        Some(_) => (VariationalDropout::recurrent(cfg, masks)?, VariationalDropout::input(cfg, masks)?),
        None => (None, None),
    };
    let (outputs, mut saves, x_copy) = match save {
        Some(s) => {
            s.stamp.fill(&plan.stamp, shape);
            s.prepare(cfg, shape, &input)?;
            s.dropout = dropout.clone();
            s.zoneout = zoneout.clone();
            s.recurrent_dropout = recurrent_dropout.clone();
            s.input_dropout = input_dropout.clone();
            let HostReserve { outputs, dirs, x, .. } = s;
            (outputs, Some(&mut dirs[..]), Some(&x[..]))
        }
        None => {
            alternating.resize_with((nl - 1).min(2), Vec::new);
            for o in &mut alternating {
                try_fit_len(o, layer_out, "the outputs of the layers but the last, [T, B, D·Hout]")?;
            }
            (&mut alternating, None, None)
        }
    };
    // The first layer's input: `x`, or with a batch-first `x` the reserve's time-major copy of
    // it (a training pass), else `x` itself, read by strided rows.
    let x_in = match (batch_first, x_copy) {
        (false, _) => LayerIn::TimeMajor(input.x),
        (true, Some(x)) => LayerIn::TimeMajor(x),
        (true, None) => LayerIn::BatchFirst(input.x),
    };
    let slots = outputs.len().max(1);
    let slot = |l: usize| l % slots;
    // With merge by sum and the directions at once: the second direction's output, added onto
    // the first's once both have run.
    let mut second: Vec<T> = Vec::new();
    for l in 0..nl {
        let last = l + 1 == nl;
        let (layer_in, out): (LayerIn<'_, T>, &mut [T]) = match (l, last) {
            (0, true) => (x_in, &mut *y),
            (0, false) => (x_in, &mut outputs[slot(0)]),
            (_, true) => (LayerIn::TimeMajor(&outputs[slot(l - 1)]), &mut *y),
            (_, false) => {
                let (r, w) = read_write(outputs, slot(l - 1), slot(l));
                (LayerIn::TimeMajor(r), w)
            }
        };
        let common = |dir: &Direction<'_, T>| {
            (dir.block(input.h0, hlen), dir.block(input.c0, clen), zoneout.as_ref(), recurrent_dropout.as_ref(), input_dropout.as_ref())
        };
        if nd == 2 && k.parallel_directions() {
            // Both directions at once, each on one thread: they share only the layer's input
            // (read). Concatenated, each writes its own columns of the output rows; merged by
            // sum, the second writes a buffer of its own, added onto the first's output after
            // (`y_forward + y_reverse`, the sum and its order of the directions one after the
            // other; past a sequence's length both wrote +0).
            let sum = cfg.merge() == Merge::Sum;
            let mut dirs = [Direction::new(plan, shape, l, 0), Direction::new(plan, shape, l, 1)];
            let outs: [LayerOut<'_, T>; 2] = if sum {
                try_fit_len(&mut second, out.len(), "the second direction's output merged by sum, [T, B, Hout]")?;
                dirs[1].accumulate = false;
                [LayerOut::Whole(&mut *out), LayerOut::Whole(&mut second[..])]
            } else {
                let hout = cfg.hidden_out_size();
                let (mut cols0, mut cols1) = (Vec::new(), Vec::new());
                for row in out.chunks_exact_mut(2 * hout) {
                    let (a, b) = row.split_at_mut(hout);
                    cols0.push(a);
                    cols1.push(b);
                }
                [LayerOut::Cols(cols0), LayerOut::Cols(cols1)]
            };
            let ld = dirs[0].ld;
            let [hn0, hn1] = state_pair(hn.as_deref_mut(), ld, hlen);
            let [cn0, cn1] = state_pair(cn.as_deref_mut(), ld, clen);
            let [sv0, sv1] = match saves.as_deref_mut() {
                Some(s) => {
                    let (a, b) = s[dirs[0].ld..dirs[0].ld + 2].split_at_mut(1);
                    [Some(&mut a[0]), Some(&mut b[0])]
                }
                None => [None, None],
            };
            let [out0, out1] = outs;
            let work =
                BlockWork::new([(out0, hn0, cn0, sv0), (out1, hn1, cn1, sv1)].into_iter().zip(dirs).map(|((out, hn, cn, save), dir)| {
                    let (h0, c0, zoneout, recurrent_dropout, input_dropout) = common(&dir);
                    let out_batch_first = last && batch_first;
                    (
                        dir,
                        DirectionIo {
                            input: layer_in,
                            out,
                            out_batch_first,
                            h0,
                            c0,
                            hn,
                            cn,
                            save,
                            zoneout,
                            recurrent_dropout,
                            input_dropout,
                        },
                    )
                }));
            let results = BlockWork::new((0..2).map(|_| Ok(())));
            let serial = k.serial();
            k.for_long_blocks(2, &|d| {
                if let Some((dir, io)) = work.take(d) {
                    results.put(d, forward_direction(&serial, dir, io));
                }
            });
            for d in 0..2 {
                results.take(d).unwrap_or(Ok(()))?;
            }
            if sum {
                add_onto(k, out, &second, cfg.output_size());
            }
        } else {
            for d in 0..nd {
                let dir = Direction::new(plan, shape, l, d);
                let (h0, c0, zoneout, recurrent_dropout, input_dropout) = common(&dir);
                let io = DirectionIo {
                    input: layer_in,
                    out: LayerOut::Whole(&mut *out),
                    out_batch_first: last && batch_first,
                    h0,
                    c0,
                    hn: dir.block_mut(&mut hn, hlen),
                    cn: dir.block_mut(&mut cn, clen),
                    save: saves.as_deref_mut().map(|s| &mut s[dir.ld]),
                    zoneout,
                    recurrent_dropout,
                    input_dropout,
                };
                forward_direction(k, dir, io)?;
            }
        }
        if let (Some(dropout), false) = (&dropout, last) {
            // The next layer reads (and backward's weight gradients see) the dropped output.
            dropout.apply(k, l, &mut outputs[slot(l)], shape.batch(), cfg.output_size())?;
        }
    }
    Ok(())
}

/// `out += add` elementwise (`out[i] + add[i]`, in that order), `out` and `add` of `[rows, w]`,
/// in the blocks of rows the backend runs in parallel (the cut changes no bit).
fn add_onto<T: Float, K: HostKernels<T>>(k: &K, out: &mut [T], add: &[T], w: usize) {
    let rows = out.len() / w.max(1);
    let cuts = k.row_blocks(rows, Pass::Forward);
    let parts = BlockWork::new(split_rows_mut(out, rows, &cuts).into_iter().zip(cuts.windows(2).map(|r| &add[r[0] * w..r[1] * w])));
    k.for_blocks(parts.len(), &|i| {
        if let Some((o, a)) = parts.take(i) {
            for (o, &a) in o.iter_mut().zip(a) {
                *o += a;
            }
        }
    });
}

/// The blocks `ld` and `ld + 1`, `len` long, of a state buffer (`hn`, `cn`), if given.
fn state_pair<T>(buf: Option<&mut [T]>, ld: usize, len: usize) -> [Option<&mut [T]>; 2] {
    match buf {
        Some(b) => {
            let (a, c) = b[ld * len..(ld + 2) * len].split_at_mut(len);
            [Some(a), Some(c)]
        }
        None => [None, None],
    }
}

/// Buffer `r` of `bufs` to read and buffer `w` (another one) to write.
fn read_write<T>(bufs: &mut [Vec<T>], r: usize, w: usize) -> (&[T], &mut [T]) {
    if r < w {
        let (head, tail) = bufs.split_at_mut(w);
        (&head[r], &mut tail[0])
    } else {
        let (head, tail) = bufs.split_at_mut(r);
        (&tail[0], &mut head[w])
    }
}

/// A layer's input.
enum LayerIn<'a, T> {
    /// `[T, B, In]`.
    TimeMajor(&'a [T]),
    /// `[B, T, I]`: the caller's batch-first `x` (the first layer of an inference pass).
    BatchFirst(&'a [T]),
}

// Copy without `T: Copy`: a reference.
impl<T> Clone for LayerIn<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for LayerIn<'_, T> {}

/// What one layer-direction of a forward pass reads and writes.
struct DirectionIo<'a, T> {
    /// The layer's input.
    input: LayerIn<'a, T>,
    /// `[T, B, W]` (`W` = `D·Hout`, or `Hout` with merge by sum), or `[B, T, W]` with
    /// `out_batch_first`: the layer's output, of which the direction writes its columns.
    out: LayerOut<'a, T>,
    /// `out` is batch-first (the last layer's `y` of a batch-first stack).
    out_batch_first: bool,
    /// `[B, Hout]`: the initial hidden state, or zeros.
    h0: Option<&'a [T]>,
    /// `[B, H]` (LSTM): the initial cell state, or zeros.
    c0: Option<&'a [T]>,
    /// `[B, Hout]`: the final hidden state, when wanted.
    hn: Option<&'a mut [T]>,
    /// `[B, H]` (LSTM): the final cell state, when wanted.
    cn: Option<&'a mut [T]>,
    /// Where the activations go for backward (a training pass).
    save: Option<&'a mut Saved<Vec<T>>>,
    /// The call's zoneout, if any.
    zoneout: Option<&'a Zoneout>,
    /// The call's recurrent dropout (a training pass), if any.
    recurrent_dropout: Option<&'a VariationalDropout>,
    /// The call's input dropout (a training pass), if any.
    input_dropout: Option<&'a VariationalDropout>,
}

/// Steps per chunk of the input projection: enough rows (`steps·B ≥ 512`) for the GEMM to run
/// at full speed, at most 4 Mi floats of buffer where that allows more than one step.
fn projection_chunk(t_len: usize, batch: usize, gh: usize) -> usize {
    let by_rows = 512usize.div_ceil(batch.max(1));
    let by_size = (4usize << 20) / batch.max(1).saturating_mul(gh.max(1));
    by_rows.min(by_size).max(1).min(t_len.max(1))
}

/// The chunks of steps of the input projection, in processing order.
fn projection_chunks(t_len: usize, chunk: usize, reverse: bool) -> Vec<Range<usize>> {
    let n = t_len.div_ceil(chunk);
    if reverse {
        (0..n).map(|i| t_len.saturating_sub((i + 1) * chunk)..t_len - i * chunk).collect()
    } else {
        (0..n).map(|i| i * chunk..((i + 1) * chunk).min(t_len)).collect()
    }
}

/// Below this batch a batch-first input's rows of a chunk of steps are gathered into one
/// time-major block before its projection, instead of being read in place one step at a time:
/// a product of so few rows may take another path of a backend's GEMM (the CPU's skinny path
/// under 6 rows, one sum over all of `In` where the blocked path sums in blocks of 512), and
/// its results would then differ from the time-major call's in the last bits. At this batch
/// the copy is small: `chunk·B·In` elements.
const STRIDED_PROJECTION_MIN_ROWS: usize = 8;

/// A layer's output as one direction sees it.
enum LayerOut<'a, T> {
    /// The whole output, `W` values a row: the direction writes its columns `col..col + Hout`
    /// (or adds onto them with merge by sum).
    Whole(&'a mut [T]),
    /// The direction's `Hout` columns of each row, the rows in the output's order (time-major
    /// `[T·B]`, batch-first `[B·T]`): a direction running beside the other one.
    Cols(Vec<&'a mut [T]>),
}

/// A block of rows' share of a layer output, which its steps write row by row.
enum BlockOut<'a, T> {
    /// Time-major `[T, B, W]`: per step, the block's rows, `[n, W]`.
    Steps(Vec<&'a mut [T]>),
    /// Batch-first `[B, T, W]`: per row of the block, its sequence, `[T, W]`.
    Seqs(Vec<&'a mut [T]>),
    /// The direction's columns of the block's rows ([`LayerOut::Cols`]): time-major, step `t`'s
    /// row `b` at `t·n + b` (`n` rows); batch-first, at `b·T + t` (`T` steps).
    Cols { rows: Vec<&'a mut [T]>, batch_first: bool, n: usize, steps: usize },
}

impl<T> BlockOut<'_, T> {
    /// The direction's `Hout` values of row `b` of the block at step `t`: columns `col..col +
    /// Hout` of the row, `w` wide.
    #[inline]
    fn cols(&mut self, t: usize, b: usize, w: usize, col: usize, hout: usize) -> &mut [T] {
        match self {
            BlockOut::Steps(s) => &mut s[t][b * w + col..b * w + col + hout],
            BlockOut::Seqs(s) => &mut s[b][t * w + col..t * w + col + hout],
            BlockOut::Cols { rows, batch_first: false, n, .. } => rows[t * *n + b],
            BlockOut::Cols { rows, batch_first: true, steps, .. } => rows[b * *steps + t],
        }
    }
}

/// Cuts a layer output of `steps` steps (time-major, or batch-first) into the blocks of rows
/// `bounds`.
fn cut_out<'a, T>(out: LayerOut<'a, T>, batch_first: bool, steps: usize, bounds: &[usize]) -> Vec<BlockOut<'a, T>> {
    let rows = bounds[bounds.len() - 1];
    let block_of = |b: usize| bounds.partition_point(|&s| s <= b) - 1;
    match out {
        LayerOut::Whole(out) if !batch_first => cut_rows(out, steps, bounds).into_iter().map(BlockOut::Steps).collect(),
        LayerOut::Whole(out) => {
            let per_seq = (out.len() / rows.max(1)).max(1);
            let mut seqs = out.chunks_exact_mut(per_seq);
            bounds.windows(2).map(|r| BlockOut::Seqs(seqs.by_ref().take(r[1] - r[0]).collect())).collect()
        }
        LayerOut::Cols(cols) => {
            let mut blocks: Vec<BlockOut<'a, T>> =
                bounds.windows(2).map(|r| BlockOut::Cols { rows: Vec::new(), batch_first, n: r[1] - r[0], steps }).collect();
            // In memory order, each row to its block: the blocks' rows stay in the same order.
            for (i, row) in cols.into_iter().enumerate() {
                let b = if batch_first { i / steps.max(1) } else { i % rows.max(1) };
                if let BlockOut::Cols { rows, .. } = &mut blocks[block_of(b)] {
                    rows.push(row);
                }
            }
            blocks
        }
    }
}

/// What a block of batch rows `row0..row0 + n` carries from step to step of a forward
/// layer-direction.
struct FwdRows<T> {
    row0: usize,
    /// `[n, Hout]`.
    h_prev: Vec<T>,
    /// `[n, H]` (LSTM; empty otherwise).
    c_prev: Vec<T>,
    /// `[n, G·H]`: `h_prev · W_hh^T`.
    hg: Vec<T>,
    /// `[n]`: which rows are valid at the current step.
    active: Vec<bool>,
    /// One step of the block's activations, when they are not saved.
    scratch: Saved<Vec<T>>,
    /// The call's zoneout with this layer-direction's mask sites, and a row's mask (scratch).
    zone: Option<(Zoneout, zoneout::Sites)>,
    hit: Vec<u32>,
    /// Recurrent dropout: `[n, Hout]` the block's factors (empty without), and the dropped
    /// `h_prev` of the step (scratch).
    rec: Vec<T>,
    hd: Vec<T>,
}

impl<T: Float> FwdRows<T> {
    fn new(
        rows: Range<usize>,
        dir: &Direction<'_, T>,
        h0: Option<&[T]>,
        c0: Option<&[T]>,
        zone: Option<(Zoneout, zoneout::Sites)>,
        rec: Option<&VariationalDropout>,
    ) -> Result<Self> {
        let (n, dm) = (rows.len(), &dir.dims);
        let rec = match rec {
            Some(r) => r.factors(dir.ld / dm.dirs, dir.ld % dm.dirs, rows.start, n, dm.hout)?,
            None => Vec::new(),
        };
        Ok(FwdRows {
            row0: rows.start,
            h_prev: rows_or_zeros(h0, rows.clone(), dm.hout),
            c_prev: rows_or_zeros(c0, rows, dm.cell.saved_sizes(1, 1).c),
            hg: try_zeroed("x", "a block's recurrent products, [B, G·H]", n.saturating_mul(dm.gh))?,
            active: vec![false; n],
            scratch: dm.cell.saved_sizes(1, n).map(|len| vec![T::ZERO; len]),
            zone,
            hit: Vec::new(),
            hd: vec![T::ZERO; rec.len()],
            rec,
        })
    }
}

/// One layer-direction forward: writes its columns `d·Hout..(d+1)·Hout` of `io.out`.
///
/// The batch rows are cut into the blocks of [`HostKernels::row_blocks`], which run their steps
/// on their own between the input projections (one large GEMM over all rows per chunk of
/// steps): within a layer, rows never interact.
fn forward_direction<T: Float, K: HostKernels<T>>(k: &K, dir: Direction<'_, T>, io: DirectionIo<'_, T>) -> Result<()> {
    let dm = dir.dims;
    let (tl, bl, gh) = (dm.t, dm.b, dm.gh);
    let DirectionIo { input, out, out_batch_first, h0, c0, hn, cn, mut save, zoneout, recurrent_dropout, input_dropout } = io;
    let zone = match zoneout {
        Some(z) => Some((z, zoneout::Sites::new(dir.ld / dm.dirs, dir.ld % dm.dirs)?)),
        None => None,
    };
    let widths = dm.cell.saved_sizes(1, 1);
    let bounds = k.row_blocks(bl, Pass::Forward);
    let mut blocks: Vec<FwdRows<T>> = bounds
        .windows(2)
        .map(|r| FwdRows::new(r[0]..r[1], &dir, h0, c0, zone.map(|(z, s)| (z.clone(), s)), recurrent_dropout))
        .collect::<Result<_>>()?;
    let serial = k.serial();
    // The kernels of a block: all of the backend's threads when there is only one.
    let kb: &K = if blocks.len() > 1 { &serial } else { k };

    // XG = X · W_ih^T + b_ih for a chunk of steps at once, computed when the time loop reaches
    // it: one large GEMM per chunk, into a buffer small enough to still be in cache when the
    // steps read it (all T steps at once would be T·B·G·H floats, written and read from memory).
    let chunk = projection_chunk(tl, bl, gh);
    let mut xg = try_zeroed("x", "the input projection of a chunk of steps, [steps, B, G·H]", chunk.saturating_mul(bl).saturating_mul(gh))?;
    let mut gathered = Vec::new();
    // Input dropout: `[B, In]` this layer-direction's factors (empty without).
    let in_drop = match &input_dropout {
        Some(d) => d.factors(dir.ld / dm.dirs, dir.ld % dm.dirs, 0, bl, dm.input)?,
        None => Vec::new(),
    };
    // Each block's rows of the output.
    let mut outs = cut_out(out, out_batch_first, tl, &bounds);
    for steps in projection_chunks(tl, chunk, dir.reverse()) {
        let rows = steps.len() * bl;
        let xg = &mut xg[..rows * gh];
        project_input(k, &dir, input, steps.clone(), &in_drop, xg, &mut gathered)?;
        if dm.cell.layer_norm {
            // XG = LN(X · W_ih^T; γ_ih, b_ih): the input bias is the normalisation's β.
            let (ln_x, rstd_x): (&mut [T], &mut [T]) = match save.as_deref_mut() {
                Some(s) => (&mut s.ln_x[steps.start * bl * gh..steps.end * bl * gh], &mut s.rstd_x[steps.start * bl..steps.end * bl]),
                None => (&mut [], &mut []),
            };
            layer_norm::layer_norm_blocks(k, gh, xg, dir.w.ln_ih, dir.w.b_ih, ln_x, rstd_x);
        }
        let xg = &*xg;

        // Each block's rows of this chunk's saved activations, [block][step].
        let n = steps.len();
        let saves: Vec<Vec<Option<Saved<&mut [T]>>>> = match save.as_deref_mut() {
            Some(s) => cut_saved(s, widths, steps.clone(), &bounds).into_iter().map(|v| v.into_iter().map(Some).collect()).collect(),
            None => (0..bounds.len() - 1).map(|_| (0..n).map(|_| None).collect()).collect(),
        };
        let work = BlockWork::new(blocks.iter_mut().zip(saves).zip(outs.iter_mut()));
        k.for_long_blocks(work.len(), &|i| {
            let Some(((st, sv), out)) = work.take(i) else { return };
            let (r0, nr) = (st.row0, st.active.len());
            let mut per_step: Vec<_> = sv.into_iter().collect();
            let mut run = |j: usize, sv: Option<Saved<&mut [T]>>| {
                let xg_t = &xg[(j * bl + r0) * gh..(j * bl + r0 + nr) * gh];
                forward_step(kb, &dir, steps.start + j, xg_t, st, sv, out);
            };
            if dir.reverse() {
                while let Some(x) = per_step.pop() {
                    run(per_step.len(), x);
                }
            } else {
                for (j, x) in per_step.into_iter().enumerate() {
                    run(j, x);
                }
            }
        });
    }
    if let Some(hn) = hn {
        for st in &blocks {
            hn[st.row0 * dm.hout..(st.row0 + st.active.len()) * dm.hout].copy_from_slice(&st.h_prev);
        }
    }
    if let Some(cn) = cn {
        for st in &blocks {
            cn[st.row0 * dm.h..(st.row0 + st.active.len()) * dm.h].copy_from_slice(&st.c_prev);
        }
    }
    Ok(())
}

/// `xg[steps·B, G·H] = x[steps·B, In] · W_ih^T + b_ih` for a chunk of steps. A batch-first
/// input is read in place, the `B` rows of a step `T·I` apart, one product per step (from
/// [`STRIDED_PROJECTION_MIN_ROWS`] rows; below, gathered into `gathered` first). With input
/// dropout (`drop`, `[B, In]` factors, else empty) the product reads `x ⊙ drop`, written into
/// `gathered` first.
fn project_input<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: &Direction<'_, T>,
    input: LayerIn<'_, T>,
    steps: Range<usize>,
    drop: &[T],
    xg: &mut [T],
    gathered: &mut Vec<T>,
) -> Result<()> {
    let dm = &dir.dims;
    let (gh, bl, in_w) = (dm.gh, dm.b, dm.input);
    let rows = xg.len() / gh;
    match input {
        LayerIn::TimeMajor(x) if drop.is_empty() => {
            dir.forward_product(k, Weight::Ih, &x[steps.start * bl * in_w..steps.end * bl * in_w], xg)
        }
        LayerIn::TimeMajor(x) => {
            try_fit_len(gathered, rows * in_w, "a chunk of steps of the dropped input, [steps, B, In]")?;
            variational_dropout::drop_rows_into(&x[steps.start * bl * in_w..steps.end * bl * in_w], drop, gathered);
            dir.forward_product(k, Weight::Ih, gathered, xg);
        }
        LayerIn::BatchFirst(x) if bl >= STRIDED_PROJECTION_MIN_ROWS && drop.is_empty() => {
            for (xg_t, t) in xg.chunks_exact_mut(bl * gh).zip(steps) {
                dir.project_view(k, Mat::strided(&x[t * in_w..], bl, in_w, dm.t * in_w), xg_t);
            }
        }
        LayerIn::BatchFirst(x) => {
            try_fit_len(gathered, rows * in_w, "a chunk of steps of the batch-first x, [steps, B, I]")?;
            let mut dst = gathered.chunks_exact_mut(in_w.max(1));
            for t in steps {
                for b in 0..bl {
                    let src = &x[(b * dm.t + t) * in_w..(b * dm.t + t + 1) * in_w];
                    let row = dst.next().unwrap_or_default();
                    match drop.get(b * in_w..(b + 1) * in_w) {
                        Some(f) => variational_dropout::drop_into(src, f, row),
                        None => row.copy_from_slice(src),
                    }
                }
            }
            dir.forward_product(k, Weight::Ih, gathered, xg);
        }
    }
    // (With layer norm the bias is added by the normalisation, as its β.)
    if let Some(b_ih) = dir.w.b_ih.filter(|_| !dm.cell.layer_norm) {
        // In the blocks of rows the backend would run in parallel (an elementwise add: the cut
        // changes no bit).
        let cuts = k.row_blocks(rows, Pass::Forward);
        let parts = BlockWork::new(split_rows_mut(xg, rows, &cuts));
        k.for_blocks(parts.len(), &|i| {
            if let Some(part) = parts.take(i) {
                for row in part.chunks_exact_mut(gh) {
                    for (v, &b) in row.iter_mut().zip(b_ih) {
                        *v += b;
                    }
                }
            }
        });
    }
    Ok(())
}

/// One forward step `t` of a block of rows: `xg_t: [n, G·H]` its rows of the input projection,
/// `save` where its activations go (the block's scratch when `None`), `out` its rows of the
/// layer output (the direction's columns written, or added onto with merge by sum).
fn forward_step<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: &Direction<'_, T>,
    t: usize,
    xg_t: &[T],
    st: &mut FwdRows<T>,
    save: Option<Saved<&mut [T]>>,
    out: &mut BlockOut<'_, T>,
) {
    let dm = &dir.dims;
    let (h, hout, col) = (dm.h, dm.hout, dir.col);
    let FwdRows { row0, h_prev, c_prev, hg, active, scratch, zone, hit, rec, hd } = st;
    for (i, a) in active.iter_mut().enumerate() {
        *a = dir.shape.is_active(t, *row0 + i);
    }
    // HG[n, G·H] = h_prev · W_hh^T (a GRU with the reset gate before the matmul computes it in
    // two parts around its gates: `gru_reset_before.rs`).
    let reset_before = gru_reset_before::applies(&dm.cell);
    if !reset_before {
        if rec.is_empty() {
            dir.forward_product(k, Weight::Hh, h_prev, hg);
        } else {
            // Recurrent dropout: the product reads the dropped state, the cell the state.
            variational_dropout::drop_into(h_prev, rec, hd);
            dir.forward_product(k, Weight::Hh, hd, hg);
        }
    }
    // Without a save (inference) the step's h and c go to the scratch, which then trades places
    // with h_prev and c_prev instead of being copied into them.
    let in_scratch = save.is_none();
    let Saved { gates, extra, c, m, h: h_t, ln_h, rstd_h, ln_c, rstd_c, c_new, .. } =
        save.unwrap_or_else(|| scratch.as_mut().map(|v| &mut v[..]));
    let ln = dm.cell.layer_norm;
    if ln {
        // HG = γ_hh⊙x̂_h, the recurrent product normalised (no β: the cell adds b_hh).
        k.layer_norm_rows(dm.gh, hg, dir.w.ln_hh, None, Some(ln_h), Some(rstd_h));
    }
    // Without a projection the cell writes the new hidden state directly.
    let m_out: &mut [T] = if dm.proj { &mut *m } else { &mut *h_t };
    let (hg, hg_reset_before) = if reset_before { (&[][..], Some(&mut **hg)) } else { (&**hg, None) };
    let step = CellForward {
        active,
        hidden: h,
        xg: xg_t,
        hg,
        b_hh: dir.w.b_hh,
        peephole: dir.w.peephole,
        clip: dm.cell.clip,
        input_forget: dm.cell.input_forget,
        h_prev,
        c_prev,
        gates: &mut *gates,
        extra,
        c: &mut *c,
        m: &mut *m_out,
    };
    match hg_reset_before {
        Some(hg) => gru_reset_before::forward_step(k, dir, hg, step),
        None => k.cell_step_forward(&dm.cell, step),
    }
    if ln && dm.lstm() {
        // m = o⊙tanh(LN(c; γ_c, β_c)); the recurrence carries the raw c.
        layer_norm::lstm_output(k, h, dir.w.ln_c_weight, dir.w.ln_c_bias, gates, c, ln_c, rstd_c, m_out);
    }
    if dm.proj {
        // h[n, Hout] = m · W_hr^T; m of inactive rows is zeroed so that the saved m is clean
        // for the dW_hr GEMM of backward.
        for (b, &a) in active.iter().enumerate() {
            if !a {
                m[b * h..(b + 1) * h].fill(T::ZERO);
            }
        }
        dir.forward_product(k, Weight::Hr, m, h_t);
    }
    if let Some((z, sites)) = zone.as_ref() {
        // The zoned states are what the next step reads and the layer outputs; backward reads
        // the cell's own new c (`c_new`) for its tanh.
        z.forward(zoneout::State::H, *sites, t, *row0, active, h_prev, h_t, hit);
        if z.applies(zoneout::State::C) {
            c_new.copy_from_slice(c);
            z.forward(zoneout::State::C, *sites, t, *row0, active, c_prev, c, hit);
        }
    }
    for (b, &a) in active.iter().enumerate() {
        let hb = &mut h_t[b * hout..(b + 1) * hout];
        let ob = out.cols(t, b, dm.out_w, col, hout);
        if !a {
            // Past its length a sequence keeps its state and outputs zero (with merge by sum,
            // the zero the first direction wrote).
            hb.copy_from_slice(&h_prev[b * hout..(b + 1) * hout]);
            if !dir.accumulate {
                ob.fill(T::ZERO);
            }
        } else if dir.accumulate {
            // Merge by sum: y = y_forward + y_reverse, the reverse direction running second.
            for (o, &v) in ob.iter_mut().zip(&*hb) {
                *o += v;
            }
        } else {
            ob.copy_from_slice(hb);
        }
    }
    if in_scratch {
        // The scratch's h and c were rewritten for every row above (the cell writes c and the
        // active rows' h, the loop above the inactive rows' h), so the swap loses nothing.
        std::mem::swap(h_prev, &mut scratch.h);
        std::mem::swap(c_prev, &mut scratch.c);
    } else {
        h_prev.copy_from_slice(h_t);
        c_prev.copy_from_slice(c);
    }
}
