//! NEON tiles for few rows against a packed weight: `out[M, N] = alpha·a[M, K]·B + beta·out`
//! with `B` packed (see `gemm/packed.rs`), for the per-step products of a small batch (fewer rows
//! than the 6-row tile of `sgemm.rs`, which would waste most of its FMAs here).
//!
//! Register tile: `R` rows × `NP` panels of 16 columns, 4 vectors per panel, with
//! `R·4·NP = 16` accumulators in flight (4×1, 2×2, 1×4; the driver, `gemm_panels` in
//! `gemm/sgemm.rs`, picks them), enough to cover the FMA latency of a Neoverse core (4 cycles on
//! up to 4 pipes): one row of one panel alone would wait on four dependent chains. Each `k`
//! step streams `4·NP` vectors of the panels once and loads `R` values of `a` with `ld1r`; the
//! weights are read once per group of rows, which is the cost of this product. Every element of
//! `out` is one dot product summed in `k` order.

use super::Neon;
use crate::backend::cpu::gemm::packed::NR;
use crate::backend::cpu::gemm::sgemm::{ATile, CTile, SkinnyTile};
use core::arch::aarch64::*;

/// A compiler barrier for memory accesses (an empty `asm!`, which to the compiler may read and
/// write any memory): loads after it are not moved above it. Emits no instruction.
#[inline(always)]
fn load_barrier() {
    // SAFETY: an empty instruction sequence; it touches no register or memory.
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) }
}

impl SkinnyTile for Neon {
    /// # Safety
    /// NEON; as [`SkinnyTile::skinny`].
    #[target_feature(enable = "neon")]
    #[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
    unsafe fn skinny<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const f32, c: CTile, (alpha, beta): (f32, f32)) {
        debug_assert!(R * NP <= 4 && c.cols <= NP * NR);
        let stride = k * NR;
        // SAFETY (whole body): every pointer offset below stays inside the ranges the caller
        // vouched for.
        unsafe {
            let z = vdupq_n_f32(0.0);
            let mut acc = [[z; 16]; R];
            let mut bp = b;
            let mut ap = a.ptr;
            for _ in 0..k {
                if R == 1 {
                    // One row: a panel's 4 vectors are used once each, so load them panel by panel.
                    // Without the barrier LLVM hoists all 16 loads of 1×4 above the FMAs and,
                    // with 16 accumulators, spills (33 live registers).
                    let av = vld1q_dup_f32(ap);
                    for p in 0..NP {
                        if p > 0 {
                            load_barrier();
                        }
                        for q in 0..4 {
                            acc[0][4 * p + q] = vfmaq_f32(acc[0][4 * p + q], vld1q_f32(bp.add(p * stride + 4 * q)), av);
                        }
                    }
                } else {
                    let mut bv = [z; 16];
                    for p in 0..NP {
                        for q in 0..4 {
                            bv[4 * p + q] = vld1q_f32(bp.add(p * stride + 4 * q));
                        }
                    }
                    for r in 0..R {
                        let av = vld1q_dup_f32(ap.add(r * a.rs));
                        for q in 0..4 * NP {
                            acc[r][q] = vfmaq_f32(acc[r][q], bv[q], av);
                        }
                    }
                }
                bp = bp.add(NR);
                ap = ap.add(a.cs);
            }
            // An edge tile goes through a full-width copy of its columns, so that every element
            // gets the same instructions (alpha, then one FMA with beta) in a full tile and at an
            // edge, whichever panels a thread's share groups into tiles.
            let (va, vb) = (vdupq_n_f32(alpha), vdupq_n_f32(beta));
            let full = c.cols == NP * NR;
            for r in 0..R {
                let dst = c.ptr.add(r * c.rs);
                let mut tmp = [0.0f32; 64];
                if !full && beta != 0.0 {
                    std::ptr::copy_nonoverlapping(dst, tmp.as_mut_ptr(), c.cols);
                }
                let buf = if full { dst } else { tmp.as_mut_ptr() };
                for q in 0..4 * NP {
                    let mut v = if alpha == 1.0 { acc[r][q] } else { vmulq_f32(va, acc[r][q]) };
                    if beta != 0.0 {
                        v = vfmaq_f32(v, vb, vld1q_f32(buf.add(4 * q)));
                    }
                    vst1q_f32(buf.add(4 * q), v);
                }
                if !full {
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, c.cols);
                }
            }
        }
    }
}
