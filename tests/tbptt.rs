//! Truncated BPTT and gradient accumulation: a sequence run in chunks, each chunk's `hn`/`cn`
//! fed to the next as `h0`/`c0`, gives exactly the outputs of one call; and feeding each
//! chunk's `dh0`/`dc0` back as the previous chunk's `dhn`/`dcn`, with parameter gradients
//! accumulated, gives the full BPTT gradient.

mod common;

use common::{describe, F64Problem, Problem};
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::{CellKind, GradMode, Reference, Rnn, RnnConfig, SeqShape};

fn configs() -> Vec<RnnConfig> {
    vec![
        RnnConfig::new(CellKind::Lstm, 3, 5).num_layers(2).bidirectional(false).proj_size(2).build().unwrap(),
        RnnConfig::new(CellKind::Lstm, 4, 3).num_layers(1).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 3, 4).num_layers(2).build().unwrap(),
        RnnConfig::new(CellKind::RnnTanh, 2, 3).num_layers(3).bias(false).build().unwrap(),
    ]
}

/// Rows `t0..t1` of a `[T, B, F]` tensor.
fn steps(v: &[f64], t0: usize, t1: usize, b: usize, f: usize) -> &[f64] {
    &v[t0 * b * f..t1 * b * f]
}

#[test]
fn chunked_forward_with_carried_state_equals_one_call() {
    for cfg in configs() {
        let (t, b) = (8, 3);
        let full = SeqShape::new(t, b).unwrap();
        let p = Problem::random(&cfg, &full, 11, 1.0);
        let rnn = Rnn::new(Reference, &cfg, &p.params[..]).unwrap();
        let whole = rnn.forward(&full, &p.x, Some(&p.h0), p.c0.as_deref()).unwrap();

        let mut y = Vec::new();
        let (mut h, mut c) = (p.h0.clone(), p.c0.clone());
        for (t0, t1) in [(0, 3), (3, 4), (4, 8)] {
            let shape = SeqShape::new(t1 - t0, b).unwrap();
            let out = rnn.forward(&shape, steps(&p.x, t0, t1, b, cfg.input_size()), Some(&h), c.as_deref()).unwrap();
            y.extend_from_slice(&out.y);
            h = out.hn;
            c = out.cn;
        }
        // The same operations in the same order: bit-identical.
        assert_eq!(y, whole.y, "{}", describe(&cfg, &full));
        assert_eq!(h, whole.hn);
        assert_eq!(c, whole.cn);
    }
}

#[test]
fn chained_chunk_gradients_equal_full_bptt() {
    for cfg in configs() {
        let (t, b, split) = (6, 2, 4);
        let full = SeqShape::new(t, b).unwrap();
        let p = Problem::random(&cfg, &full, 21, 1.0);
        let rnn = Rnn::new(Reference, &cfg, &p.params[..]).unwrap();
        let mut reserve = Default::default();
        rnn.forward_training(&full, &p.x, Some(&p.h0), p.c0.as_deref(), &mut reserve).unwrap();
        let g = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), p.dcn.as_deref()).unwrap();

        // Forward in two chunks, keeping both reserves.
        let (i, o) = (cfg.input_size(), cfg.output_size());
        let s1 = SeqShape::new(split, b).unwrap();
        let s2 = SeqShape::new(t - split, b).unwrap();
        let (mut r1, mut r2) = (Default::default(), Default::default());
        let out1 = rnn.forward_training(&s1, steps(&p.x, 0, split, b, i), Some(&p.h0), p.c0.as_deref(), &mut r1).unwrap();
        rnn.forward_training(&s2, steps(&p.x, split, t, b, i), Some(&out1.hn), out1.cn.as_deref(), &mut r2).unwrap();

        // Backward: chunk 2 first; its dh0/dc0 are chunk 1's dhn/dcn; parameter gradients add up.
        let mut dparams = vec![0.0; p.params.len()];
        let g2 = rnn.backward_accumulate(&r2, Some(steps(&p.dy, split, t, b, o)), Some(&p.dhn), p.dcn.as_deref(), &mut dparams).unwrap();
        let g1 = rnn.backward_accumulate(&r1, Some(steps(&p.dy, 0, split, b, o)), Some(&g2.dh0), g2.dc0.as_deref(), &mut dparams).unwrap();

        let mut dx = g1.dx.clone();
        dx.extend_from_slice(&g2.dx);
        let what = describe(&cfg, &full);
        assert!(max_error(&dx, &g.dx) < 1e-13, "dx: {what}");
        assert!(max_error(&g1.dh0, &g.dh0) < 1e-13, "dh0: {what}");
        if let Some(dc0) = &g.dc0 {
            assert!(max_error(g1.dc0.as_ref().unwrap(), dc0) < 1e-13, "dc0: {what}");
        }
        assert!(max_error(&dparams, g.dparams.as_ref().unwrap()) < 1e-13, "dparams: {what}");

        // Truncated BPTT proper (chunk 1 gets no gradient from chunk 2) is a different, and
        // expected, gradient: the test above is not vacuous.
        let mut truncated = vec![0.0; p.params.len()];
        rnn.backward_accumulate(&r2, Some(steps(&p.dy, split, t, b, o)), Some(&p.dhn), p.dcn.as_deref(), &mut truncated).unwrap();
        rnn.backward_accumulate(&r1, Some(steps(&p.dy, 0, split, b, o)), None, None, &mut truncated).unwrap();
        assert!(max_error(&truncated, g.dparams.as_ref().unwrap()) > 1e-6, "{what}");
    }
}

#[test]
fn accumulate_adds_and_overwrite_replaces() {
    let cfg = RnnConfig::new(CellKind::Gru, 3, 4).bidirectional(true).build().unwrap();
    let shape = SeqShape::with_lengths(4, vec![2, 4]).unwrap();
    let p = Problem::random(&cfg, &shape, 5, 1.0);
    let rnn = Rnn::new(Reference, &cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    rnn.forward_training(&shape, &p.x, Some(&p.h0), None, &mut reserve).unwrap();
    let once = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), None).unwrap().dparams.unwrap();

    let mut acc = vec![1.0; p.params.len()];
    rnn.backward_accumulate(&reserve, Some(&p.dy), Some(&p.dhn), None, &mut acc).unwrap();
    rnn.backward_accumulate(&reserve, Some(&p.dy), Some(&p.dhn), None, &mut acc).unwrap();
    let expect: Vec<f64> = once.iter().map(|g| 1.0 + 2.0 * g).collect();
    assert!(max_error(&acc, &expect) < 1e-14);

    // Overwrite ignores what was in the buffer.
    let mut buf = vec![f64::NAN; p.params.len()];
    let plan = rnn.plan();
    use rnn_kernels::{Backend, BackwardInput, BackwardOutput};
    Reference
        .backward(
            plan,
            &reserve,
            BackwardInput { dy: Some(&p.dy), dhn: Some(&p.dhn), dcn: None },
            BackwardOutput { dx: None, dh0: None, dc0: None, dparams: Some(&mut buf) },
            GradMode::Overwrite,
        )
        .unwrap();
    assert_eq!(buf, once);
}

#[test]
fn results_are_bit_identical_run_to_run() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 4).num_layers(2).bidirectional(true).build().unwrap();
    let shape = SeqShape::with_lengths(5, vec![5, 2, 3]).unwrap();
    let p = Problem::random(&cfg, &shape, 8, 1.0);
    let run = || {
        let rnn = Rnn::new(Reference, &cfg, &p.params[..]).unwrap();
        let mut reserve = Default::default();
        let out = rnn.forward_training(&shape, &p.x, Some(&p.h0), p.c0.as_deref(), &mut reserve).unwrap();
        (out, rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), p.dcn.as_deref()).unwrap())
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
}
