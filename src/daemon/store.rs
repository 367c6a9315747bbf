//! The daemon's own JSONL files in STATE: the store (`store.jsonl`, one [`Stored`] pair a line)
//! and the quarantine (`quarantine.jsonl`, one [`Quarantined`] line each), how the store is
//! read back, and how their ids are recovered at start-up after a crash.

use super::log;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STORE_FILE: &str = "store.jsonl";
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";

/// One stored pair: its id, where it came from, and the record as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub id: String,
    pub file: PathBuf,
    pub line: u64,
    pub record: serde_json::Value,
}

/// One quarantined line: where, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quarantined {
    pub id: String,
    pub file: PathBuf,
    pub line: u64,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
    pub unix_time: u64,
}

/// Read the ids of a JSONL file written by the daemon, first cutting a partial last line (a
/// crash mid-append) so the next append starts on a fresh line.
pub(super) fn load_ids(path: &Path) -> Result<Vec<String>> {
    let (bytes, cut) = crate::format::append_log::read_whole_lines(path)?;
    if cut > 0 {
        log(&format!(
            "{}: cut a partial last line ({cut} bytes) left by a crash",
            path.display()
        ));
    }
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    let mut ids = Vec::new();
    for (i, l) in bytes.split(|&b| b == b'\n').enumerate() {
        if l.is_empty() {
            continue;
        }
        let r: IdOnly = serde_json::from_slice(l)
            .map_err(|e| Error::data(path, i + 1, format!("damaged daemon file: {e}")))?;
        ids.push(r.id);
    }
    Ok(ids)
}

/// All stored pairs, in store order.
pub fn read_store(state_dir: &Path) -> Result<Vec<Stored>> {
    let p = state_dir.join(STORE_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(l)
                .map_err(|e| Error::data(&p, i + 1, format!("damaged store line: {e}")))?,
        );
    }
    Ok(out)
}
