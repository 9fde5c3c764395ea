//! The layer wavefront of driver.rs (`forward_wavefront`, `backward_wavefront`) on the host
//! emulation, which runs the
//! two streams' work serially in issue order: it checks the chunk bookkeeping (projection and
//! `dX` rows, step ranges, the state and gradients carried between chunks, h0/hn/c0/cn,
//! saved activations, variable lengths, 16-bit storage), not the concurrency. A wavefront run
//! must equal the layer-by-layer run bit for bit here: the same kernels on the same values, and
//! the host sgemm computes each row of `C` on its own, so a chunk's GEMM (`K·B` rows) gives the
//! rows the whole-sequence one gives. cuBLAS need not (another algorithm for another `M`):
//! tests/cuda.rs compares on the GPU with a rounding tolerance.

use super::buffer::View;
use super::driver::{backward, forward, wavefront_chunk, CudaReserve, SavedViews};
use super::exec::Call;
use crate::backend::GradMode;
use crate::{CellKind, Element, ParamLayout, Params, RnnConfig, SeqShape, SplitMix64};

fn view<T: Element>(v: &[T]) -> View {
    View { ptr: v.as_ptr() as u64, len: v.len(), ty: T::DTYPE }
}
fn view_mut<T: Element>(v: &mut [T]) -> View {
    View { ptr: v.as_mut_ptr() as u64, len: v.len(), ty: T::DTYPE }
}

/// Everything one forward (training, then inference) and backward of a problem give on `call`
/// (both passes with its switches), as bits:
/// y, hn, cn of training and of inference, the saved activations, dx, dh0, dc0, dparams.
fn run<T: Element>(cfg: &RnnConfig, shape: &SeqShape, seed: u64, call: &Call<'_>) -> Vec<Vec<u64>> {
    let mut rng = SplitMix64::new(seed);
    let mut u = |n: usize, r: f64| (0..n).map(|_| T::from_f64(rng.uniform(-r, r))).collect::<Vec<T>>();
    let n = |s: [usize; 3]| s.iter().product::<usize>();
    let lstm = cfg.cell().has_cell_state();
    let x = u(n(shape.x_shape(cfg)), 2.0);
    let h0 = u(n(shape.h_shape(cfg)), 1.0);
    let c0 = lstm.then(|| u(n(shape.c_shape(cfg)), 1.0));
    let dy = u(n(shape.y_shape(cfg)), 1.0);
    let dhn = u(n(shape.h_shape(cfg)), 1.0);
    let dcn = lstm.then(|| u(n(shape.c_shape(cfg)), 1.0));
    let params = Params::<T>::init_uniform(cfg, seed ^ 0x5eed).into_vec();
    let layout = ParamLayout::new(cfg);
    let w = view(&params);
    let nan = |s: [usize; 3]| vec![T::from_f64(f64::NAN); n(s)];
    let bits = |v: &[T]| v.iter().map(|a| a.to_f64().to_bits()).collect::<Vec<u64>>();
    let mut out = Vec::new();
    let mut reserve = CudaReserve::default();
    for training in [true, false] {
        let (mut y, mut hn) = (nan(shape.y_shape(cfg)), nan(shape.h_shape(cfg)));
        let mut cn = lstm.then(|| nan(shape.c_shape(cfg)));
        let cn_v = cn.as_deref_mut().map(view_mut);
        let save = training.then_some(&mut reserve);
        let c0_v = c0.as_deref().map(view);
        forward(call, &layout, w, shape, view(&x), Some(view(&h0)), c0_v, view_mut(&mut y), Some(view_mut(&mut hn)), cn_v, save).unwrap();
        out.extend([bits(&y), bits(&hn), cn.as_deref().map_or(Vec::new(), bits)]);
    }
    out.extend(reserve.saved_bits().into_iter().map(|v| v.into_iter().map(u64::from).collect()));
    // Backward from the saved activations, with the same switches.
    let sv = SavedViews::new(call, &reserve);
    let (mut dx, mut dh0) = (nan(shape.x_shape(cfg)), nan(shape.h_shape(cfg)));
    let mut dc0 = lstm.then(|| nan(shape.c_shape(cfg)));
    let mut dp = vec![T::from_f64(f64::NAN); layout.len()];
    let (dy_v, dhn_v, dcn_v) = (Some(view(&dy)), Some(view(&dhn)), dcn.as_deref().map(view));
    let dc0_v = dc0.as_deref_mut().map(view_mut);
    let (dx_v, dh0_v, dp_v) = (view_mut(&mut dx), view_mut(&mut dh0), view_mut(&mut dp));
    backward(call, &layout, w, shape, &sv, dy_v, dhn_v, dcn_v, Some(dx_v), Some(dh0_v), dc0_v, Some(dp_v), GradMode::Overwrite).unwrap();
    out.extend([bits(&dx), bits(&dh0), dc0.as_deref().map_or(Vec::new(), bits), bits(&dp)]);
    out
}

/// The wavefront with chunk `k` against the layer-by-layer order, bit for bit.
fn check<T: Element>(cfg: &RnnConfig, shape: &SeqShape, k: usize, seed: u64) {
    let wave = Call::host().with_storage(T::DTYPE).with_wavefront(true).with_wavefront_chunk(k);
    let chunks = shape.steps().div_ceil(k.min(shape.steps()));
    assert_eq!(wavefront_chunk(&wave, cfg, shape), Some(k.min(shape.steps())), "the wavefront must be taken: {cfg:?}");
    let off = Call::host().with_storage(T::DTYPE).with_wavefront(false);
    assert_eq!(wavefront_chunk(&off, cfg, shape), None);
    let (got, want) = (run::<T>(cfg, shape, seed, &wave), run::<T>(cfg, shape, seed, &off));
    let names = ["y", "hn", "cn", "y (inference)", "hn (inference)", "cn (inference)"];
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

/// f16 and bf16 storage: the same bookkeeping with 16-bit outputs, states and inputs.
#[test]
fn emulated_wavefront_matches_layer_by_layer_half() {
    for (c, (cell, proj)) in [(CellKind::Lstm, 2), (CellKind::Gru, 0), (CellKind::RnnRelu, 0)].into_iter().enumerate() {
        let cfg = stack(cell, 3, proj, true);
        let shape = SeqShape::with_lengths(7, vec![7, 3, 5, 6]).unwrap();
        check::<half::f16>(&cfg, &shape, 3, 40 + c as u64);
        check::<half::bf16>(&cfg, &shape, 2, 50 + c as u64);
    }
}

/// Where the wavefront does not apply, the driver says so: bidirectional stacks, one layer,
/// the switch off; the automatic chunk is `max(ceil(T/16), ceil(512/B))`, at most `T`.
#[test]
fn wavefront_chunk_choice() {
    let call = Call::host();
    let uni = stack(CellKind::Gru, 3, 0, true);
    let bi = RnnConfig::new(CellKind::Gru, 5, 7).num_layers(3).bidirectional(true).build().unwrap();
    let one = stack(CellKind::Gru, 1, 0, true);
    let s = |t, b| SeqShape::new(t, b).unwrap();
    assert_eq!(wavefront_chunk(&call, &bi, &s(100, 4)), None);
    assert_eq!(wavefront_chunk(&call, &one, &s(100, 4)), None);
    assert_eq!(wavefront_chunk(&call.with_wavefront(false), &uni, &s(100, 4)), None);
    let call = Call::host();
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
    let on = Call::host().with_persistent(true).with_persistent_required(true).with_wavefront_chunk(2);
    let off = Call::host().with_persistent(true).with_persistent_required(true).with_wavefront(false);
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
    use super::exec::Kernel as K;
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
        let call = Call::host().with_wavefront(true).with_wavefront_chunk(2);
        run::<f32>(&cfg, &shape, 3, &call);
        let issued = call.issued.borrow();
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

/// A pass that fails after forking to stream 1 still joins stream 1 into stream 0 before it
/// returns: the temporaries are freed on stream 0 when the pass returns, and a caller's stream
/// (the C ABI's device calls) waits for stream 0 only, so an unjoined stream 1 could still be
/// using them. Every kernel or GEMM of a forward (training) and a backward fails in turn
/// (the emulation's fault injection), on a bidirectional stack (both directions forked per
/// layer) and on a unidirectional one (the wavefront).
#[test]
fn emulated_failing_pass_joins_stream_1() {
    let bi = RnnConfig::new(CellKind::Gru, 5, 7).num_layers(2).bidirectional(true).build().unwrap();
    for cfg in [bi, stack(CellKind::Lstm, 3, 0, true)] {
        let shape = SeqShape::with_lengths(5, vec![5, 3]).unwrap();
        let layout = ParamLayout::new(&cfg);
        let params = Params::<f32>::init_uniform(&cfg, 7).into_vec();
        let w = view(&params);
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let x = vec![0.5f32; n(shape.x_shape(&cfg))];
        let dy = vec![0.25f32; n(shape.y_shape(&cfg))];
        let mut y = vec![0f32; n(shape.y_shape(&cfg))];
        let mut dx = vec![0f32; n(shape.x_shape(&cfg))];
        let mut dp = vec![0f32; layout.len()];
        let (mut fwd_failures, mut bwd_failures) = (0, 0);
        for fail in 0.. {
            let call = Call::host().with_wavefront_chunk(2);
            call.fail_at.set(Some(fail));
            let mut reserve = CudaReserve::default();
            let r = forward(&call, &layout, w, &shape, view(&x), None, None, view_mut(&mut y), None, None, Some(&mut reserve));
            assert!(!call.forked.get(), "{cfg:?}: forward returned ({r:?}) with stream 1 not joined into stream 0");
            if r.is_err() {
                fwd_failures += 1;
                continue;
            }
            let sv = SavedViews::new(&call, &reserve);
            let (dy_v, dx_v, dp_v) = (Some(view(&dy)), Some(view_mut(&mut dx)), Some(view_mut(&mut dp)));
            let r = backward(&call, &layout, w, &shape, &sv, dy_v, None, None, dx_v, None, None, dp_v, GradMode::Overwrite);
            assert!(!call.forked.get(), "{cfg:?}: backward returned ({r:?}) with stream 1 not joined into stream 0");
            if r.is_ok() {
                break;
            }
            bwd_failures += 1;
        }
        assert!(fwd_failures > 10 && bwd_failures > 10, "{cfg:?}: {fwd_failures} forward and {bwd_failures} backward failures injected");
    }
}

/// The same with panics (a bug in the driver, e.g. a view outside its buffer) instead of
/// errors: while the panic unwinds, stream 1 is joined into stream 0 before the pass's
/// temporaries are dropped (a guard in `joined_on_error`).
#[test]
fn emulated_panicking_pass_joins_stream_1() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let cfg = RnnConfig::new(CellKind::Gru, 5, 7).num_layers(2).bidirectional(true).build().unwrap();
    let shape = SeqShape::with_lengths(5, vec![5, 3]).unwrap();
    let layout = ParamLayout::new(&cfg);
    let params = Params::<f32>::init_uniform(&cfg, 7).into_vec();
    let w = view(&params);
    let n = |s: [usize; 3]| s.iter().product::<usize>();
    let x = vec![0.5f32; n(shape.x_shape(&cfg))];
    let dy = vec![0.25f32; n(shape.y_shape(&cfg))];
    let mut y = vec![0f32; n(shape.y_shape(&cfg))];
    let mut dx = vec![0f32; n(shape.x_shape(&cfg))];
    let mut dp = vec![0f32; layout.len()];
    // Quiet: dozens of injected panics would each print a message and a backtrace.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (mut fwd_panics, mut bwd_panics, mut forked_after) = (0, 0, Vec::new());
    for fail in 0.. {
        let call = Call::host();
        call.fail_at.set(Some(fail));
        call.fail_panics.set(true);
        let mut reserve = CudaReserve::default();
        let r = catch_unwind(AssertUnwindSafe(|| {
            forward(&call, &layout, w, &shape, view(&x), None, None, view_mut(&mut y), None, None, Some(&mut reserve))
        }));
        if call.forked.get() {
            forked_after.push(format!("forward, failure {fail}"));
        }
        if r.is_err() {
            fwd_panics += 1;
            continue;
        }
        r.unwrap().unwrap();
        let sv = SavedViews::new(&call, &reserve);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let (dy_v, dx_v, dp_v) = (Some(view(&dy)), Some(view_mut(&mut dx)), Some(view_mut(&mut dp)));
            backward(&call, &layout, w, &shape, &sv, dy_v, None, None, dx_v, None, None, dp_v, GradMode::Overwrite)
        }));
        if call.forked.get() {
            forked_after.push(format!("backward, failure {fail}"));
        }
        match r {
            Ok(r) => {
                r.unwrap();
                break;
            }
            Err(_) => bwd_panics += 1,
        }
    }
    std::panic::set_hook(hook);
    assert!(forked_after.is_empty(), "stream 1 not joined after a panic in: {forked_after:?}");
    assert!(fwd_panics > 10 && bwd_panics > 10, "{fwd_panics} forward and {bwd_panics} backward panics injected");
}

/// A bidirectional stack (layer by layer, no wavefront): each direction's step kernels, and
/// its persistent kernels where they run, on its own stream (`d`), forward and backward.
#[test]
fn emulated_directions_on_their_streams() {
    use super::exec::Kernel as K;
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
            let call = Call::host().with_persistent(on);
            run::<f32>(&cfg, &shape, 4, &call);
            let issued = call.issued.borrow();
            let count = |k: K, si: usize| issued.iter().filter(|&&(s, kk)| s == si && kk == Some(k)).count();
            for (k, per_layer) in [(fwd, fwd_n), (bwd, bwd_n)] {
                // Two layers, one direction per stream.
                assert_eq!([count(k, 0), count(k, 1)], [2 * per_layer, 2 * per_layer], "{cell:?} persistent {on}: {k:?} on streams [0, 1]");
            }
        }
    }
}
