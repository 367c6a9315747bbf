//! The daemon's crash-safe state file (`STATE/state.json`) and the file helpers that keep it
//! crash-safe: atomic replace (temp file, fsync, rename, fsync of the folder) and private
//! (0700/0600) creation.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";

/// One inbox file the daemon has read from: its identity (device, inode, and `gen`, a number
/// the daemon gives each incarnation it sees, so a truncated or replaced file's lines get new
/// ids) and how far it has been consumed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub dev: u64,
    pub ino: u64,
    pub gen: u64,
    /// Bytes consumed: always just after a '\n'.
    pub offset: u64,
    /// Lines consumed (the next line's number is `line + 1`).
    pub line: u64,
    /// The name it had when last seen (messages only).
    pub path: PathBuf,
    /// FNV-1a of the file's first `head_len` bytes: a replaced file with a recycled inode does
    /// not match.
    pub head_len: u64,
    pub head_hash: u64,
}

/// A round in progress: which stored pairs it trains on and holds back, from which adapter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub round: u64,
    /// The store lines [from, to) are this round's new pairs.
    pub from: u64,
    pub to: u64,
    pub train_ids: Vec<String>,
    pub heldout_ids: Vec<String>,
    pub replay_ids: Vec<String>,
    /// The published version folder the round starts from (None: a fresh adapter).
    pub init_adapter: Option<PathBuf>,
    pub seed: u64,
    /// Training finished (fully or at the time budget): the round only needs its gate.
    pub trained: bool,
    /// Retries after the gate refused a candidate for its general NLL (`backoff_tries`); the
    /// learning rate of the attempt is `lr` · 0.5^attempt.
    #[serde(default)]
    pub attempt: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastRun {
    pub round: u64,
    pub steps: usize,
    pub seconds: f64,
    pub finished_unix: u64,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DaemonState {
    pub format: u32,
    pub next_gen: u64,
    pub files: Vec<FileEntry>,
    /// Store lines before this index have been used by a finished round (trained or held back).
    pub used_upto: u64,
    /// Ids held back by earlier rounds: never trained on; the latest form the personal gate set.
    pub heldout: Vec<String>,
    /// Rounds finished.
    pub rounds: u64,
    pub plan: Option<Plan>,
    pub last_run: Option<LastRun>,
}

impl DaemonState {
    pub fn load(dir: &Path) -> Result<DaemonState> {
        let p = dir.join(STATE_FILE);
        match std::fs::read_to_string(&p) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| {
                Error::format(
                    &p,
                    format!("unreadable daemon state ({e}); move it aside to start over"),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DaemonState {
                format: 1,
                ..Default::default()
            }),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("state serializes");
        write_atomic(&dir.join(STATE_FILE), &text)
    }
}

/// Create a folder (and parents) readable by the owner only.
pub fn private_dir(p: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| Error::io(p, e))
}

/// Append whole lines (`lines` ends with '\n') to one of the daemon's logs, created 0600
/// (see `format::append_log`: one write, a torn tail cut off first, then fsync).
pub fn append_lines(p: &Path, lines: &[u8]) -> Result<()> {
    crate::format::append_log::append_lines(p, lines, 0o600)
}

/// fsync a folder, so a rename or a new file in it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Replace `path` with `bytes` so that a reader (or a crash) sees the old or the new contents,
/// never a mix: write `path.tmp`, fsync, rename over `path`, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
