//! The cell options on the per-step path (`RnnConfig`'s `peephole`, `gate_clip`,
//! `input_forget`): which entry a step launches, and its arguments.
//!
//! The plain cells keep their entries (`lstm_forward_step`, ...), whose code the options do not
//! touch; a layer with an option launches the entry of the same template compiled with the
//! option's code (`lstm_*_step_opt`, `gru_*_step_clip`, `rnn_*_step_clip`), chosen once per
//! layer-direction. Each entry's arguments are the plain entry's and the option's, so the
//! driver fills the plain struct and these functions add the rest.

use super::super::kernels as k;
use crate::backend::cell::Cell;

/// The LSTM options of `cell` beside the plain cell: peepholes, gate clip, coupled input-forget.
pub(super) fn lstm_has_options(cell: &Cell) -> bool {
    cell.peephole || cell.clip > 0.0 || cell.input_forget
}

/// The gate clip as the kernels take it (f32, 0 for none).
pub(super) fn clip(cell: &Cell) -> f32 {
    cell.clip as f32
}

/// `lstm_forward_step_opt`'s arguments: `a`'s and the options (`peephole`: the `[3, H]`
/// weights' address, 0 for none).
pub(in crate::backend::cuda) fn lstm_forward(a: k::LstmForwardStepArgs, cell: &Cell, peephole: u64) -> k::LstmForwardStepOptArgs {
    let k::LstmForwardStepArgs { batch, hidden, step, lengths, xg, hg, b_ih, b_hh, c_prev, keep, gates, c, m, y, y_stride } = a;
    k::LstmForwardStepOptArgs {
        batch,
        hidden,
        step,
        lengths,
        xg,
        hg,
        b_ih,
        b_hh,
        c_prev,
        keep,
        gates,
        c,
        m,
        y,
        y_stride,
        peephole,
        clip: clip(cell),
        input_forget: cell.input_forget as i32,
    }
}

/// `lstm_backward_step_opt`'s arguments: `a`'s, the options and the peephole gradients'
/// per-row accumulator `dpeep` `[B, 3H]` (0 for none).
pub(in crate::backend::cuda) fn lstm_backward(
    a: k::LstmBackwardStepArgs,
    cell: &Cell,
    peephole: u64,
    dpeep: u64,
) -> k::LstmBackwardStepOptArgs {
    let k::LstmBackwardStepArgs { batch, hidden, step, lengths, gates, c, c_prev, dm_in, dy, dy_stride, carry, dc, dg } = a;
    k::LstmBackwardStepOptArgs {
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
        clip: clip(cell),
        input_forget: cell.input_forget as i32,
        dpeep,
    }
}

/// `gru_forward_step_clip`'s arguments.
pub(super) fn gru_forward(a: k::GruForwardStepArgs, cell: &Cell) -> k::GruForwardStepClipArgs {
    let k::GruForwardStepArgs { batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, extra, h, y, y_stride } = a;
    k::GruForwardStepClipArgs { batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, extra, h, y, y_stride, clip: clip(cell) }
}

/// `gru_backward_step_clip`'s arguments.
pub(super) fn gru_backward(a: k::GruBackwardStepArgs, cell: &Cell) -> k::GruBackwardStepClipArgs {
    let k::GruBackwardStepArgs { batch, hidden, step, lengths, gates, extra, h_prev, dy, dy_stride, carry, dgi, dgh } = a;
    k::GruBackwardStepClipArgs { batch, hidden, step, lengths, gates, extra, h_prev, dy, dy_stride, carry, dgi, dgh, clip: clip(cell) }
}

/// `rnn_*_forward_step_clip`'s arguments.
pub(super) fn rnn_forward(a: k::RnnForwardStepArgs, cell: &Cell) -> k::RnnForwardStepClipArgs {
    let k::RnnForwardStepArgs { batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, h, y, y_stride } = a;
    k::RnnForwardStepClipArgs { batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, h, y, y_stride, clip: clip(cell) }
}

/// `rnn_*_backward_step_clip`'s arguments.
pub(super) fn rnn_backward(a: k::RnnBackwardStepArgs, cell: &Cell) -> k::RnnBackwardStepClipArgs {
    let k::RnnBackwardStepArgs { batch, hidden, step, lengths, gates, dy, dy_stride, carry, dg } = a;
    k::RnnBackwardStepClipArgs { batch, hidden, step, lengths, gates, dy, dy_stride, carry, dg, clip: clip(cell) }
}
