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
//! each with its own cuBLAS handle; stream 0 waits for stream 1 at the end of each layer. A
//! direction runs in reverse when it is the second of a bidirectional layer or the only one of
//! a reverse-only stack. With merge by sum the reverse direction writes its output into a
//! temporary and, after the join, one kernel adds it onto the forward direction's
//! (`y = y_fwd + y_rev`, util.cu's `add_*`); backward, both directions read the whole `dy`.
//!
//! The cell options (peepholes, gate clip, coupled input-forget) take other entries of the
//! same step kernels, chosen once per layer-direction (`options.rs`); the persistent kernels
//! run the plain cells only and decline a layer with an option (it takes the per-step path;
//! required, that is an `Error::Unsupported` naming the option). A GRU with the reset gate
//! before the recurrent matmul (`linear_before_reset = false`) runs two GEMMs and two kernels
//! per step (`gru_reset_before.rs`). Layer norm adds row kernels around the same passes
//! (`layer_norm.rs`).
//!
//! Batch-first `x`, `y` (and `dx`, `dy`): the passes run time-major, with one transposing copy
//! on the way in and out (util.cu's `swap_axes_*`: `x` and `dy` into temporaries, `y` and `dx`
//! out of them; a training pass's reserve keeps the time-major `x`). Not yet: reading `x` with a
//! strided-batched input GEMM and writing `y` through the step kernels' row stride, which would
//! save those copies.
//! Everything is allocated on stream 0 before the fork, so nothing is freed while in use: both
//! passes allocate the buffers of every layer before they enqueue any layer's work.
//!
//! Layers overlap in a unidirectional stack of two or more layers (the **layer wavefront**,
//! `wavefront.rs`; on unless `Paths::wavefront` turns it off):
//! the time axis is cut into chunks of `K` steps (`wavefront::wavefront_chunk`); layer `l`'s chunk `c`
//! is its input-projection GEMM for those steps and its step loop over them, on stream
//! `l mod 2`, after waiting for an event layer `l-1` recorded after its chunk `c`. The work is
//! issued in diagonals (`d = 0, 1, ...`; for each layer `l`, chunk `c = d - l`), so that two
//! streams pipeline a stack of any depth (with dropout, a chunk ends with dropping its rows of
//! the layer's output). Layer 0 keeps its whole-sequence projection (the
//! same GEMM as without the wavefront); the projections of layers ≥ 1 have `K·B` rows, for
//! which cuBLAS may pick another algorithm, so results agree with the layer-by-layer order to
//! f32 rounding on the device (bit for bit on the host emulation, whose sgemm computes each
//! row on its own). Backward likewise, from the last layer down and in reverse time: layer
//! `l`'s chunk is its step loop over the chunk and the chunk's rows of `dX = dGi · W_ih`
//! (layer `l-1`'s `dy`), after layer `l+1`'s chunk; weight gradients and layer 0's `dx` stay
//! whole-sequence GEMMs after a layer's last chunk. Not overlapped: bidirectional stacks (a
//! layer's output at step t needs its reverse direction's whole sequence), reverse-only stacks
//! (their chunks would run backwards in time; not implemented), stacks whose
//! layers take a persistent kernel (one launch for a layer's whole sequence cannot be cut into
//! chunks; all layers of a stack share the sizes that choice depends on), and the backward of
//! layer-normalised stacks (`layer_norm.rs`).
//!
//! Dropout between layers (a training pass of a configuration with `dropout`): kernels/dropout.cu
//! multiplies the output of each layer but the last in place by the factors of the call's masks
//! (`CudaReserve::dropout`, set by `Cuda::forward` from `ForwardInput::masks`) before the next
//! layer reads it; backward multiplies each `dX` above layer 0 by the same factors, regenerated
//! from the reserve's stream. Layer by layer, a layer's whole output (or `dX`) at once, on stream
//! 0 after its directions (and the merge); in the wavefront, each chunk's rows after the layer's
//! chunk (forward: its step loop; backward: its `dX` rows), on the layer's stream before the
//! event the next layer waits for. A factor depends on its absolute step only (the kernel takes
//! the chunk's first step), so both orders drop the same units.
//!
//! Storage type ([`Exec::storage`]): f32, or f16/bf16 for the weights, `x`, `y`, the states `h`
//! (and the LSTM's `m`), the layer outputs, `dG` and every gradient returned (all GEMM operands
//! are 16-bit then, each GEMM accumulating in f32); the gate pre-activations `XG`, `HG`, the
//! saved gates, the LSTM cell state and the carried `dh`, `dc` stay f32, and the weight
//! gradients accumulate over all steps (and onto the caller's, with `Accumulate`) in an f32
//! buffer, rounded once at the end. Copies between an f32 and a 16-bit view convert.
//!
//! Each pass is written in steps, one function each: allocation (every buffer of every
//! layer, with the path each layer-direction takes: persistent kernel or per-step loop), then
//! scheduling (layer by layer, or the wavefront), each layer-direction's work being one struct
//! (`forward::DirForward`, `backward::DirBackward`) that holds its sizes, weights,
//! inputs, outputs and buffers.
//!
//! - `forward.rs`, `backward.rs`: the passes, their allocation and their per-direction work;
//! - `wavefront.rs`: the layer wavefront's chunk and its schedules;
//! - `layer_norm.rs`: the layer-normalised cells' additions to both passes;
//! - `variational_dropout.rs`, `zoneout.rs`: recurrent and input dropout around the GEMMs, and
//!   zoneout after each step's cell (and before its backward);
//! - here: what both passes share (the reserve, the weights of a layer, the temporaries, the
//!   join of stream 1 after a failure).

pub(crate) mod attention;
mod backward;
mod forward;
mod gru_reset_before;
mod layer_norm;
mod masks;
pub(in crate::backend::cuda) mod options;
mod variational_dropout;
mod wavefront;
mod zoneout;

pub use backward::CudaStepGrads;
pub(crate) use backward::{backward, backward_step, deferred_params, BackwardViews};
pub(crate) use forward::{forward, ForwardViews};
pub(crate) use masks::{DeviceMasks, MaskViews, SiteHits};
#[cfg(all(test, rnn_kernels_host_emulation))]
pub(crate) use wavefront::wavefront_chunk;

use super::buffer::{DevBuf, RawBuf, View};
use super::exec::Exec;
use crate::backend::cell::Saved;
use crate::backend::host::dropout::Dropout;
use crate::backend::host::variational_dropout::VariationalDropout;
use crate::backend::host::zoneout::Zoneout;
use crate::backend::stack::ReserveStamp;
use crate::config::RnnConfig;
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::params::{LayerRanges, ParamLayout};
use crate::shape::SeqShape;

/// What the CUDA backend's training forward pass saves for backward, in device memory.
///
/// Create an empty one with `Default`; its buffers are reused while shapes repeat.
#[derive(Debug, Default)]
pub struct CudaReserve {
    /// The plan and shape of the call that filled it.
    pub(crate) stamp: ReserveStamp,
    /// `[B]` lengths as i32.
    lengths: Option<RawBuf>,
    // x, h0 and outputs are of the storage type, c0 f32.
    /// `[T, B, I]`.
    x: Option<DevBuf>,
    /// `[L·D, B, Hout]`, zeros when not given.
    h0: Option<DevBuf>,
    /// `[L·D, B, H]` (LSTM), zeros when not given.
    c0: Option<DevBuf>,
    /// Per layer but the last, `[T, B, D·Hout]`: the next layer's input.
    outputs: Vec<Option<DevBuf>>,
    /// Per layer and direction (`l·D + d`): `m` and `h` of the storage type, the others f32.
    dirs: Vec<Saved<Option<DevBuf>>>,
    /// The dropout between layers of the training pass that fills it (set before the pass:
    /// `Cuda::forward`); backward regenerates its masks.
    pub(crate) dropout: Option<Dropout>,
    /// Its recurrent and input dropout (the same).
    pub(crate) recurrent_dropout: Option<VariationalDropout>,
    pub(crate) input_dropout: Option<VariationalDropout>,
    /// Its zoneout (the same).
    pub(crate) zoneout: Option<Zoneout>,
    /// The device copies of its masks when the caller supplied them (`masks.rs`; uploaded by
    /// the pass, read again by backward).
    supplied: Option<DeviceMasks>,
}

impl CudaReserve {
    /// The bytes of device memory its saved buffers hold (the activations of the training pass
    /// that filled it and their inputs; the lengths and supplied masks, a few bytes per row, not
    /// counted). Kept for reuse while shapes repeat.
    pub fn nbytes(&self) -> usize {
        let bytes = |m: &Option<DevBuf>| m.as_ref().map_or(0, |m| m.len() * m.ty().size());
        let inputs = bytes(&self.x) + bytes(&self.h0) + bytes(&self.c0);
        let outputs: usize = self.outputs.iter().map(bytes).sum();
        let saved: usize = self.dirs.iter().flat_map(|d| d.each()).map(bytes).sum();
        inputs + outputs + saved
    }
}

impl crate::backend::RnnReserve for CudaReserve {
    fn shape(&self) -> Option<&SeqShape> {
        self.stamp.shape()
    }
}

#[cfg(all(test, rnn_kernels_host_emulation))]
impl CudaReserve {
    /// The bits of every saved buffer (host memory on the emulation), as 32-bit words, in a fixed
    /// order (tests: two forward passes saved the same activations).
    pub(crate) fn saved_bits(&self) -> Vec<Vec<u32>> {
        let bits = |m: &Option<DevBuf>| {
            m.as_ref().map_or(Vec::new(), |m| {
                let v = m.view();
                let words = (v.len * v.ty.size()).div_ceil(4);
                // SAFETY: host memory of at least `words` words on the emulation (Emulation::alloc).
                unsafe { std::slice::from_raw_parts(v.ptr as *const u32, words) }.to_vec()
            })
        };
        let mut all = vec![bits(&self.x), bits(&self.h0), bits(&self.c0)];
        all.extend(self.outputs.iter().map(bits));
        for d in &self.dirs {
            all.extend(d.each().map(bits));
        }
        all
    }
}

/// Views of a filled reserve.
pub(crate) struct SavedViews {
    x: View,
    h0: View,
    c0: View,
    lens: u64,
    outputs: Vec<View>,
    /// Per layer-direction.
    dirs: Vec<Saved<View>>,
    /// The dropout between layers of the forward pass.
    dropout: Option<Dropout>,
    /// Its recurrent and input dropout.
    recurrent_dropout: Option<VariationalDropout>,
    input_dropout: Option<VariationalDropout>,
    /// Its zoneout.
    zoneout: Option<Zoneout>,
    /// Its supplied masks' device copies (empty when drawn).
    masks: MaskViews,
}

impl SavedViews {
    pub fn new(r: &CudaReserve) -> SavedViews {
        let v = |s: &Option<DevBuf>| s.as_ref().map_or(View::NULL, DevBuf::view);
        SavedViews {
            x: v(&r.x),
            h0: v(&r.h0),
            c0: v(&r.c0),
            lens: r.lengths.as_ref().map_or(0, RawBuf::ptr),
            outputs: r.outputs.iter().map(v).collect(),
            dirs: r.dirs.iter().map(|d| Saved::from_array(d.each().map(v))).collect(),
            dropout: r.dropout.clone(),
            recurrent_dropout: r.recurrent_dropout.clone(),
            input_dropout: r.input_dropout.clone(),
            zoneout: r.zoneout.clone(),
            masks: r.supplied.as_ref().map(DeviceMasks::views).unwrap_or_default(),
        }
    }
}

impl CudaReserve {
    /// The masks of the training pass that fills it: the stream of its regularisers (they
    /// share the call's), `None` without any.
    fn mask_stream(&self) -> Option<&crate::masks::MaskStream> {
        let drawn = self.dropout.as_ref().map(|d| d.drawn()).or(self.recurrent_dropout.as_ref().map(|v| v.drawn()));
        let drawn = drawn.or(self.input_dropout.as_ref().map(|v| v.drawn()));
        drawn.map(|d| d.stream()).or(self.zoneout.as_ref().and_then(|z| z.masks()))
    }
}

/// The weights of a call: the parameter layout and the device copy of the flat parameters
/// (PyTorch's layout; the GEMMs read it in place).
#[derive(Clone, Copy)]
pub(crate) struct Weights<'p> {
    pub layout: &'p ParamLayout,
    pub w: View,
}

impl Weights<'_> {
    fn config(&self) -> &RnnConfig {
        self.layout.config()
    }

    /// The weights of layer `l`, direction `d`.
    fn layer(&self, l: usize, d: usize) -> LayerViews {
        LayerViews::of(self.w, self.layout.layer(l, d))
    }
}

/// One layer-direction's parameters (or their gradients) in a flat buffer, as views.
#[derive(Clone, Copy)]
struct LayerViews {
    /// `[G·H, In]`.
    w_ih: View,
    /// `[G·H, Hout]`.
    w_hh: View,
    /// `[G·H]`, when the stack has biases.
    b_ih: Option<View>,
    b_hh: Option<View>,
    /// `[Hout, H]`, when the LSTM has a projection.
    w_hr: Option<View>,
    /// `[3, H]` (rows `i, f, o`), when the LSTM has peepholes.
    peephole: Option<View>,
}

impl LayerViews {
    fn of(buf: View, r: &LayerRanges) -> LayerViews {
        let at = |r: &std::ops::Range<usize>| buf.at(r.start, r.len());
        LayerViews {
            w_ih: at(&r.w_ih),
            w_hh: at(&r.w_hh),
            b_ih: r.b_ih.as_ref().map(at),
            b_hh: r.b_hh.as_ref().map(at),
            w_hr: r.w_hr.as_ref().map(at),
            peephole: r.peephole.as_ref().map(at),
        }
    }
}

/// The temporaries of one pass: allocated before any work is enqueued, freed (on stream 0)
/// when the pass returns.
struct Temps<'e, 'a> {
    exec: &'e Exec<'a>,
    bufs: Vec<DevBuf>,
    lengths: Option<RawBuf>,
}

impl<'e, 'a> Temps<'e, 'a> {
    fn new(exec: &'e Exec<'a>) -> Self {
        Temps { exec, bufs: Vec::new(), lengths: None }
    }

    /// `n` elements of `ty`.
    fn alloc(&mut self, ty: Dtype, n: usize) -> Result<View> {
        let b = self.exec.alloc(ty, n)?;
        let v = b.view();
        self.bufs.push(b);
        Ok(v)
    }

    /// The lengths of `shape` as `[B]` i32 (inference: kept with the temporaries); their address.
    fn lengths(&mut self, shape: &SeqShape) -> Result<u64> {
        Ok(self.lengths.insert(self.exec.lengths(shape)?).ptr())
    }

    /// `n` f32.
    fn f32(&mut self, n: usize) -> Result<View> {
        self.alloc(Dtype::F32, n)
    }

    /// `n` elements of the storage type.
    fn storage(&mut self, n: usize) -> Result<View> {
        self.alloc(self.exec.storage(), n)
    }

    /// A persistent kernel's grid barrier: `[2]` zeros (0.0f32 is all zero bits: the count and
    /// the generation).
    fn barrier(&mut self) -> Result<View> {
        let barrier = self.f32(2)?;
        self.exec.fill(0, barrier, 0.0)?;
        Ok(barrier)
    }
}

/// The persistent kernel chosen for a layer-direction: units per block and its grid barrier.
#[derive(Clone, Copy)]
struct Persistent {
    units: usize,
    barrier: View,
}

/// The error of a layer that cannot take a persistent kernel when they are required.
fn persistent_required(what: &str, l: usize, dims: &crate::backend::stack::LayerDims, storage: Dtype) -> Error {
    Error::invalid(
        "persistent (required)",
        format!("layers that fit {what}: f32 storage, batch ≤ 8, no projection, W_hh within the blocks' shared memory"),
        format!(
            "{:?} layer {l} with hidden size {}, batch {}, {} direction(s), {storage:?} storage",
            dims.cell.kind, dims.h, dims.b, dims.dirs
        ),
    )
}

/// The first cell option of `cell` that the persistent kernels do not implement, by its
/// case-file name: they run the plain cells only, and a layer with an option takes the per-step
/// path.
fn persistent_declines(cell: &crate::backend::cell::Cell) -> Option<&'static str> {
    [
        (cell.peephole, "peephole"),
        (cell.clip > 0.0, "gate_clip"),
        (cell.input_forget, "input_forget"),
        (!cell.linear_before_reset, "linear_before_reset=false"),
        (cell.layer_norm, "layer_norm"),
    ]
    .into_iter()
    .find_map(|(on, name)| on.then_some(name))
}

/// The error of a layer whose cell option the persistent kernels decline when they are required.
fn persistent_declined(what: &str, option: &str, l: usize) -> Error {
    Error::Unsupported {
        backend: "cuda (persistent kernels required)".to_string(),
        option: option.to_string(),
        reason: format!(
            "{what} runs the plain cells only (layer {l} has this option); the per-step path implements it \
             (RNN_KERNELS_CUDA_PERSISTENT unset or 1)"
        ),
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

/// Runs `work` (which may fork to stream 1) and, when it fails, joins stream 1 into stream 0
/// before returning its error: the pass's temporaries are freed on stream 0 once it returns,
/// and the C ABI's caller stream waits for stream 0 only, so work left on stream 1 by a failed
/// launch or GEMM in the middle must be ordered before them. (On success every path joins
/// itself.) The join's own error, if any, is dropped in favour of the first one. A panic in
/// `work` (a bug: a view outside its buffer) joins too, from a guard's `drop` while unwinding,
/// before the temporaries are dropped.
fn joined_on_error(exec: &Exec<'_>, work: impl FnOnce() -> Result<()>) -> Result<()> {
    struct JoinOnUnwind<'c, 'a>(&'c Exec<'a>);
    impl Drop for JoinOnUnwind<'_, '_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = self.0.order(0, 1);
            }
        }
    }
    let guard = JoinOnUnwind(exec);
    let r = work();
    drop(guard);
    if r.is_err() {
        let _ = exec.order(0, 1);
    }
    r
}

/// Runs each layer's directions, `D = 2` concurrently: stream 1 forks from stream 0 before
/// the layer and joins it after.
fn each_direction<T>(exec: &Exec<'_>, dirs: &[T], run: impl Fn(&T) -> Result<()>) -> Result<()> {
    let both = dirs.len() == 2;
    if both {
        exec.order(1, 0)?;
    }
    for d in dirs {
        run(d)?;
    }
    if both {
        exec.order(0, 1)?;
    }
    Ok(())
}
