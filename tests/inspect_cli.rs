//! `edge-sft inspect` on the K-quant tiny models (tests/golden/tiny/{gemma3,qwen3}_kquant,
//! written by tests/reference/make_tiny_kquant.py): the files load, and the tensor table lists
//! every type the script wrote, with its count. (Kept out of model_golden.rs, which ARM CI runs
//! under qemu-user, where spawning the binary is not available.)

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");

/// `inspect` on the K-quant files: they load, and the tensor table lists each type the
/// script wrote, with its count.
#[test]
fn inspect_lists_kquant_types() {
    let cases: [(&str, &[(&str, u64)]); 2] = [
        (
            "gemma3_kquant",
            &[
                ("F32", 37),
                ("Q5_0", 10),
                ("Q8_0", 2),
                ("Q4_K", 25),
                ("Q5_K", 3),
                ("Q6_K", 3),
            ],
        ),
        (
            "qwen3_kquant",
            &[("F32", 5), ("Q4_K", 5), ("Q5_K", 1), ("Q6_K", 3)],
        ),
    ];
    for (arch, want) in cases {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/tiny")
            .join(arch)
            .join("q4_k_m.gguf");
        let o = Command::new(BIN)
            .args(["inspect", "--json"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{arch}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let types = v["tensor_types"].as_object().unwrap();
        assert_eq!(types.len(), want.len(), "{arch}: {types:?}");
        for &(name, n) in want {
            assert_eq!(types[name].as_u64(), Some(n), "{arch} {name}: {types:?}");
        }
        assert_eq!(v["d_model"].as_u64(), Some(256), "{arch}");
        // The text table too.
        let o = Command::new(BIN)
            .arg("inspect")
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{arch}");
        let text = String::from_utf8(o.stdout).unwrap();
        for &(name, _) in want {
            assert!(
                text.contains(&format!(" {name} ")),
                "{arch}: no {name} in\n{text}"
            );
        }
        if arch == "gemma3_kquant" {
            assert!(text.contains("local layers  5 of 6"), "{text}");
        }
    }
}

/// `edge-sft inspect MODEL | head`: a reader that goes away ends the command quietly (status
/// 141, as if by SIGPIPE), with no panic on stderr.
#[test]
fn a_closed_stdout_ends_quietly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/llama/q8_0.gguf");
    // A pipe whose reader is gone before the command starts: its first line fails, always.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(BIN)
        .arg("inspect")
        .arg(&path)
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(141), "{err}");
}
