//! Times the CPU backend's SGEMM against matrixmultiply on one shape and prints GFLOP/s.
//!
//! ```text
//! cargo run --release --example gemm_bench -- M K N [threads] [reps] [a_transposed: 0|1]
//! ```
//!
//! `GEMM_BENCH_KINDS=avx512-packed,avx2` times only those kinds (`benches/compare.py` measures
//! the machine's SGEMM roof with the best packed kind).
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers: M K N [threads] [reps]")).collect();
    let (m, k, n) = (args[0], args[1], args[2]);
    let threads = args.get(3).copied().unwrap_or(1);
    let reps = args.get(4).copied().unwrap_or(10);
    let a_t = args.get(5).copied().unwrap_or(0) == 1;
    let flop = 2.0 * (m * k * n) as f64;
    let kinds: &[&str] = if cfg!(target_arch = "aarch64") {
        &["portable", "neon", "neon-packed"]
    } else if rnn_kernels::Isa::Amx.is_supported() {
        &["portable", "avx2", "avx2-packed", "avx512", "avx512-packed", "avx512-bf16pairs", "amx-bf16pairs"]
    } else if rnn_kernels::Isa::Avx512.is_supported() {
        &["portable", "avx2", "avx2-packed", "avx512", "avx512-packed", "avx512-bf16pairs"]
    } else {
        &["portable", "avx2", "avx2-packed"]
    };
    let only = std::env::var("GEMM_BENCH_KINDS").ok();
    let chosen: Vec<&str> = match &only {
        Some(list) => list.split(',').map(str::trim).filter(|k| !k.is_empty()).collect(),
        None => kinds.to_vec(),
    };
    for &kind in &chosen {
        let s = rnn_kernels::testkit::bench::time_sgemm(kind, threads, m, k, n, a_t, reps);
        println!("{kind:12} m={m} k={k} n={n} threads={threads} a_t={a_t}: {:8.3} ms  {:6.1} GFLOP/s", s * 1e3, flop / s / 1e9);
    }
}
