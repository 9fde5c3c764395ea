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

/// Every CPU ISA against the f64 reference on `p` with its masks (outputs at 1e-5, gradients at
/// 1e-4) and the same bits for 1, 2 and 3 threads; with `inference`, the inference outputs too
/// (at 1e-5 against the reference's, and in the bits compared across thread counts).
pub fn cpu_matches_reference(p: &rnn_kernels::testkit::Problem<f32>, label: &str, inference: bool) {
    use rnn_kernels::testkit::case::max_error;
    let want = p.run_reference();
    let want_inf = p.to_f64().run_inference(Reference);
    let err = |g: &[f32], w: &[f64]| max_error(&g.iter().map(|&v| v as f64).collect::<Vec<_>>(), w);
    for isa in Isa::available() {
        let mut bits = Vec::new();
        for threads in 1..=3 {
            let cpu = Cpu::with_isa(isa, threads).unwrap();
            let mut got = p.run(cpu.clone());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let (e, tol) = (err(g, w), if i < 3 { 1e-5 } else { 1e-4 });
                assert!(e <= tol, "{label} {isa:?} {threads} threads: output {i} error {e:.2e}");
            }
            if inference {
                let inf = p.run_inference(cpu);
                for (i, (g, w)) in inf.iter().zip(&want_inf).enumerate() {
                    let e = err(g, w);
                    assert!(e <= 1e-5, "{label} {isa:?} {threads} threads: inference output {i} error {e:.2e}");
                }
                got.extend(inf);
            }
            bits.push(got.iter().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>());
        }
        assert!(bits.windows(2).all(|w| w[0] == w[1]), "{label} {isa:?}: thread counts differ");
    }
}

/// Inference ignores the regulariser: `p`'s inference outputs on the CPU backend are
/// bit-identical to those of `plain` (the configuration without it), while its training
/// outputs on the f64 reference differ.
pub fn inference_ignores_it(p: &rnn_kernels::testkit::Problem<f32>, plain: &RnnConfig, label: &str) {
    let mut q = p.clone();
    q.cfg = plain.clone();
    let bits = |v: Vec<Vec<f32>>| v.into_iter().map(|t| t.into_iter().map(f32::to_bits).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_eq!(bits(p.run_inference(Cpu::new().unwrap())), bits(q.run_inference(Cpu::new().unwrap())), "{label}: inference");
    let e = rnn_kernels::testkit::case::max_error(&p.to_f64().run(Reference)[0], &q.to_f64().run(Reference)[0]);
    assert!(e > 1e-3, "{label}: training unchanged ({e:.2e})");
}

/// A training pass of `cfg` (a configuration with a regulariser) without masks is an error
/// naming `masks`; the same offset draws the same masks, another offset others.
pub fn masks_required_and_offsets_differ(cfg: &RnnConfig) {
    use rnn_kernels::{Error, Rnn, SeqShape};
    let shape = SeqShape::new(5, 4).unwrap();
    let p = rnn_kernels::testkit::Problem::<f32>::new(cfg, &shape, 1, 1.0);
    let rnn = Rnn::new(Cpu::with_threads(1).unwrap(), cfg, &p.params[..]).unwrap();
    let mut reserve = Default::default();
    let e = rnn.forward_training(&shape, &p.x, None, None, &mut reserve).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { arg, .. } if arg == "masks"), "{e}");
    let run = |offset: u64| {
        let mut reserve = Default::default();
        rnn.forward_training_masked(&shape, &p.x, None, None, MaskStream::new(9, offset), &mut reserve).unwrap().y
    };
    assert_eq!(run(0), run(0));
    assert_ne!(run(0), run(1));
}
