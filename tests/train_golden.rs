//! LoRA training against PyTorch + PEFT (tests/reference/train_golden.py): the one-step loss
//! and every LoRA gradient on the tiny Llama, Qwen2 and Gemma 3 models (F32 folder and Q8_0 GGUF base,
//! response-masked and joint objectives), and 20-step AdamW trajectories run through the real
//! trainer (`tune`), one of them with weight decay, clipping and a warmup + cosine schedule.
//!
//! Tolerances come from the active kernel path (tests/common): f32 on the f32 paths, the
//! documented bf16/f16 bounds on the reduced-precision ones (`EDGE_SFT_ISA=avx512bf16`).
//! `--nocapture` prints the worst error of each kind of check.

mod common;

use common::peft_step::{self, examples, flat, golden, open, tiny};
use edge_sft::data::LossOn;
use edge_sft::format::peft::{peft_key, read_adapter};
use edge_sft::loaded::LoadedModel;
use edge_sft::model::lora::{LoraSet, Target};
use edge_sft::train::batch::Batch;
use edge_sft::train::optim::{lr_at, Schedule};
use edge_sft::train::step::forward_backward;
use edge_sft::train::trainer::{tune, NoHooks, TuneOptions};
use serde_json::Value;

/// The CPU step through the shared PEFT one-step check (tests/common/peft_step.rs).
fn one_step(arch: &str) {
    let step = |lm: &LoadedModel, lora: &LoraSet, b: &Batch, g: &mut LoraSet, scale: f32| {
        forward_backward(&lm.model, lora, b, g, scale, false, None).unwrap()
    };
    let worst = peft_step::one_step(arch, &step, common::tol(), &common::path_label());
    worst.print(&format!("one_step {arch}"));
}

#[test]
fn one_step_gradients_match_pytorch_peft_llama() {
    one_step("llama");
}

#[test]
fn one_step_gradients_match_pytorch_peft_qwen2() {
    one_step("qwen2");
}

/// Gemma 3: the backward through q/k norm, the sandwich norms, GeGLU, the sliding window
/// and the scaled embeddings (tests/reference/make_tiny_archs.py).
#[test]
fn one_step_gradients_match_pytorch_peft_gemma3() {
    one_step("gemma3");
}

fn trajectory(arch: &str, name: &str) {
    let g = golden(arch);
    let want = &g["trajectories"][name];
    let tol = common::tol();
    let path = common::path_label();
    let mut worst = common::Worst::default();
    let lm = open(arch, "hf_f32");
    let exs = examples(&lm, LossOn::Response);
    let sched = name != "adamw";
    let opts = TuneOptions {
        rank: 4,
        alpha: 8.0,
        lr: 1e-3,
        steps: Some(20),
        batch_size: exs.len(), // one step = the whole set, in one micro-batch
        batch_tokens: 1 << 20,
        warmup: Some(if sched { 3 } else { 0 }),
        schedule: if sched {
            Schedule::Cosine
        } else {
            Schedule::Constant
        },
        weight_decay: want["weight_decay"].as_f64().unwrap() as f32,
        max_grad_norm: want["clip_grad_norm"].as_f64().unwrap_or(0.0) as f32,
        eval_every: Some(0),
        save_every: Some(0),
        init_adapter: Some(tiny(arch).join("train_init")),
        ..TuneOptions::default()
    };
    for (s, lr) in flat(&want["lr"]).iter().enumerate() {
        let ours = lr_at(opts.lr, opts.schedule, 3 * sched as usize, 20, s);
        assert!(
            (ours - lr).abs() < 1e-9 + 1e-6 * lr,
            "lr at step {s}: {ours} vs {lr}"
        );
    }
    let out = std::env::temp_dir().join(format!(
        "edge-sft-traj-{}-{arch}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    tune(&lm.model, &exs, None, &opts, &out, false, &mut NoHooks).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 20);
    let losses = flat(&want["losses"]);
    let norms = flat(&want["grad_norms"]);
    for (i, r) in rows.iter().enumerate() {
        let (l, w) = (r["loss"].as_f64().unwrap(), losses[i] as f64);
        worst.see("step loss (relative)", (l - w).abs() / w.abs());
        assert!(
            (l - w).abs() < tol.traj * w.abs(),
            "{arch}/{name} step {i} on {path}: loss {l} vs {w}"
        );
        let (n, wn) = (r["grad_norm"].as_f64().unwrap(), norms[i] as f64);
        worst.see("step grad norm (relative)", (n - wn).abs() / wn);
        assert!(
            (n - wn).abs() < tol.traj * wn,
            "{arch}/{name} step {i} on {path}: grad norm {n} vs {wn}"
        );
    }
    // Final parameters, read back from the PEFT adapter the run wrote (HF order).
    let fin = read_adapter(&out, &lm.model.config).unwrap();
    let init = read_adapter(&tiny(arch).join("train_init"), &lm.model.config).unwrap();
    for layer in 0..lm.model.config.n_layers {
        for t in Target::ALL {
            let p = fin.get(layer, t).unwrap();
            for (which, ours) in [("lora_A", &p.a), ("lora_B", &p.b)] {
                let key = peft_key(layer, t, which);
                let sum: f64 = ours.iter().map(|&v| v as f64).sum();
                let l2: f64 = ours.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                let (ws, wl) = (
                    want["final_sum"][&key].as_f64().unwrap(),
                    want["final_l2"][&key].as_f64().unwrap(),
                );
                worst.see("final tensor L2 (relative)", (l2 - wl).abs() / wl);
                assert!(
                    (l2 - wl).abs() < tol.final_l2 * wl,
                    "{key} on {path}: final L2 {l2} vs {wl}"
                );
                worst.see("final tensor sum (x its L2)", (sum - ws).abs() / wl);
                assert!(
                    (sum - ws).abs() < tol.final_sum * wl,
                    "{key} on {path}: final sum {sum} vs {ws}"
                );
                if let Some(fp) = want.get("final_params").and_then(|f| f.get(&key)) {
                    let theirs = flat(fp);
                    // What the 20 steps changed: ‖ours − theirs‖ / ‖theirs − init‖. Elements
                    // move at most lr·steps = 0.02, so this is the sharp check of the run.
                    let p0 = init.get(layer, t).unwrap();
                    let start = if which == "lora_A" { &p0.a } else { &p0.b };
                    let (mut d2, mut u2) = (0f64, 0f64);
                    for ((a, b), s) in ours.iter().zip(&theirs).zip(start) {
                        d2 += ((a - b) as f64).powi(2);
                        u2 += ((b - s) as f64).powi(2);
                    }
                    let upd = (d2 / u2).sqrt();
                    worst.see("final update (relative L2)", upd);
                    assert!(
                        upd < tol.final_update,
                        "{key} on {path}: update off by {upd:.2e} of its L2"
                    );
                    for (a, b) in ours.iter().zip(theirs) {
                        worst.see("final element (absolute)", (a - b).abs() as f64);
                        assert!(
                            ((a - b).abs() as f64) < tol.final_elem,
                            "{key} on {path}: final {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    worst.print(&format!("trajectory {arch}/{name}"));
}

#[test]
fn adamw_trajectory_matches_pytorch_llama() {
    trajectory("llama", "adamw");
}

#[test]
fn adamw_wd_clip_schedule_trajectory_matches_pytorch_llama() {
    trajectory("llama", "adamw_wd_clip_sched");
}

#[test]
fn adamw_wd_clip_schedule_trajectory_matches_pytorch_qwen2() {
    trajectory("qwen2", "adamw_wd_clip_sched");
}

#[test]
fn adamw_wd_clip_schedule_trajectory_matches_pytorch_gemma3() {
    trajectory("gemma3", "adamw_wd_clip_sched");
}

/// Qwen3: the backward through the q/k norm.
#[test]
fn one_step_gradients_match_pytorch_peft_qwen3() {
    one_step("qwen3");
}

#[test]
fn adamw_wd_clip_schedule_trajectory_matches_pytorch_qwen3() {
    trajectory("qwen3", "adamw_wd_clip_sched");
}

/// Llama 3.x RoPE scaling in the training forward/backward.
#[test]
fn one_step_gradients_match_pytorch_peft_llama3() {
    one_step("llama3");
}
