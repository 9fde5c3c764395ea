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
//! Measured worst cases are printed by `testing::check_cell` (the harness is ISA-neutral, in
//! `cpu/cell_tests.rs`); the maths functions' errors are in `math.rs`.
//!
//! Speed: `cargo test --release --lib avx2_throughput -- --ignored --nocapture` prints each
//! kernel's throughput against the reference kernel's (README, "Performance", has figures).
//! Where there is no transcendental function the reference loops auto-vectorise and both run
//! at the speed of the caches. [`cell_forward_checked`] and [`cell_backward_checked`] are the
//! safe entry points for benchmarks.

mod gru;
mod lstm;
pub(crate) mod math;
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
#[allow(dead_code)] // Called from `testkit::bench`, compiled with the `testkit` feature only.
pub(crate) fn cell_forward_checked(cell: CellKind, step: CellForward<'_, f32>) {
    assert!(is_supported(), "the AVX2 kernels need AVX2 and FMA, which this CPU lacks");
    // SAFETY: AVX2 and FMA were detected just above.
    unsafe { cell_forward(cell, step) }
}

/// Benchmark hook: [`cell_backward`], safe; panics if the CPU lacks AVX2 or FMA.
#[allow(dead_code)] // Called from `testkit::bench`, compiled with the `testkit` feature only.
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
pub(crate) fn check_forward(cell: CellKind, s: &CellForward<'_, f32>) {
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

/// The cell tests' entry points: the ISA-neutral harness (`cpu/cell_tests.rs`) on these kernels.
#[cfg(test)]
pub(super) mod testing {
    use crate::backend::cpu::cell_tests::{self, CellIsa};
    use crate::config::CellKind;

    const AVX2: CellIsa =
        CellIsa { name: "AVX2+FMA", supported: super::is_supported, forward: super::cell_forward, backward: super::cell_backward };

    /// Every forward and backward case of `cell` against the reference, in f32 and f64.
    pub(crate) fn check_cell(cell: CellKind) {
        cell_tests::check_cases(&AVX2, cell, true, true);
        cell_tests::results_do_not_depend_on_position(&AVX2, cell);
    }

    /// Saturated and NaN inputs.
    pub(crate) fn check_extremes(cell: CellKind) {
        cell_tests::check_extremes(&AVX2, cell);
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
    /// `testkit::bench` counts them.
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
            // As testkit::bench counts: each buffer once, in or out.
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
