//! The options of a training run (`TuneOptions`), their defaults and their checks: what the
//! CLI, the config file and the daemon fill in, and what a checkpoint compares on resume.

use super::optim::Schedule;
use super::plan;
use crate::error::{Error, Result};
use crate::format::gguf_adapter::AdapterDtype;
use crate::model::lora::Target;
use serde::{Deserialize, Serialize};

/// Which adapter a run leaves in its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Keep {
    /// The adapter of the step with the lowest held-out NLL (the last one when nothing is
    /// scored).
    #[default]
    Best,
    /// The adapter of the last step.
    Last,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneOptions {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<Target>,
    pub lr: f32,
    /// Passes over the data; `None`: the default rule (`plan::default_steps`).
    pub epochs: Option<usize>,
    /// Optimizer steps; overrides `epochs` when set.
    pub steps: Option<usize>,
    /// Records per optimizer step.
    pub batch_size: usize,
    /// Most tokens in one micro-batch (the memory cap); a step's records are packed into as
    /// few micro-batches as this allows and their gradients accumulated.
    pub batch_tokens: usize,
    /// Linear warm-up steps; `None` takes `warmup_ratio` of the run (see `plan::warmup_steps`).
    pub warmup: Option<usize>,
    pub warmup_ratio: f32,
    pub schedule: Schedule,
    pub weight_decay: f32,
    /// 0 disables clipping.
    pub max_grad_norm: f32,
    pub seed: u64,
    /// Steps between held-out scorings; `None`: about `plan::EVALS_PER_RUN` per run.
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps (0: only at the end); `None`: every `SAVE_SECONDS` of run time.
    pub save_every: Option<usize>,
    pub keep: Keep,
    /// Stop when this many held-out scorings in a row make no progress (see `made_progress`);
    /// 0 never stops early. Only with held-out data.
    #[serde(default)]
    pub patience: usize,
    pub grad_checkpoint: bool,
    /// Element type of the `adapter.gguf` written beside the PEFT files.
    pub adapter_dtype: AdapterDtype,
    pub base_model: String,
    /// Start from this adapter (a PEFT folder or a GGUF LoRA file) instead of a fresh
    /// initialisation; rank, α and targets must match the options (the CLI takes them from
    /// the adapter).
    #[serde(skip)]
    pub init_adapter: Option<std::path::PathBuf>,
    /// Run the step on the GPU (`--device cuda`; not part of what a resume compares).
    #[serde(skip)]
    pub cuda: bool,
}

/// The defaults, chosen by the sweep in `benches/results/defaults.md`.
pub const DEFAULT_LR: f32 = 5e-4;
/// Held-out scorings without progress before a run stops early: 3 of the ~10 a run makes,
/// so about 30% of the planned run.
pub const DEFAULT_PATIENCE: usize = 3;
/// Records per optimizer step. A step decodes the frozen weights once per micro-batch whatever
/// its rows, so two short records cost less than two steps of one: on the sweep's sets at 200
/// records, batch 2 for 1.5 epochs took 0.78–0.85× the time of batch 1 for 1.5 epochs at the
/// same held-out quality (benches/results/defaults.md).
pub const DEFAULT_BATCH_SIZE: usize = 2;
/// Time between checkpoints when no `save_every` is given: a kill loses at most this much
/// work, and a short run writes its 3·(LoRA size) checkpoint once, at the end.
pub const SAVE_SECONDS: f64 = 120.0;

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            lr: DEFAULT_LR,
            epochs: None,
            steps: None,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_tokens: 1024,
            warmup: None,
            warmup_ratio: plan::DEFAULT_WARMUP_RATIO,
            schedule: Schedule::Cosine,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            eval_every: None,
            save_every: None,
            keep: Keep::Best,
            patience: DEFAULT_PATIENCE,
            grad_checkpoint: false,
            adapter_dtype: AdapterDtype::F32,
            base_model: String::new(),
            init_adapter: None,
            cuda: false,
        }
    }
}

impl TuneOptions {
    /// The options that change the result (compared on resume).
    pub(crate) fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("options serialize");
        if let Some(o) = v.as_object_mut() {
            // Run length may grow on resume (incremental training); the rest must match.
            for k in [
                "eval_every",
                "save_every",
                "keep",
                "patience",
                "grad_checkpoint",
                "adapter_dtype",
                "base_model",
                "steps",
                "epochs",
            ] {
                o.remove(k);
            }
        }
        v
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Usage(m.to_string()));
        if self.rank == 0 {
            return bad("--rank must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("--dropout must be in [0, 1)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr must be a positive number");
        }
        if self.targets.is_empty() {
            return bad("--targets must name at least one projection");
        }
        if self.batch_tokens == 0 || self.batch_size == 0 {
            return bad("--batch-size and --batch-tokens must be at least 1");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("--warmup-ratio must be in [0, 1)");
        }
        if self.steps.is_none() && self.epochs == Some(0) {
            return bad("--epochs must be at least 1 (or give --steps)");
        }
        Ok(())
    }
}
