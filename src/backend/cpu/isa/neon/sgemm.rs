//! NEON register tiles of the blocked SGEMM (the loop nest, packing and split are ISA-neutral,
//! in `gemm/sgemm.rs`): `C[6, 16] ⊕= Σ_k A[6, k]·B[k, 16]` per call, over `KC` of `k`.
//!
//! Why 6×16: AArch64 has 32 registers of 4 f32. The tile holds 24 accumulators (6 rows × 4
//! vectors), the 4 vectors of one `k` row of the `B` panel, and `A`'s 6 values of that `k` in
//! one q register (rows 0-3) and one d register (rows 4-5): 30 registers, no spills. Each `k`
//! step is 6 loads (`ldr q` ×5, `ldr d` ×1) for 24 `fmla` by element (`vfmaq_laneq_f32` takes
//! the `A` value straight from its lane, so there is no broadcast instruction), 0.25 loads per
//! FMA; 24 independent chains cover the FMA latency of Neoverse cores (4 cycles on 2 pipes on
//! N1/N2, on 4 pipes on V1/V2: 8 to 16 chains needed). The usual alternative, 8×12 (OpenBLAS's
//! and BLIS's Cortex-A/Neoverse kernels: 24 accumulators, 3 + 2 loads per 24 FMAs), moves the
//! same data per FMA but needs panels of 12 columns; 6×16 reads the plan's weights in the layout
//! the AVX2 tiles read (`gemm/packed.rs`, panels of 16), so both ISAs share one packing, one
//! `MR` and one split of `C` across threads. 8×16 would need 32 accumulators.
//!
//! Blocking, for a typical Neoverse core (N1/V1/N2: 64 KiB L1D, 1 MiB private L2; not measured
//! on hardware, these are chosen from the cache sizes): `KC = 512` makes one 16-column `B`
//! micro-panel 32 KiB, half of L1, leaving room for the current 12 KiB `A` micro-panel and the
//! `C` tile; `MC = 240` makes the packed `A` block 480 KiB, half of L2, so it stays there while
//! every `B` micro-panel of the block passes it, with the other half for the streamed `B`
//! panels and `C`. `NC = 1024` bounds the per-call packing of a strided `B` (2 MiB at `KC`).

use super::Neon;
use crate::backend::cpu::gemm::packed::NR;
use crate::backend::cpu::gemm::sgemm::{BlockTile, CTile, Update, MR};
use core::arch::aarch64::*;
use core::arch::asm;

/// Hints the line holding `p` into L1 (`prfm pldl1keep`; a hint, it never faults).
#[inline(always)]
fn prefetch(p: *const f32) {
    // SAFETY: PRFM reads nothing architecturally and cannot fault, whatever the address.
    unsafe { asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly)) }
}

impl BlockTile for Neon {
    #[target_feature(enable = "neon")]
    #[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update) {
        // SAFETY (whole body): NEON and the ranges are this method's contract.
        unsafe {
            // The C tile is read only after the k loop, by which time these lines have arrived:
            // six rows a row stride apart defeat the hardware prefetchers.
            for i in 0..MR {
                if i < c.rows {
                    prefetch(c.ptr.add(i * c.rs));
                    prefetch(c.ptr.add(i * c.rs + c.cols - 1));
                }
            }
            let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8)), vld1q_f32(bp.add(12))];
                let a03 = vld1q_f32(ap);
                let a45 = vld1_f32(ap.add(4));
                for j in 0..4 {
                    acc[0][j] = vfmaq_laneq_f32::<0>(acc[0][j], bv[j], a03);
                    acc[1][j] = vfmaq_laneq_f32::<1>(acc[1][j], bv[j], a03);
                    acc[2][j] = vfmaq_laneq_f32::<2>(acc[2][j], bv[j], a03);
                    acc[3][j] = vfmaq_laneq_f32::<3>(acc[3][j], bv[j], a03);
                    acc[4][j] = vfmaq_lane_f32::<0>(acc[4][j], bv[j], a45);
                    acc[5][j] = vfmaq_lane_f32::<1>(acc[5][j], bv[j], a45);
                }
                ap = ap.add(MR);
                bp = bp.add(NR);
            }
            // An edge tile goes through a copy of its part of C, so that every element gets the
            // same instructions (alpha, then an add or one FMA with beta) in a full tile and at an
            // edge.
            let full = c.rows == MR && c.cols == NR;
            let read_c = up.beta != Some(0.0);
            let va = vdupq_n_f32(up.alpha);
            let mut tmp = [0.0f32; MR * NR];
            for i in 0..MR {
                if i >= c.rows {
                    break;
                }
                let dst = c.ptr.add(i * c.rs);
                let buf = if full { dst } else { tmp.as_mut_ptr().add(i * NR) };
                if !full && read_c {
                    std::ptr::copy_nonoverlapping(dst, buf, c.cols);
                }
                for h in 0..4 {
                    let v = if up.alpha == 1.0 { acc[i][h] } else { vmulq_f32(va, acc[i][h]) };
                    let out = match up.beta {
                        None => vaddq_f32(vld1q_f32(buf.add(4 * h)), v),
                        Some(0.0) => v, // also -0.0: a float pattern compares with ==
                        Some(beta) => vfmaq_f32(v, vdupq_n_f32(beta), vld1q_f32(buf.add(4 * h))),
                    };
                    vst1q_f32(buf.add(4 * h), out);
                }
                if !full {
                    std::ptr::copy_nonoverlapping(buf, dst, c.cols);
                }
            }
        }
    }

    /// The packed `A` block is 480 KiB (see the module documentation).
    const MC: usize = 240;
}
