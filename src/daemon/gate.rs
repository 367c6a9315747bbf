//! The gate: a candidate adapter replaces the current one only if it scores better on the
//! person's held-back pairs and no more than `gate_margin` worse (relative) on a fixed general
//! set. Every decision, with its numbers, is appended to `STATE/decisions.jsonl`.

use super::state::append_lines;
use crate::data::Example;
use crate::error::Result;
use crate::eval::{score_all, EvalReport};
use crate::model::lora::LoraSet;
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DECISIONS_FILE: &str = "decisions.jsonl";

/// Mean NLL per scored token of the current adapter (or the base model) and the candidate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Pair {
    pub current: f64,
    pub candidate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub round: u64,
    pub unix_time: u64,
    pub promoted: bool,
    pub reason: String,
    pub personal: Option<Pair>,
    pub personal_records: usize,
    pub general: Option<Pair>,
    pub general_records: usize,
    /// (candidate − base) / base on the general set (`general.current` holds the base model's NLL).
    pub general_rise: Option<f64>,
    pub margin: f64,
    /// The version published when promoted.
    pub version: Option<String>,
    pub train_pairs: usize,
    pub replay_pairs: usize,
    pub heldout_pairs: usize,
    pub steps: usize,
    /// Which try of the round this is (0: the first; see `backoff_tries`) and its learning rate.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub lr: f32,
    /// General pairs (`general_replay`) trained on beside the person's.
    #[serde(default)]
    pub general_replay_pairs: usize,
}

/// The rule, on numbers alone: (promote, reason).
pub fn judge(personal: Pair, general: Option<Pair>, margin: f64) -> (bool, String) {
    if !(personal.candidate.is_finite() && personal.current.is_finite()) {
        return (false, "personal NLL is not finite".into());
    }
    if personal.candidate >= personal.current {
        return (
            false,
            format!(
                "personal NLL did not improve ({:.4} → {:.4})",
                personal.current, personal.candidate
            ),
        );
    }
    if let Some(g) = general {
        let rise = (g.candidate - g.current) / g.current.abs().max(1e-12);
        if !g.candidate.is_finite() || rise > margin {
            return (
                false,
                format!(
                    "general NLL rose {:.2}% over the base model's ({:.4} → {:.4}), more than the {:.2}% margin",
                    100.0 * rise,
                    g.current,
                    g.candidate,
                    100.0 * margin
                ),
            );
        }
        return (
            true,
            format!(
                "personal NLL {:.4} → {:.4}; general {:.4} (base) → {:.4} ({:+.2}%, margin {:.2}%)",
                personal.current,
                personal.candidate,
                g.current,
                g.candidate,
                100.0 * rise,
                100.0 * margin
            ),
        );
    }
    (
        true,
        format!(
            "personal NLL {:.4} → {:.4} (no general set configured)",
            personal.current, personal.candidate
        ),
    )
}

/// Mean NLL of a set under an adapter (None: the base model).
pub fn mean_nll(model: &Model, set: &[Example], lora: Option<&LoraSet>) -> Result<f64> {
    let scores = score_all(model, set, lora, |_, _| {})?;
    Ok(EvalReport::from_scores(&scores, 0).mean_nll)
}

/// Score both adapters on a set.
pub fn score_pair(
    model: &Model,
    set: &[Example],
    current: Option<&LoraSet>,
    candidate: &LoraSet,
) -> Result<Pair> {
    Ok(Pair {
        current: mean_nll(model, set, current)?,
        candidate: mean_nll(model, set, Some(candidate))?,
    })
}

/// The decision already recorded for a try of a round (a restart after a crash between
/// recording it and acting on it), if any.
pub fn recorded(state_dir: &Path, round: u64, attempt: u32) -> Option<Decision> {
    let text = std::fs::read_to_string(state_dir.join(DECISIONS_FILE)).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Decision>(l).ok())
        .find(|d| d.round == round && d.attempt == attempt)
}

/// Whether the gate refused the candidate for its rise on the general set (and nothing else).
pub fn refused_for_general(d: &Decision) -> bool {
    !d.promoted
        && d.personal.is_some_and(|p| p.candidate < p.current)
        && d.general_rise.is_some_and(|r| r.is_nan() || r > d.margin)
}

pub fn last_decision(state_dir: &Path) -> Option<Decision> {
    let text = std::fs::read_to_string(state_dir.join(DECISIONS_FILE)).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Decision>(l).ok())
}

/// Append a decision (fsynced).
pub fn record(state_dir: &Path, d: &Decision) -> Result<()> {
    let p = state_dir.join(DECISIONS_FILE);
    let mut line = serde_json::to_vec(d).expect("serializes");
    line.push(b'\n');
    append_lines(&p, &line)
}
