//! Attention on the CUDA driver (f32): the host's arrangement (`backend/host/attention.rs`) on
//! the device, every product a cuBLAS GEMM and the rest the kernels of kernels/attention.cu.
//!
//! For each sequence `b` the queries `Q_b` are the rows `t·B + b` of `queries` and its keys
//! `K_b` the rows `s·B + b` of the memory's keys: strided views (leading dimension `B·H`, each
//! sequence's `H` elements after the last's), no copies. The per-sequence products are one
//! strided-batched GEMM over the `B` sequences (`cublasSgemmStridedBatched`), each over all `S`
//! keys: past a sequence's length its keys and their projection are 0 (the memory's padding),
//! the softmax writes its weights 0 and the softmax's backward its `dE` 0, so every product
//! term there is an exact 0 (for finite values) and a sequence's results are those of its own
//! `len_b` keys.
//!
//! - Memory (once per keys): the keys with their padding zeroed (`attention_mask_rows`), and
//!   their projection, one GEMM over all keys (general: `K W_aᵀ`; concat, additive: `K W_kᵀ`).
//! - Forward: the scores `E_b = Q_b K_bᵀ` (dot) or `Q_b (K W_aᵀ)_bᵀ` (general), a GEMM per
//!   sequence into the columns `s < len_b` of the weights, or `Σ_a v_a tanh(P_q + P_k)`
//!   (`attention_tanh_score`, `P_q = Q W_qᵀ` one GEMM); the masked softmax of each row
//!   (`attention_softmax`, which writes the padding columns 0); the context `C_b = α_b K_b`; the
//!   attentional hidden state `tanh(C W_c[:, :Hk]ᵀ + Q W_c[:, Hk:]ᵀ)`, two GEMMs over all queries
//!   and `attention_tanh`.
//! - Backward: the same products transposed, `dZ = dH ⊙ (1 − H²)` (`attention_tanh_backward`),
//!   the softmax's backward (`attention_softmax_backward`), the tanh score's
//!   (`attention_tanh_score_backward_{query,key}`, `dv` as column sums of per-row parts); the
//!   keys' side's gradients are added into the memory's gradients, turned into the keys' and the
//!   projection weight's gradients once by [`memory_backward`] (the keys' padding zeroed).
//!
//! Everything runs on stream 0, in issue order; results do not depend on the grid (no atomics).
//! The host-slice calls ([`Stage`]) upload the inputs, run, and download the results: the
//! [`AttentionBackend`](crate::attention::AttentionBackend) of `CudaHost`, and the same code on
//! the host emulation in the unit tests.

use super::super::buffer::{DevMat, RawBuf, View};
use super::super::exec::Exec;
use super::super::kernels as k;
use crate::attention::{
    check_backward, check_len, AttentionConfig, AttentionGrads, AttentionMemory, AttentionMemoryGrads, AttentionOutput, AttentionShape,
    AttentionUpstream, Dims, Offsets, Score,
};
use crate::attention::{check_backward_sizes, check_grads_sizes, check_memory_keys, check_memory_sizes};
use crate::attention::{check_call, check_grads, check_memory, proj_width};
use crate::element::Dtype;
use crate::error::{Error, Result};

/// Where the host slices of an attention call are computed on: the device (`CudaHost`) or, in
/// the unit tests, the host emulation.
pub(crate) trait Stage {
    /// An f32 buffer of the target.
    type Buf;
    /// A copy of `host` on the target.
    fn up(&self, host: &[f32]) -> Result<Self::Buf>;
    /// `n` elements on the target, every one of which the call writes before it reads.
    fn out(&self, n: usize) -> Result<Self::Buf>;
    /// The buffer's view.
    fn view(&self, b: &Self::Buf) -> View;
    /// Runs `f` on an execution context of the target (f32 storage).
    fn run(&self, f: &mut dyn FnMut(&Exec<'_>) -> Result<()>) -> Result<()>;
    /// Copies the buffer into `host` (same length), after the work enqueued before.
    fn down(&self, b: &Self::Buf, host: &mut [f32]) -> Result<()>;
}

/// The sizes of a call (`Dims::of`), each product of them the kernels and cuBLAS index
/// below 2^31 (an error naming the shape otherwise).
fn device_dims(cfg: &AttentionConfig, shape: &AttentionShape) -> Result<Dims> {
    let d = Dims::of(cfg, shape);
    let widest = [d.s, d.hq, d.hk, d.a, d.o, d.hk + d.hq].into_iter().max().unwrap_or(0);
    let rows = d.tq.max(d.s).checked_mul(d.b);
    if rows.and_then(|r| r.checked_mul(widest)).is_none_or(|n| n >= 1 << 31) || cfg.param_len() >= 1 << 31 {
        return Err(Error::invalid(
            "shape",
            "sizes whose products (Tq·B·S, S·B·Hk, ...) are below 2^31 on the CUDA backend",
            format!("{shape:?}"),
        ));
    }
    Ok(d)
}

fn tanh_score(cfg: &AttentionConfig) -> bool {
    matches!(cfg.score(), Score::Concat | Score::Additive)
}

/// One call on the target: its execution context, sizes, parameter offsets and the lengths on
/// the target.
struct Call<'e, 'a> {
    exec: &'e Exec<'a>,
    d: Dims,
    w: Offsets,
    lengths: RawBuf,
}

impl<'e, 'a> Call<'e, 'a> {
    fn new(exec: &'e Exec<'a>, cfg: &AttentionConfig, shape: &AttentionShape) -> Result<Self> {
        let d = device_dims(cfg, shape)?;
        let lens: Vec<i32> = shape.lengths().iter().map(|&l| l as i32).collect();
        Ok(Call { exec, d, w: Offsets::of(cfg, &d)?, lengths: exec.upload_i32(&lens)? })
    }

    fn lens(&self) -> u64 {
        self.lengths.ptr()
    }

    /// Sequence `b`'s `rows` rows of `x` (`[rows·B, width]`, rows `r·B + b`), their first `cols`
    /// columns.
    fn seq(&self, x: View, b: usize, rows: usize, width: usize, cols: usize) -> DevMat {
        let ld = self.d.b * width;
        x.strided(b * width, rows, ld, cols).mat_strided(rows, cols, ld)
    }

    /// The parameter block `rows × cols` at `off` with row stride `rs` of `p`.
    fn param(&self, p: View, off: usize, rows: usize, cols: usize, rs: usize) -> DevMat {
        p.strided(off, rows, rs, cols).mat_strided(rows, cols, rs)
    }

    fn gemm(&self, a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Result<()> {
        self.exec.gemm(0, 1.0, a, b, beta, c)
    }

    /// `C_b = A_b·B_b + beta·C_b` for every sequence `b`, one strided-batched GEMM: `a(b)`,
    /// `b(b)` and `c(b)` are sequence `b`'s operands (views [`seq`](Self::seq) checks against
    /// their buffers, the first and the last sequence's made here), each sequence's a fixed
    /// number of elements after the last's.
    fn gemm_seqs(&self, a: impl Fn(usize) -> DevMat, b: impl Fn(usize) -> DevMat, beta: f32, c: impl Fn(usize) -> DevMat) -> Result<()> {
        let n = self.d.b;
        let stride = |x: &dyn Fn(usize) -> DevMat| {
            let (first, last) = (x(0), x(n - 1));
            let step = if n > 1 { (last.ptr - first.ptr) as usize / Dtype::F32.size() / (n - 1) } else { 0 };
            (first, step)
        };
        let ((a0, sa), (b0, sb), (c0, sc)) = (stride(&a), stride(&b), stride(&c));
        self.exec.gemm_batched(0, n, (a0, sa), (b0, sb), beta, (c0, sc))
    }

    fn alloc(&self, n: usize) -> Result<super::super::buffer::DevBuf> {
        self.exec.alloc(Dtype::F32, n)
    }

    fn i32(&self, n: usize) -> i32 {
        n as i32 // device_dims checked every size below 2^31
    }

    /// `attention_mask_rows`: `dst` = `src` (`[S, B, w]`) with the padding rows 0.
    fn mask_rows(&self, src: View, dst: View, width: usize) -> Result<()> {
        let d = self.d;
        let args = k::AttentionMaskRowsArgs {
            steps: self.i32(d.s),
            batch: self.i32(d.b),
            width: self.i32(width),
            lengths: self.lens(),
            src: src.ptr,
            dst: dst.ptr,
        };
        assert!(src.len == d.s * d.b * width && dst.len == src.len, "mask_rows");
        self.exec.launch_typed(0, k::AttentionMaskRows, Dtype::F32, dst.len, &args)
    }

    /// `attention_softmax` (`alpha` None) or `attention_softmax_backward` on the `[Tq·B, S]` rows of `e`.
    fn softmax(&self, alpha: Option<View>, e: View) -> Result<()> {
        let d = self.d;
        let rows = d.tq * d.b;
        assert!(e.len == rows * d.s && alpha.is_none_or(|a| a.len == e.len), "softmax");
        let args = k::AttentionSoftmaxArgs {
            rows: self.i32(rows),
            batch: self.i32(d.b),
            steps: self.i32(d.s),
            lengths: self.lens(),
            alpha: alpha.map_or(0, |a| a.ptr),
            e: e.ptr,
        };
        let kernel = if alpha.is_some() { k::AttentionSoftmaxBackward } else { k::AttentionSoftmax };
        self.exec.launch_rows(0, kernel, Dtype::F32, rows, &args)
    }

    /// `P_q = Q W_qᵀ` `[Tq·B, A]` (concat, additive).
    fn query_proj(&self, p: View, q: View) -> Result<super::super::buffer::DevBuf> {
        let (d, w) = (self.d, self.w);
        let tb = d.tq * d.b;
        let qp = self.alloc(tb * d.a)?;
        self.gemm(q.mat(tb, d.hq), self.param(p, w.w_q.0, d.a, d.hq, w.w_q.1).t(), 0.0, qp.view().mat(tb, d.a))?;
        Ok(qp)
    }
}

/// The keys' side on the target: `masked` the keys with their padding zeroed, `proj` their
/// projection (empty for dot).
fn memory_views(c: &Call<'_, '_>, cfg: &AttentionConfig, p: View, keys: View, masked: View, proj: View) -> Result<()> {
    let (d, w) = (c.d, c.w);
    let sb = d.s * d.b;
    c.mask_rows(keys, masked, d.hk)?;
    match cfg.score() {
        Score::Dot => Ok(()),
        Score::General => c.gemm(masked.mat(sb, d.hk), c.param(p, w.w_a, d.hq, d.hk, d.hk).t(), 0.0, proj.mat(sb, d.hq)),
        Score::Concat | Score::Additive => {
            c.gemm(masked.mat(sb, d.hk), c.param(p, w.w_k.0, d.a, d.hk, w.w_k.1).t(), 0.0, proj.mat(sb, d.a))
        }
    }
}

/// The forward's buffers on the target.
struct ForwardIo {
    p: View,
    keys: View,
    proj: View,
    q: View,
    weights: View,
    context: View,
    hidden: View,
}

fn forward_views(c: &Call<'_, '_>, cfg: &AttentionConfig, io: &ForwardIo) -> Result<()> {
    let (d, w) = (c.d, c.w);
    let tb = d.tq * d.b;
    if tanh_score(cfg) {
        let qp = c.query_proj(io.p, io.q)?;
        let args = k::AttentionTanhScoreArgs {
            queries: c.i32(d.tq),
            batch: c.i32(d.b),
            steps: c.i32(d.s),
            attn: c.i32(d.a),
            lengths: c.lens(),
            qp: qp.view().ptr,
            kp: io.proj.ptr,
            v: io.p.at(w.v, d.a).ptr,
            e: io.weights.ptr,
        };
        c.exec.launch_typed(0, k::AttentionTanhScore, Dtype::F32, tb * d.s, &args)?;
    } else {
        // E_b = Q_b K_bᵀ (dot) or Q_b (K W_aᵀ)_bᵀ (general) over all S keys.
        let keys = if cfg.score() == Score::Dot { io.keys } else { io.proj };
        let e = |b| c.seq(io.weights, b, d.tq, d.s, d.s);
        c.gemm_seqs(|b| c.seq(io.q, b, d.tq, d.hq, d.hq), |b| c.seq(keys, b, d.s, d.hq, d.hq).t(), 0.0, e)?;
    }
    c.softmax(None, io.weights)?;
    let alpha = |b| c.seq(io.weights, b, d.tq, d.s, d.s);
    c.gemm_seqs(alpha, |b| c.seq(io.keys, b, d.s, d.hk, d.hk), 0.0, |b| c.seq(io.context, b, d.tq, d.hk, d.hk))?;
    if d.o > 0 {
        // Z = C W_c[:, :Hk]ᵀ + Q W_c[:, Hk:]ᵀ, then tanh in place.
        let rs = d.hk + d.hq;
        let h = io.hidden.mat(tb, d.o);
        c.gemm(io.context.mat(tb, d.hk), c.param(io.p, w.w_c, d.o, d.hk, rs).t(), 0.0, h)?;
        c.gemm(io.q.mat(tb, d.hq), c.param(io.p, w.w_c + d.hk, d.o, d.hq, rs).t(), 1.0, h)?;
        let args = k::AttentionTanhArgs { n: (tb * d.o) as i64, x: io.hidden.ptr, y: io.hidden.ptr };
        c.exec.launch_typed(0, k::AttentionTanh, Dtype::F32, tb * d.o, &args)?;
    }
    Ok(())
}

/// The backward's buffers on the target: the inputs, the saved forward output, the incoming
/// gradients (absent: zero), the outputs (overwritten) and the memory's gradients (added into).
struct BackwardIo {
    p: View,
    keys: View,
    proj: View,
    q: View,
    weights: View,
    context: View,
    hidden: View,
    d_weights: Option<View>,
    d_context: Option<View>,
    d_hidden: Option<View>,
    d_queries: View,
    d_params: View,
    dm_keys: View,
    dm_proj: View,
}

fn backward_views(c: &Call<'_, '_>, cfg: &AttentionConfig, io: &BackwardIo) -> Result<()> {
    let (d, w, e) = (c.d, c.w, c.exec);
    let tb = d.tq * d.b;
    e.fill(0, io.d_queries, 0.0)?;
    e.fill(0, io.d_params, 0.0)?;
    let dc_buf = c.alloc(tb * d.hk)?;
    let dc = dc_buf.view();
    e.copy_or_zero(0, dc, io.d_context)?;
    if let (Some(dh), true) = (io.d_hidden, d.o > 0) {
        // dZ = dH ⊙ (1 - H²); dW_c += dZᵀ [C, Q]; [dC, dQ] += dZ W_c.
        let dz_buf = c.alloc(tb * d.o)?;
        let dz = dz_buf.view();
        let args = k::AttentionTanhBackwardArgs { n: (tb * d.o) as i64, dy: dh.ptr, y: io.hidden.ptr, dx: dz.ptr };
        e.launch_typed(0, k::AttentionTanhBackward, Dtype::F32, tb * d.o, &args)?;
        let (dzm, rs) = (dz.mat(tb, d.o), d.hk + d.hq);
        c.gemm(dzm.t(), io.context.mat(tb, d.hk), 1.0, c.param(io.d_params, w.w_c, d.o, d.hk, rs))?;
        c.gemm(dzm.t(), io.q.mat(tb, d.hq), 1.0, c.param(io.d_params, w.w_c + d.hk, d.o, d.hq, rs))?;
        c.gemm(dzm, c.param(io.p, w.w_c, d.o, d.hk, rs), 1.0, dc.mat(tb, d.hk))?;
        c.gemm(dzm, c.param(io.p, w.w_c + d.hk, d.o, d.hq, rs), 1.0, io.d_queries.mat(tb, d.hq))?;
    }
    // dα = d_weights + dC K_bᵀ; d(memory keys)_b += α_bᵀ dC_b; then the softmax's backward, in place.
    let de_buf = c.alloc(tb * d.s)?;
    let de = de_buf.view();
    e.copy_or_zero(0, de, io.d_weights)?;
    // (The padding columns of dα get d_weights' padding plus exact zeros; the softmax's backward
    // does not read them and writes dE 0 there. The memory's padding rows get exact zeros, or a
    // NaN from a non-finite dC that memory_backward's mask drops.)
    let (dcb, keys_b) = (|b| c.seq(dc, b, d.tq, d.hk, d.hk), |b| c.seq(io.keys, b, d.s, d.hk, d.hk));
    c.gemm_seqs(dcb, |b| keys_b(b).t(), 1.0, |b| c.seq(de, b, d.tq, d.s, d.s))?;
    c.gemm_seqs(|b| c.seq(io.weights, b, d.tq, d.s, d.s).t(), dcb, 1.0, |b| c.seq(io.dm_keys, b, d.s, d.hk, d.hk))?;
    c.softmax(Some(io.weights), de)?;
    let (deb, qb) = (|b| c.seq(de, b, d.tq, d.s, d.s), |b| c.seq(io.q, b, d.tq, d.hq, d.hq));
    let dqb = |b| c.seq(io.d_queries, b, d.tq, d.hq, d.hq);
    match cfg.score() {
        Score::Dot => {
            c.gemm_seqs(deb, keys_b, 1.0, dqb)?;
            c.gemm_seqs(|b| deb(b).t(), qb, 1.0, |b| c.seq(io.dm_keys, b, d.s, d.hk, d.hk))?;
        }
        Score::General => {
            // dQ_b += dE_b (K W_aᵀ)_b; d(K W_aᵀ)_b += dE_bᵀ Q_b.
            c.gemm_seqs(deb, |b| c.seq(io.proj, b, d.s, d.hq, d.hq), 1.0, dqb)?;
            c.gemm_seqs(|b| deb(b).t(), qb, 1.0, |b| c.seq(io.dm_proj, b, d.s, d.hq, d.hq))?;
        }
        Score::Concat | Score::Additive => {
            // dP_q, the rows' parts of dv, and dP_k += (the memory's projection), from dE;
            // dv = the column sums of the parts (rows in order); dQ += dP_q W_q, dW_q += dP_qᵀ Q.
            let qp = c.query_proj(io.p, io.q)?;
            let (dqp, dv_rows) = (c.alloc(tb * d.a)?, c.alloc(tb * d.a)?);
            let args = k::AttentionTanhScoreBackwardArgs {
                queries: c.i32(d.tq),
                batch: c.i32(d.b),
                steps: c.i32(d.s),
                attn: c.i32(d.a),
                lengths: c.lens(),
                qp: qp.view().ptr,
                kp: io.proj.ptr,
                v: io.p.at(w.v, d.a).ptr,
                de: de.ptr,
                dqp: dqp.view().ptr,
                dv_rows: dv_rows.view().ptr,
                dkp: io.dm_proj.ptr,
            };
            e.launch_typed(0, k::AttentionTanhScoreBackwardQuery, Dtype::F32, tb * d.a, &args)?;
            e.launch_typed(0, k::AttentionTanhScoreBackwardKey, Dtype::F32, d.s * d.b * d.a, &args)?;
            e.add_column_sums(0, dv_rows.view(), tb, io.d_params.at(w.v, d.a))?;
            let dqpm = dqp.view().mat(tb, d.a);
            c.gemm(dqpm, c.param(io.p, w.w_q.0, d.a, d.hq, w.w_q.1), 1.0, io.d_queries.mat(tb, d.hq))?;
            c.gemm(dqpm.t(), io.q.mat(tb, d.hq), 1.0, c.param(io.d_params, w.w_q.0, d.a, d.hq, w.w_q.1))?;
        }
    }
    Ok(())
}

/// The keys' side's backward on the target: `d_keys = dm_keys + dm_proj W` (zero at the
/// padding) and the projection weight's gradient `dm_projᵀ K` into `d_params` (overwritten).
fn memory_backward_views(c: &Call<'_, '_>, cfg: &AttentionConfig, p: View, keys: View, dm: (View, View), out: (View, View)) -> Result<()> {
    let (d, w, e) = (c.d, c.w, c.exec);
    let ((dm_keys, dm_proj), (d_keys, d_params)) = (dm, out);
    let sb = d.s * d.b;
    e.copy(0, d_keys, dm_keys)?;
    e.fill(0, d_params, 0.0)?;
    let (off, width, rs) = match cfg.score() {
        Score::Dot => (0, 0, 0),
        Score::General => (w.w_a, d.hq, d.hk),
        Score::Concat | Score::Additive => (w.w_k.0, d.a, w.w_k.1),
    };
    if width > 0 {
        // The projection's gradient is zero at the padding (the calls add exact zeros there).
        let dp = dm_proj.mat(sb, width);
        c.gemm(dp, c.param(p, off, width, d.hk, rs), 1.0, d_keys.mat(sb, d.hk))?;
        c.gemm(dp.t(), keys.mat(sb, d.hk), 1.0, c.param(d_params, off, width, d.hk, rs))?;
    }
    c.mask_rows(d_keys, d_keys, d.hk)
}

/// An attention memory in a target's buffers `B` (the device's [`CudaBuf`](crate::CudaBuf)s:
/// [`CudaAttentionMemory`](crate::CudaAttentionMemory)): the keys with their padding zeroed and
/// their projection, as [`AttentionMemory`], made by
/// [`Cuda::attention_memory`](crate::Cuda::attention_memory).
pub struct DeviceAttentionMemory<B> {
    pub(crate) keys: B,
    pub(crate) proj: B,
    pub(crate) steps: usize,
    pub(crate) lengths: Vec<usize>,
}

impl<B> DeviceAttentionMemory<B> {
    /// The encoder lengths of its sequences.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }
}

/// A forward's results in a target's buffers, as [`AttentionOutput`].
pub struct DeviceAttentionOutput<B> {
    /// `[Tq, B, S]`.
    pub weights: B,
    /// `[Tq, B, Hk]`.
    pub context: B,
    /// `[Tq, B, O]`; empty without the attentional hidden state.
    pub hidden: B,
}

/// The incoming gradients of a backward pass in a target's buffers, each optional (absent:
/// zero), as [`AttentionUpstream`].
pub struct DeviceAttentionUpstream<'a, B> {
    /// `[Tq, B, S]`, w.r.t. the weights.
    pub d_weights: Option<&'a B>,
    /// `[Tq, B, Hk]`, w.r.t. the context.
    pub d_context: Option<&'a B>,
    /// `[Tq, B, O]`, w.r.t. the attentional hidden state.
    pub d_hidden: Option<&'a B>,
}

/// The gradients w.r.t. a [`DeviceAttentionMemory`], accumulated over the backward calls that
/// read it, as [`AttentionMemoryGrads`].
pub struct DeviceAttentionMemoryGrads<B> {
    pub(crate) d_keys: B,
    pub(crate) d_proj: B,
}

/// A backward pass's gradients in a target's buffers: `d_queries` `[Tq, B, Hq]` from
/// [`Cuda::attention_backward_with`](crate::Cuda::attention_backward_with), `d_keys`
/// `[S, B, Hk]` from [`Cuda::attention_memory_backward`](crate::Cuda::attention_memory_backward),
/// the parameters' gradients (flat layout) from both.
pub struct DeviceAttentionGrads<B> {
    /// `[Tq, B, Hq]` (backward).
    pub d_queries: Option<B>,
    /// `[S, B, Hk]`, 0 at the padding (the memory's backward).
    pub d_keys: Option<B>,
    /// The parameters' gradients, in the flat layout.
    pub d_params: B,
}

/// The length of a target's buffer.
fn len<S: Stage>(st: &S, b: &S::Buf) -> usize {
    st.view(b).len
}

/// `memory` was made for `cfg` and `shape`'s keys.
fn check_staged_memory<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    memory: &DeviceAttentionMemory<S::Buf>,
) -> Result<()> {
    check_memory_keys(memory.steps, &memory.lengths, shape)?;
    check_memory_sizes(cfg, shape, len(st, &memory.keys), len(st, &memory.proj))
}

/// [`check_grads`] on a target's buffers.
fn check_staged_grads<S: Stage>(st: &S, memory: &DeviceAttentionMemory<S::Buf>, dm: &DeviceAttentionMemoryGrads<S::Buf>) -> Result<()> {
    check_grads_sizes([len(st, &memory.keys), len(st, &memory.proj)], [len(st, &dm.d_keys), len(st, &dm.d_proj)])
}

/// [`check_call`] on a target's buffers.
fn check_call_on<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &S::Buf,
    memory: &DeviceAttentionMemory<S::Buf>,
    queries: &S::Buf,
) -> Result<()> {
    check_staged_memory(st, cfg, shape, memory)?;
    check_len("params", len(st, params), &[cfg.param_len()])?;
    check_len("queries", len(st, queries), &[shape.queries(), shape.batch(), cfg.query_size()])
}

/// The memory of `keys` (`[S, B, Hk]`) with `params`, in the target's buffers.
pub(crate) fn memory_on<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &S::Buf,
    keys: &S::Buf,
) -> Result<DeviceAttentionMemory<S::Buf>> {
    check_len("params", len(st, params), &[cfg.param_len()])?;
    check_len("keys", len(st, keys), &[shape.steps(), shape.batch(), cfg.key_size()])?;
    device_dims(cfg, shape)?;
    let sb = shape.steps() * shape.batch();
    let (masked, proj) = (st.out(len(st, keys))?, st.out(sb * proj_width(cfg))?);
    st.run(&mut |exec| {
        let c = Call::new(exec, cfg, shape)?;
        memory_views(&c, cfg, st.view(params), st.view(keys), st.view(&masked), st.view(&proj))
    })?;
    Ok(DeviceAttentionMemory { keys: masked, proj, steps: shape.steps(), lengths: shape.lengths().to_vec() })
}

/// The forward of `queries` (`[Tq, B, Hq]`) over `memory`, in the target's buffers.
pub(crate) fn forward_on<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &S::Buf,
    memory: &DeviceAttentionMemory<S::Buf>,
    queries: &S::Buf,
) -> Result<DeviceAttentionOutput<S::Buf>> {
    check_call_on(st, cfg, shape, params, memory, queries)?;
    let d = device_dims(cfg, shape)?;
    let tb = d.tq * d.b;
    let (weights, context, hidden) = (st.out(tb * d.s)?, st.out(tb * d.hk)?, st.out(tb * d.o)?);
    st.run(&mut |exec| {
        let c = Call::new(exec, cfg, shape)?;
        let v = |b: &S::Buf| st.view(b);
        let io = ForwardIo {
            p: v(params),
            keys: v(&memory.keys),
            proj: v(&memory.proj),
            q: v(queries),
            weights: v(&weights),
            context: v(&context),
            hidden: v(&hidden),
        };
        forward_views(&c, cfg, &io)
    })?;
    Ok(DeviceAttentionOutput { weights, context, hidden })
}

/// The backward of [`forward_on`]'s call `out`, the keys' side's gradients added into `dm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_on<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &S::Buf,
    memory: &DeviceAttentionMemory<S::Buf>,
    queries: &S::Buf,
    out: &DeviceAttentionOutput<S::Buf>,
    up: DeviceAttentionUpstream<'_, S::Buf>,
    dm: &mut DeviceAttentionMemoryGrads<S::Buf>,
) -> Result<DeviceAttentionGrads<S::Buf>> {
    check_call_on(st, cfg, shape, params, memory, queries)?;
    let l = |b: Option<&S::Buf>| b.map(|b| len(st, b));
    let outs = [len(st, &out.weights), len(st, &out.context), len(st, &out.hidden)];
    check_backward_sizes(cfg, shape, outs, [l(up.d_weights), l(up.d_context), l(up.d_hidden)])?;
    check_staged_grads(st, memory, dm)?;
    let d = device_dims(cfg, shape)?;
    let (dq, dp) = (st.out(d.tq * d.b * d.hq)?, st.out(cfg.param_len())?);
    st.run(&mut |exec| {
        let c = Call::new(exec, cfg, shape)?;
        let v = |b: &S::Buf| st.view(b);
        let io = BackwardIo {
            p: v(params),
            keys: v(&memory.keys),
            proj: v(&memory.proj),
            q: v(queries),
            weights: v(&out.weights),
            context: v(&out.context),
            hidden: v(&out.hidden),
            d_weights: up.d_weights.map(v),
            d_context: up.d_context.map(v),
            d_hidden: up.d_hidden.map(v),
            d_queries: v(&dq),
            d_params: v(&dp),
            dm_keys: v(&dm.d_keys),
            dm_proj: v(&dm.d_proj),
        };
        backward_views(&c, cfg, &io)
    })?;
    Ok(DeviceAttentionGrads { d_queries: Some(dq), d_keys: None, d_params: dp })
}

/// The keys' and the projection's gradients from the memory's accumulated gradients `dm`.
pub(crate) fn memory_backward_on<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &S::Buf,
    memory: &DeviceAttentionMemory<S::Buf>,
    dm: &DeviceAttentionMemoryGrads<S::Buf>,
) -> Result<DeviceAttentionGrads<S::Buf>> {
    check_staged_memory(st, cfg, shape, memory)?;
    check_len("params", len(st, params), &[cfg.param_len()])?;
    check_staged_grads(st, memory, dm)?;
    device_dims(cfg, shape)?;
    let (dk, dp) = (st.out(len(st, &memory.keys))?, st.out(cfg.param_len())?);
    st.run(&mut |exec| {
        let c = Call::new(exec, cfg, shape)?;
        let v = |b: &S::Buf| st.view(b);
        memory_backward_views(&c, cfg, v(params), v(&memory.keys), (v(&dm.d_keys), v(&dm.d_proj)), (v(&dk), v(&dp)))
    })?;
    Ok(DeviceAttentionGrads { d_queries: None, d_keys: Some(dk), d_params: dp })
}

/// The memory of the sequences `rows` of `memory` (`rows[r]`: the sequence row `r` reads;
/// repeats allowed), on the target: [`AttentionMemory::gather`] of a device memory (a beam
/// search's hypotheses each attending over their own sequence's keys).
pub(crate) fn gather_on<S: Stage>(st: &S, memory: &DeviceAttentionMemory<S::Buf>, rows: &[usize]) -> Result<DeviceAttentionMemory<S::Buf>> {
    let b = memory.lengths.len();
    if let Some(i) = rows.iter().position(|&r| r >= b) {
        return Err(Error::invalid(format!("rows[{i}]"), format!("a sequence below B = {b}"), rows[i]));
    }
    let (s, r) = (memory.steps, rows.len());
    let width = |v: &S::Buf| len(st, v) / (s * b).max(1);
    let (wk, wp) = (width(&memory.keys), width(&memory.proj));
    if s.checked_mul(r).and_then(|n| n.checked_mul(wk.max(wp))).is_none_or(|n| n >= 1 << 31) {
        return Err(Error::invalid("rows", "at most as many rows as keep S·rows·width below 2^31 on the CUDA backend", r));
    }
    let (keys, proj) = (st.out(s * r * wk)?, st.out(s * r * wp)?);
    st.run(&mut |exec| {
        if r == 0 {
            return Ok(());
        }
        let index: Vec<i32> = rows.iter().map(|&x| x as i32).collect();
        let index = exec.upload_i32(&index)?;
        for (src, dst, w) in [(&memory.keys, &keys, wk), (&memory.proj, &proj, wp)] {
            if w == 0 {
                continue;
            }
            // (Each size below 2^31, checked above.)
            let args = k::AttentionGatherRowsArgs {
                steps: s as i32,
                rows: r as i32,
                batch: b as i32,
                width: w as i32,
                index: index.ptr(),
                src: st.view(src).ptr,
                dst: st.view(dst).ptr,
            };
            exec.launch_typed(0, k::AttentionGatherRows, Dtype::F32, s * r * w, &args)?;
        }
        Ok(())
    })?;
    Ok(DeviceAttentionMemory { keys, proj, steps: s, lengths: rows.iter().map(|&x| memory.lengths[x]).collect() })
}

/// A host memory on the target.
fn staged_memory<S: Stage>(st: &S, m: &AttentionMemory<f32>) -> Result<DeviceAttentionMemory<S::Buf>> {
    Ok(DeviceAttentionMemory { keys: st.up(&m.keys)?, proj: st.up(&m.proj)?, steps: m.steps, lengths: m.lengths.clone() })
}

/// A target's buffer on the host.
fn down_vec<S: Stage>(st: &S, b: &S::Buf) -> Result<Vec<f32>> {
    let mut v = vec![0.0; len(st, b)];
    st.down(b, &mut v)?;
    Ok(v)
}

/// [`AttentionBackend::attention_memory`](crate::attention::AttentionBackend::attention_memory) on `st`.
pub(crate) fn memory<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[f32],
    keys: &[f32],
) -> Result<AttentionMemory<f32>> {
    // (Checked before anything is uploaded.)
    check_len("params", params.len(), &[cfg.param_len()])?;
    check_len("keys", keys.len(), &[shape.steps(), shape.batch(), cfg.key_size()])?;
    device_dims(cfg, shape)?;
    let m = memory_on(st, cfg, shape, &st.up(params)?, &st.up(keys)?)?;
    Ok(AttentionMemory { keys: down_vec(st, &m.keys)?, proj: down_vec(st, &m.proj)?, steps: m.steps, lengths: m.lengths })
}

/// [`AttentionBackend::attention_forward_with`](crate::attention::AttentionBackend::attention_forward_with) on `st`.
pub(crate) fn forward_with<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[f32],
    memory: &AttentionMemory<f32>,
    queries: &[f32],
) -> Result<AttentionOutput<f32>> {
    check_call(cfg, shape, params, memory, queries)?;
    device_dims(cfg, shape)?;
    let o = forward_on(st, cfg, shape, &st.up(params)?, &staged_memory(st, memory)?, &st.up(queries)?)?;
    Ok(AttentionOutput { weights: down_vec(st, &o.weights)?, context: down_vec(st, &o.context)?, hidden: down_vec(st, &o.hidden)? })
}

/// [`AttentionBackend::attention_backward_with`](crate::attention::AttentionBackend::attention_backward_with) on `st`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_with<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[f32],
    memory: &AttentionMemory<f32>,
    queries: &[f32],
    out: &AttentionOutput<f32>,
    up: AttentionUpstream<'_, f32>,
    dm: &mut AttentionMemoryGrads<f32>,
) -> Result<AttentionGrads<f32>> {
    check_call(cfg, shape, params, memory, queries)?;
    check_backward(cfg, shape, out, &up)?;
    check_grads(memory, dm)?;
    device_dims(cfg, shape)?;
    let out = DeviceAttentionOutput { weights: st.up(&out.weights)?, context: st.up(&out.context)?, hidden: st.up(&out.hidden)? };
    let opt = |v: Option<&[f32]>| v.map(|v| st.up(v)).transpose();
    let (dw, dc, dh) = (opt(up.d_weights)?, opt(up.d_context)?, opt(up.d_hidden)?);
    let up = DeviceAttentionUpstream { d_weights: dw.as_ref(), d_context: dc.as_ref(), d_hidden: dh.as_ref() };
    let mut dmd = DeviceAttentionMemoryGrads { d_keys: st.up(&dm.d_keys)?, d_proj: st.up(&dm.d_proj)? };
    let (p, q) = (st.up(params)?, st.up(queries)?);
    let g = backward_on(st, cfg, shape, &p, &staged_memory(st, memory)?, &q, &out, up, &mut dmd)?;
    st.down(&dmd.d_keys, &mut dm.d_keys)?;
    st.down(&dmd.d_proj, &mut dm.d_proj)?;
    let d_queries = g.d_queries.as_ref().map(|b| down_vec(st, b)).transpose()?.unwrap_or_default();
    Ok(AttentionGrads { d_queries, d_keys: Vec::new(), d_params: down_vec(st, &g.d_params)? })
}

/// [`AttentionBackend::attention_memory_backward`](crate::attention::AttentionBackend::attention_memory_backward) on `st`.
pub(crate) fn memory_backward<S: Stage>(
    st: &S,
    cfg: &AttentionConfig,
    shape: &AttentionShape,
    params: &[f32],
    memory: &AttentionMemory<f32>,
    dm: &AttentionMemoryGrads<f32>,
) -> Result<AttentionGrads<f32>> {
    memory.check(shape)?;
    check_len("params", params.len(), &[cfg.param_len()])?;
    check_memory(cfg, shape, memory)?;
    check_grads(memory, dm)?;
    device_dims(cfg, shape)?;
    let dmd = DeviceAttentionMemoryGrads { d_keys: st.up(&dm.d_keys)?, d_proj: st.up(&dm.d_proj)? };
    let g = memory_backward_on(st, cfg, shape, &st.up(params)?, &staged_memory(st, memory)?, &dmd)?;
    let d_keys = g.d_keys.as_ref().map(|b| down_vec(st, b)).transpose()?.unwrap_or_default();
    Ok(AttentionGrads { d_queries: Vec::new(), d_keys, d_params: down_vec(st, &g.d_params)? })
}
