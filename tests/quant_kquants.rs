//! The 5-bit and K-quant block formats (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q8_K): edge-sft's scalar
//! decoder against gguf-py's port of ggml's `dequantize_row_*`, bit for bit (golden file from
//! tests/reference/kquant_fixture.py), and the ISA decoders against the scalar one.

use edge_sft::cpu;
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
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name} in golden file"))
}

/// (type, case, raw block bytes, expected values) from the golden file.
fn golden() -> Vec<(GgmlType, String, Vec<u8>, Vec<f32>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/kquants.json");
    let text = std::fs::read_to_string(path).expect("golden file");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                ty(c["type"].as_str().unwrap()),
                c["case"].as_str().unwrap().to_string(),
                unhex(c["bytes"].as_str().unwrap()),
                f32s(&unhex(c["values"].as_str().unwrap())),
            )
        })
        .collect()
}

#[test]
fn scalar_dequantization_matches_gguf_py_bit_for_bit() {
    let cases = golden();
    for t in [
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        let names: Vec<&str> = cases
            .iter()
            .filter(|c| c.0 == t)
            .map(|c| c.1.as_str())
            .collect();
        for want in ["zero_scale", "max", "negative_d", "subnormal", "random"] {
            assert!(names.contains(&want), "{t:?}: no {want} case");
        }
    }
    for (t, case, bytes, want) in &cases {
        let label = format!("{} / {case}", t.name());
        assert_eq!(t.row_bytes(want.len()), Some(bytes.len()), "{label}: sizes");
        let mut got = vec![f32::NAN; want.len()];
        dequantize_row(*t, bytes, &mut got);
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{label}: element {i}: {a} vs {b}");
        }
    }
}

#[test]
fn every_isa_decoder_matches_the_scalar_one() {
    for (t, case, bytes, want) in golden() {
        // The same bytes one byte off: mapped data may sit at any alignment.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        for isa in cpu::available_isas() {
            for src in [&bytes[..], &shifted[1..]] {
                let mut got = vec![f32::NAN; want.len()];
                cpu::dequantize_row_with(isa, t, src, &mut got);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{} / {case} {isa:?}: element {i}: {a} vs {b}",
                        t.name()
                    );
                }
            }
        }
    }
}

/// xorshift64*: deterministic random bytes without a rand dependency.
struct Rng(u64);
impl Rng {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
}

/// Byte offsets of the f16 scale fields of each block (d first, then dmin or m).
fn f16_fields(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q5_0 => &[0],
        GgmlType::Q6_K => &[208],
        GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        _ => &[],
    }
}

/// Every ISA's decoder against the scalar one, bit for bit (NaN payloads included), on rows of
/// random blocks: entirely random bytes (so the scales can be any bit pattern: normal,
/// subnormal, zero, negative, ±inf, NaN), and random codes under each f16 scale set to the
/// edge values (0, −0, the smallest subnormal, the largest finite, negative), at two
/// alignments and for rows of 1 to 4 blocks.
#[test]
fn every_isa_decoder_matches_the_scalar_one_on_random_blocks() {
    let edge: [u16; 7] = [0x0000, 0x8000, 0x0001, 0x7BFF, 0xFBFF, 0xBC00, 0x3C00];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for t in [
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        for trial in 0..40 {
            let blocks = 1 + trial % 4;
            let mut bytes: Vec<u8> = (0..blocks * t.type_size()).map(|_| rng.byte()).collect();
            // Trials past the first 12 set the scale fields of every block to edge values.
            if trial >= 12 {
                for b in 0..blocks {
                    for &off in f16_fields(t) {
                        let v = edge[(trial + b + off) % edge.len()];
                        let at = b * t.type_size() + off;
                        bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            let n = blocks * t.block_size();
            let mut want = vec![0f32; n];
            dequantize_row(t, &bytes, &mut want);
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(&bytes);
            for isa in cpu::available_isas() {
                for src in [&bytes[..], &shifted[1..]] {
                    let mut got = vec![f32::NAN; n];
                    cpu::dequantize_row_with(isa, t, src, &mut got);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{} trial {trial} {isa:?}: element {i}: {a} vs {b} ({:#010x} vs {:#010x})",
                            t.name(),
                            a.to_bits(),
                            b.to_bits()
                        );
                    }
                }
            }
        }
    }
}

/// On AArch64 the NEON decoders must be among the ISAs the tests above loop over (every
/// AArch64 CPU has NEON), so that they are really compared with the scalar decoder.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_decoders_are_exercised_on_aarch64() {
    assert!(cpu::available_isas().contains(&cpu::Isa::Neon));
}

#[test]
#[should_panic(expected = "does not write Q4_K")]
fn quantizing_to_a_k_quant_is_a_programming_error() {
    let mut out = Vec::new();
    edge_sft::quant::dequant::quantize_row(GgmlType::Q4_K, &[0.0; 256], &mut out);
}
