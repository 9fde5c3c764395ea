//! The CUDA driver on the host emulation (`emulation.rs`: the kernels compiled as C++, cuBLAS's
//! GEMMs emulated, fresh memory NaN), without a GPU:
//!
//! - `driver.rs`: f32 against the f64 reference (every cell, projection, layers, directions,
//!   variable lengths, training, Accumulate; the persistent kernels that have an emulation),
//!   and the exact output bits pinned in `tests/fixtures/bit_pins.txt`;
//! - `half_storage.rs`: f16 and bf16 storage within the derived bounds of [`crate::testkit::tolerance`],
//!   exactly on integer-valued problems, and the emulation's conversions and GemmEx;
//! - `options.rs`: the cell options' step kernels (peepholes, gate clip, coupled input-forget)
//!   against an f64 oracle of one step, their backward against its central differences;
//! - `options_driver.rs`: the driver with those options and the regularisers (dropout between
//!   layers, recurrent and input dropout, zoneout) against the f64 reference, and the
//!   persistent kernels declining them;
//! - `gru_reset_before.rs`: the GRU with the reset gate before the recurrent matmul, its step
//!   kernels against an f64 oracle and the driver against the reference;
//! - `layer_norm.rs`: layer norm's kernels (the row normalisation, its backward and column sums,
//!   the layer-normalised LSTM's output forward and backward) against f64 row functions, and the
//!   driver with layer norm against the f64 reference;
//! - `deferred.rs`: a decoder's steps walked back one at a time with their parameters'
//!   gradients deferred to one product over all the steps: the whole call's bits;
//! - `wavefront.rs`: the layer wavefront bit for bit against the layer-by-layer order (also with
//!   dropout between layers, dropped a chunk at a time), the stream each piece of work is issued
//!   on, and stream 1 joined after a failure;
//! - `dropout.rs`: kernels/dropout.cu against the host's masks, whole and a range of steps;
//! - `supplied_masks.rs`: masks supplied by the caller, uploaded and read by the mask kernels:
//!   a call's own masks supplied again give its bits, patterned ones match the reference;
//! - `attention.rs`: attention (`driver/attention.rs`, kernels/attention.cu) through the same
//!   host-slice code as `CudaHost`, every score against the f64 reference, batched and per step,
//!   NaN in the keys' padding changing nothing.
//!
//! What the emulation does not cover: cudarc, cuBLAS, the PTX build, the two streams and the
//! multi-block, multi-warp parts of the persistent kernels (persistent_cell.cu and
//! persistent_backward.cu run with one block of one thread owning every unit;
//! persistent_lstm.cu does not run).

mod attention;
mod deferred;
mod driver;
mod dropout;
mod gru_reset_before;
mod half_storage;
mod layer_norm;
mod options;
mod options_driver;
mod oracle;
mod supplied_masks;
mod wavefront;

use super::buffer::View;
use super::driver::{backward, forward, BackwardViews, CudaReserve, ForwardViews, SavedViews, Weights};
use super::exec::{Exec, Paths};
use crate::backend::{GradMode, Reference};
use crate::testkit::SplitMix64;
use crate::{Element, ParamLayout, Rnn, RnnConfig, SeqShape};

fn view<T: Element>(v: &[T]) -> View {
    View { ptr: v.as_ptr() as u64, len: v.len(), ty: T::DTYPE }
}

fn view_mut<T: Element>(v: &mut [T]) -> View {
    View { ptr: v.as_mut_ptr() as u64, len: v.len(), ty: T::DTYPE }
}

fn up<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|a| a.to_f64()).collect()
}

/// NaN (in every storage type): outputs start as NaN so that an element never written shows.
fn nans<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f64(f64::NAN); n]
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|a| a.to_f64().to_bits()).collect()
}

/// The paths of a call, set one at a time.
trait WithPaths: Sized {
    fn paths_with(self, set: impl FnOnce(&mut Paths)) -> Self;

    fn with_persistent(self, on: bool) -> Self {
        self.paths_with(|p| p.persistent = on)
    }

    fn with_persistent_required(self, on: bool) -> Self {
        self.paths_with(|p| p.persistent_required = on)
    }

    fn with_wavefront(self, on: bool) -> Self {
        self.paths_with(|p| p.wavefront = on)
    }

    fn with_wavefront_chunk(self, k: usize) -> Self {
        self.paths_with(|p| p.wavefront_chunk = k)
    }
}

impl WithPaths for Exec<'_> {
    fn paths_with(self, set: impl FnOnce(&mut Paths)) -> Self {
        let mut paths = self.paths();
        set(&mut paths);
        self.with_paths(paths)
    }
}

/// A random problem of storage type `T` (the testkit's: parameters, inputs, initial states and
/// incoming gradients) with its parameter layout, run on the emulated driver.
struct Problem<T> {
    p: crate::testkit::Problem<T>,
    layout: ParamLayout,
    /// The masks of its training passes when not the testkit problem's
    /// ([`masks`](Problem::masks)).
    stream: Option<crate::masks::MaskStream>,
}

impl<T> std::ops::Deref for Problem<T> {
    type Target = crate::testkit::Problem<T>;
    fn deref(&self) -> &Self::Target {
        &self.p
    }
}

/// The outputs of a forward pass: y, hn, cn (empty for other cells than the LSTM).
type ForwardOut<T> = [Vec<T>; 3];

impl<T: Element> Problem<T> {
    /// The testkit's problem (`crate::testkit::Problem::new`).
    fn new(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> Self {
        Problem { p: crate::testkit::Problem::new(cfg, shape, seed, x_range), layout: ParamLayout::new(cfg), stream: None }
    }

    /// The masks of the problem's training passes: the testkit problem's, or those set by
    /// [`with_masks`](Self::with_masks).
    fn masks(&self) -> crate::masks::MaskStream {
        self.stream.clone().unwrap_or_else(|| self.p.masks())
    }

    /// The same problem trained with `masks`.
    fn with_masks(mut self, masks: crate::masks::MaskStream) -> Self {
        self.stream = Some(masks);
        self
    }

    fn weights(&self) -> Weights<'_> {
        Weights { layout: &self.layout, w: view(&self.params) }
    }

    fn lstm(&self) -> bool {
        self.cfg.cell().has_cell_state()
    }

    /// NaN outputs of `shape` elements.
    fn out(&self, shape: [usize; 3]) -> Vec<T> {
        nans(shape.iter().product())
    }

    /// One forward pass on `exec` from the problem's inputs (h0, c0 given), into NaN-filled
    /// outputs; into `save` when given.
    fn forward_on(&self, exec: &Exec<'_>, save: Option<&mut CudaReserve>) -> ForwardOut<T> {
        let (cfg, shape) = (&self.cfg, &self.shape);
        let (mut y, mut hn) = (self.out(shape.y_shape(cfg)), self.out(shape.h_shape(cfg)));
        let mut cn = if self.lstm() { self.out(shape.c_shape(cfg)) } else { Vec::new() };
        let io = ForwardViews {
            x: view(&self.x),
            h0: Some(view(&self.h0)),
            c0: self.c0.as_deref().map(view),
            y: view_mut(&mut y),
            hn: Some(view_mut(&mut hn)),
            cn: self.lstm().then(|| view_mut(&mut cn)),
        };
        // A training pass with dropout: the problem's masks, set on the reserve as
        // `Cuda::forward` does.
        let mut save = save;
        if let Some(r) = save.as_deref_mut() {
            use crate::backend::host::variational_dropout::VariationalDropout;
            r.dropout = self.dropout();
            r.recurrent_dropout = VariationalDropout::recurrent(&self.cfg, Some(&self.masks())).unwrap();
            r.input_dropout = VariationalDropout::input(&self.cfg, Some(&self.masks())).unwrap();
            r.zoneout = crate::backend::host::zoneout::Zoneout::for_pass(&self.cfg, &self.shape, true, Some(&self.masks())).unwrap();
        }
        forward(exec, self.weights(), shape, io, save).unwrap();
        [y, hn, cn]
    }

    /// The dropout between layers of the problem's training passes (its masks), if any.
    fn dropout(&self) -> Option<crate::backend::host::dropout::Dropout> {
        crate::backend::host::dropout::Dropout::for_training(&self.cfg, Some(&self.masks())).unwrap()
    }

    /// A training forward pass, then an inference one, on `exec`: the training outputs and the
    /// filled reserve; inference must give the same bits.
    fn train_on(&self, exec: &Exec<'_>) -> (ForwardOut<T>, CudaReserve) {
        let mut reserve = CudaReserve::default();
        let trained = self.forward_on(exec, Some(&mut reserve));
        let inferred = self.forward_on(exec, None);
        for (i, name) in ["y", "hn", "cn"].iter().enumerate() {
            // (With dropout, inference differs: it drops nothing; with zoneout it takes the
            // expectation.)
            let masked = self.dropout().is_some() || self.cfg.recurrent_dropout().is_some() || self.cfg.input_dropout().is_some();
            let masked = masked || self.cfg.zoneout().is_some() || self.cfg.zoneout_cell().is_some();
            assert!(masked || bits(&trained[i]) == bits(&inferred[i]), "{:?}: inference {name} differs from training's forward", T::DTYPE);
        }
        (trained, reserve)
    }

    /// Backward on `exec` from `reserve` with every incoming gradient: `[dx, dh0, dc0, dparams]`
    /// written into NaN-filled buffers (Overwrite).
    fn backward_on(&self, exec: &Exec<'_>, reserve: &CudaReserve) -> [Vec<T>; 4] {
        let (cfg, shape) = (&self.cfg, &self.shape);
        let (mut dx, mut dh0) = (self.out(shape.x_shape(cfg)), self.out(shape.h_shape(cfg)));
        let mut dc0 = if self.lstm() { self.out(shape.c_shape(cfg)) } else { Vec::new() };
        let mut dp = nans::<T>(self.layout.len());
        let g = BackwardViews {
            dx: Some(view_mut(&mut dx)),
            dh0: Some(view_mut(&mut dh0)),
            dc0: self.lstm().then(|| view_mut(&mut dc0)),
            dparams: Some(view_mut(&mut dp)),
            ..self.incoming(GradMode::Overwrite)
        };
        backward(exec, self.weights(), shape, &SavedViews::new(reserve), g).unwrap();
        [dx, dh0, dc0, dp]
    }

    /// The parameters' gradients of backward on `exec` accumulated onto `dp`.
    fn accumulate_on(&self, exec: &Exec<'_>, reserve: &CudaReserve, dp: &[T]) -> Vec<T> {
        let mut acc = dp.to_vec();
        let g = BackwardViews { dparams: Some(view_mut(&mut acc)), ..self.incoming(GradMode::Accumulate) };
        backward(exec, self.weights(), &self.shape, &SavedViews::new(reserve), g).unwrap();
        acc
    }

    /// The incoming gradients, no outputs.
    fn incoming(&self, mode: GradMode) -> BackwardViews {
        BackwardViews {
            dy: Some(view(&self.dy)),
            dhn: Some(view(&self.dhn)),
            dcn: self.dcn.as_deref().map(view),
            dx: None,
            dh0: None,
            dc0: None,
            dparams: None,
            mode,
        }
    }

    /// `[y, hn, cn, dx, dh0, dc0, dparams]` of a training forward on `fwd` (checked against
    /// inference) and its backward on `bwd`, and `dparams` accumulated onto them.
    fn run_on(&self, fwd: &Exec<'_>, bwd: &Exec<'_>) -> (Vec<Vec<T>>, Vec<T>) {
        let ([y, hn, cn], reserve) = self.train_on(fwd);
        let [dx, dh0, dc0, dp] = self.backward_on(bwd, &reserve);
        let acc = self.accumulate_on(bwd, &reserve, &dp);
        (vec![y, hn, cn, dx, dh0, dc0, dp], acc)
    }
}
