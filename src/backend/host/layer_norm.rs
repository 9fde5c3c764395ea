//! Layer norm (Haste's `LayerNormLSTM`, `LayerNormGRU`) on the host: the row normalisation
//! and its backward, the specification's arithmetic (f64 sums in index order) that
//! `HostKernels::layer_norm_rows` and `HostKernels::layer_norm_rows_backward` run by default.
//!
//! A row `v` of width `w`: `μ = Σv/w`, `var = Σ(v − μ)²/w` (biased, two passes),
//! `rstd = 1/sqrt(var + ε)`, `x̂ = (v − μ)·rstd`, `LN(v; γ, β) = γ⊙x̂ + β`. Backward, given `dy`:
//! `g = γ⊙dy`, `dv = rstd·(g − mean(g) − x̂·mean(g⊙x̂))`.

use super::direction::{split_rows_mut, BlockWork};
use super::reserve::Workspace;
use super::{CellBackward, HostKernels, Pass};
use crate::backend::cell::Cell;
use crate::element::Float;
use crate::error::Result;

/// The `ε` under the square root of every layer norm (Haste's).
pub(crate) const EPS: f64 = 1e-5;

/// Layer-normalises each row (`w` wide; `x.len() / w` rows) of `x` in place (see
/// `HostKernels::layer_norm_rows`): `μ`, the variance and `rstd` from f64 sums in index order,
/// `x̂` rounded once to `T`, then `γ·x̂ + β` in `T` from the rounded `x̂` (so that backward,
/// which sees the saved `x̂`, recomputes the same output: the LSTM's `γ_c·ĉ + β_c`).
pub(crate) fn layer_norm_rows<T: Float>(
    w: usize,
    x: &mut [T],
    gamma: &[T],
    beta: Option<&[T]>,
    mut xhat: Option<&mut [T]>,
    mut rstd: Option<&mut [T]>,
) {
    if w == 0 {
        return;
    }
    let gamma = &gamma[..w];
    let beta = beta.map(|b| &b[..w]);
    for (r, row) in x.chunks_exact_mut(w).enumerate() {
        let mut sum = 0.0f64;
        for v in row.iter() {
            sum += v.to_f64();
        }
        let mean = sum / w as f64;
        let mut sq = 0.0f64;
        for v in row.iter() {
            let d = v.to_f64() - mean;
            sq += d * d;
        }
        let rs = 1.0 / (sq / w as f64 + EPS).sqrt();
        // The amplification of the rounding of `x` in `x̂` (none for a row of one value,
        // whose `x − μ` is exactly 0).
        #[cfg(any(test, feature = "testkit"))]
        if w > 1 {
            crate::testkit::conditioning::note_ln_amplification(rs * row.iter().fold(0.0f64, |m, v| m.max(v.to_f64().abs())));
        }
        if let Some(out) = rstd.as_deref_mut() {
            out[r] = T::from_f64(rs);
        }
        let mut xh_row = xhat.as_deref_mut().map(|xh| &mut xh[r * w..(r + 1) * w]);
        for (j, v) in row.iter_mut().enumerate() {
            let xh = T::from_f64((v.to_f64() - mean) * rs);
            if let Some(xh_row) = xh_row.as_deref_mut() {
                xh_row[j] = xh;
            }
            *v = match beta {
                Some(b) => gamma[j] * xh + b[j],
                None => gamma[j] * xh,
            };
        }
    }
}

/// Backward of [`layer_norm_rows`] for each row (see `HostKernels::layer_norm_rows_backward`):
/// `dx = rstd·(g − mean(g) − x̂·mean(g⊙x̂))`, `g = γ⊙dy`; f64 sums in index order.
pub(crate) fn layer_norm_rows_backward<T: Float>(w: usize, dy: &[T], gamma: &[T], xhat: &[T], rstd: &[T], dx: &mut [T]) {
    if w == 0 {
        return;
    }
    let gamma = &gamma[..w];
    for (r, ((dy, xh), dx)) in dy.chunks_exact(w).zip(xhat.chunks_exact(w)).zip(dx.chunks_exact_mut(w)).enumerate() {
        let mut sg = 0.0f64;
        let mut sgx = 0.0f64;
        for j in 0..w {
            let g = gamma[j].to_f64() * dy[j].to_f64();
            sg += g;
            sgx += g * xh[j].to_f64();
        }
        let mg = sg / w as f64;
        let mgx = sgx / w as f64;
        let rs = rstd[r].to_f64();
        for j in 0..w {
            let g = gamma[j].to_f64() * dy[j].to_f64();
            dx[j] = T::from_f64(rs * (g - mg - xh[j].to_f64() * mgx));
        }
    }
}

/// Layer-normalises the rows of `x` (`w` wide) in the blocks of rows the backend runs in
/// parallel in forward (each row's arithmetic is the same whatever the cut), saving `x̂` and `rstd` where
/// given (each sized for all the rows, or empty: not saved).
pub(super) fn layer_norm_blocks<T: Float, K: HostKernels<T>>(
    k: &K,
    w: usize,
    x: &mut [T],
    gamma: &[T],
    beta: Option<&[T]>,
    xhat: &mut [T],
    rstd: &mut [T],
) {
    let rows = x.len().checked_div(w).unwrap_or(0);
    let cuts = k.row_blocks(rows, Pass::Forward);
    let parts = BlockWork::new(
        split_rows_mut(x, rows, &cuts).into_iter().zip(split_rows_mut(xhat, rows, &cuts)).zip(split_rows_mut(rstd, rows, &cuts)),
    );
    let serial = k.serial();
    k.for_blocks(parts.len(), &|i| {
        if let Some(((x, xh), rs)) = parts.take(i) {
            let xh = (!xh.is_empty()).then_some(xh);
            let rs = (!rs.is_empty()).then_some(rs);
            serial.layer_norm_rows(w, x, gamma, beta, xh, rs);
        }
    });
}

/// Rows per partial of [`layer_norm_backward_summed`]'s column sums: a constant, so that the
/// sums never depend on how the rows are cut across threads.
const SUM_ROWS: usize = 32;

/// Column sums of a layer norm's `dy` taken by [`layer_norm_backward_summed`] while each row is
/// in cache: for each chunk of [`SUM_ROWS`] rows, from zero in row order in `T`, kind 0 `Σ dy`,
/// kind 1 `Σ dy⊙x̂`, kind 2 `Σ dy⊙x₂` (another normalisation's `x̂` under the same `dy`: the
/// recurrent side's of a cell whose `dGh` is its `dGi`). [`add_to`](Self::add_to) adds a
/// kind's chunks onto a gradient in f64, in chunk order, rounded once.
pub(super) struct RowPartials<T> {
    data: Vec<T>,
    kinds: usize,
    w: usize,
}

impl<T: Float> RowPartials<T> {
    /// `acc[j] += Σ_chunks partial[chunk][kind][j]` (see the [type docs](Self)).
    pub fn add_to(&self, kind: usize, acc: &mut [T]) {
        if self.w == 0 || kind >= self.kinds {
            return;
        }
        let mut wide: Vec<f64> = acc.iter().map(|v| v.to_f64()).collect();
        for chunk in self.data.chunks_exact(self.kinds * self.w) {
            for (s, &p) in wide.iter_mut().zip(&chunk[kind * self.w..(kind + 1) * self.w]) {
                *s += p.to_f64();
            }
        }
        for (a, s) in acc.iter_mut().zip(wide) {
            *a = T::from_f64(s);
        }
    }

    /// The buffer, for the workspace.
    pub fn into_buffer(self) -> Vec<T> {
        self.data
    }
}

/// The length of the [`RowPartials`] buffer of [`layer_norm_backward_summed`] over `rows` rows
/// of `w` with `kinds` kinds of sums (2, or 3 with a second normalised operand): what the
/// workspace lends for it, so that the same buffer serves it every call.
pub(super) fn partials_len(rows: usize, w: usize, kinds: usize) -> usize {
    rows.div_ceil(SUM_ROWS) * kinds * w
}

/// Backward of [`layer_norm_blocks`]: `dx = LNback(dy)` row by row, chunks of [`SUM_ROWS`]
/// rows split across the backend's threads; with `sums`, also the [`RowPartials`] of `dy`
/// (kinds 0 and 1, and 2 with `x2`), taken from each row while it is in cache (the rows are
/// not read again for the gain and bias gradients). `partials` is the buffer they are written
/// into (any length; grown as needed).
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_backward_summed<T: Float, K: HostKernels<T>>(
    k: &K,
    w: usize,
    dy: &[T],
    gamma: &[T],
    xhat: &[T],
    rstd: &[T],
    dx: &mut [T],
    sums: Option<(Option<&[T]>, Vec<T>)>,
) -> Option<RowPartials<T>> {
    if w == 0 {
        return None;
    }
    let rows = dy.len() / w;
    let chunks = rows.div_ceil(SUM_ROWS);
    let (x2, mut data) = match sums {
        Some((x2, data)) => (x2, Some(data)),
        None => (None, None),
    };
    let kinds = if x2.is_some() { 3 } else { 2 };
    if let Some(d) = data.as_mut() {
        d.clear();
        d.resize(partials_len(rows, w, kinds), T::ZERO);
    }
    let parts = k.threads().clamp(1, chunks.max(1));
    let bounds = super::row_bounds(chunks, parts);
    let row_cuts: Vec<usize> = bounds.iter().map(|&c| (c * SUM_ROWS).min(rows)).collect();
    let part_sums: Vec<Option<&mut [T]>> = match data.as_mut() {
        Some(d) => split_rows_mut(&mut d[..], chunks, &bounds).into_iter().map(Some).collect(),
        None => bounds.windows(2).map(|_| None).collect(),
    };
    let work = BlockWork::new(split_rows_mut(dx, rows, &row_cuts).into_iter().zip(part_sums).enumerate());
    let serial = k.serial();
    k.for_blocks(work.len(), &|i| {
        let Some((i, (dx, mut part))) = work.take(i) else { return };
        let first = row_cuts[i];
        for (r, dxr) in dx.chunks_exact_mut(w).enumerate() {
            let row = first + r;
            let span = row * w..(row + 1) * w;
            serial.layer_norm_rows_backward(w, &dy[span.clone()], gamma, &xhat[span.clone()], &rstd[row..row + 1], dxr);
            let Some(part) = part.as_deref_mut() else { continue };
            let chunk = (row - first) / SUM_ROWS;
            let acc = &mut part[chunk * kinds * w..(chunk + 1) * kinds * w];
            let (s_dy, rest) = acc.split_at_mut(w);
            let (s_x, s_x2) = rest.split_at_mut(w);
            let g = &dy[span.clone()];
            for ((s, d), (&gv, &xv)) in s_dy.iter_mut().zip(s_x.iter_mut()).zip(g.iter().zip(&xhat[span.clone()])) {
                *s += gv;
                *d += gv * xv;
            }
            if let Some(x2) = x2 {
                for ((s, &gv), &xv) in s_x2.iter_mut().zip(g).zip(&x2[span.clone()]) {
                    *s += gv * xv;
                }
            }
        }
    });
    data.map(|data| RowPartials { data, kinds, w })
}

/// The layer-normalised LSTM's output of a step, after the cell kernel wrote the gates and the
/// raw `c` (`[n, H]`): `ĉ = normalise(c)`, `s = γ_c⊙ĉ + β_c`, `m = o⊙tanh(s)`, overwriting the
/// `m` the kernel wrote (`o·tanh(c)`). Saves `ĉ` and `rstd` into `ln_c` and `rstd_c`.
#[allow(clippy::too_many_arguments)]
pub(super) fn lstm_output<T: Float, K: HostKernels<T>>(
    k: &K,
    h: usize,
    gamma_c: &[T],
    beta_c: &[T],
    gates: &[T],
    c: &[T],
    ln_c: &mut [T],
    rstd_c: &mut [T],
    m: &mut [T],
) {
    m.copy_from_slice(c);
    k.layer_norm_rows(h, m, gamma_c, Some(beta_c), Some(ln_c), Some(rstd_c));
    k.lstm_ln_output(h, gates, m);
}

/// `m ← o⊙tanh(m)` on each row (`[n, H]`; `m` holds `s = γ_c⊙ĉ + β_c`), `o` the last of the
/// four gates of the row's `gates` (`[n, 4·H]`): the default of `HostKernels::lstm_ln_output`.
pub(crate) fn lstm_ln_output<T: Float>(h: usize, gates: &[T], m: &mut [T]) {
    for (mr, g) in m.chunks_exact_mut(h.max(1)).zip(gates.chunks_exact((4 * h).max(1))) {
        for (mv, &o) in mr.iter_mut().zip(&g[3 * h..]) {
            *mv = o * mv.tanh();
        }
    }
}

/// The pointwise pre-pass of the layer-normalised LSTM's backward step on a block of `n` rows
/// (`HostKernels::lstm_ln_backward`): every slice `[n, H]` but `gates` and `d_o` (`[n, 4·H]`)
/// and `active` (`[n]`).
pub(crate) struct LstmLnBack<'a, T> {
    pub active: &'a [bool],
    pub gamma_c: &'a [T],
    pub beta_c: &'a [T],
    /// `ĉ` saved by forward.
    pub ln_c: &'a [T],
    /// The step's gates, `o` the last of each row's four.
    pub gates: &'a [T],
    /// The gradient w.r.t. the output `m`.
    pub dm: &'a [T],
    /// Out: `s = γ_c⊙ĉ + β_c` (every row).
    pub s: &'a mut [T],
    /// Out: `dŝ = dm⊙o⊙(1 − τ²)`, `τ = tanh(s)` (zero on inactive rows).
    pub dsh: &'a mut [T],
    /// Out, if given: the `o` columns of the active rows, `dm⊙τ⊙o(1 − o)` (the rest untouched).
    pub d_o: Option<&'a mut [T]>,
}

/// The default of `HostKernels::lstm_ln_backward`, the reference's arithmetic.
pub(crate) fn lstm_ln_backward<T: Float>(h: usize, r: LstmLnBack<'_, T>) {
    let gh = 4 * h;
    let LstmLnBack { active, gamma_c, beta_c, ln_c, gates, dm, s: s_out, dsh, mut d_o } = r;
    for (b, &act) in active.iter().enumerate() {
        for j in 0..h {
            let r = b * h + j;
            let s = gamma_c[j] * ln_c[r] + beta_c[j];
            s_out[r] = s;
            dsh[r] = if act {
                let tau = s.tanh();
                let o = gates[b * gh + 3 * h + j];
                if let Some(d_o) = d_o.as_deref_mut() {
                    d_o[b * gh + 3 * h + j] = dm[r] * tau * o * (T::ONE - o);
                }
                dm[r] * o * (T::ONE - tau * tau)
            } else {
                T::ZERO
            };
        }
    }
}

/// Scratch of a block of rows for [`lstm_step_backward`], `[n, H]` and `[n, 4·H]` buffers.
pub(super) struct LstmBackScratch<T> {
    /// `s = γ_c⊙ĉ + β_c`, then the gradient w.r.t. `c` through the normalisation.
    s: Vec<T>,
    /// Zeros, the `dm` of the second kernel call.
    zeros: Vec<T>,
    /// The first kernel call's `dc`, `dgi`, `dgh` and `dh_direct`.
    dc: Vec<T>,
    dgi: Vec<T>,
    dgh: Vec<T>,
    dh_direct: Vec<T>,
}

impl<T: Float> LstmBackScratch<T> {
    /// The scratch of a block of `n` rows, its buffers (zeros) lent by `work`: a training loop
    /// that reuses its reserve allocates them once.
    pub(super) fn new(n: usize, h: usize, work: &Workspace<T>) -> Result<Self> {
        let what = "the layer-normalised LSTM's scratch of a block of rows";
        let z = |w: usize| work.zeroed(n.saturating_mul(w), what);
        Ok(LstmBackScratch { s: z(h)?, zeros: z(h)?, dc: z(h)?, dgi: z(4 * h)?, dgh: z(4 * h)?, dh_direct: z(h)? })
    }

    /// Returns the buffers to `work`.
    pub(super) fn give_back(self, work: &Workspace<T>) {
        work.give([self.s, self.zeros, self.dc, self.dgi, self.dgh, self.dh_direct]);
    }
}

/// What the layer-normalised LSTM's backward step reads of its cell output, for a block of
/// rows (`[n, H]` each but `rstd_c`, `[n]`).
pub(super) struct LstmLnRows<'a, T> {
    pub gamma_c: &'a [T],
    pub beta_c: &'a [T],
    /// `ĉ` saved by forward.
    pub ln_c: &'a [T],
    pub rstd_c: &'a [T],
    /// Out: `dŝ = dm⊙o⊙(1 − τ²)`, the gradient w.r.t. `s` (zero on inactive rows).
    pub dsh: &'a mut [T],
}

/// The backward step of the layer-normalised LSTM, with the backend's own cell kernel and its
/// plain kernels untouched: `τ = tanh(s)`, `s = γ_c⊙ĉ + β_c` recomputed from the saved `ĉ`;
///
/// 1. with a clip, the kernel on the step with `s` in the place of `c` and a scratch `dc`: its
///    `o` gradient is then `dm⊙τ⊙o(1−o)` (clipped as the backend's forward clipped it: a saved
///    activation is compared with the backend's own activation of `±clip`), the only part of
///    that call kept; without a clip, `dm⊙τ⊙o(1−o)` computed here;
/// 2. `dc += LNback(dŝ; γ_c, ĉ, rstd_c) + dA_o⊙p_o` (the peephole of `o`, if any) on the
///    active rows, `dŝ = dm⊙o⊙(1 − τ²)`;
/// 3. the kernel on the step with `dm = 0`: every gradient from `dc` as a plain step, exactly
///    (the `dm` terms it adds are zeros); then its `o` gradient is replaced by step 1's, in
///    `dgi` and `dgh` (which the kernel writes equal).
pub(super) fn lstm_step_backward<T: Float, K: HostKernels<T>>(
    k: &K,
    cell: &Cell,
    step: CellBackward<'_, T>,
    ln: LstmLnRows<'_, T>,
    sc: &mut LstmBackScratch<T>,
) {
    let h = step.hidden;
    let gh = 4 * h;
    let n = step.active.len();
    // Without a clip, step 1's `o` gradient is computed here, in the reference's order.
    let unclipped = step.clip <= 0.0;
    k.lstm_ln_backward(
        h,
        LstmLnBack {
            active: step.active,
            gamma_c: ln.gamma_c,
            beta_c: ln.beta_c,
            ln_c: ln.ln_c,
            gates: step.gates,
            dm: step.dm,
            s: &mut sc.s,
            dsh: &mut *ln.dsh,
            d_o: unclipped.then_some(&mut sc.dgi[..]),
        },
    );
    if !unclipped {
        sc.dc.fill(T::ZERO);
        k.cell_step_backward(
            cell,
            CellBackward {
                active: step.active,
                hidden: h,
                peephole: step.peephole,
                clip: step.clip,
                input_forget: step.input_forget,
                gates: step.gates,
                extra: step.extra,
                c: &sc.s,
                c_prev: step.c_prev,
                h_prev: step.h_prev,
                dm: step.dm,
                dc: &mut sc.dc,
                dgi: &mut sc.dgi,
                dgh: &mut sc.dgh,
                dh_direct: &mut sc.dh_direct,
            },
        );
    }
    // The gradient w.r.t. c through the normalisation, into the scratch `dc`.
    k.layer_norm_rows_backward(h, ln.dsh, ln.gamma_c, ln.ln_c, ln.rstd_c, &mut sc.dc);
    for b in (0..n).filter(|&b| step.active[b]) {
        for j in 0..h {
            let r = b * h + j;
            let dc = step.dc[r] + sc.dc[r];
            step.dc[r] = match step.peephole {
                Some(p) => dc + sc.dgi[b * gh + 3 * h + j] * p[2 * h + j],
                None => dc,
            };
        }
    }
    let CellBackward { dgi, dgh, .. } = step;
    let (dgi_ptr, dgh_ptr) = (dgi, dgh);
    k.cell_step_backward(
        cell,
        CellBackward {
            active: step.active,
            hidden: h,
            peephole: step.peephole,
            clip: step.clip,
            input_forget: step.input_forget,
            gates: step.gates,
            extra: step.extra,
            c: step.c,
            c_prev: step.c_prev,
            h_prev: step.h_prev,
            dm: &sc.zeros,
            dc: step.dc,
            dgi: &mut *dgi_ptr,
            dgh: &mut *dgh_ptr,
            dh_direct: step.dh_direct,
        },
    );
    // The kernel wrote `dgh = dgi` (zero on the inactive rows): only the
    // `o` gradients change, in both.
    for b in (0..n).filter(|&b| step.active[b]) {
        let o = b * gh + 3 * h..(b + 1) * gh;
        dgi_ptr[o.clone()].copy_from_slice(&sc.dgi[o.clone()]);
        dgh_ptr[o.clone()].copy_from_slice(&sc.dgi[o]);
    }
}
