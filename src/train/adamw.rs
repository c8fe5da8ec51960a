//! AdamW (decoupled weight decay, as torch.optim.AdamW) as single passes over the flat buffers,
//! and the global gradient norm with clipping.

use crate::model::params::ParamLayout;
use rayon::prelude::*;

/// Elements per parallel task. Fixed, so that the order of every floating-point sum is the
/// same on every machine and run (determinism), whatever the thread count.
const BLOCK: usize = 1 << 14;

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Keep norms, biases, A_log and dt_bias out of weight decay (NVlabs decays everything).
    pub exempt_norms_and_biases: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            exempt_norms_and_biases: false,
        }
    }
}

/// First and second moments, and the number of updates taken.
pub struct AdamW {
    pub config: AdamWConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
    /// Per-element weight-decay factor (1 or 0), laid out like the parameters.
    decay: Vec<f32>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, layout: &ParamLayout) -> Self {
        let mut decay = vec![1.0f32; layout.total];
        if config.exempt_norms_and_biases {
            for p in layout
                .params
                .iter()
                .filter(|p| p.kind.is_exempt_from_decay())
            {
                decay[p.range()].iter_mut().for_each(|d| *d = 0.0);
            }
        }
        AdamW {
            config,
            m: vec![0.0; layout.total],
            v: vec![0.0; layout.total],
            step: 0,
            decay,
        }
    }

    /// The per-element weight-decay factor (1, or 0 for exempt parameters).
    pub fn decay(&self) -> &[f32] {
        &self.decay
    }

    /// One update with learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let eps = c.eps as f32;
        let shrink = (lr * c.weight_decay) as f32;
        params
            .par_chunks_mut(BLOCK)
            .zip(grads.par_chunks(BLOCK))
            .zip(
                self.m
                    .par_chunks_mut(BLOCK)
                    .zip(self.v.par_chunks_mut(BLOCK)),
            )
            .zip(self.decay.par_chunks(BLOCK))
            .for_each(|(((p, g), (m, v)), dec)| {
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= shrink * dec[i] * p[i];
                    p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                }
            });
    }
}

/// The global L2 norm of the gradients, summed in f64 in a fixed order.
pub fn grad_norm(grads: &[f32]) -> f64 {
    let partial: Vec<f64> = grads
        .par_chunks(BLOCK)
        .map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum())
        .collect();
    partial.iter().sum::<f64>().sqrt()
}

/// Scales the gradients so that their global norm is at most `max_norm` (as
/// torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = grad_norm(grads);
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        let k = (max_norm / (norm + 1e-6)) as f32;
        grads
            .par_chunks_mut(BLOCK)
            .for_each(|c| c.iter_mut().for_each(|g| *g *= k));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::Kind;

    #[test]
    fn matches_a_hand_computed_adamw_step_and_exempts_norms() {
        let mut layout = ParamLayout::default();
        let w = layout.push("w".into(), vec![2], Kind::Linear);
        let n = layout.push("n".into(), vec![1], Kind::Norm);
        let cfg = AdamWConfig {
            exempt_norms_and_biases: true,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg, &layout);
        // The gap between the two parameters (alignment) holds zeros and must stay zero.
        let mut p = vec![0.0f32; layout.total];
        let mut g = vec![0.0f32; layout.total];
        p[w.clone()].copy_from_slice(&[1.0, -2.0]);
        g[w.clone()].copy_from_slice(&[0.5, -0.25]);
        p[n.start] = 3.0;
        g[n.start] = 1.0;
        opt.update(&mut p, &g, 0.1);
        // Step 1: m̂ = g, v̂ = g², so the Adam step is lr·sign(g) (up to eps).
        let want = |p0: f32, g0: f32, decay: f32| p0 - 0.1 * 0.1 * decay * p0 - 0.1 * g0.signum();
        assert!((p[w.start] - want(1.0, 0.5, 1.0)).abs() < 1e-6);
        assert!((p[w.start + 1] - want(-2.0, -0.25, 1.0)).abs() < 1e-6);
        assert!(p[w.end..n.start].iter().all(|&x| x == 0.0), "gap moved");
        assert!(
            (p[n.start] - want(3.0, 1.0, 0.0)).abs() < 1e-6,
            "norm weight must not decay"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![3.0f32, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-12);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-5);
        let mut small = vec![0.3f32, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }
}
