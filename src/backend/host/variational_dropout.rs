//! Variational dropout on the host backends (reference and CPU), one mask per sequence, layer
//! and direction, the same at every step (Gal and Ghahramani 2016), in its two places:
//!
//! - **recurrent** ([`MaskKind::RecurrentH`], Keras's `recurrent_dropout`): the hidden state that
//!   enters a step's recurrent product is `h_prev ⊙ f`. Forward multiplies a copy of `h_prev`
//!   before the product; backward multiplies the product's gradient `dGh · W_hh` by the same
//!   factors, and the weight gradient of `W_hh` reads the dropped states, rebuilt from the saved
//!   ones.
//! - **input** ([`MaskKind::LayerInput`], Keras's `dropout`): the layer's input enters the input
//!   projection as `x_t ⊙ f`. Forward multiplies a copy of each chunk of input rows before the
//!   projection; backward multiplies `dGi · W_ih` by the same factors before adding it to the
//!   input's gradient, and the weight gradient of `W_ih` reads the dropped input, rebuilt from
//!   the saved one.
//!
//! The factors `f` are 0 where dropped and `1/(1-p)` where kept; they depend on the position
//! only, so they are the same for any thread count, and backward regenerates them.

use super::dropout::Drawn;
use crate::config::RnnConfig;
use crate::element::Float;
use crate::error::Result;
use crate::masks::{MaskKind, MaskSite, MaskStream};

/// A variational dropout of one training call: its probability, masks and kind.
#[derive(Debug, Clone)]
pub(crate) struct VariationalDropout {
    drawn: Drawn,
    kind: MaskKind,
}

impl VariationalDropout {
    /// The recurrent dropout of a training pass of `cfg` with the call's `masks`: `None`
    /// without, an error naming `masks` when they are needed and missing.
    pub fn recurrent(cfg: &RnnConfig, masks: Option<&MaskStream>) -> Result<Option<Self>> {
        Self::of("recurrent_dropout", cfg.recurrent_dropout(), MaskKind::RecurrentH, masks)
    }

    /// The input dropout of a training pass of `cfg` with the call's `masks`: as
    /// [`recurrent`](Self::recurrent).
    pub fn input(cfg: &RnnConfig, masks: Option<&MaskStream>) -> Result<Option<Self>> {
        Self::of("input_dropout", cfg.input_dropout(), MaskKind::LayerInput, masks)
    }

    fn of(name: &str, p: Option<f64>, kind: MaskKind, masks: Option<&MaskStream>) -> Result<Option<Self>> {
        match p {
            Some(p) => Ok(Some(VariationalDropout { drawn: Drawn::new(name, p, masks)?, kind })),
            None => Ok(None),
        }
    }

    /// The probability and the masks.
    #[cfg(feature = "cuda")]
    pub fn drawn(&self) -> &Drawn {
        &self.drawn
    }

    /// The last counter word of the mask of layer `layer`, direction `direction`.
    #[cfg(feature = "cuda")]
    pub fn tag(&self, layer: usize, direction: usize) -> Result<u32> {
        Ok(MaskSite::new(layer, direction, self.kind)?.tag())
    }

    /// The factors `[n, width]` of rows `row0..row0 + n` of layer `layer`, direction
    /// `direction`: 0 where dropped, `1/(1-p)` (rounded in `T`) where kept.
    pub fn factors<T: Float>(&self, layer: usize, direction: usize, row0: usize, n: usize, width: usize) -> Result<Vec<T>> {
        let site = MaskSite::new(layer, direction, self.kind)?;
        let scale = self.drawn.scale::<T>();
        let mut f = vec![T::ZERO; n * width];
        for (i, row) in f.chunks_mut(width.max(1)).enumerate().take(n) {
            self.drawn.stream.fill_factors(site, 0, row0 + i, self.drawn.threshold, scale, row)?;
        }
        Ok(f)
    }
}

/// `out = h ⊙ f`, elementwise (`[n, Hout]` each).
pub(super) fn drop_into<T: Float>(h: &[T], f: &[T], out: &mut [T]) {
    for ((o, &v), &m) in out.iter_mut().zip(h).zip(f) {
        *o = v * m;
    }
}

/// `out[r] = x[r] ⊙ f[r mod B]` for the rows `r` of steps of `B` rows each: `x` and `out`
/// `[steps·B, W]`, `f` `[B, W]` (one factor row per sequence, the same at every step).
pub(super) fn drop_rows_into<T: Float>(x: &[T], f: &[T], out: &mut [T]) {
    if f.is_empty() {
        return;
    }
    for (o_t, x_t) in out.chunks_exact_mut(f.len()).zip(x.chunks_exact(f.len())) {
        drop_into(x_t, f, o_t);
    }
}

/// `acc[r] += g[r] ⊙ f[r mod B]`, the rows as in [`drop_rows_into`].
pub(super) fn add_dropped_rows<T: Float>(g: &[T], f: &[T], acc: &mut [T]) {
    if f.is_empty() {
        return;
    }
    for (a_t, g_t) in acc.chunks_exact_mut(f.len()).zip(g.chunks_exact(f.len())) {
        for ((a, &v), &m) in a_t.iter_mut().zip(g_t).zip(f) {
            *a += v * m;
        }
    }
}

/// `g *= f` for the active rows of `g` (`[n, width]`); nothing where `f` is empty (no recurrent
/// dropout).
pub(super) fn scale_active<T: Float>(active: &[bool], f: &[T], g: &mut [T]) {
    if f.is_empty() {
        return;
    }
    let width = g.len() / active.len().max(1);
    for (b, &a) in active.iter().enumerate() {
        if a {
            for (v, &m) in g[b * width..(b + 1) * width].iter_mut().zip(&f[b * width..(b + 1) * width]) {
                *v *= m;
            }
        }
    }
}
