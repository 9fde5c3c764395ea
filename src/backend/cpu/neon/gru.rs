//! NEON GRU step, forward and backward (maths of `reference/gru.rs`, gates `r, z, n`, reset
//! applied after the recurrent matmul as in PyTorch and cuDNN).
//!
//! Forward, per row and per four units `j`, with `ah = hg + b_hh`: `r = σ(xg_r + ah_r)`,
//! `z = σ(xg_z + ah_z)`, `n = tanh(xg_n + r·ah_n)`, `h' = (1 - z)·n + z·h_prev`; `ah_n` is
//! saved as `extra`. Traffic per row: reads `xg`, `hg` (`3H` each), `h_prev` (`H`), writes
//! `gates` (`3H`), `extra`, `m` (`H` each).
//!
//! Backward: `dn = dh(1 - z)`, `dz = dh(h_prev - n)`, `dan = dn(1 - n²)`, `dar = dan·ah_n·r(1 - r)`,
//! `daz = dz·z(1 - z)`; `dgi = [dar, daz, dan]`, `dgh = [dar, daz, dan·r]`, `dh_direct = dh·z`.
//! Reads `gates` (`3H`), `extra`, `h_prev`, `dm` (`H` each), writes `dgi`, `dgh` (`3H` each),
//! `dh_direct` (`H`). No transcendental and the reference's operation order: bit-identical.

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
        check_len(name, len, rows * 3 * h);
    }
    for (name, len) in [("h_prev", s.h_prev.len()), ("extra", s.extra.len()), ("m", s.m.len())] {
        check_len(name, len, rows * h);
    }
    if let Some(b) = s.b_hh {
        check_len("b_hh", b.len(), 3 * h);
    }
    // SAFETY: the lengths were checked; the caller guarantees NEON.
    unsafe { forward_neon(s) }
}

/// # Safety
/// The lengths are those `forward` checks, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn forward_neon(s: CellForward<'_, f32>) {
    let CellForward { active, hidden: h, xg, hg, b_hh, h_prev, gates, extra, m, .. } = s;
    let gh = 3 * h;
    for (b, &on) in active.iter().enumerate() {
        let gates = &mut gates[b * gh..(b + 1) * gh];
        let extra = &mut extra[b * h..(b + 1) * h];
        if !on {
            gates.fill(0.0);
            extra.fill(0.0);
            continue;
        }
        let (xg, hg) = (&xg[b * gh..(b + 1) * gh], &hg[b * gh..(b + 1) * gh]);
        let (h_prev, m) = (&h_prev[b * h..(b + 1) * h], &mut m[b * h..(b + 1) * h]);
        for_each_vector(h, |j, n| {
            // SAFETY: j + n <= h, so lanes k·h + j .. k·h + j + n (k < 3) lie in the 3h-long
            // rows and in b_hh, and lanes j .. j + n in the h-long ones.
            unsafe {
                let one = vdupq_n_f32(1.0);
                let ah = |k: usize| {
                    let a = load(hg, k * h + j, n);
                    match b_hh {
                        Some(bh) => vaddq_f32(a, load(bh, k * h + j, n)),
                        None => a,
                    }
                };
                let r = sigmoid(vaddq_f32(load(xg, j, n), ah(0)));
                let z = sigmoid(vaddq_f32(load(xg, h + j, n), ah(1)));
                let ahn = ah(2);
                let nn = tanh(vaddq_f32(load(xg, 2 * h + j, n), vmulq_f32(r, ahn)));
                let hn = vaddq_f32(vmulq_f32(vsubq_f32(one, z), nn), vmulq_f32(z, load(h_prev, j, n)));
                store(m, j, n, hn);
                store(gates, j, n, r);
                store(gates, h + j, n, z);
                store(gates, 2 * h + j, n, nn);
                store(extra, j, n, ahn);
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
        check_len(name, len, rows * 3 * h);
    }
    for (name, len) in [("extra", s.extra.len()), ("h_prev", s.h_prev.len()), ("dm", s.dm.len()), ("dh_direct", s.dh_direct.len())] {
        check_len(name, len, rows * h);
    }
    // SAFETY: the lengths were checked; the caller guarantees NEON.
    unsafe { backward_neon(s) }
}

/// # Safety
/// The lengths are those `backward` checks, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn backward_neon(s: CellBackward<'_, f32>) {
    let CellBackward { active, hidden: h, gates, extra, h_prev, dm, dgi, dgh, dh_direct, .. } = s;
    let gh = 3 * h;
    for (b, &on) in active.iter().enumerate() {
        let dgi = &mut dgi[b * gh..(b + 1) * gh];
        let dgh = &mut dgh[b * gh..(b + 1) * gh];
        let dh_direct = &mut dh_direct[b * h..(b + 1) * h];
        if !on {
            dgi.fill(0.0);
            dgh.fill(0.0);
            dh_direct.fill(0.0);
            continue;
        }
        let gates = &gates[b * gh..(b + 1) * gh];
        let (ahn, h_prev, dm) = (&extra[b * h..(b + 1) * h], &h_prev[b * h..(b + 1) * h], &dm[b * h..(b + 1) * h]);
        for_each_vector(h, |j, n| {
            // SAFETY: as in forward_neon: j + n <= h bounds every lane used.
            unsafe {
                let one = vdupq_n_f32(1.0);
                let r = load(gates, j, n);
                let z = load(gates, h + j, n);
                let nn = load(gates, 2 * h + j, n);
                let dh = load(dm, j, n);
                let dn = vmulq_f32(dh, vsubq_f32(one, z));
                let dz = vmulq_f32(dh, vsubq_f32(load(h_prev, j, n), nn));
                let dan = vmulq_f32(dn, vsubq_f32(one, vmulq_f32(nn, nn)));
                let dr = vmulq_f32(dan, load(ahn, j, n));
                let dar = vmulq_f32(vmulq_f32(dr, r), vsubq_f32(one, r));
                let daz = vmulq_f32(vmulq_f32(dz, z), vsubq_f32(one, z));
                store(dgi, j, n, dar);
                store(dgi, h + j, n, daz);
                store(dgi, 2 * h + j, n, dan);
                store(dgh, j, n, dar);
                store(dgh, h + j, n, daz);
                store(dgh, 2 * h + j, n, vmulq_f32(dan, r));
                store(dh_direct, j, n, vmulq_f32(dh, z));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{backward_matches_reference, forward_matches_reference, results_do_not_depend_on_position};
    use crate::config::CellKind;

    #[test]
    fn gru_forward_matches_reference() {
        forward_matches_reference(CellKind::Gru);
    }

    #[test]
    fn gru_backward_matches_reference() {
        let worst = backward_matches_reference(CellKind::Gru);
        assert_eq!((worst.abs, worst.rel), (0.0, 0.0), "GRU backward has no approximation: it must be bit-identical");
    }

    #[test]
    fn gru_results_do_not_depend_on_position() {
        results_do_not_depend_on_position(CellKind::Gru);
    }
}
