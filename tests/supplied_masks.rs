//! Masks read back and supplied by the caller (`rnn_kernels::masks`: `required_sites`,
//! `SuppliedMasks`, `MaskStream::supplied`):
//!
//! - the masks of a call read back (`SuppliedMasks::drawn`) and supplied again give the same
//!   bits as the stream they came from, every output and gradient, on the f64 reference and on
//!   every CPU ISA, for a stack with every regulariser;
//! - masks of any pattern (none of them a Philox draw: whole rows dropped, none dropped, other
//!   densities than `p`): the CPU backend matches the reference and is the same for 1, 2 and 3
//!   threads; dropout between layers is the layers run one at a time with the masks applied by
//!   hand; the backward is exact for them (central differences on the reference);
//! - `get` returns what `insert` took; a missing or short mask is an error naming `masks`; a
//!   per-sequence kind with more than one step, or hits of the wrong length, are refused.

mod common;

use common::fd::{central_difference, rel_err, H, TOL};
use rnn_kernels::masks::{required_sites, MaskKind, MaskSite, MaskStream, SuppliedMasks};
use rnn_kernels::testkit::{Problem, SplitMix64};
use rnn_kernels::{CellKind, Cpu, Error, Isa, Reference, Rnn, RnnConfig, SeqShape};

fn everything() -> RnnConfig {
    RnnConfig::new(CellKind::Lstm, 5, 6)
        .num_layers(3)
        .bidirectional(true)
        .proj_size(4)
        .dropout(0.3)
        .zoneout(0.2)
        .zoneout_cell(0.15)
        .recurrent_dropout(0.25)
        .input_dropout(0.35)
        .build()
        .unwrap()
}

/// A training forward and backward of `p` on `backend` with the masks `masks`: `y`, `hn`, `cn`,
/// `dx`, `dh0`, `dc0`, `dparams`.
fn run<T: rnn_kernels::Float, B: rnn_kernels::Backend<T, Buf = [T]>>(p: &Problem<T>, backend: B, masks: &MaskStream) -> Vec<Vec<T>> {
    let rnn = Rnn::new(backend, &p.cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    let o = rnn.forward_training_masked(&p.shape, &p.x, Some(&p.h0), p.c0.as_deref(), masks.clone(), &mut reserve).unwrap();
    let g = rnn.backward(&reserve, Some(&p.dy), Some(&p.dhn), p.dcn.as_deref()).unwrap();
    vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap_or_default()]
}

/// Masks of every site `cfg` needs on `shape`, of no Philox draw: row `r` of each site has
/// density `(r mod 4) / 3` (none, a third, two thirds, all), the units chosen by SplitMix64.
fn patterned(cfg: &RnnConfig, shape: &SeqShape, seed: u64) -> SuppliedMasks {
    let mut rng = SplitMix64::new(seed);
    let mut m = SuppliedMasks::new();
    for need in required_sites(cfg, shape) {
        let mut hits = Vec::new();
        for _ in 0..need.steps {
            for r in 0..need.rows {
                let density = (r % 4) as f64 / 3.0;
                hits.extend((0..need.units).map(|_| rng.next_f64() < density));
            }
        }
        m.insert(need.site, need.steps, need.rows, need.units, &hits).unwrap();
    }
    m
}

fn bits<T: rnn_kernels::Float>(v: &[Vec<T>]) -> Vec<Vec<u64>> {
    v.iter().map(|t| t.iter().map(|x| x.to_f64().to_bits()).collect()).collect()
}

/// The masks of a call, read back and supplied again, are the call's: bit-identical outputs
/// and gradients, on the f64 reference and on every CPU ISA.
#[test]
fn drawn_masks_supplied_again_give_the_same_bits() {
    let shape = SeqShape::with_lengths(5, vec![5, 2, 4, 5]).unwrap();
    let cfg = everything();
    let stream = MaskStream::new(0xfeed, 3);
    let back = SuppliedMasks::drawn(&stream, &cfg, &shape).unwrap();
    assert_eq!(required_sites(&cfg, &shape).len(), 2 + 3 * 2 * 4, "dropout below 2 layers, and 4 kinds per layer-direction");
    let supplied = MaskStream::supplied(back);
    let p = Problem::<f64>::new(&cfg, &shape, 3, 1.0);
    assert_eq!(bits(&run(&p, Reference, &stream)), bits(&run(&p, Reference, &supplied)), "reference");
    let p = Problem::<f32>::new(&cfg, &shape, 3, 1.0);
    for isa in Isa::available() {
        let cpu = || Cpu::with_isa(isa, 2).unwrap();
        assert_eq!(bits(&run(&p, cpu(), &stream)), bits(&run(&p, cpu(), &supplied)), "{isa:?}");
    }
}

/// Masks of any pattern: every CPU ISA against the f64 reference with the same masks, the same
/// bits for 1, 2 and 3 threads, and other results than the drawn masks give.
#[test]
fn any_masks_cpu_matches_the_reference_and_any_thread_count() {
    let shape = SeqShape::with_lengths(6, vec![6, 3, 5, 6, 1, 6, 4]).unwrap();
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        let mut b = RnnConfig::new(cell, 7, 9)
            .num_layers(2)
            .bidirectional(true)
            .dropout(0.3)
            .zoneout(0.2)
            .recurrent_dropout(0.2)
            .input_dropout(0.3);
        if cell == CellKind::Lstm {
            b = b.zoneout_cell(0.1);
        }
        let cfg = b.build().unwrap();
        let masks = MaskStream::supplied(patterned(&cfg, &shape, 11));
        let p = Problem::<f32>::new(&cfg, &shape, 5, 2.0);
        let want = run(&p.to_f64(), Reference, &masks);
        assert!(
            rnn_kernels::testkit::case::max_error(&want[0], &run(&p.to_f64(), Reference, &p.masks())[0]) > 1e-3,
            "{cell}: the supplied masks changed nothing"
        );
        for isa in Isa::available() {
            let mut seen = Vec::new();
            for threads in 1..=3 {
                let got = run(&p, Cpu::with_isa(isa, threads).unwrap(), &masks);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let e = rnn_kernels::testkit::case::max_error(&g.iter().map(|&v| v as f64).collect::<Vec<_>>(), w);
                    assert!(e <= if i < 3 { 1e-5 } else { 1e-4 }, "{cell} {isa:?} {threads} threads: output {i} error {e:.2e}");
                }
                seen.push(bits(&got));
            }
            assert!(seen.windows(2).all(|w| w[0] == w[1]), "{cell} {isa:?}: thread counts differ");
        }
    }
}

/// Dropout between layers with supplied masks is the layers run one at a time, each output
/// multiplied by hand by 0 where the mask hits and `1/(1-p)` elsewhere.
#[test]
fn supplied_dropout_masks_are_applied_between_the_layers() {
    let p_drop = 0.4;
    let (t_len, b, i_w, h) = (4, 3, 5, 6);
    let shape = SeqShape::new(t_len, b).unwrap();
    let cfg = RnnConfig::new(CellKind::Gru, i_w, h).num_layers(2).dropout(p_drop).build().unwrap();
    let masks = patterned(&cfg, &shape, 5);
    let p = Problem::<f64>::new(&cfg, &shape, 9, 1.0);
    let got = run(&p, Reference, &MaskStream::supplied(masks.clone()));
    // Layer by layer: the layout's two halves are the two layers' tensors, in order.
    let l0 = RnnConfig::new(CellKind::Gru, i_w, h).build().unwrap();
    let l1 = RnnConfig::new(CellKind::Gru, h, h).build().unwrap();
    let n0 = rnn_kernels::ParamLayout::new(&l0).len();
    let y0 = Rnn::new(Reference, &l0, &p.params[..n0]).unwrap().forward(&shape, &p.x, Some(&p.h0[..b * h]), None).unwrap().y;
    let (_, _, units, hits) = masks.get(MaskSite::new(0, 0, MaskKind::LayerOutput).unwrap()).unwrap();
    assert_eq!(units, h);
    let dropped: Vec<f64> = y0.iter().zip(&hits).map(|(&v, &hit)| if hit { 0.0 } else { v * (1.0 / (1.0 - p_drop)) }).collect();
    let y1 = Rnn::new(Reference, &l1, &p.params[n0..]).unwrap().forward(&shape, &dropped, Some(&p.h0[b * h..]), None).unwrap().y;
    assert_eq!(got[0], y1);
}

/// The backward is exact for supplied masks: central differences of the f64 reference's loss
/// `Σ y·dy + Σ hn·dhn + Σ cn·dcn` in every coordinate of `x`, `h0`, `c0` and the parameters.
#[test]
fn supplied_masks_gradients_match_finite_differences() {
    let shape = SeqShape::with_lengths(3, vec![3, 1, 2]).unwrap();
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let mut b = RnnConfig::new(cell, 3, 4)
            .num_layers(2)
            .bidirectional(true)
            .dropout(0.3)
            .zoneout(0.3)
            .recurrent_dropout(0.3)
            .input_dropout(0.3);
        if cell == CellKind::Lstm {
            b = b.zoneout_cell(0.3);
        }
        let cfg = b.build().unwrap();
        let masks = MaskStream::supplied(patterned(&cfg, &shape, 21));
        let p = Problem::<f64>::new(&cfg, &shape, 13, 1.0);
        let g = run(&p, Reference, &masks);
        let loss = |q: &Problem<f64>| {
            let rnn = Rnn::new(Reference, &q.cfg, &q.params[..]).unwrap();
            let mut reserve = Default::default();
            let o = rnn.forward_training_masked(&q.shape, &q.x, Some(&q.h0), q.c0.as_deref(), masks.clone(), &mut reserve).unwrap();
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
            dot(&o.y, &q.dy) + dot(&o.hn, &q.dhn) + o.cn.as_deref().map_or(0.0, |cn| dot(cn, q.dcn.as_deref().unwrap()))
        };
        let mut worst = 0.0f64;
        let mut check = |what: &str, get: &dyn Fn(&mut Problem<f64>) -> &mut Vec<f64>, grad: &[f64]| {
            for (i, &a) in grad.iter().enumerate() {
                let mut f = |d: f64| {
                    let mut q = p.clone();
                    get(&mut q)[i] += d;
                    loss(&q)
                };
                let e = rel_err(a, central_difference(H, &mut f));
                assert!(e < TOL, "{cell} {what}[{i}]: analytic {a} error {e:.2e}");
                worst = worst.max(e);
            }
        };
        check("x", &|q| &mut q.x, &g[3]);
        check("h0", &|q| &mut q.h0, &g[4]);
        if cell == CellKind::Lstm {
            check("c0", &|q| q.c0.as_mut().unwrap(), &g[5]);
        }
        check("params", &|q| &mut q.params, &g[6]);
        eprintln!("{cell}: worst relative error {worst:.2e}");
    }
}

/// `get` returns what `insert` took; a missing or short mask is an error naming `masks`, before
/// anything is computed; bad `insert` arguments are refused by name.
#[test]
fn masks_are_checked() {
    let site = MaskSite::new(1, 1, MaskKind::ZoneoutH).unwrap();
    let hits: Vec<bool> = (0..2 * 3 * 37).map(|i| i % 3 == 0 || i % 7 == 0).collect();
    let mut m = SuppliedMasks::new();
    m.insert(site, 2, 3, 37, &hits).unwrap();
    assert_eq!(m.get(site), Some((2, 3, 37, hits.clone())));
    assert_eq!(m.get(MaskSite::new(1, 0, MaskKind::ZoneoutH).unwrap()), None);
    let e = m.insert(site, 2, 3, 36, &hits).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "hits"), "{e}");
    let e = m.insert(MaskSite::new(0, 0, MaskKind::RecurrentH).unwrap(), 2, 3, 37, &hits).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "steps"), "{e}");

    let cfg = RnnConfig::new(CellKind::Gru, 3, 8).num_layers(2).dropout(0.5).recurrent_dropout(0.2).build().unwrap();
    let shape = SeqShape::new(5, 4).unwrap();
    let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0);
    let full = patterned(&cfg, &shape, 3);
    for backend in ["reference", "cpu"] {
        let try_run = |masks: SuppliedMasks| -> Result<(), Error> {
            let mut reserve = Default::default();
            let m = MaskStream::supplied(masks);
            match backend {
                "reference" => {
                    Rnn::new(Reference, &cfg, &p.params[..])?.forward_training_masked(&shape, &p.x, None, None, m, &mut reserve)?
                }
                _ => Rnn::new(Cpu::with_threads(2)?, &cfg, &p.params[..])?.forward_training_masked(
                    &shape,
                    &p.x,
                    None,
                    None,
                    m,
                    &mut reserve,
                )?,
            };
            Ok(())
        };
        try_run(full.clone()).unwrap();
        // Without the second layer's recurrent mask.
        let mut missing = SuppliedMasks::new();
        for need in required_sites(&cfg, &shape).into_iter().filter(|n| n.site.layer() == 0) {
            let (s, r, u, h) = full.get(need.site).unwrap();
            missing.insert(need.site, s, r, u, &h).unwrap();
        }
        let e = try_run(missing).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "masks"), "{backend}: {e}");
        assert!(e.to_string().contains("RecurrentH") && e.to_string().contains("layer 1"), "{backend}: {e}");
        // The dropout mask one step short.
        let mut short = full.clone();
        let site = MaskSite::new(0, 0, MaskKind::LayerOutput).unwrap();
        let (s, r, u, h) = full.get(site).unwrap();
        short.insert(site, s - 1, r, u, &h[..(s - 1) * r * u]).unwrap();
        let e = try_run(short).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "masks"), "{backend}: {e}");
    }
    // Reading a supplied stream where it has no mask is an error too.
    let s = MaskStream::supplied(m);
    let t = rnn_kernels::philox::Threshold::new("p", 0.5).unwrap();
    let mut hit = [false; 37];
    s.fill_hits(site, 1, 2, t, &mut hit).unwrap();
    assert_eq!(&hit[..], &hits[(3 + 2) * 37..(3 + 2) * 37 + 37]);
    let e = s.fill_hits(site, 2, 0, t, &mut hit).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "masks"), "{e}");
}
