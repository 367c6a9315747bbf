//! Forward and backward of the whole model on one packed micro-batch, in a reusable arena, on
//! any [`Backend`].

use super::arena::{Arena, Scratch};
use super::backend::{Backend, Cpu, Mem, Norm};
use super::batch::Batch;
use super::layer::{layer_backward, layer_forward, r, w};
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
    let dropout = dropout.filter(|d| d.p > 0.0); // as step_on does: one arena, the right one
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

/// Forward + backward on the CPU. Adds `grad_scale · ∂(Σ nll)/∂θ` into `grads` (same layout
/// as `lora`). The arena is grown first if the batch does not fit it.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward_in(
    arena: &mut Arena,
    model: &Model,
    lora: &LoraSet,
    batch: &Batch,
    grads: &mut LoraSet,
    grad_scale: f32,
    checkpoint: bool,
    dropout: Option<Dropout>,
) -> Result<StepOutput> {
    let be = Cpu::new(model);
    step_on(
        &be, arena, lora, batch, grads, grad_scale, checkpoint, dropout,
    )
}

/// [`forward_backward_in`] on any backend, its arena in the backend's memory.
#[allow(clippy::too_many_arguments)]
pub fn step_on<B: Backend>(
    be: &B,
    arena: &mut Arena<B::M>,
    lora: &B::Lora,
    batch: &Batch,
    grads: &mut B::Lora,
    grad_scale: f32,
    checkpoint: bool,
    dropout: Option<Dropout>,
) -> Result<StepOutput> {
    // p = 0 is no dropout: no keep masks are drawn, so none may be read in backward.
    let mut dropout = dropout.filter(|d| d.p > 0.0);
    let c = be.config();
    let d = c.d_model;
    let t = batch.len();
    if !arena.fits(t, checkpoint, dropout.is_some()) {
        let (rank, targets) = (B::lora_rank(lora), B::lora_targets(lora));
        let t_max = t.max(arena.t_max);
        let drop = dropout.is_some();
        *arena = Arena::new_in(be.mem(), c, rank, targets, t_max, checkpoint, drop);
    }
    let ctx = be.batch_ctx(batch)?;
    let td = t * d;
    let Arena {
        inputs,
        acts,
        scratch: sc,
        grad,
        ..
    } = arena;
    be.embed(&batch.tokens, w!(inputs[0], td))?;

    let n_layers = c.n_layers;
    // Under checkpointing, the dropout state at each block's start, to replay it exactly.
    let mut replay: Vec<Option<Dropout>> = Vec::new();
    for li in 0..n_layers {
        if checkpoint {
            replay.push(dropout.clone());
        }
        let (done, rest) = inputs.split_at_mut(li + 1);
        let a = &mut acts[if checkpoint { 0 } else { li }];
        layer_forward(
            be,
            li,
            lora,
            &ctx,
            t,
            &done[li],
            a,
            sc,
            &mut rest[0],
            &mut dropout,
        );
    }

    let x = &inputs[n_layers];
    let (nll_sum, segment_nll, m) = final_norm_and_loss(be, batch, x, sc, grad, grad_scale)?;

    for li in (0..n_layers).rev() {
        let (done, rest) = inputs.split_at_mut(li + 1);
        let x_in = &done[li];
        let a = if checkpoint {
            // Recompute the block (its output lands where it was the first time).
            let mut dr = replay[li].clone();
            layer_forward(
                be,
                li,
                lora,
                &ctx,
                t,
                x_in,
                &mut acts[0],
                sc,
                &mut rest[0],
                &mut dr,
            );
            &acts[0]
        } else {
            &acts[li]
        };
        layer_backward(be, li, lora, &ctx, t, x_in, a, sc, grad, grads);
    }
    Ok(StepOutput {
        nll_sum,
        scored: m,
        segment_nll,
    })
}

/// Final RMSNorm, the fused NLL on the rows that predict scored tokens, and the gradient back
/// to the last block's output, left in `grad` [T, d]. Returns (Σ nll, per segment, m).
fn final_norm_and_loss<B: Backend>(
    be: &B,
    batch: &Batch,
    x: &<B::M as Mem>::Buf,
    sc: &mut Scratch<B::M>,
    grad: &mut <B::M as Mem>::Buf,
    grad_scale: f32,
) -> Result<(f64, Vec<f64>, usize)> {
    let d = be.config().d_model;
    let t = batch.len();
    let (td, m) = (t * d, batch.scored.len());
    be.rmsnorm_rows(Norm::Final, r!(*x, td), w!(sc.hf, td), w!(sc.rf, t));
    let rows: Vec<usize> = batch.scored.iter().map(|&(row, _)| row).collect();
    let targets: Vec<u32> = batch.scored.iter().map(|&(_, y)| y).collect();
    be.gather_rows(r!(sc.hf, td), &rows, d, w!(sc.hs, m * d));
    let (hs, dhs) = (r!(sc.hs, m * d), w!(sc.dhs, m * d));
    let nll = be.fused_nll(&mut sc.nll, hs, &targets, grad_scale, dhs);
    let mut segment_nll = vec![0.0f64; batch.segments.len()];
    for (k, &v) in nll.iter().enumerate() {
        segment_nll[batch.scored_segment[k]] += v;
    }
    let nll_sum: f64 = nll.iter().sum();
    if !nll_sum.is_finite() {
        return Err(crate::Error::Numeric(format!(
            "loss is {nll_sum} on a batch of {t} tokens"
        )));
    }
    // hf becomes ∂L/∂hf: zero except the scored rows.
    be.zero(w!(sc.hf, td));
    be.scatter_rows(r!(sc.dhs, m * d), &rows, d, w!(sc.hf, td));
    be.zero(w!(*grad, td));
    be.rmsnorm_backward(
        Norm::Final,
        r!(*x, td),
        r!(sc.rf, t),
        r!(sc.hf, td),
        w!(*grad, td),
    );
    Ok((nll_sum, segment_nll, m))
}
