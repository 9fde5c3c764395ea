//! A random problem, run through the library's own API and through a candle module, and the
//! comparison of everything the two give, bit for bit.

#![allow(dead_code)]

use candle_core::{Device, Tensor, Var};
use rnn_kernels::testkit::SplitMix64;
use rnn_kernels::{Backend, CellKind, Cpu, Params, Rnn, RnnConfig, SeqShape};
use rnn_kernels_candle::{CandleFloat, Input, Output, Recurrent};
use std::sync::OnceLock;

/// One CPU backend (two threads) for every test, its pool shared by the clones.
pub fn cpu() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(|| Cpu::with_threads(2).expect("a CPU backend")).clone()
}

/// `n` values uniform in `[-1, 1)` from `seed`.
pub fn rand<T: CandleFloat>(n: usize, seed: u64) -> Vec<T> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| <T as rnn_kernels::Element>::from_f64(r.uniform(-1.0, 1.0))).collect()
}

/// The bits of each value, so that comparisons are exact (`-0.0` is not `0.0`).
pub fn bits<T: CandleFloat>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| rnn_kernels::Element::to_f64(*x).to_bits()).collect()
}

/// A tensor's values, flat.
pub fn values<T: CandleFloat>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

/// Asserts that `got` and `want` hold the same bits.
#[track_caller]
pub fn same<T: CandleFloat>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if bits(got) != bits(want) {
        let i = bits(got).iter().zip(bits(want)).position(|(a, b)| *a != b).unwrap();
        panic!("{what}: element {i} differs: {} (candle) vs {} (library)", got[i], want[i]);
    }
}

/// A random problem: the parameters, the inputs of one call and the upstream gradients.
pub struct Problem<T: CandleFloat> {
    pub params: Params<T>,
    pub shape: SeqShape,
    pub x: Vec<T>,
    pub h0: Option<Vec<T>>,
    pub c0: Option<Vec<T>>,
    pub dy: Option<Vec<T>>,
    pub dhn: Option<Vec<T>>,
    pub dcn: Option<Vec<T>>,
}

impl<T: CandleFloat> Problem<T> {
    /// Every input and upstream gradient given (`c0`, `dcn` for an LSTM).
    pub fn new(cfg: &RnnConfig, steps: usize, batch: usize, lengths: Option<Vec<usize>>, seed: u64) -> Self {
        let shape = match lengths {
            Some(l) => SeqShape::with_lengths(steps, l).unwrap(),
            None => SeqShape::new(steps, batch).unwrap(),
        };
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let lstm = cfg.cell() == CellKind::Lstm;
        Problem {
            params: Params::init_uniform(cfg, seed).unwrap(),
            x: rand(n(shape.x_shape(cfg)), seed + 1),
            h0: Some(rand(n(shape.h_shape(cfg)), seed + 2)),
            c0: lstm.then(|| rand(n(shape.c_shape(cfg)), seed + 3)),
            dy: Some(rand(n(shape.y_shape(cfg)), seed + 4)),
            dhn: Some(rand(n(shape.h_shape(cfg)), seed + 5)),
            dcn: lstm.then(|| rand(n(shape.c_shape(cfg)), seed + 6)),
            shape,
        }
    }

    pub fn cfg(&self) -> &RnnConfig {
        self.params.config()
    }
}

/// What a call and its backward give.
#[derive(Debug)]
pub struct Results<T> {
    pub y: Vec<T>,
    pub hn: Vec<T>,
    pub cn: Option<Vec<T>>,
    pub dx: Vec<T>,
    pub dh0: Option<Vec<T>>,
    pub dc0: Option<Vec<T>>,
    pub dparams: Vec<T>,
}

/// The library's own API: `Rnn::forward_training` and `Rnn::backward`.
pub fn direct<T: CandleFloat, B: Backend<T, Buf = [T]>>(backend: B, p: &Problem<T>) -> Results<T> {
    let rnn = Rnn::from_params(backend, &p.params).unwrap();
    direct_with(&rnn, p)
}

/// [`direct`] on a given stack.
pub fn direct_with<T: CandleFloat, B: Backend<T, Buf = [T]>>(rnn: &Rnn<T, B>, p: &Problem<T>) -> Results<T> {
    let mut reserve = Default::default();
    let out = rnn.forward_training(&p.shape, &p.x, p.h0.as_deref(), p.c0.as_deref(), &mut reserve).unwrap();
    let g = rnn.backward(&reserve, p.dy.as_deref(), p.dhn.as_deref(), p.dcn.as_deref()).unwrap();
    Results {
        y: out.y,
        hn: out.hn,
        cn: out.cn,
        dx: g.dx,
        dh0: p.h0.as_ref().map(|_| g.dh0),
        dc0: p.c0.as_ref().and(g.dc0),
        dparams: g.dparams.unwrap(),
    }
}

/// Dims of `x` as candle sees it.
pub fn x_dims<T: CandleFloat>(p: &Problem<T>) -> Vec<usize> {
    p.shape.x_shape(p.cfg()).to_vec()
}

/// The inputs of a candle call as variables (so that candle tracks them).
pub struct Inputs {
    pub x: Var,
    pub h0: Option<Var>,
    pub c0: Option<Var>,
}

pub fn inputs<T: CandleFloat>(p: &Problem<T>) -> Inputs {
    let cfg = p.cfg();
    let var = |v: &[T], d: [usize; 3]| Var::from_slice(v, d.as_slice(), &Device::Cpu).unwrap();
    Inputs {
        x: var(&p.x, p.shape.x_shape(cfg)),
        h0: p.h0.as_ref().map(|h| var(h, p.shape.h_shape(cfg))),
        c0: p.c0.as_ref().map(|c| var(c, p.shape.c_shape(cfg))),
    }
}

/// `Σ y·dy + Σ hn·dhn + Σ cn·dcn` over the terms the problem has: its gradients w.r.t. `y`,
/// `hn`, `cn` are exactly `dy`, `dhn`, `dcn`.
pub fn loss<T: CandleFloat>(p: &Problem<T>, out: &Output) -> Tensor {
    let cfg = p.cfg();
    let t = |v: &[T], d: [usize; 3]| Tensor::from_slice(v, d.as_slice(), &Device::Cpu).unwrap();
    let mut terms = Vec::new();
    if let Some(dy) = &p.dy {
        terms.push((&out.y * t(dy, p.shape.y_shape(cfg))).unwrap().sum_all().unwrap());
    }
    if let Some(dhn) = &p.dhn {
        terms.push((&out.h_n * t(dhn, p.shape.h_shape(cfg))).unwrap().sum_all().unwrap());
    }
    if let (Some(dcn), Some(cn)) = (&p.dcn, &out.c_n) {
        terms.push((cn * t(dcn, p.shape.c_shape(cfg))).unwrap().sum_all().unwrap());
    }
    let mut l = terms[0].clone();
    for t in &terms[1..] {
        l = (l + t).unwrap();
    }
    l
}

/// A candle call of `module` on the problem's inputs and its backward through candle.
pub fn through_candle<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static>(module: &Recurrent<T, B>, p: &Problem<T>) -> Results<T> {
    let (v, out) = start(module, p);
    finish(module, p, &v, &out)
}

/// A candle call of `module` on the problem's inputs (as variables): the inputs and the outputs,
/// whose graph holds the call.
pub fn start<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static>(module: &Recurrent<T, B>, p: &Problem<T>) -> (Inputs, Output) {
    let v = inputs(p);
    let mut input = Input::new(v.x.as_tensor());
    if let Some(h0) = &v.h0 {
        input = input.h0(h0.as_tensor());
    }
    if let Some(c0) = &v.c0 {
        input = input.c0(c0.as_tensor());
    }
    if let Some(l) = p.shape.lengths() {
        input = input.lengths(l);
    }
    let out = module.run(input).unwrap();
    (v, out)
}

/// The backward through candle of the loss of [`loss`] over a call's outputs, and everything
/// the call gave.
pub fn finish<T: CandleFloat, B: Backend<T, Buf = [T]> + 'static>(
    module: &Recurrent<T, B>,
    p: &Problem<T>,
    v: &Inputs,
    out: &Output,
) -> Results<T> {
    let grads = loss(p, out).backward().unwrap();
    let mut dparams = vec![T::ZERO; module.layout().len()];
    for (spec, (name, var)) in module.layout().specs().iter().zip(module.named_vars()) {
        assert_eq!(spec.name, name);
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), spec.shape.as_slice(), "{name}");
        dparams[spec.range()].copy_from_slice(&values::<T>(g));
    }
    Results {
        y: values(&out.y),
        hn: values(&out.h_n),
        cn: out.c_n.as_ref().map(values),
        dx: values(grads.get(&v.x).expect("dx")),
        dh0: v.h0.as_ref().map(|h| values(grads.get(h).expect("dh0"))),
        dc0: v.c0.as_ref().map(|c| values(grads.get(c).expect("dc0"))),
        dparams,
    }
}

/// Asserts that two runs gave the same bits everywhere.
#[track_caller]
pub fn same_results<T: CandleFloat>(got: &Results<T>, want: &Results<T>) {
    same("y", &got.y, &want.y);
    same("hn", &got.hn, &want.hn);
    assert_eq!(got.cn.is_some(), want.cn.is_some(), "cn");
    if let (Some(g), Some(w)) = (&got.cn, &want.cn) {
        same("cn", g, w);
    }
    same("dx", &got.dx, &want.dx);
    assert_eq!(got.dh0.is_some(), want.dh0.is_some(), "dh0");
    if let (Some(g), Some(w)) = (&got.dh0, &want.dh0) {
        same("dh0", g, w);
    }
    assert_eq!(got.dc0.is_some(), want.dc0.is_some(), "dc0");
    if let (Some(g), Some(w)) = (&got.dc0, &want.dc0) {
        same("dc0", g, w);
    }
    same("dparams", &got.dparams, &want.dparams);
}

/// The whole check on the CPU backend.
#[track_caller]
pub fn check_cpu(p: &Problem<f32>) {
    let module = Recurrent::new(cpu(), &p.params).unwrap();
    same_results(&through_candle(&module, p), &direct(cpu(), p));
}
