//! AVX2+FMA GEMM for few rows against a packed weight: `out[M, N] = alpha·a[M, K]·B + beta·out`
//! with `B` packed (see `cpu/packed.rs`), for the per-step products of a small batch (fewer rows
//! than the 6-row tile of `sgemm.rs`, which would waste most of its FMAs here).
//!
//! Register tile: `MR` rows × `NP` panels of 16 columns, with `MR·2·NP = 8` accumulators in
//! flight (4×1, 2×2, 1×4), enough to cover the FMA latency: one row alone would otherwise wait
//! on two dependent chains. Each k step loads 2·NP vectors of the panel once and broadcasts
//! `MR` values of `a`; every element of `out` is one dot product summed in k order.

use crate::backend::cpu::packed::{PackedWeight, NR};
use crate::backend::host::Mat;
use core::arch::x86_64::*;

/// `MR × (NP·16)` tile at rows `a`, panels starting at `b`; `cols` valid output columns;
/// `c = alpha·acc + beta·c` (`c` not read when `beta = 0`).
///
/// # Safety
/// AVX2 and FMA; `a + r·rsa + kk·csa` readable for `r < MR`, `kk < k`; `b` holds `NP` panels of
/// `k·16` floats at stride `k·16`; `c + r·rsc + j` writable for `r < MR`, `j < cols ≤ NP·16`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn tile<const MR: usize, const NP: usize>(
    a: *const f32,
    rsa: usize,
    csa: usize,
    k: usize,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    cols: usize,
    (alpha, beta): (f32, f32),
) {
    let stride = k * NR;
    // SAFETY (whole body): every pointer offset below stays inside the ranges the caller
    // vouched for.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 8]; MR];
        for kk in 0..k {
            let mut bv = [_mm256_setzero_ps(); 8];
            for p in 0..NP {
                let bp = b.add(p * stride + kk * NR);
                bv[2 * p] = _mm256_loadu_ps(bp);
                bv[2 * p + 1] = _mm256_loadu_ps(bp.add(8));
            }
            for r in 0..MR {
                let av = _mm256_broadcast_ss(&*a.add(r * rsa + kk * csa));
                for q in 0..2 * NP {
                    acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
                }
            }
        }
        let (va, vb) = (_mm256_set1_ps(alpha), _mm256_set1_ps(beta));
        for (r, row) in acc.iter().enumerate() {
            let dst = c.add(r * rsc);
            let mut tmp = [0.0f32; 64];
            let full = cols == NP * NR;
            for (q, v) in row.iter().take(2 * NP).enumerate() {
                let mut v = if alpha == 1.0 { *v } else { _mm256_mul_ps(va, *v) };
                if full {
                    if beta != 0.0 {
                        v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(dst.add(8 * q)), v);
                    }
                    _mm256_storeu_ps(dst.add(8 * q), v);
                } else {
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * q), v);
                }
            }
            if !full {
                for (j, &v) in tmp.iter().take(cols).enumerate() {
                    let d = dst.add(j);
                    *d = if beta == 0.0 { v } else { v + beta * *d };
                }
            }
        }
    }
}

/// `out = alpha·a·B + beta·out` for output columns of panels `p0..p1` of the packed `B`.
///
/// # Safety
/// AVX2 and FMA; `out` is a raw view whose elements `(i, j)` for `j` in the panels' columns are
/// writable and touched by no one else; shapes were checked with `check_shapes`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_panels(
    a: &Mat<'_, f32>,
    w: &PackedWeight,
    p0: usize,
    p1: usize,
    out: *mut f32,
    rs_out: usize,
    alpha: f32,
    beta: f32,
) {
    let (m, k) = (a.rows, a.cols);
    let col_end = |p: usize| (p * NR).min(w.n);
    // SAFETY: offsets stay inside `a` (rows < m, k), `w.data` (panels < w.panels()) and the
    // caller's output block.
    unsafe {
        let ap = a.data.as_ptr();
        let bp = w.data.as_ptr();
        let mut r = 0;
        while r < m {
            let left = m - r;
            let arow = ap.add(r * a.rs);
            let crow = out.add(r * rs_out);
            let mut p = p0;
            if left >= 4 {
                while p < p1 {
                    tile::<4, 1>(arow, a.rs, a.cs, k, bp.add(p * NR * k), crow.add(p * NR), rs_out, col_end(p + 1) - p * NR, (alpha, beta));
                    p += 1;
                }
                r += 4;
            } else if left >= 2 {
                while p + 2 <= p1 {
                    tile::<2, 2>(arow, a.rs, a.cs, k, bp.add(p * NR * k), crow.add(p * NR), rs_out, col_end(p + 2) - p * NR, (alpha, beta));
                    p += 2;
                }
                if p < p1 {
                    tile::<2, 1>(arow, a.rs, a.cs, k, bp.add(p * NR * k), crow.add(p * NR), rs_out, col_end(p + 1) - p * NR, (alpha, beta));
                }
                r += 2;
            } else {
                while p + 4 <= p1 {
                    tile::<1, 4>(arow, a.rs, a.cs, k, bp.add(p * NR * k), crow.add(p * NR), rs_out, col_end(p + 4) - p * NR, (alpha, beta));
                    p += 4;
                }
                while p < p1 {
                    tile::<1, 1>(arow, a.rs, a.cs, k, bp.add(p * NR * k), crow.add(p * NR), rs_out, col_end(p + 1) - p * NR, (alpha, beta));
                    p += 1;
                }
                r += 1;
            }
        }
    }
}
