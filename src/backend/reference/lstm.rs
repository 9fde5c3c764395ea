//! Reference LSTM step, forward and backward, for one valid row of the batch (a step with
//! `B = 1`).
//!
//! Forward, gates in PyTorch order `i, f, g, o`, with `a = W_ih x + b_ih + W_hh h + b_hh`:
//! `i = σ(a_i)`, `f = σ(a_f)`, `g = tanh(a_g)`, `o = σ(a_o)`, `c' = f c + i g`,
//! `m = o tanh(c')` (then `h' = m`, or `h' = W_hr m` with a projection, done by the driver).
//!
//! Backward from `dm` and the incoming `dc'`:
//! `do = dm tanh(c')`, `dc' += dm o (1 - tanh²(c'))`, `di = dc' g`, `dg = dc' i`, `df = dc' c`,
//! `dc = dc' f`; the pre-activation gradients multiply by `σ' = s (1 - s)` and
//! `tanh' = 1 - g²`, taken from the saved activations.
//!
//! With options (ONNX `P`, `clip`, `input_forget`; onnxruntime's order of operations), each
//! row takes [`forward_options`] / [`backward_options`] instead (the plain cell's code and
//! bits are untouched):
//!
//! - peepholes `p = [p_i, p_f, p_o]`: `a_i += p_i c`, `a_f += p_f c` (the previous cell state),
//!   `a_o += p_o c'` (the new one), added after the biases;
//! - clip: every pre-activation, peephole term included, is clamped to `[-clip, clip]` before
//!   its activation (`f = 1 - i` is not clipped: it is not a pre-activation);
//! - input_forget: `f = 1 - i` (saved as the `f` gate); the forget gate's weights, biases and
//!   peephole are not read, and their gradients are zero.
//!
//! Backward with options: `dA_o = dm tanh(c') o (1 - o)`, `dc' += dm o (1 - tanh²(c')) +
//! dA_o p_o`; `di = dc' g` (`- dc' c` with input_forget, the path through `f = 1 - i`),
//! `dc = dc' f + dA_i p_i + dA_f p_f`. The gradient through the clamp is zero where it was
//! active. Backward sees only the saved activations, so a gate counts as clipped when its saved
//! activation equals the activation of `clip` or of `-clip` computed by the same function in the
//! same type (which is what the forward stored for a clamped pre-activation, bit for bit): a
//! pre-activation exactly at `±clip` counts as clipped, and so does one inside the interval
//! whose activation rounds to that same value (within about one unit in the last place of the
//! activation of `clip`, where the activation's slope is small). The peephole weights'
//! gradients (`dp_i = Σ dA_i c`, `dp_f = Σ dA_f c`, `dp_o = Σ dA_o c'` over the steps and rows)
//! are the host driver's (`host/peephole.rs`).

use crate::backend::host::{CellBackward, CellForward};
use crate::element::Float;

/// Whether a row of `s` needs the options path: peepholes, a clip or input_forget.
fn has_options<T>(peephole: Option<&[T]>, clip: f64, input_forget: bool) -> bool {
    peephole.is_some() || clip > 0.0 || input_forget
}

/// `a` clamped to `[-c, c]` when there is a clip `c`; NaN stays NaN.
pub(super) fn clamp<T: Float>(a: T, clip: Option<T>) -> T {
    #[cfg(any(test, feature = "testkit"))]
    if let Some(c) = clip {
        let (a, c) = (a.to_f64(), c.to_f64());
        crate::testkit::conditioning::note_kink((a - c).abs().min((a + c).abs()));
    }
    match clip {
        Some(c) if a > c => c,
        Some(c) if a < -c => -c,
        _ => a,
    }
}

/// The clip threshold in `T`, if any.
pub(super) fn threshold<T: Float>(clip: f64) -> Option<T> {
    (clip > 0.0).then(|| T::from_f64(clip))
}

/// The saved activations a clamped pre-activation gives through `act`: `[act(c), act(-c)]`
/// (none without a clip). A saved activation equal to one of them counts as clipped.
pub(super) fn clipped_values<T: Float>(clip: Option<T>, act: fn(T) -> T) -> Option<[T; 2]> {
    clip.map(|c| [act(c), act(-c)])
}

/// `d` where the activation `s` was not clipped (see [`clipped_values`]), else 0.
pub(super) fn unclipped<T: Float>(d: T, s: T, clipped: Option<[T; 2]>) -> T {
    match clipped {
        Some([hi, lo]) if s == hi || s == lo => T::ZERO,
        _ => d,
    }
}

pub(super) fn forward<T: Float>(r: CellForward<'_, T>) {
    if has_options(r.peephole, r.clip, r.input_forget) {
        return forward_options(r);
    }
    let h = r.hidden;
    let pre = |k: usize| r.xg[k] + r.hg[k] + r.b_hh.map_or(T::ZERO, |bh| bh[k]);
    for j in 0..h {
        let i = pre(j).sigmoid();
        let f = pre(h + j).sigmoid();
        let g = pre(2 * h + j).tanh();
        let o = pre(3 * h + j).sigmoid();
        let cj = f * r.c_prev[j] + i * g;
        r.c[j] = cj;
        r.m[j] = o * cj.tanh();
        r.gates[j] = i;
        r.gates[h + j] = f;
        r.gates[2 * h + j] = g;
        r.gates[3 * h + j] = o;
    }
}

pub(super) fn backward<T: Float>(r: CellBackward<'_, T>) {
    if has_options(r.peephole, r.clip, r.input_forget) {
        return backward_options(r);
    }
    let h = r.hidden;
    for j in 0..h {
        let (i, f, g, o) = (r.gates[j], r.gates[h + j], r.gates[2 * h + j], r.gates[3 * h + j]);
        let tc = r.c[j].tanh();
        let dm = r.dm[j];
        let d_o = dm * tc;
        let dc = r.dc[j] + dm * o * (T::ONE - tc * tc);
        let di = dc * g;
        let dg = dc * i;
        let df = dc * r.c_prev[j];
        r.dc[j] = dc * f;
        r.dgi[j] = di * i * (T::ONE - i);
        r.dgi[h + j] = df * f * (T::ONE - f);
        r.dgi[2 * h + j] = dg * (T::ONE - g * g);
        r.dgi[3 * h + j] = d_o * o * (T::ONE - o);
    }
    r.dgh.copy_from_slice(r.dgi);
}

/// The forward step with peepholes, clip and/or input_forget (see the module docs).
pub(super) fn forward_options<T: Float>(r: CellForward<'_, T>) {
    let h = r.hidden;
    let clip = threshold::<T>(r.clip);
    let pre = |k: usize| r.xg[k] + r.hg[k] + r.b_hh.map_or(T::ZERO, |bh| bh[k]);
    // `a + p_k c` for the peephole row `k` (0: i, 1: f, 2: o).
    let peep = |a: T, k: usize, j: usize, c: T| r.peephole.map_or(a, |p| a + p[k * h + j] * c);
    for j in 0..h {
        let cp = r.c_prev[j];
        let i = clamp(peep(pre(j), 0, j, cp), clip).sigmoid();
        let f = if r.input_forget { T::ONE - i } else { clamp(peep(pre(h + j), 1, j, cp), clip).sigmoid() };
        let g = clamp(pre(2 * h + j), clip).tanh();
        let cj = f * cp + i * g;
        let o = clamp(peep(pre(3 * h + j), 2, j, cj), clip).sigmoid();
        r.c[j] = cj;
        r.m[j] = o * cj.tanh();
        r.gates[j] = i;
        r.gates[h + j] = f;
        r.gates[2 * h + j] = g;
        r.gates[3 * h + j] = o;
    }
}

/// The backward step with peepholes, clip and/or input_forget (see the module docs).
pub(super) fn backward_options<T: Float>(r: CellBackward<'_, T>) {
    let h = r.hidden;
    let clip = threshold::<T>(r.clip);
    let sig = clipped_values(clip, T::sigmoid);
    let tnh = clipped_values(clip, T::tanh);
    let p = |k: usize, j: usize| r.peephole.map_or(T::ZERO, |p| p[k * h + j]);
    for j in 0..h {
        let (i, f, g, o) = (r.gates[j], r.gates[h + j], r.gates[2 * h + j], r.gates[3 * h + j]);
        let cp = r.c_prev[j];
        let tc = r.c[j].tanh();
        let dm = r.dm[j];
        let dao = unclipped(dm * tc * o * (T::ONE - o), o, sig);
        let dc = r.dc[j] + dm * o * (T::ONE - tc * tc) + dao * p(2, j);
        let df = dc * cp;
        let di = if r.input_forget { dc * g - df } else { dc * g };
        let dai = unclipped(di * i * (T::ONE - i), i, sig);
        let daf = if r.input_forget { T::ZERO } else { unclipped(df * f * (T::ONE - f), f, sig) };
        let dag = unclipped(dc * i * (T::ONE - g * g), g, tnh);
        r.dc[j] = dc * f + dai * p(0, j) + daf * p(1, j);
        r.dgi[j] = dai;
        r.dgi[h + j] = daf;
        r.dgi[2 * h + j] = dag;
        r.dgi[3 * h + j] = dao;
    }
    r.dgh.copy_from_slice(r.dgi);
}
