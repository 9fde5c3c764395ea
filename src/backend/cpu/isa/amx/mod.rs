//! x86-64 AMX (Advanced Matrix Extensions) kernels of the CPU backend: the bf16 products of a
//! bf16 plan on `TDPBF16PS` tiles (`sgemm.rs`: 32×32 blocks of `C` in four tile registers),
//! everything else from AVX-512 (its base). The token is made only where the CPU has AMX-TILE
//! and AMX-BF16 (CPUID), AVX-512F with AVX512_BF16 (the few-row products stay on `VDPBF16PS`),
//! and Linux granted this process the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`,
//! asked once). f32 and f16 plans run exactly as on AVX-512: only products against weights
//! packed in pairs of rows (a bf16 plan's) take the tiles.

mod sgemm;

use super::{Avx512, Isa, Kernels};
use crate::backend::cpu::gemm::{gemm_tiled, gemm_tiled_bf16, Gemm, Par};
use crate::backend::cpu::RowBlocking;
use crate::backend::host::MatMut;
use std::sync::OnceLock;

/// The AMX ISA's token: made only where AMX-TILE, AMX-BF16, AVX-512F, AVX-512BW, AVX512_BF16, AVX2 and FMA
/// were detected and the OS lets this process use the tiles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Amx {
    avx512: Avx512,
}

impl Amx {
    /// The token, if this CPU has AMX with bf16 products (and the AVX-512 token's features and
    /// AVX512_BF16) and Linux grants the tile state.
    pub(crate) fn detect() -> Option<Amx> {
        let avx512 = Avx512::detect()?;
        (std::is_x86_feature_detected!("avx512bf16")
            && std::is_x86_feature_detected!("avx512bw")
            && cpu_has_amx_bf16()
            && tile_permission())
        .then_some(Amx { avx512 })
    }
}

/// CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
fn cpu_has_amx_bf16() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID is available on every x86-64 CPU; leaf 7 is read only where the maximum
    // basic leaf reaches it.
    #[allow(unused_unsafe)]
    let edx = unsafe {
        if __cpuid(0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Whether Linux lets this process use the AMX tile data (`XTILEDATA`, state component 18): a
/// process must ask once (`arch_prctl(ARCH_REQ_XCOMP_PERM, 18)`) before any thread touches a
/// tile, or the first tile instruction faults. Asked once per process and cached; the grant
/// covers every thread.
fn tile_permission() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with this request reads two integers and changes only the
            // process's permitted extended state; it fails (non-zero) where unsupported.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    })
}

impl Kernels for Amx {
    const ISA: Isa = Isa::Amx;
    const ROW_BLOCKING: RowBlocking = <Avx512 as Kernels>::ROW_BLOCKING;
    type Base = Avx512;

    fn base(self) -> Avx512 {
        self.avx512
    }

    /// On the AMX tiles where `C`'s rows are contiguous (the few-row products on AVX-512's
    /// `VDPBF16PS` tiles).
    unsafe fn gemm_bf16_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        if c.cs == 1 {
            // SAFETY: as in weight_gemm_unchecked.
            unsafe { gemm_tiled_bf16::<Amx>(par, g, c) }
        } else {
            // SAFETY: the base's contract is this one.
            unsafe { self.base().gemm_bf16_unchecked(par, g, c) }
        }
    }

    /// Products against a weight packed in pairs of rows (a bf16 plan's) on the AMX tiles, with
    /// the few-row ones on AVX-512's `VDPBF16PS` tiles; every other product is AVX-512's.
    unsafe fn weight_gemm_unchecked(self, par: &Par<'_>, g: Gemm<'_>, c: MatMut<'_, f32>) {
        if g.packed.is_some_and(|w| w.half.as_ref().is_some_and(|h| h.pairs)) {
            // SAFETY: `self` proves AMX-TILE, AMX-BF16, the tile permission and AVX-512's
            // features; weight products have contiguous rows of C (this method's contract).
            unsafe { gemm_tiled::<Amx>(par, g, c) }
        } else {
            // SAFETY: the base's contract is this one.
            unsafe { self.base().weight_gemm_unchecked(par, g, c) }
        }
    }
}
