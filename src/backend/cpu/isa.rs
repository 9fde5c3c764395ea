//! Which instruction set the CPU backend's kernels use: detected once at first use and cached;
//! `RNN_KERNELS_ISA=scalar|avx2|avx512|neon` forces one, and forcing one the CPU lacks is an error.

use crate::error::{Error, Result};
use std::fmt;
use std::sync::OnceLock;

/// An instruction set of the CPU backend's hand-written kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512F (and AVX2 and FMA): the AVX-512 GEMM tiles and LSTM forward cell,
    /// the AVX2 kernels of the other cells.
    Avx512,
    /// AArch64 Advanced SIMD.
    Neon,
}

impl Isa {
    /// The name used by `RNN_KERNELS_ISA` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU can run the ISA's kernels.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.is_supported() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every ISA this CPU supports, best last.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The best ISA this CPU supports.
    pub fn best() -> Isa {
        *Isa::available().last().expect("scalar is always available")
    }

    /// The ISA to use by default: `RNN_KERNELS_ISA` if set (an error if unknown or not supported
    /// here), else [`Isa::best`]. Read once per process and cached.
    pub fn from_env() -> Result<Isa> {
        static CHOICE: OnceLock<std::result::Result<Isa, (String, String)>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var("RNN_KERNELS_ISA") {
                Err(_) => Ok(Isa::best()),
                Ok(v) => v.parse::<Isa>().map_err(|e| (v.clone(), e.to_string())).and_then(|isa| {
                    if isa.is_supported() {
                        Ok(isa)
                    } else {
                        Err((v.clone(), format!("this CPU does not support {isa}; it supports {}", names(&Isa::available()))))
                    }
                }),
            })
            .clone()
            .map_err(|(given, why)| Error::InvalidArgument {
                arg: "RNN_KERNELS_ISA".into(),
                expected: format!("one of scalar, avx2, avx512, neon that this CPU supports ({why})"),
                got: format!("{given:?}"),
            })
    }
}

fn names(isas: &[Isa]) -> String {
    isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = Error;
    fn from_str(s: &str) -> Result<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" => Ok(Isa::Avx512),
            "neon" => Ok(Isa::Neon),
            _ => Err(Error::invalid("isa", "one of scalar, avx2, avx512, neon", format!("{s:?}"))),
        }
    }
}
