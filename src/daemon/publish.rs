//! Publishing: each promoted adapter becomes a version folder `STATE/adapters/vNNNN`, written
//! completely (files fsynced, folder renamed into place from a temporary name) before the
//! `STATE/adapters/current` symlink is switched to it by renaming a new link over the old one.
//! An app that opens `current/...` sees the old adapter or the new one, never half of one. The
//! newest `keep` versions (and always the current one) are kept.

use super::state::{private_dir, sync_dir, write_atomic};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CURRENT: &str = "current";
/// The adapter files copied from a run folder into a version.
pub const FILES: [&str; 3] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter.gguf",
];

/// `vNNNN/version.json`: where the version came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionMeta {
    pub version: String,
    pub round: u64,
    pub unix_time: u64,
    pub personal_nll: Option<f64>,
    pub general_nll: Option<f64>,
}

pub fn adapters_dir(state: &Path) -> PathBuf {
    state.join("adapters")
}

fn number(name: &str) -> Option<u32> {
    name.strip_prefix('v')
        .filter(|s| s.len() >= 4 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// The version folders, oldest first.
pub fn versions(state: &Path) -> Vec<String> {
    let mut v: Vec<(u32, String)> = std::fs::read_dir(adapters_dir(state))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    number(&n).map(|k| (k, n))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// The version `current` points to.
pub fn current(state: &Path) -> Option<String> {
    let t = std::fs::read_link(adapters_dir(state).join(CURRENT)).ok()?;
    Some(t.file_name()?.to_string_lossy().to_string())
}

pub fn meta(state: &Path, version: &str) -> Option<VersionMeta> {
    let p = adapters_dir(state).join(version).join("version.json");
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Point `current` at `version`: a new symlink under a temporary name, renamed over `current`.
pub fn switch(state: &Path, version: &str) -> Result<()> {
    let dir = adapters_dir(state);
    if !dir.join(version).join(FILES[1]).is_file() {
        return Err(Error::Usage(format!(
            "{}: no such adapter version",
            dir.join(version).display()
        )));
    }
    let tmp = dir.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(CURRENT)).map_err(|e| Error::io(dir.join(CURRENT), e))?;
    sync_dir(&dir)
}

/// The version already published for a round, if any (a restart after a crash mid-publish).
pub fn published_for(state: &Path, round: u64) -> Option<String> {
    versions(state)
        .into_iter()
        .find(|v| meta(state, v).is_some_and(|m| m.round == round))
}

/// The name a round's version gets: the one already published for it, or the next number.
pub fn name_for(state: &Path, round: u64) -> String {
    if let Some(v) = published_for(state, round) {
        return v;
    }
    let next = versions(state)
        .last()
        .and_then(|v| number(v))
        .map_or(1, |n| n + 1);
    format!("v{next:04}")
}

/// Copy the adapter in `run` into version `name` (see `name_for`), switch `current` to it, and
/// drop old versions beyond `keep`. Publishing a round again (after a crash) only switches.
pub fn publish(state: &Path, run: &Path, name: &str, m: &VersionMeta, keep: usize) -> Result<()> {
    let dir = adapters_dir(state);
    private_dir(&dir)?;
    if meta(state, name).is_some_and(|x| x.round == m.round) {
        switch(state, name)?;
        return prune(state, keep);
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    private_dir(&tmp)?;
    for f in FILES {
        let bytes = std::fs::read(run.join(f)).map_err(|e| Error::io(run.join(f), e))?;
        write_atomic(&tmp.join(f), &bytes)?;
    }
    write_atomic(
        &tmp.join("version.json"),
        &serde_json::to_vec_pretty(m).expect("serializes"),
    )?;
    let fin = dir.join(name);
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    sync_dir(&dir)?;
    switch(state, name)?;
    prune(state, keep)
}

/// Remove the oldest versions beyond `keep`, never the current one.
pub fn prune(state: &Path, keep: usize) -> Result<()> {
    let all = versions(state);
    let cur = current(state);
    let excess = all.len().saturating_sub(keep);
    for v in all.iter().take(excess) {
        if Some(v) == cur.as_ref() {
            continue;
        }
        let p = adapters_dir(state).join(v);
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// Switch `current` to `to`, or to the version before the current one.
pub fn rollback(state: &Path, to: Option<&str>) -> Result<String> {
    let all = versions(state);
    let target = match to {
        Some(v) => v.to_string(),
        None => {
            let cur = current(state).ok_or_else(|| {
                Error::Usage(format!(
                    "{}: no current adapter to roll back from",
                    adapters_dir(state).display()
                ))
            })?;
            let i = all.iter().position(|v| *v == cur).unwrap_or(all.len());
            if i == 0 {
                return Err(Error::Usage(format!(
                    "{cur} is the oldest version kept; nothing to roll back to"
                )));
            }
            all[i - 1].clone()
        }
    };
    switch(state, &target)?;
    Ok(target)
}
