//! The scalar ISA, any CPU: the reference backend's cell kernels (one row at a time; the parts
//! of the GRU with the reset gate before the matmul from `reference/gru_reset_before.rs`) and
//! matrixmultiply's SGEMM (`gemm_portable`) for every product. It reads no packed weights. It
//! is the base every other ISA falls back to.

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
