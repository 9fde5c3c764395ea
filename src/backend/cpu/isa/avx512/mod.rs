//! x86-64 AVX-512 kernels of the CPU backend: the GEMM register tiles (`sgemm.rs`: 8×48
//! blocked, `sgemm_skinny.rs`: few rows), used for the weight gradients too, and the LSTM and
//! GRU forward cells (`lstm.rs`, `gru.rs`, with the maths of `math.rs`), which are bound by
//! arithmetic. The LSTM forward with options too (`lstm::forward_options`), the GRU's with
//! gate clipping, and layer norm of one row (`layer_norm.rs`, forward and backward, AVX2's
//! order of sums on 16 lanes). The other cells are memory-bound: AVX-512 takes them from its
//! base, AVX2 (an AVX-512 token is only made where AVX2 and FMA were detected too, and holds
//! the AVX2 token). The LSTM and GRU cells give each element the bits the AVX2 ones give.

mod gru;
mod lanes;
mod layer_norm;
mod lstm;
mod math;
pub(super) mod sgemm;
mod sgemm_skinny;

use super::rows::FwdRow;
use super::{Avx2, Isa, Kernels};
use crate::backend::cpu::gemm::sgemm::BlockTile;
use crate::backend::cpu::gemm::{gemm_tiled, gemm_tiled_bf16, Gemm, Par};
use crate::backend::cpu::RowBlocking;
use crate::backend::host::MatMut;

/// The AVX-512 ISA's token: made only where AVX-512F, AVX2 and FMA were detected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512 {
    avx2: Avx2,
}

impl Avx512 {
    /// The token, if this CPU has AVX-512F, AVX2 and FMA.
    pub(crate) fn detect() -> Option<Avx512> {
        let avx2 = Avx2::detect()?;
        is_x86_feature_detected!("avx512f").then_some(Avx512 { avx2 })
    }
}

impl Kernels for Avx512 {
    const ISA: Isa = Isa::Avx512;
    /// The 8-row tiles waste nothing on forward blocks of 32 rows.
    const ROW_BLOCKING: RowBlocking = RowBlocking { tile_rows: <Avx512 as BlockTile>::ROWS, forward_min: 32, ..RowBlocking::SIX_ROW_TILES };
    type Base = Avx2;

    fn base(self) -> Avx2 {
        self.avx2
    }

    /// The AVX-512 tiles where `C`'s rows are contiguous (matrixmultiply has no AVX-512
    /// kernels), else the base's.
    unsafe fn gemm_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        if c.cs == 1 {
            // SAFETY: `self` proves AVX-512F, AVX2 and FMA; the shapes are this method's
            // contract, and C's rows are contiguous.
            unsafe { gemm_tiled::<Avx512>(par, g, c) }
        } else {
            // SAFETY: the base's contract is this one.
            unsafe { self.base().gemm_unchecked(par, g, c) }
        }
    }

    /// On the `VDPBF16PS` tiles where the CPU has them and `C`'s rows are contiguous.
    unsafe fn gemm_bf16_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        if c.cs == 1 {
            // SAFETY: as in gemm_unchecked; gemm_tiled_bf16 falls back to f32 products where
            // the CPU lacks VDPBF16PS.
            unsafe { gemm_tiled_bf16::<Avx512>(par, g, c) }
        } else {
            // SAFETY: the same contract.
            unsafe { self.gemm_unchecked(par, g, c) }
        }
    }

    unsafe fn weight_gemm_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        // SAFETY: as in gemm_unchecked; weight products have contiguous rows of C (the
        // contract of this method).
        unsafe { gemm_tiled::<Avx512>(par, g, c) }
    }

    unsafe fn lstm_forward(self, r: FwdRow<'_>) {
        // SAFETY: `self` proves the ISA; the row's lengths are this method's contract.
        unsafe { lstm::forward(r) }
    }

    unsafe fn lstm_forward_options(self, r: FwdRow<'_>) {
        // SAFETY: as in lstm_forward, and the peephole's length is this method's contract.
        unsafe { lstm::forward_options(r) }
    }

    unsafe fn gru_forward(self, r: FwdRow<'_>) {
        // SAFETY: as in lstm_forward. Clipped or not: one branch per row.
        unsafe {
            if r.clip > 0.0 {
                gru::forward::<true>(r)
            } else {
                gru::forward::<false>(r)
            }
        }
    }

    #[cfg(test)]
    const LN_PARTIAL_SUMS: usize = layer_norm::PARTIAL_SUMS;

    unsafe fn layer_norm_row(self, x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, xhat: Option<&mut [f32]>) -> f32 {
        // SAFETY: `self` proves the ISA; the lengths are this method's contract.
        unsafe { layer_norm::forward(x, gamma, beta, xhat) }
    }

    unsafe fn layer_norm_row_backward(self, dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
        // SAFETY: as in layer_norm_row.
        unsafe { layer_norm::backward(dy, gamma, xhat, rstd, dx) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::host::CellForward;
    use crate::SplitMix64;

    crate::backend::cpu::isa::cell_tests::cell_kernel_tests!(super::Avx512::detect(), exact: [], #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]);

    /// The AVX-512 forward cells (LSTM plain and with options, GRU plain and clipped) give every
    /// element the bits of the AVX2 ones, their base: on widths with and without a 16-lane
    /// tail and past a block of 256 lanes, with pre-activations that saturate the gates, and
    /// an inactive row; every output starts as -7, so a value one ISA writes and the other
    /// does not shows too.
    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]
    fn forward_cells_give_the_avx2_bits() {
        let Some(isa) = Avx512::detect() else {
            crate::testkit::skip_isa("avx512");
            return;
        };
        let mut rng = SplitMix64::new(0xa512);
        for (cell, peephole, clip, input_forget) in [
            (CellKind::Lstm, false, 0.0, false),
            (CellKind::Lstm, true, 2.5, false),
            (CellKind::Lstm, false, 0.0, true),
            (CellKind::Gru, false, 0.0, false),
            (CellKind::Gru, false, 1.5, false),
        ] {
            for h in [1, 7, 16, 17, 40, 300] {
                let (b, gh) = (3, cell.gates() * h);
                let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
                let mut v = |n: usize, r: f64| (0..n).map(|_| rng.uniform(-r, r) as f32).collect::<Vec<_>>();
                let (xg, hg, b_hh, h_prev, c_prev) = (v(b * gh, 6.0), v(b * gh, 6.0), v(gh, 1.0), v(b * h, 1.0), v(b * h, 2.0));
                let peep = v(3 * h, 1.0);
                let active = [true, false, true];
                let run = |k: &dyn Fn(CellForward<'_, f32>)| {
                    let mut outs = [b * gh, if gru { b * h } else { 0 }, if lstm { b * h } else { 0 }, b * h].map(|n| vec![-7.0f32; n]);
                    let [gates, extra, c, m] = outs.each_mut();
                    k(CellForward {
                        active: &active,
                        hidden: h,
                        xg: &xg,
                        hg: &hg,
                        b_hh: Some(&b_hh),
                        peephole: peephole.then_some(&peep[..]),
                        clip,
                        input_forget,
                        h_prev: &h_prev,
                        c_prev: if lstm { &c_prev } else { &[] },
                        gates,
                        extra,
                        c,
                        m,
                    });
                    outs
                };
                let wide = run(&|s| isa.cell_forward(cell, s));
                let base = run(&|s| isa.base().cell_forward(cell, s));
                for (name, (w, a)) in ["gates", "extra", "c", "m"].iter().zip(wide.iter().zip(&base)) {
                    let (wb, ab): (Vec<u32>, Vec<u32>) = (w.iter().map(|x| x.to_bits()).collect(), a.iter().map(|x| x.to_bits()).collect());
                    assert_eq!(wb, ab, "{cell:?} H = {h}, clip {clip}, peephole {peephole}: `{name}` differs from AVX2's");
                }
            }
        }
    }
}
