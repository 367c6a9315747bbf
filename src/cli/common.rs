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
    pub fn apply(self, lm: &mut edge_sft::loaded::LoadedModel) {
        use edge_sft::tokenize::chat::ChatTemplate;
        if let TemplateArg::Gemma = self {
            let t = &lm.tokenizer;
            lm.chat = ChatTemplate::gemma(t.bos_token.as_deref(), t.eos_token.as_deref());
            return;
        }
        if let (TemplateArg::Model, Some(name)) = (self, lm.chat.fallback_name()) {
            eprintln!(
                "note: {} has no chat template (tokenizer.chat_template); using the built-in \
                 {name} turn format (--template {} to say so, --template raw for none)",
                lm.model.path.display(),
                name.to_lowercase()
            );
        }
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
