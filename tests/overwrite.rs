//! Every output the CPU backend is given is overwritten: `y`, `hn`, `cn` of a forward pass and
//! `dx`, `dh0`, `dc0` and `dparams` (with `GradMode::Overwrite`) of a backward pass come out
//! with the same bits whatever the caller's buffers held, here zeros and NaN, for f32, bf16 and
//! f16 storage on every ISA, one and two threads. The 16-bit calls' f32 boundary buffers are
//! kept between calls and handed out without zeroing (`backend/cpu/mod.rs`, `boundary`), and
//! their conversions are cut between the threads from 32 Ki values: the problems here are that
//! large, one after another on the same threads, and one and two threads give the same bits.

use rnn_kernels::testkit::{isas, Problem};
use rnn_kernels::{
    Backend, BackwardInput, BackwardOutput, CellKind, Cpu, Element, ForwardInput, ForwardOutput, GradMode, RnnConfig, SeqShape,
};

/// `y, hn, cn` of an inference pass and of a training pass, then `dx, dh0, dc0, dparams` of
/// its backward, each output buffer filled with `fill` before its call.
fn run<T: Element>(cpu: &Cpu, p: &Problem<T>, fill: T) -> Vec<Vec<T>>
where
    Cpu: Backend<T, Buf = [T], Reserve = rnn_kernels::HostReserve<f32>>,
{
    let plan = Backend::<T>::plan(cpu, &p.cfg, &p.params).unwrap();
    let lstm = p.cfg.cell() == CellKind::Lstm;
    let filled = |n: usize| vec![fill; n];
    let input = || ForwardInput { x: &p.x[..], h0: Some(&p.h0[..]), c0: p.c0.as_deref(), masks: None };
    let mut out = Vec::new();
    // Inference, then training: y, hn, cn each.
    for training in [false, true] {
        let (mut y, mut hn, mut cn) = (filled(p.dy.len()), filled(p.h0.len()), filled(p.c0.as_ref().map_or(0, Vec::len)));
        let output = ForwardOutput { y: &mut y[..], hn: Some(&mut hn[..]), cn: lstm.then_some(&mut cn[..]) };
        let mut reserve = Default::default();
        if training {
            Backend::<T>::forward_training(cpu, &plan, &p.shape, input(), output, &mut reserve).unwrap();
            let (mut dx, mut dh0, mut dc0, mut dp) = (filled(p.x.len()), filled(p.h0.len()), filled(cn.len()), filled(p.params.len()));
            let grads = BackwardInput { dy: Some(&p.dy[..]), dhn: Some(&p.dhn[..]), dcn: p.dcn.as_deref() };
            let outputs = BackwardOutput {
                dx: Some(&mut dx[..]),
                dh0: Some(&mut dh0[..]),
                dc0: lstm.then_some(&mut dc0[..]),
                dparams: Some(&mut dp[..]),
            };
            Backend::<T>::backward(cpu, &plan, &reserve, grads, outputs, GradMode::Overwrite).unwrap();
            out.extend([y, hn, cn, dx, dh0, dc0, dp]);
        } else {
            Backend::<T>::forward_inference(cpu, &plan, &p.shape, input(), output).unwrap();
            out.extend([y, hn, cn]);
        }
    }
    out
}

const NAMES: [&str; 10] = ["inference y", "inference hn", "inference cn", "y", "hn", "cn", "dx", "dh0", "dc0", "dparams"];

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|a| a.to_f64().to_bits()).collect()
}

fn check<T: Element>()
where
    Cpu: Backend<T, Buf = [T], Reserve = rnn_kernels::HostReserve<f32>>,
{
    // x is 8·70·64 = 35840 values and y 8·70·96 = 53760: past the threshold of the parallel
    // conversions; variable lengths, two layers, both directions, projection.
    let configs = [
        RnnConfig::new(CellKind::Lstm, 64, 56).num_layers(2).bidirectional(true).proj_size(48).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 64, 48).num_layers(2).bidirectional(true).build().unwrap(),
    ];
    let shape = SeqShape::with_lengths(8, (0..70).map(|b| 8 - b % 5).collect()).unwrap();
    for (k, cfg) in configs.iter().enumerate() {
        let p = Problem::<T>::new(cfg, &shape, 301 + k as u64, 2.0);
        for isa in isas() {
            let mut first: Option<Vec<Vec<T>>> = None;
            for threads in [1, 2] {
                let cpu = Cpu::with_isa(isa, threads).unwrap();
                let ctx = format!("{:?} {isa} {threads} threads {:?}", T::DTYPE, cfg.cell());
                let zeros = run(&cpu, &p, T::from_f64(0.0));
                let nans = run(&cpu, &p, T::from_f64(f64::NAN));
                for (i, (z, n)) in zeros.iter().zip(&nans).enumerate() {
                    assert!(z.iter().all(|v| !v.to_f64().is_nan()), "{ctx}: {} has NaN from zeroed buffers", NAMES[i]);
                    assert_eq!(bits(z), bits(n), "{ctx}: {} depends on what its buffer held", NAMES[i]);
                }
                match &first {
                    None => first = Some(zeros),
                    Some(f) => {
                        for (i, (z, f)) in zeros.iter().zip(f).enumerate() {
                            assert_eq!(bits(z), bits(f), "{ctx}: {} differs from one thread's", NAMES[i]);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f32_outputs_are_overwritten() {
    check::<f32>();
}

#[test]
fn bf16_outputs_are_overwritten() {
    check::<half::bf16>();
}

#[test]
fn f16_outputs_are_overwritten() {
    check::<half::f16>();
}
