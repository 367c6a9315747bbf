//! Forward and backward of the whole model on one packed micro-batch.

use super::batch::Batch;
use super::layer::{into_input, layer_backward, layer_forward, Acts, BatchCtx, Dropout};
use super::loss::fused_nll;
use super::ops::{inv_rms, rmsnorm_backward};
use crate::cpu;
use crate::error::Result;
use crate::model::lora::LoraSet;
use crate::model::Model;

/// What one micro-batch contributed.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Σ −log Pr over the scored tokens of the batch.
    pub nll_sum: f64,
    pub scored: usize,
    /// Σ −log Pr per segment (record) of the batch.
    pub segment_nll: Vec<f64>,
}

enum Saved {
    Full(Box<Acts>),
    /// Gradient checkpointing: the layer input and the dropout state to replay it exactly.
    Input(Vec<f32>, Option<Dropout>),
}

fn clone_dropout(d: &Option<Dropout>) -> Option<Dropout> {
    d.as_ref().map(|d| Dropout {
        p: d.p,
        rng: d.rng.clone(),
    })
}

/// Forward + backward. Adds `grad_scale · ∂(Σ nll)/∂θ` into `grads` (same layout as `lora`).
pub fn forward_backward(
    model: &Model,
    lora: &LoraSet,
    batch: &Batch,
    grads: &mut LoraSet,
    grad_scale: f32,
    checkpoint: bool,
    mut dropout: Option<Dropout>,
) -> Result<StepOutput> {
    let c = &model.config;
    let d = c.d_model;
    let ctx = BatchCtx::new(model, &batch.segments, &batch.positions);
    let t = ctx.t;

    let mut x = model.embed(&batch.tokens)?; // [T, d]
    let mut saved: Vec<Saved> = Vec::with_capacity(model.layers.len());
    for li in 0..model.layers.len() {
        let replay = if checkpoint {
            Some(clone_dropout(&dropout))
        } else {
            None
        };
        let (y, acts) = layer_forward(model, li, lora, &ctx, x, &mut dropout);
        saved.push(match replay {
            Some(dr) => Saved::Input(into_input(acts), dr),
            None => Saved::Full(Box::new(acts)),
        });
        x = y;
    }

    // Final norm, then the fused loss on the rows that predict scored tokens only.
    let r = inv_rms(&x, d, c.rms_eps);
    let mut hf = vec![0.0f32; t * d]; // [T, d]
    cpu::rmsnorm(&x, &model.final_norm, c.rms_eps, d, &mut hf);
    let m = batch.scored.len();
    let mut hs = Vec::with_capacity(m * d); // [m, d]
    for &(row, _) in &batch.scored {
        hs.extend_from_slice(&hf[row * d..(row + 1) * d]);
    }
    let targets: Vec<u32> = batch.scored.iter().map(|&(_, y)| y).collect();
    let mut dhs = vec![0.0f32; m * d];
    let out = fused_nll(&hs, &targets, &model.output, grad_scale, &mut dhs);
    let mut segment_nll = vec![0.0f64; batch.segments.len()];
    for (k, &nll) in out.nll.iter().enumerate() {
        segment_nll[batch.scored_segment[k]] += nll;
    }
    let nll_sum: f64 = out.nll.iter().sum();
    if !nll_sum.is_finite() {
        return Err(crate::Error::Numeric(format!(
            "loss is {nll_sum} on a batch of {t} tokens"
        )));
    }

    let mut dhf = vec![0.0f32; t * d];
    for (k, &(row, _)) in batch.scored.iter().enumerate() {
        dhf[row * d..(row + 1) * d].copy_from_slice(&dhs[k * d..(k + 1) * d]);
    }
    let mut dx = vec![0.0f32; t * d];
    rmsnorm_backward(&x, &model.final_norm, &r, &dhf, &mut dx);
    drop((x, hf, dhf));

    for li in (0..model.layers.len()).rev() {
        let acts = match saved.pop().expect("one saved entry per layer") {
            Saved::Full(a) => *a,
            Saved::Input(x_in, mut dr) => layer_forward(model, li, lora, &ctx, x_in, &mut dr).1,
        };
        dx = layer_backward(model, li, lora, &ctx, &acts, &dx, grads);
    }
    Ok(StepOutput {
        nll_sum,
        scored: m,
        segment_nll,
    })
}
