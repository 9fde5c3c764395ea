//! Weights packed once per plan as the right-hand operand of the CPU GEMMs.
//!
//! Every product with a weight is `C = A · B` where `B` is `W^T` (forward: the input projection
//! `X · W_ih^T`, the recurrent `h · W_hh^T`, the projection `m · W_hr^T`) or `W` (backward:
//! `dG · W_ih`, `dG · W_hh`, `dh · W_hr`). A general GEMM re-packs `B` on every call, which for
//! the per-step products of a small batch costs as much as the product itself; here `B: [K, N]`
//! is packed once into panels of [`NR`] = 16 columns, each stored k-major
//! (`panel[k·16 + j] = B[k, p·16 + j]`, zero past `N`), the layout every ISA's tiles read
//! (`gemm/sgemm.rs`). The
//! forward operands are packed with the plan; the backward ones on the first backward call.

use crate::backend::host::{HostPlan, Mat, Weight, WeightOp};
use crate::backend::RnnPlan;
use crate::config::{CellKind, RnnConfig};
use crate::error::Result;
use std::sync::OnceLock;

/// Output columns per panel.
pub(crate) const NR: usize = 16;

/// `B: [K, N]` in panels of [`NR`] columns, k-major.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeight {
    pub n: usize,
    pub k: usize,
    pub data: Vec<f32>,
}

impl PackedWeight {
    /// Packs the view `b: [K, N]`.
    pub(crate) fn pack(b: Mat<'_, f32>) -> Self {
        let mut p = PackedWeight { n: b.cols, k: b.rows, data: vec![0.0; b.cols.div_ceil(NR) * NR * b.rows] };
        p.repack(b);
        p
    }

    /// Packs new values of the same shape.
    pub(crate) fn repack(&mut self, b: Mat<'_, f32>) {
        assert_eq!((b.rows, b.cols), (self.k, self.n), "packed weight shape");
        if self.k == 0 {
            return;
        }
        for (p, panel) in self.data.chunks_exact_mut(NR * self.k).enumerate() {
            let cols = (self.n - p * NR).min(NR);
            for kk in 0..self.k {
                let out = &mut panel[kk * NR..(kk + 1) * NR];
                for (j, o) in out.iter_mut().enumerate() {
                    *o = if j < cols { b.at(kk, p * NR + j) } else { 0.0 };
                }
            }
        }
    }
}

/// The packed operands of one layer-direction, in the order of [`Weight`]: `W_ih`, `W_hh`,
/// `W_hr` (absent without a projection), and a GRU with the reset gate before the matmul's two
/// row blocks of `W_hh` (present for it alone, which then has no whole `W_hh`).
type Packs = [Option<PackedWeight>; 5];

/// Every [`Weight`], in the order of [`Packs`].
const WEIGHTS: [Weight; 5] = [Weight::Ih, Weight::Hh, Weight::Hr, Weight::HhGates, Weight::HhNew];

fn weight_view<'w>(host: &'w HostPlan<f32>, ld: usize, which: Weight) -> Option<Mat<'w, f32>> {
    let cfg = host.config();
    let (l, d) = (ld / cfg.num_directions(), ld % cfg.num_directions());
    let r = host.layout.layer(l, d);
    let (gh, hout, h) = (cfg.gates() * cfg.hidden_size(), cfg.hidden_out_size(), cfg.hidden_size());
    let w = &host.weights;
    // A GRU with the reset gate before the matmul: W_hh in two row blocks.
    let split = cfg.cell() == CellKind::Gru && !cfg.linear_before_reset();
    let w_hh = &w[r.w_hh.clone()];
    match which {
        Weight::Ih => Some(Mat::new(&w[r.w_ih.clone()], gh, cfg.layer_input_size(l))),
        Weight::Hh => (!split).then(|| Mat::new(w_hh, gh, hout)),
        Weight::Hr => r.w_hr.clone().map(|r| Mat::new(&w[r], hout, h)),
        Weight::HhGates => split.then(|| Mat::new(&w_hh[..2 * h * hout], 2 * h, hout)),
        Weight::HhNew => split.then(|| Mat::new(&w_hh[2 * h * hout..], h, hout)),
    }
}

fn pack_all(host: &HostPlan<f32>, transposed: bool) -> Vec<Packs> {
    let cfg = host.config();
    (0..cfg.num_layers() * cfg.num_directions())
        .map(|ld| WEIGHTS.map(|which| weight_view(host, ld, which).map(|w| PackedWeight::pack(if transposed { w.t() } else { w }))))
        .collect()
}

/// The CPU backend's plan: the host plan and its weights packed.
#[derive(Debug, Clone)]
pub struct CpuPlan {
    pub(crate) host: HostPlan<f32>,
    /// Whether the weights are packed (the AVX2 and NEON kernels read them; scalar does not).
    packing: bool,
    /// Per layer-direction, `B = W^T` for the forward products; empty without packing.
    fwd: Vec<Packs>,
    /// Per layer-direction, `B = W` for the backward products; packed on first use.
    bwd: OnceLock<Vec<Packs>>,
    /// The tuner's choices for this plan's calls.
    pub(crate) choices: crate::backend::cpu::tuner::PlanChoices,
}

impl RnnPlan for CpuPlan {
    fn config(&self) -> &RnnConfig {
        self.host.config()
    }
}

impl CpuPlan {
    pub(crate) fn new(config: &RnnConfig, params: &[f32], packing: bool) -> Result<Self> {
        let host = HostPlan::new(config, params)?;
        let fwd = if packing { pack_all(&host, true) } else { Vec::new() };
        Ok(CpuPlan { host, packing, fwd, bwd: OnceLock::new(), choices: Default::default() })
    }

    pub(crate) fn update(&mut self, params: &[f32]) -> Result<()> {
        self.host.update(params)?;
        for (ld, packs) in self.fwd.iter_mut().enumerate() {
            for (which, p) in WEIGHTS.into_iter().zip(packs.iter_mut()) {
                if let (Some(p), Some(w)) = (p.as_mut(), weight_view(&self.host, ld, which)) {
                    p.repack(w.t());
                }
            }
        }
        // Repacked lazily at the next backward, and only if there is one.
        self.bwd = OnceLock::new();
        Ok(())
    }

    /// The packed operand of `op`, if this plan has it.
    #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
    pub(crate) fn packed(&self, op: WeightOp) -> Option<&PackedWeight> {
        if !self.packing {
            return None;
        }
        let packs = if op.transposed { &self.fwd } else { self.bwd.get_or_init(|| pack_all(&self.host, false)) };
        packs.get(op.ld)?[op.weight as usize].as_ref()
    }
}
