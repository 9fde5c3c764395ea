//! Masks supplied by the caller (`MaskStream::supplied`) on the emulated driver: uploaded by
//! `driver/masks.rs` and read by kernels/dropout.cu and kernels/zoneout.cu instead of drawing.
//!
//! - A call's own masks read back (`SuppliedMasks::drawn`) and supplied again give the drawn
//!   call's bits, forward and backward, for every regulariser (dropout between layers,
//!   recurrent and input dropout, zoneout of `h` and `c`), on the layer wavefront and layer by
//!   layer, in f32 and bf16 storage.
//! - Masks no generator drew (rows of different densities, all-hit and no-hit rows), with more
//!   steps, rows and units than the call reads, match the f64 reference given the same masks,
//!   also for a stream continuing a sequence (`from_step`: the bits of its own steps).
//! - Masks that do not cover the call are an error naming `masks`, and a kernel given a supplied
//!   stream whose bits were not uploaded refuses rather than drawing.

use super::super::driver::{forward, CudaReserve, ForwardViews};
use super::super::emulation::Emulation;
use super::{bits, nans, up, view, view_mut, Problem, WithPaths};
use crate::backend::host::dropout::Dropout;
use crate::masks::{required_sites, MaskStream, SuppliedMasks};
use crate::testkit::case::max_error;
use crate::testkit::SplitMix64;
use crate::{bf16, CellKind, Direction, Merge, RnnConfig, SeqShape};

/// Configurations with every regulariser, each where it applies: 3-layer stacks with dropout
/// between layers, projection, bidirectional (concatenated and summed), reverse-only, Cho's
/// GRU, layer norm, batch-first.
fn configs() -> Vec<RnnConfig> {
    let base = |cell| RnnConfig::new(cell, 11, 23).num_layers(2);
    vec![
        RnnConfig::new(CellKind::Lstm, 11, 23)
            .num_layers(3)
            .dropout(0.3)
            .recurrent_dropout(0.3)
            .input_dropout(0.3)
            .zoneout(0.2)
            .zoneout_cell(0.4)
            .build()
            .unwrap(),
        base(CellKind::Lstm).proj_size(7).dropout(0.5).zoneout(0.3).zoneout_cell(0.3).build().unwrap(),
        base(CellKind::Lstm).layer_norm(true).bidirectional(true).recurrent_dropout(0.3).zoneout(0.3).build().unwrap(),
        base(CellKind::Gru).bidirectional(true).dropout(0.3).recurrent_dropout(0.5).input_dropout(0.2).zoneout(0.4).build().unwrap(),
        base(CellKind::Gru).linear_before_reset(false).input_dropout(0.3).zoneout(0.3).dropout(0.4).build().unwrap(),
        base(CellKind::RnnTanh).direction(Direction::Reverse).recurrent_dropout(0.3).zoneout(0.3).build().unwrap(),
        base(CellKind::RnnRelu).bidirectional(true).merge(Merge::Sum).dropout(0.3).input_dropout(0.3).build().unwrap(),
        base(CellKind::Lstm).batch_first(true).dropout(0.3).recurrent_dropout(0.3).zoneout_cell(0.2).build().unwrap(),
    ]
}

/// Variable lengths: 6 sequences of 8 down to 3 steps.
fn shape() -> SeqShape {
    SeqShape::with_lengths(8, (0..6).map(|b| 8 - b).collect()).unwrap()
}

/// Masks for every site `cfg` reads over `shape` when its stream starts at step `first`, drawn
/// from no generator the library has: row `r`'s hits at density `(r mod 4) / 3` (no hits, a
/// third, two thirds, all), with `extra` more steps, rows and units than needed, so that the
/// kernels' strides are not the call's.
fn patterned(cfg: &RnnConfig, shape: &SeqShape, first: usize, extra: usize, seed: u64) -> SuppliedMasks {
    let mut rng = SplitMix64::new(seed);
    let mut m = SuppliedMasks::new();
    for need in required_sites(cfg, shape) {
        let steps = if need.site.kind().per_sequence() { 1 } else { need.steps + first + extra };
        let (rows, units) = (need.rows + extra, need.units + extra);
        let mut hits = Vec::with_capacity(steps * rows * units);
        for _ in 0..steps {
            for r in 0..rows {
                let density = (r % 4) as f64 / 3.0;
                hits.extend((0..units).map(|_| rng.next_f64() < density));
            }
        }
        m.insert(need.site, steps, rows, units, &hits).unwrap();
    }
    m
}

/// A drawn call's masks, read back and supplied again, give its bits: every output and gradient,
/// layer by layer and on the layer wavefront (chunks of 3 steps), f32 and bf16 storage.
#[test]
fn drawn_masks_supplied_again_give_the_drawn_bits() {
    let emulation = Emulation::default();
    for cfg in &configs() {
        let shape = shape();
        let p = Problem::<f32>::new(cfg, &shape, 5, 3.0);
        let drawn = p.masks();
        let supplied = MaskStream::supplied(SuppliedMasks::drawn(&drawn, cfg, &shape).unwrap());
        let again = Problem::<f32>::new(cfg, &shape, 5, 3.0).with_masks(supplied.clone());
        for k in [0, 3] {
            let exec = emulation.exec().with_wavefront_chunk(k);
            let (want, want_acc) = p.run_on(&exec, &exec);
            let (got, got_acc) = again.run_on(&exec, &exec);
            for (i, name) in crate::testkit::OUTPUTS.iter().enumerate() {
                assert_eq!(bits(&got[i]), bits(&want[i]), "{cfg:?}, chunk {k}: {name}");
            }
            assert_eq!(bits(&got_acc), bits(&want_acc), "{cfg:?}, chunk {k}: Accumulate");
        }
        // bf16 storage: the same masks reach the 16-bit entries.
        let exec = emulation.exec().with_storage(crate::element::Dtype::BF16);
        let p16 = Problem::<bf16>::new(cfg, &shape, 5, 3.0);
        let again16 = Problem::<bf16>::new(cfg, &shape, 5, 3.0).with_masks(supplied);
        let ((want, _), (got, _)) = (p16.run_on(&exec, &exec), again16.run_on(&exec, &exec));
        for (i, name) in crate::testkit::OUTPUTS.iter().enumerate() {
            assert_eq!(bits(&got[i]), bits(&want[i]), "{cfg:?}, bf16: {name}");
        }
    }
}

/// Patterned masks with wider extents than the call's, supplied from step 0 and to a stream
/// continuing a sequence at step 2: the emulated driver against the f64 reference given the
/// same stream (outputs at 1e-5, gradients at 1e-4, as the drawn masks' tests), and the masks
/// change the results (against the drawn ones).
#[test]
fn patterned_masks_match_the_reference() {
    let emulation = Emulation::default();
    for (n, cfg) in configs().iter().enumerate() {
        let shape = shape();
        for first in [0, 2] {
            let m = MaskStream::supplied(patterned(cfg, &shape, first, 3, 17 + n as u64)).from_step(first).unwrap();
            let p = Problem::<f32>::new(cfg, &shape, 9, 3.0).with_masks(m.clone());
            let want = p.to_f64().run_masked(crate::backend::Reference, m);
            for k in [0, 3] {
                let exec = emulation.exec().with_wavefront_chunk(k);
                let (got, _) = p.run_on(&exec, &exec);
                for (i, name) in crate::testkit::OUTPUTS.iter().enumerate() {
                    let err = max_error(&up(&got[i]), &want[i]);
                    let tol = if i < 3 { 1e-5 } else { 1e-4 };
                    assert!(err <= tol, "{cfg:?}, first step {first}, chunk {k}: {name} error {err:.3e} > {tol:e}");
                }
            }
            let drawn = p.to_f64().run_masked(crate::backend::Reference, p.p.masks());
            assert!(max_error(&drawn[0], &want[0]) > 1e-3, "{cfg:?}: the supplied masks changed nothing");
        }
    }
}

/// Supplied masks that miss a site, or hold fewer steps, rows or units than the call reads,
/// are an error naming `masks` before any work; a kernel given a supplied stream whose bits
/// were not uploaded is an error naming `masks` (it never draws them from the `[0, 0]` key).
#[test]
fn masks_that_do_not_cover_the_call_are_errors_naming_masks() {
    let cfg = RnnConfig::new(CellKind::Lstm, 5, 6).num_layers(2).dropout(0.3).zoneout(0.3).build().unwrap();
    let shape = SeqShape::new(4, 3).unwrap();
    let shorter = SeqShape::new(3, 3).unwrap();
    let narrower = SeqShape::new(4, 2).unwrap();
    let emulation = Emulation::default();
    let exec = emulation.exec();
    for (what, masks) in [
        ("no masks", SuppliedMasks::new()),
        ("fewer steps", patterned(&cfg, &shorter, 0, 0, 1)),
        ("fewer rows", patterned(&cfg, &narrower, 0, 0, 2)),
        ("a stream from step 1", patterned(&cfg, &shape, 0, 0, 3)),
    ] {
        let stream = MaskStream::supplied(masks);
        let stream = if what == "a stream from step 1" { stream.from_step(1).unwrap() } else { stream };
        let p = Problem::<f32>::new(&cfg, &shape, 1, 1.0).with_masks(stream);
        let mut reserve = CudaReserve::default();
        reserve.dropout = p.dropout();
        reserve.zoneout = crate::backend::host::zoneout::Zoneout::for_pass(&cfg, &shape, true, Some(&p.masks())).unwrap();
        let mut y = nans::<f32>(p.dy.len());
        let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
        let e = forward(&exec, p.weights(), &shape, io, Some(&mut reserve)).unwrap_err().to_string();
        assert!(e.contains("`masks`"), "{what}: {e}");
        assert!(y.iter().all(|v| v.is_nan()), "{what}: work was done before the error");
    }
    // The kernels' guard: a supplied stream, nothing uploaded.
    let d = Dropout::new(0.3, Some(&MaskStream::supplied(patterned(&cfg, &shape, 0, 0, 4)))).unwrap();
    let mut data = vec![1.0f32; 4 * 3 * 6];
    let e = exec.dropout(0, view_mut(&mut data), 0..4, 3, 6, &d, 0).unwrap_err().to_string();
    assert!(e.contains("`masks`") && e.contains("uploaded"), "{e}");
    assert!(data.iter().all(|&v| v == 1.0), "the data changed");
}
