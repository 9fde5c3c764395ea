//! The host emulation of the device (unit tests, no GPU needed): [`Emulation`], a [`Target`]
//! that runs the kernels of `kernels/*.cu` compiled as C++ by build.rs (`kernels/common.cuh`
//! maps the CUDA built-ins so that a kernel runs as one serial thread), a host GEMM with
//! cuBLAS's exact argument conventions, and fresh memory filled with NaN, so that a read before
//! a write shows. The two streams run serially in issue order; [`Emulation`] records on which
//! stream each kernel and GEMM was issued, tracks the fork state of the streams, and can fail
//! (or panic at) the n-th issued operation.
//!
//! The kernels' declarations and the dispatch of a launch to them are generated from the
//! registry (`kernels.rs`), so the emulation never lists a kernel of its own.

use super::buffer::{DevBuf, RawBuf};
use super::exec::{device_err, Event, Exec, GemmArgs, Target};
use super::kernels::*;
use crate::element::Dtype;
use crate::error::Result;
use cudarc::driver::LaunchConfig;
use std::any::Any;
use std::cell::{Cell, RefCell};

/// The f32 value whose two 16-bit halves are each a NaN in f16 and in bf16 (and which is a NaN
/// itself): what fresh 16-bit memory is filled with.
const NAN_16X2: u32 = 0x7fc0_7fc0;

/// The host emulation of a device, for one or more calls.
#[derive(Default)]
pub(crate) struct Emulation {
    /// The work issued, in order: `(stream, kernel)`, `None` for a GEMM. The emulation runs
    /// every stream's work in issue order, so only this shows on which stream the driver put
    /// each piece (a wrong stream races on a device).
    pub issued: RefCell<Vec<(usize, Option<KernelId>)>>,
    /// Fault injection: the kernel or GEMM issued when `issued` has this many entries fails
    /// (an error path, as a failed launch on a device).
    pub fail_at: Cell<Option<usize>>,
    /// With [`fail_at`](Self::fail_at): the injected failure is a panic (a bug in the driver)
    /// instead of an error.
    pub fail_panics: Cell<bool>,
    /// The fork state: stream 1 was ordered after stream 0 (`order(1, 0)`) and stream 0 has not
    /// been ordered after it since.
    pub forked: Cell<bool>,
}

impl Emulation {
    /// A call on this emulation.
    pub fn exec(&self) -> Exec<'_> {
        Exec::new(self)
    }

    /// Records an operation (`None`: a GEMM) issued on stream `si`, or fails it.
    fn issue(&self, si: usize, k: Option<KernelId>) -> Result<()> {
        let mut issued = self.issued.borrow_mut();
        if self.fail_at.get() == Some(issued.len()) {
            if self.fail_panics.get() {
                drop(issued);
                panic!("an injected panic at {k:?} on stream {si}");
            }
            return Err(device_err("host-emulation", &format!("{k:?} on stream {si}"), "an injected failure"));
        }
        issued.push((si, k));
        Ok(())
    }
}

impl Target for Emulation {
    fn alloc(&self, ty: Dtype, n: usize) -> Result<DevBuf> {
        let words = (n * ty.size()).div_ceil(4).max(1);
        let nan = if ty == Dtype::F32 { f32::NAN.to_bits() } else { NAN_16X2 };
        let v = vec![nan; words];
        Ok(DevBuf::new(RawBuf::new(v.as_ptr() as u64, Box::new(v)), n, ty))
    }

    fn upload_i32(&self, values: &[i32]) -> Result<RawBuf> {
        let v = values.to_vec();
        Ok(RawBuf::new(v.as_ptr() as u64, Box::new(v)))
    }

    fn gemm(&self, si: usize, g: &GemmArgs, ab: Dtype, c: Dtype, alpha: f32, beta: f32) -> Result<()> {
        self.issue(si, None)?;
        // SAFETY: the three views were checked to hold their [rows, cols] (View::mat).
        unsafe {
            if ab == Dtype::F32 {
                sgemm(g, alpha, beta)
            } else {
                gemm_ex(g, ab, c, alpha, beta)
            }
        };
        Ok(())
    }

    fn gemm_batched(&self, si: usize, g: &GemmArgs, strides: [usize; 3], count: usize, alpha: f32, beta: f32) -> Result<()> {
        self.issue(si, None)?;
        let bytes = |s: usize, i: usize| (s * i * Dtype::F32.size()) as u64;
        for i in 0..count {
            let gi = GemmArgs { a: g.a + bytes(strides[0], i), b: g.b + bytes(strides[1], i), c: g.c + bytes(strides[2], i), ..*g };
            // SAFETY: the caller checked that every matrix of the batch lies in its buffer.
            unsafe { sgemm(&gi, alpha, beta) };
        }
        Ok(())
    }

    fn launch(&self, si: usize, kernel: KernelId, ty: Dtype, _cfg: LaunchConfig, args: &dyn KernelArgs) -> Result<()> {
        self.issue(si, Some(kernel))?;
        // SAFETY: the emulated kernels are the device's code, run serially on host memory that
        // holds what they touch (every pointer is a checked View of host memory).
        unsafe { run(kernel, ty, args) };
        Ok(())
    }

    fn copy(&self, _si: usize, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: both views hold the bytes (host memory in the emulation).
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn order(&self, to: usize, from: usize) -> Result<()> {
        match (to, from) {
            (1, 0) => self.forked.set(true),
            (0, 1) => self.forked.set(false),
            _ => {}
        }
        Ok(())
    }

    fn record(&self, _si: usize) -> Result<Event> {
        Ok(Event(None))
    }

    fn wait(&self, _si: usize, _e: &Event) -> Result<()> {
        Ok(())
    }

    /// One block owning all `h` units, for every kernel with a host emulation
    /// (kernels/persistent_cell.cu and persistent_backward.cu; not persistent_lstm.cu).
    fn persistent_units(&self, kernel: KernelId, h: usize, _dirs: usize, _smem: &dyn Fn(usize) -> usize) -> Option<usize> {
        emulated(kernel).then_some(h)
    }
}

/// The declarations of the emulated entries and the dispatch of a launch to them, from the
/// registry.
macro_rules! emulation {
    ($(
        $(#[$sig_doc:meta])*
        $Sig:ident $params:tt {
            $( $k:ident : $file:ident, $kind:ident [$($dt:ident $entry:ident),* $(,)?]; )*
        }
    )*) => {
        $($($(declare!($kind $entry $params);)*)*)*

        /// Whether kernel `k` runs on the host emulation.
        fn emulated(k: KernelId) -> bool {
            match k {
                $($(KernelId::$k => !matches!(stringify!($kind), "persistent_device_only"),)*)*
            }
        }

        /// Runs the entry of kernel `k` for storage type `ty` with `args` (its argument struct).
        ///
        /// # Safety
        /// The pointers among the arguments are host addresses of buffers that hold what the
        /// kernel touches.
        unsafe fn run(k: KernelId, ty: Dtype, args: &dyn Any) {
            match k {
                $($(KernelId::$k => {
                    let a = args.downcast_ref::<$Sig>().expect("the registry's argument struct of the kernel");
                    $(if ty == storage_type!($dt) {
                        call!($kind $entry a $params);
                    })*
                    panic!("{k:?} has no {ty:?} entry")
                })*)*
            }
        }
    };
}

/// The declaration of an emulated entry: its C signature, pointers as `u64` (the same register
/// class and size as a pointer in the C ABI).
macro_rules! declare {
    (persistent_device_only $entry:ident $params:tt) => {};
    ($kind:ident $entry:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        extern "C" {
            fn $entry($($arg: $ty),*);
        }
    };
}

/// The call of an emulated entry with the fields of its argument struct `a`, then `return`.
macro_rules! call {
    (persistent_device_only $entry:ident $a:ident $params:tt) => {{
        let _ = $a;
        panic!("{} has no host emulation", stringify!($entry))
    }};
    ($kind:ident $entry:ident $a:ident ($($arg:ident : $ty:ty),* $(,)?)) => {{
        // SAFETY: as `run`'s.
        unsafe { $entry($($a.$arg),*) };
        return;
    }};
}

registry!(emulation);

/// cuBLAS's column-major sgemm on host memory: `C = alpha·op(A)·op(B) + beta·C`, element
/// `(i, j)` of a column-major matrix at `i + j·ld`. As cuBLAS, `C` is not read when `beta = 0`.
///
/// # Safety
/// The pointers are host addresses of matrices that hold every index the formulas reach.
pub unsafe fn sgemm(g: &GemmArgs, alpha: f32, beta: f32) {
    // SAFETY: as the function's.
    unsafe { gemm_host(g, |p, i| *(p as *const f32).add(i), Dtype::F32, alpha, beta) }
}

/// cuBLAS's GemmEx on host memory with f32 compute: `a` and `b` of 16-bit type `ab` (each
/// element converted exactly to f32), `c` f32 or of type `ab`; the sum accumulates in f32 and
/// a 16-bit `c` is rounded once (to nearest even, as the `half` crate). `C` is not read when
/// `beta = 0`.
///
/// # Safety
/// As [`sgemm`].
pub unsafe fn gemm_ex(g: &GemmArgs, ab: Dtype, ct: Dtype, alpha: f32, beta: f32) {
    // SAFETY: as the function's.
    unsafe { gemm_host(g, |p, i| widen(ab, *(p as *const u16).add(i)), ct, alpha, beta) }
}

/// A 16-bit value of type `ty` as f32 (exact).
fn widen(ty: Dtype, bits: u16) -> f32 {
    if ty == Dtype::BF16 {
        half::bf16::from_bits(bits).to_f32()
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}

/// The host GEMM: operands read to f32 by `ld(ptr, index)`, an f32 sum over `k` in order, the
/// result stored to a `C` of type `ct` (rounded once when 16-bit).
///
/// # Safety
/// As [`sgemm`].
unsafe fn gemm_host(g: &GemmArgs, ld: impl Fn(u64, usize) -> f32, ct: Dtype, alpha: f32, beta: f32) {
    let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
    for i in 0..g.m as usize {
        for j in 0..g.n as usize {
            let mut acc = 0.0f32;
            for p in 0..g.k as usize {
                let av = if g.transa { ld(g.a, p + i * lda) } else { ld(g.a, i + p * lda) };
                let bv = if g.transb { ld(g.b, j + p * ldb) } else { ld(g.b, p + j * ldb) };
                acc += av * bv;
            }
            let at = i + j * ldc;
            // SAFETY: as the function's.
            unsafe {
                if ct == Dtype::F32 {
                    let cv = (g.c as *mut f32).add(at);
                    *cv = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *cv };
                } else {
                    let cv = (g.c as *mut u16).add(at);
                    let v = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * widen(ct, *cv) };
                    *cv = if ct == Dtype::BF16 { half::bf16::from_f32_const(v).to_bits() } else { half::f16::from_f32_const(v).to_bits() };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::buffer::View;
    use super::*;
    use crate::testkit::SplitMix64;

    fn host_view(v: &[f32]) -> View {
        View { ptr: v.as_ptr() as u64, len: v.len(), ty: Dtype::F32 }
    }

    /// The row-major to column-major mapping, for every transpose combination, against a plain
    /// row-major product (through the same host sgemm the emulation uses, which follows
    /// cuBLAS's conventions).
    #[test]
    fn gemm_args_compute_the_row_major_product() {
        let (m, k, n) = (5usize, 3usize, 4usize);
        let mut rng = SplitMix64::new(9);
        let mut rand = |len: usize| (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect::<Vec<f32>>();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            // op(A) is [m, k]: stored [m, k], or [k, m] when transposed; likewise op(B) [k, n].
            let a = rand(m * k);
            let b = rand(k * n);
            let c0 = rand(m * n);
            let am = if ta { host_view(&a).mat(k, m).t() } else { host_view(&a).mat(m, k) };
            let bm = if tb { host_view(&b).mat(n, k).t() } else { host_view(&b).mat(k, n) };
            let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
            let mut c = c0.clone();
            let cv = View { ptr: c.as_mut_ptr() as u64, len: c.len(), ty: Dtype::F32 };
            let g = GemmArgs::new(am, bm, 0.5, cv.mat(m, n)).unwrap();
            // SAFETY: the three buffers hold the matrices the arguments describe.
            unsafe { sgemm(&g, 2.0, 0.5) };
            for i in 0..m {
                for j in 0..n {
                    let want = 2.0 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>() + 0.5 * c0[i * n + j];
                    assert!((c[i * n + j] - want).abs() < 1e-5, "ta={ta} tb={tb} ({i},{j}): {} vs {want}", c[i * n + j]);
                }
            }
        }
        // Nothing to do: an empty product accumulated.
        let e: Vec<f32> = vec![0.0; 4];
        assert!(GemmArgs::new(host_view(&e).mat(2, 0), host_view(&e).mat(0, 2), 1.0, host_view(&e).mat(2, 2)).is_none());
    }
}
