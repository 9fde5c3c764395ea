//! `sigmoid` and `tanh` on 16 lanes: the algorithms and constants of `isa/avx2/math.rs`, lane for
//! lane the same instructions (round to nearest, two-step Cody–Waite reduction, the same
//! polynomial, the same clamps, IEEE division), so every lane gives the bits the AVX2 version
//! gives, and its accuracy (measured there against f64 over ±100, with saturation and NaN
//! passthrough) carries over. `tests::same_bits_as_avx2` checks the identity.

use crate::backend::cpu::isa::avx2::math::{EXP_HI, EXP_P, LN2_C1, LN2_C2, LOG2E, SIG_LO, TANH_HI};
use std::arch::x86_64::*;

/// `x = n·ln2 + r`: `(n, e^r - 1)`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn reduce(x: __m512) -> (__m512i, __m512) {
    let nf = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)));
    let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_C1), x);
    let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_C2), r);
    let mut p = _mm512_set1_ps(EXP_P[0]);
    for &k in &EXP_P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(k));
    }
    let q = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    (_mm512_cvtps_epi32(nf), q)
}

/// `2^n` for `n` in the normal exponent range.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pow2(n: __m512i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127))))
}

/// `1 / (1 + e^-x)`, as `avx2::math::sigmoid`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn sigmoid(x: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let t = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)));
    let t = _mm512_max_ps(_mm512_set1_ps(SIG_LO), _mm512_min_ps(_mm512_set1_ps(EXP_HI), t));
    let (n, q) = reduce(t);
    let e = _mm512_mul_ps(_mm512_add_ps(q, one), pow2(n));
    _mm512_div_ps(one, _mm512_add_ps(one, e))
}

/// `tanh(x)`, as `avx2::math::tanh`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn tanh(x: __m512) -> __m512 {
    let sign = _mm512_set1_epi32(i32::MIN);
    let one = _mm512_set1_ps(1.0);
    let ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(x)));
    let (n, q) = reduce(_mm512_min_ps(_mm512_set1_ps(TANH_HI), _mm512_add_ps(ax, ax)));
    let s = pow2(n);
    let e = _mm512_fmadd_ps(s, q, _mm512_sub_ps(s, one));
    let t = _mm512_div_ps(e, _mm512_add_ps(e, _mm512_set1_ps(2.0)));
    _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_and_si512(_mm512_castps_si512(x), sign)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 61st bit pattern of `[0, 100]` and its negation, NaN, the infinities and the
    /// extremes: each function's bits against the AVX2 version's.
    #[test]
    fn same_bits_as_avx2() {
        if !crate::backend::cpu::Isa::Avx512.is_supported() {
            println!("skipped: this CPU lacks AVX-512F");
            return;
        }
        let top = 100.0f32.to_bits();
        let mut xs: Vec<f32> = (0..=top).step_by(61).flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)]).collect();
        xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, 1e10, -1e10]);
        xs.resize(xs.len().next_multiple_of(16), 0.5);
        let mut checked = 0;
        for chunk in xs.chunks_exact(16) {
            // SAFETY: AVX-512F (and so AVX2+FMA) checked above; every buffer holds 16 floats.
            unsafe {
                let v = _mm512_loadu_ps(chunk.as_ptr());
                let (mut s16, mut t16) = ([0.0f32; 16], [0.0f32; 16]);
                _mm512_storeu_ps(s16.as_mut_ptr(), sigmoid(v));
                _mm512_storeu_ps(t16.as_mut_ptr(), tanh(v));
                for half in 0..2 {
                    let v8 = _mm256_loadu_ps(chunk.as_ptr().add(8 * half));
                    let (mut s8, mut t8) = ([0.0f32; 8], [0.0f32; 8]);
                    _mm256_storeu_ps(s8.as_mut_ptr(), crate::backend::cpu::isa::avx2::math::sigmoid(v8));
                    _mm256_storeu_ps(t8.as_mut_ptr(), crate::backend::cpu::isa::avx2::math::tanh(v8));
                    for l in 0..8 {
                        let x = chunk[8 * half + l];
                        assert_eq!(s16[8 * half + l].to_bits(), s8[l].to_bits(), "sigmoid({x})");
                        assert_eq!(t16[8 * half + l].to_bits(), t8[l].to_bits(), "tanh({x})");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }
}
