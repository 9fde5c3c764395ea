//! The buffer checks of the decoder-step and attention calls (`steps.rs`, `attention.rs`), whose
//! shapes are not a layer stack's sequence tensors: each buffer is checked against an exact
//! shape the call computes from its handles and sizes.
//!
//! The order is `args.rs`'s: every pointer first (NULL where it is required, alignment, a length
//! that fits in memory), then every length against its shape, then overlaps (no output may share
//! memory with another buffer of the call). Only then are the pointers turned into slices, so a
//! call that fails a check has read and written nothing.

use crate::args::{check_ptr, Raw};
use crate::status::{CapiError, RNNK_ERR_SIZE_MISMATCH};

/// One buffer argument that passed the pointer checks, with the shape it must have.
struct Buf {
    arg: &'static str,
    ptr: *const f32,
    len: usize,
    bytes: usize,
    output: bool,
    /// The shape in words (`[B, I]`) and in numbers.
    dims: &'static str,
    shape: Vec<usize>,
    /// Why the buffer must not be given at all (an input or output the call does not have).
    refused: Option<String>,
}

/// The index of a checked buffer in its [`Bufs`].
#[derive(Debug, Clone, Copy)]
pub struct Idx(usize);

/// The buffers of one call, collected to be checked together.
#[derive(Default)]
pub struct Bufs {
    list: Vec<Buf>,
}

impl Bufs {
    /// A buffer that may be NULL (not given): `None` then.
    pub fn optional(
        &mut self, arg: &'static str, raw: impl Into<Raw>, dims: &'static str, shape: &[usize],
    ) -> Result<Option<Idx>, CapiError> {
        let raw = raw.into();
        let Some(bytes) = check_ptr(arg, raw.ptr, raw.len)? else { return Ok(None) };
        let buf = Buf { arg, ptr: raw.ptr, len: raw.len, bytes, output: raw.output, dims, shape: shape.to_vec(), refused: None };
        self.list.push(buf);
        Ok(Some(Idx(self.list.len() - 1)))
    }

    /// A buffer that must not be NULL.
    pub fn required(&mut self, arg: &'static str, raw: impl Into<Raw>, dims: &'static str, shape: &[usize]) -> Result<Idx, CapiError> {
        self.optional(arg, raw, dims, shape)?.ok_or_else(|| CapiError::null(arg))
    }

    /// A buffer that must be NULL (the call has no such tensor: `why`); checked with the lengths.
    pub fn absent(&mut self, arg: &'static str, raw: impl Into<Raw>, why: String) -> Result<(), CapiError> {
        let raw = raw.into();
        if let Some(bytes) = check_ptr(arg, raw.ptr, raw.len)? {
            let buf = Buf { arg, ptr: raw.ptr, len: raw.len, bytes, output: raw.output, dims: "", shape: vec![], refused: Some(why) };
            self.list.push(buf);
        }
        Ok(())
    }

    /// Checks every length against its shape, then that no output overlaps another buffer.
    pub fn check(&self) -> Result<(), CapiError> {
        for b in &self.list {
            if let Some(why) = &b.refused {
                return Err(CapiError::invalid(b.arg, format!("not given: {why}"), format!("a buffer ({} elements)", b.len)));
            }
            let expected = match b.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
                Some(want) if want == b.len => continue,
                Some(want) => format!("{} = {:?}, {want} elements", b.dims, b.shape),
                None => format!("{} = {:?}, more elements than fit in memory", b.dims, b.shape),
            };
            return Err(CapiError::new(RNNK_ERR_SIZE_MISMATCH, format!("`{}`: expected {expected}, got {} elements", b.arg, b.len)));
        }
        for (i, a) in self.list.iter().enumerate() {
            for b in &self.list[i + 1..] {
                let (a0, b0) = (a.ptr as usize, b.ptr as usize);
                let overlap = a0 < b0.saturating_add(b.bytes) && b0 < a0.saturating_add(a.bytes);
                if (a.output || b.output) && a.bytes > 0 && b.bytes > 0 && overlap {
                    let kind = |o: bool| if o { "output" } else { "input" };
                    return Err(CapiError::invalid(
                        a.arg,
                        format!("memory that does not overlap `{}` (an {} of the same call)", b.arg, kind(b.output)),
                        format!(
                            "an {} at {a0:#x}..{:#x} overlapping `{}` at {b0:#x}..{:#x}",
                            kind(a.output),
                            a0.saturating_add(a.bytes),
                            b.arg,
                            b0.saturating_add(b.bytes)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A checked input buffer as a slice.
    ///
    /// # Safety
    /// [`check`](Self::check) passed; the buffer holds `len` readable floats that nothing writes
    /// during the call (the header's contract).
    pub unsafe fn input<'a>(&self, i: Idx) -> &'a [f32] {
        let b = &self.list[i.0];
        // SAFETY: non-NULL and aligned (checked); the rest is the caller's contract.
        unsafe { std::slice::from_raw_parts(b.ptr, b.len) }
    }

    /// A checked output buffer as a slice.
    ///
    /// # Safety
    /// As [`input`](Self::input), writable, and overlapping no other buffer of the call (checked).
    #[allow(clippy::mut_from_ref)] // each output is handed out once, to the call that owns it
    pub unsafe fn output<'a>(&self, i: Idx) -> &'a mut [f32] {
        let b = &self.list[i.0];
        // SAFETY: as in `input`, writable and exclusive.
        unsafe { std::slice::from_raw_parts_mut(b.ptr.cast_mut(), b.len) }
    }
}
