//! The device time loop: the host driver's structure (`backend/host`), with every buffer of a
//! call on the device and no host round trip inside it.
//!
//! For each layer and direction,
//!
//! - forward: `XG[T·B, G·H] = X · W_ih^T` for all steps in one cuBLAS GEMM; per step
//!   `HG[B, G·H] = h_prev · W_hh^T` (cuBLAS) and one fused pointwise kernel that adds both
//!   biases, applies the cell and writes the state, the output row `y[t]` and, when training,
//!   the saved activations; an LSTM with projection adds `h = m · W_hr^T` and a small kernel
//!   that masks it;
//! - backward: per step in reverse processing order one fused kernel gives `dG` from the
//!   carried `dh` and `dy[t]`, and a GEMM adds `dG · W_hh` into the carry (or, for `B ≤ 8` where
//!   it fits, one cooperative launch runs that whole loop with `W_hh` in shared memory:
//!   kernels/persistent_backward.cu, chosen with the persistent forward's switches); after the loop,
//!   `dW_ih += dGi^T X`, `dW_hh += dGh^T H_prev`, `db += 1^T dG`, `dW_hr += dH^T M` and
//!   `dX (+)= dGi · W_ih` are big GEMMs.
//!
//! The two directions of a layer run concurrently, forward on stream 0 and reverse on stream 1,
//! each with its own cuBLAS handle; stream 0 waits for stream 1 at the end of each layer.
//! Everything is allocated on stream 0 before the fork, so nothing is freed while in use: both
//! passes allocate the buffers of every layer before they enqueue any layer's work.
//!
//! Layers overlap in a unidirectional stack of two or more layers (the **layer wavefront**,
//! [`forward_wavefront`], [`backward_wavefront`]; on unless [`Call::with_wavefront`] turns it off):
//! the time axis is cut into chunks of `K` steps ([`wavefront_chunk`]); layer `l`'s chunk `c`
//! is its input-projection GEMM for those steps and its step loop over them, on stream
//! `l mod 2`, after waiting for an event layer `l-1` recorded after its chunk `c`. The work is
//! issued in diagonals (`d = 0, 1, ...`; for each layer `l`, chunk `c = d - l`), so that two
//! streams pipeline a stack of any depth. Layer 0 keeps its whole-sequence projection (the
//! same GEMM as without the wavefront); the projections of layers ≥ 1 have `K·B` rows, for
//! which cuBLAS may pick another algorithm, so results agree with the layer-by-layer order to
//! f32 rounding on the device (bit for bit on the host emulation, whose sgemm computes each
//! row on its own). Backward likewise, from the last layer down and in reverse time: layer
//! `l`'s chunk is its step loop over the chunk and the chunk's rows of `dX = dGi · W_ih`
//! (layer `l-1`'s `dy`), after layer `l+1`'s chunk; weight gradients and layer 0's `dx` stay
//! whole-sequence GEMMs after a layer's last chunk. Not overlapped: bidirectional stacks (a
//! layer's output at step t needs its reverse direction's whole sequence), and stacks whose
//! layers take a persistent kernel (one launch for a layer's whole sequence cannot be cut into
//! chunks; all layers of a stack share the sizes that choice depends on).
//!
//! Storage type ([`Call::storage`]): f32, or f16/bf16 for the weights, `x`, `y`, the states `h`
//! (and the LSTM's `m`), the layer outputs, `dG` and every gradient returned (all GEMM operands
//! are 16-bit then, each GEMM accumulating in f32); the gate pre-activations `XG`, `HG`, the
//! saved gates, the LSTM cell state and the carried `dh`, `dc` stay f32, and the weight
//! gradients accumulate over all steps (and onto the caller's, with `Accumulate`) in an f32
//! buffer, rounded once at the end. Copies between an f32 and a 16-bit view convert.

use super::buffer::View;
use super::exec::{args, persistent_backward_smem, persistent_cell_smem, persistent_smem, Call, Kernel, Mem, PERSISTENT_THREADS};
use crate::backend::{prev_step, steps, GradMode};
use crate::config::{CellKind, RnnConfig};
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::params::{LayerRanges, ParamLayout};
use crate::shape::SeqShape;
use cudarc::driver::LaunchConfig;

/// Activations of one layer-direction saved by a training forward pass; each `[T, B, *]` in
/// time order whatever the direction. `m` and `h` are of the storage type, the others f32.
#[derive(Debug, Default)]
pub(crate) struct DirSave {
    /// `[T, B, G·H]`: activated gates.
    gates: Option<Mem<f32>>,
    /// `[T, B, H]`: GRU's `W_hn h_prev + b_hn`.
    extra: Option<Mem<f32>>,
    /// `[T, B, H]`: LSTM cell state after each step.
    c: Option<Mem<f32>>,
    /// `[T, B, H]`: LSTM's `o·tanh(c)` before the projection (zero on inactive rows).
    m: Option<Mem<f32>>,
    /// `[T, B, Hout]`: hidden state after each step (kept, not zeroed, past a length).
    h: Option<Mem<f32>>,
}

/// What the CUDA backend's training forward pass saves for backward, in device memory.
///
/// Create an empty one with `Default`; its buffers are reused while shapes repeat.
#[derive(Debug, Default)]
pub struct CudaReserve {
    pub(crate) plan_id: u64,
    pub(crate) plan_version: u64,
    pub(crate) shape: Option<SeqShape>,
    /// `[B]` lengths as i32.
    lengths: Option<Mem<i32>>,
    // x, h0 and outputs are of the storage type, c0 f32.
    /// `[T, B, I]`.
    x: Option<Mem<f32>>,
    /// `[L·D, B, Hout]`, zeros when not given.
    h0: Option<Mem<f32>>,
    /// `[L·D, B, H]` (LSTM), zeros when not given.
    c0: Option<Mem<f32>>,
    /// Per layer but the last, `[T, B, D·Hout]`: the next layer's input.
    outputs: Vec<Option<Mem<f32>>>,
    /// Per layer and direction (`l·D + d`).
    dirs: Vec<DirSave>,
}

impl crate::backend::RnnReserve for CudaReserve {
    fn shape(&self) -> Option<&SeqShape> {
        self.shape.as_ref()
    }
}

#[cfg(all(test, rnn_kernels_host_emulation))]
impl CudaReserve {
    /// The bits of every saved buffer, in a fixed order (tests: two forward passes saved the
    /// same activations).
    pub(crate) fn saved_bits(&self) -> Vec<Vec<u32>> {
        let bits = |m: &Option<Mem<f32>>| match m {
            Some(Mem::Host(v)) => v.iter().map(|a| a.to_bits()).collect(),
            _ => Vec::new(),
        };
        let mut all = vec![bits(&self.x), bits(&self.h0), bits(&self.c0)];
        all.extend(self.outputs.iter().map(bits));
        for d in &self.dirs {
            all.extend([&d.gates, &d.extra, &d.c, &d.m, &d.h].map(bits));
        }
        all
    }
}

/// Sizes of one layer.
#[derive(Clone, Copy)]
struct Dims {
    cell: CellKind,
    t: usize,
    b: usize,
    h: usize,
    hout: usize,
    gh: usize,
    input: usize,
    out_w: usize,
    proj: bool,
    /// `D`.
    dirs: usize,
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
            dirs: cfg.num_directions(),
        }
    }
    fn lstm(&self) -> bool {
        self.cell == CellKind::Lstm
    }
    fn gru(&self) -> bool {
        self.cell == CellKind::Gru
    }
}

/// Checks that every size of a call fits the `int` arguments of cuBLAS and the kernels.
pub(crate) fn check_sizes(cfg: &RnnConfig, shape: &SeqShape) -> Result<()> {
    let tb = shape.steps().checked_mul(shape.batch());
    let widest = cfg.gates() * cfg.hidden_size().max(cfg.input_size()).max(cfg.output_size());
    match tb {
        Some(tb) if tb <= i32::MAX as usize && widest <= i32::MAX as usize => Ok(()),
        _ => Err(Error::invalid("shape", "T·B and every matrix width at most 2^31 - 1 (cuBLAS takes int sizes)", format!("{shape:?}"))),
    }
}

fn range_view(w: View, r: &std::ops::Range<usize>) -> View {
    w.at(r.start, r.len())
}

/// Buffers of one direction's forward pass.
struct FwdBufs {
    /// `[T·B, G·H]`.
    xg: View,
    /// `[B, G·H]`.
    hg: View,
    /// Training: the saved `[T, B, Hout]`; inference: two slots `[2, B, Hout]`.
    h: View,
    /// As `h`, `[*, B, H]`, LSTM only.
    c: View,
    /// LSTM with projection: training the saved `[T, B, H]`, inference `[B, H]`.
    m: View,
    /// Training: the saved `[T, B, G·H]`.
    gates: Option<View>,
    /// Training GRU: the saved `[T, B, H]`.
    extra: Option<View>,
    training: bool,
    /// The persistent kernel's units per block and its grid barrier (`[2]` zeros), when it
    /// runs this direction.
    persistent: Option<(usize, View)>,
}

/// Inputs and outputs of one direction's forward pass.
struct FwdIo {
    /// `[T, B, In]`.
    input: View,
    /// `[T, B, D·Hout]`: this direction writes columns `d·Hout..(d+1)·Hout`.
    out: View,
    /// `[B, Hout]`, `[B, H]` (zeros when not given; c0 null for non-LSTM).
    h0: View,
    c0: View,
    hn: Option<View>,
    cn: Option<View>,
}

/// The whole forward pass. Buffers have been validated against `cfg` and `shape`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    call: &Call<'_>,
    layout: &ParamLayout,
    w: View,
    shape: &SeqShape,
    x: View,
    h0: Option<View>,
    c0: Option<View>,
    y: View,
    hn: Option<View>,
    cn: Option<View>,
    mut save: Option<&mut CudaReserve>,
) -> Result<()> {
    let cfg = layout.config();
    check_sizes(cfg, shape)?;
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let (bl, tl) = (shape.batch(), shape.steps());
    let (h, hout, gh) = (cfg.hidden_size(), cfg.hidden_out_size(), cfg.gates() * cfg.hidden_size());
    let (hlen, clen) = (bl * hout, bl * h);
    let lstm = cfg.cell().has_cell_state();
    let proj = cfg.proj_size() > 0;
    let mut temps: Vec<Mem<f32>> = Vec::new();
    let mut temp = |n: usize| -> Result<View> {
        let s = call.alloc(n)?;
        let v = call.view(&s);
        temps.push(s);
        Ok(v)
    };
    // Temporaries of the storage type.
    let st = call.storage();
    let mut temps_st: Vec<Mem<f32>> = Vec::new();
    let mut temp_st = |n: usize| -> Result<View> {
        let s = call.alloc_as(st, n)?;
        let v = call.view_as(st, &s, n);
        temps_st.push(s);
        Ok(v)
    };

    let lens_inf;
    let lens = match save.as_deref_mut() {
        Some(r) => {
            r.lengths = Some(call.lengths(shape)?);
            call.ptr_i32(r.lengths.as_ref().expect("set"))
        }
        None => {
            lens_inf = call.lengths(shape)?;
            call.ptr_i32(&lens_inf)
        }
    };
    // h0 and c0 (given or zeros): in the reserve when training, else a temporary of zeros when
    // not given.
    let (h0v, c0v) = match save.as_deref_mut() {
        Some(r) => {
            let xv = call.fit_as(st, &mut r.x, x.len)?;
            call.copy(0, xv, x)?;
            let hv = call.fit_as(st, &mut r.h0, nl * nd * hlen)?;
            call.copy_or_zero(0, hv, h0)?;
            let cv = call.fit(&mut r.c0, if lstm { nl * nd * clen } else { 0 })?;
            if lstm {
                call.copy_or_zero(0, cv, c0)?;
            }
            (hv, cv)
        }
        None => {
            let hv = match h0 {
                Some(v) => v,
                None => {
                    let z = temp_st(nl * nd * hlen)?;
                    call.fill(0, z, 0.0)?;
                    z
                }
            };
            let cv = match (lstm, c0) {
                (false, _) => View::NULL,
                (true, Some(v)) if v.ty == Dtype::F32 => v,
                (true, Some(v)) => {
                    // The cell state is f32.
                    let c = temp(v.len)?;
                    call.copy(0, c, v)?;
                    c
                }
                (true, None) => {
                    let z = temp(nl * nd * clen)?;
                    call.fill(0, z, 0.0)?;
                    z
                }
            };
            (hv, cv)
        }
    };
    if let Some(r) = save.as_deref_mut() {
        r.outputs.resize_with(nl - 1, || None);
        r.dirs.resize_with(nl * nd, DirSave::default);
    }

    let mut prev_out = x;
    let mut layers = Vec::with_capacity(nl);
    for l in 0..nl {
        let last = l + 1 == nl;
        let dims = Dims::new(cfg, shape, l);
        let out = if last {
            y
        } else {
            match save.as_deref_mut() {
                Some(r) => call.fit_as(st, &mut r.outputs[l], tl * bl * cfg.output_size())?,
                None => temp_st(tl * bl * cfg.output_size())?,
            }
        };
        let mut bufs = Vec::new();
        for d in 0..nd {
            let i = l * nd + d;
            let xg = temp(tl * bl * gh)?;
            let hg = temp(bl * gh)?;
            let mut b = match save.as_deref_mut() {
                Some(r) => {
                    let sv = &mut r.dirs[i];
                    FwdBufs {
                        xg,
                        hg,
                        h: call.fit_as(st, &mut sv.h, tl * hlen)?,
                        c: call.fit(&mut sv.c, if lstm { tl * clen } else { 0 })?,
                        m: call.fit_as(st, &mut sv.m, if proj { tl * clen } else { 0 })?,
                        gates: Some(call.fit(&mut sv.gates, tl * bl * gh)?),
                        extra: Some(call.fit(&mut sv.extra, if dims.gru() { tl * clen } else { 0 })?),
                        training: true,
                        persistent: None,
                    }
                }
                None => FwdBufs {
                    xg,
                    hg,
                    h: temp_st(2 * hlen)?,
                    c: if lstm { temp(2 * clen)? } else { View::NULL },
                    m: if proj { temp_st(clen)? } else { View::NULL },
                    gates: None,
                    extra: None,
                    training: false,
                    persistent: None,
                },
            };
            // A persistent kernel: persistent_lstm.cu (LSTM without projection) or
            // persistent_cell.cu (GRU, RNN), where it fits; f32 storage only (persistent_units).
            let persistent = if dims.lstm() && dims.proj { None } else { call.persistent_units(dims.cell, dims.h, dims.b, dims.dirs) };
            if persistent.is_none() && call.persistent_required() {
                return Err(Error::invalid(
                    "persistent (required)",
                    "layers that fit a persistent kernel: f32 storage, batch ≤ 8, no projection, W_hh within the blocks' shared memory",
                    format!("{:?} layer {l} with hidden size {h}, batch {bl}, {nd} direction(s), {st:?} storage", dims.cell),
                ));
            }
            if let Some(units) = persistent {
                let barrier = temp(2)?;
                // 0.0f32 is all zero bits: the barrier's count and generation.
                call.fill(0, barrier, 0.0)?;
                b.persistent = Some((units, barrier));
            }
            let io = FwdIo {
                input: prev_out,
                out,
                h0: h0v.at(i * hlen, hlen),
                c0: if lstm { c0v.at(i * clen, clen) } else { View::NULL },
                hn: hn.map(|v| v.at(i * hlen, hlen)),
                cn: if lstm { cn.map(|v| v.at(i * clen, clen)) } else { None },
            };
            bufs.push((b, io));
        }
        layers.push((dims, bufs));
        prev_out = out;
    }
    // Every buffer of every layer is allocated before any work forks to stream 1.
    let persistent = layers.iter().any(|(_, bufs)| bufs.iter().any(|(b, _)| b.persistent.is_some()));
    joined_on_error(call, || {
        if let Some(k) = wavefront_chunk(call, cfg, shape).filter(|_| !persistent) {
            return forward_wavefront(call, layout, w, lens, &layers, k);
        }
        for (l, (dims, bufs)) in layers.iter().enumerate() {
            if nd == 2 {
                call.order(1, 0)?;
            }
            for (d, (b, io)) in bufs.iter().enumerate() {
                forward_direction(call, d, dims, layout.layer(l, d), w, lens, io, b)?;
            }
            if nd == 2 {
                call.order(0, 1)?;
            }
        }
        Ok(())
    })?;
    // Only a reserve whose every buffer was written is usable by backward.
    if let Some(r) = save {
        r.shape = Some(shape.clone());
    }
    Ok(())
}

/// Runs `work` (which may fork to stream 1) and, when it fails, joins stream 1 into stream 0
/// before returning its error: the pass's temporaries are freed on stream 0 once it returns,
/// and the C ABI's caller stream waits for stream 0 only, so work left on stream 1 by a failed
/// launch or GEMM in the middle must be ordered before them. (On success every path joins
/// itself.) The join's own error, if any, is dropped in favour of the first one. A panic in
/// `work` (a bug: a view outside its buffer) joins too, from a guard's `drop` while unwinding,
/// before the temporaries are dropped.
fn joined_on_error(call: &Call<'_>, work: impl FnOnce() -> Result<()>) -> Result<()> {
    struct JoinOnUnwind<'c, 'a>(&'c Call<'a>);
    impl Drop for JoinOnUnwind<'_, '_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = self.0.order(0, 1);
            }
        }
    }
    let guard = JoinOnUnwind(call);
    let r = work();
    drop(guard);
    if r.is_err() {
        let _ = call.order(0, 1);
    }
    r
}

/// The layer wavefront's chunk `K` for a call, or `None` when the layers run one after the
/// other: bidirectional stacks (a layer's output at step t needs its reverse direction's whole
/// sequence), a single layer, or the switch off ([`Call::with_wavefront`]). The caller also
/// keeps today's order when a layer takes a persistent kernel (one launch for the whole
/// sequence cannot be cut into chunks).
///
/// `K = max(ceil(T / 16), ceil(512 / B))`, at most `T` (or the call's forced chunk): each
/// chunk's input-projection GEMM has at least 512 rows (`K·B`), big enough for cuBLAS to
/// fill the GPU with tiles, and a stack of `L` layers runs in at most `16 + L - 1` diagonals.
pub(crate) fn wavefront_chunk(call: &Call<'_>, cfg: &RnnConfig, shape: &SeqShape) -> Option<usize> {
    let (on, forced) = call.wavefront();
    if !on || cfg.num_directions() != 1 || cfg.num_layers() < 2 {
        return None;
    }
    let (t, b) = (shape.steps(), shape.batch().max(1));
    let k = if forced > 0 { forced } else { t.div_ceil(16).max(512usize.div_ceil(b)) };
    Some(k.clamp(1, t.max(1)))
}

/// The forward pass of a unidirectional stack as a layer wavefront: the time axis cut into
/// chunks of `k` steps; layer `l`'s chunk `c` (its input-projection GEMM for those steps, then
/// its per-step loop over them) runs on stream `l mod 2` after waiting for an event that layer
/// `l-1` recorded after its chunk `c`; the work is issued in diagonals (`d = 0, 1, ...`: for
/// each layer `l`, chunk `c = d - l`), so that layer `l+1` runs chunk `c` while layer `l` runs
/// chunk `c+1`. Layer 0 keeps its whole-sequence projection (issued before its first chunk):
/// only the projections of layers ≥ 1 have `K·B` rows instead of `T·B`. Every buffer was
/// allocated (on stream 0) before; stream 1 first waits for stream 0, and stream 0 for
/// stream 1 at the end.
fn forward_wavefront(
    call: &Call<'_>,
    layout: &ParamLayout,
    w: View,
    lens: u64,
    layers: &[(Dims, Vec<(FwdBufs, FwdIo)>)],
    k: usize,
) -> Result<()> {
    let nl = layers.len();
    let tl = layers[0].0.t;
    let chunks = tl.div_ceil(k);
    call.order(1, 0)?;
    // done[l][c]: layer l's chunk c has finished (kept until the end of the call).
    let mut done: Vec<Vec<_>> = (0..nl).map(|_| Vec::with_capacity(chunks)).collect();
    for diag in 0..chunks + nl - 1 {
        for (l, (dm, bufs)) in layers.iter().enumerate() {
            let Some(c) = diag.checked_sub(l).filter(|&c| c < chunks) else { continue };
            let si = l % 2;
            if l > 0 {
                call.wait(si, &done[l - 1][c])?;
            }
            let (b, io) = &bufs[0];
            let lr = layout.layer(l, 0);
            let w_ih = range_view(w, &lr.w_ih).mat(dm.gh, dm.input);
            let ks = c * k..((c + 1) * k).min(tl);
            // XG rows of the chunk (layer 0: all T·B rows, once).
            let (r0, rows) = if l == 0 { (0, if c == 0 { tl } else { 0 }) } else { (ks.start, ks.len()) };
            if rows > 0 {
                let (bl, inw, gh) = (dm.b, dm.input, dm.gh);
                let input = io.input.at(r0 * bl * inw, rows * bl * inw).mat(rows * bl, inw);
                call.gemm(si, 1.0, input, w_ih.t(), 0.0, b.xg.at(r0 * bl * gh, rows * bl * gh).mat(rows * bl, gh))?;
            }
            forward_steps(call, si, 0, dm, lr, w, lens, io, b, ks)?;
            done[l].push(call.record(si)?);
        }
    }
    call.order(0, 1)
}

/// One layer-direction forward on stream `d`.
#[allow(clippy::too_many_arguments)]
fn forward_direction(call: &Call<'_>, d: usize, dm: &Dims, lr: &LayerRanges, w: View, lens: u64, io: &FwdIo, b: &FwdBufs) -> Result<()> {
    let Dims { t: tl, b: bl, h, hout, gh, out_w, .. } = *dm;
    let tb = tl * bl;
    let reverse = d == 1;
    let w_ih = range_view(w, &lr.w_ih).mat(gh, dm.input);
    let b_ih = lr.b_ih.as_ref().map_or(View::NULL, |r| range_view(w, r));
    let b_hh = lr.b_hh.as_ref().map_or(View::NULL, |r| range_view(w, r));

    // XG[T·B, G·H] = X · W_ih^T for all steps; the biases are added by the step kernels.
    call.gemm(d, 1.0, io.input.mat(tb, dm.input), w_ih.t(), 0.0, b.xg.mat(tb, gh))?;

    if let Some((units, barrier)) = b.persistent.filter(|_| !dm.lstm()) {
        let w_hh_ptr = range_view(w, &lr.w_hh).at(0, gh * hout).ptr;
        return persistent_cell_forward(call, d, dm, lens, [w_hh_ptr, b_ih.ptr, b_hh.ptr], io, b, units, barrier);
    }
    if let Some((units, barrier)) = b.persistent {
        // The whole sequence in one cooperative launch (kernels/persistent_lstm.cu).
        let blocks = h.div_ceil(units);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (PERSISTENT_THREADS, 1, 1),
            shared_mem_bytes: persistent_smem(dm.h, dm.b, units) as u32,
        };
        let (bi, hi, ti, ri, ui, ow, tr) = (bl as i32, h as i32, tl as i32, reverse as i32, units as i32, out_w as i32, b.training as i32);
        let y = io.out.strided(d * hout, tb, out_w, hout).ptr;
        let c_save = if b.training { b.c.at(0, tb * h).ptr } else { 0 };
        let gates_save = b.gates.map_or(0, |g| g.at(0, tb * gh).ptr);
        let h_states = b.h.at(0, if b.training { tb * hout } else { 2 * bl * hout }).ptr;
        let (hn, cn) = (io.hn.map_or(0, |v| v.ptr), io.cn.map_or(0, |v| v.ptr));
        let w_hh_ptr = range_view(w, &lr.w_hh).at(0, gh * hout).ptr;
        return call.launch_with(
            d,
            Kernel::PersistentLstmForward,
            cfg,
            true,
            &args![
                bi,
                hi,
                ti,
                ri,
                ui,
                lens,
                b.xg.ptr,
                w_hh_ptr,
                b_ih.ptr,
                b_hh.ptr,
                io.h0.ptr,
                io.c0.ptr,
                h_states,
                tr,
                c_save,
                gates_save,
                y,
                ow,
                hn,
                cn,
                barrier.ptr
            ],
        );
    }

    forward_steps(call, d, d, dm, lr, w, lens, io, b, 0..tl)
}

/// Steps `ks` (in processing order: `kk`-th step processed, `t = kk` forward, `T-1-kk`
/// reverse) of direction `d`'s per-step loop on stream `si`, after the `XG` rows of those steps
/// were written; the state before `ks.start` is the one the earlier steps left (h0, c0 at the
/// first). The last chunk copies `hn`, `cn`.
#[allow(clippy::too_many_arguments)]
fn forward_steps(
    call: &Call<'_>,
    si: usize,
    d: usize,
    dm: &Dims,
    lr: &LayerRanges,
    w: View,
    lens: u64,
    io: &FwdIo,
    b: &FwdBufs,
    ks: std::ops::Range<usize>,
) -> Result<()> {
    let Dims { t: tl, b: bl, h, hout, gh, out_w, .. } = *dm;
    let reverse = d == 1;
    let w_hh = range_view(w, &lr.w_hh).mat(gh, hout);
    let b_ih = lr.b_ih.as_ref().map_or(View::NULL, |r| range_view(w, r));
    let b_hh = lr.b_hh.as_ref().map_or(View::NULL, |r| range_view(w, r));
    let w_hr = lr.w_hr.as_ref().map(|r| range_view(w, r).mat(hout, h));
    let (bi, hi, ow) = (bl as i32, h as i32, out_w as i32);
    let slot = |kk: usize, t: usize| if b.training { t } else { kk % 2 };
    // Where the step before the chunk left the state (its slot), `None` at the first step.
    let mut prev: Option<usize> = ks.start.checked_sub(1).map(|kp| slot(kp, if reverse { tl - 1 - kp } else { kp }));
    for (kk, t) in steps(tl, reverse).enumerate().skip(ks.start).take(ks.len()) {
        let cur = slot(kk, t);
        let h_prev = prev.map_or(io.h0, |p| b.h.at(p * bl * hout, bl * hout));
        let c_prev = if dm.lstm() { prev.map_or(io.c0, |p| b.c.at(p * bl * h, bl * h)) } else { View::NULL };
        let h_t = b.h.at(cur * bl * hout, bl * hout);
        let c_t = if dm.lstm() { b.c.at(cur * bl * h, bl * h) } else { View::NULL };
        // HG[B, G·H] = h_prev · W_hh^T
        call.gemm(si, 1.0, h_prev.mat(bl, hout), w_hh.t(), 0.0, b.hg.mat(bl, gh))?;
        let xg_t = b.xg.at(t * bl * gh, bl * gh).ptr;
        let gates_t = b.gates.map_or(0, |g| g.at(t * bl * gh, bl * gh).ptr);
        let y_t = io.out.strided(t * bl * out_w + d * hout, bl, out_w, hout).ptr;
        let step = t as i32;
        match dm.cell {
            CellKind::Lstm => {
                let m_t = if dm.proj { b.m.at(if b.training { t * bl * h } else { 0 }, bl * h) } else { h_t };
                let keep = if dm.proj { 0 } else { h_prev.ptr };
                let y_arg = if dm.proj { 0 } else { y_t };
                call.launch(
                    si,
                    Kernel::LstmForwardStep,
                    bl * h,
                    &args![bi, hi, step, lens, xg_t, b.hg.ptr, b_ih.ptr, b_hh.ptr, c_prev.ptr, keep, gates_t, c_t.ptr, m_t.ptr, y_arg, ow],
                )?;
                if let Some(w_hr) = w_hr {
                    // h[B, Hout] = m · W_hr^T, then masked.
                    call.gemm(si, 1.0, m_t.mat(bl, h), w_hr.t(), 0.0, h_t.mat(bl, hout))?;
                    let ho = hout as i32;
                    call.launch(si, Kernel::LstmProjectionFinish, bl * hout, &args![bi, ho, step, lens, h_prev.ptr, h_t.ptr, y_t, ow])?;
                }
            }
            CellKind::Gru => {
                let extra_t = b.extra.map_or(0, |e| e.at(t * bl * h, bl * h).ptr);
                call.launch(
                    si,
                    Kernel::GruForwardStep,
                    bl * h,
                    &args![bi, hi, step, lens, xg_t, b.hg.ptr, b_ih.ptr, b_hh.ptr, h_prev.ptr, gates_t, extra_t, h_t.ptr, y_t, ow],
                )?;
            }
            CellKind::RnnTanh | CellKind::RnnRelu => {
                let f = if dm.cell == CellKind::RnnTanh { Kernel::RnnTanhForwardStep } else { Kernel::RnnReluForwardStep };
                call.launch(
                    si,
                    f,
                    bl * h,
                    &args![bi, hi, step, lens, xg_t, b.hg.ptr, b_ih.ptr, b_hh.ptr, h_prev.ptr, gates_t, h_t.ptr, y_t, ow],
                )?;
            }
        }
        prev = Some(cur);
    }
    let last = prev.expect("at least one step");
    if ks.end < tl {
        return Ok(());
    }
    if let Some(hn) = io.hn {
        call.copy(si, hn, b.h.at(last * bl * hout, bl * hout))?;
    }
    if let Some(cn) = io.cn {
        call.copy(si, cn, b.c.at(last * bl * h, bl * h))?;
    }
    Ok(())
}

/// A GRU or RNN layer-direction's time loop in one cooperative launch (kernels/persistent_cell.cu),
/// after the `XG` GEMM: `units` per block, `barrier` `[2]` zeros; `weights` are the addresses of
/// `W_hh`, `b_ih` and `b_hh` (0: no bias). Writes what the per-step loop writes: `y`, `hn`, the
/// states and, when training, the saved gates (and GRU's extra).
#[allow(clippy::too_many_arguments)]
fn persistent_cell_forward(
    call: &Call<'_>,
    d: usize,
    dm: &Dims,
    lens: u64,
    weights: [u64; 3],
    io: &FwdIo,
    b: &FwdBufs,
    units: usize,
    barrier: View,
) -> Result<()> {
    let Dims { t: tl, b: bl, h, hout, gh, out_w, .. } = *dm;
    let tb = tl * bl;
    let (kernel, extra) = match dm.cell {
        CellKind::Gru => (Kernel::PersistentGruForward, b.extra.map_or(0, |e| e.at(0, tb * h).ptr)),
        CellKind::RnnTanh => (Kernel::PersistentRnnTanhForward, 0),
        CellKind::RnnRelu => (Kernel::PersistentRnnReluForward, 0),
        CellKind::Lstm => unreachable!("the LSTM has its own persistent kernel"),
    };
    let cfg = LaunchConfig {
        grid_dim: (h.div_ceil(units) as u32, 1, 1),
        block_dim: (PERSISTENT_THREADS, 1, 1),
        shared_mem_bytes: persistent_cell_smem(gh / h, h, bl, units) as u32,
    };
    let [w_hh, b_ih, b_hh] = weights;
    let (bi, hi, ti, ri, ui, ow, tr) = (bl as i32, h as i32, tl as i32, (d == 1) as i32, units as i32, out_w as i32, b.training as i32);
    let y = io.out.strided(d * hout, tb, out_w, hout).ptr;
    let gates = b.gates.map_or(0, |g| g.at(0, tb * gh).ptr);
    let h_states = b.h.at(0, if b.training { tb * hout } else { 2 * bl * hout }).ptr;
    let hn = io.hn.map_or(0, |v| v.ptr);
    call.launch_with(
        d,
        kernel,
        cfg,
        true,
        &args![bi, hi, ti, ri, ui, lens, b.xg.ptr, w_hh, b_ih, b_hh, io.h0.ptr, h_states, tr, gates, extra, y, ow, hn, barrier.ptr],
    )
}

/// A layer-direction's backward time loop in one cooperative launch
/// (kernels/persistent_backward.cu): from `b.carry` (dhn or zeros) and `b.dc` (dcn or zeros) it
/// writes `b.dgi`, `b.dgh` for every step and leaves dh0 in `b.carry` and dc0 in `b.dc`, as the
/// per-step loop does. `units` per block, `barrier` `[2]` zeros.
#[allow(clippy::too_many_arguments)]
fn persistent_backward(
    call: &Call<'_>,
    d: usize,
    dm: &Dims,
    lr: &LayerRanges,
    w: View,
    io: &BwdIo,
    b: &BwdBufs,
    units: usize,
    barrier: View,
) -> Result<()> {
    let Dims { t: tl, b: bl, h, hout, gh, out_w, .. } = *dm;
    let tb = tl * bl;
    let [gates, extra, c_all, _, h_all] = io.saved;
    let kernel = match dm.cell {
        CellKind::Lstm => Kernel::PersistentLstmBackward,
        CellKind::Gru => Kernel::PersistentGruBackward,
        CellKind::RnnTanh => Kernel::PersistentRnnTanhBackward,
        CellKind::RnnRelu => Kernel::PersistentRnnReluBackward,
    };
    let cfg = LaunchConfig {
        grid_dim: (h.div_ceil(units) as u32, 1, 1),
        block_dim: (PERSISTENT_THREADS, 1, 1),
        shared_mem_bytes: persistent_backward_smem(gh / h, h, bl, units) as u32,
    };
    let w_hh = range_view(w, &lr.w_hh).at(0, gh * hout).ptr;
    let gates = gates.at(0, tb * gh).ptr;
    let (extra, h_all, h0) =
        if dm.gru() { (extra.at(0, tb * h).ptr, h_all.at(0, tb * hout).ptr, io.h0.at(0, bl * hout).ptr) } else { (0, 0, 0) };
    let (c_all, c0, dc) = if dm.lstm() { (c_all.at(0, tb * h).ptr, io.c0.at(0, bl * h).ptr, b.dc.at(0, bl * h).ptr) } else { (0, 0, 0) };
    let dy = io.d_out.map_or(0, |v| v.strided(d * hout, tb, out_w, hout).ptr);
    let carry = b.carry.at(0, bl * hout).ptr;
    let (dgi, dgh) = (b.dgi.at(0, tb * gh).ptr, b.dgh.at(0, tb * gh).ptr);
    let (bi, hi, ti, ri, ui, ow) = (bl as i32, h as i32, tl as i32, (d == 1) as i32, units as i32, out_w as i32);
    call.launch_with(
        d,
        kernel,
        cfg,
        true,
        &args![bi, hi, ti, ri, ui, io.lens, w_hh, gates, extra, c_all, h_all, h0, c0, dy, ow, carry, dc, dgi, dgh, barrier.ptr],
    )
}

/// Views of a filled reserve.
pub(crate) struct SavedViews {
    x: View,
    h0: View,
    c0: View,
    lens: u64,
    outputs: Vec<View>,
    /// Per layer-direction: gates, extra, c, m, h.
    dirs: Vec<[View; 5]>,
}

impl SavedViews {
    pub fn new(call: &Call<'_>, r: &CudaReserve) -> SavedViews {
        let v = |s: &Option<Mem<f32>>| s.as_ref().map_or(View::NULL, |s| call.view(s));
        // Storage-type buffers: every element their words hold (one more than written when odd).
        let st = call.storage();
        let vs = |s: &Option<Mem<f32>>| s.as_ref().map_or(View::NULL, |s| call.view_as(st, s, s.len() * 4 / st.size()));
        SavedViews {
            x: vs(&r.x),
            h0: vs(&r.h0),
            c0: v(&r.c0),
            lens: r.lengths.as_ref().map_or(0, |l| call.ptr_i32(l)),
            outputs: r.outputs.iter().map(vs).collect(),
            dirs: r.dirs.iter().map(|d| [v(&d.gates), v(&d.extra), v(&d.c), vs(&d.m), vs(&d.h)]).collect(),
        }
    }
}

/// Buffers of one direction's backward pass.
struct BwdBufs {
    /// `[T·B, G·H]`: input-side pre-activation gradients.
    dgi: View,
    /// `[T·B, G·H]`: hidden-side ones (GRU; the same as `dgi` for the other cells).
    dgh: View,
    /// `[B, Hout]`: the gradient carried to the previous step.
    carry: View,
    /// `[B, H]`: LSTM's carried `dc`.
    dc: View,
    /// Projection: `[T·B, Hout]` saved `dh`, `[B, Hout]` this step's `dh`, `[B, H]` its `dm`.
    dh_all: View,
    dh: View,
    dmv: View,
    /// The persistent backward's units per block and its grid barrier (`[2]` zeros), when it
    /// runs this direction.
    persistent: Option<(usize, View)>,
}

/// The whole backward pass from a filled reserve; buffers validated against its shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    call: &Call<'_>,
    layout: &ParamLayout,
    w: View,
    shape: &SeqShape,
    sv: &SavedViews,
    dy: Option<View>,
    dhn: Option<View>,
    dcn: Option<View>,
    dx: Option<View>,
    dh0: Option<View>,
    dc0: Option<View>,
    dparams: Option<View>,
    mode: GradMode,
) -> Result<()> {
    let cfg = layout.config();
    check_sizes(cfg, shape)?;
    let (nl, nd) = (cfg.num_layers(), cfg.num_directions());
    let (bl, tl) = (shape.batch(), shape.steps());
    let tb = tl * bl;
    let (h, hout, gh) = (cfg.hidden_size(), cfg.hidden_out_size(), cfg.gates() * cfg.hidden_size());
    let (hlen, clen) = (bl * hout, bl * h);
    let lstm = cfg.cell().has_cell_state();
    let proj = cfg.proj_size() > 0;
    let mut temps: Vec<Mem<f32>> = Vec::new();
    let mut temp = |n: usize| -> Result<View> {
        let s = call.alloc(n)?;
        let v = call.view(&s);
        temps.push(s);
        Ok(v)
    };
    let st = call.storage();
    let mut temps_st: Vec<Mem<f32>> = Vec::new();
    let mut temp_st = |n: usize| -> Result<View> {
        let s = call.alloc_as(st, n)?;
        let v = call.view_as(st, &s, n);
        temps_st.push(s);
        Ok(v)
    };
    // 16-bit parameter gradients accumulate in f32 (from the caller's with Accumulate) and are
    // rounded once at the end.
    let (dparams_out, dparams) = match dparams {
        Some(dp) if dp.ty != Dtype::F32 => {
            let acc = temp(dp.len)?;
            match mode {
                GradMode::Overwrite => call.fill(0, acc, 0.0)?,
                GradMode::Accumulate => call.copy(0, acc, dp)?,
            }
            (Some(dp), Some(acc))
        }
        _ => (None, dparams),
    };
    if let (Some(dp), GradMode::Overwrite, None) = (dparams, mode, dparams_out) {
        call.fill(0, dp, 0.0)?;
    }
    let ones = if dparams.is_some() && cfg.bias() {
        let o = temp_st(tb)?;
        call.fill(0, o, 1.0)?;
        o
    } else {
        View::NULL
    };

    let mut d_out = dy;
    let mut layers = Vec::with_capacity(nl);
    for l in (0..nl).rev() {
        let dims = Dims::new(cfg, shape, l);
        let input = if l == 0 { sv.x } else { sv.outputs[l - 1] };
        let d_in = match (l, dx) {
            (0, dx) => dx,
            _ => Some(temp_st(tb * dims.input)?),
        };
        let mut bufs = Vec::new();
        for _ in 0..nd {
            // The persistent backward (kernels/persistent_backward.cu) where it fits, with the
            // forward's switches.
            let units = if dims.lstm() && dims.proj { None } else { call.persistent_backward_units(dims.cell, h, bl, nd) };
            if units.is_none() && call.persistent_required() {
                return Err(Error::invalid(
                    "persistent (required)",
                    "layers that fit the persistent backward: f32 storage, batch ≤ 8, no projection, W_hh within the blocks' shared memory",
                    format!("{:?} layer {l} with hidden size {h}, batch {bl}, {nd} direction(s), {:?} storage", dims.cell, call.storage()),
                ));
            }
            let persistent = match units {
                Some(u) => {
                    let barrier = temp(2)?;
                    // 0.0f32 is all zero bits: the barrier's count and generation.
                    call.fill(0, barrier, 0.0)?;
                    Some((u, barrier))
                }
                None => None,
            };
            let dgi = temp_st(tb * gh)?;
            bufs.push(BwdBufs {
                dgi,
                dgh: if dims.gru() { temp_st(tb * gh)? } else { dgi },
                carry: temp(hlen)?,
                dc: if lstm { temp(clen)? } else { View::NULL },
                dh_all: if proj { temp_st(tb * hout)? } else { View::NULL },
                dh: if proj { temp_st(hlen)? } else { View::NULL },
                dmv: if proj { temp(clen)? } else { View::NULL },
                persistent,
            });
        }
        let mut ios = Vec::with_capacity(nd);
        for d in 0..nd {
            let i = l * nd + d;
            ios.push(BwdIo {
                input,
                d_out,
                saved: sv.dirs[i],
                lens: sv.lens,
                h0: sv.h0.at(i * hlen, hlen),
                c0: if lstm { sv.c0.at(i * clen, clen) } else { View::NULL },
                dhn: dhn.map(|v| v.at(i * hlen, hlen)),
                dcn: if lstm { dcn.map(|v| v.at(i * clen, clen)) } else { None },
                dh0: dh0.map(|v| v.at(i * hlen, hlen)),
                dc0: if lstm { dc0.map(|v| v.at(i * clen, clen)) } else { None },
                dparams,
                ones,
            });
        }
        layers.push((l, dims, d_in, bufs, ios));
        d_out = d_in;
    }
    // Every buffer of every layer is allocated before any work forks to stream 1 (`layers`
    // from the last layer to the first).
    let persistent = layers.iter().any(|(_, _, _, bufs, _)| bufs.iter().any(|b| b.persistent.is_some()));
    joined_on_error(call, || {
        if let Some(k) = wavefront_chunk(call, cfg, shape).filter(|_| !persistent) {
            return backward_wavefront(call, layout, w, &layers, k);
        }
        for (l, dims, d_in, bufs, ios) in &layers {
            let l = *l;
            if nd == 2 {
                call.order(1, 0)?;
            }
            for (d, (b, io)) in bufs.iter().zip(ios).enumerate() {
                backward_direction(call, d, dims, layout.layer(l, d), w, io, b)?;
            }
            if nd == 2 {
                call.order(0, 1)?;
            }
            if let Some(d_in) = d_in {
                // dX = Σ_d dGi_d · W_ih_d, on stream 0 after both directions.
                for (d, b) in bufs.iter().enumerate() {
                    let w_ih = range_view(w, &layout.layer(l, d).w_ih).mat(gh, dims.input);
                    call.gemm(0, 1.0, b.dgi.mat(tb, gh), w_ih, if d == 0 { 0.0 } else { 1.0 }, d_in.mat(tb, dims.input))?;
                }
            }
        }
        Ok(())
    })?;
    if let (Some(out), Some(acc)) = (dparams_out, dparams) {
        call.copy(0, out, acc)?;
    }
    Ok(())
}

/// One layer of a backward pass: its index, sizes, `dX` (none for layer 0 without `dx`), and
/// per direction its buffers and inputs.
type BwdLayer = (usize, Dims, Option<View>, Vec<BwdBufs>, Vec<BwdIo>);

/// The backward pass of a unidirectional stack as a layer wavefront, `layers` from the last
/// layer to the first: the processing order (`t = T-1` down to 0) cut into chunks of `k` steps;
/// layer `l`'s chunk `c` (its step loop over those steps, then, for `l ≥ 1`, the rows of its
/// `dX = dGi · W_ih` for them, which are layer `l-1`'s `dy`) runs on stream `l mod 2` after
/// waiting for the event layer `l+1` recorded after its chunk `c`. A layer's weight
/// gradients, `dh0`, `dc0` follow its last chunk on its stream (whole-sequence GEMMs, as
/// without the wavefront), and layer 0's `dx` is one whole-sequence GEMM after them. Every
/// buffer was allocated before; stream 1 first waits for stream 0, stream 0 for stream 1 at the
/// end.
fn backward_wavefront(call: &Call<'_>, layout: &ParamLayout, w: View, layers: &[BwdLayer], k: usize) -> Result<()> {
    let nl = layers.len();
    let tl = layers[0].1.t;
    let chunks = tl.div_ceil(k);
    call.order(1, 0)?;
    // done[j][c]: the j-th layer from the top has finished its chunk c.
    let mut done: Vec<Vec<_>> = (0..nl).map(|_| Vec::with_capacity(chunks)).collect();
    for diag in 0..chunks + nl - 1 {
        for (j, (l, dm, d_in, bufs, ios)) in layers.iter().enumerate() {
            let Some(c) = diag.checked_sub(j).filter(|&c| c < chunks) else { continue };
            let (l, si) = (*l, *l % 2);
            let (b, io) = (&bufs[0], &ios[0]);
            let lr = layout.layer(l, 0);
            if j > 0 {
                call.wait(si, &done[j - 1][c])?;
            }
            if c == 0 {
                backward_begin(call, si, dm, io, b)?;
            }
            let ks = c * k..((c + 1) * k).min(tl);
            backward_steps(call, si, 0, dm, lr, w, io, b, ks.clone())?;
            let (bl, inw, gh) = (dm.b, dm.input, dm.gh);
            let w_ih = range_view(w, &lr.w_ih).mat(gh, inw);
            if let Some(d_in) = d_in.filter(|_| l > 0) {
                // The chunk's steps are t = T - ks.end .. T - ks.start.
                let (r0, rows) = (tl - ks.end, ks.len());
                let dgi = b.dgi.at(r0 * bl * gh, rows * bl * gh).mat(rows * bl, gh);
                call.gemm(si, 1.0, dgi, w_ih, 0.0, d_in.at(r0 * bl * inw, rows * bl * inw).mat(rows * bl, inw))?;
            }
            done[j].push(call.record(si)?);
            if c + 1 == chunks {
                backward_end(call, si, 0, dm, lr, io, b)?;
                if let Some(dx) = d_in.filter(|_| l == 0) {
                    let tb = tl * bl;
                    call.gemm(si, 1.0, b.dgi.mat(tb, gh), w_ih, 0.0, dx.mat(tb, inw))?;
                }
            }
        }
    }
    call.order(0, 1)
}

struct BwdIo {
    /// `[T, B, In]`: the layer's input.
    input: View,
    /// `[T, B, D·Hout]`: gradient w.r.t. the layer's output, or none (zeros).
    d_out: Option<View>,
    saved: [View; 5],
    lens: u64,
    h0: View,
    c0: View,
    dhn: Option<View>,
    dcn: Option<View>,
    dh0: Option<View>,
    dc0: Option<View>,
    dparams: Option<View>,
    /// `[T·B]` ones, for the bias gradients.
    ones: View,
}

/// BPTT through one layer-direction on stream `d`, with its weight gradients.
fn backward_direction(call: &Call<'_>, d: usize, dm: &Dims, lr: &LayerRanges, w: View, io: &BwdIo, b: &BwdBufs) -> Result<()> {
    backward_begin(call, d, dm, io, b)?;
    // The persistent backward runs the whole time loop in one launch; the per-step loop then
    // has no steps.
    if let Some((units, barrier)) = b.persistent {
        persistent_backward(call, d, dm, lr, w, io, b, units, barrier)?;
    }
    let per_step = if b.persistent.is_some() { 0 } else { dm.t };
    backward_steps(call, d, d, dm, lr, w, io, b, 0..per_step)?;
    backward_end(call, d, d, dm, lr, io, b)
}

/// The carried gradients' start on stream `si`: `dhn`, `dcn` or zeros.
fn backward_begin(call: &Call<'_>, si: usize, dm: &Dims, io: &BwdIo, b: &BwdBufs) -> Result<()> {
    call.copy_or_zero(si, b.carry, io.dhn)?;
    if dm.lstm() {
        call.copy_or_zero(si, b.dc, io.dcn)?;
    }
    Ok(())
}

/// Steps `ks` of direction `d`'s backward time loop on stream `si`, in processing order (the
/// `kk`-th step processed: `t = T-1-kk` for the forward direction, `t = kk` for the reverse),
/// from the carry the earlier steps left; writes `dG` of those steps.
#[allow(clippy::too_many_arguments)]
fn backward_steps(
    call: &Call<'_>,
    si: usize,
    d: usize,
    dm: &Dims,
    lr: &LayerRanges,
    w: View,
    io: &BwdIo,
    b: &BwdBufs,
    ks: std::ops::Range<usize>,
) -> Result<()> {
    let Dims { t: tl, b: bl, h, hout, gh, out_w, .. } = *dm;
    let reverse = d == 1;
    let [gates, extra, c_all, _, h_all] = io.saved;
    let w_hh = range_view(w, &lr.w_hh).mat(gh, hout);
    let w_hr = lr.w_hr.as_ref().map(|r| range_view(w, r).mat(hout, h));
    let (bi, hi, ho, ow) = (bl as i32, h as i32, hout as i32, out_w as i32);
    for t in steps(tl, !reverse).skip(ks.start).take(ks.len()) {
        let step = t as i32;
        let p = prev_step(t, tl, reverse);
        let h_prev = p.map_or(io.h0, |p| h_all.at(p * bl * hout, bl * hout));
        let c_prev = if dm.lstm() { p.map_or(io.c0, |p| c_all.at(p * bl * h, bl * h)) } else { View::NULL };
        let dy_t = io.d_out.map_or(0, |v| v.strided(t * bl * out_w + d * hout, bl, out_w, hout).ptr);
        let gates_t = gates.at(t * bl * gh, bl * gh).ptr;
        let dgi_t = b.dgi.at(t * bl * gh, bl * gh);
        let dgh_t = b.dgh.at(t * bl * gh, bl * gh);
        match dm.cell {
            CellKind::Lstm => {
                let c_t = c_all.at(t * bl * h, bl * h).ptr;
                if let Some(w_hr) = w_hr {
                    let dh_save = b.dh_all.at(t * bl * hout, bl * hout).ptr;
                    call.launch(
                        si,
                        Kernel::LstmProjectionBackwardPrepare,
                        bl * hout,
                        &args![bi, ho, step, io.lens, dy_t, ow, b.carry.ptr, b.dh.ptr, dh_save],
                    )?;
                    // m → h = m · W_hr^T, so dm = dh · W_hr.
                    call.gemm(si, 1.0, b.dh.mat(bl, hout), w_hr, 0.0, b.dmv.mat(bl, h))?;
                    let null = 0u64;
                    call.launch(
                        si,
                        Kernel::LstmBackwardStep,
                        bl * h,
                        &args![bi, hi, step, io.lens, gates_t, c_t, c_prev.ptr, b.dmv.ptr, null, ow, null, b.dc.ptr, dgi_t.ptr],
                    )?;
                } else {
                    let null = 0u64;
                    call.launch(
                        si,
                        Kernel::LstmBackwardStep,
                        bl * h,
                        &args![bi, hi, step, io.lens, gates_t, c_t, c_prev.ptr, null, dy_t, ow, b.carry.ptr, b.dc.ptr, dgi_t.ptr],
                    )?;
                }
            }
            CellKind::Gru => {
                let extra_t = extra.at(t * bl * h, bl * h).ptr;
                call.launch(
                    si,
                    Kernel::GruBackwardStep,
                    bl * h,
                    &args![bi, hi, step, io.lens, gates_t, extra_t, h_prev.ptr, dy_t, ow, b.carry.ptr, dgi_t.ptr, dgh_t.ptr],
                )?;
            }
            CellKind::RnnTanh | CellKind::RnnRelu => {
                let f = if dm.cell == CellKind::RnnTanh { Kernel::RnnTanhBackwardStep } else { Kernel::RnnReluBackwardStep };
                call.launch(si, f, bl * h, &args![bi, hi, step, io.lens, gates_t, dy_t, ow, b.carry.ptr, dgi_t.ptr])?;
            }
        }
        // dh_prev += dGh · W_hh (the kernels left the direct part, or dh on inactive rows).
        call.gemm(si, 1.0, dgh_t.mat(bl, gh), w_hh, 1.0, b.carry.mat(bl, hout))?;
    }
    Ok(())
}

/// After direction `d`'s time loop, on stream `si`: `dh0`, `dc0` and the weight gradients.
fn backward_end(call: &Call<'_>, si: usize, d: usize, dm: &Dims, lr: &LayerRanges, io: &BwdIo, b: &BwdBufs) -> Result<()> {
    let Dims { t: tl, b: bl, h, hout, gh, .. } = *dm;
    let tb = tl * bl;
    let reverse = d == 1;
    let [_, _, _, m_all, h_all] = io.saved;
    if let Some(dh0) = io.dh0 {
        call.copy(si, dh0, b.carry)?;
    }
    if let Some(dc0) = io.dc0 {
        call.copy(si, dc0, b.dc)?;
    }
    let Some(dp) = io.dparams else { return Ok(()) };
    // dW_ih += dGi^T · X
    call.gemm(si, 1.0, b.dgi.mat(tb, gh).t(), io.input.mat(tb, dm.input), 1.0, range_view(dp, &lr.w_ih).mat(gh, dm.input))?;
    // dW_hh += dGh^T · H_prev: the saved states shifted by one step, h0 at the first processed
    // step: two GEMMs, no copy.
    let dw_hh = range_view(dp, &lr.w_hh).mat(gh, hout);
    let rest = (tl - 1) * bl;
    let (first, rest_g, rest_h) = if reverse {
        (tl - 1, b.dgh.at(0, rest * gh), h_all.at(bl * hout, rest * hout))
    } else {
        (0, b.dgh.at(bl * gh, rest * gh), h_all.at(0, rest * hout))
    };
    call.gemm(si, 1.0, rest_g.mat(rest, gh).t(), rest_h.mat(rest, hout), 1.0, dw_hh)?;
    call.gemm(si, 1.0, b.dgh.at(first * bl * gh, bl * gh).mat(bl, gh).t(), io.h0.mat(bl, hout), 1.0, dw_hh)?;
    // db += 1^T · dG
    if let Some(r) = &lr.b_ih {
        call.gemm(si, 1.0, io.ones.mat(1, tb), b.dgi.mat(tb, gh), 1.0, range_view(dp, r).mat(1, gh))?;
    }
    if let Some(r) = &lr.b_hh {
        call.gemm(si, 1.0, io.ones.mat(1, tb), b.dgh.mat(tb, gh), 1.0, range_view(dp, r).mat(1, gh))?;
    }
    if let Some(r) = &lr.w_hr {
        // dW_hr += dH^T · M
        call.gemm(si, 1.0, b.dh_all.mat(tb, hout).t(), m_all.mat(tb, h), 1.0, range_view(dp, r).mat(hout, h))?;
    }
    Ok(())
}

/// The driver on the host emulation (kernels compiled as C++, cuBLAS's sgemm emulated, fresh
/// memory NaN): the same parity checks as the CUDA tests, against the f64 reference, runnable
/// without a GPU. What it does not cover: cudarc, cuBLAS, the PTX build, the two streams and
/// the multi-block, multi-warp parts of the persistent kernels (persistent_cell.cu and
/// persistent_backward.cu run with one block of one thread owning every unit;
/// persistent_lstm.cu does not run).
#[cfg(all(test, rnn_kernels_host_emulation))]
mod emulation_tests {
    use super::*;
    use crate::backend::Reference;
    use crate::testkit::case::max_error;
    use crate::{CellKind, Params, Rnn, SplitMix64};
    use proptest::prelude::*;

    fn view(v: &[f32]) -> View {
        View { ptr: v.as_ptr() as u64, len: v.len(), ty: crate::Dtype::F32 }
    }
    fn view_mut(v: &mut [f32]) -> View {
        View { ptr: v.as_mut_ptr() as u64, len: v.len(), ty: crate::Dtype::F32 }
    }
    fn up(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&a| a as f64).collect()
    }

    struct Problem {
        cfg: RnnConfig,
        shape: SeqShape,
        params: Vec<f32>,
        x: Vec<f32>,
        h0: Vec<f32>,
        c0: Option<Vec<f32>>,
        dy: Vec<f32>,
        dhn: Vec<f32>,
        dcn: Option<Vec<f32>>,
    }

    impl Problem {
        fn new(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> Problem {
            let mut rng = SplitMix64::new(seed);
            let mut u = |n: usize, r: f64| (0..n).map(|_| rng.uniform(-r, r) as f32).collect::<Vec<f32>>();
            let n = |s: [usize; 3]| s.iter().product::<usize>();
            let lstm = cfg.cell().has_cell_state();
            Problem {
                x: u(n(shape.x_shape(cfg)), x_range),
                h0: u(n(shape.h_shape(cfg)), 1.0),
                c0: lstm.then(|| u(n(shape.c_shape(cfg)), 2.0)),
                dy: u(n(shape.y_shape(cfg)), 1.0),
                dhn: u(n(shape.h_shape(cfg)), 1.0),
                dcn: lstm.then(|| u(n(shape.c_shape(cfg)), 1.0)),
                params: Params::<f32>::init_uniform(cfg, seed ^ 0xabc).into_vec(),
                cfg: cfg.clone(),
                shape: shape.clone(),
            }
        }

        /// (y, hn, cn, dx, dh0, dc0, dparams) from the emulated driver; also checks that
        /// inference gives training's outputs bit for bit, and that Accumulate adds. With
        /// `persistent`, GRU and RNN layers with B ≤ 8 must run kernels/persistent_cell.cu
        /// forward, and every layer with B ≤ 8 but an LSTM with projection must run
        /// kernels/persistent_backward.cu.
        fn run_emulated(&self, persistent: bool) -> Vec<Vec<f32>> {
            let (cfg, shape) = (&self.cfg, &self.shape);
            let small = shape.batch() <= super::super::exec::PERSISTENT_MAX_BATCH;
            let required = persistent && cfg.cell() != CellKind::Lstm && small;
            let call = Call::host().with_persistent(persistent).with_persistent_required(required);
            let bwd_required = persistent && small && cfg.proj_size() == 0;
            let bwd_call = Call::host().with_persistent(persistent).with_persistent_required(bwd_required);
            let layout = ParamLayout::new(cfg);
            let w = view(&self.params);
            let n = |s: [usize; 3]| vec![f32::NAN; s.iter().product::<usize>()];
            let lstm = cfg.cell().has_cell_state();
            let (mut y, mut hn) = (n(shape.y_shape(cfg)), n(shape.h_shape(cfg)));
            let mut cn = lstm.then(|| n(shape.c_shape(cfg)));
            let mut reserve = CudaReserve::default();
            let (x, h0, c0) = (view(&self.x), Some(view(&self.h0)), self.c0.as_deref().map(view));
            let cn_v = cn.as_deref_mut().map(view_mut);
            forward(&call, &layout, w, shape, x, h0, c0, view_mut(&mut y), Some(view_mut(&mut hn)), cn_v, Some(&mut reserve)).unwrap();

            let (mut yi, mut hni) = (n(shape.y_shape(cfg)), n(shape.h_shape(cfg)));
            let mut cni = lstm.then(|| n(shape.c_shape(cfg)));
            let cni_v = cni.as_deref_mut().map(view_mut);
            forward(&call, &layout, w, shape, x, h0, c0, view_mut(&mut yi), Some(view_mut(&mut hni)), cni_v, None).unwrap();
            assert!(yi == y && hni == hn && cni == cn, "inference differs from training's forward");

            let sv = SavedViews::new(&call, &reserve);
            let (mut dx, mut dh0) = (n(shape.x_shape(cfg)), n(shape.h_shape(cfg)));
            let mut dc0 = lstm.then(|| n(shape.c_shape(cfg)));
            let mut dp = vec![f32::NAN; layout.len()];
            let (dy, dhn, dcn) = (Some(view(&self.dy)), Some(view(&self.dhn)), self.dcn.as_deref().map(view));
            let dc0_v = dc0.as_deref_mut().map(view_mut);
            let (dx_v, dh0_v, dp_v) = (view_mut(&mut dx), view_mut(&mut dh0), view_mut(&mut dp));
            backward(&bwd_call, &layout, w, shape, &sv, dy, dhn, dcn, Some(dx_v), Some(dh0_v), dc0_v, Some(dp_v), GradMode::Overwrite)
                .unwrap();

            // Accumulate onto the gradients just computed: twice them (up to rounding).
            let mut dp2 = dp.clone();
            let dp2_v = Some(view_mut(&mut dp2));
            backward(&bwd_call, &layout, w, shape, &sv, dy, dhn, dcn, None, None, None, dp2_v, GradMode::Accumulate).unwrap();
            let twice: Vec<f32> = dp.iter().map(|g| 2.0 * g).collect();
            assert!(max_error(&dp2, &twice) <= 1e-6, "Accumulate");
            vec![y, hn, cn.unwrap_or_default(), dx, dh0, dc0.unwrap_or_default(), dp]
        }

        /// One training forward (per step), then its backward twice, per step and through
        /// kernels/persistent_backward.cu (required): (dx, dh0, dc0, dparams) of each, Overwrite
        /// into NaN-filled buffers, then dparams again with Accumulate onto the first result.
        fn backward_per_step_and_persistent(&self) -> [Vec<Vec<f32>>; 2] {
            let (cfg, shape) = (&self.cfg, &self.shape);
            let layout = ParamLayout::new(cfg);
            let w = view(&self.params);
            let n = |s: [usize; 3]| vec![f32::NAN; s.iter().product::<usize>()];
            let lstm = cfg.cell().has_cell_state();
            let fwd = Call::host();
            let mut y = n(shape.y_shape(cfg));
            let mut reserve = CudaReserve::default();
            let (x, h0, c0) = (view(&self.x), Some(view(&self.h0)), self.c0.as_deref().map(view));
            forward(&fwd, &layout, w, shape, x, h0, c0, view_mut(&mut y), None, None, Some(&mut reserve)).unwrap();
            let sv = SavedViews::new(&fwd, &reserve);
            let (dy, dhn, dcn) = (Some(view(&self.dy)), Some(view(&self.dhn)), self.dcn.as_deref().map(view));
            [false, true].map(|persistent| {
                let call = Call::host().with_persistent(persistent).with_persistent_required(persistent);
                let (mut dx, mut dh0) = (n(shape.x_shape(cfg)), n(shape.h_shape(cfg)));
                let mut dc0 = lstm.then(|| n(shape.c_shape(cfg)));
                let mut dp = vec![f32::NAN; layout.len()];
                let dc0_v = dc0.as_deref_mut().map(view_mut);
                let (dx_v, dh0_v, dp_v) = (view_mut(&mut dx), view_mut(&mut dh0), view_mut(&mut dp));
                backward(&call, &layout, w, shape, &sv, dy, dhn, dcn, Some(dx_v), Some(dh0_v), dc0_v, Some(dp_v), GradMode::Overwrite)
                    .unwrap();
                let mut dp2 = dp.clone();
                let dp2_v = Some(view_mut(&mut dp2));
                backward(&call, &layout, w, shape, &sv, dy, dhn, dcn, None, None, None, dp2_v, GradMode::Accumulate).unwrap();
                vec![dx, dh0, dc0.unwrap_or_default(), dp, dp2]
            })
        }

        fn run_reference(&self) -> Vec<Vec<f64>> {
            let rnn = Rnn::new(Reference, &self.cfg, &up(&self.params)[..]).unwrap();
            let mut reserve = Default::default();
            let c0 = self.c0.as_deref().map(up);
            let o = rnn.forward_training(&self.shape, &up(&self.x), Some(&up(&self.h0)), c0.as_deref(), &mut reserve).unwrap();
            let dcn = self.dcn.as_deref().map(up);
            let g = rnn.backward(&reserve, Some(&up(&self.dy)), Some(&up(&self.dhn)), dcn.as_deref()).unwrap();
            vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
        }

        /// The per-step path and the persistent one against the reference.
        fn check(&self) -> std::result::Result<(), String> {
            let want = self.run_reference();
            for persistent in [false, true] {
                let got = self.run_emulated(persistent);
                for (i, name) in ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"].iter().enumerate() {
                    let err = max_error(&up(&got[i]), &want[i]);
                    let tol = if i < 3 { 1e-5 } else { 1e-4 };
                    if err > tol {
                        return Err(format!("persistent={persistent}: {name} error {err:.3e} > {tol:e}: {:?} {:?}", self.cfg, self.shape));
                    }
                }
            }
            Ok(())
        }
    }

    fn config() -> impl Strategy<Value = RnnConfig> {
        (0usize..4, 1usize..12, 1usize..12, 1usize..4, any::<bool>(), any::<bool>(), 0usize..6).prop_map(|(c, i, h, l, bi, bias, p)| {
            let cell = CellKind::ALL[c];
            let proj = if cell == CellKind::Lstm && h > 1 { p.min(h - 1) } else { 0 };
            RnnConfig::new(cell, i, h).num_layers(l).bidirectional(bi).bias(bias).proj_size(proj).build().unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// The CUDA tests' property test, on the emulation: every cell, layers, directions,
        /// bias, projection, variable lengths, inputs up to ±25.
        #[test]
        fn emulated_driver_matches_reference(cfg in config(), t in 1usize..7, lens in prop::collection::vec(1usize..7, 1..6), seed in any::<u64>()) {
            let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
            let shape = SeqShape::with_lengths(t, lengths).unwrap();
            let r = Problem::new(&cfg, &shape, seed, 25.0).check();
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }

    /// The emulated driver's exact output bits, pinned in `tests/fixtures/bit_pins.txt` (lines
    /// `cuda-emulation …`; see tests/bit_pins.rs): the per-step and persistent paths, the layer
    /// wavefront (the unidirectional multi-layer problem), projection, bidirectional stacks and
    /// variable lengths. `RNN_KERNELS_WRITE_BIT_PINS=1` rewrites these lines.
    #[test]
    fn emulated_outputs_match_pinned_bits() {
        fn fnv1a(v: &[f32]) -> u64 {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for x in v {
                for b in (x.to_bits() as u64).to_le_bytes() {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
            }
            h
        }
        let problems = [
            (
                "lstm_proj_l2_bi_varlen",
                RnnConfig::new(CellKind::Lstm, 13, 24).num_layers(2).bidirectional(true).proj_size(10).build().unwrap(),
                7,
                vec![7, 3, 5, 1, 6],
            ),
            ("lstm_l3_uni_b4", RnnConfig::new(CellKind::Lstm, 9, 21).num_layers(3).build().unwrap(), 11, vec![11, 4, 9, 1]),
            (
                "gru_l2_uni_b37",
                RnnConfig::new(CellKind::Gru, 9, 33).num_layers(2).build().unwrap(),
                20,
                (0..37).map(|b| 20 - b % 7).collect(),
            ),
            ("gru_l2_bi_b3", RnnConfig::new(CellKind::Gru, 7, 37).num_layers(2).bidirectional(true).build().unwrap(), 9, vec![9, 2, 6]),
            ("rnn_relu_l2_bi_b1", RnnConfig::new(CellKind::RnnRelu, 17, 40).num_layers(2).bidirectional(true).build().unwrap(), 5, vec![5]),
            (
                "rnn_tanh_l1_nobias_b20",
                RnnConfig::new(CellKind::RnnTanh, 33, 50).bias(false).build().unwrap(),
                6,
                (0..20).map(|b| 6 - b % 3).collect(),
            ),
        ];
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bit_pins.txt");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut pins: std::collections::BTreeMap<String, String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(" | "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut got = std::collections::BTreeMap::new();
        for (i, (name, cfg, t, lengths)) in problems.into_iter().enumerate() {
            let shape = SeqShape::with_lengths(t, lengths).unwrap();
            let p = Problem::new(&cfg, &shape, 900 + i as u64, 3.0);
            for persistent in [false, true] {
                let outs = p.run_emulated(persistent);
                let line = ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"]
                    .iter()
                    .zip(&outs)
                    .map(|(k, v)| format!("{k}={:016x}", fnv1a(v)))
                    .collect::<Vec<_>>()
                    .join(" ");
                got.insert(format!("cuda-emulation{} {name}", if persistent { "-persistent" } else { "" }), line);
            }
        }
        if std::env::var_os("RNN_KERNELS_WRITE_BIT_PINS").is_some() {
            pins.extend(got);
            let mut out = String::from(
                "# Exact output bits (FNV-1a of each output's bit patterns) pinned by tests/bit_pins.rs.\n\
                 # Rewrite with RNN_KERNELS_WRITE_BIT_PINS=1 cargo test --release --test bit_pins\n",
            );
            for (k, v) in &pins {
                out.push_str(&format!("{k} | {v}\n"));
            }
            std::fs::write(&path, out).unwrap();
            return;
        }
        let bad: Vec<String> = got
            .iter()
            .filter(|(k, v)| pins.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}:\n  pinned   {}\n  computed {v}", pins.get(k).map_or("(none)", |s| s.as_str())))
            .collect();
        assert!(bad.is_empty(), "{} of {} pinned results differ:\n{}", bad.len(), got.len(), bad.join("\n"));
    }

    /// Sizes where the GEMMs are not tiny and rows of many lengths share a step.
    #[test]
    fn emulated_driver_matches_reference_larger() {
        let configs = [
            RnnConfig::new(CellKind::Lstm, 24, 33).num_layers(2).bidirectional(true).proj_size(17).build().unwrap(),
            RnnConfig::new(CellKind::Gru, 30, 41).num_layers(2).bidirectional(true).build().unwrap(),
            RnnConfig::new(CellKind::RnnRelu, 13, 50).num_layers(2).build().unwrap(),
            RnnConfig::new(CellKind::RnnTanh, 20, 27).bidirectional(true).bias(false).build().unwrap(),
        ];
        for cfg in &configs {
            let shape = SeqShape::with_lengths(9, (0..13).map(|b| 1 + (b * 5) % 9).collect()).unwrap();
            Problem::new(cfg, &shape, 77, 3.0).check().unwrap();
        }
    }

    /// kernels/persistent_cell.cu on the emulation: GRU and RNN, B = 1..4, both directions, two
    /// layers, H not a multiple of 32, mixed lengths (rows past their length in both
    /// directions), with and without bias; `check` requires the persistent path to be taken.
    #[test]
    fn emulated_persistent_cell_matches_reference() {
        for (c, cell) in [CellKind::Gru, CellKind::RnnTanh, CellKind::RnnRelu].into_iter().enumerate() {
            for b in 1..=4 {
                let cfg = RnnConfig::new(cell, 7, 37).num_layers(2).bidirectional(true).bias(b % 2 == 1).build().unwrap();
                let shape = SeqShape::with_lengths(11, (0..b).map(|i| 11 - (i * 4) % 11).collect()).unwrap();
                Problem::new(&cfg, &shape, 100 + (c * 8 + b) as u64, 3.0).check().unwrap();
            }
        }
    }

    /// kernels/persistent_backward.cu on the emulation against the per-step backward, from the
    /// same saved forward: LSTM (no projection), GRU, RNN tanh and relu; one and two directions,
    /// two layers, B = 1..4 and 8, mixed lengths (rows past their length in both directions),
    /// h0/c0 and dhn/dcn given, with and without bias, Overwrite and Accumulate.
    ///
    /// Tolerance 0 (bit for bit): both paths compute dG with the same f32 expressions
    /// (cells.cuh), and on the emulation the persistent kernel sums dh_prev = Σ_r dG_h·W_hh
    /// in the host sgemm's order (r ascending from 0, unfused products, the direct part added
    /// last), so every value, and hence every weight-gradient GEMM, is the same. On the device
    /// the sums are reordered (lanes, shuffles; cuBLAS's tiling): tests/cuda.rs compares with
    /// the gradient tolerance there. `check` also compares both paths with the f64 reference.
    #[test]
    fn emulated_persistent_backward_matches_per_step() {
        for (c, cell) in CellKind::ALL.into_iter().enumerate() {
            for (b, bi) in [(1, true), (2, false), (3, true), (4, true), (8, false)] {
                let cfg = RnnConfig::new(cell, 6, 19).num_layers(2).bidirectional(bi).bias(b % 2 == 1).build().unwrap();
                let shape = SeqShape::with_lengths(9, (0..b).map(|i| 9 - (i * 4) % 9).collect()).unwrap();
                let p = Problem::new(&cfg, &shape, 300 + (c * 16 + b) as u64, 3.0);
                let [per_step, persistent] = p.backward_per_step_and_persistent();
                for (i, name) in ["dx", "dh0", "dc0", "dparams", "dparams (Accumulate)"].iter().enumerate() {
                    let same = per_step[i].iter().zip(&persistent[i]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same && per_step[i].len() == persistent[i].len(),
                        "{cell:?} B={b} bidirectional={bi}: {name} differs: max error {:.3e}",
                        max_error(&up(&persistent[i]), &up(&per_step[i]))
                    );
                }
                p.check().unwrap();
            }
        }
    }

    /// A required persistent backward that cannot be taken (an LSTM with projection; B > 8) is
    /// an error, not a silent fallback.
    #[test]
    fn emulated_persistent_backward_required_is_an_error() {
        let lstm_proj = RnnConfig::new(CellKind::Lstm, 3, 5).proj_size(2).build().unwrap();
        let gru = RnnConfig::new(CellKind::Gru, 3, 5).build().unwrap();
        for (cfg, b) in [(lstm_proj, 2), (gru, 9)] {
            let shape = SeqShape::new(2, b).unwrap();
            let p = Problem::new(&cfg, &shape, 1, 1.0);
            let layout = ParamLayout::new(&cfg);
            let mut y = vec![f32::NAN; p.dy.len()];
            let mut reserve = CudaReserve::default();
            let (w, x) = (view(&p.params), view(&p.x));
            forward(&Call::host(), &layout, w, &shape, x, None, None, view_mut(&mut y), None, None, Some(&mut reserve)).unwrap();
            let call = Call::host().with_persistent(true).with_persistent_required(true);
            let sv = SavedViews::new(&call, &reserve);
            let mut dx = vec![f32::NAN; p.x.len()];
            let e = backward(
                &call,
                &layout,
                w,
                &shape,
                &sv,
                Some(view(&p.dy)),
                None,
                None,
                Some(view_mut(&mut dx)),
                None,
                None,
                None,
                GradMode::Overwrite,
            )
            .unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("persistent backward"), "{e}");
        }
    }

    /// A required persistent path that cannot be taken is an error, not a silent fallback.
    #[test]
    fn emulated_persistent_required_is_an_error() {
        let cfg = RnnConfig::new(CellKind::Gru, 3, 5).build().unwrap();
        let shape = SeqShape::new(2, 9).unwrap(); // B = 9 > 8
        let p = Problem::new(&cfg, &shape, 1, 1.0);
        let call = Call::host().with_persistent(true).with_persistent_required(true);
        let mut y = vec![f32::NAN; p.dy.len()];
        let layout = ParamLayout::new(&cfg);
        let e = forward(&call, &layout, view(&p.params), &shape, view(&p.x), None, None, view_mut(&mut y), None, None, None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("persistent"), "{e}");
    }

    /// Optional inputs and outputs left out: zeros in, nothing written, the rest unchanged.
    #[test]
    fn emulated_driver_optional_buffers() {
        let cfg = RnnConfig::new(CellKind::Lstm, 4, 6).num_layers(2).bidirectional(true).build().unwrap();
        let shape = SeqShape::with_lengths(5, vec![5, 2, 4]).unwrap();
        let p = Problem::new(&cfg, &shape, 3, 2.0);
        let call = Call::host();
        let layout = ParamLayout::new(&cfg);
        let w = view(&p.params);
        let mut y = vec![f32::NAN; p.dy.len()];
        let mut reserve = CudaReserve::default();
        forward(&call, &layout, w, &shape, view(&p.x), None, None, view_mut(&mut y), None, None, Some(&mut reserve)).unwrap();
        let rnn = Rnn::new(Reference, &cfg, &up(&p.params)[..]).unwrap();
        let mut rr = Default::default();
        let o = rnn.forward_training(&shape, &up(&p.x), None, None, &mut rr).unwrap();
        assert!(max_error(&up(&y), &o.y) <= 1e-5);
        let sv = SavedViews::new(&call, &reserve);
        let mut dx = vec![f32::NAN; p.x.len()];
        backward(&call, &layout, w, &shape, &sv, None, None, None, Some(view_mut(&mut dx)), None, None, None, GradMode::Overwrite).unwrap();
        let g = rnn.backward(&rr, None, None, None).unwrap();
        assert!(max_error(&up(&dx), &g.dx) <= 1e-4);
    }
}
