//! On-disk formats: GGUF (read), Hugging Face safetensors folders (read), PEFT and GGUF LoRA adapters.

pub mod append_log;
pub mod gguf;
pub mod gguf_adapter;
pub mod gguf_stream;
pub mod gguf_write;
pub mod hf_dir;
pub mod mapped;
pub mod peft;
pub mod safetensors_write;
