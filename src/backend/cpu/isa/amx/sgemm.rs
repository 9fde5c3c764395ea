//! AMX register tiles of the blocked SGEMM for bf16 plans (the loop nest and packing are
//! ISA-neutral, in `gemm/sgemm.rs`): a 32×32 block of `C` in four tile registers (`tmm0..3`,
//! 16×16 f32 each), `A` as two 16-row tiles of 16 bf16 pairs (`tmm4`, `tmm5`, read in place
//! from the packed micro-panel, `kcp·4` bytes per row), `B` as two tiles of 16 pairs of rows
//! of one panel (`tmm6`, `tmm7`, 64 bytes per pair of rows, the layout the packed weight
//! already has). Per 32 values of `k`: four tile loads and four `TDPBF16PS`, each 16·16·32
//! products. A last chunk of fewer than 16 pairs is copied into zero-padded tiles (zeros add
//! nothing). `C` goes through a 32×32 buffer into AVX-512's epilogue, so alpha, beta and the
//! edge masks are the `VDPBF16PS` tile's. Every element is one chain of `TDPBF16PS` over the
//! chunks in `k` order, whatever the thread count.
//!
//! The tile configuration (palette 1, eight 16×64-byte tiles) is loaded once per block of the
//! driver ([`BlockTile::dot_begin`], `LDTILECFG` zeroes the tiles) and released after it
//! ([`BlockTile::dot_end`], `TILERELEASE`), so another user of the tiles on this thread (a
//! library with tiles of other shapes) finds them released, not reconfigured under it.

use super::Amx;
use crate::backend::cpu::gemm::packed::NR;
use crate::backend::cpu::gemm::sgemm::{ATile, BlockTile, CTile, Panels, Panels16, SkinnyTile, Update};
use crate::backend::cpu::isa::avx512::sgemm::{pack_a_pairs_cvt, pack_b_pairs_cvt, store_tile};
use crate::backend::cpu::isa::Avx512;
use crate::backend::host::Mat;
use core::arch::asm;
use core::arch::x86_64::*;

/// Rows of the tile (two 16-row tile registers).
const MR: usize = 32;
/// Pairs of `k` per tile register (64 bytes of bf16 pairs).
const PAIRS: usize = 16;
/// How many chunks ahead the `B` tiles are prefetched.
const PREFETCH_CHUNKS: usize = 4;

/// `LDTILECFG`'s 64-byte operand: palette 1, tiles 0–7 of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = TileConfig(config());

const fn config() -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    c
}

/// One chunk of 16 pairs: `tmm0 += A0·B0`, `tmm1 += A0·B1`, `tmm2 += A1·B0`, `tmm3 += A1·B1`
/// for the `RT` row tiles and `NP` panels in use.
///
/// # Safety
/// The tiles are configured; `a0` (and `a1` where `RT = 2`) hold 16 rows of 16 pairs,
/// `astride` bytes apart; `b0` (and `b1` where `NP = 2`) hold 16 pairs of rows of 64 bytes.
#[inline(always)]
unsafe fn chunk<const RT: usize, const NP: usize>(a0: *const u32, a1: *const u32, astride: usize, b0: *const u16, b1: *const u16) {
    // SAFETY: the caller's contract; the tile registers are not the compiler's.
    unsafe {
        asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) a0, s = in(reg) astride, options(nostack, readonly));
        asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) b0, s = in(reg) 64usize, options(nostack, readonly));
        asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
        if NP == 2 {
            asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) b1, s = in(reg) 64usize, options(nostack, readonly));
            asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
        }
        if RT == 2 {
            asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) a1, s = in(reg) astride, options(nostack, readonly));
            asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
            if NP == 2 {
                asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
            }
        }
    }
}

/// The `(16·RT) × (16·NP)` block with `TDPBF16PS`: `a` the packed micro-panel of 32 rows of
/// bf16 pairs (`a[i·kcp + kp]`, zero past the last row), `NP` panels in pairs of rows.
///
/// # Safety
/// AMX-TILE, AMX-BF16 and AVX-512F, the tiles configured by [`BlockTile::dot_begin`]; as
/// [`BlockTile::tile_dot`].
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::needless_range_loop)] // index loops over const bounds unroll into registers
unsafe fn tile_dot_amx<const RT: usize, const NP: usize>(kcp: usize, a: *const u32, b: Panels16, c: CTile, up: Update) {
    let astride = kcp * 4;
    // SAFETY (whole body): offsets stay within the micro-panel (32 rows of kcp pairs) and the
    // NP panels the caller vouched for; the buffers are this function's.
    unsafe {
        let (b0, b1) = (b.ptr, b.ptr.add(if NP == 2 { b.stride } else { 0 }));
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        let full = kcp / PAIRS;
        for ch in 0..full {
            let (ao, bo) = (ch * PAIRS, ch * PAIRS * 2 * NR);
            if ch + PREFETCH_CHUNKS < full {
                let ahead = bo + PREFETCH_CHUNKS * PAIRS * 2 * NR;
                for l in 0..PAIRS * 2 * NR * 2 / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(b0.add(ahead + l * 32).cast());
                    if NP == 2 {
                        _mm_prefetch::<_MM_HINT_T0>(b1.add(ahead + l * 32).cast());
                    }
                }
            }
            chunk::<RT, NP>(a.add(ao), a.add(PAIRS * kcp + ao), astride, b0.add(bo), b1.add(bo));
        }
        let tail = kcp % PAIRS;
        if tail > 0 {
            // The last pairs, zero-padded to full tiles.
            let mut ta = Aligned([0u32; MR * PAIRS]);
            let mut tb = Aligned([0u16; 2 * PAIRS * 2 * NR]);
            for r in 0..PAIRS * RT {
                for q in 0..tail {
                    ta.0[r * PAIRS + q] = *a.add(r * kcp + full * PAIRS + q);
                }
            }
            for (p, bp) in [b0, b1].into_iter().take(NP).enumerate() {
                let src = std::slice::from_raw_parts(bp.add(full * PAIRS * 2 * NR), tail * 2 * NR);
                tb.0[p * PAIRS * 2 * NR..][..tail * 2 * NR].copy_from_slice(src);
            }
            let (ta, tb) = (ta.0.as_ptr(), tb.0.as_ptr());
            chunk::<RT, NP>(ta, ta.add(PAIRS * PAIRS), PAIRS * 4, tb, tb.add(PAIRS * 2 * NR));
        }
        // C's 32×32 block, row-major (128 bytes per row), then the AVX-512 epilogue per 8 rows.
        let mut out = Aligned([0f32; MR * 2 * NR]);
        let (o, os) = (out.0.as_mut_ptr(), 2 * NR * 4);
        asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) o, s = in(reg) os, options(nostack));
        if NP == 2 {
            asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) o.add(NR), s = in(reg) os, options(nostack));
        }
        if RT == 2 {
            asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) o.add(16 * 2 * NR), s = in(reg) os, options(nostack));
            if NP == 2 {
                asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) o.add(16 * 2 * NR + NR), s = in(reg) os, options(nostack));
            }
        }
        for g in 0..c.rows.div_ceil(8) {
            let mut acc = [[_mm512_setzero_ps(); 2]; 8];
            for i in 0..8 {
                for p in 0..NP {
                    acc[i][p] = _mm512_load_ps(out.0.as_ptr().add((8 * g + i) * 2 * NR + p * NR));
                }
            }
            let rows = (c.rows - 8 * g).min(8);
            store_tile::<2>(&acc, CTile { ptr: c.ptr.add(8 * g * c.rs), rows, ..c }, up);
        }
    }
}

#[repr(C, align(64))]
struct Aligned<T>(T);

/// The 8-row AVX-512 tiles over the 32 rows of an Amx micro-panel (the f32 and f16 products,
/// which the Amx token leaves to AVX-512; here so the trait is whole).
///
/// # Safety
/// As the AVX-512 tile `f`, for each 8-row part of `a` and `c`.
unsafe fn by_eight(a: ATile, c: CTile, f: impl Fn(ATile, CTile)) {
    for g in 0..c.rows.div_ceil(8) {
        // SAFETY: rows 8g.. of the micro-panel and of C (g < ceil(rows/8)).
        let (ap, cp) = unsafe { (a.ptr.add(8 * g * a.rs), c.ptr.add(8 * g * c.rs)) };
        f(ATile { ptr: ap, ..a }, CTile { ptr: cp, rows: (c.rows - 8 * g).min(8), ..c });
    }
}

impl BlockTile for Amx {
    /// The packed `A` block of a bf16 product is `MC·KC·2` bytes, 128 KiB.
    const MC: usize = 128;
    const PANELS: usize = 2;
    const ROWS: usize = MR;
    const DIRECT_A: bool = true;
    const LOADS_16: bool = true;
    const DOT_ROWS_OUTER: bool = true;

    /// # Safety
    /// AVX-512F; as [`BlockTile::tile`] with 32-row micro-panels.
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update) {
        // SAFETY: the caller's contract, on each 8-row part.
        unsafe {
            by_eight(ATile { ptr: a, rs: 1, cs: MR }, c, |a, c| Avx512::tile_panels(kc, a, Panels { ptr: b, stride: 0, rs: NR }, c, up))
        }
    }

    /// # Safety
    /// AVX-512F; as [`BlockTile::tile_panels`].
    unsafe fn tile_panels(kc: usize, a: ATile, b: Panels, c: CTile, up: Update) {
        // SAFETY: as in tile.
        unsafe { by_eight(a, c, |a, c| Avx512::tile_panels(kc, a, b, c, up)) }
    }

    fn dot_bf16() -> bool {
        true
    }

    /// # Safety
    /// As [`BlockTile::pack_a_dot`]; the token proves AVX-512BW and AVX512_BF16.
    unsafe fn pack_a_dot(a: &Mat<'_, f32>, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut u32, mr: usize) {
        // SAFETY: the caller's contract.
        unsafe { pack_a_pairs_cvt(a, i0, mc, p0, kc, dst, mr) }
    }

    /// # Safety
    /// As [`BlockTile::pack_b_dot`]; the token proves AVX-512BW and AVX512_BF16.
    unsafe fn pack_b_dot(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut u16) {
        // SAFETY: the caller's contract.
        unsafe { pack_b_pairs_cvt(b, p0, kc, j0, nc, dst) }
    }

    unsafe fn dot_begin() {
        // SAFETY: the token proves AMX-TILE and the permission (this method's contract).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) }
    }

    unsafe fn dot_end() {
        // SAFETY: as in dot_begin.
        unsafe { asm!("tilerelease", options(nostack, nomem)) }
    }

    /// # Safety
    /// As [`BlockTile::tile_dot`], between [`BlockTile::dot_begin`] and [`BlockTile::dot_end`].
    unsafe fn tile_dot(kcp: usize, a: *const u32, b: Panels16, c: CTile, up: Update) {
        // SAFETY: the caller's contract; only the row tiles and panels holding valid rows and
        // columns are read.
        unsafe {
            match (c.rows > 16, c.cols > NR) {
                (false, false) => tile_dot_amx::<1, 1>(kcp, a, b, c, up),
                (false, true) => tile_dot_amx::<1, 2>(kcp, a, b, c, up),
                (true, false) => tile_dot_amx::<2, 1>(kcp, a, b, c, up),
                (true, true) => tile_dot_amx::<2, 2>(kcp, a, b, c, up),
            }
        }
    }

    /// # Safety
    /// AVX-512F; as [`BlockTile::tile_panels16`].
    unsafe fn tile_panels16(kc: usize, a: ATile, b: Panels16, c: CTile, up: Update) {
        // SAFETY: as in tile.
        unsafe { by_eight(a, c, |a, c| Avx512::tile_panels16(kc, a, b, c, up)) }
    }
}

/// The few-row products are AVX-512's (`VDPBF16PS` for bf16 pairs): a 16-row tile would
/// compute mostly zero rows and stream the same weight bytes.
impl SkinnyTile for Amx {
    const WIDE: bool = <Avx512 as SkinnyTile>::WIDE;
    const LOADS_16: bool = <Avx512 as SkinnyTile>::LOADS_16;

    unsafe fn skinny<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const f32, c: CTile, ab: (f32, f32)) {
        // SAFETY: the token holds AVX-512's; the contract is the same.
        unsafe { Avx512::skinny::<R, NP>(a, k, b, c, ab) }
    }

    fn dot_bf16() -> bool {
        true
    }

    unsafe fn skinny_dot<const R: usize, const NP: usize>(a: *const u32, kp: usize, b: *const u16, c: CTile, ab: (f32, f32)) {
        // SAFETY: as in skinny; the token proves AVX512_BF16.
        unsafe { Avx512::skinny_dot::<R, NP>(a, kp, b, c, ab) }
    }

    unsafe fn skinny16<const R: usize, const NP: usize>(
        a: ATile,
        k: usize,
        b: *const u16,
        format: crate::backend::cpu::gemm::packed::Half,
        c: CTile,
        ab: (f32, f32),
    ) {
        // SAFETY: as in skinny.
        unsafe { Avx512::skinny16::<R, NP>(a, k, b, format, c, ab) }
    }
}
