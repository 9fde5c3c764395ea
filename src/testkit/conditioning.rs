//! How well conditioned the reference's computation of a problem is at f32 precision, recorded
//! while it runs: the smallest distance of a pre-activation to a kink of its cell (a point where
//! the activation's derivative jumps: `±clip` of a gate clip, relu's 0), and the largest
//! amplification of rounding by a layer norm's row.
//!
//! - **Kinks.** An f32 backend rounds each pre-activation by about `√n · 2⁻²⁴ · Σ|terms|`; where
//!   the f64 reference's pre-activation lies closer than that to a kink, the two may take
//!   different sides of it, and their gradients then differ by a jump (a whole `dm` passed or
//!   stopped), not by rounding.
//! - **Layer norm.** A row's `x̂ = (x − μ)·rstd` carries the rounding of `x` (about
//!   `2⁻²⁴·max|x|` per value) times `rstd`: an amplification `rstd·max|x|` (none for a row of
//!   one value, whose `x − μ` is exactly 0), which the backward applies again to the gradients.
//!   It is large where a row's values nearly agree (a cell state of 2 units, the recurrent
//!   product of a projection to 1 unit). There an f32 backend's own rounding (its sums'
//!   order, its vector `exp` and `tanh`) shows far beyond the fixed tolerances, and beyond
//!   what the reference computing in f32 shows (it takes the rows' sums in f64).
//!
//! A parity test compares an f32 backend with the reference only where the problem is well
//! conditioned ([`Conditioning::is_good_for_f32`]), and draws the others again.

use std::cell::Cell;

/// The distance to a kink that a pre-activation of the f64 reference must keep for an f32
/// result to be compared with it. An f32 pre-activation of the tests' problems (sums of up to
/// 40 terms, inputs up to ±25, weights up to ±1) is off by up to a few 1e-6, and 1e-4 leaves a
/// margin over that; measured, 2 to 15 % of the clipped and relu problems of the property tests
/// come closer (the LSTM with a clip of 0.5 and inputs up to ±25 the most, with 4 gates per
/// unit) and are drawn again.
pub const KINK_MARGIN: f64 = 1e-4;

/// The largest amplification `rstd·max|x|` of a layer-norm row for an f32 result to be
/// compared with the reference. Measured over 600 draws of the layer-norm property test's
/// problems: 97 % at most 10, 1.5 % above 30; the two problems found where the CPU's error was
/// 50 to 60 times the f32 reference's own (LSTMs of 2 units) had 61 and 92.
pub const LN_AMPLIFICATION_LIMIT: f64 = 30.0;

thread_local! {
    /// The smallest kink distance and the largest layer-norm amplification seen by the innermost [`measure`]
    /// running on this thread; `None` outside one (the reference then records nothing).
    static SEEN: Cell<Option<Conditioning>> = const { Cell::new(None) };
}

/// What [`measure`] saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conditioning {
    /// The smallest distance of a pre-activation to a kink (`f64::INFINITY`: no relu, no clip).
    pub nearest_kink: f64,
    /// The largest `rstd·max|x|` of a layer-norm row of 2 values or more (0: none).
    pub ln_amplification: f64,
}

impl Conditioning {
    const NONE: Conditioning = Conditioning { nearest_kink: f64::INFINITY, ln_amplification: 0.0 };

    /// Both within their limits ([`KINK_MARGIN`], [`LN_AMPLIFICATION_LIMIT`]).
    pub fn is_good_for_f32(&self) -> bool {
        self.nearest_kink > KINK_MARGIN && self.ln_amplification <= LN_AMPLIFICATION_LIMIT
    }

    fn merge(self, o: Conditioning) -> Conditioning {
        Conditioning {
            nearest_kink: self.nearest_kink.min(o.nearest_kink),
            ln_amplification: self.ln_amplification.max(o.ln_amplification),
        }
    }
}

/// Runs `f` and returns its result with what the reference computed on this thread meanwhile.
/// The reference is single-threaded, so a run of it inside `f` is seen whole.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Conditioning) {
    let outer = SEEN.with(|n| n.replace(Some(Conditioning::NONE)));
    let r = f();
    let seen = SEEN.with(|n| n.replace(outer)).unwrap_or(Conditioning::NONE);
    if let Some(o) = outer {
        SEEN.with(|n| n.set(Some(o.merge(seen))));
    }
    (r, seen)
}

fn record(c: Conditioning) {
    SEEN.with(|n| {
        if let Some(m) = n.get() {
            n.set(Some(m.merge(c)));
        }
    });
}

/// Records a pre-activation's distance `d` to a kink (the reference's cells call this); a NaN
/// distance (a NaN pre-activation) counts as at the kink.
#[inline]
pub(crate) fn note_kink(d: f64) {
    record(Conditioning { nearest_kink: if d.is_nan() { 0.0 } else { d }, ln_amplification: 0.0 });
}

/// Records a layer-norm row's `rstd·max|x|` (the reference's layer norm calls this); NaN
/// counts as infinite.
#[inline]
pub(crate) fn note_ln_amplification(a: f64) {
    record(Conditioning { nearest_kink: f64::INFINITY, ln_amplification: if a.is_nan() { f64::INFINITY } else { a } });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_extremes_inside_measure_only() {
        note_kink(0.0);
        let ((), c) = measure(|| {
            note_kink(0.5);
            note_kink(0.25);
            note_ln_amplification(3.0);
            note_ln_amplification(2.0);
            note_kink(3.0);
        });
        assert_eq!(c, Conditioning { nearest_kink: 0.25, ln_amplification: 3.0 });
        assert!(c.is_good_for_f32());
        let ((), none) = measure(|| ());
        assert_eq!(none, Conditioning::NONE);
        let ((), nan) = measure(|| {
            note_kink(f64::NAN);
            note_ln_amplification(f64::NAN)
        });
        assert_eq!(nan, Conditioning { nearest_kink: 0.0, ln_amplification: f64::INFINITY });
        assert!(!nan.is_good_for_f32());
        assert!(!measure(|| note_ln_amplification(LN_AMPLIFICATION_LIMIT * 1.01)).1.is_good_for_f32());
    }

    #[test]
    fn an_inner_run_is_also_seen_by_the_outer() {
        let ((), outer) = measure(|| {
            note_kink(0.5);
            let ((), inner) = measure(|| note_kink(0.125));
            assert_eq!(inner.nearest_kink, 0.125);
        });
        assert_eq!(outer.nearest_kink, 0.125);
    }
}
