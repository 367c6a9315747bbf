//! Model hyper-parameters, read from GGUF metadata or config.json.

/// Which architecture family; decides biases and naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// How RoPE pairs dimensions inside a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's layout for Llama GGUF files, whose Q/K rows are permuted.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face `rotate_half` (and llama.cpp NEOX, used for Qwen2).
    Half,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub max_positions: usize,
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    /// What sets a block apart from the plain Llama one (all off for Llama and Qwen2).
    pub block: BlockOptions,
}

/// The MLP's gated activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// silu(gate) · up (Llama, Qwen).
    #[default]
    SwiGlu,
    /// gelu_tanh(gate) · up (Gemma).
    GeGluTanh,
}

/// Block variations beyond Llama's: Qwen3's q/k norm; Gemma 3's scaled embeddings, sandwich
/// norms, GeGLU, attention scale and sliding-window layers with their own RoPE base.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockOptions {
    /// RMSNorm over each head of q and k (weights [head_dim]) before RoPE.
    pub qk_norm: bool,
    /// RMSNorm on the attention output and on the MLP output before each residual add.
    pub post_norms: bool,
    pub activation: Activation,
    /// Embedding rows are multiplied by this (Gemma: √d_model, rounded to f32).
    pub embed_scale: Option<f32>,
    /// Attention score scale; None: 1/√head_dim.
    pub attn_scale: Option<f32>,
    /// Keys a sliding-window layer sees: positions i − window + 1 ..= i.
    pub sliding_window: usize,
    /// Per layer: true for a sliding-window (local) layer. Empty: every layer is global.
    pub sliding: Vec<bool>,
    /// RoPE base of the sliding-window layers.
    pub rope_theta_local: f32,
    /// Llama 3.x RoPE scaling: the global layers' inverse frequencies are divided by these
    /// ([head_dim / 2], GGUF `rope_freqs.weight`, or computed from config.json's
    /// `rope_type: llama3`). Empty: none.
    pub rope_freq_factors: Vec<f32>,
}

impl BlockOptions {
    /// Gemma 3's layer pattern: every `pattern`-th layer (1-based) global, the rest local.
    pub fn gemma_pattern(n_layers: usize, pattern: usize) -> Vec<bool> {
        (0..n_layers)
            .map(|i| pattern == 0 || (i + 1) % pattern != 0)
            .collect()
    }
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// True if layer `li` attends through a sliding window.
    pub fn is_sliding(&self, li: usize) -> bool {
        self.block.sliding_window > 0 && self.block.sliding.get(li).copied().unwrap_or(false)
    }
    /// The key window of layer `li` (0: unlimited).
    pub fn window(&self, li: usize) -> usize {
        if self.is_sliding(li) {
            self.block.sliding_window
        } else {
            0
        }
    }
    /// RoPE base of layer `li`.
    pub fn rope_theta_of(&self, li: usize) -> f32 {
        if self.is_sliding(li) {
            self.block.rope_theta_local
        } else {
            self.rope_theta
        }
    }
    pub fn attn_scale(&self) -> f32 {
        self.block
            .attn_scale
            .unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }
}
