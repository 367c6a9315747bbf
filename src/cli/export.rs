//! `edge-sft export ADAPTER --model M --to gguf|peft --out PATH`: convert a LoRA adapter between
//! the PEFT layout (transformers/PEFT) and a GGUF LoRA (llama.cpp `--lora`, ollama `ADAPTER`).

use edge_sft::error::Error;
use edge_sft::format::gguf::GgufFile;
use edge_sft::format::gguf_adapter::{
    read_any_adapter, write_gguf_adapter, AdapterDtype, ADAPTER_FILE,
};
use edge_sft::format::hf_dir::HfDir;
use edge_sft::format::peft;
use edge_sft::model::config::ModelConfig;
use edge_sft::model::load::{gguf_config, hf_config};
use edge_sft::Result;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ToArg {
    /// One GGUF LoRA file, as llama.cpp's `--lora` and ollama's `ADAPTER` load it.
    Gguf,
    /// A PEFT folder (adapter_config.json + adapter_model.safetensors), Hugging Face row order.
    Peft,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DtypeArg> for AdapterDtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => AdapterDtype::F32,
            DtypeArg::F16 => AdapterDtype::F16,
            DtypeArg::Bf16 => AdapterDtype::Bf16,
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
edge-sft export runs/me --model model.Q4_1.gguf --to gguf --out runs/me/adapter.gguf\n  \
llama-cli -m model.Q4_1.gguf --lora runs/me/adapter.gguf\n  \
edge-sft export adapter.gguf --model model.Q4_1.gguf --to peft --out peft_adapter/\n\n\
The model is needed only for its architecture, tensor names and shapes (nothing is loaded into \
memory), and must be the base the adapter was trained for. Q/K rows are converted between \
Hugging Face order (PEFT) and llama.cpp's RoPE-permuted order (GGUF) for Llama models; \
PEFT -> GGUF -> PEFT in f32 is bit-identical.")]
pub struct Args {
    /// The adapter to convert: a PEFT folder or a .gguf LoRA file.
    pub adapter: PathBuf,
    /// The base model (.gguf file or Hugging Face folder) the adapter belongs to.
    #[arg(long)]
    pub model: PathBuf,
    /// Output layout.
    #[arg(long, value_enum)]
    pub to: ToArg,
    /// Output: a .gguf file for --to gguf (an existing folder gets adapter.gguf inside), a folder
    /// for --to peft.
    #[arg(long)]
    pub out: PathBuf,
    /// Tensor type of a GGUF output (f32 keeps every bit; f16/bf16 halve the file).
    #[arg(long, value_enum, default_value = "f32")]
    pub adapter_dtype: DtypeArg,
}

/// The model's config and a name for it, read from metadata only (weights stay on disk).
fn open_config(path: &Path) -> Result<(ModelConfig, String)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let file_name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    if meta.is_dir() {
        let h = HfDir::open(path)?;
        Ok((hf_config(&h)?, file_name))
    } else {
        let g = GgufFile::open(path)?;
        let name = g.get_str("general.name").map_or(file_name, str::to_string);
        Ok((gguf_config(&g)?, name))
    }
}

pub fn run(a: Args) -> Result<()> {
    let (cfg, base_name) = open_config(&a.model)?;
    let lora = read_any_adapter(&a.adapter, &cfg)?;
    let n = lora.layers.iter().flatten().flatten().count();
    match a.to {
        ToArg::Gguf => {
            let out = if a.out.is_dir() {
                a.out.join(ADAPTER_FILE)
            } else {
                a.out.clone()
            };
            let dtype: AdapterDtype = a.adapter_dtype.into();
            write_gguf_adapter(&out, &lora, &cfg, &base_name, dtype)?;
            eprintln!(
                "wrote {} ({n} pairs, r={}, α={}, {}); use it with: llama-cli -m {} --lora {}",
                out.display(),
                lora.rank,
                lora.alpha,
                format!("{:?}", a.adapter_dtype).to_lowercase(),
                a.model.display(),
                out.display()
            );
        }
        ToArg::Peft => {
            peft::write_adapter(&a.out, &lora, &cfg, &a.model.display().to_string(), 0.0)?;
            eprintln!(
                "wrote {}/{{{},{}}} ({n} pairs, r={}, α={})",
                a.out.display(),
                peft::CONFIG_FILE,
                peft::WEIGHTS_FILE,
                lora.rank,
                lora.alpha
            );
        }
    }
    Ok(())
}
