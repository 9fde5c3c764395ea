//! The host time loop over layers, directions and steps. See the [module docs](super).

use super::{CellBackward, CellForward, HostKernels, Mat, MatMut, Weight, WeightOp};
use crate::backend::GradMode;
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

/// Steps in processing order: forward `0..T`, reverse `T-1..=0`.
fn steps(t_len: usize, reverse: bool) -> Box<dyn Iterator<Item = usize>> {
    if reverse {
        Box::new((0..t_len).rev())
    } else {
        Box::new(0..t_len)
    }
}

/// The step processed just before `t` in the direction, or `None` at the first one.
fn prev_step(t: usize, t_len: usize, reverse: bool) -> Option<usize> {
    if reverse {
        (t + 1 < t_len).then_some(t + 1)
    } else {
        t.checked_sub(1)
    }
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
            fit(o, tb * cfg.output_size());
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
                    fit(&mut cur_out, tb * cfg.output_size());
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

/// One layer-direction forward. `input: [T, B, In]`; writes columns `d·Hout..(d+1)·Hout` of
/// `out: [T, B, D·Hout]`; `h0: [B, Hout]`, `c0: [B, H]` (zeros when `None`).
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
    let Dims { t: tl, b: bl, h, hout, gh, .. } = dm;
    let w_ih = &w[lr.w_ih.clone()];
    let w_hh = &w[lr.w_hh.clone()];
    let b_hh = lr.b_hh.clone().map(|r| &w[r]);
    let w_hr = lr.w_hr.clone().map(|r| &w[r]);

    // XG = X · W_ih^T + b_ih for a chunk of steps at once, computed when the time loop reaches
    // it: one large GEMM per chunk, into a buffer small enough to still be in cache when the
    // steps read it (all T steps at once would be T·B·G·H floats, written and read from memory).
    let chunk = projection_chunk(tl, bl, gh);
    let mut xg = vec![T::ZERO; chunk * bl * gh];
    let mut xg_steps = 0..0;
    let b_ih = lr.b_ih.clone().map(|r| &w[r]);
    let project = |t: usize, xg: &mut [T]| -> std::ops::Range<usize> {
        let steps = if reverse { (t + 1).saturating_sub(chunk)..t + 1 } else { t..(t + chunk).min(tl) };
        let rows = steps.len() * bl;
        let xg = &mut xg[..rows * gh];
        k.weight_gemm(
            WeightOp::fwd(Weight::Ih, ld),
            Mat::new(&input[steps.start * bl * dm.input..steps.end * bl * dm.input], rows, dm.input),
            Mat::new(w_ih, gh, dm.input).t(),
            T::ZERO,
            MatMut::new(xg, rows, gh),
        );
        if let Some(b_ih) = b_ih {
            for row in xg.chunks_exact_mut(gh) {
                for (v, &b) in row.iter_mut().zip(b_ih) {
                    *v += b;
                }
            }
        }
        steps
    };

    let mut h_prev = h0.map_or_else(|| vec![T::ZERO; bl * hout], <[T]>::to_vec);
    let mut c_prev = if dm.lstm() { c0.map_or_else(|| vec![T::ZERO; bl * h], <[T]>::to_vec) } else { Vec::new() };
    let mut hg = vec![T::ZERO; bl * gh];
    let mut active = vec![false; bl];
    // Per-step outputs go to the reserve when training, to this scratch otherwise.
    let cn_len = if dm.lstm() { bl * h } else { 0 };
    let ex_len = if dm.gru() { bl * h } else { 0 };
    let m_len = if dm.proj { bl * h } else { 0 };
    let mut scratch = DirSave {
        gates: vec![T::ZERO; bl * gh],
        extra: vec![T::ZERO; ex_len],
        c: vec![T::ZERO; cn_len],
        m: vec![T::ZERO; m_len],
        h: vec![T::ZERO; bl * hout],
    };
    if let Some(s) = save.as_deref_mut() {
        fit(&mut s.gates, tl * bl * gh);
        fit(&mut s.extra, tl * ex_len);
        fit(&mut s.c, tl * cn_len);
        fit(&mut s.m, tl * m_len);
        fit(&mut s.h, tl * bl * hout);
    }

    for t in steps(tl, reverse) {
        if !xg_steps.contains(&t) {
            xg_steps = project(t, &mut xg);
        }
        let xg_t = &xg[(t - xg_steps.start) * bl * gh..(t - xg_steps.start + 1) * bl * gh];
        for (b, a) in active.iter_mut().enumerate() {
            *a = shape.is_active(t, b);
        }
        // HG[B, G·H] = h_prev · W_hh^T
        k.weight_gemm(
            WeightOp::fwd(Weight::Hh, ld),
            Mat::new(&h_prev, bl, hout),
            Mat::new(w_hh, gh, hout).t(),
            T::ZERO,
            MatMut::new(&mut hg, bl, gh),
        );

        let (st, i) = match save.as_deref_mut() {
            Some(s) => (s, t),
            None => (&mut scratch, 0),
        };
        let gates = &mut st.gates[i * bl * gh..(i + 1) * bl * gh];
        let extra = &mut st.extra[i * ex_len..(i + 1) * ex_len];
        let c = &mut st.c[i * cn_len..(i + 1) * cn_len];
        let m = &mut st.m[i * m_len..(i + 1) * m_len];
        let h_t = &mut st.h[i * bl * hout..(i + 1) * bl * hout];
        // Without a projection the cell writes the new hidden state directly.
        let m_out: &mut [T] = if dm.proj { &mut *m } else { &mut *h_t };
        k.cell_forward(
            dm.cell,
            CellForward {
                active: &active,
                hidden: h,
                xg: xg_t,
                hg: &hg,
                b_hh,
                h_prev: &h_prev,
                c_prev: &c_prev,
                gates,
                extra,
                c: &mut *c,
                m: m_out,
            },
        );
        if let Some(w_hr) = w_hr {
            // h[B, Hout] = m · W_hr^T; m of inactive rows is zeroed so that the saved m is clean
            // for the dW_hr GEMM of backward.
            for (b, &a) in active.iter().enumerate() {
                if !a {
                    m[b * h..(b + 1) * h].fill(T::ZERO);
                }
            }
            k.weight_gemm(
                WeightOp::fwd(Weight::Hr, ld),
                Mat::new(m, bl, h),
                Mat::new(w_hr, hout, h).t(),
                T::ZERO,
                MatMut::new(h_t, bl, hout),
            );
        }
        let row = t * bl * dm.out_w + d * hout;
        for b in 0..bl {
            let hb = &mut h_t[b * hout..(b + 1) * hout];
            let ob = &mut out[row + b * dm.out_w..row + b * dm.out_w + hout];
            if active[b] {
                ob.copy_from_slice(hb);
            } else {
                // Past its length a sequence keeps its state and outputs zero.
                hb.copy_from_slice(&h_prev[b * hout..(b + 1) * hout]);
                ob.fill(T::ZERO);
            }
        }
        h_prev.copy_from_slice(h_t);
        c_prev.copy_from_slice(c);
    }
    if let Some(hn) = hn {
        hn.copy_from_slice(&h_prev);
    }
    if let Some(cn) = cn {
        cn.copy_from_slice(&c_prev);
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
    let mut d_out = dy.map_or_else(|| vec![T::ZERO; tb * cfg.output_size()], <[T]>::to_vec);
    let want_dx = dx.is_some();
    for l in (0..nl).rev() {
        let input: &[T] = if l == 0 { &s.x } else { &s.outputs[l - 1] };
        let dims = Dims::new(cfg, shape, l);
        let mut d_in = if l > 0 || want_dx { vec![T::ZERO; tb * dims.input] } else { Vec::new() };
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
            );
        }
        d_out = d_in;
    }
    if let Some(dx) = dx {
        dx.copy_from_slice(&d_out);
    }
}

/// Column sums of `g: [rows, n]` added to `acc: [n]`.
fn add_col_sums<T: Float>(acc: &mut [T], g: &[T], n: usize) {
    for row in g.chunks_exact(n) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// BPTT through one layer-direction. `d_out: [T, B, D·Hout]` is the gradient w.r.t. the
/// layer's output (this direction reads its columns); adds `dGi · W_ih` into `d_in: [T, B, In]`,
/// writes `dh0: [B, Hout]`, `dc0: [B, H]`, and adds the parameter gradients into `dparams`.
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
) {
    let Dims { t: tl, b: bl, h, hout, gh, .. } = dm;
    let reverse = d == 1;
    let tb = tl * bl;
    let w_hh = &w[lr.w_hh.clone()];
    let w_hr = lr.w_hr.clone().map(|r| &w[r]);
    let ex_len = if dm.gru() { bl * h } else { 0 };
    let cn_len = if dm.lstm() { bl * h } else { 0 };

    let mut dh_carry = dhn.map_or_else(|| vec![T::ZERO; bl * hout], <[T]>::to_vec);
    let mut dc_carry = if dm.lstm() { dcn.map_or_else(|| vec![T::ZERO; bl * h], <[T]>::to_vec) } else { Vec::new() };
    let zeros_c = vec![T::ZERO; cn_len];
    let c0 = c0.unwrap_or(&zeros_c);
    let mut dgi_all = vec![T::ZERO; tb * gh];
    let mut dgh_all = vec![T::ZERO; tb * gh];
    // dh of every step, inactive rows zero: the left factor of dW_hr.
    let mut dh_all = if dm.proj { vec![T::ZERO; tb * hout] } else { Vec::new() };
    let mut dh_t = vec![T::ZERO; bl * hout];
    let mut dm_t = vec![T::ZERO; if dm.proj { bl * h } else { 0 }];
    let mut dh_direct = vec![T::ZERO; bl * h];
    let mut active = vec![false; bl];

    for t in steps(tl, !reverse) {
        for (b, a) in active.iter_mut().enumerate() {
            *a = shape.is_active(t, b);
        }
        let p = prev_step(t, tl, reverse);
        let h_prev = p.map_or(h0, |p| &sv.h[p * bl * hout..(p + 1) * bl * hout]);
        let c_prev = p.map_or(c0, |p| &sv.c[p * cn_len..(p + 1) * cn_len]);
        let row = t * bl * dm.out_w + d * hout;
        for b in 0..bl {
            let dst = &mut dh_t[b * hout..(b + 1) * hout];
            dst.copy_from_slice(&dh_carry[b * hout..(b + 1) * hout]);
            if active[b] {
                for (v, &g) in dst.iter_mut().zip(&d_out[row + b * dm.out_w..row + b * dm.out_w + hout]) {
                    *v += g;
                }
            }
        }
        let dm_slice: &[T] = match w_hr {
            Some(w_hr) => {
                // m → h = m · W_hr^T, so dm = dh · W_hr.
                k.weight_gemm(
                    WeightOp::bwd(Weight::Hr, ld),
                    Mat::new(&dh_t, bl, hout),
                    Mat::new(w_hr, hout, h),
                    T::ZERO,
                    MatMut::new(&mut dm_t, bl, h),
                );
                let dst = &mut dh_all[t * bl * hout..(t + 1) * bl * hout];
                for b in 0..bl {
                    if active[b] {
                        dst[b * hout..(b + 1) * hout].copy_from_slice(&dh_t[b * hout..(b + 1) * hout]);
                    }
                }
                &dm_t
            }
            None => &dh_t,
        };
        let dgi = &mut dgi_all[t * bl * gh..(t + 1) * bl * gh];
        let dgh = &mut dgh_all[t * bl * gh..(t + 1) * bl * gh];
        k.cell_backward(
            dm.cell,
            CellBackward {
                active: &active,
                hidden: h,
                gates: &sv.gates[t * bl * gh..(t + 1) * bl * gh],
                extra: &sv.extra[t * ex_len..(t + 1) * ex_len],
                c: &sv.c[t * cn_len..(t + 1) * cn_len],
                c_prev,
                h_prev: if dm.gru() { h_prev } else { &[] },
                dm: dm_slice,
                dc: &mut dc_carry,
                dgi,
                dgh: &mut *dgh,
                dh_direct: &mut dh_direct,
            },
        );
        // dh_prev = dGh · W_hh (+ GRU's direct term); inactive rows pass dh through unchanged.
        k.weight_gemm(
            WeightOp::bwd(Weight::Hh, ld),
            Mat::new(dgh, bl, gh),
            Mat::new(w_hh, gh, hout),
            T::ZERO,
            MatMut::new(&mut dh_carry, bl, hout),
        );
        for b in 0..bl {
            let dst = &mut dh_carry[b * hout..(b + 1) * hout];
            if !active[b] {
                dst.copy_from_slice(&dh_t[b * hout..(b + 1) * hout]);
            } else if dm.gru() {
                for (v, &g) in dst.iter_mut().zip(&dh_direct[b * h..(b + 1) * h]) {
                    *v += g;
                }
            }
        }
    }
    if let Some(dh0) = dh0 {
        dh0.copy_from_slice(&dh_carry);
    }
    if let Some(dc0) = dc0 {
        dc0.copy_from_slice(&dc_carry);
    }

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
            (tl - 1, &dgh_all[..(tl - 1) * bl * gh], &sv.h[bl * hout..])
        } else {
            (0, &dgh_all[bl * gh..], &sv.h[..(tl - 1) * bl * hout])
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
            Mat::new(&dgh_all[first * bl * gh..(first + 1) * bl * gh], bl, gh).t(),
            Mat::new(h0, bl, hout),
            T::ONE,
            MatMut::new(dw_hh, gh, hout),
        );
        if let Some(r) = lr.b_ih.clone() {
            add_col_sums(&mut dp[r], &dgi_all, gh);
        }
        if let Some(r) = lr.b_hh.clone() {
            add_col_sums(&mut dp[r], &dgh_all, gh);
        }
        if let Some(r) = lr.w_hr.clone() {
            // dW_hr += dH^T · M
            k.gemm(T::ONE, Mat::new(&dh_all, tb, hout).t(), Mat::new(&sv.m, tb, h), T::ONE, MatMut::new(&mut dp[r], hout, h));
        }
    }
    if let Some(d_in) = d_in {
        // dX += dGi · W_ih
        let w_ih = &w[lr.w_ih.clone()];
        k.weight_gemm(
            WeightOp::bwd(Weight::Ih, ld),
            Mat::new(&dgi_all, tb, gh),
            Mat::new(w_ih, gh, dm.input),
            T::ONE,
            MatMut::new(d_in, tb, dm.input),
        );
    }
}
