//! x86-64 AVX2+FMA kernels of the CPU backend: the fused per-step cell kernels, forward and
//! backward, for every cell, in f32.
//!
//! - `math.rs`: `exp`, `sigmoid`, `tanh` on 8 lanes, with their measured accuracy.
//! - `lstm.rs`, `gru.rs`, `rnn.rs` (tanh and relu): one forward and one backward kernel each,
//!   computing exactly the maths of the reference kernels in `backend/reference/`.
//! - `sgemm.rs`: the blocked SGEMM (6×16 tile) for every product of six rows or more;
//!   `sgemm_skinny.rs`: fewer rows against a packed weight (see `cpu/packed.rs`).
//!
//! Each kernel makes one pass over memory per step: every input value is read from memory once
//! and every output written once, row by row (a row of `[B, G·H]` is `G` runs of `H` values,
//! read as parallel streams). A row is cut into chunks of 8 lanes; the last `H mod 8` values
//! are loaded and stored with `vmaskmovps` under a lane mask, so they go through the very same
//! instructions as the others and a value's result never depends on its position or on `H`.
//! The LSTM and GRU forward kernels work in blocks of 256 lanes, each in two short passes (the
//! gates, then the outputs from the gates just stored, still in L1), which turns one long
//! dependency chain per chunk into independent ones. Inactive rows follow the [`CellForward`] /
//! [`CellBackward`] contract with plain slice operations.
//!
//! Bounds: [`cell_forward`] and [`cell_backward`] assert once per step that every slice the cell
//! uses has its documented length (`[B, G·H]`, `[B, H]`, `[G·H]`, overflow checked); the kernels
//! then take each row by safe slicing, and only the 8-lane loads and stores of [`load`] and
//! [`store`] use raw pointers, at offsets `j + lane < H` inside a row (`debug_assert!`ed).
//! Slices a cell does not use are neither checked nor read.
//!
//! Accuracy: against the reference kernel run in f64 on random inputs in ±25, every output
//! buffer is within 1e-6 (abs) or 2e-6 (rel), or, where the maths is ill-conditioned, no
//! further than the f32 reference kernel itself (the test allows 1.25 times its error; measured,
//! never more than 1 time). Example: GRU's `n = tanh(a_n + r·ah_n)` with `|ah_n|` up to 50 turns
//! a one-ulp difference in `r` into 3e-6 in `n`, for any f32 code.
//! Measured worst cases are printed by `testing::check_cell`; the maths functions' errors are
//! in `math.rs`.
//!
//! Speed (`cargo test --release --lib avx2_throughput -- --ignored --nocapture`, one thread,
//! B = 64, H = 512, bytes counted as `bench_support` counts them, on a shared 2-core AMD EPYC
//! (Zen 4) VM at 2.6 GHz, so ±20 % run to run):
//!
//! | cell     | forward: AVX2 (reference) | backward: AVX2 (reference) |
//! |----------|---------------------------|----------------------------|
//! | LSTM     | 22 GB/s (1.2 GB/s), ×19   | 45 GB/s (3.7 GB/s), ×12    |
//! | GRU      | 21 GB/s (1.5 GB/s), ×14   | 33 GB/s (25 GB/s), ×1.3    |
//! | RNN tanh | 28 GB/s (1.2 GB/s), ×23   | 55–80 GB/s, as reference   |
//! | RNN relu | 90–100 GB/s, as reference | 55–80 GB/s, as reference   |
//!
//! Where there is no transcendental function the reference loops auto-vectorise and both run
//! at the speed of the caches. [`cell_forward_checked`] and [`cell_backward_checked`] are the
//! safe entry points for benchmarks.

mod gru;
mod lstm;
mod math;
// The packed recurrent GEMM (`cpu/packed.rs` layout), owned by the GEMM work; called from
// `cpu/gemm.rs`.
mod rnn;
pub(crate) mod sgemm;
pub(crate) mod sgemm_skinny;

use crate::backend::host::{CellBackward, CellForward};
use crate::config::CellKind;
use std::arch::x86_64::*;

/// The fused forward step of `cell`.
///
/// Panics if a slice `cell` uses does not have its documented length.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
pub(crate) unsafe fn cell_forward(cell: CellKind, step: CellForward<'_, f32>) {
    check_forward(cell, &step);
    // SAFETY: the caller guarantees AVX2 and FMA; check_forward proved every slice the kernel
    // reads or writes has its documented length.
    unsafe {
        match cell {
            CellKind::Lstm => lstm::forward(step),
            CellKind::Gru => gru::forward(step),
            CellKind::RnnTanh => rnn::forward::<{ rnn::TANH }>(step),
            CellKind::RnnRelu => rnn::forward::<{ rnn::RELU }>(step),
        }
    }
}

/// The fused backward step of `cell`.
///
/// Panics if a slice `cell` uses does not have its documented length.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
pub(crate) unsafe fn cell_backward(cell: CellKind, step: CellBackward<'_, f32>) {
    check_backward(cell, &step);
    // SAFETY: as in cell_forward, with check_backward.
    unsafe {
        match cell {
            CellKind::Lstm => lstm::backward(step),
            CellKind::Gru => gru::backward(step),
            CellKind::RnnTanh => rnn::backward::<{ rnn::TANH }>(step),
            CellKind::RnnRelu => rnn::backward::<{ rnn::RELU }>(step),
        }
    }
}

/// Whether this CPU can run these kernels.
pub(crate) fn is_supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Benchmark hook: [`cell_forward`], safe; panics if the CPU lacks AVX2 or FMA.
#[allow(dead_code)] // Called from `bench_support`, which is wired separately.
pub(crate) fn cell_forward_checked(cell: CellKind, step: CellForward<'_, f32>) {
    assert!(is_supported(), "the AVX2 kernels need AVX2 and FMA, which this CPU lacks");
    // SAFETY: AVX2 and FMA were detected just above.
    unsafe { cell_forward(cell, step) }
}

/// Benchmark hook: [`cell_backward`], safe; panics if the CPU lacks AVX2 or FMA.
#[allow(dead_code)] // Called from `bench_support`, which is wired separately.
pub(crate) fn cell_backward_checked(cell: CellKind, step: CellBackward<'_, f32>) {
    assert!(is_supported(), "the AVX2 kernels need AVX2 and FMA, which this CPU lacks");
    // SAFETY: AVX2 and FMA were detected just above.
    unsafe { cell_backward(cell, step) }
}

/// The sizes of one step: `(H, G·H, B·H, B·G·H)`; panics if one overflows `usize`.
fn sizes(cell: CellKind, batch: usize, hidden: usize) -> (usize, usize, usize, usize) {
    let gh = cell.gates().checked_mul(hidden);
    let bh = batch.checked_mul(hidden);
    let bgh = gh.and_then(|gh| gh.checked_mul(batch));
    match (gh, bh, bgh) {
        (Some(gh), Some(bh), Some(bgh)) => (hidden, gh, bh, bgh),
        _ => panic!("avx2 {cell:?} kernel: B = {batch}, H = {hidden} overflow usize"),
    }
}

fn check_len(cell: CellKind, name: &str, len: usize, want: usize) {
    assert!(len == want, "avx2 {cell:?} kernel: `{name}` has {len} values, expected {want}");
}

/// Panics unless every slice of `s` that `cell` uses has its documented length.
fn check_forward(cell: CellKind, s: &CellForward<'_, f32>) {
    let (_, gh, bh, bgh) = sizes(cell, s.active.len(), s.hidden);
    let check = |name, len, want| check_len(cell, name, len, want);
    check("xg", s.xg.len(), bgh);
    check("hg", s.hg.len(), bgh);
    if let Some(b_hh) = s.b_hh {
        check("b_hh", b_hh.len(), gh);
    }
    check("gates", s.gates.len(), bgh);
    check("m", s.m.len(), bh);
    match cell {
        CellKind::Lstm => {
            check("c_prev", s.c_prev.len(), bh);
            check("c", s.c.len(), bh);
        }
        CellKind::Gru => {
            check("h_prev", s.h_prev.len(), bh);
            check("extra", s.extra.len(), bh);
        }
        CellKind::RnnTanh | CellKind::RnnRelu => {}
    }
}

/// Panics unless every slice of `s` that `cell` uses has its documented length.
fn check_backward(cell: CellKind, s: &CellBackward<'_, f32>) {
    let (_, _, bh, bgh) = sizes(cell, s.active.len(), s.hidden);
    let check = |name, len, want| check_len(cell, name, len, want);
    check("gates", s.gates.len(), bgh);
    check("dm", s.dm.len(), bh);
    check("dgi", s.dgi.len(), bgh);
    check("dgh", s.dgh.len(), bgh);
    check("dh_direct", s.dh_direct.len(), bh);
    match cell {
        CellKind::Lstm => {
            check("c", s.c.len(), bh);
            check("c_prev", s.c_prev.len(), bh);
            check("dc", s.dc.len(), bh);
        }
        CellKind::Gru => {
            check("extra", s.extra.len(), bh);
            check("h_prev", s.h_prev.len(), bh);
        }
        CellKind::RnnTanh | CellKind::RnnRelu => {}
    }
}

/// The lanes of one chunk of a row: `n` values from the chunk's start, under `mask` (lane `k`
/// on iff `k < n`). Only a row's tail chunk has `n < 8`.
#[derive(Clone, Copy)]
struct Lanes {
    n: usize,
    mask: __m256i,
}

impl Lanes {
    /// The first `n` lanes, `n` in `1..=8`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn first(n: usize) -> Lanes {
        debug_assert!((1..=8).contains(&n));
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        Lanes { n, mask }
    }
}

/// `for_chunks!(start, end, |j, lanes| full, tail)` runs `full` for each whole chunk of 8
/// lanes `j = start, start + 8, …` of `start..end`, then `tail` for the rest (`end - j < 8`
/// lanes), if any. A macro rather than a
/// function taking a closure, so that the body is compiled with the caller's target features.
macro_rules! for_chunks {
    ($start:expr, $end:expr, |$j:ident, $lanes:ident| $full:expr, $tail:expr) => {{
        let end: usize = $end;
        let all = $crate::backend::cpu::avx2::Lanes::first(8);
        let mut $j: usize = $start;
        while $j + 8 <= end {
            let $lanes = all;
            $full;
            $j += 8;
        }
        if $j < end {
            let $lanes = $crate::backend::cpu::avx2::Lanes::first(end - $j);
            $tail;
        }
    }};
}
use for_chunks;

/// `s[at..at + lanes.n]` in the low lanes; under `TAIL` the other lanes are 0 and their memory
/// is not touched.
///
/// # Safety
/// The CPU must support AVX2; `at + lanes.n <= s.len()`, and `lanes.n == 8` unless `TAIL`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load<const TAIL: bool>(s: &[f32], at: usize, lanes: Lanes) -> __m256 {
    debug_assert!(at + lanes.n <= s.len() && (TAIL || lanes.n == 8));
    // SAFETY: the lanes read, at..at + lanes.n, are inside `s` (the caller's precondition);
    // vmaskmovps does not access masked-off lanes, nor fault on them.
    unsafe {
        let p = s.as_ptr().add(at);
        if TAIL {
            _mm256_maskload_ps(p, lanes.mask)
        } else {
            _mm256_loadu_ps(p)
        }
    }
}

/// Writes the low `lanes.n` lanes of `v` to `s[at..at + lanes.n]`, and nothing else.
///
/// # Safety
/// As [`load`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store<const TAIL: bool>(s: &mut [f32], at: usize, lanes: Lanes, v: __m256) {
    debug_assert!(at + lanes.n <= s.len() && (TAIL || lanes.n == 8));
    // SAFETY: as in load: only at..at + lanes.n, inside `s`, is written.
    unsafe {
        let p = s.as_mut_ptr().add(at);
        if TAIL {
            _mm256_maskstore_ps(p, lanes.mask, v)
        } else {
            _mm256_storeu_ps(p, v)
        }
    }
}

/// `xg[k] + hg[k] + b_hh[k]` for the chunk at `k`, summed in the reference's order.
///
/// # Safety
/// As [`load`], for each slice (`b_hh` with the same offset).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn preact<const TAIL: bool>(xg: &[f32], hg: &[f32], b_hh: Option<&[f32]>, k: usize, lanes: Lanes) -> __m256 {
    let a = _mm256_add_ps(load::<TAIL>(xg, k, lanes), load::<TAIL>(hg, k, lanes));
    match b_hh {
        Some(b) => _mm256_add_ps(a, load::<TAIL>(b, k, lanes)),
        None => a,
    }
}

/// `hg[k] + b_hh[k]` for the chunk at `k`.
///
/// # Safety
/// As [`preact`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hidden_preact<const TAIL: bool>(hg: &[f32], b_hh: Option<&[f32]>, k: usize, lanes: Lanes) -> __m256 {
    let a = load::<TAIL>(hg, k, lanes);
    match b_hh {
        Some(b) => _mm256_add_ps(a, load::<TAIL>(b, k, lanes)),
        None => a,
    }
}

/// `d·s·(1 - s)`: a gradient through a sigmoid `s`, in the reference's order.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dsigmoid(d: __m256, s: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_mul_ps(d, s), _mm256_sub_ps(_mm256_set1_ps(1.0), s))
}

/// Parity harness shared by the kernel tests of `lstm.rs`, `gru.rs` and `rnn.rs`: each fused
/// kernel against the reference kernel in f32 and in f64, on random inputs in ±25 (so gates
/// saturate), `B` in `1..=5`, `H` in {1, 3, 7, 8, 9, 15, 16, 17, 33, 300} (300: a whole block
/// of 256 lanes, then one with a tail), with and without `b_hh`, with inactive rows, on
/// sub-slices of larger buffers whose margins hold sentinels.
///
/// Criteria:
/// - active rows, per cell and output buffer over all cases: the worst error against the f64
///   reference, normalised as `|y - exact| / max(1e-6, 2e-6·|exact|)`, is at most 1, or at most
///   1.25 times that of the f32 reference kernel (whose own error is then the conditioning of
///   the maths, not of a kernel). A direct comparison with the f32 reference can show up to 2.4
///   where the reference is the less accurate of the two (GRU's `1 - n·n` against our
///   `fnmadd`), so f64 is the judge;
/// - inactive rows: bit-identical to the f32 reference kernel (`c = c_prev`, zeros, `dc`
///   unchanged, `m` untouched);
/// - the margins around every slice, inputs included, are intact; inputs' margins hold NaN so
///   that a read outside a slice would show in the results.
#[cfg(test)]
pub(super) mod testing {
    use super::{cell_backward, cell_forward, is_supported};
    use crate::backend::host::{CellBackward, CellForward, HostKernels};
    use crate::backend::Reference;
    use crate::config::CellKind;
    use crate::SplitMix64;
    use std::collections::BTreeMap;

    pub(crate) const HIDDEN: [usize; 10] = [1, 3, 7, 8, 9, 15, 16, 17, 33, 300];
    const PAD: usize = 11;
    const OUT_SENTINEL: f32 = -7777.25;

    /// `len` values with `PAD` margins of `pad` on both sides.
    struct Padded {
        data: Vec<f32>,
        len: usize,
        pad: f32,
    }

    impl Padded {
        fn new(vals: &[f32], pad: f32) -> Padded {
            let mut data = vec![pad; vals.len() + 2 * PAD];
            data[PAD..PAD + vals.len()].copy_from_slice(vals);
            Padded { data, len: vals.len(), pad }
        }
        fn get(&self) -> &[f32] {
            &self.data[PAD..PAD + self.len]
        }
        fn get_mut(&mut self) -> &mut [f32] {
            &mut self.data[PAD..PAD + self.len]
        }
        fn assert_margins(&self, what: &str) {
            let margins = self.data[..PAD].iter().chain(&self.data[PAD + self.len..]);
            assert!(margins.into_iter().all(|v| v.to_bits() == self.pad.to_bits()), "{what}: written outside its slice");
        }
    }

    fn rand_vec(rng: &mut SplitMix64, n: usize, r: f64) -> Vec<f32> {
        (0..n).map(|_| rng.uniform(-r, r) as f32).collect()
    }

    fn to64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// Some rows inactive: for `B ≥ 2` at least one of each.
    fn rand_active(rng: &mut SplitMix64, batch: usize) -> Vec<bool> {
        let mut a: Vec<bool> = (0..batch).map(|_| rng.next_f64() < 0.7).collect();
        if batch >= 2 {
            let off = rng.below(batch as u64) as usize;
            a[off] = false;
            a[(off + 1) % batch] = true;
        } else {
            a[0] = true;
        }
        a
    }

    /// Worst normalised errors on one output buffer, over all cases: ours and the f32
    /// reference's against f64, and ours against the f32 reference (for information).
    #[derive(Default, Debug, Clone, Copy)]
    struct Worst {
        vs_f64: f64,
        ref_vs_f64: f64,
        vs_f32: f64,
    }

    /// Worst errors per output buffer (`"forward gates"`, …).
    type Errors = BTreeMap<&'static str, Worst>;

    /// Folds the errors of `got` (and of the f32 reference `r32`) against `r64` on active rows
    /// into `errs[key]`, and asserts bit-equality with `r32` on inactive rows.
    #[allow(clippy::too_many_arguments)]
    fn compare(errs: &mut Errors, key: &'static str, what: &str, width: usize, active: &[bool], got: &[f32], r32: &[f32], r64: &[f64]) {
        if width == 0 {
            return;
        }
        let norm = |y: f32, x: f64| (y as f64 - x).abs() / (2e-6 * x.abs()).max(1e-6);
        let w = errs.entry(key).or_default();
        for (b, &a) in active.iter().enumerate() {
            let row = b * width..(b + 1) * width;
            if a {
                for ((&y, &r), &x) in got[row.clone()].iter().zip(&r32[row.clone()]).zip(&r64[row]) {
                    assert!(!y.is_nan(), "{what}: NaN in row {b}");
                    w.vs_f64 = w.vs_f64.max(norm(y, x));
                    w.ref_vs_f64 = w.ref_vs_f64.max(norm(r, x));
                    w.vs_f32 = w.vs_f32.max(norm(y, r as f64));
                }
            } else {
                for (j, (&y, &r)) in got[row.clone()].iter().zip(&r32[row]).enumerate() {
                    assert_eq!(y.to_bits(), r.to_bits(), "{what}: inactive row {b}, index {j}: {y} vs reference {r}");
                }
            }
        }
    }

    /// One forward parity case, its errors folded into `errs`.
    fn forward_case(errs: &mut Errors, cell: CellKind, batch: usize, h: usize, bias: bool, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let g = cell.gates();
        let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
        let active = rand_active(&mut rng, batch);
        let xg = rand_vec(&mut rng, batch * g * h, 25.0);
        let hg = rand_vec(&mut rng, batch * g * h, 25.0);
        let b_hh = rand_vec(&mut rng, g * h, 25.0);
        let h_prev = rand_vec(&mut rng, batch * h, 25.0);
        let c_prev = rand_vec(&mut rng, if lstm { batch * h } else { 0 }, 25.0);
        // Outputs start with values of their own, so that untouched memory shows.
        let gates0 = rand_vec(&mut rng, batch * g * h, 1.0);
        let extra0 = rand_vec(&mut rng, if gru { batch * h } else { 0 }, 1.0);
        let c0 = rand_vec(&mut rng, if lstm { batch * h } else { 0 }, 1.0);
        let m0 = rand_vec(&mut rng, batch * h, 1.0);

        // The AVX2 kernel, on padded sub-slices.
        let nan = f32::NAN;
        let ins = [&xg, &hg, &b_hh, &h_prev, &c_prev].map(|v| Padded::new(v, nan));
        let mut outs = [&gates0, &extra0, &c0, &m0].map(|v| Padded::new(v, OUT_SENTINEL));
        let [p_gates, p_extra, p_c, p_m] = &mut outs;
        let step = CellForward {
            active: &active,
            hidden: h,
            xg: ins[0].get(),
            hg: ins[1].get(),
            b_hh: bias.then(|| ins[2].get()),
            h_prev: ins[3].get(),
            c_prev: ins[4].get(),
            gates: p_gates.get_mut(),
            extra: p_extra.get_mut(),
            c: p_c.get_mut(),
            m: p_m.get_mut(),
        };
        // SAFETY: the callers checked is_supported().
        unsafe { cell_forward(cell, step) };
        for (p, name) in ins.iter().zip(["xg", "hg", "b_hh", "h_prev", "c_prev"]) {
            p.assert_margins(name);
        }
        for (p, name) in outs.iter().zip(["gates", "extra", "c", "m"]) {
            p.assert_margins(name);
        }

        // The reference in f32.
        let (mut gates, mut extra, mut c, mut m) = (gates0.clone(), extra0.clone(), c0.clone(), m0.clone());
        <Reference as HostKernels<f32>>::cell_forward(
            &Reference,
            cell,
            CellForward {
                active: &active,
                hidden: h,
                xg: &xg,
                hg: &hg,
                b_hh: bias.then_some(&b_hh[..]),
                h_prev: &h_prev,
                c_prev: &c_prev,
                gates: &mut gates,
                extra: &mut extra,
                c: &mut c,
                m: &mut m,
            },
        );
        // And in f64, from the same values.
        let b_hh64 = to64(&b_hh);
        let (mut gates64, mut extra64, mut c64, mut m64) = (to64(&gates0), to64(&extra0), to64(&c0), to64(&m0));
        <Reference as HostKernels<f64>>::cell_forward(
            &Reference,
            cell,
            CellForward {
                active: &active,
                hidden: h,
                xg: &to64(&xg),
                hg: &to64(&hg),
                b_hh: bias.then_some(&b_hh64[..]),
                h_prev: &to64(&h_prev),
                c_prev: &to64(&c_prev),
                gates: &mut gates64,
                extra: &mut extra64,
                c: &mut c64,
                m: &mut m64,
            },
        );

        let what = |buf: &str| format!("{cell:?} forward B={batch} H={h} bias={bias}: {buf}");
        compare(errs, "forward gates", &what("gates"), g * h, &active, outs[0].get(), &gates, &gates64);
        compare(errs, "forward extra", &what("extra"), if gru { h } else { 0 }, &active, outs[1].get(), &extra, &extra64);
        compare(errs, "forward c", &what("c"), if lstm { h } else { 0 }, &active, outs[2].get(), &c, &c64);
        compare(errs, "forward m", &what("m"), h, &active, outs[3].get(), &m, &m64);
    }

    /// One backward parity case, from the saved values of a reference forward step; returns
    /// its errors folded into `errs`.
    fn backward_case(errs: &mut Errors, cell: CellKind, batch: usize, h: usize, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let g = cell.gates();
        let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
        let active = rand_active(&mut rng, batch);
        let xg = rand_vec(&mut rng, batch * g * h, 25.0);
        let hg = rand_vec(&mut rng, batch * g * h, 25.0);
        let b_hh = rand_vec(&mut rng, g * h, 25.0);
        let h_prev = rand_vec(&mut rng, if gru { batch * h } else { 0 }, 25.0);
        let c_prev = rand_vec(&mut rng, if lstm { batch * h } else { 0 }, 25.0);
        let mut gates = vec![0.0; batch * g * h];
        let mut extra = vec![0.0; if gru { batch * h } else { 0 }];
        let mut c = vec![0.0; if lstm { batch * h } else { 0 }];
        let mut m = vec![0.0; batch * h];
        <Reference as HostKernels<f32>>::cell_forward(
            &Reference,
            cell,
            CellForward {
                active: &active,
                hidden: h,
                xg: &xg,
                hg: &hg,
                b_hh: Some(&b_hh),
                h_prev: &h_prev,
                c_prev: &c_prev,
                gates: &mut gates,
                extra: &mut extra,
                c: &mut c,
                m: &mut m,
            },
        );
        let dm = rand_vec(&mut rng, batch * h, 25.0);
        let dc0 = rand_vec(&mut rng, if lstm { batch * h } else { 0 }, 25.0);
        let dgi0 = rand_vec(&mut rng, batch * g * h, 1.0);
        let dgh0 = rand_vec(&mut rng, batch * g * h, 1.0);
        let dhd0 = rand_vec(&mut rng, batch * h, 1.0);

        let nan = f32::NAN;
        let ins = [&gates, &extra, &c, &c_prev, &h_prev, &dm].map(|v| Padded::new(v, nan));
        let mut outs = [&dc0, &dgi0, &dgh0, &dhd0].map(|v| Padded::new(v, OUT_SENTINEL));
        let [p_dc, p_dgi, p_dgh, p_dhd] = &mut outs;
        let step = CellBackward {
            active: &active,
            hidden: h,
            gates: ins[0].get(),
            extra: ins[1].get(),
            c: ins[2].get(),
            c_prev: ins[3].get(),
            h_prev: ins[4].get(),
            dm: ins[5].get(),
            dc: p_dc.get_mut(),
            dgi: p_dgi.get_mut(),
            dgh: p_dgh.get_mut(),
            dh_direct: p_dhd.get_mut(),
        };
        // SAFETY: the callers checked is_supported().
        unsafe { cell_backward(cell, step) };
        for (p, name) in ins.iter().zip(["gates", "extra", "c", "c_prev", "h_prev", "dm"]) {
            p.assert_margins(name);
        }
        for (p, name) in outs.iter().zip(["dc", "dgi", "dgh", "dh_direct"]) {
            p.assert_margins(name);
        }

        let (mut dc, mut dgi, mut dgh, mut dhd) = (dc0.clone(), dgi0.clone(), dgh0.clone(), dhd0.clone());
        <Reference as HostKernels<f32>>::cell_backward(
            &Reference,
            cell,
            CellBackward {
                active: &active,
                hidden: h,
                gates: &gates,
                extra: &extra,
                c: &c,
                c_prev: &c_prev,
                h_prev: &h_prev,
                dm: &dm,
                dc: &mut dc,
                dgi: &mut dgi,
                dgh: &mut dgh,
                dh_direct: &mut dhd,
            },
        );
        let (mut dc64, mut dgi64, mut dgh64, mut dhd64) = (to64(&dc0), to64(&dgi0), to64(&dgh0), to64(&dhd0));
        <Reference as HostKernels<f64>>::cell_backward(
            &Reference,
            cell,
            CellBackward {
                active: &active,
                hidden: h,
                gates: &to64(&gates),
                extra: &to64(&extra),
                c: &to64(&c),
                c_prev: &to64(&c_prev),
                h_prev: &to64(&h_prev),
                dm: &to64(&dm),
                dc: &mut dc64,
                dgi: &mut dgi64,
                dgh: &mut dgh64,
                dh_direct: &mut dhd64,
            },
        );

        let what = |buf: &str| format!("{cell:?} backward B={batch} H={h}: {buf}");
        compare(errs, "backward dc", &what("dc"), if lstm { h } else { 0 }, &active, outs[0].get(), &dc, &dc64);
        compare(errs, "backward dgi", &what("dgi"), g * h, &active, outs[1].get(), &dgi, &dgi64);
        compare(errs, "backward dgh", &what("dgh"), g * h, &active, outs[2].get(), &dgh, &dgh64);
        compare(errs, "backward dh_direct", &what("dh_direct"), h, &active, outs[3].get(), &dhd, &dhd64);
    }

    /// Every forward and backward case of `cell`.
    pub(crate) fn check_cell(cell: CellKind) {
        if !is_supported() {
            println!("skipped: no AVX2+FMA");
            return;
        }
        let mut errs = Errors::new();
        let mut seed = 0x5eed_0000 + cell as u64 * 1000;
        for batch in 1..=5 {
            for h in HIDDEN {
                for bias in [true, false] {
                    seed += 1;
                    forward_case(&mut errs, cell, batch, h, bias, seed);
                }
                seed += 1;
                backward_case(&mut errs, cell, batch, h, seed);
            }
        }
        for (buf, w) in &errs {
            println!(
                "{cell:?} {buf}: normalised error vs f64 {:.3} (f32 reference: {:.3}); vs the f32 reference {:.3}",
                w.vs_f64, w.ref_vs_f64, w.vs_f32
            );
            assert!(
                w.vs_f64 <= 1.0 || w.vs_f64 <= 1.25 * w.ref_vs_f64,
                "{cell:?} {buf}: normalised error {:.3} against f64, the f32 reference's {:.3}",
                w.vs_f64,
                w.ref_vs_f64
            );
        }
    }

    /// Saturated and special inputs: ±100 pre-activations give finite outputs equal to the
    /// reference's, and a NaN pre-activation gives NaN in its own lane only.
    pub(crate) fn check_extremes(cell: CellKind) {
        if !is_supported() {
            println!("skipped: no AVX2+FMA");
            return;
        }
        let h = 11;
        let gh = cell.gates() * h;
        let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
        let xg: Vec<f32> = (0..gh).map(|k| [100.0, -100.0, 0.0, -0.0, 1e30, -1e30][k % 6]).collect();
        let mut xg_nan = xg.clone();
        xg_nan[5] = f32::NAN;
        for xg in [xg, xg_nan] {
            let hg = vec![0.0; gh];
            let state = vec![0.5; h];
            let empty: [f32; 0] = [];
            let run = |avx2: bool| {
                let mut gates = vec![9.0; gh];
                let mut extra = vec![9.0; if gru { h } else { 0 }];
                let mut c = vec![9.0; if lstm { h } else { 0 }];
                let mut m = vec![9.0; h];
                let step = CellForward {
                    active: &[true],
                    hidden: h,
                    xg: &xg,
                    hg: &hg,
                    b_hh: None,
                    h_prev: &state,
                    c_prev: if lstm { &state[..] } else { &empty[..] },
                    gates: &mut gates,
                    extra: &mut extra,
                    c: &mut c,
                    m: &mut m,
                };
                if avx2 {
                    // SAFETY: is_supported() was checked above.
                    unsafe { cell_forward(cell, step) }
                } else {
                    <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, step)
                }
                [gates, extra, c, m]
            };
            let (ours, theirs) = (run(true), run(false));
            for (name, (o, t)) in ["gates", "extra", "c", "m"].iter().zip(ours.iter().zip(&theirs)) {
                for (k, (&a, &b)) in o.iter().zip(t).enumerate() {
                    assert_eq!(a.is_nan(), b.is_nan(), "{cell:?} {name}[{k}]: {a} vs reference {b}");
                    assert!(a.is_nan() || (a - b).abs() <= 1e-6 * b.abs().max(1.0), "{cell:?} {name}[{k}]: {a} vs reference {b}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::host::HostKernels;
    use crate::backend::Reference;
    use std::time::Instant;

    #[test]
    #[should_panic(expected = "`hg` has 31 values, expected 32")]
    fn wrong_length_panics() {
        if !is_supported() {
            panic!("`hg` has 31 values, expected 32 (skipped: no AVX2+FMA)");
        }
        let (xg, hg, bh) = (vec![0.0; 32], vec![0.0; 31], vec![0.0; 32]);
        let (mut gates, mut c, mut m, c_prev) = (vec![0.0; 32], vec![0.0; 8], vec![0.0; 8], vec![0.0; 8]);
        let step = CellForward {
            active: &[true],
            hidden: 8,
            xg: &xg,
            hg: &hg,
            b_hh: Some(&bh),
            h_prev: &[],
            c_prev: &c_prev,
            gates: &mut gates,
            extra: &mut [],
            c: &mut c,
            m: &mut m,
        };
        // SAFETY: is_supported() was checked above.
        unsafe { cell_forward(CellKind::Lstm, step) };
    }

    /// GB/s of `f(false)` (the reference) and `f(true)` (AVX2) for `bytes` per call: the best
    /// of 15 rounds of `reps` calls each, the two alternating so that both see the same load.
    fn gbps(bytes: u64, reps: usize, mut f: impl FnMut(bool)) -> (f64, f64) {
        let mut best = [f64::INFINITY; 2];
        for round in 0..16 {
            for (k, avx2) in [false, true].into_iter().enumerate() {
                let t = Instant::now();
                for _ in 0..reps {
                    f(avx2);
                }
                // Round 0 warms up.
                if round > 0 {
                    best[k] = best[k].min(t.elapsed().as_secs_f64() / reps as f64);
                }
            }
        }
        (bytes as f64 / best[0] / 1e9, bytes as f64 / best[1] / 1e9)
    }

    /// Forward and backward throughput of every cell against the reference kernels, one thread,
    /// B = 64, H = 512 (or `AVX2_BH=B,H`; `AVX2_CELL=gru` for one cell), bytes counted as
    /// `bench_support` counts them.
    /// `cargo test --release --lib avx2_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, run by hand"]
    fn avx2_throughput() {
        if !is_supported() {
            println!("skipped: no AVX2+FMA");
            return;
        }
        let (b, h) = std::env::var("AVX2_BH").ok().map_or((64, 512), |s| {
            let v: Vec<usize> = s.split(',').map(|x| x.trim().parse().expect("AVX2_BH=B,H")).collect();
            (v[0], v[1])
        });
        let only = std::env::var("AVX2_CELL").ok();
        for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh, CellKind::RnnRelu] {
            if only.as_ref().is_some_and(|c| !format!("{cell:?}").eq_ignore_ascii_case(c)) {
                continue;
            }
            let gh = cell.gates() * h;
            let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
            let v = |n: usize, s: f32| (0..n).map(|i| s * (((i * 7919) % 1000) as f32 / 500.0 - 1.0)).collect::<Vec<f32>>();
            let lh = |on: bool| if on { b * h } else { 0 };
            let active = vec![true; b];
            let (xg, hg, b_hh, h_prev, c_prev) = (v(b * gh, 2.0), v(b * gh, 1.5), v(gh, 0.1), v(b * h, 0.5), v(lh(lstm), 0.5));
            let (mut gates, mut extra, mut c, mut m) = (vec![0.0; b * gh], vec![0.0; lh(gru)], vec![0.0; lh(lstm)], vec![0.0; b * h]);
            let mut dc = v(lh(lstm), 0.3);
            let (mut dgi, mut dgh, mut dhd) = (vec![0.0; b * gh], vec![0.0; b * gh], vec![0.0; b * h]);
            // As bench_support counts: each buffer once, in or out.
            let fwd_bytes = ((2 * b * gh + gh + 2 * lh(lstm) + b * gh + lh(gru) + b * h + lh(gru)) * 4) as u64;
            let bwd_bytes = ((b * gh + lh(gru) + 2 * lh(lstm) + b * h + 2 * lh(lstm) + 2 * b * gh + 2 * lh(gru)) * 4) as u64;
            let dm = v(b * h, 1.0);
            let reps = (100_000_000 / fwd_bytes as usize).clamp(5, 20_000);

            let mut fwd = |avx2: bool| {
                let step = CellForward {
                    active: &active,
                    hidden: h,
                    xg: &xg,
                    hg: &hg,
                    b_hh: Some(&b_hh),
                    h_prev: &h_prev,
                    c_prev: &c_prev,
                    gates: &mut gates,
                    extra: &mut extra,
                    c: &mut c,
                    m: &mut m,
                };
                if avx2 {
                    cell_forward_checked(cell, step)
                } else {
                    <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, step)
                }
            };
            let (f_ref, f_avx) = gbps(fwd_bytes, reps, &mut fwd);
            let mut bwd = |avx2: bool| {
                let step = CellBackward {
                    active: &active,
                    hidden: h,
                    gates: &gates,
                    extra: &extra,
                    c: &c,
                    c_prev: &c_prev,
                    h_prev: if gru { &h_prev } else { &[] },
                    dm: &dm,
                    dc: &mut dc,
                    dgi: &mut dgi,
                    dgh: &mut dgh,
                    dh_direct: &mut dhd,
                };
                if avx2 {
                    cell_backward_checked(cell, step)
                } else {
                    <Reference as HostKernels<f32>>::cell_backward(&Reference, cell, step)
                }
            };
            let (b_ref, b_avx) = gbps(bwd_bytes, reps, &mut bwd);
            println!(
                "{cell:?} B={b} H={h}: forward {f_avx:.1} GB/s (reference {f_ref:.2}, {:.1}x); backward {b_avx:.1} GB/s (reference {b_ref:.2}, {:.1}x)",
                f_avx / f_ref,
                b_avx / b_ref
            );
        }
    }
}
