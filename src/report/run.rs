//! A finished (or running) tune folder read back: the steps of `metrics.jsonl`, the base and
//! kept held-out NLL of `checkpoint/state.json`, and the numbers `report` prints.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One logged optimizer step (the fields of `trainer::StepReport` the figures use).
#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub step: usize,
    #[serde(default)]
    pub total_steps: usize,
    pub loss: f64,
    pub lr: f64,
    #[serde(default)]
    pub tokens_per_s: f64,
    #[serde(default)]
    pub eval_loss: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct StateFile {
    #[serde(default)]
    base_eval: Option<f64>,
    #[serde(default)]
    kept_step: Option<usize>,
    #[serde(default)]
    kept_eval: Option<f64>,
}

/// A run folder's history.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    /// The folder's name, for titles and legends.
    pub name: String,
    /// One entry per step, in step order (a resumed run's repeated steps: the later line wins).
    pub steps: Vec<Step>,
    /// The base model's held-out NLL (step 0), when the run scored one.
    pub base_eval: Option<f64>,
    /// The step whose adapter the run kept, and its held-out NLL.
    pub kept: Option<(usize, Option<f64>)>,
}

impl RunData {
    /// Read `dir/metrics.jsonl` (required) and `dir/checkpoint/state.json` (optional).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut steps: Vec<Step> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let s: Step = serde_json::from_str(line)
                .map_err(|e| Error::format(&path, format!("line {}: {e}", i + 1)))?;
            if !s.loss.is_finite() {
                continue;
            }
            steps.push(s);
        }
        // A resumed run logs the steps after its checkpoint again: keep the last of each.
        steps.reverse();
        let mut seen = std::collections::HashSet::new();
        steps.retain(|s| seen.insert(s.step));
        steps.sort_by_key(|s| s.step);
        if steps.is_empty() {
            return Err(Error::format(&path, "no steps logged yet"));
        }
        let state_path = dir.join("checkpoint/state.json");
        let state: StateFile = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(RunData {
            dir: dir.to_path_buf(),
            name,
            steps,
            base_eval: state.base_eval,
            kept: state.kept_step.map(|s| (s, state.kept_eval)),
        })
    }

    /// The held-out scorings: (step, mean NLL), the base model's at step 0 first.
    pub fn evals(&self) -> Vec<(usize, f64)> {
        self.base_eval
            .map(|b| (0, b))
            .into_iter()
            .chain(
                self.steps
                    .iter()
                    .filter_map(|s| s.eval_loss.map(|e| (s.step, e))),
            )
            .filter(|e| e.1.is_finite())
            .collect()
    }

    /// The training loss smoothed by an exponential moving average whose span grows with the
    /// run (about a twentieth of it, between 1 and 50 steps).
    pub fn smoothed(&self) -> Vec<f64> {
        let span = (self.steps.len() as f64 / 20.0).clamp(1.0, 50.0);
        ema(self.steps.iter().map(|s| s.loss), 2.0 / (span + 1.0))
    }

    /// The numbers of `report`'s table.
    pub fn summary(&self) -> Summary {
        let last = self.steps.last().expect("a run has steps");
        let mut speeds: Vec<f64> = self
            .steps
            .iter()
            .skip(if self.steps.len() > 5 { 2 } else { 0 })
            .map(|s| s.tokens_per_s)
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        speeds.sort_by(f64::total_cmp);
        let kept_eval = match self.kept {
            Some((_, Some(e))) => Some(e),
            _ => self.evals().last().map(|e| e.1),
        };
        Summary {
            name: self.name.clone(),
            steps: last.step,
            total_steps: last.total_steps.max(last.step),
            final_loss: self.smoothed().last().copied().unwrap_or(last.loss),
            base_eval: self.base_eval,
            kept_eval,
            kept_step: self.kept.map(|k| k.0),
            tokens_per_s: speeds.get(speeds.len() / 2).copied(),
        }
    }
}

/// A debiased exponential moving average (the first value is not pulled toward zero).
pub fn ema(values: impl Iterator<Item = f64>, alpha: f64) -> Vec<f64> {
    let (mut avg, mut weight) = (0.0, 0.0);
    values
        .map(|v| {
            avg = (1.0 - alpha) * avg + alpha * v;
            weight = (1.0 - alpha) * weight + alpha;
            avg / weight
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub steps: usize,
    pub total_steps: usize,
    /// The smoothed training loss at the last step.
    pub final_loss: f64,
    pub base_eval: Option<f64>,
    pub kept_eval: Option<f64>,
    pub kept_step: Option<usize>,
    /// Median tokens/s over the steps (the first two left out of runs over five steps).
    pub tokens_per_s: Option<f64>,
}

/// `report`'s table: one row per run.
pub fn table(rows: &[Summary]) -> String {
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    let mut lines = vec![[
        "run".to_string(),
        "steps".into(),
        "final loss".into(),
        "held-out NLL base → kept".into(),
        "tokens/s".into(),
    ]];
    for r in rows {
        let kept = match r.kept_step {
            Some(s) => format!("{} (step {s})", fmt(r.kept_eval)),
            None => fmt(r.kept_eval),
        };
        lines.push([
            r.name.clone(),
            if r.steps < r.total_steps {
                format!("{}/{}", r.steps, r.total_steps)
            } else {
                r.steps.to_string()
            },
            format!("{:.4}", r.final_loss),
            format!("{} → {kept}", fmt(r.base_eval)),
            r.tokens_per_s
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                let pad = " ".repeat(w - s.chars().count());
                if c == 0 || c == 3 {
                    format!("{s}{pad}")
                } else {
                    format!("{pad}{s}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_starts_at_the_first_value_and_follows() {
        let e = ema([2.0, 2.0, 2.0].into_iter(), 0.1);
        assert!(e.iter().all(|v| (v - 2.0).abs() < 1e-12));
        let e = ema([0.0, 1.0].into_iter(), 0.5);
        assert!((e[1] - 2.0 / 3.0).abs() < 1e-12);
    }
}
