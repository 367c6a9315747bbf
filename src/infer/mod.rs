//! Text generation: KV-cached decoding with greedy or nucleus sampling, and chat sessions.

pub mod chat;
pub mod generate;
pub mod sampling;
pub mod stream;
