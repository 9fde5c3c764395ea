//! Layer norm's kernels on the host emulation (kernels/layer_norm.cu, and
//! `lstm_backward_step_ln` of kernels/lstm_pointwise.cu) against f64 row functions written
//! here from the maths of `RnnConfigBuilder::layer_norm`:
//!
//! - the row normalisation forward (in place, with and without `β`, saving `x̂` and `rstd` or
//!   not), its backward (out of place and in place) and the gains' and biases' column sums,
//!   against the f64 row and the central differences of `Σ dy⊙LN(v)`;
//! - the layer-normalised LSTM's output (`lstm_ln_cell_forward` after the step kernel) against an
//!   f64 row of units, and its backward (`lstm_ln_cell_backward`, then `lstm_backward_step_ln`)
//!   against the central differences of that f64 row, with every combination of the LSTM
//!   options (peepholes, gate clip, coupled input-forget). Row 2 of the batch is inactive.
//!
//! - the driver with layer norm (`driver/layer_norm.rs`) against the f64 reference backend: LSTM
//!   and GRU with every other option, layers, directions, merge modes, projection, batch-first,
//!   variable lengths, training and inference, Accumulate, bit-identical reruns; the forward
//!   layer wavefront's chunks bit for bit against the layer-by-layer order; the persistent
//!   kernels declining layer norm, and 16-bit storage refused.
//!
//! Tolerances are the option tests' (1e-5 forward, 1e-4 gradients, `max_error`).

use super::super::driver::{backward, forward, options, BackwardViews, CudaReserve, ForwardViews, SavedViews};
use super::super::emulation::Emulation;
use super::super::exec::Exec;
use super::super::kernels as k;
use super::oracle::{addr, addr_mut, check, clamp, gradient, random_in as random, sigmoid, wide, LstmOpts};
use super::{nans, up, view, view_mut, Problem, WithPaths};
use crate::backend::GradMode;
use crate::element::Dtype;
use crate::error::Error;
use crate::testkit::case::max_error;
use crate::testkit::SplitMix64;
use crate::{CellKind, Direction, Merge, ParamLayout, RnnConfig, SeqShape};
use proptest::prelude::*;

const LN_EPS: f64 = 1e-5;

fn same_bits(what: &str, a: &[f32], b: &[f32]) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b), "{what}");
}

/// The f64 row layer norm: `(x̂, rstd)` of `v` (mean first, then the squared deviations).
fn normalise(v: &[f64]) -> (Vec<f64>, f64) {
    let w = v.len() as f64;
    let mean = v.iter().sum::<f64>() / w;
    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / w;
    let rstd = 1.0 / (var + LN_EPS).sqrt();
    (v.iter().map(|a| (a - mean) * rstd).collect(), rstd)
}

/// `γ⊙x̂ + β` of the row `v`.
fn ln_row(v: &[f64], gamma: &[f64], beta: Option<&[f64]>) -> Vec<f64> {
    let (xh, _) = normalise(v);
    xh.iter().enumerate().map(|(j, x)| gamma[j] * x + beta.map_or(0.0, |b| b[j])).collect()
}

/// Gains `1 + U(-0.5, 0.5)` and biases `U(-0.5, 0.5)`, so that a forgotten gain or bias shows.
fn gains(rng: &mut SplitMix64, n: usize) -> (Vec<f32>, Vec<f32>) {
    (random(rng, n, 0.5, 1.5), random(rng, n, -0.5, 0.5))
}

fn ln_forward(
    exec: &Exec<'_>,
    rows: usize,
    w: usize,
    v: &mut [f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    save: Option<(&mut [f32], &mut [f32])>,
) {
    let (xhat, rstd) = save.map_or((0, 0), |(x, r)| (addr_mut(x), addr_mut(r)));
    let args = k::LayerNormForwardArgs {
        rows: rows as i32,
        width: w as i32,
        v: addr_mut(v),
        gamma: addr(gamma),
        beta: beta.map_or(0, addr),
        xhat,
        rstd,
    };
    exec.launch_rows(0, k::LayerNormForward, Dtype::F32, rows, &args).unwrap();
}

/// The row normalisation forward, its backward and the column sums, for several widths (one
/// unit, odd, wider than a warp), with and without `β`.
#[test]
fn emulated_layer_norm_rows_match_f64() {
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let rows = 4;
    for seed in 0..6u64 {
        for w in [1usize, 7, 20, 45] {
            for with_beta in [true, false] {
                let what = format!("seed {seed}, width {w}, beta {with_beta}");
                let mut rng = SplitMix64::new(seed * 100 + w as u64);
                let v0 = random(&mut rng, rows * w, -3.0, 3.0);
                let (gamma, beta) = gains(&mut rng, w);
                let beta = with_beta.then_some(&beta[..]);
                // Forward, saving x̂ and rstd.
                let (mut v, mut xhat, mut rstd) = (v0.clone(), vec![f32::NAN; rows * w], vec![f32::NAN; rows]);
                ln_forward(&exec, rows, w, &mut v, &gamma, beta, Some((&mut xhat, &mut rstd)));
                let (g64, b64) = (wide(&gamma), beta.map(wide));
                let (mut want_v, mut want_x, mut want_r) = (Vec::new(), Vec::new(), Vec::new());
                for r in 0..rows {
                    let row = wide(&v0[r * w..(r + 1) * w]);
                    let (xh, rs) = normalise(&row);
                    want_v.extend(ln_row(&row, &g64, b64.as_deref()));
                    want_x.extend(xh);
                    want_r.push(rs);
                }
                check(&format!("{what}: LN(v)"), &v, &want_v, 1e-5);
                check(&format!("{what}: x̂"), &xhat, &want_x, 1e-5);
                // rstd up to 1/sqrt(ε) (width 1): relative.
                let rel: Vec<f32> = rstd.iter().zip(&want_r).map(|(&a, &b)| (a as f64 / b) as f32).collect();
                check(&format!("{what}: rstd / want"), &rel, &vec![1.0; rows], 1e-5);
                // Inference (nothing saved): the same bits.
                let mut vi = v0.clone();
                ln_forward(&exec, rows, w, &mut vi, &gamma, beta, None);
                same_bits(&format!("{what}: inference"), &vi, &v);

                // Backward against the differences of L(v) = Σ dy⊙LN(v).
                let dy = random(&mut rng, rows * w, -1.0, 1.0);
                let mut dx = vec![f32::NAN; rows * w];
                let args = k::LayerNormBackwardArgs {
                    rows: rows as i32,
                    width: w as i32,
                    dy: addr(&dy),
                    gamma: addr(&gamma),
                    xhat: addr(&xhat),
                    rstd: addr(&rstd),
                    dx: addr_mut(&mut dx),
                };
                exec.launch_rows(0, k::LayerNormBackward, Dtype::F32, rows, &args).unwrap();
                let mut want_dx = Vec::new();
                for r in 0..rows {
                    let dyr = wide(&dy[r * w..(r + 1) * w]);
                    let loss = |x: &[f64]| ln_row(x, &g64, b64.as_deref()).iter().zip(&dyr).map(|(a, d)| a * d).sum::<f64>();
                    want_dx.extend(gradient(&wide(&v0[r * w..(r + 1) * w]), loss));
                }
                // dx scales with rstd (up to 1/sqrt(ε) for one unit, where it is 0).
                check(&format!("{what}: dx"), &dx, &want_dx, 1e-4);
                let mut inplace = dy.clone();
                let args = k::LayerNormBackwardArgs { dy: addr(&inplace), dx: addr_mut(&mut inplace), ..args };
                exec.launch_rows(0, k::LayerNormBackward, Dtype::F32, rows, &args).unwrap();
                same_bits(&format!("{what}: in place"), &inplace, &dx);

                // dγ, dβ onto accumulators that hold something already.
                let (dg0, db0) = (random(&mut rng, w, -1.0, 1.0), random(&mut rng, w, -1.0, 1.0));
                let (mut dgamma, mut dbeta) = (dg0.clone(), db0.clone());
                let args = k::LayerNormParamGradsArgs {
                    rows: rows as i32,
                    width: w as i32,
                    dy: addr(&dy),
                    xhat: addr(&xhat),
                    dgamma: addr_mut(&mut dgamma),
                    dbeta: if with_beta { addr_mut(&mut dbeta) } else { 0 },
                };
                exec.launch_typed(0, k::LayerNormParamGrads, Dtype::F32, w, &args).unwrap();
                let mut p = g64.clone();
                p.extend(b64.clone().unwrap_or_else(|| vec![0.0; w]));
                let loss = |p: &[f64]| {
                    (0..rows)
                        .map(|r| {
                            let out = ln_row(&wide(&v0[r * w..(r + 1) * w]), &p[..w], Some(&p[w..]));
                            out.iter().zip(&dy[r * w..(r + 1) * w]).map(|(a, &d)| a * d as f64).sum::<f64>()
                        })
                        .sum::<f64>()
                };
                let grad = gradient(&p, loss);
                let want_dg: Vec<f64> = (0..w).map(|j| dg0[j] as f64 + grad[j]).collect();
                check(&format!("{what}: dγ"), &dgamma, &want_dg, 1e-4);
                if with_beta {
                    let want_db: Vec<f64> = (0..w).map(|j| db0[j] as f64 + grad[w + j]).collect();
                    check(&format!("{what}: dβ"), &dbeta, &want_db, 1e-4);
                } else {
                    same_bits(&format!("{what}: dβ untouched"), &dbeta, &db0);
                }
            }
        }
    }
}

/// Rows (row 2 inactive) and units of the LSTM cases.
const B: usize = 3;
const H: usize = 6;
const LENGTHS: [i32; B] = [1, 1, 0];

fn active(b: usize) -> bool {
    LENGTHS[b] > 0
}

/// One row of a layer-normalised LSTM step in f64 from `x` = per unit `[a_i, a_f, a_g, a_o,
/// c_prev, p_i, p_f, p_o]` (`8·H` values: the normalised pre-activations with their biases):
/// `(gates [4, H], c [H], m [H])`, `m = o⊙tanh(γ_c⊙ĉ + β_c)`.
fn lstm_ln_row(x: &[f64], o: LstmOpts, gamma: &[f64], beta: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut gates, mut c, mut og) = (vec![0.0; 4 * H], vec![0.0; H], vec![0.0; H]);
    for j in 0..H {
        let u = &x[8 * j..8 * j + 8];
        let (a, cp, p) = (&u[0..4], u[4], &u[5..8]);
        let i = sigmoid(clamp(a[0] + p[0] * cp, o.clip));
        let f = if o.input_forget { 1.0 - i } else { sigmoid(clamp(a[1] + p[1] * cp, o.clip)) };
        let g = clamp(a[2], o.clip).tanh();
        c[j] = f * cp + i * g;
        og[j] = sigmoid(clamp(a[3] + p[2] * c[j], o.clip));
        for (kk, v) in [i, f, g, og[j]].into_iter().enumerate() {
            gates[kk * H + j] = v;
        }
    }
    let s = ln_row(&c, gamma, Some(beta));
    let m = (0..H).map(|j| og[j] * s[j].tanh()).collect();
    (gates, c, m)
}

/// One layer-normalised LSTM step forward (the plain or the options' step kernel, then
/// `lstm_ln_cell_forward`) and backward (`lstm_ln_cell_backward`, then `lstm_backward_step_ln`)
/// against the f64 row and its central differences.
fn lstm_case(seed: u64, o: LstmOpts) {
    let mut rng = SplitMix64::new(seed);
    let (g4, h3) = (4 * H, 3 * H);
    // Pre-activations as after the normalisations: about ±3.
    let (xg, hg) = (random(&mut rng, B * g4, -2.0, 2.0), random(&mut rng, B * g4, -2.0, 2.0));
    let b_hh = random(&mut rng, g4, -1.0, 1.0);
    let c_prev = random(&mut rng, B * H, -2.0, 2.0);
    let peep = random(&mut rng, h3, -1.5, 1.5);
    let (gamma, beta) = gains(&mut rng, H);
    let (g64, b64) = (wide(&gamma), wide(&beta));
    let p_of = |kk: usize, j: usize| if o.peephole { peep[kk * H + j] as f64 } else { 0.0 };
    let row_x = |b: usize| -> Vec<f64> {
        let mut x = Vec::with_capacity(8 * H);
        for j in 0..H {
            x.extend((0..4).map(|kk| (xg[b * g4 + kk * H + j] + hg[b * g4 + kk * H + j] + b_hh[kk * H + j]) as f64));
            x.push(c_prev[b * H + j] as f64);
            x.extend((0..3).map(|kk| p_of(kk, j)));
        }
        x
    };
    let cell = o.cell(H, true);
    let plain = !o.peephole && o.clip == 0.0 && !o.input_forget;
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let nan = |n: usize| vec![f32::NAN; n];
    let what = format!("layer-normalised LSTM {o:?} seed {seed}");

    // Forward: the step kernel (no b_ih: with layer norm it is in XG), then the output.
    let keep = random(&mut rng, B * H, -1.0, 1.0);
    let (mut gates, mut c, mut m, mut y) = (nan(B * g4), nan(B * H), nan(B * H), nan(B * H));
    let args = k::LstmForwardStepArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        xg: addr(&xg),
        hg: addr(&hg),
        b_ih: 0,
        b_hh: addr(&b_hh),
        c_prev: addr(&c_prev),
        keep: addr(&keep),
        gates: addr_mut(&mut gates),
        c: addr_mut(&mut c),
        m: addr_mut(&mut m),
        y: addr_mut(&mut y),
        y_stride: H as i32,
    };
    if plain {
        exec.launch(0, k::LstmForwardStep, B * H, &args).unwrap();
    } else {
        let peephole = if o.peephole { addr(&peep) } else { 0 };
        exec.launch(0, k::LstmForwardStepOpt, B * H, &options::lstm_forward(args, &cell, peephole)).unwrap();
    }
    let (mut c_hat, mut rstd) = (nan(B * H), nan(B));
    let out = k::LstmLnCellForwardArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        gates: addr(&gates),
        c: addr(&c),
        gamma: addr(&gamma),
        beta: addr(&beta),
        m: addr_mut(&mut m),
        y: addr_mut(&mut y),
        y_stride: H as i32,
        c_hat: addr_mut(&mut c_hat),
        rstd: addr_mut(&mut rstd),
    };
    exec.launch_rows(0, k::LstmLnCellForward, Dtype::F32, B, &out).unwrap();
    let (mut want_c, mut want_m, mut want_y, mut want_ch) = (vec![0.0; B * H], vec![0.0; B * H], vec![0.0; B * H], vec![0.0; B * H]);
    for b in 0..B {
        let r = b * H..(b + 1) * H;
        if active(b) {
            let (_, cr, mr) = lstm_ln_row(&row_x(b), o, &g64, &b64);
            want_c[r.clone()].copy_from_slice(&cr);
            want_m[r.clone()].copy_from_slice(&mr);
            want_y[r.clone()].copy_from_slice(&mr);
        } else {
            // The state kept, m = keep, y = 0; the row normalised all the same.
            want_c[r.clone()].copy_from_slice(&wide(&c_prev[r.clone()]));
            want_m[r.clone()].copy_from_slice(&wide(&keep[r.clone()]));
        }
        want_ch[r.clone()].copy_from_slice(&normalise(&want_c[r]).0);
    }
    check(&format!("{what}: c"), &c, &want_c, 1e-5);
    check(&format!("{what}: ĉ"), &c_hat, &want_ch, 1e-5);
    check(&format!("{what}: m"), &m, &want_m, 1e-5);
    check(&format!("{what}: y"), &y, &want_y, 1e-5);
    // Inference: nothing saved, the same m.
    let mut mi = nan(B * H);
    let (mut ci, mut gi) = (nan(B * H), nan(B * g4));
    let fwd = k::LstmForwardStepArgs { gates: addr_mut(&mut gi), c: addr_mut(&mut ci), m: addr_mut(&mut mi), y: 0, ..args };
    if plain {
        exec.launch(0, k::LstmForwardStep, B * H, &fwd).unwrap();
    } else {
        let peephole = if o.peephole { addr(&peep) } else { 0 };
        exec.launch(0, k::LstmForwardStepOpt, B * H, &options::lstm_forward(fwd, &cell, peephole)).unwrap();
    }
    let out_i = k::LstmLnCellForwardArgs { gates: addr(&gi), c: addr(&ci), m: addr_mut(&mut mi), y: 0, c_hat: 0, rstd: 0, ..out };
    exec.launch_rows(0, k::LstmLnCellForward, Dtype::F32, B, &out_i).unwrap();
    same_bits(&format!("{what}: inference m"), &mi, &m);

    // Backward from dm = carry + dy and the incoming dc: the output piece, then the step.
    let (dy, mut carry, mut dc) =
        (random(&mut rng, B * H, -1.0, 1.0), random(&mut rng, B * H, -1.0, 1.0), random(&mut rng, B * H, -1.0, 1.0));
    let (carry_in, dc_in) = (carry.clone(), dc.clone());
    let dpeep_in = random(&mut rng, B * h3, -1.0, 1.0);
    let mut dpeep = dpeep_in.clone();
    let (mut dg, mut ds, mut dm_tau) = (nan(B * g4), nan(B * H), nan(B * H));
    let step = k::LstmBackwardStepArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        gates: addr(&gates),
        c: addr(&c),
        c_prev: addr(&c_prev),
        dm_in: 0,
        dy: addr(&dy),
        dy_stride: H as i32,
        carry: addr_mut(&mut carry),
        dc: addr_mut(&mut dc),
        dg: addr_mut(&mut dg),
    };
    let piece = k::LstmLnCellBackwardArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        gates: addr(&gates),
        c_hat: addr(&c_hat),
        rstd: addr(&rstd),
        gamma: addr(&gamma),
        beta: addr(&beta),
        dm_in: 0,
        dy: step.dy,
        dy_stride: H as i32,
        carry: step.carry,
        dc: step.dc,
        ds: addr_mut(&mut ds),
        dm_tau: addr_mut(&mut dm_tau),
    };
    exec.launch_rows(0, k::LstmLnCellBackward, Dtype::F32, B, &piece).unwrap();
    let (peephole, dpeep_p) = if o.peephole { (addr(&peep), addr_mut(&mut dpeep)) } else { (0, 0) };
    let k::LstmBackwardStepOptArgs {
        batch,
        hidden,
        step: st,
        lengths,
        gates: ga,
        c: cc,
        c_prev: cp,
        dm_in,
        dy: dya,
        dy_stride,
        carry: ca,
        dc: dca,
        dg: dga,
        peephole,
        clip,
        input_forget,
        dpeep: dpa,
    } = options::lstm_backward(step, &cell, peephole, dpeep_p);
    let args = k::LstmBackwardStepLnArgs {
        batch,
        hidden,
        step: st,
        lengths,
        gates: ga,
        c: cc,
        c_prev: cp,
        dm_in,
        dy: dya,
        dy_stride,
        carry: ca,
        dc: dca,
        dg: dga,
        peephole,
        clip,
        input_forget,
        dpeep: dpa,
        dm_tau: addr(&dm_tau),
    };
    exec.launch(0, k::LstmBackwardStepLn, B * H, &args).unwrap();

    let (mut want_dg, mut want_dc, mut want_carry, mut want_ds) = (vec![0.0; B * g4], vec![0.0; B * H], vec![0.0; B * H], vec![0.0; B * H]);
    let mut want_dpeep = wide(&dpeep_in);
    for b in 0..B {
        let dm: Vec<f64> = (0..H).map(|j| (carry_in[b * H + j] + if active(b) { dy[b * H + j] } else { 0.0 }) as f64).collect();
        if !active(b) {
            for j in 0..H {
                want_dc[b * H + j] = dc_in[b * H + j] as f64;
                want_carry[b * H + j] = dm[j];
            }
            continue;
        }
        let dc_row = wide(&dc_in[b * H..(b + 1) * H]);
        let loss = |x: &[f64]| {
            let (_, cr, mr) = lstm_ln_row(x, o, &g64, &b64);
            (0..H).map(|j| dm[j] * mr[j] + dc_row[j] * cr[j]).sum::<f64>()
        };
        let grad = gradient(&row_x(b), loss);
        for j in 0..H {
            for kk in 0..4 {
                want_dg[b * g4 + kk * H + j] = grad[8 * j + kk];
            }
            want_dc[b * H + j] = grad[8 * j + 4];
            for kk in 0..3 {
                want_dpeep[b * h3 + kk * H + j] += grad[8 * j + 5 + kk];
            }
        }
        // dŝ: the gradient w.r.t. s = γ_c⊙ĉ + β_c, i.e. w.r.t. β_c of this row.
        let (_, cr, _) = lstm_ln_row(&row_x(b), o, &g64, &b64);
        let og: Vec<f64> = (0..H).map(|j| sigmoid(clamp(row_x(b)[8 * j + 3] + p_of(2, j) * cr[j], o.clip))).collect();
        let lb = |bb: &[f64]| {
            let s = ln_row(&cr, &g64, Some(bb));
            (0..H).map(|j| dm[j] * og[j] * s[j].tanh()).sum::<f64>()
        };
        want_ds[b * H..(b + 1) * H].copy_from_slice(&gradient(&b64, lb));
    }
    check(&format!("{what}: dG"), &dg, &want_dg, 1e-4);
    check(&format!("{what}: dc_prev"), &dc, &want_dc, 1e-4);
    check(&format!("{what}: carry"), &carry, &want_carry, 1e-4);
    check(&format!("{what}: dŝ"), &ds, &want_ds, 1e-4);
    if o.peephole {
        check(&format!("{what}: dpeep"), &dpeep, &want_dpeep, 1e-4);
    }
}

/// Every combination of the LSTM options with layer norm (clip 1.5 against pre-activations up
/// to about ±5, so that many gates clip), each on several seeds.
#[test]
fn emulated_lstm_ln_cell_matches_f64() {
    for seed in 0..8 {
        for o in LstmOpts::all() {
            lstm_case(seed, o);
        }
    }
}

// ---- The driver with layer norm against the f64 reference. ----------------------------------

/// A problem of `cfg` whose layer-norm gains are `1 + U(-0.5, 0.5)` and biases `U(-0.5, 0.5)`
/// (the initialisation's 1 and 0 would hide a forgotten gain or bias).
fn ln_problem(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> Problem<f32> {
    let mut p = Problem::<f32>::new(cfg, shape, seed, x_range);
    let layout = ParamLayout::new(cfg);
    let mut rng = SplitMix64::new(seed ^ 0x1a7e);
    for l in 0..cfg.num_layers() {
        for d in 0..cfg.num_directions() {
            let r = layout.layer(l, d);
            for (range, lo, hi) in [(&r.ln_ih, 0.5, 1.5), (&r.ln_hh, 0.5, 1.5), (&r.ln_c_weight, 0.5, 1.5), (&r.ln_c_bias, -0.5, 0.5)] {
                for v in &mut p.p.params[range.clone().unwrap_or_default()] {
                    *v = rng.uniform(lo, hi) as f32;
                }
            }
        }
    }
    p
}

impl Problem<f32> {
    /// The emulated driver with layer norm (persistent kernels allowed, which decline it)
    /// against the reference: outputs at 1e-5, gradients at 1e-4, or `testkit::F32_SPREAD`
    /// times the size of the reference's own error computing in f32 (`Problem::f32_error`, over
    /// the problem and copies of it moved by one unit in the last place) where that is larger,
    /// as tests/layer_norm.rs holds the CPU: a layer norm amplifies f32 rounding, so the
    /// specification's own arithmetic in f32 can miss the fixed tolerances. The last two cases
    /// saved in proptest-regressions are LSTMs with projection size 1, whose recurrent products
    /// are rank-1 rows: their normalisation divides out the one state's magnitude while that
    /// state's rounding scales with the terms of its sum, which
    /// `Conditioning::ln_amplification` does not see. On the second (I = 7, H = 8, clip 0.5, coupled input-forget, lengths
    /// 5, 1, 1), the gradients' errors are 4.8e-5 for the f32 reference, 2.0e-5 for the CPU
    /// backend and 1.7e-4 for the emulated driver: one f32 run's error is one draw, hence the
    /// perturbed copies.
    /// Accumulate twice the gradients, inference the training forward's bits (`run_on`), and a
    /// second run the first one's bits.
    fn check_layer_norm(&self) -> std::result::Result<(), String> {
        let want = self.run_reference();
        let f32_error = self.p.f32_error();
        let emulation = Emulation::default();
        let mut first: Option<Vec<Vec<u32>>> = None;
        for persistent in [false, true] {
            let exec = emulation.exec().with_persistent(persistent);
            let (got, acc) = self.run_on(&exec, &exec);
            for (i, name) in crate::testkit::OUTPUTS.iter().enumerate() {
                let err = max_error(&up(&got[i]), &want[i]);
                let tol = f64::max(if i < 3 { 1e-5 } else { 1e-4 }, crate::testkit::F32_SPREAD * f32_error[i]);
                if err > tol {
                    return Err(format!("persistent={persistent}: {name} error {err:.3e} > {tol:.3e}: {:?} {:?}", self.cfg, self.shape));
                }
            }
            let twice: Vec<f32> = got[6].iter().map(|g| 2.0 * g).collect();
            if max_error(&acc, &twice) > 1e-6 {
                return Err(format!("Accumulate: {:?}", self.cfg));
            }
            let bits: Vec<Vec<u32>> = got.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect();
            match &first {
                Some(f) if *f != bits => return Err(format!("a second run differs: {:?}", self.cfg)),
                _ => first = Some(bits),
            }
        }
        Ok(())
    }
}

/// A layer-normalised configuration: LSTM or GRU, with the other options (LSTM peepholes,
/// coupled input-forget and projection, the gate clip), forward, reverse-only or bidirectional
/// stacks merged by concatenation or by sum, time-major or batch-first.
fn ln_config() -> impl Strategy<Value = RnnConfig> {
    (
        any::<bool>(),
        1usize..9,
        1usize..9,
        1usize..3,
        0usize..4,
        any::<bool>(),
        0usize..4,
        (any::<bool>(), 0usize..3, any::<bool>(), any::<bool>()),
    )
        .prop_map(|(lstm, i, h, l, dir, bias, p, (peephole, clip, input_forget, batch_first))| {
            let cell = if lstm { CellKind::Lstm } else { CellKind::Gru };
            let proj = if lstm && h > 1 { p.min(h - 1) } else { 0 };
            let (direction, merge) = [
                (Direction::Forward, Merge::Concat),
                (Direction::Reverse, Merge::Concat),
                (Direction::Bidirectional, Merge::Concat),
                (Direction::Bidirectional, Merge::Sum),
            ][dir];
            let b = RnnConfig::new(cell, i, h).num_layers(l).direction(direction).merge(merge).batch_first(batch_first).layer_norm(true);
            let b = b.bias(bias).proj_size(proj).gate_clip([0.0, 0.5, 2.0][clip]);
            let b = if lstm { b.peephole(peephole).input_forget(input_forget) } else { b };
            b.build().unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The layer-normalised LSTM and GRU with every other option on the emulated driver against
    /// the reference: layers, directions, bias, projection, variable lengths, inputs up to ±3.
    #[test]
    fn emulated_driver_with_layer_norm_matches_reference(cfg in ln_config(), t in 1usize..6, lens in prop::collection::vec(1usize..6, 1..5), seed in any::<u64>()) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = ln_problem(&cfg, &shape, seed, 3.0);
        // Ill-conditioned at f32 (a pre-activation at a kink, a layer norm amplifying rounding): no
        // parity to check (testkit::conditioning).
        prop_assume!(p.conditioning().is_good_for_f32());
        let r = p.check_layer_norm();
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// Larger problems (two layers: the forward layer wavefront runs, normalising each chunk's
/// input rows), each cell with and without options, and every direction.
#[test]
fn emulated_driver_layer_norm_sizes_match_reference() {
    let base = |cell| RnnConfig::new(cell, 11, 23).num_layers(2).layer_norm(true);
    let configs = [
        base(CellKind::Lstm).build().unwrap(),
        base(CellKind::Gru).build().unwrap(),
        base(CellKind::Lstm).bias(false).build().unwrap(),
        base(CellKind::Gru).direction(Direction::Reverse).build().unwrap(),
        base(CellKind::Lstm).bidirectional(true).proj_size(7).build().unwrap(),
        base(CellKind::Gru).bidirectional(true).merge(Merge::Sum).gate_clip(0.7).batch_first(true).build().unwrap(),
        base(CellKind::Lstm).peephole(true).gate_clip(1.0).input_forget(true).build().unwrap(),
    ];
    for cfg in &configs {
        let shape = SeqShape::with_lengths(8, (0..6).map(|b| 8 - b).collect()).unwrap();
        ln_problem(cfg, &shape, 41, 3.0).check_layer_norm().unwrap();
    }
}

/// The persistent kernels decline layer norm: required, forward and backward fail with
/// `Error::Unsupported` naming it.
#[test]
fn emulated_persistent_required_names_layer_norm() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let cfg = RnnConfig::new(cell, 3, 5).layer_norm(true).build().unwrap();
        let shape = SeqShape::new(2, 2).unwrap();
        let p = ln_problem(&cfg, &shape, 1, 1.0);
        let emulation = Emulation::default();
        let required = emulation.exec().with_persistent(true).with_persistent_required(true);
        let named =
            |e: Error| matches!(&e, Error::Unsupported { option, .. } if option == "layer_norm") && e.to_string().contains("persistent");
        let mut y = nans::<f32>(p.dy.len());
        let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
        let e = forward(&required, p.weights(), &shape, io, None).unwrap_err();
        assert!(named(e), "{cell:?}: forward");
        let mut reserve = CudaReserve::default();
        p.forward_on(&emulation.exec(), Some(&mut reserve));
        let mut dx = nans::<f32>(p.x.len());
        let g = BackwardViews { dx: Some(view_mut(&mut dx)), ..p.incoming(GradMode::Overwrite) };
        let e = backward(&required, p.weights(), &shape, &SavedViews::new(&reserve), g).unwrap_err();
        assert!(named(e), "{cell:?}: backward");
    }
}

/// The forward layer wavefront normalises each chunk's input rows in its projection: with
/// chunks of 3 steps (not dividing T = 8) a layer-normalised stack gives the layer-by-layer
/// order's outputs, saved activations and gradients bit for bit (the emulation's GEMMs compute
/// each row on its own; the backward wavefront is off with layer norm), without and with
/// dropout between layers (dropped a chunk at a time forward, whole `dX`s backward: `check`'s
/// launch count).
#[test]
fn emulated_wavefront_chunks_normalise_their_rows() {
    for (cell, dropout) in [(CellKind::Lstm, 0.0), (CellKind::Gru, 0.0), (CellKind::Lstm, 0.3), (CellKind::Gru, 0.6)] {
        let cfg = RnnConfig::new(cell, 5, 7).num_layers(3).layer_norm(true).dropout(dropout).build().unwrap();
        if dropout > 0.0 {
            super::wavefront::check::<f32>(&cfg, &SeqShape::with_lengths(8, vec![8, 5, 3, 8]).unwrap(), 3, 9);
        }
        let shape = SeqShape::with_lengths(8, vec![8, 5, 3, 8]).unwrap();
        let p = ln_problem(&cfg, &shape, 9, 3.0);
        let emulation = Emulation::default();
        let off = emulation.exec().with_wavefront(false);
        let on = emulation.exec().with_wavefront(true).with_wavefront_chunk(3);
        let bits = |v: &[Vec<f32>]| v.iter().map(|t| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
        let (ref_out, ref_reserve) = p.train_on(&off);
        let (out, reserve) = p.train_on(&on);
        assert!(bits(&ref_out) == bits(&out), "{cell:?}: outputs");
        assert!(ref_reserve.saved_bits() == reserve.saved_bits(), "{cell:?}: saved activations");
        let (a, _) = p.run_on(&off, &off);
        let (b, _) = p.run_on(&on, &on);
        assert!(bits(&a) == bits(&b), "{cell:?}: gradients");
    }
}
