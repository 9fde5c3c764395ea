//! The scalar ISA, any CPU: the reference backend's cell kernels (one row at a time; the parts
//! of the GRU with the reset gate before the matmul from `reference/gru_reset_before.rs`) and
//! matrixmultiply's SGEMM (`gemm_portable`) for every product, and the layer-norm row kernels
//! in portable Rust ([`layer_norm`]). It reads no packed weights. It is the base every other
//! ISA falls back to.

use super::rows::{BwdRow, FwdRow};
use super::{Isa, Kernels};
use crate::backend::cpu::gemm::{gemm_portable, Gemm, Par};
use crate::backend::host::{HostKernels, MatMut};
use crate::backend::reference::gru_reset_before;
use crate::backend::Reference;
use crate::config::CellKind;

/// The scalar ISA's token (any CPU has it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scalar;

/// The reference forward kernel of `cell` on one active row.
fn forward(cell: CellKind, r: FwdRow<'_>) {
    <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, r)
}

/// The reference backward kernel of `cell` on one active row.
fn backward(cell: CellKind, r: BwdRow<'_>) {
    <Reference as HostKernels<f32>>::cell_backward(&Reference, cell, r)
}

const fn rnn(relu: bool) -> CellKind {
    if relu {
        CellKind::RnnRelu
    } else {
        CellKind::RnnTanh
    }
}

impl Kernels for Scalar {
    const ISA: Isa = Isa::Scalar;
    const PACKED_WEIGHTS: bool = false;
    type Base = Scalar;

    fn base(self) -> Scalar {
        self
    }

    unsafe fn gemm_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        gemm_portable(par, g, c)
    }

    unsafe fn weight_gemm_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        gemm_portable(par, g, c)
    }

    unsafe fn lstm_forward(self, r: FwdRow<'_>) {
        forward(CellKind::Lstm, r)
    }

    unsafe fn lstm_backward(self, r: BwdRow<'_>) {
        backward(CellKind::Lstm, r)
    }

    unsafe fn gru_forward(self, r: FwdRow<'_>) {
        forward(CellKind::Gru, r)
    }

    unsafe fn gru_backward(self, r: BwdRow<'_>) {
        backward(CellKind::Gru, r)
    }

    unsafe fn gru_reset_before_gates(self, r: FwdRow<'_>) {
        gru_reset_before::forward_gates(r)
    }

    unsafe fn gru_reset_before_output(self, r: FwdRow<'_>) {
        gru_reset_before::forward_output(r)
    }

    unsafe fn gru_reset_before_backward_output(self, r: BwdRow<'_>) {
        gru_reset_before::backward_output(r)
    }

    unsafe fn gru_reset_before_backward_reset(self, r: BwdRow<'_>) {
        gru_reset_before::backward_reset(r)
    }

    unsafe fn rnn_forward<const RELU: bool>(self, r: FwdRow<'_>) {
        forward(rnn(RELU), r)
    }

    unsafe fn rnn_backward<const RELU: bool>(self, r: BwdRow<'_>) {
        backward(rnn(RELU), r)
    }

    // The reference kernels take their options path on such rows.
    unsafe fn lstm_forward_options(self, r: FwdRow<'_>) {
        forward(CellKind::Lstm, r)
    }

    unsafe fn lstm_backward_options(self, r: BwdRow<'_>) {
        backward(CellKind::Lstm, r)
    }

    unsafe fn rnn_forward_clipped<const RELU: bool>(self, r: FwdRow<'_>) {
        forward(rnn(RELU), r)
    }

    unsafe fn rnn_backward_clipped<const RELU: bool>(self, r: BwdRow<'_>) {
        backward(rnn(RELU), r)
    }

    #[cfg(test)]
    const LN_PARTIAL_SUMS: usize = layer_norm::PARTIAL_SUMS;

    unsafe fn layer_norm_row(self, x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, xhat: Option<&mut [f32]>) -> f32 {
        layer_norm::forward(x, gamma, beta, xhat)
    }

    unsafe fn layer_norm_row_backward(self, dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
        layer_norm::backward(dy, gamma, xhat, rstd, dx)
    }

    unsafe fn lstm_ln_output_row(self, o: &[f32], m: &mut [f32]) {
        layer_norm::lstm_output(o, m)
    }

    unsafe fn lstm_ln_backward_row(self, r: super::LstmLnBackRow<'_>) {
        layer_norm::lstm_backward(r)
    }
}

/// The layer-norm row kernels in portable Rust, safe (slices indexed with bounds checks).
///
/// A row's sums are taken in the order of the AVX2 kernels (`isa/avx2/layer_norm.rs`): 8
/// lanes, 4 accumulators, the same reduction, written as arrays that the compiler may
/// vectorise lane for lane (no reassociation). Without FMA: a fused multiply-add is a library
/// call on a CPU without one.
pub(crate) mod layer_norm {
    const LANES: usize = 8;
    const ACC: usize = 4;
    /// See [`Kernels::LN_PARTIAL_SUMS`](super::Kernels::LN_PARTIAL_SUMS).
    #[cfg(test)]
    pub(crate) const PARTIAL_SUMS: usize = LANES * ACC;
    /// `ε`, added to the variance.
    const EPS: f32 = 1e-5;

    /// `N` sums over a row of `w` values, `Σ_i term(v_i)[s]` for each `s`, where `v_i` holds
    /// value `i` of each of the `M` slices of `w` values in `rows`: term `i` in lane `i mod 8`
    /// of an accumulator; whole blocks of 32 terms put chunk `k` of 8 into accumulator `k`, the
    /// whole chunks after the last block go into accumulators 0, 1, 2 and a last partial chunk
    /// into 3; then [`reduce`]. The blocks are read as arrays (no bounds check per value), so
    /// that the compiler can vectorise them.
    #[inline(always)]
    fn row_sums<const M: usize, const N: usize>(rows: [&[f32]; M], term: impl Fn([f32; M]) -> [f32; N]) -> [f32; N] {
        let w = rows[0].len();
        let mut acc = [[[0.0f32; LANES]; ACC]; N];
        let blocks = w / (ACC * LANES);
        for b in 0..blocks {
            let block: [&[f32; ACC * LANES]; M] =
                rows.map(|r| r[b * ACC * LANES..(b + 1) * ACC * LANES].try_into().expect("a whole block"));
            for a in 0..ACC {
                for l in 0..LANES {
                    let t = term(block.map(|v| v[a * LANES + l]));
                    for s in 0..N {
                        acc[s][a][l] += t[s];
                    }
                }
            }
        }
        let mut add = |a: usize, k: usize, n: usize| {
            for l in 0..n {
                let t = term(rows.map(|r| r[k + l]));
                for s in 0..N {
                    acc[s][a][l] += t[s];
                }
            }
        };
        let mut k = blocks * ACC * LANES;
        for a in 0..ACC - 1 {
            if k + LANES <= w {
                add(a, k, LANES);
                k += LANES;
            }
        }
        if k < w {
            add(ACC - 1, k, w - k);
        }
        acc.map(reduce)
    }

    /// `(a0 + a1) + (a2 + a3)` lane by lane, then the 8 lanes by halves: `l + (l + 4)`, then
    /// `+ 2`, then `+ 1` (AVX2's `hi128 + lo128`, `movehl`, shuffle).
    #[inline(always)]
    fn reduce(a: [[f32; LANES]; ACC]) -> f32 {
        let mut v: [f32; LANES] = std::array::from_fn(|l| (a[0][l] + a[1][l]) + (a[2][l] + a[3][l]));
        let mut half = LANES / 2;
        while half > 0 {
            for l in 0..half {
                v[l] += v[l + half];
            }
            half /= 2;
        }
        v[0]
    }

    /// See [`Kernels::layer_norm_row`](super::Kernels::layer_norm_row).
    pub(crate) fn forward(x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, xhat: Option<&mut [f32]>) -> f32 {
        let w = x.len();
        let [sum] = row_sums([x], |[v]| [v]);
        let mean = sum / w as f32;
        let [sq] = row_sums([x], |[v]| {
            let d = v - mean;
            [d * d]
        });
        let rstd = 1.0 / (sq / w as f32 + EPS).sqrt();
        // One loop per case, so that each vectorises.
        let normalise = |v: f32| (v - mean) * rstd;
        match (xhat, beta) {
            (Some(xhat), Some(beta)) => {
                for (((v, xh), &g), &b) in x.iter_mut().zip(xhat).zip(gamma).zip(beta) {
                    *xh = normalise(*v);
                    *v = g * *xh + b;
                }
            }
            (Some(xhat), None) => {
                for ((v, xh), &g) in x.iter_mut().zip(xhat).zip(gamma) {
                    *xh = normalise(*v);
                    *v = g * *xh;
                }
            }
            (None, Some(beta)) => {
                for ((v, &g), &b) in x.iter_mut().zip(gamma).zip(beta) {
                    *v = g * normalise(*v) + b;
                }
            }
            (None, None) => {
                for (v, &g) in x.iter_mut().zip(gamma) {
                    *v = g * normalise(*v);
                }
            }
        }
        rstd
    }

    /// See [`Kernels::layer_norm_row_backward`](super::Kernels::layer_norm_row_backward).
    pub(crate) fn backward(dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
        let w = dy.len();
        let [sg, sgx] = row_sums([gamma, dy, xhat], |[gamma, dy, xhat]| {
            let g = gamma * dy;
            [g, g * xhat]
        });
        let (mg, mgx) = (sg / w as f32, sgx / w as f32);
        for (((dx, &g), &dy), &xh) in dx.iter_mut().zip(gamma).zip(dy).zip(xhat) {
            *dx = rstd * ((g * dy - mg) - xh * mgx);
        }
    }

    /// See [`Kernels::lstm_ln_output_row`](super::Kernels::lstm_ln_output_row): `o·tanh(s)`
    /// with `f32::tanh`, the reference's arithmetic.
    pub(crate) fn lstm_output(o: &[f32], m: &mut [f32]) {
        for (m, &o) in m.iter_mut().zip(o) {
            *m = o * m.tanh();
        }
    }

    /// See [`Kernels::lstm_ln_backward_row`](super::Kernels::lstm_ln_backward_row): the
    /// reference's arithmetic, `s` as [`forward`] computes it (no FMA).
    pub(crate) fn lstm_backward(r: crate::backend::cpu::isa::LstmLnBackRow<'_>) {
        let crate::backend::cpu::isa::LstmLnBackRow { gamma, beta, ln_c, o, dm, s, dsh, mut d_o } = r;
        for j in 0..o.len() {
            let sj = gamma[j] * ln_c[j] + beta[j];
            s[j] = sj;
            let tau = sj.tanh();
            if let Some(d_o) = d_o.as_deref_mut() {
                d_o[j] = dm[j] * tau * o[j] * (1.0 - o[j]);
            }
            // 1 − τ² as 4e/(1 + e)², e = e^−2|s|: accurate where it is small, as the SIMD
            // kernels' `tanh_sech2` (`1 − τ·τ` cancels there, and the layer norm's backward
            // multiplies `dŝ` by `rstd`, up to 316).
            let e = (-2.0 * sj.abs()).exp();
            dsh[j] = dm[j] * o[j] * (4.0 * e / (1.0 + e) / (1.0 + e));
        }
    }

    #[cfg(test)]
    mod tests {
        crate::backend::cpu::isa::layer_norm_tests::layer_norm_kernel_tests!(Some(crate::backend::cpu::isa::Scalar));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::CellKind::{Gru, Lstm, RnnRelu, RnnTanh};
    // The reference kernels row by row: every output bit-identical to the reference's.
    crate::backend::cpu::isa::cell_tests::cell_kernel_tests!(
        Some(super::Scalar),
        exact: [(Lstm, true), (Lstm, false), (Gru, true), (Gru, false), (RnnTanh, true), (RnnTanh, false), (RnnRelu, true), (RnnRelu, false)]
    );
}
