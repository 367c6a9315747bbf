//! Packed scoring (`train::score::score_packed`, used by held-out scorings, `eval` and the
//! daemon's gate) against the inference forward one record at a time (`eval::score_example`,
//! itself checked against transformers in model_golden.rs), with and without an adapter, on
//! the tiny Llama, Qwen2, Qwen3 and Gemma 3 models: packing must not let records see each other.

use edge_sft::data::{load_jsonl, DataOptions, Example, LossOn, TemplateMode};
use edge_sft::eval::score_example;
use edge_sft::loaded::LoadedModel;
use edge_sft::train::score::{score_packed, SCORE_BATCH_TOKENS};
use std::path::{Path, PathBuf};

fn tiny(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn records(lm: &LoadedModel) -> Vec<Example> {
    let opts = DataOptions {
        loss_on: LossOn::Response,
        template: TemplateMode::Model,
        max_seq: 4096,
        skip_bad: false,
    };
    load_jsonl(&tiny("records.jsonl"), &lm.tokenizer, &lm.chat, &opts)
        .unwrap()
        .examples
}

#[test]
fn packed_scores_equal_one_record_at_a_time() {
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let lm = LoadedModel::open(&tiny(arch).join("q8_0.gguf")).unwrap();
        let adapter = lm.read_adapter(&tiny(arch).join("peft_adapter")).unwrap();
        let mut examples = records(&lm);
        // Records of several lengths, more than one to a batch, and one longer than a batch.
        let long = Example {
            ids: (0..SCORE_BATCH_TOKENS + 37)
                .map(|i| (i * 13 % 200) as u32 + 3)
                .collect(),
            mask: (0..SCORE_BATCH_TOKENS + 37).map(|i| i % 3 != 0).collect(),
            line: 999,
        };
        examples.insert(1, long);
        assert!(examples.len() >= 4, "{arch}: too few records to pack");
        for lora in [None, Some(&adapter)] {
            let mut batches = 0;
            let packed = score_packed(&lm.model, &examples, lora, |_, _| batches += 1).unwrap();
            assert!(
                batches >= 2 && batches < examples.len(),
                "{arch}: {batches} batches"
            );
            assert_eq!(packed.len(), examples.len());
            for (ex, s) in examples.iter().zip(&packed) {
                let one = score_example(&lm.model, ex, lora).unwrap();
                assert_eq!(
                    (s.line, s.scored_tokens, s.tokens),
                    (one.line, one.scored_tokens, one.tokens)
                );
                let tol = 2e-4 * one.sum_logprob.abs().max(1.0);
                assert!(
                    (s.sum_logprob - one.sum_logprob).abs() <= tol,
                    "{arch} adapter {} line {}: packed {} vs one at a time {}",
                    lora.is_some(),
                    ex.line,
                    s.sum_logprob,
                    one.sum_logprob
                );
            }
        }
    }
}
