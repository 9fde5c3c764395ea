//! The CPU backend against the f64 reference, for every ISA this machine has: a property test
//! over random configurations, every PyTorch fixture, bit-identical results for any thread
//! count, and the ISA choice. (`RNN_KERNELS_ISA` narrows the loops over ISAs to the one it
//! forces: `testkit::isas`.)
//!
//! Tolerances (error metric of `docs/case-format.md`): forward outputs 1e-5, gradients 1e-4.

mod common;

use common::describe;
use common::parity::{case_files, config, errors, Problem, GRAD_TOL};
use proptest::prelude::*;
use rnn_kernels::testkit::case::{run_case, Case};
use rnn_kernels::{CellKind, Cpu, Isa, RnnConfig, SeqShape};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(rnn_kernels::testkit::proptest_cases(48)))]

    /// Every ISA of this machine (or the one RNN_KERNELS_ISA forces: `testkit::isas`), 2 threads, against the f64 reference.
    #[test]
    fn cpu_matches_reference(cfg in config(), t in 1usize..7, lens in prop::collection::vec(1usize..7, 1..6), seed in any::<u64>()) {
        let lengths: Vec<usize> = lens.iter().map(|&l| l.min(t)).collect();
        let shape = SeqShape::with_lengths(t, lengths).unwrap();
        let p = Problem::new(&cfg, &shape, seed, 25.0);
        // Ill-conditioned at f32 (a pre-activation at a kink, a layer norm amplifying rounding): no
        // parity to check (testkit::conditioning).
        prop_assume!(p.conditioning().is_good_for_f32());
        let want = p.run_reference();
        for isa in rnn_kernels::testkit::isas() {
            let got = p.run(Cpu::with_isa(isa, 2).unwrap());
            for (name, err, tol) in errors(&got, &want) {
                prop_assert!(err <= tol, "{isa}: {name} error {err:.3e} > {tol:e}: {}", describe(&cfg, &shape));
            }
        }
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    let mut failures = Vec::new();
    for isa in rnn_kernels::testkit::isas() {
        let cpu = Cpu::with_isa(isa, 2).unwrap();
        for f in case_files() {
            let case = Case::<f32>::load(&f).unwrap();
            let report = run_case(&cpu, &case).unwrap();
            if !report.passes(GRAD_TOL) {
                failures.push(format!("{isa} {}: {:?}", f.display(), report.worst()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Large enough that the GEMMs split across threads (by rows and by columns).
#[test]
fn results_are_bit_identical_for_any_thread_count() {
    let configs = [
        RnnConfig::new(CellKind::Lstm, 64, 96).num_layers(2).bidirectional(true).proj_size(40).build().unwrap(),
        RnnConfig::new(CellKind::Gru, 70, 130).build().unwrap(),
        RnnConfig::new(CellKind::RnnRelu, 33, 200).num_layers(2).build().unwrap(),
    ];
    // 37 rows of 9 steps; and 20 steps, which the input projection takes in two chunks
    // (`ceil(512 / 37)` = 14 steps), with enough gate values per step (37·4·128) for the cell
    // kernels to be split across threads.
    let long = RnnConfig::new(CellKind::Lstm, 50, 128).bidirectional(true).build().unwrap();
    // And 200 rows: enough for the forward time loop to be cut into blocks of rows too (the
    // backward's are cut from 32 rows with 2 threads, 48 with 3).
    let wide = RnnConfig::new(CellKind::Gru, 20, 24).bidirectional(true).build().unwrap();
    // And 161 rows on 5 threads, which an earlier cut left with a 1-row block (the skinny path).
    // And one step, whose recurrent weight gradient adds an empty segment (a product with no
    // inner dimension, 390×130: large enough to be split, which panicked on the ISAs whose
    // products of two activations are the portable GEMM's).
    let cases = configs.iter().map(|c| (c, 9, 37)).chain([(&long, 20, 37), (&wide, 5, 200), (&wide, 3, 161), (&configs[1], 1, 37)]);
    for (cfg, steps, batch) in cases {
        let thread_counts: &[usize] = if batch == 161 { &[2, 3, 5] } else { &[2, 3] };
        let shape = SeqShape::with_lengths(steps, (0..batch).map(|b| 1 + (b * 5) % steps).collect()).unwrap();
        let p = Problem::new(cfg, &shape, 77, 3.0);
        let want = p.run_reference();
        for isa in rnn_kernels::testkit::isas() {
            let one = p.run(Cpu::with_isa(isa, 1).unwrap());
            for &threads in thread_counts {
                let many = p.run(Cpu::with_isa(isa, threads).unwrap());
                assert!(one == many, "{isa}, {threads} threads differ from 1 thread: {}", describe(cfg, &shape));
            }
            // And still right.
            for (name, err, tol) in errors(&one, &want) {
                assert!(err <= tol, "{isa}: {name} error {err:.3e}: {}", describe(cfg, &shape));
            }
        }
    }
}

/// Inference (no saved activations: the step's state goes through scratch buffers) gives the
/// bits of the training forward, for 1, 2 and 3 threads, and matches the f64 reference: each
/// cell, 2 layers, both directions, batches of 1, 3 and 7 rows (the skinny and the blocked
/// products) and 70 (the time loop cut into blocks of rows with AVX-512), variable lengths,
/// H = 32, 48, 64 and 40. (The property test above runs the
/// training forward only.)
#[test]
fn inference_equals_the_training_forward_for_any_thread_count() {
    for cell in CellKind::ALL {
        for (hidden, batch) in [(32, 1), (48, 3), (64, 7), (40, 3), (32, 70)] {
            let cfg = RnnConfig::new(cell, 24, hidden).num_layers(2).bidirectional(true).build().unwrap();
            let steps = 9;
            let shape = SeqShape::with_lengths(steps, (0..batch).map(|b| steps - (b * 4) % steps).collect()).unwrap();
            let p = Problem::new(&cfg, &shape, 91, 3.0);
            let want = p.run_reference();
            for isa in rnn_kernels::testkit::isas() {
                let trained = p.run(Cpu::with_isa(isa, 1).unwrap());
                for threads in [1, 2, 3] {
                    let got = p.run_inference(Cpu::with_isa(isa, threads).unwrap());
                    let ctx = format!("{isa}, {threads} threads: {}", describe(&cfg, &shape));
                    for (i, name) in ["y", "hn", "cn"].iter().enumerate() {
                        assert!(got[i] == trained[i], "{ctx}: inference {name} differs from the training forward's");
                    }
                    for ((name, err, tol), _) in errors(&got, &want).into_iter().zip(0..3) {
                        assert!(err <= tol, "{ctx}: {name} error {err:.3e}");
                    }
                }
            }
        }
    }
}

#[test]
fn isa_choice() {
    let available = Isa::available();
    assert_eq!(available[0], Isa::Scalar);
    assert_eq!(Isa::best(), *available.last().unwrap());
    #[cfg(target_arch = "x86_64")]
    {
        let e = Cpu::with_isa(Isa::Neon, 1).unwrap_err().to_string();
        assert!(e.contains("`isa`") && e.contains("neon"), "{e}");
    }
    #[cfg(target_arch = "aarch64")]
    {
        let e = Cpu::with_isa(Isa::Avx2, 1).unwrap_err().to_string();
        assert!(e.contains("`isa`") && e.contains("avx2"), "{e}");
        assert!(Cpu::with_isa(Isa::Avx512, 1).is_err());
    }
    // AVX-512 is offered only with AVX2 and FMA (it uses their cell kernels), AMX only with
    // AVX-512 (it uses its kernels but for the bf16 products); the best x86-64 ISA is AMX
    // where it is there, else AVX-512 where it is there.
    if Isa::Avx512.is_supported() {
        assert!(Isa::Avx2.is_supported());
        assert_eq!(Isa::best(), if Isa::Amx.is_supported() { Isa::Amx } else { Isa::Avx512 });
    }
    if Isa::Amx.is_supported() {
        assert!(Isa::Avx512.is_supported());
    }
    assert_eq!("AVX512".parse::<Isa>().unwrap(), Isa::Avx512);
    assert_eq!("amx".parse::<Isa>().unwrap(), Isa::Amx);
    assert!(Cpu::with_isa(Isa::Scalar, 0).unwrap_err().to_string().contains("`threads`"));
    assert!("sse9".parse::<Isa>().unwrap_err().to_string().contains("\"sse9\""));
    // A forced ISA is really the one used, and an unusable one is an error, not a fallback.
    match std::env::var("RNN_KERNELS_ISA") {
        Ok(forced) => match forced.parse::<Isa>() {
            Ok(isa) if isa.is_supported() => assert_eq!(Cpu::new().unwrap().isa(), isa),
            _ => assert!(Cpu::new().unwrap_err().to_string().contains("RNN_KERNELS_ISA")),
        },
        Err(_) => assert_eq!(Cpu::new().unwrap().isa(), Isa::best()),
    }
    eprintln!("ISAs on this machine: {available:?}; default {}", Isa::best());
}

/// The ISAs the run requires (`RNN_KERNELS_REQUIRE_ISA`, which CI sets from `/proc/cpuinfo`)
/// are detected, so that none of their tests is skipped on a CPU that has them.
#[test]
fn required_isas_are_detected() {
    for name in rnn_kernels::testkit::required_isas() {
        let supported = match name.as_str() {
            // The VDPBF16PS products: the unit tests of `isa::avx512::sgemm` check it (they fail,
            // not skip, where it is required); the ISA itself is AVX-512.
            "avx512_bf16" => Isa::Avx512.is_supported(),
            other => other.parse::<Isa>().unwrap().is_supported(),
        };
        assert!(supported, "RNN_KERNELS_REQUIRE_ISA names {name}, but the CPU backend does not detect it");
    }
}
