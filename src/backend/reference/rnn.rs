//! Reference Elman RNN step, for one valid row of the batch (a step with `B = 1`):
//! `h' = act(W_ih x + b_ih + W_hh h + b_hh)`, `act` = tanh or relu.
//!
//! Backward: `da = dh' · act'`, with `tanh' = 1 - h'²` and `relu' = [h' > 0]` (0 at 0, as in
//! PyTorch), both taken from the saved output.
//!
//! With a clip (ONNX `clip`), the pre-activation is clamped to `[-clip, clip]` before the
//! activation, and the gradient through the clamp is zero where it was active: where the
//! saved output equals `act(clip)` or `act(-clip)` (the rule of `lstm.rs`; for relu exactly
//! where `a ≥ clip`, since `relu(clip) = clip` is reached by no other input).

use super::lstm::{clamp, clipped_values, threshold, unclipped};
use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

/// The activation of a vanilla RNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Act {
    Tanh,
    Relu,
}

impl Act {
    fn apply<T: Float>(self, a: T) -> T {
        #[cfg(any(test, feature = "testkit"))]
        if self == Act::Relu {
            crate::testkit::conditioning::note_kink(a.to_f64().abs());
        }
        match self {
            Act::Tanh => a.tanh(),
            Act::Relu => a.relu(),
        }
    }
}

pub(super) fn forward<T: Float>(act: Act, s: CellForward<'_, T>) {
    if s.clip > 0.0 {
        return forward_clipped(act, s);
    }
    for j in 0..s.hidden {
        let a = s.xg[j] + s.hg[j] + s.b_hh.map_or(T::ZERO, |bh| bh[j]);
        let v = act.apply(a);
        s.gates[j] = v;
        s.m[j] = v;
    }
}

pub(super) fn backward<T: Float>(act: Act, s: CellBackward<'_, T>) {
    if s.clip > 0.0 {
        return backward_clipped(act, s);
    }
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

/// The forward step with a clip.
fn forward_clipped<T: Float>(act: Act, s: CellForward<'_, T>) {
    let clip = threshold::<T>(s.clip);
    for j in 0..s.hidden {
        let a = s.xg[j] + s.hg[j] + s.b_hh.map_or(T::ZERO, |bh| bh[j]);
        let v = act.apply(clamp(a, clip));
        s.gates[j] = v;
        s.m[j] = v;
    }
}

/// The backward step with a clip.
fn backward_clipped<T: Float>(act: Act, s: CellBackward<'_, T>) {
    let clipped = match act {
        Act::Tanh => clipped_values(threshold::<T>(s.clip), T::tanh),
        Act::Relu => clipped_values(threshold::<T>(s.clip), T::relu),
    };
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
        *dg = unclipped(s.dm[j] * d, v, clipped);
    }
    s.dgh.copy_from_slice(s.dgi);
}
