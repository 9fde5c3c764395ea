//! Parameters from safetensors files written by PyTorch (the library's case files,
//! `tests/fixtures/`) and by the library, through both loaders, and the modules' results
//! against PyTorch's.

mod common;

use candle_core::{Device, Tensor};
use common::{cpu, same, through_candle, Problem, Results};
use rnn_kernels::testkit::case::{max_error, Case};
use rnn_kernels::{Cpu, LoadOptions, Params, Reference};
use rnn_kernels_candle::{CandleFloat, Recurrent, GRU, LSTM};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// The case's inputs and upstream gradients as a problem.
fn problem<T: CandleFloat>(case: &Case<T>) -> Problem<T> {
    Problem {
        params: case.params.clone(),
        shape: case.shape.clone(),
        x: case.x.clone(),
        h0: case.h0.clone(),
        c0: case.c0.clone(),
        dy: case.dy.clone(),
        dhn: case.dhn.clone(),
        dcn: case.dcn.clone(),
    }
}

/// The largest difference of everything the module gave from PyTorch's.
fn worst<T: CandleFloat>(got: &Results<T>, case: &Case<T>) -> f64 {
    let mut worst = 0.0f64;
    let mut cmp = |g: Option<&[T]>, w: Option<&[T]>| {
        if let (Some(g), Some(w)) = (g, w) {
            worst = worst.max(max_error(g, w));
        }
    };
    cmp(Some(&got.y), case.y.as_deref());
    cmp(Some(&got.hn), case.hn.as_deref());
    cmp(got.cn.as_deref(), case.cn.as_deref());
    cmp(Some(&got.dx), case.dx.as_deref());
    cmp(got.dh0.as_deref(), case.dh0.as_deref());
    cmp(got.dc0.as_deref(), case.dc0.as_deref());
    cmp(Some(&got.dparams), case.grads.as_ref().map(|g| g.as_slice()));
    worst
}

/// Options for a case file, which holds the call's tensors beside the parameters.
fn lenient() -> LoadOptions {
    LoadOptions { allow_unexpected: true, ..LoadOptions::default() }
}

#[test]
fn pytorch_files_through_both_loaders() {
    for name in ["lstm_proj_l2_bi_varlen.safetensors", "gru_l2_bi_varlen.safetensors", "rnn_relu_l2_bi_varlen.safetensors"] {
        let path = fixture(name);
        let case = Case::<f64>::load(&path).unwrap();
        let cfg = &case.config;
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();

        // f64 on the reference backend: the library's loader and candle's give the same
        // variables, and the results are PyTorch's (computed in f64) to rounding.
        let a = Recurrent::<f64, Reference>::load_safetensors(Reference, cfg, &path, &lenient()).unwrap();
        let b = Recurrent::<f64, Reference>::from_tensors(Reference, cfg, &tensors, &lenient()).unwrap();
        same("parameters", a.params().unwrap().as_slice(), case.params.as_slice());
        same("parameters", b.params().unwrap().as_slice(), case.params.as_slice());
        let err = worst(&through_candle(&b, &problem(&case)), &case);
        assert!(err < 1e-12, "{name}: f64 differs from PyTorch by {err:e}");

        // f32 on the CPU backend.
        let case32 = Case::<f32>::load(&path).unwrap();
        let c = Recurrent::<f32, Cpu>::from_tensors(cpu(), cfg, &tensors, &lenient()).unwrap();
        same("parameters", c.params().unwrap().as_slice(), case32.params.as_slice());
        let err = worst(&through_candle(&c, &problem(&case32)), &case32);
        assert!(err < 1e-4, "{name}: f32 differs from PyTorch by {err:e}");
    }
}

#[test]
fn cell_modules_load_and_strictness() {
    let path = fixture("lstm_l2_bi.safetensors");
    let case = Case::<f32>::load(&path).unwrap();
    assert!(LSTM::<f32>::load_safetensors(cpu(), &case.config, &path, &lenient()).is_ok());
    assert!(GRU::<f32>::load_safetensors(cpu(), &case.config, &path, &lenient()).is_err());
    // The file holds x, y, … beside the parameters: refused unless allowed.
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let err = LSTM::<f32>::from_tensors(cpu(), &case.config, &tensors, &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("not a parameter"), "{err}");
    // Under a prefix, as in a larger model's state_dict.
    let prefixed: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (format!("rnn.{k}"), v.clone())).collect();
    let opts = LoadOptions { prefix: "rnn.".into(), allow_unexpected: true };
    let m = LSTM::<f32>::from_tensors(cpu(), &case.config, &prefixed, &opts).unwrap();
    same("parameters", m.params().unwrap().as_slice(), case.params.as_slice());
}

#[test]
fn save_and_load_round_trip() {
    let cfg =
        rnn_kernels::RnnConfig::new(rnn_kernels::CellKind::Lstm, 3, 5).num_layers(2).bidirectional(true).proj_size(2).build().unwrap();
    let m = LSTM::<f32>::init(cpu(), &cfg, 7).unwrap();
    let path = std::env::temp_dir().join(format!("rnn-kernels-candle-{}.safetensors", std::process::id()));
    m.save_safetensors(&path).unwrap();
    // The library reads the configuration from the file's metadata.
    let back = Params::<f32>::load(&path).unwrap();
    assert_eq!(back.config(), &cfg);
    same("parameters", back.as_slice(), m.params().unwrap().as_slice());
    // candle reads the same tensors under PyTorch's names.
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for (name, var) in m.named_vars() {
        same(name, &common::values::<f32>(&tensors[name]), &common::values::<f32>(var.as_tensor()));
    }
    std::fs::remove_file(&path).unwrap();
}
