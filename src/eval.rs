//! Scoring a data set: the quantities the objective is made of — Σ log Pr(y|x), scored tokens,
//! mean NLL per scored token, perplexity — with or without an adapter.

use crate::data::Example;
use crate::error::{Error, Result};
use crate::model::forward::KvCache;
use crate::model::lora::LoraSet;
use crate::model::Model;
use serde::Serialize;

/// Score of one record.
#[derive(Debug, Clone, Serialize)]
pub struct RecordScore {
    pub line: usize,
    pub sum_logprob: f64,
    pub scored_tokens: usize,
    pub tokens: usize,
}

/// Totals over a data set.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub sum_logprob: f64,
    pub scored_tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub records: usize,
    pub skipped: usize,
    /// −Σ log Pr(y|x) of each scored record, in order: lets two scorings of the same records be
    /// compared pair by pair (`train::heldout`). Not part of the printed report.
    #[serde(skip)]
    pub record_nll: Vec<f64>,
}

impl EvalReport {
    pub fn from_scores(scores: &[RecordScore], skipped: usize) -> Self {
        let sum_logprob: f64 = scores.iter().map(|s| s.sum_logprob).sum();
        let scored_tokens: usize = scores.iter().map(|s| s.scored_tokens).sum();
        let mean_nll = if scored_tokens > 0 {
            -sum_logprob / scored_tokens as f64
        } else {
            f64::NAN
        };
        EvalReport {
            sum_logprob,
            scored_tokens,
            mean_nll,
            perplexity: mean_nll.exp(),
            records: scores.len(),
            skipped,
            record_nll: scores.iter().map(|s| -s.sum_logprob).collect(),
        }
    }
}

/// An example built in memory by a caller must have one mask entry per id.
pub(crate) fn check_mask_len(ex: &Example) -> Result<()> {
    if ex.ids.len() != ex.mask.len() {
        return Err(Error::Usage(format!(
            "record at line {}: {} ids but {} mask entries",
            ex.line,
            ex.ids.len(),
            ex.mask.len()
        )));
    }
    Ok(())
}

/// Σ log Pr(ids[t] | ids[..t]) over the positions t where `mask[t]` is set.
pub fn score_example(model: &Model, ex: &Example, lora: Option<&LoraSet>) -> Result<RecordScore> {
    check_mask_len(ex)?;
    let d = model.config.d_model;
    let mut cache = KvCache::new(model.layers.len());
    let hidden = model.forward(&ex.ids, &mut cache, lora)?; // [n, d]
                                                            // Only rows that predict a scored token go through the output projection.
    let rows: Vec<usize> = (1..ex.ids.len()).filter(|&t| ex.mask[t]).collect();
    let mut gathered = Vec::with_capacity(rows.len() * d); // [scored, d]
    for &t in &rows {
        gathered.extend_from_slice(&hidden[(t - 1) * d..t * d]);
    }
    let targets: Vec<u32> = rows.iter().map(|&t| ex.ids[t]).collect();
    let lp = model.target_logprobs(&gathered, &targets);
    Ok(RecordScore {
        line: ex.line,
        sum_logprob: lp.iter().sum(),
        scored_tokens: rows.len(),
        tokens: ex.ids.len(),
    })
}

/// Score every example (packed several to a forward pass; see `train::score`), calling
/// `progress(done, total)` as batches finish.
pub fn score_all(
    model: &Model,
    examples: &[Example],
    lora: Option<&LoraSet>,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<RecordScore>> {
    crate::train::score::score_packed(model, examples, lora, progress)
}
