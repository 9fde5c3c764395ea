//! [`Adam`] and [`clip_global_norm`], over several parameter tensors at once.

use crate::error::{check_len, invalid, try_vec, Result};

/// Adam's hyper-parameters (Kingma & Ba 2015), PyTorch's defaults but the learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Step size.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// Adam with bias correction, as `torch.optim.Adam`, over a list of tensors whose sizes are
/// fixed at construction.
#[derive(Debug, Clone)]
pub struct Adam {
    config: AdamConfig,
    step: u64,
    /// First and second moments, one pair per tensor.
    moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Adam {
    /// Zero moments for tensors of `sizes` elements.
    pub fn new(sizes: &[usize], config: AdamConfig) -> Result<Self> {
        if !(config.lr > 0.0 && config.lr.is_finite()) {
            return Err(invalid("lr", "a positive finite number", config.lr));
        }
        for (name, b) in [("beta1", config.beta1), ("beta2", config.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(invalid(name, "in [0, 1)", b));
            }
        }
        if !(config.eps >= 0.0 && config.eps.is_finite()) {
            return Err(invalid("eps", "a non-negative finite number", config.eps));
        }
        let mut moments = Vec::with_capacity(sizes.len());
        for (k, &n) in sizes.iter().enumerate() {
            let what = || format!("Adam's moments of tensor {k}: {n} f32");
            moments.push((try_vec(&format!("sizes[{k}]"), what(), n, 0.0)?, try_vec(&format!("sizes[{k}]"), what(), n, 0.0)?));
        }
        Ok(Adam { config, step: 0, moments })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamConfig {
        self.config
    }
    /// Sets the step size (for a schedule).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(invalid("lr", "a positive finite number", lr));
        }
        self.config.lr = lr;
        Ok(())
    }
    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One step: `params[k] -= lr · m̂ / (sqrt(v̂) + eps)` with the moments updated from
    /// `grads[k]`, for every tensor `k` (the same tensors, in the same order, as at construction).
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        let count = self.moments.len();
        if params.len() != count || grads.len() != count {
            return Err(invalid("params, grads", format!("{count} tensors each"), format!("{} and {}", params.len(), grads.len())));
        }
        for (k, ((p, g), (m, _))) in params.iter().zip(grads).zip(&self.moments).enumerate() {
            check_len(&format!("params[{k}]"), "the size given to Adam::new", &[m.len()], p.len())?;
            check_len(&format!("grads[{k}]"), "the size given to Adam::new", &[m.len()], g.len())?;
        }
        self.step += 1;
        let AdamConfig { lr, beta1, beta2, eps } = self.config;
        let t = self.step.min(i32::MAX as u64) as i32;
        let (c1, c2) = (1.0 - (beta1 as f64).powi(t), 1.0 - (beta2 as f64).powi(t));
        let (step_size, c2_sqrt) = ((lr as f64 / c1) as f32, c2.sqrt() as f32);
        for ((p, g), (m, v)) in params.iter_mut().zip(grads).zip(&mut self.moments) {
            for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *p -= step_size * *m / (v.sqrt() / c2_sqrt + eps);
            }
        }
        Ok(())
    }
}

/// Scales all of `grads` together so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping. Gradients whose norm
/// is not finite are left as they are (the returned norm tells the caller).
pub fn clip_global_norm(grads: &mut [&mut [f32]], max_norm: f32) -> Result<f32> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(invalid("max_norm", "a positive number", max_norm));
    }
    let norm = grads.iter().flat_map(|g| g.iter()).map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if norm.is_finite() && norm > max_norm as f64 {
        let scale = (max_norm as f64 / (norm + 1e-6)) as f32;
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= scale;
            }
        }
    }
    Ok(norm as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_matches_hand_computed_steps() {
        // lr 0.1, betas 0.9 / 0.999, eps 1e-8, p = 1, g = 0.5 then -1. By hand:
        // step 1: m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25, p = 1 - 0.1·0.5/0.5 = 0.9.
        // step 2: m = 0.045 - 0.1 = -0.055, v = 0.00024975 + 0.001 = 0.00124975,
        //         m̂ = -0.055/0.19 = -0.28947368, v̂ = 0.00124975/0.001999 = 0.62518759,
        //         p = 0.9 + 0.1·0.28947368/0.79068805 = 0.93661035.
        let mut adam = Adam::new(&[1, 2], AdamConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8 }).unwrap();
        let (mut a, mut b) = (vec![1.0f32], vec![1.0f32, -3.0]);
        adam.step(&mut [&mut a, &mut b], &[&[0.5], &[0.5, 0.0]]).unwrap();
        assert!((a[0] - 0.9).abs() < 1e-6, "{}", a[0]);
        assert_eq!(b[1], -3.0, "a zero gradient does not move a parameter on the first step");
        adam.step(&mut [&mut a, &mut b], &[&[-1.0], &[-1.0, 0.0]]).unwrap();
        assert!((a[0] - 0.936_610_35).abs() < 1e-6, "{}", a[0]);
        assert_eq!(a[0], b[0], "tensors are independent but follow the same rule");
        assert_eq!(adam.steps(), 2);

        let err = adam.step(&mut [&mut a], &[&[0.0]]).unwrap_err().to_string();
        assert!(err.contains("2 tensors"), "{err}");
        let err = adam.step(&mut [&mut a, &mut b[..1]], &[&[0.0], &[0.0, 0.0]]).unwrap_err().to_string();
        assert!(err.contains("params[1]"), "{err}");
        assert!(Adam::new(&[1], AdamConfig { lr: 0.0, ..Default::default() }).is_err());
    }

    #[test]
    fn clip_scales_only_above_the_limit() {
        // Norm of (3, 4) and (12) is 13.
        let (mut a, mut b) = (vec![3.0f32, 4.0], vec![12.0f32]);
        let n = clip_global_norm(&mut [&mut a, &mut b], 26.0).unwrap();
        assert_eq!((n, a.clone(), b.clone()), (13.0, vec![3.0, 4.0], vec![12.0]));
        let n = clip_global_norm(&mut [&mut a, &mut b], 6.5).unwrap();
        assert_eq!(n, 13.0);
        for (got, want) in a.iter().chain(&b).zip([1.5, 2.0, 6.0]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert!(clip_global_norm(&mut [&mut a], 0.0).is_err());
    }
}
