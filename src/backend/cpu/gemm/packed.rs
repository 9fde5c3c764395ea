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
//!
//! A plan of 16-bit storage (`Backend<f16>`, `Backend<bf16>`) packs its weights as 16-bit
//! panels of the same layout ([`Panels16`]): half the bytes a per-step product streams. The
//! tiles widen them exactly to f32 as they load them (or the driver widens a block of panels
//! before the f32 tiles read it), so a product gives the bits of the f32 product on the
//! widened weights.

use crate::backend::host::{HostPlan, Mat, Weight, WeightOp};
use crate::backend::RnnPlan;
use crate::config::{CellKind, RnnConfig};
use crate::element::Dtype;
use crate::error::Result;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

/// 64 bytes on a 64-byte boundary: the unit of [`LineBuf`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The values of packed panels, the first at a cache-line boundary, so that each 64-byte load
/// of a panel row (16 f32, or 32 bf16 values in pairs) touches one line, not two (a `Vec` of a
/// large size starts 16 bytes past a page). `T` is `f32` or `u16`, for which zero bits are zero.
#[derive(Clone, Default)]
pub(crate) struct LineBuf<T: Copy> {
    lines: Vec<Line>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

/// A value type whose all-zero bits are a valid value (zero): `f32` and `u16`.
pub(crate) trait ZeroBits: Copy {}
impl ZeroBits for f32 {}
impl ZeroBits for u16 {}

impl<T: ZeroBits> LineBuf<T> {
    /// Lines holding `len` values.
    fn lines_for(len: usize) -> usize {
        const { assert!(std::mem::align_of::<T>() <= 64) };
        len.checked_mul(std::mem::size_of::<T>()).expect("an aligned buffer's size overflows usize").div_ceil(64)
    }

    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        LineBuf { lines: vec![Line([0; 64]); Self::lines_for(len)], len, _values: std::marker::PhantomData }
    }

    /// Room for at least `n` values, grown with zeros where shorter (the values it held are
    /// kept, stale for a scratch buffer that is rewritten before it is read): the first value,
    /// to be written through (the GEMMs' per-thread packing buffers, `sgemm::Workspace`).
    pub(crate) fn at_least(&mut self, n: usize) -> *mut T {
        let lines = Self::lines_for(n);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 64]));
        }
        self.len = self.len.max(n);
        self.lines.as_mut_ptr().cast()
    }
}

impl<T: Copy> Deref for LineBuf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values of `T` (`zeroed`), aligned (align ≤ 64),
        // every bit pattern of which was written as a `T` or is zero (a valid `T`: `ZeroBits`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Copy> DerefMut for LineBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Copy> std::fmt::Debug for LineBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineBuf").field("len", &self.len).finish()
    }
}

/// The 16-bit format of `storage`'s packed panels; `None` for f32.
fn half_of(storage: Dtype) -> Option<Half> {
    match storage {
        Dtype::F16 => Some(Half::F16),
        Dtype::BF16 => Some(Half::Bf16),
        _ => None,
    }
}

/// Output columns per panel.
pub(crate) const NR: usize = 16;

/// The 16-bit formats a weight can be packed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Half {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl Half {
    /// The bits of `v`, which must be exactly representable (a plan's weights came from
    /// 16-bit parameters; `pack16` checks it).
    pub(crate) fn bits(self, v: f32) -> u16 {
        match self {
            Half::F16 => half::f16::from_f32(v).to_bits(),
            Half::Bf16 => half::bf16::from_f32(v).to_bits(),
        }
    }

    /// The value of `bits`, exactly.
    #[inline(always)]
    pub(crate) fn widen(self, bits: u16) -> f32 {
        match self {
            Half::F16 => half::f16::from_bits(bits).to_f32(),
            Half::Bf16 => f32::from_bits((bits as u32) << 16),
        }
    }

    /// `dst[i] = widen(src[i])`.
    pub(crate) fn widen_slice(self, src: &[u16], dst: &mut [f32]) {
        match self {
            Half::F16 => {
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let src: &[half::f16] = src.reinterpret_cast();
                src.convert_to_f32_slice(dst)
            }
            Half::Bf16 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f32::from_bits((s as u32) << 16)),
        }
    }
}

/// A packed weight's 16-bit panels: the bits of each value, in [`PackedWeight`]'s layout, or
/// (`pairs`, bf16 only) in pairs of rows for `VDPBF16PS`: panel `p` holds `ceil(K/2)` blocks
/// of 32 values, block `kp` being `(B[2kp, j], B[2kp + 1, j])` for its 16 columns `j` in
/// turn (a zero row past an odd `K`), so one 64-byte load is a pair of rows, each 32-bit lane
/// one column's two values, as the instruction reads them.
#[derive(Debug, Clone)]
pub(crate) struct Panels16 {
    pub format: Half,
    pub pairs: bool,
    pub bits: LineBuf<u16>,
}

impl Panels16 {
    /// Values per panel: `K·16`, or `ceil(K/2)·32` in pairs.
    pub(crate) fn panel_len(&self, k: usize) -> usize {
        if self.pairs {
            k.div_ceil(2) * 2 * NR
        } else {
            k * NR
        }
    }

    /// Rows `k0..k0 + out.len()/16` of panel `p` widened to f32 in the row layout (`out[kk·16 + j]`);
    /// `k0` even in pairs.
    pub(crate) fn widen_rows(&self, k: usize, p: usize, k0: usize, out: &mut [f32]) {
        let base = p * self.panel_len(k);
        if !self.pairs {
            return self.format.widen_slice(&self.bits[base + k0 * NR..base + k0 * NR + out.len()], out);
        }
        for (kk, row) in out.chunks_exact_mut(NR).enumerate() {
            let (kp, e) = ((k0 + kk) / 2, (k0 + kk) % 2);
            for (j, o) in row.iter_mut().enumerate() {
                *o = self.format.widen(self.bits[base + kp * 2 * NR + 2 * j + e]);
            }
        }
    }
}

/// `B: [K, N]` in panels of [`NR`] columns, k-major: in f32 (`data`), or in 16 bits (`half`,
/// `data` then empty).
#[derive(Debug, Clone)]
pub(crate) struct PackedWeight {
    pub n: usize,
    pub k: usize,
    pub data: LineBuf<f32>,
    pub half: Option<Panels16>,
}

impl PackedWeight {
    /// Packs the view `b: [K, N]`.
    pub(crate) fn pack(b: Mat<'_, f32>) -> Self {
        let mut p = PackedWeight { n: b.cols, k: b.rows, data: LineBuf::zeroed(b.cols.div_ceil(NR) * NR * b.rows), half: None };
        p.repack(b);
        p
    }

    /// Packs the view `b: [K, N]` in 16 bits; every value is exactly representable in `format`
    /// (the plan's weights came from 16-bit parameters; a NaN may come back quieted).
    pub(crate) fn pack16(b: Mat<'_, f32>, format: Half) -> Self {
        let bits = LineBuf::zeroed(b.cols.div_ceil(NR) * NR * b.rows);
        let mut p = PackedWeight { n: b.cols, k: b.rows, data: LineBuf::default(), half: Some(Panels16 { format, pairs: false, bits }) };
        p.repack(b);
        p
    }

    /// Packs the view `b: [K, N]` as bf16 in pairs of rows (see [`Panels16`]), for the
    /// `VDPBF16PS` tiles; every value a bf16 value.
    pub(crate) fn pack_pairs(b: Mat<'_, f32>) -> Self {
        let bits = LineBuf::zeroed(b.cols.div_ceil(NR) * b.rows.div_ceil(2) * 2 * NR);
        let mut p =
            PackedWeight { n: b.cols, k: b.rows, data: LineBuf::default(), half: Some(Panels16 { format: Half::Bf16, pairs: true, bits }) };
        p.repack(b);
        p
    }

    /// Packs new values of the same shape (and format).
    pub(crate) fn repack(&mut self, b: Mat<'_, f32>) {
        assert_eq!((b.rows, b.cols), (self.k, self.n), "packed weight shape");
        if self.k == 0 {
            return;
        }
        let (n, k) = (self.n, self.k);
        let value = |p: usize, kk: usize, j: usize| if p * NR + j < n { b.at(kk, p * NR + j) } else { 0.0 };
        match &mut self.half {
            None => {
                for (p, panel) in self.data.chunks_exact_mut(NR * k).enumerate() {
                    for (i, o) in panel.iter_mut().enumerate() {
                        *o = value(p, i / NR, i % NR);
                    }
                }
            }
            Some(Panels16 { format, pairs, bits }) => {
                let panel_len = if *pairs { k.div_ceil(2) * 2 * NR } else { k * NR };
                // Panel element i: row and column (in pairs: block i / 32, lane (i % 32) / 2,
                // row 2·block + i % 2).
                let at = |i: usize| if *pairs { ((i / (2 * NR)) * 2 + i % 2, (i % (2 * NR)) / 2) } else { (i / NR, i % NR) };
                for (p, panel) in bits.chunks_exact_mut(panel_len).enumerate() {
                    for (i, o) in panel.iter_mut().enumerate() {
                        let (kk, j) = at(i);
                        let v = if kk < k { value(p, kk, j) } else { 0.0 };
                        *o = format.bits(v);
                        let w = format.widen(*o);
                        debug_assert!(
                            w.to_bits() == v.to_bits() || (w.is_nan() && v.is_nan()),
                            "a 16-bit plan's weight {v} is not a {format:?} value"
                        );
                    }
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

fn pack_all(host: &HostPlan<f32>, transposed: bool, half: Option<Half>, pairs: bool) -> Vec<Packs> {
    let cfg = host.config();
    let pack = |w: Mat<'_, f32>| match half {
        None => PackedWeight::pack(w),
        Some(Half::Bf16) if pairs => PackedWeight::pack_pairs(w),
        Some(h) => PackedWeight::pack16(w, h),
    };
    (0..cfg.num_layers() * cfg.num_directions())
        .map(|ld| WEIGHTS.map(|which| weight_view(host, ld, which).map(|w| pack(if transposed { w.t() } else { w }))))
        .collect()
}

/// The CPU backend's plan: the host plan and its weights packed.
///
/// A plan is made for one storage type, that of the `Backend<T>` whose `plan` made it (f32,
/// f16 or bf16); a call of another type is refused with an error naming `plan`. A 16-bit plan
/// keeps the weights widened to f32 for the pointwise and strided uses (biases, gains,
/// peepholes, the scalar ISA's GEMMs) and packs the GEMMs' operands in 16 bits.
#[derive(Debug, Clone)]
pub struct CpuPlan {
    pub(crate) host: HostPlan<f32>,
    /// The storage type of the calls that may use it.
    pub(crate) storage: Dtype,
    /// bf16 weights packed in pairs of rows for `VDPBF16PS` (see [`Panels16`]).
    pairs: bool,
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
    /// A plan of `storage` (f32, f16 or bf16) with `params` widened to f32 (exactly, for a
    /// 16-bit plan).
    ///
    /// With `pairs` (a bf16 plan of an ISA with `VDPBF16PS` tiles) the weights are packed in
    /// pairs of rows, and the products round their other operand to bf16.
    pub(crate) fn new(config: &RnnConfig, params: &[f32], packing: bool, storage: Dtype, pairs: bool) -> Result<Self> {
        let host = HostPlan::new(config, params)?;
        let pairs = pairs && packing && storage == Dtype::BF16;
        let fwd = if packing { pack_all(&host, true, half_of(storage), pairs) } else { Vec::new() };
        Ok(CpuPlan { host, storage, pairs, packing, fwd, bwd: OnceLock::new(), choices: Default::default() })
    }

    /// The storage type of the calls that may use this plan.
    pub fn dtype(&self) -> Dtype {
        self.storage
    }

    /// Whether this plan's weight products are `VDPBF16PS` products (a bf16 plan on AVX-512
    /// with AVX512_BF16): their other operand (the layer input, the hidden state, the gates'
    /// gradients) is rounded to bf16 at the product and each pair of products summed by the
    /// instruction, as the CUDA backend's 16-bit path stores those operands. Otherwise every
    /// product is the f32 one on the widened weights.
    pub fn bf16_products(&self) -> bool {
        self.pairs
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
        let packs =
            if op.transposed { &self.fwd } else { self.bwd.get_or_init(|| pack_all(&self.host, false, half_of(self.storage), self.pairs)) };
        packs.get(op.ld)?[op.weight as usize].as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::{Half, LineBuf, PackedWeight};
    use crate::backend::host::Mat;

    /// Every packing starts its panels on a cache line, whatever the size (small buffers come
    /// from the allocator's bins, large ones 16 bytes past a page), and holds exactly its values.
    /// Under Miri (which checks `LineBuf`'s slices) only the small sizes.
    #[test]
    fn panels_start_on_a_cache_line() {
        let shapes: &[(usize, usize)] = if cfg!(miri) { &[(1, 1), (3, 17)] } else { &[(1, 1), (3, 17), (256, 1024), (513, 2049)] };
        for &(k, n) in shapes {
            let b: Vec<f32> = (0..k * n).map(|i| (i % 251) as f32 / 8.0).collect();
            let m = Mat::new(&b, k, n);
            let f32s = PackedWeight::pack(m);
            assert_eq!(f32s.data.as_ptr() as usize % 64, 0, "f32 panels of {k}×{n}");
            for p in [PackedWeight::pack16(m, Half::Bf16), PackedWeight::pack_pairs(m)] {
                let h = p.half.as_ref().expect("16-bit panels");
                assert_eq!(h.bits.as_ptr() as usize % 64, 0, "16-bit panels of {k}×{n} (pairs: {})", h.pairs);
            }
        }
        let z = LineBuf::<u16>::zeroed(33);
        assert_eq!((z.len(), z.iter().all(|&v| v == 0)), (33, true));
        assert!(LineBuf::<f32>::default().is_empty());
    }
}
