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
    /// A backend does not implement an option the configuration sets (it never ignores one).
    #[error("backend `{backend}` does not support the option `{option}`: {reason}")]
    Unsupported {
        /// The backend, e.g. `cpu-avx2`.
        backend: String,
        /// The option, by its case-file name (e.g. `peephole`, `direction=reverse`).
        option: String,
        /// Why, and what to use instead.
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
    /// A size computed from an argument or a file needs more memory than can be allocated (or
    /// more than the documented limit of the call): refused with this error, never an abort.
    #[error("`{arg}`: needs {bytes} bytes ({what}), which {reason}")]
    TooLarge {
        /// The argument (or the file's field) whose value asked for the memory.
        arg: String,
        /// What the memory was for, with the sizes it was computed from.
        what: String,
        /// The number of bytes asked for (saturated at `u128::MAX` when it does not fit).
        bytes: u128,
        /// Why it was refused: the allocator failed, or the limit it exceeds.
        reason: String,
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

/// The memory of this machine, RAM and swap, in bytes: `MemTotal` + `SwapTotal` of
/// `/proc/meminfo` on Linux, read once; `None` where it cannot be read.
///
/// No allocation larger than this can ever be used (every byte of an output is written), so the
/// crate refuses one with [`Error::TooLarge`] before asking the allocator, whatever the kernel's
/// overcommit policy would grant; callers that size buffers of their own can check against it too.
pub fn host_memory_bytes() -> Option<u64> {
    static MEMORY: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = info.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        };
        kib("MemTotal:")?.checked_add(kib("SwapTotal:").unwrap_or(0))?.checked_mul(1024)
    })
}

/// [`Error::TooLarge`] naming `arg` when `bytes` is more than [`host_memory_bytes`].
pub(crate) fn check_host_memory(arg: &str, what: impl FnOnce() -> String, bytes: u128) -> Result<()> {
    match host_memory_bytes() {
        Some(total) if bytes > u128::from(total) => Err(Error::TooLarge {
            arg: arg.into(),
            what: what(),
            bytes,
            reason: format!("is more than this machine's memory ({total} bytes of RAM and swap, /proc/meminfo)"),
        }),
        _ => Ok(()),
    }
}

/// A vector of `n` copies of `fill`, allocated fallibly: an allocation the allocator refuses (or
/// one larger than the address space) is [`Error::TooLarge`] naming `arg` and `what`, not an abort.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn try_vec<T: Clone>(arg: &str, what: impl Into<String>, n: usize, fill: T) -> Result<Vec<T>> {
    let bytes = (n as u128) * (std::mem::size_of::<T>() as u128);
    let what = what.into();
    check_host_memory(arg, || what.clone(), bytes)?;
    let mut v = Vec::new();
    match v.try_reserve_exact(n) {
        Ok(()) => {
            v.resize(n, fill);
            Ok(v)
        }
        Err(e) => Err(Error::TooLarge { arg: arg.into(), what, bytes, reason: format!("could not be allocated ({e})") }),
    }
}

/// A vector of `n` zeros, allocated fallibly like [`try_vec`] but with the allocator's zeroed
/// pages (`calloc`), so a large output buffer costs no write pass before the kernels fill it.
pub(crate) fn try_zeroed<T: crate::Element>(arg: &str, what: impl Into<String>, n: usize) -> Result<Vec<T>> {
    let bytes = (n as u128) * (std::mem::size_of::<T>() as u128);
    let what = what.into();
    check_host_memory(arg, || what.clone(), bytes)?;
    let too_large = |reason: String| Error::TooLarge { arg: arg.into(), what: what.clone(), bytes, reason };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|e| too_large(format!("is not a valid allocation ({e})")))?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a nonzero size; a non-null result is `n` zeroed, properly aligned
    // `T`s, and all-zero bytes are a valid `T` (`Element` is sealed: f32, f64, f16, bf16, whose
    // all-zero bit pattern is +0.0). The Vec takes ownership of exactly
    // that allocation, with the same layout (capacity `n`), as `Vec`'s own allocator would make.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut T;
        if ptr.is_null() {
            return Err(too_large("could not be allocated (the allocator returned no memory)".into()));
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri stops at an allocation larger than its memory instead of returning null")]
    fn absurd_allocations_are_errors_not_aborts() {
        let e = try_vec::<f32>("hidden_size", "weights", usize::MAX / 2, 0.0).unwrap_err();
        assert!(matches!(e, Error::TooLarge { ref arg, .. } if arg == "hidden_size"), "{e}");
        let e = try_zeroed::<f32>("y", "outputs", usize::MAX / 2).unwrap_err();
        assert!(matches!(e, Error::TooLarge { ref arg, .. } if arg == "y"), "{e}");
        // More than the address space allows but a valid `usize` count: refused by the allocator.
        let e = try_zeroed::<f64>("y", "outputs", 1 << 50).unwrap_err();
        assert!(e.to_string().contains("`y`: needs 9007199254740992 bytes"), "{e}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    #[cfg_attr(miri, ignore = "reads /proc/meminfo, which Miri's isolation forbids")]
    fn allocations_larger_than_the_machine_are_refused_before_the_allocator_is_asked() {
        let total = host_memory_bytes().expect("/proc/meminfo gives MemTotal on Linux");
        assert!(total > 1 << 20, "{total}");
        // One element more than the machine holds: refused by the limit, whatever overcommit
        // would grant (on a machine with more than 2^63 bytes this is not a valid count).
        let n = (total / 4 + 1) as usize;
        let e = try_zeroed::<f32>("x", "outputs", n).unwrap_err();
        assert!(e.to_string().contains("more than this machine's memory"), "{e}");
        let e = try_vec::<f32>("x", "outputs", n, 1.0).unwrap_err();
        assert!(e.to_string().contains("more than this machine's memory"), "{e}");
    }

    #[test]
    fn fallible_allocations_give_what_was_asked() {
        assert_eq!(try_vec("n", "test", 3, 1.5f32).unwrap(), vec![1.5; 3]);
        assert_eq!(try_zeroed::<f64>("n", "test", 5).unwrap(), vec![0.0; 5]);
        assert!(try_zeroed::<f32>("n", "test", 0).unwrap().is_empty());
    }
}
