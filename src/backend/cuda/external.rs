//! Memory and streams that belong to the code calling the library (the C ABI's device-pointer
//! entry points, a PyTorch extension): [`BorrowedCudaBuf`], a caller's device allocation seen as
//! a [`CudaBuf`] that the library never frees, and the event handshake that orders the backend's
//! streams with a caller's stream ([`Cuda::wait_for_stream`], [`Cuda::make_stream_wait`]).
//!
//! The backend computes on its own two streams (see `device.rs`). A caller's stream joins them
//! with events only: an event recorded on the caller's stream that stream 0 waits for before the
//! call's work, and an event recorded on stream 0 after it that the caller's stream waits for. No
//! host synchronisation; stream 1 forks from stream 0 and joins it again inside every call, so
//! stream 0 orders both.

use super::{Cuda, CudaBuf};
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUstream};
use cudarc::driver::{result, DevicePtr};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

/// A caller's device memory used as a [`CudaBuf<f32>`] for the duration of a call.
///
/// The library never frees it: the cudarc slice inside is in a `ManuallyDrop` and is leaked
/// (`CudaSlice::leak`, which releases the slice's handle on the stream and keeps the memory) when
/// this value is dropped; if the drop never runs (a `mem::forget`), the memory is not freed
/// either. Make one with [`Cuda::borrow_device_ptr`].
pub struct BorrowedCudaBuf {
    buf: ManuallyDrop<CudaBuf<f32>>,
}

impl std::fmt::Debug for BorrowedCudaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BorrowedCudaBuf({} elements)", self.buf.slice.len())
    }
}

impl Deref for BorrowedCudaBuf {
    type Target = CudaBuf<f32>;
    fn deref(&self) -> &CudaBuf<f32> {
        &self.buf
    }
}

impl DerefMut for BorrowedCudaBuf {
    fn deref_mut(&mut self) -> &mut CudaBuf<f32> {
        &mut self.buf
    }
}

impl Drop for BorrowedCudaBuf {
    fn drop(&mut self) {
        // SAFETY: `buf` is not used after this; taking it out of the ManuallyDrop only to leak it.
        let buf = unsafe { ManuallyDrop::take(&mut self.buf) };
        // Returns the address and frees nothing (the context has event tracking off, so there
        // are no events to wait for either).
        let _ = buf.slice.leak();
    }
}

/// The special stream handles of the driver API that are not objects of one context: NULL
/// (the legacy default stream), `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD`.
fn is_special_stream(stream: CUstream) -> bool {
    (stream as usize) <= 2
}

impl Cuda {
    /// The device's ordinal (`N` of `cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.dev.ctx.ordinal()
    }

    /// Wraps `len` f32 of device memory at address `ptr` as a buffer of this backend, checking
    /// that `ptr` is non-zero, 4-byte aligned and memory the CUDA driver knows on this device (a
    /// host pointer is rejected); `arg` names it in errors.
    ///
    /// # Safety
    /// `ptr` must address at least `len` f32 of memory usable by this device's primary context
    /// (cudaMalloc, cuMemAlloc, cudaMallocAsync, a PyTorch CUDA tensor's `data_ptr()`), valid
    /// until the work the call enqueues on it has finished (see [`make_stream_wait`]); the
    /// length cannot be checked against the allocation. The `CudaBuf` behind the returned
    /// value must not be moved out of it (`mem::swap`/`mem::replace` through `DerefMut`): an
    /// owned `CudaBuf` of the caller's memory would free it when dropped.
    ///
    /// [`make_stream_wait`]: Self::make_stream_wait
    pub unsafe fn borrow_device_ptr(&self, arg: &str, ptr: u64, len: usize) -> Result<BorrowedCudaBuf> {
        if ptr == 0 {
            return Err(Error::invalid(arg, "a device pointer", "NULL"));
        }
        if !ptr.is_multiple_of(4) {
            return Err(Error::invalid(arg, "a device pointer aligned to 4 bytes (f32)", format!("{ptr:#x}")));
        }
        if len > isize::MAX as usize / 4 {
            return Err(Error::invalid(format!("{arg}_len"), "a length that fits in memory", len));
        }
        self.dev.ctx.bind_to_thread().map_err(|e| self.err("binding the context", e))?;
        let mut ordinal: i32 = -1;
        // SAFETY: queries an attribute of an address (any value is allowed) into an int.
        let known = unsafe {
            sys::cuPointerGetAttribute(
                (&mut ordinal as *mut i32).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                ptr,
            )
        };
        if known != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::invalid(
                arg,
                format!("a device pointer of {}", self.dev.name),
                format!("{ptr:#x}, which the CUDA driver does not know ({known:?}: a host pointer, or freed memory)"),
            ));
        }
        if ordinal != self.ordinal() as i32 {
            return Err(Error::invalid(
                arg,
                format!("a device pointer of {}", self.dev.name),
                format!("{ptr:#x}, memory of cuda:{ordinal}"),
            ));
        }
        // SAFETY: the caller's promise (above); the slice is never dropped, only leaked.
        let slice = unsafe { self.dev.streams[0].upgrade_device_ptr::<f32>(ptr, len) };
        Ok(BorrowedCudaBuf { buf: ManuallyDrop::new(CudaBuf { slice }) })
    }

    /// Makes the backend's work enqueued from now on wait for everything enqueued so far on
    /// `stream` (NULL: the legacy default stream; `CU_STREAM_PER_THREAD` works too): an event
    /// recorded on `stream` that stream 0 waits for. No host synchronisation. `arg` names the
    /// stream in errors.
    ///
    /// # Safety
    /// `stream` is NULL, a special handle, or a live stream (`CUstream`, `cudaStream_t`).
    pub unsafe fn wait_for_stream(&self, arg: &str, stream: CUstream) -> Result<()> {
        self.dev.ctx.bind_to_thread().map_err(|e| self.err("binding the context", e))?;
        if !is_special_stream(stream) {
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            // SAFETY: a live stream (the caller's promise) and a place for the context.
            let r = unsafe { sys::cuStreamGetCtx(stream, &mut ctx) };
            if r != sys::CUresult::CUDA_SUCCESS || ctx != self.dev.ctx.cu_ctx() {
                return Err(Error::invalid(
                    arg,
                    format!("a stream of {}'s primary context (the CUDA runtime's), or NULL", self.dev.name),
                    format!("{stream:p}, a stream of another context ({r:?})"),
                ));
            }
        }
        // SAFETY: both streams are live (ours are the device's; the caller's is its promise).
        unsafe { self.order(self.dev.streams[0].cu_stream(), stream) }
    }

    /// Makes `stream` wait for all the work the backend has enqueued so far (an event recorded
    /// on stream 0, which every call joins at its end, that `stream` waits for). No host
    /// synchronisation: after this, work the caller enqueues on `stream` (reading an output,
    /// `cudaFreeAsync` of an input) runs after the backend's.
    ///
    /// # Safety
    /// As [`wait_for_stream`](Self::wait_for_stream).
    pub unsafe fn make_stream_wait(&self, stream: CUstream) -> Result<()> {
        self.dev.ctx.bind_to_thread().map_err(|e| self.err("binding the context", e))?;
        // Every call joins stream 1 into stream 0 before it returns, but a call that panicked
        // midway (the C ABI's handshake still runs then) may not have: join it here too, so
        // that `stream` never runs ahead of work left on stream 1.
        // SAFETY: as above (the device's own streams).
        let joined = unsafe { self.order(self.dev.streams[0].cu_stream(), self.dev.streams[1].cu_stream()) };
        // SAFETY: as above.
        let waited = unsafe { self.order(stream, self.dev.streams[0].cu_stream()) };
        joined.and(waited)
    }

    /// `to` waits for the work enqueued so far on `from`.
    ///
    /// # Safety
    /// Both are live streams (or special handles) of this device's context, which is current.
    unsafe fn order(&self, to: CUstream, from: CUstream) -> Result<()> {
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| self.err("creating an event", e))?;
        // SAFETY: a live event and streams (the caller's promise).
        let r = unsafe {
            result::event::record(event, from)
                .and_then(|()| result::stream::wait_event(to, event, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))
        };
        // SAFETY: the event is ours; destroying it after the wait was enqueued is allowed (its
        // resources are released once the wait is done).
        let d = unsafe { result::event::destroy(event) };
        r.map_err(|e| self.err("ordering the caller's stream with the backend's", e))?;
        d.map_err(|e| self.err("destroying an event", e))
    }

    /// Copies `host` into `buf` (same length) on stream 0, after the work enqueued before it;
    /// returns once `host` may be reused (the copy itself may still be in flight).
    pub fn upload_into(&self, host: &[f32], buf: &mut CudaBuf<f32>) -> Result<()> {
        crate::error::check_len("host", "the device buffer's length", &[buf.slice.len()], host.len())?;
        self.dev.ctx.bind_to_thread().map_err(|e| self.err("binding the context", e))?;
        if host.is_empty() {
            return Ok(());
        }
        let s = &self.dev.streams[0];
        let (dst, _sync) = buf.slice.device_ptr(s);
        // SAFETY: `dst` holds host.len() f32 (checked above); a pageable source is staged by the
        // driver before the call returns.
        unsafe { result::memcpy_htod_async(dst, host, s.cu_stream()) }.map_err(|e| self.err("uploading", e))
    }
}
