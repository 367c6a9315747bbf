//! Forward and backward of the whole model on one packed micro-batch, in a reusable arena.

use super::arena::{Arena, Scratch};
use super::batch::Batch;
use super::layer::{layer_backward, layer_forward, BatchCtx};
use super::loss::fused_nll_in;
use super::ops::{rmsnorm_backward, rmsnorm_rows};
use super::proj::Dropout;
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

/// Forward + backward in a fresh arena (tests and one-off callers; the trainer keeps one).
pub fn forward_backward(
    model: &Model,
    lora: &LoraSet,
    batch: &Batch,
    grads: &mut LoraSet,
    grad_scale: f32,
    checkpoint: bool,
    dropout: Option<Dropout>,
) -> Result<StepOutput> {
    let mut arena = Arena::new(
        &model.config,
        lora,
        batch.len(),
        checkpoint,
        dropout.is_some(),
    );
    forward_backward_in(
        &mut arena, model, lora, batch, grads, grad_scale, checkpoint, dropout,
    )
}

/// Forward + backward. Adds `grad_scale · ∂(Σ nll)/∂θ` into `grads` (same layout as `lora`).
/// The arena is grown first if the batch does not fit it.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward_in(
    arena: &mut Arena,
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
    let t = batch.len();
    if !arena.fits(t, checkpoint, dropout.is_some()) {
        *arena = Arena::new(c, lora, t.max(arena.t_max), checkpoint, dropout.is_some());
    }
    let ctx = BatchCtx::new(model, &batch.segments, &batch.positions);
    let td = t * d;
    let Arena {
        inputs,
        acts,
        scratch: sc,
        ..
    } = arena;
    model.embed_into(&batch.tokens, &mut inputs[0][..td])?;

    let n_layers = model.layers.len();
    // Under checkpointing, the dropout state at each block's start, to replay it exactly.
    let mut replay: Vec<Option<Dropout>> = Vec::new();
    for li in 0..n_layers {
        if checkpoint {
            replay.push(dropout.clone());
        }
        let (done, rest) = inputs.split_at_mut(li + 1);
        let a = &mut acts[if checkpoint { 0 } else { li }];
        let (x_in, x_out) = (&done[li][..td], &mut rest[0][..td]);
        layer_forward(model, li, lora, &ctx, x_in, a, sc, x_out, &mut dropout);
    }

    let x = &inputs[n_layers][..td];
    let (nll_sum, segment_nll, m) = final_norm_and_loss(model, batch, x, sc, grad_scale)?;

    // Moved out while the blocks borrow the rest of the scratch (a move, not an allocation).
    let mut grad = std::mem::take(&mut sc.grad);
    for li in (0..n_layers).rev() {
        let (done, rest) = inputs.split_at_mut(li + 1);
        let x_in = &done[li][..td];
        let a = if checkpoint {
            // Recompute the block (its output lands where it was the first time).
            let mut dr = replay[li].clone();
            layer_forward(
                model,
                li,
                lora,
                &ctx,
                x_in,
                &mut acts[0],
                sc,
                &mut rest[0][..td],
                &mut dr,
            );
            &acts[0]
        } else {
            &acts[li]
        };
        layer_backward(model, li, lora, &ctx, x_in, a, sc, &mut grad[..td], grads);
    }
    sc.grad = grad;
    Ok(StepOutput {
        nll_sum,
        scored: m,
        segment_nll,
    })
}

/// Final RMSNorm, the fused NLL on the rows that predict scored tokens, and the gradient back
/// to the last block's output, left in `sc.grad[..T·d]`. Returns (Σ nll, per segment, m).
fn final_norm_and_loss(
    model: &Model,
    batch: &Batch,
    x: &[f32],
    sc: &mut Scratch,
    grad_scale: f32,
) -> Result<(f64, Vec<f64>, usize)> {
    let c = &model.config;
    let (d, t) = (c.d_model, batch.len());
    let (td, m) = (t * d, batch.scored.len());
    let hf = &mut sc.hf[..td];
    let rf = &mut sc.rf[..t];
    rmsnorm_rows(x, &model.final_norm, c.rms_eps, hf, rf);
    let (hs, dhs) = (&mut sc.hs[..m * d], &mut sc.dhs[..m * d]);
    for (k, &(row, _)) in batch.scored.iter().enumerate() {
        hs[k * d..(k + 1) * d].copy_from_slice(&hf[row * d..(row + 1) * d]);
    }
    let targets: Vec<u32> = batch.scored.iter().map(|&(_, y)| y).collect();
    let out = fused_nll_in(&mut sc.nll, hs, &targets, &model.output, grad_scale, dhs);
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
    // hf now holds ∂L/∂hf: zero except the scored rows.
    hf.fill(0.0);
    for (k, &(row, _)) in batch.scored.iter().enumerate() {
        hf[row * d..(row + 1) * d].copy_from_slice(&dhs[k * d..(k + 1) * d]);
    }
    let grad = &mut sc.grad[..td];
    grad.fill(0.0);
    rmsnorm_backward(x, &model.final_norm, rf, hf, grad);
    Ok((nll_sum, segment_nll, m))
}
