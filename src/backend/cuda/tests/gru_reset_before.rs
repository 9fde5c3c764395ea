//! The GRU with the reset gate before the recurrent matmul (`linear_before_reset = false`) on
//! the host emulation:
//!
//! - its step kernels (kernels/gru_reset_before.cu) against an f64 oracle of one step: forward
//!   from the products the driver's GEMMs give, backward against central differences (the first
//!   part with the product held fixed, the second from a given `du`, the gradient of
//!   `u = r ⊙ h_prev`);
//! - the GEMM on blocks of columns (strided rows) the driver runs it with;
//! - the driver against the f64 reference: layers, directions (forward, reverse-only,
//!   bidirectional concatenated and summed), variable lengths, gate clip, bias, batch-first,
//!   f16 and bf16 storage (`half_storage.rs`), the persistent kernels declining it
//!   (`options_driver.rs`); the layer wavefront bit for bit against the layer-by-layer order.
//!
//! Tolerances are the other emulation tests' (1e-5 forward, 1e-4 gradients, `max_error`; the
//! derived bounds for 16-bit storage).

use super::super::emulation::Emulation;
use super::super::exec::GemmArgs;
use super::super::kernels as k;
use super::oracle::{addr, addr_mut, check, clamp, gradient, random, sigmoid};
use super::{view, Problem};
use crate::testkit::SplitMix64;
use crate::{CellKind, Direction, Merge, RnnConfig, SeqShape};

/// Rows (row 2 inactive) and units of the step cases.
const B: usize = 3;
const H: usize = 5;
const LENGTHS: [i32; B] = [1, 1, 0];

fn active(b: usize) -> bool {
    LENGTHS[b] > 0
}

/// One unit in f64 from `x = [ax_r, ax_z, ax_n, ah_r, ah_z, p_n, h_prev]` (input-side
/// pre-activations with `b_ih`; hidden-side ones of `r`, `z` with `b_hh`; `p_n` the product
/// `(W_hn (r ⊙ h_prev))_j + b_hn`, held as given): `[r, z, n, u, h]`.
fn unit(x: &[f64], clip: f64) -> [f64; 5] {
    let r = sigmoid(clamp(x[0] + x[3], clip));
    let z = sigmoid(clamp(x[1] + x[4], clip));
    let n = clamp(x[2] + x[5], clip).tanh();
    [r, z, n, r * x[6], (1.0 - z) * n + z * x[6]]
}

/// Both forward parts and both backward parts of one step (gate clip `clip`, 0 for none)
/// against the oracle.
fn step_case(seed: u64, clip: f64) {
    let mut rng = SplitMix64::new(seed);
    let g3 = 3 * H;
    let (xg, mut hg) = (random(&mut rng, B * g3, 3.0), random(&mut rng, B * g3, 3.0));
    let (b_ih, b_hh) = (random(&mut rng, g3, 1.0), random(&mut rng, g3, 1.0));
    let h_prev = random(&mut rng, B * H, 1.0);
    // The n columns of hg: what the W_hn GEMM writes between the two parts.
    let hg_n = random(&mut rng, B * H, 3.0);
    let unit_x = |b: usize, j: usize, hg: &[f32]| -> Vec<f64> {
        let mut x: Vec<f64> = (0..3).map(|kk| (xg[b * g3 + kk * H + j] + b_ih[kk * H + j]) as f64).collect();
        x.extend((0..2).map(|kk| (hg[b * g3 + kk * H + j] + b_hh[kk * H + j]) as f64));
        x.push((hg_n[b * H + j] + b_hh[2 * H + j]) as f64);
        x.push(h_prev[b * H + j] as f64);
        x
    };
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let nan = |n: usize| vec![f32::NAN; n];
    let (mut gates, mut u, mut h, mut y) = (nan(B * g3), nan(B * H), nan(B * H), nan(B * H));
    let mut args = k::GruResetBeforeForwardArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        xg: addr(&xg),
        hg: addr(&hg),
        b_ih: addr(&b_ih),
        b_hh: addr(&b_hh),
        h_prev: addr(&h_prev),
        gates: addr_mut(&mut gates),
        u: addr_mut(&mut u),
        h: addr_mut(&mut h),
        y: addr_mut(&mut y),
        y_stride: H as i32,
        clip: clip as f32,
    };
    // The first part must not read hg's n columns: NaN there.
    for b in 0..B {
        hg[b * g3 + 2 * H..(b + 1) * g3].fill(f32::NAN);
    }
    exec.launch(0, k::GruResetBeforeForwardGates, B * H, &args).unwrap();
    let what = format!("Cho GRU clip {clip} seed {seed}");
    let mut want_u = vec![0.0; B * H];
    for b in 0..B {
        for j in 0..H {
            if active(b) {
                want_u[b * H + j] = unit(&unit_x(b, j, &hg), clip)[3];
            }
        }
    }
    check(&format!("{what}: u"), &u, &want_u, 1e-5);
    assert!(h.iter().chain(&y).all(|v| v.is_nan()), "{what}: the first part wrote h or y");
    for b in 0..B {
        for j in 0..H {
            hg[b * g3 + 2 * H + j] = hg_n[b * H + j];
        }
    }
    args.hg = addr(&hg);
    exec.launch(0, k::GruResetBeforeForwardOutput, B * H, &args).unwrap();
    let (mut want_gates, mut want_h, mut want_y) = (vec![0.0; B * g3], vec![0.0; B * H], vec![0.0; B * H]);
    for b in 0..B {
        for j in 0..H {
            let e = b * H + j;
            if !active(b) {
                want_h[e] = h_prev[e] as f64;
                continue;
            }
            let o = unit(&unit_x(b, j, &hg), clip);
            for kk in 0..3 {
                want_gates[b * g3 + kk * H + j] = o[kk];
            }
            want_h[e] = o[4];
            want_y[e] = o[4];
        }
    }
    check(&format!("{what}: gates"), &gates, &want_gates, 1e-5);
    check(&format!("{what}: u after the second part"), &u, &want_u, 1e-5);
    check(&format!("{what}: h"), &h, &want_h, 1e-5);
    check(&format!("{what}: y"), &y, &want_y, 1e-5);

    // Backward: dh = carry + dy; du as the W_hn GEMM would give it.
    let (dy, mut carry, du) = (random(&mut rng, B * H, 1.0), random(&mut rng, B * H, 1.0), random(&mut rng, B * H, 1.0));
    let carry_in = carry.clone();
    let mut dgi = nan(B * g3);
    let args = k::GruResetBeforeBackwardArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        gates: addr(&gates),
        h_prev: addr(&h_prev),
        dy: addr(&dy),
        dy_stride: H as i32,
        carry: addr_mut(&mut carry),
        du: addr(&du),
        dgi: addr_mut(&mut dgi),
        clip: clip as f32,
    };
    exec.launch(0, k::GruResetBeforeBackwardOutput, B * H, &args).unwrap();
    // After the first part: dgi's z, n columns (and zeros on inactive rows), the carry z·dh.
    let (mut want_dgi, mut want_carry) = (vec![0.0; B * g3], vec![0.0; B * H]);
    let mut want_direct = vec![0.0; B * H];
    for b in 0..B {
        for j in 0..H {
            let e = b * H + j;
            let dh = (carry_in[e] + if active(b) { dy[e] } else { 0.0 }) as f64;
            if !active(b) {
                want_carry[e] = dh;
                continue;
            }
            let x = unit_x(b, j, &hg);
            // With the product held fixed: the gradients of z and n and the direct path.
            let g1 = gradient(&x, |x| dh * unit(x, clip)[4]);
            want_dgi[b * g3 + H + j] = g1[1];
            want_dgi[b * g3 + 2 * H + j] = g1[2];
            want_carry[e] = g1[6];
            // The second part: the loss du·u through r and h_prev.
            let g2 = gradient(&x, |x| du[e] as f64 * unit(x, clip)[3]);
            want_dgi[b * g3 + j] = g2[0];
            want_direct[e] = g1[6] + g2[6];
        }
    }
    let dgi_first: Vec<f32> = dgi.iter().enumerate().map(|(i, &v)| if (i % g3) < H && active(i / g3) { 0.0 } else { v }).collect();
    let want_first: Vec<f64> = want_dgi.iter().enumerate().map(|(i, &v)| if (i % g3) < H { 0.0 } else { v }).collect();
    check(&format!("{what}: dgi z, n"), &dgi_first, &want_first, 1e-4);
    check(&format!("{what}: carry after the first part"), &carry, &want_carry, 1e-4);
    exec.launch(0, k::GruResetBeforeBackwardReset, B * H, &args).unwrap();
    for b in 0..B {
        if !active(b) {
            let e = b * H;
            want_direct[e..e + H].copy_from_slice(&want_carry[e..e + H]);
        }
    }
    check(&format!("{what}: dgi"), &dgi, &want_dgi, 1e-4);
    check(&format!("{what}: carry"), &carry, &want_direct, 1e-4);
}

/// The step kernels with and without the gate clip (1.5, below many of the pre-activations
/// up to about ±5, so that gates clip), on several seeds.
#[test]
fn emulated_cho_steps_match_oracle() {
    for seed in 0..12 {
        step_case(seed, 0.0);
        step_case(seed, 1.5);
    }
}

/// The GEMM on blocks of columns the driver runs the Cho step with: `C[:, c0..c0+n]`
/// (+)= `op(A[:, a0..])·op(B)`, operands and result with rows wider than their blocks, every
/// transpose combination, against a plain product; the columns outside the block untouched.
#[test]
fn emulated_strided_gemm_matches_dense_product() {
    let (m, k, n, wide) = (4usize, 3usize, 5usize, 9usize);
    let mut rng = SplitMix64::new(5);
    let mut rand = |len: usize| (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect::<Vec<f32>>();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        // op(A) [m, k] from columns 2.. of a stored [m or k, wide]; op(B) [k, n] from columns 1..;
        // C [m, n] at columns 3.. of a [m, wide].
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let a = rand(ar * wide);
        let b = rand(br * wide);
        let c0 = rand(m * wide);
        let at = |i: usize, p: usize| if ta { a[p * wide + 2 + i] } else { a[i * wide + 2 + p] };
        let bt = |p: usize, j: usize| if tb { b[j * wide + 1 + p] } else { b[p * wide + 1 + j] };
        let am = view(&a).at(2, a.len() - 2).mat_strided(ar, ac, wide);
        let bm = view(&b).at(1, b.len() - 1).mat_strided(br, bc, wide);
        let (am, bm) = (if ta { am.t() } else { am }, if tb { bm.t() } else { bm });
        let mut c = c0.clone();
        let cv = super::view_mut(&mut c);
        let g = GemmArgs::new(am, bm, 0.5, cv.at(3, cv.len - 3).mat_strided(m, n, wide)).unwrap();
        // SAFETY: the three buffers hold the matrices the arguments describe.
        unsafe { super::super::emulation::sgemm(&g, 2.0, 0.5) };
        for i in 0..m {
            for j in 0..wide {
                let got = c[i * wide + j];
                let want = if (3..3 + n).contains(&j) {
                    2.0 * (0..k).map(|p| at(i, p) * bt(p, j - 3)).sum::<f32>() + 0.5 * c0[i * wide + j]
                } else {
                    c0[i * wide + j]
                };
                assert!((got - want).abs() < 1e-5, "ta={ta} tb={tb} ({i},{j}): {got} vs {want}");
            }
        }
    }
}

fn cho() -> crate::RnnConfigBuilder {
    RnnConfig::new(CellKind::Gru, 11, 23).linear_before_reset(false)
}

/// The driver against the reference: 1 and 2 layers × forward, reverse-only, bidirectional
/// (concatenated, summed) × gate clip × bias, batch-first, rows of many lengths (row 5 of
/// length 1 with T = 8); a two-layer forward stack also runs the layer wavefront. Each with the
/// persistent kernels allowed and not (they decline the cell).
#[test]
fn emulated_driver_cho_matches_reference() {
    let directions = [
        (Direction::Forward, Merge::Concat),
        (Direction::Reverse, Merge::Concat),
        (Direction::Bidirectional, Merge::Concat),
        (Direction::Bidirectional, Merge::Sum),
    ];
    let shape = SeqShape::with_lengths(8, vec![8, 7, 3, 8, 5, 1]).unwrap();
    let mut n = 0;
    for layers in [1, 2] {
        for (direction, merge) in directions {
            for clip in [0.0, 0.7] {
                for bias in [true, false] {
                    let cfg = cho().num_layers(layers).direction(direction).merge(merge).gate_clip(clip).bias(bias).build().unwrap();
                    Problem::<f32>::new(&cfg, &shape, 100 + n, 3.0).check_with_options().unwrap();
                    n += 1;
                }
            }
        }
    }
    let batch_first = cho().num_layers(2).bidirectional(true).batch_first(true).gate_clip(1.0).build().unwrap();
    Problem::<f32>::new(&batch_first, &shape, 7, 3.0).check_with_options().unwrap();
    // T = 1, B = 1: the weight gradients' shifted GEMMs with no rows.
    let one = SeqShape::new(1, 1).unwrap();
    Problem::<f32>::new(&cho().num_layers(2).build().unwrap(), &one, 8, 3.0).check_with_options().unwrap();
}

/// The layer wavefront with chunks shorter than the sequence, bit for bit against the
/// layer-by-layer order (`wavefront.rs`'s check: outputs, saved activations, gradients), 2 and
/// 3 layers, with and without bias and clip, f32 and bf16.
#[test]
fn emulated_cho_wavefront_matches_layer_by_layer() {
    let mut seed = 300;
    for layers in [2, 3] {
        for (bias, clip) in [(true, 0.0), (false, 0.8)] {
            let cfg = RnnConfig::new(CellKind::Gru, 5, 7)
                .num_layers(layers)
                .bias(bias)
                .gate_clip(clip)
                .linear_before_reset(false)
                .build()
                .unwrap();
            for (t, k) in [(7, 3), (5, 1), (9, 4)] {
                let lengths: Vec<usize> = (0..4).map(|b| t - (b * 3) % t).collect();
                let shape = SeqShape::with_lengths(t, lengths).unwrap();
                seed += 1;
                super::wavefront::check::<f32>(&cfg, &shape, k, seed);
                super::wavefront::check::<half::bf16>(&cfg, &shape, k, seed);
            }
        }
    }
}

/// The CUDA backend's `plan` takes the cell (its `OPTIONS` list, checked there before any device
/// work), with the options it combines with.
#[test]
fn cuda_plan_accepts_cho() {
    let cfg = cho().gate_clip(1.0).direction(Direction::Reverse).batch_first(true).build().unwrap();
    assert!(cfg.options().contains(&"linear_before_reset=false"));
    crate::backend::check_options("cuda", &cfg, super::super::OPTIONS).unwrap();
}
