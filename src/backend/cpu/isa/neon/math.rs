//! `exp`, `sigmoid` and `tanh` on four f32 lanes, for the cell kernels.
//!
//! - `exp(x)`: range reduction `x = n·ln2 + r`, `n = round(x·log2 e)`, `|r| ≤ ln2/2`, with ln2
//!   split Cody–Waite style in a short high part (`n·LN2_HI` exact) and a low part, both
//!   subtracted with FMA; `e^r` by the Cephes `expf` polynomial (degree 7 in total); `2^n`
//!   built in the exponent field as `2^⌊n/2⌋ · 2^(n-⌊n/2⌋)`, so both factors are normal floats
//!   for every `n` of the clamped range and a subnormal result is rounded only once.
//!   `x` is clamped to `[-105, 89]` first, which already gives `+0` and `+inf`: `e^x` rounds
//!   to `+inf` from `x ≈ 88.7228` up and to `+0` below `x ≈ -103.97`, gradually through the
//!   subnormals in between.
//! - `sigmoid(x) = 1 / (1 + e^-x)` for `x ≥ 0` and `e^x / (1 + e^x)` for `x < 0`, from one
//!   `e = e^-|x| ≤ 1`: never overflows, and keeps full relative precision for large negative
//!   `x` (where `σ(x) ≈ e^x`).
//! - `tanh(x)`: on `|x| < 0.625` the Cephes `tanhf` odd polynomial `a + a·z·P(z)`, `z = a²`
//!   (so tiny and subnormal inputs return themselves); above, `(1 - e) / (1 + e)` with
//!   `e = e^-2|x|`, which has no cancellation there and reaches exactly 1 once `e` underflows.
//!   The sign of `x` is copied onto the result, so `tanh(-0) = -0`.
//!
//! NaN in gives NaN out for all three: `vmaxq_f32`/`vminq_f32` (FMAX/FMIN) propagate NaN
//! through the clamp, and every later step is arithmetic on it. Divisions use `vdivq_f32`.
//!
//! Measured under qemu-aarch64 against f64 (test `accuracy_against_f64`: 2,000,001 points evenly
//! over [-100, 100], every 2048th f32 bit pattern (so all magnitudes, zeros, subnormals, ±inf
//! and NaNs), and the edges: ±0, the smallest subnormal and normal, the overflow boundary
//! 88.72283 / 88.72284, ±100, ±f32::MAX, ±inf, NaN):
//!
//! | function | bound asserted | measured |
//! |---|---|---|
//! | `exp`, x in [-87.33, 88.72283] (normal results) | rel ≤ 3e-7 | rel 8.2e-8 |
//! | `exp`, x in [-104, -87.33) (subnormal results) | abs ≤ 1 subnormal ulp | 0.75 subnormal ulp |
//! | `sigmoid`, every x | abs ≤ 3e-7, rel ≤ 3e-7 where σ(x) is normal | abs 8.9e-8, rel 1.8e-7 |
//! | `tanh`, every x | abs ≤ 3e-7, rel ≤ 3e-7 | abs 8.9e-8, rel 1.4e-7 |
//!
//! Exact: `exp(±0) = 1`, `exp(x) = +inf` from 88.72284 and `+0` from -104 down; `σ(±0) = 0.5`,
//! `σ(100) = σ(+inf) = 1`, `σ(-inf) = 0` (`σ(-100)` is the subnormal 3.7e-44);
//! `tanh(±0) = ±0`, `tanh(±100) = tanh(±inf) = ±1`, `tanh(x) = x` for tiny `x`.
//!
//! Every function is `unsafe` only because it needs NEON, which the kernels' callers check.

use core::arch::aarch64::*;

/// `n·LN2_HI` is exact for `|n| < 2^15` (9 significant bits); `LN2_HI + LN2_LO ≈ ln 2`.
const LN2_HI: f32 = 355.0 / 512.0;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf`: `e^r ≈ 1 + r + r²·P(r)` on `|r| ≤ ln2/2` (coefficients as rounded to f32).
const EXP_P: [f32; 6] = [0.5, 1.666_666_5e-1, 4.166_579_6e-2, 8.333_452e-3, 1.398_2e-3, 1.987_569_1e-4];
/// Below `EXP_MIN` the result is +0 (`n = -151` still splits into two normal powers of two);
/// above `EXP_MAX` it is +inf (`n = 128`).
const EXP_MIN: f32 = -105.0;
const EXP_MAX: f32 = 89.0;
/// Cephes `tanhf`: `tanh(a) ≈ a + a·z·P(z)`, `z = a²`, on `a < TANH_POLY_MAX` (rounded to f32).
const TANH_P: [f32; 5] = [-3.333_328e-1, 1.333_144_2e-1, -5.373_971_6e-2, 2.063_909e-2, -5.704_988_7e-3];
const TANH_POLY_MAX: f32 = 0.625;

/// `e^x` per lane.
///
/// # Safety
/// The CPU must support NEON.
#[inline(always)]
pub(super) unsafe fn exp(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_MIN)), vdupq_n_f32(EXP_MAX));
    let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    let r = vfmsq_f32(vfmsq_f32(x, n, vdupq_n_f32(LN2_HI)), n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(EXP_P[5]);
    for &coef in EXP_P[..5].iter().rev() {
        p = vfmaq_f32(vdupq_n_f32(coef), p, r);
    }
    let p = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    // 2^n as two normal factors: n is in [-151, 128] after the clamp (0 for NaN).
    let n = vcvtq_s32_f32(n);
    let n1 = vshrq_n_s32::<1>(n);
    let n2 = vsubq_s32(n, n1);
    let bias = vdupq_n_s32(127);
    let s1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
    let s2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
    // p·s1 is exact (a normal float times a power of two); ·s2 rounds once.
    vmulq_f32(vmulq_f32(p, s1), s2)
}

/// `1 / (1 + e^-x)` per lane.
///
/// # Safety
/// The CPU must support NEON.
#[inline(always)]
pub(super) unsafe fn sigmoid(x: float32x4_t) -> float32x4_t {
    let one = vdupq_n_f32(1.0);
    let e = exp(vnegq_f32(vabsq_f32(x)));
    // x ≥ 0: 1 / (1 + e^-x); x < 0 (and NaN): e^x / (1 + e^x).
    let num = vbslq_f32(vcgeq_f32(x, vdupq_n_f32(0.0)), one, e);
    vdivq_f32(num, vaddq_f32(one, e))
}

/// `tanh(x)` per lane.
///
/// # Safety
/// The CPU must support NEON.
#[inline(always)]
pub(super) unsafe fn tanh(x: float32x4_t) -> float32x4_t {
    let one = vdupq_n_f32(1.0);
    let a = vabsq_f32(x);
    // |x| ≥ 0.625: e ≤ e^-1.25, so 1 - e loses nothing.
    let e = exp(vmulq_n_f32(a, -2.0));
    let large = vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e));
    // |x| < 0.625: odd polynomial, relative error ~1e-7 down to the subnormals.
    let z = vmulq_f32(a, a);
    let mut p = vdupq_n_f32(TANH_P[4]);
    for &coef in TANH_P[..4].iter().rev() {
        p = vfmaq_f32(vdupq_n_f32(coef), p, z);
    }
    let small = vfmaq_f32(a, vmulq_f32(p, z), a);
    // NaN fails the comparison and takes `large`, which is NaN.
    let t = vbslq_f32(vcltq_f32(a, vdupq_n_f32(TANH_POLY_MAX)), small, large);
    vbslq_f32(vdupq_n_u32(0x8000_0000), x, t)
}

/// `(tanh(x), 1 - tanh²(x))` per lane: the first bit for bit [`tanh`]'s, the second
/// `4e/(1 + e)²` with `e = e^-2|x|`, with full relative accuracy where it is small (`1 - τ·τ`
/// cancels there: an absolute error of ~1e-7 on a value of 1e-6), and no cancellation near 0.
///
/// # Safety
/// The CPU must support NEON.
#[inline(always)]
pub(super) unsafe fn tanh_sech2(x: float32x4_t) -> (float32x4_t, float32x4_t) {
    let one = vdupq_n_f32(1.0);
    let e = exp(vmulq_n_f32(vabsq_f32(x), -2.0));
    let p = vaddq_f32(one, e);
    // 4e/(1 + e)² as (4e/(1 + e))/(1 + e): 1 + e is in [1, 2].
    let d = vdivq_f32(vdivq_f32(vmulq_n_f32(e, 4.0), p), p);
    (tanh(x), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` applied to every element of `xs`, four lanes at a time (the tail zero-padded).
    fn map(f: unsafe fn(float32x4_t) -> float32x4_t, xs: &[f32]) -> Vec<f32> {
        assert!(std::arch::is_aarch64_feature_detected!("neon"));
        let mut out = Vec::with_capacity(xs.len() + 3);
        for chunk in xs.chunks(4) {
            let mut buf = [0.0f32; 4];
            buf[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: NEON was checked above; buf is four floats.
            unsafe { vst1q_f32(buf.as_mut_ptr(), f(vld1q_f32(buf.as_ptr()))) };
            out.extend_from_slice(&buf[..chunk.len()]);
        }
        out
    }

    /// The points of the accuracy sweep: evenly over [-100, 100], then every 2048th bit pattern
    /// (both signs, all exponents: zeros, subnormals, huge values, ±inf, NaNs), then the edges.
    fn sweep() -> Vec<f32> {
        let n = 2_000_000;
        let mut xs: Vec<f32> = (0..=n).map(|i| (-100.0 + 200.0 * i as f64 / n as f64) as f32).collect();
        xs.extend((0..1u32 << 21).map(|i| f32::from_bits(i << 11)));
        xs.extend([0.0, -0.0, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, f32::from_bits(1), -f32::from_bits(1)]);
        xs.extend([88.72, 88.722_83, 88.722_84, 88.8, 89.0, 89.5, -87.33, -87.34, -103.9, -104.0, -105.0, -106.0]);
        xs.extend([100.0, -100.0, f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN]);
        xs
    }

    /// Largest absolute and relative error of `got` against `want`, over the points `keep` accepts.
    fn worst(xs: &[f32], got: &[f32], want: impl Fn(f64) -> f64, keep: impl Fn(f32, f64) -> bool) -> (f64, f32, f64, f32) {
        let (mut abs, mut abs_at, mut rel, mut rel_at) = (0.0f64, 0.0f32, 0.0f64, 0.0f32);
        for (&x, &g) in xs.iter().zip(got) {
            let w = want(x as f64);
            if x.is_nan() || !keep(x, w) {
                continue;
            }
            let e = (g as f64 - w).abs();
            if e.is_nan() || e > abs {
                (abs, abs_at) = (e, x);
            }
            let r = if w == 0.0 { e } else { e / w.abs() };
            if r.is_nan() || r > rel {
                (rel, rel_at) = (r, x);
            }
        }
        (abs, abs_at, rel, rel_at)
    }

    fn sigmoid64(x: f64) -> f64 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            let e = x.exp();
            e / (1.0 + e)
        }
    }

    #[test]
    fn accuracy_against_f64() {
        let xs = sweep();
        let (e, s, t) = (map(exp, &xs), map(sigmoid, &xs), map(tanh, &xs));
        for (i, &x) in xs.iter().enumerate() {
            if x.is_nan() {
                assert!(e[i].is_nan() && s[i].is_nan() && t[i].is_nan(), "NaN in must give NaN out");
            } else {
                assert!(!s[i].is_nan() && !t[i].is_nan() && !e[i].is_nan(), "NaN out of {x:e}");
                assert!((0.0..=1.0).contains(&s[i]) && (-1.0..=1.0).contains(&t[i]), "out of range at {x:e}: {} {}", s[i], t[i]);
            }
        }

        // exp, normal results: relative error.
        let normal = |x: f32, _: f64| (-87.33..=88.722_83).contains(&x);
        let (_, _, rel, at) = worst(&xs, &e, f64::exp, normal);
        println!("exp: rel {rel:.3e} at {at:e}");
        assert!(rel <= 3e-7, "exp rel error {rel:e} at {at:e}");
        // exp, subnormal results: within one unit of the smallest subnormal.
        let sub = |x: f32, _: f64| (-104.0..-87.33).contains(&x);
        let (abs, at, _, _) = worst(&xs, &e, f64::exp, sub);
        let tiny = f32::from_bits(1) as f64;
        println!("exp subnormal: abs {:.3} ulp at {at:e}", abs / tiny);
        assert!(abs <= tiny, "exp subnormal error {abs:e} at {at:e}");

        let all = |_: f32, _: f64| true;
        let (abs, at, _, _) = worst(&xs, &s, sigmoid64, all);
        let (_, _, rel, rel_at) = worst(&xs, &s, sigmoid64, |_: f32, w: f64| w >= f32::MIN_POSITIVE as f64);
        println!("sigmoid: abs {abs:.3e} at {at:e}, rel {rel:.3e} at {rel_at:e} (normal results)");
        assert!(abs <= 3e-7, "sigmoid abs error {abs:e} at {at:e}");
        assert!(rel <= 3e-7, "sigmoid rel error {rel:e} at {rel_at:e}");

        let (abs, at, rel, rel_at) = worst(&xs, &t, f64::tanh, all);
        println!("tanh: abs {abs:.3e} at {at:e}, rel {rel:.3e} at {rel_at:e}");
        assert!(abs <= 3e-7, "tanh abs error {abs:e} at {at:e}");
        assert!(rel <= 3e-7, "tanh rel error {rel:e} at {rel_at:e}");
    }

    /// `tanh_sech2` against `tanh` and f64 (`isa::math_tests::check_tanh_sech2`; the sweep has
    /// NaNs).
    #[test]
    fn tanh_sech2_accuracy() {
        assert!(std::arch::is_aarch64_feature_detected!("neon"));
        let xs = sweep();
        let (mut taus, mut ds) = (Vec::with_capacity(xs.len()), Vec::with_capacity(xs.len()));
        for chunk in xs.chunks(4) {
            let mut buf = [0.0f32; 4];
            buf[..chunk.len()].copy_from_slice(chunk);
            let (mut t, mut d) = ([0.0f32; 4], [0.0f32; 4]);
            // SAFETY: NEON was checked above; the buffers hold four floats.
            unsafe {
                let (tv, dv) = tanh_sech2(vld1q_f32(buf.as_ptr()));
                vst1q_f32(t.as_mut_ptr(), tv);
                vst1q_f32(d.as_mut_ptr(), dv);
            }
            taus.extend_from_slice(&t[..chunk.len()]);
            ds.extend_from_slice(&d[..chunk.len()]);
        }
        crate::backend::cpu::isa::math_tests::check_tanh_sech2(&xs, &taus, &ds, &map(tanh, &xs));
    }

    #[test]
    fn edge_values() {
        let xs =
            [0.0, -0.0, 100.0, -100.0, f32::INFINITY, f32::NEG_INFINITY, 88.722_83, 88.722_84, -104.0, 1e-30, -1e-30, f32::from_bits(1)];
        let (e, s, t) = (map(exp, &xs), map(sigmoid, &xs), map(tanh, &xs));
        // exp
        assert_eq!(e[0], 1.0);
        assert_eq!(e[1], 1.0);
        assert_eq!(e[2], f32::INFINITY);
        assert_eq!(e[4], f32::INFINITY);
        assert_eq!(e[5].to_bits(), 0);
        assert!(e[6].is_finite() && e[6] > 3.4e38, "exp(88.72283) = {:e}", e[6]);
        assert_eq!(e[7], f32::INFINITY);
        assert_eq!(e[8].to_bits(), 0);
        assert_eq!(e[9], 1.0);
        // sigmoid
        assert_eq!(s[0], 0.5);
        assert_eq!(s[1], 0.5);
        assert_eq!(s[2], 1.0);
        assert!(s[3] >= 0.0 && s[3] < 1e-43, "sigmoid(-100) = {:e}", s[3]);
        assert_eq!(s[4], 1.0);
        assert_eq!(s[5].to_bits(), 0);
        // tanh: odd, exact at the saturation ends and for tiny inputs.
        assert_eq!(t[0].to_bits(), 0.0f32.to_bits());
        assert_eq!(t[1].to_bits(), (-0.0f32).to_bits());
        assert_eq!((t[2], t[3], t[4], t[5]), (1.0, -1.0, 1.0, -1.0));
        assert_eq!((t[9], t[10], t[11]), (1e-30, -1e-30, f32::from_bits(1)));
    }
}
