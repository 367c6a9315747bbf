//! `edge-sft merge --model M --adapter A --out OUT`: fold a LoRA adapter into its base model
//! (W' = W + (α/r)·B·A) and write a standalone GGUF.

use super::common::Progress;
use edge_sft::error::Error;
use edge_sft::format::gguf::GgufFile;
use edge_sft::format::gguf_adapter::{gguf_base_name, read_any_adapter};
use edge_sft::merge::{merge_gguf, MergeOptions};
use edge_sft::merge_hf::merge_to_hf;
use edge_sft::model::load::gguf_config;
use edge_sft::model::lora::{LoraSet, Target};
use edge_sft::quant::GgmlType;
use edge_sft::Result;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum MergeDtype {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

impl From<MergeDtype> for GgmlType {
    fn from(d: MergeDtype) -> Self {
        match d {
            MergeDtype::F32 => GgmlType::F32,
            MergeDtype::F16 => GgmlType::F16,
            MergeDtype::Bf16 => GgmlType::BF16,
            MergeDtype::Q8_0 => GgmlType::Q8_0,
            MergeDtype::Q4_0 => GgmlType::Q4_0,
            MergeDtype::Q4_1 => GgmlType::Q4_1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// One GGUF file (llama.cpp, ollama, edge-sft).
    Gguf,
    /// A Hugging Face folder: config.json, model.safetensors (f32/f16/bf16), tokenizer.json,
    /// tokenizer_config.json (transformers, edge-sft).
    Hf,
}

/// The long `merge --help` text (set on the subcommand in main.rs, where clap reads it).
pub const LONG_ABOUT: &str =
    "Fold a LoRA adapter into its base model and write one standalone GGUF file.\n\n\
For every projection the adapter touches, the base weight W is dequantized, the adapter's update \
(α/r)·B·A is added in f32, and the result is quantized again (by default in the base tensor's own \
type when that is a float type or Q8_0, in Q8_0 when the base's is coarser: 4-bit grids round a \
small update back to the base weights). Every other tensor, the tokenizer, the chat template and all other metadata are \
copied unchanged; a tied output projection stays tied. The result needs no --adapter: any GGUF \
runtime (llama.cpp, ollama, edge-sft itself) loads it as a plain model. With --format hf the \
merged model is written instead as a Hugging Face folder (float tensors) for transformers.";

#[derive(clap::Args)]
#[command(after_help = "Example:\n  \
edge-sft tune --lora --model model.Q4_1.gguf --data train.jsonl --out runs/me\n  \
edge-sft merge --model model.Q4_1.gguf --adapter runs/me --out model-me.gguf\n  \
edge-sft eval --model model-me.gguf --data heldout.jsonl\n  \
edge-sft merge --model model.Q4_1.gguf --adapter runs/me --format hf --out model-me-hf/\n\n\
Requantizing costs accuracy: the merged weights are rounded to the output type again. Rounding \
to the base's own 4-bit grid undoes most of a small update, since W + delta rounds back to W: on \
SmolLM2-135M Q4_1 a 60-step adapter kept ~7% of its update that way (docs/merge.md). So merged \
projections of a 4-bit, 5-bit or K-quant base are written as Q8_0 unless --dtype says otherwise \
(the file grows by about half). \
Always compare `eval --model BASE --adapter A` with `eval --model MERGED`. The file is written tensor by \
tensor (memory stays about one tensor) to a temp file that is renamed into place when complete.")]
pub struct Args {
    /// The base model, a .gguf file: the one the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter: a PEFT folder (e.g. a `tune --out` folder) or a GGUF LoRA file
    /// (adapter.gguf).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The merged model to write: a .gguf file, or a folder with --format hf.
    #[arg(long)]
    pub out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "gguf")]
    pub format: FormatArg,
    /// GGUF: type of the merged projections (default: the base tensor's type if float or Q8_0,
    /// else Q8_0; untouched tensors are always copied unchanged). HF: type of every tensor, f32 (default), f16 or
    /// bf16.
    #[arg(long, value_enum)]
    pub dtype: Option<MergeDtype>,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The 4-bit type of a touched base tensor that --dtype asks to requantize into that same type.
fn same_4bit_grid(g: &GgufFile, lora: &LoraSet, dtype: Option<GgmlType>) -> Option<GgmlType> {
    lora.layers.iter().enumerate().find_map(|(layer, slots)| {
        Target::ALL.into_iter().find_map(|t| {
            slots[t.index()].as_ref()?;
            let ty = g.tensor(&gguf_base_name(layer, t))?.dtype;
            let four_bit = matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1);
            (four_bit && dtype == Some(ty)).then_some(ty)
        })
    })
}

pub fn run(a: Args) -> Result<()> {
    let meta = std::fs::metadata(&a.model).map_err(|e| Error::io(&a.model, e))?;
    if meta.is_dir() {
        return Err(Error::Usage(format!(
            "{}: merge needs a GGUF base model (a .gguf file); Hugging Face folders are not \
             supported as a merge base",
            a.model.display()
        )));
    }
    let g = GgufFile::open(&a.model)?;
    let cfg = gguf_config(&g)?;
    let lora = read_any_adapter(&a.adapter, &cfg)?;
    let pairs = lora.layers.iter().flatten().flatten().count();
    eprintln!(
        "merging {} ({pairs} pairs, r={}, scale {}) into {}",
        a.adapter.display(),
        lora.rank,
        lora.scale,
        a.model.display()
    );
    let opts = MergeOptions {
        dtype: a.dtype.map(GgmlType::from),
    };
    if a.format == FormatArg::Hf {
        let dtype = opts.dtype.unwrap_or(GgmlType::F32);
        let mut p = Progress::new("tensor");
        let report = merge_to_hf(&g, &cfg, &lora, &a.out, dtype, |done, total, _| {
            p.update(done, total)
        })?;
        eprintln!(
            "wrote {}/{{config.json,model.safetensors,tokenizer.json,tokenizer_config.json}} \
             ({} tensors in {}, {} merged; {:.1} MB)",
            a.out.display(),
            report.tensors,
            dtype.name(),
            report.merged,
            report.file_bytes as f64 / 1e6
        );
        return Ok(());
    }
    if let Some(ty) = same_4bit_grid(&g, &lora, opts.dtype) {
        eprintln!(
            "note: requantizing into the base's own {} grid rounds a small LoRA update mostly \
             back to the base weights; check the merged model with `edge-sft eval`, or merge \
             with --dtype q8_0 (or f16) to keep the update (docs/merge.md)",
            ty.name()
        );
    }
    let mut p = Progress::new("tensor");
    let report = merge_gguf(&g, &lora, &a.out, &opts, |done, total, _| {
        p.update(done, total)
    })?;
    let ty = opts
        .dtype
        .map_or("Q8_0 or the base tensor's float type", GgmlType::name);
    eprintln!(
        "wrote {} ({} tensors: {} merged into {ty}, {} copied; {:.1} MB)\n\
         use it with: edge-sft eval --model {} --data DATA.jsonl",
        a.out.display(),
        report.tensors,
        report.merged,
        report.tensors - report.merged,
        report.file_bytes as f64 / 1e6,
        a.out.display()
    );
    Ok(())
}
