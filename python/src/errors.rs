//! The library's [`Error`] as Python exceptions, and the exceptions of the bindings' own checks.
//!
//! Every exception carries the library's message (which names the argument, what was expected
//! and what was given): an invalid argument, a shape, a file's content or an option a backend
//! does not implement is a `ValueError`; a reserve used against the rules is a `RuntimeError`;
//! reading or writing a file is an `OSError` (`FileNotFoundError`, `PermissionError` where the
//! system says so); a size that does not fit in memory is a `MemoryError`.

use pyo3::exceptions::{PyFileNotFoundError, PyMemoryError, PyOSError, PyPermissionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;
use rnn_kernels::Error;

/// The Python exception for a library error.
pub(crate) fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    let kind = kind_of(&e);
    match kind {
        Kind::Value => PyValueError::new_err(message),
        Kind::Runtime => PyRuntimeError::new_err(message),
        Kind::Memory => PyMemoryError::new_err(message),
        Kind::Os(std::io::ErrorKind::NotFound) => PyFileNotFoundError::new_err(message),
        Kind::Os(std::io::ErrorKind::PermissionDenied) => PyPermissionError::new_err(message),
        Kind::Os(_) => PyOSError::new_err(message),
    }
}

enum Kind {
    Value,
    Runtime,
    Memory,
    Os(std::io::ErrorKind),
}

fn kind_of(e: &Error) -> Kind {
    match e {
        Error::Shape { .. }
        | Error::InvalidArgument { .. }
        | Error::MissingTensor { .. }
        | Error::UnexpectedTensor { .. }
        | Error::Unsupported { .. }
        | Error::SafeTensors { .. } => Kind::Value,
        Error::InFile { source, .. } => kind_of(source),
        Error::Io { source, .. } => Kind::Os(source.kind()),
        Error::TooLarge { .. } => Kind::Memory,
        // A reserve used against the rules, a backend that cannot start, a device call that
        // failed, and whatever a later version of the library adds.
        _ => Kind::Runtime,
    }
}

/// A `ValueError` `` `arg`: expected …, got … ``, in the library's words.
pub(crate) fn value(arg: &str, expected: impl std::fmt::Display, got: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("`{arg}`: expected {expected}, got {got}"))
}

/// A `TypeError` `` `arg`: expected …, got … ``.
pub(crate) fn type_error(arg: &str, expected: impl std::fmt::Display, got: impl std::fmt::Display) -> PyErr {
    PyTypeError::new_err(format!("`{arg}`: expected {expected}, got {got}"))
}

/// A `RuntimeError` `` `arg`: … ``: a reserve or an array used against the rules.
pub(crate) fn runtime(arg: &str, message: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(format!("`{arg}`: {message}"))
}

/// `Result<T, Error>` to `PyResult<T>`.
pub(crate) trait OrPy<T> {
    fn or_py(self) -> pyo3::PyResult<T>;
}

impl<T> OrPy<T> for Result<T, Error> {
    fn or_py(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
