//! One CUDA device as the backend uses it: its context, two streams (one per direction) with a
//! cuBLAS handle each, and the kernels of the registry (`kernels.rs`), loaded once per process
//! and device and cached; and [`DeviceTarget`], the [`Target`] a call's work runs on.

use super::buffer::{DevBuf, RawBuf};
use super::exec::{device_err, persistent_shape, Event, GemmArgs, Target};
use super::kernels::{KernelArgs, KernelId, PERSISTENT_THREADS};
use super::ptx;
use crate::element::Dtype;
use crate::error::{Error, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, LaunchConfig};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

/// How to get a driver, a device or cuBLAS: said by every "unavailable" error.
const HOW_TO_FIX: &str = "the CUDA backend needs an NVIDIA GPU, its driver (libcuda.so, CUDA 13.0 or newer) and cuBLAS \
    (libcublas.so, e.g. `pip install nvidia-cublas` with its lib folder on LD_LIBRARY_PATH); use the cpu backend otherwise";

/// The entries of every kernel of the registry ([`KernelId::ALL`]), by kernel and storage type
/// (f32, f16, bf16; `None` where the kernel has no entry of that type).
pub(crate) struct Kernels {
    functions: Vec<[Option<CudaFunction>; 3]>,
    /// Keeps the modules loaded as long as the functions are used.
    _modules: Vec<Arc<CudaModule>>,
}

/// The index of a storage type in [`Kernels`].
fn dtype_index(ty: Dtype) -> usize {
    match ty {
        Dtype::F16 => 1,
        Dtype::BF16 => 2,
        _ => 0,
    }
}

const STORAGE: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

impl Kernels {
    /// Loads every file the registry names once, and every entry of every kernel from it.
    fn load(ctx: &Arc<CudaContext>, name: &str) -> Result<Kernels> {
        let mut modules: Vec<(&str, Arc<CudaModule>)> = Vec::new();
        let mut functions = Vec::with_capacity(KernelId::ALL.len());
        for &k in KernelId::ALL {
            let file = k.file();
            let module = match modules.iter().find(|(f, _)| *f == file) {
                Some((_, m)) => m.clone(),
                None => {
                    let src = ptx::FILES.iter().find(|(f, _)| *f == file).map_or("", |(_, src)| *src);
                    let m = ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(src))
                        .map_err(|e| device_err(name, &format!("loading the PTX of kernels/{file}.cu (built for {})", ptx::ARCH), e))?;
                    modules.push((file, m.clone()));
                    m
                }
            };
            let entry = |ty: Dtype| -> Result<Option<CudaFunction>> {
                k.entry(ty)
                    .map(|entry| module.load_function(entry).map_err(|e| device_err(name, &format!("finding kernel {entry}"), e)))
                    .transpose()
            };
            functions.push([entry(STORAGE[0])?, entry(STORAGE[1])?, entry(STORAGE[2])?]);
        }
        Ok(Kernels { functions, _modules: modules.into_iter().map(|(_, m)| m).collect() })
    }

    /// The entry of `k` for storage type `ty`.
    #[track_caller]
    pub fn get(&self, k: KernelId, ty: Dtype) -> &CudaFunction {
        self.functions[k as usize][dtype_index(ty)].as_ref().unwrap_or_else(|| panic!("{k:?} has no {ty:?} entry"))
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
    keep_pool_memory(&ctx, &name)?;
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
    use cudarc::driver::sys::{CUdevice_attribute_enum as Attr, CUfunction_attribute_enum as F};
    let attr = |a: Attr| ctx.attribute(a).map_err(|e| device_err(&name, &format!("reading {a:?}"), e));
    let sms = attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(0) as usize;
    let cooperative = attr(Attr::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)? != 0;
    let optin = attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?.max(0);
    // Let the persistent kernels use all of it; if that fails they keep the default 48 KB.
    let opted_in = KernelId::ALL
        .iter()
        .filter(|k| k.persistent())
        .all(|&k| kernels.get(k, Dtype::F32).set_attribute(F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin).is_ok());
    let max_smem = if opted_in { optin as usize } else { 48 * 1024 };
    let props = Props { sms, cooperative, max_smem };
    Ok(Device { name, ctx, streams: [s0, s1], blas: [b0, b1], kernels, props, call: Mutex::new(()) })
}

/// The device's default memory pool, where cudarc allocates (`cuMemAllocAsync`) when the device
/// has memory pools; `None` otherwise (cudarc then allocates with `cuMemAlloc`).
fn default_pool(ctx: &CudaContext, name: &str) -> Result<Option<cudarc::driver::sys::CUmemoryPool>> {
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    let mut pool = std::ptr::null_mut();
    // SAFETY: an out pointer to a local, the context's own device.
    unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(|e| device_err(name, "reading the default memory pool", e))?;
    Ok(Some(pool))
}

/// The memory pool of the backend's buffers keeps what is freed into it: every call's
/// temporaries are freed at its end, and with the pool's default release threshold (0) the
/// driver would hand that memory back at each synchronisation (every download), so the next
/// call would allocate it again from the driver. With the threshold at its maximum, a call of
/// a shape already seen allocates from the pool only (PyTorch's caching allocator does the
/// same for its own memory); [`Device::release_cached`] hands the unused part back.
fn keep_pool_memory(ctx: &CudaContext, name: &str) -> Result<()> {
    let Some(pool) = default_pool(ctx, name)? else { return Ok(()) };
    let mut threshold = u64::MAX;
    use cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: the device's pool, an attribute of type cuuint64_t read from a local.
    unsafe { cudarc::driver::sys::cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&mut threshold as *mut u64).cast()) }
        .result()
        .map_err(|e| device_err(name, "setting the memory pool's release threshold", e))
}

impl Device {
    /// Memory the pool holds that no buffer uses, in bytes (0 without memory pools).
    pub fn cached_bytes(&self) -> Result<u64> {
        let Some(pool) = default_pool(&self.ctx, &self.name)? else { return Ok(0) };
        use cudarc::driver::sys::CUmemPool_attribute::{CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, CU_MEMPOOL_ATTR_USED_MEM_CURRENT};
        let read = |attr| -> Result<u64> {
            let mut v = 0u64;
            // SAFETY: the device's pool, an attribute of type cuuint64_t written to a local.
            unsafe { cudarc::driver::sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) }
                .result()
                .map_err(|e| device_err(&self.name, "reading the memory pool's size", e))?;
            Ok(v)
        };
        Ok(read(CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?.saturating_sub(read(CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?))
    }

    /// Hands the memory the pool holds unused back to the driver (after the streams' work has
    /// finished; the caller holds the call lock).
    pub fn release_cached(&self) -> Result<()> {
        let Some(pool) = default_pool(&self.ctx, &self.name)? else { return Ok(()) };
        for s in &self.streams {
            s.synchronize().map_err(|e| device_err(&self.name, "synchronising", e))?;
        }
        // SAFETY: the device's pool; memory in use is not released.
        unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, 0) }.result().map_err(|e| device_err(&self.name, "trimming the memory pool", e))
    }

    /// The device as the target of one call: takes the call lock and binds the context to this
    /// thread.
    pub fn lock(&self) -> Result<DeviceTarget<'_>> {
        let lock = self.call.lock().unwrap_or_else(|p| p.into_inner());
        self.ctx.bind_to_thread().map_err(|e| device_err(&self.name, "binding the context", e))?;
        Ok(DeviceTarget { dev: self, _lock: lock })
    }
}

/// A device with its call lock held: where the work of one call runs.
pub(crate) struct DeviceTarget<'a> {
    dev: &'a Device,
    _lock: std::sync::MutexGuard<'a, ()>,
}

impl DeviceTarget<'_> {
    fn err(&self, op: &str, e: impl std::fmt::Debug) -> Error {
        device_err(&self.dev.name, op, e)
    }
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl Target for DeviceTarget<'_> {
    fn alloc(&self, ty: Dtype, n: usize) -> Result<DevBuf> {
        let s = &self.dev.streams[0];
        // SAFETY: bytes have no invalid bit patterns; callers write before reading.
        let slice = unsafe { s.alloc::<u8>((n * ty.size()).max(4)) }.map_err(|e| self.err(&format!("allocating {n} {ty:?}"), e))?;
        let ptr = slice.device_ptr(s).0;
        Ok(DevBuf::new(RawBuf::new(ptr, Box::new(slice)), n, ty))
    }

    fn upload_i32(&self, values: &[i32]) -> Result<RawBuf> {
        let s = &self.dev.streams[0];
        let slice = s.clone_htod(values).map_err(|e| self.err("uploading i32 values (lengths, indices, mask bits)", e))?;
        let ptr = slice.device_ptr(s).0;
        Ok(RawBuf::new(ptr, Box::new(slice)))
    }

    fn gemm(&self, si: usize, g: &GemmArgs, ab: Dtype, c: Dtype, alpha: f32, beta: f32) -> Result<()> {
        use cudarc::cublas::result::{gemm_ex, sgemm};
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        let handle = *self.dev.blas[si].handle();
        let (ta, tb, m, n, k) = (op(g.transa), op(g.transb), g.m, g.n, g.k);
        if (ab, c) == (Dtype::F32, Dtype::F32) {
            let (a, b, c) = (g.a as *const f32, g.b as *const f32, g.c as *mut f32);
            // SAFETY: the three views were checked to hold their [rows, cols] (View::mat), the
            // sizes fit i32 (check_sizes), and the handle belongs to stream si of this context.
            return unsafe { sgemm(handle, ta, tb, m, n, k, &alpha, a, g.lda, b, g.ldb, &beta, c, g.ldc) }
                .map_err(|e| self.err("cublasSgemm", e));
        }
        let dt = |t: Dtype| match t {
            Dtype::F16 => cudaDataType::CUDA_R_16F,
            Dtype::BF16 => cudaDataType::CUDA_R_16BF,
            _ => cudaDataType::CUDA_R_32F,
        };
        let (a, b, cp) = (g.a as *const std::ffi::c_void, g.b as *const std::ffi::c_void, g.c as *mut std::ffi::c_void);
        let (alpha, beta) = ((&alpha as *const f32).cast(), (&beta as *const f32).cast());
        let (ab, c, f32_compute) = (dt(ab), dt(c), cublasComputeType_t::CUBLAS_COMPUTE_32F);
        // SAFETY: as for sgemm; alpha and beta are f32 as CUBLAS_COMPUTE_32F requires, and the
        // type pairs (16F/16F/32F, 16F/16F/16F and the 16BF ones) are supported combinations.
        unsafe {
            gemm_ex(
                handle,
                ta,
                tb,
                m,
                n,
                k,
                alpha,
                a,
                ab,
                g.lda,
                b,
                ab,
                g.ldb,
                beta,
                cp,
                c,
                g.ldc,
                f32_compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| self.err("cublasGemmEx", e))
    }

    fn gemm_batched(&self, si: usize, g: &GemmArgs, strides: [usize; 3], count: usize, alpha: f32, beta: f32) -> Result<()> {
        use cudarc::cublas::result::sgemm_strided_batched;
        let handle = *self.dev.blas[si].handle();
        let (a, b, c) = (g.a as *const f32, g.b as *const f32, g.c as *mut f32);
        let count = i32::try_from(count).map_err(|_| Error::invalid("batch", "at most 2^31 - 1 sequences", count))?;
        let [sa, sb, sc] = strides.map(|s| s as i64);
        // SAFETY: as for sgemm, for each matrix of the batch (the caller checked the last one of
        // each operand against its buffer); the outputs do not overlap.
        unsafe {
            sgemm_strided_batched(
                handle,
                op(g.transa),
                op(g.transb),
                g.m,
                g.n,
                g.k,
                &alpha,
                a,
                g.lda,
                sa,
                b,
                g.ldb,
                sb,
                &beta,
                c,
                g.ldc,
                sc,
                count,
            )
        }
        .map_err(|e| self.err("cublasSgemmStridedBatched", e))
    }

    fn launch(&self, si: usize, kernel: KernelId, ty: Dtype, cfg: LaunchConfig, args: &dyn KernelArgs) -> Result<()> {
        let mut l = self.dev.streams[si].launch_builder(self.dev.kernels.get(kernel, ty));
        args.push(&mut l);
        // SAFETY: the argument struct is the kernel's own (its type is the registry's for this
        // kernel, its fields the C signature), and every pointer is a View checked to hold what
        // the kernel touches.
        let r = unsafe {
            if kernel.persistent() {
                l.launch_cooperative(cfg)
            } else {
                l.launch(cfg)
            }
        };
        r.map(drop).map_err(|e| self.err(&format!("{kernel:?}"), e))
    }

    fn copy(&self, si: usize, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: both views hold the bytes (checked by the caller).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.dev.streams[si].cu_stream()) }
            .map_err(|e| self.err("copying device memory", e))
    }

    fn order(&self, to: usize, from: usize) -> Result<()> {
        self.dev.streams[to].join(&self.dev.streams[from]).map_err(|e| self.err("ordering the streams", e))
    }

    fn record(&self, si: usize) -> Result<Event> {
        self.dev.streams[si].record_event(None).map(|e| Event(Some(e))).map_err(|e| self.err("recording an event", e))
    }

    fn wait(&self, si: usize, e: &Event) -> Result<()> {
        match &e.0 {
            Some(ev) => self.dev.streams[si].wait(ev).map_err(|e| self.err("waiting for an event", e)),
            None => Ok(()),
        }
    }

    fn persistent_units(&self, kernel: KernelId, h: usize, dirs: usize, smem: &dyn Fn(usize) -> usize) -> Option<usize> {
        let p = self.dev.props;
        if !p.cooperative {
            return None;
        }
        let (units, smem) = persistent_shape(smem, h, dirs, p.sms, p.max_smem)?;
        let f = self.dev.kernels.get(kernel, Dtype::F32);
        let blocks = h.div_ceil(units);
        let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(PERSISTENT_THREADS, smem, None).ok()? as usize;
        (per_sm * p.sms >= blocks * dirs).then_some(units)
    }
}
