//! AVX2+FMA register tiles of the blocked SGEMM (the loop nest, packing and split are
//! ISA-neutral, in `gemm/sgemm.rs`): a 6×16 tile, twelve 8-lane accumulators, two loads of `B`
//! and six broadcasts of `A` per 12 FMAs.

use super::Avx2;
use crate::backend::cpu::gemm::packed::{Half, NR};
use crate::backend::cpu::gemm::sgemm::{ATile, BlockTile, CTile, Panels16, Update, MR};
use core::arch::x86_64::*;

/// How a tile loads 8 values of a panel row into one register: f32 as they are, f16 and bf16
/// widened exactly (so a tile gives the same bits on 16-bit panels as on their widened copy).
pub(super) trait PanelLoad {
    type E;
    /// # Safety
    /// AVX2 (and F16C for f16); `p` holds 8 values.
    unsafe fn load(p: *const Self::E) -> __m256;
}

pub(super) struct F32Row;
pub(super) struct F16Row;
pub(super) struct Bf16Row;

impl PanelLoad for F32Row {
    type E = f32;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl PanelLoad for F16Row {
    type E = u16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m256 {
        // SAFETY: the caller's contract (8 values of 16 bits; F16C).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

impl PanelLoad for Bf16Row {
    type E = u16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m256 {
        // SAFETY: the caller's contract. A bf16 value is the high half of its f32.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
    }
}

impl BlockTile for Avx2 {
    /// The packed `A` block is 288 KiB.
    const MC: usize = 144;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update) {
        // SAFETY: the caller's contract.
        unsafe { tile_with::<F32Row>(kc, a, b, c, up) }
    }

    const LOADS_16: bool = true;

    /// f16 without F16C widens the panels first, as the trait's default does.
    ///
    /// # Safety
    /// AVX2 and FMA; as [`BlockTile::tile_panels16`] (one panel, `A` packed).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_panels16(kc: usize, a: ATile, b: Panels16, c: CTile, up: Update) {
        debug_assert_eq!((a.rs, a.cs), (1, MR), "A must be packed");
        // SAFETY: the caller's contract; F16C checked before the f16 tile runs.
        unsafe {
            match b.format {
                Half::F16 if std::is_x86_feature_detected!("f16c") => tile_f16(kc, a.ptr, b.ptr, c, up),
                Half::F16 => {
                    let mut wide = vec![0.0; kc * NR];
                    b.format.widen_slice(std::slice::from_raw_parts(b.ptr, kc * NR), &mut wide);
                    tile_with::<F32Row>(kc, a.ptr, wide.as_ptr(), c, up)
                }
                Half::Bf16 => tile_with::<Bf16Row>(kc, a.ptr, b.ptr, c, up),
            }
        }
    }
}

/// [`tile_with`] on f16 panels, with F16C enabled (checked by the caller).
///
/// # Safety
/// AVX2, FMA and F16C; as [`BlockTile::tile`], `b` holding `kc·16` f16 values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_f16(kc: usize, a: *const f32, b: *const u16, c: CTile, up: Update) {
    // SAFETY: the caller's contract.
    unsafe { tile_with::<F16Row>(kc, a, b, c, up) }
}

/// The 6×16 tile with panel rows loaded by `L`.
///
/// # Safety
/// AVX2 and FMA (inlined into the callers that enable them, and F16C for f16); as
/// [`BlockTile::tile`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn tile_with<L: PanelLoad>(kc: usize, a: *const f32, b: *const L::E, c: CTile, up: Update) {
    // SAFETY (whole body): the ISA and the ranges are this function's contract.
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
            let b0 = L::load(bp);
            let b1 = L::load(bp.add(8));
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
