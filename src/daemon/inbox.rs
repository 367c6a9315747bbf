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
//!
//! Writers rename files while a scan runs, so a scan never trusts a name for longer than one
//! `open`: each file is opened once and its identity (`fstat`), its head and its lines all come
//! from that one handle. A file's first bytes are recorded in the state before any of its lines
//! go to the store, so a file truncated and rewritten after a crash is recognised, not taken for
//! the file whose lines were stored. And an entry is forgotten only when a second listing of the
//! folder, taken after the scan, confirms its file is gone: a file renamed between the listing
//! and its `open` is missed by the first listing, and forgetting it would read it again under a
//! new `gen`, storing every line twice.

use super::log;
use super::state::{append_lines, fnv1a, unix_now, DaemonState, FileEntry};
use super::store::load_ids;
pub use super::store::{read_store, Quarantined, Stored, QUARANTINE_FILE, STORE_FILE};
use crate::data::parse_record;
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Bytes of a file's head remembered to recognise it.
const HEAD: u64 = 64;
/// Commit (store, then state) after this many pending bytes, bounding memory on a backlog.
const BATCH_BYTES: usize = 4 << 20;

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
        match self.list()? {
            Some(files) => self.scan_listed(st, files),
            None => Ok(ScanReport::default()),
        }
    }

    /// The inbox's files (hidden names skipped), sorted; None when the folder does not exist.
    fn list(&self) -> Result<Option<Vec<PathBuf>>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        files.sort();
        Ok(Some(files))
    }

    /// Read the listed files, then forget the entries of files that are gone. `files` may be
    /// stale by the time a file is opened: writers rename, create and truncate at will.
    fn scan_listed(&mut self, st: &mut DaemonState, files: Vec<PathBuf>) -> Result<ScanReport> {
        let mut rep = ScanReport::default();
        let mut seen = HashSet::new();
        for path in files {
            let (file, meta) = match open_regular(&path) {
                Ok(Some(fm)) => fm,
                Ok(None) => continue,
                Err(e) => {
                    log(&format!("{}: skipped ({e})", path.display()));
                    continue;
                }
            };
            seen.insert((meta.dev(), meta.ino()));
            match self.read_file(st, &path, &file, meta.dev(), meta.ino(), meta.len()) {
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
        if st.files.iter().all(|f| seen.contains(&(f.dev, f.ino))) {
            return Ok(rep);
        }
        // A tracked file was not found. It may have been renamed after the listing was taken
        // (its old name then opens another file, or none): list again, now that any such rename
        // is done, and forget only the files this listing does not find either.
        for path in self.list()?.unwrap_or_default() {
            if let Ok(m) = std::fs::metadata(&path) {
                if m.is_file() {
                    seen.insert((m.dev(), m.ino()));
                }
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
        file: &File,
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
        file: &File,
        path: &Path,
    ) -> Result<ScanReport> {
        let mut rep = ScanReport::default();
        let start = st.files[idx].offset;
        let mut file = file;
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
                let r = self.commit(
                    st,
                    idx,
                    file,
                    path,
                    std::mem::take(&mut pending),
                    line_start,
                )?;
                rep.stored += r.stored;
                rep.quarantined += r.quarantined;
                pending_bytes = 0;
            }
        }
        if !pending.is_empty() {
            let r = self.commit(st, idx, file, path, pending, line_start)?;
            rep.stored += r.stored;
            rep.quarantined += r.quarantined;
        }
        Ok(rep)
    }

    /// Append the lines to the store or the quarantine (skipping ids already there), fsync,
    /// then advance the file's offset to `end` in the state file.
    ///
    /// The file's head is recorded in the state *before* the append: were it recorded only
    /// with the offset, a crash between the two would leave lines of this `gen` in the store
    /// and a state that cannot recognise the file, so a copytruncate-style rewrite would be
    /// read under the same `gen` and its lines skipped as "already stored" where their offsets
    /// match. The head is read from the handle the lines came from, never by name: the name
    /// may point at a newer file by now.
    fn commit(
        &mut self,
        st: &mut DaemonState,
        idx: usize,
        file: &File,
        path: &Path,
        lines: Vec<(u64, Line)>,
        end: u64,
    ) -> Result<ScanReport> {
        let mut rep = ScanReport::default();
        if st.files[idx].head_len < HEAD.min(end) {
            let n = HEAD.min(end);
            let mut head = vec![0u8; n as usize];
            file.read_exact_at(&mut head, 0)
                .map_err(|err| Error::io(path, err))?;
            let entry = &mut st.files[idx];
            entry.head_len = n;
            entry.head_hash = fnv1a(&head);
            st.save(&self.state_dir)?;
        }
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
            append_lines(&self.state_dir.join(name), out)?;
        }
        self.store_len += rep.stored as u64;
        let entry = &mut st.files[idx];
        entry.offset = end;
        entry.line = lineno;
        st.save(&self.state_dir)?;
        Ok(rep)
    }
}

/// Open `path` if it is a regular file, returning the handle and the handle's own metadata
/// (`fstat`), so identity and contents come from the same file even if the name is reused.
/// None: not a regular file, or gone.
fn open_regular(path: &Path) -> Result<Option<(File, std::fs::Metadata)>> {
    // stat first so a FIFO or a device is never opened (opening a FIFO blocks).
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    Ok(meta.is_file().then_some((file, meta)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn dirs(name: &str) -> (PathBuf, PathBuf) {
        let d =
            std::env::temp_dir().join(format!("edge-sft-inbox-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("inbox")).unwrap();
        std::fs::create_dir_all(d.join("state")).unwrap();
        (d.join("inbox"), d.join("state"))
    }

    fn append(p: &Path, tag: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        writeln!(f, "{{\"prompt\": \"q {tag}\", \"response\": \"a {tag}\"}}").unwrap();
    }

    fn counts(state: &Path) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for s in read_store(state).unwrap() {
            let p = s.record["prompt"].as_str().unwrap();
            *m.entry(p.trim_start_matches("q ").to_string()).or_insert(0) += 1;
        }
        m
    }

    /// The soak's "stored twice": the folder is listed, the writer rotates (renames app.jsonl
    /// and starts a new one), then the scan opens the old name. The renamed file is in no
    /// listing this scan, and its entry must not be forgotten: a later scan would find it as a
    /// new file and store all its lines again under a new gen.
    #[test]
    fn a_file_renamed_after_the_listing_is_not_forgotten() {
        for new_file in [true, false] {
            let (inbox, state) = dirs(&format!("renamed-{new_file}"));
            let f = inbox.join("app.jsonl");
            append(&f, "1");
            append(&f, "2");
            let mut st = DaemonState::load(&state).unwrap();
            let mut ib = Inbox::open(&inbox, &state, 1 << 20).unwrap();
            ib.scan(&mut st).unwrap();
            append(&f, "3");
            let listing = ib.list().unwrap().unwrap();
            std::fs::rename(&f, inbox.join("app.jsonl.1")).unwrap();
            if new_file {
                append(&f, "4");
            }
            ib.scan_listed(&mut st, listing).unwrap();
            // Later scans, in this process and in a restarted one.
            ib.scan(&mut st).unwrap();
            let mut st = DaemonState::load(&state).unwrap();
            Inbox::open(&inbox, &state, 1 << 20)
                .unwrap()
                .scan(&mut st)
                .unwrap();
            let mut want: HashMap<String, usize> =
                ["1", "2", "3"].iter().map(|t| (t.to_string(), 1)).collect();
            if new_file {
                want.insert("4".into(), 1);
            }
            assert_eq!(counts(&state), want, "new file: {new_file}");
            assert_eq!(st.files.len(), if new_file { 2 } else { 1 });
        }
    }

    /// The name is reused between listing and open: the lines and the identity come from the
    /// file actually opened, and the renamed file keeps its own entry and head.
    #[test]
    fn a_name_reused_after_the_listing_reads_the_file_opened() {
        let (inbox, state) = dirs("reused");
        let f = inbox.join("app.jsonl");
        append(&f, "1");
        let mut st = DaemonState::load(&state).unwrap();
        let mut ib = Inbox::open(&inbox, &state, 1 << 20).unwrap();
        ib.scan(&mut st).unwrap();
        let listing = ib.list().unwrap().unwrap();
        append(&f, "2");
        std::fs::rename(&f, inbox.join("app.jsonl.1")).unwrap();
        append(&f, "3");
        ib.scan_listed(&mut st, listing).unwrap();
        ib.scan(&mut st).unwrap();
        ib.scan(&mut st).unwrap();
        let want: HashMap<String, usize> =
            ["1", "2", "3"].iter().map(|t| (t.to_string(), 1)).collect();
        assert_eq!(counts(&state), want);
    }

    /// The head is in the state before any line of the file is in the store: a crash between
    /// the store append and the offset write leaves a state that still recognises the file.
    #[test]
    fn the_head_is_saved_before_the_store_append() {
        let (inbox, state) = dirs("head-first");
        append(&inbox.join("t.jsonl"), "1");
        let mut st = DaemonState::load(&state).unwrap();
        let mut ib = Inbox::open(&inbox, &state, 1 << 20).unwrap();
        // The store cannot be appended to: the commit fails right after its first save.
        std::fs::create_dir(state.join(STORE_FILE)).unwrap();
        assert!(ib.scan(&mut st).is_err());
        let on_disk = DaemonState::load(&state).unwrap();
        assert_eq!(on_disk.files.len(), 1);
        assert_eq!(on_disk.files[0].offset, 0);
        assert!(on_disk.files[0].head_len > 0, "{on_disk:?}");
    }
}
