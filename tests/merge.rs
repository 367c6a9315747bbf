//! `merge` (src/merge.rs) on the tiny Llama and Qwen2 fixtures, numerically: a merged F32
//! model computes what base + adapter computes; every --dtype output is readable and is exactly
//! ggml's quantization of the f32 merge. Copying, the CLI and errors: tests/merge_cli.rs.

use edge_sft::format::gguf::GgufFile;
use edge_sft::format::gguf_adapter::gguf_base_name;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::Target;
use edge_sft::quant::dequant::quantize_row;
use edge_sft::quant::GgmlType;

#[path = "support/merge.rs"]
mod support;
use support::*;

/// (1) Merged to F32, the model without adapter computes base + adapter: logits and NLL agree
/// to f32 summation order, while the adapter itself moves them far more.
#[test]
fn f32_merge_equals_base_plus_adapter() {
    for arch in ["llama", "qwen2"] {
        let d = tmp(&format!("num-{arch}"));
        let base = tiny(&format!("{arch}/q8_0.gguf"));
        let cfg = LoadedModel::open(&base).unwrap().model.config;
        let lora = random_lora(&cfg, 4, 7, 0.2);
        let out = d.join("merged.gguf");
        merge_to(&base, &lora, &out, Some(GgmlType::F32));
        let (want, want_lp) = run_model(&base, &IDS, Some(&lora));
        let (got, got_lp) = run_model(&out, &IDS, None);
        let (plain, plain_lp) = run_model(&base, &IDS, None);
        let err = max_rel(&got, &want);
        let moved = max_rel(&plain, &want);
        let lp_err = (got_lp - want_lp).abs() / want_lp.abs();
        eprintln!("{arch}: logits {err:.2e} (adapter moves them {moved:.2e}), Σ log p {lp_err:.2e} ({want_lp} vs base {plain_lp})");
        assert!(
            moved > 1e-2,
            "{arch}: the adapter barely changes the model ({moved})"
        );
        assert!(err < 1e-4, "{arch}: merged logits differ by {err:.2e}");
        assert!(
            lp_err < 1e-4,
            "{arch}: merged Σ log p {got_lp} vs {want_lp}"
        );
    }
}

/// (2) Every --dtype gives a readable model whose merged tensors are exactly ggml's
/// quantization of the f32 merge (so within that type's rounding of it), and the default keeps
/// the base tensor's type.
#[test]
fn every_dtype_is_the_quantized_f32_merge() {
    let d = tmp("dtypes");
    let base = tiny("llama/q8_0.gguf");
    let cfg = LoadedModel::open(&base).unwrap().model.config;
    let lora = random_lora(&cfg, 4, 11, 0.2);
    let f32_path = d.join("f32.gguf");
    merge_to(&base, &lora, &f32_path, Some(GgmlType::F32));
    let f = GgufFile::open(&f32_path).unwrap();
    let (_, f32_lp) = run_model(&f32_path, &IDS, None);
    // Worst |dequant − f32| per block, relative to the block's largest |value|.
    let cases = [
        (Some(GgmlType::F16), 1.0 / 2048.0),
        (Some(GgmlType::BF16), 1.0 / 256.0),
        (Some(GgmlType::Q8_0), 1.0 / 254.0 + 1e-3),
        (Some(GgmlType::Q4_0), 1.0 / 8.0 + 1e-3),
        (Some(GgmlType::Q4_1), 1.0 / 15.0 + 1e-3),
        (None, 1.0 / 254.0 + 1e-3),
    ];
    for (dtype, tol) in cases {
        let want_ty = dtype.unwrap_or(GgmlType::Q8_0);
        let path = d.join(format!("{}.gguf", want_ty.name()));
        merge_to(&base, &lora, &path, dtype);
        let m = GgufFile::open(&path).unwrap();
        let want_ft = dtype.map_or(Some(7), edge_sft::merge::ftype_of);
        assert_eq!(m.get_u32("general.file_type"), want_ft);
        for layer in 0..cfg.n_layers {
            for t in Target::ALL {
                let name = gguf_base_name(layer, t);
                let info = m.require(&name).unwrap();
                assert_eq!(info.dtype, want_ty, "{name}");
                let exact = f.tensor_f32(&name).unwrap();
                let mut q = Vec::new();
                quantize_row(want_ty, &exact, &mut q);
                assert!(
                    q == m.tensor_bytes(info),
                    "{name} in {}: not quantize(f32 merge)",
                    want_ty.name()
                );
                let got = m.tensor_f32(&name).unwrap();
                for (bg, be) in got.chunks(32).zip(exact.chunks(32)) {
                    let amax = be.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for (x, y) in bg.iter().zip(be) {
                        assert!(
                            (x - y).abs() <= tol * amax + 1e-7,
                            "{name} {}: {x} vs {y}",
                            want_ty.name()
                        );
                    }
                }
            }
        }
        let (_, lp) = run_model(&path, &IDS, None);
        eprintln!(
            "{}: Σ log p {lp:.5} (f32 merge {f32_lp:.5})",
            want_ty.name()
        );
        assert!(
            (lp - f32_lp).abs() < 0.05 * f32_lp.abs(),
            "{}: {lp} vs {f32_lp}",
            want_ty.name()
        );
    }
}

/// (3) `general.file_type` names what the merge wrote. The default merge of a 4-bit base writes
/// its projections as Q8_0 (most of the model's matrices), so the file says Q8_0 (7), not the
/// base's Q4_0 (2); a `--dtype` names that type. A merge that leaves most matrices in the
/// base's type (an adapter on q and v only, or `--dtype` the base's own type) keeps the base's
/// value.
#[test]
fn file_type_names_what_the_merge_wrote() {
    use edge_sft::merge::{merge_gguf, MergeOptions};
    for arch in ["llama", "gemma3"] {
        let d = tmp(&format!("ftype-{arch}"));
        let base = tiny(&format!("{arch}/q4_0.gguf"));
        assert_eq!(
            GgufFile::open(&base).unwrap().get_u32("general.file_type"),
            Some(2)
        );
        let cfg = LoadedModel::open(&base).unwrap().model.config;
        let lora = random_lora(&cfg, 4, 5, 0.2);
        for (dtype, want) in [
            (None, 7),
            (Some(GgmlType::Q4_0), 2),
            (Some(GgmlType::F16), 1),
            (Some(GgmlType::Q8_0), 7),
        ] {
            let out = d.join(format!("{dtype:?}.gguf"));
            merge_to(&base, &lora, &out, dtype);
            let m = GgufFile::open(&out).unwrap();
            assert_eq!(
                m.get_u32("general.file_type"),
                Some(want),
                "{arch} --dtype {dtype:?}"
            );
            let q = m.require(&gguf_base_name(0, Target::Q)).unwrap().dtype;
            assert_eq!(q, dtype.unwrap_or(GgmlType::Q8_0), "{arch} {dtype:?}");
        }
        // Only q and v adapted: 2 of 7 projections per layer become Q8_0, the rest stay Q4_0.
        let mut qv = lora.clone();
        for slots in &mut qv.layers {
            for t in Target::ALL {
                if !matches!(t, Target::Q | Target::V) {
                    slots[t.index()] = None;
                }
            }
        }
        qv.targets = vec![Target::Q, Target::V];
        let out = d.join("qv.gguf");
        let g = GgufFile::open(&base).unwrap();
        merge_gguf(&g, &qv, &out, &MergeOptions::default(), |_, _, _| {}).unwrap();
        let m = GgufFile::open(&out).unwrap();
        assert_eq!(m.get_u32("general.file_type"), Some(2), "{arch} q,v only");
        assert_eq!(
            m.require(&gguf_base_name(0, Target::V)).unwrap().dtype,
            GgmlType::Q8_0
        );
    }
}
