//! `edge-sft tune --lora`: response-masked LoRA SFT on a frozen quantized base.

use super::common::DataArgs;
use edge_sft::data::{load_jsonl, Dataset};
use edge_sft::error::Error;
use edge_sft::eval::EvalReport;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::Target;
use edge_sft::train::checkpoint;
use edge_sft::train::optim::Schedule;
use edge_sft::train::trainer::{tune, StepReport, TrainHooks, TuneOptions};
use edge_sft::Result;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    Linear,
    Constant,
}

#[derive(clap::Args)]
#[command(
    after_help = "The loss is the mean negative log-likelihood of the response tokens only \
(Σ log Pr(y|x) is maximised, starting from the pretrained weights); --loss-on all trains the joint \
objective instead. Loss is normalised by the number of scored tokens in each optimizer step, \
across --grad-accum micro-batches, as PEFT/TRL do.\n\n\
Output folder: adapter_config.json + adapter_model.safetensors (PEFT), metrics.jsonl, checkpoint/.\n\
Ctrl-C (or SIGTERM) saves a checkpoint; continue with --resume OUT.\n\n\
Example:\n  edge-sft tune --lora --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\\n    \
--data train.jsonl --eval-data heldout.jsonl --out runs/me"
)]
pub struct Args {
    /// Train LoRA adapters (the only method for now; the base stays frozen).
    #[arg(long, required = true)]
    pub lora: bool,
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Training data (JSONL: prompt/response, instruction/input/output, or messages).
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out data, scored before training, every --eval-every steps and at the end.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Output folder (default: the --resume folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Overwrite a folder that already holds another run.
    #[arg(long)]
    pub force: bool,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA α; the update is scaled by α/r.
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f32,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Projections to adapt, comma-separated from q,k,v,o,gate,up,down.
    #[arg(long, default_value = "q,k,v,o,gate,up,down", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f32,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Tokens per micro-batch; records are packed up to this, never split.
    #[arg(long, default_value_t = 1024)]
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Score --eval-data every N steps (0 = only at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Save a checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    /// Start from an existing PEFT adapter (same --rank, --alpha, --targets) instead of a fresh one.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Keep only each layer's input and recompute the rest in backward (less memory).
    #[arg(long)]
    pub grad_checkpoint: bool,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

struct CliHooks {
    stop: Arc<AtomicBool>,
    bar: Option<indicatif::ProgressBar>,
    last_eval: Option<f64>,
}

impl TrainHooks for CliHooks {
    fn on_step(&mut self, r: &StepReport) {
        let eval = self
            .last_eval
            .map(|e| format!(" eval {e:.4}"))
            .unwrap_or_default();
        let msg = format!(
            "loss {:.4}{eval} lr {:.2e} |g| {:.3} {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, r.tokens_per_s
        );
        match &self.bar {
            Some(b) => {
                b.set_length(r.total_steps as u64);
                b.set_position(r.step as u64);
                b.set_message(msg);
            }
            None => eprintln!("step {}/{} {msg}", r.step, r.total_steps),
        }
    }
    fn on_arena(&mut self, bytes: usize, table: &[(&'static str, usize)]) {
        let parts: Vec<String> = table
            .iter()
            .map(|(name, n)| format!("{name} {:.1}", (4 * n) as f64 / 1e6))
            .collect();
        let line = format!(
            "activation arena: {:.1} MB, allocated once ({} MB)",
            bytes as f64 / 1e6,
            parts.join(", ")
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn on_eval(&mut self, step: usize, e: &EvalReport) {
        self.last_eval = Some(e.mean_nll);
        let line = format!(
            "eval @ step {step}: mean NLL {:.4}, Σ log Pr(y|x) {:.2} over {} tokens",
            e.mean_nll, e.sum_logprob, e.scored_tokens
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn on_checkpoint(&mut self, step: usize) {
        if self.bar.is_none() {
            eprintln!("checkpoint saved at step {step}");
        }
    }
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn parse_targets(v: &[String]) -> Result<Vec<Target>> {
    v.iter()
        .map(|s| {
            Target::parse(s.trim()).ok_or_else(|| {
                Error::Usage(format!(
                    "unknown --targets entry '{s}' (use q,k,v,o,gate,up,down)"
                ))
            })
        })
        .collect()
}

fn load(path: &std::path::Path, lm: &LoadedModel, a: &DataArgs) -> Result<Dataset> {
    let ds = load_jsonl(path, &lm.tokenizer, &lm.chat, &a.options())?;
    if ds.skipped_bad + ds.skipped_too_long > 0 {
        eprintln!(
            "{}: skipped {} malformed and {} over-long records",
            path.display(),
            ds.skipped_bad,
            ds.skipped_too_long
        );
    }
    Ok(ds)
}

pub fn run(a: Args) -> Result<()> {
    let out = a
        .out
        .clone()
        .or_else(|| a.resume.clone())
        .ok_or_else(|| Error::Usage("give --out DIR (or --resume DIR)".into()))?;
    if let (Some(r), Some(o)) = (&a.resume, &a.out) {
        if r != o {
            return Err(Error::Usage(
                "--resume and --out name different folders".into(),
            ));
        }
    }
    let resume = a.resume.is_some();
    if resume && !checkpoint::exists(&out) {
        return Err(Error::Usage(format!(
            "{}: no checkpoint to resume from",
            out.display()
        )));
    }
    let has_run = checkpoint::exists(&out) || out.join("adapter_config.json").exists();
    if !resume && has_run {
        if !a.force {
            return Err(Error::Usage(format!(
                "{} already holds a run; use --resume {0} to continue it or --force to start over",
                out.display()
            )));
        }
        let _ = std::fs::remove_dir_all(checkpoint::checkpoint_dir(&out));
        let _ = std::fs::remove_file(out.join("metrics.jsonl"));
    }
    let threads = super::init_threads(a.threads)?;
    let lm = LoadedModel::open(&a.model)?;
    let train = load(&a.data, &lm, &a.data_args)?;
    let eval = a
        .eval_data
        .as_ref()
        .map(|p| load(p, &lm, &a.data_args))
        .transpose()?;
    // Records are tokenized: the tokenizer's vocabulary and merge tables are not needed for
    // training, and freeing them lowers the run's peak memory.
    let LoadedModel {
        model, tokenizer, ..
    } = lm;
    drop(tokenizer);

    let opts = TuneOptions {
        rank: a.rank,
        alpha: a.alpha,
        dropout: a.dropout,
        targets: parse_targets(&a.targets)?,
        lr: a.lr,
        epochs: a.epochs,
        steps: a.steps,
        batch_tokens: a.batch_tokens.max(1),
        grad_accum: a.grad_accum,
        warmup: a.warmup,
        schedule: match a.schedule {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::Linear => Schedule::Linear,
            ScheduleArg::Constant => Schedule::Constant,
        },
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        eval_every: a.eval_every,
        save_every: a.save_every,
        grad_checkpoint: a.grad_checkpoint,
        base_model: a.model.display().to_string(),
        init_adapter: a.init_adapter.clone(),
    };
    eprintln!(
        "tuning {} on {} records ({} threads), LoRA r={} α={} on {}",
        a.model.display(),
        train.examples.len(),
        threads,
        opts.rank,
        opts.alpha,
        a.targets.join(",")
    );

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::Usage(format!("signal handler: {e}")))?;
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(1);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} ETA {eta}] {msg}",
            )
            .expect("valid template"),
        );
        b
    });
    let mut hooks = CliHooks {
        stop,
        bar,
        last_eval: None,
    };
    let outcome = tune(
        &model,
        &train.examples,
        eval.as_ref().map(|d| d.examples.as_slice()),
        &opts,
        &out,
        resume,
        &mut hooks,
    )?;
    if let Some(b) = &hooks.bar {
        b.finish();
    }
    if outcome.interrupted {
        eprintln!(
            "interrupted at step {}/{}; checkpoint saved. Continue with: --resume {}",
            outcome.steps_done,
            outcome.total_steps,
            out.display()
        );
        return Ok(());
    }
    if let (Some(b), Some(f)) = (&outcome.base_eval, &outcome.final_eval) {
        println!(
            "held-out mean NLL: base {:.4} → adapter {:.4}  (Σ log Pr(y|x): {:.2} → {:.2})",
            b.mean_nll, f.mean_nll, b.sum_logprob, f.sum_logprob
        );
    }
    println!("adapter written to {}", out.display());
    Ok(())
}
