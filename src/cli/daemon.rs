//! `edge-sft daemon`, `edge-sft adapters list|rollback`, `edge-sft status`: the
//! personalization loop and its two companions.

use edge_sft::daemon::config::Config;
use edge_sft::daemon::{self, publish, status};
use edge_sft::error::Error;
use edge_sft::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "The daemon watches an inbox folder of append-only JSONL files (the three \
record shapes of `tune`) that your apps write as the person uses them. It stores every complete \
line once (malformed ones go to STATE/quarantine.jsonl with file, line and reason), and when at \
least `min_new_pairs` are new and the device is on AC power, idle, cool and inside its time \
window, it trains the current adapter further on them plus a replay sample of older pairs. A \
held-back share of the new pairs (never trained on) and an optional general set gate the \
candidate: it is published only if the personal NLL falls and the general NLL rises by no more \
than `gate_margin`. Apps load STATE/adapters/current/ (PEFT files and adapter.gguf), which is \
switched atomically.\n\n\
Every config key has a default; see examples/edge-sft.toml and docs/daemon.md.\n\
SIGTERM or Ctrl-C checkpoints a running round and exits; the next start resumes it.\n\n\
Examples:\n  edge-sft daemon --config edge-sft.toml\n  edge-sft status --state state\n  \
edge-sft adapters list --state state\n  edge-sft adapters rollback --state state"
)]
pub struct Args {
    /// The TOML config (paths in it are relative to its folder).
    #[arg(long)]
    pub config: PathBuf,
    /// Scan the inbox once, run one round if one is due, and exit (for cron, tests, trying a
    /// config).
    #[arg(long)]
    pub once: bool,
    /// Worker threads (overrides the config's `threads`; default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Args {
    /// The thread count to start the pool with: --threads, else the config's, else None.
    pub fn thread_hint(&self) -> Option<usize> {
        self.threads.or_else(|| {
            Config::load(&self.config)
                .ok()
                .map(|c| c.threads)
                .filter(|&n| n > 0)
        })
    }
}

/// Lower the process's CPU priority to the config's `nice` before the worker pool is built (its
/// threads inherit it). A config that cannot be read is left for `run` to report.
pub fn apply_nice(a: &Args) {
    if let Ok(c) = Config::load(&a.config) {
        if let Err(why) = edge_sft::daemon::limits::apply_nice(c.nice) {
            eprintln!("warning: {why}");
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    // Which kernels a round trains on, as `tune` says: a daemon log is where a slow round is
    // looked into.
    super::common::print_cpu_kernels();
    daemon::run(&cfg, &daemon::RunOptions { once: a.once })
}

#[derive(clap::Args)]
#[command(
    after_help = "Versions live in STATE/adapters/vNNNN; STATE/adapters/current is a \
symlink to one of them, switched atomically. `rollback` points it at the version before the \
current one (or at --to VERSION); the daemon's next round continues from it.\n\n\
Examples:\n  edge-sft adapters list --state state\n  edge-sft adapters rollback --state state --to v0003"
)]
pub struct AdaptersArgs {
    #[command(subcommand)]
    pub cmd: AdaptersCmd,
}

#[derive(clap::Subcommand)]
pub enum AdaptersCmd {
    /// List the kept versions, their round and gate numbers; `*` marks the current one.
    List {
        /// The daemon's state folder.
        #[arg(long)]
        state: PathBuf,
    },
    /// Point `current` at the previous version (or --to VERSION).
    Rollback {
        #[arg(long)]
        state: PathBuf,
        /// A version name such as v0003.
        #[arg(long)]
        to: Option<String>,
    },
}

pub fn adapters(a: AdaptersArgs) -> Result<()> {
    match a.cmd {
        AdaptersCmd::List { state } => {
            let all = publish::versions(&state);
            if all.is_empty() {
                println!(
                    "no adapter versions in {}",
                    publish::adapters_dir(&state).display()
                );
                return Ok(());
            }
            let cur = publish::current(&state);
            let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
            println!("  version  round  personal NLL  general NLL");
            for v in all {
                let m = publish::meta(&state, &v);
                println!(
                    "{} {v}  {:>5}  {:>12}  {:>11}",
                    if cur.as_ref() == Some(&v) { "*" } else { " " },
                    m.as_ref().map_or("-".into(), |m| m.round.to_string()),
                    f(m.as_ref().and_then(|m| m.personal_nll)),
                    f(m.as_ref().and_then(|m| m.general_nll)),
                );
            }
            Ok(())
        }
        AdaptersCmd::Rollback { state, to } => {
            let from = publish::current(&state);
            let v = publish::rollback(&state, to.as_deref())?;
            println!(
                "current: {} → {v} ({})",
                from.unwrap_or_else(|| "none".into()),
                publish::adapters_dir(&state).join(&v).display()
            );
            Ok(())
        }
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "Asks the running daemon over STATE/status.sock; when none answers, \
reads the state files and says the daemon is not running.\n\n\
Example:\n  edge-sft status --state state --json"
)]
pub struct StatusArgs {
    /// The daemon's state folder.
    #[arg(long)]
    pub state: PathBuf,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn show_status(a: StatusArgs) -> Result<()> {
    if !a.state.is_dir() {
        return Err(Error::Usage(format!(
            "{}: no such state folder",
            a.state.display()
        )));
    }
    let s = match status::query(&a.state) {
        Ok(s) => s,
        Err(_) => status::from_files(&a.state)?,
    };
    if a.json {
        println!("{}", serde_json::to_string(&s).expect("serializes"));
        return Ok(());
    }
    println!(
        "state: {}{}",
        s.state,
        if s.pid > 0 {
            format!(" (pid {})", s.pid)
        } else {
            String::new()
        }
    );
    println!(
        "queue: {} new pairs ({} stored, {} quarantined)",
        s.queue, s.stored, s.quarantined
    );
    if let Some((step, total)) = s.step {
        println!("training: step {step}/{total}");
    }
    println!(
        "current adapter: {}",
        s.current_version.as_deref().unwrap_or("none (base model)")
    );
    println!("rounds: {}", s.rounds);
    if let Some(r) = &s.last_run {
        println!(
            "last run: round {}, {} steps in {:.0}s: {}",
            r.round, r.steps, r.seconds, r.outcome
        );
    }
    if let Some(d) = &s.last_decision {
        println!(
            "last decision: round {} {}: {}",
            d.round,
            if d.promoted { "promoted" } else { "rejected" },
            d.reason
        );
    }
    println!("next trigger: {}", s.next_trigger);
    Ok(())
}
