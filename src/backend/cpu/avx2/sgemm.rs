//! AVX2+FMA SGEMM, blocked as in BLIS: `C = alpha·A·B + beta·C` with a 6×16 register tile.
//!
//! Loops, outermost first: `jc` over blocks of [`NC`] columns, `pc` over blocks of [`KC`] of
//! the inner dimension, `ic` over blocks of [`MC`] rows (`A` packed into 6-row micro-panels,
//! which stay in L2), then every 16-column micro-panel of `B` (in L1 while it meets each row
//! micro-panel) against every 6-row micro-panel of `A`.
//!
//! `B` is either packed here per `(jc, pc)` block or already packed: a [`PackedWeight`] holds
//! `W: [N, K]` as panels of 16 output columns, k-major over the full `K`, so its `KC` slice for
//! one panel is contiguous and the per-call packing of the weights disappears.
//!
//! Every element of `C` is the same sum in the same order whatever the block of rows or columns
//! a thread is given: one k-ordered FMA chain per `KC` block, the blocks added in `k` order. So
//! splitting `C` across threads by rows or by panels never changes a bit.

use crate::backend::cpu::packed::{PackedWeight, NR};
use crate::backend::host::Mat;
use core::arch::x86_64::*;

/// Rows of the register tile.
pub(crate) const MR: usize = 6;
/// Inner-dimension block: a 16-column micro-panel of `B` is `KC·64` bytes (32 KiB, L1-sized;
/// 512 measured 5-20% faster than 256 on the large products here, see `examples/gemm_bench.rs`).
pub(crate) const KC: usize = 512;
/// Row block: the packed `A` block is `MC·KC·4` bytes (288 KiB), in L2.
pub(crate) const MC: usize = 144;
/// Column block (a multiple of 16) for `B` packed per call.
pub(crate) const NC: usize = 1024;

/// The right-hand operand.
#[derive(Clone, Copy)]
pub(crate) enum Rhs<'a> {
    /// `B[k, n]` as a strided view, packed per block.
    Strided(Mat<'a, f32>),
    /// `B = W^T` packed once (see `cpu/packed.rs`).
    Packed(&'a PackedWeight),
}

impl Rhs<'_> {
    pub(crate) fn k(&self) -> usize {
        match self {
            Rhs::Strided(b) => b.rows,
            Rhs::Packed(w) => w.k,
        }
    }
    pub(crate) fn n(&self) -> usize {
        match self {
            Rhs::Strided(b) => b.cols,
            Rhs::Packed(w) => w.n,
        }
    }
}

/// What the tile does with the `C` it finds: the first `KC` block applies `beta`, later ones add.
#[derive(Clone, Copy)]
struct Update {
    alpha: f32,
    /// `Some(beta)` on the first block, `None` (accumulate) after.
    beta: Option<f32>,
}

impl Update {
    #[inline(always)]
    fn apply(self, acc: f32, c: f32) -> f32 {
        let v = if self.alpha == 1.0 { acc } else { self.alpha * acc };
        match self.beta {
            None => c + v,
            Some(b) => {
                if b == 0.0 {
                    v
                } else {
                    v + b * c
                }
            }
        }
    }
}

/// The 6×16 tile: `C[rows, cols] ⊕= Σ_k a[k·6 + i]·b[k·16 + j]`.
///
/// # Safety
/// AVX2 and FMA; `a` holds `kc·6` floats, `b` holds `kc·16`; `c + i·rsc + j` is writable for
/// `i < rows ≤ 6`, `j < cols ≤ 16`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)] // index loops over const bounds unroll into registers
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, rsc: usize, rows: usize, cols: usize, up: Update) {
    // SAFETY (whole body): offsets stay within the ranges the caller vouched for.
    unsafe {
        // The C tile is read only after the k loop, by which time these have arrived: six rows
        // a row stride apart defeat the hardware prefetchers, and on a large C each would be a
        // miss to memory.
        for i in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rsc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rsc + cols - 1) as *const i8);
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
        if rows == MR && cols == NR {
            let alpha = _mm256_set1_ps(up.alpha);
            for i in 0..MR {
                let dst = c.add(i * rsc);
                for h in 0..2 {
                    let v = if up.alpha == 1.0 { acc[i][h] } else { _mm256_mul_ps(alpha, acc[i][h]) };
                    let out = match up.beta {
                        None => _mm256_add_ps(_mm256_loadu_ps(dst.add(8 * h)), v),
                        Some(beta) => {
                            if beta == 0.0 {
                                v
                            } else {
                                _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(dst.add(8 * h)), v)
                            }
                        }
                    };
                    _mm256_storeu_ps(dst.add(8 * h), out);
                }
            }
        } else {
            let mut tmp = [0.0f32; MR * NR];
            for i in 0..MR {
                _mm256_storeu_ps(tmp.as_mut_ptr().add(i * NR), acc[i][0]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(i * NR + 8), acc[i][1]);
            }
            for i in 0..rows {
                let dst = c.add(i * rsc);
                for j in 0..cols {
                    *dst.add(j) = up.apply(tmp[i * NR + j], *dst.add(j));
                }
            }
        }
    }
}

/// A buffer of f32 aligned to 32 bytes, reused across blocks.
#[derive(Default)]
pub(crate) struct Aligned {
    raw: Vec<__m256>,
}

impl Aligned {
    /// A zeroed-or-stale slice of at least `n` floats, 32-byte aligned.
    fn get(&mut self, n: usize) -> *mut f32 {
        let vecs = n.div_ceil(8);
        if self.raw.len() < vecs {
            // SAFETY: __m256 is plain data; all-zero bits are a valid value.
            self.raw.resize(vecs, unsafe { _mm256_setzero_ps() });
        }
        self.raw.as_mut_ptr().cast()
    }
}

/// Packs rows `i0..i0+mc` and columns `p0..p0+kc` of `a` into 6-row micro-panels
/// (`dst[r·kc·6 + k·6 + i]`), zero past the last row.
///
/// # Safety
/// `dst` holds `ceil(mc/6)·6·kc` floats; the block lies inside `a`.
unsafe fn pack_a(a: &Mat<'_, f32>, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut f32) {
    let src = a.data.as_ptr();
    // SAFETY: indices are within the block the caller vouched for.
    unsafe {
        for r in 0..mc.div_ceil(MR) {
            let panel = dst.add(r * kc * MR);
            let rows = (mc - r * MR).min(MR);
            let base = src.add((i0 + r * MR) * a.rs + p0 * a.cs);
            if a.cs == 1 {
                for i in 0..rows {
                    let row = base.add(i * a.rs);
                    for k in 0..kc {
                        *panel.add(k * MR + i) = *row.add(k);
                    }
                }
            } else {
                for k in 0..kc {
                    let col = base.add(k * a.cs);
                    for i in 0..rows {
                        *panel.add(k * MR + i) = *col.add(i * a.rs);
                    }
                }
            }
            for k in 0..kc {
                for i in rows..MR {
                    *panel.add(k * MR + i) = 0.0;
                }
            }
        }
    }
}

/// Packs rows `p0..p0+kc` and columns `j0..j0+nc` of `b` into 16-column micro-panels
/// (`dst[q·kc·16 + k·16 + j]`), zero past the last column.
///
/// # Safety
/// `dst` holds `ceil(nc/16)·16·kc` floats; the block lies inside `b`.
unsafe fn pack_b(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut f32) {
    let src = b.data.as_ptr();
    // SAFETY: indices are within the block the caller vouched for.
    unsafe {
        for q in 0..nc.div_ceil(NR) {
            let panel = dst.add(q * kc * NR);
            let cols = (nc - q * NR).min(NR);
            let base = src.add(p0 * b.rs + (j0 + q * NR) * b.cs);
            for k in 0..kc {
                let row = base.add(k * b.rs);
                let out = panel.add(k * NR);
                if b.cs == 1 {
                    std::ptr::copy_nonoverlapping(row, out, cols);
                } else {
                    for j in 0..cols {
                        *out.add(j) = *row.add(j * b.cs);
                    }
                }
                for j in cols..NR {
                    *out.add(j) = 0.0;
                }
            }
        }
    }
}

/// Per-thread packing buffers.
#[derive(Default)]
pub(crate) struct Workspace {
    a: Aligned,
    b: Aligned,
}

/// `C[rows, cols] = alpha·A·B + beta·C` over rows `r0..r1` of `C` and its 16-column panels
/// `q0..q1`, on the calling thread.
///
/// # Safety
/// AVX2 and FMA. `a: [M, K]` and `b: [K, N]` agree in `K`; `c + i·rsc + j` is writable and
/// touched by no one else for `i` in `r0..r1` and `j` in the panels' columns (`< N`).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_block(
    ws: &mut Workspace,
    alpha: f32,
    a: &Mat<'_, f32>,
    b: Rhs<'_>,
    beta: f32,
    c: *mut f32,
    rsc: usize,
    (r0, r1): (usize, usize),
    (q0, q1): (usize, usize),
) {
    let (k, n) = (b.k(), b.n());
    if r0 >= r1 || q0 >= q1 {
        return;
    }
    if k == 0 {
        // No products: C = beta·C.
        // SAFETY: the block of C is the caller's.
        unsafe {
            for i in r0..r1 {
                for j in q0 * NR..(q1 * NR).min(n) {
                    let p = c.add(i * rsc + j);
                    *p = if beta == 0.0 { 0.0 } else { beta * *p };
                }
            }
        }
        return;
    }
    let nc_panels = NC / NR;
    let mut jq = q0;
    while jq < q1 {
        let jq1 = (jq + nc_panels).min(q1);
        let (j0, j1) = (jq * NR, (jq1 * NR).min(n));
        let mut p0 = 0;
        while p0 < k {
            let kc = KC.min(k - p0);
            let up = Update { alpha, beta: (p0 == 0).then_some(beta) };
            // The B micro-panels of this block: base pointer and stride between panels.
            let (bbase, bstride) = match b {
                // SAFETY: the panel slice lies inside the packed data (p0 + kc ≤ K).
                Rhs::Packed(w) => (unsafe { w.data.as_ptr().add(jq * NR * k + p0 * NR) }, NR * k),
                Rhs::Strided(bm) => {
                    let buf = ws.b.get((jq1 - jq) * NR * kc);
                    // SAFETY: the buffer holds the block; the block lies inside B.
                    unsafe { pack_b(&bm, p0, kc, j0, j1 - j0, buf) };
                    (buf as *const f32, NR * kc)
                }
            };
            let mut i0 = r0;
            while i0 < r1 {
                let mc = MC.min(r1 - i0);
                let abuf = ws.a.get(mc.div_ceil(MR) * MR * kc);
                // SAFETY: as above; rows i0..i0+mc and columns p0..p0+kc lie inside A.
                unsafe { pack_a(a, i0, mc, p0, kc, abuf) };
                for q in jq..jq1 {
                    let cols = (n - q * NR).min(NR);
                    // SAFETY: panel q of the block, inside the packed buffer or weight.
                    let bp = unsafe { bbase.add((q - jq) * bstride) };
                    for r in 0..mc.div_ceil(MR) {
                        let rows = (mc - r * MR).min(MR);
                        // SAFETY: micro-panel r of the packed A; C's tile at (i0 + 6r, 16q) is
                        // inside the caller's block.
                        unsafe {
                            tile(kc, abuf.add(r * MR * kc), bp, c.add((i0 + r * MR) * rsc + q * NR), rsc, rows, cols, up);
                        }
                    }
                }
                i0 += mc;
            }
            p0 += kc;
        }
        jq = jq1;
    }
}
