//! Per-step weights packed once per plan for the recurrent GEMM `out[B, N] = a[B, K] · W^T`.
//!
//! With a small batch the recurrent product is a few rows against a large weight, so its cost
//! is streaming `W` once per step. A general GEMM (matrixmultiply) re-packs `W` on every call,
//! which costs as much as the product itself; here `W: [N, K]` is packed once into panels of
//! [`NR`] = 16 output columns, each stored k-major (`panel[k·16 + j] = W[p·16 + j, k]`, zero
//! past `N`), so a step reads it front to back with aligned 8-wide loads.

use crate::backend::host::{HostPlan, Mat, MatMut, StepWeight};
use crate::backend::RnnPlan;
use crate::config::RnnConfig;
use crate::error::Result;

/// Output columns per panel.
pub(crate) const NR: usize = 16;

/// `W: [N, K]` in panels of [`NR`] columns, k-major.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeight {
    pub n: usize,
    pub k: usize,
    pub data: Vec<f32>,
}

impl PackedWeight {
    pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Self {
        let mut p = PackedWeight { n, k, data: vec![0.0; n.div_ceil(NR) * NR * k] };
        p.repack(w);
        p
    }

    /// Packs new values of the same shape.
    pub(crate) fn repack(&mut self, w: &[f32]) {
        assert_eq!(w.len(), self.n * self.k, "packed weight shape");
        for (p, panel) in self.data.chunks_exact_mut(NR * self.k).enumerate() {
            for kk in 0..self.k {
                for j in 0..NR {
                    let row = p * NR + j;
                    panel[kk * NR + j] = if row < self.n { w[row * self.k + kk] } else { 0.0 };
                }
            }
        }
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the packed kernel is AVX2-only so far
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// The CPU backend's plan: the host plan and the per-step weights packed.
#[derive(Debug, Clone)]
pub struct CpuPlan {
    pub(crate) host: HostPlan<f32>,
    /// Per layer-direction: `weight_hh`, and `weight_hr` with a projection.
    pub(crate) hh: Vec<PackedWeight>,
    pub(crate) hr: Vec<Option<PackedWeight>>,
}

impl RnnPlan for CpuPlan {
    fn config(&self) -> &RnnConfig {
        self.host.config()
    }
}

impl CpuPlan {
    pub(crate) fn new(config: &RnnConfig, params: &[f32]) -> Result<Self> {
        let host = HostPlan::new(config, params)?;
        let (gh, hout, h) = (config.gates() * config.hidden_size(), config.hidden_out_size(), config.hidden_size());
        let mut hh = Vec::new();
        let mut hr = Vec::new();
        for l in 0..config.num_layers() {
            for d in 0..config.num_directions() {
                let r = host.layout.layer(l, d);
                hh.push(PackedWeight::pack(&params[r.w_hh.clone()], gh, hout));
                hr.push(r.w_hr.clone().map(|r| PackedWeight::pack(&params[r], hout, h)));
            }
        }
        Ok(CpuPlan { host, hh, hr })
    }

    pub(crate) fn update(&mut self, params: &[f32]) -> Result<()> {
        self.host.update(params)?;
        let cfg = self.host.config().clone();
        for l in 0..cfg.num_layers() {
            for d in 0..cfg.num_directions() {
                let i = l * cfg.num_directions() + d;
                let r = self.host.layout.layer(l, d).clone();
                self.hh[i].repack(&params[r.w_hh]);
                if let (Some(p), Some(r)) = (self.hr[i].as_mut(), r.w_hr) {
                    p.repack(&params[r]);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn packed(&self, which: StepWeight) -> Option<&PackedWeight> {
        match which {
            StepWeight::Hh(i) => self.hh.get(i),
            StepWeight::Hr(i) => self.hr.get(i).and_then(|p| p.as_ref()),
        }
    }
}

/// Checks the shapes of `out = a · W^T` against a packed weight.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn check_shapes(a: &Mat<'_, f32>, w: &PackedWeight, out: &MatMut<'_, f32>) {
    assert_eq!(a.cols, w.k, "packed gemm: inner dimension");
    assert_eq!((out.rows, out.cols), (a.rows, w.n), "packed gemm: output shape");
    assert_eq!(out.cs, 1, "packed gemm: output rows must be contiguous");
}
