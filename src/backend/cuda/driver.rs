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
//!   carried `dh` and `dy[t]`, and a GEMM adds `dG · W_hh` into the carry; after the loop,
//!   `dW_ih += dGi^T X`, `dW_hh += dGh^T H_prev`, `db += 1^T dG`, `dW_hr += dH^T M` and
//!   `dX (+)= dGi · W_ih` are big GEMMs.
//!
//! The two directions of a layer run concurrently, forward on stream 0 and reverse on stream 1,
//! each with its own cuBLAS handle; stream 0 waits for stream 1 at the end of each layer.
//! Everything is allocated on stream 0 before the fork, so nothing is freed while in use.

use super::buffer::{DevMat, View};
use super::device::{device_err, Device};
use crate::backend::GradMode;
use crate::config::{CellKind, RnnConfig};
use crate::error::{Error, Result};
use crate::params::{LayerRanges, ParamLayout};
use crate::shape::SeqShape;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Activations of one layer-direction saved by a training forward pass; each `[T, B, *]` in
/// time order whatever the direction.
#[derive(Debug, Default)]
pub(crate) struct DirSave {
    /// `[T, B, G·H]`: activated gates.
    gates: Option<CudaSlice<f32>>,
    /// `[T, B, H]`: GRU's `W_hn h_prev + b_hn`.
    extra: Option<CudaSlice<f32>>,
    /// `[T, B, H]`: LSTM cell state after each step.
    c: Option<CudaSlice<f32>>,
    /// `[T, B, H]`: LSTM's `o·tanh(c)` before the projection (zero on inactive rows).
    m: Option<CudaSlice<f32>>,
    /// `[T, B, Hout]`: hidden state after each step (kept, not zeroed, past a length).
    h: Option<CudaSlice<f32>>,
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
    lengths: Option<CudaSlice<i32>>,
    /// `[T, B, I]`.
    x: Option<CudaSlice<f32>>,
    /// `[L·D, B, Hout]`, zeros when not given.
    h0: Option<CudaSlice<f32>>,
    /// `[L·D, B, H]` (LSTM), zeros when not given.
    c0: Option<CudaSlice<f32>>,
    /// Per layer but the last, `[T, B, D·Hout]`: the next layer's input.
    outputs: Vec<Option<CudaSlice<f32>>>,
    /// Per layer and direction (`l·D + d`).
    dirs: Vec<DirSave>,
}

impl crate::backend::RnnReserve for CudaReserve {
    fn shape(&self) -> Option<&SeqShape> {
        self.shape.as_ref()
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

fn steps(t_len: usize, reverse: bool) -> Box<dyn Iterator<Item = usize>> {
    if reverse {
        Box::new((0..t_len).rev())
    } else {
        Box::new(0..t_len)
    }
}

fn prev_step(t: usize, t_len: usize, reverse: bool) -> Option<usize> {
    if reverse {
        (t + 1 < t_len).then_some(t + 1)
    } else {
        t.checked_sub(1)
    }
}

fn range_view(w: View, r: &std::ops::Range<usize>) -> View {
    w.at(r.start, r.len())
}

/// The arguments of the column-major `cublasSgemm` call that computes the row-major
/// `C = alpha·op(A)·op(B) + beta·C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SgemmArgs {
    transa: bool,
    transb: bool,
    m: i32,
    n: i32,
    k: i32,
    a: u64,
    lda: i32,
    b: u64,
    ldb: i32,
    c: u64,
    ldc: i32,
}

impl SgemmArgs {
    /// `None` when there is nothing to do (an empty `C`, or `k = 0` with `beta = 1`).
    ///
    /// Row-major `C = op(A)·op(B)` is column-major `C^T = op(B)^T·op(A)^T`: swap the operands.
    /// A row-major `[r, c]` matrix read column-major with leading dimension `c` is its
    /// transpose, so each operand keeps its own transpose flag.
    #[track_caller]
    fn new(a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Option<SgemmArgs> {
        let (m, k, n) = (a.lrows(), a.lcols(), b.lcols());
        assert!(b.lrows() == k && c.rows == m && c.cols == n && !c.t, "gemm shapes: {a:?} {b:?} {c:?}");
        if m == 0 || n == 0 || (k == 0 && beta == 1.0) {
            return None;
        }
        assert!(k > 0, "a gemm with k = 0 must accumulate");
        let ld = |x: &DevMat| x.cols.max(1) as i32;
        Some(SgemmArgs {
            transa: b.t,
            transb: a.t,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            a: b.ptr,
            lda: ld(&b),
            b: a.ptr,
            ldb: ld(&a),
            c: c.ptr,
            ldc: ld(&c),
        })
    }
}

/// The device work of one backend call; holds the device's call lock.
pub(crate) struct Call<'a> {
    dev: &'a Device,
    /// Whether the persistent kernel may be chosen.
    persistent: bool,
    _lock: std::sync::MutexGuard<'a, ()>,
}

/// The largest batch the persistent kernel takes (`PERSISTENT_MAX_BATCH` of
/// kernels/persistent_lstm.cu).
const PERSISTENT_MAX_BATCH: usize = 8;
/// Threads per block of the persistent kernel (its `__launch_bounds__`).
const PERSISTENT_THREADS: u32 = 256;

/// Dynamic shared memory of the persistent kernel with `u` units per block, in bytes.
fn persistent_smem(dm: &Dims, u: usize) -> usize {
    4 * (4 * u * dm.h + dm.b * dm.h + 4 * dm.b * u + dm.b * u)
}

const BLOCK: u32 = 256;

fn grid(n: usize) -> LaunchConfig {
    // Grid-stride kernels: any grid is correct; 8192 blocks of 256 fill any current GPU.
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 8192) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

impl<'a> Call<'a> {
    pub fn new(dev: &'a Device) -> Result<Self> {
        let lock = dev.call.lock().unwrap_or_else(|p| p.into_inner());
        dev.ctx.bind_to_thread().map_err(|e| device_err(&dev.name, "binding the context", e))?;
        Ok(Call { dev, persistent: false, _lock: lock })
    }

    /// Allows the persistent kernel where it fits.
    pub fn with_persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }

    /// Units per block if the persistent LSTM kernel runs this layer: an LSTM without
    /// projection, `B ≤ 8`, cooperative launch, and every block of both directions resident at
    /// once with its slice of `W_hh` in shared memory.
    fn persistent_units(&self, dm: &Dims) -> Option<usize> {
        if !self.persistent || !dm.lstm() || dm.proj || dm.b > PERSISTENT_MAX_BATCH {
            return None;
        }
        let p = self.dev.props;
        if !p.cooperative || p.sms == 0 {
            return None;
        }
        let units = dm.h.div_ceil((p.sms / dm.dirs).max(1));
        let smem = persistent_smem(dm, units);
        if smem > p.max_smem {
            return None;
        }
        let blocks = dm.h.div_ceil(units);
        let f = &self.dev.kernels.persistent_lstm_forward;
        let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(PERSISTENT_THREADS, smem, None).ok()? as usize;
        (per_sm * p.sms >= blocks * dm.dirs).then_some(units)
    }

    fn err(&self, op: &str, e: impl std::fmt::Debug) -> Error {
        device_err(&self.dev.name, op, e)
    }

    pub fn s0(&self) -> &Arc<CudaStream> {
        &self.dev.streams[0]
    }

    /// `n` uninitialised f32 on stream 0 (every use below writes before it reads).
    pub fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: f32 has no invalid bit patterns; callers write before reading.
        unsafe { self.s0().alloc::<f32>(n.max(1)) }.map_err(|e| self.err(&format!("allocating {n} f32"), e))
    }

    /// Fits `slot` to `n` elements (reallocating only when the size changes) and returns it.
    fn fit(&self, slot: &mut Option<CudaSlice<f32>>, n: usize) -> Result<View> {
        if n == 0 {
            *slot = None;
            return Ok(View::NULL);
        }
        if slot.as_ref().map(|s| s.len()) != Some(n) {
            *slot = Some(self.alloc(n)?);
        }
        Ok(View::of(slot.as_ref().expect("just set"), self.s0()))
    }

    pub fn view(&self, s: &CudaSlice<f32>) -> View {
        View::of(s, self.s0())
    }

    fn stream(&self, si: usize) -> &Arc<CudaStream> {
        &self.dev.streams[si]
    }

    /// Stream `to` waits for the work enqueued so far on stream `from`.
    fn order(&self, to: usize, from: usize) -> Result<()> {
        self.stream(to).join(self.stream(from)).map_err(|e| self.err("ordering the streams", e))
    }

    /// `c = alpha·a·b + beta·c` (row-major, `a`, `b` possibly transposed) on stream `si`.
    fn gemm(&self, si: usize, alpha: f32, a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Result<()> {
        let Some(g) = SgemmArgs::new(a, b, beta, c) else { return Ok(()) };
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        // SAFETY: the three views were checked to hold their [rows, cols] (View::mat), the
        // sizes fit i32 (check_sizes), and the handle belongs to stream si of this context.
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.dev.blas[si].handle(),
                op(g.transa),
                op(g.transb),
                g.m,
                g.n,
                g.k,
                &alpha,
                g.a as *const f32,
                g.lda,
                g.b as *const f32,
                g.ldb,
                &beta,
                g.c as *mut f32,
                g.ldc,
            )
        }
        .map_err(|e| self.err("cublasSgemm", e))
    }

    /// `v = value` on stream `si`.
    fn fill(&self, si: usize, v: View, value: f32) -> Result<()> {
        if v.len == 0 {
            return Ok(());
        }
        let n = v.len as i64;
        let mut l = self.stream(si).launch_builder(&self.dev.kernels.fill_f32);
        l.arg(&n).arg(&value).arg(&v.ptr);
        // SAFETY: fill_f32 writes p[0..n), all inside v.
        unsafe { l.launch(grid(v.len)) }.map(drop).map_err(|e| self.err("fill_f32", e))
    }

    /// `dst = src` (same length) on stream `si`.
    fn copy(&self, si: usize, dst: View, src: View) -> Result<()> {
        assert_eq!(dst.len, src.len);
        if dst.len == 0 {
            return Ok(());
        }
        // SAFETY: both views hold len f32.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst.ptr, src.ptr, dst.len * 4, self.stream(si).cu_stream()) }
            .map_err(|e| self.err("copying device memory", e))
    }

    /// `dst = src`, or zeros when `src` is `None`.
    fn copy_or_zero(&self, si: usize, dst: View, src: Option<View>) -> Result<()> {
        match src {
            Some(s) => self.copy(si, dst, s),
            None => self.fill(si, dst, 0.0),
        }
    }

    fn launch(&self, si: usize, f: &CudaFunction, name: &str, n: usize, args: &[&dyn Arg]) -> Result<()> {
        self.launch_with(si, f, name, grid(n), false, args)
    }

    fn launch_with(&self, si: usize, f: &CudaFunction, name: &str, cfg: LaunchConfig, cooperative: bool, args: &[&dyn Arg]) -> Result<()> {
        let mut l = self.stream(si).launch_builder(f);
        for a in args {
            a.push(&mut l);
        }
        // SAFETY: the argument lists below follow each kernel's signature in kernels/*.cu, and
        // every pointer is a View checked to hold what the kernel touches for the launch's
        // B·width elements (or, for the persistent kernel, its whole sequence).
        let r = unsafe {
            if cooperative {
                l.launch_cooperative(cfg)
            } else {
                l.launch(cfg)
            }
        };
        r.map(drop).map_err(|e| self.err(name, e))
    }

    /// Lengths of `shape` as `[B]` i32 on the device.
    pub fn lengths(&self, shape: &SeqShape) -> Result<CudaSlice<i32>> {
        let lens: Vec<i32> = (0..shape.batch()).map(|b| shape.length(b) as i32).collect();
        self.s0().clone_htod(&lens).map_err(|e| self.err("uploading the lengths", e))
    }
}

/// A kernel argument: an `int`, a `long long`, a `float` or a pointer (`u64`).
trait Arg {
    fn push<'l>(&'l self, l: &mut cudarc::driver::LaunchArgs<'l>);
}
impl Arg for i32 {
    fn push<'l>(&'l self, l: &mut cudarc::driver::LaunchArgs<'l>) {
        l.arg(self);
    }
}
impl Arg for u64 {
    fn push<'l>(&'l self, l: &mut cudarc::driver::LaunchArgs<'l>) {
        l.arg(self);
    }
}

fn len_ptr(lens: &CudaSlice<i32>, s: &CudaStream) -> u64 {
    lens.device_ptr(s).0
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
    let s0 = call.s0().clone();
    let mut temps: Vec<CudaSlice<f32>> = Vec::new();
    let mut temp = |n: usize| -> Result<View> {
        let s = call.alloc(n)?;
        let v = call.view(&s);
        temps.push(s);
        Ok(v)
    };

    let lens_inf;
    let lens = match save.as_deref_mut() {
        Some(r) => {
            r.lengths = Some(call.lengths(shape)?);
            len_ptr(r.lengths.as_ref().expect("set"), &s0)
        }
        None => {
            lens_inf = call.lengths(shape)?;
            len_ptr(&lens_inf, &s0)
        }
    };
    // h0 and c0 (given or zeros): in the reserve when training, else a temporary of zeros when
    // not given.
    let (h0v, c0v) = match save.as_deref_mut() {
        Some(r) => {
            let xv = call.fit(&mut r.x, x.len)?;
            call.copy(0, xv, x)?;
            let hv = call.fit(&mut r.h0, nl * nd * hlen)?;
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
                    let z = temp(nl * nd * hlen)?;
                    call.fill(0, z, 0.0)?;
                    z
                }
            };
            let cv = match (lstm, c0) {
                (false, _) => View::NULL,
                (true, Some(v)) => v,
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
    for l in 0..nl {
        let last = l + 1 == nl;
        let dims = Dims::new(cfg, shape, l);
        let out = if last {
            y
        } else {
            match save.as_deref_mut() {
                Some(r) => call.fit(&mut r.outputs[l], tl * bl * cfg.output_size())?,
                None => temp(tl * bl * cfg.output_size())?,
            }
        };
        // Every buffer of the layer is allocated before the directions fork.
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
                        h: call.fit(&mut sv.h, tl * hlen)?,
                        c: call.fit(&mut sv.c, if lstm { tl * clen } else { 0 })?,
                        m: call.fit(&mut sv.m, if proj { tl * clen } else { 0 })?,
                        gates: Some(call.fit(&mut sv.gates, tl * bl * gh)?),
                        extra: Some(call.fit(&mut sv.extra, if dims.gru() { tl * clen } else { 0 })?),
                        training: true,
                        persistent: None,
                    }
                }
                None => FwdBufs {
                    xg,
                    hg,
                    h: temp(2 * hlen)?,
                    c: if lstm { temp(2 * clen)? } else { View::NULL },
                    m: if proj { temp(clen)? } else { View::NULL },
                    gates: None,
                    extra: None,
                    training: false,
                    persistent: None,
                },
            };
            if let Some(units) = call.persistent_units(&dims) {
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
        if nd == 2 {
            call.order(1, 0)?;
        }
        for (d, (b, io)) in bufs.iter().enumerate() {
            forward_direction(call, d, &dims, layout.layer(l, d), w, lens, io, b)?;
        }
        if nd == 2 {
            call.order(0, 1)?;
        }
        prev_out = out;
    }
    // Only a reserve whose every buffer was written is usable by backward.
    if let Some(r) = save {
        r.shape = Some(shape.clone());
    }
    Ok(())
}

/// One layer-direction forward on stream `d`.
#[allow(clippy::too_many_arguments)]
fn forward_direction(call: &Call<'_>, d: usize, dm: &Dims, lr: &LayerRanges, w: View, lens: u64, io: &FwdIo, b: &FwdBufs) -> Result<()> {
    let Dims { t: tl, b: bl, h, hout, gh, out_w, .. } = *dm;
    let tb = tl * bl;
    let reverse = d == 1;
    let k = &call.dev.kernels;
    let w_ih = range_view(w, &lr.w_ih).mat(gh, dm.input);
    let w_hh = range_view(w, &lr.w_hh).mat(gh, hout);
    let b_ih = lr.b_ih.as_ref().map_or(View::NULL, |r| range_view(w, r));
    let b_hh = lr.b_hh.as_ref().map_or(View::NULL, |r| range_view(w, r));
    let w_hr = lr.w_hr.as_ref().map(|r| range_view(w, r).mat(hout, h));

    // XG[T·B, G·H] = X · W_ih^T for all steps; the biases are added by the step kernels.
    call.gemm(d, 1.0, io.input.mat(tb, dm.input), w_ih.t(), 0.0, b.xg.mat(tb, gh))?;

    if let Some((units, barrier)) = b.persistent {
        // The whole sequence in one cooperative launch (kernels/persistent_lstm.cu).
        let blocks = h.div_ceil(units);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (PERSISTENT_THREADS, 1, 1),
            shared_mem_bytes: persistent_smem(dm, units) as u32,
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
            &k.persistent_lstm_forward,
            "persistent_lstm_forward",
            cfg,
            true,
            &[
                &bi,
                &hi,
                &ti,
                &ri,
                &ui,
                &lens,
                &b.xg.ptr,
                &w_hh_ptr,
                &b_ih.ptr,
                &b_hh.ptr,
                &io.h0.ptr,
                &io.c0.ptr,
                &h_states,
                &tr,
                &c_save,
                &gates_save,
                &y,
                &ow,
                &hn,
                &cn,
                &barrier.ptr,
            ],
        );
    }

    let (bi, hi, ow) = (bl as i32, h as i32, out_w as i32);
    let mut prev: Option<usize> = None;
    for (kk, t) in steps(tl, reverse).enumerate() {
        let cur = if b.training { t } else { kk % 2 };
        let h_prev = prev.map_or(io.h0, |p| b.h.at(p * bl * hout, bl * hout));
        let c_prev = if dm.lstm() { prev.map_or(io.c0, |p| b.c.at(p * bl * h, bl * h)) } else { View::NULL };
        let h_t = b.h.at(cur * bl * hout, bl * hout);
        let c_t = if dm.lstm() { b.c.at(cur * bl * h, bl * h) } else { View::NULL };
        // HG[B, G·H] = h_prev · W_hh^T
        call.gemm(d, 1.0, h_prev.mat(bl, hout), w_hh.t(), 0.0, b.hg.mat(bl, gh))?;
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
                    d,
                    &k.lstm_forward_step,
                    "lstm_forward_step",
                    bl * h,
                    &[
                        &bi,
                        &hi,
                        &step,
                        &lens,
                        &xg_t,
                        &b.hg.ptr,
                        &b_ih.ptr,
                        &b_hh.ptr,
                        &c_prev.ptr,
                        &keep,
                        &gates_t,
                        &c_t.ptr,
                        &m_t.ptr,
                        &y_arg,
                        &ow,
                    ],
                )?;
                if let Some(w_hr) = w_hr {
                    // h[B, Hout] = m · W_hr^T, then masked.
                    call.gemm(d, 1.0, m_t.mat(bl, h), w_hr.t(), 0.0, h_t.mat(bl, hout))?;
                    let ho = hout as i32;
                    call.launch(
                        d,
                        &k.lstm_projection_finish,
                        "lstm_projection_finish",
                        bl * hout,
                        &[&bi, &ho, &step, &lens, &h_prev.ptr, &h_t.ptr, &y_t, &ow],
                    )?;
                }
            }
            CellKind::Gru => {
                let extra_t = b.extra.map_or(0, |e| e.at(t * bl * h, bl * h).ptr);
                call.launch(
                    d,
                    &k.gru_forward_step,
                    "gru_forward_step",
                    bl * h,
                    &[&bi, &hi, &step, &lens, &xg_t, &b.hg.ptr, &b_ih.ptr, &b_hh.ptr, &h_prev.ptr, &gates_t, &extra_t, &h_t.ptr, &y_t, &ow],
                )?;
            }
            CellKind::RnnTanh | CellKind::RnnRelu => {
                let (f, name) = if dm.cell == CellKind::RnnTanh {
                    (&k.rnn_tanh_forward_step, "rnn_tanh_forward_step")
                } else {
                    (&k.rnn_relu_forward_step, "rnn_relu_forward_step")
                };
                call.launch(
                    d,
                    f,
                    name,
                    bl * h,
                    &[&bi, &hi, &step, &lens, &xg_t, &b.hg.ptr, &b_ih.ptr, &b_hh.ptr, &h_prev.ptr, &gates_t, &h_t.ptr, &y_t, &ow],
                )?;
            }
        }
        prev = Some(cur);
    }
    let last = prev.expect("at least one step");
    if let Some(hn) = io.hn {
        call.copy(d, hn, b.h.at(last * bl * hout, bl * hout))?;
    }
    if let Some(cn) = io.cn {
        call.copy(d, cn, b.c.at(last * bl * h, bl * h))?;
    }
    Ok(())
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
        let v = |s: &Option<CudaSlice<f32>>| s.as_ref().map_or(View::NULL, |s| call.view(s));
        SavedViews {
            x: v(&r.x),
            h0: v(&r.h0),
            c0: v(&r.c0),
            lens: r.lengths.as_ref().map_or(0, |l| len_ptr(l, call.s0())),
            outputs: r.outputs.iter().map(v).collect(),
            dirs: r.dirs.iter().map(|d| [v(&d.gates), v(&d.extra), v(&d.c), v(&d.m), v(&d.h)]).collect(),
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
    let mut temps: Vec<CudaSlice<f32>> = Vec::new();
    let mut temp = |n: usize| -> Result<View> {
        let s = call.alloc(n)?;
        let v = call.view(&s);
        temps.push(s);
        Ok(v)
    };
    if let (Some(dp), GradMode::Overwrite) = (dparams, mode) {
        call.fill(0, dp, 0.0)?;
    }
    let ones = if dparams.is_some() && cfg.bias() {
        let o = temp(tb)?;
        call.fill(0, o, 1.0)?;
        o
    } else {
        View::NULL
    };

    let mut d_out = dy;
    for l in (0..nl).rev() {
        let dims = Dims::new(cfg, shape, l);
        let input = if l == 0 { sv.x } else { sv.outputs[l - 1] };
        let d_in = match (l, dx) {
            (0, dx) => dx,
            _ => Some(temp(tb * dims.input)?),
        };
        let mut bufs = Vec::new();
        for _ in 0..nd {
            let dgi = temp(tb * gh)?;
            bufs.push(BwdBufs {
                dgi,
                dgh: if dims.gru() { temp(tb * gh)? } else { dgi },
                carry: temp(hlen)?,
                dc: if lstm { temp(clen)? } else { View::NULL },
                dh_all: if proj { temp(tb * hout)? } else { View::NULL },
                dh: if proj { temp(hlen)? } else { View::NULL },
                dmv: if proj { temp(clen)? } else { View::NULL },
            });
        }
        if nd == 2 {
            call.order(1, 0)?;
        }
        for (d, b) in bufs.iter().enumerate() {
            let i = l * nd + d;
            let io = BwdIo {
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
            };
            backward_direction(call, d, &dims, layout.layer(l, d), w, &io, b)?;
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
        d_out = d_in;
    }
    Ok(())
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
    let Dims { t: tl, b: bl, h, hout, gh, out_w, .. } = *dm;
    let tb = tl * bl;
    let reverse = d == 1;
    let k = &call.dev.kernels;
    let [gates, extra, c_all, m_all, h_all] = io.saved;
    let w_hh = range_view(w, &lr.w_hh).mat(gh, hout);
    let w_hr = lr.w_hr.as_ref().map(|r| range_view(w, r).mat(hout, h));
    call.copy_or_zero(d, b.carry, io.dhn)?;
    if dm.lstm() {
        call.copy_or_zero(d, b.dc, io.dcn)?;
    }
    let (bi, hi, ho, ow) = (bl as i32, h as i32, hout as i32, out_w as i32);
    for t in steps(tl, !reverse) {
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
                        d,
                        &k.lstm_projection_backward_prepare,
                        "lstm_projection_backward_prepare",
                        bl * hout,
                        &[&bi, &ho, &step, &io.lens, &dy_t, &ow, &b.carry.ptr, &b.dh.ptr, &dh_save],
                    )?;
                    // m → h = m · W_hr^T, so dm = dh · W_hr.
                    call.gemm(d, 1.0, b.dh.mat(bl, hout), w_hr, 0.0, b.dmv.mat(bl, h))?;
                    let null = 0u64;
                    call.launch(
                        d,
                        &k.lstm_backward_step,
                        "lstm_backward_step",
                        bl * h,
                        &[&bi, &hi, &step, &io.lens, &gates_t, &c_t, &c_prev.ptr, &b.dmv.ptr, &null, &ow, &null, &b.dc.ptr, &dgi_t.ptr],
                    )?;
                } else {
                    let null = 0u64;
                    call.launch(
                        d,
                        &k.lstm_backward_step,
                        "lstm_backward_step",
                        bl * h,
                        &[&bi, &hi, &step, &io.lens, &gates_t, &c_t, &c_prev.ptr, &null, &dy_t, &ow, &b.carry.ptr, &b.dc.ptr, &dgi_t.ptr],
                    )?;
                }
            }
            CellKind::Gru => {
                let extra_t = extra.at(t * bl * h, bl * h).ptr;
                call.launch(
                    d,
                    &k.gru_backward_step,
                    "gru_backward_step",
                    bl * h,
                    &[&bi, &hi, &step, &io.lens, &gates_t, &extra_t, &h_prev.ptr, &dy_t, &ow, &b.carry.ptr, &dgi_t.ptr, &dgh_t.ptr],
                )?;
            }
            CellKind::RnnTanh | CellKind::RnnRelu => {
                let (f, name) = if dm.cell == CellKind::RnnTanh {
                    (&k.rnn_tanh_backward_step, "rnn_tanh_backward_step")
                } else {
                    (&k.rnn_relu_backward_step, "rnn_relu_backward_step")
                };
                call.launch(d, f, name, bl * h, &[&bi, &hi, &step, &io.lens, &gates_t, &dy_t, &ow, &b.carry.ptr, &dgi_t.ptr])?;
            }
        }
        // dh_prev += dGh · W_hh (the kernels left the direct part, or dh on inactive rows).
        call.gemm(d, 1.0, dgh_t.mat(bl, gh), w_hh, 1.0, b.carry.mat(bl, hout))?;
    }
    if let Some(dh0) = io.dh0 {
        call.copy(d, dh0, b.carry)?;
    }
    if let Some(dc0) = io.dc0 {
        call.copy(d, dc0, b.dc)?;
    }
    let Some(dp) = io.dparams else { return Ok(()) };
    // dW_ih += dGi^T · X
    call.gemm(d, 1.0, b.dgi.mat(tb, gh).t(), io.input.mat(tb, dm.input), 1.0, range_view(dp, &lr.w_ih).mat(gh, dm.input))?;
    // dW_hh += dGh^T · H_prev: the saved states shifted by one step, h0 at the first processed
    // step: two GEMMs, no copy.
    let dw_hh = range_view(dp, &lr.w_hh).mat(gh, hout);
    let rest = (tl - 1) * bl;
    let (first, rest_g, rest_h) = if reverse {
        (tl - 1, b.dgh.at(0, rest * gh), h_all.at(bl * hout, rest * hout))
    } else {
        (0, b.dgh.at(bl * gh, rest * gh), h_all.at(0, rest * hout))
    };
    call.gemm(d, 1.0, rest_g.mat(rest, gh).t(), rest_h.mat(rest, hout), 1.0, dw_hh)?;
    call.gemm(d, 1.0, b.dgh.at(first * bl * gh, bl * gh).mat(bl, gh).t(), io.h0.mat(bl, hout), 1.0, dw_hh)?;
    // db += 1^T · dG
    if let Some(r) = &lr.b_ih {
        call.gemm(d, 1.0, io.ones.mat(1, tb), b.dgi.mat(tb, gh), 1.0, range_view(dp, r).mat(1, gh))?;
    }
    if let Some(r) = &lr.b_hh {
        call.gemm(d, 1.0, io.ones.mat(1, tb), b.dgh.mat(tb, gh), 1.0, range_view(dp, r).mat(1, gh))?;
    }
    if let Some(r) = &lr.w_hr {
        // dW_hr += dH^T · M
        call.gemm(d, 1.0, b.dh_all.mat(tb, hout).t(), m_all.mat(tb, h), 1.0, range_view(dp, r).mat(hout, h))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cuBLAS's column-major sgemm, on host memory: `C = alpha·op(A)·op(B) + beta·C`, element
    /// `(i, j)` of a column-major matrix at `i + j·ld`.
    fn host_sgemm(g: &SgemmArgs, alpha: f32, beta: f32) {
        let (a, b, c) = (g.a as *const f32, g.b as *const f32, g.c as *mut f32);
        for i in 0..g.m as usize {
            for j in 0..g.n as usize {
                let mut acc = 0.0f32;
                for p in 0..g.k as usize {
                    // SAFETY: the test's buffers hold every index these formulas reach.
                    let av = unsafe {
                        if g.transa {
                            *a.add(p + i * g.lda as usize)
                        } else {
                            *a.add(i + p * g.lda as usize)
                        }
                    };
                    let bv = unsafe {
                        if g.transb {
                            *b.add(j + p * g.ldb as usize)
                        } else {
                            *b.add(p + j * g.ldb as usize)
                        }
                    };
                    acc += av * bv;
                }
                // SAFETY: as above.
                unsafe {
                    let cv = c.add(i + j * g.ldc as usize);
                    *cv = alpha * acc + beta * *cv;
                }
            }
        }
    }

    fn host_view(v: &[f32]) -> View {
        View { ptr: v.as_ptr() as u64, len: v.len() }
    }

    /// The row-major to column-major mapping, for every transpose combination, against a plain
    /// row-major product.
    #[test]
    fn sgemm_args_compute_the_row_major_product() {
        let (m, k, n) = (5usize, 3usize, 4usize);
        let mut rng = crate::SplitMix64::new(9);
        let mut rand = |len: usize| (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect::<Vec<f32>>();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // op(A) is [m, k]: stored [m, k], or [k, m] when transposed; likewise op(B) [k, n].
            let a = rand(m * k);
            let b = rand(k * n);
            let c0 = rand(m * n);
            let am = if ta { host_view(&a).mat(k, m).t() } else { host_view(&a).mat(m, k) };
            let bm = if tb { host_view(&b).mat(n, k).t() } else { host_view(&b).mat(k, n) };
            let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
            let mut c = c0.clone();
            let cv = View { ptr: c.as_mut_ptr() as u64, len: c.len() };
            let g = SgemmArgs::new(am, bm, 0.5, cv.mat(m, n)).unwrap();
            host_sgemm(&g, 2.0, 0.5);
            for i in 0..m {
                for j in 0..n {
                    let want = 2.0 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>() + 0.5 * c0[i * n + j];
                    assert!((c[i * n + j] - want).abs() < 1e-5, "ta={ta} tb={tb} ({i},{j}): {} vs {want}", c[i * n + j]);
                }
            }
        }
        // Nothing to do: an empty product accumulated.
        let e: Vec<f32> = vec![0.0; 4];
        assert!(SgemmArgs::new(host_view(&e).mat(2, 0), host_view(&e).mat(0, 2), 1.0, host_view(&e).mat(2, 2)).is_none());
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn views_are_bounds_checked() {
        let v = View { ptr: 4096, len: 10 };
        assert_eq!(v.at(4, 6).ptr, 4096 + 16);
        assert_eq!(v.strided(2, 3, 3, 2).len, 8);
        let _ = v.at(5, 6);
    }
}
