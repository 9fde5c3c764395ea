//! What the integration tests share: building this crate's shared library, and the model and
//! inputs they run through it.

use rnnk_core::testkit::SplitMix64;
use rnnk_core::{CellKind, Params, RnnConfig, SeqShape};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

#[link(name = "dl")]
extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}
const RTLD_NOW: c_int = 2;

/// The shared library in `dir` ([`build_library`]), loaded with dlopen (and never unloaded),
/// for the tests that call its functions as a C program would.
#[allow(dead_code)] // not every test binary loads it
pub struct Library(*mut c_void);

#[allow(dead_code)]
impl Library {
    pub fn open(dir: &Path) -> Library {
        let path = CString::new(dir.join("librnn_kernels.so").to_str().unwrap()).unwrap();
        // SAFETY: loads the library this test built.
        let h = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
        // SAFETY: dlerror's message is a C string when dlopen failed.
        assert!(!h.is_null(), "dlopen {path:?}: {:?}", unsafe { CStr::from_ptr(dlerror()) });
        Library(h)
    }

    /// The function `name` of the library, as the function pointer type `F` (the header's
    /// prototype: the caller's promise; its size is checked).
    pub fn symbol<F: Copy>(&self, name: &str) -> F {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>(), "{name}: not a function pointer type");
        let cname = CString::new(name).unwrap();
        // SAFETY: a live library handle and a C string.
        let p = unsafe { dlsym(self.0, cname.as_ptr()) };
        assert!(!p.is_null(), "{name} is not exported");
        // SAFETY: `F` is the function pointer type of the header's prototype (same size, checked
        // above).
        unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
    }
}

/// `target/<profile>` (the directory of this test's `deps/`), and the profile's name.
fn profile_dir() -> (PathBuf, String) {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("test binary in <target>/<profile>/deps").to_path_buf();
    let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
    (dir, profile)
}

/// Builds the shared library with the cargo running this test, into the same target
/// directory and profile, and returns the directory holding it. `RNN_KERNELS_CAPI_LIB_DIR`
/// names a directory with a library built beforehand instead (a test binary run where there is
/// no cargo: `.ci/gpu-pack.sh`, `.ci/gpu.sh`).
pub fn build_library() -> PathBuf {
    if let Some(d) = std::env::var_os("RNN_KERNELS_CAPI_LIB_DIR") {
        let dir = PathBuf::from(d);
        assert!(dir.join("librnn_kernels.so").exists(), "RNN_KERNELS_CAPI_LIB_DIR: no librnn_kernels.so in {}", dir.display());
        return dir;
    }
    let (dir, profile) = profile_dir();
    let mut target_dir = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "rnn-kernels-capi", "--lib"]);
    // A test built with `--target <triple>` lives in `<target>/<triple>/<profile>` (a cross build
    // run under an emulator, `.ci/neon.sh`): the library for that triple, so that this test's
    // process can load it; the nested cargo runs on the build machine.
    let triple = target_dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with(&format!("{}-", std::env::consts::ARCH)) && n.contains("-linux-"));
    if let Some(triple) = triple {
        cmd.args(["--target", triple]);
        target_dir = target_dir.parent().unwrap();
    }
    cmd.arg("--target-dir").arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    #[cfg(feature = "cuda")]
    cmd.args(["--features", "cuda"]);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let status = cmd.status().expect("run cargo build for the C library");
    assert!(status.success(), "cargo build -p rnn-kernels-capi failed: {status}");
    let lib = dir.join("librnn_kernels.so");
    assert!(lib.exists(), "{} was not built", lib.display());
    dir
}

/// Uniform values in [-1, 1) from `seed`.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

/// A 2-layer bidirectional LSTM's parameters and the inputs of one forward and backward call
/// on `steps` × `batch`: what the tests pass through the C ABI and through the Rust API.
pub struct Case {
    pub cfg: RnnConfig,
    pub params: Params<f32>,
    pub x: Vec<f32>,
    pub h0: Vec<f32>,
    pub c0: Vec<f32>,
    pub dy: Vec<f32>,
    pub dhn: Vec<f32>,
    pub dcn: Vec<f32>,
    /// What `dparams` holds before a backward call that accumulates.
    pub dparams0: Vec<f32>,
}

impl Case {
    pub fn lstm(input_size: usize, hidden_size: usize, steps: usize, batch: usize) -> Case {
        let cfg = RnnConfig::new(CellKind::Lstm, input_size, hidden_size).num_layers(2).bidirectional(true).build().unwrap();
        Case::new(cfg, steps, batch)
    }

    /// Any configuration's parameters and inputs (`c0`, `dcn` empty without a cell state).
    pub fn new(cfg: RnnConfig, steps: usize, batch: usize) -> Case {
        let shape = SeqShape::new(steps, batch).unwrap();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let params = Params::<f32>::init_uniform(&cfg, 7).unwrap();
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
}
