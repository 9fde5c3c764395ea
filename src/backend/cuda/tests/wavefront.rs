//! The layer wavefront (`driver/wavefront.rs`) on the host
//! emulation, which runs the
//! two streams' work serially in issue order: it checks the chunk bookkeeping (projection and
//! `dX` rows, step ranges, the state and gradients carried between chunks, h0/hn/c0/cn,
//! saved activations, variable lengths, 16-bit storage, dropout between layers a chunk at a
//! time), not the concurrency. A wavefront run
//! must equal the layer-by-layer run bit for bit here: the same kernels on the same values, and
//! the host sgemm computes each row of `C` on its own, so a chunk's GEMM (`K·B` rows) gives the
//! rows the whole-sequence one gives. cuBLAS need not (another algorithm for another `M`):
//! tests/cuda.rs compares on the GPU with a rounding tolerance.

use super::super::driver::wavefront_chunk;
use super::super::emulation::Emulation;
use super::super::kernels::KernelId;
use super::*;
use crate::CellKind;

/// Everything one forward (training, then inference) and backward of a problem give on `exec`
/// (both passes with its switches), as bits: y, hn, cn, the saved activations, dx, dh0, dc0,
/// dparams.
fn run<T: Element>(cfg: &RnnConfig, shape: &SeqShape, seed: u64, exec: &Exec<'_>) -> Vec<Vec<u64>> {
    let p = Problem::<T>::new(cfg, shape, seed, 2.0);
    let (trained, reserve) = p.train_on(exec);
    let mut out: Vec<Vec<u64>> = trained.iter().map(|v| bits(v)).collect();
    out.extend(reserve.saved_bits().into_iter().map(|v| v.into_iter().map(u64::from).collect()));
    // Backward from the saved activations, with the same switches.
    out.extend(p.backward_on(exec, &reserve).iter().map(|v| bits(v)));
    out
}

/// The wavefront with chunk `k` against the layer-by-layer order, bit for bit. With dropout
/// between layers, the wavefront also drops chunk by chunk, each layer's on its stream: one
/// dropout launch per chunk and layer but the last forward (on the layer's stream), and per chunk
/// and layer above the first backward (on that layer's stream, the factors of the layer below),
/// where the layer-by-layer order drops each layer's whole output (and `dX`) once, on stream 0.
pub(super) fn check<T: Element>(cfg: &RnnConfig, shape: &SeqShape, k: usize, seed: u64) {
    let (on, off) = (Emulation::default(), Emulation::default());
    let wave = on.exec().with_storage(T::DTYPE).with_wavefront(true).with_wavefront_chunk(k);
    let chunks = shape.steps().div_ceil(k.min(shape.steps()));
    assert_eq!(wavefront_chunk(&wave, cfg, shape), Some(k.min(shape.steps())), "the wavefront must be taken: {cfg:?}");
    let layer_by_layer = off.exec().with_storage(T::DTYPE).with_wavefront(false);
    assert_eq!(wavefront_chunk(&layer_by_layer, cfg, shape), None);
    let (got, want) = (run::<T>(cfg, shape, seed, &wave), run::<T>(cfg, shape, seed, &layer_by_layer));
    let names = ["y", "hn", "cn"];
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let name = names.get(i).copied().unwrap_or(if i + 4 >= got.len() { "a gradient" } else { "a saved activation" });
        assert!(
            g == w,
            "{:?} {cfg:?} T={} lengths {:?}, K={k} ({chunks} chunks): {name} (output {i}) differs",
            T::DTYPE,
            shape.steps(),
            shape.lengths()
        );
    }
    let dropouts = |e: &Emulation, si: usize| e.issued.borrow().iter().filter(|&&(s, kk)| s == si && kk == Some(KernelId::Dropout)).count();
    let nl = cfg.num_layers();
    let (wave_launches, layer_launches) = match cfg.dropout() {
        // Forward: layers 0..L-1 on stream l mod 2; backward: layers 1..L on stream l mod 2, or
        // with layer norm (no backward wavefront) layer by layer on stream 0.
        Some(_) => {
            let forward = |si: usize| (0..nl - 1).filter(|l| l % 2 == si).count() * chunks;
            let backward = |si: usize| match cfg.layer_norm() {
                true => usize::from(si == 0) * (nl - 1),
                false => (1..nl).filter(|l| l % 2 == si).count() * chunks,
            };
            ([forward(0) + backward(0), forward(1) + backward(1)], [2 * (nl - 1), 0])
        }
        None => ([0, 0], [0, 0]),
    };
    assert_eq!([dropouts(&on, 0), dropouts(&on, 1)], wave_launches, "{cfg:?} K={k}: the wavefront's dropout launches on streams [0, 1]");
    assert_eq!([dropouts(&off, 0), dropouts(&off, 1)], layer_launches, "{cfg:?}: the layer-by-layer dropout launches on streams [0, 1]");
}

fn stack(cell: CellKind, layers: usize, proj: usize, bias: bool) -> RnnConfig {
    RnnConfig::new(cell, 5, 7).num_layers(layers).proj_size(proj).bias(bias).build().unwrap()
}

/// Every cell (LSTM with and without projection), 2–4 layers, T a multiple of K and not, one
/// step per chunk, T < K (one chunk), variable lengths (rows ending inside a chunk, at its
/// edge, and full), f32; forward and backward.
#[test]
fn emulated_wavefront_matches_layer_by_layer() {
    let cells = [(CellKind::Lstm, 0), (CellKind::Lstm, 3), (CellKind::Gru, 0), (CellKind::RnnTanh, 0), (CellKind::RnnRelu, 0)];
    let mut seed = 1;
    for (c, &(cell, proj)) in cells.iter().enumerate() {
        for layers in 2..=4 {
            let cfg = stack(cell, layers, proj, (c + layers) % 2 == 0);
            for (t, k) in [(7, 3), (8, 2), (5, 1), (4, 9), (9, 4)] {
                let lengths: Vec<usize> = (0..4).map(|b| t - (b * 3) % t).collect();
                for shape in [SeqShape::new(t, 3).unwrap(), SeqShape::with_lengths(t, lengths).unwrap()] {
                    seed += 1;
                    check::<f32>(&cfg, &shape, k, seed);
                }
            }
        }
    }
}

/// Dropout between layers inside the wavefront: each layer's output dropped a chunk at a time
/// forward, each `dX` above layer 0 backward, with the factors of their absolute steps. Every
/// cell (LSTM with and without projection), 2–4 layers, `p` 0.3 and 0.7, T a multiple of K and
/// not, one step per chunk, T < K, variable lengths, f32; the same bits as the layer-by-layer
/// order, which drops whole sequences (`check` also counts the per-chunk launches: a wavefront
/// that fell back to the layer-by-layer order fails it).
#[test]
fn emulated_wavefront_with_dropout_matches_layer_by_layer() {
    let cells = [(CellKind::Lstm, 0), (CellKind::Lstm, 3), (CellKind::Gru, 0), (CellKind::RnnTanh, 0), (CellKind::RnnRelu, 0)];
    let mut seed = 100;
    for (c, &(cell, proj)) in cells.iter().enumerate() {
        for layers in 2..=4 {
            let p = [0.3, 0.7][(c + layers) % 2];
            let cfg = RnnConfig::new(cell, 5, 7).num_layers(layers).proj_size(proj).bias(c % 2 == 0).dropout(p).build().unwrap();
            for (t, k) in [(7, 3), (8, 2), (5, 1), (4, 9), (9, 4)] {
                let lengths: Vec<usize> = (0..4).map(|b| t - (b * 3) % t).collect();
                for shape in [SeqShape::new(t, 3).unwrap(), SeqShape::with_lengths(t, lengths).unwrap()] {
                    seed += 1;
                    check::<f32>(&cfg, &shape, k, seed);
                }
            }
        }
    }
}

/// f16 and bf16 storage: the same bookkeeping with 16-bit outputs, states and inputs, without
/// and with dropout between layers.
#[test]
fn emulated_wavefront_matches_layer_by_layer_half() {
    for (c, (cell, proj)) in [(CellKind::Lstm, 2), (CellKind::Gru, 0), (CellKind::RnnRelu, 0)].into_iter().enumerate() {
        for dropout in [0.0, 0.4] {
            let cfg = RnnConfig::new(cell, 5, 7).num_layers(3).proj_size(proj).dropout(dropout).build().unwrap();
            let shape = SeqShape::with_lengths(7, vec![7, 3, 5, 6]).unwrap();
            check::<half::f16>(&cfg, &shape, 3, 40 + c as u64);
            check::<half::bf16>(&cfg, &shape, 2, 50 + c as u64);
        }
    }
}

/// Where the wavefront does not apply, the driver says so: bidirectional stacks, one layer,
/// the switch off; the automatic chunk is `max(ceil(T/16), ceil(512/B))`, at most `T`.
#[test]
fn wavefront_chunk_choice() {
    let emulation = Emulation::default();
    let call = emulation.exec();
    let uni = stack(CellKind::Gru, 3, 0, true);
    let bi = RnnConfig::new(CellKind::Gru, 5, 7).num_layers(3).bidirectional(true).build().unwrap();
    let one = stack(CellKind::Gru, 1, 0, true);
    let s = |t, b| SeqShape::new(t, b).unwrap();
    assert_eq!(wavefront_chunk(&call, &bi, &s(100, 4)), None);
    assert_eq!(wavefront_chunk(&call, &one, &s(100, 4)), None);
    assert_eq!(wavefront_chunk(&call.with_wavefront(false), &uni, &s(100, 4)), None);
    let call = emulation.exec();
    assert_eq!(wavefront_chunk(&call, &uni, &s(1500, 4)), Some(128));
    assert_eq!(wavefront_chunk(&call, &uni, &s(1600, 64)), Some(100));
    assert_eq!(wavefront_chunk(&call, &uni, &s(50, 2)), Some(50));
    assert_eq!(wavefront_chunk(&call.with_wavefront_chunk(7), &uni, &s(50, 2)), Some(7));
}

/// A stack whose layers take the persistent kernel keeps the layer-by-layer order (and its
/// results); the emulation runs kernels/persistent_cell.cu for GRU and RNN layers.
#[test]
fn emulated_wavefront_leaves_persistent_stacks_alone() {
    let cfg = stack(CellKind::Gru, 3, 0, true);
    let shape = SeqShape::with_lengths(6, vec![6, 2]).unwrap();
    let emulation = Emulation::default();
    let on = emulation.exec().with_persistent(true).with_persistent_required(true).with_wavefront_chunk(2);
    let off = emulation.exec().with_persistent(true).with_persistent_required(true).with_wavefront(false);
    assert!(run::<f32>(&cfg, &shape, 9, &on) == run::<f32>(&cfg, &shape, 9, &off));
}

/// Each layer's step kernels run on its own stream (`l mod 2`), forward and backward: the
/// emulation runs every stream's work in issue order, so a kernel put on the other stream gives
/// the same results here but races with its layer's GEMMs on a device (the GRU backward step
/// was once launched on stream `d` = 0 instead of the layer's stream `si`). 3 layers: layers 0
/// and 2 on stream 0, layer 1 on stream 1; `run` does a training forward, an inference forward
/// (`T` steps each per layer) and a backward (`T` steps per layer).
#[test]
fn emulated_wavefront_step_kernels_on_their_layers_stream() {
    use KernelId as K;
    let cells = [
        (CellKind::Lstm, 0, [K::LstmForwardStep, K::LstmBackwardStep]),
        (CellKind::Lstm, 3, [K::LstmProjectionFinish, K::LstmProjectionBackwardPrepare]),
        (CellKind::Gru, 0, [K::GruForwardStep, K::GruBackwardStep]),
        (CellKind::RnnTanh, 0, [K::RnnTanhForwardStep, K::RnnTanhBackwardStep]),
        (CellKind::RnnRelu, 0, [K::RnnReluForwardStep, K::RnnReluBackwardStep]),
    ];
    let t = 6;
    for (cell, proj, [fwd, bwd]) in cells {
        let cfg = stack(cell, 3, proj, true);
        let shape = SeqShape::with_lengths(t, vec![6, 4, 1]).unwrap();
        let emulation = Emulation::default();
        run::<f32>(&cfg, &shape, 3, &emulation.exec().with_wavefront(true).with_wavefront_chunk(2));
        let issued = emulation.issued.borrow();
        let count = |k: K, si: usize| issued.iter().filter(|&&(s, kk)| s == si && kk == Some(k)).count();
        for (k, per_layer) in [(fwd, 2 * t), (bwd, t)] {
            assert_eq!(
                [count(k, 0), count(k, 1)],
                [2 * per_layer, per_layer],
                "{cell:?} proj {proj}: {k:?} launches on streams [0, 1] (layers 0 and 2 on stream 0, layer 1 on stream 1)"
            );
        }
    }
}

/// Fails (with `panics`, panics at) every kernel and GEMM of a training forward and then of a
/// backward of `cfg` in turn, each on a fresh emulation, and checks that stream 1 was joined
/// into stream 0 when the pass returned or unwound: the pass's temporaries are freed on stream
/// 0 then, and a caller's stream (the C ABI's device calls) waits for stream 0 only, so an
/// unjoined stream 1 could still be using them. Returns the numbers of forward and backward
/// failures injected.
fn inject_failures(cfg: &RnnConfig, panics: bool) -> (usize, usize) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let shape = SeqShape::with_lengths(5, vec![5, 3]).unwrap();
    let p = Problem::<f32>::new(cfg, &shape, 7, 0.5);
    let (mut fwd_failures, mut bwd_failures) = (0, 0);
    for fail in 0.. {
        let emulation = Emulation::default();
        emulation.fail_at.set(Some(fail));
        emulation.fail_panics.set(panics);
        let exec = emulation.exec().with_wavefront_chunk(2);
        let mut reserve = CudaReserve::default();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut y = nans::<f32>(p.dy.len());
            let io = ForwardViews { x: view(&p.x), h0: None, c0: None, y: view_mut(&mut y), hn: None, cn: None };
            forward(&exec, p.weights(), &shape, io, Some(&mut reserve))
        }));
        assert!(!emulation.forked.get(), "{cfg:?}: forward returned ({r:?}) with stream 1 not joined into stream 0 (failure {fail})");
        if !matches!(r, Ok(Ok(()))) {
            fwd_failures += 1;
            continue;
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            let (mut dx, mut dp) = (nans::<f32>(p.x.len()), nans::<f32>(p.layout.len()));
            let g = BackwardViews {
                dhn: None,
                dcn: None,
                dx: Some(view_mut(&mut dx)),
                dparams: Some(view_mut(&mut dp)),
                ..p.incoming(GradMode::Overwrite)
            };
            backward(&exec, p.weights(), &shape, &SavedViews::new(&reserve), g)
        }));
        assert!(!emulation.forked.get(), "{cfg:?}: backward returned ({r:?}) with stream 1 not joined into stream 0 (failure {fail})");
        if matches!(r, Ok(Ok(()))) {
            break;
        }
        bwd_failures += 1;
    }
    (fwd_failures, bwd_failures)
}

/// A pass that fails after forking to stream 1 still joins stream 1 into stream 0 before it
/// returns, on a bidirectional stack (both directions forked per layer) and on a
/// unidirectional one (the wavefront).
#[test]
fn emulated_failing_pass_joins_stream_1() {
    let bi = RnnConfig::new(CellKind::Gru, 5, 7).num_layers(2).bidirectional(true).build().unwrap();
    for cfg in [bi, stack(CellKind::Lstm, 3, 0, true)] {
        let (fwd, bwd) = inject_failures(&cfg, false);
        assert!(fwd > 10 && bwd > 10, "{cfg:?}: {fwd} forward and {bwd} backward failures injected");
    }
}

/// The same with panics (a bug in the driver, e.g. a view outside its buffer) instead of
/// errors: while the panic unwinds, stream 1 is joined into stream 0 before the pass's
/// temporaries are dropped (a guard in `joined_on_error`).
#[test]
fn emulated_panicking_pass_joins_stream_1() {
    let cfg = RnnConfig::new(CellKind::Gru, 5, 7).num_layers(2).bidirectional(true).build().unwrap();
    // Quiet: dozens of injected panics would each print a message and a backtrace.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (fwd, bwd) = inject_failures(&cfg, true);
    std::panic::set_hook(hook);
    assert!(fwd > 10 && bwd > 10, "{fwd} forward and {bwd} backward panics injected");
}

/// A bidirectional stack (layer by layer, no wavefront): each direction's step kernels, and
/// its persistent kernels where they run, on its own stream (`d`), forward and backward.
#[test]
fn emulated_directions_on_their_streams() {
    use KernelId as K;
    let cells = [
        (CellKind::Lstm, 3, [K::LstmForwardStep, K::LstmBackwardStep], None),
        (CellKind::Gru, 0, [K::GruForwardStep, K::GruBackwardStep], Some([K::PersistentGruForward, K::PersistentGruBackward])),
        (
            CellKind::RnnTanh,
            0,
            [K::RnnTanhForwardStep, K::RnnTanhBackwardStep],
            Some([K::PersistentRnnTanhForward, K::PersistentRnnTanhBackward]),
        ),
    ];
    let t = 5;
    for (cell, proj, steps, persistent) in cells {
        let cfg = RnnConfig::new(cell, 5, 7).num_layers(2).bidirectional(true).proj_size(proj).build().unwrap();
        let shape = SeqShape::with_lengths(t, vec![5, 2, 4]).unwrap();
        let runs =
            [(false, steps, [2 * t, t]), (true, persistent.unwrap_or(steps), if persistent.is_some() { [2, 1] } else { [2 * t, t] })];
        for (on, [fwd, bwd], [fwd_n, bwd_n]) in runs {
            let emulation = Emulation::default();
            run::<f32>(&cfg, &shape, 4, &emulation.exec().with_persistent(on));
            let issued = emulation.issued.borrow();
            let count = |k: K, si: usize| issued.iter().filter(|&&(s, kk)| s == si && kk == Some(k)).count();
            for (k, per_layer) in [(fwd, fwd_n), (bwd, bwd_n)] {
                // Two layers, one direction per stream.
                assert_eq!([count(k, 0), count(k, 1)], [2 * per_layer, 2 * per_layer], "{cell:?} persistent {on}: {k:?} on streams [0, 1]");
            }
        }
    }
}
