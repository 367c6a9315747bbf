//! Text generation: KV-cached decoding with greedy or nucleus sampling.

pub mod generate;
pub mod sampling;
