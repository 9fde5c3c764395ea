//! `sigmoid` and `tanh` on 16 lanes: `isa/avx2/math.rs`'s `exp_family!`, lane for lane the
//! same instructions (round to nearest, two-step Cody–Waite reduction, the same
//! polynomial, the same clamps, IEEE division), so every lane gives the bits the AVX2 version
//! gives, and its accuracy (measured there against f64 over ±100, with saturation and NaN
//! passthrough) carries over. `tests::same_bits_as_avx2` checks the identity.

use crate::backend::cpu::isa::avx2::math::{exp_family, EXP_HI, EXP_P, LN2_C1, LN2_C2, LOG2E, SECH2_HI, SIG_LO, TANH_HI};
use std::arch::x86_64::*;

// AVX-512F has no float xor/and/or (AVX-512DQ has): the sign is worked on the integer view.
exp_family! {
    "avx512f,avx2,fma", __m512, __m512i; set1: _mm512_set1_ps, add: _mm512_add_ps, sub: _mm512_sub_ps, mul: _mm512_mul_ps, div: _mm512_div_ps, min: _mm512_min_ps, max: _mm512_max_ps;
    fmadd: _mm512_fmadd_ps, fnmadd: _mm512_fnmadd_ps, cvt: _mm512_cvtps_epi32, set1_epi32: _mm512_set1_epi32, add_epi32: _mm512_add_epi32, cast: _mm512_castsi512_ps, slli: _mm512_slli_epi32;
    round: |x| _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x), neg: |x| _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)));
    abs: |x| _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32(i32::MIN), _mm512_castps_si512(x))), copysign: |t, x| _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 61st bit pattern of `[0, 100]` and its negation, NaN, the infinities and the
    /// extremes: each function's bits against the AVX2 version's.
    #[test]
    #[cfg_attr(miri, ignore = "SIMD intrinsics: Miri runs no AVX2/AVX-512 code here (no ISA is detected under Miri)")]
    fn same_bits_as_avx2() {
        if !crate::backend::cpu::Isa::Avx512.is_supported() {
            crate::testkit::skip_isa("avx512");
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
