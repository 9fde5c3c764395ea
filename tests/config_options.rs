//! The cell options of `RnnConfig` (ONNX, Keras and cuDNN variants): their validation, their
//! sizes, their parameter tensors, their file metadata, and that a backend refuses an option it
//! does not implement instead of ignoring it.

use rnn_kernels::{config_from_metadata, config_metadata, Backend, CellKind, Cpu, Direction, Error, Merge, Params, Reference, RnnConfig};

fn invalid_arg(r: rnn_kernels::Result<RnnConfig>) -> String {
    match r {
        Err(Error::InvalidArgument { arg, .. }) => arg,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn options_are_validated_per_cell() {
    let gru = || RnnConfig::new(CellKind::Gru, 3, 4);
    let lstm = || RnnConfig::new(CellKind::Lstm, 3, 4);
    assert_eq!(invalid_arg(gru().peephole(true).build()), "peephole");
    assert_eq!(invalid_arg(gru().input_forget(true).build()), "input_forget");
    assert_eq!(invalid_arg(lstm().linear_before_reset(false).build()), "linear_before_reset");
    assert_eq!(invalid_arg(RnnConfig::new(CellKind::RnnTanh, 3, 4).linear_before_reset(false).build()), "linear_before_reset");
    assert_eq!(invalid_arg(lstm().merge(Merge::Sum).build()), "merge");
    assert_eq!(invalid_arg(RnnConfig::new(CellKind::RnnTanh, 3, 4).layer_norm(true).build()), "layer_norm");
    assert_eq!(invalid_arg(RnnConfig::new(CellKind::RnnRelu, 3, 4).layer_norm(true).build()), "layer_norm");
    assert_eq!(invalid_arg(gru().layer_norm(true).linear_before_reset(false).build()), "layer_norm");
    assert_eq!(invalid_arg(lstm().direction(Direction::Reverse).merge(Merge::Sum).build()), "merge");
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(invalid_arg(gru().gate_clip(bad).build()), "gate_clip", "clip {bad}");
    }
    // Every option on the cells that have it builds.
    lstm().peephole(true).input_forget(true).gate_clip(3.0).direction(Direction::Reverse).batch_first(true).build().unwrap();
    lstm().layer_norm(true).peephole(true).input_forget(true).gate_clip(3.0).proj_size(2).build().unwrap();
    gru().layer_norm(true).gate_clip(1.0).bidirectional(true).build().unwrap();
    gru().linear_before_reset(false).gate_clip(0.5).bidirectional(true).merge(Merge::Sum).build().unwrap();
    let c = RnnConfig::new(CellKind::RnnRelu, 3, 4).gate_clip(-0.0).build().unwrap();
    assert_eq!(c.gate_clip(), None, "-0 is no clipping");
    assert!(c.options().is_empty());
}

#[test]
fn sizes_follow_direction_and_merge() {
    let rev = RnnConfig::new(CellKind::Lstm, 3, 4).direction(Direction::Reverse).num_layers(2).build().unwrap();
    assert_eq!((rev.num_directions(), rev.output_size(), rev.layer_input_size(1)), (1, 4, 4));
    assert!(rev.reverse_only() && !rev.bidirectional());
    let sum = RnnConfig::new(CellKind::Gru, 3, 4).bidirectional(true).merge(Merge::Sum).num_layers(2).build().unwrap();
    assert_eq!((sum.num_directions(), sum.output_size(), sum.layer_input_size(1)), (2, 4, 4));
    let concat = sum.to_builder().merge(Merge::Concat).build().unwrap();
    assert_eq!(concat.output_size(), 8);
    // The counted parameters agree with the layout's tensors.
    for c in [&rev, &sum, &concat] {
        assert_eq!(c.param_count(), Params::<f32>::zeros(c).unwrap().as_slice().len());
    }
    // Reverse-only keeps the unsuffixed names.
    let p = Params::<f32>::zeros(&rev).unwrap();
    assert!(p.layout().specs().iter().all(|s| !s.name.ends_with("_reverse")));
}

#[test]
fn peephole_tensors_are_in_the_layout() {
    let c = RnnConfig::new(CellKind::Lstm, 3, 5).peephole(true).bidirectional(true).num_layers(2).proj_size(2).build().unwrap();
    let p = Params::<f32>::zeros(&c).unwrap();
    for name in ["weight_peephole_l0", "weight_peephole_l0_reverse", "weight_peephole_l1", "weight_peephole_l1_reverse"] {
        let s = p.layout().find(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(s.shape, vec![3, 5], "{name}");
        assert_eq!(p.layout().layer(s.layer, s.direction).peephole, Some(s.range()));
    }
    assert_eq!(c.param_count(), p.as_slice().len());
}

#[test]
fn layer_norm_tensors_are_in_the_layout() {
    // LSTM: two G·H gains and the cell state's gain and bias, per layer-direction, after the
    // other tensors of the layer-direction.
    let c = RnnConfig::new(CellKind::Lstm, 3, 5).layer_norm(true).bidirectional(true).num_layers(2).proj_size(2).build().unwrap();
    let p = Params::<f64>::init_uniform(&c, 7).unwrap();
    for (l, sfx) in [(0, ""), (0, "_reverse"), (1, ""), (1, "_reverse")] {
        let d = usize::from(!sfx.is_empty());
        let shape =
            |stem: &str| p.layout().find(&format!("{stem}_l{l}{sfx}")).unwrap_or_else(|| panic!("{stem}_l{l}{sfx} missing")).clone();
        let (ih, hh, gc, bc) = (shape("weight_ln_ih"), shape("weight_ln_hh"), shape("weight_ln_c"), shape("bias_ln_c"));
        assert_eq!((ih.shape.clone(), hh.shape.clone(), gc.shape.clone(), bc.shape.clone()), (vec![20], vec![20], vec![5], vec![5]));
        let r = p.layout().layer(l, d);
        assert_eq!((r.ln_ih.clone(), r.ln_hh.clone()), (Some(ih.range()), Some(hh.range())));
        assert_eq!((r.ln_c_weight.clone(), r.ln_c_bias.clone()), (Some(gc.range()), Some(bc.range())));
        assert!(ih.offset > shape("weight_hr").offset, "the layer-norm tensors follow the others");
        // Initialised as torch.nn.LayerNorm and Haste initialise them: gains 1, bias 0.
        for s in [&ih, &hh, &gc] {
            assert!(p.as_slice()[s.range()].iter().all(|&v| v == 1.0), "{}", s.name);
        }
        assert!(p.as_slice()[bc.range()].iter().all(|&v| v == 0.0));
    }
    assert_eq!(c.param_count(), p.as_slice().len());
    // The other tensors do not change with layer norm: same names, shapes and initial values.
    let plain = Params::<f64>::init_uniform(&c.to_builder().layer_norm(false).build().unwrap(), 7).unwrap();
    for s in plain.layout().specs() {
        assert_eq!(p.get(&s.name).unwrap(), plain.get(&s.name).unwrap(), "{}", s.name);
    }
    // GRU: the two gains only.
    let g = RnnConfig::new(CellKind::Gru, 3, 5).layer_norm(true).build().unwrap();
    let names: Vec<String> = Params::<f32>::zeros(&g).unwrap().layout().specs().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ln_ih_l0", "weight_ln_hh_l0"]);
    assert_eq!(g.options(), vec!["layer_norm"]);
}

#[test]
fn options_round_trip_through_metadata() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 3, 5).peephole(true).input_forget(true).gate_clip(2.5).direction(Direction::Reverse).build(),
        RnnConfig::new(CellKind::Gru, 3, 5).linear_before_reset(false).bidirectional(true).merge(Merge::Sum).batch_first(true).build(),
        RnnConfig::new(CellKind::RnnTanh, 3, 5).gate_clip(0.1).build(),
        RnnConfig::new(CellKind::Lstm, 3, 5).layer_norm(true).peephole(true).build(),
        RnnConfig::new(CellKind::Gru, 3, 5).layer_norm(true).bidirectional(true).build(),
        RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(3).dropout(0.3).build(),
    ];
    for c in configs {
        let c = c.unwrap();
        let meta = config_metadata(&c);
        assert_eq!(config_from_metadata(&meta, "test").unwrap(), c, "{meta:?}");
    }
    // `direction` decides over `bidirectional`; a plain configuration writes no option key.
    let plain = RnnConfig::new(CellKind::Lstm, 3, 5).build().unwrap();
    let mut meta = config_metadata(&plain);
    for key in
        ["direction", "merge", "peephole", "gate_clip", "input_forget", "linear_before_reset", "layer_norm", "batch_first", "dropout"]
    {
        assert!(!meta.contains_key(key), "{key} written for a plain configuration");
    }
    meta.insert("bidirectional".into(), "true".into());
    meta.insert("direction".into(), "reverse".into());
    assert_eq!(config_from_metadata(&meta, "test").unwrap().direction(), Direction::Reverse);
    meta.insert("direction".into(), "sideways".into());
    let err = config_from_metadata(&meta, "test").unwrap_err().to_string();
    assert!(err.contains("direction") && err.contains("sideways"), "{err}");
    meta.insert("direction".into(), "forward".into());
    meta.insert("gate_clip".into(), "lots".into());
    let err = config_from_metadata(&meta, "test").unwrap_err().to_string();
    assert!(err.contains("gate_clip") && err.contains("lots"), "{err}");
    meta.insert("gate_clip".into(), "0".into());
    for bad in ["half", "1", "-0.5", "NaN"] {
        meta.insert("dropout".into(), bad.into());
        let err = config_from_metadata(&meta, "test").unwrap_err().to_string();
        assert!(err.contains("dropout") && err.contains("[0, 1)"), "{bad}: {err}");
    }
}

/// Every option a backend lacks is refused at `plan`, naming the option; none is ignored.
#[test]
fn backends_refuse_options_they_lack() {
    let all = [
        ("direction=reverse", RnnConfig::new(CellKind::Lstm, 3, 4).direction(Direction::Reverse)),
        ("merge=sum", RnnConfig::new(CellKind::Lstm, 3, 4).bidirectional(true).merge(Merge::Sum)),
        ("peephole", RnnConfig::new(CellKind::Lstm, 3, 4).peephole(true)),
        ("gate_clip", RnnConfig::new(CellKind::Gru, 3, 4).gate_clip(1.0)),
        ("input_forget", RnnConfig::new(CellKind::Lstm, 3, 4).input_forget(true)),
        ("linear_before_reset=false", RnnConfig::new(CellKind::Gru, 3, 4).linear_before_reset(false)),
        ("batch_first", RnnConfig::new(CellKind::Gru, 3, 4).batch_first(true)),
        ("layer_norm", RnnConfig::new(CellKind::Lstm, 3, 4).layer_norm(true)),
        ("dropout", RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).dropout(0.5)),
    ];
    for (option, b) in all {
        let c = b.build().unwrap();
        assert_eq!(c.options(), vec![option]);
        let p = Params::<f64>::zeros(&c).unwrap();
        check_refused_or_ran(option, Backend::<f64>::plan(&Reference, &c, p.as_slice()).map(|_| ()), supported_by_reference(option));
        let p32 = p.cast::<f32>();
        let cpu = Cpu::new().unwrap();
        check_refused_or_ran(option, Backend::<f32>::plan(&cpu, &c, p32.as_slice()).map(|_| ()), supported_by_cpu(option));
    }
}

fn check_refused_or_ran(option: &str, r: rnn_kernels::Result<()>, supported: bool) {
    match (r, supported) {
        (Ok(()), true) => {}
        (Err(Error::Unsupported { option: o, .. }), false) => assert_eq!(o, option),
        (r, s) => panic!("{option}: supported {s}, plan gave {r:?}"),
    }
}

/// The options each host backend implements (the lists in `src/backend/*/mod.rs`, `OPTIONS`).
fn supported_by_reference(option: &str) -> bool {
    [
        "direction=reverse",
        "merge=sum",
        "batch_first",
        "dropout",
        "peephole",
        "gate_clip",
        "input_forget",
        "linear_before_reset=false",
        "layer_norm",
    ]
    .contains(&option)
}

fn supported_by_cpu(option: &str) -> bool {
    supported_by_reference(option)
}
