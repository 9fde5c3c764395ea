//! The C ABI's cell-options string: `rnnk_model_create_ex` with fuzzed option text (and cell,
//! direction, projection and backend), then `rnnk_model_options` on every model it makes.
//!
//! Findings: a panic (even one the library catches: RNNK_ERR_PANIC), an invalid access, a status
//! outside the header's, an error without a message, a failed call that left a handle in `out`;
//! a model whose options string (`rnnk_model_options`, the canonical form) does not make the same
//! model again (same options string, same parameter count), or that `rnnk_model_options` does not
//! write back whole into a buffer of exactly its length plus the NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnk_capi::status::*;
use rnnk_capi::*;
use std::ffi::{c_char, CStr, CString};

const CELLS: [&CStr; 4] = [c"lstm", c"gru", c"rnn_tanh", c"rnn_relu"];
const BACKENDS: [&CStr; 2] = [c"reference", c"cpu"];

fuzz_target!(|data: &[u8]| {
    let Some((&head, text)) = data.split_first() else { return };
    let cell = CELLS[usize::from(head & 3)];
    let bidirectional = i32::from(head >> 2 & 1);
    let proj = if head >> 3 & 1 == 1 { 2 } else { 0 };
    let backend = BACKENDS[usize::from(head >> 4 & 1)];
    // The text up to its first NUL, as a C string would end there.
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    let Ok(options) = CString::new(text) else { return };

    let Some((model, canonical, count)) = create(cell, bidirectional, proj, &options, backend) else { return };
    // The canonical form makes the same model, with `bidirectional` = 1 for a bidirectional one
    // (whose direction the string leaves to that argument).
    let again = CString::new(canonical.clone()).expect("rnnk_model_options wrote a NUL inside the text");
    let bidirectional = i32::from(directions(model, proj) == 2);
    let Some((model2, canonical2, count2)) = create(cell, bidirectional, proj, &again, backend) else {
        panic!("the canonical options {canonical:?} (of {options:?}) were refused: {}", last_error());
    };
    assert_eq!((&canonical2, count2), (&canonical, count), "options {options:?}: canonical {canonical:?} made another model");
    for m in [model, model2] {
        // SAFETY: a live handle of this harness, freed once.
        let rc = unsafe { rnnk_model_free(m) };
        assert_eq!(rc, RNNK_OK, "rnnk_model_free: {}", last_error());
    }
});

/// `rnnk_model_create_ex` with `options`: `None` where it refused (checking the refusal), else
/// the model, its options string and its parameter count.
fn create(cell: &CStr, bidirectional: i32, proj: usize, options: &CStr, backend: &CStr) -> Option<(*mut RnnkModel, String, usize)> {
    let mut model: *mut RnnkModel = 0x10 as *mut RnnkModel;
    // SAFETY: C strings and a writable handle slot of this harness.
    let rc = unsafe {
        rnnk_model_create_ex(cell.as_ptr(), 3, 4, 2, bidirectional, proj, 1, options.as_ptr(), backend.as_ptr(), 1, &mut model)
    };
    if rc != RNNK_OK {
        assert!(
            matches!(rc, RNNK_ERR_INVALID_ARGUMENT | RNNK_ERR_UNSUPPORTED),
            "options {options:?}: status {rc} (expected invalid argument or unsupported): {}",
            last_error()
        );
        assert!(!last_error().is_empty(), "options {options:?}: status {rc} without a message");
        assert!(model.is_null(), "options {options:?}: a failed call left a handle in `out`");
        return None;
    }
    assert!(!model.is_null());
    // The length first, then the text into a buffer of exactly that length plus the NUL.
    let mut len = usize::MAX;
    // SAFETY: a live handle; NULL buffer of length 0 asks for the length only.
    let rc = unsafe { rnnk_model_options(model, std::ptr::null_mut(), 0, &mut len) };
    assert_eq!(rc, RNNK_OK, "rnnk_model_options (length): {}", last_error());
    let mut buf = vec![0x55 as c_char; len + 1];
    let mut len2 = usize::MAX;
    // SAFETY: a live handle and a writable buffer of `len + 1` bytes.
    let rc = unsafe { rnnk_model_options(model, buf.as_mut_ptr(), buf.len(), &mut len2) };
    assert_eq!((rc, len2), (RNNK_OK, len), "rnnk_model_options: {}", last_error());
    assert_eq!(buf[len], 0, "rnnk_model_options did not end the text with a NUL");
    // SAFETY: NUL-terminated by the call (checked: the last byte).
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().expect("options text not UTF-8").to_string();
    assert_eq!(text.len(), len);
    let mut count = 0usize;
    // SAFETY: a live handle and a writable size_t.
    let rc = unsafe { rnnk_model_param_count(model, &mut count) };
    assert_eq!(rc, RNNK_OK, "rnnk_model_param_count: {}", last_error());
    Some((model, text, count))
}

/// The model's number of directions, from its `hn` size at one step of one sequence:
/// `L·D·Hout` with `L = 2` and `Hout` the projection or `H = 4`.
fn directions(model: *mut RnnkModel, proj: usize) -> usize {
    let (mut x, mut y, mut h, mut c) = (0usize, 0usize, 0usize, 0usize);
    // SAFETY: a live handle and writable size_t's.
    let rc = unsafe { rnnk_model_tensor_sizes(model, 1, 1, &mut x, &mut y, &mut h, &mut c) };
    assert_eq!(rc, RNNK_OK, "rnnk_model_tensor_sizes: {}", last_error());
    h / (2 * if proj > 0 { proj } else { 4 })
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(rnnk_last_error()) }.to_string_lossy().into_owned()
}
