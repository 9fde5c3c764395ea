//! Helpers for this crate's tests, examples, benchmarks and tools, behind the `testkit`
//! feature; not part of the library's API.
//!
//! - [`case`]: PyTorch case files (`docs/case-format.md`): reading one, running it on a
//!   backend, the error metric.
//! - [`tolerance`]: the derived error bounds of f16 and bf16 storage.
//! - [`bench`](mod@bench): hooks that time the CPU backend's fused cell kernels, its SGEMMs and its
//!   thread hand-off alone.
//! - [`Problem`]: a random problem in any element type, run on a backend and on the f64
//!   reference.
//! - [`conditioning`]: how close the reference's pre-activations came to a kink (relu's 0, a
//!   clip), and the largest `rstd` of its layer norms: where an f32 result can be compared.
//! - [`pins`]: exact output bits pinned in `tests/fixtures/bit_pins.txt`.
//! - [`SplitMix64`]: the seeded generator the crate initialises parameters with, for
//!   reproducible random problems.
//!
//! The crate's own tests, examples and benchmarks turn the feature on through a
//! dev-dependency on the crate itself (`Cargo.toml`), so `cargo test` needs no flag.

pub mod bench;
pub mod case;
pub mod conditioning;
pub mod pins;
mod problem;
pub mod tolerance;

pub use crate::rng::SplitMix64;
pub use problem::{up, Problem, F32_SPREAD, OUTPUTS, PERTURBED};

/// The ISAs a test of the CPU backend loops over: the one `RNN_KERNELS_ISA` names where it is
/// set (the one `Cpu::new()` then uses; CI forces each in turn, and NEON under emulation), else
/// every one this machine has ([`Isa::available`](crate::Isa::available)).
///
/// # Panics
///
/// If `RNN_KERNELS_ISA` names an ISA this machine lacks, or none.
pub fn isas() -> Vec<crate::Isa> {
    match std::env::var_os("RNN_KERNELS_ISA") {
        None => crate::Isa::available(),
        Some(_) => vec![crate::Isa::from_env().unwrap_or_else(|e| panic!("{e}"))],
    }
}

/// The CPU features a test run requires: `RNN_KERNELS_REQUIRE_ISA`, a comma-separated list of
/// `avx2`, `avx512`, `avx512_bf16`, `amx` and `neon` (CI sets it from the flags `/proc/cpuinfo`
/// lists), empty where unset.
///
/// # Panics
///
/// If it names something else.
pub fn required_isas() -> Vec<String> {
    const KNOWN: [&str; 5] = ["avx2", "avx512", "avx512_bf16", "amx", "neon"];
    let v = std::env::var("RNN_KERNELS_REQUIRE_ISA").unwrap_or_default();
    let names: Vec<String> = v.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect();
    for n in &names {
        assert!(KNOWN.contains(&n.as_str()), "RNN_KERNELS_REQUIRE_ISA: expected a list of {KNOWN:?}, got {v:?}");
    }
    names
}

/// What a test of an ISA's kernels does on a CPU that lacks the ISA (`isa`, a name of
/// [`required_isas`]): says that it was skipped, or fails when the run requires the ISA (the
/// CPU has it, so the detection missed it and the test would check nothing).
///
/// # Panics
///
/// If [`required_isas`] names `isa`.
pub fn skip_isa(isa: &str) {
    assert!(
        !required_isas().iter().any(|r| r == isa),
        "RNN_KERNELS_REQUIRE_ISA names {isa}, but this CPU was not detected to have it: the test would be skipped"
    );
    println!("skipped: this CPU lacks {isa}");
}

/// The number of cases a property test of this crate runs: `default`, or the
/// `PROPTEST_CASES` environment variable where it is set (proptest's own variable, which it
/// reads only for tests that name no count). `.ci/neon.sh` lowers it for the run under
/// emulation, which is some fifty times slower than native; a long soak raises it.
///
/// # Panics
///
/// If `PROPTEST_CASES` is set to something other than a positive integer.
pub fn proptest_cases(default: u32) -> u32 {
    match std::env::var("PROPTEST_CASES") {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => panic!("PROPTEST_CASES: expected a positive integer, got {v:?}"),
        },
    }
}
