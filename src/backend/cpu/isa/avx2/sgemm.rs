//! AVX2+FMA register tiles of the blocked SGEMM (the loop nest, packing and split are
//! ISA-neutral, in `gemm/sgemm.rs`): a 6×16 tile, twelve 8-lane accumulators, two loads of `B`
//! and six broadcasts of `A` per 12 FMAs.

use super::Avx2;
use crate::backend::cpu::gemm::packed::NR;
use crate::backend::cpu::gemm::sgemm::{BlockTile, CTile, Update, MR};
use core::arch::x86_64::*;

impl BlockTile for Avx2 {
    /// The packed `A` block is 288 KiB.
    const MC: usize = 144;

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update) {
        // SAFETY (whole body): the ISA and the ranges are this method's contract.
        unsafe {
            // The C tile is read only after the k loop, by which time these have arrived: six rows
            // a row stride apart defeat the hardware prefetchers, and on a large C each would be a
            // miss to memory.
            for i in 0..c.rows {
                _mm_prefetch::<_MM_HINT_T0>(c.ptr.add(i * c.rs) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.ptr.add(i * c.rs + c.cols - 1) as *const i8);
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for i in 0..MR {
                    let av = _mm256_broadcast_ss(&*ap.add(i));
                    acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
                }
                ap = ap.add(MR);
                bp = bp.add(NR);
            }
            // An edge tile goes through a copy of its part of C, so that every element gets the
            // same instructions (alpha, then an add or one FMA with beta) in a full tile and at an
            // edge.
            let full = c.rows == MR && c.cols == NR;
            let read_c = up.beta != Some(0.0);
            let alpha = _mm256_set1_ps(up.alpha);
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
                for h in 0..2 {
                    let v = if up.alpha == 1.0 { acc[i][h] } else { _mm256_mul_ps(alpha, acc[i][h]) };
                    let out = match up.beta {
                        None => _mm256_add_ps(_mm256_loadu_ps(buf.add(8 * h)), v),
                        Some(0.0) => v, // also -0.0: a float pattern compares with ==
                        Some(beta) => _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(buf.add(8 * h)), v),
                    };
                    _mm256_storeu_ps(buf.add(8 * h), out);
                }
                if !full {
                    std::ptr::copy_nonoverlapping(buf, dst, c.cols);
                }
            }
        }
    }
}
