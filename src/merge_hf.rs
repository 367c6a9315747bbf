//! `merge --format hf`: the merged model as a Hugging Face folder (config.json,
//! model.safetensors, tokenizer.json, tokenizer_config.json) that transformers and edge-sft load.
//!
//! Every tensor is written as a float (f32 by default, or f16/bf16): quantized GGUF blocks have
//! no safetensors form. Names follow transformers' Llama/Qwen2 modules; Llama's q/k rows go back
//! from llama.cpp's RoPE-permuted order to Hugging Face order. A tied model writes no
//! `lm_head.weight` and sets `tie_word_embeddings`. The tokenizer.json is the one edge-sft builds
//! from the GGUF vocabulary (src/tokenize/gguf_vocab.rs). Tensors are written one at a time (large
//! ones in row chunks) into model.safetensors, whose header is known up front; each file is
//! written atomically.

use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use crate::format::gguf_write::write_atomic;
use crate::merge::{add_delta, plan, read_at, MergeOptions, MergeReport};
use crate::model::config::{Arch, ModelConfig};
use crate::model::lora::{permute_rows, LoraSet};
use crate::quant::dequant::quantize_row;
use crate::quant::{dequantize_row, GgmlType};
use crate::tokenize::{gguf_vocab, TextTokenizer};
use rayon::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// The transformers name of a GGUF tensor, or `None` for a tensor it has no place for.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}"))
}

fn st_dtype(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F16 => "F16",
        GgmlType::BF16 => "BF16",
        _ => "F32",
    }
}

/// Merge `lora` into the GGUF base `g` and write a Hugging Face folder `out` in `dtype`
/// (F32, F16 or BF16). `progress(done, total, name)` is called after each tensor.
pub fn merge_to_hf(
    g: &GgufFile,
    cfg: &ModelConfig,
    lora: &LoraSet,
    out: &Path,
    dtype: GgmlType,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<MergeReport> {
    if !matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(Error::Usage(format!(
            "--format hf writes float tensors: --dtype f32, f16 or bf16, not {}",
            dtype.name().to_lowercase()
        )));
    }
    if !matches!(cfg.arch, Arch::Llama | Arch::Qwen2) {
        // Their Hugging Face configs carry more than edge-sft writes (q/k norms, Gemma's
        // sliding-window pattern and scales); a half-right config.json would load and be wrong.
        return Err(Error::Usage(format!(
            "{}: --format hf writes Llama and Qwen2 models only, not {}; merge into a GGUF \
             instead (without --format hf)",
            g.path.display(),
            cfg.arch.name()
        )));
    }
    let touched = plan(g, lora, &MergeOptions { dtype: Some(dtype) })?;
    let tok = TextTokenizer::from_gguf(g)?;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in &g.tensors {
        let name = hf_name(&t.name).ok_or_else(|| {
            Error::tensor(&g.path, &t.name, "has no Hugging Face (transformers) equivalent; --format hf cannot write this model")
        })?;
        let shape: Vec<u64> = t.dims.iter().rev().copied().collect();
        let bytes = t.n_elements() as u64 * dtype.type_size() as u64;
        header.insert(
            name,
            json!({"dtype": st_dtype(dtype), "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| Error::Usage(e.to_string()))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    let st_path = out.join("model.safetensors");
    let mut file = std::fs::File::open(&g.path).map_err(|e| Error::io(&g.path, e))?;
    let n = g.tensors.len();
    let mut failure: Option<Error> = None;
    let r = write_atomic(&st_path, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes())?;
        w.write_all(&head)?;
        for (i, t) in g.tensors.iter().enumerate() {
            let x = touched.get(&t.name);
            let res = write_tensor(g, cfg, t, x, lora.scale, dtype, &mut file, w);
            if let Err(e) = res {
                let msg = e.to_string();
                failure = Some(e);
                return Err(std::io::Error::other(msg));
            }
            progress(i + 1, n, &t.name);
        }
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    r?;

    let meta = |f: &str, v: serde_json::Value| {
        let text = serde_json::to_string_pretty(&v).unwrap_or_default();
        write_atomic(&out.join(f), |w| w.write_all(text.as_bytes()))
    };
    meta("config.json", config_json(g, cfg, dtype))?;
    let tok_json = match gguf_vocab::md_str(&g.metadata, "tokenizer.ggml.model") {
        Some("llama") => gguf_vocab::sentencepiece_bpe_json(&g.metadata)?,
        _ => gguf_vocab::byte_level_bpe_json(&g.metadata)?,
    };
    write_atomic(&out.join("tokenizer.json"), |w| {
        w.write_all(tok_json.as_bytes())
    })?;
    meta(
        "tokenizer_config.json",
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "add_bos_token": tok.add_bos,
            "add_eos_token": false,
            "chat_template": tok.chat_template,
            "model_max_length": cfg.max_positions,
        }),
    )?;
    Ok(MergeReport {
        tensors: n,
        merged: touched.len(),
        file_bytes: 8 + head.len() as u64 + offset,
    })
}

/// One tensor's values (merged if `touched`), in Hugging Face row order, encoded as `dtype`.
#[allow(clippy::too_many_arguments)]
fn write_tensor(
    g: &GgufFile,
    cfg: &ModelConfig,
    t: &crate::format::gguf::TensorInfo,
    touched: Option<&crate::merge::Touched>,
    scale: f32,
    dtype: GgmlType,
    file: &mut std::fs::File,
    w: &mut impl Write,
) -> Result<()> {
    let cols = t.dims[0] as usize;
    let rows = t.n_elements() / cols.max(1);
    let row_bytes = t.dtype.row_bytes(cols).unwrap_or(0);
    // Llama q/k rows are permuted per head: convert whole tensors (they are small).
    let permute = cfg.arch == Arch::Llama
        && (t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight"));
    let chunk_rows = if permute {
        rows
    } else {
        (1 << 20) / cols.max(1) + 1
    };
    let mut row0 = 0;
    while row0 < rows {
        let nr = chunk_rows.min(rows - row0);
        let src = read_at(
            file,
            &g.path,
            (t.offset + row0 * row_bytes) as u64,
            nr * row_bytes,
        )?;
        let mut vals = vec![0f32; nr * cols];
        vals.par_chunks_mut(cols)
            .zip(src.par_chunks(row_bytes))
            .enumerate()
            .try_for_each_init(
                || vec![0f32; cols],
                |delta, (i, (v, s))| {
                    dequantize_row(t.dtype, s, v);
                    match touched {
                        Some(x) => add_delta(g, t, v, delta, x.pair, row0 + i, scale),
                        None => Ok(()),
                    }
                },
            )?;
        if permute {
            vals = permute_rows(&vals, rows, cols, cfg.head_dim, false);
        }
        let mut bytes = Vec::with_capacity(vals.len() * dtype.type_size());
        quantize_row(dtype, &vals, &mut bytes);
        w.write_all(&bytes)
            .map_err(|e| Error::Usage(format!("writing model.safetensors: {e}")))?;
        row0 += nr;
    }
    Ok(())
}

fn config_json(g: &GgufFile, cfg: &ModelConfig, dtype: GgmlType) -> serde_json::Value {
    let (arch, model_type) = match cfg.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        other => unreachable!("merge_to_hf refuses {other:?} before writing"),
    };
    let id = |k: &str| g.get_u32(k);
    // f32 metadata as the shortest decimal that reads back as the same f32 (1e-5, not 9.99e-6).
    let f = |x: f32| x.to_string().parse::<f64>().unwrap_or(x as f64);
    let mut c = json!({
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": f(cfg.rms_eps),
        "rope_theta": f(cfg.rope_theta),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tied_embeddings,
        "bos_token_id": id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": id("tokenizer.ggml.eos_token_id"),
        "torch_dtype": match dtype {
            GgmlType::F16 => "float16",
            GgmlType::BF16 => "bfloat16",
            _ => "float32",
        },
    });
    match cfg.arch {
        Arch::Llama => {
            c["attention_bias"] = json!(false);
            c["mlp_bias"] = json!(false);
        }
        Arch::Qwen2 => c["use_sliding_window"] = json!(false),
        _ => {}
    }
    c
}
