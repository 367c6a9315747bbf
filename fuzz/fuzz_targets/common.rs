//! Shared by the fuzz targets: a scratch folder per process (in /dev/shm when it exists, so
//! writing each input is cheap) and the tiny Llama model's config and tokenizer.
#![allow(dead_code)]

use edge_sft::format::gguf::GgufFile;
use edge_sft::model::config::ModelConfig;
use edge_sft::model::load::gguf_config;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const TINY_GGUF: &[u8] = include_bytes!("../../tests/golden/tiny/llama/q8_0.gguf");

/// A folder private to this process, created once.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("edge_sft_fuzz_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

pub fn tiny() -> &'static GgufFile {
    static G: OnceLock<GgufFile> = OnceLock::new();
    G.get_or_init(|| GgufFile::from_bytes(Path::new("tiny.gguf"), TINY_GGUF).unwrap())
}

pub fn tiny_config() -> &'static ModelConfig {
    static C: OnceLock<ModelConfig> = OnceLock::new();
    C.get_or_init(|| gguf_config(tiny()).unwrap())
}

/// Split an input in two at its first `sep` (the whole input and nothing if there is none).
pub fn split_at<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&data[..i], &data[i + sep.len()..]),
        None => (data, &[]),
    }
}
