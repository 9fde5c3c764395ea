//! The step of a GRU with the reset gate applied before the recurrent matmul
//! (`linear_before_reset = false`: Cho et al. 2014, ONNX `linear_before_reset = 0`, Keras
//! `reset_after = False`), forward and backward: the one place the time loops differ for it.
//!
//! Its new gate's recurrent product `W_hn (r ⊙ h_prev)` needs the reset gate first, so a step
//! is two products and two kernel calls ([`ChoPart`]), where the PyTorch form has one each:
//!
//! - forward: `HG[:, r z] = h_prev · W_h{r,z}^T` (`weight_hh`'s first `2·H` rows, written into
//!   the step's `[n, 3·H]` `hg` as a column block), the kernels' first part (`r`, `z`,
//!   `extra = r ⊙ h_prev`), `HG[:, n] = extra · W_hn^T`, the second part (`n`, `h'`);
//! - backward: the kernels' first part (`dgi`'s `z, n` columns, `dh_direct = z·dh`),
//!   `du = dgi[:, n] · W_hn` (the gradient of `r ⊙ h_prev`, into the scratch `dgh`), the second
//!   part (`dgi`'s `r` columns, `dh_direct += r ⊙ du`), then
//!   `dh_prev = dgi[:, r z] · W_h{r,z}` (`dh_direct` is added by the loop, as for the PyTorch
//!   form).
//!
//! The hidden-side pre-activation gradients are the input-side ones, so backward keeps no
//! separate `dGh`, and the weight gradient of `weight_hh` is `dgi[:, r z]^T · H_prev` for the
//! `r, z` rows and `dgi[:, n]^T · (r ⊙ H_prev)` (the saved `extra`) for the `n` rows
//! (`backward.rs`). Both products have the same rows as the PyTorch form's one (`h_prev`'s);
//! their columns add up to its `3·H`, so the step does the same multiply-adds in one more GEMM
//! call.

use super::direction::Direction;
use super::{CellBackward, CellForward, ChoPart, HostKernels, Mat, MatMut, Weight, WeightOp};
use crate::backend::cell::Cell;
use crate::element::Float;

/// Whether `cell` is a GRU with the reset gate before the recurrent matmul.
pub(super) fn applies(cell: &Cell) -> bool {
    cell.is_gru() && !cell.linear_before_reset
}

/// One forward step of a block of rows: `hg` (`[n, 3·H]`) is the step's scratch for the
/// recurrent products (`s.hg` is not read).
pub(super) fn forward_step<T: Float, K: HostKernels<T>>(k: &K, dir: &Direction<'_, T>, hg: &mut [T], s: CellForward<'_, T>) {
    let CellForward { active, hidden: h, xg, hg: _, b_hh, peephole, clip, input_forget, h_prev, c_prev, gates, extra, c, m } = s;
    let (n, hout, cell) = (active.len(), dir.dims.hout, &dir.dims.cell);
    let gw = 3 * h;
    // HG[:, r z] = h_prev · W_h{r,z}^T
    let h_prev_m = Mat::new(h_prev, n, hout);
    dir.product_views(k, WeightOp::fwd(Weight::HhGates, dir.ld), h_prev_m, T::ZERO, MatMut::strided(hg, n, 2 * h, gw));
    macro_rules! step {
        () => {
            CellForward {
                active,
                hidden: h,
                xg,
                hg: &*hg,
                b_hh,
                peephole,
                clip,
                input_forget,
                h_prev,
                c_prev,
                gates: &mut *gates,
                extra: &mut *extra,
                c: &mut [],
                m: &mut *m,
            }
        };
    }
    k.gru_reset_before_forward(cell, ChoPart::BeforeProduct, step!());
    // HG[:, n] = (r ⊙ h_prev) · W_hn^T
    let hg_n = MatMut::strided(&mut hg[2 * h..], n, h, gw);
    dir.product_views(k, WeightOp::fwd(Weight::HhNew, dir.ld), Mat::new(extra, n, h), T::ZERO, hg_n);
    k.gru_reset_before_forward(cell, ChoPart::AfterProduct, step!());
    // A GRU has no cell state.
    debug_assert!(c.is_empty());
}

/// One backward step of a block of rows: `du` is a scratch of at least `[n, H]`; `dh_prev`
/// (`[n, Hout]`) gets `dgi[:, r z] · W_h{r,z}` (without `dh_direct`, which the loop adds).
pub(super) fn backward_step<T: Float, K: HostKernels<T>>(k: &K, dir: &Direction<'_, T>, s: CellBackward<'_, T>, dh_prev: &mut [T]) {
    let CellBackward { active, hidden: h, peephole, clip, input_forget, gates, extra, c, c_prev, h_prev, dm, dc, dgi, dgh: du, dh_direct } =
        s;
    let (n, hout, cell) = (active.len(), dir.dims.hout, &dir.dims.cell);
    let (gw, du) = (3 * h, &mut du[..n * h]);
    macro_rules! step {
        ($dgh:expr) => {
            CellBackward {
                active,
                hidden: h,
                peephole,
                clip,
                input_forget,
                gates,
                extra,
                c,
                c_prev,
                h_prev,
                dm,
                dc: &mut [],
                dgi: &mut *dgi,
                dgh: $dgh,
                dh_direct: &mut *dh_direct,
            }
        };
    }
    k.gru_reset_before_backward(cell, ChoPart::BeforeProduct, step!(&mut []));
    // du = dA_n · W_hn
    let dan = Mat::strided(&dgi[2 * h..], n, h, gw);
    dir.product_views(k, WeightOp::bwd(Weight::HhNew, dir.ld), dan, T::ZERO, MatMut::new(du, n, hout));
    k.gru_reset_before_backward(cell, ChoPart::AfterProduct, step!(&mut *du));
    // dh_prev = dgi[:, r z] · W_h{r,z}
    let dg_rz = Mat::strided(dgi, n, 2 * h, gw);
    dir.product_views(k, WeightOp::bwd(Weight::HhGates, dir.ld), dg_rz, T::ZERO, MatMut::new(dh_prev, n, hout));
    debug_assert!(dc.is_empty());
}
