//! `edge-sft tune --config FILE.toml` and `OUT/run.toml` (issue 17) on the tiny Llama fixture: a
//! run repeated from its run.toml, from another folder, writes bit-identical adapters; flags on
//! the command line win over the file's keys; a resume reads the same file; unknown keys and
//! values of the wrong type are refused naming the file, the line and the key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `dir/train.jsonl`: the fixture's records three times over.
fn train_file(dir: &Path) -> PathBuf {
    let p = dir.join("train.jsonl");
    std::fs::write(
        &p,
        std::fs::read_to_string(fixture("records.jsonl"))
            .unwrap()
            .repeat(3),
    )
    .unwrap();
    p
}

/// `edge-sft ARGS` run in `cwd`.
fn edge_sft(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "edge-sft failed: {err}");
}

/// A refusal: a non-zero exit with a message, not a panic. Returns stderr.
fn refused(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "edge-sft accepted it: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The `key = value` lines of a run.toml (comments and blank lines left out).
fn settings(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("run.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn setting(out: &Path, key: &str) -> String {
    let prefix = format!("{key} = ");
    settings(out)
        .into_iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key} in {}/run.toml", out.display()))
}

#[test]
fn a_run_repeated_from_its_run_toml_writes_the_same_adapter() {
    let dir = tmp("repeat");
    train_file(&dir);
    // Relative paths, no --threads: run.toml must make them absolute and pin the count (and the
    // model's path, which the adapter's metadata names, must be the same in the repeat).
    std::os::unix::fs::symlink(fixture("llama"), dir.join("models")).unwrap();
    let o = edge_sft(
        &dir,
        &[
            "tune",
            "--lora",
            "--model",
            "models/hf_f32",
            "--data",
            "train.jsonl",
            "--out",
            "first",
            "--steps",
            "6",
            "--batch-tokens",
            "64",
            "--lr",
            "1e-3",
            "--seed",
            "7",
            "--rank",
            "4",
            "--targets",
            "q,v,down",
            "--dropout",
            "0.1",
        ],
    );
    ok(&o);
    let first = dir.join("first");
    let text = std::fs::read_to_string(first.join("run.toml")).unwrap();
    assert!(text.starts_with("# edge-sft "), "{text}");
    assert!(
        text.contains("# Command line: edge-sft tune --lora"),
        "{text}"
    );
    let data = dir.join("train.jsonl");
    assert_eq!(
        setting(&first, "data"),
        format!("{:?}", data.to_str().unwrap())
    );
    let model = dir.join("models/hf_f32");
    assert_eq!(
        setting(&first, "model"),
        format!("{:?}", model.to_str().unwrap())
    );
    assert_eq!(setting(&first, "seed"), "7");
    assert_eq!(setting(&first, "targets"), r#"["q", "v", "down"]"#);
    assert_eq!(
        setting(&first, "schedule"),
        r#""cosine""#,
        "defaults are written"
    );
    let threads: usize = setting(&first, "threads").parse().unwrap();
    assert!(threads >= 1);
    assert!(
        !text.contains("\nforce") && !text.contains("\nresume"),
        "{text}"
    );

    // From another folder, to another output folder.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run_toml = first.join("run.toml");
    let o = edge_sft(
        &elsewhere,
        &[
            "tune",
            "--config",
            run_toml.to_str().unwrap(),
            "--out",
            "second",
        ],
    );
    ok(&o);
    let second = elsewhere.join("second");
    for f in [
        "adapter_model.safetensors",
        "adapter.gguf",
        "adapter_config.json",
    ] {
        let (a, b) = (
            std::fs::read(first.join(f)).unwrap(),
            std::fs::read(second.join(f)).unwrap(),
        );
        assert!(a == b, "{f} differs between the run and its repeat");
    }
    // The repeat's own run.toml holds the same settings but for its folder.
    let strip = |v: Vec<String>| -> Vec<String> {
        v.into_iter().filter(|l| !l.starts_with("out = ")).collect()
    };
    assert_eq!(strip(settings(&first)), strip(settings(&second)));
    assert_eq!(
        setting(&second, "out"),
        format!("{:?}", second.to_str().unwrap())
    );

    // The file also continues the run it describes: `--resume` meets the file's absolute `out`
    // and options the checkpoint accepts (the run is finished, so nothing is left to do).
    let o = edge_sft(
        &dir,
        &["tune", "--config", "first/run.toml", "--resume", "first"],
    );
    ok(&o);
    let text = std::fs::read_to_string(first.join("run.toml")).unwrap();
    assert!(text.contains("(--resume)"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn command_line_flags_win_over_the_file() {
    let dir = tmp("override");
    train_file(&dir);
    let cfg = dir.join("cfg.toml");
    std::fs::write(
        &cfg,
        format!(
            "# a hand-written config\nmodel = {:?}\ndata = \"train.jsonl\"\nsteps = 2\n\
             lr = 1e-3\nbatch-tokens = 64\ntargets = [\"q\", \"v\"]\nthreads = 1\n\
             grad-checkpoint = true\nschedule = \"linear\"\n",
            fixture("llama/hf_f32").to_str().unwrap()
        ),
    )
    .unwrap();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let o = edge_sft(
        &elsewhere,
        &[
            "tune",
            "--config",
            "../cfg.toml",
            "--lr",
            "2e-3",
            "--targets",
            "k",
            "--out",
            "run",
        ],
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("on k, lr 2e-3"), "{err}");
    let out = elsewhere.join("run");
    assert_eq!(setting(&out, "lr"), "0.002", "the command line's value");
    assert_eq!(
        setting(&out, "targets"),
        r#"["k"]"#,
        "a list is taken whole"
    );
    assert_eq!(setting(&out, "steps"), "2", "the file's value");
    assert_eq!(setting(&out, "grad-checkpoint"), "true");
    assert_eq!(setting(&out, "schedule"), r#""linear""#);
    // `data` is relative to the file's folder, not to where edge-sft ran.
    let data = dir.join("elsewhere/../train.jsonl");
    assert_eq!(
        setting(&out, "data"),
        format!("{:?}", data.to_str().unwrap())
    );
    let text = std::fs::read_to_string(out.join("run.toml")).unwrap();
    assert!(text.contains("# Config file: "), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_keys_and_values_name_the_file_line_and_key() {
    let dir = tmp("bad");
    train_file(&dir);
    let model = fixture("llama/hf_f32");
    let cases: &[(&str, &[&str])] = &[
        (
            "steps = 2\nbatch_size = 2\n",
            &[":2: unknown key 'batch_size'", "did you mean 'batch-size'"],
        ),
        (
            "steps = 2\nlearning-rate = 1\n",
            &[":2: unknown key 'learning-rate'"],
        ),
        (
            "\nrank = \"eight\"\n",
            &[":2: rank = \"eight\"", "expected a whole number"],
        ),
        (
            "rank = 8.5\n",
            &[":1: rank = 8.5", "expected a whole number"],
        ),
        ("lr = true\n", &[":1: lr = true: expected a number"]),
        (
            "grad-checkpoint = \"yes\"\n",
            &[":1: grad-checkpoint = \"yes\": expected true or false"],
        ),
        (
            "schedule = \"cosin\"\n",
            &[
                ":1: schedule = \"cosin\"",
                "\"cosine\", \"linear\", \"constant\"",
            ],
        ),
        ("targets = [1, 2]\n", &[":1: targets = [1, 2]: expected"]),
        ("[tune]\nlr = 1e-3\n", &[":1: unknown key 'tune'"]),
        ("lr = \n", &["TOML parse error at line 1"]),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let cfg = dir.join(format!("bad{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let out = dir.join(format!("out{i}"));
        let o = edge_sft(
            &dir,
            &[
                "tune",
                "--config",
                cfg.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--data",
                "train.jsonl",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let err = refused(&o);
        assert!(err.contains(cfg.to_str().unwrap()), "{text:?}: {err}");
        for w in *wanted {
            assert!(err.contains(w), "{text:?}: wanted {w:?} in {err}");
        }
        assert!(!out.exists(), "{text:?}: the run started anyway");
    }
    let o = edge_sft(&dir, &["tune", "--config", "missing.toml", "--out", "x"]);
    let err = refused(&o);
    assert!(err.contains("missing.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
