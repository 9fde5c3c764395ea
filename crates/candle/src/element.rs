//! [`CandleFloat`]: the element types that are both the library's and candle's (f32, f64).

use candle_core::{CpuStorage, DType, WithDType};

/// An element type of the library ([`rnn_kernels::Float`]) that candle also stores: `f32` (the
/// CPU backend's) and `f64` (the reference backend's).
pub trait CandleFloat: rnn_kernels::Float + WithDType + sealed::Sealed {
    /// Whether `a` and `b` hold the same values bit for bit (`-0.0` differs from `0.0`, and a NaN
    /// equals the same NaN): a weight counts as changed exactly when its bits did. One pass
    /// without an early exit (an OR of XORs, vectorised): the module compares its weights block
    /// by block with it.
    fn same_bits(a: &[Self], b: &[Self]) -> bool;

    /// candle's dtype of `Self`.
    fn dtype() -> DType {
        <Self as WithDType>::DTYPE
    }

    /// The elements of `storage` as `Self` (an error naming the dtype if they are another).
    fn slice(storage: &CpuStorage) -> candle_core::Result<&[Self]> {
        Self::cpu_storage_as_slice(storage)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Elements per block of [`sync`]: small enough to stay in the L1 cache between the comparison
/// and the copy of a changed block, large enough for the vectorised comparison to run at memory
/// speed.
const BLOCK: usize = 1024;

/// Makes `dst` a bitwise copy of `src` (of the same length), block by block, copying only the
/// blocks that differ; returns whether any did. One read of both when nothing changed; a read of
/// both and a write of `dst` when everything did (an optimiser step).
pub(crate) fn sync<T: CandleFloat>(src: &[T], dst: &mut [T]) -> bool {
    debug_assert_eq!(src.len(), dst.len());
    let mut changed = false;
    for (s, d) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
        if !T::same_bits(s, d) {
            d.copy_from_slice(s);
            changed = true;
        }
    }
    changed
}

macro_rules! same_bits {
    ($t:ty, $bits:ty) => {
        impl CandleFloat for $t {
            fn same_bits(a: &[$t], b: &[$t]) -> bool {
                a.len() == b.len() && a.iter().zip(b).fold(0 as $bits, |d, (x, y)| d | (x.to_bits() ^ y.to_bits())) == 0
            }
        }
    };
}

same_bits!(f32, u32);
same_bits!(f64, u64);

#[cfg(test)]
mod tests {
    use super::{sync, CandleFloat};

    #[test]
    fn same_bits_is_bitwise() {
        let a: Vec<f32> = (0..2000).map(|i| i as f32 * 0.5).collect();
        let mut b = a.clone();
        assert!(f32::same_bits(&a, &b));
        b[1999] = f32::from_bits(b[1999].to_bits() ^ 1);
        assert!(!f32::same_bits(&a, &b));
        assert!(!f32::same_bits(&[0.0], &[-0.0]));
        assert!(f64::same_bits(&[f64::NAN], &[f64::NAN]));
        assert!(!f32::same_bits(&a, &a[1..]));
    }

    #[test]
    fn sync_copies_changed_blocks() {
        let a: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        let mut b = a.clone();
        assert!(!sync(&a, &mut b));
        b[4321] = -1.0;
        b[7] = -0.0;
        assert!(sync(&a, &mut b));
        assert!(f32::same_bits(&a, &b));
    }
}
