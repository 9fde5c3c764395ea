//! Exact output bits pinned in `tests/fixtures/bit_pins.txt`, so that a change meant to keep
//! behaviour (a refactoring) can prove it: each line is `key | name=hash ...`, the hash a 64-bit
//! FNV-1a of an output's bit patterns. Used by `tests/bit_pins.rs` (the host backends) and the
//! CUDA emulation's tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// FNV-1a over the little-endian bytes of `words`.
pub fn fnv1a(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn pin_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bit_pins.txt")
}

fn read_pins() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(pin_file()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(" | ").map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

/// Checks every line of `got` against the pinned one; panics naming each that differs or has no
/// pinned line. With `RNN_KERNELS_WRITE_BIT_PINS` set, rewrites the lines of `got` instead and
/// keeps the others (those of other architectures and backends).
pub fn check(got: &BTreeMap<String, String>) {
    let mut pins = read_pins();
    if std::env::var_os("RNN_KERNELS_WRITE_BIT_PINS").is_some() {
        pins.extend(got.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut text = String::from(
            "# Exact output bits (FNV-1a of each output's bit patterns) pinned by tests/bit_pins.rs.\n\
             # Rewrite with RNN_KERNELS_WRITE_BIT_PINS=1 cargo test --release --test bit_pins\n",
        );
        for (k, v) in &pins {
            text.push_str(&format!("{k} | {v}\n"));
        }
        std::fs::write(pin_file(), text).unwrap();
        eprintln!("wrote {} lines to {}", got.len(), pin_file().display());
        return;
    }
    let failures: Vec<String> = got
        .iter()
        .filter_map(|(k, v)| match pins.get(k) {
            None => Some(format!("{k}: no pinned line (computed {v})")),
            Some(want) if want != v => Some(format!("{k}:\n  pinned   {want}\n  computed {v}")),
            Some(_) => None,
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} pinned results differ:\n{}", failures.len(), got.len(), failures.join("\n"));
}
