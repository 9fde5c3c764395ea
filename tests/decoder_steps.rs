//! A decoder run one step at a time (`Rnn::start_steps`, `step`, `backward_steps`): with the
//! inputs known in advance (teacher forcing) it computes what one call over the whole sequence
//! computes, bit for bit on the reference and on the CPU backend (every ISA, f32), the
//! parameters' gradients included (one product per weight over all the steps);
//! with input feeding (each step's input computed from the previous step's output) its
//! step-by-step backward gives the gradients of central differences; inference steps give the
//! training steps' outputs, and their states can be reordered (a beam search); bad use is an
//! error naming the argument.

use rnn_kernels::masks::{MaskStream, SuppliedMasks};
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{Backend, CellKind, Cpu, Error, Params, Reference, Rnn, RnnConfig, SeqShape};

fn uniform(rng: &mut SplitMix64, n: usize, r: f64) -> Vec<f64> {
    (0..n).map(|_| rng.uniform(-r, r)).collect()
}

fn down(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Forward stacks of every cell with options: projection, peepholes, layer norm, Cho's GRU,
/// batch-first, recurrent and input dropout, dropout between layers and zoneout.
fn configs() -> Vec<RnnConfig> {
    vec![
        RnnConfig::new(CellKind::Lstm, 5, 7).num_layers(2).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 5, 7).proj_size(4).peephole(true).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 5, 7).num_layers(2).layer_norm(true).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 5, 6).num_layers(3).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 5, 6).linear_before_reset(false).batch_first(true).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 5, 6).num_layers(2).recurrent_dropout(0.3).input_dropout(0.2).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 5, 6).build().unwrap(),
        // The per-step masks: step t of the steps draws step t of the whole call's.
        RnnConfig::new(CellKind::Lstm, 5, 7).num_layers(3).dropout(0.4).zoneout(0.3).zoneout_cell(0.5).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 5, 6).num_layers(2).dropout(0.3).zoneout(0.4).recurrent_dropout(0.2).build().unwrap(),
    ]
}

/// A problem: parameters, `x [T, B, I]`, `h0`, `c0`, `dy`, `dhn`, `dcn`.
struct Problem {
    cfg: RnnConfig,
    t: usize,
    b: usize,
    params: Vec<f64>,
    x: Vec<f64>,
    h0: Vec<f64>,
    c0: Option<Vec<f64>>,
    dy: Vec<f64>,
    dhn: Vec<f64>,
    dcn: Option<Vec<f64>>,
}

impl Problem {
    fn new(cfg: &RnnConfig, t: usize, b: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let shape = SeqShape::new(t, b).unwrap();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let lstm = cfg.cell().has_cell_state();
        Problem {
            cfg: cfg.clone(),
            t,
            b,
            params: Params::<f64>::init_uniform(cfg, seed).unwrap().into_vec(),
            x: uniform(&mut rng, n(shape.x_shape(cfg)), 1.0),
            h0: uniform(&mut rng, n(shape.h_shape(cfg)), 0.5),
            c0: lstm.then(|| uniform(&mut rng, n(shape.c_shape(cfg)), 0.5)),
            dy: uniform(&mut rng, n(shape.y_shape(cfg)), 1.0),
            dhn: uniform(&mut rng, n(shape.h_shape(cfg)), 1.0),
            dcn: lstm.then(|| uniform(&mut rng, n(shape.c_shape(cfg)), 1.0)),
        }
    }

    /// `[y, hn, cn, dx, dh0, dc0, dparams]` of one call over the whole sequence.
    fn whole<T: rnn_kernels::Float, B: Backend<T, Buf = [T]>>(
        &self,
        rnn: &Rnn<T, B>,
        masks: &MaskStream,
        conv: impl Fn(&[f64]) -> Vec<T>,
    ) -> Vec<Vec<T>> {
        let shape = SeqShape::new(self.t, self.b).unwrap();
        let mut reserve = Default::default();
        let (x, h0, c0) = (conv(&self.x), conv(&self.h0), self.c0.as_deref().map(&conv));
        let o = rnn.forward_training_masked(&shape, &x, Some(&h0), c0.as_deref(), masks.clone(), &mut reserve).unwrap();
        let (dy, dhn, dcn) = (conv(&self.dy), conv(&self.dhn), self.dcn.as_deref().map(&conv));
        let g = rnn.backward(&reserve, Some(&dy), Some(&dhn), dcn.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
    }

    /// The same through the decoder steps: each step's `x` row block in, its `y` out; backward
    /// walks the steps with their `dy`.
    fn stepped<T: rnn_kernels::Element, B: Backend<T, Buf = [T]>>(
        &self,
        rnn: &Rnn<T, B>,
        masks: &MaskStream,
        conv: impl Fn(&[f64]) -> Vec<T>,
    ) -> Vec<Vec<T>> {
        let (b, i, out) = (self.b, self.cfg.input_size(), self.cfg.output_size());
        let (h0, c0) = (conv(&self.h0), self.c0.as_deref().map(&conv));
        let mut steps = rnn.start_steps(b, Some(&h0), c0.as_deref(), true, Some(masks.clone())).unwrap();
        let x = conv(&self.x);
        let mut y = Vec::new();
        for t in 0..self.t {
            // Batch-first x [B, T, I]: step t's rows are strided; a step's x is [B, I] either way.
            let xt: Vec<T> = if self.cfg.batch_first() {
                (0..b).flat_map(|r| x[(r * self.t + t) * i..(r * self.t + t + 1) * i].to_vec()).collect()
            } else {
                x[t * b * i..(t + 1) * b * i].to_vec()
            };
            y.push(rnn.step(&mut steps, &xt).unwrap());
        }
        let (hn, cn) = (steps.h().to_vec(), steps.c().map(<[T]>::to_vec).unwrap_or_default());
        let (dy, dhn, dcn) = (conv(&self.dy), conv(&self.dhn), self.dcn.as_deref().map(&conv));
        let mut back = rnn.backward_steps(&steps, Some(&dhn), dcn.as_deref()).unwrap();
        while let Some(t) = back.next_step() {
            let dyt: Vec<T> = if self.cfg.batch_first() {
                (0..b).flat_map(|r| dy[(r * self.t + t) * out..(r * self.t + t + 1) * out].to_vec()).collect()
            } else {
                dy[t * b * out..(t + 1) * b * out].to_vec()
            };
            back.step(rnn, Some(&dyt)).unwrap();
        }
        let g = back.finish().unwrap();
        // Back to the whole call's layouts.
        let relayout = |steps: Vec<Vec<T>>, w: usize| -> Vec<T> {
            if self.cfg.batch_first() {
                (0..b).flat_map(|r| (0..self.t).flat_map(|t| steps[t][r * w..(r + 1) * w].to_vec()).collect::<Vec<T>>()).collect()
            } else {
                steps.into_iter().flatten().collect()
            }
        };
        let dx_steps: Vec<Vec<T>> = g.dx.chunks(b * i).map(<[T]>::to_vec).collect();
        vec![relayout(y, out), hn, cn, relayout(dx_steps, i), g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
    }
}

const NAMES: [&str; 7] = ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"];

/// Teacher forcing through the steps is the whole call on the reference, bit for bit: every
/// output, every input and state gradient (each is computed row by row the same way), and the
/// parameters' gradients (the same products over the rows of all the steps, computed once the
/// steps are walked).
#[test]
fn steps_are_the_whole_call_on_the_reference() {
    for (c, cfg) in configs().iter().enumerate() {
        let p = Problem::new(cfg, 5, 3, 40 + c as u64);
        let (rnn, m) = (Rnn::new(Reference, cfg, &p.params[..]).unwrap(), MaskStream::new(5, 2));
        let (want, got) = (p.whole(&rnn, &m, <[f64]>::to_vec), p.stepped(&rnn, &m, <[f64]>::to_vec));
        for k in 0..7 {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got[k]), bits(&want[k]), "{cfg:?}: {}", NAMES[k]);
        }
    }
}

/// The parameters' gradients of many steps: 130 steps of 64 rows (8320 rows) pass the
/// backends' block of rows summed on its own (`HostKernels::weight_grad_rows`: 8192 rows on
/// the CPU, 64 on the reference), so the steps' gradients are the whole call's blocks, summed
/// in the same order, bit for bit (a sum of per-step products would differ).
#[test]
fn many_steps_give_the_whole_calls_parameter_gradients() {
    let cfg = RnnConfig::new(CellKind::Lstm, 6, 5).num_layers(2).build().unwrap();
    let p = Problem::new(&cfg, 130, 64, 7);
    let m = MaskStream::new(1, 0);
    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for isa in rnn_kernels::testkit::isas() {
        let rnn = Rnn::new(Cpu::with_isa(isa, 2).unwrap(), &cfg, &down(&p.params)[..]).unwrap();
        let (want, got) = (p.whole(&rnn, &m, down), p.stepped(&rnn, &m, down));
        assert_eq!(bits32(&got[6]), bits32(&want[6]), "{isa:?}: dparams");
    }
    let rnn = Rnn::new(Reference, &cfg, &p.params[..]).unwrap();
    let (want, got) = (p.whole(&rnn, &m, <[f64]>::to_vec), p.stepped(&rnn, &m, <[f64]>::to_vec));
    assert_eq!(got[6].iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want[6].iter().map(|x| x.to_bits()).collect::<Vec<_>>());
}

/// Masks supplied by the caller (those of a drawn stream read back): the steps read step `t`'s
/// of them, giving the drawn stream's results bit for bit; masks that stop before the last step
/// are an error naming `masks` at the step that lacks them.
#[test]
fn steps_read_supplied_masks_at_their_own_step() {
    for (c, cfg) in configs().iter().enumerate().filter(|(_, c)| c.dropout().is_some() || c.zoneout().is_some()) {
        let p = Problem::new(cfg, 5, 3, 80 + c as u64);
        let rnn = Rnn::new(Reference, cfg, &p.params[..]).unwrap();
        let drawn = MaskStream::new(9, 4);
        let supplied = MaskStream::supplied(SuppliedMasks::drawn(&drawn, cfg, &SeqShape::new(p.t, p.b).unwrap()).unwrap());
        let (want, got) = (p.whole(&rnn, &drawn, <[f64]>::to_vec), p.stepped(&rnn, &supplied, <[f64]>::to_vec));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for k in 0..7 {
            assert_eq!(bits(&got[k]), bits(&want[k]), "{cfg:?}: {}", NAMES[k]);
        }
        // Without the per-step masks the steps differ (the test can see a wrong step).
        let other = p.stepped(&rnn, &MaskStream::new(9, 5), <[f64]>::to_vec);
        assert_ne!(bits(&other[0]), bits(&want[0]), "{cfg:?}");
        // Masks for 4 steps: the fifth step is refused, naming `masks`.
        let short = MaskStream::supplied(SuppliedMasks::drawn(&drawn, cfg, &SeqShape::new(p.t - 1, p.b).unwrap()).unwrap());
        let mut steps = rnn.start_steps(p.b, None, p.c0.as_deref(), true, Some(short)).unwrap();
        let xt = &p.x[..p.b * cfg.input_size()];
        for _ in 0..p.t - 1 {
            rnn.step(&mut steps, xt).unwrap();
        }
        let e = rnn.step(&mut steps, xt).unwrap_err();
        assert!(e.to_string().contains("`masks`"), "{cfg:?}: {e}");
        assert_eq!(steps.steps(), p.t - 1, "a refused step leaves the run as it was");
    }
}

/// The same on the CPU backend, f32, with each ISA of the machine and 1 and 2 threads. With
/// `B` ≥ 6 rows a one-step product takes the blocked GEMM path, as the whole call's, so every
/// value is the whole call's bit for bit, the parameters' gradients included; with fewer rows
/// the steps' products take the skinny path (one chain over all of `k`, where the blocked path
/// may add blocks or round edge tiles otherwise), and the values agree within the f32
/// tolerances of the backends' parity tests.
#[test]
fn steps_are_the_whole_call_on_the_cpu_backend() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for isa in rnn_kernels::testkit::isas() {
        for threads in [1, 2] {
            for (c, cfg) in configs().iter().enumerate() {
                let m = MaskStream::new(5, 2);
                let rnn = |p: &Problem| Rnn::new(Cpu::with_isa(isa, threads).unwrap(), cfg, &down(&p.params)[..]).unwrap();
                let p = Problem::new(cfg, 5, 6, 60 + c as u64);
                let (want, got) = (p.whole(&rnn(&p), &m, down), p.stepped(&rnn(&p), &m, down));
                for k in 0..7 {
                    assert_eq!(bits(&got[k]), bits(&want[k]), "{isa:?}, {threads} threads, {cfg:?}: {}", NAMES[k]);
                }
                let p = Problem::new(cfg, 6, 3, 70 + c as u64);
                let (want, got) = (p.whole(&rnn(&p), &m, down), p.stepped(&rnn(&p), &m, down));
                for k in 0..7 {
                    let e = max_error(&got[k], &want[k]);
                    let tol = if k < 3 { 1e-5 } else { 1e-4 };
                    assert!(e < tol, "{isa:?}, {threads} threads, {cfg:?}: {} error {e:.2e}", NAMES[k]);
                }
            }
        }
    }
}

/// Input feeding: step `t`'s input is `[e_t; W_f y_{t-1}]` (`e_t` given, `y_{-1} = 0`), the
/// loss `Σ_t r_t · y_t`. The caller's backward walks the steps from the last, each step's
/// output gradient `r_t + W_fᵀ dx_{t+1}[feed part]` using the input gradient the later step
/// returned; the gradients w.r.t. the parameters, `h0`, `c0`, `e` and `W_f` match central
/// differences of the loss.
#[test]
fn input_feeding_backward_matches_central_differences() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let (t_len, b, e_w, hout) = (4, 2, 3, 4);
        let cfg = RnnConfig::new(cell, e_w + hout, hout).num_layers(2).build().unwrap();
        let mut rng = SplitMix64::new(7);
        let params = Params::<f64>::init_uniform(&cfg, 3).unwrap().into_vec();
        let e = uniform(&mut rng, t_len * b * e_w, 1.0);
        let wf = uniform(&mut rng, hout * hout, 0.5);
        let r = uniform(&mut rng, t_len * b * hout, 1.0);
        let h0 = uniform(&mut rng, 2 * b * hout, 0.5);
        let c0 = (cell == CellKind::Lstm).then(|| uniform(&mut rng, 2 * b * hout, 0.5));
        // x_t[row] = [e_t[row]; W_f y_{t-1}[row]].
        let input = |et: &[f64], yprev: &[f64], wf: &[f64]| -> Vec<f64> {
            (0..b)
                .flat_map(|row| {
                    let fed: Vec<f64> = (0..hout).map(|o| (0..hout).map(|k| wf[o * hout + k] * yprev[row * hout + k]).sum()).collect();
                    et[row * e_w..(row + 1) * e_w].iter().copied().chain(fed).collect::<Vec<f64>>()
                })
                .collect()
        };
        let loss = |params: &[f64], e: &[f64], wf: &[f64], h0: &[f64], c0: Option<&[f64]>| -> f64 {
            let rnn = Rnn::new(Reference, &cfg, params).unwrap();
            let mut steps = rnn.start_steps(b, Some(h0), c0, false, None).unwrap();
            let mut y = vec![0.0; b * hout];
            let mut l = 0.0;
            for t in 0..t_len {
                y = rnn.step(&mut steps, &input(&e[t * b * e_w..(t + 1) * b * e_w], &y, wf)).unwrap();
                l += y.iter().zip(&r[t * b * hout..(t + 1) * b * hout]).map(|(a, c)| a * c).sum::<f64>();
            }
            l
        };
        // The analytic gradients through the steps.
        let rnn = Rnn::new(Reference, &cfg, &params[..]).unwrap();
        let mut steps = rnn.start_steps(b, Some(&h0), c0.as_deref(), true, None).unwrap();
        let mut ys = vec![vec![0.0; b * hout]];
        for t in 0..t_len {
            let y = rnn.step(&mut steps, &input(&e[t * b * e_w..(t + 1) * b * e_w], &ys[t], &wf)).unwrap();
            ys.push(y);
        }
        let (mut de, mut dwf) = (vec![0.0; e.len()], vec![0.0; wf.len()]);
        let mut back = rnn.backward_steps(&steps, None, None).unwrap();
        let mut dfed_next = vec![0.0; b * hout]; // ∂L/∂(W_f y_t) from step t + 1
        while let Some(t) = back.next_step() {
            // dy_t = r_t + W_fᵀ · (the feed part of dx_{t+1}).
            let mut dy = r[t * b * hout..(t + 1) * b * hout].to_vec();
            for row in 0..b {
                for k in 0..hout {
                    dy[row * hout + k] += (0..hout).map(|o| wf[o * hout + k] * dfed_next[row * hout + o]).sum::<f64>();
                }
            }
            let dx = back.step(&rnn, Some(&dy)).unwrap();
            for row in 0..b {
                de[(t * b + row) * e_w..(t * b + row + 1) * e_w].copy_from_slice(&dx[row * (e_w + hout)..row * (e_w + hout) + e_w]);
                for o in 0..hout {
                    let g = dx[row * (e_w + hout) + e_w + o];
                    dfed_next[row * hout + o] = g;
                    for k in 0..hout {
                        dwf[o * hout + k] += g * ys[t][row * hout + k];
                    }
                }
            }
        }
        let g = back.finish().unwrap();
        let eps = 1e-6;
        let mut worst = 0.0f64;
        let mut check = |analytic: &[f64], which: usize| {
            for i in 0..analytic.len() {
                let mut v = [params.clone(), e.clone(), wf.clone(), h0.clone(), c0.clone().unwrap_or_default()];
                v[which][i] += eps;
                let c = |v: &[Vec<f64>; 5]| if c0.is_some() { Some(v[4].clone()) } else { None };
                let up = loss(&v[0], &v[1], &v[2], &v[3], c(&v).as_deref());
                v[which][i] -= 2.0 * eps;
                let down = loss(&v[0], &v[1], &v[2], &v[3], c(&v).as_deref());
                let numeric = (up - down) / (2.0 * eps);
                worst = worst.max((numeric - analytic[i]).abs() / numeric.abs().max(1.0));
            }
        };
        check(g.dparams.as_ref().unwrap(), 0);
        check(&de, 1);
        check(&dwf, 2);
        check(&g.dh0, 3);
        if let Some(dc0) = &g.dc0 {
            check(dc0, 4);
        }
        assert!(worst < 1e-7, "{cell:?}: gradient error {worst:.2e}");
        // The feedback matters: without it (dy_t = r_t) the parameters' gradient differs.
        let mut back = rnn.backward_steps(&steps, None, None).unwrap();
        while let Some(t) = back.next_step() {
            back.step(&rnn, Some(&r[t * b * hout..(t + 1) * b * hout])).unwrap();
        }
        let plain = back.finish().unwrap();
        assert!(max_error(plain.dparams.as_ref().unwrap(), g.dparams.as_ref().unwrap()) > 1e-3, "{cell:?}");
    }
}

/// Inference steps give the training steps' outputs and keep no record; their state can be
/// reordered and its rows changed between steps (a beam search), and a step then runs on the
/// reordered rows as a fresh run from that state does; a training run's state cannot be
/// changed.
#[test]
fn inference_steps_and_reordered_states() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).build().unwrap();
    let p = Problem::new(&cfg, 3, 3, 9);
    let rnn = Rnn::new(Reference, &cfg, &p.params[..]).unwrap();
    let (mut train, mut infer) = (
        rnn.start_steps(3, Some(&p.h0), p.c0.as_deref(), true, None).unwrap(),
        rnn.start_steps(3, Some(&p.h0), p.c0.as_deref(), false, None).unwrap(),
    );
    for t in 0..3 {
        let xt = &p.x[t * 9..(t + 1) * 9];
        assert_eq!(rnn.step(&mut train, xt).unwrap(), rnn.step(&mut infer, xt).unwrap());
    }
    assert!(rnn.backward_steps(&infer, None, None).err().unwrap().to_string().contains("`steps`"));
    // Rows 2, 0, 0, 1 of each layer's block: four hypotheses from three.
    let order = [2usize, 0, 0, 1];
    let gather = |v: &[f64], w: usize| -> Vec<f64> {
        (0..2).flat_map(|l| order.iter().flat_map(move |&r| v[(l * 3 + r) * w..(l * 3 + r + 1) * w].to_vec())).collect()
    };
    let (h, c) = (gather(infer.h(), 4), gather(infer.c().unwrap(), 4));
    // `Steps::reorder` gathers the same rows; `state_mut` lets a caller write them itself.
    let mut copy = rnn.start_steps(3, Some(infer.h()), infer.c(), false, None).unwrap();
    assert_eq!(copy.batch(), 3);
    copy.reorder(&order).unwrap();
    assert_eq!((copy.batch(), copy.h(), copy.c().unwrap()), (4, &h[..], &c[..]));
    let (hs, cs) = infer.state_mut().unwrap();
    *hs = h.clone();
    *cs.unwrap() = c.clone();
    let x4 = &p.x[..4 * 3];
    let y = rnn.step(&mut infer, x4).unwrap();
    let mut fresh = rnn.start_steps(4, Some(&h), Some(&c), false, None).unwrap();
    assert_eq!(y, rnn.step(&mut fresh, x4).unwrap());
    assert_eq!(y, rnn.step(&mut copy, x4).unwrap());
    // A training run's state is not changed between its steps.
    assert!(train.training() && !infer.training());
    let e = train.state_mut().unwrap_err();
    assert!(e.to_string().contains("`steps`"), "{e}");
    let e = train.reorder(&[0]).unwrap_err();
    assert!(e.to_string().contains("`steps`"), "{e}");
}

/// `Steps::reorder`'s errors name the argument and leave the run as it was; a GRU (no cell
/// state) reorders its `h` alone, and one row may become many.
#[test]
fn reorder_checks_its_rows() {
    let cfg = RnnConfig::new(CellKind::Gru, 2, 3).num_layers(2).build().unwrap();
    let params = Params::<f64>::init_uniform(&cfg, 4).unwrap().into_vec();
    let rnn = Rnn::new(Reference, &cfg, &params[..]).unwrap();
    let h0: Vec<f64> = (0..2 * 2 * 3).map(|v| v as f64).collect();
    let mut s = rnn.start_steps(2, Some(&h0), None, false, None).unwrap();
    for (rows, arg) in [(&[][..], "`rows`"), (&[1, 2][..], "`rows[1]`")] {
        let e = s.reorder(rows).unwrap_err();
        assert!(e.to_string().contains(arg), "{e}");
        assert_eq!(s.h(), &h0[..]);
    }
    s.reorder(&[1, 1, 1]).unwrap();
    let want: Vec<f64> = [3.0, 4.0, 5.0].repeat(3).into_iter().chain([9.0, 10.0, 11.0].repeat(3)).collect();
    assert_eq!((s.batch(), s.h(), s.c()), (3, &want[..], None));
    // A state that `state_mut` left without whole blocks.
    s.state_mut().unwrap().0.pop();
    let e = s.reorder(&[0]).unwrap_err();
    assert!(e.to_string().contains("`steps.h`"), "{e}");
}

/// `Rnn::take_backward_steps` walks the steps as `backward_steps` does, bit for bit, with the
/// record taken out of the run: the run's next steps are a new record, whose walk is that of a
/// fresh run from the state they started at (truncated backpropagation through time). A bad
/// state gradient leaves the run as it was. `Rnn::from_plan` runs a plan made apart.
#[test]
fn taken_walks_and_plans_made_apart() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).proj_size(2).build().unwrap();
    let p = Problem::new(&cfg, 5, 3, 21);
    let rnn = Rnn::from_plan(Reference, Backend::<f64>::plan(&Reference, &cfg, &p.params[..]).unwrap());
    let xt = |t: usize| &p.x[t * 9..(t + 1) * 9];
    let walk = |back: &mut rnn_kernels::BackwardSteps<'_, f64, Reference>| {
        while back.next_step().is_some() {
            back.step(&rnn, Some(&[0.25; 6])).unwrap();
        }
    };
    let mut run = rnn.start_steps(3, Some(&p.h0), p.c0.as_deref(), true, None).unwrap();
    for t in 0..3 {
        rnn.step(&mut run, xt(t)).unwrap();
    }
    let mut borrowed = rnn.backward_steps(&run, Some(&p.dhn[..]), p.dcn.as_deref()).unwrap();
    walk(&mut borrowed);
    let want = borrowed.finish().unwrap();
    let e = rnn.take_backward_steps(&mut run, Some(&p.dhn[..2]), None).err().unwrap();
    assert!(e.to_string().contains("`dhn`"), "{e}");
    let mut taken = rnn.take_backward_steps(&mut run, Some(&p.dhn[..]), p.dcn.as_deref()).unwrap();
    assert_eq!(taken.next_step(), Some(2));
    walk(&mut taken);
    assert_eq!(taken.finish().unwrap(), want);
    // The run goes on from its state, a training run with no step kept.
    assert!(run.training() && run.steps() == 3);
    assert!(rnn.take_backward_steps(&mut run, None, None).err().unwrap().to_string().contains("`steps`"));
    let mut fresh = rnn.start_steps(3, Some(run.h()), run.c(), true, None).unwrap();
    for t in 3..5 {
        assert_eq!(rnn.step(&mut run, xt(t)).unwrap(), rnn.step(&mut fresh, xt(t)).unwrap());
    }
    let mut second = rnn.take_backward_steps(&mut run, None, None).unwrap();
    let mut again = rnn.backward_steps(&fresh, None, None).unwrap();
    assert_eq!(second.next_step(), Some(1));
    walk(&mut second);
    walk(&mut again);
    assert_eq!(second.finish().unwrap(), again.finish().unwrap());
}

#[test]
fn bad_use_is_an_error_naming_the_argument() {
    let named = |e: Error, arg: &str| {
        assert!(
            e.to_string().contains(&format!("`{arg}`")) || matches!(&e, Error::Unsupported { option, .. } if option == arg),
            "{arg}: {e}"
        )
    };
    let lstm = |b: rnn_kernels::RnnConfigBuilder| b.build().unwrap();
    let params = |cfg: &RnnConfig| Params::<f64>::init_uniform(cfg, 1).unwrap().into_vec();
    for (cfg, arg) in [
        (lstm(RnnConfig::new(CellKind::Lstm, 3, 4).bidirectional(true)), "direction"),
        (lstm(RnnConfig::new(CellKind::Lstm, 3, 4).direction(rnn_kernels::Direction::Reverse)), "direction"),
    ] {
        let rnn = Rnn::new(Reference, &cfg, &params(&cfg)[..]).unwrap();
        named(rnn.start_steps(2, None, None, true, Some(MaskStream::new(1, 1))).err().unwrap(), arg);
    }
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 4).build().unwrap();
    let rnn = Rnn::new(Reference, &cfg, &params(&cfg)[..]).unwrap();
    named(rnn.start_steps(2, Some(&[0.0; 3]), None, true, None).err().unwrap(), "h0");
    named(rnn.start_steps(2, None, Some(&[0.0; 3]), true, None).err().unwrap(), "c0");
    named(rnn.start_steps(0, None, None, true, None).err().unwrap(), "batch");
    let mut steps = rnn.start_steps(2, None, None, true, None).unwrap();
    named(rnn.step(&mut steps, &[0.0; 5]).unwrap_err(), "x");
    named(rnn.backward_steps(&steps, None, None).and_then(|b| b.finish()).unwrap_err(), "steps");
    rnn.step(&mut steps, &[0.1; 6]).unwrap();
    named(rnn.backward_steps(&steps, Some(&[0.0; 3]), None).err().unwrap(), "dhn");
    let mut back = rnn.backward_steps(&steps, None, None).unwrap();
    named(back.step(&rnn, Some(&[0.0; 3])).unwrap_err(), "dy");
    back.step(&rnn, None).unwrap();
    named(back.step(&rnn, None).unwrap_err(), "step");
    back.finish().unwrap();
}

/// The backend's deferred calls as a framework makes them ([`Backend::backward_step_deferred`],
/// [`Backend::deferred_param_grads`]): `Overwrite` writes over whatever `dparams` held and
/// `Accumulate` adds onto it; bad arguments are errors naming them.
#[test]
fn deferred_backend_calls_write_and_check_their_arguments() {
    use rnn_kernels::{BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode, HostReserve, HostStepGrads};
    type R = HostReserve<f64>;
    let named = |e: Error, arg: &str| assert!(e.to_string().contains(&format!("`{arg}`")), "{arg}: {e}");
    let gru = RnnConfig::new(CellKind::Gru, 3, 4).build().unwrap();
    let params = Params::<f64>::init_uniform(&gru, 1).unwrap().into_vec();
    let plan = Backend::<f64>::plan(&Reference, &gru, &params).unwrap();
    let fill = |t: usize, b: usize| -> R {
        let (x, mut y) = (vec![0.3; t * b * 3], vec![0.0; t * b * 4]);
        let mut r = R::default();
        let input = ForwardInput { x: &x[..], h0: None, c0: None, masks: None };
        let output = ForwardOutput { y: &mut y[..], hn: None, cn: None };
        Reference.forward_training(&plan, &SeqShape::new(t, b).unwrap(), input, output, &mut r).unwrap();
        r
    };
    let walk = |r: &R, acc: &mut HostStepGrads<f64>, dparams: Option<&mut [f64]>| {
        let (t, b) = (r.shape().unwrap().steps(), r.shape().unwrap().batch());
        let (dy, mut dx, mut dh0) = (vec![0.5; t * b * 4], vec![0.0; t * b * 3], vec![0.0; b * 4]);
        let grads = BackwardInput { dy: Some(&dy[..]), dhn: None, dcn: None };
        let output = BackwardOutput { dx: Some(&mut dx[..]), dh0: Some(&mut dh0[..]), dc0: None, dparams };
        Reference.backward_step_deferred(&plan, r, grads, output, acc)
    };
    use rnn_kernels::RnnReserve;
    let steps = [fill(1, 2), fill(1, 2)];
    let grads = |mode: GradMode, start: f64| {
        let mut acc = HostStepGrads::default();
        for r in steps.iter().rev() {
            assert!(walk(r, &mut acc, None).unwrap());
        }
        assert_eq!(acc.steps(), 2);
        let mut dp = vec![start; params.len()];
        Reference.deferred_param_grads(&plan, &steps, acc, &mut dp[..], mode).unwrap();
        dp
    };
    let fresh = grads(GradMode::Overwrite, 0.0);
    assert!(fresh.iter().any(|&v| v != 0.0));
    assert_eq!(grads(GradMode::Overwrite, f64::NAN), fresh, "Overwrite writes over what dparams held");
    let added = grads(GradMode::Accumulate, 1.0);
    assert!(added.iter().zip(&fresh).all(|(a, f)| (a - (1.0 + f)).abs() < 1e-12), "Accumulate adds onto dparams");

    let mut acc = HostStepGrads::default();
    let mut dp = vec![0.0; params.len()];
    named(walk(&steps[1], &mut acc, Some(&mut dp[..])).unwrap_err(), "dparams");
    named(walk(&fill(2, 2), &mut acc, None).unwrap_err(), "reserve");
    walk(&steps[1], &mut acc, None).unwrap();
    named(walk(&fill(1, 3), &mut acc, None).unwrap_err(), "reserve");
    named(
        Reference.deferred_param_grads(&plan, &steps[..0], HostStepGrads::default(), &mut dp[..], GradMode::Overwrite).unwrap_err(),
        "reserves",
    );
    named(Reference.deferred_param_grads(&plan, &steps, acc, &mut dp[..], GradMode::Overwrite).unwrap_err(), "acc");
    let mut acc = HostStepGrads::default();
    walk(&steps[1], &mut acc, None).unwrap();
    walk(&steps[0], &mut acc, None).unwrap();
    named(Reference.deferred_param_grads(&plan, &steps, acc, &mut dp[1..], GradMode::Overwrite).unwrap_err(), "dparams");
    // Gradients walked with another plan (another hidden size): `acc`, not a panic.
    let other = RnnConfig::new(CellKind::Gru, 3, 5).build().unwrap();
    let oplan = Backend::<f64>::plan(&Reference, &other, &Params::<f64>::init_uniform(&other, 1).unwrap().into_vec()[..]).unwrap();
    let mut acc = HostStepGrads::default();
    for _ in 0..2 {
        let (x, mut y) = (vec![0.3; 2 * 3], vec![0.0; 2 * 5]);
        let mut r = R::default();
        let input = ForwardInput { x: &x[..], h0: None, c0: None, masks: None };
        Reference
            .forward_training(&oplan, &SeqShape::new(1, 2).unwrap(), input, ForwardOutput { y: &mut y[..], hn: None, cn: None }, &mut r)
            .unwrap();
        let (mut dx, mut dh0) = (vec![0.0; 2 * 3], vec![0.0; 2 * 5]);
        let output = BackwardOutput { dx: Some(&mut dx[..]), dh0: Some(&mut dh0[..]), dc0: None, dparams: None };
        Reference.backward_step_deferred(&oplan, &r, BackwardInput { dy: None, dhn: None, dcn: None }, output, &mut acc).unwrap();
    }
    named(Reference.deferred_param_grads(&plan, &steps, acc, &mut dp[..], GradMode::Overwrite).unwrap_err(), "acc");
    let mixed = [fill(1, 2), fill(1, 3)];
    let mut acc = HostStepGrads::default();
    walk(&mixed[1], &mut acc, None).unwrap();
    walk(&mixed[1], &mut acc, None).unwrap();
    named(Reference.deferred_param_grads(&plan, &mixed, acc, &mut dp[..], GradMode::Overwrite).unwrap_err(), "reserves");
    // A bidirectional stack has no decoder steps.
    let bi = RnnConfig::new(CellKind::Gru, 3, 4).bidirectional(true).build().unwrap();
    let bplan = Backend::<f64>::plan(&Reference, &bi, &Params::<f64>::init_uniform(&bi, 1).unwrap().into_vec()[..]).unwrap();
    let (x, mut y) = (vec![0.3; 2 * 3], vec![0.0; 2 * 8]);
    let mut r = R::default();
    let input = ForwardInput { x: &x[..], h0: None, c0: None, masks: None };
    Reference
        .forward_training(&bplan, &SeqShape::new(1, 2).unwrap(), input, ForwardOutput { y: &mut y[..], hn: None, cn: None }, &mut r)
        .unwrap();
    let (mut dx, mut dh0) = (vec![0.0; 2 * 3], vec![0.0; 2 * 2 * 4]);
    let output = BackwardOutput { dx: Some(&mut dx[..]), dh0: Some(&mut dh0[..]), dc0: None, dparams: None };
    let grads = BackwardInput { dy: None, dhn: None, dcn: None };
    named(Reference.backward_step_deferred(&bplan, &r, grads, output, &mut HostStepGrads::default()).unwrap_err(), "direction");
}

/// With bf16 storage the steps round the states they keep between steps (the whole call keeps
/// them in f32), and their parameters' gradients are summed in f32 over all the steps and rounded
/// once: every output and gradient within the derived 16-bit bounds (`testkit::tolerance`) of
/// the f64 reference's whole call on the same bf16 values.
#[test]
fn bf16_steps_are_within_the_derived_bounds() {
    use half::bf16;
    use rnn_kernels::testkit::tolerance::{error_ratios, half_storage_bounds, HalfInputs, OUTPUTS};
    let round = |v: &[f64]| v.iter().map(|&x| bf16::from_f64(x).to_f64()).collect::<Vec<f64>>();
    let to = |v: &[f64]| v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<bf16>>();
    let (t, b) = (5, 6);
    for (c, cfg) in configs().iter().enumerate() {
        let mut p = Problem::new(cfg, t, b, 100 + c as u64);
        for v in [&mut p.params, &mut p.x, &mut p.h0, &mut p.dy, &mut p.dhn] {
            *v = round(v);
        }
        for v in [&mut p.c0, &mut p.dcn].into_iter().flatten() {
            *v = round(v);
        }
        let m = MaskStream::new(5, 2);
        let want = p.whole(&Rnn::new(Reference, cfg, &p.params[..]).unwrap(), &m, <[f64]>::to_vec);
        let got: Vec<Vec<f64>> = p
            .stepped(&Rnn::new(Cpu::new().unwrap(), cfg, &to(&p.params)[..]).unwrap(), &m, to)
            .iter()
            .map(|v| v.iter().map(|x| x.to_f64()).collect())
            .collect();
        let shape = SeqShape::new(t, b).unwrap();
        let inputs = HalfInputs {
            cfg,
            shape: &shape,
            u: 2f64.powi(-8),
            params: &p.params,
            x: &p.x,
            h0: &p.h0,
            c0: p.c0.as_deref(),
            dy: &p.dy,
            dhn: &p.dhn,
            dcn: p.dcn.as_deref(),
        };
        let ratios = error_ratios(&got, &want, &half_storage_bounds(&inputs, &want));
        for (k, r) in ratios.iter().enumerate() {
            assert!(*r <= 1.0, "{cfg:?}: {} error / bound {r:.3}", OUTPUTS[k]);
        }
    }
}
