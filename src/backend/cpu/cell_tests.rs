//! The parity harness of every ISA's fused cell kernels, run by the tests of
//! `avx2/{lstm,gru,rnn}.rs` (through `avx2::testing`) and `neon/{lstm,gru,rnn}.rs` (through
//! `neon::tests`), parameterised by the ISA's entry points ([`CellIsa`]).
//!
//! Each fused kernel against the reference kernel in f32 and in f64, on random inputs in ±25
//! (so gates saturate) and output gradients in ±1 (see [`GRAD_RANGE`]), `B` in `1..=5`, `H` in
//! {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 300} (every tail of 4 and 8 lanes; 300: a whole AVX2
//! block of 256 lanes, then one with a tail), with and without `b_hh`, with inactive rows, on sub-slices of larger buffers whose margins hold
//! sentinels. Also: saturated and NaN inputs ([`check_extremes`]), and a unit's result not
//! depending on its position in the vectors ([`results_do_not_depend_on_position`]).
//!
//! Criteria:
//! - active rows, per cell and output buffer over all cases: the worst error against the f64
//!   reference, normalised as `|y - exact| / max(1e-6, 2e-6·|exact|)`, is at most 1, or at most
//!   1.25 times that of the f32 reference kernel (whose own error is then the conditioning of
//!   the maths, not of a kernel). A direct comparison with the f32 reference can show up to 2.4
//!   where the reference is the less accurate of the two (GRU's `1 - n·n` against our
//!   `fnmadd`), so f64 is the judge;
//! - inactive rows: bit-identical to the f32 reference kernel (`c = c_prev`, zeros, `dc`
//!   unchanged, `m` untouched);
//! - the margins around every slice, inputs included, are intact; inputs' margins hold NaN so
//!   that a read outside a slice would show in the results.

use crate::backend::host::{CellBackward, CellForward, HostKernels};
use crate::backend::Reference;
use crate::config::CellKind;
use crate::SplitMix64;
use std::collections::BTreeMap;

/// An ISA's fused cell kernels, as the harness calls them.
pub(crate) struct CellIsa {
    pub name: &'static str,
    /// Whether this CPU runs them (a test says "skipped" otherwise).
    pub supported: fn() -> bool,
    pub forward: unsafe fn(CellKind, CellForward<'_, f32>),
    pub backward: unsafe fn(CellKind, CellBackward<'_, f32>),
}

const HIDDEN: [usize; 12] = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 300];
/// The range of the output gradients `dm`, `dc` given to backward. Backward is linear in them,
/// so they set the scale of its errors: at ±1 the absolute floor of the criterion (1e-6) means
/// what it says. LSTM's `dc += dm·o·(1 - tanh²(c))` amplifies a one-ulp difference of `tanh(c)`
/// near ±1 by `2|dm|`: at ±25 it would ask of `tanh` 2e-8 absolute, a third of an ulp of 1
/// (the NEON `tanh`, 3e-7 at worst, then shows 1.3 against f64 where the f32 reference shows 0.65).
const GRAD_RANGE: f64 = 1.0;
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
    /// Ours against the f32 reference: absolute where `|reference| ≤ 0.5`, relative above.
    abs_vs_f32: f64,
    rel_vs_f32: f64,
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
                let err = (y as f64 - r as f64).abs();
                if r.abs() <= 0.5 {
                    w.abs_vs_f32 = w.abs_vs_f32.max(err);
                } else {
                    w.rel_vs_f32 = w.rel_vs_f32.max(err / r.abs() as f64);
                }
            }
        } else {
            for (j, (&y, &r)) in got[row.clone()].iter().zip(&r32[row]).enumerate() {
                assert_eq!(y.to_bits(), r.to_bits(), "{what}: inactive row {b}, index {j}: {y} vs reference {r}");
            }
        }
    }
}

/// One forward parity case, its errors folded into `errs`.
fn forward_case(isa: &CellIsa, errs: &mut Errors, cell: CellKind, batch: usize, h: usize, bias: bool, seed: u64) {
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
    // SAFETY: the callers checked that the ISA is supported.
    unsafe { (isa.forward)(cell, step) };
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
fn backward_case(isa: &CellIsa, errs: &mut Errors, cell: CellKind, batch: usize, h: usize, seed: u64) {
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
    let dm = rand_vec(&mut rng, batch * h, GRAD_RANGE);
    let dc0 = rand_vec(&mut rng, if lstm { batch * h } else { 0 }, GRAD_RANGE);
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
    // SAFETY: the callers checked that the ISA is supported.
    unsafe { (isa.backward)(cell, step) };
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

/// Every forward case of `cell` (`forward`), every backward case (`backward`), or both, on
/// `isa`; the seeds are the same whichever are run. Returns the largest differences from the
/// f32 reference kernel over every output buffer, `(absolute where |reference| ≤ 0.5,
/// relative above)`, for the callers that assert more (bit-identity where no approximation is
/// involved).
pub(crate) fn check_cases(isa: &CellIsa, cell: CellKind, forward: bool, backward: bool) -> (f64, f64) {
    if !(isa.supported)() {
        println!("skipped: this CPU lacks {}", isa.name);
        return (0.0, 0.0);
    }
    let mut errs = Errors::new();
    let mut seed = 0x5eed_0000 + cell as u64 * 1000;
    for batch in 1..=5 {
        for h in HIDDEN {
            for bias in [true, false] {
                seed += 1;
                if forward {
                    forward_case(isa, &mut errs, cell, batch, h, bias, seed);
                }
            }
            seed += 1;
            if backward {
                backward_case(isa, &mut errs, cell, batch, h, seed);
            }
        }
    }
    for (buf, w) in &errs {
        println!(
            "{} {cell:?} {buf}: normalised error vs f64 {:.3} (f32 reference: {:.3}); vs the f32 reference {:.3}",
            isa.name, w.vs_f64, w.ref_vs_f64, w.vs_f32
        );
        assert!(
            w.vs_f64 <= 1.0 || w.vs_f64 <= 1.25 * w.ref_vs_f64,
            "{} {cell:?} {buf}: normalised error {:.3} against f64, the f32 reference's {:.3}",
            isa.name,
            w.vs_f64,
            w.ref_vs_f64
        );
    }
    errs.values().fold((0.0, 0.0), |(a, r), w| (w.abs_vs_f32.max(a), w.rel_vs_f32.max(r)))
}

/// The forward step of `cell` on one row, `xg` given, the rest fixed; `[gates, extra, c, m]`
/// from `isa` (or the f32 reference with `None`).
fn forward_one_row(isa: Option<&CellIsa>, cell: CellKind, h: usize, xg: &[f32]) -> [Vec<f32>; 4] {
    let gh = cell.gates() * h;
    let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
    let hg = vec![0.0; gh];
    let state = vec![0.5; h];
    let mut gates = vec![9.0; gh];
    let mut extra = vec![9.0; if gru { h } else { 0 }];
    let mut c = vec![9.0; if lstm { h } else { 0 }];
    let mut m = vec![9.0; h];
    let step = CellForward {
        active: &[true],
        hidden: h,
        xg,
        hg: &hg,
        b_hh: None,
        h_prev: &state,
        c_prev: if lstm { &state[..] } else { &[] },
        gates: &mut gates,
        extra: &mut extra,
        c: &mut c,
        m: &mut m,
    };
    match isa {
        // SAFETY: the callers checked that the ISA is supported.
        Some(isa) => unsafe { (isa.forward)(cell, step) },
        None => <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, step),
    }
    [gates, extra, c, m]
}

/// Saturated and special inputs: ±100 pre-activations give finite outputs equal to the
/// reference's, and a NaN pre-activation gives NaN in its own lane only.
pub(crate) fn check_extremes(isa: &CellIsa, cell: CellKind) {
    if !(isa.supported)() {
        println!("skipped: this CPU lacks {}", isa.name);
        return;
    }
    let h = 11;
    let gh = cell.gates() * h;
    let xg: Vec<f32> = (0..gh).map(|k| [100.0, -100.0, 0.0, -0.0, 1e30, -1e30][k % 6]).collect();
    let mut xg_nan = xg.clone();
    xg_nan[5] = f32::NAN;
    for xg in [xg, xg_nan] {
        let (ours, theirs) = (forward_one_row(Some(isa), cell, h, &xg), forward_one_row(None, cell, h, &xg));
        for (name, (o, t)) in ["gates", "extra", "c", "m"].iter().zip(ours.iter().zip(&theirs)) {
            for (k, (&a, &b)) in o.iter().zip(t).enumerate() {
                assert_eq!(a.is_nan(), b.is_nan(), "{} {cell:?} {name}[{k}]: {a} vs reference {b}", isa.name);
                assert!(a.is_nan() || (a - b).abs() <= 1e-6 * b.abs().max(1.0), "{} {cell:?} {name}[{k}]: {a} vs reference {b}", isa.name);
            }
        }
    }
}

/// Units 0, 4, 8 (vector bodies of 4 lanes, and the tail of `H = 9` for 4 and 8 lanes) and 16
/// (the tail of `H = 17` past a vector of 8) get the same inputs in every gate and state; their
/// outputs must be bit-identical, forward and backward.
pub(crate) fn results_do_not_depend_on_position(isa: &CellIsa, cell: CellKind) {
    if !(isa.supported)() {
        println!("skipped: this CPU lacks {}", isa.name);
        return;
    }
    let (h, rows) = (17, 2);
    let g = cell.gates();
    let (lstm, gru) = (cell == CellKind::Lstm, cell == CellKind::Gru);
    let mut rng = SplitMix64::new(77);
    const SAME: [usize; 3] = [4, 8, 16];
    // In every H-long block (a gate of a row, or a row of a state), units 4, 8, 16 := unit 0.
    let mut vec_with_copies = |n: usize, r: f64| {
        let mut v = rand_vec(&mut rng, n, r);
        for block in v.chunks_exact_mut(h) {
            SAME.iter().for_each(|&u| block[u] = block[0]);
        }
        v
    };
    let active = vec![true; rows];
    let (xg, hg, b_hh) = (vec_with_copies(rows * g * h, 25.0), vec_with_copies(rows * g * h, 25.0), vec_with_copies(g * h, 25.0));
    let h_prev = vec_with_copies(rows * h, 25.0);
    let c_prev = vec_with_copies(if lstm { rows * h } else { 0 }, 25.0);
    let dm = vec_with_copies(rows * h, 1.0);
    let mut dc = vec_with_copies(if lstm { rows * h } else { 0 }, 1.0);
    let mut fwd = [
        vec![0.0; rows * g * h],
        vec![0.0; if gru { rows * h } else { 0 }],
        vec![0.0; if lstm { rows * h } else { 0 }],
        vec![0.0; rows * h],
    ];
    let [gates, extra, c, m] = &mut fwd;
    let step = CellForward {
        active: &active,
        hidden: h,
        xg: &xg,
        hg: &hg,
        b_hh: Some(&b_hh),
        h_prev: &h_prev,
        c_prev: &c_prev,
        gates,
        extra,
        c,
        m,
    };
    // SAFETY: the ISA is supported (checked above).
    unsafe { (isa.forward)(cell, step) };
    let (mut dgi, mut dgh, mut dh_direct) = (vec![0.0; rows * g * h], vec![0.0; rows * g * h], vec![0.0; rows * h]);
    let step = CellBackward {
        active: &active,
        hidden: h,
        gates: &fwd[0],
        extra: &fwd[1],
        c: &fwd[2],
        c_prev: &c_prev,
        h_prev: if gru { &h_prev } else { &[] },
        dm: &dm,
        dc: &mut dc,
        dgi: &mut dgi,
        dgh: &mut dgh,
        dh_direct: &mut dh_direct,
    };
    // SAFETY: as above.
    unsafe { (isa.backward)(cell, step) };
    let outs = [
        ("gates", &fwd[0]),
        ("extra", &fwd[1]),
        ("c", &fwd[2]),
        ("m", &fwd[3]),
        ("dc", &dc),
        ("dgi", &dgi),
        ("dgh", &dgh),
        ("dh_direct", &dh_direct),
    ];
    for (name, v) in outs {
        for (b, block) in v.chunks_exact(h).enumerate() {
            for &u in &SAME {
                assert_eq!(block[u].to_bits(), block[0].to_bits(), "{} {cell:?} {name}, block {b}: unit {u} differs from unit 0", isa.name);
            }
        }
    }
}
