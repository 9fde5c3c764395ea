//! Hooks that time parts of the CPU backend alone: the fused cell kernels (`benches/rnn.rs`),
//! its SGEMMs (`examples/gemm_bench.rs`) and its thread hand-off (`examples/handoff.rs`).

use crate::backend::host::{CellBackward, CellForward, HostKernels};
use crate::backend::Reference;
use crate::config::CellKind;

/// Buffers for one step of a cell's pointwise kernels, `B` rows of hidden size `H`, in f32.
pub struct CellStep {
    cell: CellKind,
    hidden: usize,
    active: Vec<bool>,
    xg: Vec<f32>,
    hg: Vec<f32>,
    b_hh: Vec<f32>,
    h_prev: Vec<f32>,
    c_prev: Vec<f32>,
    gates: Vec<f32>,
    extra: Vec<f32>,
    c: Vec<f32>,
    m: Vec<f32>,
    dc: Vec<f32>,
    dgi: Vec<f32>,
    dgh: Vec<f32>,
    dh_direct: Vec<f32>,
}

impl CellStep {
    /// Buffers for `cell` with `batch` rows of `hidden` units, filled with varied values.
    pub fn new(cell: CellKind, batch: usize, hidden: usize) -> Self {
        let gh = cell.gates() * hidden;
        let bh = batch * hidden;
        let v = |n: usize, s: f32| (0..n).map(|i| s * (((i * 7919) % 1000) as f32 / 500.0 - 1.0)).collect::<Vec<f32>>();
        let lstm = cell == CellKind::Lstm;
        let gru = cell == CellKind::Gru;
        CellStep {
            cell,
            hidden,
            active: vec![true; batch],
            xg: v(batch * gh, 2.0),
            hg: v(batch * gh, 1.5),
            b_hh: v(gh, 0.1),
            h_prev: v(bh, 0.5),
            c_prev: if lstm { v(bh, 0.5) } else { Vec::new() },
            gates: vec![0.0; batch * gh],
            extra: vec![0.0; if gru { bh } else { 0 }],
            c: vec![0.0; if lstm { bh } else { 0 }],
            m: vec![0.0; bh],
            dc: if lstm { v(bh, 0.3) } else { Vec::new() },
            dgi: vec![0.0; batch * gh],
            dgh: vec![0.0; batch * gh],
            dh_direct: vec![0.0; bh],
        }
    }

    /// Bytes one forward step reads and writes (each buffer once).
    pub fn forward_bytes(&self) -> u64 {
        let n = self.xg.len()
            + self.hg.len()
            + self.b_hh.len()
            + self.c_prev.len()
            + self.gates.len()
            + self.extra.len()
            + self.c.len()
            + self.m.len();
        let gru_h = if self.cell == CellKind::Gru { self.h_prev.len() } else { 0 };
        ((n + gru_h) * 4) as u64
    }

    /// Bytes one backward step reads and writes.
    pub fn backward_bytes(&self) -> u64 {
        let n = self.gates.len() + self.extra.len() + 2 * self.c.len() + self.m.len() + 2 * self.dc.len() + self.dgi.len() + self.dgh.len();
        let gru_h = if self.cell == CellKind::Gru { 2 * self.h_prev.len() } else { 0 };
        ((n + gru_h) * 4) as u64
    }

    /// One forward step with the reference kernels.
    pub fn forward_reference(&mut self) {
        <Reference as HostKernels<f32>>::cell_forward(&Reference, self.cell, self.forward_args());
    }

    /// One backward step with the reference kernels (after a forward step filled the gates).
    pub fn backward_reference(&mut self) {
        <Reference as HostKernels<f32>>::cell_backward(&Reference, self.cell, self.backward_args());
    }

    /// Whether this CPU runs the AVX2+FMA kernels.
    pub fn avx2_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            crate::backend::cpu::avx2_hooks::is_supported()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// One forward step with the AVX2+FMA kernels. Panics if [`avx2_available`](Self::avx2_available) is false.
    pub fn forward_avx2(&mut self) {
        #[cfg(target_arch = "x86_64")]
        crate::backend::cpu::avx2_hooks::cell_forward_checked(self.cell, self.forward_args());
        #[cfg(not(target_arch = "x86_64"))]
        panic!("AVX2 kernels exist on x86-64 only");
    }

    /// One backward step with the AVX2+FMA kernels.
    pub fn backward_avx2(&mut self) {
        #[cfg(target_arch = "x86_64")]
        crate::backend::cpu::avx2_hooks::cell_backward_checked(self.cell, self.backward_args());
        #[cfg(not(target_arch = "x86_64"))]
        panic!("AVX2 kernels exist on x86-64 only");
    }

    fn forward_args(&mut self) -> CellForward<'_, f32> {
        CellForward {
            active: &self.active,
            hidden: self.hidden,
            xg: &self.xg,
            hg: &self.hg,
            b_hh: Some(&self.b_hh),
            peephole: None,
            clip: 0.0,
            input_forget: false,
            h_prev: &self.h_prev,
            c_prev: &self.c_prev,
            gates: &mut self.gates,
            extra: &mut self.extra,
            c: &mut self.c,
            m: &mut self.m,
        }
    }

    fn backward_args(&mut self) -> CellBackward<'_, f32> {
        CellBackward {
            active: &self.active,
            hidden: self.hidden,
            peephole: None,
            clip: 0.0,
            input_forget: false,
            gates: &self.gates,
            extra: &self.extra,
            c: &self.c,
            c_prev: &self.c_prev,
            h_prev: if self.cell == CellKind::Gru { &self.h_prev } else { &[] },
            dm: &self.m,
            dc: &mut self.dc,
            dgi: &mut self.dgi,
            dgh: &mut self.dgh,
            dh_direct: &mut self.dh_direct,
        }
    }
}

/// Times `C[m, n] = A[m, k]·B[k, n]` (row-major; `A` stored transposed with `a_transposed`,
/// as the weight-gradient GEMMs read it) with the CPU backend's GEMM: `kind` is
/// `"avx2"` (B strided), `"avx2-packed"` (B packed beforehand, as the plan's weights are),
/// `"avx512"`, `"avx512-packed"`, `"neon"`, `"neon-packed"` (the same with those ISAs),
/// `"avx512-bf16pairs"` (B in bf16 pairs of rows, `A` rounded to bf16 pairs: the `VDPBF16PS`
/// tiles of a bf16 plan, where the CPU has them; widened otherwise), `"amx-bf16pairs"` (the
/// same on the AMX tiles) or
/// `"portable"` (matrixmultiply), on
/// `threads` threads. Returns the median seconds of `reps`
/// runs after one warm-up.
pub fn time_sgemm(kind: &str, threads: usize, m: usize, k: usize, n: usize, a_transposed: bool, reps: usize) -> f64 {
    crate::backend::cpu::bench_gemm(kind, threads, m, k, n, a_transposed, reps)
}

/// The median time, in nanoseconds, of one job of two empty parts on the CPU backend's thread
/// team (`cpu/team.rs`): a hand-off to a second thread and back, the fixed cost of every split
/// per-step product. It depends on where the two threads run (whether they share a cache).
pub fn team_handoff_ns(jobs: usize) -> f64 {
    crate::backend::cpu::bench_handoff(jobs)
}
