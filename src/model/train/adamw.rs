//! AdamW over flat f32 buffers, its whole state plain data.
//!
//! Why not candle-nn's: its moments are private, so a checkpoint could not hold them and a
//! resumed run could not continue bit for bit; and it updates tensor by tensor. Here every
//! parameter is one slice of one buffer, updated in one pass.

use serde::{Deserialize, Serialize};

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay (Hugging Face's trainer uses 0).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Moments and step count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdamW {
    /// First moments, one per parameter.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Updates made.
    pub t: u64,
}

impl AdamW {
    /// Fresh state for `n` parameters.
    pub fn new(n: usize) -> AdamW {
        AdamW {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One update of `params` with gradients `grads` at learning rate `lr`.
    pub fn step(&mut self, c: &AdamWConfig, lr: f64, params: &mut [f32], grads: &[f32]) {
        assert_eq!(params.len(), self.m.len());
        assert_eq!(grads.len(), self.m.len());
        self.t += 1;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        let step = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (eps, decay) = (c.eps as f32, (lr * c.weight_decay) as f32);
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= decay * *p;
            *p -= step * *m / (v.sqrt() / bc2_sqrt + eps);
        }
    }
}

/// Scale `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = grads
        .iter()
        .map(|g| (*g as f64) * (*g as f64))
        .sum::<f64>()
        .sqrt();
    if norm > max_norm && norm > 0.0 {
        let s = (max_norm / norm) as f32;
        grads.iter_mut().for_each(|g| *g *= s);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AdamW's closed form with a constant gradient: after bias correction m̂ = g and
    /// v̂ = g², so every step moves a parameter by lr · sign(g), after decaying it by lr · wd.
    #[test]
    fn two_steps_match_the_closed_form() {
        let c = AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = AdamW::new(2);
        let mut p = vec![1.0f32, -2.0];
        opt.step(&c, 0.1, &mut p, &[0.5, 0.25]);
        // Step 1: m̂ = g, v̂ = g², update = lr · g/|g| (ε negligible), decay lr·wd·p first.
        assert!((p[0] - (1.0 * (1.0 - 0.001) - 0.1)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - (-2.0 * (1.0 - 0.001) - 0.1)).abs() < 1e-6, "{p:?}");
        let before = p.clone();
        opt.step(&c, 0.1, &mut p, &[0.5, 0.25]);
        // Same gradient again: m̂ = g, v̂ = g² again, so the same step.
        assert!((p[0] - (before[0] * 0.999 - 0.1)).abs() < 1e-6, "{p:?}");
        assert_eq!(opt.t, 2);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut small = vec![0.1f32];
        clip(&mut small, 1.0);
        assert_eq!(small, [0.1]);
    }
}
