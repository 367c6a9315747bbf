//! A model whose tensors disagree with its own config, or with the tokenizer, is refused with an
//! error naming the tensor and both shapes — never a panic or a silent mis-read.

use edge_sft::format::gguf::{GgufFile, Value};
use edge_sft::format::gguf_write::GgufWriter;
use edge_sft::loaded::LoadedModel;
use std::path::{Path, PathBuf};

fn tiny_gguf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/llama/q8_0.gguf")
}

/// Copy the tiny GGUF with `edit` applied to its metadata and `drop` tensors left out.
fn rewrite(name: &str, edit: impl Fn(&str, &Value) -> Value, drop: &[&str]) -> PathBuf {
    let g = GgufFile::open(&tiny_gguf()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        if k != "general.alignment" {
            w.set(k.clone(), edit(k, v));
        }
    }
    for t in &g.tensors {
        if !drop.contains(&t.name.as_str()) {
            w.add_tensor(t.name.clone(), &t.dims, t.dtype, g.tensor_bytes(t).to_vec())
                .unwrap();
        }
    }
    let p = std::env::temp_dir().join(format!(
        "edge-sft-badmodel-{}-{name}.gguf",
        std::process::id()
    ));
    w.write(&p).unwrap();
    p
}

fn open_err(p: &Path) -> String {
    match LoadedModel::open(p) {
        Ok(_) => panic!("{} should have been refused", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_unmodified_copy_loads() {
    let p = rewrite("same", |_, v| v.clone(), &[]);
    LoadedModel::open(&p).unwrap();
}

#[test]
fn a_shape_that_does_not_match_the_config_names_the_tensor() {
    let p = rewrite(
        "ffn",
        |k, v| {
            if k == "llama.feed_forward_length" {
                Value::U32(96)
            } else {
                v.clone()
            }
        },
        &[],
    );
    let e = open_err(&p);
    assert!(
        e.contains("blk.0.ffn_gate.weight") && e.contains("[64, 32]") && e.contains("[96, 32]"),
        "{e}"
    );
}

#[test]
fn wrong_head_counts_and_missing_tensors_are_named() {
    let p = rewrite(
        "kv",
        |k, v| {
            if k == "llama.attention.head_count_kv" {
                Value::U32(4)
            } else {
                v.clone()
            }
        },
        &[],
    );
    let e = open_err(&p);
    assert!(e.contains("blk.0.attn_k.weight"), "{e}");

    let p = rewrite("missing", |_, v| v.clone(), &["blk.1.ffn_up.weight"]);
    let e = open_err(&p);
    assert!(e.contains("blk.1.ffn_up.weight"), "{e}");

    let p = rewrite(
        "arch",
        |k, v| {
            if k == "general.architecture" {
                Value::String("gpt-neox".into())
            } else {
                v.clone()
            }
        },
        &[],
    );
    let e = open_err(&p);
    assert!(e.contains("unsupported architecture 'gpt-neox'"), "{e}");
}
