//! Build script: compiles `kernels/*.cu` to PTX when the `cuda` feature is on.
//!
//! - nvcc is taken from `NVCC`, then `$CUDA_HOME/bin/nvcc`, then `$CUDA_PATH/bin/nvcc`, then
//!   `nvcc` on `PATH`.
//! - The virtual architecture is `RNN_KERNELS_CUDA_ARCH` (`compute_80` by default; `sm_90` or
//!   `90` are accepted and mean `compute_90`). PTX for `compute_XY` is JIT-compiled by the driver
//!   for any GPU of capability `X.Y` or newer.
//! - Each `kernels/NAME.cu` becomes `$OUT_DIR/NAME.ptx`, and `$OUT_DIR/ptx.rs` holds one
//!   `pub const NAME: &str` per file (the PTX text) and `FILES`, every file's PTX by its name,
//!   from which the CUDA backend loads each kernel of its registry (`src/backend/cuda/kernels.rs`).
//! - Without nvcc the build still succeeds (so that `cargo build --features cuda`, clippy and
//!   docs work on any machine): the constants are empty, `NVCC_MISSING` holds the reason, and
//!   `Cuda::new()` returns `Error::BackendUnavailable` saying how to install nvcc (see
//!   DEVELOPERS.md). Set `RNN_KERNELS_REQUIRE_NVCC=1` to make a missing nvcc a build error.
//!
//! - For the driver's unit tests without a GPU, the pointwise kernels (every `.cu` file without a
//!   "no host emulation" line) are also compiled as plain C++ with the host compiler (`CXX`, else
//!   `c++`) into a static library, and `cfg(rnn_kernels_host_emulation)` is set; without a host
//!   C++ compiler (or with a kernel it cannot compile) those tests are left out, a build error
//!   with `RNN_KERNELS_REQUIRE_HOST_EMULATION=1` (CI sets it, so that they cannot vanish).
//!
//! Without the `cuda` feature nothing is built and nothing is needed.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const HOW_TO_GET_NVCC: &str = "install the pinned CUDA 13.0 compiler from PyPI (no GPU needed): \
    `pip install nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96` \
    and set NVCC=<site-packages>/nvidia/cu13/bin/nvcc before building (see DEVELOPERS.md, \"CUDA toolchain without a GPU\")";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "RNN_KERNELS_CUDA_ARCH",
        "RNN_KERNELS_REQUIRE_NVCC",
        "RNN_KERNELS_REQUIRE_HOST_EMULATION",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(rnn_kernels_ptx)");
    println!("cargo::rustc-check-cfg=cfg(rnn_kernels_host_emulation)");
    println!("cargo:rerun-if-env-changed=CXX");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let sources = kernel_sources();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    for h in headers() {
        println!("cargo:rerun-if-changed={}", h.display());
    }
    let arch = arch();
    let mut consts = String::new();
    let missing = match find_nvcc() {
        Some(nvcc) => {
            for src in &sources {
                let name = src.file_stem().unwrap().to_string_lossy().into_owned();
                let ptx = out.join(format!("{name}.ptx"));
                compile(&nvcc, &arch, src, &ptx);
                writeln!(consts, "pub const {}: &str = include_str!({:?});", name.to_uppercase(), ptx.display().to_string()).unwrap();
            }
            println!("cargo:rustc-cfg=rnn_kernels_ptx");
            "None".to_string()
        }
        None => {
            let reason = format!("rnn-kernels was built with the `cuda` feature but without nvcc, so it has no kernels: {HOW_TO_GET_NVCC}");
            if env::var_os("RNN_KERNELS_REQUIRE_NVCC").is_some_and(|v| v == "1") {
                panic!("{reason}");
            }
            println!("cargo:warning=nvcc not found: the CUDA backend will answer with an error. To build the kernels, {HOW_TO_GET_NVCC}");
            for src in &sources {
                let name = src.file_stem().unwrap().to_string_lossy().to_uppercase();
                writeln!(consts, "pub const {name}: &str = \"\";").unwrap();
            }
            format!("Some({reason:?})")
        }
    };
    writeln!(consts, "/// Every file's PTX by its name (`kernels/NAME.cu`), for the kernel registry's loader.").unwrap();
    let files: Vec<String> = sources.iter().map(|s| s.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    let table: String = files.iter().map(|f| format!("({f:?}, {}), ", f.to_uppercase())).collect();
    writeln!(consts, "pub const FILES: &[(&str, &str)] = &[{table}];").unwrap();
    writeln!(consts, "/// Why there are no kernels, when nvcc was missing at build time.").unwrap();
    writeln!(consts, "pub const NVCC_MISSING: Option<&str> = {missing};").unwrap();
    writeln!(consts, "/// The virtual architecture the PTX was built for.").unwrap();
    writeln!(consts, "pub const ARCH: &str = {arch:?};").unwrap();
    std::fs::write(out.join("ptx.rs"), consts).expect("write ptx.rs");
    host_emulation(&out, &sources);
}

/// Leaves the host emulation out, saying why: a warning, or a build error with
/// `RNN_KERNELS_REQUIRE_HOST_EMULATION=1`.
fn emulation_left_out(why: &str) {
    if env::var("RNN_KERNELS_REQUIRE_HOST_EMULATION").is_ok_and(|v| v == "1") {
        panic!("RNN_KERNELS_REQUIRE_HOST_EMULATION=1, but {why}");
    }
    println!("cargo:warning={why}: the CUDA driver's host-emulation tests are left out");
}

/// Compiles the emulable kernels with the host C++ compiler into `librnn_kernels_host.a`.
fn host_emulation(out: &Path, sources: &[PathBuf]) {
    let cxx = env::var_os("CXX").unwrap_or_else(|| "c++".into());
    let mut objects = Vec::new();
    for src in sources {
        let text = std::fs::read_to_string(src).unwrap_or_default();
        if text.contains("no host emulation") {
            continue;
        }
        let obj = out.join(format!("{}.host.o", src.file_stem().unwrap().to_string_lossy()));
        let ok = Command::new(&cxx)
            .args(["-x", "c++", "-std=c++17", "-O2", "-fPIC", "-ffp-contract=off", "-c"])
            .arg("-I")
            .arg(kernels_dir())
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            emulation_left_out(&format!("no host C++ compiler could build {}", src.display()));
            return;
        }
        objects.push(obj);
    }
    let lib = out.join("librnn_kernels_host.a");
    let _ = std::fs::remove_file(&lib);
    let ar = env::var_os("AR").unwrap_or_else(|| "ar".into());
    if !Command::new(ar).arg("crs").arg(&lib).args(&objects).status().is_ok_and(|s| s.success()) {
        emulation_left_out("ar failed");
        return;
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=rnn_kernels_host");
    println!("cargo:rustc-cfg=rnn_kernels_host_emulation");
}

fn kernels_dir() -> PathBuf {
    PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("kernels")
}

fn files_with(ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(kernels_dir())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == ext)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn kernel_sources() -> Vec<PathBuf> {
    files_with("cu")
}

fn headers() -> Vec<PathBuf> {
    files_with("cuh")
}

/// `RNN_KERNELS_CUDA_ARCH` as a virtual architecture, `compute_XY`.
fn arch() -> String {
    let raw = env::var("RNN_KERNELS_CUDA_ARCH").unwrap_or_else(|_| "compute_80".into());
    let digits = raw.trim().trim_start_matches("compute_").trim_start_matches("sm_");
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_alphanumeric()) || !digits.starts_with(|c: char| c.is_ascii_digit()) {
        panic!("RNN_KERNELS_CUDA_ARCH: expected a compute capability such as compute_80, sm_90 or 86, got {raw:?}");
    }
    format!("compute_{digits}")
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        println!("cargo:warning=NVCC={} is not a file; looking elsewhere", p.display());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = Path::new(&home).join("bin").join(if cfg!(windows) { "nvcc.exe" } else { "nvcc" });
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|d| d.join(if cfg!(windows) { "nvcc.exe" } else { "nvcc" })).find(|p| p.is_file())
}

fn compile(nvcc: &Path, arch: &str, src: &Path, ptx: &Path) {
    let status = Command::new(nvcc)
        .arg("-ptx")
        .arg(format!("-arch={arch}"))
        .args(["-O3", "-std=c++17", "-lineinfo"])
        .arg("-I")
        .arg(kernels_dir())
        .arg(src)
        .arg("-o")
        .arg(ptx)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    if !status.success() {
        panic!("{} failed on {} ({status})", nvcc.display(), src.display());
    }
}
