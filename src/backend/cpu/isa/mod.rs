//! The instruction sets of the CPU backend and the one trait their kernels implement.
//!
//! Each ISA is a zero-sized token type: [`Scalar`] (any CPU), `Avx2` and `Avx512` (x86-64),
//! `Neon` (AArch64). Only its `detect()` makes one, and only when the CPU has the ISA's
//! features, so holding a token is the proof that the ISA's `#[target_feature]` kernels may run.
//! Every token implements [`Kernels`]:
//!
//! - the ISA's kernels are its `unsafe` methods (`*_unchecked`, and the per-row cell kernels),
//!   which trust the shapes of their arguments;
//! - the safe provided methods ([`Kernels::gemm`], [`Kernels::weight_gemm`],
//!   [`Kernels::cell_forward`], [`Kernels::cell_backward`], [`Kernels::layer_norm_rows`],
//!   [`Kernels::layer_norm_rows_backward`], [`Kernels::lstm_ln_output`],
//!   [`Kernels::lstm_ln_backward`]) check every length once, for all ISAs, and then
//!   call them (`rows.rs` cuts a cell step into rows);
//! - a kernel an ISA does not write is its [`Kernels::Base`]'s: AVX-512 implements the GEMM
//!   tiles and the LSTM and GRU forward cells and takes everything else from AVX2; AVX2 and NEON take
//!   the products of two activations from [`Scalar`] (matrixmultiply).
//!
//! `RNN_KERNELS_ISA=scalar|avx2|avx512|amx|neon` forces one ISA; forcing one the CPU lacks is an
//! error. The choice is made once per [`Cpu`](super::Cpu) ([`Chosen`]), and each call is one
//! `match` into code monomorphised for that ISA ([`with_kernels!`]).

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(test)]
mod cell_tests;
#[cfg(test)]
mod layer_norm_tests;
#[cfg(test)]
mod math_tests;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod rows;
mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) use amx::Amx;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) use neon::Neon;
pub(crate) use scalar::Scalar;

use super::gemm::{Gemm, Par};
use super::RowBlocking;
use crate::backend::host::layer_norm::LstmLnBack;
use crate::backend::host::{CellBackward, CellForward, MatMut};
use crate::config::CellKind;
use crate::error::{Error, Result};
use rows::{BwdRow, FwdRow};
use std::fmt;
use std::sync::OnceLock;

/// An instruction set of the CPU backend's hand-written kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512F (and AVX2 and FMA): the AVX-512 GEMM tiles and LSTM and GRU
    /// forward cells, the AVX2 kernels of the other cells.
    Avx512,
    /// x86-64 with AMX-TILE and AMX-BF16 (and AVX-512 with AVX512_BF16): a bf16 plan's products
    /// on `TDPBF16PS` tiles, everything else as [`Isa::Avx512`]. Needs Linux to grant the
    /// process the tile state (asked at detection).
    Amx,
    /// AArch64 Advanced SIMD.
    Neon,
}

/// The values [`Kernels::tanh_in_place`] hands to the ISA's row kernel at a time.
pub(crate) const TANH_PIECE: usize = 1024;

/// The kernels of one ISA. See the module documentation for the structure.
///
/// The `unsafe` methods may assume what the provided methods check: the shapes of the GEMM
/// operands, and rows of the lengths [`FwdRow`] and [`BwdRow`] document. The CPU features they
/// need are guaranteed by `self`, a token of the ISA.
pub(crate) trait Kernels: Copy + Send + Sync + 'static {
    /// The ISA of these kernels.
    const ISA: Isa;
    /// How the time loop's batch rows are cut into blocks (they follow the GEMM tile).
    const ROW_BLOCKING: RowBlocking = RowBlocking::SIX_ROW_TILES;
    /// Whether [`Kernels::weight_gemm_unchecked`] reads the plan's packed weights (the plan
    /// packs them only then).
    const PACKED_WEIGHTS: bool = true;

    /// The kernels this ISA falls back to for those it does not write (itself for [`Scalar`],
    /// which writes them all).
    type Base: Kernels;
    /// The token of [`Kernels::Base`]: an ISA implies its base's features.
    fn base(self) -> Self::Base;

    /// `C = alpha·A·B + beta·C` for two activations (the weight gradients).
    ///
    /// # Safety
    /// The shapes agree (as [`Kernels::gemm`] checks).
    unsafe fn gemm_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        // SAFETY: the base's contract is this one; its features are implied by ours.
        unsafe { self.base().gemm_unchecked(par, g, c) }
    }

    /// `C = alpha·A·B + beta·C` where `B` is a weight, packed in `g.packed` where the plan
    /// packs weights.
    ///
    /// # Safety
    /// As [`Kernels::gemm_unchecked`], and `C`'s rows are contiguous (as
    /// [`Kernels::weight_gemm`] checks).
    unsafe fn weight_gemm_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().weight_gemm_unchecked(par, g, c) }
    }

    /// The LSTM forward step of one active row.
    ///
    /// # Safety
    /// The row's slices have the lengths [`FwdRow`] documents for an LSTM.
    unsafe fn lstm_forward(self, r: FwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().lstm_forward(r) }
    }

    /// The LSTM backward step of one active row.
    ///
    /// # Safety
    /// The row's slices have the lengths [`BwdRow`] documents for an LSTM.
    unsafe fn lstm_backward(self, r: BwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().lstm_backward(r) }
    }

    /// The GRU forward step of one active row.
    ///
    /// # Safety
    /// As [`Kernels::lstm_forward`], for a GRU.
    unsafe fn gru_forward(self, r: FwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().gru_forward(r) }
    }

    /// The GRU backward step of one active row.
    ///
    /// # Safety
    /// As [`Kernels::lstm_backward`], for a GRU.
    unsafe fn gru_backward(self, r: BwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().gru_backward(r) }
    }

    /// The first forward part of a step of the GRU with the reset gate before the recurrent
    /// matmul ([`ChoPart::BeforeProduct`](crate::backend::host::ChoPart)) on one active row.
    ///
    /// # Safety
    /// As [`Kernels::lstm_forward`], for a GRU (`c`, `c_prev` unused).
    unsafe fn gru_reset_before_gates(self, r: FwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().gru_reset_before_gates(r) }
    }

    /// The second forward part ([`ChoPart::AfterProduct`](crate::backend::host::ChoPart)), as
    /// [`Kernels::gru_reset_before_gates`].
    ///
    /// # Safety
    /// As [`Kernels::gru_reset_before_gates`].
    unsafe fn gru_reset_before_output(self, r: FwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().gru_reset_before_output(r) }
    }

    /// The first backward part of a step of the GRU with the reset gate before the recurrent
    /// matmul on one active row (`dgh` empty).
    ///
    /// # Safety
    /// As [`Kernels::lstm_backward`], for a GRU (`extra`, `c`, `c_prev`, `dc` unused).
    unsafe fn gru_reset_before_backward_output(self, r: BwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().gru_reset_before_backward_output(r) }
    }

    /// The second backward part, as [`Kernels::gru_reset_before_backward_output`] but with
    /// `dgh` of `H` values, the gradient of `r ⊙ h_prev`.
    ///
    /// # Safety
    /// As [`Kernels::gru_reset_before_backward_output`], `dgh` of `H` values.
    unsafe fn gru_reset_before_backward_reset(self, r: BwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().gru_reset_before_backward_reset(r) }
    }

    /// The Elman RNN forward step of one active row, relu if `RELU`, else tanh.
    ///
    /// # Safety
    /// As [`Kernels::lstm_forward`], for an RNN.
    unsafe fn rnn_forward<const RELU: bool>(self, r: FwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().rnn_forward::<RELU>(r) }
    }

    /// The Elman RNN backward step of one active row, relu if `RELU`, else tanh.
    ///
    /// # Safety
    /// As [`Kernels::lstm_backward`], for an RNN.
    unsafe fn rnn_backward<const RELU: bool>(self, r: BwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().rnn_backward::<RELU>(r) }
    }

    /// The LSTM forward step of one active row with options: peepholes (`r.peephole`, `[3·H]`),
    /// a clip (`r.clip > 0`) and/or `r.input_forget` (the maths of `reference/lstm.rs`'s
    /// `forward_options`). The plain cell's kernel is [`Kernels::lstm_forward`].
    ///
    /// # Safety
    /// As [`Kernels::lstm_forward`], and `r.peephole`, if any, has `3·H` values.
    unsafe fn lstm_forward_options(self, r: FwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().lstm_forward_options(r) }
    }

    /// The LSTM backward step of one active row with options (as
    /// [`Kernels::lstm_forward_options`]).
    ///
    /// # Safety
    /// As [`Kernels::lstm_backward`], and `r.peephole`, if any, has `3·H` values.
    unsafe fn lstm_backward_options(self, r: BwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().lstm_backward_options(r) }
    }

    /// The Elman RNN forward step of one active row with a clip (`r.clip > 0`).
    ///
    /// # Safety
    /// As [`Kernels::rnn_forward`].
    unsafe fn rnn_forward_clipped<const RELU: bool>(self, r: FwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().rnn_forward_clipped::<RELU>(r) }
    }

    /// The Elman RNN backward step of one active row with a clip (`r.clip > 0`).
    ///
    /// # Safety
    /// As [`Kernels::rnn_backward`].
    unsafe fn rnn_backward_clipped<const RELU: bool>(self, r: BwdRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().rnn_backward_clipped::<RELU>(r) }
    }

    /// Partial sums of each of a layer-norm row's sums (vector lanes × accumulators): a term
    /// goes through at most `ceil(w / LN_PARTIAL_SUMS)` additions in its partial sum, then
    /// `log2(LN_PARTIAL_SUMS)` in their fixed reduction (`isa/layer_norm_tests.rs` derives its
    /// tolerance from it).
    #[cfg(test)]
    const LN_PARTIAL_SUMS: usize = <Self::Base as Kernels>::LN_PARTIAL_SUMS;

    /// Layer norm of one row `x` (`w = x.len()` values) in place: `x ← γ⊙x̂ + β` (`γ⊙x̂`
    /// without `beta`), `x̂ = (x − μ)·rstd`, `rstd = 1/sqrt(var + 1e-5)`, `μ` and the biased
    /// `var` in two passes over the row; `x̂` stored into `xhat` if given. Returns `rstd`.
    ///
    /// # Safety
    /// `x` is not empty; `gamma`, `beta` and `xhat` (if given) have `x.len()` values.
    unsafe fn layer_norm_row(self, x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, xhat: Option<&mut [f32]>) -> f32 {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().layer_norm_row(x, gamma, beta, xhat) }
    }

    /// Backward of [`Kernels::layer_norm_row`] on one row: `dx = rstd·(g − mean(g) −
    /// x̂⊙mean(g⊙x̂))` with `g = γ⊙dy`.
    ///
    /// # Safety
    /// `dy` is not empty; `gamma`, `xhat` and `dx` have `dy.len()` values.
    unsafe fn layer_norm_row_backward(self, dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().layer_norm_row_backward(dy, gamma, xhat, rstd, dx) }
    }

    /// The layer-normalised LSTM's output on one row: `m ← o⊙tanh(m)` (`m` holding
    /// `s = γ_c⊙ĉ + β_c`), with the ISA's `tanh`.
    ///
    /// # Safety
    /// `m` is not empty and `o` has `m.len()` values.
    unsafe fn lstm_ln_output_row(self, o: &[f32], m: &mut [f32]) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().lstm_ln_output_row(o, m) }
    }

    /// The pointwise pre-pass of the layer-normalised LSTM's backward step on one active row
    /// (see [`LstmLnBackRow`]), with the ISA's `tanh`.
    ///
    /// # Safety
    /// Every slice of `r` has `r.o.len() ≥ 1` values.
    unsafe fn lstm_ln_backward_row(self, r: LstmLnBackRow<'_>) {
        // SAFETY: as in gemm_unchecked.
        unsafe { self.base().lstm_ln_backward_row(r) }
    }

    /// `x ← tanh(x)` with the ISA's `tanh`: [`Kernels::lstm_ln_output_row`] (`m ← o⊙tanh(m)`)
    /// with `o = 1`, which multiplies by exactly 1, in pieces of [`TANH_PIECE`] values.
    fn tanh_in_place(self, x: &mut [f32]) {
        static ONES: [f32; TANH_PIECE] = [1.0; TANH_PIECE];
        for piece in x.chunks_mut(TANH_PIECE) {
            // SAFETY: `piece` is not empty and `ONES[..piece.len()]` has its length.
            unsafe { self.lstm_ln_output_row(&ONES[..piece.len()], piece) }
        }
    }

    /// [`Kernels::lstm_ln_output_row`] on each row of `m` (`[n, h]`), `o` the last gate of the
    /// row of `gates` (`[n, 4·h]`); panics if a length disagrees.
    fn lstm_ln_output(self, h: usize, gates: &[f32], m: &mut [f32]) {
        if h == 0 {
            return;
        }
        let n = check_rows("layer-normalised LSTM output", h, "m", m.len());
        assert!(gates.len() == 4 * h * n, "layer-normalised LSTM output: `gates` has {} values, expected {}", gates.len(), 4 * h * n);
        for (m, g) in m.chunks_exact_mut(h).zip(gates.chunks_exact(4 * h)) {
            // SAFETY: `m` and the `o` gate of the row have `h ≥ 1` values; `self` proves the ISA.
            unsafe { self.lstm_ln_output_row(&g[3 * h..], m) }
        }
    }

    /// The pointwise pre-pass of the layer-normalised LSTM's backward step on `[n, h]` rows
    /// (see `host::layer_norm::LstmLnBack`): [`Kernels::lstm_ln_backward_row`] on each active
    /// row; on an inactive one `s` as `scalar.rs`'s forward computes it, `dŝ = 0`, `d_o`
    /// untouched. Panics if a length disagrees.
    fn lstm_ln_backward(self, h: usize, r: LstmLnBack<'_, f32>) {
        let LstmLnBack { active, gamma_c, beta_c, ln_c, gates, dm, s, dsh, mut d_o } = r;
        let n = active.len();
        let what = "layer-normalised LSTM backward";
        check_lengths(
            what,
            [
                ("gamma_c", Some(gamma_c.len()), h),
                ("beta_c", Some(beta_c.len()), h),
                ("gates", Some(gates.len()), 4 * h * n),
                ("d_o", d_o.as_deref().map(<[f32]>::len), 4 * h * n),
            ],
        );
        check_lengths(
            what,
            [
                ("ln_c", Some(ln_c.len()), h * n),
                ("dm", Some(dm.len()), h * n),
                ("s", Some(s.len()), h * n),
                ("dsh", Some(dsh.len()), h * n),
            ],
        );
        if h == 0 {
            return;
        }
        for (b, &act) in active.iter().enumerate() {
            let (row, gate_o) = (b * h..(b + 1) * h, b * 4 * h + 3 * h..(b + 1) * 4 * h);
            if act {
                let r = LstmLnBackRow {
                    gamma: gamma_c,
                    beta: beta_c,
                    ln_c: &ln_c[row.clone()],
                    o: &gates[gate_o.clone()],
                    dm: &dm[row.clone()],
                    s: &mut s[row.clone()],
                    dsh: &mut dsh[row],
                    d_o: d_o.as_deref_mut().map(|d| &mut d[gate_o]),
                };
                // SAFETY: every slice of the row has `h ≥ 1` values (checked above); `self`
                // proves the ISA.
                unsafe { self.lstm_ln_backward_row(r) }
            } else {
                for (((s, &g), &x), &bt) in s[row.clone()].iter_mut().zip(gamma_c).zip(&ln_c[row.clone()]).zip(beta_c) {
                    *s = g * x + bt;
                }
                dsh[row].fill(0.0);
            }
        }
    }

    /// [`Kernels::layer_norm_row`] on each row of `x` (rows of `w` values), `x̂` into the same
    /// row of `xhat` and `rstd` into `rstd[row]` where given; panics if a length disagrees
    /// (see [`check_layer_norm`]).
    fn layer_norm_rows(
        self,
        w: usize,
        x: &mut [f32],
        gamma: &[f32],
        beta: Option<&[f32]>,
        mut xhat: Option<&mut [f32]>,
        mut rstd: Option<&mut [f32]>,
    ) {
        let rows = check_layer_norm(
            w,
            x.len(),
            gamma.len(),
            beta.map(<[f32]>::len),
            xhat.as_deref().map(<[f32]>::len),
            rstd.as_deref().map(<[f32]>::len),
        );
        for (i, row) in x.chunks_exact_mut(w).enumerate().take(rows) {
            let xh = xhat.as_deref_mut().map(|s| &mut s[i * w..(i + 1) * w]);
            // SAFETY: `row` has `w ≥ 1` values, and `gamma`, `beta` and the row of `xhat` `w`
            // (checked above); `self` proves the ISA.
            let r = unsafe { self.layer_norm_row(row, gamma, beta, xh) };
            if let Some(rstd) = rstd.as_deref_mut() {
                rstd[i] = r;
            }
        }
    }

    /// [`Kernels::layer_norm_row_backward`] on each row of `dy` (rows of `w` values), with that
    /// row's `xhat`, `rstd[row]` and `dx`; panics as [`Kernels::layer_norm_rows`].
    fn layer_norm_rows_backward(self, w: usize, dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: &[f32], dx: &mut [f32]) {
        check_layer_norm_backward(w, dy.len(), gamma.len(), xhat.len(), rstd.len(), dx.len());
        let rows = dy.chunks_exact(w).zip(xhat.chunks_exact(w)).zip(dx.chunks_exact_mut(w));
        for (((dy, xhat), dx), &rstd) in rows.zip(rstd) {
            // SAFETY: every row has `w ≥ 1` values, as `gamma` (checked above); `self` proves
            // the ISA.
            unsafe { self.layer_norm_row_backward(dy, gamma, xhat, rstd, dx) }
        }
    }

    /// [`Kernels::gemm_unchecked`] after checking the shapes; panics if they disagree.
    fn gemm(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        g.check(&c);
        // SAFETY: the shapes were checked just above; `self` proves the ISA.
        unsafe { self.gemm_unchecked(par, g, c) }
    }

    /// `C = alpha·A·B + beta·C` for two activations with both rounded to bf16 and the products
    /// on the ISA's bf16 dot-product tiles: the weight gradients of a plan whose products are
    /// bf16 ones (`CpuPlan::bf16_products`). The default is the f32 product
    /// ([`Kernels::gemm_unchecked`]).
    ///
    /// # Safety
    /// As [`Kernels::gemm_unchecked`].
    unsafe fn gemm_bf16_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        // SAFETY: the same contract.
        unsafe { self.gemm_unchecked(par, g, c) }
    }

    /// [`Kernels::gemm_bf16_unchecked`] after checking the shapes; panics if they disagree.
    fn gemm_bf16(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        g.check(&c);
        // SAFETY: the shapes were checked just above; `self` proves the ISA.
        unsafe { self.gemm_bf16_unchecked(par, g, c) }
    }

    /// [`Kernels::weight_gemm_unchecked`] after checking the shapes; panics if they disagree.
    fn weight_gemm(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        g.check(&c);
        assert_eq!(c.cs, 1, "gemm: output rows must be contiguous");
        // SAFETY: the shapes were checked just above; `self` proves the ISA.
        unsafe { self.weight_gemm_unchecked(par, g, c) }
    }

    /// The fused forward step of `cell`; panics if a slice it uses does not have its
    /// documented length.
    fn cell_forward(self, cell: CellKind, step: CellForward<'_, f32>) {
        rows::forward(self, cell, step)
    }

    /// The fused backward step of `cell`; panics as [`Kernels::cell_forward`].
    fn cell_backward(self, cell: CellKind, step: CellBackward<'_, f32>) {
        rows::backward(self, cell, step)
    }
}

/// One row (`H` values each) of the layer-normalised LSTM's backward pre-pass: `s = γ⊙ĉ + β`
/// (as the ISA's layer-norm forward computes it), `τ = tanh(s)`, `dŝ = dm⊙o⊙(1 − τ²)` and, if
/// `d_o` is given, `d_o = dm⊙τ⊙o(1 − o)`.
pub(crate) struct LstmLnBackRow<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub ln_c: &'a [f32],
    pub o: &'a [f32],
    pub dm: &'a [f32],
    pub s: &'a mut [f32],
    pub dsh: &'a mut [f32],
    pub d_o: Option<&'a mut [f32]>,
}

/// Checks the lengths of a layer-norm call ([`Kernels::layer_norm_rows`]) on rows of `w`
/// values: `w ≥ 1`, `x` a multiple of `w`, `gamma` and `beta` `w`, `xhat` as `x`, `rstd` one
/// per row (those given). Returns the number of rows; panics naming the slice, the expected and
/// the given length otherwise.
pub(crate) fn check_layer_norm(w: usize, x: usize, gamma: usize, beta: Option<usize>, xhat: Option<usize>, rstd: Option<usize>) -> usize {
    let rows = check_rows("layer norm", w, "x", x);
    check_lengths("layer norm", [("gamma", Some(gamma), w), ("beta", beta, w), ("xhat", xhat, x), ("rstd", rstd, rows)]);
    rows
}

/// As [`check_layer_norm`], for [`Kernels::layer_norm_rows_backward`]: `dy` a multiple of `w`,
/// `gamma` `w`, `xhat` and `dx` as `dy`, `rstd` one per row.
pub(crate) fn check_layer_norm_backward(w: usize, dy: usize, gamma: usize, xhat: usize, rstd: usize, dx: usize) -> usize {
    let rows = check_rows("layer norm backward", w, "dy", dy);
    check_lengths(
        "layer norm backward",
        [("gamma", Some(gamma), w), ("xhat", Some(xhat), dy), ("rstd", Some(rstd), rows), ("dx", Some(dx), dy)],
    );
    rows
}

/// The rows of `len` values of `name` in rows of `w`; panics unless `w ≥ 1` divides `len`.
fn check_rows(what: &str, w: usize, name: &str, len: usize) -> usize {
    assert!(w >= 1, "{what}: the row width is 0, expected at least 1");
    assert!(len.is_multiple_of(w), "{what}: `{name}` has {len} values, expected a multiple of the row width {w}");
    len / w
}

/// Panics unless each `(name, given, expected)` given has its expected length.
fn check_lengths(what: &str, lengths: [(&str, Option<usize>, usize); 4]) {
    for (name, given, expected) in lengths {
        if let Some(given) = given {
            assert!(given == expected, "{what}: `{name}` has {given} values, expected {expected}");
        }
    }
}

/// An ISA whose module holds a hand-written row kernel of every cell (submodules `lstm`,
/// `gru` and `rnn`, each with a `forward` and a `backward`, `rnn`'s generic over `RELU` and
/// `gru`'s over `CLIP`, and `gru_reset_before` with the four parts of that GRU, each generic
/// over `CLIP`; `layer_norm` with the row layer norm's `forward`, `backward` and
/// `PARTIAL_SUMS`, whose
/// only needs beyond the row's lengths are the ISA's features) and the register tiles of the
/// weight products, and takes the products of two activations from [`Scalar`]: its token
/// type, made only by `detect()` where `detected` holds, and its [`Kernels`].
macro_rules! simd_isa {
    ($(#[$doc:meta])* $name:ident = $isa:expr, detected: $detected:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct $name(());

        impl $name {
            /// The token, if this CPU has the ISA.
            pub(crate) fn detect() -> Option<$name> {
                ($detected).then_some($name(()))
            }
        }

        impl $crate::backend::cpu::isa::Kernels for $name {
            const ISA: $crate::backend::cpu::isa::Isa = $isa;
            type Base = $crate::backend::cpu::isa::Scalar;

            fn base(self) -> Self::Base {
                $crate::backend::cpu::isa::Scalar
            }

            unsafe fn weight_gemm_unchecked(
                self,
                par: &$crate::backend::cpu::gemm::Par<'_>,
                g: $crate::backend::cpu::gemm::Gemm<'_>,
                c: $crate::backend::host::MatMut<'_, f32>,
            ) {
                // SAFETY: `self` proves the ISA; the shapes are this method's contract.
                unsafe { $crate::backend::cpu::gemm::gemm_tiled::<$name>(par, g, c) }
            }

            unsafe fn lstm_forward(self, r: FwdRow<'_>) {
                // SAFETY: `self` proves the ISA; the row's lengths are this method's contract.
                unsafe { lstm::forward(r) }
            }

            unsafe fn lstm_backward(self, r: BwdRow<'_>) {
                // SAFETY: as in lstm_forward.
                unsafe { lstm::backward(r) }
            }

            unsafe fn gru_forward(self, r: FwdRow<'_>) {
                // SAFETY: as in lstm_forward. Clipped or not: one branch per row.
                unsafe {
                    if r.clip > 0.0 {
                        gru::forward::<true>(r)
                    } else {
                        gru::forward::<false>(r)
                    }
                }
            }

            unsafe fn gru_backward(self, r: BwdRow<'_>) {
                // SAFETY: as in gru_forward.
                unsafe {
                    if r.clip > 0.0 {
                        gru::backward::<true>(r)
                    } else {
                        gru::backward::<false>(r)
                    }
                }
            }

            unsafe fn gru_reset_before_gates(self, r: FwdRow<'_>) {
                // SAFETY: as in gru_forward.
                unsafe {
                    if r.clip > 0.0 {
                        gru_reset_before::gates::<true>(r)
                    } else {
                        gru_reset_before::gates::<false>(r)
                    }
                }
            }

            unsafe fn gru_reset_before_output(self, r: FwdRow<'_>) {
                // SAFETY: as in gru_forward.
                unsafe {
                    if r.clip > 0.0 {
                        gru_reset_before::output::<true>(r)
                    } else {
                        gru_reset_before::output::<false>(r)
                    }
                }
            }

            unsafe fn gru_reset_before_backward_output(self, r: BwdRow<'_>) {
                // SAFETY: as in gru_forward.
                unsafe {
                    if r.clip > 0.0 {
                        gru_reset_before::backward_output::<true>(r)
                    } else {
                        gru_reset_before::backward_output::<false>(r)
                    }
                }
            }

            unsafe fn gru_reset_before_backward_reset(self, r: BwdRow<'_>) {
                // SAFETY: as in gru_forward.
                unsafe {
                    if r.clip > 0.0 {
                        gru_reset_before::backward_reset::<true>(r)
                    } else {
                        gru_reset_before::backward_reset::<false>(r)
                    }
                }
            }

            unsafe fn rnn_forward<const RELU: bool>(self, r: FwdRow<'_>) {
                // SAFETY: as in lstm_forward.
                unsafe { rnn::forward::<RELU>(r) }
            }

            unsafe fn rnn_backward<const RELU: bool>(self, r: BwdRow<'_>) {
                // SAFETY: as in lstm_forward.
                unsafe { rnn::backward::<RELU>(r) }
            }

            unsafe fn lstm_forward_options(self, r: FwdRow<'_>) {
                // SAFETY: as in lstm_forward, and the peephole's length is this method's contract.
                unsafe { lstm::forward_options(r) }
            }

            unsafe fn lstm_backward_options(self, r: BwdRow<'_>) {
                // SAFETY: as in lstm_forward_options.
                unsafe { lstm::backward_options(r) }
            }

            unsafe fn rnn_forward_clipped<const RELU: bool>(self, r: FwdRow<'_>) {
                // SAFETY: as in lstm_forward.
                unsafe { rnn::forward_clipped::<RELU>(r) }
            }

            unsafe fn rnn_backward_clipped<const RELU: bool>(self, r: BwdRow<'_>) {
                // SAFETY: as in lstm_forward.
                unsafe { rnn::backward_clipped::<RELU>(r) }
            }

            #[cfg(test)]
            const LN_PARTIAL_SUMS: usize = layer_norm::PARTIAL_SUMS;

            unsafe fn layer_norm_row(self, x: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, xhat: Option<&mut [f32]>) -> f32 {
                // SAFETY: `self` proves the ISA; the lengths are this method's contract.
                unsafe { layer_norm::forward(x, gamma, beta, xhat) }
            }

            unsafe fn layer_norm_row_backward(self, dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: f32, dx: &mut [f32]) {
                // SAFETY: as in layer_norm_row.
                unsafe { layer_norm::backward(dy, gamma, xhat, rstd, dx) }
            }

            unsafe fn lstm_ln_output_row(self, o: &[f32], m: &mut [f32]) {
                // SAFETY: as in layer_norm_row.
                unsafe { layer_norm::lstm_output(o, m) }
            }

            unsafe fn lstm_ln_backward_row(self, r: $crate::backend::cpu::isa::LstmLnBackRow<'_>) {
                // SAFETY: as in layer_norm_row.
                unsafe { layer_norm::lstm_backward(r) }
            }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use simd_isa;

/// The ISA a [`Cpu`](super::Cpu) was made with, as its token.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chosen {
    Scalar(Scalar),
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
    #[cfg(target_arch = "x86_64")]
    Amx(Amx),
    #[cfg(target_arch = "aarch64")]
    Neon(Neon),
}

impl Chosen {
    /// The token of `isa`, if this CPU has it.
    pub(crate) fn detect(isa: Isa) -> Option<Chosen> {
        match isa {
            Isa::Scalar => Some(Chosen::Scalar(Scalar)),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Avx2::detect().map(Chosen::Avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Avx512::detect().map(Chosen::Avx512),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Amx::detect().map(Chosen::Amx),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Neon::detect().map(Chosen::Neon),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Its ISA.
    pub(crate) fn isa(self) -> Isa {
        with_kernels!(self, |k| isa_of(k))
    }

    /// Whether its plans pack the weights ([`Kernels::PACKED_WEIGHTS`]).
    pub(crate) fn packs_weights(self) -> bool {
        with_kernels!(self, |k| packs_weights(k))
    }
}

fn isa_of<K: Kernels>(_: K) -> Isa {
    K::ISA
}

fn packs_weights<K: Kernels>(_: K) -> bool {
    K::PACKED_WEIGHTS
}

/// `with_kernels!(chosen, |k| body)`: `body` with `k` the token of the [`Chosen`] ISA, compiled
/// once per ISA, so that everything `body` calls with `k` is monomorphised for it.
macro_rules! with_kernels {
    ($chosen:expr, |$k:ident| $body:expr) => {
        match $chosen {
            $crate::backend::cpu::isa::Chosen::Scalar($k) => $body,
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::isa::Chosen::Avx2($k) => $body,
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::isa::Chosen::Avx512($k) => $body,
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::isa::Chosen::Amx($k) => $body,
            #[cfg(target_arch = "aarch64")]
            $crate::backend::cpu::isa::Chosen::Neon($k) => $body,
        }
    };
}
pub(crate) use with_kernels;

impl Isa {
    /// The name used by `RNN_KERNELS_ISA` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU can run the ISA's kernels.
    pub fn is_supported(self) -> bool {
        Chosen::detect(self).is_some()
    }

    /// Every ISA this CPU supports, best last.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx, Isa::Neon].into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The best ISA this CPU supports.
    pub fn best() -> Isa {
        *Isa::available().last().expect("scalar is always available")
    }

    /// The ISA to use by default: `RNN_KERNELS_ISA` if set (an error if unknown or not supported
    /// here), else [`Isa::best`]. Read once per process and cached.
    pub fn from_env() -> Result<Isa> {
        static CHOICE: OnceLock<std::result::Result<Isa, (String, String)>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var("RNN_KERNELS_ISA") {
                Err(_) => Ok(Isa::best()),
                Ok(v) => v.parse::<Isa>().map_err(|e| (v.clone(), e.to_string())).and_then(|isa| {
                    if isa.is_supported() {
                        Ok(isa)
                    } else {
                        Err((v.clone(), format!("this CPU does not support {isa}; it supports {}", names(&Isa::available()))))
                    }
                }),
            })
            .clone()
            .map_err(|(given, why)| Error::InvalidArgument {
                arg: "RNN_KERNELS_ISA".into(),
                expected: format!("one of scalar, avx2, avx512, amx, neon that this CPU supports ({why})"),
                got: format!("{given:?}"),
            })
    }
}

/// `"scalar, avx2, …"`.
pub(crate) fn names(isas: &[Isa]) -> String {
    isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = Error;
    fn from_str(s: &str) -> Result<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" => Ok(Isa::Avx512),
            "amx" => Ok(Isa::Amx),
            "neon" => Ok(Isa::Neon),
            _ => Err(Error::invalid("isa", "one of scalar, avx2, avx512, amx, neon", format!("{s:?}"))),
        }
    }
}
