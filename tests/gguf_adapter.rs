//! GGUF LoRA adapters (format/gguf_adapter.rs) on the tiny Llama and Qwen2 fixtures: PEFT ->
//! GGUF -> PEFT is bit-identical in f32; the metadata types and ggml dims are the ones
//! llama.cpp's adapter loader checks; q/k `lora_b` rows are in GGUF (RoPE-permuted) order for
//! Llama whether the model was opened as GGUF or as an HF folder; bad files give errors naming
//! the file and tensor; f16/bf16 round trips are exact to the dtype's rounding; `edge-sft
//! export` converts both ways.

use edge_sft::format::gguf::{GgufFile, Value};
use edge_sft::format::gguf_adapter::{
    gguf_base_name, read_any_adapter, read_gguf_adapter, write_gguf_adapter, AdapterDtype,
};
use edge_sft::format::gguf_write::GgufWriter;
use edge_sft::format::peft::{peft_key, read_adapter, target_dims, write_adapter, WEIGHTS_FILE};
use edge_sft::loaded::LoadedModel;
use edge_sft::model::config::ModelConfig;
use edge_sft::model::lora::{permute_rows, Target};
use edge_sft::quant::GgmlType;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

fn tiny(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "edge-sft-gguf-adapter-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The config of a fixture: `base` is "hf_f32" (a folder) or a GGUF stem like "q8_0".
fn cfg(arch: &str, base: &str) -> ModelConfig {
    let p = if base == "hf_f32" {
        tiny(arch).join(base)
    } else {
        tiny(arch).join(format!("{base}.gguf"))
    };
    LoadedModel::open(&p).unwrap().model.config
}

fn peft_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(WEIGHTS_FILE)).unwrap()
}

/// PEFT tensor `key` as f32 values, row-major.
fn peft_f32(st: &SafeTensors, key: &str) -> Vec<f32> {
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Write the train_init PEFT adapter of `arch` as GGUF with the config of `base`.
fn to_gguf(arch: &str, base: &str, dtype: AdapterDtype, out: &Path) -> ModelConfig {
    let c = cfg(arch, base);
    let lora = read_adapter(&tiny(arch).join("train_init"), &c).unwrap();
    write_gguf_adapter(out, &lora, &c, "tiny", dtype).unwrap();
    c
}

#[test]
fn peft_gguf_peft_round_trip_is_bit_identical() {
    for arch in ["llama", "qwen2"] {
        for base in ["q8_0", "hf_f32"] {
            let d = tmp(&format!("rt-{arch}-{base}"));
            let c = to_gguf(arch, base, AdapterDtype::F32, &d.join("a.gguf"));
            let before = read_adapter(&tiny(arch).join("train_init"), &c).unwrap();
            let back = read_gguf_adapter(&d.join("a.gguf"), &c).unwrap();
            assert_eq!(
                (back.rank, back.alpha, back.scale),
                (before.rank, before.alpha, before.scale)
            );
            assert_eq!(back.targets, before.targets);
            assert_eq!(
                back.layers, before.layers,
                "{arch}/{base}: LoRA values changed"
            );
            write_adapter(&d.join("peft"), &back, &c, "tiny", 0.0).unwrap();
            let (orig, ours) = (
                peft_bytes(&tiny(arch).join("train_init")),
                peft_bytes(&d.join("peft")),
            );
            let (orig, ours) = (
                SafeTensors::deserialize(&orig).unwrap(),
                SafeTensors::deserialize(&ours).unwrap(),
            );
            assert_eq!(orig.len(), ours.len());
            for (name, t) in orig.tensors() {
                let u = ours.tensor(&name).unwrap();
                assert_eq!(t.shape(), u.shape(), "{name}");
                assert!(
                    t.data() == u.data(),
                    "{arch}/{base}: {name} not bit-identical"
                );
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

#[test]
fn metadata_types_and_tensor_dims_are_what_llama_cpp_checks() {
    for arch in ["llama", "qwen2"] {
        let d = tmp(&format!("meta-{arch}"));
        let c = to_gguf(arch, "q8_0", AdapterDtype::F32, &d.join("a.gguf"));
        let g = GgufFile::open(&d.join("a.gguf")).unwrap();
        let s = |k: &str| g.get(k).cloned();
        assert_eq!(s("general.type"), Some(Value::String("adapter".into())));
        assert_eq!(s("adapter.type"), Some(Value::String("lora".into())));
        assert_eq!(s("general.architecture"), Some(Value::String(arch.into())));
        // FLOAT32, not an integer: llama.cpp's gguf_get_val_f32 aborts on any other type.
        assert_eq!(s("adapter.lora.alpha"), Some(Value::F32(8.0)));
        assert_eq!(
            s("general.base_model.0.name"),
            Some(Value::String("tiny".into()))
        );
        let peft = peft_bytes(&tiny(arch).join("train_init"));
        let st = SafeTensors::deserialize(&peft).unwrap();
        assert_eq!(g.tensors.len(), st.len());
        let r = 4u64;
        for layer in 0..c.n_layers {
            for t in Target::ALL {
                let (n_in, n_out) = target_dims(&c, t);
                let base = gguf_base_name(layer, t);
                let a = g.tensor(&format!("{base}.lora_a")).unwrap();
                let b = g.tensor(&format!("{base}.lora_b")).unwrap();
                assert_eq!(
                    a.dims,
                    [n_in as u64, r],
                    "{base}.lora_a: ggml dims [n_in, r]"
                );
                assert_eq!(
                    b.dims,
                    [r, n_out as u64],
                    "{base}.lora_b: ggml dims [r, n_out]"
                );
                assert_eq!((a.dtype, b.dtype), (GgmlType::F32, GgmlType::F32));
                // lora_a holds PEFT's lora_A bytes ([r, n_in] row-major).
                let pa = st.tensor(&peft_key(layer, t, "lora_A")).unwrap();
                assert!(g.tensor_bytes(a) == pa.data(), "{base}.lora_a bytes");
            }
        }
        // The names are the base model's own tensor names.
        let model = GgufFile::open(&tiny(arch).join("q8_0.gguf")).unwrap();
        for t in &g.tensors {
            let base = t
                .name
                .strip_suffix(".lora_a")
                .or(t.name.strip_suffix(".lora_b"))
                .unwrap();
            assert!(
                model.tensor(base).is_some(),
                "{base} is not a tensor of the base model"
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn qk_lora_b_rows_are_in_gguf_order() {
    for arch in ["llama", "qwen2"] {
        let d = tmp(&format!("rows-{arch}"));
        let c = to_gguf(arch, "q8_0", AdapterDtype::F32, &d.join("gguf_base.gguf"));
        to_gguf(arch, "hf_f32", AdapterDtype::F32, &d.join("hf_base.gguf"));
        // The file does not depend on whether the model was opened as GGUF or HF folder.
        assert!(
            std::fs::read(d.join("gguf_base.gguf")).unwrap()
                == std::fs::read(d.join("hf_base.gguf")).unwrap(),
            "{arch}: adapter.gguf differs between GGUF and HF-folder bases"
        );
        let g = GgufFile::open(&d.join("gguf_base.gguf")).unwrap();
        let peft = peft_bytes(&tiny(arch).join("train_init"));
        let st = SafeTensors::deserialize(&peft).unwrap();
        for layer in 0..c.n_layers {
            for t in [Target::Q, Target::K, Target::V] {
                let (_, n_out) = target_dims(&c, t);
                let hf = peft_f32(&st, &peft_key(layer, t, "lora_B"));
                let ours = g
                    .tensor_f32(&format!("{}.lora_b", gguf_base_name(layer, t)))
                    .unwrap();
                let want = if arch == "llama" && t != Target::V {
                    let p = permute_rows(&hf, n_out, 4, c.head_dim, true);
                    assert_ne!(
                        p, hf,
                        "the permutation must move rows for this check to mean anything"
                    );
                    p
                } else {
                    hf
                };
                assert_eq!(ours, want, "{arch} layer {layer} {t:?}: lora_b rows");
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Rewrite `good` into `out` with metadata overrides and a per-tensor edit (None drops it).
fn variant(
    good: &Path,
    out: &Path,
    meta: &[(&str, Value)],
    edit: impl Fn(&str, &[u64], Vec<f32>) -> Option<(Vec<u64>, Vec<f32>)>,
) {
    let g = GgufFile::open(good).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k.clone(), v.clone());
    }
    for (k, v) in meta {
        w.set(*k, v.clone());
    }
    for t in &g.tensors {
        if let Some((dims, vals)) = edit(&t.name, &t.dims, g.tensor_f32(&t.name).unwrap()) {
            w.add_tensor_f32(t.name.clone(), &dims, &vals).unwrap();
        }
    }
    w.write(out).unwrap();
}

fn err_of(path: &Path, c: &ModelConfig) -> String {
    read_gguf_adapter(path, c)
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_adapters_give_clear_errors() {
    let d = tmp("bad");
    let good = d.join("good.gguf");
    let c = to_gguf("llama", "q8_0", AdapterDtype::F32, &good);
    let keep = |_: &str, dims: &[u64], v: Vec<f32>| Some((dims.to_vec(), v));
    let check = |name: &str, e: String, wants: &[&str]| {
        println!("{name}: {e}");
        for w in wants {
            assert!(e.contains(w), "{name}: error '{e}' does not mention '{w}'");
        }
    };

    let p = d.join("missing_b.gguf");
    variant(&good, &p, &[], |n, dims, v| {
        (n != "blk.1.attn_k.weight.lora_b").then(|| (dims.to_vec(), v))
    });
    check(
        "missing half",
        err_of(&p, &c),
        &["missing_b.gguf", "blk.1.attn_k.weight.lora_b", "missing"],
    );

    // One pair at rank 2, the rest at rank 4: consistent within the pair, not with the set.
    let p = d.join("rank.gguf");
    variant(&good, &p, &[], |n, dims, v| {
        if n == "blk.1.attn_v.weight.lora_a" {
            Some((vec![dims[0], 2], v[..2 * dims[0] as usize].to_vec()))
        } else if n == "blk.1.attn_v.weight.lora_b" {
            Some((
                vec![2, dims[1]],
                v.chunks(4).flat_map(|r| r[..2].to_vec()).collect(),
            ))
        } else {
            Some((dims.to_vec(), v))
        }
    });
    check(
        "rank mismatch",
        err_of(&p, &c),
        &[
            "rank.gguf",
            "blk.1.attn_v.weight.lora_a",
            "rank 2",
            "rank 4",
        ],
    );

    // A lora_b whose rank disagrees with its own lora_a.
    let p = d.join("pair_rank.gguf");
    variant(&good, &p, &[], |n, dims, v| {
        if n == "blk.0.ffn_up.weight.lora_b" {
            Some((
                vec![2, dims[1]],
                v.chunks(4).flat_map(|r| r[..2].to_vec()).collect(),
            ))
        } else {
            Some((dims.to_vec(), v))
        }
    });
    check(
        "pair rank",
        err_of(&p, &c),
        &["blk.0.ffn_up.weight.lora_b", "rank 2", "rank 4"],
    );

    let p = d.join("arch.gguf");
    variant(
        &good,
        &p,
        &[("general.architecture", Value::String("qwen2".into()))],
        keep,
    );
    check(
        "architecture",
        err_of(&p, &c),
        &["arch.gguf", "general.architecture", "qwen2", "llama"],
    );
    // The real thing: a Qwen2 adapter offered to the Llama model.
    let q = d.join("qwen.gguf");
    to_gguf("qwen2", "q8_0", AdapterDtype::F32, &q);
    check(
        "qwen2 adapter on llama",
        err_of(&q, &c),
        &["qwen.gguf", "'qwen2'", "'llama'"],
    );

    let p = d.join("alpha.gguf");
    variant(&good, &p, &[("adapter.lora.alpha", Value::U32(8))], keep);
    check(
        "integer alpha",
        err_of(&p, &c),
        &["alpha.gguf", "adapter.lora.alpha", "FLOAT32"],
    );

    let p = d.join("type.gguf");
    variant(
        &good,
        &p,
        &[("general.type", Value::String("model".into()))],
        keep,
    );
    check(
        "general.type",
        err_of(&p, &c),
        &["type.gguf", "general.type", "adapter"],
    );

    let p = d.join("shape.gguf");
    variant(&good, &p, &[], |n, dims, v| {
        if n == "blk.0.attn_output.weight.lora_a" {
            Some((vec![16, 4], v[..64].to_vec()))
        } else {
            Some((dims.to_vec(), v))
        }
    });
    check(
        "shape",
        err_of(&p, &c),
        &[
            "shape.gguf",
            "blk.0.attn_output.weight.lora_a",
            "[16, 4]",
            "n_in",
        ],
    );

    let p = d.join("unknown.gguf");
    // A pair for a layer the model does not have (2 layers).
    let g = GgufFile::open(&good).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k.clone(), v.clone());
    }
    w.add_tensor_f32("blk.7.attn_q.weight.lora_a", &[32, 4], &[0.0; 128])
        .unwrap();
    w.write(&p).unwrap();
    check(
        "unknown tensor",
        err_of(&p, &c),
        &["unknown.gguf", "blk.7.attn_q.weight.lora_a"],
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn f16_and_bf16_round_trip_to_the_dtype_rounding() {
    for arch in ["llama", "qwen2"] {
        let d = tmp(&format!("half-{arch}"));
        for (dtype, ty) in [
            (AdapterDtype::F16, GgmlType::F16),
            (AdapterDtype::Bf16, GgmlType::BF16),
        ] {
            let p = d.join("a.gguf");
            let c = to_gguf(arch, "q8_0", dtype, &p);
            let g = GgufFile::open(&p).unwrap();
            assert!(
                g.tensors.iter().all(|t| t.dtype == ty),
                "{dtype:?}: tensor types"
            );
            let want = read_adapter(&tiny(arch).join("train_init"), &c).unwrap();
            let got = read_gguf_adapter(&p, &c).unwrap();
            let round = |x: f32| match dtype {
                AdapterDtype::F16 => half::f16::from_f32(x).to_f32(),
                _ => half::bf16::from_f32(x).to_f32(),
            };
            let rel = if dtype == AdapterDtype::F16 {
                2f32.powi(-11)
            } else {
                2f32.powi(-8)
            };
            for (pw, pg) in want
                .layers
                .iter()
                .flatten()
                .zip(got.layers.iter().flatten())
            {
                let (pw, pg) = (pw.as_ref().unwrap(), pg.as_ref().unwrap());
                for (x, y) in pw.a.iter().chain(&pw.b).zip(pg.a.iter().chain(&pg.b)) {
                    assert_eq!(*y, round(*x), "{arch} {dtype:?}: {x} read back as {y}");
                    assert!((x - y).abs() <= rel * x.abs() + 1e-7, "{x} vs {y}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn export_cli_converts_both_ways() {
    let d = tmp("cli");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let export = |args: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edge-sft"))
            .arg("export")
            .args(args.split(' '))
            .output()
            .unwrap()
    };
    let run = |args: String| {
        let o = export(&args);
        assert!(
            o.status.success(),
            "export {args}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let model = s(&tiny("llama/q8_0.gguf"));
    let (init, gguf, peft) = (tiny("llama/train_init"), d.join("x.gguf"), d.join("peft"));
    run(format!(
        "{} --model {model} --to gguf --out {}",
        s(&init),
        s(&gguf)
    ));
    run(format!(
        "{} --model {model} --to peft --out {}",
        s(&gguf),
        s(&peft)
    ));
    let c = cfg("llama", "q8_0");
    let layers = |p: &Path| read_any_adapter(p, &c).unwrap().layers;
    assert_eq!(layers(&peft), layers(&init));
    // bf16 into an existing folder lands as adapter.gguf inside it.
    run(format!(
        "{} --model {model} --to gguf --out {} --adapter-dtype bf16",
        s(&init),
        s(&d)
    ));
    let g = GgufFile::open(&d.join("adapter.gguf")).unwrap();
    assert!(g.tensors.iter().all(|t| t.dtype == GgmlType::BF16));
    // A mismatched base is refused with the reason.
    let qwen = s(&tiny("qwen2/q8_0.gguf"));
    let o = export(&format!(
        "{} --model {qwen} --to peft --out {}",
        s(&gguf),
        s(&d.join("bad"))
    ));
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("general.architecture") && e.contains("x.gguf"),
        "{e}"
    );
    assert!(!d.join("bad").exists(), "nothing written on error");
    let _ = std::fs::remove_dir_all(&d);
}

/// `tune --init-adapter` takes a PEFT-made adapter (r=4, α=8 here, while the flags default to
/// r=8, α=16) or its GGUF form, adopts its rank, α and targets, and continues from it: one step
/// at a tiny learning rate leaves it close to where it started. A rank_pattern is refused.
#[test]
fn tune_continues_from_a_peft_or_gguf_adapter() {
    let d = tmp("init");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let model = tiny("llama/q8_0.gguf");
    let c = cfg("llama", "q8_0");
    let init = tiny("llama/train_init");
    let gguf = d.join("init.gguf");
    write_gguf_adapter(
        &gguf,
        &read_any_adapter(&init, &c).unwrap(),
        &c,
        "tiny",
        AdapterDtype::F32,
    )
    .unwrap();
    let tune = |from: &Path, out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edge-sft"))
            .args([
                "tune",
                "--lora",
                "--threads",
                "1",
                "--steps",
                "1",
                "--lr",
                "1e-7",
            ])
            .args(["--eval-split", "0", "--model", &s(&model)])
            .args(["--data", &s(&tiny("records.jsonl"))])
            .args(["--out", &s(out), "--init-adapter", &s(from)])
            .output()
            .unwrap()
    };
    let start = read_any_adapter(&init, &c).unwrap();
    for from in [&init, &gguf] {
        let out = d.join(format!(
            "run-{}",
            from.file_name().unwrap().to_string_lossy()
        ));
        let o = tune(from, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("r=4 α=8"), "{err}");
        let got = read_any_adapter(&out, &c).unwrap();
        assert_eq!((got.rank, got.alpha), (4, 8.0));
        assert_eq!(got.targets, start.targets);
        for (la, lb) in got.layers.iter().zip(&start.layers) {
            for (pa, pb) in la.iter().zip(lb) {
                let (Some(pa), Some(pb)) = (pa, pb) else {
                    assert!(pa.is_none() && pb.is_none());
                    continue;
                };
                // One AdamW step at lr 1e-7 moves each value by about 1e-7.
                for (x, y) in pa.a.iter().chain(&pa.b).zip(pb.a.iter().chain(&pb.b)) {
                    assert!((x - y).abs() < 1e-5, "{x} vs {y}");
                }
            }
        }
    }
    // A PEFT config with per-module ranks is refused, naming the key.
    let bad = d.join("pattern");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(init.join(f), bad.join(f)).unwrap();
    }
    let cfg_text = std::fs::read_to_string(bad.join("adapter_config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    v["rank_pattern"] = serde_json::json!({"q_proj": 16});
    std::fs::write(bad.join("adapter_config.json"), v.to_string()).unwrap();
    let o = tune(&bad, &d.join("run-bad"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("rank_pattern"), "{err}");
}

/// `eval` and `generate` take the GGUF file wherever they take the PEFT folder, with the same
/// numbers; `generate --template raw` is the old `--raw`.
#[test]
fn eval_and_generate_accept_adapter_gguf() {
    let d = tmp("evalgguf");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let model = s(&tiny("llama/q8_0.gguf"));
    let c = cfg("llama", "q8_0");
    let init = tiny("llama/train_init");
    let gguf = d.join("adapter.gguf");
    let lora = read_any_adapter(&init, &c).unwrap();
    write_gguf_adapter(&gguf, &lora, &c, "tiny", AdapterDtype::F32).unwrap();
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_edge-sft"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let data = s(&tiny("records.jsonl"));
    let eval = |adapter: &Path| {
        cli(&[
            "eval",
            "--json",
            "--adapter-only",
            "--threads",
            "1",
            "--model",
            &model,
            "--data",
            &data,
            "--adapter",
            &s(adapter),
        ])
    };
    assert_eq!(eval(&init), eval(&gguf));
    let gen = |adapter: &Path, flag: &[&str]| {
        let mut args = vec![
            "generate",
            "--threads",
            "1",
            "--max-tokens",
            "8",
            "--model",
            &model,
            "--prompt",
            "the cat",
            "--adapter",
        ];
        let a = s(adapter);
        args.push(&a);
        args.extend_from_slice(flag);
        cli(&args)
    };
    assert_eq!(gen(&init, &[]), gen(&gguf, &[]));
    assert_eq!(gen(&gguf, &["--template", "raw"]), gen(&gguf, &["--raw"]));
}
