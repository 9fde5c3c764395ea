//! x86-64 AVX-512 kernels of the CPU backend: the GEMM register tiles (`sgemm.rs`: 8×48
//! blocked, `sgemm_skinny.rs`: few rows) and the LSTM forward cell (`lstm.rs`, with the maths
//! of `math.rs`), which is bound by arithmetic. The other cells are memory-bound and run the
//! AVX2 kernels (`avx2/`), which every AVX-512 CPU also has (the ISA is only offered with AVX2
//! and FMA present, see `cpu/isa.rs`). The LSTM cell gives each element the bits the AVX2 one
//! gives.

mod lstm;
mod math;
pub(crate) mod sgemm;
pub(crate) mod sgemm_skinny;

use crate::backend::host::CellForward;
use crate::config::CellKind;

/// The fused forward step of `cell`: LSTM here, the others in `avx2/`.
///
/// Panics if a slice `cell` uses does not have its documented length.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
pub(crate) unsafe fn cell_forward(cell: CellKind, step: CellForward<'_, f32>) {
    // SAFETY: the caller guarantees the ISA; check_forward proves every slice the kernel reads
    // or writes has its documented length.
    unsafe {
        match cell {
            CellKind::Lstm => {
                super::avx2::check_forward(cell, &step);
                lstm::forward(step)
            }
            _ => super::avx2::cell_forward(cell, step),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::cell_tests::{self, CellIsa};
    use crate::backend::cpu::Isa;
    use crate::backend::host::CellForward;
    use crate::config::CellKind;

    const AVX512: CellIsa = CellIsa {
        name: "AVX-512",
        supported: || Isa::Avx512.is_supported(),
        forward: super::cell_forward,
        backward: crate::backend::cpu::avx2::cell_backward,
    };

    /// The LSTM forward against the reference (f32 and f64), at every position, and on
    /// saturated and NaN inputs.
    #[test]
    fn lstm_forward_against_the_reference() {
        cell_tests::check_cases(&AVX512, CellKind::Lstm, true, false);
        cell_tests::results_do_not_depend_on_position(&AVX512, CellKind::Lstm);
        cell_tests::check_extremes(&AVX512, CellKind::Lstm);
    }

    /// `cargo test --release --lib avx512_lstm_throughput -- --ignored --nocapture`: the LSTM
    /// forward step, AVX-512 against AVX2, one thread, B = 32, H = 512.
    #[test]
    #[ignore = "timing, run by hand"]
    fn avx512_lstm_throughput() {
        if !Isa::Avx512.is_supported() {
            println!("skipped: no AVX-512");
            return;
        }
        let (b, h) = (32, 512);
        let gh = 4 * h;
        let v = |n: usize, s: f32| (0..n).map(|i| s * (((i * 7919) % 1000) as f32 / 500.0 - 1.0)).collect::<Vec<f32>>();
        let active = vec![true; b];
        let (xg, hg, b_hh, h_prev, c_prev) = (v(b * gh, 2.0), v(b * gh, 1.5), v(gh, 0.1), v(b * h, 0.5), v(b * h, 0.5));
        let (mut gates, mut c, mut m) = (vec![0.0; b * gh], vec![0.0; b * h], vec![0.0; b * h]);
        for round in 0..3 {
            for wide in [false, true] {
                let reps = 2000;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    let step = CellForward {
                        active: &active,
                        hidden: h,
                        xg: &xg,
                        hg: &hg,
                        b_hh: Some(&b_hh),
                        h_prev: &h_prev,
                        c_prev: &c_prev,
                        gates: &mut gates,
                        extra: &mut [],
                        c: &mut c,
                        m: &mut m,
                    };
                    // SAFETY: AVX-512 (and AVX2+FMA) checked above.
                    unsafe {
                        if wide {
                            super::cell_forward(CellKind::Lstm, step)
                        } else {
                            crate::backend::cpu::avx2::cell_forward(CellKind::Lstm, step)
                        }
                    }
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
                println!(
                    "round {round}: {} {us:.1} µs per step ({:.2} ns per unit)",
                    if wide { "avx512" } else { "avx2  " },
                    us * 1e3 / (b * h) as f64
                );
            }
        }
    }
}
