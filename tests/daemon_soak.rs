//! Soak: a writer appends records of random sizes at random times (partial writes, rotations,
//! one truncation) while the daemon runs and is killed with SIGKILL at random points, 25 times.
//! Afterwards the set of pairs used by rounds (trained or held back) equals the set of complete
//! lines written, exactly: none lost, none twice. About half a minute on the tiny fixture.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn config(d: &Path, min_new: usize) -> PathBuf {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny/llama/hf_f32");
    let text = format!(
        "model = \"{}\"\nmin_new_pairs = {min_new}\nheldout_fraction = 0.25\nstep_budget = 2\n\
         checkpoint_every = 1\npoll_s = 0.05\nthreads = 1\nmax_seq = 96\ngate_margin = 10.0\n\
         replay_size = 4\n[triggers]\npower_supply_root = \"none\"\nthermal_root = \"none\"\n\
         loadavg_path = \"none\"\n",
        model.display()
    );
    let p = d.join(format!("edge-sft-{min_new}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn line(tag: u64, rng: &mut Rng) -> String {
    let pad = "x".repeat(rng.below(300) as usize);
    format!("{{\"prompt\": \"t{tag}\", \"response\": \"ok {pad}\"}}\n")
}

fn append(p: &Path, s: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(s).unwrap();
}

/// Stored id → tag, from the daemon's store (a partial last line is skipped).
fn store(state: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(state.join("store.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["record"]["prompt"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The writer: appends until told to stop; returns the tags of the complete lines it wrote.
fn writer(inbox: PathBuf, state: PathBuf, stop: Arc<AtomicBool>, seed: u64) -> HashSet<String> {
    let mut rng = Rng(seed | 1);
    let mut written = HashSet::new();
    let mut tag = 0u64;
    let mut rotations = 0;
    let main = inbox.join("app.jsonl");
    let trunc = inbox.join("t.jsonl");
    let mut truncated = false;
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tag += 1;
        let l = line(tag, &mut rng);
        if rng.below(4) == 0 {
            // Split the line in two writes: the daemon may see the first half alone.
            let cut = rng.below(l.len() as u64 - 1) as usize + 1;
            append(&main, &l.as_bytes()[..cut]);
            std::thread::sleep(Duration::from_millis(rng.below(15)));
            append(&main, &l.as_bytes()[cut..]);
        } else {
            append(&main, l.as_bytes());
        }
        written.insert(format!("t{tag}"));
        if rng.below(30) == 0 {
            rotations += 1;
            std::fs::rename(&main, inbox.join(format!("app.jsonl.{rotations}"))).unwrap();
        }
        if !truncated && t0.elapsed() > Duration::from_secs(3) {
            // copytruncate-style: once the daemon has read all of t.jsonl, empty it and write on.
            let mut mine = Vec::new();
            for _ in 0..5 {
                tag += 1;
                append(&trunc, line(tag, &mut rng).as_bytes());
                mine.push(format!("t{tag}"));
            }
            written.extend(mine.iter().cloned());
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let have: HashSet<String> = store(&state).into_values().collect();
                if mine.iter().all(|t| have.contains(t)) {
                    break;
                }
                assert!(Instant::now() < deadline, "t.jsonl never read");
                std::thread::sleep(Duration::from_millis(20));
            }
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&trunc)
                .unwrap();
            for _ in 0..2 {
                tag += 1;
                append(&trunc, line(tag, &mut rng).as_bytes());
                written.insert(format!("t{tag}"));
            }
            truncated = true;
        }
        std::thread::sleep(Duration::from_millis(rng.below(12)));
    }
    assert!(truncated, "the writer never truncated");
    assert!(rotations > 0, "the writer never rotated");
    written
}

#[test]
fn sigkill_at_random_points_loses_and_repeats_nothing() {
    let d = std::env::temp_dir().join(format!("edge-sft-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("inbox")).unwrap();
    let (inbox, state) = (d.join("inbox"), d.join("state"));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("soak seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (i, s, st) = (inbox.clone(), state.clone(), stop.clone());
        std::thread::spawn(move || writer(i, s, st, seed))
    };
    let cfg = config(&d, 4);
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut kills = 0;
    while kills < 25 {
        let mut c = Command::new(BIN)
            .args(["daemon", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        match c.try_wait().unwrap() {
            Some(s) => panic!("the daemon exited on its own ({s}) after {kills} kills"),
            None => {
                c.kill().unwrap(); // SIGKILL
                c.wait().unwrap();
                kills += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let written = w.join().unwrap();

    // Drain: enough new pairs for a round, until no round is in progress and nothing is queued.
    let drain = config(&d, 2);
    let mut extra = 1_000_000u64;
    let mut written = written;
    for _ in 0..6 {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
        let queued = store(&state).len() as u64 - st["used_upto"].as_u64().unwrap();
        if st["plan"].is_null() && queued == 0 && store(&state).len() >= written.len() {
            break;
        }
        if st["plan"].is_null() && queued < 2 {
            extra += 1;
            append(&inbox.join("app.jsonl"), line(extra, &mut rng).as_bytes());
            written.insert(format!("t{extra}"));
        }
        let o = Command::new(BIN)
            .args(["daemon", "--once", "--config", drain.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    let by_id = store(&state);
    let mut stored_tags: Vec<&String> = by_id.values().collect();
    stored_tags.sort();
    let n = stored_tags.len();
    stored_tags.dedup();
    assert_eq!(n, stored_tags.len(), "a line was stored twice");
    let trained = std::fs::read_to_string(state.join("trained.jsonl")).unwrap();
    let mut used: Vec<String> = Vec::new();
    let mut rounds = HashSet::new();
    for l in trained.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            rounds.insert(v["round"].as_u64().unwrap()),
            "round twice: {l}"
        );
        for k in ["train", "heldout"] {
            for id in v[k].as_array().unwrap() {
                used.push(id.as_str().unwrap().to_string());
            }
        }
    }
    let used_n = used.len();
    let used_ids: HashSet<String> = used.into_iter().collect();
    assert_eq!(used_n, used_ids.len(), "a pair was used by two rounds");
    let used_tags: HashSet<String> = used_ids.iter().map(|id| by_id[id].clone()).collect();
    let missing: Vec<_> = written.difference(&used_tags).collect();
    let unknown: Vec<_> = used_tags.difference(&written).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "seed {seed}: {} written, {} used; missing {missing:?}, unknown {unknown:?}",
        written.len(),
        used_tags.len()
    );
    assert!(rounds.len() >= 2, "only {} rounds ran", rounds.len());
    eprintln!(
        "soak: {} lines, {} rounds, {kills} SIGKILLs",
        written.len(),
        rounds.len()
    );
    let q = std::fs::read_to_string(state.join("quarantine.jsonl")).unwrap_or_default();
    assert!(q.is_empty(), "nothing written was malformed: {q}");
}
