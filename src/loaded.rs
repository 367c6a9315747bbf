//! A model ready to use: weights, tokenizer and chat template from one GGUF file or one
//! Hugging Face folder, plus an optional adapter. The CLI and the daemon start here.

use crate::error::{Error, Result};
use crate::model::load::{load_gguf, load_hf};
use crate::model::lora::LoraSet;
use crate::model::Model;
use crate::tokenize::chat::ChatTemplate;
use crate::tokenize::TextTokenizer;
use std::path::Path;

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    pub chat: ChatTemplate,
    pub file_size: u64,
}

impl LoadedModel {
    /// Open a `.gguf` file or a Hugging Face model folder.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let (model, tokenizer, file_size) = if meta.is_dir() {
            let (model, _hf) = load_hf(path)?;
            let size = h_size(path);
            let tok = TextTokenizer::from_hf_dir(path)?;
            (model, tok, size)
        } else {
            let (model, g) = load_gguf(path)?;
            let tok = TextTokenizer::from_gguf(&g)?;
            (model, tok, meta.len())
        };
        // A template that does not compile or is refused leaves the model usable with
        // `--template raw` or `gemma`; with the model's template every render says why.
        let chat = match ChatTemplate::for_tokenizer(&tokenizer) {
            Ok(c) => c,
            Err(Error::Template(why)) => ChatTemplate::unusable(
                tokenizer.chat_template.as_deref().unwrap_or(""),
                format!(
                    "{}: the model's chat template cannot be used: {why} (use --template raw, \
                     or --template gemma for Gemma models)",
                    path.display()
                ),
            ),
            Err(e) => return Err(e),
        };
        if tokenizer.vocab_size() > model.config.vocab_size {
            return Err(Error::Config(format!(
                "{}: tokenizer has {} tokens but the embedding only {} rows",
                path.display(),
                tokenizer.vocab_size(),
                model.config.vocab_size
            )));
        }
        Ok(LoadedModel {
            model,
            tokenizer,
            chat,
            file_size,
        })
    }

    /// Read a PEFT adapter folder for this model.
    /// A PEFT adapter folder or a GGUF LoRA file, for this model.
    pub fn read_adapter(&self, path: &Path) -> Result<LoraSet> {
        crate::format::gguf_adapter::read_any_adapter(path, &self.model.config)
    }
}

/// Total bytes of the safetensors files in a folder (for `inspect`).
fn h_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
