//! The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers loading the
//! same GGUF dequantized (tests/reference/golden_smollm2.py): ids, masks, per-record
//! Σ log Pr(y|x) within 1e-3 relative, and greedy generation token for token.
//! Skipped (with a note) when the model file is absent; `scripts/test.sh` and CI fetch it.
//! The per-record tolerance comes from the active kernel path (tests/common); greedy generation
//! must match token for token on every path.

mod common;

use edge_sft::data::{load_jsonl, DataOptions, LossOn, TemplateMode};
use edge_sft::eval::score_example;
use edge_sft::infer::generate::{generate, GenerateOptions};
use edge_sft::loaded::LoadedModel;
use std::path::Path;
use std::sync::OnceLock;

fn model() -> Option<&'static LoadedModel> {
    static M: OnceLock<Option<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| {
        match common::find_model("EDGE_SFT_MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf") {
            Some(p) => Some(LoadedModel::open(&p).expect("open SmolLM2")),
            None => {
                eprintln!("note: SmolLM2 GGUF not found (run scripts/fetch_model.sh); skipping");
                None
            }
        }
    })
    .as_ref()
}

use common::{golden_json as golden, ids_of};

#[test]
fn eval_matches_transformers_per_record() {
    let Some(lm) = model() else { return };
    let g = golden("smollm2_eval.json");
    let tol = common::tol().real_record;
    let mut worst = common::Worst::default();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/eval_smollm2.jsonl");
    for (loss_on, key_lp, key_n) in [
        (LossOn::Response, "sum_logprob", "scored_tokens"),
        (LossOn::All, "sum_logprob_all", "scored_tokens_all"),
    ] {
        let opts = DataOptions {
            loss_on,
            template: TemplateMode::Model,
            max_seq: 8192,
            skip_bad: false,
        };
        let ds = load_jsonl(&data, &lm.tokenizer, &lm.chat, &opts).unwrap();
        let recs = g["records"].as_array().unwrap();
        assert!(recs.len() >= 20);
        assert_eq!(ds.examples.len(), recs.len());
        for (ex, rec) in ds.examples.iter().zip(recs) {
            assert_eq!(ex.ids, ids_of(&rec["ids"]), "line {}: ids", ex.line);
            if loss_on == LossOn::Response {
                let mask: Vec<bool> = rec["mask"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64() == Some(1))
                    .collect();
                assert_eq!(ex.mask, mask, "line {}: mask", ex.line);
            }
            let s = score_example(&lm.model, ex, None).unwrap();
            let want = rec[key_lp].as_f64().unwrap();
            assert_eq!(
                s.scored_tokens as u64,
                rec[key_n].as_u64().unwrap(),
                "line {}",
                ex.line
            );
            let rel = (s.sum_logprob - want).abs() / want.abs().max(1e-9);
            worst.see("record sum log p (relative)", rel);
            assert!(
                rel < tol,
                "line {} {key_lp} on {}: {} vs transformers {want} (rel {rel:.2e})",
                ex.line,
                common::path_label(),
                s.sum_logprob
            );
        }
    }
    worst.print("SmolLM2 eval");
}

#[test]
fn greedy_generation_matches_transformers() {
    let Some(lm) = model() else { return };
    let g = golden("smollm2_generate.json");
    let mut long_runs = 0;
    for p in g["prompts"].as_array().unwrap() {
        let prompt_ids = ids_of(&p["prompt_ids"]);
        // The prompt goes through our template and tokenizer, too.
        let msgs: Vec<edge_sft::tokenize::chat::Message> =
            serde_json::from_value(p["messages"].clone()).unwrap();
        let text = lm.chat.render(&msgs, true).unwrap();
        assert_eq!(text, p["prompt_text"].as_str().unwrap());
        assert_eq!(lm.tokenizer.encode(&text).unwrap(), prompt_ids);
        let want = ids_of(&p["generated_ids"]);
        let opts = GenerateOptions {
            max_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_ids: vec![g["eos_id"].as_u64().unwrap() as u32],
        };
        let got = generate(&lm.model, None, &prompt_ids, &opts, |_| Ok(())).unwrap();
        // transformers includes the EOS it stopped at; we stop before emitting it.
        let want_body: Vec<u32> = if p["stopped_at_eos"].as_bool() == Some(true) {
            want[..want.len() - 1].to_vec()
        } else {
            want.clone()
        };
        // Token for token, except that a reduced-precision path may take the other branch
        // where transformers' top two logits were closer than its argmax tolerance; the two
        // continuations are then different texts and are compared no further.
        let margins: Vec<f64> = p["top2_margin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let split = got.iter().zip(&want_body).position(|(a, b)| a != b);
        match split {
            Some(i) if margins[i] < common::tol().argmax_tie => eprintln!(
                "{}: prompt {:?} takes the other branch of a near tie at token {i} (margin {})",
                common::path_label(),
                p["messages"],
                margins[i]
            ),
            _ => assert_eq!(got, want_body, "prompt {:?}", p["messages"]),
        }
        if got.len() >= 32 {
            long_runs += 1;
        }
        let text = lm.tokenizer.decode(&got).unwrap();
        if p["prompt_text"]
            .as_str()
            .unwrap()
            .contains("capital of France")
        {
            assert!(text.contains("Paris"), "{text}");
        }
    }
    assert!(
        long_runs >= 3,
        "at least 3 prompts must be compared over 32+ new tokens"
    );
}
