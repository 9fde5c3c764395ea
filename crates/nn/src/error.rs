//! Building [`rnn_kernels::Error`]s the way the library does: every message names the argument,
//! what was expected and what was given.

pub(crate) use rnn_kernels::{Error, Result};

/// An argument value out of its allowed range.
pub(crate) fn invalid(arg: impl Into<String>, expected: impl Into<String>, got: impl ToString) -> Error {
    Error::InvalidArgument { arg: arg.into(), expected: expected.into(), got: got.to_string() }
}

/// A buffer or tensor of the wrong size or shape.
pub(crate) fn wrong_shape(arg: impl Into<String>, expected: impl Into<String>, got: impl Into<String>) -> Error {
    Error::Shape { arg: arg.into(), expected: expected.into(), got: got.into() }
}

/// Checks that the buffer `arg` holds exactly the elements of `shape` (described by `dims`,
/// e.g. `"[N, E]"`); a shape whose size overflows matches no buffer.
pub(crate) fn check_len(arg: &str, dims: &str, shape: &[usize], got: usize) -> Result<()> {
    match shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(want) if want == got => Ok(()),
        want => {
            let want = want.map_or("more elements than fit in memory".to_string(), |w| format!("{w} elements"));
            Err(wrong_shape(arg, format!("{dims} = {shape:?}, {want}"), format!("{got} elements")))
        }
    }
}

/// An empty vector with room for `n` elements, reserved fallibly: an allocation the allocator
/// refuses (or one larger than the address space) is [`Error::TooLarge`] naming `arg` and `what`,
/// not an abort.
pub(crate) fn try_with_capacity<T>(arg: &str, what: impl Into<String>, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| Error::TooLarge {
        arg: arg.into(),
        what: what.into(),
        bytes: (n as u128) * (std::mem::size_of::<T>() as u128),
        reason: format!("could not be allocated ({e})"),
    })?;
    Ok(v)
}

/// `n` copies of `fill`, allocated fallibly like [`try_with_capacity`].
pub(crate) fn try_vec<T: Clone>(arg: &str, what: impl Into<String>, n: usize, fill: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(arg, what, n)?;
    v.resize(n, fill);
    Ok(v)
}

/// `n` values of `f`, allocated fallibly like [`try_with_capacity`].
pub(crate) fn try_from_fn<T>(arg: &str, what: impl Into<String>, n: usize, f: impl FnMut() -> T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(arg, what, n)?;
    v.extend(std::iter::repeat_with(f).take(n));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_errors_naming_the_argument() {
        let e = try_vec::<f32>("hidden", "weights", usize::MAX / 2, 0.0).unwrap_err();
        assert!(matches!(e, Error::TooLarge { ref arg, .. } if arg == "hidden"), "{e}");
        let e = try_from_fn::<u64>("len", "samples", usize::MAX / 4, || 1).unwrap_err();
        assert!(matches!(e, Error::TooLarge { ref arg, .. } if arg == "len"), "{e}");
        assert_eq!(try_vec("n", "test", 3, 1.5f32).unwrap(), vec![1.5; 3]);
        let mut k = 0;
        assert_eq!(
            try_from_fn("n", "test", 3, || {
                k += 1;
                k
            })
            .unwrap(),
            vec![1, 2, 3]
        );
    }
}
