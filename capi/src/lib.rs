//! # rnn-kernels C ABI
//!
//! The functions of `include/rnn_kernels.h` (at the repository root; read it for the contract of
//! each function). Every function:
//!
//! - returns an `int` status (`RNNK_OK` = 0, or one of the `RNNK_ERR_*` codes of
//!   [`status`]) and leaves a message naming the wrong argument, the expected and the given value
//!   in a thread-local string read with [`rnnk_last_error`];
//! - checks every handle (live, of the right kind, intact tag), every pointer (NULL, alignment)
//!   and every buffer length (given in elements next to its pointer) before touching memory;
//!   the calls with buffers gather their raw arguments into one struct and go through the one
//!   parser of `args.rs`, which the device-pointer functions (`device.rs`) share;
//! - takes each handle shared (calls that only read it) or alone (calls that change or free
//!   it), and returns `RNNK_ERR_BUSY` instead of waiting or racing when another thread's call
//!   conflicts (`handle.rs`);
//! - allocates what its arguments size only after asking the allocator for it fallibly
//!   (`RNNK_ERR_OUT_OF_MEMORY`, never an abort);
//! - runs its body under `catch_unwind`: a panic is returned as `RNNK_ERR_PANIC`, never unwound
//!   into C.
//!
//! Data are `float` on the host, time-major and row-major as in the Rust API: `x [T, B, I]`,
//! `y [T, B, D·Hout]`, `h0/hn [L·D, B, Hout]`, `c0/cn [L·D, B, H]`; parameters in the flat
//! PyTorch `state_dict()` layout ([`rnnk_core::ParamLayout`]).
//!
//! The decoder-step entry points are in `steps.rs`, the attention ones in `attention.rs`.
//!
//! tests/header.rs checks that every `extern "C"` function of `src/` has the same
//! prototype in the header, and every status code the same value.

// The C entry points take raw pointers from C; their safety contract is the header's.
#![allow(clippy::missing_safety_doc)]

mod args;
mod attention;
mod bufs;
mod device;
mod handle;
pub mod status;
mod steps;

use args::{BackwardCall, ForwardCall, Host, ParamsIn, ParamsOut, RawBackward, RawForward, RawForwardBufs, RawGradOutputs, RawGrads};
use handle::{with_rnn, Engine, Handle, Model, Reserve, ReserveData};
use rnnk_core::{Backend, CellKind, Cpu, LoadOptions, Params, Reference, Rnn, RnnConfig};
use status::{guard, CapiError};
use std::ffi::{c_char, c_int};
use std::str::FromStr;

/// `rnnk_model` in the header: a layer stack's configuration and parameters on one backend.
pub type RnnkModel = handle::Slot<Model>;
/// `rnnk_reserve` in the header: the activations a training forward keeps for backward.
pub type RnnkReserve = handle::Slot<Reserve>;
/// `rnnk_steps` in the header: a decoder run one step at a time on a model.
pub type RnnkSteps = handle::Slot<steps::StepsRun>;
/// `rnnk_steps_backward` in the header: the backward of a training run, one step at a time.
pub type RnnkStepsBackward = handle::Slot<steps::StepsBackward>;
/// `rnnk_attention` in the header: an attention's configuration, parameters and backend.
pub type RnnkAttention = handle::Slot<attention::Attention>;
/// `rnnk_attention_memory` in the header: the keys' side of an attention, with its gradients.
pub type RnnkAttentionMemory = handle::Slot<attention::Memory>;

/// The message of the last call on this thread ("" after a success); valid until the next call
/// into the library on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn rnnk_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// The library version, e.g. "0.1.0". Never NULL.
#[no_mangle]
pub extern "C" fn rnnk_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The error of the backend name "cuda" (models and attentions) in a library built without the
/// `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn cuda_not_built() -> CapiError {
    rnnk_core::Error::BackendUnavailable {
        backend: "cuda".into(),
        reason: "this library was built without the `cuda` feature (cargo build --release -p rnn-kernels-capi --features cuda)".into(),
    }
    .into()
}

fn make_engine(backend: &str, threads: usize, cfg: &RnnConfig, params: &Params<f32>) -> Result<Engine, CapiError> {
    Ok(match backend {
        "reference" => Engine::Reference(Rnn::new(Reference, cfg, params.as_slice())?),
        "cpu" => {
            let cpu = if threads == 0 { Cpu::new()? } else { Cpu::with_threads(threads)? };
            Engine::Cpu(Rnn::new(cpu, cfg, params.as_slice())?)
        }
        #[cfg(feature = "cuda")]
        "cuda" => Engine::Cuda(Rnn::new(rnnk_core::CudaHost::new()?, cfg, params.as_slice())?),
        #[cfg(not(feature = "cuda"))]
        "cuda" => return Err(cuda_not_built()),
        other => return Err(CapiError::invalid("backend", "one of \"reference\", \"cpu\", \"cuda\"", format!("{other:?}"))),
    })
}

/// The number of parameters of `cfg` (`RnnConfig::param_count`, which `build` keeps within
/// `usize`; it counts the options' tensors and widths: peepholes, `merge=sum`).
fn param_count(cfg: &RnnConfig) -> Option<u128> {
    Some(cfg.param_count() as u128)
}

/// The bytes a new model of `cfg` holds at most while it is created, counted generously: the
/// initial parameters, the backend's copy and its packed form (three times the parameters), and
/// two parameter layouts (names, shapes and ranges of every tensor, at up to twice their size
/// while their vectors grow).
fn model_bytes(cfg: &RnnConfig) -> Option<u128> {
    let params = param_count(cfg)?.checked_mul(3 * std::mem::size_of::<f32>() as u128)?;
    // Per tensor: its spec, its name (< 32 bytes) and its shape (2 dimensions).
    let spec = (std::mem::size_of::<rnnk_core::ParamSpec>() + 32 + 2 * std::mem::size_of::<usize>()) as u128;
    let per_dir = rnnk_core::ParamKind::ALL.len() as u128 * spec + std::mem::size_of::<rnnk_core::LayerRanges>() as u128;
    let layouts = (cfg.num_layers() as u128).checked_mul(cfg.num_directions() as u128)?.checked_mul(per_dir)?.checked_mul(2 * 2)?;
    params.checked_add(layouts)
}

/// Checks that the memory a model of `cfg` needs ([`model_bytes`]) can be had: not more than
/// the machine's RAM and swap (the parameters are all written at creation, so a model larger
/// than that can never be created, whatever the kernel's overcommit policy), and granted by the
/// allocator when asked for at once (and given back). Otherwise `RNNK_ERR_OUT_OF_MEMORY` naming
/// the sizes, where creating the model would abort the process.
fn check_model_memory(cfg: &RnnConfig) -> Result<(), CapiError> {
    let bytes = model_bytes(cfg);
    let too_large = |reason: String| {
        let count = param_count(cfg).map_or_else(|| "more than 2^128".to_string(), |c| c.to_string());
        let what = format!(
            "a model of {count} parameters: input_size {}, hidden_size {}, num_layers {}, {} direction(s), proj_size {}; its \
             parameters, the backend's packed copy and their layout",
            cfg.input_size(),
            cfg.hidden_size(),
            cfg.num_layers(),
            cfg.num_directions(),
            cfg.proj_size()
        );
        let arg = "input_size, hidden_size, num_layers".to_string();
        CapiError::from(rnnk_core::Error::TooLarge { arg, what, bytes: bytes.unwrap_or(u128::MAX), reason })
    };
    let n = bytes.and_then(|b| usize::try_from(b).ok()).filter(|&b| b <= isize::MAX as usize);
    let n = n.ok_or_else(|| too_large("is more than this machine can address".into()))?;
    if let Some(total) = rnnk_core::host_memory_bytes().map(u128::from).filter(|&t| n as u128 > t) {
        return Err(too_large(format!("is more than this machine's memory (RAM and swap: {total} bytes)")));
    }
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(n).map_err(|e| too_large(format!("could not be allocated ({e})")))?;
    Ok(())
}

/// Creates a model: `torch.nn.LSTM/GRU/RNN(input_size, hidden_size, num_layers, bias,
/// bidirectional, proj_size)` with parameters initialised uniform in ±1/√H (seed 0), on
/// `backend` ("reference", "cpu", "cuda"); `threads` is the CPU backend's thread count (0: one
/// per core), ignored by the others. `*out` is NULL on failure.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_create(
    cell: *const c_char, input_size: usize, hidden_size: usize, num_layers: usize, bidirectional: c_int, proj_size: usize, bias: c_int,
    backend: *const c_char, threads: usize, out: *mut *mut RnnkModel,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's writable pointer.
        let out = unsafe { args::required_slot("out", out)? };
        *out = std::ptr::null_mut();
        // SAFETY: C strings from the caller.
        let (cell, backend) = unsafe { (args::string("cell", cell)?, args::string("backend", backend)?) };
        let cell = CellKind::from_str(cell)?;
        let cfg = RnnConfig::new(cell, input_size, hidden_size)
            .num_layers(num_layers)
            .bidirectional(bidirectional != 0)
            .proj_size(proj_size)
            .bias(bias != 0)
            .build()?;
        // Nothing of the model is allocated before the memory it needs was found allocatable.
        check_model_memory(&cfg)?;
        let params = Params::<f32>::init_uniform(&cfg, 0)?;
        let engine = make_engine(backend, threads, &cfg, &params)?;
        *out = Model::new(engine).into_raw();
        Ok(())
    })
}

/// Creates a model as [`rnnk_model_create`] does, with the cell options of `options` (NULL or
/// "" for none): comma-separated `key=value` items with the case-file keys `direction`, `merge`,
/// `peephole`, `gate_clip`, `input_forget`, `linear_before_reset`, `layer_norm`, `batch_first` (parsed by
/// `args::cell_options`). A backend that does not implement an option it sets is
/// `RNNK_ERR_UNSUPPORTED` naming the option. `*out` is NULL on failure.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_create_ex(
    cell: *const c_char, input_size: usize, hidden_size: usize, num_layers: usize, bidirectional: c_int, proj_size: usize, bias: c_int,
    options: *const c_char, backend: *const c_char, threads: usize, out: *mut *mut RnnkModel,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's writable pointer.
        let out = unsafe { args::required_slot("out", out)? };
        *out = std::ptr::null_mut();
        // SAFETY: C strings from the caller; `options` may be NULL (no options).
        let (cell, backend) = unsafe { (args::string("cell", cell)?, args::string("backend", backend)?) };
        // SAFETY: as above.
        let options = if options.is_null() { "" } else { unsafe { args::string("options", options)? } };
        let builder = RnnConfig::new(CellKind::from_str(cell)?, input_size, hidden_size)
            .num_layers(num_layers)
            .bidirectional(bidirectional != 0)
            .proj_size(proj_size)
            .bias(bias != 0);
        let cfg = args::cell_options(builder, bidirectional != 0, options)?.build()?;
        // Nothing of the model is allocated before the memory it needs was found allocatable.
        check_model_memory(&cfg)?;
        let params = Params::<f32>::init_uniform(&cfg, 0)?;
        let engine = make_engine(backend, threads, &cfg, &params)?;
        *out = Model::new(engine).into_raw();
        Ok(())
    })
}

/// Writes the model's cell options, as `rnnk_model_create_ex` takes them, into `buf` of
/// `buf_len` bytes, NUL-terminated ("" for none); `*len` (optional) gets the string's length
/// without the NUL, also when `buf` is too small (then `RNNK_ERR_SIZE_MISMATCH` naming `buf`,
/// and `buf` is untouched). `buf` may be NULL with `buf_len` 0 to ask for the length.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_options(model: *const RnnkModel, buf: *mut c_char, buf_len: usize, len: *mut usize) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let m = unsafe { Model::get("model", model)? };
        let text = args::options_string(m.config());
        // SAFETY: NULL or the caller's writable size_t.
        if let Some(len) = unsafe { args::slot("len", len)? } {
            *len = text.len();
        }
        if buf.is_null() && buf_len == 0 {
            return Ok(());
        }
        if buf.is_null() {
            return Err(CapiError::null("buf"));
        }
        if buf_len <= text.len() {
            return Err(CapiError::new(
                status::RNNK_ERR_SIZE_MISMATCH,
                format!("`buf`: expected at least {} bytes (the options {text:?} and a NUL), got {buf_len} bytes", text.len() + 1),
            ));
        }
        // SAFETY: non-NULL, `buf_len` writable bytes (the caller's contract), of which
        // `text.len() + 1 <= buf_len` are written.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), text.len() + 1) };
        dst[..text.len()].copy_from_slice(text.as_bytes());
        dst[text.len()] = 0;
        Ok(())
    })
}

/// Frees a model; NULL is a no-op. Reserves it filled stay valid handles (free them too).
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_free(model: *mut RnnkModel) -> c_int {
    // SAFETY: the caller frees a handle nothing else uses.
    guard(|| unsafe { Model::free("model", model) })
}

/// The number of parameters (floats in the flat layout).
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_param_count(model: *const RnnkModel, out: *mut usize) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let m = unsafe { Model::get("model", model)? };
        // SAFETY: the caller's writable size_t.
        *unsafe { args::required_slot("out", out)? } = m.layout().len();
        Ok(())
    })
}

/// The element counts of `x`, `y`, `h0`/`hn` and `c0`/`cn` (0 for cells without a cell state)
/// for `steps` × `batch`; each output pointer may be NULL.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_tensor_sizes(
    model: *const RnnkModel, steps: usize, batch: usize, x_len: *mut usize, y_len: *mut usize, h_len: *mut usize, c_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let m = unsafe { Model::get("model", model)? };
        let sizes = args::tensor_sizes(m.config(), &rnnk_core::SeqShape::new(steps, batch)?)?;
        let outs = [("x_len", x_len), ("y_len", y_len), ("h_len", h_len), ("c_len", c_len)];
        args::distinct_slots(&outs)?;
        for ((arg, p), v) in outs.into_iter().zip(sizes) {
            // SAFETY: NULL or the caller's writable size_t.
            if let Some(out) = unsafe { args::slot(arg, p)? } {
                *out = v;
            }
        }
        Ok(())
    })
}

/// Re-initialises the parameters uniform in ±1/√H from `seed`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_init_uniform(model: *mut RnnkModel, seed: u64) -> c_int {
    guard(|| {
        // SAFETY: handle checked; exclusive use is the header's rule for changing a model.
        let mut m = unsafe { Model::get_mut("model", model)? };
        let p = Params::init_uniform(m.config(), seed)?;
        m.set_params(p.as_slice())
    })
}

/// Sets the parameters from `params_len` floats in the flat PyTorch layout.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_set_params(model: *mut RnnkModel, params: *const f32, params_len: usize) -> c_int {
    guard(|| {
        // SAFETY: the caller's buffer of `params_len` floats; exclusive use of the model.
        let ParamsIn { mut model, params } = unsafe { args::params_in::<Host>(model, (params, params_len))? };
        model.set_params(params)
    })
}

/// Copies the parameters (flat PyTorch layout) into `params` of `params_len` floats.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_get_params(model: *const RnnkModel, params: *mut f32, params_len: usize) -> c_int {
    guard(|| {
        // SAFETY: the caller's buffer of `params_len` floats.
        let ParamsOut { model, params } = unsafe { args::params_out::<Host>(model, (params, params_len))? };
        model.read_params(params)
    })
}

/// Loads the parameters from a safetensors file under PyTorch's `state_dict()` names, each with
/// `prefix` (NULL or "" for none, "rnn." for a submodule). Strict like `load_state_dict` unless
/// `allow_unexpected` is non-zero (then other tensors are ignored).
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_load_safetensors(
    model: *mut RnnkModel, path: *const c_char, prefix: *const c_char, allow_unexpected: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked; exclusive use is the header's rule for changing a model.
        let mut m = unsafe { Model::get_mut("model", model)? };
        // SAFETY: C strings from the caller.
        let path = unsafe { args::string("path", path)? };
        // SAFETY: as above; NULL means no prefix.
        let prefix = if prefix.is_null() { "" } else { unsafe { args::string("prefix", prefix)? } };
        let opts = LoadOptions { prefix: prefix.to_string(), allow_unexpected: allow_unexpected != 0 };
        // Everything wrong with the file's content is RNNK_ERR_FILE_FORMAT (the loader reports a
        // wrong shape as a shape error and a wrong dtype as an invalid value).
        let p = Params::<f32>::load_safetensors_with(path, m.config(), &opts).map_err(CapiError::from_file)?;
        m.set_params(p.as_slice())
    })
}

/// Saves the parameters to a safetensors file (PyTorch names, f32, the configuration in the
/// metadata); it loads into `torch.nn.LSTM(...).load_state_dict(safetensors.torch.load_file(path))`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_save_safetensors(model: *const RnnkModel, path: *const c_char) -> c_int {
    guard(|| {
        // SAFETY: handle checked; C string from the caller.
        let (m, path) = unsafe { (Model::get("model", model)?, args::string("path", path)?) };
        m.params()?.save_safetensors(path)?;
        Ok(())
    })
}

/// Creates an empty reserve, filled by `rnnk_forward_training` and read by `rnnk_backward`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_reserve_create(out: *mut *mut RnnkReserve) -> c_int {
    guard(|| {
        // SAFETY: the caller's writable pointer.
        *unsafe { args::required_slot("out", out)? } = Reserve::default().into_raw();
        Ok(())
    })
}

/// Frees a reserve; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn rnnk_reserve_free(reserve: *mut RnnkReserve) -> c_int {
    // SAFETY: the caller frees a handle nothing else uses.
    guard(|| unsafe { Reserve::free("reserve", reserve) })
}

/// A forward call (inference, or training into the reserve) on host buffers.
fn forward(call: ForwardCall<'_, Host>) -> Result<(), CapiError> {
    let ForwardCall { model: m, reserve, shape, mut bufs, masks } = call;
    let (mut input, output) = bufs.io();
    input.masks = masks;
    let Some(mut r) = reserve else {
        with_rnn!(&m.engine, rnn => Backend::<f32>::forward_inference(rnn.backend(), rnn.plan(), &shape, input, output))?;
        return Ok(());
    };
    match &m.engine {
        Engine::Reference(rnn) => rnn.backend().forward_training(rnn.plan(), &shape, input, output, r.data.host())?,
        Engine::Cpu(rnn) => Backend::<f32>::forward_training(rnn.backend(), rnn.plan(), &shape, input, output, r.data.host())?,
        #[cfg(feature = "cuda")]
        Engine::Cuda(rnn) => rnn.backend().forward_training(rnn.plan(), &shape, input, output, r.data.cuda())?,
    }
    r.model_id = m.id;
    Ok(())
}

/// Forward inference. `lengths`: NULL (every sequence has `steps` steps) or `batch` lengths in
/// 1..=steps, any order. `h0`, `c0` (NULL: zeros), `hn`, `cn` (NULL: skipped) are optional;
/// `c0`/`cn` must be NULL for GRU and RNN.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward(
    model: *const RnnkModel, steps: usize, batch: usize, lengths: *const i64, lengths_len: usize, x: *const f32, x_len: usize,
    h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, y: *mut f32, y_len: usize, hn: *mut f32, hn_len: usize, cn: *mut f32,
    cn_len: usize,
) -> c_int {
    let bufs = RawForwardBufs { x: (x, x_len), h0: (h0, h0_len), c0: (c0, c0_len), y: (y, y_len), hn: (hn, hn_len), cn: (cn, cn_len) };
    let raw = RawForward { model, reserve: None, steps, batch, lengths: (lengths, lengths_len), bufs, masks: args::RawMasks::None };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| forward(unsafe { raw.parse()? }))
}

/// Forward for training: as `rnnk_forward`, and fills `reserve` for `rnnk_backward`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_training(
    model: *const RnnkModel, reserve: *mut RnnkReserve, steps: usize, batch: usize, lengths: *const i64, lengths_len: usize, x: *const f32,
    x_len: usize, h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, y: *mut f32, y_len: usize, hn: *mut f32, hn_len: usize,
    cn: *mut f32, cn_len: usize,
) -> c_int {
    let bufs = RawForwardBufs { x: (x, x_len), h0: (h0, h0_len), c0: (c0, c0_len), y: (y, y_len), hn: (hn, hn_len), cn: (cn, cn_len) };
    let raw =
        RawForward { model, reserve: Some(reserve), steps, batch, lengths: (lengths, lengths_len), bufs, masks: args::RawMasks::None };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| forward(unsafe { raw.parse()? }))
}

/// Forward for training with the dropout and zoneout masks of `(mask_seed, mask_offset)` (a model
/// with the `dropout`, `zoneout`, `zoneout_cell`, `recurrent_dropout` or `input_dropout` option; `rnnk_forward_training` refuses such
/// a model, naming `masks`): otherwise as
/// `rnnk_forward_training`. A training loop keeps the seed and passes a new offset per call.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_training_masked(
    model: *const RnnkModel, reserve: *mut RnnkReserve, mask_seed: u64, mask_offset: u64, steps: usize, batch: usize, lengths: *const i64,
    lengths_len: usize, x: *const f32, x_len: usize, h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, y: *mut f32,
    y_len: usize, hn: *mut f32, hn_len: usize, cn: *mut f32, cn_len: usize,
) -> c_int {
    let bufs = RawForwardBufs { x: (x, x_len), h0: (h0, h0_len), c0: (c0, c0_len), y: (y, y_len), hn: (hn, hn_len), cn: (cn, cn_len) };
    let masks = args::RawMasks::Seed(mask_seed, mask_offset);
    let raw = RawForward { model, reserve: Some(reserve), steps, batch, lengths: (lengths, lengths_len), bufs, masks };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| forward(unsafe { raw.parse()? }))
}

/// Forward for training with the caller's masks instead of drawn ones (to reproduce another
/// framework's, or masks read back with `rnnk_masks_read`): `hits` holds `hits_len` bytes, each
/// mask of `rnnk_mask_layout` for (`steps`, `batch`) in its order, `[steps, rows, units]`,
/// nonzero where the unit is hit (dropped; for zoneout, kept at its previous value); the kept
/// units are scaled by `1/(1-p)` of the model's options. Otherwise as
/// `rnnk_forward_training_masked`, on every backend (CUDA uploads the bits the call reads).
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_training_with_masks(
    model: *const RnnkModel, reserve: *mut RnnkReserve, hits: *const u8, hits_len: usize, steps: usize, batch: usize, lengths: *const i64,
    lengths_len: usize, x: *const f32, x_len: usize, h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, y: *mut f32,
    y_len: usize, hn: *mut f32, hn_len: usize, cn: *mut f32, cn_len: usize,
) -> c_int {
    let bufs = RawForwardBufs { x: (x, x_len), h0: (h0, h0_len), c0: (c0, c0_len), y: (y, y_len), hn: (hn, hn_len), cn: (cn, cn_len) };
    let masks = args::RawMasks::Hits(hits, hits_len);
    let raw = RawForward { model, reserve: Some(reserve), steps, batch, lengths: (lengths, lengths_len), bufs, masks };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| forward(unsafe { raw.parse()? }))
}

/// The masks a training call of `model` with `steps` × `batch` reads, 6 numbers each, in the
/// order `rnnk_forward_training_with_masks` and `rnnk_masks_read` lay them out: layer,
/// direction (0 forward, 1 reverse), kind (0 dropout of a layer's output, 1 recurrent dropout, 2
/// input dropout, 3 zoneout of h, 4 zoneout of c), steps (1 for kinds 1 and 2), rows (= batch)
/// and units. `*count` (when not NULL) gets the number of masks; `out` (NULL with `out_len` 0
/// to ask only the count) gets `6 · count` numbers, `out_len` being at least that.
#[no_mangle]
pub unsafe extern "C" fn rnnk_mask_layout(
    model: *const RnnkModel, steps: usize, batch: usize, out: *mut usize, out_len: usize, count: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let m = unsafe { Model::get("model", model)? };
        let layout = args::mask_layout(m.config(), &rnnk_core::SeqShape::new(steps, batch)?);
        // SAFETY: NULL or the caller's writable size_t.
        if let Some(c) = unsafe { args::slot("count", count)? } {
            *c = layout.len();
        }
        if out.is_null() && out_len == 0 {
            return Ok(());
        }
        if out.is_null() {
            return Err(CapiError::null("out"));
        }
        if out_len < 6 * layout.len() {
            return Err(CapiError::new(
                status::RNNK_ERR_SIZE_MISMATCH,
                format!("`out`: expected at least {} numbers (6 for each of {} masks), got {out_len}", 6 * layout.len(), layout.len()),
            ));
        }
        // SAFETY: non-NULL, `out_len` writable size_t (the caller's contract), of which
        // `6 · count <= out_len` are written.
        let dst = unsafe { std::slice::from_raw_parts_mut(out, 6 * layout.len()) };
        for (d, (s, _)) in dst.chunks_exact_mut(6).zip(layout) {
            d.copy_from_slice(&[s.site.layer(), s.site.direction(), s.site.kind() as usize, s.steps, s.rows, s.units]);
        }
        Ok(())
    })
}

/// Reads back the masks a training call of `model` with `steps` × `batch` draws from
/// `(mask_seed, mask_offset)`: writes into `hits` (`hits_len` bytes, exactly the sum of
/// steps · rows · units over `rnnk_mask_layout`) 1 where the unit is hit, 0 elsewhere, in the
/// layout `rnnk_forward_training_with_masks` takes.
#[no_mangle]
pub unsafe extern "C" fn rnnk_masks_read(
    model: *const RnnkModel, steps: usize, batch: usize, mask_seed: u64, mask_offset: u64, hits: *mut u8, hits_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked by `get`.
        let m = unsafe { Model::get("model", model)? };
        let shape = rnnk_core::SeqShape::new(steps, batch)?;
        let layout = args::mask_layout(m.config(), &shape);
        let total: usize = layout.iter().map(|(_, n)| n).sum();
        if hits_len != total {
            return Err(CapiError::new(
                status::RNNK_ERR_SIZE_MISMATCH,
                format!("`hits`: expected {total} bytes (the {} masks of rnnk_mask_layout), got {hits_len}", layout.len()),
            ));
        }
        if total == 0 {
            return Ok(());
        }
        if hits.is_null() {
            return Err(CapiError::null("hits"));
        }
        let drawn = rnnk_core::masks::SuppliedMasks::drawn(&rnnk_core::masks::MaskStream::new(mask_seed, mask_offset), m.config(), &shape)?;
        // SAFETY: non-NULL, `hits_len` writable bytes (the caller's contract), all written.
        let dst = unsafe { std::slice::from_raw_parts_mut(hits, hits_len) };
        let mut at = 0;
        for (s, n) in layout {
            let (.., h) = drawn.get(s.site).unwrap_or_default();
            for (d, v) in dst[at..at + n].iter_mut().zip(h) {
                *d = v as u8;
            }
            at += n;
        }
        Ok(())
    })
}

/// A backward call on host buffers.
fn backward(call: BackwardCall<'_, Host>) -> Result<(), CapiError> {
    let BackwardCall { model: m, reserve: r, mode, mut bufs } = call;
    let (grads, output) = bufs.io();
    match (&m.engine, &r.data) {
        (Engine::Reference(rnn), ReserveData::Host(data)) => rnn.backend().backward(rnn.plan(), data, grads, output, mode)?,
        (Engine::Cpu(rnn), ReserveData::Host(data)) => Backend::<f32>::backward(rnn.backend(), rnn.plan(), data, grads, output, mode)?,
        #[cfg(feature = "cuda")]
        (Engine::Cuda(rnn), ReserveData::Cuda(data)) => rnn.backend().backward(rnn.plan(), data, grads, output, mode)?,
        _ => return Err(CapiError::handle("reserve", &format!("a reserve of backend {}", m.backend_name()), "another backend's")),
    }
    Ok(())
}

/// Backpropagation through time over the call that filled `reserve` (with this model, and its
/// parameters unchanged since). Inputs `dy`, `dhn`, `dcn` are optional (NULL: zeros); outputs
/// `dx`, `dh0`, `dc0`, `dparams` are optional (NULL: skipped). `dparams` (flat layout) is
/// overwritten, or added to when `accumulate` is non-zero.
#[no_mangle]
pub unsafe extern "C" fn rnnk_backward(
    model: *const RnnkModel, reserve: *const RnnkReserve, dy: *const f32, dy_len: usize, dhn: *const f32, dhn_len: usize, dcn: *const f32,
    dcn_len: usize, dx: *mut f32, dx_len: usize, dh0: *mut f32, dh0_len: usize, dc0: *mut f32, dc0_len: usize, dparams: *mut f32,
    dparams_len: usize, accumulate: c_int,
) -> c_int {
    let grads = RawGrads { dy: (dy, dy_len), dhn: (dhn, dhn_len), dcn: (dcn, dcn_len) };
    let outputs = RawGradOutputs { dx: (dx, dx_len), dh0: (dh0, dh0_len), dc0: (dc0, dc0_len), dparams: (dparams, dparams_len) };
    let raw = RawBackward { model, reserve, grads, outputs, accumulate };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| backward(unsafe { raw.parse()? }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rnnk_core::ParamLayout;

    #[test]
    fn the_parameter_count_is_the_layouts() {
        for (cell, i, h, l, bi, proj, bias) in [
            (CellKind::Lstm, 3, 5, 2, true, 0, true),
            (CellKind::Lstm, 7, 6, 3, true, 4, true),
            (CellKind::Lstm, 7, 6, 1, false, 2, false),
            (CellKind::Gru, 1, 9, 4, false, 0, true),
            (CellKind::RnnTanh, 11, 2, 2, true, 0, false),
        ] {
            let cfg = RnnConfig::new(cell, i, h).num_layers(l).bidirectional(bi).proj_size(proj).bias(bias).build().unwrap();
            assert_eq!(param_count(&cfg), Some(ParamLayout::new(&cfg).len() as u128), "{cfg:?}");
            assert!(check_model_memory(&cfg).is_ok());
        }
        // The options that change the layout: peepholes add tensors, merge=sum narrows the
        // upper layers' input.
        for (cell, bi, options) in [
            (CellKind::Lstm, true, "peephole"),
            (CellKind::Lstm, false, "peephole, direction=reverse"),
            (CellKind::Gru, true, "merge=sum"),
            (CellKind::Lstm, true, "merge=sum,peephole=1"),
        ] {
            let b = RnnConfig::new(cell, 3, 4).num_layers(3).bidirectional(bi);
            let cfg = args::cell_options(b, bi, options).unwrap().build().unwrap();
            assert_eq!(param_count(&cfg), Some(ParamLayout::new(&cfg).len() as u128), "{options}");
            assert!(check_model_memory(&cfg).is_ok());
        }
    }

    /// Parses `options` for a one-layer model of `cell`.
    fn parse(cell: CellKind, bidirectional: bool, options: &str) -> Result<RnnConfig, CapiError> {
        let b = RnnConfig::new(cell, 3, 4).bidirectional(bidirectional);
        Ok(args::cell_options(b, bidirectional, options)?.build()?)
    }

    #[test]
    fn options_parse_into_the_configuration_and_back() {
        let c = parse(CellKind::Lstm, false, " peephole , gate_clip = 2.5,input_forget=1,direction=reverse, batch_first=true").unwrap();
        assert!(c.peephole() && c.input_forget() && c.reverse_only() && c.batch_first());
        assert_eq!(c.gate_clip(), Some(2.5));
        let text = args::options_string(&c);
        assert_eq!(text, "direction=reverse,peephole=true,gate_clip=2.5,input_forget=true,batch_first=true");
        assert_eq!(parse(CellKind::Lstm, false, &text).unwrap(), c);
        let g = parse(CellKind::Gru, true, "linear_before_reset=false,merge=sum,direction=bidirectional").unwrap();
        assert_eq!((g.linear_before_reset(), g.merge(), g.bidirectional()), (false, rnnk_core::Merge::Sum, true));
        assert_eq!(args::options_string(&g), "merge=sum,linear_before_reset=false");
        // No options, written any way, is the plain configuration.
        let plain = parse(CellKind::Gru, false, "").unwrap();
        assert_eq!(plain, RnnConfig::new(CellKind::Gru, 3, 4).build().unwrap());
        assert_eq!(parse(CellKind::Gru, false, " , ,").unwrap(), plain);
        assert_eq!(parse(CellKind::Gru, false, "peephole=false,gate_clip=0,direction=forward").unwrap(), plain);
        assert_eq!(args::options_string(&plain), "");
    }

    #[test]
    fn a_bad_option_names_itself() {
        use status::RNNK_ERR_INVALID_ARGUMENT as INVALID;
        for (cell, bi, options, message) in [
            (CellKind::Lstm, false, "peepholes", "`options`: items key=value with a key among direction, merge, peephole, gate_clip, input_forget, linear_before_reset, layer_norm, batch_first, dropout, zoneout, zoneout_cell, recurrent_dropout, input_dropout, got \"peepholes\""),
            (CellKind::Lstm, false, "peephole,peephole=false", "`options`: each key at most once, got \"peephole\" twice"),
            (CellKind::Lstm, false, "peephole=yes", "`options: peephole`: true or false, got \"yes\""),
            (CellKind::Lstm, false, "gate_clip=big", "`options: gate_clip`: a number, 0 for no clipping, got \"big\""),
            (CellKind::Lstm, false, "gate_clip", "`options: gate_clip`: a number, 0 for no clipping, got \"\""),
            (CellKind::Lstm, false, "direction=up", "`options: direction`: forward, reverse or bidirectional, got \"up\""),
            (CellKind::Lstm, true, "direction=reverse", "`options: direction`: bidirectional, or no direction, with `bidirectional` = 1, got reverse"),
            (CellKind::Gru, true, "merge=mean", "`options: merge`: concat or sum, got \"mean\""),
            // Syntax right, value wrong for the cell or the stack: the configuration's own message.
            (CellKind::Gru, false, "peephole", "`peephole`"),
            (CellKind::Lstm, false, "linear_before_reset=false", "`linear_before_reset`"),
            (CellKind::RnnTanh, false, "input_forget", "`input_forget`"),
            (CellKind::Gru, false, "merge=sum", "`merge`"),
            (CellKind::Gru, false, "gate_clip=-1", "`gate_clip`"),
            (CellKind::Gru, false, "gate_clip=nan", "`gate_clip`"),
            (CellKind::Gru, false, "dropout=lots", "`options: dropout`: a probability in [0, 1), got \"lots\""),
            (CellKind::Gru, false, "dropout=1", "`dropout`"),
        ] {
            let e = parse(cell, bi, options).unwrap_err();
            assert_eq!(e.code, INVALID, "{options}: {}", e.message);
            assert!(e.message.contains(message), "{options}: {}", e.message);
        }
    }

    #[test]
    fn a_model_too_large_to_allocate_is_an_error() {
        let cfg = RnnConfig::new(CellKind::Lstm, 1 << 20, 1 << 20).build().unwrap();
        let e = check_model_memory(&cfg).unwrap_err();
        assert_eq!(e.code, status::RNNK_ERR_OUT_OF_MEMORY, "{}", e.message);
        assert!(e.message.starts_with("`input_size, hidden_size, num_layers`: needs "), "{}", e.message);
        assert!(e.message.contains("8796101410816 parameters"), "{}", e.message);
        // Many tiny layers: more than the layout's documented limit, refused by `build` as too large.
        let e = RnnConfig::new(CellKind::RnnTanh, 1, 1).num_layers(1 << 40).build().unwrap_err();
        assert_eq!(CapiError::from(e).code, status::RNNK_ERR_OUT_OF_MEMORY);
        if let Some(total) = rnnk_core::host_memory_bytes().map(u128::from) {
            assert!(total > 1 << 20, "{total}");
            // A model just larger than the machine: refused by the limit, before the allocator
            // is asked (which, with overcommit, might grant it).
            // rnn_tanh, bias: 2·H² + 2·H parameters, 12 bytes each in `model_bytes`.
            let h = ((total / 24) as f64).sqrt() as usize + 16;
            let cfg = RnnConfig::new(CellKind::RnnTanh, h, h).build().unwrap();
            let e = check_model_memory(&cfg).unwrap_err();
            assert!(e.message.contains("more than this machine's memory"), "{}", e.message);
        }
    }
}
