//! Building a `Model` from a GGUF file or a Hugging Face folder: config from metadata, every
//! tensor checked against the shape the config implies, weights kept in their stored blocks.

use super::config::{Arch, ModelConfig};
pub use super::read_config::{gguf_config, hf_config};
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

pub(super) fn check_vector(path: &Path, name: &str, v: &[f32], len: usize) -> Result<()> {
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
