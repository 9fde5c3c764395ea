//! `e^x`, `σ(x)` and `tanh(x)` on 8 f32 lanes, with AVX2+FMA.
//!
//! All three share one range reduction, [`reduce`]: `x = n·ln2 + r` with `n = round(x/ln2)`
//! and `|r| ≤ ln2/2`, `r` taken in two FMA steps with the Cody–Waite split `ln2 = C1 + C2`
//! (`C1` has 9 bits, so `n·C1` is exact), and `q = e^r - 1 = r + r²·P(r)`, `P` of degree 5
//! (Cephes `expf`'s minimax coefficients, Horner with FMA). Because `q` is `r` plus a term in
//! `r²`, it keeps full *relative* accuracy as `r → 0`: it is `expm1(r)`, not just `exp(r) - 1`.
//! `2^n` is built by adding the biased exponent into the float's exponent field.
//!
//! - `exp(x) = (1 + q)·2^n`, with `2^n` applied as `2^⌊n/2⌋ · 2^(n-⌊n/2⌋)` so that both factors
//!   are normal for every `n` in `[-150, 128]` and the last multiply alone rounds: the result
//!   overflows to `+inf` exactly above `ln(f32::MAX) ≈ 88.72` and underflows gradually through
//!   the subnormals to `0`. `x` is first clamped to `[-104, 89]`, beyond which the result is
//!   already `0` or `+inf`.
//! - `sigmoid(x) = 1 / (1 + e^-x)`, with a true division. It needs `e^-x` only where it changes
//!   the quotient, so it uses one scale `2^n`: `-x` is clamped to `[-87.3, 89]` (`n` in
//!   `[-126, 128]`), and `n = 128` builds the bit pattern of `+inf`, so `σ(x) = 0` exactly for
//!   `x ≤ -88.4` (the true value is below `4e-39`) and `1` for `x ≥ 17`.
//! - `tanh(x) = sign(x)·E/(E + 2)` with `E = expm1(2|x|) = 2^n·q + (2^n - 1)` (one FMA). As `q`
//!   is an `expm1`, this keeps full relative accuracy near 0 without a second polynomial
//!   (`tanh(x) = x` exactly for tiny and subnormal `x`), and has no cancellation elsewhere.
//!   `2|x|` is clamped to 20, where `E/(E+2)` already rounds to 1, so `tanh(±100) = ±1` exactly.
//!   `tanh(-0) = -0`.
//!
//! Every clamp is written `min(bound, x)` / `max(bound, x)`: x86 `min`/`max` return their second
//! operand when either is NaN, so a NaN passes through the clamp and the arithmetic: NaN in gives
//! NaN out, for all three functions.
//!
//! Measured against f64 (`f64::exp`, `1/(1+exp(-x))`, `f64::tanh`) by the tests below, on every
//! 61st f32 bit pattern in `[-100, 100]` (subnormals included, ~35 M values) plus 2 M evenly
//! spaced points in `[-10, 10]`, plus special values:
//!
//! | function  | max abs error | max rel error | where the relative error is taken                |
//! |-----------|---------------|---------------|--------------------------------------------------|
//! | `exp`     | —             | 8.3e-8        | result normal and finite (`x ∈ [-87.3, 88.72]`)  |
//! | `sigmoid` | 8.9e-8        | 1.4e-7        | result normal (`x ≥ -87.3`)                      |
//! | `tanh`    | 8.9e-8        | 1.7e-7        | everywhere the result is nonzero                 |
//!
//! (`2^-24 ≈ 6.0e-8` is half an ulp of 1.) `exp(±inf)` is `+inf`/`0`, `sigmoid(±inf)` is
//! `1`/`0`, `tanh(±inf)` is `±1`.
//!
//! Costs per 8 lanes: about 24 instructions each, with one division for `sigmoid` and `tanh`
//! (a `tanh` with a separate small-`|x|` polynomial and blend cost 37). All are `#[inline]`, to
//! be inlined into kernels compiled with the same target features.

use std::arch::x86_64::*;

/// Below this, `e^x` rounds to `0` (`e^-104 < 2^-150`, half the least subnormal).
const EXP_LO: f32 = -104.0;
/// Above this, `e^x` is `+inf` (`ln(f32::MAX) ≈ 88.7228`); `89/ln2 < 128.5` keeps `n ≤ 128`.
pub(crate) const EXP_HI: f32 = 89.0;
/// `sigmoid`'s lower clamp of `-x`: `-87.3/ln2 > -126`, so `2^n` stays normal.
pub(crate) const SIG_LO: f32 = -87.3;
/// `tanh`'s clamp of `2|x|`: `E/(E+2)` rounds to 1 from `2|x| ≈ 18.1`.
pub(crate) const TANH_HI: f32 = 20.0;
/// `tanh_sech2`'s clamp of `2|x|`: `1 - tanh²` is `4e^-2|x|` to f32 precision down to
/// `4e^-87 ≈ 6.5e-38`, still normal (`1/(E + 2)` stays normal too).
pub(crate) const SECH2_HI: f32 = 87.0;
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln2 = C1 + C2`, Cody–Waite: `C1 = 355/512` is exact in 9 bits, so `n·C1` is exact for
/// `|n| < 2^15`.
pub(crate) const LN2_C1: f32 = 355.0 / 512.0;
pub(crate) const LN2_C2: f32 = -2.121_944_4e-4;
/// Cephes `expf`: `e^r ≈ 1 + r + r²·(P0 r⁵ + … + P5)` on `|r| ≤ ln2/2` (Cephes's `P5`,
/// 5.0000001201e-1, is 0.5 in f32).
pub(crate) const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// The functions every x86 width shares, written once: `reduce` (`(n, q)` with `x = n·ln2 + r`
/// and `q = e^r - 1`, for `x` already clamped to `|x| < 2^15·ln2`), `pow2` (`2^n` for `n` in
/// `[-126, 127]`; `n = 128` gives `+inf`), `sigmoid` and `tanh` (see the module documentation),
/// for vectors `V` (integer vectors `VI`) with the intrinsics named, compiled with `features`;
/// `round`, `neg`, `abs` and `copysign` are given as expressions. AVX-512 (`avx512/math.rs`)
/// instantiates it on 16 lanes: the same instructions per lane, so the same bits. All are
/// `unsafe` only because they need the ISA's features.
macro_rules! exp_family {
    ($features:literal, $v:ty, $vi:ty; set1: $set1:ident, add: $add:ident, sub: $sub:ident, mul: $mul:ident, div: $div:ident, min: $min:ident, max: $max:ident;
     fmadd: $fmadd:ident, fnmadd: $fnmadd:ident, cvt: $cvt:ident, set1_epi32: $set1i:ident, add_epi32: $addi:ident, cast: $cast:ident, slli: $slli:ident;
     round: |$rx:ident| $round:expr, neg: |$nx:ident| $neg:expr;
     abs: |$ax:ident| $abs:expr, copysign: |$ct:ident, $cx:ident| $copysign:expr) => {
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn round($rx: $v) -> $v {
            $round
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn neg($nx: $v) -> $v {
            $neg
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn abs($ax: $v) -> $v {
            $abs
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn copysign($ct: $v, $cx: $v) -> $v {
            $copysign
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn reduce(x: $v) -> ($vi, $v) {
            let nf = round($mul(x, $set1(LOG2E)));
            let r = $fnmadd(nf, $set1(LN2_C1), x);
            let r = $fnmadd(nf, $set1(LN2_C2), r);
            let mut p = $set1(EXP_P[0]);
            for &k in &EXP_P[1..] {
                p = $fmadd(p, r, $set1(k));
            }
            let q = $fmadd(p, $mul(r, r), r);
            ($cvt(nf), q)
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn pow2(n: $vi) -> $v {
            $cast($slli::<23>($addi(n, $set1i(127))))
        }

        /// `1 / (1 + e^-x)` per lane.
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn sigmoid(x: $v) -> $v {
            let one = $set1(1.0);
            let t = $max($set1(SIG_LO), $min($set1(EXP_HI), neg(x)));
            let (n, q) = reduce(t);
            // n = 128: (1 + q)·inf = inf, and 1/inf = 0.
            let e = $mul($add(q, one), pow2(n));
            $div(one, $add(one, e))
        }

        /// `tanh(x)` per lane.
        #[inline]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn tanh(x: $v) -> $v {
            let one = $set1(1.0);
            let ax = abs(x);
            let (n, q) = reduce($min($set1(TANH_HI), $add(ax, ax)));
            // expm1(2|x|) = 2^n·q + (2^n - 1); 2^n - 1 is exact for the n ≤ 29 seen here.
            let s = pow2(n);
            let e = $fmadd(s, q, $sub(s, one));
            let t = $div(e, $add(e, $set1(2.0)));
            copysign(t, x)
        }

        /// `(tanh(x), 1 - tanh²(x))` per lane: the first bit for bit [`tanh`]'s, the second
        /// `4(E + 1)/(E + 2)²` from the same `E = expm1(2|x|)`, with full relative accuracy
        /// where it is small (`1 - τ·τ` cancels there: an absolute error of ~1e-7 on a value
        /// of 1e-6). `2|x|` is clamped to [`SECH2_HI`] instead of [`TANH_HI`], which leaves
        /// `τ` at exactly ±1 (it rounds to 1 from `2|x| ≈ 18.1`).
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(dead_code, reason = "AVX-512 instantiates it unused: its layer-normalised LSTM hooks are AVX2's")]
        pub(crate) unsafe fn tanh_sech2(x: $v) -> ($v, $v) {
            let one = $set1(1.0);
            let ax = abs(x);
            let (n, q) = reduce($min($set1(SECH2_HI), $add(ax, ax)));
            // 2^n - 1 rounds to 2^n for n > 24, where E + 1 and E + 2 round to E anyway.
            let s = pow2(n);
            let e = $fmadd(s, q, $sub(s, one));
            let e2 = $add(e, $set1(2.0));
            let t = $div(e, e2);
            // 4r·((E + 1)·r), r = 1/(E + 2): no overflow or underflow for E ≤ e^87.
            let r = $div(one, e2);
            let d = $mul($mul($set1(4.0), r), $mul($add(e, one), r));
            (copysign(t, x), d)
        }
    };
}
pub(crate) use exp_family;

exp_family! {
    "avx2,fma", __m256, __m256i; set1: _mm256_set1_ps, add: _mm256_add_ps, sub: _mm256_sub_ps, mul: _mm256_mul_ps, div: _mm256_div_ps, min: _mm256_min_ps, max: _mm256_max_ps;
    fmadd: _mm256_fmadd_ps, fnmadd: _mm256_fnmadd_ps, cvt: _mm256_cvtps_epi32, set1_epi32: _mm256_set1_epi32, add_epi32: _mm256_add_epi32, cast: _mm256_castsi256_ps, slli: _mm256_slli_epi32;
    round: |x| _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x), neg: |x| _mm256_xor_ps(x, _mm256_set1_ps(-0.0));
    abs: |x| _mm256_andnot_ps(_mm256_set1_ps(-0.0), x), copysign: |t, x| _mm256_or_ps(t, _mm256_and_ps(x, _mm256_set1_ps(-0.0)))
}

/// `e^x` per lane, over the whole f32 range.
///
/// The kernels use `sigmoid` and `tanh`, which need less; this is the full function, kept with
/// them and tested alongside as the ISA's vector `exp`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) unsafe fn exp(x: __m256) -> __m256 {
    let x = _mm256_max_ps(_mm256_set1_ps(EXP_LO), _mm256_min_ps(_mm256_set1_ps(EXP_HI), x));
    let (n, q) = reduce(x);
    // 2^n = 2^n1 · 2^n2 with n1 = n >> 1: both in [-75, 64] for n in [-150, 128], so normal;
    // (1 + q)·2^n1 is exact, the multiply by 2^n2 rounds once.
    let n1 = _mm256_srai_epi32::<1>(n);
    let n2 = _mm256_sub_epi32(n, n1);
    let p = _mm256_add_ps(q, _mm256_set1_ps(1.0));
    _mm256_mul_ps(_mm256_mul_ps(p, pow2(n1)), pow2(n2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> bool {
        let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if !ok {
            crate::testkit::skip_isa("avx2");
        }
        ok
    }

    /// Applies `f` to `xs`, 8 lanes at a time (the last chunk padded with zeros).
    fn map(xs: &[f32], f: unsafe fn(__m256) -> __m256) -> Vec<f32> {
        let mut out = vec![0.0f32; xs.len()];
        for (src, dst) in xs.chunks(8).zip(out.chunks_mut(8)) {
            let mut lane = [0.0f32; 8];
            lane[..src.len()].copy_from_slice(src);
            // SAFETY: supported() was checked by the caller; `lane` holds 8 floats.
            let v = unsafe { f(_mm256_loadu_ps(lane.as_ptr())) };
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(lane.as_mut_ptr(), v) };
            dst.copy_from_slice(&lane[..src.len()]);
        }
        out
    }

    /// The test inputs: every 61st bit pattern of `[0, 100]` and of `[-100, -0]`, 2 M evenly
    /// spaced points in `[-10, 10]`, and the edges of each function's range.
    fn sweep() -> Vec<f32> {
        let top = 100.0f32.to_bits();
        let mut xs: Vec<f32> = (0..=top).step_by(61).flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)]).collect();
        let n = 2_000_000;
        xs.extend((0..=n).map(|i| -10.0 + 20.0 * (i as f64 / n as f64) as f32));
        xs.extend([
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            0.625,
            -0.625,
            0.624_999_94,
            88.72,
            88.722_83,
            88.7229,
            88.8,
            -87.33,
            -87.34,
            -103.9,
            -104.0,
            100.0,
            -100.0,
            1e10,
            -1e10,
            f32::MAX,
            f32::MIN,
        ]);
        xs
    }

    struct Err {
        abs: f64,
        rel: f64,
        at_abs: f32,
        at_rel: f32,
    }

    /// Max abs error, and max rel error where `rel_where(exact)` holds.
    fn measure(xs: &[f32], got: &[f32], exact: impl Fn(f64) -> f64, rel_where: impl Fn(f64) -> bool) -> Err {
        let mut e = Err { abs: 0.0, rel: 0.0, at_abs: 0.0, at_rel: 0.0 };
        for (&x, &y) in xs.iter().zip(got) {
            let want = exact(x as f64);
            if !want.is_finite() {
                continue;
            }
            let abs = (y as f64 - want).abs();
            if abs.is_nan() || abs > e.abs {
                e.abs = abs;
                e.at_abs = x;
            }
            if want != 0.0 && rel_where(want) {
                let rel = abs / want.abs();
                if rel.is_nan() || rel > e.rel {
                    e.rel = rel;
                    e.at_rel = x;
                }
            }
        }
        e
    }

    fn nan_inputs() -> Vec<f32> {
        vec![f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffc0_1234), f32::from_bits(0x7fff_ffff)]
    }

    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]
    fn exp_accuracy() {
        if !supported() {
            return;
        }
        let xs = sweep();
        let got = map(&xs, exp);
        let max = f32::MAX as f64;
        let normal = |v: f64| v >= f32::MIN_POSITIVE as f64 && v <= max;
        let e = measure(&xs, &got, f64::exp, normal);
        println!("exp: max rel error {:.3e} at {}", e.rel, e.at_rel);
        assert!(e.rel <= 1.5e-7, "exp: rel error {:.3e} at x = {}", e.rel, e.at_rel);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = (x as f64).exp();
            if want > max * (1.0 + 1e-7) {
                assert_eq!(y, f32::INFINITY, "exp({x}) should overflow");
            } else if want <= max * (1.0 - 1e-7) {
                assert!(y.is_finite(), "exp({x}) = {y}");
            }
            if want < f32::MIN_POSITIVE as f64 {
                // Subnormal results: within one least subnormal.
                assert!((y as f64 - want).abs() <= f32::from_bits(1) as f64, "exp({x}) = {y:e}, want {want:e}");
            }
            assert!(y >= 0.0, "exp({x}) = {y}");
        }
        let special = map(&[f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 88.8, -104.0, -110.0, 100.0], exp);
        assert_eq!(special, [f32::INFINITY, 0.0, 1.0, 1.0, f32::INFINITY, 0.0, 0.0, f32::INFINITY]);
        // e^-100 ≈ 3.7e-44 is subnormal: 27 times the least subnormal.
        assert_eq!(map(&[-100.0], exp)[0], f32::from_bits(27));
        assert!(map(&nan_inputs(), exp).iter().all(|y| y.is_nan()));
    }

    /// `f` over the sweep against `exact`: at most 1.5e-7 absolute and 2.5e-7 relative where
    /// `rel_where(exact)`; returns the inputs and results, or `None` without AVX2+FMA.
    fn abs_rel_accuracy(
        name: &str,
        f: unsafe fn(__m256) -> __m256,
        exact: fn(f64) -> f64,
        rel_where: fn(f64) -> bool,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        if !supported() {
            return None;
        }
        let xs = sweep();
        let got = map(&xs, f);
        let e = measure(&xs, &got, exact, rel_where);
        println!("{name}: max abs error {:.3e} at {}, max rel error {:.3e} at {}", e.abs, e.at_abs, e.rel, e.at_rel);
        assert!(e.abs <= 1.5e-7, "{name}: abs error {:.3e} at x = {}", e.abs, e.at_abs);
        assert!(e.rel <= 2.5e-7, "{name}: rel error {:.3e} at x = {}", e.rel, e.at_rel);
        assert!(map(&nan_inputs(), f).iter().all(|y| y.is_nan()), "{name}: NaN in, NaN out");
        Some((xs, got))
    }

    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]
    fn sigmoid_accuracy() {
        let exact = |x: f64| 1.0 / (1.0 + (-x).exp());
        let Some((_, got)) = abs_rel_accuracy("sigmoid", sigmoid, exact, |v| v >= f32::MIN_POSITIVE as f64) else { return };
        assert!(got.iter().all(|y| (0.0..=1.0).contains(y)));
        let special = map(&[100.0, -100.0, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, f32::MAX, f32::MIN], sigmoid);
        assert_eq!(special, [1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0]);
    }

    /// `tanh_sech2` against `tanh` and f64 (`isa::math_tests::check_tanh_sech2`), and NaN.
    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]
    fn tanh_sech2_accuracy() {
        if !supported() {
            return;
        }
        let mut xs = sweep();
        xs.extend([0.0, -0.0, 9.0, 10.0, 43.4, 43.6, 100.0, -100.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX]);
        let (mut taus, mut ds) = (Vec::with_capacity(xs.len()), Vec::with_capacity(xs.len()));
        for chunk in xs.chunks(8) {
            let mut buf = [0.0f32; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            let (mut t, mut d) = ([0.0f32; 8], [0.0f32; 8]);
            // SAFETY: AVX2+FMA were checked above; the buffers hold 8 floats.
            unsafe {
                let (tv, dv) = tanh_sech2(_mm256_loadu_ps(buf.as_ptr()));
                _mm256_storeu_ps(t.as_mut_ptr(), tv);
                _mm256_storeu_ps(d.as_mut_ptr(), dv);
            }
            taus.extend_from_slice(&t[..chunk.len()]);
            ds.extend_from_slice(&d[..chunk.len()]);
        }
        crate::backend::cpu::isa::math_tests::check_tanh_sech2(&xs, &taus, &ds, &map(&xs, tanh));
        let nan = nan_inputs();
        // SAFETY: AVX2+FMA were checked above; 8 floats.
        let (t, d) = unsafe {
            let mut buf = [0.0f32; 8];
            buf[..nan.len()].copy_from_slice(&nan);
            let (tv, dv) = tanh_sech2(_mm256_loadu_ps(buf.as_ptr()));
            let (mut t, mut d) = ([0.0f32; 8], [0.0f32; 8]);
            _mm256_storeu_ps(t.as_mut_ptr(), tv);
            _mm256_storeu_ps(d.as_mut_ptr(), dv);
            (t, d)
        };
        assert!(t[..nan.len()].iter().chain(&d[..nan.len()]).all(|v| v.is_nan()), "NaN in, NaN out");
    }

    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]
    fn tanh_accuracy() {
        let Some((xs, got)) = abs_rel_accuracy("tanh", tanh, f64::tanh, |_| true) else { return };
        for (&x, &y) in xs.iter().zip(&got) {
            // Odd, bounded by 1, and exact where f32 cannot do better.
            assert!(y.abs() <= 1.0 && (y == 0.0 || y.is_sign_negative() == x.is_sign_negative()), "tanh({x}) = {y}");
            if x.abs() < 1e-4 {
                assert!((y as f64 - (x as f64).tanh()).abs() <= (x.abs() as f64) * 2.4e-7, "tanh({x}) = {y}");
            }
        }
        let special = map(&[100.0, -100.0, 10.0, -10.0, f32::INFINITY, f32::NEG_INFINITY, 0.0, f32::MAX, f32::MIN], tanh);
        assert_eq!(special, [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 1.0, -1.0]);
        let neg_zero = map(&[-0.0], tanh)[0];
        assert!(neg_zero == 0.0 && neg_zero.is_sign_negative());
        let tiny = f32::from_bits(3);
        assert_eq!(map(&[tiny, -tiny], tanh), [tiny, -tiny]);
    }
}
