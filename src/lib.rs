//! edge-sft: on-device LoRA supervised fine-tuning of small quantized language models.
//!
//! The CLI (`src/main.rs`, `src/cli/`) is a thin shell over this library.

pub mod cpu;
pub mod daemon;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod format;
pub mod infer;
pub mod loaded;
pub mod merge;
pub mod merge_hf;
pub mod model;
pub mod quant;
pub mod report;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
