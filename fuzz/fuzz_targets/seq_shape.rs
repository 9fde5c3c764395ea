//! `SeqShape::new` and `SeqShape::with_lengths` with fuzzed steps, batch and lengths, the shapes
//! they give for a fuzzed small configuration, and a forward pass on the reference and the CPU
//! backends with buffers of the right or of fuzzed wrong lengths.
//!
//! Nothing may panic or abort. An accepted shape has lengths in `1..=steps`, one per sequence; a
//! forward pass succeeds exactly when every buffer has its shape's length, and then its outputs
//! are zero past each sequence's length, finite, and the same on both backends within the
//! tolerance of tests/cpu.rs for forward outputs (1e-5). Forward passes run only where the work
//! is small (a legitimately large call is not a finding).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rnnk_core::{CellKind, Cpu, Params, Reference, Rnn, RnnConfig, SeqShape};
use std::sync::OnceLock;

#[derive(Debug, Arbitrary)]
struct Input {
    steps: usize,
    batch: usize,
    small: bool,
    lengths: Option<Vec<i64>>,
    cell: u8,
    input_size: u8,
    hidden_size: u8,
    num_layers: u8,
    proj_size: u8,
    bidirectional: bool,
    /// Added to the length of x, h0 and c0 (0: the right length).
    x_delta: i8,
    h0: Option<i8>,
    c0: Option<i8>,
    seed: u64,
}

/// The CPU backend with two threads, made once (a thread pool per input would dominate the run).
fn cpu() -> &'static Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(|| Cpu::with_threads(2).expect("the CPU backend"))
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn resized(n: usize, delta: i8) -> usize {
    n.saturating_add_signed(delta as isize)
}

fuzz_target!(|input: Input| {
    let (steps, batch) = if input.small { (input.steps % 9, input.batch % 5) } else { (input.steps, input.batch) };
    let shape = match &input.lengths {
        None => SeqShape::new(steps, batch),
        Some(l) => {
            // Negative lengths never reach SeqShape from a caller that converts them checked.
            let Ok(l) = l.iter().map(|&n| usize::try_from(n)).collect::<Result<Vec<_>, _>>() else { return };
            SeqShape::with_lengths(steps, l)
        }
    };
    let Ok(shape) = shape else { return };
    let (t, b) = (shape.steps(), shape.batch());
    assert!(t >= 1 && b >= 1);
    match (shape.lengths(), &input.lengths) {
        (Some(l), Some(given)) => {
            assert_eq!(l.len(), given.len());
            assert_eq!(b, l.len());
            assert!(l.iter().all(|&n| (1..=t).contains(&n)), "lengths {l:?}, steps {t}");
            assert_eq!(shape.is_varlen(), l.iter().any(|&n| n != t));
        }
        (None, None) => assert!(!shape.is_varlen() && shape.length(b - 1) == t && b == batch),
        _ => panic!("lengths given {:?}, kept {:?}", input.lengths, shape.lengths()),
    }
    let cell = CellKind::ALL[input.cell as usize % CellKind::ALL.len()];
    let hidden = 1 + input.hidden_size as usize % 8;
    let proj = if cell == CellKind::Lstm { input.proj_size as usize % hidden } else { 0 };
    let cfg = RnnConfig::new(cell, 1 + input.input_size as usize % 8, hidden)
        .num_layers(1 + input.num_layers as usize % 3)
        .bidirectional(input.bidirectional)
        .proj_size(proj)
        .build()
        .expect("a small valid configuration");
    // The shapes, in u128 so that a product that does not fit shows.
    let count = |s: [usize; 3]| s.iter().fold(1u128, |acc, &d| acc.saturating_mul(d as u128));
    let (xs, ys, hs, cs) = (count(shape.x_shape(&cfg)), count(shape.y_shape(&cfg)), count(shape.h_shape(&cfg)), count(shape.c_shape(&cfg)));
    let tb = (t as u128).saturating_mul(b as u128);
    assert_eq!(xs, tb.saturating_mul(cfg.input_size() as u128));
    assert_eq!(ys, tb.saturating_mul(cfg.output_size() as u128));
    // Run only small calls: the work and the outputs are bounded by t·b·(layers, sizes ≤ 16).
    if (t as u128) * (b as u128) > 4096 {
        return;
    }
    let (xs, hs, cs) = (xs as usize, hs as usize, cs as usize);
    let x_len = resized(xs, input.x_delta);
    let h0_len = input.h0.map(|d| resized(hs, d));
    let c0_len = input.c0.map(|d| resized(cs, d));
    let right = x_len == xs && h0_len.is_none_or(|n| n == hs) && c0_len.is_none_or(|n| n == cs && cell == CellKind::Lstm);
    let x = values(x_len, input.seed);
    let h0 = h0_len.map(|n| values(n, input.seed ^ 1));
    let c0 = c0_len.map(|n| values(n, input.seed ^ 2));
    let params = Params::<f32>::init_uniform(&cfg, input.seed).expect("a small configuration's parameters");
    let reference = Rnn::from_params(Reference, &params).expect("planning on the reference backend");
    let cpu = Rnn::from_params(cpu().clone(), &params).expect("planning on the CPU backend");
    let r = reference.forward(&shape, &x, h0.as_deref(), c0.as_deref());
    let c = cpu.forward(&shape, &x, h0.as_deref(), c0.as_deref());
    assert_eq!(r.is_ok(), right, "reference: {r:?}");
    assert_eq!(c.is_ok(), right, "cpu: {c:?}");
    let (Ok(r), Ok(c)) = (r, c) else { return };
    let f = cfg.output_size();
    for (name, out) in [("reference", &r), ("cpu", &c)] {
        assert!(out.y.iter().chain(&out.hn).chain(out.cn.iter().flatten()).all(|v| v.is_finite()), "{name}: not finite");
        for bi in 0..b {
            for ti in shape.length(bi)..t {
                let row = &out.y[(ti * b + bi) * f..][..f];
                assert!(row.iter().all(|&v| v == 0.0), "{name}: y[{ti}, {bi}] = {row:?} past length {}", shape.length(bi));
            }
        }
    }
    let err = |a: &[f32], e: &[f32]| a.iter().zip(e).map(|(a, e)| (a - e).abs() as f64 / (e.abs() as f64).max(1.0)).fold(0.0, f64::max);
    assert!(err(&c.y, &r.y) <= 1e-5, "y: cpu against reference {}", err(&c.y, &r.y));
    assert!(err(&c.hn, &r.hn) <= 1e-5, "hn: cpu against reference {}", err(&c.hn, &r.hn));
});
