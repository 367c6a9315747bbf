//! LoRA supervised fine-tuning: packing, forward/backward, fused NLL, AdamW, checkpoints.

pub mod arena;
pub mod attention;
pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod diverge;
pub mod engine;
pub mod geglu;
pub mod heldout;
pub mod layer;
pub mod lock;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod params;
pub mod plan;
pub mod proj;
pub mod score;
pub mod step;
pub mod trainer;
pub mod tune_options;
