//! AVX2+FMA GEMM for few rows against a packed weight: `out[M, N] = alpha·a[M, K]·B + beta·out`
//! with `B` packed (see `gemm/packed.rs`), for the per-step products of a small batch (fewer rows
//! than the 6-row tile of `sgemm.rs`, which would waste most of its FMAs here).
//!
//! Register tile: `R` rows × `NP` panels of 16 columns, with `R·2·NP = 8` accumulators in
//! flight (4×1, 2×2, 1×4), enough to cover the FMA latency: one row alone would otherwise wait
//! on two dependent chains. Each k step loads 2·NP vectors of the panel once and broadcasts
//! `R` values of `a`; every element of `out` is one dot product summed in k order. The driver
//! that walks rows and panels is ISA-neutral: `gemm_panels` in `gemm/sgemm.rs`.

use super::sgemm::{Bf16Row, F16Row, F32Row, PanelLoad};
use super::Avx2;
use crate::backend::cpu::gemm::packed::{Half, NR};
use crate::backend::cpu::gemm::sgemm::{ATile, CTile, SkinnyTile};
use core::arch::x86_64::*;

/// [`skinny_with`] on f16 panels, with F16C enabled (checked by the caller).
///
/// # Safety
/// AVX2, FMA and F16C; as [`SkinnyTile::skinny16`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn skinny_f16<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const u16, c: CTile, ab: (f32, f32)) {
    // SAFETY: the caller's contract.
    unsafe { skinny_with::<F16Row, R, NP>(a, k, b, c, ab) }
}

impl SkinnyTile for Avx2 {
    const LOADS_16: bool = true;

    /// # Safety
    /// AVX2 and FMA; as [`SkinnyTile::skinny`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn skinny<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const f32, c: CTile, ab: (f32, f32)) {
        // SAFETY: the caller's contract.
        unsafe { skinny_with::<F32Row, R, NP>(a, k, b, c, ab) }
    }

    /// f16 without F16C (an AVX2 CPU without it is not known, but the ISA does not promise
    /// it) widens the panels first, as the trait's default does.
    ///
    /// # Safety
    /// AVX2 and FMA; as [`SkinnyTile::skinny16`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn skinny16<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const u16, format: Half, c: CTile, ab: (f32, f32)) {
        // SAFETY: the caller's contract; F16C checked before the f16 tile runs.
        unsafe {
            match format {
                Half::F16 if std::is_x86_feature_detected!("f16c") => skinny_f16::<R, NP>(a, k, b, c, ab),
                Half::F16 => {
                    let bits = std::slice::from_raw_parts(b, NP * k * NR);
                    let mut wide = vec![0.0; bits.len()];
                    format.widen_slice(bits, &mut wide);
                    skinny_with::<F32Row, R, NP>(a, k, wide.as_ptr(), c, ab)
                }
                Half::Bf16 => skinny_with::<Bf16Row, R, NP>(a, k, b, c, ab),
            }
        }
    }
}

/// The skinny tile with panel rows loaded by `L`.
///
/// # Safety
/// AVX2 and FMA (inlined into the callers that enable them, and F16C for f16); as
/// [`SkinnyTile::skinny`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn skinny_with<L: PanelLoad, const R: usize, const NP: usize>(
    a: ATile,
    k: usize,
    b: *const L::E,
    c: CTile,
    (alpha, beta): (f32, f32),
) {
    let stride = k * NR;
    // SAFETY (whole body): every pointer offset below stays inside the ranges the caller
    // vouched for.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 8]; R];
        for kk in 0..k {
            let mut bv = [_mm256_setzero_ps(); 8];
            for p in 0..NP {
                let bp = b.add(p * stride + kk * NR);
                bv[2 * p] = L::load(bp);
                bv[2 * p + 1] = L::load(bp.add(8));
            }
            for r in 0..R {
                let av = _mm256_broadcast_ss(&*a.ptr.add(r * a.rs + kk * a.cs));
                for q in 0..2 * NP {
                    acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
                }
            }
        }
        let (va, vb) = (_mm256_set1_ps(alpha), _mm256_set1_ps(beta));
        for (r, row) in acc.iter().enumerate() {
            let dst = c.ptr.add(r * c.rs);
            // An edge tile goes through a full-width copy of its columns, so that every element
            // gets the same instructions (alpha, then one FMA with beta) in a full tile and at
            // an edge, whichever panels a thread's share groups into tiles.
            let full = c.cols == NP * NR;
            let mut tmp = [0.0f32; 64];
            if !full && beta != 0.0 {
                std::ptr::copy_nonoverlapping(dst, tmp.as_mut_ptr(), c.cols);
            }
            let buf = if full { dst } else { tmp.as_mut_ptr() };
            for (q, v) in row.iter().take(2 * NP).enumerate() {
                let mut v = if alpha == 1.0 { *v } else { _mm256_mul_ps(va, *v) };
                if beta != 0.0 {
                    v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(buf.add(8 * q)), v);
                }
                _mm256_storeu_ps(buf.add(8 * q), v);
            }
            if !full {
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, c.cols);
            }
        }
    }
}
