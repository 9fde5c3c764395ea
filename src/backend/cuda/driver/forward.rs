//! The forward pass: allocation of every layer's buffers with the path of each layer-direction
//! ([`allocate`]), then the schedule (layer by layer, or the wavefront), each layer-direction's
//! work being a [`DirForward`].

use super::super::buffer::View;
use super::super::exec::Exec;
use super::super::kernels::{self as k, Kernel, KernelId};
use super::layer_norm::{self, LnForward};
use super::variational_dropout::{self, VarForward};
use super::wavefront::{forward_wavefront, wavefront_chunk};
use super::zoneout::{self, StepStates, ZoneForward};
use super::{
    check_sizes, each_direction, gru_reset_before, joined_on_error, options, persistent_declined, persistent_declines, persistent_required,
    CudaReserve, DeviceMasks, LayerViews, Persistent, Temps, Weights,
};
use crate::backend::cell::Saved;
use crate::backend::host::zoneout::Zoneout;
use crate::backend::stack::{steps, LayerDims};
use crate::config::{CellKind, Merge};
use crate::element::Dtype;
use crate::error::Result;
use crate::shape::SeqShape;
use std::ops::Range;

/// The inputs and outputs of a forward pass, validated against the configuration and shape.
pub(crate) struct ForwardViews {
    /// `[T, B, I]`, or `[B, T, I]` batch-first.
    pub x: View,
    /// `[L·D, B, Hout]`, or zeros.
    pub h0: Option<View>,
    /// `[L·D, B, H]` (LSTM), or zeros.
    pub c0: Option<View>,
    /// `[T, B, D·Hout]` (`Hout` wide with merge by sum), or `[B, T, ·]` batch-first.
    pub y: View,
    /// `[L·D, B, Hout]`, when wanted.
    pub hn: Option<View>,
    /// `[L·D, B, H]` (LSTM), when wanted.
    pub cn: Option<View>,
}

/// Buffers of one direction's forward pass.
pub(super) struct FwdBufs {
    /// `[T·B, G·H]`.
    pub xg: View,
    /// `[B, G·H]`.
    hg: View,
    /// Training: the saved `[T, B, Hout]`; inference: two slots `[2, B, Hout]`.
    h: View,
    /// As `h`, `[*, B, H]`, LSTM only.
    c: View,
    /// Training with `zoneout_cell`: the saved `[T, B, H]` cell's own `c` before zoneout.
    c_new: View,
    /// LSTM with projection: training the saved `[T, B, H]`, inference `[B, H]`.
    m: View,
    /// Training: the saved `[T, B, G·H]`.
    gates: Option<View>,
    /// Training GRU: the saved `[T, B, H]`; inference, a GRU with the reset gate before the
    /// recurrent matmul: its `[B, H]` `u = r ⊙ h_prev`.
    extra: Option<View>,
    training: bool,
    /// The persistent kernel, when it runs this direction.
    persistent: Option<Persistent>,
}

/// Inputs and outputs of one direction's forward pass.
pub(super) struct FwdIo {
    /// `[T, B, In]`.
    pub input: View,
    /// `[T, B, D·Hout]`: this direction writes columns `col..col + Hout`. With merge by sum,
    /// the second direction's is a `[T, B, Hout]` temporary, added onto the layer output
    /// (`sum_into`) after both directions ran.
    pub out: View,
    /// Merge by sum, second direction: the layer output that `out` is added onto.
    sum_into: Option<View>,
    /// `[B, Hout]`, `[B, H]` (zeros when not given; c0 null for non-LSTM).
    h0: View,
    c0: View,
    hn: Option<View>,
    cn: Option<View>,
}

/// One layer-direction of a forward pass: everything its work reads and writes.
pub(super) struct DirForward {
    /// Its index in the layer (0 or 1): its stream.
    d: usize,
    /// It runs its steps from `T-1` down to 0: the second direction of a bidirectional layer,
    /// or the only one of a reverse-only stack.
    reverse: bool,
    /// The first of its `Hout` columns in a row of `io.out`: `d·Hout` with concatenated
    /// directions, 0 with merge by sum.
    col: usize,
    pub dims: LayerDims,
    pub weights: LayerViews,
    /// `[B]` lengths (i32).
    lens: u64,
    pub io: FwdIo,
    pub bufs: FwdBufs,
    /// Layer norm, when the cell has it.
    ln: Option<LnForward>,
    /// Recurrent and input dropout, in a training pass that has either.
    var: Option<VarForward>,
    /// Zoneout (the masks of a training pass, the expectation in inference).
    zone: Option<ZoneForward>,
}

/// A stream continuing a sequence (`MaskStream::from_step`, a decoder's training steps): the
/// per-step masks' kernels (dropout between layers, zoneout) take the sequence's step as a
/// signed 32-bit integer, so a call whose steps reach 2^31 is an error naming `masks`, before
/// any work.
fn check_mask_steps(r: &CudaReserve, shape: &SeqShape) -> Result<()> {
    let first = r.mask_stream().map_or(0, |s| s.first_step());
    let last = first as u64 + shape.steps() as u64;
    if first > 0 && last > i32::MAX as u64 {
        return Err(crate::Error::invalid(
            "masks",
            "on the CUDA backend, a stream whose steps stay below 2^31 (MaskStream::from_step)",
            format!("steps {first} to {}", last - 1),
        ));
    }
    Ok(())
}

/// The whole forward pass. Buffers have been validated against the configuration and `shape`;
/// with `save`, the activations backward needs are kept in it.
pub(crate) fn forward(
    exec: &Exec<'_>,
    weights: Weights<'_>,
    shape: &SeqShape,
    io: ForwardViews,
    mut save: Option<&mut CudaReserve>,
) -> Result<()> {
    let cfg = weights.config();
    check_sizes(cfg, shape)?;
    if let Some(r) = save.as_deref() {
        check_mask_steps(r, shape)?;
    }
    // Supplied masks: their bits uploaded before any work, kept in the reserve for backward.
    let masks = match save.as_deref_mut() {
        Some(r) => {
            r.supplied = match r.mask_stream() {
                Some(stream) => DeviceMasks::upload(exec, stream, cfg, shape)?,
                None => None,
            };
            r.supplied.as_ref().map(DeviceMasks::views).unwrap_or_default()
        }
        None => Default::default(),
    };
    let exec = &exec.with_masks(masks);
    let mut temps = Temps::new(exec);
    // Batch-first: x [B, T, I] in, y [B, T, ·] out, through time-major temporaries (the reserve
    // keeps the time-major x, as it keeps a copy of x anyway).
    let (bl, tl) = (shape.batch(), shape.steps());
    let (io, y_out) = match cfg.batch_first() {
        true => {
            let x = temps.storage(io.x.len)?;
            exec.swap_axes(0, x, io.x, bl, tl, cfg.input_size())?;
            let y = temps.storage(io.y.len)?;
            (ForwardViews { x, y, ..io }, Some(io.y))
        }
        false => (io, None),
    };
    // Dropout between layers: a training pass's, set on the reserve by the caller.
    let dropout = save.as_deref().and_then(|r| r.dropout.clone());
    let layers = allocate(&mut temps, weights, shape, &io, save)?;
    // Every buffer of every layer is allocated before any work forks to stream 1.
    let persistent = layers.iter().flatten().any(|dir| dir.bufs.persistent.is_some());
    // The wavefront drops each chunk of a layer's output before the next layer reads it.
    joined_on_error(exec, || match wavefront_chunk(exec, cfg, shape).filter(|_| !persistent) {
        Some(k) => forward_wavefront(exec, &layers, k, dropout.as_ref()),
        None => layers.iter().enumerate().try_for_each(|(l, dirs)| {
            each_direction(exec, dirs, |dir| dir.run(exec))?;
            // Merge by sum: y = y_fwd + y_rev, on stream 0 after both directions.
            dirs.iter().try_for_each(|dir| match dir.io.sum_into {
                Some(y) => exec.add(0, y, dir.io.out),
                None => Ok(()),
            })?;
            // The output of every layer but the last, dropped in place before the next layer
            // (and backward's weight gradients) read it; on stream 0 after the merge.
            match (&dropout, l + 1 < layers.len()) {
                (Some(d), true) => exec.dropout(0, dirs[0].io.out, 0..tl, bl, cfg.output_size(), d, l),
                _ => Ok(()),
            }
        }),
    })?;
    match y_out {
        Some(y) => exec.swap_axes(0, y, io.y, tl, bl, cfg.output_size()),
        None => Ok(()),
    }
}

/// Allocates (or fits, in the reserve) every buffer of every layer and chooses each
/// layer-direction's path; copies the inputs the reserve keeps (`x`, `h0`, `c0`) and zeros what
/// was not given.
fn allocate(
    temps: &mut Temps<'_, '_>,
    weights: Weights<'_>,
    shape: &SeqShape,
    io: &ForwardViews,
    mut save: Option<&mut CudaReserve>,
) -> Result<Vec<Vec<DirForward>>> {
    let exec = temps.exec;
    let cfg = weights.config();
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let (bl, tl) = (shape.batch(), shape.steps());
    let (hlen, clen) = (bl * cfg.hidden_out_size(), bl * cfg.hidden_size());
    let lstm = cfg.cell().has_cell_state();
    let st = exec.storage();

    let (input_dropout, recurrent_dropout) = match save.as_deref() {
        Some(r) => (r.input_dropout.clone(), r.recurrent_dropout.clone()),
        None => (None, None),
    };
    // Zoneout: a training pass's, set on the reserve by the caller; inference's expectation.
    let zoneout = match save.as_deref() {
        Some(r) => r.zoneout.clone(),
        None => Zoneout::for_pass(cfg, shape, false, None)?,
    };
    let lens = match save.as_deref_mut() {
        Some(r) => r.lengths.insert(exec.lengths(shape)?).ptr(),
        None => temps.lengths(shape)?,
    };
    // h0 and c0 (given or zeros): in the reserve when training, else a temporary of zeros when
    // not given.
    let (h0v, c0v) = match save.as_deref_mut() {
        Some(r) => {
            let xv = exec.fit(&mut r.x, st, io.x.len)?;
            exec.copy(0, xv, io.x)?;
            let hv = exec.fit(&mut r.h0, st, nl * nd * hlen)?;
            exec.copy_or_zero(0, hv, io.h0)?;
            let cv = exec.fit(&mut r.c0, Dtype::F32, if lstm { nl * nd * clen } else { 0 })?;
            if lstm {
                exec.copy_or_zero(0, cv, io.c0)?;
            }
            (hv, cv)
        }
        None => {
            let hv = match io.h0 {
                Some(v) => v,
                None => {
                    let z = temps.storage(nl * nd * hlen)?;
                    exec.fill(0, z, 0.0)?;
                    z
                }
            };
            let cv = match (lstm, io.c0) {
                (false, _) => View::NULL,
                (true, Some(v)) if v.ty == Dtype::F32 => v,
                (true, Some(v)) => {
                    // The cell state is f32.
                    let c = temps.f32(v.len)?;
                    exec.copy(0, c, v)?;
                    c
                }
                (true, None) => {
                    let z = temps.f32(nl * nd * clen)?;
                    exec.fill(0, z, 0.0)?;
                    z
                }
            };
            (hv, cv)
        }
    };
    if let Some(r) = save.as_deref_mut() {
        r.outputs.resize_with(nl - 1, || None);
        r.dirs.resize_with(nl * nd, Saved::default);
    }

    let mut prev_out = io.x;
    let mut layers = Vec::with_capacity(nl);
    for l in 0..nl {
        let dims = LayerDims::new(cfg, shape, l);
        let out = if l + 1 == nl {
            io.y
        } else {
            match save.as_deref_mut() {
                Some(r) => exec.fit(&mut r.outputs[l], st, tl * bl * dims.out_w)?,
                None => temps.storage(tl * bl * dims.out_w)?,
            }
        };
        let mut dirs = Vec::with_capacity(nd);
        for d in 0..nd {
            let i = l * nd + d;
            let bufs = direction_bufs(temps, &dims, save.as_deref_mut().map(|r| &mut r.dirs[i]))?;
            let declines = variational_dropout::persistent_declines(input_dropout.as_ref(), recurrent_dropout.as_ref())
                .or(zoneout::persistent_declines(zoneout.as_ref()));
            let bufs = FwdBufs { persistent: choose_persistent(temps, &dims, l, declines)?, ..bufs };
            let var = VarForward::new(temps, &dims, (l, d), input_dropout.as_ref(), recurrent_dropout.as_ref())?;
            let zone = ZoneForward::new(zoneout.as_ref(), (l, d))?;
            let ln =
                layer_norm::forward_bufs(temps, &dims, weights.w, weights.layout.layer(l, d), save.as_deref_mut().map(|r| &mut r.dirs[i]))?;
            let sum = cfg.merge() == Merge::Sum && d == 1;
            let io = FwdIo {
                input: prev_out,
                out: if sum { temps.storage(tl * bl * dims.out_w)? } else { out },
                sum_into: sum.then_some(out),
                h0: h0v.at(i * hlen, hlen),
                c0: if lstm { c0v.at(i * clen, clen) } else { View::NULL },
                hn: io.hn.map(|v| v.at(i * hlen, hlen)),
                cn: if lstm { io.cn.map(|v| v.at(i * clen, clen)) } else { None },
            };
            let (reverse, col) = (d == 1 || cfg.reverse_only(), if cfg.merge() == Merge::Sum { 0 } else { d * dims.hout });
            dirs.push(DirForward { d, reverse, col, dims, weights: weights.layer(l, d), lens, io, bufs, ln, var, zone });
        }
        layers.push(dirs);
        prev_out = out;
    }
    Ok(layers)
}

/// The buffers of one layer-direction: the gate pre-activations, and the states (the saved ones
/// in `save` when training, two slots of each otherwise).
fn direction_bufs(temps: &mut Temps<'_, '_>, dims: &LayerDims, save: Option<&mut Saved<Option<super::DevBuf>>>) -> Result<FwdBufs> {
    let exec = temps.exec;
    let (tl, bl, h, hout, gh) = (dims.t, dims.b, dims.h, dims.hout, dims.gh);
    let xg = temps.f32(tl * bl * gh)?;
    let hg = temps.f32(bl * gh)?;
    Ok(match save {
        Some(sv) => {
            let st = exec.storage();
            let sizes = dims.cell.saved_sizes(tl, bl);
            // The layer-norm buffers: layer_norm::forward_bufs. `c_new` (zoneout of the cell
            // state) is empty without `zoneout_cell`.
            let [gates, extra, c, m, h, _, _, _, _, _, _, c_new] = sizes.zip(sv);
            let extra_ty = gru_reset_before::extra_type(&dims.cell, st);
            let [gates, extra, c, c_new] =
                [(gates, Dtype::F32), (extra, extra_ty), (c, Dtype::F32), (c_new, Dtype::F32)].map(|((slot, n), ty)| exec.fit(slot, ty, n));
            let [m, h] = [m, h].map(|(slot, n)| exec.fit(slot, st, n));
            let (gates, extra) = (Some(gates?), Some(extra?));
            FwdBufs { xg, hg, h: h?, c: c?, c_new: c_new?, m: m?, gates, extra, training: true, persistent: None }
        }
        None => FwdBufs {
            xg,
            hg,
            h: temps.storage(2 * bl * hout)?,
            c: if dims.lstm() { temps.f32(2 * bl * h)? } else { View::NULL },
            c_new: View::NULL,
            m: if dims.proj { temps.storage(bl * h)? } else { View::NULL },
            gates: None,
            extra: gru_reset_before::inference_extra(temps, &dims.cell, bl)?,
            training: false,
            persistent: None,
        },
    })
}

/// The persistent forward kernel of a cell: persistent_lstm.cu (an LSTM without projection) or
/// persistent_cell.cu (GRU, RNN).
fn persistent_kernel(dims: &LayerDims) -> Option<KernelId> {
    match dims.cell.kind {
        CellKind::Lstm if dims.proj => None,
        CellKind::Lstm => Some(k::PersistentLstmForward.id),
        kind => Some(cell_kernel(kind).id),
    }
}

/// The entry of kernels/persistent_cell.cu for a GRU or RNN.
fn cell_kernel(kind: CellKind) -> Kernel<k::PersistentCellForwardArgs> {
    match kind {
        CellKind::Gru => k::PersistentGruForward,
        CellKind::RnnTanh => k::PersistentRnnTanhForward,
        CellKind::RnnRelu => k::PersistentRnnReluForward,
        CellKind::Lstm => unreachable!("the LSTM has its own persistent kernel"),
    }
}

/// The persistent kernel where it fits (f32 storage only), with its grid barrier; an error when
/// required and it does not fit.
fn choose_persistent(temps: &mut Temps<'_, '_>, dims: &LayerDims, l: usize, declines: Option<&'static str>) -> Result<Option<Persistent>> {
    let exec = temps.exec;
    if let Some(option) = persistent_declines(&dims.cell).or(declines) {
        return match exec.paths().persistent_required {
            true => Err(persistent_declined("the persistent forward", option, l)),
            false => Ok(None),
        };
    }
    let units = persistent_kernel(dims).and_then(|k| exec.persistent_units(k, dims.h, dims.b, dims.dirs));
    match units {
        None if exec.paths().persistent_required => Err(persistent_required("a persistent kernel", l, dims, exec.storage())),
        None => Ok(None),
        Some(units) => Ok(Some(Persistent { units, barrier: temps.barrier()? })),
    }
}

impl DirForward {
    /// The whole layer-direction on stream `d`: the input projection of every step, then the
    /// persistent kernel or the per-step loop.
    fn run(&self, exec: &Exec<'_>) -> Result<()> {
        let d = self.d;
        self.project(exec, d, 0..self.dims.t)?;
        match self.bufs.persistent {
            Some(p) if self.dims.lstm() => self.persistent_lstm(exec, p),
            Some(p) => self.persistent_cell(exec, p),
            None => self.steps(exec, d, 0..self.dims.t),
        }
    }

    /// `XG[t] = X[t] · W_ih^T` for the steps `t` in `rows`, on stream `si`; the biases are
    /// added by the step kernels.
    pub(super) fn project(&self, exec: &Exec<'_>, si: usize, rows: Range<usize>) -> Result<()> {
        let LayerDims { b: bl, input: inw, gh, .. } = self.dims;
        let (r0, n) = (rows.start * bl, rows.len() * bl);
        let input = self.io.input.at(r0 * inw, n * inw);
        // Input dropout: the product reads the dropped rows.
        let input = match &self.var {
            Some(v) => v.input(exec, si, &self.dims, input, r0)?,
            None => input,
        }
        .mat(n, inw);
        let w_ih = self.weights.w_ih.mat(gh, inw);
        exec.gemm(si, 1.0, input, w_ih.t(), 0.0, self.bufs.xg.at(r0 * gh, n * gh).mat(n, gh))?;
        match &self.ln {
            Some(ln) => ln.input(exec, si, &self.dims, self.bufs.xg, rows),
            None => Ok(()),
        }
    }

    /// The address of a bias or of the peepholes (0: none).
    fn bias(b: Option<View>) -> u64 {
        b.map_or(0, |v| v.ptr)
    }

    /// Steps `ks` (in processing order: `kk`-th step processed, `t = kk` forward, `T-1-kk`
    /// reverse) of the per-step loop on stream `si`, after the `XG` rows of those steps were
    /// written; the state before `ks.start` is the one the earlier steps left (h0, c0 at the
    /// first). The last chunk copies `hn`, `cn`.
    pub(super) fn steps(&self, exec: &Exec<'_>, si: usize, ks: Range<usize>) -> Result<()> {
        let LayerDims { t: tl, b: bl, h, hout, gh, out_w, .. } = self.dims;
        let (b, io, lens) = (&self.bufs, &self.io, self.lens);
        let reverse = self.reverse;
        let w_hh = self.weights.w_hh.mat(gh, hout);
        // With layer norm, b_ih is the input normalisation's β, already in XG.
        let b_ih = if self.ln.is_some() { 0 } else { Self::bias(self.weights.b_ih) };
        let b_hh = Self::bias(self.weights.b_hh);
        let (batch, hidden, y_stride) = (bl as i32, h as i32, out_w as i32);
        let slot = |kk: usize, t: usize| if b.training { t } else { kk % 2 };
        let cho = gru_reset_before::applies(&self.dims.cell);
        // Where the step before the chunk left the state (its slot), `None` at the first step.
        let mut prev: Option<usize> = ks.start.checked_sub(1).map(|kp| slot(kp, if reverse { tl - 1 - kp } else { kp }));
        for (kk, t) in steps(tl, reverse).enumerate().skip(ks.start).take(ks.len()) {
            let cur = slot(kk, t);
            let h_prev = prev.map_or(io.h0, |p| b.h.at(p * bl * hout, bl * hout));
            let c_prev = if self.dims.lstm() { prev.map_or(io.c0, |p| b.c.at(p * bl * h, bl * h)) } else { View::NULL };
            let h_t = b.h.at(cur * bl * hout, bl * hout);
            let c_t = if self.dims.lstm() { b.c.at(cur * bl * h, bl * h) } else { View::NULL };
            // HG[B, G·H] = h_prev · W_hh^T (Cho's GRU: two products, in its step), normalised with
            // layer norm (which Cho's GRU does not take)
            if !cho {
                // Recurrent dropout: the product reads the dropped state, the cell the state.
                let h_in = match &self.var {
                    Some(v) => v.h_prev(exec, si, &self.dims, h_prev)?,
                    None => h_prev,
                };
                exec.gemm(si, 1.0, h_in.mat(bl, hout), w_hh.t(), 0.0, b.hg.mat(bl, gh))?;
            }
            if let Some(ln) = &self.ln {
                ln.hidden(exec, si, &self.dims, t, b.hg)?;
            }
            let xg = b.xg.at(t * bl * gh, bl * gh).ptr;
            let gates = b.gates.map_or_else(|| self.ln.map_or(0, |ln| ln.inference_gates()), |g| g.at(t * bl * gh, bl * gh).ptr);
            let y_t = io.out.strided(t * bl * out_w + self.col, bl, out_w, hout).ptr;
            let step = t as i32;
            let hg = b.hg.ptr;
            match self.dims.cell.kind {
                CellKind::Lstm => {
                    let proj = self.dims.proj;
                    let m_t = if proj { b.m.at(if b.training { t * bl * h } else { 0 }, bl * h) } else { h_t };
                    let args = k::LstmForwardStepArgs {
                        batch,
                        hidden,
                        step,
                        lengths: lens,
                        xg,
                        hg,
                        b_ih,
                        b_hh,
                        c_prev: c_prev.ptr,
                        keep: if proj { 0 } else { h_prev.ptr },
                        gates,
                        c: c_t.ptr,
                        m: m_t.ptr,
                        y: if proj { 0 } else { y_t },
                        y_stride,
                    };
                    if options::lstm_has_options(&self.dims.cell) {
                        let peephole = Self::bias(self.weights.peephole);
                        exec.launch(si, k::LstmForwardStepOpt, bl * h, &options::lstm_forward(args, &self.dims.cell, peephole))?;
                    } else {
                        exec.launch(si, k::LstmForwardStep, bl * h, &args)?;
                    }
                    if let Some(ln) = &self.ln {
                        ln.cell_output(exec, si, &self.dims, t, lens, gates, c_t, m_t, args.y)?;
                    }
                    if let Some(w_hr) = self.weights.w_hr {
                        // h[B, Hout] = m · W_hr^T, then masked.
                        exec.gemm(si, 1.0, m_t.mat(bl, h), w_hr.mat(hout, h).t(), 0.0, h_t.mat(bl, hout))?;
                        let args = k::LstmProjectionFinishArgs {
                            batch,
                            hout: hout as i32,
                            step,
                            lengths: lens,
                            h_prev: h_prev.ptr,
                            h: h_t.ptr,
                            y: y_t,
                            y_stride,
                        };
                        exec.launch(si, k::LstmProjectionFinish, bl * hout, &args)?;
                    }
                }
                CellKind::Gru => {
                    let extra_t = b.extra.map(|e| e.at(if b.training { t * bl * h } else { 0 }, bl * h));
                    let extra = extra_t.map_or(0, |e| e.ptr);
                    let h_prev_v = h_prev;
                    let h_prev = h_prev.ptr;
                    let args = k::GruForwardStepArgs {
                        batch,
                        hidden,
                        step,
                        lengths: lens,
                        xg,
                        hg,
                        b_ih,
                        b_hh,
                        h_prev,
                        gates,
                        extra,
                        h: h_t.ptr,
                        y: y_t,
                        y_stride,
                    };
                    if let (true, Some(u)) = (cho, extra_t) {
                        gru_reset_before::forward_step(exec, si, args, &self.dims.cell, h_prev_v, u, b.hg, self.weights.w_hh)?;
                    } else if self.dims.cell.clip > 0.0 {
                        exec.launch(si, k::GruForwardStepClip, bl * h, &options::gru_forward(args, &self.dims.cell))?;
                    } else {
                        exec.launch(si, k::GruForwardStep, bl * h, &args)?;
                    }
                }
                CellKind::RnnTanh | CellKind::RnnRelu => {
                    let kernel = if self.dims.cell.kind == CellKind::RnnTanh { k::RnnTanhForwardStep } else { k::RnnReluForwardStep };
                    let h_prev = h_prev.ptr;
                    let args = k::RnnForwardStepArgs {
                        batch,
                        hidden,
                        step,
                        lengths: lens,
                        xg,
                        hg,
                        b_ih,
                        b_hh,
                        h_prev,
                        gates,
                        h: h_t.ptr,
                        y: y_t,
                        y_stride,
                    };
                    if self.dims.cell.clip > 0.0 {
                        let kernel =
                            if self.dims.cell.kind == CellKind::RnnTanh { k::RnnTanhForwardStepClip } else { k::RnnReluForwardStepClip };
                        exec.launch(si, kernel, bl * h, &options::rnn_forward(args, &self.dims.cell))?;
                    } else {
                        exec.launch(si, kernel, bl * h, &args)?;
                    }
                }
            }
            // Zoneout: the zoned states are what the next step reads and the layer outputs.
            if let Some(z) = &self.zone {
                let c_new = if z.saves_c_new() { b.c_new.at(t * bl * h, bl * h) } else { View::NULL };
                let s = StepStates { t, lens, h_prev, h: h_t, y: y_t, y_stride: out_w, c_prev, c: c_t, c_new };
                z.after_step(exec, si, &self.dims, &s)?;
            }
            prev = Some(cur);
        }
        let last = prev.expect("at least one step");
        if ks.end < tl {
            return Ok(());
        }
        if let Some(hn) = io.hn {
            exec.copy(si, hn, b.h.at(last * bl * hout, bl * hout))?;
        }
        if let Some(cn) = io.cn {
            exec.copy(si, cn, b.c.at(last * bl * h, bl * h))?;
        }
        Ok(())
    }

    /// The arguments of kernels/persistent_cell.cu: what every persistent forward kernel is
    /// given (GRU's `extra_save` aside).
    fn persistent_args(&self, p: Persistent) -> k::PersistentCellForwardArgs {
        let LayerDims { t: tl, b: bl, h, hout, gh, out_w, .. } = self.dims;
        let (b, io, tb) = (&self.bufs, &self.io, tl * bl);
        k::PersistentCellForwardArgs {
            batch: bl as i32,
            hidden: h as i32,
            steps: tl as i32,
            reverse: self.reverse as i32,
            units: p.units as i32,
            lengths: self.lens,
            xg: b.xg.ptr,
            w_hh: self.weights.w_hh.at(0, gh * hout).ptr,
            b_ih: Self::bias(self.weights.b_ih),
            b_hh: Self::bias(self.weights.b_hh),
            h0: io.h0.ptr,
            h_states: b.h.at(0, if b.training { tb * hout } else { 2 * bl * hout }).ptr,
            training: b.training as i32,
            gates_save: b.gates.map_or(0, |g| g.at(0, tb * gh).ptr),
            extra_save: if self.dims.gru() { b.extra.map_or(0, |e| e.at(0, tb * h).ptr) } else { 0 },
            y: io.out.strided(self.col, tb, out_w, hout).ptr,
            y_stride: out_w as i32,
            hn: io.hn.map_or(0, |v| v.ptr),
            barrier: p.barrier.ptr,
        }
    }

    /// The LSTM layer-direction's time loop in one cooperative launch (kernels/persistent_lstm.cu),
    /// after the `XG` GEMM: the cell kernels' arguments, and the cell state's.
    fn persistent_lstm(&self, exec: &Exec<'_>, p: Persistent) -> Result<()> {
        let k::PersistentCellForwardArgs {
            batch,
            hidden,
            steps,
            reverse,
            units,
            lengths,
            xg,
            w_hh,
            b_ih,
            b_hh,
            h0,
            h_states,
            training,
            gates_save,
            y,
            y_stride,
            hn,
            barrier,
            ..
        } = self.persistent_args(p);
        let (b, io) = (&self.bufs, &self.io);
        let c0 = io.c0.ptr;
        let c_save = if b.training { b.c.at(0, self.dims.t * self.dims.b * self.dims.h).ptr } else { 0 };
        let cn = io.cn.map_or(0, |v| v.ptr);
        let args = k::PersistentLstmForwardArgs {
            batch,
            hidden,
            steps,
            reverse,
            units,
            lengths,
            xg,
            w_hh,
            b_ih,
            b_hh,
            h0,
            c0,
            h_states,
            training,
            c_save,
            gates_save,
            y,
            y_stride,
            hn,
            cn,
            barrier,
        };
        exec.launch_persistent(self.d, k::PersistentLstmForward, self.dims.h, self.dims.b, p.units, &args)
    }

    /// A GRU or RNN layer-direction's time loop in one cooperative launch
    /// (kernels/persistent_cell.cu), after the `XG` GEMM. Writes what the per-step loop writes:
    /// `y`, `hn`, the states and, when training, the saved gates (and GRU's extra).
    fn persistent_cell(&self, exec: &Exec<'_>, p: Persistent) -> Result<()> {
        let kernel = cell_kernel(self.dims.cell.kind);
        exec.launch_persistent(self.d, kernel, self.dims.h, self.dims.b, p.units, &self.persistent_args(p))
    }
}
