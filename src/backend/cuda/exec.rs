//! How the driver issues work: [`Exec`], the execution context of one backend call (its
//! storage type and path switches), on a [`Target`]: the device (`device.rs`: cuBLAS and the
//! PTX kernels on two streams) or, in the unit tests on machines without a GPU, the host
//! emulation (`emulation.rs`). The target is the one seam between the two: everything here is
//! the same code for both.

use super::buffer::{DevBuf, DevMat, RawBuf, View};
use super::driver::{MaskViews, SiteHits};
use super::kernels::{
    Add, AddArgs, AddColumnSums, AddColumnSumsArgs, ConvertArgs, ConvertFromF32, ConvertToF32, Dropout as DropoutKernel, DropoutArgs, Fill,
    FillArgs, Kernel, KernelArgs, KernelId, SwapAxes, SwapAxesArgs, VariationalDropout as VariationalDropoutKernel, VariationalDropoutArgs,
    PERSISTENT_MAX_BATCH, PERSISTENT_THREADS,
};
use crate::backend::host::dropout::Dropout;
use crate::backend::host::variational_dropout::VariationalDropout;
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::masks::MaskStream;
use crate::shape::SeqShape;
use cudarc::driver::LaunchConfig;
use std::ops::Range;

/// An error of a device operation (`op`) on backend `backend` (`cuda:N`).
pub(crate) fn device_err(backend: &str, op: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device { backend: backend.to_string(), op: op.to_string(), message: format!("{e:?}") }
}

/// Where the work of a call runs: the device, or the host emulation of the unit tests. Stream
/// `si` is 0 or 1; every address is a [`View`]'s, checked against its buffer by the caller.
pub(crate) trait Target {
    /// `n` elements of `ty`, uninitialised (every use writes before it reads).
    fn alloc(&self, ty: Dtype, n: usize) -> Result<DevBuf>;
    /// A copy of `values`.
    fn upload_i32(&self, values: &[i32]) -> Result<RawBuf>;
    /// The column-major GEMM `g` with operands of type `ab` and result of type `c` (all f32:
    /// cublasSgemm; else cublasGemmEx with f32 compute).
    fn gemm(&self, si: usize, g: &GemmArgs, ab: Dtype, c: Dtype, alpha: f32, beta: f32) -> Result<()>;
    /// `count` f32 GEMMs `g`, the `i`-th with its operands `a`, `b`, `c` `i·strides[0..3]`
    /// elements after `g`'s (cublasSgemmStridedBatched).
    fn gemm_batched(&self, si: usize, g: &GemmArgs, strides: [usize; 3], count: usize, alpha: f32, beta: f32) -> Result<()>;
    /// The entry of `kernel` for storage type `ty`, with `args` (the kernel's argument struct).
    fn launch(&self, si: usize, kernel: KernelId, ty: Dtype, cfg: LaunchConfig, args: &dyn KernelArgs) -> Result<()>;
    /// `bytes` bytes from `src` to `dst`.
    fn copy(&self, si: usize, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Stream `to` waits for the work enqueued so far on stream `from`.
    fn order(&self, to: usize, from: usize) -> Result<()>;
    /// Marks the work enqueued so far on stream `si`.
    fn record(&self, si: usize) -> Result<Event>;
    /// Stream `si` waits for the work `e` marks.
    fn wait(&self, si: usize, e: &Event) -> Result<()>;
    /// Units per block if persistent kernel `kernel` runs a layer-direction of `h` units with
    /// `dirs` directions, its dynamic shared memory for `U` units being `smem(U)`; `None` when
    /// it cannot (no cooperative launch, too little shared memory, blocks not co-resident).
    fn persistent_units(&self, kernel: KernelId, h: usize, dirs: usize, smem: &dyn Fn(usize) -> usize) -> Option<usize>;
}

/// A point in one stream's work that another stream can wait for ([`Exec::record`],
/// [`Exec::wait`]); none on the host emulation, which runs every stream's work in issue order.
pub(crate) struct Event(pub Option<cudarc::driver::CudaEvent>);

/// Which paths a call may take: the persistent kernels and the layer wavefront (see
/// [`Cuda`](super::Cuda)'s switches).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paths {
    /// The persistent kernels may be chosen where they fit.
    pub persistent: bool,
    /// Every layer-direction must take a persistent kernel (an error otherwise).
    pub persistent_required: bool,
    /// A unidirectional stack's layers may overlap (the layer wavefront of `driver/wavefront.rs`).
    pub wavefront: bool,
    /// The wavefront's chunk of steps; 0: chosen by the driver.
    pub wavefront_chunk: usize,
}

impl Default for Paths {
    fn default() -> Self {
        Paths { persistent: false, persistent_required: false, wavefront: true, wavefront_chunk: 0 }
    }
}

/// The execution context of one backend call: its target, its storage type (f32, f16 or bf16:
/// which entries the cell kernels run), the paths it may take, and the device copies of the
/// masks its caller supplied (`driver/masks.rs`; empty for drawn masks).
pub(crate) struct Exec<'a> {
    target: &'a dyn Target,
    storage: Dtype,
    paths: Paths,
    masks: MaskViews,
}

/// Threads per block of the grid-stride kernels (and of the row kernels, a multiple of 32).
pub(crate) const BLOCK: u32 = 256;

/// The launch of a grid-stride kernel over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    // Any grid is correct; 8192 blocks of 256 fill any current GPU.
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 8192) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// The arguments of the column-major GEMM call (`cublasSgemm`, `cublasGemmEx`) that computes
/// the row-major `C = alpha·op(A)·op(B) + beta·C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmArgs {
    pub transa: bool,
    pub transb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub a: u64,
    pub lda: i32,
    pub b: u64,
    pub ldb: i32,
    pub c: u64,
    pub ldc: i32,
}

impl GemmArgs {
    /// `None` when there is nothing to do (an empty `C`, or `k = 0` with `beta = 1`).
    ///
    /// Row-major `C = op(A)·op(B)` is column-major `C^T = op(B)^T·op(A)^T`: swap the operands.
    /// A row-major `[r, c]` matrix read column-major with leading dimension `c` (its row
    /// stride `ld`, for a block of columns of a wider matrix) is its transpose, so each operand
    /// keeps its own transpose flag.
    #[track_caller]
    pub fn new(a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Option<GemmArgs> {
        let (m, k, n) = (a.lrows(), a.lcols(), b.lcols());
        assert!(b.lrows() == k && c.rows == m && c.cols == n && !c.t, "gemm shapes: {a:?} {b:?} {c:?}");
        if m == 0 || n == 0 || (k == 0 && beta == 1.0) {
            return None;
        }
        assert!(k > 0, "a gemm with k = 0 must accumulate");
        let ld = |x: &DevMat| x.ld.max(1) as i32;
        Some(GemmArgs {
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

impl<'a> Exec<'a> {
    /// A call on `target`: f32 storage, the persistent kernels off, the wavefront on.
    pub fn new(target: &'a dyn Target) -> Self {
        Exec { target, storage: Dtype::F32, paths: Paths::default(), masks: MaskViews::default() }
    }

    /// The same call reading the supplied masks `masks` (their device copies, uploaded by
    /// `driver/masks.rs`).
    pub fn with_masks(&self, masks: MaskViews) -> Exec<'a> {
        Exec { target: self.target, storage: self.storage, paths: self.paths, masks }
    }

    /// The bits a mask kernel of `stream`'s site `tag` reads: none (drawn: the kernel draws with
    /// Philox) for a drawn stream; for supplied masks their device copy, an error naming `masks`
    /// when it was not uploaded (a kernel must never draw a supplied stream's masks from its
    /// `[0, 0]` key).
    pub fn hits(&self, stream: &MaskStream, tag: u32) -> Result<SiteHits> {
        if stream.supplied_masks().is_none() {
            return Ok(SiteHits::DRAWN);
        }
        self.masks.get(tag).ok_or_else(|| {
            Error::invalid("masks", format!("supplied masks of the site of tag {tag} uploaded for the call"), "none on the device")
        })
    }

    /// Runs the 16-bit entries of the cell kernels (`ty` F16 or BF16) or the f32 ones.
    pub fn with_storage(mut self, ty: Dtype) -> Self {
        debug_assert!(matches!(ty, Dtype::F32 | Dtype::F16 | Dtype::BF16));
        self.storage = ty;
        self
    }

    /// The paths the call may take.
    pub fn with_paths(mut self, paths: Paths) -> Self {
        self.paths = paths;
        self
    }

    /// The storage type.
    pub fn storage(&self) -> Dtype {
        self.storage
    }

    /// The paths the call may take.
    pub fn paths(&self) -> Paths {
        self.paths
    }

    /// Units per block if persistent kernel `kernel` runs a layer-direction of `h` units, batch
    /// `b`, `dirs` directions: allowed, f32 storage (the persistent kernels are f32 only),
    /// `B ≤ 8`, and the target's conditions (cooperative launch, every block of all directions
    /// resident at once with its slice of `W_hh` in shared memory: one block per SM and
    /// direction, `U = ceil(h / (SMs / dirs))`). On the host emulation every emulated kernel
    /// takes it with one block owning all `h` units.
    pub fn persistent_units(&self, kernel: KernelId, h: usize, b: usize, dirs: usize) -> Option<usize> {
        if !self.paths.persistent || b > PERSISTENT_MAX_BATCH || h == 0 || dirs == 0 || self.storage != Dtype::F32 {
            return None;
        }
        self.target.persistent_units(kernel, h, dirs, &|u| kernel.persistent_smem(h, b, u))
    }

    /// `n` elements of `ty` (uninitialised: every use writes before it reads).
    pub fn alloc(&self, ty: Dtype, n: usize) -> Result<DevBuf> {
        self.target.alloc(ty, n)
    }

    /// Fits `slot` to `n` elements of `ty` (reallocating only when the size or type changes)
    /// and returns its view; `n = 0` empties it.
    pub fn fit(&self, slot: &mut Option<DevBuf>, ty: Dtype, n: usize) -> Result<View> {
        if n == 0 {
            *slot = None;
            return Ok(View::NULL);
        }
        if slot.as_ref().map(|s| (s.ty(), s.len())) != Some((ty, n)) {
            *slot = Some(self.alloc(ty, n)?);
        }
        Ok(slot.as_ref().expect("just set").view())
    }

    /// Lengths of `shape` as `[B]` i32.
    pub fn lengths(&self, shape: &SeqShape) -> Result<RawBuf> {
        let lens: Vec<i32> = (0..shape.batch()).map(|b| shape.length(b) as i32).collect();
        self.target.upload_i32(&lens)
    }

    /// `values` as an i32 buffer on the target (the attention's encoder lengths).
    pub fn upload_i32(&self, values: &[i32]) -> Result<RawBuf> {
        self.target.upload_i32(values)
    }

    /// Stream `to` waits for the work enqueued so far on stream `from`.
    pub fn order(&self, to: usize, from: usize) -> Result<()> {
        self.target.order(to, from)
    }

    /// Marks the work enqueued so far on stream `si`, for [`wait`](Self::wait). One event per
    /// mark, destroyed when the `Event` is dropped (CUDA defers that until it has completed).
    pub fn record(&self, si: usize) -> Result<Event> {
        self.target.record(si)
    }

    /// Stream `si` waits (on the device, not the host) for the work `e` marks.
    pub fn wait(&self, si: usize, e: &Event) -> Result<()> {
        self.target.wait(si, e)
    }

    /// `c = alpha·a·b + beta·c` (row-major, `a`, `b` possibly transposed) on stream `si`.
    /// All f32: cublasSgemm. Otherwise `a` and `b` are both 16-bit (f16 or bf16, the same) and
    /// `c` is f32 or of their type: cublasGemmEx with f32 compute (tensor cores allowed), which
    /// reads `c` to f32 when `beta ≠ 0` and rounds the result once when `c` is 16-bit.
    pub fn gemm(&self, si: usize, alpha: f32, a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Result<()> {
        let f32s = (a.ty, b.ty, c.ty) == (Dtype::F32, Dtype::F32, Dtype::F32);
        assert!(
            f32s || (a.ty == b.ty && a.ty != Dtype::F32 && (c.ty == Dtype::F32 || c.ty == a.ty)),
            "gemm types {:?} {:?} {:?}",
            a.ty,
            b.ty,
            c.ty
        );
        let Some(g) = GemmArgs::new(a, b, beta, c) else { return Ok(()) };
        self.target.gemm(si, &g, a.ty, c.ty, alpha, beta)
    }

    /// `count` f32 products `C_i = A_i·B_i + beta·C_i` on stream `si`, one strided-batched GEMM:
    /// each operand `(X_0, s)` the first matrix and the elements from one matrix to the next.
    /// The caller has checked that the last matrix of each lies in its buffer, and that the
    /// `C_i` do not overlap.
    pub fn gemm_batched(
        &self,
        si: usize,
        count: usize,
        a: (DevMat, usize),
        b: (DevMat, usize),
        beta: f32,
        c: (DevMat, usize),
    ) -> Result<()> {
        let ((a, sa), (b, sb), (c, sc)) = (a, b, c);
        assert!((a.ty, b.ty, c.ty) == (Dtype::F32, Dtype::F32, Dtype::F32), "gemm_batched: f32 operands");
        let Some(g) = GemmArgs::new(a, b, beta, c) else { return Ok(()) };
        if count == 0 {
            return Ok(());
        }
        // GemmArgs swaps the operands (row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ).
        self.target.gemm_batched(si, &g, [sb, sa, sc], count, 1.0, beta)
    }

    /// `v = value` (rounded once to `v`'s type) on stream `si`.
    pub fn fill(&self, si: usize, v: View, value: f32) -> Result<()> {
        if v.len == 0 {
            return Ok(());
        }
        self.launch_as(si, Fill, v.ty, grid(v.len), &FillArgs { n: v.len as i64, value, p: v.ptr })
    }

    /// `dst[b, a, :] = src[a, b, :]` on stream `si`: `src` `[na, nb, w]`, `dst` `[nb, na, w]`, of
    /// the same type (a batch-first tensor to time-major, or back).
    pub fn swap_axes(&self, si: usize, dst: View, src: View, na: usize, nb: usize, w: usize) -> Result<()> {
        assert!(dst.len == na * nb * w && src.len == dst.len && dst.ty == src.ty, "swap_axes");
        if dst.len == 0 {
            return Ok(());
        }
        let args = SwapAxesArgs { na: na as i32, nb: nb as i32, w: w as i64, src: src.ptr, dst: dst.ptr };
        self.launch_as(si, SwapAxes, dst.ty, grid(dst.len), &args)
    }

    /// `dst += src` (same length and type) on stream `si`, in f32, rounded once to the type.
    pub fn add(&self, si: usize, dst: View, src: View) -> Result<()> {
        assert!(dst.len == src.len && dst.ty == src.ty, "add");
        if dst.len == 0 {
            return Ok(());
        }
        self.launch_as(si, Add, dst.ty, grid(dst.len), &AddArgs { n: dst.len as i64, src: src.ptr, dst: dst.ptr })
    }

    /// Dropout between layers on stream `si`: the rows of the steps `steps` of `data` (`[T, B,
    /// width]`, the output of layer `layer` or the gradient handed down to it) multiplied in
    /// place by the factors of `dropout`'s masks at those steps (kernels/dropout.cu; the host's
    /// `Dropout::apply`). The factors depend on the absolute step only, so dropping `0..T` at
    /// once or chunk by chunk (the layer wavefront) gives the same bits.
    #[allow(clippy::too_many_arguments)]
    pub fn dropout(
        &self,
        si: usize,
        data: View,
        steps: Range<usize>,
        batch: usize,
        width: usize,
        dropout: &Dropout,
        layer: usize,
    ) -> Result<()> {
        let row = batch * width;
        assert!(data.len.is_multiple_of(row.max(1)) && steps.end * row <= data.len, "dropout");
        if steps.is_empty() || row == 0 {
            return Ok(());
        }
        let rows = data.at(steps.start * row, steps.len() * row);
        let fits = |n: usize, what: &str| i32::try_from(n).map_err(|_| crate::Error::invalid(what, "below 2^31", n));
        let [key0, key1] = dropout.drawn().key();
        let tag = dropout.tag(layer)?;
        let hits = self.hits(dropout.drawn().stream(), tag)?;
        let args = DropoutArgs {
            // The sequence's step: a stream continuing a sequence (MaskStream::from_step)
            // numbers the call's steps from its first.
            first_step: fits(steps.start + dropout.drawn().first_step(), "first step")?,
            steps: fits(steps.len(), "steps")?,
            batch: fits(batch, "batch")?,
            width: fits(width, "width")?,
            key0: key0 as i32,
            key1: key1 as i32,
            tag: tag as i32,
            bound: dropout.drawn().bound() as i64,
            scale: dropout.drawn().scale_f32(),
            data: rows.ptr,
            hits: hits.ptr,
            hits_step0: hits.step0,
            hits_words: hits.words,
        };
        self.launch_as(si, DropoutKernel, data.ty, grid(steps.len() * batch * width.div_ceil(4)), &args)
    }

    /// Variational dropout on stream `si` (kernels/dropout.cu, `variational_dropout_*`): `out[r]
    /// (+)= input[r] ⊙ f[r mod batch]` for the rows of `input` (`[rows, width]`, steps of `batch`
    /// rows; `out` the same size and type, possibly the same buffer), `f` the factors of `vd`'s
    /// mask of layer `layer`, direction `direction` (the host's
    /// `VariationalDropout::factors`).
    #[allow(clippy::too_many_arguments)]
    pub fn variational_dropout(
        &self,
        si: usize,
        input: View,
        out: View,
        batch: usize,
        width: usize,
        vd: &VariationalDropout,
        (layer, direction): (usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        assert!(input.len == out.len && input.ty == out.ty && input.len.is_multiple_of((batch * width).max(1)), "variational_dropout");
        if input.len == 0 {
            return Ok(());
        }
        let fits = |n: usize, what: &str| i32::try_from(n).map_err(|_| crate::Error::invalid(what, "below 2^31", n));
        let [key0, key1] = vd.drawn().key();
        let tag = vd.tag(layer, direction)?;
        let hits = self.hits(vd.drawn().stream(), tag)?;
        let args = VariationalDropoutArgs {
            rows: fits(input.len / width, "rows")?,
            batch: fits(batch, "batch")?,
            width: fits(width, "width")?,
            key0: key0 as i32,
            key1: key1 as i32,
            tag: tag as i32,
            bound: vd.drawn().bound() as i64,
            scale: vd.drawn().scale_f32(),
            accumulate: accumulate as i32,
            input: input.ptr,
            out: out.ptr,
            hits: hits.ptr,
            hits_words: hits.words,
        };
        self.launch_as(si, VariationalDropoutKernel, input.ty, grid(input.len / width * width.div_ceil(4)), &args)
    }

    /// `dst[j] += Σ_i src[i, j]` on stream `si`: the column sums of the f32 matrix `src`
    /// `[rows, dst.len]`, rows summed in order (kernels/util.cu, `add_column_sums_f32`).
    pub fn add_column_sums(&self, si: usize, src: View, rows: usize, dst: View) -> Result<()> {
        assert!(src.ty == Dtype::F32 && dst.ty == Dtype::F32 && src.len == rows * dst.len, "add_column_sums");
        if dst.len == 0 {
            return Ok(());
        }
        let args = AddColumnSumsArgs { rows: rows as i32, cols: dst.len as i32, src: src.ptr, dst: dst.ptr };
        self.launch_as(si, AddColumnSums, Dtype::F32, grid(dst.len), &args)
    }

    /// `dst = src` (same length) on stream `si`; between f32 and 16-bit views, converted
    /// (exactly to f32, rounded once from it).
    pub fn copy(&self, si: usize, dst: View, src: View) -> Result<()> {
        assert_eq!(dst.len, src.len);
        if dst.len == 0 {
            return Ok(());
        }
        let args = ConvertArgs { n: dst.len as i64, src: src.ptr, dst: dst.ptr };
        match (src.ty, dst.ty) {
            (s, d) if s == d => self.target.copy(si, dst.ptr, src.ptr, dst.len * dst.ty.size()),
            (s, Dtype::F32) => self.launch_as(si, ConvertToF32, s, grid(dst.len), &args),
            (Dtype::F32, d) => self.launch_as(si, ConvertFromF32, d, grid(dst.len), &args),
            (s, d) => panic!("copy from {s:?} to {d:?}"),
        }
    }

    /// `dst = src`, or zeros when `src` is `None`.
    pub fn copy_or_zero(&self, si: usize, dst: View, src: Option<View>) -> Result<()> {
        match src {
            Some(s) => self.copy(si, dst, s),
            None => self.fill(si, dst, 0.0),
        }
    }

    /// Grid-stride kernel `k` over `n` elements on stream `si`, the entry of the call's storage
    /// type.
    pub fn launch<A: KernelArgs>(&self, si: usize, k: Kernel<A>, n: usize, args: &A) -> Result<()> {
        debug_assert!(!k.id.persistent());
        self.launch_as(si, k, self.storage, grid(n), args)
    }

    /// Row kernel `k` (a block per row: kernels/layer_norm.cu) over `rows` rows on stream `si`,
    /// the entry of storage type `ty`: a grid-stride launch of `rows` blocks (at most 8192, the
    /// kernels stride over the rest) of [`BLOCK`] threads.
    pub fn launch_rows<A: KernelArgs>(&self, si: usize, k: Kernel<A>, ty: Dtype, rows: usize, args: &A) -> Result<()> {
        debug_assert!(!k.id.persistent());
        if rows == 0 {
            return Ok(());
        }
        self.launch_as(si, k, ty, grid(rows * BLOCK as usize), args)
    }

    /// Grid-stride kernel `k` over `n` elements on stream `si`, the entry of type `ty` (an f32
    /// operand whatever the call's storage type).
    pub fn launch_typed<A: KernelArgs>(&self, si: usize, k: Kernel<A>, ty: Dtype, n: usize, args: &A) -> Result<()> {
        debug_assert!(!k.id.persistent());
        self.launch_as(si, k, ty, grid(n), args)
    }

    /// Persistent kernel `k` (f32) on stream `si`: a cooperative launch of `ceil(h / units)`
    /// blocks of [`PERSISTENT_THREADS`] with the kernel's dynamic shared memory for `units`
    /// units per block and batch `b`.
    pub fn launch_persistent<A: KernelArgs>(&self, si: usize, k: Kernel<A>, h: usize, b: usize, units: usize, args: &A) -> Result<()> {
        debug_assert!(k.id.persistent());
        let cfg = LaunchConfig {
            grid_dim: (h.div_ceil(units) as u32, 1, 1),
            block_dim: (PERSISTENT_THREADS, 1, 1),
            shared_mem_bytes: k.id.persistent_smem(h, b, units) as u32,
        };
        self.launch_as(si, k, Dtype::F32, cfg, args)
    }

    fn launch_as<A: KernelArgs>(&self, si: usize, k: Kernel<A>, ty: Dtype, cfg: LaunchConfig, args: &A) -> Result<()> {
        self.target.launch(si, k.id, ty, cfg, args)
    }
}

impl KernelId {
    /// The dynamic shared memory of a persistent kernel for `h` units, batch `b` and `u` units
    /// per block, in bytes (0 for the other kernels).
    pub fn persistent_smem(self, h: usize, b: usize, u: usize) -> usize {
        use super::kernels::{persistent_backward_smem, persistent_cell_smem, persistent_smem};
        use KernelId as K;
        match self {
            K::PersistentLstmForward => persistent_smem(h, b, u),
            K::PersistentGruForward => persistent_cell_smem(3, h, b, u),
            K::PersistentRnnTanhForward | K::PersistentRnnReluForward => persistent_cell_smem(1, h, b, u),
            K::PersistentLstmBackward => persistent_backward_smem(4, h, b, u),
            K::PersistentGruBackward => persistent_backward_smem(3, h, b, u),
            K::PersistentRnnTanhBackward | K::PersistentRnnReluBackward => persistent_backward_smem(1, h, b, u),
            _ => 0,
        }
    }
}

/// Units per block and dynamic shared memory per block (bytes) of a persistent kernel whose
/// shared memory for `U` units is `smem(U)`, for `h` units and `dirs` directions on a device
/// of `sms` SMs whose blocks may use `max_smem` bytes: one block per SM and direction,
/// `U = ceil(h / (sms / dirs))`. `None` when the `W_hh` slice does not fit (the occupancy
/// check is the device's).
pub(crate) fn persistent_shape(
    smem: &dyn Fn(usize) -> usize,
    h: usize,
    dirs: usize,
    sms: usize,
    max_smem: usize,
) -> Option<(usize, usize)> {
    if sms == 0 || h == 0 {
        return None;
    }
    let units = h.div_ceil((sms / dirs).max(1));
    let smem = smem(units);
    (smem <= max_smem).then_some((units, smem))
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{persistent_backward_smem, persistent_smem};
    use super::*;

    /// The persistent kernels' sizes on the benchmark's small-batch rows (benches/compare.py
    /// `--configs cuda`), for an H100 (132 SMs, 227 KiB per block) and an A100 (108 SMs,
    /// 163 KiB): the rows that must take them fit, with the shared memory the .cu headers state.
    #[test]
    fn persistent_shapes_of_the_benchmark_rows() {
        use KernelId::*;
        let (h100, a100) = ((132, 227 * 1024), (108, 163 * 1024));
        let shape = |k: KernelId, h: usize, b: usize, dirs: usize, (sms, max): (usize, usize)| {
            persistent_shape(&|u| k.persistent_smem(h, b, u), h, dirs, sms, max)
        };
        // gru-1024-1024-4-1500: U = 8, 128 blocks, 4·(3·8·1024 + 4·1024) = 112 KiB.
        assert_eq!(shape(PersistentGruForward, 1024, 4, 1, h100), Some((8, 112 * 1024)));
        assert_eq!(shape(PersistentGruForward, 1024, 4, 1, a100), Some((10, 136 * 1024)));
        // Bidirectional: U = 16, 208 KiB; at B = 8 still within 227 KiB; not on an A100.
        assert_eq!(shape(PersistentGruForward, 1024, 4, 2, h100), Some((16, 208 * 1024)));
        assert!(shape(PersistentGruForward, 1024, 8, 2, h100).is_some());
        assert!(shape(PersistentGruForward, 1024, 4, 2, a100).is_none());
        // lstm-256-256-1-150: U = 2.
        assert_eq!(shape(PersistentLstmForward, 256, 1, 1, h100).map(|s| s.0), Some(2));
        // The RNN up to H = 4096 on an H100 (U = 32: 4·(32·4096 + 8·4096) = 640 KiB does not fit).
        assert!(shape(PersistentRnnReluForward, 1760, 8, 1, h100).is_some());
        assert!(shape(PersistentRnnTanhForward, 4096, 8, 1, h100).is_none());
    }

    /// The persistent backward's shared memory on the same rows: `U` is the forward's, and the
    /// extra `3·B·U` floats keep the GRU rows within an H100's 227 KiB (an LSTM's backward needs
    /// less than its forward: no pre-activation buffer).
    #[test]
    fn persistent_backward_smem_of_the_benchmark_rows() {
        let limit = 227 * 1024;
        // gru-1024-1024-4-1500: U = 8: 4·(3·8·1024 + 4·1024 + 3·4·8) = 115,072 B.
        assert_eq!(persistent_backward_smem(3, 1024, 4, 8), 115_072);
        // Bidirectional U = 16, at B = 4 and at B = 8 (225.5 KiB).
        assert!(persistent_backward_smem(3, 1024, 4, 16) <= limit);
        assert_eq!(persistent_backward_smem(3, 1024, 8, 16), 230_912);
        assert!(persistent_backward_smem(3, 1024, 8, 16) <= limit);
        // lstm-256-256-1-150: U = 2.
        assert!(persistent_backward_smem(4, 256, 1, 2) < persistent_smem(256, 1, 2));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn views_are_bounds_checked() {
        let v = View { ptr: 4096, len: 10, ty: Dtype::F32 };
        assert_eq!(v.at(4, 6).ptr, 4096 + 16);
        assert_eq!(v.strided(2, 3, 3, 2).len, 8);
        let _ = v.at(5, 6);
    }
}
