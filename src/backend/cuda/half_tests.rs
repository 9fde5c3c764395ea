//! f16 and bf16 storage on the host emulation (kernels compiled as C++, cuBLAS's GemmEx
//! emulated with f32 accumulation): every cell, against the f64 reference run on the same
//! 16-bit-rounded inputs, weights and incoming gradients, with the derived tolerances of
//! `testkit::tolerance` (DEVELOPERS.md, "f16 and bf16 storage").

use super::buffer::View;
use super::driver::{backward, forward, CudaReserve, SavedViews};
use super::exec::Call;
use crate::backend::{GradMode, Reference};
use crate::testkit::tolerance::{half_storage_bounds, HalfInputs, OUTPUTS};
use crate::{CellKind, Dtype, Element, ParamLayout, Params, Rnn, RnnConfig, SeqShape, SplitMix64};

/// A 16-bit element type for the tests.
trait Half: Element {
    fn bits(self) -> u16;
}
impl Half for half::f16 {
    fn bits(self) -> u16 {
        self.to_bits()
    }
}
impl Half for half::bf16 {
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

fn view<T: Element>(v: &[T]) -> View {
    View { ptr: v.as_ptr() as u64, len: v.len(), ty: T::DTYPE }
}
fn view_mut<T: Element>(v: &mut [T]) -> View {
    View { ptr: v.as_mut_ptr() as u64, len: v.len(), ty: T::DTYPE }
}
fn up<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|a| a.to_f64()).collect()
}
/// NaN in both 16-bit formats: outputs start as NaN so that an element never written shows.
fn nans<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f64(f64::NAN); n]
}

struct Problem<T> {
    cfg: RnnConfig,
    shape: SeqShape,
    params: Vec<T>,
    x: Vec<T>,
    h0: Vec<T>,
    c0: Option<Vec<T>>,
    dy: Vec<T>,
    dhn: Vec<T>,
    dcn: Option<Vec<T>>,
}

impl<T: Half> Problem<T> {
    fn new(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut u = |n: usize, r: f64| (0..n).map(|_| T::from_f64(rng.uniform(-r, r))).collect::<Vec<T>>();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let lstm = cfg.cell().has_cell_state();
        Problem {
            x: u(n(shape.x_shape(cfg)), x_range),
            h0: u(n(shape.h_shape(cfg)), 1.0),
            c0: lstm.then(|| u(n(shape.c_shape(cfg)), 2.0)),
            dy: u(n(shape.y_shape(cfg)), 1.0),
            dhn: u(n(shape.h_shape(cfg)), 1.0),
            dcn: lstm.then(|| u(n(shape.c_shape(cfg)), 1.0)),
            params: Params::<T>::init_uniform(cfg, seed ^ 0xabc).into_vec(),
            cfg: cfg.clone(),
            shape: shape.clone(),
        }
    }

    /// (y, hn, cn, dx, dh0, dc0, dparams) from the emulated driver with 16-bit storage; also
    /// checks that inference gives training's outputs bit for bit and that Accumulate adds
    /// in f32 and rounds once.
    fn run_emulated(&self) -> Vec<Vec<T>> {
        let (cfg, shape) = (&self.cfg, &self.shape);
        // The persistent path is allowed but must not be taken (it is f32 only).
        let call = Call::host().with_storage(T::DTYPE).with_persistent(true);
        let layout = ParamLayout::new(cfg);
        let w = view(&self.params);
        let n = |s: [usize; 3]| nans::<T>(s.iter().product::<usize>());
        let lstm = cfg.cell().has_cell_state();
        let (mut y, mut hn) = (n(shape.y_shape(cfg)), n(shape.h_shape(cfg)));
        let mut cn = lstm.then(|| n(shape.c_shape(cfg)));
        let mut reserve = CudaReserve::default();
        let (x, h0, c0) = (view(&self.x), Some(view(&self.h0)), self.c0.as_deref().map(view));
        let cn_v = cn.as_deref_mut().map(view_mut);
        forward(&call, &layout, w, shape, x, h0, c0, view_mut(&mut y), Some(view_mut(&mut hn)), cn_v, Some(&mut reserve)).unwrap();

        let (mut yi, mut hni) = (n(shape.y_shape(cfg)), n(shape.h_shape(cfg)));
        let mut cni = lstm.then(|| n(shape.c_shape(cfg)));
        let cni_v = cni.as_deref_mut().map(view_mut);
        forward(&call, &layout, w, shape, x, h0, c0, view_mut(&mut yi), Some(view_mut(&mut hni)), cni_v, None).unwrap();
        let bits = |v: &[T]| v.iter().map(|a| a.bits()).collect::<Vec<u16>>();
        assert!(bits(&yi) == bits(&y) && bits(&hni) == bits(&hn), "inference differs from training's forward");
        assert!(cni.as_deref().map(bits) == cn.as_deref().map(bits), "inference cn differs from training's");

        let sv = SavedViews::new(&call, &reserve);
        let (mut dx, mut dh0) = (n(shape.x_shape(cfg)), n(shape.h_shape(cfg)));
        let mut dc0 = lstm.then(|| n(shape.c_shape(cfg)));
        let mut dp = nans::<T>(layout.len());
        let (dy, dhn, dcn) = (Some(view(&self.dy)), Some(view(&self.dhn)), self.dcn.as_deref().map(view));
        let dc0_v = dc0.as_deref_mut().map(view_mut);
        let (dx_v, dh0_v, dp_v) = (view_mut(&mut dx), view_mut(&mut dh0), view_mut(&mut dp));
        backward(&call, &layout, w, shape, &sv, dy, dhn, dcn, Some(dx_v), Some(dh0_v), dc0_v, Some(dp_v), GradMode::Overwrite).unwrap();

        // Accumulate onto the gradients just computed: the f32 accumulator starts at g (the
        // caller's 16-bit values, exactly) and adds the same f32 sum s that rounded to g, so
        // the result round(g + s) is within u·|2g| + |s - g| ≤ 2u·|2g| of 2g. Starting from 0
        // instead (Overwrite's behaviour) gives g, far outside.
        let mut dp2 = dp.clone();
        backward(&call, &layout, w, shape, &sv, dy, dhn, dcn, None, None, None, Some(view_mut(&mut dp2)), GradMode::Accumulate).unwrap();
        for (i, (&a, &g)) in dp2.iter().zip(&dp).enumerate() {
            let (a, g) = (a.to_f64(), g.to_f64());
            assert!((a - 2.0 * g).abs() <= 2.0 * T::DTYPE.unit_roundoff() * (2.0 * g).abs(), "Accumulate: dparams[{i}] = {a}, 2·{g}");
        }
        vec![y, hn, cn.unwrap_or_default(), dx, dh0, dc0.unwrap_or_default(), dp]
    }

    fn run_reference(&self) -> Vec<Vec<f64>> {
        let rnn = Rnn::new(Reference, &self.cfg, &up(&self.params)[..]).unwrap();
        let mut reserve = Default::default();
        let c0 = self.c0.as_deref().map(up);
        let o = rnn.forward_training(&self.shape, &up(&self.x), Some(&up(&self.h0)), c0.as_deref(), &mut reserve).unwrap();
        let dcn = self.dcn.as_deref().map(up);
        let g = rnn.backward(&reserve, Some(&up(&self.dy)), Some(&up(&self.dhn)), dcn.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap()]
    }

    /// Checks every output against its bound; returns the error / bound ratio of each.
    fn check(&self) -> std::result::Result<[f64; 7], String> {
        let want = self.run_reference();
        let got = self.run_emulated();
        let (params, x, h0, dy, dhn) = (up(&self.params), up(&self.x), up(&self.h0), up(&self.dy), up(&self.dhn));
        let (c0, dcn) = (self.c0.as_deref().map(up), self.dcn.as_deref().map(up));
        let inputs = HalfInputs {
            cfg: &self.cfg,
            shape: &self.shape,
            u: T::DTYPE.unit_roundoff(),
            params: &params,
            x: &x,
            h0: &h0,
            c0: c0.as_deref(),
            dy: &dy,
            dhn: &dhn,
            dcn: dcn.as_deref(),
        };
        let bounds = half_storage_bounds(&inputs, &want);
        let mut ratios = [0.0f64; 7];
        for i in 0..7 {
            let err = got[i].iter().zip(&want[i]).fold(0.0f64, |m, (g, w)| {
                let e = (g.to_f64() - w).abs();
                if e.is_nan() {
                    f64::INFINITY
                } else {
                    m.max(e)
                }
            });
            if err > bounds[i] {
                return Err(format!(
                    "{:?}: {} error {err:.3e} > bound {:.3e}: {:?} {:?}",
                    T::DTYPE,
                    OUTPUTS[i],
                    bounds[i],
                    self.cfg,
                    self.shape
                ));
            }
            ratios[i] = err / bounds[i];
        }
        Ok(ratios)
    }
}

/// Runs `check` for f16 and bf16; returns their error / bound ratios.
fn check_both(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> [[f64; 7]; 2] {
    let r16 = Problem::<half::f16>::new(cfg, shape, seed, x_range).check().unwrap_or_else(|e| panic!("{e}"));
    let rbf = Problem::<half::bf16>::new(cfg, shape, seed, x_range).check().unwrap_or_else(|e| panic!("{e}"));
    [r16, rbf]
}

/// Every cell (LSTM with and without projection, GRU, tanh and relu RNN), two layers, both
/// directions, with and without bias, rows of many lengths sharing a step, h0 and c0 given,
/// forward (training and inference), backward to every gradient, Accumulate.
#[test]
fn emulated_half_storage_matches_reference() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 24, 33).num_layers(2).bidirectional(true).proj_size(17).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 19, 26).num_layers(2).bidirectional(true).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 30, 41).num_layers(2).bidirectional(true).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 13, 50).num_layers(2).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 20, 27).bidirectional(true).bias(false).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 7, 37).num_layers(3).bias(false).build().unwrap(),
    ];
    let mut worst = [[0.0f64; 7]; 2];
    for (c, cfg) in configs.iter().enumerate() {
        let shape = SeqShape::with_lengths(9, (0..13).map(|b| 1 + (b * 5) % 9).collect()).unwrap();
        let r = check_both(cfg, &shape, 77 + c as u64, 3.0);
        for (w, r) in worst.iter_mut().zip(&r) {
            for o in 0..7 {
                w[o] = w[o].max(r[o]);
            }
        }
    }
    let f = |w: &[f64; 7]| OUTPUTS.iter().zip(w).map(|(n, r)| format!("{n} {r:.4}")).collect::<Vec<_>>().join(", ");
    println!("worst error/bound, f16: {}", f(&worst[0]));
    println!("worst error/bound, bf16: {}", f(&worst[1]));
}

/// Small random problems of every kind (as the f32 property test), B ≤ 8 with the persistent
/// path allowed (it must not be taken: f32 only), inputs up to ±25 (saturating the gates).
#[test]
fn emulated_half_storage_random_problems() {
    let mut rng = SplitMix64::new(2026);
    for case in 0..40u64 {
        let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
        let cell = CellKind::ALL[pick(4)];
        let (i, h) = (1 + pick(11), 2 + pick(10));
        let proj = if cell == CellKind::Lstm && pick(2) == 1 { 1 + pick(h - 1) } else { 0 };
        let cfg = RnnConfig::new(cell, i, h)
            .num_layers(1 + pick(3))
            .bidirectional(pick(2) == 1)
            .bias(pick(4) != 0)
            .proj_size(proj)
            .build()
            .unwrap();
        let t = 1 + pick(6);
        let lengths: Vec<usize> = (0..1 + pick(8)).map(|_| 1 + pick(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        check_both(&cfg, &shape, case, 25.0);
    }
}

/// The host emulation's conversions (kernels/common.cuh, run through util.cu's conversion
/// kernels) are the `half` crate's, bit for bit: every 16-bit value to f32, and f32 values
/// around every rounding boundary, ties, subnormals, overflow, infinities and NaN back.
#[test]
fn emulated_conversions_are_the_half_crates() {
    let call = Call::host();
    fn conv<S: Element, D: Element>(call: &Call<'_>, src: &[S]) -> Vec<D> {
        let mut dst = nans::<D>(src.len());
        call.copy(0, view_mut(&mut dst), view(src)).unwrap();
        dst
    }
    let all16: Vec<u16> = (0..=u16::MAX).collect();
    let f16s: Vec<half::f16> = all16.iter().map(|&b| half::f16::from_bits(b)).collect();
    let bf16s: Vec<half::bf16> = all16.iter().map(|&b| half::bf16::from_bits(b)).collect();
    let a: Vec<f32> = conv(&call, &f16s);
    let b: Vec<f32> = conv(&call, &bf16s);
    for k in 0..all16.len() {
        assert_eq!(a[k].to_bits(), f16s[k].to_f32().to_bits(), "f16 {:#06x}", all16[k]);
        assert_eq!(b[k].to_bits(), bf16s[k].to_f32().to_bits(), "bf16 {:#06x}", all16[k]);
    }
    // f32 inputs: each 16-bit value, its neighbours in f32 and the midpoints (ties) to the next
    // value and their neighbours; plus random bit patterns.
    let mut xs: Vec<f32> = Vec::new();
    for k in 0..all16.len() {
        for v in [f16s[k].to_f32(), bf16s[k].to_f32()] {
            let next = f32::from_bits(v.to_bits().wrapping_add(1 << 13));
            let mid = ((v as f64 + next as f64) / 2.0) as f32;
            for w in [v, mid, next] {
                xs.extend([w, f32::from_bits(w.to_bits().wrapping_add(1)), f32::from_bits(w.to_bits().wrapping_sub(1))]);
            }
        }
    }
    let mut rng = SplitMix64::new(5);
    xs.extend((0..100_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    xs.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        65504.0,
        65520.0,
        65519.99,
        6.0e-8,
        2.9e-8,
        3.0e-8,
    ]);
    let g: Vec<half::f16> = conv(&call, &xs);
    let h: Vec<half::bf16> = conv(&call, &xs);
    for (k, &x) in xs.iter().enumerate() {
        let (want16, wantbf) = (half::f16::from_f32_const(x), half::bf16::from_f32_const(x));
        if x.is_nan() {
            assert!(g[k].is_nan() && h[k].is_nan(), "NaN {:#x}", x.to_bits());
        } else {
            assert_eq!(g[k].to_bits(), want16.to_bits(), "f16 of {x:e} ({:#x})", x.to_bits());
            assert_eq!(h[k].to_bits(), wantbf.to_bits(), "bf16 of {x:e} ({:#x})", x.to_bits());
        }
    }
}

/// The emulated GemmEx: 16-bit operands read exactly, an f32 sum (the same as the f32 sgemm of
/// the widened operands, bit for bit), a 16-bit C rounded once from alpha·AB + beta·C in f32.
#[test]
fn emulated_gemm_ex_rounds_once() {
    use super::exec::SgemmArgs;
    let (m, k, n) = (7usize, 19usize, 5usize);
    let mut rng = SplitMix64::new(3);
    let mut rand = |len: usize| (0..len).map(|_| half::f16::from_f64(rng.uniform(-2.0, 2.0))).collect::<Vec<_>>();
    let (a, b, c0) = (rand(m * k), rand(k * n), rand(m * n));
    let widen = |v: &[half::f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
    let (aw, bw, cw) = (widen(&a), widen(&b), widen(&c0));
    // f32 C: bit-identical to sgemm on the widened operands.
    let mut c32 = cw.clone();
    let mut c32_ref = cw.clone();
    let g = SgemmArgs::new(view(&a).mat(m, k), view(&b).mat(k, n), 0.5, view_mut(&mut c32).mat(m, n)).unwrap();
    // SAFETY: the buffers hold the matrices the arguments describe.
    unsafe { super::exec::host::gemm_ex(&g, Dtype::F16, Dtype::F32, 1.5, 0.5) };
    let g = SgemmArgs::new(view(&aw).mat(m, k), view(&bw).mat(k, n), 0.5, view_mut(&mut c32_ref).mat(m, n)).unwrap();
    // SAFETY: as above.
    unsafe { super::exec::host::sgemm(&g, 1.5, 0.5) };
    assert_eq!(c32, c32_ref);
    // 16-bit C: the f32 result rounded once.
    let mut c16 = c0.clone();
    let g = SgemmArgs::new(view(&a).mat(m, k), view(&b).mat(k, n), 0.5, view_mut(&mut c16).mat(m, n)).unwrap();
    // SAFETY: as above.
    unsafe { super::exec::host::gemm_ex(&g, Dtype::F16, Dtype::F16, 1.5, 0.5) };
    let want: Vec<u16> = c32_ref.iter().map(|&v| half::f16::from_f32_const(v).to_bits()).collect();
    assert_eq!(c16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
}

/// Every 16-bit entry the device loads (`exec::HALF_KERNELS`) is an entry of the PTX of the
/// file it names, so `Cuda::new` finds them all.
#[cfg(rnn_kernels_ptx)]
#[test]
fn half_entries_are_in_the_ptx() {
    use super::ptx;
    for (k, file, f16, bf16) in super::exec::HALF_KERNELS {
        let text = match file {
            "lstm_pointwise" => ptx::LSTM_POINTWISE,
            "gru_pointwise" => ptx::GRU_POINTWISE,
            "rnn_pointwise" => ptx::RNN_POINTWISE,
            "util" => ptx::UTIL,
            other => panic!("{k:?}: unknown file {other}"),
        };
        for name in [f16, bf16] {
            assert!(text.contains(&format!(".entry {name}(")), "{k:?}: {name} is not in kernels/{file}.cu's PTX");
        }
    }
}

/// Problems where every value is a small integer (a relu RNN with weights, biases, inputs and
/// incoming gradients in {-1, 0, 1} or {-2..2}, every state, output and gradient ≤ 256 in
/// magnitude, so exact in f16 and bf16, and every f32 sum exact): the 16-bit path must give
/// the reference's numbers exactly, every output and gradient, with no tolerance. This checks
/// the data flow (which buffer feeds which GEMM, the bias, the lengths, both directions, two
/// layers, `dX` summed over directions, the weight-gradient accumulation and its rounding)
/// where the derived bounds are loose.
#[test]
fn emulated_half_storage_exact_on_integer_problems() {
    let cfg = RnnConfig::new(CellKind::RnnRelu, 3, 4).num_layers(2).bidirectional(true).build().unwrap();
    let shape = SeqShape::with_lengths(4, vec![4, 2, 3]).unwrap();
    let layout = ParamLayout::new(&cfg);
    let sub = RnnConfig::new(CellKind::RnnRelu, 3, 4).bidirectional(true).build().unwrap();
    let mut tried = 0;
    let mut checked = 0;
    for seed in 0..400u64 {
        let mut rng = SplitMix64::new(seed);
        let mut ints = |n: usize, lo: i64, hi: i64| -> Vec<f64> {
            (0..n).map(|_| (lo + (rng.next_u64() % (hi - lo + 1) as u64) as i64) as f64).collect()
        };
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        // Weights: half of them 0, the rest ±1.
        let params: Vec<f64> = ints(layout.len(), -2, 2).into_iter().map(|v| if v.abs() == 2.0 { 0.0 } else { v }).collect();
        let (x, h0) = (ints(n(shape.x_shape(&cfg)), -2, 2), ints(n(shape.h_shape(&cfg)), -1, 1));
        let (dy, dhn) = (ints(n(shape.y_shape(&cfg)), -1, 1), ints(n(shape.h_shape(&cfg)), -1, 1));
        // Every value the reference computes, including the first layer's outputs, ≤ 256.
        let rnn = Rnn::new(Reference, &cfg, &params[..]).unwrap();
        let mut rr = Default::default();
        let o = rnn.forward_training(&shape, &x, Some(&h0), None, &mut rr).unwrap();
        let g = rnn.backward(&rr, Some(&dy), Some(&dhn), None).unwrap();
        let first = Rnn::new(Reference, &sub, &params[..ParamLayout::new(&sub).len()]).unwrap();
        let o1 = first.forward(&shape, &x, Some(&h0[..h0.len() / 2]), None).unwrap();
        let want = [&o.y, &o.hn, &g.dx, &g.dh0, g.dparams.as_ref().unwrap(), &o1.y];
        tried += 1;
        // 2·dparams too (the Accumulate check doubles them).
        if want.iter().any(|v| v.iter().any(|a| a.abs() > 128.0)) || want[0].iter().all(|&a| a == 0.0) {
            continue;
        }
        for which in [Dtype::F16, Dtype::BF16] {
            fn run<T: Half>(cfg: &RnnConfig, shape: &SeqShape, v: [&[f64]; 5]) -> Vec<Vec<f64>> {
                let t = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
                let p = Problem::<T> {
                    cfg: cfg.clone(),
                    shape: shape.clone(),
                    params: t(v[0]),
                    x: t(v[1]),
                    h0: t(v[2]),
                    c0: None,
                    dy: t(v[3]),
                    dhn: t(v[4]),
                    dcn: None,
                };
                p.run_emulated().iter().map(|o| up(o)).collect()
            }
            let inputs = [&params[..], &x, &h0, &dy, &dhn];
            let got = if which == Dtype::F16 { run::<half::f16>(&cfg, &shape, inputs) } else { run::<half::bf16>(&cfg, &shape, inputs) };
            // run_emulated's order: y, hn, cn, dx, dh0, dc0, dparams.
            for (name, i, w) in [("y", 0, want[0]), ("hn", 1, want[1]), ("dx", 3, want[2]), ("dh0", 4, want[3]), ("dparams", 6, want[4])] {
                assert_eq!(&got[i], w, "{which:?} {name}, seed {seed}");
            }
        }
        checked += 1;
        if checked == 8 {
            break;
        }
    }
    assert_eq!(checked, 8, "only {checked} of {tried} draws had every value within ±128");
}
