//! Trainable LoRA parameters: PEFT-compatible initialisation and flat views for the optimizer.

use crate::format::peft::target_dims;
use crate::infer::sampling::Rng;
use crate::model::config::ModelConfig;
use crate::model::lora::{LoraPair, LoraSet, Target};

/// A as PEFT initialises it (kaiming_uniform with a = √5, i.e. U(−1/√in, 1/√in)), B = 0, so
/// step 0 reproduces the base model exactly.
pub fn init_lora(
    cfg: &ModelConfig,
    rank: usize,
    alpha: f32,
    targets: &[Target],
    seed: u64,
) -> LoraSet {
    let mut rng = Rng::new(seed);
    let mut targets = targets.to_vec();
    targets.sort();
    targets.dedup();
    let layers = (0..cfg.n_layers)
        .map(|_| {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &t in &targets {
                let (in_dim, out_dim) = target_dims(cfg, t);
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a = (0..rank * in_dim)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                slots[t.index()] = Some(LoraPair {
                    a,
                    b: vec![0.0; out_dim * rank],
                    rank,
                    in_dim,
                    out_dim,
                });
            }
            slots
        })
        .collect();
    LoraSet {
        rank,
        alpha,
        scale: alpha / rank as f32,
        targets,
        layers,
    }
}

/// Same layout, all zeros (gradient buffers).
pub fn zeros_like(l: &LoraSet) -> LoraSet {
    let mut z = l.clone();
    for_each_tensor_mut(&mut z, |v| v.iter_mut().for_each(|x| *x = 0.0));
    z
}

/// Visit every tensor (A then B of each pair, layers in order, targets in order).
pub fn for_each_tensor<'a>(l: &'a LoraSet, mut f: impl FnMut(&'a [f32])) {
    for slots in &l.layers {
        for p in slots.iter().flatten() {
            f(&p.a);
            f(&p.b);
        }
    }
}

pub fn for_each_tensor_mut(l: &mut LoraSet, mut f: impl FnMut(&mut Vec<f32>)) {
    for slots in &mut l.layers {
        for p in slots.iter_mut().flatten() {
            f(&mut p.a);
            f(&mut p.b);
        }
    }
}

/// Visit parameter and gradient tensors pairwise.
pub fn zip_tensors_mut<'a, 'b>(
    p: &'a mut LoraSet,
    g: &'b LoraSet,
    mut f: impl FnMut(&'a mut [f32], &'b [f32]),
) {
    for (ps, gs) in p.layers.iter_mut().zip(&g.layers) {
        for (pp, gp) in ps.iter_mut().zip(gs) {
            if let (Some(pp), Some(gp)) = (pp.as_mut(), gp.as_ref()) {
                f(&mut pp.a, &gp.a);
                f(&mut pp.b, &gp.b);
            }
        }
    }
}

/// Flatten all tensors into one vector (checkpoints, comparisons).
pub fn flatten(l: &LoraSet) -> Vec<f32> {
    let mut out = Vec::with_capacity(l.num_params());
    for_each_tensor(l, |v| out.extend_from_slice(v));
    out
}

/// Write a flat vector back (inverse of `flatten`); false if the length does not match.
pub fn unflatten(l: &mut LoraSet, flat: &[f32]) -> bool {
    if flat.len() != l.num_params() {
        return false;
    }
    let mut at = 0;
    for_each_tensor_mut(l, |v| {
        let n = v.len();
        v.copy_from_slice(&flat[at..at + n]);
        at += n;
    });
    true
}

/// `dst ← src`, tensor by tensor (same layout), without reallocating.
pub fn copy_params(dst: &mut LoraSet, src: &LoraSet) {
    let mut from: Vec<&[f32]> = Vec::new();
    for_each_tensor(src, |t| from.push(t));
    let mut from = from.into_iter();
    for_each_tensor_mut(dst, |t| {
        t.copy_from_slice(from.next().expect("same layout"))
    });
}
