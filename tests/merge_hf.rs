//! `merge --format hf` (src/merge_hf.rs) on the tiny Llama (RoPE-permuted q/k in the GGUF) and
//! Qwen2 fixtures: edge-sft loads the folder as a Hugging Face model and computes what base +
//! adapter computes; the tokenizer and chat template survive; a tied base stays tied; quantized
//! types are refused. transformers' view of the folder: tests/reference/merge_hf_check.py.

use edge_sft::format::gguf::GgufFile;
use edge_sft::format::gguf_adapter::{write_gguf_adapter, AdapterDtype};
use edge_sft::format::hf_dir::HfDir;
use edge_sft::loaded::LoadedModel;
use edge_sft::merge_hf::merge_to_hf;
use edge_sft::quant::GgmlType;
use std::path::Path;

#[path = "support/merge.rs"]
mod support;
use support::*;

fn to_hf(base: &Path, seed: u64, out: &Path, dtype: GgmlType) -> edge_sft::model::lora::LoraSet {
    let g = GgufFile::open(base).unwrap();
    let cfg = LoadedModel::open(base).unwrap().model.config;
    let lora = random_lora(&cfg, 4, seed, 0.2);
    let mut calls = 0;
    let r = merge_to_hf(&g, &cfg, &lora, out, dtype, |_, _, _| calls += 1).unwrap();
    assert_eq!(
        (r.tensors, r.merged, calls),
        (g.tensors.len(), 7 * cfg.n_layers, g.tensors.len())
    );
    lora
}

#[test]
fn hf_folder_computes_base_plus_adapter() {
    for arch in ["llama", "qwen2"] {
        let d = tmp(&format!("hf-{arch}"));
        let base = tiny(&format!("{arch}/q8_0.gguf"));
        let out = d.join("hf");
        let lora = to_hf(&base, 21, &out, GgmlType::F32);
        let (want, want_lp) = run_model(&base, &IDS, Some(&lora));
        let (got, got_lp) = run_model(&out, &IDS, None);
        let (plain, _) = run_model(&base, &IDS, None);
        let err = max_rel(&got, &want);
        eprintln!(
            "{arch}: HF folder logits {err:.2e} (adapter moves them {:.2e})",
            max_rel(&plain, &want)
        );
        assert!(max_rel(&plain, &want) > 1e-2);
        assert!(err < 1e-4, "{arch}: {err:.2e}");
        assert!(
            (got_lp - want_lp).abs() < 1e-4 * want_lp.abs(),
            "{arch}: {got_lp} vs {want_lp}"
        );

        // The tokenizer and template edge-sft builds from the GGUF, read back from the folder.
        let (a, b) = (
            LoadedModel::open(&base).unwrap(),
            LoadedModel::open(&out).unwrap(),
        );
        let text = "the cat sat on the mat, 123 — ünïcode\n\n<|im_start|>";
        assert_eq!(
            a.tokenizer.encode(text).unwrap(),
            b.tokenizer.encode(text).unwrap()
        );
        assert_eq!(a.tokenizer.chat_template, b.tokenizer.chat_template);
        assert_eq!(
            (a.tokenizer.bos_id, a.tokenizer.eos_id),
            (b.tokenizer.bos_id, b.tokenizer.eos_id)
        );
        assert_eq!(a.tokenizer.add_bos, b.tokenizer.add_bos);

        // f16 is within f16 rounding of the f32 folder.
        let out16 = d.join("hf16");
        to_hf(&base, 21, &out16, GgmlType::F16);
        let (got16, _) = run_model(&out16, &IDS, None);
        let e16 = max_rel(&got16, &got);
        assert!(e16 < 2e-2 && e16 > 0.0, "{arch}: f16 vs f32 {e16:.2e}");
    }
}

#[test]
fn hf_tied_stays_tied_and_quantized_types_are_refused() {
    let d = tmp("hf-tied");
    let base = tied_copy(&tiny("llama/q4_1.gguf"), &d.join("tied.gguf"));
    let out = d.join("hf");
    to_hf(&base, 3, &out, GgmlType::BF16);
    let h = HfDir::open(&out).unwrap();
    assert!(!h.has("lm_head.weight"));
    assert_eq!(h.config()["tie_word_embeddings"], true);
    assert_eq!(h.config()["torch_dtype"], "bfloat16");
    assert_eq!(h.dtype("model.embed_tokens.weight"), Some(GgmlType::BF16));
    assert!(
        LoadedModel::open(&out)
            .unwrap()
            .model
            .config
            .tied_embeddings
    );

    let g = GgufFile::open(&base).unwrap();
    let cfg = LoadedModel::open(&base).unwrap().model.config;
    let lora = random_lora(&cfg, 4, 3, 0.2);
    let ag = d.join("adapter.gguf");
    write_gguf_adapter(&ag, &lora, &cfg, "tiny", AdapterDtype::F32).unwrap();
    let args = ["--format", "hf", "--dtype", "q8_0"];
    let e = cli_err(
        &[
            &[
                "merge",
                "--model",
                s(&base),
                "--adapter",
                s(&ag),
                "--out",
                s(&d.join("q")),
            ][..],
            &args,
        ]
        .concat(),
    );
    assert!(e.contains("f32, f16 or bf16"), "{e}");
    let e = merge_to_hf(&g, &cfg, &lora, &d.join("q"), GgmlType::Q8_0, |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32, f16 or bf16"), "{e}");
    assert!(!d.join("q").exists());
}
