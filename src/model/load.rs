//! Building a `Model` from a GGUF file or a Hugging Face folder: config from metadata, every
//! tensor checked against the shape the config implies, weights kept in their stored blocks.

use super::config::{Activation, Arch, BlockOptions, ModelConfig, RopeStyle};
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
    q_norm: String,
    k_norm: String,
    attn_post_norm: String,
    ffn_post_norm: String,
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
            q_norm: format!("{p}attn_q_norm.weight"),
            k_norm: format!("{p}attn_k_norm.weight"),
            attn_post_norm: format!("{p}post_attention_norm.weight"),
            ffn_post_norm: format!("{p}post_ffw_norm.weight"),
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
            q_norm: format!("{p}self_attn.q_norm.weight"),
            k_norm: format!("{p}self_attn.k_norm.weight"),
            attn_post_norm: String::new(),
            ffn_post_norm: format!("{p}post_feedforward_layernorm.weight"),
        }
    }

    /// Gemma's HF names: its `post_attention_layernorm` is the attention-output norm and
    /// `pre_feedforward_layernorm` the MLP input norm.
    fn hf_gemma(i: usize) -> Self {
        let p = format!("model.layers.{i}.");
        LayerNames {
            attn_post_norm: format!("{p}post_attention_layernorm.weight"),
            ffn_norm: format!("{p}pre_feedforward_layernorm.weight"),
            ..LayerNames::hf(i)
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

/// Norm weights as the compute uses them (y = x̂ · w). Gemma's HF checkpoints store w − 1
/// (y = x̂ · (1 + w)); llama.cpp's converter adds the 1 when it writes GGUF, so only HF
/// folders need it here.
fn norm_shift(cfg: &ModelConfig, hf: bool) -> f32 {
    if hf && cfg.arch == Arch::Gemma3 {
        1.0
    } else {
        0.0
    }
}

fn load_layer(
    src: &dyn TensorSource,
    cfg: &ModelConfig,
    n: &LayerNames,
    shift: f32,
) -> Result<LayerWeights> {
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
    let norm = |name: &str, len: usize| -> Result<Vec<f32>> {
        Ok(v(name, len)?.into_iter().map(|w| w + shift).collect())
    };
    let opt_norm = |on: bool, name: &str, len: usize| -> Result<Option<Vec<f32>>> {
        on.then(|| norm(name, len)).transpose()
    };
    let b = &cfg.block;
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
        attn_norm: norm(&n.attn_norm, d)?,
        wq: m(&n.q, cfg.q_dim(), d)?,
        wk: m(&n.k, cfg.kv_dim(), d)?,
        wv: m(&n.v, cfg.kv_dim(), d)?,
        wo: m(&n.o, d, cfg.q_dim())?,
        bq: bias(&n.q_bias, cfg.q_dim())?,
        bk: bias(&n.k_bias, cfg.kv_dim())?,
        bv: bias(&n.v_bias, cfg.kv_dim())?,
        ffn_norm: norm(&n.ffn_norm, d)?,
        w_gate: m(&n.gate, cfg.ffn_dim, d)?,
        w_up: m(&n.up, cfg.ffn_dim, d)?,
        w_down: m(&n.down, d, cfg.ffn_dim)?,
        q_norm: opt_norm(b.qk_norm, &n.q_norm, cfg.head_dim)?,
        k_norm: opt_norm(b.qk_norm, &n.k_norm, cfg.head_dim)?,
        attn_post_norm: opt_norm(b.post_norms, &n.attn_post_norm, d)?,
        ffn_post_norm: opt_norm(b.post_norms, &n.ffn_post_norm, d)?,
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
    let shift = norm_shift(&cfg, format == ModelFormat::HfSafetensors);
    let tok_embd = src.matrix(embd)?;
    check_matrix(p, &tok_embd, cfg.vocab_size, cfg.d_model)?;
    let out = if cfg.tied_embeddings {
        tok_embd.clone()
    } else {
        let o = src.matrix(output)?;
        check_matrix(p, &o, cfg.vocab_size, cfg.d_model)?;
        o
    };
    let mut final_norm = src.vector(norm)?;
    check_vector(p, norm, &final_norm, cfg.d_model)?;
    final_norm.iter_mut().for_each(|w| *w += shift);
    let layers = (0..cfg.n_layers)
        .map(|i| load_layer(src, &cfg, &names(i), shift))
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

pub fn load_gguf(path: &Path) -> Result<(Model, GgufFile)> {
    let g = GgufFile::open(path)?;
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

pub fn load_hf(dir: &Path) -> Result<(Model, HfDir)> {
    let h = HfDir::open(dir)?;
    let cfg = hf_config(&h)?;
    let names = if cfg.arch == Arch::Gemma3 {
        LayerNames::hf_gemma
    } else {
        LayerNames::hf
    };
    let model = assemble(
        &h,
        cfg,
        names,
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        ModelFormat::HfSafetensors,
    )?;
    Ok((model, h))
}
