//! Reference GRU step with the reset gate applied before the recurrent matmul (Cho et al. 2014;
//! ONNX `linear_before_reset = 0`, Keras `reset_after = False`; `RnnConfig::linear_before_reset
//! (false)`), for the valid rows of a step. Gates `r, z, n` as the PyTorch form's.
//!
//! Forward, with `ai = W_ih x + b_ih`:
//! `r = σ(ai_r + W_hr h + b_hr)`, `z = σ(ai_z + W_hz h + b_hz)`,
//! `n = tanh(ai_n + W_hn (r ⊙ h) + b_hn)`, `h' = (1 - z) n + z h`. The recurrent product of
//! `n` needs `r`, so the host driver (`backend/host/gru_reset_before.rs`) runs a step in two
//! parts around that product ([`ChoPart`]):
//!
//! - [`ChoPart::BeforeProduct`] ([`forward_gates`]), given `hg`'s `r, z` columns
//!   (`h · W_h{r,z}^T`): `r`, `z`, and `r ⊙ h` into `extra` (the operand of the product,
//!   saved for the weight gradient of `W_hn`);
//! - [`ChoPart::AfterProduct`] ([`forward_output`]), given `hg`'s `n` columns
//!   (`(r ⊙ h) · W_hn^T`): `n` and `h'`.
//!
//! Backward from `dh'`, with `u = r ⊙ h`:
//!
//! - [`ChoPart::BeforeProduct`] ([`backward_output`]): `dn = dh' (1 - z)`, `dz = dh' (h - n)`,
//!   `dan = dn (1 - n²)`, `daz = dz z (1 - z)`; `dgi = [·, daz, dan]`, `dh_direct = dh' z`;
//! - the driver then computes `du = dan · W_hn` into `dgh` (`[B, H]`);
//! - [`ChoPart::AfterProduct`] ([`backward_reset`]): `dr = du ⊙ h`, `dar = dr r (1 - r)`,
//!   `dgi[r] = dar`, `dh_direct += du ⊙ r`.
//!
//! The hidden-side pre-activation gradients equal the input-side ones (`dgi`): `W_hn`'s
//! gradient is `Σ dan^T u` (the saved `extra`), `W_h{r,z}`'s `Σ [dar, daz]^T h`, and
//! `dh = [dar, daz] · W_h{r,z} + dh_direct`. Gate clipping as in [`super::gru`], each gate's
//! whole pre-activation clamped (onnxruntime's `deep_cpu_gru.cc`).
//!
//! A row past its length gets zero gates, `extra` and gradients (the product of its zero
//! `extra` and its zero `dan` is zero too).

use super::gru::{clamp, sigmoid_limits, tanh_limits, threshold, unclamped, ClipLimits};
use crate::backend::host::{row_bounds, CellBackward, CellForward, ChoPart};
use crate::element::Float;

/// A forward part of a step, masked: every valid row through `part`'s maths.
pub(super) fn forward<T: Float>(part: ChoPart, s: CellForward<'_, T>) {
    let n = s.active.len();
    if n == 0 {
        return;
    }
    for row in s.split_rows(&row_bounds(n, n)) {
        match (row.active[0], part) {
            (true, ChoPart::BeforeProduct) => forward_gates(row),
            (true, ChoPart::AfterProduct) => forward_output(row),
            (false, ChoPart::BeforeProduct) => {
                row.gates.fill(T::ZERO);
                row.extra.fill(T::ZERO);
            }
            (false, ChoPart::AfterProduct) => {}
        }
    }
}

/// A backward part of a step, masked as [`forward`].
pub(super) fn backward<T: Float>(part: ChoPart, s: CellBackward<'_, T>) {
    let n = s.active.len();
    if n == 0 {
        return;
    }
    for row in s.split_rows(&row_bounds(n, n)) {
        match (row.active[0], part) {
            (true, ChoPart::BeforeProduct) => backward_output(row),
            (true, ChoPart::AfterProduct) => backward_reset(row),
            (false, ChoPart::BeforeProduct) => {
                row.dgi.fill(T::ZERO);
                row.dh_direct.fill(T::ZERO);
            }
            (false, ChoPart::AfterProduct) => {}
        }
    }
}

/// `hg[k] + b_hh[k]`.
fn hidden<T: Float>(s: &CellForward<'_, T>, k: usize) -> T {
    s.hg[k] + s.b_hh.map_or(T::ZERO, |bh| bh[k])
}

/// Forward, before the product: `r`, `z` and `extra = r ⊙ h` of one valid row (`hg`'s `n`
/// columns are not read).
pub(crate) fn forward_gates<T: Float>(s: CellForward<'_, T>) {
    let h = s.hidden;
    let c = threshold::<T>(s.clip);
    for j in 0..h {
        let r = clamp(s.xg[j] + hidden(&s, j), c).sigmoid();
        let z = clamp(s.xg[h + j] + hidden(&s, h + j), c).sigmoid();
        s.gates[j] = r;
        s.gates[h + j] = z;
        s.extra[j] = r * s.h_prev[j];
    }
}

/// Forward, after the product: `n` and `h'` of one valid row.
pub(crate) fn forward_output<T: Float>(s: CellForward<'_, T>) {
    let h = s.hidden;
    let c = threshold::<T>(s.clip);
    for j in 0..h {
        let z = s.gates[h + j];
        let n = clamp(s.xg[2 * h + j] + hidden(&s, 2 * h + j), c).tanh();
        s.m[j] = (T::ONE - z) * n + z * s.h_prev[j];
        s.gates[2 * h + j] = n;
    }
}

/// Backward, before the product: the `z` and `n` pre-activation gradients and `dh' z` of one
/// valid row.
pub(crate) fn backward_output<T: Float>(s: CellBackward<'_, T>) {
    let h = s.hidden;
    let lim = ClipLimits::<T>::of(s.clip);
    let (sig, th) = (sigmoid_limits(lim), tanh_limits(lim));
    for j in 0..h {
        let (z, n) = (s.gates[h + j], s.gates[2 * h + j]);
        let dh = s.dm[j];
        let dn = dh * (T::ONE - z);
        let dz = dh * (s.h_prev[j] - n);
        s.dgi[h + j] = unclamped(dz * z * (T::ONE - z), z, sig);
        s.dgi[2 * h + j] = unclamped(dn * (T::ONE - n * n), n, th);
        s.dh_direct[j] = dh * z;
    }
}

/// Backward, after the product: from `du = dgh` (`[H]`, the gradient of `r ⊙ h`), the `r`
/// pre-activation gradient and `dh_direct += du ⊙ r` of one valid row.
pub(crate) fn backward_reset<T: Float>(s: CellBackward<'_, T>) {
    let h = s.hidden;
    let sig = sigmoid_limits(ClipLimits::<T>::of(s.clip));
    for j in 0..h {
        let (r, du) = (s.gates[j], s.dgh[j]);
        let dr = du * s.h_prev[j];
        s.dgi[j] = unclamped(dr * r * (T::ONE - r), r, sig);
        s.dh_direct[j] += du * r;
    }
}
