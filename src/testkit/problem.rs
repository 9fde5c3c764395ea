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
        MaskStream::new(0x5eed_d0d0, 7)
    }

    /// A training forward (with the masks of [`masks`](Self::masks)) and its backward on
    /// `backend`, in the order of [`OUTPUTS`].
    pub fn run<B: Backend<T, Buf = [T]>>(&self, backend: B) -> Vec<Vec<T>> {
        let rnn = Rnn::new(backend, &self.cfg, &self.params[..]).unwrap();
        let mut reserve = Default::default();
        let o = rnn.forward_training_masked(&self.shape, &self.x, Some(&self.h0), self.c0.as_deref(), self.masks(), &mut reserve).unwrap();
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
