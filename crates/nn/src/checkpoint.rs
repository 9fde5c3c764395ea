//! The checkpoint file of [`CharLm`](crate::CharLm): safetensors, written byte for byte the
//! same for the same model.

use crate::error::{invalid, Error, Result};
use rnn_kernels::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

/// Serialises f32 tensors `(name, shape, values)` in the given order, with `metadata` in sorted
/// key order (the safetensors crate writes its metadata map in hash order, so the same model
/// would give different bytes). Format: the header's length as 8 little-endian bytes, the JSON
/// header padded with spaces to a multiple of 8, then the data.
pub(crate) fn serialize_f32(tensors: &[(String, Vec<usize>, &[f32])], metadata: &HashMap<String, String>) -> Vec<u8> {
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let entries: Vec<String> = keys.iter().map(|k| format!("{}:{}", json_string(k), json_string(&metadata[*k]))).collect();
    let mut header = format!("{{\"__metadata__\":{{{}}}", entries.join(","));
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        let end = offset + 4 * values.len();
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        header += &format!(",{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}", json_string(name), dims.join(","));
        offset = end;
    }
    header.push('}');
    header.extend(std::iter::repeat_n(' ', (8 - header.len() % 8) % 8));
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, values) in tensors {
        out.extend(values.iter().flat_map(|x| x.to_le_bytes()));
    }
    out
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if u32::from(c) < 0x20 => out += &format!("\\u{:04x}", u32::from(c)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A tensor's values as f32, from F32, F64 (rounded to nearest), F16 or BF16 data.
pub(crate) fn f32_tensor(view: &TensorView<'_>, name: &str, source: &str) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(invalid(format!("{name} in {source}"), "dtype F32, F64, F16 or BF16", format!("{other:?}"))),
    })
}

/// A safetensors parse error about the file (or bytes) `source`.
pub(crate) fn safetensors_error(source: &str, e: impl std::fmt::Display) -> Error {
    Error::SafeTensors { path: source.to_string(), message: e.to_string() }
}
