//! The forward time loop: layers in order, each direction's input projection for a chunk of
//! steps at once, then its steps one by one. See the [module docs](super).

use super::direction::{cut_rows, cut_saved, rows_or_zeros, split_rows_mut, BlockWork, Direction};
use super::reserve::try_fit_len;
use super::{gru_reset_before, CellForward, HostKernels, HostPlan, HostReserve, Pass, Weight};
use crate::backend::cell::Saved;
use crate::backend::{check_forward, ForwardInput, ForwardOutput};
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

    // The outputs of the layers but the last (which writes `y`): kept in the reserve for
    // backward, else two buffers that take turns being read and written.
    let mut alternating: Vec<Vec<T>> = Vec::new();
    let (outputs, mut saves) = match save {
        Some(s) => {
            s.stamp.fill(&plan.stamp, shape);
            s.prepare(cfg, shape, &input)?;
            (&mut s.outputs, Some(&mut s.dirs[..]))
        }
        None => {
            alternating.resize_with((nl - 1).min(2), Vec::new);
            for o in &mut alternating {
                try_fit_len(o, layer_out, "the outputs of the layers but the last, [T, B, D·Hout]")?;
            }
            (&mut alternating, None)
        }
    };
    let slots = outputs.len().max(1);
    let slot = |l: usize| l % slots;
    for l in 0..nl {
        let (layer_in, out): (&[T], &mut [T]) = match (l, l + 1 == nl) {
            (0, true) => (input.x, &mut *y),
            (0, false) => (input.x, &mut outputs[slot(0)]),
            (_, true) => (&outputs[slot(l - 1)], &mut *y),
            (_, false) => read_write(outputs, slot(l - 1), slot(l)),
        };
        for d in 0..nd {
            let dir = Direction::new(plan, shape, l, d);
            let io = DirectionIo {
                input: layer_in,
                out: &mut *out,
                h0: dir.block(input.h0, hlen),
                c0: dir.block(input.c0, clen),
                hn: dir.block_mut(&mut hn, hlen),
                cn: dir.block_mut(&mut cn, clen),
                save: saves.as_deref_mut().map(|s| &mut s[dir.ld]),
            };
            forward_direction(k, dir, io)?;
        }
    }
    Ok(())
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

/// What one layer-direction of a forward pass reads and writes.
struct DirectionIo<'a, T> {
    /// `[T, B, In]`: the layer's input.
    input: &'a [T],
    /// `[T, B, D·Hout]`: the layer's output, of which the direction writes its columns.
    out: &'a mut [T],
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
}

impl<T: Float> FwdRows<T> {
    fn new(rows: Range<usize>, dir: &Direction<'_, T>, h0: Option<&[T]>, c0: Option<&[T]>) -> Result<Self> {
        let (n, dm) = (rows.len(), &dir.dims);
        Ok(FwdRows {
            row0: rows.start,
            h_prev: rows_or_zeros(h0, rows.clone(), dm.hout),
            c_prev: rows_or_zeros(c0, rows, dm.cell.saved_sizes(1, 1).c),
            hg: try_zeroed("x", "a block's recurrent products, [B, G·H]", n.saturating_mul(dm.gh))?,
            active: vec![false; n],
            scratch: dm.cell.saved_sizes(1, n).map(|len| vec![T::ZERO; len]),
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
    let DirectionIo { input, out, h0, c0, hn, cn, mut save } = io;
    let widths = dm.cell.saved_sizes(1, 1);
    let bounds = k.row_blocks(bl, Pass::Forward);
    let mut blocks: Vec<FwdRows<T>> = bounds.windows(2).map(|r| FwdRows::new(r[0]..r[1], &dir, h0, c0)).collect::<Result<_>>()?;
    let serial = k.serial();
    // The kernels of a block: all of the backend's threads when there is only one.
    let kb: &K = if blocks.len() > 1 { &serial } else { k };

    // XG = X · W_ih^T + b_ih for a chunk of steps at once, computed when the time loop reaches
    // it: one large GEMM per chunk, into a buffer small enough to still be in cache when the
    // steps read it (all T steps at once would be T·B·G·H floats, written and read from memory).
    let chunk = projection_chunk(tl, bl, gh);
    let mut xg = try_zeroed("x", "the input projection of a chunk of steps, [steps, B, G·H]", chunk.saturating_mul(bl).saturating_mul(gh))?;
    for steps in projection_chunks(tl, chunk, dir.reverse()) {
        let rows = steps.len() * bl;
        let xg = &mut xg[..rows * gh];
        project_input(k, &dir, &input[steps.start * bl * dm.input..steps.end * bl * dm.input], xg);
        let xg = &*xg;

        // Each block's rows of this chunk's outputs and saved activations, [block][step].
        let n = steps.len();
        let outs = cut_rows(&mut out[steps.start * bl * dm.out_w..steps.end * bl * dm.out_w], n, &bounds);
        let saves: Vec<Vec<Option<Saved<&mut [T]>>>> = match save.as_deref_mut() {
            Some(s) => cut_saved(s, widths, steps.clone(), &bounds).into_iter().map(|v| v.into_iter().map(Some).collect()).collect(),
            None => (0..bounds.len() - 1).map(|_| (0..n).map(|_| None).collect()).collect(),
        };
        let work = BlockWork::new(blocks.iter_mut().zip(saves).zip(outs));
        k.for_blocks(work.len(), &|i| {
            let Some(((st, sv), outs)) = work.take(i) else { return };
            let (r0, nr) = (st.row0, st.active.len());
            let mut per_step: Vec<_> = sv.into_iter().zip(outs).collect();
            let mut run = |j: usize, (sv, out): (Option<Saved<&mut [T]>>, &mut [T])| {
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

/// `xg[rows, G·H] = x[rows, In] · W_ih^T + b_ih` for a chunk of steps.
fn project_input<T: Float, K: HostKernels<T>>(k: &K, dir: &Direction<'_, T>, x: &[T], xg: &mut [T]) {
    let gh = dir.dims.gh;
    let rows = xg.len() / gh;
    dir.forward_product(k, Weight::Ih, x, xg);
    if let Some(b_ih) = dir.w.b_ih {
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
}

/// One forward step `t` of a block of rows: `xg_t: [n, G·H]` its rows of the input projection,
/// `save` where its activations go (the block's scratch when `None`), `out: [n, D·Hout]` its
/// rows of the layer output (columns of direction `d` written).
fn forward_step<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: &Direction<'_, T>,
    t: usize,
    xg_t: &[T],
    st: &mut FwdRows<T>,
    save: Option<Saved<&mut [T]>>,
    out: &mut [T],
) {
    let dm = &dir.dims;
    let (h, hout, d) = (dm.h, dm.hout, dir.d);
    let FwdRows { row0, h_prev, c_prev, hg, active, scratch } = st;
    for (i, a) in active.iter_mut().enumerate() {
        *a = dir.shape.is_active(t, *row0 + i);
    }
    // HG[n, G·H] = h_prev · W_hh^T (a GRU with the reset gate before the matmul computes it in
    // two parts around its gates: `gru_reset_before.rs`).
    let reset_before = gru_reset_before::applies(&dm.cell);
    if !reset_before {
        dir.forward_product(k, Weight::Hh, h_prev, hg);
    }
    // Without a save (inference) the step's h and c go to the scratch, which then trades places
    // with h_prev and c_prev instead of being copied into them.
    let in_scratch = save.is_none();
    let Saved { gates, extra, c, m, h: h_t } = save.unwrap_or_else(|| scratch.as_mut().map(|v| &mut v[..]));
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
        gates,
        extra,
        c: &mut *c,
        m: m_out,
    };
    match hg_reset_before {
        Some(hg) => gru_reset_before::forward_step(k, dir, hg, step),
        None => k.cell_step_forward(&dm.cell, step),
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
    for (b, &a) in active.iter().enumerate() {
        let hb = &mut h_t[b * hout..(b + 1) * hout];
        let ob = &mut out[b * dm.out_w + d * hout..b * dm.out_w + (d + 1) * hout];
        if a {
            ob.copy_from_slice(hb);
        } else {
            // Past its length a sequence keeps its state and outputs zero.
            hb.copy_from_slice(&h_prev[b * hout..(b + 1) * hout]);
            ob.fill(T::ZERO);
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
