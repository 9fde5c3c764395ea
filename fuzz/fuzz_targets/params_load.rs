//! `Params::load` on arbitrary bytes: a safetensors parameter file whose configuration is read
//! from its own metadata (`Params::save_safetensors`'s format).
//!
//! Any input may be rejected, but none may panic, abort or allocate more than a small multiple of
//! its own size (run with `-malloc_limit_mb`, see `.ci/fuzz.sh`). A file that loads must hold its
//! parameters' data (at least two bytes, an F16/BF16 value, per parameter), and must come back
//! bit-identical through `to_safetensors_bytes` and `load` again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnk_core::Params;
use std::path::PathBuf;

/// One file per fuzzing process, rewritten for every input: `load` reads a path.
fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rnnk-fuzz-{tag}-{}.safetensors", std::process::id()))
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch("params");
    std::fs::write(&path, data).expect("writing the scratch file");
    let Ok(p) = Params::<f32>::load(&path) else { return };
    assert!(p.as_slice().len() * 2 <= data.len(), "{} parameters loaded from a file of {} bytes", p.as_slice().len(), data.len());
    assert_eq!(p.as_slice().len(), p.config().param_count(), "layout length against RnnConfig::param_count");
    let bytes = p.to_safetensors_bytes().expect("saving parameters that loaded");
    let again = scratch("params-again");
    std::fs::write(&again, &bytes).expect("writing the scratch file");
    let q = Params::<f32>::load(&again).expect("loading parameters just saved");
    assert_eq!(p.config(), q.config());
    assert!(same_bits(p.as_slice(), q.as_slice()), "parameters changed through save and load");
});
