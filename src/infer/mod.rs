//! KV cache, sampling, generation.
