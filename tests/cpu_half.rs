//! f16 and bf16 storage on the CPU backend (`Rnn<half::f16, Cpu>`, `Rnn<half::bf16, Cpu>`), on
//! every ISA this machine has (each forced as `RNN_KERNELS_ISA` would), one to three threads:
//!
//! - exactly the f32 backend's result on the widened inputs, each output rounded once (the
//!   16-bit weight panels widened in the tiles' loads, or by the driver, give the f32 bits),
//!   except where a bf16 plan's products are `VDPBF16PS` ones (`CpuPlan::bf16_products`);
//! - the same bits for 1, 2 and 3 threads;
//! - within the derived error bounds of `testkit::tolerance` against the f64 reference on the
//!   same 16-bit values (the oracle, as for the CUDA backend's 16-bit storage);
//! - inference gives training's outputs; `GradMode::Accumulate` adds in f32 and rounds once;
//!   `read_params` gives back the parameters; a plan of another storage type is refused.

use rnn_kernels::testkit::tolerance::{error_ratios, half_storage_bounds, HalfInputs, OUTPUTS};
use rnn_kernels::testkit::{up, Problem};
use rnn_kernels::{Backend, CellKind, Cpu, Element, Error, ForwardInput, ForwardOutput, Isa, Params, Rnn, RnnConfig, SeqShape};

/// The problem's values widened to f32 (exactly).
fn widened<T: Element>(p: &Problem<T>) -> Problem<f32> {
    let w = |v: &[T]| v.iter().map(|a| a.to_f64() as f32).collect::<Vec<f32>>();
    Problem {
        cfg: p.cfg.clone(),
        shape: p.shape.clone(),
        params: w(&p.params),
        x: w(&p.x),
        h0: w(&p.h0),
        c0: p.c0.as_deref().map(w),
        dy: w(&p.dy),
        dhn: w(&p.dhn),
        dcn: p.dcn.as_deref().map(w),
    }
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|a| a.to_f64().to_bits()).collect()
}

/// The configurations: every cell, projection, both directions, two layers, Cho's GRU, layer
/// norm, merge by sum, dropout between layers; `(config, steps, batch)` with batches on the
/// skinny GEMM path (1, 3, 5 rows) and on the blocked one.
fn configs() -> Vec<(RnnConfig, usize, usize)> {
    vec![
        (RnnConfig::new(CellKind::Lstm, 24, 33).num_layers(2).bidirectional(true).proj_size(17).build().unwrap(), 7, 9),
        (RnnConfig::new(CellKind::Lstm, 19, 40).build().unwrap(), 6, 1),
        (RnnConfig::new(CellKind::Gru, 30, 41).num_layers(2).bidirectional(true).build().unwrap(), 7, 13),
        (RnnConfig::new(CellKind::Gru, 30, 41).linear_before_reset(false).build().unwrap(), 5, 3),
        (RnnConfig::new(CellKind::RnnRelu, 13, 50).num_layers(2).dropout(0.25).build().unwrap(), 6, 5),
        (RnnConfig::new(CellKind::RnnTanh, 20, 27).bidirectional(true).bias(false).merge(rnn_kernels::Merge::Sum).build().unwrap(), 6, 2),
        (RnnConfig::new(CellKind::Lstm, 16, 24).layer_norm(true).build().unwrap(), 5, 4),
        (RnnConfig::new(CellKind::Lstm, 64, 96).num_layers(2).build().unwrap(), 5, 24),
    ]
}

/// One problem in `T` on `cpu`: the f32 bits after one rounding, the inference/training
/// identity, Accumulate; returns the outputs as f64.
fn run_checked<T: Element>(cpu: &Cpu, p: &Problem<T>) -> Vec<Vec<f64>>
where
    Cpu: Backend<T, Buf = [T], Plan = rnn_kernels::CpuPlan>,
{
    let ctx = format!("{:?} {} {:?} {:?}", T::DTYPE, cpu.name(), p.cfg, p.shape);
    let got = p.run(cpu.clone());
    let wide = widened(p).run(cpu.clone());
    // `VDPBF16PS` products round their other operand to bf16: not the f32 result (checked
    // against the bounds, and across thread counts, by the caller).
    let dot = Backend::<T>::plan(cpu, &p.cfg, &p.params).unwrap().bf16_products();
    for (i, (g, w)) in got.iter().zip(&wide).enumerate().filter(|_| !dot) {
        let rounded: Vec<T> = w.iter().map(|&v| T::from_f64(v as f64)).collect();
        // f32 → T through f64 rounds once (f64 holds every f32 exactly).
        assert_eq!(g.len(), rounded.len(), "{ctx}: {} length", OUTPUTS[i]);
        if let Some(j) = (0..g.len()).find(|&j| g[j].to_f64().to_bits() != rounded[j].to_f64().to_bits()) {
            panic!("{ctx}: {}[{j}] = {}, the f32 result {} rounded once is {}", OUTPUTS[i], g[j], w[j], rounded[j]);
        }
    }
    let inf = p.run_inference(cpu.clone());
    if p.cfg.dropout().is_none() {
        for i in 0..3 {
            assert_eq!(bits(&inf[i]), bits(&got[i]), "{ctx}: inference {} differs from training", OUTPUTS[i]);
        }
    }
    // Accumulate onto the gradient just computed: f32 sum of g and the same f32 value s that
    // rounded to g, rounded once: within u·|2g| + |s - g| ≤ 2u·|2g| of 2g.
    let rnn = Rnn::new(cpu.clone(), &p.cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    rnn.forward_training_masked(&p.shape, &p.x, Some(&p.h0), p.c0.as_deref(), p.masks(), &mut reserve).unwrap();
    let mut acc = got[6].clone();
    rnn.backward_accumulate(&reserve, Some(&p.dy), Some(&p.dhn), p.dcn.as_deref(), &mut acc).unwrap();
    let u = T::DTYPE.unit_roundoff();
    for (i, (a, g)) in acc.iter().zip(&got[6]).enumerate() {
        let (a, g) = (a.to_f64(), g.to_f64());
        assert!((a - 2.0 * g).abs() <= 2.0 * u * (2.0 * g).abs(), "{ctx}: Accumulate dparams[{i}] = {a}, 2·{g}");
    }
    got.iter().map(|v| up(v)).collect()
}

/// Error / bound of each output against the f64 reference on the same 16-bit values.
fn ratios<T: Element>(p: &Problem<T>, got: &[Vec<f64>]) -> [f64; 7] {
    let q = p.to_f64();
    let inputs = HalfInputs::of(&q, T::DTYPE.unit_roundoff());
    let want = p.run_reference();
    error_ratios(got, &want, &half_storage_bounds(&inputs, &want))
}

fn check_dtype<T: Element>(name: &str)
where
    Cpu: Backend<T, Buf = [T], Plan = rnn_kernels::CpuPlan>,
{
    let mut worst = [0.0f64; 7];
    for (k, (cfg, t, b)) in configs().into_iter().enumerate() {
        let shape = SeqShape::with_lengths(t, (0..b).map(|i| 1 + (i * 5) % t).collect()).unwrap();
        let p = Problem::<T>::new(&cfg, &shape, 91 + k as u64, 3.0);
        for isa in Isa::available() {
            let mut first: Option<Vec<Vec<f64>>> = None;
            for threads in 1..=3 {
                let cpu = Cpu::with_isa(isa, threads).unwrap();
                let got = run_checked(&cpu, &p);
                match &first {
                    None => {
                        let r = ratios(&p, &got);
                        for (i, r) in r.iter().enumerate() {
                            assert!(*r <= 1.0, "{name} {}: error / bound = {r:.3e} ({cfg:?}, {shape:?}, {isa})", OUTPUTS[i]);
                            worst[i] = worst[i].max(*r);
                        }
                        first = Some(got);
                    }
                    // The same bits for any thread count.
                    Some(f) => {
                        for (i, (g, f)) in got.iter().zip(f).enumerate() {
                            let same = g.iter().zip(f).all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "{name} on {isa}: {} differs between 1 and {threads} threads ({cfg:?})", OUTPUTS[i]);
                        }
                    }
                }
            }
        }
    }
    eprintln!("{name}: worst error / bound per output {OUTPUTS:?}: {:?}", worst.map(|r| format!("{r:.3}")));
}

#[test]
fn f16_storage_is_the_f32_result_rounded_once_and_within_the_derived_bounds() {
    check_dtype::<half::f16>("f16");
}

#[test]
fn bf16_storage_is_the_f32_result_rounded_once_and_within_the_derived_bounds() {
    check_dtype::<half::bf16>("bf16");
}

/// A plan serves the storage type it was made for: another type's call is an error naming
/// `plan`; `read_params` gives back the 16-bit parameters bit for bit.
#[test]
fn a_plan_keeps_its_storage_type() {
    let cfg = RnnConfig::new(CellKind::Gru, 3, 20).build().unwrap();
    let shape = SeqShape::new(2, 2).unwrap();
    let cpu = Cpu::new().unwrap();
    let params = Params::<half::bf16>::init_uniform(&cfg, 5).unwrap();
    let plan = Backend::<half::bf16>::plan(&cpu, &cfg, params.as_slice()).unwrap();
    assert_eq!(plan.dtype(), rnn_kernels::Dtype::BF16);
    let mut back = vec![half::bf16::ZERO; params.as_slice().len()];
    Backend::<half::bf16>::read_params(&cpu, &plan, &mut back).unwrap();
    assert_eq!(bits(&back), bits(params.as_slice()));
    // update_plan repacks the 16-bit panels: the same outputs as a fresh plan of the new values.
    let other = Params::<half::bf16>::init_uniform(&cfg, 6).unwrap();
    let xb = vec![half::bf16::from_f32(0.5); 2 * 2 * 3];
    let run = |plan: &rnn_kernels::CpuPlan| {
        let mut y = vec![half::bf16::ZERO; 2 * 2 * 20];
        let input = ForwardInput { x: &xb[..], h0: None, c0: None, masks: None };
        Backend::<half::bf16>::forward_inference(&cpu, plan, &shape, input, ForwardOutput { y: &mut y[..], hn: None, cn: None }).unwrap();
        bits(&y)
    };
    let mut updated = plan.clone();
    Backend::<half::bf16>::update_plan(&cpu, &mut updated, other.as_slice()).unwrap();
    let fresh = Backend::<half::bf16>::plan(&cpu, &cfg, other.as_slice()).unwrap();
    assert_eq!(run(&updated), run(&fresh));
    assert_ne!(run(&updated), run(&plan));
    let e = Backend::<f32>::update_plan(&cpu, &mut updated, &vec![0.0f32; params.as_slice().len()]);
    assert!(matches!(e, Err(Error::InvalidArgument { ref arg, .. }) if arg == "plan"), "{e:?}");

    let x = vec![0.5f32; 2 * 2 * 3];
    let mut y = vec![0.0f32; 2 * 2 * 20];
    let e = Backend::<f32>::forward_inference(
        &cpu,
        &plan,
        &shape,
        ForwardInput { x: &x, h0: None, c0: None, masks: None },
        ForwardOutput { y: &mut y, hn: None, cn: None },
    );
    match e {
        Err(Error::InvalidArgument { ref arg, .. }) if arg == "plan" => {}
        other => panic!("an f32 call on a bf16 plan: {other:?}"),
    }
    let xh = vec![half::f16::from_f32(0.5); 2 * 2 * 3];
    let mut yh = vec![half::f16::ZERO; 2 * 2 * 20];
    let e = Backend::<half::f16>::forward_inference(
        &cpu,
        &plan,
        &shape,
        ForwardInput { x: &xh, h0: None, c0: None, masks: None },
        ForwardOutput { y: &mut yh, hn: None, cn: None },
    );
    assert!(matches!(e, Err(Error::InvalidArgument { ref arg, .. }) if arg == "plan"), "{e:?}");
    // A wrong length is named as in f32.
    let mut short = vec![half::bf16::ZERO; 3];
    let e = Backend::<half::bf16>::forward_inference(
        &cpu,
        &plan,
        &shape,
        ForwardInput { x: &xb, h0: None, c0: None, masks: None },
        ForwardOutput { y: &mut short, hn: None, cn: None },
    );
    assert!(matches!(e, Err(Error::Shape { ref arg, .. }) if arg == "y"), "{e:?}");
}
