//! The ISA-neutral half of the CPU backend's SGEMM: the BLIS loop nest, the packing of `A` and
//! `B`, and the skinny driver, generic over an ISA's register tiles ([`BlockTile`], [`SkinnyTile`]:
//! `isa/avx2/sgemm.rs` + `isa/avx2/sgemm_skinny.rs`, and the same files under `isa/avx512/`
//! and `isa/neon/`).
//!
//! AVX2 and NEON use the same `MR × NR` = 6×16 tile, AVX-512 an 8×48 one ([`BlockTile::ROWS`]
//! rows, [`BlockTile::PANELS`] panels); all read the same packed weights (`gemm/packed.rs`:
//! panels of 16 columns, k-major), so one packing serves every ISA.
//!
//! Blocked path, loops outermost first: `jc` over blocks of `NC` columns, `pc` over blocks of
//! `KC` of the inner dimension, `ic` over blocks of `MC` rows (`A` packed into micro-panels of
//! the tile's rows, which stay in L2, or read in place where the tile can), then every group of
//! micro-panels of `B` a tile spans against every micro-panel of `A`. `B` is either packed
//! here per `(jc, pc)` block or is a [`PackedWeight`], whose `KC` slice of one panel is
//! contiguous, so the per-call packing of the weights disappears.
//!
//! Skinny path (fewer than 6 rows, packed `B`): tiles of `R` rows × `NP` panels streaming the
//! packed panels over the full `K`, one dot product per element in `k` order.
//!
//! Every element of `C` is the same sum in the same order whatever the block of rows or
//! columns a thread is given: on the blocked path one k-ordered FMA chain per `KC` block, the
//! blocks added in `k` order; on the skinny path one chain over all of `k`. The path is chosen
//! from the whole product's `M` (in `gemm/mod.rs`), never from a thread's share, and a tile
//! applies `alpha` and `beta` with the same instructions whether it is full or at an edge. So
//! splitting `C` across threads by rows or by panels never changes a bit.

use super::packed::{Half, LineBuf, PackedWeight, NR};
use super::Out;
use crate::backend::host::Mat;
use std::cell::RefCell;

/// Rows of the AVX2 and NEON register tiles (AVX-512's has [`BlockTile::ROWS`] = 8); a product
/// with fewer rows against a packed weight takes the skinny path, whatever the ISA.
pub(crate) const MR: usize = 6;

/// The right-hand operand.
#[derive(Clone, Copy)]
pub(crate) enum Rhs<'a> {
    /// `B[k, n]` as a strided view, packed per block.
    Strided(Mat<'a, f32>),
    /// `B[k, n]` as a strided view, rounded to bf16 and packed in pairs of rows per block
    /// (`pack_b_pairs`), for the bf16 dot-product tiles (which round `A` too).
    StridedPairs(Mat<'a, f32>),
    /// `B = W^T` packed once (see `gemm/packed.rs`).
    Packed(&'a PackedWeight),
}

impl Rhs<'_> {
    pub(crate) fn k(&self) -> usize {
        match self {
            Rhs::Strided(b) | Rhs::StridedPairs(b) => b.rows,
            Rhs::Packed(w) => w.k,
        }
    }
    pub(crate) fn n(&self) -> usize {
        match self {
            Rhs::Strided(b) | Rhs::StridedPairs(b) => b.cols,
            Rhs::Packed(w) => w.n,
        }
    }
}

/// What a blocked tile does with the `C` it finds: the first `KC` block applies `beta`, later
/// ones add.
#[derive(Clone, Copy)]
pub(crate) struct Update {
    pub alpha: f32,
    /// `Some(beta)` on the first block, `None` (accumulate) after.
    pub beta: Option<f32>,
}

/// The product the blocked path computes: `C = alpha·A·B + beta·C`.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub alpha: f32,
    pub a: Mat<'a, f32>,
    pub b: Rhs<'a>,
    pub beta: f32,
}

/// The rows of `A` a tile reads: `A[i, kk]` at `ptr + i·rs + kk·cs` (a packed micro-panel of
/// `r` rows is `rs = 1`, `cs = r`).
#[derive(Clone, Copy)]
pub(crate) struct ATile {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// Adjacent 16-column panels of `B` a tile reads, `stride` floats apart.
#[derive(Clone, Copy)]
pub(crate) struct Panels {
    pub ptr: *const f32,
    /// Read by the tiles that span several panels (AVX-512).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub stride: usize,
    /// From one row of a panel to the next: [`NR`] in a packed panel; `B`'s row stride where
    /// the tile reads `B` in place ([`BlockTile::DIRECT_B`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub rs: usize,
}

/// Adjacent 16-column panels of 16-bit values (`format`), `stride` values apart, in rows or
/// (for the `VDPBF16PS` tiles) in pairs of rows, as the packed weight they point into says.
#[derive(Clone, Copy)]
pub(crate) struct Panels16 {
    pub ptr: *const u16,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub stride: usize,
    /// Read by the tiles that load 16-bit panels themselves (x86-64's).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub format: Half,
}

/// The tile of `C` a tile writes: `rows × cols` valid elements, `(i, j)` at `ptr + i·rs + j`.
#[derive(Clone, Copy)]
pub(crate) struct CTile {
    pub ptr: *mut f32,
    pub rs: usize,
    pub rows: usize,
    pub cols: usize,
}

/// An ISA's 6×16 register tile and blocking, for the blocked path ([`gemm_block`]).
pub(crate) trait BlockTile {
    /// Inner-dimension block: a 16-column micro-panel of `B` is `KC·64` bytes (32 KiB at 512,
    /// L1-sized; AVX-512's three panels, 96 KiB, stream from L2 while the `A` micro-panel stays
    /// in L1). 512 measured faster than 384, 256 and 192 on the large products here
    /// (`examples/gemm_bench.rs`, packed `B`).
    const KC: usize = 512;
    /// Row block (a multiple of [`Self::ROWS`]): the packed `A` block is `MC·KC·4` bytes, to
    /// stay in L2.
    const MC: usize;
    /// Rows of the register tile, and of a packed micro-panel of `A`.
    const ROWS: usize = MR;
    /// Column block (a multiple of [`NR`]) for `B` packed per call: bounds that packing (2 MiB
    /// at 1024 × `KC`).
    const NC: usize = 1024;

    /// The 6×16 tile: `C[rows, cols] ⊕= alpha·Σ_k a[k·6 + i]·b[k·16 + j]` as `up` says. An
    /// edge tile (`rows < 6` or `cols < 16`) must give each element the bits a full tile would.
    ///
    /// # Safety
    /// The ISA is available; `a` holds `kc·6` floats, `b` holds `kc·16`; `c` is writable for
    /// its `rows ≤ 6` rows and `cols ≤ 16` columns.
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update);

    /// Panels of `B` one register tile spans: 1 (6×16) for AVX2 and NEON, 3 (8×48) for
    /// AVX-512, whose 32 registers hold 24 accumulators of 16 lanes.
    const PANELS: usize = 1;

    /// Whether [`Self::tile_panels`] reads `A` in place (any row stride, unit column stride)
    /// as well as packed; the loop nest then skips packing `A` when it meets few panels of `B`.
    const DIRECT_A: bool = false;

    /// Whether [`Self::tile_panels`] reads `B` in place as well as packed: rows [`Panels::rs`]
    /// apart (unit column stride), no value past the tile's `c.cols` columns read (a packed
    /// panel is zero there; `B` in place may end there). The loop nest then reads a strided
    /// `B` in place for the products of few rows ([`DIRECT_B_ROWS`]), whose packing is not
    /// amortised.
    const DIRECT_B: bool = false;

    /// The tile over up to [`Self::PANELS`] adjacent panels, `c.cols ≤ PANELS·16` valid
    /// columns (the panels past the last valid column are not read), with `A` as `a` says: a
    /// packed micro-panel is `(p, 1, 6)`, and only a tile with [`Self::DIRECT_A`] is given
    /// anything else. Same contract as [`Self::tile`] otherwise; every element gets the bits it
    /// gets in a full tile, whichever way `A` comes.
    ///
    /// # Safety
    /// As [`Self::tile`], with `a` readable for `i < rows`, `kk < kc`, and panel `p` of `b`
    /// holding `kc·16` floats for `p < ceil(cols/16)` (with `b.rs ≠ 16`, only a tile with
    /// [`Self::DIRECT_B`]: the values `b.ptr + p·b.stride + kk·b.rs + j` for `j` below the
    /// panel's valid columns).
    unsafe fn tile_panels(kc: usize, a: ATile, b: Panels, c: CTile, up: Update) {
        debug_assert_eq!((a.rs, a.cs), (1, Self::ROWS), "A must be packed");
        debug_assert_eq!(b.rs, NR, "B must be packed");
        // SAFETY: with one panel per tile and a packed A the contracts are the same.
        unsafe { Self::tile(kc, a.ptr, b.ptr, c, up) }
    }

    /// Whether this ISA has `VDPBF16PS` tiles ([`Self::tile_dot`]) on this CPU.
    fn dot_bf16() -> bool {
        false
    }

    /// Whether the `tile_dot` loop runs each micro-panel of `A` against all the panel groups of
    /// a block (rows outer), rather than each group against all micro-panels (columns outer,
    /// as the f32 tiles).
    const DOT_ROWS_OUTER: bool = false;

    /// Makes the calling thread ready for [`Self::tile_dot`] (AMX: loads the tile
    /// configuration); the driver calls it before a block's first `tile_dot` and
    /// [`Self::dot_end`] after its last.
    ///
    /// # Safety
    /// The ISA is available, and [`Self::dot_bf16`].
    unsafe fn dot_begin() {}

    /// Undoes [`Self::dot_begin`] (AMX: releases the tiles).
    ///
    /// # Safety
    /// As [`Self::dot_begin`], on the thread that called it.
    unsafe fn dot_end() {}

    /// Packs a block of `A` rounded to bf16 pairs for [`Self::tile_dot`] (the layout of
    /// `pack_a_pairs`, which is the default). Only called where [`Self::dot_bf16`]; an ISA with
    /// a conversion instruction overrides it, giving the bits the tiles read the same way
    /// (a value the tiles treat as zero may be packed as zero).
    ///
    /// # Safety
    /// As `pack_a_pairs`.
    unsafe fn pack_a_dot(a: &Mat<'_, f32>, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut u32, mr: usize) {
        // SAFETY: the caller's contract.
        unsafe { pack_a_pairs(a, i0, mc, p0, kc, dst, mr) }
    }

    /// Packs `B`'s block into f32 micro-panels, as [`pack_b`] (the default), which an ISA may
    /// do faster: a transposed `B` (unit row stride), whose panel rows are columns of its
    /// storage, by register transposes.
    ///
    /// # Safety
    /// As [`pack_b`].
    unsafe fn pack_b_f32(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { pack_b(b, p0, kc, j0, nc, dst) }
    }

    /// Packs a block of a strided `B` (an activation: a weight gradient's layer input or
    /// hidden state) rounded to bf16 in pairs of rows for [`Self::tile_dot`] (the layout of
    /// `pack_b_pairs`, which is the default); overridden as [`Self::pack_a_dot`] is.
    ///
    /// # Safety
    /// As `pack_b_pairs`.
    unsafe fn pack_b_dot(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut u16) {
        // SAFETY: the caller's contract.
        unsafe { pack_b_pairs(b, p0, kc, j0, nc, dst) }
    }

    /// `C[rows, cols] ⊕= alpha·Σ_kp a_kp·b_kp` as `up` says, with `VDPBF16PS`: `a` a packed
    /// micro-panel of [`Self::ROWS`] rows of bf16 pairs (`a[i·kcp + kp]`, see `pack_a_pairs`),
    /// `b` up to [`Self::PANELS`] panels in pairs of rows (`kcp·32` values each, `b.stride`
    /// apart). Only called where [`Self::dot_bf16`], which only a tile overriding this method
    /// may report.
    ///
    /// # Safety
    /// As [`Self::tile_panels`], with `a` holding `kcp·ROWS` words and the panels holding the
    /// valid columns.
    unsafe fn tile_dot(kcp: usize, a: *const u32, b: Panels16, c: CTile, up: Update) {
        let _ = (kcp, a, b, c, up);
        unreachable!("tile_dot is only called where dot_bf16(), and every such tile overrides it")
    }

    /// Whether [`Self::tile_panels16`] reads 16-bit panels itself (widening them as it loads
    /// them); otherwise [`gemm_block`] widens each group of panels into its workspace and
    /// calls [`Self::tile_panels`].
    const LOADS_16: bool = false;

    /// [`Self::tile_panels`] on 16-bit panels: the bits it gives on the widened panels. Only
    /// called where [`Self::LOADS_16`], which only a tile overriding this method may set.
    ///
    /// # Safety
    /// As [`Self::tile_panels`], with `b`'s panels holding `kc·16` values each.
    unsafe fn tile_panels16(kc: usize, a: ATile, b: Panels16, c: CTile, up: Update) {
        let _ = (kc, a, b, c, up);
        unreachable!("tile_panels16 is only called where LOADS_16, and every such tile overrides it")
    }
}

/// An ISA's skinny tiles, for the few-row path ([`gemm_panels`]).
pub(crate) trait SkinnyTile {
    /// Whether one panel row is one register (AVX-512): the driver then gives each tile twice
    /// the panels (4×2, 2×4, 1×8), so that as many accumulators are in flight as with two
    /// registers per panel row (4×1, 2×2, 1×4).
    const WIDE: bool = false;

    /// `R` rows of `a` against `NP` packed panels of `k` rows, `c.cols ≤ NP·16` valid output
    /// columns, `c = alpha·acc + beta·c` (`c` not read when `beta = 0`), each element one dot
    /// product in `k` order. An edge tile (`cols < NP·16`) must give each element the bits a
    /// full one would.
    ///
    /// # Safety
    /// The ISA is available; `a` readable for `r < R`, `kk < k`; `b` holds `NP` panels of
    /// `k·16` floats at stride `k·16`; `c` writable for `R` rows and its valid columns.
    unsafe fn skinny<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const f32, c: CTile, ab: (f32, f32));

    /// Whether this ISA has `VDPBF16PS` tiles ([`Self::skinny_dot`]) on this CPU.
    fn dot_bf16() -> bool {
        false
    }

    /// [`Self::skinny`] with `VDPBF16PS`: `R` rows of bf16 pairs (`a[r·kp + q]`) against `NP`
    /// panels in pairs of rows (`kp·32` values each, `kp·32` apart), `c = alpha·acc + beta·c`.
    /// Only called where [`Self::dot_bf16`], which only a tile overriding this method may report.
    ///
    /// # Safety
    /// As [`Self::skinny`], with `a` holding `R·kp` words.
    unsafe fn skinny_dot<const R: usize, const NP: usize>(a: *const u32, kp: usize, b: *const u16, c: CTile, ab: (f32, f32)) {
        let _ = (a, kp, b, c, ab);
        unreachable!("skinny_dot is only called where dot_bf16(), and every such tile overrides it")
    }

    /// Whether [`Self::skinny16`] reads 16-bit panels itself (widening them as it loads them);
    /// otherwise [`gemm_panels`] widens a part's panels into its workspace and calls
    /// [`Self::skinny`].
    const LOADS_16: bool = false;

    /// [`Self::skinny`] with `B`'s panels in 16 bits of `format` (`b` holds `NP` panels of
    /// `k·16` values at stride `k·16`): the bits [`Self::skinny`] gives on the widened panels.
    /// Only called where [`Self::LOADS_16`], which only a tile overriding this method may set.
    ///
    /// # Safety
    /// As [`Self::skinny`].
    unsafe fn skinny16<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const u16, format: Half, c: CTile, ab: (f32, f32)) {
        let _ = (a, k, b, format, c, ab);
        unreachable!("skinny16 is only called where LOADS_16, and every such tile overrides it")
    }
}

/// Per-thread packing buffers.
#[derive(Default)]
pub(crate) struct Workspace {
    a: LineBuf<f32>,
    b: LineBuf<f32>,
}

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Runs `f` with this thread's packing buffers.
pub(crate) fn with_workspace<R>(f: impl FnOnce(&mut Workspace) -> R) -> R {
    WORKSPACE.with_borrow_mut(f)
}

/// Packs rows `i0..i0+mc` and columns `p0..p0+kc` of `a` into `mr`-row micro-panels
/// (`dst[r·kc·mr + k·mr + i]`), zero past the last row.
///
/// # Safety
/// `dst` holds `ceil(mc/mr)·mr·kc` floats; the block lies inside `a`.
unsafe fn pack_a(a: &Mat<'_, f32>, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut f32, mr: usize) {
    let src = a.data.as_ptr();
    // SAFETY: indices are within the block the caller vouched for.
    unsafe {
        for r in 0..mc.div_ceil(mr) {
            let panel = dst.add(r * kc * mr);
            let rows = (mc - r * mr).min(mr);
            let base = src.add((i0 + r * mr) * a.rs + p0 * a.cs);
            if a.cs == 1 {
                for i in 0..rows {
                    let row = base.add(i * a.rs);
                    for k in 0..kc {
                        *panel.add(k * mr + i) = *row.add(k);
                    }
                }
            } else if a.rs == 1 && rows == mr {
                // A transposed: each k's rows are a contiguous run, copied with a constant
                // length where the tile height is one of the ISAs' (a call to `memmove` per
                // run otherwise).
                for k in 0..kc {
                    let (col, out) = (base.add(k * a.cs), panel.add(k * mr));
                    match mr {
                        8 => std::ptr::copy_nonoverlapping(col, out, 8),
                        6 => std::ptr::copy_nonoverlapping(col, out, 6),
                        _ => std::ptr::copy_nonoverlapping(col, out, mr),
                    }
                }
            } else {
                for k in 0..kc {
                    let col = base.add(k * a.cs);
                    for i in 0..rows {
                        *panel.add(k * mr + i) = *col.add(i * a.rs);
                    }
                }
            }
            for k in 0..kc {
                for i in rows..mr {
                    *panel.add(k * mr + i) = 0.0;
                }
            }
        }
    }
}

/// The bits of `v` rounded to bf16, to nearest even (a NaN quieted, its sign kept): `half`'s
/// `bf16::from_f32`, branch-free but for the NaN test, so that packing loops vectorise.
#[inline(always)]
pub(crate) fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16;
    let nan = (b >> 16) | 0x40;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

/// Packs rows `i0..i0+mc` and columns `p0..p0+kc` of `a` rounded to bf16 (to nearest even),
/// in pairs of columns, into `mr`-row micro-panels of rows of pairs (`dst[r·mr·kcp + i·kcp + kp]`,
/// the pair `(A[i, 2kp], A[i, 2kp + 1])` as the low and high halves of a 32-bit word, as
/// `VDPBF16PS` reads them; `kcp = ceil(kc/2)`), zero past the last row and column. Each row
/// is written in order, a loop the compiler vectorises.
///
/// # Safety
/// `dst` holds `ceil(mc/mr)·mr·kcp` words; the block lies inside `a`.
pub(crate) unsafe fn pack_a_pairs(a: &Mat<'_, f32>, i0: usize, mc: usize, p0: usize, kc: usize, dst: *mut u32, mr: usize) {
    let kcp = kc.div_ceil(2);
    let bf = bf16_bits;
    // SAFETY: indices are within the block the caller vouched for.
    unsafe {
        if a.rs == 1 && a.cs != 1 {
            // A transposed view (a weight gradient's `gᵀ`): pair by pair, each of its two
            // columns of A one contiguous run.
            for r in 0..mc.div_ceil(mr) {
                let (panel, rows) = (dst.add(r * kcp * mr), (mc - r * mr).min(mr));
                for kp in 0..kcp {
                    let c0 = a.data.as_ptr().add(i0 + r * mr + (p0 + 2 * kp) * a.cs);
                    let second = 2 * kp + 1 < kc;
                    for i in 0..mr {
                        let v = if i >= rows {
                            0
                        } else if second {
                            bf(*c0.add(i)) | bf(*c0.add(a.cs + i)) << 16
                        } else {
                            bf(*c0.add(i))
                        };
                        *panel.add(i * kcp + kp) = v;
                    }
                }
            }
            return;
        }
        for r in 0..mc.div_ceil(mr) {
            let panel = dst.add(r * kcp * mr);
            for i in 0..mr {
                let row = i0 + r * mr + i;
                let out = std::slice::from_raw_parts_mut(panel.add(i * kcp), kcp);
                if row >= i0 + mc {
                    out.fill(0);
                    continue;
                }
                let src = a.data.as_ptr().add(row * a.rs + p0 * a.cs);
                let whole = kc / 2;
                if a.cs == 1 {
                    let s = std::slice::from_raw_parts(src, 2 * whole);
                    for (o, pair) in out[..whole].iter_mut().zip(s.chunks_exact(2)) {
                        *o = bf(pair[0]) | bf(pair[1]) << 16;
                    }
                } else {
                    for (kp, o) in out[..whole].iter_mut().enumerate() {
                        *o = bf(*src.add(2 * kp * a.cs)) | bf(*src.add((2 * kp + 1) * a.cs)) << 16;
                    }
                }
                if kc % 2 == 1 {
                    out[whole] = bf(*src.add((kc - 1) * a.cs));
                }
            }
        }
    }
}

/// Packs rows `p0..p0+kc` and columns `j0..j0+nc` of `b` rounded to bf16 (to nearest even)
/// into 16-column panels in pairs of rows, the layout of a weight packed in pairs
/// (`dst[q·kcp·32 + kp·32 + 2j + h] = B[p0 + 2kp + h, j0 + 16q + j]`, `kcp = ceil(kc/2)`), zero
/// past the last row and column.
///
/// # Safety
/// `dst` holds `ceil(nc/16)·kcp·32` values; the block lies inside `b`.
pub(crate) unsafe fn pack_b_pairs(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut u16) {
    let kcp = kc.div_ceil(2);
    // SAFETY: indices are within the block the caller vouched for.
    unsafe {
        let panels = std::slice::from_raw_parts_mut(dst, nc.div_ceil(NR) * kcp * 2 * NR);
        for (q, panel) in panels.chunks_exact_mut(kcp * 2 * NR).enumerate() {
            let cols = (nc - q * NR).min(NR);
            for (kp, pair) in panel.chunks_exact_mut(2 * NR).enumerate() {
                pair.fill(0);
                for h in 0..2.min(kc - 2 * kp) {
                    let src = b.data.as_ptr().add((p0 + 2 * kp + h) * b.rs + (j0 + q * NR) * b.cs);
                    for j in 0..cols {
                        pair[2 * j + h] = bf16_bits(*src.add(j * b.cs)) as u16;
                    }
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
pub(crate) unsafe fn pack_b(b: &Mat<'_, f32>, p0: usize, kc: usize, j0: usize, nc: usize, dst: *mut f32) {
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
                if b.cs == 1 && cols == NR {
                    // A whole panel row: a copy of constant length, which the compiler makes
                    // a few vector moves (a call to `memmove` per 64 bytes otherwise).
                    std::ptr::copy_nonoverlapping(row, out, NR);
                    continue;
                } else if b.cs == 1 {
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

/// Up to how many rows of `C` a call of [`gemm_block`] reads a strided `B` in place (where
/// the tiles can, [`BlockTile::DIRECT_B`]) instead of packing it: the per-sequence products of
/// attention (a few dozen query steps against a sequence's keys), whose packing each thread
/// repeated for a handful of register tiles (6 % of an attention training step's samples on a
/// Zen 4, `examples/attention_bench.rs`), and its weight gradients' products of 256 rows per
/// thread (`gemm_bench 512 3200 512 {1,2} 20 1`: in place 1–7 % faster). Past it `B` stays
/// packed: in place measured no faster on `3200 512 512`, and the larger products were not
/// measured in place.
pub(crate) const DIRECT_B_ROWS: usize = 256;

/// The `B` panels of a block of [`gemm_block`]: f32 (packed, or in place with its row
/// stride), or 16-bit ones the tiles widen.
#[derive(Clone, Copy)]
enum BlockB {
    F32(*const f32),
    Direct(*const f32, usize),
    Half(Panels16),
}

impl BlockB {
    /// Panel `q` of the block, panels `stride` values apart.
    ///
    /// # Safety
    /// The panel lies inside the buffer.
    unsafe fn panel(self, q: usize, stride: usize) -> BlockB {
        // SAFETY: the caller's contract.
        unsafe {
            match self {
                BlockB::F32(p) => BlockB::F32(p.add(q * stride)),
                BlockB::Direct(p, rs) => BlockB::Direct(p.add(q * NR), rs),
                BlockB::Half(h) => BlockB::Half(Panels16 { ptr: h.ptr.add(q * stride), ..h }),
            }
        }
    }
}

/// `C = alpha·A·B + beta·C` over rows `r0..r1` of `C` and its 16-column panels `q0..q1`, on
/// the calling thread, with `K`'s tiles.
///
/// # Safety
/// `K`'s ISA is available. `p.a: [M, K]` and `p.b: [K, N]` agree in `K`; `C`'s elements
/// `(i, j)` are writable and touched by no one else for `i` in `r0..r1` and `j` in the panels'
/// columns (`< N`).
pub(crate) unsafe fn gemm_block<K: BlockTile>(
    ws: &mut Workspace,
    p: &Product<'_>,
    c: Out,
    (r0, r1): (usize, usize),
    (q0, q1): (usize, usize),
) {
    let Product { alpha, a, b, beta } = *p;
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
                    let e = c.at(i, j);
                    *e = if beta == 0.0 { 0.0 } else { beta * *e };
                }
            }
        }
        return;
    }
    // 16-bit weight panels: in pairs of rows, read by the `VDPBF16PS` tiles where the ISA has
    // them (with `A` rounded to bf16 pairs); else widened per group of panels here where the
    // tiles cannot read them (pairs, or an ISA without 16-bit loads), or by the tiles' loads.
    let half = match b {
        Rhs::Packed(w) => w.half.as_ref(),
        Rhs::Strided(_) | Rhs::StridedPairs(_) => None,
    };
    let dot = (half.is_some_and(|h| h.pairs) || matches!(b, Rhs::StridedPairs(_))) && K::dot_bf16();
    let widen_groups = half.is_some_and(|h| h.pairs || !K::LOADS_16) && !dot;
    if dot {
        // SAFETY: K's ISA per this function's contract, and dot_bf16; dot_end below.
        unsafe { K::dot_begin() };
    }
    let nc_panels = K::NC / NR;
    let mut jq = q0;
    while jq < q1 {
        let jq1 = (jq + nc_panels).min(q1);
        let (j0, j1) = (jq * NR, (jq1 * NR).min(n));
        let mut p0 = 0;
        while p0 < k {
            let kc = K::KC.min(k - p0);
            let up = Update { alpha, beta: (p0 == 0).then_some(beta) };
            // The B micro-panels of this block: base pointer and stride between panels.
            let (bbase, bstride) = match b {
                // SAFETY: the panel slice lies inside the packed data (p0 + kc ≤ K).
                Rhs::Packed(PackedWeight { half: None, data, .. }) => {
                    (BlockB::F32(unsafe { data.as_ptr().add(jq * NR * k + p0 * NR) }), NR * k)
                }
                Rhs::Packed(PackedWeight { half: Some(h), .. }) => {
                    // SAFETY: as the f32 panels, in 16-bit values (pairs: `KC` is even, so p0
                    // starts a pair).
                    let (len, at) = (h.panel_len(k), if h.pairs { p0 / 2 * 2 * NR } else { p0 * NR });
                    let ptr = unsafe { h.bits.as_ptr().add(jq * len + at) };
                    (BlockB::Half(Panels16 { ptr, stride: len, format: h.format }), len)
                }
                Rhs::StridedPairs(bm) if dot => {
                    let len = kc.div_ceil(2) * 2 * NR;
                    let buf = ws.b.at_least(((jq1 - jq) * len).div_ceil(2)).cast::<u16>();
                    // SAFETY: the buffer holds the block's panels (two values per float); the
                    // block lies inside B.
                    unsafe { K::pack_b_dot(&bm, p0, kc, j0, j1 - j0, buf) };
                    (BlockB::Half(Panels16 { ptr: buf, stride: len, format: Half::Bf16 }), len)
                }
                Rhs::Strided(bm) if K::DIRECT_B && bm.cs == 1 && r1 - r0 <= DIRECT_B_ROWS => {
                    // SAFETY: row p0, column j0 lies inside B.
                    (BlockB::Direct(unsafe { bm.data.as_ptr().add(p0 * bm.rs + j0) }, bm.rs), NR)
                }
                Rhs::Strided(bm) | Rhs::StridedPairs(bm) => {
                    let buf = ws.b.at_least((jq1 - jq) * NR * kc);
                    // SAFETY: the buffer holds the block; the block lies inside B.
                    unsafe { K::pack_b_f32(&bm, p0, kc, j0, j1 - j0, buf) };
                    (BlockB::F32(buf as *const f32), NR * kc)
                }
            };
            let mut i0 = r0;
            while i0 < r1 {
                let mc = K::MC.min(r1 - i0);
                // `A` in place where the tile can read it so (measured faster with
                // `examples/gemm_bench.rs` on packed weights, from the per-step products of a
                // batch to the large input projections). Packing costs a copy of A per column
                // block, which the per-step products of a batch (the threads splitting columns,
                // each packing all of A) never amortise.
                let direct = K::DIRECT_A && a.cs == 1 && !dot;
                let kcp = kc.div_ceil(2);
                let abuf = if dot {
                    let abuf = ws.a.at_least(mc.div_ceil(K::ROWS) * K::ROWS * kcp);
                    // SAFETY: as below, the buffer holding the pairs of this block of A.
                    unsafe { K::pack_a_dot(&a, i0, mc, p0, kc, abuf.cast(), K::ROWS) };
                    abuf as *const f32
                } else if direct {
                    // SAFETY: row i0, column p0 lies inside A.
                    unsafe { a.data.as_ptr().add(i0 * a.rs + p0) }
                } else {
                    let abuf = ws.a.at_least(mc.div_ceil(K::ROWS) * K::ROWS * kc);
                    // SAFETY: as above; rows i0..i0+mc and columns p0..p0+kc lie inside A.
                    unsafe { pack_a(&a, i0, mc, p0, kc, abuf, K::ROWS) };
                    abuf as *const f32
                };
                // Micro-panel r of A: its first element and strides.
                let a_tile = |r: usize| {
                    if direct {
                        // SAFETY: row i0 + ROWS·r lies inside A (r < ceil(mc/ROWS)).
                        ATile { ptr: unsafe { abuf.add(r * K::ROWS * a.rs) }, rs: a.rs, cs: 1 }
                    } else {
                        // SAFETY: micro-panel r of the packed buffer.
                        ATile { ptr: unsafe { abuf.add(r * K::ROWS * kc) }, rs: 1, cs: K::ROWS }
                    }
                };
                if dot && K::DOT_ROWS_OUTER {
                    // Each micro-panel of A against every panel group of the block: the
                    // micro-panel stays in L1 while the groups stream from L2.
                    for r in 0..mc.div_ceil(K::ROWS) {
                        let rows = (mc - r * K::ROWS).min(K::ROWS);
                        let mut q = jq;
                        while q < jq1 {
                            let qn = (q + K::PANELS).min(jq1);
                            let cols = (n - q * NR).min((qn - q) * NR);
                            // SAFETY: as in the loop below (16-bit panels in pairs of rows).
                            unsafe {
                                if let BlockB::Half(h) = bbase.panel(q - jq, bstride) {
                                    let ct = CTile { ptr: c.at(i0 + r * K::ROWS, q * NR), rs: c.rs, rows, cols };
                                    K::tile_dot(kcp, abuf.cast::<u32>().add(r * K::ROWS * kcp), h, ct, up);
                                }
                            }
                            q = qn;
                        }
                    }
                    i0 += mc;
                    continue;
                }
                let mut q = jq;
                while q < jq1 {
                    let qn = (q + K::PANELS).min(jq1);
                    let cols = (n - q * NR).min((qn - q) * NR);
                    // SAFETY: panel q of the block, inside the packed buffer or weight.
                    let mut bp = unsafe { bbase.panel(q - jq, bstride) };
                    let mut stride = bstride;
                    if let (BlockB::Half(_), Some(h), true) = (bp, half, widen_groups) {
                        {
                            // 16-bit panels the tiles cannot read: widened into the workspace
                            // (`PANELS·KC` floats) for each block of rows. Where the tiles can,
                            // they widen as they load (measured faster on AVX-512, Zen 5, with
                            // `bench --dtype bf16` on lstm-512-512-64-100 inference: 67–70 ms,
                            // against 80 ms widening each group here and 80–86 ms widening a
                            // whole `NC × KC` block once per block of columns).
                            let len = (qn - q) * kc * NR;
                            let buf = ws.b.at_least(len);
                            // SAFETY: the buffer holds `len` floats and no one else uses it (a
                            // packed B never uses it otherwise).
                            let dst = unsafe { std::slice::from_raw_parts_mut(buf, len) };
                            for (p, out) in dst.chunks_exact_mut(kc * NR).enumerate() {
                                h.widen_rows(k, q + p, p0, out);
                            }
                            bp = BlockB::F32(buf);
                            stride = kc * NR;
                        }
                    }
                    for r in 0..mc.div_ceil(K::ROWS) {
                        let rows = (mc - r * K::ROWS).min(K::ROWS);
                        // SAFETY: micro-panel r of A; panels q..qn of B, `bstride` apart; C's
                        // tile at (i0 + ROWS·r, 16q) is inside the caller's block; the ISA per
                        // this function's contract.
                        unsafe {
                            let ct = CTile { ptr: c.at(i0 + r * K::ROWS, q * NR), rs: c.rs, rows, cols };
                            match bp {
                                BlockB::F32(ptr) => K::tile_panels(kc, a_tile(r), Panels { ptr, stride, rs: NR }, ct, up),
                                BlockB::Direct(ptr, rs) => K::tile_panels(kc, a_tile(r), Panels { ptr, stride, rs }, ct, up),
                                BlockB::Half(h) if dot => K::tile_dot(kcp, abuf.cast::<u32>().add(r * K::ROWS * kcp), h, ct, up),
                                BlockB::Half(h) => K::tile_panels16(kc, a_tile(r), h, ct, up),
                            }
                        }
                    }
                    q = qn;
                }
                i0 += mc;
            }
            p0 += kc;
        }
        jq = jq1;
    }
    if dot {
        // SAFETY: after this thread's dot_begin above.
        unsafe { K::dot_end() };
    }
}

/// Where [`gemm_panels`] reads panel `p` of `B`: at `(p - first)·k·16` values from `ptr`.
#[derive(Clone, Copy)]
enum PanelSource {
    F32 {
        ptr: *const f32,
        first: usize,
    },
    Half {
        ptr: *const u16,
        format: Half,
    },
    /// Panels in pairs of rows (`ceil(k/2)·32` values each) and the rows of `a` as bf16 pairs.
    Pairs {
        a: *const u32,
        ptr: *const u16,
    },
}

/// `C = alpha·a·B + beta·C` for the few rows of `a` (fewer than [`MR`]) and the output
/// columns of panels `p0..p1` of the packed `B`, with `K`'s skinny tiles: 4 rows × 1 panel,
/// 2 × 2, or 1 × 4, so that every tile has as many accumulators in flight. 16-bit panels are
/// read by the tiles themselves where they can ([`SkinnyTile::LOADS_16`]), else widened into
/// the workspace first (this part's panels, once per call).
///
/// # Safety
/// `K`'s ISA is available; `C`'s elements `(i, j)` for `j` in the panels' columns are writable
/// and touched by no one else; `a.cols == w.k`, `p1 ≤ ceil(w.n / 16)`.
pub(crate) unsafe fn gemm_panels<K: SkinnyTile>(a: &Mat<'_, f32>, w: &PackedWeight, c: Out, (p0, p1): (usize, usize), ab: (f32, f32)) {
    let k = a.cols;
    match &w.half {
        // SAFETY (each arm): this function's contract; the source holds panels p0..p1.
        None => unsafe { panels_from::<K>(a, w.n, PanelSource::F32 { ptr: w.data.as_ptr(), first: 0 }, c, (p0, p1), ab) },
        Some(h) if h.pairs && K::dot_bf16() => with_workspace(|ws| {
            // The rows of `a` rounded to bf16 pairs (`pack_a_pairs` with one-row panels).
            let kp = k.div_ceil(2);
            let apairs = ws.a.at_least(a.rows * kp).cast::<u32>();
            // SAFETY: the buffer holds rows·kp words; rows and columns lie inside `a`; the
            // panels p0..p1 lie inside the packed weight; the ISA per the contract.
            unsafe {
                pack_a_pairs(a, 0, a.rows, 0, k, apairs, 1);
                // pack_a_pairs with mr = 1 stores row r at r·kp (`r·mr·kcp + 0·kcp + kp`).
                panels_from::<K>(a, w.n, PanelSource::Pairs { a: apairs, ptr: h.bits.as_ptr() }, c, (p0, p1), ab)
            }
        }),
        Some(h) if K::LOADS_16 && !h.pairs => unsafe {
            panels_from::<K>(a, w.n, PanelSource::Half { ptr: h.bits.as_ptr(), format: h.format }, c, (p0, p1), ab)
        },
        Some(h) => with_workspace(|ws| {
            let len = (p1 - p0) * NR * k;
            let buf = ws.b.at_least(len);
            // SAFETY: the buffer holds `len` floats, and no one else uses it.
            let dst = unsafe { std::slice::from_raw_parts_mut(buf, len) };
            for (p, out) in (p0..p1).zip(dst.chunks_exact_mut(NR * k)) {
                h.widen_rows(k, p, 0, out);
            }
            // SAFETY: as above, with panels p0..p1 widened at `buf`.
            unsafe { panels_from::<K>(a, w.n, PanelSource::F32 { ptr: buf, first: p0 }, c, (p0, p1), ab) }
        }),
    }
}

/// [`gemm_panels`] with `B`'s panels read from `src`.
///
/// # Safety
/// As [`gemm_panels`], with `src` holding panels `p0..p1` of `B` (`n` columns, `a.cols` rows).
unsafe fn panels_from<K: SkinnyTile>(a: &Mat<'_, f32>, n: usize, src: PanelSource, c: Out, (p0, p1): (usize, usize), ab: (f32, f32)) {
    let (m, k) = (a.rows, a.cols);
    let col_end = |p: usize| (p * NR).min(n);
    // SAFETY: offsets stay inside `a` (rows < m, k), the panels of `src` (p0..p1) and the
    // caller's output block; the ISA per this function's contract.
    unsafe {
        let mut r = 0;
        while r < m {
            let left = m - r;
            let arow = ATile { ptr: a.data.as_ptr().add(r * a.rs), rs: a.rs, cs: a.cs };
            let ct = |p: usize, rows: usize, cols: usize| CTile { ptr: c.at(r, p * NR), rs: c.rs, rows, cols };
            let mut p = p0;
            // The tile of R rows × NP panels from panel q, `cols` valid columns.
            macro_rules! tile {
                ($r:literal, $np:literal, $q:expr, $cols:expr) => {
                    match src {
                        PanelSource::F32 { ptr, first } => {
                            K::skinny::<$r, $np>(arow, k, ptr.add(($q - first) * NR * k), ct($q, $r, $cols), ab)
                        }
                        PanelSource::Half { ptr, format } => {
                            K::skinny16::<$r, $np>(arow, k, ptr.add($q * NR * k), format, ct($q, $r, $cols), ab)
                        }
                        PanelSource::Pairs { a: pa, ptr } => {
                            let kp = k.div_ceil(2);
                            K::skinny_dot::<$r, $np>(pa.add(r * kp), kp, ptr.add($q * kp * 2 * NR), ct($q, $r, $cols), ab)
                        }
                    }
                };
            }
            // Each call covers up to NP panels; the last, partial group goes through the same
            // tile with fewer valid columns (an edge tile gives every element a full tile's bits).
            macro_rules! run {
                ($r:literal, $np:literal) => {{
                    while p < p1 {
                        let pe = (p + $np).min(p1);
                        if pe - p == $np {
                            tile!($r, $np, p, col_end(pe) - p * NR);
                        } else {
                            for q in p..pe {
                                tile!($r, 1, q, col_end(q + 1) - q * NR);
                            }
                        }
                        p = pe;
                    }
                    r += $r;
                }};
            }
            match (left, K::WIDE) {
                (4.., false) => run!(4, 1),
                (2..=3, false) => run!(2, 2),
                (_, false) => run!(1, 4),
                (4.., true) => run!(4, 2),
                (2..=3, true) => run!(2, 4),
                (_, true) => run!(1, 8),
            }
        }
    }
}

#[cfg(test)]
mod bf16_bits_tests {
    /// `bf16_bits` is `half`'s rounding for every 2^16-th f32 bit pattern and around every bf16
    /// midpoint (both signs), NaN and the infinities included.
    #[test]
    #[cfg_attr(miri, ignore = "a million cases")]
    fn matches_half() {
        let check = |b: u32| {
            let v = f32::from_bits(b);
            assert_eq!(super::bf16_bits(v), half::bf16::from_f32(v).to_bits() as u32, "{b:#x}");
        };
        for hi in 0..=0xffffu32 {
            for lo in [0, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                check(hi << 16 | lo);
            }
        }
    }
}
