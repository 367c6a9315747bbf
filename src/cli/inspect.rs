//! `edge-sft inspect MODEL`: what a model file holds.

use edge_sft::format::gguf::GgufFile;
use edge_sft::loaded::LoadedModel;
use edge_sft::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file or a Hugging Face model folder.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let lm = LoadedModel::open(&a.model)?;
    let m = &lm.model;
    let c = &m.config;
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    let mut params = 0usize;
    if a.model.is_file() {
        let g = GgufFile::open(&a.model)?;
        for t in &g.tensors {
            *types.entry(t.dtype.name().to_string()).or_default() += 1;
            params += t.n_elements();
        }
    } else {
        let mut add = |q: &edge_sft::model::weights::QMatrix| {
            *types.entry(q.dtype.name().to_string()).or_default() += 1;
            params += q.rows * q.cols;
        };
        add(&m.tok_embd);
        if !c.tied_embeddings {
            add(&m.output);
        }
        for l in &m.layers {
            for q in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                add(q);
            }
        }
        // Norm weights: two per layer plus the final one.
        params += (2 * c.n_layers + 1) * c.d_model;
    }
    let isa = edge_sft::cpu::isa_name(edge_sft::cpu::active_isa());
    let info = json!({
        "path": a.model.display().to_string(),
        "format": format!("{:?}", m.format),
        "architecture": c.arch.name(),
        "layers": c.n_layers,
        "d_model": c.d_model,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "ffn_dim": c.ffn_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.max_positions,
        "rope_theta": c.rope_theta,
        "rms_eps": c.rms_eps,
        "tied_embeddings": c.tied_embeddings,
        "qkv_bias": c.qkv_bias,
        "parameters": params,
        "tensor_types": types,
        "tokenizer": lm.tokenizer.kind,
        "tokenizer_vocab": lm.tokenizer.vocab_size(),
        "chat_template": !lm.chat.is_fallback,
        "file_size": lm.file_size,
        "cpu_kernels": isa,
    });
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).unwrap_or_default()
        );
        return Ok(());
    }
    println!("model         {}", a.model.display());
    println!("format        {:?}", m.format);
    println!("architecture  {}", c.arch.name());
    println!(
        "dimensions    {} layers, d_model {}, {} heads / {} kv heads × {}, ffn {}",
        c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim
    );
    println!("vocab         {}", c.vocab_size);
    println!("context       {}", c.max_positions);
    println!("rope theta    {}", c.rope_theta);
    println!(
        "embeddings    {}",
        if c.tied_embeddings { "tied" } else { "untied" }
    );
    println!("parameters    {} ({:.1} M)", params, params as f64 / 1e6);
    let t: Vec<String> = types.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("tensor types  {}", t.join(", "));
    println!(
        "tokenizer     {}, {} tokens",
        lm.tokenizer.kind,
        lm.tokenizer.vocab_size()
    );
    println!(
        "chat template {}",
        if lm.chat.is_fallback {
            "none (ChatML fallback)"
        } else {
            "yes"
        }
    );
    println!("file size     {:.1} MB", lm.file_size as f64 / 1e6);
    println!("cpu kernels   {isa}");
    Ok(())
}
