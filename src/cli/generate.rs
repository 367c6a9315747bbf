//! `edge-sft generate`: a reply to one prompt, streamed to stdout as it is produced.

use edge_sft::error::Error;
use edge_sft::infer::generate::{generate, GenerateOptions};
use edge_sft::infer::stream::TextStream;
use edge_sft::loaded::LoadedModel;
use edge_sft::tokenize::chat::Message;
use edge_sft::Result;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter to apply: a PEFT folder (e.g. a tune --out) or a GGUF LoRA file (adapter.gguf).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// An optional system message (otherwise the template's default, if any).
    #[arg(long)]
    pub system: Option<String>,
    /// Most new tokens to produce.
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
    /// How the prompt becomes text: the model's chat template, or raw (no template), the same
    /// names as tune's and eval's --template.
    #[arg(long, value_enum, default_value = "model")]
    pub template: super::common::TemplateArg,
    /// Same as --template raw (kept for scripts written before --template).
    #[arg(long, hide = true)]
    pub raw: bool,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        return Err(Error::Usage("--top-p must be in (0, 1]".into()));
    }
    if a.temperature < 0.0 || !a.temperature.is_finite() {
        return Err(Error::Usage("--temperature must be ≥ 0".into()));
    }
    super::init_threads(a.threads)?;
    let mut lm = LoadedModel::open(&a.model)?;
    if !a.raw {
        a.template.apply(&mut lm);
    }
    let lora = a
        .adapter
        .as_deref()
        .map(|d| lm.read_adapter(d))
        .transpose()?;
    let tok = &lm.tokenizer;

    let raw = a.raw || matches!(a.template, super::common::TemplateArg::Raw);
    let prompt_ids = if raw {
        let mut ids = Vec::new();
        if tok.add_bos {
            ids.extend(tok.bos_id);
        }
        ids.extend(tok.encode(&a.prompt)?);
        ids
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s.clone()));
        }
        msgs.push(Message::new("user", a.prompt.clone()));
        let text = lm.chat.render(&msgs, true)?;
        tok.encode(&text)?
    };
    if prompt_ids.is_empty() {
        return Err(Error::Usage("the prompt is empty".into()));
    }
    let mut stop_ids: Vec<u32> = tok.eot_id.into_iter().chain(tok.eos_id).collect();
    stop_ids.dedup();
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids,
    };

    let mut stream = TextStream::new(tok);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    generate(&lm.model, lora.as_ref(), &prompt_ids, &opts, |id| {
        let s = stream.push(id)?;
        if !s.is_empty() {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        }
        Ok(())
    })?;
    let (rest, _) = stream.finish()?;
    let _ = out.write_all(rest.as_bytes());
    let _ = writeln!(out);
    Ok(())
}
