//! Building a `Model` from a GGUF file or a Hugging Face folder: config from metadata, every
//! tensor checked against the shape the config implies, weights kept in their stored blocks.

use super::config::{Arch, ModelConfig, RopeStyle};
use super::weights::QMatrix;
use super::{LayerWeights, Model, ModelFormat};
use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use crate::format::hf_dir::HfDir;
use std::path::Path;

fn check_matrix(path: &Path, m: &QMatrix, rows: usize, cols: usize) -> Result<()> {
    if m.rows != rows || m.cols != cols {
        return Err(Error::tensor(
            path,
            &m.name,
            format!(
                "shape [{}, {}] (out, in) does not match the config, which implies [{rows}, {cols}]",
                m.rows, m.cols
            ),
        ));
    }
    Ok(())
}

fn check_vector(path: &Path, name: &str, v: &[f32], len: usize) -> Result<()> {
    if v.len() != len {
        return Err(Error::tensor(
            path,
            name,
            format!(
                "length {} does not match the config, which implies {len}",
                v.len()
            ),
        ));
    }
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(Error::tensor(
            path,
            name,
            format!("holds a non-finite value ({bad})"),
        ));
    }
    Ok(())
}

/// Names of one layer's tensors in a given file convention.
struct LayerNames {
    attn_norm: String,
    q: String,
    k: String,
    v: String,
    o: String,
    q_bias: String,
    k_bias: String,
    v_bias: String,
    ffn_norm: String,
    gate: String,
    up: String,
    down: String,
}

impl LayerNames {
    fn gguf(i: usize) -> Self {
        let p = format!("blk.{i}.");
        LayerNames {
            attn_norm: format!("{p}attn_norm.weight"),
            q: format!("{p}attn_q.weight"),
            k: format!("{p}attn_k.weight"),
            v: format!("{p}attn_v.weight"),
            o: format!("{p}attn_output.weight"),
            q_bias: format!("{p}attn_q.bias"),
            k_bias: format!("{p}attn_k.bias"),
            v_bias: format!("{p}attn_v.bias"),
            ffn_norm: format!("{p}ffn_norm.weight"),
            gate: format!("{p}ffn_gate.weight"),
            up: format!("{p}ffn_up.weight"),
            down: format!("{p}ffn_down.weight"),
        }
    }

    fn hf(i: usize) -> Self {
        let p = format!("model.layers.{i}.");
        LayerNames {
            attn_norm: format!("{p}input_layernorm.weight"),
            q: format!("{p}self_attn.q_proj.weight"),
            k: format!("{p}self_attn.k_proj.weight"),
            v: format!("{p}self_attn.v_proj.weight"),
            o: format!("{p}self_attn.o_proj.weight"),
            q_bias: format!("{p}self_attn.q_proj.bias"),
            k_bias: format!("{p}self_attn.k_proj.bias"),
            v_bias: format!("{p}self_attn.v_proj.bias"),
            ffn_norm: format!("{p}post_attention_layernorm.weight"),
            gate: format!("{p}mlp.gate_proj.weight"),
            up: format!("{p}mlp.up_proj.weight"),
            down: format!("{p}mlp.down_proj.weight"),
        }
    }
}

/// The tensor source a layer is read from; both readers expose the same two calls.
trait TensorSource {
    fn path(&self) -> &Path;
    fn matrix(&self, name: &str) -> Result<QMatrix>;
    fn vector(&self, name: &str) -> Result<Vec<f32>>;
    fn has(&self, name: &str) -> bool;
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        GgufFile::matrix(self, name)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.vector_f32(name)
    }
    fn has(&self, name: &str) -> bool {
        self.tensor(name).is_some()
    }
}

impl TensorSource for HfDir {
    fn path(&self) -> &Path {
        self.dir()
    }
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        HfDir::matrix(self, name)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.vector_f32(name)
    }
    fn has(&self, name: &str) -> bool {
        HfDir::has(self, name)
    }
}

fn load_layer(src: &dyn TensorSource, cfg: &ModelConfig, n: &LayerNames) -> Result<LayerWeights> {
    let p = src.path();
    let d = cfg.d_model;
    let m = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
        let w = src.matrix(name)?;
        check_matrix(p, &w, rows, cols)?;
        Ok(w)
    };
    let v = |name: &str, len: usize| -> Result<Vec<f32>> {
        let x = src.vector(name)?;
        check_vector(p, name, &x, len)?;
        Ok(x)
    };
    let bias = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
        if cfg.qkv_bias {
            Ok(Some(v(name, len)?))
        } else if src.has(name) {
            Err(Error::tensor(
                p,
                name,
                "unexpected bias for this architecture",
            ))
        } else {
            Ok(None)
        }
    };
    Ok(LayerWeights {
        attn_norm: v(&n.attn_norm, d)?,
        wq: m(&n.q, cfg.q_dim(), d)?,
        wk: m(&n.k, cfg.kv_dim(), d)?,
        wv: m(&n.v, cfg.kv_dim(), d)?,
        wo: m(&n.o, d, cfg.q_dim())?,
        bq: bias(&n.q_bias, cfg.q_dim())?,
        bk: bias(&n.k_bias, cfg.kv_dim())?,
        bv: bias(&n.v_bias, cfg.kv_dim())?,
        ffn_norm: v(&n.ffn_norm, d)?,
        w_gate: m(&n.gate, cfg.ffn_dim, d)?,
        w_up: m(&n.up, cfg.ffn_dim, d)?,
        w_down: m(&n.down, d, cfg.ffn_dim)?,
    })
}

fn assemble(
    src: &dyn TensorSource,
    cfg: ModelConfig,
    names: fn(usize) -> LayerNames,
    embd: &str,
    norm: &str,
    output: &str,
    format: ModelFormat,
) -> Result<Model> {
    let p = src.path();
    let tok_embd = src.matrix(embd)?;
    check_matrix(p, &tok_embd, cfg.vocab_size, cfg.d_model)?;
    let out = if cfg.tied_embeddings {
        tok_embd.clone()
    } else {
        let o = src.matrix(output)?;
        check_matrix(p, &o, cfg.vocab_size, cfg.d_model)?;
        o
    };
    let final_norm = src.vector(norm)?;
    check_vector(p, norm, &final_norm, cfg.d_model)?;
    let layers = (0..cfg.n_layers)
        .map(|i| load_layer(src, &cfg, &names(i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Model {
        config: cfg,
        tok_embd,
        layers,
        final_norm,
        output: out,
        path: p.to_path_buf(),
        format,
    })
}

/// Read the config from GGUF metadata (`{arch}.*` keys).
pub fn gguf_config(g: &GgufFile) -> Result<ModelConfig> {
    let p = &g.path;
    let arch_name = g
        .get_str("general.architecture")
        .ok_or_else(|| Error::format(p, "missing general.architecture"))?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(Error::format(
                p,
                format!("unsupported architecture '{other}' (supported: llama, qwen2)"),
            ))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
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
            Arch::Qwen2 => RopeStyle::Half,
        },
        rms_eps: g
            .get_f32(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        max_positions: g.get_usize(&key("context_length")).unwrap_or(2048),
        tied_embeddings: g.tensor("output.weight").is_none(),
        qkv_bias: arch == Arch::Qwen2,
    };
    validate(p, &cfg)?;
    Ok(cfg)
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

pub fn load_gguf(path: &Path) -> Result<(Model, GgufFile)> {
    load_gguf_file(GgufFile::open(path)?)
}

/// Build the model from an opened (or in-memory, [`GgufFile::from_bytes`]) GGUF.
pub fn load_gguf_file(g: GgufFile) -> Result<(Model, GgufFile)> {
    let cfg = gguf_config(&g)?;
    let model = assemble(
        &g,
        cfg,
        LayerNames::gguf,
        "token_embd.weight",
        "output_norm.weight",
        "output.weight",
        ModelFormat::Gguf,
    )?;
    Ok((model, g))
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
        other => {
            return Err(Error::format(
                &p,
                format!("unsupported model_type '{other}' (supported: llama, mistral, qwen2)"),
            ))
        }
    };
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
    let tied = c["tie_word_embeddings"].as_bool().unwrap_or(false) || !h.has("lm_head.weight");
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
    };
    validate(&p, &cfg)?;
    Ok(cfg)
}

pub fn load_hf(dir: &Path) -> Result<(Model, HfDir)> {
    let h = HfDir::open(dir)?;
    let cfg = hf_config(&h)?;
    let model = assemble(
        &h,
        cfg,
        LayerNames::hf,
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        ModelFormat::HfSafetensors,
    )?;
    Ok((model, h))
}
