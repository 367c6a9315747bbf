//! `edge-sft tune --lora`: response-masked LoRA SFT on a frozen quantized base.

use super::common::DataArgs;
use super::run_toml::RunSettings;
use super::tune_progress::{summarize, CliHooks};
use edge_sft::data::{load_jsonl, Dataset};
use edge_sft::error::Error;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::Target;
use edge_sft::train::checkpoint;
use edge_sft::train::lock::OutLock;
use edge_sft::train::optim::Schedule;
use edge_sft::train::plan::{self, DEFAULT_WARMUP_RATIO};
use edge_sft::train::trainer::{tune, Keep, TuneOptions, DEFAULT_BATCH_SIZE, DEFAULT_PATIENCE};
use edge_sft::Result;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KeepArg {
    /// The best-scoring held-out step (the last step when nothing is held out).
    Best,
    /// The last step.
    Last,
}

#[derive(clap::Args)]
#[command(
    after_help = "The loss is the mean negative log-likelihood of the response tokens only \
(Σ log Pr(y|x) is maximised, starting from the pretrained weights); --loss-on all trains the joint \
objective instead. Loss is normalised by the number of scored tokens in each optimizer step, \
across its micro-batches, as PEFT/TRL do.\n\n\
Defaults (chosen by a sweep on three data sets at 50, 200 and 1,000 records, \
benches/results/defaults.md): --batch-size 2, --lr 5e-4 (up to 1e-3 on fewer than 400 \
records), cosine schedule with 5% warm-up, \
1.5 epochs (at least 60 steps where 2 epochs allow: two epochs on up to 60 records), LoRA r=8 α=16 on all seven projections. A few percent of the records are held \
out and scored 10 times a run; the adapter of the best-scoring step is kept, and the run stops \
early once 3 scorings in a row (--patience) have not improved on it. A run that diverges \
(non-finite or collapsing loss) stops with an error and writes nothing of the bad step.\n\n\
Output folder: adapter_config.json + adapter_model.safetensors (PEFT), adapter.gguf (llama.cpp \
--lora, ollama ADAPTER), metrics.jsonl, checkpoint/, and run.toml: every setting of the run \
(defaults, seed, thread count, absolute paths), written as it starts; \
`edge-sft tune --config OUT/run.toml --out NEW` repeats it, to the same adapter bytes.\n\
Ctrl-C (or SIGTERM) saves a checkpoint; continue with --resume OUT.\n\n\
Example:\n  edge-sft tune --lora --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\\n    \
--data train.jsonl --eval-data heldout.jsonl --out runs/me"
)]
pub struct Args {
    /// Train LoRA adapters: the only method, so also what happens without this flag (the base
    /// stays frozen either way).
    #[arg(long)]
    pub lora: bool,
    /// Read flags from a TOML file: each key is a flag's long name, e.g. `lr = 5e-4`,
    /// `batch-size = 1`, `targets = ["q", "v"]`, `grad-checkpoint = true`. Flags on the command
    /// line win; relative paths are relative to the file's folder. Every run's OUT/run.toml is
    /// such a file.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
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
    /// Peak learning rate [default: 5e-4, larger on a small data set: 5e-4 · √(200 / steps per
    /// epoch), at most 1e-3, so in steps of 2 records 100 records get 1e-3, 200 get 7.3e-4 and 400 or
    /// more 5e-4].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Passes over the training data [default: 1.5, or 60 steps where two epochs allow: in the
    /// default steps of 2 records, up to 60 records get 2 epochs, from 80 records 1.5].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Records per optimizer step (their gradients are accumulated over as many micro-batches
    /// as --batch-tokens needs).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Most tokens in one micro-batch: the memory cap. Records are packed up to it, never split.
    #[arg(long, default_value_t = 1024)]
    pub batch_tokens: usize,
    /// Linear warm-up steps (default: --warmup-ratio of the run).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Warm-up as a fraction of all steps, at most 100 steps (when --warmup is not given).
    #[arg(long, default_value_t = DEFAULT_WARMUP_RATIO)]
    pub warmup_ratio: f32,
    /// Learning-rate decay after the warm-up, to 0 at the last step.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Seeds the LoRA initialisation, the record order and the held-out split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Without --eval-data, hold out this fraction of the training records (seeded; at least 5,
    /// at most 200; none when the file is too small) and score them instead. 0 = no held-out set.
    #[arg(long, default_value_t = 0.05)]
    pub eval_split: f32,
    /// Score the held-out records every N steps (default: 10 times a run; 0 = only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Which adapter to leave in --out: the best-scoring step on the held-out records (the latest
    /// one within noise of the lowest NLL: 1% + 0.005 nats, or twice the standard error of the
    /// record-by-record difference when that is larger), or the last step.
    #[arg(long, value_enum, default_value = "best")]
    pub keep: KeepArg,
    /// Stop early when this many held-out scorings in a row do not beat the last one that
    /// improved by more than 1% + 0.005 nats; on a held-out set too small to see a change of
    /// that size, only scorings clearly worse (by twice the standard error) count. 0 = always
    /// run to the end. Needs held-out records (the split or --eval-data).
    #[arg(long, default_value_t = DEFAULT_PATIENCE)]
    pub patience: usize,
    /// Save a checkpoint every N steps (0 = only at the end; default: every 2 minutes and at the
    /// end).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Continue training an existing adapter: a PEFT folder (from edge-sft or PEFT itself) or a
    /// GGUF LoRA file. Its rank, α and targets replace --rank, --alpha and --targets.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Element type of OUT/adapter.gguf, the llama.cpp/ollama adapter written beside the PEFT files.
    #[arg(long, value_enum, default_value = "f32")]
    pub adapter_dtype: super::export::DtypeArg,
    /// Keep only each layer's input and recompute the rest in backward (less memory).
    #[arg(long)]
    pub grad_checkpoint: bool,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to train: auto (the CPU; it names a GPU it finds, whose CUDA step is not yet
    /// verified and runs only when asked for), cpu, or cuda (the GPU, or an error naming what
    /// is missing).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: edge_sft::device::DeviceChoice,
    /// The effective settings, written to OUT/run.toml (set by main from the final matches).
    #[arg(skip)]
    pub settings: Option<RunSettings>,
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
        let unread = match ds.skipped_over_bytes {
            0 => String::new(),
            n => format!(
                " ({n} of them lines over {} KB, skipped unread)",
                edge_sft::data::lines::record_byte_limit(a.max_seq) >> 10
            ),
        };
        eprintln!(
            "{}: skipped {} malformed and {} over-long records{unread}",
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
        // `--config RUN/run.toml --resume RUN` meets the file's absolute `out` here.
        if absolute(r) != absolute(o) {
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
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    // Before anything in the folder is read or cleared: one run per folder.
    let _lock = OutLock::acquire(&out)?;
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
    let device = edge_sft::device::resolve(a.device, &edge_sft::device::CudaStatus::probe())?;
    eprintln!("device: {}", device.why);
    super::common::print_cpu_kernels();
    let threads = super::init_threads(a.threads)?;
    // The settings are written before anything slow, so a killed run has them too. A resume
    // writes them once the trainer has accepted the checkpoint (their options must match it).
    let settings = a.settings.clone().map(|mut s| {
        s.set_path("out", &out);
        s.set_int("threads", threads as u64);
        s
    });
    if let (Some(s), false) = (&settings, resume) {
        s.write(&out, false)?;
    }
    let mut lm = LoadedModel::open(&a.model)?;
    a.data_args.template.apply(&mut lm)?;
    let mut train = load(&a.data, &lm, &a.data_args)?;
    let eval = match &a.eval_data {
        Some(p) => Some(load(p, &lm, &a.data_args)?),
        None => split_off_holdout(&mut train, &a),
    };
    // Records are tokenized: the tokenizer's vocabulary and merge tables are not needed for
    // training, and freeing them lowers the run's peak memory.
    let LoadedModel {
        model, tokenizer, ..
    } = lm;
    drop(tokenizer);

    let mut opts = TuneOptions {
        rank: a.rank,
        alpha: a.alpha,
        dropout: a.dropout,
        targets: parse_targets(&a.targets)?,
        lr: a
            .lr
            .unwrap_or_else(|| plan::default_lr(train.examples.len(), a.batch_size)),
        epochs: a.epochs,
        steps: a.steps,
        batch_size: a.batch_size,
        batch_tokens: a.batch_tokens,
        warmup: a.warmup,
        warmup_ratio: a.warmup_ratio,
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
        keep: match a.keep {
            KeepArg::Best => Keep::Best,
            KeepArg::Last => Keep::Last,
        },
        patience: a.patience,
        grad_checkpoint: a.grad_checkpoint,
        adapter_dtype: a.adapter_dtype.into(),
        // Absolute, so that a run repeated from its run.toml (absolute paths) writes the same
        // adapter metadata and resumes with the same options.
        base_model: absolute(&a.model).display().to_string(),
        init_adapter: a.init_adapter.as_deref().map(absolute),
        cuda: device.cuda,
    };
    if let Some(p) = &a.init_adapter {
        let start = edge_sft::format::gguf_adapter::read_any_adapter(p, &model.config)?;
        eprintln!(
            "starting from {}: r={} α={} on {}",
            p.display(),
            start.rank,
            start.alpha,
            start
                .targets
                .iter()
                .map(|t| t.short())
                .collect::<Vec<_>>()
                .join(",")
        );
        opts.rank = start.rank;
        opts.alpha = start.alpha;
        opts.targets = start.targets;
    }
    let total = plan::total_steps(train.examples.len(), a.batch_size, a.epochs, a.steps);
    eprintln!(
        "tuning {} ({} threads), LoRA r={} α={} on {}, lr {}{}",
        a.model.display(),
        threads,
        opts.rank,
        opts.alpha,
        opts.targets
            .iter()
            .map(|t| t.short())
            .collect::<Vec<_>>()
            .join(","),
        short_float(opts.lr),
        if a.lr.is_none() {
            " (the default for this many records)"
        } else {
            ""
        }
    );
    eprintln!(
        "{}",
        plan::describe(
            train.examples.len(),
            a.batch_size,
            a.epochs,
            a.steps,
            total,
            plan::warmup_steps(total, a.warmup, a.warmup_ratio)
        )
    );
    if eval.is_some() && a.patience > 0 {
        eprintln!(
            "stops early if {} held-out scorings in a row make no progress (--patience)",
            a.patience
        );
    }

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
    let mut hooks = CliHooks::new(stop, out.clone(), bar);
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
    if let (Some(s), true) = (&settings, resume) {
        s.write(&out, true)?;
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
    summarize(&a, &out, &outcome, eval.is_some());
    Ok(())
}

/// Without --eval-data: move a seeded `--eval-split` sample of the training records into a
/// held-out set (never trained on), and say so.
fn split_off_holdout(train: &mut Dataset, a: &Args) -> Option<Dataset> {
    let n = train.examples.len();
    let (keep, held) = plan::holdout(n, a.eval_split, a.seed);
    if held.is_empty() {
        if a.eval_split > 0.0 {
            eprintln!(
                "{n} records are too few to hold some out for scoring; give --eval-data to see \
                 held-out NLL"
            );
        }
        return None;
    }
    let all = std::mem::take(&mut train.examples);
    let mut slots: Vec<Option<edge_sft::data::Example>> = all.into_iter().map(Some).collect();
    let take = |slots: &mut Vec<Option<_>>, idx: &[usize]| -> Vec<_> {
        idx.iter().filter_map(|&i| slots[i].take()).collect()
    };
    let held_ex = take(&mut slots, &held);
    train.examples = take(&mut slots, &keep);
    eprintln!(
        "held out {} of {n} records (--eval-split {}, seed {}) to score the run; they are not \
         trained on",
        held_ex.len(),
        a.eval_split,
        a.seed
    );
    Some(Dataset {
        examples: held_ex,
        ..Dataset::default()
    })
}

/// `2e-3` as typed, but a computed `7.2547e-4` as `7.25e-4`.
fn short_float(v: f32) -> String {
    let exact = format!("{v:e}");
    if exact.len() <= 8 {
        exact
    } else {
        format!("{v:.2e}")
    }
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
