//! The real Gemma 3 270M (base) Q4_K_M GGUF against transformers loading the same GGUF
//! dequantized (tests/reference/golden_gemma3.py): the Gemma SentencePiece tokenizer built from
//! the GGUF vocabulary (ids and masks through the built-in Gemma turn format, as the base model
//! ships no chat template), per-record Σ log Pr(y|x) within 1e-3 relative on both objectives,
//! and greedy generation token for token on 4 prompts.
//! Skipped (with a note) when the model file is absent: scripts/fetch_gemma3.sh fetches it
//! (or point EDGE_SFT_GEMMA3 at it).

mod common;

use edge_sft::data::{load_jsonl, DataOptions, LossOn, TemplateMode};
use edge_sft::eval::score_example;
use edge_sft::infer::generate::{generate, GenerateOptions};
use edge_sft::loaded::LoadedModel;
use std::path::Path;
use std::sync::OnceLock;

fn model() -> Option<&'static LoadedModel> {
    static M: OnceLock<Option<LoadedModel>> = OnceLock::new();
    M.get_or_init(
        || match common::find_model("EDGE_SFT_GEMMA3", "gemma-3-270m-q4_k_m.gguf") {
            Some(p) => Some(LoadedModel::open(&p).expect("open Gemma 3")),
            None => {
                eprintln!("note: Gemma 3 GGUF not found (run scripts/fetch_gemma3.sh); skipping");
                None
            }
        },
    )
    .as_ref()
}

use common::{golden_json as golden, ids_of};

#[test]
fn gemma3_config_and_template() {
    let Some(lm) = model() else { return };
    let c = &lm.model.config;
    assert_eq!((c.n_layers, c.d_model, c.vocab_size), (18, 640, 262_144));
    // Every 6th layer global, the rest local with their own RoPE base.
    let global: Vec<usize> = (0..c.n_layers).filter(|&l| !c.is_sliding(l)).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!(c.window(0), 512);
    assert_eq!(
        (c.rope_theta_of(0), c.rope_theta_of(5)),
        (10_000.0, 1_000_000.0)
    );
    assert_eq!(lm.chat.fallback_name(), Some("Gemma"));
    assert_eq!(
        lm.tokenizer.eot_id,
        lm.tokenizer.token_to_id("<end_of_turn>")
    );
}

#[test]
fn gemma3_eval_matches_transformers_per_record() {
    let Some(lm) = model() else { return };
    let g = golden("gemma3_eval.json");
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
            assert_eq!(s.scored_tokens as u64, rec[key_n].as_u64().unwrap());
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
    worst.print("Gemma 3 eval");
}

#[test]
fn gemma3_greedy_generation_matches_transformers() {
    let Some(lm) = model() else { return };
    let g = golden("gemma3_generate.json");
    let prompts = g["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 4);
    for p in prompts {
        let prompt_ids = ids_of(&p["prompt_ids"]);
        let msgs: Vec<edge_sft::tokenize::chat::Message> =
            serde_json::from_value(p["messages"].clone()).unwrap();
        let text = lm.chat.render(&msgs, true).unwrap();
        assert_eq!(lm.tokenizer.encode(&text).unwrap(), prompt_ids);
        let stop: Vec<u32> = ids_of(&g["stop_ids"]);
        let want = ids_of(&p["generated_ids"]);
        let opts = GenerateOptions {
            max_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_ids: stop.clone(),
        };
        let got = generate(&lm.model, None, &prompt_ids, &opts, |_| Ok(())).unwrap();
        // transformers keeps the stop token it ended on; we stop before emitting it.
        let want_body: Vec<u32> = match want.last() {
            Some(t) if stop.contains(t) => want[..want.len() - 1].to_vec(),
            _ => want.clone(),
        };
        assert_eq!(got, want_body, "prompt {:?}", p["messages"]);
    }
}

/// `eval --per-example-ids` (what tests/reference/llamacpp_check.py compares with llama.cpp's
/// tokenizer) writes the ids and scored positions edge-sft trains on: for Gemma, BOS once, from
/// the turn format's `{{ bos_token }}`, as transformers tokenizes the same text (first 4
/// golden records).
#[test]
fn gemma3_eval_per_example_ids_are_the_golden_ids() {
    let Some(lm) = model() else { return };
    let g = golden("gemma3_eval.json");
    let recs = &g["records"].as_array().unwrap()[..4];
    let dir = std::env::temp_dir().join(format!("edge-sft-g3ids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/eval_smollm2.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(4)
        .map(String::from)
        .collect();
    let (data, per) = (dir.join("data.jsonl"), dir.join("per.jsonl"));
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_edge-sft"))
        .args([
            "eval",
            "--threads",
            "2",
            "--json",
            "--per-example-ids",
            "--model",
        ])
        .arg(&lm.model.path)
        .arg("--data")
        .arg(&data)
        .arg("--per-example")
        .arg(&per)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&per)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), recs.len());
    let bos = lm.tokenizer.bos_id.unwrap();
    for (row, rec) in rows.iter().zip(recs) {
        let ids = ids_of(&row["ids"]);
        assert_eq!(ids, ids_of(&rec["ids"]), "line {}: ids", row["line"]);
        assert_eq!(ids[0], bos);
        assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1, "one BOS");
        let scored: Vec<u64> = rec["mask"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.as_u64() == Some(1))
            .map(|(t, _)| t as u64)
            .collect();
        let got: Vec<u64> = row["scored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got, scored, "line {}: scored positions", row["line"]);
        assert_eq!(row["scored_tokens"].as_u64(), Some(scored.len() as u64));
        assert_eq!(row["tokens"].as_u64(), Some(ids.len() as u64));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
