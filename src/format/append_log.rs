//! Append-only JSON-lines logs (a run's metrics.jsonl, the daemon's trained, decisions, store
//! and quarantine files). A kill can cut a write short and leave a last line without its
//! newline; the next line appended would run into it and both would be lost to every reader.
//! So a log is opened with such a torn tail cut off, and lines are appended in one write each.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Open `p` for appending (created with `mode`), a torn last line cut off first.
pub fn open_log(p: &Path, mode: u32) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(mode)
        .open(p)
        .map_err(|e| Error::io(p, e))?;
    let len = f.metadata().map_err(|e| Error::io(p, e))?.len();
    let mut last = [0u8; 1];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1)
            .map_err(|e| Error::io(p, e))?;
    }
    if len > 0 && last[0] != b'\n' {
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        cut_torn_tail(p, &f, &bytes)?;
    }
    Ok(f)
}

/// The whole lines of the log at `p` (empty when there is no file), a torn last line cut off
/// the file first; the second value is how many bytes were cut.
pub fn read_whole_lines(p: &Path) -> Result<(Vec<u8>, usize)> {
    let mut bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(Error::io(p, e)),
    };
    let mut cut = 0;
    if bytes.last().is_some_and(|&b| b != b'\n') {
        let f = OpenOptions::new()
            .write(true)
            .open(p)
            .map_err(|e| Error::io(p, e))?;
        cut = cut_torn_tail(p, &f, &bytes)?;
        bytes.truncate(bytes.len() - cut);
    }
    Ok((bytes, cut))
}

/// Truncate the file `f` (at `p`, holding `bytes`) after its last newline, durably; returns the
/// number of bytes cut.
fn cut_torn_tail(p: &Path, f: &File, bytes: &[u8]) -> Result<usize> {
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    f.set_len(whole as u64).map_err(|e| Error::io(p, e))?;
    f.sync_all().map_err(|e| Error::io(p, e))?;
    Ok(bytes.len() - whole)
}

/// Append whole lines (`lines` ends with '\n') to the log at `p` in one write, then fsync.
pub fn append_lines(p: &Path, lines: &[u8], mode: u32) -> Result<()> {
    debug_assert!(lines.ends_with(b"\n"));
    let mut f = open_log(p, mode)?;
    f.write_all(lines).map_err(|e| Error::io(p, e))?;
    f.sync_all().map_err(|e| Error::io(p, e))
}

#[cfg(test)]
mod tests {
    use super::{append_lines, read_whole_lines};

    /// A log whose last write a kill cut short gets the partial line cut off before the next
    /// append, so every line stays whole (the daemon soak test once read a round's line that
    /// had run into a torn one).
    #[test]
    fn append_lines_cuts_a_torn_tail_first() {
        let dir = std::env::temp_dir().join(format!("edge-sft-append-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("log.jsonl");
        let _ = std::fs::remove_file(&p);
        append_lines(&p, b"{\"a\":1}\n", 0o600).unwrap();
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":[1,2").unwrap(); // torn by a kill
        append_lines(&p, b"{\"c\":3}\n{\"d\":4}\n", 0o600).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"{\"a\":1}\n{\"c\":3}\n{\"d\":4}\n"
        );
        std::fs::write(&p, b"{\"b\":[1").unwrap(); // nothing whole at all
        append_lines(&p, b"{\"e\":5}\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"e\":5}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Reading a log cuts a torn tail off the file too, so the next append starts on a fresh
    /// line; a missing log reads as empty and a whole one is left as it is.
    #[test]
    fn read_whole_lines_cuts_a_torn_tail_off_the_file() {
        let dir = std::env::temp_dir().join(format!("edge-sft-readlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("log.jsonl");
        let _ = std::fs::remove_file(&p);
        assert_eq!(read_whole_lines(&p).unwrap(), (Vec::new(), 0));
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":[1,2").unwrap();
        assert_eq!(read_whole_lines(&p).unwrap(), (b"{\"a\":1}\n".to_vec(), 9));
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n");
        assert_eq!(read_whole_lines(&p).unwrap(), (b"{\"a\":1}\n".to_vec(), 0));
        std::fs::write(&p, b"{\"b\"").unwrap();
        assert_eq!(read_whole_lines(&p).unwrap(), (Vec::new(), 4));
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
