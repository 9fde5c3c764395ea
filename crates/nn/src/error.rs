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
