//! AVX-512 GEMM for few rows against a packed weight (see `isa/avx2/sgemm_skinny.rs` for the
//! design): one 16-lane register per panel row, so the driver (`gemm_panels` in
//! `gemm/sgemm.rs`) gives each tile twice the panels of the AVX2 one (4×2, 2×4, 1×8): eight
//! accumulators in flight. Every element of `out` is one dot product summed in k order, except
//! in the one-row tile, whose elements are 8 partial sums over `k mod 8` added in a fixed tree
//! (`streamed`); either way an element's sum does not depend on how panels are grouped.

use super::sgemm::{lanes, pairs, Bf16Row, F16Row, F32Row, PanelLoad};
use super::Avx512;
use crate::backend::cpu::gemm::packed::{Half, NR};
use crate::backend::cpu::gemm::sgemm::{ATile, CTile, SkinnyTile};
use core::arch::x86_64::*;

/// Accumulators of a sequential tile, `8 / R` per row (8, 4, 2: powers of two, for the tree).
const GEMV_ACC: usize = 8;

/// Tiles of at most this many rows read their panels as a few sequential streams, [`STREAMS`]
/// at a time (see `streamed`), instead of interleaving all of them. Only one row gains: with the weights in L3 (`gemm_bench 2 1024 3072 2`, `4 1024 3072 2`) the
/// interleaved, prefetched 2×4 and 4×2 tiles were faster than sequential ones.
const SEQUENTIAL_MAX_ROWS: usize = 1;

/// Panels a one-row tile reads side by side (see `streamed`), 8 accumulators each. One panel
/// after another (one stream) was measured much faster than the 1×8 tile's eight interleaved,
/// prefetched streams on a Zen 5 core (`gemm_bench 1 256 512 1 50000`: 64 → 108 GFLOP/s); on
/// Zen 4 (AMD EPYC family 25 model 17) two side by side are faster again than one:
/// `gemm_bench 1 256 1024 2 30000`, `avx512-packed`, 76 → 92 GFLOP/s (`1 256 512 1`: 40 → 50;
/// `1 1024 4096 2`, from L3: 69 → 71); four (32 accumulators, past the registers) were slower
/// (87).
const STREAMS: usize = 2;

/// How many k steps ahead each panel stream is prefetched.
const PREFETCH: usize = 32;

impl SkinnyTile for Avx512 {
    const WIDE: bool = true;
    const LOADS_16: bool = true;

    /// # Safety
    /// AVX-512F; as [`SkinnyTile::skinny`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn skinny<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const f32, c: CTile, ab: (f32, f32)) {
        // SAFETY: the caller's contract.
        unsafe { skinny_with::<F32Row, R, NP>(a, k, b, c, ab) }
    }

    /// As the blocked tiles' (`isa/avx512/sgemm.rs`).
    fn dot_bf16() -> bool {
        <Avx512 as crate::backend::cpu::gemm::sgemm::BlockTile>::dot_bf16()
    }

    /// `R` rows × `NP` panels with `VDPBF16PS`, one accumulator per row and panel (4×2, 2×4,
    /// 1×8: eight in flight), each element one chain over the pairs in order.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16 (the driver calls it only where [`SkinnyTile::dot_bf16`]); as
    /// [`SkinnyTile::skinny_dot`].
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    #[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
    unsafe fn skinny_dot<const R: usize, const NP: usize>(a: *const u32, kp: usize, b: *const u16, c: CTile, (alpha, beta): (f32, f32)) {
        let stride = kp * 2 * NR;
        // SAFETY (whole body): every offset stays inside the ranges the caller vouched for;
        // masked lanes are not accessed.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NP]; R];
            for q in 0..kp {
                let mut bv = [pairs(_mm512_setzero_si512()); NP];
                for p in 0..NP {
                    let at = b.add(p * stride + q * 2 * NR);
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH * NR) as *const i8);
                    bv[p] = pairs(_mm512_loadu_si512(at.cast()));
                }
                for r in 0..R {
                    let av = pairs(_mm512_set1_epi32(*a.add(r * kp + q) as i32));
                    for p in 0..NP {
                        acc[r][p] = _mm512_dpbf16_ps(acc[r][p], av, bv[p]);
                    }
                }
            }
            let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
            for (r, row) in acc.iter().enumerate() {
                for (p, v) in row.iter().enumerate() {
                    let left = c.cols.saturating_sub(p * NR);
                    if left == 0 {
                        break;
                    }
                    let m = lanes(left);
                    let at = c.ptr.add(r * c.rs + p * NR);
                    let mut v = if alpha == 1.0 { *v } else { _mm512_mul_ps(va, *v) };
                    if beta != 0.0 {
                        v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, at), v);
                    }
                    _mm512_mask_storeu_ps(at, m, v);
                }
            }
        }
    }

    /// # Safety
    /// AVX-512F; as [`SkinnyTile::skinny16`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn skinny16<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const u16, format: Half, c: CTile, ab: (f32, f32)) {
        // SAFETY: the caller's contract.
        unsafe {
            match format {
                Half::F16 => skinny_with::<F16Row, R, NP>(a, k, b, c, ab),
                Half::Bf16 => skinny_with::<Bf16Row, R, NP>(a, k, b, c, ab),
            }
        }
    }
}

/// The skinny tile with panel rows loaded by `L`.
///
/// # Safety
/// AVX-512F (inlined into the callers that enable it); as [`SkinnyTile::skinny`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn skinny_with<L: PanelLoad, const R: usize, const NP: usize>(
    a: ATile,
    k: usize,
    b: *const L::E,
    c: CTile,
    (alpha, beta): (f32, f32),
) {
    let (cols, ATile { ptr: a, rs: rsa, cs: csa }) = (c.cols, a);
    let stride = k * NR;
    // SAFETY (whole body): every pointer offset below stays inside the ranges the caller
    // vouched for; masked lanes are not accessed.
    unsafe {
        if R <= SEQUENTIAL_MAX_ROWS {
            // STREAMS panels at a time, each with `8 / R` accumulators per row over
            // `k mod (8 / R)` (see `streamed`); a last group of fewer panels one by one (the
            // same sums).
            let mut p = 0;
            while p < NP && cols > p * NR {
                let live = (NP - p).min((cols - p * NR).div_ceil(NR));
                let cp = CTile { ptr: c.ptr.add(p * NR), rs: c.rs, rows: c.rows, cols: cols - p * NR };
                if live >= STREAMS {
                    streamed::<L, R, STREAMS>(a, rsa, csa, k, b.add(p * stride), cp, (alpha, beta));
                    p += STREAMS;
                } else {
                    streamed::<L, R, 1>(a, rsa, csa, k, b.add(p * stride), cp, (alpha, beta));
                    p += 1;
                }
            }
            return;
        }
        let mut acc = [[_mm512_setzero_ps(); NP]; R];
        for kk in 0..k {
            let mut bv = [_mm512_setzero_ps(); NP];
            for p in 0..NP {
                let at = b.add(p * stride + kk * NR);
                // One line per panel per k: the L2 prefetcher alone falls behind 8 streams.
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH * NR) as *const i8);
                bv[p] = L::load(at);
            }
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(r * rsa + kk * csa));
                for p in 0..NP {
                    acc[r][p] = _mm512_fmadd_ps(av, bv[p], acc[r][p]);
                }
            }
        }
        let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for (r, row) in acc.iter().enumerate() {
            let dst = c.ptr.add(r * c.rs);
            for (p, v) in row.iter().enumerate() {
                let left = cols.saturating_sub(p * NR);
                if left == 0 {
                    break;
                }
                let m = lanes(left);
                let at = dst.add(p * NR);
                let mut v = if alpha == 1.0 { *v } else { _mm512_mul_ps(va, *v) };
                if beta != 0.0 {
                    v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, at), v);
                }
                _mm512_mask_storeu_ps(at, m, v);
            }
        }
    }
}

/// `S` panels of the one-row tile (`R` ≤ [`SEQUENTIAL_MAX_ROWS`]) read side by side, `S`
/// sequential streams that the hardware prefetcher follows (a software prefetch made one stream
/// slower), with `8 / R` accumulators per row and panel over `k mod (8 / R)`, summed in a fixed
/// pairwise tree at the end: every element gets the same sum whatever `S`. `c` starts at the
/// first panel's columns; `c.cols` may end inside the last panel.
///
/// # Safety
/// AVX-512F (inlined into the callers that enable it); `b` holds `S` panels of `k` rows
/// `k·NR` apart, `a` and `c` as [`SkinnyTile::skinny`]'s.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn streamed<L: PanelLoad, const R: usize, const S: usize>(
    a: *const f32,
    rsa: usize,
    csa: usize,
    k: usize,
    b: *const L::E,
    c: CTile,
    (alpha, beta): (f32, f32),
) {
    let ks = GEMV_ACC / R;
    let stride = k * NR;
    // SAFETY (whole body): the caller's contract; masked lanes are not accessed.
    unsafe {
        let mut acc = [[[_mm512_setzero_ps(); GEMV_ACC]; R]; S];
        let mut kk = 0;
        while kk + ks <= k {
            for u in 0..ks {
                for s in 0..S {
                    let bv = L::load(b.add(s * stride + (kk + u) * NR));
                    for r in 0..R {
                        acc[s][r][u] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * rsa + (kk + u) * csa)), bv, acc[s][r][u]);
                    }
                }
            }
            kk += ks;
        }
        for u in 0..k - kk {
            for s in 0..S {
                let bv = L::load(b.add(s * stride + (kk + u) * NR));
                for r in 0..R {
                    acc[s][r][u] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * rsa + (kk + u) * csa)), bv, acc[s][r][u]);
                }
            }
        }
        for s in 0..S {
            let left = c.cols.saturating_sub(s * NR);
            if left == 0 {
                break;
            }
            let m = lanes(left);
            for r in 0..R {
                // The partial sums in a fixed pairwise tree: ((0+1)+(2+3))+((4+5)+(6+7)).
                let mut w = ks;
                while w > 1 {
                    for u in 0..w / 2 {
                        acc[s][r][u] = _mm512_add_ps(acc[s][r][2 * u], acc[s][r][2 * u + 1]);
                    }
                    w /= 2;
                }
                let at = c.ptr.add(r * c.rs + s * NR);
                let mut v = if alpha == 1.0 { acc[s][r][0] } else { _mm512_mul_ps(_mm512_set1_ps(alpha), acc[s][r][0]) };
                if beta != 0.0 {
                    v = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, at), v);
                }
                _mm512_mask_storeu_ps(at, m, v);
            }
        }
    }
}
