//! AdamW (decoupled weight decay, as torch.optim.AdamW), learning-rate schedules and global
//! gradient-norm clipping.

use super::params::{flatten, for_each_tensor, zip_tensors_mut};
use crate::model::lora::LoraSet;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// Learning rate for optimizer update `step` (0-based) of `total`: linear warmup over
/// `warmup` updates ((step+1)/warmup), then the schedule decays from `lr` towards 0.
pub fn lr_at(lr: f32, schedule: Schedule, warmup: usize, total: usize, step: usize) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1) as f32;
    let progress = ((step - warmup) as f32 / span).min(1.0);
    match schedule {
        Schedule::Constant => lr,
        Schedule::Linear => lr * (1.0 - progress),
        Schedule::Cosine => lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
    }
}

/// √(Σ g²) over every gradient tensor, in f64.
/// One tensor's update: (parameters, gradient, first moment, second moment).
type TensorUpdate<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32]);

pub fn global_norm(g: &LoraSet) -> f64 {
    // Per-tensor sums in parallel, added in tensor order: the same value at any thread count.
    let mut tensors: Vec<&[f32]> = Vec::new();
    for_each_tensor(g, |v| tensors.push(v));
    let sums: Vec<f64> = tensors
        .par_iter()
        .map(|v| v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>())
        .collect();
    sums.iter().sum::<f64>().sqrt()
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Updates done so far.
    pub t: u64,
    pub m: Vec<f32>, // flat, in `params::flatten` order
    pub v: Vec<f32>,
}

impl AdamW {
    pub fn new(params: &LoraSet, weight_decay: f32) -> Self {
        let n = flatten(params).len();
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One update with learning rate `lr`; `grad_mult` scales the gradient first (clipping).
    pub fn step(&mut self, params: &mut LoraSet, grads: &LoraSet, lr: f32, grad_mult: f32) {
        self.t += 1;
        let bc1 = 1.0 - (self.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        // Pair every tensor with its slices of the moments, then update them in parallel
        // (element-wise: the result does not depend on the split).
        let (mut m, mut v) = (&mut self.m[..], &mut self.v[..]);
        let mut work: Vec<TensorUpdate> = Vec::new();
        zip_tensors_mut(params, grads, |p, g| {
            let (mt, mr) = std::mem::take(&mut m).split_at_mut(p.len());
            let (vt, vr) = std::mem::take(&mut v).split_at_mut(p.len());
            (m, v) = (mr, vr);
            work.push((p, g, mt, vt));
        });
        work.into_par_iter().for_each(|(p, g, m, v)| {
            for i in 0..p.len() {
                let gi = g[i] * grad_mult;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] *= 1.0 - lr * wd;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(lr_at(1.0, Schedule::Constant, 0, 10, 5), 1.0);
        assert!((lr_at(1.0, Schedule::Linear, 2, 12, 0) - 0.5).abs() < 1e-6);
        assert!((lr_at(1.0, Schedule::Linear, 2, 12, 2) - 1.0).abs() < 1e-6);
        assert!((lr_at(1.0, Schedule::Cosine, 0, 10, 5) - 0.5).abs() < 1e-6);
        assert!(lr_at(1.0, Schedule::Cosine, 0, 10, 9) > 0.0);
    }
}
