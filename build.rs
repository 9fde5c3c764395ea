//! Build script.
//!
//! Nothing to build yet. The CUDA backend (its own issue) will compile `kernels/*.cu` to PTX here
//! with nvcc, found from `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then `PATH`.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
