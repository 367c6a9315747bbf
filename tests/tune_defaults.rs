//! The run-shaping defaults of issue 10 through the real trainer on the tiny Llama fixture:
//! `--keep best` leaves the adapter of the lowest held-out step (and `last` the last one), and
//! the CLI's held-out split takes its records out of training (the step count shows it).
//! The pure rules (step counts, warm-up ratio, split) have unit tests in `src/train/plan.rs`.

use edge_sft::data::{load_jsonl, DataOptions, Example};
use edge_sft::eval::{score_all, EvalReport};
use edge_sft::format::gguf_adapter::read_gguf_adapter;
use edge_sft::format::peft::read_adapter;
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::LoraSet;
use edge_sft::train::heldout::{noise, paired_se, verdict, Verdict};
use edge_sft::train::params::for_each_tensor;
use edge_sft::train::trainer::{made_progress, tune, within_noise, Keep, TrainHooks, TuneOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tiny")
        .join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-sft-defaults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Each held-out scoring: (step, mean NLL), and its per-record NLLs and scored tokens.
struct Evals(Vec<(usize, f64)>, Vec<(Vec<f64>, usize)>);
impl TrainHooks for Evals {
    fn on_eval(&mut self, step: usize, e: &EvalReport) {
        self.0.push((step, e.mean_nll));
        self.1.push((e.record_nll.clone(), e.scored_tokens));
    }
}

fn mean_nll(lm: &LoadedModel, data: &[Example], lora: &LoraSet) -> f64 {
    let s = score_all(&lm.model, data, Some(lora), |_, _| {}).unwrap();
    EvalReport::from_scores(&s, 0).mean_nll
}

fn flat(l: &LoraSet) -> Vec<f32> {
    let mut v = Vec::new();
    for_each_tensor(l, |t| v.extend_from_slice(t));
    v
}

/// Train on three records, score the fourth every step, with a learning rate high enough that
/// the held-out NLL turns back up before the end.
fn run(
    keep: Keep,
    patience: usize,
    out: &Path,
) -> (
    LoadedModel,
    Vec<Example>,
    Evals,
    edge_sft::train::trainer::TuneOutcome,
) {
    let lm = LoadedModel::open(&fixture("llama/hf_f32")).unwrap();
    let all = load_jsonl(
        &fixture("records.jsonl"),
        &lm.tokenizer,
        &lm.chat,
        &DataOptions::default(),
    )
    .unwrap()
    .examples;
    let (train, held) = all.split_at(3);
    let opts = TuneOptions {
        lr: 2e-2,
        steps: Some(24),
        eval_every: Some(1),
        save_every: Some(0),
        keep,
        patience,
        seed: 3,
        ..TuneOptions::default()
    };
    let mut hooks = Evals(Vec::new(), Vec::new());
    let o = tune(&lm.model, train, Some(held), &opts, out, false, &mut hooks).unwrap();
    (lm, held.to_vec(), hooks, o)
}

#[test]
fn keep_best_leaves_the_latest_step_within_noise_of_the_lowest() {
    let dir = tmp("best");
    let (lm, held, evals, o) = run(Keep::Best, 0, &dir);
    let steps: Vec<(usize, f64)> = evals.0.iter().copied().filter(|(s, _)| *s > 0).collect();
    let records = &evals.1[1..];
    assert_eq!(steps.len(), 24, "scored after every step");
    assert_eq!(
        records[0].0.len(),
        1,
        "one held-out record: the fixed margin alone decides"
    );
    let (best_step, best) =
        steps.iter().fold(
            (0, f64::INFINITY),
            |acc, &(s, v)| if v < acc.1 { (s, v) } else { acc },
        );
    assert_eq!(o.best, Some((best_step, best)));
    // The kept step: the latest one within noise of the lowest NLL seen up to it.
    let mut lowest = (f64::INFINITY, Vec::new());
    let mut want = (0, 0.0);
    for (&(s, v), (per_record, tokens)) in steps.iter().zip(records) {
        if v < lowest.0 {
            lowest = (v, per_record.clone());
        }
        let se = paired_se(per_record, &lowest.1, *tokens);
        if v <= lowest.0 + noise(lowest.0, se) {
            want = (s, v);
        }
    }
    assert!(
        want.0 < 24,
        "the held-out NLL must turn back up for this test to tell kept from last: {steps:?}"
    );
    assert_eq!((o.kept_step, o.kept_eval), (want.0, Some(want.1)));
    assert!(within_noise(want.1, best) && want.0 >= best_step);
    let on_disk = read_adapter(&dir, &lm.model.config).unwrap();
    let disk_nll = mean_nll(&lm, &held, &on_disk);
    assert!(
        (disk_nll - want.1).abs() <= 1e-9 * want.1.abs(),
        "adapter on disk scores {disk_nll}, the kept step scored {}",
        want.1
    );
    let last = steps.last().unwrap().1;
    assert!(disk_nll < last, "kept {disk_nll} vs last {last}");
    assert_ne!(
        flat(&on_disk),
        flat(&o.lora),
        "the kept adapter is not the last step's"
    );
}

/// With patience 3 the same run stops at the third scoring in a row that does not beat the last
/// progress (the base model's NLL counting as the first), and the adapter on disk is still the
/// kept step's.
#[test]
fn early_stop_after_patience_scorings_without_progress() {
    let dir = tmp("early");
    let (lm, held, evals, o) = run(Keep::Best, 3, &dir);
    // Step 0: the base model.
    let mut reference = (evals.0[0].1, evals.1[0].0.clone());
    let mut stalled = 0;
    let mut want = None;
    for (&(s, v), (per_record, tokens)) in evals.0[1..].iter().zip(&evals.1[1..]) {
        let se = paired_se(per_record, &reference.1, *tokens);
        match verdict(v, reference.0, se) {
            Verdict::Progress => {
                reference = (v, per_record.clone());
                stalled = 0;
            }
            Verdict::Stalled => stalled += 1,
            Verdict::Unclear => {}
        }
        if stalled == 3 {
            want = Some(s);
            break;
        }
    }
    let want = want.expect("this run's held-out NLL must stall for the test to mean anything");
    assert!(o.stopped_early, "{:?}", evals.0);
    assert_eq!(o.steps_done, want);
    assert_eq!(evals.0.last().unwrap().0, want, "no scoring after the stop");
    assert!(o.steps_done < o.total_steps);
    let on_disk = read_adapter(&dir, &lm.model.config).unwrap();
    let disk_nll = mean_nll(&lm, &held, &on_disk);
    assert!((disk_nll - o.kept_eval.unwrap()).abs() <= 1e-9 * disk_nll.abs());
}

#[test]
fn progress_needs_more_than_noise() {
    assert!(made_progress(3.50, 3.6173));
    assert!(!made_progress(3.59, 3.6173)); // 0.75% lower: inside 1% + 0.005
    assert!(made_progress(0.04, 0.05));
    assert!(!made_progress(0.046, 0.05));
}

#[test]
fn noise_tolerance() {
    assert!(within_noise(3.63, 3.6173)); // 0.35% above: noise on a small held-out set
    assert!(!within_noise(3.70, 3.6173));
    assert!(within_noise(0.054, 0.05)); // low NLLs: the absolute 0.005 dominates
    assert!(!within_noise(0.06, 0.05));
}

#[test]
fn keep_last_leaves_the_last_step() {
    let dir = tmp("last");
    let (lm, _, _, o) = run(Keep::Last, 0, &dir);
    assert_eq!(o.kept_step, 24);
    let on_disk = read_adapter(&dir, &lm.model.config).unwrap();
    let (a, b) = (flat(&on_disk), flat(&o.lora));
    assert_eq!(a.len(), b.len());
    // PEFT files hold Q/K rows in HF order; read_adapter permutes them back, exactly.
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    // The llama.cpp adapter beside it holds the same step, bit for bit (f32 by default).
    let gguf = flat(&read_gguf_adapter(&dir.join("adapter.gguf"), &lm.model.config).unwrap());
    assert!(gguf.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// The CLI holds out a seeded sample when there is no --eval-data: with 40 records and
/// --eval-split 0.25, 10 are held out, so one epoch of the default batch 2 is 15 steps, not 20.
/// Without `--lora` too: LoRA is the only method, so a user need not say it.
#[test]
fn cli_holdout_is_not_trained_on() {
    let dir = tmp("split");
    let base = std::fs::read_to_string(fixture("records.jsonl")).unwrap();
    let data = dir.join("train.jsonl");
    std::fs::write(&data, base.repeat(10)).unwrap();
    let out = dir.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_edge-sft"))
        .args(["tune", "--threads", "1", "--epochs", "1"])
        .args(["--eval-split", "0.25", "--seed", "9", "--patience", "0"])
        .arg("--model")
        .arg(fixture("llama/hf_f32"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("held out 10 of 40 records"), "{stderr}");
    assert!(
        stderr.contains("30 records → 15 steps (batch 2, 1 epoch)"),
        "{stderr}"
    );
    assert!(stdout.contains("done: 15 steps"), "{stdout}");
    assert!(stdout.contains("held-out NLL "), "{stdout}");
    assert!(stdout.contains("edge-sft generate --model"), "{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 15);
}
