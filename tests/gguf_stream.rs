//! The streaming GGUF writer (format/gguf_stream.rs): byte-identical to the in-memory
//! `GgufWriter` whatever the pieces the data arrives in, alignment respected, and a file that is
//! not finished (or gets too much data) never appears under its name.

use edge_sft::format::gguf::{GgufFile, Value};
use edge_sft::format::gguf_stream::{GgufStreamWriter, TensorSpec};
use edge_sft::format::gguf_write::GgufWriter;
use edge_sft::quant::dequant::quantize_row;
use edge_sft::quant::GgmlType;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-stream-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (name, dims, type, bytes) of a few tensors whose sizes are not multiples of the alignment.
fn tensors() -> Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> {
    let vals = |n: usize| {
        (0..n)
            .map(|i| (i as f32 * 0.61).cos())
            .collect::<Vec<f32>>()
    };
    let enc = |t: GgmlType, v: &[f32]| {
        let mut o = Vec::new();
        quantize_row(t, v, &mut o);
        o
    };
    vec![
        (
            "a".into(),
            vec![3],
            GgmlType::F32,
            enc(GgmlType::F32, &vals(3)),
        ),
        (
            "b.weight".into(),
            vec![64, 3],
            GgmlType::Q4_1,
            enc(GgmlType::Q4_1, &vals(192)),
        ),
        (
            "c".into(),
            vec![5, 1, 1],
            GgmlType::F16,
            enc(GgmlType::F16, &vals(5)),
        ),
        (
            "d".into(),
            vec![32, 2],
            GgmlType::Q8_0,
            enc(GgmlType::Q8_0, &vals(64)),
        ),
    ]
}

fn metadata(align: Option<u32>) -> Vec<(String, Value)> {
    let mut m = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        (
            "x.list".to_string(),
            Value::Array(vec![Value::I32(-1), Value::I32(2)]),
        ),
        ("x.f".to_string(), Value::F64(0.25)),
    ];
    if let Some(a) = align {
        m.push(("general.alignment".into(), Value::U32(a)));
    }
    m
}

fn specs() -> Vec<TensorSpec> {
    tensors()
        .into_iter()
        .map(|(name, dims, dtype, _)| TensorSpec { name, dims, dtype })
        .collect()
}

#[test]
fn streamed_file_equals_in_memory_writer() {
    let d = tmp("equal");
    for align in [None, Some(64), Some(8)] {
        let mut w = GgufWriter::new();
        for (k, v) in metadata(align) {
            w.set(k, v);
        }
        for (n, dims, t, b) in tensors() {
            w.add_tensor(n, &dims, t, b).unwrap();
        }
        let want = w.to_bytes().unwrap();
        // Data in pieces of 7 bytes, crossing tensor boundaries, and as whole tensors.
        let all: Vec<u8> = tensors().into_iter().flat_map(|t| t.3).collect();
        for piece in [7, usize::MAX] {
            let path = d.join(format!("s{align:?}-{piece}.gguf"));
            let mut s = GgufStreamWriter::create(&path, &metadata(align), &specs()).unwrap();
            assert_eq!(s.current(), Some("a"));
            if piece == usize::MAX {
                for t in tensors() {
                    s.write(&t.3).unwrap();
                }
            } else {
                for c in all.chunks(piece) {
                    s.write(c).unwrap();
                }
            }
            assert_eq!(s.current(), None);
            assert!(!path.exists(), "visible before finish");
            s.finish().unwrap();
            assert!(std::fs::read(&path).unwrap() == want, "{align:?} {piece}");
            let g = GgufFile::open(&path).unwrap();
            assert_eq!(g.alignment, align.unwrap_or(32) as usize);
            for (t, (n, _, _, b)) in g.tensors.iter().zip(tensors()) {
                assert_eq!(t.name, n);
                assert_eq!(t.offset % g.alignment, 0);
                assert!(g.tensor_bytes(t) == b.as_slice());
            }
        }
    }
}

#[test]
fn unfinished_or_overfull_files_never_appear() {
    let d = tmp("fail");
    let path = d.join("m.gguf");
    // Dropped half-way.
    let mut s = GgufStreamWriter::create(&path, &metadata(None), &specs()).unwrap();
    s.write(&[0u8; 20]).unwrap();
    drop(s);
    // Finished short: the error names the tensor being written.
    let mut s = GgufStreamWriter::create(&path, &metadata(None), &specs()).unwrap();
    s.write(&tensors()[0].3).unwrap();
    let e = s.finish().unwrap_err().to_string();
    assert!(
        e.contains("'b.weight'") && e.contains("0 of 120 bytes"),
        "{e}"
    );
    // Too much data.
    let mut s = GgufStreamWriter::create(&path, &metadata(None), &specs()).unwrap();
    let all: Vec<u8> = tensors().into_iter().flat_map(|t| t.3).collect();
    let e = s.write(&[all, vec![1]].concat()).unwrap_err().to_string();
    assert!(e.contains("beyond the last tensor"), "{e}");
    assert!(s.finish().is_err());
    // A shape the type cannot hold is refused before anything is created.
    let mut bad = specs();
    bad[1].dims = vec![48, 3];
    let e = GgufStreamWriter::create(&path, &metadata(None), &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'b.weight'") && e.contains("Q4_1"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
