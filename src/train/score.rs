//! Scoring many records at once: Σ log Pr(y|x) per record with the training forward (no
//! backward, nothing saved per block), several records packed into one batch.
//!
//! `eval::score_example` runs one record through the inference forward (KV cache, one sequence).
//! Held-out scorings during `tune`, `eval` and the daemon's gate score whole sets; one record
//! of 60 tokens makes every projection a [60, d] × [d, out] product that re-packs its weight
//! panel for little work. Packed to `SCORE_BATCH_TOKENS`, the same weights serve hundreds of
//! rows per panel, and attention still never crosses a record (segments, as in training).

use super::arena::Arena;
use super::backend::{Backend, Cpu};
use super::batch::{pack_indices, Batch};
use super::layer::layer_forward;
use super::ops::rmsnorm_rows;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::RecordScore;
use crate::model::lora::LoraSet;
use crate::model::Model;

/// Tokens per packed scoring batch: large enough that the weight panels are reused over many
/// rows, small enough that the forward-only arena stays a few tens of MB on a 135M model.
pub const SCORE_BATCH_TOKENS: usize = 1024;

/// An adapter set with no adapted projection: the base model through the training forward.
fn no_adapter() -> LoraSet {
    LoraSet {
        rank: 0,
        alpha: 0.0,
        scale: 0.0,
        targets: Vec::new(),
        layers: Vec::new(),
    }
}

/// Score every example (in order), packing consecutive records into batches of at most
/// `SCORE_BATCH_TOKENS` tokens; `progress(done, total)` is called after each batch.
pub fn score_packed(
    model: &Model,
    examples: &[Example],
    lora: Option<&LoraSet>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<RecordScore>> {
    for ex in examples {
        crate::eval::check_mask_len(ex)?;
    }
    let empty = no_adapter();
    let lora = lora.unwrap_or(&empty);
    let lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let order: Vec<usize> = (0..examples.len()).collect();
    let packs = pack_indices(&order, &lens, SCORE_BATCH_TOKENS);
    let t_max = packs
        .iter()
        .map(|p| p.iter().map(|&i| lens[i]).sum::<usize>())
        .max()
        .unwrap_or(1);
    let mut arena = Arena::forward_only(&model.config, lora, t_max);
    let mut out = Vec::with_capacity(examples.len());
    for pack in &packs {
        let batch = Batch::from_examples(pack.iter().map(|&i| &examples[i]));
        let nll = forward_segment_nll(&mut arena, model, lora, &batch)?;
        for (k, &i) in pack.iter().enumerate() {
            let ex = &examples[i];
            out.push(RecordScore {
                line: ex.line,
                sum_logprob: -nll[k],
                scored_tokens: (1..ex.ids.len()).filter(|&t| ex.mask[t]).count(),
                tokens: ex.ids.len(),
            });
        }
        progress(out.len(), examples.len());
    }
    Ok(out)
}

/// Σ −log Pr of the scored tokens of each segment of `batch`.
fn forward_segment_nll(
    arena: &mut Arena,
    model: &Model,
    lora: &LoraSet,
    batch: &Batch,
) -> Result<Vec<f64>> {
    let c = &model.config;
    let (t, d) = (batch.len(), c.d_model);
    let td = t * d;
    let be = Cpu::new(model);
    let ctx = be.batch_ctx(batch)?;
    let Arena {
        inputs,
        acts,
        scratch: sc,
        ..
    } = arena;
    // Two residual-stream buffers [T, d], used in turn as a block's input and output.
    let (first, second) = inputs.split_at_mut(1);
    let (mut x, mut y) = (&mut first[0], &mut second[0]);
    model.embed_into(&batch.tokens, &mut x[..td])?;
    for li in 0..model.layers.len() {
        layer_forward(&be, li, lora, &ctx, t, x, &mut acts[0], sc, y, &mut None);
        std::mem::swap(&mut x, &mut y);
    }
    let hf = &mut sc.hf[..td]; // [T, d] final-normed hidden states
    rmsnorm_rows(&x[..td], &model.final_norm, c.rms_eps, hf, &mut sc.rf[..t]);
    let m = batch.scored.len();
    let hs = &mut sc.hs[..m * d]; // [m, d] the rows that predict scored tokens
    for (k, &(row, _)) in batch.scored.iter().enumerate() {
        hs[k * d..(k + 1) * d].copy_from_slice(&hf[row * d..(row + 1) * d]);
    }
    let targets: Vec<u32> = batch.scored.iter().map(|&(_, y)| y).collect();
    let lp = model.target_logprobs(hs, &targets);
    let mut nll = vec![0.0f64; batch.segments.len()];
    for (k, v) in lp.iter().enumerate() {
        nll[batch.scored_segment[k]] -= v;
    }
    if let Some(bad) = nll.iter().position(|v| !v.is_finite()) {
        return Err(Error::Numeric(format!(
            "non-finite log-likelihood of a scored record ({} in its batch) in the forward pass \
             of {}",
            bad + 1,
            model.path.display()
        )));
    }
    Ok(nll)
}
