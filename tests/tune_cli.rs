//! `edge-sft tune` end to end on the tiny Llama fixture: kill -9 and resume gives the same
//! adapter as an uninterrupted run; SIGINT saves; bad inputs are refused with clear errors and
//! leave no partial output; a write failure during a checkpoint keeps the previous one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Many small records so a run has enough steps to be interrupted.
fn train_file(dir: &Path) -> PathBuf {
    let base = std::fs::read_to_string(fixture("records.jsonl")).unwrap();
    let mut text = String::new();
    for _ in 0..10 {
        text.push_str(&base);
    }
    let p = dir.join("train.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn tune_cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    let steps = if extra.contains(&"--steps") {
        &[][..]
    } else {
        &["--steps", "60"][..]
    };
    c.args(["tune", "--lora", "--threads", "1", "--batch-tokens", "64"])
        .args(steps)
        .args(if extra.contains(&"--save-every") {
            &[][..]
        } else {
            &["--save-every", "3"][..]
        })
        .args(["--lr", "1e-3", "--warmup", "2", "--seed", "5"])
        .arg("--model")
        .arg(fixture("llama/hf_f32"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn state_step(out: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(out.join("checkpoint/state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    v["step"].as_u64()
}

fn adapter_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn sigkill_then_resume_equals_uninterrupted_run() {
    let dir = tmp("resume");
    let data = train_file(&dir);
    let full = dir.join("full");
    let o = run(tune_cmd(&data, &full, &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cut = dir.join("cut");
    let mut child = tune_cmd(&data, &cut, &[]).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if state_step(&cut).is_some_and(|s| s >= 6) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let at = state_step(&cut).unwrap();
    assert!(
        at < 60,
        "the run finished before it could be killed (step {at})"
    );

    let mut c = tune_cmd(&data, &cut, &[]);
    c.args(["--resume"]).arg(&cut);
    let o = run(c);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(state_step(&cut), Some(60));
    // Same seed and threads, parameters and moments restored exactly: bit for bit.
    assert_eq!(
        adapter_bytes(&cut),
        adapter_bytes(&full),
        "resumed adapter differs (killed at step {at})"
    );
}

#[test]
fn sigint_saves_a_checkpoint_and_exits_cleanly() {
    let dir = tmp("sigint");
    let data = train_file(&dir);
    let out = dir.join("out");
    let mut c = tune_cmd(
        &data,
        &out,
        &["--steps", "100000", "--save-every", "100000"],
    );
    let child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    assert!(state_step(&out).is_some_and(|s| s > 0));
    assert!(out.join("adapter_config.json").is_file());
}

#[test]
fn refuses_an_out_folder_with_another_run() {
    let dir = tmp("refuse");
    let data = train_file(&dir);
    let out = dir.join("out");
    let c = tune_cmd(&data, &out, &["--steps", "2"]);
    assert!(run(c).status.success());
    let before = adapter_bytes(&out);
    let o = run(tune_cmd(&data, &out, &["--steps", "2"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already holds a run") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        adapter_bytes(&out),
        before,
        "the earlier run must be untouched"
    );
}

#[test]
fn no_valid_records_and_all_too_long_are_clear_errors_without_output() {
    let dir = tmp("bad");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": 3}\nnot json\n").unwrap();
    let out = dir.join("out1");
    let o = run(tune_cmd(&bad, &out, &["--skip-bad"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains("no usable records"),
        "{err}"
    );
    assert!(!out.join("adapter_config.json").exists() && !out.join("checkpoint").exists());

    let data = train_file(&dir);
    let out = dir.join("out2");
    let o = run(tune_cmd(&data, &out, &["--max-seq", "8"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("max-seq") || err.contains("too long"), "{err}");
    assert!(!out.join("adapter_config.json").exists() && !out.join("checkpoint").exists());
}

#[test]
fn a_failed_checkpoint_write_keeps_the_previous_checkpoint() {
    let dir = tmp("full");
    let data = train_file(&dir);
    let out = dir.join("out");
    assert!(run(tune_cmd(&data, &out, &["--steps", "3"]))
        .status
        .success());
    let state_before = std::fs::read(out.join("checkpoint/state.json")).unwrap();
    // Resume with a file-size limit below the checkpoint's size: every checkpoint write fails
    // as it would on a full disk (SIGXFSZ ignored, so write() returns an error instead).
    let mut inner = tune_cmd(&data, &out, &["--steps", "9"]);
    inner.arg("--resume").arg(&out);
    let args: Vec<String> = inner
        .get_args()
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let script = format!("trap '' XFSZ; ulimit -f 8; exec '{BIN}' {}", args.join(" "));
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(!o.status.success(), "the write should have failed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("writing the checkpoint") && err.contains("File too large"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint/state.json")).unwrap(),
        state_before
    );
    assert_eq!(state_step(&out), Some(3));
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoint"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

/// Two runs on one --out: the second is refused at once, naming the holder, and writes nothing;
/// a lock left by a run killed with SIGKILL does not block `--resume`.
#[test]
fn a_second_run_on_the_same_out_is_refused_and_a_killed_runs_lock_is_not_stale() {
    let dir = tmp("lock");
    let data = train_file(&dir);
    let out = dir.join("run");
    let mut first = tune_cmd(&data, &out, &["--steps", "400", "--save-every", "2"])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while state_step(&out).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = run(tune_cmd(&data, &out, &["--steps", "400", "--force"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the second run must not start");
    assert!(
        err.contains("is in use by process") && err.contains(&first.id().to_string()),
        "{err}"
    );
    assert!(
        out.join("checkpoint").exists(),
        "--force of the refused run must not have cleared the first run's checkpoint"
    );
    first.kill().unwrap(); // SIGKILL: the kernel drops the lock
    let _ = first.wait();
    let mut c = tune_cmd(&data, &out, &["--steps", "400", "--save-every", "2"]);
    c.args(["--resume"]).arg(&out);
    let mut again = c.spawn().unwrap();
    let at = state_step(&out).unwrap();
    let t0 = Instant::now();
    while state_step(&out).is_none_or(|s| s <= at) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the resumed run made no progress: is the lock stale?"
        );
        if let Some(status) = again.try_wait().unwrap() {
            panic!("the resumed run exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    again.kill().unwrap();
    let _ = again.wait();
}

/// A learning rate that wrecks the model stops the run with a non-zero exit and a reason naming
/// the step and what to try; the adapter left on disk is finite.
#[test]
fn divergence_stops_the_run_and_keeps_the_last_good_adapter() {
    let dir = tmp("diverge");
    let data = train_file(&dir);
    let out = dir.join("run");
    // A sane first run leaves a good adapter and checkpoint …
    let o = run(tune_cmd(&data, &out, &["--steps", "3"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // … then a wrecking continuation from it.
    let mut c = Command::new(BIN);
    c.args([
        "tune",
        "--lora",
        "--threads",
        "1",
        "--steps",
        "40",
        "--save-every",
        "1",
    ])
    .args(["--lr", "1e6", "--force", "--model"])
    .arg(fixture("llama/hf_f32"))
    .arg("--data")
    .arg(&data)
    .arg("--out")
    .arg(&out)
    .arg("--init-adapter")
    .arg(&out);
    let o = run(c);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a diverged run must fail: {err}");
    assert!(err.contains("training diverged at step "), "{err}");
    assert!(err.contains("lower --lr"), "{err}");
    // Whatever is on disk (the last checkpointed step before the divergence was caught) is
    // finite: no non-finite value is ever written into an adapter.
    let now = adapter_bytes(&out);
    let st = safetensors::SafeTensors::deserialize(&now).unwrap();
    for (name, t) in st.tensors() {
        for c in t.data().chunks_exact(4) {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            assert!(v.is_finite(), "{name} holds {v}");
        }
    }
}
