//! How the driver issues work: [`Call`], on the device (cuBLAS and the PTX kernels on two
//! streams), or — in the unit tests, on machines without a GPU — emulated on the host with the
//! same kernels compiled as C++ (see build.rs and `kernels/common.cuh`), a host sgemm with
//! cuBLAS's exact argument conventions, and memory filled with NaN when allocated, so that a
//! read before a write shows.

use super::buffer::{DevMat, View};
use super::device::{device_err, Device};
use crate::config::CellKind;
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::shape::SeqShape;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Memory the driver computes in: device memory, or host memory standing in for it in the
/// host-emulation tests.
pub(crate) enum Mem<T> {
    Dev(CudaSlice<T>),
    #[cfg(all(test, rnn_kernels_host_emulation))]
    Host(Vec<T>),
}

impl<T> Mem<T> {
    pub fn len(&self) -> usize {
        match self {
            Mem::Dev(s) => s.len(),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            Mem::Host(v) => v.len(),
        }
    }
}

impl<T> std::fmt::Debug for Mem<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mem({} elements)", self.len())
    }
}

/// Every kernel of `kernels/*.cu`, by its f32 entry; the kernels of [`HALF_KERNELS`] also
/// have 16-bit entries, which a launch picks by the element type (the call's storage type, or
/// the view's for fill and the conversions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    LstmForwardStep,
    LstmProjectionFinish,
    LstmProjectionBackwardPrepare,
    LstmBackwardStep,
    GruForwardStep,
    GruBackwardStep,
    RnnTanhForwardStep,
    RnnReluForwardStep,
    RnnTanhBackwardStep,
    RnnReluBackwardStep,
    FillF32,
    PersistentLstmForward,
    PersistentGruForward,
    PersistentRnnTanhForward,
    PersistentRnnReluForward,
    PersistentLstmBackward,
    PersistentGruBackward,
    PersistentRnnTanhBackward,
    PersistentRnnReluBackward,
    /// 16-bit storage to f32 (kernels/util.cu `convert_{f16,bf16}_to_f32`; no f32 entry).
    ConvertToF32,
    /// f32 to 16-bit storage (kernels/util.cu `convert_f32_to_{f16,bf16}`; no f32 entry).
    ConvertFromF32,
}

/// The kernels with 16-bit entries: the kernel, its file in `kernels/`, its f16 and bf16
/// entries (`Kernels::half` of device.rs holds them in this order).
pub(crate) const HALF_KERNELS: [(Kernel, &str, &str, &str); 13] = [
    (Kernel::LstmForwardStep, "lstm_pointwise", "lstm_forward_step_f16", "lstm_forward_step_bf16"),
    (Kernel::LstmProjectionFinish, "lstm_pointwise", "lstm_projection_finish_f16", "lstm_projection_finish_bf16"),
    (
        Kernel::LstmProjectionBackwardPrepare,
        "lstm_pointwise",
        "lstm_projection_backward_prepare_f16",
        "lstm_projection_backward_prepare_bf16",
    ),
    (Kernel::LstmBackwardStep, "lstm_pointwise", "lstm_backward_step_f16", "lstm_backward_step_bf16"),
    (Kernel::GruForwardStep, "gru_pointwise", "gru_forward_step_f16", "gru_forward_step_bf16"),
    (Kernel::GruBackwardStep, "gru_pointwise", "gru_backward_step_f16", "gru_backward_step_bf16"),
    (Kernel::RnnTanhForwardStep, "rnn_pointwise", "rnn_tanh_forward_step_f16", "rnn_tanh_forward_step_bf16"),
    (Kernel::RnnReluForwardStep, "rnn_pointwise", "rnn_relu_forward_step_f16", "rnn_relu_forward_step_bf16"),
    (Kernel::RnnTanhBackwardStep, "rnn_pointwise", "rnn_tanh_backward_step_f16", "rnn_tanh_backward_step_bf16"),
    (Kernel::RnnReluBackwardStep, "rnn_pointwise", "rnn_relu_backward_step_f16", "rnn_relu_backward_step_bf16"),
    (Kernel::FillF32, "util", "fill_f16", "fill_bf16"),
    (Kernel::ConvertToF32, "util", "convert_f16_to_f32", "convert_bf16_to_f32"),
    (Kernel::ConvertFromF32, "util", "convert_f32_to_f16", "convert_f32_to_bf16"),
];

/// The f32 value whose two 16-bit halves are each a NaN in f16 and in bf16 (and which is a NaN
/// itself): what the host emulation fills fresh 16-bit memory with.
#[cfg(all(test, rnn_kernels_host_emulation))]
const NAN_16X2: u32 = 0x7fc0_7fc0;

/// A kernel argument: C `int`, `long long`, `float`, or a pointer (a device address).
#[derive(Debug, Clone, Copy)]
pub(crate) enum A {
    I(i32),
    L(i64),
    F(f32),
    P(u64),
}

impl From<i32> for A {
    fn from(v: i32) -> A {
        A::I(v)
    }
}
impl From<i64> for A {
    fn from(v: i64) -> A {
        A::L(v)
    }
}
impl From<f32> for A {
    fn from(v: f32) -> A {
        A::F(v)
    }
}
impl From<u64> for A {
    fn from(v: u64) -> A {
        A::P(v)
    }
}

/// `[A; N]` from a list of values.
macro_rules! args {
    ($($e:expr),* $(,)?) => { [$($crate::backend::cuda::exec::A::from($e)),*] };
}
pub(crate) use args;

/// The arguments of the column-major `cublasSgemm` call that computes the row-major
/// `C = alpha·op(A)·op(B) + beta·C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SgemmArgs {
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

impl SgemmArgs {
    /// `None` when there is nothing to do (an empty `C`, or `k = 0` with `beta = 1`).
    ///
    /// Row-major `C = op(A)·op(B)` is column-major `C^T = op(B)^T·op(A)^T`: swap the operands.
    /// A row-major `[r, c]` matrix read column-major with leading dimension `c` is its
    /// transpose, so each operand keeps its own transpose flag.
    #[track_caller]
    pub fn new(a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Option<SgemmArgs> {
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

/// Where a call's work goes.
enum On<'a> {
    /// The device, with its call lock held.
    Dev { dev: &'a Device, _lock: std::sync::MutexGuard<'a, ()> },
    /// The host emulation (unit tests).
    #[cfg(all(test, rnn_kernels_host_emulation))]
    Host,
}

/// The work of one backend call.
pub(crate) struct Call<'a> {
    on: On<'a>,
    /// The storage type (f32, f16 or bf16) of the weights, inputs, outputs and states: which
    /// entries the cell kernels run.
    st: Dtype,
    /// Whether the persistent kernel may be chosen.
    persistent: bool,
    /// Whether every layer-direction must take a persistent kernel (an error otherwise).
    persistent_required: bool,
    /// Whether a unidirectional stack's layers may overlap (the layer wavefront of driver.rs).
    wavefront: bool,
    /// The wavefront's chunk of steps; 0: chosen by the driver.
    wavefront_chunk: usize,
    /// The host emulation's record of the work issued, in order: `(stream, kernel)`, `None` for
    /// a GEMM. The emulation runs every stream's work in issue order, so only this shows on
    /// which stream the driver put each piece (a wrong stream races on a device).
    #[cfg(all(test, rnn_kernels_host_emulation))]
    pub issued: std::cell::RefCell<Vec<(usize, Option<Kernel>)>>,
    /// The host emulation's fault injection: the kernel or GEMM issued when `issued` has this
    /// many entries fails (an error path, as a failed launch on a device).
    #[cfg(all(test, rnn_kernels_host_emulation))]
    pub fail_at: std::cell::Cell<Option<usize>>,
    /// With [`fail_at`](Self::fail_at): the injected failure is a panic (a bug in the driver)
    /// instead of an error.
    #[cfg(all(test, rnn_kernels_host_emulation))]
    pub fail_panics: std::cell::Cell<bool>,
    /// The host emulation's record of the fork state: stream 1 was ordered after stream 0
    /// ([`order`](Self::order)`(1, 0)`) and stream 0 has not been ordered after it since.
    #[cfg(all(test, rnn_kernels_host_emulation))]
    pub forked: std::cell::Cell<bool>,
}

/// A point in one stream's work that another stream can wait for ([`Call::record`],
/// [`Call::wait`]). Nothing on the host emulation, which runs every stream's work in issue order.
pub(crate) struct Event(Option<cudarc::driver::CudaEvent>);

/// The largest batch the persistent kernels take (`PERSISTENT_MAX_BATCH` of
/// kernels/persistent_lstm.cu and kernels/persistent_cell.cu).
pub(crate) const PERSISTENT_MAX_BATCH: usize = 8;
/// Threads per block of the persistent kernels (their `__launch_bounds__`).
pub(crate) const PERSISTENT_THREADS: u32 = 256;

const BLOCK: u32 = 256;

/// The launch of a grid-stride kernel over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    // Any grid is correct; 8192 blocks of 256 fill any current GPU.
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 8192) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

impl<'a> Call<'a> {
    /// A call on `dev`: takes the device's call lock and binds its context to this thread.
    pub fn new(dev: &'a Device) -> Result<Self> {
        let lock = dev.call.lock().unwrap_or_else(|p| p.into_inner());
        dev.ctx.bind_to_thread().map_err(|e| device_err(&dev.name, "binding the context", e))?;
        Ok(Call {
            on: On::Dev { dev, _lock: lock },
            st: Dtype::F32,
            persistent: false,
            persistent_required: false,
            wavefront: true,
            wavefront_chunk: 0,
            #[cfg(all(test, rnn_kernels_host_emulation))]
            issued: Default::default(),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            fail_at: Default::default(),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            fail_panics: Default::default(),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            forked: Default::default(),
        })
    }

    /// A call emulated on the host.
    #[cfg(all(test, rnn_kernels_host_emulation))]
    pub fn host() -> Call<'static> {
        Call {
            on: On::Host,
            st: Dtype::F32,
            persistent: false,
            persistent_required: false,
            wavefront: true,
            wavefront_chunk: 0,
            issued: Default::default(),
            fail_at: Default::default(),
            fail_panics: Default::default(),
            forked: Default::default(),
        }
    }

    /// Runs the 16-bit entries of the cell kernels (`ty` F16 or BF16) or the f32 ones.
    pub fn with_storage(mut self, ty: Dtype) -> Self {
        debug_assert!(matches!(ty, Dtype::F32 | Dtype::F16 | Dtype::BF16));
        self.st = ty;
        self
    }

    /// The storage type.
    pub fn storage(&self) -> Dtype {
        self.st
    }

    /// Allows the persistent kernel where it fits.
    pub fn with_persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }

    /// Makes a layer-direction that cannot take a persistent kernel an error.
    pub fn with_persistent_required(mut self, on: bool) -> Self {
        self.persistent_required = on;
        self
    }

    /// Whether a layer-direction that cannot take a persistent kernel is an error.
    pub fn persistent_required(&self) -> bool {
        self.persistent_required
    }

    /// Allows (`true`, the default) the layer wavefront of a unidirectional stack (driver.rs).
    pub fn with_wavefront(mut self, on: bool) -> Self {
        self.wavefront = on;
        self
    }

    /// The wavefront's chunk of steps (0, the default: the driver's choice).
    pub fn with_wavefront_chunk(mut self, k: usize) -> Self {
        self.wavefront_chunk = k;
        self
    }

    /// `(on, chunk)`: whether the layer wavefront may run, and its chunk (0: the driver's choice).
    pub fn wavefront(&self) -> (bool, usize) {
        (self.wavefront, self.wavefront_chunk)
    }

    /// Records a kernel (`None`: a GEMM) issued on stream `si` of the host emulation, or fails
    /// it ([`fail_at`](Self::fail_at)).
    #[cfg(all(test, rnn_kernels_host_emulation))]
    fn host_issue(&self, si: usize, k: Option<Kernel>) -> Result<()> {
        let mut issued = self.issued.borrow_mut();
        if self.fail_at.get() == Some(issued.len()) {
            if self.fail_panics.get() {
                drop(issued);
                panic!("an injected panic at {k:?} on stream {si}");
            }
            return Err(self.err(&format!("{k:?} on stream {si}"), "an injected failure"));
        }
        issued.push((si, k));
        Ok(())
    }

    fn dev(&self) -> Option<&'a Device> {
        match &self.on {
            On::Dev { dev, .. } => Some(dev),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            On::Host => None,
        }
    }

    fn err(&self, op: &str, e: impl std::fmt::Debug) -> Error {
        device_err(self.dev().map_or("host-emulation", |d| d.name.as_str()), op, e)
    }

    fn stream(&self, si: usize) -> Option<&'a Arc<CudaStream>> {
        self.dev().map(|d| &d.streams[si])
    }

    /// Units per block if a persistent kernel runs a layer-direction of `cell` with `h` units,
    /// batch `b`, `dirs` directions (an LSTM without projection: checked by the caller): `B ≤ 8`,
    /// cooperative launch, and every block of all directions resident at once with its slice of
    /// `W_hh` in shared memory. One block per SM and direction: `U = ceil(h / (SMs / dirs))`.
    ///
    /// On the host emulation, GRU and RNN layers take it with one block owning all `h` units
    /// (kernels/persistent_cell.cu runs there; persistent_lstm.cu does not).
    pub fn persistent_units(&self, cell: CellKind, h: usize, b: usize, dirs: usize) -> Option<usize> {
        // The persistent kernels are f32 only.
        if !self.persistent || b > PERSISTENT_MAX_BATCH || self.st != Dtype::F32 {
            return None;
        }
        let Some(dev) = self.dev() else {
            return (cfg!(all(test, rnn_kernels_host_emulation)) && cell != CellKind::Lstm).then_some(h);
        };
        let p = dev.props;
        if !p.cooperative {
            return None;
        }
        let (units, smem) = persistent_shape(cell, h, b, dirs, p.sms, p.max_smem)?;
        let k = &dev.kernels;
        let f = match cell {
            CellKind::Lstm => &k.persistent_lstm_forward,
            CellKind::Gru => &k.persistent_gru_forward,
            CellKind::RnnTanh => &k.persistent_rnn_tanh_forward,
            CellKind::RnnRelu => &k.persistent_rnn_relu_forward,
        };
        let blocks = h.div_ceil(units);
        let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(PERSISTENT_THREADS, smem, None).ok()? as usize;
        (per_sm * p.sms >= blocks * dirs).then_some(units)
    }

    /// Units per block if the persistent backward (kernels/persistent_backward.cu) runs a
    /// layer-direction of `cell` (an LSTM without projection: checked by the caller) with `h`
    /// units, batch `b`, `dirs` directions: the forward's conditions and its `U`, with the
    /// backward's shared memory ([`persistent_backward_smem`]) and occupancy. On the host
    /// emulation every cell takes it, one block owning all `h` units.
    pub fn persistent_backward_units(&self, cell: CellKind, h: usize, b: usize, dirs: usize) -> Option<usize> {
        // The persistent kernels are f32 only.
        if !self.persistent || b > PERSISTENT_MAX_BATCH || h == 0 || dirs == 0 || self.st != Dtype::F32 {
            return None;
        }
        let Some(dev) = self.dev() else {
            return cfg!(all(test, rnn_kernels_host_emulation)).then_some(h);
        };
        let p = dev.props;
        if !p.cooperative || p.sms == 0 {
            return None;
        }
        let units = h.div_ceil((p.sms / dirs).max(1));
        let smem = persistent_backward_smem(cell.gates(), h, b, units);
        if smem > p.max_smem {
            return None;
        }
        let k = &dev.kernels;
        let f = match cell {
            CellKind::Lstm => &k.persistent_lstm_backward,
            CellKind::Gru => &k.persistent_gru_backward,
            CellKind::RnnTanh => &k.persistent_rnn_tanh_backward,
            CellKind::RnnRelu => &k.persistent_rnn_relu_backward,
        };
        let blocks = h.div_ceil(units);
        let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(PERSISTENT_THREADS, smem, None).ok()? as usize;
        (per_sm * p.sms >= blocks * dirs).then_some(units)
    }

    /// `n` f32, uninitialised on the device (every use writes before it reads), NaN on the host.
    pub fn alloc(&self, n: usize) -> Result<Mem<f32>> {
        match self.stream(0) {
            // SAFETY: f32 has no invalid bit patterns; callers write before reading.
            Some(s) => unsafe { s.alloc::<f32>(n.max(1)) }.map(Mem::Dev).map_err(|e| self.err(&format!("allocating {n} f32"), e)),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            None => Ok(Mem::Host(vec![f32::NAN; n.max(1)])),
            #[cfg(not(all(test, rnn_kernels_host_emulation)))]
            None => unreachable!("a call is on a device"),
        }
    }

    /// `n` elements of `ty`, uninitialised on the device, NaN on the host. A 16-bit buffer is
    /// held in `ceil(n/2)` f32 words (so the driver keeps one memory type); view it with
    /// [`view_as`](Self::view_as).
    pub fn alloc_as(&self, ty: Dtype, n: usize) -> Result<Mem<f32>> {
        if ty == Dtype::F32 {
            return self.alloc(n);
        }
        let words = (n * ty.size()).div_ceil(4);
        match self.stream(0) {
            // SAFETY: as alloc.
            Some(s) => unsafe { s.alloc::<f32>(words.max(1)) }.map(Mem::Dev).map_err(|e| self.err(&format!("allocating {n} {ty:?}"), e)),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            None => Ok(Mem::Host(vec![f32::from_bits(NAN_16X2); words.max(1)])),
            #[cfg(not(all(test, rnn_kernels_host_emulation)))]
            None => unreachable!("a call is on a device"),
        }
    }

    /// [`fit`](Self::fit) for `n` elements of `ty`.
    pub fn fit_as(&self, ty: Dtype, slot: &mut Option<Mem<f32>>, n: usize) -> Result<View> {
        if ty == Dtype::F32 {
            return self.fit(slot, n);
        }
        if n == 0 {
            *slot = None;
            return Ok(View::NULL);
        }
        let words = (n * ty.size()).div_ceil(4).max(1);
        if slot.as_ref().map(|s| s.len()) != Some(words) {
            *slot = Some(self.alloc_as(ty, n)?);
        }
        Ok(self.view_as(ty, slot.as_ref().expect("just set"), n))
    }

    /// The first `n` elements of `ty` of `m` (allocated by [`alloc_as`](Self::alloc_as)).
    pub fn view_as(&self, ty: Dtype, m: &Mem<f32>, n: usize) -> View {
        let v = self.view(m);
        assert!(n * ty.size() <= v.len * 4, "{n} {ty:?} outside {} words", v.len);
        View { ptr: v.ptr, len: n, ty }
    }

    /// Fits `slot` to `n` elements (reallocating only when the size changes) and returns it.
    pub fn fit(&self, slot: &mut Option<Mem<f32>>, n: usize) -> Result<View> {
        if n == 0 {
            *slot = None;
            return Ok(View::NULL);
        }
        if slot.as_ref().map(|s| s.len()) != Some(n) {
            *slot = Some(self.alloc(n)?);
        }
        Ok(self.view(slot.as_ref().expect("just set")))
    }

    /// The whole of `m`. The memory must outlive the view's uses (the driver keeps it in the
    /// reserve or in the call's temporaries until the call's work is enqueued and ordered).
    pub fn view(&self, m: &Mem<f32>) -> View {
        match m {
            Mem::Dev(s) => View::of(s, self.stream(0).expect("device memory on a device call")),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            Mem::Host(v) => View { ptr: v.as_ptr() as u64, len: v.len(), ty: Dtype::F32 },
        }
    }

    /// The address of an i32 buffer.
    pub fn ptr_i32(&self, m: &Mem<i32>) -> u64 {
        match m {
            Mem::Dev(s) => s.device_ptr(self.stream(0).expect("device memory on a device call")).0,
            #[cfg(all(test, rnn_kernels_host_emulation))]
            Mem::Host(v) => v.as_ptr() as u64,
        }
    }

    /// Lengths of `shape` as `[B]` i32.
    pub fn lengths(&self, shape: &SeqShape) -> Result<Mem<i32>> {
        let lens: Vec<i32> = (0..shape.batch()).map(|b| shape.length(b) as i32).collect();
        match self.stream(0) {
            Some(s) => s.clone_htod(&lens).map(Mem::Dev).map_err(|e| self.err("uploading the lengths", e)),
            #[cfg(all(test, rnn_kernels_host_emulation))]
            None => Ok(Mem::Host(lens)),
            #[cfg(not(all(test, rnn_kernels_host_emulation)))]
            None => unreachable!("a call is on a device"),
        }
    }

    /// Stream `to` waits for the work enqueued so far on stream `from`.
    pub fn order(&self, to: usize, from: usize) -> Result<()> {
        match (self.stream(to), self.stream(from)) {
            (Some(t), Some(f)) => t.join(f).map_err(|e| self.err("ordering the streams", e)),
            _ => {
                #[cfg(all(test, rnn_kernels_host_emulation))]
                match (to, from) {
                    (1, 0) => self.forked.set(true),
                    (0, 1) => self.forked.set(false),
                    _ => {}
                }
                Ok(())
            }
        }
    }

    /// Marks the work enqueued so far on stream `si`, for [`wait`](Self::wait). One event per
    /// mark, destroyed when the `Event` is dropped (CUDA defers that until it has completed).
    pub fn record(&self, si: usize) -> Result<Event> {
        match self.stream(si) {
            Some(s) => s.record_event(None).map(|e| Event(Some(e))).map_err(|e| self.err("recording an event", e)),
            None => Ok(Event(None)),
        }
    }

    /// Stream `si` waits (on the device, not the host) for the work `e` marks.
    pub fn wait(&self, si: usize, e: &Event) -> Result<()> {
        match (self.stream(si), &e.0) {
            (Some(s), Some(ev)) => s.wait(ev).map_err(|e| self.err("waiting for an event", e)),
            _ => Ok(()),
        }
    }

    /// `c = alpha·a·b + beta·c` (row-major, `a`, `b` possibly transposed) on stream `si`.
    /// All f32: cublasSgemm. Otherwise `a` and `b` are both 16-bit (f16 or bf16, the same) and
    /// `c` is f32 or of their type: cublasGemmEx with f32 compute (tensor cores allowed), which
    /// reads `c` to f32 when `beta ≠ 0` and rounds the result once when `c` is 16-bit.
    pub fn gemm(&self, si: usize, alpha: f32, a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Result<()> {
        if (a.ty, b.ty, c.ty) != (Dtype::F32, Dtype::F32, Dtype::F32) {
            return self.gemm_ex(si, alpha, a, b, beta, c);
        }
        let Some(g) = SgemmArgs::new(a, b, beta, c) else { return Ok(()) };
        let Some(dev) = self.dev() else {
            #[cfg(all(test, rnn_kernels_host_emulation))]
            self.host_issue(si, None)?;
            #[cfg(all(test, rnn_kernels_host_emulation))]
            // SAFETY: the three views were checked to hold their [rows, cols] (View::mat).
            unsafe {
                host::sgemm(&g, alpha, beta)
            };
            return Ok(());
        };
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        // SAFETY: the three views were checked to hold their [rows, cols] (View::mat), the
        // sizes fit i32 (check_sizes), and the handle belongs to stream si of this context.
        unsafe {
            cudarc::cublas::result::sgemm(
                *dev.blas[si].handle(),
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

    /// The 16-bit [`gemm`](Self::gemm).
    fn gemm_ex(&self, si: usize, alpha: f32, a: DevMat, b: DevMat, beta: f32, c: DevMat) -> Result<()> {
        assert!(a.ty == b.ty && a.ty != Dtype::F32 && (c.ty == Dtype::F32 || c.ty == a.ty), "gemm types {:?} {:?} {:?}", a.ty, b.ty, c.ty);
        let Some(g) = SgemmArgs::new(a, b, beta, c) else { return Ok(()) };
        let Some(dev) = self.dev() else {
            #[cfg(all(test, rnn_kernels_host_emulation))]
            self.host_issue(si, None)?;
            #[cfg(all(test, rnn_kernels_host_emulation))]
            // SAFETY: the three views were checked to hold their [rows, cols] (View::mat).
            unsafe {
                host::gemm_ex(&g, a.ty, c.ty, alpha, beta)
            };
            return Ok(());
        };
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        let dt = |t: Dtype| match t {
            Dtype::F16 => cudaDataType::CUDA_R_16F,
            Dtype::BF16 => cudaDataType::CUDA_R_16BF,
            _ => cudaDataType::CUDA_R_32F,
        };
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        // SAFETY: as in gemm; alpha and beta are f32 as CUBLAS_COMPUTE_32F requires, and the
        // type pairs (16F/16F/32F, 16F/16F/16F and the 16BF ones) are supported combinations.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *dev.blas[si].handle(),
                op(g.transa),
                op(g.transb),
                g.m,
                g.n,
                g.k,
                (&alpha as *const f32).cast(),
                g.a as *const std::ffi::c_void,
                dt(b.ty),
                g.lda,
                g.b as *const std::ffi::c_void,
                dt(a.ty),
                g.ldb,
                (&beta as *const f32).cast(),
                g.c as *mut std::ffi::c_void,
                dt(c.ty),
                g.ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| self.err("cublasGemmEx", e))
    }

    /// `v = value` (rounded once to `v`'s type) on stream `si`.
    pub fn fill(&self, si: usize, v: View, value: f32) -> Result<()> {
        if v.len == 0 {
            return Ok(());
        }
        self.launch_typed(si, Kernel::FillF32, v.ty, grid(v.len), false, &args![v.len as i64, value, v.ptr])
    }

    /// `dst = src` (same length) on stream `si`; between f32 and 16-bit views, converted
    /// (exactly to f32, rounded once from it).
    pub fn copy(&self, si: usize, dst: View, src: View) -> Result<()> {
        assert_eq!(dst.len, src.len);
        if dst.len == 0 {
            return Ok(());
        }
        if dst.ty != src.ty {
            let n = dst.len;
            return match (src.ty, dst.ty) {
                (s, Dtype::F32) => self.launch_typed(si, Kernel::ConvertToF32, s, grid(n), false, &args![n as i64, src.ptr, dst.ptr]),
                (Dtype::F32, d) => self.launch_typed(si, Kernel::ConvertFromF32, d, grid(n), false, &args![n as i64, src.ptr, dst.ptr]),
                (s, d) => panic!("copy from {s:?} to {d:?}"),
            };
        }
        let bytes = dst.len * dst.ty.size();
        let Some(s) = self.stream(si) else {
            // SAFETY: both views hold len elements of their (equal) type (host memory in the emulation).
            unsafe { std::ptr::copy(src.ptr as *const u8, dst.ptr as *mut u8, bytes) };
            return Ok(());
        };
        // SAFETY: both views hold len elements of their (equal) type.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst.ptr, src.ptr, bytes, s.cu_stream()) }
            .map_err(|e| self.err("copying device memory", e))
    }

    /// `dst = src`, or zeros when `src` is `None`.
    pub fn copy_or_zero(&self, si: usize, dst: View, src: Option<View>) -> Result<()> {
        match src {
            Some(s) => self.copy(si, dst, s),
            None => self.fill(si, dst, 0.0),
        }
    }

    /// A grid-stride kernel over `n` elements on stream `si`.
    pub fn launch(&self, si: usize, k: Kernel, n: usize, args: &[A]) -> Result<()> {
        self.launch_with(si, k, grid(n), false, args)
    }

    /// Kernel `k` with `args` (in the order of its signature in kernels/*.cu), the entry of
    /// the call's storage type.
    pub fn launch_with(&self, si: usize, k: Kernel, cfg: LaunchConfig, cooperative: bool, args: &[A]) -> Result<()> {
        self.launch_typed(si, k, self.st, cfg, cooperative, args)
    }

    /// Kernel `k`'s entry for element type `ty` with `args`.
    fn launch_typed(&self, si: usize, k: Kernel, ty: Dtype, cfg: LaunchConfig, cooperative: bool, args: &[A]) -> Result<()> {
        let Some(dev) = self.dev() else {
            #[cfg(all(test, rnn_kernels_host_emulation))]
            self.host_issue(si, Some(k))?;
            #[cfg(all(test, rnn_kernels_host_emulation))]
            // SAFETY: as below; the emulated kernels are the same code, run serially.
            unsafe {
                if ty == Dtype::F32 {
                    host::launch(k, args)
                } else {
                    host::launch16(k, ty, args)
                }
            };
            return Ok(());
        };
        let kk = &dev.kernels;
        let half = |k: Kernel| {
            let i = HALF_KERNELS.iter().position(|e| e.0 == k).expect("a kernel with 16-bit entries");
            &kk.half[i][usize::from(ty == Dtype::BF16)]
        };
        let f = match k {
            _ if ty != Dtype::F32 => half(k),
            Kernel::ConvertToF32 | Kernel::ConvertFromF32 => panic!("{k:?} has no f32 entry"),
            Kernel::LstmForwardStep => &kk.lstm_forward_step,
            Kernel::LstmProjectionFinish => &kk.lstm_projection_finish,
            Kernel::LstmProjectionBackwardPrepare => &kk.lstm_projection_backward_prepare,
            Kernel::LstmBackwardStep => &kk.lstm_backward_step,
            Kernel::GruForwardStep => &kk.gru_forward_step,
            Kernel::GruBackwardStep => &kk.gru_backward_step,
            Kernel::RnnTanhForwardStep => &kk.rnn_tanh_forward_step,
            Kernel::RnnReluForwardStep => &kk.rnn_relu_forward_step,
            Kernel::RnnTanhBackwardStep => &kk.rnn_tanh_backward_step,
            Kernel::RnnReluBackwardStep => &kk.rnn_relu_backward_step,
            Kernel::FillF32 => &kk.fill_f32,
            Kernel::PersistentLstmForward => &kk.persistent_lstm_forward,
            Kernel::PersistentGruForward => &kk.persistent_gru_forward,
            Kernel::PersistentRnnTanhForward => &kk.persistent_rnn_tanh_forward,
            Kernel::PersistentRnnReluForward => &kk.persistent_rnn_relu_forward,
            Kernel::PersistentLstmBackward => &kk.persistent_lstm_backward,
            Kernel::PersistentGruBackward => &kk.persistent_gru_backward,
            Kernel::PersistentRnnTanhBackward => &kk.persistent_rnn_tanh_backward,
            Kernel::PersistentRnnReluBackward => &kk.persistent_rnn_relu_backward,
        };
        let mut l = dev.streams[si].launch_builder(f);
        for a in args {
            match a {
                A::I(v) => l.arg(v),
                A::L(v) => l.arg(v),
                A::F(v) => l.arg(v),
                A::P(v) => l.arg(v),
            };
        }
        // SAFETY: the argument lists follow each kernel's signature in kernels/*.cu (the host
        // emulation checks every list against the C declarations), and every pointer is a View
        // checked to hold what the kernel touches.
        let r = unsafe {
            if cooperative {
                l.launch_cooperative(cfg)
            } else {
                l.launch(cfg)
            }
        };
        r.map(drop).map_err(|e| self.err(&format!("{k:?}"), e))
    }
}

/// Units per block and dynamic shared memory per block (bytes) of the persistent kernel of
/// `cell` for `h` units, batch `b` and `dirs` directions on a device of `sms` SMs whose blocks
/// may use `max_smem` bytes: one block per SM and direction, `U = ceil(h / (sms / dirs))`.
/// `None` when the batch is too large or the `W_hh` slice does not fit (the occupancy check is
/// the caller's).
pub(crate) fn persistent_shape(cell: CellKind, h: usize, b: usize, dirs: usize, sms: usize, max_smem: usize) -> Option<(usize, usize)> {
    if b > PERSISTENT_MAX_BATCH || sms == 0 || h == 0 {
        return None;
    }
    let units = h.div_ceil((sms / dirs).max(1));
    let smem = match cell {
        CellKind::Lstm => persistent_smem(h, b, units),
        CellKind::Gru => persistent_cell_smem(3, h, b, units),
        CellKind::RnnTanh | CellKind::RnnRelu => persistent_cell_smem(1, h, b, units),
    };
    (smem <= max_smem).then_some((units, smem))
}

/// Dynamic shared memory of the persistent LSTM kernel with `u` units per block, in bytes.
pub(crate) fn persistent_smem(h: usize, b: usize, u: usize) -> usize {
    4 * (4 * u * h + b * h + 4 * b * u + b * u)
}

/// Dynamic shared memory of the persistent GRU (`g = 3`) or RNN (`g = 1`) kernel with `u` units
/// per block, in bytes: the `W_hh` slice `[U, G, H]` and `h_prev` `[B, H]`
/// (`persistent_cell_smem_floats` of kernels/persistent_cell.cu).
pub(crate) fn persistent_cell_smem(g: usize, h: usize, b: usize, u: usize) -> usize {
    4 * (u * g * h + b * h)
}

/// Dynamic shared memory of the persistent backward kernel of a cell with `g` gates and `u` units
/// per block, in bytes: the `W_hh` columns `[U, G·H]`, a `dG_h` chunk `[B, H]` and three `[B, U]`
/// carries (`persistent_backward_smem_floats` of kernels/persistent_backward.cu).
pub(crate) fn persistent_backward_smem(g: usize, h: usize, b: usize, u: usize) -> usize {
    4 * (u * g * h + b * h + 3 * b * u)
}

/// The host emulation: cuBLAS's sgemm, and the kernels compiled as C++ by build.rs (when a
/// host C++ compiler was found).
#[cfg(test)]
pub(crate) mod host {
    use super::SgemmArgs;
    use crate::element::Dtype;
    #[cfg(rnn_kernels_host_emulation)]
    pub(crate) use emulated::{launch, launch16};

    #[cfg(rnn_kernels_host_emulation)]
    mod emulated {
        use super::super::{Kernel, A};

        // Pointers are passed as u64: the same register class and size as a pointer in the C ABI.
        extern "C" {
            fn lstm_forward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                xg: u64,
                hg: u64,
                b_ih: u64,
                b_hh: u64,
                c_prev: u64,
                keep: u64,
                gates: u64,
                c: u64,
                m: u64,
                y: u64,
                y_stride: i32,
            );
            fn lstm_projection_finish(batch: i32, hout: i32, step: i32, lengths: u64, h_prev: u64, h: u64, y: u64, y_stride: i32);
            fn lstm_projection_backward_prepare(
                batch: i32,
                hout: i32,
                step: i32,
                lengths: u64,
                dy: u64,
                dy_stride: i32,
                carry: u64,
                dh: u64,
                dh_save: u64,
            );
            fn lstm_backward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                gates: u64,
                c: u64,
                c_prev: u64,
                dm_in: u64,
                dy: u64,
                dy_stride: i32,
                carry: u64,
                dc: u64,
                dg: u64,
            );
            fn gru_forward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                xg: u64,
                hg: u64,
                b_ih: u64,
                b_hh: u64,
                h_prev: u64,
                gates: u64,
                extra: u64,
                h: u64,
                y: u64,
                y_stride: i32,
            );
            fn gru_backward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                gates: u64,
                extra: u64,
                h_prev: u64,
                dy: u64,
                dy_stride: i32,
                carry: u64,
                dgi: u64,
                dgh: u64,
            );
            fn rnn_tanh_forward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                xg: u64,
                hg: u64,
                b_ih: u64,
                b_hh: u64,
                h_prev: u64,
                gates: u64,
                h: u64,
                y: u64,
                y_stride: i32,
            );
            fn rnn_relu_forward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                xg: u64,
                hg: u64,
                b_ih: u64,
                b_hh: u64,
                h_prev: u64,
                gates: u64,
                h: u64,
                y: u64,
                y_stride: i32,
            );
            fn rnn_tanh_backward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                gates: u64,
                dy: u64,
                dy_stride: i32,
                carry: u64,
                dg: u64,
            );
            fn rnn_relu_backward_step(
                batch: i32,
                hidden: i32,
                step: i32,
                lengths: u64,
                gates: u64,
                dy: u64,
                dy_stride: i32,
                carry: u64,
                dg: u64,
            );
            fn fill_f32(n: i64, value: f32, p: u64);
        }
        // kernels/persistent_cell.cu: one signature for the three cells.
        macro_rules! persistent_cell_decl {
            ($($f:ident),*) => {
                extern "C" {
                    $(fn $f(
                        batch: i32,
                        hidden: i32,
                        steps: i32,
                        reverse: i32,
                        units: i32,
                        lengths: u64,
                        xg: u64,
                        w_hh: u64,
                        b_ih: u64,
                        b_hh: u64,
                        h0: u64,
                        h_states: u64,
                        training: i32,
                        gates_save: u64,
                        extra_save: u64,
                        y: u64,
                        y_stride: i32,
                        hn: u64,
                        barrier: u64,
                    );)*
                }
            };
        }
        persistent_cell_decl!(persistent_gru_forward, persistent_rnn_tanh_forward, persistent_rnn_relu_forward);
        // kernels/persistent_backward.cu: one signature for the four cells.
        macro_rules! persistent_backward_decl {
            ($($f:ident),*) => {
                extern "C" {
                    $(fn $f(
                        batch: i32,
                        hidden: i32,
                        steps: i32,
                        reverse: i32,
                        units: i32,
                        lengths: u64,
                        w_hh: u64,
                        gates: u64,
                        extra: u64,
                        c_all: u64,
                        h_all: u64,
                        h0: u64,
                        c0: u64,
                        dy: u64,
                        dy_stride: i32,
                        carry: u64,
                        dc: u64,
                        dgi: u64,
                        dgh: u64,
                        barrier: u64,
                    );)*
                }
            };
        }
        persistent_backward_decl!(
            persistent_lstm_backward,
            persistent_gru_backward,
            persistent_rnn_tanh_backward,
            persistent_rnn_relu_backward
        );

        // The 16-bit entries (RNNK_INSTANTIATE of kernels/common.cuh, and util.cu's fill and
        // conversions): the f32 entry's signature, storage pointers as u64 like the others.
        macro_rules! decl16 {
            ($($f:ident($($t:ty),*);)*) => { extern "C" { $(fn $f($(_: $t),*);)* } };
        }
        decl16! {
            lstm_forward_step_f16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            lstm_forward_step_bf16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            lstm_projection_finish_f16(i32, i32, i32, u64, u64, u64, u64, i32);
            lstm_projection_finish_bf16(i32, i32, i32, u64, u64, u64, u64, i32);
            lstm_projection_backward_prepare_f16(i32, i32, i32, u64, u64, i32, u64, u64, u64);
            lstm_projection_backward_prepare_bf16(i32, i32, i32, u64, u64, i32, u64, u64, u64);
            lstm_backward_step_f16(i32, i32, i32, u64, u64, u64, u64, u64, u64, i32, u64, u64, u64);
            lstm_backward_step_bf16(i32, i32, i32, u64, u64, u64, u64, u64, u64, i32, u64, u64, u64);
            gru_forward_step_f16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            gru_forward_step_bf16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            gru_backward_step_f16(i32, i32, i32, u64, u64, u64, u64, u64, i32, u64, u64, u64);
            gru_backward_step_bf16(i32, i32, i32, u64, u64, u64, u64, u64, i32, u64, u64, u64);
            rnn_tanh_forward_step_f16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            rnn_tanh_forward_step_bf16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            rnn_relu_forward_step_f16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            rnn_relu_forward_step_bf16(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32);
            rnn_tanh_backward_step_f16(i32, i32, i32, u64, u64, u64, i32, u64, u64);
            rnn_tanh_backward_step_bf16(i32, i32, i32, u64, u64, u64, i32, u64, u64);
            rnn_relu_backward_step_f16(i32, i32, i32, u64, u64, u64, i32, u64, u64);
            rnn_relu_backward_step_bf16(i32, i32, i32, u64, u64, u64, i32, u64, u64);
            fill_f16(i64, f32, u64);
            fill_bf16(i64, f32, u64);
            convert_f16_to_f32(i64, u64, u64);
            convert_bf16_to_f32(i64, u64, u64);
            convert_f32_to_f16(i64, u64, u64);
            convert_f32_to_bf16(i64, u64, u64);
        }

        /// Takes the next argument, which must have the C type the signature says.
        type Args<'a> = std::iter::Enumerate<std::slice::Iter<'a, A>>;
        trait Take: Sized {
            fn take(it: &mut Args<'_>, k: Kernel) -> Self;
        }
        macro_rules! take {
            ($t:ty, $v:ident) => {
                impl Take for $t {
                    fn take(it: &mut Args<'_>, k: Kernel) -> Self {
                        match it.next() {
                            Some((_, A::$v(v))) => *v,
                            Some((i, other)) => panic!("{k:?}: argument {i} must be {}, got {other:?}", stringify!($v)),
                            None => panic!("{k:?}: too few arguments"),
                        }
                    }
                }
            };
        }
        take!(i32, I);
        take!(i64, L);
        take!(f32, F);
        take!(u64, P);

        macro_rules! call {
        ($k:expr, $args:expr, $f:ident($($t:ty),*)) => {{
            call!($k, $args, ($f)($($t),*))
        }};
        ($k:expr, $args:expr, ($f:expr)($($t:ty),*)) => {{
            let mut it = $args.iter().enumerate();
            $f($(<$t as Take>::take(&mut it, $k)),*);
            assert!(it.next().is_none(), "{:?}: too many arguments", $k);
        }};
    }

        /// Runs kernel `k` on the host.
        ///
        /// # Safety
        /// The pointers among `args` are host addresses of buffers that hold what the kernel
        /// touches.
        pub unsafe fn launch(k: Kernel, args: &[A]) {
            use Kernel as K;
            // SAFETY: as the function's.
            unsafe {
                match k {
                    K::LstmForwardStep => {
                        call!(k, args, lstm_forward_step(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32))
                    }
                    K::LstmProjectionFinish => call!(k, args, lstm_projection_finish(i32, i32, i32, u64, u64, u64, u64, i32)),
                    K::LstmProjectionBackwardPrepare => {
                        call!(k, args, lstm_projection_backward_prepare(i32, i32, i32, u64, u64, i32, u64, u64, u64))
                    }
                    K::LstmBackwardStep => {
                        call!(k, args, lstm_backward_step(i32, i32, i32, u64, u64, u64, u64, u64, u64, i32, u64, u64, u64))
                    }
                    K::GruForwardStep => {
                        call!(k, args, gru_forward_step(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32))
                    }
                    K::GruBackwardStep => call!(k, args, gru_backward_step(i32, i32, i32, u64, u64, u64, u64, u64, i32, u64, u64, u64)),
                    K::RnnTanhForwardStep => {
                        call!(k, args, rnn_tanh_forward_step(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32))
                    }
                    K::RnnReluForwardStep => {
                        call!(k, args, rnn_relu_forward_step(i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32))
                    }
                    K::RnnTanhBackwardStep => call!(k, args, rnn_tanh_backward_step(i32, i32, i32, u64, u64, u64, i32, u64, u64)),
                    K::RnnReluBackwardStep => call!(k, args, rnn_relu_backward_step(i32, i32, i32, u64, u64, u64, i32, u64, u64)),
                    K::FillF32 => call!(k, args, fill_f32(i64, f32, u64)),
                    K::PersistentLstmForward => panic!("the persistent LSTM kernel has no host emulation"),
                    K::ConvertToF32 | K::ConvertFromF32 => panic!("{k:?} has no f32 entry"),
                    K::PersistentGruForward | K::PersistentRnnTanhForward | K::PersistentRnnReluForward => {
                        let f = match k {
                            K::PersistentGruForward => persistent_gru_forward,
                            K::PersistentRnnTanhForward => persistent_rnn_tanh_forward,
                            _ => persistent_rnn_relu_forward,
                        };
                        call!(k, args, (f)(i32, i32, i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, i32, u64, u64, u64, i32, u64, u64))
                    }
                    K::PersistentLstmBackward | K::PersistentGruBackward | K::PersistentRnnTanhBackward | K::PersistentRnnReluBackward => {
                        let f = match k {
                            K::PersistentLstmBackward => persistent_lstm_backward,
                            K::PersistentGruBackward => persistent_gru_backward,
                            K::PersistentRnnTanhBackward => persistent_rnn_tanh_backward,
                            _ => persistent_rnn_relu_backward,
                        };
                        call!(
                            k,
                            args,
                            f(i32, i32, i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32, u64, u64, u64, u64, u64)
                        )
                    }
                }
            }
        }

        /// Runs the 16-bit entry (`ty` F16 or BF16) of kernel `k` on the host.
        ///
        /// # Safety
        /// As [`launch`].
        pub unsafe fn launch16(k: Kernel, ty: super::Dtype, args: &[A]) {
            use Kernel as K;
            let bf = ty == super::Dtype::BF16;
            macro_rules! pick {
                ($f16:ident, $bf16:ident) => {
                    if bf {
                        $bf16
                    } else {
                        $f16
                    }
                };
            }
            // SAFETY: as the function's.
            unsafe {
                match k {
                    K::LstmForwardStep => call!(
                        k,
                        args,
                        (pick!(lstm_forward_step_f16, lstm_forward_step_bf16))(
                            i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32
                        )
                    ),
                    K::LstmProjectionFinish => {
                        call!(
                            k,
                            args,
                            (pick!(lstm_projection_finish_f16, lstm_projection_finish_bf16))(i32, i32, i32, u64, u64, u64, u64, i32)
                        )
                    }
                    K::LstmProjectionBackwardPrepare => call!(
                        k,
                        args,
                        (pick!(lstm_projection_backward_prepare_f16, lstm_projection_backward_prepare_bf16))(
                            i32, i32, i32, u64, u64, i32, u64, u64, u64
                        )
                    ),
                    K::LstmBackwardStep => call!(
                        k,
                        args,
                        (pick!(lstm_backward_step_f16, lstm_backward_step_bf16))(
                            i32, i32, i32, u64, u64, u64, u64, u64, u64, i32, u64, u64, u64
                        )
                    ),
                    K::GruForwardStep => call!(
                        k,
                        args,
                        (pick!(gru_forward_step_f16, gru_forward_step_bf16))(
                            i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32
                        )
                    ),
                    K::GruBackwardStep => call!(
                        k,
                        args,
                        (pick!(gru_backward_step_f16, gru_backward_step_bf16))(i32, i32, i32, u64, u64, u64, u64, u64, i32, u64, u64, u64)
                    ),
                    K::RnnTanhForwardStep => call!(
                        k,
                        args,
                        (pick!(rnn_tanh_forward_step_f16, rnn_tanh_forward_step_bf16))(
                            i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32
                        )
                    ),
                    K::RnnReluForwardStep => call!(
                        k,
                        args,
                        (pick!(rnn_relu_forward_step_f16, rnn_relu_forward_step_bf16))(
                            i32, i32, i32, u64, u64, u64, u64, u64, u64, u64, u64, u64, i32
                        )
                    ),
                    K::RnnTanhBackwardStep => {
                        call!(
                            k,
                            args,
                            (pick!(rnn_tanh_backward_step_f16, rnn_tanh_backward_step_bf16))(i32, i32, i32, u64, u64, u64, i32, u64, u64)
                        )
                    }
                    K::RnnReluBackwardStep => {
                        call!(
                            k,
                            args,
                            (pick!(rnn_relu_backward_step_f16, rnn_relu_backward_step_bf16))(i32, i32, i32, u64, u64, u64, i32, u64, u64)
                        )
                    }
                    K::FillF32 => call!(k, args, (pick!(fill_f16, fill_bf16))(i64, f32, u64)),
                    K::ConvertToF32 => call!(k, args, (pick!(convert_f16_to_f32, convert_bf16_to_f32))(i64, u64, u64)),
                    K::ConvertFromF32 => call!(k, args, (pick!(convert_f32_to_f16, convert_f32_to_bf16))(i64, u64, u64)),
                    K::PersistentLstmForward
                    | K::PersistentGruForward
                    | K::PersistentRnnTanhForward
                    | K::PersistentRnnReluForward
                    | K::PersistentLstmBackward
                    | K::PersistentGruBackward
                    | K::PersistentRnnTanhBackward
                    | K::PersistentRnnReluBackward => panic!("{k:?} is f32 only"),
                }
            }
        }
    }

    /// cuBLAS's column-major sgemm on host memory: `C = alpha·op(A)·op(B) + beta·C`, element
    /// `(i, j)` of a column-major matrix at `i + j·ld`. As cuBLAS, `C` is not read when
    /// `beta = 0`.
    ///
    /// # Safety
    /// The pointers are host addresses of matrices that hold every index the formulas reach.
    pub unsafe fn sgemm(g: &SgemmArgs, alpha: f32, beta: f32) {
        let (a, b, c) = (g.a as *const f32, g.b as *const f32, g.c as *mut f32);
        let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
        for i in 0..g.m as usize {
            for j in 0..g.n as usize {
                let mut acc = 0.0f32;
                for p in 0..g.k as usize {
                    // SAFETY: as the function's.
                    let (av, bv) = unsafe {
                        (
                            if g.transa { *a.add(p + i * lda) } else { *a.add(i + p * lda) },
                            if g.transb { *b.add(j + p * ldb) } else { *b.add(p + j * ldb) },
                        )
                    };
                    acc += av * bv;
                }
                // SAFETY: as the function's.
                unsafe {
                    let cv = c.add(i + j * ldc);
                    *cv = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *cv };
                }
            }
        }
    }
    /// cuBLAS's GemmEx on host memory with f32 compute: `a` and `b` of 16-bit type `ab` (each
    /// element converted exactly to f32), `c` f32 or of type `ab`; the sum accumulates in f32 and
    /// a 16-bit `c` is rounded once (to nearest even, as the `half` crate). `C` is not read when
    /// `beta = 0`.
    ///
    /// # Safety
    /// As [`sgemm`].
    pub unsafe fn gemm_ex(g: &SgemmArgs, ab: Dtype, ct: Dtype, alpha: f32, beta: f32) {
        // SAFETY (of the closures): as the function's.
        let ld16 = |p: u64, i: usize| -> f32 {
            let bits = unsafe { *(p as *const u16).add(i) };
            if ab == Dtype::BF16 {
                half::bf16::from_bits(bits).to_f32()
            } else {
                half::f16::from_bits(bits).to_f32()
            }
        };
        let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
        for i in 0..g.m as usize {
            for j in 0..g.n as usize {
                let mut acc = 0.0f32;
                for p in 0..g.k as usize {
                    let av = if g.transa { ld16(g.a, p + i * lda) } else { ld16(g.a, i + p * lda) };
                    let bv = if g.transb { ld16(g.b, j + p * ldb) } else { ld16(g.b, p + j * ldb) };
                    acc += av * bv;
                }
                let at = i + j * ldc;
                // SAFETY: as the function's.
                unsafe {
                    if ct == Dtype::F32 {
                        let cv = (g.c as *mut f32).add(at);
                        *cv = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *cv };
                    } else {
                        let cv = (g.c as *mut u16).add(at);
                        let old =
                            |b: u16| if ct == Dtype::BF16 { half::bf16::from_bits(b).to_f32() } else { half::f16::from_bits(b).to_f32() };
                        let v = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * old(*cv) };
                        *cv = if ct == Dtype::BF16 {
                            half::bf16::from_f32_const(v).to_bits()
                        } else {
                            half::f16::from_f32_const(v).to_bits()
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_view(v: &[f32]) -> View {
        View { ptr: v.as_ptr() as u64, len: v.len(), ty: Dtype::F32 }
    }

    /// The row-major to column-major mapping, for every transpose combination, against a plain
    /// row-major product (through the same host sgemm the emulation uses, which follows
    /// cuBLAS's conventions).
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
            let cv = View { ptr: c.as_mut_ptr() as u64, len: c.len(), ty: Dtype::F32 };
            let g = SgemmArgs::new(am, bm, 0.5, cv.mat(m, n)).unwrap();
            // SAFETY: the three buffers hold the matrices the arguments describe.
            unsafe { host::sgemm(&g, 2.0, 0.5) };
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

    /// The persistent kernels' sizes on the benchmark's small-batch rows (benches/compare.py
    /// `--configs cuda`), for an H100 (132 SMs, 227 KiB per block) and an A100 (108 SMs,
    /// 163 KiB): the rows that must take them fit, with the shared memory the .cu headers state.
    #[test]
    fn persistent_shapes_of_the_benchmark_rows() {
        use CellKind::*;
        let (h100, a100) = ((132, 227 * 1024), (108, 163 * 1024));
        // gru-1024-1024-4-1500: U = 8, 128 blocks, 4·(3·8·1024 + 4·1024) = 112 KiB.
        assert_eq!(persistent_shape(Gru, 1024, 4, 1, h100.0, h100.1), Some((8, 112 * 1024)));
        assert_eq!(persistent_shape(Gru, 1024, 4, 1, a100.0, a100.1), Some((10, 136 * 1024)));
        // Bidirectional: U = 16, 208 KiB; at B = 8 still within 227 KiB; not on an A100.
        assert_eq!(persistent_shape(Gru, 1024, 4, 2, h100.0, h100.1), Some((16, 208 * 1024)));
        assert!(persistent_shape(Gru, 1024, 8, 2, h100.0, h100.1).is_some());
        assert!(persistent_shape(Gru, 1024, 4, 2, a100.0, a100.1).is_none());
        // lstm-256-256-1-150: U = 2.
        assert_eq!(persistent_shape(Lstm, 256, 1, 1, h100.0, h100.1).map(|s| s.0), Some(2));
        // The RNN up to H = 4096 on an H100 (U = 32: 4·(32·4096 + 8·4096) = 640 KiB does not fit).
        assert!(persistent_shape(RnnRelu, 1760, 8, 1, h100.0, h100.1).is_some());
        assert!(persistent_shape(RnnTanh, 4096, 8, 1, h100.0, h100.1).is_none());
        // B > 8 never.
        assert!(persistent_shape(Gru, 64, 9, 1, h100.0, h100.1).is_none());
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
