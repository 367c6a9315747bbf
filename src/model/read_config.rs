//! Model hyper-parameters from GGUF metadata (`{arch}.*` keys, as llama.cpp reads them) or a
//! Hugging Face `config.json`, per architecture: Llama, Qwen2, Qwen3, Gemma 3, and Llama 3.x
//! RoPE scaling.

use super::config::{Activation, Arch, BlockOptions, ModelConfig, RopeStyle};
use super::load::check_vector;
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use crate::format::hf_dir::HfDir;
use std::path::Path;

/// Read the config from GGUF metadata (`{arch}.*` keys).
pub fn gguf_config(g: &GgufFile) -> Result<ModelConfig> {
    let p = &g.path;
    let arch_name = g
        .get_str("general.architecture")
        .ok_or_else(|| Error::format(p, "missing general.architecture"))?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma3" => Arch::Gemma3,
        other => {
            return Err(Error::format(
                p,
                format!(
                    "unsupported architecture '{other}' (supported: llama, qwen2, qwen3, gemma3)"
                ),
            ))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if g.get(&key(k)).is_some() {
            return Err(Error::format(
                p,
                format!("metadata {} (logit soft-capping) is not supported", key(k)),
            ));
        }
    }
    if let Some(t) = g.get_str(&key("rope.scaling.type")) {
        if t != "none" {
            return Err(Error::format(
                p,
                format!(
                    "RoPE scaling '{t}' ({}) is not supported",
                    key("rope.scaling.type")
                ),
            ));
        }
    }
    let req = |k: &str| -> Result<usize> {
        g.get_usize(&key(k))
            .ok_or_else(|| Error::format(p, format!("missing metadata {}", key(k))))
    };
    let d_model = req("embedding_length")?;
    let n_heads = req("attention.head_count")?;
    let n_kv_heads = g
        .get_usize(&key("attention.head_count_kv"))
        .unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(Error::format(
            p,
            format!("bad head counts: {n_heads} heads, {n_kv_heads} kv heads"),
        ));
    }
    let head_dim = g
        .get_usize(&key("attention.key_length"))
        .unwrap_or(d_model / n_heads);
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| Error::tensor(p, "token_embd.weight", "missing"))?;
    let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
    let cfg = ModelConfig {
        arch,
        n_layers: req("block_count")?,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: req("feed_forward_length")?,
        vocab_size,
        rope_theta: g.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
        // llama.cpp permutes Llama's Q/K rows for adjacent-pair RoPE; Qwen2 uses NEOX (halves).
        rope_style: match arch {
            Arch::Llama => RopeStyle::Interleaved,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeStyle::Half,
        },
        rms_eps: g
            .get_f32(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        max_positions: g.get_usize(&key("context_length")).unwrap_or(2048),
        tied_embeddings: g.tensor("output.weight").is_none(),
        qkv_bias: arch == Arch::Qwen2,
        block: BlockOptions::default(),
    };
    let mut cfg = cfg;
    if g.tensor("rope_freqs.weight").is_some() {
        // Llama 3.x RoPE scaling, as llama.cpp's converter stores it: one divisor per frequency.
        let f = g.vector_f32("rope_freqs.weight")?;
        check_vector(p, "rope_freqs.weight", &f, head_dim / 2)?;
        cfg.block.rope_freq_factors = f;
    }
    match arch {
        Arch::Qwen3 => cfg.block.qk_norm = true,
        Arch::Gemma3 => {
            // As llama.cpp reads a gemma3 GGUF: every 6th layer global, local layers at RoPE
            // base 10,000 with the file's sliding window, scores scaled by 1/√head_dim (the
            // 62-layer 27B by 1/√(d_model/heads)).
            let window = g.get_usize(&key("attention.sliding_window")).unwrap_or(0);
            let n_layers = cfg.n_layers;
            let scale_dim = if n_layers == 62 {
                d_model / n_heads
            } else {
                head_dim
            };
            cfg.block = gemma3_block(
                d_model,
                window,
                BlockOptions::gemma_pattern(n_layers, 6),
                10000.0,
                scale_dim as f32,
            );
        }
        Arch::Llama | Arch::Qwen2 => {}
    }
    validate(p, &cfg)?;
    Ok(cfg)
}

/// Gemma 3's block options; `query_pre_attn_scalar` sets the score scale (its −½ power).
fn gemma3_block(
    d_model: usize,
    window: usize,
    sliding: Vec<bool>,
    rope_theta_local: f32,
    query_pre_attn_scalar: f32,
) -> BlockOptions {
    BlockOptions {
        qk_norm: true,
        post_norms: true,
        activation: Activation::GeGluTanh,
        embed_scale: Some((d_model as f64).sqrt() as f32),
        attn_scale: Some((query_pre_attn_scalar as f64).powf(-0.5) as f32),
        sliding_window: window,
        sliding: if window > 0 { sliding } else { Vec::new() },
        rope_theta_local,
        rope_freq_factors: Vec::new(),
    }
}

fn validate(p: &Path, c: &ModelConfig) -> Result<()> {
    let dims = [c.n_layers, c.d_model, c.head_dim, c.ffn_dim, c.vocab_size];
    if dims.contains(&0) || !c.head_dim.is_multiple_of(2) {
        return Err(Error::format(
            p,
            format!("implausible model dimensions: {c:?}"),
        ));
    }
    Ok(())
}

/// Read the config from a Hugging Face `config.json`.
pub fn hf_config(h: &HfDir) -> Result<ModelConfig> {
    let c = h.config();
    let p = h.dir().join("config.json");
    let get = |k: &str| -> Result<usize> {
        c[k].as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::format(&p, format!("missing or non-integer \"{k}\"")))
    };
    let model_type = c["model_type"].as_str().unwrap_or("");
    let arch = match model_type {
        "llama" | "mistral" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma3_text" => Arch::Gemma3,
        other => {
            return Err(Error::format(
                &p,
                format!(
                    "unsupported model_type '{other}' \
                     (supported: llama, mistral, qwen2, qwen3, gemma3_text)"
                ),
            ))
        }
    };
    for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if !c[k].is_null() {
            return Err(Error::format(
                &p,
                format!("\"{k}\" (logit soft-capping) is not supported"),
            ));
        }
    }
    let d_model = get("hidden_size")?;
    let n_heads = get("num_attention_heads")?;
    let n_kv_heads = c["num_key_value_heads"]
        .as_u64()
        .map(|v| v as usize)
        .unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(Error::format(
            &p,
            format!("bad head counts: {n_heads}, {n_kv_heads}"),
        ));
    }
    let head_dim = c["head_dim"]
        .as_u64()
        .map(|v| v as usize)
        .unwrap_or(d_model / n_heads);
    let tied_default = arch == Arch::Gemma3;
    let tied =
        c["tie_word_embeddings"].as_bool().unwrap_or(tied_default) || !h.has("lm_head.weight");
    // Gemma 3 keeps its two RoPE bases under rope_parameters.{full,sliding}_attention
    // (older configs: rope_theta and rope_local_base_freq).
    let rp = &c["rope_parameters"];
    let theta_of = |kind: &str, legacy: &str, default: f64| -> f32 {
        rp[kind]["rope_theta"]
            .as_f64()
            .or_else(|| c[legacy].as_f64())
            .or_else(|| rp["rope_theta"].as_f64())
            .unwrap_or(default) as f32
    };
    let cfg = ModelConfig {
        arch,
        n_layers: get("num_hidden_layers")?,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: get("intermediate_size")?,
        vocab_size: get("vocab_size")?,
        rope_theta: c["rope_theta"]
            .as_f64()
            .or_else(|| c["rope_parameters"]["rope_theta"].as_f64())
            .unwrap_or(10000.0) as f32,
        rope_style: RopeStyle::Half,
        rms_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
        max_positions: c["max_position_embeddings"].as_u64().unwrap_or(2048) as usize,
        tied_embeddings: tied,
        qkv_bias: arch == Arch::Qwen2,
        block: BlockOptions::default(),
    };
    let mut cfg = cfg;
    // Llama 3.x: rope_parameters (or the older rope_scaling) with rope_type llama3.
    let scaling = if rp["rope_type"].is_string() {
        rp
    } else {
        &c["rope_scaling"]
    };
    let scaling_type = scaling["rope_type"]
        .as_str()
        .or_else(|| scaling["type"].as_str())
        .unwrap_or("default");
    match scaling_type {
        "default" => {}
        "llama3" => {
            let num = |k: &str| -> Result<f32> {
                scaling[k].as_f64().map(|v| v as f32).ok_or_else(|| {
                    Error::format(&p, format!("rope_type llama3 needs a number \"{k}\""))
                })
            };
            cfg.block.rope_freq_factors = crate::model::rope::llama3_factors(
                cfg.head_dim,
                cfg.rope_theta,
                num("factor")?,
                num("low_freq_factor")?,
                num("high_freq_factor")?,
                num("original_max_position_embeddings")?,
            );
        }
        other => {
            return Err(Error::format(
                &p,
                format!("RoPE type '{other}' is not supported (supported: default, llama3)"),
            ))
        }
    }
    for kind in ["full_attention", "sliding_attention"] {
        let t = rp[kind]["rope_type"].as_str().unwrap_or("default");
        if t != "default" {
            return Err(Error::format(
                &p,
                format!("RoPE type '{t}' ({kind}) is not supported"),
            ));
        }
    }
    match arch {
        Arch::Qwen3 => cfg.block.qk_norm = true,
        Arch::Gemma3 => {
            cfg.rope_theta = theta_of("full_attention", "rope_theta", 1_000_000.0);
            let n = cfg.n_layers;
            let sliding = match c["layer_types"].as_array() {
                Some(a) if a.len() == n => a
                    .iter()
                    .map(|v| v.as_str() == Some("sliding_attention"))
                    .collect(),
                Some(_) => return Err(Error::format(&p, "\"layer_types\" must name every layer")),
                None => BlockOptions::gemma_pattern(
                    n,
                    c["sliding_window_pattern"].as_u64().unwrap_or(6) as usize,
                ),
            };
            cfg.block = gemma3_block(
                d_model,
                c["sliding_window"].as_u64().unwrap_or(0) as usize,
                sliding,
                theta_of("sliding_attention", "rope_local_base_freq", 10000.0),
                c["query_pre_attn_scalar"].as_f64().unwrap_or(256.0) as f32,
            );
        }
        Arch::Llama | Arch::Qwen2 => {}
    }
    if c["hidden_activation"]
        .as_str()
        .is_some_and(|a| a != "gelu_pytorch_tanh")
        && arch == Arch::Gemma3
    {
        return Err(Error::format(
            &p,
            "only hidden_activation gelu_pytorch_tanh is supported for gemma3",
        ));
    }
    validate(&p, &cfg)?;
    Ok(cfg)
}
