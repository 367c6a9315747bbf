//! The personalization daemon: other programs append prompt→response pairs to JSONL files in an
//! inbox; when enough are new and the device is on charge, idle, cool and inside its time
//! window, the daemon trains the current adapter a little further on them (plus a replay
//! sample of older pairs), gates the candidate on held-back pairs and a general set, and
//! publishes it atomically if it is better. See docs/daemon.md.
//!
//! - `config`: the TOML config and its defaults
//! - `state`: the crash-safe state file and atomic-write helpers
//! - `inbox`: reading the inbox into the store and the quarantine
//! - `store`: the store and quarantine files (their records, reading back, ids after a crash)
//! - `triggers`: the device conditions
//! - `round`: one training round (plan, train, gate, publish, finish)
//! - `gate`: the promotion rule and decisions.jsonl
//! - `publish`: versioned adapters and the `current` link
//! - `status`: the status socket

pub mod config;
pub mod gate;
pub mod inbox;
pub mod limits;
pub mod publish;
pub mod round;
pub mod state;
pub mod status;
mod store;
pub mod triggers;

use crate::data::{load_jsonl, DataOptions};
use crate::error::{Error, Result};
use crate::loaded::LoadedModel;
use config::Config;
use round::{Ctx, RoundEnd};
use state::{private_dir, DaemonState};
use status::{Shared, Status};
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A line on stderr with a timestamp.
pub fn log(msg: &str) {
    eprintln!(
        "{} edge-sft daemon: {msg}",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
    );
}

/// One daemon per state folder: `STATE/daemon.lock`, flock-held while it runs.
fn lock_state(dir: &std::path::Path) -> Result<File> {
    let p = dir.join("daemon.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(TryLockError::WouldBlock) => Err(Error::Usage(format!(
            "{}: another edge-sft daemon is running on this state folder",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(Error::io(&p, e)),
    }
}

/// Run options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// One pass (scan the inbox, one round if due), then exit.
    pub once: bool,
}

fn set(status: &Shared, f: impl FnOnce(&mut Status)) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut s);
}

/// Run the daemon until SIGTERM/SIGINT (or one pass with `once`).
pub fn run(cfg: &Config, ro: &RunOptions) -> Result<()> {
    private_dir(&cfg.state)?;
    private_dir(&cfg.inbox)?;
    let _lock = lock_state(&cfg.state)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::Usage(format!("signal handler: {e}")))?;
    }
    let status: Shared = Arc::new(Mutex::new(Status {
        state: "starting".into(),
        pid: std::process::id(),
        ..Status::default()
    }));
    let sock = status::serve(&cfg.state, status.clone())?;
    let result = main_loop(cfg, ro, &status, stop);
    set(&status, |s| s.state = "stopping".into());
    let _ = std::fs::remove_file(&sock);
    result
}

fn main_loop(cfg: &Config, ro: &RunOptions, status: &Shared, stop: Arc<AtomicBool>) -> Result<()> {
    let lm = LoadedModel::open(&cfg.model)?;
    // The daemon always uses the model's template: one it cannot use is an error at start,
    // not a reason to quarantine every record.
    if let Some(why) = &lm.chat.refused {
        return Err(Error::Template(why.clone()));
    }
    // General pairs (the gate's set, the replayed ones): bad lines skipped, not fatal.
    let opts = DataOptions {
        max_seq: cfg.max_seq,
        skip_bad: true,
        ..DataOptions::default()
    };
    let load =
        |p: &std::path::Path| load_jsonl(p, &lm.tokenizer, &lm.chat, &opts).map(|d| d.examples);
    let general = if cfg.general_set.as_os_str().is_empty() {
        log("no general_set configured: the gate checks the personal held-back pairs only");
        None
    } else {
        Some(load(&cfg.general_set)?)
    };
    let general_replay = if cfg.general_replay.as_os_str().is_empty() {
        None
    } else {
        let ex = load(&cfg.general_replay)?;
        log(&format!(
            "{} general pairs from {}: {} mixed into each round",
            ex.len(),
            cfg.general_replay.display(),
            cfg.general_replay_size.min(ex.len())
        ));
        Some(ex)
    };
    let mut st = DaemonState::load(&cfg.state)?;
    let mut inbox = inbox::Inbox::open(&cfg.inbox, &cfg.state, cfg.max_line_bytes)?;
    set(status, |s| {
        s.rounds = st.rounds;
        s.last_run = st.last_run.clone();
        s.last_decision = gate::last_decision(&cfg.state);
        s.current_version = publish::current(&cfg.state);
    });
    log(&format!(
        "watching {} (state in {}); {} pairs stored, {} rounds done",
        cfg.inbox.display(),
        cfg.state.display(),
        inbox.store_len,
        st.rounds
    ));
    let ctx = Ctx {
        cfg,
        lm: &lm,
        general: general.as_deref(),
        general_replay: general_replay.as_deref(),
        general_base: std::cell::OnceCell::new(),
        status: status.clone(),
        stop: stop.clone(),
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            log("stopping (signal)");
            return Ok(());
        }
        if let Err(e) = inbox.scan(&mut st) {
            log(&format!("inbox scan failed: {e}; retrying next poll"));
        }
        let queue = inbox.store_len.saturating_sub(st.used_upto);
        set(status, |s| {
            s.queue = queue;
            s.stored = inbox.store_len;
            s.quarantined = inbox.quarantined() as u64;
            s.state = "idle".into();
        });
        let due = st.plan.is_some() || queue >= cfg.min_new_pairs as u64;
        let next = if !due {
            format!(
                "{} more new pairs (have {queue}, need {})",
                cfg.min_new_pairs as u64 - queue,
                cfg.min_new_pairs
            )
        } else if let Some(why) = triggers::blocked(&cfg.triggers, true) {
            set(status, |s| s.state = "waiting".into());
            format!("conditions: {why}")
        } else {
            String::new()
        };
        if next.is_empty() {
            set(status, |s| s.next_trigger = "now".into());
            let store = inbox::read_store(&cfg.state)?;
            match round::run(&ctx, &mut st, &store) {
                Ok(RoundEnd::Finished(d)) => set(status, |s| {
                    s.last_decision = Some(d);
                    s.rounds = st.rounds;
                    s.last_run = st.last_run.clone();
                    s.current_version = publish::current(&cfg.state);
                    s.step = None;
                }),
                Ok(RoundEnd::Paused(why)) => {
                    log(&format!("round paused, checkpoint saved: {why}"));
                    set(status, |s| {
                        s.next_trigger = format!("paused round resumes when {why} clears")
                    });
                }
                Ok(RoundEnd::Stopped) => {
                    log("stopping (signal); the round's checkpoint is saved");
                    return Ok(());
                }
                Err(e) if ro.once => return Err(e),
                Err(e) => log(&format!("round failed: {e}; retrying next poll")),
            }
            let queue = inbox.store_len.saturating_sub(st.used_upto);
            set(status, |s| {
                s.queue = queue;
                s.state = "idle".into();
            });
        } else {
            set(status, |s| s.next_trigger = next);
        }
        if ro.once {
            return Ok(());
        }
        let until = Instant::now() + Duration::from_secs_f64(cfg.poll_s);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
