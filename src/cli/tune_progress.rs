//! What `tune` shows while it runs (a progress bar or step lines, held-out scorings, the loss
//! figure redrawn at each checkpoint) and the summary at the end of a run.

use super::tune::{Args, KeepArg};
use edge_sft::eval::EvalReport;
use edge_sft::train::trainer::{StepReport, TrainHooks, TuneOutcome};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(super) struct CliHooks {
    stop: Arc<AtomicBool>,
    /// The run folder: the loss figure is redrawn there at each checkpoint.
    out: std::path::PathBuf,
    figure_failed: bool,
    pub(super) bar: Option<indicatif::ProgressBar>,
    last_eval: Option<f64>,
}

impl CliHooks {
    pub(super) fn new(
        stop: Arc<AtomicBool>,
        out: std::path::PathBuf,
        bar: Option<indicatif::ProgressBar>,
    ) -> Self {
        CliHooks {
            stop,
            out,
            figure_failed: false,
            bar,
            last_eval: None,
        }
    }
}

impl TrainHooks for CliHooks {
    fn on_step(&mut self, r: &StepReport) {
        let eval = self
            .last_eval
            .map(|e| format!(" eval {e:.4}"))
            .unwrap_or_default();
        let msg = format!(
            "loss {:.4}{eval} lr {:.2e} |g| {:.3} {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, r.tokens_per_s
        );
        match &self.bar {
            Some(b) => {
                b.set_length(r.total_steps as u64);
                b.set_position(r.step as u64);
                b.set_message(msg);
            }
            None => eprintln!("step {}/{} {msg}", r.step, r.total_steps),
        }
    }
    fn on_arena(&mut self, bytes: usize, table: &[(&'static str, usize)]) {
        let parts: Vec<String> = table
            .iter()
            .map(|(name, n)| format!("{name} {:.1}", (4 * n) as f64 / 1e6))
            .collect();
        let line = format!(
            "activation arena: {:.1} MB, allocated once ({} MB)",
            bytes as f64 / 1e6,
            parts.join(", ")
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn on_eval(&mut self, step: usize, e: &EvalReport) {
        self.last_eval = Some(e.mean_nll);
        let line = format!(
            "eval @ step {step}: mean NLL {:.4}, Σ log Pr(y|x) {:.2} over {} tokens",
            e.mean_nll, e.sum_logprob, e.scored_tokens
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn on_early_stop(&mut self, step: usize, patience: usize) {
        let line = format!(
            "stopping early at step {step}: {patience} held-out scorings in a row without progress"
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn on_checkpoint(&mut self, step: usize) {
        if self.bar.is_none() {
            eprintln!("checkpoint saved at step {step}");
        }
        // The figure is a view of metrics.jsonl: a failure to draw it is said once and the run
        // goes on.
        if let Err(e) = edge_sft::report::draw_run(&self.out) {
            if !self.figure_failed {
                self.figure_failed = true;
                let line = format!("warning: cannot draw the loss figure: {e}");
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
    }
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn fmt_duration(s: f64) -> String {
    let s = s.round() as u64;
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

/// The end of a run: what was done, how the held-out NLL moved, where the adapter is and how to
/// try it.
pub(super) fn summarize(a: &Args, out: &std::path::Path, o: &TuneOutcome, scored: bool) {
    let early = if o.stopped_early {
        format!(
            " (stopped early, of {} planned: the held-out NLL had stopped improving)",
            o.total_steps
        )
    } else {
        String::new()
    };
    println!(
        "done: {} steps{early} in {} ({:.0} tokens/s)",
        o.steps_done,
        fmt_duration(o.seconds),
        o.tokens as f64 / o.seconds.max(1e-9)
    );
    if let (Some(b), Some((best_step, best))) = (&o.base_eval, o.best) {
        let last = o
            .final_eval
            .as_ref()
            .map(|f| format!(", last step {:.4}", f.mean_nll))
            .unwrap_or_default();
        let kept = o.kept_eval.unwrap_or(best);
        println!(
            "held-out NLL {:.4} → {kept:.4} (lowest {best:.4} at step {best_step}{last}; {} records, {} tokens)",
            b.mean_nll, b.records, b.scored_tokens
        );
        if best >= b.mean_nll {
            println!(
                "warning: no step scored better than the base model on the held-out records; \
                 try a lower --lr or more data"
            );
        }
    } else if let Some((best_step, best)) = o.best {
        println!("held-out NLL {best:.4} at step {best_step} (lowest)");
    }
    let which = if scored && matches!(a.keep, KeepArg::Best) {
        format!(
            "step {}: the last one within noise of the lowest held-out NLL",
            o.kept_step
        )
    } else {
        format!("the last step, {}", o.kept_step)
    };
    println!(
        "adapter ({which}): {0}/adapter_model.safetensors (PEFT), {0}/adapter.gguf (llama.cpp)",
        out.display()
    );
    let figure = out.join(edge_sft::report::FIGURE);
    if figure.is_file() {
        println!("loss figure: {}", figure.display());
    }
    let model = a.model.display();
    let out = out.display();
    println!("try it:");
    println!("  edge-sft chat --model {model} --adapter {out}");
    println!("  edge-sft generate --model {model} --adapter {out} --prompt \"...\"");
    // The held-out split lives only in memory, and scoring the training file would flatter the
    // adapter, so without --eval-data the user is asked for records the run never saw.
    let heldout = a
        .eval_data
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "HELDOUT.jsonl".into());
    println!("  edge-sft eval --model {model} --adapter {out} --data {heldout}");
}
