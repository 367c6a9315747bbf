//! `edge-sft generate`: a reply to one prompt, streamed to stdout as it is produced.

use edge_sft::error::Error;
use edge_sft::infer::generate::generate;
use edge_sft::infer::stream::TextStream;
use edge_sft::loaded::LoadedModel;
use edge_sft::tokenize::chat::Message;
use edge_sft::Result;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

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
    #[command(flatten)]
    pub sampling: super::common::SamplingArgs,
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
    /// After the reply, print the prompt and decode speeds to stderr (decode: tokens 2..N, each
    /// timed from the previous token's emission; see benches/decode_vs_llamacpp.py).
    #[arg(long)]
    pub timings: bool,
}

pub fn run(a: Args) -> Result<()> {
    super::init_threads(a.threads)?;
    let mut lm = LoadedModel::open(&a.model)?;
    if !a.raw {
        a.template.apply(&mut lm)?;
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
    let opts = a.sampling.options(stop_ids)?;

    let mut stream = TextStream::new(tok);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = start;
    let mut emitted = 0usize;
    generate(&lm.model, lora.as_ref(), &prompt_ids, &opts, |id| {
        last = Instant::now();
        first.get_or_insert(last);
        emitted += 1;
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
    if a.timings {
        let first = first.unwrap_or(last);
        let prefill = (first - start).as_secs_f64();
        let decode = (last - first).as_secs_f64();
        let rate = (emitted.saturating_sub(1)) as f64 / decode.max(1e-9);
        eprintln!(
            "timings: prompt {} tokens, first token after {:.1} ms; decode {} tokens in {:.1} ms = {:.2} tokens/s",
            prompt_ids.len(),
            prefill * 1e3,
            emitted.saturating_sub(1),
            decode * 1e3,
            rate
        );
    }
    Ok(())
}
