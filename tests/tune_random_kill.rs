//! `edge-sft tune` killed with SIGKILL at random moments (issue 16): one run is killed ten times,
//! each time resumed from whatever it left; after every kill the files under their final names
//! are whole (nothing half-written is ever visible), and the adapter of the run that finally
//! completes is bit-identical to an uninterrupted run's. Kill points are random; the seed is
//! printed, and EDGE_SFT_KILL_SEED=<n> replays them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");
const KILLS: usize = 10;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn tune(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["tune", "--lora", "--threads", "1", "--batch-tokens", "64"])
        .args(["--steps", "60", "--save-every", "3"])
        .args(["--lr", "1e-3", "--warmup", "2", "--seed", "5"])
        .arg("--model")
        .arg(fixture("llama/hf_f32"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// A fresh folder for one test and the training data in it (the tiny fixture's records, ten
/// times over).
fn scratch(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("edge-sft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = std::fs::read_to_string(fixture("records.jsonl")).unwrap();
    let data = dir.join("train.jsonl");
    std::fs::write(&data, base.repeat(10)).unwrap();
    (dir, data)
}

/// xorshift64*: enough randomness for kill points, replayable from the seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Every file under its final name in `out` is whole: JSON parses, safetensors deserialize.
fn assert_whole(out: &Path, kill: usize) {
    for entry in walk(out) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&entry).unwrap();
        if name.ends_with(".json") {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                "kill {kill}: {} is not whole JSON",
                entry.display()
            );
        } else if name.ends_with(".safetensors") {
            assert!(
                safetensors::SafeTensors::deserialize(&bytes).is_ok(),
                "kill {kill}: {} is not a whole safetensors file",
                entry.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn ten_random_sigkills_then_resume_equal_an_uninterrupted_run() {
    let (dir, data) = scratch("randkill");

    let full = dir.join("full");
    let t0 = Instant::now();
    let o = tune(&data, &full, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run_ms = t0.elapsed().as_millis() as u64;

    let seed = std::env::var("EDGE_SFT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill seed {seed} (EDGE_SFT_KILL_SEED replays it); full run {run_ms} ms");
    let mut rng = Rng(seed);
    let cut = dir.join("cut");
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while killed < KILLS {
        assert!(Instant::now() < deadline, "took too long (seed {seed})");
        // A checkpoint is there once its state file is (what `--resume` looks for): a kill
        // during the first checkpoint can leave the folder with no state in it yet.
        let started = edge_sft::train::checkpoint::exists(&cut);
        let mut c = if started {
            tune(&data, &cut, &["--resume"])
        } else {
            tune(&data, &cut, &["--force"])
        };
        if started {
            c.arg(&cut);
        }
        let mut child = c.spawn().unwrap();
        // Anywhere in a run's length: before the model is read, mid-step, mid-checkpoint.
        std::thread::sleep(Duration::from_millis(rng.below(run_ms)));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL
        }
        let _ = child.wait();
        assert_whole(&cut, killed);
        if finished {
            // Finished before the kill: start over, the kill points still count.
            std::fs::remove_dir_all(&cut).unwrap();
        } else {
            killed += 1;
        }
    }
    let mut c = if edge_sft::train::checkpoint::exists(&cut) {
        let mut c = tune(&data, &cut, &["--resume"]);
        c.arg(&cut);
        c
    } else {
        tune(&data, &cut, &["--force"])
    };
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_whole(&cut, KILLS);
    // Each resume cut the line a kill may have torn in the metrics log: every line is whole.
    let metrics = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    for (i, l) in metrics.lines().enumerate() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "seed {seed}: metrics.jsonl line {} is not whole: {l}",
            i + 1
        );
    }
    assert_eq!(
        std::fs::read(cut.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
        "adapter after {KILLS} random kills differs (seed {seed})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The window the random kills found once in CI: killed after a checkpoint was saved but before
/// the kept (best held-out) step's adapter files were written. Resuming must write them from the
/// checkpoint, not trust whatever the folder holds.
#[test]
fn resume_rewrites_the_kept_adapter_that_a_kill_left_unwritten() {
    let (dir, data) = scratch("keptgap");
    let out = dir.join("run");
    let o = tune(&data, &out, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done: Vec<(PathBuf, Vec<u8>)> = walk(&out)
        .into_iter()
        .filter(|p| p.parent() == Some(out.as_path()))
        .filter(|p| p.to_string_lossy().contains("adapter"))
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert!(
        done.len() >= 3,
        "expected PEFT and GGUF adapter files, got {done:?}"
    );
    // As a kill between the checkpoint and the adapter writes leaves it: a different (stale)
    // safetensors adapter and no GGUF one.
    let stale = std::fs::read(out.join("checkpoint").join("state.json")).unwrap();
    for (p, _) in &done {
        if p.extension().is_some_and(|e| e == "safetensors") {
            std::fs::write(p, &stale).unwrap();
        } else if p.extension().is_some_and(|e| e == "gguf") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut c = tune(&data, &out, &["--resume"]);
    c.arg(&out);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (p, bytes) in &done {
        assert!(
            std::fs::read(p).ok().as_ref() == Some(bytes),
            "{} was not rewritten from the checkpoint's kept step",
            p.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
