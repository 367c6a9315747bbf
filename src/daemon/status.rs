//! The status socket `STATE/status.sock` (mode 0600, in a 0700 folder): every connection gets
//! one JSON object and the socket closes. `edge-sft status` reads it, or the state files when
//! the daemon is not running.

use super::gate::{last_decision, Decision};
use super::publish;
use super::state::{DaemonState, LastRun};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const SOCKET: &str = "status.sock";

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Status {
    /// "starting", "idle", "waiting", "training", "gating", "stopping", or "not running".
    pub state: String,
    pub pid: u32,
    /// New pairs stored and not yet used by a round.
    pub queue: u64,
    pub stored: u64,
    pub quarantined: u64,
    pub rounds: u64,
    /// Step of the running round and its budget.
    pub step: Option<(usize, usize)>,
    pub current_version: Option<String>,
    pub last_run: Option<LastRun>,
    pub last_decision: Option<Decision>,
    /// What the next round waits for.
    pub next_trigger: String,
}

pub type Shared = Arc<Mutex<Status>>;

/// Bind the socket (replacing a stale one), make it 0600 and answer on a thread.
pub fn serve(state_dir: &Path, shared: Shared) -> Result<PathBuf> {
    let path = state_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(&path, e))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let body = {
                let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                serde_json::to_vec(&*s).expect("serializes")
            };
            let _ = c.write_all(&body);
        }
    });
    Ok(path)
}

/// Ask a running daemon; Err when none answers.
pub fn query(state_dir: &Path) -> std::io::Result<Status> {
    let mut c = UnixStream::connect(state_dir.join(SOCKET))?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    serde_json::from_str(&s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The status from the files alone (no daemon answering).
pub fn from_files(state_dir: &Path) -> Result<Status> {
    let st = DaemonState::load(state_dir)?;
    let stored = super::inbox::read_store(state_dir)?.len() as u64;
    let quarantined = std::fs::read_to_string(state_dir.join(super::inbox::QUARANTINE_FILE))
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0);
    Ok(Status {
        state: "not running".into(),
        pid: 0,
        queue: stored.saturating_sub(st.used_upto),
        stored,
        quarantined,
        rounds: st.rounds,
        step: None,
        current_version: publish::current(state_dir),
        last_run: st.last_run,
        last_decision: last_decision(state_dir),
        next_trigger: if st.plan.is_some() {
            "a round is in progress; it resumes when the daemon starts".into()
        } else {
            "the daemon is not running".into()
        },
    })
}
