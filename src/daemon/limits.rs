//! The daemon's own limits: a lower CPU priority (`nice`) for every thread it runs, and a
//! peak-memory budget a round is checked against before it trains.

use crate::model::config::ModelConfig;
use crate::model::lora::LoraSet;
use crate::train::arena::size_table;

/// Room for what the estimate does not itemise: tokenizer, chat template, the inbox store in
/// memory, per-thread GEMM panels and the allocator's slack.
pub const RUNTIME_SLACK_BYTES: u64 = 96 << 20;

/// Lower the calling thread's CPU priority to `nice` (threads it starts later inherit it, so
/// call this before the worker pool exists). Raising priority (a lower value than the current
/// one) needs privileges; then the current one is kept and the reason returned.
pub fn apply_nice(nice: i32) -> std::result::Result<i32, String> {
    let now = rustix::process::getpriority_process(None)
        .map_err(|e| format!("cannot read the current nice level: {e}"))?;
    if nice == now {
        return Ok(now);
    }
    rustix::process::setpriority_process(None, nice).map_err(|e| {
        format!("cannot change the nice level from {now} to {nice}: {e} (keeping {now})")
    })?;
    Ok(nice)
}

/// Bytes a training round is expected to hold at its peak: the mapped model file (every page
/// may become resident), the step arena for `t_max` tokens, the LoRA parameters with their
/// gradients, AdamW moments and the kept best copy (5 × f32), and `RUNTIME_SLACK_BYTES`.
pub fn round_peak_bytes(
    model_file_bytes: u64,
    cfg: &ModelConfig,
    lora: &LoraSet,
    t_max: usize,
    grad_checkpoint: bool,
) -> u64 {
    let arena: usize = size_table(cfg, lora, t_max, grad_checkpoint, false)
        .iter()
        .map(|(_, n)| n)
        .sum();
    model_file_bytes + 4 * arena as u64 + 20 * lora.num_params() as u64 + RUNTIME_SLACK_BYTES
}

/// How a round fits a budget of `budget` bytes (0: no budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// As planned.
    Fits(u64),
    /// Only with gradient checkpointing (recompute each block in backward).
    WithCheckpointing(u64),
    /// Not even then: (bytes needed with checkpointing).
    TooBig(u64),
}

pub fn fit(
    model_file_bytes: u64,
    cfg: &ModelConfig,
    lora: &LoraSet,
    t_max: usize,
    budget: u64,
) -> Fit {
    let plain = round_peak_bytes(model_file_bytes, cfg, lora, t_max, false);
    if budget == 0 || plain <= budget {
        return Fit::Fits(plain);
    }
    let ckpt = round_peak_bytes(model_file_bytes, cfg, lora, t_max, true);
    if ckpt <= budget {
        Fit::WithCheckpointing(ckpt)
    } else {
        Fit::TooBig(ckpt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, RopeStyle};
    use crate::model::lora::Target;
    use crate::train::params::init_lora;

    fn config() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            n_layers: 30,
            d_model: 576,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            ffn_dim: 1536,
            vocab_size: 49152,
            rope_theta: 10000.0,
            rope_style: RopeStyle::Half,
            rms_eps: 1e-5,
            max_positions: 8192,
            tied_embeddings: true,
            qkv_bias: false,
            block: Default::default(),
        }
    }

    #[test]
    fn the_budget_turns_on_checkpointing_then_refuses() {
        let c = config();
        let lora = init_lora(&c, 8, 16.0, &Target::ALL, 1);
        let file = 98 << 20;
        let plain = round_peak_bytes(file, &c, &lora, 1024, false);
        let ckpt = round_peak_bytes(file, &c, &lora, 1024, true);
        // SmolLM2-sized: 30 saved blocks of a 1,024-token record are most of a round's memory.
        assert!(ckpt < plain && plain > file + (200 << 20), "{plain} {ckpt}");
        assert!(round_peak_bytes(file, &c, &lora, 64, false) < plain);
        assert_eq!(fit(file, &c, &lora, 1024, 0), Fit::Fits(plain));
        assert_eq!(fit(file, &c, &lora, 1024, plain), Fit::Fits(plain));
        assert_eq!(
            fit(file, &c, &lora, 1024, plain - 1),
            Fit::WithCheckpointing(ckpt)
        );
        assert_eq!(fit(file, &c, &lora, 1024, ckpt - 1), Fit::TooBig(ckpt));
    }
}
