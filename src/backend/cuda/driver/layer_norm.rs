//! Layer normalisation on the per-step path (`RnnConfig::layer_norm`: Haste's LayerNormLSTM and
//! LayerNormGRU; kernels/layer_norm.cu), around the plain passes of `forward.rs` and
//! `backward.rs`, which call it at a few points of a layer-direction with layer norm:
//!
//! - forward, after the input GEMM: `XG = LN(XG; γ_ih, b_ih)` in place ([`LnForward::input`];
//!   the step kernels then get no `b_ih`); after each step's recurrent GEMM `HG = γ_hh⊙x̂_h`
//!   ([`LnForward::hidden`]; the step kernels add `b_hh`); an LSTM's step kernel is followed by
//!   `m = o⊙tanh(LN(c; γ_c, β_c))` ([`LnForward::cell_output`]). Training saves `x̂` and `rstd`
//!   of each normalisation in the reserve (`Saved::ln_*`, `rstd_*`).
//! - backward, per step: an LSTM's output path (`lstm_ln_cell_backward`, then the step kernel
//!   `lstm_backward_step_ln`: [`LnBackward::lstm_step`]); the hidden side's
//!   `dHG_raw = LNback(dGh)` ([`LnBackward::hidden`]), kept for all steps, is the operand of the
//!   `dG·W_hh` GEMM and of `dW_hh`. After the time loop ([`LnBackward::end`]): the gains' and
//!   `β_c`'s gradients (column sums in a fixed order; the bias GEMMs `1^T dG` ran before, on the
//!   pre-normalisation `dG`), then `dGi = LNback(dGi)` in place, which `dW_ih` and `dX` read.
//!
//! With f16 or bf16 storage the normalisations read and write f32 (`XG`, `HG`, `x̂`, `rstd`
//! and the LSTM's normalised cell state stay f32, as the gate pre-activations do); backward,
//! `dGi` and `dHG_raw` are of the storage type (GEMM operands), so each is rounded twice: by
//! the step kernel, then after its normalisation's backward (`testkit::tolerance` counts both).
//!
//! The persistent kernels decline layer norm (`persistent_declines`), and the backward layer
//! wavefront is off with it (a chunk's `dX` rows need `dGi` after its normalisation, which
//! needs the bias and gain gradients of the whole sequence first); the forward wavefront
//! normalises each chunk's `XG` rows in its projection.

use super::super::buffer::View;
use super::super::exec::Exec;
use super::super::kernels as k;
use super::{DevBuf, Temps};
use crate::backend::cell::Saved;
use crate::backend::stack::LayerDims;
use crate::element::Dtype;
use crate::error::Result;
use crate::params::LayerRanges;
use std::ops::Range;

/// The address of an optional parameter tensor of the flat buffer `buf` (0: none).
fn param(buf: View, r: &Option<Range<usize>>) -> u64 {
    r.as_ref().map_or(0, |r| buf.at(r.start, r.len()).ptr)
}

/// The layer-norm parameters of one layer-direction (or their gradients) in a flat buffer.
#[derive(Clone, Copy)]
struct LnParams {
    /// `[G·H]`: `weight_ln_ih`.
    gamma_ih: u64,
    /// `[G·H]`: `weight_ln_hh`.
    gamma_hh: u64,
    /// `[H]` (LSTM): `weight_ln_c`, `bias_ln_c`.
    gamma_c: u64,
    beta_c: u64,
}

impl LnParams {
    fn of(buf: View, r: &LayerRanges) -> LnParams {
        LnParams {
            gamma_ih: param(buf, &r.ln_ih),
            gamma_hh: param(buf, &r.ln_hh),
            gamma_c: param(buf, &r.ln_c_weight),
            beta_c: param(buf, &r.ln_c_bias),
        }
    }
}

/// The saved normalisations of one layer-direction (views of the reserve; `NULL` when not
/// saved).
#[derive(Clone, Copy)]
struct LnSaved {
    /// `[T·B, G·H]`, `[T·B]`: the input product's `x̂` and `rstd`.
    ln_x: View,
    rstd_x: View,
    /// `[T·B, G·H]`, `[T·B]`: the recurrent product's.
    ln_h: View,
    rstd_h: View,
    /// `[T·B, H]`, `[T·B]` (LSTM): the cell state's.
    ln_c: View,
    rstd_c: View,
}

impl LnSaved {
    const NONE: LnSaved =
        LnSaved { ln_x: View::NULL, rstd_x: View::NULL, ln_h: View::NULL, rstd_h: View::NULL, ln_c: View::NULL, rstd_c: View::NULL };

    fn of(s: &Saved<View>) -> LnSaved {
        LnSaved { ln_x: s.ln_x, rstd_x: s.rstd_x, ln_h: s.ln_h, rstd_h: s.rstd_h, ln_c: s.ln_c, rstd_c: s.rstd_c }
    }

    /// Rows `r0..r0 + n` of a saved `[T·B, w]` buffer (0 when not saved).
    fn rows(v: View, r0: usize, n: usize, w: usize) -> u64 {
        if v.len == 0 {
            0
        } else {
            v.at(r0 * w, n * w).ptr
        }
    }
}

/// A layer-direction's layer norm in a forward pass.
#[derive(Clone, Copy)]
pub(super) struct LnForward {
    params: LnParams,
    /// `bias_ih` (0: none): the input normalisation's `β`.
    beta_ih: u64,
    saved: LnSaved,
    /// Inference LSTM: `[B, 4H]`, the step kernel's activated gates (the output reads `o`).
    gates: View,
}

/// The layer norm of a forward layer-direction with `dims` (`None` without the option): its
/// parameters in the flat `weights` (`ranges`), and the saved buffers fitted in `save` when
/// training.
pub(super) fn forward_bufs(
    temps: &mut Temps<'_, '_>,
    dims: &LayerDims,
    weights: View,
    ranges: &LayerRanges,
    save: Option<&mut Saved<Option<DevBuf>>>,
) -> Result<Option<LnForward>> {
    if !dims.cell.layer_norm {
        return Ok(None);
    }
    let exec = temps.exec;
    let (saved, gates) = match save {
        Some(sv) => {
            let sizes = dims.cell.saved_sizes(dims.t, dims.b);
            // (`c_new`, the last, is for zoneout, which this backend does not run.)
            let [.., ln_x, ln_h, ln_c, rstd_x, rstd_h, rstd_c, _] = sizes.zip(sv);
            let [ln_x, ln_h, ln_c, rstd_x, rstd_h, rstd_c] =
                [ln_x, ln_h, ln_c, rstd_x, rstd_h, rstd_c].map(|(slot, n)| exec.fit(slot, Dtype::F32, n));
            (LnSaved { ln_x: ln_x?, rstd_x: rstd_x?, ln_h: ln_h?, rstd_h: rstd_h?, ln_c: ln_c?, rstd_c: rstd_c? }, View::NULL)
        }
        None => (LnSaved::NONE, if dims.lstm() { temps.f32(dims.b * dims.gh)? } else { View::NULL }),
    };
    Ok(Some(LnForward { params: LnParams::of(weights, ranges), beta_ih: param(weights, &ranges.b_ih), saved, gates }))
}

impl LnForward {
    /// `XG = LN(XG; γ_ih, b_ih)` for the steps `steps` (rows of `xg` `[T·B, G·H]`), in place.
    pub fn input(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, xg: View, steps: Range<usize>) -> Result<()> {
        let (r0, n, gh) = (steps.start * dims.b, steps.len() * dims.b, dims.gh);
        let args = k::LayerNormForwardArgs {
            rows: n as i32,
            width: gh as i32,
            v: xg.at(r0 * gh, n * gh).ptr,
            gamma: self.params.gamma_ih,
            beta: self.beta_ih,
            xhat: LnSaved::rows(self.saved.ln_x, r0, n, gh),
            rstd: LnSaved::rows(self.saved.rstd_x, r0, n, 1),
        };
        exec.launch_rows(si, k::LayerNormForward, exec.storage(), n, &args)
    }

    /// `HG = γ_hh⊙x̂_h` for step `t` (`hg` `[B, G·H]`), in place.
    pub fn hidden(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, t: usize, hg: View) -> Result<()> {
        let (b, gh) = (dims.b, dims.gh);
        let args = k::LayerNormForwardArgs {
            rows: b as i32,
            width: gh as i32,
            v: hg.at(0, b * gh).ptr,
            gamma: self.params.gamma_hh,
            beta: 0,
            xhat: LnSaved::rows(self.saved.ln_h, t * b, b, gh),
            rstd: LnSaved::rows(self.saved.rstd_h, t * b, b, 1),
        };
        exec.launch_rows(si, k::LayerNormForward, exec.storage(), b, &args)
    }

    /// The activated gates' address for an LSTM step kernel when not training (0 otherwise: the
    /// saved gates serve).
    pub fn inference_gates(&self) -> u64 {
        self.gates.ptr
    }

    /// After an LSTM step kernel of step `t`, which left `gates` `[B, 4H]` and the raw `c`
    /// `[B, H]`: `m = o⊙tanh(LN(c; γ_c, β_c))` on active rows (and `y`'s rows when `y` is not 0).
    #[allow(clippy::too_many_arguments)]
    pub fn cell_output(
        &self,
        exec: &Exec<'_>,
        si: usize,
        dims: &LayerDims,
        t: usize,
        lengths: u64,
        gates: u64,
        c: View,
        m: View,
        y: u64,
    ) -> Result<()> {
        let (b, h) = (dims.b, dims.h);
        let args = k::LstmLnCellForwardArgs {
            batch: b as i32,
            hidden: h as i32,
            step: t as i32,
            lengths,
            gates,
            c: c.at(0, b * h).ptr,
            gamma: self.params.gamma_c,
            beta: self.params.beta_c,
            m: m.at(0, b * h).ptr,
            y,
            y_stride: dims.out_w as i32,
            c_hat: LnSaved::rows(self.saved.ln_c, t * b, b, h),
            rstd: LnSaved::rows(self.saved.rstd_c, t * b, b, 1),
        };
        exec.launch_rows(si, k::LstmLnCellForward, exec.storage(), b, &args)
    }
}

/// A layer-direction's layer norm in a backward pass.
#[derive(Clone, Copy)]
pub(super) struct LnBackward {
    params: LnParams,
    /// Where the layer-norm parameters' gradients accumulate, when wanted.
    grads: Option<LnParams>,
    saved: LnSaved,
    /// `[T·B, G·H]` (storage type): `dHG_raw = LNback(dGh)` of every step.
    pub dhg_raw: View,
    /// LSTM: `[T·B, H]` f32 `dŝ` of every step, `[B, H]` f32 `dm⊙τ` of the step.
    pub ds: View,
    dm_tau: View,
}

/// The layer norm of a backward layer-direction with `dims` (`None` without the option): its
/// parameters in the flat `weights`, their gradients in `dparams` (when wanted), the saved
/// normalisations `saved`, and its workspaces.
pub(super) fn backward_bufs(
    temps: &mut Temps<'_, '_>,
    dims: &LayerDims,
    weights: View,
    dparams: Option<View>,
    ranges: &LayerRanges,
    saved: &Saved<View>,
) -> Result<Option<LnBackward>> {
    if !dims.cell.layer_norm {
        return Ok(None);
    }
    let tb = dims.t * dims.b;
    let lstm = dims.lstm();
    Ok(Some(LnBackward {
        params: LnParams::of(weights, ranges),
        grads: dparams.map(|dp| LnParams::of(dp, ranges)),
        saved: LnSaved::of(saved),
        dhg_raw: temps.storage(tb * dims.gh)?,
        ds: if lstm { temps.f32(tb * dims.h)? } else { View::NULL },
        dm_tau: if lstm { temps.f32(dims.b * dims.h)? } else { View::NULL },
    }))
}

impl LnBackward {
    /// An LSTM backward step `t` with layer norm (`a`: the plain step's arguments, `dg` its
    /// `dG` rows; the options as `lstm_backward_step_opt`): the output path's `dŝ`, `dm⊙τ` and
    /// `dc += LNback(dŝ)`, then the gates' step.
    pub fn lstm_step(
        &self,
        exec: &Exec<'_>,
        si: usize,
        dims: &LayerDims,
        a: k::LstmBackwardStepArgs,
        peephole: u64,
        dpeep: u64,
    ) -> Result<()> {
        let (t, b, h) = (a.step as usize, dims.b, dims.h);
        let piece = k::LstmLnCellBackwardArgs {
            batch: a.batch,
            hidden: a.hidden,
            step: a.step,
            lengths: a.lengths,
            gates: a.gates,
            c_hat: self.saved.ln_c.at(t * b * h, b * h).ptr,
            rstd: self.saved.rstd_c.at(t * b, b).ptr,
            gamma: self.params.gamma_c,
            beta: self.params.beta_c,
            dm_in: a.dm_in,
            dy: a.dy,
            dy_stride: a.dy_stride,
            carry: a.carry,
            dc: a.dc,
            ds: self.ds.at(t * b * h, b * h).ptr,
            dm_tau: self.dm_tau.ptr,
        };
        exec.launch_rows(si, k::LstmLnCellBackward, exec.storage(), b, &piece)?;
        let o = super::options::lstm_backward(a, &dims.cell, peephole, dpeep);
        let k::LstmBackwardStepOptArgs {
            batch,
            hidden,
            step,
            lengths,
            gates,
            c,
            c_prev,
            dm_in,
            dy,
            dy_stride,
            carry,
            dc,
            dg,
            peephole,
            clip,
            input_forget,
            dpeep,
        } = o;
        let args = k::LstmBackwardStepLnArgs {
            batch,
            hidden,
            step,
            lengths,
            gates,
            c,
            c_prev,
            dm_in,
            dy,
            dy_stride,
            carry,
            dc,
            dg,
            peephole,
            clip,
            input_forget,
            dpeep,
            dm_tau: self.dm_tau.ptr,
        };
        exec.launch(si, k::LstmBackwardStepLn, b * h, &args)
    }

    /// `dHG_raw[t] = LNback(dGh[t]; γ_hh, x̂_h, rstd_h)` for step `t` (`dgh_t` `[B, G·H]`): the
    /// rows the `dG·W_hh` GEMM reads instead of `dgh_t`.
    pub fn hidden(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, t: usize, dgh_t: View) -> Result<View> {
        let (b, gh) = (dims.b, dims.gh);
        let out = self.dhg_raw.at(t * b * gh, b * gh);
        let args = k::LayerNormBackwardArgs {
            rows: b as i32,
            width: gh as i32,
            dy: dgh_t.at(0, b * gh).ptr,
            gamma: self.params.gamma_hh,
            xhat: self.saved.ln_h.at(t * b * gh, b * gh).ptr,
            rstd: self.saved.rstd_h.at(t * b, b).ptr,
            dx: out.ptr,
        };
        exec.launch_rows(si, k::LayerNormBackward, exec.storage(), b, &args)?;
        Ok(out)
    }

    /// After the time loop (and the bias GEMMs, which read the pre-normalisation `dGi`, `dGh`):
    /// the gains' gradients `dγ_ih += Σ dGi⊙x̂_x`, `dγ_hh += Σ dGh⊙x̂_h` and, LSTM,
    /// `dγ_c += Σ dŝ⊙ĉ`, `dβ_c += Σ dŝ` when wanted; then `dGi = LNback(dGi; γ_ih, x̂_x, rstd_x)`
    /// in place (`dgi`, `dgh` `[T·B, G·H]`).
    pub fn end(&self, exec: &Exec<'_>, si: usize, dims: &LayerDims, dgi: View, dgh: View) -> Result<()> {
        let (tb, gh, h) = (dims.t * dims.b, dims.gh, dims.h);
        if let Some(g) = self.grads {
            let sums = |dy: View, xhat: View, w: usize, dgamma: u64, dbeta: u64| k::LayerNormParamGradsArgs {
                rows: tb as i32,
                width: w as i32,
                dy: dy.at(0, tb * w).ptr,
                xhat: xhat.at(0, tb * w).ptr,
                dgamma,
                dbeta,
            };
            exec.launch(si, k::LayerNormParamGrads, gh, &sums(dgi, self.saved.ln_x, gh, g.gamma_ih, 0))?;
            exec.launch(si, k::LayerNormParamGrads, gh, &sums(dgh, self.saved.ln_h, gh, g.gamma_hh, 0))?;
            if dims.lstm() {
                // dŝ is f32 whatever the storage type.
                exec.launch_typed(si, k::LayerNormParamGrads, Dtype::F32, h, &sums(self.ds, self.saved.ln_c, h, g.gamma_c, g.beta_c))?;
            }
        }
        let args = k::LayerNormBackwardArgs {
            rows: tb as i32,
            width: gh as i32,
            dy: dgi.at(0, tb * gh).ptr,
            gamma: self.params.gamma_ih,
            xhat: self.saved.ln_x.at(0, tb * gh).ptr,
            rstd: self.saved.rstd_x.at(0, tb).ptr,
            dx: dgi.ptr,
        };
        exec.launch_rows(si, k::LayerNormBackward, exec.storage(), tb, &args)
    }
}
