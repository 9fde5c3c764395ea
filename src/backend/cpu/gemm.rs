//! The CPU backend's GEMM: matrixmultiply's SGEMM on strided views, split across the thread
//! pool by blocks of rows (or of columns when there are few rows, as in a small-batch recurrent
//! step).
//!
//! Every element of `C` is computed by exactly one SGEMM call over the full `k` range, in the
//! same order whatever the split, so results are bit-identical for any thread count.

use crate::backend::host::{Mat, MatMut};

/// Below this many multiply-adds a GEMM runs on the calling thread: splitting costs more
/// than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// A raw pointer that may cross threads; each task only touches its own disjoint block of `C`.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint blocks of C (see `gemm`), and A and B are only read.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `C = alpha·A·B + beta·C` with `C` given as a raw pointer and strides.
///
/// # Safety
/// Elements `c + i·rsc + j·csc` for `i < a.rows`, `j < b.cols` must be valid for writes and
/// not accessed by anyone else during the call.
unsafe fn sgemm_raw(alpha: f32, a: &Mat<'_, f32>, b: &Mat<'_, f32>, beta: f32, c: *mut f32, rsc: usize, csc: usize) {
    debug_assert_eq!(a.cols, b.rows, "gemm: inner dimensions");
    // SAFETY: A and B lie inside their slices (checked when the views were built) and are only
    // read; C is the caller's promise.
    unsafe {
        matrixmultiply::sgemm(
            a.rows,
            a.cols,
            b.cols,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c,
            rsc as isize,
            csc as isize,
        );
    }
}

/// `C = alpha·A·B + beta·C`, on up to `threads` threads of the current rayon pool.
pub(crate) fn gemm(threads: usize, alpha: f32, a: Mat<'_, f32>, b: Mat<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions");
    assert_eq!((m, n), (c.rows, c.cols), "gemm: output shape");
    let (c_rs, c_cs) = (c.rs, c.cs);
    let c_ptr = SendPtr(c.data.as_mut_ptr());
    if threads <= 1 || m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_MACS || m == 0 || n == 0 {
        // SAFETY: C's view was bounds-checked when built and is uniquely borrowed here.
        unsafe { sgemm_raw(alpha, &a, &b, beta, c_ptr.0, c_rs, c_cs) };
        return;
    }
    // Split the longer side of C into `threads` blocks; blocks are multiples of 16 (a multiple
    // of every microkernel tile) so each block runs full tiles where possible.
    let by_rows = m >= 16 * threads;
    let len = if by_rows { m } else { n };
    let block = len.div_ceil(threads).next_multiple_of(16).min(len);
    rayon::scope(|s| {
        for start in (0..len).step_by(block) {
            let end = (start + block).min(len);
            let (a, b) = (&a, &b);
            s.spawn(move |_| {
                let c_ptr = c_ptr;
                let (a_blk, b_blk, c_off) = if by_rows {
                    (Mat { data: &a.data[start * a.rs..], rows: end - start, ..*a }, *b, start * c_rs)
                } else {
                    (*a, Mat { data: &b.data[start * b.cs..], cols: end - start, ..*b }, start * c_cs)
                };
                // SAFETY: the block's elements of C are a subset of C's bounds-checked view, and
                // blocks partition the rows (or the columns) of C, so no two tasks touch the
                // same element; the unique borrow of C outlives the scope.
                unsafe { sgemm_raw(alpha, &a_blk, &b_blk, beta, c_ptr.0.add(c_off), c_rs, c_cs) };
            });
        }
    });
}

/// `out = a · W^T` against a packed per-step weight, on up to `threads` threads: panels of
/// output columns are split across threads (each element is one k-ordered dot product, so the
/// split does not change any bit).
#[cfg(target_arch = "x86_64")]
pub(crate) fn packed_step_gemm(threads: usize, a: Mat<'_, f32>, w: &super::packed::PackedWeight, out: MatMut<'_, f32>) {
    super::packed::check_shapes(&a, w, &out);
    let panels = w.panels();
    let macs = a.rows.saturating_mul(w.n).saturating_mul(w.k);
    let rs = out.rs;
    let out_ptr = SendPtr(out.data.as_mut_ptr());
    if threads <= 1 || macs < PARALLEL_MIN_MACS || panels < 2 {
        // SAFETY: AVX2+FMA is the plan's ISA only when detected (Cpu::with_isa); shapes checked;
        // `out` is uniquely borrowed.
        unsafe { super::avx2::packed_gemm::packed_gemm_panels(&a, w, 0, panels, out_ptr.0, rs) };
        return;
    }
    let per = panels.div_ceil(threads);
    rayon::scope(|s| {
        for p0 in (0..panels).step_by(per) {
            let a = &a;
            s.spawn(move |_| {
                let out_ptr = out_ptr;
                // SAFETY: as above; tasks own disjoint panels, i.e. disjoint output columns.
                unsafe { super::avx2::packed_gemm::packed_gemm_panels(a, w, p0, (p0 + per).min(panels), out_ptr.0, rs) };
            });
        }
    });
}
