//! Reference Elman RNN step: `h' = act(W_ih x + b_ih + W_hh h + b_hh)`, `act` = tanh or relu.
//!
//! Backward: `da = dh' · act'`, with `tanh' = 1 - h'²` and `relu' = [h' > 0]` (0 at 0, as in
//! PyTorch), both taken from the saved output.

use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

/// The activation of a vanilla RNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    Tanh,
    Relu,
}

pub(crate) fn forward<T: Float>(act: Act, s: CellForward<'_, T>) {
    let h = s.hidden;
    for (b, &active) in s.active.iter().enumerate() {
        let gates = &mut s.gates[b * h..(b + 1) * h];
        if !active {
            gates.fill(T::ZERO);
            continue;
        }
        for j in 0..h {
            let a = s.xg[b * h + j] + s.hg[b * h + j] + s.b_hh.map_or(T::ZERO, |bh| bh[j]);
            let v = match act {
                Act::Tanh => a.tanh(),
                Act::Relu => a.relu(),
            };
            gates[j] = v;
            s.m[b * h + j] = v;
        }
    }
}

pub(crate) fn backward<T: Float>(act: Act, s: CellBackward<'_, T>) {
    let h = s.hidden;
    for (b, &active) in s.active.iter().enumerate() {
        let dgi = &mut s.dgi[b * h..(b + 1) * h];
        let dgh = &mut s.dgh[b * h..(b + 1) * h];
        s.dh_direct[b * h..(b + 1) * h].fill(T::ZERO);
        if !active {
            dgi.fill(T::ZERO);
            dgh.fill(T::ZERO);
            continue;
        }
        for (j, dg) in dgi.iter_mut().enumerate() {
            let v = s.gates[b * h + j];
            let d = match act {
                Act::Tanh => T::ONE - v * v,
                Act::Relu => {
                    if v > T::ZERO {
                        T::ONE
                    } else {
                        T::ZERO
                    }
                }
            };
            *dg = s.dm[b * h + j] * d;
        }
        dgh.copy_from_slice(dgi);
    }
}
