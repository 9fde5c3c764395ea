//! x86-64 AVX-512 kernels of the CPU backend: the GEMM register tiles (`sgemm.rs`: 6×64
//! blocked, `sgemm_skinny.rs`: few rows). The GEMMs carry nearly all the FLOPs; the cell
//! kernels are memory-bound and shared with AVX2 (`avx2/`), which every AVX-512 CPU also has
//! (the ISA is only offered with AVX2 and FMA present, see `cpu/isa.rs`).

pub(crate) mod sgemm;
pub(crate) mod sgemm_skinny;
