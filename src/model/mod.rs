//! Model config, weights, loading and the inference forward pass.

pub mod config;
pub mod decode;
mod decode_team;
pub mod forward;
pub mod load;
pub mod lora;
pub mod read_config;
pub mod rope;
pub mod weights;

use config::ModelConfig;
use std::path::PathBuf;
use weights::QMatrix;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HfSafetensors,
}

/// One transformer block's frozen weights. Matrices are [out, in].
pub struct LayerWeights {
    pub attn_norm: Vec<f32>, // [d_model]
    pub wq: QMatrix,         // [q_dim, d_model]
    pub wk: QMatrix,         // [kv_dim, d_model]
    pub wv: QMatrix,         // [kv_dim, d_model]
    pub wo: QMatrix,         // [d_model, q_dim]
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>, // [d_model]
    pub w_gate: QMatrix,    // [ffn, d_model]
    pub w_up: QMatrix,      // [ffn, d_model]
    pub w_down: QMatrix,    // [d_model, ffn]
    /// q/k RMSNorm weights [head_dim] (Qwen3, Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// Norms of the attention and MLP outputs [d_model] (Gemma 3).
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_post_norm: Option<Vec<f32>>,
}

/// A frozen base model. Weights stay in their stored (often quantized) blocks.
pub struct Model {
    pub config: ModelConfig,
    pub tok_embd: QMatrix, // [vocab, d_model]
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>, // [d_model]
    /// Output projection [vocab, d_model]; shares `tok_embd`'s bytes when tied.
    pub output: QMatrix,
    pub path: PathBuf,
    pub format: ModelFormat,
}
