//! Checks shared by the ISAs' vector-function tests (`isa/*/math.rs`).

/// `tanh_sech2`'s results on `xs` (`taus`, `ds`) against the ISA's `tanh` on the same points
/// (`tanhs`) and f64: `τ` bit for bit `tanh`'s; `1 - τ²` within 3.5e-7 relative of `1/cosh²(x)`
/// wherever that is at least `4e^-87`, in `[0, 4e^-87]` beyond; NaN in gives NaN out.
pub(crate) fn check_tanh_sech2(xs: &[f32], taus: &[f32], ds: &[f32], tanhs: &[f32]) {
    let floor = 4.0 * (-87.0f64).exp();
    let mut worst: (f64, f32) = (0.0, 0.0);
    for ((&x, (&t, &d)), &t0) in xs.iter().zip(taus.iter().zip(ds)).zip(tanhs) {
        if x.is_nan() {
            assert!(t.is_nan() && d.is_nan(), "NaN in must give NaN out");
            continue;
        }
        assert_eq!(t.to_bits(), t0.to_bits(), "tanh_sech2({x}).0 = {t}, tanh = {t0}");
        let want = 1.0 / (x as f64).cosh().powi(2);
        if want >= floor {
            let rel = (d as f64 - want).abs() / want;
            if rel > worst.0 {
                worst = (rel, x);
            }
        } else {
            assert!((0.0..=floor * 1.01).contains(&(d as f64)), "tanh_sech2({x}).1 = {d:e}");
        }
    }
    println!("tanh_sech2: max rel error of 1 - tanh² {:.3e} at {}", worst.0, worst.1);
    assert!(worst.0 <= 3.5e-7, "1 - tanh²: rel error {:.3e} at x = {}", worst.0, worst.1);
}
