//! Tokenizer construction (tokenizer.json or GGUF vocabulary) and chat templates.
//!
//! Both sources end as one `tokenizers::Tokenizer` plus the special tokens edge-sft needs
//! (BOS, EOS, end-of-turn). `encode` never adds BOS/EOS: chat templates write their own, and
//! the raw template adds BOS explicitly when `add_bos` is set.

pub mod chat;
pub mod gguf_vocab;
mod template_ast;
pub mod template_growth;
pub mod template_limits;
pub mod template_namespaces;
pub mod template_watchdog;

use crate::error::{Error, Result};
use crate::format::gguf::{GgufFile, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub use chat::{ChatTemplate, Message};

/// End-of-turn markers of common chat formats, in order of preference.
const EOT_CANDIDATES: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

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
    /// The model's own chat template, if it ships one (GGUF `tokenizer.chat_template` or
    /// tokenizer_config.json `chat_template`).
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        Self::from_gguf_metadata(&g.metadata)
    }

    /// Build from GGUF metadata alone (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf_metadata(md: &BTreeMap<String, Value>) -> Result<Self> {
        use gguf_vocab::{md_bool, md_int, md_str, md_str_array};
        let model = md_str(md, "tokenizer.ggml.model")
            .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.model".into()))?;
        let (json, kind) = match model {
            "gpt2" => (gguf_vocab::byte_level_bpe_json(md)?, "bpe-gguf"),
            "llama" => (gguf_vocab::sentencepiece_bpe_json(md)?, "spm-gguf"),
            other => {
                return Err(Error::Tokenizer(format!(
                    "GGUF tokenizer model '{other}' is not supported \
                     (supported: gpt2 byte-level BPE, llama SentencePiece)"
                )))
            }
        };
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| Error::Tokenizer(format!("building the GGUF tokenizer: {e}")))?;
        let tokens = md_str_array(md, "tokenizer.ggml.tokens")?.unwrap_or_default();
        let lookup = |key: &str| -> Result<Option<(u32, String)>> {
            match md_int(md, key) {
                None => Ok(None),
                Some(id) => {
                    let tok = usize::try_from(id)
                        .ok()
                        .and_then(|i| tokens.get(i))
                        .ok_or_else(|| {
                            Error::Tokenizer(format!(
                                "{key} = {id} is outside the vocabulary of {}",
                                tokens.len()
                            ))
                        })?;
                    Ok(Some((id as u32, tok.to_string())))
                }
            }
        };
        let bos = lookup("tokenizer.ggml.bos_token_id")?;
        let eos = lookup("tokenizer.ggml.eos_token_id")?;
        // Without the key, SentencePiece vocabularies get a BOS (llama.cpp and transformers
        // agree) and byte-level ones do not.
        let add_bos = md_bool(md, "tokenizer.ggml.add_bos_token").unwrap_or(model == "llama")
            && bos.is_some();
        let chat_template = md_str(md, "tokenizer.chat_template").map(str::to_string);
        Ok(Self::assemble(
            inner,
            bos,
            eos,
            add_bos,
            kind,
            chat_template,
        ))
    }

    /// Build from a Hugging Face folder: tokenizer.json, plus tokenizer_config.json (optional)
    /// for bos/eos tokens, add_bos_token and chat_template.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            return Err(Error::format(&tj, "missing tokenizer.json"));
        }
        let inner =
            tokenizers::Tokenizer::from_file(&tj).map_err(|e| Error::format(&tj, e.to_string()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string()))?
        } else {
            serde_json::Value::Null
        };
        // bos_token / eos_token are a string or an AddedToken dict {"content": ...}.
        let tok_str = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content")?.as_str().map(str::to_string),
            }
        };
        let with_id = |t: Option<String>| t.and_then(|t| inner.token_to_id(&t).map(|id| (id, t)));
        let bos = with_id(tok_str("bos_token"));
        let eos = with_id(tok_str("eos_token"));
        let add_bos = match cfg.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(b) => b,
            // No flag: whatever the tokenizer.json post-processor does with special tokens on.
            None => match &bos {
                Some((id, _)) => {
                    let with = inner
                        .encode("a", true)
                        .map(|e| e.get_ids().first() == Some(id));
                    let without = inner
                        .encode("a", false)
                        .map(|e| e.get_ids().first() == Some(id));
                    matches!((with, without), (Ok(true), Ok(false)))
                }
                None => false,
            },
        };
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default", else the first.
            Some(serde_json::Value::Array(list)) => {
                let named = |n: &serde_json::Value| {
                    n.get("template")
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                };
                list.iter()
                    .find(|n| n.get("name").and_then(|x| x.as_str()) == Some("default"))
                    .and_then(named)
                    .or_else(|| list.first().and_then(named))
            }
            _ => None,
        };
        let chat_template =
            chat_template.or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        Ok(Self::assemble(
            inner,
            bos,
            eos,
            add_bos,
            "tokenizer.json",
            chat_template,
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        bos: Option<(u32, String)>,
        eos: Option<(u32, String)>,
        add_bos: bool,
        kind: &str,
        chat_template: Option<String>,
    ) -> Self {
        let eos_id = eos.as_ref().map(|e| e.0);
        // A vocabulary may hold several chat formats' markers (a Llama-2 template over a vocab
        // that also has <|im_end|>): the end of turn is the one the template writes.
        let written = |t: &str| match chat_template.as_deref() {
            Some(src) => src.contains(t),
            None => true,
        };
        let eot_id = EOT_CANDIDATES
            .iter()
            .filter(|t| written(t))
            .find_map(|t| inner.token_to_id(t))
            .or(eos_id);
        TextTokenizer {
            inner,
            bos_id: bos.as_ref().map(|b| b.0),
            eos_id,
            eot_id,
            add_bos,
            kind: kind.to_string(),
            bos_token: bos.map(|b| b.1),
            eos_token: eos.map(|e| e.1),
            chat_template,
        }
    }

    /// Encode text, parsing special tokens that appear literally, adding no BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids to text; special tokens are kept (nothing is skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// True for EOS and the end-of-turn token: the ids that stop generation.
    pub fn is_stop(&self, id: u32) -> bool {
        Some(id) == self.eos_id || Some(id) == self.eot_id
    }
}
