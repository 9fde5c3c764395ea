//! A random problem of one stack in element type `T`: parameters, inputs, initial states and
//! incoming gradients, run on a backend and, on the same values, on the f64 reference.

use crate::masks::MaskStream;
use crate::{Backend, Element, Params, Reference, Rnn, RnnConfig, SeqShape};

/// The outputs of a problem's run, in this order: `y`, `hn`, `cn`, `dx`, `dh0`, `dc0`,
/// `dparams` (`cn`, `dc0` empty for cells without a cell state).
pub const OUTPUTS: [&str; 7] = ["y", "hn", "cn", "dx", "dh0", "dc0", "dparams"];

/// A random problem: every value already of the element type `T`.
#[derive(Clone, Debug)]
pub struct Problem<T> {
    /// The configuration.
    pub cfg: RnnConfig,
    /// The shape of the call.
    pub shape: SeqShape,
    /// The flat parameters.
    pub params: Vec<T>,
    /// `x: [T, B, I]`.
    pub x: Vec<T>,
    /// `h0: [L·D, B, Hout]`.
    pub h0: Vec<T>,
    /// `c0: [L·D, B, H]` (LSTM).
    pub c0: Option<Vec<T>>,
    /// `dy: [T, B, D·Hout]`.
    pub dy: Vec<T>,
    /// `dhn: [L·D, B, Hout]`.
    pub dhn: Vec<T>,
    /// `dcn: [L·D, B, H]` (LSTM).
    pub dcn: Option<Vec<T>>,
}

/// Every element as f64.
pub fn up<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|a| a.to_f64()).collect()
}

impl<T: Element> Problem<T> {
    /// Inputs uniform in `±x_range` (±25 saturates every gate), `h0`, `dy`, `dhn`, `dcn` in ±1,
    /// `c0` in ±2, drawn from `seed`; PyTorch's initialisation for the parameters (from
    /// `seed ^ 0xabc`).
    pub fn new(cfg: &RnnConfig, shape: &SeqShape, seed: u64, x_range: f64) -> Self {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let mut u = |n: usize, r: f64| (0..n).map(|_| T::from_f64(rng.uniform(-r, r))).collect::<Vec<T>>();
        let n = |s: [usize; 3]| s.iter().product::<usize>();
        let lstm = cfg.cell().has_cell_state();
        Problem {
            x: u(n(shape.x_shape(cfg)), x_range),
            h0: u(n(shape.h_shape(cfg)), 1.0),
            c0: lstm.then(|| u(n(shape.c_shape(cfg)), 2.0)),
            dy: u(n(shape.y_shape(cfg)), 1.0),
            dhn: u(n(shape.h_shape(cfg)), 1.0),
            dcn: lstm.then(|| u(n(shape.c_shape(cfg)), 1.0)),
            params: Params::<T>::init_uniform(cfg, seed ^ 0xabc).expect("a test problem's parameters fit in memory").into_vec(),
            cfg: cfg.clone(),
            shape: shape.clone(),
        }
    }

    /// The random masks of the problem's training passes (dropout): the same for every run.
    pub fn masks(&self) -> MaskStream {
        problem_masks()
    }

    /// A training forward (with the masks of [`masks`](Self::masks)) and its backward on
    /// `backend`, in the order of [`OUTPUTS`].
    pub fn run<B: Backend<T, Buf = [T]>>(&self, backend: B) -> Vec<Vec<T>> {
        self.run_masked(backend, self.masks())
    }

    /// [`run`](Self::run) with the masks `masks` (supplied ones, or another stream's).
    pub fn run_masked<B: Backend<T, Buf = [T]>>(&self, backend: B, masks: MaskStream) -> Vec<Vec<T>> {
        let rnn = Rnn::new(backend, &self.cfg, &self.params[..]).unwrap();
        let mut reserve = Default::default();
        let o = rnn.forward_training_masked(&self.shape, &self.x, Some(&self.h0), self.c0.as_deref(), masks, &mut reserve).unwrap();
        let g = rnn.backward(&reserve, Some(&self.dy), Some(&self.dhn), self.dcn.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default(), g.dx, g.dh0, g.dc0.unwrap_or_default(), g.dparams.unwrap_or_default()]
    }

    /// The outputs `y`, `hn`, `cn` of a training forward on `backend` (with the masks of
    /// [`masks`](Self::masks)).
    pub fn run_training_forward<B: Backend<T, Buf = [T]>>(&self, backend: B) -> Vec<Vec<T>> {
        let rnn = Rnn::new(backend, &self.cfg, &self.params[..]).unwrap();
        let mut reserve = Default::default();
        let o = rnn.forward_training_masked(&self.shape, &self.x, Some(&self.h0), self.c0.as_deref(), self.masks(), &mut reserve).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default()]
    }

    /// A forward in inference mode on `backend`: `y`, `hn`, `cn`.
    pub fn run_inference<B: Backend<T, Buf = [T]>>(&self, backend: B) -> Vec<Vec<T>> {
        let rnn = Rnn::new(backend, &self.cfg, &self.params[..]).unwrap();
        let o = rnn.forward(&self.shape, &self.x, Some(&self.h0), self.c0.as_deref()).unwrap();
        vec![o.y, o.hn, o.cn.unwrap_or_default()]
    }

    /// The same values in f64.
    pub fn to_f64(&self) -> Problem<f64> {
        let opt = |v: &Option<Vec<T>>| v.as_deref().map(up);
        Problem {
            cfg: self.cfg.clone(),
            shape: self.shape.clone(),
            params: up(&self.params),
            x: up(&self.x),
            h0: up(&self.h0),
            c0: opt(&self.c0),
            dy: up(&self.dy),
            dhn: up(&self.dhn),
            dcn: opt(&self.dcn),
        }
    }

    /// [`run`](Self::run) on the f64 reference, on the same values.
    pub fn run_reference(&self) -> Vec<Vec<f64>> {
        self.to_f64().run(Reference)
    }

    /// How well conditioned the f64 reference's forward of this problem is at f32 precision
    /// (see [`conditioning`](super::conditioning)): the smallest distance of a pre-activation
    /// to a kink of its cells (relu's 0, `±clip`), and the largest amplification of its layer
    /// norms.
    pub fn conditioning(&self) -> super::conditioning::Conditioning {
        super::conditioning::measure(|| self.to_f64().run_inference(Reference)).1
    }

    /// [`conditioning`](Self::conditioning)'s nearest kink.
    pub fn nearest_kink(&self) -> f64 {
        self.conditioning().nearest_kink
    }
}

/// Over how many copies of a problem, besides the problem itself, [`Problem::f32_error`]
/// measures the f32 reference's error: each copy has its parameters and inputs moved by one
/// unit in the last place (up, down or not, at random).
pub const PERTURBED: u64 = 3;

/// How many times the error of the reference computing in f32 ([`Problem::f32_error`]) an f32
/// backend may show on a problem where that error exceeds the fixed tolerances (a layer norm
/// amplifying f32 rounding). Measured over 600 random layer-norm problems on every x86-64 ISA
/// (`tests/layer_norm.rs`): the CPU's largest ratio was 7.8; over 3000 on the CUDA emulation
/// (`backend::cuda::tests::layer_norm`), 7.9 (1.5 on the outputs whose error exceeded the fixed
/// tolerance). Twice the larger, with margin.
pub const F32_SPREAD: f64 = 16.0;

impl Problem<f32> {
    /// The size of an f32 computation's error on this problem, output by output (in the order of
    /// [`OUTPUTS`]; [`max_error`](super::case::max_error) against the f64 reference): the
    /// largest error of the reference computing in f32 over the problem and [`PERTURBED`] copies
    /// of it moved by one unit in the last place (each against its own f64 reference).
    ///
    /// Layer norm amplifies f32 rounding (a row of small variance by its `rstd`, up to
    /// `1/sqrt(ε) ≈ 316`; a projection to one unit makes the recurrent product's rows rank one,
    /// normalised by a variance that scales with `|h|²` while `h`'s rounding scales with the
    /// terms of its sum), beyond the fixed tolerances. One f32 computation's error is one draw of
    /// that rounding, and may be small by chance while another order's is not (a CPU error 19
    /// times the f32 reference's was found on one problem, a CUDA emulation's 3.5 times on
    /// another where the CPU's was 0.4 times); over the perturbed copies it is the size of the
    /// error, not one draw. A backend's tolerance is then [`F32_SPREAD`] times this where that
    /// exceeds its fixed one.
    pub fn f32_error(&self) -> Vec<f64> {
        let errors = |p: &Problem<f32>| -> Vec<f64> {
            let (got, want) = (p.run(Reference), p.run_reference());
            got.iter().zip(&want).map(|(g, w)| super::case::max_error(&up(g), w)).collect()
        };
        let mut worst = errors(self);
        for k in 0..PERTURBED {
            for (w, e) in worst.iter_mut().zip(errors(&self.perturbed(k))) {
                *w = w.max(e);
            }
        }
        worst
    }

    /// This problem with its parameters, inputs and initial hidden states moved by one unit in
    /// the last place, up, down or not, at random (seeded by `k`).
    pub fn perturbed(&self, k: u64) -> Problem<f32> {
        let mut q = self.clone();
        let mut rng = crate::rng::SplitMix64::new(0x9e37_79b9 ^ k);
        let mut nudge = |v: &mut [f32]| {
            for x in v.iter_mut().filter(|x| x.is_finite() && **x != 0.0) {
                let bits = x.to_bits();
                *x = match rng.below(3) {
                    0 => f32::from_bits(bits + 1),
                    1 => f32::from_bits(bits - 1),
                    _ => *x,
                };
            }
        };
        nudge(&mut q.params);
        nudge(&mut q.x);
        nudge(&mut q.h0);
        q
    }
}

/// The masks every [`Problem`] trains with (a fixed seed and offset), also those with which
/// [`tolerance`](super::tolerance) measures a problem's gains.
pub fn problem_masks() -> MaskStream {
    MaskStream::new(0x5eed_d0d0, 7)
}
