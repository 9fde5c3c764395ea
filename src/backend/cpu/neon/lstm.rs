//! NEON LSTM step, forward and backward (maths of `reference/lstm.rs`, gates `i, f, g, o`).
//!
//! Forward, per row and per four units `j`: `a_k = (xg_k + hg_k) + b_hh_k` for the four gates,
//! `i, f, o = σ(a)`, `g = tanh(a_g)`, `c = f·c_prev + i·g`, `m = o·tanh(c)`. Traffic per row:
//! reads `xg`, `hg` (`4H` each), `c_prev` (`H`), writes `gates` (`4H`), `c`, `m` (`H` each).
//!
//! Backward, with `tc = tanh(c)` recomputed (cheaper than saving it): `do = dm·tc`,
//! `dc += dm·o·(1 - tc²)`, then `di = dc·g`, `dg = dc·i`, `df = dc·c_prev`, `dc_prev = dc·f`,
//! times `σ' = s(1 - s)` or `tanh' = 1 - g²`. Reads `gates` (`4H`), `c`, `c_prev`, `dm`, `dc`
//! (`H` each), writes `dgi`, `dgh` (`4H` each, equal), `dc`, `dh_direct` (`H`, zero).

use super::math::{sigmoid, tanh};
use super::{check_len, for_each_vector, load, store};
use crate::backend::host::{CellBackward, CellForward};
use core::arch::aarch64::*;

/// Checks the lengths of `s`, then runs the forward step.
///
/// # Safety
/// The CPU must support NEON.
pub(super) unsafe fn forward(s: CellForward<'_, f32>) {
    let (rows, h) = (s.active.len(), s.hidden);
    for (name, len) in [("xg", s.xg.len()), ("hg", s.hg.len()), ("gates", s.gates.len())] {
        check_len(name, len, rows * 4 * h);
    }
    for (name, len) in [("c_prev", s.c_prev.len()), ("c", s.c.len()), ("m", s.m.len())] {
        check_len(name, len, rows * h);
    }
    if let Some(b) = s.b_hh {
        check_len("b_hh", b.len(), 4 * h);
    }
    // SAFETY: the lengths were checked; the caller guarantees NEON.
    unsafe { forward_neon(s) }
}

/// # Safety
/// The lengths are those `forward` checks, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn forward_neon(s: CellForward<'_, f32>) {
    let CellForward { active, hidden: h, xg, hg, b_hh, c_prev, gates, c, m, .. } = s;
    let gh = 4 * h;
    for (b, &on) in active.iter().enumerate() {
        let gates = &mut gates[b * gh..(b + 1) * gh];
        let c_prev = &c_prev[b * h..(b + 1) * h];
        let c = &mut c[b * h..(b + 1) * h];
        if !on {
            gates.fill(0.0);
            c.copy_from_slice(c_prev);
            continue;
        }
        let (xg, hg, m) = (&xg[b * gh..(b + 1) * gh], &hg[b * gh..(b + 1) * gh], &mut m[b * h..(b + 1) * h]);
        for_each_vector(h, |j, n| {
            // SAFETY: j + n <= h, so lanes k·h + j .. k·h + j + n (k < 4) lie in the 4h-long
            // rows and in b_hh, and lanes j .. j + n in the h-long ones.
            unsafe {
                let pre = |k: usize| {
                    let a = vaddq_f32(load(xg, k * h + j, n), load(hg, k * h + j, n));
                    match b_hh {
                        Some(bh) => vaddq_f32(a, load(bh, k * h + j, n)),
                        None => a,
                    }
                };
                let i = sigmoid(pre(0));
                let f = sigmoid(pre(1));
                let g = tanh(pre(2));
                let o = sigmoid(pre(3));
                let cn = vaddq_f32(vmulq_f32(f, load(c_prev, j, n)), vmulq_f32(i, g));
                store(c, j, n, cn);
                store(m, j, n, vmulq_f32(o, tanh(cn)));
                store(gates, j, n, i);
                store(gates, h + j, n, f);
                store(gates, 2 * h + j, n, g);
                store(gates, 3 * h + j, n, o);
            }
        });
    }
}

/// Checks the lengths of `s`, then runs the backward step.
///
/// # Safety
/// The CPU must support NEON.
pub(super) unsafe fn backward(s: CellBackward<'_, f32>) {
    let (rows, h) = (s.active.len(), s.hidden);
    for (name, len) in [("gates", s.gates.len()), ("dgi", s.dgi.len()), ("dgh", s.dgh.len())] {
        check_len(name, len, rows * 4 * h);
    }
    for (name, len) in
        [("c", s.c.len()), ("c_prev", s.c_prev.len()), ("dm", s.dm.len()), ("dc", s.dc.len()), ("dh_direct", s.dh_direct.len())]
    {
        check_len(name, len, rows * h);
    }
    // SAFETY: the lengths were checked; the caller guarantees NEON.
    unsafe { backward_neon(s) }
}

/// # Safety
/// The lengths are those `backward` checks, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn backward_neon(s: CellBackward<'_, f32>) {
    let CellBackward { active, hidden: h, gates, c, c_prev, dm, dc, dgi, dgh, dh_direct, .. } = s;
    let gh = 4 * h;
    // No direct path from h_prev to h in an LSTM.
    dh_direct.fill(0.0);
    for (b, &on) in active.iter().enumerate() {
        let dgi = &mut dgi[b * gh..(b + 1) * gh];
        let dgh = &mut dgh[b * gh..(b + 1) * gh];
        if !on {
            dgi.fill(0.0);
            dgh.fill(0.0);
            continue;
        }
        let gates = &gates[b * gh..(b + 1) * gh];
        let (c, c_prev, dm) = (&c[b * h..(b + 1) * h], &c_prev[b * h..(b + 1) * h], &dm[b * h..(b + 1) * h]);
        let dc = &mut dc[b * h..(b + 1) * h];
        for_each_vector(h, |j, n| {
            // SAFETY: as in forward_neon: j + n <= h bounds every lane used.
            unsafe {
                let one = vdupq_n_f32(1.0);
                let i = load(gates, j, n);
                let f = load(gates, h + j, n);
                let g = load(gates, 2 * h + j, n);
                let o = load(gates, 3 * h + j, n);
                let tc = tanh(load(c, j, n));
                let dmv = load(dm, j, n);
                let d_o = vmulq_f32(dmv, tc);
                let dcv = vaddq_f32(load(dc, j, n), vmulq_f32(vmulq_f32(dmv, o), vsubq_f32(one, vmulq_f32(tc, tc))));
                let di = vmulq_f32(dcv, g);
                let dg = vmulq_f32(dcv, i);
                let df = vmulq_f32(dcv, load(c_prev, j, n));
                store(dc, j, n, vmulq_f32(dcv, f));
                let dai = vmulq_f32(vmulq_f32(di, i), vsubq_f32(one, i));
                let daf = vmulq_f32(vmulq_f32(df, f), vsubq_f32(one, f));
                let dag = vmulq_f32(dg, vsubq_f32(one, vmulq_f32(g, g)));
                let dao = vmulq_f32(vmulq_f32(d_o, o), vsubq_f32(one, o));
                for (k, v) in [dai, daf, dag, dao].into_iter().enumerate() {
                    store(dgi, k * h + j, n, v);
                    store(dgh, k * h + j, n, v);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{backward_matches_reference, forward_matches_reference, results_do_not_depend_on_position};
    use crate::config::CellKind;

    #[test]
    fn lstm_forward_matches_reference() {
        forward_matches_reference(CellKind::Lstm);
    }

    #[test]
    fn lstm_backward_matches_reference() {
        backward_matches_reference(CellKind::Lstm);
    }

    #[test]
    fn lstm_results_do_not_depend_on_position() {
        results_do_not_depend_on_position(CellKind::Lstm);
    }
}
