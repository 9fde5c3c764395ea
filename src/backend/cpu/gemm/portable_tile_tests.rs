//! The ISA-neutral SGEMM (`sgemm.rs`: the loop nest, the packing of `A` and `B`, the skinny
//! driver, the use of [`PackedWeight`]) and its split across a [`Team`](super::team::Team),
//! run with a register tile in plain Rust ([`PortableTile`]) with small blocks, so that every
//! path and block edge is taken with small matrices. Under Miri this checks the unsafe pointer
//! arithmetic of those files, which the SIMD tiles' tests cannot (Miri runs no SIMD ISA here).
//!
//! The tile reads everything its contract says it may (all `ROWS` rows of a packed `A`
//! micro-panel, all 16 columns of each `B` panel), as the SIMD tiles do, so a packing that
//! leaves less behind shows as an out-of-bounds read.

use super::packed::{PackedWeight, NR};
use super::sgemm::{ATile, BlockTile, CTile, SkinnyTile, Update, MR};
use super::{gemm_tiled, with_par, Gemm};
use crate::backend::host::{Mat, MatMut};
use crate::rng::SplitMix64;

/// A 6×16 tile in plain Rust, with blocks small enough for several per test matrix.
struct PortableTile;

impl BlockTile for PortableTile {
    const KC: usize = 8;
    const MC: usize = 2 * MR;
    const NC: usize = 2 * NR;

    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: CTile, up: Update) {
        let mut acc = [[0.0f32; NR]; MR];
        for kk in 0..kc {
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: `a` holds kc·6 floats, `b` kc·16 (the contract).
                let av = unsafe { *a.add(kk * MR + i) };
                for (j, v) in row.iter_mut().enumerate() {
                    *v = av.mul_add(unsafe { *b.add(kk * NR + j) }, *v);
                }
            }
        }
        for (i, row) in acc.iter().enumerate().take(c.rows) {
            for (j, &v) in row.iter().enumerate().take(c.cols) {
                // SAFETY: `c` is writable for its rows and columns (the contract).
                let dst = unsafe { &mut *c.ptr.add(i * c.rs + j) };
                let v = up.alpha * v;
                *dst = match up.beta {
                    None => *dst + v,
                    Some(0.0) => v,
                    Some(beta) => beta.mul_add(*dst, v),
                };
            }
        }
    }
}

impl SkinnyTile for PortableTile {
    unsafe fn skinny<const R: usize, const NP: usize>(a: ATile, k: usize, b: *const f32, c: CTile, (alpha, beta): (f32, f32)) {
        let mut acc = [[[0.0f32; NR]; NP]; R];
        for kk in 0..k {
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: `a` is readable for r < R, kk < k; `b` holds NP panels of k·16 floats.
                let av = unsafe { *a.ptr.add(r * a.rs + kk * a.cs) };
                for (p, panel) in row.iter_mut().enumerate() {
                    for (j, v) in panel.iter_mut().enumerate() {
                        *v = av.mul_add(unsafe { *b.add(p * k * NR + kk * NR + j) }, *v);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for col in 0..c.cols {
                // SAFETY: `c` is writable for R rows and its valid columns.
                let dst = unsafe { &mut *c.ptr.add(r * c.rs + col) };
                let v = alpha * row[col / NR][col % NR];
                *dst = if beta == 0.0 { v } else { beta.mul_add(*dst, v) };
            }
        }
    }
}

fn rand_vec(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

/// Every path of `gemm_tiled` with the portable tile: blocked with `B` strided and packed
/// (several `KC`, `MC` and `NC` blocks, edge tiles), skinny (fewer than 6 rows, packed `B`),
/// `k = 0`; serial and split by columns and by rows across teams of 2 and 3. Each result within
/// the f32 rounding bound of the f64 product, and bit-identical for every split.
#[test]
fn tiled_gemm_with_a_portable_tile_matches_f64_and_every_split() {
    let mut rng = SplitMix64::new(11);
    // (m, k, n): skinny rows 1..5; a KC block edge (k = 17 = 2·8 + 1); MC and NC edges; a row
    // split (m ≥ 96 for two parts); k = 0.
    let shapes = [(1, 5, 17), (3, 17, 40), (5, 9, 33), (7, 17, 50), (13, 3, 35), (100, 3, 20), (6, 0, 16)];
    let ops = [(1.0f32, 0.0f32), (0.7, -0.3), (1.0, 1.0)];
    let layouts = [(false, false, false), (true, true, false), (false, true, true), (true, false, true)];
    let mut cases = Vec::new();
    for &shape in &shapes {
        for &op in &ops {
            for &layout in &layouts {
                cases.push((shape, op, layout));
            }
        }
    }
    // Under Miri (minutes per hundred products), one case per path: skinny, blocked over several
    // blocks with B strided and packed, the row split, k = 0.
    if cfg!(miri) {
        cases = vec![
            ((3, 17, 40), ops[1], layouts[2]),
            ((7, 17, 50), ops[1], layouts[1]),
            ((7, 17, 50), ops[2], layouts[3]),
            ((100, 3, 20), ops[0], layouts[0]),
            ((6, 0, 16), ops[1], layouts[2]),
        ];
    }
    for ((m, k, n), (alpha, beta), (a_t, b_t, packed)) in cases {
        let a_data = rand_vec(&mut rng, m * k);
        let b_data = rand_vec(&mut rng, k * n);
        let c0 = rand_vec(&mut rng, m * n);
        let a = if a_t { Mat::new(&a_data, k, m).t() } else { Mat::new(&a_data, m, k) };
        let b = if b_t { Mat::new(&b_data, n, k).t() } else { Mat::new(&b_data, k, n) };
        let pw = packed.then(|| PackedWeight::pack(b));
        let ctx = format!("m={m} k={k} n={n} alpha={alpha} beta={beta} a_t={a_t} b_t={b_t} packed={packed}");
        let outs: Vec<Vec<f32>> = [1, 2, 3]
            .into_iter()
            .map(|parts| {
                with_par(parts, |par| {
                    let mut c = c0.clone();
                    let g = Gemm { packed: pw.as_ref(), ..Gemm::new(alpha, a, b, beta) };
                    g.check(&MatMut::new(&mut c, m, n));
                    // SAFETY: the portable tile needs no ISA; shapes checked above; C is
                    // dense.
                    unsafe { gemm_tiled::<PortableTile>(par, g, MatMut::new(&mut c, m, n)) };
                    c
                })
            })
            .collect();
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|kk| a.at(i, kk) as f64 * b.at(kk, j) as f64);
                let (s, mag): (f64, f64) = terms.fold((0.0, 0.0), |(s, mag), t| (s + t, mag + t.abs()));
                let prev = beta as f64 * c0[i * n + j] as f64;
                let want = alpha as f64 * s + prev;
                let bound = (k as f64 + 2.0) * f32::EPSILON as f64 * (alpha.abs() as f64 * mag + prev.abs());
                let got = outs[0][i * n + j] as f64;
                assert!((got - want).abs() <= bound, "{ctx}: C[{i}, {j}] = {got}, f64 gives {want}, bound {bound:.2e}");
            }
        }
        for o in &outs[1..] {
            assert!(o.iter().zip(&outs[0]).all(|(x, y)| x.to_bits() == y.to_bits()), "{ctx}: a split changed bits");
        }
    }
}
