//! A model whose weights are Q5_0, Q5_1 and K-quants loads and runs: its logits (prompt forward
//! through the tiled GEMM, then KV-cached single tokens through the GEMV) and its per-token
//! log-probabilities match those of the same model with every weight dequantized to F32 by the
//! scalar reference. The tiny llama's metadata and tokenizer, with dimensions widened to whole
//! 256-value super-blocks (d_model 256, ffn 512).

use edge_sft::format::gguf::{GgufFile, Value};
use edge_sft::format::gguf_write::GgufWriter;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::forward::KvCache;
use edge_sft::quant::{dequantize_row, GgmlType};
use half::f16;
use std::path::{Path, PathBuf};

const D: usize = 256;
const FFN: usize = 512;
const VOCAB: usize = 288;

/// xorshift64*: deterministic data without a rand dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `rows` rows of `cols` values of `ty`: random codes, small finite scales. Q4_K/Q5_K mins are
/// kept near the scale so rows stay roughly centred.
fn random_tensor(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rows * cols / ty.block_size() {
        let mut blk: Vec<u8> = (0..ty.type_size()).map(|_| rng.next() as u8).collect();
        let mut put = |at: usize, v: f32| {
            blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        };
        match ty {
            GgmlType::Q5_0 => put(0, 0.004 * rng.f()),
            GgmlType::Q5_1 => {
                put(0, 0.004 * rng.f().abs());
                put(2, -0.06 * rng.f().abs());
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                put(0, 0.0002 * rng.f().abs());
                put(2, 0.0002 * rng.f().abs());
            }
            GgmlType::Q6_K => put(208, 0.00005 * rng.f()),
            GgmlType::Q8_K => blk[..4].copy_from_slice(&(0.0005 * rng.f()).to_le_bytes()),
            other => panic!("{other:?} not used here"),
        }
        out.extend_from_slice(&blk);
    }
    out
}

/// Writes the K-quant model and its F32 twin; returns their paths.
fn write_models() -> (PathBuf, PathBuf) {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/llama/q8_0.gguf");
    let g = GgufFile::open(&tiny).unwrap();
    let meta = |w: &mut GgufWriter| {
        for (k, v) in &g.metadata {
            let v = match k.as_str() {
                "general.alignment" => continue,
                "llama.embedding_length" => Value::U32(D as u32),
                "llama.feed_forward_length" => Value::U32(FFN as u32),
                "llama.block_count" => Value::U32(1),
                "llama.rope.dimension_count" => Value::U32((D / 4) as u32),
                _ => v.clone(),
            };
            w.set(k.clone(), v);
        }
    };
    // (name, [cols, rows] as GGUF dims, type): every new type at least once, on every
    // product (x·Wᵀ, and the embedding rows dequantized one at a time).
    let kv = D / 2; // 2 kv heads of 64
    let specs: [(&str, [usize; 2], GgmlType); 9] = [
        ("token_embd.weight", [D, VOCAB], GgmlType::Q4_K),
        ("blk.0.attn_q.weight", [D, D], GgmlType::Q5_K),
        ("blk.0.attn_k.weight", [D, kv], GgmlType::Q4_K),
        ("blk.0.attn_v.weight", [D, kv], GgmlType::Q6_K),
        ("blk.0.attn_output.weight", [D, D], GgmlType::Q5_0),
        ("blk.0.ffn_gate.weight", [D, FFN], GgmlType::Q5_1),
        ("blk.0.ffn_up.weight", [D, FFN], GgmlType::Q8_K),
        ("blk.0.ffn_down.weight", [FFN, D], GgmlType::Q6_K),
        ("output.weight", [D, VOCAB], GgmlType::Q6_K),
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|&(_, [c, r], ty)| random_tensor(&mut rng, ty, r, c))
        .collect();
    let norm: Vec<u8> = (0..D)
        .flat_map(|i| (1.0 + 0.1 * ((i % 7) as f32 - 3.0)).to_le_bytes())
        .collect();
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let mut paths = Vec::new();
    for twin in [false, true] {
        let mut w = GgufWriter::new();
        meta(&mut w);
        for n in [
            "blk.0.attn_norm.weight",
            "blk.0.ffn_norm.weight",
            "output_norm.weight",
        ] {
            w.add_tensor(n, &[D as u64], GgmlType::F32, norm.clone())
                .unwrap();
        }
        for (&(name, [c, r], ty), bytes) in specs.iter().zip(&data) {
            let dims = [c as u64, r as u64];
            if twin {
                let mut f = vec![0f32; r * c];
                let rb = ty.row_bytes(c).unwrap();
                for (dst, src) in f.chunks_exact_mut(c).zip(bytes.chunks_exact(rb)) {
                    dequantize_row(ty, src, dst);
                }
                let fb: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
                w.add_tensor(name, &dims, GgmlType::F32, fb).unwrap();
            } else {
                w.add_tensor(name, &dims, ty, bytes.clone()).unwrap();
            }
        }
        let p = dir.join(format!("edge-sft-kquant-{pid}-{twin}.gguf"));
        w.write(&p).unwrap();
        paths.push(p);
    }
    (paths.remove(0), paths.remove(0))
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn k_quant_model_matches_its_f32_twin() {
    let (kq, twin) = write_models();
    let a = LoadedModel::open(&kq).unwrap_or_else(|e| panic!("K-quant model: {e}"));
    let b = LoadedModel::open(&twin).unwrap();
    let (ma, mb) = (&a.model, &b.model);
    assert_eq!(ma.layers[0].w_down.dtype, GgmlType::Q6_K);
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % VOCAB as u32).collect();
    let (mut ca, mut cb) = (KvCache::new(1), KvCache::new(1));
    // Prompt (tiled GEMM), then two single tokens (GEMV).
    for chunk in [&ids[..20], &ids[20..21], &ids[21..22]] {
        let ha = ma.forward(chunk, &mut ca, None).unwrap();
        let hb = mb.forward(chunk, &mut cb, None).unwrap();
        let (la, lb) = (ma.logits(&ha, chunk.len()), mb.logits(&hb, chunk.len()));
        let e = rel_err(&la, &lb);
        assert!(
            e < 1e-4,
            "logits of {} tokens: relative L2 error {e:.2e}",
            chunk.len()
        );
        let spread = lb.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1e-3, "degenerate logits (max |logit| {spread})");
        let targets: Vec<u32> = chunk.iter().map(|&t| (t + 1) % VOCAB as u32).collect();
        let (pa, pb) = (
            ma.target_logprobs(&ha, &targets),
            mb.target_logprobs(&hb, &targets),
        );
        for (x, y) in pa.iter().zip(&pb) {
            assert!(
                (x - y).abs() < 1e-4 * y.abs().max(1.0),
                "logprob {x} vs {y}"
            );
        }
    }
    let _ = std::fs::remove_file(kq);
    let _ = std::fs::remove_file(twin);
}
