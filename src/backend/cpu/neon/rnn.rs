//! NEON Elman RNN step, forward and backward (maths of `reference/rnn.rs`); `RELU` picks the
//! activation at compile time (`false`: tanh).
//!
//! Forward: `h' = act((xg + hg) + b_hh)`, written to both `gates` and `m`. Traffic per row:
//! reads `xg`, `hg` (`H` each), writes `gates`, `m` (`H` each).
//!
//! Backward: `da = dm·act'` from the saved output, `tanh' = 1 - h'²`, `relu' = [h' > 0]`;
//! `dgi = dgh = da`, `dh_direct = 0`. Reads `gates`, `dm`, writes `dgi`, `dgh`, `dh_direct`
//! (`H` each). The reference's operation order: bit-identical.

use super::math::tanh;
use super::{check_len, for_each_vector, load, store};
use crate::backend::host::{CellBackward, CellForward};
use core::arch::aarch64::*;

/// Checks the lengths of `s`, then runs the forward step.
///
/// # Safety
/// The CPU must support NEON.
pub(super) unsafe fn forward<const RELU: bool>(s: CellForward<'_, f32>) {
    let (rows, h) = (s.active.len(), s.hidden);
    for (name, len) in [("xg", s.xg.len()), ("hg", s.hg.len()), ("gates", s.gates.len()), ("m", s.m.len())] {
        check_len(name, len, rows * h);
    }
    if let Some(b) = s.b_hh {
        check_len("b_hh", b.len(), h);
    }
    // SAFETY: the lengths were checked; the caller guarantees NEON.
    unsafe { forward_neon::<RELU>(s) }
}

/// # Safety
/// The lengths are those `forward` checks, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn forward_neon<const RELU: bool>(s: CellForward<'_, f32>) {
    let CellForward { active, hidden: h, xg, hg, b_hh, gates, m, .. } = s;
    for (b, &on) in active.iter().enumerate() {
        let gates = &mut gates[b * h..(b + 1) * h];
        if !on {
            gates.fill(0.0);
            continue;
        }
        let (xg, hg, m) = (&xg[b * h..(b + 1) * h], &hg[b * h..(b + 1) * h], &mut m[b * h..(b + 1) * h]);
        for_each_vector(h, |j, n| {
            // SAFETY: j + n <= h, the length of every row and of b_hh.
            unsafe {
                let mut a = vaddq_f32(load(xg, j, n), load(hg, j, n));
                if let Some(bh) = b_hh {
                    a = vaddq_f32(a, load(bh, j, n));
                }
                let v = if RELU {
                    // As the reference: a < 0 ? 0 : a, which keeps -0 and NaN.
                    let zero = vdupq_n_f32(0.0);
                    vbslq_f32(vcltq_f32(a, zero), zero, a)
                } else {
                    tanh(a)
                };
                store(gates, j, n, v);
                store(m, j, n, v);
            }
        });
    }
}

/// Checks the lengths of `s`, then runs the backward step.
///
/// # Safety
/// The CPU must support NEON.
pub(super) unsafe fn backward<const RELU: bool>(s: CellBackward<'_, f32>) {
    let (rows, h) = (s.active.len(), s.hidden);
    for (name, len) in
        [("gates", s.gates.len()), ("dm", s.dm.len()), ("dgi", s.dgi.len()), ("dgh", s.dgh.len()), ("dh_direct", s.dh_direct.len())]
    {
        check_len(name, len, rows * h);
    }
    // SAFETY: the lengths were checked; the caller guarantees NEON.
    unsafe { backward_neon::<RELU>(s) }
}

/// # Safety
/// The lengths are those `backward` checks, and the CPU supports NEON.
#[target_feature(enable = "neon")]
unsafe fn backward_neon<const RELU: bool>(s: CellBackward<'_, f32>) {
    let CellBackward { active, hidden: h, gates, dm, dgi, dgh, dh_direct, .. } = s;
    // The recurrence only goes through W_hh.
    dh_direct.fill(0.0);
    for (b, &on) in active.iter().enumerate() {
        let dgi = &mut dgi[b * h..(b + 1) * h];
        let dgh = &mut dgh[b * h..(b + 1) * h];
        if !on {
            dgi.fill(0.0);
            dgh.fill(0.0);
            continue;
        }
        let (v, dm) = (&gates[b * h..(b + 1) * h], &dm[b * h..(b + 1) * h]);
        for_each_vector(h, |j, n| {
            // SAFETY: j + n <= h, the length of every row.
            unsafe {
                let one = vdupq_n_f32(1.0);
                let v = load(v, j, n);
                let d = if RELU {
                    // [v > 0] as 1.0 or 0.0, multiplied like the reference (so dm = inf gives NaN at 0).
                    vbslq_f32(vcgtq_f32(v, vdupq_n_f32(0.0)), one, vdupq_n_f32(0.0))
                } else {
                    vsubq_f32(one, vmulq_f32(v, v))
                };
                let da = vmulq_f32(load(dm, j, n), d);
                store(dgi, j, n, da);
                store(dgh, j, n, da);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{backward_matches_reference, forward_matches_reference, results_do_not_depend_on_position};
    use crate::config::CellKind;

    #[test]
    fn rnn_forward_matches_reference() {
        forward_matches_reference(CellKind::RnnTanh);
        let worst = forward_matches_reference(CellKind::RnnRelu);
        assert_eq!((worst.abs, worst.rel), (0.0, 0.0), "relu forward has no approximation: it must be bit-identical");
    }

    #[test]
    fn rnn_backward_matches_reference() {
        for cell in [CellKind::RnnTanh, CellKind::RnnRelu] {
            let worst = backward_matches_reference(cell);
            assert_eq!((worst.abs, worst.rel), (0.0, 0.0), "{cell} backward has no approximation: it must be bit-identical");
        }
    }

    #[test]
    fn rnn_results_do_not_depend_on_position() {
        results_do_not_depend_on_position(CellKind::RnnTanh);
        results_do_not_depend_on_position(CellKind::RnnRelu);
    }
}
