//! The case files of the regularisers (`tests/fixtures/{dropout,zoneout,recurrent_dropout,input_dropout}/`):
//! an outside oracle with the library's masks, checked the same way for each.

use rnn_kernels::masks::MaskStream;
use rnn_kernels::testkit::case::{run_case, Case};
use rnn_kernels::{Cpu, Isa, Reference, RnnConfig};
use std::path::{Path, PathBuf};

/// The `.safetensors` files of `tests/fixtures/{folder}`, sorted.
pub fn files(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(folder);
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    files.sort();
    files
}

/// The `count` cases of `tests/fixtures/{folder}`: each is complete (its configuration has the
/// option `has_option` looks for, masks, gradients, inference outputs); the f64 reference
/// matches it at 1e-9 on every output, gradient and inference output, and misses it with other
/// masks (another stream); the f32 reference and every CPU ISA match it at 1e-4.
pub fn check(folder: &str, count: usize, has_option: fn(&RnnConfig) -> bool) {
    let files = files(folder);
    assert_eq!(files.len(), count, "{files:?}");
    for f in &files {
        let case = Case::<f64>::load(f).unwrap();
        assert!(has_option(&case.config) && case.masks.is_some() && case.grads.is_some() && case.inference[0].is_some(), "{}", f.display());
        let report = run_case(&Reference, &case).unwrap();
        let names: Vec<&str> = report.errors.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"y (inference)") && names.contains(&"dx"), "{}: {names:?}", f.display());
        assert!(report.passes(1e-9), "{}: {:?}", f.display(), report.worst());
        let mut other = case.clone();
        other.masks = Some(MaskStream::new(1, 1));
        assert!(!run_case(&Reference, &other).unwrap().passes(1e-3), "{}: other masks pass too", f.display());

        let case = Case::<f32>::load(f).unwrap();
        let mut runs = vec![("reference f32".to_string(), run_case(&Reference, &case).unwrap())];
        for isa in Isa::available() {
            runs.push((format!("cpu {isa:?}"), run_case(&Cpu::with_isa(isa, 2).unwrap(), &case).unwrap()));
        }
        for (what, r) in runs {
            assert!(r.passes(1e-4), "{} on {what}: {:?}", f.display(), r.worst());
        }
    }
}
