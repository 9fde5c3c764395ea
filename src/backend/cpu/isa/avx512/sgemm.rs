//! AVX-512 register tiles of the blocked SGEMM (the loop nest, packing and split are
//! ISA-neutral, in `gemm/sgemm.rs`): an 8×48 tile over three 16-column panels of the same packed
//! `B` the AVX2 and NEON tiles read, 24 accumulators of 16 lanes, three loads of `B` and eight
//! broadcasts of `A` per 24 FMAs. Eight rows (the AVX2 tile has 6) waste no row of the batches
//! of 8, 16, 32, 64 rows that recurrent steps have. Edge columns are loaded and stored under a
//! lane mask, so every element goes through the same instructions in a full tile and at an edge.

use super::Avx512;
use crate::backend::cpu::gemm::packed::{Half, NR};
use crate::backend::cpu::gemm::sgemm::{pack_a_pairs, pack_b, pack_b_pairs, ATile, BlockTile, CTile, Panels, Panels16, Update};
use crate::backend::host::Mat;
use core::arch::x86_64::*;

/// Rows of the tile.
const MR: usize = 8;

/// The mask of the first `n` (≤ 16) lanes.
#[inline(always)]
pub(super) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// How a tile loads 16 values of a panel row into one register: f32 as they are, f16 and bf16
/// widened exactly (so a tile gives the same bits on 16-bit panels as on their widened copy).
pub(super) trait PanelLoad {
    type E;
    /// # Safety
    /// AVX-512F; `p` holds 16 values.
    unsafe fn load(p: *const Self::E) -> __m512;

    /// Whether the rows are read from `B` in place ([`F32InPlace`]: rows any stride apart,
    /// ending at the tile's valid columns) rather than from a packed panel (rows 16 apart,
    /// zero past the last column).
    const IN_PLACE: bool = false;

    /// The lanes of `m` (the low ones), zero elsewhere, reading only those; a packed panel's
    /// row is read whole (it holds 16 values, zero past the valid ones).
    ///
    /// # Safety
    /// AVX-512F; `p` holds the lanes of `m` (16 values unless [`Self::IN_PLACE`]).
    #[inline(always)]
    unsafe fn load_cols(p: *const Self::E, m: __mmask16) -> __m512 {
        let _ = m;
        // SAFETY: the caller's contract.
        unsafe { Self::load(p) }
    }
}

pub(super) struct F32Row;
pub(super) struct F16Row;
pub(super) struct Bf16Row;

impl PanelLoad for F32Row {
    type E = f32;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe { _mm512_loadu_ps(p) }
    }
}

/// f32 rows of `B` in place ([`BlockTile::DIRECT_B`]), each load masked to the tile's valid
/// columns: the last panel of a row may end the buffer.
pub(super) struct F32InPlace;

impl PanelLoad for F32InPlace {
    type E = f32;
    const IN_PLACE: bool = true;

    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller's contract (16 values).
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_cols(p: *const f32, m: __mmask16) -> __m512 {
        // SAFETY: the caller's contract; masked lanes are not accessed.
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }
}

impl PanelLoad for F16Row {
    type E = u16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        // SAFETY: the caller's contract (16 values of 16 bits).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

impl PanelLoad for Bf16Row {
    type E = u16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        // SAFETY: the caller's contract. A bf16 value is the high half of its f32.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
    }
}

/// The `8 × (NP·16)` tile, `NP ≤ 3` panels (a packed micro-panel of `A`: `rs = 1`, `cs = 8`;
/// rows of `A` in place: `rs` = its row stride, `cs = 1`). Rows past `c.rows` are not read
/// (their accumulators repeat the last row's and are not stored). `B` in place
/// ([`PanelLoad::IN_PLACE`]): the panels' rows `brs` apart, each load masked to the tile's
/// valid columns; else packed panels (rows 16 apart, `brs` not read).
///
/// # Safety
/// AVX-512F; as [`BlockTile::tile_panels`], with `NP` panels of `b` (of `L`'s element type),
/// `bstride` elements apart.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn tile_np<L: PanelLoad, const NP: usize>(
    kc: usize,
    a: ATile,
    (b, bstride, brs): (*const L::E, usize, usize),
    c: CTile,
    up: Update,
) {
    let CTile { ptr: c, rs: rsc, rows, cols } = c;
    let ATile { ptr: a, rs: rsa, cs: csa } = a;
    // SAFETY (whole body): offsets stay within the ranges the caller vouched for; masked lanes
    // are not accessed.
    unsafe {
        for i in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rsc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * rsc + cols - 1) as *const i8);
        }
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        let mut bp = [b; NP];
        for p in 0..NP {
            bp[p] = b.add(p * bstride);
        }
        let mut arow = [a; MR];
        for i in 0..MR {
            arow[i] = a.add(i.min(rows - 1) * rsa);
        }
        let mut mask = [0xffff as __mmask16; NP];
        for p in 0..NP {
            mask[p] = lanes(cols.saturating_sub(p * NR));
        }
        for kk in 0..kc {
            let mut bv = [_mm512_setzero_ps(); NP];
            for p in 0..NP {
                bv[p] = if L::IN_PLACE { L::load_cols(bp[p].add(kk * brs), mask[p]) } else { L::load(bp[p].add(kk * NR)) };
            }
            for i in 0..MR {
                let av = _mm512_set1_ps(*arow[i].add(kk * csa));
                for p in 0..NP {
                    acc[i][p] = _mm512_fmadd_ps(av, bv[p], acc[i][p]);
                }
            }
        }
        store_tile(&in_memory(&acc), CTile { ptr: c, rs: rsc, rows, cols }, up);
    }
}

/// The accumulators copied into an array that is written once, after the k loop: with the
/// loop's array handed to [`store_tile`] directly, LLVM zeroed its memory copy (1.5 KiB, a call
/// to `memset`) at every tile, as well as the registers, before the loop.
#[inline(always)]
fn in_memory<const NP: usize>(acc: &[[__m512; NP]; MR]) -> [[__m512; NP]; MR] {
    let mut out = std::mem::MaybeUninit::<[[__m512; NP]; MR]>::uninit();
    let p = out.as_mut_ptr().cast::<__m512>();
    for (i, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            // SAFETY: `i·NP + j` < MR·NP, the array's length in vectors.
            unsafe { p.add(i * NP + j).write(*v) };
        }
    }
    // SAFETY: every element was written above.
    unsafe { out.assume_init() }
}

/// `C ⊕= alpha·acc` as `up` says, for the tile's valid rows and columns (masked lanes are not
/// accessed). Rows past `rows` and panels past `cols` are skipped, not broken out of: loops of
/// a constant trip count unroll fully, which keeps the accumulators in registers.
///
/// # Safety
/// AVX-512F (inlined into the tiles that enable it); `c` writable for its rows and columns.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
pub(in crate::backend::cpu::isa) unsafe fn store_tile<const NP: usize>(acc: &[[__m512; NP]; MR], c: CTile, up: Update) {
    let CTile { ptr: c, rs: rsc, rows, cols } = c;
    // SAFETY: the caller's contract.
    unsafe {
        let alpha = _mm512_set1_ps(up.alpha);
        for i in 0..MR {
            for p in 0..NP {
                let m = lanes(cols.saturating_sub(p * NR));
                if i >= rows || m == 0 {
                    continue;
                }
                let at = c.add(i * rsc + p * NR);
                let v = if up.alpha == 1.0 { acc[i][p] } else { _mm512_mul_ps(alpha, acc[i][p]) };
                let out = match up.beta {
                    None => _mm512_add_ps(_mm512_maskz_loadu_ps(m, at), v),
                    Some(0.0) => v, // also -0.0: a float pattern compares with ==
                    Some(beta) => _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, at), v),
                };
                _mm512_mask_storeu_ps(at, m, out);
            }
        }
    }
}

/// The `8 × (NP·16)` tile with `VDPBF16PS`: `a` a packed micro-panel of rows of bf16 pairs
/// (`a[i·kcp + kp]`), `NP` panels in pairs of rows, `bstride` values apart; per pair of rows
/// three 64-byte loads, eight broadcasts and 24 instructions of two products per lane each
/// (twice the f32 tile's products per instruction).
///
/// # Safety
/// AVX-512F and AVX512_BF16; as [`BlockTile::tile_dot`].
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn tile_dot_np<const NP: usize>(kcp: usize, a: *const u32, (b, bstride): (*const u16, usize), c: CTile, up: Update) {
    // SAFETY (whole body): offsets stay within the ranges the caller vouched for.
    unsafe {
        for i in 0..c.rows {
            _mm_prefetch::<_MM_HINT_T0>(c.ptr.add(i * c.rs) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.ptr.add(i * c.rs + c.cols - 1) as *const i8);
        }
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        for kp in 0..kcp {
            let mut bv = [pairs(_mm512_setzero_si512()); NP];
            for p in 0..NP {
                bv[p] = pairs(_mm512_loadu_si512(b.add(p * bstride + kp * 2 * NR).cast()));
            }
            for i in 0..MR {
                let av = pairs(_mm512_set1_epi32(*a.add(i * kcp + kp) as i32));
                for p in 0..NP {
                    acc[i][p] = _mm512_dpbf16_ps(acc[i][p], av, bv[p]);
                }
            }
        }
        store_tile(&in_memory(&acc), c, up);
    }
}

/// `pack_a_pairs` with `VCVTNE2PS2BF16`: 32 values of a row per instruction, rounded to
/// nearest even as `pack_a_pairs` rounds them but for f32 subnormals, which the instruction
/// flushes to zero (the `VDPBF16PS` and `TDPBF16PS` products treat a bf16 subnormal as zero,
/// so the products are the same). Rows not contiguous in `a` take the portable packing.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX512_BF16; as `pack_a_pairs`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(in crate::backend::cpu::isa) unsafe fn pack_a_pairs_cvt(
    a: &Mat<'_, f32>,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    dst: *mut u32,
    mr: usize,
) {
    // SAFETY (whole body): rows i0..i0+mc and columns p0..p0+kc lie inside `a`, `dst` holds
    // ceil(mc/mr)·mr rows of kcp words (the caller's contract); masked lanes are not accessed.
    unsafe {
        if a.rs == 1 && a.cs != 1 && a.cs <= GATHER_MAX_STRIDE {
            return pack_a_pairs_cvt_t(a, i0, mc, p0, kc, dst, mr);
        }
        if a.cs != 1 {
            return pack_a_pairs(a, i0, mc, p0, kc, dst, mr);
        }
        let kcp = kc.div_ceil(2);
        for i in 0..mc.div_ceil(mr) * mr {
            let out = dst.add(i * kcp);
            if i >= mc {
                std::ptr::write_bytes(out, 0, kcp);
                continue;
            }
            let (src, out) = (a.data.as_ptr().add((i0 + i) * a.rs + p0), out.cast::<u16>());
            let mut k = 0;
            while k + 32 <= kc {
                let v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src.add(k + 16)), _mm512_loadu_ps(src.add(k)));
                _mm512_storeu_si512(out.add(k).cast(), std::mem::transmute::<__m512bh, __m512i>(v));
                k += 32;
            }
            if k < kc {
                // The last values, and a zero high half where kc is odd (masked loads give zeros).
                let (rem, words) = (kc - k, 2 * kcp - k);
                let lo = _mm512_maskz_loadu_ps(lanes(rem), src.add(k));
                let hi = _mm512_maskz_loadu_ps(lanes(rem.saturating_sub(16)), src.add(k + 16));
                let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi16(out.add(k).cast(), ((1u64 << words) - 1) as __mmask32, v);
            }
        }
    }
}

/// The largest column stride [`pack_a_pairs_cvt_t`] gathers with (its 32-bit offsets reach
/// 31 columns ahead).
const GATHER_MAX_STRIDE: usize = (i32::MAX / 32) as usize;

/// [`pack_a_pairs_cvt`] of a transposed view (`a.rs = 1`: a weight gradient's `gᵀ`, each
/// column of `A` a contiguous run): per row of a micro-panel, 16 pairs at a time, the 16 even
/// and the 16 odd columns gathered (`VGATHERDPS`), rounded by `VCVTNE2PS2BF16` and interleaved
/// into 16 words, one store per row. The scalar `pack_a_pairs` wrote one word per row of the
/// panel for each pair, 18 % of a bf16 lstm-512-512-64-100 training call (`perf`, Intel Xeon
/// with AMX). The same words as [`pack_a_pairs`] but for f32 subnormals, which become zero.
///
/// # Safety
/// As [`pack_a_pairs_cvt`], with `a.rs = 1` and `a.cs ≤` [`GATHER_MAX_STRIDE`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a_pairs_cvt_t(a: &Mat<'_, f32>, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut u32, mr: usize) {
    // SAFETY (whole body): every gathered or loaded lane is inside the block (rows i0..i0+mc,
    // columns p0..p0+kc, the caller's contract: masked lanes are not accessed); every store is
    // inside `dst`'s ceil(mc/mr)·mr rows of kcp words.
    unsafe {
        let kcp = kc.div_ceil(2);
        let cs = a.cs as i32;
        // Lane j reads column 2j (even) or 2j + 1 (odd) of the 16 pairs.
        let even = _mm512_mullo_epi32(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), _mm512_set1_epi32(cs));
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(cs));
        let zip = _mm512_loadu_si512(ZIP.as_ptr().cast());
        // Per micro-panel and 16 pairs, its rows in turn: the 32 columns of A they read (32
        // runs of `mr` floats) stay in L1 from one row to the next.
        for r in 0..mc.div_ceil(mr) {
            let rows = (mc - r * mr).min(mr);
            for i in rows..mr {
                std::ptr::write_bytes(dst.add((r * mr + i) * kcp), 0, kcp);
            }
            let mut kp = 0;
            while kp < kcp {
                let n = (kcp - kp).min(16);
                // Pairs kp..kp+n; the last pair's second column exists unless kc is odd.
                let pairs = lanes(n);
                let seconds = lanes((kc / 2).saturating_sub(kp).min(16));
                for i in 0..rows {
                    let at = a.data.as_ptr().add(i0 + r * mr + i + (p0 + 2 * kp) * a.cs);
                    let lo = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), pairs, even, at.cast());
                    let hi = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), seconds, odd, at.cast());
                    let words = _mm512_permutexvar_epi16(zip, std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
                    _mm512_mask_storeu_epi32(dst.add((r * mr + i) * kcp + kp).cast(), pairs, words);
                }
                kp += 16;
            }
        }
    }
}

/// `pack_b_pairs` with `VCVTNE2PS2BF16` where the rows of `B` are contiguous (`b.cs = 1`):
/// per panel and pair of rows, 16 values of each row loaded (under a lane mask at the last
/// panel), rounded and interleaved into one 64-byte store. The same values as `pack_b_pairs`
/// but for f32 subnormals, which become zero. Else `pack_b_pairs`.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX512_BF16; as `pack_b_pairs`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(in crate::backend::cpu::isa) unsafe fn pack_b_pairs_cvt(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut u16) {
    // SAFETY (whole body): rows p0..p0+kc and columns j0..j0+nc lie inside `b` (masked lanes
    // are not accessed); `dst` holds ceil(nc/16)·kcp·32 values (the caller's contract).
    unsafe {
        if b.cs != 1 {
            return pack_b_pairs(b, p0, kc, j0, nc, dst);
        }
        let kcp = kc.div_ceil(2);
        let zip = _mm512_loadu_si512(ZIP.as_ptr().cast());
        for q in 0..nc.div_ceil(NR) {
            let cols = lanes(nc - q * NR);
            let base = b.data.as_ptr().add(p0 * b.rs + j0 + q * NR);
            let panel = dst.add(q * kcp * 2 * NR);
            for kp in 0..kcp {
                let row = base.add(2 * kp * b.rs);
                let lo = _mm512_maskz_loadu_ps(cols, row);
                let hi = if 2 * kp + 1 < kc { _mm512_maskz_loadu_ps(cols, row.add(b.rs)) } else { _mm512_setzero_ps() };
                let words = _mm512_permutexvar_epi16(zip, std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
                _mm512_storeu_si512(panel.add(kp * 2 * NR).cast(), words);
            }
        }
    }
}

/// `pack_b`'s panels (`dst[q·kc·16 + k·16 + j]`, zero past the last column) of a `B` with unit
/// row stride: column `j` of the block is a contiguous run of storage, so 16 columns × 16 rows
/// are 16 loads (masked past the block's columns and rows), a 16×16 transpose in registers
/// (32-bit and 64-bit interleaves, then two rounds of 128-bit lane shuffles), and 16 stores.
/// The same values as `pack_b`'s element-by-element gather, which read 16 storage rows for
/// each panel row (3.9 % of an attention training step's samples on a Zen 4).
///
/// # Safety
/// AVX-512F; `b.rs == 1`; as `pack_b`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn pack_b_transposed(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut f32) {
    debug_assert_eq!(b.rs, 1);
    // SAFETY (whole body): every load is masked to the block's columns (`< nc`) and rows
    // (`< kc`); every store lies in panel q's `kc·16` floats.
    unsafe {
        for q in 0..nc.div_ceil(NR) {
            let cols = (nc - q * NR).min(NR);
            let panel = dst.add(q * kc * NR);
            let first = b.data.as_ptr().add(p0 + (j0 + q * NR) * b.cs);
            let mut k0 = 0;
            while k0 < kc {
                let rows = (kc - k0).min(16);
                let m = lanes(rows);
                // r[j]: column j's rows k0..k0 + 16 (zero past the block).
                let mut r = [_mm512_setzero_ps(); 16];
                for j in 0..cols {
                    r[j] = _mm512_maskz_loadu_ps(m, first.add(j * b.cs + k0));
                }
                let mut t = [_mm512_setzero_ps(); 16];
                for i in 0..8 {
                    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
                }
                // r[4i + m], 128-bit lane l: row 4l + m of columns 4i..4i + 4.
                for i in 0..4 {
                    let (lo, hi) = (_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2]));
                    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
                    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
                    let (lo, hi) = (_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3]));
                    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
                    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
                }
                // For each m, the 4×4 transpose of the 128-bit lanes of r[m], r[4 + m],
                // r[8 + m], r[12 + m]: row 4l + m of all 16 columns, for l = 0..4.
                for mm in 0..4 {
                    let p = _mm512_shuffle_f32x4::<0x88>(r[mm], r[4 + mm]);
                    let qv = _mm512_shuffle_f32x4::<0xdd>(r[mm], r[4 + mm]);
                    let rr = _mm512_shuffle_f32x4::<0x88>(r[8 + mm], r[12 + mm]);
                    let s = _mm512_shuffle_f32x4::<0xdd>(r[8 + mm], r[12 + mm]);
                    let out = [
                        _mm512_shuffle_f32x4::<0x88>(p, rr),
                        _mm512_shuffle_f32x4::<0x88>(qv, s),
                        _mm512_shuffle_f32x4::<0xdd>(p, rr),
                        _mm512_shuffle_f32x4::<0xdd>(qv, s),
                    ];
                    for l in 0..4 {
                        let k = 4 * l + mm;
                        if k < rows {
                            _mm512_storeu_ps(panel.add((k0 + k) * NR), out[l]);
                        }
                    }
                }
                k0 += 16;
            }
        }
    }
}

/// Interleaves the two halves of a `VCVTNE2PS2BF16` result: 16-bit element `2j` is element `j`
/// of the low half, `2j + 1` element `j` of the high half.
const ZIP: [u16; 32] =
    [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];

/// 32 bf16 values (16 pairs) from their bits.
#[inline(always)]
pub(super) fn pairs(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

impl BlockTile for Avx512 {
    /// The packed `A` block is 288 KiB.
    const MC: usize = 144;
    const PANELS: usize = 3;
    const ROWS: usize = MR;
    const DIRECT_A: bool = true;
    const DIRECT_B: bool = true;
    const LOADS_16: bool = true;

    /// One panel: the 8×16 tile.
    ///
    /// # Safety
    /// AVX-512F; as [`BlockTile::tile`].
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update) {
        // SAFETY: the caller's contract, with one panel.
        unsafe { tile_np::<F32Row, 1>(kc, ATile { ptr: a, rs: 1, cs: MR }, (b, 0, NR), c, up) }
    }

    /// # Safety
    /// AVX-512F; as [`BlockTile::tile_panels`].
    unsafe fn tile_panels(kc: usize, a: ATile, b: Panels, c: CTile, up: Update) {
        // SAFETY: the caller's contract; only the panels holding valid columns are read.
        unsafe {
            if b.rs == NR {
                tile_panels_with::<F32Row>(kc, a, (b.ptr, b.stride, NR), c, up)
            } else {
                tile_panels_with::<F32InPlace>(kc, a, (b.ptr, b.stride, b.rs), c, up)
            }
        }
    }

    /// AVX512_BF16, and AVX-512BW for the packing of `A` (every such CPU has it).
    fn dot_bf16() -> bool {
        std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw")
    }

    /// # Safety
    /// AVX-512F, AVX-512BW and AVX512_BF16 (the driver calls it only where
    /// [`BlockTile::dot_bf16`]); as [`BlockTile::pack_a_dot`].
    unsafe fn pack_a_dot(a: &Mat<'_, f32>, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut u32, mr: usize) {
        // SAFETY: the caller's contract.
        unsafe { pack_a_pairs_cvt(a, i0, mc, p0, kc, dst, mr) }
    }

    /// A transposed `B` (unit row stride: the products with a weight's or a sequence's
    /// transpose) by 16×16 register transposes ([`pack_b_transposed`]); else the generic copy.
    ///
    /// # Safety
    /// AVX-512F; as [`BlockTile::pack_b_f32`].
    unsafe fn pack_b_f32(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe {
            if b.rs == 1 && b.cs != 1 {
                pack_b_transposed(b, p0, kc, j0, nc, dst)
            } else {
                pack_b(b, p0, kc, j0, nc, dst)
            }
        }
    }

    /// # Safety
    /// As [`BlockTile::pack_b_dot`]; AVX-512BW and AVX512_BF16 as in `pack_a_dot`.
    unsafe fn pack_b_dot(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut u16) {
        // SAFETY: the caller's contract.
        unsafe { pack_b_pairs_cvt(b, p0, kc, j0, nc, dst) }
    }

    /// # Safety
    /// AVX-512F and AVX512_BF16 (the driver calls it only where [`BlockTile::dot_bf16`]); as
    /// [`BlockTile::tile_dot`].
    unsafe fn tile_dot(kcp: usize, a: *const u32, b: Panels16, c: CTile, up: Update) {
        // SAFETY: the caller's contract; only the panels holding valid columns are read.
        unsafe {
            match c.cols.div_ceil(NR) {
                1 => tile_dot_np::<1>(kcp, a, (b.ptr, b.stride), c, up),
                2 => tile_dot_np::<2>(kcp, a, (b.ptr, b.stride), c, up),
                _ => tile_dot_np::<3>(kcp, a, (b.ptr, b.stride), c, up),
            }
        }
    }

    /// # Safety
    /// AVX-512F; as [`BlockTile::tile_panels16`].
    unsafe fn tile_panels16(kc: usize, a: ATile, b: Panels16, c: CTile, up: Update) {
        // SAFETY: the caller's contract.
        unsafe {
            match b.format {
                Half::F16 => tile_panels_with::<F16Row>(kc, a, (b.ptr, b.stride, NR), c, up),
                Half::Bf16 => tile_panels_with::<Bf16Row>(kc, a, (b.ptr, b.stride, NR), c, up),
            }
        }
    }
}

/// The tile over the panels holding `c.cols` valid columns, loaded by `L`.
///
/// # Safety
/// AVX-512F; as [`BlockTile::tile_panels`].
unsafe fn tile_panels_with<L: PanelLoad>(kc: usize, a: ATile, b: (*const L::E, usize, usize), c: CTile, up: Update) {
    // SAFETY: the caller's contract; only the panels holding valid columns are read.
    unsafe {
        match c.cols.div_ceil(NR) {
            1 => tile_np::<L, 1>(kc, a, b, c, up),
            2 => tile_np::<L, 2>(kc, a, b, c, up),
            _ => tile_np::<L, 3>(kc, a, b, c, up),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::SplitMix64;

    /// `n` values in ±4 with NaN, the infinities, both zeros and a tie of the bf16 rounding
    /// (`0x3f80_8000`) among them.
    fn values_with_specials(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..n).map(|_| rng.uniform(-4.0, 4.0) as f32).collect();
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, f32::from_bits(0x3f80_8000)];
        for (j, &s) in specials.iter().enumerate() {
            let at = (j * 7919) % n;
            data[at] = s;
        }
        data
    }

    /// Two bf16 bit patterns that are equal, or both NaN (the scalar rounding keeps a NaN's
    /// top payload bits, the instruction need not).
    fn same_bf16(x: u16, y: u16) -> bool {
        let nan = |v: u16| v & 0x7f80 == 0x7f80 && v & 0x7f != 0;
        x == y || (nan(x) && nan(y))
    }

    /// The gathered packing of a transposed view gives `pack_a_pairs`'s words (normal values,
    /// and NaN, infinities, zeros and ties of the rounding among them), for micro-panels of 8
    /// and 32 rows, odd and even `kc`, blocks inside a larger matrix, partial last panels.
    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX-512 code here")]
    fn transposed_pairs_match_the_scalar_packing() {
        if !Avx512::dot_bf16() {
            crate::testkit::skip_isa("avx512_bf16");
            return;
        }
        let mut rng = SplitMix64::new(77);
        // (rows of A (M), columns of A (K), i0, mc, p0, kc, mr)
        let cases: [(usize, usize, usize, usize, usize, usize, usize); 5] = [
            (40, 70, 0, 40, 0, 70, 32),
            (40, 70, 3, 33, 5, 61, 32),
            (9, 100, 0, 9, 0, 33, 8),
            (64, 40, 16, 17, 1, 38, 8),
            (5, 3, 0, 5, 0, 3, 32),
        ];
        for &(m, k, i0, mc, p0, kc, mr) in &cases {
            // A [m, k] as the transpose of a [k, m] buffer with a padded row (stride m + 3).
            let stride = m + 3;
            let data = values_with_specials(&mut rng, k * stride);
            let a = Mat { data: &data, rows: m, cols: k, rs: 1, cs: stride };
            let words = mc.div_ceil(mr) * mr * kc.div_ceil(2);
            let (mut want, mut got) = (vec![0xdead_beefu32; words], vec![0xdead_beefu32; words]);
            // SAFETY: the block lies inside `a`, the buffers hold the panels; AVX-512F, BW and
            // BF16 checked above.
            unsafe {
                pack_a_pairs(&a, i0, mc, p0, kc, want.as_mut_ptr(), mr);
                pack_a_pairs_cvt(&a, i0, mc, p0, kc, got.as_mut_ptr(), mr);
            }
            for (w, (&g, &e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    same_bf16(g as u16, e as u16) && same_bf16((g >> 16) as u16, (e >> 16) as u16),
                    "case {m}x{k} i0={i0} mc={mc} p0={p0} kc={kc} mr={mr}: word {w}: {g:#010x}, want {e:#010x}"
                );
            }
        }
    }

    /// The vector packing of a strided `B` in pairs of rows gives `pack_b_pairs`'s values
    /// (normal values, NaN, infinities, zeros and a tie of the rounding among them): odd and
    /// even `kc`, partial last panels, blocks inside a wider matrix.
    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX-512 code here")]
    fn b_pairs_match_the_scalar_packing() {
        if !Avx512::dot_bf16() {
            crate::testkit::skip_isa("avx512_bf16");
            return;
        }
        let mut rng = SplitMix64::new(78);
        // (rows of B (K), columns of B (N), p0, kc, j0, nc)
        let cases: [(usize, usize, usize, usize, usize, usize); 5] =
            [(64, 48, 0, 64, 0, 48), (70, 50, 3, 61, 5, 45), (9, 17, 0, 9, 0, 17), (40, 100, 1, 38, 33, 60), (3, 5, 0, 3, 0, 5)];
        for &(k, n, p0, kc, j0, nc) in &cases {
            let rs = n + 3;
            let data = values_with_specials(&mut rng, k * rs);
            let b = Mat { data: &data, rows: k, cols: n, rs, cs: 1 };
            let len = nc.div_ceil(NR) * kc.div_ceil(2) * 2 * NR;
            let (mut want, mut got) = (vec![0xbeefu16; len], vec![0xbeefu16; len]);
            // SAFETY: the block lies inside `b`, the buffers hold its panels; AVX-512F, BW and
            // BF16 checked above.
            unsafe {
                pack_b_pairs(&b, p0, kc, j0, nc, want.as_mut_ptr());
                pack_b_pairs_cvt(&b, p0, kc, j0, nc, got.as_mut_ptr());
            }
            for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                assert!(same_bf16(g, e), "case {k}x{n} p0={p0} kc={kc} j0={j0} nc={nc}: value {i}: {g:#06x}, want {e:#06x}");
            }
        }
    }

    /// The register-transposing packing of a transposed `B` gives `pack_b`'s panels bit for
    /// bit (NaN, infinities and signed zeros among the values): `kc` below, at and past 16 and
    /// not a multiple of it, partial last panels, blocks inside a wider matrix, the block's
    /// last column the buffer's last value (so that a load past it would read past the end).
    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX-512 code here")]
    fn transposed_b_matches_the_scalar_packing() {
        if !crate::Isa::Avx512.is_supported() {
            crate::testkit::skip_isa("avx512f");
            return;
        }
        let mut rng = SplitMix64::new(79);
        // (rows of B (K), columns of B (N), p0, kc, j0, nc)
        let cases: [(usize, usize, usize, usize, usize, usize); 6] = [
            (512, 50, 0, 512, 0, 50),
            (70, 50, 3, 61, 5, 45),
            (9, 17, 0, 9, 0, 17),
            (40, 100, 1, 38, 33, 67),
            (3, 5, 0, 3, 0, 5),
            (16, 16, 0, 16, 0, 16),
        ];
        for &(k, n, p0, kc, j0, nc) in &cases {
            // B [k, n] as the transpose of an [n, k] buffer with padded rows (stride k + 3),
            // its last column ending the buffer.
            let cs = k + 3;
            let data = values_with_specials(&mut rng, (n - 1) * cs + k);
            let b = Mat { data: &data, rows: k, cols: n, rs: 1, cs };
            let len = nc.div_ceil(NR) * kc * NR;
            let (mut want, mut got) = (vec![f32::from_bits(0xdead_beef); len], vec![f32::from_bits(0xdead_beef); len]);
            // SAFETY: the block lies inside `b`, the buffers hold its panels; AVX-512F checked
            // above.
            unsafe {
                pack_b(&b, p0, kc, j0, nc, want.as_mut_ptr());
                pack_b_transposed(&b, p0, kc, j0, nc, got.as_mut_ptr());
            }
            for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "case {k}x{n} p0={p0} kc={kc} j0={j0} nc={nc}: value {i}");
            }
        }
    }
}
