//! The inbox: append-only JSONL files written by other programs, read line by line into the
//! daemon's store (`STATE/store.jsonl`) or its quarantine (`STATE/quarantine.jsonl`).
//!
//! Each file is tracked by (device, inode, gen) and a byte offset that always sits just after a
//! '\n', so only complete lines are consumed. A line's id is `dev:ino:gen:offset`. Lines are
//! appended (and fsynced) to the store or quarantine first, and only then does the offset in
//! `state.json` advance (atomically); appends skip ids already present, so a crash between the
//! two re-reads the same lines and stores nothing twice. Rotation (rename + new file) keeps the
//! inode, so the renamed file is read to its end; truncation (size below the offset) or a
//! replaced file (first bytes differ) starts that file again from 0 under a new `gen`.

use super::log;
use super::state::{fnv1a, open_append, unix_now, DaemonState, FileEntry};
use crate::data::parse_record;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

pub const STORE_FILE: &str = "store.jsonl";
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";
/// Bytes of a file's head remembered to recognise it.
const HEAD: u64 = 64;
/// Commit (store, then state) after this many pending bytes, bounding memory on a backlog.
const BATCH_BYTES: usize = 4 << 20;

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

/// What one scan found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    pub stored: usize,
    pub quarantined: usize,
}

pub struct Inbox {
    pub dir: PathBuf,
    state_dir: PathBuf,
    max_line: usize,
    /// Ids in the store and in the quarantine.
    stored_ids: HashSet<String>,
    quarantined_ids: HashSet<String>,
    /// Lines in the store.
    pub store_len: u64,
}

/// Read the ids of a JSONL file written by the daemon, first cutting a partial last line (a
/// crash mid-append) so the next append starts on a fresh line.
fn load_ids(path: &Path) -> Result<Vec<String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        log(&format!(
            "{}: cutting a partial last line ({} bytes) left by a crash",
            path.display(),
            bytes.len() - complete
        ));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.set_len(complete as u64).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))?;
    }
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    let mut ids = Vec::new();
    for (i, l) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
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

/// A line read from an inbox file (without its '\n').
enum Line {
    Text(Vec<u8>),
    /// Longer than the cap: only its length was counted.
    TooLong(u64),
}

impl Inbox {
    pub fn open(dir: &Path, state_dir: &Path, max_line: usize) -> Result<Inbox> {
        let stored = load_ids(&state_dir.join(STORE_FILE))?;
        let quarantined = load_ids(&state_dir.join(QUARANTINE_FILE))?;
        Ok(Inbox {
            dir: dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            max_line,
            store_len: stored.len() as u64,
            stored_ids: stored.into_iter().collect(),
            quarantined_ids: quarantined.into_iter().collect(),
        })
    }

    pub fn quarantined(&self) -> usize {
        self.quarantined_ids.len()
    }

    /// Read every inbox file's new complete lines.
    pub fn scan(&mut self, st: &mut DaemonState) -> Result<ScanReport> {
        let mut rep = ScanReport::default();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rep),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut seen = HashSet::new();
        for path in files {
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) => {
                    log(&format!("{}: skipped ({e})", path.display()));
                    continue;
                }
            };
            seen.insert((meta.dev(), meta.ino()));
            match self.read_file(st, &path, meta.dev(), meta.ino(), meta.len()) {
                Ok(r) => {
                    rep.stored += r.stored;
                    rep.quarantined += r.quarantined;
                }
                // A file that vanishes mid-read is skipped; its lines were committed up to the
                // last batch, and a renamed file is found again under its new name.
                Err(Error::Io { path: p, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    log(&format!("{}: vanished, skipped", p.display()));
                }
                Err(e) => return Err(e),
            }
        }
        let before = st.files.len();
        st.files.retain(|f| seen.contains(&(f.dev, f.ino)));
        if st.files.len() != before {
            st.save(&self.state_dir)?;
        }
        Ok(rep)
    }

    fn reset(st: &mut DaemonState, i: usize) {
        let gen = st.next_gen;
        st.next_gen += 1;
        let f = &mut st.files[i];
        f.gen = gen;
        f.offset = 0;
        f.line = 0;
        f.head_len = 0;
        f.head_hash = 0;
    }

    fn read_file(
        &mut self,
        st: &mut DaemonState,
        path: &Path,
        dev: u64,
        ino: u64,
        len: u64,
    ) -> Result<ScanReport> {
        let idx = match st.files.iter().position(|f| f.dev == dev && f.ino == ino) {
            Some(i) => i,
            None => {
                // Record the new file (and its gen) before reading it, so the ids its lines
                // get are the same after a crash.
                st.files.push(FileEntry {
                    dev,
                    ino,
                    gen: st.next_gen,
                    offset: 0,
                    line: 0,
                    path: path.to_path_buf(),
                    head_len: 0,
                    head_hash: 0,
                });
                st.next_gen += 1;
                st.save(&self.state_dir)?;
                st.files.len() - 1
            }
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let e = &st.files[idx];
        let mut restart = None;
        if len < e.offset {
            restart = Some(format!(
                "truncated to {len} bytes below the {} already read",
                e.offset
            ));
        } else if e.head_len > 0 {
            let mut head = vec![0u8; e.head_len as usize];
            file.read_exact_at(&mut head, 0)
                .map_err(|err| Error::io(path, err))?;
            if fnv1a(&head) != e.head_hash {
                restart = Some("replaced (its first bytes changed)".to_string());
            }
        }
        if let Some(why) = restart {
            log(&format!(
                "{}: {why}; reading it again from the start",
                path.display()
            ));
            Self::reset(st, idx);
            st.save(&self.state_dir)?;
        }
        st.files[idx].path = path.to_path_buf();
        if len == st.files[idx].offset {
            return Ok(ScanReport::default());
        }
        self.consume(st, idx, file, path)
    }

    /// Read complete lines from the entry's offset to the end of the file, committing in
    /// batches.
    fn consume(
        &mut self,
        st: &mut DaemonState,
        idx: usize,
        mut file: File,
        path: &Path,
    ) -> Result<ScanReport> {
        let mut rep = ScanReport::default();
        let start = st.files[idx].offset;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(path, e))?;
        let mut buf = vec![0u8; 64 << 10];
        let mut pos = start; // file offset of buf[0] of the next read
        let mut line_start = start;
        let mut cur: Vec<u8> = Vec::new();
        let mut cur_len: u64 = 0;
        let mut pending: Vec<(u64, Line)> = Vec::new(); // (offset, line)
        let mut pending_bytes = 0usize;
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            let mut s = 0;
            while s < n {
                let nl = buf[s..n].iter().position(|&b| b == b'\n');
                let end = nl.map_or(n, |i| s + i);
                let piece = &buf[s..end];
                cur_len += piece.len() as u64;
                if cur_len <= self.max_line as u64 {
                    cur.extend_from_slice(piece);
                } else {
                    cur = Vec::new();
                }
                if nl.is_none() {
                    break;
                }
                let line = if cur_len <= self.max_line as u64 {
                    pending_bytes += cur.len();
                    Line::Text(std::mem::take(&mut cur))
                } else {
                    Line::TooLong(cur_len)
                };
                pending.push((line_start, line));
                line_start = pos + end as u64 + 1;
                cur_len = 0;
                s = end + 1;
            }
            pos += n as u64;
            if pending_bytes >= BATCH_BYTES {
                let r = self.commit(st, idx, path, std::mem::take(&mut pending), line_start)?;
                rep.stored += r.stored;
                rep.quarantined += r.quarantined;
                pending_bytes = 0;
            }
        }
        if !pending.is_empty() {
            let r = self.commit(st, idx, path, pending, line_start)?;
            rep.stored += r.stored;
            rep.quarantined += r.quarantined;
        }
        Ok(rep)
    }

    /// Append the lines to the store or the quarantine (skipping ids already there), fsync,
    /// then advance the file's offset to `end` in the state file.
    fn commit(
        &mut self,
        st: &mut DaemonState,
        idx: usize,
        path: &Path,
        lines: Vec<(u64, Line)>,
        end: u64,
    ) -> Result<ScanReport> {
        let mut rep = ScanReport::default();
        let e = st.files[idx].clone();
        let mut store_out = Vec::new();
        let mut quar_out = Vec::new();
        let mut lineno = e.line;
        for (off, line) in &lines {
            lineno += 1;
            let id = format!("{}:{}:{}:{off}", e.dev, e.ino, e.gen);
            let (bytes, verdict): (u64, std::result::Result<serde_json::Value, String>) = match line
            {
                Line::TooLong(n) => (
                    *n,
                    Err(format!(
                        "line of {n} bytes is over max_line_bytes {}",
                        self.max_line
                    )),
                ),
                Line::Text(b) => (b.len() as u64, judge(b)),
            };
            match verdict {
                Ok(serde_json::Value::Null) => {} // blank line
                Ok(record) => {
                    if self.stored_ids.insert(id.clone()) {
                        let s = Stored {
                            id,
                            file: path.to_path_buf(),
                            line: lineno,
                            record,
                        };
                        store_out.extend(serde_json::to_vec(&s).expect("serializes"));
                        store_out.push(b'\n');
                        rep.stored += 1;
                    }
                }
                Err(reason) => {
                    if self.quarantined_ids.insert(id.clone()) {
                        log(&format!(
                            "{}:{lineno}: quarantined: {reason}",
                            path.display()
                        ));
                        let q = Quarantined {
                            id,
                            file: path.to_path_buf(),
                            line: lineno,
                            offset: *off,
                            bytes,
                            reason,
                            unix_time: unix_now(),
                        };
                        quar_out.extend(serde_json::to_vec(&q).expect("serializes"));
                        quar_out.push(b'\n');
                        rep.quarantined += 1;
                    }
                }
            }
        }
        for (name, out) in [(STORE_FILE, &store_out), (QUARANTINE_FILE, &quar_out)] {
            if out.is_empty() {
                continue;
            }
            let p = self.state_dir.join(name);
            let mut f = open_append(&p)?;
            f.write_all(out).map_err(|e| Error::io(&p, e))?;
            f.sync_all().map_err(|e| Error::io(&p, e))?;
        }
        self.store_len += rep.stored as u64;
        let entry = &mut st.files[idx];
        entry.offset = end;
        entry.line = lineno;
        if entry.head_len < HEAD.min(end) {
            let n = HEAD.min(end);
            let mut head = vec![0u8; n as usize];
            File::open(path)
                .and_then(|f| f.read_exact_at(&mut head, 0))
                .map_err(|err| Error::io(path, err))?;
            entry.head_len = n;
            entry.head_hash = fnv1a(&head);
        }
        st.save(&self.state_dir)?;
        Ok(rep)
    }
}

/// A line's fate: Ok(record), Ok(Null) for a blank line, or Err(reason) to quarantine.
fn judge(bytes: &[u8]) -> std::result::Result<serde_json::Value, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    parse_record(text)?;
    serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
}
