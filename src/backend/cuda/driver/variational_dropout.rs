//! Recurrent and input (variational) dropout on the CUDA driver, one mask per sequence, layer
//! and direction (the host's `backend::host::variational_dropout` is the same pass): the
//! kernel `variational_dropout_*` of kernels/dropout.cu around the unchanged GEMMs.
//!
//! - Input dropout: the input projection of a chunk of steps reads a dropped copy of the
//!   layer's input rows (`x_drop`); backward's `dX` gets `(dGi · W_ih) ⊙ f` (the product into a
//!   temporary, then added through the factors) and `dW_ih` reads the dropped input, rebuilt.
//! - Recurrent dropout: each step's recurrent product reads a dropped copy of `h_prev`
//!   (`h_drop`); backward adds `(dGh · W_hh) ⊙ f` to the carried gradient and `dW_hh` reads
//!   the dropped states, rebuilt from the saved ones (and `h0`).
//!
//! The persistent kernels run the recurrent product inside and take neither: such a layer runs
//! the per-step path (an error naming the option when they are required).

use super::super::buffer::View;
use super::super::exec::Exec;
use super::Temps;
use crate::backend::host::variational_dropout::VariationalDropout;
use crate::backend::stack::LayerDims;
use crate::error::Result;

/// The option that keeps a layer off the persistent kernels, if any.
pub(super) fn persistent_declines(input: Option<&VariationalDropout>, recurrent: Option<&VariationalDropout>) -> Option<&'static str> {
    match (input, recurrent) {
        (_, Some(_)) => Some("recurrent_dropout"),
        (Some(_), None) => Some("input_dropout"),
        (None, None) => None,
    }
}

/// One layer-direction's variational dropout in a training forward pass.
#[derive(Clone)]
pub(super) struct VarForward {
    at: (usize, usize),
    /// Input dropout and `[T, B, In]` for the dropped input (storage type).
    input: Option<(VariationalDropout, View)>,
    /// Recurrent dropout and `[B, Hout]` for the dropped `h_prev` (storage type).
    recurrent: Option<(VariationalDropout, View)>,
}

impl VarForward {
    /// The buffers of layer `l`, direction `d`; `None` without either dropout.
    pub fn new(
        temps: &mut Temps<'_, '_>,
        dims: &LayerDims,
        (l, d): (usize, usize),
        input: Option<&VariationalDropout>,
        recurrent: Option<&VariationalDropout>,
    ) -> Result<Option<Self>> {
        if input.is_none() && recurrent.is_none() {
            return Ok(None);
        }
        let input = match input {
            Some(v) => Some((v.clone(), temps.storage(dims.t * dims.b * dims.input)?)),
            None => None,
        };
        let recurrent = match recurrent {
            Some(v) => Some((v.clone(), temps.storage(dims.b * dims.hout)?)),
            None => None,
        };
        Ok(Some(VarForward { at: (l, d), input, recurrent }))
    }

    /// The rows the input projection reads: `rows` of the layer's input (`[n, In]` from row
    /// `r0`), or their dropped copy, written on stream `si`.
    pub fn input(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, rows: View, r0: usize) -> Result<View> {
        let Some((v, x_drop)) = &self.input else { return Ok(rows) };
        let out = x_drop.at(r0 * dims.input, rows.len);
        exec.variational_dropout(si, rows, out, dims.b, dims.input, v, self.at, false)?;
        Ok(out)
    }

    /// The state the recurrent product reads: `h_prev`, or its dropped copy, written on stream
    /// `si`.
    pub fn h_prev(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, h_prev: View) -> Result<View> {
        let Some((v, h_drop)) = &self.recurrent else { return Ok(h_prev) };
        exec.variational_dropout(si, h_prev, *h_drop, dims.b, dims.hout, v, self.at, false)?;
        Ok(*h_drop)
    }
}

/// One layer-direction's variational dropout in backward.
#[derive(Clone)]
pub(super) struct VarBackward {
    at: (usize, usize),
    /// Input dropout, `[T, B, In]` for `dGi · W_ih` and `[T, B, In]` for the rebuilt dropped
    /// input (storage type).
    input: Option<(VariationalDropout, View, View)>,
    /// Recurrent dropout, `[B, Hout]` f32 for `dGh · W_hh`, `[T, B, Hout]` and `[B, Hout]` for
    /// the rebuilt dropped states and `h0` (storage type).
    recurrent: Option<(VariationalDropout, View, View, View)>,
}

impl VarBackward {
    /// The buffers of layer `l`, direction `d`; `None` without either dropout.
    pub fn new(
        temps: &mut Temps<'_, '_>,
        dims: &LayerDims,
        (l, d): (usize, usize),
        input: Option<&VariationalDropout>,
        recurrent: Option<&VariationalDropout>,
    ) -> Result<Option<Self>> {
        if input.is_none() && recurrent.is_none() {
            return Ok(None);
        }
        let tb = dims.t * dims.b;
        let input = match input {
            Some(v) => Some((v.clone(), temps.storage(tb * dims.input)?, temps.storage(tb * dims.input)?)),
            None => None,
        };
        let recurrent = match recurrent {
            Some(v) => {
                Some((v.clone(), temps.f32(dims.b * dims.hout)?, temps.storage(tb * dims.hout)?, temps.storage(dims.b * dims.hout)?))
            }
            None => None,
        };
        Ok(Some(VarBackward { at: (l, d), input, recurrent }))
    }

    /// Where `dGi · W_ih` of `n` rows from row `r0` goes: `d_in`'s rows themselves (`None`), or
    /// a temporary to add through the factors with [`input_grad_finish`](Self::input_grad_finish).
    pub fn input_grad_target(&self, dims: &LayerDims, r0: usize, n: usize) -> Option<View> {
        self.input.as_ref().map(|(_, g, _)| g.at(r0 * dims.input, n * dims.input))
    }

    /// `d_in[rows] (+)= tmp ⊙ f`, on stream `si` (direction 0 overwrites, 1 adds).
    pub fn input_grad_finish(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, tmp: View, d_in_rows: View, add: bool) -> Result<()> {
        let Some((v, ..)) = &self.input else { return Ok(()) };
        exec.variational_dropout(si, tmp, d_in_rows, dims.b, dims.input, v, self.at, add)
    }

    /// The layer's input as `dW_ih` reads it: `input`, or the dropped input rebuilt.
    pub fn weight_input(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, input: View) -> Result<View> {
        let Some((v, _, x_drop)) = &self.input else { return Ok(input) };
        exec.variational_dropout(si, input, *x_drop, dims.b, dims.input, v, self.at, false)?;
        Ok(*x_drop)
    }

    /// Where `dGh · W_hh` goes: the carried gradient itself (`None`), or a temporary (f32,
    /// `[B, Hout]`, overwritten) for [`carry_finish`](Self::carry_finish).
    pub fn carry_target(&self) -> Option<View> {
        self.recurrent.as_ref().map(|(_, t, ..)| *t)
    }

    /// `carry += tmp ⊙ f`, on stream `si`.
    pub fn carry_finish(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, carry: View) -> Result<()> {
        let Some((v, tmp, ..)) = &self.recurrent else { return Ok(()) };
        exec.variational_dropout(si, *tmp, carry, dims.b, dims.hout, v, self.at, true)
    }

    /// The saved states and `h0` as `dW_hh` reads them: themselves, or dropped, rebuilt.
    pub fn weight_states(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, h_all: View, h0: View) -> Result<(View, View)> {
        let Some((v, _, h_drop, h0_drop)) = &self.recurrent else { return Ok((h_all, h0)) };
        exec.variational_dropout(si, h_all, *h_drop, dims.b, dims.hout, v, self.at, false)?;
        exec.variational_dropout(si, h0, *h0_drop, dims.b, dims.hout, v, self.at, false)?;
        Ok((*h_drop, *h0_drop))
    }
}
