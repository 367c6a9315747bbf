//! PEFT adapter reader for the tiny Llama model: input = adapter_config.json, then
//! "\n#SAFETENSORS#\n", then adapter_model.safetensors.
#![no_main]

#[path = "common.rs"]
mod common;

use edge_sft::format::peft::read_adapter_bytes;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (config, weights) = common::split_at(data, b"\n#SAFETENSORS#\n");
    let Ok(config) = std::str::from_utf8(config) else {
        return;
    };
    let _ = read_adapter_bytes(
        Path::new("adapter_config.json"),
        config,
        Path::new("adapter_model.safetensors"),
        weights,
        common::tiny_config(),
    );
});
