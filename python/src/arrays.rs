//! NumPy arrays in and out: the checks of an input array (type, dtype, contiguity, alignment,
//! shape), its elements read in place, and outputs handed to NumPy without a copy.

use crate::engine::Elem;
use crate::errors::{runtime, type_error, value};
use numpy::ndarray::Array3;
use numpy::{
    PyArray, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;

/// A shape as Python writes a tuple: `(2, 3, 4)`, `(5,)`.
pub(crate) fn tuple(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// What an argument is, for a message: `numpy.ndarray of dtype float64`, `list`, ….
fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!("a numpy.ndarray of dtype {}", a.dtype()),
        Err(_) => obj.get_type().name().map_or_else(|_| "an object".to_string(), |n| format!("a {n}")),
    }
}

/// `obj` as an array of `T` that can be read in place: a `numpy.ndarray` (else `TypeError`) of
/// dtype `T` (else `TypeError`), C-contiguous and aligned (else `ValueError`). The shape is the
/// caller's to check; `dims` names it in the messages (`[T, B, I]`).
pub(crate) fn array<'py, T: Elem>(obj: &Bound<'py, PyAny>, arg: &str, dims: &str) -> PyResult<Bound<'py, PyUntypedArray>> {
    let expected = || format!("a numpy.ndarray of dtype {} with shape {dims}", T::NAME);
    let Ok(a) = obj.cast::<PyUntypedArray>() else {
        return Err(type_error(arg, expected(), describe(obj)));
    };
    let dtype = a.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<T>(obj.py())) {
        return Err(type_error(arg, format!("dtype {} (the model's dtype)", T::NAME), format!("dtype {dtype}")));
    }
    if !a.is_c_contiguous() {
        return Err(value(
            arg,
            "a C-contiguous array (numpy.ascontiguousarray makes one)",
            format!("an array of shape {} with strides {:?}", tuple(a.shape()), a.strides()),
        ));
    }
    if !a.is_aligned() {
        return Err(value(arg, format!("an array aligned for {}", T::NAME), "an unaligned array"));
    }
    Ok(a.clone())
}

/// Checks `a`'s shape against `want` (`dims` in words).
pub(crate) fn check_shape(a: &Bound<'_, PyUntypedArray>, arg: &str, dims: &str, want: &[usize]) -> PyResult<()> {
    if a.shape() == want {
        Ok(())
    } else {
        Err(value(arg, format!("shape {dims} = {}", tuple(want)), format!("shape {}", tuple(a.shape()))))
    }
}

/// A checked array ([`array`]), borrowed for reading in place (NumPy's borrow flags keep Rust
/// code from writing it meanwhile).
pub(crate) fn readonly<'py, T: Elem>(a: &Bound<'py, PyUntypedArray>, arg: &str) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let typed = a.cast::<PyArrayDyn<T>>().map_err(|_| type_error(arg, format!("dtype {}", T::NAME), format!("dtype {}", a.dtype())))?;
    typed.try_readonly().map_err(|e| runtime(arg, format!("cannot be read: {e}")))
}

/// The elements of a borrowed array, in place.
pub(crate) fn slice<'a, T: Elem>(a: &'a PyReadonlyArrayDyn<'_, T>, arg: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|e| runtime(arg, format!("cannot be read in place: {e}")))
}

/// `n` zeros for an output named `arg`, refused with `MemoryError` (never an abort) when they
/// cannot be more than the machine's memory or cannot be allocated.
pub(crate) fn zeros<T: Elem>(arg: &str, shape: &[usize]) -> PyResult<Vec<T>> {
    let too_large = |why: String| PyMemoryError::new_err(format!("`{arg}`: an output of shape {} {why}", tuple(shape)));
    let n =
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| too_large("has more elements than fit in memory".into()))?;
    let bytes = (n as u128) * (std::mem::size_of::<T>() as u128);
    if bytes > isize::MAX as u128 || rnn_kernels::host_memory_bytes().is_some_and(|total| bytes > u128::from(total)) {
        return Err(too_large(format!("needs {bytes} bytes, more than this machine's memory")));
    }
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|e| too_large(format!("could not be allocated ({e})")))?;
    v.resize(n, T::default());
    Ok(v)
}

/// A `[a, b, c]` array that owns `v` (no copy).
pub(crate) fn out3<'py, T: Elem>(py: Python<'py>, v: Vec<T>, shape: [usize; 3]) -> PyResult<Bound<'py, PyAny>> {
    let a = Array3::from_shape_vec((shape[0], shape[1], shape[2]), v).map_err(|e| runtime("output", e))?;
    Ok(PyArray::from_owned_array(py, a).into_any())
}

/// A 1-D array that owns `v` (no copy).
pub(crate) fn out1<'py, T: Elem>(py: Python<'py>, v: Vec<T>) -> Bound<'py, PyAny> {
    PyArray1::from_vec(py, v).into_any()
}
