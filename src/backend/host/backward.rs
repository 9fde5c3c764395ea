//! The backward time loop: layers from the last to the first, each direction's steps in reverse
//! processing order, then the weight gradients as GEMMs over all steps. See the
//! [module docs](super).

use super::col_sums::{self, ColSum};
use super::direction::{cut_rows, rows_or_zeros, BlockWork, Direction};
use super::layer_norm::{self, LstmBackScratch, LstmLnRows};
use super::peephole::{add_peephole_grad, PeepholeGrad};
use super::reserve::{concat, transpose_steps, Workspace};
use super::variational_dropout::{self, VariationalDropout};
use super::zoneout::{self, State, Zoneout};
use super::{gru_reset_before, CellBackward, HostKernels, HostPlan, HostReserve, Mat, MatMut, Pass, Weight};
use crate::backend::cell::Saved;
use crate::backend::stack::{prev_step, steps, LayerDims, PlanStamp, ReserveStamp};
use crate::backend::{check_backward, BackwardInput, BackwardOutput, GradMode};
use crate::config::RnnConfig;
use crate::element::Float;
use crate::error::{Error, Result};
use crate::shape::SeqShape;
use std::ops::Range;

/// A host backend's whole backward call with kernels `k`: validates the reserve `s` against
/// `plan` and the buffers against the reserve's shape (see [`BackwardInput`] and
/// [`BackwardOutput`] for their shapes), then runs the stack backward.
pub(crate) fn run_backward<T: Float, K: HostKernels<T>>(
    k: &K,
    plan: &HostPlan<T>,
    s: &HostReserve<T>,
    grads: BackwardInput<'_, [T]>,
    output: BackwardOutput<'_, [T]>,
    mode: GradMode,
) -> Result<()> {
    let cfg = plan.layout.config();
    let shape = s.stamp.check(&plan.stamp)?;
    check_backward(cfg, shape, plan.layout.len(), &grads, &output)?;
    backward_stack(k, plan, s, shape, grads, output, mode, None)
}

/// The gradients of a decoder's steps walked back one at a time
/// ([`Backend::backward_step_deferred`](crate::Backend::backward_step_deferred)) that their
/// parameters' gradients are computed from once all are walked
/// ([`Backend::deferred_param_grads`](crate::Backend::deferred_param_grads)): per step (the
/// last walked first), per layer, what its time loop left.
#[derive(Debug, Default)]
pub struct HostStepGrads<T> {
    /// `B` of the steps (set by the first).
    batch: usize,
    steps: Vec<Vec<DirGrads<T>>>,
}

impl<T> HostStepGrads<T> {
    /// The number of steps walked back into it.
    pub fn steps(&self) -> usize {
        self.steps.len()
    }
}

/// The backward of one step of a decoder run (`s` a one-step reserve of a forward stack),
/// without its parameters' gradients: writes `dx`, `dh0`, `dc0`, and keeps in `acc` the time
/// loop's gradients that [`run_deferred_params`] computes the parameters' from, over all the
/// steps at once. `output.dparams` must be `None`.
pub(crate) fn run_backward_step<T: Float, K: HostKernels<T>>(
    k: &K,
    plan: &HostPlan<T>,
    s: &HostReserve<T>,
    grads: BackwardInput<'_, [T]>,
    output: BackwardOutput<'_, [T]>,
    acc: &mut HostStepGrads<T>,
) -> Result<()> {
    let cfg = plan.layout.config();
    let shape = s.stamp.check(&plan.stamp)?;
    check_backward(cfg, shape, plan.layout.len(), &grads, &output)?;
    check_decoder_step(cfg, shape, "reserve")?;
    if output.dparams.is_some() {
        return Err(Error::invalid(
            "dparams",
            "none: a deferred step's parameter gradients come from the product over all the steps at the end",
            "a buffer",
        ));
    }
    if !acc.steps.is_empty() && acc.batch != shape.batch() {
        return Err(Error::invalid(
            "reserve",
            format!("a step of B = {}, the batch of the steps walked back before", acc.batch),
            format!("B = {}", shape.batch()),
        ));
    }
    let mut out = vec![DirGrads::default(); cfg.num_layers()];
    backward_stack(k, plan, s, shape, grads, output, GradMode::Accumulate, Some(&mut out))?;
    acc.batch = shape.batch();
    acc.steps.push(out);
    Ok(())
}

/// The checks of [`Backend::deferred_param_grads`](crate::Backend::deferred_param_grads) on its
/// reserves, before anything runs: `stamps` those of the reserves of a decoder's steps, each
/// filled by the plan of `plan` at its version, one step of a forward stack, all of one batch,
/// and as many as the steps walked back into `acc` (`walked`). Returns `B`.
pub(crate) fn check_deferred_steps<'r>(
    cfg: &RnnConfig,
    plan: &PlanStamp,
    stamps: impl ExactSizeIterator<Item = &'r ReserveStamp>,
    walked: usize,
) -> Result<usize> {
    let tl = stamps.len();
    if tl == 0 {
        return Err(Error::invalid("reserves", "the reserves of the steps walked back (at least one)", "none"));
    }
    if walked != tl {
        return Err(Error::invalid("acc", format!("the gradients of all {tl} steps walked back"), format!("{walked} steps")));
    }
    let mut bl = 0;
    for (t, stamp) in stamps.enumerate() {
        // (Checked first: a reserve of another plan is an error naming it, not `acc`.)
        let shape = stamp.check(plan)?;
        check_decoder_step(cfg, shape, "reserves")?;
        if t == 0 {
            bl = shape.batch();
        } else if shape.batch() != bl {
            return Err(Error::invalid(
                "reserves",
                format!("steps of one batch, B = {bl} as the first"),
                format!("B = {} at step {t}", shape.batch()),
            ));
        }
    }
    Ok(bl)
}

/// A decoder's steps: a reserve of one step of a forward (unidirectional) stack.
pub(crate) fn check_decoder_step(cfg: &RnnConfig, shape: &SeqShape, arg: &str) -> Result<()> {
    if cfg.num_directions() != 1 || cfg.reverse_only() {
        return Err(Error::invalid("direction", "forward: the steps of a decoder run forward in time", "a reverse direction"));
    }
    if shape.steps() != 1 || shape.lengths().is_some() {
        return Err(Error::invalid(arg, "the reserve of one decoder step (T = 1, no lengths)", format!("T = {}", shape.steps())));
    }
    Ok(())
}

/// The parameters' gradients of a decoder's steps walked back with [`run_backward_step`], each
/// weight's as one product over the rows of all the steps (as the backward of one call over the
/// whole sequence computes them, on the same values): `reserves` the steps' reserves in step
/// order, `acc` what their backward kept.
pub(crate) fn run_deferred_params<T: Float, K: HostKernels<T>>(
    k: &K,
    plan: &HostPlan<T>,
    reserves: &[HostReserve<T>],
    acc: HostStepGrads<T>,
    dparams: &mut [T],
    mode: GradMode,
) -> Result<()> {
    let cfg = plan.layout.config();
    let tl = reserves.len();
    let bl = check_deferred_steps(cfg, &plan.stamp, reserves.iter().map(|r| &r.stamp), acc.steps.len())?;
    // `acc` was walked with this plan over steps of this batch: every buffer the size the time
    // loop gives it.
    let one = SeqShape::new(1, bl)?;
    for (s, layers) in acc.steps.iter().enumerate() {
        let fits = layers.len() == cfg.num_layers()
            && layers.iter().enumerate().all(|(l, g)| g.each().map(Vec::len) == DirGrads::<T>::lens(&LayerDims::new(cfg, &one, l)));
        if !fits {
            return Err(Error::invalid(
                "acc",
                format!("the gradients of steps of this plan walked back with B = {bl}"),
                format!("buffers of other sizes at the {}th step walked", s + 1),
            ));
        }
    }
    if dparams.len() != plan.layout.len() {
        return Err(Error::shape(
            "dparams",
            format!("{} elements (the flat parameter layout)", plan.layout.len()),
            format!("{} elements", dparams.len()),
        ));
    }
    if mode == GradMode::Overwrite {
        dparams.fill(T::ZERO);
    }
    let shape = SeqShape::new(tl, bl)?;
    let work = &reserves[0].work;
    let (hlen, clen) = (bl * cfg.hidden_out_size(), bl * cfg.hidden_size());
    // The walk kept the last step first.
    let mut walked: Vec<_> = acc.steps.into_iter().rev().map(Vec::into_iter).collect();
    for l in 0..cfg.num_layers() {
        let dir = Direction::new(plan, &shape, l, 0);
        let merged = |part: &dyn Fn(&HostReserve<T>) -> &[T], what: &str| concat(reserves.iter().map(part), what);
        let input = if l == 0 {
            merged(&|r| &r.x, "the steps' inputs, [T, B, I]")?
        } else {
            merged(&|r| &r.outputs[l - 1], "the steps' layer inputs, [T, B, In]")?
        };
        // What forward saved, but the gates (backward's time loop read them).
        let mut sv = Saved::<Vec<T>>::default();
        for (i, v) in sv.each_mut().into_iter().enumerate().skip(1) {
            *v = merged(&|r| r.dirs[l].each()[i].as_slice(), "the steps' saved activations")?;
        }
        let mut g = DirGrads::default();
        let steps: Vec<DirGrads<T>> = walked.iter_mut().map(|w| w.next().unwrap_or_default()).collect();
        for (i, v) in g.each_mut().into_iter().enumerate() {
            *v = concat(steps.iter().map(|s| s.each()[i].as_slice()), "the steps' gate gradients")?;
        }
        drop(steps);
        let r0 = &reserves[0];
        let h0 = &r0.h0[l * hlen..(l + 1) * hlen];
        let zeros_c = vec![T::ZERO; if cfg.cell().has_cell_state() { clen } else { 0 }];
        let c0 = if r0.c0.is_empty() { &zeros_c[..] } else { &r0.c0[l * clen..(l + 1) * clen] };
        let (dgi_raw, partials) = if dir.dims.cell.layer_norm { input_side_ln(k, &dir, &g, &sv, true, work)? } else { (Vec::new(), None) };
        let in_drop = match &r0.input_dropout {
            Some(d) => d.factors(l, 0, 0, bl, dir.dims.input)?,
            None => Vec::new(),
        };
        let p = ParamIo {
            input: &input,
            saved: &sv,
            h0,
            c0,
            g: &g,
            dgi_raw: &dgi_raw,
            partials: partials.as_ref(),
            recurrent_dropout: r0.recurrent_dropout.as_ref(),
            in_drop: &in_drop,
        };
        add_param_grads(k, &dir, p, dparams, work)?;
        work.give([dgi_raw]);
        work.give(partials.map(layer_norm::RowPartials::into_buffer));
    }
    Ok(())
}

/// The stack backward of a call of `shape` on the validated reserve `s`; with `export`, each
/// layer's time-loop gradients are handed over instead of the parameters' gradients computed.
#[allow(clippy::too_many_arguments)]
fn backward_stack<T: Float, K: HostKernels<T>>(
    k: &K,
    plan: &HostPlan<T>,
    s: &HostReserve<T>,
    shape: &SeqShape,
    grads: BackwardInput<'_, [T]>,
    output: BackwardOutput<'_, [T]>,
    mode: GradMode,
    mut export: Option<&mut Vec<DirGrads<T>>>,
) -> Result<()> {
    let cfg = plan.layout.config();
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let (bl, tb) = (shape.batch(), shape.steps() * shape.batch());
    let (hlen, clen) = (bl * cfg.hidden_out_size(), bl * cfg.hidden_size());
    let lstm = cfg.cell().has_cell_state();
    let BackwardOutput { dx, mut dh0, mut dc0, mut dparams } = output;
    if let (Some(dp), GradMode::Overwrite) = (dparams.as_deref_mut(), mode) {
        dp.fill(T::ZERO);
    }

    // Gradient w.r.t. the output of the layer being processed, [T, B, D·Hout] (time-major also
    // when `dy` and `dx` are batch-first: they are copied in and out transposed, at the cost of
    // the plain copies). With merge by sum, both directions read the same `dy`.
    let mut d_out = s.work.zeroed(tb * cfg.output_size(), "the gradient of a layer's output, [T, B, D·Hout]")?;
    if let Some(dy) = grads.dy {
        if cfg.batch_first() {
            transpose_steps(dy, &mut d_out, bl, shape.steps());
        } else {
            d_out.copy_from_slice(dy);
        }
    }
    let want_dx = dx.is_some();
    for l in (0..nl).rev() {
        let input: &[T] = if l == 0 { &s.x } else { &s.outputs[l - 1] };
        let in_w = cfg.layer_input_size(l);
        let mut d_in = if l > 0 || want_dx { s.work.zeroed(tb * in_w, "the gradient of a layer's input, [T, B, In]")? } else { Vec::new() };
        let loop_io = |dir: &Direction<'_, T>| LoopIo {
            d_out: &d_out,
            saved: &s.dirs[dir.ld],
            h0: dir.block(Some(&s.h0), hlen).expect("h0 saved"),
            c0: if lstm { dir.block(Some(&s.c0), clen) } else { None },
            dhn: dir.block(grads.dhn, hlen),
            dcn: if lstm { dir.block(grads.dcn, clen) } else { None },
            zoneout: s.zoneout.as_ref(),
            recurrent_dropout: s.recurrent_dropout.as_ref(),
        };
        // Both directions' time loops at once, each on one thread (they share only what they
        // read: with merge by sum, the same `d_out`); what follows them (the parameter
        // gradients, dX) then runs for one direction after the other on all threads, as it
        // does without.
        let mut looped: Vec<Option<Looped<T>>> = (0..nd).map(|_| None).collect();
        if nd == 2 && k.parallel_directions() {
            let dirs = [Direction::new(plan, shape, l, 0), Direction::new(plan, shape, l, 1)];
            let ios = [loop_io(&dirs[0]), loop_io(&dirs[1])];
            let results = BlockWork::new((0..2).map(|_| Ok(None)));
            let serial = k.serial();
            k.for_long_blocks(2, &|d| results.put(d, bptt_loop(&serial, &dirs[d], ios[d], &s.work).map(Some)));
            for (d, slot) in looped.iter_mut().enumerate() {
                *slot = results.take(d).unwrap_or(Ok(None))?;
            }
        }
        for (d, looped) in looped.into_iter().enumerate() {
            let dir = Direction::new(plan, shape, l, d);
            let io = DirectionIo {
                reads: loop_io(&dir),
                input,
                d_in: (!d_in.is_empty()).then_some(&mut d_in[..]),
                dh0: dir.block_mut(&mut dh0, hlen),
                dc0: dir.block_mut(&mut dc0, clen),
                dparams: dparams.as_deref_mut(),
                input_dropout: s.input_dropout.as_ref(),
            };
            let ex = export.as_deref_mut().map(|e| &mut e[dir.ld]);
            match looped {
                Some(looped) => bptt_after_loop(k, &dir, io, looped, &s.work, ex)?,
                None => bptt_direction(k, dir, io, &s.work, ex)?,
            }
        }
        if let (Some(dropout), true) = (&s.dropout, l > 0) {
            // d_in is the gradient w.r.t. the dropped output of layer l - 1: through the same
            // factors to its output.
            dropout.apply(k, l - 1, &mut d_in, bl, in_w)?;
        }
        s.work.give([std::mem::replace(&mut d_out, d_in)]);
    }
    if let Some(dx) = dx {
        if cfg.batch_first() {
            transpose_steps(&d_out, dx, shape.steps(), bl);
        } else {
            dx.copy_from_slice(&d_out);
        }
    }
    s.work.give([d_out]);
    Ok(())
}

/// What one layer-direction of backward reads and writes.
struct DirectionIo<'a, T> {
    /// What its time loop reads.
    reads: LoopIo<'a, T>,
    /// `[T, B, In]`: the layer's input saved by forward.
    input: &'a [T],
    /// `[T, B, In]`: `dGi · W_ih` is added here (the gradient w.r.t. the layer's input), when
    /// wanted.
    d_in: Option<&'a mut [T]>,
    /// `[B, Hout]`: overwritten with the gradient w.r.t. the initial hidden state.
    dh0: Option<&'a mut [T]>,
    /// `[B, H]` (LSTM): overwritten with the gradient w.r.t. the initial cell state.
    dc0: Option<&'a mut [T]>,
    /// The flat parameter gradients; the direction's are added in.
    dparams: Option<&'a mut [T]>,
    /// The forward pass's input dropout, if any.
    input_dropout: Option<&'a VariationalDropout>,
}

/// `c[m, n] += Σ g[r, m]^T · x[r, n]` over the rows of every segment `(g, x)` of `segs`, in
/// order: a weight gradient, summed over the rows of all steps.
///
/// Up to `k.weight_grad_rows()` rows in all, one GEMM per segment adds onto `c`. Past that, the
/// rows are cut into blocks of that many rows at fixed offsets (never by thread count or
/// timing); each block's product is summed on its own, from zero, and the blocks are added in
/// order in f64, which rounds onto `c` once. The rounding error is then that of one block's
/// sum, whatever the number of steps, where one long sum's grows with them.
fn add_weight_grad<T: Float, K: HostKernels<T>>(k: &K, segs: &[(&[T], &[T])], (m, n): (usize, usize), c: &mut [T]) {
    add_weight_grad_cols(k, segs, m, 0..m, n, c)
}

/// [`add_weight_grad`] with the columns `cols` of each `g` (rows `g_w` wide) as `g`: `c` is
/// `[cols.len(), n]`.
fn add_weight_grad_cols<T: Float, K: HostKernels<T>>(k: &K, segs: &[(&[T], &[T])], g_w: usize, cols: Range<usize>, n: usize, c: &mut [T]) {
    let m = cols.len();
    if m == 0 || n == 0 {
        return;
    }
    // (An empty segment, a one-step call's, has no columns to offset.)
    fn g_view<'a, T>(g: &'a [T], rows: usize, cols: &Range<usize>, g_w: usize) -> Mat<'a, T> {
        Mat::strided(&g[cols.start.min(g.len())..], rows, cols.len(), g_w).t()
    }
    let block = k.weight_grad_rows().max(1);
    if segs.iter().map(|(g, _)| g.len() / g_w).sum::<usize>() <= block {
        for &(g, x) in segs {
            let rows = g.len() / g_w;
            k.weight_grad_gemm(T::ONE, g_view(g, rows, &cols, g_w), Mat::new(x, rows, n), T::ONE, MatMut::new(c, m, n));
        }
        return;
    }
    let mut wide: Vec<f64> = c.iter().map(|v| v.to_f64()).collect();
    let mut part = vec![T::ZERO; m * n];
    for &(g, x) in segs {
        for (gb, xb) in g.chunks(block * g_w).zip(x.chunks(block * n)) {
            let rows = gb.len() / g_w;
            k.weight_grad_gemm(T::ONE, g_view(gb, rows, &cols, g_w), Mat::new(xb, rows, n), T::ZERO, MatMut::new(&mut part, m, n));
            for (w, &p) in wide.iter_mut().zip(&part) {
                *w += p.to_f64();
            }
        }
    }
    for (c, w) in c.iter_mut().zip(wide) {
        *c = T::from_f64(w);
    }
}

/// Disjoint `ranges` of `dp`, each as its own slice, in the order given.
fn ranges_mut<'a, T>(dp: &'a mut [T], ranges: &[Range<usize>]) -> Vec<&'a mut [T]> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let mut out: Vec<Option<&'a mut [T]>> = (0..ranges.len()).map(|_| None).collect();
    let (mut rest, mut taken) = (dp, 0);
    for i in order {
        let r = &ranges[i];
        let (mine, tail) = std::mem::take(&mut rest)[r.start - taken..].split_at_mut(r.len());
        out[i] = Some(mine);
        (rest, taken) = (tail, r.end);
    }
    out.into_iter().flatten().collect()
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
    /// The layer-normalised LSTM's scratch (empty otherwise).
    ln_lstm: Option<LstmBackScratch<T>>,
    /// Zoneout: `[n, Hout]` and `[n, H]`, the gradients of the step's zoned-out units of `h`
    /// and `c`, which go straight to the previous step's; and a row's mask (scratch).
    zone_h: Vec<T>,
    zone_c: Vec<T>,
    hit: Vec<u32>,
    /// Recurrent dropout: `[n, Hout]` the block's factors (empty without).
    rec: Vec<T>,
}

impl<T: Float> BwdRows<T> {
    fn new(rows: Range<usize>, dm: &LayerDims, dhn: Option<&[T]>, dcn: Option<&[T]>, work: &Workspace<T>, rec: Vec<T>) -> Result<Self> {
        let n = rows.len();
        let ln_lstm = if dm.cell.layer_norm && dm.lstm() { Some(LstmBackScratch::new(n, dm.h, work)?) } else { None };
        Ok(BwdRows {
            row0: rows.start,
            dh_carry: rows_or_zeros(dhn, rows.clone(), dm.hout),
            dc_carry: rows_or_zeros(dcn, rows, if dm.lstm() { dm.h } else { 0 }),
            dh_t: vec![T::ZERO; n * dm.hout],
            dm_t: vec![T::ZERO; if dm.proj { n * dm.h } else { 0 }],
            dh_direct: vec![T::ZERO; n * dm.h],
            dgh: vec![T::ZERO; if keeps_dgh(dm) { 0 } else { n * dm.gh }],
            active: vec![false; n],
            ln_lstm,
            zone_h: Vec::new(),
            zone_c: Vec::new(),
            hit: Vec::new(),
            rec,
        })
    }
}

/// Whether the hidden-side pre-activation gradients `dGh` differ from the input-side ones and
/// are kept for the weight gradients: a GRU's, but for the reset gate before the matmul.
fn keeps_dgh(dm: &LayerDims) -> bool {
    dm.gru() && !gru_reset_before::applies(&dm.cell)
}

/// What one backward step reads of a layer-direction: its saved activations, initial state and
/// output gradient.
#[derive(Clone, Copy)]
struct StepInputs<'a, T> {
    saved: &'a Saved<Vec<T>>,
    /// `[B, Hout]`.
    h0: &'a [T],
    /// `[B, H]` (LSTM; empty otherwise).
    c0: &'a [T],
    /// `[T, B, D·Hout]`.
    d_out: &'a [T],
}

/// What one backward step writes for the weight gradients: a block's rows of one step of `dGi`,
/// `dGh` (GRU only; empty otherwise) and `dH` (with a projection; empty otherwise).
struct StepGrads<'a, T> {
    /// `[n, G·H]`.
    dgi: &'a mut [T],
    /// `[n, G·H]`.
    dgh: &'a mut [T],
    /// `[n, Hout]`.
    dh: &'a mut [T],
    /// `[n, G·H]` (layer norm; empty otherwise): the gradient w.r.t. the raw recurrent product
    /// `h_prev · W_hh^T`, `LNback(dGh)`.
    dhg_raw: &'a mut [T],
    /// `[n, H]` (layer-normalised LSTM; empty otherwise): the gradient w.r.t. the normalised
    /// cell state's `s = γ_c⊙ĉ + β_c`.
    dsh: &'a mut [T],
}

/// One backward step `t` of a block of rows: writes its rows of `dGi`, `dGh` and `dH` into `out`
/// and carries the state gradients in `st`.
fn backward_step<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: &Direction<'_, T>,
    t: usize,
    inp: StepInputs<'_, T>,
    st: &mut BwdRows<T>,
    out: StepGrads<'_, T>,
    zone: Option<(&Zoneout, zoneout::Sites)>,
) {
    let dm = &dir.dims;
    let (tl, bl, h, hout, gh, col) = (dm.t, dm.b, dm.h, dm.hout, dm.gh, dir.col);
    let widths = dm.cell.saved_sizes(1, 1);
    let (ew, cw) = (widths.extra, widths.c);
    let BwdRows { row0, dh_carry, dc_carry, dh_t, dm_t, dh_direct, dgh: dgh_scratch, active, ln_lstm, zone_h, zone_c, hit, rec } = st;
    let StepGrads { dgi, dgh, dh: dh_all, dhg_raw, dsh } = out;
    let (r0, n) = (*row0, active.len());
    // Rows r0..r0+n of step s of a saved [T, B, w] buffer.
    let rows = |s: usize, w: usize| (s * bl + r0) * w..(s * bl + r0 + n) * w;
    for (i, a) in active.iter_mut().enumerate() {
        *a = dir.shape.is_active(t, r0 + i);
    }
    let sv = inp.saved;
    let p = prev_step(t, tl, dir.reverse());
    let h_prev = p.map_or(&inp.h0[r0 * hout..(r0 + n) * hout], |p| &sv.h[rows(p, hout)]);
    let c_prev = p.map_or(&inp.c0[r0 * cw..(r0 + n) * cw], |p| &sv.c[rows(p, cw)]);
    for (b, &a) in active.iter().enumerate() {
        let dst = &mut dh_t[b * hout..(b + 1) * hout];
        dst.copy_from_slice(&dh_carry[b * hout..(b + 1) * hout]);
        if a {
            let row = (t * bl + r0 + b) * dm.out_w + col;
            for (v, &g) in dst.iter_mut().zip(&inp.d_out[row..row + hout]) {
                *v += g;
            }
        }
    }
    if let Some((z, sites)) = zone {
        // dh_t and dc are w.r.t. the zoned states: the zoned-out units' part goes straight to
        // the previous step's states (added below), the rest through the cell.
        z.split_grad(State::H, sites, t, r0, active, dh_t, zone_h, hit);
        if z.applies(State::C) {
            z.split_grad(State::C, sites, t, r0, active, dc_carry, zone_c, hit);
        }
    }
    let dm_slice: &[T] = if dm.proj {
        // m → h = m · W_hr^T, so dm = dh · W_hr.
        dir.backward_product(k, Weight::Hr, dh_t, T::ZERO, dm_t);
        for (b, &a) in active.iter().enumerate() {
            if a {
                dh_all[b * hout..(b + 1) * hout].copy_from_slice(&dh_t[b * hout..(b + 1) * hout]);
            }
        }
        dm_t
    } else {
        dh_t
    };
    let dgh: &mut [T] = if keeps_dgh(dm) { dgh } else { dgh_scratch };
    let step = CellBackward {
        active,
        hidden: h,
        peephole: dir.w.peephole,
        clip: dm.cell.clip,
        input_forget: dm.cell.input_forget,
        gates: &sv.gates[rows(t, gh)],
        extra: &sv.extra[rows(t, ew)],
        // The cell's own new c (before zoneout of the cell state).
        c: if dm.cell.zoneout_cell { &sv.c_new[rows(t, cw)] } else { &sv.c[rows(t, cw)] },
        c_prev,
        h_prev: if dm.gru() { h_prev } else { &[] },
        dm: dm_slice,
        dc: dc_carry,
        dgi,
        dgh: &mut *dgh,
        dh_direct: &mut *dh_direct,
    };
    // dh_prev = dGh · W_hh (+ GRU's direct term); inactive rows pass dh through unchanged.
    if gru_reset_before::applies(&dm.cell) {
        gru_reset_before::backward_step(k, dir, step, dh_carry);
    } else if dm.cell.layer_norm {
        match ln_lstm {
            Some(sc) => {
                let w = &dir.w;
                let rows_c = LstmLnRows {
                    gamma_c: w.ln_c_weight,
                    beta_c: w.ln_c_bias,
                    ln_c: &sv.ln_c[rows(t, h)],
                    rstd_c: &sv.rstd_c[rows(t, 1)],
                    dsh,
                };
                layer_norm::lstm_step_backward(k, &dm.cell, step, rows_c, sc);
            }
            None => k.cell_step_backward(&dm.cell, step),
        }
        // dHG_raw = LNback(dGh; γ_hh), then dh_prev = dHG_raw · W_hh.
        k.layer_norm_rows_backward(gh, dgh, dir.w.ln_hh, &sv.ln_h[rows(t, gh)], &sv.rstd_h[rows(t, 1)], dhg_raw);
        dir.backward_product(k, Weight::Hh, dhg_raw, T::ZERO, dh_carry);
        // Recurrent dropout: the product read the dropped state.
        variational_dropout::scale_active(active, rec, dh_carry);
    } else {
        k.cell_step_backward(&dm.cell, step);
        dir.backward_product(k, Weight::Hh, dgh, T::ZERO, dh_carry);
        variational_dropout::scale_active(active, rec, dh_carry);
    }
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
    if let Some((z, _)) = zone {
        z.add_kept(State::H, active, zone_h, dh_carry);
        z.add_kept(State::C, active, zone_c, dc_carry);
    }
}

/// The gradients one layer-direction's time loop leaves for its parameters' gradients, each
/// `[T, B, ·]` in time order (empty where the cell has none).
#[derive(Debug, Default, Clone)]
pub(crate) struct DirGrads<T> {
    /// `[T, B, G·H]`: `dGi`, the gradient w.r.t. the input-side pre-activations.
    dgi: Vec<T>,
    /// `[T, B, G·H]` (GRU, PyTorch form): `dGh`, the hidden side's.
    dgh: Vec<T>,
    /// `[T, B, Hout]` (LSTM with projection): `dH`, the left factor of `dW_hr`.
    dh: Vec<T>,
    /// `[T, B, G·H]` (layer norm): the gradient w.r.t. the raw recurrent product.
    dhg_raw: Vec<T>,
    /// `[T, B, H]` (layer-normalised LSTM): the gradient w.r.t. the normalised cell state.
    dsh: Vec<T>,
}

impl<T> DirGrads<T> {
    /// The lengths of a layer-direction's buffers (`dm`'s `T·B` rows): those
    /// [`bptt_direction`] allocates.
    fn lens(dm: &LayerDims) -> [usize; 5] {
        let (tb, ln) = (dm.t * dm.b, dm.cell.layer_norm);
        [
            tb * dm.gh,
            if keeps_dgh(dm) { tb * dm.gh } else { 0 },
            if dm.proj { tb * dm.hout } else { 0 },
            if ln { tb * dm.gh } else { 0 },
            if ln && dm.lstm() { tb * dm.h } else { 0 },
        ]
    }

    fn each(&self) -> [&Vec<T>; 5] {
        [&self.dgi, &self.dgh, &self.dh, &self.dhg_raw, &self.dsh]
    }

    fn each_mut(&mut self) -> [&mut Vec<T>; 5] {
        [&mut self.dgi, &mut self.dgh, &mut self.dh, &mut self.dhg_raw, &mut self.dsh]
    }

    fn into_array(self) -> [Vec<T>; 5] {
        [self.dgi, self.dgh, self.dh, self.dhg_raw, self.dsh]
    }
}

/// BPTT through one layer-direction: adds `dGi · W_ih` into `io.d_in`, writes `io.dh0` and
/// `io.dc0`, and adds the parameter gradients into `io.dparams`; with `export`, hands the time
/// loop's gradients over instead (for [`run_deferred_params`]).
///
/// The time loop runs in the blocks of rows of [`HostKernels::row_blocks`], each on its own;
/// the weight gradients are large GEMMs over all steps after it.
fn bptt_direction<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: Direction<'_, T>,
    io: DirectionIo<'_, T>,
    work: &Workspace<T>,
    export: Option<&mut DirGrads<T>>,
) -> Result<()> {
    let looped = bptt_loop(k, &dir, io.reads, work)?;
    bptt_after_loop(k, &dir, io, looped, work, export)
}

/// What the time loop of one layer-direction's BPTT reads (all of it shared with the other
/// direction).
struct LoopIo<'a, T> {
    /// `[T, B, D·Hout]`: the gradient w.r.t. the layer's output (the direction reads its
    /// columns).
    d_out: &'a [T],
    /// The activations forward saved.
    saved: &'a Saved<Vec<T>>,
    /// `[B, Hout]`: the initial hidden state forward used.
    h0: &'a [T],
    /// `[B, H]` (LSTM): the initial cell state forward used.
    c0: Option<&'a [T]>,
    /// `[B, Hout]`: the gradient w.r.t. the final hidden state, or zeros.
    dhn: Option<&'a [T]>,
    /// `[B, H]` (LSTM): the gradient w.r.t. the final cell state, or zeros.
    dcn: Option<&'a [T]>,
    /// The forward pass's zoneout, if any.
    zoneout: Option<&'a Zoneout>,
    /// The forward pass's recurrent dropout, if any.
    recurrent_dropout: Option<&'a VariationalDropout>,
}

// Copy without `T: Copy`: every field is a reference.
impl<T> Clone for LoopIo<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for LoopIo<'_, T> {}

/// What the time loop of one layer-direction's BPTT leaves: the gradients of every step and
/// each block of rows' carries.
struct Looped<T> {
    g: DirGrads<T>,
    blocks: Vec<BwdRows<T>>,
}

/// The time loop of one layer-direction's BPTT ([`bptt_direction`]'s first part), in the
/// blocks of rows of [`HostKernels::row_blocks`], each on its own.
fn bptt_loop<T: Float, K: HostKernels<T>>(k: &K, dir: &Direction<'_, T>, io: LoopIo<'_, T>, work: &Workspace<T>) -> Result<Looped<T>> {
    let dm = dir.dims;
    let (tl, bl, h, hout) = (dm.t, dm.b, dm.h, dm.hout);
    let LoopIo { d_out, saved: sv, h0, c0, dhn, dcn, zoneout, recurrent_dropout } = io;
    let (layer, direction) = (dir.ld / dm.dirs, dir.ld % dm.dirs);
    let zone = match zoneout {
        Some(z) => Some((z, zoneout::Sites::new(dir.ld / dm.dirs, dir.ld % dm.dirs)?)),
        None => None,
    };
    let zeros_c = vec![T::ZERO; if dm.lstm() { bl * h } else { 0 }];
    let inp = StepInputs { saved: sv, h0, c0: c0.unwrap_or(&zeros_c), d_out };

    // dGi of every step (and dGh, which differs from it for GRU only): the left factors of the
    // weight gradients. dH of every step (inactive rows zero): the left factor of dW_hr.
    // Layer norm: dHG_raw of every step (the left factor of dW_hh) and, LSTM, dŝ of every step
    // (for the cell-state normalisation's gain and bias).
    let mut g = DirGrads::default();
    let what = [
        "the input-side gate gradients, [T, B, G·H]",
        "the hidden-side gate gradients, [T, B, G·H]",
        "the hidden-state gradients, [T, B, Hout]",
        "the raw recurrent products' gradients, [T, B, G·H]",
        "the normalised cell states' gradients, [T, B, H]",
    ];
    for ((v, n), what) in g.each_mut().into_iter().zip(DirGrads::<T>::lens(&dm)).zip(what) {
        if n > 0 {
            *v = work.zeroed(n, what)?;
        }
    }
    let bounds = k.row_blocks(bl, Pass::Backward);
    let mut blocks: Vec<BwdRows<T>> = bounds
        .windows(2)
        .map(|r| {
            let rec = match &recurrent_dropout {
                Some(rd) => rd.factors(layer, direction, r[0], r[1] - r[0], hout)?,
                None => Vec::new(),
            };
            BwdRows::new(r[0]..r[1], &dm, dhn, dcn, work, rec)
        })
        .collect::<Result<_>>()?;
    {
        let serial = k.serial();
        let kb: &K = if blocks.len() > 1 { &serial } else { k };
        let [dgi, dgh, dh, dhg_raw, dsh] = g.each_mut().map(|v| cut_rows(v, tl, &bounds));
        let work = BlockWork::new(blocks.iter_mut().zip(dgi).zip(dgh).zip(dh).zip(dhg_raw).zip(dsh));
        k.for_long_blocks(work.len(), &|i| {
            let Some((((((st, mut dgi), mut dgh), mut dh), mut dhg_raw), mut dsh)) = work.take(i) else { return };
            for t in steps(tl, !dir.reverse()) {
                let out = StepGrads { dgi: &mut *dgi[t], dgh: &mut *dgh[t], dh: &mut *dh[t], dhg_raw: &mut *dhg_raw[t], dsh: &mut *dsh[t] };
                backward_step(kb, dir, t, inp, st, out, zone);
            }
        });
    }
    Ok(Looped { g, blocks })
}

/// The rest of one layer-direction's BPTT after its time loop ([`bptt_direction`]'s second
/// part): `dh0`, `dc0`, the parameter gradients and `dX`.
fn bptt_after_loop<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: &Direction<'_, T>,
    io: DirectionIo<'_, T>,
    looped: Looped<T>,
    work: &Workspace<T>,
    export: Option<&mut DirGrads<T>>,
) -> Result<()> {
    let dm = dir.dims;
    let (tl, bl, h, hout) = (dm.t, dm.b, dm.h, dm.hout);
    let DirectionIo { reads: LoopIo { saved: sv, h0, c0, recurrent_dropout, .. }, input, d_in, dh0, dc0, dparams, input_dropout } = io;
    let (layer, direction) = (dir.ld / dm.dirs, dir.ld % dm.dirs);
    let Looped { g, blocks } = looped;
    let tb = tl * bl;
    let ln = dm.cell.layer_norm;
    let zeros_c = vec![T::ZERO; if dm.lstm() { bl * h } else { 0 }];
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

    // With layer norm, the gradients w.r.t. the raw products X · W_ih^T, the left factors of
    // dW_ih and dX; and, with the parameters' gradients, the column sums of dGi (`RowPartials`):
    // the input side's gain and bias and, where dGh is dGi, the recurrent side's.
    let (dgi_raw, partials) = if ln { input_side_ln(k, dir, &g, sv, dparams.is_some(), work)? } else { (Vec::new(), None) };
    // Input dropout: `[B, In]` the factors the input projection read the input through.
    let in_drop = match &input_dropout {
        Some(d) => d.factors(layer, direction, 0, bl, dm.input)?,
        None => Vec::new(),
    };
    if let Some(dp) = dparams {
        let p = ParamIo {
            input,
            saved: sv,
            h0,
            c0: c0.unwrap_or(&zeros_c),
            g: &g,
            dgi_raw: &dgi_raw,
            partials: partials.as_ref(),
            recurrent_dropout,
            in_drop: &in_drop,
        };
        add_param_grads(k, dir, p, dp, work)?;
    }
    let dgi_w: &[T] = if ln { &dgi_raw } else { &g.dgi };
    match d_in {
        // dX += dGi · W_ih
        Some(d_in) if in_drop.is_empty() => dir.backward_product(k, Weight::Ih, dgi_w, T::ONE, d_in),
        // dX += (dGi · W_ih) ⊙ f
        Some(d_in) => {
            let mut gx = work.zeroed(tb * dm.input, "the gradient of a layer's dropped input, [T, B, In]")?;
            dir.backward_product(k, Weight::Ih, dgi_w, T::ONE, &mut gx);
            variational_dropout::add_dropped_rows(&gx, &in_drop, d_in);
            work.give([gx]);
        }
        None => {}
    }
    match export {
        Some(e) => *e = g,
        None => work.give(g.into_array()),
    }
    work.give([dgi_raw]);
    work.give(partials.map(layer_norm::RowPartials::into_buffer));
    blocks.into_iter().filter_map(|st| st.ln_lstm).for_each(|sc| sc.give_back(work));
    Ok(())
}

/// Layer norm's input side after the time loop: `LNback(dGi)`, the gradient w.r.t. the raw
/// input product (the left factor of `dW_ih` and `dX`), and with `sums` the column sums of the
/// gains and biases it gives in the same pass (see [`layer_norm::layer_norm_backward_summed`]).
fn input_side_ln<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: &Direction<'_, T>,
    g: &DirGrads<T>,
    sv: &Saved<Vec<T>>,
    sums: bool,
    work: &Workspace<T>,
) -> Result<(Vec<T>, Option<layer_norm::RowPartials<T>>)> {
    let dm = &dir.dims;
    let (tb, gh) = (dm.t * dm.b, dm.gh);
    // Every row is written below (an inactive row's dy is zero, and so is its dx).
    let mut dgi_raw = work.overwritten(tb * gh, "the raw input products' gradients, [T, B, G·H]")?;
    let x2 = (!keeps_dgh(dm)).then_some(&sv.ln_h[..]);
    let sums = if sums {
        // Sized up front, so that the workspace lends the buffer that fits it (a smaller one,
        // grown, would leave another request without its buffer: an allocation every call).
        let len = layer_norm::partials_len(tb, gh, if x2.is_some() { 3 } else { 2 });
        Some((x2, work.overwritten(len, "the layer norms' partial column sums")?))
    } else {
        None
    };
    let partials = layer_norm::layer_norm_backward_summed(k, gh, &g.dgi, dir.w.ln_ih, &sv.ln_x, &sv.rstd_x, &mut dgi_raw, sums);
    Ok((dgi_raw, partials))
}

/// What the parameters' gradients of one layer-direction read: what forward saved and the time
/// loop's gradients, over all the steps.
struct ParamIo<'a, T> {
    /// `[T, B, In]`: the layer's input.
    input: &'a [T],
    saved: &'a Saved<Vec<T>>,
    /// `[B, Hout]`, `[B, H]` (zeros where the call had none; empty but for LSTM): the initial
    /// states.
    h0: &'a [T],
    c0: &'a [T],
    g: &'a DirGrads<T>,
    /// Layer norm (empty otherwise): `LNback(dGi)`, and the column sums taken with it.
    dgi_raw: &'a [T],
    partials: Option<&'a layer_norm::RowPartials<T>>,
    recurrent_dropout: Option<&'a VariationalDropout>,
    /// Input dropout (empty without): `[B, In]` the factors the input projection read `x` through.
    in_drop: &'a [T],
}

/// Adds one layer-direction's parameters' gradients into `dp` (the flat layout): the weight
/// gradients as one GEMM over all the steps' rows (in blocks, [`add_weight_grad`]), the biases,
/// gains and peepholes as column sums.
fn add_param_grads<T: Float, K: HostKernels<T>>(
    k: &K,
    dir: &Direction<'_, T>,
    p: ParamIo<'_, T>,
    dp: &mut [T],
    work: &Workspace<T>,
) -> Result<()> {
    let dm = dir.dims;
    let (tl, bl, h, hout, gh) = (dm.t, dm.b, dm.h, dm.hout, dm.gh);
    let (layer, direction) = (dir.ld / dm.dirs, dir.ld % dm.dirs);
    let ParamIo { input, saved: sv, h0, c0, g, dgi_raw, partials, recurrent_dropout, in_drop } = p;
    let ln = dm.cell.layer_norm;
    // dGh equals dGi for every cell but GRU (PyTorch form).
    let dgh_ref: &[T] = if keeps_dgh(&dm) { &g.dgh } else { &g.dgi };
    let (dgi_w, dgh_w): (&[T], &[T]) = if ln { (dgi_raw, &g.dhg_raw) } else { (&g.dgi, dgh_ref) };
    let lr = dir.ranges;
    // dW_ih += dGi^T · X (with input dropout, the dropped X, rebuilt)
    if in_drop.is_empty() {
        add_weight_grad(k, &[(dgi_w, input)], (gh, dm.input), &mut dp[lr.w_ih.clone()]);
    } else {
        let mut x_dropped = work.overwritten(tl * bl * dm.input, "the dropped input of a layer, [T, B, In]")?;
        variational_dropout::drop_rows_into(input, in_drop, &mut x_dropped);
        add_weight_grad(k, &[(dgi_w, &x_dropped)], (gh, dm.input), &mut dp[lr.w_ih.clone()]);
        work.give([x_dropped]);
    }
    // dW_hh += dGh^T · H_prev, where H_prev is the saved states shifted by one step, with h0
    // at the first processed step: two segments, no copy.
    let (first, rest_g, rest_h) = if dir.reverse() {
        (tl - 1, &dgh_w[..(tl - 1) * bl * gh], &sv.h[bl * hout..])
    } else {
        (0, &dgh_w[bl * gh..], &sv.h[..(tl - 1) * bl * hout])
    };
    let first_g = &dgh_w[first * bl * gh..(first + 1) * bl * gh];
    // With recurrent dropout the product read the dropped states: rebuilt here, each step's
    // `h_prev ⊙ f`, in one segment.
    let dropped = match &recurrent_dropout {
        Some(rd) => Some(dropped_states(rd, layer, direction, &dm, dir.reverse(), &sv.h, h0, work)?),
        None => None,
    };
    let segs_dropped;
    let segs: &[(&[T], &[T])] = match &dropped {
        Some(hd) => {
            segs_dropped = [(dgh_w, &hd[..])];
            &segs_dropped
        }
        None => &[(rest_g, rest_h), (first_g, h0)],
    };
    if gru_reset_before::applies(&dm.cell) {
        // The r, z rows as above; the n rows' operand is r ⊙ H_prev, saved as `extra`.
        let (w_rz, w_n) = dp[lr.w_hh.clone()].split_at_mut(2 * h * hout);
        add_weight_grad_cols(k, segs, gh, 0..2 * h, hout, w_rz);
        add_weight_grad_cols(k, &[(&g.dgi, &sv.extra)], gh, 2 * h..gh, h, w_n);
    } else {
        add_weight_grad(k, segs, (gh, hout), &mut dp[lr.w_hh.clone()]);
    }
    work.give(dropped);
    if let Some(r) = lr.w_hr.clone() {
        // dW_hr += dH^T · M
        add_weight_grad(k, &[(&g.dh, &sv.m)], (hout, h), &mut dp[r]);
    }
    if let Some(r) = lr.peephole.clone() {
        let c_new = if dm.cell.zoneout_cell { &sv.c_new } else { &sv.c };
        let pg = PeepholeGrad { t: tl, b: bl, h, reverse: dir.reverse(), dgi: &g.dgi, c: &sv.c, c_new, c0 };
        add_peephole_grad(&pg, &mut dp[r], k.weight_grad_rows());
    }
    // The column sums, split across the threads by columns: the biases (db = Σ dG); with
    // layer norm, the normalisations' gains and biases in one pass over each `dy` for both,
    // dγ = Σ dy⊙x̂ and dβ = Σ dy, `dy` the gradient w.r.t. the normalisation's output
    // (`b_ih` is the input side's β; `b_hh`, added after the recurrent side's
    // normalisation, has the same sum).
    let sums = if ln {
        // The input side's, and the recurrent side's where dGh is dGi, from the partials;
        // the others (and the cell state's normalisation) in one pass over their `dy`.
        let fused = partials.map_or(0, |_| if keeps_dgh(&dm) { 1 } else { 2 });
        let sides = [
            (lr.ln_ih.clone(), lr.b_ih.clone(), &g.dgi[..], &sv.ln_x[..], gh),
            (lr.ln_hh.clone(), lr.b_hh.clone(), dgh_ref, &sv.ln_h[..], gh),
            (lr.ln_c_weight.clone(), lr.ln_c_bias.clone(), &g.dsh[..], &sv.ln_c[..], h),
        ];
        let sides: Vec<_> =
            sides.into_iter().enumerate().filter_map(|(side, (gain, bias, g, x, n))| Some((side, gain?, bias, g, x, n))).collect();
        let ranges: Vec<_> = sides.iter().flat_map(|(_, gain, bias, ..)| [Some(gain.clone()), bias.clone()]).flatten().collect();
        let mut accs = ranges_mut(dp, &ranges).into_iter();
        let mut sums = Vec::new();
        for (side, _, bias, g, x, n) in sides {
            let Some(acc) = accs.next() else { break };
            let plain = if bias.is_some() { accs.next() } else { None };
            match partials.filter(|_| side < fused) {
                Some(p) => {
                    // Kind 1 is Σ dy⊙x̂ of the input side, kind 2 the recurrent side's.
                    p.add_to(1 + side, acc);
                    if let Some(plain) = plain {
                        p.add_to(0, plain);
                    }
                }
                None => sums.push(ColSum { acc, plain, g, x: Some(x), n }),
            }
        }
        sums
    } else {
        let biases: Vec<_> =
            [(lr.b_ih.clone(), &g.dgi[..]), (lr.b_hh.clone(), dgh_ref)].into_iter().filter_map(|(r, g)| Some((r?, g))).collect();
        let ranges: Vec<_> = biases.iter().map(|(r, _)| r.clone()).collect();
        let mut accs: Vec<_> = ranges_mut(dp, &ranges).into_iter().zip(biases).map(|(acc, (_, g))| ColSum::bias(acc, g, gh)).collect();
        // Where dGh is dGi (every cell but the PyTorch-form GRU), both biases' sums are
        // taken in one pass over it, each onto its own accumulator.
        if accs.len() == 2 && !keeps_dgh(&dm) {
            let hh = accs.pop().map(|s| s.acc);
            accs[0].plain = hh;
        }
        accs
    };
    col_sums::run(k, sums, k.weight_grad_rows());
    Ok(())
}

/// The states a layer-direction's recurrent products read under recurrent dropout, `[T, B,
/// Hout]`: at step `t`, `h_prev ⊙ f` (the saved state of the step before in processing order, or
/// `h0`), `f` the layer-direction's factors.
#[allow(clippy::too_many_arguments)]
fn dropped_states<T: Float>(
    rd: &VariationalDropout,
    layer: usize,
    direction: usize,
    dm: &LayerDims,
    reverse: bool,
    h: &[T],
    h0: &[T],
    work: &Workspace<T>,
) -> Result<Vec<T>> {
    let (tl, bl, hout) = (dm.t, dm.b, dm.hout);
    let f = rd.factors::<T>(layer, direction, 0, bl, hout)?;
    let mut out = work.overwritten(tl * bl * hout, "the dropped states of the recurrent products, [T, B, Hout]")?;
    for (t, o) in out.chunks_exact_mut(bl * hout).enumerate() {
        let src = prev_step(t, tl, reverse).map_or(h0, |p| &h[p * bl * hout..(p + 1) * bl * hout]);
        variational_dropout::drop_into(src, &f, o);
    }
    Ok(out)
}
