//! Hugging Face folder reader: input = config.json, then "\n#SAFETENSORS#\n", then
//! model.safetensors; both written to a scratch folder, then the full model load.
#![no_main]

#[path = "common.rs"]
mod common;

use edge_sft::model::load::load_hf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (config, weights) = common::split_at(data, b"\n#SAFETENSORS#\n");
    let dir = common::scratch().join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    let _ = load_hf(&dir);
});
