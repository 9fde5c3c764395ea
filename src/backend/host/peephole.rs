//! The gradient of an LSTM's peephole weights, `weight_peephole` `[3, H]` (rows `i, f, o`), for
//! one layer-direction, from what backward already has after its time loop: the pre-activation
//! gradients `dA` of every step (`dGi`, `[T, B, 4H]`, gates `i, f, g, o`) and the saved cell
//! states (`[T, B, H]`, with `c0` before the first processed step):
//!
//! `dp_i = Σ dA_i ⊙ c_prev`, `dp_f = Σ dA_f ⊙ c_prev`, `dp_o = Σ dA_o ⊙ c`
//! (`c` the cell's new state, before any zoneout of it),
//!
//! summed over every step `t` and row `b` (a row past its length has `dA = 0` and adds nothing;
//! with input_forget `dA_f = 0`). The rows are summed in a fixed order, step `0..T` then row
//! `0..B`, on the calling thread: as the bias gradients (`col_sums`), up to
//! `block` rows (`HostKernels::weight_grad_rows`) in `T` onto the caller's values, past that in
//! f64, rounded once, so that the result never depends on the thread count.

use crate::backend::stack::prev_step;
use crate::element::Float;

/// What [`add_peephole_grad`] reads of one layer-direction.
pub(super) struct PeepholeGrad<'a, T> {
    /// `T`, `B`, `H`.
    pub t: usize,
    pub b: usize,
    pub h: usize,
    /// The direction runs its steps from `T - 1` down to 0.
    pub reverse: bool,
    /// `[T, B, 4H]`: the pre-activation gradients of every step.
    pub dgi: &'a [T],
    /// `[T, B, H]`: the cell state after every step (what the next step reads).
    pub c: &'a [T],
    /// `[T, B, H]`: the cell's new state of every step, which the output gate's peephole
    /// reads: `c` itself but with zoneout of the cell state (`c` is then the zoned one).
    pub c_new: &'a [T],
    /// `[B, H]`: the cell state before the first processed step.
    pub c0: &'a [T],
}

/// Adds the peephole weights' gradient of `g` to `dp` (`[3, H]`).
pub(super) fn add_peephole_grad<T: Float>(g: &PeepholeGrad<'_, T>, dp: &mut [T], block: usize) {
    let (tl, bl, h) = (g.t, g.b, g.h);
    debug_assert_eq!(dp.len(), 3 * h);
    debug_assert_eq!(g.dgi.len(), tl * bl * 4 * h);
    debug_assert_eq!(g.c.len(), tl * bl * h);
    debug_assert_eq!(g.c0.len(), bl * h);
    // Each (step, row) in the fixed order, with its dA row, c_prev and c.
    let rows = (0..tl).flat_map(move |t| {
        let prev = prev_step(t, tl, g.reverse);
        (0..bl).map(move |b| {
            let r = t * bl + b;
            let c_prev = match prev {
                Some(p) => &g.c[(p * bl + b) * h..(p * bl + b + 1) * h],
                None => &g.c0[b * h..(b + 1) * h],
            };
            (&g.dgi[r * 4 * h..(r + 1) * 4 * h], c_prev, &g.c_new[r * h..(r + 1) * h])
        })
    });
    let (dpi, rest) = dp.split_at_mut(h);
    let (dpf, dpo) = rest.split_at_mut(h);
    if tl * bl <= block {
        for (da, cp, c) in rows {
            for j in 0..h {
                dpi[j] += da[j] * cp[j];
                dpf[j] += da[h + j] * cp[j];
                dpo[j] += da[3 * h + j] * c[j];
            }
        }
        return;
    }
    let mut wide: Vec<f64> = dpi.iter().chain(&*dpf).chain(&*dpo).map(|v| v.to_f64()).collect();
    let (wi, rest) = wide.split_at_mut(h);
    let (wf, wo) = rest.split_at_mut(h);
    for (da, cp, c) in rows {
        for j in 0..h {
            wi[j] += (da[j] * cp[j]).to_f64();
            wf[j] += (da[h + j] * cp[j]).to_f64();
            wo[j] += (da[3 * h + j] * c[j]).to_f64();
        }
    }
    for (d, w) in dpi.iter_mut().chain(dpf.iter_mut()).chain(dpo.iter_mut()).zip(wide) {
        *d = T::from_f64(w);
    }
}
