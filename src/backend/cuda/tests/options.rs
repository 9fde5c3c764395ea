//! The cell options' step kernels on the host emulation against an f64 oracle of one step
//! (`lstm_*_step_opt`, `gru_*_step_clip`, `rnn_*_step_clip`; kernels/*_pointwise.cu):
//!
//! - forward against the formulas of `RnnConfigBuilder`'s docs, in onnxruntime's order
//!   (peepholes and biases added, then the clip, then the activation);
//! - backward against central differences of that f64 step, so that the backward's
//!   derivation (the clip's pass, the peephole terms, `f = 1 - i`) is checked, not restated.
//!
//! The plain entries go through the same checks with the options off: the oracle is the plain
//! cell then. Row 2 of the batch is inactive (past its length). Tolerances are the driver
//! tests' against the reference (1e-5 forward, 1e-4 gradients, `max_error`).

use super::super::driver::options;
use super::super::emulation::Emulation;
use super::super::kernels as k;
use super::oracle::{addr, addr_mut, check, clamp, gradient, random, sigmoid, LstmOpts};
use crate::testkit::SplitMix64;

/// Rows (row 2 inactive) and units of every case.
const B: usize = 3;
const H: usize = 5;
/// `t < lengths[b]`: rows 0 and 1 active at step 0.
const LENGTHS: [i32; B] = [1, 1, 0];

fn active(b: usize) -> bool {
    LENGTHS[b] > 0
}

/// One LSTM unit in f64 from `x = [a_i, a_f, a_g, a_o, c_prev, p_i, p_f, p_o]` (pre-activations
/// with their biases): `[i, f, g, o, c, m]`.
fn lstm_unit(x: &[f64], o: LstmOpts) -> [f64; 6] {
    let (a, cp, p) = (&x[0..4], x[4], &x[5..8]);
    let i = sigmoid(clamp(a[0] + p[0] * cp, o.clip));
    let f = if o.input_forget { 1.0 - i } else { sigmoid(clamp(a[1] + p[1] * cp, o.clip)) };
    let g = clamp(a[2], o.clip).tanh();
    let c = f * cp + i * g;
    let og = sigmoid(clamp(a[3] + p[2] * c, o.clip));
    [i, f, g, og, c, og * c.tanh()]
}

/// One LSTM forward and backward step with options `o` (the plain entries when they are off, or
/// the options' entries with `force_opt`) against the oracle.
fn lstm_case(seed: u64, o: LstmOpts, force_opt: bool) {
    let mut rng = SplitMix64::new(seed);
    let (g4, h3) = (4 * H, 3 * H);
    let (xg, hg) = (random(&mut rng, B * g4, 3.0), random(&mut rng, B * g4, 3.0));
    let (b_ih, b_hh) = (random(&mut rng, g4, 1.0), random(&mut rng, g4, 1.0));
    let c_prev = random(&mut rng, B * H, 2.0);
    let peep = random(&mut rng, h3, 1.5);
    let p_of = |k: usize, j: usize| if o.peephole { peep[k * H + j] as f64 } else { 0.0 };
    let pre = |b: usize, k: usize, j: usize| {
        let q = k * H + j;
        (xg[b * g4 + q] + b_ih[q] + hg[b * g4 + q] + b_hh[q]) as f64
    };
    let unit_x = |b: usize, j: usize| -> Vec<f64> {
        let mut x: Vec<f64> = (0..4).map(|kk| pre(b, kk, j)).collect();
        x.push(c_prev[b * H + j] as f64);
        x.extend((0..3).map(|kk| p_of(kk, j)));
        x
    };
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let opt = force_opt || !o.plain();

    // Forward.
    let nan = |n: usize| vec![f32::NAN; n];
    let (mut gates, mut c, mut m, mut y) = (nan(B * g4), nan(B * H), nan(B * H), nan(B * H));
    let args = k::LstmForwardStepArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        xg: addr(&xg),
        hg: addr(&hg),
        b_ih: addr(&b_ih),
        b_hh: addr(&b_hh),
        c_prev: addr(&c_prev),
        keep: 0,
        gates: addr_mut(&mut gates),
        c: addr_mut(&mut c),
        m: addr_mut(&mut m),
        y: addr_mut(&mut y),
        y_stride: H as i32,
    };
    if opt {
        let peephole = if o.peephole { addr(&peep) } else { 0 };
        let args = options::lstm_forward(args, &o.cell(H, false), peephole);
        exec.launch(0, k::LstmForwardStepOpt, B * H, &args).unwrap();
    } else {
        exec.launch(0, k::LstmForwardStep, B * H, &args).unwrap();
    }
    let (mut want_gates, mut want_c, mut want_m) = (vec![0.0; B * g4], vec![0.0; B * H], vec![0.0; B * H]);
    for b in 0..B {
        for j in 0..H {
            if !active(b) {
                want_c[b * H + j] = c_prev[b * H + j] as f64;
                continue;
            }
            let u = lstm_unit(&unit_x(b, j), o);
            for kk in 0..4 {
                want_gates[b * g4 + kk * H + j] = u[kk];
            }
            want_c[b * H + j] = u[4];
            want_m[b * H + j] = u[5];
        }
    }
    let what = format!("LSTM {o:?} seed {seed}");
    check(&format!("{what}: gates"), &gates, &want_gates, 1e-5);
    check(&format!("{what}: c"), &c, &want_c, 1e-5);
    check(&format!("{what}: m"), &m, &want_m, 1e-5);
    check(&format!("{what}: y"), &y, &want_m, 1e-5);

    // Backward from dm = carry + dy and the incoming dc.
    let (dy, mut carry, mut dc) = (random(&mut rng, B * H, 1.0), random(&mut rng, B * H, 1.0), random(&mut rng, B * H, 1.0));
    let (carry_in, dc_in) = (carry.clone(), dc.clone());
    let dpeep_in = random(&mut rng, B * h3, 1.0);
    let mut dpeep = dpeep_in.clone();
    let mut dg = nan(B * g4);
    let args = k::LstmBackwardStepArgs {
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
    if opt {
        let (peephole, dpeep) = if o.peephole { (addr(&peep), addr_mut(&mut dpeep)) } else { (0, 0) };
        let args = options::lstm_backward(args, &o.cell(H, false), peephole, dpeep);
        exec.launch(0, k::LstmBackwardStepOpt, B * H, &args).unwrap();
    } else {
        exec.launch(0, k::LstmBackwardStep, B * H, &args).unwrap();
    }
    let (mut want_dg, mut want_dc, mut want_carry) = (vec![0.0; B * g4], vec![0.0; B * H], vec![0.0; B * H]);
    let mut want_dpeep: Vec<f64> = dpeep_in.iter().map(|&v| v as f64).collect();
    for b in 0..B {
        for j in 0..H {
            let e = b * H + j;
            let dm = (carry_in[e] + if active(b) { dy[e] } else { 0.0 }) as f64;
            if !active(b) {
                want_dc[e] = dc_in[e] as f64;
                want_carry[e] = dm;
                continue;
            }
            let loss = |x: &[f64]| {
                let u = lstm_unit(x, o);
                dm * u[5] + dc_in[e] as f64 * u[4]
            };
            let grad = gradient(&unit_x(b, j), loss);
            for kk in 0..4 {
                want_dg[b * g4 + kk * H + j] = grad[kk];
            }
            want_dc[e] = grad[4];
            for kk in 0..3 {
                want_dpeep[b * h3 + kk * H + j] += grad[5 + kk];
            }
        }
    }
    check(&format!("{what}: dG"), &dg, &want_dg, 1e-4);
    check(&format!("{what}: dc_prev"), &dc, &want_dc, 1e-4);
    check(&format!("{what}: carry"), &carry, &want_carry, 1e-4);
    if o.peephole {
        check(&format!("{what}: dpeep"), &dpeep, &want_dpeep, 1e-4);
    }
}

/// Every combination of the LSTM options (clip 1.5 against pre-activations up to about ±5, so
/// that many gates clip), each on several seeds; the options' entries with every option off too.
#[test]
fn emulated_lstm_option_steps_match_oracle() {
    for seed in 0..12 {
        for o in LstmOpts::all() {
            lstm_case(seed, o, false);
        }
        lstm_case(seed, LstmOpts { peephole: false, clip: 0.0, input_forget: false }, true);
    }
}

/// One GRU unit in f64 from `x = [ax_r, ax_z, ax_n, ah_r, ah_z, ah_n, h_prev]` (input- and
/// hidden-side pre-activations with their biases): `[r, z, n, h]`.
fn gru_unit(x: &[f64], clip: f64) -> [f64; 4] {
    let r = sigmoid(clamp(x[0] + x[3], clip));
    let z = sigmoid(clamp(x[1] + x[4], clip));
    let n = clamp(x[2] + r * x[5], clip).tanh();
    [r, z, n, (1.0 - z) * n + z * x[6]]
}

fn gru_case(seed: u64, clip: f64, force_clip_entry: bool) {
    let mut rng = SplitMix64::new(seed);
    let g3 = 3 * H;
    let (xg, hg) = (random(&mut rng, B * g3, 3.0), random(&mut rng, B * g3, 3.0));
    let (b_ih, b_hh) = (random(&mut rng, g3, 1.0), random(&mut rng, g3, 1.0));
    let h_prev = random(&mut rng, B * H, 1.0);
    let unit_x = |b: usize, j: usize| -> Vec<f64> {
        let mut x: Vec<f64> = (0..3).map(|kk| (xg[b * g3 + kk * H + j] + b_ih[kk * H + j]) as f64).collect();
        x.extend((0..3).map(|kk| (hg[b * g3 + kk * H + j] + b_hh[kk * H + j]) as f64));
        x.push(h_prev[b * H + j] as f64);
        x
    };
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let clipped = force_clip_entry || clip > 0.0;
    let nan = |n: usize| vec![f32::NAN; n];
    let (mut gates, mut extra, mut h, mut y) = (nan(B * g3), nan(B * H), nan(B * H), nan(B * H));
    let args = k::GruForwardStepArgs {
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
        extra: addr_mut(&mut extra),
        h: addr_mut(&mut h),
        y: addr_mut(&mut y),
        y_stride: H as i32,
    };
    if clipped {
        let k::GruForwardStepArgs { batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, extra, h, y, y_stride } = args;
        let args = k::GruForwardStepClipArgs {
            batch,
            hidden,
            step,
            lengths,
            xg,
            hg,
            b_ih,
            b_hh,
            h_prev,
            gates,
            extra,
            h,
            y,
            y_stride,
            clip: clip as f32,
        };
        exec.launch(0, k::GruForwardStepClip, B * H, &args).unwrap();
    } else {
        exec.launch(0, k::GruForwardStep, B * H, &args).unwrap();
    }
    let (mut want_gates, mut want_extra, mut want_h, mut want_y) =
        (vec![0.0; B * g3], vec![0.0; B * H], vec![0.0; B * H], vec![0.0; B * H]);
    for b in 0..B {
        for j in 0..H {
            let e = b * H + j;
            if !active(b) {
                want_h[e] = h_prev[e] as f64;
                continue;
            }
            let x = unit_x(b, j);
            let u = gru_unit(&x, clip);
            for kk in 0..3 {
                want_gates[b * g3 + kk * H + j] = u[kk];
            }
            want_extra[e] = x[5];
            want_h[e] = u[3];
            want_y[e] = u[3];
        }
    }
    let what = format!("GRU clip {clip} seed {seed}");
    check(&format!("{what}: gates"), &gates, &want_gates, 1e-5);
    check(&format!("{what}: extra"), &extra, &want_extra, 1e-5);
    check(&format!("{what}: h"), &h, &want_h, 1e-5);
    check(&format!("{what}: y"), &y, &want_y, 1e-5);

    let (dy, mut carry) = (random(&mut rng, B * H, 1.0), random(&mut rng, B * H, 1.0));
    let carry_in = carry.clone();
    let (mut dgi, mut dgh) = (nan(B * g3), nan(B * g3));
    let args = k::GruBackwardStepArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        gates: addr(&gates),
        extra: addr(&extra),
        h_prev: addr(&h_prev),
        dy: addr(&dy),
        dy_stride: H as i32,
        carry: addr_mut(&mut carry),
        dgi: addr_mut(&mut dgi),
        dgh: addr_mut(&mut dgh),
    };
    if clipped {
        let k::GruBackwardStepArgs { batch, hidden, step, lengths, gates, extra, h_prev, dy, dy_stride, carry, dgi, dgh } = args;
        let args = k::GruBackwardStepClipArgs {
            batch,
            hidden,
            step,
            lengths,
            gates,
            extra,
            h_prev,
            dy,
            dy_stride,
            carry,
            dgi,
            dgh,
            clip: clip as f32,
        };
        exec.launch(0, k::GruBackwardStepClip, B * H, &args).unwrap();
    } else {
        exec.launch(0, k::GruBackwardStep, B * H, &args).unwrap();
    }
    let (mut want_dgi, mut want_dgh, mut want_carry) = (vec![0.0; B * g3], vec![0.0; B * g3], vec![0.0; B * H]);
    for b in 0..B {
        for j in 0..H {
            let e = b * H + j;
            let dh = (carry_in[e] + if active(b) { dy[e] } else { 0.0 }) as f64;
            if !active(b) {
                want_carry[e] = dh;
                continue;
            }
            let grad = gradient(&unit_x(b, j), |x| dh * gru_unit(x, clip)[3]);
            for kk in 0..3 {
                want_dgi[b * g3 + kk * H + j] = grad[kk];
                want_dgh[b * g3 + kk * H + j] = grad[3 + kk];
            }
            // The part of dh_prev that bypasses W_hh.
            want_carry[e] = grad[6];
        }
    }
    check(&format!("{what}: dgi"), &dgi, &want_dgi, 1e-4);
    check(&format!("{what}: dgh"), &dgh, &want_dgh, 1e-4);
    check(&format!("{what}: carry"), &carry, &want_carry, 1e-4);
}

/// The GRU with and without the gate clip (1.5, so that many gates clip); the clip entries
/// with a clip that never applies (100) too.
#[test]
fn emulated_gru_clip_steps_match_oracle() {
    for seed in 0..12 {
        gru_case(seed, 0.0, false);
        gru_case(seed, 1.5, false);
        gru_case(seed, 100.0, true);
    }
}

fn rnn_case(seed: u64, relu: bool, clip: f64) {
    let mut rng = SplitMix64::new(seed);
    let (xg, hg) = (random(&mut rng, B * H, 3.0), random(&mut rng, B * H, 3.0));
    let (b_ih, b_hh) = (random(&mut rng, H, 1.0), random(&mut rng, H, 1.0));
    let h_prev = random(&mut rng, B * H, 1.0);
    let act = |a: f64| {
        let a = clamp(a, clip);
        if relu {
            a.max(0.0)
        } else {
            a.tanh()
        }
    };
    let pre = |b: usize, j: usize| (xg[b * H + j] + b_ih[j] + hg[b * H + j] + b_hh[j]) as f64;
    let emulation = Emulation::default();
    let exec = emulation.exec();
    let nan = |n: usize| vec![f32::NAN; n];
    let (mut gates, mut h, mut y) = (nan(B * H), nan(B * H), nan(B * H));
    let args = k::RnnForwardStepArgs {
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
        h: addr_mut(&mut h),
        y: addr_mut(&mut y),
        y_stride: H as i32,
    };
    if clip > 0.0 {
        let k::RnnForwardStepArgs { batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, h, y, y_stride } = args;
        let args = k::RnnForwardStepClipArgs {
            batch,
            hidden,
            step,
            lengths,
            xg,
            hg,
            b_ih,
            b_hh,
            h_prev,
            gates,
            h,
            y,
            y_stride,
            clip: clip as f32,
        };
        let kernel = if relu { k::RnnReluForwardStepClip } else { k::RnnTanhForwardStepClip };
        exec.launch(0, kernel, B * H, &args).unwrap();
    } else {
        exec.launch(0, if relu { k::RnnReluForwardStep } else { k::RnnTanhForwardStep }, B * H, &args).unwrap();
    }
    let mut want = vec![0.0; B * H];
    let mut want_h = vec![0.0; B * H];
    for b in 0..B {
        for j in 0..H {
            let e = b * H + j;
            if active(b) {
                want[e] = act(pre(b, j));
                want_h[e] = want[e];
            } else {
                want_h[e] = h_prev[e] as f64;
            }
        }
    }
    let what = format!("RNN relu={relu} clip {clip} seed {seed}");
    check(&format!("{what}: gates"), &gates, &want, 1e-5);
    check(&format!("{what}: h"), &h, &want_h, 1e-5);
    check(&format!("{what}: y"), &y, &want, 1e-5);

    let (dy, mut carry) = (random(&mut rng, B * H, 1.0), random(&mut rng, B * H, 1.0));
    let carry_in = carry.clone();
    let mut dg = nan(B * H);
    let args = k::RnnBackwardStepArgs {
        batch: B as i32,
        hidden: H as i32,
        step: 0,
        lengths: addr(&LENGTHS),
        gates: addr(&gates),
        dy: addr(&dy),
        dy_stride: H as i32,
        carry: addr_mut(&mut carry),
        dg: addr_mut(&mut dg),
    };
    if clip > 0.0 {
        let k::RnnBackwardStepArgs { batch, hidden, step, lengths, gates, dy, dy_stride, carry, dg } = args;
        let args = k::RnnBackwardStepClipArgs { batch, hidden, step, lengths, gates, dy, dy_stride, carry, dg, clip: clip as f32 };
        let kernel = if relu { k::RnnReluBackwardStepClip } else { k::RnnTanhBackwardStepClip };
        exec.launch(0, kernel, B * H, &args).unwrap();
    } else {
        exec.launch(0, if relu { k::RnnReluBackwardStep } else { k::RnnTanhBackwardStep }, B * H, &args).unwrap();
    }
    let (mut want_dg, mut want_carry) = (vec![0.0; B * H], vec![0.0; B * H]);
    for b in 0..B {
        for j in 0..H {
            let e = b * H + j;
            let dh = (carry_in[e] + if active(b) { dy[e] } else { 0.0 }) as f64;
            if active(b) {
                want_dg[e] = gradient(&[pre(b, j)], |x| dh * act(x[0]))[0];
            } else {
                want_carry[e] = dh;
            }
        }
    }
    check(&format!("{what}: dG"), &dg, &want_dg, 1e-4);
    check(&format!("{what}: carry"), &carry, &want_carry, 1e-4);
}

/// Both vanilla RNNs with and without the gate clip (relu: 1.5, below many pre-activations, so
/// that its upper bound clips; tanh: 1.5 too).
#[test]
fn emulated_rnn_clip_steps_match_oracle() {
    for seed in 0..12 {
        for relu in [false, true] {
            rnn_case(seed, relu, 0.0);
            rnn_case(seed, relu, 1.5);
        }
    }
}
