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
    use super::common::build_library;
    use rnnk_core::cudarc::driver::{result, sys, DevicePtr};
    use rnnk_core::testkit::SplitMix64;
    use rnnk_core::{CellKind, Cuda, CudaBuf, Params, RnnConfig, SeqShape};
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::path::Path;

    const I: usize = 8;
    const H: usize = 16;
    const L: usize = 2;
    const T: usize = 12;
    const B: usize = 4;
    const LENGTHS: [i64; B] = [12, 5, 9, 1];
    const RNNK_OK: c_int = 0;
    const RNNK_ERR_INVALID_ARGUMENT: c_int = 2;

    #[link(name = "dl")]
    extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *const c_char;
    }
    const RTLD_NOW: c_int = 2;

    type Model = *mut c_void;
    type Forward = unsafe extern "C" fn(
        Model,
        usize,
        usize,
        *const i64,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
    ) -> c_int;
    type ForwardDevice = unsafe extern "C" fn(
        Model,
        usize,
        usize,
        *const i64,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut c_void,
    ) -> c_int;
    type ForwardTraining = unsafe extern "C" fn(
        Model,
        *mut c_void,
        usize,
        usize,
        *const i64,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
    ) -> c_int;
    type ForwardTrainingDevice = unsafe extern "C" fn(
        Model,
        *mut c_void,
        usize,
        usize,
        *const i64,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut c_void,
    ) -> c_int;
    type Backward = unsafe extern "C" fn(
        Model,
        *const c_void,
        *const f32,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        c_int,
    ) -> c_int;
    type BackwardDevice = unsafe extern "C" fn(
        Model,
        *const c_void,
        *const f32,
        usize,
        *const f32,
        usize,
        *const f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        *mut f32,
        usize,
        c_int,
        *mut c_void,
    ) -> c_int;

    /// The library's functions this test calls.
    struct Lib {
        last_error: unsafe extern "C" fn() -> *const c_char,
        model_create:
            unsafe extern "C" fn(*const c_char, usize, usize, usize, c_int, usize, c_int, *const c_char, usize, *mut Model) -> c_int,
        model_free: unsafe extern "C" fn(Model) -> c_int,
        set_params: unsafe extern "C" fn(Model, *const f32, usize) -> c_int,
        get_params: unsafe extern "C" fn(Model, *mut f32, usize) -> c_int,
        set_params_device: unsafe extern "C" fn(Model, *const f32, usize, *mut c_void) -> c_int,
        get_params_device: unsafe extern "C" fn(Model, *mut f32, usize, *mut c_void) -> c_int,
        reserve_create: unsafe extern "C" fn(*mut *mut c_void) -> c_int,
        reserve_free: unsafe extern "C" fn(*mut c_void) -> c_int,
        forward: Forward,
        forward_device: ForwardDevice,
        forward_training: ForwardTraining,
        forward_training_device: ForwardTrainingDevice,
        backward: Backward,
        backward_device: BackwardDevice,
    }

    impl Lib {
        fn open(dir: &Path) -> Lib {
            let path = CString::new(dir.join("librnn_kernels.so").to_str().unwrap()).unwrap();
            // SAFETY: loads the library this test just built.
            let h = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
            // SAFETY: dlerror's message is a C string when dlopen failed.
            assert!(!h.is_null(), "dlopen {path:?}: {:?}", unsafe { CStr::from_ptr(dlerror()) });
            /// The function `name` of the library, as the function pointer type `F`.
            fn symbol<F: Copy>(h: *mut c_void, name: &str) -> F {
                assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>(), "{name}: not a function pointer type");
                let cname = CString::new(name).unwrap();
                // SAFETY: a live library handle and a C string.
                let p = unsafe { dlsym(h, cname.as_ptr()) };
                assert!(!p.is_null(), "{name} is not exported");
                // SAFETY: `F` is the function pointer type of the header's prototype (same size,
                // checked above).
                unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
            }
            macro_rules! sym {
                ($name:literal) => {
                    symbol(h, $name)
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
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
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
        fn c(&self) -> *const f32 {
            self.ptr as *const f32
        }
        fn m(&self) -> *mut f32 {
            self.ptr as *mut f32
        }
    }

    extern "C" fn sleep_50ms(_: *mut c_void) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    /// The caller's stream: a stream of the primary context, with the operations this test
    /// enqueues on it.
    struct Stream(sys::CUstream);

    impl Stream {
        fn ok(r: sys::CUresult, what: &str) {
            assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "{what}");
        }
        fn raw(&self) -> *mut c_void {
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

    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: created by this test, no longer used.
            let _ = unsafe { result::stream::destroy(self.0) };
        }
    }

    /// The inputs and the buffers of one configuration.
    struct Case {
        cfg: RnnConfig,
        params: Params<f32>,
        x: Vec<f32>,
        h0: Vec<f32>,
        c0: Vec<f32>,
        dy: Vec<f32>,
        dhn: Vec<f32>,
        dcn: Vec<f32>,
        dparams0: Vec<f32>,
    }

    fn case() -> Case {
        let cfg = RnnConfig::new(CellKind::Lstm, I, H).num_layers(L).bidirectional(true).build().unwrap();
        let shape = SeqShape::new(T, B).unwrap();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let params = Params::<f32>::init_uniform(&cfg, 7);
        Case {
            x: values(n(shape.x_shape(&cfg)), 1),
            h0: values(n(shape.h_shape(&cfg)), 2),
            c0: values(n(shape.c_shape(&cfg)), 3),
            dy: values(n(shape.y_shape(&cfg)), 4),
            dhn: values(n(shape.h_shape(&cfg)), 5),
            dcn: values(n(shape.c_shape(&cfg)), 6),
            dparams0: values(params.as_slice().len(), 8),
            params,
            cfg,
        }
    }

    pub fn run(cuda: &Cuda) {
        let lib = Lib::open(&build_library());
        let k = case();
        let np = k.params.as_slice().len();
        let (xl, yl, hl) = (k.x.len(), k.dy.len(), k.h0.len());
        let lengths = LENGTHS;

        // The model, on "cuda" in the library.
        let mut m: Model = std::ptr::null_mut();
        let (lstm, backend) = (CString::new("lstm").unwrap(), CString::new("cuda").unwrap());
        // SAFETY (every call into the library below): buffers of the lengths given, live handles.
        let st = unsafe { (lib.model_create)(lstm.as_ptr(), I, H, L, 1, 0, 1, backend.as_ptr(), 0, &mut m) };
        lib.check("rnnk_model_create(cuda)", st, RNNK_OK);
        lib.check("rnnk_model_set_params", unsafe { (lib.set_params)(m, k.params.as_slice().as_ptr(), np) }, RNNK_OK);

        // The host entry points: what the device ones must reproduce.
        let (mut y_inf, mut hn_inf, mut cn_inf) = (vec![0.0; yl], vec![0.0; hl], vec![0.0; hl]);
        let st = unsafe {
            (lib.forward)(
                m,
                T,
                B,
                lengths.as_ptr(),
                B,
                k.x.as_ptr(),
                xl,
                k.h0.as_ptr(),
                hl,
                k.c0.as_ptr(),
                hl,
                y_inf.as_mut_ptr(),
                yl,
                hn_inf.as_mut_ptr(),
                hl,
                cn_inf.as_mut_ptr(),
                hl,
            )
        };
        lib.check("rnnk_forward", st, RNNK_OK);
        let mut r_host: *mut c_void = std::ptr::null_mut();
        lib.check("rnnk_reserve_create", unsafe { (lib.reserve_create)(&mut r_host) }, RNNK_OK);
        let (mut y_tr, mut hn_tr, mut cn_tr) = (vec![0.0; yl], vec![0.0; hl], vec![0.0; hl]);
        let st = unsafe {
            (lib.forward_training)(
                m,
                r_host,
                T,
                B,
                lengths.as_ptr(),
                B,
                k.x.as_ptr(),
                xl,
                k.h0.as_ptr(),
                hl,
                k.c0.as_ptr(),
                hl,
                y_tr.as_mut_ptr(),
                yl,
                hn_tr.as_mut_ptr(),
                hl,
                cn_tr.as_mut_ptr(),
                hl,
            )
        };
        lib.check("rnnk_forward_training", st, RNNK_OK);
        let (mut dx, mut dh0, mut dc0, mut dp) = (vec![0.0; xl], vec![0.0; hl], vec![0.0; hl], vec![0.0; np]);
        let st = unsafe {
            (lib.backward)(
                m,
                r_host,
                k.dy.as_ptr(),
                yl,
                k.dhn.as_ptr(),
                hl,
                k.dcn.as_ptr(),
                hl,
                dx.as_mut_ptr(),
                xl,
                dh0.as_mut_ptr(),
                hl,
                dc0.as_mut_ptr(),
                hl,
                dp.as_mut_ptr(),
                np,
                0,
            )
        };
        lib.check("rnnk_backward", st, RNNK_OK);
        let mut dp_acc = k.dparams0.clone();
        let st = unsafe {
            (lib.backward)(
                m,
                r_host,
                k.dy.as_ptr(),
                yl,
                k.dhn.as_ptr(),
                hl,
                k.dcn.as_ptr(),
                hl,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                dp_acc.as_mut_ptr(),
                np,
                1,
            )
        };
        lib.check("rnnk_backward(accumulate)", st, RNNK_OK);
        assert!(y_tr.iter().any(|v| *v != 0.0) && dp.iter().any(|v| *v != 0.0), "the host results are all zeros");

        // The caller's memory: the real inputs (sources), and the buffers the calls get, which
        // hold placeholders (zeros) until the caller's stream copies the sources into them.
        let src = |v: &[f32]| Dev::new(cuda, v);
        let zeros = |n: usize| Dev::new(cuda, &vec![0.0; n]);
        let (x_s, h0_s, c0_s, dy_s, dhn_s, dcn_s, dp0_s) =
            (src(&k.x), src(&k.h0), src(&k.c0), src(&k.dy), src(&k.dhn), src(&k.dcn), src(&k.dparams0));
        let (x, h0, c0, dyd, dhn, dcn) = (zeros(xl), zeros(hl), zeros(hl), zeros(yl), zeros(hl), zeros(hl));
        let (y, hn, cn) = (zeros(yl), zeros(hl), zeros(hl));
        let (dxd, dh0d, dc0d, dpd, pd) = (zeros(xl), zeros(hl), zeros(hl), zeros(np), zeros(np));
        cuda.synchronize().unwrap();
        let mut raw: sys::CUstream = std::ptr::null_mut();
        // SAFETY: the primary context is current (bound by the uploads above).
        Stream::ok(unsafe { sys::cuStreamCreate(&mut raw, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32) }, "cuStreamCreate");
        let s = Stream(raw);

        // Forward inference on the caller's stream.
        s.sleep();
        for (d, v) in [(&x, &x_s), (&h0, &h0_s), (&c0, &c0_s)] {
            s.copy(d, v);
        }
        for d in [&y, &hn, &cn] {
            s.poison(d);
        }
        let st = unsafe {
            (lib.forward_device)(
                m,
                T,
                B,
                lengths.as_ptr(),
                B,
                x.c(),
                xl,
                h0.c(),
                hl,
                c0.c(),
                hl,
                y.m(),
                yl,
                hn.m(),
                hl,
                cn.m(),
                hl,
                s.raw(),
            )
        };
        lib.check("rnnk_forward_device", st, RNNK_OK);
        same_bits("forward_device y", &s.read(&y), &y_inf);
        same_bits("forward_device hn", &s.read(&hn), &hn_inf);
        same_bits("forward_device cn", &s.read(&cn), &cn_inf);

        // Forward training: the reserve stays on the device.
        let mut r_dev: *mut c_void = std::ptr::null_mut();
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
        let st = unsafe {
            (lib.forward_training_device)(
                m,
                r_dev,
                T,
                B,
                lengths.as_ptr(),
                B,
                x.c(),
                xl,
                h0.c(),
                hl,
                c0.c(),
                hl,
                y.m(),
                yl,
                hn.m(),
                hl,
                cn.m(),
                hl,
                s.raw(),
            )
        };
        lib.check("rnnk_forward_training_device", st, RNNK_OK);
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
        let st = unsafe {
            (lib.backward_device)(
                m,
                r_dev,
                dyd.c(),
                yl,
                dhn.c(),
                hl,
                dcn.c(),
                hl,
                dxd.m(),
                xl,
                dh0d.m(),
                hl,
                dc0d.m(),
                hl,
                dpd.m(),
                np,
                0,
                s.raw(),
            )
        };
        lib.check("rnnk_backward_device", st, RNNK_OK);
        same_bits("backward_device dx", &s.read(&dxd), &dx);
        same_bits("backward_device dh0", &s.read(&dh0d), &dh0);
        same_bits("backward_device dc0", &s.read(&dc0d), &dc0);
        same_bits("backward_device dparams", &s.read(&dpd), &dp);
        s.sleep();
        s.copy(&dpd, &dp0_s);
        let st = unsafe {
            (lib.backward_device)(
                m,
                r_dev,
                dyd.c(),
                yl,
                dhn.c(),
                hl,
                dcn.c(),
                hl,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                dpd.m(),
                np,
                1,
                s.raw(),
            )
        };
        lib.check("rnnk_backward_device(accumulate)", st, RNNK_OK);
        same_bits("backward_device dparams (accumulate)", &s.read(&dpd), &dp_acc);

        // Reserves are shared: the host backward reads the device-filled one.
        let mut dp_x = vec![0.0; np];
        let st = unsafe {
            (lib.backward)(
                m,
                r_dev,
                k.dy.as_ptr(),
                yl,
                k.dhn.as_ptr(),
                hl,
                k.dcn.as_ptr(),
                hl,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                dp_x.as_mut_ptr(),
                np,
                0,
            )
        };
        lib.check("rnnk_backward on a reserve of rnnk_forward_training_device", st, RNNK_OK);
        same_bits("host backward on the device reserve", &dp_x, &dp);

        // The legacy default stream (NULL).
        cuda.synchronize().unwrap();
        let st = unsafe {
            (lib.forward_device)(
                m,
                T,
                B,
                lengths.as_ptr(),
                B,
                x_s.c(),
                xl,
                h0_s.c(),
                hl,
                c0_s.c(),
                hl,
                y.m(),
                yl,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
            )
        };
        lib.check("rnnk_forward_device(stream NULL)", st, RNNK_OK);
        let mut y_null = vec![0.0f32; yl];
        // SAFETY: a synchronous copy on the legacy default stream, which waited for the call.
        Stream::ok(unsafe { sys::cuMemcpyDtoH_v2(y_null.as_mut_ptr().cast(), y.ptr, yl * 4) }, "cuMemcpyDtoH");
        same_bits("forward_device y (stream NULL)", &y_null, &y_inf);

        // Parameters out and in.
        s.sleep();
        s.poison(&pd);
        lib.check("rnnk_model_get_params_device", unsafe { (lib.get_params_device)(m, pd.m(), np, s.raw()) }, RNNK_OK);
        same_bits("get_params_device", &s.read(&pd), k.params.as_slice());
        let other = Params::<f32>::init_uniform(&k.cfg, 99);
        let other_s = src(other.as_slice());
        cuda.synchronize().unwrap();
        s.sleep();
        s.copy(&pd, &other_s);
        lib.check("rnnk_model_set_params_device", unsafe { (lib.set_params_device)(m, pd.c(), np, s.raw()) }, RNNK_OK);
        let mut back = vec![0.0; np];
        lib.check("rnnk_model_get_params", unsafe { (lib.get_params)(m, back.as_mut_ptr(), np) }, RNNK_OK);
        same_bits("set_params_device", &back, other.as_slice());
        // The reserve of the old parameters is refused, as on the host.
        let st = unsafe {
            (lib.backward_device)(
                m,
                r_dev,
                dyd.c(),
                yl,
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                dxd.m(),
                xl,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                0,
                s.raw(),
            )
        };
        assert_ne!(st, RNNK_OK, "rnnk_backward_device accepted a reserve of the old parameters");

        // A host pointer where device memory is expected.
        let st = unsafe {
            (lib.forward_device)(
                m,
                T,
                B,
                lengths.as_ptr(),
                B,
                k.x.as_ptr(),
                xl,
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                y.m(),
                yl,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                0,
                s.raw(),
            )
        };
        let msg = lib.check("rnnk_forward_device(host x)", st, RNNK_ERR_INVALID_ARGUMENT);
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
        lib.check("rnnk_model_free", unsafe { (lib.model_free)(m) }, RNNK_OK);
        println!("device entry points: forward, training, backward (overwrite, accumulate), parameters: bit-identical to the host ones");
    }
}
