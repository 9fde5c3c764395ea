//! The device-pointer entry points on a real GPU, through the C ABI: this crate's shared library
//! is built (like tests/c_program.rs does) and loaded with dlopen, and its `rnnk_*_device`
//! functions are called with raw device pointers of buffers allocated with `Cuda::upload` (the
//! caller's memory, in this test's own copy of rnn-kernels: the library sees it as foreign
//! memory of the same primary context), on a stream this test creates.
//!
//! For a 2-layer bidirectional LSTM with variable lengths, everything the device calls write
//! (forward inference, forward training, backward overwrite and accumulate, parameters out and
//! in) must equal, bit for bit, what the host-pointer functions write on the same model.
//!
//! The stream handshake is checked, not assumed: before each call the caller's stream sleeps
//! (a host function) and only then copies the real inputs into the call's buffers and fills the
//! outputs with NaN, and right after the call it copies the outputs back. A library that did
//! not wait for the caller's stream would read the placeholder inputs; a caller's stream that
//! did not wait for the library would read NaN or a partial result.
//!
//! Without a GPU it prints "skipped"; with `RNN_KERNELS_REQUIRE_CUDA=1` it fails instead.

#[cfg(feature = "cuda")]
mod common;

fn require_cuda() -> bool {
    std::env::var("RNN_KERNELS_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

#[cfg(not(feature = "cuda"))]
#[test]
fn device_entry_points_on_a_gpu() {
    assert!(!require_cuda(), "RNN_KERNELS_REQUIRE_CUDA=1, but this test was built without the cuda feature (--features cuda)");
    println!("skipped: built without the cuda feature");
}

#[cfg(feature = "cuda")]
#[test]
fn device_entry_points_on_a_gpu() {
    let cuda = match rnnk_core::Cuda::new() {
        Ok(c) => c,
        Err(e) => {
            assert!(!require_cuda(), "RNN_KERNELS_REQUIRE_CUDA=1, but there is no usable CUDA device: {e}");
            println!("skipped: no CUDA device ({e})");
            return;
        }
    };
    gpu::run(&cuda);
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{build_library, Case, Library};
    use rnnk_core::cudarc::driver::{result, sys, DevicePtr};
    use rnnk_core::{Cuda, CudaBuf, Params};
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::path::Path;
    use std::ptr::{null, null_mut};

    const I: usize = 8;
    const H: usize = 16;
    const L: usize = 2;
    const T: usize = 12;
    const B: usize = 4;
    const LENGTHS: [i64; B] = [12, 5, 9, 1];
    /// The element counts of `x`, `y` and `h0`/`c0` (and their gradients), bidirectional.
    const XL: usize = T * B * I;
    const YL: usize = T * B * 2 * H;
    const HL: usize = L * 2 * B * H;
    const RNNK_OK: c_int = 0;
    const RNNK_ERR_INVALID_ARGUMENT: c_int = 2;

    // The header's prototypes: `In`/`Out` are a buffer argument's pointer, `N` a size_t.
    type Model = *mut c_void;
    type Reserve = *mut c_void;
    type Stream = *mut c_void;
    type In = *const f32;
    type Out = *mut f32;
    type N = usize;
    type Lengths = *const i64;
    type Forward = unsafe extern "C" fn(Model, N, N, Lengths, N, In, N, In, N, In, N, Out, N, Out, N, Out, N) -> c_int;
    type ForwardDevice = unsafe extern "C" fn(Model, N, N, Lengths, N, In, N, In, N, In, N, Out, N, Out, N, Out, N, Stream) -> c_int;
    type ForwardTraining = unsafe extern "C" fn(Model, Reserve, N, N, Lengths, N, In, N, In, N, In, N, Out, N, Out, N, Out, N) -> c_int;
    type ForwardTrainingDevice =
        unsafe extern "C" fn(Model, Reserve, N, N, Lengths, N, In, N, In, N, In, N, Out, N, Out, N, Out, N, Stream) -> c_int;
    type Backward = unsafe extern "C" fn(Model, Reserve, In, N, In, N, In, N, Out, N, Out, N, Out, N, Out, N, c_int) -> c_int;
    type BackwardDevice = unsafe extern "C" fn(Model, Reserve, In, N, In, N, In, N, Out, N, Out, N, Out, N, Out, N, c_int, Stream) -> c_int;

    /// The library's functions this test calls.
    struct Lib {
        last_error: unsafe extern "C" fn() -> *const c_char,
        model_create: unsafe extern "C" fn(*const c_char, N, N, N, c_int, N, c_int, *const c_char, N, *mut Model) -> c_int,
        model_free: unsafe extern "C" fn(Model) -> c_int,
        set_params: unsafe extern "C" fn(Model, In, N) -> c_int,
        get_params: unsafe extern "C" fn(Model, Out, N) -> c_int,
        set_params_device: unsafe extern "C" fn(Model, In, N, Stream) -> c_int,
        get_params_device: unsafe extern "C" fn(Model, Out, N, Stream) -> c_int,
        reserve_create: unsafe extern "C" fn(*mut Reserve) -> c_int,
        reserve_free: unsafe extern "C" fn(Reserve) -> c_int,
        forward: Forward,
        forward_device: ForwardDevice,
        forward_training: ForwardTraining,
        forward_training_device: ForwardTrainingDevice,
        backward: Backward,
        backward_device: BackwardDevice,
    }

    impl Lib {
        fn open(dir: &Path) -> Lib {
            let lib = Library::open(dir);
            macro_rules! sym {
                ($name:literal) => {
                    lib.symbol($name)
                };
            }
            Lib {
                last_error: sym!("rnnk_last_error"),
                model_create: sym!("rnnk_model_create"),
                model_free: sym!("rnnk_model_free"),
                set_params: sym!("rnnk_model_set_params"),
                get_params: sym!("rnnk_model_get_params"),
                set_params_device: sym!("rnnk_model_set_params_device"),
                get_params_device: sym!("rnnk_model_get_params_device"),
                reserve_create: sym!("rnnk_reserve_create"),
                reserve_free: sym!("rnnk_reserve_free"),
                forward: sym!("rnnk_forward"),
                forward_device: sym!("rnnk_forward_device"),
                forward_training: sym!("rnnk_forward_training"),
                forward_training_device: sym!("rnnk_forward_training_device"),
                backward: sym!("rnnk_backward"),
                backward_device: sym!("rnnk_backward_device"),
            }
        }

        /// Asserts that a call returned `want`, with the library's message on failure.
        fn check(&self, what: &str, got: c_int, want: c_int) -> String {
            // SAFETY: never NULL, valid until the next call on this thread.
            let msg = unsafe { CStr::from_ptr((self.last_error)()) }.to_string_lossy().into_owned();
            assert_eq!(got, want, "{what}: status {got}, expected {want}: {msg}");
            msg
        }

        /// `rnnk_forward` on `b`: with `reserve`, `rnnk_forward_training`; with `stream` (which
        /// may be NULL), the `*_device` function ordered on it.
        ///
        /// # Safety
        /// `b` holds buffers of the lengths of this test's shape (host or device memory as the
        /// function takes), or NULL.
        unsafe fn forward(&self, m: Model, reserve: Option<Reserve>, stream: Option<Stream>, b: Fwd) -> c_int {
            let l = LENGTHS.as_ptr();
            // SAFETY: the caller's.
            unsafe {
                match (reserve, stream) {
                    (None, None) => (self.forward)(m, T, B, l, B, b.x, XL, b.h0, HL, b.c0, HL, b.y, YL, b.hn, HL, b.cn, HL),
                    (Some(r), None) => (self.forward_training)(m, r, T, B, l, B, b.x, XL, b.h0, HL, b.c0, HL, b.y, YL, b.hn, HL, b.cn, HL),
                    (None, Some(s)) => (self.forward_device)(m, T, B, l, B, b.x, XL, b.h0, HL, b.c0, HL, b.y, YL, b.hn, HL, b.cn, HL, s),
                    (Some(r), Some(s)) => {
                        (self.forward_training_device)(m, r, T, B, l, B, b.x, XL, b.h0, HL, b.c0, HL, b.y, YL, b.hn, HL, b.cn, HL, s)
                    }
                }
            }
        }

        /// `rnnk_backward` on `b` (adding into `dparams` if `accumulate` is 1); with `stream`,
        /// `rnnk_backward_device` ordered on it.
        ///
        /// # Safety
        /// As [`forward`](Self::forward); `b.dp` holds `np` floats.
        unsafe fn backward(&self, m: Model, r: Reserve, stream: Option<Stream>, b: Bwd, np: usize, accumulate: c_int) -> c_int {
            // SAFETY: the caller's.
            unsafe {
                match stream {
                    None => (self.backward)(m, r, b.dy, YL, b.dhn, HL, b.dcn, HL, b.dx, XL, b.dh0, HL, b.dc0, HL, b.dp, np, accumulate),
                    Some(s) => (self.backward_device)(
                        m, r, b.dy, YL, b.dhn, HL, b.dcn, HL, b.dx, XL, b.dh0, HL, b.dc0, HL, b.dp, np, accumulate, s,
                    ),
                }
            }
        }
    }

    /// A forward call's buffers (host or device addresses); NULL for one not given.
    #[derive(Clone, Copy)]
    struct Fwd {
        x: In,
        h0: In,
        c0: In,
        y: Out,
        hn: Out,
        cn: Out,
    }

    /// A backward call's buffers (host or device addresses); NULL for one not given.
    #[derive(Clone, Copy)]
    struct Bwd {
        dy: In,
        dhn: In,
        dcn: In,
        dx: Out,
        dh0: Out,
        dc0: Out,
        dp: Out,
    }

    /// A host vector as an input argument.
    fn c(v: &[f32]) -> In {
        v.as_ptr()
    }

    /// A host vector as an output argument.
    fn m(v: &mut [f32]) -> Out {
        v.as_mut_ptr()
    }

    fn same_bits(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
            panic!("{what}[{i}]: device entry point {} != host entry point {}", got[i], want[i]);
        }
    }

    /// A buffer of the caller's, in device memory, and its raw address.
    struct Dev {
        buf: CudaBuf<f32>,
        ptr: u64,
    }

    impl Dev {
        fn new(cuda: &Cuda, v: &[f32]) -> Dev {
            let buf = cuda.upload(v).unwrap();
            let ptr = {
                let s = buf.as_cuda_slice();
                s.device_ptr(s.stream()).0
            };
            Dev { buf, ptr }
        }
        fn len(&self) -> usize {
            self.buf.as_cuda_slice().len()
        }
        fn c(&self) -> In {
            self.ptr as In
        }
        fn m(&self) -> Out {
            self.ptr as Out
        }
    }

    extern "C" fn sleep_50ms(_: *mut c_void) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    /// The caller's stream: a stream of the primary context, with the operations this test
    /// enqueues on it.
    struct CallerStream(sys::CUstream);

    impl CallerStream {
        fn ok(r: sys::CUresult, what: &str) {
            assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "{what}");
        }
        fn raw(&self) -> Stream {
            self.0.cast()
        }
        /// Delays the stream's later work by 50 ms.
        fn sleep(&self) {
            // SAFETY: a live stream; the callback makes no CUDA call.
            Self::ok(unsafe { sys::cuLaunchHostFunc(self.0, Some(sleep_50ms), std::ptr::null_mut()) }, "cuLaunchHostFunc");
        }
        /// `dst = src` on the stream.
        fn copy(&self, dst: &Dev, src: &Dev) {
            assert_eq!(dst.len(), src.len());
            // SAFETY: two live buffers of the same length.
            Self::ok(unsafe { sys::cuMemcpyDtoDAsync_v2(dst.ptr, src.ptr, src.len() * 4, self.0) }, "cuMemcpyDtoDAsync");
        }
        /// Fills `d` with NaN on the stream.
        fn poison(&self, d: &Dev) {
            // SAFETY: a live buffer of d.len() f32.
            Self::ok(unsafe { sys::cuMemsetD32Async(d.ptr, 0x7fc0_0000, d.len(), self.0) }, "cuMemsetD32Async");
        }
        /// Copies `d` to the host on the stream, and waits for the stream.
        fn read(&self, d: &Dev) -> Vec<f32> {
            let mut v = vec![0.0f32; d.len()];
            // SAFETY: a live buffer of v.len() f32 and a host vector of as many.
            unsafe {
                Self::ok(sys::cuMemcpyDtoHAsync_v2(v.as_mut_ptr().cast(), d.ptr, v.len() * 4, self.0), "cuMemcpyDtoHAsync");
                Self::ok(sys::cuStreamSynchronize(self.0), "cuStreamSynchronize");
            }
            v
        }
    }

    impl Drop for CallerStream {
        fn drop(&mut self) {
            // SAFETY: created by this test, no longer used.
            let _ = unsafe { result::stream::destroy(self.0) };
        }
    }

    pub fn run(cuda: &Cuda) {
        let lib = Lib::open(&build_library());
        let k = Case::lstm(I, H, T, B);
        let np = k.params.as_slice().len();
        assert_eq!((k.x.len(), k.dy.len(), k.h0.len()), (XL, YL, HL));

        // The model, on "cuda" in the library.
        let mut md: Model = null_mut();
        let (lstm, backend) = (CString::new("lstm").unwrap(), CString::new("cuda").unwrap());
        // SAFETY (every call into the library below): buffers of the lengths given, live handles.
        let st = unsafe { (lib.model_create)(lstm.as_ptr(), I, H, L, 1, 0, 1, backend.as_ptr(), 0, &mut md) };
        lib.check("rnnk_model_create(cuda)", st, RNNK_OK);
        lib.check("rnnk_model_set_params", unsafe { (lib.set_params)(md, c(k.params.as_slice()), np) }, RNNK_OK);

        // The host entry points: what the device ones must reproduce.
        let (mut y_inf, mut hn_inf, mut cn_inf) = (vec![0.0; YL], vec![0.0; HL], vec![0.0; HL]);
        let b = Fwd { x: c(&k.x), h0: c(&k.h0), c0: c(&k.c0), y: m(&mut y_inf), hn: m(&mut hn_inf), cn: m(&mut cn_inf) };
        lib.check("rnnk_forward", unsafe { lib.forward(md, None, None, b) }, RNNK_OK);
        let mut r_host: Reserve = null_mut();
        lib.check("rnnk_reserve_create", unsafe { (lib.reserve_create)(&mut r_host) }, RNNK_OK);
        let (mut y_tr, mut hn_tr, mut cn_tr) = (vec![0.0; YL], vec![0.0; HL], vec![0.0; HL]);
        let b = Fwd { x: c(&k.x), h0: c(&k.h0), c0: c(&k.c0), y: m(&mut y_tr), hn: m(&mut hn_tr), cn: m(&mut cn_tr) };
        lib.check("rnnk_forward_training", unsafe { lib.forward(md, Some(r_host), None, b) }, RNNK_OK);
        let (mut dx, mut dh0, mut dc0, mut dp) = (vec![0.0; XL], vec![0.0; HL], vec![0.0; HL], vec![0.0; np]);
        let grads = Bwd { dy: c(&k.dy), dhn: c(&k.dhn), dcn: c(&k.dcn), dx: null_mut(), dh0: null_mut(), dc0: null_mut(), dp: null_mut() };
        let b = Bwd { dx: m(&mut dx), dh0: m(&mut dh0), dc0: m(&mut dc0), dp: m(&mut dp), ..grads };
        lib.check("rnnk_backward", unsafe { lib.backward(md, r_host, None, b, np, 0) }, RNNK_OK);
        let mut dp_acc = k.dparams0.clone();
        let b = Bwd { dp: m(&mut dp_acc), ..grads };
        lib.check("rnnk_backward(accumulate)", unsafe { lib.backward(md, r_host, None, b, np, 1) }, RNNK_OK);
        assert!(y_tr.iter().any(|v| *v != 0.0) && dp.iter().any(|v| *v != 0.0), "the host results are all zeros");

        // The caller's memory: the real inputs (sources), and the buffers the calls get, which
        // hold placeholders (zeros) until the caller's stream copies the sources into them.
        let src = |v: &[f32]| Dev::new(cuda, v);
        let zeros = |n: usize| Dev::new(cuda, &vec![0.0; n]);
        let (x_s, h0_s, c0_s, dy_s, dhn_s, dcn_s, dp0_s) =
            (src(&k.x), src(&k.h0), src(&k.c0), src(&k.dy), src(&k.dhn), src(&k.dcn), src(&k.dparams0));
        let (x, h0, c0, dyd, dhn, dcn) = (zeros(XL), zeros(HL), zeros(HL), zeros(YL), zeros(HL), zeros(HL));
        let (y, hn, cn) = (zeros(YL), zeros(HL), zeros(HL));
        let (dxd, dh0d, dc0d, dpd, pd) = (zeros(XL), zeros(HL), zeros(HL), zeros(np), zeros(np));
        cuda.synchronize().unwrap();
        let mut raw: sys::CUstream = null_mut();
        // SAFETY: the primary context is current (bound by the uploads above).
        CallerStream::ok(unsafe { sys::cuStreamCreate(&mut raw, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32) }, "cuStreamCreate");
        let s = CallerStream(raw);
        let fwd = Fwd { x: x.c(), h0: h0.c(), c0: c0.c(), y: y.m(), hn: hn.m(), cn: cn.m() };

        // Forward inference on the caller's stream.
        s.sleep();
        for (d, v) in [(&x, &x_s), (&h0, &h0_s), (&c0, &c0_s)] {
            s.copy(d, v);
        }
        for d in [&y, &hn, &cn] {
            s.poison(d);
        }
        lib.check("rnnk_forward_device", unsafe { lib.forward(md, None, Some(s.raw()), fwd) }, RNNK_OK);
        same_bits("forward_device y", &s.read(&y), &y_inf);
        same_bits("forward_device hn", &s.read(&hn), &hn_inf);
        same_bits("forward_device cn", &s.read(&cn), &cn_inf);

        // Forward training: the reserve stays on the device.
        let mut r_dev: Reserve = null_mut();
        lib.check("rnnk_reserve_create", unsafe { (lib.reserve_create)(&mut r_dev) }, RNNK_OK);
        for d in [&x, &h0, &c0] {
            s.poison(d);
        }
        s.sleep();
        for (d, v) in [(&x, &x_s), (&h0, &h0_s), (&c0, &c0_s)] {
            s.copy(d, v);
        }
        for d in [&y, &hn, &cn] {
            s.poison(d);
        }
        lib.check("rnnk_forward_training_device", unsafe { lib.forward(md, Some(r_dev), Some(s.raw()), fwd) }, RNNK_OK);
        // The reserve holds copies: the caller may overwrite its inputs right after the call.
        for d in [&x, &h0, &c0] {
            s.poison(d);
        }
        same_bits("forward_training_device y", &s.read(&y), &y_tr);
        same_bits("forward_training_device hn", &s.read(&hn), &hn_tr);
        same_bits("forward_training_device cn", &s.read(&cn), &cn_tr);

        // Backward, overwrite then accumulate.
        s.sleep();
        for (d, v) in [(&dyd, &dy_s), (&dhn, &dhn_s), (&dcn, &dcn_s)] {
            s.copy(d, v);
        }
        for d in [&dxd, &dh0d, &dc0d, &dpd] {
            s.poison(d);
        }
        let grads_d = Bwd { dy: dyd.c(), dhn: dhn.c(), dcn: dcn.c(), ..grads };
        let b = Bwd { dx: dxd.m(), dh0: dh0d.m(), dc0: dc0d.m(), dp: dpd.m(), ..grads_d };
        lib.check("rnnk_backward_device", unsafe { lib.backward(md, r_dev, Some(s.raw()), b, np, 0) }, RNNK_OK);
        same_bits("backward_device dx", &s.read(&dxd), &dx);
        same_bits("backward_device dh0", &s.read(&dh0d), &dh0);
        same_bits("backward_device dc0", &s.read(&dc0d), &dc0);
        same_bits("backward_device dparams", &s.read(&dpd), &dp);
        s.sleep();
        s.copy(&dpd, &dp0_s);
        let b = Bwd { dp: dpd.m(), ..grads_d };
        lib.check("rnnk_backward_device(accumulate)", unsafe { lib.backward(md, r_dev, Some(s.raw()), b, np, 1) }, RNNK_OK);
        same_bits("backward_device dparams (accumulate)", &s.read(&dpd), &dp_acc);

        // Reserves are shared: the host backward reads the device-filled one.
        let mut dp_x = vec![0.0; np];
        let b = Bwd { dp: m(&mut dp_x), ..grads };
        let st = unsafe { lib.backward(md, r_dev, None, b, np, 0) };
        lib.check("rnnk_backward on a reserve of rnnk_forward_training_device", st, RNNK_OK);
        same_bits("host backward on the device reserve", &dp_x, &dp);

        // The legacy default stream (NULL).
        cuda.synchronize().unwrap();
        let b = Fwd { x: x_s.c(), h0: h0_s.c(), c0: c0_s.c(), y: y.m(), hn: null_mut(), cn: null_mut() };
        lib.check("rnnk_forward_device(stream NULL)", unsafe { lib.forward(md, None, Some(null_mut()), b) }, RNNK_OK);
        let mut y_null = vec![0.0f32; YL];
        // SAFETY: a synchronous copy on the legacy default stream, which waited for the call.
        CallerStream::ok(unsafe { sys::cuMemcpyDtoH_v2(y_null.as_mut_ptr().cast(), y.ptr, YL * 4) }, "cuMemcpyDtoH");
        same_bits("forward_device y (stream NULL)", &y_null, &y_inf);

        // Parameters out and in.
        s.sleep();
        s.poison(&pd);
        lib.check("rnnk_model_get_params_device", unsafe { (lib.get_params_device)(md, pd.m(), np, s.raw()) }, RNNK_OK);
        same_bits("get_params_device", &s.read(&pd), k.params.as_slice());
        let other = Params::<f32>::init_uniform(&k.cfg, 99).unwrap();
        let other_s = src(other.as_slice());
        cuda.synchronize().unwrap();
        s.sleep();
        s.copy(&pd, &other_s);
        lib.check("rnnk_model_set_params_device", unsafe { (lib.set_params_device)(md, pd.c(), np, s.raw()) }, RNNK_OK);
        let mut back = vec![0.0; np];
        lib.check("rnnk_model_get_params", unsafe { (lib.get_params)(md, m(&mut back), np) }, RNNK_OK);
        same_bits("set_params_device", &back, other.as_slice());
        // The reserve of the old parameters is refused, as on the host.
        let b = Bwd { dy: dyd.c(), dhn: null(), dcn: null(), dx: dxd.m(), ..grads };
        let st = unsafe { lib.backward(md, r_dev, Some(s.raw()), b, np, 0) };
        assert_ne!(st, RNNK_OK, "rnnk_backward_device accepted a reserve of the old parameters");

        // A host pointer where device memory is expected.
        let b = Fwd { x: c(&k.x), h0: null(), c0: null(), y: y.m(), hn: null_mut(), cn: null_mut() };
        let msg = lib.check("rnnk_forward_device(host x)", unsafe { lib.forward(md, None, Some(s.raw()), b) }, RNNK_ERR_INVALID_ARGUMENT);
        assert!(msg.contains("`x`"), "{msg}");

        // The library freed none of the caller's buffers: each is still an allocation.
        cuda.synchronize().unwrap();
        for (name, d) in [("x", &x), ("y", &y), ("hn", &hn), ("dx", &dxd), ("dparams", &dpd), ("params", &pd)] {
            let mut ordinal: i32 = -1;
            // SAFETY: an attribute query into an int.
            let r = unsafe {
                sys::cuPointerGetAttribute(
                    (&mut ordinal as *mut i32).cast(),
                    sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                    d.ptr,
                )
            };
            assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "the caller's `{name}` is no longer an allocation");
            assert_eq!(ordinal, cuda.ordinal() as i32, "the caller's `{name}`");
        }
        same_bits("the caller's x_s after the calls", &cuda.download(&x_s.buf).unwrap(), &k.x);

        lib.check("rnnk_reserve_free", unsafe { (lib.reserve_free)(r_dev) }, RNNK_OK);
        lib.check("rnnk_reserve_free", unsafe { (lib.reserve_free)(r_host) }, RNNK_OK);
        lib.check("rnnk_model_free", unsafe { (lib.model_free)(md) }, RNNK_OK);
        println!("device entry points: forward, training, backward (overwrite, accumulate), parameters: bit-identical to the host ones");
    }
}
