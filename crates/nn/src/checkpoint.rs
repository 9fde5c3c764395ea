//! The checkpoint file of [`CharLm`](crate::CharLm): safetensors, written byte for byte the
//! same for the same model.

use crate::error::{invalid, Error, Result};
use rnn_kernels::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Distinguishes the temporary and fallback files one process creates.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a new file `.<name>.<pid>.<n>.tmp` in `dir` (never one that exists).
fn create_temp(dir: &Path, name: &OsStr) -> std::io::Result<(PathBuf, File)> {
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut file_name = std::ffi::OsString::from(".");
        file_name.push(name);
        file_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = dir.join(file_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A path `<dir>/<stem>-<pid>-<n>.<ext>` that does not exist yet.
pub(crate) fn unique_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = dir.join(format!("{stem}-{}-{n}.{ext}", std::process::id()));
        if !p.exists() {
            return p;
        }
    }
}

/// Writes `bytes` to `path` atomically: a new temporary file in the same directory, written and
/// flushed to disk, then renamed over `path`. On failure the temporary file is removed and
/// `path` is untouched.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let name = path.file_name().ok_or_else(|| invalid("path", "a file path that ends in a file name", path.display()))?;
    let dir = parent_dir(path);
    let (tmp, mut file) = create_temp(dir, name).map_err(io)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        // The temporary file is ours and incomplete; nothing else refers to it.
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    // Makes the rename itself durable where the platform allows opening a directory; the
    // checkpoint is already complete under its name either way.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checks, before any work whose result is to be saved at `path`, that it can be: `path` ends in
/// a file name, is not a directory, and is in an existing directory in which this process can
/// create a file (tried by creating a temporary file there and removing it, so nothing is left
/// behind). `arg` names the path in the error (for example `--save`).
pub fn check_save_path(arg: &str, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let shown = format!("{:?}", path.display().to_string());
    let Some(name) = path.file_name() else {
        return Err(invalid(arg, "a file path that ends in a file name", shown));
    };
    if path.is_dir() {
        return Err(invalid(arg, "a file path, not a directory", format!("{shown}, a directory")));
    }
    let dir = parent_dir(path);
    let dir_shown = format!("{:?}", dir.display().to_string());
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(invalid(arg, "a file path in an existing directory", format!("{shown}, where {dir_shown} is not a directory")))
        }
        Err(e) => return Err(invalid(arg, "a file path in an existing directory", format!("{shown}, where directory {dir_shown}: {e}"))),
    }
    match create_temp(dir, name) {
        Ok((tmp, file)) => {
            drop(file);
            fs::remove_file(&tmp).map_err(|e| {
                invalid(arg, "a file path in a directory where files can be created and removed", format!("{shown}: removing {tmp:?}: {e}"))
            })
        }
        Err(e) => Err(invalid(arg, "a file path in a directory where this process can create files", format!("{shown}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rnn-kernels-nn-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_the_whole_file_and_leaves_nothing_else() {
        let dir = scratch("atomic");
        let path = dir.join("model.safetensors");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(entries(&dir), vec![path.clone()]);
        // Into a directory that does not exist: an error naming the path, and no file anywhere.
        let missing = dir.join("no such dir").join("m.safetensors");
        let e = write_atomic(&missing, b"x").unwrap_err().to_string();
        assert!(e.contains("no such dir"), "{e}");
        // Over a directory: the rename fails, the temporary file is removed.
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(write_atomic(&sub, b"x").is_err());
        assert_eq!(entries(&dir), vec![path, sub]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_path_checks_name_the_argument_and_leave_nothing_behind() {
        let dir = scratch("check");
        check_save_path("--save", dir.join("m.safetensors")).unwrap();
        assert!(entries(&dir).is_empty(), "the check left {:?}", entries(&dir));
        let e = check_save_path("--save", dir.join("missing").join("m.safetensors")).unwrap_err().to_string();
        assert!(e.contains("--save") && e.contains("existing directory") && e.contains("missing"), "{e}");
        let e = check_save_path("--save", &dir).unwrap_err().to_string();
        assert!(e.contains("--save") && e.contains("not a directory"), "{e}");
        let e = check_save_path("--save", "").unwrap_err().to_string();
        assert!(e.contains("--save") && e.contains("file name"), "{e}");
        fs::write(dir.join("file"), b"").unwrap();
        let e = check_save_path("--save", dir.join("file").join("m.safetensors")).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
