//! The host time loop over layers, directions and steps. See the [module docs](super).

use super::{CellBackward, CellForward, HostKernels, Mat, MatMut, Pass, Weight, WeightOp};
use crate::backend::{prev_step, steps, GradMode};
use crate::config::{CellKind, RnnConfig};
use crate::element::Float;
use crate::params::{LayerRanges, ParamLayout};
use crate::shape::SeqShape;

/// Activations of one layer-direction saved by a training forward pass; each `[T, B, *]`, in
/// time order whatever the direction.
#[derive(Debug, Default, Clone)]
pub(crate) struct DirSave<T> {
    /// `[T, B, G·H]`: activated gates.
    gates: Vec<T>,
    /// `[T, B, H]`: GRU's `W_hn h_prev + b_hn`; empty for other cells.
    extra: Vec<T>,
    /// `[T, B, H]`: LSTM cell state after each step; empty for other cells.
    c: Vec<T>,
    /// `[T, B, H]`: LSTM's `o·tanh(c)` before the projection; empty without projection.
    m: Vec<T>,
    /// `[T, B, Hout]`: hidden state after each step (kept, not zeroed, past a length).
    h: Vec<T>,
}

/// What a host backend's training forward pass saves for backward.
///
/// Create an empty one with `Default` and pass it to `forward_training`; its buffers are
/// resized in place on every call, so reusing one reserve avoids reallocation.
#[derive(Debug, Default, Clone)]
pub struct HostReserve<T> {
    /// Identity and version of the plan that filled it.
    pub(crate) plan_id: u64,
    pub(crate) plan_version: u64,
    /// The shape of the call; `None` until filled.
    pub(crate) shape: Option<SeqShape>,
    /// `[T, B, I]`.
    x: Vec<T>,
    /// `[L·D, B, Hout]`, zeros when not given.
    h0: Vec<T>,
    /// `[L·D, B, H]` (LSTM), zeros when not given.
    c0: Vec<T>,
    /// Per layer, `[T, B, D·Hout]`: the layer's output, masked (the next layer's input).
    outputs: Vec<Vec<T>>,
    /// Per layer and direction (`l·D + d`).
    dirs: Vec<DirSave<T>>,
    /// Backward's large scratch buffers, kept from one call to the next.
    work: Workspace<T>,
}

/// A pool of buffers that a `&HostReserve` lends to backward, so that a training loop reusing
/// its reserve allocates (and page-faults in) its tens of megabytes of gradients of the gates
/// once, not on every call. A clone starts empty.
#[derive(Debug)]
struct Workspace<T>(std::sync::Mutex<Vec<Vec<T>>>);

impl<T> Default for Workspace<T> {
    fn default() -> Self {
        Workspace(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T> Clone for Workspace<T> {
    fn clone(&self) -> Self {
        Workspace::default()
    }
}

impl<T: Float> Workspace<T> {
    /// A buffer of `n` zeros, from the pool where it has one.
    fn zeroed(&self, n: usize) -> Vec<T> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest buffer that holds `n` (so that a small request does not take the
        // allocation a large one needs), else the largest, to grow.
        let fits = (0..pool.len()).filter(|&i| pool[i].capacity() >= n).min_by_key(|&i| pool[i].capacity());
        let best = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
        let mut v = best.map(|i| pool.swap_remove(i)).unwrap_or_default();
        drop(pool);
        v.clear();
        v.resize(n, T::ZERO);
        v
    }

    /// Returns buffers to the pool.
    fn give(&self, bufs: impl IntoIterator<Item = Vec<T>>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pool.extend(bufs.into_iter().filter(|v| v.capacity() > 0));
    }
}

impl<T: Send + Default> crate::backend::RnnReserve for HostReserve<T> {
    fn shape(&self) -> Option<&SeqShape> {
        self.shape.as_ref()
    }
}

/// Resizes `v` to `n` zeros, keeping its allocation.
fn fit<T: Float>(v: &mut Vec<T>, n: usize) {
    v.clear();
    v.resize(n, T::ZERO);
}

/// Resizes `v` to `n` elements that the caller then overwrites entirely: keeps the allocation
/// and, at an unchanged length, writes nothing (a reserve reused across calls is not cleared
/// every time).
fn fit_len<T: Float>(v: &mut Vec<T>, n: usize) {
    v.resize(n, T::ZERO);
}

/// Copies `src` into `v` (resized), keeping its allocation; zeros of length `n` if `src` is None.
fn fill_from<T: Float>(v: &mut Vec<T>, src: Option<&[T]>, n: usize) {
    match src {
        Some(s) => {
            v.clear();
            v.extend_from_slice(s);
        }
        None => fit(v, n),
    }
}

/// Block `i` of `len` elements of an optional buffer.
fn block<T>(buf: Option<&[T]>, i: usize, len: usize) -> Option<&[T]> {
    buf.map(|b| &b[i * len..(i + 1) * len])
}

fn block_mut<'a, T>(buf: &'a mut Option<&mut [T]>, i: usize, len: usize) -> Option<&'a mut [T]> {
    buf.as_deref_mut().map(|b| &mut b[i * len..(i + 1) * len])
}

/// Sizes shared by the loops of one layer-direction.
#[derive(Clone, Copy)]
struct Dims {
    cell: CellKind,
    t: usize,
    b: usize,
    h: usize,
    hout: usize,
    gh: usize,
    input: usize,
    /// `D·Hout`, the row width of a layer output.
    out_w: usize,
    proj: bool,
}

impl Dims {
    fn new(cfg: &RnnConfig, shape: &SeqShape, layer: usize) -> Self {
        Dims {
            cell: cfg.cell(),
            t: shape.steps(),
            b: shape.batch(),
            h: cfg.hidden_size(),
            hout: cfg.hidden_out_size(),
            gh: cfg.gates() * cfg.hidden_size(),
            input: cfg.layer_input_size(layer),
            out_w: cfg.output_size(),
            proj: cfg.proj_size() > 0,
        }
    }
    fn lstm(&self) -> bool {
        self.cell == CellKind::Lstm
    }
    fn gru(&self) -> bool {
        self.cell == CellKind::Gru
    }
}

/// Forward pass over the whole stack. Buffers have been validated by the caller:
/// `x: [T, B, I]`, `h0`/`hn: [L·D, B, Hout]`, `c0`/`cn: [L·D, B, H]`, `y: [T, B, D·Hout]`,
/// `w` in `layout` order. With `save`, fills it for [`backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Float, K: HostKernels<T>>(
    k: &K,
    layout: &ParamLayout,
    w: &[T],
    shape: &SeqShape,
    x: &[T],
    h0: Option<&[T]>,
    c0: Option<&[T]>,
    y: &mut [T],
    mut hn: Option<&mut [T]>,
    mut cn: Option<&mut [T]>,
    mut save: Option<&mut HostReserve<T>>,
) {
    let cfg = layout.config();
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let (tb, hout, h) = (shape.steps() * shape.batch(), cfg.hidden_out_size(), cfg.hidden_size());
    let (hlen, clen) = (shape.batch() * hout, shape.batch() * h);
    let lstm = cfg.cell().has_cell_state();

    if let Some(s) = save.as_deref_mut() {
        s.shape = Some(shape.clone());
        fill_from(&mut s.x, Some(x), x.len());
        fill_from(&mut s.h0, h0, nl * nd * hlen);
        if lstm {
            fill_from(&mut s.c0, c0, nl * nd * clen);
        } else {
            s.c0.clear();
        }
        s.outputs.resize_with(nl, Vec::new);
        s.dirs.resize_with(nl * nd, DirSave::default);
        s.dirs.truncate(nl * nd);
        for o in &mut s.outputs {
            fit_len(o, tb * cfg.output_size());
        }
    }

    // Inference keeps only two layer outputs alive: the one being read and the one being written.
    let mut prev_out: Vec<T> = Vec::new();
    let mut cur_out: Vec<T> = Vec::new();
    for l in 0..nl {
        let last = l + 1 == nl;
        match save.as_deref_mut() {
            Some(s) => {
                let (done, rest) = s.outputs.split_at_mut(l);
                let input: &[T] = if l == 0 { x } else { &done[l - 1] };
                for d in 0..nd {
                    let i = l * nd + d;
                    run_direction(
                        k,
                        Dims::new(cfg, shape, l),
                        i,
                        layout.layer(l, d),
                        w,
                        shape,
                        d == 1,
                        input,
                        &mut rest[0][..],
                        d,
                        block(Some(&s.h0), i, hlen),
                        if lstm { block(Some(&s.c0), i, clen) } else { None },
                        block_mut(&mut hn, i, hlen),
                        block_mut(&mut cn, i, clen),
                        Some(&mut s.dirs[i]),
                    );
                }
                if last {
                    y.copy_from_slice(&rest[0]);
                }
            }
            None => {
                if !last {
                    fit_len(&mut cur_out, tb * cfg.output_size());
                }
                let input: &[T] = if l == 0 { x } else { &prev_out };
                let out: &mut [T] = if last { &mut *y } else { &mut cur_out };
                for d in 0..nd {
                    let i = l * nd + d;
                    run_direction(
                        k,
                        Dims::new(cfg, shape, l),
                        i,
                        layout.layer(l, d),
                        w,
                        shape,
                        d == 1,
                        input,
                        out,
                        d,
                        block(h0, i, hlen),
                        block(c0, i, clen),
                        block_mut(&mut hn, i, hlen),
                        block_mut(&mut cn, i, clen),
                        None,
                    );
                }
                std::mem::swap(&mut prev_out, &mut cur_out);
            }
        }
    }
}

/// Steps per chunk of the input projection: enough rows (`steps·B ≥ 512`) for the GEMM to run
/// at full speed, at most 4 Mi floats of buffer where that allows more than one step.
fn projection_chunk(t_len: usize, batch: usize, gh: usize) -> usize {
    let by_rows = 512usize.div_ceil(batch.max(1));
    let by_size = (4usize << 20) / (batch.max(1) * gh.max(1));
    by_rows.min(by_size).max(1).min(t_len.max(1))
}

/// The weights of one layer-direction.
#[derive(Clone, Copy)]
struct DirWeights<'w, T> {
    w_ih: &'w [T],
    w_hh: &'w [T],
    b_ih: Option<&'w [T]>,
    b_hh: Option<&'w [T]>,
    w_hr: Option<&'w [T]>,
}

impl<'w, T> DirWeights<'w, T> {
    fn new(lr: &LayerRanges, w: &'w [T]) -> Self {
        DirWeights {
            w_ih: &w[lr.w_ih.clone()],
            w_hh: &w[lr.w_hh.clone()],
            b_ih: lr.b_ih.clone().map(|r| &w[r]),
            b_hh: lr.b_hh.clone().map(|r| &w[r]),
            w_hr: lr.w_hr.clone().map(|r| &w[r]),
        }
    }
}

/// Row widths of the buffers of a [`DirSave`]: `gates`, `extra`, `c`, `m`, `h` (0 where a cell
/// has no such buffer).
fn save_widths(dm: Dims) -> [usize; 5] {
    let Dims { h, hout, gh, .. } = dm;
    [gh, if dm.gru() { h } else { 0 }, if dm.lstm() { h } else { 0 }, if dm.proj { h } else { 0 }, hout]
}

/// One step of a block of rows of a [`DirSave`].
struct StepSave<'a, T> {
    gates: &'a mut [T],
    extra: &'a mut [T],
    c: &'a mut [T],
    m: &'a mut [T],
    h: &'a mut [T],
}

impl<T> DirSave<T> {
    /// Its buffers as one [`StepSave`] (of a scratch holding one step).
    fn as_step(&mut self) -> StepSave<'_, T> {
        StepSave { gates: &mut self.gates, extra: &mut self.extra, c: &mut self.c, m: &mut self.m, h: &mut self.h }
    }
}

/// Cuts `buf` (`[steps, B, w]`, or empty) into its blocks of rows `bounds`: `[block][step]`.
fn cut_rows<'a, T>(buf: &'a mut [T], steps: usize, bounds: &[usize]) -> Vec<Vec<&'a mut [T]>> {
    let parts = bounds.len() - 1;
    let mut out: Vec<Vec<&'a mut [T]>> = (0..parts).map(|_| Vec::with_capacity(steps)).collect();
    if buf.is_empty() || steps == 0 {
        out.iter_mut().for_each(|o| o.resize_with(steps, Default::default));
        return out;
    }
    let step_len = buf.len() / steps;
    for slab in buf.chunks_exact_mut(step_len) {
        for (o, blk) in out.iter_mut().zip(super::split_rows_mut(slab, bounds[parts], bounds)) {
            o.push(blk);
        }
    }
    out
}

/// Cuts the steps `steps` of `s` into blocks of rows `bounds`: `[block][step]`.
fn cut_save<'a, T>(
    s: &'a mut DirSave<T>,
    widths: [usize; 5],
    steps: std::ops::Range<usize>,
    bl: usize,
    bounds: &[usize],
) -> Vec<Vec<StepSave<'a, T>>> {
    let n = steps.len();
    let cut = |v: &'a mut Vec<T>, w: usize| cut_rows(&mut v[steps.start * bl * w..steps.end * bl * w], n, bounds).into_iter();
    let DirSave { gates, extra, c, m, h } = s;
    let [wg, we, wc, wm, wh] = widths;
    let (mut g, mut e, mut c, mut m, mut h) = (cut(gates, wg), cut(extra, we), cut(c, wc), cut(m, wm), cut(h, wh));
    (1..bounds.len())
        .map(|_| {
            let gs = g.next().unwrap_or_default();
            let (es, cs, ms, hs) =
                (e.next().unwrap_or_default(), c.next().unwrap_or_default(), m.next().unwrap_or_default(), h.next().unwrap_or_default());
            gs.into_iter().zip(es).zip(cs).zip(ms).zip(hs).map(|((((gates, extra), c), m), h)| StepSave { gates, extra, c, m, h }).collect()
        })
        .collect()
}

/// Takes the work of block `i` (each is taken once per `for_blocks` call).
fn take_work<W>(work: &[std::sync::Mutex<Option<W>>], i: usize) -> Option<W> {
    work[i].lock().unwrap_or_else(|e| e.into_inner()).take()
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
    scratch: DirSave<T>,
}

impl<T: Float> FwdRows<T> {
    fn new(rows: std::ops::Range<usize>, dm: Dims, h0: Option<&[T]>, c0: Option<&[T]>) -> Self {
        let n = rows.len();
        let [gw, ew, cw, mw, hw] = save_widths(dm);
        let init = |src: Option<&[T]>, w: usize| src.map_or_else(|| vec![T::ZERO; n * w], |s| s[rows.start * w..rows.end * w].to_vec());
        FwdRows {
            row0: rows.start,
            h_prev: init(h0, dm.hout),
            c_prev: init(c0, cw),
            hg: vec![T::ZERO; n * dm.gh],
            active: vec![false; n],
            scratch: DirSave {
                gates: vec![T::ZERO; n * gw],
                extra: vec![T::ZERO; n * ew],
                c: vec![T::ZERO; n * cw],
                m: vec![T::ZERO; n * mw],
                h: vec![T::ZERO; n * hw],
            },
        }
    }
}

/// One forward step `t` of a block of rows: `xg_t: [n, G·H]` its rows of the input projection,
/// `save` where its activations go (the block's scratch when `None`), `out: [n, D·Hout]` its
/// rows of the layer output (columns of direction `d` written).
#[allow(clippy::too_many_arguments)]
fn forward_step<T: Float, K: HostKernels<T>>(
    k: &K,
    dm: Dims,
    ld: usize,
    wts: DirWeights<'_, T>,
    shape: &SeqShape,
    t: usize,
    d: usize,
    xg_t: &[T],
    st: &mut FwdRows<T>,
    save: Option<StepSave<'_, T>>,
    out: &mut [T],
) {
    let Dims { h, hout, gh, .. } = dm;
    let FwdRows { row0, h_prev, c_prev, hg, active, scratch } = st;
    let n = active.len();
    for (i, a) in active.iter_mut().enumerate() {
        *a = shape.is_active(t, *row0 + i);
    }
    // HG[n, G·H] = h_prev · W_hh^T
    k.weight_gemm(
        WeightOp::fwd(Weight::Hh, ld),
        Mat::new(h_prev, n, hout),
        Mat::new(wts.w_hh, gh, hout).t(),
        T::ZERO,
        MatMut::new(hg, n, gh),
    );
    // Without a save (inference) the step's h and c go to the scratch, which then trades places
    // with h_prev and c_prev instead of being copied into them.
    let in_scratch = save.is_none();
    let StepSave { gates, extra, c, m, h: h_t } = save.unwrap_or_else(|| scratch.as_step());
    // Without a projection the cell writes the new hidden state directly.
    let m_out: &mut [T] = if dm.proj { &mut *m } else { &mut *h_t };
    k.cell_forward(
        dm.cell,
        CellForward { active, hidden: h, xg: xg_t, hg, b_hh: wts.b_hh, h_prev, c_prev, gates, extra, c: &mut *c, m: m_out },
    );
    if let Some(w_hr) = wts.w_hr {
        // h[n, Hout] = m · W_hr^T; m of inactive rows is zeroed so that the saved m is clean
        // for the dW_hr GEMM of backward.
        for (b, &a) in active.iter().enumerate() {
            if !a {
                m[b * h..(b + 1) * h].fill(T::ZERO);
            }
        }
        k.weight_gemm(WeightOp::fwd(Weight::Hr, ld), Mat::new(m, n, h), Mat::new(w_hr, hout, h).t(), T::ZERO, MatMut::new(h_t, n, hout));
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

/// One layer-direction forward. `input: [T, B, In]`; writes columns `d·Hout..(d+1)·Hout` of
/// `out: [T, B, D·Hout]`; `h0: [B, Hout]`, `c0: [B, H]` (zeros when `None`).
///
/// The batch rows are cut into the blocks of [`HostKernels::row_blocks`], which run their steps
/// on their own between the input projections (one large GEMM over all rows per chunk of
/// steps): within a layer, rows never interact.
#[allow(clippy::too_many_arguments)]
fn run_direction<T: Float, K: HostKernels<T>>(
    k: &K,
    dm: Dims,
    ld: usize,
    lr: &LayerRanges,
    w: &[T],
    shape: &SeqShape,
    reverse: bool,
    input: &[T],
    out: &mut [T],
    d: usize,
    h0: Option<&[T]>,
    c0: Option<&[T]>,
    hn: Option<&mut [T]>,
    cn: Option<&mut [T]>,
    mut save: Option<&mut DirSave<T>>,
) {
    let Dims { t: tl, b: bl, gh, .. } = dm;
    let wts = DirWeights::new(lr, w);
    let widths = save_widths(dm);
    if let Some(s) = save.as_deref_mut() {
        for (v, w) in [&mut s.gates, &mut s.extra, &mut s.c, &mut s.m, &mut s.h].into_iter().zip(widths) {
            fit_len(v, tl * bl * w);
        }
    }
    let bounds = k.row_blocks(bl, Pass::Forward);
    let mut blocks: Vec<FwdRows<T>> = bounds.windows(2).map(|r| FwdRows::new(r[0]..r[1], dm, h0, c0)).collect();
    let serial = k.serial();
    // The kernels of a block: all of the backend's threads when there is only one.
    let kb: &K = if blocks.len() > 1 { &serial } else { k };

    // XG = X · W_ih^T + b_ih for a chunk of steps at once, computed when the time loop reaches
    // it: one large GEMM per chunk, into a buffer small enough to still be in cache when the
    // steps read it (all T steps at once would be T·B·G·H floats, written and read from memory).
    let chunk = projection_chunk(tl, bl, gh);
    let mut xg = vec![T::ZERO; chunk * bl * gh];
    let chunks: Vec<std::ops::Range<usize>> = if reverse {
        (0..tl.div_ceil(chunk)).map(|i| tl.saturating_sub((i + 1) * chunk)..tl - i * chunk).collect()
    } else {
        (0..tl.div_ceil(chunk)).map(|i| i * chunk..((i + 1) * chunk).min(tl)).collect()
    };
    for steps in chunks {
        let rows = steps.len() * bl;
        let xg = &mut xg[..rows * gh];
        k.weight_gemm(
            WeightOp::fwd(Weight::Ih, ld),
            Mat::new(&input[steps.start * bl * dm.input..steps.end * bl * dm.input], rows, dm.input),
            Mat::new(wts.w_ih, gh, dm.input).t(),
            T::ZERO,
            MatMut::new(xg, rows, gh),
        );
        if let Some(b_ih) = wts.b_ih {
            // In the blocks of rows the backend would run in parallel (an elementwise add: the
            // cut changes no bit).
            let cuts = k.row_blocks(rows, Pass::Forward);
            let parts: Vec<_> = super::split_rows_mut(xg, rows, &cuts).into_iter().map(|p| std::sync::Mutex::new(Some(p))).collect();
            k.for_blocks(parts.len(), &|i| {
                if let Some(part) = parts[i].lock().ok().and_then(|mut p| p.take()) {
                    for row in part.chunks_exact_mut(gh) {
                        for (v, &b) in row.iter_mut().zip(b_ih) {
                            *v += b;
                        }
                    }
                }
            });
        }
        let xg = &*xg;

        // Each block's rows of this chunk's outputs and saved activations, [block][step].
        let n = steps.len();
        let mut outs = cut_rows(&mut out[steps.start * bl * dm.out_w..steps.end * bl * dm.out_w], n, &bounds).into_iter();
        let mut saves: Vec<Vec<Option<StepSave<'_, T>>>> = match save.as_deref_mut() {
            Some(s) => cut_save(s, widths, steps.clone(), bl, &bounds).into_iter().map(|v| v.into_iter().map(Some).collect()).collect(),
            None => (0..bounds.len() - 1).map(|_| (0..n).map(|_| None).collect()).collect(),
        };
        let work: Vec<_> = blocks
            .iter_mut()
            .zip(saves.drain(..))
            .map(|(st, sv)| std::sync::Mutex::new(Some((st, sv, outs.next().unwrap_or_default()))))
            .collect();
        k.for_blocks(work.len(), &|i| {
            let Some((st, sv, outs)) = take_work(&work, i) else { return };
            let (r0, nr) = (st.row0, st.active.len());
            let mut per_step: Vec<_> = sv.into_iter().zip(outs).collect();
            let mut run = |j: usize, (sv, out): (Option<StepSave<'_, T>>, &mut [T])| {
                let xg_t = &xg[(j * bl + r0) * gh..(j * bl + r0 + nr) * gh];
                forward_step(kb, dm, ld, wts, shape, steps.start + j, d, xg_t, st, sv, out);
            };
            if reverse {
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
}

/// Backward pass over the whole stack from a filled reserve. Buffers have been validated by
/// the caller against the reserve's shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float, K: HostKernels<T>>(
    k: &K,
    layout: &ParamLayout,
    w: &[T],
    s: &HostReserve<T>,
    dy: Option<&[T]>,
    dhn: Option<&[T]>,
    dcn: Option<&[T]>,
    dx: Option<&mut [T]>,
    mut dh0: Option<&mut [T]>,
    mut dc0: Option<&mut [T]>,
    mut dparams: Option<&mut [T]>,
    mode: GradMode,
) {
    let cfg = layout.config();
    let shape = s.shape.as_ref().expect("backward on a filled reserve");
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let (bl, tb) = (shape.batch(), shape.steps() * shape.batch());
    let (hlen, clen) = (bl * cfg.hidden_out_size(), bl * cfg.hidden_size());
    let lstm = cfg.cell().has_cell_state();
    if let (Some(dp), GradMode::Overwrite) = (dparams.as_deref_mut(), mode) {
        dp.fill(T::ZERO);
    }

    // Gradient w.r.t. the output of the layer being processed, [T, B, D·Hout].
    let mut d_out = s.work.zeroed(tb * cfg.output_size());
    if let Some(dy) = dy {
        d_out.copy_from_slice(dy);
    }
    let want_dx = dx.is_some();
    for l in (0..nl).rev() {
        let input: &[T] = if l == 0 { &s.x } else { &s.outputs[l - 1] };
        let dims = Dims::new(cfg, shape, l);
        let mut d_in = if l > 0 || want_dx { s.work.zeroed(tb * dims.input) } else { Vec::new() };
        for d in 0..nd {
            let i = l * nd + d;
            bptt_direction(
                k,
                dims,
                i,
                layout.layer(l, d),
                w,
                shape,
                d,
                input,
                &d_out,
                &s.dirs[i],
                block(Some(&s.h0), i, hlen).expect("h0 saved"),
                if lstm { block(Some(&s.c0), i, clen) } else { None },
                block(dhn, i, hlen),
                if lstm { block(dcn, i, clen) } else { None },
                (!d_in.is_empty()).then_some(&mut d_in[..]),
                block_mut(&mut dh0, i, hlen),
                block_mut(&mut dc0, i, clen),
                dparams.as_deref_mut(),
                &s.work,
            );
        }
        s.work.give([std::mem::replace(&mut d_out, d_in)]);
    }
    if let Some(dx) = dx {
        dx.copy_from_slice(&d_out);
    }
    s.work.give([d_out]);
}

/// Column sums of `g: [rows, n]` added to `acc: [n]`.
fn add_col_sums<T: Float>(acc: &mut [T], g: &[T], n: usize) {
    for row in g.chunks_exact(n) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// What a block of batch rows `row0..row0 + n` carries from step to step of a backward
/// layer-direction.
struct BwdRows<T> {
    row0: usize,
    /// `[n, Hout]`: the gradient w.r.t. the hidden state from the later steps.
    dh_carry: Vec<T>,
    /// `[n, H]` (LSTM; empty otherwise): the same for the cell state.
    dc_carry: Vec<T>,
    /// `[n, Hout]`: `dh` of the current step, `dh_carry` plus the output's gradient.
    dh_t: Vec<T>,
    /// `[n, H]` (with a projection; empty otherwise): `dh_t · W_hr`.
    dm_t: Vec<T>,
    /// `[n, H]`: the cell's `dh_direct`.
    dh_direct: Vec<T>,
    /// `[n, G·H]`: `dGh` of the step where it is not kept for the weight gradient (where it
    /// equals `dGi`: every cell but GRU).
    dgh: Vec<T>,
    /// `[n]`.
    active: Vec<bool>,
}

impl<T: Float> BwdRows<T> {
    fn new(rows: std::ops::Range<usize>, dm: Dims, dhn: Option<&[T]>, dcn: Option<&[T]>) -> Self {
        let n = rows.len();
        let init = |src: Option<&[T]>, w: usize| src.map_or_else(|| vec![T::ZERO; n * w], |s| s[rows.start * w..rows.end * w].to_vec());
        BwdRows {
            row0: rows.start,
            dh_carry: init(dhn, dm.hout),
            dc_carry: init(dcn, if dm.lstm() { dm.h } else { 0 }),
            dh_t: vec![T::ZERO; n * dm.hout],
            dm_t: vec![T::ZERO; if dm.proj { n * dm.h } else { 0 }],
            dh_direct: vec![T::ZERO; n * dm.h],
            dgh: vec![T::ZERO; if dm.gru() { 0 } else { n * dm.gh }],
            active: vec![false; n],
        }
    }
}

/// What one backward step reads of a layer-direction: its saved activations, initial state and
/// output gradient.
#[derive(Clone, Copy)]
struct BwdInputs<'a, T> {
    sv: &'a DirSave<T>,
    h0: &'a [T],
    c0: &'a [T],
    /// `[T, B, D·Hout]`.
    d_out: &'a [T],
}

/// One backward step `t` of a block of rows: writes its rows of `dGi` (`dgi: [n, G·H]`), of
/// `dGh` (GRU only, `dgh`), of `dH` (with a projection, `dh_all: [n, Hout]`), and carries the
/// state gradients in `st`.
#[allow(clippy::too_many_arguments)]
fn backward_step<T: Float, K: HostKernels<T>>(
    k: &K,
    dm: Dims,
    ld: usize,
    wts: DirWeights<'_, T>,
    shape: &SeqShape,
    t: usize,
    d: usize,
    inp: BwdInputs<'_, T>,
    st: &mut BwdRows<T>,
    dgi: &mut [T],
    dgh: &mut [T],
    dh_all: &mut [T],
) {
    let Dims { t: tl, b: bl, h, hout, gh, .. } = dm;
    let reverse = d == 1;
    let [_, ew, cw, _, _] = save_widths(dm);
    let BwdRows { row0, dh_carry, dc_carry, dh_t, dm_t, dh_direct, dgh: dgh_scratch, active } = st;
    let (r0, n) = (*row0, active.len());
    // Rows r0..r0+n of step s of a saved [T, B, w] buffer.
    let rows = |s: usize, w: usize| (s * bl + r0) * w..(s * bl + r0 + n) * w;
    for (i, a) in active.iter_mut().enumerate() {
        *a = shape.is_active(t, r0 + i);
    }
    let sv = inp.sv;
    let p = prev_step(t, tl, reverse);
    let h_prev = p.map_or(&inp.h0[r0 * hout..(r0 + n) * hout], |p| &sv.h[rows(p, hout)]);
    let c_prev = p.map_or(&inp.c0[r0 * cw..(r0 + n) * cw], |p| &sv.c[rows(p, cw)]);
    for (b, &a) in active.iter().enumerate() {
        let dst = &mut dh_t[b * hout..(b + 1) * hout];
        dst.copy_from_slice(&dh_carry[b * hout..(b + 1) * hout]);
        if a {
            let row = (t * bl + r0 + b) * dm.out_w + d * hout;
            for (v, &g) in dst.iter_mut().zip(&inp.d_out[row..row + hout]) {
                *v += g;
            }
        }
    }
    let dm_slice: &[T] = match wts.w_hr {
        Some(w_hr) => {
            // m → h = m · W_hr^T, so dm = dh · W_hr.
            k.weight_gemm(
                WeightOp::bwd(Weight::Hr, ld),
                Mat::new(dh_t, n, hout),
                Mat::new(w_hr, hout, h),
                T::ZERO,
                MatMut::new(dm_t, n, h),
            );
            for (b, &a) in active.iter().enumerate() {
                if a {
                    dh_all[b * hout..(b + 1) * hout].copy_from_slice(&dh_t[b * hout..(b + 1) * hout]);
                }
            }
            dm_t
        }
        None => dh_t,
    };
    let dgh: &mut [T] = if dm.gru() { dgh } else { dgh_scratch };
    k.cell_backward(
        dm.cell,
        CellBackward {
            active,
            hidden: h,
            gates: &sv.gates[rows(t, gh)],
            extra: &sv.extra[rows(t, ew)],
            c: &sv.c[rows(t, cw)],
            c_prev,
            h_prev: if dm.gru() { h_prev } else { &[] },
            dm: dm_slice,
            dc: dc_carry,
            dgi,
            dgh: &mut *dgh,
            dh_direct: &mut *dh_direct,
        },
    );
    // dh_prev = dGh · W_hh (+ GRU's direct term); inactive rows pass dh through unchanged.
    k.weight_gemm(
        WeightOp::bwd(Weight::Hh, ld),
        Mat::new(dgh, n, gh),
        Mat::new(wts.w_hh, gh, hout),
        T::ZERO,
        MatMut::new(dh_carry, n, hout),
    );
    for (b, &a) in active.iter().enumerate() {
        let dst = &mut dh_carry[b * hout..(b + 1) * hout];
        if !a {
            dst.copy_from_slice(&dh_t[b * hout..(b + 1) * hout]);
        } else if dm.gru() {
            for (v, &g) in dst.iter_mut().zip(&dh_direct[b * h..(b + 1) * h]) {
                *v += g;
            }
        }
    }
}

/// BPTT through one layer-direction. `d_out: [T, B, D·Hout]` is the gradient w.r.t. the
/// layer's output (this direction reads its columns); adds `dGi · W_ih` into `d_in: [T, B, In]`,
/// writes `dh0: [B, Hout]`, `dc0: [B, H]`, and adds the parameter gradients into `dparams`.
///
/// The time loop runs in the blocks of rows of [`HostKernels::row_blocks`], each on its own;
/// the weight gradients are large GEMMs over all steps after it.
#[allow(clippy::too_many_arguments)]
fn bptt_direction<T: Float, K: HostKernels<T>>(
    k: &K,
    dm: Dims,
    ld: usize,
    lr: &LayerRanges,
    w: &[T],
    shape: &SeqShape,
    d: usize,
    input: &[T],
    d_out: &[T],
    sv: &DirSave<T>,
    h0: &[T],
    c0: Option<&[T]>,
    dhn: Option<&[T]>,
    dcn: Option<&[T]>,
    d_in: Option<&mut [T]>,
    dh0: Option<&mut [T]>,
    dc0: Option<&mut [T]>,
    dparams: Option<&mut [T]>,
    work: &Workspace<T>,
) {
    let Dims { t: tl, b: bl, h, hout, gh, .. } = dm;
    let reverse = d == 1;
    let tb = tl * bl;
    let wts = DirWeights::new(lr, w);
    let zeros_c = vec![T::ZERO; if dm.lstm() { bl * h } else { 0 }];
    let inp = BwdInputs { sv, h0, c0: c0.unwrap_or(&zeros_c), d_out };

    // dGi of every step (and dGh, which differs from it for GRU only): the left factors of the
    // weight gradients. dH of every step (inactive rows zero): the left factor of dW_hr.
    let mut dgi_all = work.zeroed(tb * gh);
    let mut dgh_all = if dm.gru() { work.zeroed(tb * gh) } else { Vec::new() };
    let mut dh_all = if dm.proj { work.zeroed(tb * hout) } else { Vec::new() };
    let bounds = k.row_blocks(bl, Pass::Backward);
    let mut blocks: Vec<BwdRows<T>> =
        bounds.windows(2).map(|r| BwdRows::new(r[0]..r[1], dm, dhn, if dm.lstm() { dcn } else { None })).collect();
    {
        let serial = k.serial();
        let kb: &K = if blocks.len() > 1 { &serial } else { k };
        let mut dgi = cut_rows(&mut dgi_all, tl, &bounds).into_iter();
        let mut dgh = cut_rows(&mut dgh_all, tl, &bounds).into_iter();
        let mut dh = cut_rows(&mut dh_all, tl, &bounds).into_iter();
        let work: Vec<_> = blocks
            .iter_mut()
            .map(|st| {
                let (a, b, c) = (dgi.next().unwrap_or_default(), dgh.next().unwrap_or_default(), dh.next().unwrap_or_default());
                std::sync::Mutex::new(Some((st, a, b, c)))
            })
            .collect();
        k.for_blocks(work.len(), &|i| {
            let Some((st, mut dgi, mut dgh, mut dh)) = take_work(&work, i) else { return };
            for t in steps(tl, !reverse) {
                backward_step(kb, dm, ld, wts, shape, t, d, inp, st, &mut *dgi[t], &mut *dgh[t], &mut *dh[t]);
            }
        });
    }
    if let Some(dh0) = dh0 {
        for st in &blocks {
            dh0[st.row0 * hout..(st.row0 + st.active.len()) * hout].copy_from_slice(&st.dh_carry);
        }
    }
    if let Some(dc0) = dc0 {
        for st in &blocks {
            dc0[st.row0 * h..(st.row0 + st.active.len()) * h].copy_from_slice(&st.dc_carry);
        }
    }

    // dGh equals dGi for every cell but GRU.
    let dgh_ref: &[T] = if dm.gru() { &dgh_all } else { &dgi_all };
    if let Some(dp) = dparams {
        // dW_ih += dGi^T · X
        k.gemm(
            T::ONE,
            Mat::new(&dgi_all, tb, gh).t(),
            Mat::new(input, tb, dm.input),
            T::ONE,
            MatMut::new(&mut dp[lr.w_ih.clone()], gh, dm.input),
        );
        // dW_hh += dGh^T · H_prev, where H_prev is the saved states shifted by one step, with h0
        // at the first processed step: two GEMMs, no copy.
        let dw_hh = &mut dp[lr.w_hh.clone()];
        let (first, rest_g, rest_h) = if reverse {
            (tl - 1, &dgh_ref[..(tl - 1) * bl * gh], &sv.h[bl * hout..])
        } else {
            (0, &dgh_ref[bl * gh..], &sv.h[..(tl - 1) * bl * hout])
        };
        k.gemm(
            T::ONE,
            Mat::new(rest_g, (tl - 1) * bl, gh).t(),
            Mat::new(rest_h, (tl - 1) * bl, hout),
            T::ONE,
            MatMut::new(&mut *dw_hh, gh, hout),
        );
        k.gemm(
            T::ONE,
            Mat::new(&dgh_ref[first * bl * gh..(first + 1) * bl * gh], bl, gh).t(),
            Mat::new(h0, bl, hout),
            T::ONE,
            MatMut::new(dw_hh, gh, hout),
        );
        if let Some(r) = lr.b_ih.clone() {
            add_col_sums(&mut dp[r], &dgi_all, gh);
        }
        if let Some(r) = lr.b_hh.clone() {
            add_col_sums(&mut dp[r], dgh_ref, gh);
        }
        if let Some(r) = lr.w_hr.clone() {
            // dW_hr += dH^T · M
            k.gemm(T::ONE, Mat::new(&dh_all, tb, hout).t(), Mat::new(&sv.m, tb, h), T::ONE, MatMut::new(&mut dp[r], hout, h));
        }
    }
    if let Some(d_in) = d_in {
        // dX += dGi · W_ih
        k.weight_gemm(
            WeightOp::bwd(Weight::Ih, ld),
            Mat::new(&dgi_all, tb, gh),
            Mat::new(wts.w_ih, gh, dm.input),
            T::ONE,
            MatMut::new(d_in, tb, dm.input),
        );
    }
    work.give([dgi_all, dgh_all, dh_all]);
}

#[cfg(test)]
mod tests {
    use super::Workspace;

    #[test]
    fn workspace_lends_the_smallest_buffer_that_fits() {
        let w = Workspace::<f32>::default();
        w.give([Vec::with_capacity(1000), Vec::with_capacity(100)]);
        let small = w.zeroed(50);
        assert_eq!((small.len(), small.capacity()), (50, 100));
        let big = w.zeroed(800);
        assert_eq!(big.capacity(), 1000);
        assert!(big.iter().all(|&v| v == 0.0));
        // Nothing fits: the largest grows.
        w.give([small, big]);
        assert!(w.zeroed(2000).capacity() >= 2000);
    }
}
