//! Turning C arguments (pointers with lengths in elements, C strings, lengths arrays) into Rust
//! values, with an error naming the argument for each way they can be wrong.

use crate::status::{CapiError, RNNK_ERR_SIZE_MISMATCH};
use rnnk_core::SeqShape;
use std::ffi::{c_char, CStr};

fn check_ptr<T>(arg: &str, p: *const T, len: usize) -> Result<(), CapiError> {
    if p.is_null() {
        return Err(CapiError::null(arg));
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(CapiError::invalid(arg, format!("a pointer aligned to {} bytes", std::mem::align_of::<T>()), format!("{p:p}")));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(CapiError::invalid(&format!("{arg}_len"), "a length that fits in memory", len));
    }
    Ok(())
}

/// A required input buffer of `len` elements.
///
/// # Safety
/// If not NULL, `p` points to `len` readable elements that nothing writes during the call.
pub unsafe fn input<'a, T>(arg: &str, p: *const T, len: usize) -> Result<&'a [T], CapiError> {
    check_ptr(arg, p, len)?;
    // SAFETY: non-NULL and aligned (checked); `len` readable elements is the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An optional input buffer: NULL means not given (its length is then ignored).
///
/// # Safety
/// As [`input`].
pub unsafe fn opt_input<'a, T>(arg: &str, p: *const T, len: usize) -> Result<Option<&'a [T]>, CapiError> {
    // SAFETY: forwarded.
    if p.is_null() {
        Ok(None)
    } else {
        unsafe { input(arg, p, len) }.map(Some)
    }
}

/// A required output buffer of `len` elements.
///
/// # Safety
/// If not NULL, `p` points to `len` writable elements that nothing else reads or writes during
/// the call (overlaps with the call's other buffers are rejected by [`Buffers::check_overlaps`]).
pub unsafe fn output<'a, T>(arg: &str, p: *mut T, len: usize) -> Result<&'a mut [T], CapiError> {
    check_ptr(arg, p, len)?;
    // SAFETY: as in `input`, writable.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// An optional output buffer: NULL means skip it.
///
/// # Safety
/// As [`output`].
pub unsafe fn opt_output<'a, T>(arg: &str, p: *mut T, len: usize) -> Result<Option<&'a mut [T]>, CapiError> {
    // SAFETY: forwarded.
    if p.is_null() {
        Ok(None)
    } else {
        unsafe { output(arg, p, len) }.map(Some)
    }
}

/// A device buffer argument: an address in the model's device memory (never dereferenced on
/// the host) and its length in elements.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Device {
    pub ptr: u64,
    pub len: usize,
}

/// A required device buffer: the same NULL, alignment and length checks as a host buffer.
pub fn device<T>(arg: &str, p: *const T, len: usize) -> Result<Device, CapiError> {
    check_ptr(arg, p, len)?;
    Ok(Device { ptr: p as u64, len })
}

/// An optional device buffer: NULL means not given (its length is then ignored).
pub fn opt_device<T>(arg: &str, p: *const T, len: usize) -> Result<Option<Device>, CapiError> {
    if p.is_null() {
        Ok(None)
    } else {
        device(arg, p, len).map(Some)
    }
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// If not NULL, `p` points to a NUL-terminated string.
pub unsafe fn string<'a>(arg: &str, p: *const c_char) -> Result<&'a str, CapiError> {
    if p.is_null() {
        return Err(CapiError::null(arg));
    }
    // SAFETY: non-NULL; NUL termination is the caller's promise.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| CapiError::invalid(arg, "UTF-8 text", format!("{:?}", s.to_string_lossy())))
}

/// The raw address ranges of a call's buffers, to reject an output that overlaps any other
/// buffer (Rust's `&mut` must be exclusive, and an overlap would make results depend on the order
/// of writes).
#[derive(Default)]
pub struct Buffers {
    ranges: Vec<(&'static str, usize, usize, bool)>,
}

impl Buffers {
    pub fn add<T>(&mut self, arg: &'static str, p: *const T, len: usize, is_output: bool) {
        if !p.is_null() && len > 0 {
            self.ranges.push((arg, p as usize, (p as usize).saturating_add(len.saturating_mul(std::mem::size_of::<T>())), is_output));
        }
    }

    pub fn check_overlaps(&self) -> Result<(), CapiError> {
        for (i, a) in self.ranges.iter().enumerate() {
            for b in &self.ranges[i + 1..] {
                if (a.3 || b.3) && a.1 < b.2 && b.1 < a.2 {
                    return Err(CapiError::invalid(a.0, format!("memory that does not overlap `{}`", b.0), "overlapping buffers"));
                }
            }
        }
        Ok(())
    }
}

/// The call's shape from `steps`, `batch` and an optional lengths array of `batch` entries.
///
/// # Safety
/// As [`input`] for `lengths`.
pub unsafe fn shape(steps: usize, batch: usize, lengths: *const i64, lengths_len: usize) -> Result<SeqShape, CapiError> {
    // SAFETY: forwarded.
    let Some(lengths) = (unsafe { opt_input("lengths", lengths, lengths_len)? }) else {
        return Ok(SeqShape::new(steps, batch)?);
    };
    if lengths.len() != batch {
        return Err(CapiError::new(
            RNNK_ERR_SIZE_MISMATCH,
            format!("`lengths`: expected one length per sequence, batch = {batch} elements, got {} elements", lengths.len()),
        ));
    }
    let mut v = Vec::with_capacity(batch);
    for (b, &len) in lengths.iter().enumerate() {
        match usize::try_from(len) {
            Ok(n) => v.push(n),
            Err(_) => return Err(CapiError::invalid(&format!("lengths[{b}]"), format!("must be in 1..={steps} (steps)"), len)),
        }
    }
    // Checks `steps` and every length against it.
    let s = SeqShape::with_lengths(steps, v)?;
    Ok(s)
}
