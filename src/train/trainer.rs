//! The training loop as a library function: a config, data, an output folder and hooks in;
//! an adapter and metrics out. The CLI and the daemon both call `tune`.

use super::arena::{size_table, Arena};
use super::batch::{pack_indices, Batch};
use super::checkpoint::{self, State};
use super::optim::{global_norm, lr_at, AdamW, Schedule};
use super::params::{for_each_tensor_mut, init_lora, zeros_like};
use super::proj::Dropout;
use super::step::forward_backward_in;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::{score_all, EvalReport};
use crate::format::peft::{read_adapter, write_adapter};
use crate::infer::sampling::Rng;
use crate::model::lora::{LoraSet, Target};
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneOptions {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<Target>,
    pub lr: f32,
    pub epochs: usize,
    /// Optimizer steps; overrides `epochs` when set.
    pub steps: Option<usize>,
    /// Tokens per micro-batch (records are packed up to this).
    pub batch_tokens: usize,
    pub grad_accum: usize,
    pub warmup: usize,
    pub schedule: Schedule,
    pub weight_decay: f32,
    /// 0 disables clipping.
    pub max_grad_norm: f32,
    pub seed: u64,
    pub eval_every: usize,
    pub save_every: usize,
    pub grad_checkpoint: bool,
    pub base_model: String,
    /// Start from this PEFT adapter instead of a fresh initialisation (rank, α and targets
    /// must match the options).
    #[serde(skip)]
    pub init_adapter: Option<std::path::PathBuf>,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            lr: 2e-4,
            epochs: 3,
            steps: None,
            batch_tokens: 1024,
            grad_accum: 1,
            warmup: 10,
            schedule: Schedule::Cosine,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            eval_every: 50,
            save_every: 50,
            grad_checkpoint: false,
            base_model: String::new(),
            init_adapter: None,
        }
    }
}

impl TuneOptions {
    /// The options that change the result (compared on resume).
    fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("options serialize");
        if let Some(o) = v.as_object_mut() {
            // Run length may grow on resume (incremental training); the rest must match.
            for k in [
                "eval_every",
                "save_every",
                "grad_checkpoint",
                "base_model",
                "steps",
                "epochs",
            ] {
                o.remove(k);
            }
        }
        v
    }

    fn validate(&self) -> Result<()> {
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
        if self.batch_tokens == 0 || self.grad_accum == 0 {
            return bad("--batch-tokens and --grad-accum must be at least 1");
        }
        if self.steps.is_none() && self.epochs == 0 {
            return bad("--epochs must be at least 1 (or give --steps)");
        }
        Ok(())
    }
}

/// One optimizer step's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Mean NLL per scored token over the step (the quantity minimised).
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens: usize,
    pub scored_tokens: usize,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// Progress and cancellation, for the CLI's bar or the daemon.
pub trait TrainHooks {
    fn on_step(&mut self, _r: &StepReport) {}
    fn on_eval(&mut self, _step: usize, _e: &EvalReport) {}
    fn on_checkpoint(&mut self, _step: usize) {}
    /// Once before the first step: the activation arena's bytes and its size table
    /// (buffer group, f32 values).
    fn on_arena(&mut self, _bytes: usize, _table: &[(&'static str, usize)]) {}
    /// Polled between steps; true writes a checkpoint and returns.
    fn should_stop(&self) -> bool {
        false
    }
}

/// Hooks that do nothing.
pub struct NoHooks;
impl TrainHooks for NoHooks {}

pub struct TuneOutcome {
    pub lora: LoraSet,
    pub steps_done: usize,
    pub total_steps: usize,
    pub base_eval: Option<EvalReport>,
    pub final_eval: Option<EvalReport>,
    pub interrupted: bool,
}

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Steps of one epoch: each a list of micro-batches, each a list of example indices.
fn epoch_steps(order: &[usize], lens: &[usize], o: &TuneOptions) -> Vec<Vec<Vec<usize>>> {
    pack_indices(order, lens, o.batch_tokens)
        .chunks(o.grad_accum)
        .map(|c| c.to_vec())
        .collect()
}

fn fingerprint(examples: &[Example]) -> String {
    // FNV-1a over every id and mask bit: cheap and stable.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for ex in examples {
        for (&id, &m) in ex.ids.iter().zip(&ex.mask) {
            for b in id.to_le_bytes().into_iter().chain([m as u8, 0xff]) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    format!("{h:016x}:{}", examples.len())
}

fn mean_eval(model: &Model, data: &[Example], lora: Option<&LoraSet>) -> Result<EvalReport> {
    let scores = score_all(model, data, lora, |_, _| {})?;
    Ok(EvalReport::from_scores(&scores, 0))
}

/// Train LoRA adapters on `train`; write checkpoints, metrics and the PEFT adapter into `out`.
/// With `resume`, continue from `out/checkpoint`.
pub fn tune(
    model: &Model,
    train: &[Example],
    eval: Option<&[Example]>,
    opts: &TuneOptions,
    out: &Path,
    resume: bool,
    hooks: &mut dyn TrainHooks,
) -> Result<TuneOutcome> {
    opts.validate()?;
    if train.is_empty() {
        return Err(Error::Usage("no training records".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let lens: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let fp = fingerprint(train);

    // Total steps: --steps, or the sum over epochs of each epoch's packed steps.
    let total_steps = match opts.steps {
        Some(s) => s,
        None => (0..opts.epochs)
            .map(|e| epoch_steps(&epoch_order(train.len(), opts.seed, e), &lens, opts).len())
            .sum(),
    };

    let mut params = init_lora(
        &model.config,
        opts.rank,
        opts.alpha,
        &opts.targets,
        opts.seed,
    );
    if let Some(dir) = &opts.init_adapter {
        let start = read_adapter(dir, &model.config)?;
        let mut want = opts.targets.clone();
        want.sort();
        if start.rank != opts.rank || start.alpha != opts.alpha || start.targets != want {
            return Err(Error::Usage(format!(
                "{}: the adapter has r={} α={} on {:?}, but the run asks for r={} α={} on {:?}",
                dir.display(),
                start.rank,
                start.alpha,
                start.targets,
                opts.rank,
                opts.alpha,
                want
            )));
        }
        params = start;
    }
    let mut opt = AdamW::new(&params, opts.weight_decay);
    let mut state = State {
        format: 1,
        step: 0,
        total_steps,
        epoch: 0,
        epoch_order: epoch_order(train.len(), opts.seed, 0),
        cursor: 0,
        seed: opts.seed,
        data_fingerprint: fp.clone(),
        adam_t: 0,
        tensors_file: String::new(),
        options: opts.identity(),
        best_eval: None,
    };
    if resume {
        let saved = checkpoint::load_state(out)?;
        if saved.data_fingerprint != fp {
            return Err(Error::Usage(format!(
                "{}: the checkpoint was trained on different data (or a different tokenizer/template); \
                 refusing to resume",
                out.display()
            )));
        }
        if saved.options != opts.identity() {
            return Err(Error::Usage(format!(
                "{}: the checkpoint was made with other options:\n  saved: {}\n  now:   {}",
                out.display(),
                saved.options,
                opts.identity()
            )));
        }
        checkpoint::load_tensors(out, &saved, &mut params, &mut opt)?;
        state = saved;
        state.total_steps = total_steps;
    }

    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;

    let base_eval = match (eval, resume) {
        (Some(ev), false) => {
            let r = mean_eval(model, ev, None)?;
            hooks.on_eval(0, &r);
            Some(r)
        }
        _ => None,
    };
    let save = |state: &State, params: &LoraSet, opt: &AdamW| -> Result<()> {
        checkpoint::save(out, state, params, opt)
            .and_then(|_| write_adapter(out, params, &model.config, &opts.base_model, opts.dropout))
            .map_err(|e| {
                Error::Usage(format!(
                    "writing the checkpoint for step {} failed: {e}\nthe previous checkpoint in {} is kept",
                    state.step,
                    checkpoint::checkpoint_dir(out).display()
                ))
            })
    };

    let mut grads = zeros_like(&params);
    let mut steps = epoch_steps(&state.epoch_order, &lens, opts);
    // Buffers for the longest micro-batch any step can pack (records are never split).
    let total: usize = lens.iter().sum();
    let t_max = lens
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(opts.batch_tokens.min(total));
    let dropout_on = opts.dropout > 0.0;
    let mut arena = Arena::new(
        &model.config,
        &params,
        t_max,
        opts.grad_checkpoint,
        dropout_on,
    );
    hooks.on_arena(
        arena.bytes(),
        &size_table(
            &model.config,
            &params,
            t_max,
            opts.grad_checkpoint,
            dropout_on,
        ),
    );
    let mut final_eval = None;
    let mut interrupted = false;
    while state.step < total_steps {
        if hooks.should_stop() {
            interrupted = true;
            break;
        }
        if state.cursor >= steps.len() {
            state.epoch += 1;
            state.cursor = 0;
            state.epoch_order = epoch_order(train.len(), opts.seed, state.epoch);
            steps = epoch_steps(&state.epoch_order, &lens, opts);
        }
        let t0 = Instant::now();
        let micro = &steps[state.cursor];
        let batches: Vec<Batch> = micro
            .iter()
            .map(|idx| Batch::from_examples(idx.iter().map(|&i| &train[i])))
            .collect();
        // Loss normalisation: mean over all scored tokens of the optimizer step, across
        // accumulation micro-steps (what PEFT/TRL do).
        let scored: usize = batches.iter().map(|b| b.scored.len()).sum();
        let tokens: usize = batches.iter().map(|b| b.len()).sum();
        for_each_tensor_mut(&mut grads, |g| g.fill(0.0));
        let mut nll = 0.0f64;
        if scored > 0 {
            let scale = 1.0 / scored as f32;
            for (mi, b) in batches.iter().enumerate() {
                let dropout = (opts.dropout > 0.0).then(|| Dropout {
                    p: opts.dropout,
                    rng: Rng::new(opts.seed ^ ((state.step as u64) << 20) ^ mi as u64 ^ 0xD50F),
                });
                let o = forward_backward_in(
                    &mut arena,
                    model,
                    &params,
                    b,
                    &mut grads,
                    scale,
                    opts.grad_checkpoint,
                    dropout,
                )?;
                nll += o.nll_sum;
            }
        }
        let loss = if scored > 0 { nll / scored as f64 } else { 0.0 };
        let gn = global_norm(&grads);
        if !loss.is_finite() || !gn.is_finite() {
            return Err(Error::Numeric(format!(
                "step {}: loss {loss}, gradient norm {gn}; stopping. The last good checkpoint in {} is kept; \
                 try a lower --lr",
                state.step + 1,
                checkpoint::checkpoint_dir(out).display()
            )));
        }
        let mult = if opts.max_grad_norm > 0.0 {
            (opts.max_grad_norm as f64 / (gn + 1e-6)).min(1.0) as f32
        } else {
            1.0
        };
        let lr = lr_at(opts.lr, opts.schedule, opts.warmup, total_steps, state.step);
        opt.step(&mut params, &grads, lr, mult);
        state.step += 1;
        state.cursor += 1;

        let mut eval_loss = None;
        let last = state.step == total_steps;
        if let Some(ev) = eval {
            if (opts.eval_every > 0 && state.step.is_multiple_of(opts.eval_every)) || last {
                let r = mean_eval(model, ev, Some(&params))?;
                eval_loss = Some(r.mean_nll);
                hooks.on_eval(state.step, &r);
                if last {
                    final_eval = Some(r);
                }
            }
        }
        let rep = StepReport {
            step: state.step,
            total_steps,
            epoch: state.epoch,
            loss,
            lr,
            grad_norm: gn,
            tokens,
            scored_tokens: scored,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            eval_loss,
        };
        let line = serde_json::to_string(&rep).expect("report serializes");
        writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        hooks.on_step(&rep);
        if (opts.save_every > 0 && state.step.is_multiple_of(opts.save_every)) || last {
            save(&state, &params, &opt)?;
            hooks.on_checkpoint(state.step);
        }
    }
    if interrupted {
        save(&state, &params, &opt)?;
        hooks.on_checkpoint(state.step);
    }
    Ok(TuneOutcome {
        lora: params,
        steps_done: state.step,
        total_steps,
        base_eval,
        final_eval,
        interrupted,
    })
}
