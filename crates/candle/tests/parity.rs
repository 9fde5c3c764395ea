//! The candle modules against the library's own API (`Rnn::forward_training` and
//! `Rnn::backward`) on the same backend: outputs and every gradient, through candle's
//! `backward()`, bit for bit.

mod common;

use candle_core::{Device, Module, Tensor, Var};
use common::{check_cpu, cpu, direct, same, same_results, through_candle, values, Problem};
use rnn_kernels::{CellKind, Direction, Reference, RnnConfig};
use rnn_kernels_candle::{Input, Recurrent, GRU, LSTM, RNN};

fn cfg(cell: CellKind, i: usize, h: usize, layers: usize, bi: bool) -> rnn_kernels::RnnConfigBuilder {
    RnnConfig::new(cell, i, h).num_layers(layers).bidirectional(bi)
}

#[test]
fn lstm_one_layer() {
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 5, 7, 1, false).build().unwrap(), 6, 3, None, 1));
}

#[test]
fn lstm_two_layers_bidirectional() {
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 4, 9, 2, true).build().unwrap(), 5, 4, None, 2));
}

#[test]
fn lstm_projection_two_layers_bidirectional() {
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 6, 8, 2, true).proj_size(3).build().unwrap(), 5, 3, None, 3));
}

#[test]
fn lstm_reverse_only() {
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 3, 5, 2, false).direction(Direction::Reverse).build().unwrap(), 4, 2, None, 4));
}

#[test]
fn gru_one_and_two_layers() {
    check_cpu(&Problem::new(&cfg(CellKind::Gru, 5, 6, 1, false).build().unwrap(), 6, 3, None, 5));
    check_cpu(&Problem::new(&cfg(CellKind::Gru, 4, 7, 2, true).build().unwrap(), 5, 4, None, 6));
}

#[test]
fn rnn_tanh_and_relu() {
    check_cpu(&Problem::new(&cfg(CellKind::RnnTanh, 4, 6, 2, true).build().unwrap(), 5, 3, None, 7));
    check_cpu(&Problem::new(&cfg(CellKind::RnnRelu, 3, 5, 2, false).build().unwrap(), 6, 2, None, 8));
}

#[test]
fn without_bias() {
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 4, 5, 2, true).bias(false).build().unwrap(), 4, 3, None, 9));
}

#[test]
fn variable_lengths() {
    let lengths = || Some(vec![5, 2, 4, 1]);
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 4, 6, 2, true).build().unwrap(), 5, 4, lengths(), 10));
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 4, 6, 2, true).proj_size(2).build().unwrap(), 5, 4, lengths(), 11));
    check_cpu(&Problem::new(&cfg(CellKind::Gru, 3, 5, 2, true).build().unwrap(), 5, 4, lengths(), 12));
    check_cpu(&Problem::new(&cfg(CellKind::RnnTanh, 3, 5, 1, true).build().unwrap(), 5, 4, lengths(), 13));
}

#[test]
fn batch_first() {
    check_cpu(&Problem::new(&cfg(CellKind::Lstm, 4, 6, 2, true).batch_first(true).build().unwrap(), 5, 3, Some(vec![5, 3, 4]), 14));
    check_cpu(&Problem::new(&cfg(CellKind::Gru, 4, 6, 1, false).batch_first(true).build().unwrap(), 5, 3, None, 15));
}

#[test]
fn without_initial_states_or_some_upstream_gradients() {
    // No h0, c0: zeros, and no gradient for them. Only hn in the loss: y's gradient is zeros.
    let c = cfg(CellKind::Lstm, 4, 6, 2, true).build().unwrap();
    let mut p = Problem::new(&c, 5, 3, None, 16);
    p.h0 = None;
    p.c0 = None;
    p.dy = None;
    p.dcn = None;
    check_cpu(&p);
    // Only y in the loss.
    let mut p = Problem::new(&c, 5, 3, Some(vec![1, 5, 2]), 17);
    p.dhn = None;
    p.dcn = None;
    check_cpu(&p);
}

#[test]
fn reference_backend_f64_and_f32() {
    let c = cfg(CellKind::Lstm, 4, 6, 2, true).proj_size(3).build().unwrap();
    let p = Problem::<f64>::new(&c, 5, 3, Some(vec![5, 1, 3]), 18);
    let module = Recurrent::new(Reference, &p.params).unwrap();
    same_results(&through_candle(&module, &p), &direct(Reference, &p));
    let p = Problem::<f32>::new(&cfg(CellKind::Gru, 3, 4, 2, true).build().unwrap(), 4, 2, None, 19);
    let module = Recurrent::new(Reference, &p.params).unwrap();
    same_results(&through_candle(&module, &p), &direct(Reference, &p));
}

#[test]
fn cell_modules_check_the_cell_and_run() {
    let lstm = cfg(CellKind::Lstm, 3, 4, 1, false).build().unwrap();
    let gru = cfg(CellKind::Gru, 3, 4, 1, false).build().unwrap();
    let relu = cfg(CellKind::RnnRelu, 3, 4, 1, false).build().unwrap();
    assert!(LSTM::<f32>::init(cpu(), &lstm, 1).is_ok());
    assert!(LSTM::<f32>::init(cpu(), &gru, 1).is_err());
    assert!(GRU::<f32>::init(cpu(), &gru, 1).is_ok());
    assert!(GRU::<f32>::init(cpu(), &relu, 1).is_err());
    assert!(RNN::<f32>::init(cpu(), &relu, 1).is_ok());
    assert!(RNN::<f32>::init(cpu(), &lstm, 1).is_err());

    // Module::forward is the training call's y.
    let m = GRU::<f32>::init(cpu(), &gru, 3).unwrap();
    let x = Tensor::from_vec(common::rand::<f32>(5 * 2 * 3, 4), (5, 2, 3), &Device::Cpu).unwrap();
    let y = m.forward(&x).unwrap();
    same("y", &values::<f32>(&y), &values::<f32>(&m.run(Input::new(&x)).unwrap().y));
}

#[test]
fn inference_calls_match_and_stay_out_of_the_graph() {
    let c = cfg(CellKind::Lstm, 4, 5, 2, true).build().unwrap();
    let p = Problem::<f32>::new(&c, 4, 3, Some(vec![4, 2, 3]), 20);
    let m = Recurrent::new(cpu(), &p.params).unwrap();
    let x = Tensor::from_slice(&p.x, common::x_dims(&p).as_slice(), &Device::Cpu).unwrap();
    let train = m.run(Input::new(&x).lengths(&[4, 2, 3])).unwrap();
    let inf = m.run(Input::new(&x).lengths(&[4, 2, 3]).inference()).unwrap();
    assert!(train.y.track_op() && !inf.y.track_op() && !inf.h_n.track_op());
    same("y", &values::<f32>(&inf.y), &values::<f32>(&train.y));
    same("hn", &values::<f32>(&inf.h_n), &values::<f32>(&train.h_n));
    same("cn", &values::<f32>(inf.c_n.as_ref().unwrap()), &values::<f32>(train.c_n.as_ref().unwrap()));
}

#[test]
fn a_view_as_input_gets_its_gradient() {
    // x given batch-first to a time-major stack through a transpose (a strided view): the
    // module copies it for the kernels, and the gradient reaches the variable.
    let c = cfg(CellKind::Gru, 3, 5, 1, true).build().unwrap();
    let mut p = Problem::<f32>::new(&c, 4, 2, None, 21);
    p.h0 = None;
    p.dhn = None;
    let m = Recurrent::new(cpu(), &p.params).unwrap();
    let want = direct(cpu(), &p);
    // The batch-first copy of x: [B, T, I].
    let xt = Tensor::from_slice(&p.x, (4, 2, 3), &Device::Cpu).unwrap().transpose(0, 1).unwrap().contiguous().unwrap();
    let xv = Var::from_tensor(&xt).unwrap();
    let view = xv.as_tensor().transpose(0, 1).unwrap();
    assert!(!view.is_contiguous());
    let out = m.run(Input::new(&view)).unwrap();
    let grads = common::loss(&p, &out).backward().unwrap();
    same("y", &values::<f32>(&out.y), &want.y);
    let dx = grads.get(&xv).unwrap().transpose(0, 1).unwrap();
    same("dx", &values::<f32>(&dx), &want.dx);
}

#[test]
fn backward_twice_over_one_graph() {
    let c = cfg(CellKind::Lstm, 3, 4, 1, true).build().unwrap();
    let p = Problem::<f32>::new(&c, 4, 2, None, 22);
    let m = Recurrent::new(cpu(), &p.params).unwrap();
    let x = Var::from_slice(&p.x, common::x_dims(&p).as_slice(), &Device::Cpu).unwrap();
    let out = m.run(Input::new(x.as_tensor())).unwrap();
    let l = common::loss(&p, &out);
    let (a, b) = (l.backward().unwrap(), l.backward().unwrap());
    for (name, v) in m.named_vars() {
        same(name, &values::<f32>(a.get(v).unwrap()), &values::<f32>(b.get(v).unwrap()));
    }
    same("dx", &values::<f32>(a.get(&x).unwrap()), &values::<f32>(b.get(&x).unwrap()));
}

#[test]
fn refuses_wrong_inputs() {
    let c = cfg(CellKind::Gru, 3, 4, 2, false).build().unwrap();
    let m = GRU::<f32>::init(cpu(), &c, 1).unwrap();
    let x = Tensor::zeros((5, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = |r: candle_core::Result<rnn_kernels_candle::Output>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(m.run(Input::new(&x.to_dtype(candle_core::DType::F64).unwrap()))).contains("dtype"));
    assert!(err(m.run(Input::new(&Tensor::zeros((5, 2, 4), candle_core::DType::F32, &Device::Cpu).unwrap()))).contains("input size"));
    assert!(err(m.run(Input::new(&Tensor::zeros((5, 3), candle_core::DType::F32, &Device::Cpu).unwrap()))).contains("rank"));
    let h = Tensor::zeros((2, 2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(err(m.run(Input::new(&x).c0(&h))).contains("c0"));
    assert!(err(m.run(Input::new(&x).h0(&Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap()))).contains("h0"));
    assert!(err(m.run(Input::new(&x).lengths(&[5]))).contains("lengths"));
    assert!(!err(m.run(Input::new(&x).lengths(&[5, 6]))).is_empty());
    assert!(m.run(Input::new(&x).h0(&h).lengths(&[5, 1])).is_ok());
}

#[test]
#[should_panic(expected = "dparams: element")]
fn the_comparison_sees_one_ulp() {
    let p = Problem::<f32>::new(&cfg(CellKind::Gru, 3, 4, 1, false).build().unwrap(), 3, 2, None, 23);
    let mut want = direct(cpu(), &p);
    let last = want.dparams.len() - 1;
    want.dparams[last] = f32::from_bits(want.dparams[last].to_bits() ^ 1);
    same_results(&through_candle(&Recurrent::new(cpu(), &p.params).unwrap(), &p), &want);
}

#[test]
fn shared_cpu_is_one_backend() {
    let (a, b) = (rnn_kernels_candle::shared_cpu().unwrap(), rnn_kernels_candle::shared_cpu().unwrap());
    assert_eq!(a.threads(), b.threads());
    assert_eq!(a.threads(), std::thread::available_parallelism().map_or(1, |n| n.get()));
}
