//! `edge-sft inspect MODEL`: what a model file holds.

use edge_sft::format::gguf::GgufFile;
use edge_sft::loaded::LoadedModel;
use edge_sft::quant::GgmlType;
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
    /// The device to report on, as `tune --device` would pick it.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: edge_sft::device::DeviceChoice,
}

/// Tensors and bytes per ggml type, in GGUF type id order.
type TypeStats = BTreeMap<GgmlType, (usize, usize)>;

/// Per-type counts and bytes, and the parameter count, of every tensor in a GGUF file.
fn gguf_types(g: &GgufFile) -> (TypeStats, usize) {
    let mut types = TypeStats::new();
    let mut params = 0usize;
    for t in &g.tensors {
        let e = types.entry(t.dtype).or_default();
        e.0 += 1;
        e.1 += t.size;
        params += t.n_elements();
    }
    (types, params)
}

fn print_types(types: &TypeStats) {
    for (i, (t, (n, bytes))) in types.iter().enumerate() {
        let label = if i == 0 { "tensor types" } else { "" };
        println!(
            "{label:<13} {:<5} {n:>5} tensors {bytes:>13} bytes ({:.1} MB)",
            t.name(),
            *bytes as f64 / 1e6
        );
    }
}

pub fn run(a: Args) -> Result<()> {
    // The tensor table comes straight from the file and needs no architecture support, so
    // it is shown even for a model edge-sft cannot load (before that error).
    let from_file = if a.model.is_file() {
        Some(gguf_types(&GgufFile::open(&a.model)?))
    } else {
        None
    };
    let lm = match LoadedModel::open(&a.model) {
        Ok(lm) => lm,
        Err(e) => {
            if let (Some((types, _)), false) = (&from_file, a.json) {
                println!("model         {}", a.model.display());
                print_types(types);
            }
            return Err(e);
        }
    };
    let m = &lm.model;
    let c = &m.config;
    let (types, params) = match from_file {
        Some(tp) => tp,
        None => {
            let mut types = TypeStats::new();
            let mut params = 0usize;
            let mut add = |q: &edge_sft::model::weights::QMatrix| {
                let e = types.entry(q.dtype).or_default();
                e.0 += 1;
                e.1 += q.bytes().len();
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
            (types, params)
        }
    };
    let type_counts: BTreeMap<&str, usize> =
        types.iter().map(|(t, &(n, _))| (t.name(), n)).collect();
    let type_bytes: BTreeMap<&str, usize> =
        types.iter().map(|(t, &(_, b))| (t.name(), b)).collect();
    let isa = edge_sft::cpu::isa_name(edge_sft::cpu::active_isa());
    let device = edge_sft::device::resolve(a.device, &edge_sft::device::CudaStatus::probe());
    let device_line = match &device {
        Ok(d) => d.why.clone(),
        Err(e) => e.to_string(),
    };
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
        "tensor_types": type_counts,
        "tensor_type_bytes": type_bytes,
        "tokenizer": lm.tokenizer.kind,
        "tokenizer_vocab": lm.tokenizer.vocab_size(),
        "chat_template": !lm.chat.is_fallback,
        "chat_template_refused": lm.chat.refused,
        "file_size": lm.file_size,
        "cpu_kernels": isa,
        "device": device_line,
    });
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).unwrap_or_default()
        );
        return device.map(|_| ());
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
    let local = (0..c.n_layers).filter(|&l| c.is_sliding(l)).count();
    if local > 0 {
        println!(
            "local layers  {local} of {}: sliding window {}, rope theta {}",
            c.n_layers, c.block.sliding_window, c.block.rope_theta_local
        );
    }
    println!(
        "embeddings    {}",
        if c.tied_embeddings { "tied" } else { "untied" }
    );
    println!("parameters    {} ({:.1} M)", params, params as f64 / 1e6);
    print_types(&types);
    println!(
        "tokenizer     {}, {} tokens",
        lm.tokenizer.kind,
        lm.tokenizer.vocab_size()
    );
    match lm.chat.fallback_name() {
        _ if lm.chat.refused.is_some() => println!(
            "chat template unusable: {}",
            lm.chat.refused.as_deref().unwrap_or_default()
        ),
        Some(name) => println!(
            "chat template none (built-in {name} turn format; --template {})",
            name.to_lowercase()
        ),
        None => println!("chat template yes"),
    }
    println!("file size     {:.1} MB", lm.file_size as f64 / 1e6);
    println!("cpu kernels   {isa}");
    println!("device        {device_line}");
    device.map(|_| ())
}
