//! ggml block quantization: bit-exact agreement with gguf-py's port of ggml's reference
//! quantizers (golden file from tests/reference/quant_golden.py), and round-trip error bounds.

use edge_sft::quant::dequant::quantize_row;
use edge_sft::quant::{dequantize_row, GgmlType};

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn ty(name: &str) -> GgmlType {
    match name {
        "F32" => GgmlType::F32,
        "F16" => GgmlType::F16,
        "BF16" => GgmlType::BF16,
        "Q8_0" => GgmlType::Q8_0,
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        other => panic!("unknown type {other} in golden file"),
    }
}

#[test]
fn matches_gguf_py_golden() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/quant_golden.json"
    );
    let text = std::fs::read_to_string(path).expect("golden file");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let label = format!("{} / {}", case["row"], case["type"]);
        let t = ty(case["type"].as_str().unwrap());
        let x = f32s(&unhex(case["input"].as_str().unwrap()));
        let want_q = unhex(case["quantized"].as_str().unwrap());
        let want_dq = f32s(&unhex(case["dequantized"].as_str().unwrap()));

        let mut q = Vec::new();
        quantize_row(t, &x, &mut q);
        assert_eq!(q, want_q, "quantized bytes differ for {label}");

        // Dequantize the reference bytes (not ours), so this checks dequantization on its own.
        let mut dq = vec![0f32; x.len()];
        dequantize_row(t, &want_q, &mut dq);
        for (i, (a, b)) in dq.iter().zip(&want_dq).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{label}: element {i}: {a} vs {b}");
        }
    }
}

/// Deterministic pseudo-random values in roughly [-scale, scale].
fn lcg_row(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[test]
fn round_trip_error_bounds() {
    for seed in 0..20u64 {
        let scale = 0.01 * (seed as f32 + 1.0) * 7.0;
        let x = lcg_row(256, seed, scale);
        for t in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let mut q = Vec::new();
            quantize_row(t, &x, &mut q);
            assert_eq!(Some(q.len()), t.row_bytes(x.len()), "{} size", t.name());
            let mut y = vec![0f32; x.len()];
            dequantize_row(t, &q, &mut y);
            for (blk_x, blk_y) in x.chunks(32).zip(y.chunks(32)) {
                let amax = blk_x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (mn, mx) = blk_x
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                for (&a, &b) in blk_x.iter().zip(blk_y) {
                    let err = (a - b).abs();
                    // Half a quantization step, plus slack for the f16 rounding of the scale.
                    let bound = match t {
                        GgmlType::F32 => 0.0,
                        GgmlType::F16 => a.abs() * 2f32.powi(-11) + 1e-7,
                        GgmlType::BF16 => a.abs() * 2f32.powi(-8),
                        GgmlType::Q8_0 => amax / 127.0 * 0.5 + amax * 2e-3,
                        // Codes span -8..=7 steps: values near +8 steps clip to 7 (a full step).
                        GgmlType::Q4_0 if a.abs() > amax * 7.0 / 8.0 => amax / 8.0 + amax * 1e-2,
                        GgmlType::Q4_0 => amax / 8.0 * 0.5 + amax * 1e-2,
                        GgmlType::Q4_1 => {
                            (mx - mn) / 15.0 * 0.5 + (mx - mn) * 1e-2 + mn.abs() * 1e-3
                        }
                        other => unreachable!("{} is not quantized here", other.name()),
                    };
                    assert!(
                        err <= bound,
                        "{} seed {seed}: {a} -> {b}, err {err} > {bound}",
                        t.name()
                    );
                }
            }
        }
    }
}

#[test]
fn q4_0_nibble_order() {
    // Block: d = 1.0 (f16 0x3C00); qs[j] = low nibble j % 16, high nibble 15 - j % 16.
    let mut blk = vec![0x00, 0x3C];
    for j in 0..16u8 {
        blk.push(j | ((15 - j) << 4));
    }
    let mut y = vec![0f32; 32];
    dequantize_row(GgmlType::Q4_0, &blk, &mut y);
    for j in 0..16 {
        assert_eq!(y[j], j as f32 - 8.0, "low nibble -> element {j}");
        assert_eq!(
            y[j + 16],
            (15 - j) as f32 - 8.0,
            "high nibble -> element {}",
            j + 16
        );
    }
}

#[test]
fn zero_block_quantizes_to_zero() {
    let x = vec![0f32; 32];
    for t in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let mut q = Vec::new();
        quantize_row(t, &x, &mut q);
        let mut y = vec![1f32; 32];
        dequantize_row(t, &q, &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{}: {y:?}", t.name());
    }
}
