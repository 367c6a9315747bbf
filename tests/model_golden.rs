//! The forward pass against transformers on tiny random Llama and Qwen2 models (committed
//! fixtures in tests/golden/tiny, written by tests/reference/make_tiny_models.py): logits per
//! position for HF folders in F32/BF16/F16 (Gemma 3, Qwen3: F32) and GGUF files in Q8_0/Q4_0/Q4_1, with and without a
//! PEFT adapter, and per-record Σ log Pr(y|x) through the whole data pipeline. Wider Gemma 3
//! and Qwen3 models (tests/reference/make_tiny_kquant.py) do the same for Q4_K_M-style GGUFs
//! (Q4_K/Q5_K/Q6_K, with Q5_0/Q8_0 where rows are not whole super-blocks).
//! Tolerances come from the active kernel path (tests/common): f32 on the f32 paths, the
//! documented bf16/f16 bounds on the reduced-precision ones.

mod common;

use edge_sft::data::{build_example, parse_record, Built, DataOptions, LossOn, TemplateMode};
use edge_sft::eval::score_example;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::forward::KvCache;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny")
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn check_variant(
    arch: &str,
    variant: &str,
    g: &Value,
    subset: &[usize],
    worst: &mut common::Worst,
) {
    // On the f32 paths both sides run float32 on identical (dequantized) weights, so only
    // summation order differs: 1e-4 (common::F32).
    let tol = common::tol();
    let on = common::path_label();
    let (base, adapter) = match variant.split_once('+') {
        Some((b, _)) => (b, true),
        None => (variant, false),
    };
    let path = if base.starts_with("hf_") {
        root().join(arch).join(base)
    } else {
        root().join(arch).join(format!("{base}.gguf"))
    };
    let lm = LoadedModel::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lora = adapter.then(|| {
        lm.read_adapter(&root().join(arch).join("peft_adapter"))
            .unwrap()
    });
    let m = &lm.model;
    let vocab = m.config.vocab_size;
    for (si, seq) in g["sequences"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = seq["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut cache = KvCache::new(m.layers.len());
        let hidden = m.forward(&ids, &mut cache, lora.as_ref()).unwrap();
        let logits = m.logits(&hidden, ids.len());
        for (t, row) in logits.chunks(vocab).enumerate() {
            let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = mx + row.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
            let want = f(&seq["logsumexp"][t]);
            let err = (lse - want).abs() / want.abs().max(1.0);
            worst.see("logsumexp (relative to max(1,|x|))", err);
            assert!(
                err < tol.lse,
                "{arch}/{variant} on {on} seq {si} pos {t}: logsumexp {lse} vs {want}"
            );
            // The subset's logits as a vector: ‖ours − theirs‖₂ / ‖theirs‖₂ per position.
            let (mut d2, mut w2) = (0f64, 0f64);
            for (k, &col) in subset.iter().enumerate() {
                let want = f(&seq["logits_subset"][t][k]);
                d2 += (row[col] as f64 - want).powi(2);
                w2 += want * want;
            }
            let row_err = (d2 / w2).sqrt();
            worst.see("logit row L2 (relative)", row_err);
            assert!(
                row_err < tol.logit_row,
                "{arch}/{variant} on {on} seq {si} pos {t}: logits off by {row_err:.2e} of their L2"
            );
            for (k, &col) in subset.iter().enumerate() {
                let want = f(&seq["logits_subset"][t][k]);
                let got = row[col] as f64;
                worst.see("logit (absolute)", (got - want).abs());
                let err = (got - want).abs() / want.abs().max(1.0);
                worst.see("logit (relative to max(1,|x|))", err);
                assert!(
                    err < tol.logit,
                    "{arch}/{variant} on {on} seq {si} pos {t} logit {col}: {got} vs {want}"
                );
            }
            let am = edge_sft::infer::sampling::argmax(row);
            let want_am = seq["argmax"][t].as_u64().unwrap() as usize;
            assert!(
                am == want_am || ((row[am] - row[want_am]).abs() as f64) < tol.argmax_tie,
                "{arch}/{variant} on {on}: argmax {am} vs {want_am}"
            );
        }
    }
    // Records through the data pipeline: ids, masks and Σ log Pr(y|x), both objectives.
    let text = std::fs::read_to_string(root().join("records.jsonl")).unwrap();
    for (ri, (line, rec)) in text
        .lines()
        .zip(g["records"].as_array().unwrap())
        .enumerate()
    {
        let msgs = parse_record(line).unwrap();
        for (loss_on, key_lp, key_n) in [
            (LossOn::Response, "sum_logprob", "scored_tokens"),
            (LossOn::All, "sum_logprob_all", "scored_tokens_all"),
        ] {
            let opts = DataOptions {
                loss_on,
                template: TemplateMode::Model,
                max_seq: 4096,
                skip_bad: false,
            };
            let ex = match build_example(&msgs, &lm.tokenizer, &lm.chat, &opts, ri + 1).unwrap() {
                Built::Example(e) => e,
                other => panic!("record {ri}: {other:?}"),
            };
            let want_ids: Vec<u32> = rec["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ex.ids, want_ids, "{arch}/{variant} record {ri}: ids");
            if loss_on == LossOn::Response {
                let want_mask: Vec<bool> = rec["mask"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() == 1)
                    .collect();
                assert_eq!(ex.mask, want_mask, "{arch}/{variant} record {ri}: mask");
            }
            let s = score_example(&lm.model, &ex, lora.as_ref()).unwrap();
            let want = f(&rec[key_lp]);
            assert_eq!(s.scored_tokens as u64, rec[key_n].as_u64().unwrap());
            let err = (s.sum_logprob - want).abs() / want.abs().max(1.0);
            worst.see("record sum log p (relative)", err);
            assert!(
                err < tol.lse,
                "{arch}/{variant} on {on} record {ri} {key_lp}: {} vs {want}",
                s.sum_logprob
            );
        }
    }
}

fn run_arch(arch: &str) {
    run_arch_with(arch, 6);
}

fn run_arch_with(arch: &str, min_variants: usize) {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(arch).join("golden.json")).unwrap(),
    )
    .unwrap();
    let subset: Vec<usize> = g["vocab_subset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let variants = g["variants"].as_object().unwrap();
    assert!(
        variants.len() >= min_variants,
        "{arch}: expected at least {min_variants} variants"
    );
    let mut worst = common::Worst::default();
    for (name, v) in variants {
        check_variant(arch, name, v, &subset, &mut worst);
    }
    worst.print(&format!("forward {arch}"));
}

#[test]
fn tiny_llama_matches_transformers() {
    run_arch("llama");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    run_arch("qwen2");
}

/// Gemma 3 (tests/reference/make_tiny_archs.py): 6 layers, sliding window 5 on layers 0-4,
/// q/k norm, sandwich norms, GeGLU, scaled embeddings, query_pre_attn_scalar ≠ head_dim in
/// the HF folder. F32 folder, Q8_0/Q4_0 GGUF, with and without an adapter.
#[test]
fn tiny_gemma3_matches_transformers() {
    run_arch_with("gemma3", 5);
}

/// Qwen3 (tests/reference/make_tiny_archs.py): q/k RMSNorm, no q/k/v bias, untied output.
#[test]
fn tiny_qwen3_matches_transformers() {
    run_arch_with("qwen3", 5);
}

/// Llama 3.x RoPE scaling (rope_type llama3; GGUF rope_freqs.weight): frequencies kept,
/// interpolated and divided by the factor (tests/reference/make_tiny_archs.py).
#[test]
fn tiny_llama3_rope_scaling_matches_transformers() {
    run_arch_with("llama3", 5);
}

/// K-quant GGUFs (tests/reference/make_tiny_kquant.py): Gemma 3 with the same 6-layer
/// local/global pattern, d_model 256, in a Q4_K_M-style mix: Q6_K tied embedding, Q4_K/Q5_K/Q6_K
/// q/k/v and gate/up (rows of 256), Q5_0/Q8_0 attn_output and ffn_down (rows of 32, llama.cpp's
/// fallback types), F32 norms. Random blocks, compared with transformers' float32 forward on
/// gguf-py's dequantization.
#[test]
fn tiny_gemma3_kquant_matches_transformers() {
    run_arch_with("gemma3_kquant", 1);
}

/// Qwen3 at d_model 256, 1 layer, every matrix a K-quant: Q4_K embedding and q/o/gate/up, Q5_K
/// attn_k, Q6_K attn_v, ffn_down and the untied output.
#[test]
fn tiny_qwen3_kquant_matches_transformers() {
    run_arch_with("qwen3_kquant", 1);
}
