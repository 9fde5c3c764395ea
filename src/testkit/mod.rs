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
