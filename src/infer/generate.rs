//! KV-cached generation that streams decoded text as it goes.

use super::sampling::{sample, Rng};
use crate::error::Result;
use crate::model::forward::KvCache;
use crate::model::lora::LoraSet;
use crate::model::Model;
use std::sync::atomic::{AtomicBool, Ordering};

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
    on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let mut cache = KvCache::new(model.layers.len());
    let mut rng = Rng::new(opts.seed);
    let (out, _) = generate_cached(
        model, lora, &mut cache, prompt_ids, opts, &mut rng, None, on_token,
    )?;
    Ok(out)
}

/// Generate after the positions already in `cache` plus `new_ids` (at least one id). Every
/// emitted token is run through the model too, so on return `cache` holds the prompt and the
/// whole reply (not the stop token). `stop`, when set, ends the reply early (Ctrl-C); the flag
/// is left as it is. Returns the new ids and whether `stop` ended them.
#[allow(clippy::too_many_arguments)]
pub fn generate_cached(
    model: &Model,
    lora: Option<&LoraSet>,
    cache: &mut KvCache,
    new_ids: &[u32],
    opts: &GenerateOptions,
    rng: &mut Rng,
    stop: Option<&AtomicBool>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, bool)> {
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let d = model.config.d_model;
    let limit = model.config.max_positions;
    let mut out = Vec::new();
    if new_ids.is_empty() {
        return Ok((out, false));
    }
    // The prompt (or a chat turn's new tokens) in one exact forward pass; then one token at a
    // time through the decode path.
    let hidden = model.forward(new_ids, cache, lora)?;
    let mut st = model.decode_state();
    st.hidden.copy_from_slice(&hidden[hidden.len() - d..]);
    model.decode_logits(&mut st);
    let mut len = cache.len;
    model.with_decoder(cache, lora, |step| {
        while out.len() < opts.max_tokens && len < limit {
            if stopped() {
                return Ok((out, true));
            }
            let next = sample(&st.logits, opts.temperature, opts.top_p, rng) as u32;
            if opts.stop_ids.contains(&next) {
                break;
            }
            out.push(next);
            on_token(next)?;
            step(next, &mut st)?;
            len += 1;
        }
        Ok((out, false))
    })
}
