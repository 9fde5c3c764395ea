//! The backward pass from a filled reserve: allocation of every layer's buffers with the path
//! of each layer-direction ([`allocate`]), then the schedule (layer by layer, or the
//! wavefront), each layer-direction's work being a [`DirBackward`].

use super::super::buffer::{DevBuf, View};
use super::super::exec::Exec;
use super::super::kernels::{self as k, Kernel};
use super::layer_norm::{self, LnBackward};
use super::variational_dropout::{self, VarBackward};
use super::wavefront::{backward_wavefront, wavefront_chunk};
use super::zoneout::{self, ZoneBackward};
use super::{
    check_sizes, each_direction, gru_reset_before, joined_on_error, options, persistent_declined, persistent_declines, persistent_required,
    LayerViews, Persistent, SavedViews, Temps, Weights,
};
use crate::backend::cell::{Saved, SAVED_BUFFERS};
use crate::backend::stack::{prev_step, steps, LayerDims};
use crate::backend::GradMode;
use crate::config::{CellKind, Merge, RnnConfig};
use crate::element::Dtype;
use crate::error::Result;
use crate::shape::SeqShape;
use std::ops::Range;

/// The incoming gradients and the gradients a backward pass writes, validated against the
/// configuration and the reserve's shape.
pub(crate) struct BackwardViews {
    /// Shaped like `y` (`[T, B, D·Hout]`, `[B, T, ·]` batch-first), or zeros.
    pub dy: Option<View>,
    /// `[L·D, B, Hout]`, or zeros.
    pub dhn: Option<View>,
    /// `[L·D, B, H]` (LSTM), or zeros.
    pub dcn: Option<View>,
    /// Shaped like `x`, when wanted.
    pub dx: Option<View>,
    /// `[L·D, B, Hout]`, when wanted.
    pub dh0: Option<View>,
    /// `[L·D, B, H]` (LSTM), when wanted.
    pub dc0: Option<View>,
    /// The parameters' layout, when wanted: overwritten or accumulated into (`mode`).
    pub dparams: Option<View>,
    pub mode: GradMode,
}

/// Buffers of one direction's backward pass.
pub(super) struct BwdBufs {
    /// `[T·B, G·H]`: input-side pre-activation gradients.
    dgi: View,
    /// `[T·B, G·H]`: hidden-side ones (GRU; the same as `dgi` for the other cells and for a GRU
    /// with the reset gate before the recurrent matmul).
    dgh: View,
    /// A GRU with the reset gate before the recurrent matmul: `[B, H]` f32, the gradient of
    /// `r ⊙ h_prev` of a step.
    du: View,
    /// `[B, Hout]`: the gradient carried to the previous step.
    carry: View,
    /// `[B, H]`: LSTM's carried `dc`.
    dc: View,
    /// Projection: `[T·B, Hout]` saved `dh`, `[B, Hout]` this step's `dh`, `[B, H]` its `dm`.
    dh_all: View,
    dh: View,
    dm: View,
    /// LSTM with peepholes: `[B, 3H]`, each row's peephole gradients summed over the steps (the
    /// backward step kernel adds into it; summed over the rows after the loop).
    dpeep: View,
    /// The persistent backward, when it runs this direction.
    persistent: Option<Persistent>,
}

/// What the backward of one decoder step keeps of one layer for [`deferred_params`]: the
/// gradients of its time loop that the parameters' gradients are products of.
pub(crate) struct KeptLayer {
    /// `[B, G·H]` `dGi` (storage type), before layer norm's backward of the input product.
    dgi: DevBuf,
    /// `[B, G·H]` `dGh`, where it is its own buffer (a GRU with the reset gate after the
    /// recurrent matmul).
    dgh: Option<DevBuf>,
    /// Projection: `[B, Hout]` `dh` (the gradient of `h = m · W_hr^T`).
    dh: Option<DevBuf>,
    /// Layer norm: `[B, G·H]` `dHG_raw`; LSTM: `[B, H]` f32 `dŝ`.
    dhg_raw: Option<DevBuf>,
    ds: Option<DevBuf>,
}

/// The gradients of a decoder's steps walked back one at a time
/// ([`Backend::backward_step_deferred`](crate::Backend::backward_step_deferred)) that
/// [`Backend::deferred_param_grads`](crate::Backend::deferred_param_grads) computes their
/// parameters' gradients from, once all are walked, in device memory: the CUDA backend's
/// [`Backend::StepGrads`](crate::Backend::StepGrads).
#[derive(Default)]
pub struct CudaStepGrads {
    /// `B` of the steps (set by the first).
    batch: usize,
    /// Per step walked (the last step of the run first), per layer.
    steps: Vec<Vec<KeptLayer>>,
    /// Per layer, an LSTM with peepholes: `[B, 3H]` f32, each row's peephole gradients summed
    /// over the steps walked (the step kernels add into it, in the order the backward of the
    /// whole call adds them).
    dpeep: Vec<Option<DevBuf>>,
}

impl std::fmt::Debug for CudaStepGrads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStepGrads").field("batch", &self.batch).field("steps", &self.steps.len()).finish()
    }
}

impl CudaStepGrads {
    /// The number of steps walked back into it.
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    /// `B` of the steps walked (0 before the first).
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// Whether every step walked kept the buffers a step of `cfg` with `B = bl` rows and
    /// `storage` type keeps (the steps were walked with a plan of that configuration).
    pub(crate) fn fits(&self, cfg: &RnnConfig, bl: usize, storage: Dtype) -> bool {
        let one = SeqShape::new(1, bl);
        let Ok(one) = one else { return false };
        let dims: Vec<LayerDims> = (0..cfg.num_layers()).map(|l| LayerDims::new(cfg, &one, l)).collect();
        let len = |b: &Option<DevBuf>| b.as_ref().map_or(0, DevBuf::len);
        self.batch == bl
            && self.dpeep.len() == dims.len()
            && self.steps.iter().all(|layers| {
                layers.len() == dims.len()
                    && layers.iter().zip(&dims).all(|(k, d)| {
                        k.dgi.ty() == storage && [k.dgi.len(), len(&k.dgh), len(&k.dh), len(&k.dhg_raw), len(&k.ds)] == KeptLayer::lens(d)
                    })
            })
    }
}

impl KeptLayer {
    /// The lengths of what a step of `dims` keeps (`dgi`, `dgh`, `dh`, `dhg_raw`, `ds`; 0: not
    /// kept): `dgi`, `dgh`, `dhg_raw` `[T·B, G·H]`, `dh` `[T·B, Hout]`, `ds` `[T·B, H]`.
    fn lens(d: &LayerDims) -> [usize; 5] {
        let rows = d.t * d.b;
        let when = |on: bool, n: usize| if on { rows * n } else { 0 };
        [
            rows * d.gh,
            when(d.gru() && !gru_reset_before::applies(&d.cell), d.gh),
            when(d.proj, d.hout),
            when(d.cell.layer_norm, d.gh),
            when(d.cell.layer_norm && d.lstm(), d.h),
        ]
    }

    /// Device buffers for what a step of `dims` keeps (`ds` f32, the others of the storage type).
    fn alloc(exec: &Exec<'_>, dims: &LayerDims) -> Result<KeptLayer> {
        let storage = exec.storage();
        let [dgi, dgh, dh, dhg_raw, ds] = KeptLayer::lens(dims);
        let opt = |ty: Dtype, n: usize| (n > 0).then(|| exec.alloc(ty, n)).transpose();
        Ok(KeptLayer {
            dgi: exec.alloc(storage, dgi)?,
            dgh: opt(storage, dgh)?,
            dh: opt(storage, dh)?,
            dhg_raw: opt(storage, dhg_raw)?,
            ds: opt(Dtype::F32, ds)?,
        })
    }
}

/// Where a step's [`KeptLayer`] goes, as views (`DirBackward::end` copies into them).
#[derive(Clone, Copy)]
struct KeepViews {
    dgi: View,
    dgh: Option<View>,
    dh: Option<View>,
    dhg_raw: Option<View>,
    ds: Option<View>,
}

/// Inputs and outputs of one direction's backward pass.
pub(super) struct BwdIo {
    /// `[T, B, In]`: the layer's input.
    input: View,
    /// `[T, B, D·Hout]`: gradient w.r.t. the layer's output, or none (zeros).
    d_out: Option<View>,
    saved: Saved<View>,
    lens: u64,
    h0: View,
    c0: View,
    dhn: Option<View>,
    dcn: Option<View>,
    dh0: Option<View>,
    dc0: Option<View>,
    /// `[T·B]` ones, for the bias gradients.
    ones: View,
}

/// One layer-direction of a backward pass: everything its work reads and writes.
pub(super) struct DirBackward {
    /// Its index in the layer (0 or 1): its stream.
    d: usize,
    /// It ran its steps from `T-1` down to 0 (see `forward::DirForward`).
    reverse: bool,
    /// The first of its `Hout` columns in a row of `d_out`: `d·Hout`, or 0 with merge by sum
    /// (both directions read the whole `dy` of `y = y_fwd + y_rev`).
    col: usize,
    pub dims: LayerDims,
    weights: LayerViews,
    /// Where its parameters' gradients accumulate, when wanted.
    grads: Option<LayerViews>,
    io: BwdIo,
    bufs: BwdBufs,
    /// Layer norm, when the cell has it.
    ln: Option<LnBackward>,
    /// Recurrent and input dropout, when the forward pass had either.
    var: Option<VarBackward>,
    /// Zoneout, when the forward pass had it.
    zone: Option<ZoneBackward>,
    /// A decoder step's backward ([`backward_step`]): where its time loop's gradients are
    /// kept (its `dpeep` is then the run's sum, carried from the step walked before).
    keep: Option<KeepViews>,
}

/// One layer of a backward pass.
pub(super) struct BackwardLayer {
    pub l: usize,
    /// `dX` `[T, B, In]`: the gradient w.r.t. the layer's input (none for layer 0 without `dx`).
    pub d_in: Option<View>,
    pub dirs: Vec<DirBackward>,
}

/// The whole backward pass from a filled reserve; buffers validated against its shape.
pub(crate) fn backward(exec: &Exec<'_>, weights: Weights<'_>, shape: &SeqShape, sv: &SavedViews, g: BackwardViews) -> Result<()> {
    backward_with(exec, weights, shape, sv, g, None)
}

/// The backward of one step of a decoder run (`sv` a one-step reserve of a forward stack,
/// `g.dparams` none): writes `dx`, `dh0`, `dc0` as [`backward`] does and keeps in `acc` what
/// [`deferred_params`] computes the parameters' gradients from, over all the steps at once.
/// The caller has checked the step (`T = 1`, no lengths, forward direction, `acc`'s batch).
pub(crate) fn backward_step(
    exec: &Exec<'_>,
    weights: Weights<'_>,
    shape: &SeqShape,
    sv: &SavedViews,
    g: BackwardViews,
    acc: &mut CudaStepGrads,
) -> Result<()> {
    debug_assert!(g.dparams.is_none() && shape.steps() == 1);
    backward_with(exec, weights, shape, sv, g, Some(acc))
}

/// The parameters' gradients as the caller wants them (`dp`, by `mode`) and where the pass
/// accumulates them: `dp` itself (zeroed first with Overwrite), or for 16-bit gradients an f32
/// temporary (zeros, or the caller's values with Accumulate) that [`finish_params`] rounds
/// into `dp` once at the end.
fn params_target(temps: &mut Temps<'_, '_>, dp: Option<View>, mode: GradMode) -> Result<(Option<View>, Option<View>)> {
    let exec = temps.exec;
    Ok(match dp {
        Some(dp) if dp.ty != Dtype::F32 => {
            let acc = temps.f32(dp.len)?;
            match mode {
                GradMode::Overwrite => exec.fill(0, acc, 0.0)?,
                GradMode::Accumulate => exec.copy(0, acc, dp)?,
            }
            (Some(dp), Some(acc))
        }
        Some(dp) => {
            if mode == GradMode::Overwrite {
                exec.fill(0, dp, 0.0)?;
            }
            (None, Some(dp))
        }
        None => (None, None),
    })
}

/// The end of [`params_target`]: the f32 sums rounded into the caller's 16-bit gradients.
fn finish_params(exec: &Exec<'_>, (out, acc): (Option<View>, Option<View>)) -> Result<()> {
    match (out, acc) {
        (Some(out), Some(acc)) => exec.copy(0, out, acc),
        _ => Ok(()),
    }
}

fn backward_with(
    exec: &Exec<'_>,
    weights: Weights<'_>,
    shape: &SeqShape,
    sv: &SavedViews,
    g: BackwardViews,
    acc: Option<&mut CudaStepGrads>,
) -> Result<()> {
    let cfg = weights.config();
    check_sizes(cfg, shape)?;
    // Supplied masks: the forward pass's device copies.
    let exec = &exec.with_masks(sv.masks.clone());
    let mut temps = Temps::new(exec);
    // 16-bit parameter gradients accumulate in f32 (from the caller's with Accumulate) and are
    // rounded once at the end.
    let target = params_target(&mut temps, g.dparams, g.mode)?;
    let dparams = target.1;
    // Batch-first: dy [B, T, ·] in, dx [B, T, I] out, through time-major temporaries (the
    // reserve's x is time-major).
    let (bl, tl) = (shape.batch(), shape.steps());
    let (g, dx_out) = match cfg.batch_first() {
        true => {
            let dy = match g.dy {
                Some(v) => {
                    let t = temps.storage(v.len)?;
                    exec.swap_axes(0, t, v, bl, tl, cfg.output_size())?;
                    Some(t)
                }
                None => None,
            };
            let dx = match g.dx {
                Some(v) => Some(temps.storage(v.len)?),
                None => None,
            };
            (BackwardViews { dy, dx, ..g }, g.dx)
        }
        false => (g, None),
    };
    let layers = allocate(&mut temps, weights, shape, sv, &g, dparams, acc)?;
    // Every buffer of every layer is allocated before any work forks to stream 1 (`layers`
    // from the last layer to the first).
    let persistent = layers.iter().flat_map(|l| &l.dirs).any(|dir| dir.bufs.persistent.is_some());
    // Not with layer norm: a chunk's dX rows need the whole sequence's dGi (layer_norm.rs). With
    // dropout, the wavefront multiplies each chunk's dX rows by their factors.
    let dropout = sv.dropout.clone();
    let nl = layers.len();
    joined_on_error(exec, || match wavefront_chunk(exec, cfg, shape).filter(|_| !persistent && !cfg.layer_norm()) {
        Some(k) => backward_wavefront(exec, &layers, k, dropout.as_ref()),
        None => layers.iter().enumerate().try_for_each(|(i, layer)| {
            each_direction(exec, &layer.dirs, |dir| dir.run(exec))?;
            let l = nl - 1 - i;
            match layer.d_in {
                // dX = Σ_d dGi_d · W_ih_d, on stream 0 after both directions; above layer 0 it
                // is the gradient of layer l - 1's dropped output: through its factors.
                Some(d_in) => {
                    layer.dirs.iter().try_for_each(|dir| dir.input_grad(exec, 0, 0..shape.steps(), d_in))?;
                    match (&dropout, l > 0) {
                        (Some(d), true) => exec.dropout(0, d_in, 0..tl, bl, cfg.output_size(), d, l - 1),
                        _ => Ok(()),
                    }
                }
                None => Ok(()),
            }
        }),
    })?;
    if let (Some(dx), Some(t)) = (dx_out, g.dx) {
        exec.swap_axes(0, dx, t, tl, bl, cfg.input_size())?;
    }
    finish_params(exec, target)
}

/// The parameters' gradients of a decoder's steps walked back with [`backward_step`]: `steps`
/// the views of the steps' reserves in step order, `acc` what their backward kept; written or
/// added into `dparams` by `mode`. The steps' saved activations and kept gradients are copied
/// into the buffers of one call over the whole sequence, whose weight gradients are then the
/// same products as that call's (`DirBackward::end`): one GEMM per weight over all the steps'
/// rows. The caller has checked the steps against `acc` and the plan.
pub(crate) fn deferred_params(
    exec: &Exec<'_>,
    weights: Weights<'_>,
    steps: &[SavedViews],
    acc: &CudaStepGrads,
    dparams: View,
    mode: GradMode,
) -> Result<()> {
    let cfg = weights.config();
    let (tl, bl) = (steps.len(), acc.batch);
    let shape = SeqShape::new(tl, bl)?;
    check_sizes(cfg, &shape)?;
    // Supplied masks: the first step's device copies (the per-sequence masks, the same at
    // every step, are the only ones a weight gradient reads).
    let exec = &exec.with_masks(steps.first().map(|s| s.masks.clone()).unwrap_or_default());
    let mut temps = Temps::new(exec);
    let target = params_target(&mut temps, Some(dparams), mode)?;
    // The steps' buffers one after the other: each is `[1, B, ·]`, the whole call's `[T, B, ·]`.
    let mut concat = |parts: &mut dyn Iterator<Item = View>| -> Result<View> {
        let parts: Vec<View> = parts.collect();
        let (n, ty) = (parts.iter().map(|v| v.len).sum::<usize>(), parts.first().map_or(Dtype::F32, |v| v.ty));
        if n == 0 {
            return Ok(View::NULL);
        }
        let all = temps.alloc(ty, n)?;
        let mut at = 0;
        for v in parts {
            exec.copy(0, all.at(at, v.len), v)?;
            at += v.len;
        }
        Ok(all)
    };
    let first = &steps[0];
    let x = concat(&mut steps.iter().map(|s| s.x))?;
    let outputs = (0..first.outputs.len()).map(|l| concat(&mut steps.iter().map(|s| s.outputs[l]))).collect::<Result<Vec<_>>>()?;
    let mut dirs = Vec::with_capacity(first.dirs.len());
    for i in 0..first.dirs.len() {
        let mut each = [View::NULL; SAVED_BUFFERS];
        for (j, v) in each.iter_mut().enumerate() {
            *v = concat(&mut steps.iter().map(|s| *s.dirs[i].each()[j]))?;
        }
        dirs.push(Saved::from_array(each));
    }
    // (Neither the dropout between layers nor zoneout enters a weight gradient: both act on
    // the gradients the steps kept.)
    let sv = SavedViews {
        x,
        h0: first.h0,
        c0: first.c0,
        lens: 0,
        outputs,
        dirs,
        dropout: None,
        recurrent_dropout: first.recurrent_dropout.clone(),
        input_dropout: first.input_dropout.clone(),
        zoneout: None,
        masks: first.masks.clone(),
    };
    let g = BackwardViews { dy: None, dhn: None, dcn: None, dx: None, dh0: None, dc0: None, dparams: target.1, mode };
    let layers = allocate(&mut temps, weights, &shape, &sv, &g, target.1, None)?;
    // The walk kept the last step first.
    let walked: Vec<&Vec<KeptLayer>> = acc.steps.iter().rev().collect();
    for layer in &layers {
        for dir in &layer.dirs {
            let (b, ln) = (&dir.bufs, dir.ln.as_ref());
            let (gh, hout, h) = (dir.dims.gh, dir.dims.hout, dir.dims.h);
            for (t, kept) in walked.iter().enumerate() {
                let k = &kept[layer.l];
                let rows = |v: View, w: usize| v.at(t * bl * w, bl * w);
                exec.copy(0, rows(b.dgi, gh), k.dgi.view())?;
                if let Some(dgh) = &k.dgh {
                    exec.copy(0, rows(b.dgh, gh), dgh.view())?;
                }
                if let Some(dh) = &k.dh {
                    exec.copy(0, rows(b.dh_all, hout), dh.view())?;
                }
                if let (Some(ln), Some(v)) = (ln, &k.dhg_raw) {
                    exec.copy(0, rows(ln.dhg_raw, gh), v.view())?;
                }
                if let (Some(ln), Some(v)) = (ln, &k.ds) {
                    exec.copy(0, rows(ln.ds, h), v.view())?;
                }
            }
            if let Some(Some(dpeep)) = acc.dpeep.get(layer.l) {
                exec.copy(0, b.dpeep, dpeep.view())?;
            }
            dir.end(exec, 0)?;
        }
    }
    finish_params(exec, target)
}

/// Allocates every buffer of every layer (from the last layer to the first) and chooses each
/// layer-direction's path.
fn allocate(
    temps: &mut Temps<'_, '_>,
    weights: Weights<'_>,
    shape: &SeqShape,
    sv: &SavedViews,
    g: &BackwardViews,
    dparams: Option<View>,
    mut acc: Option<&mut CudaStepGrads>,
) -> Result<Vec<BackwardLayer>> {
    let exec = temps.exec;
    let cfg = weights.config();
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let (bl, tl) = (shape.batch(), shape.steps());
    let tb = tl * bl;
    let (hlen, clen) = (bl * cfg.hidden_out_size(), bl * cfg.hidden_size());
    let lstm = cfg.cell().has_cell_state();
    let ones = if dparams.is_some() && cfg.bias() {
        let o = temps.storage(tb)?;
        exec.fill(0, o, 1.0)?;
        o
    } else {
        View::NULL
    };

    // A decoder step: what it keeps, per layer (allocated here, filled by `DirBackward::end`),
    // and the peephole gradients' sums, allocated and zeroed at the first step walked.
    let mut kept: Vec<Option<KeptLayer>> = (0..nl).map(|_| None).collect();
    if let Some(acc) = acc.as_deref_mut() {
        if acc.steps.is_empty() {
            acc.batch = bl;
            acc.dpeep = (0..nl).map(|_| None).collect();
            if cfg.peephole() {
                for slot in &mut acc.dpeep {
                    let v = exec.alloc(Dtype::F32, bl * 3 * cfg.hidden_size())?;
                    exec.fill(0, v.view(), 0.0)?;
                    *slot = Some(v);
                }
            }
        }
    }
    let mut d_out = g.dy;
    let mut layers = Vec::with_capacity(nl);
    for l in (0..nl).rev() {
        let dims = LayerDims::new(cfg, shape, l);
        let input = if l == 0 { sv.x } else { sv.outputs[l - 1] };
        let d_in = match (l, g.dx) {
            (0, dx) => dx,
            _ => Some(temps.storage(tb * dims.input)?),
        };
        let mut bufs = Vec::with_capacity(nd);
        let (input_dropout, recurrent_dropout) = (sv.input_dropout.as_ref(), sv.recurrent_dropout.as_ref());
        for d in 0..nd {
            let ln = layer_norm::backward_bufs(temps, &dims, weights.w, dparams, weights.layout.layer(l, d), &sv.dirs[l * nd + d])?;
            let declines = variational_dropout::persistent_declines(input_dropout, recurrent_dropout)
                .or(zoneout::persistent_declines(sv.zoneout.as_ref()));
            let var = VarBackward::new(temps, &dims, (l, d), input_dropout, recurrent_dropout)?;
            let zone = ZoneBackward::new(temps, &dims, sv.zoneout.as_ref(), (l, d))?;
            let mut dir_bufs = direction_bufs(temps, &dims, l, declines)?;
            if let Some(acc) = acc.as_deref() {
                if let Some(Some(dpeep)) = acc.dpeep.get(l) {
                    dir_bufs.dpeep = dpeep.view();
                }
            }
            bufs.push((dir_bufs, ln, var, zone));
        }
        // (A decoder's stack has one direction.)
        let keep = match acc.is_some() {
            true => {
                let k = KeptLayer::alloc(exec, &dims)?;
                let v = |b: &Option<DevBuf>| b.as_ref().map(DevBuf::view);
                let views = KeepViews { dgi: k.dgi.view(), dgh: v(&k.dgh), dh: v(&k.dh), dhg_raw: v(&k.dhg_raw), ds: v(&k.ds) };
                kept[l] = Some(k);
                Some(views)
            }
            false => None,
        };
        let dirs = bufs
            .into_iter()
            .enumerate()
            .map(|(d, (bufs, ln, var, zone))| {
                let i = l * nd + d;
                let io = BwdIo {
                    input,
                    d_out,
                    saved: sv.dirs[i],
                    lens: sv.lens,
                    h0: sv.h0.at(i * hlen, hlen),
                    c0: if lstm { sv.c0.at(i * clen, clen) } else { View::NULL },
                    dhn: g.dhn.map(|v| v.at(i * hlen, hlen)),
                    dcn: if lstm { g.dcn.map(|v| v.at(i * clen, clen)) } else { None },
                    dh0: g.dh0.map(|v| v.at(i * hlen, hlen)),
                    dc0: if lstm { g.dc0.map(|v| v.at(i * clen, clen)) } else { None },
                    ones,
                };
                let grads = dparams.map(|dp| LayerViews::of(dp, weights.layout.layer(l, d)));
                let (reverse, col) = (d == 1 || cfg.reverse_only(), if cfg.merge() == Merge::Sum { 0 } else { d * dims.hout });
                DirBackward { d, reverse, col, dims, weights: weights.layer(l, d), grads, io, bufs, ln, var, zone, keep }
            })
            .collect();
        layers.push(BackwardLayer { l, d_in, dirs });
        d_out = d_in;
    }
    if let Some(acc) = acc {
        acc.steps.push(kept.into_iter().flatten().collect());
    }
    Ok(layers)
}

/// The persistent backward kernel of a cell (kernels/persistent_backward.cu).
fn persistent_kernel(kind: CellKind) -> Kernel<k::PersistentBackwardArgs> {
    match kind {
        CellKind::Lstm => k::PersistentLstmBackward,
        CellKind::Gru => k::PersistentGruBackward,
        CellKind::RnnTanh => k::PersistentRnnTanhBackward,
        CellKind::RnnRelu => k::PersistentRnnReluBackward,
    }
}

/// The buffers of one layer-direction of layer `l`, and its path: the persistent backward where
/// it fits, with the forward's switches (an error when required and it does not fit).
fn direction_bufs(temps: &mut Temps<'_, '_>, dims: &LayerDims, l: usize, declines: Option<&'static str>) -> Result<BwdBufs> {
    let exec = temps.exec;
    let (tb, h, hout, gh) = (dims.t * dims.b, dims.h, dims.hout, dims.gh);
    let declines = persistent_declines(&dims.cell).or(declines);
    if let (Some(option), true) = (declines, exec.paths().persistent_required) {
        return Err(persistent_declined("the persistent backward", option, l));
    }
    // Not for an LSTM with projection, nor a cell with an option.
    let kernel = (!dims.proj && declines.is_none()).then(|| persistent_kernel(dims.cell.kind).id);
    let units = kernel.and_then(|k| exec.persistent_units(k, h, dims.b, dims.dirs));
    let persistent = match units {
        None if exec.paths().persistent_required => return Err(persistent_required("the persistent backward", l, dims, exec.storage())),
        None => None,
        Some(units) => Some(Persistent { units, barrier: temps.barrier()? }),
    };
    let dgi = temps.storage(tb * gh)?;
    Ok(BwdBufs {
        dgi,
        dgh: if dims.gru() && !gru_reset_before::applies(&dims.cell) { temps.storage(tb * gh)? } else { dgi },
        du: gru_reset_before::backward_du(temps, &dims.cell, dims.b)?,
        carry: temps.f32(dims.b * hout)?,
        dc: if dims.lstm() { temps.f32(dims.b * h)? } else { View::NULL },
        dh_all: if dims.proj { temps.storage(tb * hout)? } else { View::NULL },
        dh: if dims.proj { temps.storage(dims.b * hout)? } else { View::NULL },
        dm: if dims.proj { temps.f32(dims.b * h)? } else { View::NULL },
        dpeep: if dims.cell.peephole { temps.f32(dims.b * 3 * h)? } else { View::NULL },
        persistent,
    })
}

impl DirBackward {
    /// BPTT through the layer-direction on stream `d`, with its weight gradients.
    fn run(&self, exec: &Exec<'_>) -> Result<()> {
        self.begin(exec, self.d)?;
        // The persistent backward runs the whole time loop in one launch; the per-step loop then
        // has no steps.
        match self.bufs.persistent {
            Some(p) => self.persistent(exec, p)?,
            None => self.steps(exec, self.d, 0..self.dims.t)?,
        }
        self.end(exec, self.d)
    }

    /// The carried gradients' start on stream `si`: `dhn`, `dcn` or zeros.
    pub(super) fn begin(&self, exec: &Exec<'_>, si: usize) -> Result<()> {
        exec.copy_or_zero(si, self.bufs.carry, self.io.dhn)?;
        if self.dims.lstm() {
            exec.copy_or_zero(si, self.bufs.dc, self.io.dcn)?;
        }
        // (A decoder step adds into the sums of the steps walked before it.)
        match self.keep {
            Some(_) => Ok(()),
            None => exec.fill(si, self.bufs.dpeep, 0.0),
        }
    }

    /// `dX[t] (+)= dGi[t] · W_ih` for the steps `t` in `rows` on stream `si`: direction 0
    /// overwrites, direction 1 adds.
    pub(super) fn input_grad(&self, exec: &Exec<'_>, si: usize, rows: Range<usize>, d_in: View) -> Result<()> {
        let LayerDims { b: bl, input: inw, gh, .. } = self.dims;
        let (r0, n) = (rows.start * bl, rows.len() * bl);
        let dgi = self.bufs.dgi.at(r0 * gh, n * gh).mat(n, gh);
        let beta = if self.d == 0 { 0.0 } else { 1.0 };
        let d_in = d_in.at(r0 * inw, n * inw);
        match self.var.as_ref().and_then(|v| v.input_grad_target(&self.dims, r0, n).map(|t| (v, t))) {
            // Input dropout: (dGi · W_ih) ⊙ f.
            Some((v, tmp)) => {
                exec.gemm(si, 1.0, dgi, self.weights.w_ih.mat(gh, inw), 0.0, tmp.mat(n, inw))?;
                v.input_grad_finish(exec, si, &self.dims, tmp, d_in, self.d != 0)
            }
            None => exec.gemm(si, 1.0, dgi, self.weights.w_ih.mat(gh, inw), beta, d_in.mat(n, inw)),
        }
    }

    /// Steps `ks` of the backward time loop on stream `si`, in processing order (the `kk`-th
    /// step processed: `t = T-1-kk` for the forward direction, `t = kk` for the reverse), from
    /// the carry the earlier steps left; writes `dG` of those steps.
    pub(super) fn steps(&self, exec: &Exec<'_>, si: usize, ks: Range<usize>) -> Result<()> {
        let LayerDims { t: tl, b: bl, h, hout, gh, out_w, .. } = self.dims;
        let (b, io) = (&self.bufs, &self.io);
        let reverse = self.reverse;
        let s = &io.saved;
        let w_hh = self.weights.w_hh.mat(gh, hout);
        let (batch, hidden, dy_stride, lengths) = (bl as i32, h as i32, out_w as i32, io.lens);
        let cho = gru_reset_before::applies(&self.dims.cell);
        for t in steps(tl, !reverse).skip(ks.start).take(ks.len()) {
            let step = t as i32;
            let p = prev_step(t, tl, reverse);
            let h_prev = p.map_or(io.h0, |p| s.h.at(p * bl * hout, bl * hout));
            let c_prev = if self.dims.lstm() { p.map_or(io.c0, |p| s.c.at(p * bl * h, bl * h)) } else { View::NULL };
            let dy = io.d_out.map_or(0, |v| v.strided(t * bl * out_w + self.col, bl, out_w, hout).ptr);
            // Zoneout: the gradients w.r.t. the zoned states split, the hit units' part set aside
            // (`dy` then in the carry).
            let dy = match &self.zone {
                Some(z) => {
                    z.split(exec, si, &self.dims, t, lengths, (dy, out_w), b.carry, b.dc)?;
                    if z.takes_dy() {
                        0
                    } else {
                        dy
                    }
                }
                None => dy,
            };
            let gates = s.gates.at(t * bl * gh, bl * gh).ptr;
            let dgi_t = b.dgi.at(t * bl * gh, bl * gh);
            let dgh_t = b.dgh.at(t * bl * gh, bl * gh);
            let carry = b.carry.ptr;
            match self.dims.cell.kind {
                CellKind::Lstm => {
                    // The cell's own new c (before zoneout of the cell state).
                    let c = if self.dims.cell.zoneout_cell { s.c_new } else { s.c }.at(t * bl * h, bl * h).ptr;
                    let step_args = k::LstmBackwardStepArgs {
                        batch,
                        hidden,
                        step,
                        lengths,
                        gates,
                        c,
                        c_prev: c_prev.ptr,
                        dm_in: 0,
                        dy,
                        dy_stride,
                        carry,
                        dc: b.dc.ptr,
                        dg: dgi_t.ptr,
                    };
                    let step_args = match self.weights.w_hr {
                        Some(w_hr) => {
                            let dh_save = b.dh_all.at(t * bl * hout, bl * hout).ptr;
                            let args = k::LstmProjectionBackwardPrepareArgs {
                                batch,
                                hout: hout as i32,
                                step,
                                lengths,
                                dy,
                                dy_stride,
                                carry,
                                dh: b.dh.ptr,
                                dh_save,
                            };
                            exec.launch(si, k::LstmProjectionBackwardPrepare, bl * hout, &args)?;
                            // m → h = m · W_hr^T, so dm = dh · W_hr.
                            exec.gemm(si, 1.0, b.dh.mat(bl, hout), w_hr.mat(hout, h), 0.0, b.dm.mat(bl, h))?;
                            k::LstmBackwardStepArgs { dm_in: b.dm.ptr, dy: 0, carry: 0, ..step_args }
                        }
                        None => step_args,
                    };
                    let peephole = self.weights.peephole.map_or(0, |p| p.ptr);
                    let dpeep = if self.dims.cell.peephole { b.dpeep.ptr } else { 0 };
                    if let Some(ln) = &self.ln {
                        ln.lstm_step(exec, si, &self.dims, step_args, peephole, dpeep)?;
                    } else if options::lstm_has_options(&self.dims.cell) {
                        let args = options::lstm_backward(step_args, &self.dims.cell, peephole, dpeep);
                        exec.launch(si, k::LstmBackwardStepOpt, bl * h, &args)?;
                    } else {
                        exec.launch(si, k::LstmBackwardStep, bl * h, &step_args)?;
                    }
                }
                CellKind::Gru => {
                    let extra = s.extra.at(t * bl * h, bl * h).ptr;
                    let h_prev = h_prev.ptr;
                    let args = k::GruBackwardStepArgs {
                        batch,
                        hidden,
                        step,
                        lengths,
                        gates,
                        extra,
                        h_prev,
                        dy,
                        dy_stride,
                        carry,
                        dgi: dgi_t.ptr,
                        dgh: dgh_t.ptr,
                    };
                    if cho {
                        // Also adds dgi[:, r z] · W_h{r,z} into the carry.
                        gru_reset_before::backward_step(exec, si, args, &self.dims.cell, dgi_t, b.du, b.carry, self.weights.w_hh)?;
                        if let Some(z) = &self.zone {
                            z.add_kept(exec, si, b.carry, b.dc)?;
                        }
                        continue;
                    } else if self.dims.cell.clip > 0.0 {
                        exec.launch(si, k::GruBackwardStepClip, bl * h, &options::gru_backward(args, &self.dims.cell))?;
                    } else {
                        exec.launch(si, k::GruBackwardStep, bl * h, &args)?;
                    }
                }
                CellKind::RnnTanh | CellKind::RnnRelu => {
                    let kernel = if self.dims.cell.kind == CellKind::RnnTanh { k::RnnTanhBackwardStep } else { k::RnnReluBackwardStep };
                    let args = k::RnnBackwardStepArgs { batch, hidden, step, lengths, gates, dy, dy_stride, carry, dg: dgi_t.ptr };
                    if self.dims.cell.clip > 0.0 {
                        let kernel =
                            if self.dims.cell.kind == CellKind::RnnTanh { k::RnnTanhBackwardStepClip } else { k::RnnReluBackwardStepClip };
                        exec.launch(si, kernel, bl * h, &options::rnn_backward(args, &self.dims.cell))?;
                    } else {
                        exec.launch(si, kernel, bl * h, &args)?;
                    }
                }
            }
            // dh_prev += dGh · W_hh (the kernels left the direct part, or dh on inactive rows); with
            // layer norm dGh goes through the normalisation's backward first.
            let dgh_t = match &self.ln {
                Some(ln) => ln.hidden(exec, si, &self.dims, t, dgh_t)?,
                None => dgh_t,
            };
            match self.var.as_ref().and_then(|v| v.carry_target().map(|t| (v, t))) {
                // Recurrent dropout: the product read the dropped state.
                Some((v, tmp)) => {
                    exec.gemm(si, 1.0, dgh_t.mat(bl, gh), w_hh, 0.0, tmp.mat(bl, hout))?;
                    v.carry_finish(exec, si, &self.dims, b.carry)?;
                }
                None => exec.gemm(si, 1.0, dgh_t.mat(bl, gh), w_hh, 1.0, b.carry.mat(bl, hout))?,
            }
            if let Some(z) = &self.zone {
                z.add_kept(exec, si, b.carry, b.dc)?;
            }
        }
        Ok(())
    }

    /// The layer-direction's backward time loop in one cooperative launch
    /// (kernels/persistent_backward.cu): from the carry (dhn or zeros) and `dc` (dcn or zeros)
    /// it writes `dgi`, `dgh` for every step and leaves dh0 in the carry and dc0 in `dc`, as the
    /// per-step loop does.
    fn persistent(&self, exec: &Exec<'_>, p: Persistent) -> Result<()> {
        let LayerDims { t: tl, b: bl, h, hout, gh, out_w, .. } = self.dims;
        let (b, io, s, tb) = (&self.bufs, &self.io, &self.io.saved, tl * bl);
        let kernel = persistent_kernel(self.dims.cell.kind);
        let gru = self.dims.gru();
        let lstm = self.dims.lstm();
        let args = k::PersistentBackwardArgs {
            batch: bl as i32,
            hidden: h as i32,
            steps: tl as i32,
            reverse: self.reverse as i32,
            units: p.units as i32,
            lengths: io.lens,
            w_hh: self.weights.w_hh.at(0, gh * hout).ptr,
            gates: s.gates.at(0, tb * gh).ptr,
            extra: if gru { s.extra.at(0, tb * h).ptr } else { 0 },
            c_all: if lstm { s.c.at(0, tb * h).ptr } else { 0 },
            h_all: if gru { s.h.at(0, tb * hout).ptr } else { 0 },
            h0: if gru { io.h0.at(0, bl * hout).ptr } else { 0 },
            c0: if lstm { io.c0.at(0, bl * h).ptr } else { 0 },
            dy: io.d_out.map_or(0, |v| v.strided(self.col, tb, out_w, hout).ptr),
            dy_stride: out_w as i32,
            carry: b.carry.at(0, bl * hout).ptr,
            dc: if lstm { b.dc.at(0, bl * h).ptr } else { 0 },
            dgi: b.dgi.at(0, tb * gh).ptr,
            dgh: b.dgh.at(0, tb * gh).ptr,
            barrier: p.barrier.ptr,
        };
        exec.launch_persistent(self.d, kernel, h, bl, p.units, &args)
    }

    /// After the time loop, on stream `si`: `dh0`, `dc0` and the weight gradients.
    pub(super) fn end(&self, exec: &Exec<'_>, si: usize) -> Result<()> {
        let LayerDims { t: tl, b: bl, h, hout, gh, .. } = self.dims;
        let (b, io, tb) = (&self.bufs, &self.io, tl * bl);
        if let Some(dh0) = io.dh0 {
            exec.copy(si, dh0, b.carry)?;
        }
        if let Some(dc0) = io.dc0 {
            exec.copy(si, dc0, b.dc)?;
        }
        // A decoder step keeps what its parameters' gradients are computed from, before layer
        // norm's backward rewrites dGi (it has no parameters' gradients of its own: `grads` is
        // none).
        if let Some(k) = self.keep {
            exec.copy(si, k.dgi, b.dgi)?;
            let pairs = [
                (k.dgh, Some(b.dgh)),
                (k.dh, Some(b.dh_all)),
                (k.dhg_raw, self.ln.as_ref().map(|l| l.dhg_raw)),
                (k.ds, self.ln.as_ref().map(|l| l.ds)),
            ];
            for (dst, src) in pairs {
                if let (Some(dst), Some(src)) = (dst, src) {
                    exec.copy(si, dst, src)?;
                }
            }
        }
        // db += 1^T · dG
        if let Some(dp) = self.grads {
            for (db, dg) in [(dp.b_ih, b.dgi), (dp.b_hh, b.dgh)] {
                if let Some(db) = db {
                    exec.gemm(si, 1.0, io.ones.mat(1, tb), dg.mat(tb, gh), 1.0, db.mat(1, gh))?;
                }
            }
        }
        // Layer norm: the gains' gradients, then dGi through the input normalisation's backward.
        if let Some(ln) = &self.ln {
            ln.end(exec, si, &self.dims, b.dgi, b.dgh)?;
        }
        let Some(dp) = self.grads else { return Ok(()) };
        // dW_ih += dGi^T · X
        // (with input dropout, the dropped X, rebuilt)
        let input = match &self.var {
            Some(v) => v.weight_input(exec, si, &self.dims, io.input)?,
            None => io.input,
        };
        exec.gemm(si, 1.0, b.dgi.mat(tb, gh).t(), input.mat(tb, self.dims.input), 1.0, dp.w_ih.mat(gh, self.dims.input))?;
        // dW_hh += dGh^T · H_prev: the saved states shifted by one step, h0 at the first processed
        // step: two GEMMs, no copy (with recurrent dropout, the dropped states, rebuilt).
        let (h_all, h0) = match &self.var {
            Some(v) => v.weight_states(exec, si, &self.dims, io.saved.h, io.h0)?,
            None => (io.saved.h, io.h0),
        };
        if gru_reset_before::applies(&self.dims.cell) {
            let dims = (tl, bl, h);
            gru_reset_before::hh_weight_grad(exec, si, dims, self.reverse, b.dgi, h_all, io.h0, io.saved.extra, dp.w_hh)?;
        } else {
            let dw_hh = dp.w_hh.mat(gh, hout);
            let rest = (tl - 1) * bl;
            // With layer norm, the gradient of the raw product (before its normalisation).
            let dgh = self.ln.map_or(b.dgh, |ln| ln.dhg_raw);
            let (first, rest_g, rest_h) = if self.reverse {
                (tl - 1, dgh.at(0, rest * gh), h_all.at(bl * hout, rest * hout))
            } else {
                (0, dgh.at(bl * gh, rest * gh), h_all.at(0, rest * hout))
            };
            exec.gemm(si, 1.0, rest_g.mat(rest, gh).t(), rest_h.mat(rest, hout), 1.0, dw_hh)?;
            exec.gemm(si, 1.0, dgh.at(first * bl * gh, bl * gh).mat(bl, gh).t(), h0.mat(bl, hout), 1.0, dw_hh)?;
        }
        if let Some(dw_hr) = dp.w_hr {
            // dW_hr += dH^T · M
            exec.gemm(si, 1.0, b.dh_all.mat(tb, hout).t(), io.saved.m.mat(tb, h), 1.0, dw_hr.mat(hout, h))?;
        }
        if let Some(dp_peep) = dp.peephole {
            // dP += Σ_b dpeep[b]
            exec.add_column_sums(si, b.dpeep, bl, dp_peep)?;
        }
        Ok(())
    }
}
