//! On-disk formats: GGUF (read), Hugging Face safetensors folders (read), PEFT adapters.

pub mod gguf;
pub mod gguf_write;
pub mod hf_dir;
pub mod peft;
pub mod safetensors_write;
