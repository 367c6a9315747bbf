//! `edge-sft eval`: Σ log Pr(y|x) over a data set, with and without an adapter.

use super::common::{DataArgs, Progress};
use edge_sft::data::load_jsonl;
use edge_sft::error::Error;
use edge_sft::eval::{score_all, EvalReport, RecordScore};
use edge_sft::loaded::LoadedModel;
use edge_sft::Result;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Records (one JSON object per line):\n  \
{\"prompt\": ..., \"response\": ...}\n  {\"instruction\": ..., \"input\": ..., \"output\": ...}\n  \
{\"messages\": [{\"role\": \"user\", \"content\": ...}, {\"role\": \"assistant\", \"content\": ...}]}\n\n\
With --adapter, both the base model and the adapted model are scored, so the gain is visible.")]
pub struct Args {
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL data to score.
    #[arg(long)]
    pub data: PathBuf,
    /// An adapter: a PEFT folder (adapter_config.json + adapter_model.safetensors, e.g. a tune
    /// --out) or a GGUF LoRA file (adapter.gguf).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// With --adapter, skip scoring the base model.
    #[arg(long, requires = "adapter")]
    pub adapter_only: bool,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Print one JSON object (sum_logprob, scored_tokens, mean_nll, perplexity, records, skipped).
    #[arg(long)]
    pub json: bool,
    /// Write one JSON line per record (line, sum_logprob, scored_tokens, tokens) to this file.
    #[arg(long)]
    pub per_example: Option<PathBuf>,
    /// With --per-example, also write each record's token ids ("ids") and the positions whose
    /// token is scored ("scored"), e.g. to check another runtime tokenizes the same.
    #[arg(long, requires = "per_example")]
    pub per_example_ids: bool,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn print_report(name: &str, r: &EvalReport) {
    println!("{name}");
    println!("  records         {} (skipped {})", r.records, r.skipped);
    println!("  scored tokens   {}", r.scored_tokens);
    println!("  Σ log Pr(y|x)   {:.4}", r.sum_logprob);
    println!("  mean NLL/token  {:.6}", r.mean_nll);
    println!("  perplexity      {:.4}", r.perplexity);
}

fn report_json(r: &EvalReport) -> serde_json::Value {
    json!({
        "sum_logprob": r.sum_logprob,
        "scored_tokens": r.scored_tokens,
        "mean_nll": r.mean_nll,
        "perplexity": r.perplexity,
        "records": r.records,
        "skipped": r.skipped,
    })
}

pub fn run(a: Args) -> Result<()> {
    super::init_threads(a.threads)?;
    let mut lm = LoadedModel::open(&a.model)?;
    a.data_args.template.apply(&mut lm)?;
    let lora = a
        .adapter
        .as_deref()
        .map(|d| lm.read_adapter(d))
        .transpose()?;
    let ds = load_jsonl(&a.data, &lm.tokenizer, &lm.chat, &a.data_args.options())?;
    let skipped = ds.skipped_bad + ds.skipped_too_long;
    if skipped > 0 {
        eprintln!(
            "note: skipped {} malformed and {} over-long records",
            ds.skipped_bad, ds.skipped_too_long
        );
    }

    let run_base = lora.is_none() || !a.adapter_only;
    let base: Option<Vec<RecordScore>> = if run_base {
        let mut p = Progress::new("scoring base");
        Some(score_all(&lm.model, &ds.examples, None, |d, t| {
            p.update(d, t)
        })?)
    } else {
        None
    };
    let adapted: Option<Vec<RecordScore>> = match &lora {
        Some(l) => {
            let mut p = Progress::new("scoring adapter");
            Some(score_all(&lm.model, &ds.examples, Some(l), |d, t| {
                p.update(d, t)
            })?)
        }
        None => None,
    };
    let main_scores = adapted
        .as_ref()
        .or(base.as_ref())
        .expect("one of the two ran");
    let main = EvalReport::from_scores(main_scores, skipped);
    let base_report = base.as_ref().map(|b| EvalReport::from_scores(b, skipped));

    if let Some(path) = &a.per_example {
        let mut text = String::new();
        for (i, (s, ex)) in main_scores.iter().zip(&ds.examples).enumerate() {
            let mut o = json!({
                "line": s.line,
                "sum_logprob": s.sum_logprob,
                "scored_tokens": s.scored_tokens,
                "tokens": s.tokens,
            });
            if let (Some(b), true) = (&base, adapted.is_some()) {
                o["base_sum_logprob"] = json!(b[i].sum_logprob);
            }
            if a.per_example_ids {
                let scored: Vec<usize> = (0..ex.mask.len()).filter(|&t| ex.mask[t]).collect();
                o["ids"] = json!(ex.ids);
                o["scored"] = json!(scored);
            }
            text.push_str(&o.to_string());
            text.push('\n');
        }
        let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io(path, e))?;
    }

    if a.json {
        let mut o = report_json(&main);
        if let (Some(b), true) = (&base_report, adapted.is_some()) {
            o["base"] = report_json(b);
        }
        println!("{o}");
    } else {
        if let (Some(b), true) = (&base_report, adapted.is_some()) {
            print_report("base", b);
            print_report("adapter", &main);
            println!(
                "gain            Σ log Pr(y|x) {:+.4}, mean NLL {:+.6}",
                main.sum_logprob - b.sum_logprob,
                main.mean_nll - b.mean_nll
            );
        } else {
            print_report("base", &main);
        }
    }
    Ok(())
}
