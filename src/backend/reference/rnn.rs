//! Reference Elman RNN step, for one valid row of the batch (a step with `B = 1`):
//! `h' = act(W_ih x + b_ih + W_hh h + b_hh)`, `act` = tanh or relu.
//!
//! Backward: `da = dh' · act'`, with `tanh' = 1 - h'²` and `relu' = [h' > 0]` (0 at 0, as in
//! PyTorch), both taken from the saved output.

use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

/// The activation of a vanilla RNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Act {
    Tanh,
    Relu,
}

pub(super) fn forward<T: Float>(act: Act, s: CellForward<'_, T>) {
    for j in 0..s.hidden {
        let a = s.xg[j] + s.hg[j] + s.b_hh.map_or(T::ZERO, |bh| bh[j]);
        let v = match act {
            Act::Tanh => a.tanh(),
            Act::Relu => a.relu(),
        };
        s.gates[j] = v;
        s.m[j] = v;
    }
}

pub(super) fn backward<T: Float>(act: Act, s: CellBackward<'_, T>) {
    for (j, dg) in s.dgi.iter_mut().enumerate() {
        let v = s.gates[j];
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
        *dg = s.dm[j] * d;
    }
    s.dgh.copy_from_slice(s.dgi);
}
