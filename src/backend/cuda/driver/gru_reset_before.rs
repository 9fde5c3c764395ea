//! The step of a GRU with the reset gate applied before the recurrent matmul
//! (`linear_before_reset = false`: Cho et al. 2014, ONNX `linear_before_reset = 0`, Keras
//! `reset_after = False`) on the device, forward and backward, and its `W_hh` gradient: the
//! places the driver's passes differ for it (the host driver's `backend/host/gru_reset_before.rs`,
//! with cuBLAS GEMMs).
//!
//! The new gate's recurrent product `W_hn (r ⊙ h_prev)` needs the reset gate first, so a step
//! is two GEMMs on row blocks of `W_hh` (`[3H, H]`: rows `r, z` then `n`, each block dense) and
//! two kernels of kernels/gru_reset_before.cu, where the PyTorch form has one GEMM and one
//! kernel:
//!
//! - forward: `HG[:, r z] = h_prev · W_h{r,z}^T` (into the step's `[B, 3H]` `HG` as a block of
//!   columns: a strided `C`), `gru_reset_before_forward_gates` (`r`, `u = r ⊙ h_prev`),
//!   `HG[:, n] = u · W_hn^T`, `gru_reset_before_forward_output` (`z`, `n`, `h`, `y`);
//! - backward: `gru_reset_before_backward_output` (`dgi`'s `z`, `n` columns, the carry
//!   `z·dh`), `du = dgi[:, n] · W_hn` (a strided `A`), `gru_reset_before_backward_reset`
//!   (`dgi`'s `r` columns, the carry `+= du ⊙ r`), then `carry += dgi[:, r z] · W_h{r,z}`.
//!
//! `u` is saved (the reserve's `extra`, of the storage type: it is a GEMM operand, as `h` is;
//! inference keeps one `[B, H]` of it). The hidden-side pre-activation gradients are the
//! input-side ones, so backward keeps no `dGh` (`dgh` is `dgi`: the bias gradients are the
//! same GEMMs), and `W_hh`'s gradient is `dgi[:, r z]^T · H_prev` for the `r, z` rows and
//! `dgi[:, n]^T · U` for the `n` rows ([`hh_weight_grad`]). Both products of a step have
//! `h_prev`'s rows; their output columns add up to the PyTorch form's `3H`, so a step does the
//! same multiply-adds in one more GEMM call. The persistent kernels decline the cell (the
//! per-step path runs it; `driver::persistent_declines`).

use super::super::buffer::View;
use super::super::exec::Exec;
use super::super::kernels as k;
use super::Temps;
use crate::backend::cell::Cell;
use crate::element::Dtype;
use crate::error::Result;

/// Whether `cell` is a GRU with the reset gate before the recurrent matmul.
pub(super) fn applies(cell: &Cell) -> bool {
    cell.is_gru() && !cell.linear_before_reset
}

/// The type of the saved `extra` of `cell` with storage type `storage`: `u = r ⊙ h_prev` is a
/// GEMM operand (the storage type); the PyTorch form's `W_hn h_prev + b_hn` is f32.
pub(super) fn extra_type(cell: &Cell, storage: Dtype) -> Dtype {
    if applies(cell) {
        storage
    } else {
        Dtype::F32
    }
}

/// Inference's `u` (`[B, H]`, the storage type) for `cell`, `None` for other cells (which keep
/// no `extra` in inference).
pub(super) fn inference_extra(temps: &mut Temps<'_, '_>, cell: &Cell, batch: usize) -> Result<Option<View>> {
    match applies(cell) {
        true => Ok(Some(temps.storage(batch * cell.hidden)?)),
        false => Ok(None),
    }
}

/// Backward's `du` (`[B, H]` f32) for `cell`, [`View::NULL`] for other cells.
pub(super) fn backward_du(temps: &mut Temps<'_, '_>, cell: &Cell, batch: usize) -> Result<View> {
    match applies(cell) {
        true => temps.f32(batch * cell.hidden),
        false => Ok(View::NULL),
    }
}

/// `W_hh`'s row blocks: `W_h{r,z}` `[2H, H]` and `W_hn` `[H, H]`.
fn blocks(w_hh: View, h: usize) -> (View, View) {
    (w_hh.at(0, 2 * h * h), w_hh.at(2 * h * h, h * h))
}

/// One forward step on stream `si`. `a`: the PyTorch form's step arguments (`extra` is this
/// step's `u`); `h_prev`, `u` `[B, H]`, `hg` `[B, 3H]` (the step's scratch for both products),
/// `w_hh` `[3H, H]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_step(
    exec: &Exec<'_>,
    si: usize,
    a: k::GruForwardStepArgs,
    cell: &Cell,
    h_prev: View,
    u: View,
    hg: View,
    w_hh: View,
) -> Result<()> {
    let k::GruForwardStepArgs { batch, hidden, step, lengths, xg, hg: hg_ptr, b_ih, b_hh, h_prev: hp, gates, extra, h, y, y_stride } = a;
    let args = k::GruResetBeforeForwardArgs {
        batch,
        hidden,
        step,
        lengths,
        xg,
        hg: hg_ptr,
        b_ih,
        b_hh,
        h_prev: hp,
        gates,
        u: extra,
        h,
        y,
        y_stride,
        clip: cell.clip as f32,
    };
    let (bl, hs, gw) = (batch as usize, hidden as usize, 3 * hidden as usize);
    let (w_rz, w_n) = blocks(w_hh, hs);
    // HG[:, r z] = h_prev · W_h{r,z}^T
    exec.gemm(si, 1.0, h_prev.mat(bl, hs), w_rz.mat(2 * hs, hs).t(), 0.0, hg.mat_strided(bl, 2 * hs, gw))?;
    exec.launch(si, k::GruResetBeforeForwardGates, bl * hs, &args)?;
    // HG[:, n] = u · W_hn^T
    let hg_n = hg.at(2 * hs, hg.len - 2 * hs).mat_strided(bl, hs, gw);
    exec.gemm(si, 1.0, u.mat(bl, hs), w_n.mat(hs, hs).t(), 0.0, hg_n)?;
    exec.launch(si, k::GruResetBeforeForwardOutput, bl * hs, &args)
}

/// One backward step on stream `si`: `dgi` of the step and the carry becomes `dh_prev`. `a`: the
/// PyTorch form's step arguments (`extra` and `dgh` are not read); `dgi` `[B, 3H]` (this step's
/// rows), `du` `[B, H]` f32 scratch, `carry` `[B, H]`, `w_hh` `[3H, H]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_step(
    exec: &Exec<'_>,
    si: usize,
    a: k::GruBackwardStepArgs,
    cell: &Cell,
    dgi: View,
    du: View,
    carry: View,
    w_hh: View,
) -> Result<()> {
    let k::GruBackwardStepArgs {
        batch,
        hidden,
        step,
        lengths,
        gates,
        extra: _,
        h_prev,
        dy,
        dy_stride,
        carry: carry_ptr,
        dgi: dgi_ptr,
        dgh: _,
    } = a;
    let args = k::GruResetBeforeBackwardArgs {
        batch,
        hidden,
        step,
        lengths,
        gates,
        h_prev,
        dy,
        dy_stride,
        carry: carry_ptr,
        du: du.ptr,
        dgi: dgi_ptr,
        clip: cell.clip as f32,
    };
    let (bl, hs, gw) = (batch as usize, hidden as usize, 3 * hidden as usize);
    let (w_rz, w_n) = blocks(w_hh, hs);
    exec.launch(si, k::GruResetBeforeBackwardOutput, bl * hs, &args)?;
    // du = dA_n · W_hn
    let dan = dgi.at(2 * hs, dgi.len - 2 * hs).mat_strided(bl, hs, gw);
    exec.gemm(si, 1.0, dan, w_n.mat(hs, hs), 0.0, du.mat(bl, hs))?;
    exec.launch(si, k::GruResetBeforeBackwardReset, bl * hs, &args)?;
    // dh_prev = carry + dA_{r,z} · W_h{r,z}
    exec.gemm(si, 1.0, dgi.mat_strided(bl, 2 * hs, gw), w_rz.mat(2 * hs, hs), 1.0, carry.mat(bl, hs))
}

/// `dW_hh += ...` on stream `si` after the time loop: `dgi[:, r z]^T · H_prev` into the `r, z`
/// rows (`H_prev`: the saved states `h` `[T·B, H]` shifted by one processed step, `h0` `[B, H]` at
/// the first: two GEMMs, no copy) and `dgi[:, n]^T · U` into the `n` rows (`u` the saved
/// `[T·B, H]`, in the rows of `dgi`). `dgi` `[T·B, 3H]`, `dw_hh` `[3H, H]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn hh_weight_grad(
    exec: &Exec<'_>,
    si: usize,
    (tl, bl, hs): (usize, usize, usize),
    reverse: bool,
    dgi: View,
    h_all: View,
    h0: View,
    u: View,
    dw_hh: View,
) -> Result<()> {
    let (gw, tb, rest) = (3 * hs, tl * bl, (tl - 1) * bl);
    let (dw_rz, dw_n) = blocks(dw_hh, hs);
    let dw_rz = dw_rz.mat(2 * hs, hs);
    // The processed steps after the first read the state the step before left; the first h0.
    let (first, rest_g, rest_h) = if reverse {
        (tl - 1, dgi.at(0, rest * gw), h_all.at(bl * hs, rest * hs))
    } else {
        (0, dgi.at(bl * gw, rest * gw), h_all.at(0, rest * hs))
    };
    exec.gemm(si, 1.0, rest_g.mat_strided(rest, 2 * hs, gw).t(), rest_h.mat(rest, hs), 1.0, dw_rz)?;
    let first_g = dgi.at(first * bl * gw, bl * gw).mat_strided(bl, 2 * hs, gw);
    exec.gemm(si, 1.0, first_g.t(), h0.mat(bl, hs), 1.0, dw_rz)?;
    let dan = dgi.at(2 * hs, tb * gw - 2 * hs).mat_strided(tb, hs, gw);
    exec.gemm(si, 1.0, dan.t(), u.mat(tb, hs), 1.0, dw_n.mat(hs, hs))
}
