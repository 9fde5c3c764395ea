//! One step of a cell over the batch, row by row: the masking of rows past their length, written
//! once for every cell, around the cell's maths, which sees a step of one valid row (a
//! [`CellForward`] or [`CellBackward`] with `B = 1`).
//!
//! A row past its length (inactive) keeps its cell state and gets zero gates, zero GRU `extra`
//! and zero gradients; its incoming `dc` passes through unchanged.

use crate::backend::host::{row_bounds, CellBackward, CellForward};
use crate::element::Float;

/// Runs `cell` on every valid row of `s`; masks the others.
pub(super) fn forward<T: Float>(s: CellForward<'_, T>, cell: fn(CellForward<'_, T>)) {
    let n = s.active.len();
    if n == 0 {
        return;
    }
    for row in s.split_rows(&row_bounds(n, n)) {
        if row.active[0] {
            cell(row);
        } else {
            row.gates.fill(T::ZERO);
            row.extra.fill(T::ZERO);
            row.c.copy_from_slice(row.c_prev);
        }
    }
}

/// Runs `cell` on every valid row of `s`; masks the others. `dh_direct` is zero unless the
/// cell writes it.
pub(super) fn backward<T: Float>(s: CellBackward<'_, T>, cell: fn(CellBackward<'_, T>)) {
    let n = s.active.len();
    if n == 0 {
        return;
    }
    for row in s.split_rows(&row_bounds(n, n)) {
        row.dh_direct.fill(T::ZERO);
        if row.active[0] {
            cell(row);
        } else {
            row.dgi.fill(T::ZERO);
            row.dgh.fill(T::ZERO);
        }
    }
}
