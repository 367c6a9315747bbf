//! GGUF LoRA adapter reader for the tiny Llama model.
#![no_main]

#[path = "common.rs"]
mod common;

use edge_sft::format::gguf::GgufFile;
use edge_sft::format::gguf_adapter::read_gguf_adapter_file;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = GgufFile::from_bytes(Path::new("adapter.gguf"), data) else {
        return;
    };
    let _ = read_gguf_adapter_file(&g, common::tiny_config());
});
