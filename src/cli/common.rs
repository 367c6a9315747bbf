//! Arguments shared by the subcommands that read data: loss placement, template, length.

use edge_sft::data::{DataOptions, LossOn, TemplateMode};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LossOnArg {
    /// Score only response tokens: the conditional objective log Pr(y|x).
    Response,
    /// Score every token after the first: the joint objective log Pr([x, y]).
    All,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum TemplateArg {
    /// The model's own chat template (GGUF tokenizer.chat_template / tokenizer_config.json).
    Model,
    /// No template: prompt and response tokenized apart and their ids concatenated, then EOS.
    Raw,
    /// The built-in Gemma turn format (`<start_of_turn>user ... <end_of_turn>`, BOS first),
    /// as the instruction-tuned Gemma 3 template renders it: for Gemma base models, which
    /// ship no template.
    Gemma,
}

impl TemplateArg {
    /// Apply the choice to a loaded model (`gemma` replaces its chat template) and say on
    /// stderr when a built-in format stands in for a missing template.
    /// With the model's template, a template that cannot be used is an error here, before
    /// any work.
    pub fn apply(self, lm: &mut edge_sft::loaded::LoadedModel) -> edge_sft::Result<()> {
        use edge_sft::tokenize::chat::ChatTemplate;
        if let TemplateArg::Gemma = self {
            let t = &lm.tokenizer;
            lm.chat = ChatTemplate::gemma(t.bos_token.as_deref(), t.eos_token.as_deref());
            return Ok(());
        }
        if let (TemplateArg::Model, Some(why)) = (self, &lm.chat.refused) {
            return Err(edge_sft::Error::Template(why.clone()));
        }
        if let (TemplateArg::Model, Some(name)) = (self, lm.chat.fallback_name()) {
            eprintln!(
                "note: {} has no chat template (tokenizer.chat_template); using the built-in \
                 {name} turn format (--template {} to say so, --template raw for none)",
                lm.model.path.display(),
                name.to_lowercase()
            );
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Which tokens carry loss.
    #[arg(long, value_enum, default_value = "response")]
    pub loss_on: LossOnArg,
    /// How records become text.
    #[arg(long, value_enum, default_value = "model")]
    pub template: TemplateArg,
    /// Longest record in tokens; longer prompts are cut from the left, responses are kept.
    /// A line over max(1 MiB, 64 bytes per token) is skipped unread and counted.
    #[arg(long, default_value_t = 2048)]
    pub max_seq: usize,
    /// Skip malformed records (and count them) instead of stopping at the first one.
    #[arg(long)]
    pub skip_bad: bool,
}

impl DataArgs {
    pub fn options(&self) -> DataOptions {
        DataOptions {
            loss_on: match self.loss_on {
                LossOnArg::Response => LossOn::Response,
                LossOnArg::All => LossOn::All,
            },
            template: match self.template {
                TemplateArg::Model => TemplateMode::Model,
                TemplateArg::Raw => TemplateMode::Raw,
                TemplateArg::Gemma => TemplateMode::Model,
            },
            max_seq: self.max_seq,
            skip_bad: self.skip_bad,
        }
    }
}

/// Progress on stderr: a rewritten line on a terminal, a line per 10% otherwise.
pub struct Progress {
    label: &'static str,
    tty: bool,
    last_decile: usize,
    start: std::time::Instant,
}

impl Progress {
    pub fn new(label: &'static str) -> Self {
        use std::io::IsTerminal;
        Progress {
            label,
            tty: std::io::stderr().is_terminal(),
            last_decile: 0,
            start: std::time::Instant::now(),
        }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        let secs = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 {
            secs / done as f64 * (total - done) as f64
        } else {
            0.0
        };
        if self.tty {
            eprint!(
                "\r{} {done}/{total}  {:.0}s elapsed, ETA {:.0}s   ",
                self.label, secs, eta
            );
            if done == total {
                eprintln!();
            }
        } else {
            let decile = done * 10 / total.max(1);
            if decile > self.last_decile || done == total {
                self.last_decile = decile;
                eprintln!("{} {done}/{total} ({:.0}s elapsed)", self.label, secs);
            }
        }
    }
}

/// The decoding flags `generate` and `chat` share.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Most new tokens per reply.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy (deterministic); higher values sample more freely.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Sampling seed (only used when --temperature > 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// Check the flags and turn them into decoding options that stop at `stop_ids`.
    pub fn options(
        &self,
        stop_ids: Vec<u32>,
    ) -> edge_sft::error::Result<edge_sft::infer::generate::GenerateOptions> {
        use edge_sft::error::Error;
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return Err(Error::Usage("--top-p must be in (0, 1]".into()));
        }
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            return Err(Error::Usage("--temperature must be ≥ 0".into()));
        }
        Ok(edge_sft::infer::generate::GenerateOptions {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_ids,
        })
    }
}

/// The CPU kernel path a run uses, and the faster opt-in path where this CPU has one that the
/// automatic choice skips (reduced precision is never chosen for the user).
pub(crate) fn print_cpu_kernels() {
    use edge_sft::cpu::{active_isa, available_isas, isa_name, Isa};
    let isa = active_isa();
    eprintln!("cpu kernels: {}", isa_name(isa));
    if !isa.reduced_precision() && available_isas().contains(&Isa::AmxBf16) {
        eprintln!(
            "  this CPU has AMX tiles: EDGE_SFT_ISA=amxbf16 trains up to about twice as fast \
             (bf16 products, f32 sums; docs/performance.md)"
        );
    }
}
