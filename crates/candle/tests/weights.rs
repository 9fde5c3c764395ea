//! Weights that change under the module: `Var::set` between steps, a change between a call and
//! its backward, plain SGD steps against the library's own loop, variables shared with the
//! caller, and the reserves kept between steps.

mod common;

use candle_core::{Device, Storage, Tensor, Var};
use common::{cpu, direct, direct_with, finish, same, same_results, start, through_candle, values, Problem};
use rnn_kernels::{CellKind, Cpu, LoadOptions, Params, Rnn, RnnConfig};
use rnn_kernels_candle::{PlanStats, Recurrent};
use std::collections::HashMap;

fn config() -> RnnConfig {
    RnnConfig::new(CellKind::Lstm, 4, 6).num_layers(2).bidirectional(true).proj_size(3).build().unwrap()
}

/// Sets every variable of `m` to `params`.
fn set_all(m: &Recurrent<f32, Cpu>, params: &Params<f32>) {
    for (spec, (_, var)) in m.layout().specs().iter().zip(m.named_vars()) {
        var.set(&Tensor::from_slice(&params.as_slice()[spec.range()], spec.shape.as_slice(), &Device::Cpu).unwrap()).unwrap();
    }
}

/// The problem `p` with other parameters.
fn with_params(p: &Problem<f32>, params: Params<f32>) -> Problem<f32> {
    Problem {
        params,
        shape: p.shape.clone(),
        x: p.x.clone(),
        h0: p.h0.clone(),
        c0: p.c0.clone(),
        dy: p.dy.clone(),
        dhn: p.dhn.clone(),
        dcn: p.dcn.clone(),
    }
}

fn stats(checks: u64, updated: u64, replanned: u64) -> PlanStats {
    PlanStats { checks, updated, replanned }
}

#[test]
fn var_set_between_steps_is_picked_up() {
    let p = Problem::<f32>::new(&config(), 5, 3, Some(vec![5, 2, 4]), 1);
    let m = Recurrent::new(cpu(), &p.params).unwrap();
    same_results(&through_candle(&m, &p), &direct(cpu(), &p));
    assert_eq!(m.plan_stats(), stats(1, 0, 0));

    // Every variable changed.
    let p2 = with_params(&p, Params::init_uniform(&config(), 99).unwrap());
    set_all(&m, &p2.params);
    same_results(&through_candle(&m, &p2), &direct(cpu(), &p2));
    assert_eq!(m.plan_stats(), stats(2, 1, 0));

    // One element of one variable changed.
    let mut params = p2.params.clone();
    params.get_mut("bias_hh_l1_reverse").unwrap()[5] += 0.25;
    let p3 = with_params(&p, params);
    let v = m.var("bias_hh_l1_reverse").unwrap();
    v.set(&Tensor::from_slice(p3.params.get("bias_hh_l1_reverse").unwrap(), v.dims(), &Device::Cpu).unwrap()).unwrap();
    same_results(&through_candle(&m, &p3), &direct(cpu(), &p3));
    assert_eq!(m.plan_stats(), stats(3, 2, 0));

    // Nothing changed: no refresh.
    same_results(&through_candle(&m, &p3), &direct(cpu(), &p3));
    assert!(!m.sync_weights().unwrap());
    assert_eq!(m.plan_stats(), stats(5, 2, 0));
    // Each step dropped its graph before the next: one reserve, reused.
    assert_eq!(m.pooled_reserves(), 1);
    m.clear_reserves();
    assert_eq!(m.pooled_reserves(), 0);
}

#[test]
fn a_weight_change_between_a_call_and_its_backward_gives_the_old_weights_gradients() {
    let p0 = Problem::<f32>::new(&config(), 5, 3, None, 2);
    let p1 = with_params(&p0, Params::init_uniform(&config(), 77).unwrap());
    let p2 = with_params(&p0, Params::init_uniform(&config(), 78).unwrap());
    let m = Recurrent::new(cpu(), &p0.params).unwrap();

    // Changed after the call, before its backward (no call in between).
    let (v, out) = start(&m, &p0);
    set_all(&m, &p1.params);
    same_results(&finish(&m, &p0, &v, &out), &direct(cpu(), &p0));
    drop((v, out));

    // Changed, and another call made, while the first call's graph is alive: the second call
    // gets a new plan, the first keeps its own.
    set_all(&m, &p0.params);
    let (v0, out0) = start(&m, &p0);
    set_all(&m, &p1.params);
    let (v1, out1) = start(&m, &p1);
    assert_eq!(m.plan_stats(), stats(3, 0, 1));
    same_results(&finish(&m, &p1, &v1, &out1), &direct(cpu(), &p1));
    same_results(&finish(&m, &p0, &v0, &out0), &direct(cpu(), &p0));
    drop((v0, out0, v1, out1));
    // Two calls were alive at once: two reserves kept.
    assert_eq!(m.pooled_reserves(), 2);

    // No graph alive: the plan is updated in place.
    set_all(&m, &p2.params);
    same_results(&through_candle(&m, &p2), &direct(cpu(), &p2));
    assert_eq!(m.plan_stats(), stats(4, 1, 1));
}

#[test]
fn sgd_steps_match_the_library_loop() {
    let cfg = config();
    let lr = 0.1f32;
    let params = Params::<f32>::init_uniform(&cfg, 3).unwrap();
    let m = Recurrent::new(cpu(), &params).unwrap();
    let mut rnn = Rnn::from_params(cpu(), &params).unwrap();
    let mut flat = params.as_slice().to_vec();
    for step in 0..4 {
        let p = with_params(&Problem::new(&cfg, 5, 3, Some(vec![3, 5, 4]), 10 + step), params.clone());
        let want = direct_with(&rnn, &p);
        let (v, out) = start(&m, &p);
        let got = finish(&m, &p, &v, &out);
        same_results(&got, &want);
        // The library's loop: its flat buffer, then update_params.
        for (w, g) in flat.iter_mut().zip(&want.dparams) {
            *w -= g * lr;
        }
        rnn.update_params(&flat).unwrap();
        // candle's: each variable from its gradient.
        let grads = common::loss(&p, &out).backward().unwrap();
        for var in m.vars() {
            let g = grads.get(&var).unwrap();
            var.set(&(var.as_tensor() - (g * lr as f64).unwrap()).unwrap()).unwrap();
        }
    }
    same("weights after the steps", m.params().unwrap().as_slice(), &flat);
    assert_eq!(m.plan_stats(), stats(4, 3, 0));
}

#[test]
fn var_set_writes_into_the_same_storage() {
    // Why the module compares values: a variable's storage stays the same through `set`, so its
    // identity cannot tell that the weights changed.
    let ptr = |v: &Var| {
        let (s, l) = v.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => c.as_slice::<f32>().unwrap()[l.start_offset()..].as_ptr() as usize,
            _ => unreachable!(),
        }
    };
    let v = Var::from_slice(&[1f32, 2.0, 3.0], 3, &Device::Cpu).unwrap();
    let before = ptr(&v);
    v.set(&Tensor::from_slice(&[4f32, 5.0, 6.0], 3, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(ptr(&v), before);
    assert_eq!(v.to_vec1::<f32>().unwrap(), [4.0, 5.0, 6.0]);
}

#[test]
fn shared_variables() {
    let p = Problem::<f32>::new(&config(), 4, 2, None, 4);
    // The caller's variables, under a prefix, with another module's beside them.
    let mut map: HashMap<String, Var> = p
        .params
        .layout()
        .specs()
        .iter()
        .map(|s| (format!("enc.{}", s.name), Var::from_slice(&p.params.as_slice()[s.range()], s.shape.as_slice(), &Device::Cpu).unwrap()))
        .collect();
    map.insert("dec.weight".into(), Var::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    let opts = LoadOptions { prefix: "enc.".into(), allow_unexpected: false };
    let m = Recurrent::<f32, Cpu>::from_vars(cpu(), &config(), &map, &opts).unwrap();
    same_results(&through_candle(&m, &p), &direct(cpu(), &p));
    // The module's variables are the map's: a gradient is found under the map's variable, and a
    // change made through the map is seen.
    let (v, out) = start(&m, &p);
    let grads = common::loss(&p, &out).backward().unwrap();
    assert!(grads.get(&map["enc.weight_hh_l1"]).is_some());
    drop((v, out));
    let p2 = with_params(&p, Params::init_uniform(&config(), 5).unwrap());
    for s in p2.params.layout().specs() {
        map[&format!("enc.{}", s.name)]
            .set(&Tensor::from_slice(&p2.params.as_slice()[s.range()], s.shape.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
    }
    same_results(&through_candle(&m, &p2), &direct(cpu(), &p2));

    // Refused: a missing parameter, a wrong shape, an unexpected name under the prefix.
    let mut missing = map.clone();
    missing.remove("enc.bias_ih_l0");
    assert!(Recurrent::<f32, Cpu>::from_vars(cpu(), &config(), &missing, &opts).err().unwrap().to_string().contains("bias_ih_l0"));
    let mut wrong = map.clone();
    wrong.insert("enc.bias_ih_l0".into(), Var::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap());
    assert!(Recurrent::<f32, Cpu>::from_vars(cpu(), &config(), &wrong, &opts).err().unwrap().to_string().contains("shape"));
    let mut extra = map.clone();
    extra.insert("enc.weight_xx".into(), Var::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap());
    assert!(Recurrent::<f32, Cpu>::from_vars(cpu(), &config(), &extra, &opts).err().unwrap().to_string().contains("weight_xx"));
    let lenient = LoadOptions { allow_unexpected: true, ..opts.clone() };
    assert!(Recurrent::<f32, Cpu>::from_vars(cpu(), &config(), &extra, &lenient).is_ok());
}

#[test]
fn dropout_masks_follow_the_seed_and_the_call_number() {
    let cfg = RnnConfig::new(CellKind::Gru, 3, 5).num_layers(3).dropout(0.5).build().unwrap();
    let p = Problem::<f32>::new(&cfg, 4, 2, None, 6);
    let m = Recurrent::new(cpu(), &p.params).unwrap().with_mask_seed(42);
    let rnn = Rnn::from_params(cpu(), &p.params).unwrap();
    for call in 0..2 {
        let mut reserve = Default::default();
        let masks = rnn_kernels::masks::MaskStream::new(42, call);
        let want = rnn.forward_training_masked(&p.shape, &p.x, p.h0.as_deref(), None, masks, &mut reserve).unwrap();
        let g = rnn.backward(&reserve, p.dy.as_deref(), p.dhn.as_deref(), None).unwrap();
        let got = through_candle(&m, &p);
        same("y", &got.y, &want.y);
        same("dparams", &got.dparams, g.dparams.as_ref().unwrap());
    }
    // Inference keeps every unit (and draws no masks).
    let x = Tensor::from_slice(&p.x, common::x_dims(&p).as_slice(), &Device::Cpu).unwrap();
    let inf = m
        .run(
            rnn_kernels_candle::Input::new(&x)
                .h0(&Tensor::from_slice(p.h0.as_ref().unwrap(), (3, 2, 5), &Device::Cpu).unwrap())
                .inference(),
        )
        .unwrap();
    same("y (inference)", &values::<f32>(&inf.y), &rnn.forward(&p.shape, &p.x, p.h0.as_deref(), None).unwrap().y);
}
