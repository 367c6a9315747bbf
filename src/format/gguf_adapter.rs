//! GGUF LoRA adapters in the layout llama.cpp's adapter loader (`llama_adapter_lora_init`)
//! accepts, so `llama-cli --lora adapter.gguf` and ollama's `ADAPTER` load edge-sft's output
//! with no conversion step.
//!
//! What the loader checks, and so what is written here:
//! - metadata `general.type = "adapter"`, `adapter.type = "lora"`, `general.architecture` equal
//!   to the base model's, and `adapter.lora.alpha` read with `gguf_get_val_f32`, which aborts on
//!   any type but FLOAT32 (a missing alpha means scale 1, not α/r);
//! - for each adapted base tensor `N` (e.g. `blk.3.attn_q.weight`), both `N.lora_a` and
//!   `N.lora_b`, with ggml dims `lora_a = [n_in, r]` and `lora_b = [r, n_out]`: row-major that is
//!   A [r, n_in] and B [n_out, r], the same bytes as PEFT's `lora_A` / `lora_B`;
//! - the scale applied is `alpha / r`, with r taken from `lora_b`'s dims[0].
//!
//! Row order: llama.cpp's Llama GGUFs store Q/K rows permuted for RoPE (see
//! [`permute_rows`]), so the q/k `lora_b` rows in the file are in that GGUF order. The in-memory
//! `LoraSet` is in the order of the model it was made for: GGUF order for a Llama GGUF base
//! (`RopeStyle::Interleaved`, nothing to do), Hugging Face order for a Llama HF folder
//! (`RopeStyle::Half`, permuted on the way in and out). Qwen2 is never permuted.

use crate::error::{Error, Result};
use crate::format::gguf::{GgufFile, Value};
use crate::format::gguf_write::GgufWriter;
use crate::format::peft::target_dims;
use crate::model::config::{Arch, ModelConfig, RopeStyle};
use crate::model::lora::{permute_rows, LoraPair, LoraSet, Target};
use crate::quant::dequant::quantize_row;
use crate::quant::GgmlType;
use std::collections::HashMap;
use std::path::Path;

/// The file name `tune` writes beside the PEFT files.
pub const ADAPTER_FILE: &str = "adapter.gguf";

/// Element type of the written `lora_a` / `lora_b` tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum AdapterDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl AdapterDtype {
    fn ggml(self) -> GgmlType {
        match self {
            AdapterDtype::F32 => GgmlType::F32,
            AdapterDtype::F16 => GgmlType::F16,
            AdapterDtype::Bf16 => GgmlType::BF16,
        }
    }
}

/// The GGUF name of the base tensor a target adapts in `layer` (as in model/load.rs).
pub fn gguf_base_name(layer: usize, t: Target) -> String {
    let proj = match t {
        Target::Q => "attn_q",
        Target::K => "attn_k",
        Target::V => "attn_v",
        Target::O => "attn_output",
        Target::Gate => "ffn_gate",
        Target::Up => "ffn_up",
        Target::Down => "ffn_down",
    };
    format!("blk.{layer}.{proj}.weight")
}

/// Whether B's rows differ between the `LoraSet` (model order) and the file (GGUF order): only
/// for Llama q/k when the model was read from a Hugging Face folder.
fn file_permutes(cfg: &ModelConfig, t: Target) -> bool {
    cfg.arch == Arch::Llama
        && cfg.rope_style == RopeStyle::Half
        && matches!(t, Target::Q | Target::K)
}

/// The alpha llama.cpp needs to apply `lora.scale` (it always computes alpha / r): `lora.alpha`
/// itself unless the set was scaled otherwise (rsLoRA), then `scale · r`.
fn file_alpha(lora: &LoraSet) -> f32 {
    if lora.alpha / lora.rank as f32 == lora.scale {
        lora.alpha
    } else {
        lora.scale * lora.rank as f32
    }
}

fn encode(values: &[f32], ty: GgmlType) -> Vec<u8> {
    let mut out = Vec::new();
    quantize_row(ty, values, &mut out);
    out
}

/// Write `lora` as a GGUF LoRA adapter for the model `cfg` describes, atomically. `base_name`
/// names the base model in the metadata (`general.base_model.0.name`).
pub fn write_gguf_adapter(
    path: &Path,
    lora: &LoraSet,
    cfg: &ModelConfig,
    base_name: &str,
    dtype: AdapterDtype,
) -> Result<()> {
    let ty = dtype.ggml();
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", cfg.arch.name())
        .set_str("general.type", "adapter")
        .set_str("general.name", format!("{base_name} LoRA"))
        .set_u32("general.base_model.count", 1)
        .set_str("general.base_model.0.name", base_name)
        .set_str("adapter.type", "lora")
        .set_f32("adapter.lora.alpha", file_alpha(lora));
    for (layer, slots) in lora.layers.iter().enumerate() {
        for t in Target::ALL {
            let Some(p) = &slots[t.index()] else { continue };
            let base = gguf_base_name(layer, t);
            let b = if file_permutes(cfg, t) {
                encode(
                    &permute_rows(&p.b, p.out_dim, p.rank, cfg.head_dim, true),
                    ty,
                )
            } else {
                encode(&p.b, ty)
            };
            let (n_in, n_out, r) = (p.in_dim as u64, p.out_dim as u64, p.rank as u64);
            // ggml dims: A [r, n_in] row-major is ne = [n_in, r]; B [n_out, r] is ne = [r, n_out].
            w.add_tensor(format!("{base}.lora_a"), &[n_in, r], ty, encode(&p.a, ty))?;
            w.add_tensor(format!("{base}.lora_b"), &[r, n_out], ty, b)?;
        }
    }
    w.write(path)
}

/// Read a GGUF LoRA adapter for the model `cfg` describes, with q/k rows of B in that model's
/// order. Accepts F32, F16 and BF16 tensors; every pair must have the same rank.
pub fn read_gguf_adapter(path: &Path, cfg: &ModelConfig) -> Result<LoraSet> {
    read_gguf_adapter_file(&GgufFile::open(path)?, cfg)
}

/// [`read_gguf_adapter`] for an opened (or in-memory) GGUF.
pub fn read_gguf_adapter_file(g: &GgufFile, cfg: &ModelConfig) -> Result<LoraSet> {
    let path = g.path.as_path();
    let meta_str = |key: &str| -> Result<&str> {
        g.get_str(key)
            .ok_or_else(|| Error::format(path, format!("missing string metadata '{key}'")))
    };
    let gtype = meta_str("general.type")?;
    if gtype != "adapter" {
        return Err(Error::format(
            path,
            format!(
                "general.type is '{gtype}', expected 'adapter' (is this a model, not an adapter?)"
            ),
        ));
    }
    let atype = meta_str("adapter.type")?;
    if atype != "lora" {
        return Err(Error::format(
            path,
            format!("adapter.type is '{atype}', expected 'lora'"),
        ));
    }
    let arch = meta_str("general.architecture")?;
    if arch != cfg.arch.name() {
        return Err(Error::format(
            path,
            format!(
                "general.architecture is '{arch}' but the model is '{}': this adapter was made for another base model",
                cfg.arch.name()
            ),
        ));
    }
    // llama.cpp reads alpha as FLOAT32 only; absent (or 0) it applies the adapter at scale 1.
    let alpha = match g.get("adapter.lora.alpha") {
        None => None,
        Some(Value::F32(a)) if a.is_finite() && *a >= 0.0 => Some(*a).filter(|&a| a != 0.0),
        Some(v) => {
            return Err(Error::format(
                path,
                format!("adapter.lora.alpha must be a finite, non-negative FLOAT32 (llama.cpp rejects other types), found {v:?}"),
            ))
        }
    };

    // Every tensor must be one half of a pair for a projection of this model.
    let mut known: HashMap<String, (usize, Target)> = HashMap::new();
    for layer in 0..cfg.n_layers {
        for t in Target::ALL {
            known.insert(gguf_base_name(layer, t), (layer, t));
        }
    }
    for info in &g.tensors {
        let base = info
            .name
            .strip_suffix(".lora_a")
            .or_else(|| info.name.strip_suffix(".lora_b"));
        if !base.is_some_and(|b| known.contains_key(b)) {
            return Err(Error::tensor(
                path,
                &info.name,
                format!(
                    "not a LoRA half edge-sft can apply: expected 'blk.{{0..{}}}.{{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}}.weight.lora_a' or '.lora_b'",
                    cfg.n_layers.saturating_sub(1)
                ),
            ));
        }
    }

    let mut layers: Vec<[Option<LoraPair>; 7]> =
        (0..cfg.n_layers).map(|_| Default::default()).collect();
    let mut targets = Vec::new();
    // (rank, the lora_a tensor it was first seen on) — one rank for the whole set.
    let mut rank_of: Option<(usize, String)> = None;
    for (layer, slots) in layers.iter_mut().enumerate() {
        for t in Target::ALL {
            let base = gguf_base_name(layer, t);
            let (na, nb) = (format!("{base}.lora_a"), format!("{base}.lora_b"));
            let (ta, tb) = match (g.tensor(&na), g.tensor(&nb)) {
                (None, None) => continue,
                (Some(a), Some(b)) => (a, b),
                (Some(_), None) => {
                    return Err(Error::tensor(
                        path,
                        &nb,
                        "missing (its lora_a is present); every pair needs both halves",
                    ))
                }
                (None, Some(_)) => {
                    return Err(Error::tensor(
                        path,
                        &na,
                        "missing (its lora_b is present); every pair needs both halves",
                    ))
                }
            };
            let (in_dim, out_dim) = target_dims(cfg, t);
            for (name, info) in [(&na, ta), (&nb, tb)] {
                if !matches!(info.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                    return Err(Error::tensor(
                        path,
                        name,
                        format!("type {} (expected F32, F16 or BF16)", info.dtype.name()),
                    ));
                }
                if info.dims.len() != 2 {
                    return Err(Error::tensor(
                        path,
                        name,
                        format!("dims {:?}, expected 2 dims", info.dims),
                    ));
                }
            }
            let (ra, rb) = (ta.dims[1] as usize, tb.dims[0] as usize);
            if ta.dims[0] as usize != in_dim || ra == 0 {
                return Err(Error::tensor(
                    path,
                    &na,
                    format!(
                        "ggml dims {:?}, expected [{in_dim}, r] ([n_in, rank]) for this model",
                        ta.dims
                    ),
                ));
            }
            if tb.dims[1] as usize != out_dim {
                return Err(Error::tensor(
                    path,
                    &nb,
                    format!(
                        "ggml dims {:?}, expected [r, {out_dim}] ([rank, n_out]) for this model",
                        tb.dims
                    ),
                ));
            }
            if ra != rb {
                return Err(Error::tensor(
                    path,
                    &nb,
                    format!("rank {rb} (dims[0]) but {na} has rank {ra} (dims[1])"),
                ));
            }
            match &rank_of {
                None => rank_of = Some((ra, na.clone())),
                Some((r, first)) if *r != ra => {
                    return Err(Error::tensor(path, &na, format!("rank {ra}, but {first} has rank {r}; edge-sft needs one rank for all pairs")))
                }
                Some(_) => {}
            }
            let a = g.tensor_f32(&na)?;
            let mut b = g.tensor_f32(&nb)?;
            for (name, v) in [(&na, &a), (&nb, &b)] {
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    return Err(Error::tensor(path, name, format!("non-finite value {bad}")));
                }
            }
            if file_permutes(cfg, t) {
                b = permute_rows(&b, out_dim, ra, cfg.head_dim, false);
            }
            slots[t.index()] = Some(LoraPair {
                a,
                b,
                rank: ra,
                in_dim,
                out_dim,
            });
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    let Some((rank, _)) = rank_of else {
        return Err(Error::format(
            path,
            "no LoRA tensors (expected names like blk.0.attn_q.weight.lora_a)",
        ));
    };
    targets.sort();
    let (alpha, scale) = match alpha {
        Some(a) => (a, a / rank as f32),
        None => (rank as f32, 1.0),
    };
    Ok(LoraSet {
        rank,
        alpha,
        scale,
        targets,
        layers,
    })
}

/// Read an adapter in either layout: a folder is PEFT (`adapter_config.json` +
/// `adapter_model.safetensors`), a file is a GGUF LoRA.
pub fn read_any_adapter(path: &Path, cfg: &ModelConfig) -> Result<LoraSet> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        crate::format::peft::read_adapter(path, cfg)
    } else {
        read_gguf_adapter(path, cfg)
    }
}
