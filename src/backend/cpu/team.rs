//! A team of threads kept spinning through a time loop, so that each step's small GEMM can be
//! split across cores for the price of a few cache-line transfers instead of a thread wake-up.
//!
//! With a small batch the recurrent product of one step takes a few microseconds, about what it
//! costs to hand a task to a sleeping thread. A team's helpers are started once per time loop
//! (as tasks of the backend's rayon pool) and spin between steps. Part `i` of every job goes to
//! helper `i` when it is there to take it, so each core keeps streaming the same slice of the
//! recurrent weights from its own L2 step after step.
//!
//! Parts are claimed, not assigned: the caller runs part 0, then claims and runs any part whose
//! helper has not taken it yet, so a job never waits on a helper that was not scheduled, and a
//! team whose helpers never started still finishes every job. Who runs a part never changes
//! what it computes.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Spins before a waiting thread starts yielding its core (for when threads outnumber cores).
const SPINS_BEFORE_YIELD: u32 = 1 << 12;

type Job<'a> = &'a (dyn Fn(usize) + Sync + 'a);

/// Shared state of one team.
pub(crate) struct Team {
    parts: usize,
    epoch: AtomicU64,
    /// Points at the caller's `Job` for the current epoch.
    job: AtomicPtr<()>,
    claimed: Vec<AtomicBool>,
    pending: AtomicUsize,
    stop: AtomicBool,
    poisoned: AtomicBool,
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
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            claimed: (0..parts).map(|_| AtomicBool::new(true)).collect(),
            pending: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
        }
    }

    /// How many parts a job is split into.
    pub(crate) fn parts(&self) -> usize {
        self.parts
    }

    /// Runs `f(0)`, …, `f(parts - 1)`, in parallel where helpers are ready; returns when all
    /// have finished. A panic in any part is re-raised here after all parts have finished.
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.parts == 1 {
            f(0);
            return;
        }
        let job: Job<'_> = f;
        self.poisoned.store(false, Ordering::Relaxed);
        self.job.store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        self.pending.store(self.parts - 1, Ordering::Relaxed);
        for c in &self.claimed[1..] {
            // Release: a helper that claims the part sees the job pointer written above.
            c.store(false, Ordering::Release);
        }
        self.epoch.fetch_add(1, Ordering::Release);
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        for i in 1..self.parts {
            if self.claim(i) {
                self.run_part(f, i);
            }
        }
        // The job (on this stack frame) must outlive every helper that claimed a part of it.
        wait_until(|| self.pending.load(Ordering::Acquire) == 0);
        self.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if self.poisoned.load(Ordering::Relaxed) {
            panic!("a part of a team job panicked");
        }
    }

    fn claim(&self, i: usize) -> bool {
        self.claimed[i].compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    fn run_part(&self, f: &(dyn Fn(usize) + Sync), i: usize) {
        if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
            self.poisoned.store(true, Ordering::Relaxed);
        }
        self.pending.fetch_sub(1, Ordering::Release);
    }

    /// The loop of helper `i` (1 ≤ i < parts): takes part `i` of each job until [`Team::stop`].
    pub(crate) fn helper(&self, i: usize) {
        let mut seen = 0;
        loop {
            let mut epoch = seen;
            wait_until(|| {
                epoch = self.epoch.load(Ordering::Acquire);
                epoch != seen || self.stop.load(Ordering::Acquire)
            });
            if epoch == seen {
                return; // stopped
            }
            seen = epoch;
            if i < self.parts && self.claim(i) {
                let p = self.job.load(Ordering::Relaxed) as *const Job<'_>;
                // SAFETY: the claim succeeded, so the caller of `run` published this job (the
                // Release store of `claimed[i]` ordered after the pointer) and is waiting for
                // `pending` to drop before its frame, which holds the job, goes away.
                let f: Job<'_> = unsafe { *p };
                self.run_part(f, i);
            }
        }
    }

    /// Tells the helpers to return once they have finished their current part.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
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

    #[test]
    fn every_part_runs_once_per_job() {
        for parts in 1..=4 {
            let counts: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
            with_team(parts, |team| {
                for _ in 0..2000 {
                    team.run(&|i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
            for c in &counts {
                assert_eq!(c.load(Ordering::Relaxed), 2000, "parts = {parts}");
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
