//! Status codes, the thread-local last-error message, and the guard that turns every outcome of a
//! call (success, error, panic) into a status code.

use rnnk_core::Error;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

// The values of `rnnk_status` in include/rnn_kernels.h (checked by tests/header.rs).
/// Success.
pub const RNNK_OK: c_int = 0;
/// A pointer that must not be NULL was NULL.
pub const RNNK_ERR_NULL_POINTER: c_int = 1;
/// A value out of its range: a size, a cell or backend name, a length, a non-UTF-8 string, an
/// output overlapping another buffer of the call.
pub const RNNK_ERR_INVALID_ARGUMENT: c_int = 2;
/// A buffer's length (in elements) does not match the configuration and the call's shape.
pub const RNNK_ERR_SIZE_MISMATCH: c_int = 3;
/// A handle that is not a live handle of the expected kind, or a reserve, decoder run or
/// attention memory that does not belong to the model or attention (or to its current
/// parameters).
pub const RNNK_ERR_WRONG_HANDLE: c_int = 4;
/// The backend asked for is not in this build or not on this machine.
pub const RNNK_ERR_BACKEND_UNAVAILABLE: c_int = 5;
/// Reading or writing a file failed (e.g. it does not exist).
pub const RNNK_ERR_IO: c_int = 6;
/// A file was read but its content is wrong: not safetensors, a missing or unexpected tensor, a
/// wrong shape or dtype.
pub const RNNK_ERR_FILE_FORMAT: c_int = 7;
/// A device API (CUDA driver, cuBLAS) failed at run time.
pub const RNNK_ERR_DEVICE: c_int = 8;
/// A panic inside the library (a bug): caught at the boundary, never unwound into C.
pub const RNNK_ERR_PANIC: c_int = 9;
/// A size computed from the arguments (or a file) needs more memory than can be allocated: the
/// allocation was refused up front, nothing was changed.
pub const RNNK_ERR_OUT_OF_MEMORY: c_int = 10;
/// The handle is in use by a call on another thread that this call conflicts with (a call that
/// changes or frees a model or reserve runs only while no other call uses it): nothing was done.
pub const RNNK_ERR_BUSY: c_int = 11;
/// The backend does not implement a cell option the model's configuration sets (the message
/// names the backend and the option); another backend may (the reference backend implements
/// them all). Nothing was created.
pub const RNNK_ERR_UNSUPPORTED: c_int = 12;

/// An error on its way out: a status code and a message.
#[derive(Debug)]
pub struct CapiError {
    pub code: c_int,
    pub message: String,
}

impl CapiError {
    pub fn new(code: c_int, message: impl Into<String>) -> Self {
        CapiError { code, message: message.into() }
    }
    pub fn null(arg: &str) -> Self {
        CapiError::new(RNNK_ERR_NULL_POINTER, format!("`{arg}`: expected a non-NULL pointer, got NULL"))
    }
    pub fn invalid(arg: &str, expected: impl std::fmt::Display, got: impl std::fmt::Display) -> Self {
        CapiError::new(RNNK_ERR_INVALID_ARGUMENT, format!("`{arg}`: {expected}, got {got}"))
    }
    pub fn handle(arg: &str, expected: &str, got: impl std::fmt::Display) -> Self {
        CapiError::new(RNNK_ERR_WRONG_HANDLE, format!("`{arg}`: expected {expected}, got {got}"))
    }
}

/// The status code of each of the crate's errors.
pub fn code_of(e: &Error) -> c_int {
    match e {
        Error::Shape { .. } => RNNK_ERR_SIZE_MISMATCH,
        Error::InvalidArgument { .. } => RNNK_ERR_INVALID_ARGUMENT,
        Error::MissingTensor { .. } | Error::UnexpectedTensor { .. } | Error::SafeTensors { .. } | Error::InFile { .. } => {
            RNNK_ERR_FILE_FORMAT
        }
        Error::Io { .. } => RNNK_ERR_IO,
        Error::Reserve(_) => RNNK_ERR_WRONG_HANDLE,
        Error::BackendUnavailable { .. } => RNNK_ERR_BACKEND_UNAVAILABLE,
        Error::Device { .. } => RNNK_ERR_DEVICE,
        Error::TooLarge { .. } => RNNK_ERR_OUT_OF_MEMORY,
        Error::Unsupported { .. } => RNNK_ERR_UNSUPPORTED,
        // `Error` is non-exhaustive; a new variant is most likely about an argument.
        _ => RNNK_ERR_INVALID_ARGUMENT,
    }
}

/// The status code of an error from reading a file: `RNNK_ERR_IO` when reading failed,
/// `RNNK_ERR_OUT_OF_MEMORY` for a refused allocation, `RNNK_ERR_FILE_FORMAT` for everything about
/// the file's content (the loader reports a wrong shape as [`Error::Shape`] and a wrong dtype as
/// [`Error::InvalidArgument`]; from a file they are a malformed file, not a bad argument).
pub fn file_code_of(e: &Error) -> c_int {
    match code_of(e) {
        c @ (RNNK_ERR_IO | RNNK_ERR_OUT_OF_MEMORY | RNNK_ERR_DEVICE) => c,
        _ => RNNK_ERR_FILE_FORMAT,
    }
}

impl CapiError {
    /// An error from reading a file (see [`file_code_of`]).
    pub fn from_file(e: Error) -> Self {
        CapiError::new(file_code_of(&e), e.to_string())
    }
}

impl From<Error> for CapiError {
    fn from(e: Error) -> Self {
        CapiError::new(code_of(&e), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with an interior NUL (a file name can hold anything) is cut there.
    let bytes: Vec<u8> = message.bytes().take_while(|&b| b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last call on this thread: empty after a success. Valid until the next call
/// into the library on this thread.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs one C-facing function body: no panic leaves it, and the last error is set from its
/// outcome.
pub fn guard(body: impl FnOnce() -> Result<(), CapiError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            RNNK_OK
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            set_last_error(&format!("internal error (a bug in rnn-kernels, please report it): panic: {what}"));
            RNNK_ERR_PANIC
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: the pointer is the thread-local CString's, alive until the next set.
        unsafe { CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status() {
        let code = guard(|| panic!("boom {}", 42));
        assert_eq!(code, RNNK_ERR_PANIC);
        assert!(last().contains("boom 42"), "{}", last());
        assert_eq!(guard(|| Ok(())), RNNK_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn errors_map_to_codes() {
        let e = Error::Io { path: "p".into(), source: std::io::Error::from(std::io::ErrorKind::NotFound) };
        assert_eq!(guard(|| Err(e.into())), RNNK_ERR_IO);
        assert_eq!(guard(|| Err(CapiError::new(RNNK_ERR_SIZE_MISMATCH, "a\0b"))), RNNK_ERR_SIZE_MISMATCH);
        assert_eq!(last(), "a");
        let big = Error::TooLarge { arg: "hidden_size".into(), what: "w".into(), bytes: 1 << 50, reason: "r".into() };
        assert_eq!(code_of(&big), RNNK_ERR_OUT_OF_MEMORY);
        let refused = Error::Unsupported { backend: "cpu".into(), option: "peephole".into(), reason: "r".into() };
        assert_eq!(guard(|| Err(refused.into())), RNNK_ERR_UNSUPPORTED);
        assert!(last().contains("`cpu` does not support the option `peephole`"), "{}", last());
    }

    #[test]
    fn a_file_error_is_io_or_format() {
        let shape = Error::Shape { arg: "weight_ih_l0 in f".into(), expected: "shape [4, 2]".into(), got: "shape [3, 2]".into() };
        let dtype = Error::InvalidArgument { arg: "weight_ih_l0 in f".into(), expected: "dtype F32".into(), got: "I32".into() };
        assert_eq!((code_of(&shape), file_code_of(&shape)), (RNNK_ERR_SIZE_MISMATCH, RNNK_ERR_FILE_FORMAT));
        assert_eq!((code_of(&dtype), file_code_of(&dtype)), (RNNK_ERR_INVALID_ARGUMENT, RNNK_ERR_FILE_FORMAT));
        let io = Error::Io { path: "p".into(), source: std::io::Error::from(std::io::ErrorKind::NotFound) };
        assert_eq!(file_code_of(&io), RNNK_ERR_IO);
    }
}
