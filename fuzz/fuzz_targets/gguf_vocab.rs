//! GGUF tokenizer metadata → tokenizer (vocabulary, merges, token types, special ids), then an
//! encode/decode round of a fixed text and the model's chat template compiled.
#![no_main]

use edge_sft::format::gguf::GgufFile;
use edge_sft::tokenize::chat::ChatTemplate;
use edge_sft::tokenize::TextTokenizer;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data) else {
        return;
    };
    let Ok(tok) = TextTokenizer::from_gguf(&g) else {
        return;
    };
    if let Ok(ids) = tok.encode("Hello, world! 12345 <|im_start|>user\ncafé\n\n") {
        let _ = tok.decode(&ids);
    }
    let _ = ChatTemplate::for_tokenizer(&tok);
});
