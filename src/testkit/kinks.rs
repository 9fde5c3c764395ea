//! How close the reference came to a kink of its cells: the smallest distance of a
//! pre-activation to a point where its activation's derivative jumps (`±clip` of a gate clip,
//! relu's 0), over everything the reference computes inside [`nearest`].
//!
//! An f32 backend rounds each pre-activation by about `√n · 2⁻²⁴ · Σ|terms|`; where the f64
//! reference's pre-activation lies closer than that to a kink, the two may take different sides
//! of it, and their gradients then differ by a jump (a whole `dm` passed or stopped), not by
//! rounding. A parity test compares them only where the problem is well conditioned, and draws
//! the others again (`tests/common/parity.rs`, `KINK_MARGIN`).

use std::cell::Cell;

/// The distance to a kink that a pre-activation of the f64 reference must keep for an f32
/// result to be compared with it. An f32 pre-activation of the tests' problems (sums of up to
/// 40 terms, inputs up to ±25, weights up to ±1) is off by up to a few 1e-6, and 1e-4 leaves a
/// margin over that; measured, 2 to 15 % of the clipped and relu problems of the property tests
/// come closer (the LSTM with a clip of 0.5 and inputs up to ±25 the most, with 4 gates per
/// unit) and are drawn again.
pub const KINK_MARGIN: f64 = 1e-4;

thread_local! {
    /// The smallest distance seen by the innermost [`nearest`] running on this thread; `None`
    /// outside one (the reference then records nothing).
    static NEAREST: Cell<Option<f64>> = const { Cell::new(None) };
}

/// Runs `f` and returns its result with the smallest distance of a pre-activation to a kink
/// that the reference computed on this thread meanwhile (`f64::INFINITY` if none: no relu, no
/// clip). The reference is single-threaded, so a run of it inside `f` is seen whole.
pub fn nearest<R>(f: impl FnOnce() -> R) -> (R, f64) {
    let outer = NEAREST.with(|n| n.replace(Some(f64::INFINITY)));
    let r = f();
    let seen = NEAREST.with(|n| n.replace(outer)).unwrap_or(f64::INFINITY);
    if let Some(o) = outer {
        NEAREST.with(|n| n.set(Some(o.min(seen))));
    }
    (r, seen)
}

/// Records a pre-activation's distance `d` to a kink (the reference's cells call this).
#[inline]
pub(crate) fn note(d: f64) {
    NEAREST.with(|n| {
        if let Some(m) = n.get() {
            // A NaN distance (a NaN pre-activation) counts as at the kink.
            n.set(Some(m.min(if d.is_nan() { 0.0 } else { d })));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_smallest_distance_inside_nearest_only() {
        note(0.0);
        let ((), d) = nearest(|| {
            note(0.5);
            note(0.25);
            note(3.0);
        });
        assert_eq!(d, 0.25);
        let ((), none) = nearest(|| ());
        assert_eq!(none, f64::INFINITY);
        let ((), nan) = nearest(|| note(f64::NAN));
        assert_eq!(nan, 0.0);
    }

    #[test]
    fn an_inner_run_is_also_seen_by_the_outer() {
        let ((), outer) = nearest(|| {
            note(0.5);
            let ((), inner) = nearest(|| note(0.125));
            assert_eq!(inner, 0.125);
        });
        assert_eq!(outer, 0.125);
    }
}
