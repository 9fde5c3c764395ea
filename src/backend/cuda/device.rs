//! One CUDA device as the backend uses it: its context, two streams (one per direction) with a
//! cuBLAS handle each, and the kernels, loaded once per process and device and cached.

use super::ptx;
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

/// How to get a driver, a device or cuBLAS: said by every "unavailable" error.
const HOW_TO_FIX: &str = "the CUDA backend needs an NVIDIA GPU, its driver (libcuda.so, CUDA 13.0 or newer) and cuBLAS \
    (libcublas.so, e.g. `pip install nvidia-cublas` with its lib folder on LD_LIBRARY_PATH); use the cpu backend otherwise";

/// The kernels of `kernels/*.cu`, one function per `extern "C" __global__` entry.
pub(crate) struct Kernels {
    pub lstm_forward_step: CudaFunction,
    pub lstm_projection_finish: CudaFunction,
    pub lstm_projection_backward_prepare: CudaFunction,
    pub lstm_backward_step: CudaFunction,
    pub gru_forward_step: CudaFunction,
    pub gru_backward_step: CudaFunction,
    pub rnn_tanh_forward_step: CudaFunction,
    pub rnn_relu_forward_step: CudaFunction,
    pub rnn_tanh_backward_step: CudaFunction,
    pub rnn_relu_backward_step: CudaFunction,
    pub fill_f32: CudaFunction,
    pub persistent_lstm_forward: CudaFunction,
    pub persistent_gru_forward: CudaFunction,
    pub persistent_rnn_tanh_forward: CudaFunction,
    pub persistent_rnn_relu_forward: CudaFunction,
    pub persistent_lstm_backward: CudaFunction,
    pub persistent_gru_backward: CudaFunction,
    pub persistent_rnn_tanh_backward: CudaFunction,
    pub persistent_rnn_relu_backward: CudaFunction,
    /// The f16 and bf16 entries of the kernels of `exec::HALF_KERNELS`, in its order.
    pub half: Vec<[CudaFunction; 2]>,
    /// Keeps the modules loaded as long as the functions are used.
    _modules: Vec<Arc<CudaModule>>,
}

impl Kernels {
    fn load(ctx: &Arc<CudaContext>, name: &str) -> Result<Kernels> {
        let mut modules = Vec::new();
        let mut load = |file: &str, src: &str| -> Result<Arc<CudaModule>> {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(src))
                .map_err(|e| device_err(name, &format!("loading the PTX of kernels/{file}.cu (built for {})", ptx::ARCH), e))?;
            modules.push(m.clone());
            Ok(m)
        };
        let lstm = load("lstm_pointwise", ptx::LSTM_POINTWISE)?;
        let gru = load("gru_pointwise", ptx::GRU_POINTWISE)?;
        let rnn = load("rnn_pointwise", ptx::RNN_POINTWISE)?;
        let util = load("util", ptx::UTIL)?;
        let persistent = load("persistent_lstm", ptx::PERSISTENT_LSTM)?;
        let persistent_cell = load("persistent_cell", ptx::PERSISTENT_CELL)?;
        let persistent_bwd = load("persistent_backward", ptx::PERSISTENT_BACKWARD)?;
        let f =
            |m: &Arc<CudaModule>, entry: &str| m.load_function(entry).map_err(|e| device_err(name, &format!("finding kernel {entry}"), e));
        let half = super::exec::HALF_KERNELS
            .iter()
            .map(|&(_, file, f16, bf16)| {
                let m = match file {
                    "lstm_pointwise" => &lstm,
                    "gru_pointwise" => &gru,
                    "rnn_pointwise" => &rnn,
                    _ => &util,
                };
                Ok([f(m, f16)?, f(m, bf16)?])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Kernels {
            half,
            lstm_forward_step: f(&lstm, "lstm_forward_step")?,
            lstm_projection_finish: f(&lstm, "lstm_projection_finish")?,
            lstm_projection_backward_prepare: f(&lstm, "lstm_projection_backward_prepare")?,
            lstm_backward_step: f(&lstm, "lstm_backward_step")?,
            gru_forward_step: f(&gru, "gru_forward_step")?,
            gru_backward_step: f(&gru, "gru_backward_step")?,
            rnn_tanh_forward_step: f(&rnn, "rnn_tanh_forward_step")?,
            rnn_relu_forward_step: f(&rnn, "rnn_relu_forward_step")?,
            rnn_tanh_backward_step: f(&rnn, "rnn_tanh_backward_step")?,
            rnn_relu_backward_step: f(&rnn, "rnn_relu_backward_step")?,
            fill_f32: f(&util, "fill_f32")?,
            persistent_lstm_forward: f(&persistent, "persistent_lstm_forward")?,
            persistent_gru_forward: f(&persistent_cell, "persistent_gru_forward")?,
            persistent_rnn_tanh_forward: f(&persistent_cell, "persistent_rnn_tanh_forward")?,
            persistent_rnn_relu_forward: f(&persistent_cell, "persistent_rnn_relu_forward")?,
            persistent_lstm_backward: f(&persistent_bwd, "persistent_lstm_backward")?,
            persistent_gru_backward: f(&persistent_bwd, "persistent_gru_backward")?,
            persistent_rnn_tanh_backward: f(&persistent_bwd, "persistent_rnn_tanh_backward")?,
            persistent_rnn_relu_backward: f(&persistent_bwd, "persistent_rnn_relu_backward")?,
            _modules: modules,
        })
    }
}

/// Properties of the device that decide whether the persistent kernel can run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Props {
    /// Streaming multiprocessors.
    pub sms: usize,
    /// Whether cuLaunchCooperativeKernel is supported.
    pub cooperative: bool,
    /// The most dynamic shared memory one block of every persistent kernel may use, in bytes
    /// (48 KiB, the default, when opting in failed for one of them).
    pub max_smem: usize,
}

/// A device, ready to run: shared by every [`Cuda`](super::Cuda) handle of the same ordinal.
pub(crate) struct Device {
    pub name: String,
    pub ctx: Arc<CudaContext>,
    /// Stream 0 runs everything but the reverse direction of a bidirectional layer, which runs
    /// on stream 1 concurrently.
    pub streams: [Arc<CudaStream>; 2],
    /// One cuBLAS handle per stream.
    pub blas: [CudaBlas; 2],
    pub kernels: Kernels,
    /// What the persistent kernel's choice depends on.
    pub props: Props,
    /// Serialises calls: the streams and handles are shared, and one call's ordering between
    /// them must not interleave with another's.
    pub call: Mutex<()>,
}

// SAFETY: the cuBLAS handles are only used while `call` is locked (or, for the two streams of
// one call, each handle by its own stream's work, enqueued by the one locking thread).
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

pub(crate) fn device_err(backend: &str, op: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device { backend: backend.to_string(), op: op.to_string(), message: format!("{e:?}") }
}

fn unavailable(reason: String) -> Error {
    Error::BackendUnavailable { backend: "cuda".into(), reason }
}

/// The cached device `ordinal`, opened on first use.
pub(crate) fn open(ordinal: usize) -> Result<Arc<Device>> {
    /// Opened devices by ordinal.
    type Cache = Mutex<Vec<(usize, Arc<Device>)>>;
    static DEVICES: OnceLock<Cache> = OnceLock::new();
    let cache = DEVICES.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d)) = cache.iter().find(|(o, _)| *o == ordinal) {
        return Ok(d.clone());
    }
    let dev = Arc::new(open_uncached(ordinal)?);
    cache.push((ordinal, dev.clone()));
    Ok(dev)
}

fn open_uncached(ordinal: usize) -> Result<Device> {
    if let Some(reason) = ptx::NVCC_MISSING {
        return Err(unavailable(reason.to_string()));
    }
    // SAFETY: only tries to dlopen the library names cudarc knows; nothing is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(unavailable(format!("no CUDA driver library (libcuda.so) on this machine: {HOW_TO_FIX}")));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(unavailable(format!("the CUDA driver is present but cuBLAS (libcublas.so) is not: {HOW_TO_FIX}")));
    }
    // cudarc panics when a symbol is missing from an old library; turn that into an error too.
    match catch_unwind(AssertUnwindSafe(|| open_with_libraries(ordinal))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(unavailable(format!("the CUDA libraries could not be used ({msg}): {HOW_TO_FIX}")))
        }
    }
}

fn open_with_libraries(ordinal: usize) -> Result<Device> {
    let count =
        CudaContext::device_count().map_err(|e| unavailable(format!("the CUDA driver reports no usable device ({e:?}): {HOW_TO_FIX}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(unavailable(format!("no CUDA device {ordinal}: this machine has {count}: {HOW_TO_FIX}")));
    }
    let name = format!("cuda:{ordinal}");
    let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("cannot open CUDA device {ordinal} ({e:?}): {HOW_TO_FIX}")))?;
    // The driver orders work between its two streams itself (events at layer boundaries), so
    // cudarc's per-buffer event tracking would only add overhead.
    // SAFETY: every buffer of the backend is allocated on stream 0, and stream 0 waits for
    // stream 1 before any call returns, so no buffer is freed or reused while stream 1 uses it.
    unsafe { ctx.disable_event_tracking() };
    let s0 = ctx.new_stream().map_err(|e| device_err(&name, "creating stream 0", e))?;
    let s1 = ctx.new_stream().map_err(|e| device_err(&name, "creating stream 1", e))?;
    let b0 = CudaBlas::new(s0.clone()).map_err(|e| device_err(&name, "creating a cuBLAS handle", e))?;
    let b1 = CudaBlas::new(s1.clone()).map_err(|e| device_err(&name, "creating a cuBLAS handle", e))?;
    // A GemmEx with a 16-bit C (f16/bf16 storage) must sum in f32 and round once: forbid
    // cuBLAS's reduced-precision (16-bit) split-K reductions. Default maths otherwise (no
    // TF32), so the f32 sgemm calls are unaffected.
    for b in [&b0, &b1] {
        use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode};
        // SAFETY: a valid handle, no work in flight.
        unsafe { cublasSetMathMode(*b.handle(), cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) }
            .result()
            .map_err(|e| device_err(&name, "setting the cuBLAS math mode", e))?;
    }
    let kernels = Kernels::load(&ctx, &name)?;
    use cudarc::driver::sys::{CUdevice_attribute_enum as A, CUfunction_attribute_enum as F};
    let attr = |a: A| ctx.attribute(a).map_err(|e| device_err(&name, &format!("reading {a:?}"), e));
    let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(0) as usize;
    let cooperative = attr(A::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)? != 0;
    let optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?.max(0);
    // Let the persistent kernels use all of it; if that fails they keep the default 48 KB.
    let persistent = [
        &kernels.persistent_lstm_forward,
        &kernels.persistent_gru_forward,
        &kernels.persistent_rnn_tanh_forward,
        &kernels.persistent_rnn_relu_forward,
        &kernels.persistent_lstm_backward,
        &kernels.persistent_gru_backward,
        &kernels.persistent_rnn_tanh_backward,
        &kernels.persistent_rnn_relu_backward,
    ];
    let opted_in = persistent.iter().all(|f| f.set_attribute(F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin).is_ok());
    let max_smem = if opted_in { optin as usize } else { 48 * 1024 };
    let props = Props { sms, cooperative, max_smem };
    Ok(Device { name, ctx, streams: [s0, s1], blas: [b0, b1], kernels, props, call: Mutex::new(()) })
}
