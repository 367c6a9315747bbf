//! Training backward checks on the tiny Llama/Qwen2/Qwen3/Gemma 3 fixtures: whole-model finite differences of
//! the LoRA gradients, packing invariance, and gradient checkpointing equivalence.
//!
//! On a reduced-precision kernel path (tests/common) the finite-difference tests are skipped:
//! the loss is then a piecewise-constant function of the parameters at the scale of a bf16
//! rounding step, and measured at eps = 1e-2 (avx512bf16, tiny models) it jumps by 3e-4 … 3e-3
//! between nearby points, so (L(θ+ε) − L(θ−ε))/2ε carries noise of 0.02 … 0.15 against
//! gradients of ~0.005: the difference quotient measures rounding, not the derivative.
//! tests/train_golden.rs checks the same gradients against PyTorch on those paths instead.

mod common;

use common::peft_step::setup;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::LoraSet;
use edge_sft::train::batch::Batch;
use edge_sft::train::params::{flatten, unflatten, zeros_like};
use edge_sft::train::step::forward_backward;

fn loss_and_grads(lm: &LoadedModel, batch: &Batch, lora: &LoraSet, ckpt: bool) -> (f64, Vec<f32>) {
    let mut g = zeros_like(lora);
    let n = batch.scored.len() as f32;
    let o = forward_backward(&lm.model, lora, batch, &mut g, 1.0 / n, ckpt, None).unwrap();
    (o.nll_sum / n as f64, flatten(&g))
}

fn finite_differences(arch: &str, variant: &str) {
    if common::precision() != common::Precision::F32 {
        eprintln!(
            "{arch}/{variant}: finite differences skipped on {} (see the file comment)",
            common::path_label()
        );
        return;
    }
    let (lm, exs, lora) = setup(arch, variant);
    let batch = Batch::from_examples(exs.iter());
    let (_, g) = loss_and_grads(&lm, &batch, &lora, false);
    let base = flatten(&lora);
    let n = base.len();
    let eps = 1e-2f32;
    // A spread of coordinates over every layer and target, A and B alike.
    for k in 0..24 {
        let idx = (k * 104_729 + 13) % n;
        let mut plus = lora.clone();
        let mut f = base.clone();
        f[idx] += eps;
        unflatten(&mut plus, &f);
        let mut minus = lora.clone();
        f[idx] -= 2.0 * eps;
        unflatten(&mut minus, &f);
        let lp = loss_and_grads(&lm, &batch, &plus, false).0;
        let lm_ = loss_and_grads(&lm, &batch, &minus, false).0;
        let fd = (lp - lm_) / (2.0 * eps as f64);
        let an = g[idx] as f64;
        assert!(
            (fd - an).abs() < 5e-5 + 1e-2 * an.abs(),
            "{arch}/{variant} param {idx}: finite difference {fd:.6} vs backward {an:.6}"
        );
    }
}

#[test]
fn lora_gradients_match_finite_differences_llama_f32() {
    finite_differences("llama", "hf_f32");
}

#[test]
fn lora_gradients_match_finite_differences_llama_q8_gguf() {
    finite_differences("llama", "q8_0");
}

#[test]
fn lora_gradients_match_finite_differences_qwen2() {
    finite_differences("qwen2", "hf_f32");
}

#[test]
fn lora_gradients_match_finite_differences_qwen3() {
    finite_differences("qwen3", "hf_f32");
}

#[test]
fn lora_gradients_match_finite_differences_gemma3() {
    finite_differences("gemma3", "hf_f32");
}

#[test]
fn packing_and_checkpointing_do_not_change_losses_or_gradients() {
    packing_and_checkpointing("llama");
}

/// Gemma 3's sliding window must stay inside each packed record.
#[test]
fn packing_and_checkpointing_do_not_change_losses_or_gradients_gemma3() {
    packing_and_checkpointing("gemma3");
}

fn packing_and_checkpointing(arch: &str) {
    let (lm, exs, lora) = setup(arch, "hf_f32");
    let packed = Batch::from_examples(exs.iter());
    let mut g_packed = zeros_like(&lora);
    let o = forward_backward(&lm.model, &lora, &packed, &mut g_packed, 1.0, false, None).unwrap();
    // One record per batch, gradients summed.
    let mut g_single = zeros_like(&lora);
    for (i, ex) in exs.iter().enumerate() {
        let b = Batch::from_examples([ex]);
        let oi = forward_backward(&lm.model, &lora, &b, &mut g_single, 1.0, false, None).unwrap();
        let rel = (oi.nll_sum - o.segment_nll[i]).abs() / oi.nll_sum.abs();
        assert!(
            rel < 1e-5,
            "record {i}: packed {} vs alone {}",
            o.segment_nll[i],
            oi.nll_sum
        );
    }
    for (a, b) in flatten(&g_packed).iter().zip(flatten(&g_single)) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "packed {a} vs single {b}"
        );
    }
    let mut g_ckpt = zeros_like(&lora);
    let oc = forward_backward(&lm.model, &lora, &packed, &mut g_ckpt, 1.0, true, None).unwrap();
    assert_eq!(oc.nll_sum, o.nll_sum);
    assert_eq!(
        flatten(&g_ckpt),
        flatten(&g_packed),
        "checkpointing must recompute exactly"
    );
}

/// Dropout with p = 0 is no dropout: the same loss and gradients as none (no keep mask is drawn,
/// so none may be read in backward).
#[test]
fn dropout_of_zero_is_no_dropout() {
    let (lm, exs, lora) = setup("llama", "hf_f32");
    let batch = Batch::from_examples(exs.iter());
    let (loss, grads) = loss_and_grads(&lm, &batch, &lora, false);
    let mut g = zeros_like(&lora);
    let n = batch.scored.len() as f32;
    let zero = edge_sft::train::proj::Dropout {
        p: 0.0,
        rng: edge_sft::infer::sampling::Rng::new(1),
    };
    let o = forward_backward(&lm.model, &lora, &batch, &mut g, 1.0 / n, false, Some(zero)).unwrap();
    assert_eq!(o.nll_sum / n as f64, loss);
    assert_eq!(flatten(&g), grads);
}
