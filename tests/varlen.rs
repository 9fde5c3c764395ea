//! Packed-sequence semantics, checked as a property over random configurations: a batch with
//! lengths gives, for every sequence, exactly what that sequence gives alone, cut to its
//! length; and the parameter gradients of the batch are the sum of the sequences' gradients.

mod common;

use common::{describe, F64Problem, Problem};
use proptest::prelude::*;
use rnn_kernels::testkit::case::max_error;
use rnn_kernels::{CellKind, Reference, Rnn, RnnConfig, SeqShape};

/// Sequence `b` of a `[T, B, F]` tensor, first `len` steps, as `[len, 1, F]`.
fn column(v: &[f64], b: usize, len: usize, bsz: usize, f: usize) -> Vec<f64> {
    (0..len).flat_map(|t| v[(t * bsz + b) * f..(t * bsz + b + 1) * f].iter().copied()).collect()
}

/// Block `b` of each of the `L·D` blocks of a `[L·D, B, F]` tensor, as `[L·D, 1, F]`.
fn state(v: &[f64], b: usize, bsz: usize, f: usize) -> Vec<f64> {
    v.chunks_exact(bsz * f).flat_map(|blk| blk[b * f..(b + 1) * f].iter().copied()).collect()
}

fn config() -> impl Strategy<Value = RnnConfig> {
    (0usize..4, 1usize..5, 1usize..7, 1usize..4, any::<bool>(), any::<bool>(), 0usize..3).prop_map(|(c, i, h, l, bi, bias, p)| {
        let cell = CellKind::ALL[c];
        let proj = if cell == CellKind::Lstm && h > 1 { p.min(h - 1) } else { 0 };
        RnnConfig::new(cell, i, h).num_layers(l).bidirectional(bi).bias(bias).proj_size(proj).build().unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(rnn_kernels::testkit::proptest_cases(64)))]

    #[test]
    fn each_sequence_of_a_varlen_batch_equals_itself_alone(cfg in config(), t in 1usize..7, lens in prop::collection::vec(1usize..7, 1..5), seed in any::<u64>()) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let bsz = lengths.len();
        let shape = SeqShape::with_lengths(t, lengths.clone()).unwrap();
        let p = Problem::random(&cfg, &shape, seed, 1.0);
        let what = describe(&cfg, &shape);
        let rnn = Rnn::new(Reference, &cfg, &p.params[..]).unwrap();
        let mut reserve = Default::default();
        let out = rnn.forward_training(&shape, &p.x, Some(&p.h0), p.c0.as_deref(), &mut reserve).unwrap();
        let g = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), p.dcn.as_deref()).unwrap();

        let (i, o, ho, h) = (cfg.input_size(), cfg.output_size(), cfg.hidden_out_size(), cfg.hidden_size());
        let mut dparams_sum = vec![0.0; p.params.len()];
        for (b, &len) in lengths.iter().enumerate() {
            let s = SeqShape::new(len, 1).unwrap();
            let c0 = p.c0.as_ref().map(|c| state(c, b, bsz, h));
            let mut r = Default::default();
            let one = rnn.forward_training(&s, &column(&p.x, b, len, bsz, i), Some(&state(&p.h0, b, bsz, ho)), c0.as_deref(), &mut r).unwrap();
            prop_assert!(max_error(&column(&out.y, b, len, bsz, o), &one.y) < 1e-13, "y of {b}: {what}");
            prop_assert!(max_error(&state(&out.hn, b, bsz, ho), &one.hn) < 1e-13, "hn of {b}: {what}");
            if let Some(cn) = &out.cn {
                prop_assert!(max_error(&state(cn, b, bsz, h), one.cn.as_ref().unwrap()) < 1e-13, "cn of {b}: {what}");
            }
            // Past its length a sequence's output is exactly zero.
            for tt in len..t {
                prop_assert!(out.y[(tt * bsz + b) * o..(tt * bsz + b + 1) * o].iter().all(|&v| v == 0.0));
            }
            let dcn = p.dcn.as_ref().map(|d| state(d, b, bsz, h));
            let go = rnn.backward_accumulate(&r, Some(&column(&p.dy, b, len, bsz, o)), Some(&state(&p.dhn, b, bsz, ho)), dcn.as_deref(), &mut dparams_sum).unwrap();
            prop_assert!(max_error(&column(&g.dx, b, len, bsz, i), &go.dx) < 1e-12, "dx of {b}: {what}");
            prop_assert!(max_error(&state(&g.dh0, b, bsz, ho), &go.dh0) < 1e-12, "dh0 of {b}: {what}");
            if let Some(dc0) = &g.dc0 {
                prop_assert!(max_error(&state(dc0, b, bsz, h), go.dc0.as_ref().unwrap()) < 1e-12, "dc0 of {b}: {what}");
            }
        }
        prop_assert!(max_error(&dparams_sum, g.dparams.as_ref().unwrap()) < 1e-12, "dparams: {what}");
    }
}
