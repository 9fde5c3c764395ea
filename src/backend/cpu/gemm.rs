//! The CPU backend's GEMMs, split across threads.
//!
//! - AVX2, AVX-512 and NEON: the blocked SGEMM of `sgemm.rs` (tiles in `avx2/sgemm.rs`,
//!   `avx512/sgemm.rs`, `neon/sgemm.rs`) for everything with six rows or more, against the
//!   plan's packed weights where the right-hand side is a weight; the skinny kernels
//!   (`*/sgemm_skinny.rs`) for the per-step products of fewer rows.
//! - The products of two activations (the weight gradients): the AVX-512 tiles on strided
//!   views with AVX-512, else matrixmultiply's SGEMM, which also serves every GEMM of the
//!   scalar ISA.
//!
//! `C` is split into blocks of rows (when it has many) or of columns, one per part; every
//! element of `C` is computed by the same code over the full `k` range in the same order
//! whatever the split, so results are bit-identical for any thread count.

use super::packed::PackedWeight;
use super::sgemm::{BlockTile, SkinnyTile};
use super::team::Team;
use crate::backend::host::{Mat, MatMut};

/// Below this many multiply-adds a GEMM runs on the calling thread: splitting costs more
/// than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 15;

/// How a call runs its parallel parts.
#[derive(Clone, Copy)]
pub(crate) enum Par<'t> {
    /// On the calling thread only.
    Serial,
    /// On a team of threads spinning for the duration of the call (see `team.rs`).
    Team(&'t Team),
}

impl Par<'_> {
    pub(crate) fn parts(&self) -> usize {
        match self {
            Par::Serial => 1,
            Par::Team(t) => t.parts(),
        }
    }

    /// Runs `f(0..parts)`, `parts ≤ self.parts()`.
    pub(crate) fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        match self {
            Par::Team(t) if parts > 1 => t.run(&|i| {
                if i < parts {
                    f(i)
                }
            }),
            _ => (0..parts).for_each(f),
        }
    }
}

/// A raw pointer that may cross threads; each part only touches its own disjoint block of `C`.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: parts write disjoint blocks of C (see the split functions), and A and B are only read.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// How `C[m, n]` is split into parts: `Rows(block)` or `Cols(block)`, blocks of `block` rows or
/// columns (a multiple of 16 for columns, of the tile's rows for rows, so parts run whole tiles).
#[derive(Clone, Copy, Debug)]
enum Split {
    Rows(usize),
    Cols(usize),
}

fn split(par: &Par<'_>, m: usize, n: usize, k: usize, row_align: usize) -> (usize, Split) {
    let want = par.parts();
    if want <= 1 || m.saturating_mul(n).saturating_mul(k.max(1)) < PARALLEL_MIN_MACS || m == 0 || n == 0 {
        return (1, Split::Rows(m.max(1)));
    }
    // Rows when every part gets a good share of them (the packed A block is then shared by
    // no one), columns otherwise (a small batch: every part streams its own slice of B).
    if m >= 48 * want {
        let block = m.div_ceil(want).next_multiple_of(row_align);
        (m.div_ceil(block), Split::Rows(block))
    } else {
        let block = n.div_ceil(want).next_multiple_of(16).min(n.next_multiple_of(16));
        (n.div_ceil(block), Split::Cols(block))
    }
}

/// `C = alpha·A·B + beta·C` with matrixmultiply, split across `par`.
pub(crate) fn gemm_portable(par: &Par<'_>, alpha: f32, a: Mat<'_, f32>, b: Mat<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions");
    assert_eq!((m, n), (c.rows, c.cols), "gemm: output shape");
    let (c_rs, c_cs) = (c.rs, c.cs);
    let c_ptr = SendPtr(c.data.as_mut_ptr());
    let (parts, how) = split(par, m, n, k, 6);
    par.run(parts, &|i| {
        let (a_blk, b_blk, c_off) = match how {
            Split::Rows(blk) => {
                let (s, e) = (i * blk, ((i + 1) * blk).min(m));
                (Mat { data: &a.data[s * a.rs..], rows: e - s, ..a }, b, s * c_rs)
            }
            Split::Cols(blk) => {
                let (s, e) = (i * blk, ((i + 1) * blk).min(n));
                (a, Mat { data: &b.data[s * b.cs..], cols: e - s, ..b }, s * c_cs)
            }
        };
        if a_blk.rows == 0 || b_blk.cols == 0 {
            return;
        }
        // SAFETY: A and B blocks lie inside their slices (views are bounds-checked when built
        // and blocks only shrink them); the block of C is a subset of C's bounds-checked view,
        // owned by this part alone while the unique borrow of C lasts.
        unsafe {
            matrixmultiply::sgemm(
                a_blk.rows,
                k,
                b_blk.cols,
                alpha,
                a_blk.data.as_ptr(),
                a_blk.rs as isize,
                a_blk.cs as isize,
                b_blk.data.as_ptr(),
                b_blk.rs as isize,
                b_blk.cs as isize,
                beta,
                c_ptr.get().add(c_off),
                c_rs as isize,
                c_cs as isize,
            );
        }
    });
}

/// `C = alpha·A·B + beta·C` with the AVX2 kernels, `B` a strided view or a packed weight (which
/// must have `B`'s shape), split across `par`.
///
/// # Safety
/// AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn gemm_avx2(
    par: &Par<'_>,
    alpha: f32,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    packed: Option<&PackedWeight>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    // SAFETY: the caller guarantees AVX2 and FMA.
    unsafe { gemm_tiled::<super::avx2::sgemm::Avx2>(par, alpha, a, b, packed, beta, c) }
}

/// `C = alpha·A·B + beta·C` with the AVX-512 kernels, as [`gemm_avx2`].
///
/// # Safety
/// AVX-512F, AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn gemm_avx512(
    par: &Par<'_>,
    alpha: f32,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    packed: Option<&PackedWeight>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    // SAFETY: the caller guarantees AVX-512F.
    unsafe { gemm_tiled::<super::avx512::sgemm::Avx512>(par, alpha, a, b, packed, beta, c) }
}

/// `C = alpha·A·B + beta·C` with the NEON kernels, as [`gemm_avx2`].
///
/// # Safety
/// NEON must be available.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn gemm_neon(
    par: &Par<'_>,
    alpha: f32,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    packed: Option<&PackedWeight>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    // SAFETY: the caller guarantees NEON.
    unsafe { gemm_tiled::<super::neon::sgemm::Neon>(par, alpha, a, b, packed, beta, c) }
}

/// `C = alpha·A·B + beta·C` with `K`'s 6×16 kernels (`cpu/sgemm.rs`), `B` a strided view or a
/// packed weight (which must have `B`'s shape), split across `par`. The skinny kernel is chosen
/// from the whole product's `M`, so every part of a split takes the same path.
///
/// # Safety
/// `K`'s ISA must be available.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
unsafe fn gemm_tiled<K: BlockTile + SkinnyTile>(
    par: &Par<'_>,
    alpha: f32,
    a: Mat<'_, f32>,
    b: Mat<'_, f32>,
    packed: Option<&PackedWeight>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    use super::packed::NR;
    use super::sgemm::{gemm_block, gemm_panels, with_workspace, Rhs, MR};

    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions");
    assert_eq!((m, n), (c.rows, c.cols), "gemm: output shape");
    assert_eq!(c.cs, 1, "gemm: output rows must be contiguous");
    if let Some(p) = packed {
        assert_eq!((p.k, p.n), (k, n), "gemm: packed operand shape");
    }
    let rhs = match packed {
        Some(p) => Rhs::Packed(p),
        None => Rhs::Strided(b),
    };
    let rsc = c.rs;
    let c_ptr = SendPtr(c.data.as_mut_ptr());
    let (parts, how) = split(par, m, n, k, K::ROWS);
    par.run(parts, &|i| {
        let ((r0, r1), (q0, q1)) = match how {
            Split::Rows(blk) => ((i * blk, ((i + 1) * blk).min(m)), (0, n.div_ceil(NR))),
            Split::Cols(blk) => ((0, m), (i * blk / NR, ((i + 1) * blk).min(n).div_ceil(NR))),
        };
        if r0 >= r1 || q0 >= q1 {
            return;
        }
        match rhs {
            Rhs::Packed(w) if m < MR && k > 0 => {
                // SAFETY: K's ISA per this function's contract; shapes checked above; the part
                // owns the output columns of panels q0..q1 of every row.
                unsafe { gemm_panels::<K>(&a, w, q0, q1, c_ptr.get(), rsc, alpha, beta) }
            }
            _ => with_workspace(|ws| {
                // SAFETY: as above; the part owns rows r0..r1 × panels q0..q1 of C.
                unsafe { gemm_block::<K>(ws, alpha, &a, rhs, beta, c_ptr.get(), rsc, (r0, r1), (q0, q1)) }
            }),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn rand_vec(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
    }

    /// `C = alpha·A·B + beta·C` in f64, with `A`, `B` read through their strides, and for each
    /// element the f32 rounding-error bound of computing it: `(k + 2)·eps` times the sum of the
    /// magnitudes of its terms (the standard bound for a k-term dot product plus the update).
    fn naive(alpha: f32, a: &Mat<'_, f32>, b: &Mat<'_, f32>, beta: f32, c: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0.0; a.rows * b.cols];
        let mut bound = vec![0.0; a.rows * b.cols];
        let eps = f32::EPSILON as f64;
        for i in 0..a.rows {
            for j in 0..b.cols {
                let s: f64 = (0..a.cols).map(|k| a.at(i, k) as f64 * b.at(k, j) as f64).sum();
                let mag: f64 = (0..a.cols).map(|k| (a.at(i, k) as f64 * b.at(k, j) as f64).abs()).sum();
                let prev = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * b.cols + j] as f64 };
                out[i * b.cols + j] = alpha as f64 * s + prev;
                bound[i * b.cols + j] = (a.cols as f64 + 2.0) * eps * (alpha.abs() as f64 * mag + prev.abs());
            }
        }
        (out, bound)
    }

    /// Runs `f` with `Par::Serial` and with teams of 2 and 3 and returns each result.
    fn each_par(f: impl Fn(&Par<'_>) -> Vec<f32> + Sync) -> Vec<Vec<f32>> {
        let mut outs = vec![f(&Par::Serial)];
        for parts in [2, 3] {
            let team = Team::new(parts);
            std::thread::scope(|s| {
                for i in 1..parts {
                    let team = &team;
                    s.spawn(move || team.helper(i));
                }
                let _stop = super::super::team::StopOnDrop(&team);
                outs.push(f(&Par::Team(&team)));
            });
        }
        outs
    }

    /// The harness every ISA's tiled GEMM runs ([`gemm_tiled`] with `K`'s kernels): every path
    /// against f64 within the rounding bound, and bit-identical serial and on teams of 2 and 3.
    ///
    /// # Safety
    /// `K`'s ISA must be available.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    unsafe fn check_tiled<K: BlockTile + SkinnyTile>() {
        let mut rng = SplitMix64::new(7);
        // (m, k, n): tile edges, the skinny path (m < 6: 4-row, 2-row and 1-row tiles, with the
        // panels grouped differently by each split), K and N blocks (KC = 512, NC = 1024), row
        // splits (m ≥ 96) and column splits, k = 0.
        let shapes = [
            (1, 1, 1),
            (1, 300, 1030),
            (2, 200, 1000),
            (3, 17, 33),
            (5, 129, 200),
            (5, 64, 16),
            (6, 16, 16),
            (7, 257, 45),
            (13, 600, 100),
            (150, 300, 70),
            (97, 513, 1100),
            (200, 0, 20),
        ];
        // alpha and beta that round when multiplied, so that an edge tile computing
        // `alpha·acc + beta·c` with other instructions than a full one shows in the bits.
        for &(m, k, n) in &shapes {
            for (alpha, beta) in [(1.0f32, 0.0f32), (1.0, 1.0), (0.7, -0.3)] {
                for (a_t, b_t, packed) in [(false, false, false), (true, true, false), (false, true, true), (true, false, true)] {
                    let a_data = rand_vec(&mut rng, m * k);
                    let b_data = rand_vec(&mut rng, k * n);
                    let c0 = rand_vec(&mut rng, m * n);
                    // A stored [m, k] or as the transpose of a [k, m] matrix; B likewise.
                    let a = if a_t { Mat::new(&a_data, k, m).t() } else { Mat::new(&a_data, m, k) };
                    let b = if b_t { Mat::new(&b_data, n, k).t() } else { Mat::new(&b_data, k, n) };
                    let pw = packed.then(|| PackedWeight::pack(b));
                    let (want, bound) = naive(alpha, &a, &b, beta, &c0);
                    let outs = each_par(|par| {
                        let mut c = c0.clone();
                        // SAFETY: K's ISA per this function's contract.
                        unsafe { gemm_tiled::<K>(par, alpha, a, b, pw.as_ref(), beta, MatMut::new(&mut c, m, n)) };
                        c
                    });
                    let ctx = format!("m={m} k={k} n={n} alpha={alpha} beta={beta} a_t={a_t} b_t={b_t} packed={packed}");
                    for (i, ((&got, &w), &tol)) in outs[0].iter().zip(&want).zip(&bound).enumerate() {
                        assert!((got as f64 - w).abs() <= tol, "{ctx}: C[{i}] = {got}, f64 gives {w}, bound {tol:.2e}");
                    }
                    for o in &outs[1..] {
                        assert!(o.iter().zip(&outs[0]).all(|(x, y)| x.to_bits() == y.to_bits()), "{ctx}: threads changed bits");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_gemm_matches_f64_for_every_path_and_is_thread_count_invariant() {
        if !super::super::Isa::Avx2.is_supported() {
            eprintln!("skipped: this CPU lacks AVX2+FMA");
            return;
        }
        // SAFETY: AVX2+FMA detected above.
        unsafe { check_tiled::<super::super::avx2::sgemm::Avx2>() }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_gemm_matches_f64_for_every_path_and_is_thread_count_invariant() {
        if !super::super::Isa::Avx512.is_supported() {
            eprintln!("skipped: this CPU lacks AVX-512F");
            return;
        }
        // SAFETY: AVX-512F detected above.
        unsafe { check_tiled::<super::super::avx512::sgemm::Avx512>() }
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_gemm_matches_f64_for_every_path_and_is_thread_count_invariant() {
        assert!(super::super::Isa::Neon.is_supported(), "AArch64 without NEON");
        // SAFETY: NEON detected above.
        unsafe { check_tiled::<super::super::neon::sgemm::Neon>() }
    }

    #[test]
    fn portable_gemm_is_thread_count_invariant() {
        let mut rng = SplitMix64::new(8);
        for &(m, k, n) in &[(2, 300, 1030), (150, 64, 70)] {
            let a_data = rand_vec(&mut rng, m * k);
            let b_data = rand_vec(&mut rng, k * n);
            let (a, b) = (Mat::new(&a_data, m, k), Mat::new(&b_data, k, n));
            let (want, bound) = naive(1.0, &a, &b, 0.0, &[]);
            let outs = each_par(|par| {
                let mut c = vec![0.0; m * n];
                gemm_portable(par, 1.0, a, b, 0.0, MatMut::new(&mut c, m, n));
                c
            });
            for ((&got, &w), &tol) in outs[0].iter().zip(&want).zip(&bound) {
                assert!((got as f64 - w).abs() <= tol, "C = {got}, f64 gives {w}, bound {tol:.2e}");
            }
            for o in &outs[1..] {
                assert!(o.iter().zip(&outs[0]).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }
}
