//! KV-cached generation that streams decoded text as it goes.

use super::sampling::{sample, Rng};
use crate::error::Result;
use crate::model::forward::KvCache;
use crate::model::lora::LoraSet;
use crate::model::Model;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Token ids that end generation (end-of-turn, EOS); not emitted.
    pub stop_ids: Vec<u32>,
}

/// Generate after `prompt_ids`, calling `on_token(id)` for every new token; returns the new ids.
pub fn generate(
    model: &Model,
    lora: Option<&LoraSet>,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let mut cache = KvCache::new(model.layers.len());
    let mut rng = Rng::new(opts.seed);
    let d = model.config.d_model;
    let limit = model.config.max_positions;
    let mut hidden = model.forward(prompt_ids, &mut cache, lora)?;
    let mut last = hidden[hidden.len() - d..].to_vec();
    let mut out = Vec::new();
    while out.len() < opts.max_tokens && cache.len < limit {
        let logits = model.logits(&last, 1);
        let next = sample(&logits, opts.temperature, opts.top_p, &mut rng) as u32;
        if opts.stop_ids.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next)?;
        hidden = model.forward(&[next], &mut cache, lora)?;
        last.copy_from_slice(&hidden[..d]);
    }
    Ok(out)
}
