//! The crate's one error type.
//!
//! Every message names the argument that was wrong, what was expected and what was given, so a
//! caller can act on it without reading this crate's source.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer or tensor has the wrong number of elements or the wrong shape.
    #[error("`{arg}`: expected {expected}, got {got}")]
    Shape {
        /// The argument, tensor or buffer that was wrong.
        arg: String,
        /// What was expected, in words (usually a shape with its element count).
        expected: String,
        /// What was given.
        got: String,
    },
    /// A configuration or argument value is out of its allowed range.
    #[error("`{arg}`: {expected}, got {got}")]
    InvalidArgument {
        /// The argument that was wrong.
        arg: String,
        /// What it must be.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A tensor is missing from a file.
    #[error("tensor `{name}` (shape {shape:?}) is missing from {source_desc}")]
    MissingTensor {
        /// Name of the missing tensor.
        name: String,
        /// The shape it must have.
        shape: Vec<usize>,
        /// Where it was looked for.
        source_desc: String,
    },
    /// A file holds a tensor that is not a parameter of the configured stack.
    #[error("unexpected tensor `{name}` in {source_desc}: not a parameter of this configuration (expected names: {expected})")]
    UnexpectedTensor {
        /// The name found.
        name: String,
        /// Where it was found.
        source_desc: String,
        /// The names that were expected.
        expected: String,
    },
    /// A saved reserve does not belong to the plan or the call it is used with.
    #[error("reserve: {0}")]
    Reserve(String),
    /// A backend is not available in this build or on this machine.
    #[error("backend `{backend}` is not available: {reason}")]
    BackendUnavailable {
        /// Name of the backend asked for.
        backend: String,
        /// Why, and what to do about it.
        reason: String,
    },
    /// A call into a device API (the CUDA driver, cuBLAS) failed at run time.
    #[error("{backend}: {op} failed: {message}")]
    Device {
        /// The backend, e.g. `cuda:0`.
        backend: String,
        /// What was being done.
        op: String,
        /// What the device API reported.
        message: String,
    },
    /// An error about a value read from a file, with the file named.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// The error about its content.
        source: Box<Error>,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{path}: not a readable safetensors file: {message}")]
    SafeTensors {
        /// The file (or `<bytes>` for an in-memory buffer).
        path: String,
        /// What the safetensors crate reported.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(arg: impl Into<String>, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Shape { arg: arg.into(), expected: expected.into(), got: got.into() }
    }

    /// Wraps an error about a file's content with the file's name.
    pub(crate) fn in_file(self, path: &str) -> Self {
        Error::InFile { path: path.to_string(), source: Box::new(self) }
    }

    pub(crate) fn invalid(arg: impl Into<String>, expected: impl Into<String>, got: impl ToString) -> Self {
        Error::InvalidArgument { arg: arg.into(), expected: expected.into(), got: got.to_string() }
    }
}

/// Checks that a buffer named `arg` has exactly the elements of `shape` (described by `dims`, e.g.
/// `"[T, B, I]"`).
pub(crate) fn check_len(arg: &str, dims: &str, shape: &[usize], got: usize) -> Result<()> {
    // A product that overflows cannot be the length of any buffer: report it as such rather
    // than wrapping around to a small number that a wrong buffer might match.
    match shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(want) if want == got => Ok(()),
        Some(want) => Err(Error::shape(arg, format!("{dims} = {shape:?}, {want} elements"), format!("{got} elements"))),
        None => Err(Error::shape(arg, format!("{dims} = {shape:?}, more elements than fit in memory"), format!("{got} elements"))),
    }
}
