//! The reference GEMM: `C = alpha·A·B + beta·C` as three plain loops, summing over `k` in
//! order so that results are reproducible bit for bit.

use crate::backend::host::{Mat, MatMut};
use crate::element::Float;

/// `C[m×n] = alpha · A[m×k] · B[k×n] + beta · C`; with `beta = 0`, `C` is not read (so NaN in
/// an uninitialised `C` does not propagate, as in BLAS).
pub(crate) fn gemm<T: Float>(alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, mut c: MatMut<'_, T>) {
    debug_assert_eq!(a.cols, b.rows, "gemm: inner dimensions");
    debug_assert_eq!((a.rows, b.cols), (c.rows, c.cols), "gemm: output shape");
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut acc = T::ZERO;
            for p in 0..a.cols {
                acc += a.at(i, p) * b.at(p, j);
            }
            let dst = c.at_mut(i, j);
            *dst = if beta == T::ZERO { alpha * acc } else { alpha * acc + beta * *dst };
        }
    }
}
