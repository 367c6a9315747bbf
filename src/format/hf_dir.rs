//! Hugging Face model folder reader (config.json, *.safetensors, tokenizer files). STUB.
