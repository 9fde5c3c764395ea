//! A team of threads kept spinning through a time loop, so that each step's small GEMM can be
//! split across cores for the price of a few cache-line transfers instead of a thread wake-up.
//!
//! With a small batch the recurrent product of one step takes a few microseconds, about what it
//! costs to hand a task to a sleeping thread. A team's helpers are started once per time loop
//! (as tasks of the backend's rayon pool) and spin between steps. Part `i` of every job goes to
//! helper `i`, so each core keeps streaming the same slice of the recurrent weights from its own
//! L2 step after step.
//!
//! The hand-off costs one cache-line transfer each way, a few hundred nanoseconds between two
//! cores that share no cache, less when they share an L3 (`cargo run --release --example
//! handoff` measures it). The caller publishes a job in one line (the job pointer, and
//! one word holding the epoch and the mask of helpers given a part); a helper spinning on that
//! line sees it, runs its part and reports in a line of its own, which the caller reads. Parts
//! go only to helpers that have announced themselves (each in a line it writes once), so a job
//! never waits on a helper that has not started: the caller runs every other part itself. Who
//! runs a part never changes what it computes. Helpers past the 32nd are never given a part.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// Spins before a waiting thread starts yielding its core (for when threads outnumber cores).
const SPINS_BEFORE_YIELD: u32 = 1 << 12;

/// Helpers that can be given parts (bits of the job word's mask).
const MAX_ASSIGNED: usize = 32;

type Job<'a> = &'a (dyn Fn(usize) + Sync + 'a);

/// A value alone in its cache line.
#[repr(align(64))]
#[derive(Default)]
struct Line<T>(T);

/// What the caller writes per job.
#[derive(Default)]
struct JobLine {
    /// `epoch << 32 | mask`: bit `i - 1` of the mask gives part `i` to helper `i`.
    word: AtomicU64,
    /// The caller's `Job` for the current epoch.
    job: AtomicPtr<()>,
    stop: AtomicBool,
}

/// Shared state of one team.
pub(crate) struct Team {
    parts: usize,
    job: Line<JobLine>,
    /// The caller's epoch counter (only the caller touches it).
    epoch: Line<AtomicU64>,
    /// Per helper: set once it spins for jobs, cleared when it leaves.
    alive: Vec<Line<AtomicBool>>,
    /// Per helper: the epoch of the last job whose part it finished.
    done: Vec<Line<AtomicU64>>,
    poisoned: Line<AtomicBool>,
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Team {
    /// A team of `parts` (at least 1): the caller and `parts - 1` helpers.
    pub(crate) fn new(parts: usize) -> Self {
        let parts = parts.max(1);
        Team {
            parts,
            job: Line::default(),
            epoch: Line::default(),
            alive: (0..parts).map(|_| Line::default()).collect(),
            done: (0..parts).map(|_| Line::default()).collect(),
            poisoned: Line::default(),
        }
    }

    /// How many helpers are spinning for jobs now.
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn alive_helpers(&self) -> usize {
        self.alive.iter().filter(|a| a.0.load(Ordering::Acquire)).count()
    }

    /// How many parts a job is split into.
    pub(crate) fn parts(&self) -> usize {
        self.parts
    }

    /// Waits until every helper that can be given a part spins for jobs, or `limit` has
    /// passed: before a job of few long parts, which would otherwise run on the caller alone
    /// if it came before the helpers had started (they start as tasks of the pool, tens of
    /// microseconds after the team). A helper that cannot start (a pool busy with other work)
    /// costs at most `limit`. Returns whether all of them are there.
    pub(crate) fn await_helpers(&self, limit: std::time::Duration) -> bool {
        let all = || (1..self.parts.min(MAX_ASSIGNED + 1)).all(|i| self.alive[i].0.load(Ordering::SeqCst));
        let start = std::time::Instant::now();
        wait_until(|| all() || start.elapsed() >= limit);
        all()
    }

    /// Runs `f(0)`, …, `f(parts - 1)`, in parallel where helpers are there; returns when all
    /// have finished. A panic in any part is re-raised here after all parts have finished.
    /// Jobs must not overlap: `run` is called by one thread, the team's caller.
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.parts == 1 {
            f(0);
            return;
        }
        let job: Job<'_> = f;
        let epoch = self.epoch.0.load(Ordering::Relaxed).wrapping_add(1) & 0xffff_ffff;
        let epoch = if epoch == 0 { 1 } else { epoch };
        self.epoch.0.store(epoch, Ordering::Relaxed);
        let mut mask = 0u64;
        for i in 1..self.parts.min(MAX_ASSIGNED + 1) {
            // SeqCst with the helper's announcement: a helper seen alive will see this job.
            if self.alive[i].0.load(Ordering::SeqCst) {
                mask |= 1 << (i - 1);
            }
        }
        self.poisoned.0.store(false, Ordering::Relaxed);
        self.job.0.job.store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        // Release: a helper that sees the word sees the job pointer written above.
        self.job.0.word.store(epoch << 32 | mask, Ordering::SeqCst);
        let mut first_panic = None;
        for i in 0..self.parts {
            if i == 0 || mask & (1 << (i - 1)) == 0 {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                    first_panic.get_or_insert(p);
                }
            }
        }
        // The job (on this stack frame) must outlive every helper running a part of it.
        for i in 1..self.parts {
            if mask & (1 << (i - 1)) != 0 {
                wait_until(|| self.done[i].0.load(Ordering::Acquire) == epoch);
            }
        }
        self.job.0.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Some(p) = first_panic {
            resume_unwind(p);
        }
        if self.poisoned.0.load(Ordering::Relaxed) {
            panic!("a part of a team job panicked");
        }
    }

    /// The loop of helper `i` (1 ≤ i < parts): runs part `i` of each job given to it until
    /// [`Team::stop`].
    pub(crate) fn helper(&self, i: usize) {
        if i == 0 || i >= self.parts {
            return;
        }
        self.alive[i].0.store(true, Ordering::SeqCst);
        // 0 is never a published word (epochs start at 1), so the first job seen is new.
        let mut seen = 0u64;
        loop {
            let mut word = seen;
            wait_until(|| {
                word = self.job.0.word.load(Ordering::SeqCst);
                word != seen || self.job.0.stop.load(Ordering::Acquire)
            });
            if word == seen {
                break; // stopped
            }
            seen = word;
            let (epoch, mask) = (word >> 32, word & 0xffff_ffff);
            if i <= MAX_ASSIGNED && mask & (1 << (i - 1)) != 0 {
                let p = self.job.0.job.load(Ordering::Relaxed) as *const Job<'_>;
                // SAFETY: the part was given to this helper, so the caller published this job
                // (the pointer before the word) and waits for `done[i]` to reach this epoch
                // before its frame, which holds the job, goes away.
                let f: Job<'_> = unsafe { *p };
                if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                    self.poisoned.0.store(true, Ordering::Relaxed);
                }
                self.done[i].0.store(epoch, Ordering::Release);
            }
        }
        self.alive[i].0.store(false, Ordering::SeqCst);
    }

    /// Tells the helpers to return once they have finished their current part.
    pub(crate) fn stop(&self) {
        self.job.0.stop.store(true, Ordering::Release);
    }
}

/// Stops a team when dropped, also on unwinding, so its helpers never outlive the loop.
pub(crate) struct StopOnDrop<'a>(pub &'a Team);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn with_team(parts: usize, body: impl FnOnce(&Team) + Send) {
        let team = Team::new(parts);
        std::thread::scope(|s| {
            for i in 1..parts {
                let team = &team;
                s.spawn(move || team.helper(i));
            }
            let _stop = StopOnDrop(&team);
            body(&team);
        });
    }

    /// Jobs per team (fewer under Miri, which runs every spin of the wait loops).
    const JOBS: u32 = if cfg!(miri) { 30 } else { 2000 };

    #[test]
    fn every_part_runs_once_per_job() {
        for parts in 1..=4 {
            let counts: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
            with_team(parts, |team| {
                for _ in 0..JOBS {
                    team.run(&|i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
            for c in &counts {
                assert_eq!(c.load(Ordering::Relaxed), JOBS, "parts = {parts}");
            }
        }
    }

    #[test]
    fn jobs_finish_without_helpers() {
        // No helper thread ever starts: the caller claims every part itself.
        let team = Team::new(3);
        let sum = AtomicU32::new(0);
        for _ in 0..10 {
            team.run(&|i| {
                sum.fetch_add(i as u32 + 1, Ordering::Relaxed);
            });
        }
        assert_eq!(sum.load(Ordering::Relaxed), 60);
    }

    /// `await_helpers` gives up at its limit when a helper never starts (and a job then runs on
    /// the caller), and returns once every helper spins, whose part then runs on it.
    #[test]
    fn awaiting_helpers_is_bounded_and_lets_each_take_its_part() {
        let team = Team::new(2);
        let start = std::time::Instant::now();
        assert!(!team.await_helpers(std::time::Duration::from_millis(5)));
        assert!(start.elapsed() >= std::time::Duration::from_millis(5));
        let caller = std::thread::current().id();
        let on_caller = AtomicU32::new(0);
        let mark = |_: usize| {
            if std::thread::current().id() == caller {
                on_caller.fetch_add(1, Ordering::Relaxed);
            }
        };
        team.run(&mark);
        assert_eq!(on_caller.load(Ordering::Relaxed), 2, "no helper: both parts on the caller");
        with_team(3, |team| {
            assert!(team.await_helpers(std::time::Duration::from_secs(60)));
            let caller = std::thread::current().id();
            let on_caller = AtomicU32::new(0);
            team.run(&|_| {
                if std::thread::current().id() == caller {
                    on_caller.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(on_caller.load(Ordering::Relaxed), 1, "each helper took its part");
        });
    }

    #[test]
    fn a_panicking_part_is_reported_to_the_caller() {
        with_team(2, |team| {
            let r = catch_unwind(AssertUnwindSafe(|| {
                team.run(&|i| {
                    if i == 1 {
                        panic!("part 1");
                    }
                })
            }));
            assert!(r.is_err());
            // The team still works afterwards.
            let n = AtomicU32::new(0);
            team.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 2);
        });
    }
}
