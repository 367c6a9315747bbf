//! Tokenizer construction (tokenizer.json or GGUF vocabulary) and chat templates.
//! STUB: interface only — to be implemented.

pub mod chat;

use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use std::path::Path;

/// A text tokenizer plus the special tokens edge-sft needs.
pub struct TextTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// End-of-turn token (`<|im_end|>` for ChatML); falls back to EOS.
    pub eot_id: Option<u32>,
    /// Whether raw text gets a BOS prepended (GGUF `tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// "bpe-gguf", "tokenizer.json", ...
    pub kind: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl TextTokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let _ = g;
        Err(Error::Tokenizer("not implemented".into()))
    }
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let _ = dir;
        Err(Error::Tokenizer("not implemented".into()))
    }
    /// Encode text, parsing special tokens that appear literally, adding no BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let _ = text;
        Err(Error::Tokenizer("not implemented".into()))
    }
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let _ = ids;
        Err(Error::Tokenizer("not implemented".into()))
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
