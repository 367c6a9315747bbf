//! One run per output folder: `OUT/.edge-sft.lock`, held with an exclusive advisory lock
//! (`flock`) for the whole run. The kernel drops the lock when the process ends however it
//! ends, so a run killed with SIGKILL or by a dead battery leaves no stale lock behind; the
//! file's contents (the holder's pid) only serve the error message.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".edge-sft.lock";

/// Held while a run writes into its folder; released on drop (or process exit).
#[derive(Debug)]
pub struct OutLock {
    _file: File,
    pub path: PathBuf,
}

impl OutLock {
    /// Take the folder's lock, or fail at once naming the process that holds it.
    pub fn acquire(out: &Path) -> Result<OutLock> {
        let path = out.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(Error::Usage(format!(
                    "{} is in use by {who} (another tune writing the same --out); wait for it, \
                     stop it, or choose another --out",
                    out.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        // Ours now: record who holds it.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(OutLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let dir = std::env::temp_dir().join(format!("edge-sft-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = OutLock::acquire(&dir).unwrap();
        let err = OutLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("is in use by process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        // A lock file left behind (as by a killed run) does not block: only a live lock does.
        assert!(dir.join(LOCK_FILE).exists());
        let again = OutLock::acquire(&dir).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
