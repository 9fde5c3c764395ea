//! Finite-difference gradient checks of the f64 reference: every input, initial state and
//! parameter, for every cell, 1 to 3 layers, both directions, variable lengths, projection,
//! with and without bias.
//!
//! Each analytic gradient `a` is compared with the fourth-order central difference
//! `n = (8 (L(p + h) - L(p - h)) - (L(p + 2h) - L(p - 2h))) / 12h` (truncation error O(h⁴), so
//! with `h = 1e-3` both truncation and rounding stay near 1e-11). ReLU is not differentiable at
//! 0, and a difference whose stencil straddles a kink is meaningless, so for `rnn_relu` the
//! step is `h = 1e-5` (rounding error near 1e-10, and a 100 times smaller chance that a
//! pre-activation lies within the stencil). The relative error `|a - n| / max(|a|, |n|, 1e-3)` must be
//! below 1e-6. (The floor keeps the ratio meaningful for gradients that are exactly zero, such
//! as those of padded inputs.)

// `!(e <= worst)` on purpose: a NaN error must count as a failure, not be skipped.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::fd::{self, central_difference, rel_err, H, TOL};

use common::{sweep_configs, F64Problem, Problem};
use rnn_kernels::{Reference, Rnn, SeqShape};

fn sweep(shape: &SeqShape, seed: u64) {
    let configs = sweep_configs(3, 5, 3);
    assert!(configs.len() >= 60, "the sweep must cover every combination");
    fd::sweep(&configs, shape, |k, cfg| Problem::random(cfg, shape, seed + k as u64, 1.5));
}

#[test]
fn gradients_match_finite_differences_full_length() {
    sweep(&SeqShape::new(4, 2).unwrap(), 100);
}

#[test]
fn gradients_match_finite_differences_variable_lengths() {
    // Unsorted, with a full-length and a length-1 sequence.
    sweep(&SeqShape::with_lengths(5, vec![3, 5, 1]).unwrap(), 200);
}

#[test]
fn gradients_match_finite_differences_single_step_single_sequence() {
    sweep(&SeqShape::new(1, 1).unwrap(), 300);
}

/// The check itself must be able to fail: a gradient with a deliberate error is caught.
#[test]
fn gradcheck_detects_a_wrong_gradient() {
    let cfg = rnn_kernels::RnnConfig::new(rnn_kernels::CellKind::Gru, 3, 4).build().unwrap();
    let p = Problem::random(&cfg, &SeqShape::new(3, 2).unwrap(), 9, 1.0);
    let rnn = Rnn::new(Reference, &p.cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    rnn.forward_training(&p.shape, &p.x, Some(&p.h0), None, &mut reserve).unwrap();
    let g = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), None).unwrap();
    let i = 5;
    let mut q = p.clone();
    let orig = q.params[i];
    let n = central_difference(H, &mut |d| {
        q.params[i] = orig + d;
        q.loss()
    });
    let a = g.dparams.unwrap()[i];
    assert!(rel_err(a, n) < TOL);
    assert!(rel_err(a * 1.000005, n) > TOL, "a 5e-6 relative error must be detected");
}
