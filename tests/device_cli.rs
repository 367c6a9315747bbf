//! `--device` (issue 18) on a machine without a GPU, with or without the `cuda` feature:
//! `auto` trains on the CPU and says why, `cuda` is a clear error (exit 1, no panic) naming
//! what is missing, for both `inspect` and `tune`, before any training starts.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");

fn tiny_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/qwen3_kquant/q4_k_m.gguf")
}

/// What the error must name on this build: the missing feature, or the missing driver.
fn expected_reason() -> &'static str {
    if cfg!(feature = "cuda") {
        "no CUDA driver"
    } else {
        "built without the `cuda` feature"
    }
}

/// The command failed with exit 1 and a `--device cuda:` error naming the reason, no panic.
fn assert_refused(o: &std::process::Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--device cuda: "), "{err}");
    assert!(err.contains(expected_reason()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn inspect_reports_the_device_and_refuses_cuda_without_one() {
    let o = Command::new(BIN)
        .args(["inspect", "--json"])
        .arg(tiny_model())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let device = v["device"].as_str().unwrap();
    assert!(device.starts_with("cpu (auto: "), "{device}");
    assert!(device.contains(expected_reason()), "{device}");

    let o = Command::new(BIN)
        .args(["inspect", "--device", "cuda"])
        .arg(tiny_model())
        .output()
        .unwrap();
    assert_refused(&o);
}

#[test]
fn tune_on_cuda_without_one_is_a_clear_error_before_training() {
    let dir = std::env::temp_dir().join(format!("edge-sft-device-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"hi\", \"response\": \"hello\"}\n").unwrap();
    let out = dir.join("out");
    let o = Command::new(BIN)
        .args(["tune", "--lora", "--device", "cuda", "--model"])
        .arg(tiny_model())
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_refused(&o);
    assert!(!out.join("adapter_model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
