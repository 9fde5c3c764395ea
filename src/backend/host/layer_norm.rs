//! Layer norm (Haste's `LayerNormLSTM`, `LayerNormGRU`) on the host: the row normalisation
//! and its backward, the specification's arithmetic (f64 sums in index order) that
//! `HostKernels::layer_norm_rows` and `HostKernels::layer_norm_rows_backward` run by default.
//!
//! A row `v` of width `w`: `μ = Σv/w`, `var = Σ(v − μ)²/w` (biased, two passes),
//! `rstd = 1/sqrt(var + ε)`, `x̂ = (v − μ)·rstd`, `LN(v; γ, β) = γ⊙x̂ + β`. Backward, given `dy`:
//! `g = γ⊙dy`, `dv = rstd·(g − mean(g) − x̂·mean(g⊙x̂))`.

use crate::element::Float;

/// The `ε` under the square root of every layer norm (Haste's).
pub(crate) const EPS: f64 = 1e-5;

/// Layer-normalises each row (`w` wide; `x.len() / w` rows) of `x` in place (see
/// `HostKernels::layer_norm_rows`): f64 sums in index order, each result rounded once.
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
        if let Some(out) = rstd.as_deref_mut() {
            out[r] = T::from_f64(rs);
        }
        let mut xh_row = xhat.as_deref_mut().map(|xh| &mut xh[r * w..(r + 1) * w]);
        for (j, v) in row.iter_mut().enumerate() {
            let xh = (v.to_f64() - mean) * rs;
            if let Some(xh_row) = xh_row.as_deref_mut() {
                xh_row[j] = T::from_f64(xh);
            }
            let b = beta.map_or(0.0, |b| b[j].to_f64());
            *v = T::from_f64(gamma[j].to_f64() * xh + b);
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
