//! Model config, weights, loading and the forward pass.
pub mod config;
pub mod weights;
