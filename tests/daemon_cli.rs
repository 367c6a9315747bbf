//! `edge-sft daemon` end to end on the tiny Llama fixture: a round that is promoted and
//! published, one that is rejected, the status socket, SIGTERM mid-round and resume, a condition
//! failing mid-run, and `adapters list|rollback`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-daemon-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("inbox")).unwrap();
    std::fs::create_dir_all(d.join("sys/power")).unwrap();
    std::fs::create_dir_all(d.join("sys/thermal")).unwrap();
    std::fs::write(d.join("sys/loadavg"), "0.00 0.00 0.00 1/1 1\n").unwrap();
    d
}

/// A config on the tiny model with fake device roots (no battery: on AC); `extra` keys
/// replace the test defaults.
fn config(d: &Path, extra: &str) -> PathBuf {
    let model = format!("\"{}\"", fixture("llama/hf_f32").display());
    let base = [
        ("model", model.as_str()),
        ("inbox", "\"inbox\""),
        ("state", "\"state\""),
        ("min_new_pairs", "4"),
        ("heldout_fraction", "0.25"),
        ("step_budget", "6"),
        ("checkpoint_every", "2"),
        ("poll_s", "0.1"),
        ("threads", "1"),
        ("max_seq", "128"),
    ];
    let mut text = format!("{extra}\n");
    for (k, v) in base {
        if !extra
            .lines()
            .any(|l| l.split('=').next().unwrap().trim() == k)
        {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text.push_str(
        "[triggers]\npower_supply_root = \"sys/power\"\nthermal_root = \"sys/thermal\"\n\
         loadavg_path = \"sys/loadavg\"\n",
    );
    let p = d.join("edge-sft.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn records() -> Vec<String> {
    std::fs::read_to_string(fixture("records.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_inbox(d: &Path, lines: &[String]) {
    let mut t = lines.join("\n");
    t.push('\n');
    std::fs::write(d.join("inbox/app.jsonl"), t).unwrap();
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn once(cfg: &Path) -> Output {
    let o = cli(&["daemon", "--once", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn decisions(d: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.join("state/decisions.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn status_json(d: &Path) -> serde_json::Value {
    let o = cli(&[
        "status",
        "--json",
        "--state",
        d.join("state").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn spawn(cfg: &Path) -> Child {
    Command::new(BIN)
        .args(["daemon", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(c: &mut Child, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        if let Some(s) = c.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("daemon exited ({s}) while waiting for {what}: {err}");
        }
        assert!(t.elapsed().as_secs() < secs, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(c: &Child) {
    let s = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap();
    assert!(s.success());
}

fn wait_exit(mut c: Child, secs: u64) -> String {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(s.success(), "daemon exited with {s}: {err}");
            return err;
        }
        if t.elapsed().as_secs() > secs {
            let _ = c.kill();
            panic!("daemon did not exit within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every socket the process holds is a Unix socket: none is in /proc/net/{tcp,tcp6,udp,udp6,raw}.
fn assert_no_network_sockets(pid: u32) {
    let mut sockets = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().to_string();
            if let Some(ino) = t.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']')) {
                sockets.push(ino.to_string());
            }
        }
    }
    assert!(!sockets.is_empty(), "the status socket should be open");
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    for ino in &sockets {
        for net in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
            let table = std::fs::read_to_string(format!("/proc/net/{net}")).unwrap_or_default();
            let hit = table
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(9) == Some(ino.as_str()));
            assert!(!hit, "socket {ino} of the daemon is a {net} socket");
        }
        assert!(
            unix.lines()
                .any(|l| l.split_whitespace().nth(6) == Some(ino.as_str())),
            "socket {ino} is not a Unix socket"
        );
    }
}

#[test]
fn a_round_is_promoted_published_and_reported_then_rolled_back() {
    let d = tmp("promote");
    // Held-back pairs (the most recent quarter) repeat trained ones: the candidate must gain.
    let r = records();
    let lines: Vec<String> = (0..12).map(|i| r[i % 4].clone()).collect();
    write_inbox(&d, &lines);
    std::fs::write(d.join("general.jsonl"), r.join("\n")).unwrap();
    let cfg = config(
        &d,
        "lr = 0.01\ngate_margin = 10.0\ngeneral_set = \"general.jsonl\"",
    );
    let o = once(&cfg);
    // The log names the kernels a round trains on, as `tune` does.
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("cpu kernels: "), "{log}");
    let ds = decisions(&d);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0]["promoted"], true, "{:?}", ds[0]);
    assert_eq!(ds[0]["heldout_pairs"], 3);
    assert_eq!(ds[0]["train_pairs"], 9);
    let p = &ds[0]["personal"];
    assert!(p["candidate"].as_f64().unwrap() < p["current"].as_f64().unwrap());
    assert!(ds[0]["general"]["candidate"].is_f64());
    let cur = d.join("state/adapters/current");
    assert!(cur.join("adapter_model.safetensors").is_file());
    assert!(cur.join("adapter.gguf").is_file());
    let s = status_json(&d);
    assert_eq!(s["state"], "not running");
    assert_eq!(s["rounds"], 1);
    assert_eq!(s["queue"], 0);
    assert_eq!(s["current_version"], "v0001");
    assert_eq!(s["last_decision"]["promoted"], true);

    // Round 2 continues from v0001 (init_adapter) and is gated against it.
    let more: Vec<String> = (0..12).map(|i| r[i % 4].clone()).collect();
    std::fs::write(d.join("inbox/app2.jsonl"), format!("{}\n", more.join("\n"))).unwrap();
    once(&cfg);
    let ds = decisions(&d);
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[1]["round"], 2);
    assert_eq!(ds[1]["promoted"], true, "{:?}", ds[1]);
    // Replay draws on round 1's trained pairs, never on its held-back ones.
    let trained = std::fs::read_to_string(d.join("state/trained.jsonl")).unwrap();
    assert_eq!(trained.lines().count(), 2);

    let st = d.join("state");
    let o = cli(&["adapters", "list", "--state", st.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("* v0002") && out.contains("  v0001"), "{out}");
    let o = cli(&["adapters", "rollback", "--state", st.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(status_json(&d)["current_version"], "v0001");
}

#[test]
fn a_candidate_that_gains_nothing_personal_is_rejected_and_nothing_is_published() {
    let d = tmp("reject");
    let r = records();
    // Train hard on one record; hold back a different one.
    let mut lines: Vec<String> = (0..9).map(|_| r[1].clone()).collect();
    lines.extend((0..3).map(|_| r[0].clone()));
    write_inbox(&d, &lines);
    std::fs::write(d.join("general.jsonl"), format!("{}\n{}\n", r[2], r[3])).unwrap();
    let cfg = config(
        &d,
        "lr = 0.05\nstep_budget = 12\ngate_margin = 0.0\ngeneral_set = \"general.jsonl\"",
    );
    once(&cfg);
    let ds = decisions(&d);
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0]["promoted"], false, "{:?}", ds[0]);
    assert!(ds[0]["personal"]["candidate"].is_f64(), "{:?}", ds[0]);
    assert!(!d.join("state/adapters/current").exists());
    // The pairs are used all the same: nothing is queued again.
    assert_eq!(status_json(&d)["queue"], 0);
}

#[test]
fn status_socket_answers_and_sigterm_mid_round_checkpoints_then_resumes() {
    let d = tmp("socket");
    let r = records();
    let lines: Vec<String> = (0..12).map(|i| r[i % 4].clone()).collect();
    write_inbox(&d, &lines);
    // A long round, so it is still running when SIGTERM comes.
    let cfg = config(
        &d,
        "step_budget = 100000\ncheckpoint_every = 1\ntime_budget_s = 0",
    );
    let mut c = spawn(&cfg);
    let sock = d.join("state/status.sock");
    wait_for(&mut c, "the status socket", 60, || sock.exists());
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let m = std::fs::metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    let sm = std::fs::metadata(d.join("state")).unwrap();
    assert_eq!(sm.permissions().mode() & 0o777, 0o700);
    wait_for(&mut c, "training to start", 60, || {
        let s = status_json(&d);
        s["state"] == "training" && s["step"][0].as_u64().unwrap_or(0) >= 2
    });
    let s = status_json(&d);
    assert_eq!(s["pid"].as_u64().unwrap(), c.id() as u64);
    assert_no_network_sockets(c.id());
    assert_eq!(s["stored"], 12);
    // Every thread runs at the config's nice level (default 10): field 19 of each task's stat.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", c.id())).unwrap();
    let mut n = 0;
    for t in tasks {
        let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after.split(' ').nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, 10, "{stat}");
        n += 1;
    }
    assert!(n >= 2, "the worker threads are there too");
    sigterm(&c);
    let err = wait_exit(c, 30);
    assert!(err.contains("checkpoint is saved"), "{err}");
    assert!(!sock.exists(), "socket removed on exit");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("state/state.json")).unwrap()).unwrap();
    assert_eq!(st["plan"]["round"], 1);
    assert!(d.join("state/run/checkpoint/state.json").is_file());
    // Restarted with a small budget: the same round resumes from its checkpoint and finishes.
    let cfg = config(
        &d,
        "step_budget = 3\ncheckpoint_every = 1\nlr = 0.01\ngate_margin = 10.0",
    );
    let o = once(&cfg);
    let ds = decisions(&d);
    assert_eq!(ds.len(), 1, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ds[0]["round"], 1);
    assert_eq!(status_json(&d)["rounds"], 1);
}

#[test]
fn a_condition_failing_mid_run_pauses_the_round_until_it_holds_again() {
    let d = tmp("pause");
    let r = records();
    let lines: Vec<String> = (0..12).map(|i| r[i % 4].clone()).collect();
    write_inbox(&d, &lines);
    let cfg = config(
        &d,
        "step_budget = 100000\ncheckpoint_every = 1\ntime_budget_s = 0",
    );
    let mut c = spawn(&cfg);
    wait_for(&mut c, "training to start", 60, || {
        d.join("state/status.sock").exists() && status_json(&d)["state"] == "training"
    });
    // Unplugged: a battery appears and mains goes offline.
    let p = d.join("sys/power");
    std::fs::create_dir_all(p.join("BAT0")).unwrap();
    std::fs::write(p.join("BAT0/type"), "Battery\n").unwrap();
    std::fs::create_dir_all(p.join("AC")).unwrap();
    std::fs::write(p.join("AC/type"), "Mains\n").unwrap();
    std::fs::write(p.join("AC/online"), "0\n").unwrap();
    wait_for(&mut c, "the round to pause", 60, || {
        let s = status_json(&d);
        s["state"] == "waiting" && s["next_trigger"].as_str().unwrap_or("").contains("battery")
    });
    assert!(d.join("state/run/checkpoint/state.json").is_file());
    assert!(decisions(&d).is_empty());
    // Plugged back in: training resumes.
    std::fs::write(p.join("AC/online"), "1\n").unwrap();
    wait_for(&mut c, "training to resume", 60, || {
        status_json(&d)["state"] == "training"
    });
    sigterm(&c);
    wait_exit(c, 30);
}

/// A candidate that learns the person's pairs but raises the general NLL past the margin is
/// trained again from the same adapter at half the learning rate, up to `backoff_tries` times;
/// every try is recorded with its learning rate, and general replay pairs are mixed in.
#[test]
fn a_round_refused_for_the_general_set_is_retried_at_half_the_learning_rate() {
    let d = tmp("backoff");
    let r = records();
    // Held-back pairs repeat the trained one (the personal NLL falls); the general set is two
    // other records, which 60 steps at lr 0.1 on one record make worse.
    let lines: Vec<String> = (0..12).map(|_| r[1].clone()).collect();
    write_inbox(&d, &lines);
    std::fs::write(d.join("general.jsonl"), format!("{}\n{}\n", r[0], r[2])).unwrap();
    std::fs::write(d.join("replay.jsonl"), format!("{}\n", r[1])).unwrap();
    let cfg = config(
        &d,
        "lr = 0.1\nstep_budget = 60\ngate_margin = 0.0\nbackoff_tries = 2\n\
         general_set = \"general.jsonl\"\ngeneral_replay = \"replay.jsonl\"\n\
         general_replay_size = 4",
    );
    once(&cfg);
    let ds = decisions(&d);
    assert!(!ds.is_empty());
    let first = &ds[0];
    assert_eq!(first["promoted"], false, "{first:?}");
    assert!(
        first["general_rise"].as_f64().unwrap() > 0.0,
        "the test needs a general rise: {first:?}"
    );
    assert_eq!(first["general_replay_pairs"], 1, "{first:?}");
    // Tries 0, 1, 2 at 0.1, 0.05, 0.025 unless one was promoted earlier; all one round.
    assert!(ds.len() >= 2 && ds.len() <= 3, "{ds:?}");
    for (i, x) in ds.iter().enumerate() {
        assert_eq!(x["round"], 1);
        assert_eq!(x["attempt"], i as u64);
        let lr = x["lr"].as_f64().unwrap();
        assert!((lr - 0.1 / f64::powi(2.0, i as i32)).abs() < 1e-9, "{x:?}");
        if i + 1 < ds.len() {
            assert_eq!(x["promoted"], false, "only a refused try is retried: {x:?}");
        }
    }
    // The round is finished once: the pairs are used and nothing is queued again.
    assert_eq!(status_json(&d)["rounds"], 1);
    assert_eq!(status_json(&d)["queue"], 0);
    let trained = std::fs::read_to_string(d.join("state/trained.jsonl")).unwrap();
    assert_eq!(trained.lines().count(), 1);
}

/// A round that needs more memory than `max_memory_mb` does not train: it waits, says why, and
/// its pairs stay queued; with no budget the same round runs.
#[test]
fn a_round_over_the_memory_budget_waits_and_keeps_its_pairs() {
    let d = tmp("membudget");
    let r = records();
    let lines: Vec<String> = (0..8).map(|i| r[i % 4].clone()).collect();
    write_inbox(&d, &lines);
    let cfg = config(&d, "max_memory_mb = 1\nlr = 0.01");
    let o = once(&cfg);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("max_memory_mb 1") && err.contains("MiB even with gradient checkpointing"),
        "{err}"
    );
    assert!(decisions(&d).is_empty());
    assert!(!d.join("state/adapters/current").exists());
    let cfg = config(&d, "max_memory_mb = 0\nlr = 0.01");
    let o = once(&cfg);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs about"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(decisions(&d).len(), 1);
}
