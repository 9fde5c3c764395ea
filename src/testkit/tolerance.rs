//! Derived error bounds of f16 and bf16 storage: the CUDA backend's 16-bit paths (16-bit
//! weights, inputs, outputs, hidden states and GEMM operands; f32 GEMM accumulation, f32 cell
//! maths, f32 cell state and carried gradients) against the f64 reference run on the same
//! 16-bit-rounded weights, inputs and incoming gradients.
//!
//! The model (DEVELOPERS.md, "f16 and bf16 storage", says it at length), with `u` the unit
//! roundoff (2^-11 for f16, 2^-8 for bf16), `T` steps, `B` rows, `L` layers, and magnitudes
//! taken from the problem and the reference run:
//!
//! - a stored 16-bit value is off by at most `u` relative (one rounding to nearest); the
//!   weights, `x`, `h0`, `c0` and the incoming gradients are exact (the reference uses the same
//!   rounded values);
//! - a GEMM of exact 16-bit operands accumulated in f32, and the f32 pointwise maths, add at
//!   most `(K + 8)·2^-24` of the pre-activation magnitude `a·M_x + 2·|b|` per step (`a` the
//!   largest row abs-sum of a weight matrix: the GEMM's gain in the max norm);
//! - first order, the errors of the `L·T` stored states on a path add, each amplified by at
//!   most a gain `g_f`: 1 for the plain cells (the premise that a step does not amplify an
//!   error of its inputs, so that errors add instead of compounding), and for a
//!   layer-normalised stack the problem's measured gain ([`sampled_gains`]: how much the
//!   reference's outputs move for a relative perturbation of its inputs and initial states,
//!   not taken below 1): forward outputs (`y`, `hn`, `cn`)
//!   `e_f = g_f·(L·T + 1)·(u·max(M_h, M_c) + f32 part)`;
//! - backward, each step stores `dG` rounded (`≤ u·M_g`; twice with layer norm, whose `dGi`
//!   and `dHG_raw` are rounded again after the normalisation's backward) and reads forward
//!   states off by `≤ e_f`, amplified by the backward gain `g_b` (1, or with layer norm the
//!   same measure on the upstream gradients): `e_b = g_b·((r·L·T + 1)·u·M_g + L·T·M_g·e_f)` for `dx`, `dh0`,
//!   `dc0`, `r` the roundings of `dG` a step;
//! - a weight gradient sums `T·B` products `dG·v` (`v` the layer input or `h_prev`, or with
//!   layer norm a normalised value, `|x̂| ≤ √n` in a row of `n`), each off by
//!   `≤ M_v·(u·M_g + e_b) + M_g·e_f`, summed worst case, then rounded once:
//!   `e_p = u·|dW| + T·B·(M_v·(u·M_g + e_b) + M_g·e_f)`.
//!
//! Gain 1 is a premise, not a measurement: the sampled gains of the plain test problems under
//! PyTorch's initialisation are mostly below 1 but reach about 2 (forward) and 4 (backward,
//! against the given gradients; DEVELOPERS.md has the figures), which the worst-case sums
//! (every rounding error of the same sign and at its largest) absorb with a wide margin. A
//! layer norm amplifies a relative error of a row by its `rstd` times the row's largest value
//! (sampled gains up to about 5 forward and 6 backward on the layer-norm test's short problems,
//! 21 and 37 on nine-step, two-layer ones): there the gain
//! is taken from the problem. The
//! observed errors are far below the bounds (the tests print the worst ratio); the bit-exact
//! checks of the conversions and of the emulated GEMM pin the roundings themselves.

use super::problem::problem_masks;
use crate::backend::Reference;
use crate::{ParamLayout, Rnn, RnnConfig, SeqShape};

/// The outputs [`half_storage_bounds`] bounds, in its order.
pub use super::problem::OUTPUTS;

/// A problem as the reference sees it: every value already rounded to the 16-bit type, as f64.
#[derive(Debug, Clone, Copy)]
pub struct HalfInputs<'a> {
    /// The configuration.
    pub cfg: &'a RnnConfig,
    /// The shape.
    pub shape: &'a SeqShape,
    /// The storage type's unit roundoff: 2^-11 (f16) or 2^-8 (bf16).
    pub u: f64,
    /// The flat parameters.
    pub params: &'a [f64],
    /// `x`, `h0`, `c0` (LSTM), `dy`, `dhn`, `dcn` (LSTM).
    pub x: &'a [f64],
    /// See `x`.
    pub h0: &'a [f64],
    /// See `x`.
    pub c0: Option<&'a [f64]>,
    /// See `x`.
    pub dy: &'a [f64],
    /// See `x`.
    pub dhn: &'a [f64],
    /// See `x`.
    pub dcn: Option<&'a [f64]>,
}

impl<'a> HalfInputs<'a> {
    /// A problem's values (already of the 16-bit type, widened to f64) with the storage type's
    /// unit roundoff `u`.
    pub fn of(p: &'a super::Problem<f64>, u: f64) -> Self {
        HalfInputs {
            cfg: &p.cfg,
            shape: &p.shape,
            u,
            params: &p.params,
            x: &p.x,
            h0: &p.h0,
            c0: p.c0.as_deref(),
            dy: &p.dy,
            dhn: &p.dhn,
            dcn: p.dcn.as_deref(),
        }
    }
}

/// The bound on `|16-bit result - reference|` (absolute, per element) of each output, in the
/// order of [`OUTPUTS`]; `want` is the reference's `[y, hn, cn, dx, dh0, dc0, dparams]` on the
/// same inputs (`cn`, `dc0` empty for cells without a cell state).
pub fn half_storage_bounds(p: &HalfInputs<'_>, want: &[Vec<f64>]) -> [f64; 7] {
    let (cfg, shape, u) = (p.cfg, p.shape, p.u);
    let (tl, bl, nl) = (shape.steps() as f64, shape.batch() as f64, cfg.num_layers());
    let maxabs = |v: &[f64]| v.iter().fold(0.0f64, |m, a| m.max(a.abs()));
    let params = p.params;
    let layout = ParamLayout::new(cfg);
    // a: the largest row abs-sum of a weight matrix (the gain of x -> W x in the max norm);
    // at: the largest column abs-sum (of dG -> dG W); bmax: the largest bias.
    let (mut a, mut at, mut bmax) = (0.0f64, 0.0f64, 0.0f64);
    for l in 0..nl {
        for d in 0..cfg.num_directions() {
            let lr = layout.layer(l, d);
            let gh = cfg.gates() * cfg.hidden_size();
            let mut mats = vec![(&lr.w_ih, gh, cfg.layer_input_size(l)), (&lr.w_hh, gh, cfg.hidden_out_size())];
            if let Some(r) = &lr.w_hr {
                mats.push((r, cfg.hidden_out_size(), cfg.hidden_size()));
            }
            for (r, rows, cols) in mats {
                let m = &params[r.clone()];
                for i in 0..rows {
                    a = a.max((0..cols).map(|j| m[i * cols + j].abs()).sum());
                }
                for j in 0..cols {
                    at = at.max((0..rows).map(|i| m[i * cols + j].abs()).sum());
                }
            }
            for r in [&lr.b_ih, &lr.b_hh].into_iter().flatten() {
                bmax = bmax.max(maxabs(&params[r.clone()]));
            }
        }
    }
    // M_h: the largest hidden state or layer output (every layer's, from the reference run
    // on the first l + 1 layers, whose parameters are a prefix of the flat buffer).
    let mut m_h = [maxabs(&want[0]), maxabs(&want[1]), maxabs(p.h0), 1.0].into_iter().fold(0.0, f64::max);
    for l in 0..nl - 1 {
        // The same configuration, options included (a batch-first x is read as such), on fewer
        // layers.
        let sub = cfg.to_builder().num_layers(l + 1).build().unwrap();
        let n = ParamLayout::new(&sub).len();
        let rnn = Rnn::new(Reference, &sub, &params[..n]).unwrap();
        let o = rnn.forward(shape, p.x, None, None).unwrap();
        m_h = m_h.max(maxabs(&o.y)).max(maxabs(&o.hn));
    }
    let m_x = maxabs(p.x).max(m_h);
    let m_c = [maxabs(&want[2]), p.c0.map_or(0.0, maxabs)].into_iter().fold(1.0, f64::max);
    // The gains: measured with layer norm (whose rows amplify a relative error by their
    // rstd), 1 for the plain cells (the premise of their bounds, see the module docs).
    let (g_f, g_b) = if cfg.layer_norm() { sampled_gains(p) } else { (1.0, 1.0) };
    let (g_f, g_b) = (g_f.max(1.0), g_b.max(1.0));
    // M_g: the largest gradient given or returned.
    let m_g = [&want[3][..], &want[4], &want[5], p.dy, p.dhn, p.dcn.unwrap_or_default()].iter().map(|v| maxabs(v)).fold(1.0, f64::max);
    // The f32 part of a step: a K-term GEMM accumulated in f32 and the f32 pointwise maths,
    // ≤ (K + 8)·2^-24 of the pre-activation magnitude a·M_x + 2·|b|.
    let k = cfg.input_size().max(cfg.output_size()).max(cfg.hidden_size()) as f64;
    let f32_step = (k + 8.0) * (-24f64).exp2() * (a * m_x + 2.0 * bmax);
    // Forward: L·T stored states (h, or m and h with a projection, the layer outputs) each
    // rounded (≤ u·M_h), plus the output's own rounding; first order, each amplified by at
    // most the measured gain g_f, the roundings adding:
    // e_f = g_f·(L·T + 1)·(u·max(M_h, M_c) + f32 part).
    let lt = nl as f64 * tl;
    let e_f = g_f * (lt + 1.0) * (u * m_h.max(m_c) + f32_step);
    // Backward: each step stores dG rounded r times (≤ r·u·M_g; layer norm rounds dGi and
    // dHG_raw again after its backward) and reads forward states off by ≤ e_f (through
    // derivatives bounded by 1), each amplified by at most g_b:
    // e_b = g_b·((r·L·T + 1)·u·M_g + L·T·M_g·e_f).
    let r = if cfg.layer_norm() { 2.0 } else { 1.0 };
    let e_b = g_b * ((r * lt + 1.0) * u * m_g + lt * m_g * e_f);
    // dW = Σ over the T·B (step, row) pairs of dG·v (v the layer input or h_prev; for a
    // layer norm's gain a normalised value, |x̂| ≤ √n in a row of n = G·H), each term off by
    // ≤ M_v·(u·M_g + e_b) + M_g·e_f, then rounded once (≤ u·|dW|). The T·B terms' errors
    // are summed worst case.
    let m_v = if cfg.layer_norm() { m_x.max(((cfg.gates() * cfg.hidden_size()) as f64).sqrt()) } else { m_x };
    let e_p = u * maxabs(&want[6]) + tl * bl * (m_v * (u * m_g + e_b) + m_g * e_f);
    [e_f, e_f, e_f, e_b, e_b, e_b, e_p]
}

/// The problem's first-order gains `(g_f, g_b)`, measured on the f64 reference (with the
/// masks every [`Problem`](super::Problem) trains with) in 8 random directions:
///
/// - `g_f`: `max |Δ(y, hn, cn)| / max |δ|` for a relative perturbation `δ = ε·s⊙v` (`s` random
///   signs, `ε = 2^-20`) of all of `x`, `h0`, `c0`, by a central difference: how much an error
///   of a stored value (a rounding is relative) grows on its way to the outputs;
/// - `g_b`: `max |(dx, dh0, dc0)(s⊙dy, s⊙dhn, s⊙dcn)| / max |(dy, dhn, dcn)|`, the backward
///   pass being linear in the upstream gradients: the same for an error of a stored `dG`.
///
/// Sampled, not a supremum: the worst direction can grow more, which the bounds' worst-case
/// sums (every error of the same sign, each at its largest) absorb.
pub fn sampled_gains(p: &HalfInputs<'_>) -> (f64, f64) {
    let rnn = Rnn::new(Reference, p.cfg, p.params).expect("the problem's configuration and parameters");
    let forward = |x: &[f64], h0: &[f64], c0: Option<&[f64]>| {
        let mut reserve = Default::default();
        let o = rnn.forward_training_masked(p.shape, x, Some(h0), c0, problem_masks(), &mut reserve).expect("the reference's forward");
        (o, reserve)
    };
    let maxdiff = |a: &[f64], b: &[f64]| a.iter().zip(b).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let maxabs = |v: &[f64]| v.iter().fold(0.0f64, |m, a| m.max(a.abs()));
    let (_, reserve) = forward(p.x, p.h0, p.c0);
    let mut rng = crate::rng::SplitMix64::new(0x9a1e_5eed);
    let (mut g_f, mut g_b) = (0.0f64, 0.0f64);
    let eps = (-20f64).exp2();
    for _ in 0..8 {
        let mut signs = |v: &[f64]| -> Vec<f64> { v.iter().map(|a| if rng.next_u64() >> 63 == 1 { *a } else { -*a }).collect() };
        let (dx, dh, dc) = (signs(p.x), signs(p.h0), p.c0.map(&mut signs));
        let (dy, dhn, dcn) = (signs(p.dy), signs(p.dhn), p.dcn.map(&mut signs));
        let moved = |k: f64| {
            let v = |a: &[f64], d: &[f64]| a.iter().zip(d).map(|(a, d)| a + k * eps * d).collect::<Vec<f64>>();
            let c0 = p.c0.zip(dc.as_deref()).map(|(a, d)| v(a, d));
            forward(&v(p.x, &dx), &v(p.h0, &dh), c0.as_deref()).0
        };
        let (up, down) = (moved(1.0), moved(-1.0));
        let delta = [maxabs(&dx), maxabs(&dh), dc.as_deref().map_or(0.0, maxabs)].into_iter().fold(0.0, f64::max) * eps;
        let moved_out = [
            maxdiff(&up.y, &down.y),
            maxdiff(&up.hn, &down.hn),
            up.cn.as_deref().zip(down.cn.as_deref()).map_or(0.0, |(a, b)| maxdiff(a, b)),
        ]
        .into_iter()
        .fold(0.0, f64::max)
            / 2.0;
        if delta > 0.0 {
            g_f = g_f.max(moved_out / delta);
        }
        let g = rnn.backward(&reserve, Some(&dy), Some(&dhn), dcn.as_deref()).expect("the reference's backward");
        let given = [maxabs(&dy), maxabs(&dhn), dcn.as_deref().map_or(0.0, maxabs)].into_iter().fold(0.0, f64::max);
        let out = [maxabs(&g.dx), maxabs(&g.dh0), g.dc0.as_deref().map_or(0.0, maxabs)].into_iter().fold(0.0, f64::max);
        if given > 0.0 {
            g_b = g_b.max(out / given);
        }
    }
    (g_f, g_b)
}

/// The f64 reference's outputs on `p`, in the order of [`OUTPUTS`]: a training forward from
/// `h0`, `c0`, then backward from `dy`, `dhn`, `dcn` (`cn`, `dc0` empty for cells without a
/// cell state).
pub fn reference_outputs(p: &HalfInputs<'_>) -> crate::Result<Vec<Vec<f64>>> {
    let rnn = Rnn::new(Reference, p.cfg, p.params)?;
    let mut reserve = Default::default();
    let o = rnn.forward_training(p.shape, p.x, Some(p.h0), p.c0, &mut reserve)?;
    let g = rnn.backward(&reserve, Some(p.dy), Some(p.dhn), p.dcn)?;
    Ok(vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap_or_default()])
}

/// `max |got - want| / bound` of each output, in the order of [`OUTPUTS`]: infinite where an
/// output has the wrong length or holds a NaN (so a ratio ≤ 1 means within the bound).
pub fn error_ratios(got: &[Vec<f64>], want: &[Vec<f64>], bounds: &[f64; 7]) -> [f64; 7] {
    std::array::from_fn(|i| {
        if got[i].len() != want[i].len() {
            return f64::INFINITY;
        }
        let err =
            got[i].iter().zip(&want[i]).map(|(g, w)| (g - w).abs()).fold(0.0f64, |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) });
        err / bounds[i]
    })
}
