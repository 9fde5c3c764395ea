//! The CUDA backend, f32, f16 and bf16 storage: the host driver's structure on the device
//! (`driver/`), with cuBLAS for the GEMMs and one fused pointwise kernel per cell and step
//! (`kernels/*.cu`, compiled to PTX by `build.rs`).
//!
//! **Storage types** ([`CudaElement`]): `Backend<f32>`, `Backend<half::f16>` and
//! `Backend<half::bf16>` for [`Cuda`] and [`CudaHost`]. The maths is f32 for all three. With
//! 16-bit storage the weights, inputs, outputs, hidden states and every GEMM operand are
//! 16-bit; the GEMMs are `cublasGemmEx` with f32 compute (tensor cores allowed) and an f32
//! result where it feeds a kernel or a carry; the gate pre-activations, the LSTM cell state, the
//! carried gradients and the weight-gradient accumulator stay f32, and each stored value is
//! rounded once (round to nearest even). The persistent kernels are f32 only (a 16-bit call
//! takes the per-step path; requiring them is an error). The error against the f64 reference
//! is bounded in `testkit::tolerance`; DEVELOPERS.md ("f16 and bf16 storage") has the details
//! and the measured error / bound ratios.
//!
//! - `kernels.rs`: the one registry of the kernels of `kernels/*.cu` (id, file, f32/f16/bf16
//!   entries, persistent or not, typed arguments), from which the loader, the launches and the
//!   host emulation's declarations are generated.
//! - `device.rs`: opening a device (context, two streams, two cuBLAS handles) and loading the
//!   kernels, once per process and device; the device as the target of a call's work.
//! - `buffer.rs`: [`CudaBuf`], the backend's device buffer, the driver's storage-typed buffers,
//!   and the checked views the driver computes with.
//! - `exec.rs`: how the driver issues work (`Exec`, the execution context of one
//!   call) on a target: the device, or, in unit tests without a GPU, `emulation.rs` (the same
//!   kernels compiled as host C++).
//! - `driver/`: the layer, direction and time loops, forward (`forward.rs`) and backward
//!   (`backward.rs`), and the layer wavefront that overlaps a unidirectional stack's layers
//!   (`wavefront.rs`, [`Cuda::with_layer_overlap`]).
//! - `attention.rs`: attention ([`AttentionBackend`](crate::attention::AttentionBackend)`<f32>`
//!   for [`CudaHost`]) on `driver/attention.rs` and kernels/attention.cu.
//! - `tests/`: the driver on the host emulation against the f64 reference (f32, f16, bf16
//!   storage), the wavefront against the layer-by-layer order, the streams work is issued on.
//! - `external.rs`: a caller's device memory ([`BorrowedCudaBuf`]) and streams (the event
//!   handshake with the backend's), for the C ABI's device-pointer entry points.
//!
//! [`Cuda`] computes on device buffers ([`CudaBuf`]); [`CudaHost`] is the same backend on host
//! slices (upload, compute, download), for [`Rnn`](crate::Rnn), the test harnesses and the
//! case runner.
//!
//! The CUDA libraries are loaded at run time (cudarc's dynamic loading), so this builds and
//! runs everywhere; [`Cuda::new`] answers [`Error::BackendUnavailable`] with what to install
//! when there is no nvcc at build time, no driver, no device or no cuBLAS.

mod attention;
mod buffer;
mod device;
mod driver;
#[cfg(all(test, rnn_kernels_host_emulation))]
mod emulation;
mod exec;
mod external;
mod kernels;
#[cfg(all(test, rnn_kernels_host_emulation))]
mod tests;

/// The PTX of `kernels/*.cu`, written by build.rs.
#[allow(dead_code)]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

pub use attention::{CudaAttentionGrads, CudaAttentionMemory, CudaAttentionMemoryGrads, CudaAttentionOutput, CudaAttentionUpstream};
pub use buffer::CudaBuf;
pub use driver::attention::{
    DeviceAttentionGrads, DeviceAttentionMemory, DeviceAttentionMemoryGrads, DeviceAttentionOutput, DeviceAttentionUpstream,
};
pub use driver::CudaReserve;
pub use external::BorrowedCudaBuf;

use crate::backend::stack::{PlanStamp, ReserveStamp};

/// The cell options ([`RnnConfig::options`](crate::RnnConfig::options)) this backend
/// implements; `plan` refuses the others.
pub(crate) const OPTIONS: &[&str] = &[
    // The pointwise step kernels' (kernels/*_pointwise.cu).
    "peephole",
    "gate_clip",
    "input_forget",
    // kernels/gru_reset_before.cu with the driver's two products per step
    // (driver/gru_reset_before.rs).
    "linear_before_reset=false",
    // The driver's (driver/).
    "direction=reverse",
    "merge=sum",
    "batch_first",
    // kernels/dropout.cu between the layers of a training pass (driver/forward.rs, backward.rs),
    // and its variational form around the GEMMs (driver/variational_dropout.rs).
    "dropout",
    "recurrent_dropout",
    "input_dropout",
    // kernels/zoneout.cu after each step's cell and before its backward (driver/zoneout.rs).
    "zoneout",
    "zoneout_cell",
    // The row kernels of kernels/layer_norm.cu around the step kernels (driver/layer_norm.rs;
    // f32 storage).
    "layer_norm",
];
use crate::backend::host::{check_decoder_step, check_deferred_steps};
use crate::backend::{
    check_backward, check_forward, Backend, BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode, RnnPlan,
};
use crate::config::RnnConfig;
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::params::ParamLayout;
use crate::shape::SeqShape;
use buffer::{DevBuf, View};
use device::Device;
pub use driver::CudaStepGrads;
use driver::{BackwardViews, ForwardViews, SavedViews, Weights};
use exec::{device_err, Exec, Paths};
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// The element types the CUDA backend stores: `f32`, [`half::f16`] and [`half::bf16`]
/// (`Backend<T>` for [`Cuda`] and [`CudaHost`]). The maths is f32 for all three; see the
/// module docs for what is stored in 16 bits and the tolerances.
pub trait CudaElement: Element + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + sealed::Sealed {}
impl CudaElement for f32 {}
impl CudaElement for half::f16 {}
impl CudaElement for half::bf16 {}

/// The CUDA backend on one device, computing on device buffers ([`CudaBuf`]).
///
/// ```no_run
/// use rnn_kernels::Cuda;
/// match Cuda::new() {
///     Ok(cuda) => println!("{}", cuda.device_name()),
///     Err(e) => println!("no CUDA here: {e}"), // says what to install
/// }
/// ```
#[derive(Clone)]
pub struct Cuda {
    dev: Arc<Device>,
    /// The paths its calls may take: the persistent kernels (allowed, required), the layer
    /// wavefront (on, its chunk).
    paths: Paths,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.dev.name)
            .field("persistent", &self.paths.persistent)
            .field("persistent_required", &self.paths.persistent_required)
            .field("layer_overlap", &self.paths.wavefront)
            .field("wavefront_chunk", &self.paths.wavefront_chunk)
            .finish()
    }
}

impl Cuda {
    /// Device 0, or the one `RNN_KERNELS_CUDA_DEVICE` names.
    pub fn new() -> Result<Cuda> {
        let ordinal = match std::env::var("RNN_KERNELS_CUDA_DEVICE") {
            Ok(v) => v.trim().parse().map_err(|_| Error::invalid("RNN_KERNELS_CUDA_DEVICE", "a device ordinal such as 0", v))?,
            Err(_) => 0,
        };
        Cuda::with_device(ordinal)
    }

    /// Device `ordinal`. Opening a device (and loading its kernels) happens once per process;
    /// later calls share it.
    ///
    /// The persistent small-batch kernels are used where they fit unless
    /// `RNN_KERNELS_CUDA_PERSISTENT=0`; `RNN_KERNELS_CUDA_PERSISTENT=require` makes every
    /// forward or backward pass that cannot use them an error. See
    /// [`with_persistent`](Self::with_persistent).
    ///
    /// The layers of a unidirectional stack overlap (see
    /// [`with_layer_overlap`](Self::with_layer_overlap)) unless `RNN_KERNELS_CUDA_WAVEFRONT=0`;
    /// `RNN_KERNELS_CUDA_WAVEFRONT_CHUNK=K` forces its chunk of `K` steps (for tuning).
    pub fn with_device(ordinal: usize) -> Result<Cuda> {
        let mode = std::env::var("RNN_KERNELS_CUDA_PERSISTENT").unwrap_or_default();
        let (persistent, persistent_required) = match mode.trim() {
            "0" => (false, false),
            "require" => (true, true),
            _ => (true, false),
        };
        let layer_overlap = std::env::var("RNN_KERNELS_CUDA_WAVEFRONT").map_or(true, |v| v.trim() != "0");
        let wavefront_chunk = match std::env::var("RNN_KERNELS_CUDA_WAVEFRONT_CHUNK") {
            Ok(v) => {
                v.trim().parse().map_err(|_| Error::invalid("RNN_KERNELS_CUDA_WAVEFRONT_CHUNK", "a number of steps (0: automatic)", v))?
            }
            Err(_) => 0,
        };
        let paths = Paths { persistent, persistent_required, wavefront: layer_overlap, wavefront_chunk };
        Ok(Cuda { dev: device::open(ordinal)?, paths })
    }

    /// Allows (`true`) or forbids the persistent kernels: for an LSTM layer without projection,
    /// a GRU or a vanilla RNN layer with `B ≤ 8` whose `W_hh` fits in the shared memory of the
    /// device's blocks, one cooperative launch runs the whole sequence of a layer-direction with
    /// the weights on chip, instead of a cuBLAS GEMM and a pointwise kernel per step
    /// (`kernels/persistent_lstm.cu`, `kernels/persistent_cell.cu`). Backward likewise: one
    /// cooperative launch runs a layer-direction's whole reverse time loop with the `W_hh`
    /// columns of each block's units in shared memory, instead of a pointwise kernel and a
    /// cuBLAS GEMM per step (`kernels/persistent_backward.cu`); the weight gradients are the same
    /// GEMMs afterwards. Forward and backward are chosen independently (each where it fits;
    /// either backward runs from either forward's saved activations). The results agree with
    /// the per-step path to f32 rounding. `with_persistent(false)` also drops a requirement
    /// ([`require_persistent`](Self::require_persistent) or `RNN_KERNELS_CUDA_PERSISTENT=require`),
    /// so a backend built for the per-step path is one whatever the environment says.
    pub fn with_persistent(mut self, on: bool) -> Cuda {
        self.paths.persistent = on;
        self.paths.persistent_required &= on;
        self
    }

    /// Requires (`true`) the persistent kernels: a forward or backward pass with a
    /// layer-direction that cannot take one (batch over 8, projection, `W_hh` too large for the
    /// blocks' shared memory, no cooperative launch) fails with [`Error::InvalidArgument`] instead
    /// of using the per-step path. For tests and benchmarks that must measure the persistent path. Implies
    /// [`with_persistent(true)`](Self::with_persistent) when on.
    pub fn require_persistent(mut self, on: bool) -> Cuda {
        self.paths.persistent_required = on;
        self.paths.persistent |= on;
        self
    }

    /// Overlaps (`true`, the default) the layers of a unidirectional stack of two or more
    /// layers, forward (inference and training) and backward: the time axis is cut into
    /// chunks of `K` steps and layer `l+1` runs chunk `c` on one stream while layer `l` runs
    /// chunk `c+1` on the other (a layer wavefront; backward the same from the last layer
    /// down, in reverse time; `K = max(ceil(T/16), ceil(512/B))` unless
    /// `RNN_KERNELS_CUDA_WAVEFRONT_CHUNK` forces it). Bidirectional stacks, where a layer's
    /// output at step t needs its reverse direction's whole sequence, and stacks whose layers
    /// take the persistent kernels (one launch per layer for the whole sequence) run layer
    /// after layer as before. Dropout between layers (training) is applied a chunk at a time
    /// inside the wavefront, with the same masks. The input projections (forward) and the `dX` GEMMs (backward)
    /// of layers ≥ 1 are then GEMMs of `K·B` rows instead of `T·B`, for which cuBLAS may
    /// choose another algorithm: results agree with the layer-by-layer order to f32 rounding,
    /// not always bit for bit.
    pub fn with_layer_overlap(mut self, on: bool) -> Cuda {
        self.paths.wavefront = on;
        self
    }

    /// Whether the layers of a unidirectional stack overlap ([`with_layer_overlap`](Self::with_layer_overlap)).
    pub fn layer_overlap(&self) -> bool {
        self.paths.wavefront
    }

    /// Whether the persistent kernel may be chosen.
    pub fn persistent(&self) -> bool {
        self.paths.persistent
    }

    /// `cuda:N`.
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// The virtual architecture the kernels were built for (`RNN_KERNELS_CUDA_ARCH` at build
    /// time).
    pub fn ptx_arch() -> &'static str {
        ptx::ARCH
    }

    fn err(&self, op: &str, e: impl std::fmt::Debug) -> Error {
        device_err(&self.dev.name, op, e)
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: CudaElement>(&self, host: &[T]) -> Result<CudaBuf<T>> {
        let _target = self.dev.lock()?;
        if host.is_empty() {
            return self.zeros(0);
        }
        let slice = self.dev.streams[0].clone_htod(host).map_err(|e| self.err("uploading", e))?;
        Ok(CudaBuf { slice })
    }

    /// A new device buffer of `n` zeros (f32, f16 or bf16: `cuda.zeros::<half::f16>(n)`).
    pub fn zeros<T: CudaElement>(&self, n: usize) -> Result<CudaBuf<T>> {
        let _target = self.dev.lock()?;
        let slice = self.dev.streams[0].alloc_zeros::<T>(n).map_err(|e| self.err(&format!("allocating {n} {:?}", T::DTYPE), e))?;
        Ok(CudaBuf { slice })
    }

    /// Copies a device buffer to the host, after the work enqueued before it.
    pub fn download<T: CudaElement>(&self, buf: &CudaBuf<T>) -> Result<Vec<T>> {
        let mut v = vec![T::default(); buf.slice.len()];
        self.download_into(buf, &mut v)?;
        Ok(v)
    }

    /// Copies a device buffer into `host` (same length), after the work enqueued before it.
    pub fn download_into<T: CudaElement>(&self, buf: &CudaBuf<T>, host: &mut [T]) -> Result<()> {
        crate::error::check_len("host", "the device buffer's length", &[buf.slice.len()], host.len())?;
        let _target = self.dev.lock()?;
        if host.is_empty() {
            return Ok(());
        }
        let s = &self.dev.streams[0];
        s.memcpy_dtoh(&buf.slice, host).map_err(|e| self.err("downloading", e))?;
        s.synchronize().map_err(|e| self.err("synchronising", e))
    }

    /// Waits until all work enqueued so far has finished (for timing, and to surface errors
    /// of kernels that ran asynchronously).
    pub fn synchronize(&self) -> Result<()> {
        let _target = self.dev.lock()?;
        for s in &self.dev.streams {
            s.synchronize().map_err(|e| self.err("synchronising", e))?;
        }
        Ok(())
    }

    /// Device memory the backend's pool holds for later calls and no buffer uses, in bytes.
    /// A call's temporaries are freed into the device's default memory pool (`cuMemAllocAsync`)
    /// and kept there, so that the next call of a shape already seen allocates nothing from
    /// the driver; 0 on a device without memory pools.
    pub fn cached_bytes(&self) -> Result<u64> {
        let _target = self.dev.lock()?;
        self.dev.cached_bytes()
    }

    /// Waits for the work enqueued so far and hands the memory the pool holds unused back to
    /// the driver (as `torch.cuda.empty_cache()`): plans, reserves and buffers keep theirs.
    /// The pool is the device's default one, shared by every user of the device in the
    /// process.
    pub fn release_cached_memory(&self) -> Result<()> {
        let _target = self.dev.lock()?;
        self.dev.release_cached()
    }

    fn view<T: CudaElement>(&self, b: &CudaBuf<T>) -> View {
        View::of(&b.slice, &self.dev.streams[0])
    }

    /// The execution context of a forward or backward pass: storage `ty` and this backend's
    /// paths. One place for both passes, so that a setting cannot reach one and miss the other
    /// (the persistent backward was once never chosen on the device because backward's call
    /// lacked the persistent switches).
    fn exec<'t>(&self, target: &'t device::DeviceTarget<'_>, ty: Dtype) -> Exec<'t> {
        Exec::new(target).with_storage(ty).with_paths(self.paths)
    }

    fn forward<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, CudaBuf<T>>,
        output: ForwardOutput<'_, CudaBuf<T>>,
        reserve: Option<&mut CudaReserve>,
    ) -> Result<()> {
        check_forward(plan.config(), shape, &input, &output)?;
        self.check_plan(plan, T::DTYPE)?;
        let target = self.dev.lock()?;
        let exec = self.exec(&target, T::DTYPE);
        let v = |b: &CudaBuf<T>| self.view(b);
        let io = ForwardViews {
            x: v(input.x),
            h0: input.h0.map(v),
            c0: input.c0.map(v),
            y: v(output.y),
            hn: output.hn.as_deref().map(v),
            cn: output.cn.as_deref().map(v),
        };
        let Some(r) = reserve else { return driver::forward(&exec, plan.weights(), shape, io, None) };
        // Dropout between layers: the masks are the call's (an error naming them when missing,
        // before the reserve changes).
        let masks = input.masks.as_ref();
        let dropout = crate::backend::host::dropout::Dropout::for_training(plan.config(), masks)?;
        let recurrent = crate::backend::host::variational_dropout::VariationalDropout::recurrent(plan.config(), masks)?;
        let input_dropout = crate::backend::host::variational_dropout::VariationalDropout::input(plan.config(), masks)?;
        let zoneout = crate::backend::host::zoneout::Zoneout::for_pass(plan.config(), shape, true, masks)?;
        // Masks supplied by the caller cover the call (an error naming them otherwise, as on the
        // host backends); the driver uploads them (driver/masks.rs).
        if let Some(m) = masks {
            m.check_for(plan.config(), shape)?;
        }
        // Until this call has filled it, the reserve is not usable.
        r.stamp = ReserveStamp::default();
        r.dropout = dropout;
        r.recurrent_dropout = recurrent;
        r.input_dropout = input_dropout;
        r.zoneout = zoneout;
        driver::forward(&exec, plan.weights(), shape, io, Some(&mut *r))?;
        r.stamp.fill(&plan.stamp, shape);
        Ok(())
    }

    fn backward<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        reserve: &CudaReserve,
        grads: BackwardInput<'_, CudaBuf<T>>,
        output: BackwardOutput<'_, CudaBuf<T>>,
        mode: GradMode,
    ) -> Result<()> {
        self.check_plan(plan, T::DTYPE)?;
        let shape = reserve.stamp.check(&plan.stamp)?;
        check_backward(plan.config(), shape, plan.layout.len(), &grads, &output)?;
        let target = self.dev.lock()?;
        let exec = self.exec(&target, T::DTYPE);
        driver::backward(&exec, plan.weights(), shape, &SavedViews::new(reserve), self.backward_views(grads, output, mode))
    }

    /// The driver's views of a backward call's buffers.
    fn backward_views<T: CudaElement>(
        &self,
        grads: BackwardInput<'_, CudaBuf<T>>,
        output: BackwardOutput<'_, CudaBuf<T>>,
        mode: GradMode,
    ) -> BackwardViews {
        let v = |b: &CudaBuf<T>| self.view(b);
        BackwardViews {
            dy: grads.dy.map(v),
            dhn: grads.dhn.map(v),
            dcn: grads.dcn.map(v),
            dx: output.dx.as_deref().map(v),
            dh0: output.dh0.as_deref().map(v),
            dc0: output.dc0.as_deref().map(v),
            dparams: output.dparams.as_deref().map(v),
            mode,
        }
    }

    /// [`Backend::backward_step_deferred`]: a decoder step's backward without its parameters'
    /// gradients, what they are computed from kept in `acc` (device memory).
    fn backward_step_deferred<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        reserve: &CudaReserve,
        grads: BackwardInput<'_, CudaBuf<T>>,
        output: BackwardOutput<'_, CudaBuf<T>>,
        acc: &mut CudaStepGrads,
    ) -> Result<bool> {
        self.check_plan(plan, T::DTYPE)?;
        let shape = reserve.stamp.check(&plan.stamp)?;
        check_backward(plan.config(), shape, plan.layout.len(), &grads, &output)?;
        check_decoder_step(plan.config(), shape, "reserve")?;
        if output.dparams.is_some() {
            return Err(Error::invalid(
                "dparams",
                "none: a deferred step's parameter gradients come from the product over all the steps at the end",
                "a buffer",
            ));
        }
        if acc.steps() > 0 && acc.batch() != shape.batch() {
            return Err(Error::invalid(
                "reserve",
                format!("a step of B = {}, the batch of the steps walked back before", acc.batch()),
                format!("B = {}", shape.batch()),
            ));
        }
        let target = self.dev.lock()?;
        let exec = self.exec(&target, T::DTYPE);
        let g = self.backward_views(grads, output, GradMode::Accumulate);
        driver::backward_step(&exec, plan.weights(), shape, &SavedViews::new(reserve), g, acc)?;
        Ok(true)
    }

    /// [`Backend::deferred_param_grads`]: the parameters' gradients of the steps walked back
    /// into `acc`, one product per weight over all the steps' rows.
    fn deferred_param_grads<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        reserves: &[CudaReserve],
        acc: CudaStepGrads,
        dparams: &mut CudaBuf<T>,
        mode: GradMode,
    ) -> Result<()> {
        self.check_plan(plan, T::DTYPE)?;
        check_deferred(plan, reserves, &acc, T::DTYPE)?;
        plan.layout.check_buffer("dparams", dparams.slice.len())?;
        let target = self.dev.lock()?;
        let exec = self.exec(&target, T::DTYPE);
        let steps: Vec<SavedViews> = reserves.iter().map(SavedViews::new).collect();
        driver::deferred_params(&exec, plan.weights(), &steps, &acc, self.view(dparams), mode)
    }

    fn check_plan(&self, plan: &CudaPlan, ty: Dtype) -> Result<()> {
        if plan.device != self.dev.name {
            return Err(Error::invalid("plan", format!("a plan made on {}", self.dev.name), format!("a plan made on {}", plan.device)));
        }
        if plan.weights.ty() != ty {
            return Err(Error::invalid(
                "plan",
                format!("a plan of {ty:?} weights (the buffers' type)"),
                format!("a plan of {:?} weights", plan.weights.ty()),
            ));
        }
        Ok(())
    }

    /// Copies `params` into the plan's weights, on stream 0.
    fn copy_weights<T: CudaElement>(&self, target: &device::DeviceTarget<'_>, weights: &DevBuf, params: &CudaBuf<T>) -> Result<()> {
        Exec::new(target).copy(0, weights.view(), self.view(params))
    }

    fn plan<T: CudaElement>(&self, config: &RnnConfig, params: &CudaBuf<T>) -> Result<CudaPlan> {
        crate::backend::check_options(&self.dev.name, config, OPTIONS)?;
        let layout = ParamLayout::new(config);
        layout.check_buffer("params", params.slice.len())?;
        let target = self.dev.lock()?;
        let weights = Exec::new(&target).alloc(T::DTYPE, layout.len())?;
        self.copy_weights(&target, &weights, params)?;
        Ok(CudaPlan { layout, weights, device: self.dev.name.clone(), stamp: PlanStamp::new() })
    }

    fn update_plan<T: CudaElement>(&self, plan: &mut CudaPlan, params: &CudaBuf<T>) -> Result<()> {
        self.check_plan(plan, T::DTYPE)?;
        plan.layout.check_buffer("params", params.slice.len())?;
        self.copy_weights(&self.dev.lock()?, &plan.weights, params)?;
        plan.stamp.bump();
        Ok(())
    }

    /// Copies the plan's weights into `params`, on stream 0 (device to device).
    fn read_params<T: CudaElement>(&self, plan: &CudaPlan, params: &mut CudaBuf<T>) -> Result<()> {
        self.check_plan(plan, T::DTYPE)?;
        plan.layout.check_buffer("params", params.slice.len())?;
        let target = self.dev.lock()?;
        Exec::new(&target).copy(0, self.view(params), plan.weights.view())
    }
}

/// The CUDA backend's plan: the configuration and a device copy of the weights (PyTorch
/// layout, the GEMMs read it in place), with an identity and version so that a reserve is only
/// used with the weights that filled it.
pub struct CudaPlan {
    layout: ParamLayout,
    /// The weights, of the storage type of the calls that may use the plan.
    weights: DevBuf,
    device: String,
    stamp: PlanStamp,
}

impl std::fmt::Debug for CudaPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaPlan")
            .field("config", self.layout.config())
            .field("dtype", &self.weights.ty())
            .field("device", &self.device)
            .finish()
    }
}

impl CudaPlan {
    fn weights(&self) -> Weights<'_> {
        Weights { layout: &self.layout, w: self.weights.view() }
    }
}

impl RnnPlan for CudaPlan {
    fn config(&self) -> &RnnConfig {
        self.layout.config()
    }
}

/// The checks of [`Backend::deferred_param_grads`] before anything runs: `reserves` the
/// one-step reserves of a decoder's steps with `plan`'s weights, all of one batch, and `acc`
/// what the backward of each kept, walked with such a plan (`storage` its type). Returns `B`.
fn check_deferred(plan: &CudaPlan, reserves: &[CudaReserve], acc: &CudaStepGrads, storage: Dtype) -> Result<usize> {
    let cfg = plan.config();
    let bl = check_deferred_steps(cfg, &plan.stamp, reserves.iter().map(|r| &r.stamp), acc.steps())?;
    if !acc.fits(cfg, bl, storage) {
        return Err(Error::invalid(
            "acc",
            format!("the gradients of steps of this plan walked back with B = {bl}"),
            format!("the gradients of steps of B = {} or of another plan", acc.batch()),
        ));
    }
    Ok(bl)
}

/// The `Backend` impl of [`Cuda`] (device buffers) and [`CudaHost`] (host slices): the same
/// methods, each the type's inherent one of the same name.
macro_rules! cuda_backend {
    ($(#[$doc:meta])* $ty:ty, $buf:ty) => {
        $(#[$doc])*
        impl<T: CudaElement> Backend<T> for $ty {
            type Buf = $buf;
            type Plan = CudaPlan;
            type Reserve = CudaReserve;
            type StepGrads = CudaStepGrads;

            fn name(&self) -> String {
                self.device_name().to_string()
            }

            fn plan(&self, config: &RnnConfig, params: &$buf) -> Result<CudaPlan> {
                <$ty>::plan(self, config, params)
            }

            fn update_plan(&self, plan: &mut CudaPlan, params: &$buf) -> Result<()> {
                <$ty>::update_plan(self, plan, params)
            }

            fn read_params(&self, plan: &CudaPlan, params: &mut $buf) -> Result<()> {
                <$ty>::read_params(self, plan, params)
            }

            fn forward_inference(
                &self,
                plan: &CudaPlan,
                shape: &SeqShape,
                input: ForwardInput<'_, $buf>,
                output: ForwardOutput<'_, $buf>,
            ) -> Result<()> {
                <$ty>::forward(self, plan, shape, input, output, None)
            }

            fn forward_training(
                &self,
                plan: &CudaPlan,
                shape: &SeqShape,
                input: ForwardInput<'_, $buf>,
                output: ForwardOutput<'_, $buf>,
                reserve: &mut CudaReserve,
            ) -> Result<()> {
                <$ty>::forward(self, plan, shape, input, output, Some(reserve))
            }

            fn backward(
                &self,
                plan: &CudaPlan,
                reserve: &CudaReserve,
                grads: BackwardInput<'_, $buf>,
                output: BackwardOutput<'_, $buf>,
                mode: GradMode,
            ) -> Result<()> {
                <$ty>::backward(self, plan, reserve, grads, output, mode)
            }

            fn backward_step_deferred(
                &self,
                plan: &CudaPlan,
                reserve: &CudaReserve,
                grads: BackwardInput<'_, $buf>,
                output: BackwardOutput<'_, $buf>,
                acc: &mut CudaStepGrads,
            ) -> Result<bool> {
                <$ty>::backward_step_deferred(self, plan, reserve, grads, output, acc)
            }

            fn deferred_param_grads(
                &self,
                plan: &CudaPlan,
                reserves: &[CudaReserve],
                acc: CudaStepGrads,
                dparams: &mut $buf,
                mode: GradMode,
            ) -> Result<()> {
                <$ty>::deferred_param_grads(self, plan, reserves, acc, dparams, mode)
            }
        }
    };
}

cuda_backend!(
    /// f32, f16 and bf16 storage; see the module docs.
    Cuda,
    CudaBuf<T>
);
cuda_backend!(
    /// f32, f16 and bf16 storage, as [`Cuda`].
    CudaHost,
    [T]
);

/// The CUDA backend on host slices: each call uploads its inputs, runs on the device and
/// downloads its outputs (the plan and the reserve stay on the device). For
/// [`Rnn`](crate::Rnn) and code written against `Backend<T, Buf = [T]>` (`T` f32, f16 or bf16); use [`Cuda`]
/// directly to keep a whole model on the device.
#[derive(Clone, Debug)]
pub struct CudaHost(pub Cuda);

impl CudaHost {
    // The helpers are generic over the element type as the backend is.
    /// [`Cuda::new`] on host slices.
    pub fn new() -> Result<CudaHost> {
        Ok(CudaHost(Cuda::new()?))
    }

    fn up_opt<T: CudaElement>(&self, v: Option<&[T]>) -> Result<Option<CudaBuf<T>>> {
        v.map(|v| self.0.upload(v)).transpose()
    }

    fn zeros_like<T: CudaElement>(&self, v: &Option<&mut [T]>) -> Result<Option<CudaBuf<T>>> {
        v.as_ref().map(|v| self.0.zeros(v.len())).transpose()
    }

    fn down_opt<T: CudaElement>(&self, d: Option<CudaBuf<T>>, h: Option<&mut [T]>) -> Result<()> {
        if let (Some(d), Some(h)) = (d, h) {
            self.0.download_into(&d, h)?;
        }
        Ok(())
    }

    fn device_name(&self) -> &str {
        self.0.device_name()
    }

    fn plan<T: CudaElement>(&self, config: &RnnConfig, params: &[T]) -> Result<CudaPlan> {
        crate::backend::check_options("cuda-host", config, OPTIONS)?;
        ParamLayout::new(config).check_buffer("params", params.len())?;
        self.0.plan(config, &self.0.upload(params)?)
    }

    fn update_plan<T: CudaElement>(&self, plan: &mut CudaPlan, params: &[T]) -> Result<()> {
        plan.layout.check_buffer("params", params.len())?;
        self.0.update_plan(plan, &self.0.upload(params)?)
    }

    fn read_params<T: CudaElement>(&self, plan: &CudaPlan, params: &mut [T]) -> Result<()> {
        plan.layout.check_buffer("params", params.len())?;
        let mut d = self.0.zeros(params.len())?;
        self.0.read_params(plan, &mut d)?;
        self.0.download_into(&d, params)
    }

    fn forward<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
        reserve: Option<&mut CudaReserve>,
    ) -> Result<()> {
        // The same checks on the host slices first, so no upload happens for a wrong call.
        check_forward(plan.config(), shape, &input, &output)?;
        let x = self.0.upload(input.x)?;
        let (h0, c0) = (self.up_opt(input.h0)?, self.up_opt(input.c0)?);
        let mut y = self.0.zeros(output.y.len())?;
        let (mut hn, mut cn) = (self.zeros_like(&output.hn)?, self.zeros_like(&output.cn)?);
        let di = ForwardInput { x: &x, h0: h0.as_ref(), c0: c0.as_ref(), masks: input.masks.clone() };
        let dout = ForwardOutput { y: &mut y, hn: hn.as_mut(), cn: cn.as_mut() };
        self.0.forward(plan, shape, di, dout, reserve)?;
        self.0.download_into(&y, output.y)?;
        self.down_opt(hn, output.hn)?;
        self.down_opt(cn, output.cn)
    }

    fn backward<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        reserve: &CudaReserve,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        mode: GradMode,
    ) -> Result<()> {
        let shape = reserve.stamp.check(&plan.stamp)?;
        check_backward(plan.config(), shape, plan.layout.len(), &grads, &output)?;
        // Accumulate adds into the caller's values: upload them.
        let BackwardOutput { dx, dh0, dc0, dparams } = output;
        let mut dp = match (&dparams, mode) {
            (Some(p), GradMode::Accumulate) => Some(self.0.upload(p)?),
            (Some(p), GradMode::Overwrite) => Some(self.0.zeros(p.len())?),
            (None, _) => None,
        };
        let output = BackwardOutput { dx, dh0, dc0, dparams: None };
        self.on_device(grads, output, dp.as_mut(), |grads, output| self.0.backward(plan, reserve, grads, output, mode))?;
        self.down_opt(dp, dparams)
    }

    /// Runs `f` on device copies of a backward call's incoming gradients, with zeroed device
    /// buffers for the `dx`, `dh0`, `dc0` wanted (and the device `dparams` given), then
    /// downloads those into `output`'s.
    fn on_device<T: CudaElement, R>(
        &self,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        dparams: Option<&mut CudaBuf<T>>,
        f: impl FnOnce(BackwardInput<'_, CudaBuf<T>>, BackwardOutput<'_, CudaBuf<T>>) -> Result<R>,
    ) -> Result<R> {
        let dy = self.up_opt(grads.dy)?;
        let (dhn, dcn) = (self.up_opt(grads.dhn)?, self.up_opt(grads.dcn)?);
        let mut dx = self.zeros_like(&output.dx)?;
        let (mut dh0, mut dc0) = (self.zeros_like(&output.dh0)?, self.zeros_like(&output.dc0)?);
        let r = f(
            BackwardInput { dy: dy.as_ref(), dhn: dhn.as_ref(), dcn: dcn.as_ref() },
            BackwardOutput { dx: dx.as_mut(), dh0: dh0.as_mut(), dc0: dc0.as_mut(), dparams },
        )?;
        self.down_opt(dx, output.dx)?;
        self.down_opt(dh0, output.dh0)?;
        self.down_opt(dc0, output.dc0)?;
        Ok(r)
    }

    fn backward_step_deferred<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        reserve: &CudaReserve,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        acc: &mut CudaStepGrads,
    ) -> Result<bool> {
        // The same checks on the host slices first, so no upload happens for a wrong call.
        let shape = reserve.stamp.check(&plan.stamp)?;
        check_backward(plan.config(), shape, plan.layout.len(), &grads, &output)?;
        if output.dparams.is_some() {
            return Err(Error::invalid(
                "dparams",
                "none: a deferred step's parameter gradients come from the product over all the steps at the end",
                "a buffer",
            ));
        }
        self.on_device(grads, output, None, |grads, output| self.0.backward_step_deferred(plan, reserve, grads, output, acc))
    }

    fn deferred_param_grads<T: CudaElement>(
        &self,
        plan: &CudaPlan,
        reserves: &[CudaReserve],
        acc: CudaStepGrads,
        dparams: &mut [T],
        mode: GradMode,
    ) -> Result<()> {
        check_deferred(plan, reserves, &acc, T::DTYPE)?;
        plan.layout.check_buffer("dparams", dparams.len())?;
        // Accumulate adds into the caller's values: upload them.
        let mut dp = match mode {
            GradMode::Accumulate => self.0.upload(dparams)?,
            GradMode::Overwrite => self.0.zeros(dparams.len())?,
        };
        self.0.deferred_param_grads(plan, reserves, acc, &mut dp, mode)?;
        self.0.download_into(&dp, dparams)
    }
}
