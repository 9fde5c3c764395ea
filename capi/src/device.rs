//! The device-pointer entry points (`rnnk_*_device` in the header): the same calls as the host
//! ones, on buffers already in the memory of a "cuda" model's device, ordered with a caller's
//! stream.
//!
//! Every argument is checked first, whatever the model's backend and whether this library has
//! the `cuda` feature: handles, NULL and alignment of each pointer, overlaps, and every length
//! against the configuration and shape (with the host calls' own checks, so the messages are the
//! same). Then the model must be on "cuda" (`RNNK_ERR_BACKEND_UNAVAILABLE` in a build without
//! the feature), each pointer must be memory of its device (a host pointer is rejected), and
//! `stream` a stream of its primary context. Only then is anything enqueued:
//!
//! 1. the backend's stream 0 waits for an event recorded on `stream` (the caller's earlier work);
//! 2. the call's work is enqueued on the backend's streams, exactly as for `Cuda` in Rust;
//! 3. `stream` waits for an event recorded on stream 0 after it (on every path: success, error,
//!    panic), so the caller's later work on `stream` sees the results.
//!
//! The caller's buffers are wrapped as `BorrowedCudaBuf`s, which the library never frees.

use crate::args::{self, Buffers};
use crate::handle::{Model, Reserve, ReserveData};
use crate::status::{guard, CapiError};
use crate::{check_reserve_owner, RnnkModel, RnnkReserve};
use rnnk_core::{
    check_backward, check_forward, BackwardInput, BackwardOutput, Buffer, ForwardInput, ForwardOutput, GradMode, ParamLayout, RnnReserve,
    SeqShape,
};
use std::ffi::{c_int, c_void};

/// A buffer of which only the length is known: to check a device call's lengths with the host
/// calls' checks before the backend is looked at.
struct Len(usize);

impl Buffer for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn len(d: Option<args::Device>) -> Option<Len> {
    d.map(|d| Len(d.len))
}

/// A forward call's device buffers, checked for NULL, alignment and overlaps.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct ForwardArgs {
    x: args::Device,
    h0: Option<args::Device>,
    c0: Option<args::Device>,
    y: args::Device,
    hn: Option<args::Device>,
    cn: Option<args::Device>,
}

/// A backward call's device buffers, checked like [`ForwardArgs`].
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct BackwardArgs {
    dy: Option<args::Device>,
    dhn: Option<args::Device>,
    dcn: Option<args::Device>,
    dx: Option<args::Device>,
    dh0: Option<args::Device>,
    dc0: Option<args::Device>,
    dparams: Option<args::Device>,
}

/// The model's `Rnn` if it is on "cuda"; otherwise an error naming `model`.
#[cfg(feature = "cuda")]
fn cuda_rnn(m: &Model) -> Result<&rnnk_core::Rnn<f32, rnnk_core::CudaHost>, CapiError> {
    match &m.engine {
        crate::handle::Engine::Cuda(rnn) => Ok(rnn),
        _ => Err(CapiError::invalid(
            "model",
            "expected a model on the \"cuda\" backend (the *_device functions take device pointers)",
            format!("a model on \"{}\"", m.backend_name()),
        )),
    }
}

/// Without the `cuda` feature no model can take device pointers.
#[cfg(not(feature = "cuda"))]
fn cuda_rnn(m: &Model) -> Result<std::convert::Infallible, CapiError> {
    Err(CapiError::new(
        crate::status::RNNK_ERR_BACKEND_UNAVAILABLE,
        format!(
            "`model`: the *_device functions need a model on the \"cuda\" backend, and this library was built without the `cuda` \
             feature (cargo build --release -p rnn-kernels-capi --features cuda); got a model on \"{}\"",
            m.backend_name()
        ),
    ))
}

#[cfg(feature = "cuda")]
mod on_device {
    //! The part that needs the CUDA backend: wrapping the pointers and the stream handshake.

    use super::*;
    use rnnk_core::BorrowedCudaBuf;
    use rnnk_core::{Backend, Cuda};

    /// The caller's buffer at `d`, checked to be memory of `cuda`'s device.
    ///
    /// # Safety
    /// `d` addresses `d.len` f32 of device memory (the header's contract).
    pub unsafe fn borrow(cuda: &Cuda, arg: &str, d: args::Device) -> Result<BorrowedCudaBuf, CapiError> {
        // SAFETY: forwarded.
        Ok(unsafe { cuda.borrow_device_ptr(arg, d.ptr, d.len) }?)
    }

    /// Optional [`borrow`].
    ///
    /// # Safety
    /// As [`borrow`].
    pub unsafe fn borrow_opt(cuda: &Cuda, arg: &str, d: Option<args::Device>) -> Result<Option<BorrowedCudaBuf>, CapiError> {
        // SAFETY: forwarded.
        d.map(|d| unsafe { borrow(cuda, arg, d) }).transpose()
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
    ///
    /// # Safety
    /// `stream` is NULL, a special handle or a live stream (the header's contract).
    pub unsafe fn on_stream(cuda: &Cuda, stream: *mut c_void, work: impl FnOnce() -> Result<(), CapiError>) -> Result<(), CapiError> {
        // SAFETY: forwarded.
        unsafe { cuda.wait_for_stream("stream", stream.cast()) }?;
        let mut rejoin = Rejoin { cuda, stream, armed: true };
        let result = work();
        rejoin.armed = false;
        // SAFETY: as above.
        let joined = unsafe { cuda.make_stream_wait(stream.cast()) }.map_err(CapiError::from);
        result.and(joined)
    }

    /// The forward call (inference, or training into `reserve`) on the model's device.
    ///
    /// # Safety
    /// The buffers and the stream are the caller's promise (the header's contract).
    pub unsafe fn forward(
        m: &Model,
        reserve: Option<&mut Reserve>,
        shape: &SeqShape,
        a: &ForwardArgs,
        stream: *mut c_void,
    ) -> Result<(), CapiError> {
        let rnn = cuda_rnn(m)?;
        let (cuda, plan) = (&rnn.backend().0, rnn.plan());
        // SAFETY (the borrows): forwarded; every pointer is checked before anything is enqueued.
        let x = unsafe { borrow(cuda, "x", a.x)? };
        let h0 = unsafe { borrow_opt(cuda, "h0", a.h0)? };
        let c0 = unsafe { borrow_opt(cuda, "c0", a.c0)? };
        let mut y = unsafe { borrow(cuda, "y", a.y)? };
        let mut hn = unsafe { borrow_opt(cuda, "hn", a.hn)? };
        let mut cn = unsafe { borrow_opt(cuda, "cn", a.cn)? };
        let input = ForwardInput { x: &*x, h0: h0.as_deref(), c0: c0.as_deref() };
        let output = ForwardOutput { y: &mut *y, hn: hn.as_deref_mut(), cn: cn.as_deref_mut() };
        let Some(r) = reserve else {
            // SAFETY: forwarded.
            return unsafe { on_stream(cuda, stream, || Ok(<Cuda as Backend<f32>>::forward_inference(cuda, plan, shape, input, output)?)) };
        };
        // SAFETY: forwarded.
        unsafe {
            on_stream(cuda, stream, || {
                // Only once the stream was accepted: a rejected call leaves the reserve as it was.
                if !matches!(r.data, ReserveData::Cuda(_)) {
                    r.data = ReserveData::Cuda(Default::default());
                }
                let ReserveData::Cuda(data) = &mut r.data else { unreachable!("set just above") };
                Ok(<Cuda as Backend<f32>>::forward_training(cuda, plan, shape, input, output, data)?)
            })
        }?;
        r.model_id = m.id;
        Ok(())
    }

    /// The backward call on the model's device.
    ///
    /// # Safety
    /// As [`forward`].
    pub unsafe fn backward(m: &Model, r: &Reserve, a: &BackwardArgs, mode: GradMode, stream: *mut c_void) -> Result<(), CapiError> {
        let rnn = cuda_rnn(m)?;
        let (cuda, plan) = (&rnn.backend().0, rnn.plan());
        let ReserveData::Cuda(data) = &r.data else {
            return Err(CapiError::handle("reserve", "a reserve of backend cuda", "another backend's"));
        };
        // SAFETY (the borrows): forwarded; every pointer is checked before anything is enqueued.
        let dy = unsafe { borrow_opt(cuda, "dy", a.dy)? };
        let dhn = unsafe { borrow_opt(cuda, "dhn", a.dhn)? };
        let dcn = unsafe { borrow_opt(cuda, "dcn", a.dcn)? };
        let mut dx = unsafe { borrow_opt(cuda, "dx", a.dx)? };
        let mut dh0 = unsafe { borrow_opt(cuda, "dh0", a.dh0)? };
        let mut dc0 = unsafe { borrow_opt(cuda, "dc0", a.dc0)? };
        let mut dparams = unsafe { borrow_opt(cuda, "dparams", a.dparams)? };
        let grads = BackwardInput { dy: dy.as_deref(), dhn: dhn.as_deref(), dcn: dcn.as_deref() };
        let output =
            BackwardOutput { dx: dx.as_deref_mut(), dh0: dh0.as_deref_mut(), dc0: dc0.as_deref_mut(), dparams: dparams.as_deref_mut() };
        // SAFETY: forwarded.
        unsafe { on_stream(cuda, stream, || Ok(<Cuda as Backend<f32>>::backward(cuda, plan, data, grads, output, mode)?)) }
    }

    /// Reads the parameters from device memory into a host vector, after the caller's work on
    /// `stream`; returns once they are read (a host synchronisation).
    ///
    /// # Safety
    /// As [`forward`].
    pub unsafe fn read_params(m: &Model, p: args::Device, stream: *mut c_void) -> Result<Vec<f32>, CapiError> {
        let cuda = &cuda_rnn(m)?.backend().0;
        // SAFETY: forwarded.
        let src = unsafe { borrow(cuda, "params", p)? };
        let mut host = vec![0.0; p.len];
        // SAFETY: forwarded. The download synchronises stream 0, which waited for `stream`.
        unsafe { on_stream(cuda, stream, || Ok(cuda.download_into(&src, &mut host)?)) }?;
        Ok(host)
    }

    /// Copies the model's parameters into device memory, ordered on `stream`.
    ///
    /// # Safety
    /// As [`forward`].
    pub unsafe fn write_params(m: &Model, p: args::Device, stream: *mut c_void) -> Result<(), CapiError> {
        let cuda = &cuda_rnn(m)?.backend().0;
        // SAFETY: forwarded.
        let mut dst = unsafe { borrow(cuda, "params", p)? };
        // SAFETY: forwarded.
        unsafe { on_stream(cuda, stream, || Ok(cuda.upload_into(m.params.as_slice(), &mut dst)?)) }
    }
}

/// Forward inference and training on device buffers share everything but the reserve.
unsafe fn forward_device_impl(
    model: *const RnnkModel,
    reserve: Option<*mut RnnkReserve>,
    steps: usize,
    batch: usize,
    lengths: *const i64,
    lengths_len: usize,
    x: *const f32,
    x_len: usize,
    h0: *const f32,
    h0_len: usize,
    c0: *const f32,
    c0_len: usize,
    y: *mut f32,
    y_len: usize,
    hn: *mut f32,
    hn_len: usize,
    cn: *mut f32,
    cn_len: usize,
    stream: *mut c_void,
) -> Result<(), CapiError> {
    // SAFETY: handles are checked by `get`; `lengths` is a host array (the header's contract).
    let m = unsafe { Model::get("model", model)? };
    let reserve = match reserve {
        // SAFETY: as above.
        Some(r) => Some(unsafe { Reserve::get_mut("reserve", r)? }),
        None => None,
    };
    // SAFETY: as above.
    let shape = unsafe { args::shape(steps, batch, lengths, lengths_len)? };
    let a = ForwardArgs {
        x: args::device("x", x, x_len)?,
        h0: args::opt_device("h0", h0, h0_len)?,
        c0: args::opt_device("c0", c0, c0_len)?,
        y: args::device("y", y, y_len)?,
        hn: args::opt_device("hn", hn, hn_len)?,
        cn: args::opt_device("cn", cn, cn_len)?,
    };
    let mut bufs = Buffers::default();
    bufs.add("x", x, x_len, false);
    bufs.add("h0", h0, h0_len, false);
    bufs.add("c0", c0, c0_len, false);
    bufs.add("y", y, y_len, true);
    bufs.add("hn", hn, hn_len, true);
    bufs.add("cn", cn, cn_len, true);
    bufs.check_overlaps()?;
    {
        let (x, h0, c0) = (Len(a.x.len), len(a.h0), len(a.c0));
        let (mut y, mut hn, mut cn) = (Len(a.y.len), len(a.hn), len(a.cn));
        let input = ForwardInput { x: &x, h0: h0.as_ref(), c0: c0.as_ref() };
        let output = ForwardOutput { y: &mut y, hn: hn.as_mut(), cn: cn.as_mut() };
        check_forward(m.config(), &shape, &input, &output)?;
    }
    #[cfg(feature = "cuda")]
    // SAFETY: the caller's buffers and stream (the header's contract).
    return unsafe { on_device::forward(m, reserve, &shape, &a, stream) };
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (reserve, a, stream);
        match cuda_rnn(m)? {}
    }
}

/// Forward inference on device buffers, ordered on `stream`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_device(
    model: *const RnnkModel,
    steps: usize,
    batch: usize,
    lengths: *const i64,
    lengths_len: usize,
    x: *const f32,
    x_len: usize,
    h0: *const f32,
    h0_len: usize,
    c0: *const f32,
    c0_len: usize,
    y: *mut f32,
    y_len: usize,
    hn: *mut f32,
    hn_len: usize,
    cn: *mut f32,
    cn_len: usize,
    stream: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded.
        unsafe {
            forward_device_impl(
                model,
                None,
                steps,
                batch,
                lengths,
                lengths_len,
                x,
                x_len,
                h0,
                h0_len,
                c0,
                c0_len,
                y,
                y_len,
                hn,
                hn_len,
                cn,
                cn_len,
                stream,
            )
        }
    })
}

/// Forward for training on device buffers: as `rnnk_forward_device`, and fills `reserve` (kept on
/// the device) for `rnnk_backward_device` or `rnnk_backward`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_forward_training_device(
    model: *const RnnkModel,
    reserve: *mut RnnkReserve,
    steps: usize,
    batch: usize,
    lengths: *const i64,
    lengths_len: usize,
    x: *const f32,
    x_len: usize,
    h0: *const f32,
    h0_len: usize,
    c0: *const f32,
    c0_len: usize,
    y: *mut f32,
    y_len: usize,
    hn: *mut f32,
    hn_len: usize,
    cn: *mut f32,
    cn_len: usize,
    stream: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded.
        unsafe {
            forward_device_impl(
                model,
                Some(reserve),
                steps,
                batch,
                lengths,
                lengths_len,
                x,
                x_len,
                h0,
                h0_len,
                c0,
                c0_len,
                y,
                y_len,
                hn,
                hn_len,
                cn,
                cn_len,
                stream,
            )
        }
    })
}

/// The shape of the training call that filled `r`, or the host call's error for an empty one.
fn reserve_shape(r: &Reserve) -> Result<&SeqShape, CapiError> {
    let shape = match &r.data {
        ReserveData::Empty => None,
        ReserveData::Host(h) => h.shape(),
        #[cfg(feature = "cuda")]
        ReserveData::Cuda(c) => c.shape(),
    };
    shape.ok_or_else(|| CapiError::invalid("reserve", "must be filled by rnnk_forward_training before rnnk_backward", "an empty reserve"))
}

/// Backpropagation through time on device buffers, ordered on `stream`; as `rnnk_backward`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_backward_device(
    model: *const RnnkModel,
    reserve: *const RnnkReserve,
    dy: *const f32,
    dy_len: usize,
    dhn: *const f32,
    dhn_len: usize,
    dcn: *const f32,
    dcn_len: usize,
    dx: *mut f32,
    dx_len: usize,
    dh0: *mut f32,
    dh0_len: usize,
    dc0: *mut f32,
    dc0_len: usize,
    dparams: *mut f32,
    dparams_len: usize,
    accumulate: c_int,
    stream: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: handles are checked by `get`.
        let (m, r) = unsafe { (Model::get("model", model)?, Reserve::get("reserve", reserve)?) };
        let shape = reserve_shape(r)?;
        check_reserve_owner(m, r)?;
        let a = BackwardArgs {
            dy: args::opt_device("dy", dy, dy_len)?,
            dhn: args::opt_device("dhn", dhn, dhn_len)?,
            dcn: args::opt_device("dcn", dcn, dcn_len)?,
            dx: args::opt_device("dx", dx, dx_len)?,
            dh0: args::opt_device("dh0", dh0, dh0_len)?,
            dc0: args::opt_device("dc0", dc0, dc0_len)?,
            dparams: args::opt_device("dparams", dparams, dparams_len)?,
        };
        let mut bufs = Buffers::default();
        bufs.add("dy", dy, dy_len, false);
        bufs.add("dhn", dhn, dhn_len, false);
        bufs.add("dcn", dcn, dcn_len, false);
        bufs.add("dx", dx, dx_len, true);
        bufs.add("dh0", dh0, dh0_len, true);
        bufs.add("dc0", dc0, dc0_len, true);
        bufs.add("dparams", dparams, dparams_len, true);
        bufs.check_overlaps()?;
        {
            let (dy, dhn, dcn) = (len(a.dy), len(a.dhn), len(a.dcn));
            let (mut dx, mut dh0, mut dc0, mut dp) = (len(a.dx), len(a.dh0), len(a.dc0), len(a.dparams));
            let grads = BackwardInput { dy: dy.as_ref(), dhn: dhn.as_ref(), dcn: dcn.as_ref() };
            let output = BackwardOutput { dx: dx.as_mut(), dh0: dh0.as_mut(), dc0: dc0.as_mut(), dparams: dp.as_mut() };
            check_backward(m.config(), shape, m.params.as_slice().len(), &grads, &output)?;
        }
        let mode = if accumulate != 0 { GradMode::Accumulate } else { GradMode::Overwrite };
        #[cfg(feature = "cuda")]
        // SAFETY: the caller's buffers and stream (the header's contract).
        return unsafe { on_device::backward(m, r, &a, mode, stream) };
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (a, mode, stream);
            match cuda_rnn(m)? {}
        }
    })
}

/// Sets the parameters from `params_len` floats of device memory (flat layout), read after the
/// caller's work on `stream`; returns once they are read.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_set_params_device(
    model: *mut RnnkModel,
    params: *const f32,
    params_len: usize,
    stream: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked; exclusive use is the header's rule for changing a model.
        let m = unsafe { Model::get_mut("model", model)? };
        let p = args::device("params", params, params_len)?;
        ParamLayout::new(m.config()).check_buffer("params", p.len)?;
        #[cfg(feature = "cuda")]
        {
            // SAFETY: the caller's buffer and stream (the header's contract).
            let host = unsafe { on_device::read_params(m, p, stream)? };
            let params = rnnk_core::Params::from_vec(m.config(), host)?;
            crate::replace_params(m, params)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = stream;
            match cuda_rnn(m)? {}
        }
    })
}

/// Copies the parameters (flat layout) into `params_len` floats of device memory, ordered on
/// `stream`.
#[no_mangle]
pub unsafe extern "C" fn rnnk_model_get_params_device(
    model: *const RnnkModel,
    params: *mut f32,
    params_len: usize,
    stream: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: handle checked.
        let m = unsafe { Model::get("model", model)? };
        let p = args::device("params", params, params_len)?;
        ParamLayout::new(m.config()).check_buffer("params", p.len)?;
        #[cfg(feature = "cuda")]
        // SAFETY: the caller's buffer and stream (the header's contract).
        return unsafe { on_device::write_params(m, p, stream) };
        #[cfg(not(feature = "cuda"))]
        {
            let _ = stream;
            match cuda_rnn(m)? {}
        }
    })
}
