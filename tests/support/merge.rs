//! Helpers shared by tests/merge.rs and tests/merge_cli.rs (included with `#[path]`).
#![allow(dead_code)] // each test binary uses a different subset

use edge_sft::data::Example;
use edge_sft::eval::score_example;
use edge_sft::format::gguf::GgufFile;
use edge_sft::format::gguf_write::GgufWriter;
use edge_sft::format::peft::target_dims;
use edge_sft::loaded::LoadedModel;
use edge_sft::merge::{merge_gguf, MergeOptions};
use edge_sft::model::config::ModelConfig;
use edge_sft::model::forward::KvCache;
use edge_sft::model::lora::{LoraPair, LoraSet, Target};
use edge_sft::quant::GgmlType;
use std::path::{Path, PathBuf};

pub fn tiny(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-merge-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random adapter on all seven projections of every layer, values uniform in ±`amp`
/// (xorshift, so the test needs no extra crates). α/r = 2.
pub fn random_lora(cfg: &ModelConfig, rank: usize, seed: u64, amp: f32) -> LoraSet {
    let mut s = seed | 1;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
    };
    let layers = (0..cfg.n_layers)
        .map(|_| {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for t in Target::ALL {
                let (in_dim, out_dim) = target_dims(cfg, t);
                slots[t.index()] = Some(LoraPair {
                    a: (0..rank * in_dim).map(|_| rnd()).collect(),
                    b: (0..out_dim * rank).map(|_| rnd()).collect(),
                    rank,
                    in_dim,
                    out_dim,
                });
            }
            slots
        })
        .collect();
    LoraSet {
        rank,
        alpha: 2.0 * rank as f32,
        scale: 2.0,
        targets: Target::ALL.to_vec(),
        layers,
    }
}

pub fn merge_to(base: &Path, lora: &LoraSet, out: &Path, dtype: Option<GgmlType>) {
    let g = GgufFile::open(base).unwrap();
    let mut calls = 0;
    let r = merge_gguf(&g, lora, out, &MergeOptions { dtype }, |d, n, _| {
        calls += 1;
        assert_eq!((d, n), (calls, g.tensors.len()));
    })
    .unwrap();
    assert_eq!(r.tensors, g.tensors.len());
    assert_eq!(r.merged, 7 * lora.layers.len());
    assert_eq!(calls, g.tensors.len());
}

/// Logits of every position and the summed log-probability of all tokens after the first.
pub fn run_model(path: &Path, ids: &[u32], lora: Option<&LoraSet>) -> (Vec<f32>, f64) {
    let lm = LoadedModel::open(path).unwrap();
    let mut cache = KvCache::new(lm.model.layers.len());
    let h = lm.model.forward(ids, &mut cache, lora).unwrap();
    let logits = lm.model.logits(&h, ids.len());
    let ex = Example {
        ids: ids.to_vec(),
        mask: (0..ids.len()).map(|t| t > 0).collect(),
        line: 0,
    };
    (
        logits,
        score_example(&lm.model, &ex, lora).unwrap().sum_logprob,
    )
}

pub fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y).abs() / y.abs().max(1.0)) as f64)
        .fold(0.0, f64::max)
}

pub const IDS: [u32; 12] = [1, 17, 5, 200, 33, 9, 41, 150, 7, 7, 250, 2];

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_edge-sft"))
        .args(args)
        .args(["--threads", "1"])
        .output()
        .unwrap()
}

pub fn cli_err(args: &[&str]) -> String {
    let o = cli(args);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of the GGUF `src` without `output.weight`: the same model with tied embeddings (as
/// SmolLM2 ships), written to `out`.
pub fn tied_copy(src: &Path, out: &Path) -> PathBuf {
    let g = GgufFile::open(src).unwrap();
    assert!(g.tensor("output.weight").is_some());
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k.clone(), v.clone());
    }
    for t in g.tensors.iter().filter(|t| t.name != "output.weight") {
        w.add_tensor(t.name.clone(), &t.dims, t.dtype, g.tensor_bytes(t))
            .unwrap();
    }
    w.write(out).unwrap();
    out.to_path_buf()
}
