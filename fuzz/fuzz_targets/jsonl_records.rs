//! JSONL records → (ids, mask) with the tiny Llama tokenizer and its chat template, through
//! `load_jsonl` (the file reader, record parser, template rendering and mask building).
#![no_main]

#[path = "common.rs"]
mod common;

use edge_sft::data::{load_jsonl, DataOptions};
use edge_sft::tokenize::chat::ChatTemplate;
use edge_sft::tokenize::TextTokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tok() -> &'static (TextTokenizer, ChatTemplate) {
    static T: OnceLock<(TextTokenizer, ChatTemplate)> = OnceLock::new();
    T.get_or_init(|| {
        let tok = TextTokenizer::from_gguf(common::tiny()).unwrap();
        let chat = ChatTemplate::for_tokenizer(&tok).unwrap();
        (tok, chat)
    })
}

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("records.jsonl");
    std::fs::write(&path, data).unwrap();
    let (tok, chat) = tok();
    for skip_bad in [false, true] {
        let opts = DataOptions {
            skip_bad,
            max_seq: 64,
            ..DataOptions::default()
        };
        let _ = load_jsonl(&path, tok, chat, &opts);
    }
});
