//! AVX2+FMA register tiles of the blocked SGEMM (the loop nest, packing and split are
//! ISA-neutral, in `gemm/sgemm.rs`): a 6×16 tile, twelve 8-lane accumulators, two loads of `B`
//! and six broadcasts of `A` per 12 FMAs.

use super::Avx2;
use crate::backend::cpu::gemm::packed::NR;
use crate::backend::cpu::gemm::sgemm::{for_tile_rows, BlockTile, CTile, Update, MR};
use core::arch::x86_64::*;

impl BlockTile for Avx2 {
    /// A 16-column micro-panel of `B` is `KC·64` bytes (32 KiB, L1-sized; 512 measured faster
    /// than 256 on the large products here, see `examples/gemm_bench.rs`).
    const KC: usize = 512;
    /// The packed `A` block is `MC·KC·4` bytes (288 KiB), in L2.
    const MC: usize = 144;
    const NC: usize = 1024;

    /// The 6×16 tile: `C[rows, cols] ⊕= Σ_k a[k·6 + i]·b[k·16 + j]`.
    ///
    /// # Safety
    /// AVX2 and FMA; as [`BlockTile::tile`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update) {
        // SAFETY (whole body): offsets stay within the ranges the caller vouched for.
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
            // Alpha, then an add or one FMA with beta, the same in a full tile and at an edge.
            let alpha = _mm256_set1_ps(up.alpha);
            for_tile_rows::<MR, NR>(c, c.rows == MR && c.cols == NR, up.beta != Some(0.0), |i, buf| {
                for h in 0..2 {
                    let v = if up.alpha == 1.0 { acc[i][h] } else { _mm256_mul_ps(alpha, acc[i][h]) };
                    let out = match up.beta {
                        None => _mm256_add_ps(_mm256_loadu_ps(buf.add(8 * h)), v),
                        Some(0.0) => v, // also -0.0: a float pattern compares with ==
                        Some(beta) => _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(buf.add(8 * h)), v),
                    };
                    _mm256_storeu_ps(buf.add(8 * h), out);
                }
            });
        }
    }
}
