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
            c.prefetch(|p| _mm_prefetch::<_MM_HINT_T0>(p as *const i8));
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
            let (load, store, splat) = (|p| _mm256_loadu_ps(p), |p, v| _mm256_storeu_ps(p, v), |x| _mm256_set1_ps(x));
            let (mul, add) = (|a, b| _mm256_mul_ps(a, b), |a, b| _mm256_add_ps(a, b));
            up.store_tile(c, &acc, (load, store, splat, mul, add, |a, b, c| _mm256_fmadd_ps(a, b, c)));
        }
    }
}
