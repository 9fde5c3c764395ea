//! Column sums over all the steps of a direction: the bias gradients (`db = Σ_rows dG`) and the
//! layer norms' gain and bias gradients (`dγ = Σ_rows dy⊙x̂`, `dβ = Σ_rows dy`), each a sum over
//! the `T·B` rows of a `[T·B, n]` matrix.
//!
//! Each column is summed over the rows in row order, the same arithmetic whatever thread runs
//! it: up to `block` rows (`HostKernels::weight_grad_rows`, as the weight gradients' GEMMs)
//! onto the accumulator in `T`; past that, in f64 from the accumulator's value and rounded once.
//! The columns are split across the backend's threads ([`run`]), in chunks of whole cache lines;
//! since no column's sum depends on the cut, the results never depend on the thread count.

use super::direction::BlockWork;
use super::HostKernels;
use crate::element::Float;
use std::ops::Range;

/// Columns per cache line of f32: the chunks' bounds are multiples of it.
const LINE: usize = 16;

/// Below this many values (`rows · n` over all the sums of a call), the sums run on the calling
/// thread: handing them to a team costs more than they do.
const PARALLEL_MIN: usize = 1 << 16;

/// One sum over the rows of `g` (`[rows, n]`, row-major): `acc[j] += Σ_r g[r, j]·x[r, j]` when
/// `x` (shaped as `g`) is given, else `acc[j] += Σ_r g[r, j]`; and with `plain`,
/// `plain[j] += Σ_r g[r, j]` in the same pass, so the rows are read once for a gain and its
/// bias, or for two biases with the same gradient.
pub(super) struct ColSum<'a, T> {
    pub acc: &'a mut [T],
    pub plain: Option<&'a mut [T]>,
    pub g: &'a [T],
    pub x: Option<&'a [T]>,
    pub n: usize,
}

impl<T> ColSum<'_, T> {
    /// A bias gradient: `acc[j] += Σ_r g[r, j]`.
    pub fn bias<'a>(acc: &'a mut [T], g: &'a [T], n: usize) -> ColSum<'a, T> {
        ColSum { acc, plain: None, g, x: None, n }
    }
}

/// A contiguous range of columns of one [`ColSum`]: the accumulators of those columns.
struct Chunk<'a, T> {
    acc: &'a mut [T],
    plain: Option<&'a mut [T]>,
    g: &'a [T],
    x: Option<&'a [T]>,
    n: usize,
    cols: Range<usize>,
}

/// Runs `sums`, their columns split across `k`'s threads (see the [module docs](self)).
pub(super) fn run<T: Float, K: HostKernels<T>>(k: &K, sums: Vec<ColSum<'_, T>>, block: usize) {
    let values: usize = sums.iter().map(|s| s.g.len()).sum();
    let parts = if values < PARALLEL_MIN { 1 } else { k.threads().max(1) };
    // Part `i` takes the `i`-th chunk of every sum.
    let mut per_part: Vec<Vec<Chunk<'_, T>>> = (0..parts).map(|_| Vec::with_capacity(sums.len())).collect();
    for ColSum { mut acc, mut plain, g, x, n } in sums {
        if n == 0 {
            continue;
        }
        let lines = n.div_ceil(LINE);
        let mut start = 0;
        for (i, chunks) in per_part.iter_mut().enumerate() {
            let end = (lines * (i + 1) / parts * LINE).min(n);
            let (a, rest) = std::mem::take(&mut acc).split_at_mut(end - start);
            acc = rest;
            let p = plain.take().map(|p| {
                let (head, rest) = p.split_at_mut(end - start);
                plain = Some(rest);
                head
            });
            if end > start {
                chunks.push(Chunk { acc: a, plain: p, g, x, n, cols: start..end });
            }
            start = end;
        }
    }
    if parts == 1 {
        per_part.into_iter().flatten().for_each(|c| sum_chunk(c, block));
        return;
    }
    let work = BlockWork::new(per_part);
    k.for_blocks(work.len(), &|i| {
        if let Some(chunks) = work.take(i) {
            chunks.into_iter().for_each(|c| sum_chunk(c, block));
        }
    });
}

/// One chunk's sums, row after row (see the [module docs](self) for `block`).
fn sum_chunk<T: Float>(c: Chunk<'_, T>, block: usize) {
    let Chunk { acc, mut plain, g, x, n, cols } = c;
    let rows = g.len() / n;
    fn cut<T>(m: &[T], start: usize, len: usize) -> &[T] {
        &m[start..start + len]
    }
    let width = cols.len();
    let row = |m, r: usize| cut(m, r * n + cols.start, width);
    if rows <= block {
        for r in 0..rows {
            let gr = row(g, r);
            match x {
                Some(x) => {
                    for ((a, &gv), &xv) in acc.iter_mut().zip(gr).zip(row(x, r)) {
                        *a += gv * xv;
                    }
                }
                None => {
                    for (a, &gv) in acc.iter_mut().zip(gr) {
                        *a += gv;
                    }
                }
            }
            if let Some(p) = plain.as_deref_mut() {
                for (a, &gv) in p.iter_mut().zip(gr) {
                    *a += gv;
                }
            }
        }
        return;
    }
    let wide = |v: &[T]| v.iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
    let mut main = wide(acc);
    let mut side = plain.as_deref().map(wide);
    for r in 0..rows {
        let gr = row(g, r);
        match x {
            Some(x) => {
                for ((w, &gv), &xv) in main.iter_mut().zip(gr).zip(row(x, r)) {
                    *w += (gv * xv).to_f64();
                }
            }
            None => {
                for (w, &gv) in main.iter_mut().zip(gr) {
                    *w += gv.to_f64();
                }
            }
        }
        if let Some(side) = side.as_mut() {
            for (w, &gv) in side.iter_mut().zip(gr) {
                *w += gv.to_f64();
            }
        }
    }
    for (a, w) in acc.iter_mut().zip(main) {
        *a = T::from_f64(w);
    }
    if let (Some(p), Some(side)) = (plain, side) {
        for (a, w) in p.iter_mut().zip(side) {
            *a = T::from_f64(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::reference::Reference;

    /// The sums written out, column by column, in f64 past `block` rows.
    fn expected(acc: &[f32], g: &[f32], x: Option<&[f32]>, n: usize, block: usize) -> Vec<f32> {
        let rows = g.len() / n;
        (0..n)
            .map(|j| {
                let term = |r: usize| match x {
                    Some(x) => g[r * n + j] * x[r * n + j],
                    None => g[r * n + j],
                };
                if rows <= block {
                    (0..rows).fold(acc[j], |a, r| a + term(r))
                } else {
                    (0..rows).fold(acc[j] as f64, |a, r| a + term(r) as f64) as f32
                }
            })
            .collect()
    }

    #[test]
    fn every_column_is_summed_in_row_order_in_t_then_in_f64() {
        // Under Miri, without the large one-block case (minutes there; the small ones reach
        // the same accesses).
        let cases: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(3, 5, 8), (9, 37, 8), (40, 70, 8), (30, 17, 100)]
        } else {
            &[(3, 5, 8), (9, 37, 8), (40, 70, 8), (5000, 33, 8192), (300, 17, 100)]
        };
        for &(rows, n, block) in cases {
            let g: Vec<f32> = (0..rows * n).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            let x: Vec<f32> = (0..rows * n).map(|i| ((i * 104729) % 611) as f32 / 301.0 - 1.0).collect();
            let acc0: Vec<f32> = (0..n).map(|j| j as f32 * 0.125).collect();
            let (mut a, mut b, mut p) = (acc0.clone(), acc0.clone(), acc0.clone());
            // Two biases with the same gradient, one from other starting values.
            let other0: Vec<f32> = acc0.iter().map(|v| 3.0 - v).collect();
            let mut other = other0.clone();
            run(
                &Reference,
                vec![
                    ColSum { acc: &mut a, plain: Some(&mut other), g: &g, x: None, n },
                    ColSum { acc: &mut b, plain: Some(&mut p), g: &g, x: Some(&x), n },
                ],
                block,
            );
            assert_eq!(a, expected(&acc0, &g, None, n, block), "bias sums, rows {rows} n {n}");
            assert_eq!(other, expected(&other0, &g, None, n, block), "the second bias's sums, rows {rows} n {n}");
            assert_eq!(b, expected(&acc0, &g, Some(&x), n, block), "gain sums, rows {rows} n {n}");
            assert_eq!(p, a, "a gain's bias sums are the bias sums, rows {rows} n {n}");
        }
    }
}
