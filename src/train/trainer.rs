//! The training loop as a library function: a config, data, an output folder and hooks in;
//! an adapter and metrics out. The CLI and the daemon both call `tune`.

use super::arena::size_table;
use super::batch::Batch;
use super::checkpoint::{self, fingerprint, State};
use super::diverge::{all_finite, DivergenceWatch};
use super::engine::Engine;
use super::optim::{global_norm, lr_at, AdamW};
use super::params::{copy_params, for_each_tensor_mut, init_lora, zeros_like};
use super::plan::{self, epoch_order, epoch_steps};
use super::proj::Dropout;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::{score_all, EvalReport};
use crate::format::gguf_adapter::{read_any_adapter, write_gguf_adapter, ADAPTER_FILE};
use crate::format::peft::write_adapter;
use crate::infer::sampling::Rng;
use crate::model::lora::LoraSet;
use crate::model::Model;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::heldout;
pub use super::heldout::{made_progress, within_noise};
pub use super::tune_options::{
    Keep, TuneOptions, DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_PATIENCE, SAVE_SECONDS,
};

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
    /// The run stops at `step`: `patience` held-out scorings in a row made no progress.
    fn on_early_stop(&mut self, _step: usize, _patience: usize) {}
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
    /// The parameters of the last step done.
    pub lora: LoraSet,
    pub steps_done: usize,
    pub total_steps: usize,
    pub warmup: usize,
    pub base_eval: Option<EvalReport>,
    /// The last step's held-out scores.
    pub final_eval: Option<EvalReport>,
    /// Lowest held-out mean NLL of the run and its step.
    pub best: Option<(usize, f64)>,
    /// Which step's adapter is in the output folder, and its held-out NLL when it was scored.
    pub kept_step: usize,
    pub kept_eval: Option<f64>,
    pub interrupted: bool,
    /// The held-out NLL made no progress in `patience` scorings, so the run ended before
    /// `total_steps` (at `steps_done`).
    pub stopped_early: bool,
    /// Tokens trained on (all micro-batches of every step of this invocation) and the time
    /// spent in steps, evaluations and checkpoints.
    pub tokens: usize,
    pub seconds: f64,
}

fn mean_eval(model: &Model, data: &[Example], lora: Option<&LoraSet>) -> Result<EvalReport> {
    let scores = score_all(model, data, lora, |_, _| {})?;
    Ok(EvalReport::from_scores(&scores, 0))
}

/// Train LoRA adapters on `train`; write checkpoints, metrics and the adapter files into `out`.
/// With `resume`, continue from `out/checkpoint`. The caller holds `lock::OutLock` on `out` for
/// the run (taken before it clears or checks the folder), so two runs never write one folder.
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
    let run_start = Instant::now();
    let lens: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let fp = fingerprint(train);
    let total_steps = plan::total_steps(train.len(), opts.batch_size, opts.epochs, opts.steps);
    let warmup = plan::warmup_steps(total_steps, opts.warmup, opts.warmup_ratio);
    let heldout_tokens: usize = eval.map_or(0, |ev| ev.iter().map(|e| e.ids.len()).sum());
    // Tokens an optimizer step trains on, on average over the records.
    let step_tokens = lens.iter().sum::<usize>() as f64 / train.len() as f64
        * opts.batch_size.min(train.len()) as f64;
    let eval_every = plan::eval_interval(total_steps, opts.eval_every, heldout_tokens, step_tokens);

    let mut params = init_lora(
        &model.config,
        opts.rank,
        opts.alpha,
        &opts.targets,
        opts.seed,
    );
    if let Some(dir) = &opts.init_adapter {
        let start = read_any_adapter(dir, &model.config)?;
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
        best_step: None,
        kept_step: None,
        kept_eval: None,
        progress_eval: None,
        stalled_evals: 0,
        progress_records: Vec::new(),
        lowest_records: Vec::new(),
        base_eval: None,
    };
    let mut resumed_kept = None;
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
        resumed_kept = checkpoint::load_tensors(out, &saved, &mut params, &mut opt)?;
        state = saved;
        state.total_steps = total_steps;
        // Resuming is a decision to train on: the stall count starts again.
        state.stalled_evals = 0;
    }

    let metrics_path = out.join("metrics.jsonl");
    // A resumed run appends to the log a kill may have torn (see `append_log`).
    let mut metrics = crate::format::append_log::open_log(&metrics_path, 0o644)?;

    let base_eval = match (eval, resume) {
        (Some(ev), false) => {
            let r = mean_eval(model, ev, None)?;
            hooks.on_eval(0, &r);
            heldout::record_base(&mut state, &r);
            Some(r)
        }
        _ => None,
    };
    // Both layouts of one adapter: PEFT (for Python) and GGUF (for llama.cpp / ollama).
    let write_kept = |params: &LoraSet, step: usize| -> Result<()> {
        if !all_finite(params) {
            return Err(Error::Numeric(format!(
                "the adapter of step {step} holds a non-finite value; not writing it (the adapter \
                 already in {} is kept); try a lower --lr",
                out.display()
            )));
        }
        write_adapter(out, params, &model.config, &opts.base_model, opts.dropout)
            .and_then(|_| {
                write_gguf_adapter(
                    &out.join(ADAPTER_FILE),
                    params,
                    &model.config,
                    &opts.base_model,
                    opts.adapter_dtype,
                )
            })
            .map_err(|e| {
                Error::Usage(format!(
                "writing the adapter of step {step} failed: {e}\nthe adapter already in {} is kept",
                out.display()
            ))
            })
    };
    // The adapter in `out` is the last step's, unless the run keeps its best held-out step and
    // has scored one: then it is the best step's, held in memory (one copy of the LoRA
    // parameters) and written with each checkpoint and at the end.
    let keeps_best = opts.keep == Keep::Best && eval.is_some();
    let mut best_params: Option<(usize, LoraSet)> = match (keeps_best, state.kept_step) {
        (true, Some(step)) => resumed_kept.map(|p| (step, p)),
        _ => None,
    };
    let save = |state: &State,
                params: &LoraSet,
                opt: &AdamW,
                best: &Option<(usize, LoraSet)>|
     -> Result<()> {
        let kept = best.as_ref().filter(|_| keeps_best).map(|(_, p)| p);
        checkpoint::save(out, state, params, opt, kept).map_err(|e| {
            Error::Usage(format!(
                "writing the checkpoint for step {} failed: {e}\nthe previous checkpoint in {} is kept",
                state.step,
                checkpoint::checkpoint_dir(out).display()
            ))
        })?;
        match best {
            Some((step, p)) if keeps_best => write_kept(p, *step),
            // A checkpoint from before kept parameters were saved with it: the kept step's
            // adapter is the one on disk.
            None if keeps_best && state.kept_step.is_some() => Ok(()),
            _ => write_kept(params, state.step),
        }
    };
    let mut last_save = Instant::now();
    let first_step = state.step;

    let mut grads = zeros_like(&params);
    let mut steps = epoch_steps(
        &state.epoch_order,
        &lens,
        opts.batch_size,
        opts.batch_tokens,
    );
    // Buffers for the longest micro-batch any step can pack (records are never split).
    let t_max = plan::max_micro_batch_tokens(&lens, opts.batch_size, opts.batch_tokens);
    let dropout_on = opts.dropout > 0.0;
    let mut engine = Engine::new(
        model,
        opts.cuda,
        &params,
        t_max,
        opts.grad_checkpoint,
        dropout_on,
    )?;
    hooks.on_arena(
        engine.arena_bytes(),
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
    let mut stopped_early = false;
    let mut tokens_trained = 0usize;
    let mut watch = DivergenceWatch::default();
    while state.step < total_steps {
        if hooks.should_stop() {
            interrupted = true;
            break;
        }
        if state.cursor >= steps.len() {
            state.epoch += 1;
            state.cursor = 0;
            state.epoch_order = epoch_order(train.len(), opts.seed, state.epoch);
            steps = epoch_steps(
                &state.epoch_order,
                &lens,
                opts.batch_size,
                opts.batch_tokens,
            );
        }
        let t0 = Instant::now();
        let micro = &steps[state.cursor];
        let batches: Vec<Batch> = micro
            .iter()
            .map(|idx| Batch::from_examples(idx.iter().map(|&i| &train[i])))
            .collect();
        // Loss normalisation: mean over all scored tokens of the optimizer step, across
        // its micro-batches (what PEFT/TRL do).
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
                let o = engine.micro_step(
                    state.step,
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
        if let Some(why) = watch.check(state.step + 1, loss, gn, &grads, model.config.vocab_size) {
            return Err(Error::Numeric(format!(
                "training diverged at {why}; stopping. Nothing of this step is written: the last \
                 checkpoint and adapter in {}, if any, are kept; try a lower --lr (now {:e})",
                out.display(),
                opts.lr
            )));
        }
        let mult = if opts.max_grad_norm > 0.0 {
            (opts.max_grad_norm as f64 / (gn + 1e-6)).min(1.0) as f32
        } else {
            1.0
        };
        let lr = lr_at(opts.lr, opts.schedule, warmup, total_steps, state.step);
        opt.step(&mut params, &grads, lr, mult);
        state.step += 1;
        state.cursor += 1;
        tokens_trained += tokens;
        let step_seconds = t0.elapsed().as_secs_f64();

        let mut eval_loss = None;
        let mut last = state.step == total_steps;
        if let Some(ev) = eval {
            if state.step.is_multiple_of(eval_every) || last {
                let r = mean_eval(model, ev, Some(&params))?;
                eval_loss = Some(r.mean_nll);
                hooks.on_eval(state.step, &r);
                let seen = heldout::record(&mut state, &r, opts.patience);
                if seen.stop && !last {
                    stopped_early = true;
                    last = true;
                }
                if seen.keep && keeps_best {
                    match &mut best_params {
                        Some((s, p)) => {
                            *s = state.step;
                            copy_params(p, &params);
                        }
                        None => best_params = Some((state.step, params.clone())),
                    }
                }
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
            tokens_per_s: tokens as f64 / step_seconds.max(1e-9),
            eval_loss,
        };
        let line = serde_json::to_string(&rep).expect("report serializes");
        metrics
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| Error::io(&metrics_path, e))?;
        hooks.on_step(&rep);
        if stopped_early {
            hooks.on_early_stop(state.step, opts.patience);
        }
        let due = match opts.save_every {
            Some(n) => n > 0 && state.step.is_multiple_of(n),
            None => last_save.elapsed().as_secs_f64() >= SAVE_SECONDS,
        };
        if due || last {
            save(&state, &params, &opt, &best_params)?;
            last_save = Instant::now();
            hooks.on_checkpoint(state.step);
        }
        if stopped_early {
            break;
        }
    }
    // A resumed run with nothing left to do (killed after its last checkpoint, possibly before
    // both adapter files were written) writes them again, so the folder is always complete.
    if interrupted || state.step == first_step {
        save(&state, &params, &opt, &best_params)?;
        hooks.on_checkpoint(state.step);
    }
    let best = state.best_step.zip(state.best_eval);
    let (kept_step, kept_eval) = match (keeps_best, state.kept_step) {
        (true, Some(s)) => (s, state.kept_eval),
        _ => (state.step, final_eval.as_ref().map(|e| e.mean_nll)),
    };
    Ok(TuneOutcome {
        lora: params,
        steps_done: state.step,
        total_steps,
        warmup,
        base_eval,
        final_eval,
        best,
        kept_step,
        kept_eval,
        interrupted,
        stopped_early,
        tokens: tokens_trained,
        seconds: run_start.elapsed().as_secs_f64(),
    })
}
