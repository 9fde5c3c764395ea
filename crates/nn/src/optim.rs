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
    /// Decoupled weight decay (AdamW, Loshchilov and Hutter 2019, as `torch.optim.AdamW`): each
    /// step first scales a decayed parameter by `1 - lr·weight_decay`, apart from the Adam
    /// update. 0 is plain Adam. Which parameters decay: [`Adam::set_decay`] (all by default).
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Which elements of a tensor the weight decay applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decay {
    /// Every element (the default).
    All,
    /// None (biases, gains).
    None,
    /// The elements where the mask is `true` (a flat buffer holding weights and biases).
    Mask(Vec<bool>),
}

/// Adam with bias correction, as `torch.optim.Adam`, or AdamW with
/// [`weight_decay`](AdamConfig::weight_decay) (`torch.optim.AdamW`), over a list of tensors
/// whose sizes are fixed at construction.
#[derive(Debug, Clone)]
pub struct Adam {
    config: AdamConfig,
    step: u64,
    /// First and second moments, one pair per tensor.
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    /// The elements of each tensor that decay.
    decay: Vec<Decay>,
}

impl Adam {
    /// Zero moments for tensors of `sizes` elements.
    pub fn new(sizes: &[usize], config: AdamConfig) -> Result<Self> {
        check_lr(config.lr)?;
        if !(config.weight_decay >= 0.0 && config.weight_decay.is_finite()) {
            return Err(invalid("weight_decay", "a non-negative finite number", config.weight_decay));
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
        Ok(Adam { config, step: 0, moments, decay: vec![Decay::All; sizes.len()] })
    }

    /// Sets which elements of tensor `tensor` the weight decay applies to; a mask must have the
    /// tensor's size.
    pub fn set_decay(&mut self, tensor: usize, decay: Decay) -> Result<()> {
        let count = self.moments.len();
        let Some((m, _)) = self.moments.get(tensor) else {
            return Err(invalid("tensor", format!("below {count}"), tensor));
        };
        if let Decay::Mask(mask) = &decay {
            check_len("decay mask", "the size given to Adam::new", &[m.len()], mask.len())?;
        }
        self.decay[tensor] = decay;
        Ok(())
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamConfig {
        self.config
    }
    /// Sets the step size (for a schedule; 0 leaves the parameters where they are).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        check_lr(lr)?;
        self.config.lr = lr;
        Ok(())
    }
    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One step: `params[k] -= lr · m̂ / (sqrt(v̂) + eps)` with the moments updated from
    /// `grads[k]`, for every tensor `k` (the same tensors, in the same order, as at construction);
    /// with weight decay, each decaying parameter is first multiplied by `1 - lr·weight_decay`.
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
        let AdamConfig { lr, beta1, beta2, eps, weight_decay } = self.config;
        let t = self.step.min(i32::MAX as u64) as i32;
        let (c1, c2) = (1.0 - (beta1 as f64).powi(t), 1.0 - (beta2 as f64).powi(t));
        let (step_size, c2_sqrt) = ((lr as f64 / c1) as f32, c2.sqrt() as f32);
        let keep = 1.0 - lr * weight_decay;
        for (((p, g), (m, v)), decay) in params.iter_mut().zip(grads).zip(&mut self.moments).zip(&self.decay) {
            if weight_decay != 0.0 {
                match decay {
                    Decay::All => p.iter_mut().for_each(|p| *p *= keep),
                    Decay::None => {}
                    Decay::Mask(mask) => p.iter_mut().zip(mask).filter(|(_, &d)| d).for_each(|(p, _)| *p *= keep),
                }
            }
            for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *p -= step_size * *m / (v.sqrt() / c2_sqrt + eps);
            }
        }
        Ok(())
    }
}

fn check_lr(lr: f32) -> Result<()> {
    if !(lr >= 0.0 && lr.is_finite()) {
        return Err(invalid("lr", "a non-negative finite number", lr));
    }
    Ok(())
}

/// A cosine learning-rate schedule with a linear warm-up (Loshchilov and Hutter 2017, without
/// restarts; the warm-up of Goyal et al. 2017): at step `s` (counted from 0) and at `progress`
/// `q` through the run (steps done over steps planned, or time spent over the time budget),
///
/// ```text
/// lr = (min + (peak - min) · (1 + cos(π · q)) / 2) · min(1, (s + 1) / warmup)
/// ```
///
/// so the rate climbs to the cosine over the first `warmup` steps, starts from `peak` and ends
/// at `min`. The progress is an argument, not a step count, so a run bounded by time follows the
/// same curve as one bounded by steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    peak: f32,
    min: f32,
    warmup: u64,
}

impl CosineSchedule {
    /// From `peak` down to `min` (`0 ≤ min ≤ peak`, both finite), after `warmup` steps of linear
    /// warm-up (0: none).
    pub fn new(peak: f32, min: f32, warmup: u64) -> Result<Self> {
        if !(peak > 0.0 && peak.is_finite()) {
            return Err(invalid("peak", "a positive finite learning rate", peak));
        }
        if !(min >= 0.0 && min <= peak) {
            return Err(invalid("min", format!("a learning rate in [0, peak = {peak}]"), min));
        }
        Ok(CosineSchedule { peak, min, warmup })
    }

    /// The rate at step `step` and `progress` (clamped to `[0, 1]`; NaN counts as 0).
    pub fn lr(&self, step: u64, progress: f64) -> f32 {
        let q = if progress.is_nan() { 0.0 } else { progress.clamp(0.0, 1.0) };
        let (peak, min) = (self.peak as f64, self.min as f64);
        let cosine = min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * q).cos());
        let warm = if self.warmup == 0 { 1.0 } else { ((step as f64 + 1.0) / self.warmup as f64).min(1.0) };
        (cosine * warm) as f32
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
        let mut adam = Adam::new(&[1, 2], AdamConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }).unwrap();
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
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            let e = Adam::new(&[1], AdamConfig { lr: bad, ..Default::default() }).unwrap_err().to_string();
            assert!(e.contains("lr"), "{e}");
            let e = Adam::new(&[1], AdamConfig { weight_decay: bad, ..Default::default() }).unwrap_err().to_string();
            assert!(e.contains("weight_decay"), "{e}");
        }
    }

    /// AdamW against torch.optim.AdamW's update written out in f64 (decay first, then Adam), for
    /// three steps; with a mask only the masked elements decay, and `Decay::None` matches plain
    /// Adam bit for bit.
    #[test]
    fn adamw_decays_apart_from_the_adam_step() {
        let cfg = AdamConfig { lr: 0.05, beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.3 };
        let grads = [[0.5f32, -2.0, 0.0], [-1.0, 0.25, 3.0], [0.75, 0.5, -0.5]];
        let p0 = [1.5f32, -0.5, 2.0];
        // torch.optim.AdamW (amsgrad off), in f64.
        let (mut p, mut m, mut v) = (p0.map(f64::from), [0.0f64; 3], [0.0f64; 3]);
        for (s, g) in grads.iter().enumerate() {
            let t = s as i32 + 1;
            for i in 0..3 {
                let (b1, b2, lr) = (cfg.beta1 as f64, cfg.beta2 as f64, cfg.lr as f64);
                p[i] *= 1.0 - lr * cfg.weight_decay as f64;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i] as f64;
                v[i] = b2 * v[i] + (1.0 - b2) * (g[i] as f64).powi(2);
                let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
                p[i] -= lr * mh / (vh.sqrt() + cfg.eps as f64);
            }
        }
        let mut adamw = Adam::new(&[3, 3, 3], cfg).unwrap();
        adamw.set_decay(1, Decay::Mask(vec![true, false, true])).unwrap();
        adamw.set_decay(2, Decay::None).unwrap();
        let mut plain = Adam::new(&[3], AdamConfig { weight_decay: 0.0, ..cfg }).unwrap();
        let (mut a, mut b, mut c, mut d) = (p0.to_vec(), p0.to_vec(), p0.to_vec(), p0.to_vec());
        for g in &grads {
            adamw.step(&mut [&mut a, &mut b, &mut c], &[g, g, g]).unwrap();
            plain.step(&mut [&mut d], &[g]).unwrap();
        }
        for i in 0..3 {
            assert!((a[i] as f64 - p[i]).abs() < 1e-6, "AdamW, element {i}: {} vs {}", a[i], p[i]);
        }
        assert_eq!((b[0], b[2]), (a[0], a[2]), "masked elements decay");
        assert_eq!(b[1], d[1], "an unmasked element takes the plain Adam step");
        assert_eq!(c, d, "Decay::None is plain Adam");
        assert!((a[0] - d[0]).abs() > 1e-3, "the decay moved the parameter");

        let e = adamw.set_decay(3, Decay::None).unwrap_err().to_string();
        assert!(e.contains("tensor") && e.contains('3'), "{e}");
        let e = adamw.set_decay(0, Decay::Mask(vec![true; 2])).unwrap_err().to_string();
        assert!(e.contains("decay mask") && e.contains('2'), "{e}");
    }

    #[test]
    fn cosine_schedule_warms_up_then_follows_the_cosine() {
        let s = CosineSchedule::new(1e-3, 1e-4, 4).unwrap();
        // Warm-up: (s + 1) / 4 of the cosine at q = 0 (the peak).
        for (step, want) in [(0, 0.25e-3), (1, 0.5e-3), (3, 1e-3)] {
            assert!((s.lr(step, 0.0) - want).abs() < 1e-9, "step {step}: {}", s.lr(step, 0.0));
        }
        // Past the warm-up: the cosine, by progress.
        let mid = 1e-4 + 0.9e-3 * 0.5;
        assert!((s.lr(100, 0.5) - mid as f32).abs() < 1e-9, "{}", s.lr(100, 0.5));
        assert!((s.lr(100, 0.25) - (1e-4 + 0.9e-3 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())) as f32).abs() < 1e-9);
        assert_eq!(s.lr(100, 1.0), 1e-4);
        assert_eq!(s.lr(100, 7.0), 1e-4, "progress is clamped");
        assert_eq!(s.lr(100, f64::NAN), s.lr(100, 0.0));
        // Monotone after the warm-up.
        let lrs: Vec<f32> = (0..=100).map(|i| s.lr(1000, i as f64 / 100.0)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{lrs:?}");
        assert_eq!(CosineSchedule::new(1e-3, 0.0, 0).unwrap().lr(0, 0.0), 1e-3, "no warm-up");
        for (peak, min) in [(0.0, 0.0), (1e-3, 2e-3), (1e-3, -1.0), (f32::NAN, 0.0), (1e-3, f32::NAN)] {
            assert!(CosineSchedule::new(peak, min, 0).is_err(), "{peak} {min}");
        }
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
