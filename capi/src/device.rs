//! The device-pointer entry points (`rnnk_*_device` in the header): the same calls as the host
//! ones, on buffers already in the memory of a "cuda" model's device, ordered with a caller's
//! stream.
//!
//! Every argument is checked first, whatever the model's backend and whether this library has
//! the `cuda` feature, by the parser the host functions use (`args`), so the same mistakes give
//! the same messages. Then the model must be on "cuda" (`RNNK_ERR_BACKEND_UNAVAILABLE` in a build
//! without the feature), each pointer must be memory of its device (a host pointer is rejected),
//! and `stream` a stream of its primary context. Only then is anything enqueued:
//!
//! 1. the backend's stream 0 waits for an event recorded on `stream` (the caller's earlier work);
//! 2. the call's work is enqueued on the backend's streams, exactly as for `Cuda` in Rust;
//! 3. `stream` waits for an event recorded on stream 0 after it (on every path: success, error,
//!    panic), so the caller's later work on `stream` sees the results.
//!
//! The caller's buffers are wrapped as `BorrowedCudaBuf`s, which the library never frees.

use crate::args::{
    self, BackwardCall, Device, ForwardCall, ParamsIn, ParamsOut, RawBackward, RawForward, RawForwardBufs, RawGradOutputs, RawGrads,
};
#[cfg(not(feature = "cuda"))]
use crate::handle::Model;
use crate::status::{guard, CapiError};
use crate::{RnnkModel, RnnkReserve};
use std::ffi::{c_int, c_void};

/// A device call whose arguments passed every check: what is left needs the CUDA backend.
enum DeviceWork<'a> {
    Forward(ForwardCall<'a, Device>),
    Backward(BackwardCall<'a, Device>),
    SetParams(ParamsIn<'a, Device>),
    GetParams(ParamsOut<'a, Device>),
}

impl DeviceWork<'_> {
    /// The model the work is for (only named in an error without the `cuda` feature).
    #[cfg(not(feature = "cuda"))]
    fn model(&self) -> &Model {
        match self {
            DeviceWork::Forward(c) => &c.model,
            DeviceWork::Backward(c) => &c.model,
            DeviceWork::SetParams(c) => &c.model,
            DeviceWork::GetParams(c) => &c.model,
        }
    }

    /// Runs the work on the model's device, ordered on the caller's `stream`; without the
    /// `cuda` feature, the error that says so.
    fn run(self, stream: *mut c_void) -> Result<(), CapiError> {
        #[cfg(feature = "cuda")]
        return match self {
            DeviceWork::Forward(call) => on_device::forward(call, stream),
            DeviceWork::Backward(call) => on_device::backward(call, stream),
            DeviceWork::SetParams(call) => on_device::set_params(call, stream),
            DeviceWork::GetParams(call) => on_device::get_params(call, stream),
        };
        #[cfg(not(feature = "cuda"))]
        {
            let _ = stream;
            Err(CapiError::new(
                crate::status::RNNK_ERR_BACKEND_UNAVAILABLE,
                format!(
                    "`model`: the *_device functions need a model on the \"cuda\" backend, and this library was built without the \
                     `cuda` feature (cargo build --release -p rnn-kernels-capi --features cuda); got a model on \"{}\"",
                    self.model().backend_name()
                ),
            ))
        }
    }
}

#[cfg(feature = "cuda")]
mod on_device {
    //! The part that needs the CUDA backend: wrapping the pointers and the stream handshake.

    use crate::args::{BackwardCall, Device, ForwardCall, ParamsIn, ParamsOut, Span};
    use crate::handle::{Engine, Model, ReserveData};
    use crate::status::CapiError;
    use rnnk_core::{Backend, Cuda, CudaBuf, Rnn};
    use std::ffi::c_void;
    use std::ops::DerefMut;

    /// The model's `Rnn` if it is on "cuda"; otherwise an error naming `model`.
    fn cuda_rnn(m: &Model) -> Result<&Rnn<f32, rnnk_core::CudaHost>, CapiError> {
        match &m.engine {
            Engine::Cuda(rnn) => Ok(rnn),
            _ => Err(CapiError::invalid(
                "model",
                "expected a model on the \"cuda\" backend (the *_device functions take device pointers)",
                format!("a model on \"{}\"", m.backend_name()),
            )),
        }
    }

    /// The caller's buffer at `s`, checked to be memory of `cuda`'s device.
    fn borrow(cuda: &Cuda, s: Span) -> Result<impl DerefMut<Target = CudaBuf<f32>>, CapiError> {
        // SAFETY: a `Span` of `Device` memory is the caller's device buffer of `s.len` f32 (the
        // header's contract), checked by the parser.
        Ok(unsafe { cuda.borrow_device_ptr(s.arg, s.ptr as u64, s.len) }?)
    }

    /// Makes `stream` wait for the backend's work when dropped: the handshake's second half on a
    /// panic, so that the caller's later work never races with what was enqueued.
    struct Rejoin<'a> {
        cuda: &'a Cuda,
        stream: *mut c_void,
        armed: bool,
    }

    impl Drop for Rejoin<'_> {
        fn drop(&mut self) {
            if self.armed {
                // SAFETY: the stream was accepted by `wait_for_stream`; nothing to report on a panic.
                let _ = unsafe { self.cuda.make_stream_wait(self.stream.cast()) };
            }
        }
    }

    /// Runs `work` (which enqueues on the backend's streams) ordered after the caller's work on
    /// `stream`, and makes `stream` wait for it, whatever its outcome.
    fn on_stream(cuda: &Cuda, stream: *mut c_void, work: impl FnOnce() -> Result<(), CapiError>) -> Result<(), CapiError> {
        // SAFETY: `stream` is NULL, a special handle or a live stream (the header's contract).
        unsafe { cuda.wait_for_stream("stream", stream.cast()) }?;
        let mut rejoin = Rejoin { cuda, stream, armed: true };
        let result = work();
        rejoin.armed = false;
        // SAFETY: as above.
        let joined = unsafe { cuda.make_stream_wait(stream.cast()) }.map_err(CapiError::from);
        result.and(joined)
    }

    // Each function below checks that every pointer is device memory before anything is enqueued.

    /// Forward inference, or training into the call's reserve.
    pub fn forward(call: ForwardCall<'_, Device>, stream: *mut c_void) -> Result<(), CapiError> {
        let rnn = cuda_rnn(&call.model)?;
        let (cuda, plan) = (&rnn.backend().0, rnn.plan());
        let mut bufs = call.bufs.try_map(|s| borrow(cuda, s), |s| borrow(cuda, s))?;
        let (mut input, output) = bufs.io();
        input.masks = call.masks;
        let Some(mut r) = call.reserve else {
            return on_stream(cuda, stream, || Ok(cuda.forward_inference(plan, &call.shape, input, output)?));
        };
        // The reserve is only touched once the stream was accepted: a rejected call leaves it as
        // it was.
        on_stream(cuda, stream, || Ok(cuda.forward_training(plan, &call.shape, input, output, r.data.cuda())?))?;
        r.model_id = call.model.id;
        Ok(())
    }

    /// Backward from the call's reserve.
    pub fn backward(call: BackwardCall<'_, Device>, stream: *mut c_void) -> Result<(), CapiError> {
        let rnn = cuda_rnn(&call.model)?;
        let (cuda, plan) = (&rnn.backend().0, rnn.plan());
        let ReserveData::Cuda(data) = &call.reserve.data else {
            return Err(CapiError::handle("reserve", "a reserve of backend cuda", "another backend's"));
        };
        let mut bufs = call.bufs.try_map(|s| borrow(cuda, s), |s| borrow(cuda, s))?;
        let (grads, output) = bufs.io();
        on_stream(cuda, stream, || Ok(cuda.backward(plan, data, grads, output, call.mode)?))
    }

    /// Reads the parameters from device memory after the caller's work on `stream`, and returns
    /// once they are read (a host synchronisation).
    pub fn set_params(mut call: ParamsIn<'_, Device>, stream: *mut c_void) -> Result<(), CapiError> {
        let mut host = vec![0.0; call.params.len];
        {
            let cuda = &cuda_rnn(&call.model)?.backend().0;
            let src = borrow(cuda, call.params)?;
            // The download synchronises stream 0, which waited for `stream`.
            on_stream(cuda, stream, || Ok(cuda.download_into(&src, &mut host)?))?;
        }
        call.model.set_params(&host)
    }

    /// Copies the model's parameters into device memory, ordered on `stream`.
    pub fn get_params(call: ParamsOut<'_, Device>, stream: *mut c_void) -> Result<(), CapiError> {
        let rnn = cuda_rnn(&call.model)?;
        let cuda = &rnn.backend().0;
        let mut dst = borrow(cuda, call.params)?;
        // Device to device, from the plan's weights.
        on_stream(cuda, stream, || Ok(Backend::<f32>::read_params(cuda, rnn.plan(), &mut dst)?))
    }
}

/// Forward inference on device buffers, ordered on `stream`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_device(
    model: *const RnnkModel, steps: usize, batch: usize, lengths: *const i64, lengths_len: usize, x: *const f32, x_len: usize,
    h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, y: *mut f32, y_len: usize, hn: *mut f32, hn_len: usize, cn: *mut f32,
    cn_len: usize, stream: *mut c_void,
) -> c_int {
    let bufs = RawForwardBufs { x: (x, x_len), h0: (h0, h0_len), c0: (c0, c0_len), y: (y, y_len), hn: (hn, hn_len), cn: (cn, cn_len) };
    let raw = RawForward { model, reserve: None, steps, batch, lengths: (lengths, lengths_len), bufs, masks: crate::args::RawMasks::None };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| DeviceWork::Forward(unsafe { raw.parse()? }).run(stream))
}

/// Forward for training on device buffers: as `rnnk_forward_device`, and fills `reserve` (kept on
/// the device) for `rnnk_backward_device` or `rnnk_backward`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_training_device(
    model: *const RnnkModel, reserve: *mut RnnkReserve, steps: usize, batch: usize, lengths: *const i64, lengths_len: usize, x: *const f32,
    x_len: usize, h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, y: *mut f32, y_len: usize, hn: *mut f32, hn_len: usize,
    cn: *mut f32, cn_len: usize, stream: *mut c_void,
) -> c_int {
    let bufs = RawForwardBufs { x: (x, x_len), h0: (h0, h0_len), c0: (c0, c0_len), y: (y, y_len), hn: (hn, hn_len), cn: (cn, cn_len) };
    let raw = RawForward {
        model,
        reserve: Some(reserve),
        steps,
        batch,
        lengths: (lengths, lengths_len),
        bufs,
        masks: crate::args::RawMasks::None,
    };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| DeviceWork::Forward(unsafe { raw.parse()? }).run(stream))
}

/// Forward for training on device buffers with the dropout masks of `(mask_seed, mask_offset)`:
/// as `rnnk_forward_training_device`, the masks as `rnnk_forward_training_masked` takes them.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_training_masked_device(
    model: *const RnnkModel, reserve: *mut RnnkReserve, mask_seed: u64, mask_offset: u64, steps: usize, batch: usize, lengths: *const i64,
    lengths_len: usize, x: *const f32, x_len: usize, h0: *const f32, h0_len: usize, c0: *const f32, c0_len: usize, y: *mut f32,
    y_len: usize, hn: *mut f32, hn_len: usize, cn: *mut f32, cn_len: usize, stream: *mut c_void,
) -> c_int {
    let bufs = RawForwardBufs { x: (x, x_len), h0: (h0, h0_len), c0: (c0, c0_len), y: (y, y_len), hn: (hn, hn_len), cn: (cn, cn_len) };
    let masks = crate::args::RawMasks::Seed(mask_seed, mask_offset);
    let raw = RawForward { model, reserve: Some(reserve), steps, batch, lengths: (lengths, lengths_len), bufs, masks };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| DeviceWork::Forward(unsafe { raw.parse()? }).run(stream))
}

/// Backpropagation through time on device buffers, ordered on `stream`; as `rnnk_backward`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_backward_device(
    model: *const RnnkModel, reserve: *const RnnkReserve, dy: *const f32, dy_len: usize, dhn: *const f32, dhn_len: usize, dcn: *const f32,
    dcn_len: usize, dx: *mut f32, dx_len: usize, dh0: *mut f32, dh0_len: usize, dc0: *mut f32, dc0_len: usize, dparams: *mut f32,
    dparams_len: usize, accumulate: c_int, stream: *mut c_void,
) -> c_int {
    let grads = RawGrads { dy: (dy, dy_len), dhn: (dhn, dhn_len), dcn: (dcn, dcn_len) };
    let outputs = RawGradOutputs { dx: (dx, dx_len), dh0: (dh0, dh0_len), dc0: (dc0, dc0_len), dparams: (dparams, dparams_len) };
    let raw = RawBackward { model, reserve, grads, outputs, accumulate };
    // SAFETY: the caller's arguments (the header's contract), checked by `parse`.
    guard(|| DeviceWork::Backward(unsafe { raw.parse()? }).run(stream))
}

/// Sets the parameters from `params_len` floats of device memory (flat layout), read after the
/// caller's work on `stream`; returns once they are read.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_set_params_device(
    model: *mut RnnkModel, params: *const f32, params_len: usize, stream: *mut c_void,
) -> c_int {
    // SAFETY: the caller's arguments (the header's contract); exclusive use of the model.
    guard(|| DeviceWork::SetParams(unsafe { args::params_in(model, (params, params_len))? }).run(stream))
}

/// Copies the parameters (flat layout) into `params_len` floats of device memory, ordered on
/// `stream`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_get_params_device(
    model: *const RnnkModel, params: *mut f32, params_len: usize, stream: *mut c_void,
) -> c_int {
    // SAFETY: the caller's arguments (the header's contract).
    guard(|| DeviceWork::GetParams(unsafe { args::params_out(model, (params, params_len))? }).run(stream))
}
