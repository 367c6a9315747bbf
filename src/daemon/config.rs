//! `edge-sft.toml`: what the daemon trains, where it reads and writes, when it may train and how
//! much. Every key has a default (see `Config::default` and `examples/edge-sft.toml`); relative
//! paths are taken from the folder holding the config file.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The base model: a .gguf file or a Hugging Face folder.
    pub model: PathBuf,
    /// Folder of append-only JSONL files written by other programs.
    pub inbox: PathBuf,
    /// The daemon's own folder: state, store, quarantine, adapters, status socket.
    pub state: PathBuf,
    /// A fixed general JSONL set scored by the gate (empty: only the personal gate applies).
    pub general_set: PathBuf,
    /// General JSONL pairs (other than `general_set`'s) mixed into every round's training, so
    /// the adapter keeps seeing ordinary requests beside the person's (empty: none).
    pub general_replay: PathBuf,
    /// Most `general_replay` pairs sampled into a round.
    pub general_replay_size: usize,
    /// Fraction of each round's new pairs held back (never trained on) for the personal gate.
    pub heldout_fraction: f64,
    /// New pairs needed before a round starts.
    pub min_new_pairs: usize,
    /// Most older pairs replayed beside the new ones in a round.
    pub replay_size: usize,
    /// Most held-back pairs in the personal gate set (the most recent ones).
    pub personal_gate_size: usize,
    /// Optimizer steps per round.
    pub step_budget: usize,
    /// Seconds of training per round (0: no limit); the round ends early and is gated.
    pub time_budget_s: u64,
    /// Checkpoint every N steps of a round.
    pub checkpoint_every: usize,
    /// Highest relative rise of the general NLL a promoted adapter may cause (0.02 = 2%).
    pub gate_margin: f64,
    /// A round refused because the general NLL rose past `gate_margin` is trained again from
    /// the same adapter at half the learning rate, up to this many times.
    pub backoff_tries: usize,
    /// Adapter versions kept in STATE/adapters.
    pub keep_versions: usize,
    /// Seconds between inbox scans.
    pub poll_s: f64,
    /// Longest inbox line in bytes; longer lines are quarantined unread.
    pub max_line_bytes: usize,
    /// Longest record in tokens (prompts cut from the left).
    pub max_seq: usize,
    /// Learning rate, LoRA rank and α of a first adapter (later rounds continue the current
    /// adapter with its own rank and α).
    pub lr: f32,
    pub rank: usize,
    pub alpha: f32,
    /// Seed of the replay sample and of the LoRA initialisation.
    pub seed: u64,
    /// Worker threads (0: physical cores).
    pub threads: usize,
    /// CPU priority of the daemon and every thread it starts (0-19; 19 yields to everything).
    pub nice: i32,
    /// Peak memory a round may need, in MiB (0: no budget). A round over it trains with
    /// gradient checkpointing if that fits, else waits (the status says by how much).
    pub max_memory_mb: u64,
    pub triggers: Triggers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Triggers {
    /// Train only on mains power (or on a machine with no battery).
    pub require_ac: bool,
    /// Start a round only while the 1-minute load average is below this (0: no check).
    pub max_load: f64,
    /// Train only while every thermal zone is below this, in °C (0: no check).
    pub max_temp_c: f64,
    /// Local-time window "HH:MM-HH:MM" (may wrap midnight); "" trains at any hour.
    pub window: String,
    /// Roots read for the conditions, so tests (and odd devices) can point elsewhere.
    pub power_supply_root: PathBuf,
    pub thermal_root: PathBuf,
    pub loadavg_path: PathBuf,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            require_ac: true,
            max_load: 1.0,
            max_temp_c: 70.0,
            window: String::new(),
            power_supply_root: "/sys/class/power_supply".into(),
            thermal_root: "/sys/class/thermal".into(),
            loadavg_path: "/proc/loadavg".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: PathBuf::new(),
            inbox: "inbox".into(),
            state: "state".into(),
            general_set: PathBuf::new(),
            general_replay: PathBuf::new(),
            general_replay_size: 16,
            heldout_fraction: 0.1,
            min_new_pairs: 20,
            replay_size: 64,
            personal_gate_size: 64,
            step_budget: 30,
            time_budget_s: 1800,
            checkpoint_every: 10,
            gate_margin: 0.02,
            backoff_tries: 2,
            keep_versions: 5,
            poll_s: 30.0,
            max_line_bytes: 1 << 20,
            max_seq: 1024,
            lr: 2e-4,
            rank: 8,
            alpha: 16.0,
            seed: 42,
            threads: 0,
            nice: 10,
            max_memory_mb: 0,
            triggers: Triggers::default(),
        }
    }
}

impl Config {
    /// Read and check a config file; relative paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut c: Config =
            toml::from_str(&text).map_err(|e| Error::format(path, format!("{e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        c.resolve(base);
        c.validate().map_err(|m| Error::format(path, m))?;
        Ok(c)
    }

    /// Make relative paths relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        let t = &mut self.triggers;
        for p in [
            &mut self.model,
            &mut self.inbox,
            &mut self.state,
            &mut self.general_set,
            &mut self.general_replay,
            &mut t.power_supply_root,
            &mut t.thermal_root,
            &mut t.loadavg_path,
        ] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model.as_os_str().is_empty() {
            return Err("`model` is required (a .gguf file or a Hugging Face folder)".into());
        }
        if !(self.heldout_fraction > 0.0 && self.heldout_fraction < 1.0) {
            return Err(
                "`heldout_fraction` must be in (0, 1): the gate needs held-back pairs".into(),
            );
        }
        if self.min_new_pairs < 2 {
            return Err(
                "`min_new_pairs` must be at least 2 (one to train, one to hold back)".into(),
            );
        }
        if self.step_budget == 0 || self.checkpoint_every == 0 {
            return Err("`step_budget` and `checkpoint_every` must be at least 1".into());
        }
        if self.keep_versions == 0 {
            return Err("`keep_versions` must be at least 1".into());
        }
        if self.gate_margin.is_nan() || self.gate_margin < 0.0 {
            return Err("`gate_margin` must be 0 or more".into());
        }
        if self.max_line_bytes < 16 {
            return Err("`max_line_bytes` must be at least 16".into());
        }
        if !self.poll_s.is_finite() || self.poll_s < 0.0 {
            return Err("`poll_s` must be 0 or more".into());
        }
        if !self.general_replay.as_os_str().is_empty() && self.general_replay == self.general_set {
            return Err(
                "`general_replay` must not be `general_set`: the gate would score pairs the \
                 adapter was trained on"
                    .into(),
            );
        }
        if !(-20..=19).contains(&self.nice) {
            return Err("`nice` must be between -20 and 19".into());
        }
        if self.personal_gate_size == 0 {
            return Err("`personal_gate_size` must be at least 1".into());
        }
        super::triggers::parse_window(&self.triggers.window)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_keys_and_paths_resolve() {
        let mut c: Config =
            toml::from_str("model = \"m.gguf\"\n[triggers]\nmax_load = 2.5\n").unwrap();
        c.resolve(Path::new("/etc/x"));
        assert_eq!(c.model, Path::new("/etc/x/m.gguf"));
        assert_eq!(c.inbox, Path::new("/etc/x/inbox"));
        assert_eq!(c.triggers.max_load, 2.5);
        assert!(c.triggers.require_ac);
        assert_eq!(c.min_new_pairs, 20);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("modle = \"x\"").is_err());
        let c: Config = toml::from_str("model = \"m\"\nheldout_fraction = 0.0").unwrap();
        assert!(c.validate().unwrap_err().contains("heldout_fraction"));
        let c: Config =
            toml::from_str("model = \"m\"\n[triggers]\nwindow = \"25:00-01:00\"").unwrap();
        assert!(c.validate().is_err());
    }
}
