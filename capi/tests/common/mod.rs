//! What the integration tests share: building this crate's shared library.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let target_dir = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "rnn-kernels-capi", "--lib", "--target-dir"]).arg(target_dir);
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
