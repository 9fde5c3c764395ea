//! Philox 4x32 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
//! SC 2011), the counter-based generator cuRAND, cuDNN's dropout and PyTorch's CUDA generator
//! use: 128 random bits are a pure function of a 128-bit counter and a 64-bit key, so that any
//! backend, ISA or thread computes the bits of any position without a state to share or to
//! save. With 10 rounds ([`philox4x32_10`]) it passes TestU01's BigCrush; the tests check it
//! against the known-answer vectors of the Random123 distribution.
//!
//! A Bernoulli draw with probability `p` compares one 32-bit word with an integer threshold
//! ([`Threshold`]), so the decision is exact integer arithmetic, the same bits on every
//! backend, with no floating-point conversion to round differently.

use crate::error::{Error, Result};

/// The round multipliers.
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
/// The key schedule's increments (the golden ratio's and `sqrt(3) − 1`'s first 32 bits).
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The high and low 32 bits of `a·b`.
#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox 4x32 with `R` rounds: the four 32-bit words of `counter` under `key`.
#[inline]
pub fn philox4x32<const R: usize>(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..R {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Philox 4x32-10, the generator of the masks.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32::<10>(counter, key)
}

/// The hits below `bound` of the words of the consecutive counters `[first + i, c1, c2, c3]` (`i`
/// in `0..count`, `count` at most 8): bit `4·i + j` is set when word `j` of counter `i` (of
/// [`philox4x32_10`]) is below `bound` (at most `2³² - 1`, as [`Threshold::bound`]); the bits of
/// counters `count..8` may be set or not. On x86-64 with AVX2 (detected at run time) 8 counters
/// run together in 256-bit registers and are compared there (`philox8_avx2`); elsewhere the
/// `count` counters one after the other.
#[inline]
pub fn philox4x32_10_x8_below(first: u32, c1: u32, c2: u32, c3: u32, key: [u32; 2], bound: u64, count: u32) -> u32 {
    // (Miri runs the portable loop.)
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available (checked above).
        return unsafe { philox8_avx2(first, c1, c2, c3, key, bound) };
    }
    let mut bits = 0;
    for i in 0..count.min(8) {
        let w = philox4x32_10([first.wrapping_add(i), c1, c2, c3], key);
        for (j, &u) in w.iter().enumerate() {
            bits |= u32::from(u64::from(u) < bound) << (4 * i as usize + j);
        }
    }
    bits
}

/// `SPREAD[m]`: the 8 bits of `m` moved to bits `0, 4, …, 28`.
#[cfg(all(target_arch = "x86_64", not(miri)))]
const SPREAD: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut m = 0;
    while m < 256 {
        let mut i = 0;
        while i < 8 {
            t[m] |= ((m as u32 >> i) & 1) << (4 * i);
            i += 1;
        }
        m += 1;
    }
    t
};

/// [`philox4x32_10_x8_below`] with AVX2: each of the four words of the 8 counters in one
/// register; a round's 32×32→64-bit products by `_mm256_mul_epu32` on the even lanes and on the
/// odd ones shifted down, their halves put back in lane order with blends; the unsigned
/// comparison with `bound` as a signed one of both sides with the top bit flipped.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "avx2")]
unsafe fn philox8_avx2(first: u32, c1: u32, c2: u32, c3: u32, key: [u32; 2], bound: u64) -> u32 {
    use std::arch::x86_64::*;
    // (hi, lo) of each lane's 32×32-bit product with `m` (the multiplier in every 64-bit lane).
    #[inline(always)]
    unsafe fn mulhilo8(m: __m256i, c: __m256i) -> (__m256i, __m256i) {
        let even = _mm256_mul_epu32(c, m);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(c), m);
        let lo = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
        let hi = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        (hi, lo)
    }
    let (m0, m1) = (_mm256_set1_epi64x(i64::from(M0)), _mm256_set1_epi64x(i64::from(M1)));
    let mut c = [
        _mm256_add_epi32(_mm256_set1_epi32(first as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
        _mm256_set1_epi32(c1 as i32),
        _mm256_set1_epi32(c2 as i32),
        _mm256_set1_epi32(c3 as i32),
    ];
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo8(m0, c[0]);
        let (hi1, lo1) = mulhilo8(m1, c[2]);
        let (k0, k1) = (_mm256_set1_epi32(k[0] as i32), _mm256_set1_epi32(k[1] as i32));
        c = [_mm256_xor_si256(_mm256_xor_si256(hi1, c[1]), k0), lo1, _mm256_xor_si256(_mm256_xor_si256(hi0, c[3]), k1), lo0];
    }
    // u < bound (unsigned) as (u ^ 2³¹) < (bound ^ 2³¹) (signed); bound ≤ 2³² - 1.
    let flip = _mm256_set1_epi32(i32::MIN);
    let b = _mm256_xor_si256(_mm256_set1_epi32(bound.min(u64::from(u32::MAX)) as u32 as i32), flip);
    let mut bits = 0;
    for (j, w) in c.into_iter().enumerate() {
        let below = _mm256_cmpgt_epi32(b, _mm256_xor_si256(w, flip));
        let m = _mm256_movemask_ps(_mm256_castsi256_ps(below)) as usize;
        bits |= SPREAD[m] << j;
    }
    bits
}

/// The key of a 64-bit seed: its low and high words.
pub fn key_of_seed(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// A Bernoulli draw on a random 32-bit word: the word `u` is a hit when `u < t`, where `t` is
/// the probability times 2³², rounded to the nearest integer; so a hit has probability
/// `t / 2³²`, within 2⁻³³ of the one asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold(u64);

impl Threshold {
    /// The threshold of probability `p` in `[0, 1)`; `arg` names the argument in the error for
    /// any other value (NaN included).
    pub fn new(arg: &str, p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(arg, "a probability in [0, 1)", p));
        }
        Ok(Threshold(((p * 4_294_967_296.0).round() as u64).min(u64::from(u32::MAX))))
    }

    /// Whether the word `u` is a hit (probability [`probability`](Self::probability)).
    #[inline(always)]
    pub fn hit(self, u: u32) -> bool {
        u64::from(u) < self.0
    }

    /// The exact probability of a hit, `t / 2³²`.
    pub fn probability(self) -> f64 {
        self.0 as f64 / 4_294_967_296.0
    }

    /// `t`, the hits being the words below it (for kernels that compare themselves).
    pub fn bound(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8-counter hits (AVX2 where the machine has it) are those of the one-counter function,
    /// also where the first word wraps around, for bounds from 0 to 2³² - 1.
    #[test]
    fn eight_counters_are_the_one_counter_function() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        };
        for n in 0..if cfg!(miri) { 20 } else { 2000 } {
            let first = if n % 10 == 0 { u32::MAX - 3 } else { next() };
            let (c1, c2, c3, key) = (next(), next(), next(), [next(), next()]);
            let bound = match n % 5 {
                0 => 0,
                1 => u64::from(u32::MAX),
                _ => u64::from(next()),
            };
            let count = 1 + n % 8;
            let got = philox4x32_10_x8_below(first, c1, c2, c3, key, bound, count);
            for i in 0..count {
                let want = philox4x32_10([first.wrapping_add(i), c1, c2, c3], key);
                for (j, &u) in want.iter().enumerate() {
                    let bit = (got >> (4 * i as usize + j)) & 1 == 1;
                    assert_eq!(bit, u64::from(u) < bound, "counter {i} word {j} of [{first}, {c1}, {c2}, {c3}], bound {bound}");
                }
            }
        }
    }

    /// Random123's `kat_vectors` for philox4x32 (counter, key, answer), 7 and 10 rounds.
    #[test]
    fn matches_the_random123_known_answers() {
        let pi_ctr = [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344];
        let pi_key = [0xa409_3822, 0x299f_31d0];
        let ones = [u32::MAX; 4];
        let ten: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            ([0; 4], [0; 2], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]),
            (ones, [u32::MAX; 2], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]),
            (pi_ctr, pi_key, [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]),
        ];
        for (ctr, key, want) in ten {
            assert_eq!(philox4x32_10(ctr, key), want, "philox4x32-10 of {ctr:08x?} under {key:08x?}");
        }
        let seven: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            ([0; 4], [0; 2], [0x5f6f_b709, 0x0d89_3f64, 0x4f12_1f81, 0x4f73_0a48]),
            (ones, [u32::MAX; 2], [0x5207_ddc2, 0x4516_5e59, 0x4d8e_e751, 0x8c52_f662]),
            (pi_ctr, pi_key, [0x4dfc_caba, 0x190a_87f0, 0xc473_62ba, 0xb6b5_242a]),
        ];
        for (ctr, key, want) in seven {
            assert_eq!(philox4x32::<7>(ctr, key), want, "philox4x32-7 of {ctr:08x?} under {key:08x?}");
        }
    }

    #[test]
    fn a_seed_is_its_two_words() {
        assert_eq!(key_of_seed(0x0123_4567_89ab_cdef), [0x89ab_cdef, 0x0123_4567]);
    }

    #[test]
    fn thresholds_are_exact_and_probabilities_are_checked() {
        let t = Threshold::new("p", 0.25).unwrap();
        assert_eq!(t.bound(), 1 << 30);
        assert!(t.hit((1 << 30) - 1) && !t.hit(1 << 30));
        assert_eq!(t.probability(), 0.25);
        let zero = Threshold::new("p", 0.0).unwrap();
        assert!(!zero.hit(0), "p = 0 never hits");
        let near_one = Threshold::new("p", 1.0 - 1e-12).unwrap();
        assert!(near_one.hit(u32::MAX - 1) && !near_one.hit(u32::MAX), "the largest threshold is 2³² − 1");
        for bad in [1.0, -0.1, f64::NAN, f64::INFINITY] {
            let e = Threshold::new("dropout", bad).unwrap_err().to_string();
            assert!(e.contains("dropout") && e.contains("[0, 1)"), "{bad}: {e}");
        }
    }

    /// Over 2²⁰ words of consecutive counters, a quarter hit within 4 standard deviations, and
    /// each of the 32 bits is set half the time within 4 standard deviations.
    #[test]
    #[cfg_attr(miri, ignore = "statistics over 2^20 words: minutes under Miri, and philox.rs has no unsafe code")]
    fn words_are_uniform_enough_for_masks() {
        let t = Threshold::new("p", 0.25).unwrap();
        let n = 1usize << 18;
        let (mut hits, mut bits) = (0usize, [0usize; 32]);
        for i in 0..n {
            for w in philox4x32_10([i as u32, 7, 0, 0], key_of_seed(42)) {
                hits += usize::from(t.hit(w));
                for (b, count) in bits.iter_mut().enumerate() {
                    *count += ((w >> b) & 1) as usize;
                }
            }
        }
        let words = (4 * n) as f64;
        let sd = |p: f64| (words * p * (1.0 - p)).sqrt();
        assert!((hits as f64 - 0.25 * words).abs() < 4.0 * sd(0.25), "{hits} hits of {words}");
        for (b, &count) in bits.iter().enumerate() {
            assert!((count as f64 - 0.5 * words).abs() < 4.0 * sd(0.5), "bit {b}: set {count} times of {words}");
        }
    }
}
