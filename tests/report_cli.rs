//! The loss figure: a short `tune` on the tiny Llama fixture leaves `loss.svg` in its folder; the
//! file is well-formed XML with one point per logged step in the raw loss, smoothed loss and
//! learning-rate curves and one marker per held-out scoring (the base model's included);
//! `report` redraws it, overlays two runs and prints the summary table.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edge-sft");
const STEPS: usize = 12;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 12-step run scored on the fixture records every 4 steps (and before the first).
fn tune(dir: &Path, name: &str, lr: &str) -> PathBuf {
    let base = std::fs::read_to_string(fixture("records.jsonl")).unwrap();
    let data = dir.join("train.jsonl");
    std::fs::write(&data, base.repeat(5)).unwrap();
    let out = dir.join(name);
    let o = Command::new(BIN)
        .args([
            "tune",
            "--threads",
            "1",
            "--batch-tokens",
            "64",
            "--save-every",
            "5",
        ])
        .args([
            "--steps",
            &STEPS.to_string(),
            "--eval-every",
            "4",
            "--lr",
            lr,
        ])
        .arg("--model")
        .arg(fixture("llama/hf_f32"))
        .arg("--data")
        .arg(&data)
        .arg("--eval-data")
        .arg(fixture("records.jsonl"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("loss figure: "), "{stdout}");
    out
}

/// The point counts of the figure's polylines, and its circles.
fn shapes(svg: &str) -> (Vec<usize>, usize, Vec<String>) {
    let doc = roxmltree::Document::parse(svg).expect("the figure is well-formed XML");
    let mut lines = Vec::new();
    let mut circles = 0;
    let mut texts = Vec::new();
    for n in doc.descendants() {
        match n.tag_name().name() {
            "polyline" => lines.push(n.attribute("points").unwrap().split_whitespace().count()),
            "circle" => circles += 1,
            "text" => texts.push(n.text().unwrap_or("").trim().to_string()),
            _ => {}
        }
    }
    (lines, circles, texts)
}

fn eval_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("eval_loss"))
        .count()
}

#[test]
fn tune_draws_the_figure_and_report_redraws_and_overlays() {
    let dir = tmp("fig");
    let a = tune(&dir, "run-a", "1e-3");
    let svg = std::fs::read_to_string(a.join("loss.svg")).unwrap();
    let (lines, circles, texts) = shapes(&svg);
    // Raw loss, smoothed loss and learning rate: one point per step each.
    let full = lines.iter().filter(|&&n| n == STEPS).count();
    assert_eq!(full, 3, "polylines by point count: {lines:?}");
    // Held-out NLL: the base model's, every 4 steps and the last: dots plus a line through them,
    // and one dot in the legend.
    let evals = eval_steps(&a) + 1;
    assert!(evals >= 4, "{evals}");
    assert_eq!(circles, evals + 1);
    assert!(lines.contains(&evals));
    for want in [
        "edge-sft tune: run-a",
        "step",
        "learning rate",
        "held-out NLL",
        "training loss (smoothed)",
    ] {
        assert!(
            texts.iter().any(|t| t.starts_with(want)),
            "no text {want:?} in {texts:?}"
        );
    }
    assert!(texts
        .iter()
        .any(|t| t.starts_with("mean NLL per scored token")));

    // report redraws the same figure and prints the table.
    std::fs::remove_file(a.join("loss.svg")).unwrap();
    let o = Command::new(BIN).arg("report").arg(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(a.join("loss.svg")).unwrap(), svg);
    let table = String::from_utf8_lossy(&o.stdout);
    let row = table.lines().find(|l| l.starts_with("run-a")).unwrap();
    assert!(
        row.contains(&format!(" {STEPS} ")) && row.contains(" → "),
        "{table}"
    );

    // Two runs overlaid in one figure.
    let b = tune(&dir, "run-b", "3e-3");
    let out = dir.join("both.svg");
    let o = Command::new(BIN)
        .arg("report")
        .arg(&a)
        .arg(&b)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("run-a") && table.contains("run-b"),
        "{table}"
    );
    let (lines, _, texts) = shapes(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(lines.iter().filter(|&&n| n == STEPS).count(), 6);
    assert!(texts.iter().any(|t| t == "edge-sft tune: run-a vs run-b"));

    // Several runs without --out is a usage error, not a guess.
    let o = Command::new(BIN)
        .arg("report")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_on_a_folder_without_metrics_is_a_clear_error() {
    let dir = tmp("empty");
    let o = Command::new(BIN).arg("report").arg(&dir).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("metrics.jsonl"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
