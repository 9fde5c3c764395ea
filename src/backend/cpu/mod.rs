//! The CPU backend, f32: the host driver with matrixmultiply GEMMs on a rayon pool and fused
//! per-step cell kernels hand-written per instruction set.
//!
//! - `isa.rs`: run-time choice of [`Isa`] (cached; `RNN_KERNELS_ISA` forces one).
//! - `gemm.rs`: the GEMMs, split across threads deterministically; `packed.rs`: the plan's
//!   weights packed once as GEMM operands; `team.rs`: the threads of one call, kept spinning
//!   so that even the small per-step products of a small batch are worth splitting.
//! - `avx2/`: x86-64 AVX2+FMA kernels; `neon/`: AArch64 kernels. The scalar ISA uses the
//!   reference kernels.
//!
//! Results are bit-identical for any thread count: threads split GEMM outputs, never a sum.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod cell_tests;
mod gemm;
mod isa;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod packed;
// The ISA-neutral half of the AVX2 and NEON SGEMM.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
mod sgemm;
mod team;

pub use isa::Isa;

/// Pinning the pool's threads, one per CPU.
///
/// A team's threads spin through a call, and a per-step product of a small batch is split so
/// that each thread streams its own slice of the weights from its own core's cache. Left to the
/// scheduler, two of them sometimes share a core for a whole call, and a call then takes about
/// twice as long (README, "Performance"). So when the pool has one thread per CPU the process may run on (as
/// [`Cpu::new`] makes it), thread `i` is pinned to the `i`-th of them. A pool with fewer threads
/// is left to the scheduler, so that several of them (one per model, say) spread over the
/// machine. `RNN_KERNELS_PIN=0` turns pinning off.
mod affinity {
    /// The CPUs to pin threads `0..threads` to, or `None` (not Linux, turned off, not one thread
    /// per allowed CPU, or the affinity cannot be read).
    pub(super) fn pin_plan(threads: usize) -> Option<Vec<usize>> {
        if threads < 2 || std::env::var("RNN_KERNELS_PIN").is_ok_and(|v| v.trim() == "0") {
            return None;
        }
        let cpus = allowed_cpus();
        (cpus.len() == threads).then_some(cpus)
    }

    #[cfg(target_os = "linux")]
    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most
        // its size; CPU_ISSET reads within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn allowed_cpus() -> Vec<usize> {
        Vec::new()
    }

    /// Pins the calling thread to `cpu`; a failure leaves it unpinned (it only costs speed).
    #[cfg(target_os = "linux")]
    pub(super) fn pin_current_thread(cpu: usize) {
        // SAFETY: as in allowed_cpus; CPU_SET writes within the set (cpu < CPU_SETSIZE, as
        // allowed_cpus returned it).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn pin_current_thread(_cpu: usize) {}

    #[cfg(test)]
    mod tests {
        #[test]
        fn pinned_only_with_one_thread_per_allowed_cpu() {
            assert_eq!(super::pin_plan(1), None, "one thread is never pinned");
            let allowed = super::allowed_cpus();
            for threads in 2..=allowed.len() + 1 {
                match super::pin_plan(threads) {
                    Some(cpus) => {
                        assert!(std::env::var("RNN_KERNELS_PIN").map_or(true, |v| v.trim() != "0"));
                        assert_eq!(cpus.len(), threads);
                        assert!(cpus.iter().all(|c| allowed.contains(c)));
                        let mut d = cpus.clone();
                        d.dedup();
                        assert_eq!(d.len(), threads, "distinct CPUs: {cpus:?}");
                    }
                    None => assert!(
                        threads != allowed.len()
                            || std::env::var("RNN_KERNELS_PIN").is_ok_and(|v| v.trim() == "0")
                            || !cfg!(target_os = "linux")
                    ),
                }
            }
        }
    }
}
pub use packed::CpuPlan;

use crate::backend::host::{self, CellBackward, CellForward, HostKernels, HostReserve, Mat, MatMut, Pass, WeightOp};
use crate::backend::{Backend, BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode, Reference};
use crate::config::{CellKind, RnnConfig};
use crate::error::{Error, Result};
use crate::shape::SeqShape;
use std::sync::{Arc, Mutex};

/// The CPU backend.
///
/// ```
/// use rnn_kernels::Cpu;
/// let cpu = Cpu::new()?;                 // best ISA (or RNN_KERNELS_ISA), all cores
/// println!("{} on {} threads", cpu.isa(), cpu.threads());
/// # Ok::<(), rnn_kernels::Error>(())
/// ```
#[derive(Clone)]
pub struct Cpu {
    isa: Isa,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu").field("isa", &self.isa).field("threads", &self.threads).finish()
    }
}

impl Cpu {
    /// The ISA from [`Isa::from_env`] and one thread per available core.
    pub fn new() -> Result<Cpu> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Cpu::with_isa(Isa::from_env()?, threads)
    }

    /// The ISA from [`Isa::from_env`] and `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Cpu> {
        Cpu::with_isa(Isa::from_env()?, threads)
    }

    /// A given ISA (an error if this CPU lacks it) and `threads` threads (at least 1).
    pub fn with_isa(isa: Isa, threads: usize) -> Result<Cpu> {
        if threads == 0 {
            return Err(Error::invalid("threads", "at least 1", threads));
        }
        if !isa.is_supported() {
            return Err(Error::invalid(
                "isa",
                format!("an ISA this CPU supports: {}", Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")),
                isa,
            ));
        }
        let mut builder = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("rnn-kernels-cpu-{i}"));
        if let Some(cpus) = affinity::pin_plan(threads) {
            builder = builder.start_handler(move |i| affinity::pin_current_thread(cpus[i]));
        }
        let pool = builder
            .build()
            .map_err(|e| Error::BackendUnavailable { backend: "cpu".into(), reason: format!("cannot start {threads} threads: {e}") })?;
        Ok(Cpu { isa, threads, pool: Arc::new(pool) })
    }

    /// The ISA its kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Its number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs one call `body` in the pool: with more than one thread, on a [`team::Team`] whose
    /// helpers (tasks of the pool) spin until the call returns.
    fn run<R: Send>(&self, plan: &CpuPlan, body: impl FnOnce(&CpuKernels<'_>) -> R + Send) -> R {
        let isa = self.isa;
        self.pool.install(|| {
            if self.threads == 1 {
                return body(&CpuKernels { isa, plan, par: gemm::Par::Serial });
            }
            let team = team::Team::new(self.threads);
            rayon::scope(|s| {
                for i in 1..self.threads {
                    let team = &team;
                    s.spawn(move |_| team.helper(i));
                }
                let _stop = team::StopOnDrop(&team);
                body(&CpuKernels { isa, plan, par: gemm::Par::Team(&team) })
            })
        })
    }
}

/// The kernels of one call.
struct CpuKernels<'p> {
    isa: Isa,
    plan: &'p CpuPlan,
    par: gemm::Par<'p>,
}

impl HostKernels<f32> for CpuKernels<'_> {
    fn gemm(&self, alpha: f32, a: Mat<'_, f32>, b: Mat<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
        // The products of two activations (the weight gradients): the AVX-512 tiles where there
        // are (matrixmultiply has no AVX-512 kernels), matrixmultiply otherwise.
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Cpu::with_isa only accepts Avx512 when AVX-512F, AVX2 and FMA were detected.
            Isa::Avx512 if c.cs == 1 => unsafe { gemm::gemm_avx512(&self.par, alpha, a, b, None, beta, c) },
            _ => gemm::gemm_portable(&self.par, alpha, a, b, beta, c),
        }
    }

    fn weight_gemm(&self, op: WeightOp, a: Mat<'_, f32>, b: Mat<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Cpu::with_isa only accepts Avx2 when AVX2 and FMA were detected.
            Isa::Avx2 => unsafe { gemm::gemm_avx2(&self.par, 1.0, a, b, self.plan.packed(op), beta, c) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Cpu::with_isa only accepts Avx512 when AVX-512F, AVX2 and FMA were detected.
            Isa::Avx512 => unsafe { gemm::gemm_avx512(&self.par, 1.0, a, b, self.plan.packed(op), beta, c) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: Cpu::with_isa only accepts Neon when NEON was detected.
            Isa::Neon => unsafe { gemm::gemm_neon(&self.par, 1.0, a, b, self.plan.packed(op), beta, c) },
            // Scalar: no packed kernels.
            _ => {
                let _ = (op, self.plan);
                gemm::gemm_portable(&self.par, 1.0, a, b, beta, c)
            }
        }
    }

    fn cell_forward(&self, cell: CellKind, step: CellForward<'_, f32>) {
        let parts = self.cell_parts(step.active.len(), step.gates.len());
        if parts == 1 {
            return self.cell_forward_rows(cell, step);
        }
        let bounds = host::row_bounds(step.active.len(), parts);
        let blocks: Vec<_> = step.split_rows(&bounds).into_iter().map(|b| Mutex::new(Some(b))).collect();
        self.par.run(parts, &|i| {
            if let Some(b) = blocks[i].lock().ok().and_then(|mut b| b.take()) {
                self.cell_forward_rows(cell, b);
            }
        });
    }

    /// Blocks of whole GEMM register tiles (6 rows; 8 with AVX-512), one per thread, of at
    /// least `ROW_BLOCK_MIN` rows (backward) or `ROW_BLOCK_MIN_FORWARD*` (forward): with a batch that large each thread runs
    /// its rows through the steps on its own, with no synchronisation per step. Results do not
    /// depend on the cut: each block's per-step products take the tiled kernels (at least 6
    /// rows), whose arithmetic per element does not depend on the rows around it, and the cell
    /// kernels work row by row.
    ///
    /// Forward, with the 6-row tiles, a per-step product split by columns across threads wastes
    /// fewer tile rows than blocks of rows do (64 rows: 11 tiles shared by the threads, against
    /// 6 tiles for the larger of two blocks) and its `A` operand is small, so forward cuts only
    /// large batches; the 8-row AVX-512 tiles waste nothing on blocks of 32 rows, and there
    /// blocks win (`ROW_BLOCK_MIN_FORWARD_AVX512`).
    /// Backward (`dh = dG·W_hh`, `K = G·H`) every thread of a column split packs all of `dG`,
    /// and the step has more row-wise work around its product, so blocks pay off there at fewer
    /// rows than forward (README, "Performance", has the measurement).
    fn row_blocks(&self, rows: usize, pass: Pass) -> Vec<usize> {
        let min = match pass {
            Pass::Forward if self.isa == Isa::Avx512 => ROW_BLOCK_MIN_FORWARD_AVX512,
            Pass::Forward => ROW_BLOCK_MIN_FORWARD,
            Pass::Backward => ROW_BLOCK_MIN,
        };
        cut_blocks(rows, self.par.parts(), min, self.tile_rows())
    }

    fn for_blocks(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        self.par.run(parts, f)
    }

    fn serial(&self) -> Self {
        CpuKernels { isa: self.isa, plan: self.plan, par: gemm::Par::Serial }
    }

    fn cell_backward(&self, cell: CellKind, step: CellBackward<'_, f32>) {
        let parts = self.cell_parts(step.active.len(), step.gates.len());
        if parts == 1 {
            return self.cell_backward_rows(cell, step);
        }
        let bounds = host::row_bounds(step.active.len(), parts);
        let blocks: Vec<_> = step.split_rows(&bounds).into_iter().map(|b| Mutex::new(Some(b))).collect();
        self.par.run(parts, &|i| {
            if let Some(b) = blocks[i].lock().ok().and_then(|mut b| b.take()) {
                self.cell_backward_rows(cell, b);
            }
        });
    }
}

/// Bounds of `min(parts, rows / min)` blocks of `rows` rows: whole tiles of `tile` rows, spread
/// evenly (each block `floor` or `ceil` of its share of the tiles), the remainder in the last.
///
/// With `min ≥ 2·tile`, every block gets at least two tiles' worth of rows (the last at least
/// `tile + 1`), so it always takes the blocked GEMM path, which gives every element the bits
/// the whole batch would: a block under 6 rows would take the skinny path and change bits with
/// the thread count. (Rounding each share up instead, as before, could leave 1 row for the
/// last block: 161 rows on 5 threads gave 40, 40, 40, 40, 1.)
fn cut_blocks(rows: usize, parts: usize, min: usize, tile: usize) -> Vec<usize> {
    let blocks = parts.min(rows / min.max(1)).max(1);
    if blocks == 1 {
        return vec![0, rows];
    }
    let tiles = rows.div_ceil(tile);
    let mut bounds: Vec<usize> = (0..blocks).map(|i| tiles * i / blocks * tile).collect();
    bounds.push(rows);
    bounds
}

/// The least rows a block of the time loop gets (see `row_blocks`): fewer would leave most of
/// the 6-row GEMM tiles of its per-step products empty.
const ROW_BLOCK_MIN: usize = 16;
/// The same for the forward pass (see `row_blocks`).
const ROW_BLOCK_MIN_FORWARD: usize = 96;
/// The same for the forward pass with AVX-512, whose 8-row tiles waste nothing on 32-row
/// blocks, which beat the column split there (README, "Performance").
const ROW_BLOCK_MIN_FORWARD_AVX512: usize = 32;

/// Below this many gate values per step a cell kernel runs on one thread.
const CELL_PARALLEL_MIN: usize = 1 << 14;

impl CpuKernels<'_> {
    /// Rows of the ISA's GEMM register tile (blocks of rows are cut at multiples of it).
    fn tile_rows(&self) -> usize {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => <avx512::sgemm::Avx512 as sgemm::BlockTile>::ROWS,
            _ => sgemm::MR,
        }
    }

    /// Parts to split a cell step of `rows` rows and `gate_values` gate values into (rows are
    /// independent, so the split never changes a result).
    fn cell_parts(&self, rows: usize, gate_values: usize) -> usize {
        if gate_values < CELL_PARALLEL_MIN {
            1
        } else {
            self.par.parts().min(rows).max(1)
        }
    }

    fn cell_forward_rows(&self, cell: CellKind, step: CellForward<'_, f32>) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Cpu::with_isa only accepts Avx2 when AVX2 and FMA were detected.
            Isa::Avx2 => unsafe { avx2::cell_forward(cell, step) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Cpu::with_isa only accepts Avx512 when AVX-512F, AVX2 and FMA were detected.
            Isa::Avx512 => unsafe { avx512::cell_forward(cell, step) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: Cpu::with_isa only accepts Neon when NEON was detected.
            Isa::Neon => unsafe { neon::cell_forward(cell, step) },
            _ => <Reference as HostKernels<f32>>::cell_forward(&Reference, cell, step),
        }
    }

    fn cell_backward_rows(&self, cell: CellKind, step: CellBackward<'_, f32>) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in cell_forward_rows.
            Isa::Avx2 | Isa::Avx512 => unsafe { avx2::cell_backward(cell, step) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as in cell_forward_rows.
            Isa::Neon => unsafe { neon::cell_backward(cell, step) },
            _ => <Reference as HostKernels<f32>>::cell_backward(&Reference, cell, step),
        }
    }
}

impl Backend<f32> for Cpu {
    type Buf = [f32];
    type Plan = CpuPlan;
    type Reserve = HostReserve<f32>;

    fn name(&self) -> String {
        format!("cpu-{}", self.isa)
    }

    fn plan(&self, config: &RnnConfig, params: &[f32]) -> Result<CpuPlan> {
        CpuPlan::new(config, params, matches!(self.isa, Isa::Avx2 | Isa::Avx512 | Isa::Neon))
    }

    fn update_plan(&self, plan: &mut CpuPlan, params: &[f32]) -> Result<()> {
        plan.update(params)
    }

    fn read_params(&self, plan: &CpuPlan, params: &mut [f32]) -> Result<()> {
        plan.host.read(params)
    }

    fn forward_inference(
        &self,
        plan: &CpuPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
    ) -> Result<()> {
        self.run(plan, |k| host::run_forward(k, &plan.host, shape, input, output, None))
    }

    fn forward_training(
        &self,
        plan: &CpuPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
        reserve: &mut HostReserve<f32>,
    ) -> Result<()> {
        self.run(plan, |k| host::run_forward(k, &plan.host, shape, input, output, Some(reserve)))
    }

    fn backward(
        &self,
        plan: &CpuPlan,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        self.run(plan, |k| host::run_backward(k, &plan.host, reserve, grads, output, mode))
    }
}

/// See `testkit::bench::time_sgemm`.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn bench_gemm(kind: &str, threads: usize, m: usize, k: usize, n: usize, a_transposed: bool, reps: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0).collect();
    let mut c = vec![0.0f32; m * n];
    let am = if a_transposed { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
    let bm = Mat::new(&b, k, n);
    let packed = kind.ends_with("-packed").then(|| packed::PackedWeight::pack(bm));
    let run = |par: &gemm::Par<'_>, c: &mut [f32]| match kind {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only timed on CPUs with AVX2+FMA (checked below).
        "avx2" | "avx2-packed" => unsafe { gemm::gemm_avx2(par, 1.0, am, bm, packed.as_ref(), 0.0, MatMut::new(c, m, n)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only timed on CPUs with AVX-512F (checked below).
        "avx512" | "avx512-packed" => unsafe { gemm::gemm_avx512(par, 1.0, am, bm, packed.as_ref(), 0.0, MatMut::new(c, m, n)) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: only timed on CPUs with NEON (checked below).
        "neon" | "neon-packed" => unsafe { gemm::gemm_neon(par, 1.0, am, bm, packed.as_ref(), 0.0, MatMut::new(c, m, n)) },
        "portable" => gemm::gemm_portable(par, 1.0, am, bm, 0.0, MatMut::new(c, m, n)),
        _ => panic!("unknown or unsupported GEMM kind {kind:?}"),
    };
    let isa = if kind.starts_with("avx512") {
        Isa::Avx512
    } else if kind.starts_with("avx2") {
        Isa::Avx2
    } else if kind.starts_with("neon") {
        Isa::Neon
    } else {
        Isa::Scalar
    };
    assert!(isa.is_supported(), "this CPU lacks {isa}");
    let team = team::Team::new(threads);
    let mut times = Vec::new();
    std::thread::scope(|s| {
        for i in 1..threads {
            let team = &team;
            s.spawn(move || team.helper(i));
        }
        let _stop = team::StopOnDrop(&team);
        let par = if threads > 1 { gemm::Par::Team(&team) } else { gemm::Par::Serial };
        run(&par, &mut c);
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            run(&par, &mut c);
            times.push(t.elapsed().as_secs_f64());
        }
    });
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// See `testkit::bench::team_handoff_ns`.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn bench_handoff(jobs: usize) -> f64 {
    let team = team::Team::new(2);
    let mut rounds = Vec::new();
    let cpus = affinity::pin_plan(2);
    std::thread::scope(|s| {
        let t = &team;
        let helper_cpu = cpus.as_ref().map(|c| c[1]);
        s.spawn(move || {
            if let Some(c) = helper_cpu {
                affinity::pin_current_thread(c);
            }
            t.helper(1)
        });
        if let Some(c) = cpus.as_ref() {
            affinity::pin_current_thread(c[0]);
        }
        let _stop = team::StopOnDrop(&team);
        // Timed only once the helper spins (before, the caller runs both parts alone).
        let start = std::time::Instant::now();
        while team.alive_helpers() < 1 && start.elapsed() < std::time::Duration::from_secs(1) {
            std::thread::yield_now();
        }
        for _ in 0..5 {
            let start = std::time::Instant::now();
            for _ in 0..jobs.max(1) {
                team.run(&|_| {});
            }
            rounds.push(start.elapsed().as_nanos() as f64 / jobs.max(1) as f64);
        }
    });
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

#[cfg(test)]
mod row_block_tests {
    use super::*;

    /// Every cut the backend makes: blocks cover the rows in order, start on whole tiles, and
    /// none is small enough for the skinny GEMM path (which would change bits with the thread
    /// count), for every thread count up to 64 and up to 3000 rows.
    #[test]
    fn blocks_are_whole_tiles_and_never_skinny() {
        for (min, tile) in [(ROW_BLOCK_MIN, 6), (ROW_BLOCK_MIN, 8), (ROW_BLOCK_MIN_FORWARD, 6), (ROW_BLOCK_MIN_FORWARD_AVX512, 8)] {
            for parts in 1..=64 {
                for rows in 0..3000 {
                    let b = cut_blocks(rows, parts, min, tile);
                    assert_eq!((b[0], *b.last().unwrap()), (0, rows));
                    assert!(b.len() - 1 <= parts.max(1));
                    if b.len() > 2 {
                        for w in b.windows(2) {
                            assert!(w[1] - w[0] >= sgemm::MR, "rows {rows}, parts {parts}, min {min}, tile {tile}: {b:?}");
                            assert_eq!(w[0] % tile, 0);
                        }
                    }
                }
            }
        }
    }
}
