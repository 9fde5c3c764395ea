//! Recurrent (variational) dropout on the host backends (reference and CPU): the hidden state
//! that enters a step's recurrent product is `h_prev ⊙ f`, with the factors `f` (0 where
//! dropped, `1/(1-p)` where kept) of one mask per sequence, layer and direction
//! ([`MaskKind::RecurrentH`], step 0), the same at every step. Forward multiplies a copy of
//! `h_prev` before the product; backward multiplies the product's gradient `dGh · W_hh` by the
//! same factors, and the weight gradient of `W_hh` reads the dropped states, rebuilt from the
//! saved ones. The factors depend on the position only: the same for any thread count.

use crate::config::RnnConfig;
use crate::element::Float;
use crate::error::{Error, Result};
use crate::masks::{MaskKind, MaskSite, MaskStream};
use crate::philox::Threshold;

/// The recurrent dropout of one training call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecurrentDropout {
    stream: MaskStream,
    threshold: Threshold,
    p: f64,
}

impl RecurrentDropout {
    /// The recurrent dropout of a training pass of `cfg` with the call's `masks`: `None`
    /// without, an error naming `masks` when they are needed and missing.
    pub fn for_training(cfg: &RnnConfig, masks: Option<MaskStream>) -> Result<Option<Self>> {
        let Some(p) = cfg.recurrent_dropout() else { return Ok(None) };
        let stream = masks.ok_or_else(|| {
            Error::invalid(
                "masks",
                format!("a MaskStream for the recurrent dropout (p = {p}) of a training pass (ForwardInput::masks, or Rnn::forward_training_masked)"),
                "None",
            )
        })?;
        Ok(Some(RecurrentDropout { stream, threshold: Threshold::new("recurrent_dropout", p)?, p }))
    }

    /// The factors `[n, width]` of rows `row0..row0 + n` of layer `layer`, direction
    /// `direction`: 0 where dropped, `1/(1-p)` (rounded in `T`) where kept.
    pub fn factors<T: Float>(&self, layer: usize, direction: usize, row0: usize, n: usize, width: usize) -> Result<Vec<T>> {
        let site = MaskSite::new(layer, direction, MaskKind::RecurrentH)?;
        let scale = T::ONE / T::from_f64(1.0 - self.p);
        let mut f = vec![T::ZERO; n * width];
        for (i, row) in f.chunks_mut(width.max(1)).enumerate().take(n) {
            self.stream.fill_factors(site, 0, row0 + i, self.threshold, scale, row)?;
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
