//! The activation arena: every buffer a training step needs, allocated once from a size table
//! (llm.c style) for the longest batch, then reused step after step, so the hot path does no
//! heap allocation and peak memory is known before the first step.
//!
//! Buffers hold `t_max` rows; a batch of T ≤ t_max tokens uses the first T rows of each (the
//! `*_t` accessors). A longer batch grows the arena once.

use crate::format::peft::target_dims;
use crate::model::config::ModelConfig;
use crate::model::lora::{LoraSet, Target};
use crate::train::backend::{Host, Mem};
use crate::train::loss::{NllScratch, CHUNK};

pub use crate::train::backend::LoraBuf;

/// Saved activations of one block (its input lives in `Arena::inputs`).
pub struct LayerActs<M: Mem = Host> {
    pub r1: M::Buf,    // [T] 1/rms of the block input
    pub q: M::Buf,     // [T, q_dim] after RoPE
    pub k: M::Buf,     // [T, kv_dim] after RoPE
    pub v: M::Buf,     // [T, kv_dim]
    pub lse: M::Buf,   // [T, heads] attention log-sum-exp
    pub att: M::Buf,   // [T, q_dim] attention output
    pub x_mid: M::Buf, // [T, d] residual stream after attention
    pub r2: M::Buf,    // [T]
    pub gate: M::Buf,  // [T, ffn]
    pub up: M::Buf,    // [T, ffn]
    // Only with q/k norm (empty otherwise):
    pub q_raw: M::Buf, // [T, q_dim] q before its norm
    pub k_raw: M::Buf, // [T, kv_dim]
    pub rq: M::Buf,    // [T, heads] 1/rms per head
    pub rk: M::Buf,    // [T, kv_heads]
    // Only with post norms (empty otherwise):
    pub o_pre: M::Buf,    // [T, d] attention output projection before its norm
    pub r_po: M::Buf,     // [T]
    pub down_pre: M::Buf, // [T, d] MLP output before its norm
    pub r_pf: M::Buf,     // [T]
    /// Indexed by `Target::index()`; `None` where the projection has no adapter.
    pub lora: [Option<LoraBuf<M>>; 7],
}

/// Temporaries of one block's forward or backward; never live across blocks.
pub struct Scratch<M: Mem = Host> {
    pub h1: M::Buf,          // [T, d] rmsnorm(x_in)
    pub h2: M::Buf,          // [T, d] rmsnorm(x_mid)
    pub act: M::Buf,         // [T, ffn] silu(gate)·up
    pub d_act: M::Buf,       // [T, ffn]
    pub d_gate: M::Buf,      // [T, ffn]
    pub d_up: M::Buf,        // [T, ffn]
    pub dh: M::Buf,          // [T, d] gradient w.r.t. a normed input
    pub d_att: M::Buf,       // [T, q_dim]
    pub dq: M::Buf,          // [T, q_dim]
    pub dk: M::Buf,          // [T, kv_dim]
    pub dv: M::Buf,          // [T, kv_dim]
    pub o: M::Buf, // [T, max(2d, ffn)] a projection output before the residual add; in backward, two [T, d] partial input gradients
    pub du: M::Buf, // [3, T, rank] LoRA: scale · dy · B, one per concurrent projection
    pub xd: M::Buf, // [T, max in] LoRA input after dropout (dropout only)
    pub hf: M::Buf, // [T, d] final-norm output, then its gradient
    pub hs: M::Buf, // [T, d] the rows that predict scored tokens
    pub dhs: M::Buf, // [T, d] their gradient
    pub rf: M::Buf, // [T] 1/rms of the final norm
    pub nll: M::LossScratch, // the fused loss's [T, CHUNK] tile and row accumulators
}

/// All buffers of a step.
pub struct Arena<M: Mem = Host> {
    pub t_max: usize,
    /// Input of every block, then the last block's output: n_layers + 1 × [T, d].
    pub inputs: Vec<M::Buf>,
    /// One entry per block, or a single reused entry under gradient checkpointing.
    pub acts: Vec<LayerActs<M>>,
    pub scratch: Scratch<M>,
    /// [T, d] ∂L/∂(residual stream), carried down the blocks.
    pub grad: M::Buf,
    checkpoint: bool,
    dropout: bool,
}

/// (name, f32 values) of every buffer, for `t` rows: the size table the arena is built from.
pub fn size_table(
    c: &ModelConfig,
    lora: &LoraSet,
    t: usize,
    checkpoint: bool,
    dropout: bool,
) -> Vec<(&'static str, usize)> {
    let (d, qd, kvd, ffn) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let saved_blocks = if checkpoint { 1 } else { c.n_layers };
    let rank = lora.rank;
    // LoRA buffers of one block: us for every adapted target, keep masks with dropout.
    let mut lora_vals = 0;
    let mut max_in = 0;
    for tg in &lora.targets {
        let (din, _) = target_dims(c, *tg);
        lora_vals += t * rank + if dropout { t * din } else { 0 };
        max_in = max_in.max(din);
    }
    let mut per_block = 2 * t + t * (qd + 2 * kvd) + t * c.n_heads + t * qd + t * d + 2 * t * ffn;
    if c.block.qk_norm {
        per_block += t * (qd + kvd) + t * (c.n_heads + c.n_kv_heads);
    }
    if c.block.post_norms {
        per_block += 2 * t * d + 2 * t;
    }
    vec![
        ("block inputs", (c.n_layers + 1) * t * d),
        ("saved block activations", saved_blocks * per_block),
        ("saved LoRA activations", saved_blocks * lora_vals),
        (
            "block scratch",
            3 * t * d + 4 * t * ffn + 2 * t * qd + 2 * t * kvd,
        ),
        (
            "projection scratch",
            t * (2 * d).max(ffn) + 3 * t * rank + if dropout { t * max_in } else { 0 },
        ),
        ("loss scratch", 4 * t * d + t),
        ("loss tile", t * CHUNK.min(c.vocab_size) + 2 * t * d + 4 * t),
    ]
}

impl Arena<Host> {
    /// Host buffers for batches of up to `t_max` tokens.
    pub fn new(
        c: &ModelConfig,
        lora: &LoraSet,
        t_max: usize,
        checkpoint: bool,
        dropout: bool,
    ) -> Arena {
        Arena::new_in(
            &Host,
            c,
            lora.rank,
            &lora.targets,
            t_max,
            checkpoint,
            dropout,
        )
    }

    /// Buffers for a forward pass only (scoring): two residual-stream buffers used in turn,
    /// one block's activations, and none of the backward's scratch or the loss tile.
    pub fn forward_only(c: &ModelConfig, lora: &LoraSet, t_max: usize) -> Arena {
        // `new` asks for zeroed pages; the ones dropped here were never touched.
        let mut a = Arena::new(c, lora, t_max, true, false);
        a.inputs.truncate(2);
        a.grad = Vec::new();
        let s = &mut a.scratch;
        for v in [
            &mut s.d_act,
            &mut s.d_gate,
            &mut s.d_up,
            &mut s.dh,
            &mut s.d_att,
            &mut s.dq,
            &mut s.dk,
            &mut s.dv,
            &mut s.du,
            &mut s.dhs,
        ] {
            *v = Vec::new();
        }
        s.nll = NllScratch::for_rows(0, c.d_model, c.vocab_size);
        a
    }
}

impl<M: Mem> Arena<M> {
    /// Every buffer of the size table, in `mem`, for batches of up to `t_max` tokens with
    /// adapters of `rank` on `targets`.
    pub fn new_in(
        mem: &M,
        c: &ModelConfig,
        rank: usize,
        targets: &[Target],
        t_max: usize,
        checkpoint: bool,
        dropout: bool,
    ) -> Arena<M> {
        let t = t_max.max(1);
        let buf = |n: usize| mem.alloc(n);
        let (d, qd, kvd, ffn) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let saved_blocks = if checkpoint { 1 } else { c.n_layers };
        let mut max_in = 0;
        let (qkn, post) = (c.block.qk_norm, c.block.post_norms);
        let opt = |on: bool, n: usize| buf(if on { n } else { 0 });
        let acts = (0..saved_blocks)
            .map(|_| LayerActs {
                q_raw: opt(qkn, t * qd),
                k_raw: opt(qkn, t * kvd),
                rq: opt(qkn, t * c.n_heads),
                rk: opt(qkn, t * c.n_kv_heads),
                o_pre: opt(post, t * d),
                r_po: opt(post, t),
                down_pre: opt(post, t * d),
                r_pf: opt(post, t),
                r1: buf(t),
                q: buf(t * qd),
                k: buf(t * kvd),
                v: buf(t * kvd),
                lse: buf(t * c.n_heads),
                att: buf(t * qd),
                x_mid: buf(t * d),
                r2: buf(t),
                gate: buf(t * ffn),
                up: buf(t * ffn),
                lora: std::array::from_fn(|i| {
                    let tg = Target::ALL[i];
                    targets.contains(&tg).then(|| {
                        let (din, _) = target_dims(c, tg);
                        max_in = max_in.max(din);
                        LoraBuf {
                            keep: opt(dropout, t * din),
                            us: buf(t * rank),
                        }
                    })
                }),
            })
            .collect();
        let scratch = Scratch {
            h1: buf(t * d),
            h2: buf(t * d),
            act: buf(t * ffn),
            d_act: buf(t * ffn),
            d_gate: buf(t * ffn),
            d_up: buf(t * ffn),
            dh: buf(t * d),
            d_att: buf(t * qd),
            dq: buf(t * qd),
            dk: buf(t * kvd),
            dv: buf(t * kvd),
            o: buf(t * (2 * d).max(ffn)),
            du: buf(3 * t * rank),
            xd: opt(dropout, t * max_in),
            hf: buf(t * d),
            hs: buf(t * d),
            dhs: buf(t * d),
            rf: buf(t),
            nll: mem.loss_scratch(t, d, c.vocab_size),
        };
        Arena {
            t_max: t,
            inputs: (0..=c.n_layers).map(|_| buf(t * d)).collect(),
            acts,
            scratch,
            grad: buf(t * d),
            checkpoint,
            dropout,
        }
    }

    /// Bytes held by the arena's buffers.
    pub fn bytes(&self) -> usize {
        let l = |v: &M::Buf| M::len(v);
        let acts: usize = self
            .acts
            .iter()
            .map(|a| {
                [
                    &a.r1,
                    &a.q,
                    &a.k,
                    &a.v,
                    &a.lse,
                    &a.att,
                    &a.x_mid,
                    &a.r2,
                    &a.gate,
                    &a.up,
                    &a.q_raw,
                    &a.k_raw,
                    &a.rq,
                    &a.rk,
                    &a.o_pre,
                    &a.r_po,
                    &a.down_pre,
                    &a.r_pf,
                ]
                .iter()
                .map(|v| l(v))
                .sum::<usize>()
                    + a.lora
                        .iter()
                        .flatten()
                        .map(|b| l(&b.keep) + l(&b.us))
                        .sum::<usize>()
            })
            .sum();
        let s = &self.scratch;
        let scratch: usize = [
            &s.h1, &s.h2, &s.act, &s.d_act, &s.d_gate, &s.d_up, &s.dh, &s.d_att, &s.dq, &s.dk,
            &s.dv, &s.o, &s.du, &s.xd, &s.hf, &s.hs, &s.dhs, &s.rf, &self.grad,
        ]
        .iter()
        .map(|v| l(v))
        .sum();
        let inputs: usize = self.inputs.iter().map(l).sum();
        4 * (acts + scratch + M::loss_scratch_values(&s.nll) + inputs)
    }

    /// True if this arena fits a batch of `t` tokens with these settings.
    pub fn fits(&self, t: usize, checkpoint: bool, dropout: bool) -> bool {
        t <= self.t_max && checkpoint == self.checkpoint && dropout == self.dropout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, ModelConfig, RopeStyle};
    use crate::train::params::init_lora;

    fn config() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            n_layers: 3,
            d_model: 16,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 4,
            ffn_dim: 40,
            vocab_size: 50,
            rope_theta: 10000.0,
            rope_style: RopeStyle::Half,
            rms_eps: 1e-5,
            max_positions: 64,
            tied_embeddings: true,
            qkv_bias: false,
            block: Default::default(),
        }
    }

    #[test]
    fn size_table_matches_the_allocated_buffers() {
        let mut gemma = config();
        gemma.block.qk_norm = true;
        gemma.block.post_norms = true;
        for c in [config(), gemma] {
            check_size_table(c);
        }
    }

    /// Backward sums the K and V input gradients in two [T, d] halves of `o`, so it must hold
    /// 2·T·d values even where the MLP is narrower than 2·d.
    #[test]
    fn o_holds_two_input_gradients_when_the_mlp_is_narrow() {
        let c = ModelConfig {
            ffn_dim: 20, // < 2 · d_model (16)
            ..config()
        };
        check_size_table(c.clone());
        let lora = init_lora(&c, 4, 8.0, &Target::ALL, 1);
        let a = Arena::new(&c, &lora, 24, false, false);
        assert!(a.scratch.o.len() >= 2 * 24 * c.d_model);
    }

    fn check_size_table(c: ModelConfig) {
        for (ckpt, drop) in [(false, false), (true, false), (false, true), (true, true)] {
            let lora = init_lora(&c, 4, 8.0, &Target::ALL, 1);
            let a = Arena::new(&c, &lora, 24, ckpt, drop);
            let table: usize = size_table(&c, &lora, 24, ckpt, drop)
                .iter()
                .map(|(_, n)| n)
                .sum();
            assert_eq!(a.bytes(), 4 * table, "checkpoint {ckpt} dropout {drop}");
            assert!(a.fits(24, ckpt, drop) && !a.fits(25, ckpt, drop));
        }
    }
}
