//! Finite differences of the f64 reference: the gradient checks of `tests/gradcheck.rs` and of
//! the cell options' tests (`lstm_options.rs`, `gru_options.rs`, `driver_options.rs`).

use super::{describe, F64Problem, Problem};
use rnn_kernels::{CellKind, Reference, Rnn, RnnConfig, SeqShape};
use std::collections::BTreeMap;

/// Step for smooth cells.
pub const H: f64 = 1e-3;
/// Step for cells with a kink (relu, a gate clip).
pub const H_KINK: f64 = 1e-5;
/// Step of the one-sided differences at a clip's kink.
pub const H_SIDE: f64 = 1e-4;
/// The largest relative error of an analytic gradient against its finite difference.
pub const TOL: f64 = 1e-6;

/// The fourth-order central difference of `f` at 0 with step `h`.
pub fn central_difference(h: f64, f: &mut dyn FnMut(f64) -> f64) -> f64 {
    (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h)
}

/// The fourth-order one-sided difference of `f` at 0 with step `h` (negative: the left side).
pub fn one_sided_difference(h: f64, f: &mut dyn FnMut(f64) -> f64) -> f64 {
    (-25.0 * f(0.0) + 48.0 * f(h) - 36.0 * f(2.0 * h) + 16.0 * f(3.0 * h) - 3.0 * f(4.0 * h)) / (12.0 * h)
}

/// `|a - n|` relative to the larger of the two (at least 1e-3).
pub fn rel_err(a: f64, n: f64) -> f64 {
    (a - n).abs() / a.abs().max(n.abs()).max(1e-3)
}

/// Checks every coordinate of `x`, `h0`, `c0` and the parameters of one problem against the
/// reference's gradients; returns the worst relative error and where it was.
///
/// The step is [`H_KINK`] for relu and clipped cells, else [`H`]; [`H_KINK`] for layer norm
/// too, whose loss curves sharply where a normalised row's variance is small (its derivatives
/// grow with powers of `rstd`, up to `1/sqrt(ε) ≈ 316`): the fourth-order difference with
/// [`H`] misses by up to 1e-1 there, with [`H_KINK`] it agrees to 1e-9. With a gate clip, a
/// coordinate whose central difference straddles a clamp's kink (a pre-activation within a
/// few steps of `±clip`, where the loss has two one-sided slopes) also tries the one-sided
/// differences on both sides and keeps the closest: the analytic gradient is the slope of one
/// side, the central difference their mixture.
// `!(e <= worst)` on purpose: a NaN error must count as a failure, not be skipped.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn gradcheck(p: &Problem) -> (f64, String) {
    let rnn = Rnn::new(Reference, &p.cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    rnn.forward_training_masked(&p.shape, &p.x, Some(&p.h0), p.c0.as_deref(), p.masks(), &mut reserve).unwrap();
    let g = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), p.dcn.as_deref()).unwrap();
    let clipped = p.cfg.gate_clip().is_some();
    let h = if clipped || p.cfg.cell() == CellKind::RnnRelu || p.cfg.layer_norm() { H_KINK } else { H };
    // With layer norm one parameter moves every pre-activation of its layer-direction, so
    // kinks lie closer together: the one-sided differences also try the step `H_KINK`.
    let sides: &[f64] = if p.cfg.layer_norm() { &[H_SIDE, -H_SIDE, H_KINK, -H_KINK] } else { &[H_SIDE, -H_SIDE] };
    let mut worst = (0.0, String::new());
    let mut probe = |name: &str, analytic: &[f64], get: &dyn Fn(&mut Problem) -> &mut Vec<f64>| {
        let mut q = p.clone();
        for (i, &a) in analytic.iter().enumerate() {
            let orig = get(&mut q)[i];
            let mut at = |d: f64| {
                get(&mut q)[i] = orig + d;
                q.loss()
            };
            let mut n = central_difference(h, &mut at);
            let mut e = rel_err(a, n);
            if clipped && !(e < TOL) {
                for &side in sides {
                    let ns = one_sided_difference(side, &mut at);
                    if rel_err(a, ns) < e {
                        (n, e) = (ns, rel_err(a, ns));
                    }
                }
            }
            get(&mut q)[i] = orig;
            if !(e <= worst.0) {
                worst = (e, format!("{name}[{i}]: analytic {a:.12e}, numeric {n:.12e}"));
            }
        }
    };
    probe("x", &g.dx, &|q| &mut q.x);
    probe("h0", &g.dh0, &|q| &mut q.h0);
    if let Some(dc0) = &g.dc0 {
        probe("c0", dc0, &|q| q.c0.as_mut().unwrap());
    }
    probe("params", g.dparams.as_ref().unwrap(), &|q| &mut q.params);
    worst
}

/// [`gradcheck`] of `problem(k, cfg)` for the `k`-th of `configs` on `shape`: every failure
/// listed (the configuration, its options, the worst error and where), the worst error per
/// cell printed.
// `!(err < TOL)` on purpose: a NaN error must count as a failure.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn sweep(configs: &[RnnConfig], shape: &SeqShape, problem: impl Fn(usize, &RnnConfig) -> Problem) {
    let mut failures = Vec::new();
    let mut worst = BTreeMap::<String, f64>::new();
    for (k, cfg) in configs.iter().enumerate() {
        let (err, at) = gradcheck(&problem(k, cfg));
        let w = worst.entry(cfg.cell().to_string()).or_insert(0.0);
        *w = w.max(err);
        if !(err < TOL) {
            failures.push(format!("{} options {:?}: rel err {err:.2e} at {at}", describe(cfg, shape), cfg.options()));
        }
    }
    let summary: Vec<String> = worst.iter().map(|(c, e)| format!("{c} {e:.2e}")).collect();
    eprintln!("{} configurations, worst relative error per cell: {}", configs.len(), summary.join(", "));
    assert!(failures.is_empty(), "{} of {} configurations fail:\n{}", failures.len(), configs.len(), failures.join("\n"));
}
