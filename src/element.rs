//! Element types: what a buffer stores ([`Element`]) and what the reference computes in ([`Float`]).
//!
//! The reference backend is generic over [`Float`] (f32 and f64). The storage-only types
//! [`half::f16`] and [`half::bf16`] implement [`Element`] alone (the CUDA backend stores in them
//! and computes in f32), so they do not touch the compute traits.

use std::fmt::{Debug, Display};
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The element types of a safetensors file this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// IEEE binary16 (`half::f16`).
    F16,
    /// bfloat16 (`half::bf16`): f32's exponent, 8 significant bits.
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// Unit roundoff `u` of round-to-nearest: 2^-24 (f32), 2^-53 (f64), 2^-11 (f16), 2^-8
    /// (bf16); the relative error of one rounding is at most `u`.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Dtype::F32 => (-24f64).exp2(),
            Dtype::F64 => (-53f64).exp2(),
            Dtype::F16 => (-11f64).exp2(),
            Dtype::BF16 => (-8f64).exp2(),
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A type a parameter or activation buffer can hold.
pub trait Element: Copy + Send + Sync + Debug + Display + PartialEq + Default + 'static + sealed::Sealed {
    /// Its dtype in a safetensors file.
    const DTYPE: Dtype;
    /// Converts from f64, rounding to nearest.
    fn from_f64(v: f64) -> Self;
    /// Converts to f64 exactly.
    fn to_f64(self) -> f64;
    /// Appends the little-endian bytes of `self` to `out`.
    fn write_le(self, out: &mut Vec<u8>);
}

/// A floating type the reference computes in.
pub trait Float:
    Element
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// e^self.
    fn exp(self) -> Self;
    /// tanh(self).
    fn tanh(self) -> Self;
    /// 1 / (1 + e^-self), evaluated without overflow for any input.
    fn sigmoid(self) -> Self {
        // For x < 0, e^-x may overflow to inf; 1/(1+inf) = 0 is still the right limit, and the
        // e^x / (1 + e^x) form keeps full relative precision there.
        if self >= Self::ZERO {
            Self::ONE / (Self::ONE + (-self).exp())
        } else {
            let e = self.exp();
            e / (Self::ONE + e)
        }
    }
    /// max(self, 0); NaN stays NaN.
    fn relu(self) -> Self {
        if self < Self::ZERO {
            Self::ZERO
        } else {
            self
        }
    }
}

/// `Element` for `$t`, stored as `Dtype::$dtype`, converted from f64 by `$from` and to f64 by
/// `$to`.
macro_rules! impl_element {
    ($t:ty, $dtype:ident, $from:expr, $to:expr) => {
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$dtype;
            #[inline]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            #[inline]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}

/// `Float` for a primitive float type, with its own `exp` and `tanh`.
macro_rules! impl_float {
    ($t:ty, $dtype:ident) => {
        impl_element!($t, $dtype, |v: f64| v as $t, |x: $t| x as f64);
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
        }
    };
}
impl_float!(f32, F32);
impl_float!(f64, F64);

// The 16-bit storage types round from f64 to nearest, ties to even, once: through f32 rounded to
// odd (`half`'s `from_f64` rounds twice where F16C exists, and its `from_f64_const` decides from
// the f64's high 32 bits alone; both misround some values just past a midpoint).
impl_element!(half::f16, F16, |v| half::f16::from_f32(f32_round_to_odd(v)), half::f16::to_f64);
impl_element!(half::bf16, BF16, |v| half::bf16::from_f32(f32_round_to_odd(v)), half::bf16::to_f64);

/// `v` rounded to f32 to odd: of the two f32 values around an inexact `v`, the one whose last
/// significand bit is 1. A 16-bit rounding to nearest of it is then the correct rounding of `v`
/// (round to odd with at least two bits to spare avoids double rounding; f32 has 13 over f16
/// and 16 over bf16). `half`'s own f64 conversions drop the low 32 bits of the f64 before
/// rounding, so a value just past a midpoint by less than 2^-20 of its magnitude rounds the
/// wrong way (measured: -0.085205115 gave the bf16 -0.08496094 instead of -0.08544922).
fn f32_round_to_odd(v: f64) -> f32 {
    let f = v as f32;
    if !f.is_finite() || f as f64 == v || f.to_bits() & 1 == 1 {
        return f;
    }
    // `f` is even and inexact: its neighbour on `v`'s side is odd.
    if (f as f64) < v {
        f.next_up()
    } else {
        f.next_down()
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    /// `from_f64` of f16 and bf16 is the correct rounding to nearest (even) of the f64 value:
    /// checked against the exact midpoints of neighbouring 16-bit values, and a value a hair
    /// past a midpoint (beyond the f64's high 32 bits, where `half`'s own conversion looks).
    #[test]
    fn half_from_f64_rounds_correctly() {
        fn check<T: Element>(bits: impl Fn(T) -> u16, from_bits: impl Fn(u16) -> T) {
            for b in (0u16..0x7c00).step_by(7) {
                let (lo, hi) = (from_bits(b).to_f64(), from_bits(b + 1).to_f64());
                if !hi.is_finite() {
                    continue;
                }
                let mid = (lo + hi) / 2.0; // exact in f64
                let even = if b % 2 == 0 { b } else { b + 1 };
                assert_eq!(bits(T::from_f64(mid)), even, "{:?}: midpoint of {b:#x}", T::DTYPE);
                let tiny = (hi - lo) * 2f64.powi(-40);
                assert_eq!(bits(T::from_f64(mid + tiny)), b + 1, "{:?}: just above the midpoint of {b:#x}", T::DTYPE);
                assert_eq!(bits(T::from_f64(mid - tiny)), b, "{:?}: just below the midpoint of {b:#x}", T::DTYPE);
                assert_eq!(bits(T::from_f64(lo)), b);
            }
        }
        check::<half::f16>(|v| v.to_bits(), half::f16::from_bits);
        check::<half::bf16>(|v| v.to_bits(), half::bf16::from_bits);
        // The case that showed it.
        assert_eq!(<half::bf16 as Element>::from_f64(-0.085205115f32 as f64).to_f32(), -0.08544922);
        assert_eq!(half::bf16::from_f64(-0.085205115f32 as f64).to_f32(), -0.08496094, "half's own conversion was fixed: drop the note");
    }
}
