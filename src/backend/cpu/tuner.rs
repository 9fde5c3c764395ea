//! The plan-time tuner: how a plan's calls run on the pool, chosen by timing the choices on the
//! plan's own shapes (as FFTW's planner and cuDNN's algorithm search do).
//!
//! # What it chooses
//!
//! A [`Strategy`]: the threads a call runs on (all of the backend's, or fewer: a small batch
//! whose weights fit one core's cache can run faster on one thread than on two that meet every
//! step), the least rows of a block of the time loop's rows, forward and backward (each
//! block runs its steps on its own; below it, every step's products are split by columns across
//! the threads), and whether a pass runs the time loops of the two directions of a
//! bidirectional layer at once, one thread each (a small batch then pays no hand-off per step).
//! Each choice leaves every bit of every result unchanged: threads split GEMM outputs, batch rows and directions,
//! never a sum, and the blocks are whole GEMM tiles of at least two tiles' worth of rows, which
//! never take the skinny GEMM path (`cut_blocks`), while a direction on one thread takes the
//! GEMM path its rows take on any number of threads. So only these
//! choices may depend on timing; choices that change the summation order (the tile family, the
//! skinny path, the weight-gradient blocks) are fixed per ISA and shape.
//!
//! # When it runs
//!
//! On the first call of a pass (inference, training forward, backward) with a batch size the
//! process has not tuned for this CPU model, ISA, thread count and configuration: before the
//! call, each candidate runs the plan on scratch data with the call's own batch, options and
//! outputs, on as many of the call's steps as take about [`TRIAL_TARGET`] (at least one;
//! measured by warm-ups of the default on one step, then on the steps that sets), in rounds,
//! up to five while the next round fits in [`BUDGET`] (at least one round).
//! Each round runs the candidates in another order; the first round of several warms them up;
//! in the others each candidate's time is divided by the default's of the same round, and the
//! candidate with the least median ratio wins if it is [`MARGIN`] under 1, else the default
//! stays. The result is kept for the process (and in the file named by
//! `RNN_KERNELS_TUNE_FILE`, read at the first tuning and appended to, so later processes skip
//! the trials). [`tuning_records`] reports each tuning: the candidates' times and the time
//! spent. `RNN_KERNELS_TUNE=off` (or [`Tuning::Off`]) runs the default strategy, for benchmarks
//! that must not vary with timing; [`Tuning::Fixed`] runs a given one.

use super::{cut_blocks, Isa, RowBlocking};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A block minimum that never cuts the time loop's rows ([`Strategy::NEVER`]).
pub(crate) const NEVER: usize = usize::MAX;

/// The longest one tuning runs, unless its warm-up and first round of trials take longer (then
/// it stops after them).
pub const BUDGET: Duration = Duration::from_millis(50);

/// How much faster (as a fraction of its time) a candidate must be to replace the default.
pub const MARGIN: f64 = 0.02;

/// Rounds of trials at most.
const ROUNDS: usize = 5;

/// How long a trial should take: enough steps for the per-step costs to outweigh the call's
/// fixed ones (starting its threads), as in the call itself.
pub(crate) const TRIAL_TARGET: Duration = Duration::from_millis(4);

/// How a call runs on the CPU backend's pool. Every strategy gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Strategy {
    /// Threads the call runs on: 1 to the backend's [`threads`](super::Cpu::threads).
    pub threads: usize,
    /// The least rows of a block of the forward time loop, at least two of the ISA's GEMM tile
    /// rows; [`NEVER`](Self::NEVER) keeps all rows in one block (each step's products split by columns).
    pub forward_block_min: usize,
    /// As `forward_block_min`, for the backward time loop.
    pub backward_block_min: usize,
    /// A pass runs the time loops of the two directions of a bidirectional layer at once, each
    /// on one thread (with no synchronisation per step), instead of one after the other on all
    /// the call's threads (forward: each direction's input projection too, and with merge by
    /// sum the second direction's output is added onto the first's after both; backward: the
    /// parameter gradients and `dX` then follow, one direction after the other, on all
    /// threads). No effect on other layers.
    pub parallel_directions: bool,
}

impl Strategy {
    /// A block minimum that never cuts the time loop's rows.
    pub const NEVER: usize = NEVER;

    /// The fixed strategy of an ISA's `blocking` on `threads` threads (what [`Tuning::Off`]
    /// runs).
    pub(crate) fn default_for(blocking: RowBlocking, threads: usize) -> Strategy {
        Strategy { threads, forward_block_min: blocking.forward_min, backward_block_min: blocking.backward_min, parallel_directions: false }
    }

    /// The row blocking of this strategy for an ISA whose tiles have `tile_rows` rows.
    pub(crate) fn blocking(&self, tile_rows: usize) -> RowBlocking {
        RowBlocking { tile_rows, forward_min: self.forward_block_min, backward_min: self.backward_block_min }
    }

    /// Checks it for a backend of `threads` threads whose ISA's tiles have `tile_rows` rows.
    pub(crate) fn check(&self, threads: usize, tile_rows: usize) -> Result<()> {
        if !(1..=threads).contains(&self.threads) {
            return Err(Error::invalid("strategy.threads", format!("1 to the backend's {threads} threads"), self.threads));
        }
        for (arg, min) in [("strategy.forward_block_min", self.forward_block_min), ("strategy.backward_block_min", self.backward_block_min)]
        {
            if min < 2 * tile_rows {
                return Err(Error::invalid(
                    arg,
                    format!("at least {} (two of the ISA's {tile_rows}-row GEMM tiles), or NEVER", 2 * tile_rows),
                    min,
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let min = |m: usize| if m == NEVER { "never".to_string() } else { m.to_string() };
        write!(
            f,
            "threads={} forward_blocks={} backward_blocks={}{}",
            self.threads,
            min(self.forward_block_min),
            min(self.backward_block_min),
            if self.parallel_directions { " directions=parallel" } else { "" }
        )
    }
}

/// Whether and how the CPU backend tunes ([`Cpu::set_tuning`](super::Cpu::set_tuning)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tuning {
    /// Time the candidates on the first call of each pass and batch size (the default).
    #[default]
    Auto,
    /// The ISA's fixed strategy on all the backend's threads: no timing at all.
    Off,
    /// This strategy for every call (checked by `set_tuning`).
    Fixed(Strategy),
}

impl Tuning {
    /// `RNN_KERNELS_TUNE`: `auto` (or unset) or `off`.
    pub fn from_env() -> Result<Tuning> {
        match std::env::var("RNN_KERNELS_TUNE") {
            Err(_) => Ok(Tuning::Auto),
            Ok(v) => match v.as_str() {
                "auto" | "on" | "1" => Ok(Tuning::Auto),
                "off" | "0" => Ok(Tuning::Off),
                _ => Err(Error::invalid("RNN_KERNELS_TUNE", "auto or off", format!("{v:?}"))),
            },
        }
    }
}

/// The pass a strategy is tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunedPass {
    /// `forward_inference`.
    Inference,
    /// `forward_training`.
    Training,
    /// `backward`.
    Backward,
}

impl TunedPass {
    fn name(self) -> &'static str {
        match self {
            TunedPass::Inference => "inference",
            TunedPass::Training => "training",
            TunedPass::Backward => "backward",
        }
    }
}

/// One tuning: what was tried and what was chosen.
#[derive(Debug, Clone)]
pub struct TuneRecord {
    /// What the choice is kept under: the CPU model, the ISA, the backend's threads, the
    /// configuration, the pass and the batch size.
    pub key: String,
    /// The pass.
    pub pass: TunedPass,
    /// The batch size.
    pub batch: usize,
    /// The strategy chosen.
    pub chosen: Strategy,
    /// The fixed strategy ([`Tuning::Off`]'s), always the first candidate.
    pub default: Strategy,
    /// Each candidate with the least of its trials' times, in seconds.
    pub trials: Vec<(Strategy, f64)>,
    /// Steps of each trial.
    pub trial_steps: usize,
    /// Wall time of the whole tuning (trials and the warm-up), in seconds.
    pub seconds: f64,
}

#[derive(Default)]
struct Cache {
    chosen: HashMap<String, Strategy>,
    records: Vec<TuneRecord>,
    file_read: bool,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    cache().lock().unwrap_or_else(|e| e.into_inner())
}

/// Every tuning this process ran, in order.
pub fn tuning_records() -> Vec<TuneRecord> {
    lock().records.clone()
}

/// The strategies a plan's calls ran with, per (ISA, backend threads, pass, batch): the calls
/// after the first find theirs here, without formatting the process-wide key or allocating.
#[derive(Debug, Default)]
pub(crate) struct PlanChoices(Mutex<Vec<(ChoiceKey, Strategy)>>);

/// What a plan's choice depends on: the ISA, the backend's threads, the pass, the batch.
type ChoiceKey = (Isa, usize, TunedPass, usize);

/// Entries a plan keeps at most (a loop over many batch sizes starts again from the
/// process-wide choices, which stay).
const PLAN_CHOICES: usize = 64;

impl Clone for PlanChoices {
    fn clone(&self) -> Self {
        PlanChoices(Mutex::new(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()))
    }
}

impl PlanChoices {
    pub(crate) fn get(&self, isa: Isa, threads: usize, pass: TunedPass, batch: usize) -> Option<Strategy> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().find(|e| e.0 == (isa, threads, pass, batch)).map(|e| e.1)
    }

    pub(crate) fn put(&self, isa: Isa, threads: usize, pass: TunedPass, batch: usize, s: Strategy) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= PLAN_CHOICES {
            v.clear();
        }
        v.push(((isa, threads, pass, batch), s));
    }
}

/// The CPU's model name (`/proc/cpuinfo`), or the architecture where it cannot be read.
pub(crate) fn cpu_model() -> &'static str {
    static MODEL: OnceLock<String> = OnceLock::new();
    MODEL.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name") || l.starts_with("Model") || l.starts_with("CPU part"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string())
    })
}

/// The key of a choice.
pub(crate) fn key(isa: &str, storage: crate::Dtype, threads: usize, config: &crate::RnnConfig, pass: TunedPass, batch: usize) -> String {
    // A 16-bit plan's products read other panels: its own choices (f32 keys are as before).
    let isa = match storage {
        crate::Dtype::F32 => isa.to_string(),
        s => format!("{isa} {s:?}"),
    };
    // One line: the file keeps one choice per line, tab-separated.
    format!("{} | {isa} | threads {threads} | {config:?} | {} | batch {batch}", cpu_model(), pass.name()).replace(['\t', '\n'], " ")
}

/// The choice kept under `key`, if any (reading the tuning file first, once).
pub(crate) fn lookup(key: &str) -> Option<Strategy> {
    let mut c = lock();
    if !c.file_read {
        c.file_read = true;
        if let Some(text) = tune_file().and_then(|p| std::fs::read_to_string(p).ok()) {
            for line in text.lines() {
                if let Some((k, s)) = parse_line(line) {
                    c.chosen.entry(k).or_insert(s);
                }
            }
        }
    }
    c.chosen.get(key).copied()
}

/// Keeps `record`'s choice (the first kept for a key wins, so that concurrent tunings of one
/// key agree) and returns the choice kept.
pub(crate) fn keep(record: TuneRecord) -> Strategy {
    let mut c = lock();
    let kept = *c.chosen.entry(record.key.clone()).or_insert(record.chosen);
    if kept == record.chosen {
        if let Some(path) = tune_file() {
            // A file that cannot be written costs only the trials of the next process.
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{}", format_line(&record.key, &record.chosen));
            }
        }
    }
    c.records.push(record);
    kept
}

fn tune_file() -> Option<std::path::PathBuf> {
    std::env::var_os("RNN_KERNELS_TUNE_FILE").filter(|p| !p.is_empty()).map(Into::into)
}

/// The tuning file's tag: v2 added the directions (a v1 line is ignored, and tuned again).
const FILE_TAG: &str = "rnn-kernels-tune-v2";

fn format_line(key: &str, s: &Strategy) -> String {
    let min = |m: usize| if m == NEVER { "never".to_string() } else { m.to_string() };
    let dirs = if s.parallel_directions { "parallel" } else { "serial" };
    format!("{FILE_TAG}\t{key}\t{}\t{}\t{}\t{dirs}", s.threads, min(s.forward_block_min), min(s.backward_block_min))
}

fn parse_line(line: &str) -> Option<(String, Strategy)> {
    let mut f = line.split('\t');
    if f.next()? != FILE_TAG {
        return None;
    }
    let key = f.next()?.to_string();
    let min = |v: &str| if v == "never" { Some(NEVER) } else { v.parse().ok() };
    let threads = f.next()?.parse().ok()?;
    let (forward_block_min, backward_block_min) = (min(f.next()?)?, min(f.next()?)?);
    let parallel_directions = match f.next()? {
        "parallel" => true,
        "serial" => false,
        _ => return None,
    };
    f.next().is_none().then_some((key, Strategy { threads, forward_block_min, backward_block_min, parallel_directions }))
}

/// The candidates for `pass` with a batch of `batch` rows: the default first, then one thread,
/// then on the default's threads each block minimum (the default's, blocks whenever they fit,
/// never) whose cut of the batch differs from those before it, then for a plan whose layers
/// have two directions (`two_directions`, concatenated or merged by sum) the default with its
/// directions at once.
pub(crate) fn candidates(default: Strategy, tile_rows: usize, pass: TunedPass, batch: usize, two_directions: bool) -> Vec<Strategy> {
    let mut out = vec![default];
    if default.threads > 1 {
        out.push(Strategy { threads: 1, ..default });
    }
    let mut cuts = vec![(default.threads, pass_cut(&default, tile_rows, pass, batch))];
    if default.threads > 1 {
        for min in [2 * tile_rows, NEVER] {
            let s = match pass {
                TunedPass::Backward => Strategy { backward_block_min: min, ..default },
                _ => Strategy { forward_block_min: min, ..default },
            };
            let cut = (s.threads, pass_cut(&s, tile_rows, pass, batch));
            if !cuts.contains(&cut) {
                cuts.push(cut);
                out.push(s);
            }
        }
        if two_directions {
            out.push(Strategy { parallel_directions: true, ..default });
        }
    }
    out
}

fn pass_cut(s: &Strategy, tile_rows: usize, pass: TunedPass, batch: usize) -> Vec<usize> {
    let min = if pass == TunedPass::Backward { s.backward_block_min } else { s.forward_block_min };
    cut_blocks(batch, s.threads, min, tile_rows)
}

/// Times `candidates` (the default first) with `trial`, which runs one on the plan's shapes for
/// the steps it is given (at most `max_steps`): a warm-up of the default on one step, which
/// sets the trials' steps (as many as take about [`TRIAL_TARGET`], at least one); if more, a
/// warm-up on those, whose time per step sets them again (up only: the first step of a plan
/// pays one-time costs, such as packing the backward weights, which make it read slow), with
/// one more warm-up if they grew; then rounds of one trial each, up to [`ROUNDS`] rounds, a round
/// after the first only if it would end within [`BUDGET`] (at the last round's duration). A
/// warm-up on one step first, not several: where one step takes milliseconds (a 2-thread
/// `lstm-512-512-64` backward step took 3 ms on a Zen 4 VM), a warm-up of four steps and trials
/// of at least four made one tuning take 94 ms. Returns the fastest (the default unless another is
/// [`MARGIN`] faster), each candidate's least time, and the trials' steps. A candidate whose
/// trial fails is dropped; if the default's fails, the default is returned untimed.
pub(crate) fn pick(
    candidates: &[Strategy],
    max_steps: usize,
    mut trial: impl FnMut(Strategy, usize) -> Result<Duration>,
) -> (Strategy, Vec<(Strategy, f64)>, usize) {
    let start = Instant::now();
    let default = candidates[0];
    let mut best: Vec<Option<f64>> = vec![None; candidates.len()];
    // Each round's time of each candidate (`None`: failed).
    let mut rounds: Vec<Vec<Option<f64>>> = Vec::new();
    let mut failed = vec![false; candidates.len()];
    // The steps that take about the target time, by a warm-up's time on `n` steps.
    let max_steps = max_steps.max(1);
    let fit = |t: Duration, n: usize| {
        let per_step = t.as_secs_f64() / n as f64;
        if per_step > 0.0 {
            ((TRIAL_TARGET.as_secs_f64() / per_step).ceil() as usize).clamp(1, max_steps)
        } else {
            // A clock that read nothing: no grounds to grow the trials.
            n.min(max_steps)
        }
    };
    let Ok(warm) = trial(default, 1) else {
        return (default, Vec::new(), 1);
    };
    let mut steps = fit(warm, 1);
    if steps > 1 {
        let Ok(warm) = trial(default, steps) else {
            return (default, Vec::new(), steps);
        };
        let more = fit(warm, steps);
        if more > steps {
            steps = more;
            if trial(default, steps).is_err() {
                return (default, Vec::new(), steps);
            }
        }
    }
    let mut last_round = Duration::ZERO;
    for round in 0..ROUNDS {
        if round > 0 && start.elapsed() + last_round > BUDGET {
            break;
        }
        let round_start = Instant::now();
        let mut this_round = vec![None; candidates.len()];
        // Each round in another order (the default last in the first round, first in the next):
        // a trial at a given place in the run can be slow on some machines (the second round's
        // first trial here, about 1.5× on a 2-core Intel Xeon VM), and a fixed order would put
        // the same candidate there every round.
        let nc = candidates.len();
        for i in (0..nc).rev().map(|j| (j + round) % nc) {
            let s = candidates[i];
            if failed[i] {
                continue;
            }
            match trial(s, steps) {
                Ok(t) => {
                    let t = t.as_secs_f64();
                    best[i] = Some(best[i].map_or(t, |b: f64| b.min(t)));
                    this_round[i] = Some(t);
                }
                Err(_) => failed[i] = true,
            }
        }
        rounds.push(this_round);
        last_round = round_start.elapsed();
    }
    let times: Vec<(Strategy, f64)> = candidates.iter().zip(&best).filter_map(|(&s, t)| t.map(|t| (s, t))).collect();
    (candidates[choose(&rounds)], times, steps)
}

/// The index of the candidate chosen from each round's times (the default first, `None`
/// where a trial failed): the one whose times over the default's, paired round by round, have
/// the least upper median, if that is under `1 -` [`MARGIN`]; else the default (0). The first
/// round only warms each candidate up where later rounds follow. Each trial is paired with the
/// default's of the same round, milliseconds apart, and the median of the ratios is taken (the
/// upper one: a challenger must win most rounds), so a burst of load that slows one
/// candidate's trials in a round or two does not decide. The least time of each did: on a
/// 2-core Intel Xeon VM, whose first round ran the default up to 2.5× slower than the later
/// ones, it picked in about one tuning in five the strategy that was 18 % slower on the whole
/// `lstm-512-512-64-100` bf16 call.
fn choose(rounds: &[Vec<Option<f64>>]) -> usize {
    let timed = if rounds.len() > 1 { &rounds[1..] } else { rounds };
    let score = |i: usize| {
        let mut ratios: Vec<f64> = timed.iter().filter_map(|r| Some(r.get(i).copied()?? / r.first().copied()??)).collect();
        if ratios.is_empty() {
            return f64::INFINITY;
        }
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    };
    let n = rounds.first().map_or(0, Vec::len);
    let (best, ratio) = (1..n).map(|i| (i, score(i))).fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    if ratio < 1.0 - MARGIN {
        best
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCKING: RowBlocking = RowBlocking { tile_rows: 6, forward_min: 96, backward_min: 16 };

    fn s(threads: usize, f: usize, b: usize) -> Strategy {
        Strategy { threads, forward_block_min: f, backward_block_min: b, parallel_directions: false }
    }

    #[test]
    fn candidates_are_distinct_cuts_default_first() {
        let d = Strategy::default_for(BLOCKING, 2);
        // 64 rows forward: the default (96) does not cut, 12 does, never = the default's cut.
        assert_eq!(candidates(d, 6, TunedPass::Inference, 64, false), vec![d, s(1, 96, 16), s(2, 12, 16)]);
        // 200 rows: the default cuts as 12 does; never differs.
        assert_eq!(candidates(d, 6, TunedPass::Training, 200, false), vec![d, s(1, 96, 16), s(2, NEVER, 16)]);
        // Backward, 64 rows: the default (16) cuts like 12; never differs.
        assert_eq!(candidates(d, 6, TunedPass::Backward, 64, false), vec![d, s(1, 96, 16), s(2, 96, NEVER)]);
        // Two directions: every pass tries them at once too.
        let both = Strategy { parallel_directions: true, ..d };
        assert_eq!(candidates(d, 6, TunedPass::Inference, 64, true), vec![d, s(1, 96, 16), s(2, 12, 16), both]);
        assert_eq!(candidates(d, 6, TunedPass::Training, 1, true), vec![d, s(1, 96, 16), both]);
        assert_eq!(candidates(d, 6, TunedPass::Backward, 64, true), vec![d, s(1, 96, 16), s(2, 96, NEVER), both]);
        // One row: only the thread count differs.
        assert_eq!(candidates(d, 6, TunedPass::Backward, 1, false), vec![d, s(1, 96, 16)]);
        // One thread: nothing to choose.
        assert_eq!(candidates(Strategy::default_for(BLOCKING, 1), 6, TunedPass::Inference, 64, true).len(), 1);
        // Every candidate passes the check.
        for c in candidates(d, 6, TunedPass::Inference, 64, true) {
            c.check(2, 6).unwrap();
        }
    }

    #[test]
    fn pick_takes_the_fastest_but_keeps_the_default_within_the_margin() {
        let (d, a, b) = (s(2, 96, 16), s(1, 96, 16), s(2, 12, 16));
        let timed = |times: [f64; 3]| {
            move |x: Strategy, _: usize| -> Result<Duration> {
                let i = [d, a, b].iter().position(|&c| c == x).unwrap();
                Ok(Duration::from_secs_f64(times[i]))
            }
        };
        assert_eq!(pick(&[d, a, b], 100, timed([1e-3, 0.5e-3, 0.9e-3])).0, a);
        assert_eq!(pick(&[d, a, b], 100, timed([1e-3, 2e-3, 0.9e-3])).0, b);
        // 1 % faster: within the margin, the default stays.
        assert_eq!(pick(&[d, a, b], 100, timed([1e-3, 0.99e-3, 1.5e-3])).0, d);
        let (_, times, _) = pick(&[d, a, b], 100, timed([1e-3, 2e-3, 3e-3]));
        assert_eq!(times.len(), 3);
    }

    #[test]
    #[cfg_attr(miri, ignore = "timing: the interpreter's slowness would end rounds early")]
    fn pick_drops_failing_candidates_and_stops_at_the_budget() {
        let (d, a) = (s(2, 96, 16), s(1, 96, 16));
        let (chosen, times, _) =
            pick(&[d, a], 100, |x, _| if x == a { Err(Error::invalid("x", "y", "z")) } else { Ok(Duration::from_millis(1)) });
        assert_eq!((chosen, times.len()), (d, 1));
        // The default failing: the default, untimed.
        let (chosen, times, _) = pick(&[d, a], 100, |x, _| if x == d { Err(Error::invalid("x", "y", "z")) } else { Ok(Duration::ZERO) });
        assert_eq!((chosen, times.len()), (d, 0));
        // Trials slower than the budget: one round after the warm-up, no more.
        let mut calls = 0;
        pick(&[d, a], 4, |_, _| {
            calls += 1;
            std::thread::sleep(BUDGET / 2);
            Ok(BUDGET / 2)
        });
        assert_eq!(calls, 3);
        // Rounds of half the budget after a warm-up of a quarter: a second round would end past
        // it (though it would start within it), so one round.
        let mut calls = 0;
        pick(&[d, a], 4, |_, _| {
            calls += 1;
            std::thread::sleep(BUDGET / 4);
            Ok(BUDGET / 4)
        });
        assert_eq!(calls, 3);
        // Fast trials: two warm-ups (one step, then the trials' four), five rounds.
        let mut calls = 0;
        pick(&[d, a], 4, |_, _| {
            calls += 1;
            Ok(Duration::from_micros(1))
        });
        assert_eq!(calls, 2 + 2 * ROUNDS);
    }

    #[test]
    fn choose_pairs_the_rounds_and_needs_most_of_them() {
        // Each round: the default's time, then each challenger's.
        let r = |t: &[f64]| t.iter().map(|&x| Some(x)).collect::<Vec<_>>();
        // The first round of several only warms up: a challenger that wins only there (against
        // a cold default) is not chosen; alone, it decides.
        let cold = r(&[2.5, 1.0, 1.0]);
        assert_eq!(choose(&[cold.clone(), r(&[1.0, 1.0, 1.0]), r(&[1.0, 1.0, 1.0])]), 0);
        assert_eq!(choose(std::slice::from_ref(&cold)), 1);
        // Challenger 1 has the least time (0.5 against a default slowed by a burst in round
        // 1), but is no faster in the other rounds: the default stays.
        assert_eq!(choose(&[cold.clone(), r(&[2.0, 0.5, 1.0]), r(&[1.0, 1.05, 1.05]), r(&[1.1, 1.1, 1.1])]), 0);
        // Faster by 10 % in two rounds of three: chosen, whatever the machine's speed did.
        assert_eq!(choose(&[cold.clone(), r(&[1.0, 0.9, 1.0]), r(&[2.0, 1.8, 2.1]), r(&[1.2, 1.3, 1.2])]), 1);
        // Of two challengers, the one with the smaller median ratio.
        assert_eq!(choose(&[cold.clone(), r(&[1.0, 0.9, 0.8]), r(&[1.0, 0.8, 0.7]), r(&[1.0, 0.9, 0.9])]), 2);
        // Faster in one round of two: not most, the default stays.
        assert_eq!(choose(&[cold.clone(), r(&[1.0, 0.5]), r(&[1.0, 1.1])]), 0);
        // Within the margin: the default.
        assert_eq!(choose(&[cold.clone(), r(&[1.0, 0.99]), r(&[1.0, 0.99])]), 0);
        // A failed trial (`None`) is left out of the pairs: a challenger that failed every
        // round is never chosen, nor paired with a default that failed.
        let (s, f) = (Some(1.0), Some(0.5));
        assert_eq!(choose(&[cold.clone(), vec![s, f, None], vec![s, f, None]]), 1);
        assert_eq!(choose(&[cold, vec![None, Some(0.1)], vec![s, s]]), 0);
        assert_eq!(choose(&[r(&[1.0])]), 0);
    }

    #[test]
    fn trials_run_the_steps_that_take_the_target_time() {
        let (d, a) = (s(2, 96, 16), s(1, 96, 16));
        // 10 µs a step: 400 steps take the 4 ms target.
        for (max, want) in [(1000, 400), (100, 100), (3, 3)] {
            let mut seen = Vec::new();
            let (_, _, steps) = pick(&[d, a], max, |_, n| {
                seen.push(n);
                Ok(Duration::from_micros(10 * n as u64))
            });
            assert_eq!(steps, want);
            // The warm-up on one step, again on the trials' steps, then the rounds.
            assert_eq!(seen[0], 1);
            assert!(seen[1..].iter().all(|&n| n == want), "{seen:?}");
        }
        // The first step pays a one-time cost (1 ms): it asks for 4 steps, whose warm-up reads
        // 10 µs a step, so 400, warmed up again.
        let mut seen = Vec::new();
        let (_, _, steps) = pick(&[d, a], 1000, |_, n| {
            seen.push(n);
            Ok(Duration::from_micros(10 * n as u64 + if seen.len() == 1 { 1000 } else { 0 }))
        });
        assert_eq!(steps, 400);
        assert_eq!(seen[..3], [1, 4, 400]);
        assert!(seen[3..].iter().all(|&n| n == 400), "{seen:?}");
        // 3 ms a step: two steps a trial (not four), so that a tuning of such a plan (a
        // 2-thread lstm-512-512-64 backward on a Zen 4 VM) stays near the budget.
        let mut seen = Vec::new();
        let (_, _, steps) = pick(&[d, a], 100, |_, n| {
            seen.push(n);
            Ok(Duration::from_micros(3000 * n as u64))
        });
        assert_eq!(steps, 2);
        assert_eq!(seen[..2], [1, 2]);
        assert!(seen[2..].iter().all(|&n| n == 2), "{seen:?}");
    }

    #[test]
    fn strategies_are_checked() {
        assert!(s(0, 96, 16).check(2, 6).unwrap_err().to_string().contains("strategy.threads"));
        assert!(s(3, 96, 16).check(2, 6).unwrap_err().to_string().contains("strategy.threads"));
        assert!(s(2, 11, 16).check(2, 6).unwrap_err().to_string().contains("strategy.forward_block_min"));
        assert!(s(2, 96, 8).check(2, 6).unwrap_err().to_string().contains("strategy.backward_block_min"));
        s(2, NEVER, NEVER).check(2, 6).unwrap();
    }

    #[test]
    fn file_lines_round_trip() {
        for st in [s(2, 96, 16), s(1, NEVER, 12)] {
            let line = format_line("a key | with spaces", &st);
            assert_eq!(parse_line(&line), Some(("a key | with spaces".to_string(), st)));
        }
        assert_eq!(parse_line("other\tk\t1\t2\t3"), None);
        assert_eq!(parse_line(&format!("{FILE_TAG}\tk\t1\t2")), None);
        assert_eq!(parse_line(&format!("{FILE_TAG}\tk\tx\t2\t3")), None);
    }
}
