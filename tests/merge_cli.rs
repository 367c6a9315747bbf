//! `merge` (src/merge.rs, src/cli/merge.rs) on the tiny fixtures: untouched tensors and
//! metadata are copied byte for byte and a tied output projection stays tied; the CLI gives the
//! same file from a PEFT folder and an adapter.gguf; bad adapters and impossible types give
//! errors naming the tensor.

use edge_sft::format::gguf::GgufFile;
use edge_sft::format::gguf_adapter::{write_gguf_adapter, AdapterDtype};
use edge_sft::format::gguf_write::GgufWriter;
use edge_sft::format::peft::write_adapter;
use edge_sft::loaded::LoadedModel;
use edge_sft::merge::{merge_gguf, MergeOptions};
use edge_sft::model::lora::{LoraPair, LoraSet, Target};
use edge_sft::quant::GgmlType;
use std::path::Path;

#[path = "support/merge.rs"]
mod support;
use support::*;

/// (3) Untouched tensors and all metadata are copied as they are; a tied model stays tied. The
/// CLI writes the same bytes from a PEFT folder and from an adapter.gguf as the library does.
#[test]
fn untouched_copied_tied_stays_tied_and_cli_agrees() {
    let d = tmp("copy");
    // The untied fixture, and a tied variant of it (no output.weight, as in SmolLM2).
    let untied = tiny("llama/q4_1.gguf");
    let tied = tied_copy(&untied, &d.join("tied.gguf"));
    for base in [&untied, &tied] {
        let lib = d.join("lib.gguf");
        let lora = check_copy(base, &lib);
        if base == &tied {
            check_cli(&d, base, &lora, &lib);
        }
    }
}

/// Merge a random adapter into `base` as `lib`: untouched tensors and metadata are the base's;
/// a tied base stays tied.
fn check_copy(base: &Path, lib: &Path) -> LoraSet {
    let g = GgufFile::open(base).unwrap();
    let cfg = LoadedModel::open(base).unwrap().model.config;
    let lora = random_lora(&cfg, 4, 5, 0.2);
    merge_to(base, &lora, lib, None);
    let m = GgufFile::open(lib).unwrap();
    assert_eq!(cfg.tied_embeddings, g.tensor("output.weight").is_none());
    assert_eq!(
        m.tensor("output.weight").is_none(),
        cfg.tied_embeddings,
        "the merge untied the output projection"
    );
    // All metadata is the base's but general.file_type: the projections, most of the
    // matrices, are Q8_0 now (7), no longer Q4_1 (3).
    let without_ftype = |f: &GgufFile| {
        let mut md = f.metadata.clone();
        md.retain(|k, _| k != "general.file_type");
        md
    };
    assert_eq!(without_ftype(&m), without_ftype(&g), "metadata changed");
    assert_eq!(g.get_u32("general.file_type"), Some(3));
    assert_eq!(m.get_u32("general.file_type"), Some(7));
    let names = |f: &GgufFile| f.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&m), names(&g));
    let mut same = 0;
    for t in &g.tensors {
        let n = &m.require(&t.name).unwrap();
        let touched = t.name.starts_with("blk.") && !t.name.contains("norm");
        // Merged projections of this Q4_1 base default to Q8_0 (see `default_merge_type`).
        let want = if touched {
            edge_sft::merge::default_merge_type(t.dtype, t.dims[0] as usize)
        } else {
            t.dtype
        };
        assert_eq!((&n.dims, n.dtype), (&t.dims, want), "{}", t.name);
        if touched {
            assert!(
                m.tensor_bytes(n) != g.tensor_bytes(t),
                "{} not merged",
                t.name
            );
        } else {
            assert!(m.tensor_bytes(n) == g.tensor_bytes(t), "{} changed", t.name);
            same += 1;
        }
    }
    assert!(
        same >= 6,
        "token_embd, output_norm and the norms are copied ({same})"
    );
    assert_eq!(m.data_offset % m.alignment, 0);
    let merged_cfg = LoadedModel::open(lib).unwrap().model.config;
    assert_eq!(merged_cfg.tied_embeddings, cfg.tied_embeddings);
    lora
}

/// The CLI from PEFT (Hugging Face row order on disk) and from GGUF gives the library's bytes.
fn check_cli(d: &Path, base: &Path, lora: &LoraSet, lib: &Path) {
    let cfg = LoadedModel::open(base).unwrap().model.config;
    let n = GgufFile::open(base).unwrap().tensors.len();
    let peft = d.join("peft");
    write_adapter(&peft, lora, &cfg, "tiny", 0.0).unwrap();
    let ag = d.join("adapter.gguf");
    write_gguf_adapter(&ag, lora, &cfg, "tiny", AdapterDtype::F32).unwrap();
    for (adapter, out) in [
        (&peft, d.join("cli_peft.gguf")),
        (&ag, d.join("cli_gguf.gguf")),
    ] {
        let o = cli(&[
            "merge",
            "--model",
            s(base),
            "--adapter",
            s(adapter),
            "--out",
            s(&out),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("tensor {n}/{n}")), "{err}");
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(lib).unwrap(),
            "{}",
            out.display()
        );
    }
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// (4) An adapter for another model, a missing half, an impossible --dtype or the base itself
/// as output: clear errors naming the file and tensor, and no output file.
#[test]
fn bad_merges_give_clear_errors() {
    let d = tmp("bad");
    let llama = tiny("llama/q8_0.gguf");
    let qwen = tiny("qwen2/q8_0.gguf");
    let lcfg = LoadedModel::open(&llama).unwrap().model.config;
    let out = d.join("out.gguf");
    let run = |adapter: &Path, model: &Path| {
        cli_err(&[
            "merge",
            "--model",
            s(model),
            "--adapter",
            s(adapter),
            "--out",
            s(&out),
        ])
    };

    // Same architecture, other shapes: the pair's dims do not fit this model's tensor.
    let mut wide = lcfg.clone();
    wide.d_model *= 2;
    let ag = d.join("wide.gguf");
    write_gguf_adapter(
        &ag,
        &random_lora(&wide, 4, 3, 0.1),
        &wide,
        "wide",
        AdapterDtype::F32,
    )
    .unwrap();
    let e = run(&ag, &llama);
    assert!(
        e.contains("blk.0.attn_q.weight.lora_a") && e.contains("for this model"),
        "{e}"
    );

    // Another architecture.
    let ag = d.join("llama.gguf");
    write_gguf_adapter(
        &ag,
        &random_lora(&lcfg, 4, 3, 0.1),
        &lcfg,
        "tiny",
        AdapterDtype::F32,
    )
    .unwrap();
    let e = run(&ag, &qwen);
    assert!(e.contains("another base model"), "{e}");

    // A missing half.
    let src = GgufFile::open(&ag).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in src
        .tensors
        .iter()
        .filter(|t| t.name != "blk.1.ffn_up.weight.lora_b")
    {
        w.add_tensor(t.name.clone(), &t.dims, t.dtype, src.tensor_bytes(t))
            .unwrap();
    }
    let half = d.join("half.gguf");
    w.write(&half).unwrap();
    let e = run(&half, &llama);
    assert!(
        e.contains("blk.1.ffn_up.weight.lora_b") && e.contains("missing"),
        "{e}"
    );

    // The library's own check of shapes (a set built in memory for another model).
    let g = GgufFile::open(&llama).unwrap();
    let mut bad = random_lora(&lcfg, 4, 3, 0.1);
    let p = bad.layers[1][Target::Down.index()].as_mut().unwrap();
    p.in_dim *= 2;
    p.a.resize(p.a.len() * 2, 0.0);
    let e = merge_gguf(&g, &bad, &out, &MergeOptions::default(), |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.1.ffn_down.weight") && e.contains("another model"),
        "{e}"
    );

    // The base as its own output.
    let e = cli_err(&[
        "merge",
        "--model",
        s(&llama),
        "--adapter",
        s(&ag),
        "--out",
        s(&llama),
    ]);
    assert!(e.contains("overwrite"), "{e}");
    let e = merge_gguf(
        &g,
        &random_lora(&lcfg, 4, 3, 0.1),
        &llama,
        &MergeOptions::default(),
        |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("overwrite"), "{e}");
    assert!(!out.exists(), "a failed merge left an output file");
}

/// (4, continued) Rows that are not a whole number of blocks cannot become Q8_0/Q4_*: the error
/// names the tensor and the fix; f16 works.
#[test]
fn impossible_dtype_names_the_tensor() {
    let d = tmp("dtype");
    let base = d.join("odd.gguf");
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama")
        .set_u32("llama.block_count", 1)
        .set_u32("llama.embedding_length", 48)
        .set_u32("llama.attention.head_count", 2)
        .set_u32("llama.feed_forward_length", 64);
    let vals = |n: usize| {
        (0..n)
            .map(|i| (i as f32 * 0.37).sin())
            .collect::<Vec<f32>>()
    };
    w.add_tensor_f32("token_embd.weight", &[48, 10], &vals(480))
        .unwrap();
    w.add_tensor_f32("blk.0.attn_q.weight", &[48, 48], &vals(48 * 48))
        .unwrap();
    w.write(&base).unwrap();
    let g = GgufFile::open(&base).unwrap();
    let mut slots: [Option<LoraPair>; 7] = Default::default();
    slots[0] = Some(LoraPair {
        a: vals(2 * 48),
        b: vals(48 * 2),
        rank: 2,
        in_dim: 48,
        out_dim: 48,
    });
    let lora = LoraSet {
        rank: 2,
        alpha: 2.0,
        scale: 1.0,
        targets: vec![Target::Q],
        layers: vec![slots],
    };
    let out = d.join("out.gguf");
    let opts = |t| MergeOptions { dtype: Some(t) };
    let e = merge_gguf(&g, &lora, &out, &opts(GgmlType::Q8_0), |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("Q8_0") && e.contains("f16"),
        "{e}"
    );
    assert!(!out.exists());
    merge_gguf(&g, &lora, &out, &opts(GgmlType::F16), |_, _, _| {}).unwrap();
    let m = GgufFile::open(&out).unwrap();
    assert_eq!(
        m.require("blk.0.attn_q.weight").unwrap().dtype,
        GgmlType::F16
    );
    assert!(
        m.tensor_bytes(m.require("token_embd.weight").unwrap())
            == g.tensor_bytes(g.require("token_embd.weight").unwrap())
    );
}
