//! The CPU backend, f32: the host driver (`backend/host/`) with hand-written kernels per
//! instruction set, on a pool of threads.
//!
//! # Layout
//!
//! - `mod.rs` (here): [`Cpu`], its [`Backend`] implementation and the `HostKernels` the
//!   driver calls (`CpuKernels`), the one implementation of the driver's interface. It cuts
//!   the time loop into blocks of rows (`RowBlocking`) and splits the cell steps across
//!   threads.
//! - `isa/`: which instruction set runs, and its kernels.
//!   - `isa/mod.rs`: [`Isa`], and the `Kernels` trait that every ISA's zero-sized token
//!     implements (`Scalar`, `Avx2`, `Avx512`, `Neon`): the GEMMs and the per-row cell
//!     kernels as `unsafe` methods, and safe provided methods that check every length once,
//!     for all ISAs, before calling them.
//!   - `isa/rows.rs`: a cell step cut into rows (the length checks, the inactive rows), each
//!     active row handed to the ISA's kernel of its cell; it names the driver's step types
//!     once, as the row types `FwdRow` and `BwdRow`.
//!   - `isa/scalar.rs`: the reference kernels and matrixmultiply, the base of every ISA.
//!   - `isa/avx2/`, `isa/avx512/`, `isa/neon/`: the hand-written kernels, one file per
//!     concern: `math.rs` (exp, sigmoid, tanh), `lstm.rs`, `gru.rs`, `rnn.rs` (the fused cells,
//!     forward and backward), `sgemm.rs` (the blocked SGEMM's register tile), `sgemm_skinny.rs`
//!     (few rows against a packed weight). AVX-512 has only what it improves: the tiles, the
//!     LSTM forward (`isa/avx512/lstm.rs`) and its maths.
//!   - `isa/cell_tests.rs`: the harness every ISA's cells are tested with
//!     (`cell_kernel_tests!` in each ISA's `mod.rs`).
//!   - `isa/*/layer_norm.rs` (and `isa/scalar.rs`'s `layer_norm`): layer norm of one row,
//!     forward and backward, each row's sums in a fixed order per ISA;
//!     `isa/layer_norm_tests.rs` tests them (`layer_norm_kernel_tests!` in each of them).
//! - `gemm/`: the GEMM drivers, ISA-neutral and generic over an ISA's register tiles:
//!   `mod.rs` splits a product across threads, `sgemm.rs` is the blocked and skinny SGEMM
//!   (and the traits the tiles implement), `packed.rs` the plan's weights packed once,
//!   `team.rs` the threads of one call.
//! - `affinity.rs`: pinning the pool's threads to CPUs.
//! - `tuner.rs`: the plan-time tuner: per pass and batch size, the threads of a call and the
//!   cut of the time loop's rows, chosen by timing the candidates (all of which give the same
//!   bits) on the plan's own shapes.
//!
//! # Dispatch
//!
//! The ISA is chosen once, when a [`Cpu`] is made (the best one, or `RNN_KERNELS_ISA`), as a
//! token that only exists where the CPU has the ISA. Each call matches it once
//! (`with_kernels!`) and runs the driver monomorphised for that ISA's kernels: no kernel call
//! site chooses an ISA, and the kernels inline into their ISA's code as before. An ISA
//! implements only the kernels it improves and takes the others from its base, through the
//! trait's `Base` (AVX-512 → AVX2 → scalar, NEON → scalar).
//!
//! Safety: every `#[target_feature]` kernel is called from a method of its ISA's token (whose
//! existence proves the features) after the provided method checked the lengths; each `unsafe`
//! block says which of the two it relies on.
//!
//! # Extending it
//!
//! - A cell option (a peephole, a clip, layer norm): an argument of the row kernels, read in
//!   `rows.rs` and by each ISA's kernel of that cell; an ISA that does not write it takes its
//!   base's.
//! - A new ISA or storage type (AVX512-BF16, AMX): a token whose `detect()` checks the
//!   features, a `Kernels` impl whose `Base` is the ISA it extends, overriding the methods it
//!   improves, and a `Chosen` variant.
//! - Another choice for the tuner (`tuner.rs`): a field of its `Strategy` and a candidate; only
//!   choices that leave the bits unchanged (whole tiles, never the skinny path) may depend on
//!   timing.
//!
//! Results are bit-identical for any thread count: threads split GEMM outputs and batch rows,
//! never a sum.

mod affinity;
mod gemm;
mod isa;
mod tuner;

use crate::Dtype;
pub use gemm::packed::CpuPlan;
pub use isa::Isa;
pub use tuner::{tuning_records, Strategy, TuneRecord, TunedPass, Tuning};

use crate::attention::{
    AttentionBackend, AttentionConfig, AttentionGrads, AttentionMemory, AttentionMemoryGrads, AttentionOutput, AttentionShape,
    AttentionUpstream,
};

impl AttentionBackend<f32> for Cpu {
    fn attention_memory(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        keys: &[f32],
    ) -> Result<AttentionMemory<f32>> {
        // Into empty results: their buffers made on this thread (host::attention::Fresh).
        let mut memory = AttentionMemory::default();
        self.attention_memory_into(cfg, shape, params, keys, &mut memory)?;
        Ok(memory)
    }

    fn attention_forward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
    ) -> Result<AttentionOutput<f32>> {
        let mut out = AttentionOutput::default();
        self.attention_forward_with_into(cfg, shape, params, memory, queries, &mut out)?;
        Ok(out)
    }

    fn attention_backward_with(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
        out: &AttentionOutput<f32>,
        up: AttentionUpstream<'_, f32>,
        d_memory: &mut AttentionMemoryGrads<f32>,
    ) -> Result<AttentionGrads<f32>> {
        let mut grads = AttentionGrads::default();
        self.attention_backward_with_into(cfg, shape, params, memory, queries, out, up, d_memory, &mut grads)?;
        Ok(grads)
    }

    fn attention_memory_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        d_memory: &AttentionMemoryGrads<f32>,
    ) -> Result<AttentionGrads<f32>> {
        let mut grads = AttentionGrads::default();
        self.attention_memory_backward_into(cfg, shape, params, memory, d_memory, &mut grads)?;
        Ok(grads)
    }

    fn attention_memory_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        keys: &[f32],
        memory: &mut AttentionMemory<f32>,
    ) -> Result<()> {
        let sizes = host::attention::memory_sizes(cfg, shape);
        *memory = into([&mut memory.keys, &mut memory.proj], &sizes, |fresh| {
            with_kernels!(self.kernels, |k| self
                .run(k, None, self.default_strategy_of(k), |k| host::attention::memory(k, cfg, shape, params, keys, fresh)))
        })?;
        Ok(())
    }

    fn attention_forward_with_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
        out: &mut AttentionOutput<f32>,
    ) -> Result<()> {
        let sizes = host::attention::forward_sizes(cfg, shape);
        *out = into([&mut out.weights, &mut out.context, &mut out.hidden], &sizes, |fresh| {
            with_kernels!(self.kernels, |k| self.run(k, None, self.default_strategy_of(k), |k| host::attention::forward_with(
                k, cfg, shape, params, memory, queries, fresh
            )))
        })?;
        Ok(())
    }

    fn attention_backward_with_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        queries: &[f32],
        out: &AttentionOutput<f32>,
        up: AttentionUpstream<'_, f32>,
        d_memory: &mut AttentionMemoryGrads<f32>,
        grads: &mut AttentionGrads<f32>,
    ) -> Result<()> {
        // In the order of `backward_sizes`: the parameters', the queries' gradients.
        let sizes = host::attention::backward_sizes(cfg, shape, true, false);
        let g = into([&mut grads.d_params, &mut grads.d_queries], &sizes, |fresh| {
            with_kernels!(self.kernels, |k| self.run(k, None, self.default_strategy_of(k), |k| host::attention::backward_with(
                k, cfg, shape, params, memory, queries, out, up, d_memory, fresh
            )))
        })?;
        // No keys' gradients from this call: their buffer is kept, empty, for the next.
        (grads.d_params, grads.d_queries) = (g.d_params, g.d_queries);
        grads.d_keys.clear();
        Ok(())
    }

    fn attention_memory_backward_into(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        memory: &AttentionMemory<f32>,
        d_memory: &AttentionMemoryGrads<f32>,
        grads: &mut AttentionGrads<f32>,
    ) -> Result<()> {
        // In the order of `backward_sizes`: the parameters', the keys' gradients.
        let sizes = host::attention::backward_sizes(cfg, shape, false, true);
        let g = into([&mut grads.d_params, &mut grads.d_keys], &sizes, |fresh| {
            with_kernels!(self.kernels, |k| self.run(k, None, self.default_strategy_of(k), |k| host::attention::memory_backward(
                k, cfg, shape, params, memory, d_memory, fresh
            )))
        })?;
        (grads.d_params, grads.d_keys) = (g.d_params, g.d_keys);
        grads.d_queries.clear();
        Ok(())
    }

    /// The memory and the forward pass in one call on the pool, the memory's buffers kept for
    /// the next call (`host::attention::forward`).
    fn attention_forward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        keys: &[f32],
        queries: &[f32],
    ) -> Result<AttentionOutput<f32>> {
        let mut fresh = Fresh::kept(&host::attention::forward_sizes(cfg, shape));
        with_kernels!(self.kernels, |k| self
            .run(k, None, self.default_strategy_of(k), |k| host::attention::forward(k, cfg, shape, params, keys, queries, &mut fresh)))
    }

    /// The memory, the backward pass and the keys' side's backward in one call on the pool,
    /// the intermediates' buffers kept for the next call (`host::attention::backward`).
    fn attention_backward(
        &self,
        cfg: &AttentionConfig,
        shape: &AttentionShape,
        params: &[f32],
        keys: &[f32],
        queries: &[f32],
        out: &AttentionOutput<f32>,
        up: AttentionUpstream<'_, f32>,
    ) -> Result<AttentionGrads<f32>> {
        let mut fresh = Fresh::kept(&host::attention::backward_sizes(cfg, shape, true, true));
        with_kernels!(self.kernels, |k| self.run(k, None, self.default_strategy_of(k), |k| host::attention::backward(
            k, cfg, shape, params, keys, queries, out, up, &mut fresh
        )))
    }
}

/// Runs `call` with the buffers in `bufs` (an `_into` call's previous results, in the order of
/// `sizes`) as the buffers of its results ([`Fresh::reusing`]); on an error, puts them back as
/// they were (every call checks its inputs before it takes a buffer).
fn into<R, const N: usize>(
    mut bufs: [&mut Vec<f32>; N],
    sizes: &[Option<usize>],
    call: impl FnOnce(&mut Fresh<f32>) -> Result<R>,
) -> Result<R> {
    let mut fresh = Fresh::reusing(bufs.iter_mut().map(|b| std::mem::take(&mut **b)).collect(), sizes);
    let result = call(&mut fresh);
    if result.is_err() {
        for (b, v) in bufs.iter_mut().zip(fresh.into_kept()) {
            **b = v;
        }
    }
    result
}

use crate::backend::cell::Cell;
use crate::backend::host::attention::Fresh;
use crate::backend::host::{
    self, CellBackward, CellForward, ChoPart, HostKernels, HostReserve, HostStepGrads, Mat, MatMut, Pass, WeightOp,
};
use crate::backend::{Backend, BackwardInput, BackwardOutput, ForwardInput, ForwardOutput, GradMode};
use crate::config::{CellKind, RnnConfig};
use crate::error::{Error, Result};
use crate::masks::MaskStream;
use crate::shape::SeqShape;
use gemm::team::{StopOnDrop, Team};
use gemm::{Gemm, Par};
use isa::{with_kernels, Chosen, Kernels};
use std::sync::{Arc, Mutex};

/// The cell options ([`RnnConfig::options`]) this backend implements, on every ISA; `plan`
/// refuses the others.
pub(crate) const OPTIONS: &[&str] = &[
    // The host driver's (`backend::host`).
    "direction=reverse",
    "merge=sum",
    "batch_first",
    "dropout",
    "zoneout",
    "zoneout_cell",
    "recurrent_dropout",
    "input_dropout",
    // The cell kernels'.
    "peephole",
    "gate_clip",
    "input_forget",
    "linear_before_reset=false",
    "layer_norm",
];

#[cfg(all(target_arch = "x86_64", any(test, feature = "testkit")))]
pub(crate) use isa::avx2::hooks as avx2_hooks;

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
    kernels: Chosen,
    threads: usize,
    tuning: Tuning,
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu").field("isa", &self.isa()).field("threads", &self.threads).field("tuning", &self.tuning).finish()
    }
}

impl Cpu {
    /// The ISA from [`Isa::from_env`], one thread per available core, and the tuning of
    /// [`Tuning::from_env`].
    pub fn new() -> Result<Cpu> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Cpu::with_isa(Isa::from_env()?, threads)
    }

    /// The ISA from [`Isa::from_env`] and `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Cpu> {
        Cpu::with_isa(Isa::from_env()?, threads)
    }

    /// A given ISA (an error if this CPU lacks it), `threads` threads (at least 1), and the
    /// tuning of [`Tuning::from_env`].
    pub fn with_isa(isa: Isa, threads: usize) -> Result<Cpu> {
        if threads == 0 {
            return Err(Error::invalid("threads", "at least 1", threads));
        }
        let tuning = Tuning::from_env()?;
        let kernels = Chosen::detect(isa)
            .ok_or_else(|| Error::invalid("isa", format!("an ISA this CPU supports: {}", isa::names(&Isa::available())), isa))?;
        let mut builder = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("rnn-kernels-cpu-{i}"));
        if let Some(cpus) = affinity::pin_plan(threads) {
            builder = builder.start_handler(move |i| affinity::pin_current_thread(cpus[i]));
        }
        let pool = builder
            .build()
            .map_err(|e| Error::BackendUnavailable { backend: "cpu".into(), reason: format!("cannot start {threads} threads: {e}") })?;
        Ok(Cpu { kernels, threads, tuning, pool: Arc::new(pool) })
    }

    /// How its calls choose their [`Strategy`] (see `backend/cpu/tuner.rs`): timed on the first
    /// call of each pass and batch size ([`Tuning::Auto`], the default), the ISA's fixed one
    /// ([`Tuning::Off`]), or a given one ([`Tuning::Fixed`], checked here: an error names the
    /// field out of range). Every strategy gives the same bits.
    pub fn set_tuning(&mut self, tuning: Tuning) -> Result<()> {
        if let Tuning::Fixed(s) = tuning {
            s.check(self.threads, self.blocking().tile_rows)?;
        }
        self.tuning = tuning;
        Ok(())
    }

    /// Its tuning.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// The strategy [`Tuning::Off`] runs: all its threads, the ISA's fixed cut of the rows.
    pub fn default_strategy(&self) -> Strategy {
        Strategy::default_for(self.blocking(), self.threads)
    }

    fn blocking(&self) -> RowBlocking {
        fn of<K: Kernels>(_: K) -> RowBlocking {
            K::ROW_BLOCKING
        }
        with_kernels!(self.kernels, |k| of(k))
    }

    fn default_strategy_of<K: Kernels>(&self, _: K) -> Strategy {
        Strategy::default_for(K::ROW_BLOCKING, self.threads)
    }

    /// The ISA its kernels use.
    pub fn isa(&self) -> Isa {
        self.kernels.isa()
    }

    /// Its number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs one call `body` in the pool with the kernels of `isa` and the strategy `s` (its
    /// threads, at most the pool's, and its cut of the rows): with more than one thread, on a
    /// [`Team`] whose helpers (tasks of the pool) spin until the call returns.
    fn run<K: Kernels, R: Send>(
        &self,
        isa: K,
        plan: Option<&CpuPlan>,
        s: Strategy,
        body: impl FnOnce(&CpuKernels<'_, K>) -> R + Send,
    ) -> R {
        let threads = s.threads.clamp(1, self.threads);
        let blocking = s.blocking(K::ROW_BLOCKING.tile_rows);
        self.pool.install(|| {
            if threads == 1 {
                return body(&CpuKernels { isa, plan, par: Par::Serial, blocking, parallel_directions: false });
            }
            let team = Team::new(threads);
            rayon::scope(|scope| {
                for i in 1..threads {
                    let team = &team;
                    scope.spawn(move |_| team.helper(i));
                }
                let _stop = StopOnDrop(&team);
                body(&CpuKernels { isa, plan, par: Par::Team(&team), blocking, parallel_directions: s.parallel_directions })
            })
        })
    }

    /// The strategy of a forward call (`training` or inference): see `tuner.rs`.
    fn forward_strategy<K: Kernels>(
        &self,
        k: K,
        plan: &CpuPlan,
        shape: &SeqShape,
        call: (&ForwardInput<'_, [f32]>, &ForwardOutput<'_, [f32]>),
        training: bool,
    ) -> Strategy {
        let pass = if training { TunedPass::Training } else { TunedPass::Inference };
        let cfg = plan.host.layout.config();
        let (key, candidates) = match self.to_tune(k, plan, pass, shape.batch()) {
            Decision::Known(s) => return s,
            Decision::Tune(key, candidates) => (key, candidates),
        };
        // A call with wrong arguments gets its error untuned.
        if crate::backend::check_forward(cfg, shape, call.0, call.1).is_err() {
            return self.default_strategy_of(k);
        }
        let start = std::time::Instant::now();
        let batch = shape.batch();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut reserve = HostReserve::default();
        let (chosen, trials, steps) = tuner::pick(&candidates, shape.steps(), |s, steps| {
            let trial = SeqShape::new(steps, batch)?;
            if x.len() != steps * batch * cfg.input_size() {
                x = trial_values(steps * batch * cfg.input_size());
                y = vec![0.0f32; steps * batch * cfg.output_size()];
            }
            let t = std::time::Instant::now();
            let input = ForwardInput { x: &x[..], h0: None, c0: None, masks: Some(MaskStream::new(0, 0)) };
            let output = ForwardOutput { y: &mut y[..], hn: None, cn: None };
            self.run(k, Some(plan), s, |k| host::run_forward(k, &plan.host, &trial, input, output, training.then_some(&mut reserve)))?;
            Ok(t.elapsed())
        });
        self.keep(k, plan, key, pass, batch, chosen, trials, steps, start)
    }

    /// The strategy of a backward call: see `tuner.rs`.
    fn backward_strategy<K: Kernels>(
        &self,
        k: K,
        plan: &CpuPlan,
        reserve: &HostReserve<f32>,
        call: (&BackwardInput<'_, [f32]>, &BackwardOutput<'_, [f32]>),
    ) -> Strategy {
        let cfg = plan.host.layout.config();
        // A call with wrong arguments gets its error untuned.
        let Ok(shape) = reserve.stamp.check(&plan.host.stamp) else {
            return self.default_strategy_of(k);
        };
        let (key, candidates) = match self.to_tune(k, plan, TunedPass::Backward, shape.batch()) {
            Decision::Known(s) => return s,
            Decision::Tune(key, candidates) => (key, candidates),
        };
        if crate::backend::check_backward(cfg, shape, plan.host.layout.len(), call.0, call.1).is_err() {
            return self.default_strategy_of(k);
        }
        let start = std::time::Instant::now();
        let rows = shape.batch();
        let states = cfg.num_layers() * cfg.num_directions() * rows;
        let dhn = call.0.dhn.map(|_| trial_values(states * cfg.hidden_out_size()));
        let dcn = call.0.dcn.map(|_| trial_values(states * cfg.hidden_size()));
        let mut dparams = call.1.dparams.as_ref().map(|_| vec![0.0f32; plan.host.layout.len()]);
        // Per number of steps: the reserve of a training forward (the default strategy's,
        // untimed), `dy` and `dx`.
        let (mut filled, mut saved, mut dy, mut dx) = (0, HostReserve::default(), None, None);
        let (chosen, trials, steps) = tuner::pick(&candidates, shape.steps(), |s, steps| {
            let trial = SeqShape::new(steps, rows)?;
            let tb = steps * rows;
            if filled != steps {
                let x = trial_values(tb * cfg.input_size());
                let mut y = vec![0.0f32; tb * cfg.output_size()];
                let input = ForwardInput { x: &x[..], h0: None, c0: None, masks: Some(MaskStream::new(0, 0)) };
                let output = ForwardOutput { y: &mut y[..], hn: None, cn: None };
                let default = self.default_strategy_of(k);
                self.run(k, Some(plan), default, |k| host::run_forward(k, &plan.host, &trial, input, output, Some(&mut saved)))?;
                dy = call.0.dy.map(|_| trial_values(tb * cfg.output_size()));
                dx = call.1.dx.as_ref().map(|_| vec![0.0f32; tb * cfg.input_size()]);
                filled = steps;
            }
            let t = std::time::Instant::now();
            let grads = BackwardInput { dy: dy.as_deref(), dhn: dhn.as_deref(), dcn: dcn.as_deref() };
            let output = BackwardOutput { dx: dx.as_deref_mut(), dh0: None, dc0: None, dparams: dparams.as_deref_mut() };
            self.run(k, Some(plan), s, |k| host::run_backward(k, &plan.host, &saved, grads, output, GradMode::Overwrite))?;
            Ok(t.elapsed())
        });
        self.keep(k, plan, key, TunedPass::Backward, rows, chosen, trials, steps, start)
    }

    /// The strategy of a call of `pass` with `batch` rows when it is known without trials
    /// (fixed, off, a single candidate, or kept from an earlier tuning), else the key and the
    /// candidates of the tuning to run.
    fn to_tune<K: Kernels>(&self, k: K, plan: &CpuPlan, pass: TunedPass, batch: usize) -> Decision {
        let default = self.default_strategy_of(k);
        match self.tuning {
            Tuning::Off => return Decision::Known(default),
            Tuning::Fixed(s) => return Decision::Known(s),
            Tuning::Auto if self.threads == 1 => return Decision::Known(default),
            Tuning::Auto => {}
        }
        // The calls after the first: no key, no allocation.
        if let Some(s) = plan.choices.get(K::ISA, self.threads, pass, batch) {
            return Decision::Known(s);
        }
        let cfg = plan.host.layout.config();
        let two_directions = cfg.num_directions() == 2;
        let candidates = tuner::candidates(default, K::ROW_BLOCKING.tile_rows, pass, batch, two_directions);
        if candidates.len() < 2 {
            plan.choices.put(K::ISA, self.threads, pass, batch, default);
            return Decision::Known(default);
        }
        let key = tuner::key(K::ISA.name(), plan.storage, self.threads, cfg, pass, batch);
        match tuner::lookup(&key) {
            // A choice read from the tuning file is checked like a fixed one.
            Some(s) if s.check(self.threads, K::ROW_BLOCKING.tile_rows).is_ok() => {
                plan.choices.put(K::ISA, self.threads, pass, batch, s);
                Decision::Known(s)
            }
            _ => Decision::Tune(key, candidates),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn keep<K: Kernels>(
        &self,
        k: K,
        plan: &CpuPlan,
        key: String,
        pass: TunedPass,
        batch: usize,
        chosen: Strategy,
        trials: Vec<(Strategy, f64)>,
        trial_steps: usize,
        start: std::time::Instant,
    ) -> Strategy {
        let default = self.default_strategy_of(k);
        if trials.is_empty() {
            // The default's trial failed: the call will report why. The plan keeps the default
            // (its later calls do not try again); the process keeps nothing.
            plan.choices.put(K::ISA, self.threads, pass, batch, default);
            return default;
        }
        let kept =
            tuner::keep(TuneRecord { key, pass, batch, chosen, default, trials, trial_steps, seconds: start.elapsed().as_secs_f64() });
        plan.choices.put(K::ISA, self.threads, pass, batch, kept);
        kept
    }
}

/// The kernels of one call: the ISA's, the plan's packed weights (none for a call that is not a
/// stack's: attention), and the call's threads.
struct CpuKernels<'p, K> {
    isa: K,
    plan: Option<&'p CpuPlan>,
    par: Par<'p>,
    /// The call's cut of the time loop's rows (its [`Strategy`]'s).
    blocking: RowBlocking,
    /// Its strategy's [`Strategy::parallel_directions`], on a team of threads.
    parallel_directions: bool,
}

impl<K: Kernels> HostKernels<f32> for CpuKernels<'_, K> {
    fn gemm(&self, alpha: f32, a: Mat<'_, f32>, b: Mat<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
        self.isa.gemm(&self.par, Gemm::new(alpha, a, b, beta), c)
    }

    fn weight_grad_gemm(&self, alpha: f32, a: Mat<'_, f32>, b: Mat<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
        if self.plan.is_some_and(|p| p.bf16_products()) {
            self.isa.gemm_bf16(&self.par, Gemm::new(alpha, a, b, beta), c)
        } else {
            self.gemm(alpha, a, b, beta, c)
        }
    }

    fn weight_gemm(&self, op: WeightOp, a: Mat<'_, f32>, b: Mat<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
        let g = Gemm { packed: self.plan.and_then(|p| p.packed(op)), ..Gemm::new(1.0, a, b, beta) };
        self.isa.weight_gemm(&self.par, g, c)
    }

    fn cell_forward(&self, cell: CellKind, step: CellForward<'_, f32>) {
        let (rows, gate_values) = (step.active.len(), step.gates.len());
        self.split_cell_step(rows, gate_values, step, CellForward::split_rows, |s| self.isa.cell_forward(cell, s));
    }

    fn cell_backward(&self, cell: CellKind, step: CellBackward<'_, f32>) {
        let (rows, gate_values) = (step.active.len(), step.gates.len());
        self.split_cell_step(rows, gate_values, step, CellBackward::split_rows, |s| self.isa.cell_backward(cell, s));
    }

    fn gru_reset_before_forward(&self, _: &Cell, part: ChoPart, step: CellForward<'_, f32>) {
        let (rows, gate_values) = (step.active.len(), step.gates.len());
        self.split_cell_step(rows, gate_values, step, CellForward::split_rows, |s| isa::rows::gru_reset_before_forward(self.isa, part, s));
    }

    fn gru_reset_before_backward(&self, _: &Cell, part: ChoPart, step: CellBackward<'_, f32>) {
        let (rows, gate_values) = (step.active.len(), step.gates.len());
        self.split_cell_step(rows, gate_values, step, CellBackward::split_rows, |s| {
            isa::rows::gru_reset_before_backward(self.isa, part, s)
        });
    }

    /// Blocks of whole GEMM register tiles, one per thread, of at least the ISA's
    /// [`RowBlocking`] minimum for `pass`: with a batch that large each thread runs its rows
    /// through the steps on its own, with no synchronisation per step. Results do not depend
    /// on the cut: each block's per-step products take the tiled kernels (at least 6 rows),
    /// whose arithmetic per element does not depend on the rows around it, and the cell
    /// kernels work row by row.
    fn row_blocks(&self, rows: usize, pass: Pass) -> Vec<usize> {
        let b = self.blocking;
        let min = match pass {
            Pass::Forward => b.forward_min,
            Pass::Backward => b.backward_min,
        };
        cut_blocks(rows, self.par.parts(), min, b.tile_rows)
    }

    fn for_blocks(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        self.par.run(parts, f)
    }

    fn for_long_blocks(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        self.par.run_long(parts, f)
    }

    fn parallel_directions(&self) -> bool {
        self.parallel_directions
    }

    fn tanh_in_place(&self, x: &mut [f32]) {
        self.isa.tanh_in_place(x)
    }

    fn threads(&self) -> usize {
        self.par.parts()
    }

    fn weight_grad_rows(&self) -> usize {
        WEIGHT_GRAD_ROWS
    }

    fn serial(&self) -> Self {
        CpuKernels { isa: self.isa, plan: self.plan, par: Par::Serial, blocking: self.blocking, parallel_directions: false }
    }

    /// The ISA's row kernels (`isa/*/layer_norm.rs`), rows split across the call's threads
    /// ([`layer_norm_rows`]).
    fn layer_norm_rows(
        &self,
        w: usize,
        x: &mut [f32],
        gamma: &[f32],
        beta: Option<&[f32]>,
        xhat: Option<&mut [f32]>,
        rstd: Option<&mut [f32]>,
    ) {
        layer_norm_rows(self.isa, &self.par, w, x, gamma, beta, xhat, rstd)
    }

    /// The ISA's row kernel (`isa/*/layer_norm.rs`) with its vector `tanh`.
    fn lstm_ln_output(&self, h: usize, gates: &[f32], m: &mut [f32]) {
        self.isa.lstm_ln_output(h, gates, m)
    }

    /// The ISA's row kernel (`isa/*/layer_norm.rs`) with its vector `tanh`.
    fn lstm_ln_backward(&self, h: usize, rows: host::layer_norm::LstmLnBack<'_, f32>) {
        self.isa.lstm_ln_backward(h, rows)
    }

    /// As [`layer_norm_rows`](Self::layer_norm_rows), backward ([`layer_norm_rows_backward`]).
    fn layer_norm_rows_backward(&self, w: usize, dy: &[f32], gamma: &[f32], xhat: &[f32], rstd: &[f32], dx: &mut [f32]) {
        layer_norm_rows_backward(self.isa, &self.par, w, dy, gamma, xhat, rstd, dx)
    }
}

/// [`Kernels::layer_norm_rows`] with the rows split across `par`'s threads as a cell step's
/// (from [`CELL_PARALLEL_MIN`] values): each row's sums run in the ISA's fixed order whatever
/// thread runs it, so the results do not depend on the thread count. Lengths are checked once,
/// before the split.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_rows<K: Kernels>(
    isa: K,
    par: &Par<'_>,
    w: usize,
    x: &mut [f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    xhat: Option<&mut [f32]>,
    rstd: Option<&mut [f32]>,
) {
    let rows = isa::check_layer_norm(
        w,
        x.len(),
        gamma.len(),
        beta.map(<[f32]>::len),
        xhat.as_deref().map(<[f32]>::len),
        rstd.as_deref().map(<[f32]>::len),
    );
    let parts = row_parts(par, rows, x.len());
    if parts == 1 {
        return isa.layer_norm_rows(w, x, gamma, beta, xhat, rstd);
    }
    let bounds = host::row_bounds(rows, parts);
    let (xhat, rstd) = (cut_optional_rows(xhat, w, &bounds), cut_optional_rows(rstd, 1, &bounds));
    let blocks: Vec<_> =
        cut_rows(x, w, &bounds).into_iter().zip(xhat).zip(rstd).map(|((x, xhat), rstd)| Mutex::new(Some((x, xhat, rstd)))).collect();
    par.run(parts, &|i| {
        if let Some((x, xhat, rstd)) = blocks[i].lock().ok().and_then(|mut b| b.take()) {
            isa.layer_norm_rows(w, x, gamma, beta, xhat, rstd);
        }
    });
}

/// [`Kernels::layer_norm_rows_backward`] split as [`layer_norm_rows`].
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_rows_backward<K: Kernels>(
    isa: K,
    par: &Par<'_>,
    w: usize,
    dy: &[f32],
    gamma: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
) {
    let rows = isa::check_layer_norm_backward(w, dy.len(), gamma.len(), xhat.len(), rstd.len(), dx.len());
    let parts = row_parts(par, rows, dy.len());
    if parts == 1 {
        return isa.layer_norm_rows_backward(w, dy, gamma, xhat, rstd, dx);
    }
    let bounds = host::row_bounds(rows, parts);
    let blocks: Vec<_> = cut_rows(dx, w, &bounds).into_iter().map(|b| Mutex::new(Some(b))).collect();
    par.run(parts, &|i| {
        if let Some(dx) = blocks[i].lock().ok().and_then(|mut b| b.take()) {
            let (r0, r1) = (bounds[i], bounds[i + 1]);
            isa.layer_norm_rows_backward(w, &dy[r0 * w..r1 * w], gamma, &xhat[r0 * w..r1 * w], &rstd[r0..r1], dx);
        }
    });
}

/// Parts to split `rows` rows of `values` values in all into: one below
/// [`CELL_PARALLEL_MIN`], else one per thread of `par` (at most one per row).
fn row_parts(par: &Par<'_>, rows: usize, values: usize) -> usize {
    if values < CELL_PARALLEL_MIN {
        1
    } else {
        par.parts().min(rows).max(1)
    }
}

/// [`cut_rows`] of `s` if given, else as many `None`.
fn cut_optional_rows<'a>(s: Option<&'a mut [f32]>, w: usize, bounds: &[usize]) -> Vec<Option<&'a mut [f32]>> {
    match s {
        Some(s) => cut_rows(s, w, bounds).into_iter().map(Some).collect(),
        None => bounds.windows(2).map(|_| None).collect(),
    }
}

/// `s` (rows of `w` values) cut at the row `bounds` (see [`host::row_bounds`]).
fn cut_rows<'a>(mut s: &'a mut [f32], w: usize, bounds: &[usize]) -> Vec<&'a mut [f32]> {
    bounds
        .windows(2)
        .map(|b| {
            let (block, rest) = std::mem::take(&mut s).split_at_mut((b[1] - b[0]) * w);
            s = rest;
            block
        })
        .collect()
}

/// What [`Cpu::to_tune`] found.
enum Decision {
    /// The strategy, without trials.
    Known(Strategy),
    /// The key to keep the choice under, and the candidates (the default first).
    Tune(String, Vec<Strategy>),
}

/// Deterministic values in `[-0.5, 0.5)` for the tuner's trials (their results are discarded;
/// they only need to be ordinary numbers).
fn trial_values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
}

/// Rows of a block of the weight gradients' sums (`HostKernels::weight_grad_rows`): 16 of the
/// tiled GEMM's `KC = 512` blocks, each of which already starts its register accumulators
/// from zero, so within a block a sum has at most 512 + 16 roundings in a row. A training
/// call of up to this many rows (`T·B`: the compared configurations have at most 6,400) takes
/// the one GEMM per weight as before, at no cost; a longer one adds an f64 pass over the
/// weight gradient per block, against the block's `8192·m·n` multiply-adds.
const WEIGHT_GRAD_ROWS: usize = 8192;

/// Below this many gate values per step a cell kernel runs on one thread (while the others
/// wait for the next step's product). Split by rows, a step pays a hand-off and reads the
/// gates the other threads' column parts of the product wrote. Against `1 << 14` before, AMD
/// EPYC Zen 4, 2 threads: gru-1024-1024-4-375 inference (12,288 values) new / old 0.94, 0.99
/// and 0.98 in three runs (`benches/compare.py --peers "" --rounds 9|7 --baseline-bin OLD`,
/// and 8 alternating `bench --tune off` runs, whose ratios were 0.88–0.97 while the VM's
/// hand-offs were slow and 0.94–1.01 otherwise); gru-512-512-8-50 (12,288) 0.98 and 1.00.
/// Below, the split cost: with `1 << 12`, lstm-256-256-8-100 (8,192) 1.024 and
/// lstm-512-512-2-100 (4,096) 1.051.
const CELL_PARALLEL_MIN: usize = 3 << 12;

impl<K: Kernels> CpuKernels<'_, K> {
    /// Runs the cell step `step` of `rows` rows through `run`, split by rows across the call's
    /// threads when it has at least [`CELL_PARALLEL_MIN`] gate values (rows are independent,
    /// so the split never changes a result).
    fn split_cell_step<S: Send>(&self, rows: usize, gate_values: usize, step: S, split: fn(S, &[usize]) -> Vec<S>, run: impl Fn(S) + Sync) {
        let parts = if gate_values < CELL_PARALLEL_MIN { 1 } else { self.par.parts().min(rows).max(1) };
        if parts == 1 {
            return run(step);
        }
        let blocks: Vec<_> = split(step, &host::row_bounds(rows, parts)).into_iter().map(|b| Mutex::new(Some(b))).collect();
        self.par.run(parts, &|i| {
            if let Some(b) = blocks[i].lock().ok().and_then(|mut b| b.take()) {
                run(b);
            }
        });
    }
}

/// How the time loop's batch rows are cut into blocks that run their steps on their own
/// ([`HostKernels::row_blocks`]), per ISA.
///
/// Forward, with the 6-row tiles, a per-step product split by columns across threads wastes
/// fewer tile rows than blocks of rows do (64 rows: 11 tiles shared by the threads, against 6
/// tiles for the larger of two blocks) and its `A` operand is small, so forward cuts only large
/// batches; the 8-row AVX-512 tiles waste nothing on blocks of 32 rows, and there blocks were
/// measured faster than the column split. Backward (`dh = dG·W_hh`, `K = G·H`) every thread of
/// a column split packs all of `dG`, and the step has more row-wise work around its product:
/// measured on lstm-512-512-64-100 (2 threads), blocks made the forward slower and the
/// training call faster.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowBlocking {
    /// Rows of the GEMM register tile: blocks start at multiples of it.
    pub tile_rows: usize,
    /// The least rows of a forward block.
    pub forward_min: usize,
    /// The least rows of a backward block: fewer would leave most of the 6-row GEMM tiles of
    /// its per-step products empty.
    pub backward_min: usize,
}

impl RowBlocking {
    /// The 6-row tiles of AVX2 and NEON (and the scalar ISA's GEMM).
    pub(crate) const SIX_ROW_TILES: RowBlocking = RowBlocking { tile_rows: gemm::sgemm::MR, forward_min: 96, backward_min: 16 };
}

/// Bounds of `min(parts, rows / min)` blocks of `rows` rows: whole tiles of `tile` rows, spread
/// evenly (each block `floor` or `ceil` of its share of the tiles), the remainder in the last.
///
/// With `min ≥ 2·tile`, every block gets at least two tiles' worth of rows (the last at least
/// `tile + 1`), so it always takes the blocked GEMM path, which gives every element the bits
/// the whole batch would: a block under 6 rows would take the skinny path and change bits with
/// the thread count. (Rounding each share up instead could leave 1 row for the last block: 161
/// rows on 5 threads would give 40, 40, 40, 40, 1.)
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

/// The f32 passes, for a plan of any storage type (whose weights are f32 or exactly widened).
impl Cpu {
    /// A short name for reports, `cpu-` and the ISA (e.g. `cpu-avx512`), whatever the
    /// storage type (the `Backend<T>::name` of every `T`).
    pub fn name(&self) -> String {
        format!("cpu-{}", self.isa())
    }

    /// Refuses a plan made for another storage type than `dtype`.
    fn check_storage(plan: &CpuPlan, dtype: Dtype) -> Result<()> {
        if plan.storage != dtype {
            return Err(Error::invalid(
                "plan",
                format!("a plan of {dtype:?} weights (the buffers' type)"),
                format!("a plan of {:?} weights", plan.storage),
            ));
        }
        Ok(())
    }

    fn forward_f32(
        &self,
        plan: &CpuPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
        reserve: Option<&mut HostReserve<f32>>,
    ) -> Result<()> {
        with_kernels!(self.kernels, |k| {
            let s = self.forward_strategy(k, plan, shape, (&input, &output), reserve.is_some());
            self.run(k, Some(plan), s, |k| host::run_forward(k, &plan.host, shape, input, output, reserve))
        })
    }

    fn backward_f32(
        &self,
        plan: &CpuPlan,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        with_kernels!(self.kernels, |k| {
            let s = self.backward_strategy(k, plan, reserve, (&grads, &output));
            self.run(k, Some(plan), s, |k| host::run_backward(k, &plan.host, reserve, grads, output, mode))
        })
    }

    /// [`Backend::backward_step_deferred`] in f32 (the strategy that of a one-step backward).
    fn backward_step_f32(
        &self,
        plan: &CpuPlan,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        acc: &mut HostStepGrads<f32>,
    ) -> Result<()> {
        with_kernels!(self.kernels, |k| {
            let s = self.backward_strategy(k, plan, reserve, (&grads, &output));
            self.run(k, Some(plan), s, |k| host::run_backward_step(k, &plan.host, reserve, grads, output, acc))
        })
    }

    /// [`Backend::deferred_param_grads`] in f32, with the default strategy (the products'
    /// bits do not depend on it).
    fn deferred_params_f32(
        &self,
        plan: &CpuPlan,
        reserves: &[HostReserve<f32>],
        acc: HostStepGrads<f32>,
        dparams: &mut [f32],
        mode: GradMode,
    ) -> Result<()> {
        with_kernels!(self.kernels, |k| {
            let s = self.default_strategy_of(k);
            self.run(k, Some(plan), s, |k| host::run_deferred_params(k, &plan.host, reserves, acc, dparams, mode))
        })
    }
}

impl Backend<f32> for Cpu {
    type Buf = [f32];
    type Plan = CpuPlan;
    type Reserve = HostReserve<f32>;
    type StepGrads = HostStepGrads<f32>;

    fn name(&self) -> String {
        Cpu::name(self)
    }

    fn plan(&self, config: &RnnConfig, params: &[f32]) -> Result<CpuPlan> {
        crate::backend::check_options(&self.name(), config, OPTIONS)?;
        CpuPlan::new(config, params, self.kernels.packs_weights(), Dtype::F32, false)
    }

    fn update_plan(&self, plan: &mut CpuPlan, params: &[f32]) -> Result<()> {
        Self::check_storage(plan, Dtype::F32)?;
        plan.update(params)
    }

    fn read_params(&self, plan: &CpuPlan, params: &mut [f32]) -> Result<()> {
        Self::check_storage(plan, Dtype::F32)?;
        plan.host.read(params)
    }

    fn forward_inference(
        &self,
        plan: &CpuPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
    ) -> Result<()> {
        Self::check_storage(plan, Dtype::F32)?;
        self.forward_f32(plan, shape, input, output, None)
    }

    fn forward_training(
        &self,
        plan: &CpuPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [f32]>,
        output: ForwardOutput<'_, [f32]>,
        reserve: &mut HostReserve<f32>,
    ) -> Result<()> {
        Self::check_storage(plan, Dtype::F32)?;
        self.forward_f32(plan, shape, input, output, Some(reserve))
    }

    fn backward(
        &self,
        plan: &CpuPlan,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        Self::check_storage(plan, Dtype::F32)?;
        self.backward_f32(plan, reserve, grads, output, mode)
    }

    fn backward_step_deferred(
        &self,
        plan: &CpuPlan,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [f32]>,
        output: BackwardOutput<'_, [f32]>,
        acc: &mut HostStepGrads<f32>,
    ) -> Result<bool> {
        Self::check_storage(plan, Dtype::F32)?;
        self.backward_step_f32(plan, reserve, grads, output, acc).map(|()| true)
    }

    fn deferred_param_grads(
        &self,
        plan: &CpuPlan,
        reserves: &[HostReserve<f32>],
        acc: HostStepGrads<f32>,
        dparams: &mut [f32],
        mode: GradMode,
    ) -> Result<()> {
        Self::check_storage(plan, Dtype::F32)?;
        self.deferred_params_f32(plan, reserves, acc, dparams, mode)
    }
}

/// Whether `isa` has bf16 dot-product tiles on this CPU (`VDPBF16PS`: AVX-512 with AVX512_BF16
/// and AVX-512BW; `TDPBF16PS`: AMX): a bf16 plan then packs its weights in pairs of rows for
/// them.
fn dot_bf16(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(isa, Isa::Avx512 | Isa::Amx) && std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// The f32 buffers of 16-bit calls' boundaries (the widened inputs, the outputs before
/// rounding), kept per thread for its next call: fresh buffers of a call's size are fresh
/// pages, and their page faults were about 14 % of a bf16 LSTM call (`perf`, lstm-512-512-64-100
/// inference). At most [`SPARE_MAX`] are kept, so a thread holds at most that many buffers of
/// the largest calls it made. A buffer is handed out with whatever its last use left in it
/// (zeroing 13 MB of widened input and output was 3.7 % of the same call): each is written
/// whole before it is read, the inputs by their widening, the outputs by the f32 pass, which
/// overwrites its outputs (`BackwardOutput`'s contract; `tests/overwrite.rs` checks it on
/// buffers filled with NaN).
mod boundary {
    use std::cell::RefCell;

    /// Buffers kept per thread.
    pub(super) const SPARE_MAX: usize = 8;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }

    /// `n` values to be overwritten, in the smallest kept buffer that holds them (else a new
    /// one): a kept buffer's old values, zeros past them.
    pub(super) fn take(n: usize) -> Vec<f32> {
        let mut v = SPARE
            .with(|s| {
                let mut s = s.borrow_mut();
                let fit = s.iter().enumerate().filter(|(_, v)| v.capacity() >= n).min_by_key(|(_, v)| v.capacity()).map(|(i, _)| i);
                fit.map(|i| s.swap_remove(i))
            })
            .unwrap_or_default();
        v.truncate(n);
        v.resize(n, 0.0);
        v
    }

    /// Keeps `v` for a later [`take`] on this thread (drops it if [`SPARE_MAX`] are kept).
    pub(super) fn give(v: Vec<f32>) {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_MAX {
                s.push(v);
            }
        })
    }
}

/// An f32 buffer for the output `out` (to be overwritten), or `None`.
fn wide_out<T>(out: &Option<&mut [T]>) -> Option<Vec<f32>> {
    out.as_ref().map(|o| boundary::take(o.len()))
}

/// Conversions of a call's boundary with at least this many values are cut between the
/// threads (below, the hand-off costs more than the half of the work it saves).
const PAR_CONVERT_MIN: usize = 1 << 15;

impl Cpu {
    /// `f(src, dst)` on contiguous parts of both, one per thread of the pool (an elementwise
    /// conversion: the cut changes no bit); on the calling thread below [`PAR_CONVERT_MIN`]
    /// values. The 16-bit boundary of a call ran on the calling thread alone, while the other
    /// threads waited: 13 % of a bf16 lstm-512-512-64-100 inference call (`perf`).
    fn convert<S: Sync, D: Send>(&self, src: &[S], dst: &mut [D], f: fn(&[S], &mut [D])) {
        let n = src.len().min(dst.len());
        if self.threads < 2 || n < PAR_CONVERT_MIN {
            return f(&src[..n], &mut dst[..n]);
        }
        // Parts of whole cache lines of the narrower type.
        let part = n.div_ceil(self.threads).next_multiple_of(64);
        self.pool.install(|| {
            use rayon::prelude::*;
            dst[..n].par_chunks_mut(part).zip(src[..n].par_chunks(part)).for_each(|(d, s)| f(s, d));
        })
    }

    /// `src` widened to f32 (exactly), on the pool's threads.
    fn widen_par<T: HalfStorage>(&self, src: &[T]) -> Vec<f32> {
        let mut v = boundary::take(src.len());
        self.convert(src, &mut v, T::to_f32);
        v
    }

    /// `dst = wide`, each rounded to nearest (even) once, on the pool's threads; the buffer
    /// kept for the next call.
    fn narrow_into<T: HalfStorage>(&self, wide: Option<Vec<f32>>, dst: Option<&mut [T]>) {
        if let (Some(w), Some(d)) = (&wide, dst) {
            self.convert(w, d, T::from_f32);
        }
        if let Some(w) = wide {
            boundary::give(w);
        }
    }
}

/// The 16-bit storage types of the CPU backend: [`half::f16`] and [`half::bf16`].
trait HalfStorage: crate::Element {
    fn to_f32(src: &[Self], dst: &mut [f32]);
    fn from_f32(src: &[f32], dst: &mut [Self]);
}

impl HalfStorage for half::f16 {
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst)
    }
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src)
    }
}

/// bf16 conversions in loops the compiler vectorises for the widest ISA detected (`half`'s
/// slice conversions go one value at a time for bf16): widening is a shift, narrowing
/// `gemm::sgemm::bf16_bits` (`half`'s rounding, pinned by its test).
impl HalfStorage for half::bf16 {
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        fn each(src: &[half::bf16], dst: &mut [f32]) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f32::from_bits((s.to_bits() as u32) << 16);
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512(src: &[half::bf16], dst: &mut [f32]) {
                each(src, dst)
            }
            #[target_feature(enable = "avx2")]
            fn avx2(src: &[half::bf16], dst: &mut [f32]) {
                each(src, dst)
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F detected.
                return unsafe { avx512(src, dst) };
            }
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 detected.
                return unsafe { avx2(src, dst) };
            }
        }
        each(src, dst)
    }
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        fn each(src: &[f32], dst: &mut [half::bf16]) {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = half::bf16::from_bits(gemm::sgemm::bf16_bits(s) as u16);
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw")]
            fn avx512(src: &[f32], dst: &mut [half::bf16]) {
                each(src, dst)
            }
            #[target_feature(enable = "avx2")]
            fn avx2(src: &[f32], dst: &mut [half::bf16]) {
                each(src, dst)
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
                // SAFETY: AVX-512F and AVX-512BW detected.
                return unsafe { avx512(src, dst) };
            }
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 detected.
                return unsafe { avx2(src, dst) };
            }
        }
        each(src, dst)
    }
}

macro_rules! half_storage {
    ($t:ty) => {
        /// 16-bit storage (as PyTorch's `module.to(torch.bfloat16)` on the CPU, or cuDNN's
        /// half-precision data with f32 maths): 16-bit weights, inputs, outputs and gradients,
        /// the GEMMs' weight operands packed in 16 bits (half the bytes a per-step product
        /// streams) and widened exactly as the tiles load them; f32 accumulation, f32 cell
        /// maths, and f32 for everything a call keeps inside it (hidden and cell states, gates,
        /// the carried gradients, the weight-gradient accumulator), each result rounded once
        /// when it is stored into the caller's buffer. So a call gives exactly the f32
        /// backend's result on the widened inputs, rounded once; the error against the exact
        /// result is bounded as the CUDA backend's (`testkit::tolerance`), which also rounds
        /// the states it stores.
        impl Backend<$t> for Cpu {
            type Buf = [$t];
            type Plan = CpuPlan;
            type Reserve = HostReserve<f32>;
            type StepGrads = HostStepGrads<f32>;

            fn name(&self) -> String {
                Cpu::name(self)
            }

            fn plan(&self, config: &RnnConfig, params: &[$t]) -> Result<CpuPlan> {
                crate::backend::check_options(&self.name(), config, OPTIONS)?;
                let dtype = <$t as crate::Element>::DTYPE;
                CpuPlan::new(
                    config,
                    &self.widen_par(params),
                    self.kernels.packs_weights(),
                    dtype,
                    dtype == Dtype::BF16 && dot_bf16(self.isa()),
                )
            }

            fn update_plan(&self, plan: &mut CpuPlan, params: &[$t]) -> Result<()> {
                Self::check_storage(plan, <$t as crate::Element>::DTYPE)?;
                plan.update(&self.widen_par(params))
            }

            fn read_params(&self, plan: &CpuPlan, params: &mut [$t]) -> Result<()> {
                Self::check_storage(plan, <$t as crate::Element>::DTYPE)?;
                let mut wide = vec![0.0; params.len()];
                plan.host.read(&mut wide)?;
                <$t as HalfStorage>::from_f32(&wide, params);
                Ok(())
            }

            fn forward_inference(
                &self,
                plan: &CpuPlan,
                shape: &SeqShape,
                input: ForwardInput<'_, [$t]>,
                output: ForwardOutput<'_, [$t]>,
            ) -> Result<()> {
                self.forward_half(plan, shape, input, output, None)
            }

            fn forward_training(
                &self,
                plan: &CpuPlan,
                shape: &SeqShape,
                input: ForwardInput<'_, [$t]>,
                output: ForwardOutput<'_, [$t]>,
                reserve: &mut HostReserve<f32>,
            ) -> Result<()> {
                self.forward_half(plan, shape, input, output, Some(reserve))
            }

            fn backward(
                &self,
                plan: &CpuPlan,
                reserve: &HostReserve<f32>,
                grads: BackwardInput<'_, [$t]>,
                output: BackwardOutput<'_, [$t]>,
                mode: GradMode,
            ) -> Result<()> {
                self.backward_half(plan, reserve, grads, output, mode)
            }

            fn backward_step_deferred(
                &self,
                plan: &CpuPlan,
                reserve: &HostReserve<f32>,
                grads: BackwardInput<'_, [$t]>,
                output: BackwardOutput<'_, [$t]>,
                acc: &mut HostStepGrads<f32>,
            ) -> Result<bool> {
                Self::check_storage(plan, <$t as crate::Element>::DTYPE)?;
                self.widened_backward(grads, output, GradMode::Accumulate, |i, o| self.backward_step_f32(plan, reserve, i, o, acc))
                    .map(|()| true)
            }

            fn deferred_param_grads(
                &self,
                plan: &CpuPlan,
                reserves: &[HostReserve<f32>],
                acc: HostStepGrads<f32>,
                dparams: &mut [$t],
                mode: GradMode,
            ) -> Result<()> {
                Self::check_storage(plan, <$t as crate::Element>::DTYPE)?;
                // The f32 sums, rounded once into `dparams`.
                let mut wide = match mode {
                    GradMode::Accumulate => self.widen_par(dparams),
                    GradMode::Overwrite => boundary::take(dparams.len()),
                };
                let done = self.deferred_params_f32(plan, reserves, acc, &mut wide, mode);
                self.narrow_into(Some(wide), Some(dparams).filter(|_| done.is_ok()));
                done
            }
        }
    };
}

half_storage!(half::f16);
half_storage!(half::bf16);

impl Cpu {
    /// A forward pass of 16-bit storage: the f32 pass on the widened inputs, its outputs
    /// rounded once into the caller's.
    fn forward_half<T: HalfStorage>(
        &self,
        plan: &CpuPlan,
        shape: &SeqShape,
        input: ForwardInput<'_, [T]>,
        output: ForwardOutput<'_, [T]>,
        reserve: Option<&mut HostReserve<f32>>,
    ) -> Result<()> {
        Self::check_storage(plan, T::DTYPE)?;
        let (x, h0, c0) = (self.widen_par(input.x), input.h0.map(|v| self.widen_par(v)), input.c0.map(|v| self.widen_par(v)));
        let (mut y, mut hn, mut cn) = (boundary::take(output.y.len()), wide_out(&output.hn), wide_out(&output.cn));
        let wide_in = ForwardInput { x: &x[..], h0: h0.as_deref(), c0: c0.as_deref(), masks: input.masks };
        let wide_outs = ForwardOutput { y: &mut y[..], hn: hn.as_deref_mut(), cn: cn.as_deref_mut() };
        let done = self.forward_f32(plan, shape, wide_in, wide_outs, reserve);
        for (w, out) in [(Some(y), Some(output.y)), (hn, output.hn), (cn, output.cn)] {
            self.narrow_into(w, out.filter(|_| done.is_ok()));
        }
        for v in [Some(x), h0, c0].into_iter().flatten() {
            boundary::give(v);
        }
        done
    }

    /// A backward pass of 16-bit storage: the f32 pass on the widened gradients, its outputs
    /// rounded once into the caller's (with [`GradMode::Accumulate`], the caller's `dparams`
    /// widened, added to in f32, and rounded once).
    fn backward_half<T: HalfStorage>(
        &self,
        plan: &CpuPlan,
        reserve: &HostReserve<f32>,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        mode: GradMode,
    ) -> Result<()> {
        Self::check_storage(plan, T::DTYPE)?;
        self.widened_backward(grads, output, mode, |i, o| self.backward_f32(plan, reserve, i, o, mode))
    }

    /// A 16-bit backward call as `f`, its f32 twin: the inputs widened, the outputs (and with
    /// [`GradMode::Accumulate`] the parameters' gradients) in f32 buffers, rounded once into
    /// the caller's when `f` succeeds.
    fn widened_backward<T: HalfStorage>(
        &self,
        grads: BackwardInput<'_, [T]>,
        output: BackwardOutput<'_, [T]>,
        mode: GradMode,
        f: impl FnOnce(BackwardInput<'_, [f32]>, BackwardOutput<'_, [f32]>) -> Result<()>,
    ) -> Result<()> {
        let (dy, dhn, dcn) =
            (grads.dy.map(|v| self.widen_par(v)), grads.dhn.map(|v| self.widen_par(v)), grads.dcn.map(|v| self.widen_par(v)));
        let (mut dx, mut dh0, mut dc0) = (wide_out(&output.dx), wide_out(&output.dh0), wide_out(&output.dc0));
        let mut dparams = match (&output.dparams, mode) {
            (Some(d), GradMode::Accumulate) => Some(self.widen_par(d)),
            (d, _) => wide_out(d),
        };
        let wide_in = BackwardInput { dy: dy.as_deref(), dhn: dhn.as_deref(), dcn: dcn.as_deref() };
        let wide_outs =
            BackwardOutput { dx: dx.as_deref_mut(), dh0: dh0.as_deref_mut(), dc0: dc0.as_deref_mut(), dparams: dparams.as_deref_mut() };
        let done = f(wide_in, wide_outs);
        for (w, out) in [(dx, output.dx), (dh0, output.dh0), (dc0, output.dc0), (dparams, output.dparams)] {
            self.narrow_into(w, out.filter(|_| done.is_ok()));
        }
        for v in [dy, dhn, dcn].into_iter().flatten() {
            boundary::give(v);
        }
        done
    }
}

/// See `testkit::bench::time_sgemm`: `kind` is an ISA's name (`portable` for the scalar one),
/// with `-packed` for a packed `B`.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn bench_gemm(kind: &str, threads: usize, m: usize, k: usize, n: usize, a_transposed: bool, reps: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    // bf16 values for the pairs kind (its weights are bf16).
    let round = kind.ends_with("-bf16pairs");
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729) % 1000) as f32 / 1000.0)
        .map(|v| if round { half::bf16::from_f32(v).to_f32() } else { v })
        .collect();
    let mut c = vec![0.0f32; m * n];
    let am = if a_transposed { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
    let bm = Mat::new(&b, k, n);
    let (kind, pairs) = kind.strip_suffix("-bf16pairs").map_or((kind, false), |name| (name, true));
    let (name, packed) = kind.strip_suffix("-packed").map_or((kind, pairs), |name| (name, true));
    let isa: Isa = if name == "portable" { Isa::Scalar } else { name.parse().unwrap_or_else(|e| panic!("GEMM kind {kind:?}: {e}")) };
    let chosen = Chosen::detect(isa).unwrap_or_else(|| panic!("this CPU lacks {isa}"));
    let packed = packed.then(|| if pairs { gemm::packed::PackedWeight::pack_pairs(bm) } else { gemm::packed::PackedWeight::pack(bm) });
    let g = Gemm { packed: packed.as_ref(), ..Gemm::new(1.0, am, bm, 0.0) };
    let mut times = Vec::new();
    gemm::with_par(threads, |par| {
        let mut run = || with_kernels!(chosen, |isa| isa.weight_gemm(par, g, MatMut::new(&mut c, m, n)));
        run();
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            run();
            times.push(t.elapsed().as_secs_f64());
        }
    });
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// See `testkit::bench::team_handoff_ns`.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn bench_handoff(jobs: usize) -> f64 {
    let team = Team::new(2);
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
        let _stop = StopOnDrop(&team);
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
    #[cfg_attr(miri, ignore = "no unsafe code, and a million cases: hours under Miri")]
    fn blocks_are_whole_tiles_and_never_skinny() {
        let mut blockings = vec![<isa::Scalar as Kernels>::ROW_BLOCKING];
        #[cfg(target_arch = "x86_64")]
        blockings.extend([<isa::Avx2 as Kernels>::ROW_BLOCKING, <isa::Avx512 as Kernels>::ROW_BLOCKING]);
        #[cfg(target_arch = "aarch64")]
        blockings.push(<isa::Neon as Kernels>::ROW_BLOCKING);
        for b in blockings {
            for (min, tile) in [(b.forward_min, b.tile_rows), (b.backward_min, b.tile_rows)] {
                for parts in 1..=64 {
                    for rows in 0..3000 {
                        let b = cut_blocks(rows, parts, min, tile);
                        assert_eq!((b[0], *b.last().unwrap()), (0, rows));
                        assert!(b.len() - 1 <= parts.max(1));
                        if b.len() > 2 {
                            for w in b.windows(2) {
                                assert!(w[1] - w[0] >= gemm::sgemm::MR, "rows {rows}, parts {parts}, min {min}, tile {tile}: {b:?}");
                                assert_eq!(w[0] % tile, 0);
                            }
                        }
                    }
                }
            }
        }
    }
}
