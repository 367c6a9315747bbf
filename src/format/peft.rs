//! PEFT LoRA adapter folders: `adapter_config.json` + `adapter_model.safetensors`, keys like
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, rows in Hugging Face order.

use crate::error::{Error, Result};
use crate::format::safetensors_write::{write_f32_safetensors, F32Tensor};
use crate::model::config::{ModelConfig, RopeStyle};
use crate::model::lora::{permute_rows, LoraPair, LoraSet, Target};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT key of one LoRA matrix (`which` is "lora_A" or "lora_B").
pub fn peft_key(layer: usize, t: Target, which: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.{which}.weight",
        t.hf_parent(),
        t.hf_module()
    )
}

/// (in, out) features of a target projection.
pub fn target_dims(cfg: &ModelConfig, t: Target) -> (usize, usize) {
    match t {
        Target::Q => (cfg.d_model, cfg.q_dim()),
        Target::K | Target::V => (cfg.d_model, cfg.kv_dim()),
        Target::O => (cfg.q_dim(), cfg.d_model),
        Target::Gate | Target::Up => (cfg.d_model, cfg.ffn_dim),
        Target::Down => (cfg.ffn_dim, cfg.d_model),
    }
}

/// Whether B's rows must be permuted between HF order and the model's order.
fn needs_permute(cfg: &ModelConfig, t: Target) -> bool {
    cfg.rope_style == RopeStyle::Interleaved && matches!(t, Target::Q | Target::K)
}

fn to_f32(view: &TensorView, path: &Path, key: &str) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::tensor(
                path,
                key,
                format!("unsupported dtype {other:?} (expected F32, F16 or BF16)"),
            ))
        }
    })
}

/// Read a PEFT adapter folder for a model with config `cfg`, converting q/k rows of B into the
/// model's row order.
pub fn read_adapter(dir: &Path, cfg: &ModelConfig) -> Result<LoraSet> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let w_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&w_path).map_err(|e| Error::io(&w_path, e))?;
    read_adapter_bytes(&cfg_path, &text, &w_path, &bytes, cfg)
}

/// [`read_adapter`] from the two files' contents; the paths only name them in errors.
pub fn read_adapter_bytes(
    cfg_path: &Path,
    text: &str,
    w_path: &Path,
    bytes: &[u8],
    cfg: &ModelConfig,
) -> Result<LoraSet> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::format(cfg_path, format!("invalid JSON: {e}")))?;
    let rank = json["r"]
        .as_u64()
        .filter(|&r| r > 0)
        .ok_or_else(|| Error::format(cfg_path, "missing or invalid \"r\""))?
        as usize;
    let alpha = json["lora_alpha"].as_f64().unwrap_or(rank as f64) as f32;
    let rslora = json["use_rslora"].as_bool().unwrap_or(false);
    let scale = if rslora {
        alpha / (rank as f32).sqrt()
    } else {
        alpha / rank as f32
    };
    if json["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(Error::format(cfg_path, "peft_type is not LORA"));
    }
    // Per-module ranks or alphas: one LoraSet has a single rank and scale, so refuse rather than
    // fail later on a shape or scale the adapter was not trained with.
    for key in ["rank_pattern", "alpha_pattern"] {
        if json[key].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(Error::format(
                cfg_path,
                format!("{key} (per-module LoRA ranks/alphas) is not supported; train with one r and lora_alpha"),
            ));
        }
    }

    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(w_path, format!("invalid safetensors: {e}")))?;

    let mut layers: Vec<[Option<LoraPair>; 7]> =
        (0..cfg.n_layers).map(|_| Default::default()).collect();
    let mut targets = Vec::new();
    let mut found = 0usize;
    for (layer, slots) in layers.iter_mut().enumerate() {
        for t in Target::ALL {
            let ka = peft_key(layer, t, "lora_A");
            let kb = peft_key(layer, t, "lora_B");
            let (va, vb) = match (st.tensor(&ka), st.tensor(&kb)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(_), Err(_)) => continue,
                (Ok(_), Err(_)) => {
                    return Err(Error::tensor(w_path, &kb, "missing (lora_A present)"))
                }
                (Err(_), Ok(_)) => {
                    return Err(Error::tensor(w_path, &ka, "missing (lora_B present)"))
                }
            };
            let (in_dim, out_dim) = target_dims(cfg, t);
            if va.shape() != [rank, in_dim] {
                return Err(Error::tensor(
                    w_path,
                    &ka,
                    format!(
                        "shape {:?}, expected [{rank}, {in_dim}] for this model",
                        va.shape()
                    ),
                ));
            }
            if vb.shape() != [out_dim, rank] {
                return Err(Error::tensor(
                    w_path,
                    &kb,
                    format!(
                        "shape {:?}, expected [{out_dim}, {rank}] for this model",
                        vb.shape()
                    ),
                ));
            }
            let a = to_f32(&va, w_path, &ka)?;
            let mut b = to_f32(&vb, w_path, &kb)?;
            if let Some(bad) = a.iter().chain(b.iter()).find(|v| !v.is_finite()) {
                return Err(Error::tensor(
                    w_path,
                    &ka,
                    format!("non-finite value {bad}"),
                ));
            }
            if needs_permute(cfg, t) {
                b = permute_rows(&b, out_dim, rank, cfg.head_dim, true);
            }
            slots[t.index()] = Some(LoraPair {
                a,
                b,
                rank,
                in_dim,
                out_dim,
            });
            if !targets.contains(&t) {
                targets.push(t);
            }
            found += 1;
        }
    }
    if found == 0 {
        return Err(Error::format(
            w_path,
            "no LoRA tensors for this model (expected keys like base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight)",
        ));
    }
    let expected = st.names().len();
    if expected != 2 * found {
        let unknown: Vec<_> = st
            .names()
            .into_iter()
            .filter(|n| {
                !(0..cfg.n_layers).any(|l| {
                    Target::ALL
                        .iter()
                        .any(|&t| *n == peft_key(l, t, "lora_A") || *n == peft_key(l, t, "lora_B"))
                })
            })
            .take(3)
            .map(|n| n.to_string())
            .collect();
        return Err(Error::format(
            w_path,
            format!("unexpected tensors for this model, e.g. {unknown:?}"),
        ));
    }
    targets.sort();
    Ok(LoraSet {
        rank,
        alpha,
        scale,
        targets,
        layers,
    })
}

/// Write a PEFT adapter folder (config + weights, each atomically), with B rows of q/k turned
/// back into Hugging Face order so PEFT applies it to the original model.
pub fn write_adapter(
    dir: &Path,
    lora: &LoraSet,
    cfg: &ModelConfig,
    base_model: &str,
    dropout: f32,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Q/K B rows go back to HF order (a small copy each); everything else is streamed from
    // the live parameters.
    let mut permuted: Vec<Vec<f32>> = Vec::new();
    for slots in &lora.layers {
        for t in Target::ALL {
            if let Some(p) = &slots[t.index()] {
                if needs_permute(cfg, t) {
                    permuted.push(permute_rows(&p.b, p.out_dim, p.rank, cfg.head_dim, false));
                }
            }
        }
    }
    let mut tensors = Vec::new();
    let mut next_permuted = permuted.iter();
    for (layer, slots) in lora.layers.iter().enumerate() {
        for t in Target::ALL {
            let Some(p) = &slots[t.index()] else { continue };
            let b: &[f32] = if needs_permute(cfg, t) {
                next_permuted.next().expect("one permuted B per Q/K pair")
            } else {
                &p.b
            };
            tensors.push(F32Tensor {
                name: peft_key(layer, t, "lora_A"),
                shape: vec![p.rank, p.in_dim],
                pieces: vec![&p.a],
            });
            tensors.push(F32Tensor {
                name: peft_key(layer, t, "lora_B"),
                shape: vec![p.out_dim, p.rank],
                pieces: vec![b],
            });
        }
    }
    crate::format::gguf_write::write_atomic(&dir.join(WEIGHTS_FILE), |f| {
        write_f32_safetensors(f, &tensors)
    })?;
    let targets: Vec<&str> = lora.targets.iter().map(|t| t.hf_module()).collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "modules_to_save": null,
        "revision": null,
    });
    let text = serde_json::to_string_pretty(&config).expect("JSON of plain values");
    crate::format::gguf_write::write_atomic(&dir.join(CONFIG_FILE), |f| {
        std::io::Write::write_all(f, text.as_bytes())
    })
}
